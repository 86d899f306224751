use super::*;
use crate::config::{self, NodeSettings};

/// Endpoints in the node's region (priority 0) and one elsewhere
/// (priority 1), ejected after one failure.
fn cluster(east: &[&str]) -> Cluster {
    let endpoints: String = east
        .iter()
        .map(|a| format!("  - {{address: {a}, locality: us-east1}}\n"))
        .collect();
    let yaml = format!(
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example]
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-pg}}]
  endpoints:
{endpoints}  - {{address: 10.0.1.1, locality: us-west1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: db.example
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s}}
"
    );
    let config = config::load_str("t.yaml", &yaml, &NodeSettings::default()).unwrap();
    let mut service = config.services[0].clone();
    service.endpoints[0].weight = 3;
    let node = Locality::parse("us-east1").unwrap();
    Cluster::new(
        1,
        service,
        &node,
        Arc::new(Notify::new()),
        &Metrics::default(),
    )
}

fn ep(s: &str) -> SocketAddrV4 {
    format!("{s}:5432").parse().unwrap()
}

fn fail(c: &Cluster, addr: &str) {
    let host = c.host_by_addr(ep(addr).into()).unwrap();
    c.record(&host, Outcome::ConnectFailed, Some("refused"));
}

fn share(slots: &[SocketAddrV4], addr: &str) -> usize {
    slots.iter().filter(|a| **a == ep(addr)).count()
}

#[test]
fn best_priority_hosts_in_proportion_to_their_weight() {
    let c = cluster(&["10.0.0.1", "10.0.0.2"]);
    let slots = c.kernel_slots();
    assert_eq!(slots.len(), redirector_common::MAX_SLOTS);
    assert_eq!(share(&slots, "10.0.0.1"), 48, "{slots:?}");
    assert_eq!(share(&slots, "10.0.0.2"), 16, "{slots:?}");
    assert_eq!(share(&slots, "10.0.1.1"), 0, "{slots:?}");
}

#[test]
fn an_ejection_spills_over_as_envoy_does() {
    let c = cluster(&["10.0.0.1", "10.0.0.2"]);
    fail(&c, "10.0.0.1");
    // Half of P0 healthy: 1.4 × 50% = 70% stays, 30% goes to P1.
    let slots = c.kernel_slots();
    let p0 = share(&slots, "10.0.0.2");
    assert!((44..=46).contains(&p0), "{slots:?}");
    assert_eq!(share(&slots, "10.0.0.1"), 0, "{slots:?}");
    assert_eq!(p0 + share(&slots, "10.0.1.1"), 64, "{slots:?}");
}

#[test]
fn when_the_best_priority_is_ejected_the_next_takes_over() {
    let c = cluster(&["10.0.0.1"]);
    assert_eq!(share(&c.kernel_slots(), "10.0.0.1"), 64);
    fail(&c, "10.0.0.1");
    assert_eq!(share(&c.kernel_slots(), "10.0.1.1"), 64);
    // A success elsewhere changes nothing; un-ejection waits for a tick.
    let west = c.host_by_addr(ep("10.0.1.1").into()).unwrap();
    c.record(&west, Outcome::Success, None);
    assert_eq!(share(&c.kernel_slots(), "10.0.1.1"), 64);
    assert!(c.host_by_addr(ep("10.9.9.9").into()).is_none());
}
