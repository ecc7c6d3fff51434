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
/// in all (rendered by the child, it arrives in frames the parent checks
/// and writes out without keeping; 10,000 ordinary generations are
/// ~15 MiB).
pub const MAX_LISTING: usize = 64 * MIB as usize;

/// Bytes of log lines the parse children may put on stderr (libxl's pty,
/// copied to `/var/log/xen/bootloader.<domid>.log`) in one run, all
/// children together: the parent relays their stderr through a pipe and
/// drops what is over this or [`MAX_CHILD_LOG_LINES`], then says how
/// many lines it dropped.
pub const MAX_CHILD_LOG_BYTES: usize = 64 * 1024;

/// Log lines the parse children may put on stderr in one run (see
/// [`MAX_CHILD_LOG_BYTES`]).
pub const MAX_CHILD_LOG_LINES: usize = 200;

/// Longest log line relayed from a parse child, in bytes; the rest of a
/// longer line is dropped and marked with "…".
pub const MAX_LOG_LINE: usize = 1024;

/// Bytes of one guest string (a path, a name, a version) shown in a log
/// line or an error message; a longer one is cut and ends in "…".
pub const MAX_SHOWN_GUEST_STRING: usize = 200;

/// Entries of the console menu the parse child sends the parent (the
/// default generation's entries come on top); what is left out is still
/// bootable with `--entry`.
pub const MAX_MENU_ENTRIES: usize = 1000;

/// Longest menu label or reason text the parent accepts per entry, in
/// bytes (the command line has its own cap, [`MAX_CMDLINE`]).
pub const MAX_MENU_TEXT: usize = 512;

/// Largest menu-entry frame the parent accepts from the parse child.
pub const MAX_MENU_FRAME: usize = 8 * 1024;

/// Address-space limit of the parse child (bytes).
pub const CHILD_ADDRESS_SPACE: u64 = 512 * MIB;

/// Deadline for all guest parsing in one run, in seconds: the parse
/// children of a run (the menu's listing and the boot) share this much
/// wall-clock time and this much CPU time (the menu countdown aside); a
/// child is killed when the run's budget is spent. libxl's own
/// restricted-mode timeout is 120 s. `$NIXBOOT_PARSE_DEADLINE` may lower
/// it (never raise it).
pub const CHILD_DEADLINE_SECS: u64 = 60;

/// Bytes of a kernel payload decompressed to look for Xen ELF notes.
pub const MAX_KERNEL_DECOMPRESSED: u64 = 256 * MIB;

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

/// Largest boot-menu file read from the guest: a `grub.cfg`, BLS entry,
/// `extlinux.conf`, `menu.lst`, grubenv or an included file (1 MiB, what
/// pygrub reads; real ones are a few KiB).
pub const MAX_MENU_CONFIG: u64 = MIB;

/// Bytes of menu files read while evaluating one menu, includes, BLS
/// entries and grubenv together.
pub const MAX_MENU_READ_TOTAL: u64 = 16 * MIB;

/// Files read or directories listed while evaluating one menu.
pub const MAX_MENU_FILES: u32 = 2048;

/// Nested `source`/`INCLUDE` files (syslinux itself allows 16).
pub const MAX_MENU_INCLUDE_DEPTH: u32 = 8;

/// Nesting of blocks in a GRUB script (`if`, `menuentry`, `submenu`,
/// `function`, loops) and of submenus.
pub const MAX_MENU_NESTING: u32 = 16;

/// Entries in one guest boot menu, submenus flattened (and BLS entry
/// files read).
pub const MAX_GUEST_MENU_ENTRIES: usize = 1024;

/// Distinct variables a GRUB script or grubenv may set.
pub const MAX_MENU_VARIABLES: usize = 1024;

/// Longest value of one variable, and longest word after expansion.
pub const MAX_MENU_EXPANSION: usize = 64 * 1024;

/// Bytes produced by variable expansion while evaluating one menu, all
/// words together: bounds the time a script of repeated `$big` costs.
pub const MAX_MENU_EXPANDED_TOTAL: usize = 64 * MIB as usize;

/// Commands evaluated in one menu, entry bodies included.
pub const MAX_MENU_STEPS: u32 = 200_000;

/// Notes (skipped commands, conditions taken conservatively) kept per
/// menu for diagnostics; more are counted, not kept.
pub const MAX_MENU_NOTES: usize = 64;
