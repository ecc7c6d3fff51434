//! The privilege split: the parent (root, in dom0) opens the disk and the
//! output files; a freshly exec'd child parses the guest disk, confined.
//!
//! The child is this same binary re-executed with [`CHILD_ARG`], the disk
//! as its standard input (read-only descriptor), a pipe as its standard
//! output (frames, see [`crate::ipc`]) and another pipe as its standard
//! error: it never holds the pty (so it cannot read console keystrokes),
//! and the parent relays its log lines within a budget per run
//! ([`MAX_CHILD_LOG_BYTES`], [`MAX_CHILD_LOG_LINES`]). Before it reads a
//! byte of guest data it:
//!
//! * closes every descriptor it inherited beyond those three;
//! * asks for SIGKILL when the parent dies (`PR_SET_PDEATHSIG`, set again
//!   after any credential change, which clears it) and exits if the
//!   parent is already gone;
//! * with `--runas=UID`: enters fresh mount, IPC, network and UTS
//!   namespaces, chroots into an empty read-only tmpfs, and drops to
//!   UID/GID with no supplementary groups;
//! * sets no-new-privileges and resource limits (address space, file size
//!   0, no core dumps, no new processes, CPU seconds);
//! * installs a seccomp allowlist: it can read, write to its pipes, map
//!   memory and exit; open, exec, socket, ioctl and everything else kill
//!   it.
//!
//! The parent enforces one deadline for the whole run (all its children
//! share [`CHILD_DEADLINE_SECS`] of wall-clock and CPU time), kills its
//! child when it is itself stopped by SIGTERM, SIGINT or SIGHUP, caps every
//! frame and byte it accepts, and turns any crash, limit hit or timeout
//! into a one-line guest-disk error. A child that did not end with a
//! `Done` frame and exit status 0 never yields a result.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::boot::{self, Request};
use crate::disk::{BlockSource, Disk};
use crate::error::{Error, Fault};
use crate::ipc::{self, Failure, Tag};
use crate::limits::{
    CHILD_ADDRESS_SPACE, CHILD_DEADLINE_SECS, MAX_CHILD_LOG_BYTES, MAX_CHILD_LOG_LINES, MAX_LOG_LINE, MAX_RUNS,
};

/// argv[1] that makes the binary act as the parse child.
pub const CHILD_ARG: &str = "--nixboot-internal-parse-child";

/// Capacity requested for the frame pipe (Linux's default `pipe-max-size`).
const PIPE_SIZE: i32 = 1 << 20;

/// How the child is confined, decided by the parent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confinement {
    /// Drop to this uid (and gid) in fresh namespaces.
    pub runas: Option<u32>,
    /// Log level for the child's own messages.
    pub verbosity: u8,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChildArgs {
    request: Request,
    confinement: Confinement,
    /// The parent's pid: the child exits if its parent is no longer it.
    parent: i32,
    /// CPU seconds left in the run's budget (`RLIMIT_CPU`).
    cpu_secs: u64,
}

/// Close every descriptor above stderr: whatever the parent inherited
/// (`nixboot list disk 5</some/file`) must not be readable in the child.
/// Runs first thing in the child, before it opens anything itself.
fn close_inherited() -> Result<(), Error> {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        // No /proc: every possible descriptor number.
        Err(_) => {
            let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(os("RLIMIT_NOFILE"))?;
            (3..i32::try_from(soft.min(1 << 16)).unwrap_or(1 << 16)).collect()
        }
    };
    for fd in fds {
        // The directory listing's own descriptor is among them, already
        // closed: EBADF.
        match nix::unistd::close(fd) {
            Ok(()) | Err(nix::errno::Errno::EBADF) => {}
            Err(e) => return Err(os("closing inherited descriptors")(e)),
        }
    }
    Ok(())
}

/// SIGKILL when the parent dies, and exit now if it already has (it may
/// have died before the request was set).
fn die_with_parent(parent: i32) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(os("PR_SET_PDEATHSIG"))?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(Error::HostMsg("the parent of the parser is gone".into()));
    }
    Ok(())
}

/// Entry point of the parse child (`main` calls this when argv[1] is
/// [`CHILD_ARG`]).
pub fn child_main(json: &str) -> ExitCode {
    if close_inherited().is_err() {
        return ExitCode::from(1);
    }
    let out_fd = std::io::stdout().as_fd().try_clone_to_owned();
    let Ok(out_fd) = out_fd else { return ExitCode::from(1) };
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, File::from(out_fd));
    let result = (|| -> Result<(), Error> {
        let args: ChildArgs =
            serde_json::from_str(json).map_err(|e| Error::Usage(format!("bad child request: {e}")))?;
        die_with_parent(args.parent)?;
        crate::logging::init(args.confinement.verbosity);
        let disk_fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::host("taking the disk descriptor", e))?;
        let disk = Disk::from_file(File::from(disk_fd)).map_err(|e| Error::host("disk descriptor", e))?;
        confine(&args.confinement, args.parent, args.cpu_secs)?;
        boot::run(Rc::new(disk), &args.request, &mut out)?;
        out.flush().map_err(|e| Error::host("sending frames", e))
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let f = Failure {
                fault: e.fault(),
                message: e.message(),
            };
            let _ = ipc::write_json(&mut out, Tag::Failure, &f);
            let _ = out.flush();
            ExitCode::from(1)
        }
    }
}

fn os(what: &str) -> impl FnOnce(nix::errno::Errno) -> Error + '_ {
    move |e| Error::host(format!("confining the parser: {what}"), std::io::Error::from(e))
}

/// Apply the confinement to the current (child) process.
fn confine(c: &Confinement, parent: i32, cpu_secs: u64) -> Result<(), Error> {
    use nix::sys::resource::Resource;
    if let Some(uid) = c.runas {
        enter_empty_root().map_err(os("namespaces and empty root"))?;
        let gid = nix::unistd::Gid::from_raw(uid);
        nix::unistd::setgroups(&[]).map_err(os("setgroups"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(os("setresgid"))?;
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(os("setresuid"))?;
        if nix::unistd::geteuid().is_root() || nix::unistd::getegid().as_raw() != uid {
            return Err(Error::HostMsg(
                "confining the parser: privileges were not dropped".into(),
            ));
        }
        // A credential change clears the parent-death signal.
        die_with_parent(parent)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(os("no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(os("dumpable"))?;
    lower(Resource::RLIMIT_AS, CHILD_ADDRESS_SPACE).map_err(os("RLIMIT_AS"))?;
    lower(Resource::RLIMIT_FSIZE, 0).map_err(os("RLIMIT_FSIZE"))?;
    lower(Resource::RLIMIT_CORE, 0).map_err(os("RLIMIT_CORE"))?;
    lower(Resource::RLIMIT_NPROC, 0).map_err(os("RLIMIT_NPROC"))?;
    lower(Resource::RLIMIT_MEMLOCK, 0).map_err(os("RLIMIT_MEMLOCK"))?;
    lower(Resource::RLIMIT_CPU, cpu_secs.max(1)).map_err(os("RLIMIT_CPU"))?;
    crate::seccomp::install()
}

/// Set both limits of `resource` to `want`, or keep the current hard limit
/// if that is already lower: a dom0 that runs nixboot under a tighter limit
/// (pygrub's 256 MiB address space, a systemd `LimitAS=`) keeps it, and
/// raising a hard limit would need CAP_SYS_RESOURCE, which the child does
/// not have after `--runas` (nor in many containers).
fn lower(resource: nix::sys::resource::Resource, want: u64) -> nix::Result<()> {
    let (_, hard) = nix::sys::resource::getrlimit(resource)?;
    let v = want.min(hard);
    nix::sys::resource::setrlimit(resource, v, v)
}

/// New mount/IPC/network/UTS namespaces; `/` becomes an empty read-only
/// tmpfs (mounted over `/tmp` inside the private namespace, then chrooted
/// into), so no dom0 file is reachable by path.
fn enter_empty_root() -> nix::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("nixboot-empty"),
        "/tmp",
        Some("tmpfs"),
        flags,
        Some("size=4k,nr_inodes=2,mode=0555"),
    )?;
    mount(
        None::<&str>,
        "/tmp",
        None::<&str>,
        flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )?;
    nix::unistd::chroot("/tmp")?;
    nix::unistd::chdir("/")
}

/// What the parent does with the frames of the parse child.
pub trait Frames {
    /// A metadata frame (anything but file data); the payload is untrusted.
    fn frame(&mut self, tag: Tag, payload: &[u8]) -> Result<(), Error>;
    /// The next `len` bytes in the pipe are file data of `tag`
    /// ([`Tag::Kernel`] or [`Tag::Initrd`]): account for them and return
    /// the file they are appended to, or refuse them.
    fn data(&mut self, tag: Tag, len: u64) -> Result<&mut File, Error>;
}

/// Move exactly `len` bytes from the pipe to the end of `out`: with
/// splice(2), so the data goes from the pipe's pages into the file without
/// a trip through this process, or with read/write where splice is not
/// supported.
fn copy_data(pipe: &mut File, out: &mut File, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{SpliceFFlags, splice};
    use std::io::{ErrorKind, Read};
    let short = || std::io::Error::new(ErrorKind::UnexpectedEof, "file data cut short");
    let mut left = len;
    let mut use_splice = true;
    while left > 0 {
        if use_splice {
            match splice(&*pipe, None, &*out, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(short()),
                Ok(n) => left = left.saturating_sub(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL | Errno::ENOSYS) => use_splice = false,
                Err(e) => return Err(e.into()),
            }
        } else {
            buf.resize(left.min(1 << 20), 0);
            pipe.read_exact(buf).map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => short(),
                _ => e,
            })?;
            out.write_all(buf)?;
            left = left.saturating_sub(buf.len());
        }
    }
    Ok(())
}

/// Append `len` bytes of `disk` at `offset` to `out` (or `len` zeros
/// when `offset` is `None`), after checking the range lies on the disk:
/// with copy_file_range(2), an in-kernel copy like cp's, or with
/// pread/write where the kernel cannot (a block device, another
/// filesystem type).
fn copy_run(disk: &Disk, offset: Option<u64>, len: u64, out: &mut File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use nix::errno::Errno;
    use std::io::{Error as IoError, ErrorKind, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let Some(mut off) = offset else {
        // A hole: extend the file (it stays sparse).
        let end = out.seek(SeekFrom::End(0))?;
        let new = end
            .checked_add(len)
            .ok_or_else(|| IoError::new(ErrorKind::InvalidData, "hole too large"))?;
        out.set_len(new)?;
        out.seek(SeekFrom::End(0))?;
        return Ok(());
    };
    if off.checked_add(len).is_none_or(|end| end > disk.len()) {
        return Err(IoError::new(ErrorKind::InvalidData, "a data range outside the disk"));
    }
    let mut left = len;
    let mut in_kernel = true;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        if in_kernel {
            let mut o = i64::try_from(off).map_err(|_| IoError::new(ErrorKind::InvalidData, "offset"))?;
            match nix::fcntl::copy_file_range(disk.file(), Some(&mut o), &*out, None, chunk) {
                Ok(0) => return Err(IoError::new(ErrorKind::UnexpectedEof, "the disk ended early")),
                Ok(n) => {
                    let n = u64::try_from(n).unwrap_or(u64::MAX);
                    off = off.saturating_add(n);
                    left = left.saturating_sub(n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EBADF) => {
                    in_kernel = false;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            buf.resize(chunk.min(1 << 20), 0);
            disk.file().read_exact_at(buf, off)?;
            out.write_all(buf)?;
            let n = u64::try_from(buf.len()).unwrap_or(u64::MAX);
            off = off.saturating_add(n);
            left = left.saturating_sub(n);
        }
    }
    Ok(())
}

/// Copy the data ranges the child announced: each file (kernel, initrd)
/// on its own thread, so the two in-kernel copies run side by side.
fn copy_runs(disk: &Disk, runs: &[(Tag, ipc::Run)], frames: &mut dyn Frames) -> Result<(), Error> {
    let mut jobs = Vec::new();
    for tag in [Tag::Kernel, Tag::Initrd] {
        if runs.iter().any(|(t, _)| *t == tag) {
            let file = frames
                .data(tag, 0)?
                .try_clone()
                .map_err(|e| Error::host("duplicating an output descriptor", e))?;
            jobs.push((tag, file));
        }
    }
    let copy = |tag: Tag, mut out: File| -> Result<(), Error> {
        let mut buf = Vec::new();
        for (_, r) in runs.iter().filter(|(t, _)| *t == tag) {
            copy_run(disk, r.disk_offset, r.len, &mut out, &mut buf).map_err(|e| Error::Reported {
                fault: Fault::Guest,
                message: format!("copying the {tag:?} from the disk: {e}").to_lowercase(),
            })?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let mut jobs = jobs.into_iter();
        let first = jobs.next();
        let others: Vec<_> = jobs.map(|(t, f)| s.spawn(move || copy(t, f))).collect();
        let mut result = first.map_or(Ok(()), |(t, f)| copy(t, f));
        for h in others {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::HostMsg("a copy thread panicked".into())));
            result = result.and(r);
        }
        result
    })
}

/// The run's deadline: [`CHILD_DEADLINE_SECS`], or less if
/// `$NIXBOOT_PARSE_DEADLINE` says so (dom0's environment; it can only
/// lower the deadline).
pub fn run_deadline() -> Duration {
    let env = std::env::var("NIXBOOT_PARSE_DEADLINE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    Duration::from_secs(env.map_or(CHILD_DEADLINE_SECS, |v| v.min(CHILD_DEADLINE_SECS)))
}

/// Wall-clock time the run's parse children have used so far.
static WALL_USED: Mutex<Duration> = Mutex::new(Duration::ZERO);

/// CPU time of every parse child of this run so far (they are waited for).
fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return Duration::ZERO;
    };
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            .saturating_add(Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0)))
    };
    d(u.user_time()).saturating_add(d(u.system_time()))
}

/// What is left of the run's budget: wall-clock time and whole CPU
/// seconds (at least one; `RLIMIT_CPU` counts whole seconds), or an error
/// when it is spent.
fn budget_left() -> Result<(Duration, u64), Error> {
    let used = *WALL_USED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    split_budget(run_deadline(), used, children_cpu())
}

/// What a run with `deadline` has left after its children used `wall`
/// and `cpu`: wall-clock time, and CPU time in whole seconds rounded up.
fn split_budget(deadline: Duration, wall: Duration, cpu: Duration) -> Result<(Duration, u64), Error> {
    let wall_left = deadline.saturating_sub(wall);
    let cpu_left = deadline.saturating_sub(cpu);
    if wall_left.is_zero() || cpu_left.is_zero() {
        return Err(over_deadline(deadline));
    }
    let cpu_secs = cpu_left
        .as_secs()
        .saturating_add(u64::from(cpu_left.subsec_nanos() > 0));
    Ok((wall_left, cpu_secs))
}

fn over_deadline(deadline: Duration) -> Error {
    Error::Reported {
        fault: Fault::Guest,
        message: format!(
            "reading the disk took longer than {} s in all; the parser was stopped",
            deadline.as_secs()
        ),
    }
}

/// The parse child running now, for the signal handler.
static CHILD: Mutex<Option<nix::unistd::Pid>> = Mutex::new(None);

fn set_child(pid: Option<nix::unistd::Pid>) {
    *CHILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pid;
}

/// On SIGTERM (libxl destroying the domain), SIGINT or SIGHUP: kill the
/// parse child, then exit. Installed once, by the first child.
fn kill_child_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot handle SIGTERM: {e}; the parser dies with nixboot only by PR_SET_PDEATHSIG");
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let child = CHILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(pid) = *child {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let name = nix::sys::signal::Signal::try_from(sig).map_or("a signal", |s| s.as_str());
                let _ = writeln!(std::io::stderr(), "nixboot: stopped by {name}");
                std::process::exit(128_i32.saturating_add(sig));
            }
        });
    });
}

/// How much of the run's log budget is spent, by all children.
static LOG_SPENT: Mutex<(usize, usize)> = Mutex::new((0, 0));

/// Take `bytes` (one line) from the run's log budget; false when it is
/// spent.
fn take_log_budget(bytes: usize) -> bool {
    let mut spent = LOG_SPENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (b, l) = *spent;
    let (nb, nl) = (b.saturating_add(bytes), l.saturating_add(1));
    if nb > MAX_CHILD_LOG_BYTES || nl > MAX_CHILD_LOG_LINES {
        return false;
    }
    *spent = (nb, nl);
    true
}

/// Read one line of at most [`MAX_LOG_LINE`] bytes into `line` (the rest
/// of a longer line is read and dropped); false at the end of the stream.
fn read_log_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<(bool, bool)> {
    line.clear();
    let mut cut = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((any, cut));
        }
        any = true;
        let (chunk, used, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (buf.get(..i).unwrap_or_default(), i.saturating_add(1), true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LOG_LINE.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        r.consume(used);
        if end {
            return Ok((true, cut));
        }
    }
}

/// Copy the child's stderr to ours, line by line, within the run's
/// budget: each line escaped (the child escapes guest strings itself;
/// this is for a child that does not), cut at [`MAX_LOG_LINE`]. Lines
/// over the budget are read and dropped (the child never blocks on a
/// full pipe) and counted in one last line. Returns the lines dropped.
fn relay_log(pipe: impl std::io::Read) -> usize {
    let mut r = std::io::BufReader::with_capacity(16 * 1024, pipe);
    let mut line = Vec::with_capacity(MAX_LOG_LINE);
    let mut dropped = 0usize;
    while let Ok((true, cut)) = read_log_line(&mut r, &mut line) {
        let mut text = crate::error::guard(&line);
        if cut {
            text.push('…');
        }
        if take_log_budget(text.len().saturating_add(1)) {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        } else {
            dropped = dropped.saturating_add(1);
        }
    }
    if dropped > 0 {
        let _ = writeln!(
            std::io::stderr().lock(),
            "nixboot: warn: {dropped} more lines of the parser's log suppressed (at most {MAX_CHILD_LOG_LINES} lines or {} KiB a run; `nixboot list` shows per-entry problems)",
            MAX_CHILD_LOG_BYTES / 1024
        );
    }
    dropped
}

/// Run the parse child on `disk` and hand each frame to `frames` until
/// the child's `Done`. Any failure of the child becomes an [`Error`].
pub fn run_child(
    disk: &Disk,
    request: &Request,
    confinement: &Confinement,
    frames: &mut dyn Frames,
) -> Result<(), Error> {
    kill_child_on_signals();
    let (wall_left, cpu_secs) = budget_left()?;
    let exe = std::env::current_exe().map_err(|e| Error::host("finding the nixboot executable", e))?;
    let args = serde_json::to_string(&ChildArgs {
        request: request.clone(),
        confinement: confinement.clone(),
        parent: nix::unistd::getpid().as_raw(),
        cpu_secs,
    })
    .map_err(|e| Error::HostMsg(format!("encoding the child request: {e}")))?;
    let stdin = disk
        .file()
        .try_clone()
        .map_err(|e| Error::host("duplicating the disk descriptor", e))?;
    let started = Instant::now();
    // Hold the registry while spawning, so a signal in between still
    // finds the child.
    let mut registry = CHILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut child = Command::new(&exe)
        .arg(CHILD_ARG)
        .arg(args)
        .env_clear()
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::host(format!("starting the parse child {}", exe.display()), e))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    *registry = Some(pid);
    drop(registry);
    let relay = child.stderr.take().map(|e| std::thread::spawn(move || relay_log(e)));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(wall_left) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return true;
        }
        false
    });
    let Some(stdout) = child.stdout.take() else {
        return Err(Error::HostMsg("parse child has no output pipe".into()));
    };
    let mut pipe = File::from(std::os::fd::OwnedFd::from(stdout));
    // A pipe as large as a data frame: the child writes a whole frame per
    // wakeup instead of 16 pages at a time (the default is 64 KiB).
    if let Err(e) = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        log::debug!("cannot grow the frame pipe to {PIPE_SIZE} bytes: {e}");
    }
    let mut buf = Vec::new();
    let mut runs: Vec<(Tag, ipc::Run)> = Vec::new();
    let mut outcome: Result<bool, Error> = Ok(false);
    let malformed = |e: std::io::Error| Error::Reported {
        fault: Fault::Guest,
        message: format!("the parser sent a malformed frame ({e})"),
    };
    loop {
        let (tag, len) = match ipc::read_header(&mut pipe) {
            Ok(None) => break,
            Ok(Some(h)) => h,
            Err(e) => {
                outcome = Err(malformed(e));
                break;
            }
        };
        if let Tag::Kernel | Tag::Initrd = tag {
            let n = u64::try_from(len).unwrap_or(u64::MAX);
            let step = frames
                .data(tag, n)
                .and_then(|out| copy_data(&mut pipe, out, len, &mut buf).map_err(malformed));
            if let Err(e) = step {
                outcome = Err(e);
                break;
            }
            continue;
        }
        if let Err(e) = ipc::read_payload(&mut pipe, len, &mut buf) {
            outcome = Err(malformed(e));
            break;
        }
        if let Some(data_tag) = tag.data_of_run() {
            let Some(run) = ipc::Run::decode(&buf) else {
                outcome = Err(malformed(std::io::Error::other("bad run")));
                break;
            };
            if runs.len() >= MAX_RUNS {
                outcome = Err(malformed(std::io::Error::other(format!(
                    "more than {MAX_RUNS} data ranges"
                ))));
                break;
            }
            // Accounted now, copied once the child is done (see below).
            if let Err(e) = frames.data(data_tag, run.len) {
                outcome = Err(e);
                break;
            }
            runs.push((data_tag, run));
            continue;
        }
        match tag {
            Tag::Done => {
                outcome = Ok(true);
                break;
            }
            Tag::Failure => {
                outcome = Err(match serde_json::from_slice::<Failure>(&buf) {
                    Ok(f) => Error::Reported {
                        fault: f.fault,
                        message: sanitize(&f.message),
                    },
                    Err(_) => Error::Reported {
                        fault: Fault::Guest,
                        message: "the parser reported an unreadable error".into(),
                    },
                });
                break;
            }
            tag => {
                if let Err(e) = frames.frame(tag, &buf) {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    drop(pipe);
    if !matches!(outcome, Ok(true)) {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| Error::host("waiting for the parse child", e));
    set_child(None);
    let _ = stop_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    if let Some(r) = relay {
        let _ = r.join();
    }
    {
        let mut used = WALL_USED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *used = used.saturating_add(started.elapsed());
    }
    let status = status?;
    log_usage();
    if timed_out {
        return Err(over_deadline(run_deadline()));
    }
    match outcome {
        Err(e) => Err(e),
        Ok(true) if status.success() => copy_runs(disk, &runs, frames),
        Ok(_) => Err(Error::Reported {
            fault: Fault::Guest,
            message: describe(status),
        }),
    }
}

/// The log target of the resource-usage lines ([`log_usage`]), so they
/// can be enabled alone (`RUST_LOG=nixboot::usage=debug`).
pub const USAGE: &str = "nixboot::usage";

/// Debug log: peak RSS and CPU time of this process and of the (waited
/// for) parse children, for benchmarks, limit tuning and the hostile
/// tests (which hold the parent's peak RSS to a bound).
pub fn log_usage() {
    use nix::sys::resource::{UsageWho, getrusage};
    if !log::log_enabled!(target: USAGE, log::Level::Debug) {
        return;
    }
    if let (Ok(me), Ok(child)) = (getrusage(UsageWho::RUSAGE_SELF), getrusage(UsageWho::RUSAGE_CHILDREN)) {
        let ms = |t: nix::sys::time::TimeVal| t.tv_sec().saturating_mul(1000).saturating_add(t.tv_usec() / 1000);
        log::debug!(
            target: USAGE,
            "parent peak RSS {} KiB, parse child peak RSS {} KiB; CPU ms user/system: parent {}/{}, child {}/{}",
            own_peak_rss_kib().unwrap_or(me.max_rss()),
            child.max_rss(),
            ms(me.user_time()),
            ms(me.system_time()),
            ms(child.user_time()),
            ms(child.system_time())
        );
    }
}

/// This program's own peak RSS in KiB (`VmHWM`). `getrusage`'s
/// `ru_maxrss` also counts whatever the process was before its `execve`
/// (a forked copy of a large launcher), so it overstates nixboot's own.
fn own_peak_rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Describe an abnormal end of the parse child.
fn describe(status: std::process::ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal");
        let why = match name {
            "SIGSYS" => "it attempted a forbidden system call",
            "SIGKILL" | "SIGXCPU" => "it hit a resource limit",
            "SIGABRT" | "SIGSEGV" | "SIGBUS" => "it ran out of its memory limit or crashed",
            _ => "it was killed",
        };
        return format!(
            "the confined parser stopped on {name} ({why}): the disk is corrupt or hostile, or this is a nixboot bug"
        );
    }
    format!(
        "the confined parser failed with exit status {} without a result",
        status.code().unwrap_or(-1)
    )
}

/// Make text from a (possibly compromised) child safe for the console:
/// cut at 2,048 bytes, then [`crate::error::guard`] (control characters
/// escaped; text the child escaped already passes unchanged).
pub fn sanitize(s: &str) -> String {
    let (shown, cut) = crate::error::shorten(s.as_bytes(), 2048);
    let mut out = crate::error::guard(shown);
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn pipe_with(data: Vec<u8>) -> (File, std::thread::JoinHandle<()>) {
        let (r, mut w) = std::io::pipe().unwrap();
        let t = std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
        (File::from(std::os::fd::OwnedFd::from(r)), t)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn copy_data_moves_exactly_len_bytes() {
        // O_APPEND makes splice(2) fail with EINVAL: the read/write path.
        for append in [false, true] {
            let (mut pipe, t) = pipe_with(data(3 << 20));
            let mut out = tempfile::tempfile().unwrap();
            if append {
                out = File::options()
                    .append(true)
                    .read(true)
                    .open(tempfile::NamedTempFile::new().unwrap().path())
                    .unwrap();
            }
            let mut buf = Vec::new();
            copy_data(&mut pipe, &mut out, (2 << 20) + 5, &mut buf).unwrap();
            copy_data(&mut pipe, &mut out, (1 << 20) - 5, &mut buf).unwrap();
            t.join().unwrap();
            let mut got = Vec::new();
            out.rewind().unwrap();
            out.read_to_end(&mut got).unwrap();
            assert!(got == data(3 << 20), "append={append}");
        }
    }

    #[test]
    fn children_of_a_run_share_one_deadline() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(split_budget(s(60), s(0), s(0)).unwrap(), (s(60), 60));
        // A listing child that used 45 s of wall clock and 20.2 s of CPU
        // leaves the boot child 15 s and 40 s (rounded up).
        assert_eq!(split_budget(s(60), s(45), ms(20_200)).unwrap(), (s(15), 40));
        assert!(split_budget(s(60), s(60), s(1)).is_err());
        assert!(split_budget(s(60), s(1), s(61)).is_err());
        let e = split_budget(s(4), s(5), s(0)).unwrap_err();
        assert!(e.to_string().contains("longer than 4 s in all"), "{e}");
    }

    #[test]
    fn relayed_log_lines_are_cut_and_budgeted() {
        let mut long = vec![b'x'; MAX_LOG_LINE + 500];
        long.extend_from_slice(b"\nnext\n");
        let mut r = std::io::BufReader::with_capacity(64, long.as_slice());
        let mut line = Vec::new();
        assert_eq!(read_log_line(&mut r, &mut line).unwrap(), (true, true));
        assert_eq!(line.len(), MAX_LOG_LINE);
        assert_eq!(read_log_line(&mut r, &mut line).unwrap(), (true, false));
        assert_eq!(line, b"next");
        assert!(!read_log_line(&mut r, &mut line).unwrap().0);
        // The run's budget is shared and ends.
        let mut taken = 0usize;
        while take_log_budget(100) {
            taken += 1;
        }
        assert!(taken <= MAX_CHILD_LOG_LINES, "{taken}");
        assert!(!take_log_budget(1));
    }

    #[test]
    fn copy_data_reports_a_short_stream() {
        let (mut pipe, t) = pipe_with(data(1000));
        let mut out = tempfile::tempfile().unwrap();
        let e = copy_data(&mut pipe, &mut out, 1001, &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        t.join().unwrap();
    }

    #[test]
    fn copy_run_copies_ranges_and_holes_and_refuses_ranges_off_the_disk() {
        let mut img = tempfile::NamedTempFile::new().unwrap();
        img.write_all(&data(100_000)).unwrap();
        let disk = Disk::open(img.path()).unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let mut buf = Vec::new();
        copy_run(&disk, Some(1000), 50_000, &mut out, &mut buf).unwrap();
        copy_run(&disk, None, 4096, &mut out, &mut buf).unwrap();
        copy_run(&disk, Some(0), 10, &mut out, &mut buf).unwrap();
        let mut got = Vec::new();
        use std::io::{Read, Seek};
        out.rewind().unwrap();
        out.read_to_end(&mut got).unwrap();
        let src = data(100_000);
        let mut want = src[1000..51_000].to_vec();
        want.extend(std::iter::repeat_n(0u8, 4096));
        want.extend_from_slice(&src[..10]);
        assert!(got == want);
        for (off, len) in [(99_999, 2), (u64::MAX - 1, 4), (100_000, 1)] {
            let e = copy_run(&disk, Some(off), len, &mut out, &mut buf).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{off}+{len}");
        }
    }
}
