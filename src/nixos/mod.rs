//! NixOS generations inside the guest: the system profile, its
//! `system-<N>-link`s, and each generation's boot entry (from `boot.json`,
//! or synthesized from the toplevel's files for generations without one).
//! Guest data, read through [`GuestFs`] only.
//!
//! The default boot reads only the `system` link, the one generation it
//! names and that generation's files; listing every generation is left to
//! callers that need it ([`read_profile`]).
//!
//! Besides `system`, `nixos-rebuild switch -p NAME` keeps *named profiles*:
//! `/nix/var/nix/profiles/system-profiles/NAME -> NAME-N-link`, next to
//! their generation links ([`SYSTEM_PROFILES_DIR`]). A profile is named by
//! `Option<&str>` throughout: `None` is `system`. At most [`MAX_PROFILES`]
//! named profiles are read.

pub mod bootspec;
pub mod installed;
pub mod select;

use crate::error::escape;
use crate::fs::{FsError, GuestFs, Kind};
use crate::limits::{MAX_BOOTSPEC, MAX_GENERATIONS, MAX_PROFILES, MAX_SMALL_FILE, MAX_SPECIALISATIONS};

/// The directory holding the system profile and its generation links.
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";
/// The system profile link.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";
/// Where `nixos-rebuild -p NAME` keeps profile `NAME` and its
/// `NAME-N-link`s.
pub const SYSTEM_PROFILES_DIR: &str = "/nix/var/nix/profiles/system-profiles";

/// NixOS-level errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixosError {
    /// A filesystem error, with what was being read.
    #[error("{what}: {source}")]
    Fs {
        /// What nixboot was looking for.
        what: &'static str,
        /// The cause.
        #[source]
        source: FsError,
    },
    /// The profile link is not a symlink.
    #[error("{0} is not a symlink")]
    ProfileNotLink(&'static str),
    /// A named profile that does not exist (or is not a profile).
    #[error("{0}")]
    UnknownProfile(String),
    /// A guest path or file is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// The toplevel of a generation has neither `boot.json` nor `kernel`.
    #[error("{0} is not a NixOS system: no boot.json and no kernel")]
    NotASystem(String),
    /// A `boot.json` that is not a valid bootspec.
    #[error("{path}: {source}")]
    Bootspec {
        /// The boot.json path, escaped.
        path: String,
        /// Why it was refused.
        #[source]
        source: bootspec::BootspecError,
    },
    /// The generation asked for does not exist.
    #[error("{0}")]
    UnknownEntry(String),
}

fn fs_err(what: &'static str) -> impl FnOnce(FsError) -> NixosError {
    move |source| NixosError::Fs { what, source }
}

/// Whether `name` can be a `nixos-rebuild -p` profile nixboot reads:
/// 1-64 bytes of `[A-Za-z0-9_.+-]` not starting with `.` or `-` and not
/// ending in `-link` (those are generation links), and not `system` (that
/// name means the system profile itself). GRUB's install-grub.pl is
/// stricter (`\w+`); systemd-boot takes any name.
pub fn valid_profile_name(name: &[u8]) -> bool {
    (1..=64).contains(&name.len())
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
        && !name.starts_with(b".")
        && !name.starts_with(b"-")
        && !name.ends_with(b"-link")
        && name != b"system"
}

/// The base name of a profile's links: `system` or `NAME`.
fn link_base(profile: Option<&str>) -> &str {
    profile.unwrap_or("system")
}

/// The directory holding a profile's generation links.
fn profile_dir(profile: Option<&str>) -> &'static str {
    match profile {
        None => PROFILES_DIR,
        Some(_) => SYSTEM_PROFILES_DIR,
    }
}

/// The profile link itself: [`SYSTEM_PROFILE`] or
/// `system-profiles/NAME`.
pub fn profile_path(profile: Option<&str>) -> String {
    match profile {
        None => SYSTEM_PROFILE.to_owned(),
        Some(p) => format!("{SYSTEM_PROFILES_DIR}/{p}"),
    }
}

/// How a profile is named in messages: `the system profile` or
/// `profile 'NAME'`.
pub fn profile_title(profile: Option<&str>) -> String {
    match profile {
        None => "the system profile".to_owned(),
        Some(p) => format!("profile '{p}'"),
    }
}

/// Split `<base>-<N>-link` into base and N.
fn split_link_name(name: &[u8]) -> Option<(&[u8], u64)> {
    let rest = name.strip_suffix(b"-link")?;
    let dash = rest.iter().rposition(|b| *b == b'-')?;
    let (base, digits) = (rest.get(..dash)?, rest.get(dash.checked_add(1)?..)?);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((base, std::str::from_utf8(digits).ok()?.parse().ok()?))
}

/// Parse `<profile>-<N>-link` into N (`system-<N>-link` for `None`).
pub fn parse_link_name_in(profile: Option<&str>, name: &[u8]) -> Option<u64> {
    split_link_name(name)
        .filter(|(base, _)| *base == link_base(profile).as_bytes())
        .map(|(_, n)| n)
}

/// Parse `system-<N>-link` into N.
pub fn parse_link_name(name: &[u8]) -> Option<u64> {
    parse_link_name_in(None, name)
}

/// The path of a profile's generation N link.
pub fn link_path_in(profile: Option<&str>, n: u64) -> String {
    format!("{}/{}-{n}-link", profile_dir(profile), link_base(profile))
}

/// The path of generation N's link.
pub fn link_path(n: u64) -> String {
    link_path_in(None, n)
}

/// Which generation the profile names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Current {
    /// `system -> system-N-link`.
    Generation(u64),
    /// `system` points somewhere else (e.g. straight at a store path).
    Direct(Vec<u8>),
}

impl Current {
    /// The generation number, if the profile names one.
    pub fn number(&self) -> Option<u64> {
        match self {
            Current::Generation(n) => Some(*n),
            Current::Direct(_) => None,
        }
    }
}

/// Read a profile link (one symlink read, no directory listing).
pub fn current_in(fs: &GuestFs, profile: Option<&str>) -> Result<Current, NixosError> {
    let path = profile_path(profile);
    let target = match fs.read_link(path.as_bytes()) {
        Err(FsError::NotFound(_)) if profile.is_some() => {
            return Err(NixosError::UnknownProfile(format!(
                "no profile {}: {} does not exist",
                crate::error::EscapedBare(link_base(profile).as_bytes()),
                crate::error::EscapedBare(path.as_bytes())
            )));
        }
        r => r.map_err(fs_err("NixOS system profile"))?,
    };
    let target = target.ok_or(NixosError::ProfileNotLink(match profile {
        None => SYSTEM_PROFILE,
        Some(_) => "the named profile",
    }))?;
    let dir = format!("{}/", profile_dir(profile));
    let name = target.strip_prefix(dir.as_bytes()).unwrap_or(&target);
    Ok(match parse_link_name_in(profile, name) {
        Some(n) => Current::Generation(n),
        None => Current::Direct(target),
    })
}

/// Read the `system` profile link.
pub fn current(fs: &GuestFs) -> Result<Current, NixosError> {
    current_in(fs, None)
}

/// A generation link found in the profile directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationLink {
    /// N of `system-N-link`.
    pub number: u64,
    /// The link's own mtime (lstat), seconds since the epoch.
    pub mtime: i64,
}

/// A profile: generation links newest first, and the current one.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `None` for `system`, else the `nixos-rebuild -p` name.
    pub name: Option<String>,
    /// Generation links, newest (highest number) first.
    pub links: Vec<GenerationLink>,
    /// What the profile link points at.
    pub current: Current,
}

/// The numbers of every generation link of a profile, newest first: one
/// directory listing, no per-link reads.
pub fn generation_numbers_in(fs: &GuestFs, profile: Option<&str>) -> Result<Vec<u64>, NixosError> {
    let entries = fs
        .list_dir(profile_dir(profile).as_bytes())
        .map_err(fs_err("profile directory"))?;
    let mut numbers: Vec<u64> = entries
        .iter()
        .filter(|e| e.kind == Kind::Symlink)
        .filter_map(|e| parse_link_name_in(profile, &e.name))
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers.dedup();
    Ok(numbers)
}

/// The numbers of every `system-N-link`, newest first.
pub fn generation_numbers(fs: &GuestFs) -> Result<Vec<u64>, NixosError> {
    generation_numbers_in(fs, None)
}

fn keep_newest(mut links: Vec<GenerationLink>, profile: Option<&str>) -> Vec<GenerationLink> {
    links.sort_unstable_by_key(|l| std::cmp::Reverse(l.number));
    links.dedup_by_key(|l| l.number);
    if links.len() > MAX_GENERATIONS {
        log::warn!(
            "{} generations in {}; only the newest {MAX_GENERATIONS} are considered",
            links.len(),
            profile_title(profile)
        );
        links.truncate(MAX_GENERATIONS);
    }
    links
}

/// List every generation link of a profile (the newest
/// [`MAX_GENERATIONS`]).
pub fn read_profile_in(fs: &GuestFs, profile: Option<&str>) -> Result<Profile, NixosError> {
    let current = current_in(fs, profile)?;
    // Each link's own metadata comes with the listing (read by inode
    // number), so no path is walked per generation.
    let entries = fs
        .list_dir_stat(profile_dir(profile).as_bytes(), |name| {
            parse_link_name_in(profile, name).is_some()
        })
        .map_err(fs_err("profile directory"))?;
    let links: Vec<GenerationLink> = entries
        .iter()
        .filter(|e| e.meta.is_symlink())
        .filter_map(|e| {
            Some(GenerationLink {
                number: parse_link_name_in(profile, &e.name)?,
                mtime: e.meta.mtime(),
            })
        })
        .collect();
    Ok(Profile {
        name: profile.map(str::to_owned),
        links: keep_newest(links, profile),
        current,
    })
}

/// List every `system-N-link` (the newest [`MAX_GENERATIONS`]).
pub fn read_profile(fs: &GuestFs) -> Result<Profile, NixosError> {
    read_profile_in(fs, None)
}

/// The named profiles (`system-profiles/NAME` links with a valid name),
/// sorted, at most [`MAX_PROFILES`]; none when the directory does not
/// exist. One directory listing.
pub fn profile_names(fs: &GuestFs) -> Result<Vec<String>, NixosError> {
    if !fs
        .exists(SYSTEM_PROFILES_DIR.as_bytes())
        .map_err(fs_err("profile directory"))?
    {
        return Ok(Vec::new());
    }
    let entries = fs
        .list_dir(SYSTEM_PROFILES_DIR.as_bytes())
        .map_err(fs_err("profile directory"))?;
    let mut names: Vec<String> = entries
        .into_iter()
        .filter(|e| e.kind == Kind::Symlink && valid_profile_name(&e.name))
        .filter_map(|e| String::from_utf8(e.name).ok())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() > MAX_PROFILES {
        log::warn!(
            "{} profiles in {SYSTEM_PROFILES_DIR}; only the first {MAX_PROFILES} (by name) are considered",
            names.len()
        );
        names.truncate(MAX_PROFILES);
    }
    Ok(names)
}

/// Every named profile with its generation links: one listing of
/// [`SYSTEM_PROFILES_DIR`] with each link's metadata (not one per
/// profile), then one link read per profile. A profile whose link cannot
/// be read is skipped with a warning.
pub fn read_named_profiles(fs: &GuestFs) -> Result<Vec<Profile>, NixosError> {
    let names = profile_names(fs)?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: std::collections::BTreeSet<&[u8]> = names.iter().map(String::as_bytes).collect();
    let entries = fs
        .list_dir_stat(SYSTEM_PROFILES_DIR.as_bytes(), |name| {
            split_link_name(name).is_some_and(|(base, _)| wanted.contains(base))
        })
        .map_err(fs_err("profile directory"))?;
    let mut by_name: std::collections::BTreeMap<&str, Vec<GenerationLink>> =
        names.iter().map(|n| (n.as_str(), Vec::new())).collect();
    for e in entries.iter().filter(|e| e.meta.is_symlink()) {
        let Some((base, number)) = split_link_name(&e.name) else {
            continue;
        };
        let Some(v) = std::str::from_utf8(base).ok().and_then(|b| by_name.get_mut(b)) else {
            continue;
        };
        v.push(GenerationLink {
            number,
            mtime: e.meta.mtime(),
        });
    }
    let mut out = Vec::with_capacity(by_name.len());
    for (name, links) in by_name {
        match current_in(fs, Some(name)) {
            Ok(current) => out.push(Profile {
                name: Some(name.to_owned()),
                links: keep_newest(links, Some(name)),
                current,
            }),
            Err(e) => log::warn!("skipping profile {}: {e}", escape(name.as_bytes())),
        }
    }
    Ok(out)
}

/// Where an entry's data came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    /// `boot.json`.
    Bootspec,
    /// The toplevel's `kernel`, `initrd`, `init`, `kernel-params` files.
    Legacy,
}

/// One bootable configuration: a generation or one of its specialisations.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootEntry {
    /// Generation number (`None` when the profile points at a store path).
    pub generation: Option<u64>,
    /// Specialisation name.
    pub specialisation: Option<String>,
    /// Guest path of the kernel.
    pub kernel: String,
    /// Guest path of the initrd.
    pub initrd: Option<String>,
    /// Stage-2 init (goes into `init=`).
    pub init: String,
    /// Kernel parameters, without `init=`.
    pub kernel_params: Vec<String>,
    /// The toplevel store path.
    pub toplevel: String,
    /// `nixos-version` of the toplevel (or the bootspec label).
    pub nixos_version: String,
    /// Where it came from.
    pub origin: Origin,
    /// The bootspec `initrdSecrets` tool, if declared (not runnable here).
    pub initrd_secrets: Option<String>,
    /// The `nixos-rebuild -p` profile the entry belongs to (`None`: the
    /// system profile).
    #[serde(default)]
    pub profile: Option<String>,
}

/// A generation with its specialisations.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Generation number.
    pub number: Option<u64>,
    /// The link's mtime.
    pub mtime: Option<i64>,
    /// The generation's own entry.
    pub entry: BootEntry,
    /// Its specialisations, sorted by name.
    pub specialisations: Vec<BootEntry>,
    /// The `nixos-rebuild -p` profile (`None`: the system profile).
    #[serde(default)]
    pub profile: Option<String>,
}

fn utf8(bytes: Vec<u8>) -> Result<String, NixosError> {
    String::from_utf8(bytes).map_err(|e| NixosError::NotUtf8(escape(e.as_bytes())))
}

fn read_text(fs: &GuestFs, path: &str) -> Result<Option<String>, NixosError> {
    if !fs.exists(path.as_bytes()).map_err(fs_err("toplevel"))? {
        return Ok(None);
    }
    let b = fs
        .read_small(path.as_bytes(), MAX_SMALL_FILE)
        .map_err(fs_err("toplevel file"))?;
    Ok(Some(utf8(b)?.trim().to_owned()))
}

fn resolve_str(fs: &GuestFs, path: &str, what: &'static str) -> Result<String, NixosError> {
    utf8(fs.resolve(path.as_bytes(), true).map_err(fs_err(what))?)
}

/// Load the generation whose toplevel `link` resolves to.
pub fn load_generation(fs: &GuestFs, link: &str, number: Option<u64>) -> Result<Generation, NixosError> {
    let mtime = fs.lstat(link.as_bytes()).ok().map(|m| m.mtime());
    let toplevel = resolve_str(fs, link, "generation")?;
    let (entry, specs) = load_toplevel(fs, &toplevel, number, None)?;
    let mut specialisations = Vec::new();
    match specs {
        Specs::Bootspec(map) => {
            for (name, v1) in map {
                let version = read_text(fs, &format!("{}/nixos-version", v1.toplevel)).ok().flatten();
                specialisations.push(from_v1(v1, number, Some(name), version));
            }
        }
        Specs::Legacy => {
            let dir = format!("{toplevel}/specialisation");
            if fs.exists(dir.as_bytes()).map_err(fs_err("specialisations"))? {
                let mut names: Vec<String> = fs
                    .list_dir(dir.as_bytes())
                    .map_err(fs_err("specialisations"))?
                    .into_iter()
                    .filter_map(|e| String::from_utf8(e.name).ok())
                    .collect();
                names.sort();
                names.truncate(MAX_SPECIALISATIONS);
                for name in names {
                    let child = resolve_str(fs, &format!("{dir}/{name}"), "specialisation")?;
                    match load_toplevel(fs, &child, number, Some(name.clone())) {
                        Ok((e, _)) => specialisations.push(e),
                        Err(e) => log::warn!(
                            "specialisation {} of {}: {e}",
                            escape(name.as_bytes()),
                            escape(toplevel.as_bytes())
                        ),
                    }
                }
            }
        }
    }
    Ok(Generation {
        number,
        mtime,
        entry,
        specialisations,
        profile: None,
    })
}

/// Load generation `number` of a profile (`None`: what the profile link
/// itself resolves to), its entries marked with the profile.
pub fn load_generation_in(fs: &GuestFs, profile: Option<&str>, number: Option<u64>) -> Result<Generation, NixosError> {
    let link = match number {
        Some(n) => link_path_in(profile, n),
        None => profile_path(profile),
    };
    let mut g = load_generation(fs, &link, number)?;
    if let Some(p) = profile {
        g.profile = Some(p.to_owned());
        g.entry.profile = Some(p.to_owned());
        for s in &mut g.specialisations {
            s.profile = Some(p.to_owned());
        }
    }
    Ok(g)
}

enum Specs {
    Bootspec(std::collections::BTreeMap<String, bootspec::V1>),
    Legacy,
}

fn from_v1(
    v1: bootspec::V1,
    generation: Option<u64>,
    specialisation: Option<String>,
    version: Option<String>,
) -> BootEntry {
    BootEntry {
        generation,
        specialisation,
        nixos_version: version.unwrap_or_else(|| v1.label.clone()),
        kernel: v1.kernel,
        initrd: v1.initrd,
        init: v1.init,
        kernel_params: v1.kernel_params,
        toplevel: v1.toplevel,
        origin: Origin::Bootspec,
        initrd_secrets: v1.initrd_secrets,
        profile: None,
    }
}

fn load_toplevel(
    fs: &GuestFs,
    toplevel: &str,
    generation: Option<u64>,
    specialisation: Option<String>,
) -> Result<(BootEntry, Specs), NixosError> {
    let version = read_text(fs, &format!("{toplevel}/nixos-version"))?;
    let bootjson = format!("{toplevel}/boot.json");
    // Why boot.json was refused: the error to report if the toplevel's
    // own files cannot stand in for it either.
    let mut refused = None;
    if fs.exists(bootjson.as_bytes()).map_err(fs_err("boot.json"))? {
        let parsed = fs
            .read_small(bootjson.as_bytes(), MAX_BOOTSPEC)
            .map_err(fs_err("boot.json"))
            .and_then(|b| {
                bootspec::parse(&b).map_err(|source| NixosError::Bootspec {
                    path: escape(bootjson.as_bytes()),
                    source,
                })
            });
        match parsed {
            Ok(b) => {
                let entry = from_v1(b.v1, generation, specialisation, version);
                return Ok((entry, Specs::Bootspec(b.specialisations)));
            }
            Err(e) => {
                log::warn!("{e}; using the toplevel's files instead");
                refused = Some(e);
            }
        }
    }
    let kernel_link = format!("{toplevel}/kernel");
    if !fs.exists(kernel_link.as_bytes()).map_err(fs_err("kernel"))? {
        return Err(refused.unwrap_or_else(|| NixosError::NotASystem(escape(toplevel.as_bytes()))));
    }
    let kernel = resolve_str(fs, &kernel_link, "kernel")?;
    let initrd_link = format!("{toplevel}/initrd");
    let initrd = if fs.exists(initrd_link.as_bytes()).map_err(fs_err("initrd"))? {
        Some(resolve_str(fs, &initrd_link, "initrd")?)
    } else {
        None
    };
    let params = read_text(fs, &format!("{toplevel}/kernel-params"))?.unwrap_or_default();
    let kernel_params: Vec<String> = params.split_whitespace().map(str::to_owned).collect();
    if kernel_params.len() > crate::limits::MAX_KERNEL_PARAMS {
        return Err(NixosError::NotASystem(format!(
            "{} has too many kernel-params",
            escape(toplevel.as_bytes())
        )));
    }
    let entry = BootEntry {
        generation,
        specialisation,
        kernel,
        initrd,
        init: format!("{toplevel}/init"),
        kernel_params,
        toplevel: toplevel.to_owned(),
        nixos_version: version.unwrap_or_else(|| "unknown".to_owned()),
        origin: Origin::Legacy,
        initrd_secrets: None,
        profile: None,
    };
    Ok((entry, Specs::Legacy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names() {
        assert_eq!(parse_link_name(b"system-42-link"), Some(42));
        assert_eq!(parse_link_name(b"system-0-link"), Some(0));
        for bad in [
            &b"system--link"[..],
            b"system-+1-link",
            b"system-1-linkx",
            b"system-99999999999999999999-link",
            b"system-1",
            b"x-1-link",
        ] {
            assert_eq!(parse_link_name(bad), None, "{}", escape(bad));
        }
    }

    #[test]
    fn profile_link_names() {
        assert_eq!(parse_link_name_in(Some("work"), b"work-3-link"), Some(3));
        assert_eq!(parse_link_name_in(Some("work"), b"system-3-link"), None);
        assert_eq!(parse_link_name_in(Some("a-1"), b"a-1-2-link"), Some(2));
        assert_eq!(parse_link_name_in(Some("a"), b"a-1-2-link"), None);
        assert_eq!(parse_link_name_in(None, b"work-3-link"), None);
        assert_eq!(
            link_path_in(Some("work"), 3),
            format!("{SYSTEM_PROFILES_DIR}/work-3-link")
        );
        assert_eq!(link_path_in(None, 3), format!("{PROFILES_DIR}/system-3-link"));
        assert_eq!(profile_path(Some("work")), format!("{SYSTEM_PROFILES_DIR}/work"));
        for ok in [&b"work"[..], b"a_b", b"v1.2+x", b"test-env"] {
            assert!(valid_profile_name(ok), "{}", escape(ok));
        }
        for bad in [
            &b""[..],
            b"system",
            b"work-3-link",
            b".hidden",
            b"-x",
            b"a/b",
            b"a b",
            b"\x1b[2J",
            &[b'a'; 65][..],
        ] {
            assert!(!valid_profile_name(bad), "{}", escape(bad));
        }
    }
}
