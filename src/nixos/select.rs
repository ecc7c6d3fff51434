//! Choosing what to boot: the default (current) generation, or the entry an
//! admin named with `--entry`. Menu labels, like NixOS's GRUB menu.
//!
//! `--entry` forms: `N` (generation N), `N/name` (its specialisation
//! `name`), `name` (specialisation of the default generation), or an exact
//! menu title (a pygrub habit). An unknown entry is an error that names
//! what exists; there is never a silent fallback.

use super::{
    BootEntry, Current, Generation, NixosError, SYSTEM_PROFILE, current, generation_numbers, link_path,
    load_generation, read_profile,
};
use crate::error::escape;
use crate::fs::GuestFs;

/// What `--entry` asked for, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntrySpec {
    /// Generation N.
    Generation(u64),
    /// Generation N's specialisation.
    Specialisation(u64, String),
    /// A specialisation of the default generation, or a menu title.
    Name(String),
}

/// Parse an `--entry` value.
pub fn parse_entry(s: &str) -> EntrySpec {
    let num = |d: &str| {
        (!d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse().ok())
            .flatten()
    };
    if let Some(n) = num(s) {
        return EntrySpec::Generation(n);
    }
    if let Some((g, name)) = s.split_once('/')
        && let Some(n) = num(g)
        && !name.is_empty()
    {
        return EntrySpec::Specialisation(n, name.to_owned());
    }
    EntrySpec::Name(s.to_owned())
}

/// `YYYY-MM-DD` of a Unix time, in UTC.
pub fn date(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| "unknown date".into())
}

/// RFC 3339 (UTC) of a Unix time.
pub fn rfc3339(secs: i64) -> Option<String> {
    jiff::Timestamp::from_second(secs)
        .ok()
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The menu title of an entry: `NixOS - Configuration <N> (<date> -
/// <nixos-version>)`, plus ` - <name>` for a specialisation.
pub fn label(e: &BootEntry, mtime: Option<i64>) -> String {
    let date = mtime.map(date).unwrap_or_else(|| "unknown date".into());
    let n = e.generation.map(|n| n.to_string()).unwrap_or_else(|| "current".into());
    let mut s = format!("NixOS - Configuration {n} ({date} - {})", e.nixos_version);
    if let Some(name) = &e.specialisation {
        s.push_str(" - ");
        s.push_str(name);
    }
    s
}

/// Load the default generation: the one the profile names.
pub fn default_generation(fs: &GuestFs) -> Result<Generation, NixosError> {
    match current(fs)? {
        Current::Generation(n) => load_generation(fs, &link_path(n), Some(n)),
        Current::Direct(_) => load_generation(fs, SYSTEM_PROFILE, None),
    }
}

fn pick_spec(g: &Generation, name: &str) -> Result<BootEntry, NixosError> {
    g.specialisations
        .iter()
        .find(|s| s.specialisation.as_deref() == Some(name))
        .cloned()
        .ok_or_else(|| {
            let have: Vec<&str> = g
                .specialisations
                .iter()
                .filter_map(|s| s.specialisation.as_deref())
                .collect();
            NixosError::UnknownEntry(format!(
                "generation {} has no specialisation {}; it has: {}",
                g.number.map(|n| n.to_string()).unwrap_or_else(|| "current".into()),
                escape(name.as_bytes()),
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            ))
        })
}

/// Generation numbers shown in an error before the rest is summed up.
const SHOWN_GENERATIONS: usize = 20;

/// `numbers` (newest first) for one error line: the newest
/// [`SHOWN_GENERATIONS`], then how many more and the oldest.
fn summarize(numbers: &[u64]) -> String {
    let shown: Vec<String> = numbers.iter().take(SHOWN_GENERATIONS).map(u64::to_string).collect();
    let mut s = if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(", ")
    };
    if let (Some(more), Some(oldest)) = (numbers.len().checked_sub(SHOWN_GENERATIONS), numbers.last())
        && more > 0
    {
        s.push_str(&format!(" and {more} more (the oldest is {oldest})"));
    }
    s
}

/// The error for a generation that does not exist. It lists the profile
/// directory once (not every link: that is a lookup per generation, slow
/// on a hostile unindexed directory) and names a bounded number of them.
fn unknown_generation(fs: &GuestFs, n: u64) -> NixosError {
    let have = generation_numbers(fs)
        .map(|v| summarize(&v))
        .unwrap_or_else(|e| format!("(cannot list: {e})"));
    NixosError::UnknownEntry(format!("no generation {n}; generations on the disk: {have}"))
}

fn generation(fs: &GuestFs, n: u64) -> Result<Generation, NixosError> {
    let link = link_path(n);
    if !fs.exists(link.as_bytes()).map_err(|source| NixosError::Fs {
        what: "generation link",
        source,
    })? {
        return Err(unknown_generation(fs, n));
    }
    load_generation(fs, &link, Some(n))
}

/// The entry `--entry=<spec>` names, with its generation's link mtime.
pub fn select(fs: &GuestFs, spec: &EntrySpec) -> Result<(BootEntry, Option<i64>), NixosError> {
    match spec {
        EntrySpec::Generation(n) => generation(fs, *n).map(|g| (g.entry, g.mtime)),
        EntrySpec::Specialisation(n, name) => {
            let g = generation(fs, *n)?;
            Ok((pick_spec(&g, name)?, g.mtime))
        }
        EntrySpec::Name(name) => {
            let g = default_generation(fs)?;
            if let Ok(e) = pick_spec(&g, name) {
                return Ok((e, g.mtime));
            }
            // An exact menu title, searched across every generation.
            let profile = read_profile(fs)?;
            for link in &profile.links {
                let Ok(g) = load_generation(fs, &link_path(link.number), Some(link.number)) else {
                    continue;
                };
                for e in std::iter::once(&g.entry).chain(&g.specialisations) {
                    if label(e, g.mtime) == *name {
                        return Ok((e.clone(), g.mtime));
                    }
                }
            }
            Err(NixosError::UnknownEntry(format!(
                "no entry {}: use a generation number (e.g. --entry={}), N/specialisation, a specialisation of the default generation, or an exact menu title",
                escape(name.as_bytes()),
                profile.links.first().map(|l| l.number).unwrap_or(1)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_forms() {
        assert_eq!(parse_entry("41"), EntrySpec::Generation(41));
        assert_eq!(parse_entry("41/debug"), EntrySpec::Specialisation(41, "debug".into()));
        assert_eq!(parse_entry("debug"), EntrySpec::Name("debug".into()));
        assert_eq!(parse_entry("41/"), EntrySpec::Name("41/".into()));
        assert_eq!(
            parse_entry("NixOS - Configuration 3 (2024-01-01 - 24.05)"),
            EntrySpec::Name("NixOS - Configuration 3 (2024-01-01 - 24.05)".into())
        );
    }

    #[test]
    fn generation_lists_are_bounded() {
        assert_eq!(summarize(&[]), "none");
        assert_eq!(summarize(&[3, 2, 1]), "3, 2, 1");
        let many: Vec<u64> = (1..=5000).rev().collect();
        let s = summarize(&many);
        assert!(s.starts_with("5000, 4999, "), "{s}");
        assert!(s.ends_with(", 4981 and 4980 more (the oldest is 1)"), "{s}");
        let twenty: Vec<u64> = (1..=20).rev().collect();
        assert!(summarize(&twenty).ends_with(", 1"));
    }

    #[test]
    fn labels_like_grub() {
        let e = BootEntry {
            generation: Some(42),
            specialisation: None,
            kernel: "/k".into(),
            initrd: None,
            init: "/i".into(),
            kernel_params: vec![],
            toplevel: "/t".into(),
            nixos_version: "25.05.20250601.abcdef0".into(),
            origin: super::super::Origin::Bootspec,
            initrd_secrets: None,
        };
        assert_eq!(
            label(&e, Some(1_748_736_000)),
            "NixOS - Configuration 42 (2025-06-01 - 25.05.20250601.abcdef0)"
        );
        let s = BootEntry {
            specialisation: Some("debug".into()),
            ..e
        };
        assert_eq!(
            label(&s, Some(1_748_736_000)),
            "NixOS - Configuration 42 (2025-06-01 - 25.05.20250601.abcdef0) - debug"
        );
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
    }
}
