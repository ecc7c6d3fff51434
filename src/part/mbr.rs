//! MBR: the four primary entries and the extended (EBR) chain, capped.
//!
//! Guest data. Entry layout (16 bytes at 446 + 16 i): boot flag, CHS,
//! type, CHS, start LBA (u32 LE at +8), sector count (u32 LE at +12).
//! An extended partition (type 0x05, 0x0F or 0x85) holds a linked list of
//! EBRs; each one's first entry is a logical partition relative to that
//! EBR, its second the next EBR relative to the start of the extended
//! partition. The walk stops after [`MAX_EBR_HOPS`] records, on a loop, or
//! on any arithmetic overflow.

use super::{Candidate, SECTOR, Source, read_vec};
use crate::bytes::le32 as u32_at;
use crate::disk::BlockSource;
use crate::limits::{MAX_EBR_HOPS, MAX_PARTITIONS};

/// Type byte of a protective MBR (the disk uses GPT).
pub const PROTECTIVE: u8 = 0xEE;

/// One 16-byte partition entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Boot flag (0x00 or 0x80).
    pub boot: u8,
    /// Type byte.
    pub sys: u8,
    /// Start LBA (relative to the table's base).
    pub start: u32,
    /// Length in sectors.
    pub sectors: u32,
}

impl Entry {
    fn is_extended(&self) -> bool {
        matches!(self.sys, 0x05 | 0x0F | 0x85)
    }
    fn is_used(&self) -> bool {
        self.sys != 0 && self.sectors != 0
    }
}

/// Parse the four entries of a 512-byte MBR/EBR sector; `None` if the
/// sector has no 0x55AA signature or any boot flag is not 0x00/0x80 (a
/// bare filesystem's boot code, not a partition table).
pub fn parse_table(sector: &[u8]) -> Option<[Entry; 4]> {
    if sector.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    let mut out = [Entry {
        boot: 0,
        sys: 0,
        start: 0,
        sectors: 0,
    }; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let base = 446usize.checked_add(i.checked_mul(16)?)?;
        let e = sector.get(base..base.checked_add(16)?)?;
        let boot = *e.first()?;
        if boot != 0 && boot != 0x80 {
            return None;
        }
        *slot = Entry {
            boot,
            sys: *e.get(4)?,
            start: u32_at(e, 8)?,
            sectors: u32_at(e, 12)?,
        };
    }
    Some(out)
}

/// The used primary entries of sector 0, or `None` if it is no MBR.
pub fn parse_primaries(sector0: &[u8]) -> Option<Vec<(u32, Entry)>> {
    let table = parse_table(sector0)?;
    Some((1u32..).zip(table).filter(|(_, e)| e.is_used()).collect())
}

/// Byte range of `sectors` sectors at `lba`, if it lies on the disk.
fn range(lba: u64, sectors: u64, disk_len: u64) -> Option<(u64, u64)> {
    let off = lba.checked_mul(SECTOR)?;
    let len = sectors.checked_mul(SECTOR)?;
    let end = off.checked_add(len)?;
    (lba > 0 && len > 0 && end <= disk_len).then_some((off, len))
}

/// Candidates from the primaries (in table order) and, after them, the
/// logical partitions of the first extended partition.
pub fn partitions(src: &dyn BlockSource, primaries: &[(u32, Entry)]) -> Vec<Candidate> {
    let disk_len = src.len();
    let mut out = Vec::new();
    let mut extended = None;
    for &(number, e) in primaries {
        if e.sys == PROTECTIVE {
            continue;
        }
        if e.is_extended() {
            extended = extended.or(Some(e));
            continue;
        }
        match range(u64::from(e.start), u64::from(e.sectors), disk_len) {
            Some((offset, len)) => out.push(Candidate {
                source: Source::Mbr { number, sys: e.sys },
                offset,
                len,
                ranges: Vec::new(),
            }),
            None => log::warn!("MBR partition {number} lies outside the disk; skipped"),
        }
    }
    if let Some(ext) = extended {
        walk_extended(src, ext, &mut out);
    }
    out
}

/// Follow the EBR chain of `ext`, appending logical partitions.
fn walk_extended(src: &dyn BlockSource, ext: Entry, out: &mut Vec<Candidate>) {
    let disk_len = src.len();
    let ext_start = u64::from(ext.start);
    let mut ebr_lba = ext_start;
    let mut seen: Vec<u64> = Vec::new();
    let mut number: u32 = 5;
    for _ in 0..MAX_EBR_HOPS {
        if seen.contains(&ebr_lba) {
            log::warn!("MBR extended chain loops at LBA {ebr_lba}; stopped");
            return;
        }
        seen.push(ebr_lba);
        let Some(off) = ebr_lba.checked_mul(SECTOR) else { return };
        let Ok(sector) = read_vec(src, off, 512) else {
            log::warn!("EBR at LBA {ebr_lba} unreadable; stopped");
            return;
        };
        let Some(table) = parse_table(&sector) else {
            log::warn!("EBR at LBA {ebr_lba} has no signature; stopped");
            return;
        };
        let [logical, next, ..] = table;
        if logical.is_used() {
            let lba = ebr_lba.checked_add(u64::from(logical.start));
            match lba.and_then(|l| range(l, u64::from(logical.sectors), disk_len)) {
                Some((offset, len)) if out.len() < MAX_PARTITIONS => out.push(Candidate {
                    source: Source::Mbr {
                        number,
                        sys: logical.sys,
                    },
                    offset,
                    len,
                    ranges: Vec::new(),
                }),
                Some(_) => return,
                None => log::warn!("logical partition {number} lies outside the disk; skipped"),
            }
        }
        number = number.saturating_add(1);
        if !next.is_used() || !next.is_extended() {
            return;
        }
        match ext_start.checked_add(u64::from(next.start)) {
            Some(n) => ebr_lba = n,
            None => return,
        }
    }
    log::warn!("MBR extended chain longer than {MAX_EBR_HOPS} records; the rest is ignored");
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]
pub(crate) mod tests {
    use super::*;

    /// Write an entry into a sector buffer at table offset `base`.
    pub(crate) fn put(img: &mut [u8], base: usize, i: usize, sys: u8, start: u32, sectors: u32) {
        let e = base + 446 + 16 * i;
        img[e + 4] = sys;
        img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        img[base + 510] = 0x55;
        img[base + 511] = 0xAA;
    }

    #[test]
    fn primaries_and_logicals() {
        let mut img = vec![0u8; 512 * 400];
        put(&mut img, 0, 0, 0x0c, 10, 20);
        put(&mut img, 0, 1, 0x05, 100, 300);
        // EBR 1 at LBA 100: logical at +2 for 50 sectors, next EBR at ext+100.
        put(&mut img, 100 * 512, 0, 0x83, 2, 50);
        put(&mut img, 100 * 512, 1, 0x05, 100, 100);
        // EBR 2 at LBA 200: logical at +1 for 10 sectors, end of chain.
        put(&mut img, 200 * 512, 0, 0x83, 1, 10);
        let prim = parse_primaries(&img[..512]).unwrap();
        let c = partitions(&img, &prim);
        assert_eq!(
            c,
            vec![
                Candidate {
                    source: Source::Mbr { number: 1, sys: 0x0c },
                    offset: 5120,
                    len: 10240,
                    ranges: Vec::new(),
                },
                Candidate {
                    source: Source::Mbr { number: 5, sys: 0x83 },
                    offset: 102 * 512,
                    len: 50 * 512,
                    ranges: Vec::new(),
                },
                Candidate {
                    source: Source::Mbr { number: 6, sys: 0x83 },
                    offset: 201 * 512,
                    len: 10 * 512,
                    ranges: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn looping_chain_stops() {
        let mut img = vec![0u8; 512 * 200];
        put(&mut img, 0, 0, 0x05, 100, 100);
        put(&mut img, 100 * 512, 0, 0x83, 1, 1);
        put(&mut img, 100 * 512, 1, 0x05, 0, 100); // points at itself
        let prim = parse_primaries(&img[..512]).unwrap();
        assert_eq!(partitions(&img, &prim).len(), 1);
    }

    #[test]
    fn overflowing_entries_are_skipped() {
        let mut img = vec![0u8; 512 * 4];
        put(&mut img, 0, 0, 0x83, u32::MAX, u32::MAX);
        put(&mut img, 0, 1, 0x05, u32::MAX, 2);
        let prim = parse_primaries(&img[..512]).unwrap();
        assert_eq!(partitions(&img, &prim), vec![]);
    }

    #[test]
    fn bad_boot_flag_means_no_table() {
        let mut img = vec![0u8; 512];
        put(&mut img, 0, 0, 0x83, 1, 1);
        img[446] = 0x12;
        assert_eq!(parse_primaries(&img), None);
    }
}
