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
    /// What a reload rewrites: services, their display data, slot tables
    /// and endpoint entries.
    services: ServiceMaps,
    own: SkStorage<MapData, Own>,
    known: HashMap<MapData, u64, u32>,
    ns_info: HashMap<MapData, NsId, NsInfo>,
}

/// The maps that describe the services, apart from the namespaces' ones so
/// a test can make them alone (with a capacity small enough to overflow).
pub(super) struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    services6: HashMap<MapData, ServiceKey6, ServiceValue6>,
    info: HashMap<MapData, u32, ServiceInfo>,
    endpoints: HashMap<MapData, EndpointKey, EndpointHealth>,
    slots: HashMap<MapData, u32, SlotTable>,
    slots6: HashMap<MapData, u32, SlotTable6>,
    /// How many endpoint entries each service has in the map now.
    endpoint_counts: std::collections::HashMap<u32, u32>,
}

impl Maps {
    /// Takes the daemon-written maps out of `ebpf`, learning which
    /// endpoint entries a previous daemon published (so stale ones get
    /// removed).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            services: ServiceMaps::new(
                typed_map(ebpf, map_names::SERVICES, HashMap::try_from)?,
                typed_map(ebpf, map_names::SERVICES6, HashMap::try_from)?,
                typed_map(ebpf, map_names::SERVICE_INFO, HashMap::try_from)?,
                typed_map(ebpf, map_names::ENDPOINTS, HashMap::try_from)?,
                typed_map(ebpf, map_names::SLOTS, HashMap::try_from)?,
                typed_map(ebpf, map_names::SLOTS6, HashMap::try_from)?,
            ),
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

    /// Makes the kernel's service table equal to `entries`, all or
    /// nothing (see [`ServiceMaps::set_services`]).
    pub(super) fn set_services(&mut self, entries: &[ServiceMapEntry]) -> Result<(), BpfError> {
        self.services.set_services(entries)
    }

    pub(super) fn set_endpoints(
        &mut self,
        service_id: u32,
        entries: &[EndpointHealth],
    ) -> Result<(), BpfError> {
        self.services.set_endpoints(service_id, entries)
    }

    pub(super) fn set_slots(&mut self, service_id: u32, table: &SlotTable) -> Result<(), BpfError> {
        self.services.set_slots(service_id, table)
    }

    pub(super) fn set_slots6(
        &mut self,
        service_id: u32,
        table: &SlotTable6,
    ) -> Result<(), BpfError> {
        self.services.set_slots6(service_id, table)
    }
}

/// What [`ServiceMaps::set_services`] will take out, with what was there:
/// enough to put the maps back as they were.
struct Before {
    services: Vec<(ServiceKey, ServiceValue)>,
    services6: Vec<(ServiceKey6, ServiceValue6)>,
    info: Vec<(u32, ServiceInfo)>,
    slots: Vec<(u32, SlotTable)>,
    slots6: Vec<(u32, SlotTable6)>,
    endpoints: Vec<(EndpointKey, EndpointHealth)>,
    endpoint_counts: std::collections::HashMap<u32, u32>,
}

impl ServiceMaps {
    /// The maps, learning which endpoint entries a previous daemon
    /// published (so stale ones get removed).
    pub(super) fn new(
        services: HashMap<MapData, ServiceKey, ServiceValue>,
        services6: HashMap<MapData, ServiceKey6, ServiceValue6>,
        info: HashMap<MapData, u32, ServiceInfo>,
        endpoints: HashMap<MapData, EndpointKey, EndpointHealth>,
        slots: HashMap<MapData, u32, SlotTable>,
        slots6: HashMap<MapData, u32, SlotTable6>,
    ) -> Self {
        let mut endpoint_counts = std::collections::HashMap::new();
        for key in endpoints.keys().filter_map(Result::ok) {
            let n = endpoint_counts.entry(key.service_id).or_insert(0);
            *n = (*n).max(key.index + 1);
        }
        Self {
            services,
            services6,
            info,
            endpoints,
            slots,
            slots6,
            endpoint_counts,
        }
    }

    /// Makes the kernel's service table equal to `entries`, all or
    /// nothing: if any update fails (a full map, a kernel out of memory),
    /// every map this touches is put back as it was and the error returned,
    /// so the kernel never keeps half of a reload (stale VIPs next to new
    /// ones) while the daemon runs the previous config. Stale entries go
    /// first, so a config that fits the maps fits while they are replaced.
    pub(super) fn set_services(&mut self, entries: &[ServiceMapEntry]) -> Result<(), BpfError> {
        let before = self.before(entries)?;
        let Err(error) = self.replace_services(entries, &before) else {
            return Ok(());
        };
        if let Err(undo) = self.restore(before) {
            tracing::error!(
                "putting the service maps back after a failed update failed too ({undo}); the \
                 kernel may hold part of the new services until the next update"
            );
        }
        Err(error)
    }

    /// What [`ServiceMaps::replace_services`] may change, as it is now.
    fn before(&self, entries: &[ServiceMapEntry]) -> Result<Before, BpfError> {
        let live_ids: HashSet<u32> = entries.iter().map(|e| e.value.service_id).collect();
        let unslotted: HashSet<u32> = entries
            .iter()
            .filter(|e| e.value.flags & (SVC_FAIL_OPEN | SVC_KERNEL_PATH) == 0)
            .map(|e| e.value.service_id)
            .collect();
        let slot_ids = |id: &u32| !live_ids.contains(id) || unslotted.contains(id);
        let mut endpoints = Vec::new();
        for (&service_id, &count) in &self.endpoint_counts {
            if live_ids.contains(&service_id) {
                continue;
            }
            for index in 0..count {
                let key = EndpointKey { service_id, index };
                if let Some(value) = get(map_names::ENDPOINTS, self.endpoints.get(&key, 0))? {
                    endpoints.push((key, value));
                }
            }
        }
        Ok(Before {
            services: entries_of(map_names::SERVICES, self.services.iter())?,
            services6: entries_of(map_names::SERVICES6, self.services6.iter())?,
            info: entries_of(map_names::SERVICE_INFO, self.info.iter())?,
            slots: some_of(map_names::SLOTS, &self.slots, slot_ids)?,
            slots6: some_of(map_names::SLOTS6, &self.slots6, slot_ids)?,
            endpoints,
            endpoint_counts: self.endpoint_counts.clone(),
        })
    }

    fn replace_services(
        &mut self,
        entries: &[ServiceMapEntry],
        before: &Before,
    ) -> Result<(), BpfError> {
        // The IPv6 VIPs: their entry names the IPv4 VIP the proxy routes
        // by, so each is written after its IPv4 one and removed with it.
        let wanted: HashSet<ServiceKey> = entries.iter().map(|e| e.key).collect();
        let wanted6: HashSet<ServiceKey6> = entries.iter().map(|e| e.key6).collect();
        for (k, _) in before.services.iter().filter(|(k, _)| !wanted.contains(k)) {
            ignore_missing(map_names::SERVICES, self.services.remove(k))?;
        }
        for (k, _) in before
            .services6
            .iter()
            .filter(|(k, _)| !wanted6.contains(k))
        {
            ignore_missing(map_names::SERVICES6, self.services6.remove(k))?;
        }
        for e in entries {
            map_op(
                map_names::SERVICE_INFO,
                self.info.insert(e.value.service_id, e.info, 0),
            )?;
            map_op(map_names::SERVICES, self.services.insert(e.key, e.value, 0))?;
        }
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
        let live_ids: HashSet<u32> = entries.iter().map(|e| e.value.service_id).collect();
        let stale_ids: HashSet<u32> = before
            .info
            .iter()
            .map(|(id, _)| *id)
            .chain(before.slots.iter().map(|(id, _)| *id))
            .chain(before.slots6.iter().map(|(id, _)| *id))
            .chain(before.endpoint_counts.keys().copied())
            .filter(|id| !live_ids.contains(id))
            .collect();
        for id in stale_ids {
            ignore_missing(map_names::SERVICE_INFO, self.info.remove(&id))?;
            ignore_missing(map_names::SLOTS, self.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, self.slots6.remove(&id))?;
            self.set_endpoints(id, &[])?;
        }
        let unslotted = entries
            .iter()
            .filter(|e| e.value.flags & (SVC_FAIL_OPEN | SVC_KERNEL_PATH) == 0)
            .map(|e| e.value.service_id);
        for id in unslotted {
            ignore_missing(map_names::SLOTS, self.slots.remove(&id))?;
            ignore_missing(map_names::SLOTS6, self.slots6.remove(&id))?;
        }
        Ok(())
    }

    /// Puts back what [`ServiceMaps::before`] recorded, going on past
    /// errors (each map as far as it can); the first error is returned.
    /// Entries that were not there are removed first, so what fitted
    /// before fits again.
    fn restore(&mut self, before: Before) -> Result<(), BpfError> {
        let mut first = Ok(());
        let mut keep = |r: Result<(), BpfError>| {
            if first.is_ok() {
                first = r;
            }
        };
        let had: HashSet<ServiceKey> = before.services.iter().map(|(k, _)| *k).collect();
        for k in keys_of(&self.services).filter(|k| !had.contains(k)) {
            keep(ignore_missing(
                map_names::SERVICES,
                self.services.remove(&k),
            ));
        }
        let had6: HashSet<ServiceKey6> = before.services6.iter().map(|(k, _)| *k).collect();
        for k in keys_of(&self.services6).filter(|k| !had6.contains(k)) {
            keep(ignore_missing(
                map_names::SERVICES6,
                self.services6.remove(&k),
            ));
        }
        let had_info: HashSet<u32> = before.info.iter().map(|(k, _)| *k).collect();
        for k in keys_of(&self.info).filter(|k| !had_info.contains(k)) {
            keep(ignore_missing(
                map_names::SERVICE_INFO,
                self.info.remove(&k),
            ));
        }
        for (k, v) in &before.info {
            keep(map_op(map_names::SERVICE_INFO, self.info.insert(k, v, 0)));
        }
        for (k, v) in &before.services {
            keep(map_op(map_names::SERVICES, self.services.insert(k, v, 0)));
        }
        for (k, v) in &before.services6 {
            keep(map_op(map_names::SERVICES6, self.services6.insert(k, v, 0)));
        }
        for (k, v) in &before.slots {
            keep(map_op(map_names::SLOTS, self.slots.insert(k, v, 0)));
        }
        for (k, v) in &before.slots6 {
            keep(map_op(map_names::SLOTS6, self.slots6.insert(k, v, 0)));
        }
        for (k, v) in &before.endpoints {
            keep(map_op(map_names::ENDPOINTS, self.endpoints.insert(k, v, 0)));
        }
        self.endpoint_counts = before.endpoint_counts;
        first
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

/// Every entry of a map, or the first error reading it.
fn entries_of<K, V>(
    name: &'static str,
    iter: impl Iterator<Item = Result<(K, V), MapError>>,
) -> Result<Vec<(K, V)>, BpfError> {
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|error| BpfError::Map { name, error })
}

/// The entries of a map whose keys `wanted` picks, read one by one (slot
/// tables are large, and a reload takes out few of them).
fn some_of<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
    wanted: impl Fn(&K) -> bool,
) -> Result<Vec<(K, V)>, BpfError> {
    let mut out = Vec::new();
    for key in keys_of(map).filter(|k| wanted(k)) {
        if let Some(value) = get(name, map.get(&key, 0))? {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// The keys of a map that can be read (a key deleted while listing is
/// skipped).
fn keys_of<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
) -> impl Iterator<Item = K> + use<K, V> {
    map.keys()
        .filter_map(Result::ok)
        .collect::<Vec<_>>()
        .into_iter()
}

/// A lookup that finds nothing is `None`, not an error.
fn get<V>(name: &'static str, r: Result<V, MapError>) -> Result<Option<V>, BpfError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(error) => Err(BpfError::Map { name, error }),
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

#[cfg(test)]
mod tests {
    //! On real BPF maps made for the test (root, as every test of the
    //! datapath), small enough to overflow: the kernel refuses an update
    //! (`E2BIG`) part of the way through, as it would with memory short.

    use std::{net::SocketAddrV4, time::Duration};

    use redirector_common::{
        HOST_LEN, LAST_ERROR_LEN, LOCALITY_LEN, SlotTable, SlotTable6, write_str,
    };

    use super::*;
    use crate::config::{NodeSettings, load_str};
    use crate::datapath::encode::service_entries;

    /// Service maps with room for `services` IPv4 and `services6` IPv6
    /// VIPs (and plenty of everything else).
    fn maps(services: u32, services6: u32) -> ServiceMaps {
        ServiceMaps::new(
            HashMap::create(services, 0).expect("creating a BPF map (root?)"),
            HashMap::create(services6, 0).unwrap(),
            HashMap::create(64, 0).unwrap(),
            HashMap::create(64, 0).unwrap(),
            HashMap::create(64, 0).unwrap(),
            HashMap::create(64, 0).unwrap(),
        )
    }

    /// The map entries of one TCP service per host, at VIP 240.240.0.N
    /// for the host's N.
    fn entries(hosts: &[(&str, u8)]) -> Vec<ServiceMapEntry> {
        let mut text = String::new();
        for (host, n) in hosts {
            text.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}}}\n\
                 spec:\n  hosts: [{host}]\n  addresses: [240.240.0.{n}]\n  resolution: STATIC\n  \
                 ports: [{{number: 80, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 10.0.0.{n}}}]\n"
            ));
        }
        let config = load_str("t.yaml", &text, &NodeSettings::default()).expect("valid");
        service_entries(&config.services)
    }

    fn endpoint(name: &str) -> EndpointHealth {
        let mut e = EndpointHealth {
            addr_be: 1,
            port_be: 80u16.to_be(),
            priority: 0,
            status: 0,
            ejections: 3,
            multiplier: 1,
            consecutive_5xx: 0,
            weight: 1,
            dns_failures: 0,
            _pad: 0,
            dns_answer_unix_ms: 0,
            ejected_until_unix_ms: 0,
            last_error_unix_ms: 0,
            locality: [0; LOCALITY_LEN],
            hostname: [0; HOST_LEN],
            last_error: [0; LAST_ERROR_LEN],
        };
        write_str(&mut e.hostname, name);
        e
    }

    /// Everything in the maps, sorted, as text.
    fn dump(m: &ServiceMaps) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, v) in m.services.iter().map(Result::unwrap) {
            out.push(format!("svc {k:?} {v:?}"));
        }
        for (k, v) in m.services6.iter().map(Result::unwrap) {
            out.push(format!("svc6 {k:?} {v:?}"));
        }
        for (k, v) in m.info.iter().map(Result::unwrap) {
            out.push(format!("info {k} {} {} {:?}", v.vip_be, v.port_be, v.host));
        }
        for (k, v) in m.slots.iter().map(Result::unwrap) {
            out.push(format!("slots {k} {v:?}"));
        }
        for (k, v) in m.slots6.iter().map(Result::unwrap) {
            out.push(format!("slots6 {k} {v:?}"));
        }
        for (k, v) in m.endpoints.iter().map(Result::unwrap) {
            out.push(format!("ep {k:?} {} {:?}", v.ejections, v.hostname));
        }
        let mut counts: Vec<_> = m.endpoint_counts.iter().collect();
        counts.sort();
        out.push(format!("counts {counts:?}"));
        out.sort();
        out
    }

    /// Two services with slot tables and endpoint entries.
    fn running(m: &mut ServiceMaps) {
        m.set_services(&entries(&[("a.com", 1), ("b.com", 2)]))
            .unwrap();
        for id in [1, 2] {
            let vip = SocketAddrV4::new([240, 240, 0, id as u8].into(), 80);
            m.set_slots(id, &SlotTable::new(vip, Duration::from_secs(10)))
                .unwrap();
            m.set_slots6(id, &SlotTable6::new(vip, Duration::from_secs(10)))
                .unwrap();
            m.set_endpoints(id, &[endpoint("a"), endpoint("b")])
                .unwrap();
        }
    }

    #[test]
    fn an_update_the_kernel_refuses_half_way_leaves_the_maps_as_they_were() {
        // Too many for the IPv4 services (the first map written), then
        // for the IPv6 ones (written after every IPv4 one succeeded).
        for (v4, v6) in [(3, 64), (64, 3)] {
            let mut m = maps(v4, v6);
            running(&mut m);
            let before = dump(&m);
            // The running services go (their slot tables and endpoints
            // with them) and four new ones come: one too many.
            let next = entries(&[("c.com", 3), ("d.com", 4), ("e.com", 5), ("f.com", 6)]);
            let e = m.set_services(&next).expect_err("one more than fits");
            assert!(e.to_string().contains("RD_SVC"), "{e}");
            assert_eq!(dump(&m), before, "capacity {v4}/{v6}");
            // The maps still work: fewer services apply.
            m.set_services(&entries(&[("c.com", 3)])).unwrap();
            let after = dump(&m);
            assert_eq!(m.services.keys().count(), 1, "{after:#?}");
            assert_eq!(m.services6.keys().count(), 1, "{after:#?}");
            assert_eq!(m.endpoints.keys().count(), 2, "id 1's: {after:#?}");
        }
    }

    #[test]
    fn restoring_undoes_a_whole_replacement() {
        // What a failure at the very end would undo: every service gone
        // or changed, with its slot tables and endpoint entries.
        let mut m = maps(64, 64);
        running(&mut m);
        let before = dump(&m);
        let next = entries(&[("c.com", 3)]);
        let recorded = m.before(&next).unwrap();
        assert_eq!(recorded.slots.len(), 1, "id 2's table goes");
        assert_eq!(recorded.endpoints.len(), 2, "id 2's entries go");
        m.replace_services(&next, &recorded).unwrap();
        assert_ne!(dump(&m), before);
        m.restore(recorded).unwrap();
        assert_eq!(dump(&m), before);
    }

    #[test]
    fn a_full_map_is_replaced_whole() {
        // As many new VIPs as the map holds, none of the old ones: the
        // old go first, so the new fit.
        let mut m = maps(3, 3);
        m.set_services(&entries(&[("a.com", 1), ("b.com", 2), ("c.com", 3)]))
            .unwrap();
        m.set_services(&entries(&[("d.com", 4), ("e.com", 5), ("f.com", 6)]))
            .unwrap();
        let vips: Vec<u32> = m
            .services
            .keys()
            .map(|k| u32::from_be(k.unwrap().vip_be) & 0xff)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(vips, [4, 5, 6]);
    }
}
