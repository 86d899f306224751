//! The bed needs root (namespaces, cgroups, bpffs, BPF programs). Tests call
//! [`require_root`] first so a non-root run fails with one clear message
//! instead of a confusing `ip` error, and is never silently skipped.

/// Whether the effective uid is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless running as root.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "these tests need root (network namespaces, cgroups, bpffs): run them with \
         `sudo -E cargo xtask test` or as root; they are never skipped"
    );
}
