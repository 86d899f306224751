//! The maps the daemon writes: services (both families), their display
//! data, endpoint health and slot tables.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};
use redirector_common::{
    EndpointHealth, EndpointKey, SVC_FAIL_OPEN, SVC_KERNEL_PATH, ServiceInfo, ServiceKey,
    ServiceKey6, ServiceValue, ServiceValue6, SlotTable, SlotTable6, map_names,
};

use super::{BpfError, encode::ServiceMapEntry};

pub(super) struct Maps {
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
        })
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

pub(super) fn map_op(name: &'static str, r: Result<(), MapError>) -> Result<(), BpfError> {
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
