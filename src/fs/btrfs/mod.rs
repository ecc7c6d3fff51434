//! A read-only btrfs reader for one device. Guest data: this runs in the
//! confined parse child and trusts nothing it reads.
//!
//! [`Volume::open`] checks the primary superblock (at 64 KiB: magic,
//! checksum, sizes, checksum type, features), builds the chunk map
//! ([`chunk`]: SINGLE and DUP on this one device, nothing else) and finds
//! the root tree. [`Volume::subvolumes`] lists the default subvolume and
//! every subvolume reachable from the top level through ROOT_REF items,
//! with their paths. A [`Subvol`] is one subvolume's tree: lookups through
//! DIR_ITEM name hashes, listings through DIR_INDEX, inodes, symlinks
//! (inline extents), and file data ([`file`]: inline, regular, prealloc,
//! holes, zlib/lzo/zstd compressed extents).
//!
//! What it must not do: follow a tree pointer without checking the node it
//! reaches ([`tree`]), loop (levels strictly decrease and every operation
//! has a node budget), allocate or decompress from a size it has not
//! capped (every cap is in [`crate::limits`]), panic, or touch anything but
//! its [`Window`]. Metadata checksums are verified (crc32c, xxhash64,
//! sha256, blake2b); file data checksums are not (the kernel also leaves
//! that to reads that fail). A log tree (fsync'd data not yet committed) is
//! ignored, as GRUB does. Paths given to it are symlink-free and absolute;
//! the resolver above it follows links.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod chunk;
pub mod csum;
pub mod file;
pub mod lzo;
pub mod tree;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::rc::Rc;

use chunk::ChunkMap;
use csum::CsumType;
use tree::{Budget, Expect, Key, Node, NodeSource, Root};

use crate::bytes::{le16, le32, le64};
use crate::disk::Window;
use crate::error::escape;
use crate::fs::{EachEntry, FileSystem, FsError, GuestFile, Kind as FsKind, Meta, Run, wrong_type};
use crate::limits::{MAX_BTRFS_CACHED_NODES, MAX_BTRFS_SUBVOLS, MAX_DIR_ENTRIES, MAX_PATH_LEN};

/// Offset of the primary superblock.
pub const SUPER_OFFSET: u64 = 64 * 1024;
/// Size of the superblock.
const SUPER_LEN: usize = 4096;
/// `_BHRfS_M`.
pub const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Offset of the magic within the superblock.
pub const MAGIC_AT: u64 = 0x40;

// Item types.
const INODE_ITEM: u8 = 1;
const INODE_REF: u8 = 12;
const DIR_ITEM: u8 = 84;
const DIR_INDEX: u8 = 96;
const EXTENT_DATA: u8 = 108;
const ROOT_ITEM: u8 = 132;
const ROOT_REF: u8 = 156;

/// The root tree, chunk tree, top-level subvolume ids.
const CHUNK_TREE_OBJECTID: u64 = 3;
const FS_TREE_OBJECTID: u64 = 5;
/// `BTRFS_FIRST_CHUNK_TREE_OBJECTID`.
const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
/// Subvolume ids are 5 or in `[256, 2^64 - 256)`.
const FIRST_FREE_OBJECTID: u64 = 256;
const LAST_FREE_OBJECTID: u64 = u64::MAX - 256;

// Incompat feature bits.
const INCOMPAT_METADATA_UUID: u64 = 1 << 10;
/// Every incompat feature this reader understands (mixed backrefs, default
/// subvolume, mixed groups, lzo, zstd, big metadata, extended irefs,
/// raid56 (refused per chunk), skinny metadata, no holes, metadata uuid,
/// raid1c34 (refused per chunk), zoned, simple quotas). Extent tree v2,
/// the raid stripe tree and anything newer are refused.
const INCOMPAT_KNOWN: u64 = 0x1FFF | (1 << 16);

/// btrfs errors, with the evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtrfsError {
    /// No btrfs magic at 64 KiB.
    #[error("no btrfs superblock")]
    NotBtrfs,
    /// The superblock fails a check.
    #[error("corrupt btrfs superblock: {0}")]
    BadSuperblock(&'static str),
    /// The superblock's checksum does not match.
    #[error("btrfs superblock checksum ({0}) does not match")]
    SuperChecksum(&'static str),
    /// An unknown checksum type.
    #[error("unsupported btrfs checksum type {0}")]
    UnsupportedChecksum(u16),
    /// Incompat features this reader does not know.
    #[error("unsupported btrfs features 0x{0:x}")]
    UnsupportedFeatures(u64),
    /// More than one device.
    #[error("btrfs filesystem spans {0} devices; only single-device filesystems can be read")]
    MultiDevice(u64),
    /// A chunk on another device.
    #[error("btrfs chunk at logical {logical} has a stripe on device {devid}, not this disk")]
    OtherDevice {
        /// The chunk.
        logical: u64,
        /// The device it names.
        devid: u64,
    },
    /// A RAID profile.
    #[error(
        "btrfs chunk at logical {logical} uses a RAID profile (block group flags 0x{flags:x}); only single and dup can be read from one disk"
    )]
    Profile {
        /// The chunk.
        logical: u64,
        /// Its type flags.
        flags: u64,
    },
    /// A chunk item fails a check.
    #[error("corrupt btrfs chunk at logical {logical}: {what}")]
    BadChunk {
        /// The chunk.
        logical: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A chunk lies past the end of the device.
    #[error(
        "btrfs chunk at logical {logical} maps {len} bytes at physical {physical}, past the end of the {dev_len}-byte device"
    )]
    ChunkPastEnd {
        /// The chunk.
        logical: u64,
        /// Its physical start.
        physical: u64,
        /// Its length.
        len: u64,
        /// The device's length.
        dev_len: u64,
    },
    /// A logical address no chunk maps.
    #[error("btrfs logical address {0} is not mapped by any chunk")]
    Unmapped(u64),
    /// A range that leaves its chunk.
    #[error("btrfs range of {len} bytes at logical {logical} crosses a chunk boundary")]
    CrossesChunk {
        /// Start.
        logical: u64,
        /// Length.
        len: u64,
    },
    /// Reading the device failed.
    #[error("cannot read {len} bytes at offset {offset}: {msg}")]
    Io {
        /// Offset within the filesystem.
        offset: u64,
        /// Length.
        len: u64,
        /// The error.
        msg: String,
    },
    /// No copy of a node has the right checksum.
    #[error("btrfs tree node at logical {logical}: {csum} checksum does not match")]
    NodeChecksum {
        /// The node.
        logical: u64,
        /// The algorithm.
        csum: &'static str,
    },
    /// A node fails a check.
    #[error("corrupt btrfs tree node at logical {logical}: {what}")]
    BadNode {
        /// The node.
        logical: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A node at the wrong level (a loop, or a corrupt pointer).
    #[error("btrfs tree node at logical {logical} has level {level}, expected {expected}")]
    Level {
        /// The node.
        logical: u64,
        /// Its level.
        level: u8,
        /// The level its parent implies.
        expected: u8,
    },
    /// A cap was hit.
    #[error("more than {cap} {what}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The cap.
        cap: usize,
    },
    /// An item fails a check.
    #[error("corrupt btrfs item ({objectid}, {ty}, {offset}): {what}")]
    BadItem {
        /// Key objectid.
        objectid: u64,
        /// Key type.
        ty: u8,
        /// Key offset.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A tree that should exist does not.
    #[error("btrfs tree {0} has no root item")]
    NoRoot(u64),
    /// A path does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A path component is not a directory.
    #[error("{0} is not a directory")]
    NotDir(String),
    /// A path has too many components or bytes.
    #[error("path too long: {0}")]
    PathTooLong(String),
    /// A size over its cap.
    #[error("{what} of {len} bytes is over the {cap}-byte limit")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// An extent this reader cannot decode.
    #[error("unsupported btrfs extent in inode {ino} at file offset {offset}: {what}")]
    Unsupported {
        /// The inode.
        ino: u64,
        /// The file offset.
        offset: u64,
        /// What.
        what: &'static str,
    },
    /// Decompression failed.
    #[error("cannot decompress {algo} extent at logical {logical}: {msg}")]
    Decompress {
        /// zlib, lzo or zstd.
        algo: &'static str,
        /// The extent's disk address (0 for inline).
        logical: u64,
        /// What went wrong.
        msg: String,
    },
}

/// The parts of the superblock this reader uses.
#[derive(Clone, Debug)]
pub struct Superblock {
    /// Filesystem UUID.
    pub fsid: [u8; 16],
    /// UUID stamped in tree nodes (fsid unless METADATA_UUID).
    pub metadata_uuid: [u8; 16],
    /// Root tree.
    pub root: Root,
    /// Chunk tree.
    pub chunk_root: Root,
    /// Sector size.
    pub sectorsize: u32,
    /// Node size.
    pub nodesize: u32,
    /// Checksum algorithm.
    pub csum: CsumType,
    /// The root tree directory holding "default" (normally 6).
    pub root_dir_objectid: u64,
    /// This device's id.
    pub devid: u64,
    /// Label (up to the first NUL).
    pub label: Vec<u8>,
    /// The sys_chunk_array bytes.
    pub sys_array: Vec<u8>,
}

fn sb_uuid(sb: &[u8], at: usize) -> Result<[u8; 16], BtrfsError> {
    sb.get(at..at.saturating_add(16))
        .and_then(|s| s.try_into().ok())
        .ok_or(BtrfsError::BadSuperblock("truncated"))
}

/// Parse and check a superblock (4096 bytes).
pub fn parse_superblock(sb: &[u8]) -> Result<Superblock, BtrfsError> {
    let u64_at = |at| le64(sb, at).ok_or(BtrfsError::BadSuperblock("truncated"));
    let u32_at = |at| le32(sb, at).ok_or(BtrfsError::BadSuperblock("truncated"));
    if sb.get(0x40..0x48) != Some(MAGIC.as_slice()) {
        return Err(BtrfsError::NotBtrfs);
    }
    let raw_csum = le16(sb, 0xc4).ok_or(BtrfsError::BadSuperblock("truncated"))?;
    let csum = CsumType::from_raw(raw_csum).ok_or(BtrfsError::UnsupportedChecksum(raw_csum))?;
    let (stored, body) = (sb.get(..32), sb.get(32..SUPER_LEN));
    match (stored, body) {
        (Some(s), Some(b)) if csum.verify(b, s) => {}
        _ => return Err(BtrfsError::SuperChecksum(csum.name())),
    }
    if u64_at(0x30)? != SUPER_OFFSET {
        return Err(BtrfsError::BadSuperblock("superblock names another offset"));
    }
    let sectorsize = u32_at(0x90)?;
    let nodesize = u32_at(0x94)?;
    if !sectorsize.is_power_of_two() || !(4096..=65536).contains(&sectorsize) {
        return Err(BtrfsError::BadSuperblock(
            "sector size not a power of two in 4 KiB..64 KiB",
        ));
    }
    if !nodesize.is_power_of_two() || nodesize < sectorsize || nodesize > 65536 {
        return Err(BtrfsError::BadSuperblock(
            "node size not a power of two in sector size..64 KiB",
        ));
    }
    let num_devices = u64_at(0x88)?;
    if num_devices != 1 {
        return Err(BtrfsError::MultiDevice(num_devices));
    }
    let incompat = u64_at(0xbc)?;
    if incompat & !INCOMPAT_KNOWN != 0 {
        return Err(BtrfsError::UnsupportedFeatures(incompat & !INCOMPAT_KNOWN));
    }
    let byte = |at: usize| sb.get(at).copied().ok_or(BtrfsError::BadSuperblock("truncated"));
    let (root_level, chunk_level) = (byte(0xc6)?, byte(0xc7)?);
    if root_level > crate::limits::MAX_BTRFS_LEVEL || chunk_level > crate::limits::MAX_BTRFS_LEVEL {
        return Err(BtrfsError::BadSuperblock("tree level too high"));
    }
    let sys_size = usize::try_from(u32_at(0xa0)?).unwrap_or(usize::MAX);
    if sys_size > 2048 {
        return Err(BtrfsError::BadSuperblock("sys_chunk_array larger than 2048 bytes"));
    }
    let sys_array = sb
        .get(0x32b..0x32b_usize.saturating_add(sys_size))
        .ok_or(BtrfsError::BadSuperblock("truncated"))?
        .to_vec();
    let fsid = sb_uuid(sb, 0x20)?;
    let metadata_uuid = if incompat & INCOMPAT_METADATA_UUID != 0 {
        sb_uuid(sb, 0x23b)?
    } else {
        fsid
    };
    let label = sb.get(0x12b..0x22b).unwrap_or_default();
    let label = label.split(|b| *b == 0).next().unwrap_or_default().to_vec();
    Ok(Superblock {
        fsid,
        metadata_uuid,
        root: Root {
            bytenr: u64_at(0x50)?,
            level: root_level,
        },
        chunk_root: Root {
            bytenr: u64_at(0x58)?,
            level: chunk_level,
        },
        sectorsize,
        nodesize,
        csum,
        root_dir_objectid: u64_at(0x80)?,
        devid: u64_at(0xc9)?,
        label,
        sys_array,
    })
}

/// Whether the window holds the btrfs magic (a cheap probe).
pub fn has_magic(w: &Window) -> bool {
    let mut m = [0u8; 8];
    w.read_exact_at(SUPER_OFFSET.saturating_add(MAGIC_AT), &mut m).is_ok() && &m == MAGIC
}

/// One opened btrfs filesystem: superblock, chunk map, node cache.
pub struct Volume {
    w: Window,
    sb: Superblock,
    chunks: ChunkMap,
    cache: RefCell<HashMap<u64, Rc<Node>>>,
    /// Subvolume roots already looked up.
    roots: RefCell<HashMap<u64, Option<SubvolRoot>>>,
}

/// Where a subvolume's tree is and its root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubvolRoot {
    /// Subvolume id.
    pub id: u64,
    /// Its tree.
    pub root: Root,
    /// Its root directory inode (256).
    pub dirid: u64,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("fsid", &self.sb.fsid)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl NodeSource for Volume {
    fn node(&self, logical: u64, level: u8, budget: &mut Budget) -> Result<Rc<Node>, BtrfsError> {
        budget.spend()?;
        if let Some(n) = self.cache.borrow().get(&logical) {
            if n.level != level {
                return Err(BtrfsError::Level {
                    logical,
                    level: n.level,
                    expected: level,
                });
            }
            return Ok(n.clone());
        }
        let nodesize = usize::try_from(self.sb.nodesize).unwrap_or(usize::MAX);
        let (copies, left) = self.chunks.map(logical)?;
        if left < u64::from(self.sb.nodesize) {
            return Err(BtrfsError::CrossesChunk {
                logical,
                len: u64::from(self.sb.nodesize),
            });
        }
        let mut last = BtrfsError::Unmapped(logical);
        for phys in copies {
            let mut buf = vec![0u8; nodesize];
            self.read(phys, &mut buf)?;
            let ok = match (buf.get(..32), buf.get(32..)) {
                (Some(s), Some(b)) => self.sb.csum.verify(b, s),
                _ => false,
            };
            if !ok {
                last = BtrfsError::NodeChecksum {
                    logical,
                    csum: self.sb.csum.name(),
                };
                continue;
            }
            let expect = Expect {
                logical,
                level,
                fsid: &self.sb.metadata_uuid,
            };
            match tree::parse_node(buf, &expect) {
                Ok(n) => {
                    let n = Rc::new(n);
                    let mut cache = self.cache.borrow_mut();
                    if cache.len() >= MAX_BTRFS_CACHED_NODES {
                        cache.clear();
                    }
                    cache.insert(logical, n.clone());
                    return Ok(n);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Volume {
    /// Open the btrfs filesystem in `w`.
    pub fn open(w: Window) -> Result<Rc<Volume>, BtrfsError> {
        let mut sbb = vec![0u8; SUPER_LEN];
        w.read_exact_at(SUPER_OFFSET, &mut sbb)
            .map_err(|_| BtrfsError::NotBtrfs)?;
        let sb = parse_superblock(&sbb)?;
        let boot = chunk::parse_sys_array(&sb.sys_array, sb.devid, w.len())?;
        let mut vol = Volume {
            w,
            sb,
            chunks: boot,
            cache: RefCell::new(HashMap::new()),
            roots: RefCell::new(HashMap::new()),
        };
        // Read every chunk item of the chunk tree into a fresh map (the
        // bootstrap map is what reads it).
        let mut full = ChunkMap::default();
        let (devid, dev_len) = (vol.sb.devid, vol.w.len());
        let mut budget = Budget::new();
        let lo = Key::new(FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM, 0);
        let hi = Key::new(FIRST_CHUNK_TREE_OBJECTID, chunk::CHUNK_ITEM, u64::MAX);
        tree::scan(&vol, vol.sb.chunk_root, lo, hi, &mut budget, &mut |k, d| {
            let (c, _) = chunk::parse_chunk(k.offset, d, devid, dev_len)?;
            full.insert(c)?;
            Ok(ControlFlow::Continue(()))
        })?;
        // System chunks must also be in the chunk tree; keep the bootstrap
        // ones if the tree lacks them (as the kernel does).
        let boot = std::mem::take(&mut vol.chunks);
        for c in boot.iter() {
            full.insert(c.clone())?;
        }
        vol.chunks = full;
        vol.cache.borrow_mut().clear();
        let _ = CHUNK_TREE_OBJECTID;
        Ok(Rc::new(vol))
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The chunk map.
    pub fn chunks(&self) -> &ChunkMap {
        &self.chunks
    }

    /// The window the filesystem lives in.
    pub fn window(&self) -> &Window {
        &self.w
    }

    /// Read `buf.len()` bytes at physical offset `phys` (within the window).
    pub fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), BtrfsError> {
        self.w.read_exact_at(phys, buf).map_err(|e| BtrfsError::Io {
            offset: phys,
            len: u64::try_from(buf.len()).unwrap_or(u64::MAX),
            msg: e.to_string(),
        })
    }

    /// The root of subvolume (or tree) `id`, `None` if it has no ROOT_ITEM.
    pub fn subvol_root(&self, id: u64) -> Result<Option<SubvolRoot>, BtrfsError> {
        if let Some(r) = self.roots.borrow().get(&id) {
            return Ok(*r);
        }
        let mut budget = Budget::new();
        let lo = Key::new(id, ROOT_ITEM, 0);
        let hi = Key::new(id, ROOT_ITEM, u64::MAX);
        let found = tree::first(self, self.sb.root, lo, hi, &mut budget)?;
        let r = match found {
            None => None,
            Some((k, d)) => {
                let bad = |what| BtrfsError::BadItem {
                    objectid: k.objectid,
                    ty: k.ty,
                    offset: k.offset,
                    what,
                };
                let dirid = le64(&d, 168).ok_or(bad("truncated root item"))?;
                let bytenr = le64(&d, 176).ok_or(bad("truncated root item"))?;
                let level = *d.get(238).ok_or(bad("truncated root item"))?;
                Some(SubvolRoot {
                    id,
                    root: Root { bytenr, level },
                    dirid,
                })
            }
        };
        let mut roots = self.roots.borrow_mut();
        if roots.len() >= MAX_BTRFS_SUBVOLS.saturating_mul(4) {
            roots.clear();
        }
        roots.insert(id, r);
        Ok(r)
    }

    /// The default subvolume's id (`btrfs subvolume set-default`): the
    /// DIR_ITEM "default" of the root tree directory, else the top level.
    pub fn default_subvol(&self) -> Result<u64, BtrfsError> {
        let dir = self.sb.root_dir_objectid;
        let name = b"default";
        let key = Key::new(dir, DIR_ITEM, u64::from(csum::name_hash(name)));
        let mut budget = Budget::new();
        let Some(d) = tree::lookup(self, self.sb.root, key, &mut budget)? else {
            return Ok(FS_TREE_OBJECTID);
        };
        let mut found = None;
        for_each_dir_entry(key, &d, &mut |e| {
            if e.name == name {
                found = Some(e.location.objectid);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        Ok(found.unwrap_or(FS_TREE_OBJECTID))
    }

    /// Every subvolume reachable from the top level through ROOT_REF
    /// items, breadth first, with its path from the top level (`b""` for
    /// the top level itself); the default subvolume first. At most
    /// [`MAX_BTRFS_SUBVOLS`] are examined; past that the rest are dropped
    /// with a warning.
    pub fn subvolumes(self: &Rc<Self>) -> Result<Vec<Subvol>, BtrfsError> {
        let default = self.default_subvol()?;
        let mut found: Vec<(u64, Vec<u8>)> = vec![(FS_TREE_OBJECTID, Vec::new())];
        let mut seen: HashSet<u64> = HashSet::from([FS_TREE_OBJECTID]);
        let mut queue: VecDeque<usize> = VecDeque::from([0]);
        'bfs: while let Some(i) = queue.pop_front() {
            let Some((parent, ppath)) = found.get(i).cloned() else {
                break;
            };
            let Some(proot) = self.subvol_root(parent)? else {
                continue;
            };
            let mut refs = Vec::new();
            let mut budget = Budget::new();
            let lo = Key::new(parent, ROOT_REF, 0);
            let hi = Key::new(parent, ROOT_REF, u64::MAX);
            tree::scan(&**self, self.sb.root, lo, hi, &mut budget, &mut |k, d| {
                let bad = |what| BtrfsError::BadItem {
                    objectid: k.objectid,
                    ty: k.ty,
                    offset: k.offset,
                    what,
                };
                let dirid = le64(d, 0).ok_or(bad("truncated root ref"))?;
                let len = usize::from(le16(d, 16).ok_or(bad("truncated root ref"))?);
                let name = d
                    .get(18..18_usize.saturating_add(len))
                    .ok_or(bad("truncated root ref"))?;
                refs.push((k.offset, dirid, name.to_vec()));
                if refs.len() > MAX_BTRFS_SUBVOLS {
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            })?;
            for (child, dirid, name) in refs {
                if !(FIRST_FREE_OBJECTID..=LAST_FREE_OBJECTID).contains(&child) || !seen.insert(child) {
                    continue;
                }
                if found.len() >= MAX_BTRFS_SUBVOLS {
                    log::warn!("btrfs: more than {MAX_BTRFS_SUBVOLS} subvolumes; the rest are not examined");
                    break 'bfs;
                }
                let Ok(dir) = self.dir_path(proot, dirid) else { continue };
                let mut path = ppath.clone();
                for part in [dir.as_slice(), name.as_slice()] {
                    if !part.is_empty() {
                        if !path.is_empty() {
                            path.push(b'/');
                        }
                        path.extend_from_slice(part);
                    }
                }
                if path.len() > MAX_PATH_LEN {
                    continue;
                }
                found.push((child, path));
                queue.push_back(found.len().saturating_sub(1));
            }
        }
        let mut out = Vec::new();
        let pos = found.iter().position(|(id, _)| *id == default);
        let order = pos.into_iter().chain((0..found.len()).filter(|i| Some(*i) != pos));
        for i in order {
            let Some((id, path)) = found.get(i) else { continue };
            if let Some(root) = self.subvol_root(*id)? {
                out.push(Subvol {
                    vol: self.clone(),
                    root,
                    path: path.clone(),
                });
            }
        }
        if pos.is_none() {
            // A default subvolume not reachable from the top level.
            if let Some(root) = self.subvol_root(default)? {
                out.insert(
                    0,
                    Subvol {
                        vol: self.clone(),
                        root,
                        path: format!("<subvolume {default}>").into_bytes(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The path of directory `dirid` within subvolume `sv`, through its
    /// INODE_REF items up to the subvolume's root directory.
    fn dir_path(&self, sv: SubvolRoot, dirid: u64) -> Result<Vec<u8>, BtrfsError> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut ino = dirid;
        let mut total = 0usize;
        while ino != sv.dirid {
            let mut budget = Budget::new();
            let lo = Key::new(ino, INODE_REF, 0);
            let hi = Key::new(ino, INODE_REF, u64::MAX);
            let (k, d) = tree::first(self, sv.root, lo, hi, &mut budget)?.ok_or(BtrfsError::BadItem {
                objectid: ino,
                ty: INODE_REF,
                offset: 0,
                what: "directory has no inode ref",
            })?;
            let len = usize::from(le16(&d, 8).unwrap_or(0));
            let name = d.get(10..10_usize.saturating_add(len)).unwrap_or_default();
            total = total.saturating_add(len).saturating_add(1);
            if total > MAX_PATH_LEN || k.offset == ino {
                return Err(BtrfsError::PathTooLong(format!(
                    "directory {dirid} of subvolume {}",
                    sv.id
                )));
            }
            parts.push(name.to_vec());
            ino = k.offset;
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }
}

/// One directory entry of a DIR_ITEM or DIR_INDEX item.
pub struct DirEntry<'a> {
    /// Where it points: an inode (INODE_ITEM) or a subvolume (ROOT_ITEM).
    pub location: Key,
    /// `BTRFS_FT_*`.
    pub ty: u8,
    /// Its name.
    pub name: &'a [u8],
}

/// Call `f` for each entry packed in a DIR_ITEM/DIR_INDEX item.
fn for_each_dir_entry<'a>(
    key: Key,
    d: &'a [u8],
    f: &mut dyn FnMut(DirEntry<'a>) -> ControlFlow<()>,
) -> Result<(), BtrfsError> {
    let bad = |what| BtrfsError::BadItem {
        objectid: key.objectid,
        ty: key.ty,
        offset: key.offset,
        what,
    };
    let mut at = 0usize;
    while at < d.len() {
        let location = Key::parse(d, at).ok_or(bad("truncated dir item"))?;
        let data_len = usize::from(le16(d, at.saturating_add(25)).ok_or(bad("truncated dir item"))?);
        let name_len = usize::from(le16(d, at.saturating_add(27)).ok_or(bad("truncated dir item"))?);
        let ty = *d.get(at.saturating_add(29)).ok_or(bad("truncated dir item"))?;
        let start = at.saturating_add(30);
        let name = d
            .get(start..start.saturating_add(name_len))
            .ok_or(bad("dir item name out of the item"))?;
        if f(DirEntry { location, ty, name }).is_break() {
            return Ok(());
        }
        at = start.saturating_add(name_len).saturating_add(data_len);
    }
    Ok(())
}

/// What kind of file an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else.
    Special,
}

/// An inode's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Kind.
    pub kind: Kind,
    /// Size in bytes.
    pub len: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Inode number within its subvolume.
    pub ino: u64,
    /// The subvolume holding the inode.
    pub subvol: u64,
}

/// A resolved path: an inode in some subvolume, or the empty directory
/// the kernel shows for a subvolume entry whose subvolume is gone (e.g.
/// nested subvolumes inside a snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// An inode.
    Inode(SubvolRoot, u64),
    /// An empty placeholder directory.
    Empty,
}

/// `BTRFS_EMPTY_SUBVOL_DIR_OBJECTID`, the placeholder's inode number.
const EMPTY_SUBVOL_DIR: u64 = 2;

/// One subvolume: a readable tree of files.
#[derive(Clone)]
pub struct Subvol {
    vol: Rc<Volume>,
    root: SubvolRoot,
    path: Vec<u8>,
}

fn kind_of_mode(mode: u32) -> Kind {
    match mode & 0o170_000 {
        0o040_000 => Kind::Dir,
        0o100_000 => Kind::File,
        0o120_000 => Kind::Symlink,
        _ => Kind::Special,
    }
}

fn kind_of_ft(ft: u8) -> Kind {
    match ft {
        1 => Kind::File,
        2 => Kind::Dir,
        7 => Kind::Symlink,
        _ => Kind::Special,
    }
}

impl Subvol {
    /// The volume.
    pub fn volume(&self) -> &Rc<Volume> {
        &self.vol
    }

    /// Subvolume id (5 for the top level).
    pub fn id(&self) -> u64 {
        self.root.id
    }

    /// Path from the top level (`b""` for the top level).
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// For logs: `btrfs subvolume @nix (id 257)`.
    pub fn describe(&self) -> String {
        if self.root.id == FS_TREE_OBJECTID {
            format!("btrfs top-level subvolume (id {FS_TREE_OBJECTID})")
        } else {
            format!(
                "btrfs subvolume {} (id {})",
                crate::error::EscapedBare(&self.path),
                self.root.id
            )
        }
    }

    /// The inode `ino` of subvolume `sv`.
    pub fn stat_inode(&self, sv: SubvolRoot, ino: u64) -> Result<Stat, BtrfsError> {
        let mut budget = Budget::new();
        let d = tree::lookup(&*self.vol, sv.root, Key::new(ino, INODE_ITEM, 0), &mut budget)?.ok_or(
            BtrfsError::BadItem {
                objectid: ino,
                ty: INODE_ITEM,
                offset: 0,
                what: "missing inode item",
            },
        )?;
        let bad = BtrfsError::BadItem {
            objectid: ino,
            ty: INODE_ITEM,
            offset: 0,
            what: "truncated inode item",
        };
        let len = le64(&d, 16).ok_or(bad)?;
        let mode = le32(&d, 52).unwrap_or(0);
        let mtime = d
            .get(136..144)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
            .unwrap_or(0);
        Ok(Stat {
            kind: kind_of_mode(mode),
            len,
            mtime,
            ino,
            subvol: sv.id,
        })
    }

    /// Metadata of a resolved location.
    pub fn stat_loc(&self, loc: Loc) -> Result<Stat, BtrfsError> {
        match loc {
            Loc::Inode(sv, ino) => self.stat_inode(sv, ino),
            Loc::Empty => Ok(Stat {
                kind: Kind::Dir,
                len: 0,
                mtime: 0,
                ino: EMPTY_SUBVOL_DIR,
                subvol: self.root.id,
            }),
        }
    }

    /// Where a directory entry of subvolume `sv` leads.
    fn follow(&self, sv: SubvolRoot, location: Key) -> Result<Loc, BtrfsError> {
        match location.ty {
            INODE_ITEM => Ok(Loc::Inode(sv, location.objectid)),
            ROOT_ITEM => {
                let child = location.objectid;
                // Like the kernel: the subvolume shows only where its
                // ROOT_REF from this subvolume exists.
                let mut budget = Budget::new();
                let r = tree::lookup(
                    &*self.vol,
                    self.vol.sb.root,
                    Key::new(sv.id, ROOT_REF, child),
                    &mut budget,
                )?;
                match (r, self.vol.subvol_root(child)?) {
                    (Some(_), Some(c)) if child != sv.id => Ok(Loc::Inode(c, c.dirid)),
                    _ => Ok(Loc::Empty),
                }
            }
            _ => Err(BtrfsError::BadItem {
                objectid: location.objectid,
                ty: location.ty,
                offset: location.offset,
                what: "directory entry points at neither an inode nor a subvolume",
            }),
        }
    }

    /// Look `name` up in directory `dir` through its DIR_ITEM hash.
    fn lookup_in(&self, dir: Loc, name: &[u8]) -> Result<Option<Loc>, BtrfsError> {
        let Loc::Inode(sv, ino) = dir else { return Ok(None) };
        let key = Key::new(ino, DIR_ITEM, u64::from(csum::name_hash(name)));
        let mut budget = Budget::new();
        let Some(d) = tree::lookup(&*self.vol, sv.root, key, &mut budget)? else {
            return Ok(None);
        };
        let mut location = None;
        for_each_dir_entry(key, &d, &mut |e| {
            if e.name == name {
                location = Some(e.location);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        location.map(|l| self.follow(sv, l)).transpose()
    }

    /// Resolve a symlink-free absolute path (`/` is this subvolume's root
    /// directory; subvolumes below it are entered as the kernel does).
    pub fn resolve(&self, path: &[u8]) -> Result<(Loc, Stat), BtrfsError> {
        if path.len() > MAX_PATH_LEN {
            return Err(BtrfsError::PathTooLong(escape(path.get(..64).unwrap_or_default())));
        }
        let mut loc = Loc::Inode(self.root, self.root.dirid);
        let mut stat = self.stat_loc(loc)?;
        let mut walked = 0usize;
        for comp in path.split(|b| *b == b'/') {
            walked = walked.saturating_add(comp.len()).saturating_add(1);
            if comp.is_empty() || comp == b"." {
                continue;
            }
            let so_far = || escape(path.get(..walked.saturating_sub(1)).unwrap_or(path));
            if stat.kind != Kind::Dir {
                return Err(BtrfsError::NotDir(escape(
                    path.get(..walked.saturating_sub(comp.len()).saturating_sub(2))
                        .unwrap_or(path),
                )));
            }
            if comp == b".." {
                return Err(BtrfsError::NotFound(so_far()));
            }
            loc = self
                .lookup_in(loc, comp)?
                .ok_or_else(|| BtrfsError::NotFound(so_far()))?;
            stat = self.stat_loc(loc)?;
        }
        Ok((loc, stat))
    }

    /// Metadata of `path`, not following a final symlink.
    pub fn lstat(&self, path: &[u8]) -> Result<Stat, BtrfsError> {
        Ok(self.resolve(path)?.1)
    }

    /// Call `each(name, kind, stat)` for every entry of directory `path`
    /// in DIR_INDEX order (what `readdir` returns), at most
    /// [`MAX_DIR_ENTRIES`]; `stat` is read when `with_stat`. `conv` turns
    /// this reader's errors into the callback's.
    pub fn read_dir<E>(
        &self,
        path: &[u8],
        with_stat: bool,
        conv: &dyn Fn(BtrfsError) -> E,
        each: &mut dyn FnMut(&[u8], Kind, Option<Stat>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (loc, stat) = self.resolve(path).map_err(conv)?;
        if stat.kind != Kind::Dir {
            return Err(conv(BtrfsError::NotDir(escape(path))));
        }
        let Loc::Inode(sv, ino) = loc else { return Ok(()) };
        let entries = self.dir_entries(sv, ino).map_err(conv)?;
        for (name, kind, location) in entries {
            let st = if with_stat {
                Some(self.follow(sv, location).and_then(|l| self.stat_loc(l)).map_err(conv)?)
            } else {
                None
            };
            let kind = st.map_or(kind, |s| s.kind);
            each(&name, kind, st)?;
        }
        Ok(())
    }

    /// The DIR_INDEX entries of directory `ino` of `sv`: name, kind from
    /// the entry, where it points.
    fn dir_entries(&self, sv: SubvolRoot, ino: u64) -> Result<Vec<(Vec<u8>, Kind, Key)>, BtrfsError> {
        let mut entries: Vec<(Vec<u8>, Kind, Key)> = Vec::new();
        let mut budget = Budget::new();
        let lo = Key::new(ino, DIR_INDEX, 0);
        let hi = Key::new(ino, DIR_INDEX, u64::MAX);
        let cap = usize::try_from(MAX_DIR_ENTRIES).unwrap_or(usize::MAX);
        tree::scan(&*self.vol, sv.root, lo, hi, &mut budget, &mut |k, d| {
            let mut over = false;
            for_each_dir_entry(k, d, &mut |e| {
                if entries.len() >= cap {
                    over = true;
                } else {
                    entries.push((e.name.to_vec(), kind_of_ft(e.ty), e.location));
                }
                ControlFlow::Break(())
            })?;
            if over {
                return Err(BtrfsError::TooMany {
                    what: "directory entries",
                    cap,
                });
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(entries)
    }

    /// The target of the symlink at `path` (its inline extent).
    pub fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, BtrfsError> {
        let (loc, stat) = self.resolve(path)?;
        let Loc::Inode(sv, ino) = loc else {
            return Err(BtrfsError::NotFound(escape(path)));
        };
        if stat.kind != Kind::Symlink {
            return Err(BtrfsError::NotFound(escape(path)));
        }
        let cap = u64::try_from(MAX_PATH_LEN).unwrap_or(u64::MAX);
        if stat.len == 0 || stat.len > cap {
            return Err(BtrfsError::TooLarge {
                what: "symlink target",
                len: stat.len,
                cap,
            });
        }
        let f = Rc::new(file::FileMap::load(&self.vol, sv, ino, stat.len)?);
        let mut r = f.reader();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut r, cap), &mut out).map_err(|e| {
            BtrfsError::Decompress {
                algo: "symlink",
                logical: 0,
                msg: e.to_string(),
            }
        })?;
        Ok(out)
    }

    /// The extent map of the regular file at `path`.
    pub fn file_map(&self, path: &[u8]) -> Result<Rc<file::FileMap>, BtrfsError> {
        let (loc, stat) = self.resolve(path)?;
        let Loc::Inode(sv, ino) = loc else {
            return Err(BtrfsError::NotFound(escape(path)));
        };
        if stat.kind != Kind::File {
            return Err(BtrfsError::NotFound(escape(path)));
        }
        Ok(Rc::new(file::FileMap::load(&self.vol, sv, ino, stat.len)?))
    }
}

fn fs_err(path: &[u8], e: BtrfsError) -> FsError {
    match e {
        BtrfsError::NotFound(p) | BtrfsError::NotDir(p) => FsError::NotFound(p),
        e => FsError::Btrfs {
            path: escape(path),
            source: e,
        },
    }
}

fn fs_kind(k: Kind) -> FsKind {
    match k {
        Kind::File => FsKind::File,
        Kind::Dir => FsKind::Dir,
        Kind::Symlink => FsKind::Symlink,
        Kind::Special => FsKind::Special,
    }
}

fn meta_of(s: Stat) -> Meta {
    Meta {
        kind: fs_kind(s.kind),
        len: s.len,
        mtime: s.mtime,
        ino: Some(s.ino),
    }
}

impl FileSystem for Subvol {
    fn kind(&self) -> &'static str {
        "btrfs"
    }

    fn describe(&self) -> String {
        Subvol::describe(self)
    }

    fn uuid(&self) -> Option<[u8; 16]> {
        Some(self.vol.sb.fsid)
    }

    fn label(&self) -> Option<Vec<u8>> {
        let l = &self.vol.sb.label;
        (!l.is_empty()).then(|| l.clone())
    }

    fn lstat(&self, path: &[u8]) -> Result<Meta, FsError> {
        Subvol::lstat(self, path).map(meta_of).map_err(|e| fs_err(path, e))
    }

    fn read_link(&self, path: &[u8], _meta: &Meta) -> Result<Vec<u8>, FsError> {
        Subvol::read_link(self, path).map_err(|e| fs_err(path, e))
    }

    fn open(&self, path: &[u8], meta: &Meta) -> Result<GuestFile<'_>, FsError> {
        if meta.kind != FsKind::File {
            return Err(wrong_type(path, meta.kind, "regular file"));
        }
        let map = self.file_map(path).map_err(|e| fs_err(path, e))?;
        Ok(GuestFile(Box::new(map.reader())))
    }

    fn data_runs(&self, path: &[u8], meta: &Meta) -> Result<Option<Vec<Run>>, FsError> {
        if meta.kind != FsKind::File {
            return Err(wrong_type(path, meta.kind, "regular file"));
        }
        let map = self.file_map(path).map_err(|e| fs_err(path, e))?;
        Ok(map.data_runs().map(|runs| {
            runs.into_iter()
                .map(|(disk_offset, len)| Run { disk_offset, len })
                .collect()
        }))
    }

    fn read_dir(&self, path: &[u8], _meta: &Meta, with_meta: bool, each: &mut EachEntry<'_>) -> Result<(), FsError> {
        let conv = |e| fs_err(path, e);
        Subvol::read_dir(self, path, with_meta, &conv, &mut |name, kind, st| {
            each(name, fs_kind(kind), st.map(meta_of))
        })
    }
}

/// Every subvolume of the btrfs filesystem in `w`, the default first.
pub fn open_subvolumes(w: Window) -> Result<Vec<Subvol>, BtrfsError> {
    Volume::open(w)?.subvolumes()
}

#[cfg(test)]
mod tests;
