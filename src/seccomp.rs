//! The parse child's system-call allowlist (x86-64).
//!
//! After confinement the child only needs to read the disk (`pread64`,
//! `read`), write frames and log lines (`write`), manage memory and exit.
//! Every other call — `open`, `execve`, `socket`, `ioctl` (which could
//! inject keystrokes into the console with `TIOCSTI`), `ptrace`, … — kills
//! the process, which the parent reports as a guest-disk error.

use std::collections::BTreeMap;

use crate::error::Error;

#[cfg(target_arch = "x86_64")]
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_sched_yield,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fstat,
    libc::SYS_statx,
];

/// Install the allowlist on the current thread (the child is single-threaded).
#[cfg(target_arch = "x86_64")]
pub fn install() -> Result<(), Error> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|s| (*s, Vec::new())).collect();
    // Rust's debug builds check descriptors with fcntl(fd, F_GETFD) when a
    // File is dropped; allow that query and nothing else of fcntl.
    let getfd = u64::try_from(libc::F_GETFD).unwrap_or(1);
    let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, getfd)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| Error::HostMsg(format!("building the seccomp filter: {e}")))?;
    rules.insert(libc::SYS_fcntl, vec![cond]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::HostMsg(format!("building the seccomp filter: {e}")))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e| Error::HostMsg(format!("compiling the seccomp filter: {e}")))?;
    seccompiler::apply_filter(&prog).map_err(|e| Error::HostMsg(format!("installing the seccomp filter: {e}")))
}

/// Other architectures: no filter is available; say so.
#[cfg(not(target_arch = "x86_64"))]
pub fn install() -> Result<(), Error> {
    log::warn!("no seccomp allowlist on this architecture; the parser runs with limits and namespaces only");
    let _ = BTreeMap::<i64, ()>::new();
    Ok(())
}
