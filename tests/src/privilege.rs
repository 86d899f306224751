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

/// `CAP_NET_ADMIN`'s bit in `/proc/<pid>/status`.
pub const CAP_NET_ADMIN: u64 = 1 << 12;
/// `CAP_NET_RAW`'s bit in `/proc/<pid>/status`.
pub const CAP_NET_RAW: u64 = 1 << 13;

/// The capability bit the daemon should keep after start to mark its
/// sockets: `CAP_NET_RAW` where it was `granted` and this kernel lets
/// `SO_MARK` be set with it (Linux ≥ 5.17; tried here as the daemon tries
/// it, on a thread that gives up `CAP_NET_ADMIN`), else `CAP_NET_ADMIN`.
pub fn mark_capability(net_raw_granted: bool) -> u64 {
    let works = std::thread::spawn(|| {
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .is_ok()
            && socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                .and_then(|s| s.set_mark(1))
                .is_ok()
    })
    .join()
    .unwrap();
    if net_raw_granted && works {
        CAP_NET_RAW
    } else {
        CAP_NET_ADMIN
    }
}
