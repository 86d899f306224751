//! Telling the kernel which daemon serves, so it can tell the hooks when
//! that daemon is dying (`RD_LIFE_V3`, `signal_deliver` in the kernel
//! programs).
//!
//! Between a `kill -9` and the kernel closing the daemon's listeners
//! (its threads exit and its memory is torn down first) a few
//! milliseconds pass in which connects would still queue on listeners
//! about to be reset. The raw tracepoint sees the first of the daemon's
//! threads take the fatal path and marks it dying; the hooks fail open
//! from then on. Registration happens only once this daemon serves (its
//! programs attached, its listeners its own), so a successor that dies
//! while its predecessor still serves marks nothing. During a handover
//! (see `handover.rs`) the successor registers once it has attached,
//! before it confirms; if it dies then, the predecessor, serving on,
//! registers itself again within milliseconds (meanwhile the hooks fail
//! open, as for any dying daemon). A `--datapath-only`
//! process registers nobody: the listeners it redirects to are another
//! proxy's, which outlives it.

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::RawTracePoint,
};
use redirector_common::{Life, map_names, program_names};
use tracing::{info, warn};

use super::{
    BpfError,
    maps::{map_op, typed_map},
};

/// The kernel's tracepoint.
const TRACEPOINT: &str = "signal_deliver";

/// `RD_LIFE_V3`, and whether `signal_deliver` loaded.
pub(super) struct Watch {
    map: Array<MapData, Life>,
    /// Whether this process's listeners are the ones the hooks look for.
    watched: bool,
    program: bool,
    /// Whether `signal_deliver` is attached (it stays attached when the
    /// daemon registers again after a failed handover).
    attached: bool,
}

impl Watch {
    /// Takes the map and, when this process's own listeners are what the
    /// hooks look for (`watched`), loads the program, which needs
    /// `CAP_PERFMON` (or `CAP_SYS_ADMIN`); without it the daemon runs as
    /// before, with the window above, and says so.
    pub(super) fn load(ebpf: &mut Ebpf, watched: bool) -> Result<Self, BpfError> {
        let map = typed_map(ebpf, map_names::LIFE, Array::try_from)?;
        if !watched {
            return Ok(Self {
                map,
                watched,
                program: false,
                attached: false,
            });
        }
        let name = program_names::SIGNAL_DELIVER;
        let loaded = ebpf
            .program_mut(name)
            .ok_or(BpfError::Missing {
                kind: "program",
                name,
            })
            .and_then(|p| {
                let p: &mut RawTracePoint = p
                    .try_into()
                    .map_err(|error| BpfError::Program { name, error })?;
                p.load().map_err(|error| BpfError::Program { name, error })
            });
        if let Err(e) = &loaded {
            warn!(
                error = %e,
                "the kernel will not tell the hooks this daemon is dying: a kill -9 can reset \
                 connects made in the milliseconds before the kernel closes its listeners \
                 (loading a raw tracepoint needs CAP_PERFMON or CAP_SYS_ADMIN)"
            );
        }
        Ok(Self {
            map,
            watched,
            program: loaded.is_ok(),
            attached: false,
        })
    }

    /// Registers this process as the serving daemon, watched from now on
    /// (or, when not `watched`, registers nobody, so no earlier daemon's
    /// death keeps the hooks from the listeners). Again after a failed
    /// handover: a successor that registered itself and then died (marked
    /// dying) must not keep the hooks from this daemon's listeners.
    pub(super) fn serve(&mut self, ebpf: &mut Ebpf) -> Result<(), BpfError> {
        const NOBODY: Life = Life {
            serving_pid: 0,
            dying_pid: 0,
            pidns_dev: 0,
            pidns_ino: 0,
        };
        if !self.watched {
            return map_op(map_names::LIFE, self.map.set(0, NOBODY, 0));
        }
        if self.program && !self.attached {
            let attached = ebpf
                .program_mut(program_names::SIGNAL_DELIVER)
                .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
                .map(|p| p.attach(TRACEPOINT));
            match attached {
                Some(Ok(_)) => {
                    self.attached = true;
                    info!("watching for this daemon's death ({TRACEPOINT})");
                }
                Some(Err(e)) => {
                    warn!(error = %e, "could not attach {TRACEPOINT}: a kill -9 can reset connects made while the kernel closes this daemon's listeners");
                }
                None => {}
            }
        }
        let life = match pid_namespace() {
            Ok((pidns_dev, pidns_ino)) => Life {
                serving_pid: std::process::id(),
                dying_pid: 0,
                pidns_dev,
                pidns_ino,
            },
            Err(e) => {
                // Registers nobody: a stale entry must not name another
                // process, nor this one without its namespace.
                warn!(error = %e, "reading /proc/self/ns/pid: the kernel will not tell the hooks this daemon is dying");
                NOBODY
            }
        };
        map_op(map_names::LIFE, self.map.set(0, life, 0))
    }
}

/// This process's PID namespace as `bpf_get_ns_current_pid_tgid` matches
/// it: the nsfs device in the kernel's `dev_t` encoding (`stat` returns
/// the userspace one) and the inode.
fn pid_namespace() -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/ns/pid")?;
    let dev = meta.dev();
    let kernel_dev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    Ok((kernel_dev, meta.ino()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pid_namespace_is_nsfs_with_a_kernel_dev() {
        use std::os::unix::fs::MetadataExt;
        let (dev, ino) = super::pid_namespace().unwrap();
        let meta = std::fs::metadata("/proc/self/ns/pid").unwrap();
        assert_eq!(ino, meta.ino());
        // MKDEV(major, minor): the minor in the low 20 bits.
        assert_eq!(dev & 0xf_ffff, u64::from(libc::minor(meta.dev())));
        assert_eq!(dev >> 20, u64::from(libc::major(meta.dev())));
    }
}
