//! Loading and attaching: what the kernel and this process must offer, the
//! pinned maps a previous daemon left (checked against this build's
//! layouts), the programs, and the cgroup links, each pinned beside the
//! previous daemon's and renamed over it so the cgroup never goes without.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
    sync::LazyLock,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        ProgramType, SockOps, links::FdLink,
    },
};
use redirector_common::{
    Config6, DnsConfig, EndpointHealth, EndpointKey, Life, MAX_ENDPOINTS, MAX_NAMESPACES,
    MAX_SERVICES, NS_EVENT_RING_BYTES, NsId, NsInfo, OUTCOME_RING_BYTES, Own, PROXY_ANY_LISTENER,
    PROXY_ENABLED, ProxyConfig, ServiceInfo, ServiceKey, ServiceKey6, ServiceValue, ServiceValue6,
    SlotTable, SlotTable6, SockOrig, SockOrig6, map_names, program_names,
};
use tracing::{info, warn};

use super::{
    BpfError, DatapathOptions, PROXY_MARK,
    life::Watch,
    logs::{self, KernelLogs},
    maps::{Maps, OuterMaps, map_op, typed_map},
    pins::{self, Pins},
};
use crate::sys;

/// The compiled kernel programs, built by build.rs from `redirector-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector"));

/// Every map, with the kernel layout a pinned one must have to be reused.
/// A pin directory of an earlier build of this ABI may lack maps added
/// since: the loader creates those, so an upgrade takes over without a
/// gap. The hash-of-maps' values are inner map ids (`u32`); their inner
/// maps are made per namespace (`namespaces.rs`).
fn layouts() -> [pins::Layout; 20] {
    fn l<K, V>(name: &'static str, max_entries: u32) -> pins::Layout {
        pins::Layout {
            name,
            key: size_of::<K>() as u32,
            value: size_of::<V>() as u32,
            max_entries,
            kind: object_kind(name),
        }
    }
    [
        l::<ServiceKey, ServiceValue>(map_names::SERVICES, MAX_SERVICES),
        l::<u32, ProxyConfig>(map_names::PROXY_CONFIG, 1),
        l::<NsId, u32>(map_names::ORIG_BY_SOCK, MAX_NAMESPACES),
        l::<u32, ServiceInfo>(map_names::SERVICE_INFO, MAX_SERVICES),
        l::<EndpointKey, EndpointHealth>(map_names::ENDPOINTS, MAX_ENDPOINTS),
        l::<u32, SlotTable>(map_names::SLOTS, MAX_SERVICES),
        l::<(), ()>(map_names::OUTCOMES, OUTCOME_RING_BYTES),
        l::<u32, DnsConfig>(map_names::DNS_CONFIG, 1),
        l::<NsId, u32>(map_names::DNS_BY_SOCK, MAX_NAMESPACES),
        // Socket storage: the key is the socket (an fd, `int`), and the
        // kernel sizes it by socket, not by max_entries.
        l::<i32, SockOrig>(map_names::SOCK_ORIG, 0),
        l::<ServiceKey6, ServiceValue6>(map_names::SERVICES6, MAX_SERVICES),
        l::<u32, Config6>(map_names::CONFIG6, 1),
        l::<NsId, u32>(map_names::ORIG_BY_SOCK6, MAX_NAMESPACES),
        l::<i32, SockOrig6>(map_names::SOCK_ORIG6, 0),
        l::<NsId, u32>(map_names::DNS_BY_SOCK6, MAX_NAMESPACES),
        l::<u32, SlotTable6>(map_names::SLOTS6, MAX_SERVICES),
        l::<i32, Own>(map_names::OWN, 0),
        l::<u64, u32>(map_names::NS_KNOWN, 4 * MAX_NAMESPACES),
        l::<NsId, NsInfo>(map_names::NS_INFO, MAX_NAMESPACES),
        l::<u32, Life>(map_names::LIFE, 1),
    ]
}

/// Each map's type and flags as this build's object defines them (empty
/// for an object built with `AYA_BUILD_SKIP`).
fn object_kind(name: &str) -> Option<(u32, u32)> {
    static KINDS: LazyLock<HashMap<String, (u32, u32)>> = LazyLock::new(|| {
        aya_obj::Object::parse(OBJECT)
            .map(|o| {
                o.maps
                    .iter()
                    .map(|(n, m)| (n.clone(), (m.map_type(), m.map_flags())))
                    .collect()
            })
            .unwrap_or_default()
    });
    KINDS.get(name).copied()
}

/// The ring of namespace events (`sock_create`).
fn event_layout() -> pins::Layout {
    pins::Layout {
        name: map_names::NS_EVENTS,
        key: 0,
        value: 0,
        max_entries: NS_EVENT_RING_BYTES,
        kind: object_kind(map_names::NS_EVENTS),
    }
}

/// The kernel logs' ring.
fn log_layout() -> pins::Layout {
    pins::Layout {
        name: logs::PIN,
        key: 0,
        value: 0,
        max_entries: logs::RING_BYTES,
        kind: object_kind(logs::MAP),
    }
}

/// Fails on a map pinned in `pin_dir` this build cannot use.
fn check_pinned_layouts(
    check: impl Fn(&[pins::Layout]) -> Result<(), pins::PinError>,
) -> Result<(), BpfError> {
    check(&layouts())?;
    check(&[event_layout()])?;
    check(&[log_layout()])?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Hook {
    SockAddr,
    SockOps,
    Egress,
    SockCreate,
}

/// The cgroup hooks: program, attach point, pinned link name, and whether
/// it serves only DNS capture (attached only while capture is on).
const HOOKS: [(&str, Hook, &str, bool); 11] = [
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
    (
        program_names::SOCK_CREATE,
        Hook::SockCreate,
        pins::LINK_SOCK_CREATE,
        false,
    ),
];

/// The programs and the claimed pin directory, until released.
pub(super) struct Loaded {
    ebpf: Ebpf,
    pins: Pins,
    cgroup: std::path::PathBuf,
    /// Whether DNS capture's programs are attached.
    dns: bool,
    /// Who serves, for the kernel's death watch.
    watch: Watch,
    /// What this daemon wrote in the config maps, to write again when it
    /// serves on after a successor failed.
    config: ConfigMaps,
    /// Duplicates of the rings' descriptors, to read them again then.
    rings: [OwnedFd; 2],
}

/// The maps saying where the proxy and the responder listen, and what this
/// daemon wrote in them.
struct ConfigMaps {
    config: Array<MapData, ProxyConfig>,
    cfg: ProxyConfig,
    config6: Array<MapData, Config6>,
    cfg6: Config6,
    dns: Array<MapData, DnsConfig>,
    dns_cfg: DnsConfig,
}

impl ConfigMaps {
    fn write(&mut self) -> Result<(), BpfError> {
        map_op(map_names::PROXY_CONFIG, self.config.set(0, self.cfg, 0))?;
        map_op(map_names::CONFIG6, self.config6.set(0, self.cfg6, 0))?;
        map_op(map_names::DNS_CONFIG, self.dns.set(0, self.dns_cfg, 0))
    }
}

/// What [`open`] returns: the loaded programs and every map handle.
pub(super) struct Opened {
    pub(super) loaded: Loaded,
    pub(super) maps: Maps,
    pub(super) outer: OuterMaps,
    pub(super) outcomes: RingBuf<MapData>,
    pub(super) ns_events: RingBuf<MapData>,
    pub(super) logs: Option<KernelLogs>,
    pub(super) previous_pid: Option<u32>,
}

/// Checks privileges, the kernel and the cgroup, claims the pin
/// directory, loads the programs and opens (or creates) the pinned maps,
/// then writes where the proxy and the responder listen.
pub(super) fn open(opts: DatapathOptions) -> Result<Opened, BpfError> {
    check_privileges()?;
    check_cgroup(&opts.cgroup)?;
    check_kernel()?;
    if OBJECT.is_empty() {
        return Err(BpfError::EmptyObject);
    }
    let handed = opts.lock.map(File::from);
    let pins = Pins::claim(&opts.pin_dir, handed)?;
    check_pinned_layouts(|l| pins.check_layouts(l))?;
    let taking_over = pins.has_links();
    // Loaded before the lock came, by a successor (see `preflight`).
    let mut ebpf = match opts.prepared {
        Some(prepared) => prepared.0,
        None => load_logging(&opts.pin_dir, opts.kernel_log_level)?,
    };
    pins.restrict()?;
    let logs = match KernelLogs::take(&mut ebpf) {
        Ok(logs) => Some(logs),
        Err(e) => {
            warn!(error = %e, "kernel logs will not be read");
            None
        }
    };
    let maps = Maps::take(&mut ebpf)?;
    let outer = OuterMaps::take(&mut ebpf)?;
    // `--datapath-only`: the listeners are another proxy's, whose life
    // this process does not stand for.
    let watch = Watch::load(&mut ebpf, !opts.any_listener)?;
    let rings = [
        ring_fd(&ebpf, map_names::OUTCOMES)?,
        ring_fd(&ebpf, map_names::NS_EVENTS)?,
    ];
    let outcomes = typed_map(&mut ebpf, map_names::OUTCOMES, RingBuf::try_from)?;
    let ns_events = typed_map(&mut ebpf, map_names::NS_EVENTS, RingBuf::try_from)?;
    let config: Array<MapData, ProxyConfig> =
        typed_map(&mut ebpf, map_names::PROXY_CONFIG, Array::try_from)?;
    let config6: Array<MapData, Config6> =
        typed_map(&mut ebpf, map_names::CONFIG6, Array::try_from)?;
    let dns_config: Array<MapData, DnsConfig> =
        typed_map(&mut ebpf, map_names::DNS_CONFIG, Array::try_from)?;

    let previous_pid = taking_over
        .then(|| config.get(&0, 0).ok().map(|c| c.daemon_pid))
        .flatten();
    // Enabled from the start: on a takeover the running programs must
    // keep redirecting; on a fresh start nothing is attached yet.
    let flags = PROXY_ENABLED
        | if opts.any_listener {
            PROXY_ANY_LISTENER
        } else {
            0
        };
    let cfg = ProxyConfig::new(opts.proxy, PROXY_MARK, flags, std::process::id());
    let cfg6 = Config6::new(opts.proxy6, opts.dns6.filter(|_| opts.dns.is_some()));
    // Likewise: sendmsg4 and connect4 send DNS to the responder only
    // while it listens, so this is safe before it does.
    let mut config = ConfigMaps {
        config,
        cfg,
        config6,
        cfg6,
        dns: dns_config,
        dns_cfg: DnsConfig::new(opts.dns),
    };
    config.write()?;
    Ok(Opened {
        loaded: Loaded {
            ebpf,
            pins,
            cgroup: opts.cgroup,
            dns: opts.dns.is_some(),
            watch,
            config,
            rings,
        },
        maps,
        outer,
        outcomes,
        ns_events,
        logs,
        previous_pid,
    })
}

/// A duplicate of ring buffer `name`'s descriptor.
fn ring_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, BpfError> {
    let missing = BpfError::Missing { kind: "map", name };
    let Some(Map::RingBuf(data)) = ebpf.map(name) else {
        return Err(missing);
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BpfError::Map {
            name,
            error: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })
}

/// What a successor checks before it asks a running daemon for the pin
/// directory (see `handover.rs`), so that a build that cannot run here
/// fails while the running daemon still serves: privileges, the cgroup,
/// the kernel, the pinned maps' layouts (types and flags too), and every
/// program through the verifier, loaded on the pinned maps (nothing is
/// written or attached; the programs are kept for [`open`], so that only
/// what needs the directory is left for the time the predecessor does not
/// accept). Returns a descriptor of a map pinned there, the proof for the
/// running daemon that this process can open them, and the programs.
pub(super) fn preflight(opts: &DatapathOptions) -> Result<(OwnedFd, Ebpf), BpfError> {
    check_privileges()?;
    check_cgroup(&opts.cgroup)?;
    check_kernel()?;
    if OBJECT.is_empty() {
        return Err(BpfError::EmptyObject);
    }
    check_pinned_layouts(|l| pins::check_layouts(&opts.pin_dir, l))?;
    let proof = pins::open_any_map(&opts.pin_dir)?;
    // Loaded on the pinned maps (reading nothing, writing nothing; a map
    // this build added and the directory lacks is made and pinned, as at
    // any take-over), so that once the predecessor stops accepting only
    // what needs the directory is left to do.
    pins::ensure_versioned(&opts.pin_dir)?;
    let ebpf = load_logging(&opts.pin_dir, opts.kernel_log_level)?;
    Ok((proof, ebpf))
}

/// [`load_programs`], again with kernel logging off if the verifier
/// refused them with it on.
fn load_logging(pin_dir: &Path, log_level: u8) -> Result<Ebpf, BpfError> {
    match load_programs(pin_dir, log_level) {
        Err(e @ BpfError::Program { .. }) if log_level > 0 => {
            warn!(
                "the verifier refused the programs with kernel logging on ({e}); loading them \
                 with it off"
            );
            load_programs(pin_dir, 0)
        }
        loaded => loaded,
    }
}

/// The object loaded with its maps pinned in `pin_dir` (or opened from
/// their pins) and every program through the verifier, logging at
/// `log_level`.
fn load_programs(pin_dir: &Path, log_level: u8) -> Result<Ebpf, BpfError> {
    let mut loader = EbpfLoader::new();
    for l in layouts().iter().chain([&event_layout()]) {
        loader.map_pin_path(l.name, pins::pin_path(pin_dir, l.name));
    }
    loader.map_pin_path(logs::MAP, pins::pin_path(pin_dir, logs::PIN));
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = loader.load(OBJECT)?;
    for (name, hook, _, _) in HOOKS {
        match hook {
            Hook::SockAddr => load_program::<CgroupSockAddr>(&mut ebpf, name)?,
            Hook::SockOps => load_program::<SockOps>(&mut ebpf, name)?,
            Hook::Egress => load_program::<CgroupSkb>(&mut ebpf, name)?,
            Hook::SockCreate => load_program::<CgroupSock>(&mut ebpf, name)?,
        }
    }
    Ok(ebpf)
}

impl Loaded {
    /// Attaches this daemon's programs, replacing those of a previous
    /// daemon (`previous_pid`, for the log) without a gap, and pins the
    /// links.
    pub(super) fn attach(&mut self, previous_pid: Option<u32>) -> Result<(), BpfError> {
        self.attach_hooks(previous_pid, false)
    }

    /// [`Self::attach`]; `best_effort`: a hook that cannot be attached
    /// (after start this daemon may have given up `CAP_NET_ADMIN`, which
    /// a `cgroup_skb` program needs to attach) is logged and left as it
    /// is pinned, and the others are attached all the same.
    fn attach_hooks(
        &mut self,
        previous_pid: Option<u32>,
        best_effort: bool,
    ) -> Result<(), BpfError> {
        let cgroup = File::open(&self.cgroup).map_err(|error| BpfError::CgroupIo {
            path: self.cgroup.clone(),
            error,
        })?;
        for old in self.pins.remove_other_versions() {
            info!(path = %old.display(), "removed the pinned datapath of another ABI version");
        }
        let mut attached = Vec::new();
        for (name, hook, pin, dns_only) in HOOKS {
            if dns_only && !self.dns {
                // Capture off: a previous daemon's DNS hooks go (unpinning
                // a link whose owner is gone detaches its program).
                self.pins.unpin_link(pin)?;
                continue;
            }
            match self.attach_one(&cgroup, name, hook, pin) {
                Ok(()) => attached.push(name),
                Err(e) if best_effort => warn!(
                    "{e}; the {name} program pinned now stays attached (this daemon's, or the \
                     failed successor's)"
                ),
                Err(e) => return Err(e),
            }
        }
        let attached = attached.join(", ");
        match previous_pid {
            Some(pid) => info!(
                cgroup = %self.cgroup.display(),
                "attached {attached}, replacing those of pid {pid}"
            ),
            None => info!(cgroup = %self.cgroup.display(), "attached {attached}"),
        }
        // This daemon serves now: a predecessor handed its listeners over.
        self.watch.serve(&mut self.ebpf)
    }

    /// Attaches program `name` as `hook` and pins its link as `pin`, over
    /// the link pinned there.
    fn attach_one(
        &mut self,
        cgroup: &File,
        name: &'static str,
        hook: Hook,
        pin: &'static str,
    ) -> Result<(), BpfError> {
        let attach_err = |name, error| BpfError::Attach {
            name,
            cgroup: self.cgroup.clone(),
            error,
        };
        let link_err = |name| move |error| BpfError::Link { name, error };
        // BPF links (Linux ≥ 5.7) always coexist with other programs on
        // the cgroup and reject BPF_F_ALLOW_MULTI; `Single` passes flags 0.
        let mode = CgroupAttachMode::Single;
        let ebpf = &mut self.ebpf;
        let link = match hook {
            Hook::SockAddr => {
                let prog: &mut CgroupSockAddr = program(ebpf, name)?;
                let id = prog.attach(cgroup, mode).map_err(|e| attach_err(name, e))?;
                FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
            }
            Hook::SockOps => {
                let prog: &mut SockOps = program(ebpf, name)?;
                let id = prog.attach(cgroup, mode).map_err(|e| attach_err(name, e))?;
                FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
            }
            Hook::Egress => {
                let prog: &mut CgroupSkb = program(ebpf, name)?;
                let id = prog
                    .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                    .map_err(|e| attach_err(name, e))?;
                FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
            }
            Hook::SockCreate => {
                let prog: &mut CgroupSock = program(ebpf, name)?;
                let id = prog.attach(cgroup, mode).map_err(|e| attach_err(name, e))?;
                FdLink::try_from(prog.take_link(id).map_err(|e| attach_err(name, e))?)
            }
        }
        .map_err(link_err(name))?;
        Ok(self.pins.pin_link(pin, link)?)
    }

    /// Serves on after a successor that had the pin directory failed (see
    /// `handover.rs`): this daemon's config maps written again, its
    /// programs attached again over whatever the successor attached
    /// (which re-registers it for the death watch), and readers of the
    /// rings again (outcomes, namespace events).
    pub(super) fn resume(
        &mut self,
        successor: u32,
    ) -> Result<(RingBuf<MapData>, RingBuf<MapData>), BpfError> {
        self.retake(successor)?;
        let ring = |fd: &OwnedFd, name: &'static str| {
            let dup = fd.try_clone().map_err(BpfError::Ring)?;
            MapData::from_fd(dup)
                .and_then(Map::from_map_data)
                .and_then(RingBuf::try_from)
                .map_err(|error| BpfError::Map { name, error })
        };
        Ok((
            ring(&self.rings[0], map_names::OUTCOMES)?,
            ring(&self.rings[1], map_names::NS_EVENTS)?,
        ))
    }

    /// The config maps written and the programs attached again (see
    /// [`Self::resume`]), over whatever a failed successor left.
    pub(super) fn retake(&mut self, successor: u32) -> Result<(), BpfError> {
        self.pins.recreate()?;
        self.config.write()?;
        self.attach_hooks(Some(successor), true)
    }

    /// A duplicate of the pin directory's lock, shared with a successor.
    pub(super) fn share_lock(&self) -> std::io::Result<OwnedFd> {
        self.pins.share_lock()
    }

    /// The ids of the maps pinned in the directory.
    pub(super) fn map_ids(&self) -> Vec<u32> {
        self.pins.map_ids()
    }

    /// A handover to this daemon is confirmed: its pid goes in the lock.
    pub(super) fn confirmed(&self) -> Result<(), BpfError> {
        Ok(self.pins.write_pid()?)
    }

    /// Gives up the lock and leaves the pins, which a successor owns now.
    pub(super) fn hand_over(self) {
        let Self { ebpf, pins, .. } = self;
        drop(pins);
        drop(ebpf);
    }

    /// Drops the programs and lets go of the pin directory; whether the
    /// pins were removed (nothing was ever attached).
    pub(super) fn release(self) -> bool {
        let Self { ebpf, pins, .. } = self;
        drop(ebpf);
        pins.release()
    }
}

/// Whether this process may load and attach the programs.
pub(crate) fn check_privileges() -> Result<(), BpfError> {
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

/// The program and map types the datapath is made of.
fn check_kernel() -> Result<(), BpfError> {
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
    Ok(())
}

fn check_cgroup(path: &Path) -> Result<(), BpfError> {
    match sys::fs_type(path) {
        Ok(sys::CGROUP2_SUPER_MAGIC) if path.is_dir() => Ok(()),
        Ok(sys::CGROUP_SUPER_MAGIC) => Err(BpfError::CgroupV1 {
            path: path.into(),
            v2_root: sys::cgroup2_root().map_or_else(
                |_| "nowhere: no cgroup2 mount found".into(),
                |p| p.display().to_string(),
            ),
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
impl Loadable for CgroupSock {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_is_checked_for_its_type_and_flags() {
        const HASH: u32 = 1;
        const RINGBUF: u32 = 27;
        if OBJECT.is_empty() {
            // Built with AYA_BUILD_SKIP: nothing to compare against.
            return;
        }
        for l in layouts().iter().chain([&event_layout(), &log_layout()]) {
            assert!(
                l.kind.is_some(),
                "{}: not in the object, its type is not checked",
                l.name
            );
        }
        // Spot checks against the kernel's numbers.
        let kind = |name| layouts().into_iter().find(|l| l.name == name).unwrap().kind;
        assert_eq!(kind(map_names::SERVICES).map(|k| k.0), Some(HASH));
        assert_eq!(kind(map_names::OUTCOMES).map(|k| k.0), Some(RINGBUF));
    }
}
