//! Replays every committed fuzz seed (`testdata/fuzz/seeds/<target>/`) and
//! every minimized fuzz regression (`testdata/regress/fuzz_<target>_*.bin`)
//! through the matching `nixboot::fuzzing` entry point, on stable, so CI
//! exercises the corpus without nightly or cargo-fuzz. A panic here is a
//! fuzz crash; the file name says which input.

use std::fs;
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("partitions", nixboot::fuzzing::partitions),
    ("disk", nixboot::fuzzing::disk),
    ("ext4", nixboot::fuzzing::ext4),
    ("bootspec", nixboot::fuzzing::bootspec),
    ("cmdline", nixboot::fuzzing::cmdline),
    ("render", nixboot::fuzzing::render),
    ("lvm", nixboot::fuzzing::lvm),
    ("entry", nixboot::fuzzing::entry),
];

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

fn sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The parse child's address-space limit, as in production: an input
/// that makes a stage allocate more aborts here too (the fuzzer's
/// `-malloc_limit_mb` catches the same class of bug).
fn limit_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{Resource, setrlimit};
        let cap = nixboot::limits::CHILD_ADDRESS_SPACE;
        setrlimit(Resource::RLIMIT_AS, cap, cap).unwrap();
    });
}

fn run(f: Target, path: &Path) {
    limit_memory();
    let data = fs::read(path).unwrap();
    eprintln!("replaying {} ({} bytes)", path.display(), data.len());
    f(&data);
}

#[test]
fn seeds() {
    let mut n = 0;
    for (name, f) in TARGETS {
        let files = sorted(&testdata().join("fuzz/seeds").join(name));
        assert!(!files.is_empty(), "no seeds for {name}");
        for p in files {
            run(*f, &p);
            n += 1;
        }
    }
    eprintln!("{n} seeds replayed");
}

/// Every `fuzz_<target>_<what>.bin` in testdata/regress: the bug it records
/// (see testdata/README.md) used to crash that target.
#[test]
fn regressions() {
    for p in sorted(&testdata().join("regress")) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let Some(rest) = name.strip_prefix("fuzz_").and_then(|r| r.strip_suffix(".bin")) else {
            continue;
        };
        let t = rest.split('_').next().unwrap();
        run(target(t), &p);
    }
}

/// The disk seeds are real NixOS-shaped images: make sure they boot, so
/// the fuzzer starts from inputs that reach the end of the pipeline.
#[test]
fn disk_seeds_boot() {
    use std::rc::Rc;
    for p in sorted(&testdata().join("fuzz/seeds/disk")) {
        let image = fs::read(&p).unwrap();
        let src: Rc<dyn nixboot::disk::BlockSource> = Rc::new(image.clone());
        let req = nixboot::boot::Request {
            mode: nixboot::boot::Mode::Boot,
            offset: None,
            selection: nixboot::boot::Selection::Default,
            args: None,
            max_kernel: 1 << 20,
            max_initrd: 1 << 20,
            send_data: true,
            known_pv: Vec::new(),
            cmdline_override: None,
            domain_type: None,
            unpack_kernel: false,
        };
        let mut out = Vec::new();
        nixboot::boot::run(src, &req, &mut out).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // Rebuild the kernel as the parent would: data frames, or runs of
        // the disk's own bytes.
        use nixboot::ipc::{Run, Tag, read_frame};
        let (mut r, mut buf, mut kernel) = (out.as_slice(), Vec::new(), Vec::new());
        while let Some(tag) = read_frame(&mut r, &mut buf).unwrap() {
            match tag {
                Tag::Kernel => kernel.extend_from_slice(&buf),
                Tag::KernelRun => match Run::decode(&buf).unwrap() {
                    Run {
                        disk_offset: Some(o),
                        len,
                    } => {
                        kernel.extend_from_slice(&image[usize::try_from(o).unwrap()..][..usize::try_from(len).unwrap()])
                    }
                    Run { disk_offset: None, len } => kernel.resize(kernel.len() + usize::try_from(len).unwrap(), 0),
                },
                _ => {}
            }
        }
        assert!(
            kernel.windows(8).any(|w| w == b"Xen\0\x01\0\0\0") || kernel.starts_with(b"\x7fELF"),
            "{}: kernel not sent",
            p.display()
        );
    }
}
