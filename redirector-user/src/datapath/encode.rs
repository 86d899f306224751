//! The daemon's view turned into map values: services (from the config)
//! and endpoint health (from a cluster), in the ABI's layouts. Slot tables
//! are made in `slots.rs`; byte order lives in `redirector_common::user`.

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    time::SystemTime,
};

use redirector_common::{
    EP_EJECTED, EP_HEALTHY, EP_UNRESOLVED, EndpointHealth, HOST_LEN, LAST_ERROR_LEN, LOCALITY_LEN,
    PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS, SVC_FAIL_OPEN, SVC_INFO_KERNEL_PATH,
    SVC_KERNEL_PATH, SVC_TLS_MUTUAL, SVC_TLS_ORIGINATION, SVC_VIP_AUTO, ServiceInfo, ServiceKey,
    ServiceKey6, ServiceValue, user::ip4_be, write_str,
};

use crate::{
    cluster::Cluster,
    config::{DatapathMode, Protocol, Service},
};

/// One service's entry in the kernel: the keys apps dial, and display data.
pub(crate) struct ServiceMapEntry {
    pub(crate) key: ServiceKey,
    pub(crate) value: ServiceValue,
    /// The IPv6 VIP:port, for connect6.
    pub(crate) key6: ServiceKey6,
    pub(crate) info: ServiceInfo,
}

/// Whether connects to `service` may skip the proxy, on the fast path or
/// when failing open. Not when the proxy originates TLS: the endpoint
/// expects TLS the app does not speak.
pub(crate) fn has_slots(service: &Service) -> bool {
    !service.policy.tls.originates()
}

/// The kernel's view of the services: VIP:port → service id (the id is
/// the position in `services` plus one, as `state::Generation::build`
/// numbers clusters), with display data for `redirector endpoints`.
pub(crate) fn service_entries(services: &[Service]) -> Vec<ServiceMapEntry> {
    services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let tls = s.policy.tls.origination();
            let kernel = s.datapath == DatapathMode::Kernel;
            let vip = SocketAddrV4::new(s.vip, s.port.number);
            let key = ServiceKey::new(vip);
            let mut info = ServiceInfo {
                vip_be: key.vip_be,
                port_be: key.port_be,
                protocol: match s.port.protocol {
                    Protocol::Http => PROTO_HTTP,
                    Protocol::Https => PROTO_HTTPS,
                    Protocol::Tcp => PROTO_TCP,
                    Protocol::Tls => PROTO_TLS,
                },
                flags: if s.vip_allocated { SVC_VIP_AUTO } else { 0 }
                    | match tls {
                        None => 0,
                        Some(o) if o.client.is_some() => SVC_TLS_ORIGINATION | SVC_TLS_MUTUAL,
                        Some(_) => SVC_TLS_ORIGINATION,
                    }
                    | if kernel { SVC_INFO_KERNEL_PATH } else { 0 },
                endpoint_count: s.endpoints.len() as u32,
                _pad: 0,
                host: [0; HOST_LEN],
            };
            write_str(&mut info.host, &s.host);
            ServiceMapEntry {
                key,
                key6: ServiceKey6::new(SocketAddrV6::new(s.vip6, s.port.number, 0, 0)),
                value: ServiceValue {
                    service_id: i as u32 + 1,
                    flags: if kernel { SVC_KERNEL_PATH } else { 0 }
                        | if has_slots(s) { SVC_FAIL_OPEN } else { 0 },
                },
                info,
            }
        })
        .collect()
}

/// One cluster's hosts as `RD_EP_V2` values, for `redirector endpoints`.
pub(crate) fn endpoint_entries(cluster: &Cluster) -> Vec<EndpointHealth> {
    cluster
        .snapshot()
        .into_iter()
        .map(|h| {
            let mut e = EndpointHealth {
                // IPv4 only in this layout: 0 for an IPv6 host, which
                // `redirector endpoints` then shows by its configured
                // address.
                addr_be: match h.addr {
                    Some(SocketAddr::V4(a)) => ip4_be(*a.ip()),
                    _ => 0,
                },
                port_be: h.addr.map_or(0, |a| a.port().to_be()),
                priority: h.priority,
                status: match (h.addr, h.ejected_until) {
                    (None, _) => EP_UNRESOLVED,
                    (Some(_), Some(_)) => EP_EJECTED,
                    (Some(_), None) => EP_HEALTHY,
                },
                ejections: h.ejections,
                multiplier: h.multiplier,
                consecutive_5xx: h.consecutive_5xx,
                weight: h.weight,
                dns_failures: h.dns.failures,
                _pad: 0,
                dns_answer_unix_ms: h.dns.last_answer.map_or(0, unix_ms),
                ejected_until_unix_ms: h.ejected_until.map_or(0, unix_ms),
                last_error_unix_ms: h.last_error.as_ref().map_or(0, |(t, _)| unix_ms(*t)),
                locality: [0; LOCALITY_LEN],
                hostname: [0; HOST_LEN],
                last_error: [0; LAST_ERROR_LEN],
            };
            write_str(&mut e.locality, &h.locality.to_string());
            write_str(&mut e.hostname, &h.address);
            if let Some((_, msg)) = &h.last_error {
                write_str(&mut e.last_error, msg);
            }
            e
        })
        .collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
