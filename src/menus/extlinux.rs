//! extlinux / syslinux / isolinux configs: a nom line grammar (keywords
//! case-insensitive, `#` comments) for `DEFAULT`, `LABEL`, `MENU LABEL`,
//! `MENU DEFAULT`, `KERNEL`/`LINUX`, `INITRD` (comma list), `APPEND` (with
//! `initrd=` taken out of it), `TIMEOUT` (tenths of a second) and
//! `INCLUDE`/`MENU INCLUDE` (capped depth). Guest data, parse-child side.
//!
//! Relative paths are resolved against the config file's directory, as
//! syslinux does (NixOS's generic-extlinux-compatible builder writes
//! `../nixos/<hash>-bzImage` from `/boot/extlinux/extlinux.conf`); every
//! file is on the config's filesystem (`device: None`).

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

use super::{Budgeted, Entry, FileRef, Menu, MenuError, MenuFiles, Timeout, check_size, parse_u32, resolve_relative};
use crate::error::escape;
use crate::limits::{MAX_MENU_ENTRIES, MAX_MENU_INCLUDE_DEPTH};

/// Where the config was found.
#[derive(Clone, Debug)]
pub struct Context {
    /// Its directory on its filesystem (`/boot/extlinux`): relative paths
    /// and includes start there.
    pub dir: Vec<u8>,
}

#[derive(Default)]
struct Label {
    label: Vec<u8>,
    menu_label: Option<Vec<u8>>,
    /// Path, and whether it was given with `LINUX` (always a Linux kernel).
    kernel: Option<(Vec<u8>, bool)>,
    initrd: Option<Vec<u8>>,
    append: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    labels: Vec<Label>,
    default: Option<Vec<u8>>,
    menu_default: Option<Vec<u8>>,
    timeout: Option<Timeout>,
    append: Option<Vec<u8>>,
    menu: Menu,
}

type R<'a, T> = IResult<&'a [u8], T>;

/// `KEYWORD rest` with the keyword lowercased; `MENU X rest` gives
/// `menu x`.
fn directive(line: &[u8]) -> R<'_, (Vec<u8>, &[u8])> {
    let blank = |c: u8| c == b' ' || c == b'\t';
    let (i, _) = take_while(blank).parse(line)?;
    let (i, kw) = take_while1(|c: u8| c.is_ascii_alphanumeric() || c == b'_').parse(i)?;
    let (i, _) = take_while(blank).parse(i)?;
    let mut k = kw.to_ascii_lowercase();
    if k == b"menu" {
        let (j, sub) = take_while(|c: u8| c.is_ascii_alphanumeric()).parse(i)?;
        let (j, _) = take_while(blank).parse(j)?;
        k.push(b' ');
        k.extend_from_slice(&sub.to_ascii_lowercase());
        return Ok((&[], (k, j.trim_ascii_end())));
    }
    Ok((&[], (k, i.trim_ascii_end())))
}

fn read(st: &mut State, text: &[u8], ctx: &Context, files: &Budgeted<'_>, depth: u32) -> Result<(), MenuError> {
    check_size("extlinux config", u64::try_from(text.len()).unwrap_or(u64::MAX))?;
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii_start().starts_with(b"#") {
            continue;
        }
        let Ok((_, (kw, rest))) = directive(line) else {
            continue;
        };
        let line_no = n.saturating_add(1);
        match kw.as_slice() {
            b"default" => {
                // `DEFAULT menu.c32` names the UI, not an entry.
                if !rest.to_ascii_lowercase().ends_with(b".c32") {
                    st.default = Some(rest.to_vec());
                }
            }
            b"label" => {
                if st.labels.len() >= MAX_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "entries",
                        cap: MAX_MENU_ENTRIES,
                    });
                }
                st.labels.push(Label {
                    label: rest.to_vec(),
                    ..Default::default()
                });
            }
            b"menu label" => {
                if let Some(l) = st.labels.last_mut() {
                    l.menu_label = Some(rest.iter().copied().filter(|c| *c != b'^').collect());
                }
            }
            b"menu default" => {
                if let Some(l) = st.labels.last() {
                    st.menu_default = Some(l.label.clone());
                }
            }
            b"kernel" | b"linux" => {
                if let Some(l) = st.labels.last_mut() {
                    l.kernel = Some((rest.to_vec(), kw == b"linux"));
                }
            }
            b"initrd" => {
                if let Some(l) = st.labels.last_mut() {
                    l.initrd = Some(rest.to_vec());
                }
            }
            b"append" => match st.labels.last_mut() {
                Some(l) => l.append = Some(rest.to_vec()),
                None => st.append = Some(rest.to_vec()),
            },
            b"timeout" => {
                st.timeout = parse_u32(rest).map(|t| match t {
                    0 => Timeout::Forever,
                    t => Timeout::Secs(u64::from(t.div_ceil(10))),
                });
            }
            b"include" | b"menu include" => {
                let file = rest.split(u8::is_ascii_whitespace).next().unwrap_or_default();
                if depth >= MAX_MENU_INCLUDE_DEPTH {
                    return Err(MenuError::TooDeep {
                        what: "includes",
                        cap: MAX_MENU_INCLUDE_DEPTH,
                    });
                }
                let path = resolve_relative(&ctx.dir, file);
                match files.read(None, &path)? {
                    Some(t) => read(st, &t, ctx, files, depth.saturating_add(1))?,
                    None => st
                        .menu
                        .note(format!("line {line_no}: include {}: no such file", escape(&path))),
                }
            }
            b"ui" | b"prompt" | b"say" | b"fdt" | b"fdtdir" | b"fdtoverlays" | b"ipappend" | b"sysappend"
            | b"localboot" | b"totaltimeout" | b"ontimeout" | b"onerror" | b"serial" | b"console" | b"font"
            | b"display" | b"implicit" | b"allowoptions" | b"noescape" | b"nocomplete" | b"path" => {}
            k if k.starts_with(b"menu ") => {}
            k if k.starts_with(b"f") && k.len() <= 3 => {}
            k => st.menu.note(format!("line {line_no}: skipped {}", escape(k))),
        }
    }
    Ok(())
}

/// Files an `APPEND` line names with `initrd=`, and the line without them.
fn split_append(append: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut initrd = None;
    let mut args: Vec<&[u8]> = Vec::new();
    for w in append.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
        match w.strip_prefix(b"initrd=") {
            Some(v) => initrd = Some(v.to_vec()),
            None => args.push(w),
        }
    }
    (initrd, args.join(&b' '))
}

/// Parse an extlinux/syslinux config (and what it includes).
pub fn parse(text: &[u8], ctx: &Context, files: &dyn MenuFiles) -> Result<Menu, MenuError> {
    let budget = Budgeted::new(files);
    let mut st = State::default();
    read(&mut st, text, ctx, &budget, 0)?;
    let mut menu = std::mem::take(&mut st.menu);
    for (index, l) in st.labels.into_iter().enumerate() {
        let mut e = Entry::new(l.menu_label.clone().unwrap_or_else(|| l.label.clone()));
        e.id = Some(l.label.clone());
        e.index = index;
        let append = l.append.as_ref().or(st.append.as_ref());
        let (append_initrd, args) = match append.map(Vec::as_slice) {
            None | Some(b"-") => (None, Vec::new()),
            Some(a) => split_append(a),
        };
        e.args = args;
        if let Some(list) = l.initrd.or(append_initrd) {
            for p in list
                .split(|c| *c == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty())
            {
                if e.initrds.len() >= MAX_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "initrds",
                        cap: MAX_MENU_ENTRIES,
                    });
                }
                e.initrds.push(FileRef::new(None, resolve_relative(&ctx.dir, p))?);
            }
        }
        match l.kernel {
            Some((k, linux)) => {
                let lower = k.to_ascii_lowercase();
                let module = [&b".c32"[..], b".com", b".cbt", b".bin", b".bs", b".bss", b".0"]
                    .iter()
                    .any(|s| lower.ends_with(s));
                if module && !linux {
                    e.problem = Some(format!("{} is a syslinux module, not a Linux kernel", escape(&k)));
                } else {
                    e.kernel = Some(FileRef::new(None, resolve_relative(&ctx.dir, &k))?);
                }
            }
            None => e.problem = Some("the label has no KERNEL or LINUX line".into()),
        }
        menu.push(e)?;
    }
    menu.default = st.menu_default.or(st.default);
    menu.timeout = st.timeout;
    Ok(menu)
}
