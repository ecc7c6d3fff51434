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
//! [`Window`] confines the ext4 reader to one partition's byte range: every
//! read is checked against the window before it reaches the disk.

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

/// A byte range of a [`BlockSource`] (one partition), readable by ext4-view.
#[derive(Clone)]
pub struct Window {
    src: Rc<dyn BlockSource>,
    offset: u64,
    len: u64,
}

impl Window {
    /// The range `[offset, offset + len)` of `src`; `None` if it does not
    /// lie within `src`.
    pub fn new(src: Rc<dyn BlockSource>, offset: u64, len: u64) -> Option<Window> {
        let end = offset.checked_add(len)?;
        (end <= src.len()).then_some(Window { src, offset, len })
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte offset of the window on the disk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read exactly `buf.len()` bytes at `start` within the window.
    pub fn read_exact_at(&self, start: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past partition end"))?;
        let _ = end;
        // OK to add: start + n <= len and offset + len <= src.len().
        let abs = self.offset.saturating_add(start);
        self.src.read_exact_at(abs, buf)
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
    fn disk_refuses_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(Disk::open(d.path()).is_err());
    }
}
