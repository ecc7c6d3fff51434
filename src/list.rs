//! Rendering generations, one at a time, in the parse child (guest side):
//! `nixboot list`'s table and JSON document, and the console menu's
//! entries. Nothing here holds a whole listing: the child streams what it
//! renders to the parent, which checks it and never keeps more than a
//! frame of it (`nixboot list`) or the bounded menu entries
//! ([`MAX_MENU_ENTRIES`]).
//!
//! Guest strings are escaped here, at the source (labels by
//! [`crate::nixos::select::label`], names by [`escape_short`]); the JSON document also
//! escapes DEL and the C1 controls, which JSON allows raw.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use serde_json::json;

use crate::cmdline;
use crate::error::{clip, escape_short};
use crate::ipc::{EntryRef, MenuEntry};
use crate::limits::{MAX_MENU_ENTRIES, MAX_MENU_TEXT};
use crate::nixos::Generation;
use crate::nixos::select::{label, rfc3339};

/// One generation of the profile, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The generation, if it loaded.
    pub generation: Option<Generation>,
    /// Its number.
    pub number: Option<u64>,
    /// Whether the profile points at it.
    pub current: bool,
    /// The link mtime.
    pub mtime: Option<i64>,
    /// Why it cannot be booted, if it cannot.
    pub problem: Option<String>,
}

/// Escape DEL and the C1 controls (U+0080..U+009F) that serde_json leaves
/// raw, as `\u00XX`: still valid JSON (they only occur inside strings),
/// and no terminal acts on them.
pub fn json_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The start of the JSON document.
pub const JSON_HEAD: &str = "{\n  \"generations\": [";

/// One generation of the JSON document, `first` or after a comma.
pub fn json_generation(g: &Listed, first: bool) -> String {
    let e = g.generation.as_ref().map(|g| &g.entry);
    let v = json!({
        "generation": g.number,
        "current": g.current,
        "built": g.mtime.and_then(rfc3339),
        "nixosVersion": e.map(|e| &e.nixos_version),
        "label": e.map(|e| label(e, g.mtime)),
        "kernel": e.map(|e| &e.kernel),
        "initrd": e.and_then(|e| e.initrd.as_ref()),
        "init": e.map(|e| &e.init),
        "kernelParams": e.map(|e| &e.kernel_params),
        "specialisations": g.generation.as_ref().map(|g| g.specialisations.iter().filter_map(|s| s.specialisation.clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "unreadableSpecialisations": g.generation.as_ref().map(|g| g.unreadable.iter().map(|(name, why)| json!({"name": name, "problem": why})).collect::<Vec<_>>()).unwrap_or_default(),
        "bootable": g.problem.is_none(),
        "problem": g.problem,
    });
    let body = serde_json::to_string_pretty(&v).unwrap_or_default();
    let mut s = String::from(if first { "\n" } else { ",\n" });
    for (i, line) in body.lines().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str("    ");
        s.push_str(line);
    }
    json_safe(&s)
}

/// The end of the JSON document: `default` is the entry a boot without
/// `--entry` starts from (before any fallback), with why.
pub fn json_tail(default: Option<&EntryRef>, reason: Option<&str>, any: bool) -> String {
    let d = default.map(|d| {
        json!({
            "generation": d.number,
            "specialisation": d.specialisation,
            "reason": reason,
        })
    });
    let d = serde_json::to_string_pretty(&d).unwrap_or_else(|_| "null".into());
    let d = d.replace('\n', "\n  ");
    let close = if any { "\n  ]" } else { "]" };
    json_safe(&format!("{close},\n  \"default\": {d}\n}}\n"))
}

/// The table lines of one generation and its specialisations.
pub fn table_generation(g: &Listed) -> String {
    let mut s = String::new();
    let mark = if g.current { "*" } else { " " };
    let n = g.number.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    match &g.generation {
        Some(gen_) => {
            let why = g.problem.as_ref().map(|p| format!("  (not bootable: {p})"));
            s.push_str(&format!(
                "{mark} {n:>5}  {}{}\n",
                label(&gen_.entry, g.mtime),
                why.unwrap_or_default()
            ));
            for sp in &gen_.specialisations {
                let name = escape_short(sp.specialisation.as_deref().unwrap_or("").as_bytes());
                s.push_str(&format!("  {:>5}  {}\n", format!("{n}/{name}"), label(sp, g.mtime)));
            }
            for (name, why) in &gen_.unreadable {
                let name = escape_short(name.as_bytes());
                s.push_str(&format!("  {:>5}  (cannot be read: {why})\n", format!("{n}/{name}")));
            }
        }
        None => s.push_str(&format!(
            "{mark} {n:>5}  (not bootable: {})\n",
            g.problem.as_deref().unwrap_or("unknown")
        )),
    }
    s
}

/// The table's last line: why the default is the default.
pub fn table_tail(reason: Option<&str>) -> String {
    reason.map(|r| format!("default: {r}\n")).unwrap_or_default()
}

/// Builds the console menu one generation at a time: NixOS's GRUB order
/// (newest first, each generation followed by its specialisations), the
/// guest's limit on generations, at most [`MAX_MENU_ENTRIES`] entries
/// (plus the default generation's), and the highlighted default: what a
/// boot without the menu picks, the listing's default entry (installed
/// default or current generation) or the newest older bootable generation.
pub struct MenuBuilder<'a> {
    default: Option<EntryRef>,
    args: Option<&'a str>,
    limit: usize,
    shown: usize,
    count: usize,
    anchor_at: Option<usize>,
    default_at: Option<usize>,
    /// Specialisations that could not be read, in every generation seen.
    pub unreadable: usize,
}

impl<'a> MenuBuilder<'a> {
    /// A menu whose default is `default` (`None`: the current
    /// generation), with the guest's `limit` and the admin's `--args`.
    pub fn new(default: Option<EntryRef>, limit: Option<u64>, args: Option<&'a str>) -> MenuBuilder<'a> {
        MenuBuilder {
            default,
            args,
            limit: limit.and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX).max(1),
            shown: 0,
            count: 0,
            anchor_at: None,
            default_at: None,
            unreadable: 0,
        }
    }

    /// The entries `g` adds to the menu.
    pub fn add(&mut self, g: &Listed) -> Vec<MenuEntry> {
        let mut out = Vec::new();
        let Some(gen_) = &g.generation else { return out };
        self.unreadable = self.unreadable.saturating_add(gen_.unreadable.len());
        let is_default_gen = match &self.default {
            Some(d) => d.number == g.number,
            None => g.current,
        };
        if self.shown >= self.limit && !is_default_gen {
            return out;
        }
        self.shown = self.shown.saturating_add(1);
        for e in std::iter::once(&gen_.entry).chain(&gen_.specialisations) {
            if self.count >= MAX_MENU_ENTRIES && !is_default_gen {
                break;
            }
            // Chosen by name: a name the parent would refuse is left out
            // of the menu (`--entry` still reaches it).
            if e.specialisation.as_ref().is_some_and(|n| n.len() > MAX_MENU_TEXT) {
                continue;
            }
            let line = cmdline::build(Some(&e.init), &e.kernel_params, self.args);
            let is_spec = e.specialisation.is_some();
            let problem = if is_spec { None } else { g.problem.clone() };
            let problem = problem.or_else(|| line.as_ref().err().map(|x| x.to_string()));
            let is_anchor = match &self.default {
                Some(d) => d.number == g.number && d.specialisation == e.specialisation,
                None => g.current && !is_spec,
            };
            if is_anchor {
                self.anchor_at = Some(self.count);
            }
            if self.default_at.is_none() && self.anchor_at.is_some() && (is_anchor || !is_spec) && problem.is_none() {
                self.default_at = Some(self.count);
            }
            out.push(MenuEntry {
                label: clip(label(e, g.mtime), MAX_MENU_TEXT),
                cmdline: line.unwrap_or_default(),
                problem: problem.map(|p| clip(p, MAX_MENU_TEXT)),
                entry: EntryRef {
                    number: g.number,
                    specialisation: e.specialisation.clone(),
                },
            });
            self.count = self.count.saturating_add(1);
        }
        out
    }

    /// The highlighted entry, once every generation was added.
    pub fn default_index(&self) -> usize {
        self.default_at.or(self.anchor_at).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixos::{BootEntry, Origin};

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
        }
    }

    /// Generations 5..=1 (5 current), each with a specialisation `s`;
    /// `broken` ones not bootable.
    fn listing(broken: &[u64]) -> Vec<Listed> {
        (1..=5)
            .rev()
            .map(|n| Listed {
                generation: Some(Generation {
                    number: Some(n),
                    mtime: Some(0),
                    entry: entry(n, None),
                    specialisations: vec![entry(n, Some("s"))],
                    unreadable: vec![],
                }),
                number: Some(n),
                current: n == 5,
                mtime: Some(0),
                problem: broken.contains(&n).then(|| "not a Xen PV kernel".into()),
            })
            .collect()
    }

    fn menu(l: &[Listed], default: Option<EntryRef>, limit: Option<u64>) -> (Vec<MenuEntry>, usize) {
        let mut b = MenuBuilder::new(default, limit, None);
        let items: Vec<MenuEntry> = l.iter().flat_map(|g| b.add(g)).collect();
        let d = b.default_index();
        (items, d)
    }

    fn picked(l: &[Listed], default: Option<EntryRef>, limit: Option<u64>) -> (usize, EntryRef) {
        let (items, d) = menu(l, default, limit);
        (items.len(), items[d].entry.clone())
    }

    fn r(n: u64, s: Option<&str>) -> EntryRef {
        EntryRef {
            number: Some(n),
            specialisation: s.map(str::to_owned),
        }
    }

    #[test]
    fn menu_default_follows_the_installed_default() {
        let l = listing(&[]);
        assert_eq!(picked(&l, None, None), (10, r(5, None)));
        assert_eq!(picked(&l, Some(r(3, Some("s"))), None), (10, r(3, Some("s"))));
        assert_eq!(picked(&l, Some(r(4, None)), None), (10, r(4, None)));
        // Not bootable: the newest older bootable generation, as a boot
        // without the menu does.
        let l = listing(&[4, 3]);
        assert_eq!(picked(&l, Some(r(4, None)), None), (10, r(2, None)));
    }

    #[test]
    fn menu_limit_keeps_the_newest_and_the_default() {
        let l = listing(&[]);
        assert_eq!(picked(&l, None, Some(2)), (4, r(5, None)));
        assert_eq!(picked(&l, Some(r(1, None)), Some(2)), (6, r(1, None)));
        assert_eq!(menu(&l, None, Some(0)).0.len(), 2, "a limit of 0 counts as 1");
    }

    #[test]
    fn menu_entries_are_capped_but_keep_the_default_generation() {
        // 5,000 generations of 1 + 1 entries; the default is the oldest.
        let many: Vec<Listed> = (1..=5000u64)
            .rev()
            .map(|n| {
                let mut g = listing(&[]).remove(0);
                g.number = Some(n);
                g.current = n == 5000;
                g
            })
            .collect();
        let (items, d) = menu(&many, Some(r(1, None)), None);
        assert_eq!(items.len(), MAX_MENU_ENTRIES + 2);
        assert_eq!(items[d].entry, r(1, None));
    }

    #[test]
    fn guest_strings_are_escaped_in_table_and_json() {
        let mut l = listing(&[]).remove(0);
        let evil = "dbg\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[1;31mRED\u{9b}\u{7f}";
        if let Some(g) = l.generation.as_mut() {
            g.specialisations[0].specialisation = Some(evil.into());
            g.entry.nixos_version = "25.05\u{9d}\u{85}".into();
            g.unreadable = vec![(evil.into(), "\"/x\" is not a NixOS system".into())];
        }
        let t = table_generation(&l);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(t.contains("5/dbg\\u{001b}]0;PWNED"), "{t}");
        let j = format!(
            "{JSON_HEAD}{}{}",
            json_generation(&l, true),
            json_tail(None, None, true)
        );
        assert!(!j.chars().any(|c| c.is_control() && c != '\n'), "{j:?}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["generations"][0]["specialisations"][0], evil);
        assert_eq!(v["generations"][0]["nixosVersion"], "25.05\u{9d}\u{85}");
        assert_eq!(v["generations"][0]["unreadableSpecialisations"][0]["name"], evil);
        assert!(t.contains("(cannot be read: \"/x\" is not a NixOS system)"), "{t}");
        let empty = format!("{JSON_HEAD}{}", json_tail(Some(&r(1, None)), Some("why"), false));
        let v: serde_json::Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(v["generations"].as_array().map(Vec::len), Some(0));
        assert_eq!(v["default"]["reason"], "why");
    }
}
