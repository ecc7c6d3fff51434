//! Every cap that bounds what a guest disk can make nixboot do.
//!
//! A guest owns its disk and nixboot runs as root in dom0, so every size,
//! count, depth and length that comes from guest data is checked against
//! one of these named constants *before* the loop or allocation it bounds.
//! The README's "Limits" table mirrors this file; change both together.
//!
//! The kernel and initrd caps are the only ones an admin may change
//! (`--max-kernel-size`, `--max-initrd-size`); the rest are structural.

/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;

/// Default cap on the kernel image copied into dom0 (512 MiB). libxc
/// itself accepts up to 1 GiB (`XC_DOM_DECOMPRESS_MAX`).
pub const DEFAULT_MAX_KERNEL: u64 = 512 * MIB;

/// Default cap on the initrd copied into dom0 (512 MiB).
pub const DEFAULT_MAX_INITRD: u64 = 512 * MIB;

/// The highest value `--max-kernel-size`/`--max-initrd-size` accept:
/// libxc refuses anything larger anyway.
pub const MAX_BOOT_FILE: u64 = 1024 * MIB;

/// Largest `boot.json` read from a generation (1 MiB; real ones are ~1 KiB).
pub const MAX_BOOTSPEC: u64 = MIB;

/// Largest small text file read from a toplevel (`init` path files,
/// `kernel-params`, `nixos-version`, `system`).
pub const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Symlinks followed while resolving one guest path (the kernel's own
/// `MAXSYMLINKS` is 40).
pub const MAX_SYMLINKS: u32 = 40;

/// Longest guest path, and longest symlink target, in bytes (`PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Path components processed in one resolution: a backstop against any
/// walk that would otherwise not terminate.
pub const MAX_RESOLVE_STEPS: u32 = 4096;

/// Directory entries read from `/nix/var/nix/profiles` (and any other
/// directory nixboot lists) before giving up.
pub const MAX_DIR_ENTRIES: u32 = 100_000;

/// Generations kept from the profile directory: the newest ones win.
/// GRUB keeps 100 by default; this only guards memory and time.
pub const MAX_GENERATIONS: usize = 10_000;

/// Named profiles (`nixos-rebuild -p NAME`, in
/// `/nix/var/nix/profiles/system-profiles`) read; the first ones by name
/// win. Each is listed, and its link read, when nixboot lists or searches
/// every profile.
pub const MAX_PROFILES: usize = 256;

/// Specialisations kept per generation.
pub const MAX_SPECIALISATIONS: usize = 256;

/// Kernel parameters in one entry.
pub const MAX_KERNEL_PARAMS: usize = 512;

/// What a PV guest receives of its command line: `MAX_GUEST_CMDLINE`
/// (1024) minus the terminating NUL (xen/include/public/xen.h).
pub const MAX_CMDLINE: usize = 1023;

/// One item of the result file must stay below libxl's 8192-byte buffer
/// (`PATH_MAX * 2`, libxl_bootloader.c `parse_bootloader_result`).
pub const MAX_RESULT_ITEM: usize = 8191;

/// Partitions considered on one disk (GPT entries with a type, MBR
/// primaries and logical partitions together).
pub const MAX_PARTITIONS: usize = 128;

/// Entries a GPT header may declare (the UEFI minimum array is 128).
pub const MAX_GPT_ENTRIES: u32 = 1024;

/// Largest GPT entry size accepted (UEFI: a power of two, at least 128).
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;

/// Extended boot records followed in one MBR extended chain.
pub const MAX_EBR_HOPS: u32 = 64;

/// Disk ranges the parse child may announce for the kernel and initrd
/// together (a file is at most `fs::ext4::MAX_FILE_EXTENTS` extents, with
/// holes between them; real ones have a few). 24 bytes each as they wait
/// in the parent.
pub const MAX_RUNS: usize = 1 << 18;

/// Largest frame the parse child may send to the parent (metadata; file
/// data is sent in chunks of at most this size too).
pub const MAX_FRAME: usize = 4 * MIB as usize;

/// Bytes of `nixboot list` output the parent accepts from the parse child
/// in all (it arrives as one frame per generation; 10,000 ordinary
/// generations are ~15 MiB).
pub const MAX_LISTING: usize = 64 * MIB as usize;

/// Address-space limit of the parse child (bytes).
pub const CHILD_ADDRESS_SPACE: u64 = 512 * MIB;

/// Wall-clock deadline for the parse child, in seconds: it is killed after
/// this. libxl's own restricted-mode timeout is 120 s.
pub const CHILD_DEADLINE_SECS: u64 = 60;

/// Bytes of a kernel payload decompressed to look for Xen ELF notes.
pub const MAX_KERNEL_DECOMPRESSED: u64 = 256 * MIB;

/// Largest decompressed kernel ELF (vmlinux) `--unpack-kernel` hands to
/// libxl (the copy is also bound by `--max-kernel-size`). NixOS's vmlinux
/// is 40-70 MiB; libxc's own decompression limit is 1 GiB.
pub const MAX_UNPACKED_KERNEL: u64 = 256 * MIB;

/// Kernels remembered as PV-bootable in the dom0 cache (positive results
/// only; see `boot::kernel_key`).
pub const MAX_KNOWN_KERNELS: usize = 4096;

/// Largest installed-default file (`/nix/var/nix/nixboot.json`, see
/// `nixos::installed`) read from the guest; the hook writes ~150 bytes.
pub const MAX_INSTALLED_FILE: u64 = 64 * 1024;

/// Longest menu countdown a guest may ask for (its `boot.loader.timeout`,
/// `null` included), in seconds: a guest cannot hold `xl create` (or
/// xendomains starting the next guest) longer than this. `--timeout`
/// from dom0 is not bound by it.
pub const MAX_GUEST_MENU_TIMEOUT: u64 = 60;

/// Highest btrfs tree level accepted (the kernel's `BTRFS_MAX_LEVEL` is 8:
/// levels 0..=7). Every child must sit exactly one level below its parent,
/// so a node pointing at itself or an ancestor is refused, and a walk is
/// at most this deep.
pub const MAX_BTRFS_LEVEL: u8 = 7;

/// Tree nodes one btrfs operation (a lookup, a directory listing, a file's
/// extent scan) may visit, cached or not: a backstop on the work a crafted
/// tree can cause (16,384 nodes is 256 MiB of 16 KiB nodes).
pub const MAX_BTRFS_NODE_VISITS: u32 = 16_384;

/// btrfs tree nodes kept in the node cache (at most 64 KiB each: 32 MiB).
pub const MAX_BTRFS_CACHED_NODES: usize = 512;

/// Chunks (logical -> physical mappings) accepted from the system chunk
/// array and the chunk tree together (one per block group: 1 GiB data
/// chunks make this 64 TiB).
pub const MAX_BTRFS_CHUNKS: usize = 65_536;

/// Subvolumes examined: found through ROOT_REF items from the top level,
/// breadth first, the default one included.
pub const MAX_BTRFS_SUBVOLS: usize = 256;

/// Extent items of one btrfs file (a compressed extent holds at most
/// 128 KiB of data: 131,072 of them cover a 16 GiB file).
pub const MAX_BTRFS_FILE_EXTENTS: usize = 131_072;

/// Decompressed size of one compressed btrfs extent: the format's own
/// maximum (`BTRFS_MAX_UNCOMPRESSED`, 128 KiB), also the cap on the
/// compressed bytes read for it. Inline extents are far smaller.
pub const MAX_BTRFS_EXTENT_DECOMPRESSED: u64 = 128 * 1024;

/// Bytes decompressed for one open btrfs file in all (extents shared by
/// several file ranges are decompressed again when read again): the
/// largest boot file plus slack.
pub const MAX_BTRFS_FILE_DECOMPRESSED: u64 = 2 * MAX_BOOT_FILE;

/// Largest LVM2 text metadata read from one physical volume (4 MiB; LVM's
/// default metadata area is 1 MiB and a VG's text is a few KiB).
pub const MAX_LVM_METADATA: u64 = 4 * MIB;

/// LVM2 physical volumes (labelled partitions or the whole disk) whose
/// metadata is read on one disk.
pub const MAX_LVM_PVS: usize = 32;

/// Volume groups considered on one disk.
pub const MAX_LVM_VGS: usize = 16;

/// Logical volumes considered on one disk (all volume groups together).
pub const MAX_LVM_LVS: usize = 1024;

/// Segments of all logical volumes of one volume group together (a
/// linear LV has one per contiguous run of extents).
pub const MAX_LVM_SEGMENTS: usize = 4096;

/// How deep `name { … }` sections may nest in LVM2 metadata (real metadata
/// nests 4 deep: VG, `logical_volumes`, LV, segment).
pub const MAX_LVM_NESTING: usize = 16;

/// Settings, sections and array elements accepted in one LVM2 metadata
/// text (a VG with a thousand LVs has ~30,000).
pub const MAX_LVM_TOKENS: usize = 1 << 18;
