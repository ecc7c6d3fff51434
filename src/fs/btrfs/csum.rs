//! btrfs checksums (superblock and tree nodes) and the directory name hash.
//! Pure functions over guest bytes.

use blake2::Digest as _;

/// The checksum algorithms btrfs knows (`csum_type` in the superblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumType {
    /// `BTRFS_CSUM_TYPE_CRC32` (0): crc32c, 4 bytes little-endian.
    Crc32c,
    /// `BTRFS_CSUM_TYPE_XXHASH` (1): xxhash64 with seed 0, 8 bytes.
    Xxhash64,
    /// `BTRFS_CSUM_TYPE_SHA256` (2): 32 bytes.
    Sha256,
    /// `BTRFS_CSUM_TYPE_BLAKE2` (3): BLAKE2b-256, 32 bytes.
    Blake2b,
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// crc32c register seeded with `~1` and without the final inversion, as
/// the kernel's `crc32c(~1, name, len)` in `btrfs_name_hash`. The crc
/// crate takes `init` unreflected for reflected algorithms.
const NAME_HASH_ALG: crc::Algorithm<u32> = crc::Algorithm {
    width: 32,
    poly: 0x1edc_6f41,
    init: 0xFFFF_FFFEu32.reverse_bits(),
    refin: true,
    refout: true,
    xorout: 0,
    check: 0,
    residue: 0,
};
const NAME_HASH: crc::Crc<u32> = crc::Crc::<u32>::new(&NAME_HASH_ALG);

impl CsumType {
    /// The type for the superblock's `csum_type`, `None` if unknown.
    pub fn from_raw(v: u16) -> Option<CsumType> {
        match v {
            0 => Some(CsumType::Crc32c),
            1 => Some(CsumType::Xxhash64),
            2 => Some(CsumType::Sha256),
            3 => Some(CsumType::Blake2b),
            _ => None,
        }
    }

    /// For messages.
    pub fn name(self) -> &'static str {
        match self {
            CsumType::Crc32c => "crc32c",
            CsumType::Xxhash64 => "xxhash64",
            CsumType::Sha256 => "sha256",
            CsumType::Blake2b => "blake2b",
        }
    }

    /// Whether `stored` (the 32-byte checksum field, zero-padded) is the
    /// checksum of `data`.
    pub fn verify(self, data: &[u8], stored: &[u8]) -> bool {
        match self {
            CsumType::Crc32c => stored.get(..4) == Some(CRC32C.checksum(data).to_le_bytes().as_slice()),
            CsumType::Xxhash64 => {
                stored.get(..8) == Some(twox_hash::XxHash64::oneshot(0, data).to_le_bytes().as_slice())
            }
            CsumType::Sha256 => stored.get(..32) == Some(sha2::Sha256::digest(data).as_slice()),
            CsumType::Blake2b => {
                stored.get(..32) == Some(blake2::Blake2b::<blake2::digest::consts::U32>::digest(data).as_slice())
            }
        }
    }
}

/// `btrfs_name_hash`: the key offset of a DIR_ITEM for `name`.
pub fn name_hash(name: &[u8]) -> u32 {
    NAME_HASH.checksum(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The catalogue check value of CRC-32C.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn name_hash_matches_btrfs() {
        // Values from `btrfs inspect-internal dump-tree` (btrfs-progs 6.2):
        // DIR_ITEM keys of these names.
        assert_eq!(name_hash(b"default"), 2_378_154_706);
        assert_eq!(name_hash(b"dir"), 481_053_471);
        assert_eq!(name_hash(b"link"), 2_885_771_098);
        assert_eq!(name_hash(b"a"), 3_427_024_844);
    }
}
