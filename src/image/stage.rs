//! The staging tree: the guest's root filesystem before it becomes ext4.
//!
//! Built with Nix's own tools, as an ordinary user or as root:
//! 1. The closure's store paths go to `<root>/nix/store`. Fast path:
//!    hard links to the host store's files (no data is copied), used when
//!    the staging directory is on the store's filesystem and the kernel
//!    lets us link (root, or a user who owns the store; with
//!    `fs.protected_hardlinks` a user cannot link root's files). Files the
//!    host store already shares between paths (`auto-optimise-store`,
//!    link count > 1) are copied, so that mke2fs does not turn them into
//!    hard links and the image stays the same whichever way it was made.
//!    Otherwise `nix copy --no-check-sigs --to <root> <system>` (a chroot
//!    store; the source is the daemon for a user, `/nix` for root): the one
//!    staging copy.
//! 2. The store DB is made from the host's own registration of the closure:
//!    `nix-store --dump-db <paths>` (narHash, narSize, deriver,
//!    references — what `nix copy` transfers) loaded into a fresh
//!    `<root>/nix/var/nix/db` with `nix-store --store <root> --load-db`,
//!    in sorted order, so the DB does not depend on the order in which
//!    `nix copy`'s threads finished.
//! 3. `nix-env --store <root> -p <root>/nix/var/nix/profiles/system --set
//!    <system>` makes `system -> system-1-link -> <system>`.
//! 4. One `sqlite3` script pins `registrationTime` (`--load-db` uses
//!    `time()`) and adds the signatures and `ca` fields `nix path-info`
//!    reports (the dump format has no room for them), as `nix copy` keeps
//!    them.
//! 5. `/etc/NIXOS`, `/etc/nixos/configuration.nix`, `/root/.nix-channels`.
//! 6. Everything outside the store paths gets fixed modes and times, and
//!    the host-specific links Nix leaves in a chroot store are fixed:
//!    `gcroots/profiles` points at `/nix/var/nix/profiles` (Nix writes the
//!    absolute staging path), `gcroots/auto/*` (the staging path of the
//!    profile) and the building user's `per-user/<name>` directories go,
//!    and `per-user/root` is made as a root install has it.
//!
//! Store paths keep what Nix gives them (mtime 1, modes 0444/0555); the
//! owners and ctimes of every inode are pinned later, in the filesystem
//! (see `fs`).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::cmd::{self, Out, Run, run_cmd};
use super::progress::Progress;
use crate::error::Error;

/// The logical store directory (what the guest sees).
pub const STORE_DIR: &str = "/nix/store";

/// What `nix path-info` says about one store path, beyond the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMeta {
    /// The store path.
    pub path: String,
    /// Its NAR size.
    pub nar_size: u64,
    /// Signatures (space-joined in the DB).
    pub sigs: Vec<String>,
    /// Content-address assertion.
    pub ca: Option<String>,
}

/// The system's closure, as the host store reports it.
#[derive(Debug, Clone)]
pub struct Closure {
    /// Store paths with their metadata, sorted by path.
    pub paths: Vec<PathMeta>,
    /// Sum of their NAR sizes.
    pub nar_size: u64,
}

fn nix_cmd<I, S>(args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = cmd::command("nix", ["--extra-experimental-features", "nix-command"]);
    c.args(args);
    c
}

/// Ask the host store for the closure of `system`.
pub fn query_closure(system: &Path) -> Result<Closure, Error> {
    let out = run_cmd(
        nix_cmd([
            OsString::from("path-info"),
            "--json".into(),
            "--recursive".into(),
            system.as_os_str().to_owned(),
        ]),
        Run::default(),
    )?;
    parse_path_info(&out.stdout)
}

fn meta_of(path: &str, o: &serde_json::Value) -> PathMeta {
    let sigs = o
        .get("signatures")
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    PathMeta {
        path: path.to_owned(),
        nar_size: o.get("narSize").and_then(serde_json::Value::as_u64).unwrap_or(0),
        sigs,
        ca: o.get("ca").and_then(|c| c.as_str()).map(str::to_owned),
    }
}

fn parse_path_info(json: &[u8]) -> Result<Closure, Error> {
    let bad = |why: &str| Error::HostMsg(format!("unexpected `nix path-info --json` output: {why}"));
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let mut paths: Vec<PathMeta> = match &v {
        // Nix ≤ 2.18: a list of objects with "path".
        serde_json::Value::Array(a) => a
            .iter()
            .map(|o| {
                let p = o.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad("no path"))?;
                Ok(meta_of(p, o))
            })
            .collect::<Result<_, Error>>()?,
        // Newer Nix: an object keyed by path.
        serde_json::Value::Object(m) => m.iter().map(|(p, o)| meta_of(p, o)).collect(),
        _ => return Err(bad("neither a list nor an object")),
    };
    for p in &paths {
        let name = p.path.strip_prefix("/nix/store/").unwrap_or("");
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(bad(&format!("{:?} is not a store path", p.path)));
        }
    }
    paths.sort_by(|a, b| a.path.cmp(&b.path));
    let nar_size = paths.iter().fold(0u64, |a, p| a.saturating_add(p.nar_size));
    Ok(Closure { paths, nar_size })
}

/// The staging work directory: `<dir>/.nixboot-XXXXXX/{root,…}`. Removed
/// (store directories are read-only, so made writable first) on drop.
pub struct Staging {
    work: PathBuf,
}

impl Staging {
    /// Create it inside `dir` (next to the output image: the same disk,
    /// and usually the store's filesystem, which allows hard links).
    pub fn create(dir: &Path) -> Result<Staging, Error> {
        let work = tempfile::Builder::new()
            .prefix(".nixboot-staging-")
            .tempdir_in(dir)
            .map_err(|e| Error::host(format!("creating a staging directory in {}", dir.display()), e))?
            .keep();
        let s = Staging { work };
        fs::DirBuilder::new()
            .mode(0o755)
            .create(s.root())
            .map_err(|e| Error::host("creating the staging root", e))?;
        Ok(s)
    }

    /// The guest's future `/`.
    pub fn root(&self) -> PathBuf {
        self.work.join("root")
    }

    /// A scratch file next to the root (not part of the image).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Where the guest's store DB lives in the staging tree.
    pub fn db_dir(&self) -> PathBuf {
        self.root().join("nix/var/nix/db")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_staging(&self.work) {
            log::warn!("could not remove the staging directory {}: {e}", self.work.display());
        }
    }
}

/// Workers for the per-store-path loops (linking, removal). Creating and
/// removing tens of thousands of directory entries is bound by the host
/// filesystem's journal latency, not CPU: 8 in flight removed a 42,000-file
/// hard-link tree in 2.3 s where one took 13.7 s (2 cores).
const WORKERS: usize = 8;

/// Run `f` on every item with [`WORKERS`] threads; the first error wins
/// and stops the others from taking new items.
fn for_each_parallel<T: Sync, E: Send>(items: &[T], f: impl Fn(&T) -> Result<(), E> + Sync) -> Result<(), E> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..WORKERS.min(items.len()) {
            sc.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        failed.store(true, Ordering::SeqCst);
                        if let Ok(mut g) = first.lock() {
                            g.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Remove the staging work directory: its store paths in parallel, then
/// the rest.
fn remove_staging(work: &Path) -> std::io::Result<()> {
    let store = work.join("root/nix/store");
    if let Ok(m) = fs::symlink_metadata(&store)
        && m.is_dir()
    {
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755))?;
        let entries: Vec<PathBuf> = fs::read_dir(&store)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        for_each_parallel(&entries, |p| remove_tree(p))?;
    }
    remove_tree(work)
}

/// `rm -rf` that first makes read-only directories (store paths)
/// writable. One pass; only directories are stat'ed.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn remove_dir(p: &Path) -> std::io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        if m.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
        }
        for e in fs::read_dir(p)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                remove_dir(&e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
        fs::remove_dir(p)
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => remove_dir(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// The extra files the image carries.
#[derive(Debug, Clone)]
pub struct Extras {
    /// `/etc/nixos/configuration.nix`.
    pub configuration: Option<Vec<u8>>,
    /// The line of `/root/.nix-channels` (`<url> <name>`).
    pub channel: String,
}

/// How the store paths got into the staging tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Hard links to the host store's files.
    Linked,
    /// `nix copy`.
    Copied,
}

/// Why linking stopped: not possible here (fall back), or a real error.
enum LinkError {
    Unsupported(String),
    Fatal(Error),
}

fn times_of(m: &fs::Metadata) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(m.atime(), m.atime_nsec()),
        TimeSpec::new(m.mtime(), m.mtime_nsec()),
    )
}

fn set_times(path: &Path, m: &fs::Metadata) -> Result<(), Error> {
    let (a, t) = times_of(m);
    utimensat(nix::fcntl::AT_FDCWD, path, &a, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::host(format!("setting the times of {}", path.display()), e.into()))
}

/// Mirror `src` (in the host store) at `dst`: directories and symlinks
/// recreated with the same mode and times, files hard-linked (or copied
/// when the host already shares them).
fn link_tree(src: &Path, dst: &Path) -> Result<(), LinkError> {
    let fatal = |what: String, e: std::io::Error| LinkError::Fatal(Error::host(what, e));
    let m = fs::symlink_metadata(src).map_err(|e| fatal(format!("stat {}", src.display()), e))?;
    let ft = m.file_type();
    if ft.is_dir() {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dst)
            .map_err(|e| fatal(format!("creating {}", dst.display()), e))?;
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| fatal(format!("reading {}", src.display()), e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| fatal(format!("reading {}", src.display()), e))?;
        names.sort();
        for n in names {
            link_tree(&src.join(&n), &dst.join(&n))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))
            .map_err(|e| fatal(format!("chmod {}", dst.display()), e))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| fatal(format!("readlink {}", src.display()), e))?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| fatal(format!("creating {}", dst.display()), e))?;
    } else if ft.is_file() && m.nlink() == 1 {
        if let Err(e) = fs::hard_link(src, dst) {
            return Err(LinkError::Unsupported(format!(
                "cannot hard-link {}: {e}",
                src.display()
            )));
        }
        return Ok(());
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(|e| fatal(format!("copying {}", src.display()), e))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))
            .map_err(|e| fatal(format!("chmod {}", dst.display()), e))?;
    } else {
        return Err(LinkError::Unsupported(format!(
            "{} is not a file, directory or symlink",
            src.display()
        )));
    }
    set_times(dst, &m).map_err(LinkError::Fatal)
}

/// Try the hard-link fast path; `Ok(false)` when it does not apply here.
fn link_closure(root: &Path, closure: &Closure, p: &mut Progress) -> Result<bool, Error> {
    let store = Path::new(STORE_DIR);
    let (Ok(sm), Ok(rm)) = (fs::metadata(store), fs::metadata(root)) else {
        return Ok(false);
    };
    if sm.dev() != rm.dev() {
        log::debug!("staging is not on the store's filesystem: copying with nix copy");
        return Ok(false);
    }
    let dst_store = root.join("nix/store");
    fs::create_dir_all(&dst_store).map_err(|e| Error::host("creating the staging store", e))?;
    let total = u64::try_from(closure.paths.len()).unwrap_or(u64::MAX);
    // One path first: linking may not be allowed here at all.
    let Some((first, rest)) = closure.paths.split_first() else {
        return Ok(true);
    };
    let link_one = |m: &PathMeta| -> Result<(), LinkError> {
        cmd::check_interrupted().map_err(LinkError::Fatal)?;
        let name = m.path.strip_prefix("/nix/store/").unwrap_or(&m.path);
        link_tree(&store.join(name), &dst_store.join(name))
    };
    let result = link_one(first).and_then(|()| {
        p.stage("link: linking the closure", Some(total));
        p.inc();
        let shared: &Progress = p;
        for_each_parallel(rest, |m| {
            link_one(m)?;
            shared.inc();
            Ok(())
        })
    });
    match result {
        Ok(()) => Ok(true),
        Err(LinkError::Fatal(e)) => Err(e),
        Err(LinkError::Unsupported(why)) => {
            log::debug!("{why}: copying with nix copy instead");
            remove_staging_store(root).map_err(|e| Error::host("clearing the staging store", e))?;
            Ok(false)
        }
    }
}

fn remove_staging_store(root: &Path) -> std::io::Result<()> {
    remove_tree(&root.join("nix"))
}

/// Put the closure's store paths into the staging root.
pub fn populate(st: &Staging, system: &Path, closure: &Closure, p: &mut Progress) -> Result<Method, Error> {
    let root = st.root();
    if link_closure(&root, closure, p)? {
        return Ok(Method::Linked);
    }
    p.stage(
        "copy: copying the closure",
        Some(u64::try_from(closure.paths.len()).unwrap_or(u64::MAX)),
    );
    let mut on_line = |l: &str| {
        if l.starts_with("copying path") {
            p.inc();
        }
    };
    run_cmd(
        nix_cmd([
            OsString::from("copy"),
            "--no-check-sigs".into(),
            "--to".into(),
            root.as_os_str().to_owned(),
            system.as_os_str().to_owned(),
        ]),
        Run {
            on_line: Some(&mut on_line),
            ..Run::default()
        },
    )?;
    Ok(Method::Copied)
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The sqlite3 script that pins registration times and adds signatures
/// and content addresses.
pub fn pin_script(closure: &Closure, time: u64) -> String {
    let mut sql = format!("BEGIN;\nUPDATE ValidPaths SET registrationTime = {time};\n");
    for m in &closure.paths {
        if m.sigs.is_empty() && m.ca.is_none() {
            continue;
        }
        let sigs = if m.sigs.is_empty() {
            "NULL".to_owned()
        } else {
            sql_string(&m.sigs.join(" "))
        };
        let ca = m.ca.as_deref().map_or_else(|| "NULL".to_owned(), sql_string);
        sql.push_str(&format!(
            "UPDATE ValidPaths SET sigs = {sigs}, ca = {ca} WHERE path = {};\n",
            sql_string(&m.path)
        ));
    }
    sql.push_str("COMMIT;\n");
    sql
}

/// Register the closure in the staging store and make the system profile
/// (see the module docs, steps 2–4).
pub fn register(st: &Staging, system: &Path, closure: &Closure, time: u64, p: &mut Progress) -> Result<(), Error> {
    p.stage("register: registering the store paths", None);
    let root = st.root();
    let db_dir = st.db_dir();
    // The host's registration of exactly the closure, in sorted order.
    let reg_path = st.scratch("registration");
    let reg = fs::File::create(&reg_path).map_err(|e| Error::host("creating the registration file", e))?;
    let mut args = vec![OsString::from("--dump-db")];
    args.extend(closure.paths.iter().map(|m| OsString::from(&m.path)));
    run_cmd(
        cmd::command("nix-store", args),
        Run {
            stdout: Out::File(reg),
            ..Run::default()
        },
    )?;
    // A fresh DB (without a schema file Nix creates one): `nix copy`'s
    // own DB, if any, goes.
    for f in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "schema"] {
        match fs::remove_file(db_dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::host(format!("removing {f}"), e)),
        }
    }
    let store_args = |args: &[&str]| {
        let mut v = vec![OsString::from("--store"), root.as_os_str().to_owned()];
        v.extend(args.iter().map(OsString::from));
        v
    };
    let reg = fs::File::open(&reg_path).map_err(|e| Error::host("reading the registration file", e))?;
    run_cmd(
        cmd::command("nix-store", store_args(&["--load-db"])),
        Run {
            stdin: Some(reg),
            ..Run::default()
        },
    )?;
    let profile = root.join("nix/var/nix/profiles/system");
    let mut env_args = store_args(&["-p"]);
    env_args.extend([profile.into_os_string(), "--set".into(), system.as_os_str().to_owned()]);
    run_cmd(cmd::command("nix-env", env_args), Run::default())?;
    let sql_path = st.scratch("pin.sql");
    fs::write(&sql_path, pin_script(closure, time)).map_err(|e| Error::host("writing the DB script", e))?;
    let sql_in = fs::File::open(&sql_path).map_err(|e| Error::host("reading the DB script", e))?;
    run_cmd(
        cmd::command(
            "sqlite3",
            [OsString::from("-bail"), db_dir.join("db.sqlite").into_os_string()],
        ),
        Run {
            stdin: Some(sql_in),
            ..Run::default()
        },
    )?;
    for f in ["db.sqlite-wal", "db.sqlite-shm", "db.sqlite-journal"] {
        if db_dir.join(f).exists() {
            return Err(Error::HostMsg(format!(
                "{f} is still there after sqlite3 closed the DB"
            )));
        }
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(|e| Error::host(format!("creating {}", d.display()), e))?;
    }
    let mut f = fs::File::create(path).map_err(|e| Error::host(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::host(format!("writing {}", path.display()), e))
}

/// Write `/etc/NIXOS`, the configuration and the channels file.
pub fn write_extras(st: &Staging, extras: &Extras) -> Result<(), Error> {
    let root = st.root();
    // nixos-install touches it: switch-to-configuration refuses without it.
    write_file(&root.join("etc/NIXOS"), b"")?;
    if let Some(c) = &extras.configuration {
        write_file(&root.join("etc/nixos/configuration.nix"), c)?;
    }
    write_file(
        &root.join("root/.nix-channels"),
        format!("{}\n", extras.channel).as_bytes(),
    )?;
    Ok(())
}

fn replace_symlink(target: &str, link: &Path) -> Result<(), Error> {
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::host(format!("removing {}", link.display()), e)),
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::host(format!("creating {}", link.display()), e))
}

fn empty_dir(dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        remove_tree(dir).map_err(|e| Error::host(format!("removing {}", dir.display()), e))?;
    }
    fs::create_dir_all(dir).map_err(|e| Error::host(format!("creating {}", dir.display()), e))
}

/// Fix what Nix leaves host-specific, then pin modes and times of
/// everything outside the store paths.
pub fn normalise(st: &Staging, time: u64) -> Result<(), Error> {
    let root = st.root();
    let nixvar = root.join("nix/var/nix");
    fs::create_dir_all(nixvar.join("gcroots")).map_err(|e| Error::host("creating gcroots", e))?;
    replace_symlink("/nix/var/nix/profiles", &nixvar.join("gcroots/profiles"))?;
    for d in ["gcroots/auto", "temproots"] {
        empty_dir(&nixvar.join(d))?;
    }
    for d in ["profiles/per-user", "gcroots/per-user"] {
        empty_dir(&nixvar.join(d))?;
        fs::create_dir_all(nixvar.join(d).join("root")).map_err(|e| Error::host("creating per-user/root", e))?;
    }
    let ts = TimeSpec::new(i64::try_from(time).unwrap_or(i64::MAX), 0);
    pin_tree(&root, &root, ts)
}

/// The mode a non-store staging entry gets.
fn mode_for(rel: &Path, is_dir: bool) -> u32 {
    let s = rel.to_str().unwrap_or("");
    match s {
        "nix/store" => 0o1775,
        "root" => 0o700,
        // Nix creates its locks and the GC reserve private.
        "nix/var/nix/db/big-lock" | "nix/var/nix/db/reserved" | "nix/var/nix/gc.lock" => 0o600,
        _ if is_dir => 0o755,
        _ => 0o644,
    }
}

fn pin_tree(root: &Path, path: &Path, ts: TimeSpec) -> Result<(), Error> {
    let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
    let meta = fs::symlink_metadata(path).map_err(|e| Error::host(format!("stat {}", path.display()), e))?;
    let in_store = rel.parent() == Some(Path::new("nix/store")) && rel.file_name().is_some_and(|n| n != ".links");
    if in_store {
        // A store path: Nix already made its metadata canonical.
        return Ok(());
    }
    if meta.is_dir() {
        for e in fs::read_dir(path).map_err(|e| Error::host(format!("reading {}", path.display()), e))? {
            let e = e.map_err(|e| Error::host(format!("reading {}", path.display()), e))?;
            pin_tree(root, &e.path(), ts)?;
        }
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode_for(rel, meta.is_dir())))
            .map_err(|e| Error::host(format!("chmod {}", path.display()), e))?;
    }
    utimensat(nix::fcntl::AT_FDCWD, path, &ts, &ts, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::host(format!("setting the times of {}", path.display()), e.into()))
}

/// Usage of the staged tree, for the size check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Inodes (files, directories, symlinks).
    pub inodes: u64,
    /// 4 KiB blocks for file data, directories and long symlinks.
    pub blocks: u64,
}

/// Count inodes and 4 KiB blocks under `path`.
pub fn usage(path: &Path) -> Result<Usage, Error> {
    let mut u = Usage::default();
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).map_err(|e| Error::host(format!("stat {}", p.display()), e))?;
        u.inodes = u.inodes.saturating_add(1);
        let blocks = if m.is_dir() {
            let mut entries = 0u64;
            for e in fs::read_dir(&p).map_err(|e| Error::host(format!("reading {}", p.display()), e))? {
                let e = e.map_err(|e| Error::host(format!("reading {}", p.display()), e))?;
                entries = entries.saturating_add(1);
                stack.push(e.path());
            }
            // ~40 bytes per entry, plus index blocks.
            entries.saturating_mul(40).div_ceil(4096).saturating_add(1)
        } else if m.file_type().is_symlink() {
            u64::from(m.len() > 59)
        } else {
            m.len().div_ceil(4096)
        };
        u.blocks = u.blocks.saturating_add(blocks);
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_info_both_shapes() {
        let old = br#"[{"path":"/nix/store/b-x","narSize":10},{"path":"/nix/store/a-y","narSize":5}]"#;
        let c = parse_path_info(old).unwrap();
        let names: Vec<&str> = c.paths.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(names, ["/nix/store/a-y", "/nix/store/b-x"]);
        assert_eq!(c.nar_size, 15);
        let new = br#"{"/nix/store/a-y":{"narSize":7,"signatures":["k:s1","k2:s2"],"ca":"fixed:r:sha256:x"}}"#;
        let c = parse_path_info(new).unwrap();
        assert_eq!(c.nar_size, 7);
        assert_eq!(c.paths[0].sigs, ["k:s1", "k2:s2"]);
        assert_eq!(c.paths[0].ca.as_deref(), Some("fixed:r:sha256:x"));
        assert!(parse_path_info(b"3").is_err());
        assert!(parse_path_info(br#"[{"path":"/etc/passwd"}]"#).is_err());
        assert!(parse_path_info(br#"[{"path":"/nix/store/a/../../x"}]"#).is_err());
    }

    #[test]
    fn pin_script_pins_times_and_adds_sigs() {
        let c = parse_path_info(br#"[{"path":"/nix/store/a-x","signatures":["k:it's"]},{"path":"/nix/store/b-y"}]"#)
            .unwrap();
        let s = pin_script(&c, 42);
        assert!(s.contains("UPDATE ValidPaths SET registrationTime = 42;\n"));
        assert!(s.contains("SET sigs = 'k:it''s', ca = NULL WHERE path = '/nix/store/a-x';"));
        assert!(!s.contains("b-y"));
    }

    #[test]
    fn link_tree_mirrors_modes_times_and_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"data").unwrap();
        fs::write(src.join("shared"), b"s").unwrap();
        fs::hard_link(src.join("shared"), d.path().join("other-link")).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("l")).unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o444)).unwrap();
        let one = TimeSpec::new(1, 0);
        for p in ["sub/f", "sub", "l", ""] {
            utimensat(
                nix::fcntl::AT_FDCWD,
                &src.join(p),
                &one,
                &one,
                UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        let dst = d.path().join("dst");
        assert!(link_tree(&src, &dst).is_ok());
        let f = fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(f.ino(), fs::metadata(src.join("sub/f")).unwrap().ino(), "hard link");
        let shared = fs::metadata(dst.join("shared")).unwrap();
        assert_ne!(
            shared.ino(),
            fs::metadata(src.join("shared")).unwrap().ino(),
            "shared files are copied"
        );
        let sub = fs::metadata(dst.join("sub")).unwrap();
        assert_eq!(sub.permissions().mode() & 0o7777, 0o555);
        assert_eq!(sub.mtime(), 1);
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), PathBuf::from("sub/f"));
        assert_eq!(fs::symlink_metadata(dst.join("l")).unwrap().mtime(), 1);
        remove_tree(&dst).unwrap();
        remove_tree(&src).unwrap();
    }

    #[test]
    fn modes() {
        assert_eq!(mode_for(Path::new("nix/store"), true), 0o1775);
        assert_eq!(mode_for(Path::new("root"), true), 0o700);
        assert_eq!(mode_for(Path::new("etc/NIXOS"), false), 0o644);
        assert_eq!(mode_for(Path::new("nix/var/nix/db/big-lock"), false), 0o600);
    }

    #[test]
    fn remove_tree_handles_read_only_dirs() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(t.join("a/b"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(t.join("a"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        remove_tree(&t).unwrap();
    }

    #[test]
    fn parallel_loop_runs_all_and_reports_an_error() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let n = AtomicUsize::new(0);
        let items: Vec<usize> = (0..100).collect();
        for_each_parallel(&items, |_| -> Result<(), ()> {
            n.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 100);
        let r = for_each_parallel(&items, |&i| if i == 57 { Err(i) } else { Ok(()) });
        assert_eq!(r, Err(57));
        for_each_parallel(&[] as &[u8], |_| -> Result<(), ()> { panic!("no items") }).unwrap();
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_string("a'b"), "'a''b'");
    }
}
