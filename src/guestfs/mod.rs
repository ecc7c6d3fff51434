//! The guest's ext4 filesystem. Guest data.
//!
//! Two readers sit behind one API ([`GuestFs`]): our own inode-level
//! reader ([`raw`], the hot path: lookups through per-run directory maps,
//! file data by extents) for the features a NixOS guest uses, and
//! ext4-view, the reference reader, loaded only when the filesystem or
//! one inode uses something the fast reader leaves to it (a journal that
//! needs replay, inline data, ext2/3 block maps, ...). Both sit behind the
//! same resolver, caps and error types, and the tests run every fixture
//! through both.
//!
//! This is the only module that uses `ext4_view`. It must not call
//! `Ext4::read`/`read_to_string` (they allocate the inode's claimed size
//! up front), must not let ext4-view follow a symlink (a slow symlink with
//! a huge size field aborts the process inside ext4-view), must not list a
//! directory without a cap, and never hands a guest path to the host's
//! `std::fs`. What it does instead:
//!
//! * [`precheck_superblock`]: the kernel's sanity checks on the superblock
//!   before `Ext4::load` (a crafted 1 KiB superblock can make ext4-view
//!   allocate billions of group descriptors).
//! * a fallback for journals ext4-view refuses (`needs_recovery` with jbd2
//!   features it does not replay): the superblock is served with the
//!   recovery flag cleared, like `mount -o noload`.
//! * our own resolver ([`GuestFs::resolve`]): absolute link targets restart
//!   at the *guest* root, `..` never climbs above it, each link's size is
//!   checked before it is read, at most [`MAX_SYMLINKS`] links and
//!   [`MAX_PATH_LEN`]-byte paths. ext4-view only ever sees symlink-free
//!   paths.
//! * capped reads: [`GuestFs::read_small`] and [`GuestFs::open_regular`]
//!   check the inode size against a cap before reading, and read through
//!   `take`. [`GuestFs::data_runs`] maps a file to disk byte ranges so the
//!   privileged parent can copy them in the kernel (`copy_file_range`)
//!   instead of receiving them through a pipe.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::error::Error as StdError;
use std::io::Read;

use ext4_view::{Ext4, Ext4Error, Ext4Read, Metadata};

pub mod htree;
pub mod raw;

use raw::{Inode, InodeKind, Raw};
pub use raw::{
    MAX_CACHED_BLOCK_BYTES, MAX_CACHED_DIR_BYTES, MAX_DIR_BYTES, MAX_EXTENT_NODES, MAX_FILE_EXTENTS, RawError,
};

use crate::disk::Window;
use crate::error::escape;
use crate::limits::{MAX_DIR_ENTRIES, MAX_PATH_LEN, MAX_RESOLVE_STEPS, MAX_SYMLINKS};

/// The most block groups a filesystem may declare (the descriptor table is
/// read into memory at load: 2^20 groups is 64 MiB of descriptors, enough
/// for 128 TiB at 4 KiB blocks).
pub const MAX_BLOCK_GROUPS: u64 = 1 << 20;

/// Filesystem errors, with the guest path (escaped) where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Not an ext2/3/4 filesystem.
    #[error("no ext4 superblock")]
    NotExt4,
    /// The superblock fails a sanity check.
    #[error("corrupt ext4 superblock: {0}")]
    BadSuperblock(&'static str),
    /// ext4-view refused to load the filesystem.
    #[error("cannot load ext4 filesystem: {0}")]
    Load(Ext4Error),
    /// A path does not exist in the guest.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A guest path is relative.
    #[error("{0} is not an absolute path")]
    NotAbsolute(String),
    /// Too many symlinks.
    #[error("more than {MAX_SYMLINKS} symlinks while resolving {0}")]
    TooManySymlinks(String),
    /// A path or link target is too long.
    #[error("path too long while resolving {0}")]
    PathTooLong(String),
    /// A symlink is bigger than any valid target.
    #[error("symlink {path} claims a {len}-byte target")]
    LinkTooLong {
        /// The link.
        path: String,
        /// Its size field.
        len: u64,
    },
    /// A file is not what it should be.
    #[error("{path} is a {found}, not a {wanted}")]
    WrongType {
        /// The path.
        path: String,
        /// What it is.
        found: &'static str,
        /// What was expected.
        wanted: &'static str,
    },
    /// A file is over its cap.
    #[error("{path} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// The path.
        path: String,
        /// Its size.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A directory has too many entries.
    #[error("{0} has more than {MAX_DIR_ENTRIES} entries")]
    TooManyEntries(String),
    /// Reading failed (corrupt structures or an I/O error).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// ext4-view's error.
        #[source]
        source: Ext4Error,
    },
    /// The fast reader found a structure it refuses.
    #[error("cannot read {path}: {source}")]
    Raw {
        /// The path.
        path: String,
        /// The reader's error.
        #[source]
        source: RawError,
    },
    /// An I/O error while streaming a file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

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

/// Paths whose metadata is remembered per run (see [`GuestFs::lstat_raw`]).
pub const MAX_CACHED_PATHS: usize = 200_000;

/// A guest filesystem, read-only: our own reader ([`raw`]) where it
/// applies, ext4-view (loaded on first need) for everything else.
pub struct GuestFs {
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

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (devices, fifos, sockets).
    Special,
}

impl Kind {
    fn of(m: &Metadata) -> Kind {
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
    fn of_raw(k: InodeKind) -> Kind {
        match k {
            InodeKind::File => Kind::File,
            InodeKind::Dir => Kind::Dir,
            InodeKind::Symlink => Kind::Symlink,
            InodeKind::Special => Kind::Special,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Special => "device or special file",
        }
    }
}

/// Metadata of a guest file (not following a final symlink).
#[derive(Clone, Debug)]
pub struct Meta {
    kind: Kind,
    len: u64,
    mtime: i64,
    /// The inode number, when the fast reader read it.
    ino: Option<u32>,
}

impl Meta {
    fn of_view(m: &Metadata) -> Meta {
        Meta {
            kind: Kind::of(m),
            len: m.len(),
            mtime: m.modified().seconds(),
            ino: None,
        }
    }
    fn of_raw(i: &Inode) -> Meta {
        Meta {
            kind: Kind::of_raw(i.kind),
            len: i.size,
            mtime: i.mtime,
            ino: Some(i.ino),
        }
    }
    /// What it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Whether it is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.kind == Kind::Symlink
    }
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the size is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Modification time, seconds since the epoch.
    pub fn mtime(&self) -> i64 {
        self.mtime
    }
}

/// A directory entry from [`GuestFs::list_dir`].
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The name (raw bytes).
    pub name: Vec<u8>,
    /// Its kind, from the directory entry.
    pub kind: Kind,
}

/// A directory entry with its own metadata (not following a symlink).
#[derive(Clone, Debug)]
pub struct StatEntry {
    /// The name (raw bytes).
    pub name: Vec<u8>,
    /// The entry's own metadata.
    pub meta: Meta,
}

/// Where a byte range of a file comes from: `len` bytes at absolute disk
/// offset `disk_offset`, or zeros (a hole or unwritten extent) if `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Absolute byte offset on the disk, or `None` for zeros.
    pub disk_offset: Option<u64>,
    /// Length in bytes.
    pub len: u64,
}

/// An open guest file: a capped, seekable reader.
pub struct GuestFile<'a> {
    inner: FileInner<'a>,
}

enum FileInner<'a> {
    /// A file small enough to live in its inode.
    Bytes {
        data: Vec<u8>,
        pos: usize,
    },
    Raw {
        fs: &'a Raw,
        extents: Vec<raw::Extent>,
        size: u64,
        pos: u64,
    },
    View(Box<ext4_view::File>),
}

impl GuestFile<'_> {
    /// Move to byte `pos`.
    pub fn seek_to(&mut self, to: u64) -> std::io::Result<()> {
        match &mut self.inner {
            FileInner::Raw { pos, .. } => {
                *pos = to;
                Ok(())
            }
            FileInner::Bytes { pos, .. } => {
                *pos = usize::try_from(to).unwrap_or(usize::MAX);
                Ok(())
            }
            FileInner::View(f) => f.seek_to(to).map_err(std::io::Error::other),
        }
    }
}

impl Read for GuestFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            FileInner::Raw { fs, extents, size, pos } => {
                let n = fs.read_at(extents, *size, *pos, buf).map_err(std::io::Error::other)?;
                *pos = pos.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                Ok(n)
            }
            FileInner::Bytes { data, pos } => {
                let src = data.get(*pos..).unwrap_or_default();
                let n = src.len().min(buf.len());
                buf.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(src.get(..n).unwrap_or_default());
                *pos = pos.saturating_add(n);
                Ok(n)
            }
            FileInner::View(f) => f.read_bytes(buf).map_err(std::io::Error::other),
        }
    }
}

/// Where a file's bytes are, for the fast reader.
enum RawData<'a> {
    Inline(Vec<u8>),
    Extents(&'a Raw, Vec<raw::Extent>),
}

/// A directory entry during a walk.
enum Ent {
    Raw { ino: u32, file_type: u8 },
    View(Box<ext4_view::DirEntry>),
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|b| *b == b'/')
}

/// `/a/b/c` -> (`/a/b`, `c`); `/a` -> (`/`, `a`).
fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) => (b"/", path.get(1..).unwrap_or_default()),
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i.saturating_add(1)..).unwrap_or_default(),
        ),
        None => (b"/", path),
    }
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

impl GuestFs {
    /// Check and load the filesystem in `window`.
    pub fn open(window: Window) -> Result<GuestFs, FsError> {
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
        Ok(GuestFs {
            window,
            sb,
            raw,
            view,
            seen: Default::default(),
        })
    }

    /// Open the filesystem in `window` with ext4-view alone (the reference
    /// reader): for tests that check both readers agree, and for fuzzing.
    pub fn open_with_ext4_view(window: Window) -> Result<GuestFs, FsError> {
        let sb = read_superblock(&window)?;
        let view = std::cell::OnceCell::new();
        let _ = view.set(Some(load_view(&window, &sb)?));
        Ok(GuestFs {
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
            return Ok(Meta::of_raw(&raw.inode(raw::ROOT_INO)?));
        }
        let (parent, name) = parent_and_name(path);
        let dir = self.lstat_raw(parent).map_err(RawOrFs::Fs)?;
        let Some(ino) = dir.ino else {
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
            Some(ino) => Ok(Meta::of_raw(&raw.inode(ino)?)),
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
                .map(|m| Meta::of_view(&m))
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

    /// Resolve `path` inside the guest, following every symlink (the last
    /// one too when `follow_last`), from the guest root. Returns the
    /// symlink-free absolute path.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Vec<u8>, FsError> {
        if !path.starts_with(b"/") {
            return Err(FsError::NotAbsolute(escape(path)));
        }
        if path.len() > MAX_PATH_LEN {
            return Err(FsError::PathTooLong(escape(path)));
        }
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut todo: Vec<Vec<u8>> = split(path).rev().map(<[u8]>::to_vec).collect();
        let mut links = 0u32;
        let mut steps = 0u32;
        while let Some(c) = todo.pop() {
            steps = steps.saturating_add(1);
            if steps > MAX_RESOLVE_STEPS {
                return Err(FsError::PathTooLong(escape(path)));
            }
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let here = join(&cur);
            if here.len() > MAX_PATH_LEN {
                return Err(FsError::PathTooLong(escape(path)));
            }
            let is_last = todo.iter().all(|c| c.is_empty() || c == b".");
            let meta = self.lstat_raw(&here)?;
            if !meta.is_symlink() || (is_last && !follow_last) {
                continue;
            }
            cur.pop();
            links = links.saturating_add(1);
            if links > MAX_SYMLINKS {
                return Err(FsError::TooManySymlinks(escape(path)));
            }
            let target = self.read_link_checked(&here, &meta)?;
            if target.starts_with(b"/") {
                cur.clear();
            }
            todo.extend(split(&target).rev().map(<[u8]>::to_vec));
        }
        Ok(join(&cur))
    }

    fn read_link_checked(&self, here: &[u8], meta: &Meta) -> Result<Vec<u8>, FsError> {
        let len = meta.len();
        // A slow symlink's target is read into a buffer of its size field:
        // refuse anything longer than a path before it is read.
        if len == 0 || len >= u64::try_from(MAX_PATH_LEN).unwrap_or(u64::MAX) {
            return Err(FsError::LinkTooLong {
                path: escape(here),
                len,
            });
        }
        let view_read = |v: &Ext4| -> Result<Vec<u8>, FsError> {
            let p = ext4_view::Path::try_from(here).map_err(|_| FsError::PathTooLong(escape(here)))?;
            let t = v.read_link(p).map_err(|e| map_err(here, e))?;
            Ok(t.as_ref().to_vec())
        };
        match (&self.raw, meta.ino) {
            (Some(raw), Some(ino)) => match raw.inode(ino).and_then(|i| raw.read_link(&i)) {
                Ok(t) => Ok(t),
                Err(e @ RawError::Unsupported(_)) => view_read(self.view(here, &e)?),
                Err(e) => Err(Self::raw_err(here, e)),
            },
            _ => view_read(self.view(here, &RawError::Unsupported("a link read by ext4-view"))?),
        }
    }

    /// The target of the symlink at `path` (its parents resolved in the
    /// guest), or `None` if `path` is not a symlink.
    pub fn read_link(&self, path: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        let p = self.resolve(path, false)?;
        let meta = self.lstat_raw(&p)?;
        if !meta.is_symlink() {
            return Ok(None);
        }
        self.read_link_checked(&p, &meta).map(Some)
    }

    /// Metadata of `path` without following a final symlink.
    pub fn lstat(&self, path: &[u8]) -> Result<Meta, FsError> {
        let p = self.resolve(path, false)?;
        self.lstat_raw(&p)
    }

    /// Metadata of what `path` resolves to, and the resolved path.
    pub fn stat(&self, path: &[u8]) -> Result<(Vec<u8>, Meta), FsError> {
        let p = self.resolve(path, true)?;
        let m = self.lstat_raw(&p)?;
        Ok((p, m))
    }

    /// Whether `path` exists (a dangling final symlink counts as existing).
    pub fn exists(&self, path: &[u8]) -> Result<bool, FsError> {
        match self.lstat(path) {
            Ok(_) => Ok(true),
            Err(FsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Resolve `path` to a regular file of at most `cap` bytes, without
    /// opening it. Returns the resolved path and the file's length.
    pub fn stat_regular(&self, path: &[u8], cap: u64) -> Result<(Vec<u8>, u64), FsError> {
        let (p, meta) = self.stat(path)?;
        let len = check_regular(path, &meta, cap)?;
        Ok((p, len))
    }

    /// Where the fast reader finds the (resolved, regular) file's bytes,
    /// or `Unsupported`.
    fn raw_data(&self, meta: &Meta) -> Result<RawData<'_>, RawError> {
        match (&self.raw, meta.ino) {
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

    /// Open the regular file `path` resolves to, refusing anything over
    /// `cap` bytes. Returns the resolved path, the file and its length.
    pub fn open_regular(&self, path: &[u8], cap: u64) -> Result<(Vec<u8>, GuestFile<'_>, u64), FsError> {
        let (p, meta) = self.stat(path)?;
        let len = check_regular(path, &meta, cap)?;
        let inner = match self.raw_data(&meta) {
            Ok(RawData::Extents(fs, extents)) => FileInner::Raw {
                fs,
                extents,
                size: len,
                pos: 0,
            },
            Ok(RawData::Inline(data)) => FileInner::Bytes { data, pos: 0 },
            Err(e @ RawError::Unsupported(_)) => {
                let v = self.view(&p, &e)?;
                let ep = ext4_view::Path::try_from(p.as_slice()).map_err(|_| FsError::PathTooLong(escape(path)))?;
                FileInner::View(Box::new(v.open(ep).map_err(|e| map_err(&p, e))?))
            }
            Err(e) => return Err(Self::raw_err(&p, e)),
        };
        Ok((p, GuestFile { inner }, len))
    }

    /// Where the bytes of the regular file `path` (at most `cap` bytes)
    /// lie on the disk, merged into runs that add up to its length; `None`
    /// when the file is read by ext4-view (its data must then be streamed).
    pub fn data_runs(&self, path: &[u8], cap: u64) -> Result<Option<(u64, Vec<Run>)>, FsError> {
        let (p, meta) = self.stat(path)?;
        let len = check_regular(path, &meta, cap)?;
        let (raw, extents) = match self.raw_data(&meta) {
            Ok(RawData::Extents(raw, extents)) => (raw, extents),
            Ok(RawData::Inline(_)) | Err(RawError::Unsupported(_)) => return Ok(None),
            Err(e) => return Err(Self::raw_err(&p, e)),
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
        Ok(Some((len, runs)))
    }

    /// Read a whole small regular file (at most `cap` bytes).
    pub fn read_small(&self, path: &[u8], cap: u64) -> Result<Vec<u8>, FsError> {
        let (_, f, len) = self.open_regular(path, cap)?;
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        f.take(cap).read_to_end(&mut buf).map_err(|e| FsError::Io {
            path: escape(path),
            source: e,
        })?;
        Ok(buf)
    }

    /// Walk the directory `path` resolves to, calling `each` with the
    /// resolved directory path, each entry's name (without `.` and `..`)
    /// and the entry; at most `MAX_DIR_ENTRIES` entries are examined.
    fn walk_dir(
        &self,
        path: &[u8],
        mut each: impl FnMut(&[u8], Vec<u8>, Ent) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let (p, meta) = self.stat(path)?;
        if !meta.is_dir() {
            return Err(FsError::WrongType {
                path: escape(path),
                found: meta.kind().name(),
                wanted: "directory",
            });
        }
        let mut raw_walk = || -> Result<(), RawOrFs> {
            let (Some(raw), Some(ino)) = (&self.raw, meta.ino) else {
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
                each(&p, name, Ent::Raw { ino, file_type }).map_err(RawOrFs::Fs)?;
            }
            Ok(())
        };
        let e = match raw_walk() {
            Ok(()) => return Ok(()),
            Err(RawOrFs::Fs(e)) => return Err(e),
            Err(RawOrFs::Raw(e @ RawError::Unsupported(_))) => e,
            Err(RawOrFs::Raw(e)) => return Err(Self::raw_err(&p, e)),
        };
        let v = self.view(&p, &e)?;
        let ep = ext4_view::Path::try_from(p.as_slice()).map_err(|_| FsError::PathTooLong(escape(path)))?;
        let rd = v.read_dir(ep).map_err(|e| map_err(&p, e))?;
        let mut examined = 0u32;
        for ent in rd {
            examined = examined.saturating_add(1);
            if examined > MAX_DIR_ENTRIES.saturating_add(2) {
                return Err(FsError::TooManyEntries(escape(path)));
            }
            let ent = ent.map_err(|e| map_err(&p, e))?;
            let name = ent.file_name().as_ref().to_vec();
            if name != b"." && name != b".." {
                each(&p, name, Ent::View(Box::new(ent)))?;
            }
        }
        Ok(())
    }

    /// An entry's own metadata.
    fn ent_meta(&self, dir: &[u8], ent: &Ent) -> Result<Meta, FsError> {
        match (ent, &self.raw) {
            (Ent::Raw { ino, .. }, Some(raw)) => raw
                .inode(*ino)
                .map(|i| Meta::of_raw(&i))
                .map_err(|e| Self::raw_err(dir, e)),
            (Ent::View(e), _) => e.metadata().map(|m| Meta::of_view(&m)).map_err(|e| map_err(dir, e)),
            (Ent::Raw { .. }, None) => Err(Self::raw_err(dir, RawError::Unsupported("no fast reader"))),
        }
    }

    /// List the directory `path` resolves to (without `.` and `..`), at
    /// most `MAX_DIR_ENTRIES` entries.
    pub fn list_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let mut out = Vec::new();
        self.walk_dir(path, |p, name, ent| {
            let kind = match &ent {
                Ent::Raw { file_type: 1, .. } => Kind::File,
                Ent::Raw { file_type: 2, .. } => Kind::Dir,
                Ent::Raw { file_type: 7, .. } => Kind::Symlink,
                Ent::Raw { file_type: 3..=6, .. } => Kind::Special,
                Ent::Raw { .. } => self.ent_meta(p, &ent)?.kind(),
                Ent::View(e) => match e.file_type() {
                    Ok(t) if t.is_regular_file() => Kind::File,
                    Ok(t) if t.is_dir() => Kind::Dir,
                    Ok(t) if t.is_symlink() => Kind::Symlink,
                    Ok(_) => Kind::Special,
                    Err(e) => return Err(map_err(p, e)),
                },
            };
            out.push(DirEntry { name, kind });
            Ok(())
        })?;
        Ok(out)
    }

    /// The entries of the directory `path` resolves to for which `keep`
    /// (given the name) is true, with their own metadata read by inode
    /// number (no path walk per entry), which also primes the lstat memo.
    pub fn list_dir_stat(&self, path: &[u8], keep: impl Fn(&[u8]) -> bool) -> Result<Vec<StatEntry>, FsError> {
        let mut out = Vec::new();
        self.walk_dir(path, |p, name, ent| {
            if !keep(&name) {
                return Ok(());
            }
            let meta = self.ent_meta(p, &ent)?;
            let mut full = p.to_vec();
            if full != b"/" {
                full.push(b'/');
            }
            full.extend_from_slice(&name);
            // A name listed twice (a corrupt directory) is the first one, as
            // a lookup finds it.
            let mut seen = self.seen.borrow_mut();
            if seen.len() < MAX_CACHED_PATHS {
                seen.entry(full).or_insert_with(|| Some(meta.clone()));
            }
            out.push(StatEntry { name, meta });
            Ok(())
        })?;
        Ok(out)
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

fn check_regular(path: &[u8], meta: &Meta, cap: u64) -> Result<u64, FsError> {
    let kind = meta.kind();
    if kind != Kind::File {
        return Err(FsError::WrongType {
            path: escape(path),
            found: kind.name(),
            wanted: "regular file",
        });
    }
    let len = meta.len();
    if len > cap {
        return Err(FsError::TooLarge {
            path: escape(path),
            len,
            cap,
        });
    }
    Ok(len)
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
