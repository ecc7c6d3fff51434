//! Bootspec (`boot.json`, RFC 0125) parsing: bytes in, [`BootSpec`] out.
//! Pure; guest data.
//!
//! Only `org.nixos.bootspec.v1`, `org.nixos.specialisation.v1` and
//! nixboot's own extension [`GUEST_EXTENSION`] are read; every other
//! top-level key is an extension and ignored. Nested
//! specialisations are undefined by the RFC and ignored. The caller caps
//! the input at [`crate::limits::MAX_BOOTSPEC`] bytes; here the number of
//! kernel parameters and specialisations is capped, and serde_json's
//! recursion limit bounds nesting. The `bootspec` crate is not used: its
//! synthesizer reads the *host* filesystem, and its types add nothing to
//! these few fields.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::limits::{MAX_KERNEL_PARAMS, MAX_SPECIALISATIONS};

/// Why a `boot.json` was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BootspecError {
    /// Not valid JSON or missing required fields.
    #[error("invalid boot.json: {0}")]
    Json(#[from] serde_json::Error),
    /// Too many kernel parameters.
    #[error("boot.json has {0} kernel parameters, over the limit of {MAX_KERNEL_PARAMS}")]
    TooManyParams(usize),
    /// Too many specialisations.
    #[error("boot.json has {0} specialisations, over the limit of {MAX_SPECIALISATIONS}")]
    TooManySpecialisations(usize),
}

/// The fields of `org.nixos.bootspec.v1` nixboot uses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V1 {
    /// Stage-2 init (absolute guest path).
    pub init: String,
    /// The initrd, if the system has one.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The initrd secrets appender, if any.
    #[serde(default)]
    pub initrd_secrets: Option<String>,
    /// The kernel image.
    pub kernel: String,
    /// Kernel parameters (without `init=`).
    pub kernel_params: Vec<String>,
    /// Human label, e.g. `NixOS Warbler 25.05 (Linux 6.12.31)`.
    pub label: String,
    /// System double, e.g. `x86_64-linux`.
    pub system: String,
    /// The toplevel store path.
    pub toplevel: String,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "org.nixos.bootspec.v1")]
    v1: V1,
    #[serde(rename = "org.nixos.specialisation.v1", default)]
    specialisations: BTreeMap<String, SpecDoc>,
    #[serde(rename = "org.nixboot.guest.v1", default)]
    guest: Option<GuestExt>,
}

#[derive(Deserialize)]
struct SpecDoc {
    #[serde(rename = "org.nixos.bootspec.v1")]
    v1: V1,
    #[serde(rename = "org.nixboot.guest.v1", default)]
    guest: Option<GuestExt>,
}

/// The bootspec extension `xen/nix/guest.nix` adds
/// (`boot.bootspec.extensions`): `{"initrdSecretsInInitrd": true}` says
/// NixOS already copied `boot.initrd.secrets` into the initrd when it
/// built it (`boot.loader.external` leaves
/// `boot.loader.supportsInitrdSecrets` false), so the `initrdSecrets`
/// appender the bootspec names has nothing left to do for a boot loader.
pub const GUEST_EXTENSION: &str = "org.nixboot.guest.v1";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GuestExt {
    #[serde(default)]
    initrd_secrets_in_initrd: bool,
}

/// Drop the appender when the guest module says the secrets are already
/// in the initrd: only an appender a loader would have to run is kept.
fn settle_secrets(mut v: V1, guest: Option<&GuestExt>) -> V1 {
    if guest.is_some_and(|g| g.initrd_secrets_in_initrd) {
        v.initrd_secrets = None;
    }
    v
}

/// A parsed `boot.json`: the generation and its specialisations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    /// The generation itself.
    pub v1: V1,
    /// Specialisations by name, sorted.
    pub specialisations: BTreeMap<String, V1>,
}

fn check(v: &V1) -> Result<(), BootspecError> {
    if v.kernel_params.len() > MAX_KERNEL_PARAMS {
        return Err(BootspecError::TooManyParams(v.kernel_params.len()));
    }
    Ok(())
}

/// Parse `boot.json` bytes.
pub fn parse(bytes: &[u8]) -> Result<BootSpec, BootspecError> {
    let doc: Doc = serde_json::from_slice(bytes)?;
    if doc.specialisations.len() > MAX_SPECIALISATIONS {
        return Err(BootspecError::TooManySpecialisations(doc.specialisations.len()));
    }
    check(&doc.v1)?;
    let mut specialisations = BTreeMap::new();
    for (name, s) in doc.specialisations {
        check(&s.v1)?;
        specialisations.insert(name, settle_secrets(s.v1, s.guest.as_ref()));
    }
    Ok(BootSpec {
        v1: settle_secrets(doc.v1, doc.guest.as_ref()),
        specialisations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "org.nixos.bootspec.v1": {
        "init": "/nix/store/aaa-nixos-system-g-25.05/init",
        "initrd": "/nix/store/bbb-initrd-linux-6.12.31/initrd",
        "kernel": "/nix/store/ccc-linux-6.12.31/bzImage",
        "kernelParams": ["console=hvc0", "loglevel=4"],
        "label": "NixOS Warbler 25.05 (Linux 6.12.31)",
        "system": "x86_64-linux",
        "toplevel": "/nix/store/aaa-nixos-system-g-25.05"
      },
      "org.nixos.specialisation.v1": {
        "debug": {
          "org.nixos.bootspec.v1": {
            "init": "/nix/store/ddd-nixos-system-g-25.05/init",
            "kernel": "/nix/store/ccc-linux-6.12.31/bzImage",
            "kernelParams": ["console=hvc0", "loglevel=7"],
            "label": "NixOS Warbler 25.05 (Linux 6.12.31)",
            "system": "x86_64-linux",
            "toplevel": "/nix/store/ddd-nixos-system-g-25.05"
          },
          "org.nixos.specialisation.v1": {}
        }
      },
      "org.nixos.systemd-boot": {"sortKey": "nixos"},
      "org.xenproject.bootspec.v1": {"xen": "/nix/store/x/xen.efi", "xenParams": []}
    }"#;

    #[test]
    fn parses_sample_with_extensions() {
        let b = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(b.v1.kernel, "/nix/store/ccc-linux-6.12.31/bzImage");
        assert_eq!(
            b.v1.initrd.as_deref(),
            Some("/nix/store/bbb-initrd-linux-6.12.31/initrd")
        );
        assert_eq!(b.v1.kernel_params, ["console=hvc0", "loglevel=4"]);
        let d = &b.specialisations["debug"];
        assert_eq!(d.initrd, None);
        assert_eq!(d.kernel_params, ["console=hvc0", "loglevel=7"]);
    }

    #[test]
    fn initrd_secrets_matter_only_without_the_guest_module() {
        let with = |ext: &str| {
            SAMPLE.replace(
                "\"kernel\": \"/nix/store/ccc-linux-6.12.31/bzImage\",",
                "\"kernel\": \"/nix/store/ccc-linux-6.12.31/bzImage\", \"initrdSecrets\": \"/nix/store/eee/bin/append-initrd-secrets\",",
            )
            .replace("\"org.nixos.systemd-boot\"", &format!("{ext}\"org.nixos.systemd-boot\""))
        };
        let b = parse(with("").as_bytes()).unwrap();
        assert_eq!(
            b.v1.initrd_secrets.as_deref(),
            Some("/nix/store/eee/bin/append-initrd-secrets")
        );
        let b = parse(with(r#""org.nixboot.guest.v1": {"initrdSecretsInInitrd": true}, "#).as_bytes()).unwrap();
        assert_eq!(b.v1.initrd_secrets, None);
        let b =
            parse(with(r#""org.nixboot.guest.v1": {"initrdSecretsInInitrd": false, "x": 1}, "#).as_bytes()).unwrap();
        assert!(b.v1.initrd_secrets.is_some());
        assert!(parse(with(r#""org.nixboot.guest.v1": {"initrdSecretsInInitrd": "yes"}, "#).as_bytes()).is_err());
    }

    #[test]
    fn missing_required_field_is_an_error() {
        let bad = SAMPLE.replace("\"kernel\": \"/nix/store/ccc-linux-6.12.31/bzImage\",\n        \"kernelParams\": [\"console=hvc0\", \"loglevel=4\"],", "\"kernelParams\": [],");
        assert!(matches!(parse(bad.as_bytes()), Err(BootspecError::Json(_))));
        assert!(matches!(parse(b"[]"), Err(BootspecError::Json(_))));
        assert!(matches!(
            parse(b"{\"org.nixos.bootspec.v1\": null}"),
            Err(BootspecError::Json(_))
        ));
    }

    #[test]
    fn too_many_params() {
        let params: Vec<String> = (0..=MAX_KERNEL_PARAMS).map(|i| format!("\"p{i}\"")).collect();
        let doc = format!(
            r#"{{"org.nixos.bootspec.v1": {{"init":"/i","kernel":"/k","kernelParams":[{}],"label":"l","system":"s","toplevel":"/t"}}}}"#,
            params.join(",")
        );
        assert!(matches!(parse(doc.as_bytes()), Err(BootspecError::TooManyParams(_))));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut doc = String::from(
            r#"{"org.nixos.bootspec.v1":{"init":"/i","kernel":"/k","kernelParams":[],"label":"l","system":"s","toplevel":"/t"},"ext":"#,
        );
        doc.push_str(&"[".repeat(100_000));
        assert!(parse(doc.as_bytes()).is_err());
    }
}
