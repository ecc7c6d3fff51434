//! Running external tools (nix, mke2fs, e2fsck, debugfs, dumpe2fs, tune2fs,
//! sqlite3): one helper for all of them, and the interrupt flag.
//!
//! [`run_cmd`] logs the argv at debug level, feeds stdin from a file or
//! nothing, captures stdout (or sends it to a file) and stderr, hands each
//! stderr line to an optional callback while the tool runs, and the
//! process id to another (the threads that read ahead of mke2fs and write
//! behind it), names a missing binary and the Debian package that brings
//! it, and turns a failure into one error line with
//! the tail of the tool's stderr. It polls the child so that SIGINT,
//! SIGTERM or SIGHUP (see [`install_signal_handlers`]) kill the tool and
//! return [`interrupted_error`], letting the callers' guards remove the
//! staging tree and the half-written image.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Error;

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Catch SIGINT, SIGTERM and SIGHUP: they only set a flag, which
/// [`run_cmd`] and [`check_interrupted`] turn into an error so that every
/// guard runs its cleanup on the way out.
pub fn install_signal_handlers() -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(flag()))
            .map_err(|e| Error::host("installing the signal handler", e))?;
    }
    Ok(())
}

/// Whether a signal asked us to stop.
pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}

/// The error returned once interrupted.
pub fn interrupted_error() -> Error {
    Error::HostMsg("interrupted; removed the staging tree and the partial image".into())
}

/// Fail if a signal asked us to stop.
pub fn check_interrupted() -> Result<(), Error> {
    if interrupted() {
        Err(interrupted_error())
    } else {
        Ok(())
    }
}

/// The Debian package that ships `tool` (for the "not found" message).
fn package_of(tool: &str) -> &'static str {
    match tool {
        "nix" | "nix-store" | "nix-env" | "nix-build" => "nix-bin",
        "mke2fs" | "e2fsck" | "debugfs" | "dumpe2fs" | "tune2fs" => "e2fsprogs",
        "sqlite3" => "sqlite3",
        _ => "the package that provides it",
    }
}

/// Where a tool's stdout goes.
pub enum Out {
    /// Captured and returned.
    Capture,
    /// Written to this file.
    File(File),
}

/// Options for [`run_cmd`].
pub struct Run<'a> {
    /// Standard input: a file, or nothing (`/dev/null`).
    pub stdin: Option<File>,
    /// Standard output.
    pub stdout: Out,
    /// Called with every stderr line as it arrives.
    pub on_line: Option<&'a mut dyn FnMut(&str)>,
    /// Called with the tool's process id once it runs.
    pub on_spawn: Option<&'a mut dyn FnMut(u32)>,
    /// Exit codes that count as success (besides 0).
    pub ok_codes: &'a [i32],
}

impl Default for Run<'_> {
    fn default() -> Self {
        Run {
            stdin: None,
            stdout: Out::Capture,
            on_line: None,
            on_spawn: None,
            ok_codes: &[],
        }
    }
}

/// What a finished tool left.
#[derive(Debug)]
pub struct Finished {
    /// Captured stdout (empty when sent to a file).
    pub stdout: Vec<u8>,
    /// All of stderr.
    pub stderr: String,
    /// The exit code.
    pub code: i32,
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` non-empty lines of `text`, joined with "; ".
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines.get(start..).unwrap_or_default().join("; ")
}

/// Run `cmd` to completion (see the module docs).
pub fn run_cmd(mut cmd: Command, mut opts: Run<'_>) -> Result<Finished, Error> {
    check_interrupted()?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let shown = describe(&cmd);
    log::debug!("running: {shown}");
    let started = std::time::Instant::now();
    cmd.stdin(opts.stdin.take().map_or_else(Stdio::null, Stdio::from));
    let capture = matches!(opts.stdout, Out::Capture);
    match std::mem::replace(&mut opts.stdout, Out::Capture) {
        Out::Capture => cmd.stdout(Stdio::piped()),
        Out::File(f) => cmd.stdout(Stdio::from(f)),
    };
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::HostMsg(format!(
                "`{program}` not found on PATH (install {})",
                package_of(&program)
            ))
        } else {
            Error::host(format!("starting `{program}`"), e)
        }
    })?;
    if let Some(f) = opts.on_spawn.as_mut() {
        f(child.id());
    }
    let stdout_thread = child.stdout.take().filter(|_| capture).map(|mut o| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = o.read_to_end(&mut buf);
            buf
        })
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr_thread = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut r = BufReader::new(e);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    });
    let mut stderr = String::new();
    let take_lines = |stderr: &mut String, on_line: &mut Option<&mut dyn FnMut(&str)>| {
        while let Ok(l) = rx.try_recv() {
            if let Some(f) = on_line.as_mut() {
                f(l.trim_end());
            }
            stderr.push_str(&l);
        }
    };
    let status = loop {
        take_lines(&mut stderr, &mut opts.on_line);
        if interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(interrupted_error());
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::host(format!("waiting for `{program}`"), e)),
        }
    };
    if let Some(t) = stderr_thread {
        let _ = t.join();
    }
    take_lines(&mut stderr, &mut opts.on_line);
    let stdout = stdout_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    if interrupted() {
        return Err(interrupted_error());
    }
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            return Err(Error::HostMsg(format!(
                "`{shown}` was killed by signal {}",
                status.signal().unwrap_or(0)
            )));
        }
    };
    if code != 0 && !opts.ok_codes.contains(&code) {
        let mut why = tail(&stderr, 4);
        if why.is_empty() {
            why = tail(&String::from_utf8_lossy(&stdout), 4);
        }
        return Err(Error::HostMsg(format!("`{shown}` failed (exit {code}): {why}")));
    }
    log::debug!(
        "`{program}` exited {code} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Finished { stdout, stderr, code })
}

/// A `Command` for `program` with `args`, in the C locale (stable sort
/// order and messages).
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args).env("LC_ALL", "C");
    c
}

/// Fail with a clear message unless every tool in `tools` is on PATH.
pub fn require_tools(tools: &[&str]) -> Result<(), Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    let mut missing = Vec::new();
    for t in tools {
        let found = dirs.iter().any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(t)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        if !found {
            missing.push(format!("`{t}` (install {})", package_of(t)));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::HostMsg(format!("not found on PATH: {}", missing.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_and_reports() {
        let f = run_cmd(
            command("sh", ["-c", "echo out; echo err1 >&2; echo err2 >&2"]),
            Run::default(),
        )
        .unwrap();
        assert_eq!(f.stdout, b"out\n");
        assert_eq!(f.stderr, "err1\nerr2\n");
        let e = run_cmd(command("sh", ["-c", "echo bad >&2; exit 3"]), Run::default()).unwrap_err();
        assert!(e.to_string().contains("exit 3") && e.to_string().contains("bad"), "{e}");
        let ok = run_cmd(
            command("sh", ["-c", "exit 1"]),
            Run {
                ok_codes: &[1],
                ..Run::default()
            },
        )
        .unwrap();
        assert_eq!(ok.code, 1);
    }

    #[test]
    fn missing_tool_is_named() {
        let e = run_cmd(command("mke2fs-not-here", ["x"]), Run::default()).unwrap_err();
        assert!(e.to_string().contains("`mke2fs-not-here` not found"), "{e}");
        let e = require_tools(&["sh", "nix-not-here"]).unwrap_err();
        assert!(e.to_string().contains("nix-not-here"), "{e}");
        assert!(!e.to_string().contains("`sh`"), "{e}");
    }

    #[test]
    fn lines_reach_the_callback() {
        let mut seen = Vec::new();
        let mut cb = |l: &str| seen.push(l.to_owned());
        run_cmd(
            command("sh", ["-c", "echo a >&2; echo b >&2"]),
            Run {
                on_line: Some(&mut cb),
                ..Run::default()
            },
        )
        .unwrap();
        assert_eq!(seen, ["a", "b"]);
    }
}
