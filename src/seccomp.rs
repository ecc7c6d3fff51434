//! The parse child's system-call allowlist (x86-64).
//!
//! After confinement the child only needs to read the disk (`pread64`,
//! `read`), write frames and log lines (`write`), manage memory and exit.
//! Every other call — `open`, `execve`, `socket`, `ioctl` (which could
//! inject keystrokes into the console with `TIOCSTI`), `ptrace`, … — kills
//! the process, which the parent reports as a guest-disk error.
//!
//! No call that takes a path is allowed (not even `statx`, which Rust's
//! `File::metadata` tries first: the disk is `fstat`ed before the filter is
//! installed), so a compromised child cannot probe dom0's filesystem by
//! name, in restricted mode or not.

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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::ALLOWED;

    /// Every x86-64 system call that takes a path (or names a file some
    /// other way) stays off the allowlist.
    #[test]
    fn no_path_taking_call_is_allowed() {
        let path_calls = [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_creat,
            libc::SYS_stat,
            libc::SYS_lstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_statfs,
            libc::SYS_access,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_chdir,
            libc::SYS_chroot,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_link,
            libc::SYS_linkat,
            libc::SYS_symlink,
            libc::SYS_symlinkat,
            libc::SYS_truncate,
            libc::SYS_getxattr,
            libc::SYS_lgetxattr,
            libc::SYS_listxattr,
            libc::SYS_utimensat,
            libc::SYS_mknod,
            libc::SYS_mknodat,
            libc::SYS_name_to_handle_at,
            libc::SYS_open_by_handle_at,
            libc::SYS_open_tree,
            libc::SYS_mount,
            libc::SYS_fsopen,
            libc::SYS_inotify_add_watch,
            libc::SYS_fanotify_mark,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ioctl,
        ];
        for call in path_calls {
            assert!(!ALLOWED.contains(&call), "system call {call} is allowed");
        }
    }
}
