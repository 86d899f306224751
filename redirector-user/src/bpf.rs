//! The kernel datapath: load the programs, own their maps, attach them to a
//! cgroup, keep the maps in sync with the config and with endpoint health.
//!
//! Order matters for a gap-free start: programs and maps are loaded, the
//! caller binds its proxy listener and fills the maps, and only then are the
//! programs attached, so no connect is ever redirected to a port nobody
//! listens on. Links are not pinned: if the daemon dies, the kernel detaches
//! the programs with it and apps connect to the raw VIP (unroutable, so they
//! fail fast) instead of into a dead proxy port. The maps that describe
//! services and endpoint health are pinned, so `redirector endpoints` can
//! read them from another process.

mod pins;

use std::{
    collections::HashSet,
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramType, SockOps},
};
use redirector_common::{
    EndpointHealth, EndpointKey, OrigDst, PROXY_ENABLED, ProxyConfig, ServiceInfo, ServiceKey,
    ServiceValue, SockKey, map_names, program_names,
};
use tracing::{debug, info};

pub use pins::{PinError, PinnedState};

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
        "this kernel does not support {what} programs (needs Linux ≥ 4.17 built with \
         CONFIG_CGROUP_BPF); cannot redirect connects"
    )]
    ProgramTypeUnsupported { what: &'static str },
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
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error(transparent)]
    Pins(#[from] pins::PinError),
}

pub struct DatapathOptions {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub proxy: SocketAddrV4,
}

/// One service's entry in the kernel: the key apps dial, and display data.
pub struct ServiceMapEntry {
    pub key: ServiceKey,
    pub value: ServiceValue,
    pub info: ServiceInfo,
}

pub struct Datapath {
    /// `None` once shut down: dropping the programs detaches them.
    ebpf: Mutex<Option<Ebpf>>,
    maps: Mutex<Maps>,
    orig: Mutex<HashMap<MapData, SockKey, OrigDst>>,
    cgroup: PathBuf,
    proxy: SocketAddrV4,
    pins: Mutex<Option<pins::Pins>>,
}

struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    info: HashMap<MapData, u32, ServiceInfo>,
    endpoints: HashMap<MapData, EndpointKey, EndpointHealth>,
    config: Array<MapData, ProxyConfig>,
    /// How many endpoint entries each service has in the map now.
    endpoint_counts: std::collections::HashMap<u32, u32>,
}

impl Datapath {
    /// Checks privileges and the cgroup, loads programs and maps, pins the
    /// maps. Nothing is attached yet.
    pub fn load(opts: DatapathOptions) -> Result<Self, BpfError> {
        check_privileges()?;
        check_cgroup(&opts.cgroup)?;
        for (ty, what) in [
            (ProgramType::CgroupSockAddr, "cgroup/connect4"),
            (ProgramType::SockOps, "sock_ops"),
        ] {
            if !aya::sys::is_program_supported(ty).unwrap_or(false) {
                return Err(BpfError::ProgramTypeUnsupported { what });
            }
        }
        let pins = pins::Pins::claim(&opts.pin_dir)?;
        if OBJECT.is_empty() {
            return Err(BpfError::EmptyObject);
        }
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        load_program::<CgroupSockAddr>(&mut ebpf, program_names::CONNECT4)?;
        load_program::<SockOps>(&mut ebpf, program_names::SOCKOPS)?;

        // Pinned: what `redirector endpoints` reads from another process.
        let pinned = Some(&pins);
        let services = typed_map(&mut ebpf, map_names::SERVICES, pinned, HashMap::try_from)?;
        let info = typed_map(
            &mut ebpf,
            map_names::SERVICE_INFO,
            pinned,
            HashMap::try_from,
        )?;
        let endpoints = typed_map(&mut ebpf, map_names::ENDPOINTS, pinned, HashMap::try_from)?;
        let mut config: Array<MapData, ProxyConfig> =
            typed_map(&mut ebpf, map_names::PROXY_CONFIG, pinned, Array::try_from)?;
        let orig = typed_map(&mut ebpf, map_names::ORIG_BY_SOCK, None, HashMap::try_from)?;

        let cfg = proxy_config(opts.proxy, 0);
        config.set(0, cfg, 0).map_err(|error| BpfError::Map {
            name: map_names::PROXY_CONFIG,
            error,
        })?;
        Ok(Self {
            ebpf: Mutex::new(Some(ebpf)),
            maps: Mutex::new(Maps {
                services,
                info,
                endpoints,
                config,
                endpoint_counts: Default::default(),
            }),
            orig: Mutex::new(orig),
            cgroup: opts.cgroup,
            proxy: opts.proxy,
            pins: Mutex::new(Some(pins)),
        })
    }

    /// Makes the kernel's service table equal to `entries`.
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
            map_op(map_names::SERVICES, maps.services.insert(e.key, e.value, 0))?;
            map_op(
                map_names::SERVICE_INFO,
                maps.info.insert(e.value.service_id, e.info, 0),
            )?;
        }
        for k in stale {
            map_op(map_names::SERVICES, maps.services.remove(&k))?;
        }
        let live_ids: HashSet<u32> = entries.iter().map(|e| e.value.service_id).collect();
        let stale_ids: Vec<u32> = maps
            .info
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !live_ids.contains(id))
            .collect();
        for id in stale_ids {
            map_op(map_names::SERVICE_INFO, maps.info.remove(&id))?;
            maps.set_endpoints(id, &[])?;
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

    /// Attaches the programs and turns redirection on.
    pub fn attach(&self) -> Result<(), BpfError> {
        let cgroup = File::open(&self.cgroup).map_err(|error| BpfError::CgroupIo {
            path: self.cgroup.clone(),
            error,
        })?;
        let mut guard = self.ebpf.lock().expect("ebpf lock");
        let Some(ebpf) = guard.as_mut() else {
            return Ok(());
        };
        let attach_err = |name, error| BpfError::Attach {
            name,
            cgroup: self.cgroup.clone(),
            error,
        };
        // BPF links (Linux ≥ 5.7) always coexist with other programs on the
        // cgroup and reject BPF_F_ALLOW_MULTI; `Single` passes flags 0.
        let connect4: &mut CgroupSockAddr = program(ebpf, program_names::CONNECT4)?;
        connect4
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| attach_err(program_names::CONNECT4, e))?;
        let sockops: &mut SockOps = program(ebpf, program_names::SOCKOPS)?;
        sockops
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| attach_err(program_names::SOCKOPS, e))?;
        let mut maps = self.maps.lock().expect("maps lock");
        let cfg = proxy_config(self.proxy, PROXY_ENABLED);
        map_op(map_names::PROXY_CONFIG, maps.config.set(0, cfg, 0))?;
        info!(cgroup = %self.cgroup.display(), "attached connect4 and sock_ops");
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
        let mut map = self.orig.lock().expect("orig lock");
        let orig = map.get(&key, 0).ok()?;
        if let Err(e) = map.remove(&key) {
            debug!(%peer, error = %e, "removing original-destination entry");
        }
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(orig.vip_be)),
            u16::from_be(orig.port_be),
        ))
    }

    /// Turns redirection off, detaches the programs and removes the pins.
    /// Idempotent.
    pub fn shutdown(&self) {
        if let Ok(mut maps) = self.maps.lock() {
            let _ = maps.config.set(0, proxy_config(self.proxy, 0), 0);
        }
        // Dropping the programs' links detaches them.
        self.ebpf.lock().expect("ebpf lock").take();
        if let Some(pins) = self.pins.lock().expect("pins lock").take() {
            pins.remove();
            info!("detached and unpinned");
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shutdown();
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
        let before = self
            .endpoint_counts
            .insert(service_id, entries.len() as u32);
        for index in entries.len() as u32..before.unwrap_or(0) {
            let key = EndpointKey { service_id, index };
            map_op(map_names::ENDPOINTS, self.endpoints.remove(&key))?;
        }
        Ok(())
    }
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

/// The two program kinds share `load()` but no trait for it.
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

fn typed_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin: Option<&pins::Pins>,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, BpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    if let Some(pins) = pin {
        pins.pin(name, &map)?;
    }
    convert(map).map_err(|error| BpfError::Map { name, error })
}

fn map_op(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
    r.map_err(|error| BpfError::Map { name, error })
}
