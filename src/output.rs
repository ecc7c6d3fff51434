//! The result handed to libxl: rendering (`simple0`, `simple`, `sxp`) and
//! the files in the output directory. dom0 side; the values rendered here
//! are paths nixboot chose itself and a command line already checked.
//!
//! Rendering refuses, rather than emits, any value with a control
//! character (which covers both delimiters, NUL and newline) or an item
//! libxl would drop (≥ 8192 bytes): XSA-198 was result-file injection.
//! Kernel and ramdisk copies are created inside `--output-directory` only,
//! exclusively (`O_EXCL`, so never through an existing name or symlink),
//! mode 0600, with pygrub's names `boot_kernel.XXXXXXXX` and
//! `boot_ramdisk.XXXXXXXX`; they are removed again unless the boot
//! succeeds.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::limits::MAX_RESULT_ITEM;

/// Result formats, as pygrub names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// NUL-separated items (what libxl asks for).
    Simple0,
    /// Newline-separated items.
    Simple,
    /// pygrub's S-expression: `linux (kernel '…')(ramdisk '…')(args '…')`.
    Sxp,
}

/// What libxl receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootResult {
    /// dom0 path of the kernel copy.
    pub kernel: String,
    /// dom0 path of the initrd copy.
    pub ramdisk: Option<String>,
    /// The command line (omitted when empty, as pygrub does).
    pub args: String,
}

fn checked<'a>(key: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.chars().any(char::is_control) {
        return Err(Error::HostMsg(format!(
            "refusing to emit a {key} value with a control character: {}",
            crate::error::escape(value.as_bytes())
        )));
    }
    if key.len().saturating_add(1).saturating_add(value.len()) > MAX_RESULT_ITEM {
        return Err(Error::HostMsg(format!(
            "{key} item longer than libxl's {MAX_RESULT_ITEM}-byte limit"
        )));
    }
    Ok(value)
}

/// Python's `repr()` of a printable string (pygrub's sxp quoting).
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push(quote);
    for c in s.chars() {
        if c == '\\' || c == quote {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(quote);
    out
}

/// Render the result in `format`.
pub fn render(r: &BootResult, format: Format) -> Result<Vec<u8>, Error> {
    let mut items: Vec<(&str, &str)> = vec![("kernel", checked("kernel", &r.kernel)?)];
    if let Some(rd) = &r.ramdisk {
        items.push(("ramdisk", checked("ramdisk", rd)?));
    }
    if !r.args.is_empty() {
        items.push(("args", checked("args", &r.args)?));
    }
    let out = match format {
        Format::Simple0 | Format::Simple => {
            let sep = if format == Format::Simple0 { '\0' } else { '\n' };
            let mut s = String::new();
            for (k, v) in items {
                s.push_str(k);
                s.push(' ');
                s.push_str(v);
                s.push(sep);
            }
            s.push(sep);
            s
        }
        Format::Sxp => {
            let mut s = String::from("linux ");
            for (k, v) in items {
                s.push_str(&format!("({k} {})", py_repr(v)));
            }
            s
        }
    };
    Ok(out.into_bytes())
}

/// A file being created in the output directory: removed on drop unless
/// [`OutFile::keep`] is called.
pub struct OutFile {
    inner: tempfile::NamedTempFile,
}

impl OutFile {
    /// The file to write to.
    pub fn file(&mut self) -> &mut File {
        self.inner.as_file_mut()
    }

    /// The file, read-only access (metadata).
    pub fn as_file(&self) -> &File {
        self.inner.as_file()
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// Keep the file; returns its path.
    pub fn keep(self) -> Result<PathBuf, Error> {
        self.inner
            .keep()
            .map(|(_, p)| p)
            .map_err(|e| Error::host("keeping output file", e.error))
    }
}

/// The validated `--output-directory`.
#[derive(Clone, Debug)]
pub struct OutputDir {
    dir: PathBuf,
}

impl OutputDir {
    /// Check that `dir` is an existing directory (libxl pre-creates it).
    pub fn open(dir: &Path) -> Result<OutputDir, Error> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::host(format!("output directory {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::HostMsg(format!(
                "output directory {} is not a directory",
                dir.display()
            )));
        }
        let s = dir
            .to_str()
            .ok_or_else(|| Error::HostMsg("output directory path is not UTF-8".into()))?;
        checked("output directory", s)?;
        Ok(OutputDir { dir: dir.to_owned() })
    }

    /// Create `<prefix>XXXXXXXX` exclusively, mode 0600.
    pub fn create(&self, prefix: &str) -> Result<OutFile, Error> {
        let inner = tempfile::Builder::new()
            .prefix(prefix)
            .rand_bytes(8)
            .tempfile_in(&self.dir)
            .map_err(|e| Error::host(format!("creating {prefix}* in {}", self.dir.display()), e))?;
        Ok(OutFile { inner })
    }
}

/// Where the rendered result goes.
pub enum ResultSink {
    /// An existing file (libxl pre-creates it).
    File(File, PathBuf),
    /// Standard output (`--output=-` or none).
    Stdout,
}

impl ResultSink {
    /// Open the existing `--output` file for writing, or stdout for `-`.
    pub fn open(path: Option<&Path>) -> Result<ResultSink, Error> {
        match path {
            None => Ok(ResultSink::Stdout),
            Some(p) if p.as_os_str() == "-" => Ok(ResultSink::Stdout),
            Some(p) => {
                let f = File::options()
                    .write(true)
                    .truncate(true)
                    .open(p)
                    .map_err(|e| Error::host(format!("opening result file {}", p.display()), e))?;
                Ok(ResultSink::File(f, p.to_owned()))
            }
        }
    }

    /// Write the whole result in one go.
    pub fn write(self, bytes: &[u8]) -> Result<(), Error> {
        match self {
            ResultSink::File(mut f, p) => f
                .write_all(bytes)
                .and_then(|()| f.flush())
                .map_err(|e| Error::host(format!("writing result file {}", p.display()), e)),
            ResultSink::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(bytes)
                    .and_then(|()| o.flush())
                    .map_err(|e| Error::host("writing result to stdout", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> BootResult {
        BootResult {
            kernel: "/var/lib/xen/bootloader.7.d/boot_kernel.abcdefgh".into(),
            ramdisk: Some("/var/lib/xen/bootloader.7.d/boot_ramdisk.ijklmnop".into()),
            args: "init=/nix/store/x/init console=hvc0".into(),
        }
    }

    #[test]
    fn simple0_exact_bytes() {
        assert_eq!(
            render(&r(), Format::Simple0).unwrap(),
            b"kernel /var/lib/xen/bootloader.7.d/boot_kernel.abcdefgh\0ramdisk /var/lib/xen/bootloader.7.d/boot_ramdisk.ijklmnop\0args init=/nix/store/x/init console=hvc0\0\0"
        );
        let bare = BootResult {
            ramdisk: None,
            args: String::new(),
            ..r()
        };
        assert_eq!(
            render(&bare, Format::Simple).unwrap(),
            b"kernel /var/lib/xen/bootloader.7.d/boot_kernel.abcdefgh\n\n"
        );
    }

    #[test]
    fn sxp_quotes_like_python() {
        let x = BootResult {
            ramdisk: None,
            args: "a='b' \\".into(),
            ..r()
        };
        assert_eq!(
            String::from_utf8(render(&x, Format::Sxp).unwrap()).unwrap(),
            "linux (kernel '/var/lib/xen/bootloader.7.d/boot_kernel.abcdefgh')(args \"a='b' \\\\\")"
        );
        assert_eq!(py_repr("it's \"x\""), r#"'it\'s "x"'"#);
    }

    #[test]
    fn refuses_delimiters() {
        for args in ["a\0kernel /etc/shadow", "a\nkernel /etc/shadow", "\u{7f}"] {
            let x = BootResult {
                args: args.into(),
                ..r()
            };
            for f in [Format::Simple0, Format::Simple, Format::Sxp] {
                assert!(render(&x, f).is_err(), "{args:?} {f:?}");
            }
        }
        let long = BootResult {
            args: "a".repeat(MAX_RESULT_ITEM),
            ..r()
        };
        assert!(render(&long, Format::Simple0).is_err());
    }

    #[test]
    fn out_files_are_private_and_removed_unless_kept() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let od = OutputDir::open(d.path()).unwrap();
        let mut f = od.create("boot_kernel.").unwrap();
        f.file().write_all(b"k").unwrap();
        let name = f.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("boot_kernel.") && name.len() == "boot_kernel.".len() + 8);
        assert_eq!(std::fs::metadata(f.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let dropped = od.create("boot_ramdisk.").unwrap();
        let dp = dropped.path().to_owned();
        drop(dropped);
        assert!(!dp.exists());
        let kept = f.keep().unwrap();
        assert!(kept.starts_with(d.path()) && kept.exists());
    }
}
