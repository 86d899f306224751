//! What the kernel programs log (see `redirector-ebpf/src/log.rs`): read
//! from their aya-log ring buffer and written to the daemon's log as
//! events of target [`TARGET`].
//!
//! The programs log only at the level the daemon's own filter enables for
//! that target when they are loaded ([`level`]); by default none, so the
//! verifier removes every log statement from them. The ring is pinned
//! beside the other maps, so the next daemon reads what the programs said
//! while none ran (a refused connect while the proxy was down, say).
//!
//! aya-log's records are copied into the ring with a length known only at
//! run time, which the verifier allows only to a loader with
//! `CAP_PERFMON` (or `CAP_SYS_ADMIN`): without it (the DaemonSet grants
//! `CAP_BPF` and `CAP_NET_ADMIN` only) kernel logs stay off, and the daemon
//! says so.

use std::panic::AssertUnwindSafe;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{Level, debug, error, info, trace, warn};

/// The target of kernel log events, in the daemon's log filter (e.g.
/// `--log-level info,redirector::kernel=debug`).
pub(crate) const TARGET: &str = "redirector::kernel";

/// The ring's name in the object and its pin name: versioned by the
/// record format (aya-log-common 0.2), so a daemon never parses records
/// of another format that programs of another build left in a pinned ring.
pub(super) const MAP: &str = "AYA_LOGS";
pub(super) const PIN: &str = "aya_logs_v0_2";
pub(super) const RING_BYTES: u32 = 1 << 17;

/// The aya-log level the programs are loaded with: the most verbose level
/// the daemon's log filter enables for [`TARGET`] (0: none), if this
/// process may load programs that log.
pub(crate) fn level() -> u8 {
    let wanted = wanted();
    if wanted == 0 {
        return 0;
    }
    let caps = crate::sys::effective_caps().unwrap_or(0);
    if !crate::sys::has_cap(caps, crate::sys::CAP_PERFMON)
        && !crate::sys::has_cap(caps, crate::sys::CAP_SYS_ADMIN)
    {
        warn!(
            "{TARGET} logs are asked for, but the verifier accepts aya-log's copies only from a \
             loader with CAP_PERFMON (or CAP_SYS_ADMIN), which this process lacks: the kernel \
             programs are loaded without logging"
        );
        return 0;
    }
    wanted
}

/// The most verbose level the log filter enables for [`TARGET`], as
/// aya_log_common's `Level` (Error = 1 … Trace = 5), 0 for none.
fn wanted() -> u8 {
    if tracing::enabled!(target: TARGET, Level::TRACE) {
        5
    } else if tracing::enabled!(target: TARGET, Level::DEBUG) {
        4
    } else if tracing::enabled!(target: TARGET, Level::INFO) {
        3
    } else if tracing::enabled!(target: TARGET, Level::WARN) {
        2
    } else if tracing::enabled!(target: TARGET, Level::ERROR) {
        1
    } else {
        0
    }
}

/// aya-log's records as tracing events of [`TARGET`].
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => error!(target: TARGET, "{message}"),
            log::Level::Warn => warn!(target: TARGET, "{message}"),
            log::Level::Info => info!(target: TARGET, "{message}"),
            log::Level::Debug => debug!(target: TARGET, "{message}"),
            log::Level::Trace => trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log ring.
pub(crate) struct KernelLogs(EbpfLogger<ToTracing>);

impl KernelLogs {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        EbpfLogger::init_with_logger(ebpf, ToTracing).map(Self)
    }

    /// Writes what the programs log to the daemon's log, until dropped.
    /// Must run inside the tokio runtime.
    pub(crate) async fn run(self) {
        // SAFETY: the logger owns its ring's fd and keeps it open,
        // unchanged, until it is dropped, which only the AsyncFd does.
        let ring = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) };
        let mut ring = match ring.map_err(|e| e.into_parts().1) {
            Ok(ring) => ring,
            Err(e) => {
                warn!(error = %e, "cannot watch the kernel programs' log ring");
                return;
            }
        };
        loop {
            let mut guard = match ring.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    warn!(error = %e, "watching the kernel programs' log ring");
                    return;
                }
            };
            // aya-log panics on a record it cannot parse; ours come from
            // programs of this build only (the pin name says the format),
            // but a daemon must not die of it: stop reading instead.
            let flushed =
                std::panic::catch_unwind(AssertUnwindSafe(|| guard.get_inner_mut().flush()));
            if flushed.is_err() {
                error!("a kernel log record did not parse; no more kernel logs from this daemon");
                return;
            }
            guard.clear_ready();
        }
    }
}
