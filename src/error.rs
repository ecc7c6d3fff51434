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

use crate::limits::MAX_SHOWN_GUEST_STRING;

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
/// everything else (C0 controls, DEL, C1 controls U+0080..U+009F, invalid
/// UTF-8) becomes `\n`, `\t`, `\0`, `\xNN` or `\u{NNNN}`, and the result
/// is quoted. At most [`MAX_SHOWN_GUEST_STRING`] bytes of the input are
/// shown; a longer string is cut and ends in `…`. Never let a raw guest
/// string reach stderr. This and [`EscapedBare`] are the one escaping
/// function for guest strings; [`guard`] applies the same rules to text
/// that was built from escaped strings on the other side of the sandbox.
pub fn escape(bytes: &[u8]) -> String {
    Escaped(bytes).to_string()
}

/// Display adapter behind [`escape`]: quoted and shortened.
pub struct Escaped<'a>(pub &'a [u8]);

/// Like [`Escaped`], without the quotes and whole (for labels, tables and
/// command lines, which have their own caps).
pub struct EscapedBare<'a>(pub &'a [u8]);

/// `bytes` cut at `max` bytes (at a character boundary when it is valid
/// UTF-8), and whether it was cut.
pub fn shorten(bytes: &[u8], max: usize) -> (&[u8], bool) {
    if bytes.len() <= max {
        return (bytes, false);
    }
    let mut end = max;
    // Back up over UTF-8 continuation bytes (at most 3) so a character
    // is not split into `\xNN` noise.
    let mut back = 0u8;
    while back < 3 && end > 0 && bytes.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end = end.saturating_sub(1);
        back = back.saturating_add(1);
    }
    (bytes.get(..end).unwrap_or_default(), true)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = shorten(self.0, MAX_SHOWN_GUEST_STRING);
        f.write_str("\"")?;
        write_escaped(f, shown, true)?;
        if cut {
            f.write_str("…")?;
        }
        f.write_str("\"")
    }
}

impl fmt::Display for EscapedBare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, true)
    }
}

/// [`EscapedBare`], cut to at most [`MAX_SHOWN_GUEST_STRING`] bytes
/// (ending in `…` when cut): a guest name or version inside a longer text
/// such as a menu label.
pub fn escape_short(bytes: &[u8]) -> String {
    clip(EscapedBare(bytes).to_string(), MAX_SHOWN_GUEST_STRING)
}

/// `s` cut to at most `max` bytes at a character boundary, ending in `…`
/// when cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.truncate(end);
    s.push('…');
    s
}

/// Display adapter behind [`guard`].
pub struct Guarded<'a>(pub &'a [u8]);

impl fmt::Display for Guarded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0, false)
    }
}

/// [`Guarded`] for multi-line text (`nixboot list` output): newlines
/// are kept, every other control character escaped.
pub struct GuardedText<'a>(pub &'a [u8]);

impl fmt::Display for GuardedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.0.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write_escaped(f, line, false)?;
        }
        Ok(())
    }
}

/// Make text from across the trust boundary (a message, a label, a log
/// line the parse child built with [`escape`]) safe for a terminal: the
/// same rules as [`escape`] for control characters and invalid UTF-8,
/// but backslashes and quotes are kept, so text that is already escaped
/// passes unchanged and is not escaped twice.
pub fn guard(bytes: &[u8]) -> String {
    Guarded(bytes).to_string()
}

fn write_escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8], quote: bool) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' if quote => f.write_str("\\\"")?,
                '\\' if quote => f.write_str("\\\\")?,
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
        // DEL and the C1 controls CSI (U+009B) and OSC (U+009D).
        assert_eq!(
            escape("\u{7f}\u{9b}31m\u{9d}0;x".as_bytes()),
            r#""\u{007f}\u{009b}31m\u{009d}0;x""#
        );
    }

    #[test]
    fn escape_shortens_long_strings() {
        let long = "/nix/store/".to_owned() + &"a".repeat(4000);
        let e = escape(long.as_bytes());
        assert!(e.len() < MAX_SHOWN_GUEST_STRING + 10, "{}", e.len());
        assert!(e.ends_with("a…\""), "{e}");
        // Never splits a character.
        let e = escape("é".repeat(150).as_bytes());
        assert!(e.ends_with("é…\""), "{e}");
        assert_eq!(escape(&[b'x'; 200]), format!("\"{}\"", "x".repeat(200)));
    }

    #[test]
    fn guard_escapes_controls_but_not_backslashes() {
        let already = escape(b"a\x1b[2J\"b");
        assert_eq!(guard(already.as_bytes()), already);
        assert_eq!(guard(b"x\ny\r\x1b\xff"), "x\\ny\\r\\u{001b}\\xFF");
        assert_eq!(guard("\u{9b}".as_bytes()), "\\u{009b}");
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
