//! `nixos-rebuild -p NAME` profiles: `--profile=NAME` (its current
//! generation, `--entry` inside it), `list` and `list --json` showing every
//! profile, the menu, an installed default that is a generation of a named
//! profile, the cap on profiles read, and GRUB's install-grub.pl titles for
//! `--entry`.

use std::fs;
use std::process::Command;

use crate::common::{
    BlockSize, Image, Layout, NIXBOOT, SYSTEM_PROFILES, Style, Tree, date_of, libxl, toplevel_in, version_of,
};

/// System generations 1, 2 (current 2, 2 has specialisation `s`); profile
/// `work` generations 1-3 (current 2; 3 has specialisation `debug`);
/// profile `test` generation 1.
fn profiles_tree() -> Tree {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .specialisation("s", &["console=hvc0", "spec=s"])
        .current(2)
        .profile_generation("work", 1, Style::Legacy)
        .profile_generation("work", 2, Style::Bootspec)
        .profile_generation("work", 3, Style::Bootspec)
        .specialisation("debug", &["console=hvc0", "loglevel=7"])
        .profile_current("work", 2)
        .profile_generation("test", 1, Style::Bootspec)
        .profile_current("test", 1)
}

fn image() -> Option<Image> {
    profiles_tree().image(Layout::Mbr, BlockSize::K4)
}

fn list_json(img: &Image) -> serde_json::Value {
    let out = Command::new(NIXBOOT)
        .args(["list", "--json"])
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn profile_boots_its_current_generation_and_entries_inside_it() {
    let Some(img) = image() else { return };
    // Without --profile: the system profile, as before.
    libxl()
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(2), None);
    let ran = libxl().bootloader_args(&["--profile=work"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.profile_entry("work", 2), None);
    assert!(
        ran.console.contains(&format!(
            "booting {} from MBR partition 2",
            img.profile_entry("work", 2).title()
        )),
        "{}",
        ran.console
    );
    assert!(
        ran.console
            .contains("--profile=work: the profile's current generation (/nix/var/nix/profiles/system-profiles/work -> work-2-link)"),
        "{}",
        ran.console
    );
    libxl()
        .bootloader_args(&["--profile=work", "--entry=3"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.profile_entry("work", 3), None);
    libxl()
        .bootloader_args(&["--profile=work", "--entry=3/debug"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.profile_spec("work", 3, "debug"), None);
    libxl()
        .bootloader_args(&["--profile=test"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.profile_entry("test", 1), None);
    // --profile=system is the system profile's current generation.
    libxl()
        .bootloader_args(&["--profile=system", "--entry=1"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(1), None);
    // nixboot's own title of a profile entry works without --profile.
    let title = img.profile_entry("work", 1).title();
    libxl()
        .bootloader_args(&[&format!("--entry={title}")])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.profile_entry("work", 1), None);
    // Errors name what exists.
    libxl()
        .bootloader_args(&["--profile=work", "--entry=9"])
        .run(&img.path)
        .expect_guest_error(&["no generation 9 in profile 'work'; its generations: 3, 2, 1"]);
    libxl()
        .bootloader_args(&["--profile=nope"])
        .run(&img.path)
        .expect_guest_error(&["no profile nope", "system-profiles/nope does not exist"]);
    libxl()
        .bootloader_args(&["--profile=../etc"])
        .run(&img.path)
        .expect_usage(&["is not a profile name"]);
}

#[test]
fn list_shows_every_profile() {
    let Some(img) = image() else { return };
    let v = list_json(&img);
    let gens = v["generations"].as_array().unwrap();
    let summary: Vec<(String, u64, bool, bool)> = gens
        .iter()
        .map(|g| {
            (
                g["profile"].as_str().unwrap().to_owned(),
                g["generation"].as_u64().unwrap(),
                g["current"].as_bool().unwrap(),
                g["bootable"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64, bool, bool)> = [
        ("system", 2, true),
        ("system", 1, false),
        ("test", 1, true),
        ("work", 3, false),
        ("work", 2, true),
        ("work", 1, false),
    ]
    .iter()
    .map(|(p, n, c)| ((*p).to_owned(), *n, *c, true))
    .collect();
    assert_eq!(summary, want);
    assert_eq!(gens[3]["label"].as_str().unwrap(), img.profile_entry("work", 3).title());
    assert_eq!(gens[3]["specialisations"], serde_json::json!(["debug"]));
    assert_eq!(
        gens[3]["init"].as_str().unwrap(),
        format!("{}/init", img.profile_entry("work", 3).toplevel)
    );
    assert_eq!(v["default"]["profile"], "system");
    assert_eq!(v["default"]["generation"], 2);
    // The table: system first, then each profile under a heading.
    let out = Command::new(NIXBOOT).arg("list").arg(&img.path).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let at = |needle: &str| {
        table
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{table}"))
    };
    assert!(
        at(&img.entry(1).title()) < at("profile 'test' (--profile=test):"),
        "{table}"
    );
    assert!(at("profile 'test' (--profile=test):") < at(&img.profile_entry("test", 1).title()));
    assert!(at(&img.profile_entry("test", 1).title()) < at("profile 'work' (--profile=work):"));
    assert!(at("profile 'work' (--profile=work):") < at(&img.profile_spec("work", 3, "debug").title()));
}

#[test]
fn installed_default_in_a_named_profile_is_followed() {
    for (spec, want_spec) in [(None, None), (Some("debug"), Some("debug"))] {
        let top = toplevel_in(Some("work"), 3, spec);
        let doc = format!(r#"{{"version":1,"default":"{top}","timeout":5,"limit":null}}"#);
        let Some(img) = profiles_tree()
            .file("/nix/var/nix/nixboot.json", doc)
            .image(Layout::Bare, BlockSize::K4)
        else {
            return;
        };
        let want = match want_spec {
            None => img.profile_entry("work", 3),
            Some(s) => img.profile_spec("work", 3, s),
        };
        let ran = libxl().run(&img.path);
        ran.expect_boot().assert_entry(&img, want, None);
        assert!(
            ran.console.contains(&format!(
                "booting {} from whole disk: the installed default in /nix/var/nix/nixboot.json",
                want.title()
            )),
            "{}",
            ran.console
        );
        let v = list_json(&img);
        assert_eq!(v["default"]["profile"], "work");
        assert_eq!(v["default"]["generation"], 3);
        assert_eq!(v["default"]["specialisation"], serde_json::json!(want_spec));
        // GRUB's "NixOS - Default" is the installed default too.
        libxl()
            .bootloader_args(&["--entry=NixOS - Default"])
            .run(&img.path)
            .expect_boot()
            .assert_entry(&img, want, None);
        // --profile=system is the system profile's current generation.
        libxl()
            .bootloader_args(&["--profile=system"])
            .run(&img.path)
            .expect_boot()
            .assert_entry(&img, img.entry(2), None);
    }
}

#[test]
fn grub_titles_name_the_same_entries() {
    let Some(img) = image() else { return };
    let v = |n: u64| format!("{} - {}", date_of(n), version_of(n));
    let cases: Vec<(Vec<String>, &crate::common::Entry)> = vec![
        (vec!["--entry=NixOS - Default".into()], img.entry(2)),
        (vec!["--entry=NixOS".into()], img.entry(2)),
        (
            vec![format!("--entry=NixOS - Configuration 1 ({})", v(1))],
            img.entry(1),
        ),
        (
            vec![format!("--entry=NixOS - Configuration 2 - Default ({})", v(2))],
            img.entry(2),
        ),
        (
            // GRUB's date is the guest's local time; nixboot matches by number.
            vec![format!(
                "--entry=NixOS - Configuration 1 (1999-12-31 - {})",
                version_of(1)
            )],
            img.entry(1),
        ),
        (
            vec![format!(
                "--entry=NixOS - Configuration 2 (s - 1970-01-01 - {})",
                version_of(2)
            )],
            img.spec(2, "s"),
        ),
        (
            vec![format!("--entry=NixOS (s - 1970-01-01 - {})", version_of(2))],
            img.spec(2, "s"),
        ),
        (
            vec!["--entry=NixOS - Profile 'work'".into()],
            img.profile_entry("work", 2),
        ),
        (vec!["--entry=NixOS - All configurations".into()], img.entry(2)),
        (
            vec![
                "--profile=work".into(),
                format!("--entry=NixOS - Configuration 3 ({})", v(3)),
            ],
            img.profile_entry("work", 3),
        ),
        (
            vec![
                "--profile=work".into(),
                format!(
                    "--entry=NixOS - Configuration 3 (debug - 1970-01-01 - {})",
                    version_of(3)
                ),
            ],
            img.profile_spec("work", 3, "debug"),
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = libxl().bootloader_args(&args).run(&img.path);
        ran.expect_boot().assert_entry(&img, want, None);
    }
    libxl()
        .bootloader_args(&["--entry=NixOS - Profile '../../etc'"])
        .run(&img.path)
        .expect_guest_error(&["no profile \"../../etc\": not a profile name"]);
    libxl()
        .bootloader_args(&[&format!("--entry=NixOS - Configuration 7 ({})", v(1))])
        .run(&img.path)
        .expect_guest_error(&["no generation 7; generations on the disk: 2, 1"]);
}

#[test]
fn menu_groups_profiles_and_boots_a_profile_entry() {
    let Some(img) = image() else { return };
    // Items: system 2, 2/s, 1; test 1; work 3, 3/debug, 2, 1. Down four
    // times reaches work generation 3.
    let work3 = img.profile_entry("work", 3).title();
    let ran = libxl()
        .type_after("Booting the highlighted entry", b"\x1b[B\x1b[B\x1b[B\x1b[B")
        .type_after(&format!("> {work3}"), b"\r")
        .run(&img.path);
    ran.expect_boot().assert_entry(&img, img.profile_entry("work", 3), None);
    let c = &ran.console;
    let pos = |t: &str| c.find(t).unwrap_or_else(|| panic!("no {t:?} in\n{c}"));
    assert!(pos(&img.entry(1).title()) < pos(&img.profile_entry("test", 1).title()));
    assert!(pos(&img.profile_entry("test", 1).title()) < pos(&work3));
    // The highlighted default is still the system profile's current one.
    assert!(c.contains(&format!("> {}", img.entry(2).title())), "{c}");
    assert!(c.contains("chosen at the console menu"), "{c}");
}

#[test]
fn profiles_read_are_capped() {
    // 300 profiles, each one generation (the system generation's toplevel):
    // the first 256 by name are listed, with a warning.
    let Some(img) = Tree::nixos()
        .generation(1, Style::Bootspec)
        .current(1)
        .with(|root| {
            let dir = root.join(SYSTEM_PROFILES.trim_start_matches('/'));
            fs::create_dir_all(&dir).unwrap();
            let top = crate::common::toplevel_of(1, None);
            for i in 0..300 {
                let name = format!("p{i:03}");
                std::os::unix::fs::symlink(&top, dir.join(format!("{name}-1-link"))).unwrap();
                std::os::unix::fs::symlink(format!("{name}-1-link"), dir.join(&name)).unwrap();
            }
        })
        .extra_inodes(700)
        .image(Layout::Bare, BlockSize::K4)
    else {
        return;
    };
    let out = Command::new(NIXBOOT)
        .args(["list", "--json"])
        .arg(&img.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("300 profiles in /nix/var/nix/profiles/system-profiles; only the first 256"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let profiles: Vec<&str> = v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["profile"].as_str().unwrap())
        .collect();
    assert_eq!(profiles.len(), 257);
    assert_eq!(profiles[0], "system");
    assert_eq!(profiles[1], "p000");
    assert_eq!(profiles[256], "p255");
    // A profile past the cap is not read.
    libxl()
        .bootloader_args(&["--profile=p299"])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(1), None);
}

#[test]
fn profiles_on_a_nix_partition() {
    // The same profiles with /nix on its own filesystem: system-profiles
    // lives under /nix/var/nix/profiles, so it maps into that filesystem.
    let Some(img) = profiles_tree().image(Layout::NixPartition, BlockSize::K4) else {
        return;
    };
    let ran = libxl().bootloader_args(&["--profile=work", "--entry=3"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.profile_entry("work", 3), None);
    assert!(ran.console.contains("the guest's /nix"), "{}", ran.console);
    let v = list_json(&img);
    let profiles: Vec<&str> = v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["profile"].as_str().unwrap())
        .collect();
    assert_eq!(profiles, ["system", "system", "test", "work", "work", "work"]);
}
