//! The kernel datapath: load the programs, own their maps, attach them to a
//! cgroup, keep the maps in sync with the config and with endpoint health.
//!
//! **Everything is pinned, and the datapath outlives the daemon.** Maps and
//! the cgroup links live in `<pin dir>/v<ABI>/` (see `pins.rs`). When
//! the daemon dies (`kill -9`, OOM, a crash) or stops (SIGTERM), the
//! programs stay attached and connect4 notices per connect that nothing
//! listens on the proxy address any more (`bpf_sk_lookup_tcp`; the kernel
//! closed the listener with the process), so it sends new connects straight
//! to an endpoint from the slot table the daemon last published: the
//! healthy hosts of the priority that took traffic, ejections included.
//! That is fail-open to the best endpoint the kernel knows, with no window:
//! the switch happens on the first connect after the listener is gone.
//! Services whose proxy originates TLS cannot be served in plaintext, so
//! their connects fail at once with `EPERM` until a daemon is back.
//! Connections the dead proxy was carrying break; nothing can save those.
//!
//! We chose the listener lookup over a liveness entry in a map (a dying
//! daemon cannot clear it; a heartbeat needs a timeout, which is a window)
//! and over a `SOCKMAP` holding the listener (the same signal, but the
//! daemon has to register the socket, and `--datapath-only` peers would not).
//!
//! **Start and takeover.** A daemon opens the pinned maps of its
//! predecessor (same ABI version; their layout is checked) instead of
//! creating new ones, so the running programs and the new daemon share one
//! state from the first instant. It then refreshes the maps from its config,
//! binds its listener (from then on connect4 sends proxy-path connects to
//! it, writing original destinations into the shared maps it reads), and
//! attaches its own programs: each new link is pinned beside the old one and
//! renamed over it, so the cgroup always has a program and the old one
//! detaches when its pin goes. At no instant is a connect sent to a dead
//! port or left unredirected. On a fresh start the same order holds: nothing
//! is attached until the listener is up and the maps are filled.
//!
//! **Stop.** SIGTERM and SIGINT leave the datapath pinned and attached,
//! like a crash but without breaking connections mid-request: service
//! managers send SIGTERM on restart and upgrade, which must not open a
//! window where connects fail. `redirector cleanup` detaches and unpins
//! everything, for good. A daemon that fails before attaching removes what
//! it pinned (unless it was taking over: then the previous datapath keeps
//! running).
//!
//! **DNS capture** (see `dns.rs`) adds sendmsg4, recvmsg4 (and sendmsg6,
//! recvmsg6) and an egress program, attached only while capture is on, and
//! DNS fails open the same way: with no responder listening, port-53
//! traffic is left alone. getpeername4 and getpeername6 are always
//! attached: every redirect is recorded in socket storage, so apps see the
//! address they dialled.
//!
//! **IPv6**: connect6 does connect4's job for IPv6 VIPs, with maps of its
//! own beside the IPv4 ones (see ARCHITECTURE.md); the proxy's `[::1]`
//! listener is its target, and `RD_CFG6_V2` says where that is.
//!
//! The kernel fast path (`redirector.dev/datapath: kernel`) is the fail-open
//! path used on purpose: connect4 sends every connect of the service to a
//! slot, and sock_ops reports how each one ended into a ring buffer the
//! daemon reads for outlier detection (see `health.rs`).

mod encode;
mod events;
mod life;
mod load;
mod logs;
mod maps;
mod namespaces;
mod outcomes;
mod pins;
mod slots;

use std::{
    net::{Ipv6Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Mutex,
};

use aya::{maps::MapError, programs::ProgramError, programs::links::LinkError};
use redirector_common::{EndpointHealth, NsId, NsInfo, Own};
use tracing::info;

pub(crate) use encode::{ServiceMapEntry, endpoint_entries, has_slots, service_entries};
pub(crate) use events::NsEvents;
pub(crate) use load::check_privileges;
pub(crate) use logs::{KernelLogs, level as kernel_log_level};
pub(crate) use namespaces::{MapSpec, NsMaps};
pub(crate) use outcomes::{KernelOutcome, OutcomeReader};
pub(crate) use pins::{PinError, PinnedState, cleanup, handover_path, is_bpf_map};
pub(crate) use slots::{table as slot_table, table6 as slot_table6};

use self::{
    load::Loaded,
    maps::{Maps, OuterMaps},
};

/// `SO_MARK` of the proxy's upstream sockets; connect4 leaves them alone.
pub(crate) const PROXY_MARK: u32 = 0x5244_0001;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BpfError {
    #[error(
        "`redirector run` needs {needed}; this process lacks {missing}. Run it as root, or grant \
         those capabilities (in Kubernetes: securityContext.capabilities.add)"
    )]
    Privilege { needed: String, missing: String },
    #[error("cannot read this process's capabilities: {0}")]
    Caps(std::io::Error),
    #[error(
        "cgroup {path}: does not exist (create it, or pass --cgroup with an existing cgroup v2 directory)"
    )]
    CgroupMissing { path: PathBuf },
    #[error(
        "cgroup {path}: is a cgroup v1 hierarchy; redirector needs cgroup v2 (mounted at {v2_root})"
    )]
    CgroupV1 { path: PathBuf, v2_root: String },
    #[error("cgroup {path}: not a cgroup v2 directory (statfs type {fs_type:#x})")]
    NotCgroup { path: PathBuf, fs_type: i64 },
    #[error("cgroup {path}: {error}")]
    CgroupIo {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "this kernel does not support {what} (needs Linux ≥ {version}); cannot redirect connects"
    )]
    Unsupported {
        what: &'static str,
        version: &'static str,
    },
    #[error(
        "the embedded eBPF object is empty: this binary was built with AYA_BUILD_SKIP; rebuild \
         with `cargo build -p redirector-user` after `cargo xtask setup`"
    )]
    EmptyObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the eBPF object lacks {kind} {name:?}: redirector-ebpf and redirector-common disagree"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("loading program {name}: {error}")]
    Program {
        name: &'static str,
        error: ProgramError,
    },
    #[error("attaching {name} to cgroup {cgroup}: {error}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        error: ProgramError,
    },
    #[error("pinning the link of {name}: {error}")]
    Link {
        name: &'static str,
        error: LinkError,
    },
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error("watching the outcome ring buffer: {0}")]
    Ring(std::io::Error),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
}

pub(crate) struct DatapathOptions {
    pub(crate) cgroup: PathBuf,
    pub(crate) pin_dir: PathBuf,
    pub(crate) proxy: SocketAddrV4,
    /// The DNS responder (UDP and TCP); `None` leaves DNS alone.
    pub(crate) dns: Option<SocketAddrV4>,
    /// The proxy's IPv6 listener (same port), where connect6 sends
    /// connects to IPv6 VIPs; `None` (no IPv6 on the node) leaves them to
    /// fail open.
    pub(crate) proxy6: Option<Ipv6Addr>,
    /// The DNS responder's IPv6 address (same port as `dns`), where
    /// connect6 and sendmsg6 send DNS of IPv6 sockets.
    pub(crate) dns6: Option<Ipv6Addr>,
    /// What the programs log (aya-log's level, 0: nothing); see `logs.rs`.
    pub(crate) kernel_log_level: u8,
    /// Any listener on the proxy address is the proxy (`--datapath-only`:
    /// another proxy listens there), not only the daemon's own sockets.
    pub(crate) any_listener: bool,
    /// The pin directory's lock a predecessor shares during a handover
    /// (see `handover.rs`); `None`: take it.
    pub(crate) lock: Option<std::os::fd::OwnedFd>,
    /// The programs a successor loaded before asking (see
    /// [`Datapath::preflight`]); `None`: load them.
    pub(crate) prepared: Option<Prepared>,
}

/// The object loaded on the pinned maps, every program through the
/// verifier, before the pin directory was claimed.
pub(crate) struct Prepared(aya::Ebpf);

/// The loaded datapath: the programs and their pins (until released),
/// the maps the daemon writes, the ones the proxy and the DNS responder
/// read, and the outcome ring (until its reader is taken).
pub(crate) struct Datapath {
    /// `None` once released or handed over.
    loaded: Mutex<Option<Loaded>>,
    maps: Mutex<Maps>,
    outer: Mutex<OuterMaps>,
    outcomes: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    ns_events: Mutex<Option<aya::maps::RingBuf<aya::maps::MapData>>>,
    logs: Mutex<Option<KernelLogs>>,
    previous_pid: Option<u32>,
}

impl Datapath {
    /// Checks privileges and the cgroup, claims the pin directory, loads
    /// the programs and opens (or creates) the pinned maps. Nothing new is
    /// attached yet; programs a previous daemon left attached keep running
    /// on the same maps.
    pub(crate) fn load(opts: DatapathOptions) -> Result<Self, BpfError> {
        let load::Opened {
            loaded,
            maps,
            outer,
            outcomes,
            ns_events,
            logs,
            previous_pid,
        } = load::open(opts)?;
        Ok(Self {
            loaded: Mutex::new(Some(loaded)),
            maps: Mutex::new(maps),
            outer: Mutex::new(outer),
            outcomes: Mutex::new(Some(outcomes)),
            ns_events: Mutex::new(Some(ns_events)),
            logs: Mutex::new(logs),
            previous_pid,
        })
    }

    /// Everything a successor can check before it asks the running daemon
    /// for the pin directory (see `load::preflight`); the proof, a
    /// descriptor of a map pinned there, and the loaded programs, for
    /// [`DatapathOptions::prepared`].
    pub(crate) fn preflight(
        opts: &DatapathOptions,
    ) -> Result<(std::os::fd::OwnedFd, Prepared), BpfError> {
        load::preflight(opts).map(|(proof, ebpf)| (proof, Prepared(ebpf)))
    }

    /// A successor that had the pin directory failed before confirming:
    /// this daemon's config maps, programs, death-watch registration and
    /// ring readers again (see `Loaded::resume`). `successor`: its pid,
    /// for the log.
    pub(crate) fn resume(&self, successor: u32) -> Result<(), BpfError> {
        let mut loaded = self.loaded.lock().expect("loaded lock");
        let Some(loaded) = loaded.as_mut() else {
            return Ok(());
        };
        let (outcomes, ns_events) = loaded.resume(successor)?;
        *self.outcomes.lock().expect("outcomes lock") = Some(outcomes);
        *self.ns_events.lock().expect("ns events lock") = Some(ns_events);
        Ok(())
    }

    /// Once a failed successor's process is gone: the config maps and the
    /// programs again, over whatever it wrote after [`Self::resume`] (a
    /// successor held up past the deadline goes on until it learns it was
    /// not acknowledged).
    pub(crate) fn retake(&self, successor: u32) -> Result<(), BpfError> {
        let mut loaded = self.loaded.lock().expect("loaded lock");
        loaded.as_mut().map_or(Ok(()), |l| l.retake(successor))
    }

    /// A duplicate of the pin directory's lock, for a successor to share
    /// until the handover ends; `None` once released.
    pub(crate) fn share_lock(&self) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        let loaded = self.loaded.lock().expect("loaded lock");
        loaded.as_ref().map(Loaded::share_lock).transpose()
    }

    /// The ids of the maps pinned in the directory this daemon holds.
    pub(crate) fn map_ids(&self) -> Vec<u32> {
        let loaded = self.loaded.lock().expect("loaded lock");
        loaded.as_ref().map(Loaded::map_ids).unwrap_or_default()
    }

    /// The predecessor acknowledged the handover: the lock is this
    /// daemon's alone now, and its pid goes in it.
    pub(crate) fn confirmed(&self) -> Result<(), BpfError> {
        let loaded = self.loaded.lock().expect("loaded lock");
        loaded.as_ref().map_or(Ok(()), Loaded::confirmed)
    }

    /// The pid of the daemon whose attached datapath this one is taking
    /// over, if any.
    pub(crate) fn previous_pid(&self) -> Option<u32> {
        self.previous_pid
    }

    /// Makes the kernel's service table equal to `entries`. Slot tables
    /// and endpoints of services that are gone are removed too, and so are
    /// slot tables of services that no longer use one (a reload that turns
    /// on TLS origination).
    pub(crate) fn set_services(&self, entries: &[ServiceMapEntry]) -> Result<(), BpfError> {
        self.maps.lock().expect("maps lock").set_services(entries)
    }

    /// Replaces the published endpoint entries of one service.
    pub(crate) fn set_endpoints(
        &self,
        service_id: u32,
        entries: &[EndpointHealth],
    ) -> Result<(), BpfError> {
        self.maps
            .lock()
            .expect("maps lock")
            .set_endpoints(service_id, entries)
    }

    /// Replaces one service's slot table (one atomic map update).
    pub(crate) fn set_slots(
        &self,
        service_id: u32,
        table: &redirector_common::SlotTable,
    ) -> Result<(), BpfError> {
        self.maps
            .lock()
            .expect("maps lock")
            .set_slots(service_id, table)
    }

    /// Replaces one service's IPv6 slot table (connect6's).
    pub(crate) fn set_slots6(
        &self,
        service_id: u32,
        table: &redirector_common::SlotTable6,
    ) -> Result<(), BpfError> {
        self.maps
            .lock()
            .expect("maps lock")
            .set_slots6(service_id, table)
    }

    /// Attaches this daemon's programs, replacing those of a previous
    /// daemon without a gap, and pins the links.
    pub(crate) fn attach(&self) -> Result<(), BpfError> {
        let mut loaded = self.loaded.lock().expect("loaded lock");
        let Some(loaded) = loaded.as_mut() else {
            return Ok(());
        };
        loaded.attach(self.previous_pid)
    }

    /// Puts namespace `ns`'s own maps in the outer maps: from now on the
    /// kernel records there what it sends to the daemon's sockets of `ns`.
    /// Blocks for the kernel's grace period (see [`OuterMaps`]), off the
    /// async worker's other tasks.
    pub(crate) fn serve_namespace(&self, ns: NsId, maps: &NsMaps) -> Result<(), BpfError> {
        off_worker(|| self.outer.lock().expect("outer maps lock").serve(ns, maps))
    }

    /// Takes namespace `ns`'s maps and display entry out; blocks as
    /// [`Self::serve_namespace`] does.
    pub(crate) fn forget_namespace(&self, ns: NsId) -> Result<(), BpfError> {
        off_worker(|| self.outer.lock().expect("outer maps lock").forget(ns))?;
        self.maps.lock().expect("maps lock").forget_ns_info(ns)
    }

    /// The namespaces a previous daemon left in the maps (the outer maps
    /// and the display map), so a restarted daemon can drop those it no
    /// longer serves.
    pub(crate) fn namespaces(&self) -> Vec<NsId> {
        let mut ids = self.outer.lock().expect("outer maps lock").namespaces();
        ids.extend(self.maps.lock().expect("maps lock").ns_info_keys());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Marks `socket` (a listener or the responder's UDP socket) as the
    /// daemon's own, serving namespace `ns` as `kind` (`OWN_PROXY`,
    /// `OWN_DNS`): only such sockets draw a namespace's traffic.
    pub(crate) fn own(&self, socket: &impl AsRawFd, ns: NsId, kind: u32) -> Result<(), BpfError> {
        self.maps.lock().expect("maps lock").own(
            socket,
            Own {
                ns_id: ns,
                kind,
                _pad: 0,
            },
        )
    }

    /// Tells the kernel what the daemon knows of the namespace with netns
    /// cookie `cookie` (`NS_SERVED`, `NS_LEFT_ALONE`; `None` forgets it,
    /// so its next socket reports it again).
    pub(crate) fn set_known(&self, cookie: u64, state: Option<u32>) -> Result<(), BpfError> {
        self.maps
            .lock()
            .expect("maps lock")
            .set_known(cookie, state)
    }

    /// Writes `redirector pods`' entry for namespace `ns`.
    pub(crate) fn set_ns_info(&self, ns: NsId, info: &NsInfo) -> Result<(), BpfError> {
        self.maps.lock().expect("maps lock").set_ns_info(ns, info)
    }

    /// The reader of namespace events; there is one.
    pub(crate) fn take_ns_events(&self) -> Result<Option<NsEvents>, BpfError> {
        let ring = self.ns_events.lock().expect("ns events lock").take();
        ring.map(NsEvents::new).transpose()
    }

    /// The reader of kernel-path connect outcomes; there is one.
    pub(crate) fn take_outcomes(&self) -> Result<Option<OutcomeReader>, BpfError> {
        let ring = self.outcomes.lock().expect("outcomes lock").take();
        ring.map(OutcomeReader::new).transpose()
    }

    /// The reader of the programs' logs; there is one.
    pub(crate) fn take_kernel_logs(&self) -> Option<KernelLogs> {
        self.logs.lock().expect("logs lock").take()
    }

    /// Gives the pin directory to a successor that took this daemon's
    /// listeners: the lock is released and nothing is removed (the pins
    /// are the successor's now). The maps stay open for connections in
    /// flight, but nothing may write them any more.
    pub(crate) fn hand_over(&self) {
        if let Some(loaded) = self.loaded.lock().expect("loaded lock").take() {
            loaded.hand_over();
        }
    }

    /// Lets go of the datapath: the programs stay attached through their
    /// pins and serve connects without the proxy (see the module docs);
    /// if this daemon never attached anything, its pins are removed.
    /// Idempotent.
    pub(crate) fn release(&self) {
        let Some(loaded) = self.loaded.lock().expect("loaded lock").take() else {
            return;
        };
        if loaded.release() {
            info!("removed the pins: nothing was attached");
        } else {
            info!(
                "the kernel datapath stays attached and sends connects straight to endpoints \
                 until a daemon takes it over; `redirector cleanup` removes it"
            );
        }
    }
}

/// Runs `f`, which blocks in the kernel for milliseconds, telling a
/// multi-threaded tokio runtime first (`block_in_place`), so the tasks
/// queued on this worker move to another instead of waiting; elsewhere
/// (a current-thread runtime, or no runtime) it just runs.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.release();
    }
}
