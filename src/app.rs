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
use crate::error::{Error, EscapedBare, Fault, GuardedText};
use crate::ipc::{MAX_TEXT_FRAME, MenuEnd, MenuEntry, Plan, Tag};
use crate::limits::{
    DEFAULT_MAX_INITRD, DEFAULT_MAX_KERNEL, MAX_CMDLINE, MAX_GUEST_MENU_TIMEOUT, MAX_LISTING, MAX_MENU_ENTRIES,
    MAX_MENU_FRAME, MAX_MENU_TEXT, MAX_SPECIALISATIONS,
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

/// The output directory: `--output-directory`, or a private temporary
/// directory that is removed again unless the boot succeeds (the caller
/// keeps it then).
fn output_dir(a: &BootArgs) -> Result<(OutputDir, Option<tempfile::TempDir>), Error> {
    match &a.output_directory {
        Some(d) => Ok((OutputDir::open(d)?, None)),
        None => {
            let d = tempfile::Builder::new()
                .prefix("nixboot.")
                .tempdir()
                .map_err(|e| Error::host("creating a private output directory", e))?;
            log::info!("no --output-directory; copying into {}", d.path().display());
            Ok((OutputDir::open(d.path())?, Some(d)))
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

/// Receives the console menu: entry frames, each small and with bounded
/// fields, at most [`MAX_MENU_ENTRIES`] plus one generation's worth, then
/// the end frame. Whatever the disk, this holds a few MiB at most.
#[derive(Default)]
struct MenuFrames {
    items: Vec<menu::Item>,
    selections: Vec<Selection>,
    end: Option<MenuEnd>,
}

impl sandbox::Frames for MenuFrames {
    fn frame(&mut self, tag: Tag, data: &[u8]) -> Result<(), Error> {
        match tag {
            Tag::MenuEntry if self.end.is_none() => {
                if data.len() > MAX_MENU_FRAME
                    || self.items.len() > MAX_MENU_ENTRIES.saturating_add(MAX_SPECIALISATIONS)
                {
                    return Err(guest(format!(
                        "the parser sent more than {MAX_MENU_ENTRIES} menu entries or an entry of more than {MAX_MENU_FRAME} bytes"
                    )));
                }
                let e: MenuEntry = serde_json::from_slice(data)
                    .map_err(|e| guest(format!("the parser sent a malformed menu entry ({e})")))?;
                let name_len = e.entry.specialisation.as_ref().map_or(0, String::len);
                if e.label.len() > MAX_MENU_TEXT
                    || e.problem.as_ref().is_some_and(|p| p.len() > MAX_MENU_TEXT)
                    || e.cmdline.len() > MAX_CMDLINE
                    || name_len > MAX_MENU_TEXT
                {
                    return Err(guest("the parser sent an oversized menu entry".into()));
                }
                // The command line is only edited and sent back to the
                // child, which checks it again; the texts are shown.
                self.items.push(menu::Item {
                    label: sandbox::sanitize(&e.label),
                    cmdline: e.cmdline,
                    problem: e.problem.as_deref().map(sandbox::sanitize),
                });
                self.selections.push(match (e.entry.number, e.entry.specialisation) {
                    (Some(n), Some(s)) => Selection::Entry(format!("{n}/{s}")),
                    (Some(n), None) => Selection::Entry(n.to_string()),
                    (None, _) => Selection::Default,
                });
                Ok(())
            }
            Tag::MenuEnd if self.end.is_none() => {
                let end: MenuEnd = serde_json::from_slice(data)
                    .map_err(|e| guest(format!("the parser sent a malformed menu ({e})")))?;
                if end.default >= self.items.len().max(1) {
                    return Err(guest("the parser highlighted a menu entry that does not exist".into()));
                }
                self.end = Some(end);
                Ok(())
            }
            _ => Err(guest("the parser sent an unexpected frame".into())),
        }
    }

    fn data(&mut self, _: Tag, _: u64) -> Result<&mut std::fs::File, Error> {
        Err(guest("the parser sent an unexpected frame".into()))
    }
}

/// Receives `nixboot list` output as text frames: each checked again
/// ([`GuardedText`]: no control character but newlines reaches the
/// terminal) and written to a private temporary file, so the parent
/// holds one frame at a time and prints nothing unless the child
/// finishes; at most [`MAX_LISTING`] bytes in all.
struct TextFrames {
    out: std::io::BufWriter<std::fs::File>,
    bytes: usize,
}

impl sandbox::Frames for TextFrames {
    fn frame(&mut self, tag: Tag, data: &[u8]) -> Result<(), Error> {
        match tag {
            Tag::Text => {
                self.bytes = self.bytes.saturating_add(data.len());
                if data.len() > MAX_TEXT_FRAME || self.bytes > MAX_LISTING {
                    return Err(guest(format!(
                        "the parser sent more than {MAX_LISTING} bytes of listing"
                    )));
                }
                write!(self.out, "{}", GuardedText(data)).map_err(|e| Error::host("buffering the listing", e))
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
    let (dir, private_dir) = if a.not_really {
        (None, None)
    } else {
        let (d, t) = output_dir(a)?;
        (Some(d), t)
    };
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
        cache.remember(&plan.kernel_key);
    }
    // Success: the private directory holds the copies libxl will read.
    if let Some(t) = private_dir {
        let _ = t.keep();
    }
    sandbox::log_usage();
    Ok(())
}

/// Log what boots and why: the one summary line (shown even with `-q`,
/// which libxl passes in restricted mode) and the details. Everything the
/// child sent is guest data: escaped.
fn log_plan(plan: &Plan, why: &Option<String>) {
    // Sanitized on arrival (`BootFrames::frame`); the child escaped the
    // guest strings in them already.
    let e = |s: &str| s.to_owned();
    let why = why
        .clone()
        .or_else(|| plan.reason.as_deref().map(sandbox::sanitize))
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
    log::info!("kernel {} ({} bytes)", e(&plan.kernel), plan.kernel_len);
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

fn listing_request(mode: Mode, offset: Option<u64>, args: Option<String>, known_pv: Vec<String>) -> Request {
    Request {
        mode,
        offset,
        selection: Selection::Default,
        args,
        max_kernel: DEFAULT_MAX_KERNEL,
        max_initrd: DEFAULT_MAX_INITRD,
        send_data: false,
        known_pv,
        cmdline_override: None,
    }
}

/// Show the console menu; the selection and any edited command line.
fn menu_choice(disk: &Disk, a: &BootArgs, cache: &KernelCache) -> Result<(Selection, Option<String>), Error> {
    let request = listing_request(Mode::Menu, a.offset, a.args.clone(), cache.known());
    let confinement = Confinement {
        runas: None,
        verbosity: a.verbosity(),
    };
    let mut rx = MenuFrames::default();
    sandbox::run_child(disk, &request, &confinement, &mut rx)?;
    let MenuFrames { items, selections, end } = rx;
    let end = end.ok_or_else(|| guest("the parser finished without a menu".into()))?;
    let timeout = menu_timeout(a.timeout, end.guest_timeout);
    if timeout == 0 {
        log::debug!("menu timeout 0 (the guest's boot.loader.timeout): no menu");
        return Ok((Selection::Default, None));
    }
    // Nothing to choose from: no menu, and no countdown to wait through
    // before the error.
    if items.iter().all(|i| i.problem.is_some()) {
        return Ok((Selection::Default, None));
    }
    let choice = menu::run(items, end.default, std::time::Duration::from_secs(timeout))
        .map_err(|e| Error::host("running the console menu", e))?;
    if !choice.interactive {
        return Ok((Selection::Default, None));
    }
    let sel = selections.get(choice.index).cloned().unwrap_or(Selection::Default);
    Ok((sel, choice.cmdline))
}

/// `nixboot list`.
pub fn list(l: &ListArgs) -> Result<(), Error> {
    let disk = open_disk(&l.disk)?;
    let request = listing_request(
        Mode::List { json: l.json },
        l.offset,
        None,
        KernelCache::from_env().known(),
    );
    let confinement = Confinement {
        runas: None,
        verbosity: 1u8.saturating_add(l.verbose),
    };
    let file = tempfile::tempfile().map_err(|e| Error::host("creating a file for the listing", e))?;
    let mut rx = TextFrames {
        out: std::io::BufWriter::new(file),
        bytes: 0,
    };
    sandbox::run_child(&disk, &request, &confinement, &mut rx)?;
    let mut file = rx
        .out
        .into_inner()
        .map_err(|e| Error::host("buffering the listing", e.into_error()))?;
    use std::io::Seek;
    file.rewind().map_err(|e| Error::host("reading the listing back", e))?;
    let mut o = std::io::stdout().lock();
    std::io::copy(&mut file, &mut o).map_err(|e| Error::host("writing to stdout", e))?;
    o.flush().map_err(|e| Error::host("writing to stdout", e))?;
    sandbox::log_usage();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
