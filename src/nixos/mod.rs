//! NixOS generations inside the guest: the system profile, its
//! `system-<N>-link`s, and each generation's boot entry (from `boot.json`,
//! or synthesized from the toplevel's files for generations without one).
//! Guest data, read through [`GuestFs`] only.
//!
//! The default boot reads only the `system` link, the one generation it
//! names and that generation's files; listing every generation is left to
//! callers that need it ([`read_profile`]).

pub mod bootspec;
pub mod installed;
pub mod select;

use crate::error::escape;
use crate::fs::{FsError, GuestFs, Kind};
use crate::limits::{MAX_BOOTSPEC, MAX_GENERATIONS, MAX_SMALL_FILE, MAX_SPECIALISATIONS};

/// The directory holding the system profile and its generation links.
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";
/// The system profile link.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

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
    #[error("{SYSTEM_PROFILE} is not a symlink")]
    ProfileNotLink,
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

/// Parse `system-<N>-link` into N.
pub fn parse_link_name(name: &[u8]) -> Option<u64> {
    let digits = name.strip_prefix(b"system-")?.strip_suffix(b"-link")?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The path of generation N's link.
pub fn link_path(n: u64) -> String {
    format!("{PROFILES_DIR}/system-{n}-link")
}

/// Which generation the profile names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Current {
    /// `system -> system-N-link`.
    Generation(u64),
    /// `system` points somewhere else (e.g. straight at a store path).
    Direct(Vec<u8>),
}

/// Read the `system` profile link (one symlink read, no directory listing).
pub fn current(fs: &GuestFs) -> Result<Current, NixosError> {
    let target = fs
        .read_link(SYSTEM_PROFILE.as_bytes())
        .map_err(fs_err("NixOS system profile"))?
        .ok_or(NixosError::ProfileNotLink)?;
    let name = target
        .strip_prefix(format!("{PROFILES_DIR}/").as_bytes())
        .unwrap_or(&target);
    Ok(match parse_link_name(name) {
        Some(n) => Current::Generation(n),
        None => Current::Direct(target),
    })
}

/// A generation link found in the profile directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationLink {
    /// N of `system-N-link`.
    pub number: u64,
    /// The link's own mtime (lstat), seconds since the epoch.
    pub mtime: i64,
}

/// The profile: generation links newest first, and the current one.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Generation links, newest (highest number) first.
    pub links: Vec<GenerationLink>,
    /// What `system` points at.
    pub current: Current,
}

/// The numbers of every `system-N-link`, newest first: one directory
/// listing, no per-link reads.
pub fn generation_numbers(fs: &GuestFs) -> Result<Vec<u64>, NixosError> {
    let entries = fs
        .list_dir(PROFILES_DIR.as_bytes())
        .map_err(fs_err("profile directory"))?;
    let mut numbers: Vec<u64> = entries
        .iter()
        .filter(|e| e.kind == Kind::Symlink)
        .filter_map(|e| parse_link_name(&e.name))
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers.dedup();
    Ok(numbers)
}

/// List every `system-N-link` (the newest [`MAX_GENERATIONS`]).
pub fn read_profile(fs: &GuestFs) -> Result<Profile, NixosError> {
    let current = current(fs)?;
    // Each link's own metadata comes with the listing (read by inode
    // number), so no path is walked per generation.
    let entries = fs
        .list_dir_stat(PROFILES_DIR.as_bytes(), |name| parse_link_name(name).is_some())
        .map_err(fs_err("profile directory"))?;
    let mut links: Vec<GenerationLink> = entries
        .iter()
        .filter(|e| e.meta.is_symlink())
        .filter_map(|e| {
            let number = parse_link_name(&e.name)?;
            Some(GenerationLink {
                number,
                mtime: e.meta.mtime(),
            })
        })
        .collect();
    links.sort_unstable_by_key(|l| std::cmp::Reverse(l.number));
    links.dedup_by_key(|l| l.number);
    if links.len() > MAX_GENERATIONS {
        log::warn!(
            "{} generations; only the newest {MAX_GENERATIONS} are considered",
            links.len()
        );
        links.truncate(MAX_GENERATIONS);
    }
    Ok(Profile { links, current })
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
    })
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
}
