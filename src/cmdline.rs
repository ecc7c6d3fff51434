//! The guest kernel command line: `init=<init>`, then the kernel
//! parameters joined by spaces, then the admin's `--args` (what xl builds
//! from `extra=`/`root=`/`cmdline=`), as every NixOS boot loader and pygrub
//! build it. No `root=` and no `systemConfig=` are added.
//!
//! Guest data: a value containing a control character (NUL, newline, ESC,
//! …) is refused, never emitted: it could inject items into libxl's result
//! file (XSA-198). A line over [`MAX_CMDLINE`] bytes (what a PV guest
//! receives) is refused rather than silently cut.

use crate::error::escape;
use crate::limits::MAX_CMDLINE;

/// Why a command line was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// A part contains a control character.
    #[error("{what} contains a control character: {value}")]
    ControlChar {
        /// Which part.
        what: &'static str,
        /// The value, escaped.
        value: String,
    },
    /// The line is too long for a PV guest.
    #[error("kernel command line is {0} bytes; a PV guest receives at most {MAX_CMDLINE}")]
    TooLong(usize),
    /// `init` is empty.
    #[error("init path is empty")]
    EmptyInit,
}

/// Refuse any control character in `value`.
pub fn check_value(what: &'static str, value: &str) -> Result<(), CmdlineError> {
    if value.chars().any(char::is_control) {
        return Err(CmdlineError::ControlChar {
            what,
            value: escape(value.as_bytes()),
        });
    }
    Ok(())
}

/// Build the command line. `init` and `params` come from the guest,
/// `extra` from the admin (`--args`).
pub fn build(init: Option<&str>, params: &[String], extra: Option<&str>) -> Result<String, CmdlineError> {
    let mut parts: Vec<&str> = Vec::new();
    let init_arg;
    if let Some(init) = init {
        if init.is_empty() {
            return Err(CmdlineError::EmptyInit);
        }
        check_value("init", init)?;
        init_arg = format!("init={init}");
        parts.push(&init_arg);
    }
    for p in params {
        check_value("kernel parameter", p)?;
        if !p.trim().is_empty() {
            parts.push(p.as_str());
        }
    }
    if let Some(extra) = extra {
        check_value("--args", extra)?;
        if !extra.trim().is_empty() {
            parts.push(extra);
        }
    }
    let line = parts.join(" ");
    if line.len() > MAX_CMDLINE {
        return Err(CmdlineError::TooLong(line.len()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_nixos_loaders() {
        let p = vec!["console=hvc0".to_owned(), "loglevel=4".to_owned()];
        assert_eq!(
            build(Some("/nix/store/x-nixos-system/init"), &p, Some("marker=1 quiet")).unwrap(),
            "init=/nix/store/x-nixos-system/init console=hvc0 loglevel=4 marker=1 quiet"
        );
        assert_eq!(build(Some("/i"), &[], None).unwrap(), "init=/i");
        assert_eq!(build(None, &[], Some("root=/dev/xvda1")).unwrap(), "root=/dev/xvda1");
        assert_eq!(build(None, &[], None).unwrap(), "");
    }

    #[test]
    fn refuses_injection() {
        let p = vec!["x\u{0}kernel /etc/shadow".to_owned()];
        assert_eq!(
            build(Some("/i"), &p, None),
            Err(CmdlineError::ControlChar {
                what: "kernel parameter",
                value: r#""x\0kernel /etc/shadow""#.into()
            })
        );
        assert!(matches!(
            build(Some("/i\nramdisk /etc/passwd"), &[], None),
            Err(CmdlineError::ControlChar { what: "init", .. })
        ));
        assert!(matches!(
            build(Some("/i"), &[], Some("a\u{1b}[2J")),
            Err(CmdlineError::ControlChar { what: "--args", .. })
        ));
    }

    #[test]
    fn length_limit_is_exact() {
        let fill = |n: usize| vec!["a".repeat(n)];
        // "init=/i " is 8 bytes.
        assert_eq!(
            build(Some("/i"), &fill(MAX_CMDLINE - 8), None).unwrap().len(),
            MAX_CMDLINE
        );
        assert_eq!(
            build(Some("/i"), &fill(MAX_CMDLINE - 7), None),
            Err(CmdlineError::TooLong(MAX_CMDLINE + 1))
        );
    }
}
