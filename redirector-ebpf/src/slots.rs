//! Slot tables, shared by connect4 and connect6: where a connect goes
//! without the proxy (kernel path, fail-open).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use redirector_common::{ServiceKey, Slot, Slot6};

use crate::maps::{SLOTS, SLOTS6};

/// A random entry of the service's slot table, if it has one for this
/// IPv4 VIP:port, with the service's connect timeout.
pub(crate) fn pick(service_id: u32, key: &ServiceKey) -> Option<(Slot, u32)> {
    let table = unsafe { SLOTS.get(&service_id) }?;
    let count = table.count;
    if table.vip_be != key.vip_be || table.port_be != key.port_be || count == 0 {
        return None;
    }
    let i = unsafe { bpf_get_prandom_u32() } % count;
    let slot = table.slots.get(i as usize).copied()?;
    Some((slot, table.connect_timeout_ms))
}

/// [`pick`] from the service's IPv6 table (connect6), checked against the
/// service's IPv4 VIP:port like the IPv4 table.
pub(crate) fn pick6(service_id: u32, key: &ServiceKey) -> Option<(Slot6, u32)> {
    let table = unsafe { SLOTS6.get(&service_id) }?;
    let count = table.count;
    if table.vip_be != key.vip_be || table.port_be != key.port_be || count == 0 {
        return None;
    }
    let i = unsafe { bpf_get_prandom_u32() } % count;
    let slot = table.slots.get(i as usize).copied()?;
    Some((slot, table.connect_timeout_ms))
}
