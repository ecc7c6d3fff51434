//! The disk: partition table, ext4 filesystem, ownership and times, and
//! directory indexes.
//!
//! - Partition tables are written in-process: MBR with `mbrman` (one
//!   bootable type-0x83 entry from sector 2048 to the end), GPT with
//!   `gptman` (same crate family; one "Linux filesystem" partition from
//!   2048, protective MBR, backup header). Both crates are fine for
//!   *writing* our own table; the boot path never uses them to read a
//!   guest's (see `part`).
//! - `mke2fs -t ext4 -b 4096 -d <staging> -E offset=<bytes>,hash_seed=…
//!   -U <uuid> <image> <size>k` fills the partition's byte range
//!   directly (an explicit size, so the rest of the disk is untouched).
//!   `E2FSPROGS_FAKE_TIME` pins the superblock's times and the inodes
//!   mke2fs makes itself; `LC_ALL=C` pins the order in which it walks
//!   directories (`scandir(…, alphasort)`, which collates by locale).
//! - Ownership and ctimes are then set in the filesystem itself, with one
//!   `debugfs -w -f <script>` run (`set_inode_field` for every used
//!   inode: uid 0, gid 0, atime and ctime = the build time; about 0.6 s
//!   for 44,000 inodes). `mke2fs -d` copies the building user's uid/gid
//!   and the staging files' ctime and atime, none of which can be set
//!   from userspace. This is the robust choice: it works as any user on
//!   any host, while `unshare --map-root-user` needs unprivileged user
//!   namespaces (off on many hardened hosts) and `fakeroot` needs
//!   LD_PRELOAD into a dynamically linked mke2fs, and neither pins ctime.
//!   The used inodes come from `dumpe2fs`'s per-group free-inode lists.
//!   `/nix/store` gets gid 30000 and mode 1775, as NixOS's stage 2 sets.
//! - `e2fsck -fyD` builds the directory indexes (htrees); `E2FSCK_TIME`
//!   pins its last-check time. e2fsprogs tools address the partition as
//!   `<image>?offset=<bytes>`.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
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

/// Make the filesystem from the staging tree.
pub fn mkfs(m: &Mkfs<'_>, p: &mut Progress) -> Result<(), Error> {
    p.stage("mkfs: making ext4 from the staging tree", None);
    let mut e = vec![format!("hash_seed={}", m.hash_seed), "root_owner=0:0".to_owned()];
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
    run_cmd(c, Run::default())?;
    Ok(())
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
pub fn fix_inodes(image: &Path, l: &Layout, time: u64, script_path: &Path, p: &mut Progress) -> Result<(), Error> {
    p.stage("owners: setting owners and times", None);
    let dev = device(image, l);
    let mut c = cmd::command("dumpe2fs", [dev.clone()]);
    c.env("E2FSPROGS_FAKE_TIME", time.to_string());
    let dump = run_cmd(c, Run::default())?;
    let inodes = used_inodes(&String::from_utf8_lossy(&dump.stdout))?;
    log::debug!("{} used inodes", inodes.len());
    std::fs::write(script_path, fixup_script(&inodes, time))
        .map_err(|e| Error::host("writing the debugfs script", e))?;
    let mut c = cmd::command("debugfs", [OsString::from("-w"), "-f".into(), script_path.into(), dev]);
    c.env("E2FSPROGS_FAKE_TIME", time.to_string());
    let out = run_cmd(c, Run::default())?;
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
