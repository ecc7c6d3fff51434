//! GPT: header at LBA 1 (backup at the last LBA), entry array, CRCs. Capped.
//!
//! Guest data. Header fields (UEFI 2.10 §5.3.2): signature "EFI PART" @0,
//! header size @12, header CRC32 @16, my LBA @24, alternate LBA @32,
//! entry-array LBA @72, entry count @80, entry size @84, array CRC32 @88.
//! Entry: type GUID @0, first LBA @32, last LBA @40 (inclusive).
//! The entry count and size are checked against [`MAX_GPT_ENTRIES`] and
//! [`MAX_GPT_ENTRY_SIZE`] before the array is read in one bounded read.

use super::{Candidate, SECTOR, Source, read_vec};
use crate::bytes::{le32 as le_u32, le64 as le_u64};
use crate::disk::BlockSource;
use crate::limits::{MAX_GPT_ENTRIES, MAX_GPT_ENTRY_SIZE, MAX_PARTITIONS};

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why a GPT header or array was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// No "EFI PART" signature.
    #[error("no GPT signature at LBA {0}")]
    NoSignature(u64),
    /// Header size outside 92..=512.
    #[error("header at LBA {lba} has size {size}")]
    HeaderSize {
        /// LBA of the header.
        lba: u64,
        /// The size field.
        size: u32,
    },
    /// Header CRC mismatch.
    #[error("header CRC mismatch at LBA {0}")]
    HeaderCrc(u64),
    /// Entry count or size out of range.
    #[error(
        "entry array of {count} entries of {size} bytes exceeds the limits ({MAX_GPT_ENTRIES} entries, {MAX_GPT_ENTRY_SIZE} bytes each)"
    )]
    ArrayTooLarge {
        /// Entry count field.
        count: u32,
        /// Entry size field.
        size: u32,
    },
    /// Entry array outside the disk.
    #[error("entry array at LBA {0} lies outside the disk")]
    ArrayOutside(u64),
    /// Entry array CRC mismatch.
    #[error("entry array CRC mismatch (header at LBA {0})")]
    ArrayCrc(u64),
    /// The read failed.
    #[error("cannot read LBA {0}")]
    Read(u64),
}

/// A validated GPT header.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// LBA of the other copy of the header.
    pub alternate_lba: u64,
    /// LBA of the entry array.
    pub entries_lba: u64,
    /// Number of entries.
    pub count: u32,
    /// Size of one entry.
    pub entry_size: u32,
    /// CRC32 of the array.
    pub array_crc: u32,
}

/// Validate the header in the 512-byte `sector` read from `lba`.
pub fn parse_header(sector: &[u8], lba: u64) -> Result<Header, GptError> {
    if sector.get(0..8) != Some(b"EFI PART".as_slice()) {
        return Err(GptError::NoSignature(lba));
    }
    let size = le_u32(sector, 12).ok_or(GptError::NoSignature(lba))?;
    let hs = usize::try_from(size).ok().filter(|s| (92..=512).contains(s));
    let hdr = hs
        .and_then(|s| sector.get(..s))
        .ok_or(GptError::HeaderSize { lba, size })?;
    let stored = le_u32(hdr, 16).ok_or(GptError::HeaderCrc(lba))?;
    let mut digest = CRC32.digest();
    digest.update(hdr.get(..16).unwrap_or_default());
    digest.update(&[0u8; 4]);
    digest.update(hdr.get(20..).unwrap_or_default());
    if digest.finalize() != stored {
        return Err(GptError::HeaderCrc(lba));
    }
    let field = |at| le_u64(hdr, at).ok_or(GptError::HeaderSize { lba, size });
    let count = le_u32(hdr, 80).ok_or(GptError::HeaderSize { lba, size })?;
    let entry_size = le_u32(hdr, 84).ok_or(GptError::HeaderSize { lba, size })?;
    if count > MAX_GPT_ENTRIES || !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(GptError::ArrayTooLarge {
            count,
            size: entry_size,
        });
    }
    Ok(Header {
        alternate_lba: field(32)?,
        entries_lba: field(72)?,
        count,
        entry_size,
        array_crc: le_u32(hdr, 88).ok_or(GptError::HeaderSize { lba, size })?,
    })
}

/// Parse a CRC-checked entry array into candidates within `disk_len`.
pub fn parse_entries(array: &[u8], h: &Header, disk_len: u64) -> Result<Vec<Candidate>, GptError> {
    if CRC32.checksum(array) != h.array_crc {
        return Err(GptError::ArrayCrc(h.entries_lba));
    }
    let size = usize::try_from(h.entry_size).map_err(|_| GptError::ArrayOutside(h.entries_lba))?;
    let mut out = Vec::new();
    for (i, e) in (1u32..).zip(array.chunks_exact(size)) {
        if e.get(0..16).is_none_or(|t| t.iter().all(|b| *b == 0)) {
            continue;
        }
        let (Some(first), Some(last)) = (le_u64(e, 32), le_u64(e, 40)) else {
            continue;
        };
        let range = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR))
            .zip(first.checked_mul(SECTOR))
            .filter(|(len, off)| first > 0 && off.checked_add(*len).is_some_and(|end| end <= disk_len));
        match range {
            Some((len, offset)) if out.len() < MAX_PARTITIONS => out.push(Candidate {
                source: Source::Gpt { number: i },
                offset,
                len,
                ranges: Vec::new(),
            }),
            Some(_) => break,
            None => log::warn!("GPT partition {i} lies outside the disk; skipped"),
        }
    }
    Ok(out)
}

fn read_at_lba(src: &dyn BlockSource, lba: u64) -> Result<Vec<Candidate>, GptError> {
    let off = lba.checked_mul(SECTOR).ok_or(GptError::Read(lba))?;
    let sector = read_vec(src, off, 512).map_err(|_| GptError::Read(lba))?;
    let h = parse_header(&sector, lba)?;
    let bytes = u64::from(h.count).saturating_mul(u64::from(h.entry_size));
    let arr_off = h
        .entries_lba
        .checked_mul(SECTOR)
        .filter(|o| o.checked_add(bytes).is_some_and(|end| end <= src.len()))
        .ok_or(GptError::ArrayOutside(h.entries_lba))?;
    // OK: bytes <= MAX_GPT_ENTRIES * MAX_GPT_ENTRY_SIZE = 4 MiB.
    let len = usize::try_from(bytes).map_err(|_| GptError::ArrayOutside(h.entries_lba))?;
    let array = read_vec(src, arr_off, len).map_err(|_| GptError::Read(h.entries_lba))?;
    parse_entries(&array, &h, src.len())
}

/// Read the primary GPT, falling back to the backup header in the last
/// sector of the disk.
pub fn read(src: &dyn BlockSource) -> Result<Vec<Candidate>, GptError> {
    match read_at_lba(src, 1) {
        Ok(c) => Ok(c),
        Err(primary) => {
            let last = (src.len() / SECTOR).checked_sub(1).ok_or(primary.clone())?;
            log::warn!("primary GPT unusable ({primary}); trying the backup at LBA {last}");
            read_at_lba(src, last).map_err(|_| primary)
        }
    }
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

    /// Build a disk of `sectors` sectors with a protective MBR and a GPT
    /// holding `parts` (first, last LBA); the backup copy is written too.
    pub(crate) fn build(sectors: u64, parts: &[(u64, u64)], count: u32, esize: u32) -> Vec<u8> {
        let mut img = vec![0u8; (sectors * 512) as usize];
        crate::part::mbr::tests::put(&mut img, 0, 0, 0xEE, 1, (sectors - 1) as u32);
        let mut arr = vec![0u8; (count * esize) as usize];
        for (i, (f, l)) in parts.iter().enumerate() {
            let e = i * esize as usize;
            arr[e..e + 16].copy_from_slice(&[0xAF; 16]);
            arr[e + 32..e + 40].copy_from_slice(&f.to_le_bytes());
            arr[e + 40..e + 48].copy_from_slice(&l.to_le_bytes());
        }
        let acrc = CRC32.checksum(&arr);
        let write_hdr = |img: &mut Vec<u8>, my: u64, alt: u64, arr_lba: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[72..80].copy_from_slice(&arr_lba.to_le_bytes());
            h[80..84].copy_from_slice(&count.to_le_bytes());
            h[84..88].copy_from_slice(&esize.to_le_bytes());
            h[88..92].copy_from_slice(&acrc.to_le_bytes());
            let c = CRC32.checksum(&h);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            let o = (my * 512) as usize;
            img[o..o + 92].copy_from_slice(&h);
            let a = (arr_lba * 512) as usize;
            img[a..a + arr.len()].copy_from_slice(&arr);
        };
        let arr_sectors = (arr.len() as u64).div_ceil(512);
        write_hdr(&mut img, 1, sectors - 1, 2);
        write_hdr(&mut img, sectors - 1, 1, sectors - 1 - arr_sectors);
        img
    }

    #[test]
    fn reads_entries() {
        let img = build(200, &[(34, 40), (50, 99)], 128, 128);
        let c = read(&img).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[1],
            Candidate {
                source: Source::Gpt { number: 2 },
                offset: 50 * 512,
                len: 50 * 512,
                ranges: Vec::new(),
            }
        );
    }

    #[test]
    fn entry_size_256_is_fine() {
        let img = build(300, &[(100, 109)], 4, 256);
        assert_eq!(read(&img).unwrap().len(), 1);
    }

    #[test]
    fn falls_back_to_backup() {
        let mut img = build(200, &[(50, 99)], 128, 128);
        img[512 + 20] ^= 1; // corrupt primary header
        assert_eq!(read(&img).unwrap().len(), 1);
    }

    #[test]
    fn huge_count_is_refused_before_reading() {
        let img = build(200, &[(50, 99)], 4, 128);
        let mut sector = img[512..1024].to_vec();
        sector[80..84].copy_from_slice(&(1u32 << 28).to_le_bytes());
        sector[84..88].copy_from_slice(&256u32.to_le_bytes());
        sector[16..20].fill(0);
        let c = CRC32.checksum(&sector[..92]);
        sector[16..20].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            parse_header(&sector, 1),
            Err(GptError::ArrayTooLarge {
                count: 1 << 28,
                size: 256
            })
        );
    }

    #[test]
    fn array_crc_checked() {
        let mut img = build(200, &[(50, 99)], 4, 128);
        img[2 * 512 + 40] ^= 1;
        img[(200 - 2) * 512 + 40] ^= 1;
        assert_eq!(read(&img), Err(GptError::ArrayCrc(2)));
    }
}
