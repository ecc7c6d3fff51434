//! `/nix` on its own filesystem: a small root partition whose `/nix` is an
//! empty mount point, and a partition whose own root holds `store/` and
//! `var/nix/profiles/` (impermanence, tmpfs roots). The generation links
//! still name `/nix/store/…`; nixboot maps every guest path under `/nix`
//! into that filesystem, and nothing outside it.

use std::os::unix::fs::symlink;

use crate::common::{BlockSize, Layout, Style, Tree, libxl, nixboot};

fn split() -> Tree {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .specialisation("debug", &["console=hvc0", "loglevel=7"])
        .generation(3, Style::Bootspec)
        .current(3)
}

#[test]
fn boots_the_current_generation_from_a_nix_partition() {
    let Some(img) = split().image(Layout::NixPartition, BlockSize::K4) else {
        return;
    };
    let before = img.fingerprint();
    let ran = libxl().run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_entry(&img, img.entry(3), None);
    let want = format!(
        "nixboot: booting {} from MBR partition 2 (type 0x83, offset {}), the guest's /nix: ",
        img.entry(3).title(),
        img.fs_offset
    );
    assert!(ran.console.contains(&want), "want {want:?}:\n{}", ran.console);
    assert_eq!(img.fingerprint(), before, "the disk image changed");
}

#[test]
fn entry_list_and_specialisations_on_a_nix_partition() {
    let Some(img) = split().image(Layout::NixPartition, BlockSize::K1) else {
        return;
    };
    libxl()
        .bootloader_args(&["--entry=1"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(1), None);
    libxl()
        .bootloader_args(&["--entry=2/debug"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.spec(2, "debug"), None);
    let ran = nixboot(&["list", "--json", img.path.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    let v: serde_json::Value = serde_json::from_str(&ran.console).unwrap();
    let numbers: Vec<u64> = v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert!(
        v["generations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["bootable"] == true)
    );
}

/// The installed default (`/nix/var/nix/nixboot.json`) is the filesystem's
/// own `var/nix/nixboot.json`.
#[test]
fn installed_default_on_a_nix_partition() {
    let tree = split();
    let top = crate::common::toplevel_of(2, None);
    let doc = format!(r#"{{"version":1,"default":"{top}","timeout":1,"limit":null}}"#);
    let Some(img) = tree
        .file("/nix/var/nix/nixboot.json", doc)
        .image(Layout::NixPartition, BlockSize::K4)
    else {
        return;
    };
    let ran = libxl().run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(2), None);
    assert!(ran.console.contains("installed default"), "{}", ran.console);
}

/// A link that leaves `/nix` on such a filesystem names the path; nixboot
/// never guesses another partition for it.
#[test]
fn a_link_out_of_nix_is_an_error_naming_the_path() {
    let tree = split().generation(4, Style::Legacy).current(4).with(|root| {
        let k = root
            .join(crate::common::toplevel_of(4, None).trim_start_matches('/'))
            .join("kernel");
        std::fs::remove_file(&k).unwrap();
        symlink("/boot/bzImage", &k).unwrap();
    });
    let Some(img) = tree.image(Layout::NixPartition, BlockSize::K4) else {
        return;
    };
    libxl()
        .bootloader_args(&["--entry=4"])
        .run(&img.path)
        .expect_guest_error(&["\"/boot\" is outside /nix, the only part of the guest on ext4"]);
    // Without --entry, the fallback boots the newest older generation.
    let ran = libxl().run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(3), None);
    assert!(ran.console.contains("\"/boot\" is outside /nix"), "{}", ran.console);
}
