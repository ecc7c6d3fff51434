//! btrfs: nixboot's own reader against the real tools.
//!
//! * Images made at test time by `mkfs.btrfs --rootdir` (rootless) from a
//!   tree this test writes; every file, link, listing, size and mtime read
//!   back equals the tree.
//! * As root, through a loop mount: `compress-force=zstd|lzo|zlib`,
//!   subvolumes (nested, a snapshot, `set-default`): a differential test
//!   against what the kernel's btrfs driver shows on a read-only mount of
//!   the same image.
//! * Hostile: the mkfs images patched (checksums recomputed so the damage
//!   is what is tested): chunk maps that overlap, are huge, lie past the
//!   disk or use RAID; a node pointing at itself; a leaf claiming billions
//!   of items; a compressed extent claiming gigabytes. Each is a clean
//!   error within seconds.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::Instant;

use nixboot::disk::{BlockSource, Disk, Window};
use nixboot::fs::btrfs::{self, BtrfsError, Kind, Subvol};

use crate::common::{have, have_root, tempdir};

// ---------------------------------------------------------------------------
// Trees

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Text-like, compressible bytes.
fn text(n: usize, seed: u32) -> Vec<u8> {
    let words: Vec<&[u8]> = vec![b"nix ", b"store ", b"linux-6.6 ", b"initrd ", b"\n", b"boot.json "];
    let r = noise(n, seed);
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(words[usize::from(r[i % r.len()]) % words.len()]);
        i += 1;
    }
    out.truncate(n);
    out
}

/// Write the test tree under `root`: inline, regular, sparse, empty and
/// large files, compressible and not; short, long, absolute and dangling
/// symlinks; a directory big enough for several leaves; deep nesting; a fifo.
fn write_tree(root: &Path) {
    let w = |p: &str, d: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, d).unwrap();
    };
    w("small.txt", b"hello\n");
    w("empty", b"");
    w("medium.bin", &noise(5000, 1));
    w("nix/store/abc-linux/bzImage", &noise(1 << 20, 2));
    w("nix/store/abc-linux/initrd", &text(3 << 20, 3));
    w("etc/os-release", &text(700, 4));
    w("a/b/c/d/e/f/deep.txt", b"deep\n");
    for i in 0..400 {
        w(&format!("many/entry-{i:04}"), format!("file {i}\n").as_bytes());
    }
    // Sparse: data, a hole, data, a hole to the end.
    let f = fs::File::create(root.join("sparse.bin")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&noise(8192, 5), 0).unwrap();
    f.write_all_at(&text(8192, 6), 1 << 20).unwrap();
    f.set_len(3 << 20).unwrap();
    let l = |target: &str, p: &str| std::os::unix::fs::symlink(target, root.join(p)).unwrap();
    l("small.txt", "link");
    l("/nix/store/abc-linux/bzImage", "abs-link");
    l(&"d/".repeat(700), "long-link");
    l("nowhere", "dangling");
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// What one path is, as compared between readers.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Dir { names: Vec<Vec<u8>>, mtime: Option<i64> },
    File { data: Vec<u8>, mtime: i64 },
    Link { target: Vec<u8>, mtime: i64 },
    Special,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Every path of a subvolume as nixboot reads it. Also checks, for each
/// file, that `data_runs` (when it gives runs) maps to the same bytes.
fn walk_reader(sv: &Subvol, image: &Path, sort: bool) -> BTreeMap<Vec<u8>, Seen> {
    let img = fs::read(image).unwrap();
    let mut out = BTreeMap::new();
    let mut todo = vec![b"/".to_vec()];
    while let Some(dir) = todo.pop() {
        let st = sv.lstat(&dir).unwrap();
        let mut names = Vec::new();
        sv.read_dir(&dir, true, &|e| e, &mut |name, kind, meta| {
            let m = meta.unwrap();
            assert_eq!(m.kind, kind);
            names.push((name.to_vec(), m));
            Ok(())
        })
        .unwrap();
        for (name, m) in &names {
            let p = join(&dir, name);
            assert_eq!(sv.lstat(&p).unwrap(), *m, "{}", String::from_utf8_lossy(&p));
            let seen = match m.kind {
                Kind::Dir => {
                    todo.push(p.clone());
                    continue;
                }
                Kind::File => {
                    let map = sv.file_map(&p).unwrap();
                    let data = map.read_all(1 << 30).unwrap();
                    assert_eq!(u64::try_from(data.len()).unwrap(), m.len);
                    // The streaming reader agrees with the fast path.
                    let mut streamed = Vec::new();
                    std::io::Read::read_to_end(&mut map.reader(), &mut streamed).unwrap();
                    assert!(streamed == data, "reader and read_all differ on {}", String::from_utf8_lossy(&p));
                    if let Some(runs) = map.data_runs() {
                        let mut from_runs = Vec::new();
                        for (off, len) in runs {
                            let len = usize::try_from(len).unwrap();
                            match off {
                                Some(o) => from_runs.extend_from_slice(&img[usize::try_from(o).unwrap()..][..len]),
                                None => from_runs.resize(from_runs.len() + len, 0),
                            }
                        }
                        assert!(from_runs == data, "runs of {} differ", String::from_utf8_lossy(&p));
                    }
                    Seen::File { data, mtime: m.mtime }
                }
                Kind::Symlink => Seen::Link {
                    target: sv.read_link(&p).unwrap(),
                    mtime: m.mtime,
                },
                Kind::Special => Seen::Special,
            };
            out.insert(p, seen);
        }
        let mut names: Vec<Vec<u8>> = names.into_iter().map(|(n, _)| n).collect();
        if sort {
            names.sort();
        }
        // The placeholder directory of a missing subvolume has a made-up mtime.
        let mtime = (st.ino != 2).then_some(st.mtime);
        out.insert(dir, Seen::Dir { names, mtime });
    }
    out
}

/// The same view of a directory on the host (the source tree, or a
/// kernel mount).
fn walk_host(root: &Path, sort: bool) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut todo = vec![b"/".to_vec()];
    while let Some(dir) = todo.pop() {
        let host = |p: &[u8]| root.join(std::ffi::OsStr::from_bytes(p.strip_prefix(b"/").unwrap()));
        let st = fs::symlink_metadata(host(&dir)).unwrap();
        let mut names = Vec::new();
        for e in fs::read_dir(host(&dir)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().as_bytes().to_vec();
            let p = join(&dir, &name);
            let m = fs::symlink_metadata(host(&p)).unwrap();
            let ft = m.file_type();
            if ft.is_dir() {
                todo.push(p.clone());
            } else if ft.is_file() {
                out.insert(
                    p.clone(),
                    Seen::File {
                        data: fs::read(host(&p)).unwrap(),
                        mtime: m.mtime(),
                    },
                );
            } else if ft.is_symlink() {
                out.insert(
                    p.clone(),
                    Seen::Link {
                        target: fs::read_link(host(&p)).unwrap().as_os_str().as_bytes().to_vec(),
                        mtime: m.mtime(),
                    },
                );
            } else {
                out.insert(p.clone(), Seen::Special);
            }
            names.push(name);
        }
        if sort {
            names.sort();
        }
        let mtime = (st.ino() != 2).then_some(st.mtime());
        out.insert(dir, Seen::Dir { names, mtime });
    }
    out
}

fn assert_same(what: &str, a: &BTreeMap<Vec<u8>, Seen>, b: &BTreeMap<Vec<u8>, Seen>) {
    let ka: Vec<_> = a.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    let kb: Vec<_> = b.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(ka, kb, "{what}: different paths");
    for (k, v) in a {
        let w = &b[k];
        if v != w {
            let short = |s: &Seen| match s {
                Seen::File { data, mtime } => format!("file of {} bytes, mtime {mtime}", data.len()),
                other => format!("{other:?}"),
            };
            panic!("{what}: {} differs: nixboot {} vs {}", String::from_utf8_lossy(k), short(v), short(w));
        }
    }
}

fn open(image: &Path) -> Result<Vec<Subvol>, BtrfsError> {
    let d: Rc<dyn BlockSource> = Rc::new(Disk::open(image).unwrap());
    let w = Window::new(d.clone(), 0, d.len()).unwrap();
    btrfs::open_subvolumes(w)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mkfs.btrfs --rootdir tree` into a new image of `size` bytes (or
/// shrunk to fit when `None`).
fn mkfs_rootdir(dir: &Path, tree: &Path, extra: &[&str]) -> PathBuf {
    let img = dir.join("fs.img");
    fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    let mut c = Command::new("mkfs.btrfs");
    c.arg("-q").arg("-f").args(extra).arg("--rootdir").arg(tree).arg(&img);
    run(&mut c);
    img
}

// ---------------------------------------------------------------------------
// Rootless: mkfs.btrfs --rootdir

#[test]
fn btrfs_rootdir_matches_tree() {
    if !have(&["mkfs.btrfs"]) {
        return;
    }
    for (name, extra) in [
        ("default (dup metadata, 16 KiB nodes)", &[][..]),
        ("mixed block groups, 4 KiB nodes", &["-M"][..]),
        ("single metadata, 64 KiB nodes, xxhash", &["-m", "single", "-n", "65536", "--csum", "xxhash"][..]),
        ("sha256", &["--csum", "sha256"][..]),
        ("blake2", &["--csum", "blake2", "-L", "NIXOS"][..]),
    ] {
        let dir = tempdir("btrfs-rootdir");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        write_tree(&tree);
        let img = mkfs_rootdir(dir.path(), &tree, extra);
        let t = Instant::now();
        let subvols = open(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(subvols.len(), 1, "{name}");
        assert_eq!(subvols[0].id(), 5);
        let got = walk_reader(&subvols[0], &img, true);
        eprintln!("{name}: {} paths read in {:?}", got.len(), t.elapsed());
        let want = walk_host(&tree, true);
        // mkfs does not keep the tree root's own mtime.
        let strip = |m: BTreeMap<Vec<u8>, Seen>| -> BTreeMap<Vec<u8>, Seen> {
            m.into_iter()
                .map(|(k, v)| match v {
                    Seen::Dir { names, .. } if k == b"/" => (k, Seen::Dir { names, mtime: None }),
                    v => (k, v),
                })
                .collect()
        };
        assert_same(name, &strip(got), &strip(want));
        if extra.contains(&"NIXOS") {
            assert_eq!(subvols[0].volume().superblock().label, b"NIXOS");
        }
        // Lookups of what is not there.
        assert!(matches!(subvols[0].lstat(b"/nope"), Err(BtrfsError::NotFound(_))));
        assert!(matches!(subvols[0].lstat(b"/small.txt/x"), Err(BtrfsError::NotDir(_))));
    }
}

// ---------------------------------------------------------------------------
// As root: loop mounts

/// A loop-mounted image, unmounted on drop.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(img: &Path, dir: &Path, opts: &str) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        run(Command::new("mount").arg("-o").arg(format!("loop,{opts}")).arg(img).arg(dir));
        Mounted { dir: dir.to_owned() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn fresh_image(dir: &Path) -> PathBuf {
    let img = dir.join("fs.img");
    fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
    run(Command::new("mkfs.btrfs").arg("-q").arg("-f").arg(&img));
    img
}

#[test]
fn btrfs_compressed_matches_kernel() {
    if !have(&["mkfs.btrfs", "mount", "umount"]) || !have_root("loop-mounting btrfs images") {
        return;
    }
    for algo in ["zstd", "lzo", "zlib"] {
        let dir = tempdir("btrfs-compress");
        let img = fresh_image(dir.path());
        let mnt = dir.path().join("mnt");
        {
            let m = Mounted::new(&img, &mnt, &format!("compress-force={algo}"));
            write_tree(&m.dir);
        }
        let subvols = open(&img).unwrap_or_else(|e| panic!("{algo}: {e}"));
        let sv = &subvols[0];
        // The big text file really is compressed: no disk runs.
        let map = sv.file_map(b"/nix/store/abc-linux/initrd").unwrap();
        assert!(map.data_runs().is_none(), "{algo}: initrd not compressed");
        let t = Instant::now();
        let got = walk_reader(sv, &img, false);
        eprintln!("{algo}: {} paths read in {:?}", got.len(), t.elapsed());
        let m = Mounted::new(&img, &mnt, "ro");
        let want = walk_host(&m.dir, false);
        assert_same(algo, &got, &want);
    }
}

#[test]
fn btrfs_subvolumes_match_kernel() {
    if !have(&["mkfs.btrfs", "btrfs", "mount", "umount"]) || !have_root("loop-mounting btrfs images") {
        return;
    }
    let dir = tempdir("btrfs-subvol");
    let img = fresh_image(dir.path());
    let mnt = dir.path().join("mnt");
    let listed;
    {
        let m = Mounted::new(&img, &mnt, "compress=zstd");
        let sub = |p: &str| run(Command::new("btrfs").args(["-q", "subvolume", "create"]).arg(m.dir.join(p)));
        sub("@");
        sub("@nix");
        sub("@home");
        fs::create_dir_all(m.dir.join("vols/inner")).unwrap();
        sub("vols/inner/deep");
        sub("@/nested");
        write_tree(&m.dir.join("@"));
        fs::create_dir_all(m.dir.join("@/nix")).unwrap(); // the empty mount point of @nix
        fs::create_dir_all(m.dir.join("@nix/var/nix/profiles")).unwrap();
        std::os::unix::fs::symlink("system-1-link", m.dir.join("@nix/var/nix/profiles/system")).unwrap();
        fs::create_dir_all(m.dir.join("@nix/store")).unwrap();
        fs::write(m.dir.join("@home/notes"), text(20000, 9)).unwrap();
        fs::write(m.dir.join("@/nested/inside"), b"nested\n").unwrap();
        fs::write(m.dir.join("vols/inner/deep/file"), b"deep\n").unwrap();
        fs::write(m.dir.join("top-file"), b"top\n").unwrap();
        // A snapshot of @: its `nested` shows as an empty directory.
        run(Command::new("btrfs").args(["-q", "subvolume", "snapshot"]).arg(m.dir.join("@")).arg(m.dir.join("snap")));
        run(Command::new("btrfs").args(["subvolume", "set-default"]).arg(m.dir.join("@")));
        listed = run(Command::new("btrfs").args(["subvolume", "list"]).arg(&m.dir));
    }
    // "ID 256 gen 9 top level 5 path @"
    let mut want: Vec<(u64, String)> = listed
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[8..].join(" "))
        })
        .collect();
    let subvols = open(&img).unwrap();
    assert_eq!(subvols[0].path(), b"@", "the default subvolume comes first");
    assert_eq!(subvols[0].describe(), format!("btrfs subvolume @ (id {})", subvols[0].id()));
    let mut got: Vec<(u64, String)> = subvols
        .iter()
        .filter(|s| s.id() != 5)
        .map(|s| (s.id(), String::from_utf8_lossy(s.path()).into_owned()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(subvols.iter().any(|s| s.id() == 5));
    // Each subvolume, and the whole top level (crossing into nested
    // subvolumes and the snapshot's placeholder), as the kernel shows them.
    let top = subvols.iter().find(|s| s.id() == 5).unwrap();
    let got_top = walk_reader(top, &img, false);
    let m = Mounted::new(&img, &mnt, "ro,subvolid=5");
    assert_same("top level", &got_top, &walk_host(&m.dir, false));
    for s in &subvols {
        let p = String::from_utf8_lossy(s.path()).into_owned();
        let host = if p.is_empty() { m.dir.clone() } else { m.dir.join(&p) };
        assert_same(&p, &walk_reader(s, &img, false), &walk_host(&host, false));
    }
    // The snapshot's nested subvolume is an empty placeholder directory.
    let snap = subvols.iter().find(|s| s.path() == b"snap").unwrap();
    assert_eq!(snap.lstat(b"/nested").unwrap().kind, Kind::Dir);
    let nix = subvols.iter().find(|s| s.path() == b"@nix").unwrap();
    assert_eq!(nix.read_link(b"/var/nix/profiles/system").unwrap(), b"system-1-link");
}
