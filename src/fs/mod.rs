//! The guest's filesystems, behind one interface. Guest data.
//!
//! ```text
//!   fs::probe(window) ──► [Box<dyn FileSystem>]   one per tree: an ext4 filesystem,
//!                                                   each btrfs subvolume, …
//!   view::GuestFs     ──► the guest-root view over one of them: our symlink
//!                         resolver, path and link caps, capped reads, and the
//!                         mount mapping (a filesystem that is the guest's /nix)
//! ```
//!
//! A [`FileSystem`] answers questions about **symlink-free absolute paths
//! inside itself** ("/" is its own root): lstat, read a link, open a
//! regular file, map it to disk ranges, list a directory. It never follows
//! a symlink and never sees a guest path that still has one: resolving
//! links, checking each link's size before it is read, and keeping guest
//! paths inside the guest are the job of [`GuestFs`], which sits above and
//! is shared by every filesystem. Everything above the view (the NixOS
//! layer, menus, `list`, the kernel check) does not know which filesystem
//! it reads.
//!
//! Nothing here touches the host's filesystem: readers take a
//! [`Window`] of the guest disk and read it with `pread`.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod btrfs;
pub mod ext4;
pub mod view;

use std::io::Read;
use std::rc::Rc;

pub use ext4::{Ext4Fs, RawError, precheck_superblock};
pub use view::{GuestFs, Mount};

use crate::disk::Window;
use crate::error::escape;
use crate::limits::{MAX_DIR_ENTRIES, MAX_SYMLINKS};

/// One readable filesystem tree: an ext4 filesystem, one btrfs subvolume.
/// Paths are symlink-free and absolute within the tree ("/" is its root).
pub trait FileSystem {
    /// `"ext4"` or `"btrfs"`.
    fn kind(&self) -> &'static str;
    /// For logs: `ext4`, `btrfs subvolume @nix (id 257)`.
    fn describe(&self) -> String;
    /// The filesystem UUID (ext4 `s_uuid`, btrfs fsid), for GRUB's
    /// `search --fs-uuid`.
    fn uuid(&self) -> Option<[u8; 16]>;
    /// The filesystem label, for `search --label`.
    fn label(&self) -> Option<Vec<u8>>;
    /// Metadata of `path`, not following a final symlink. A missing path
    /// is [`FsError::NotFound`].
    fn lstat(&self, path: &[u8]) -> Result<Meta, FsError>;
    /// The target of the symlink `path` (`meta` from [`FileSystem::lstat`];
    /// the view has already checked that its size is that of a path).
    fn read_link(&self, path: &[u8], meta: &Meta) -> Result<Vec<u8>, FsError>;
    /// A reader over exactly `meta.len()` bytes of the regular file `path`.
    fn open(&self, path: &[u8], meta: &Meta) -> Result<GuestFile<'_>, FsError>;
    /// Where the regular file's bytes lie on the disk (absolute offsets), in
    /// order, adding up to `meta.len()`; `None` when they must be streamed
    /// through [`FileSystem::open`] instead (compressed or inline data, a
    /// reader that does not map extents).
    fn data_runs(&self, path: &[u8], meta: &Meta) -> Result<Option<Vec<Run>>, FsError>;
    /// Call `each(name, kind, own_meta)` for every entry of the directory
    /// `path` but `.` and `..`, at most [`MAX_DIR_ENTRIES`]; `own_meta` is
    /// the entry's own metadata (read by inode, no path walk) when
    /// `with_meta`, else `None`.
    fn read_dir(&self, path: &[u8], meta: &Meta, with_meta: bool, each: &mut EachEntry<'_>) -> Result<(), FsError>;
}

/// What [`FileSystem::read_dir`] calls per entry: name, kind, own metadata.
pub type EachEntry<'a> = dyn FnMut(&[u8], Kind, Option<Meta>) -> Result<(), FsError> + 'a;

/// Every filesystem tree in `window`, the preferred first. An error when
/// no filesystem nixboot reads is there ([`FsError::NotAFilesystem`]).
pub fn probe(window: Window) -> Result<Vec<Rc<dyn FileSystem>>, FsError> {
    match Ext4Fs::open(window.clone()) {
        Ok(fs) => Ok(vec![Rc::new(fs)]),
        Err(FsError::NotExt4) if btrfs::has_magic(&window) => {
            let subvols = btrfs::open_subvolumes(window).map_err(|source| FsError::Btrfs {
                path: "the btrfs filesystem".into(),
                source,
            })?;
            Ok(subvols.into_iter().map(|s| Rc::new(s) as Rc<dyn FileSystem>).collect())
        }
        Err(FsError::NotExt4) => Err(FsError::NotAFilesystem),
        Err(e) => Err(e),
    }
}

/// Filesystem errors, with the guest path (escaped) where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Neither ext4 nor another filesystem nixboot reads.
    #[error("no filesystem nixboot reads (ext2/3/4, btrfs)")]
    NotAFilesystem,
    /// Not an ext2/3/4 filesystem.
    #[error("no ext4 superblock")]
    NotExt4,
    /// The superblock fails a sanity check.
    #[error("corrupt ext4 superblock: {0}")]
    BadSuperblock(&'static str),
    /// ext4-view refused to load the filesystem.
    #[error("cannot load ext4 filesystem: {0}")]
    Load(ext4_view::Ext4Error),
    /// A path does not exist in the guest.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A guest path is relative.
    #[error("{0} is not an absolute path")]
    NotAbsolute(String),
    /// A guest path leaves the one filesystem this view reads (a `/nix`
    /// filesystem read on its own: nothing else of the guest is mounted).
    #[error("{path} is outside {mount}, the only part of the guest on {fs}")]
    OutsideMount {
        /// The guest path, escaped.
        path: String,
        /// Where the filesystem is mounted in the guest (`/nix`).
        mount: &'static str,
        /// The filesystem, for the message.
        fs: String,
    },
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
        source: ext4_view::Ext4Error,
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
    /// The btrfs reader refused a structure (or the whole filesystem).
    #[error("cannot read {path}: {source}")]
    Btrfs {
        /// The path.
        path: String,
        /// The reader's error.
        #[source]
        source: btrfs::BtrfsError,
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
    /// "regular file", "directory", … for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Special => "device or special file",
        }
    }
}

/// Metadata of a guest file (not following a final symlink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// The filesystem's own id of the inode, when its reader has one.
    pub ino: Option<u64>,
}

impl Meta {
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

/// A seekable reader over one guest file, as a filesystem provides it.
pub trait FileReader: Read {
    /// Move to byte `pos` of the file.
    fn seek_to(&mut self, pos: u64) -> std::io::Result<()>;
}

/// An open guest file: a capped, seekable reader.
pub struct GuestFile<'a>(pub Box<dyn FileReader + 'a>);

impl GuestFile<'_> {
    /// Move to byte `pos`.
    pub fn seek_to(&mut self, pos: u64) -> std::io::Result<()> {
        self.0.seek_to(pos)
    }
}

impl Read for GuestFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// A file held in memory (inline data, a decompressed extent).
pub struct BytesReader {
    data: Vec<u8>,
    pos: usize,
}

impl BytesReader {
    /// A reader over `data`.
    pub fn new(data: Vec<u8>) -> BytesReader {
        BytesReader { data, pos: 0 }
    }
}

impl Read for BytesReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let src = self.data.get(self.pos..).unwrap_or_default();
        let n = src.len().min(buf.len());
        buf.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(src.get(..n).unwrap_or_default());
        self.pos = self.pos.saturating_add(n);
        Ok(n)
    }
}

impl FileReader for BytesReader {
    fn seek_to(&mut self, pos: u64) -> std::io::Result<()> {
        self.pos = usize::try_from(pos).unwrap_or(usize::MAX);
        Ok(())
    }
}

/// `/a/b/c` -> (`/a/b`, `c`); `/a` -> (`/`, `a`).
pub fn parent_and_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) => (b"/", path.get(1..).unwrap_or_default()),
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i.saturating_add(1)..).unwrap_or_default(),
        ),
        None => (b"/", path),
    }
}

/// `dir` + `/` + `name`, for symlink-free paths.
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut full = dir.to_vec();
    if full != b"/" {
        full.push(b'/');
    }
    full.extend_from_slice(name);
    full
}

/// The error for `path` being a directory's kind other than `wanted`.
pub fn wrong_type(path: &[u8], found: Kind, wanted: &'static str) -> FsError {
    FsError::WrongType {
        path: escape(path),
        found: found.name(),
        wanted,
    }
}
