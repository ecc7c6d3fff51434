//! The top-level error: who is at fault, and one line that says why.
//!
//! Every failure ends as one line on stderr, which libxl copies to the
//! guest console and to `/var/log/xen/bootloader.<domid>.log`:
//! `nixboot: error: guest disk: …`, `nixboot: error: dom0: …` or
//! `nixboot: error: usage: …`. Stage errors (partition tables, the guest
//! filesystem, NixOS generations, the command line, output) carry their
//! evidence and nest under [`Error::Guest`] or [`Error::Host`]. Strings that
//! come from the guest are passed through [`escape`] before they are shown.

use std::fmt;

use crate::{cmdline::CmdlineError, fs::FsError, nixos::NixosError, part::PartError};

/// Who is at fault for a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// The guest disk: corrupt, unsupported or hostile data.
    Guest,
    /// dom0: I/O on the host, the output directory, a missing tool.
    Host,
    /// The command line nixboot was given.
    Usage,
}

impl Fault {
    /// The prefix printed before the message.
    pub fn prefix(self) -> &'static str {
        match self {
            Fault::Guest => "guest disk",
            Fault::Host => "dom0",
            Fault::Usage => "usage",
        }
    }
}

/// A failure found while reading the guest disk.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Partition table problems.
    #[error(transparent)]
    Partition(#[from] PartError),
    /// Filesystem problems.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// NixOS profile and generation problems.
    #[error(transparent)]
    Nixos(#[from] NixosError),
    /// The kernel command line could not be built.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// A file chosen for boot is larger than its cap.
    #[error("{what} {path} is {len} bytes, over the {cap}-byte limit")]
    TooLarge {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Guest path, escaped.
        path: String,
        /// Size claimed by the guest.
        len: u64,
        /// The cap in force.
        cap: u64,
    },
}

/// The top-level error type of nixboot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest disk is at fault.
    #[error("guest disk: {0}")]
    Guest(#[from] GuestError),
    /// dom0 is at fault.
    #[error("dom0: {what}: {source}")]
    Host {
        /// What nixboot was doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// dom0 is at fault, with no OS error to show.
    #[error("dom0: {0}")]
    HostMsg(String),
    /// The command line is at fault.
    #[error("usage: {0}")]
    Usage(String),
    /// An error reported across the sandbox boundary by the parse child.
    #[error("{}: {message}", fault.prefix())]
    Reported {
        /// Who is at fault.
        fault: Fault,
        /// The child's message (already escaped by the child and again
        /// checked by the parent).
        message: String,
    },
}

impl Error {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Guest(_) => Fault::Guest,
            Error::Host { .. } | Error::HostMsg(_) => Fault::Host,
            Error::Usage(_) => Fault::Usage,
            Error::Reported { fault, .. } => *fault,
        }
    }

    /// The process exit code for this error: 2 for usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.fault() {
            Fault::Usage => 2,
            _ => 1,
        }
    }

    /// A dom0 I/O error with context.
    pub fn host(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Host {
            what: what.into(),
            source,
        }
    }

    /// The message without the fault prefix (what crosses the sandbox).
    pub fn message(&self) -> String {
        let full = self.to_string();
        let prefix = self.fault().prefix();
        full.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(": "))
            .map(str::to_owned)
            .unwrap_or(full)
    }
}

impl From<FsError> for Error {
    fn from(e: FsError) -> Self {
        Error::Guest(GuestError::Fs(e))
    }
}
impl From<PartError> for Error {
    fn from(e: PartError) -> Self {
        Error::Guest(GuestError::Partition(e))
    }
}
impl From<NixosError> for Error {
    fn from(e: NixosError) -> Self {
        Error::Guest(GuestError::Nixos(e))
    }
}
impl From<CmdlineError> for Error {
    fn from(e: CmdlineError) -> Self {
        Error::Guest(GuestError::Cmdline(e))
    }
}

/// Escape bytes for display on a console: printable characters stay,
/// everything else becomes `\n`, `\t`, `\0`, `\xNN` or `\u{NNNN}`, and the
/// result is quoted. Never let a raw guest string reach stderr.
pub fn escape(bytes: &[u8]) -> String {
    Escaped(bytes).to_string()
}

/// Display adapter behind [`escape`]: quoted.
pub struct Escaped<'a>(pub &'a [u8]);

/// Like [`Escaped`], without the quotes (for tables).
pub struct EscapedBare<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        write_escaped(f, self.0)?;
        f.write_str("\"")
    }
}

impl fmt::Display for EscapedBare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                '\0' => f.write_str("\\0")?,
                c if c.is_control() => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02X}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_controls_and_invalid_utf8() {
        assert_eq!(escape(b"a b"), r#""a b""#);
        assert_eq!(escape(b"x\0kernel /etc/shadow\n"), r#""x\0kernel /etc/shadow\n""#);
        assert_eq!(escape(b"\xff\x1b[2J"), r#""\xFF\u{001b}[2J""#);
        assert_eq!(escape("é\u{85}".as_bytes()), "\"é\\u{0085}\"");
    }

    #[test]
    fn exit_codes_and_prefixes() {
        let u = Error::Usage("no disk".into());
        assert_eq!(u.exit_code(), 2);
        assert_eq!(u.to_string(), "usage: no disk");
        assert_eq!(u.message(), "no disk");
        let h = Error::HostMsg("x".into());
        assert_eq!(h.exit_code(), 1);
        assert_eq!(h.to_string(), "dom0: x");
        let r = Error::Reported {
            fault: Fault::Guest,
            message: "bad".into(),
        };
        assert_eq!(r.to_string(), "guest disk: bad");
    }
}
