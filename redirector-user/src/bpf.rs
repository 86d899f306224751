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

mod pins;
pub mod slots;

use std::{
    collections::HashSet,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
        ProgramType, SockOps,
        links::{FdLink, LinkError},
    },
};
use redirector_common::{
    Config6, ConnectOutcome, ConnectOutcome6, DNS_ENABLED, DnsConfig, EndpointHealth, EndpointKey,
    MAX_ENDPOINTS, MAX_INFLIGHT, MAX_SERVICES, OUTCOME_RING_BYTES, OrigDst, PROXY_ENABLED,
    ProxyConfig, SVC_FAIL_OPEN, SVC_KERNEL_PATH, ServiceInfo, ServiceKey, ServiceKey6,
    ServiceValue, ServiceValue6, SlotConn, SlotConn6, SlotTable, SlotTable6, SockAddr6, SockKey,
    SockOrig, SockOrig6, map_names, program_names,
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, info, warn};

pub use pins::{Cleanup, PinError, PinnedState, cleanup, handover_path};

use crate::sys;

/// The compiled kernel programs, built by build.rs from `redirector-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector"));

/// `SO_MARK` of the proxy's upstream sockets; connect4 leaves them alone.
pub const PROXY_MARK: u32 = 0x5244_0001;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
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

pub struct DatapathOptions {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub proxy: SocketAddrV4,
    /// The DNS responder (UDP and TCP); `None` leaves DNS alone.
    pub dns: Option<SocketAddrV4>,
    /// The proxy's IPv6 listener (same port), where connect6 sends
    /// connects to IPv6 VIPs; `None` (no IPv6 on the node) leaves them to
    /// fail open.
    pub proxy6: Option<Ipv6Addr>,
    /// The DNS responder's IPv6 address (same port as `dns`), where
    /// connect6 and sendmsg6 send DNS of IPv6 sockets.
    pub dns6: Option<Ipv6Addr>,
}

/// One service's entry in the kernel: the keys apps dial, and display data.
pub struct ServiceMapEntry {
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// The IPv6 VIP:port, for connect6.
    pub key6: ServiceKey6,
    pub info: ServiceInfo,
}

pub struct Datapath {
    /// The programs; `None` once released.
    ebpf: Mutex<Option<Ebpf>>,
    maps: Mutex<Maps>,
    orig: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    orig6: Mutex<HashMap<MapData, SockAddr6, OrigDst>>,
    dns_by_sock: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    dns_by_sock6: Mutex<HashMap<MapData, SockAddr6, SockAddr6>>,
    outcomes: Mutex<Option<RingBuf<MapData>>>,
    cgroup: PathBuf,
    dns: Option<SocketAddrV4>,
    pins: Mutex<Option<pins::Pins>>,
    previous_pid: Option<u32>,
}

struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    services6: HashMap<MapData, ServiceKey6, ServiceValue6>,
    info: HashMap<MapData, u32, ServiceInfo>,
    endpoints: HashMap<MapData, EndpointKey, EndpointHealth>,
    slots: HashMap<MapData, u32, SlotTable>,
    slots6: HashMap<MapData, u32, SlotTable6>,
    /// How many endpoint entries each service has in the map now.
    endpoint_counts: std::collections::HashMap<u32, u32>,
}

/// Every map, with the kernel layout a pinned one must have to be reused.
/// A pin directory of an earlier build may lack the maps added since (the
/// DNS ones): the loader creates those, so an upgrade takes over without a
/// gap; the IPv6 ones were added the same way, so the ABI stayed v2.
fn layouts() -> [pins::Layout; 20] {
    fn l<K, V>(name: &'static str, max_entries: u32) -> pins::Layout {
        pins::Layout {
            name,
            key: size_of::<K>() as u32,
            value: size_of::<V>() as u32,
            max_entries,
        }
    }
    [
        l::<ServiceKey, ServiceValue>(map_names::SERVICES, MAX_SERVICES),
        l::<u32, ProxyConfig>(map_names::PROXY_CONFIG, 1),
        l::<u64, OrigDst>(map_names::ORIG_BY_COOKIE, MAX_INFLIGHT),
        l::<SockKey, OrigDst>(map_names::ORIG_BY_SOCK, MAX_INFLIGHT),
        l::<u32, ServiceInfo>(map_names::SERVICE_INFO, MAX_SERVICES),
        l::<EndpointKey, EndpointHealth>(map_names::ENDPOINTS, MAX_ENDPOINTS),
        l::<u32, SlotTable>(map_names::SLOTS, MAX_SERVICES),
        l::<u64, SlotConn>(map_names::SLOT_CONNS, MAX_INFLIGHT),
        l::<(), ()>(map_names::OUTCOMES, OUTCOME_RING_BYTES),
        l::<u32, DnsConfig>(map_names::DNS_CONFIG, 1),
        l::<SockKey, OrigDst>(map_names::DNS_BY_SOCK, MAX_INFLIGHT),
        // Socket storage: the key is the socket (an fd, `int`), and the
        // kernel sizes it by socket, not by max_entries.
        l::<i32, SockOrig>(map_names::SOCK_ORIG, 0),
        l::<ServiceKey6, ServiceValue6>(map_names::SERVICES6, MAX_SERVICES),
        l::<u32, Config6>(map_names::CONFIG6, 1),
        l::<SockAddr6, OrigDst>(map_names::ORIG_BY_SOCK6, MAX_INFLIGHT),
        l::<i32, SockOrig6>(map_names::SOCK_ORIG6, 0),
        l::<SockAddr6, SockAddr6>(map_names::DNS_BY_SOCK6, MAX_INFLIGHT),
        l::<u64, SockAddr6>(map_names::DNS_BY_COOKIE6, MAX_INFLIGHT),
        l::<u32, SlotTable6>(map_names::SLOTS6, MAX_SERVICES),
        l::<u64, SlotConn6>(map_names::SLOT_CONNS6, MAX_INFLIGHT),
    ]
}

/// The cgroup hooks: program, attach point, pinned link name, and whether
/// it serves only DNS capture (attached only while capture is on).
const HOOKS: [(&str, Hook, &str, bool); 10] = [
    (
        program_names::CONNECT4,
        Hook::SockAddr,
        pins::LINK_CONNECT4,
        false,
    ),
    (
        program_names::SOCKOPS,
        Hook::SockOps,
        pins::LINK_SOCKOPS,
        false,
    ),
    (
        program_names::GETPEERNAME4,
        Hook::SockAddr,
        pins::LINK_GETPEERNAME4,
        false,
    ),
    (
        program_names::SENDMSG4,
        Hook::SockAddr,
        pins::LINK_SENDMSG4,
        true,
    ),
    (
        program_names::RECVMSG4,
        Hook::SockAddr,
        pins::LINK_RECVMSG4,
        true,
    ),
    (program_names::EGRESS, Hook::Egress, pins::LINK_EGRESS, true),
    (
        program_names::CONNECT6,
        Hook::SockAddr,
        pins::LINK_CONNECT6,
        false,
    ),
    (
        program_names::GETPEERNAME6,
        Hook::SockAddr,
        pins::LINK_GETPEERNAME6,
        false,
    ),
    (
        program_names::SENDMSG6,
        Hook::SockAddr,
        pins::LINK_SENDMSG6,
        true,
    ),
    (
        program_names::RECVMSG6,
        Hook::SockAddr,
        pins::LINK_RECVMSG6,
        true,
    ),
];

#[derive(Clone, Copy)]
enum Hook {
    SockAddr,
    SockOps,
    Egress,
}

impl Datapath {
    /// Checks privileges and the cgroup, claims the pin directory, loads
    /// the programs and opens (or creates) the pinned maps. Nothing new is
    /// attached yet; programs a previous daemon left attached keep running
    /// on the same maps.
    pub fn load(opts: DatapathOptions) -> Result<Self, BpfError> {
        check_privileges()?;
        check_cgroup(&opts.cgroup)?;
        for (ty, what, version) in [
            (
                ProgramType::CgroupSockAddr,
                "cgroup/connect4 programs",
                "4.17",
            ),
            (ProgramType::SockOps, "sock_ops programs", "4.13"),
            (ProgramType::CgroupSkb, "cgroup_skb programs", "4.10"),
        ] {
            if !aya::sys::is_program_supported(ty).unwrap_or(false) {
                return Err(BpfError::Unsupported { what, version });
            }
        }
        for (ty, what, version) in [
            (aya::maps::MapType::RingBuf, "BPF ring buffers", "5.8"),
            (aya::maps::MapType::SkStorage, "BPF socket storage", "5.2"),
        ] {
            if !aya::sys::is_map_supported(ty).unwrap_or(false) {
                return Err(BpfError::Unsupported { what, version });
            }
        }
        if OBJECT.is_empty() {
            return Err(BpfError::EmptyObject);
        }
        let pins = pins::Pins::claim(&opts.pin_dir)?;
        let layouts = layouts();
        pins.check_layouts(&layouts)?;
        let taking_over = pins.has_links();
        let mut loader = EbpfLoader::new();
        for l in &layouts {
            loader.map_pin_path(l.name, pins.path(l.name));
        }
        let mut ebpf = loader.load(OBJECT)?;
        pins.restrict()?;
        for (name, hook, _, _) in HOOKS {
            match hook {
                Hook::SockAddr => load_program::<CgroupSockAddr>(&mut ebpf, name)?,
                Hook::SockOps => load_program::<SockOps>(&mut ebpf, name)?,
                Hook::Egress => load_program::<CgroupSkb>(&mut ebpf, name)?,
            }
        }

        let services = typed_map(&mut ebpf, map_names::SERVICES, HashMap::try_from)?;
        let services6 = typed_map(&mut ebpf, map_names::SERVICES6, HashMap::try_from)?;
        let orig6 = typed_map(&mut ebpf, map_names::ORIG_BY_SOCK6, HashMap::try_from)?;
        let mut config6: Array<MapData, Config6> =
            typed_map(&mut ebpf, map_names::CONFIG6, Array::try_from)?;
        let info = typed_map(&mut ebpf, map_names::SERVICE_INFO, HashMap::try_from)?;
        let endpoints: HashMap<MapData, EndpointKey, EndpointHealth> =
            typed_map(&mut ebpf, map_names::ENDPOINTS, HashMap::try_from)?;
        let slots = typed_map(&mut ebpf, map_names::SLOTS, HashMap::try_from)?;
        let slots6 = typed_map(&mut ebpf, map_names::SLOTS6, HashMap::try_from)?;
        let mut config: Array<MapData, ProxyConfig> =
            typed_map(&mut ebpf, map_names::PROXY_CONFIG, Array::try_from)?;
        let orig = typed_map(&mut ebpf, map_names::ORIG_BY_SOCK, HashMap::try_from)?;
        let dns_by_sock = typed_map(&mut ebpf, map_names::DNS_BY_SOCK, HashMap::try_from)?;
        let dns_by_sock6 = typed_map(&mut ebpf, map_names::DNS_BY_SOCK6, HashMap::try_from)?;
        let mut dns_config: Array<MapData, DnsConfig> =
            typed_map(&mut ebpf, map_names::DNS_CONFIG, Array::try_from)?;
        let outcomes = typed_map(&mut ebpf, map_names::OUTCOMES, RingBuf::try_from)?;

        let previous_pid = taking_over
            .then(|| config.get(&0, 0).ok().map(|c| c.daemon_pid))
            .flatten();
        // Entries the previous daemon published, so stale ones get removed.
        let mut endpoint_counts = std::collections::HashMap::new();
        for key in endpoints.keys().filter_map(Result::ok) {
            let n = endpoint_counts.entry(key.service_id).or_insert(0);
            *n = (*n).max(key.index + 1);
        }
        // Enabled from the start: on a takeover the running programs must
        // keep redirecting; on a fresh start nothing is attached yet.
        let cfg = proxy_config(opts.proxy, PROXY_ENABLED);
        map_op(map_names::PROXY_CONFIG, config.set(0, cfg, 0))?;
        let cfg6 = Config6 {
            proxy_ip6_be: opts.proxy6.map_or([0; 4], ip6_words),
            responder_ip6_be: opts
                .dns6
                .filter(|_| opts.dns.is_some())
                .map_or([0; 4], ip6_words),
        };
        map_op(map_names::CONFIG6, config6.set(0, cfg6, 0))?;
        // Likewise: sendmsg4 and connect4 send DNS to the responder only
        // while it listens, so this is safe before it does.
        map_op(
            map_names::DNS_CONFIG,
            dns_config.set(0, dns_config_value(opts.dns), 0),
        )?;
        Ok(Self {
            ebpf: Mutex::new(Some(ebpf)),
            maps: Mutex::new(Maps {
                services,
                services6,
                info,
                endpoints,
                slots,
                slots6,
                endpoint_counts,
            }),
            orig: Mutex::new(orig),
            orig6: Mutex::new(orig6),
            dns_by_sock: Mutex::new(dns_by_sock),
            dns_by_sock6: Mutex::new(dns_by_sock6),
            outcomes: Mutex::new(Some(outcomes)),
            cgroup: opts.cgroup,
            dns: opts.dns,
            pins: Mutex::new(Some(pins)),
            previous_pid,
        })
    }

    /// The pid of the daemon whose attached datapath this one is taking
    /// over, if any.
    pub fn previous_pid(&self) -> Option<u32> {
        self.previous_pid
    }

    /// Makes the kernel's service table equal to `entries`. Slot tables
    /// and endpoints of services that are gone are removed too, and so are
    /// slot tables of services that no longer use one (a reload that turns
    /// on TLS origination).
    pub fn set_services(&self, entries: &[ServiceMapEntry]) -> Result<(), BpfError> {
        let mut maps = self.maps.lock().expect("maps lock");
        let wanted: HashSet<ServiceKey> = entries.iter().map(|e| e.key).collect();
        let stale: Vec<ServiceKey> = maps
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for e in entries {
            map_op(
                map_names::SERVICE_INFO,
                maps.info.insert(e.value.service_id, e.info, 0),
            )?;
            map_op(map_names::SERVICES, maps.services.insert(e.key, e.value, 0))?;
        }
        for k in stale {
            map_op(map_names::SERVICES, maps.services.remove(&k))?;
        }
        // The IPv6 VIPs: their entry names the IPv4 VIP the proxy routes
        // by, so each is written after its IPv4 one and removed with it.
        let wanted6: HashSet<ServiceKey6> = entries.iter().map(|e| e.key6).collect();
        let stale6: Vec<ServiceKey6> = maps
            .services6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted6.contains(k))
            .collect();
        for e in entries {
            let value = ServiceValue6 {
                service_id: e.value.service_id,
                flags: e.value.flags,
                vip4_be: e.key.vip_be,
            };
            map_op(
                map_names::SERVICES6,
                maps.services6.insert(e.key6, value, 0),
            )?;
        }
        for k in stale6 {
            map_op(map_names::SERVICES6, maps.services6.remove(&k))?;
        }
        let live_ids: HashSet<u32> = entries.iter().map(|e| e.value.service_id).collect();
        let stale_ids: Vec<u32> = maps
            .info
            .keys()
            .filter_map(Result::ok)
            .chain(maps.slots.keys().filter_map(Result::ok))
            .chain(maps.slots6.keys().filter_map(Result::ok))
            .chain(maps.endpoint_counts.keys().copied())
            .filter(|id| !live_ids.contains(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for id in stale_ids {
            ignore_missing(map_names::SERVICE_INFO, maps.info.remove(&id))?;
            ignore_missing(map_names::SLOTS, maps.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, maps.slots6.remove(&id))?;
            maps.set_endpoints(id, &[])?;
        }
        let unslotted: Vec<u32> = entries
            .iter()
            .filter(|e| e.value.flags & (SVC_FAIL_OPEN | SVC_KERNEL_PATH) == 0)
            .map(|e| e.value.service_id)
            .collect();
        for id in unslotted {
            ignore_missing(map_names::SLOTS, maps.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, maps.slots6.remove(&id))?;
        }
        Ok(())
    }

    /// Replaces the published endpoint entries of one service.
    pub fn set_endpoints(
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
    pub fn set_slots(&self, service_id: u32, table: &SlotTable) -> Result<(), BpfError> {
        let mut maps = self.maps.lock().expect("maps lock");
        map_op(map_names::SLOTS, maps.slots.insert(service_id, table, 0))
    }

    /// Replaces one service's IPv6 slot table (connect6's).
    pub fn set_slots6(&self, service_id: u32, table: &SlotTable6) -> Result<(), BpfError> {
        let mut maps = self.maps.lock().expect("maps lock");
        map_op(map_names::SLOTS6, maps.slots6.insert(service_id, table, 0))
    }

    /// Attaches this daemon's programs, replacing those of a previous
    /// daemon without a gap, and pins the links.
    pub fn attach(&self) -> Result<(), BpfError> {
        let cgroup = File::open(&self.cgroup).map_err(|error| BpfError::CgroupIo {
            path: self.cgroup.clone(),
            error,
        })?;
        let mut guard = self.ebpf.lock().expect("ebpf lock");
        let Some(ebpf) = guard.as_mut() else {
            return Ok(());
        };
        let pins_guard = self.pins.lock().expect("pins lock");
        let Some(pins) = pins_guard.as_ref() else {
            return Ok(());
        };
        for old in pins.remove_other_versions() {
            info!(path = %old.display(), "removed the pinned datapath of another ABI version");
        }
        let attach_err = |name, error| BpfError::Attach {
            name,
            cgroup: self.cgroup.clone(),
            error,
        };
        let link_err = |name| move |error| BpfError::Link { name, error };
        let mut attached = Vec::new();
        for (name, hook, pin, dns_only) in HOOKS {
            if dns_only && self.dns.is_none() {
                // Capture off: a previous daemon's DNS hooks go (unpinning
                // a link whose owner is gone detaches its program).
                pins.unpin_link(pin)?;
                continue;
            }
            // BPF links (Linux ≥ 5.7) always coexist with other programs on
            // the cgroup and reject BPF_F_ALLOW_MULTI; `Single` passes flags 0.
            let mode = CgroupAttachMode::Single;
            let link = match hook {
                Hook::SockAddr => {
                    let prog: &mut CgroupSockAddr = program(ebpf, name)?;
                    let id = prog
                        .attach(&cgroup, mode)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
                Hook::SockOps => {
                    let prog: &mut SockOps = program(ebpf, name)?;
                    let id = prog
                        .attach(&cgroup, mode)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
                Hook::Egress => {
                    let prog: &mut CgroupSkb = program(ebpf, name)?;
                    let id = prog
                        .attach(&cgroup, CgroupSkbAttachType::Egress, mode)
                        .map_err(|e| attach_err(name, e))?;
                    FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
                }
            }
            .map_err(link_err(name))?;
            pins.pin_link(pin, link)?;
            attached.push(name);
        }
        let attached = attached.join(", ");
        match self.previous_pid {
            Some(pid) => info!(
                cgroup = %self.cgroup.display(),
                "attached {attached}, replacing those of pid {pid}"
            ),
            None => info!(cgroup = %self.cgroup.display(), "attached {attached}"),
        }
        Ok(())
    }

    /// The VIP:port a redirected connection from `peer` was meant for.
    /// Consumes the entry: each connection is accepted once.
    pub fn take_original_destination(&self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = SockKey {
            ip_be: u32::from(*peer.ip()).to_be(),
            port_be: peer.port().to_be(),
            _pad: 0,
        };
        take_orig(&self.orig, key, &peer)
    }

    /// [`Self::take_original_destination`] for a client of the proxy's
    /// IPv6 listener: the service's IPv4 VIP:port, which the routes are
    /// keyed by (connect6 recorded it; the app dialled the IPv6 VIP).
    pub fn take_original_destination6(&self, peer: SocketAddrV6) -> Option<SocketAddrV4> {
        let key = SockAddr6 {
            ip6_be: ip6_words(*peer.ip()),
            port_be: peer.port().to_be(),
            _pad: 0,
        };
        take_orig(&self.orig6, key, &peer)
    }

    /// The nameserver the app socket at `peer` sent its DNS query to, as
    /// sendmsg4 or the egress program recorded it. Not consumed: a socket
    /// sends many queries (the LRU map forgets sockets long gone).
    pub fn dns_nameserver(&self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = SockKey {
            ip_be: u32::from(*peer.ip()).to_be(),
            port_be: peer.port().to_be(),
            _pad: 0,
        };
        let ns = self
            .dns_by_sock
            .lock()
            .expect("dns lock")
            .get(&key, 0)
            .ok()?;
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(ns.vip_be)),
            u16::from_be(ns.port_be),
        ))
    }

    /// [`Self::dns_nameserver`] for an app's IPv6 DNS socket (sendmsg6,
    /// the egress program, or for TCP sock_ops recorded it); `take`
    /// removes the entry (TCP: each connection is accepted once). An
    /// IPv4-mapped nameserver comes back as IPv4.
    pub fn dns_nameserver6(&self, peer: SocketAddrV6, take: bool) -> Option<SocketAddr> {
        let key = SockAddr6 {
            ip6_be: ip6_words(*peer.ip()),
            port_be: peer.port().to_be(),
            _pad: 0,
        };
        let mut map = self.dns_by_sock6.lock().expect("dns6 lock");
        let ns = map.get(&key, 0).ok()?;
        if take && let Err(e) = map.remove(&key) {
            debug!(%peer, error = %e, "removing a DNS nameserver entry");
        }
        let ip = ip6_from_words(ns.ip6_be);
        let port = u16::from_be(ns.port_be);
        Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, port)),
            None => SocketAddr::from((ip, port)),
        })
    }

    /// The reader of kernel-path connect outcomes; there is one.
    pub fn take_outcomes(&self) -> Result<Option<OutcomeReader>, BpfError> {
        let Some(ring) = self.outcomes.lock().expect("outcomes lock").take() else {
            return Ok(None);
        };
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // until it is dropped, which only the AsyncFd does.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| BpfError::Ring(e.into_parts().1))?;
        Ok(Some(OutcomeReader { ring }))
    }

    /// Gives the pin directory to a successor that took this daemon's
    /// listeners: the lock is released and nothing is removed (the pins
    /// are the successor's now). The maps stay open for connections in
    /// flight, but nothing may write them any more.
    pub fn hand_over(&self) {
        self.pins.lock().expect("pins lock").take();
        self.ebpf.lock().expect("ebpf lock").take();
    }

    /// Lets go of the datapath: the programs stay attached through their
    /// pins and serve connects without the proxy (see the module docs);
    /// if this daemon never attached anything, its pins are removed.
    /// Idempotent.
    pub fn release(&self) {
        self.ebpf.lock().expect("ebpf lock").take();
        if let Some(pins) = self.pins.lock().expect("pins lock").take() {
            if pins.release() {
                info!("removed the pins: nothing was attached");
            } else {
                info!(
                    "the kernel datapath stays attached and sends connects straight to endpoints \
                     until a daemon takes it over; `redirector cleanup` removes it"
                );
            }
        }
    }
}

/// The original destination recorded under `key`, removed as it is read:
/// each connection is accepted once.
fn take_orig<K: aya::Pod>(
    map: &Mutex<HashMap<MapData, K, OrigDst>>,
    key: K,
    peer: &dyn std::fmt::Display,
) -> Option<SocketAddrV4> {
    let mut map = map.lock().expect("orig lock");
    let orig = map.get(&key, 0).ok()?;
    if let Err(e) = map.remove(&key) {
        debug!(%peer, error = %e, "removing original-destination entry");
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(orig.vip_be)),
        u16::from_be(orig.port_be),
    ))
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.release();
    }
}

/// A kernel-path connect outcome, either family (from a
/// [`ConnectOutcome`] or a [`ConnectOutcome6`]; an IPv4-mapped endpoint
/// address comes back as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOutcome {
    pub service_id: u32,
    pub addr: SocketAddr,
    pub kind: u8,
    pub syn_retrans: u32,
}

impl From<ConnectOutcome> for KernelOutcome {
    fn from(o: ConnectOutcome) -> Self {
        KernelOutcome {
            service_id: o.service_id,
            addr: SocketAddr::from((
                Ipv4Addr::from(u32::from_be(o.ip_be)),
                u16::from_be(o.port_be),
            )),
            kind: o.kind,
            syn_retrans: o.syn_retrans,
        }
    }
}

impl From<ConnectOutcome6> for KernelOutcome {
    fn from(o: ConnectOutcome6) -> Self {
        let ip = ip6_from_words(o.ip6_be);
        let port = u16::from_be(o.port_be);
        KernelOutcome {
            service_id: o.service_id,
            addr: match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            },
            kind: o.kind,
            syn_retrans: o.syn_retrans,
        }
    }
}

/// Connect outcomes of the kernel path, as sock_ops reported them.
pub struct OutcomeReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl OutcomeReader {
    /// Waits for a wakeup (sock_ops sends one with every failure) or at
    /// most `poll` (successes are written without one), then appends every
    /// outcome available to `out`.
    pub async fn read(
        &mut self,
        out: &mut Vec<KernelOutcome>,
        poll: std::time::Duration,
    ) -> Result<(), BpfError> {
        if let Ok(guard) = tokio::time::timeout(poll, self.ring.readable_mut()).await {
            // Cleared before draining, so a wakeup during the drain is kept.
            guard.map_err(BpfError::Ring)?.clear_ready();
        }
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            // The two record types differ in size (16 and 28 bytes).
            // SAFETY: both are plain old data, the kernel wrote one per
            // item, and read_unaligned needs no alignment.
            if item.len() == size_of::<ConnectOutcome6>() {
                let o: ConnectOutcome6 = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(o.into());
            } else if item.len() == size_of::<ConnectOutcome>() {
                let o: ConnectOutcome = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(o.into());
            } else {
                warn!(
                    len = item.len(),
                    "unexpected item in the outcome ring buffer"
                );
            }
        }
        Ok(())
    }
}

impl Maps {
    fn set_endpoints(
        &mut self,
        service_id: u32,
        entries: &[EndpointHealth],
    ) -> Result<(), BpfError> {
        for (i, e) in entries.iter().enumerate() {
            let key = EndpointKey {
                service_id,
                index: i as u32,
            };
            map_op(map_names::ENDPOINTS, self.endpoints.insert(key, e, 0))?;
        }
        let before = if entries.is_empty() {
            self.endpoint_counts.remove(&service_id)
        } else {
            self.endpoint_counts
                .insert(service_id, entries.len() as u32)
        };
        for index in entries.len() as u32..before.unwrap_or(0) {
            let key = EndpointKey { service_id, index };
            ignore_missing(map_names::ENDPOINTS, self.endpoints.remove(&key))?;
        }
        Ok(())
    }
}

fn dns_config_value(responder: Option<SocketAddrV4>) -> DnsConfig {
    DnsConfig {
        responder_ip_be: responder.map_or(0, |r| u32::from(*r.ip()).to_be()),
        responder_port_be: responder.map_or(0, |r| r.port().to_be()),
        _pad: 0,
        flags: if responder.is_some() { DNS_ENABLED } else { 0 },
    }
}

/// An IPv6 address as the kernel's `user_ip6` words (network order).
pub fn ip6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`ip6_words`].
pub fn ip6_from_words(words: [u32; 4]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, w) in octets.chunks_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

fn proxy_config(proxy: SocketAddrV4, flags: u32) -> ProxyConfig {
    ProxyConfig {
        proxy_ip_be: u32::from(*proxy.ip()).to_be(),
        proxy_port_be: proxy.port().to_be(),
        _pad: 0,
        mark: PROXY_MARK,
        flags,
        daemon_pid: std::process::id(),
        _pad2: 0,
    }
}
/// Whether this process may load and attach the programs.
pub fn check_privileges() -> Result<(), BpfError> {
    let caps = sys::effective_caps().map_err(BpfError::Caps)?;
    let mut missing = Vec::new();
    if !sys::has_cap(caps, sys::CAP_BPF) && !sys::has_cap(caps, sys::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    if !sys::has_cap(caps, sys::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(BpfError::Privilege {
        needed: "CAP_BPF (or CAP_SYS_ADMIN) to load programs and CAP_NET_ADMIN to attach them and \
                 mark proxy sockets"
            .into(),
        missing: missing.join(" and "),
    })
}

fn check_cgroup(path: &Path) -> Result<(), BpfError> {
    match sys::fs_type(path) {
        Ok(sys::CGROUP2_SUPER_MAGIC) if path.is_dir() => Ok(()),
        Ok(sys::CGROUP_SUPER_MAGIC) => Err(BpfError::CgroupV1 {
            path: path.into(),
            v2_root: sys::cgroup2_root()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "nowhere: no cgroup2 mount found".into()),
        }),
        Ok(fs_type) => Err(BpfError::NotCgroup {
            path: path.into(),
            fs_type,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(BpfError::CgroupMissing { path: path.into() })
        }
        Err(error) => Err(BpfError::CgroupIo {
            path: path.into(),
            error,
        }),
    }
}

fn load_program<P>(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BpfError>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    P: Loadable,
{
    let prog: &mut P = program(ebpf, name)?;
    prog.load_program()
        .map_err(|error| BpfError::Program { name, error })
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, BpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(BpfError::Missing {
        kind: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|error| BpfError::Program { name, error })
}

/// The program kinds share `load()` but no trait for it.
trait Loadable {
    fn load_program(&mut self) -> Result<(), ProgramError>;
}
impl Loadable for CgroupSockAddr {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}
impl Loadable for SockOps {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}
impl Loadable for CgroupSkb {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

fn typed_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, BpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    convert(map).map_err(|error| BpfError::Map { name, error })
}

fn map_op(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
    r.map_err(|error| BpfError::Map { name, error })
}

/// A removal of a key that is not there is not a problem.
fn ignore_missing(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => map_op(name, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_are_the_kernels_network_order_and_round_trip() {
        let ip: Ipv6Addr = "2001:2::630f:247f:524b:4833".parse().unwrap();
        let words = ip6_words(ip);
        // user_ip6[0] holds the first four bytes as they are on the wire.
        assert_eq!(words[0].to_ne_bytes(), [0x20, 0x01, 0x00, 0x02]);
        assert_eq!(ip6_from_words(words), ip);
        let mapped = Ipv4Addr::new(127, 0, 0, 4).to_ipv6_mapped();
        assert_eq!(
            ip6_words(mapped),
            redirector_common::v4_mapped(u32::from(Ipv4Addr::new(127, 0, 0, 4)).to_be())
        );
    }
}
