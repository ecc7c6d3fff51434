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
                    assert!(
                        streamed == data,
                        "reader and read_all differ on {}",
                        String::from_utf8_lossy(&p)
                    );
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
            panic!(
                "{what}: {} differs: nixboot {} vs {}",
                String::from_utf8_lossy(k),
                short(v),
                short(w)
            );
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
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        (
            "single metadata, 64 KiB nodes, xxhash",
            &["-m", "single", "-n", "65536", "--csum", "xxhash"][..],
        ),
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
        run(Command::new("mount")
            .arg("-o")
            .arg(format!("loop,{opts}"))
            .arg(img)
            .arg(dir));
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
        let sub = |p: &str| {
            run(Command::new("btrfs")
                .args(["-q", "subvolume", "create"])
                .arg(m.dir.join(p)))
        };
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
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "snapshot"])
            .arg(m.dir.join("@"))
            .arg(m.dir.join("snap")));
        run(Command::new("btrfs")
            .args(["subvolume", "set-default"])
            .arg(m.dir.join("@")));
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
    assert_eq!(
        subvols[0].describe(),
        format!("btrfs subvolume @ (id {})", subvols[0].id())
    );
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

// ---------------------------------------------------------------------------
// Hostile: patched mkfs images

const SB: usize = 0x10000;

fn crc32c(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(b)
}

fn resum_super(img: &mut [u8]) {
    let c = crc32c(&img[SB + 32..SB + 4096]);
    img[SB..SB + 4].copy_from_slice(&c.to_le_bytes());
}

fn resum_node(img: &mut [u8], start: usize, nodesize: usize) {
    let c = crc32c(&img[start + 32..start + nodesize]);
    img[start..start + 4].copy_from_slice(&c.to_le_bytes());
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Every copy of the leaf holding `key` (the image is scanned for nodes
/// of this filesystem): node start and the item's data range in the image.
fn find_item(img: &[u8], nodesize: usize, objectid: u64, ty: u8, offset: u64) -> Vec<(usize, usize, usize)> {
    let fsid = &img[SB + 0x20..SB + 0x30];
    let mut out = Vec::new();
    for start in (0..img.len() - nodesize).step_by(nodesize) {
        let n = &img[start..start + nodesize];
        if &n[0x20..0x30] != fsid || n[0x64] != 0 || start == SB {
            continue;
        }
        let count = u32::from_le_bytes(n[0x60..0x64].try_into().unwrap()) as usize;
        for i in 0..count.min((nodesize - 101) / 25) {
            let at = 101 + i * 25;
            if le64(n, at) == objectid && n[at + 8] == ty && le64(n, at + 9) == offset {
                let off = u32::from_le_bytes(n[at + 17..at + 21].try_into().unwrap()) as usize + 101;
                let size = u32::from_le_bytes(n[at + 21..at + 25].try_into().unwrap()) as usize;
                out.push((start, start + off, start + off + size));
            }
        }
    }
    out
}

/// A default mkfs image (DUP metadata, 16 KiB nodes) of the test tree.
fn hostile_base(dir: &Path) -> (PathBuf, Vec<u8>) {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    write_tree(&tree);
    let img = mkfs_rootdir(dir, &tree, &[]);
    let bytes = fs::read(&img).unwrap();
    (img, bytes)
}

/// Open the patched image and read everything; the first error, and
/// how long it took.
fn try_all(path: &Path, bytes: &[u8]) -> Result<(), String> {
    fs::write(path, bytes).unwrap();
    let t = Instant::now();
    let r = (|| -> Result<(), BtrfsError> {
        for sv in open(path)? {
            let mut todo = vec![b"/".to_vec()];
            while let Some(d) = todo.pop() {
                let mut ents = Vec::new();
                sv.read_dir(&d, true, &|e| e, &mut |n, k, _| {
                    ents.push((join(&d, n), k));
                    Ok(())
                })?;
                for (p, k) in ents {
                    match k {
                        Kind::Dir => todo.push(p),
                        Kind::File => {
                            sv.file_map(&p)?.read_all(1 << 30)?;
                        }
                        Kind::Symlink => {
                            sv.read_link(&p)?;
                        }
                        Kind::Special => {}
                    }
                }
            }
        }
        Ok(())
    })();
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
    r.map_err(|e| e.to_string())
}

#[test]
fn btrfs_hostile_chunk_maps() {
    if !have(&["mkfs.btrfs"]) {
        return;
    }
    let dir = tempdir("btrfs-hostile");
    let (_, base) = hostile_base(dir.path());
    let path = dir.path().join("patched.img");
    try_all(&path, &base).unwrap();
    // The first sys_chunk_array entry: key (17 bytes), then the chunk.
    let arr = SB + 0x32b;
    let chunk = arr + 17;
    let patch = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        resum_super(&mut b);
        try_all(&path, &b).unwrap_err()
    };
    let e = patch(&|b| b[chunk + 24..chunk + 32].copy_from_slice(&(2u64 | 16).to_le_bytes()));
    assert!(e.contains("RAID profile"), "{e}");
    let e = patch(&|b| b[chunk + 48 + 8..chunk + 48 + 16].copy_from_slice(&(1u64 << 50).to_le_bytes()));
    assert!(e.contains("past the end"), "{e}");
    let e = patch(&|b| b[chunk..chunk + 8].copy_from_slice(&(1u64 << 60).to_le_bytes()));
    assert!(e.contains("past the end"), "{e}");
    let e = patch(&|b| b[chunk + 48..chunk + 56].copy_from_slice(&7u64.to_le_bytes()));
    assert!(e.contains("device 7"), "{e}");
    // The entry twice, the copy one sector longer: overlapping chunks.
    let e = patch(&|b| {
        let size = u32::from_le_bytes(b[SB + 0xa0..SB + 0xa4].try_into().unwrap()) as usize;
        let entry = b[arr..arr + size].to_vec();
        b[arr + size..arr + size + entry.len()].copy_from_slice(&entry);
        let len = le64(&entry, 17) + 4096;
        b[arr + size + 17..arr + size + 25].copy_from_slice(&len.to_le_bytes());
        b[SB + 0xa0..SB + 0xa4].copy_from_slice(&u32::try_from(size + entry.len()).unwrap().to_le_bytes());
    });
    assert!(e.contains("overlaps"), "{e}");
    let e = patch(&|b| b[SB + 0xa0..SB + 0xa4].copy_from_slice(&4000u32.to_le_bytes()));
    assert!(e.contains("sys_chunk_array"), "{e}");
    // A bad superblock checksum, another checksum type, two devices.
    let mut b = base.clone();
    b[SB + 0x100] ^= 1;
    assert!(try_all(&path, &b).unwrap_err().contains("checksum"));
    let e = patch(&|b| b[SB + 0xc4] = 9);
    assert!(e.contains("checksum type 9"), "{e}");
    let e = patch(&|b| b[SB + 0x88] = 2);
    assert!(e.contains("2 devices"), "{e}");
}

#[test]
fn btrfs_hostile_trees_and_extents() {
    if !have(&["mkfs.btrfs"]) {
        return;
    }
    let dir = tempdir("btrfs-hostile");
    let (img, base) = hostile_base(dir.path());
    let path = dir.path().join("patched.img");
    let ns = 16384;
    let sv = &open(&img).unwrap()[0];
    let initrd = sv.lstat(b"/nix/store/abc-linux/initrd").unwrap().ino;
    let root_dir = sv.lstat(b"/").unwrap().ino;
    let vol = sv.volume();
    let (root_copies, _) = vol.chunks().map(vol.superblock().root.bytenr).unwrap();
    assert_eq!(root_copies.len(), 2, "DUP metadata: two copies of the root tree's root");

    // The FS tree's root leaf made a level-1 node pointing at itself (the
    // root item updated to match).
    let mut b = base.clone();
    let leaves = find_item(&b, ns, root_dir, 1, 0);
    // Two live copies (DUP) and stale ones from mkfs's own transactions.
    assert!(leaves.len() >= 2, "DUP metadata: two copies");
    for (start, _, _) in &leaves {
        let own = le64(&b, start + 0x30);
        let n = &mut b[*start..*start + ns];
        n[0x60..0x64].copy_from_slice(&1u32.to_le_bytes());
        n[0x64] = 1;
        n[101 + 17..101 + 25].copy_from_slice(&own.to_le_bytes());
        resum_node(&mut b, *start, ns);
    }
    for (start, s, _) in find_item(&b, ns, 5, 132, 0) {
        b[s + 238] = 1;
        resum_node(&mut b, start, ns);
    }
    let e = try_all(&path, &b).unwrap_err();
    assert!(e.contains("has level 1, expected 0"), "{e}");

    // A leaf claiming 4 billion items.
    let mut b = base.clone();
    for (start, _, _) in find_item(&b, ns, root_dir, 1, 0) {
        b[start + 0x60..start + 0x64].copy_from_slice(&u32::MAX.to_le_bytes());
        resum_node(&mut b, start, ns);
    }
    let e = try_all(&path, &b).unwrap_err();
    assert!(e.contains("more items than fit"), "{e}");

    // A compressed extent claiming 4 GiB, and one whose extent is 2^40 bytes
    // long in a 2^40-byte file.
    let mut b = base.clone();
    let found = find_item(&b, ns, initrd, 108, 0);
    assert!(!found.is_empty());
    for (start, s, _) in &found {
        b[s + 8..s + 16].copy_from_slice(&(4u64 << 30).to_le_bytes());
        b[s + 16] = 3;
        resum_node(&mut b, *start, ns);
    }
    let e = try_all(&path, &b).unwrap_err();
    assert!(e.contains("compressed extent of 4294967296 bytes"), "{e}");
    let mut b = base.clone();
    for (start, s, _) in find_item(&b, ns, initrd, 108, 0) {
        b[s + 45..s + 53].copy_from_slice(&(1u64 << 40).to_le_bytes());
        resum_node(&mut b, start, ns);
    }
    for (start, s, _) in find_item(&b, ns, initrd, 1, 0) {
        b[s + 16..s + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        resum_node(&mut b, start, ns);
    }
    let e = try_all(&path, &b).unwrap_err();
    assert!(e.contains("crosses a chunk boundary") || e.contains("over the"), "{e}");
    // The root tree's root corrupt (checksum not recomputed): in one copy
    // DUP's other copy is used; in both, a checksum error.
    let mut b = base.clone();
    let first = usize::try_from(root_copies[0]).unwrap();
    b[first + 200] ^= 0xff;
    try_all(&path, &b).unwrap();
    let second = usize::try_from(root_copies[1]).unwrap();
    b[second + 200] ^= 0xff;
    let e = try_all(&path, &b).unwrap_err();
    assert!(e.contains("checksum does not match"), "{e}");
}
