//! Health that survives DNS: the endpoint names of the blog's ServiceEntry
//! are answered by a real DNS server with a 1 s TTL, so the daemon
//! re-resolves them every second while the tests eject, fail and change
//! answers. Envoy resets a host's outlier state whenever a DNS refresh
//! rebuilds the host set (istio#8673); here it is keyed by the logical
//! endpoint and the address, and stays.

use std::net::Ipv4Addr;

use redirector_tests::{
    istio::{destination_rule, service_entry},
    scenario::{Node, TIMEOUT, count, wait_until},
};

const VIP: &str = "240.240.0.11";
const EAST: &str = "healthy: east";
const WEST: &str = "healthy: west";

/// East and west, both names on a 1 s TTL, with the blog's failover rule
/// (consecutive 5xx 1, a long interval so nothing is un-ejected during a
/// test).
fn node() -> Node {
    let mut node = Node::new();
    node.http("127.0.11.1:8080", "east");
    node.http("127.0.11.2:8080", "west");
    node.a_record("east.test", [127, 0, 11, 1], 1);
    node.a_record("west.test", [127, 0, 11, 2], 1);
    let config = service_entry(
        Some(VIP),
        ("east.test", "us-east1", 8080),
        ("west.test", "us-west1", 8080),
    ) + &destination_rule(1, "30s", "1m");
    node.start(&config, "us-east1", false);
    node
}

/// Waits until the DNS server has answered `n` more queries, which at a
/// 1 s TTL for two names means at least `n / 2` refreshes of each.
fn wait_for_queries(node: &Node, n: u64) {
    let start = node.dns.queries();
    wait_until(
        "the daemon to re-resolve its endpoint names",
        TIMEOUT,
        || node.dns.queries() >= start + n,
    );
}

#[test]
fn an_ejection_outlives_refreshes_that_return_the_same_addresses() {
    let node = node();
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    node.servers[0].stop().unwrap();
    // The first request fails over inside the proxy and ejects east.
    assert_eq!(count(&node.bodies(VIP, 3), WEST), 3);
    let east = node.endpoint("east.test");
    assert_eq!(east["outlier_check"], "FAILED", "{east}");
    assert_eq!(east["ejections"], 1, "{east}");
    // East comes back, but it stays ejected for its ejection time, however
    // many refreshes return its address again.
    node.servers[0].restart().unwrap();
    wait_for_queries(&node, 6);
    let east = node.endpoint("east.test");
    assert_eq!(east["outlier_check"], "FAILED", "{east}");
    assert_eq!(east["ejections"], 1, "{east}");
    assert_eq!(east["endpoint"], "127.0.11.1:8080", "{east}");
    assert_eq!(count(&node.bodies(VIP, 4), WEST), 4);
}

#[test]
fn an_empty_answer_or_a_servfail_keeps_the_last_good_addresses() {
    let node = node();
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    node.dns.set_a("east.test", &[], 1).unwrap();
    wait_for_queries(&node, 4);
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    node.dns.set_servfail("east.test").unwrap();
    wait_for_queries(&node, 4);
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    let east = node.endpoint("east.test");
    assert_eq!(east["endpoint"], "127.0.11.1:8080", "{east}");
    assert_eq!(east["status"], "HEALTHY", "{east}");
    // The failures are counted per endpoint name; west's refreshes all
    // answered, and recently.
    assert!(east["dns_failures"].as_u64().unwrap() >= 2, "{east}");
    let west = node.endpoint("west.test");
    assert_eq!(west["dns_failures"], 0, "{west}");
    assert!(west["dns_answer_secs_ago"].as_u64().unwrap() <= 3, "{west}");
    let log = node.log();
    assert!(
        log.contains("error=empty answer") && log.contains("Server Failure"),
        "both failures are logged: {log}"
    );
    assert!(log.contains("keeping the last good answer"), "{log}");
}

#[test]
fn a_new_address_gets_traffic_within_a_refresh_and_the_old_keeps_its_ejection() {
    let mut node = node();
    node.http("127.0.11.4:8080", "east-new");
    node.servers[0].stop().unwrap();
    assert_eq!(count(&node.bodies(VIP, 2), WEST), 2);
    assert_eq!(node.endpoint("east.test")["outlier_check"], "FAILED");
    // East's name now also answers a second, healthy address: it is a new
    // host at the best priority, so it takes traffic back from the failover
    // region within about one refresh, while the old address stays ejected.
    node.dns
        .set_a(
            "east.test",
            &[Ipv4Addr::new(127, 0, 11, 1), Ipv4Addr::new(127, 0, 11, 4)],
            1,
        )
        .unwrap();
    wait_until("traffic to reach east's new address", TIMEOUT, || {
        node.curl(VIP).is_ok_and(|(_, b)| b == "healthy: east-new")
    });
    // One of east's two hosts is healthy: its priority is 70% healthy in
    // Envoy's terms (1.4 × 50%), so about 70% stay in east and 30% spill
    // over to west.
    let bodies = node.bodies(VIP, 20);
    let new = count(&bodies, "healthy: east-new");
    assert!((9..20).contains(&new), "{bodies:?}");
    assert_eq!(new + count(&bodies, WEST), 20, "{bodies:?}");
    let all = node.endpoints();
    let rows: Vec<_> = all["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["address"] == "east.test")
        .collect();
    assert_eq!(rows.len(), 2, "{all:#}");
    for row in rows {
        let ejected = row["endpoint"] == "127.0.11.1:8080";
        assert_eq!(
            row["outlier_check"],
            if ejected { "FAILED" } else { "OK" },
            "{row}"
        );
    }
}
