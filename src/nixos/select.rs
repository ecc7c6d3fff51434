//! Choosing what to boot: the default (current) generation, or the entry an
//! admin named with `--entry`. Menu labels, like NixOS's GRUB menu.
//!
//! `--entry` forms: `N` (generation N), `N/name` (its specialisation
//! `name`), `name` (specialisation of the default generation), an exact
//! menu title (a pygrub habit), or a title GRUB's install-grub.pl gives
//! the same entry (parsed with nom, see [`grub_title`]: a title pasted
//! from an old GRUB menu works). All of them look inside one profile:
//! the system profile, or `--profile=NAME`. An unknown entry is an error
//! that names what exists; there is never a silent fallback.

use super::{
    BootEntry, Current, Generation, NixosError, current_in, generation_numbers_in, link_path_in, load_generation_in,
    profile_names, profile_title, read_profile_in,
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
    /// GRUB's `NixOS - Default` (or `NixOS`): the default entry.
    Default,
    /// GRUB's `NixOS (NAME - DATE - VERSION)`: the default generation's
    /// specialisation NAME.
    DefaultSpecialisation(String),
    /// GRUB's `NixOS - Profile 'NAME'` (`Some`) or `NixOS - All
    /// configurations` (`None`, the system profile): that profile's
    /// current generation.
    Profile(Option<String>),
}

/// The titles install-grub.pl writes, parsed (nom):
///
/// * `NixOS - Default`, or `NixOS` (newer versions, no specialisations):
///   the default entry;
/// * `NixOS (NAME - DATE - VERSION)`: the default's specialisation NAME;
/// * `NixOS - Configuration N (DATE - VERSION)`, the same with
///   ` - Default` after N, or the submenu `> NixOS - Configuration N
///   (DATE - VERSION)`: generation N;
/// * `NixOS - Configuration N (NAME - DATE - VERSION)`: its
///   specialisation NAME;
/// * `NixOS - Profile 'NAME'`, `NixOS - All configurations`: the submenu
///   of a profile, i.e. its current generation.
///
/// DATE and VERSION are checked for shape only: GRUB wrote the date in
/// the guest's local time zone, nixboot reads UTC, and the number names
/// the generation.
pub fn grub_title(s: &str) -> Option<EntrySpec> {
    use nom::branch::alt;
    use nom::bytes::complete::{tag, take_until, take_while_m_n};
    use nom::character::complete::digit1;
    use nom::combinator::{all_consuming, map, map_opt, opt, rest, value};
    use nom::sequence::{delimited, preceded};
    use nom::{IResult, Parser};

    fn number(i: &str) -> IResult<&str, u64> {
        map_opt(digit1, |d: &str| if d.len() <= 19 { d.parse().ok() } else { None }).parse(i)
    }
    fn date(i: &str) -> IResult<&str, ()> {
        let d = |n| take_while_m_n(n, n, |c: char| c.is_ascii_digit());
        value((), (d(4), tag("-"), d(2), tag("-"), d(2))).parse(i)
    }
    /// `(DATE - VERSION)` or `(NAME - DATE - VERSION)` to the end of the
    /// title: the specialisation name, if any.
    fn inner(i: &str) -> IResult<&str, Option<String>> {
        map_opt(preceded(tag("("), rest), |r: &str| {
            let body = r.strip_suffix(')')?;
            let mut parts = body.rsplitn(3, " - ");
            let version = parts.next()?;
            let d = parts.next()?;
            if version.is_empty() || all_consuming(date).parse(d).is_err() {
                return None;
            }
            match parts.next() {
                None => Some(None),
                Some("") => None,
                Some(name) => Some(Some(name.to_owned())),
            }
        })
        .parse(i)
    }
    let configuration = map(
        (
            opt(tag("> ")),
            tag("NixOS - Configuration "),
            number,
            opt(tag(" - Default")),
            tag(" "),
            inner,
        ),
        |(_, _, n, _, _, spec)| match spec {
            None => EntrySpec::Generation(n),
            Some(name) => EntrySpec::Specialisation(n, name),
        },
    );
    let default_spec = map_opt(preceded(tag("NixOS "), inner), |spec| {
        spec.map(EntrySpec::DefaultSpecialisation)
    });
    let profile = map(
        delimited(tag("NixOS - Profile '"), take_until("'"), all_consuming(tag("'"))),
        |p: &str| EntrySpec::Profile(Some(p.to_owned())),
    );
    let mut title = all_consuming(alt((
        configuration,
        profile,
        value(EntrySpec::Profile(None), tag("NixOS - All configurations")),
        value(EntrySpec::Default, tag("NixOS - Default")),
        value(EntrySpec::Default, (tag("NixOS"), nom::combinator::eof)),
        default_spec,
    )));
    title.parse(s).ok().map(|(_, spec)| spec)
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
    grub_title(s).unwrap_or_else(|| EntrySpec::Name(s.to_owned()))
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
/// <nixos-version>)`, plus ` - <name>` for a specialisation; an entry of
/// a `nixos-rebuild -p NAME` profile starts `NixOS - Profile 'NAME' - `.
pub fn label(e: &BootEntry, mtime: Option<i64>) -> String {
    let date = mtime.map(date).unwrap_or_else(|| "unknown date".into());
    let n = e.generation.map(|n| n.to_string()).unwrap_or_else(|| "current".into());
    let profile = e
        .profile
        .as_ref()
        .map(|p| format!("Profile '{p}' - "))
        .unwrap_or_default();
    let mut s = format!("NixOS - {profile}Configuration {n} ({date} - {})", e.nixos_version);
    if let Some(name) = &e.specialisation {
        s.push_str(" - ");
        s.push_str(name);
    }
    s
}

/// Load a profile's current generation: the one its link names.
pub fn default_generation_in(fs: &GuestFs, profile: Option<&str>) -> Result<Generation, NixosError> {
    match current_in(fs, profile)? {
        Current::Generation(n) => load_generation_in(fs, profile, Some(n)),
        Current::Direct(_) => load_generation_in(fs, profile, None),
    }
}

/// Load the default generation: the one the system profile names.
pub fn default_generation(fs: &GuestFs) -> Result<Generation, NixosError> {
    default_generation_in(fs, None)
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
fn unknown_generation(fs: &GuestFs, profile: Option<&str>, n: u64) -> NixosError {
    let have = generation_numbers_in(fs, profile)
        .map(|v| summarize(&v))
        .unwrap_or_else(|e| format!("(cannot list: {e})"));
    match profile {
        None => NixosError::UnknownEntry(format!("no generation {n}; generations on the disk: {have}")),
        Some(_) => NixosError::UnknownEntry(format!(
            "no generation {n} in {}; its generations: {have}",
            crate::error::EscapedBare(profile_title(profile).as_bytes())
        )),
    }
}

fn generation(fs: &GuestFs, profile: Option<&str>, n: u64) -> Result<Generation, NixosError> {
    let link = link_path_in(profile, n);
    if !fs.exists(link.as_bytes()).map_err(|source| NixosError::Fs {
        what: "generation link",
        source,
    })? {
        return Err(unknown_generation(fs, profile, n));
    }
    load_generation_in(fs, profile, Some(n))
}

/// The entry `--entry=<spec>` names in `profile` (`None`: the system
/// profile), with its generation's link mtime. [`EntrySpec::Default`] is
/// the profile's current generation here (the caller applies the
/// installed default first, where it applies); [`EntrySpec::Profile`]
/// names its own profile. An exact title is searched in `profile`, or,
/// without one, in every profile (the titles of named profiles' entries
/// carry the profile's name).
pub fn select(fs: &GuestFs, profile: Option<&str>, spec: &EntrySpec) -> Result<(BootEntry, Option<i64>), NixosError> {
    match spec {
        EntrySpec::Generation(n) => generation(fs, profile, *n).map(|g| (g.entry, g.mtime)),
        EntrySpec::Specialisation(n, name) => {
            let g = generation(fs, profile, *n)?;
            Ok((pick_spec(&g, name)?, g.mtime))
        }
        EntrySpec::Default => default_generation_in(fs, profile).map(|g| (g.entry, g.mtime)),
        EntrySpec::DefaultSpecialisation(name) => {
            let g = default_generation_in(fs, profile)?;
            Ok((pick_spec(&g, name)?, g.mtime))
        }
        EntrySpec::Profile(Some(p)) if !super::valid_profile_name(p.as_bytes()) => Err(NixosError::UnknownEntry(
            format!("no profile {}: not a profile name", escape(p.as_bytes())),
        )),
        EntrySpec::Profile(p) => default_generation_in(fs, p.as_deref()).map(|g| (g.entry, g.mtime)),
        EntrySpec::Name(name) => {
            let g = default_generation_in(fs, profile)?;
            if let Ok(e) = pick_spec(&g, name) {
                return Ok((e, g.mtime));
            }
            // An exact menu title, searched across every generation.
            let mut profiles: Vec<Option<String>> = vec![profile.map(str::to_owned)];
            if profile.is_none() {
                profiles.extend(profile_names(fs).unwrap_or_default().into_iter().map(Some));
            }
            let mut newest = None;
            for p in &profiles {
                let Ok(listed) = read_profile_in(fs, p.as_deref()) else {
                    continue;
                };
                if p.as_deref() == profile {
                    newest = listed.links.first().map(|l| l.number);
                }
                for link in &listed.links {
                    let Ok(g) = load_generation_in(fs, p.as_deref(), Some(link.number)) else {
                        continue;
                    };
                    for e in std::iter::once(&g.entry).chain(&g.specialisations) {
                        if label(e, g.mtime) == *name {
                            return Ok((e.clone(), g.mtime));
                        }
                    }
                }
            }
            Err(NixosError::UnknownEntry(format!(
                "no entry {}{}: use a generation number (e.g. --entry={}), N/specialisation, a specialisation of the default generation, or a menu title (nixboot's or GRUB's)",
                escape(name.as_bytes()),
                profile
                    .map(|p| format!(" in profile '{}'", crate::error::EscapedBare(p.as_bytes())))
                    .unwrap_or_default(),
                newest.unwrap_or(1)
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
            parse_entry("NixOS - Configuration 3 (2024-01-01 - 24.05) - debug"),
            EntrySpec::Name("NixOS - Configuration 3 (2024-01-01 - 24.05) - debug".into())
        );
    }

    #[test]
    fn grub_titles() {
        let g = |s: &str| grub_title(s);
        assert_eq!(g("NixOS - Default"), Some(EntrySpec::Default));
        assert_eq!(g("NixOS"), Some(EntrySpec::Default));
        assert_eq!(
            g("NixOS - Configuration 3 (2024-01-01 - 24.05.20240101.abcdef0)"),
            Some(EntrySpec::Generation(3))
        );
        assert_eq!(
            g("NixOS - Configuration 41 - Default (2024-01-01 - 24.05)"),
            Some(EntrySpec::Generation(41))
        );
        assert_eq!(
            g("> NixOS - Configuration 41 (2024-01-01 - 24.05)"),
            Some(EntrySpec::Generation(41))
        );
        assert_eq!(
            g("NixOS - Configuration 41 (debug - 1970-01-01 - 24.05)"),
            Some(EntrySpec::Specialisation(41, "debug".into()))
        );
        assert_eq!(
            g("NixOS (debug - 1970-01-01 - 24.05)"),
            Some(EntrySpec::DefaultSpecialisation("debug".into()))
        );
        assert_eq!(
            g("NixOS - Profile 'work'"),
            Some(EntrySpec::Profile(Some("work".into())))
        );
        assert_eq!(g("NixOS - All configurations"), Some(EntrySpec::Profile(None)));
        for not in [
            "NixOS - Defaults",
            "NixOS -",
            "NixOS - Configuration x (2024-01-01 - 24.05)",
            "NixOS - Configuration 3 (2024-01-01 - 24.05) - debug",
            "NixOS - Configuration 3 (24.05)",
            "NixOS - Configuration 3 (2024-1-01 - 24.05)",
            "NixOS - Configuration 3 (2024-01-01 - )",
            "NixOS - Configuration 99999999999999999999 (2024-01-01 - 24.05)",
            "NixOS - Profile 'work",
            "NixOS - Profile 'work' x",
            "NixOS (2024-01-01 - 24.05)",
            "debug",
            "",
        ] {
            assert_eq!(g(not), None, "{not:?}");
        }
        assert_eq!(parse_entry("NixOS - Default"), EntrySpec::Default);
        assert_eq!(
            parse_entry("NixOS - Profile 'a b'"),
            EntrySpec::Profile(Some("a b".into()))
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
            profile: None,
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
        let p = BootEntry {
            profile: Some("work".into()),
            specialisation: None,
            ..s
        };
        assert_eq!(
            label(&p, Some(1_748_736_000)),
            "NixOS - Profile 'work' - Configuration 42 (2025-06-01 - 25.05.20250601.abcdef0)"
        );
    }
}
