//! Boot Loader Specification Type #1 entries (`loader/entries/*.conf`) and
//! `loader/loader.conf`: a nom line grammar (`key value`, `#` comments),
//! the specification's ordering (sort-key, machine-id, version, file name)
//! and its version comparison. Guest data, parse-child side.
//!
//! Paths in an entry are relative to the root of the filesystem that holds
//! the entries, so they are [`FileRef`]s on that filesystem (`device: None`
//! when read directly; `$root`'s device when GRUB's `blscfg` reads them).
//! Read directly, values are taken literally (systemd-boot does not expand
//! `$kernelopts`); through [`super::grub`] they are expanded as GRUB does.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cmp::Ordering;

use nom::bytes::complete::{take_till, take_while, take_while1};
use nom::{IResult, Parser};

use super::{Budgeted, Device, Entry, FileRef, Menu, MenuError, MenuFiles, Timeout, check_size, parse_u32};
use crate::error::escape;
use crate::limits::MAX_GUEST_MENU_ENTRIES;

/// One parsed entry file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlsEntry {
    /// The file name without `.conf`: the entry's id.
    pub id: Vec<u8>,
    /// `title`.
    pub title: Option<Vec<u8>>,
    /// `version`.
    pub version: Option<Vec<u8>>,
    /// `machine-id`.
    pub machine_id: Option<Vec<u8>>,
    /// `sort-key`.
    pub sort_key: Option<Vec<u8>>,
    /// `linux`.
    pub linux: Option<Vec<u8>>,
    /// `efi` (a PE image: not bootable as a PV kernel).
    pub efi: Option<Vec<u8>>,
    /// `initrd` lines, in order (each may name several files).
    pub initrds: Vec<Vec<u8>>,
    /// `options` lines, in order (joined with spaces).
    pub options: Vec<Vec<u8>>,
}

type R<'a, T> = IResult<&'a [u8], T>;

/// `key value` (value trimmed; may be empty).
fn key_value(i: &[u8]) -> R<'_, (&[u8], &[u8])> {
    let (i, _) = take_while(|c| c == b' ' || c == b'\t').parse(i)?;
    let (i, key) = take_while1(|c: u8| !c.is_ascii_whitespace()).parse(i)?;
    let (i, _) = take_while(|c| c == b' ' || c == b'\t').parse(i)?;
    let (i, value) = take_till(|c| c == b'\n').parse(i)?;
    Ok((i, (key, value.trim_ascii_end())))
}

/// The `key value` lines of a BLS-style file (entries, `loader.conf`).
fn lines(text: &[u8]) -> Vec<(&[u8], &[u8])> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii_start().starts_with(b"#"))
        .filter_map(|l| key_value(l).ok().map(|(_, kv)| kv))
        .collect()
}

/// Parse one entry file; `id` is its file name without `.conf`.
pub fn parse_entry(id: &[u8], text: &[u8]) -> Result<BlsEntry, MenuError> {
    check_size(&escape(id), u64::try_from(text.len()).unwrap_or(u64::MAX))?;
    let mut e = BlsEntry {
        id: id.to_vec(),
        ..Default::default()
    };
    for (k, v) in lines(text) {
        let v = v.to_vec();
        match k {
            b"title" => e.title = Some(v),
            b"version" => e.version = Some(v),
            b"machine-id" => e.machine_id = Some(v),
            b"sort-key" => e.sort_key = Some(v),
            b"linux" => e.linux = Some(v),
            b"efi" => e.efi = Some(v),
            b"initrd" => {
                if e.initrds.len() >= MAX_GUEST_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "initrd lines",
                        cap: MAX_GUEST_MENU_ENTRIES,
                    });
                }
                e.initrds.push(v);
            }
            b"options" => {
                if e.options.len() >= MAX_GUEST_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "options lines",
                        cap: MAX_GUEST_MENU_ENTRIES,
                    });
                }
                e.options.push(v);
            }
            _ => {}
        }
    }
    Ok(e)
}

impl BlsEntry {
    /// The menu entry, files on `device`; values literal.
    pub fn to_entry(&self, device: Option<Device>) -> Result<Entry, MenuError> {
        let mut e = Entry::new(self.title.clone().unwrap_or_else(|| self.id.clone()));
        e.id = Some(self.id.clone());
        match (&self.linux, &self.efi) {
            (Some(k), _) => e.kernel = Some(FileRef::new(device.clone(), absolute(k))?),
            (None, Some(_)) => e.problem = Some("an EFI image entry, not a Linux kernel".into()),
            (None, None) => e.problem = Some("the entry has no linux line".into()),
        }
        for line in &self.initrds {
            for p in line.split(u8::is_ascii_whitespace).filter(|p| !p.is_empty()) {
                if e.initrds.len() >= MAX_GUEST_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "initrds",
                        cap: MAX_GUEST_MENU_ENTRIES,
                    });
                }
                e.initrds.push(FileRef::new(device.clone(), absolute(p))?);
            }
        }
        e.args = self.options.join(&b' ');
        Ok(e)
    }
}

fn absolute(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len().saturating_add(1));
    if !p.starts_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(p);
    out
}

/// The specification's order: entries with a `sort-key` first, by
/// sort-key, then machine-id, then version (newest first); the rest by
/// file name, newest version first.
pub fn compare(a: &BlsEntry, b: &BlsEntry) -> Ordering {
    match (&a.sort_key, &b.sort_key) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| {
                version_cmp(
                    a.version.as_deref().unwrap_or_default(),
                    b.version.as_deref().unwrap_or_default(),
                )
                .reverse()
            })
            .then_with(|| version_cmp(&a.id, &b.id).reverse()),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => version_cmp(&a.id, &b.id).reverse(),
    }
}

/// The UAPI version comparison (`strverscmp_improved`): `~` sorts before
/// everything, then the end of the string, then `-`, `^`, `.`; digit runs
/// compare as numbers, letter runs as text, and digits beat letters.
pub fn version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let valid = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.');
    let (mut a, mut b) = (a, b);
    loop {
        while let Some((&c, rest)) = a.split_first().filter(|(c, _)| !valid(**c)) {
            let _ = c;
            a = rest;
        }
        while let Some((_, rest)) = b.split_first().filter(|(c, _)| !valid(**c)) {
            b = rest;
        }
        let (ca, cb) = (a.first().copied(), b.first().copied());
        // `~` first: older than anything, even the end.
        if ca == Some(b'~') || cb == Some(b'~') {
            match (ca == Some(b'~'), cb == Some(b'~')) {
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                _ => {
                    a = a.get(1..).unwrap_or_default();
                    b = b.get(1..).unwrap_or_default();
                    continue;
                }
            }
        }
        match (ca, cb) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        let mut sep = false;
        for s in [b'-', b'^', b'.'] {
            if ca == Some(s) || cb == Some(s) {
                match (ca == Some(s), cb == Some(s)) {
                    (true, false) => return Ordering::Less,
                    (false, true) => return Ordering::Greater,
                    _ => {
                        a = a.get(1..).unwrap_or_default();
                        b = b.get(1..).unwrap_or_default();
                        sep = true;
                        break;
                    }
                }
            }
        }
        if sep {
            continue;
        }
        let (da, db) = (
            ca.is_some_and(|c| c.is_ascii_digit()),
            cb.is_some_and(|c| c.is_ascii_digit()),
        );
        if da || db {
            if da != db {
                return if da { Ordering::Greater } else { Ordering::Less };
            }
            let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
            let (na, nb) = (run(a), run(b));
            let (xa, ra) = a.split_at(na);
            let (xb, rb) = b.split_at(nb);
            let strip = |s: &[u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
            let xa = xa.get(strip(xa)..).unwrap_or_default();
            let xb = xb.get(strip(xb)..).unwrap_or_default();
            let o = xa.len().cmp(&xb.len()).then_with(|| xa.cmp(xb));
            if o != Ordering::Equal {
                return o;
            }
            a = ra;
            b = rb;
        } else {
            let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let (na, nb) = (run(a), run(b));
            let (xa, ra) = a.split_at(na);
            let (xb, rb) = b.split_at(nb);
            let o = xa.cmp(xb);
            if o != Ordering::Equal {
                return o;
            }
            a = ra;
            b = rb;
        }
    }
}

/// Read and sort the entries of `dir` (`*.conf`, dot files skipped).
pub(crate) fn read_dir(
    files: &Budgeted<'_>,
    device: Option<&Device>,
    dir: &[u8],
    menu: &mut Menu,
) -> Result<Vec<BlsEntry>, MenuError> {
    let mut names: Vec<Vec<u8>> = files
        .list(device, dir)?
        .into_iter()
        .filter(|n| n.ends_with(b".conf") && !n.starts_with(b"."))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut path = dir.to_vec();
        path.push(b'/');
        path.extend_from_slice(&name);
        let Some(text) = files.read(device, &path)? else {
            menu.note(format!("{} could not be read", escape(&path)));
            continue;
        };
        let id = name.strip_suffix(b".conf").unwrap_or(&name);
        out.push(parse_entry(id, &text)?);
    }
    out.sort_by(compare);
    Ok(out)
}

/// `*` and `?` glob, as `loader.conf`'s `default` uses.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while t < s.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some(p);
                mark = t;
                p = p.saturating_add(1);
            }
            Some(&c) if c == b'?' || Some(&c) == s.get(t) => {
                p = p.saturating_add(1);
                t = t.saturating_add(1);
            }
            _ => match star {
                Some(sp) => {
                    p = sp.saturating_add(1);
                    mark = mark.saturating_add(1);
                    t = mark;
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).unwrap_or_default().iter().all(|c| *c == b'*')
}

/// The menu of a `loader/entries` directory `dir` on the filesystem
/// `files` reads (files on it: `device: None`), with `loader.conf`'s
/// `default` (a glob over entry ids, `.conf` included or not) and `timeout`
/// from the directory above.
pub fn parse(files: &dyn MenuFiles, dir: &[u8]) -> Result<Menu, MenuError> {
    let files = Budgeted::new(files);
    let mut menu = Menu::default();
    let entries = read_dir(&files, None, dir, &mut menu)?;
    for b in &entries {
        let e = b.to_entry(None)?;
        menu.push(e)?;
    }
    let parent = match dir.iter().rposition(|c| *c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => dir.get(..i).unwrap_or_default().to_vec(),
    };
    let mut conf = parent;
    if !conf.ends_with(b"/") {
        conf.push(b'/');
    }
    conf.extend_from_slice(b"loader.conf");
    if let Some(text) = files.read(None, &conf)? {
        check_size("loader.conf", u64::try_from(text.len()).unwrap_or(u64::MAX))?;
        for (k, v) in lines(&text) {
            match k {
                b"timeout" => {
                    menu.timeout = match v {
                        b"menu-force" => Some(Timeout::Forever),
                        _ => parse_u32(v).map(|n| Timeout::Secs(u64::from(n))),
                    }
                }
                b"default" => {
                    menu.default = entries
                        .iter()
                        .find(|b| {
                            let mut with = b.id.clone();
                            with.extend_from_slice(b".conf");
                            glob(v, &b.id) || glob(v, &with)
                        })
                        .map(|b| b.id.clone());
                }
                _ => {}
            }
        }
    }
    Ok(menu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        use Ordering::*;
        for (a, b, o) in [
            (&b"1.0"[..], &b"1.0"[..], Equal),
            (b"1.10", b"1.9", Greater),
            (b"6.5.6-300.fc39.x86_64", b"6.5.12-300.fc39.x86_64", Less),
            (b"1.0~rc1", b"1.0", Less),
            (b"1.0", b"1.0-1", Less),
            (b"1.0^post1", b"1.0", Greater),
            (b"1.0a", b"1.0", Greater),
            (b"1.0a", b"1.01", Less),
            (b"001", b"1", Equal),
            (b"a-10", b"a-5", Greater),
            (b"b", b"a-10", Greater),
        ] {
            assert_eq!(version_cmp(a, b), o, "{} vs {}", escape(a), escape(b));
            assert_eq!(version_cmp(b, a), o.reverse());
        }
    }

    /// The ordering systemd's test-bootspec.c expects for its sample entries.
    #[test]
    fn spec_order() {
        let mk = |id: &str, sk: Option<&str>, v: &str, m: &str| BlsEntry {
            id: id.into(),
            sort_key: sk.map(Into::into),
            version: Some(v.into()),
            machine_id: Some(m.into()),
            ..Default::default()
        };
        let mut v = [
            mk("a-10", None, "10", "dd"),
            mk("a-5", None, "5", "dd"),
            mk("b", None, "3", "b7"),
            mk("c", Some("xxxx"), "5", "30"),
            mk("cx", Some("xxxx"), "10", "30"),
            mk("d", Some("kkkk"), "100", "81"),
        ];
        v.sort_by(compare);
        let ids: Vec<&[u8]> = v.iter().map(|e| e.id.as_slice()).collect();
        assert_eq!(ids, [&b"d"[..], b"cx", b"c", b"b", b"a-10", b"a-5"]);
    }

    #[test]
    fn globs() {
        assert!(glob(b"fedora-*", b"fedora-6.5"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a*d", b"abc"));
    }
}
