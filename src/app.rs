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
use crate::error::{Error, Fault};
use crate::ipc::{Listed, Listing, Plan, Tag};
use crate::limits::{DEFAULT_MAX_INITRD, DEFAULT_MAX_KERNEL, MAX_CMDLINE, MAX_GENERATIONS, MAX_LISTING};
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
    generations: Vec<Listed>,
    bytes: usize,
}

impl sandbox::Frames for ListFrames {
    fn frame(&mut self, tag: Tag, data: &[u8]) -> Result<(), Error> {
        match tag {
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
    let selection = match (&a.kernel, &a.entry) {
        (Some(k), _) => Selection::Paths {
            kernel: k.clone(),
            ramdisk: a.ramdisk.clone(),
        },
        (None, Some(e)) => Selection::Entry(e.clone()),
        (None, None) if wants_menu(a) => {
            let (sel, edited) = menu_choice(&disk, a, &cache)?;
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
    log::info!("booting {} from {}", plan.label, plan.found_in);
    log::info!("kernel {} ({} bytes)", plan.kernel, plan.kernel_len);
    if let Some((p, len)) = &plan.initrd {
        log::info!("initrd {p} ({len} bytes)");
    }
    log::info!("command line: {}", plan.cmdline);
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
    if plan.kernel_verified {
        cache.remember(&plan.kernel_key);
    }
    Ok(())
}

fn wants_menu(a: &BootArgs) -> bool {
    use std::io::IsTerminal;
    !a.quiet && a.runas.is_none() && !a.not_really && a.timeout > 0 && std::io::stdin().is_terminal()
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
    };
    let confinement = Confinement { runas: None, verbosity };
    let mut rx = ListFrames {
        generations: Vec::new(),
        bytes: 0,
    };
    sandbox::run_child(disk, &request, &confinement, &mut rx)?;
    let generations = rx.generations;
    Ok(Listing { generations })
}

/// Show the console menu; the selection and any edited command line.
fn menu_choice(disk: &Disk, a: &BootArgs, cache: &KernelCache) -> Result<(Selection, Option<String>), Error> {
    use crate::menu::{self, Item};
    use crate::nixos::select::label;
    let l = listing(disk, a.offset, cache.known(), a.verbosity())?;
    let mut items = Vec::new();
    let mut selections = Vec::new();
    let (mut current_at, mut default) = (None, None);
    for g in &l.generations {
        let Some(gen_) = &g.generation else { continue };
        for e in std::iter::once(&gen_.entry).chain(&gen_.specialisations) {
            let line = cmdline::build(Some(&e.init), &e.kernel_params, a.args.as_deref());
            let is_spec = e.specialisation.is_some();
            let problem = if is_spec { None } else { g.problem.clone() };
            let problem = problem.or_else(|| line.as_ref().err().map(|x| x.to_string()));
            if g.current && !is_spec {
                current_at = Some(items.len());
            }
            // The default is what a boot without the menu picks: the current
            // generation, or the newest older bootable one.
            if default.is_none() && current_at.is_some() && !is_spec && problem.is_none() {
                default = Some(items.len());
            }
            selections.push(match (g.number, &e.specialisation) {
                (Some(n), Some(s)) => Selection::Entry(format!("{n}/{s}")),
                (Some(n), None) => Selection::Entry(n.to_string()),
                (None, _) => Selection::Default,
            });
            items.push(Item {
                label: label(e, g.mtime),
                cmdline: line.unwrap_or_default(),
                problem,
            });
        }
    }
    if items.is_empty() {
        return Ok((Selection::Default, None));
    }
    let default = default.or(current_at).unwrap_or(0);
    let choice = menu::run(items, default, std::time::Duration::from_secs(a.timeout))
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
