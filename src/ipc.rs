//! Frames between the confined parse child and the privileged parent.
//!
//! The child writes frames to its stdout (a pipe); the parent reads them
//! and trusts nothing in them: every frame length is capped at
//! [`MAX_FRAME`], metadata is JSON checked again on arrival, and file data
//! is counted against the size the parent accepted. A frame is one tag
//! byte, a little-endian u32 length, and the payload.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::Fault;
use crate::limits::MAX_FRAME;
use crate::nixos::Generation;
use crate::nixos::installed::GuestTimeout;

/// Frame tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// [`Plan`] (JSON).
    Plan,
    /// A chunk of the kernel.
    Kernel,
    /// A chunk of the initrd.
    Initrd,
    /// A [`Run`] of the kernel: bytes the parent copies from the disk.
    KernelRun,
    /// A [`Run`] of the initrd.
    InitrdRun,
    /// One [`Listed`] generation (JSON); a listing is a run of these.
    Listing,
    /// The rest of a [`Listing`], without its generations (JSON); sent
    /// before them.
    ListingHead,
    /// [`Failure`] (JSON).
    Failure,
    /// End of a successful run.
    Done,
}

impl Tag {
    fn byte(self) -> u8 {
        match self {
            Tag::Plan => b'P',
            Tag::Kernel => b'K',
            Tag::Initrd => b'I',
            Tag::KernelRun => b'k',
            Tag::InitrdRun => b'i',
            Tag::Listing => b'L',
            Tag::ListingHead => b'H',
            Tag::Failure => b'F',
            Tag::Done => b'D',
        }
    }
    fn from_byte(b: u8) -> Option<Tag> {
        Some(match b {
            b'P' => Tag::Plan,
            b'K' => Tag::Kernel,
            b'I' => Tag::Initrd,
            b'k' => Tag::KernelRun,
            b'i' => Tag::InitrdRun,
            b'L' => Tag::Listing,
            b'H' => Tag::ListingHead,
            b'F' => Tag::Failure,
            b'D' => Tag::Done,
            _ => return None,
        })
    }
}

impl Tag {
    /// The run tag for a data tag (itself for anything else).
    pub fn runs(self) -> Tag {
        match self {
            Tag::Kernel => Tag::KernelRun,
            Tag::Initrd => Tag::InitrdRun,
            t => t,
        }
    }
    /// The data tag a run tag adds to, if it is one.
    pub fn data_of_run(self) -> Option<Tag> {
        match self {
            Tag::KernelRun => Some(Tag::Kernel),
            Tag::InitrdRun => Some(Tag::Initrd),
            _ => None,
        }
    }
}

/// The next `len` bytes of a file are the disk's bytes at `disk_offset`
/// (absolute), or zeros: the range [`GuestFs::data_runs`] found. 16 bytes
/// on the wire: offset (`u64::MAX` for zeros) and length, little-endian.
/// The parent checks the range against the disk: the child can only make
/// it copy bytes of the guest's own disk.
///
/// [`GuestFs::data_runs`]: crate::fs::GuestFs::data_runs
pub use crate::fs::Run;

impl Run {
    /// The wire form.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let (o, l) = b.split_at_mut(8);
        o.copy_from_slice(&self.disk_offset.unwrap_or(u64::MAX).to_le_bytes());
        l.copy_from_slice(&self.len.to_le_bytes());
        b
    }
    /// Parse the wire form; `None` unless exactly 16 bytes.
    pub fn decode(b: &[u8]) -> Option<Run> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (o, l) = b.split_at(8);
        let o = u64::from_le_bytes(o.try_into().ok()?);
        Some(Run {
            disk_offset: (o != u64::MAX).then_some(o),
            len: u64::from_le_bytes(l.try_into().ok()?),
        })
    }
}

/// What the child decided to boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Human description (menu label or the guest paths).
    pub label: String,
    /// Guest path of the kernel.
    pub kernel: String,
    /// Size of the kernel in bytes (of the unpacked ELF with
    /// `--unpack-kernel`).
    pub kernel_len: u64,
    /// With `--unpack-kernel`: the size of the kernel file the ELF was
    /// unpacked from (the data then comes as frames, not disk ranges).
    #[serde(default)]
    pub unpacked_from: Option<u64>,
    /// The Xen modes the kernel boots in (empty: not checked).
    #[serde(default)]
    pub xen_modes: Vec<crate::kernel::XenMode>,
    /// Guest path and size of the initrd.
    pub initrd: Option<(String, u64)>,
    /// The complete command line.
    pub cmdline: String,
    /// Where the filesystem was found.
    pub found_in: String,
    /// The kernel's cache key.
    pub kernel_key: String,
    /// Whether the kernel was found to be a Xen PV kernel by decompressing
    /// it in this run.
    pub kernel_verified: bool,
    /// The entry's toplevel store path (none for `--kernel`).
    #[serde(default)]
    pub toplevel: Option<String>,
    /// Why this entry, for a boot without `--entry`/`--kernel`: the
    /// profile, the installed default, or a fallback and its cause.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A generation or one of its specialisations, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// The `nixos-rebuild -p` profile (`None`: the system profile).
    #[serde(default)]
    pub profile: Option<String>,
    /// The generation number (`None`: the profile points at a store path).
    pub number: Option<u64>,
    /// The specialisation.
    pub specialisation: Option<String>,
}

/// Every generation, for `list` and the menu.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Generations, newest first.
    pub generations: Vec<Listed>,
    /// What a boot without `--entry` starts from (before the bootable
    /// check and its fallback), when that could be decided.
    #[serde(default)]
    pub default: Option<EntryRef>,
    /// Why that entry.
    #[serde(default)]
    pub default_reason: Option<String>,
    /// The guest's menu countdown (from the installed-default file).
    #[serde(default = "unset")]
    pub guest_timeout: GuestTimeout,
    /// The guest's limit on generations in the menu.
    #[serde(default)]
    pub guest_limit: Option<u64>,
}

fn unset() -> GuestTimeout {
    GuestTimeout::Unset
}

/// One generation in a [`Listing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The generation, if it loaded.
    pub generation: Option<Generation>,
    /// Its number.
    pub number: Option<u64>,
    /// Whether the profile points at it.
    pub current: bool,
    /// The link mtime.
    pub mtime: Option<i64>,
    /// Why it cannot be booted, if it cannot.
    pub problem: Option<String>,
    /// The `nixos-rebuild -p` profile (`None`: the system profile).
    #[serde(default)]
    pub profile: Option<String>,
    /// The Xen modes the generation's kernel boots in (empty: not
    /// bootable, or not checked).
    #[serde(default)]
    pub xen_modes: Vec<crate::kernel::XenMode>,
}

/// A failure in the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Who is at fault.
    pub fault: Fault,
    /// The message (without prefix).
    pub message: String,
}

/// Write one frame.
pub fn write_frame(w: &mut dyn Write, tag: Tag, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| usize::try_from(*l).is_ok_and(|l| l <= MAX_FRAME));
    let len = len.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&[tag.byte()])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(payload)
}

/// Write a JSON frame.
pub fn write_json<T: Serialize>(w: &mut dyn Write, tag: Tag, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, tag, &bytes)
}

/// Check a frame header: a known tag and a length within [`MAX_FRAME`].
pub fn parse_header(head: [u8; 5]) -> io::Result<(Tag, usize)> {
    let [t, l0, l1, l2, l3] = head;
    let tag = Tag::from_byte(t).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown frame tag"))?;
    let len = usize::try_from(u32::from_le_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large"));
    }
    Ok((tag, len))
}

/// Read one frame header; `None` at a clean end of stream.
pub fn read_header(r: &mut dyn Read) -> io::Result<Option<(Tag, usize)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        let Some(rest) = head.get_mut(got..) else { break };
        match r.read(rest) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated frame header")),
            Ok(n) => got = got.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_header(head).map(Some)
}

/// Read a `len`-byte payload (`len` from [`read_header`], so at most
/// [`MAX_FRAME`]) into `buf`.
pub fn read_payload(r: &mut dyn Read, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)
}

/// Read one frame into `buf`; `None` at a clean end of stream.
pub fn read_frame(r: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<Option<Tag>> {
    let Some((tag, len)) = read_header(r)? else {
        return Ok(None);
    };
    read_payload(r, len, buf)?;
    Ok(Some(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_caps() {
        let mut v = Vec::new();
        write_frame(&mut v, Tag::Kernel, b"abc").unwrap();
        write_json(
            &mut v,
            Tag::Failure,
            &Failure {
                fault: Fault::Guest,
                message: "x".into(),
            },
        )
        .unwrap();
        let mut r = v.as_slice();
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Some(Tag::Kernel));
        assert_eq!(buf, b"abc");
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Some(Tag::Failure));
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), None);
        let huge = [b'K', 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge.as_slice(), &mut buf).is_err());
        assert!(read_frame(&mut [b'Z', 0, 0, 0, 0].as_slice(), &mut buf).is_err());
        assert!(read_frame(&mut [b'K', 9, 0].as_slice(), &mut buf).is_err());
    }
}
