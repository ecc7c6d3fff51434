//! libxl/pygrub compatibility of the command line: argv forms, exit
//! codes, the one error line, output formats, and what is (not) written.

use std::fs;
use std::path::Path;

use crate::common::{BlockSize, DOM0, Image, Layout, Style, Tree, libxl, nixboot, parse_libxl_result, run_pty};

fn small() -> Option<Image> {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .current(2)
        .image(Layout::Mbr, BlockSize::K4)
}

/// Each usage error exits 2 with one line that names the problem, writes
/// no result and copies nothing.
#[test]
fn usage_errors_exit_2_with_one_clear_line() {
    let Some(img) = small() else { return };
    let cases: &[(&[&str], &str)] = &[
        (
            &["--output-format=xml"],
            "invalid value 'xml' for '--output-format <FORMAT>'",
        ),
        (&["--bogus"], "unexpected argument '--bogus' found"),
        (&["--max-kernel-size=2G"], "at most 1024M"),
        (&["--max-initrd-size=lots"], "\"lots\" is not a size"),
        (&["--runas=nobody"], "invalid value 'nobody' for '--runas <UID>'"),
        // `--entry` takes the disk as its value, like getopt would.
        (&["--entry"], "required arguments were not provided: <DISK>"),
        (
            &["--ramdisk=/boot/initrd"],
            "required arguments were not provided: --kernel <PATH>",
        ),
        (
            &["--quiet", "--interactive"],
            "'--quiet' cannot be used with '--interactive'",
        ),
    ];
    for (extra, want) in cases {
        libxl()
            .bootloader_args(extra)
            .run(&img.path)
            .expect_usage(&[want, "(see nixboot --help)"]);
    }
    // Restricted mode with uid 0 would not restrict anything.
    libxl()
        .runas(0)
        .run(&img.path)
        .expect_usage(&["--runas=0 would not drop privileges"]);
}

#[test]
fn no_disk_is_a_usage_error_that_says_so() {
    let ran = nixboot(&["--output=-", "--output-format=simple0"]);
    ran.expect_usage(&["required arguments were not provided: <DISK>"]);
    let ran = nixboot(&[]);
    ran.expect_usage(&["required arguments were not provided: <DISK>"]);
}

#[test]
fn missing_disk_is_a_dom0_error() {
    let dir = crate::common::tempdir("nixboot-cli.");
    let missing = dir.path().join("guest.img");
    let ran = libxl().run(&missing);
    ran.expect_error(
        1,
        DOM0,
        &[&format!(
            "cannot open disk {}: No such file or directory",
            missing.display()
        )],
    );
    libxl()
        .run(dir.path())
        .expect_error(1, DOM0, &["not a regular file or block device"]);
}

/// pygrub opens the result file libxl made without O_CREAT; nixboot too,
/// and a missing output directory is dom0's problem, not the guest's.
#[test]
fn result_file_and_directory_must_exist() {
    let Some(img) = small() else { return };
    let dir = crate::common::tempdir("nixboot-cli.");
    let out = dir.path().join("bootloader.9.out");
    let d = dir.path().join("bootloader.9.d");
    fs::create_dir(&d).unwrap();
    let disk = img.path.to_str().unwrap();
    let ran = nixboot(&[
        &format!("--output={}", out.display()),
        "--output-format=simple0",
        &format!("--output-directory={}", d.display()),
        disk,
    ]);
    ran.expect_error(
        1,
        DOM0,
        &[&format!(
            "opening result file {}: No such file or directory",
            out.display()
        )],
    );
    assert!(!out.exists(), "nixboot created the result file");
    assert!(fs::read_dir(&d).unwrap().next().is_none());
    fs::write(&out, b"").unwrap();
    let gone = dir.path().join("bootloader.10.d");
    let ran = nixboot(&[
        &format!("--output={}", out.display()),
        "--output-format=simple0",
        &format!("--output-directory={}", gone.display()),
        disk,
    ]);
    ran.expect_error(
        1,
        DOM0,
        &[&format!("output directory {}: No such file", gone.display())],
    );
    assert_eq!(fs::read(&out).unwrap(), b"");
}

/// `--output=-`: the result goes to stdout (the pty) in each format, and
/// the copies still go to the output directory.
#[test]
fn output_formats_to_stdout() {
    let Some(img) = small() else { return };
    let e = img.entry(2);
    let dir = crate::common::tempdir("nixboot-cli.");
    let run = |format: &str| {
        let d = dir.path().join(format);
        fs::create_dir(&d).unwrap();
        let args = [
            "-q".to_owned(),
            "--output=-".to_owned(),
            format!("--output-format={format}"),
            format!("--output-directory={}", d.display()),
            img.path.to_str().unwrap().to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = nixboot(&args);
        ran.assert_ended_cleanly();
        assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
        let files = crate::common::dir_entries(&d);
        assert_eq!(files.len(), 2, "{files:?}");
        let kernel = files.iter().find(|p| is_named(p, "boot_kernel.")).unwrap().clone();
        let ramdisk = files.iter().find(|p| is_named(p, "boot_ramdisk.")).unwrap().clone();
        assert_eq!(fs::read(&kernel).unwrap(), img.guest_bytes(&e.kernel));
        assert_eq!(fs::read(&ramdisk).unwrap(), img.guest_bytes(e.initrd.as_ref().unwrap()));
        (ran, kernel.display().to_string(), ramdisk.display().to_string())
    };
    let (ran, k, r) = run("simple");
    // The console holds -q's summary line (stderr) and then the result (stdout).
    let (summary, result) = ran.console.split_once('\n').unwrap();
    assert!(summary.starts_with("nixboot: booting "), "{summary}");
    assert_eq!(result, format!("kernel {k}\nramdisk {r}\nargs {}\n\n", e.cmdline(None)));
    // After -q's one summary line on stderr comes the result on stdout.
    let result_of = |raw: &[u8]| -> Vec<u8> {
        let nl = raw.iter().position(|b| *b == b'\n').expect("no summary line");
        assert!(
            raw.starts_with(b"nixboot: booting "),
            "{}",
            String::from_utf8_lossy(raw)
        );
        raw[nl + 1..].to_vec()
    };
    let (ran, k, r) = run("sxp");
    assert_eq!(
        String::from_utf8(result_of(&ran.raw)).unwrap(),
        format!("linux (kernel '{k}')(ramdisk '{r}')(args '{}')", e.cmdline(None))
    );
    let (ran, k, r) = run("simple0");
    let raw = result_of(&ran.raw);
    assert_eq!(
        raw,
        format!("kernel {k}\0ramdisk {r}\0args {}\0\0", e.cmdline(None)).into_bytes()
    );
    let parsed = parse_libxl_result(&raw);
    assert_eq!(parsed.kernel, Some(k.into_bytes()));
}

fn is_named(p: &Path, prefix: &str) -> bool {
    p.file_name().unwrap().to_str().unwrap().starts_with(prefix)
}

/// libxl's full argv shape: `--kernel`, `--ramdisk`, `--args`, then the
/// fixed options, then bootloader_args, then the disk; the disk may also
/// come first, and `--args` may start with a dash.
#[test]
fn libxl_argv_in_every_shape() {
    let Some(img) = small() else { return };
    let e = img.entry(1);
    let ran = libxl()
        .kernel(&e.kernel)
        .ramdisk(e.initrd.as_ref().unwrap())
        .args("-s console=hvc0")
        .bootloader_args(&["-q", "--max-kernel-size=64M"])
        .run(&img.path);
    let booted = ran.expect_boot();
    booted.assert_kernel(&img.guest_bytes(&e.kernel));
    booted.assert_ramdisk(&img.guest_bytes(e.initrd.as_ref().unwrap()));
    assert_eq!(booted.args.as_deref(), Some("-s console=hvc0"));
    // -q: only the one summary line the admin needs in the log.
    assert_eq!(
        ran.console.lines().count(),
        1,
        "-q printed more than the summary: {}",
        ran.console
    );
    assert!(ran.console.starts_with("nixboot: booting "), "{}", ran.console);
    // Disk first, options after it.
    let dir = crate::common::tempdir("nixboot-cli.");
    let out = dir.path().join("o");
    fs::write(&out, b"").unwrap();
    let ran = run_pty(
        Path::new(crate::common::NIXBOOT),
        &[
            img.path.clone().into(),
            "--entry=1".into(),
            format!("--output={}", out.display()).into(),
            "--output-format=simple0".into(),
            format!("--output-directory={}", dir.path().display()).into(),
        ],
        crate::common::RUN_TIMEOUT,
    );
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    let r = parse_libxl_result(&fs::read(&out).unwrap());
    assert_eq!(r.args, Some(e.cmdline(None).into_bytes()));
}

/// The admin's caps apply to the guest's files: over the cap is a clear
/// guest-disk error naming the sizes.
#[test]
fn max_kernel_and_initrd_size() {
    let Some(img) = small() else { return };
    let e = img.entry(2);
    let klen = img.guest_bytes(&e.kernel).len();
    let ilen = img.guest_bytes(e.initrd.as_ref().unwrap()).len();
    libxl()
        .bootloader_args(&["--max-kernel-size=64K"])
        .run(&img.path)
        .expect_guest_error(&[&format!("is {klen} bytes, over the 65536-byte limit")]);
    libxl()
        .bootloader_args(&["--max-initrd-size=4K"])
        .run(&img.path)
        .expect_guest_error(&[&format!("is {ilen} bytes, over the 4096-byte limit")]);
}

/// `--offset` skips partition discovery.
#[test]
fn offset_option() {
    let Some(img) = small() else { return };
    let off = format!("--offset={}", img.fs_offset);
    libxl()
        .bootloader_args(&[&off])
        .run(&img.path)
        .expect_boot()
        .assert_entry(&img, img.entry(2), None);
    libxl()
        .bootloader_args(&["--offset=512"])
        .run(&img.path)
        .expect_guest_error(&["(offset 512: no ext4 or btrfs filesystem)"]);
    let len = fs::metadata(&img.path).unwrap().len();
    let far = format!("--offset={}", len + 1);
    let ran = libxl().bootloader_args(&[&far]).run(&img.path);
    assert_eq!(ran.status.code(), Some(1), "{}", ran.console);
    assert!(
        ran.error_lines()
            .first()
            .is_some_and(|l| l.ends_with(&format!("offset {} is beyond the end of the {len}-byte disk", len + 1))),
        "{}",
        ran.console
    );
}

#[test]
fn help_and_version_exit_0() {
    let ran = nixboot(&["--help"]);
    assert_eq!(ran.status.code(), Some(0));
    assert!(ran.console.contains("--output-directory"), "{}", ran.console);
    assert!(ran.console.contains("libxl runs nixboot as:"), "{}", ran.console);
    let ran = nixboot(&["--version"]);
    assert_eq!(ran.status.code(), Some(0));
    assert!(ran.console.starts_with("nixboot "), "{}", ran.console);
}

/// The harness itself: the child really has the pty as its controlling
/// terminal in a new session, with TERM=vt100 (what libxl's login_tty and
/// environment give a boot loader).
#[test]
fn harness_gives_a_controlling_tty() {
    let sh = Path::new("/bin/sh");
    if !sh.exists() {
        crate::common::skip("/bin/sh not found");
        return;
    }
    let ran = run_pty(
        sh,
        &[
            "-c".into(),
            "test -t 0 && test -t 1 && test -t 2 && echo tty=yes; echo term=$TERM; \
             set -- $(cut -d' ' -f1,6 /proc/$$/stat); [ \"$1\" = \"$2\" ] && echo leader=yes; \
             exec </dev/tty && echo ctty=yes"
                .into(),
        ],
        crate::common::RUN_TIMEOUT,
    );
    assert_eq!(ran.status.code(), Some(0), "{}", ran.console);
    for want in ["tty=yes\n", "term=vt100\n", "leader=yes\n", "ctty=yes\n"] {
        assert!(ran.console.contains(want), "lacks {want:?}: {}", ran.console);
    }
}

/// libxl adds `--quiet` in restricted mode and admins often keep pygrub's
/// `bootloader_args = ["-q"]`: a repeated option must not be a usage error
/// (pygrub's getopt lets the last one win).
#[test]
fn repeated_options_override_like_getopt() {
    let Some(img) = small() else { return };
    let ran = libxl().bootloader_args(&["-q", "--quiet"]).run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(2), None);
    let ran = libxl()
        .bootloader_args(&["--entry=2", "--entry=1", "--output-format=simple0"])
        .run(&img.path);
    ran.expect_boot().assert_entry(&img, img.entry(1), None);
    if crate::common::have_root("--runas") {
        let ran = libxl().runas(65534).bootloader_args(&["-q"]).run(&img.path);
        ran.expect_boot().assert_entry(&img, img.entry(2), None);
    }
}
