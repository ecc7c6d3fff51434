//! Generations as a boot loader sees them: the bootable check (missing,
//! non-PV and garbage kernels), fallback from a broken default, `--entry`
//! never falling back, `list` reporting problems, and the console menu
//! driven through a real pty.

use std::fs;

use crate::common::{BlockSize, Layout, Style, Tree, kernel_of, libxl};

/// Generations 1-3, current 3, with generation 3's kernel replaced by `f`.
fn broken_current(f: impl Fn(&std::path::Path) + 'static) -> Tree {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .generation(3, Style::Bootspec)
        .current(3)
        .with(move |root| f(&root.join(kernel_of(3).trim_start_matches('/'))))
}

#[test]
fn fallback_when_the_current_kernel_is_missing() {
    let Some(img) = broken_current(|k| fs::remove_file(k).unwrap()).image(Layout::Mbr, BlockSize::K4) else {
        return;
    };
    let ran = libxl().run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_entry(&img, img.entry(2), None);
    let c = &ran.console;
    assert!(
        c.contains(&format!(
            "*** the default entry {} is not bootable: kernel",
            img.entry(3).title()
        )),
        "{c}"
    );
    assert!(c.contains("does not exist"), "{c}");
    assert!(
        c.contains(&format!("*** falling back to {}", img.entry(2).title())),
        "{c}"
    );
    // With --entry there is no fallback: the reason is the error.
    let ran = libxl().bootloader_args(&["--entry=3"]).run(&img.path);
    ran.expect_guest_error(&[&img.entry(3).title(), "is not bootable", "does not exist"]);
}

#[test]
fn a_kernel_without_xen_pv_support_is_refused_for_a_pv_domain() {
    // Generation 3's kernel is an ELF with only the PVH entry note: it
    // boots a PVH domain, so only --domain-type=pv refuses it.
    let pvh = nixboot::fixtures::pv_elf(&[6, 5, 18], 100_000);
    let Some(img) = broken_current(move |k| fs::write(k, &pvh).unwrap()).image(Layout::Bare, BlockSize::K4) else {
        return;
    };
    let ran = libxl()
        .bootloader_args(&["--entry=3", "--domain-type=pv"])
        .run(&img.path);
    ran.expect_guest_error(&["has no Xen PV entry point, only a PVH one (CONFIG_XEN_PV?)"]);
    // The default boot falls back to generation 2 and says why.
    let ran = libxl().bootloader_args(&["--domain-type=pv"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(2), None);
    assert!(ran.console.contains("has no Xen PV entry point"), "{}", ran.console);
}

#[test]
fn garbage_kernels_and_no_bootable_generation() {
    let Some(img) = Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .current(2)
        .with(|root| {
            for n in [1, 2] {
                fs::write(
                    root.join(kernel_of(n).trim_start_matches('/')),
                    b"#!/bin/sh\necho not a kernel\n",
                )
                .unwrap();
            }
        })
        .image(Layout::Bare, BlockSize::K1)
    else {
        return;
    };
    let ran = libxl().run(&img.path);
    ran.expect_guest_error(&[
        "no bootable generation",
        "is neither a bzImage nor an ELF kernel",
        "generation 1:",
    ]);
    // With the menu on, nothing bootable means no menu and no countdown.
    let ran = libxl().menu().run(&img.path);
    ran.expect_guest_error(&["no bootable generation"]);
    assert!(!ran.console.contains("NixOS generations"), "{}", ran.console);
    assert!(ran.elapsed < std::time::Duration::from_secs(4), "{:?}", ran.elapsed);
}

#[test]
fn list_reports_which_generations_are_bootable() {
    let Some(img) = broken_current(|k| fs::remove_file(k).unwrap()).image(Layout::Gpt, BlockSize::K4) else {
        return;
    };
    let out = std::process::Command::new(crate::common::NIXBOOT)
        .args(["list", "--json"])
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = v["generations"].as_array().unwrap();
    let summary: Vec<(u64, bool, bool)> = g
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["current"].as_bool().unwrap(),
                g["bootable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, vec![(3, true, false), (2, false, true), (1, false, true)]);
    assert!(g[0]["problem"].as_str().unwrap().contains("does not exist"), "{}", g[0]);
    assert_eq!(g[1]["problem"], serde_json::Value::Null);
    assert_eq!(g[1]["label"].as_str().unwrap(), img.entry(2).title());
    // The table marks the current generation and says why 3 cannot boot.
    let out = std::process::Command::new(crate::common::NIXBOOT)
        .arg("list")
        .arg(&img.path)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().starts_with("*     3"), "{table}");
    assert!(table.contains("not bootable"), "{table}");
}

fn three() -> Option<crate::common::Image> {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .specialisation("debug", &["console=hvc0", "loglevel=7"])
        .generation(3, Style::Bootspec)
        .current(3)
        .image(Layout::Bare, BlockSize::K4)
}

#[test]
fn menu_down_enter_boots_the_previous_generation() {
    let Some(img) = three() else { return };
    // Entries: 3, 2, 2/debug, 1. Down moves to generation 2.
    let ran = libxl()
        .type_after("Booting the highlighted entry", b"\x1b[B")
        .type_after("> NixOS - Configuration 2", b"\r")
        .run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_entry(&img, img.entry(2), None);
    assert!(
        ran.console.contains(&format!("> {}", img.entry(3).title())),
        "{}",
        ran.console
    );
    assert!(
        ran.console.contains(&format!("> {}", img.entry(2).title())),
        "{}",
        ran.console
    );
    assert!(
        ran.elapsed < std::time::Duration::from_secs(4),
        "the key press did not stop the countdown"
    );
    assert!(!ran.raw.contains(&0x1b), "the menu drew escape sequences");
}

#[test]
fn menu_edit_adds_a_parameter_for_this_boot() {
    let Some(img) = three() else { return };
    let ran = libxl()
        .args("console=hvc0")
        .type_after("Booting the highlighted entry", b"e")
        .type_after("Edit the command line", b" systemd.unit=rescue.target\r")
        .run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_kernel(&img.guest_bytes(&img.entry(3).kernel));
    let want = format!(
        "{} systemd.unit=rescue.target",
        img.entry(3).cmdline(Some("console=hvc0"))
    );
    assert_eq!(booted.args.as_deref(), Some(want.as_str()));
}

#[test]
fn menu_countdown_runs_out_to_the_default() {
    let Some(img) = three() else { return };
    let ran = libxl().menu().bootloader_args(&["--timeout=1"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(3), None);
    assert!(
        ran.console.contains("Booting the highlighted entry in 1 s."),
        "{}",
        ran.console
    );
    assert!(
        ran.elapsed >= std::time::Duration::from_millis(900),
        "{:?}",
        ran.elapsed
    );
}

#[test]
fn no_menu_when_quiet_or_restricted() {
    let Some(img) = three() else { return };
    let ran = libxl().menu().bootloader_args(&["-q"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(3), None);
    assert!(!ran.console.contains("NixOS generations"), "{}", ran.console);
}

#[test]
fn initrd_secrets_warning_only_without_the_guest_module() {
    use crate::common::{BOOTSPEC_MARKER, initrd_of, toplevel_of};
    // Generation 1's boot.json names an initrdSecrets appender; with the
    // guest module's extension the secrets are already in the initrd.
    let boot_json = |ext: Option<bool>| {
        let top = toplevel_of(1, None);
        let mut v = serde_json::json!({
            "org.nixos.bootspec.v1": {
                "init": format!("{top}/init"),
                "initrd": initrd_of(1, None),
                "initrdSecrets": "/nix/store/00000000000000000000000000000000-append-initrd-secrets/bin/append-initrd-secrets",
                "kernel": kernel_of(1),
                "kernelParams": ["console=hvc0", "gen=1", BOOTSPEC_MARKER],
                "label": "NixOS",
                "system": "x86_64-linux",
                "toplevel": top,
            },
        });
        if let Some(b) = ext {
            v["org.nixboot.guest.v1"] = serde_json::json!({ "initrdSecretsInInitrd": b });
        }
        (format!("{top}/boot.json"), v.to_string())
    };
    for (ext, warns) in [(None, true), (Some(false), true), (Some(true), false)] {
        let (path, doc) = boot_json(ext);
        let Some(img) = Tree::nixos()
            .generation(1, Style::Bootspec)
            .current(1)
            .file(&path, doc)
            .image(Layout::Bare, BlockSize::K4)
        else {
            return;
        };
        let ran = libxl().run(&img.path);
        ran.expect_boot().assert_entry(&img, img.entry(1), None);
        assert_eq!(
            ran.console
                .contains("names an initrd secrets appender (\"/nix/store/00000000000000000000000000000000-append-initrd-secrets/bin/append-initrd-secrets\") and was not built with nixboot's guest module"),
            warns,
            "{ext:?}: {}",
            ran.console
        );
    }
}
