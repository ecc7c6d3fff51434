//! The privileged parent: opens the disk and the output files, runs the
//! confined parse child, checks everything it sends, and writes the result
//! only when every byte has arrived. dom0 side.

use std::io::Write;
use std::path::PathBuf;

use crate::boot::{Mode, Request, Selection};
use crate::cache::KernelCache;
use crate::cli::{BootArgs, ListArgs};
use crate::cmdline;
use crate::disk::Disk;
use crate::error::{Error, EscapedBare, Fault};
use crate::ipc::{Listed, Listing, Plan, Tag};
use crate::limits::{
    DEFAULT_MAX_INITRD, DEFAULT_MAX_KERNEL, MAX_CMDLINE, MAX_GENERATIONS, MAX_GUEST_MENU_TIMEOUT, MAX_LISTING,
};
use crate::menu::{self, DEFAULT_TIMEOUT};
use crate::nixos::installed::GuestTimeout;
use crate::output::{self, BootResult, OutFile, OutputDir, ResultSink};
use crate::sandbox::{self, Confinement};

fn open_disk(path: &std::path::Path) -> Result<Disk, Error> {
    Disk::open(path).map_err(|e| Error::host(format!("cannot open disk {}", path.display()), e))
}

fn guest(message: String) -> Error {
    Error::Reported {
        fault: Fault::Guest,
        message,
    }
}

/// A file being received from the child.
struct Incoming {
    file: Option<OutFile>,
    expected: u64,
    received: u64,
}

impl Incoming {
    fn new(dir: Option<&OutputDir>, prefix: &str, expected: u64) -> Result<Incoming, Error> {
        let file = dir.map(|d| d.create(prefix)).transpose()?;
        Ok(Incoming {
            file,
            expected,
            received: 0,
        })
    }

    /// Accept `n` more bytes (refusing more than announced); the file
    /// they go to.
    fn reserve(&mut self, what: &str, n: u64) -> Result<&mut std::fs::File, Error> {
        self.received = self.received.saturating_add(n);
        if self.received > self.expected {
            return Err(guest(format!(
                "the parser sent more {what} data than the {} bytes announced",
                self.expected
            )));
        }
        self.file
            .as_mut()
            .map(OutFile::file)
            .ok_or_else(|| guest(format!("unexpected {what} data")))
    }

    fn finish(self, what: &str) -> Result<Option<PathBuf>, Error> {
        if self.received != self.expected {
            return Err(guest(format!(
                "the parser sent {} of {} {what} bytes",
                self.received, self.expected
            )));
        }
        if let Some(f) = &self.file {
            let len = f
                .as_file()
                .metadata()
                .map_err(|e| Error::host(format!("checking the {what} copy"), e))?
                .len();
            if len != self.expected {
                return Err(Error::HostMsg(format!(
                    "the {what} copy is {len} bytes, not {}",
                    self.expected
                )));
            }
        }
        self.file.map(OutFile::keep).transpose()
    }
}

/// Re-check a plan from the (untrusted) child.
fn check_plan(p: &Plan, a: &BootArgs) -> Result<(), Error> {
    if p.kernel_len > a.max_kernel_size {
        return Err(guest(format!(
            "kernel is {} bytes, over the {}-byte limit",
            p.kernel_len, a.max_kernel_size
        )));
    }
    if let Some((_, len)) = &p.initrd
        && *len > a.max_initrd_size
    {
        return Err(guest(format!(
            "initrd is {len} bytes, over the {}-byte limit",
            a.max_initrd_size
        )));
    }
    cmdline::check_value("command line", &p.cmdline).map_err(|e| guest(e.to_string()))?;
    if p.cmdline.len() > MAX_CMDLINE {
        return Err(guest(format!(
            "command line is {} bytes; a PV guest receives at most {MAX_CMDLINE}",
            p.cmdline.len()
        )));
    }
    Ok(())
}

fn output_dir(a: &BootArgs) -> Result<OutputDir, Error> {
    match &a.output_directory {
        Some(d) => OutputDir::open(d),
        None => {
            let d = tempfile::Builder::new()
                .prefix("nixboot.")
                .tempdir()
                .map_err(|e| Error::host("creating a private output directory", e))?
                .keep();
            log::info!("no --output-directory; copying into {}", d.display());
            OutputDir::open(&d)
        }
    }
}

/// Receives the frames of a boot: the plan, then kernel and initrd data.
struct BootFrames<'a> {
    args: &'a BootArgs,
    dir: Option<&'a OutputDir>,
    send_data: bool,
    plan: Option<Plan>,
    kernel: Option<Incoming>,
    initrd: Option<Incoming>,
}

impl sandbox::Frames for BootFrames<'_> {
    fn frame(&mut self, tag: Tag, data: &[u8]) -> Result<(), Error> {
        match tag {
            Tag::Plan if self.plan.is_none() => {
                let mut p: Plan = serde_json::from_slice(data)
                    .map_err(|e| guest(format!("the parser sent a malformed plan ({e})")))?;
                check_plan(&p, self.args)?;
                // Only shown on the console (the data comes by frames): the
                // label and paths are guest strings and may hold escape
                // sequences. The command line is already checked.
                p.label = sandbox::sanitize(&p.label);
                p.kernel = sandbox::sanitize(&p.kernel);
                p.found_in = sandbox::sanitize(&p.found_in);
                if let Some((path, _)) = &mut p.initrd {
                    *path = sandbox::sanitize(path);
                }
                if self.send_data {
                    self.kernel = Some(Incoming::new(self.dir, "boot_kernel.", p.kernel_len)?);
                    self.initrd = p
                        .initrd
                        .as_ref()
                        .map(|(_, len)| Incoming::new(self.dir, "boot_ramdisk.", *len))
                        .transpose()?;
                }
                self.plan = Some(p);
                Ok(())
            }
            _ => Err(guest("the parser sent an unexpected frame".into())),
        }
    }

    fn data(&mut self, tag: Tag, len: u64) -> Result<&mut std::fs::File, Error> {
        match tag {
            Tag::Kernel => self
                .kernel
                .as_mut()
                .ok_or_else(|| guest("unexpected kernel data".into()))?
                .reserve("kernel", len),
            Tag::Initrd => self
                .initrd
                .as_mut()
                .ok_or_else(|| guest("unexpected initrd data".into()))?
                .reserve("initrd", len),
            _ => Err(guest("the parser sent an unexpected frame".into())),
        }
    }
}

/// Receives the frames of a listing: one per generation, within a count
/// and a byte budget.
struct ListFrames {
    head: Option<Listing>,
    generations: Vec<Listed>,
    bytes: usize,
}

impl sandbox::Frames for ListFrames {
    fn frame(&mut self, tag: Tag, data: &[u8]) -> Result<(), Error> {
        match tag {
            Tag::ListingHead if self.head.is_none() => {
                let h: Listing = serde_json::from_slice(data)
                    .map_err(|e| guest(format!("the parser sent a malformed listing ({e})")))?;
                if !h.generations.is_empty() {
                    return Err(guest("the parser sent generations in the listing head".into()));
                }
                self.head = Some(h);
                Ok(())
            }
            Tag::Listing => {
                self.bytes = self.bytes.saturating_add(data.len());
                if self.generations.len() > MAX_GENERATIONS || self.bytes > MAX_LISTING {
                    return Err(guest(format!(
                        "the parser sent more than {MAX_GENERATIONS} generations or {MAX_LISTING} bytes of listing"
                    )));
                }
                let g = serde_json::from_slice(data)
                    .map_err(|e| guest(format!("the parser sent a malformed listing ({e})")))?;
                self.generations.push(g);
                Ok(())
            }
            _ => Err(guest("the parser sent an unexpected frame".into())),
        }
    }

    fn data(&mut self, _: Tag, _: u64) -> Result<&mut std::fs::File, Error> {
        Err(guest("the parser sent an unexpected frame".into()))
    }
}

/// The default command: boot (libxl's argv).
pub fn boot(a: &BootArgs) -> Result<(), Error> {
    if a.runas == Some(0) {
        return Err(Error::Usage(
            "--runas=0 would not drop privileges; give the restricted user's uid".into(),
        ));
    }
    let disk_path = a.disk.as_ref().ok_or_else(|| Error::Usage("no disk given".into()))?;
    let dir = if a.not_really { None } else { Some(output_dir(a)?) };
    let sink = if a.not_really {
        None
    } else {
        Some(ResultSink::open(a.output.as_deref())?)
    };
    let disk = open_disk(disk_path)?;
    let cache = KernelCache::from_env();
    let mut cmdline_override = None;
    // Why this entry, when dom0 decided (else the child says, in the plan).
    let mut why = None;
    let selection = match (&a.kernel, &a.entry) {
        (None, e) if a.profile.is_some() => {
            let profile = a.profile.clone().unwrap_or_default();
            why = e.as_ref().map(|e| {
                format!(
                    "--profile={} --entry={}",
                    EscapedBare(profile.as_bytes()),
                    EscapedBare(e.as_bytes())
                )
            });
            Selection::ProfileEntry {
                profile,
                entry: e.clone(),
            }
        }
        (Some(k), _) => {
            why = Some("--kernel: the guest files named by the domain config".to_owned());
            Selection::Paths {
                kernel: k.clone(),
                ramdisk: a.ramdisk.clone(),
            }
        }
        (None, Some(e)) => {
            why = Some(format!("--entry={}", EscapedBare(e.as_bytes())));
            Selection::Entry(e.clone())
        }
        (None, None) if wants_menu(a) => {
            let (sel, edited) = menu_choice(&disk, a, &cache)?;
            if sel != Selection::Default {
                why = Some("chosen at the console menu".to_owned());
            }
            cmdline_override = edited;
            sel
        }
        (None, None) => Selection::Default,
    };
    let request = Request {
        mode: Mode::Boot,
        offset: a.offset,
        selection,
        args: a.args.clone(),
        max_kernel: a.max_kernel_size,
        max_initrd: a.max_initrd_size,
        send_data: !a.not_really,
        known_pv: cache.known(),
        cmdline_override,
        domain_type: a.domain_type,
        unpack_kernel: a.unpack_kernel,
    };
    let confinement = Confinement {
        runas: a.runas,
        verbosity: a.verbosity(),
    };
    let mut rx = BootFrames {
        args: a,
        dir: dir.as_ref(),
        send_data: request.send_data,
        plan: None,
        kernel: None,
        initrd: None,
    };
    sandbox::run_child(&disk, &request, &confinement, &mut rx)?;
    let BootFrames {
        plan, kernel, initrd, ..
    } = rx;
    let plan = plan.ok_or_else(|| guest("the parser finished without choosing an entry".into()))?;
    log_plan(&plan, &why);
    let (Some(dir), Some(sink), Some(kernel)) = (dir, sink, kernel) else {
        // --not-really: report, copy nothing, write no result.
        let mut o = std::io::stdout().lock();
        let _ = writeln!(
            o,
            "entry   {}\nkernel  {} ({} bytes)",
            plan.label, plan.kernel, plan.kernel_len
        );
        if let Some((p, len)) = &plan.initrd {
            let _ = writeln!(o, "initrd  {p} ({len} bytes)");
        }
        let _ = writeln!(o, "args    {}", plan.cmdline);
        return Ok(());
    };
    let _ = dir;
    let kernel_path = kernel
        .finish("kernel")?
        .ok_or_else(|| Error::HostMsg("kernel copy missing".into()))?;
    let ramdisk_path = initrd.map(|i| i.finish("initrd")).transpose()?.flatten();
    let to_str = |p: PathBuf| {
        p.into_os_string()
            .into_string()
            .map_err(|_| Error::HostMsg("output path is not UTF-8".into()))
    };
    let result = BootResult {
        kernel: to_str(kernel_path)?,
        ramdisk: ramdisk_path.map(to_str).transpose()?,
        args: plan.cmdline.clone(),
    };
    let bytes = output::render(&result, a.output_format)?;
    sink.write(&bytes)?;
    match &a.output {
        Some(p) if p.as_os_str() != "-" => log::info!("result written to {}", p.display()),
        _ => {}
    }
    if plan.kernel_verified {
        for m in crate::kernel::XenMode::ALL {
            if plan.xen_modes.contains(&m) {
                cache.remember(&crate::boot::mode_key(&plan.kernel_key, m));
            }
        }
    }
    Ok(())
}

/// Log what boots and why: the one summary line (shown even with `-q`,
/// which libxl passes in restricted mode) and the details. Everything the
/// child sent is guest data: escaped.
fn log_plan(plan: &Plan, why: &Option<String>) {
    let e = |s: &str| EscapedBare(s.as_bytes()).to_string();
    let why = why
        .clone()
        .or_else(|| plan.reason.as_deref().map(e))
        .unwrap_or_else(|| "the default entry".to_owned());
    log::info!(
        target: crate::logging::SUMMARY,
        "booting {} from {}: {why}",
        e(&plan.label),
        e(&plan.found_in)
    );
    if let Some(t) = &plan.toplevel {
        log::info!("toplevel {}", e(t));
    }
    let modes = crate::boot::modes_text(&plan.xen_modes);
    match plan.unpacked_from {
        Some(file_len) => log::info!(
            "kernel {} ({file_len} bytes, unpacked: a {}-byte ELF goes to libxl; boots as Xen {modes})",
            e(&plan.kernel),
            plan.kernel_len
        ),
        None => log::info!(
            "kernel {} ({} bytes; boots as Xen {modes})",
            e(&plan.kernel),
            plan.kernel_len
        ),
    }
    if let Some((p, len)) = &plan.initrd {
        log::info!("initrd {} ({len} bytes)", e(p));
    }
    log::info!("command line: {}", e(&plan.cmdline));
}

fn wants_menu(a: &BootArgs) -> bool {
    use std::io::IsTerminal;
    !a.quiet && a.runas.is_none() && !a.not_really && a.timeout != Some(0) && std::io::stdin().is_terminal()
}

/// The menu countdown: `--timeout`, else the guest's `boot.loader.timeout`
/// (at most [`MAX_GUEST_MENU_TIMEOUT`]), else [`DEFAULT_TIMEOUT`].
pub fn menu_timeout(explicit: Option<u64>, guest: GuestTimeout) -> u64 {
    match (explicit, guest) {
        (Some(t), _) => t,
        (None, GuestTimeout::Seconds(t)) => t.min(MAX_GUEST_MENU_TIMEOUT),
        (None, GuestTimeout::WaitForKey) => MAX_GUEST_MENU_TIMEOUT,
        (None, GuestTimeout::Unset) => DEFAULT_TIMEOUT,
    }
}

/// Ask the parse child for every generation.
fn listing(disk: &Disk, offset: Option<u64>, known_pv: Vec<String>, verbosity: u8) -> Result<Listing, Error> {
    let request = Request {
        mode: Mode::List,
        offset,
        selection: Selection::Default,
        args: None,
        max_kernel: DEFAULT_MAX_KERNEL,
        max_initrd: DEFAULT_MAX_INITRD,
        send_data: false,
        known_pv,
        cmdline_override: None,
        domain_type: None,
        unpack_kernel: false,
    };
    let confinement = Confinement { runas: None, verbosity };
    let mut rx = ListFrames {
        head: None,
        generations: Vec::new(),
        bytes: 0,
    };
    sandbox::run_child(disk, &request, &confinement, &mut rx)?;
    let head = rx
        .head
        .ok_or_else(|| guest("the parser finished without a listing".into()))?;
    let generations = rx.generations;
    Ok(Listing { generations, ..head })
}

/// Show the console menu; the selection and any edited command line.
fn menu_choice(disk: &Disk, a: &BootArgs, cache: &KernelCache) -> Result<(Selection, Option<String>), Error> {
    let l = listing(disk, a.offset, cache.known(), a.verbosity())?;
    let timeout = menu_timeout(a.timeout, l.guest_timeout);
    if timeout == 0 {
        log::debug!("menu timeout 0 (the guest's boot.loader.timeout): no menu");
        return Ok((Selection::Default, None));
    }
    let (items, selections, default) = menu_items(&l, a.args.as_deref());
    // Nothing to choose from: no menu, and no countdown to wait through
    // before the error.
    if items.iter().all(|i| i.problem.is_some()) {
        return Ok((Selection::Default, None));
    }
    let choice = menu::run(items, default, std::time::Duration::from_secs(timeout))
        .map_err(|e| Error::host("running the console menu", e))?;
    if !choice.interactive {
        return Ok((Selection::Default, None));
    }
    let sel = selections.get(choice.index).cloned().unwrap_or(Selection::Default);
    Ok((sel, choice.cmdline))
}

/// The menu: items, what each selects, and the highlighted default. The
/// default is what a boot without the menu picks: the listing's default
/// entry (installed default or current generation), or the newest older
/// bootable generation. The guest's limit keeps the newest N generations
/// (and always the default's).
pub fn menu_items(l: &Listing, args: Option<&str>) -> (Vec<menu::Item>, Vec<Selection>, usize) {
    use crate::nixos::select::label;
    let mut items = Vec::new();
    let mut selections = Vec::new();
    let (mut anchor_at, mut default) = (None, None);
    let limit = l
        .guest_limit
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX)
        .max(1);
    let is_default_gen = |g: &Listed| match &l.default {
        Some(d) => d.number == g.number && d.profile == g.profile,
        None => g.current && g.profile.is_none(),
    };
    // The guest's limit applies to each profile's generations.
    let (mut shown, mut shown_profile) = (0usize, None::<&Option<String>>);
    for g in &l.generations {
        let Some(gen_) = &g.generation else { continue };
        if shown_profile != Some(&g.profile) {
            (shown, shown_profile) = (0, Some(&g.profile));
        }
        if shown >= limit && !is_default_gen(g) {
            continue;
        }
        shown = shown.saturating_add(1);
        for e in std::iter::once(&gen_.entry).chain(&gen_.specialisations) {
            let line = cmdline::build(Some(&e.init), &e.kernel_params, args);
            let is_spec = e.specialisation.is_some();
            let problem = if is_spec { None } else { g.problem.clone() };
            let problem = problem.or_else(|| line.as_ref().err().map(|x| x.to_string()));
            let is_anchor = match &l.default {
                Some(d) => d.number == g.number && d.profile == g.profile && d.specialisation == e.specialisation,
                None => g.current && g.profile.is_none() && !is_spec,
            };
            if is_anchor {
                anchor_at = Some(items.len());
            }
            if default.is_none() && anchor_at.is_some() && (is_anchor || !is_spec) && problem.is_none() {
                default = Some(items.len());
            }
            let entry = match (g.number, &e.specialisation) {
                (Some(n), Some(s)) => Some(format!("{n}/{s}")),
                (Some(n), None) => Some(n.to_string()),
                (None, _) => None,
            };
            selections.push(match (&g.profile, entry) {
                (Some(p), entry) => Selection::ProfileEntry {
                    profile: p.clone(),
                    entry,
                },
                (None, Some(entry)) => Selection::Entry(entry),
                (None, None) => Selection::Default,
            });
            items.push(menu::Item {
                label: label(e, g.mtime),
                cmdline: line.unwrap_or_default(),
                problem,
            });
        }
    }
    let default = default.or(anchor_at).unwrap_or(0);
    (items, selections, default)
}

/// `nixboot list`.
pub fn list(l: &ListArgs) -> Result<(), Error> {
    let disk = open_disk(&l.disk)?;
    let listing = listing(
        &disk,
        l.offset,
        KernelCache::from_env().known(),
        1u8.saturating_add(l.verbose),
    )?;
    let mut o = std::io::stdout().lock();
    let text = if l.json {
        crate::list::json(&listing)
    } else {
        crate::list::table(&listing)
    };
    o.write_all(text.as_bytes())
        .map_err(|e| Error::host("writing to stdout", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::EntryRef;
    use crate::nixos::{BootEntry, Generation, Origin};

    fn entry(n: u64, spec: Option<&str>) -> BootEntry {
        BootEntry {
            generation: Some(n),
            specialisation: spec.map(str::to_owned),
            kernel: "/k".into(),
            initrd: None,
            init: format!("/nix/store/g{n}/init"),
            kernel_params: vec![],
            toplevel: format!("/nix/store/g{n}"),
            nixos_version: "25.05".into(),
            origin: Origin::Bootspec,
            initrd_secrets: None,
            profile: None,
        }
    }

    /// Generations 5..=1 (5 current), each with a specialisation `s`;
    /// `broken` ones not bootable.
    fn listing(broken: &[u64]) -> Listing {
        Listing {
            generations: (1..=5)
                .rev()
                .map(|n| Listed {
                    generation: Some(Generation {
                        number: Some(n),
                        mtime: Some(0),
                        entry: entry(n, None),
                        specialisations: vec![entry(n, Some("s"))],
                        profile: None,
                    }),
                    number: Some(n),
                    current: n == 5,
                    mtime: Some(0),
                    problem: broken.contains(&n).then(|| "not a Xen PV kernel".into()),
                    profile: None,
                    xen_modes: Vec::new(),
                })
                .collect(),
            default: None,
            default_reason: None,
            guest_timeout: GuestTimeout::Unset,
            guest_limit: None,
        }
    }

    fn picked(l: &Listing) -> (usize, Selection) {
        let (items, sel, d) = menu_items(l, None);
        assert_eq!(items.len(), sel.len());
        (items.len(), sel[d].clone())
    }

    #[test]
    fn menu_default_follows_the_installed_default() {
        let mut l = listing(&[]);
        assert_eq!(picked(&l), (10, Selection::Entry("5".into())));
        l.default = Some(EntryRef {
            profile: None,
            number: Some(3),
            specialisation: Some("s".into()),
        });
        assert_eq!(picked(&l), (10, Selection::Entry("3/s".into())));
        l.default = Some(EntryRef {
            profile: None,
            number: Some(4),
            specialisation: None,
        });
        assert_eq!(picked(&l), (10, Selection::Entry("4".into())));
        // Not bootable: the newest older bootable generation, as a boot
        // without the menu does.
        let mut l = listing(&[4, 3]);
        l.default = Some(EntryRef {
            profile: None,
            number: Some(4),
            specialisation: None,
        });
        assert_eq!(picked(&l), (10, Selection::Entry("2".into())));
    }

    #[test]
    fn menu_limit_keeps_the_newest_and_the_default() {
        let mut l = listing(&[]);
        l.guest_limit = Some(2);
        assert_eq!(picked(&l), (4, Selection::Entry("5".into())));
        l.default = Some(EntryRef {
            profile: None,
            number: Some(1),
            specialisation: None,
        });
        let (items, sel, d) = menu_items(&l, None);
        assert_eq!(items.len(), 6);
        assert_eq!(sel[d], Selection::Entry("1".into()));
        l.guest_limit = Some(0);
        assert_eq!(
            menu_items(&l, None).0.len(),
            4,
            "a limit of 0 counts as 1, plus the default"
        );
    }

    #[test]
    fn menu_timeout_precedence_and_guest_cap() {
        assert_eq!(menu_timeout(None, GuestTimeout::Unset), DEFAULT_TIMEOUT);
        assert_eq!(menu_timeout(None, GuestTimeout::Seconds(3)), 3);
        assert_eq!(menu_timeout(None, GuestTimeout::Seconds(0)), 0);
        assert_eq!(
            menu_timeout(None, GuestTimeout::Seconds(86_400)),
            MAX_GUEST_MENU_TIMEOUT
        );
        assert_eq!(menu_timeout(None, GuestTimeout::WaitForKey), MAX_GUEST_MENU_TIMEOUT);
        assert_eq!(menu_timeout(Some(0), GuestTimeout::Seconds(9)), 0);
        assert_eq!(menu_timeout(Some(300), GuestTimeout::Seconds(9)), 300);
    }
}
