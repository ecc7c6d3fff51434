//! The installed default (`/nix/var/nix/nixboot.json`, written by
//! `xen/nix/guest.nix`'s install hook) on real ext4 images made with
//! `mke2fs -d`, booted by the real binary: which entry boots, and the log
//! line that says why. Also the hook script's own output, parsed by
//! nixboot's parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use nixboot::nixos::installed::{self, GuestTimeout};

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") || std::env::var_os("NIXBOOT_REQUIRE_TOOLS").is_some() {
        panic!("required test prerequisite missing: {why}");
    }
    eprintln!("skipped: {why}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /sbin/{tool} || test -x /usr/sbin/{tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const KERNEL: &str = "nix/store/6l0z5kd0lpx1sw9y3h1d8cnk0mxxcx1q-linux-6.6.63";
const INITRD: &str = "nix/store/0m9pdrw0r0wsnqb7rl7s7m0dmpc8jqy4-initrd-linux-6.6.63";
const G1: &str = "nix/store/9q3bm1h2mdsf9aisqgd0f0bsl6gy3kdk-nixos-system-t-23.05";
const G2: &str = "nix/store/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-t-24.11";
const G2D: &str = "nix/store/1bq8wkqvy9xbj05ak6w7sxmjpjw1pms7-nixos-system-t-24.11-debug";
const G3: &str = "nix/store/3z0hfmqa5j0pvvq8m1pn2h1v8lqh7fd6-nixos-system-t-25.05";
const G3S: &str = "nix/store/4k9rnd0w7dj5bq2m9x3zlg6yq4v5lh1c-nixos-system-t-25.05-safe";

fn v1(top: &str, params: &str) -> String {
    format!(
        r#"{{"init":"/{top}/init","initrd":"/{INITRD}/initrd","kernel":"/{KERNEL}/bzImage","kernelParams":[{params}],"label":"NixOS","system":"x86_64-linux","toplevel":"/{top}"}}"#
    )
}

/// A whole-disk ext4 image: generation 1 (no boot.json), 2 (boot.json,
/// specialisation `debug` as a link only), 3 (current; boot.json with
/// specialisation `safe`), and `nixboot.json` with `installed` if given.
fn image(dir: &Path, installed: Option<&str>) -> PathBuf {
    let t = dir.join("tree");
    let p = |s: &str| t.join(s);
    for d in [KERNEL, INITRD, G1, G2, G2D, G3, G3S, "nix/var/nix/profiles"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    let ok = Command::new("python3")
        .arg(repo().join("testdata/demo/pvkernel.py"))
        .arg(p(&format!("{KERNEL}/bzImage")))
        .arg("65536")
        .status()
        .unwrap()
        .success();
    assert!(ok, "pvkernel.py failed");
    std::fs::write(p(&format!("{INITRD}/initrd")), "initrd\n").unwrap();
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, p(at)).unwrap();
    for g in [G1, G2, G2D, G3, G3S] {
        std::fs::write(p(&format!("{g}/init")), "#!/bin/sh\n").unwrap();
        std::fs::write(p(&format!("{g}/nixos-version")), "test").unwrap();
        std::fs::write(p(&format!("{g}/kernel-params")), "console=hvc0").unwrap();
        link(&format!("/{KERNEL}/bzImage"), &format!("{g}/kernel"));
        link(&format!("/{INITRD}/initrd"), &format!("{g}/initrd"));
    }
    std::fs::create_dir_all(p(&format!("{G2}/specialisation"))).unwrap();
    link(&format!("/{G2D}"), &format!("{G2}/specialisation/debug"));
    std::fs::write(
        p(&format!("{G2}/boot.json")),
        format!(
            r#"{{"org.nixos.bootspec.v1":{},"org.nixos.specialisation.v1":{{"debug":{{"org.nixos.bootspec.v1":{}}}}}}}"#,
            v1(G2, r#""g2""#),
            v1(G2D, r#""g2-debug""#)
        ),
    )
    .unwrap();
    // Generation 3's specialisation exists only in its boot.json.
    std::fs::write(
        p(&format!("{G3}/boot.json")),
        format!(
            r#"{{"org.nixos.bootspec.v1":{},"org.nixos.specialisation.v1":{{"safe":{{"org.nixos.bootspec.v1":{}}}}}}}"#,
            v1(G3, r#""g3""#),
            v1(G3S, r#""g3-safe""#)
        ),
    )
    .unwrap();
    for (n, g) in [(1, G1), (2, G2), (3, G3)] {
        link(&format!("/{g}"), &format!("nix/var/nix/profiles/system-{n}-link"));
    }
    link("system-3-link", "nix/var/nix/profiles/system");
    if let Some(text) = installed {
        std::fs::write(p("nix/var/nix/nixboot.json"), text).unwrap();
    }
    let img = dir.join("disk.img");
    let out = Command::new("mke2fs")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-d"])
        .arg(&t)
        .arg(&img)
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
    img
}

/// Boot `installed` with `nixboot -n [extra]`: (stdout, stderr).
fn boot(installed: Option<&str>, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), installed);
    let out = Command::new(env!("CARGO_BIN_EXE_nixboot"))
        .arg("-n")
        .args(extra)
        .arg(&img)
        .env("NIXBOOT_CACHE_DIR", "")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "nixboot failed:\n{o}\n{e}");
    (o, e)
}

fn file(default: &str, rest: &str) -> String {
    format!(r#"{{"version":1,"default":"/{default}"{rest}}}"#)
}

fn args_line(stdout: &str) -> &str {
    stdout.lines().find_map(|l| l.strip_prefix("args    ")).unwrap_or("")
}

fn prerequisites() -> bool {
    for tool in ["mke2fs", "python3"] {
        if !have(tool) {
            skip(&format!("no {tool} (apt-get install e2fsprogs python3)"));
            return false;
        }
    }
    true
}

#[test]
fn installed_default_is_followed() {
    if !prerequisites() {
        return;
    }
    // No file: the profile's current generation.
    let (o, e) = boot(None, &[]);
    assert!(args_line(&o).starts_with(&format!("init=/{G3}/init g3")), "{o}");
    assert!(e.contains("system profile's current generation"), "{e}");

    // An older generation (`system-2-link/bin/switch-to-configuration boot`).
    let (o, e) = boot(Some(&file(G2, r#","timeout":5,"limit":null"#)), &[]);
    assert!(args_line(&o).starts_with(&format!("init=/{G2}/init g2")), "{o}");
    assert!(e.contains("installed default in /nix/var/nix/nixboot.json"), "{e}");

    // A specialisation of an older generation, found through its link.
    let (o, _) = boot(Some(&file(G2D, "")), &[]);
    assert!(args_line(&o).starts_with(&format!("init=/{G2D}/init g2-debug")), "{o}");
    assert!(o.contains("Configuration 2 ") && o.contains(" - debug"), "{o}");

    // A specialisation of the current generation known from boot.json only
    // (`nixos-rebuild switch --specialisation safe`).
    let (o, _) = boot(Some(&file(G3S, "")), &[]);
    assert!(args_line(&o).starts_with(&format!("init=/{G3S}/init g3-safe")), "{o}");

    // --entry wins over the file.
    let (o, e) = boot(Some(&file(G2, "")), &["--entry=1"]);
    assert!(
        args_line(&o).starts_with(&format!("init=/{G1}/init console=hvc0")),
        "{o}"
    );
    assert!(e.contains(": --entry=1"), "{e}");
}

#[test]
fn bad_or_unknown_installed_default_falls_back_to_the_profile() {
    if !prerequisites() {
        return;
    }
    let unknown = "nix/store/0000000000000000000000000000000a-nixos-system-gone";
    for (text, says) in [
        (file(unknown, ""), "neither a generation of a profile"),
        (
            "{\"version\":1,".to_owned(),
            "ignoring /nix/var/nix/nixboot.json: invalid JSON",
        ),
        (
            file(G2, "").replace("\"version\":1", "\"version\":7"),
            "version 7 is not supported",
        ),
        (
            r#"{"version":1,"default":"/etc/../nix/store/x"}"#.to_owned(),
            "is not an absolute /nix/store path",
        ),
        (
            format!("{}{}", " ".repeat(70_000), file(G2, "")),
            "over the 65536-byte limit",
        ),
    ] {
        let (o, e) = boot(Some(&text), &[]);
        assert!(
            args_line(&o).starts_with(&format!("init=/{G3}/init g3")),
            "{text:.80}: {o}"
        );
        assert!(e.contains(says), "{text:.80}: {e}");
        assert!(e.contains("system profile's current generation"), "{e}");
    }
    // A control character in the file is shown escaped, never raw.
    let (_, e) = boot(Some(&file(&format!("{unknown}\\u001b[2J"), "")), &[]);
    assert!(!e.contains('\u{1b}'), "{e:?}");
}

#[test]
fn list_json_reports_the_default_and_why() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), Some(&file(G2D, r#","timeout":3,"limit":2"#)));
    let out = Command::new(env!("CARGO_BIN_EXE_nixboot"))
        .args(["list", "--json"])
        .arg(&img)
        .env("NIXBOOT_CACHE_DIR", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["default"]["generation"], 2);
    assert_eq!(v["default"]["specialisation"], "debug");
    assert!(v["default"]["reason"].as_str().unwrap().contains("installed default"));
    assert_eq!(v["generations"].as_array().unwrap().len(), 3);
}

#[test]
fn install_hook_writes_what_nixboot_reads() {
    if !have("bash") {
        return skip("no bash");
    }
    let dir = tempfile::tempdir().unwrap();
    let hook = repo().join("xen/nix/install-hook.sh");
    let top = format!("/{G2}");
    let run = |timeout: &str, limit: &str, toplevel: &str| {
        Command::new("bash")
            .arg(&hook)
            .args([timeout, limit, toplevel])
            .env("NIXBOOT_STATE_DIR", dir.path())
            .output()
            .unwrap()
    };
    let read = || installed::parse(&std::fs::read(dir.path().join("nixboot.json")).unwrap()).unwrap();

    assert!(run("5", "null", &top).status.success());
    let i = read();
    assert_eq!(i.default, top);
    assert_eq!((i.timeout, i.limit), (GuestTimeout::Seconds(5), None));

    assert!(run("null", "20", &top).status.success());
    assert_eq!((read().timeout, read().limit), (GuestTimeout::WaitForKey, Some(20)));
    assert!(run("-1", "null", &top).status.success());
    assert_eq!(read().timeout, GuestTimeout::WaitForKey);

    // Refusals leave the last good file in place, and no temporary files.
    for (t, l, p) in [
        ("5", "0", top.as_str()),
        ("x", "null", top.as_str()),
        ("5", "null", "/etc/passwd"),
        ("5", "null", "/nix/store/short-name"),
        ("5", "null", &format!("{top}\"x")),
        ("5", "null", &format!("{top}/../x")),
    ] {
        let o = run(t, l, p);
        assert!(!o.status.success(), "accepted {t} {l} {p}");
        assert_eq!(read().timeout, GuestTimeout::WaitForKey);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["nixboot.json"]);
}

#[test]
fn nix_files_parse() {
    if !have("nix-instantiate") {
        return skip("no nix-instantiate (apt-get install nix-bin)");
    }
    let mut files = Vec::new();
    let mut todo = vec![repo().join("xen")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "nix") {
                files.push(p);
            }
        }
    }
    files.sort();
    for must in [
        "xen/nix/guest.nix",
        "xen/nix/package.nix",
        "xen/nix/default.nix",
        "xen/nix/dom0.nix",
    ] {
        assert!(files.contains(&repo().join(must)), "{must} is missing");
    }
    for f in &files {
        let out = Command::new("nix-instantiate").arg("--parse").arg(f).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("parsed {} .nix files", files.len());
}

/// Run `nixboot --output-format=simple DISK` as libxl does, on a pty
/// nobody types into (script(1) fed by a FIFO that never ends): what the
/// console showed, and how long it took.
fn boot_on_pty(img: &Path) -> (String, std::time::Duration) {
    let dir = img.parent().unwrap();
    let fifo = dir.join("console");
    let log = dir.join("console.log");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let console = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let cmd = format!(
        "{} --output-format=simple --output-directory={} {}",
        env!("CARGO_BIN_EXE_nixboot"),
        dir.display(),
        img.display()
    );
    let start = std::time::Instant::now();
    let st = Command::new("timeout")
        .args(["60", "script", "-qec", &cmd])
        .arg(&log)
        .env("NIXBOOT_CACHE_DIR", "")
        .env("TERM", "vt100")
        .env_remove("RUST_LOG")
        .stdin(console)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(st.success(), "{text}");
    (text, took)
}

#[test]
fn menu_uses_the_guest_timeout_limit_and_default() {
    if !prerequisites() {
        return;
    }
    if !have("script") || !have("mkfifo") {
        return skip("no script(1)/mkfifo (util-linux, coreutils)");
    }
    // Timeout 1 s, limit 1, default generation 2's specialisation: the menu
    // shows generation 3 and generation 2 (the default), highlights
    // 2/debug, counts down from 1 and boots it.
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), Some(&file(G2D, r#","timeout":1,"limit":1"#)));
    let (text, took) = boot_on_pty(&img);
    assert!(text.contains("Booting the highlighted entry in 1 s."), "{text}");
    assert!(!text.contains("in 5 s."), "{text}");
    assert!(
        text.contains("> NixOS - Configuration 2 (") && text.contains(") - debug\r"),
        "{text}"
    );
    assert!(text.contains("  NixOS - Configuration 3 ("), "{text}");
    assert!(
        !text.contains("Configuration 1 ("),
        "limit 1 still shows generation 1:\n{text}"
    );
    assert!(text.contains(&format!("args init=/{G2D}/init g2-debug")), "{text}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");

    // Timeout 0: no menu at all.
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), Some(&file(G3, r#","timeout":0"#)));
    let (text, _) = boot_on_pty(&img);
    assert!(!text.contains("Booting the highlighted entry"), "{text}");
    assert!(text.contains(&format!("args init=/{G3}/init g3")), "{text}");
}
