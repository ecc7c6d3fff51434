//! Hostile guest disks. Each one is run under an address-space cap
//! (`prlimit --as`, pygrub's 256 MiB), must end within seconds by itself
//! without a signal, with one clear error line or a safe result, and must
//! leave the disk image byte-for-byte unchanged.

use std::fs;
use std::time::Duration;

use crate::common::{
    self, BOOTSPEC_MARKER, BlockSize, Image, Layout, Libxl, Ran, Style, Tree, have, libxl, link_of, pv_kernel,
    toplevel_of,
};

/// The address-space cap (what pygrub's depriv mode sets).
const CAP: u64 = 256 << 20;

/// "Within seconds": generous for a debug build on 2 shared cores, far
/// below nixboot's own 60 s parse deadline.
const QUICK: Duration = Duration::from_secs(20);

/// Run `xl` on `disk` under [`CAP`] and check what every hostile case
/// must satisfy; the caller then checks the error or the result.
fn run_capped(xl: Libxl, disk: &std::path::Path) -> Ran {
    let before = common::fingerprint(disk);
    let ran = xl.address_space(CAP).run(disk);
    ran.assert_ended_cleanly();
    assert!(ran.elapsed < QUICK, "took {:?}:\n{}", ran.elapsed, ran.console);
    assert_eq!(common::fingerprint(disk), before, "the disk image changed");
    common::assert_console_safe(&ran);
    ran
}

fn hostile(xl: Libxl, img: &Image) -> Ran {
    run_capped(xl, &img.path)
}

fn prlimit() -> bool {
    have(&["prlimit"])
}

fn one_gen(style: Style) -> Tree {
    Tree::nixos().generation(1, style).current(1)
}

/// A dom0 that already runs nixboot under a tighter limit than the parse
/// child's own 512 MiB (pygrub's 256 MiB, a systemd `LimitAS=`) must
/// still boot: the child keeps the tighter limit.
#[test]
fn tighter_inherited_limits_are_kept() {
    if !prlimit() {
        return;
    }
    let Some(img) = one_gen(Style::Bootspec).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    hostile(libxl(), &img)
        .expect_boot()
        .assert_entry(&img, img.entry(1), None);
    if nix::unistd::geteuid().is_root() {
        let ran = hostile(libxl().runas(65534), &img);
        ran.expect_boot().assert_entry(&img, img.entry(1), None);
    }
}

/// crates.md finding 1: a slow symlink whose size field claims 16 GiB
/// made ext4-view allocate that much and abort. On the profile path.
#[test]
fn slow_symlink_with_huge_size_on_the_profile_path() {
    if !prlimit() {
        return;
    }
    let system = format!("{}/system", common::PROFILES);
    for link in [link_of(1), system] {
        let Some(img) = one_gen(Style::Legacy).image(Layout::Bare, BlockSize::K1) else {
            return;
        };
        let Some(()) = img.debugfs(&format!("sif {link} size 0x400000000")) else {
            return;
        };
        hostile(libxl(), &img).expect_guest_error(&[&format!("symlink \"{link}\" claims a 17179869184-byte target")]);
    }
}

/// crates.md finding 2: a file whose size field claims 16 GiB (its
/// extents hold 200 KiB). Refused against the cap before any read.
#[test]
fn kernel_or_initrd_size_field_claims_16_gib() {
    if !prlimit() {
        return;
    }
    let Some(img) = one_gen(Style::Bootspec).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let e = img.entry(1).clone();
    let Some(()) = img.debugfs(&format!("sif {} size 0x400000000", e.kernel)) else {
        return;
    };
    hostile(libxl(), &img).expect_guest_error(&[&format!(
        "kernel \"{}\" is 17179869184 bytes, over the 536870912-byte limit",
        e.kernel
    )]);
    hostile(libxl().bootloader_args(&["--max-kernel-size=1G"]), &img)
        .expect_guest_error(&["is 17179869184 bytes, over the 1073741824-byte limit"]);
    let Some(img) = one_gen(Style::Legacy).image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    let initrd = img.entry(1).initrd.clone().unwrap();
    let Some(()) = img.debugfs(&format!("sif {initrd} size 0x400000000")) else {
        return;
    };
    hostile(libxl(), &img).expect_guest_error(&[&format!(
        "initrd \"{initrd}\" is 17179869184 bytes, over the 536870912-byte limit"
    )]);
}

fn put_u32(img: &Image, at: u64, v: u32) {
    img.patch(at, &v.to_le_bytes());
}

/// crates.md finding 3: a 1 KiB superblock (no metadata_csum, so no
/// checksum) whose geometry makes ext4-view allocate billions of group
/// descriptors. Three shapes, each stopped by a different check.
#[test]
fn superblock_geometry_asks_for_billions_of_group_descriptors() {
    if !prlimit() {
        return;
    }
    const SB: u64 = 1024;
    let tree = || one_gen(Style::Legacy).mke2fs_features("^metadata_csum");
    let profile = "no filesystem holding \"/nix/var/nix/profiles/system\" (whole disk: corrupt ext4 superblock:";
    // blocks_count 2^32-1, blocks_per_group 1: 4.29e9 groups.
    let Some(img) = tree().image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    put_u32(&img, SB + 0x4, u32::MAX);
    put_u32(&img, SB + 0x20, 1);
    hostile(libxl(), &img).expect_guest_error(&[profile, "blocks per group out of range)"]);
    // blocks_per_group 8 (legal), blocks_count beyond the disk.
    put_u32(&img, SB + 0x20, 8);
    hostile(libxl(), &img).expect_guest_error(&[profile, "block count exceeds the partition)"]);
    // A sparse 64 GiB disk that really has 2^26 blocks: 2^23 groups of 8.
    let Some(img) = tree().image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    put_u32(&img, SB + 0x4, 1 << 26);
    put_u32(&img, SB + 0x20, 8);
    hostile(libxl(), &img).expect_guest_error(&[profile, "too many block groups)"]);
    // The same size with a sane 8192 blocks per group passes the checks
    // (8192 descriptors, those past the real table garbage); the files all
    // live in group 0, so this boots: a safe result, from the real data.
    put_u32(&img, SB + 0x20, 8192);
    hostile(libxl(), &img)
        .expect_boot()
        .assert_entry(&img, img.entry(1), None);
}

#[test]
fn symlink_loops_through_the_profile() {
    if !prlimit() {
        return;
    }
    let system = format!("{}/system", common::PROFILES);
    let kernel = format!("{}/kernel", toplevel_of(1, None));
    let profile = "generation: more than 40 symlinks while resolving \"/nix/var/nix/profiles/system\"";
    let kernel_loop = format!("kernel: more than 40 symlinks while resolving \"{kernel}\"");
    let loops: [(&str, &str, &str); 3] = [
        (
            &link_of(1),
            "system",
            "generation: more than 40 symlinks while resolving \"/nix/var/nix/profiles/system-1-link\"",
        ),
        (&system, "./system", profile),
        (&kernel, "../../../nix/var/nix/profiles/system/kernel", &kernel_loop),
    ];
    for (link, target, want) in loops {
        let tree = one_gen(Style::Legacy).symlink(link, target);
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        hostile(libxl(), &img).expect_guest_error(&[want]);
    }
}

/// XSA-198 style result-file injection: a NUL or newline in a kernel
/// parameter or in `init` would add a `kernel /etc/shadow` item.
#[test]
fn nul_and_newline_in_kernel_params_and_init() {
    if !prlimit() {
        return;
    }
    let top = toplevel_of(1, None);
    let cases = [
        (
            "kernelParams",
            serde_json::json!(["console=hvc0", "x\u{0}kernel /etc/shadow"]),
            "kernel parameter contains a control character: \"x\\0kernel /etc/shadow\"",
        ),
        (
            "kernelParams",
            serde_json::json!(["x\nramdisk /etc/shadow"]),
            "kernel parameter contains a control character: \"x\\nramdisk /etc/shadow\"",
        ),
        (
            "init",
            serde_json::json!(format!("{top}/init\u{0}kernel /etc/shadow")),
            "init contains a control character: ",
        ),
        (
            "init",
            serde_json::json!(format!("{top}/init\nkernel /etc/shadow")),
            "\\nkernel /etc/shadow\"",
        ),
        (
            "kernelParams",
            serde_json::json!(["console=hvc0", "\u{1b}]0;owned\u{7}\u{1b}[2J"]),
            "kernel parameter contains a control character: \"\\u{001b}]0;owned\\u{0007}\\u{001b}[2J\"",
        ),
    ];
    for (field, value, want) in cases {
        let bootjson = format!("{top}/boot.json");
        let tree = one_gen(Style::Bootspec).with(move |root| {
            let p = root.join(bootjson.trim_start_matches('/'));
            let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            doc["org.nixos.bootspec.v1"][field] = value.clone();
            fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
        });
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        hostile(libxl(), &img).expect_guest_error(&[want]);
    }
    // The same through `--args` (what xl passes from extra=): a usage-free
    // path that must still never reach the result file.
    let Some(img) = one_gen(Style::Legacy).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    hostile(libxl().args("quiet\nkernel /etc/shadow"), &img)
        .expect_guest_error(&["--args contains a control character: \"quiet\\nkernel /etc/shadow\""]);
}

/// A PV guest receives at most 1023 bytes of command line: exactly 1023
/// boots, one more is refused rather than cut.
#[test]
fn command_line_over_1023_bytes() {
    if !prlimit() {
        return;
    }
    // "init=<toplevel>/init " + the filler parameter.
    let base = format!("init={}/init ", toplevel_of(1, None)).len();
    let filler = |n: usize| format!("x={}", "y".repeat(n - 2));
    let fits = filler(1023 - base);
    let tree = one_gen(Style::Legacy).params(&[&fits]);
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let booted = hostile(libxl(), &img).expect_boot();
    assert_eq!(booted.args.as_ref().map(String::len), Some(1023));
    booted.assert_entry(&img, img.entry(1), None);
    hostile(libxl().args("q"), &img)
        .expect_guest_error(&["kernel command line is 1025 bytes; a PV guest receives at most 1023"]);
    let over = filler(4000);
    let tree = one_gen(Style::Bootspec).params(&["console=hvc0", &over]);
    let Some(img) = tree.image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    let len = img.entry(1).cmdline(None).len();
    assert!(img.entry(1).params.contains(&BOOTSPEC_MARKER.to_owned()));
    hostile(libxl(), &img).expect_guest_error(&[&format!(
        "kernel command line is {len} bytes; a PV guest receives at most 1023"
    )]);
}

/// A kernel link that climbs far above the guest root, or an absolute one,
/// to `/etc/shadow`: it resolves inside the guest (whose `/etc/shadow` is
/// here a valid PV kernel, so it may boot), never to dom0's file.
#[test]
fn kernel_symlink_climbing_to_etc_shadow_stays_in_the_guest() {
    if !prlimit() {
        return;
    }
    let guest_shadow = pv_kernel(100_000, 0x5ad0);
    let dom0_shadow = fs::read("/etc/shadow").ok();
    let kernel_link = format!("{}/kernel", toplevel_of(1, None));
    let climb = format!("{}etc/shadow", "../".repeat(40));
    for target in [climb.as_str(), "/etc/shadow", "/../../../etc/./shadow"] {
        let tree = one_gen(Style::Legacy)
            .file("/etc/shadow", guest_shadow.clone())
            .symlink(&kernel_link, target);
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        let ran = hostile(libxl(), &img);
        let booted = ran.expect_boot();
        booted.assert_kernel(&guest_shadow);
        let copied = fs::read(&booted.kernel).unwrap();
        assert!(dom0_shadow.as_ref() != Some(&copied), "dom0's /etc/shadow was copied");
        assert!(
            ran.console
                .contains("nixboot: kernel /etc/shadow (100000 bytes; boots as Xen pv)"),
            "{}",
            ran.console
        );
    }
    // The same through libxl's kernel= (a guest path by definition).
    let tree = one_gen(Style::Legacy).file("/etc/shadow", guest_shadow.clone());
    let Some(img) = tree.image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    let booted = hostile(libxl().kernel("/../../../../etc/shadow"), &img).expect_boot();
    booted.assert_kernel(&guest_shadow);
}

/// A kernel or initrd link to a device node (or a FIFO): refused by type;
/// nothing on dom0 is ever opened by a guest path.
#[test]
fn kernel_symlink_to_a_device_node() {
    if !prlimit() {
        return;
    }
    let kernel_link = format!("{}/kernel", toplevel_of(1, None));
    let initrd_link = format!("{}/initrd", toplevel_of(1, None));
    let cases = [
        (&kernel_link, "/dev/xvda", "mknod xvda b 202 0", "kernel"),
        (&kernel_link, "/dev/zero", "mknod zero c 1 5", "kernel"),
        (&initrd_link, "/dev/initctl", "mknod initctl p", "initrd"),
    ];
    for (link, node, mknod, what) in cases {
        let tree = one_gen(Style::Legacy).symlink(link, node);
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        let Some(()) = img.debugfs_script(&["cd /dev", mknod]) else {
            return;
        };
        hostile(libxl(), &img).expect_guest_error(&[&format!(
            "{what}: \"{node}\" is a device or special file, not a regular file"
        )]);
    }
}

/// A 150 MB (sparse) boot.json: over the 1 MiB bootspec cap, never read
/// whole. With the toplevel's own files next to it nixboot falls back to
/// them (a safe result, with a warning); without them it is an error that
/// says why.
#[test]
fn boot_json_of_150_mb() {
    if !prlimit() {
        return;
    }
    let bootjson = format!("{}/boot.json", toplevel_of(1, None));
    let grow = {
        let bootjson = bootjson.clone();
        move |root: &std::path::Path| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(root.join(bootjson.trim_start_matches('/')))
                .unwrap();
            f.set_len(150_000_000).unwrap();
        }
    };
    let Some(img) = one_gen(Style::Bootspec)
        .with(grow.clone())
        .image(Layout::Bare, BlockSize::K4)
    else {
        return;
    };
    assert_eq!(fs::metadata(img.host(&bootjson)).unwrap().len(), 150_000_000);
    let ran = hostile(libxl(), &img);
    let booted = ran.expect_boot();
    let args = booted.args.clone().unwrap();
    assert!(!args.contains(BOOTSPEC_MARKER), "{args}");
    booted.assert_kernel(&img.guest_bytes(&img.entry(1).kernel));
    assert!(
        ran.console
            .contains("is 150000000 bytes, over the 1048576-byte limit; using the toplevel's files instead"),
        "{}",
        ran.console
    );
    // No fallback files: the error must be about boot.json, not claim
    // there is none.
    let top = toplevel_of(1, None);
    let tree = one_gen(Style::Bootspec).with(grow).with(move |root| {
        fs::remove_file(root.join(format!("{}/kernel", top.trim_start_matches('/')))).unwrap();
    });
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    hostile(libxl(), &img).expect_guest_error(&["boot.json", "is 150000000 bytes, over the 1048576-byte limit"]);
}

/// 5,000 generations (links to two toplevels) in one unindexed directory
/// (as `mke2fs -d` writes it: every lookup is a linear scan), the current
/// one not the highest. Booting reads one link; naming an unknown
/// generation lists the directory once.
#[test]
fn five_thousand_generations() {
    if !prlimit() {
        return;
    }
    let tree = Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .current(4321)
        .extra_inodes(5000)
        .with(|root| {
            let dir = root.join(common::PROFILES.trim_start_matches('/'));
            for n in 3..=5000u64 {
                let top = toplevel_of(1 + n % 2, None);
                std::os::unix::fs::symlink(top, dir.join(format!("system-{n}-link"))).unwrap();
            }
        });
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let ran = hostile(libxl(), &img);
    let booted = ran.expect_boot();
    // 4321 links to generation 2's toplevel.
    let e = img.entry(2);
    booted.assert_kernel(&img.guest_bytes(&e.kernel));
    assert_eq!(booted.args.as_deref(), Some(e.cmdline(None).as_str()));
    assert!(ran.console.contains("NixOS - Configuration 4321 ("), "{}", ran.console);
    let booted = hostile(libxl().bootloader_args(&["--entry=4998"]), &img).expect_boot();
    booted.assert_kernel(&img.guest_bytes(&img.entry(1).kernel));
    // An unknown generation: one clear, bounded line, as quickly.
    let ran = hostile(libxl().bootloader_args(&["--entry=9999"]), &img);
    let line = ran.expect_guest_error(&[
        "no generation 9999; generations on the disk: 5000, 4999, 4998,",
        ", 4981 and 4980 more (the oldest is 1)",
    ]);
    assert!(line.len() < 300, "error line of {} bytes", line.len());
}

/// An MBR whose extended partition holds a chain of 100,000 EBRs (each
/// with a one-sector logical partition); the system is primary 1. The
/// walk stops after 64 records with a warning, and the boot succeeds.
#[test]
fn mbr_extended_chain_of_100000() {
    if !prlimit() {
        return;
    }
    let Some(fsimg) = one_gen(Style::Bootspec).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let fs_bytes = fs::read(&fsimg.path).unwrap();
    let fs_sectors = u32::try_from(fs_bytes.len() / 512).unwrap();
    const CHAIN: u32 = 100_000;
    let ext_start = 2048 + fs_sectors;
    let total = u64::from(ext_start + CHAIN + 1) * 512;
    let mut disk = vec![0u8; usize::try_from(total).unwrap()];
    let entry = |disk: &mut [u8], sector: u64, i: usize, sys: u8, start: u32, len: u32| {
        let at = usize::try_from(sector * 512).unwrap() + 446 + 16 * i;
        disk[at + 4] = sys;
        disk[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
        let sig = usize::try_from(sector * 512).unwrap() + 510;
        disk[sig..sig + 2].copy_from_slice(&[0x55, 0xAA]);
    };
    entry(&mut disk, 0, 0, 0x83, 2048, fs_sectors);
    entry(&mut disk, 0, 1, 0x05, ext_start, CHAIN + 1);
    for i in 0..CHAIN {
        let ebr = u64::from(ext_start + i);
        // Logical: the sector after this EBR (the next EBR); next EBR: i+1.
        entry(&mut disk, ebr, 0, 0x83, 1, 1);
        if i + 1 < CHAIN {
            entry(&mut disk, ebr, 1, 0x05, i + 1, 1);
        }
    }
    disk[1 << 20..(1 << 20) + fs_bytes.len()].copy_from_slice(&fs_bytes);
    let path = fsimg.scratch("chain.img");
    fs::write(&path, &disk).unwrap();
    drop(disk);
    let ran = run_capped(libxl(), &path);
    let booted = ran.expect_boot();
    booted.assert_entry(&fsimg, fsimg.entry(1), None);
    assert!(
        ran.console
            .contains("MBR extended chain longer than 64 records; the rest is ignored"),
        "{}",
        ran.console
    );
    assert!(
        ran.console.contains("from MBR partition 1 (type 0x83, offset 1048576)"),
        "{}",
        ran.console
    );
}

fn gpt_claim_2_28_entries(img: &Image, header_lba: u64) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let at = header_lba * 512;
    let mut h = img.read(at, 92);
    assert_eq!(&h[..8], b"EFI PART");
    assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), 92);
    h[80..84].copy_from_slice(&(1u32 << 28).to_le_bytes());
    h[84..88].copy_from_slice(&256u32.to_le_bytes());
    h[16..20].fill(0);
    let c = crc.checksum(&h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    img.patch(at, &h);
}

/// A GPT header claiming 2^28 entries of 256 bytes (64 GiB of array) with
/// a valid header CRC. The primary alone: nixboot uses the backup header
/// (a safe result). Both: a clear error.
#[test]
fn gpt_header_claims_2_28_entries() {
    if !prlimit() {
        return;
    }
    let Some(img) = one_gen(Style::Bootspec).image(Layout::Gpt, BlockSize::K4) else {
        return;
    };
    gpt_claim_2_28_entries(&img, 1);
    let ran = hostile(libxl(), &img);
    ran.expect_boot().assert_entry(&img, img.entry(1), None);
    let limits = "entry array of 268435456 entries of 256 bytes exceeds the limits (1024 entries, 4096 bytes each)";
    assert!(
        ran.console
            .contains(&format!("primary GPT unusable ({limits}); trying the backup at LBA")),
        "{}",
        ran.console
    );
    let last = fs::metadata(&img.path).unwrap().len() / 512 - 1;
    gpt_claim_2_28_entries(&img, last);
    hostile(libxl(), &img).expect_guest_error(&[&format!("GPT: {limits}")]);
}

/// A boot.json naming a directory as the kernel, or a kernel that is not
/// there: refused by type, or named as missing.
#[test]
fn bootspec_kernel_is_a_directory_or_missing() {
    if !prlimit() {
        return;
    }
    let bootjson = format!("{}/boot.json", toplevel_of(1, None));
    for (kernel, want) in [
        (
            "/nix/store",
            "kernel: \"/nix/store\" is a directory, not a regular file",
        ),
        ("/nix/store/nope/bzImage", "kernel: \"/nix/store/nope\" does not exist"),
    ] {
        let bootjson = bootjson.clone();
        let tree = one_gen(Style::Bootspec).with(move |root| {
            let p = root.join(bootjson.trim_start_matches('/'));
            let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            doc["org.nixos.bootspec.v1"]["kernel"] = kernel.into();
            fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
        });
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        hostile(libxl(), &img).expect_guest_error(&[want]);
    }
}

/// `nixboot list` on a profile whose listing is larger than one frame
/// between the parse child and the parent (4 MiB): 300 generations whose
/// boot.json carries 256 long kernel parameters (~16 KiB each). Thousands
/// of ordinary generations reach the same size.
#[test]
fn list_larger_than_one_frame() {
    if !prlimit() {
        return;
    }
    let long: Vec<String> = (0..256)
        .map(|i| format!("nixboot.test.param{i:03}={}", "p".repeat(40)))
        .collect();
    let params: Vec<&str> = long.iter().map(String::as_str).collect();
    let tree = Tree::nixos()
        .generation(1, Style::Bootspec)
        .params(&params)
        .current(1)
        .with(|root| {
            let dir = root.join(common::PROFILES.trim_start_matches('/'));
            for n in 2..=300u64 {
                std::os::unix::fs::symlink(toplevel_of(1, None), dir.join(format!("system-{n}-link"))).unwrap();
            }
        });
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let ran = common::run_pty(
        &common::tool("prlimit").unwrap(),
        &[
            format!("--as={CAP}").into(),
            "--".into(),
            common::NIXBOOT.into(),
            "list".into(),
            "--json".into(),
            img.path.clone().into(),
        ],
        common::RUN_TIMEOUT,
    );
    ran.assert_ended_cleanly();
    assert!(ran.elapsed < QUICK, "list took {:?}", ran.elapsed);
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{}",
        ran.error_lines().first().copied().unwrap_or("")
    );
    let v: serde_json::Value = serde_json::from_str(&ran.console).unwrap();
    let gens = v["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 300);
    assert_eq!(gens[0]["generation"], 300);
    assert_eq!(gens[299]["kernelParams"].as_array().unwrap().len(), 257);
    assert!(ran.console.len() > 4 << 20, "listing of {} bytes", ran.console.len());
}

/// The initrd's extent points far beyond the filesystem. The extents of
/// both files are mapped (and checked against the filesystem) before the
/// plan is sent, so the entry is refused up front, with `-n` too, and
/// nothing is copied: the result file stays empty.
#[test]
fn initrd_extent_beyond_the_filesystem_is_refused_before_any_copy() {
    if !prlimit() {
        return;
    }
    let Some(img) = one_gen(Style::Legacy).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let initrd = img.entry(1).initrd.clone().unwrap();
    // i_block[5] is the first extent's physical start (ee_start_lo).
    let Some(()) = img.debugfs(&format!("sif {initrd} block[5] 0x7fffff00")) else {
        return;
    };
    let why = format!("initrd: cannot read \"{initrd}\": corrupt filesystem: extent beyond the filesystem");
    let ran = hostile(libxl(), &img);
    ran.expect_guest_error(&[&why]);
    let ran = hostile(libxl().bootloader_args(&["-n"]), &img);
    ran.expect_guest_error(&[&why]);
}

/// Guest strings shown on the console (the menu label from
/// `nixos-version`, the kernel and initrd paths) carrying terminal escape
/// sequences: they may boot, but no raw ESC or other control byte may
/// reach the pty (libxl copies it to the console and to
/// /var/log/xen/bootloader.<domid>.log).
#[test]
fn escape_sequences_from_the_guest_never_reach_the_console() {
    if !prlimit() {
        return;
    }
    let top = toplevel_of(1, None);
    let evil_kernel = "/nix/store/evil-\u{1b}]0;owned\u{7}-linux/bzImage".to_owned();
    let tree = one_gen(Style::Legacy)
        .file(&format!("{top}/nixos-version"), "24.11\u{1b}[2J\u{1b}]0;owned\u{7}")
        .file(&evil_kernel, pv_kernel(70_000, 0xe5c))
        .symlink(&format!("{top}/kernel"), &evil_kernel);
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    for extra in [&[][..], &["-n"][..]] {
        let ran = hostile(libxl().bootloader_args(extra), &img);
        assert_eq!(ran.status.code(), Some(0), "{extra:?}: {}", ran.console);
    }
    let ran = common::nixboot(&["list", img.path.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    common::assert_console_safe(&ran);
}

/// LVM2 metadata that claims millions of segments, nests a million
/// sections deep, or claims a terabyte of text (checksums right, so the
/// parser meets it): each a one-line guest-disk error naming the cap, fast,
/// under the cap. The PVs are crafted (`nixboot::fuzzing::lvm_image`): no
/// LVM tool writes such metadata.
#[test]
fn hostile_lvm_metadata() {
    if !prlimit() {
        return;
    }
    use nixboot::fuzzing::lvm_image;
    use nixboot::part::lvm::crc;
    let segs = "vg0 {\nid = \"x\"\nseqno = 1\nextent_size = 8\nphysical_volumes {\npv0 {\n\
                id = \"0123456789abcdefghijABCDEFGHIJkl\"\npe_start = 128\npe_count = 8\n}\n}\n\
                logical_volumes {\nroot {\nstatus = [\"VISIBLE\"]\nsegment_count = 9000000\n}\n}\n}\n";
    let bomb = "a {".repeat(1 << 20);
    let mut huge = lvm_image(segs.as_bytes(), 1 << 20);
    huge[4096 + 48..4096 + 56].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let c = crc(0xF597_A6CF, &huge[4096 + 4..4096 + 512]);
    huge[4096..4100].copy_from_slice(&c.to_le_bytes());
    let dir = crate::common::tempdir("nixboot-lvm-hostile.");
    let (pv, lv) = (
        "LVM physical volume on whole disk",
        "LVM logical volume vg0/root (on whole disk)",
    );
    for (name, img, what, want) in [
        (
            "segments",
            lvm_image(segs.as_bytes(), 1 << 20),
            lv,
            "more than 4096 segments",
        ),
        (
            "nesting",
            lvm_image(bomb.as_bytes(), 1 << 20),
            pv,
            "nest deeper than 16",
        ),
        ("huge", huge, pv, "exceeds the 4194304-byte limit"),
    ] {
        let disk = dir.path().join(name);
        fs::write(&disk, img).unwrap();
        run_capped(libxl(), &disk).expect_guest_error(&[what, want]);
    }
}
