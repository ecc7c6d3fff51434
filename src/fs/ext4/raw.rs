//! Our own read-only ext4 reader for the hot path: inodes, extent trees
//! and directory blocks by inode number, with per-run caches. Guest data.
//!
//! Why it exists (measured, see the README): ext4-view's API is by path,
//! so every call walks from the root again, and it maps a file block by
//! iterating the extent tree from its start, re-reading index blocks from
//! the disk each time. A `/nix/store` written by `mke2fs -d` is one extent
//! per directory block (a depth-2 tree), so each lookup in it costs
//! hundreds of extent steps and a dozen `pread`s, and `nixboot list` of
//! 5,000 generations took 4-7 s. ext4-view also reads file data one block
//! per `pread` and exposes no extents, so the data could only travel
//! through the parse child and a pipe (2.2x a plain copy).
//!
//! This reader covers what a NixOS guest's filesystem uses: extent-mapped
//! files and directories (linear or htree, read linearly), fast and slow
//! symlinks, 32- and 64-byte group descriptors. Anything else (a journal
//! that needs recovery, inline data, block-mapped ext2/3 files, meta_bg,
//! bigalloc, encryption, casefolding) is [`RawError::Unsupported`], and the
//! caller falls back to ext4-view, which stays the reference reader.
//!
//! Every guest-derived number is checked before use: inode numbers against
//! the inode count, block numbers against the block count, extent trees
//! against [`MAX_EXTENT_DEPTH`] with strictly decreasing depth and
//! [`MAX_EXTENT_NODES`] nodes, a file's extents against
//! [`MAX_FILE_EXTENTS`], directories against [`MAX_DIR_BYTES`] and
//! `MAX_DIR_ENTRIES`, and the caches against fixed budgets. Checksums are
//! not verified (they detect media errors, not malice).

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::rc::Rc;

use crate::disk::Window;
use crate::limits::{MAX_DIR_ENTRIES, MIB};

/// The root directory's inode number.
pub const ROOT_INO: u32 = 2;
/// Deepest extent tree accepted (the kernel's own limit is 5).
pub const MAX_EXTENT_DEPTH: u16 = 5;
/// Most extent tree nodes visited for one file.
pub const MAX_EXTENT_NODES: usize = 1 << 16;
/// Most extents one file may have (a 512 MiB kernel at 4 KiB blocks, one
/// block per extent, is 131,072).
pub const MAX_FILE_EXTENTS: usize = 1 << 18;
/// Largest directory read (a 100,000-entry `/nix/store` is ~8 MiB).
pub const MAX_DIR_BYTES: u64 = 64 * MIB;
/// Bytes of directory entries kept in the lookup maps over all
/// directories (each entry counts its name plus 48 bytes of overhead; a
/// 100,000-entry `/nix/store` is ~10 MiB).
pub const MAX_CACHED_DIR_BYTES: usize = 48 << 20;
/// Bytes of metadata blocks (inode tables, descriptors, extent nodes)
/// kept in the block cache.
pub const MAX_CACHED_BLOCK_BYTES: u64 = 4 * MIB;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
/// Incompatible features this reader understands (inline data only in the
/// sense that such inodes are refused one by one).
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA;
const RO_COMPAT_BIGALLOC: u32 = 0x200;

const INDEX_FL: u32 = 0x1000;
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const ENCRYPT_FL: u32 = 0x800;
const CASEFOLD_FL: u32 = 0x4000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// Longest symlink target stored in the inode itself (ext4-view's rule).
const MAX_INLINE_SYMLINK: u64 = 59;

/// Why the reader could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// A feature this reader leaves to ext4-view.
    #[error("not handled by the fast reader: {0}")]
    Unsupported(&'static str),
    /// A structure fails a check.
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    /// A directory has more than `MAX_DIR_ENTRIES` entries.
    #[error("more than {MAX_DIR_ENTRIES} entries")]
    TooManyEntries,
    /// The disk could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn corrupt(what: impl Into<String>) -> RawError {
    RawError::Corrupt(what.into())
}

/// A field of a structure already checked to be long enough (0 if not).
fn le16(b: &[u8], at: usize) -> u16 {
    crate::bytes::le16(b, at).unwrap_or(0)
}

/// A field of a structure already checked to be long enough (0 if not).
fn le32(b: &[u8], at: usize) -> u32 {
    crate::bytes::le32(b, at).unwrap_or(0)
}

fn usize_of(n: u64) -> Result<usize, RawError> {
    usize::try_from(n).map_err(|_| corrupt("size out of range"))
}

/// The superblock fields the reader needs, checked.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u64,
    bs: NonZeroU64,
    ipg: NonZeroU64,
    blocks: u64,
    first_data_block: u64,
    inodes: u32,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    filetype: bool,
    /// `s_hash_seed` as the kernel reads it (four little-endian words).
    hash_seed: [u32; 4],
    /// `EXT2_FLAGS_UNSIGNED_HASH`: directory hashes use unsigned `char`.
    unsigned_hash: bool,
}

impl Geometry {
    /// Parse the 1024-byte superblock of a filesystem `fs_len` bytes long
    /// (already through `precheck_superblock`). `Unsupported` when the
    /// filesystem uses something this reader leaves to ext4-view.
    pub fn parse(sb: &[u8], fs_len: u64) -> Result<Geometry, RawError> {
        let incompat = le32(sb, 0x60);
        let ro_compat = le32(sb, 0x64);
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(RawError::Unsupported("the journal needs recovery"));
        }
        if incompat & INCOMPAT_META_BG != 0 {
            return Err(RawError::Unsupported("meta_bg"));
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(RawError::Unsupported("an incompatible feature"));
        }
        if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return Err(RawError::Unsupported("bigalloc"));
        }
        let log = le32(sb, 0x18);
        if log > 6 {
            return Err(corrupt("block size"));
        }
        let block_size = 1024u64.checked_shl(log).ok_or_else(|| corrupt("block size"))?;
        let hi = if incompat & INCOMPAT_64BIT != 0 {
            le32(sb, 0x150)
        } else {
            0
        };
        let blocks = u64::from(le32(sb, 0x4)) | u64::from(hi) << 32;
        if blocks.checked_mul(block_size).is_none_or(|b| b > fs_len) {
            return Err(corrupt("block count exceeds the partition"));
        }
        let first_data_block = u64::from(le32(sb, 0x14));
        let bpg = u64::from(le32(sb, 0x20));
        let inodes_per_group = le32(sb, 0x28);
        let inodes = le32(sb, 0x0);
        if bpg == 0 || inodes_per_group == 0 || first_data_block >= blocks {
            return Err(corrupt("group geometry"));
        }
        let groups = blocks.saturating_sub(first_data_block).div_ceil(bpg);
        if u64::from(inodes) > groups.saturating_mul(u64::from(inodes_per_group)) {
            return Err(corrupt("inode count"));
        }
        let inode_size = if le32(sb, 0x4C) == 0 {
            128
        } else {
            u64::from(le16(sb, 0x58))
        };
        if inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(corrupt("inode size"));
        }
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            u64::from(le16(sb, 0xFE))
        } else {
            32
        };
        if desc_size < 32 || !desc_size.is_power_of_two() || desc_size > block_size {
            return Err(corrupt("group descriptor size"));
        }
        Ok(Geometry {
            block_size,
            bs: NonZeroU64::new(block_size).ok_or_else(|| corrupt("block size"))?,
            ipg: NonZeroU64::new(u64::from(inodes_per_group)).ok_or_else(|| corrupt("group geometry"))?,
            blocks,
            first_data_block,
            inodes,
            inode_size,
            desc_size,
            groups,
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            hash_seed: [le32(sb, 0xEC), le32(sb, 0xF0), le32(sb, 0xF4), le32(sb, 0xF8)],
            unsigned_hash: le32(sb, 0x160) & 0x2 != 0,
        })
    }
}

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Device, fifo or socket.
    Special,
}

/// The inode fields the reader needs.
#[derive(Clone, Debug)]
pub struct Inode {
    /// Inode number.
    pub ino: u32,
    /// Kind, from the mode.
    pub kind: InodeKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    flags: u32,
    block: [u8; 60],
    /// For inline-data inodes: the rest of the data, from the in-inode
    /// extended attribute `system.data` (empty if there is none).
    inline_tail: Option<Vec<u8>>,
}

/// Parse an inode record (`ino` only for messages).
pub fn parse_inode(ino: u32, b: &[u8]) -> Result<Inode, RawError> {
    if b.len() < 128 {
        return Err(corrupt(format!("inode {ino} truncated")));
    }
    let mode = le16(b, 0x0);
    let kind = match mode & 0xF000 {
        0x8000 => InodeKind::File,
        0x4000 => InodeKind::Dir,
        0xA000 => InodeKind::Symlink,
        _ => InodeKind::Special,
    };
    let size = u64::from(le32(b, 0x4)) | u64::from(le32(b, 0x6C)) << 32;
    // Seconds are signed 32-bit, extended by two epoch bits in the extra
    // field when the inode is large enough to hold it (as ext4-view reads it).
    let mut mtime = i64::from(i32::from_le_bytes(le32(b, 0x10).to_le_bytes()));
    if b.len() >= 0x98 {
        mtime = mtime.saturating_add(i64::from(le32(b, 0x88) & 3) << 32);
    }
    let mut block = [0u8; 60];
    block.copy_from_slice(b.get(0x28..0x64).ok_or_else(|| corrupt("inode"))?);
    let flags = le32(b, 0x20);
    let inline_tail = if flags & INLINE_DATA_FL != 0 {
        Some(system_data(ino, b)?)
    } else {
        None
    };
    Ok(Inode {
        ino,
        kind,
        size,
        mtime,
        flags,
        block,
        inline_tail,
    })
}

/// The value of the in-inode extended attribute `system.data` (where an
/// inline-data inode keeps what does not fit in `i_block`), or empty.
fn system_data(ino: u32, b: &[u8]) -> Result<Vec<u8>, RawError> {
    const XATTR_MAGIC: u32 = 0xEA02_0000;
    const INDEX_SYSTEM: u8 = 7;
    let bad = || corrupt(format!("inode {ino} extended attributes"));
    let extra = usize::from(le16(b, 0x80));
    let start = 128usize.saturating_add(extra);
    if b.len() <= 128 || start.saturating_add(4) > b.len() || le32(b, start) != XATTR_MAGIC {
        return Ok(Vec::new());
    }
    let entries = b.get(start.saturating_add(4)..).ok_or_else(bad)?;
    let mut off = 0usize;
    // Each entry is at least 16 bytes, so this loop ends.
    while off.saturating_add(16) <= entries.len() && le32(entries, off) != 0 {
        let name_len = usize::from(entries.get(off).copied().unwrap_or(0));
        let index = entries.get(off.saturating_add(1)).copied().unwrap_or(0);
        let value_offs = usize::from(le16(entries, off.saturating_add(2)));
        let value_inum = le32(entries, off.saturating_add(4));
        let value_size = usize::try_from(le32(entries, off.saturating_add(8))).map_err(|_| bad())?;
        let name = entries
            .get(off.saturating_add(16)..off.saturating_add(16).saturating_add(name_len))
            .ok_or_else(bad)?;
        if index == INDEX_SYSTEM && name == b"data" {
            if value_inum != 0 {
                return Err(RawError::Unsupported("inline data in an extended-attribute inode"));
            }
            return Ok(entries
                .get(value_offs..value_offs.saturating_add(value_size))
                .ok_or_else(bad)?
                .to_vec());
        }
        off = off.saturating_add(16).saturating_add(name_len).saturating_add(3) & !3;
    }
    Ok(Vec::new())
}

/// One extent: `len` blocks of the file from block `logical`, stored at
/// filesystem block `physical` (unwritten extents read as zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First file block.
    pub logical: u64,
    /// First filesystem block.
    pub physical: u64,
    /// Number of blocks.
    pub len: u64,
    /// Unwritten (reads as zeros).
    pub unwritten: bool,
}

/// Check an extent node's header; returns (entries, depth).
fn node_header(node: &[u8], max_room: usize) -> Result<(usize, u16), RawError> {
    if le16(node, 0) != EXTENT_MAGIC {
        return Err(corrupt("extent node magic"));
    }
    let entries = usize::from(le16(node, 2));
    let max = usize::from(le16(node, 4));
    let depth = le16(node, 6);
    let room = node.len().saturating_sub(12) / 12;
    if max > room.min(max_room) || entries > max {
        return Err(corrupt("extent node size"));
    }
    if depth > MAX_EXTENT_DEPTH {
        return Err(corrupt("extent tree too deep"));
    }
    Ok((entries, depth))
}

/// A directory entry as read from a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent<'a> {
    /// Inode number.
    pub ino: u32,
    /// Name bytes.
    pub name: &'a [u8],
    /// ext4 file type (1 file, 2 dir, 7 symlink; 0 when unknown).
    pub file_type: u8,
}

/// Walk the entries of one directory block (linear format; htree index
/// blocks look like one empty entry and are skipped like the kernel's
/// readdir does).
pub fn parse_dir_block(
    block: &[u8],
    filetype: bool,
    mut each: impl FnMut(RawDirent<'_>) -> Result<(), RawError>,
) -> Result<(), RawError> {
    let bs = block.len();
    let mut off = 0usize;
    while off.saturating_add(8) <= bs {
        let ino = le32(block, off);
        let mut rec_len = usize::from(le16(block, off.saturating_add(4)));
        if bs == 65536 && (rec_len == 0 || rec_len == 65535) {
            rec_len = 65536;
        }
        let (name_len, file_type) = if filetype {
            (
                usize::from(block.get(off.saturating_add(6)).copied().unwrap_or(0)),
                block.get(off.saturating_add(7)).copied().unwrap_or(0),
            )
        } else {
            (usize::from(le16(block, off.saturating_add(6))), 0)
        };
        let end = off.saturating_add(rec_len);
        if rec_len < 8 || rec_len % 4 != 0 || end > bs || name_len.saturating_add(8) > rec_len {
            return Err(corrupt("directory entry"));
        }
        if ino != 0 && name_len > 0 {
            let name = block
                .get(off.saturating_add(8)..off.saturating_add(8).saturating_add(name_len))
                .ok_or_else(|| corrupt("directory entry"))?;
            each(RawDirent { ino, name, file_type })?;
        }
        off = end;
    }
    Ok(())
}

type DirMap = HashMap<Box<[u8]>, u32>;

/// The reader: a window, its geometry and per-run caches.
pub struct Raw {
    window: Window,
    geo: Geometry,
    blocks: RefCell<HashMap<u64, Rc<[u8]>>>,
    dirs: RefCell<HashMap<u32, Rc<DirMap>>>,
    cached_bytes: std::cell::Cell<usize>,
    /// Lookups so far per indexed directory (see [`MAX_INDEXED_LOOKUPS`]).
    indexed_lookups: RefCell<HashMap<u32, u32>>,
    /// Lookups the htree answered.
    indexed_answers: std::cell::Cell<u64>,
    /// Extents of the indexed directories looked up (at most 1,024).
    dir_extents: RefCell<HashMap<u32, Rc<[Extent]>>>,
}

/// Lookups in one indexed directory answered through its htree (three
/// block reads each) before the whole directory is read into a map
/// instead (one pass, then no reads): a boot looks up a handful of names
/// in `/nix/store`, a listing of thousands of generations thousands.
pub const MAX_INDEXED_LOOKUPS: u32 = 64;

impl Raw {
    /// A reader for the filesystem in `window` with superblock `sb`.
    pub fn new(window: Window, sb: &[u8]) -> Result<Raw, RawError> {
        let geo = Geometry::parse(sb, window.len())?;
        Ok(Raw {
            window,
            geo,
            blocks: Default::default(),
            dirs: Default::default(),
            cached_bytes: Default::default(),
            indexed_lookups: Default::default(),
            indexed_answers: Default::default(),
            dir_extents: Default::default(),
        })
    }

    /// How many lookups the directory indexes answered so far.
    pub fn indexed_answers(&self) -> u64 {
        self.indexed_answers.get()
    }

    /// The filesystem geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    fn block_offset(&self, block: u64) -> Result<u64, RawError> {
        if block >= self.geo.blocks {
            return Err(corrupt(format!("block {block} beyond the end")));
        }
        block
            .checked_mul(self.geo.block_size)
            .ok_or_else(|| corrupt("block number"))
    }

    /// A metadata block, through the cache.
    fn cached_block(&self, block: u64) -> Result<Rc<[u8]>, RawError> {
        if let Some(b) = self.blocks.borrow().get(&block) {
            return Ok(b.clone());
        }
        let mut buf = vec![0u8; usize_of(self.geo.block_size)?];
        self.window.read_exact_at(self.block_offset(block)?, &mut buf)?;
        let b: Rc<[u8]> = buf.into();
        let mut cache = self.blocks.borrow_mut();
        let room = MAX_CACHED_BLOCK_BYTES / self.geo.bs;
        if u64::try_from(cache.len()).unwrap_or(u64::MAX) >= room {
            cache.clear();
        }
        cache.insert(block, b.clone());
        Ok(b)
    }

    fn inode_table(&self, group: u64) -> Result<u64, RawError> {
        let bs = self.geo.bs;
        let at = group
            .checked_mul(self.geo.desc_size)
            .ok_or_else(|| corrupt("group number"))?;
        let gdt_block = self.geo.first_data_block.saturating_add(1).saturating_add(at / bs);
        let b = self.cached_block(gdt_block)?;
        let off = usize_of(at % bs)?;
        let lo = u64::from(le32(&b, off.saturating_add(0x8)));
        let hi = if self.geo.desc_size >= 64 {
            u64::from(le32(&b, off.saturating_add(0x28)))
        } else {
            0
        };
        Ok(lo | hi << 32)
    }

    /// Read inode `ino`.
    pub fn inode(&self, ino: u32) -> Result<Inode, RawError> {
        if ino == 0 || ino > self.geo.inodes {
            return Err(corrupt(format!("inode number {ino} out of range")));
        }
        let i = u64::from(ino.saturating_sub(1));
        let ipg = self.geo.ipg;
        let group = i / ipg;
        if group >= self.geo.groups {
            return Err(corrupt(format!("inode number {ino} out of range")));
        }
        let table = self.inode_table(group)?;
        let byte = (i % ipg).saturating_mul(self.geo.inode_size);
        let bs = self.geo.bs;
        let block = table
            .checked_add(byte / bs)
            .ok_or_else(|| corrupt("inode table location"))?;
        let b = self.cached_block(block)?;
        let off = usize_of(byte % bs)?;
        let rec = b
            .get(off..off.saturating_add(usize_of(self.geo.inode_size)?))
            .ok_or_else(|| corrupt("inode location"))?;
        parse_inode(ino, rec)
    }

    /// The extents covering the first `size` bytes of `inode` (sorted, not
    /// overlapping; gaps are holes).
    pub fn extents(&self, inode: &Inode) -> Result<Vec<Extent>, RawError> {
        if inode.flags & INLINE_DATA_FL != 0 {
            return Err(RawError::Unsupported("inline data"));
        }
        if inode.flags & ENCRYPT_FL != 0 {
            return Err(RawError::Unsupported("encryption"));
        }
        if inode.flags & EXTENTS_FL == 0 {
            return Err(RawError::Unsupported("a block-mapped (ext2/3) file"));
        }
        let bs = self.geo.block_size;
        let file_blocks = inode.size.div_ceil(bs);
        let mut out: Vec<Extent> = Vec::new();
        let mut next_logical = 0u64;
        let mut nodes = 0usize;
        // Depth-first, in order: (node bytes, expected depth or None for the root).
        let mut stack: Vec<(Rc<[u8]>, usize, Option<u16>)> = vec![(Rc::from(&inode.block[..]), 0, None)];
        while let Some((node, next, want)) = stack.pop() {
            let (entries, depth) = node_header(&node, if want.is_none() { 4 } else { usize::MAX })?;
            if want.is_some_and(|w| w != depth) {
                return Err(corrupt("extent tree depth"));
            }
            if next >= entries {
                continue;
            }
            let e = node
                .get(12usize.saturating_add(next.saturating_mul(12))..)
                .and_then(|s| s.get(..12))
                .ok_or_else(|| corrupt("extent entry"))?;
            let logical = u64::from(le32(e, 0));
            stack.push((node.clone(), next.saturating_add(1), want.or(Some(depth))));
            if logical >= file_blocks {
                // Everything from here on lies past the end of the file.
                stack.pop();
                continue;
            }
            if depth > 0 {
                nodes = nodes.saturating_add(1);
                if nodes > MAX_EXTENT_NODES {
                    return Err(corrupt("extent tree too large"));
                }
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                let b = self.cached_block(child)?;
                stack.push((b, 0, Some(depth.saturating_sub(1))));
                continue;
            }
            let raw_len = u64::from(le16(e, 4));
            let (len, unwritten) = if raw_len > 32768 {
                (raw_len.saturating_sub(32768), true)
            } else {
                (raw_len, false)
            };
            let physical = u64::from(le32(e, 8)) | u64::from(le16(e, 6)) << 32;
            if len == 0 {
                continue;
            }
            if logical < next_logical {
                return Err(corrupt("overlapping extents"));
            }
            let end = physical.checked_add(len).ok_or_else(|| corrupt("extent"))?;
            if end > self.geo.blocks || physical == 0 {
                return Err(corrupt("extent beyond the filesystem"));
            }
            let len = len.min(file_blocks.saturating_sub(logical));
            next_logical = logical.saturating_add(len);
            if out.len() >= MAX_FILE_EXTENTS {
                return Err(corrupt("too many extents"));
            }
            out.push(Extent {
                logical,
                physical,
                len,
                unwritten,
            });
        }
        Ok(out)
    }

    /// The data of an inode whose bytes live in the inode itself (inline
    /// data: `i_block`, then the `system.data` attribute), `None` if the
    /// inode is not inline.
    pub fn inline_data(&self, inode: &Inode) -> Result<Option<Vec<u8>>, RawError> {
        let Some(tail) = &inode.inline_tail else {
            return Ok(None);
        };
        let mut d = inode.block.to_vec();
        d.extend_from_slice(tail);
        let n = usize::try_from(inode.size).unwrap_or(usize::MAX);
        d.truncate(n);
        if d.len() != n {
            return Err(corrupt(format!(
                "inode {}: inline data shorter than the file",
                inode.ino
            )));
        }
        Ok(Some(d))
    }

    /// Read up to `buf.len()` bytes of a file at `pos`, given its extents
    /// and size; 0 at the end.
    pub fn read_at(&self, extents: &[Extent], size: u64, pos: u64, buf: &mut [u8]) -> Result<usize, RawError> {
        if pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.geo.bs;
        let want = u64::try_from(buf.len())
            .unwrap_or(u64::MAX)
            .min(size.saturating_sub(pos));
        let lb = pos / bs;
        let i = extents.partition_point(|e| e.logical.saturating_add(e.len) <= lb);
        let n = match extents.get(i) {
            Some(e) if e.logical <= lb => {
                let in_ext = pos.saturating_sub(e.logical.saturating_mul(bs.get()));
                let avail = e.len.saturating_mul(bs.get()).saturating_sub(in_ext);
                let n = want.min(avail);
                let dst = buf.get_mut(..usize_of(n)?).ok_or_else(|| corrupt("read"))?;
                if e.unwritten {
                    dst.fill(0);
                } else {
                    let at = self.block_offset(e.physical)?.saturating_add(in_ext);
                    self.window.read_exact_at(at, dst)?;
                }
                n
            }
            next => {
                // A hole up to the next extent.
                let hole_end = next.map_or(u64::MAX, |e| e.logical.saturating_mul(bs.get()));
                let n = want.min(hole_end.saturating_sub(pos));
                buf.get_mut(..usize_of(n)?).ok_or_else(|| corrupt("read"))?.fill(0);
                n
            }
        };
        usize_of(n)
    }

    /// A symlink's target (its size already checked by the caller).
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>, RawError> {
        if inode.size == 0 {
            return Err(corrupt("empty symlink"));
        }
        if inode.size <= MAX_INLINE_SYMLINK {
            let n = usize_of(inode.size)?;
            return Ok(inode.block.get(..n).ok_or_else(|| corrupt("symlink"))?.to_vec());
        }
        if let Some(d) = self.inline_data(inode)? {
            return Ok(d);
        }
        let ext = self.extents(inode)?;
        let mut out = vec![0u8; usize_of(inode.size)?];
        let mut got = 0usize;
        while got < out.len() {
            let pos = u64::try_from(got).unwrap_or(u64::MAX);
            let dst = out.get_mut(got..).ok_or_else(|| corrupt("symlink"))?;
            let n = self.read_at(&ext, inode.size, pos, dst)?;
            if n == 0 {
                return Err(corrupt("symlink ended early"));
            }
            got = got.saturating_add(n);
        }
        Ok(out)
    }

    /// Call `each` for every entry of directory `dir` ("." and ".."
    /// included), in block order.
    pub fn walk_dir(
        &self,
        dir: &Inode,
        mut each: impl FnMut(RawDirent<'_>) -> Result<(), RawError>,
    ) -> Result<(), RawError> {
        if dir.kind != InodeKind::Dir {
            return Err(corrupt("not a directory"));
        }
        if dir.flags & CASEFOLD_FL != 0 {
            return Err(RawError::Unsupported("a case-insensitive directory"));
        }
        if dir.size > MAX_DIR_BYTES {
            return Err(RawError::TooManyEntries);
        }
        if let Some(tail) = &dir.inline_tail {
            // The parent's inode number, then entries in the rest of
            // `i_block`, then more in the attribute (each its own space).
            let parent = le32(&dir.block, 0);
            if parent != 0 {
                each(RawDirent {
                    ino: parent,
                    name: b"..",
                    file_type: 2,
                })?;
            }
            parse_dir_block(dir.block.get(4..).unwrap_or_default(), self.geo.filetype, &mut each)?;
            if !tail.is_empty() {
                parse_dir_block(tail, self.geo.filetype, &mut each)?;
            }
            return Ok(());
        }
        let ext = self.extents(dir)?;
        let bs = self.geo.block_size;
        let mut block = vec![0u8; usize_of(bs)?];
        let mut count = 0u32;
        for e in ext.iter().filter(|e| !e.unwritten) {
            for k in 0..e.len {
                self.window
                    .read_exact_at(self.block_offset(e.physical.saturating_add(k))?, &mut block)?;
                parse_dir_block(&block, self.geo.filetype, |d| {
                    count = count.saturating_add(1);
                    if count > MAX_DIR_ENTRIES.saturating_add(2) {
                        return Err(RawError::TooManyEntries);
                    }
                    each(d)
                })?;
            }
        }
        Ok(())
    }

    /// Logical block `n` of a directory with extents `ext` (`None` in a
    /// hole).
    fn dir_block(&self, ext: &[Extent], n: u64) -> Result<Option<Vec<u8>>, RawError> {
        let i = ext.partition_point(|e| e.logical.saturating_add(e.len) <= n);
        let Some(e) = ext.get(i).filter(|e| e.logical <= n && !e.unwritten) else {
            return Ok(None);
        };
        let mut b = vec![0u8; usize_of(self.geo.block_size)?];
        let at = self.block_offset(e.physical.saturating_add(n.saturating_sub(e.logical)))?;
        self.window.read_exact_at(at, &mut b)?;
        Ok(Some(b))
    }

    /// Look `name` up through the directory's htree: `Some(answer)`, or
    /// `None` when the index cannot be used (unknown hash, odd structure)
    /// and the caller must read the directory linearly.
    fn htree_lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<Option<u32>>, RawError> {
        use super::htree::{DxNode, HashAlg, dirhash, parse_root};
        if dir.inline_tail.is_some() || dir.flags & CASEFOLD_FL != 0 {
            return Ok(None);
        }
        let cached = self.dir_extents.borrow().get(&dir.ino).cloned();
        let ext = match cached {
            Some(e) => e,
            None => {
                let e: Rc<[Extent]> = self.extents(dir)?.into();
                let mut c = self.dir_extents.borrow_mut();
                if c.len() >= 1024 {
                    c.clear();
                }
                c.insert(dir.ino, e.clone());
                e
            }
        };
        let Some(root) = self.dir_block(&ext, 0)? else {
            return Ok(None);
        };
        let Some((version, levels, at)) = parse_root(&root) else {
            return Ok(None);
        };
        let Some(alg) = HashAlg::from_version(version, self.geo.unsigned_hash) else {
            return Ok(None);
        };
        let hash = dirhash(alg, self.geo.hash_seed, name);
        let Some(mut node) = DxNode::parse(&root, at) else {
            return Ok(None);
        };
        for _ in 0..levels {
            let blk = node.entries.get(node.find(hash)).map_or(0, |e| e.1);
            let Some(b) = self.dir_block(&ext, u64::from(blk))? else {
                return Ok(None);
            };
            // An index node: an empty entry covering the block, then entries.
            match DxNode::parse(&b, 8) {
                Some(n) => node = n,
                None => return Ok(None),
            }
        }
        let mut i = node.find(hash);
        // Leaves with the same hash continue in the next leaf (bounded by
        // the node's entries).
        while let Some((_, blk)) = node.entries.get(i) {
            let Some(leaf) = self.dir_block(&ext, u64::from(*blk))? else {
                return Ok(None);
            };
            let mut found = None;
            parse_dir_block(&leaf, self.geo.filetype, |d| {
                if found.is_none() && d.name == name {
                    found = Some(d.ino);
                }
                Ok(())
            })?;
            if found.is_some() {
                return Ok(Some(found));
            }
            i = i.saturating_add(1);
            match node.entries.get(i) {
                Some((h, _)) if h & !1 == hash => {}
                Some(_) => return Ok(Some(None)),
                // The run may go on in the next index node: read linearly.
                None if levels > 0 => return Ok(None),
                None => return Ok(Some(None)),
            }
        }
        Ok(None)
    }

    /// Look `name` up in directory `dir`: its inode number, if present.
    /// The directory is read once per run and kept as a hash map (within
    /// [`MAX_CACHED_DIR_BYTES`] over all directories).
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>, RawError> {
        if let Some(m) = self.dirs.borrow().get(&dir.ino) {
            return Ok(m.get(name).copied());
        }
        if dir.flags & INDEX_FL != 0 {
            let n = {
                let mut counts = self.indexed_lookups.borrow_mut();
                if counts.len() >= 1 << 16 {
                    counts.clear();
                }
                let n = counts.entry(dir.ino).or_insert(0);
                *n = n.saturating_add(1);
                *n
            };
            if n <= MAX_INDEXED_LOOKUPS
                && let Some(found) = self.htree_lookup(dir, name)?
            {
                self.indexed_answers.set(self.indexed_answers.get().saturating_add(1));
                return Ok(found);
            }
        }
        let mut m = DirMap::new();
        let mut bytes = 0usize;
        self.walk_dir(dir, |d| {
            bytes = bytes.saturating_add(d.name.len()).saturating_add(48);
            m.entry(d.name.into()).or_insert(d.ino);
            Ok(())
        })?;
        let found = m.get(name).copied();
        let total = self.cached_bytes.get().saturating_add(bytes);
        if total <= MAX_CACHED_DIR_BYTES {
            self.cached_bytes.set(total);
            self.dirs.borrow_mut().insert(dir.ino, Rc::new(m));
        }
        Ok(found)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn dirent(ino: u32, rec_len: u16, name: &[u8], ft: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ino.to_le_bytes());
        v.extend_from_slice(&rec_len.to_le_bytes());
        v.push(u8::try_from(name.len()).unwrap());
        v.push(ft);
        v.extend_from_slice(name);
        v.resize(usize::from(rec_len), 0);
        v
    }

    #[test]
    fn dir_block_entries_and_checks() {
        let mut b = dirent(2, 12, b".", 2);
        b.extend(dirent(0, 16, b"gone", 1)); // deleted: skipped
        b.extend(dirent(12, 1024 - 28, b"kernel", 1));
        let mut seen = Vec::new();
        parse_dir_block(&b, true, |d| {
            seen.push((d.ino, d.name.to_vec(), d.file_type));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(2, b".".to_vec(), 2), (12, b"kernel".to_vec(), 1)]);
        // rec_len past the block, zero, unaligned, or shorter than the name.
        for bad in [2000u16, 0, 13] {
            let mut c = b.clone();
            c[28 + 4..28 + 6].copy_from_slice(&bad.to_le_bytes());
            assert!(parse_dir_block(&c, true, |_| Ok(())).is_err(), "rec_len {bad}");
        }
        let mut d = dirent(5, 12, b"abcd", 1);
        d[6] = 9; // name longer than the record
        d.resize(1024, 0);
        d[12..14].copy_from_slice(&[0, 0]);
        assert!(parse_dir_block(&d, true, |_| Ok(())).is_err());
    }

    #[test]
    fn extent_headers_are_capped() {
        let mut n = vec![0u8; 60];
        n[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
        n[2..4].copy_from_slice(&4u16.to_le_bytes());
        n[4..6].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(node_header(&n, 4).unwrap(), (4, 0));
        n[4..6].copy_from_slice(&5u16.to_le_bytes()); // max beyond the room
        assert!(node_header(&n, 4).is_err());
        n[4..6].copy_from_slice(&4u16.to_le_bytes());
        n[2..4].copy_from_slice(&5u16.to_le_bytes()); // entries > max
        assert!(node_header(&n, 4).is_err());
        n[2..4].copy_from_slice(&1u16.to_le_bytes());
        n[6..8].copy_from_slice(&6u16.to_le_bytes()); // too deep
        assert!(node_header(&n, 4).is_err());
        n[0] = 0;
        assert!(node_header(&n, 4).is_err());
    }

    #[test]
    fn inode_fields() {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(&0xA1FFu16.to_le_bytes());
        b[4..8].copy_from_slice(&5u32.to_le_bytes());
        b[0x6C..0x70].copy_from_slice(&1u32.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&(-1i32).to_le_bytes());
        b[0x88..0x8C].copy_from_slice(&1u32.to_le_bytes());
        let i = parse_inode(7, &b).unwrap();
        assert_eq!(i.kind, InodeKind::Symlink);
        assert_eq!(i.size, (1 << 32) + 5);
        assert_eq!(i.mtime, -1 + (1 << 32));
        assert!(parse_inode(7, &b[..100]).is_err());
    }
}
