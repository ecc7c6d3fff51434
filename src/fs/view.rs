//! The guest-root view over one filesystem: where guest paths are
//! resolved. Guest data.
//!
//! [`GuestFs`] is what every layer above the filesystems uses. It takes
//! **guest paths** (`/nix/var/nix/profiles/system`, link targets as the
//! guest wrote them) and:
//!
//! * resolves symlinks with our own resolver: absolute targets restart at
//!   the *guest* root, `..` never climbs above it, each link's size is
//!   checked before it is read, at most [`MAX_SYMLINKS`] links, paths of at
//!   most [`MAX_PATH_LEN`] bytes, at most [`MAX_RESOLVE_STEPS`] components.
//!   A [`FileSystem`] only ever sees symlink-free paths;
//! * maps guest paths onto the filesystem by its [`Mount`]: the guest's
//!   root, or the guest's `/nix` (a filesystem whose own root holds
//!   `store/` and `var/nix/profiles/`, as impermanence and tmpfs-root
//!   setups have). On a `/nix` filesystem, a guest path outside `/nix` is an
//!   error naming it ([`FsError::OutsideMount`]), never a read of another
//!   partition by guess;
//! * caps reads: [`GuestFs::read_small`] and [`GuestFs::open_regular`]
//!   check the size against a cap before reading and read through `take`.
//!
//! No guest path ever reaches the host's filesystem calls.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::Read;
use std::rc::Rc;

use super::{DirEntry, FileSystem, FsError, GuestFile, Kind, Meta, Run, StatEntry, child_path, wrong_type};
use crate::error::escape;
use crate::limits::{MAX_PATH_LEN, MAX_RESOLVE_STEPS, MAX_SYMLINKS};

/// Where a filesystem sits in the guest's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// It is the guest's root: guest path `/X` is its `/X`.
    Root,
    /// It is the guest's `/nix`: guest path `/nix/X` is its `/X`.
    Nix,
}

impl Mount {
    /// The guest directory the filesystem is mounted at.
    pub fn at(self) -> &'static str {
        match self {
            Mount::Root => "/",
            Mount::Nix => "/nix",
        }
    }
}

/// What [`GuestFs::walk`] calls per entry: the resolved directory, then
/// what [`super::EachEntry`] gets.
type WalkEach<'a> = dyn FnMut(&[u8], &[u8], Kind, Option<Meta>) -> Result<(), FsError> + 'a;

/// A guest filesystem as the guest sees it, read-only.
#[derive(Clone)]
pub struct GuestFs {
    fs: Rc<dyn FileSystem>,
    mount: Mount,
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

fn check_regular(path: &[u8], meta: &Meta, cap: u64) -> Result<u64, FsError> {
    if meta.kind() != Kind::File {
        return Err(wrong_type(path, meta.kind(), "regular file"));
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

impl GuestFs {
    /// The view of `fs` mounted at `mount` in the guest.
    pub fn new(fs: Rc<dyn FileSystem>, mount: Mount) -> GuestFs {
        GuestFs { fs, mount }
    }

    /// An ext4 filesystem in `window`, as the guest's root (tests, fuzzing).
    pub fn open_ext4(window: crate::disk::Window) -> Result<GuestFs, FsError> {
        Ok(GuestFs::new(Rc::new(super::Ext4Fs::open(window)?), Mount::Root))
    }

    /// The filesystem underneath.
    pub fn fs(&self) -> &dyn FileSystem {
        self.fs.as_ref()
    }

    /// Where it is mounted in the guest.
    pub fn mount(&self) -> Mount {
        self.mount
    }

    /// For logs: `ext4`, or `btrfs subvolume @nix (id 257), mounted at /nix`.
    pub fn describe(&self) -> String {
        match self.mount {
            Mount::Root => self.fs.describe(),
            Mount::Nix => format!("{}, mounted at /nix", self.fs.describe()),
        }
    }

    /// The filesystem's path for a symlink-free guest path.
    fn to_fs<'p>(&self, guest: &'p [u8]) -> Result<&'p [u8], FsError> {
        match self.mount {
            Mount::Root => Ok(guest),
            Mount::Nix => match guest.strip_prefix(b"/nix") {
                Some([]) => Ok(b"/"),
                Some(rest) if rest.starts_with(b"/") => Ok(rest),
                _ => Err(FsError::OutsideMount {
                    path: escape(guest),
                    mount: "/nix",
                    fs: self.fs.describe(),
                }),
            },
        }
    }

    /// `lstat` of a symlink-free guest path.
    fn lstat_plain(&self, guest: &[u8]) -> Result<Meta, FsError> {
        let p = self.to_fs(guest)?;
        self.fs.lstat(p).map_err(|e| match e {
            // The filesystem names its own path; the guest's is the one to show.
            FsError::NotFound(_) => FsError::NotFound(escape(guest)),
            e => e,
        })
    }

    /// Resolve `path` inside the guest, following every symlink (the last
    /// one too when `follow_last`), from the guest root. Returns the
    /// symlink-free absolute guest path.
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
            let meta = self.lstat_plain(&here)?;
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
        let target = self.fs.read_link(self.to_fs(here)?, meta)?;
        if target.is_empty() || target.len() >= MAX_PATH_LEN {
            return Err(FsError::LinkTooLong {
                path: escape(here),
                len: u64::try_from(target.len()).unwrap_or(u64::MAX),
            });
        }
        Ok(target)
    }

    /// The target of the symlink at `path` (its parents resolved in the
    /// guest), or `None` if `path` is not a symlink.
    pub fn read_link(&self, path: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        let p = self.resolve(path, false)?;
        let meta = self.lstat_plain(&p)?;
        if !meta.is_symlink() {
            return Ok(None);
        }
        self.read_link_checked(&p, &meta).map(Some)
    }

    /// Metadata of `path` without following a final symlink.
    pub fn lstat(&self, path: &[u8]) -> Result<Meta, FsError> {
        let p = self.resolve(path, false)?;
        self.lstat_plain(&p)
    }

    /// Metadata of what `path` resolves to, and the resolved guest path.
    pub fn stat(&self, path: &[u8]) -> Result<(Vec<u8>, Meta), FsError> {
        let p = self.resolve(path, true)?;
        let m = self.lstat_plain(&p)?;
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

    /// Open the regular file `path` resolves to, refusing anything over
    /// `cap` bytes. Returns the resolved path, the file and its length.
    pub fn open_regular(&self, path: &[u8], cap: u64) -> Result<(Vec<u8>, GuestFile<'_>, u64), FsError> {
        let (p, meta) = self.stat(path)?;
        let len = check_regular(path, &meta, cap)?;
        let f = self.fs.open(self.to_fs(&p)?, &meta)?;
        Ok((p, f, len))
    }

    /// Where the bytes of the regular file `path` (at most `cap` bytes)
    /// lie on the disk, in runs that add up to its length; `None` when its
    /// data must be streamed ([`GuestFs::open_regular`]).
    pub fn data_runs(&self, path: &[u8], cap: u64) -> Result<Option<(u64, Vec<Run>)>, FsError> {
        let (p, meta) = self.stat(path)?;
        let len = check_regular(path, &meta, cap)?;
        let Some(runs) = self.fs.data_runs(self.to_fs(&p)?, &meta)? else {
            return Ok(None);
        };
        // The filesystem promised runs adding up to the length; a reader
        // bug must not turn into a short or long copy.
        let total = runs.iter().try_fold(0u64, |a, r| a.checked_add(r.len));
        if total != Some(len) {
            return Err(FsError::Io {
                path: escape(path),
                source: std::io::Error::other("the file's extents do not add up to its size"),
            });
        }
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

    /// Walk the directory `path` resolves to.
    fn walk(&self, path: &[u8], with_meta: bool, each: &mut WalkEach<'_>) -> Result<(), FsError> {
        let (p, meta) = self.stat(path)?;
        if !meta.is_dir() {
            return Err(wrong_type(path, meta.kind(), "directory"));
        }
        let fp = self.to_fs(&p)?;
        self.fs
            .read_dir(fp, &meta, with_meta, &mut |name, kind, m| each(&p, name, kind, m))
    }

    /// List the directory `path` resolves to (without `.` and `..`), at
    /// most `MAX_DIR_ENTRIES` entries.
    pub fn list_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let mut out = Vec::new();
        self.walk(path, false, &mut |_, name, kind, _| {
            out.push(DirEntry {
                name: name.to_vec(),
                kind,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The entries of the directory `path` resolves to for which `keep`
    /// (given the name) is true, with their own metadata read by inode
    /// number (no path walk per entry).
    pub fn list_dir_stat(&self, path: &[u8], keep: impl Fn(&[u8]) -> bool) -> Result<Vec<StatEntry>, FsError> {
        let mut out = Vec::new();
        self.walk(path, true, &mut |dir, name, _, meta| {
            if !keep(name) {
                return Ok(());
            }
            let meta = meta.ok_or_else(|| FsError::Io {
                path: escape(&child_path(dir, name)),
                source: std::io::Error::other("the filesystem gave no metadata"),
            })?;
            out.push(StatEntry {
                name: name.to_vec(),
                meta,
            });
            Ok(())
        })?;
        Ok(out)
    }
}
