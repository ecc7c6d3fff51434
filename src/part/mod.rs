//! Partition discovery on a guest disk: MBR (with the extended chain), GPT,
//! or a bare filesystem. Guest data, capped and checked.
//!
//! [`candidates`] turns the first sectors of a disk into the list of byte
//! ranges that may hold the filesystem to boot, in the order they are
//! tried. The parsers never allocate from an unchecked count, never follow
//! an unbounded chain, and use checked arithmetic on every LBA; they only
//! read through [`BlockSource`]. mbrman and the GPT crates are not used
//! here: both can be made to abort or run unbounded on crafted tables
//! (measured in the project's crate notes); mbrman only *writes* images.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod gpt;
pub mod lvm;
pub mod mbr;

use std::fmt;
use std::rc::Rc;

use crate::disk::{BlockSource, Window};

/// Logical sector size assumed for partition tables (what Xen PV disks use).
pub const SECTOR: u64 = 512;

/// Offset of the ext4 superblock magic from the start of a filesystem.
pub const EXT4_MAGIC_OFFSET: u64 = 1024 + 0x38;

/// Partition-table errors.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartError {
    /// The disk is shorter than one sector.
    #[error("disk is {0} bytes, too small to hold a filesystem")]
    TooSmall(u64),
    /// A read failed.
    #[error("cannot read {len} bytes at offset {offset}: {msg}")]
    Read {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The I/O error text.
        msg: String,
    },
    /// `--offset` points outside the disk.
    #[error("offset {offset} is beyond the end of the {disk_len}-byte disk")]
    OffsetOutside {
        /// Requested offset.
        offset: u64,
        /// Disk length.
        disk_len: u64,
    },
    /// A GPT problem (only reported when no usable table was found).
    #[error("GPT: {0}")]
    Gpt(#[from] gpt::GptError),
}

/// What kind of range a candidate is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The whole disk holds one filesystem.
    Bare,
    /// An MBR partition (Linux numbering: 1-4 primary, 5+ logical).
    Mbr {
        /// Partition number.
        number: u32,
        /// The partition type byte.
        sys: u8,
    },
    /// A GPT partition (1-based entry index).
    Gpt {
        /// Partition number.
        number: u32,
    },
    /// A range forced with `--offset`.
    Offset,
    /// An LVM2 logical volume (see [`lvm`]).
    Lvm {
        /// Volume group name (LVM's name characters only).
        vg: String,
        /// Logical volume name (LVM's name characters only).
        lv: String,
        /// The physical volume that holds its first extent.
        on: Box<Source>,
    },
}

/// A byte range of the disk (or, for an LVM logical volume, a list of
/// them) that may hold the filesystem to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Where it came from.
    pub source: Source,
    /// Byte offset of the range (of its first range, for an LV).
    pub offset: u64,
    /// Length in bytes (all ranges together, for an LV).
    pub len: u64,
    /// An LV's disk ranges `(offset, len)` in logical order, at most
    /// [`crate::limits::MAX_LVM_SEGMENTS`]; empty for one contiguous range
    /// `[offset, offset + len)`.
    pub ranges: Vec<(u64, u64)>,
}

impl Candidate {
    /// The window this candidate reads through; `None` if any of its
    /// ranges does not lie on `src`.
    pub fn window(&self, src: Rc<dyn BlockSource>) -> Option<Window> {
        if self.ranges.is_empty() {
            Window::new(src, self.offset, self.len)
        } else {
            Window::from_ranges(src, &self.ranges)
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Bare => write!(f, "whole disk"),
            Source::Mbr { number, sys } => {
                write!(f, "MBR partition {number} (type 0x{sys:02x}, offset {})", self.offset)
            }
            Source::Gpt { number } => write!(f, "GPT partition {number} (offset {})", self.offset),
            Source::Offset => write!(f, "offset {}", self.offset),
            Source::Lvm { vg, lv, on } => {
                // Names hold LVM's name characters only (checked in `lvm`).
                let on = lvm::place_name(on);
                write!(f, "LVM logical volume {vg}/{lv} (on {on})")
            }
        }
    }
}

/// Read `len` bytes at `offset` into a new buffer. Callers pass small,
/// constant-bounded lengths only.
pub(crate) fn read_vec(src: &dyn BlockSource, offset: u64, len: usize) -> Result<Vec<u8>, PartError> {
    let mut buf = vec![0u8; len];
    src.read_exact_at(offset, &mut buf).map_err(|e| PartError::Read {
        offset,
        len: u64::try_from(len).unwrap_or(u64::MAX),
        msg: e.to_string(),
    })?;
    Ok(buf)
}

/// Whether an ext4 (or ext2/3) superblock magic sits at `offset`.
pub fn has_ext_magic(src: &dyn BlockSource, offset: u64) -> bool {
    let mut m = [0u8; 2];
    offset
        .checked_add(EXT4_MAGIC_OFFSET)
        .is_some_and(|o| src.read_exact_at(o, &mut m).is_ok())
        && m == [0x53, 0xEF]
}

/// What a disk offers: the ranges to try, in order, and the volumes
/// found but not usable (for the diagnostics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The candidates, in the order they are tried.
    pub candidates: Vec<Candidate>,
    /// LVM volumes that cannot be read, with the reason.
    pub unusable: Vec<lvm::Unusable>,
}

/// The ranges to try, in order. With `forced_offset` only that one.
/// (The volumes [`scan`] finds unusable are dropped.)
pub fn candidates(src: &dyn BlockSource, forced_offset: Option<u64>) -> Result<Vec<Candidate>, PartError> {
    Ok(scan(src, forced_offset)?.candidates)
}

/// The ranges to try, in order, and the unusable volumes. With
/// `forced_offset` only that one.
///
/// Order: a bare filesystem first (its superblock magic at byte 1080 means
/// there is no partition table before it), then GPT partitions if the MBR
/// is protective, otherwise MBR primaries and logical partitions. The
/// whole disk and every partition that carries an LVM2 label (whatever
/// its type: 0x8e, [`lvm::GPT_TYPE`] or another) is replaced by the
/// linear logical volumes of its volume group, in its place.
pub fn scan(src: &dyn BlockSource, forced_offset: Option<u64>) -> Result<Scan, PartError> {
    let disk_len = src.len();
    if let Some(offset) = forced_offset {
        let len = disk_len
            .checked_sub(offset)
            .filter(|l| *l > 0)
            .ok_or(PartError::OffsetOutside { offset, disk_len })?;
        return Ok(Scan {
            candidates: vec![Candidate {
                source: Source::Offset,
                offset,
                len,
                ranges: Vec::new(),
            }],
            unusable: Vec::new(),
        });
    }
    let plain = tables(src)?;
    // The whole disk goes first as a possible PV (`pvcreate /dev/xvda`).
    let bare = plain.first().is_some_and(|c| c.source == Source::Bare);
    let mut places = plain;
    if !bare {
        places.insert(
            0,
            Candidate {
                source: Source::Bare,
                offset: 0,
                len: disk_len,
                ranges: Vec::new(),
            },
        );
    }
    let (candidates, unusable) = lvm::expand(src, places, !bare);
    for u in &unusable {
        log::info!("{u}");
    }
    Ok(Scan { candidates, unusable })
}

/// The bare filesystem and the partitions of the tables.
fn tables(src: &dyn BlockSource) -> Result<Vec<Candidate>, PartError> {
    let disk_len = src.len();
    if disk_len < SECTOR {
        return Err(PartError::TooSmall(disk_len));
    }
    let mut out = Vec::new();
    if has_ext_magic(src, 0) {
        out.push(Candidate {
            source: Source::Bare,
            offset: 0,
            len: disk_len,
            ranges: Vec::new(),
        });
    }
    let sector0 = read_vec(src, 0, 512)?;
    let Some(primaries) = mbr::parse_primaries(&sector0) else {
        return Ok(out);
    };
    if primaries.iter().any(|(_, p)| p.sys == mbr::PROTECTIVE) {
        match gpt::read(src) {
            Ok(parts) => {
                out.extend(parts);
                return Ok(out);
            }
            Err(e) => {
                log::warn!("protective MBR but no usable GPT: {e}");
                if out.is_empty() && primaries.iter().all(|(_, p)| p.sys == mbr::PROTECTIVE) {
                    return Err(e.into());
                }
            }
        }
    }
    out.extend(mbr::partitions(src, &primaries));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_offset_is_checked() {
        let img = vec![0u8; 4096];
        assert_eq!(
            candidates(&img, Some(4096)),
            Err(PartError::OffsetOutside {
                offset: 4096,
                disk_len: 4096
            })
        );
        let c = candidates(&img, Some(1024)).unwrap();
        assert_eq!(
            c,
            vec![Candidate {
                source: Source::Offset,
                offset: 1024,
                len: 3072,
                ranges: Vec::new(),
            }]
        );
    }

    #[test]
    fn tiny_disk_is_an_error() {
        assert_eq!(candidates(&vec![0u8; 100], None), Err(PartError::TooSmall(100)));
    }

    #[test]
    fn bare_fs_detected_by_magic() {
        let mut img = vec![0u8; 8192];
        img[1080] = 0x53;
        img[1081] = 0xEF;
        let c = candidates(&img, None).unwrap();
        assert_eq!(
            c,
            vec![Candidate {
                source: Source::Bare,
                offset: 0,
                len: 8192,
                ranges: Vec::new(),
            }]
        );
    }

    #[test]
    fn blank_disk_has_no_candidates() {
        assert_eq!(candidates(&vec![0u8; 8192], None), Ok(vec![]));
    }
}
