//! Least privilege: once the programs are loaded and attached and every
//! listener is bound, the daemon gives up the capabilities it no longer
//! needs, in every set (effective, permitted, inheritable, ambient and, when
//! it may, bounding), and sets `no_new_privs`, so neither a bug nor an
//! `execve` can get them back.
//!
//! What stays, and why:
//! - `CAP_NET_RAW`, or `CAP_NET_ADMIN` where the kernel wants that one:
//!   every upstream socket (proxy connects, the DNS responder's forwards,
//!   the resolver's lookups) carries `SO_MARK` so the kernel programs leave
//!   it alone, and setting a mark needs one of them. Sockets are made for
//!   the daemon's whole life, after every reload. Linux ≥ 5.17 accepts
//!   `CAP_NET_RAW` for `SO_MARK`, the narrower of the two (no routes,
//!   addresses, firewall or interfaces); whether this kernel does is
//!   probed ([`mark_with_net_raw`]), not read off its version. The other
//!   side of that coin: any process able to set the proxy's mark on its
//!   own sockets (one holding either capability) bypasses capture.
//! - Nothing for the maps: updates, lookups and the ring buffer go through
//!   the fds opened at start, which need no capability on Linux ≥ 6.5.
//!   Before 6.5, every bpf(2) command was refused without `CAP_BPF` (or
//!   `CAP_SYS_ADMIN`) when `kernel.unprivileged_bpf_disabled` is set, so
//!   there that one stays too ([`keep`]).
//! - Nothing else: reloads read the config and TLS files as the root user
//!   (owner permissions, no `CAP_DAC_*`), the listeners are bound before the
//!   drop (a reload cannot move them), the pins and links are made at
//!   start, and stopping leaves them in place.
//!
//! The bounding set needs `CAP_SETPCAP` to shrink; without it (a container
//! granted only `CAP_BPF` and `CAP_NET_ADMIN`, whose bounding set already
//! is just those) it stays as it is, and `no_new_privs` still keeps an
//! `execve` from raising anything.
//!
//! Capabilities are per thread, and the tokio runtime has threads by now,
//! so every thread drops them: the calling one directly, the others in a
//! signal handler (as glibc does for `setuid` and libcap's psx for
//! capabilities), with raw syscalls only, which are async-signal-safe.
//! The result is checked in `/proc/self/task/*/status`.

use std::{
    fs, io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use caps::{CapSet, Capability, CapsHashSet};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivError {
    #[error("reading this process's capabilities: {0}")]
    Read(#[from] caps::errors::CapsError),
    #[error("dropping capabilities: {what}: {error}")]
    Syscall {
        what: &'static str,
        error: io::Error,
    },
    #[error("dropping capabilities: threads {tids:?} still hold them")]
    Threads { tids: Vec<i32> },
}

/// Facts about the kernel that decide what the daemon keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    /// (major, minor) of the running kernel.
    pub(crate) version: (u32, u32),
    /// `kernel.unprivileged_bpf_disabled` is not 0.
    pub(crate) unprivileged_bpf_disabled: bool,
    /// `SO_MARK` may be set with `CAP_NET_RAW` (Linux ≥ 5.17), probed.
    pub(crate) mark_with_net_raw: bool,
}

impl Kernel {
    pub(crate) fn current() -> Kernel {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let disabled = fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
            .map_or(true, |s| s.trim() != "0");
        Kernel {
            version: parse_release(&release).unwrap_or((0, 0)),
            unprivileged_bpf_disabled: disabled,
            mark_with_net_raw: mark_with_net_raw(),
        }
    }

    /// Whether bpf(2) on an already-open map fd needs `CAP_BPF` here:
    /// before Linux 6.5 the unprivileged-BPF sysctl gated every command.
    pub(crate) fn map_access_needs_cap(&self) -> bool {
        self.unprivileged_bpf_disabled && self.version < (6, 5)
    }
}

/// Whether this kernel lets a socket's mark be set with `CAP_NET_RAW`
/// alone: tried on a thread of its own that gives up `CAP_NET_ADMIN` from
/// its effective set (capabilities are per thread, and the thread ends
/// right after), so the rest of the process is untouched. False when this
/// process does not hold `CAP_NET_RAW` at all.
pub(crate) fn mark_with_net_raw() -> bool {
    std::thread::spawn(|| {
        let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
        if !has(Capability::CAP_NET_RAW)
            || caps::drop(None, CapSet::Effective, Capability::CAP_NET_ADMIN).is_err()
        {
            return false;
        }
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .and_then(|s| s.set_mark(crate::datapath::PROXY_MARK))
            .is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// `6.18.44-fc-v1272` → (6, 18).
pub(crate) fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The capabilities the running daemon needs, of those it `held`.
pub(crate) fn keep(held: &CapsHashSet, kernel: Kernel) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if kernel.mark_with_net_raw && held.contains(&Capability::CAP_NET_RAW) {
        keep.insert(Capability::CAP_NET_RAW);
    } else {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    if kernel.map_access_needs_cap() {
        // bpf_capable(): either one.
        if held.contains(&Capability::CAP_BPF) {
            keep.insert(Capability::CAP_BPF);
        } else {
            keep.insert(Capability::CAP_SYS_ADMIN);
        }
    }
    keep.retain(|c| held.contains(c));
    keep
}

// What every thread applies (see `apply_here`).
static KEEP: AtomicU64 = AtomicU64::new(0);
static BOUNDING_DROP: AtomicU64 = AtomicU64::new(0);

/// Drops every capability but [`keep`]'s in every thread, sets
/// `no_new_privs`, and logs what stayed.
pub(crate) fn drop_after_start() -> Result<(), PrivError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept_set = keep(&permitted, Kernel::current());
    let keep_mask = mask(&kept_set);
    let bounding = caps::read(None, CapSet::Bounding)?;
    let can_bound = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)?;
    let bounding_drop = if can_bound {
        mask(&bounding) & !keep_mask
    } else {
        0
    };
    KEEP.store(keep_mask, Ordering::SeqCst);
    BOUNDING_DROP.store(bounding_drop, Ordering::SeqCst);
    install_handler()?;
    apply_here().map_err(|(what, error)| PrivError::Syscall { what, error })?;
    let threads = apply_to_other_threads(keep_mask, bounding_drop)?;

    let mut kept: Vec<Capability> = kept_set.into_iter().collect();
    kept.sort_by_key(Capability::index);
    let mut dropped: Vec<Capability> = permitted.union(&bounding).copied().collect();
    dropped.retain(|c| keep_mask & c.bitmask() == 0);
    dropped.sort_by_key(Capability::index);
    let names = |v: &[Capability]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    info!(
        kept = %names(&kept),
        dropped = %names(&dropped),
        bounding = if can_bound { "reduced to the kept ones" } else { "left as is (no CAP_SETPCAP)" },
        no_new_privs = true,
        threads,
        "capabilities dropped"
    );
    Ok(())
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// The signal other threads drop their capabilities on.
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: the errno of the interrupted code is put back as it was.
    unsafe {
        let errno = *libc::__errno_location();
        let _ = apply_here();
        *libc::__errno_location() = errno;
    }
}

fn install_handler() -> Result<(), PrivError> {
    // SAFETY: a plain sigaction with a handler that is async-signal-safe.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&raw mut sa.sa_mask);
        libc::sigaction(signal(), &raw const sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(PrivError::Syscall {
            what: "sigaction",
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Applies `KEEP` and `BOUNDING_DROP` to the calling thread: bounding set
/// first (that needs CAP_SETPCAP, which capset then drops), then
/// effective = permitted = KEEP and inheritable empty, ambient cleared,
/// no_new_privs. Raw syscalls only: it runs in a signal handler.
fn apply_here() -> Result<(), (&'static str, io::Error)> {
    let keep = KEEP.load(Ordering::SeqCst);
    let bounding_drop = BOUNDING_DROP.load(Ordering::SeqCst);
    let err = |what| (what, io::Error::last_os_error());
    // SAFETY: prctl and capset with valid arguments; capset reads two
    // CapData structs, as version 3 says.
    unsafe {
        for cap in 0..64u64 {
            if bounding_drop & (1 << cap) != 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            {
                return Err(err("PR_CAPBSET_DROP"));
            }
        }
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep as u32,
                permitted: keep as u32,
                inheritable: 0,
            },
            CapData {
                effective: (keep >> 32) as u32,
                permitted: (keep >> 32) as u32,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(err("capset"));
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(err("PR_CAP_AMBIENT_CLEAR_ALL"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(err("PR_SET_NO_NEW_PRIVS"));
        }
    }
    Ok(())
}

/// For a single-threaded process (the netns helper): keeps only `wanted`
/// (of what it holds), in every set, bounding included when it may, and
/// sets `no_new_privs`.
pub(crate) fn keep_only(wanted: &[Capability]) -> Result<(), PrivError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep_set: CapsHashSet = wanted
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let keep_mask = mask(&keep_set);
    let bounding = caps::read(None, CapSet::Bounding)?;
    let bounding_drop = if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        mask(&bounding) & !keep_mask
    } else {
        0
    };
    KEEP.store(keep_mask, Ordering::SeqCst);
    BOUNDING_DROP.store(bounding_drop, Ordering::SeqCst);
    apply_here().map_err(|(what, error)| PrivError::Syscall { what, error })
}

/// Signals every other thread until `/proc` shows each one done (threads
/// started meanwhile by one that was not are caught on the next round).
fn apply_to_other_threads(keep: u64, bounding_drop: u64) -> Result<usize, PrivError> {
    // SAFETY: plain syscalls.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    let mut pending = Vec::new();
    for round in 0..200 {
        pending.clear();
        let mut threads = 0;
        for tid in tids() {
            threads += 1;
            if tid == me {
                continue;
            }
            let status = fs::read_to_string(format!("/proc/self/task/{tid}/status"));
            // A thread that exited meanwhile is fine.
            if status.is_ok_and(|s| !ThreadCaps::parse(&s).is_done(keep, bounding_drop)) {
                pending.push(tid);
            }
        }
        if pending.is_empty() {
            return Ok(threads);
        }
        if round % 10 == 0 {
            for &tid in &pending {
                // SAFETY: a signal whose handler is installed.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(PrivError::Threads { tids: pending })
}

fn tids() -> Vec<i32> {
    fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The capability lines of a `/proc/*/status`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadCaps {
    pub(crate) inheritable: u64,
    pub(crate) permitted: u64,
    pub(crate) effective: u64,
    pub(crate) bounding: u64,
    pub(crate) ambient: u64,
    pub(crate) no_new_privs: bool,
}

impl ThreadCaps {
    pub(crate) fn parse(status: &str) -> ThreadCaps {
        let mut c = ThreadCaps::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let hex = || u64::from_str_radix(value, 16).unwrap_or(u64::MAX);
            match key {
                "CapInh" => c.inheritable = hex(),
                "CapPrm" => c.permitted = hex(),
                "CapEff" => c.effective = hex(),
                "CapBnd" => c.bounding = hex(),
                "CapAmb" => c.ambient = hex(),
                "NoNewPrivs" => c.no_new_privs = value == "1",
                _ => {}
            }
        }
        c
    }

    fn is_done(&self, keep: u64, bounding_drop: u64) -> bool {
        self.effective == keep
            && self.permitted == keep
            && self.inheritable == 0
            && self.ambient == 0
            && self.bounding & bounding_drop == 0
            && self.no_new_privs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    const NEW: Kernel = Kernel {
        version: (6, 18),
        unprivileged_bpf_disabled: true,
        mark_with_net_raw: true,
    };
    const OLD: Kernel = Kernel {
        version: (6, 1),
        unprivileged_bpf_disabled: true,
        mark_with_net_raw: true,
    };

    #[test]
    fn root_keeps_only_net_raw_where_it_may_set_marks() {
        assert_eq!(keep(&caps::all(), NEW), set(&[Capability::CAP_NET_RAW]));
        // Without CAP_NET_RAW (the DaemonSet of an older release).
        let granted = set(&[Capability::CAP_BPF, Capability::CAP_NET_ADMIN]);
        assert_eq!(keep(&granted, NEW), set(&[Capability::CAP_NET_ADMIN]));
        // Before 5.17 marks need CAP_NET_ADMIN.
        let before = Kernel {
            version: (5, 10),
            unprivileged_bpf_disabled: false,
            mark_with_net_raw: false,
        };
        assert_eq!(
            keep(&caps::all(), before),
            set(&[Capability::CAP_NET_ADMIN])
        );
    }

    #[test]
    fn this_kernel_is_probed_for_marks_with_net_raw() {
        // The probe agrees with the release where the change landed
        // (5.17), and leaves the calling thread's capabilities alone.
        let before = caps::read(None, CapSet::Effective).unwrap();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let expected = before.contains(&Capability::CAP_NET_RAW)
            && parse_release(&release).unwrap() >= (5, 17);
        assert_eq!(mark_with_net_raw(), expected, "{release}");
        assert_eq!(caps::read(None, CapSet::Effective).unwrap(), before);
    }

    #[test]
    fn before_6_5_with_unprivileged_bpf_off_map_access_needs_cap_bpf() {
        let granted = set(&[Capability::CAP_BPF, Capability::CAP_NET_ADMIN]);
        assert_eq!(keep(&granted, OLD), granted);
        // CAP_SYS_ADMIN stands in for CAP_BPF where that is what was held.
        let old_style = set(&[Capability::CAP_SYS_ADMIN, Capability::CAP_NET_ADMIN]);
        assert_eq!(keep(&old_style, OLD), old_style);
        let allowed = Kernel {
            unprivileged_bpf_disabled: false,
            ..OLD
        };
        assert_eq!(keep(&granted, allowed), set(&[Capability::CAP_NET_ADMIN]));
        assert!(
            !Kernel {
                version: (6, 5),
                ..OLD
            }
            .map_access_needs_cap()
        );
    }

    #[test]
    fn nothing_is_kept_that_was_not_held() {
        assert!(keep(&CapsHashSet::new(), OLD).is_empty());
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v1272\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.5-rc1"), Some((6, 5)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn status_lines_parse() {
        let status = "Name:\tredirector\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
                      CapEff:\t0000000000001000\nCapBnd:\t0000008000001000\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let c = ThreadCaps::parse(status);
        assert_eq!(c.effective, 1 << 12);
        assert_eq!(c.bounding, (1 << 39) | (1 << 12));
        assert!(c.no_new_privs);
        assert!(c.is_done(1 << 12, 0));
        assert!(!c.is_done(1 << 12, 1 << 39), "CAP_BPF still bounding");
        assert!(!ThreadCaps::parse("CapEff:\t0000000000001000\n").is_done(1 << 12, 0));
    }
}
