//! ext4 directory index (htree) hashing and index-block parsing, so a
//! single lookup in a big indexed directory (a `/nix/store` of tens of
//! thousands of entries after `e2fsck -D`) reads three blocks instead of
//! the whole directory. Pure functions on bytes; guest data.
//!
//! The hashes are the kernel's (`fs/ext4/hash.c`): legacy, half-MD4 and
//! TEA, each with signed or unsigned `char` (the superblock says which).
//! The tree walk itself is in [`super::raw`]; anything unexpected there
//! falls back to reading the directory linearly, which is always correct.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// Deepest index accepted (root plus two levels with `largedir`).
pub const MAX_HTREE_LEVELS: u8 = 3;

/// A directory hash algorithm (dx_root's `hash_version`, with the
/// superblock's unsigned flag applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    /// `dx_hack_hash`.
    Legacy {
        /// `char` is unsigned.
        unsigned: bool,
    },
    /// Half MD4.
    HalfMd4 {
        /// `char` is unsigned.
        unsigned: bool,
    },
    /// TEA.
    Tea {
        /// `char` is unsigned.
        unsigned: bool,
    },
}

impl HashAlg {
    /// From dx_root's `hash_version` and whether the superblock has
    /// `EXT2_FLAGS_UNSIGNED_HASH`; `None` for anything else (siphash is
    /// only used by casefolded directories, which are not read here).
    pub fn from_version(version: u8, unsigned_flag: bool) -> Option<HashAlg> {
        Some(match version {
            0 => HashAlg::Legacy {
                unsigned: unsigned_flag,
            },
            1 => HashAlg::HalfMd4 {
                unsigned: unsigned_flag,
            },
            2 => HashAlg::Tea {
                unsigned: unsigned_flag,
            },
            3 => HashAlg::Legacy { unsigned: true },
            4 => HashAlg::HalfMd4 { unsigned: true },
            5 => HashAlg::Tea { unsigned: true },
            _ => return None,
        })
    }
}

/// A byte as C's `char` would promote it to `int`.
fn char_value(b: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(b)
    } else {
        u32::from_le_bytes(i32::from(i8::from_le_bytes([b])).to_le_bytes())
    }
}

fn legacy(name: &[u8], unsigned: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for b in name {
        let mut h = h1.wrapping_add(h0 ^ char_value(*b, unsigned).wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0.wrapping_shl(1)
}

/// The kernel's `str2hashbuf`: `num` words from up to `num * 4` bytes of
/// `msg`, padded with the length.
fn str2hashbuf(msg: &[u8], num: usize, unsigned: bool) -> [u32; 8] {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let mut pad = len | len.wrapping_shl(8);
    pad |= pad.wrapping_shl(16);
    let mut out = [pad; 8];
    let take = msg.len().min(num.saturating_mul(4));
    let mut val = pad;
    let mut w = 0usize;
    for (i, b) in msg.iter().take(take).enumerate() {
        val = char_value(*b, unsigned).wrapping_add(val.wrapping_shl(8));
        if i % 4 == 3 {
            if let Some(slot) = out.get_mut(w) {
                *slot = val;
            }
            w = w.saturating_add(1);
            val = pad;
        }
    }
    if w < num
        && let Some(slot) = out.get_mut(w)
    {
        *slot = val;
    }
    out
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    let round = |fun: &dyn Fn(u32, u32, u32) -> u32, a: &mut u32, b: u32, c: u32, d: u32, x: u32, s: u32| {
        *a = a.wrapping_add(fun(b, c, d)).wrapping_add(x).rotate_left(s);
    };
    let [x0, x1, x2, x3, x4, x5, x6, x7] = *x;
    round(&f, &mut a, b, c, d, x0, 3);
    round(&f, &mut d, a, b, c, x1, 7);
    round(&f, &mut c, d, a, b, x2, 11);
    round(&f, &mut b, c, d, a, x3, 19);
    round(&f, &mut a, b, c, d, x4, 3);
    round(&f, &mut d, a, b, c, x5, 7);
    round(&f, &mut c, d, a, b, x6, 11);
    round(&f, &mut b, c, d, a, x7, 19);
    let k2 = |v: u32| v.wrapping_add(K2);
    round(&g, &mut a, b, c, d, k2(x1), 3);
    round(&g, &mut d, a, b, c, k2(x3), 5);
    round(&g, &mut c, d, a, b, k2(x5), 9);
    round(&g, &mut b, c, d, a, k2(x7), 13);
    round(&g, &mut a, b, c, d, k2(x0), 3);
    round(&g, &mut d, a, b, c, k2(x2), 5);
    round(&g, &mut c, d, a, b, k2(x4), 9);
    round(&g, &mut b, c, d, a, k2(x6), 13);
    let k3 = |v: u32| v.wrapping_add(K3);
    round(&h, &mut a, b, c, d, k3(x3), 3);
    round(&h, &mut d, a, b, c, k3(x7), 9);
    round(&h, &mut c, d, a, b, k3(x2), 11);
    round(&h, &mut b, c, d, a, k3(x6), 15);
    round(&h, &mut a, b, c, d, k3(x1), 3);
    round(&h, &mut d, a, b, c, k3(x5), 9);
    round(&h, &mut c, d, a, b, k3(x0), 11);
    round(&h, &mut b, c, d, a, k3(x4), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

fn tea(buf: &mut [u32; 4], x: &[u32; 8]) {
    const DELTA: u32 = 0x9E37_79B9;
    let (mut sum, mut b0, mut b1) = (0u32, buf[0], buf[1]);
    let [a, b, c, d, ..] = *x;
    for _ in 0..16 {
        sum = sum.wrapping_add(DELTA);
        b0 = b0.wrapping_add(
            (b1.wrapping_shl(4).wrapping_add(a)) ^ b1.wrapping_add(sum) ^ (b1.wrapping_shr(5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            (b0.wrapping_shl(4).wrapping_add(c)) ^ b0.wrapping_add(sum) ^ (b0.wrapping_shr(5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// The major hash of `name` (low bit clear), as `ext4fs_dirhash` computes
/// it, with the superblock's `s_hash_seed` words.
pub fn dirhash(alg: HashAlg, seed: [u32; 4], name: &[u8]) -> u32 {
    let mut buf = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|w| *w != 0) {
        buf = seed;
    }
    let hash = match alg {
        HashAlg::Legacy { unsigned } => legacy(name, unsigned),
        HashAlg::HalfMd4 { unsigned } => {
            // Each 32-byte step is padded with the length *remaining*.
            let mut rest = name;
            while !rest.is_empty() {
                half_md4(&mut buf, &str2hashbuf(rest, 8, unsigned));
                rest = rest.get(32..).unwrap_or_default();
            }
            buf[1]
        }
        HashAlg::Tea { unsigned } => {
            let mut rest = name;
            while !rest.is_empty() {
                tea(&mut buf, &str2hashbuf(rest, 4, unsigned));
                rest = rest.get(16..).unwrap_or_default();
            }
            buf[0]
        }
    };
    let hash = hash & !1;
    if hash == 0x7fff_ffffu32.wrapping_shl(1) {
        0x7fff_fffeu32.wrapping_shl(1)
    } else {
        hash
    }
}

/// One level of an index: `(hash, logical block)` pairs; the first
/// entry's hash is implicitly 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DxNode {
    /// The entries, in hash order.
    pub entries: Vec<(u32, u32)>,
}

impl DxNode {
    /// Parse `count` entries at `at` in an index block of `block.len()`
    /// bytes; `None` if they do not fit or are out of order.
    pub fn parse(block: &[u8], at: usize) -> Option<DxNode> {
        let le16 = |o: usize| crate::bytes::le16(block, o);
        let le32 = |o: usize| crate::bytes::le32(block, o);
        let limit = usize::from(le16(at)?);
        let count = usize::from(le16(at.checked_add(2)?)?);
        let end = at.checked_add(limit.checked_mul(8)?)?;
        if count == 0 || count > limit || end > block.len() {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let o = at.checked_add(i.checked_mul(8)?)?;
            let hash = if i == 0 { 0 } else { le32(o)? };
            let blk = le32(o.checked_add(4)?)? & 0x0fff_ffff;
            if entries.last().is_some_and(|(h, _)| *h > hash) {
                return None;
            }
            entries.push((hash, blk));
        }
        Some(DxNode { entries })
    }

    /// Index of the entry whose range holds `hash`.
    pub fn find(&self, hash: u32) -> usize {
        self.entries.partition_point(|(h, _)| *h <= hash).saturating_sub(1)
    }
}

/// The root block's index header: (hash version, indirect levels, offset
/// of the entries); `None` if it is not a valid dx_root.
pub fn parse_root(block: &[u8]) -> Option<(u8, u8, usize)> {
    // "." (12 bytes), then ".." whose record covers the rest of the block,
    // then dx_root_info at 24: reserved u32, hash_version, info_length,
    // indirect_levels, flags.
    let version = *block.get(28)?;
    let info_len = *block.get(29)?;
    let levels = *block.get(30)?;
    if info_len != 8 || levels >= MAX_HTREE_LEVELS || block.get(24..28)? != [0, 0, 0, 0] {
        return None;
    }
    Some((version, levels, 24usize.checked_add(usize::from(info_len))?))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Values from `debugfs -R "dx_hash -h <0-5> [-s <seed>] <name>"`
    /// (e2fsprogs 1.47.0, which implements the kernel's hashes): a short
    /// name, one longer than one half-MD4 and two TEA steps, and one with
    /// bytes >= 0x80 (where signed and unsigned `char` differ).
    #[test]
    fn hashes_match_debugfs() {
        let long: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789-nixos-system-x";
        let cafe = "caf\u{e9}".as_bytes();
        let cases: [(u8, &[u8], u32); 18] = [
            (0, b"nix", 0x6de16e06),
            (0, long, 0x93d73ef2),
            (0, cafe, 0x96ca5a2c),
            (1, b"nix", 0xfd980c84),
            (1, long, 0x0ee0b694),
            (1, cafe, 0xfb9c5e5c),
            (2, b"nix", 0xb597ed0e),
            (2, long, 0x7ccc9c24),
            (2, cafe, 0x105842ea),
            (3, b"nix", 0x6de16e06),
            (3, long, 0x93d73ef2),
            (3, cafe, 0x6dde4230),
            (4, b"nix", 0xfd980c84),
            (4, long, 0x0ee0b694),
            (4, cafe, 0x9d72aed6),
            (5, b"nix", 0xb597ed0e),
            (5, long, 0x7ccc9c24),
            (5, cafe, 0x6621f032),
        ];
        for (v, name, want) in cases {
            let alg = HashAlg::from_version(v, false).unwrap();
            assert_eq!(
                dirhash(alg, [0; 4], name),
                want,
                "version {v}, {}",
                String::from_utf8_lossy(name)
            );
        }
        // -s 6e697862-6f6f-7400-0000-0000000000ff (the bytes, as LE words).
        let seed_bytes = [0x6e, 0x69, 0x78, 0x62, 0x6f, 0x6f, 0x74, 0, 0, 0, 0, 0, 0, 0, 0, 0xff];
        let seed: [u32; 4] = std::array::from_fn(|i| u32::from_le_bytes(seed_bytes[i * 4..][..4].try_into().unwrap()));
        assert_eq!(dirhash(HashAlg::HalfMd4 { unsigned: false }, seed, b"nix"), 0xebf762e6);
    }

    #[test]
    fn dx_node_find() {
        let n = DxNode {
            entries: vec![(0, 1), (100, 2), (200, 3)],
        };
        assert_eq!(n.find(0), 0);
        assert_eq!(n.find(99), 0);
        assert_eq!(n.find(100), 1);
        assert_eq!(n.find(u32::MAX), 2);
    }
}
