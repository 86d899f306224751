use super::*;
use crate::config::{self, NodeSettings};

const SE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [mydb.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: a, weight: 3}
  - {address: 10.0.0.2, locality: a}
  - {address: 10.0.0.3, locality: b}
";

fn cluster(yaml: &str, node: &str) -> Cluster {
    let mut config = config::load_str("t.yaml", yaml, &NodeSettings::default())
        .unwrap_or_else(|e| panic!("{e}"));
    Cluster::new(
        1,
        config.services.remove(0),
        &Locality::parse(node).unwrap(),
        Arc::new(Notify::new()),
        &Metrics::default(),
    )
}

fn last_octet(h: &Host) -> u8 {
    match h.addr.ip() {
        IpAddr::V4(ip) => ip.octets()[3],
        IpAddr::V6(ip) => ip.octets()[15],
    }
}

#[test]
fn weights_and_distribute_reach_the_balancer() {
    let dr = "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: mydb.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        distribute:
        - from: a
          to: {a: 100}
";
    let c = cluster(&format!("{SE}{dr}"), "a");
    let orders: Vec<Vec<u8>> = (0..8)
        .map(|_| c.attempt_order().iter().map(last_octet).collect())
        .collect();
    let firsts: Vec<u8> = orders.iter().map(|o| o[0]).collect();
    assert_eq!(firsts.iter().filter(|&&o| o == 1).count(), 6, "{firsts:?}");
    assert_eq!(firsts.iter().filter(|&&o| o == 2).count(), 2, "{firsts:?}");
    // Locality b gets nothing, not even as a fallback.
    assert!(orders.iter().all(|o| !o.contains(&3)), "{orders:?}");
    let weights: Vec<u32> = c.snapshot().iter().map(|h| h.weight).collect();
    assert_eq!(weights, [3, 1, 0]);
    let table = c.slot_table(8);
    assert_eq!(table.iter().filter(|h| last_octet(h) == 1).count(), 6);
    assert_eq!(table.iter().filter(|h| last_octet(h) == 2).count(), 2);
}

#[test]
fn a_name_awaits_its_first_answer_until_resolved_or_failed() {
    let se = SE
        .replace("resolution: STATIC", "resolution: DNS")
        .replace("10.0.0.1", "a.test")
        .replace("10.0.0.2", "b.test")
        .replace("10.0.0.3", "c.test");
    let c = cluster(&se, "a");
    assert!(c.awaiting_first_answer());
    c.set_resolved(0, vec![std::net::Ipv4Addr::new(10, 0, 0, 1).into()]);
    c.dns_refreshed(0, true);
    c.dns_refreshed(1, false);
    // c.test has had neither.
    assert!(c.awaiting_first_answer());
    c.dns_refreshed(2, false);
    assert!(!c.awaiting_first_answer());
    let snap = c.snapshot();
    assert_eq!(snap.iter().map(|h| h.dns.failures).sum::<u32>(), 2);
    assert!(snap[0].dns.last_answer.is_some());
    // IP endpoints never wait.
    assert!(!cluster(SE, "a").awaiting_first_answer());
}

#[test]
fn track_counts_requests_in_flight() {
    let c = cluster(SE, "a");
    let h = c.attempt_order()[0].clone();
    let first = c.track(&h);
    let second = c.track(&h);
    assert_eq!(h.active(), 2);
    drop(first);
    assert_eq!(h.active(), 1);
    // Later attempt orders hand out the same counter.
    let same = c
        .attempt_order()
        .into_iter()
        .find(|x| x.key == h.key)
        .unwrap();
    assert_eq!(same.active(), 1);
    drop(second);
    assert_eq!(same.active(), 0);
}
