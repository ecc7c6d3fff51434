//! btrfs file data: a file's EXTENT_DATA items turned into pieces that
//! cover `[0, size)` in order (inline data, disk ranges, zeros for holes
//! and prealloc, compressed extents), and readers over them. Guest data.
//!
//! At most [`MAX_BTRFS_FILE_EXTENTS`] extents per file; a compressed
//! extent is read only if its compressed and decompressed sizes are within
//! [`MAX_BTRFS_EXTENT_DECOMPRESSED`] (the format's own 128 KiB), and one
//! reader decompresses at most [`MAX_BTRFS_FILE_DECOMPRESSED`] bytes in
//! all. Extents that overlap, or that lie outside their chunk, are errors.

use std::io::{self, Read};
use std::ops::ControlFlow;
use std::rc::Rc;

use super::tree::{self, Budget, Key};
use super::{BtrfsError, EXTENT_DATA, SubvolRoot, Volume, lzo};
use crate::bytes::le64;
use crate::limits::{MAX_BTRFS_EXTENT_DECOMPRESSED, MAX_BTRFS_FILE_DECOMPRESSED, MAX_BTRFS_FILE_EXTENTS};

/// Where one piece of the file comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Zeros (a hole, a prealloc extent, past the last extent).
    Zero,
    /// Uncompressed bytes at this physical offset within the window.
    Disk(u64),
    /// Bytes of an inline extent (already decompressed).
    Inline(Rc<[u8]>, usize),
    /// A compressed extent; the piece starts `skip` bytes into its
    /// decompressed data.
    Compressed(Rc<Compressed>, u64),
}

/// A compressed extent.
#[derive(Debug)]
pub struct Compressed {
    /// 1 zlib, 2 lzo, 3 zstd.
    pub algo: u8,
    /// Physical offset of the compressed bytes.
    pub phys: u64,
    /// Logical address (for messages and the cache).
    pub logical: u64,
    /// Compressed length.
    pub disk_len: u64,
    /// Decompressed length.
    pub ram_len: u64,
}

/// `len` bytes of the file from `offset`, from `src`.
#[derive(Clone, Debug)]
pub struct Piece {
    /// File offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Source.
    pub src: Source,
}

/// A file's data layout.
#[derive(Debug)]
pub struct FileMap {
    /// Pieces, in order, covering `[0, size)` without gaps.
    pub pieces: Vec<Piece>,
    /// File size.
    pub size: u64,
    /// The window the filesystem is read through (a partition, or the
    /// extents of a logical volume): maps its offsets to the disk's.
    window: crate::disk::Window,
    sectorsize: u32,
    vol: Rc<Volume>,
}

fn algo_name(a: u8) -> &'static str {
    match a {
        1 => "zlib",
        2 => "lzo",
        3 => "zstd",
        _ => "unknown",
    }
}

/// Decompress `src` (algorithm `algo`) into exactly `want` bytes (short
/// output is padded with zeros, as the kernel does; `want` is capped by
/// the caller).
pub fn decompress(algo: u8, src: &[u8], want: usize, sectorsize: u32, logical: u64) -> Result<Vec<u8>, BtrfsError> {
    let err = |msg: String| BtrfsError::Decompress {
        algo: algo_name(algo),
        logical,
        msg,
    };
    let cap = u64::try_from(want).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(want);
    match algo {
        1 => {
            flate2::read::ZlibDecoder::new(src)
                .take(cap)
                .read_to_end(&mut out)
                .map_err(|e| err(e.to_string()))?;
        }
        3 => {
            // One frame: the zero padding up to the sector after it is
            // not another frame.
            let mut d = zstd::stream::read::Decoder::with_buffer(src)
                .map_err(|e| err(e.to_string()))?
                .single_frame();
            // btrfs compresses with windows of at most 2^17 bytes
            // (ZSTD_BTRFS_MAX_WINDOWLOG): refuse frames asking for more
            // memory than that.
            d.window_log_max(17).map_err(|e| err(e.to_string()))?;
            d.take(cap).read_to_end(&mut out).map_err(|e| err(e.to_string()))?;
        }
        2 => {
            out = lzo::decompress_btrfs(src, want, sectorsize).map_err(|e| err(e.to_string()))?;
        }
        _ => return Err(err(format!("unknown compression type {algo}"))),
    }
    out.resize(want, 0);
    Ok(out)
}

impl FileMap {
    /// The layout of inode `ino` of `sv`, whose size is `size`.
    pub fn load(vol: &Rc<Volume>, sv: SubvolRoot, ino: u64, size: u64) -> Result<FileMap, BtrfsError> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut pos = 0u64; // file offset covered so far
        let mut budget = Budget::new();
        let lo = Key::new(ino, EXTENT_DATA, 0);
        let hi = Key::new(ino, EXTENT_DATA, u64::MAX);
        let mut count = 0usize;
        let sectorsize = vol.superblock().sectorsize;
        tree::scan(&**vol, sv.root, lo, hi, &mut budget, &mut |k, d| {
            count = count.saturating_add(1);
            if count > MAX_BTRFS_FILE_EXTENTS {
                return Err(BtrfsError::TooMany {
                    what: "extents in one file",
                    cap: MAX_BTRFS_FILE_EXTENTS,
                });
            }
            if k.offset >= size {
                return Ok(ControlFlow::Break(()));
            }
            let bad = |what| BtrfsError::BadItem {
                objectid: k.objectid,
                ty: k.ty,
                offset: k.offset,
                what,
            };
            let unsupported = |what| BtrfsError::Unsupported {
                ino,
                offset: k.offset,
                what,
            };
            if k.offset < pos {
                return Err(bad("extent overlaps the previous one"));
            }
            if k.offset > pos {
                pieces.push(Piece {
                    offset: pos,
                    len: k.offset.saturating_sub(pos),
                    src: Source::Zero,
                });
            }
            let ram_bytes = le64(d, 8).ok_or(bad("truncated extent item"))?;
            let algo = *d.get(16).ok_or(bad("truncated extent item"))?;
            if d.get(17..20).is_none_or(|b| b.iter().any(|x| *x != 0)) {
                return Err(unsupported("encrypted or otherwise encoded"));
            }
            let ty = *d.get(20).ok_or(bad("truncated extent item"))?;
            let room = size.saturating_sub(k.offset);
            let (len, src) = match ty {
                0 => {
                    let raw = d.get(21..).unwrap_or_default();
                    let data: Vec<u8> = if algo == 0 {
                        raw.to_vec()
                    } else {
                        if ram_bytes > MAX_BTRFS_EXTENT_DECOMPRESSED {
                            return Err(BtrfsError::TooLarge {
                                what: "inline extent",
                                len: ram_bytes,
                                cap: MAX_BTRFS_EXTENT_DECOMPRESSED,
                            });
                        }
                        let want = usize::try_from(ram_bytes).unwrap_or(usize::MAX);
                        decompress(algo, raw, want, sectorsize, 0)?
                    };
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX).min(room);
                    (n, Source::Inline(Rc::from(data), 0))
                }
                1 | 2 => {
                    let disk_bytenr = le64(d, 21).ok_or(bad("truncated extent item"))?;
                    let disk_len = le64(d, 29).ok_or(bad("truncated extent item"))?;
                    let offset = le64(d, 37).ok_or(bad("truncated extent item"))?;
                    let num_bytes = le64(d, 45).ok_or(bad("truncated extent item"))?;
                    if num_bytes == 0 {
                        return Err(bad("empty extent"));
                    }
                    let n = num_bytes.min(room);
                    let src = if ty == 2 || disk_bytenr == 0 {
                        Source::Zero
                    } else if algo == 0 {
                        let start = disk_bytenr.checked_add(offset).ok_or(bad("extent offset overflows"))?;
                        Source::Disk(vol.chunks().map_range(start, n)?)
                    } else {
                        let cap = MAX_BTRFS_EXTENT_DECOMPRESSED;
                        if ram_bytes > cap || disk_len > cap || disk_len == 0 {
                            return Err(BtrfsError::TooLarge {
                                what: "compressed extent",
                                len: ram_bytes.max(disk_len),
                                cap,
                            });
                        }
                        if offset.checked_add(n).is_none_or(|e| e > ram_bytes) {
                            return Err(bad("extent reaches past its decompressed data"));
                        }
                        if !(1..=3).contains(&algo) {
                            return Err(unsupported("unknown compression"));
                        }
                        let phys = vol.chunks().map_range(disk_bytenr, disk_len)?;
                        Source::Compressed(
                            Rc::new(Compressed {
                                algo,
                                phys,
                                logical: disk_bytenr,
                                disk_len,
                                ram_len: ram_bytes,
                            }),
                            offset,
                        )
                    };
                    (n, src)
                }
                _ => return Err(unsupported("unknown extent type")),
            };
            if len > 0 {
                pieces.push(Piece {
                    offset: k.offset,
                    len,
                    src,
                });
            }
            pos = k.offset.saturating_add(len);
            Ok(ControlFlow::Continue(()))
        })?;
        if pos < size {
            pieces.push(Piece {
                offset: pos,
                len: size.saturating_sub(pos),
                src: Source::Zero,
            });
        }
        Ok(FileMap {
            pieces,
            size,
            window: vol.window().clone(),
            sectorsize,
            vol: vol.clone(),
        })
    }

    /// Disk runs `(absolute disk offset or None for zeros, len)` adding up
    /// to the size, adjacent ones merged; `None` if any piece is inline or
    /// compressed (then the file must be read through [`FileMap::reader`]).
    pub fn data_runs(&self) -> Option<Vec<(Option<u64>, u64)>> {
        let mut runs: Vec<(Option<u64>, u64)> = Vec::new();
        let mut push = |off: Option<u64>, len: u64| {
            if let Some(last) = runs.last_mut() {
                let contiguous = match (last.0, off) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.checked_add(last.1) == Some(b),
                    _ => false,
                };
                if contiguous {
                    last.1 = last.1.saturating_add(len);
                    return;
                }
            }
            runs.push((off, len));
        };
        for p in &self.pieces {
            match p.src {
                Source::Zero => push(None, p.len),
                // A window offset maps to one or more disk ranges (a
                // logical volume's extents need not be contiguous).
                Source::Disk(phys) => self.window.disk_ranges(phys, p.len, |d, n| push(Some(d), n)).ok()?,
                _ => return None,
            }
        }
        Some(runs)
    }

    /// A reader over the file's bytes.
    pub fn reader(self: &Rc<Self>) -> FileReader {
        FileReader {
            map: self.clone(),
            pos: 0,
            cache: None,
            spent: 0,
        }
    }

    /// The whole file in one buffer, with as few reads as possible (one
    /// `pread` per contiguous disk run): the fast path for kernels and
    /// initrds. `cap` bounds the size.
    pub fn read_all(self: &Rc<Self>, cap: u64) -> Result<Vec<u8>, BtrfsError> {
        if self.size > cap {
            return Err(BtrfsError::TooLarge {
                what: "file",
                len: self.size,
                cap,
            });
        }
        let n = usize::try_from(self.size).map_err(|_| BtrfsError::TooLarge {
            what: "file",
            len: self.size,
            cap,
        })?;
        let mut out = vec![0u8; n];
        if self.data_runs().is_some() {
            // Uncompressed: one read per piece, through the window.
            let mut at = 0usize;
            for p in &self.pieces {
                let l = usize::try_from(p.len).unwrap_or(usize::MAX);
                let end = at.saturating_add(l);
                if let (Source::Disk(phys), Some(dst)) = (&p.src, out.get_mut(at..end)) {
                    self.vol.read(*phys, dst)?;
                }
                at = end;
            }
            return Ok(out);
        }
        let mut r = self.reader();
        let mut at = 0usize;
        while at < n {
            let got = r
                .read(out.get_mut(at..).unwrap_or_default())
                .map_err(|e| BtrfsError::Decompress {
                    algo: "file",
                    logical: 0,
                    msg: e.to_string(),
                })?;
            if got == 0 {
                break;
            }
            at = at.saturating_add(got);
        }
        Ok(out)
    }
}

/// What identifies a decompressed extent: logical address, compressed
/// and decompressed sizes, algorithm.
type CacheKey = (u64, u64, u64, u8);

/// A seekable reader over a [`FileMap`].
pub struct FileReader {
    map: Rc<FileMap>,
    pos: u64,
    /// The last decompressed extent: its logical address and bytes.
    cache: Option<(CacheKey, Vec<u8>)>,
    /// Bytes decompressed so far.
    spent: u64,
}

impl FileReader {
    /// Move to `pos` (past the end reads nothing).
    pub fn seek_to(&mut self, pos: u64) {
        self.pos = pos;
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, BtrfsError> {
        if self.pos >= self.map.size || buf.is_empty() {
            return Ok(0);
        }
        let i = self
            .map
            .pieces
            .partition_point(|p| p.offset <= self.pos)
            .saturating_sub(1);
        let Some(p) = self.map.pieces.get(i) else { return Ok(0) };
        let into = self.pos.saturating_sub(p.offset);
        let left = p.len.saturating_sub(into);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let dst = buf.get_mut(..n).unwrap_or_default();
        match &p.src {
            Source::Zero => dst.fill(0),
            Source::Disk(phys) => self.map.vol.read(phys.saturating_add(into), dst)?,
            Source::Inline(data, base) => {
                let s = usize::try_from(into).unwrap_or(usize::MAX).saturating_add(*base);
                let src = data.get(s..s.saturating_add(n)).ok_or(BtrfsError::Decompress {
                    algo: "inline",
                    logical: 0,
                    msg: "inline data shorter than the file".into(),
                })?;
                dst.copy_from_slice(src);
            }
            Source::Compressed(c, skip) => {
                let key = (c.logical, c.disk_len, c.ram_len, c.algo);
                if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
                    self.spent = self.spent.saturating_add(c.ram_len);
                    if self.spent > MAX_BTRFS_FILE_DECOMPRESSED {
                        return Err(BtrfsError::TooLarge {
                            what: "data decompressed for one file",
                            len: self.spent,
                            cap: MAX_BTRFS_FILE_DECOMPRESSED,
                        });
                    }
                    let mut raw = vec![0u8; usize::try_from(c.disk_len).unwrap_or(0)];
                    self.map.vol.read(c.phys, &mut raw)?;
                    let want = usize::try_from(c.ram_len).unwrap_or(0);
                    let data = decompress(c.algo, &raw, want, self.map.sectorsize, c.logical)?;
                    self.cache = Some((key, data));
                }
                let data = self.cache.as_ref().map(|(_, d)| d.as_slice()).unwrap_or_default();
                let s = usize::try_from(skip.saturating_add(into)).unwrap_or(usize::MAX);
                let src = data.get(s..s.saturating_add(n)).ok_or(BtrfsError::Decompress {
                    algo: algo_name(c.algo),
                    logical: c.logical,
                    msg: "extent shorter than its file range".into(),
                })?;
                dst.copy_from_slice(src);
            }
        }
        self.pos = self.pos.saturating_add(u64::try_from(n).unwrap_or(0));
        Ok(n)
    }
}

impl crate::fs::FileReader for FileReader {
    fn seek_to(&mut self, pos: u64) -> io::Result<()> {
        self.pos = pos;
        Ok(())
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf).map_err(io::Error::other)
    }
}
