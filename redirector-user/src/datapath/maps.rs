//! The maps the daemon writes: services (both families), their display
//! data, endpoint health and slot tables.

use std::collections::HashSet;

use std::os::fd::AsRawFd;

use aya::{
    Ebpf,
    maps::{HashMap, HashOfMaps, MapData, MapError, SkStorage},
};
use redirector_common::{
    EndpointHealth, EndpointKey, NsId, NsInfo, OrigDst, Own, SVC_FAIL_OPEN, SVC_KERNEL_PATH,
    ServiceInfo, ServiceKey, ServiceKey6, ServiceValue, ServiceValue6, SlotTable, SlotTable6,
    SockAddr6, SockKey, map_names,
};

use super::{BpfError, encode::ServiceMapEntry, namespaces::NsMaps};

type Outer<K, V> = HashOfMaps<MapData, NsId, HashMap<MapData, K, V>>;

pub(super) struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    services6: HashMap<MapData, ServiceKey6, ServiceValue6>,
    info: HashMap<MapData, u32, ServiceInfo>,
    endpoints: HashMap<MapData, EndpointKey, EndpointHealth>,
    slots: HashMap<MapData, u32, SlotTable>,
    slots6: HashMap<MapData, u32, SlotTable6>,
    /// How many endpoint entries each service has in the map now.
    endpoint_counts: std::collections::HashMap<u32, u32>,
    own: SkStorage<MapData, Own>,
    known: HashMap<MapData, u64, u32>,
    ns_info: HashMap<MapData, NsId, NsInfo>,
}

impl Maps {
    /// Takes the daemon-written maps out of `ebpf`, learning which
    /// endpoint entries a previous daemon published (so stale ones get
    /// removed).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        let endpoints: HashMap<MapData, EndpointKey, EndpointHealth> =
            typed_map(ebpf, map_names::ENDPOINTS, HashMap::try_from)?;
        let mut endpoint_counts = std::collections::HashMap::new();
        for key in endpoints.keys().filter_map(Result::ok) {
            let n = endpoint_counts.entry(key.service_id).or_insert(0);
            *n = (*n).max(key.index + 1);
        }
        Ok(Self {
            services: typed_map(ebpf, map_names::SERVICES, HashMap::try_from)?,
            services6: typed_map(ebpf, map_names::SERVICES6, HashMap::try_from)?,
            info: typed_map(ebpf, map_names::SERVICE_INFO, HashMap::try_from)?,
            endpoints,
            slots: typed_map(ebpf, map_names::SLOTS, HashMap::try_from)?,
            slots6: typed_map(ebpf, map_names::SLOTS6, HashMap::try_from)?,
            endpoint_counts,
            own: typed_map(ebpf, map_names::OWN, SkStorage::try_from)?,
            known: typed_map(ebpf, map_names::NS_KNOWN, HashMap::try_from)?,
            ns_info: typed_map(ebpf, map_names::NS_INFO, HashMap::try_from)?,
        })
    }

    /// Takes `ns`'s display entry out.
    pub(super) fn forget_ns_info(&mut self, ns: NsId) -> Result<(), BpfError> {
        ignore_missing(map_names::NS_INFO, self.ns_info.remove(&ns))
    }

    /// Marks `socket` as the daemon's, serving namespace `ns`.
    pub(super) fn own(&mut self, socket: &impl AsRawFd, own: Own) -> Result<(), BpfError> {
        map_op(map_names::OWN, self.own.insert(socket, own, 0))
    }

    /// What the kernel knows of the namespace with netns cookie `cookie`;
    /// `None` forgets it.
    pub(super) fn set_known(&mut self, cookie: u64, state: Option<u32>) -> Result<(), BpfError> {
        match state {
            Some(state) => map_op(map_names::NS_KNOWN, self.known.insert(cookie, state, 0)),
            None => ignore_missing(map_names::NS_KNOWN, self.known.remove(&cookie)),
        }
    }

    /// `redirector pods`' entry for `ns`.
    pub(super) fn set_ns_info(&mut self, ns: NsId, info: &NsInfo) -> Result<(), BpfError> {
        map_op(map_names::NS_INFO, self.ns_info.insert(ns, info, 0))
    }

    /// The namespaces in the display map.
    pub(super) fn ns_info_keys(&self) -> Vec<NsId> {
        self.ns_info.keys().filter_map(Result::ok).collect()
    }

    pub(super) fn set_services(&mut self, entries: &[ServiceMapEntry]) -> Result<(), BpfError> {
        let wanted: HashSet<ServiceKey> = entries.iter().map(|e| e.key).collect();
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for e in entries {
            map_op(
                map_names::SERVICE_INFO,
                self.info.insert(e.value.service_id, e.info, 0),
            )?;
            map_op(map_names::SERVICES, self.services.insert(e.key, e.value, 0))?;
        }
        for k in stale {
            map_op(map_names::SERVICES, self.services.remove(&k))?;
        }
        // The IPv6 VIPs: their entry names the IPv4 VIP the proxy routes
        // by, so each is written after its IPv4 one and removed with it.
        let wanted6: HashSet<ServiceKey6> = entries.iter().map(|e| e.key6).collect();
        let stale6: Vec<ServiceKey6> = self
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
                self.services6.insert(e.key6, value, 0),
            )?;
        }
        for k in stale6 {
            map_op(map_names::SERVICES6, self.services6.remove(&k))?;
        }
        let live_ids: HashSet<u32> = entries.iter().map(|e| e.value.service_id).collect();
        let stale_ids: Vec<u32> = self
            .info
            .keys()
            .filter_map(Result::ok)
            .chain(self.slots.keys().filter_map(Result::ok))
            .chain(self.slots6.keys().filter_map(Result::ok))
            .chain(self.endpoint_counts.keys().copied())
            .filter(|id| !live_ids.contains(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for id in stale_ids {
            ignore_missing(map_names::SERVICE_INFO, self.info.remove(&id))?;
            ignore_missing(map_names::SLOTS, self.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, self.slots6.remove(&id))?;
            self.set_endpoints(id, &[])?;
        }
        let unslotted: Vec<u32> = entries
            .iter()
            .filter(|e| e.value.flags & (SVC_FAIL_OPEN | SVC_KERNEL_PATH) == 0)
            .map(|e| e.value.service_id)
            .collect();
        for id in unslotted {
            ignore_missing(map_names::SLOTS, self.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, self.slots6.remove(&id))?;
        }
        Ok(())
    }

    pub(super) fn set_endpoints(
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

    pub(super) fn set_slots(&mut self, service_id: u32, table: &SlotTable) -> Result<(), BpfError> {
        map_op(map_names::SLOTS, self.slots.insert(service_id, table, 0))
    }

    pub(super) fn set_slots6(
        &mut self,
        service_id: u32,
        table: &SlotTable6,
    ) -> Result<(), BpfError> {
        map_op(map_names::SLOTS6, self.slots6.insert(service_id, table, 0))
    }
}

/// Takes the map `name` out of `ebpf` as the type `convert` makes.
pub(super) fn typed_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, BpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    convert(map).map_err(|error| BpfError::Map { name, error })
}

/// The outer maps (hash of maps, netns id → that namespace's inner map),
/// apart from [`Maps`] under their own lock: every update of a hash of
/// maps returns only after an RCU grace period (the kernel's
/// `maybe_wait_bpf_programs`, about 10 ms here against microseconds for a
/// plain hash), which must not hold up the health publisher's writes.
pub(super) struct OuterMaps {
    orig_by_sock: Outer<SockKey, OrigDst>,
    orig_by_sock6: Outer<SockAddr6, OrigDst>,
    dns_by_sock: Outer<SockKey, OrigDst>,
    dns_by_sock6: Outer<SockAddr6, SockAddr6>,
}

impl OuterMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            orig_by_sock: typed_map(ebpf, map_names::ORIG_BY_SOCK, HashOfMaps::try_from)?,
            orig_by_sock6: typed_map(ebpf, map_names::ORIG_BY_SOCK6, HashOfMaps::try_from)?,
            dns_by_sock: typed_map(ebpf, map_names::DNS_BY_SOCK, HashOfMaps::try_from)?,
            dns_by_sock6: typed_map(ebpf, map_names::DNS_BY_SOCK6, HashOfMaps::try_from)?,
        })
    }

    /// Puts `maps` in the outer maps under `ns`: from now on the kernel
    /// records what is sent to the daemon's sockets of `ns` there. The
    /// four updates run at once, so their grace periods overlap.
    pub(super) fn serve(&mut self, ns: NsId, maps: &NsMaps) -> Result<(), BpfError> {
        let Self {
            orig_by_sock,
            orig_by_sock6,
            dns_by_sock,
            dns_by_sock6,
        } = self;
        at_once([
            Box::new(|| {
                map_op(
                    map_names::ORIG_BY_SOCK,
                    orig_by_sock.insert(ns, &maps.orig, 0),
                )
            }),
            Box::new(|| {
                map_op(
                    map_names::ORIG_BY_SOCK6,
                    orig_by_sock6.insert(ns, &maps.orig6, 0),
                )
            }),
            Box::new(|| map_op(map_names::DNS_BY_SOCK, dns_by_sock.insert(ns, &maps.dns, 0))),
            Box::new(|| {
                map_op(
                    map_names::DNS_BY_SOCK6,
                    dns_by_sock6.insert(ns, &maps.dns6, 0),
                )
            }),
        ])
    }

    /// Takes `ns`'s maps out (the kernel frees them once nothing uses
    /// them), the four removals at once.
    pub(super) fn forget(&mut self, ns: NsId) -> Result<(), BpfError> {
        let Self {
            orig_by_sock,
            orig_by_sock6,
            dns_by_sock,
            dns_by_sock6,
        } = self;
        at_once([
            Box::new(|| ignore_missing(map_names::ORIG_BY_SOCK, orig_by_sock.remove(&ns))),
            Box::new(|| ignore_missing(map_names::ORIG_BY_SOCK6, orig_by_sock6.remove(&ns))),
            Box::new(|| ignore_missing(map_names::DNS_BY_SOCK, dns_by_sock.remove(&ns))),
            Box::new(|| ignore_missing(map_names::DNS_BY_SOCK6, dns_by_sock6.remove(&ns))),
        ])
    }

    /// The namespaces in the outer maps.
    pub(super) fn namespaces(&self) -> Vec<NsId> {
        self.orig_by_sock.keys().filter_map(Result::ok).collect()
    }
}

/// One update of an outer map.
type Job<'a> = Box<dyn FnOnce() -> Result<(), BpfError> + Send + 'a>;

/// Runs the first job here and the others each on a thread of its own,
/// all at once; the first error wins. A thread the system refuses is an
/// error, not a panic.
fn at_once<const N: usize>(jobs: [Job<'_>; N]) -> Result<(), BpfError> {
    std::thread::scope(|scope| {
        let mut jobs = jobs.into_iter();
        let here = jobs.next();
        let threads: Vec<_> = jobs
            .map(|job| std::thread::Builder::new().spawn_scoped(scope, job))
            .collect();
        let mut result = here.map_or(Ok(()), |job| job());
        for thread in threads {
            let r = match thread {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(io_error) => Err(BpfError::Map {
                    name: "outer maps",
                    error: MapError::SyscallError(aya::sys::SyscallError {
                        call: "clone",
                        io_error,
                    }),
                }),
            };
            result = result.and(r);
        }
        result
    })
}

pub(super) fn map_op(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
    r.map_err(|error| BpfError::Map { name, error })
}

/// A removal of a key that is not there is not a problem.
pub(super) fn ignore_missing(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => map_op(name, r),
    }
}
