//! Unit tests of the btrfs reader on hand-made structures: tree loops,
//! fan-out, item counts, decompression bombs.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::rc::Rc;

use super::BtrfsError;
use super::file::decompress;
use super::tree::{self, Budget, Expect, Key, Node, NodeSource, Root, parse_node};
use crate::limits::{MAX_BTRFS_EXTENT_DECOMPRESSED, MAX_BTRFS_NODE_VISITS};

const FSID: [u8; 16] = [7; 16];
const NODESIZE: usize = 16384;

fn header(logical: u64, level: u8, nritems: u32) -> Vec<u8> {
    let mut b = vec![0u8; NODESIZE];
    b[0x20..0x30].copy_from_slice(&FSID);
    b[0x30..0x38].copy_from_slice(&logical.to_le_bytes());
    b[0x60..0x64].copy_from_slice(&nritems.to_le_bytes());
    b[0x64] = level;
    b
}

fn put_key(b: &mut [u8], at: usize, k: Key) {
    b[at..at + 8].copy_from_slice(&k.objectid.to_le_bytes());
    b[at + 8] = k.ty;
    b[at + 9..at + 17].copy_from_slice(&k.offset.to_le_bytes());
}

/// An interior node at `logical`, level `level`, pointing at `ptrs`.
fn interior(logical: u64, level: u8, ptrs: &[(Key, u64)]) -> Vec<u8> {
    let mut b = header(logical, level, u32::try_from(ptrs.len()).unwrap());
    for (i, (k, p)) in ptrs.iter().enumerate() {
        let at = 101 + i * 33;
        put_key(&mut b, at, *k);
        b[at + 17..at + 25].copy_from_slice(&p.to_le_bytes());
    }
    b
}

/// A leaf with items of 8 bytes each.
fn leaf(logical: u64, keys: &[Key]) -> Vec<u8> {
    let mut b = header(logical, 0, u32::try_from(keys.len()).unwrap());
    for (i, k) in keys.iter().enumerate() {
        let at = 101 + i * 25;
        put_key(&mut b, at, *k);
        let off = u32::try_from(NODESIZE - 101 - (i + 1) * 8).unwrap();
        b[at + 17..at + 21].copy_from_slice(&off.to_le_bytes());
        b[at + 21..at + 25].copy_from_slice(&8u32.to_le_bytes());
    }
    b
}

/// Nodes in memory, checked like the volume checks them (no checksums).
#[derive(Default)]
struct Nodes {
    raw: HashMap<u64, Vec<u8>>,
    reads: Cell<u32>,
}

impl NodeSource for Nodes {
    fn node(&self, logical: u64, level: u8, budget: &mut Budget) -> Result<Rc<Node>, BtrfsError> {
        budget.spend()?;
        self.reads.set(self.reads.get() + 1);
        let b = self.raw.get(&logical).ok_or(BtrfsError::Unmapped(logical))?.clone();
        Ok(Rc::new(parse_node(
            b,
            &Expect {
                logical,
                level,
                fsid: &FSID,
            },
        )?))
    }
}

fn count_all(n: &Nodes, root: Root) -> Result<usize, BtrfsError> {
    let mut c = 0;
    tree::scan(
        n,
        root,
        Key::new(0, 0, 0),
        Key::new(u64::MAX, u8::MAX, u64::MAX),
        &mut Budget::new(),
        &mut |_, _| {
            c += 1;
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(c)
}

#[test]
fn a_two_level_tree_scans_in_order() {
    let mut n = Nodes::default();
    let k = |i| Key::new(i, 1, 0);
    n.raw.insert(4096, interior(4096, 1, &[(k(1), 8192), (k(10), 12288)]));
    n.raw.insert(8192, leaf(8192, &[k(1), k(2), k(3)]));
    n.raw.insert(12288, leaf(12288, &[k(10), k(11)]));
    let root = Root { bytenr: 4096, level: 1 };
    assert_eq!(count_all(&n, root).unwrap(), 5);
    let mut seen = Vec::new();
    tree::scan(&n, root, k(2), k(10), &mut Budget::new(), &mut |key, _| {
        seen.push(key.objectid);
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(seen, [2, 3, 10]);
    assert!(tree::lookup(&n, root, k(11), &mut Budget::new()).unwrap().is_some());
    assert!(tree::lookup(&n, root, k(5), &mut Budget::new()).unwrap().is_none());
}

#[test]
fn a_node_pointing_at_itself_or_an_ancestor_is_refused() {
    let k = Key::new(1, 1, 0);
    // Itself.
    let mut n = Nodes::default();
    n.raw.insert(4096, interior(4096, 1, &[(k, 4096)]));
    let e = count_all(&n, Root { bytenr: 4096, level: 1 }).unwrap_err();
    assert!(
        matches!(
            e,
            BtrfsError::Level {
                level: 1,
                expected: 0,
                ..
            }
        ),
        "{e}"
    );
    // Its grandparent.
    let mut n = Nodes::default();
    n.raw.insert(4096, interior(4096, 2, &[(k, 8192)]));
    n.raw.insert(8192, interior(8192, 1, &[(k, 4096)]));
    let e = count_all(&n, Root { bytenr: 4096, level: 2 }).unwrap_err();
    assert!(
        matches!(
            e,
            BtrfsError::Level {
                level: 2,
                expected: 0,
                ..
            }
        ),
        "{e}"
    );
    // A root claiming a level beyond btrfs's maximum.
    let mut n = Nodes::default();
    n.raw.insert(4096, interior(4096, 9, &[(k, 4096)]));
    assert!(count_all(&n, Root { bytenr: 4096, level: 9 }).is_err());
}

#[test]
fn fan_out_to_shared_nodes_hits_the_visit_budget() {
    // Level 2 -> 400 pointers to one level-1 node -> 400 pointers to one
    // leaf: 160,000 leaf visits if nothing stopped it.
    let mut n = Nodes::default();
    let ptrs = |to: u64| (0..400).map(|i| (Key::new(i, 1, 0), to)).collect::<Vec<_>>();
    n.raw.insert(4096, interior(4096, 2, &ptrs(8192)));
    n.raw.insert(8192, interior(8192, 1, &ptrs(12288)));
    n.raw.insert(12288, leaf(12288, &[Key::new(0, 1, 0)]));
    let e = count_all(&n, Root { bytenr: 4096, level: 2 }).unwrap_err();
    assert!(matches!(e, BtrfsError::TooMany { .. }), "{e}");
    assert!(n.reads.get() <= MAX_BTRFS_NODE_VISITS);
}

#[test]
fn bad_nodes_are_refused() {
    let want = Expect {
        logical: 4096,
        level: 0,
        fsid: &FSID,
    };
    // Billions of items.
    let b = header(4096, 0, u32::MAX);
    assert!(matches!(parse_node(b, &want), Err(BtrfsError::BadNode { .. })));
    // Item data outside the leaf.
    let mut b = leaf(4096, &[Key::new(1, 1, 0)]);
    b[101 + 17..101 + 21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(parse_node(b, &want), Err(BtrfsError::BadNode { .. })));
    // Keys out of order, and duplicated.
    let b = leaf(4096, &[Key::new(2, 1, 0), Key::new(1, 1, 0)]);
    assert!(parse_node(b, &want).is_err());
    let b = leaf(4096, &[Key::new(2, 1, 0), Key::new(2, 1, 0)]);
    assert!(parse_node(b, &want).is_err());
    // Another filesystem's node, a node naming another address.
    let mut b = leaf(4096, &[]);
    b[0x20] = 0;
    assert!(parse_node(b, &want).is_err());
    let b = leaf(8192, &[]);
    assert!(parse_node(b, &want).is_err());
    // An interior node with no pointers.
    let b = interior(4096, 1, &[]);
    assert!(parse_node(b, &Expect { level: 1, ..want }).is_err());
    // A truncated node.
    assert!(parse_node(vec![0u8; 50], &want).is_err());
}

#[test]
fn decompression_stops_at_the_extent_cap() {
    let want = usize::try_from(MAX_BTRFS_EXTENT_DECOMPRESSED).unwrap();
    // 256 MiB of zeros compress to a few KiB; only `want` bytes come out.
    // (A 2^17 window, as btrfs writes.)
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(17)).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(256 << 20), &mut enc).unwrap();
    let bomb_zstd = enc.finish().unwrap();
    let t = std::time::Instant::now();
    let out = decompress(3, &bomb_zstd, want, 4096, 0).unwrap();
    assert_eq!(out.len(), want);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut std::io::repeat(0).take(64 << 20), &mut z).unwrap();
    let bomb_zlib = z.finish().unwrap();
    let out = decompress(1, &bomb_zlib, want, 4096, 0).unwrap();
    assert_eq!(out.len(), want);
    assert!(t.elapsed().as_secs() < 5);
    // Short output is padded with zeros; garbage is an error.
    let small = zstd::encode_all(&b"abc"[..], 3).unwrap();
    assert_eq!(decompress(3, &small, 5, 4096, 0).unwrap(), b"abc\0\0");
    assert!(decompress(3, b"not zstd at all", 5, 4096, 0).is_err());
    assert!(decompress(1, b"not zlib at all", 5, 4096, 0).is_err());
    assert!(decompress(2, b"\xff\xff\xff\xff", 5, 4096, 0).is_err());
    assert!(decompress(9, b"", 5, 4096, 0).is_err());
}

#[test]
fn zstd_frames_with_huge_windows_are_refused() {
    // A frame asking for a 2^27-byte window (more than btrfs ever writes).
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27)).unwrap();
    enc.set_pledged_src_size(None).unwrap();
    enc.write_all(&vec![1u8; 1 << 20]).unwrap();
    let frame = enc.finish().unwrap();
    assert!(decompress(3, &frame, 4096, 4096, 0).is_err());
}
