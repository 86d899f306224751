//! Endpoint health between the daemon and the kernel, both ways.
//!
//! Out: the publisher writes each changed cluster into the pinned maps:
//! its endpoints with their outlier state (for `redirector endpoints`) and
//! its slot table (where connect4 sends connects on the kernel fast path,
//! and every service's connects while the proxy is down). Connection tasks
//! only flip a dirty flag and wake the publisher, so a burst of failures
//! costs one map update per service, not one syscall per request, and an
//! ejection reaches the kernel within milliseconds.
//!
//! In: connects on the kernel path never pass through the proxy, so
//! sock_ops reports how each one ended (handshake done, or SYN_SENT →
//! CLOSE) into a ring buffer; [`consume_outcomes`] feeds those to the
//! service's outlier detection exactly as the proxy feeds its own connects.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, SystemTime},
};

use redirector_common::{
    EP_EJECTED, EP_HEALTHY, EP_UNRESOLVED, EndpointHealth, HOST_LEN, LAST_ERROR_LEN, LOCALITY_LEN,
    OUTCOME_CONNECTED, OUTCOME_FAILED, write_str,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::{
    bpf::{Datapath, KernelOutcome, OutcomeReader, slots},
    cluster::Cluster,
    config::Service,
    metrics,
    outlier::Outcome,
    proxy::Routes,
};

pub fn entries(cluster: &Cluster) -> Vec<EndpointHealth> {
    cluster
        .snapshot()
        .into_iter()
        .map(|h| {
            let mut e = EndpointHealth {
                // IPv4 only in this layout: 0 for an IPv6 host, which
                // `redirector endpoints` then shows by its configured
                // address.
                addr_be: match h.addr {
                    Some(SocketAddr::V4(a)) => u32::from(*a.ip()).to_be(),
                    _ => 0,
                },
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
                weight: h.weight,
                dns_failures: h.dns.failures,
                _pad: 0,
                dns_answer_unix_ms: h.dns.last_answer.map(unix_ms).unwrap_or(0),
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

/// Whether connects to `service` may skip the proxy, on the fast path or
/// when failing open. Not when the proxy originates TLS: the endpoint
/// expects TLS the app does not speak.
pub fn has_slots(service: &Service) -> bool {
    !service.policy.tls.originates()
}

/// Writes one cluster's state to the maps.
fn publish_cluster(datapath: &Datapath, cluster: &Cluster) {
    if let Err(e) = datapath.set_endpoints(cluster.id, &entries(cluster)) {
        warn!(cluster = %cluster.name, error = %e, "publishing endpoint health");
    }
    if !has_slots(&cluster.service) {
        return;
    }
    let weighted = cluster.kernel_slots6();
    // No address known (names not resolved yet): keep the tables there
    // are, maybe from the daemon before this one; the kernel checks that
    // they belong to this VIP:port.
    if weighted.is_empty() {
        return;
    }
    let vip = SocketAddrV4::new(cluster.service.vip, cluster.service.port.number);
    let timeout = cluster.service.policy.connection_pool.connect_timeout;
    if let Err(e) = datapath.set_slots6(cluster.id, &slots::table6(vip, &weighted, timeout)) {
        warn!(cluster = %cluster.name, error = %e, "publishing the IPv6 slot table");
    }
    let weighted = cluster.kernel_slots();
    if weighted.is_empty() {
        return;
    }
    if let Err(e) = datapath.set_slots(cluster.id, &slots::table(vip, &weighted, timeout)) {
        warn!(cluster = %cluster.name, error = %e, "publishing the slot table");
    }
}

/// Writes every cluster of `routes` now (start-up, before attaching).
pub fn publish_all(datapath: &Datapath, routes: &Routes) {
    let current = routes.read().expect("routes lock").clone();
    for route in current.values() {
        route.cluster.take_dirty();
        publish_cluster(datapath, &route.cluster);
    }
}

/// Writes every dirty cluster of the current routes whenever woken.
pub async fn publish(datapath: Arc<Datapath>, routes: Routes, notify: Arc<Notify>) {
    loop {
        let current = routes.read().expect("routes lock").clone();
        for route in current.values() {
            if route.cluster.take_dirty() {
                publish_cluster(&datapath, &route.cluster);
            }
        }
        notify.notified().await;
    }
}

/// Feeds kernel-path connect outcomes to outlier detection, forever.
/// How long a kernel-path success may wait to be counted: it only resets
/// counters, so a short delay changes nothing, and batching saves a wakeup
/// per connect.
const SUCCESS_POLL: Duration = Duration::from_millis(100);

pub async fn consume_outcomes(mut reader: OutcomeReader, routes: Routes) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch, SUCCESS_POLL).await {
            warn!(error = %e, "reading kernel-path connect outcomes");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let current = routes.read().expect("routes lock").clone();
        for o in &batch {
            let Some(route) = current.values().find(|r| r.cluster.id == o.service_id) else {
                continue;
            };
            record(&route.cluster, o);
        }
    }
}

fn record(cluster: &Cluster, o: &KernelOutcome) {
    let addr = o.addr;
    // Gone from the cluster since (DNS changed, reload): nothing to judge.
    let Some(host) = cluster.host_by_addr(addr) else {
        debug!(cluster = %cluster.name, %addr, "outcome for a host no longer in the cluster");
        return;
    };
    let (outcome, error) = classify(o);
    debug!(cluster = %cluster.name, endpoint = %host, ?outcome, "kernel-path connect");
    host.stats().kernel_connect(match outcome {
        Outcome::Success => metrics::KernelOutcome::Connected,
        Outcome::Timeout => metrics::KernelOutcome::TimedOut,
        _ => metrics::KernelOutcome::Failed,
    });
    if outcome != Outcome::Success {
        host.stats().connect_failed();
    }
    cluster.record(&host, outcome, error.as_deref());
}

/// The outlier-detection view of a kernel-path outcome: an answer to the
/// first SYN that ends the connect is a refusal (or an ICMP error); SYNs
/// that went unanswered first make it a timeout.
fn classify(o: &KernelOutcome) -> (Outcome, Option<String>) {
    match (o.kind, o.syn_retrans) {
        (OUTCOME_CONNECTED, _) => (Outcome::Success, None),
        (OUTCOME_FAILED, 0) => (
            Outcome::ConnectFailed,
            Some("connect failed: refused or unreachable (kernel datapath)".to_owned()),
        ),
        (OUTCOME_FAILED, n) => (
            Outcome::Timeout,
            Some(format!(
                "connect failed after {n} SYN retransmission(s): timed out (kernel datapath)"
            )),
        ),
        (kind, _) => (
            Outcome::ConnectFailed,
            Some(format!("unknown kernel outcome {kind}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use redirector_common::ConnectOutcome;

    use super::*;

    fn outcome(kind: u8, syn_retrans: u32) -> KernelOutcome {
        ConnectOutcome {
            service_id: 1,
            ip_be: u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be(),
            port_be: 80u16.to_be(),
            kind,
            _pad: 0,
            syn_retrans,
        }
        .into()
    }

    #[test]
    fn outcomes_of_both_families_name_the_endpoint() {
        let v4 = outcome(OUTCOME_CONNECTED, 0);
        assert_eq!(v4.addr, "10.0.0.1:80".parse().unwrap());
        let v6: KernelOutcome = redirector_common::ConnectOutcome6 {
            service_id: 2,
            ip6_be: crate::bpf::ip6_words("fd00::2".parse().unwrap()),
            port_be: 8080u16.to_be(),
            kind: OUTCOME_FAILED,
            _pad: 0,
            syn_retrans: 1,
        }
        .into();
        assert_eq!(v6.addr, "[fd00::2]:8080".parse().unwrap());
        assert_eq!(
            (v6.service_id, v6.kind, v6.syn_retrans),
            (2, OUTCOME_FAILED, 1)
        );
        // An IPv4 endpoint that connect6 reached at its mapped address.
        let mapped: KernelOutcome = redirector_common::ConnectOutcome6 {
            service_id: 2,
            ip6_be: redirector_common::v4_mapped(u32::from(Ipv4Addr::new(10, 0, 0, 3)).to_be()),
            port_be: 80u16.to_be(),
            kind: OUTCOME_CONNECTED,
            _pad: 0,
            syn_retrans: 0,
        }
        .into();
        assert_eq!(mapped.addr, "10.0.0.3:80".parse().unwrap());
    }

    #[test]
    fn kernel_outcomes_map_to_outlier_outcomes() {
        assert_eq!(
            classify(&outcome(OUTCOME_CONNECTED, 0)),
            (Outcome::Success, None)
        );
        let (o, e) = classify(&outcome(OUTCOME_FAILED, 0));
        assert_eq!(o, Outcome::ConnectFailed);
        assert!(e.unwrap().contains("refused"));
        let (o, e) = classify(&outcome(OUTCOME_FAILED, 3));
        assert_eq!(o, Outcome::Timeout);
        assert!(e.unwrap().contains("3 SYN retransmission"));
    }
}
