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

use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use redirector_common::{OUTCOME_CONNECTED, OUTCOME_FAILED, OUTCOME_TIMED_OUT};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::{
    cluster::Cluster,
    datapath::{
        Datapath, KernelOutcome, OutcomeReader, endpoint_entries, has_slots, slot_table,
        slot_table6,
    },
    metrics,
    outlier::Outcome,
    state::Services,
};

/// Writes one cluster's state to the maps.
fn publish_cluster(datapath: &Datapath, cluster: &Cluster) {
    if let Err(e) = datapath.set_endpoints(cluster.id, &endpoint_entries(cluster)) {
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
    if let Err(e) = datapath.set_slots6(cluster.id, &slot_table6(vip, &weighted, timeout)) {
        warn!(cluster = %cluster.name, error = %e, "publishing the IPv6 slot table");
    }
    let weighted = cluster.kernel_slots();
    if weighted.is_empty() {
        return;
    }
    if let Err(e) = datapath.set_slots(cluster.id, &slot_table(vip, &weighted, timeout)) {
        warn!(cluster = %cluster.name, error = %e, "publishing the slot table");
    }
}

/// Writes every cluster of `services` now (start-up, before attaching).
pub(crate) fn publish_all(datapath: &Datapath, services: &Services) {
    for cluster in services.current().values() {
        cluster.take_dirty();
        publish_cluster(datapath, cluster);
    }
}

/// Writes every dirty cluster of the current service table whenever woken.
pub(crate) async fn publish(datapath: Arc<Datapath>, services: Services, notify: Arc<Notify>) {
    loop {
        for cluster in services.current().values() {
            if cluster.take_dirty() {
                publish_cluster(&datapath, cluster);
            }
        }
        notify.notified().await;
    }
}

/// How long a kernel-path success may wait to be counted: it only resets
/// counters, so a short delay changes nothing, and batching saves a wakeup
/// per connect.
const SUCCESS_POLL: Duration = Duration::from_millis(100);

/// Feeds kernel-path connect outcomes to outlier detection, forever.
pub(crate) async fn consume_outcomes(mut reader: OutcomeReader, services: Services) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch, SUCCESS_POLL).await {
            warn!(error = %e, "reading kernel-path connect outcomes");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let current = services.current();
        for o in &batch {
            let Some(cluster) = current.values().find(|c| c.id == o.service_id) else {
                continue;
            };
            record(cluster, o);
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

/// The outlier-detection view of a kernel-path outcome: the kernel
/// reports a failed connect only when the endpoint's side ended it (a
/// reset, or the handshake timing out), never the app's own close.
fn classify(o: &KernelOutcome) -> (Outcome, Option<String>) {
    match o.kind {
        OUTCOME_CONNECTED => (Outcome::Success, None),
        OUTCOME_FAILED => (
            Outcome::ConnectFailed,
            Some("connect failed: refused (kernel datapath)".to_owned()),
        ),
        OUTCOME_TIMED_OUT => (
            Outcome::Timeout,
            Some(format!(
                "connect failed after {} SYN retransmission(s): timed out (kernel datapath)",
                o.syn_retrans
            )),
        ),
        kind => (
            Outcome::ConnectFailed,
            Some(format!("unknown kernel outcome {kind}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn outcome(kind: u8, syn_retrans: u32) -> KernelOutcome {
        KernelOutcome {
            service_id: 1,
            addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 80)),
            kind,
            syn_retrans,
        }
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
        // SYNs retransmitted before a reset are still a refusal.
        let (o, _) = classify(&outcome(OUTCOME_FAILED, 2));
        assert_eq!(o, Outcome::ConnectFailed);
        // A connect timeout shorter than the first retransmission.
        let (o, e) = classify(&outcome(OUTCOME_TIMED_OUT, 0));
        assert_eq!(o, Outcome::Timeout);
        assert!(e.unwrap().contains("timed out"));
        let (o, e) = classify(&outcome(OUTCOME_TIMED_OUT, 3));
        assert_eq!(o, Outcome::Timeout);
        assert!(e.unwrap().contains("3 SYN retransmission"));
    }
}
