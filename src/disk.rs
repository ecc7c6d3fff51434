//! The only owner of the guest disk: read-only, positioned reads only.
//!
//! [`BlockSource`] is the one I/O seam between the guest disk and every
//! parser. [`Disk`] implements it on a file descriptor opened `O_RDONLY`
//! (a regular image file or a block device) with `pread`, never `mmap`
//! (a truncated file would raise SIGBUS) and never a write. Its size comes
//! from seeking to the end, which works for block devices too. In-memory
//! byte slices implement it as well, so the whole pipeline runs on bytes in
//! unit tests and fuzzing.
//!
//! [`Window`] confines the filesystem reader to one partition's byte range,
//! or to the extents of one LVM logical volume: every read is checked
//! against the window before it reaches the disk.

use std::error::Error as StdError;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

/// Something guest bytes can be read from at absolute offsets.
pub trait BlockSource {
    /// Total size in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `offset`; an error if the range is not all there.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A guest disk opened read-only.
#[derive(Debug)]
pub struct Disk {
    file: File,
    len: u64,
}

impl Disk {
    /// Open `path` read-only. Regular files and block devices are accepted.
    pub fn open(path: &Path) -> io::Result<Disk> {
        let file = File::options().read(true).open(path)?;
        Disk::from_file(file)
    }

    /// Wrap an already-open descriptor (the parse child gets the disk this
    /// way, as its standard input).
    pub fn from_file(mut file: File) -> io::Result<Disk> {
        let meta = file.metadata()?;
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Disk { file, len })
    }

    /// The underlying descriptor.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl BlockSource for Disk {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl BlockSource for Vec<u8> {
    fn len(&self) -> u64 {
        u64::try_from(self.as_slice().len()).unwrap_or(u64::MAX)
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let short = || io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of image");
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        let src = self.get(start..end).ok_or_else(short)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One piece of a [`Window`]: `len` bytes of the disk at `disk`, seen at
/// window offset `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    start: u64,
    disk: u64,
    len: u64,
}

/// The byte ranges of a [`BlockSource`] that make up one filesystem: a
/// partition (one range) or an LVM logical volume (its extents, in
/// logical order), readable by ext4-view.
///
/// Every read is checked against the window before it reaches the disk;
/// a read that crosses from one piece into the next is split. The pieces
/// never overlap the window's own address space and each lies within the
/// source, so a window can only ever read the disk ranges it was given.
#[derive(Clone)]
pub struct Window {
    src: Rc<dyn BlockSource>,
    pieces: Rc<[Piece]>,
    len: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("pieces", &self.pieces)
            .field("len", &self.len)
            .finish()
    }
}

/// Error for a read outside the window.
fn outside() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past partition end")
}

impl Window {
    /// The range `[offset, offset + len)` of `src`; `None` if it does not
    /// lie within `src`.
    pub fn new(src: Rc<dyn BlockSource>, offset: u64, len: u64) -> Option<Window> {
        Window::from_ranges(src, &[(offset, len)])
    }

    /// The concatenation of the disk ranges `(offset, len)`, in order;
    /// `None` if any of them does not lie within `src` or the total
    /// overflows. Empty ranges are dropped, adjacent ones merged. The
    /// caller bounds the number of ranges (an LV's segments are capped).
    pub fn from_ranges(src: Rc<dyn BlockSource>, ranges: &[(u64, u64)]) -> Option<Window> {
        let disk_len = src.len();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut total = 0u64;
        for &(disk, len) in ranges {
            if disk.checked_add(len)? > disk_len {
                return None;
            }
            if len == 0 {
                continue;
            }
            match pieces.last_mut() {
                Some(last) if last.disk.checked_add(last.len) == Some(disk) => {
                    last.len = last.len.checked_add(len)?;
                }
                _ => pieces.push(Piece {
                    start: total,
                    disk,
                    len,
                }),
            }
            total = total.checked_add(len)?;
        }
        Some(Window {
            src,
            pieces: pieces.into(),
            len: total,
        })
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of disk ranges the window is made of.
    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    /// Call `each(disk_offset, n)` for the disk ranges that hold window
    /// bytes `[start, start + len)`, in order; an error if that range is
    /// not all within the window.
    pub fn disk_ranges(&self, start: u64, len: u64, mut each: impl FnMut(u64, u64)) -> io::Result<()> {
        let end = start.checked_add(len).filter(|e| *e <= self.len).ok_or_else(outside)?;
        let mut pos = start;
        // The first piece that ends after `pos`.
        let mut i = self.pieces.partition_point(|p| p.start.saturating_add(p.len) <= pos);
        while pos < end {
            let p = self.pieces.get(i).ok_or_else(outside)?;
            let within = pos.checked_sub(p.start).ok_or_else(outside)?;
            let n = p
                .len
                .checked_sub(within)
                .ok_or_else(outside)?
                .min(end.saturating_sub(pos));
            // In range: disk + within < disk + len <= src.len().
            each(p.disk.saturating_add(within), n);
            pos = pos.saturating_add(n);
            i = i.saturating_add(1);
        }
        Ok(())
    }

    /// Read exactly `buf.len()` bytes at `start` within the window.
    pub fn read_exact_at(&self, start: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = u64::try_from(buf.len()).map_err(|_| outside())?;
        if let [p] = &*self.pieces {
            // The common case, one partition: no splitting.
            let _ = start.checked_add(n).filter(|e| *e <= self.len).ok_or_else(outside)?;
            return self.src.read_exact_at(p.disk.saturating_add(start), buf);
        }
        let mut ranges: Vec<(u64, usize)> = Vec::new();
        self.disk_ranges(start, n, |disk, len| {
            ranges.push((disk, usize::try_from(len).unwrap_or(usize::MAX)));
        })?;
        let mut rest = buf;
        for (disk, len) in ranges {
            let (now, later) = rest.split_at_mut_checked(len).ok_or_else(outside)?;
            self.src.read_exact_at(disk, now)?;
            rest = later;
        }
        Ok(())
    }
}

impl ext4_view::Ext4Read for Window {
    fn read(&mut self, start_byte: u64, dst: &mut [u8]) -> Result<(), Box<dyn StdError + Send + Sync + 'static>> {
        Window::read_exact_at(self, start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_confined() {
        let src: Rc<dyn BlockSource> = Rc::new((0u8..=255).collect::<Vec<u8>>());
        assert!(Window::new(src.clone(), 200, 57).is_none());
        assert!(Window::new(src.clone(), u64::MAX, 2).is_none());
        let w = Window::new(src, 100, 50).unwrap();
        let mut b = [0u8; 4];
        w.read_exact_at(0, &mut b).unwrap();
        assert_eq!(b, [100, 101, 102, 103]);
        w.read_exact_at(46, &mut b).unwrap();
        assert_eq!(b, [146, 147, 148, 149]);
        assert!(w.read_exact_at(47, &mut b).is_err());
        assert!(w.read_exact_at(u64::MAX - 1, &mut b).is_err());
    }

    #[test]
    fn window_of_several_ranges() {
        let src: Rc<dyn BlockSource> = Rc::new((0u8..=255).collect::<Vec<u8>>());
        assert!(Window::from_ranges(src.clone(), &[(0, 10), (250, 7)]).is_none());
        assert!(Window::from_ranges(src.clone(), &[(0, 10), (u64::MAX, 2)]).is_none());
        // 100..104, then 10..14, then 14..16 (merged with the previous), then 200..202.
        let w = Window::from_ranges(src, &[(100, 4), (10, 4), (14, 2), (0, 0), (200, 2)]).unwrap();
        assert_eq!(w.len(), 12);
        assert_eq!(w.piece_count(), 3);
        let mut all = [0u8; 12];
        w.read_exact_at(0, &mut all).unwrap();
        assert_eq!(all, [100, 101, 102, 103, 10, 11, 12, 13, 14, 15, 200, 201]);
        let mut b = [0u8; 3];
        w.read_exact_at(3, &mut b).unwrap();
        assert_eq!(b, [103, 10, 11]);
        w.read_exact_at(9, &mut b).unwrap();
        assert_eq!(b, [15, 200, 201]);
        assert!(w.read_exact_at(10, &mut b).is_err());
        let mut got = Vec::new();
        w.disk_ranges(2, 9, |d, n| got.push((d, n))).unwrap();
        assert_eq!(got, [(102, 2), (10, 6), (200, 1)]);
        assert!(w.disk_ranges(11, 2, |_, _| ()).is_err());
        assert!(w.disk_ranges(u64::MAX, 2, |_, _| ()).is_err());
        let mut none = Vec::new();
        w.disk_ranges(12, 0, |d, n| none.push((d, n))).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn disk_refuses_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(Disk::open(d.path()).is_err());
    }
}
