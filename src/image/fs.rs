//! The disk: partition table, ext4 filesystem, ownership and times, and
//! directory indexes.
//!
//! - Partition tables are written in-process: MBR with `mbrman` (one
//!   bootable type-0x83 entry from sector 2048 to the end), GPT with
//!   `gptman` (same crate family; one "Linux filesystem" partition from
//!   2048, protective MBR, backup header). Both crates are fine for
//!   *writing* our own table; the boot path never uses them to read a
//!   guest's (see `part`).
//! - `mke2fs -t ext4 -b 4096 -O ^metadata_csum -d <staging> -E
//!   offset=<bytes>,hash_seed=… -U <uuid> <image> <size>k` fills the
//!   partition's byte range directly (an explicit size, so the rest of the
//!   disk is untouched). `E2FSPROGS_FAKE_TIME` pins the superblock's times
//!   and the inodes mke2fs makes itself; `LC_ALL=C` pins the order in
//!   which it walks directories (`scandir(…, alphasort)`, which collates
//!   by locale).
//! - **Checksums come last.** For every file it adds, `mke2fs -d` looks
//!   the name up in its directory and inserts it, each a linear scan of
//!   the directory's blocks, and with `metadata_csum` every block read is
//!   checksummed (crc32c, ~40% of its profile) and every inode and block
//!   written too. So mke2fs and the debugfs pass below run with `-O
//!   ^metadata_csum`, and `tune2fs -O metadata_csum` then computes every
//!   checksum once (under a second). Measured on the bench closure
//!   (2.3 GiB, 42,600 files): mke2fs 23 s → 14-17 s (user time 6.5 s →
//!   2.7 s); on one directory of 18,000 entries 56 s → 16 s. The features
//!   end up those of Debian 12's `mke2fs -t ext4` (metadata_csum is on
//!   whatever the host's mke2fs.conf says).
//! - `-E lazy_journal_init=1`: the temporary image is a new sparse file,
//!   so the journal need not be written with zeros (64 MiB for 10 GiB, up
//!   to 1 GiB on big disks). The inode tables mke2fs already leaves
//!   alone: it punches the range, which then reads as zeros. Making an
//!   empty 10 GiB filesystem takes it 0.03 s; `nodiscard`,
//!   `lazy_itable_init` or `assume_storage_prezeroed` gain nothing more.
//! - Ownership and ctimes are then set in the filesystem itself, with one
//!   `debugfs -w -f -` run (`set_inode_field` for every used inode: uid
//!   0, gid 0, atime and ctime = the build time; the script is fed on
//!   stdin). `mke2fs -d` copies the building user's uid/gid
//!   and the staging files' ctime and atime, none of which can be set
//!   from userspace. This is the robust choice: it works as any user on
//!   any host, while `unshare --map-root-user` needs unprivileged user
//!   namespaces (off on many hardened hosts) and `fakeroot` needs
//!   LD_PRELOAD into a dynamically linked mke2fs, and neither pins ctime.
//!   The used inodes come from `dumpe2fs`'s per-group free-inode lists.
//!   `/nix/store` gets gid 30000 and mode 1775, as NixOS's stage 2 sets.
//! - `e2fsck -fyD` rebuilds every directory (with room for the checksum
//!   tails) and builds the indexes (htrees); `E2FSCK_TIME` pins its
//!   last-check time. e2fsprogs tools address the partition as
//!   `<image>?offset=<bytes>`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::cmd::{self, Run, run_cmd};
use super::progress::Progress;
use crate::error::Error;

/// Sector size of the tables we write.
pub const SECTOR: u64 = 512;
/// First sector of the partition (1 MiB, as parted and fdisk align).
pub const FIRST_LBA: u64 = 2048;
/// ext4 block size used.
pub const BLOCK: u64 = 4096;
/// GUID of the GPT "Linux filesystem data" type,
/// 0FC63DAF-8483-4772-8E79-3D69D8477DE4, in on-disk (mixed-endian) order.
pub const LINUX_FS_GUID: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

/// The partition table to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// MBR (msdos) with one bootable Linux partition.
    Mbr,
    /// GPT with one Linux filesystem partition.
    Gpt,
    /// No table: the filesystem fills the disk.
    None,
}

/// Where the filesystem goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the filesystem.
    pub offset: u64,
    /// Filesystem size in bytes (a multiple of [`BLOCK`]).
    pub size: u64,
}

fn round_down(v: u64, m: u64) -> u64 {
    v.checked_div(m).unwrap_or(0).saturating_mul(m)
}

/// The filesystem range for a disk of `disk` bytes.
pub fn layout(table: Table, disk: u64) -> Result<Layout, Error> {
    let sectors = disk / SECTOR;
    let part = |last_lba_excl: u64| -> Result<Layout, Error> {
        let count = last_lba_excl.saturating_sub(FIRST_LBA);
        let size = round_down(count.saturating_mul(SECTOR), BLOCK);
        if size < (8 << 20) {
            return Err(Error::Usage(
                "the disk is too small for a partition (at least 10M)".into(),
            ));
        }
        Ok(Layout {
            offset: FIRST_LBA * SECTOR,
            size,
        })
    };
    match table {
        Table::None => Ok(Layout {
            offset: 0,
            size: round_down(disk, BLOCK),
        }),
        Table::Mbr => {
            if sectors > u64::from(u32::MAX) {
                return Err(Error::Usage(
                    "an MBR partition cannot pass 2 TiB; use --partition-table gpt".into(),
                ));
            }
            part(sectors)
        }
        // 33 sectors of backup entries + header at the end; keep the end
        // 4 KiB-aligned.
        Table::Gpt => part(round_down(sectors.saturating_sub(34), BLOCK / SECTOR)),
    }
}

/// Write the partition table into `f` (already sized); return the layout.
pub fn write_table(f: &mut File, table: Table, disk: u64, seed: &[u8; 32]) -> Result<Layout, Error> {
    let l = layout(table, disk)?;
    let err = |e: &dyn std::fmt::Display| Error::HostMsg(format!("writing the partition table: {e}"));
    let first = |n: usize| -> [u8; 16] {
        let mut g = [0u8; 16];
        g.copy_from_slice(seed.get(n..n.saturating_add(16)).unwrap_or(&[0u8; 16]));
        // Mark as a random (v4) GUID: the bytes come from a hash.
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    };
    match table {
        Table::None => {}
        Table::Mbr => {
            let sig = [seed[0], seed[1], seed[2], seed[3]];
            let sector = u32::try_from(SECTOR).map_err(|e| err(&e))?;
            let mut mbr = mbrman::MBR::new_from(f, sector, sig).map_err(|e| err(&e))?;
            let start = u32::try_from(FIRST_LBA).map_err(|e| err(&e))?;
            mbr[1] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_ACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys: 0x83,
                last_chs: mbrman::CHS::empty(),
                starting_lba: start,
                sectors: mbr.disk_size.saturating_sub(start),
            };
            mbr.write_into(f).map_err(|e| err(&e))?;
        }
        Table::Gpt => {
            let mut gpt = gptman::GPT::new_from(f, SECTOR, first(0)).map_err(|e| err(&e))?;
            gpt[1] = gptman::GPTPartitionEntry {
                partition_type_guid: LINUX_FS_GUID,
                unique_partition_guid: first(16),
                starting_lba: FIRST_LBA,
                ending_lba: FIRST_LBA + l.size / SECTOR - 1,
                attribute_bits: 0,
                partition_name: "NIXOS".into(),
            };
            gptman::GPT::write_protective_mbr_into(f, SECTOR).map_err(|e| err(&e))?;
            gpt.write_into(f).map_err(|e| err(&e))?;
        }
    }
    f.flush().map_err(|e| Error::host("writing the partition table", e))?;
    Ok(l)
}

/// `<image>?offset=<bytes>`: how e2fsprogs tools address a partition.
pub fn device(image: &Path, l: &Layout) -> OsString {
    let mut s = image.as_os_str().to_owned();
    if l.offset != 0 {
        s.push(format!("?offset={}", l.offset));
    }
    s
}

/// Inputs of [`mkfs`].
pub struct Mkfs<'a> {
    /// The image file.
    pub image: &'a Path,
    /// Where in it.
    pub layout: Layout,
    /// Filesystem label.
    pub label: &'a str,
    /// Filesystem UUID.
    pub uuid: String,
    /// Directory hash seed (a UUID).
    pub hash_seed: String,
    /// The staging root.
    pub root: &'a Path,
    /// The pinned time.
    pub time: u64,
}

/// Whether a mke2fs failure means "out of space".
pub fn is_out_of_space(msg: &str) -> bool {
    [
        "Could not allocate block",
        "No space left",
        "Could not allocate inode",
        "too small",
        "ENOSPC",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// Make the filesystem from the staging tree; `on_spawn` gets mke2fs's
/// process id.
pub fn mkfs(m: &Mkfs<'_>, p: &mut Progress, on_spawn: &mut dyn FnMut(u32)) -> Result<(), Error> {
    p.stage("mkfs: making ext4 from the staging tree", None);
    // See the module docs for lazy_journal_init.
    let mut e = vec![
        format!("hash_seed={}", m.hash_seed),
        "root_owner=0:0".to_owned(),
        "lazy_journal_init=1".to_owned(),
    ];
    if m.layout.offset != 0 {
        e.push(format!("offset={}", m.layout.offset));
    }
    let mut c = cmd::command(
        "mke2fs",
        [
            OsString::from("-F"),
            "-t".into(),
            "ext4".into(),
            "-b".into(),
            BLOCK.to_string().into(),
            "-O".into(),
            "^metadata_csum".into(),
            "-L".into(),
            m.label.into(),
            "-U".into(),
            m.uuid.clone().into(),
            "-E".into(),
            e.join(",").into(),
            "-d".into(),
            m.root.as_os_str().to_owned(),
            m.image.as_os_str().to_owned(),
            format!("{}k", m.layout.size / 1024).into(),
        ],
    );
    c.env("E2FSPROGS_FAKE_TIME", m.time.to_string());
    run_cmd(
        c,
        Run {
            on_spawn: Some(on_spawn),
            ..Run::default()
        },
    )?;
    Ok(())
}

/// Where [`write_behind`] starts: past the partition's first flex group
/// of bitmaps and inode tables (at most ~40 MiB with mke2fs's defaults),
/// which every later step reads again.
pub const WRITE_BEHIND_FROM: u64 = 64 << 20;
/// How far below the end of what mke2fs has written [`write_behind`]
/// leaves the page cache alone (the directories it is still filling live
/// there).
pub const WRITE_BEHIND_LAG: u64 = 64 << 20;
/// A hole at least this long ends what mke2fs has written so far (it
/// allocates first fit from the start; the inode tables it has not
/// touched are holes of 32 MiB per flex group).
pub const WRITE_BEHIND_GAP: u64 = 128 << 20;

/// Have the kernel write the image out behind mke2fs, until `done`.
///
/// mke2fs writes the closure into the page cache and fsyncs at the end;
/// the kernel starts writing back only past its dirty threshold (10% of
/// the free memory), so most of the disk writes waited for that fsync:
/// 2-4 s of the bench closure's 10-13 s mke2fs run. Every 100 ms this finds
/// the end of what mke2fs has written (`SEEK_DATA`/`SEEK_HOLE` from the
/// last point) and `posix_fadvise(POSIX_FADV_DONTNEED)`s, once, the range
/// up to [`WRITE_BEHIND_LAG`] below it: the kernel starts writing its dirty
/// pages and drops the clean ones. (`sync_file_range`, the usual tool,
/// needs `unsafe` here.) A hint only: no byte of the image depends on it;
/// a dropped block mke2fs reads again (a directory it is still filling) is
/// read back from the disk, once, as ranges are never dropped twice.
pub fn write_behind(image: &Path, l: &Layout, done: &std::sync::atomic::AtomicBool) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    use nix::unistd::{Whence, lseek};
    let Ok(f) = File::open(image) else { return };
    let to_off = |v: u64| libc::off_t::try_from(v).ok();
    let end_of_fs = l.offset.saturating_add(l.size);
    let mut dropped = l.offset.saturating_add(WRITE_BEHIND_FROM);
    while !done.load(std::sync::atomic::Ordering::Relaxed) && !cmd::interrupted() {
        std::thread::sleep(std::time::Duration::from_millis(100));
        // The end of the written part that starts at `dropped`.
        let mut end = dropped;
        while end < end_of_fs {
            let Some(data) = to_off(end)
                .and_then(|o| lseek(&f, o, Whence::SeekData).ok())
                .and_then(|d| u64::try_from(d).ok())
            else {
                break;
            };
            if data.saturating_sub(end) >= WRITE_BEHIND_GAP {
                break;
            }
            let Some(hole) = to_off(data)
                .and_then(|o| lseek(&f, o, Whence::SeekHole).ok())
                .and_then(|h| u64::try_from(h).ok())
            else {
                break;
            };
            end = hole.max(data.saturating_add(1));
        }
        let target = end.saturating_sub(WRITE_BEHIND_LAG).min(end_of_fs);
        if target > dropped
            && let (Some(o), Some(n)) = (to_off(dropped), to_off(target - dropped))
        {
            let _ = posix_fadvise(&f, o, n, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            dropped = target;
        }
    }
    log::debug!("write-behind: up to {} MiB into the image", dropped >> 20);
}

/// Used inodes from `dumpe2fs` output: every inode of every group, minus
/// the "Free inodes:" ranges listed for it.
pub fn used_inodes(dump: &str) -> Result<Vec<u64>, Error> {
    let bad = |why: String| Error::HostMsg(format!("unexpected dumpe2fs output: {why}"));
    let field = |name: &str| -> Result<u64, Error> {
        dump.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad(format!("no {name}")))
    };
    let per_group = field("Inodes per group:")?;
    let count = field("Inode count:")?;
    let mut used = Vec::new();
    let mut group: Option<u64> = None;
    for line in dump.lines() {
        if let Some(n) = line
            .strip_prefix("Group ")
            .and_then(|r| r.split_once(": ("))
            .and_then(|(n, _)| n.parse::<u64>().ok())
        {
            group = Some(n);
        } else if let Some(list) = line.strip_prefix("  Free inodes:") {
            let g = group.take().ok_or_else(|| bad("free inodes outside a group".into()))?;
            let first = g.saturating_mul(per_group).saturating_add(1);
            let last = first.saturating_add(per_group).saturating_sub(1).min(count);
            let mut free: Vec<(u64, u64)> = Vec::new();
            for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let a: u64 = a.trim().parse().map_err(|_| bad(format!("range {r:?}")))?;
                let b: u64 = b.trim().parse().map_err(|_| bad(format!("range {r:?}")))?;
                free.push((a, b));
            }
            let mut i = first;
            for (a, b) in free {
                while i < a.min(last.saturating_add(1)) {
                    used.push(i);
                    i = i.saturating_add(1);
                }
                i = i.max(b.saturating_add(1));
            }
            while i <= last {
                used.push(i);
                i = i.saturating_add(1);
            }
        }
    }
    if used.is_empty() {
        return Err(bad("no groups".into()));
    }
    Ok(used)
}

/// The debugfs script that pins owners and times.
pub fn fixup_script(inodes: &[u64], time: u64) -> String {
    let mut s = String::with_capacity(inodes.len().saturating_mul(100));
    for &i in inodes {
        // 1 and 3..=10 are reserved (bad blocks, journal, resize…):
        // not files, and mke2fs already gave them fixed values.
        if i == 1 || (3..=10).contains(&i) {
            continue;
        }
        for f in [
            "uid 0".to_owned(),
            "gid 0".to_owned(),
            format!("atime @{time}"),
            format!("ctime @{time}"),
        ] {
            s.push_str(&format!("sif <{i}> {f}\n"));
        }
    }
    s.push_str("sif /nix/store gid 30000\n");
    s
}

/// Set owners and times of every inode (see the module docs).
pub fn fix_inodes(image: &Path, l: &Layout, time: u64, p: &mut Progress) -> Result<(), Error> {
    p.stage("owners: setting owners and times", None);
    let dev = device(image, l);
    let mut c = cmd::command("dumpe2fs", [dev.clone()]);
    c.env("E2FSPROGS_FAKE_TIME", time.to_string());
    let dump = run_cmd(c, Run::default())?;
    let inodes = used_inodes(&String::from_utf8_lossy(&dump.stdout))?;
    log::debug!("{} used inodes", inodes.len());
    // The script goes in on stdin from an unlinked file: nothing to clean up.
    let mut script = tempfile::tempfile().map_err(|e| Error::host("creating the debugfs script", e))?;
    script
        .write_all(fixup_script(&inodes, time).as_bytes())
        .and_then(|()| script.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|e| Error::host("writing the debugfs script", e))?;
    let mut c = cmd::command("debugfs", [OsString::from("-w"), "-f".into(), "-".into(), dev]);
    c.env("E2FSPROGS_FAKE_TIME", time.to_string());
    let out = run_cmd(
        c,
        Run {
            stdin: Some(script),
            ..Run::default()
        },
    )?;
    // debugfs reports a failed command on stderr and still exits 0.
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        return Err(Error::HostMsg(format!(
            "debugfs could not set owners and times: {}",
            errors.iter().take(3).copied().collect::<Vec<_>>().join("; ")
        )));
    }
    Ok(())
}

/// Turn on `metadata_csum` (`tune2fs -O metadata_csum`), which mke2fs
/// was told to leave off (see the module docs). tune2fs computes every
/// checksum and asks for `e2fsck -fD` to make room for the directory
/// blocks' checksum tails; [`index`] runs it next.
pub fn enable_checksums(image: &Path, l: &Layout, time: u64, p: &mut Progress) -> Result<(), Error> {
    p.stage("checksums: adding metadata checksums", None);
    let mut c = cmd::command(
        "tune2fs",
        [OsString::from("-O"), "metadata_csum".into(), device(image, l)],
    );
    c.env("E2FSPROGS_FAKE_TIME", time.to_string());
    run_cmd(c, Run::default())?;
    Ok(())
}

/// Build directory indexes (`e2fsck -fyD`).
pub fn index(image: &Path, l: &Layout, time: u64, p: &mut Progress) -> Result<(), Error> {
    p.stage("indexing: building directory indexes", None);
    let mut c = cmd::command("e2fsck", [OsString::from("-fyD"), device(image, l)]);
    c.env("E2FSCK_TIME", time.to_string())
        .env("E2FSPROGS_FAKE_TIME", time.to_string());
    // 1: errors corrected (the rehash counts as one).
    run_cmd(
        c,
        Run {
            ok_codes: &[1],
            ..Run::default()
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let g = 1u64 << 30;
        assert_eq!(
            layout(Table::Mbr, g).unwrap(),
            Layout {
                offset: 1 << 20,
                size: g - (1 << 20)
            }
        );
        let gpt = layout(Table::Gpt, g).unwrap();
        assert_eq!(gpt.offset, 1 << 20);
        assert!(gpt.offset + gpt.size <= g - 34 * 512);
        assert_eq!(gpt.size % BLOCK, 0);
        assert_eq!(layout(Table::None, g + 100).unwrap(), Layout { offset: 0, size: g });
        assert!(layout(Table::Mbr, 3 << 40).is_err());
        assert!(layout(Table::Mbr, 4 << 20).is_err());
    }

    #[test]
    fn dumpe2fs_parsing() {
        let d = "Inode count:              32\nFree inodes:              17\nInodes per group:         16\n\
                 Group descriptor size:    64\n\
                 Group 0: (Blocks 0-100)\n  Free inodes: 14-16\n\
                 Group 1: (Blocks 101-200)\n  Free inodes: 17, 20-32\n";
        let u = used_inodes(d).unwrap();
        let mut want: Vec<u64> = (1..=13).collect();
        want.extend([18, 19]);
        assert_eq!(u, want);
        assert!(used_inodes("Inode count: 1\n").is_err());
    }

    #[test]
    fn script_skips_reserved_inodes() {
        let s = fixup_script(&[1, 2, 7, 11], 5);
        assert!(s.contains("sif <2> uid 0\n") && s.contains("sif <11> ctime @5\n"));
        assert!(!s.contains("<1>") && !s.contains("<7>"));
        assert!(s.ends_with("sif /nix/store gid 30000\n"));
    }

    #[test]
    fn tables_are_readable() {
        let d = tempfile::tempdir().unwrap();
        for t in [Table::Mbr, Table::Gpt] {
            let p = d.path().join(format!("{t:?}"));
            let mut f = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            f.set_len(64 << 20).unwrap();
            let l = write_table(&mut f, t, 64 << 20, &[7u8; 32]).unwrap();
            assert_eq!(l.offset, 1 << 20);
            let disk = crate::disk::Disk::open(&p).unwrap();
            let found = crate::part::candidates(&disk, None).unwrap();
            assert!(found.iter().any(|c| c.offset == l.offset), "{t:?}: {found:?}");
        }
    }
}
