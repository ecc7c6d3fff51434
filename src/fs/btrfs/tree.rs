//! btrfs B-trees: reading and checking one node, and range scans over a
//! tree. Guest data.
//!
//! Every node read is checked before use: its checksum, that its header
//! names the address it was read from and this filesystem, that its level
//! is exactly one below its parent's (so a pointer to itself or to an
//! ancestor is refused and no walk is deeper than [`MAX_BTRFS_LEVEL`]),
//! that its item count fits the node, that its items lie within it and its
//! keys strictly increase. Each operation carries a [`Budget`] of nodes
//! ([`MAX_BTRFS_NODE_VISITS`]).

use std::ops::ControlFlow;
use std::rc::Rc;

use super::BtrfsError;
use crate::bytes::{le32, le64};
use crate::limits::{MAX_BTRFS_LEVEL, MAX_BTRFS_NODE_VISITS};

/// Size of a node header (`btrfs_header`).
pub const HEADER_LEN: usize = 101;
/// Size of a disk key.
pub const KEY_LEN: usize = 17;
/// Size of a leaf item header (`btrfs_item`).
const ITEM_LEN: usize = 25;
/// Size of an interior node's key pointer (`btrfs_key_ptr`).
const KEY_PTR_LEN: usize = 33;

/// A btrfs key; ordered as btrfs orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Object id.
    pub objectid: u64,
    /// Item type.
    pub ty: u8,
    /// Offset (meaning depends on the type).
    pub offset: u64,
}

impl Key {
    /// A key.
    pub const fn new(objectid: u64, ty: u8, offset: u64) -> Key {
        Key { objectid, ty, offset }
    }

    /// The disk key at `at`.
    pub fn parse(b: &[u8], at: usize) -> Option<Key> {
        Some(Key {
            objectid: le64(b, at)?,
            ty: *b.get(at.checked_add(8)?)?,
            offset: le64(b, at.checked_add(9)?)?,
        })
    }
}

/// The root of a tree: where its top node is and its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Logical address of the top node.
    pub bytenr: u64,
    /// Its level.
    pub level: u8,
}

/// Nodes one operation may still visit.
#[derive(Debug)]
pub struct Budget(u32);

impl Budget {
    /// A fresh budget of [`MAX_BTRFS_NODE_VISITS`].
    pub fn new() -> Budget {
        Budget(MAX_BTRFS_NODE_VISITS)
    }

    /// Spend one visit.
    pub fn spend(&mut self) -> Result<(), BtrfsError> {
        self.0 = self.0.checked_sub(1).ok_or(BtrfsError::TooMany {
            what: "tree nodes visited in one operation",
            cap: usize::try_from(MAX_BTRFS_NODE_VISITS).unwrap_or(usize::MAX),
        })?;
        Ok(())
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

/// The contents of a checked node.
#[derive(Debug)]
pub enum Body {
    /// A leaf: each item's key and the byte range of its data in the node.
    Leaf(Vec<(Key, usize, usize)>),
    /// An interior node: each child's first key and its logical address.
    Interior(Vec<(Key, u64)>),
}

/// One checked node.
#[derive(Debug)]
pub struct Node {
    /// Its level (0 for leaves).
    pub level: u8,
    /// Its items.
    pub body: Body,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What a node read from `logical` must say about itself.
pub struct Expect<'a> {
    /// Where it was read from.
    pub logical: u64,
    /// The level its parent implies.
    pub level: u8,
    /// The filesystem's metadata UUID.
    pub fsid: &'a [u8; 16],
}

/// Check a node's header and items (its checksum is checked by the
/// caller, who knows the algorithm and can try another copy).
pub fn parse_node(bytes: Vec<u8>, want: &Expect<'_>) -> Result<Node, BtrfsError> {
    let logical = want.logical;
    let bad = |what: &'static str| BtrfsError::BadNode { logical, what };
    if bytes.get(0x20..0x30) != Some(want.fsid.as_slice()) {
        return Err(bad("fsid does not match the superblock"));
    }
    if le64(&bytes, 0x30) != Some(logical) {
        return Err(bad("header names another address"));
    }
    let level = *bytes.get(0x64).ok_or(bad("truncated header"))?;
    if level != want.level {
        return Err(BtrfsError::Level {
            logical,
            level,
            expected: want.level,
        });
    }
    let nritems = usize::try_from(le32(&bytes, 0x60).ok_or(bad("truncated header"))?).unwrap_or(usize::MAX);
    let space = bytes.len().saturating_sub(HEADER_LEN);
    let body = if level == 0 {
        if nritems > space / ITEM_LEN {
            return Err(bad("more items than fit the leaf"));
        }
        let mut items = Vec::with_capacity(nritems);
        let mut prev: Option<Key> = None;
        for i in 0..nritems {
            let at = HEADER_LEN.saturating_add(i.saturating_mul(ITEM_LEN));
            let key = Key::parse(&bytes, at).ok_or(bad("truncated item"))?;
            let off = le32(&bytes, at.saturating_add(KEY_LEN)).ok_or(bad("truncated item"))?;
            let size = le32(&bytes, at.saturating_add(KEY_LEN).saturating_add(4)).ok_or(bad("truncated item"))?;
            let start = usize::try_from(off)
                .ok()
                .and_then(|o| o.checked_add(HEADER_LEN))
                .ok_or(bad("item data out of the leaf"))?;
            let end = usize::try_from(size)
                .ok()
                .and_then(|s| start.checked_add(s))
                .filter(|e| *e <= bytes.len())
                .ok_or(bad("item data out of the leaf"))?;
            if prev.is_some_and(|p| p >= key) {
                return Err(bad("keys out of order"));
            }
            prev = Some(key);
            items.push((key, start, end));
        }
        Body::Leaf(items)
    } else {
        if level > MAX_BTRFS_LEVEL {
            return Err(bad("level too high"));
        }
        if nritems == 0 || nritems > space / KEY_PTR_LEN {
            return Err(bad("bad pointer count"));
        }
        let mut ptrs = Vec::with_capacity(nritems);
        let mut prev: Option<Key> = None;
        for i in 0..nritems {
            let at = HEADER_LEN.saturating_add(i.saturating_mul(KEY_PTR_LEN));
            let key = Key::parse(&bytes, at).ok_or(bad("truncated pointer"))?;
            let ptr = le64(&bytes, at.saturating_add(KEY_LEN)).ok_or(bad("truncated pointer"))?;
            if prev.is_some_and(|p| p >= key) {
                return Err(bad("keys out of order"));
            }
            prev = Some(key);
            ptrs.push((key, ptr));
        }
        Body::Interior(ptrs)
    };
    Ok(Node { level, body, bytes })
}

impl Node {
    /// The data of the leaf item `(start, end)`.
    pub fn data(&self, start: usize, end: usize) -> &[u8] {
        self.bytes.get(start..end).unwrap_or_default()
    }
}

/// Something that reads checked nodes (the volume, with its cache).
pub trait NodeSource {
    /// The node at `logical`, which must be at `level`.
    fn node(&self, logical: u64, level: u8, budget: &mut Budget) -> Result<Rc<Node>, BtrfsError>;
}

/// Call `f(key, data)` for every item of the tree with `lo <= key <= hi`,
/// in key order, until `f` breaks.
pub fn scan<S: NodeSource + ?Sized>(
    src: &S,
    root: Root,
    lo: Key,
    hi: Key,
    budget: &mut Budget,
    f: &mut dyn FnMut(Key, &[u8]) -> Result<ControlFlow<()>, BtrfsError>,
) -> Result<(), BtrfsError> {
    scan_from(src, root, lo, hi, budget, f).map(|_| ())
}

fn scan_from<S: NodeSource + ?Sized>(
    src: &S,
    root: Root,
    lo: Key,
    hi: Key,
    budget: &mut Budget,
    f: &mut dyn FnMut(Key, &[u8]) -> Result<ControlFlow<()>, BtrfsError>,
) -> Result<ControlFlow<()>, BtrfsError> {
    if root.level > MAX_BTRFS_LEVEL {
        return Err(BtrfsError::BadNode {
            logical: root.bytenr,
            what: "root level too high",
        });
    }
    let node = src.node(root.bytenr, root.level, budget)?;
    match &node.body {
        Body::Leaf(items) => {
            let first = items.partition_point(|(k, _, _)| *k < lo);
            for (k, s, e) in items.get(first..).unwrap_or_default() {
                if *k > hi {
                    return Ok(ControlFlow::Break(()));
                }
                if f(*k, node.data(*s, *e))?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        }
        Body::Interior(ptrs) => {
            let first = ptrs.partition_point(|(k, _)| *k <= lo).saturating_sub(1);
            // level >= 1 here (interior nodes are checked to be).
            let child_level = root.level.saturating_sub(1);
            for (k, ptr) in ptrs.get(first..).unwrap_or_default() {
                if *k > hi {
                    return Ok(ControlFlow::Break(()));
                }
                let child = Root {
                    bytenr: *ptr,
                    level: child_level,
                };
                if scan_from(src, child, lo, hi, budget, f)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        }
    }
}

/// The data of the item with exactly `key`, if there is one.
pub fn lookup<S: NodeSource + ?Sized>(
    src: &S,
    root: Root,
    key: Key,
    budget: &mut Budget,
) -> Result<Option<Vec<u8>>, BtrfsError> {
    let mut found = None;
    scan(src, root, key, key, budget, &mut |_, d| {
        found = Some(d.to_vec());
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}

/// The first item with `lo <= key <= hi`, if any.
pub fn first<S: NodeSource + ?Sized>(
    src: &S,
    root: Root,
    lo: Key,
    hi: Key,
    budget: &mut Budget,
) -> Result<Option<(Key, Vec<u8>)>, BtrfsError> {
    let mut found = None;
    scan(src, root, lo, hi, budget, &mut |k, d| {
        found = Some((k, d.to_vec()));
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}
