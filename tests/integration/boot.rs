//! Booting generated NixOS images: every layout and block size, the
//! generation choice, `--entry`, `--kernel`, `--args`, and the bytes that
//! land in the output directory.

use crate::common::{BOOTSPEC_MARKER, BlockSize, Image, Layout, Style, Tree, have_root, libxl, nixboot};

/// Three generations, the current one (2) not the highest: the state after
/// `nixos-rebuild switch --rollback`. 1 is legacy, 2 and 3 have boot.json.
fn rolled_back() -> Tree {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .specialisation("debug", &["console=hvc0", "loglevel=7"])
        .generation(3, Style::Bootspec)
        .current(2)
}

fn boots_current_on(layout: Layout) {
    for bs in [BlockSize::K1, BlockSize::K4] {
        let Some(img) = rolled_back().image(layout, bs) else {
            return;
        };
        // Where the system is; an earlier partition is tried and skipped.
        let found = match layout {
            Layout::Bare => "whole disk".to_owned(),
            Layout::Mbr => format!("MBR partition 2 (type 0x83, offset {})", img.fs_offset),
            Layout::MbrLogical => format!("MBR partition 6 (type 0x83, offset {})", img.fs_offset),
            Layout::Gpt => format!("GPT partition 2 (offset {})", img.fs_offset),
            Layout::NixPartition => format!(
                "MBR partition 2 (type 0x83, offset {}), the guest's /nix",
                img.fs_offset
            ),
        };
        let before = img.fingerprint();
        let ran = libxl().run(&img.path);
        let booted = ran.expect_boot();
        booted.assert_entry(&img, img.entry(2), None);
        let want = format!("nixboot: booting {} from {found}: ", img.entry(2).title());
        assert!(
            ran.console.contains(&want),
            "{layout:?} {bs:?}: want {want:?}:\n{}",
            ran.console
        );
        assert_eq!(img.fingerprint(), before, "the disk image changed");
    }
}

#[test]
fn bare_disk_both_block_sizes() {
    boots_current_on(Layout::Bare);
}

/// Partition 1 is an ext4 without a NixOS profile; 2 holds the system.
#[test]
fn mbr_ext4_not_first_both_block_sizes() {
    boots_current_on(Layout::Mbr);
}

/// The system is logical partition 6, after an empty primary and a
/// swap-typed logical 5.
#[test]
fn mbr_logical_partition_both_block_sizes() {
    boots_current_on(Layout::MbrLogical);
}

/// Partition 1 is an (empty) EFI system partition; 2 holds the system.
#[test]
fn gpt_ext4_not_first_both_block_sizes() {
    boots_current_on(Layout::Gpt);
}

#[test]
fn current_legacy_generation_uses_toplevel_files() {
    let tree = Tree::nixos()
        .generation(1, Style::Bootspec)
        .generation(4, Style::Legacy)
        .params(&["console=hvc0", "loglevel=4", "quiet"])
        .current(4);
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let booted = libxl().run(&img.path).expect_boot();
    booted.assert_entry(&img, img.entry(4), None);
    let args = booted.args.unwrap();
    assert!(!args.contains(BOOTSPEC_MARKER), "{args}");
    assert!(args.ends_with(" console=hvc0 loglevel=4 quiet"), "{args}");
}

/// boot.json wins over the toplevel's `kernel-params` when both exist.
#[test]
fn bootspec_is_preferred_over_toplevel_files() {
    let Some(img) = rolled_back().image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    let booted = libxl().run(&img.path).expect_boot();
    let args = booted.args.unwrap();
    assert!(args.ends_with(&format!(" gen=2 {BOOTSPEC_MARKER}")), "{args}");
}

#[test]
fn no_initrd_gives_no_ramdisk_item() {
    for style in [Style::Legacy, Style::Bootspec] {
        let tree = Tree::nixos().generation(7, style).no_initrd().current(7);
        let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
            return;
        };
        let booted = libxl().run(&img.path).expect_boot();
        assert_eq!(booted.ramdisk, None, "{style:?}");
        booted.assert_entry(&img, img.entry(7), None);
    }
}

#[test]
fn args_are_appended_after_the_generation_params() {
    let Some(img) = rolled_back().image(Layout::Gpt, BlockSize::K4) else {
        return;
    };
    let extra = "root=/dev/xvda2 marker=from-xl-extra";
    let booted = libxl().args(extra).run(&img.path).expect_boot();
    booted.assert_entry(&img, img.entry(2), Some(extra));
    let args = booted.args.unwrap();
    assert!(args.ends_with(&format!("{BOOTSPEC_MARKER} {extra}")), "{args}");
}

#[test]
fn entry_n_boots_that_generation() {
    let Some(img) = rolled_back().image(Layout::Mbr, BlockSize::K1) else {
        return;
    };
    for n in [1u64, 3] {
        let entry = format!("--entry={n}");
        let ran = libxl().args("quiet").bootloader_args(&[&entry]).run(&img.path);
        ran.expect_boot().assert_entry(&img, img.entry(n), Some("quiet"));
    }
}

#[test]
fn entry_n_slash_specialisation() {
    let tree = rolled_back()
        .generation(4, Style::Legacy)
        .specialisation("nogui", &["console=hvc0", "systemd.unit=multi-user.target"]);
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    // A bootspec generation's specialisation (from boot.json).
    let booted = libxl()
        .bootloader_args(&["--entry=2/debug"])
        .run(&img.path)
        .expect_boot();
    booted.assert_entry(&img, img.spec(2, "debug"), None);
    assert_ne!(img.spec(2, "debug").initrd, img.entry(2).initrd);
    // A legacy generation's specialisation (from `specialisation/<name>`).
    let booted = libxl()
        .bootloader_args(&["--entry=4/nogui"])
        .run(&img.path)
        .expect_boot();
    booted.assert_entry(&img, img.spec(4, "nogui"), None);
    // A bare name is a specialisation of the current generation.
    let booted = libxl().bootloader_args(&["--entry=debug"]).run(&img.path).expect_boot();
    booted.assert_entry(&img, img.spec(2, "debug"), None);
}

/// pygrub users pass a menu title; nixboot accepts the exact title.
#[test]
fn entry_exact_menu_title() {
    let Some(img) = rolled_back().image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let title = img.entry(1).title();
    let arg = format!("--entry={title}");
    let booted = libxl().bootloader_args(&[&arg]).run(&img.path).expect_boot();
    booted.assert_entry(&img, img.entry(1), None);
    let title = img.spec(2, "debug").title();
    let arg = format!("--entry={title}");
    let booted = libxl().bootloader_args(&[&arg]).run(&img.path).expect_boot();
    booted.assert_entry(&img, img.spec(2, "debug"), None);
}

#[test]
fn unknown_entry_is_an_error_naming_what_exists() {
    let Some(img) = rolled_back().image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    libxl()
        .bootloader_args(&["--entry=9"])
        .run(&img.path)
        .expect_guest_error(&["no generation 9; generations on the disk: 3, 2, 1"]);
    libxl()
        .bootloader_args(&["--entry=2/nope"])
        .run(&img.path)
        .expect_guest_error(&["generation 2 has no specialisation \"nope\"; it has: debug"]);
    libxl()
        .bootloader_args(&["--entry=nope"])
        .run(&img.path)
        .expect_guest_error(&["no entry \"nope\": use a generation number (e.g. --entry=3)"]);
}

/// `kernel=`/`ramdisk=` in the domain config: those guest files, and the
/// command line is `--args` alone (pygrub's behaviour).
#[test]
fn kernel_and_ramdisk_guest_paths() {
    let tree = rolled_back()
        .symlink("/boot/vmlinuz", "../nix/var/nix/profiles/system/kernel")
        .file("/boot/initrd.img", b"a hand-made initrd\n".to_vec());
    let Some(img) = tree.image(Layout::Gpt, BlockSize::K1) else {
        return;
    };
    let booted = libxl()
        .kernel("/boot/vmlinuz")
        .ramdisk("/boot/initrd.img")
        .args("root=/dev/xvda2 ro")
        .run(&img.path)
        .expect_boot();
    booted.assert_kernel(&img.guest_bytes(&img.entry(2).kernel));
    booted.assert_ramdisk(b"a hand-made initrd\n");
    assert_eq!(booted.args.as_deref(), Some("root=/dev/xvda2 ro"));
    // No --args: no args item at all (not an empty one).
    let booted = libxl().kernel(&img.entry(3).kernel).run(&img.path).expect_boot();
    booted.assert_kernel(&img.guest_bytes(&img.entry(3).kernel));
    assert_eq!((booted.ramdisk.as_ref(), booted.args.as_ref()), (None, None));
    // A --kernel that is not there.
    libxl()
        .kernel("/boot/missing")
        .run(&img.path)
        .expect_guest_error(&["no filesystem holding \"/boot/missing\""]);
}

/// A 2 MiB + 1 byte kernel spans several transfer frames; a 1-byte initrd
/// is the smallest file there is.
#[test]
fn large_kernel_and_tiny_initrd_are_copied_exactly() {
    let tree = Tree::nixos()
        .generation(5, Style::Legacy)
        .kernel_size(2 * 1024 * 1024 + 1)
        .current(5)
        .with(|root| {
            let i = crate::common::initrd_of(5, None);
            std::fs::write(root.join(i.trim_start_matches('/')), b"x").unwrap();
        });
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let booted = libxl().run(&img.path).expect_boot();
    booted.assert_entry(&img, img.entry(5), None);
    assert_eq!(std::fs::metadata(&booted.kernel).unwrap().len(), 2 * 1024 * 1024 + 1);
    booted.assert_ramdisk(b"x");
}

#[test]
fn not_really_reports_and_copies_nothing() {
    let Some(img) = rolled_back().image(Layout::Mbr, BlockSize::K4) else {
        return;
    };
    for flag in ["-n", "--not-really"] {
        let ran = libxl().bootloader_args(&[flag]).run(&img.path);
        ran.assert_ended_cleanly();
        assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
        let e = img.entry(2);
        let klen = img.guest_bytes(&e.kernel).len();
        let ilen = img.guest_bytes(e.initrd.as_ref().unwrap()).len();
        for want in [
            format!("entry   {}\n", e.title()),
            format!("kernel  {} ({klen} bytes)\n", e.kernel),
            format!("initrd  {} ({ilen} bytes)\n", e.initrd.as_ref().unwrap()),
            format!("args    {}\n", e.cmdline(None)),
        ] {
            assert!(ran.console.contains(&want), "{flag}: lacks {want:?}:\n{}", ran.console);
        }
        assert_eq!(std::fs::read(ran.out_file.as_ref().unwrap()).unwrap(), b"");
        assert!(crate::common::dir_entries(ran.out_dir.as_ref().unwrap()).is_empty());
    }
}

#[test]
fn list_json_shows_every_generation_and_the_current_one() {
    let Some(img) = rolled_back().image(Layout::Gpt, BlockSize::K4) else {
        return;
    };
    let path = img.path.to_str().unwrap();
    let ran = nixboot(&["list", "--json", path]);
    ran.assert_ended_cleanly();
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    let v: serde_json::Value = serde_json::from_str(&ran.console).unwrap();
    let gens = v["generations"].as_array().unwrap();
    let numbers: Vec<u64> = gens.iter().map(|g| g["generation"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);
    let current: Vec<bool> = gens.iter().map(|g| g["current"].as_bool().unwrap()).collect();
    assert_eq!(current, [false, true, false]);
    assert_eq!(gens[1]["specialisations"], serde_json::json!(["debug"]));
    assert_eq!(gens[1]["label"], img.entry(2).title());
    assert_eq!(gens[2]["kernel"], img.entry(1).kernel);
    assert!(gens.iter().all(|g| g["bootable"] == true));
    // The table marks the current generation.
    let ran = nixboot(&["list", path]);
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    let line = ran.console.lines().find(|l| l.starts_with('*')).unwrap();
    assert!(line.contains(&img.entry(2).title()), "{}", ran.console);
}

/// Restricted mode (`LIBXL_BOOTLOADER_RESTRICT`): libxl adds `--runas=UID
/// --quiet`; the parser runs as that uid in fresh namespaces. The result
/// is the same and, being quiet, the console stays empty.
#[test]
fn runas_restricted_mode() {
    if !have_root("--runas (setuid, namespaces)") {
        return;
    }
    let Some(img) = rolled_back().image(Layout::MbrLogical, BlockSize::K1) else {
        return;
    };
    let ran = libxl().runas(65534).args("console=hvc0").run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(2), Some("console=hvc0"));
    // --quiet: only the one summary line the admin needs in the log.
    assert_eq!(
        ran.console.lines().count(),
        1,
        "--quiet printed more than the summary: {}",
        ran.console
    );
    assert!(
        ran.console
            .starts_with(&format!("nixboot: booting {}", img.entry(2).title())),
        "{}",
        ran.console
    );
}

/// The checks above rely on the fixture builder: a tree's kernels really
/// differ between generations, so a wrong generation cannot pass.
#[test]
fn fixture_generations_are_distinguishable() {
    let Some(img): Option<Image> = rolled_back().image(Layout::Bare, BlockSize::K1) else {
        return;
    };
    let k: Vec<Vec<u8>> = (1..=3).map(|n| img.guest_bytes(&img.entry(n).kernel)).collect();
    assert!(k[0] != k[1] && k[1] != k[2] && k[0] != k[2]);
    assert_ne!(img.entry(2).cmdline(None), img.entry(3).cmdline(None));
}

/// A generation whose boot.json is broken still boots from the toplevel's
/// own files, with one warning that says what was wrong with boot.json.
#[test]
fn invalid_boot_json_falls_back_to_toplevel_files() {
    let top = crate::common::toplevel_of(2, None);
    let tree = rolled_back().with(move |root| {
        std::fs::write(
            root.join(format!("{}/boot.json", top.trim_start_matches('/'))),
            b"{\"org.nixos.bootspec.v1\": [",
        )
        .unwrap();
    });
    let Some(img) = tree.image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let ran = libxl().run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_kernel(&img.guest_bytes(&img.entry(2).kernel));
    let args = booted.args.unwrap();
    assert!(args.ends_with(" gen=2"), "{args}");
    let warn: Vec<&str> = ran
        .console
        .lines()
        .filter(|l| l.starts_with("nixboot: warn: "))
        .collect();
    assert_eq!(warn.len(), 1, "{}", ran.console);
    let want = format!(
        "nixboot: warn: \"{}/boot.json\": invalid boot.json: ",
        img.entry(2).toplevel
    );
    assert!(warn[0].starts_with(&want), "{}", ran.console);
    assert!(
        warn[0].ends_with("; using the toplevel's files instead"),
        "{}",
        ran.console
    );
    assert!(!warn[0].contains("not a NixOS system"), "{}", ran.console);
}
