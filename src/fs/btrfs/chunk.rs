//! The btrfs chunk map: logical addresses (what every tree pointer and
//! extent uses) to byte offsets on this one device. Guest data.
//!
//! Chunks come from the superblock's `sys_chunk_array` (enough to read the
//! chunk tree) and then from the chunk tree. Only what a single-device
//! filesystem can hold is accepted: SINGLE (one stripe) and DUP (two
//! stripes on the same device). RAID profiles, stripes on another device,
//! chunks that overlap, wrap around or lie past the end of the device are
//! errors, and the number of chunks is capped ([`MAX_BTRFS_CHUNKS`]).

use super::BtrfsError;
use super::tree::Key;
use crate::bytes::{le16, le64};
use crate::limits::MAX_BTRFS_CHUNKS;

/// `BTRFS_CHUNK_ITEM_KEY`.
pub const CHUNK_ITEM: u8 = 228;
/// Size of a `btrfs_chunk` without its stripes.
const CHUNK_LEN: usize = 48;
/// Size of one `btrfs_stripe`.
const STRIPE_LEN: usize = 32;
/// Profile bits of a block group type that spread a chunk over devices
/// (RAID0, RAID1, RAID10, RAID5, RAID6, RAID1C3, RAID1C4).
const RAID_MASK: u64 = 8 | 16 | 64 | 128 | 256 | 512 | 1024;
/// `BTRFS_BLOCK_GROUP_DUP`.
const DUP: u64 = 32;

/// One chunk: `len` bytes at `logical`, stored at each of `stripes`
/// (physical offsets within the filesystem's window; two for DUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Logical start.
    pub logical: u64,
    /// Length in bytes.
    pub len: u64,
    /// Physical starts of the copies.
    pub stripes: Vec<u64>,
}

/// The logical -> physical map, sorted by logical address, no overlaps.
#[derive(Debug, Default)]
pub struct ChunkMap {
    chunks: Vec<Chunk>,
}

/// A parsed chunk item: the chunk and how many bytes it took.
pub fn parse_chunk(logical: u64, b: &[u8], devid: u64, dev_len: u64) -> Result<(Chunk, usize), BtrfsError> {
    let bad = |what: &'static str| BtrfsError::BadChunk { logical, what };
    let len = le64(b, 0).ok_or(bad("truncated chunk item"))?;
    let ty = le64(b, 24).ok_or(bad("truncated chunk item"))?;
    let num_stripes = le16(b, 44).ok_or(bad("truncated chunk item"))?;
    if ty & RAID_MASK != 0 {
        return Err(BtrfsError::Profile { logical, flags: ty });
    }
    let want = if ty & DUP != 0 { 2 } else { 1 };
    if num_stripes != want {
        return Err(BtrfsError::BadChunk {
            logical,
            what: "stripe count does not match the profile",
        });
    }
    if len == 0 {
        return Err(bad("empty chunk"));
    }
    let end = logical.checked_add(len).ok_or(bad("chunk wraps around"))?;
    let _ = end;
    let mut stripes = Vec::with_capacity(usize::from(want));
    let mut at = CHUNK_LEN;
    for _ in 0..num_stripes {
        let sdev = le64(b, at).ok_or(bad("truncated stripe"))?;
        let off = le64(b, at.saturating_add(8)).ok_or(bad("truncated stripe"))?;
        if sdev != devid {
            return Err(BtrfsError::OtherDevice { logical, devid: sdev });
        }
        match off.checked_add(len) {
            Some(e) if e <= dev_len => {}
            _ => {
                return Err(BtrfsError::ChunkPastEnd {
                    logical,
                    physical: off,
                    len,
                    dev_len,
                });
            }
        }
        stripes.push(off);
        at = at.saturating_add(STRIPE_LEN);
    }
    Ok((Chunk { logical, len, stripes }, at))
}

impl ChunkMap {
    /// Add a chunk; the same chunk twice (system chunks are in both the
    /// superblock and the chunk tree) is fine, an overlap is an error.
    pub fn insert(&mut self, c: Chunk) -> Result<(), BtrfsError> {
        let i = self.chunks.partition_point(|x| x.logical < c.logical);
        if self.chunks.get(i) == Some(&c) {
            return Ok(());
        }
        let c_end = c.logical.saturating_add(c.len);
        let overlaps_next = self.chunks.get(i).is_some_and(|n| n.logical < c_end);
        let overlaps_prev = i
            .checked_sub(1)
            .and_then(|p| self.chunks.get(p))
            .is_some_and(|p| p.logical.saturating_add(p.len) > c.logical);
        if overlaps_next || overlaps_prev {
            return Err(BtrfsError::BadChunk {
                logical: c.logical,
                what: "chunk overlaps another",
            });
        }
        if self.chunks.len() >= MAX_BTRFS_CHUNKS {
            return Err(BtrfsError::TooMany {
                what: "chunks",
                cap: MAX_BTRFS_CHUNKS,
            });
        }
        self.chunks.insert(i, c);
        Ok(())
    }

    /// The chunk holding `logical`, if any.
    pub fn find(&self, logical: u64) -> Option<&Chunk> {
        let i = self.chunks.partition_point(|x| x.logical <= logical).checked_sub(1)?;
        let c = self.chunks.get(i)?;
        (logical.checked_sub(c.logical)? < c.len).then_some(c)
    }

    /// Physical offsets of every copy of `logical` and the bytes left in
    /// its chunk from there; an error if it is not mapped.
    pub fn map(&self, logical: u64) -> Result<(Vec<u64>, u64), BtrfsError> {
        let c = self.find(logical).ok_or(BtrfsError::Unmapped(logical))?;
        let delta = logical.saturating_sub(c.logical);
        // delta < c.len and every stripe + len fits the device: no overflow.
        let phys = c.stripes.iter().map(|s| s.saturating_add(delta)).collect();
        Ok((phys, c.len.saturating_sub(delta)))
    }

    /// Physical offset of the first copy of `[logical, logical + len)`,
    /// which must lie within one chunk.
    pub fn map_range(&self, logical: u64, len: u64) -> Result<u64, BtrfsError> {
        let (phys, left) = self.map(logical)?;
        if len > left {
            return Err(BtrfsError::CrossesChunk { logical, len });
        }
        phys.first().copied().ok_or(BtrfsError::Unmapped(logical))
    }

    /// The chunks, by logical address.
    pub fn iter(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter()
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether no chunk is mapped.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Parse the superblock's `sys_chunk_array` (its first `size` bytes).
pub fn parse_sys_array(arr: &[u8], devid: u64, dev_len: u64) -> Result<ChunkMap, BtrfsError> {
    let mut map = ChunkMap::default();
    let mut at = 0usize;
    while at < arr.len() {
        let key = Key::parse(arr, at).ok_or(BtrfsError::BadSuperblock("truncated sys_chunk_array key"))?;
        if key.ty != CHUNK_ITEM {
            return Err(BtrfsError::BadSuperblock("sys_chunk_array holds a non-chunk item"));
        }
        let body = arr
            .get(at.saturating_add(super::tree::KEY_LEN)..)
            .ok_or(BtrfsError::BadSuperblock("truncated sys_chunk_array"))?;
        let (chunk, used) = parse_chunk(key.offset, body, devid, dev_len)?;
        map.insert(chunk)?;
        at = at.saturating_add(super::tree::KEY_LEN).saturating_add(used);
    }
    if map.is_empty() {
        return Err(BtrfsError::BadSuperblock("empty sys_chunk_array"));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: u64, ty: u64, stripes: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK_LEN];
        b[0..8].copy_from_slice(&len.to_le_bytes());
        b[24..32].copy_from_slice(&ty.to_le_bytes());
        b[44..46].copy_from_slice(&u16::try_from(stripes.len()).unwrap().to_le_bytes());
        for (dev, off) in stripes {
            let mut s = vec![0u8; STRIPE_LEN];
            s[0..8].copy_from_slice(&dev.to_le_bytes());
            s[8..16].copy_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&s);
        }
        b
    }

    #[test]
    fn single_and_dup_map() {
        let (c, used) = parse_chunk(1 << 20, &item(4096, 2, &[(1, 8192)]), 1, 1 << 20).unwrap();
        assert_eq!(used, 80);
        let mut m = ChunkMap::default();
        m.insert(c.clone()).unwrap();
        m.insert(c).unwrap();
        assert_eq!(m.map((1 << 20) + 10).unwrap(), (vec![8202], 4086));
        assert!(matches!(m.map(1 << 19), Err(BtrfsError::Unmapped(_))));
        let (d, _) = parse_chunk(1 << 30, &item(4096, 4 | DUP, &[(1, 0), (1, 4096)]), 1, 1 << 20).unwrap();
        m.insert(d).unwrap();
        assert_eq!(m.map(1 << 30).unwrap().0, vec![0, 4096]);
        assert!(matches!(
            m.map_range((1 << 30) + 1, 4096),
            Err(BtrfsError::CrossesChunk { .. })
        ));
    }

    #[test]
    fn hostile_chunks_are_refused() {
        // RAID1, another device, past the end, wrapping, empty, overlapping.
        assert!(matches!(
            parse_chunk(0, &item(4096, 16, &[(1, 0), (2, 0)]), 1, 1 << 20),
            Err(BtrfsError::Profile { .. })
        ));
        assert!(matches!(
            parse_chunk(0, &item(4096, 1, &[(2, 0)]), 1, 1 << 20),
            Err(BtrfsError::OtherDevice { devid: 2, .. })
        ));
        assert!(matches!(
            parse_chunk(0, &item(u64::MAX / 2, 1, &[(1, 0)]), 1, 1 << 20),
            Err(BtrfsError::ChunkPastEnd { .. })
        ));
        assert!(parse_chunk(u64::MAX - 5, &item(4096, 1, &[(1, 0)]), 1, 1 << 20).is_err());
        assert!(parse_chunk(0, &item(0, 1, &[(1, 0)]), 1, 1 << 20).is_err());
        assert!(parse_chunk(0, &item(4096, 1, &[]), 1, 1 << 20).is_err());
        assert!(parse_chunk(0, &item(4096, 1, &[(1, 0)])[..60], 1, 1 << 20).is_err());
        let mut m = ChunkMap::default();
        m.insert(parse_chunk(8192, &item(8192, 1, &[(1, 0)]), 1, 1 << 20).unwrap().0)
            .unwrap();
        for (l, n) in [(4096, 8192), (12288, 100), (0, 1 << 19)] {
            let c = parse_chunk(l, &item(n, 1, &[(1, 0)]), 1, 1 << 20).unwrap().0;
            assert!(m.insert(c).is_err(), "{l} {n}");
        }
        // The count is capped.
        let mut m = ChunkMap::default();
        for i in 0..=u64::try_from(MAX_BTRFS_CHUNKS).unwrap() {
            let r = m.insert(Chunk {
                logical: i * 4096,
                len: 4096,
                stripes: vec![0],
            });
            if i == u64::try_from(MAX_BTRFS_CHUNKS).unwrap() {
                assert!(matches!(r, Err(BtrfsError::TooMany { .. })));
            }
        }
    }
}
