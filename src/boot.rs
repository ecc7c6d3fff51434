//! The guest-side pipeline: disk → partitions → guest filesystem → NixOS
//! generation → command line → kernel and initrd bytes. Guest data.
//!
//! Everything here runs inside the confined parse child (see
//! [`crate::sandbox`]) and talks to the parent only through
//! [`crate::ipc`] frames; it reads the disk through a [`BlockSource`] and
//! never touches the host filesystem, so it also runs in-process on bytes
//! for tests and fuzzing.

use std::io::Write;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::cmdline;
use crate::disk::{BlockSource, Window};
use crate::error::{Error, GuestError, escape};
use crate::guestfs::{FsError, GuestFs};
use crate::ipc::{self, Listed, Listing, Plan, Tag};
use crate::nixos::{self, NixosError, SYSTEM_PROFILE, select};
use crate::part::{self, Candidate};

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
}

/// Find the filesystem to boot: the first ext4 candidate that holds the
/// NixOS system profile (or, with `--kernel`, that holds that path).
pub fn open_system(src: Rc<dyn BlockSource>, offset: Option<u64>, want: &[u8]) -> Result<(GuestFs, Candidate), Error> {
    let candidates = part::candidates(src.as_ref(), offset)?;
    let mut tried = Vec::new();
    for c in candidates {
        let Some(window) = Window::new(src.clone(), c.offset, c.len) else {
            continue;
        };
        match GuestFs::open(window) {
            Ok(fs) => match fs.exists(want) {
                Ok(true) => {
                    log::debug!("using the filesystem in {c}");
                    return Ok((fs, c));
                }
                Ok(false) => tried.push(format!("{c}: ext4 without {}", escape(want))),
                Err(e) => tried.push(format!("{c}: {e}")),
            },
            Err(FsError::NotExt4) => tried.push(format!("{c}: not ext4")),
            Err(e) => tried.push(format!("{c}: {e}")),
        }
    }
    let detail = if tried.is_empty() {
        "no partitions and no filesystem found".to_owned()
    } else {
        tried.join("; ")
    };
    Err(Error::Guest(GuestError::Nixos(NixosError::UnknownEntry(format!(
        "no ext4 filesystem holding {} ({detail})",
        escape(want)
    )))))
}

/// Decide what to boot.
pub fn plan(fs: &GuestFs, found_in: &Candidate, req: &Request) -> Result<Plan, Error> {
    let (label, kernel, initrd, cmdline) = match &req.selection {
        Selection::Paths { kernel, ramdisk } => {
            let line = cmdline::build(None, &[], req.args.as_deref())?;
            (
                format!("{kernel} (from --kernel)"),
                kernel.clone(),
                ramdisk.clone(),
                line,
            )
        }
        sel => {
            let (entry, mtime) = match sel {
                Selection::Entry(spec) => select::select(fs, &select::parse_entry(spec))?,
                _ => {
                    let g = select::default_generation(fs)?;
                    (g.entry, g.mtime)
                }
            };
            if let Some(s) = &entry.initrd_secrets {
                log::warn!(
                    "this generation declares initrd secrets ({}); a dom0 loader cannot run the guest's appender, booting without them",
                    escape(s.as_bytes())
                );
            }
            let line = cmdline::build(Some(&entry.init), &entry.kernel_params, req.args.as_deref())?;
            (select::label(&entry, mtime), entry.kernel, entry.initrd, line)
        }
    };
    // Sizes and types only: send_file opens the files (each open walks
    // the path from the root again inside ext4-view).
    let (_, kernel_len) = fs
        .stat_regular(kernel.as_bytes(), req.max_kernel)
        .map_err(|e| too_large("kernel", e))?;
    let initrd = match initrd {
        Some(p) => {
            let (_, len) = fs
                .stat_regular(p.as_bytes(), req.max_initrd)
                .map_err(|e| too_large("initrd", e))?;
            Some((p, len))
        }
        None => None,
    };
    Ok(Plan {
        label,
        kernel,
        kernel_len,
        initrd,
        cmdline,
        found_in: found_in.to_string(),
    })
}

fn too_large(what: &'static str, e: FsError) -> Error {
    match e {
        FsError::TooLarge { path, len, cap } => Error::Guest(GuestError::TooLarge { what, path, len, cap }),
        e => Error::Guest(GuestError::Nixos(NixosError::Fs { what, source: e })),
    }
}

/// Stream one guest file as frames of `tag`, exactly `len` bytes.
fn send_file(fs: &GuestFs, path: &str, cap: u64, len: u64, tag: Tag, out: &mut dyn Write) -> Result<(), Error> {
    let (_, mut f, actual) = fs.open_regular(path.as_bytes(), cap)?;
    if actual != len {
        return Err(Error::Guest(GuestError::Fs(FsError::TooLarge {
            path: escape(path.as_bytes()),
            len: actual,
            cap: len,
        })));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let mut filled = 0usize;
        while filled < buf.len() && u64::try_from(filled).unwrap_or(u64::MAX) < left {
            let Some(dst) = buf.get_mut(filled..) else { break };
            let n = f.read_bytes(dst).map_err(|e| FsError::Read {
                path: escape(path.as_bytes()),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            filled = filled.saturating_add(n);
        }
        let take = usize::try_from(left.min(u64::try_from(filled).unwrap_or(0))).unwrap_or(0);
        if take == 0 {
            return Err(Error::Guest(GuestError::Fs(FsError::Io {
                path: escape(path.as_bytes()),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file ended early"),
            })));
        }
        ipc::write_frame(out, tag, buf.get(..take).unwrap_or_default())
            .map_err(|e| Error::host("sending file data", e))?;
        left = left.saturating_sub(u64::try_from(take).unwrap_or(0));
    }
    Ok(())
}

/// List every generation of the profile.
pub fn list(fs: &GuestFs) -> Result<Listing, Error> {
    let profile = nixos::read_profile(fs)?;
    let current = match &profile.current {
        nixos::Current::Generation(n) => Some(*n),
        nixos::Current::Direct(_) => None,
    };
    let mut generations = Vec::with_capacity(profile.links.len());
    for link in &profile.links {
        let loaded = nixos::load_generation(fs, &nixos::link_path(link.number), Some(link.number));
        let (generation, problem) = match loaded {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e.to_string())),
        };
        generations.push(Listed {
            generation,
            number: Some(link.number),
            current: current == Some(link.number),
            mtime: Some(link.mtime),
            problem,
        });
    }
    if current.is_none() {
        let g = nixos::load_generation(fs, SYSTEM_PROFILE, None);
        let (generation, problem) = match g {
            Ok(g) => (Some(g), None),
            Err(e) => (None, Some(e.to_string())),
        };
        generations.insert(
            0,
            Listed {
                generation,
                number: None,
                current: true,
                mtime: None,
                problem,
            },
        );
    }
    Ok(Listing { generations })
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
            let l = list(&fs)?;
            ipc::write_json(out, Tag::Listing, &l).map_err(|e| Error::host("sending listing", e))?;
        }
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
