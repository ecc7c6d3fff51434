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
use crate::ipc::{self, EntryRef, MenuEnd, Plan, Tag};
use crate::kernel;
use crate::list::{self, Listed};
use crate::menus;
use crate::nixos::installed::{self, GuestTimeout, INSTALLED_FILE, Installed};
use crate::nixos::{self, BootEntry, NixosError, SYSTEM_PROFILE, select};
use crate::part;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// The current generation.
    Default,
    /// `--entry=…`.
    Entry(String),
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
    /// List every generation for `nixboot list`: the table (or, with
    /// `json`, the JSON document) as text frames.
    List {
        /// The JSON document instead of the table.
        json: bool,
    },
    /// The console menu's entries, then which one is highlighted.
    Menu,
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
}

/// The identity of a kernel file: SHA-256 over its guest path, its size
/// and all of its bytes. Used only to skip re-checking a kernel already
/// found PV-bootable (the cache is positive-only), so it must cover every
/// byte: a key over samples would let a guest reuse a known kernel's key
/// with other bytes in between and skip the check. Hashing costs a read
/// of the kernel (a few milliseconds for a 10 MiB kernel) where the check
/// it saves decompresses it.
pub fn kernel_key(fs: &GuestFs, path: &str, len: u64) -> Result<String, FsError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(path.as_bytes());
    h.update(len.to_le_bytes());
    let (_, mut f, _) = fs.open_regular(path.as_bytes(), u64::MAX)?;
    let io = |e: std::io::Error| FsError::Io {
        path: escape(path.as_bytes()),
        source: e,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(256 * 1024)).unwrap_or(256 * 1024);
        let dst = buf.get_mut(..want).unwrap_or_default();
        f.read_exact(dst).map_err(io)?;
        h.update(&*dst);
        left = left.saturating_sub(u64::try_from(want).unwrap_or(u64::MAX));
    }
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
    if req.known_pv.contains(&key) {
        log::debug!(
            "kernel {} already known to be a Xen PV kernel",
            escape(kernel.as_bytes())
        );
        return Ok(Checked {
            kernel_len,
            initrd_len,
            key,
            verified_now: false,
        });
    }
    let reopen = |off: u64| -> std::io::Result<GuestFile<'_>> {
        let (_, mut f, _) = fs
            .open_regular(kernel.as_bytes(), req.max_kernel)
            .map_err(std::io::Error::other)?;
        f.seek_to(off)?;
        Ok(f)
    };
    match kernel::check(file, kernel_len, reopen) {
        Ok(kernel::Verdict::XenPv) => Ok(Checked {
            kernel_len,
            initrd_len,
            key,
            verified_now: true,
        }),
        Ok(kernel::Verdict::Unverified(why)) => {
            log::warn!("kernel {}: {why}", escape(kernel.as_bytes()));
            Ok(Checked {
                kernel_len,
                initrd_len,
                key,
                verified_now: false,
            })
        }
        Err(e) => Err(format!("kernel {} {e}", escape(kernel.as_bytes()))),
    }
}

fn secrets_warning(entry: &BootEntry) {
    if let Some(s) = &entry.initrd_secrets {
        log::warn!(
            "this generation declares initrd secrets ({}); a dom0 loader cannot run the guest's appender, booting without them",
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
                "{INSTALLED_FILE} names {named}, which is neither a generation of the system profile nor a specialisation of one; following the profile"
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
    let generation = match found.number {
        Some(n) if Some(n) != g.number => match nixos::load_generation(fs, &nixos::link_path(n), Some(n)) {
            Ok(other) => other,
            Err(e) => {
                say(format!(
                    "{INSTALLED_FILE} names generation {n}, which does not load ({e}); following the profile"
                ));
                return Ok(profile(g, profile_reason));
            }
        },
        _ => g.clone(),
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

/// The default entry, or, if it is not bootable, the newest older
/// bootable generation (said loudly on the console). Also returns why.
fn default_or_fallback(fs: &GuestFs, req: &Request) -> Result<(BootEntry, Option<i64>, Checked, String), Error> {
    let installed = read_installed(fs, true);
    // The default entry, or why it cannot boot: it does not even load (a
    // kernel link that leaves the filesystem, a corrupt boot.json and no
    // toplevel files), or it loads but is not bootable.
    let (name, first_problem, below, default_reason) = match pick_default(fs, installed.as_ref(), true) {
        Ok(pick) => {
            let g = &pick.generation;
            if !g.unreadable.is_empty() {
                log::warn!(
                    "{} specialisations of {} could not be read; `nixboot list` shows why",
                    g.unreadable.len(),
                    select::label(&g.entry, g.mtime)
                );
            }
            match bootable(fs, &pick.entry.kernel, pick.entry.initrd.as_deref(), req) {
                Ok(c) => return Ok((pick.entry, g.mtime, c, pick.reason)),
                Err(p) => (select::label(&pick.entry, g.mtime), p, g.number, pick.reason),
            }
        }
        Err(e) => match nixos::current(fs) {
            Ok(nixos::Current::Generation(n)) => (
                format!("generation {n}"),
                e.message(),
                Some(n),
                format!("the system profile's current generation ({SYSTEM_PROFILE} -> system-{n}-link)"),
            ),
            _ => return Err(e),
        },
    };
    log::warn!("*** the default entry {name} is not bootable: {first_problem}");
    let profile = nixos::read_profile(fs)?;
    let older = profile.links.iter().filter(|l| below.is_none_or(|n| l.number < n));
    let mut problems = vec![format!("{name}: {first_problem}")];
    for link in older {
        let cand = match nixos::load_generation(fs, &nixos::link_path(link.number), Some(link.number)) {
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
        Selection::Entry(spec) => {
            let (entry, mtime) = select::select(fs, &select::parse_entry(spec))?;
            secrets_warning(&entry);
            let line = cmdline::build(Some(&entry.init), &entry.kernel_params, req.args.as_deref())?;
            let label = select::label(&entry, mtime);
            let c = bootable(fs, &entry.kernel, entry.initrd.as_deref(), req).map_err(|w| not_bootable(&label, w))?;
            (label, entry.kernel, entry.initrd, line, c, Some(entry.toplevel), None)
        }
        Selection::Default => {
            let (entry, mtime, c, reason) = default_or_fallback(fs, req)?;
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
    Ok(Plan {
        label,
        kernel,
        kernel_len: checked.kernel_len,
        initrd,
        cmdline,
        found_in: found_in.to_owned(),
        kernel_key: checked.key,
        kernel_verified: checked.verified_now,
        toplevel,
        reason,
    })
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

/// Every generation of the profile, newest first, each with its bootable
/// check (kernel checks are shared between generations with the same
/// files), handed to `each` one at a time: a listing is never held whole.
pub fn each_generation(
    fs: &GuestFs,
    req: &Request,
    each: &mut dyn FnMut(Listed) -> Result<(), Error>,
) -> Result<(), Error> {
    let profile = nixos::read_profile(fs)?;
    let current = match &profile.current {
        nixos::Current::Generation(n) => Some(*n),
        nixos::Current::Direct(_) => None,
    };
    let mut memo: std::collections::HashMap<(String, Option<String>), Option<String>> = Default::default();
    let mut listed = |loaded: Result<nixos::Generation, NixosError>, number, mtime, current| {
        let (generation, problem) = match loaded {
            Ok(g) => {
                let key = (g.entry.kernel.clone(), g.entry.initrd.clone());
                let problem = memo
                    .entry(key)
                    .or_insert_with(|| bootable(fs, &g.entry.kernel, g.entry.initrd.as_deref(), req).err())
                    .clone();
                (Some(g), problem)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        Listed {
            generation,
            number,
            current,
            mtime,
            problem,
        }
    };
    if current.is_none() {
        each(listed(
            nixos::load_generation(fs, SYSTEM_PROFILE, None),
            None,
            None,
            true,
        ))?;
    }
    // Generations that share a toplevel (a rollback, or a hostile disk
    // with thousands of links to one) are loaded once: the last few
    // toplevels are kept.
    let mut recent: std::collections::VecDeque<(Vec<u8>, nixos::Generation)> = Default::default();
    for link in &profile.links {
        let path = nixos::link_path(link.number);
        let toplevel = fs.resolve(path.as_bytes(), true).ok();
        let hit = toplevel
            .as_ref()
            .and_then(|t| recent.iter().find(|(k, _)| k == t))
            .map(|(_, g)| renumbered(g.clone(), link.number, link.mtime));
        let loaded = match hit {
            Some(g) => Ok(g),
            None => {
                let loaded = nixos::load_generation(fs, &path, Some(link.number));
                if let (Some(t), Ok(g)) = (toplevel, &loaded) {
                    if recent.len() >= RECENT_TOPLEVELS {
                        recent.pop_front();
                    }
                    recent.push_back((t, g.clone()));
                }
                loaded
            }
        };
        each(listed(
            loaded,
            Some(link.number),
            Some(link.mtime),
            current == Some(link.number),
        ))?;
    }
    Ok(())
}

/// Toplevels kept loaded while listing (see [`each_generation`]).
const RECENT_TOPLEVELS: usize = 4;

/// `g`, loaded through another link: generation `number`, link `mtime`.
fn renumbered(mut g: nixos::Generation, number: u64, mtime: i64) -> nixos::Generation {
    g.number = Some(number);
    g.mtime = Some(mtime);
    g.entry.generation = Some(number);
    for s in &mut g.specialisations {
        s.generation = Some(number);
    }
    g
}

/// The installed-default file and the default entry, for a listing.
fn listing_default(fs: &GuestFs) -> (Option<Installed>, Option<DefaultPick>) {
    let installed = read_installed(fs, false);
    let pick = pick_default(fs, installed.as_ref(), false)
        .map_err(|e| log::debug!("no default entry: {e}"))
        .ok();
    (installed, pick)
}

/// Text frames of at most [`ipc::MAX_TEXT_FRAME`] bytes, cut at character
/// boundaries.
fn send_text(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(ipc::MAX_TEXT_FRAME);
        while end > 0 && !rest.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        let (head, tail) = rest.split_at(end);
        ipc::write_frame(out, Tag::Text, head.as_bytes()).map_err(|e| Error::host("sending listing", e))?;
        rest = tail;
    }
    Ok(())
}

/// `nixboot list`: the table or the JSON document, rendered generation
/// by generation and sent as text frames (about 64 KiB each).
fn send_list(fs: &GuestFs, req: &Request, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let (_, pick) = listing_default(fs);
    let mut pending = String::new();
    if json {
        pending.push_str(list::JSON_HEAD);
    }
    let mut first = true;
    each_generation(fs, req, &mut |g| {
        if json {
            pending.push_str(&list::json_generation(&g, first));
        } else {
            pending.push_str(&list::table_generation(&g));
        }
        first = false;
        if pending.len() >= 64 * 1024 {
            send_text(out, &pending)?;
            pending.clear();
        }
        Ok(())
    })?;
    let reason = pick.as_ref().map(|p| p.reason.as_str());
    if json {
        let default = pick.as_ref().map(DefaultPick::entry_ref);
        pending.push_str(&list::json_tail(default.as_ref(), reason, !first));
    } else {
        pending.push_str(&list::table_tail(reason));
    }
    send_text(out, &pending)
}

/// The console menu: one frame per entry, then the highlighted one.
fn send_menu(fs: &GuestFs, req: &Request, out: &mut dyn Write) -> Result<(), Error> {
    let (installed, pick) = listing_default(fs);
    let mut menu = list::MenuBuilder::new(
        pick.as_ref().map(DefaultPick::entry_ref),
        installed.as_ref().and_then(|i| i.limit),
        req.args.as_deref(),
    );
    each_generation(fs, req, &mut |g| {
        for e in menu.add(&g) {
            ipc::write_json(out, Tag::MenuEntry, &e).map_err(|e| Error::host("sending the menu", e))?;
        }
        Ok(())
    })?;
    if menu.unreadable > 0 {
        log::warn!(
            "{} specialisations could not be read; `nixboot list` shows why",
            menu.unreadable
        );
    }
    let end = MenuEnd {
        default: menu.default_index(),
        guest_timeout: installed.as_ref().map_or(GuestTimeout::Unset, |i| i.timeout),
    };
    ipc::write_json(out, Tag::MenuEnd, &end).map_err(|e| Error::host("sending the menu", e))
}

/// Run a request against `src`, writing frames to `out`. Errors are
/// returned, not written; the caller sends them as a failure frame.
pub fn run(src: Rc<dyn BlockSource>, req: &Request, out: &mut dyn Write) -> Result<(), Error> {
    let want = match &req.selection {
        Selection::Paths { kernel, .. } if req.mode == Mode::Boot => kernel.as_bytes().to_vec(),
        _ => SYSTEM_PROFILE.as_bytes().to_vec(),
    };
    let (fs, found_in) = match open_system(src.clone(), req.offset, &want) {
        Ok(found) => found,
        // No NixOS profile on the disk: the guest's own boot menu.
        Err(e) if !matches!(req.selection, Selection::Paths { .. }) => return run_menus(src, req, out, &e),
        Err(e) => return Err(e),
    };
    match req.mode {
        Mode::List { json } => send_list(&fs, req, json, out)?,
        Mode::Menu => send_menu(&fs, req, out)?,
        Mode::Boot => {
            let p = plan(&fs, &found_in, req)?;
            ipc::write_json(out, Tag::Plan, &p).map_err(|e| Error::host("sending plan", e))?;
            if req.send_data {
                send_file(&fs, &p.kernel, req.max_kernel, p.kernel_len, Tag::Kernel, out)?;
                if let Some((path, len)) = &p.initrd {
                    send_file(&fs, path, req.max_initrd, *len, Tag::Initrd, out)?;
                }
            }
        }
    }
    ipc::write_frame(out, Tag::Done, &[]).map_err(|e| Error::host("sending end frame", e))
}

/// A file to send for a guest-menu boot: volume, path, length.
type MenuFile = (usize, String, u64);

/// Why an entry of a guest menu cannot be booted, for the diagnostics.
fn menu_entry_problem(e: &menus::Entry, why: &str) -> String {
    format!("entry {} {why}", escape(&e.path_title()))
}

/// A guest path from a menu as the plan carries it (UTF-8).
fn menu_path(p: &[u8]) -> Result<String, String> {
    String::from_utf8(p.to_vec()).map_err(|_| format!("path {} is not UTF-8", escape(p)))
}

/// Plan the boot of one entry of a guest menu: kernel (the PV check),
/// initrds (concatenated in order, their sum within the cap), command line.
/// Returns the plan and the files to send: (volume, path, length).
fn plan_menu_entry(
    vols: &[menus::disk::Volume],
    found: &menus::disk::Found,
    e: &menus::Entry,
    req: &Request,
) -> Result<(Plan, Vec<MenuFile>), String> {
    use menus::disk::locate;
    if let Some(p) = &e.problem {
        return Err(menu_entry_problem(e, p));
    }
    let Some(k) = &e.kernel else {
        return Err(menu_entry_problem(e, "loads no kernel"));
    };
    let kv = locate(vols, found.vol, k).map_err(|w| menu_entry_problem(e, &w))?;
    let kfs = &vols.get(kv).ok_or("no volume")?.fs;
    let kpath = menu_path(&k.path)?;
    let checked = bootable(kfs, &kpath, None, req).map_err(|w| menu_entry_problem(e, &w))?;
    let mut files = vec![(kv, kpath.clone(), checked.kernel_len)];
    let mut total: u64 = 0;
    let mut names = Vec::new();
    for i in &e.initrds {
        let iv = locate(vols, found.vol, i).map_err(|w| menu_entry_problem(e, &w))?;
        let ipath = menu_path(&i.path)?;
        let fs = &vols.get(iv).ok_or("no volume")?.fs;
        let (_, len) = fs
            .stat_regular(ipath.as_bytes(), req.max_initrd)
            .map_err(|err| menu_entry_problem(e, &file_problem("initrd", err)))?;
        total = total
            .checked_add(len)
            .filter(|t| *t <= req.max_initrd)
            .ok_or_else(|| menu_entry_problem(e, &format!("initrds add up to more than {} bytes", req.max_initrd)))?;
        names.push(ipath.clone());
        files.push((iv, ipath, len));
    }
    let args = String::from_utf8_lossy(&e.args).into_owned();
    let line =
        cmdline::build(None, &[args], req.args.as_deref()).map_err(|err| menu_entry_problem(e, &err.to_string()))?;
    let cmdline = match &req.cmdline_override {
        Some(l) => {
            cmdline::check_value("edited command line", l).map_err(|err| err.to_string())?;
            if l.len() > crate::limits::MAX_CMDLINE {
                return Err(cmdline::CmdlineError::TooLong(l.len()).to_string());
            }
            l.clone()
        }
        None => line,
    };
    let place = vols.get(found.vol).map(|v| v.place.clone()).unwrap_or_default();
    let plan = Plan {
        label: String::from_utf8_lossy(&e.path_title()).into_owned(),
        kernel: kpath,
        kernel_len: checked.kernel_len,
        initrd: (!names.is_empty()).then(|| (names.join(" + "), total)),
        cmdline,
        found_in: format!("{place}, {} menu {}", found.kind.name(), escape(&found.path)),
        kernel_key: checked.key,
        kernel_verified: checked.verified_now,
        toplevel: None,
        reason: None,
    };
    Ok((plan, files))
}

/// Boot from the guest's own menu (GRUB 2, BLS, extlinux, GRUB legacy):
/// the first partition whose menu yields a bootable entry. When nothing
/// boots, one line per partition says what was found and why it failed.
fn run_menus(src: Rc<dyn BlockSource>, req: &Request, out: &mut dyn Write, nixos: &Error) -> Result<(), Error> {
    use menus::{Selector, select};
    let (vols, mut lines) = menus::disk::volumes(src, req.offset)?;
    if matches!(req.mode, Mode::List { .. } | Mode::Menu) {
        return Err(not_bootable(
            "the disk",
            format!("has no NixOS profile ({nixos}); listing guest menus is not supported yet"),
        ));
    }
    let sel = match &req.selection {
        Selection::Entry(s) => Selector::parse(s.as_bytes()),
        _ => Selector::Default,
    };
    for vol in 0..vols.len() {
        let place = vols.get(vol).map(|v| v.place.clone()).unwrap_or_default();
        let found = match menus::disk::find_menu(&vols, vol, None) {
            Ok(f) => f,
            Err(why) => {
                lines.push(format!("{place}: {why}"));
                continue;
            }
        };
        let what = format!("{place}: {} menu {}", found.kind.name(), escape(&found.path));
        let first = match select(&found.menu, &sel) {
            Ok(i) => i,
            Err(err) => {
                lines.push(format!("{what}: {err}"));
                continue;
            }
        };
        // The chosen entry; for the default, then the others in order.
        let mut order = vec![first];
        if sel == Selector::Default {
            order.extend((0..found.menu.entries.len()).filter(|i| *i != first));
        }
        let mut refused = Vec::new();
        for i in order {
            let Some(e) = found.menu.entries.get(i) else { continue };
            match plan_menu_entry(&vols, &found, e, req) {
                Ok((mut plan, files)) => {
                    if i != first {
                        plan.reason = Some(format!("the menu's default was refused: {}", refused.join("; ")));
                    }
                    ipc::write_json(out, Tag::Plan, &plan).map_err(|e| Error::host("sending plan", e))?;
                    if req.send_data {
                        for (n, (v, path, len)) in files.iter().enumerate() {
                            let fs = &vols
                                .get(*v)
                                .ok_or_else(|| not_bootable(&plan.label, "no volume".into()))?
                                .fs;
                            let (cap, tag) = if n == 0 {
                                (req.max_kernel, Tag::Kernel)
                            } else {
                                (req.max_initrd, Tag::Initrd)
                            };
                            send_file(fs, path, cap, *len, tag, out)?;
                        }
                    }
                    return ipc::write_frame(out, Tag::Done, &[]).map_err(|e| Error::host("sending end frame", e));
                }
                Err(why) => refused.push(why),
            }
        }
        lines.push(format!("{what}: {}", refused.join("; ")));
    }
    for l in &lines {
        log::warn!("{l}");
    }
    Err(Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
        "nothing to boot: no NixOS profile ({nixos}), and no guest boot menu with a bootable entry ({})",
        if lines.is_empty() {
            "no partitions".to_owned()
        } else {
            lines.join("; ")
        }
    )))))
}
