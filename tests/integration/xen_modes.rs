//! Xen guest types and kernel formats: which modes (PV, PVH) a kernel
//! boots in, `--domain-type` making the check strict, `list` reporting the
//! modes, and `--unpack-kernel` handing libxl the decompressed ELF
//! (checked with Xen's own `readnotes` where xen-utils is installed, and
//! by parsing the ELF here).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{BlockSize, Image, Layout, NIXBOOT, Style, Tree, kernel_of, libxl, skip, xen_kernel, zstd_bzimage};

/// Generations 1-3, current 3: 1's kernel boots as PV and PVH, 2's as PV
/// only (the harness's usual kernel), 3's as PVH only.
fn modes_tree() -> Option<Image> {
    Tree::nixos()
        .generation(1, Style::Bootspec)
        .generation(2, Style::Bootspec)
        .generation(3, Style::Bootspec)
        .current(3)
        .with(|root| {
            let k = |n| root.join(kernel_of(n).trim_start_matches('/'));
            fs::write(k(1), xen_kernel(200_000, 1, true, true)).unwrap();
            fs::write(k(3), xen_kernel(200_000, 3, false, true)).unwrap();
        })
        .image(Layout::Bare, BlockSize::K4)
}

fn list_json(img: &Image) -> serde_json::Value {
    let out = Command::new(NIXBOOT)
        .env("NIXBOOT_CACHE_DIR", "")
        .args(["list", "--json"])
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pvh_only_kernels_boot_unless_the_domain_is_pv() {
    let Some(img) = modes_tree() else { return };
    // Without --domain-type either mode will do.
    let ran = libxl().run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(3), None);
    assert!(ran.console.contains("bytes; boots as Xen pvh)"), "{}", ran.console);
    let ran = libxl().bootloader_args(&["--entry=1"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(1), None);
    assert!(
        ran.console.contains("bytes; boots as Xen pv and pvh)"),
        "{}",
        ran.console
    );
    // --domain-type=pvh: strict.
    libxl()
        .bootloader_args(&["--domain-type=pvh"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(3), None);
    libxl()
        .bootloader_args(&["--domain-type=pvh", "--entry=2"])
        .run(&img.path)
        .expect_guest_error(&[
            "is not bootable",
            "has no Xen PVH entry point, only a PV one (CONFIG_XEN_PVH?)",
        ]);
    // --domain-type=pv: generation 3 is refused; the default falls back.
    libxl()
        .bootloader_args(&["--domain-type=pv", "--entry=3"])
        .run(&img.path)
        .expect_guest_error(&["has no Xen PV entry point, only a PVH one (CONFIG_XEN_PV?)"]);
    let ran = libxl().bootloader_args(&["--domain-type=pv"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(2), None);
    assert!(
        ran.console.contains("has no Xen PV entry point, only a PVH one"),
        "{}",
        ran.console
    );
    libxl()
        .bootloader_args(&["--domain-type=hvm"])
        .run(&img.path)
        .expect_usage(&["--domain-type"]);
}

#[test]
fn list_says_which_modes_each_kernel_boots() {
    let Some(img) = modes_tree() else { return };
    let v = list_json(&img);
    let modes: Vec<(u64, serde_json::Value)> = v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["generation"].as_u64().unwrap(), g["xenModes"].clone()))
        .collect();
    assert_eq!(
        modes,
        vec![
            (3, serde_json::json!(["pvh"])),
            (2, serde_json::json!(["pv"])),
            (1, serde_json::json!(["pv", "pvh"])),
        ]
    );
    let out = Command::new(NIXBOOT).arg("list").arg(&img.path).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(&format!("{}  [pvh]", img.entry(3).title())), "{table}");
    assert!(
        table.contains(&format!("{}  [pv, pvh]", img.entry(1).title())),
        "{table}"
    );
}

#[test]
fn a_kernel_with_neither_entry_point_is_refused() {
    let Some(img) = Tree::nixos()
        .generation(1, Style::Bootspec)
        .current(1)
        .with(|root| {
            let k = root.join(kernel_of(1).trim_start_matches('/'));
            fs::write(k, xen_kernel(200_000, 1, false, false)).unwrap();
        })
        .image(Layout::Bare, BlockSize::K4)
    else {
        return;
    };
    libxl()
        .run(&img.path)
        .expect_guest_error(&["has no Xen PV or PVH entry point (CONFIG_XEN_PV? CONFIG_XEN_PVH?)"]);
}

/// Generation 1's kernel is a zstd bzImage of `elf` (what NixOS builds).
fn bzimage_tree(elf: Vec<u8>) -> Option<Image> {
    Tree::nixos()
        .generation(1, Style::Bootspec)
        .current(1)
        .with(move |root| {
            let k = root.join(kernel_of(1).trim_start_matches('/'));
            fs::write(k, zstd_bzimage(&elf)).unwrap();
        })
        .image(Layout::Mbr, BlockSize::K4)
}

/// Check an ELF64 x86-64 kernel image in Rust: header fields, and its
/// Xen notes by nixboot's own check.
fn assert_xen_elf(path: &Path, want: &[nixboot::kernel::XenMode]) {
    let b = fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not an ELF", path.display());
    assert_eq!(b[4], 2, "ELFCLASS64");
    assert_eq!(b[5], 1, "little-endian");
    assert_eq!(u16::from_le_bytes([b[18], b[19]]), 62, "EM_X86_64");
    let v = nixboot::kernel::check(b.as_slice(), b.len() as u64, |off| {
        Ok(&b[usize::try_from(off).unwrap()..])
    });
    assert_eq!(v, Ok(nixboot::kernel::Verdict::Xen(want.to_vec())));
}

const READNOTES: &str = "/usr/lib/xen-4.17/bin/readnotes";

#[test]
fn unpack_kernel_hands_libxl_the_elf() {
    use nixboot::kernel::XenMode::{Pv, Pvh};
    let elf = xen_kernel(3 << 20, 7, true, true);
    let Some(img) = bzimage_tree(elf.clone()) else { return };
    // Without the option: the bzImage itself, as before.
    let ran = libxl().run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_kernel(&img.guest_bytes(&kernel_of(1)));
    // With it: the ELF, private, inside the output directory (expect_boot
    // checks 0600, the name and that nothing else is there).
    let ran = libxl().bootloader_args(&["--unpack-kernel"]).run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_kernel(&elf);
    booted.assert_entry_but_kernel(&img, img.entry(1));
    let bz_len = img.guest_bytes(&kernel_of(1)).len();
    assert!(
        ran.console.contains(&format!(
            "({bz_len} bytes, unpacked: a {}-byte ELF goes to libxl; boots as Xen pv and pvh)",
            elf.len()
        )),
        "{}",
        ran.console
    );
    assert_xen_elf(&booted.kernel, &[Pv, Pvh]);
    // Xen's own tool reads the notes of what libxl will load.
    if Path::new(READNOTES).is_file() {
        let out = Command::new(READNOTES).arg(&booted.kernel).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "readnotes: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("readnotes {}:\n{text}", booted.kernel.display());
        for want in [
            "GUEST_OS: linux",
            "\nENTRY: 0xffffffff80001000",
            "PHYS32_ENTRY:  0x1000000",
            "HYPERCALL_PAGE: 0xffffffff80002000",
        ] {
            assert!(text.contains(want), "readnotes lacks {want:?}:\n{text}");
        }
        // The bzImage itself is not an ELF to Xen's tools.
        let bz = img.host(&kernel_of(1));
        let out = Command::new(READNOTES).arg(&bz).output().unwrap();
        assert!(!out.status.success() || String::from_utf8_lossy(&out.stdout).contains("not an ELF"));
    } else {
        skip("readnotes not found (apt-get install xen-utils-4.17)");
    }
    // -n reports the ELF's size.
    let out = Command::new(NIXBOOT)
        .args(["-n", "--unpack-kernel"])
        .arg(&img.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("({} bytes)", elf.len())), "{text}");
}

#[test]
fn unpack_kernel_is_capped_and_keeps_elf_kernels() {
    // A 3 MiB ELF, mostly zeros (past its segments): a small bzImage.
    let mut elf = xen_kernel(300_000, 8, true, false);
    elf.resize(3 << 20, 0);
    let Some(img) = bzimage_tree(elf) else { return };
    assert!(img.guest_bytes(&kernel_of(1)).len() < 1 << 20);
    // Its ELF is over a 2M cap.
    libxl()
        .bootloader_args(&["--unpack-kernel", "--max-kernel-size=2M"])
        .run(&img.path)
        .expect_guest_error(&["--unpack-kernel: kernel", "unpacks to more than 2097152 bytes"]);
    // An ELF kernel is handed over as it is.
    let Some(img) = Tree::nixos()
        .generation(1, Style::Bootspec)
        .current(1)
        .image(Layout::Bare, BlockSize::K1)
    else {
        return;
    };
    let ran = libxl().bootloader_args(&["--unpack-kernel"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(1), None);
}
