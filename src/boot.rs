//! The guest-side pipeline: disk → partitions → guest filesystem → NixOS
//! generation → command line → kernel and initrd bytes. Guest data.
//!
//! Everything here runs inside the confined parse child (see
//! [`crate::sandbox`]) and talks to the parent only through
//! [`crate::ipc`] frames; it reads the disk through a [`BlockSource`] and
//! never touches the host filesystem, so it also runs in-process on bytes
//! for tests and fuzzing.

use std::io::{Read, Write};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::cmdline;
use crate::disk::BlockSource;
use crate::error::{Error, GuestError, escape};
use crate::fs::{self, FsError, GuestFile, GuestFs, Mount};
use crate::ipc::{self, EntryRef, Listed, Listing, Plan, Tag};
use crate::kernel::{self, XenMode};
use crate::nixos::installed::{self, GuestTimeout, INSTALLED_FILE, Installed};
use crate::nixos::{self, BootEntry, NixosError, SYSTEM_PROFILE, profile_title, select};
use crate::part;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// The current generation.
    Default,
    /// `--entry=…`.
    Entry(String),
    /// `--profile=NAME [--entry=…]`: an entry of a `nixos-rebuild -p`
    /// profile, or (`entry: None`) its current generation.
    ProfileEntry {
        /// The profile's name (`system`: the system profile).
        profile: String,
        /// The `--entry` value, if any.
        entry: Option<String>,
    },
    /// `--kernel=P [--ramdisk=P]`: exactly these guest files, with `--args`.
    Paths {
        /// Guest path of the kernel.
        kernel: String,
        /// Guest path of the ramdisk.
        ramdisk: Option<String>,
    },
}

/// What the child is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Choose an entry and send the plan (and, unless `send_data` is off,
    /// the kernel and initrd).
    Boot,
    /// List every generation.
    List,
}

/// The parse request the parent hands to the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Boot or list.
    pub mode: Mode,
    /// Forced filesystem offset (`--offset`).
    pub offset: Option<u64>,
    /// What to boot.
    pub selection: Selection,
    /// The admin's `--args`.
    pub args: Option<String>,
    /// Kernel size cap.
    pub max_kernel: u64,
    /// Initrd size cap.
    pub max_initrd: u64,
    /// Send file data (off for `--not-really`).
    pub send_data: bool,
    /// Keys of kernels already known to be Xen PV kernels (see
    /// [`kernel_key`]); at most [`crate::limits::MAX_KNOWN_KERNELS`].
    #[serde(default)]
    pub known_pv: Vec<String>,
    /// A command line edited at the console menu, replacing the entry's.
    #[serde(default)]
    pub cmdline_override: Option<String>,
    /// `--domain-type`: the kernel must boot in this mode (`None`: either).
    #[serde(default)]
    pub domain_type: Option<XenMode>,
    /// `--unpack-kernel`: send the kernel's decompressed ELF instead of the
    /// file.
    #[serde(default)]
    pub unpack_kernel: bool,
}

/// Where the guest's NixOS store lives, relative to the root of a
/// filesystem that is the guest's `/nix`.
const NIX_FS_MARKERS: [&str; 2] = ["/nix/var/nix/profiles/system", "/nix/store"];

/// Find the filesystem to boot: the first filesystem (in partition order;
/// every tree a partition holds, e.g. each btrfs subvolume) that holds
/// `want` — the NixOS system profile, or with `--kernel` that path. A
/// filesystem whose own root holds `var/nix/profiles/system` and `store/`
/// is the guest's `/nix` (impermanence, tmpfs roots): guest paths under
/// `/nix` map into it. Returns the view and where it was found, for the
/// console.
pub fn open_system(src: Rc<dyn BlockSource>, offset: Option<u64>, want: &[u8]) -> Result<(GuestFs, String), Error> {
    let scan = part::scan(src.as_ref(), offset)?;
    let mut tried = Vec::new();
    for c in scan.candidates {
        let Some(window) = c.window(src.clone()) else {
            continue;
        };
        let trees = match fs::probe(window) {
            Ok(t) => t,
            Err(FsError::NotAFilesystem) => {
                tried.push(format!("{c}: no ext4 or btrfs filesystem"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{c}: {e}"));
                continue;
            }
        };
        for tree in trees {
            // "MBR partition 2 (…)", plus the tree when it is not the
            // partition's only filesystem ("btrfs subvolume @nix (id 257)").
            let place = match tree.kind() {
                "ext4" => c.to_string(),
                _ => format!("{c}, {}", tree.describe()),
            };
            let root = GuestFs::new(tree.clone(), Mount::Root);
            match root.exists(want) {
                Ok(true) => {
                    log::debug!("using the {} in {c}", root.describe());
                    return Ok((root, place));
                }
                Ok(false) => {}
                Err(e) => {
                    tried.push(format!("{c}: {}: {e}", root.describe()));
                    continue;
                }
            }
            let nix = GuestFs::new(tree, Mount::Nix);
            let is_nix =
                want.starts_with(b"/nix/") && NIX_FS_MARKERS.iter().all(|m| nix.exists(m.as_bytes()).unwrap_or(false));
            if is_nix && nix.exists(want).unwrap_or(false) {
                log::debug!("using the {} in {c}", nix.describe());
                return Ok((nix, format!("{place}, the guest's /nix")));
            }
            tried.push(format!("{c}: {} without {}", root.describe(), escape(want)));
        }
    }
    // LVM volumes that could not be read: named after what was tried.
    tried.extend(scan.unusable.iter().map(ToString::to_string));
    let detail = if tried.is_empty() {
        "no partitions and no filesystem found".to_owned()
    } else {
        tried.join("; ")
    };
    Err(Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
        "no filesystem holding {} ({detail})",
        escape(want)
    )))))
}

/// What the bootable check found out about an entry's kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Kernel size.
    pub kernel_len: u64,
    /// Initrd size, if there is one.
    pub initrd_len: Option<u64>,
    /// Cache key of the kernel (see [`kernel_key`]).
    pub key: String,
    /// Whether the PV check decompressed the kernel in this run (so the
    /// parent may remember the key).
    pub verified_now: bool,
    /// The modes the kernel boots in (empty: not checked, LZO).
    pub modes: Vec<XenMode>,
}

/// The cache key recording that the kernel with key `key` boots in `mode`
/// (SHA-256 of both). Keys from before PVH was checked are plain kernel
/// keys and match no mode key, so such kernels are checked once more.
pub fn mode_key(key: &str, mode: XenMode) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update(b"/");
    h.update(mode.name().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A cheap identity for a kernel file: SHA-256 over its guest path, its
/// size and its first and last 64 KiB. Used only to skip re-checking a
/// kernel already found PV-bootable; a forged match can only make nixboot
/// skip its own check, never refuse a good kernel.
pub fn kernel_key(fs: &GuestFs, path: &str, len: u64) -> Result<String, FsError> {
    use sha2::Digest;
    const SAMPLE: u64 = 64 * 1024;
    let mut h = sha2::Sha256::new();
    h.update(path.as_bytes());
    h.update(len.to_le_bytes());
    let (_, mut f, _) = fs.open_regular(path.as_bytes(), u64::MAX)?;
    let io = |e: std::io::Error| FsError::Io {
        path: escape(path.as_bytes()),
        source: e,
    };
    let mut buf = Vec::new();
    (&mut f).take(SAMPLE).read_to_end(&mut buf).map_err(io)?;
    if len > SAMPLE {
        f.seek_to(len.saturating_sub(SAMPLE)).map_err(io)?;
        f.take(SAMPLE).read_to_end(&mut buf).map_err(io)?;
    }
    h.update(&buf);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `kernel "/p" is N bytes, over the C-byte limit` / `kernel: "/p" does not exist`.
fn file_problem(what: &str, e: FsError) -> String {
    match e {
        FsError::TooLarge { path, len, cap } => format!("{what} {path} is {len} bytes, over the {cap}-byte limit"),
        e => format!("{what}: {e}"),
    }
}

/// Is `entry` bootable: kernel and initrd regular files within the caps,
/// and the kernel a Xen PV kernel? `Err` is the reason, for the console.
pub fn bootable(fs: &GuestFs, kernel: &str, initrd: Option<&str>, req: &Request) -> Result<Checked, String> {
    let ek = |e: FsError| file_problem("kernel", e);
    let (_, file, kernel_len) = fs.open_regular(kernel.as_bytes(), req.max_kernel).map_err(ek)?;
    let initrd_len = match initrd {
        Some(p) => {
            let (_, _, len) = fs
                .open_regular(p.as_bytes(), req.max_initrd)
                .map_err(|e| file_problem("initrd", e))?;
            Some(len)
        }
        None => None,
    };
    let key = kernel_key(fs, kernel, kernel_len).map_err(ek)?;
    let known: Vec<XenMode> = XenMode::ALL
        .into_iter()
        .filter(|m| req.known_pv.contains(&mode_key(&key, *m)))
        .collect();
    if !known.is_empty() && req.domain_type.is_none_or(|t| known.contains(&t)) {
        log::debug!(
            "kernel {} already known to boot as Xen {}",
            escape(kernel.as_bytes()),
            modes_text(&known)
        );
        return Ok(Checked {
            kernel_len,
            initrd_len,
            key,
            verified_now: false,
            modes: known,
        });
    }
    let reopen = |off: u64| -> std::io::Result<GuestFile<'_>> {
        let (_, mut f, _) = fs
            .open_regular(kernel.as_bytes(), req.max_kernel)
            .map_err(std::io::Error::other)?;
        f.seek_to(off)?;
        Ok(f)
    };
    let refused = |e: kernel::KernelError| format!("kernel {} {e}", escape(kernel.as_bytes()));
    match kernel::check(file, kernel_len, reopen) {
        Ok(kernel::Verdict::Xen(modes)) => {
            kernel::fits(&modes, req.domain_type).map_err(refused)?;
            Ok(Checked {
                kernel_len,
                initrd_len,
                key,
                verified_now: true,
                modes,
            })
        }
        Ok(kernel::Verdict::Unverified(why)) => {
            log::warn!("kernel {}: {why}", escape(kernel.as_bytes()));
            Ok(Checked {
                kernel_len,
                initrd_len,
                key,
                verified_now: false,
                modes: Vec::new(),
            })
        }
        Err(e) => Err(refused(e)),
    }
}

/// `pv and pvh`, `pv`, or `(not checked)` for the log.
pub fn modes_text(modes: &[XenMode]) -> String {
    match modes {
        [] => "(not checked)".to_owned(),
        m => m.iter().map(|m| m.name()).collect::<Vec<_>>().join(" and "),
    }
}

/// Warn about an initrd secrets appender nobody will run: only a
/// generation built without `xen/nix/guest.nix` keeps one (see
/// [`nixos::bootspec::GUEST_EXTENSION`]); with the module NixOS already put
/// the secrets into the initrd.
fn secrets_warning(entry: &BootEntry) {
    if let Some(s) = &entry.initrd_secrets {
        log::warn!(
            "this generation names an initrd secrets appender ({}) and was not built with nixboot's guest module (xen/nix/guest.nix); a dom0 loader cannot run the appender, so the initrd boots without those secrets",
            escape(s.as_bytes())
        );
    }
}

/// What a boot without `--entry` starts from, before the bootable check.
#[derive(Clone, Debug)]
pub struct DefaultPick {
    /// The generation holding the entry.
    pub generation: nixos::Generation,
    /// The entry: the generation itself or one of its specialisations.
    pub entry: BootEntry,
    /// Why it, for the log.
    pub reason: String,
}

impl DefaultPick {
    /// The entry by name.
    pub fn entry_ref(&self) -> EntryRef {
        EntryRef {
            profile: self.generation.profile.clone(),
            number: self.generation.number,
            specialisation: self.entry.specialisation.clone(),
        }
    }
}

/// Read the installed-default file; a bad one is logged (at warning level
/// when `loud`) and ignored.
pub fn read_installed(fs: &GuestFs, loud: bool) -> Option<Installed> {
    match installed::read(fs) {
        Ok(Some(i)) => {
            log::debug!("{INSTALLED_FILE}: default {}", escape(i.default.as_bytes()));
            Some(i)
        }
        Ok(None) => {
            log::debug!("no {INSTALLED_FILE} (the guest does not use xen/nix/guest.nix)");
            None
        }
        Err(e) => {
            let msg = format!("ignoring {INSTALLED_FILE}: {e}; following the system profile");
            if loud {
                log::warn!("{msg}");
            } else {
                log::debug!("{msg}");
            }
            None
        }
    }
}

/// The default entry: the installed default when the guest recorded a
/// valid one that names a generation of the profile (or a specialisation
/// of one), else the profile's current generation.
pub fn pick_default(fs: &GuestFs, installed: Option<&Installed>, loud: bool) -> Result<DefaultPick, Error> {
    let say = |msg: String| {
        if loud {
            log::warn!("{msg}");
        } else {
            log::debug!("{msg}");
        }
    };
    let g = select::default_generation(fs)?;
    let profile_reason = match g.number {
        Some(n) => format!("the system profile's current generation ({SYSTEM_PROFILE} -> system-{n}-link)"),
        None => format!("the system profile ({SYSTEM_PROFILE})"),
    };
    let profile = |g: nixos::Generation, reason: String| DefaultPick {
        entry: g.entry.clone(),
        generation: g,
        reason,
    };
    let Some(inst) = installed else {
        return Ok(profile(g, profile_reason));
    };
    let from_file = format!("the installed default in {INSTALLED_FILE} (the guest's last switch-to-configuration)");
    let named = escape(inst.default.as_bytes());
    // The usual cases: the current generation, or (after
    // `nixos-rebuild switch --specialisation X`) one of its specialisations.
    if g.entry.toplevel == inst.default {
        return Ok(profile(g, from_file));
    }
    if let Some(s) = g.specialisations.iter().find(|s| s.toplevel == inst.default) {
        return Ok(DefaultPick {
            entry: s.clone(),
            generation: g,
            reason: from_file,
        });
    }
    let found = match installed::locate(fs, &inst.default) {
        Ok(Some(f)) => f,
        Ok(None) => {
            say(format!(
                "{INSTALLED_FILE} names {named}, which is neither a generation of a profile nor a specialisation of one; following the system profile"
            ));
            return Ok(profile(g, profile_reason));
        }
        Err(e) => {
            say(format!(
                "cannot look up {INSTALLED_FILE}'s default {named}: {e}; following the profile"
            ));
            return Ok(profile(g, profile_reason));
        }
    };
    let generation = if found.profile.is_none() && (found.number.is_none() || found.number == g.number) {
        g.clone()
    } else {
        match nixos::load_generation_in(fs, found.profile.as_deref(), found.number) {
            Ok(other) => other,
            Err(e) => {
                say(format!(
                    "{INSTALLED_FILE} names generation {} of {}, which does not load ({e}); following the system profile",
                    found.number.map_or_else(|| "current".to_owned(), |n| n.to_string()),
                    crate::error::EscapedBare(profile_title(found.profile.as_deref()).as_bytes())
                ));
                return Ok(profile(g, profile_reason));
            }
        }
    };
    let entry = match &found.specialisation {
        None => Some(generation.entry.clone()),
        Some(name) => generation
            .specialisations
            .iter()
            .find(|s| s.specialisation.as_deref() == Some(name.as_str()) || s.toplevel == inst.default)
            .cloned(),
    };
    match entry {
        Some(entry) => Ok(DefaultPick {
            entry,
            generation,
            reason: from_file,
        }),
        None => {
            say(format!(
                "{INSTALLED_FILE} names {named}, a specialisation that does not load; following the profile"
            ));
            Ok(profile(g, profile_reason))
        }
    }
}

/// `--profile=NAME` without `--entry`: that profile's current generation.
/// `system` is the system profile (not the installed default).
fn pick_profile(fs: &GuestFs, name: &str) -> Result<DefaultPick, Error> {
    let g = select::default_generation_in(fs, named_profile(name))?;
    let path = nixos::profile_path(named_profile(name));
    let reason = match g.number {
        Some(n) => format!("--profile={name}: the profile's current generation ({path} -> {name}-{n}-link)"),
        None => format!("--profile={name}: the profile ({path})"),
    };
    Ok(DefaultPick {
        entry: g.entry.clone(),
        generation: g,
        reason,
    })
}

/// `--profile` as a profile: `system` is the system profile.
fn named_profile(name: &str) -> Option<&str> {
    (name != "system").then_some(name)
}

/// The default entry (or, with `profile`, that profile's current
/// generation), or, if it is not bootable, the newest older bootable
/// generation of the same profile (said loudly on the console). Also
/// returns why.
fn default_or_fallback(
    fs: &GuestFs,
    req: &Request,
    profile: Option<&str>,
) -> Result<(BootEntry, Option<i64>, Checked, String), Error> {
    let picked = match profile {
        Some(name) => pick_profile(fs, name),
        None => {
            let installed = read_installed(fs, true);
            pick_default(fs, installed.as_ref(), true)
        }
    };
    // The default entry, or why it cannot boot: it does not even load (a
    // kernel link that leaves the filesystem, a corrupt boot.json and no
    // toplevel files), or it loads but is not bootable.
    let (name, first_problem, below, default_reason, in_profile) = match picked {
        Ok(pick) => {
            let g = &pick.generation;
            match bootable(fs, &pick.entry.kernel, pick.entry.initrd.as_deref(), req) {
                Ok(c) => return Ok((pick.entry, g.mtime, c, pick.reason)),
                Err(p) => (
                    select::label(&pick.entry, g.mtime),
                    p,
                    g.number,
                    pick.reason,
                    g.profile.clone(),
                ),
            }
        }
        Err(e) => match nixos::current_in(fs, profile.and_then(named_profile)) {
            Ok(nixos::Current::Generation(n)) => (
                format!("generation {n}"),
                e.message(),
                Some(n),
                match profile {
                    None => format!("the system profile's current generation ({SYSTEM_PROFILE} -> system-{n}-link)"),
                    Some(p) => format!(
                        "--profile={p}: the profile's current generation ({} -> {p}-{n}-link)",
                        nixos::profile_path(profile.and_then(named_profile))
                    ),
                },
                profile.and_then(named_profile).map(str::to_owned),
            ),
            _ => return Err(e),
        },
    };
    log::warn!("*** the default entry {name} is not bootable: {first_problem}");
    let in_profile = in_profile.as_deref();
    let profile = nixos::read_profile_in(fs, in_profile)?;
    let older = profile.links.iter().filter(|l| below.is_none_or(|n| l.number < n));
    let mut problems = vec![format!("{name}: {first_problem}")];
    for link in older {
        let cand = match nixos::load_generation_in(fs, in_profile, Some(link.number)) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("generation {}: {e}", link.number));
                continue;
            }
        };
        match bootable(fs, &cand.entry.kernel, cand.entry.initrd.as_deref(), req) {
            Ok(c) => {
                log::warn!(
                    "*** falling back to {} (the newest older bootable generation)",
                    select::label(&cand.entry, cand.mtime)
                );
                let reason =
                    format!("fallback: the default entry {name} ({default_reason}) is not bootable: {first_problem}");
                return Ok((cand.entry, cand.mtime, c, reason));
            }
            Err(p) => problems.push(format!("generation {}: {p}", link.number)),
        }
        if problems.len() > 8 {
            break;
        }
    }
    Err(Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
        "no bootable generation ({})",
        problems.join("; ")
    )))))
}

fn not_bootable(label: &str, why: String) -> Error {
    Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
        "{label} is not bootable: {why}"
    ))))
}

/// Decide what to boot.
pub fn plan(fs: &GuestFs, found_in: &str, req: &Request) -> Result<Plan, Error> {
    let (label, kernel, initrd, cmdline, checked, toplevel, reason) = match &req.selection {
        Selection::Paths { kernel, ramdisk } => {
            let line = cmdline::build(None, &[], req.args.as_deref())?;
            let label = format!("{kernel} (from --kernel)");
            let c = bootable(fs, kernel, ramdisk.as_deref(), req).map_err(|w| not_bootable(&label, w))?;
            (label, kernel.clone(), ramdisk.clone(), line, c, None, None)
        }
        Selection::Entry(spec) | Selection::ProfileEntry { entry: Some(spec), .. } => {
            let profile = match &req.selection {
                Selection::ProfileEntry { profile, .. } => named_profile(profile),
                _ => None,
            };
            let (entry, mtime) = match select::parse_entry(spec) {
                // GRUB's "NixOS - Default": what a boot without --entry
                // starts from (the installed default), never a fallback.
                select::EntrySpec::Default if profile.is_none() => {
                    let installed = read_installed(fs, true);
                    let pick = pick_default(fs, installed.as_ref(), true)?;
                    (pick.entry, pick.generation.mtime)
                }
                parsed => select::select(fs, profile, &parsed)?,
            };
            secrets_warning(&entry);
            let line = cmdline::build(Some(&entry.init), &entry.kernel_params, req.args.as_deref())?;
            let label = select::label(&entry, mtime);
            let c = bootable(fs, &entry.kernel, entry.initrd.as_deref(), req).map_err(|w| not_bootable(&label, w))?;
            (label, entry.kernel, entry.initrd, line, c, Some(entry.toplevel), None)
        }
        Selection::Default | Selection::ProfileEntry { entry: None, .. } => {
            let profile = match &req.selection {
                Selection::ProfileEntry { profile, .. } => Some(profile.as_str()),
                _ => None,
            };
            let (entry, mtime, c, reason) = default_or_fallback(fs, req, profile)?;
            secrets_warning(&entry);
            let line = cmdline::build(Some(&entry.init), &entry.kernel_params, req.args.as_deref())?;
            let label = select::label(&entry, mtime);
            (
                label,
                entry.kernel,
                entry.initrd,
                line,
                c,
                Some(entry.toplevel),
                Some(reason),
            )
        }
    };
    let cmdline = match &req.cmdline_override {
        Some(line) => {
            cmdline::check_value("edited command line", line)?;
            if line.len() > crate::limits::MAX_CMDLINE {
                return Err(cmdline::CmdlineError::TooLong(line.len()).into());
            }
            log::info!("using the command line edited at the console");
            line.clone()
        }
        None => cmdline,
    };
    let initrd = match (initrd, checked.initrd_len) {
        (Some(p), Some(len)) => Some((p, len)),
        _ => None,
    };
    // --unpack-kernel: the ELF's length, by decompressing it once here
    // (the data follows in a second pass, as frames).
    let (kernel_len, unpacked_from) = if req.unpack_kernel {
        let n = unpack_kernel(fs, &kernel, req, &mut std::io::sink())?;
        log::debug!("kernel {} unpacks to {n} bytes", escape(kernel.as_bytes()));
        (n, Some(checked.kernel_len))
    } else {
        (checked.kernel_len, None)
    };
    Ok(Plan {
        label,
        kernel,
        kernel_len,
        unpacked_from,
        xen_modes: checked.modes,
        initrd,
        cmdline,
        found_in: found_in.to_owned(),
        kernel_key: checked.key,
        kernel_verified: checked.verified_now,
        toplevel,
        reason,
    })
}

/// Decompress the kernel at `path` to its ELF (vmlinux) into `out`,
/// within `--max-kernel-size` and [`crate::limits::MAX_UNPACKED_KERNEL`];
/// the bytes written.
fn unpack_kernel(fs: &GuestFs, path: &str, req: &Request, out: &mut dyn Write) -> Result<u64, Error> {
    let (_, file, len) = fs.open_regular(path.as_bytes(), req.max_kernel)?;
    let reopen = |off: u64| -> std::io::Result<GuestFile<'_>> {
        let (_, mut f, _) = fs
            .open_regular(path.as_bytes(), req.max_kernel)
            .map_err(std::io::Error::other)?;
        f.seek_to(off)?;
        Ok(f)
    };
    kernel::unpack(file, len, reopen, req.max_kernel, out).map_err(|e| {
        Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
            "--unpack-kernel: kernel {} {e}",
            escape(path.as_bytes())
        ))))
    })
}

/// Kernel data frames of at most 1 MiB, as a `Write`.
struct DataFrames<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl DataFrames<'_> {
    const CHUNK: usize = 1 << 20;

    fn emit(&mut self, all: bool) -> std::io::Result<()> {
        while self.buf.len() >= Self::CHUNK || (all && !self.buf.is_empty()) {
            let n = self.buf.len().min(Self::CHUNK);
            ipc::write_frame(self.out, Tag::Kernel, self.buf.get(..n).unwrap_or_default())?;
            self.buf.drain(..n);
        }
        Ok(())
    }
}

impl Write for DataFrames<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.emit(false)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.emit(true)
    }
}

/// Send the unpacked kernel as data frames: exactly the `len` bytes the
/// plan announced (the first pass counted them).
fn send_unpacked(fs: &GuestFs, path: &str, req: &Request, len: u64, out: &mut dyn Write) -> Result<(), Error> {
    let mut frames = DataFrames {
        out,
        buf: Vec::with_capacity(DataFrames::CHUNK),
    };
    let n = unpack_kernel(fs, path, req, &mut frames)?;
    frames.flush().map_err(|e| Error::host("sending kernel data", e))?;
    if n != len {
        return Err(Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
            "--unpack-kernel: kernel {} unpacked to {n} bytes, then {len}",
            escape(path.as_bytes())
        )))));
    }
    Ok(())
}

/// Send one guest file, exactly `len` bytes: as the disk byte ranges it
/// occupies (the parent copies them itself), or, where the fast reader
/// does not map the file, as data frames.
fn send_file(fs: &GuestFs, path: &str, cap: u64, len: u64, tag: Tag, out: &mut dyn Write) -> Result<(), Error> {
    let too_large = |actual: u64| {
        Error::Guest(GuestError::Fs(FsError::TooLarge {
            path: escape(path.as_bytes()),
            len: actual,
            cap: len,
        }))
    };
    let send = |out: &mut dyn Write, tag: Tag, payload: &[u8]| {
        ipc::write_frame(out, tag, payload).map_err(|e| Error::host("sending file data", e))
    };
    if let Some((actual, runs)) = fs.data_runs(path.as_bytes(), cap)? {
        if actual != len {
            return Err(too_large(actual));
        }
        for r in runs {
            send(out, tag.runs(), &r.encode())?;
        }
        return Ok(());
    }
    let (_, mut f, actual) = fs.open_regular(path.as_bytes(), cap)?;
    if actual != len {
        return Err(too_large(actual));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        let dst = buf.get_mut(..want).unwrap_or_default();
        f.read_exact(dst).map_err(|e| FsError::Io {
            path: escape(path.as_bytes()),
            source: e,
        })?;
        send(out, tag, dst)?;
        left = left.saturating_sub(u64::try_from(want).unwrap_or(u64::MAX));
    }
    Ok(())
}

/// List every generation of every profile (the system profile, then the
/// `nixos-rebuild -p` profiles by name), each with its bootable check
/// (kernel checks are shared between generations with the same files).
/// At most [`MAX_GENERATIONS`](crate::limits::MAX_GENERATIONS) in all.
pub fn list(fs: &GuestFs, req: &Request) -> Result<Listing, Error> {
    use crate::limits::MAX_GENERATIONS;
    let mut profiles = vec![nixos::read_profile(fs)?];
    match nixos::read_named_profiles(fs) {
        Ok(named) => profiles.extend(named),
        Err(e) => log::warn!("cannot list the nixos-rebuild -p profiles: {e}"),
    }
    type Verdict = Result<Vec<XenMode>, String>;
    let mut memo: std::collections::HashMap<(String, Option<String>), Verdict> = Default::default();
    let mut listed = |loaded: Result<nixos::Generation, NixosError>, profile: Option<&str>, number, mtime, current| {
        let (generation, verdict) = match loaded {
            Ok(g) => {
                let key = (g.entry.kernel.clone(), g.entry.initrd.clone());
                let verdict = memo
                    .entry(key)
                    .or_insert_with(|| bootable(fs, &g.entry.kernel, g.entry.initrd.as_deref(), req).map(|c| c.modes))
                    .clone();
                (Some(g), verdict)
            }
            Err(e) => (None, Err(e.to_string())),
        };
        let (xen_modes, problem) = match verdict {
            Ok(m) => (m, None),
            Err(p) => (Vec::new(), Some(p)),
        };
        Listed {
            generation,
            number,
            current,
            mtime,
            problem,
            profile: profile.map(str::to_owned),
            xen_modes,
        }
    };
    let total: usize = profiles.iter().map(|p| p.links.len().saturating_add(1)).sum();
    if total > MAX_GENERATIONS {
        log::warn!("{total} generations in all profiles; only the first {MAX_GENERATIONS} are listed");
    }
    let mut generations = Vec::with_capacity(total.min(MAX_GENERATIONS));
    for profile in &profiles {
        let name = profile.name.as_deref();
        let current = profile.current.number();
        if current.is_none() && generations.len() < MAX_GENERATIONS {
            generations.push(listed(
                nixos::load_generation_in(fs, name, None),
                name,
                None,
                None,
                true,
            ));
        }
        for link in &profile.links {
            if generations.len() >= MAX_GENERATIONS {
                break;
            }
            let loaded = nixos::load_generation_in(fs, name, Some(link.number));
            generations.push(listed(
                loaded,
                name,
                Some(link.number),
                Some(link.mtime),
                current == Some(link.number),
            ));
        }
    }
    let installed = read_installed(fs, false);
    let pick = pick_default(fs, installed.as_ref(), false)
        .map_err(|e| log::debug!("no default entry: {e}"))
        .ok();
    Ok(Listing {
        generations,
        default: pick.as_ref().map(DefaultPick::entry_ref),
        default_reason: pick.map(|p| p.reason),
        guest_timeout: installed.as_ref().map_or(GuestTimeout::Unset, |i| i.timeout),
        guest_limit: installed.and_then(|i| i.limit),
    })
}

/// Run a request against `src`, writing frames to `out`. Errors are
/// returned, not written; the caller sends them as a failure frame.
pub fn run(src: Rc<dyn BlockSource>, req: &Request, out: &mut dyn Write) -> Result<(), Error> {
    let want = match &req.selection {
        Selection::Paths { kernel, .. } if req.mode == Mode::Boot => kernel.as_bytes().to_vec(),
        _ => SYSTEM_PROFILE.as_bytes().to_vec(),
    };
    let (fs, found_in) = open_system(src, req.offset, &want)?;
    match req.mode {
        Mode::List => {
            // The head, then one frame per generation: a whole listing of
            // thousands of generations is larger than one frame (`MAX_FRAME`).
            let mut l = list(&fs, req)?;
            let generations = std::mem::take(&mut l.generations);
            ipc::write_json(out, Tag::ListingHead, &l).map_err(|e| Error::host("sending listing", e))?;
            for g in generations {
                ipc::write_json(out, Tag::Listing, &g).map_err(|e| Error::host("sending listing", e))?;
            }
        }
        Mode::Boot => {
            let p = plan(&fs, &found_in, req)?;
            ipc::write_json(out, Tag::Plan, &p).map_err(|e| Error::host("sending plan", e))?;
            if req.send_data {
                if p.unpacked_from.is_some() {
                    send_unpacked(&fs, &p.kernel, req, p.kernel_len, out)?;
                } else {
                    send_file(&fs, &p.kernel, req.max_kernel, p.kernel_len, Tag::Kernel, out)?;
                }
                if let Some((path, len)) = &p.initrd {
                    send_file(&fs, path, req.max_initrd, *len, Tag::Initrd, out)?;
                }
            }
        }
    }
    ipc::write_frame(out, Tag::Done, &[]).map_err(|e| Error::host("sending end frame", e))
}
