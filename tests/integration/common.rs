//! The integration harness: NixOS-shaped trees and the ext4 disk images
//! built from them at test time, and a runner that starts the real
//! `nixboot` binary the way libxl does and reads its result the way libxl
//! does.
//!
//! * Fixtures: [`Tree`] describes generations declaratively; `.image()`
//!   writes the tree to a tempdir and makes an image with `mke2fs -d`
//!   (and `sfdisk` for partition tables, an independent oracle), with the
//!   UUID, hash seed and time pinned. Nothing is committed.
//! * Running: [`Libxl`] builds libxl's exact argv (`make_bootloader_args`),
//!   pre-creates the output file (empty, 0600) and directory (0600), and
//!   runs the binary under a pty that is its stdin, stdout, stderr and
//!   controlling terminal, in a new session, with `TERM=vt100` — what
//!   libxl's `login_tty` gives pygrub. The master side is drained and
//!   every run has a deadline.
//! * Checking: [`parse_libxl_result`] implements libxl's
//!   `parse_bootloader_result` rules; [`Ran::expect_boot`] and
//!   [`Ran::expect_error`] assert the whole contract (exit status, one
//!   error line with its fault prefix, files in the output directory).
//!
//! A test that needs a tool that is missing prints `skipped: …` and
//! returns; with `CI=true` or `NIXBOOT_REQUIRE_TOOLS=1` that skip panics.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const NIXBOOT: &str = env!("CARGO_BIN_EXE_nixboot");

/// Default deadline of one run. nixboot's own parse-child deadline is 60 s.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Pinned time for `mke2fs` (`E2FSPROGS_FAKE_TIME`) and the base of the
/// generation links' mtimes (2023-11-14T22:13:20Z).
pub const FAKE_TIME: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------
// Tools and skips

fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("NIXBOOT_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Report a skip; panics instead when tools are required (CI).
pub fn skip(why: &str) {
    if strict() {
        panic!("skipped: {why} (CI=true or NIXBOOT_REQUIRE_TOOLS=1: a skip is a failure)");
    }
    eprintln!("skipped: {why}");
}

/// Find `name` on PATH or in the sbin directories (where e2fsprogs lives).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether every tool is there; otherwise [`skip`] and `false`.
pub fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| tool(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "{} not found (install e2fsprogs / util-linux)",
        missing.join(", ")
    ));
    false
}

/// Whether the tests run as root; otherwise [`skip`] and `false`.
pub fn have_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(&format!("{why} needs root"));
    false
}

fn run_tool(name: &str, args: &[OsString], stdin: Option<&[u8]>) -> Vec<u8> {
    let path = tool(name).unwrap_or_else(|| panic!("{name} vanished"));
    let mut c = Command::new(&path);
    c.args(args)
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME.to_string())
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Where test scratch directories go: `$NIXBOOT_TEST_TMPDIR`, else
/// `/dev/shm` when it is a writable directory (trees of thousands of small
/// files and sparse multi-GiB images cost only memory there, and removing
/// them is instant), else the system temp dir.
pub fn scratch_root() -> PathBuf {
    if let Some(d) = std::env::var_os("NIXBOOT_TEST_TMPDIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir() && tempfile::tempdir_in(shm).is_ok();
    if writable { shm.to_owned() } else { std::env::temp_dir() }
}

/// A new scratch directory under [`scratch_root`], removed on drop.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_root())
        .unwrap()
}

// ---------------------------------------------------------------------------
// Guest content

/// A tiny stand-in Xen PV kernel: an ELF64 x86-64 executable with one
/// PT_LOAD segment and a PT_NOTE segment carrying the Xen ELF notes that
/// Linux's vmlinux carries, padded to `size` bytes with deterministic
/// filler derived from `seed` (a port of `testdata/demo/pvkernel.py`).
/// It is not a runnable kernel.
pub fn pv_kernel(size: usize, seed: u32) -> Vec<u8> {
    xen_kernel(size, seed, true, false)
}

/// [`pv_kernel`] with the PV entry note (`pv`) and/or the PVH entry note
/// `XEN_ELFNOTE_PHYS32_ENTRY` (`pvh`), as Linux emits them with
/// `CONFIG_XEN_PV` and `CONFIG_XEN_PVH`.
pub fn xen_kernel(size: usize, seed: u32, pv: bool, pvh: bool) -> Vec<u8> {
    const VIRT: u64 = 0xffff_ffff_8000_0000;
    fn note(ntype: u32, desc: &[u8]) -> Vec<u8> {
        let pad = |b: &[u8]| {
            let mut v = b.to_vec();
            v.resize(b.len().div_ceil(4) * 4, 0);
            v
        };
        let name = b"Xen\0";
        let mut n = Vec::new();
        n.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend(pad(name));
        n.extend(pad(desc));
        n
    }
    let mut notes: Vec<Vec<u8>> = vec![
        note(6, b"linux\0"),          // GUEST_OS
        note(7, b"2.6\0"),            // GUEST_VERSION
        note(5, b"xen-3.0\0"),        // XEN_VERSION
        note(3, &VIRT.to_le_bytes()), // VIRT_BASE
        note(4, &0u64.to_le_bytes()), // PADDR_OFFSET
    ];
    if pv {
        notes.push(note(1, &(VIRT + 0x1000).to_le_bytes())); // ENTRY
    }
    notes.push(note(2, &(VIRT + 0x2000).to_le_bytes())); // HYPERCALL_PAGE
    notes.push(note(10, b"!writable_page_tables\0")); // FEATURES
    notes.push(note(9, b"yes\0")); // PAE_MODE
    notes.push(note(8, b"generic\0")); // LOADER
    if pvh {
        notes.push(note(18, &0x0100_0000u32.to_le_bytes())); // PHYS32_ENTRY
    }
    let notes: Vec<u8> = notes.concat();
    let (ehsize, phsize) = (64u16, 56u16);
    let note_off = u64::from(ehsize) + 2 * u64::from(phsize);
    let load_off = 0x1000usize;
    let size = size.max(load_off + 0x3000);
    let filesz = u64::try_from(size - load_off).unwrap();
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"\x7fELF");
    b.extend_from_slice(&[2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(VIRT + 0x1000).to_le_bytes());
    b.extend_from_slice(&u64::from(ehsize).to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for h in [ehsize, phsize, 2, 64, 0, 0] {
        b.extend_from_slice(&h.to_le_bytes());
    }
    let ph = |b: &mut Vec<u8>, f: [u64; 6], t: u32, fl: u32| {
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&fl.to_le_bytes());
        for x in f {
            b.extend_from_slice(&x.to_le_bytes());
        }
    };
    let lo = u64::try_from(load_off).unwrap();
    ph(&mut b, [lo, VIRT, 0x100_0000, filesz, filesz, 0x1000], 1, 7);
    let nl = u64::try_from(notes.len()).unwrap();
    ph(&mut b, [note_off, 0, 0, nl, nl, 4], 4, 4);
    b.extend_from_slice(&notes);
    b.resize(load_off, 0);
    b.extend(filler(size - load_off, 0x6e69_7862 ^ seed));
    b
}

/// A bzImage (boot protocol 2.15) whose payload is `elf` compressed with
/// zstd, as NixOS builds them (`KERNEL_ZSTD`). Only the header fields Xen
/// reads are set; it is not a runnable kernel.
pub fn zstd_bzimage(elf: &[u8]) -> Vec<u8> {
    let payload = zstd::encode_all(elf, 3).unwrap();
    let mut b = vec![0u8; 5 * 512];
    b[0x1f1] = 4; // setup_sects
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    b[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes()); // payload_offset
    b[0x24c..0x250].copy_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    b.extend_from_slice(&payload);
    b.extend_from_slice(&u32::try_from(elf.len()).unwrap().to_le_bytes());
    b
}

/// Deterministic, non-zero-looking bytes (an LCG), so copies can be
/// compared byte for byte and no block is a hole.
pub fn filler(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    let mut v = Vec::with_capacity(len + 4);
    while v.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A Nix-store-like hash part (32 characters of Nix's base32 alphabet).
pub fn store_hash(kind: &str, n: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain(n.to_le_bytes()) {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (0..32)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(ALPHABET[usize::try_from(x >> 59).unwrap()])
        })
        .collect()
}

/// The NixOS version string of generation `n`.
pub fn version_of(n: u64) -> String {
    format!("24.11.{n}.abcdef0")
}

/// Guest path of generation `n`'s toplevel (specialisation `spec`).
pub fn toplevel_of(n: u64, spec: Option<&str>) -> String {
    let key = format!("system/{}", spec.unwrap_or(""));
    format!(
        "/nix/store/{}-nixos-system-guest-{}",
        store_hash(&key, n),
        version_of(n)
    )
}

/// Guest path of the toplevel of generation `n` (specialisation `spec`)
/// of profile `profile` (`None`: the system profile).
pub fn toplevel_in(profile: Option<&str>, n: u64, spec: Option<&str>) -> String {
    match profile {
        None => toplevel_of(n, spec),
        Some(p) => {
            let key = format!("profile/{p}/{}", spec.unwrap_or(""));
            format!("/nix/store/{}-nixos-system-{p}-{}", store_hash(&key, n), version_of(n))
        }
    }
}

/// Where `nixos-rebuild -p NAME` keeps profile NAME and its links.
pub const SYSTEM_PROFILES: &str = "/nix/var/nix/profiles/system-profiles";

/// Guest path of generation `n`'s link in profile `profile`.
pub fn link_in(profile: Option<&str>, n: u64) -> String {
    match profile {
        None => link_of(n),
        Some(p) => format!("{SYSTEM_PROFILES}/{p}-{n}-link"),
    }
}

/// Guest path of generation `n`'s kernel image.
pub fn kernel_of(n: u64) -> String {
    format!("/nix/store/{}-linux-6.6.{n}/bzImage", store_hash("linux", n))
}

/// Guest path of generation `n`'s (specialisation `spec`'s) initrd.
pub fn initrd_of(n: u64, spec: Option<&str>) -> String {
    let key = format!("initrd/{}", spec.unwrap_or(""));
    format!("/nix/store/{}-initrd-linux-6.6.{n}/initrd", store_hash(&key, n))
}

/// The profile directory and link paths, as NixOS has them.
pub const PROFILES: &str = "/nix/var/nix/profiles";

/// Guest path of `system-N-link`.
pub fn link_of(n: u64) -> String {
    format!("{PROFILES}/system-{n}-link")
}

/// The mtime given to generation `n`'s link (its date in menu labels).
pub fn mtime_of(n: u64) -> i64 {
    FAKE_TIME + i64::try_from(n).unwrap() * 86_400
}

/// `YYYY-MM-DD` of generation `n`'s link mtime, as nixboot shows it.
pub fn date_of(n: u64) -> String {
    let days = mtime_of(n).div_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm), UTC.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// How a generation describes its boot entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// No `boot.json` (before NixOS 23.05): the toplevel's `kernel`,
    /// `initrd`, `init`, `kernel-params` files.
    Legacy,
    /// `boot.json` (bootspec v1) *and* the toplevel's files, as NixOS
    /// builds them. To prove which one nixboot read, `boot.json`'s
    /// `kernelParams` end with the extra marker [`BOOTSPEC_MARKER`] that
    /// the `kernel-params` file does not have.
    Bootspec,
}

/// The parameter only `boot.json` carries (see [`Style::Bootspec`]).
pub const BOOTSPEC_MARKER: &str = "nixboot.test.from=boot.json";

/// What one boot entry (a generation or a specialisation) should boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The `nixos-rebuild -p` profile (`None`: the system profile).
    pub profile: Option<String>,
    /// Generation number.
    pub n: u64,
    /// Specialisation name.
    pub spec: Option<String>,
    /// Toplevel store path.
    pub toplevel: String,
    /// Guest path of the kernel file (no symlinks).
    pub kernel: String,
    /// Guest path of the initrd file, if any.
    pub initrd: Option<String>,
    /// The parameters nixboot should put after `init=`.
    pub params: Vec<String>,
}

impl Entry {
    /// The command line libxl should receive: `init=… params… extra`.
    pub fn cmdline(&self, extra: Option<&str>) -> String {
        let mut parts = vec![format!("init={}/init", self.toplevel)];
        parts.extend(self.params.iter().cloned());
        parts.extend(extra.map(str::to_owned));
        parts.join(" ")
    }

    /// The menu title nixboot shows for this entry.
    pub fn title(&self) -> String {
        let profile = self
            .profile
            .as_ref()
            .map(|p| format!("Profile '{p}' - "))
            .unwrap_or_default();
        let mut s = format!(
            "NixOS - {profile}Configuration {} ({} - {})",
            self.n,
            date_of(self.n),
            version_of(self.n)
        );
        if let Some(name) = &self.spec {
            s.push_str(" - ");
            s.push_str(name);
        }
        s
    }
}

#[derive(Clone, Debug)]
struct SpecDef {
    name: String,
    params: Vec<String>,
}

#[derive(Clone, Debug)]
struct GenDef {
    profile: Option<String>,
    n: u64,
    style: Style,
    initrd: bool,
    kernel_size: usize,
    params: Vec<String>,
    specs: Vec<SpecDef>,
}

type Hook = Box<dyn Fn(&Path)>;

/// A NixOS-shaped guest root filesystem, described declaratively.
///
/// `Tree::nixos().generation(1, Style::Legacy).generation(2,
/// Style::Bootspec).current(2)`; modifiers like [`Tree::no_initrd`] apply
/// to the generation added last.
pub struct Tree {
    gens: Vec<GenDef>,
    current: Option<u64>,
    profile_currents: Vec<(String, u64)>,
    files: Vec<(String, Vec<u8>)>,
    links: Vec<(String, String)>,
    hooks: Vec<Hook>,
    inodes: u64,
    mke2fs_features: Option<String>,
}

/// Block size of the ext4 filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSize {
    /// 1 KiB blocks (a small-disk default).
    K1,
    /// 4 KiB blocks (the usual default).
    K4,
}

impl BlockSize {
    fn bytes(self) -> u64 {
        match self {
            BlockSize::K1 => 1024,
            BlockSize::K4 => 4096,
        }
    }
}

/// Where the ext4 filesystem sits on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The whole disk is the filesystem (no partition table).
    Bare,
    /// MBR; partition 1 is a small ext4 *without* a NixOS profile (a
    /// separate /boot-like fs), partition 2 is the system.
    Mbr,
    /// MBR; partition 1 is empty (type 83), 2 is extended, logical 5 is
    /// swap-typed, logical 6 is the system.
    MbrLogical,
    /// GPT; partition 1 is an (empty) EFI system partition, 2 the system.
    Gpt,
    /// MBR; partition 1 is a small root filesystem whose `/nix` is an
    /// empty mount point, partition 2 is the guest's `/nix` on its own
    /// (its root holds `store/` and `var/nix/profiles/`), as impermanence
    /// and tmpfs-root setups lay it out.
    NixPartition,
}

impl Tree {
    /// An empty NixOS root: `/nix/var/nix/profiles`, `/etc`, `/dev`.
    pub fn nixos() -> Tree {
        Tree {
            gens: Vec::new(),
            current: None,
            profile_currents: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
            hooks: Vec::new(),
            inodes: 0,
            mke2fs_features: None,
        }
    }

    /// Add generation `n`. Its kernel is a PV ELF of
    /// `192 KiB + 4 KiB·n + 123` bytes (never block-aligned), its initrd
    /// `96 KiB + 1000·n + 7` bytes; parameters `console=hvc0 gen=N`.
    pub fn generation(mut self, n: u64, style: Style) -> Tree {
        let ns = usize::try_from(n % 64).unwrap();
        self.gens.push(GenDef {
            profile: None,
            n,
            style,
            initrd: true,
            kernel_size: 192 * 1024 + 4096 * ns + 123,
            params: vec!["console=hvc0".into(), format!("gen={n}")],
            specs: Vec::new(),
        });
        self
    }

    /// Add generation `n` of the `nixos-rebuild -p NAME` profile `profile`
    /// (link `system-profiles/NAME-N-link`): like [`Tree::generation`], with
    /// its own toplevel and the extra parameter `profile=NAME`.
    pub fn profile_generation(mut self, profile: &str, n: u64, style: Style) -> Tree {
        self = self.generation(n, style);
        let g = self.last();
        g.profile = Some(profile.to_owned());
        g.params.push(format!("profile={profile}"));
        self
    }

    /// `system-profiles/NAME -> NAME-N-link`.
    pub fn profile_current(mut self, profile: &str, n: u64) -> Tree {
        self.profile_currents.push((profile.to_owned(), n));
        self
    }

    fn last(&mut self) -> &mut GenDef {
        self.gens.last_mut().expect("add a generation first")
    }

    /// The last generation has no initrd.
    pub fn no_initrd(mut self) -> Tree {
        self.last().initrd = false;
        self
    }

    /// The last generation's kernel is `bytes` long.
    pub fn kernel_size(mut self, bytes: usize) -> Tree {
        self.last().kernel_size = bytes;
        self
    }

    /// Replace the last generation's kernel parameters.
    pub fn params(mut self, params: &[&str]) -> Tree {
        self.last().params = params.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Give the last generation a specialisation `name` with `params`.
    pub fn specialisation(mut self, name: &str, params: &[&str]) -> Tree {
        self.last().specs.push(SpecDef {
            name: name.to_owned(),
            params: params.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// `system -> system-N-link`.
    pub fn current(mut self, n: u64) -> Tree {
        self.current = Some(n);
        self
    }

    /// A regular file at guest path `path`.
    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Tree {
        self.files.push((path.to_owned(), bytes.into()));
        self
    }

    /// A symlink at guest path `path` (replacing whatever is there).
    pub fn symlink(mut self, path: &str, target: &str) -> Tree {
        self.links.push((path.to_owned(), target.to_owned()));
        self
    }

    /// Run `f` on the host directory of the tree after everything else is
    /// written (for shapes the builder does not know).
    pub fn with(mut self, f: impl Fn(&Path) + 'static) -> Tree {
        self.hooks.push(Box::new(f));
        self
    }

    /// Reserve `n` extra inodes (for trees with many files).
    pub fn extra_inodes(mut self, n: u64) -> Tree {
        self.inodes += n;
        self
    }

    /// Pass `-O features` to mke2fs (e.g. `^metadata_csum`).
    pub fn mke2fs_features(mut self, features: &str) -> Tree {
        self.mke2fs_features = Some(features.to_owned());
        self
    }

    /// Write the tree under `root`; what each generation of each profile
    /// should boot, by (profile, number).
    pub fn write_all(&self, root: &Path) -> BTreeMap<(Option<String>, u64), Generation> {
        let host = |g: &str| root.join(g.trim_start_matches('/'));
        for d in [PROFILES, "/etc", "/dev", "/nix/store"] {
            fs::create_dir_all(host(d)).unwrap();
        }
        fs::write(host("/etc/hostname"), "guest\n").unwrap();
        let mut out = BTreeMap::new();
        for g in &self.gens {
            let kernel = kernel_of(g.n);
            write_file(
                &host(&kernel),
                &pv_kernel(g.kernel_size, u32::try_from(g.n % (1 << 20)).unwrap()),
            );
            let prof = g.profile.as_deref();
            let mk_entry = |spec: Option<&SpecDef>| -> Entry {
                let name = spec.map(|s| s.name.as_str());
                let initrd = g.initrd.then(|| initrd_of(g.n, name));
                if let Some(i) = &initrd {
                    let salt = name.map_or(0u32, |s| {
                        s.bytes().fold(7, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
                    });
                    let seed = u32::try_from(g.n % (1 << 20)).unwrap() ^ (salt << 8);
                    let len = 96 * 1024 + 1000 * usize::try_from(g.n % 64).unwrap() + 7;
                    write_file(&host(i), &filler(len, seed));
                }
                let mut params = spec.map_or_else(|| g.params.clone(), |s| s.params.clone());
                if g.style == Style::Bootspec {
                    params.push(BOOTSPEC_MARKER.to_owned());
                }
                Entry {
                    profile: g.profile.clone(),
                    n: g.n,
                    spec: name.map(str::to_owned),
                    toplevel: toplevel_in(prof, g.n, name),
                    kernel: kernel.clone(),
                    initrd,
                    params,
                }
            };
            let entry = mk_entry(None);
            let specs: BTreeMap<String, Entry> = g.specs.iter().map(|s| (s.name.clone(), mk_entry(Some(s)))).collect();
            for e in std::iter::once(&entry).chain(specs.values()) {
                write_toplevel(root, e, g.style);
            }
            if !specs.is_empty() {
                let dir = host(&format!("{}/specialisation", entry.toplevel));
                fs::create_dir_all(&dir).unwrap();
                for (name, e) in &specs {
                    symlink(&e.toplevel, dir.join(name)).unwrap();
                }
            }
            if g.style == Style::Bootspec {
                let doc = bootspec_json(&entry, &specs);
                fs::write(host(&format!("{}/boot.json", entry.toplevel)), doc).unwrap();
            }
            let link = host(&link_in(prof, g.n));
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            symlink(&entry.toplevel, &link).unwrap();
            set_link_mtime(&link, mtime_of(g.n));
            out.insert((g.profile.clone(), g.n), Generation { entry, specs });
        }
        if let Some(n) = self.current {
            let link = host(&format!("{PROFILES}/system"));
            symlink(format!("system-{n}-link"), &link).unwrap();
            set_link_mtime(&link, mtime_of(n));
        }
        for (p, n) in &self.profile_currents {
            let link = host(&format!("{SYSTEM_PROFILES}/{p}"));
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            symlink(format!("{p}-{n}-link"), &link).unwrap();
            set_link_mtime(&link, mtime_of(*n));
        }
        for (p, bytes) in &self.files {
            write_file(&host(p), bytes);
        }
        for (p, target) in &self.links {
            let h = host(p);
            fs::create_dir_all(h.parent().unwrap()).unwrap();
            if h.symlink_metadata().is_ok() {
                fs::remove_file(&h).unwrap();
            }
            symlink(target, &h).unwrap();
        }
        for f in &self.hooks {
            f(root);
        }
        out
    }

    /// Write the tree to a new tempdir and build a disk image of `layout`
    /// with an ext4 of `bs` blocks made from it. `None` (after a skip
    /// message) when mke2fs or sfdisk is missing.
    pub fn image(&self, layout: Layout, bs: BlockSize) -> Option<Image> {
        let tools: &[&str] = match layout {
            Layout::Bare => &["mke2fs"],
            _ => &["mke2fs", "sfdisk"],
        };
        if !have(tools) {
            return None;
        }
        let dir = tempdir("nixboot-it.");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let all = self.write_all(&tree);
        let gens = all
            .iter()
            .filter(|((p, _), _)| p.is_none())
            .map(|((_, n), g)| (*n, g.clone()))
            .collect();
        let (bytes, entries) = tree_size(&tree);
        let fs_mib = (bytes * 5 / 4 / (1 << 20) + 6).max(8);
        let inodes = entries + 256 + self.inodes;
        let path = dir.path().join("disk.img");
        let fs_len = fs_mib << 20;
        let opts = Mke2fs {
            bs,
            inodes,
            features: self.mke2fs_features.clone(),
            label: "nixos",
            uuid: "6e697862-6f6f-7400-0000-000000000001",
        };
        let fs_offset = match layout {
            Layout::Bare => {
                create_sparse(&path, fs_len);
                0
            }
            _ => {
                let fs_sectors = fs_len / 512;
                let (script, disk_sectors, target) = match layout {
                    Layout::Mbr => (
                        format!(
                            "label: dos\nlabel-id: 0x6e697862\nstart=2048, size=4096, type=83\nstart=6144, size={fs_sectors}, type=83, bootable\n"
                        ),
                        6144 + fs_sectors + 2048,
                        1,
                    ),
                    Layout::MbrLogical => (
                        format!(
                            "label: dos\nlabel-id: 0x6e697862\nstart=2048, size=2048, type=83\nstart=4096, type=5\nstart=6144, size=2048, type=82\nstart=10240, size={fs_sectors}, type=83\n"
                        ),
                        10240 + fs_sectors + 2048,
                        3,
                    ),
                    Layout::Gpt => (
                        format!(
                            "label: gpt\nlabel-id: 6E697862-6F6F-7400-0000-0000000000A0\n\
                             start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=6E697862-6F6F-7400-0000-0000000000A1\n\
                             start=6144, size={fs_sectors}, type=0FC63DAF-8483-4772-8E79-3D69DE477C4D, uuid=6E697862-6F6F-7400-0000-0000000000A2\n"
                        ),
                        6144 + fs_sectors + 2048,
                        1,
                    ),
                    Layout::NixPartition => (
                        format!(
                            "label: dos\nlabel-id: 0x6e697863\nstart=2048, size=8192, type=83, bootable\nstart=10240, size={fs_sectors}, type=83\n"
                        ),
                        10240 + fs_sectors + 2048,
                        1,
                    ),
                    Layout::Bare => unreachable!(),
                };
                create_sparse(&path, disk_sectors * 512);
                run_tool(
                    "sfdisk",
                    &[OsString::from("-q"), path.clone().into()],
                    Some(script.as_bytes()),
                );
                let parts = sfdisk_parts(&path);
                let (start, size) = parts[target];
                assert_eq!(
                    size, fs_sectors,
                    "sfdisk moved or resized the system partition: {parts:?}"
                );
                if layout == Layout::Mbr {
                    // A /boot-like ext4 without the profile: must be skipped.
                    let decoy = dir.path().join("decoy");
                    fs::create_dir(&decoy).unwrap();
                    fs::write(decoy.join("README"), "not the root filesystem\n").unwrap();
                    let (ds, dn) = parts[0];
                    Mke2fs {
                        bs: BlockSize::K1,
                        inodes: 64,
                        features: None,
                        label: "boot",
                        uuid: "6e697862-6f6f-7400-0000-000000000002",
                    }
                    .run(&path, ds * 512, dn * 512, &decoy);
                }
                if layout == Layout::NixPartition {
                    // The root filesystem: /etc, and /nix an empty mount point.
                    let root = dir.path().join("root");
                    fs::create_dir_all(root.join("nix")).unwrap();
                    fs::create_dir_all(root.join("etc")).unwrap();
                    fs::write(root.join("etc/fstab"), "/dev/xvda2 /nix ext4 defaults 0 2\n").unwrap();
                    let (rs, rn) = parts[0];
                    Mke2fs {
                        bs: BlockSize::K1,
                        inodes: 64,
                        features: None,
                        label: "root",
                        uuid: "6e697862-6f6f-7400-0000-000000000003",
                    }
                    .run(&path, rs * 512, rn * 512, &root);
                }
                start * 512
            }
        };
        // The /nix filesystem holds the tree's nix/ at its own root.
        let fs_tree = match layout {
            Layout::NixPartition => tree.join("nix"),
            _ => tree.clone(),
        };
        opts.run(&path, fs_offset, fs_len, &fs_tree);
        Some(Image {
            path,
            tree,
            gens,
            all,
            fs_offset,
            layout,
            dir,
        })
    }
}

struct Mke2fs {
    bs: BlockSize,
    inodes: u64,
    features: Option<String>,
    label: &'static str,
    uuid: &'static str,
}

impl Mke2fs {
    fn run(&self, img: &Path, offset: u64, len: u64, tree: &Path) {
        let mut a = os(&["-q", "-F", "-t", "ext4", "-b"]);
        a.push(self.bs.bytes().to_string().into());
        a.extend(os(&["-L", self.label, "-U", self.uuid, "-N"]));
        a.push(self.inodes.to_string().into());
        a.push("-E".into());
        a.push(format!("offset={offset},hash_seed=6e697862-6f6f-7400-0000-0000000000ff,nodiscard").into());
        if let Some(f) = &self.features {
            a.push("-O".into());
            a.push(f.into());
        }
        a.push("-d".into());
        a.push(tree.into());
        a.push(img.into());
        a.push(format!("{}k", len / 1024).into());
        run_tool("mke2fs", &a, None);
    }
}

fn write_file(p: &Path, bytes: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

fn set_link_mtime(link: &Path, secs: i64) {
    let t = nix::sys::time::TimeVal::new(secs, 0);
    nix::sys::stat::lutimes(link, &t, &t).unwrap();
}

fn write_toplevel(root: &Path, e: &Entry, style: Style) {
    let host = |g: &str| root.join(g.trim_start_matches('/'));
    let t = host(&e.toplevel);
    fs::create_dir_all(&t).unwrap();
    fs::write(t.join("init"), "#!/bin/sh\necho stage 2\n").unwrap();
    fs::write(t.join("nixos-version"), version_of(e.n)).unwrap();
    let legacy: Vec<&str> = e
        .params
        .iter()
        .map(String::as_str)
        .filter(|p| !(style == Style::Bootspec && *p == BOOTSPEC_MARKER))
        .collect();
    fs::write(t.join("kernel-params"), legacy.join(" ")).unwrap();
    symlink(&e.kernel, t.join("kernel")).unwrap();
    if let Some(i) = &e.initrd {
        symlink(i, t.join("initrd")).unwrap();
    }
}

fn bootspec_v1(e: &Entry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "init": format!("{}/init", e.toplevel),
        "kernel": e.kernel,
        "kernelParams": e.params,
        "label": format!("NixOS {} (Linux 6.6.{})", version_of(e.n), e.n),
        "system": "x86_64-linux",
        "toplevel": e.toplevel,
    });
    if let Some(i) = &e.initrd {
        v["initrd"] = i.clone().into();
    }
    v
}

fn bootspec_json(e: &Entry, specs: &BTreeMap<String, Entry>) -> String {
    let s: serde_json::Map<String, serde_json::Value> = specs
        .iter()
        .map(|(name, se)| {
            (
                name.clone(),
                serde_json::json!({
                    "org.nixos.bootspec.v1": bootspec_v1(se),
                    "org.nixos.specialisation.v1": {},
                }),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "org.nixos.bootspec.v1": bootspec_v1(e),
        "org.nixos.specialisation.v1": s,
        "org.nixos.systemd-boot": {"sortKey": "nixos"},
    });
    serde_json::to_string_pretty(&doc).unwrap()
}

fn tree_size(root: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut entries = 0;
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            entries += 1;
            if m.is_dir() {
                todo.push(e.path());
                bytes += 4096;
            } else if m.is_file() {
                // Allocated size: sparse files cost only their data.
                bytes += m.blocks() * 512 + 4096;
            } else if m.is_symlink() && m.len() >= 60 {
                // A slow symlink: one block for its target.
                bytes += 4096;
            }
        }
    }
    (bytes, entries)
}

fn create_sparse(p: &Path, len: u64) {
    fs::File::create(p).unwrap().set_len(len).unwrap();
}

/// (start, size) in sectors of each partition, as `sfdisk --json` reads
/// the table back.
pub fn sfdisk_parts(img: &Path) -> Vec<(u64, u64)> {
    let out = run_tool("sfdisk", &[OsString::from("--json"), img.into()], None);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect()
}

/// What one generation should boot.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generation itself.
    pub entry: Entry,
    /// Its specialisations.
    pub specs: BTreeMap<String, Entry>,
}

/// A disk image built from a [`Tree`], with the tree kept for comparison.
pub struct Image {
    /// The image file.
    pub path: PathBuf,
    /// The host directory the filesystem was made from.
    pub tree: PathBuf,
    /// What each generation should boot.
    pub gens: BTreeMap<u64, Generation>,
    /// What each generation of each profile should boot.
    pub all: BTreeMap<(Option<String>, u64), Generation>,
    /// Byte offset of the ext4 filesystem on the disk.
    pub fs_offset: u64,
    /// The layout.
    pub layout: Layout,
    dir: tempfile::TempDir,
}

impl Image {
    /// Generation `n`'s own entry.
    pub fn entry(&self, n: u64) -> &Entry {
        &self.gens[&n].entry
    }

    /// Generation `n` of profile `profile`.
    pub fn profile_entry(&self, profile: &str, n: u64) -> &Entry {
        &self.all[&(Some(profile.to_owned()), n)].entry
    }

    /// Generation `n`'s specialisation `name` of profile `profile`.
    pub fn profile_spec(&self, profile: &str, n: u64, name: &str) -> &Entry {
        &self.all[&(Some(profile.to_owned()), n)].specs[name]
    }

    /// Generation `n`'s specialisation `name`.
    pub fn spec(&self, n: u64, name: &str) -> &Entry {
        &self.gens[&n].specs[name]
    }

    /// The host copy of guest file `guest` (from the tree).
    pub fn host(&self, guest: &str) -> PathBuf {
        self.tree.join(guest.trim_start_matches('/'))
    }

    /// The bytes of guest file `guest`, as written into the tree.
    pub fn guest_bytes(&self, guest: &str) -> Vec<u8> {
        fs::read(self.host(guest)).unwrap_or_else(|e| panic!("{guest}: {e}"))
    }

    /// A scratch path next to the image.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `debugfs -w -R cmd` on the filesystem (bare images only, or
    /// `None` after a skip when debugfs is missing).
    pub fn debugfs(&self, cmd: &str) -> Option<()> {
        self.debugfs_script(&[cmd])
    }

    /// Run several debugfs requests in one session (`-f`), e.g. `cd /dev`
    /// then `mknod xvda b 202 0` (debugfs's mknod takes a plain name).
    pub fn debugfs_script(&self, cmds: &[&str]) -> Option<()> {
        assert_eq!(self.layout, Layout::Bare, "debugfs edits need a bare image");
        if !have(&["debugfs"]) {
            return None;
        }
        let script = self.scratch("debugfs.cmds");
        fs::write(&script, cmds.join("\n") + "\n").unwrap();
        let cmd = cmds.join("; ");
        let a = vec![
            OsString::from("-w"),
            "-f".into(),
            script.into(),
            self.path.clone().into(),
        ];
        let path = tool("debugfs").unwrap();
        let out = Command::new(path)
            .args(&a)
            .env("E2FSPROGS_FAKE_TIME", FAKE_TIME.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 even when the request fails; its banner goes to
        // stderr, anything else there is an error.
        let real: Vec<&str> = err.lines().filter(|l| !l.starts_with("debugfs ")).collect();
        assert!(out.status.success() && real.is_empty(), "debugfs {cmd:?}: {err}");
        Some(())
    }

    /// Overwrite bytes at absolute disk offset `at`.
    pub fn patch(&self, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&self.path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    /// Read bytes at absolute disk offset `at`.
    pub fn read(&self, at: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0; len];
        fs::File::open(&self.path).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    }

    /// Content fingerprint of the disk image (see [`fingerprint`]).
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.path)
    }
}

/// Length, mtime and a SHA-256 over the non-zero blocks of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    sha256: Vec<u8>,
}

/// Fingerprint `path`: its length, its mtime, and a SHA-256 over the
/// offset and bytes of every 4 KiB block that is not all zeros. Only data
/// extents are read (`SEEK_DATA`/`SEEK_HOLE`), so a sparse multi-GiB image
/// hashes in the time its data takes, and the hash does not depend on how
/// the host filesystem happens to allocate zeros. Any write changes it.
pub fn fingerprint(path: &Path) -> Fingerprint {
    use nix::unistd::{Whence, lseek};
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 4096;
    let f = fs::File::open(path).unwrap();
    let m = f.metadata().unwrap();
    let len = m.len();
    let mut h = Sha256::new();
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    let zero = [0u8; 4096];
    while pos < len {
        let Ok(data) = lseek(&f, i64::try_from(pos).unwrap(), Whence::SeekData) else {
            break;
        };
        let data = u64::try_from(data).unwrap() / BLOCK * BLOCK;
        let hole = u64::try_from(lseek(&f, i64::try_from(data).unwrap(), Whence::SeekHole).unwrap()).unwrap();
        let mut at = data;
        while at < hole {
            let n = usize::try_from((hole - at).min(buf.len() as u64)).unwrap();
            f.read_exact_at(&mut buf[..n], at).unwrap();
            for (i, block) in buf[..n].chunks(4096).enumerate() {
                if block != &zero[..block.len()] {
                    h.update((at + i as u64 * BLOCK).to_le_bytes());
                    h.update(block);
                }
            }
            at += n as u64;
        }
        pos = hole.max(data + 1);
    }
    Fingerprint {
        len,
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        sha256: h.finalize().to_vec(),
    }
}

// ---------------------------------------------------------------------------
// Running nixboot under a pty

/// What one run produced.
pub struct Ran {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything written to the pty (stdout and stderr), `\r\n` → `\n`.
    pub console: String,
    /// The raw bytes from the pty.
    pub raw: Vec<u8>,
    /// Wall-clock time until exit.
    pub elapsed: Duration,
    /// Whether the deadline killed it.
    pub timed_out: bool,
    /// The pty stayed open after the process exited (a leftover process).
    pub lingering: bool,
    /// The argv used (for messages).
    pub argv: Vec<OsString>,
    /// The `--output` file and `--output-directory`, when run as libxl.
    pub out_file: Option<PathBuf>,
    /// See `out_file`.
    pub out_dir: Option<PathBuf>,
    scratch: Option<std::sync::Arc<tempfile::TempDir>>,
}

/// Run `program args` on a fresh pty: the pty slave is stdin, stdout and
/// stderr and the controlling terminal of a new session; environment
/// cleared except `PATH`, `TERM=vt100`, `LC_ALL=C`; killed (with its
/// process group) after `timeout`.
pub fn run_pty(program: &Path, args: &[OsString], timeout: Duration) -> Ran {
    run_pty_typing(program, args, timeout, &[])
}

/// [`run_pty`], typing `keys` into the terminal: each entry is written once
/// the console shows its text (or after 10 s if it never does).
pub fn run_pty_typing(program: &Path, args: &[OsString], timeout: Duration, keys: &[(&str, &[u8])]) -> Ran {
    let (pty, pts) = pty_process::blocking::open().expect("openpty");
    let pty = std::sync::Arc::new(pty);
    let cmd = pty_process::blocking::Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("TERM", "vt100")
        .env("LC_ALL", "C");
    let start = Instant::now();
    let mut child = cmd.spawn(pts).expect("spawn under pty");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let reader = pty.clone();
    let seen_r = seen.clone();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match (&*reader).read(&mut buf) {
                Ok(0) | Err(_) => break, // EIO: every slave descriptor closed
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    seen_r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        }
        let _ = tx.send(all);
    });
    let keys: Vec<(String, Vec<u8>)> = keys.iter().map(|(w, k)| ((*w).to_owned(), k.to_vec())).collect();
    let writer = pty.clone();
    std::thread::spawn(move || {
        for (wait_for, bytes) in keys {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
                if text.contains(&wait_for) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = (&*writer).write_all(&bytes);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let (raw, lingering) = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => (r, false),
        Err(_) => {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            (rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default(), true)
        }
    };
    let console = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
    Ran {
        status,
        console,
        raw,
        elapsed,
        timed_out,
        lingering,
        argv: args.to_vec(),
        out_file: None,
        out_dir: None,
        scratch: None,
    }
}

/// One libxl-style invocation of nixboot.
#[derive(Default, Clone)]
pub struct Libxl {
    kernel: Option<String>,
    ramdisk: Option<String>,
    args: Option<String>,
    runas: Option<u32>,
    bootloader_args: Vec<String>,
    address_space: Option<u64>,
    menu: bool,
    keys: Vec<(String, Vec<u8>)>,
}

impl Libxl {
    /// `kernel=` in the domain config (`--kernel=`).
    pub fn kernel(mut self, p: &str) -> Self {
        self.kernel = Some(p.to_owned());
        self
    }
    /// `ramdisk=` (`--ramdisk=`).
    pub fn ramdisk(mut self, p: &str) -> Self {
        self.ramdisk = Some(p.to_owned());
        self
    }
    /// `extra=`/`cmdline=` (`--args=`).
    pub fn args(mut self, a: &str) -> Self {
        self.args = Some(a.to_owned());
        self
    }
    /// Restricted mode (`--runas=UID --quiet`).
    pub fn runas(mut self, uid: u32) -> Self {
        self.runas = Some(uid);
        self
    }
    /// `bootloader_args=[…]`, placed before the disk.
    pub fn bootloader_args(mut self, a: &[&str]) -> Self {
        self.bootloader_args = a.iter().map(|s| (*s).to_owned()).collect();
        self
    }
    /// Leave the console menu on (its 5 s countdown). Without this the
    /// harness passes `--timeout=0` first among the bootloader_args, as an
    /// admin who wants no menu would; later bootloader_args override it.
    pub fn menu(mut self) -> Self {
        self.menu = true;
        self
    }
    /// Type `keys` into the console once it shows `wait_for`.
    pub fn type_after(mut self, wait_for: &str, keys: &[u8]) -> Self {
        self.menu = true;
        self.keys.push((wait_for.to_owned(), keys.to_vec()));
        self
    }
    /// Run through `prlimit --as=BYTES` (address-space cap on the whole
    /// process tree).
    pub fn address_space(mut self, bytes: u64) -> Self {
        self.address_space = Some(bytes);
        self
    }

    /// The argv libxl builds (`make_bootloader_args`), without argv[0].
    pub fn argv(&self, out: &Path, dir: &Path, disk: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(k) = &self.kernel {
            a.push(format!("--kernel={k}").into());
        }
        if let Some(r) = &self.ramdisk {
            a.push(format!("--ramdisk={r}").into());
        }
        if let Some(x) = self.args.as_ref().filter(|x| !x.is_empty()) {
            a.push(format!("--args={x}").into());
        }
        if let Some(u) = self.runas {
            a.push(format!("--runas={u}").into());
            a.push("--quiet".into());
        }
        let mut o = OsString::from("--output=");
        o.push(out);
        a.push(o);
        a.push("--output-format=simple0".into());
        let mut d = OsString::from("--output-directory=");
        d.push(dir);
        a.push(d);
        if !self.menu {
            a.push("--timeout=0".into());
        }
        a.extend(self.bootloader_args.iter().map(OsString::from));
        a.push(disk.into());
        a
    }

    /// Run nixboot on `disk` as libxl would: fresh `bootloader.<domid>.out`
    /// (empty, 0600) and `bootloader.<domid>.d` (0600) in a scratch dir.
    pub fn run(&self, disk: &Path) -> Ran {
        let scratch = tempdir("nixboot-xl.");
        let out = scratch.path().join("bootloader.7.out");
        let dir = scratch.path().join("bootloader.7.d");
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&out)
            .unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o600)).unwrap();
        let argv = self.argv(&out, &dir, disk);
        let timeout = RUN_TIMEOUT;
        let keys: Vec<(&str, &[u8])> = self.keys.iter().map(|(w, k)| (w.as_str(), k.as_slice())).collect();
        let mut ran = match self.address_space {
            None => run_pty_typing(Path::new(NIXBOOT), &argv, timeout, &keys),
            Some(bytes) => {
                let prlimit = tool("prlimit").expect("prlimit (check with have() first)");
                let mut a = vec![OsString::from(format!("--as={bytes}")), "--".into(), NIXBOOT.into()];
                a.extend(argv);
                run_pty(&prlimit, &a, timeout)
            }
        };
        ran.out_file = Some(out);
        ran.out_dir = Some(dir);
        ran.scratch = Some(std::sync::Arc::new(scratch));
        ran
    }
}

/// The common case: libxl's plain argv.
pub fn libxl() -> Libxl {
    Libxl::default()
}

/// Run `nixboot args…` (not as libxl) under a pty.
pub fn nixboot(args: &[&str]) -> Ran {
    run_pty(Path::new(NIXBOOT), &os(args), RUN_TIMEOUT)
}

/// What libxl's `parse_bootloader_result` makes of a result file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibxlResult {
    /// `kernel` value.
    pub kernel: Option<Vec<u8>>,
    /// `ramdisk` value.
    pub ramdisk: Option<Vec<u8>>,
    /// `args` value.
    pub args: Option<Vec<u8>>,
    /// Items dropped for length (≥ 8192 bytes).
    pub too_long: usize,
    /// Items that matched no key ("unexpected output from bootloader").
    pub unexpected: usize,
}

/// libxl's rules (libxl_bootloader.c `parse_bootloader_result`): split on
/// NUL (data after the last NUL is an item too); skip empty items; drop
/// items of ≥ 8192 bytes; an item matches key K if it starts with K and the
/// next byte is `isspace()`; further leading whitespace is skipped and the
/// rest is the value; unknown items are ignored; later keys override.
pub fn parse_libxl_result(buf: &[u8]) -> LibxlResult {
    let isspace = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut r = LibxlResult::default();
    for item in buf.split(|b| *b == 0) {
        if item.is_empty() {
            continue;
        }
        if item.len() >= 8192 {
            r.too_long += 1;
            continue;
        }
        let mut matched = false;
        for key in ["kernel", "ramdisk", "args"] {
            let k = key.as_bytes();
            if item.starts_with(k) && item.get(k.len()).copied().is_some_and(isspace) {
                let mut v = &item[k.len()..];
                while let Some((&c, rest)) = v.split_first() {
                    if !isspace(c) {
                        break;
                    }
                    v = rest;
                }
                let slot = match key {
                    "kernel" => &mut r.kernel,
                    "ramdisk" => &mut r.ramdisk,
                    _ => &mut r.args,
                };
                *slot = Some(v.to_vec());
                matched = true;
                break;
            }
        }
        if !matched {
            r.unexpected += 1;
        }
    }
    r
}

/// A successful boot, as libxl saw it.
#[derive(Debug)]
pub struct Booted {
    /// dom0 path of the kernel copy.
    pub kernel: PathBuf,
    /// dom0 path of the ramdisk copy.
    pub ramdisk: Option<PathBuf>,
    /// The command line (`None`: no args item).
    pub args: Option<String>,
    _scratch: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Booted {
    /// The kernel copy holds exactly `want`.
    pub fn assert_kernel(&self, want: &[u8]) {
        let got = fs::read(&self.kernel).unwrap();
        assert!(
            got == want,
            "kernel copy differs: {} vs {} bytes",
            got.len(),
            want.len()
        );
    }
    /// The ramdisk copy holds exactly `want`.
    pub fn assert_ramdisk(&self, want: &[u8]) {
        let p = self.ramdisk.as_ref().expect("no ramdisk item");
        let got = fs::read(p).unwrap();
        assert!(
            got == want,
            "ramdisk copy differs: {} vs {} bytes",
            got.len(),
            want.len()
        );
    }
    /// Ramdisk and command line are those of `e` (the kernel is checked
    /// by the caller).
    pub fn assert_entry_but_kernel(&self, img: &Image, e: &Entry) {
        match &e.initrd {
            Some(i) => self.assert_ramdisk(&img.guest_bytes(i)),
            None => assert!(self.ramdisk.is_none(), "unexpected ramdisk item {:?}", self.ramdisk),
        }
        assert_eq!(self.args.as_deref(), Some(e.cmdline(None).as_str()));
    }

    /// Kernel, ramdisk and command line are those of `e` (+ `extra`).
    pub fn assert_entry(&self, img: &Image, e: &Entry, extra: Option<&str>) {
        self.assert_kernel(&img.guest_bytes(&e.kernel));
        match &e.initrd {
            Some(i) => self.assert_ramdisk(&img.guest_bytes(i)),
            None => assert!(self.ramdisk.is_none(), "unexpected ramdisk item {:?}", self.ramdisk),
        }
        assert_eq!(self.args.as_deref(), Some(e.cmdline(extra).as_str()));
    }
}

/// The fault prefixes of nixboot's one error line.
pub const GUEST: &str = "guest disk";
/// dom0 is at fault.
pub const DOM0: &str = "dom0";
/// The argv is at fault.
pub const USAGE: &str = "usage";

impl Ran {
    fn what(&self) -> String {
        format!(
            "argv {:?}\nstatus {:?} after {:?}{}\nconsole:\n{}",
            self.argv,
            self.status,
            self.elapsed,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.console
        )
    }

    /// It ended by itself, without a signal, and left nothing running.
    pub fn assert_ended_cleanly(&self) {
        use std::os::unix::process::ExitStatusExt;
        assert!(!self.timed_out, "timed out: {}", self.what());
        assert!(self.status.signal().is_none(), "killed by a signal: {}", self.what());
        assert!(
            !self.lingering,
            "a process kept the pty open after exit: {}",
            self.what()
        );
    }

    /// The `nixboot: error: ` lines on the console.
    pub fn error_lines(&self) -> Vec<&str> {
        self.console
            .lines()
            .filter(|l| l.starts_with("nixboot: error: "))
            .collect()
    }

    /// Exit 0 and a result libxl accepts: a kernel (and ramdisk) inside the
    /// output directory, private, named like pygrub's, and nothing else in
    /// the directory.
    pub fn expect_boot(&self) -> Booted {
        self.assert_ended_cleanly();
        assert_eq!(self.status.code(), Some(0), "{}", self.what());
        assert!(self.error_lines().is_empty(), "{}", self.what());
        let out = self.out_file.as_ref().expect("not run as libxl");
        let dir = self.out_dir.as_ref().unwrap();
        let r = parse_libxl_result(&fs::read(out).unwrap());
        assert_eq!((r.too_long, r.unexpected), (0, 0), "libxl would warn: {r:?}");
        let inside = |v: &Vec<u8>, prefix: &str| -> PathBuf {
            let p = PathBuf::from(String::from_utf8(v.clone()).unwrap());
            assert_eq!(
                p.parent(),
                Some(dir.as_path()),
                "{} outside the output directory",
                p.display()
            );
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(prefix) && name.len() == prefix.len() + 8,
                "{name} is not {prefix}XXXXXXXX"
            );
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file(), "{} is not a regular file", p.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
            p
        };
        let kernel = inside(r.kernel.as_ref().expect("no kernel item"), "boot_kernel.");
        let ramdisk = r.ramdisk.as_ref().map(|v| inside(v, "boot_ramdisk."));
        let mut want: Vec<PathBuf> = std::iter::once(kernel.clone()).chain(ramdisk.clone()).collect();
        want.sort();
        assert_eq!(dir_entries(dir), want, "output directory holds other files");
        Booted {
            kernel,
            ramdisk,
            args: r.args.map(|a| String::from_utf8(a).unwrap()),
            _scratch: self.scratch.clone(),
        }
    }

    /// Exit `code` with exactly one error line `nixboot: error: <fault>: …`
    /// containing each of `parts`; the result file untouched (empty) and
    /// the output directory empty. Returns the error line.
    pub fn expect_error(&self, code: i32, fault: &str, parts: &[&str]) -> String {
        self.assert_ended_cleanly();
        assert_eq!(self.status.code(), Some(code), "{}", self.what());
        let errs = self.error_lines();
        assert_eq!(errs.len(), 1, "want exactly one error line: {}", self.what());
        let line = errs[0];
        let prefix = format!("nixboot: error: {fault}: ");
        assert!(line.starts_with(&prefix), "want {prefix:?}: {}", self.what());
        for p in parts {
            assert!(line.contains(p), "error line lacks {p:?}: {}", self.what());
        }
        assert_eq!(
            self.console.trim_end().lines().last(),
            Some(line),
            "the error is not the last line: {}",
            self.what()
        );
        if let Some(out) = &self.out_file {
            assert_eq!(fs::read(out).unwrap(), b"", "result file written on failure");
        }
        if let Some(dir) = &self.out_dir {
            assert_eq!(
                dir_entries(dir),
                Vec::<PathBuf>::new(),
                "files left in the output directory"
            );
        }
        line.to_owned()
    }

    /// A guest-disk failure (exit 1).
    pub fn expect_guest_error(&self, parts: &[&str]) -> String {
        self.expect_error(1, GUEST, parts)
    }

    /// A usage error: exit 2 and the whole console is that one line.
    pub fn expect_usage(&self, parts: &[&str]) -> String {
        let line = self.expect_error(2, USAGE, parts);
        assert_eq!(self.console.trim_end(), line, "usage errors print one line only");
        line
    }
}

/// Sorted paths in `dir`.
pub fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Assert `text` has no byte that could drive a terminal (ESC) or
/// inject a result item (NUL).
pub fn assert_console_safe(ran: &Ran) {
    assert!(
        !ran.raw.iter().any(|b| *b == 0x1b || *b == 0),
        "raw control bytes on the console: {}",
        ran.console
    );
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn libxl_parser_rules() {
        let r = parse_libxl_result(b"kernel /a\0ramdisk\t \t/b\0args \0bogus\0argsx y\0kernel /c\0\0");
        assert_eq!(r.kernel.as_deref(), Some(&b"/c"[..]));
        assert_eq!(r.ramdisk.as_deref(), Some(&b"/b"[..]));
        assert_eq!(r.args.as_deref(), Some(&b""[..]));
        assert_eq!(r.unexpected, 2);
        let mut long = b"args ".to_vec();
        long.resize(8192, b'a');
        long.extend_from_slice(b"\0kernel /k\nramdisk /x");
        let r = parse_libxl_result(&long);
        assert_eq!((r.too_long, r.args), (1, None));
        // The simple (newline) format is one item to libxl.
        assert_eq!(r.kernel.as_deref(), Some(&b"/k\nramdisk /x"[..]));
    }

    #[test]
    fn pv_kernel_shape() {
        let k = pv_kernel(70_000, 3);
        assert_eq!(k.len(), 70_000);
        assert_eq!(&k[..4], b"\x7fELF");
        assert_eq!(k[4], 2); // ELFCLASS64
        assert_eq!(u16::from_le_bytes([k[18], k[19]]), 62); // x86-64
        assert!(k.windows(8).any(|w| w == b"xen-3.0\0"));
        assert_ne!(pv_kernel(70_000, 4), k);
        assert_eq!(pv_kernel(70_000, 3), k);
    }

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "2023-11-14");
        assert_eq!(date_of(48), "2024-01-01");
    }
}
