//! Load balancing on real BPF, real DNS and real HTTP servers: endpoint
//! weights, `distribute`, `failoverPriority` and Envoy's priority
//! spillover, each observed in which endpoint answered.
//!
//! Endpoints listen on loopback addresses inside the test's own namespace;
//! the client dials the VIP, which has no route there, so only the redirect
//! can reach anything.

use redirector_tests::{
    istio::{mydb_entry, mydb_rule},
    scenario::{Node, TIMEOUT, count, wait_until},
};

const VIP: &str = "240.240.0.20";

/// A node with HTTP endpoints `name` on 127.0.20.<i+1>:8080, resolvable as
/// `<name>.test`.
fn node_with(names: &[&str]) -> Node {
    let mut node = Node::new();
    for (i, name) in names.iter().enumerate() {
        let octet = u8::try_from(i + 1).unwrap();
        node.http(&format!("127.0.20.{octet}:8080"), name);
        node.a_record(&format!("{name}.test"), [127, 0, 20, octet], 30);
    }
    node
}

/// mydb.com at the VIP, port 80 → 8080, with `endpoints` (YAML flow
/// mappings without the address and port), then `rule`'s trafficPolicy
/// (YAML at four spaces; empty for no DestinationRule).
fn config(endpoints: &[(&str, &str)], rule: &str) -> String {
    let lines: String = endpoints
        .iter()
        .map(|(name, extra)| format!("  - {{address: {name}.test, {extra}}}\n"))
        .collect();
    let mut out = mydb_entry(VIP, "DNS", &lines);
    if !rule.is_empty() {
        out += &mydb_rule(rule);
    }
    out
}

/// Starts the daemon and waits until every `<name>.test` has resolved, so
/// the counts do not depend on DNS timing.
fn start(node: &mut Node, yaml: &str, locality: &str, names: &[&str]) {
    node.start(yaml, locality, false);
    for name in names {
        wait_until(&format!("{name}.test to resolve"), TIMEOUT, || {
            node.endpoint(&format!("{name}.test"))["status"] != "UNRESOLVED"
        });
    }
}

/// Who served each request; all must have succeeded.
fn served(node: &Node, rps: u32, secs: f64) -> Vec<String> {
    node.load(VIP, rps, secs, 1)
        .into_iter()
        .enumerate()
        .map(|(i, (status, by))| {
            assert_eq!(status, 200, "request {i} failed\n{}", node.log());
            by
        })
        .collect()
}

#[test]
fn endpoint_weights_split_traffic_three_to_one() {
    let mut node = node_with(&["heavy", "light"]);
    let yaml = config(
        &[
            ("heavy", "locality: us-east1, weight: 3"),
            ("light", "locality: us-east1, weight: 1"),
        ],
        "    loadBalancer: {simple: ROUND_ROBIN}\n",
    );
    start(&mut node, &yaml, "us-east1", &["heavy", "light"]);
    let by = served(&node, 200, 2.0);
    assert_eq!(by.len(), 400);
    let heavy = count(&by, "heavy");
    // Weighted round robin is an exact schedule: 300/100, give or take
    // a request retried elsewhere.
    assert!((290..=310).contains(&heavy), "heavy served {heavy} of 400");
    assert_eq!(heavy + count(&by, "light"), 400);
    // The same weights with LEAST_REQUEST: one request at a time, so every
    // host is idle and the weights decide.
    drop(node.daemon.take());
    let yaml = yaml.replace("ROUND_ROBIN", "LEAST_REQUEST");
    start(&mut node, &yaml, "us-east1", &["heavy", "light"]);
    let heavy = count(&served(&node, 200, 2.0), "heavy");
    assert!((280..=320).contains(&heavy), "heavy served {heavy} of 400");
}

#[test]
fn distribute_sends_by_locality_weight_and_drops_the_rest() {
    let mut node = node_with(&["east", "west", "eu"]);
    let yaml = config(
        &[
            ("east", "locality: us-east1/a"),
            ("west", "locality: us-west1/b"),
            ("eu", "locality: eu-west1/c"),
        ],
        "    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east1/*
          to:
            \"us-east1/*\": 75
            \"us-west1/*\": 25
",
    );
    start(&mut node, &yaml, "us-east1/a", &["east", "west", "eu"]);
    let by = served(&node, 200, 2.0);
    let east = count(&by, "east");
    assert!((280..=320).contains(&east), "east served {east} of 400");
    assert_eq!(east + count(&by, "west"), 400, "eu gets nothing");
    assert_eq!(node.servers[2].requests(), 0);
    // A node the rule does not match: plain weights, eu included.
    drop(node.daemon.take());
    start(&mut node, &yaml, "ap-south1", &["east", "west", "eu"]);
    let by = served(&node, 150, 2.0);
    for name in ["east", "west", "eu"] {
        let n = count(&by, name);
        assert!(n > 50, "{name} served {n} of 300");
    }
}

#[test]
fn failover_priority_prefers_matching_labels_then_fails_over() {
    let mut node = node_with(&["gold", "iron"]);
    let yaml = config(
        &[
            // The iron endpoint is even in the node's own region: labels
            // decide, not locality.
            ("iron", "locality: us-east1, labels: {tier: iron}"),
            ("gold", "locality: eu-west1, labels: {tier: gold}"),
        ],
        "    loadBalancer:
      localityLbSetting:
        failoverPriority: [tier=gold]
    outlierDetection: {consecutive5xxErrors: 1, interval: 30s, baseEjectionTime: 1m}
",
    );
    start(&mut node, &yaml, "us-east1", &["gold", "iron"]);
    let by = served(&node, 100, 1.0);
    assert_eq!(count(&by, "gold"), 100, "{by:?}");
    assert_eq!(node.endpoint("gold.test")["priority"], 0);
    assert_eq!(node.endpoint("iron.test")["priority"], 1);
    // Gold goes away: iron takes over without a failed request.
    node.servers[0].stop().unwrap();
    let by = served(&node, 100, 1.0);
    assert_eq!(count(&by, "iron"), 100, "{by:?}");
    assert_eq!(node.endpoint("gold.test")["outlier_check"], "FAILED");
}

#[test]
fn priority_spillover_follows_envoys_overprovisioning() {
    // P0 (the node's region) has two endpoints, P1 one. With one of the two
    // P0 endpoints ejected, P0's health is 1/2 × 1.4 = 70%: 70% of the
    // traffic stays on P0's healthy endpoint and 30% spills to P1.
    let mut node = node_with(&["down", "local", "remote"]);
    node.servers[0].stop().unwrap();
    let yaml = config(
        &[
            ("down", "locality: us-east1"),
            ("local", "locality: us-east1"),
            ("remote", "locality: us-west1"),
        ],
        "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 30s, baseEjectionTime: 1m}
",
    );
    start(&mut node, &yaml, "us-east1", &["down", "local", "remote"]);
    // Until `down` is ejected P0 is whole: the first failure ejects it
    // and is retried on another endpoint.
    let by = served(&node, 200, 3.0);
    assert_eq!(node.endpoint("down.test")["outlier_check"], "FAILED");
    let local = count(&by, "local");
    let remote = count(&by, "remote");
    assert_eq!(local + remote, 600);
    // 70/30 of 600 is 420/180; the priority roll is random.
    assert!(
        (370..=470).contains(&local),
        "local {local}, remote {remote}"
    );
}
