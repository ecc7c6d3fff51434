//! The boot default the guest itself recorded: [`INSTALLED_FILE`], written
//! by the install hook of `xen/nix/guest.nix` (`boot.loader.external`)
//! every time `switch-to-configuration switch|boot` runs. Guest data.
//!
//! The system profile alone is wrong in two cases a real boot loader
//! handles: `nixos-rebuild switch --specialisation X` (the profile names
//! the parent, the installed default is the specialisation) and
//! `system-N-link/bin/switch-to-configuration boot` (the profile does not
//! move at all). The hook records the toplevel it was called with, so
//! nixboot can follow the installer's choice, plus the menu settings
//! (`boot.loader.timeout` and the entry limit).
//!
//! The file lives in `/nix/var/nix`, next to the profile nixboot already
//! reads: it is always on the filesystem that holds the profile, whatever
//! the guest mounts at `/boot`. Format (one line of JSON, unknown keys
//! ignored):
//!
//! ```json
//! {"version":1,"default":"/nix/store/…-nixos-system-…","timeout":5,"limit":null}
//! ```
//!
//! `timeout` is seconds (`null` or negative: wait for a key, which nixboot
//! bounds), `limit` the number of newest generations the menu shows
//! (`null` or 0: all). [`parse`] is pure and checks everything; the
//! caller reads at most [`MAX_INSTALLED_FILE`] bytes. The `default` is
//! only a name to look for: nixboot boots it only if it is a generation
//! of the profile or a specialisation of one.

use serde::{Deserialize, Deserializer};

use super::{NixosError, Profile, link_path_in, profile_path, read_named_profiles, read_profile};
use crate::error::escape;
use crate::fs::{FsError, GuestFs};
use crate::limits::{MAX_INSTALLED_FILE, MAX_PATH_LEN, MAX_SPECIALISATIONS};

/// Where the guest's install hook writes the boot default.
pub const INSTALLED_FILE: &str = "/nix/var/nix/nixboot.json";

/// The only format version understood.
pub const VERSION: u64 = 1;

/// The menu countdown the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GuestTimeout {
    /// The file does not say.
    Unset,
    /// Count down this many seconds (0: no menu).
    Seconds(u64),
    /// `null` or negative: wait for a key (bounded by nixboot).
    WaitForKey,
}

/// A valid installed-default file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The toplevel `switch-to-configuration` was last installed from.
    pub default: String,
    /// `boot.loader.timeout`.
    pub timeout: GuestTimeout,
    /// Newest generations shown in the menu (`None`: all).
    pub limit: Option<u64>,
}

/// Why the file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    /// Over [`MAX_INSTALLED_FILE`].
    #[error("{0} bytes, over the {MAX_INSTALLED_FILE}-byte limit")]
    TooLarge(usize),
    /// Not JSON, or a field of the wrong type.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A version this nixboot does not know.
    #[error("version {0} is not supported (this nixboot reads version {VERSION})")]
    Version(u64),
    /// `default` is not a plausible toplevel.
    #[error("default {0} is not an absolute /nix/store path")]
    BadDefault(String),
}

/// `Some(v)` for a present key, even `null`: tells `null` from missing.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Doc {
    version: u64,
    default: String,
    #[serde(default, deserialize_with = "present")]
    timeout: Option<Option<i64>>,
    #[serde(default)]
    limit: Option<u64>,
}

fn valid_default(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("/nix/store/") else {
        return false;
    };
    !rest.is_empty() && p.len() <= MAX_PATH_LEN && !p.chars().any(char::is_control) && !p.split('/').any(|c| c == "..")
}

/// Parse the file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Installed, InstalledError> {
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_INSTALLED_FILE {
        return Err(InstalledError::TooLarge(bytes.len()));
    }
    let doc: Doc = serde_json::from_slice(bytes)?;
    if doc.version != VERSION {
        return Err(InstalledError::Version(doc.version));
    }
    if !valid_default(&doc.default) {
        return Err(InstalledError::BadDefault(escape(doc.default.as_bytes())));
    }
    let timeout = match doc.timeout {
        None => GuestTimeout::Unset,
        Some(None) => GuestTimeout::WaitForKey,
        Some(Some(s)) => u64::try_from(s).map_or(GuestTimeout::WaitForKey, GuestTimeout::Seconds),
    };
    Ok(Installed {
        default: doc.default,
        timeout,
        limit: doc.limit.filter(|l| *l > 0),
    })
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading it from the guest filesystem failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Its contents were refused.
    #[error(transparent)]
    Parse(#[from] InstalledError),
}

/// Read [`INSTALLED_FILE`] from the guest: `Ok(None)` when there is none.
pub fn read(fs: &GuestFs) -> Result<Option<Installed>, ReadError> {
    if !fs.exists(INSTALLED_FILE.as_bytes())? {
        return Ok(None);
    }
    let bytes = fs.read_small(INSTALLED_FILE.as_bytes(), MAX_INSTALLED_FILE)?;
    Ok(Some(parse(&bytes)?))
}

/// Where in the profiles a toplevel was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The `nixos-rebuild -p` profile (`None`: the system profile).
    pub profile: Option<String>,
    /// The generation (`None`: the profile points straight at a store path).
    pub number: Option<u64>,
    /// The specialisation of that generation, if it is one.
    pub specialisation: Option<String>,
}

/// Find `toplevel` among the generations of every profile and their
/// specialisations (`<generation>/specialisation/<name>`), comparing
/// resolved guest paths: the system profile first, then the named
/// profiles by name; in each the current generation first, then newest
/// first. A generation whose links do not resolve is skipped, and each
/// toplevel is looked at once (at most [`crate::limits::MAX_GENERATIONS`]
/// generations per profile, [`crate::limits::MAX_PROFILES`] profiles,
/// [`MAX_SPECIALISATIONS`] specialisations each).
pub fn locate(fs: &GuestFs, toplevel: &str) -> Result<Option<Found>, NixosError> {
    let want = match fs.resolve(toplevel.as_bytes(), true) {
        Ok(p) => p,
        Err(FsError::NotFound(_)) => return Ok(None),
        Err(source) => {
            return Err(NixosError::Fs {
                what: "installed default",
                source,
            });
        }
    };
    let mut profiles = vec![read_profile(fs)?];
    match read_named_profiles(fs) {
        Ok(named) => profiles.extend(named),
        Err(e) => log::debug!("named profiles: {e}"),
    }
    // Generations that share a toplevel are looked at once.
    let mut seen = std::collections::HashSet::new();
    for profile in &profiles {
        if let Some(found) = locate_in(fs, profile, &want, &mut seen) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn locate_in(
    fs: &GuestFs,
    profile: &Profile,
    want: &[u8],
    seen: &mut std::collections::HashSet<Vec<u8>>,
) -> Option<Found> {
    let name = profile.name.as_deref();
    let current = profile.current.number();
    let mut candidates: Vec<(String, Option<u64>)> = Vec::with_capacity(profile.links.len().saturating_add(1));
    candidates.push(match current {
        Some(n) => (link_path_in(name, n), Some(n)),
        None => (profile_path(name), None),
    });
    candidates.extend(
        profile
            .links
            .iter()
            .filter(|l| Some(l.number) != current)
            .map(|l| (link_path_in(name, l.number), Some(l.number))),
    );
    let found = |number, specialisation| Found {
        profile: name.map(str::to_owned),
        number,
        specialisation,
    };
    for (link, number) in candidates {
        let Ok(top) = fs.resolve(link.as_bytes(), true) else {
            continue;
        };
        if !seen.insert(top.clone()) {
            continue;
        }
        if top == want {
            return Some(found(number, None));
        }
        let mut dir = top;
        dir.extend_from_slice(b"/specialisation");
        let Ok(entries) = fs.list_dir(&dir) else {
            continue;
        };
        for e in entries.into_iter().take(MAX_SPECIALISATIONS) {
            let Ok(spec) = String::from_utf8(e.name) else {
                continue;
            };
            let mut p = dir.clone();
            p.push(b'/');
            p.extend_from_slice(spec.as_bytes());
            if fs.resolve(&p, true).is_ok_and(|t| t == want) {
                return Some(found(number, Some(spec)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-demo-24.11";

    fn doc(rest: &str) -> String {
        format!(r#"{{"version":1,"default":"{TOP}"{rest}}}"#)
    }

    #[test]
    fn what_the_hook_writes() {
        let i = parse(doc(r#","timeout":5,"limit":null"#).as_bytes()).unwrap();
        assert_eq!(
            i,
            Installed {
                default: TOP.into(),
                timeout: GuestTimeout::Seconds(5),
                limit: None
            }
        );
        let i = parse(doc(r#","timeout":null,"limit":3"#).as_bytes()).unwrap();
        assert_eq!((i.timeout, i.limit), (GuestTimeout::WaitForKey, Some(3)));
    }

    #[test]
    fn optional_fields_and_unknown_keys() {
        let i = parse(doc(r#","future":{"x":[1,2]},"limit":0"#).as_bytes()).unwrap();
        assert_eq!((i.timeout, i.limit), (GuestTimeout::Unset, None));
        assert_eq!(
            parse(doc(r#","timeout":-1"#).as_bytes()).unwrap().timeout,
            GuestTimeout::WaitForKey
        );
        assert_eq!(
            parse(doc(r#","timeout":0"#).as_bytes()).unwrap().timeout,
            GuestTimeout::Seconds(0)
        );
    }

    #[test]
    fn refusals() {
        let bad = |b: &[u8]| parse(b).unwrap_err();
        assert!(matches!(bad(b""), InstalledError::Json(_)));
        assert!(matches!(bad(b"[]"), InstalledError::Json(_)));
        assert!(matches!(bad(br#"{"version":1}"#), InstalledError::Json(_)));
        assert!(matches!(
            bad(format!(r#"{{"version":2,"default":"{TOP}"}}"#).as_bytes()),
            InstalledError::Version(2)
        ));
        assert!(matches!(
            bad(doc(r#","timeout":"5""#).as_bytes()),
            InstalledError::Json(_)
        ));
        assert!(matches!(bad(doc(r#","limit":-3"#).as_bytes()), InstalledError::Json(_)));
        assert!(matches!(
            bad(doc(r#","timeout":1.5"#).as_bytes()),
            InstalledError::Json(_)
        ));
        for d in [
            "nix/store/x",
            "/etc/shadow",
            "/nix/store/",
            "/nix/store/../../etc",
            "/nix/store/x\nkernel /etc/shadow",
            "/nix/store/x\u{1b}[2J",
        ] {
            let text = serde_json::json!({"version": 1, "default": d}).to_string();
            let e = bad(text.as_bytes());
            assert!(matches!(e, InstalledError::BadDefault(_)), "{d:?}: {e}");
            assert!(!e.to_string().chars().any(char::is_control), "{e}");
        }
        let long = format!("/nix/store/{}", "a".repeat(MAX_PATH_LEN));
        let text = serde_json::json!({"version": 1, "default": long}).to_string();
        assert!(matches!(bad(text.as_bytes()), InstalledError::BadDefault(_)));
        let huge = vec![b' '; usize::try_from(MAX_INSTALLED_FILE).unwrap() + 1];
        assert!(matches!(bad(&huge), InstalledError::TooLarge(_)));
        let deep = format!(r#"{{"version":1,"default":"{TOP}","x":{}}}"#, "[".repeat(30_000));
        assert!(matches!(bad(deep.as_bytes()), InstalledError::Json(_)));
    }
}
