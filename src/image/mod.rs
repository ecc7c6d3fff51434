//! `nixboot image`: build a bootable raw disk image for a NixOS Xen PV
//! guest from a system toplevel, without root, loop devices or mounts.
//!
//! Trusted inputs (the user's own store path and files); the host tools do
//! the heavy lifting and every one of them runs through [`cmd::run_cmd`]:
//!
//! 1. [`stage`]: walk the closure, then mirror it into a chroot store in
//!    a staging directory — hard links to the host store where the kernel
//!    allows (no data copied), else copies, in a tmpfs when they fit —
//!    while, alongside, registering it from the host's own registration
//!    (`nix-store --dump-db` → `--load-db`, plus one `sqlite3` script for
//!    times, signatures and content addresses) and making the system
//!    profile (`nix-env --store … --set`); then add
//!    `/etc/nixos/configuration.nix` and `/root/.nix-channels`, and pin
//!    modes and times outside the store.
//! 2. [`fs`]: a sparse temporary file of `--size`, the partition table
//!    (mbrman / gptman), `mke2fs -d` into the partition's byte range
//!    (without `metadata_csum`), owners and ctimes set in the filesystem
//!    with `debugfs`, checksums with `tune2fs -O metadata_csum`, directory
//!    indexes with `e2fsck -fyD`. The staging tree is removed in the
//!    background once mke2fs is done with it.
//! 3. fsync, rename over the output (refusing an existing one without
//!    `--force`), and the optional xl config ([`domain`]).
//!
//! **Ownership.** Every inode is given uid 0 / gid 0 in the filesystem
//! itself, after `mke2fs` (see [`fs`] for why not a user namespace or
//! fakeroot). Running as root or as a user gives the same bytes.
//!
//! **Reproducibility.** The filesystem UUID, the directory hash seed, the
//! MBR signature and the GPT GUIDs come from a SHA-256 of the inputs (the
//! system path, size, table, label, configuration, channel line and time).
//! One time `T` — `SOURCE_DATE_EPOCH`, else 1 (the store's own mtime) —
//! is used for every timestamp Nix and e2fsprogs would take from the
//! clock: the superblock (`E2FSPROGS_FAKE_TIME`, `E2FSCK_TIME`), every
//! inode's atime and ctime (`debugfs`), mtimes outside the store, the
//! profile links (whose mtime is the generation's date) and the DB's
//! `registrationTime`. Store paths keep Nix's mtime 1.
//!
//! **Speed.** The closure's data is written once, by mke2fs, into the
//! image, and the staging tree costs a hard link per file (or, where the
//! kernel forbids that, one copy, in a tmpfs when it fits). mke2fs is most
//! of the run, so everything else is kept off its path or next to it:
//! - it runs without `metadata_csum` (its linear directory scans
//!   checksummed every block they read), which `tune2fs` adds afterwards;
//! - a thread reads the host store ahead of it ([`stage::read_ahead`]),
//!   another has the kernel write the image out behind it
//!   ([`fs::write_behind`]) instead of all at its final fsync;
//! - registration runs while the store paths are staged, and the staging
//!   tree is removed while debugfs, tune2fs and e2fsck finish the image.
//!
//! `mke2fs -d` still inserts directory entries linearly (a directory with
//! tens of thousands of entries costs it seconds) and checks every file
//! with a link count above 1 against a list of the ones it has seen
//! (quadratic: ~1 s for the bench closure's 35,000 hard links). Measured
//! numbers: `xen/bench/image-bench.sh`.
//!
//! **Cleanup.** The staging tree and the temporary image are guards:
//! dropped on any error, and SIGINT/SIGTERM/SIGHUP only set a flag that
//! turns into an error (see [`cmd`]), so an interrupted run leaves nothing
//! behind. Only SIGKILL can leave `.nixboot-staging-*` (next to the output,
//! or in `$TMPDIR` or /dev/shm) or `.<name>.nixboot-*` next to the output.

pub mod cmd;
pub mod domain;
pub mod fs;
pub mod progress;
pub mod stage;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::Error;
use fs::{BLOCK, Layout, Table};
use progress::Progress;

/// Everything `nixboot image` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The system toplevel (store path or a link to one).
    pub system: PathBuf,
    /// Disk size in bytes.
    pub size: u64,
    /// The image to write.
    pub output: PathBuf,
    /// Partition table.
    pub table: Table,
    /// Filesystem label.
    pub label: String,
    /// File for `/etc/nixos/configuration.nix`.
    pub configuration: Option<PathBuf>,
    /// Channel URL and name for `/root/.nix-channels`.
    pub channel: Option<(String, Option<String>)>,
    /// Where to write an xl config.
    pub domain_config: Option<PathBuf>,
    /// Domain name (default: the image's file stem).
    pub name: Option<String>,
    /// Domain memory in MiB.
    pub memory: u64,
    /// Domain vCPUs.
    pub vcpus: u32,
    /// The domain type written into the domain config.
    pub guest_type: crate::kernel::XenMode,
    /// Replace existing output files.
    pub force: bool,
}

/// Tools `nixboot image` runs.
pub const TOOLS: &[&str] = &[
    "nix",
    "nix-store",
    "nix-env",
    "mke2fs",
    "dumpe2fs",
    "debugfs",
    "tune2fs",
    "e2fsck",
    "sqlite3",
];

/// The time to pin every timestamp to.
pub fn build_time() -> Result<u64, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t| u32::try_from(*t).is_ok())
            .ok_or_else(|| Error::Usage(format!("SOURCE_DATE_EPOCH={v:?} is not a time in seconds"))),
        _ => Ok(1),
    }
}

/// The channel of a `nixos-version`: `24.11.20240101.abcdef` →
/// `https://nixos.org/channels/nixos-24.11`; `25.05pre…` → unstable.
pub fn default_channel(version: &str) -> Option<String> {
    let v = version.trim();
    let major: String = v.chars().take_while(char::is_ascii_digit).collect();
    let rest = v.get(major.len()..)?.strip_prefix('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if major.is_empty() || minor.is_empty() {
        return None;
    }
    let after = rest.get(minor.len()..).unwrap_or("");
    let name = if after.starts_with("pre") {
        "nixos-unstable".to_owned()
    } else {
        format!("nixos-{major}.{minor}")
    };
    Some(format!("https://nixos.org/channels/{name}"))
}

/// `<url> <name>` for `.nix-channels` (the name defaults to `nixos`).
pub fn channel_line(channel: &Option<(String, Option<String>)>, version: Option<&str>) -> Result<String, Error> {
    let (url, name) = match channel {
        Some((u, n)) => (u.clone(), n.clone().unwrap_or_else(|| "nixos".into())),
        None => {
            let url = version.and_then(default_channel).unwrap_or_else(|| {
                log::warn!("no usable nixos-version in the system; defaulting to nixos-unstable");
                "https://nixos.org/channels/nixos-unstable".into()
            });
            (url, "nixos".into())
        }
    };
    for (what, s) in [("channel URL", &url), ("channel name", &name)] {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Usage(format!(
                "the {what} {} must be one word",
                crate::error::escape(s.as_bytes())
            )));
        }
    }
    Ok(format!("{url} {name}"))
}

/// Resolve `--system` to `/nix/store/<name>` and check it is a NixOS
/// system (has `init` and `kernel`).
pub fn resolve_system(p: &Path) -> Result<PathBuf, Error> {
    let real = std::fs::canonicalize(p).map_err(|e| Error::Usage(format!("--system {}: {e}", p.display())))?;
    let parent_ok = real.parent() == Some(Path::new(stage::STORE_DIR));
    if !parent_ok {
        return Err(Error::Usage(format!(
            "--system {} resolves to {}, which is not a path directly in {}",
            p.display(),
            real.display(),
            stage::STORE_DIR
        )));
    }
    let missing: Vec<&str> = ["init", "kernel"]
        .into_iter()
        .filter(|f| std::fs::symlink_metadata(real.join(f)).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "{} is not a NixOS system: no {} in it",
            real.display(),
            missing.join(" and no ")
        )));
    }
    Ok(real)
}

fn absolute(p: &Path) -> Result<PathBuf, Error> {
    let abs = std::path::absolute(p).map_err(|e| Error::host(format!("resolving {}", p.display()), e))?;
    let parent = abs
        .parent()
        .ok_or_else(|| Error::Usage(format!("{} is not a file path", p.display())))?;
    let dir = std::fs::canonicalize(parent).map_err(|e| Error::Usage(format!("{}: {e}", parent.display())))?;
    let name = abs
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} is not a file path", p.display())))?;
    Ok(dir.join(name))
}

fn refuse_existing(p: &Path, force: bool) -> Result<(), Error> {
    if !force && std::fs::symlink_metadata(p).is_ok() {
        return Err(Error::Usage(format!(
            "{} exists; use --force to replace it",
            p.display()
        )));
    }
    Ok(())
}

/// Input digest: the seed of every identifier in the image.
pub fn seed(o: &Options, system: &Path, config: Option<&[u8]>, channel: &str, time: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"nixboot image v1\0");
    h.update(system.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(o.size.to_le_bytes());
    h.update(format!("{:?}\0{}\0", o.table, o.label).as_bytes());
    match config {
        Some(c) => {
            h.update(b"config\0");
            h.update(u64::try_from(c.len()).unwrap_or(u64::MAX).to_le_bytes());
            h.update(c);
        }
        None => h.update(b"noconfig\0"),
    }
    h.update(channel.as_bytes());
    h.update(b"\0");
    h.update(time.to_le_bytes());
    h.finalize().into()
}

fn sub_seed(seed: &[u8; 32], what: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    h.finalize().into()
}

/// A UUID (version 4 layout) from the first 16 bytes of `b`.
pub fn uuid(b: &[u8; 32]) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(b.get(..16).unwrap_or(&[0u8; 16]));
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    let hex: String = u.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or(""),
        hex.get(8..12).unwrap_or(""),
        hex.get(12..16).unwrap_or(""),
        hex.get(16..20).unwrap_or(""),
        hex.get(20..32).unwrap_or("")
    )
}

/// mke2fs's default journal size (blocks of 4 KiB) for a filesystem of
/// `blocks` blocks (`ext2fs_default_journal_size`).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

/// Whether a filesystem of `fs_size` bytes holds `u` (with some slack),
/// counting the inode tables and journal mke2fs puts in it.
pub fn fits(fs_size: u64, u: &stage::Usage) -> bool {
    let blocks = fs_size / BLOCK;
    // mke2fs's "small" type (< 512 MiB) has an inode per 4 KiB, else 16.
    let ratio: u64 = if fs_size < (512 << 20) { 4096 } else { 16384 };
    let inodes = fs_size / ratio;
    let inode_table_blocks = inodes.saturating_mul(256) / BLOCK;
    // Group descriptors, bitmaps, reserved GDT: about 1/512 of the disk.
    let meta = blocks / 512 + 64;
    let free = blocks
        .saturating_sub(inode_table_blocks)
        .saturating_sub(journal_blocks(blocks))
        .saturating_sub(meta);
    // 5% slack for extent trees, directory growth and the indexes.
    let want = u.blocks.saturating_add(u.blocks / 20).saturating_add(16);
    want <= free && u.inodes.saturating_add(64) <= inodes
}

/// The smallest disk (a multiple of 64 MiB) whose filesystem holds `u`.
pub fn needed_disk(table: Table, u: &stage::Usage) -> u64 {
    let step = 64u64 << 20;
    let mut disk = step;
    while disk < (1u64 << 50) {
        if fs::layout(table, disk).is_ok_and(|l| fits(l.size, u)) {
            return disk;
        }
        disk = disk.saturating_add(step);
    }
    disk
}

/// Human size: `1.5G`, `640M`.
pub fn human(bytes: u64) -> String {
    let mib = bytes.div_ceil(1 << 20);
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else if mib >= 10240 {
        format!("{:.1}G", mib as f64 / 1024.0)
    } else {
        format!("{mib}M")
    }
}

fn too_small(o: &Options, u: &stage::Usage) -> Error {
    let need = needed_disk(o.table, u);
    Error::Usage(format!(
        "--size {} is too small for this system: its closure needs a disk of about {} \
         ({} inodes, {} of data); try --size {}",
        human(o.size),
        human(need),
        u.inodes,
        human(u.blocks.saturating_mul(BLOCK)),
        human(need)
    ))
}

/// Write `bytes` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut t = tempfile::Builder::new()
        .prefix(".nixboot-")
        .tempfile_in(dir)
        .map_err(|e| Error::host(format!("creating a file in {}", dir.display()), e))?;
    t.write_all(bytes)
        .and_then(|()| t.as_file().sync_all())
        .and_then(|()| t.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| Error::host(format!("writing {}", path.display()), e))?;
    persist(t, path, force)
}

fn persist(t: tempfile::NamedTempFile, path: &Path, force: bool) -> Result<(), Error> {
    let r = if force {
        t.persist(path)
    } else {
        t.persist_noclobber(path)
    };
    r.map(|_| ())
        .map_err(|e| Error::host(format!("moving the result to {}", path.display()), e.error))
}

/// Build the image.
pub fn run(o: &Options) -> Result<(), Error> {
    let started = Instant::now();
    if o.label.is_empty() || o.label.len() > 16 {
        return Err(Error::Usage(format!("--label {:?} must be 1 to 16 bytes", o.label)));
    }
    if !o.size.is_multiple_of(512) {
        return Err(Error::Usage("--size must be a multiple of 512 bytes".into()));
    }
    let system = resolve_system(&o.system)?;
    let output = absolute(&o.output)?;
    if output.as_os_str().as_encoded_bytes().contains(&b'?') {
        // e2fsprogs tools take `<image>?offset=N`.
        return Err(Error::Usage("the output path may not contain '?'".into()));
    }
    refuse_existing(&output, o.force)?;
    let domain_path = o.domain_config.as_deref().map(absolute).transpose()?;
    if let Some(d) = &domain_path {
        refuse_existing(d, o.force)?;
    }
    let out_dir = output.parent().unwrap_or(Path::new("/")).to_owned();
    let layout: Layout = fs::layout(o.table, o.size)?;
    cmd::require_tools(TOOLS)?;
    cmd::install_signal_handlers()?;
    let time = build_time()?;
    let config = o
        .configuration
        .as_deref()
        .map(|c| std::fs::read(c).map_err(|e| Error::Usage(format!("--configuration {}: {e}", c.display()))))
        .transpose()?;
    let version = std::fs::read_to_string(system.join("nixos-version")).ok();
    let channel = channel_line(&o.channel, version.as_deref())?;
    let seed = seed(o, &system, config.as_deref(), &channel, time);

    let mut p = Progress::new();
    p.println(&format!("building {} from {}", output.display(), system.display()));
    let closure = stage::query_closure(&system)?;
    log::debug!(
        "closure: {} paths, {} bytes of NAR",
        closure.paths.len(),
        closure.nar_size
    );
    let rough = stage::Usage {
        inodes: u64::try_from(closure.paths.len()).unwrap_or(u64::MAX),
        blocks: closure.nar_size / BLOCK,
    };
    if !fits(layout.size, &rough) {
        return Err(too_small(o, &rough));
    }

    p.stage("scan: walking the closure", None);
    let plan = stage::plan(&closure, &out_dir)?;
    log::debug!("staging: {:?}", plan.placement);
    // The store paths plus what Nix and we add next to them (the DB, the
    // profile, a few small files): refuse before staging anything.
    let mut want = plan.store_usage();
    want.inodes = want.inodes.saturating_add(64);
    want.blocks = want
        .blocks
        .saturating_add((8 << 20) / BLOCK)
        .saturating_add(u64::try_from(closure.paths.len()).unwrap_or(u64::MAX));
    if !fits(layout.size, &want) {
        return Err(too_small(o, &want));
    }
    let staging = stage::Staging::create(&plan.placement.dir)?;
    std::fs::create_dir_all(staging.root().join("nix/store"))
        .map_err(|e| Error::host("creating the staging store", e))?;
    // Registration only writes below nix/var (and Nix's nix/store/.links):
    // it runs while the store paths are linked or copied.
    p.stage(&plan.describe(), Some(plan.files()));
    let (mirrored, registered) = std::thread::scope(|s| {
        let reg = s.spawn(|| stage::register(&staging, &system, &closure, time));
        let mirrored = stage::populate(&staging, &plan, &p);
        let registered = reg
            .join()
            .unwrap_or_else(|_| Err(Error::HostMsg("the registration thread panicked".into())));
        (mirrored, registered)
    });
    let mirrored = mirrored?;
    registered?;
    let read_ahead = plan.read_ahead_list();
    let store_usage = plan.store_usage();
    drop(plan);
    log::debug!(
        "store paths staged: {} files linked, {} copied ({} bytes)",
        mirrored.linked,
        mirrored.copied,
        mirrored.copied_bytes
    );
    cmd::check_interrupted()?;
    stage::write_extras(
        &staging,
        &stage::Extras {
            configuration: config,
            channel,
        },
    )?;
    stage::normalise(&staging, time)?;
    cmd::check_interrupted()?;
    let usage = stage::usage(&staging.root(), store_usage)?;
    if !fits(layout.size, &usage) {
        return Err(too_small(o, &usage));
    }

    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.nixboot-"))
        .tempfile_in(&out_dir)
        .map_err(|e| Error::host(format!("creating the image in {}", out_dir.display()), e))?;
    tmp.as_file()
        .set_len(o.size)
        .map_err(|e| Error::host("sizing the image", e))?;
    fs::write_table(tmp.as_file_mut(), o.table, o.size, &sub_seed(&seed, "partition table"))?;
    let root = staging.root();
    let mk = fs::Mkfs {
        image: tmp.path(),
        layout,
        label: &o.label,
        uuid: uuid(&seed),
        hash_seed: uuid(&sub_seed(&seed, "hash seed")),
        root: &root,
        time,
    };
    // While mke2fs runs, one thread reads ahead of it in the host store
    // (`stage::read_ahead`), another has the kernel write the image out
    // behind it (`fs::write_behind`).
    let done = std::sync::atomic::AtomicBool::new(false);
    let made = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (files, done) = (&read_ahead, &done);
        s.spawn(move || stage::read_ahead(files, &rx, done));
        let image = tmp.path();
        s.spawn(move || fs::write_behind(image, &layout, done));
        let r = fs::mkfs(&mk, &mut p, &mut |pid| {
            let _ = tx.send(pid);
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(tx);
        r
    });
    drop(read_ahead);
    if let Err(e) = made {
        if fs::is_out_of_space(&e.to_string()) {
            return Err(too_small(o, &usage));
        }
        return Err(e);
    }
    // mke2fs is done with the staging tree: remove it while the
    // filesystem is finished (dropped on an error: waits until it is gone).
    let removal = staging.remove_in_background();
    cmd::check_interrupted()?;
    fs::fix_inodes(tmp.path(), &layout, time, &mut p)?;
    fs::enable_checksums(tmp.path(), &layout, time, &mut p)?;
    fs::index(tmp.path(), &layout, time, &mut p)?;
    // Before the fsync: whatever of the copied files is still only in the
    // page cache is then never written to disk.
    p.stage("cleanup: removing the staging tree", None);
    removal.wait();
    p.stage("sync: writing the image to disk", None);
    tmp.as_file()
        .sync_all()
        .and_then(|()| tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| Error::host("syncing the image", e))?;
    cmd::check_interrupted()?;
    persist(tmp, &output, o.force)?;
    p.finish();

    if let Some(d) = &domain_path {
        let exe = std::env::current_exe().map_err(|e| Error::host("finding the nixboot binary", e))?;
        let default_name = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nixos".into());
        let text = domain::render(&domain::Domain {
            name: o.name.as_deref().unwrap_or(&default_name),
            memory: o.memory,
            vcpus: o.vcpus,
            guest_type: o.guest_type,
            bootloader: &exe,
            image: &output,
        })?;
        write_atomic(d, text.as_bytes(), o.force)?;
        p.println(&format!("wrote {}", d.display()));
    }
    p.println(&format!(
        "wrote {} ({}, {}, ext4 \"{}\", {} store paths) in {:.1}s",
        output.display(),
        human(o.size),
        match o.table {
            Table::Mbr => "MBR",
            Table::Gpt => "GPT",
            Table::None => "no partition table",
        },
        o.label,
        closure.paths.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels() {
        assert_eq!(
            default_channel("24.11.20240101.abcdef").as_deref(),
            Some("https://nixos.org/channels/nixos-24.11")
        );
        assert_eq!(
            default_channel("25.05pre712345.abcdef").as_deref(),
            Some("https://nixos.org/channels/nixos-unstable")
        );
        assert_eq!(default_channel("junk"), None);
        assert_eq!(
            channel_line(&None, Some("23.05")).unwrap(),
            "https://nixos.org/channels/nixos-23.05 nixos"
        );
        assert_eq!(
            channel_line(&Some(("https://x/c".into(), Some("c".into()))), None).unwrap(),
            "https://x/c c"
        );
        assert!(channel_line(&Some(("a b".into(), None)), None).is_err());
    }

    #[test]
    fn uuids_are_v4_shaped() {
        let u = uuid(&[0xffu8; 32]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn size_estimates() {
        let small = stage::Usage {
            inodes: 100,
            blocks: 100,
        };
        assert!(fits(60 << 20, &small));
        let big = stage::Usage {
            inodes: 50_000,
            blocks: (2u64 << 30) / BLOCK,
        };
        assert!(!fits(1 << 30, &big));
        let need = needed_disk(Table::Mbr, &big);
        assert!(need > (2 << 30) && need < (3 << 30), "{need}");
        assert!(fits(fs::layout(Table::Mbr, need).unwrap().size, &big));
        assert_eq!(human(10 << 30), "10G");
        assert_eq!(human(640 << 20), "640M");
    }

    #[test]
    fn resolve_rejects_non_store_paths() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(resolve_system(d.path()), Err(Error::Usage(_))));
    }
}
