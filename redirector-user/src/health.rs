//! Publishing endpoint health into the pinned BPF map.
//!
//! Connection tasks only flip a dirty flag and wake this task; it does the
//! map writes. So a burst of failures costs one map update per endpoint, not
//! one syscall per request, and `redirector endpoints` (another process)
//! still sees every ejection within milliseconds.

use std::{sync::Arc, time::SystemTime};

use redirector_common::{
    EP_EJECTED, EP_HEALTHY, EP_UNRESOLVED, EndpointHealth, HOST_LEN, LAST_ERROR_LEN, LOCALITY_LEN,
    write_str,
};
use tokio::sync::Notify;
use tracing::warn;

use crate::{bpf::Datapath, cluster::Cluster, proxy::Routes};

pub fn entries(cluster: &Cluster) -> Vec<EndpointHealth> {
    cluster
        .snapshot()
        .into_iter()
        .map(|h| {
            let mut e = EndpointHealth {
                addr_be: h.addr.map(|a| u32::from(*a.ip()).to_be()).unwrap_or(0),
                port_be: h.addr.map(|a| a.port().to_be()).unwrap_or(0),
                priority: h.priority,
                status: match (h.addr, h.ejected_until) {
                    (None, _) => EP_UNRESOLVED,
                    (Some(_), Some(_)) => EP_EJECTED,
                    (Some(_), None) => EP_HEALTHY,
                },
                ejections: h.ejections,
                multiplier: h.multiplier,
                consecutive_5xx: h.consecutive_5xx,
                _pad: 0,
                ejected_until_unix_ms: h.ejected_until.map(unix_ms).unwrap_or(0),
                last_error_unix_ms: h.last_error.as_ref().map(|(t, _)| unix_ms(*t)).unwrap_or(0),
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
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes every dirty cluster of the current routes whenever woken.
pub async fn publish(datapath: Arc<Datapath>, routes: Routes, notify: Arc<Notify>) {
    loop {
        let current = routes.read().expect("routes lock").clone();
        for route in current.values() {
            let cluster = &route.cluster;
            if cluster.take_dirty()
                && let Err(e) = datapath.set_endpoints(cluster.id, &entries(cluster))
            {
                warn!(cluster = %cluster.name, error = %e, "publishing endpoint health");
            }
        }
        notify.notified().await;
    }
}
