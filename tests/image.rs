//! `nixboot image` against real Nix (Debian's nix-bin) and e2fsprogs.
//!
//! The systems are tiny NixOS-shaped toplevels built with `builder =
//! "/bin/sh"` derivations (no nixpkgs): a kernel derivation holding a
//! small ELF64 x86-64 file with Linux's Xen ELF notes, an initrd
//! derivation, and the toplevel linking both, with `init`,
//! `kernel-params` and `nixos-version`. Missing tools make a test print
//! `skipped: <why>` and pass, except under `CI=true`, where a skip fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nixboot");

fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("skip not allowed under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tiny Xen PV "kernel": ELF64 x86-64 with the Xen ELF notes (the same
/// shape as testdata/demo/pvkernel.py), `size` bytes.
fn pv_kernel(size: usize) -> Vec<u8> {
    const VIRT: u64 = 0xffff_ffff_8000_0000;
    fn note(ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(4u32.to_le_bytes());
        v.extend(u32::try_from(desc.len()).unwrap().to_le_bytes());
        v.extend(ty.to_le_bytes());
        v.extend(b"Xen\0");
        v.extend(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }
    let notes: Vec<u8> = [
        note(6, b"linux\0"),
        note(7, b"2.6\0"),
        note(5, b"xen-3.0\0"),
        note(3, &VIRT.to_le_bytes()),
        note(4, &0u64.to_le_bytes()),
        note(1, &(VIRT + 0x1000).to_le_bytes()),
        note(2, &(VIRT + 0x2000).to_le_bytes()),
        note(10, b"!writable_page_tables\0"),
        note(9, b"yes\0"),
        note(8, b"generic\0"),
    ]
    .concat();
    let size = size.max(0x4000);
    let (ehsize, phsize) = (64u64, 56u64);
    let note_off = ehsize + 2 * phsize;
    let load_off = 0x1000u64;
    let mut v = Vec::new();
    v.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    v.extend(2u16.to_le_bytes()); // ET_EXEC
    v.extend(62u16.to_le_bytes()); // x86-64
    v.extend(1u32.to_le_bytes());
    v.extend((VIRT + 0x1000).to_le_bytes());
    v.extend(ehsize.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    for h in [ehsize as u16, phsize as u16, 2, 64, 0, 0] {
        v.extend(h.to_le_bytes());
    }
    let filesz = size as u64 - load_off;
    for (ty, flags, off, vaddr, paddr, fsz, align) in [
        (1u32, 7u32, load_off, VIRT, 0x100_0000u64, filesz, 0x1000u64),
        (4, 4, note_off, 0, 0, notes.len() as u64, 4),
    ] {
        v.extend(ty.to_le_bytes());
        v.extend(flags.to_le_bytes());
        for q in [off, vaddr, paddr, fsz, fsz, align] {
            v.extend(q.to_le_bytes());
        }
    }
    v.extend(&notes);
    v.resize(load_off as usize, 0);
    let mut x: u32 = 0x6e69_7862;
    while v.len() < size {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        v.extend(x.to_le_bytes());
    }
    v.truncate(size);
    v
}

struct Fixture {
    /// The test system (a store path).
    system: PathBuf,
    /// A store path that is not a NixOS system (the kernel's).
    kernel_drv: PathBuf,
    /// A system with a 40 MiB file in its closure.
    big: PathBuf,
    /// The kernel bytes.
    kernel: Vec<u8>,
    /// `--configuration` file.
    config: PathBuf,
}

const NIX_EXPR: &str = r#"{ kernelFile, bigSize ? 0 }:
let
  sh = "/bin/sh";
  PATH = "/usr/bin:/bin";
  system = builtins.currentSystem;
  kernel = derivation { name = "linux-6.6.1"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && cp ${kernelFile} $out/bzImage" ]; };
  initrd = derivation { name = "initrd-linux-6.6.1"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && printf 'test initrd\\n' > $out/initrd" ]; };
  blob = derivation { name = "blob"; inherit system PATH; builder = sh;
    args = [ "-c" "mkdir $out && head -c ${toString bigSize} /dev/zero > $out/blob" ]; };
  toplevel = derivation { name = "nixos-system-imagetest-24.11.20240101.abcdef0"; inherit system PATH; builder = sh;
    args = [ "-c" ''
      mkdir $out
      printf '24.11.20240101.abcdef0' > $out/nixos-version
      printf 'console=hvc0 loglevel=4' > $out/kernel-params
      ln -s ${kernel}/bzImage $out/kernel
      ln -s ${initrd}/initrd $out/initrd
      printf '#!/bin/sh\n# ${initrd}\n' > $out/init
      chmod +x $out/init
      mkdir $out/sw
      ${if bigSize > 0 then "ln -s ${blob} $out/sw/blob" else ""}
    '' ];
  };
in { inherit toplevel kernel; }
"#;

fn nix_build(dir: &Path, attr: &str, extra: &[&str]) -> Result<PathBuf, String> {
    let mut c = Command::new("nix-build");
    c.arg(dir.join("system.nix"))
        .args(["-A", attr, "--no-out-link", "--arg", "kernelFile"])
        .arg(dir.join("bzImage"))
        .args(extra);
    let out = c.output().map_err(|e| format!("nix-build: {e}"))?;
    if !out.status.success() {
        return Err(format!("nix-build failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(p))
}

fn build_fixture() -> Result<Fixture, String> {
    for t in [
        "nix-build",
        "nix",
        "nix-store",
        "nix-env",
        "mke2fs",
        "e2fsck",
        "debugfs",
        "dumpe2fs",
        "sqlite3",
        "sfdisk",
    ] {
        if !have(t) {
            return Err(format!("`{t}` is not installed"));
        }
    }
    if !is_root() && !Path::new("/nix/var/nix/daemon-socket/socket").exists() {
        return Err("not root and no nix-daemon socket".into());
    }
    let dir = std::env::temp_dir().join("nixboot-image-test-fixture");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let kernel = pv_kernel(96 * 1024);
    fs::write(dir.join("bzImage"), &kernel).map_err(|e| e.to_string())?;
    fs::write(dir.join("system.nix"), NIX_EXPR).map_err(|e| e.to_string())?;
    let config = dir.join("configuration.nix");
    fs::write(&config, "{ ... }: { boot.isContainer = false; }\n").map_err(|e| e.to_string())?;
    let system = nix_build(&dir, "toplevel", &[])?;
    let kernel_drv = nix_build(&dir, "kernel", &[])?;
    let big = nix_build(&dir, "toplevel", &["--arg", "bigSize", "41943040"])?;
    Ok(Fixture {
        system,
        kernel_drv,
        big,
        kernel,
        config,
    })
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Result<Fixture, String>> = OnceLock::new();
    match F.get_or_init(build_fixture) {
        Ok(f) => Some(f),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// A fresh output directory readable by everyone.
fn outdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("nixboot-image-").tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn image_cmd(f: &Fixture, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("image")
        .arg("--system")
        .arg(&f.system)
        .args(["--size", "256M", "--output"])
        .arg(out)
        .arg("--configuration")
        .arg(&f.config)
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

/// A private directory on /dev/shm (a tmpfs), writable by everyone, for
/// `TMPDIR`: where a copied staging tree goes (removed on drop).
fn private_tmpfs() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let is_tmpfs = nix::sys::statfs::statfs(shm).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !is_tmpfs {
        return None;
    }
    let d = tempfile::Builder::new().prefix("nixboot-test-").tempdir_in(shm).ok()?;
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).ok()?;
    Some(d)
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn partition_offset(table: &str) -> u64 {
    if table == "none" { 0 } else { 1 << 20 }
}

fn dev(img: &Path, offset: u64) -> String {
    if offset == 0 {
        img.display().to_string()
    } else {
        format!("{}?offset={offset}", img.display())
    }
}

fn debugfs(img: &Path, offset: u64, request: &str) -> String {
    let out = run(Command::new("debugfs").args(["-R", request]).arg(dev(img, offset)));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Boot the image with nixboot (libxl's argv) and check kernel and args.
fn check_boot(f: &Fixture, img: &Path) {
    let od = tempfile::tempdir().unwrap();
    let result = od.path().join("result");
    fs::write(&result, b"").unwrap();
    run(Command::new(BIN)
        .arg(format!("--output={}", result.display()))
        .arg("--output-format=simple0")
        .arg(format!("--output-directory={}", od.path().display()))
        .arg("--quiet")
        .arg(img));
    let r = fs::read(&result).unwrap();
    let items: Vec<String> = r
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    let kernel = items.iter().find_map(|i| i.strip_prefix("kernel ")).expect("kernel");
    assert_eq!(fs::read(kernel).unwrap(), f.kernel, "kernel bytes");
    let args = items.iter().find_map(|i| i.strip_prefix("args ")).expect("args");
    assert_eq!(
        args,
        format!("init={}/init console=hvc0 loglevel=4", f.system.display())
    );
    let ramdisk = items.iter().find_map(|i| i.strip_prefix("ramdisk ")).expect("ramdisk");
    assert_eq!(fs::read(ramdisk).unwrap(), b"test initrd\n");
    let list = run(Command::new(BIN).args(["list", "--json"]).arg(img));
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("\"generation\":1") || list.contains("\"generation\": 1"),
        "{list}"
    );
}

/// Every used inode of the filesystem is owned by root (gid 30000 allowed
/// for /nix/store, as NixOS sets it).
fn check_ownership(img: &Path, offset: u64) {
    let dump = run(Command::new("dumpe2fs").arg(dev(img, offset)));
    let inodes = nixboot::image::fs::used_inodes(&String::from_utf8_lossy(&dump.stdout)).unwrap();
    let script = tempfile::NamedTempFile::new().unwrap();
    let mut text = String::new();
    for i in inodes.iter().filter(|&&i| i == 2 || i >= 11) {
        text.push_str(&format!("stat <{i}>\n"));
    }
    fs::write(script.path(), text).unwrap();
    let out = run(Command::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(dev(img, offset)));
    let out = String::from_utf8_lossy(&out.stdout);
    let mut seen = 0;
    for l in out.lines().filter(|l| l.starts_with("User:")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w[1], "0", "{l}");
        assert!(w[3] == "0" || w[3] == "30000", "{l}");
        seen += 1;
    }
    assert!(seen >= 30, "only {seen} inodes checked");
}

#[test]
fn mbr_image_checks_boots_and_rebuilds_bit_identical() {
    let Some(f) = fixture() else { return };
    let d = outdir();
    let img = d.path().join("guest.img");
    let cfg = d.path().join("guest.cfg");
    let t0 = Instant::now();
    run(image_cmd(f, &img, &["--domain-config"])
        .arg(&cfg)
        .args(["--name", "web", "--memory", "768"]));
    eprintln!("image built in {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(fs::metadata(&img).unwrap().len(), 256 << 20);
    assert!(leftovers(d.path()).is_empty(), "{:?}", leftovers(d.path()));
    // Sparse: far less allocated than the size.
    {
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&img).unwrap().blocks() * 512 < 128 << 20);
    }
    run(Command::new("e2fsck").arg("-fn").arg(dev(&img, 1 << 20)));
    let sf = run(Command::new("sfdisk").arg("--dump").arg(&img));
    let sf = String::from_utf8_lossy(&sf.stdout);
    assert!(sf.contains("label: dos"), "{sf}");
    assert!(
        sf.contains("start=        2048") && sf.contains("type=83, bootable"),
        "{sf}"
    );
    check_boot(f, &img);
    let conf = debugfs(&img, 1 << 20, "cat /etc/nixos/configuration.nix");
    assert_eq!(conf, fs::read_to_string(&f.config).unwrap());
    let ch = debugfs(&img, 1 << 20, "cat /root/.nix-channels");
    assert_eq!(ch, "https://nixos.org/channels/nixos-24.11 nixos\n");
    let profiles = debugfs(&img, 1 << 20, "ls -l /nix/var/nix/profiles");
    assert!(
        profiles.contains(" system\n") || profiles.contains(" system "),
        "{profiles}"
    );
    // A slow symlink's `cat` is its target.
    let link = debugfs(&img, 1 << 20, "cat /nix/var/nix/profiles/system-1-link");
    assert_eq!(link, f.system.display().to_string());
    let fast = debugfs(&img, 1 << 20, "stat /nix/var/nix/profiles/system");
    assert!(fast.contains("Fast link dest: \"system-1-link\""), "{fast}");
    let sb = run(Command::new("dumpe2fs").arg("-h").arg(dev(&img, 1 << 20)));
    let sb = String::from_utf8_lossy(&sb.stdout);
    assert!(sb.contains("Filesystem volume name:   NIXOS"), "{sb}");
    assert!(sb.contains("dir_index"), "{sb}");
    check_ownership(&img, 1 << 20);
    let c = fs::read_to_string(&cfg).unwrap();
    for want in [
        "name = \"web\"",
        "memory = 768",
        "type = \"pv\"",
        &format!("bootloader = \"{BIN}\""),
        "bootloader_args = [\"--domain-type=pv\"]",
        &format!("disk = ['format=raw,vdev=xvda,access=rw,target={}']", img.display()),
    ] {
        assert!(c.contains(want), "{want} not in\n{c}");
    }

    // The same inputs, later: the same bytes.
    std::thread::sleep(Duration::from_millis(1100));
    let again = d.path().join("again.img");
    run(&mut image_cmd(f, &again, &[]));
    assert!(fs::read(&img).unwrap() == fs::read(&again).unwrap(), "rebuild differs");
    // SOURCE_DATE_EPOCH changes the times (and so the bytes), reproducibly.
    let sde = d.path().join("sde.img");
    run(image_cmd(f, &sde, &[]).env("SOURCE_DATE_EPOCH", "1700000000"));
    let sb = run(Command::new("dumpe2fs").arg("-h").arg(dev(&sde, 1 << 20)));
    assert!(
        String::from_utf8_lossy(&sb.stdout).contains("Nov 14"),
        "superblock time"
    );
    assert!(fs::read(&img).unwrap() != fs::read(&sde).unwrap());
}

#[test]
fn gpt_and_bare_filesystem() {
    let Some(f) = fixture() else { return };
    let d = outdir();
    for table in ["gpt", "none"] {
        let img = d.path().join(format!("{table}.img"));
        let cfg = d.path().join(format!("{table}.cfg"));
        run(image_cmd(
            f,
            &img,
            &["--partition-table", table, "--label", "ROOTFS", "--type", "pvh"],
        )
        .arg("--domain-config")
        .arg(&cfg));
        let c = fs::read_to_string(&cfg).unwrap();
        assert!(c.contains("type = \"pvh\"\n"), "{c}");
        assert!(c.contains("bootloader_args = [\"--domain-type=pvh\"]\n"), "{c}");
        let off = partition_offset(table);
        run(Command::new("e2fsck").arg("-fn").arg(dev(&img, off)));
        let sb = run(Command::new("dumpe2fs").arg("-h").arg(dev(&img, off)));
        assert!(String::from_utf8_lossy(&sb.stdout).contains("Filesystem volume name:   ROOTFS"));
        if table == "gpt" {
            let sf = run(Command::new("sfdisk").arg("--dump").arg(&img));
            let sf = String::from_utf8_lossy(&sf.stdout);
            assert!(sf.contains("label: gpt"), "{sf}");
            assert!(sf.contains("start=        2048"), "{sf}");
            assert!(sf.contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"), "{sf}");
            let v = Command::new("sfdisk").arg("--verify").arg(&img).output().unwrap();
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        }
        check_boot(f, &img);
    }
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let Some(f) = fixture() else { return };
    let d = outdir();
    let img = d.path().join("x.img");
    fs::write(&img, b"keep me").unwrap();
    let out = image_cmd(f, &img, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists; use --force"));
    assert_eq!(fs::read(&img).unwrap(), b"keep me");

    let out = Command::new(BIN)
        .args(["image", "--size", "64M", "--output"])
        .arg(d.path().join("y.img"))
        .arg("--system")
        .arg(&f.kernel_drv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a NixOS system: no init"), "{err}");

    let small = d.path().join("small.img");
    let out = Command::new(BIN)
        .args(["image", "--size", "32M", "--output"])
        .arg(&small)
        .arg("--system")
        .arg(&f.big)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("too small") && err.contains("try --size"), "{err}");
    assert!(!small.exists());

    let out = image_cmd(f, &d.path().join("z.img"), &[])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`nix` (install nix-bin)") && err.contains("`mke2fs` (install e2fsprogs)"),
        "{err}"
    );
    assert_eq!(leftovers(d.path()), Vec::<String>::new());
}

#[test]
fn interrupt_removes_staging_and_partial_image() {
    let Some(f) = fixture() else { return };
    let d = outdir();
    let img = d.path().join("int.img");
    // Where a copied staging tree would go (as a user, who cannot link
    // root's store files).
    let shm = private_tmpfs();
    let dirs: Vec<&Path> = std::iter::once(d.path())
        .chain(shm.as_ref().map(|s| s.path()))
        .collect();
    let mut c = Command::new(BIN);
    c.args(["image", "--size", "1G", "--output"])
        .arg(&img)
        .arg("--system")
        .arg(&f.big)
        .stderr(Stdio::piped());
    if let Some(s) = &shm {
        c.env("TMPDIR", s.path());
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dirs
        .iter()
        .any(|d| leftovers(d).iter().any(|n| n.starts_with(".nixboot-staging-")))
    {
        assert!(Instant::now() < deadline, "no staging dir appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "nixboot finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!img.exists());
    for d in dirs {
        assert_eq!(leftovers(d), Vec::<String>::new(), "{}", d.display());
    }
}

/// Start a nix-daemon unless one is listening; stopped on drop.
struct Daemon(Option<std::process::Child>);

impl Daemon {
    fn ensure() -> Daemon {
        let sock = Path::new("/nix/var/nix/daemon-socket/socket");
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return Daemon(None);
        }
        let _ = fs::remove_file(sock);
        fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let child = Command::new("nix-daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nix-daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "nix-daemon did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon(Some(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

const TEST_USER: &str = "nixboot-img";

#[test]
fn non_root_user_through_the_daemon_gives_the_same_bytes() {
    if !is_root() {
        skip("needs root to create a user and start nix-daemon");
        return;
    }
    for t in ["useradd", "runuser", "nix-daemon"] {
        if !have(t) {
            skip(&format!("`{t}` is not installed"));
            return;
        }
    }
    let Some(f) = fixture() else { return };
    if Command::new("id")
        .arg(TEST_USER)
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        // The daemon socket's directory is root:nix-users 0770 on Debian.
        let mut c = Command::new("useradd");
        c.args(["--system", "--no-create-home", "--shell", "/bin/sh"]);
        if Command::new("getent")
            .args(["group", "nix-users"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            c.args(["-G", "nix-users"]);
        }
        run(c.arg(TEST_USER));
    }
    let _daemon = Daemon::ensure();
    let d = outdir();
    let home = d.path().join("home");
    fs::create_dir(&home).unwrap();
    run(Command::new("chown").arg(TEST_USER).arg(&home));
    // The test binary may sit under a private directory: give the user a copy.
    let bin = d.path().join("nixboot");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let user_img = d.path().join("user.img");
    // The user's copy of the closure goes to a tmpfs: a private one here.
    let shm = private_tmpfs();
    let tmpdir = shm.as_ref().map_or_else(std::env::temp_dir, |s| s.path().to_owned());
    let out = Command::new("runuser")
        .args(["-u", TEST_USER, "--", "env"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("TMPDIR={}", tmpdir.display()))
        .arg("NIX_REMOTE=daemon")
        .arg(&bin)
        .arg("image")
        .arg("--system")
        .arg(&f.system)
        .args(["--size", "256M", "--output"])
        .arg(&user_img)
        .arg("--configuration")
        .arg(&f.config)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as {TEST_USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(fs::metadata(&user_img).unwrap().uid(), 0, "the user wrote it");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let protected = fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1");
    if protected && let Some(s) = &shm {
        // It could not link root's store files: a copy, in the tmpfs.
        let into = format!(" into {}", s.path().display());
        assert!(
            err.lines()
                .any(|l| l.starts_with("nixboot: copying the closure") && l.ends_with(&into)),
            "{err}"
        );
        assert_eq!(leftovers(s.path()), Vec::<String>::new());
    }
    let root_img = d.path().join("root.img");
    run(&mut image_cmd(f, &root_img, &[]));
    assert!(
        fs::read(&user_img).unwrap() == fs::read(&root_img).unwrap(),
        "user-built and root-built images differ"
    );
    check_ownership(&user_img, 1 << 20);
}

#[test]
fn store_verifies_in_a_loop_mounted_image() {
    if !is_root() {
        skip("needs root for losetup and mount");
        return;
    }
    for t in ["losetup", "mount", "umount"] {
        if !have(t) {
            skip(&format!("`{t}` is not installed"));
            return;
        }
    }
    let Some(f) = fixture() else { return };
    let d = outdir();
    let img = d.path().join("v.img");
    run(&mut image_cmd(f, &img, &[]));
    let loopdev = Command::new("losetup")
        .args(["--find", "--show", "--offset", "1048576"])
        .arg(&img)
        .output()
        .unwrap();
    if !loopdev.status.success() {
        skip(&format!(
            "no loop device here: {}",
            String::from_utf8_lossy(&loopdev.stderr).trim()
        ));
        return;
    }
    let loopdev = String::from_utf8_lossy(&loopdev.stdout).trim().to_owned();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount").arg(&loopdev).arg(&mnt).output().unwrap();
    if !m.status.success() {
        let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
        skip(&format!(
            "cannot mount here: {}",
            String::from_utf8_lossy(&m.stderr).trim()
        ));
        return;
    }
    let verify = Command::new("nix-store")
        .arg("--store")
        .arg(&mnt)
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let valid = Command::new("nix-store")
        .arg("--store")
        .arg(&mnt)
        .args(["--query", "--requisites"])
        .arg(&f.system)
        .output()
        .unwrap();
    let profile = fs::read_link(mnt.join("nix/var/nix/profiles/system"));
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{err}");
    for bad in ["error", "warning", "modified", "invalid", "disappeared"] {
        assert!(!err.contains(bad), "verify reported {bad}: {err}");
    }
    let paths = String::from_utf8_lossy(&valid.stdout);
    assert!(valid.status.success(), "{}", String::from_utf8_lossy(&valid.stderr));
    assert_eq!(paths.lines().count(), 3, "{paths}");
    assert_eq!(profile.unwrap(), PathBuf::from("system-1-link"));
}
