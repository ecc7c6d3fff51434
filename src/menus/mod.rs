//! The guest's own boot menus: GRUB 2 `grub.cfg`, Boot Loader Specification
//! Type #1 entries, extlinux/syslinux configs and GRUB legacy `menu.lst`,
//! parsed into one typed [`Menu`]. Guest data, parse-child side.
//!
//! Each format is a grammar parsed with nom ([`grub`], [`bls`],
//! [`extlinux`], [`legacy`]); **nothing is ever executed**. GRUB scripts
//! are evaluated only as far as the menus that `grub-mkconfig`,
//! `update-grub` and NixOS write need: variables, `if` with the tests they
//! use, `load_env`, `search`, `blscfg`; any other command is skipped with a
//! debug line and a [`Menu::notes`] entry. The evaluators never touch a
//! filesystem: what they need besides the menu itself (grubenv, BLS entry
//! files, included files) they ask of a [`MenuFiles`], which the caller
//! implements over the guest's filesystems and tests implement over
//! in-memory maps ([`MemFiles`]).
//!
//! A file a menu names is a [`FileRef`]: a path plus, when the menu says
//! so, the [`Device`] it is on (`search --fs-uuid`, `set root=(hd0,gpt2)`,
//! `($drive1)/…`, legacy `root (hd0,0)`). The caller resolves it against
//! the disk's filesystems later; `None` means "the filesystem the menu was
//! read from".
//!
//! Every count, depth and length here comes from the guest and is capped
//! by a constant of [`crate::limits`] (`MAX_MENU_*`). Selection
//! ([`select`]) is pure too: the menu's default, `--entry=N` (0-based, over
//! the flattened menu, as pygrub), `--entry=TITLE` and
//! `--entry='Submenu>TITLE'`.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod bls;
pub mod disk;
pub mod extlinux;
pub mod grub;
pub mod legacy;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use crate::error::{EscapedBare, escape};
use crate::limits::{
    MAX_MENU_CONFIG, MAX_MENU_ENTRIES, MAX_MENU_FILES, MAX_MENU_NOTES, MAX_MENU_READ_TOTAL, MAX_PATH_LEN,
};

/// Which grammar a menu was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MenuKind {
    /// GRUB 2 `grub.cfg`.
    Grub,
    /// Boot Loader Specification Type #1 entries.
    Bls,
    /// extlinux / syslinux / isolinux.
    Extlinux,
    /// GRUB legacy `menu.lst` / `grub.conf`.
    Legacy,
}

impl MenuKind {
    /// The name `--menu=` takes and diagnostics print.
    pub fn name(self) -> &'static str {
        match self {
            MenuKind::Grub => "grub",
            MenuKind::Bls => "bls",
            MenuKind::Extlinux => "extlinux",
            MenuKind::Legacy => "legacy",
        }
    }
}

/// The device a menu names for a file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Device {
    /// The filesystem with this UUID (`search --fs-uuid`), as the menu
    /// spells it (`1234-ABCD`, `0f2c7e11-4b0a-…`).
    FsUuid(Vec<u8>),
    /// The filesystem with this label (`search --label`).
    Label(Vec<u8>),
    /// The filesystem that holds this file (`search --file`).
    File(Vec<u8>),
    /// A BIOS disk and partition: `(hd0,msdos1)`, `(hd0,gpt2)`, legacy
    /// `(hd0,0)`, `(xen/xvda,1)`. `disk` counts from 0; `part` from 1 (legacy
    /// numbers are converted); `None` is the whole disk.
    Partition {
        /// Disk number (`hd0` = 0, `xvda` = 0).
        disk: u32,
        /// Partition number counted from 1, `None` for the whole disk.
        part: Option<u32>,
    },
    /// A device nixboot cannot map to a partition (`(lvm/vg-root)`,
    /// `(md/0)`, `(cd)`): kept for diagnostics.
    Other(Vec<u8>),
}

/// Prefix of the device names [`grub`]'s `search` gives variables
/// (`search:fs-uuid=…`): GRUB's own names never contain a colon.
pub(crate) const SEARCH_PREFIX: &[u8] = b"search:";

impl Device {
    /// Parse a GRUB device name, without its parentheses: `hd0,msdos1`,
    /// `hd0,gpt2`, `hd0,1`, `hd0`, `xen/xvda,1`, or the `search:…` names
    /// the evaluator gives variables. Empty → `None`.
    pub fn parse_grub(name: &[u8]) -> Option<Device> {
        let name = name.strip_prefix(b"(").unwrap_or(name);
        let name = name.strip_suffix(b")").unwrap_or(name);
        if name.is_empty() {
            return None;
        }
        if let Some(rest) = name.strip_prefix(SEARCH_PREFIX) {
            if let Some(v) = rest.strip_prefix(b"fs-uuid=") {
                return Some(Device::FsUuid(v.to_vec()));
            }
            if let Some(v) = rest.strip_prefix(b"label=") {
                return Some(Device::Label(v.to_vec()));
            }
            if let Some(v) = rest.strip_prefix(b"file=") {
                return Some(Device::File(v.to_vec()));
            }
        }
        let mut parts = name.split(|b| *b == b',');
        let disk = parts.next().and_then(disk_number);
        let part = parts.next();
        match (disk, part) {
            (Some(disk), None) => Some(Device::Partition { disk, part: None }),
            (Some(disk), Some(p)) => {
                let digits = p.strip_prefix(b"msdos").or_else(|| p.strip_prefix(b"gpt")).unwrap_or(p);
                match parse_u32(digits) {
                    Some(n) if n > 0 => Some(Device::Partition { disk, part: Some(n) }),
                    _ => Some(Device::Other(name.to_vec())),
                }
            }
            _ => Some(Device::Other(name.to_vec())),
        }
    }

    /// The name [`Device::parse_grub`] reads back.
    pub fn grub_name(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Device::FsUuid(v) | Device::Label(v) | Device::File(v) => {
                out.extend_from_slice(SEARCH_PREFIX);
                out.extend_from_slice(match self {
                    Device::FsUuid(_) => b"fs-uuid=",
                    Device::Label(_) => b"label=",
                    _ => b"file=",
                });
                out.extend_from_slice(v);
            }
            Device::Partition { disk, part } => {
                out.extend_from_slice(format!("hd{disk}").as_bytes());
                if let Some(p) = part {
                    out.extend_from_slice(format!(",{p}").as_bytes());
                }
            }
            Device::Other(v) => out.extend_from_slice(v),
        }
        out
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::FsUuid(v) => write!(f, "filesystem UUID {}", EscapedBare(v)),
            Device::Label(v) => write!(f, "filesystem label {}", EscapedBare(v)),
            Device::File(v) => write!(f, "filesystem holding {}", EscapedBare(v)),
            Device::Partition { disk, part: Some(p) } => write!(f, "disk {disk} partition {p}"),
            Device::Partition { disk, part: None } => write!(f, "disk {disk}"),
            Device::Other(v) => write!(f, "device {}", EscapedBare(v)),
        }
    }
}

/// `hd0` → 0; `xen/xvdb` → 1 (pvgrub2's names).
fn disk_number(name: &[u8]) -> Option<u32> {
    if let Some(d) = name.strip_prefix(b"hd") {
        return parse_u32(d);
    }
    let letters = name.strip_prefix(b"xen/xvd").or_else(|| name.strip_prefix(b"xvd"))?;
    match letters {
        [c] if c.is_ascii_lowercase() => Some(u32::from(c.saturating_sub(b'a'))),
        _ => None,
    }
}

/// A decimal number of at most 9 digits (no sign, no spaces).
pub(crate) fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A file a menu names: a path on `device`, or on the filesystem the menu
/// was read from when `device` is `None`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    /// Where the file is, when the menu says.
    pub device: Option<Device>,
    /// Absolute path on that filesystem (relative paths are resolved by the
    /// parser against the config's directory).
    pub path: Vec<u8>,
}

impl FileRef {
    /// A reference, refusing paths over [`MAX_PATH_LEN`].
    pub fn new(device: Option<Device>, path: Vec<u8>) -> Result<FileRef, MenuError> {
        if path.len() > MAX_PATH_LEN {
            return Err(MenuError::TooLong {
                what: "path",
                len: path.len(),
                cap: MAX_PATH_LEN,
            });
        }
        Ok(FileRef { device, path })
    }
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => write!(f, "{} on {d}", escape(&self.path)),
            None => write!(f, "{}", escape(&self.path)),
        }
    }
}

/// One enclosing submenu of an entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Level {
    /// The submenu's title.
    pub title: Vec<u8>,
    /// Its `--id`, if any.
    pub id: Option<Vec<u8>>,
    /// Its index among the items of its own level.
    pub index: usize,
}

/// One bootable (or not) entry of a menu.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The title shown.
    pub title: Vec<u8>,
    /// GRUB `--id`, extlinux `LABEL`, BLS file name without `.conf`.
    pub id: Option<Vec<u8>>,
    /// Enclosing submenus, outermost first (empty at the top level).
    pub submenus: Vec<Level>,
    /// Index among the items of its own level (a submenu is one item).
    pub index: usize,
    /// The kernel, when the entry loads a Linux kernel.
    pub kernel: Option<FileRef>,
    /// Initrds in order (libxl takes one ramdisk: the boot concatenates).
    pub initrds: Vec<FileRef>,
    /// The kernel command line as the menu gives it.
    pub args: Vec<u8>,
    /// Why this entry cannot be booted as a Linux kernel, if it cannot
    /// (a chainloader, a multiboot/Xen entry, a `.c32` module).
    pub problem: Option<String>,
}

impl Entry {
    /// A fresh entry at the top level.
    pub fn new(title: Vec<u8>) -> Entry {
        Entry {
            title,
            id: None,
            submenus: Vec::new(),
            index: 0,
            kernel: None,
            initrds: Vec::new(),
            args: Vec::new(),
            problem: None,
        }
    }

    /// `Submenu>Inner>Title`, as `--entry` and GRUB's `default` take it.
    pub fn path_title(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.submenus {
            out.extend_from_slice(&l.title);
            out.push(b'>');
        }
        out.extend_from_slice(&self.title);
        out
    }
}

/// How long the menu waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Timeout {
    /// This many seconds (rounded up from extlinux's tenths).
    Secs(u64),
    /// Until someone chooses (GRUB `timeout=-1`, extlinux `TIMEOUT 0`).
    Forever,
}

/// A parsed menu: entries in menu order, submenus flattened (each entry
/// knows its submenu path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Menu {
    /// The entries, flattened in the order they appear.
    pub entries: Vec<Entry>,
    /// The menu's default as it names it (GRUB: an index, title, id, or a
    /// `>` path of those; extlinux: a label; legacy: an index), after
    /// evaluation (`saved_entry`, `next_entry`).
    pub default: Option<Vec<u8>>,
    /// The countdown, when the menu sets one.
    pub timeout: Option<Timeout>,
    /// What the parser skipped or took conservatively (at most
    /// [`MAX_MENU_NOTES`]; escaped, for diagnostics and debug logs).
    pub notes: Vec<String>,
}

impl Menu {
    /// Record a note (debug-logged; kept up to [`MAX_MENU_NOTES`]).
    pub(crate) fn note(&mut self, what: String) {
        log::debug!("menu: {what}");
        if self.notes.len() < MAX_MENU_NOTES {
            self.notes.push(what);
        }
    }

    /// Add an entry, refusing more than [`MAX_MENU_ENTRIES`].
    pub(crate) fn push(&mut self, e: Entry) -> Result<(), MenuError> {
        if self.entries.len() >= MAX_MENU_ENTRIES {
            return Err(MenuError::TooMany {
                what: "entries",
                cap: MAX_MENU_ENTRIES,
            });
        }
        self.entries.push(e);
        Ok(())
    }

    /// Index (into [`Menu::entries`]) of the default entry: the entry the
    /// default names, else the first entry (what GRUB does when its
    /// default names nothing). `None` for an empty menu.
    pub fn default_index(&self) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        Some(
            self.default
                .as_deref()
                .and_then(|d| find_grub_path(&self.entries, d))
                .unwrap_or(0),
        )
    }
}

/// Find the entry a GRUB-style default names: components separated by `>`,
/// each an index at its level, a title or an id. A component that names a
/// submenu but ends the path selects that submenu's first entry.
fn find_grub_path(entries: &[Entry], spec: &[u8]) -> Option<usize> {
    let comps: Vec<&[u8]> = spec.split(|b| *b == b'>').collect();
    let matches = |title: &[u8], id: Option<&[u8]>, index: usize, c: &[u8]| {
        title == c || id == Some(c) || parse_u32(c).and_then(|n| usize::try_from(n).ok()) == Some(index)
    };
    entries.iter().position(|e| {
        // Levels of this entry: its submenus, then itself.
        let levels = e.submenus.len();
        if comps.len() > levels.saturating_add(1) {
            return false;
        }
        comps.iter().enumerate().all(|(i, c)| match e.submenus.get(i) {
            Some(l) => matches(&l.title, l.id.as_deref(), l.index, c),
            None => matches(&e.title, e.id.as_deref(), e.index, c),
        })
    })
}

/// Which entry to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The menu's own default.
    Default,
    /// `--entry=N`: 0-based over the flattened menu, as pygrub.
    Index(usize),
    /// `--entry=TITLE` or `--entry='Submenu>TITLE'` (ids match too).
    Title(Vec<u8>),
}

impl Selector {
    /// Parse an `--entry` value: a number is an index, anything else a title.
    pub fn parse(value: &[u8]) -> Selector {
        match parse_u32(value).and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Selector::Index(n),
            None => Selector::Title(value.to_vec()),
        }
    }
}

/// Selection failures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The menu has no entries.
    #[error("the menu has no entries")]
    Empty,
    /// `--entry=N` past the end.
    #[error("entry {index} does not exist (the menu has {len} entries)")]
    NoIndex {
        /// The index asked for.
        index: usize,
        /// Entries in the menu.
        len: usize,
    },
    /// No entry has that title or path.
    #[error("no entry is titled {0}")]
    NoTitle(String),
}

/// Pick an entry: an index into [`Menu::entries`].
///
/// A title matches an entry's exact title first, then its full
/// `Submenu>Title` path, then (like GRUB's `default`) a `>` path of
/// titles, ids and per-level indexes.
pub fn select(menu: &Menu, sel: &Selector) -> Result<usize, SelectError> {
    if menu.entries.is_empty() {
        return Err(SelectError::Empty);
    }
    match sel {
        Selector::Default => menu.default_index().ok_or(SelectError::Empty),
        Selector::Index(i) => {
            if *i < menu.entries.len() {
                Ok(*i)
            } else {
                Err(SelectError::NoIndex {
                    index: *i,
                    len: menu.entries.len(),
                })
            }
        }
        Selector::Title(t) => menu
            .entries
            .iter()
            .position(|e| e.title == *t)
            .or_else(|| menu.entries.iter().position(|e| e.path_title() == *t))
            .or_else(|| find_grub_path(&menu.entries, t))
            .ok_or_else(|| SelectError::NoTitle(escape(t))),
    }
}

/// Menu parse failures: the whole menu is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MenuError {
    /// A file is over its cap.
    #[error("{what} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// Which file.
        what: String,
        /// Its size.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A word, value or path is over its cap.
    #[error("a {what} of {len} bytes is over the {cap}-byte limit")]
    TooLong {
        /// "path", "variable", "expanded word".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// Too many of something.
    #[error("more than {cap} {what}")]
    TooMany {
        /// "entries", "variables".
        what: &'static str,
        /// The cap.
        cap: usize,
    },
    /// Blocks or includes nested too deeply.
    #[error("{what} nested more than {cap} deep")]
    TooDeep {
        /// "blocks", "includes".
        what: &'static str,
        /// The cap.
        cap: u32,
    },
    /// The evaluation budget ran out.
    #[error("more than {cap} {what} evaluated")]
    Budget {
        /// "commands", "bytes of expansion", "files".
        what: &'static str,
        /// The cap.
        cap: u64,
    },
    /// The grammar was not followed.
    #[error("line {line}: {what}")]
    Syntax {
        /// 1-based line.
        line: u32,
        /// What was wrong (guest text escaped).
        what: String,
    },
}

/// What the evaluators may read besides the menu itself. Implementations
/// cap what they return at [`MAX_MENU_CONFIG`] bytes (the evaluators check
/// again) and [`MAX_MENU_ENTRIES`] names; errors are `None`/empty (a
/// missing grubenv is normal).
pub trait MenuFiles {
    /// The contents of `path` on `device` (`None`: the menu's filesystem).
    fn read(&self, device: Option<&Device>, path: &[u8]) -> Option<Vec<u8>>;
    /// Names of the entries of the directory `dir`, in any order.
    fn list(&self, device: Option<&Device>, dir: &[u8]) -> Vec<Vec<u8>>;
    /// Size of the regular file `path`, `None` if there is none.
    fn size(&self, device: Option<&Device>, path: &[u8]) -> Option<u64>;
}

/// Files in memory, keyed by absolute path (devices ignored): for tests,
/// fuzzing, and menus read ahead of evaluation.
#[derive(Clone, Debug, Default)]
pub struct MemFiles(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl MemFiles {
    /// Add a file.
    pub fn with(mut self, path: &str, data: impl Into<Vec<u8>>) -> MemFiles {
        self.0.insert(path.as_bytes().to_vec(), data.into());
        self
    }
}

impl MenuFiles for MemFiles {
    fn read(&self, _: Option<&Device>, path: &[u8]) -> Option<Vec<u8>> {
        self.0.get(path).cloned()
    }
    fn list(&self, _: Option<&Device>, dir: &[u8]) -> Vec<Vec<u8>> {
        let mut prefix = dir.to_vec();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        self.0
            .keys()
            .filter_map(|k| k.strip_prefix(prefix.as_slice()))
            .filter(|rest| !rest.is_empty() && !rest.contains(&b'/'))
            .map(<[u8]>::to_vec)
            .collect()
    }
    fn size(&self, _: Option<&Device>, path: &[u8]) -> Option<u64> {
        self.0.get(path).and_then(|d| u64::try_from(d.len()).ok())
    }
}

/// A [`MenuFiles`] wrapper that enforces the per-menu budgets: file size,
/// files touched and bytes read in all.
pub(crate) struct Budgeted<'a> {
    inner: &'a dyn MenuFiles,
    files: Cell<u32>,
    bytes: Cell<u64>,
}

impl<'a> Budgeted<'a> {
    pub(crate) fn new(inner: &'a dyn MenuFiles) -> Budgeted<'a> {
        Budgeted {
            inner,
            files: Cell::new(0),
            bytes: Cell::new(0),
        }
    }

    fn charge_file(&self) -> Result<(), MenuError> {
        let n = self.files.get().saturating_add(1);
        if n > MAX_MENU_FILES {
            return Err(MenuError::Budget {
                what: "files",
                cap: u64::from(MAX_MENU_FILES),
            });
        }
        self.files.set(n);
        Ok(())
    }

    /// Read a menu file: `Ok(None)` when it is missing.
    pub(crate) fn read(&self, device: Option<&Device>, path: &[u8]) -> Result<Option<Vec<u8>>, MenuError> {
        self.charge_file()?;
        let Some(data) = self.inner.read(device, path) else {
            return Ok(None);
        };
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        check_size(&escape(path), len)?;
        let total = self.bytes.get().saturating_add(len);
        if total > MAX_MENU_READ_TOTAL {
            return Err(MenuError::Budget {
                what: "bytes of menu files",
                cap: MAX_MENU_READ_TOTAL,
            });
        }
        self.bytes.set(total);
        Ok(Some(data))
    }

    /// List a directory, at most [`MAX_MENU_ENTRIES`] names kept.
    pub(crate) fn list(&self, device: Option<&Device>, dir: &[u8]) -> Result<Vec<Vec<u8>>, MenuError> {
        self.charge_file()?;
        let mut names = self.inner.list(device, dir);
        names.truncate(MAX_MENU_ENTRIES);
        Ok(names)
    }

    /// Size of a file.
    pub(crate) fn size(&self, device: Option<&Device>, path: &[u8]) -> Result<Option<u64>, MenuError> {
        self.charge_file()?;
        Ok(self.inner.size(device, path))
    }
}

/// Refuse a menu file over [`MAX_MENU_CONFIG`].
pub fn check_size(what: &str, len: u64) -> Result<(), MenuError> {
    if len > MAX_MENU_CONFIG {
        return Err(MenuError::TooLarge {
            what: what.to_string(),
            len,
            cap: MAX_MENU_CONFIG,
        });
    }
    Ok(())
}

/// Join `path` to the directory `dir` unless it is absolute, and remove
/// `.` and `..` components lexically (`..` at the root stays at the root).
pub fn resolve_relative(dir: &[u8], path: &[u8]) -> Vec<u8> {
    let mut joined = Vec::new();
    if !path.starts_with(b"/") {
        joined.extend_from_slice(dir);
        joined.push(b'/');
    }
    joined.extend_from_slice(path);
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in joined.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(joined.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// 1-based line number of `offset` in `text`.
pub(crate) fn line_of(text: &[u8], offset: usize) -> u32 {
    let upto = text.get(..offset).unwrap_or(text);
    let n = upto.iter().filter(|b| **b == b'\n').count();
    u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests;
