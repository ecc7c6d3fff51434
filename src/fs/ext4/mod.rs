//! ext4 (and ext2/3): one [`FileSystem`]. Guest data.
//!
//! Two readers sit behind [`Ext4Fs`]: our own inode-level reader ([`raw`],
//! the hot path: lookups through per-run directory maps, file data by
//! extents) for the features a NixOS guest uses, and ext4-view, the
//! reference reader, loaded only when the filesystem or one inode uses
//! something the fast reader leaves to it (a journal that needs replay,
//! inline data, ext2/3 block maps, ...). The tests run every fixture
//! through both.
//!
//! This is the only module that uses `ext4_view`. It must not call
//! `Ext4::read`/`read_to_string` (they allocate the inode's claimed size
//! up front), must not let ext4-view follow a symlink (a slow symlink with
//! a huge size field aborts the process inside ext4-view: the view above
//! resolves every link itself and hands this module symlink-free paths),
//! must not list a directory without a cap, and never hands a guest path
//! to the host's `std::fs`. What it does instead:
//!
//! * [`precheck_superblock`]: the kernel's sanity checks on the superblock
//!   before `Ext4::load` (a crafted 1 KiB superblock can make ext4-view
//!   allocate billions of group descriptors).
//! * a fallback for journals ext4-view refuses (`needs_recovery` with jbd2
//!   features it does not replay): the superblock is served with the
//!   recovery flag cleared, like `mount -o noload`.
//! * reads by inode with checked sizes; [`FileSystem::data_runs`] maps a
//!   file to disk byte ranges so the privileged parent can copy them in
//!   the kernel (`copy_file_range`) instead of receiving them through a
//!   pipe.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::error::Error as StdError;

use ext4_view::{Ext4, Ext4Error, Ext4Read, Metadata};

pub mod htree;
pub mod raw;

use raw::{Inode, InodeKind, Raw};
pub use raw::{
    MAX_CACHED_BLOCK_BYTES, MAX_CACHED_DIR_BYTES, MAX_DIR_BYTES, MAX_EXTENT_NODES, MAX_FILE_EXTENTS, RawError,
};

use super::{
    BytesReader, EachEntry, FileReader, FileSystem, FsError, GuestFile, Kind, Meta, Run, child_path, parent_and_name,
};
use crate::disk::Window;
use crate::error::escape;
use crate::limits::MAX_DIR_ENTRIES;

/// The most block groups a filesystem may declare (the descriptor table is
/// read into memory at load: 2^20 groups is 64 MiB of descriptors, enough
/// for 128 TiB at 4 KiB blocks).
pub const MAX_BLOCK_GROUPS: u64 = 1 << 20;

// Superblock field offsets (within the 1024-byte superblock).
const S_BLOCKS_COUNT_LO: usize = 0x4;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_BLOCKS_PER_GROUP: usize = 0x20;
const S_INODES_PER_GROUP: usize = 0x28;
const S_MAGIC: usize = 0x38;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_BLOCKS_COUNT_HI: usize = 0x150;
const S_UUID: usize = 0x68;
const S_VOLUME_NAME: usize = 0x78;
const S_CHECKSUM: usize = 0x3FC;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

fn sb_u32(sb: &[u8], at: usize) -> u32 {
    crate::bytes::le32(sb, at).unwrap_or(0)
}

/// The kernel's superblock sanity checks (ext4_fill_super), on the raw
/// 1024-byte superblock of a filesystem `fs_len` bytes long.
pub fn precheck_superblock(sb: &[u8], fs_len: u64) -> Result<(), FsError> {
    if sb.len() < 1024 || sb.get(S_MAGIC..S_MAGIC.saturating_add(2)) != Some([0x53, 0xEF].as_slice()) {
        return Err(FsError::NotExt4);
    }
    let log = sb_u32(sb, S_LOG_BLOCK_SIZE);
    if log > 6 {
        return Err(FsError::BadSuperblock("block size over 64 KiB"));
    }
    let bs = 1024u64 << log;
    let bpg = u64::from(sb_u32(sb, S_BLOCKS_PER_GROUP));
    let ipg = u64::from(sb_u32(sb, S_INODES_PER_GROUP));
    let bits = bs.saturating_mul(8);
    if !(8..=bits).contains(&bpg) {
        return Err(FsError::BadSuperblock("blocks per group out of range"));
    }
    if !(1..=bits).contains(&ipg) {
        return Err(FsError::BadSuperblock("inodes per group out of range"));
    }
    // ext4-view combines s_blocks_count_hi with the low word whether or not
    // the 64bit feature is set (the kernel ignores it without 64bit), and
    // sizes its group descriptor table from the result: check the value
    // ext4-view will use, and refuse a high word it would misread.
    let hi = sb_u32(sb, S_BLOCKS_COUNT_HI);
    if hi != 0 && sb_u32(sb, S_FEATURE_INCOMPAT) & INCOMPAT_64BIT == 0 {
        return Err(FsError::BadSuperblock(
            "s_blocks_count_hi set without the 64bit feature",
        ));
    }
    let blocks = u64::from(sb_u32(sb, S_BLOCKS_COUNT_LO)) | u64::from(hi) << 32;
    if blocks.checked_mul(bs).is_none_or(|b| b > fs_len) {
        return Err(FsError::BadSuperblock("block count exceeds the partition"));
    }
    let first = u64::from(sb_u32(sb, S_FIRST_DATA_BLOCK));
    let groups = blocks
        .checked_sub(first)
        .ok_or(FsError::BadSuperblock("first data block beyond the end"))?;
    if groups.div_ceil(bpg) > MAX_BLOCK_GROUPS {
        return Err(FsError::BadSuperblock("too many block groups"));
    }
    Ok(())
}

/// Serves a window with a patched copy of the superblock (recovery flag
/// cleared, checksum recomputed): ext4-view then loads the filesystem
/// without replaying the journal, a stale but consistent view.
struct NoRecovery {
    inner: Window,
    sb: Vec<u8>,
}

impl Ext4Read for NoRecovery {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), Box<dyn StdError + Send + Sync + 'static>> {
        self.inner.read_exact_at(start, dst)?;
        let len = u64::try_from(dst.len())?;
        let end = start.checked_add(len).ok_or("overflow")?;
        // Overlay bytes [1024, 2048) of the filesystem.
        let (lo, hi) = (start.max(1024), end.min(2048));
        if lo < hi {
            let d = dst
                .get_mut(usize::try_from(lo.saturating_sub(start))?..usize::try_from(hi.saturating_sub(start))?)
                .ok_or("range")?;
            let s = self
                .sb
                .get(usize::try_from(lo.saturating_sub(1024))?..usize::try_from(hi.saturating_sub(1024))?)
                .ok_or("range")?;
            d.copy_from_slice(s);
        }
        Ok(())
    }
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn without_recovery(mut sb: Vec<u8>) -> Vec<u8> {
    let incompat = sb_u32(&sb, S_FEATURE_INCOMPAT) & !INCOMPAT_RECOVER;
    if let Some(s) = sb.get_mut(S_FEATURE_INCOMPAT..S_FEATURE_INCOMPAT.saturating_add(4)) {
        s.copy_from_slice(&incompat.to_le_bytes());
    }
    if sb_u32(&sb, S_FEATURE_RO_COMPAT) & RO_COMPAT_METADATA_CSUM != 0 {
        // ext4 stores crc32c with the final inversion undone.
        let crc = !CRC32C.checksum(sb.get(..S_CHECKSUM).unwrap_or_default());
        if let Some(s) = sb.get_mut(S_CHECKSUM..S_CHECKSUM.saturating_add(4)) {
            s.copy_from_slice(&crc.to_le_bytes());
        }
    }
    sb
}

/// Paths whose metadata is remembered per run (see [`Ext4Fs::lstat_raw`]).
pub const MAX_CACHED_PATHS: usize = 200_000;

/// An ext4 filesystem, read-only: our own reader ([`raw`]) where it
/// applies, ext4-view (loaded on first need) for everything else.
pub struct Ext4Fs {
    window: Window,
    sb: Vec<u8>,
    raw: Option<Raw>,
    view: std::cell::OnceCell<Option<Ext4>>,
    /// Metadata of symlink-free paths already looked up: resolving one
    /// path looks up each of its prefixes, so listing thousands of
    /// generations would otherwise repeat the same lookups hundreds of
    /// times. The image does not change while nixboot reads it.
    seen: std::cell::RefCell<std::collections::HashMap<Vec<u8>, Option<Meta>>>,
}

fn kind_of_view(m: &Metadata) -> Kind {
    let t = m.file_type();
    if t.is_regular_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Special
    }
}

fn kind_of_raw(k: InodeKind) -> Kind {
    match k {
        InodeKind::File => Kind::File,
        InodeKind::Dir => Kind::Dir,
        InodeKind::Symlink => Kind::Symlink,
        InodeKind::Special => Kind::Special,
    }
}

fn meta_of_view(m: &Metadata) -> Meta {
    Meta {
        kind: kind_of_view(m),
        len: m.len(),
        mtime: m.modified().seconds(),
        ino: None,
    }
}

fn meta_of_raw(i: &Inode) -> Meta {
    Meta {
        kind: kind_of_raw(i.kind),
        len: i.size,
        mtime: i.mtime,
        ino: Some(u64::from(i.ino)),
    }
}

/// The fast reader's inode number of `meta`, if it read it.
fn raw_ino(meta: &Meta) -> Option<u32> {
    meta.ino.and_then(|i| u32::try_from(i).ok())
}

/// A file read through the fast reader's extent map.
struct RawFile<'a> {
    fs: &'a Raw,
    extents: Vec<raw::Extent>,
    size: u64,
    pos: u64,
}

impl std::io::Read for RawFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .fs
            .read_at(&self.extents, self.size, self.pos, buf)
            .map_err(std::io::Error::other)?;
        self.pos = self.pos.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

impl FileReader for RawFile<'_> {
    fn seek_to(&mut self, pos: u64) -> std::io::Result<()> {
        self.pos = pos;
        Ok(())
    }
}

/// A file read through ext4-view.
struct ViewFile(ext4_view::File);

impl std::io::Read for ViewFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_bytes(buf).map_err(std::io::Error::other)
    }
}

impl FileReader for ViewFile {
    fn seek_to(&mut self, pos: u64) -> std::io::Result<()> {
        self.0.seek_to(pos).map_err(std::io::Error::other)
    }
}

/// Where a file's bytes are, for the fast reader.
enum RawData<'a> {
    Inline(Vec<u8>),
    Extents(&'a Raw, Vec<raw::Extent>),
}

/// The 1024-byte superblock of the filesystem in `window`, checked.
fn read_superblock(window: &Window) -> Result<Vec<u8>, FsError> {
    let mut sb = vec![0u8; 1024];
    window.read_exact_at(1024, &mut sb).map_err(|_| FsError::NotExt4)?;
    precheck_superblock(&sb, window.len())?;
    Ok(sb)
}

fn load_view(window: &Window, sb: &[u8]) -> Result<Ext4, FsError> {
    match Ext4::load(Box::new(window.clone())) {
        Ok(fs) => Ok(fs),
        Err(Ext4Error::Incompatible(e)) if sb_u32(sb, S_FEATURE_INCOMPAT) & INCOMPAT_RECOVER != 0 => {
            log::warn!("the guest filesystem needs journal recovery ({e}); reading it without the journal");
            let patched = NoRecovery {
                inner: window.clone(),
                sb: without_recovery(sb.to_vec()),
            };
            Ext4::load(Box::new(patched)).map_err(FsError::Load)
        }
        Err(e) => Err(FsError::Load(e)),
    }
}

/// An error of the fast reader, or one already in the caller's terms.
enum RawOrFs {
    Raw(RawError),
    Fs(FsError),
}

impl From<RawError> for RawOrFs {
    fn from(e: RawError) -> RawOrFs {
        RawOrFs::Raw(e)
    }
}

/// A directory entry during a walk.
enum Ent {
    Raw { ino: u32, file_type: u8 },
    View(Box<ext4_view::DirEntry>),
}

impl Ext4Fs {
    /// Check and load the filesystem in `window`.
    pub fn open(window: Window) -> Result<Ext4Fs, FsError> {
        let sb = read_superblock(&window)?;
        let view = std::cell::OnceCell::new();
        let raw = match Raw::new(window.clone(), &sb) {
            Ok(r) => Some(r),
            Err(e) => {
                log::debug!("reading the guest filesystem with ext4-view: {e}");
                // Nothing to fall back from: load it now, and fail now.
                let _ = view.set(Some(load_view(&window, &sb)?));
                None
            }
        };
        Ok(Ext4Fs {
            window,
            sb,
            raw,
            view,
            seen: Default::default(),
        })
    }

    /// Open the filesystem in `window` with ext4-view alone (the reference
    /// reader): for tests that check both readers agree, and for fuzzing.
    pub fn open_with_ext4_view(window: Window) -> Result<Ext4Fs, FsError> {
        let sb = read_superblock(&window)?;
        let view = std::cell::OnceCell::new();
        let _ = view.set(Some(load_view(&window, &sb)?));
        Ok(Ext4Fs {
            window,
            sb,
            raw: None,
            view,
            seen: Default::default(),
        })
    }

    /// Which reader serves this filesystem: `"nixboot"` (ours, with
    /// ext4-view for single inodes it leaves aside) or `"ext4-view"`.
    pub fn reader(&self) -> &'static str {
        if self.raw.is_some() { "nixboot" } else { "ext4-view" }
    }

    /// How many lookups directory indexes (htrees) answered so far.
    pub fn indexed_lookups(&self) -> u64 {
        self.raw.as_ref().map_or(0, Raw::indexed_answers)
    }

    /// ext4-view, loaded on first need; `what` says why, for the error
    /// when it cannot load.
    fn view(&self, path: &[u8], what: &RawError) -> Result<&Ext4, FsError> {
        self.view
            .get_or_init(|| {
                log::debug!("falling back to ext4-view for {}: {what}", escape(path));
                load_view(&self.window, &self.sb)
                    .map_err(|e| log::debug!("ext4-view cannot load the filesystem: {e}"))
                    .ok()
            })
            .as_ref()
            .ok_or_else(|| FsError::Raw {
                path: escape(path),
                source: RawError::Unsupported("this filesystem"),
            })
    }

    fn raw_err(path: &[u8], e: RawError) -> FsError {
        match e {
            RawError::TooManyEntries => FsError::TooManyEntries(escape(path)),
            e => FsError::Raw {
                path: escape(path),
                source: e,
            },
        }
    }

    /// `lstat` of a symlink-free absolute path with the fast reader.
    fn raw_lstat(&self, raw: &Raw, path: &[u8]) -> Result<Meta, RawOrFs> {
        if path == b"/" {
            return Ok(meta_of_raw(&raw.inode(raw::ROOT_INO)?));
        }
        let (parent, name) = parent_and_name(path);
        let dir = self.lstat_raw(parent).map_err(RawOrFs::Fs)?;
        let Some(ino) = raw_ino(&dir) else {
            return Err(RawOrFs::Raw(RawError::Unsupported("a directory read by ext4-view")));
        };
        if !dir.is_dir() {
            return Err(RawOrFs::Fs(FsError::WrongType {
                path: escape(path),
                found: "non-directory",
                wanted: "directory",
            }));
        }
        let dir = raw.inode(ino)?;
        match raw.lookup(&dir, name)? {
            Some(ino) => Ok(meta_of_raw(&raw.inode(ino)?)),
            None => Err(RawOrFs::Fs(FsError::NotFound(escape(path)))),
        }
    }

    /// `lstat` of a symlink-free absolute path, remembered (hits and
    /// misses) for the rest of the run.
    fn lstat_raw(&self, path: &[u8]) -> Result<Meta, FsError> {
        if let Some(hit) = self.seen.borrow().get(path) {
            return hit.clone().ok_or_else(|| FsError::NotFound(escape(path)));
        }
        let view_lstat = |v: &Ext4| -> Result<Meta, FsError> {
            let p = ext4_view::Path::try_from(path).map_err(|_| FsError::PathTooLong(escape(path)))?;
            v.symlink_metadata(p)
                .map(|m| meta_of_view(&m))
                .map_err(|e| map_err(path, e))
        };
        let res = match &self.raw {
            Some(raw) => match self.raw_lstat(raw, path) {
                Ok(m) => Ok(m),
                Err(RawOrFs::Fs(e)) => Err(e),
                Err(RawOrFs::Raw(e @ RawError::Unsupported(_))) => view_lstat(self.view(path, &e)?),
                Err(RawOrFs::Raw(e)) => Err(Self::raw_err(path, e)),
            },
            None => view_lstat(self.view(path, &RawError::Unsupported("this filesystem"))?),
        };
        let remember = match &res {
            Ok(m) => Some(Some(m.clone())),
            Err(FsError::NotFound(_)) => Some(None),
            Err(_) => None,
        };
        let mut seen = self.seen.borrow_mut();
        if let Some(r) = remember
            && seen.len() < MAX_CACHED_PATHS
        {
            seen.insert(path.to_vec(), r);
        }
        res
    }

    /// Where the fast reader finds the regular file's bytes, or
    /// `Unsupported`.
    fn raw_data(&self, meta: &Meta) -> Result<RawData<'_>, RawError> {
        match (&self.raw, raw_ino(meta)) {
            (Some(raw), Some(ino)) => {
                let inode = raw.inode(ino)?;
                if let Some(d) = raw.inline_data(&inode)? {
                    return Ok(RawData::Inline(d));
                }
                Ok(RawData::Extents(raw, raw.extents(&inode)?))
            }
            _ => Err(RawError::Unsupported("a file read by ext4-view")),
        }
    }

    /// An entry's own metadata.
    fn ent_meta(&self, dir: &[u8], ent: &Ent) -> Result<Meta, FsError> {
        match (ent, &self.raw) {
            (Ent::Raw { ino, .. }, Some(raw)) => raw
                .inode(*ino)
                .map(|i| meta_of_raw(&i))
                .map_err(|e| Self::raw_err(dir, e)),
            (Ent::View(e), _) => e.metadata().map(|m| meta_of_view(&m)).map_err(|e| map_err(dir, e)),
            (Ent::Raw { .. }, None) => Err(Self::raw_err(dir, RawError::Unsupported("no fast reader"))),
        }
    }

    /// An entry's kind, from the directory entry where it says.
    fn ent_kind(&self, dir: &[u8], ent: &Ent) -> Result<Kind, FsError> {
        Ok(match ent {
            Ent::Raw { file_type: 1, .. } => Kind::File,
            Ent::Raw { file_type: 2, .. } => Kind::Dir,
            Ent::Raw { file_type: 7, .. } => Kind::Symlink,
            Ent::Raw { file_type: 3..=6, .. } => Kind::Special,
            Ent::Raw { .. } => self.ent_meta(dir, ent)?.kind(),
            Ent::View(e) => match e.file_type() {
                Ok(t) if t.is_regular_file() => Kind::File,
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_symlink() => Kind::Symlink,
                Ok(_) => Kind::Special,
                Err(e) => return Err(map_err(dir, e)),
            },
        })
    }

    /// Walk the directory `p` (metadata `meta`), calling `each` with each
    /// entry's name (without `.` and `..`) and the entry; at most
    /// `MAX_DIR_ENTRIES` entries are examined.
    fn walk_dir(
        &self,
        p: &[u8],
        meta: &Meta,
        mut each: impl FnMut(Vec<u8>, Ent) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let mut raw_walk = || -> Result<(), RawOrFs> {
            let (Some(raw), Some(ino)) = (&self.raw, raw_ino(meta)) else {
                return Err(RawOrFs::Raw(RawError::Unsupported("a directory read by ext4-view")));
            };
            let dir = raw.inode(ino)?;
            // Collect first: `each` may look things up (and so read) again.
            let mut ents = Vec::new();
            raw.walk_dir(&dir, |d| {
                if d.name != b"." && d.name != b".." {
                    ents.push((d.name.to_vec(), d.ino, d.file_type));
                }
                Ok(())
            })?;
            for (name, ino, file_type) in ents {
                each(name, Ent::Raw { ino, file_type }).map_err(RawOrFs::Fs)?;
            }
            Ok(())
        };
        let e = match raw_walk() {
            Ok(()) => return Ok(()),
            Err(RawOrFs::Fs(e)) => return Err(e),
            Err(RawOrFs::Raw(e @ RawError::Unsupported(_))) => e,
            Err(RawOrFs::Raw(e)) => return Err(Self::raw_err(p, e)),
        };
        let v = self.view(p, &e)?;
        let ep = ext4_view::Path::try_from(p).map_err(|_| FsError::PathTooLong(escape(p)))?;
        let rd = v.read_dir(ep).map_err(|e| map_err(p, e))?;
        let mut examined = 0u32;
        for ent in rd {
            examined = examined.saturating_add(1);
            if examined > MAX_DIR_ENTRIES.saturating_add(2) {
                return Err(FsError::TooManyEntries(escape(p)));
            }
            let ent = ent.map_err(|e| map_err(p, e))?;
            let name = ent.file_name().as_ref().to_vec();
            if name != b"." && name != b".." {
                each(name, Ent::View(Box::new(ent)))?;
            }
        }
        Ok(())
    }
}

impl FileSystem for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn describe(&self) -> String {
        "ext4".to_owned()
    }

    fn uuid(&self) -> Option<[u8; 16]> {
        let u: [u8; 16] = self.sb.get(S_UUID..S_UUID.saturating_add(16))?.try_into().ok()?;
        (u != [0; 16]).then_some(u)
    }

    fn label(&self) -> Option<Vec<u8>> {
        let l = self.sb.get(S_VOLUME_NAME..S_VOLUME_NAME.saturating_add(16))?;
        let end = l.iter().position(|b| *b == 0).unwrap_or(l.len());
        let l = l.get(..end)?;
        (!l.is_empty()).then(|| l.to_vec())
    }

    fn lstat(&self, path: &[u8]) -> Result<Meta, FsError> {
        self.lstat_raw(path)
    }

    fn read_link(&self, here: &[u8], meta: &Meta) -> Result<Vec<u8>, FsError> {
        let view_read = |v: &Ext4| -> Result<Vec<u8>, FsError> {
            let p = ext4_view::Path::try_from(here).map_err(|_| FsError::PathTooLong(escape(here)))?;
            let t = v.read_link(p).map_err(|e| map_err(here, e))?;
            Ok(t.as_ref().to_vec())
        };
        match (&self.raw, raw_ino(meta)) {
            (Some(raw), Some(ino)) => match raw.inode(ino).and_then(|i| raw.read_link(&i)) {
                Ok(t) => Ok(t),
                Err(e @ RawError::Unsupported(_)) => view_read(self.view(here, &e)?),
                Err(e) => Err(Self::raw_err(here, e)),
            },
            _ => view_read(self.view(here, &RawError::Unsupported("a link read by ext4-view"))?),
        }
    }

    fn open(&self, p: &[u8], meta: &Meta) -> Result<GuestFile<'_>, FsError> {
        Ok(match self.raw_data(meta) {
            Ok(RawData::Extents(fs, extents)) => GuestFile(Box::new(RawFile {
                fs,
                extents,
                size: meta.len(),
                pos: 0,
            })),
            Ok(RawData::Inline(data)) => GuestFile(Box::new(BytesReader::new(data))),
            Err(e @ RawError::Unsupported(_)) => {
                let v = self.view(p, &e)?;
                let ep = ext4_view::Path::try_from(p).map_err(|_| FsError::PathTooLong(escape(p)))?;
                GuestFile(Box::new(ViewFile(v.open(ep).map_err(|e| map_err(p, e))?)))
            }
            Err(e) => return Err(Self::raw_err(p, e)),
        })
    }

    fn data_runs(&self, p: &[u8], meta: &Meta) -> Result<Option<Vec<Run>>, FsError> {
        let len = meta.len();
        let (raw, extents) = match self.raw_data(meta) {
            Ok(RawData::Extents(raw, extents)) => (raw, extents),
            Ok(RawData::Inline(_)) | Err(RawError::Unsupported(_)) => return Ok(None),
            Err(e) => return Err(Self::raw_err(p, e)),
        };
        let bs = raw.geometry().block_size;
        let mut runs: Vec<Run> = Vec::new();
        let mut push = |disk_offset: Option<u64>, n: u64| {
            if n == 0 {
                return;
            }
            if let Some(last) = runs.last_mut() {
                let follows = match (last.disk_offset, disk_offset) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.checked_add(last.len) == Some(b),
                    _ => false,
                };
                if follows {
                    last.len = last.len.saturating_add(n);
                    return;
                }
            }
            runs.push(Run { disk_offset, len: n });
        };
        let mut pos = 0u64;
        for e in &extents {
            let start = e.logical.saturating_mul(bs).min(len);
            push(None, start.saturating_sub(pos));
            let end = e.logical.saturating_add(e.len).saturating_mul(bs).min(len);
            let n = end.saturating_sub(start);
            if e.unwritten {
                push(None, n);
            } else {
                // Window bytes to disk ranges: an LVM volume's extents
                // need not be contiguous on the disk.
                let at = e.physical.saturating_mul(bs);
                self.window
                    .disk_ranges(at, n, |disk, k| push(Some(disk), k))
                    .map_err(|source| FsError::Io {
                        path: escape(&p),
                        source,
                    })?;
            }
            pos = end;
        }
        push(None, len.saturating_sub(pos));
        Ok(Some(runs))
    }

    fn read_dir(&self, p: &[u8], meta: &Meta, with_meta: bool, each: &mut EachEntry<'_>) -> Result<(), FsError> {
        self.walk_dir(p, meta, |name, ent| {
            if !with_meta {
                return each(&name, self.ent_kind(p, &ent)?, None);
            }
            let m = self.ent_meta(p, &ent)?;
            // Prime the lstat memo. A name listed twice (a corrupt
            // directory) is the first one, as a lookup finds it.
            {
                let mut seen = self.seen.borrow_mut();
                if seen.len() < MAX_CACHED_PATHS {
                    seen.entry(child_path(p, &name)).or_insert_with(|| Some(m.clone()));
                }
            }
            each(&name, m.kind(), Some(m))
        })
    }
}

fn map_err(path: &[u8], e: Ext4Error) -> FsError {
    match e {
        Ext4Error::NotFound => FsError::NotFound(escape(path)),
        Ext4Error::TooManySymlinks => FsError::TooManySymlinks(escape(path)),
        Ext4Error::PathTooLong => FsError::PathTooLong(escape(path)),
        Ext4Error::NotADirectory => FsError::WrongType {
            path: escape(path),
            found: "non-directory",
            wanted: "directory",
        },
        e => FsError::Read {
            path: escape(path),
            source: e,
        },
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sb(log: u32, blocks: u32, bpg: u32, ipg: u32) -> Vec<u8> {
        let mut s = vec![0u8; 1024];
        s[S_MAGIC] = 0x53;
        s[S_MAGIC + 1] = 0xEF;
        s[S_LOG_BLOCK_SIZE..][..4].copy_from_slice(&log.to_le_bytes());
        s[S_BLOCKS_COUNT_LO..][..4].copy_from_slice(&blocks.to_le_bytes());
        s[S_BLOCKS_PER_GROUP..][..4].copy_from_slice(&bpg.to_le_bytes());
        s[S_INODES_PER_GROUP..][..4].copy_from_slice(&ipg.to_le_bytes());
        s
    }

    #[test]
    fn superblock_checks() {
        assert!(precheck_superblock(&sb(0, 4096, 8192, 256), 4 << 20).is_ok());
        assert!(matches!(
            precheck_superblock(&vec![0u8; 1024], 1 << 20),
            Err(FsError::NotExt4)
        ));
        assert!(matches!(
            precheck_superblock(&sb(7, 1, 8192, 1), 1 << 30),
            Err(FsError::BadSuperblock(_))
        ));
        // crates.md finding 3: blocks_count 0xFFFFFFFF, blocks_per_group 1.
        assert!(matches!(
            precheck_superblock(&sb(0, u32::MAX, 1, 8), u64::MAX),
            Err(FsError::BadSuperblock("blocks per group out of range"))
        ));
        assert!(matches!(
            precheck_superblock(&sb(0, u32::MAX, 8, 8), u64::MAX),
            Err(FsError::BadSuperblock("too many block groups"))
        ));
        assert!(matches!(
            precheck_superblock(&sb(0, 8192, 8192, 256), 4 << 20),
            Err(FsError::BadSuperblock("block count exceeds the partition"))
        ));
    }

    /// testdata/regress/fuzz_disk_blocks_count_hi.bin: ext4-view reads
    /// s_blocks_count_hi even without the 64bit feature; the precheck did
    /// not, so 0 blocks passed it and ext4-view then sized its descriptor
    /// table for 2^40 blocks (a 2 GiB allocation, an abort).
    #[test]
    fn blocks_count_hi_without_64bit() {
        let mut s = sb(0, 0, 8192, 96);
        s[S_BLOCKS_COUNT_HI + 1] = 1;
        assert!(matches!(
            precheck_superblock(&s, 2048),
            Err(FsError::BadSuperblock(
                "s_blocks_count_hi set without the 64bit feature"
            ))
        ));
        s[S_FEATURE_INCOMPAT] = 0x80;
        assert!(matches!(
            precheck_superblock(&s, 2048),
            Err(FsError::BadSuperblock("block count exceeds the partition"))
        ));
    }

    #[test]
    fn recovery_patch_recomputes_checksum() {
        let mut s = sb(2, 1, 8192, 1);
        s[S_FEATURE_INCOMPAT] = 0x4 | 0x2;
        s[S_FEATURE_RO_COMPAT + 1] = 0x4; // metadata_csum
        let p = without_recovery(s);
        assert_eq!(sb_u32(&p, S_FEATURE_INCOMPAT), 0x2);
        let want = !CRC32C.checksum(&p[..S_CHECKSUM]);
        assert_eq!(sb_u32(&p, S_CHECKSUM), want);
    }
}
