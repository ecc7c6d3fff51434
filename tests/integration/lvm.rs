//! Guests on LVM2: physical volumes made by the real `pvcreate`,
//! `vgcreate`, `lvcreate` and `lvextend` on loop devices (as root), the
//! NixOS filesystem made by `mke2fs -d` and written into the logical
//! volume's extents where LVM itself says they are (`lvs -o
//! seg_pe_ranges`, `pvs -o pe_start`), then booted by the real binary under
//! a pty with libxl's argv.
//!
//! LVM runs with its own configuration directory (`LVM_SYSTEM_DIR`): it
//! sees only loop devices, never talks to device-mapper (`activation=0`,
//! so nothing is activated and no host state changes) and writes no
//! backups. Every loop device is detached by a guard, also when a test
//! fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::{BlockSize, Image, Layout, Style, Tree, have, have_root, libxl, tempdir};

const LVM_CONF: &str = "devices {\n filter = [ \"a|^/dev/loop|\", \"r|.*|\" ]\n obtain_device_list_from_udev = 0\n use_devicesfile = 0\n}\n\
global {\n activation = 0\n}\nbackup {\n backup = 0\n archive = 0\n}\n";

/// Loop devices and LVM's private config; detaches the loops on drop.
struct Lvm {
    conf: tempfile::TempDir,
    loops: Vec<String>,
}

impl Drop for Lvm {
    fn drop(&mut self) {
        for l in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
    }
}

impl Lvm {
    /// `None` (after a skip) without root or the tools.
    fn new(why: &str) -> Option<Lvm> {
        if !have_root(why)
            || !have(&[
                "losetup", "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvs", "sfdisk", "mke2fs",
            ])
        {
            return None;
        }
        let conf = tempdir("nixboot-lvm.");
        fs::write(conf.path().join("lvm.conf"), LVM_CONF).unwrap();
        Some(Lvm {
            conf,
            loops: Vec::new(),
        })
    }

    /// Attach `len` bytes at `offset` of `img` to a loop device.
    fn attach(&mut self, img: &Path, offset: u64, len: u64) -> String {
        let out = Command::new("losetup")
            .args([
                "-f",
                "--show",
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &len.to_string(),
            ])
            .arg(img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        self.loops.push(dev.clone());
        dev
    }

    /// Run an LVM command; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("LVM_SYSTEM_DIR", self.conf.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Where the LV's bytes are: `(device, byte offset on it, length)` per
    /// segment, in LV order, as LVM reports them.
    fn extents(&self, vg: &str, lv: &str) -> Vec<(String, u64, u64)> {
        let extent: u64 = self
            .run(&[
                "vgs",
                "--noheadings",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_extent_size",
                vg,
            ])
            .trim()
            .parse()
            .unwrap();
        let mut out = Vec::new();
        let segs = self.run(&[
            "lvs",
            "--noheadings",
            "-o",
            "seg_pe_ranges",
            "--separator",
            ";",
            &format!("{vg}/{lv}"),
        ]);
        for line in segs.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // "/dev/loop3:0-3"
            let (dev, range) = line.rsplit_once(':').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            let pe_start: u64 = self
                .run(&[
                    "pvs",
                    "--noheadings",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    "pe_start",
                    dev,
                ])
                .trim()
                .parse()
                .unwrap();
            out.push((dev.to_owned(), pe_start + a * extent, (b - a + 1) * extent));
        }
        out
    }
}

/// A VG name no other test uses.
fn vg_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("nb{what}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn system() -> Tree {
    Tree::nixos()
        .generation(1, Style::Legacy)
        .generation(2, Style::Bootspec)
        .specialisation("debug", &["console=hvc0"])
        .current(2)
}

/// A disk of `sectors` 512-byte sectors partitioned by sfdisk `script`;
/// its partitions as (byte offset, byte length).
fn partitioned(dir: &Path, script: &str, sectors: u64) -> (PathBuf, Vec<(u64, u64)>) {
    let path = dir.join("lvm-disk.img");
    fs::File::create(&path).unwrap().set_len(sectors * 512).unwrap();
    let mut c = Command::new("sfdisk")
        .args(["-q", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
    let parts = crate::common::sfdisk_parts(&path)
        .into_iter()
        .map(|(s, n)| (s * 512, n * 512))
        .collect();
    (path, parts)
}

/// Copy the filesystem image `fs_img` into the LV's extents.
fn fill_lv(fs_img: &Path, extents: &[(String, u64, u64)]) {
    use std::os::unix::fs::FileExt;
    let src = fs::File::open(fs_img).unwrap();
    let total = src.metadata().unwrap().len();
    let mut pos = 0u64;
    for (dev, at, len) in extents {
        let dst = fs::OpenOptions::new().write(true).open(dev).unwrap();
        let n = (*len).min(total.saturating_sub(pos));
        let mut buf = vec![0u8; usize::try_from(n).unwrap()];
        src.read_exact_at(&mut buf, pos).unwrap();
        dst.write_all_at(&buf, *at).unwrap();
        dst.sync_all().unwrap();
        pos += n;
    }
    assert_eq!(pos, total, "the LV is smaller than the filesystem");
}

/// The system's ext4 (a bare image made by `mke2fs -d` from the tree).
fn system_fs() -> Option<Image> {
    system().image(Layout::Bare, BlockSize::K4)
}

/// An MBR disk: partition 1 a small Linux partition with no filesystem,
/// partition 2 (type 0x8e) a PV whose VG holds `root` in two segments
/// (`root` is created, `swap` takes the next extents, then `root` is
/// extended past it), the NixOS ext4 written into `root`.
#[test]
fn boots_from_a_logical_volume_in_two_segments() {
    let Some(mut lvm) = Lvm::new("LVM on loop devices") else {
        return;
    };
    let Some(img) = system_fs() else { return };
    let fs_len = fs::metadata(&img.path).unwrap().len();
    let mib = fs_len.div_ceil(1 << 20);
    let dir = tempdir("nixboot-lvm-disk.");
    let pv_mib = mib + 8;
    let script = format!(
        "label: dos\nstart=2048, size=2048, type=83\nstart=4096, size={}, type=8e\n",
        pv_mib * 2048
    );
    let (disk, parts) = partitioned(dir.path(), &script, 4096 + pv_mib * 2048 + 2048);
    let vg = vg_name("two");
    let pv = lvm.attach(&disk, parts[1].0, parts[1].1);
    lvm.run(&["pvcreate", "-q", &pv]);
    lvm.run(&["vgcreate", "-q", "-s", "1m", &vg, &pv]);
    let half = mib / 2;
    lvm.run(&[
        "lvcreate",
        "-q",
        "-an",
        "-Zn",
        "-l",
        &half.to_string(),
        "-n",
        "root",
        &vg,
    ]);
    lvm.run(&["lvcreate", "-q", "-an", "-Zn", "-l", "2", "-n", "swap", &vg]);
    lvm.run(&["lvextend", "-q", "-l", &mib.to_string(), &format!("{vg}/root")]);
    let extents = lvm.extents(&vg, "root");
    assert_eq!(extents.len(), 2, "root is not in two segments: {extents:?}");
    fill_lv(&img.path, &extents);
    drop(lvm);

    let before = crate::common::fingerprint(&disk);
    let ran = libxl().run(&disk);
    let booted = ran.expect_boot();
    booted.assert_entry(&img, img.entry(2), None);
    let want = format!(
        "nixboot: booting {} from LVM logical volume {vg}/root (on MBR partition 2): ",
        img.entry(2).title()
    );
    assert!(ran.console.contains(&want), "want {want:?}:\n{}", ran.console);
    assert_eq!(crate::common::fingerprint(&disk), before, "the disk image changed");
}

/// A GPT disk with two LVM-typed partitions, one VG over both: `root`
/// striped across them (holding the system's ext4 bytes in LVM's stripe
/// order is beyond nixboot: it must say so, naming the LV and the segment
/// type), and a linear `data` LV without a filesystem.
#[test]
fn striped_logical_volume_is_a_clear_error() {
    let Some(mut lvm) = Lvm::new("LVM on loop devices") else {
        return;
    };
    let dir = tempdir("nixboot-lvm-disk.");
    let t = "E6D6D379-F507-44C2-A23C-238F2A3DF928";
    let script = format!("label: gpt\nstart=2048, size=16384, type={t}\nstart=18432, size=16384, type={t}\n");
    let (disk, parts) = partitioned(dir.path(), &script, 18432 + 16384 + 2048);
    let vg = vg_name("str");
    let a = lvm.attach(&disk, parts[0].0, parts[0].1);
    let b = lvm.attach(&disk, parts[1].0, parts[1].1);
    lvm.run(&["pvcreate", "-q", &a, &b]);
    lvm.run(&["vgcreate", "-q", "-s", "1m", &vg, &a, &b]);
    lvm.run(&[
        "lvcreate", "-q", "-an", "-Zn", "-i", "2", "-I", "64k", "-l", "4", "-n", "root", &vg,
    ]);
    lvm.run(&["lvcreate", "-q", "-an", "-Zn", "-l", "1", "-n", "data", &vg]);
    drop(lvm);

    let before = crate::common::fingerprint(&disk);
    let ran = libxl().run(&disk);
    ran.expect_guest_error(&[
        &format!("LVM logical volume {vg}/root (on GPT partition 1)"),
        "segment 1 is of type",
        "striped",
        "with 2 stripes; only linear logical volumes can be read",
        &format!("LVM logical volume {vg}/data (on GPT partition"),
    ]);
    assert_eq!(crate::common::fingerprint(&disk), before, "the disk image changed");
}

/// A thin pool and a thin LV next to a linear `root` holding the system.
/// lvcreate cannot make thin pools without device-mapper, so the VG is
/// dumped with `vgcfgbackup`, the pool, the thin LV and the pool's hidden
/// data and metadata LVs are added to that text (in the layout `lvcreate
/// --thin` writes), and `vgcfgrestore --force` validates it and writes it
/// to the PV. nixboot boots `root` and names the thin LVs it skipped.
#[test]
fn thin_volumes_are_named_and_linear_root_boots() {
    let Some(mut lvm) = Lvm::new("LVM on loop devices") else {
        return;
    };
    if !have(&["vgcfgbackup", "vgcfgrestore"]) {
        return;
    }
    let Some(img) = system_fs() else { return };
    let fs_len = fs::metadata(&img.path).unwrap().len();
    let mib = fs_len.div_ceil(1 << 20);
    let dir = tempdir("nixboot-lvm-disk.");
    let pv_mib = mib + 8;
    let (disk, parts) = partitioned(
        dir.path(),
        &format!("label: dos\nstart=2048, size={}, type=8e\n", pv_mib * 2048),
        2048 + pv_mib * 2048 + 2048,
    );
    let vg = vg_name("thin");
    let pv = lvm.attach(&disk, parts[0].0, parts[0].1);
    lvm.run(&["pvcreate", "-q", &pv]);
    lvm.run(&["vgcreate", "-q", "-s", "1m", &vg, &pv]);
    lvm.run(&[
        "lvcreate",
        "-q",
        "-an",
        "-Zn",
        "-l",
        &mib.to_string(),
        "-n",
        "root",
        &vg,
    ]);
    let backup = dir.path().join("vg.txt");
    lvm.run(&["vgcfgbackup", "-q", "-f", backup.to_str().unwrap(), &vg]);
    let text = fs::read_to_string(&backup).unwrap();
    let (p, q, r) = (mib, mib + 2, mib + 3);
    let lv = |name: &str, id: char, visible: bool, seg: String| {
        let status = if visible {
            "\"READ\", \"WRITE\", \"VISIBLE\""
        } else {
            "\"READ\", \"WRITE\""
        };
        let id: String = "xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx".replace('x', &id.to_string());
        format!(
            "{name} {{\nid = \"{id}\"\nstatus = [{status}]\nflags = []\nsegment_count = 1\nsegment1 {{\n{seg}\n}}\n}}\n"
        )
    };
    let linear = |n: u64, pe: u64| {
        format!(
            "start_extent = 0\nextent_count = {n}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\n\"pv0\", {pe}\n]"
        )
    };
    let added = lv(
        "pool",
        'a',
        true,
        "start_extent = 0\nextent_count = 2\ntype = \"thin-pool\"\nmetadata = \"pool_tmeta\"\npool = \"pool_tdata\"\n\
         transaction_id = 1\nchunk_size = 128\ndiscards = \"passdown\"\nzero_new_blocks = 1"
            .into(),
    ) + &lv(
        "thin",
        'b',
        true,
        "start_extent = 0\nextent_count = 8\ntype = \"thin\"\nthin_pool = \"pool\"\ntransaction_id = 0\ndevice_id = 1"
            .into(),
    ) + &lv("pool_tdata", 'c', false, linear(2, p))
        + &lv("pool_tmeta", 'd', false, linear(1, q))
        + &lv("lvol0_pmspare", 'e', false, linear(1, r));
    let text = text.replacen("logical_volumes {\n", &format!("logical_volumes {{\n{added}"), 1);
    fs::write(&backup, text).unwrap();
    lvm.run(&["vgcfgrestore", "-q", "--force", "-f", backup.to_str().unwrap(), &vg]);
    let types = lvm.run(&["lvs", "--noheadings", "-a", "-o", "lv_name,segtype", &vg]);
    assert!(types.contains("thin-pool") && types.contains("thin "), "{types}");
    fill_lv(&img.path, &lvm.extents(&vg, "root"));
    drop(lvm);

    let before = crate::common::fingerprint(&disk);
    let ran = libxl().run(&disk);
    ran.expect_boot().assert_entry(&img, img.entry(2), None);
    for want in [
        format!("LVM logical volume {vg}/pool (on MBR partition 1): segment 1 is of type \"thin-pool\""),
        format!("LVM logical volume {vg}/thin (on MBR partition 1): segment 1 is of type \"thin\""),
        format!("from LVM logical volume {vg}/root (on MBR partition 1)"),
    ] {
        assert!(ran.console.contains(&want), "want {want:?}:\n{}", ran.console);
    }
    assert_eq!(crate::common::fingerprint(&disk), before, "the disk image changed");
}
