//! Names of the resources the bed creates.
//!
//! Every namespace, cgroup, bpffs directory and temp directory carries the
//! pid of the test process that made it (`rdt-<pid>-<n>…`,
//! `redirector-test-<pid>-<n>`), and `n` comes from one process-wide counter.
//! Parallel tests in one binary therefore never collide, and
//! [`crate::sweep`] can tell a stale leftover (its pid is dead) from a live
//! one belonging to another test run on the same machine.

use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of namespaces, cgroups and temp directories.
pub const PREFIX: &str = "rdt";

/// Prefix of bpffs pin directories (`/sys/fs/bpf/redirector-test-<pid>-<n>`).
pub const PIN_PREFIX: &str = "redirector-test";

/// Environment variable set on every process the bed spawns: the pid of the
/// test process that owns it, so the sweep can kill orphans.
pub const OWNER_ENV: &str = "RDT_OWNER_PID";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next value of the process-wide counter.
pub fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `<prefix>-<pid>-<n>` with a fresh `n`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_id())
}

/// The owner pid encoded in `name` if it is `<prefix>-<pid>-…`.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let pid = rest.split('-').next()?;
    pid.parse().ok()
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    // Signal 0 checks existence and permission without sending anything.
    // SAFETY: kill(2) with signal 0 has no side effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names() {
        assert_eq!(owner_pid("rdt-123-4-client", PREFIX), Some(123));
        assert_eq!(owner_pid("rdt-123-4", PREFIX), Some(123));
        assert_eq!(owner_pid("redirector-test-9-0", PIN_PREFIX), Some(9));
        assert_eq!(owner_pid("rdtx-1-2", PREFIX), None);
        assert_eq!(owner_pid("rdt-abc-2", PREFIX), None);
        assert_eq!(owner_pid("other", PREFIX), None);
    }

    #[test]
    fn unique_names_differ_and_carry_our_pid() {
        let a = unique(PREFIX);
        let b = unique(PREFIX);
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a, PREFIX), Some(std::process::id()));
    }
}
