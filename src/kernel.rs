//! Can Xen 4.17 boot this kernel as a PV or a PVH guest? Guest data.
//!
//! A kernel is Xen-bootable when it is an ELF image, or a bzImage (boot
//! protocol ≥ 2.08) whose payload is compressed with something libxenguest
//! decompresses (gzip, bzip2, lzma, xz, lzo, lz4, zstd) and is itself an
//! ELF image, and that ELF carries Xen's `XEN_ELFNOTE_ENTRY` note (the PV
//! entry point; Linux emits it with `CONFIG_XEN_PV`) or
//! `XEN_ELFNOTE_PHYS32_ENTRY` (the PVH entry point, `CONFIG_XEN_PVH`).
//! [`check`] says which of the two modes ([`XenMode`]) the kernel boots in.
//! Without the check, an unfit kernel fails much later in libxc with "no
//! loader found"; with it the admin reads "kernel … has no Xen PV or PVH
//! entry point".
//!
//! [`unpack`] writes the whole decompressed ELF (vmlinux) for
//! `--unpack-kernel`, within [`MAX_UNPACKED_KERNEL`].
//!
//! The payload is decompressed as a stream into [`NoteScanner`], which
//! keeps only the ELF header, the program headers and the `PT_NOTE`
//! segments, and stops the decompressor as soon as the notes are in hand.
//! Decompressed output is capped at [`MAX_KERNEL_DECOMPRESSED`], note data
//! at [`MAX_NOTE_BYTES`]; this runs inside the confined parse child.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{self, Read, Write};

use crate::bytes::{le16, le32, le64};
use crate::limits::{MAX_KERNEL_DECOMPRESSED, MAX_UNPACKED_KERNEL};

/// Largest ELF header + program header table examined.
pub const MAX_ELF_HEAD: usize = 64 * 1024;
/// Most note bytes collected from `PT_NOTE` segments.
pub const MAX_NOTE_BYTES: u64 = 256 * 1024;
/// Largest LZ4 legacy-format chunk (the format's block size is 8 MiB).
const LZ4_LEGACY_CHUNK: usize = 8 << 20;

/// Xen ELF note types (xen/include/public/elfnote.h).
const XEN_ELFNOTE_ENTRY: u32 = 1;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A Xen guest type that boots a kernel directly (HVM does not).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum XenMode {
    /// Paravirtualised: entry at `XEN_ELFNOTE_ENTRY`.
    Pv,
    /// PVH: entry at `XEN_ELFNOTE_PHYS32_ENTRY`.
    Pvh,
}

impl XenMode {
    /// Both modes, in the order nixboot names them.
    pub const ALL: [XenMode; 2] = [XenMode::Pv, XenMode::Pvh];

    /// `pv` or `pvh`.
    pub fn name(self) -> &'static str {
        match self {
            XenMode::Pv => "pv",
            XenMode::Pvh => "pvh",
        }
    }
}

impl std::fmt::Display for XenMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Payload compressions, by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `1f 8b`.
    Gzip,
    /// `BZh`.
    Bzip2,
    /// `5d 00 00`.
    Lzma,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `89 4c 5a 4f`.
    Lzo,
    /// `02 21 4c 18` (LZ4 legacy frames).
    Lz4,
    /// `28 b5 2f fd`.
    Zstd,
    /// An uncompressed ELF payload.
    None,
}

impl Compression {
    /// Identify the compression from the first bytes of a payload.
    pub fn sniff(b: &[u8]) -> Option<Compression> {
        let starts = |m: &[u8]| b.starts_with(m);
        Some(if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if starts(&[0x02, 0x21, 0x4c, 0x18]) {
            Compression::Lz4
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if starts(b"\x7fELF") {
            Compression::None
        } else {
            return None;
        })
    }
}

/// The container format of a kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// A plain ELF (vmlinux).
    Elf,
    /// A bzImage; the payload's offset and length in the file.
    BzImage {
        /// Boot protocol version.
        protocol: u16,
        /// Byte offset of the payload in the file.
        offset: u64,
        /// Payload length.
        len: u64,
    },
}

/// Why a kernel cannot be booted as a Xen PV guest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Neither ELF nor bzImage.
    #[error("is neither a bzImage nor an ELF kernel")]
    UnknownFormat,
    /// bzImage too old to carry an ELF payload.
    #[error("is a bzImage with boot protocol {0:#x}; Xen needs 2.08 or later")]
    OldProtocol(u16),
    /// The payload lies outside the file.
    #[error("has a bzImage payload outside the file")]
    PayloadOutside,
    /// The payload compression is unknown to libxenguest.
    #[error("has a bzImage payload in a compression Xen cannot decompress")]
    UnknownCompression,
    /// The payload would not decompress.
    #[error("has a {0:?} payload that does not decompress: {1}")]
    Decompress(Compression, String),
    /// The payload is not an ELF image.
    #[error("does not contain an ELF image")]
    NotElf,
    /// The ELF has no notes at all / no Xen notes.
    #[error("has no Xen ELF notes (not built with CONFIG_XEN)")]
    NoXenNotes,
    /// Xen notes, but only the PVH entry point (refused for
    /// `--domain-type=pv`).
    #[error("has no Xen PV entry point, only a PVH one (CONFIG_XEN_PV?)")]
    PvhOnly,
    /// Xen notes, but only the PV entry point (refused for
    /// `--domain-type=pvh`).
    #[error("has no Xen PVH entry point, only a PV one (CONFIG_XEN_PVH?)")]
    PvOnly,
    /// Xen notes without a PV or PVH entry point.
    #[error("has no Xen PV or PVH entry point (CONFIG_XEN_PV? CONFIG_XEN_PVH?)")]
    NoPvEntry,
    /// The unpacked ELF is larger than [`MAX_UNPACKED_KERNEL`] or the
    /// copy's cap.
    #[error("unpacks to more than {0} bytes")]
    UnpackedTooLarge(u64),
    /// A structure is corrupt.
    #[error("is corrupt: {0}")]
    Corrupt(&'static str),
    /// Reading failed.
    #[error("cannot be read: {0}")]
    Read(String),
}

/// Identify the container from the first bytes (at least 0x250) of a
/// kernel file of `file_len` bytes.
pub fn container(head: &[u8], file_len: u64) -> Result<Container, KernelError> {
    if head.starts_with(b"\x7fELF") {
        return Ok(Container::Elf);
    }
    if head.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(KernelError::UnknownFormat);
    }
    let protocol = le16(head, 0x206).ok_or(KernelError::UnknownFormat)?;
    if protocol < 0x208 {
        return Err(KernelError::OldProtocol(protocol));
    }
    let setup_sects = match head.get(0x1f1).copied().ok_or(KernelError::UnknownFormat)? {
        0 => 4u64,
        n => u64::from(n),
    };
    let pm_start = setup_sects
        .checked_add(1)
        .and_then(|s| s.checked_mul(512))
        .ok_or(KernelError::PayloadOutside)?;
    let po = u64::from(le32(head, 0x248).ok_or(KernelError::UnknownFormat)?);
    let len = u64::from(le32(head, 0x24c).ok_or(KernelError::UnknownFormat)?);
    let offset = pm_start.checked_add(po).ok_or(KernelError::PayloadOutside)?;
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(KernelError::PayloadOutside);
    }
    Ok(Container::BzImage { protocol, offset, len })
}

/// A `Write` sink that keeps the ELF header, program headers and `PT_NOTE`
/// contents of a stream, and refuses more input once it has them.
#[derive(Debug, Default)]
pub struct NoteScanner {
    pos: u64,
    head: Vec<u8>,
    /// `(offset, len)` of each PT_NOTE segment, once known.
    notes: Option<Vec<(u64, u64)>>,
    captured: Vec<Vec<u8>>,
    error: Option<KernelError>,
}

/// The io error kind used to stop a decompressor early.
fn stop() -> io::Error {
    io::Error::other("nixboot: note scan complete")
}

impl NoteScanner {
    /// A fresh scanner.
    pub fn new() -> NoteScanner {
        NoteScanner::default()
    }

    /// Whether every note segment has been captured.
    pub fn complete(&self) -> bool {
        match &self.notes {
            Some(n) => n
                .iter()
                .zip(&self.captured)
                .all(|((_, len), c)| u64::try_from(c.len()).ok() == Some(*len)),
            None => false,
        }
    }

    fn parse_phdrs(&mut self) -> Result<bool, KernelError> {
        let h = &self.head;
        if h.len() < 64 {
            return Ok(false);
        }
        if !h.starts_with(b"\x7fELF") {
            return Err(KernelError::NotElf);
        }
        let class64 = match h.get(4) {
            Some(2) => true,
            Some(1) => false,
            _ => return Err(KernelError::Corrupt("bad ELF class")),
        };
        if h.get(5) != Some(&1) {
            return Err(KernelError::Corrupt("not a little-endian ELF"));
        }
        let (phoff, phentsize, phnum) = if class64 {
            (le64(h, 32), le16(h, 54), le16(h, 56))
        } else {
            (le32(h, 28).map(u64::from), le16(h, 42), le16(h, 44))
        };
        let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
            return Err(KernelError::Corrupt("truncated ELF header"));
        };
        let min_ent = if class64 { 56 } else { 32 };
        if phnum == 0 || usize::from(phentsize) < min_ent {
            return Err(KernelError::NoXenNotes);
        }
        let table_end = u64::from(phentsize)
            .checked_mul(u64::from(phnum))
            .and_then(|t| t.checked_add(phoff))
            .filter(|e| *e <= u64::try_from(MAX_ELF_HEAD).unwrap_or(0))
            .ok_or(KernelError::Corrupt("program headers beyond the first 64 KiB"))?;
        if u64::try_from(h.len()).unwrap_or(0) < table_end {
            return Ok(false);
        }
        let mut notes = Vec::new();
        let mut total = 0u64;
        for i in 0..phnum {
            let at = u64::from(i)
                .checked_mul(u64::from(phentsize))
                .and_then(|o| o.checked_add(phoff));
            let at = at
                .and_then(|a| usize::try_from(a).ok())
                .ok_or(KernelError::Corrupt("program header"))?;
            let ph = h.get(at..).ok_or(KernelError::Corrupt("program header"))?;
            let (ptype, off, size) = if class64 {
                (le32(ph, 0), le64(ph, 8), le64(ph, 32))
            } else {
                (le32(ph, 0), le32(ph, 4).map(u64::from), le32(ph, 16).map(u64::from))
            };
            let (Some(ptype), Some(off), Some(size)) = (ptype, off, size) else {
                return Err(KernelError::Corrupt("program header"));
            };
            if ptype == 4 && size > 0 {
                total = total.saturating_add(size);
                if total > MAX_NOTE_BYTES {
                    return Err(KernelError::Corrupt("note segments too large"));
                }
                notes.push((off, size));
            }
        }
        if notes.is_empty() {
            return Err(KernelError::NoXenNotes);
        }
        self.captured = notes.iter().map(|_| Vec::new()).collect();
        self.notes = Some(notes);
        let head = std::mem::take(&mut self.head);
        self.capture(0, &head);
        self.head = head;
        Ok(true)
    }

    /// Copy the parts of `data` (at stream offset `at`) inside note segments.
    fn capture(&mut self, at: u64, data: &[u8]) {
        let Some(notes) = &self.notes else { return };
        let end = at.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        for ((off, len), buf) in notes.iter().zip(self.captured.iter_mut()) {
            let seg_end = off.saturating_add(*len);
            let have = off.saturating_add(u64::try_from(buf.len()).unwrap_or(0));
            let lo = have.max(at);
            let hi = seg_end.min(end);
            if lo < hi {
                let a = usize::try_from(lo.saturating_sub(at)).unwrap_or(usize::MAX);
                let b = usize::try_from(hi.saturating_sub(at)).unwrap_or(usize::MAX);
                if let Some(s) = data.get(a..b) {
                    buf.extend_from_slice(s);
                }
            }
        }
    }

    /// The verdict on the notes captured: the modes the kernel boots in
    /// (never empty).
    pub fn verdict(&self) -> Result<Vec<XenMode>, KernelError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.notes.is_none() {
            return Err(if self.head.starts_with(b"\x7fELF") || self.head.is_empty() {
                KernelError::Corrupt("ELF image ends inside its headers")
            } else {
                KernelError::NotElf
            });
        }
        let mut xen = Vec::new();
        for seg in &self.captured {
            xen.extend(xen_note_types(seg));
        }
        let modes: Vec<XenMode> = [
            (XEN_ELFNOTE_ENTRY, XenMode::Pv),
            (XEN_ELFNOTE_PHYS32_ENTRY, XenMode::Pvh),
        ]
        .into_iter()
        .filter(|(note, _)| xen.contains(note))
        .map(|(_, mode)| mode)
        .collect();
        if !modes.is_empty() {
            Ok(modes)
        } else if xen.is_empty() {
            Err(KernelError::NoXenNotes)
        } else {
            Err(KernelError::NoPvEntry)
        }
    }
}

impl Write for NoteScanner {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.error.is_some() || self.complete() {
            return Err(stop());
        }
        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if self.pos.saturating_add(n) > MAX_KERNEL_DECOMPRESSED {
            self.error = Some(KernelError::Corrupt("decompressed kernel larger than the limit"));
            return Err(stop());
        }
        if self.notes.is_none() {
            let room = MAX_ELF_HEAD.saturating_sub(self.head.len());
            self.head
                .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            match self.parse_phdrs() {
                Ok(true) => {
                    // Everything up to head.len() was captured by parse_phdrs.
                    let consumed = self.head.len().saturating_sub(usize::try_from(self.pos).unwrap_or(0));
                    if let Some(rest) = data.get(consumed.min(data.len())..) {
                        let at = self.pos.saturating_add(u64::try_from(consumed).unwrap_or(0));
                        self.capture(at, rest);
                    }
                }
                Ok(false) if self.head.len() >= MAX_ELF_HEAD => {
                    self.error = Some(KernelError::Corrupt("ELF headers too large"));
                }
                Ok(false) => {}
                Err(e) => self.error = Some(e),
            }
        } else {
            self.capture(self.pos, data);
        }
        self.pos = self.pos.saturating_add(n);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Types of the notes named "Xen" in a note segment.
fn xen_note_types(seg: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let align4 = |n: u32| usize::try_from(n).ok().and_then(|n| n.checked_add(3)).map(|n| n & !3);
    while let (Some(namesz), Some(descsz), Some(ntype)) = (
        le32(seg, at),
        le32(seg, at.saturating_add(4)),
        le32(seg, at.saturating_add(8)),
    ) {
        let name_start = at.saturating_add(12);
        let (Some(nlen), Some(dlen)) = (align4(namesz), align4(descsz)) else {
            break;
        };
        let name = usize::try_from(namesz)
            .ok()
            .and_then(|n| seg.get(name_start..name_start.checked_add(n)?));
        if name == Some(b"Xen\0".as_slice()) {
            out.push(ntype);
        }
        match name_start.checked_add(nlen).and_then(|p| p.checked_add(dlen)) {
            Some(next) if next > at => at = next,
            _ => break,
        }
        if out.len() > 1024 {
            break;
        }
    }
    out
}

/// Feed the LZ4 legacy format (what Linux's `lz4 -l` writes) into `out`.
fn lz4_legacy(mut r: impl Read, out: &mut dyn Write) -> io::Result<()> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    let mut chunk = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if len == magic {
            continue;
        }
        let n = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
        if n > LZ4_LEGACY_CHUNK
            .saturating_add(LZ4_LEGACY_CHUNK / 255)
            .saturating_add(16)
        {
            // Trailing size field or garbage: end of the stream.
            return Ok(());
        }
        chunk.resize(n, 0);
        r.read_exact(&mut chunk)?;
        let block = lz4_flex::block::decompress(&chunk, LZ4_LEGACY_CHUNK).map_err(io::Error::other)?;
        out.write_all(&block)?;
    }
}

/// Decompress `payload` (compressed with `c`) into `scan`.
fn decompress(c: Compression, payload: impl Read, scan: &mut dyn Write) -> io::Result<()> {
    let r = io::BufReader::with_capacity(64 * 1024, payload);
    match c {
        Compression::Gzip => io::copy(&mut flate2::bufread::GzDecoder::new(r), scan).map(drop),
        Compression::Bzip2 => io::copy(&mut bzip2::bufread::BzDecoder::new(r), scan).map(drop),
        Compression::Xz => io::copy(&mut liblzma::bufread::XzDecoder::new(r), scan).map(drop),
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(io::Error::other)?;
            io::copy(&mut liblzma::bufread::XzDecoder::new_stream(r, stream), scan).map(drop)
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
            d.window_log_max(31)?;
            io::copy(&mut d, scan).map(drop)
        }
        Compression::Lz4 => lz4_legacy(r, scan),
        Compression::None => io::copy(&mut { r }, scan).map(drop),
        Compression::Lzo => Err(io::Error::other("lzo is not checked")),
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A Xen kernel, bootable in these modes (at least one).
    Xen(Vec<XenMode>),
    /// Loadable by Xen as far as nixboot can tell, but not verified (LZO).
    Unverified(&'static str),
}

/// The payload of a kernel file: its compression, a reader at its start
/// and its length (the whole file for an ELF kernel).
fn payload<R: Read>(
    mut head_reader: R,
    len: u64,
    mut reopen: impl FnMut(u64) -> io::Result<R>,
) -> Result<(Compression, R, u64), KernelError> {
    let mut head = vec![0u8; usize::try_from(len.min(0x400)).unwrap_or(0)];
    head_reader
        .read_exact(&mut head)
        .map_err(|e| KernelError::Read(e.to_string()))?;
    Ok(match container(&head, len)? {
        Container::Elf => (
            Compression::None,
            reopen(0).map_err(|e| KernelError::Read(e.to_string()))?,
            len,
        ),
        Container::BzImage { offset, len: plen, .. } => {
            let mut r = reopen(offset).map_err(|e| KernelError::Read(e.to_string()))?;
            let mut magic = [0u8; 6];
            let m = usize::try_from(plen.min(6)).unwrap_or(0);
            let mb = magic.get_mut(..m).unwrap_or_default();
            r.read_exact(mb).map_err(|e| KernelError::Read(e.to_string()))?;
            let c = Compression::sniff(mb).ok_or(KernelError::UnknownCompression)?;
            (c, reopen(offset).map_err(|e| KernelError::Read(e.to_string()))?, plen)
        }
    })
}

/// Check a kernel: `file` is positioned at its start and `len` bytes long;
/// `reopen` gives a fresh reader positioned at `offset` (for the payload).
pub fn check<R: Read>(
    head_reader: R,
    len: u64,
    reopen: impl FnMut(u64) -> io::Result<R>,
) -> Result<Verdict, KernelError> {
    let (compression, payload, plen) = payload(head_reader, len, reopen)?;
    if compression == Compression::Lzo {
        return Ok(Verdict::Unverified("LZO-compressed kernels are not checked"));
    }
    let mut scan = NoteScanner::new();
    let res = decompress(compression, payload.take(plen), &mut scan);
    if let Err(e) = res
        && !scan.complete()
        && scan.error.is_none()
    {
        return Err(KernelError::Decompress(compression, e.to_string()));
    }
    scan.verdict().map(Verdict::Xen)
}

/// A sink that passes bytes on to `out` up to `cap`, keeping the first
/// four to check the ELF magic.
struct Capped<'a> {
    out: &'a mut dyn Write,
    written: u64,
    cap: u64,
    over: bool,
    magic: Vec<u8>,
}

impl Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if self.written.saturating_add(n) > self.cap {
            self.over = true;
            return Err(stop());
        }
        let want = 4usize.saturating_sub(self.magic.len()).min(data.len());
        self.magic.extend_from_slice(data.get(..want).unwrap_or_default());
        self.out.write_all(data)?;
        self.written = self.written.saturating_add(n);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Write the kernel's ELF image (vmlinux) into `out`: a bzImage's whole
/// payload decompressed, or an ELF kernel as it is, at most
/// `cap.min(MAX_UNPACKED_KERNEL)` bytes; returns how many. Runs in the
/// confined child like [`check`]. An LZO payload is refused (nixboot has
/// no LZO decompressor).
pub fn unpack<R: Read>(
    head_reader: R,
    len: u64,
    reopen: impl FnMut(u64) -> io::Result<R>,
    cap: u64,
    out: &mut dyn Write,
) -> Result<u64, KernelError> {
    let (compression, payload, plen) = payload(head_reader, len, reopen)?;
    let cap = cap.min(MAX_UNPACKED_KERNEL);
    let mut sink = Capped {
        out,
        written: 0,
        cap,
        over: false,
        magic: Vec::new(),
    };
    let res = decompress(compression, payload.take(plen), &mut sink);
    if sink.over {
        return Err(KernelError::UnpackedTooLarge(cap));
    }
    res.map_err(|e| KernelError::Decompress(compression, e.to_string()))?;
    if sink.magic != b"\x7fELF" {
        return Err(KernelError::NotElf);
    }
    Ok(sink.written)
}

/// Whether `modes` allows a boot as `want` (`None`: either mode will do);
/// the refusal says what the kernel lacks.
pub fn fits(modes: &[XenMode], want: Option<XenMode>) -> Result<(), KernelError> {
    match want {
        Some(m) if !modes.contains(&m) => Err(match m {
            XenMode::Pv => KernelError::PvhOnly,
            XenMode::Pvh => KernelError::PvOnly,
        }),
        _ if modes.is_empty() => Err(KernelError::NoPvEntry),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::as_conversions,
    clippy::arithmetic_side_effects
)]
pub(crate) mod tests {
    use super::*;

    use crate::fixtures::pv_elf as elf;

    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.resize(5 * 512 + 100, 0);
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0u8; 4]);
        b
    }

    fn run(bytes: &[u8]) -> Result<Verdict, KernelError> {
        check(bytes, bytes.len() as u64, |off| Ok(&bytes[off as usize..]))
    }

    #[test]
    fn elf_with_pv_entry() {
        assert_eq!(run(&elf(&[6, 5, 1, 2], 100_000)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        assert_eq!(run(&elf(&[18], 10_000)), Ok(Verdict::Xen(vec![XenMode::Pvh])));
        assert_eq!(
            run(&elf(&[18, 6, 1], 10_000)),
            Ok(Verdict::Xen(vec![XenMode::Pv, XenMode::Pvh]))
        );
        assert_eq!(run(&elf(&[6, 5], 10_000)), Err(KernelError::NoPvEntry));
        assert_eq!(run(&elf(&[], 10_000)), Err(KernelError::NoXenNotes));
    }

    #[test]
    fn compressed_payloads() {
        let pv = elf(&[6, 1], 300_000);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&pv).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(run(&bzimage(&gz)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&pv).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(run(&bzimage(&xz)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        let zs = zstd::encode_all(pv.as_slice(), 1).unwrap();
        assert_eq!(run(&bzimage(&zs)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&pv).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(run(&bzimage(&bz)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        let mut lz = vec![0x02, 0x21, 0x4c, 0x18];
        let block = lz4_flex::block::compress(&pv);
        lz.extend_from_slice(&(block.len() as u32).to_le_bytes());
        lz.extend_from_slice(&block);
        assert_eq!(run(&bzimage(&lz)), Ok(Verdict::Xen(vec![XenMode::Pv])));
        let pvh = zstd::encode_all(elf(&[18], 5000).as_slice(), 1).unwrap();
        assert_eq!(run(&bzimage(&pvh)), Ok(Verdict::Xen(vec![XenMode::Pvh])));
    }

    #[test]
    fn garbage() {
        assert_eq!(run(&[0u8; 4096]), Err(KernelError::UnknownFormat));
        assert_eq!(run(&bzimage(b"hello world")), Err(KernelError::UnknownCompression));
        assert!(matches!(
            run(&bzimage(&[0x1f, 0x8b, 8, 0, 1, 2, 3])),
            Err(KernelError::Decompress(Compression::Gzip, _))
        ));
        let mut old = bzimage(b"\x7fELF");
        old[0x206] = 0x04;
        assert_eq!(run(&old), Err(KernelError::OldProtocol(0x204)));
        let mut outside = bzimage(&[0x1f, 0x8b]);
        outside[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(run(&outside), Err(KernelError::PayloadOutside));
    }

    #[test]
    fn stops_early_after_notes() {
        let mut pv = elf(&[1], 5000);
        pv.resize(50 << 20, 0);
        let mut s = NoteScanner::new();
        let mut written = 0usize;
        for c in pv.chunks(1 << 16) {
            if s.write(c).is_err() {
                break;
            }
            written += c.len();
        }
        assert!(written < 1 << 20, "{written}");
        assert_eq!(s.verdict(), Ok(vec![XenMode::Pv]));
    }

    #[test]
    fn unpack_gives_the_elf() {
        let pv = elf(&[6, 1, 18], 300_000);
        let zs = zstd::encode_all(pv.as_slice(), 1).unwrap();
        let bz = bzimage(&zs);
        let mut out = Vec::new();
        let n = unpack(
            bz.as_slice(),
            bz.len() as u64,
            |off| Ok(&bz[off as usize..]),
            u64::MAX,
            &mut out,
        );
        assert_eq!(n, Ok(pv.len() as u64));
        assert_eq!(out, pv);
        // An ELF kernel is itself.
        let mut out = Vec::new();
        let n = unpack(
            pv.as_slice(),
            pv.len() as u64,
            |off| Ok(&pv[off as usize..]),
            u64::MAX,
            &mut out,
        );
        assert_eq!((n, out == pv), (Ok(pv.len() as u64), true));
        // Over the cap: refused, whatever was written is the caller's to drop.
        let mut out = Vec::new();
        let r = unpack(
            bz.as_slice(),
            bz.len() as u64,
            |off| Ok(&bz[off as usize..]),
            100_000,
            &mut out,
        );
        assert_eq!(r, Err(KernelError::UnpackedTooLarge(100_000)));
        assert!(out.len() <= 100_000);
        // A payload that is not an ELF.
        let junk = bzimage(&zstd::encode_all(&[0x55u8; 5000][..], 1).unwrap());
        let r = unpack(
            junk.as_slice(),
            junk.len() as u64,
            |off| Ok(&junk[off as usize..]),
            u64::MAX,
            &mut Vec::new(),
        );
        assert_eq!(r, Err(KernelError::NotElf));
    }

    #[test]
    fn strict_domain_type() {
        use XenMode::{Pv, Pvh};
        assert_eq!(fits(&[Pv, Pvh], None), Ok(()));
        assert_eq!(fits(&[Pvh], None), Ok(()));
        assert_eq!(fits(&[Pv], Some(Pv)), Ok(()));
        assert_eq!(fits(&[Pvh], Some(Pv)), Err(KernelError::PvhOnly));
        assert_eq!(fits(&[Pv], Some(Pvh)), Err(KernelError::PvOnly));
        assert_eq!(fits(&[], None), Err(KernelError::NoPvEntry));
    }
}
