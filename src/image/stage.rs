//! The staging tree: the guest's root filesystem before it becomes ext4.
//!
//! Built with Nix's own tools, as an ordinary user or as root:
//! 1. `nix copy --no-check-sigs --to <root> <system>` copies the closure
//!    into a chroot store at `<root>` (store paths + `nix/var/nix/db`);
//!    the source is the daemon for a user, `/nix` for root.
//! 2. `nix-env --store <root> -p <root>/nix/var/nix/profiles/system --set
//!    <system>` makes `system -> system-1-link -> <system>` (everything is
//!    valid already, so nothing is copied twice).
//! 3. The DB is rebuilt so that it is the same bytes on every run:
//!    `nix-store --dump-db` (sorted), a fresh DB from `nix-store
//!    --load-db`, then one `sqlite3` statement that pins
//!    `registrationTime` (`--load-db` uses `time()`) and carries `sigs`,
//!    `ca` and `ultimate` over from `nix copy`'s DB (the dump drops them).
//!    `nix copy` registers in whatever order its threads finish; the
//!    rebuilt DB does not depend on that.
//! 4. `/etc/NIXOS`, `/etc/nixos/configuration.nix`, `/root/.nix-channels`.
//! 5. Everything outside the store paths gets fixed modes and times, and
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
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::cmd::{self, Out, Run, run_cmd};
use super::progress::Progress;
use crate::error::Error;

/// The logical store directory (what the guest sees).
pub const STORE_DIR: &str = "/nix/store";

/// The system's closure, as the host store reports it.
#[derive(Debug, Clone)]
pub struct Closure {
    /// Store paths, sorted.
    pub paths: Vec<String>,
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

fn parse_path_info(json: &[u8]) -> Result<Closure, Error> {
    let bad = |why: &str| Error::HostMsg(format!("unexpected `nix path-info --json` output: {why}"));
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let items: Vec<(String, u64)> = match &v {
        // Nix ≤ 2.18: a list of objects with "path".
        serde_json::Value::Array(a) => a
            .iter()
            .map(|o| {
                let p = o.get("path").and_then(|p| p.as_str()).ok_or_else(|| bad("no path"))?;
                let n = o.get("narSize").and_then(serde_json::Value::as_u64).unwrap_or(0);
                Ok((p.to_owned(), n))
            })
            .collect::<Result<_, Error>>()?,
        // Newer Nix: an object keyed by path.
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(p, o)| {
                (
                    p.clone(),
                    o.get("narSize").and_then(serde_json::Value::as_u64).unwrap_or(0),
                )
            })
            .collect(),
        _ => return Err(bad("neither a list nor an object")),
    };
    let nar_size = items.iter().fold(0u64, |a, (_, n)| a.saturating_add(*n));
    let mut paths: Vec<String> = items.into_iter().map(|(p, _)| p).collect();
    paths.sort();
    Ok(Closure { paths, nar_size })
}

/// The staging work directory: `<dir>/.nixboot-XXXXXX/{root,…}`. Removed
/// (store directories are read-only, so made writable first) on drop.
pub struct Staging {
    work: PathBuf,
}

impl Staging {
    /// Create it inside `dir` (next to the output image, so the closure
    /// lands on the disk that will hold the image anyway).
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
        if let Err(e) = remove_tree(&self.work) {
            log::warn!("could not remove the staging directory {}: {e}", self.work.display());
        }
    }
}

/// `rm -rf` that first makes read-only directories (store paths) writable.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn unlock(p: &Path) -> std::io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        if m.is_dir() {
            if m.permissions().mode() & 0o700 != 0o700 {
                fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
            }
            for e in fs::read_dir(p)? {
                unlock(&e?.path())?;
            }
        }
        Ok(())
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    unlock(path)?;
    fs::remove_dir_all(path)
}

/// The extra files the image carries.
#[derive(Debug, Clone)]
pub struct Extras {
    /// `/etc/nixos/configuration.nix`.
    pub configuration: Option<Vec<u8>>,
    /// The line of `/root/.nix-channels` (`<url> <name>`).
    pub channel: String,
}

/// Copy the closure into the staging root and make the system profile.
pub fn copy_closure(st: &Staging, system: &Path, closure: &Closure, p: &mut Progress) -> Result<(), Error> {
    let root = st.root();
    p.stage(
        "copying the closure",
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
    p.stage("making the system profile", None);
    let profile = root.join("nix/var/nix/profiles/system");
    run_cmd(
        cmd::command(
            "nix-env",
            [
                OsString::from("--store"),
                root.as_os_str().to_owned(),
                "-p".into(),
                profile.as_os_str().to_owned(),
                "--set".into(),
                system.as_os_str().to_owned(),
            ],
        ),
        Run::default(),
    )?;
    Ok(())
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Rebuild the staging store's DB deterministically (see the module docs).
pub fn rebuild_db(st: &Staging, time: u64, p: &mut Progress) -> Result<(), Error> {
    p.stage("registering the store paths", None);
    let root = st.root();
    let db_dir = st.db_dir();
    let reg_path = st.scratch("registration");
    let reg = fs::File::create(&reg_path).map_err(|e| Error::host("creating the registration file", e))?;
    let store_arg = |args: &[&str]| {
        let mut v = vec![OsString::from("--store"), root.as_os_str().to_owned()];
        v.extend(args.iter().map(OsString::from));
        v
    };
    run_cmd(
        cmd::command("nix-store", store_arg(&["--dump-db"])),
        Run {
            stdout: Out::File(reg),
            ..Run::default()
        },
    )?;
    let old = st.scratch("copy-db.sqlite");
    for suffix in ["-wal", "-shm"] {
        let mut side = db_dir.join("db.sqlite").into_os_string();
        side.push(suffix);
        if Path::new(&side).exists() {
            return Err(Error::HostMsg(format!(
                "{} is still there after Nix closed the DB",
                Path::new(&side).display()
            )));
        }
    }
    fs::rename(db_dir.join("db.sqlite"), &old).map_err(|e| Error::host("moving the copied DB aside", e))?;
    // Without a schema file Nix creates a fresh DB; with one it expects it.
    fs::remove_file(db_dir.join("schema")).map_err(|e| Error::host("removing the DB schema file", e))?;
    let reg = fs::File::open(&reg_path).map_err(|e| Error::host("reading the registration file", e))?;
    run_cmd(
        cmd::command("nix-store", store_arg(&["--load-db"])),
        Run {
            stdin: Some(reg),
            ..Run::default()
        },
    )?;
    let old_str = old
        .to_str()
        .ok_or_else(|| Error::HostMsg("staging path is not UTF-8".into()))?;
    let sql = format!(
        "ATTACH {old} AS o;\n\
         UPDATE ValidPaths SET registrationTime = {time},\n\
           ultimate = (SELECT v.ultimate FROM o.ValidPaths v WHERE v.path = ValidPaths.path),\n\
           sigs = (SELECT v.sigs FROM o.ValidPaths v WHERE v.path = ValidPaths.path),\n\
           ca = (SELECT v.ca FROM o.ValidPaths v WHERE v.path = ValidPaths.path);\n\
         DETACH o;\n",
        old = sql_string(old_str)
    );
    let sql_path = st.scratch("pin.sql");
    fs::write(&sql_path, sql).map_err(|e| Error::host("writing the DB script", e))?;
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
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = db_dir.join("db.sqlite").into_os_string();
        side.push(suffix);
        let _ = fs::remove_file(PathBuf::from(side));
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
        assert_eq!(c.paths, ["/nix/store/a-y", "/nix/store/b-x"]);
        assert_eq!(c.nar_size, 15);
        let new = br#"{"/nix/store/a-y":{"narSize":7}}"#;
        assert_eq!(parse_path_info(new).unwrap().nar_size, 7);
        assert!(parse_path_info(b"3").is_err());
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
    fn sql_quoting() {
        assert_eq!(sql_string("a'b"), "'a''b'");
    }
}
