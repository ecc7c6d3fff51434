//! Guests without a NixOS profile boot from their own menu: disks laid out
//! as the distributions lay them out (Debian: `/boot` on partition 1 with
//! the real `grub-mkconfig` output of `testdata/menus/`, `/` on partition
//! 2; NixOS extlinux on one partition), made at test time by `sfdisk` and
//! `mke2fs -d` with the UUIDs the menus search for.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{filler, have, libxl, pv_kernel, run_tool, skip, tempdir};

const MIB: u64 = 1 << 20;

/// An MBR disk whose partitions are ext4 filesystems made from `trees`
/// (host dir, UUID, size in MiB), in order from sector 2048.
fn disk(scratch: &Path, parts: &[(&Path, &str, u64)]) -> Option<PathBuf> {
    if !have(&["mke2fs", "sfdisk"]) {
        skip("mke2fs and sfdisk are needed for guest-menu images");
        return None;
    }
    let img = scratch.join("disk.img");
    let total: u64 = parts.iter().map(|p| p.2).sum::<u64>() + 2;
    fs::File::create(&img).unwrap().set_len(total * MIB).unwrap();
    let mut table = String::from("label: dos\n");
    let mut start = MIB / 512;
    for (_, _, mib) in parts {
        table += &format!("start={start}, size={}, type=83\n", mib * MIB / 512);
        start += mib * MIB / 512;
    }
    run_tool(
        "sfdisk",
        &[OsString::from("-q"), img.clone().into()],
        Some(table.as_bytes()),
    );
    let mut offset = MIB;
    for (tree, uuid, mib) in parts {
        let a: Vec<OsString> = vec![
            "-q".into(),
            "-F".into(),
            "-t".into(),
            "ext4".into(),
            "-b".into(),
            "4096".into(),
            "-U".into(),
            (*uuid).into(),
            "-E".into(),
            format!("offset={offset},hash_seed=6e697862-6f6f-7400-0000-0000000000ff,nodiscard").into(),
            "-d".into(),
            (*tree).into(),
            img.clone().into(),
            format!("{}k", mib * 1024).into(),
        ];
        run_tool("mke2fs", &a, None);
        offset += mib * MIB;
    }
    Some(img)
}

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn corpus(name: &str) -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/menus").join(name)).unwrap()
}

const DEB_BOOT: &str = "5b8e2a5c-6d1f-4c1e-9a55-0d3c2f1e7a01";
const DEB_ROOT: &str = "0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02";

struct Debian {
    img: PathBuf,
    k28: Vec<u8>,
    i28: Vec<u8>,
    k27: Vec<u8>,
    i27: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// Debian 12 as its installer lays it out with a separate /boot.
fn debian() -> Option<Debian> {
    let dir = tempdir("nixboot-debian.");
    let boot = dir.path().join("boot");
    let root = dir.path().join("root");
    let (k28, i28, k27, i27) = (
        pv_kernel(64 << 10, 28),
        filler(3000, 128),
        pv_kernel(48 << 10, 27),
        filler(2000, 127),
    );
    write(&boot, "/grub/grub.cfg", &corpus("debian12-grub.cfg"));
    write(&boot, "/vmlinuz-6.1.0-28-amd64", &k28);
    write(&boot, "/initrd.img-6.1.0-28-amd64", &i28);
    write(&boot, "/vmlinuz-6.1.0-27-amd64", &k27);
    write(&boot, "/initrd.img-6.1.0-27-amd64", &i27);
    write(&root, "/etc/debian_version", b"12.8\n");
    fs::create_dir_all(root.join("boot")).unwrap();
    let img = disk(dir.path(), &[(&boot, DEB_BOOT, 8), (&root, DEB_ROOT, 8)])?;
    Some(Debian {
        img,
        k28,
        i28,
        k27,
        i27,
        _dir: dir,
    })
}

#[test]
fn debian_separate_boot_default_and_entries() {
    let Some(d) = debian() else { return };
    let ran = libxl().run(&d.img);
    let b = ran.expect_boot();
    b.assert_kernel(&d.k28);
    b.assert_ramdisk(&d.i28);
    assert_eq!(
        b.args.as_deref(),
        Some(format!("root=UUID={DEB_ROOT} ro quiet").as_str())
    );
    assert!(ran.console.contains("grub menu"), "{}", ran.console);
    // pygrub's --entry=N over the flattened menu: 3 is 6.1.0-27 in the submenu.
    let b = libxl().bootloader_args(&["--entry=3"]).run(&d.img).expect_boot();
    b.assert_kernel(&d.k27);
    b.assert_ramdisk(&d.i27);
    let b = libxl()
        .bootloader_args(&[
            "--entry=Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-27-amd64 (recovery mode)",
        ])
        .run(&d.img)
        .expect_boot();
    b.assert_kernel(&d.k27);
    assert_eq!(
        b.args.as_deref(),
        Some(format!("root=UUID={DEB_ROOT} ro single").as_str())
    );
    libxl()
        .bootloader_args(&["--entry=9"])
        .run(&d.img)
        .expect_guest_error(&["entry 9 does not exist"]);
}

#[test]
fn nixos_extlinux_concatenates_initrds() {
    let dir = tempdir("nixboot-extlinux.");
    let t = dir.path().join("root");
    let (k, a, b) = (pv_kernel(32 << 10, 5), filler(1500, 1), filler(700, 2));
    write(
        &t,
        "/boot/extlinux/extlinux.conf",
        b"DEFAULT nixos-default\nTIMEOUT 50\nLABEL nixos-default\n  MENU LABEL NixOS - Default\n  LINUX ../nixos/k-bzImage\n  INITRD ../nixos/ucode.img,../nixos/i-initrd\n  APPEND init=/nix/store/x-nixos-system/init console=hvc0\n",
    );
    write(&t, "/boot/nixos/k-bzImage", &k);
    write(&t, "/boot/nixos/ucode.img", &a);
    write(&t, "/boot/nixos/i-initrd", &b);
    let Some(img) = disk(dir.path(), &[(&t, "11111111-2222-4333-8444-555555555555", 8)]) else {
        return;
    };
    let booted = libxl().run(&img).expect_boot();
    booted.assert_kernel(&k);
    booted.assert_ramdisk(&[a, b].concat());
    assert_eq!(
        booted.args.as_deref(),
        Some("init=/nix/store/x-nixos-system/init console=hvc0")
    );
}

#[test]
fn nothing_bootable_says_why_per_partition() {
    let dir = tempdir("nixboot-nomenu.");
    let boot = dir.path().join("boot");
    let other = dir.path().join("other");
    write(
        &boot,
        "/grub/grub.cfg",
        b"menuentry 'Gone' {\n search --fs-uuid --set=root 5b8e2a5c-6d1f-4c1e-9a55-0d3c2f1e7a01\n linux /vmlinuz-missing ro\n}\n",
    );
    write(&other, "/etc/hostname", b"x\n");
    let Some(img) = disk(dir.path(), &[(&boot, DEB_BOOT, 8), (&other, DEB_ROOT, 8)]) else {
        return;
    };
    let ran = libxl().run(&img);
    ran.expect_guest_error(&[
        "MBR partition 1",
        "grub menu",
        "\"Gone\"",
        "does not exist",
        "MBR partition 2",
        "no boot menu",
    ]);
}
