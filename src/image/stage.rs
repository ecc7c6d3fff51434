//! The staging tree: the guest's root filesystem before it becomes ext4.
//!
//! Built as an ordinary user or as root; the registration with Nix's own
//! tools:
//! 1. The closure's store paths are mirrored at `<root>/nix/store`
//!    ([`plan`], [`populate`]). One parallel walk of the host store paths
//!    first (the file list, the exact size check, the read-ahead order);
//!    then directories and symlinks are recreated with their modes and
//!    times, and the regular files, spread over 8 workers whatever store
//!    path they are in, are either
//!    - hard-linked to the host store's (no data copied), where the
//!      staging directory next to the output is on the store's filesystem
//!      and the kernel lets us link (root, or a user who owns the store:
//!      with `fs.protected_hardlinks` a user cannot link root's files).
//!      An inode found twice in the closure (the host's
//!      `auto-optimise-store`) is copied each time instead, so that mke2fs
//!      does not turn it into a hard link and the image stays the same
//!      whichever way it was made. Or
//!    - copied (`copy_file_range`: in the kernel, a reflink on btrfs or
//!      XFS): next to the output where that filesystem is the store's and
//!      can reflink, else in a tmpfs (`$TMPDIR`, else /dev/shm) when the
//!      closure fits there with as much memory to spare, else next to the
//!      output. A tmpfs copy never reaches a disk and goes in a second;
//!      on the bench closure a copy next to the output on the host's ext4
//!      (mounted with `discard`) took 40-55 s to write and 17 s to remove,
//!      the tmpfs one 8 s and 2 s (what `nix copy`, used here before,
//!      also paid: 38 s, 25 s).
//!
//!    The tree is the staging's only copy of the closure, and gone before
//!    the image is synced.
//! 2. The store DB is made from the host's own registration of the closure:
//!    `nix-store --dump-db <paths>` (narHash, narSize, deriver,
//!    references — what `nix copy` transfers) loaded into a fresh
//!    `<root>/nix/var/nix/db` with `nix-store --store <root> --load-db`,
//!    in sorted order.
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

/// A staging tree being removed by a background thread (once mke2fs has
/// read it, while the filesystem is finished). [`Removal::wait`], or
/// dropping it on any error or interrupt, waits until it is gone.
pub struct Removal(Option<std::thread::JoinHandle<()>>);

impl Staging {
    /// Start removing the whole staging directory in the background.
    pub fn remove_in_background(self) -> Removal {
        // If no thread can be started, the closure (and with it `self`) is
        // dropped here: the tree is removed before this returns.
        match std::thread::Builder::new()
            .name("staging-removal".into())
            .spawn(move || drop(self))
        {
            Ok(h) => Removal(Some(h)),
            Err(e) => {
                log::debug!("removed the staging tree in the foreground: {e}");
                Removal(None)
            }
        }
    }
}

impl Removal {
    /// Wait until the staging tree is gone.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(h) = self.0.take()
            && h.join().is_err()
        {
            log::warn!("the staging removal thread panicked");
        }
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.join();
    }
}

/// Workers for the per-store-path loops (linking, removal). Creating and
/// removing tens of thousands of directory entries is bound by the host
/// filesystem's journal latency, not CPU: 8 in flight removed a 42,000-file
/// hard-link tree in 2.3 s where one took 13.7 s (2 cores).
const WORKERS: usize = 8;

/// Run `f` on every item with [`WORKERS`] threads; the first error wins
/// and stops the others from taking new items.
fn for_each_parallel<'a, T: Sync, E: Send>(items: &'a [T], f: impl Fn(&'a T) -> Result<(), E> + Sync) -> Result<(), E> {
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
#[derive(Debug, Default, Clone, Copy)]
pub struct Mirrored {
    /// Files hard-linked to the host store.
    pub linked: u64,
    /// Files copied.
    pub copied: u64,
    /// Bytes copied.
    pub copied_bytes: u64,
}

/// One entry of a store path, as [`scan`] found it.
struct Entry {
    /// The path below the store directory (`<hash>-<name>/…`).
    rel: PathBuf,
    meta: fs::Metadata,
}

/// The closure's store paths, walked: every store path's entries in
/// depth-first order (a directory before what it holds).
struct Scan {
    paths: Vec<Vec<Entry>>,
    files: u64,
    /// Bytes of the regular files, each rounded up to a 4 KiB block.
    file_bytes: u64,
    /// What the store paths take in the image.
    usage: Usage,
}

/// Walk the store paths `names` of `store` (in parallel; nothing is
/// written).
fn scan(store: &Path, names: &[&str]) -> Result<Scan, Error> {
    fn walk(store: &Path, rel: PathBuf, out: &mut Vec<Entry>, u: &mut Usage) -> Result<(), Error> {
        let src = store.join(&rel);
        let meta = fs::symlink_metadata(&src).map_err(|e| Error::host(format!("stat {}", src.display()), e))?;
        let mut names = Vec::new();
        if meta.is_dir() {
            names = fs::read_dir(&src)
                .map_err(|e| Error::host(format!("reading {}", src.display()), e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| Error::host(format!("reading {}", src.display()), e))?;
            names.sort();
        }
        u.inodes = u.inodes.saturating_add(1);
        let entries = u64::try_from(names.len()).unwrap_or(u64::MAX);
        u.blocks = u.blocks.saturating_add(blocks_of(&meta, entries));
        out.push(Entry { rel: rel.clone(), meta });
        for n in names {
            walk(store, rel.join(n), out, u)?;
        }
        Ok(())
    }
    let indexed: Vec<(usize, &&str)> = names.iter().enumerate().collect();
    let found = std::sync::Mutex::new(Vec::with_capacity(indexed.len()));
    for_each_parallel(&indexed, |&(i, name)| {
        cmd::check_interrupted()?;
        let (mut entries, mut u) = (Vec::new(), Usage::default());
        walk(store, PathBuf::from(name), &mut entries, &mut u)?;
        found
            .lock()
            .map_err(|_| Error::HostMsg("a staging worker panicked".into()))?
            .push((i, entries, u));
        Ok::<(), Error>(())
    })?;
    let mut found = found
        .into_inner()
        .map_err(|_| Error::HostMsg("a staging worker panicked".into()))?;
    found.sort_by_key(|(i, _, _)| *i);
    let mut usage = Usage::default();
    let mut paths = Vec::with_capacity(found.len());
    for (_, entries, u) in found {
        usage.inodes = usage.inodes.saturating_add(u.inodes);
        usage.blocks = usage.blocks.saturating_add(u.blocks);
        paths.push(entries);
    }
    let (mut files, mut file_bytes) = (0u64, 0u64);
    for e in paths.iter().flatten().filter(|e| e.meta.is_file()) {
        files = files.saturating_add(1);
        file_bytes = file_bytes.saturating_add(e.meta.len().div_ceil(4096).saturating_mul(4096));
    }
    Ok(Scan {
        paths,
        files,
        file_bytes,
        usage,
    })
}

/// Where the staging tree goes and whether its files are hard links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The directory to make the staging directory in.
    pub dir: PathBuf,
    /// Hard-link unshared files to the host store (else copy them all).
    pub links: bool,
}

/// Free space of a tmpfs at `dir`, if it is one.
fn tmpfs_free(dir: &Path) -> Option<u64> {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    let s = statfs(dir).ok()?;
    if s.filesystem_type() != TMPFS_MAGIC {
        return None;
    }
    s.blocks_available().checked_mul(u64::try_from(s.block_size()).ok()?)
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Whether the tmpfs copy fits: the tmpfs has room for it, and the
/// memory it takes leaves as much again for the page cache mke2fs fills.
pub fn tmpfs_fits(need: u64, tmpfs_free: Option<u64>, mem_available: Option<u64>) -> bool {
    let need = need.saturating_add(need / 8).saturating_add(64 << 20);
    tmpfs_free.is_some_and(|f| f >= need) && mem_available.is_some_and(|m| m / 2 >= need)
}

/// Where a copied staging tree may go, if it is a tmpfs with room:
/// `$TMPDIR` (else /tmp), then /dev/shm.
pub fn tmpfs_candidates() -> Vec<PathBuf> {
    let mut v = vec![std::env::temp_dir()];
    if !v.iter().any(|d| d == Path::new("/dev/shm")) {
        v.push(PathBuf::from("/dev/shm"));
    }
    v
}

/// Choose where to stage (see the module docs, step 1): hard links next
/// to the output where the kernel allows them (tried with `probe`, a file
/// of the closure); else copies: next to the output if its filesystem is
/// the store's and can reflink them (btrfs, XFS), else in the first of
/// [`tmpfs_candidates`] they fit in, else next to the output.
fn placement(out_dir: &Path, probe: Option<&Path>, need: u64) -> Placement {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, XFS_SUPER_MAGIC, statfs};
    let here = |links| Placement {
        dir: out_dir.to_owned(),
        links,
    };
    let same_fs = match (fs::metadata(STORE_DIR), fs::metadata(out_dir)) {
        (Ok(s), Ok(o)) => s.dev() == o.dev(),
        _ => false,
    };
    if same_fs {
        let linked = probe.is_some_and(|src| {
            let Ok(dir) = tempfile::Builder::new().prefix(".nixboot-probe-").tempdir_in(out_dir) else {
                return false;
            };
            match fs::hard_link(src, dir.path().join("probe")) {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("cannot hard-link {} next to the output: {e}", src.display());
                    false
                }
            }
        });
        if linked {
            return here(true);
        }
        let reflinks =
            statfs(out_dir).is_ok_and(|s| [BTRFS_SUPER_MAGIC, XFS_SUPER_MAGIC].contains(&s.filesystem_type()));
        if reflinks {
            return here(false);
        }
    }
    let mem = mem_available();
    match tmpfs_candidates()
        .into_iter()
        .find(|d| tmpfs_fits(need, tmpfs_free(d), mem))
    {
        Some(dir) => Placement { dir, links: false },
        None => here(false),
    }
}

/// Walk the closure and choose where to stage it.
pub struct Plan {
    scan: Scan,
    /// Where the staging tree goes.
    pub placement: Placement,
}

/// Walk the closure and choose the staging's [`Placement`].
pub fn plan(closure: &Closure, out_dir: &Path) -> Result<Plan, Error> {
    let names: Vec<&str> = closure
        .paths
        .iter()
        .map(|m| m.path.strip_prefix("/nix/store/").unwrap_or(&m.path))
        .collect();
    let scan = scan(Path::new(STORE_DIR), &names)?;
    let files = || scan.paths.iter().flatten().filter(|e| e.meta.is_file());
    let probe = files()
        .find(|e| e.meta.nlink() == 1)
        .or_else(|| files().next())
        .map(|e| Path::new(STORE_DIR).join(&e.rel));
    let placement = placement(out_dir, probe.as_deref(), scan.file_bytes);
    Ok(Plan { scan, placement })
}

impl Plan {
    /// What the store paths take in the image (see [`usage`]).
    pub fn store_usage(&self) -> Usage {
        self.scan.usage
    }

    /// The staging stage's name, for the progress display.
    pub fn describe(&self) -> String {
        format!(
            "stage: {} the closure ({} files, {} MiB) into {}",
            if self.placement.links { "linking" } else { "copying" },
            self.scan.files,
            self.scan.file_bytes >> 20,
            self.placement.dir.display()
        )
    }

    /// Regular files to link or copy (the progress bar's length).
    pub fn files(&self) -> u64 {
        self.scan.files
    }

    /// The files mke2fs reads from the host store's page cache, in the
    /// order it reads them (its `scandir(…, alphasort)` in the C locale is
    /// the byte order the walk sorts by), with their sizes: the hard-linked
    /// ones. Copies were read just now, or live in a tmpfs.
    pub fn read_ahead_list(&self) -> Vec<(PathBuf, u64)> {
        if !self.placement.links {
            return Vec::new();
        }
        let store = Path::new(STORE_DIR);
        self.scan
            .paths
            .iter()
            .flatten()
            .filter(|e| e.meta.is_file() && e.meta.len() > 0)
            .map(|e| (store.join(&e.rel), e.meta.len()))
            .collect()
    }
}

/// How far (bytes) [`read_ahead`] keeps ahead of what mke2fs has read.
pub const READ_AHEAD: u64 = 512 << 20;

/// Keep the page cache [`READ_AHEAD`] bytes ahead of mke2fs (whose pid
/// arrives on `pid`) until `done`: `posix_fadvise(WILLNEED)` on the next
/// files of `files` whenever mke2fs's `rchar` (`/proc/<pid>/io`) shows it
/// has caught up. mke2fs reads one file at a time with 64 KiB `pread`s;
/// with the store out of the page cache that alone cost it 6-9 s on the
/// bench closure, now overlapped with its CPU work. Only a hint: it
/// changes no byte of the image, and an unreadable /proc just stops it
/// after the first window.
pub fn read_ahead(
    files: &[(PathBuf, u64)],
    pid: &std::sync::mpsc::Receiver<u32>,
    done: &std::sync::atomic::AtomicBool,
) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    use std::sync::atomic::Ordering::Relaxed;
    if files.is_empty() {
        return;
    }
    let Ok(pid) = pid.recv() else { return };
    let window = mem_available().map_or(READ_AHEAD, |m| READ_AHEAD.min(m / 4));
    let io = PathBuf::from(format!("/proc/{pid}/io"));
    let rchar = || -> Option<u64> {
        fs::read_to_string(&io)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("rchar:"))?
            .trim()
            .parse()
            .ok()
    };
    let (mut next, mut advised) = (files.iter(), 0u64);
    let mut pending = next.next();
    while let Some((path, len)) = pending {
        if done.load(Relaxed) || cmd::interrupted() {
            return;
        }
        let read = rchar();
        if advised >= read.unwrap_or(0).saturating_add(window) {
            if read.is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        if let Ok(f) = fs::File::open(path) {
            let _ = posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        }
        advised = advised.saturating_add(*len);
        pending = next.next();
    }
}

/// Copy the file `src` (whose metadata is `m`) to a new file `dst`: never
/// through an existing one, which could be a hard link to the store. The
/// data moves with `copy_file_range` (in the kernel; a reflink where the
/// filesystem has them); mode and times follow.
fn copy_new(src: &Path, dst: &Path, m: &fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e| Error::host(format!("copying {}", src.display()), e);
    let mut from = fs::File::open(src).map_err(err)?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(err)?;
    std::io::copy(&mut from, &mut to)
        .and_then(|_| to.set_permissions(fs::Permissions::from_mode(m.permissions().mode() & 0o7777)))
        .map_err(err)?;
    drop(to);
    set_times(dst, m)
}

fn set_times(path: &Path, m: &fs::Metadata) -> Result<(), Error> {
    let a = TimeSpec::new(m.atime(), m.atime_nsec());
    let t = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(nix::fcntl::AT_FDCWD, path, &a, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::host(format!("setting the times of {}", path.display()), e.into()))
}

/// Mirror the scanned store paths at `<root>/nix/store`: directories and
/// symlinks recreated with the same modes and times, regular files
/// hard-linked (`links`, and the file appears once in the closure) or
/// copied (`copy_file_range`: in-kernel, a reflink where the filesystem
/// has them). Files run on [`WORKERS`] threads, whatever store path they
/// are in.
fn mirror(store: &Path, root: &Path, scan: &Scan, links: bool, p: &Progress) -> Result<Mirrored, Error> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let dst_store = root.join("nix/store");
    fs::create_dir_all(&dst_store).map_err(|e| Error::host("creating the staging store", e))?;
    // An inode found twice in the closure (the host's auto-optimise-store)
    // is copied each time: mke2fs would make hard links of it in the image,
    // which would then differ with the way it was made.
    let mut seen: std::collections::HashMap<(u64, u64), u32> = std::collections::HashMap::new();
    for e in scan.paths.iter().flatten().filter(|e| e.meta.is_file()) {
        let n = seen.entry((e.meta.dev(), e.meta.ino())).or_insert(0);
        *n = n.saturating_add(1);
    }
    let unique = |m: &fs::Metadata| seen.get(&(m.dev(), m.ino())).is_some_and(|&n| n == 1);
    // Directories and symlinks, per store path; collect the files.
    let files = std::sync::Mutex::new(Vec::new());
    for_each_parallel(&scan.paths, |entries| {
        cmd::check_interrupted()?;
        let mut mine = Vec::new();
        for e in entries {
            let dst = dst_store.join(&e.rel);
            let ft = e.meta.file_type();
            if ft.is_dir() {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dst)
                    .map_err(|err| Error::host(format!("creating {}", dst.display()), err))?;
            } else if ft.is_symlink() {
                let src = store.join(&e.rel);
                let target =
                    fs::read_link(&src).map_err(|err| Error::host(format!("readlink {}", src.display()), err))?;
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(|err| Error::host(format!("creating {}", dst.display()), err))?;
                set_times(&dst, &e.meta)?;
            } else if ft.is_file() {
                mine.push(e);
            } else {
                return Err(Error::HostMsg(format!(
                    "{} is not a file, directory or symlink",
                    store.join(&e.rel).display()
                )));
            }
        }
        files
            .lock()
            .map_err(|_| Error::HostMsg("a staging worker panicked".into()))?
            .extend(mine);
        Ok(())
    })?;
    let files = files
        .into_inner()
        .map_err(|_| Error::HostMsg("a staging worker panicked".into()))?;
    let (linked, copied, copied_bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    for_each_parallel(&files, |e| {
        cmd::check_interrupted()?;
        let (src, dst) = (store.join(&e.rel), dst_store.join(&e.rel));
        // A file that cannot be linked (too many links already, say) is
        // copied.
        let link = links && unique(&e.meta) && fs::hard_link(&src, &dst).is_ok();
        if link {
            linked.fetch_add(1, Relaxed);
        } else {
            copy_new(&src, &dst, &e.meta)?;
            copied.fetch_add(1, Relaxed);
            copied_bytes.fetch_add(e.meta.len(), Relaxed);
        }
        p.inc();
        Ok::<(), Error>(())
    })?;
    // Directory modes (store directories are read-only) and times last,
    // deepest first.
    for_each_parallel(&scan.paths, |entries| {
        for e in entries.iter().rev().filter(|e| e.meta.is_dir()) {
            let dst = dst_store.join(&e.rel);
            fs::set_permissions(&dst, fs::Permissions::from_mode(e.meta.permissions().mode() & 0o7777))
                .map_err(|err| Error::host(format!("chmod {}", dst.display()), err))?;
            set_times(&dst, &e.meta)?;
        }
        Ok::<(), Error>(())
    })?;
    Ok(Mirrored {
        linked: linked.into_inner(),
        copied: copied.into_inner(),
        copied_bytes: copied_bytes.into_inner(),
    })
}

/// Put the closure's store paths into the staging root (see the module
/// docs, step 1), counting files on `p`.
pub fn populate(st: &Staging, plan: &Plan, p: &Progress) -> Result<Mirrored, Error> {
    mirror(Path::new(STORE_DIR), &st.root(), &plan.scan, plan.placement.links, p)
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
/// (see the module docs, steps 2–4). Only writes below `nix/var` (and
/// Nix's empty `nix/store/.links`), so it runs alongside [`populate`].
pub fn register(st: &Staging, system: &Path, closure: &Closure, time: u64) -> Result<(), Error> {
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
    // A fresh DB (without a schema file Nix creates one).
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

/// 4 KiB blocks an inode takes: file data, a directory of `entries`
/// entries (~40 bytes each, plus index blocks), a symlink too long for the
/// inode.
fn blocks_of(m: &fs::Metadata, entries: u64) -> u64 {
    if m.is_dir() {
        entries.saturating_mul(40).div_ceil(4096).saturating_add(1)
    } else if m.file_type().is_symlink() {
        u64::from(m.len() > 59)
    } else {
        m.len().div_ceil(4096)
    }
}

/// Count inodes and 4 KiB blocks under the staging `root`, adding `store`
/// (what [`Plan::store_usage`] counted) for the store paths instead of
/// walking them again.
pub fn usage(root: &Path, store: Usage) -> Result<Usage, Error> {
    let store_dir = root.join("nix/store");
    let mut u = store;
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).map_err(|e| Error::host(format!("stat {}", p.display()), e))?;
        u.inodes = u.inodes.saturating_add(1);
        let mut entries = 0u64;
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(|e| Error::host(format!("reading {}", p.display()), e))? {
                let e = e.map_err(|e| Error::host(format!("reading {}", p.display()), e))?;
                entries = entries.saturating_add(1);
                // Store paths (never dot names) are already counted.
                if p != store_dir || e.file_name().as_encoded_bytes().starts_with(b".") {
                    stack.push(e.path());
                }
            }
        }
        u.blocks = u.blocks.saturating_add(blocks_of(&m, entries));
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
    fn mirror_keeps_modes_times_and_links_only_unshared_files() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let a = store.join("a-x");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("sub/f"), b"data").unwrap();
        fs::write(a.join("shared"), b"s").unwrap();
        fs::create_dir(store.join("b-y")).unwrap();
        // auto-optimise-store: the same inode in two store paths.
        fs::hard_link(a.join("shared"), store.join("b-y/shared")).unwrap();
        // A host-side link of an otherwise unshared file (store/.links).
        fs::hard_link(a.join("sub/f"), d.path().join("dot-links-f")).unwrap();
        std::os::unix::fs::symlink("sub/f", a.join("l")).unwrap();
        fs::set_permissions(a.join("sub/f"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(a.join("shared"), fs::Permissions::from_mode(0o444)).unwrap();
        let one = TimeSpec::new(1, 0);
        for p in ["a-x/sub/f", "a-x/shared", "a-x/sub", "a-x/l", "a-x", "b-y"] {
            utimensat(
                nix::fcntl::AT_FDCWD,
                &store.join(p),
                &one,
                &one,
                UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        for p in ["a-x/sub", "a-x", "b-y"] {
            fs::set_permissions(store.join(p), fs::Permissions::from_mode(0o555)).unwrap();
        }
        let scan = scan(&store, &["a-x", "b-y"]).unwrap();
        assert_eq!((scan.files, scan.file_bytes), (3, 3 * 4096));
        let rels: Vec<String> = scan.paths[0].iter().map(|e| e.rel.display().to_string()).collect();
        assert_eq!(rels, ["a-x", "a-x/l", "a-x/shared", "a-x/sub", "a-x/sub/f"]);
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        for links in [true, false] {
            let root = d.path().join(format!("root-{links}"));
            let r = mirror(&store, &root, &scan, links, &Progress::new()).unwrap();
            assert_eq!((r.linked, r.copied), if links { (1, 2) } else { (0, 3) });
            let dst = root.join("nix/store");
            assert_eq!(ino(&dst.join("a-x/sub/f")) == ino(&a.join("sub/f")), links);
            assert_ne!(ino(&dst.join("a-x/shared")), ino(&a.join("shared")), "shared: copied");
            assert_ne!(ino(&dst.join("a-x/shared")), ino(&dst.join("b-y/shared")));
            for (f, mode) in [("a-x/sub/f", 0o555), ("a-x/shared", 0o444), ("b-y/shared", 0o444)] {
                let m = fs::metadata(dst.join(f)).unwrap();
                assert_eq!(m.permissions().mode() & 0o7777, mode, "{f}");
                assert_eq!(m.mtime(), 1, "{f}");
                assert_eq!(fs::read(dst.join(f)).unwrap(), fs::read(store.join(f)).unwrap());
            }
            for dir in ["a-x/sub", "a-x", "b-y"] {
                let m = fs::metadata(dst.join(dir)).unwrap();
                assert_eq!(m.permissions().mode() & 0o7777, 0o555, "{dir}");
                assert_eq!(m.mtime(), 1, "{dir}");
            }
            assert_eq!(fs::read_link(dst.join("a-x/l")).unwrap(), PathBuf::from("sub/f"));
            assert_eq!(fs::symlink_metadata(dst.join("a-x/l")).unwrap().mtime(), 1);
            remove_tree(&root).unwrap();
        }
        remove_tree(&store).unwrap();
    }

    #[test]
    fn tmpfs_copy_needs_room_and_memory() {
        let g = 1u64 << 30;
        assert!(tmpfs_fits(g, Some(4 * g), Some(8 * g)));
        assert!(!tmpfs_fits(g, Some(g), Some(8 * g)), "the tmpfs is too small");
        assert!(!tmpfs_fits(g, Some(4 * g), Some(2 * g)), "not enough memory left");
        assert!(!tmpfs_fits(g, None, Some(8 * g)), "no tmpfs");
        assert!(!tmpfs_fits(g, Some(4 * g), None));
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
