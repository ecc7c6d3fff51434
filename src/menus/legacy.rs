//! GRUB legacy `menu.lst` / `grub.conf` (CentOS 6, old Debian and SUSE
//! guests): a nom line grammar (`keyword value` or `keyword=value`, `#`
//! comments) for `default` (an index or `saved`), `timeout`, `title`,
//! `root (hd0,0)`, `kernel`, `initrd`, `savedefault`. Guest data,
//! parse-child side.
//!
//! Legacy partition numbers count from 0 (`(hd0,0)` is the first
//! partition); [`Device::Partition`] counts from 1, so they are converted.
//! `default saved` reads the `default` file next to the config (what
//! `savedefault` writes).

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use nom::bytes::complete::{take_while, take_while1};
use nom::{IResult, Parser};

use super::{Budgeted, Device, Entry, FileRef, Menu, MenuError, MenuFiles, Timeout, check_size, parse_u32};
use crate::error::escape;
use crate::limits::MAX_MENU_ENTRIES;

/// Where the config was found.
#[derive(Clone, Debug)]
pub struct Context {
    /// Its directory on its filesystem (`/boot/grub`, `/grub`).
    pub dir: Vec<u8>,
}

type R<'a, T> = IResult<&'a [u8], T>;

/// `keyword value` or `keyword=value`.
fn directive(line: &[u8]) -> R<'_, (&[u8], &[u8])> {
    let blank = |c: u8| c == b' ' || c == b'\t';
    let (i, _) = take_while(blank).parse(line)?;
    let (i, kw) = take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'_').parse(i)?;
    let (i, _) = take_while(|c: u8| blank(c) || c == b'=').parse(i)?;
    Ok((&[], (kw, i.trim_ascii_end())))
}

/// A legacy device `(hd0,0)` / `(hd0)` / `(hd0,0,a)`, without parentheses.
fn legacy_device(name: &[u8]) -> Option<Device> {
    let mut parts = name.split(|c| *c == b',');
    let disk = parts.next().and_then(|d| d.strip_prefix(b"hd")).and_then(parse_u32);
    let part = parts.next();
    match (disk, part) {
        (Some(disk), None) => Some(Device::Partition { disk, part: None }),
        (Some(disk), Some(p)) => match parse_u32(p).and_then(|n| n.checked_add(1)) {
            Some(n) => Some(Device::Partition { disk, part: Some(n) }),
            None => Some(Device::Other(name.to_vec())),
        },
        _ => Some(Device::Other(name.to_vec())),
    }
}

/// Split a leading `(device)` off a path; the rest is the path.
fn split_device(word: &[u8]) -> (Option<Option<Device>>, &[u8]) {
    if let Some(inner) = word.strip_prefix(b"(")
        && let Some(close) = inner.iter().position(|c| *c == b')')
    {
        let dev = legacy_device(inner.get(..close).unwrap_or_default());
        return (Some(dev), inner.get(close.saturating_add(1)..).unwrap_or_default());
    }
    (None, word)
}

fn file_ref(word: &[u8], root: &Option<Device>) -> Result<FileRef, MenuError> {
    let (dev, path) = split_device(word);
    let device = match dev {
        Some(d) => d,
        None => root.clone(),
    };
    let mut p = Vec::with_capacity(path.len().saturating_add(1));
    if !path.starts_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(path);
    FileRef::new(device, p)
}

/// Parse a GRUB legacy menu.
pub fn parse(text: &[u8], ctx: &Context, files: &dyn MenuFiles) -> Result<Menu, MenuError> {
    check_size("menu.lst", u64::try_from(text.len()).unwrap_or(u64::MAX))?;
    let files = Budgeted::new(files);
    let mut menu = Menu::default();
    let mut entries: Vec<Entry> = Vec::new();
    let mut global_root: Option<Device> = None;
    let mut root: Option<Device> = None;
    let mut default: Option<Vec<u8>> = None;
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii_start().starts_with(b"#") {
            continue;
        }
        let Ok((_, (kw, rest))) = directive(line) else {
            continue;
        };
        let line_no = n.saturating_add(1);
        match kw {
            b"default" => default = Some(rest.to_vec()),
            b"timeout" => menu.timeout = parse_u32(rest).map(|t| Timeout::Secs(u64::from(t))),
            b"title" => {
                if entries.len() >= MAX_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "entries",
                        cap: MAX_MENU_ENTRIES,
                    });
                }
                let mut e = Entry::new(rest.to_vec());
                e.index = entries.len();
                e.problem = Some("the entry has no kernel line".into());
                entries.push(e);
                root = global_root.clone();
            }
            b"root" | b"rootnoverify" => {
                let (dev, _) = split_device(rest.split(u8::is_ascii_whitespace).next().unwrap_or_default());
                let dev = dev.flatten();
                if entries.is_empty() {
                    global_root = dev.clone();
                }
                root = dev;
            }
            b"kernel" => {
                let Some(e) = entries.last_mut() else { continue };
                let mut words = rest
                    .split(u8::is_ascii_whitespace)
                    .filter(|w| !w.is_empty())
                    .skip_while(|w| w.starts_with(b"--"));
                let Some(path) = words.next() else { continue };
                e.kernel = Some(file_ref(path, &root)?);
                e.args = words.collect::<Vec<_>>().join(&b' ');
                e.problem = None;
            }
            b"initrd" => {
                let Some(e) = entries.last_mut() else { continue };
                let path = rest.split(u8::is_ascii_whitespace).next().unwrap_or_default();
                if !path.is_empty() {
                    e.initrds = vec![file_ref(path, &root)?];
                }
            }
            b"chainloader" | b"module" | b"modulenounzip" | b"makeactive" => {
                if let Some(e) = entries.last_mut()
                    && e.kernel.is_none()
                {
                    e.problem = Some(format!("a {} entry, not a Linux kernel", escape(kw)));
                } else if let Some(e) = entries.last_mut()
                    && kw != b"makeactive"
                {
                    // kernel + module: a multiboot (Xen) entry.
                    e.problem = Some("a multiboot entry (a hypervisor such as Xen), not a Linux kernel".into());
                }
            }
            b"savedefault" | b"hiddenmenu" | b"splashimage" | b"password" | b"fallback" | b"color" | b"gfxmenu"
            | b"serial" | b"terminal" | b"lock" | b"boot" | b"quiet" => {}
            k => menu.note(format!("line {line_no}: skipped {}", escape(k))),
        }
    }
    if default.as_deref() == Some(b"saved") {
        let mut path = ctx.dir.clone();
        path.extend_from_slice(b"/default");
        default = files.read(None, &path)?.and_then(|d| {
            let first = d.split(|c| c.is_ascii_whitespace()).next().unwrap_or_default();
            parse_u32(first).map(|_| first.to_vec())
        });
    }
    // Legacy defaults are indexes only.
    menu.default = default.filter(|d| parse_u32(d).is_some());
    for e in entries {
        menu.push(e)?;
    }
    Ok(menu)
}
