//! Generations made by real Nix (Debian's nix-bin), listed and booted by
//! nixboot: tiny `builder = "/bin/sh"` derivations shaped like NixOS
//! toplevels, `nix copy --to <root>`, `nix-env -p
//! <root>/nix/var/nix/profiles/system --set`, a rollback with
//! `--switch-generation`, then `mke2fs -d`. `nixboot list --json` must agree
//! with `nix-env --list-generations` (numbers, current marker, dates), and
//! booting must follow the profile and `--entry`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") || std::env::var_os("NIXBOOT_REQUIRE_TOOLS").is_some() {
        panic!("required test prerequisite missing: {why}");
    }
    eprintln!("skipped: {why}");
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const NIX_OPTS: &[&str] = &["--option", "sandbox", "false", "--option", "substituters", ""];

/// A NixOS-shaped toplevel: kernel, initrd, init, kernel-params,
/// nixos-version and (for bootspec generations) boot.json.
const EXPR: &str = r#"
{ kernelFile, gen, bootspec }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ];
  };
  kernel = mk "linux-6.6.${toString gen}" "mkdir $out; cp ${kernelFile} $out/bzImage";
  initrd = mk "initrd-linux-6.6.${toString gen}" "mkdir $out; echo initrd ${toString gen} > $out/initrd";
  params = "console=hvc0 nixboot.gen=${toString gen}";
in mk "nixos-system-guest-24.11.${toString gen}" ''
  mkdir $out
  ln -s ${kernel}/bzImage $out/kernel
  ln -s ${initrd}/initrd $out/initrd
  printf '#!/bin/sh\n' > $out/init
  printf '%s' '${params}' > $out/kernel-params
  printf '24.11.${toString gen}' > $out/nixos-version
  ${if bootspec then ''
  printf '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"%s","kernel":"%s","kernelParams":["console=hvc0","nixboot.gen=${toString gen}"],"label":"NixOS 24.11.${toString gen}","system":"x86_64-linux","toplevel":"%s"}}' \
    $out ${initrd}/initrd ${kernel}/bzImage $out > $out/boot.json
  '' else ""}
''
"#;

fn nixboot() -> &'static str {
    env!("CARGO_BIN_EXE_nixboot")
}

fn build(dir: &Path, kernel: &Path, generation: u32, bootspec: bool) -> PathBuf {
    let out = run(Command::new("nix-build")
        .args(NIX_OPTS)
        .arg(dir.join("toplevel.nix"))
        .args(["--no-out-link", "--arg", "kernelFile"])
        .arg(kernel)
        .args([
            "--arg",
            "gen",
            &generation.to_string(),
            "--arg",
            "bootspec",
            if bootspec { "true" } else { "false" },
        ]));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn nix_made_generations_are_listed_and_booted() {
    for tool in ["nix-build", "nix-env", "nix", "mke2fs"] {
        if !have(tool) {
            return skip(&format!("{tool} not installed (apt-get install nix-bin e2fsprogs)"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("toplevel.nix"), EXPR).unwrap();
    let kernel_bytes = nixboot::fixtures::pv_elf(nixboot::fixtures::LINUX_PV_NOTES, 200_000);
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, &kernel_bytes).unwrap();
    // Generation 1 predates bootspec; 2 and 3 have boot.json.
    let tops = [
        build(dir, &kernel, 1, false),
        build(dir, &kernel, 2, true),
        build(dir, &kernel, 3, true),
    ];
    let root = dir.join("root");
    let profile = root.join("nix/var/nix/profiles/system");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--no-check-sigs",
            "--to",
        ])
        .arg(&root)
        .args(&tops));
    for t in &tops {
        run(Command::new("nix-env").arg("-p").arg(&profile).arg("--set").arg(t));
    }
    // A rollback: the current generation is 2, not the highest.
    run(Command::new("nix-env")
        .arg("-p")
        .arg(&profile)
        .args(["--switch-generation", "2"]));
    let listed = run(Command::new("nix-env")
        .arg("-p")
        .arg(&profile)
        .arg("--list-generations")
        .env("TZ", "UTC"));
    let listed = String::from_utf8(listed.stdout).unwrap();
    // "   2   2026-11-26 16:30:00   (current)"
    let mut want: Vec<(u64, String, bool)> = listed
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                format!("{}T{}Z", f.get(1)?, f.get(2)?),
                l.contains("(current)"),
            ))
        })
        .collect();
    want.reverse(); // nixboot lists newest first
    assert_eq!(want.len(), 3, "{listed}");

    let img = dir.join("disk.img");
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("64M"));

    let out = run(Command::new(nixboot())
        .arg("list")
        .arg("--json")
        .arg(&img)
        .env("NIXBOOT_CACHE_DIR", ""));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gens = json["generations"].as_array().unwrap();
    let got: Vec<(u64, String, bool)> = gens
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["built"].as_str().unwrap().to_owned(),
                g["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got, want,
        "nixboot list disagrees with nix-env --list-generations:\n{listed}"
    );
    for (g, top) in gens.iter().zip(tops.iter().rev()) {
        assert_eq!(g["bootable"], true, "{g}");
        assert_eq!(g["init"].as_str().unwrap(), format!("{}/init", top.display()));
        assert_eq!(
            g["nixosVersion"].as_str().unwrap(),
            format!("24.11.{}", g["generation"])
        );
    }

    // The default boot follows the profile (2); --entry=3 and --entry=1 too.
    for (entry, generation) in [(None, 2), (Some("3"), 3), (Some("1"), 1)] {
        let outdir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(nixboot());
        cmd.args(["-q", "--output-format=simple", "--output=-"])
            .arg(format!("--output-directory={}", outdir.path().display()));
        if let Some(e) = entry {
            cmd.arg(format!("--entry={e}"));
        }
        let out = run(cmd.arg(&img).env("NIXBOOT_CACHE_DIR", ""));
        let text = String::from_utf8(out.stdout).unwrap();
        let top = &tops[generation - 1];
        assert!(
            text.contains(&format!(
                "args init={}/init console=hvc0 nixboot.gen={generation}\n",
                top.display()
            )),
            "{text}"
        );
        let kpath = text.lines().find_map(|l| l.strip_prefix("kernel ")).unwrap();
        assert_eq!(std::fs::read(kpath).unwrap(), kernel_bytes);
        let rpath = text.lines().find_map(|l| l.strip_prefix("ramdisk ")).unwrap();
        assert_eq!(
            std::fs::read_to_string(rpath).unwrap(),
            format!("initrd {generation}\n")
        );
    }
}
