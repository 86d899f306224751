//! The blog's scenario on real BPF, real DNS and real HTTP servers: locality
//! preference, failover with zero client errors, ejection shown by
//! `redirector endpoints`, un-ejection, failover rules, DNS changes.
//!
//! Endpoints listen on loopback addresses inside the test's own namespace;
//! the client dials the VIP, which has no route there, so only the redirect
//! can reach anything.

use redirector_tests::{
    istio::{destination_rule, service_entry},
    scenario::{Node, TIMEOUT, count, wait_until},
};

const VIP: &str = "240.240.0.10";
const EAST: &str = "healthy: east";
const WEST: &str = "healthy: west";

/// East and west endpoints resolvable through the node's DNS server.
fn two_regions() -> Node {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "west");
    node.a_record("east.test", [127, 0, 10, 1], 30);
    node.a_record("west.test", [127, 0, 10, 2], 30);
    node
}

fn blog_entry(east_port: u16) -> String {
    service_entry(
        Some(VIP),
        ("east.test", "us-east1", east_port),
        ("west.test", "us-west1", 8080),
    )
}

#[test]
fn without_a_destination_rule_both_regions_answer() {
    let mut node = two_regions();
    node.start(&blog_entry(8080), "us-east1", false);
    let bodies = node.bodies(VIP, 10);
    // One priority; Istio's mesh default turns on locality weighted
    // balancing, which alternates between the two equally weighted
    // localities (LEAST_REQUEST then has one host to choose from).
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(count(&bodies, WEST), 5, "{bodies:?}");
}

#[test]
fn with_outlier_detection_only_the_local_region_answers() {
    let mut node = two_regions();
    let config = blog_entry(8080) + &destination_rule(1, "15s", "1m");
    node.start(&config, "us-east1", false);
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, EAST), 10, "{bodies:?}");
    // Seen from the other region, the other endpoint is local.
    drop(node.daemon.take());
    node.start(&config, "us-west1", false);
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, WEST), 5, "{bodies:?}");
}

#[test]
fn refused_primary_fails_over_with_zero_client_errors() {
    let mut node = two_regions();
    // The blog's failure: the primary's port is wrong (nothing listens on
    // 8081), and its locality no longer matches.
    let config = service_entry(
        Some(VIP),
        ("east.test", "us-central1", 8081),
        ("west.test", "us-west", 8080),
    ) + &destination_rule(1, "15s", "1m");
    node.start(&config, "us-east1", false);
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    let east = node.endpoint("east.test");
    assert_eq!(east["endpoint"], "127.0.10.1:8081", "{east:#}");
    assert_eq!(east["outlier_check"], "FAILED", "{east:#}");
    assert_eq!(east["status"], "HEALTHY", "{east:#}");
    assert_eq!(east["ejections"], 1, "{east:#}");
    let error = east["last_error"].as_str().unwrap();
    assert!(error.contains("refused"), "{east:#}");
    let west = node.endpoint("west.test");
    assert_eq!(west["outlier_check"], "OK", "{west:#}");
    assert_eq!(west["cluster"], "outbound|80||mydb.com", "{west:#}");
}

#[test]
fn primary_answering_503_fails_over_with_zero_client_errors() {
    let mut node = two_regions();
    node.servers[0].set_status(503).unwrap();
    let config = blog_entry(8080) + &destination_rule(1, "15s", "1m");
    node.start(&config, "us-east1", false);
    // The first request meets the 503 and is retried on west; east is
    // ejected after one 5xx, so the rest go straight to west.
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    assert_eq!(
        node.servers[0].requests(),
        1,
        "east saw only the first request"
    );
    assert_eq!(node.endpoint("east.test")["outlier_check"], "FAILED");
}

#[test]
fn consecutive_5xx_threshold_is_honoured() {
    let mut node = two_regions();
    node.servers[0].set_status(500).unwrap();
    let config = blog_entry(8080) + &destination_rule(3, "15s", "1m");
    node.start(&config, "us-east1", false);
    // 500 is not retried (Istio retries 503 only): the app sees the first
    // three, then east is ejected.
    for i in 0..3 {
        let (status, _) = node.curl(VIP).unwrap();
        assert_eq!(status, 500, "request {i}");
        if i < 2 {
            assert_eq!(node.endpoint("east.test")["outlier_check"], "OK");
        }
    }
    assert_eq!(node.endpoint("east.test")["outlier_check"], "FAILED");
    assert_eq!(count(&node.bodies(VIP, 5), WEST), 5);
}

#[test]
fn ejected_primary_returns_after_its_ejection_time() {
    let mut node = two_regions();
    let config = blog_entry(8080) + &destination_rule(1, "1s", "2s");
    node.servers[0].stop().unwrap();
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 3), WEST), 3);
    assert_eq!(node.endpoint("east.test")["outlier_check"], "FAILED");
    node.servers[0].restart().unwrap();
    // Un-ejected on the first 1 s tick at least 2 s after the ejection.
    wait_until("east to be un-ejected", TIMEOUT, || {
        node.endpoint("east.test")["outlier_check"] == "OK"
    });
    assert_eq!(count(&node.bodies(VIP, 5), EAST), 5);
    let east = node.endpoint("east.test");
    assert_eq!(east["ejections"], 1, "{east:#}");
}

#[test]
fn failover_rule_chooses_the_named_region() {
    let mut node = two_regions();
    node.http("127.0.10.3:8080", "eu");
    node.a_record("eu.test", [127, 0, 10, 3], 30);
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{VIP}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints:
  - {{address: east.test, locality: us-east1, ports: {{http: 8081}}}}
  - {{address: eu.test, locality: eu-west1, ports: {{http: 8080}}}}
  - {{address: west.test, locality: us-west, ports: {{http: 8080}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: mydb.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - from: us-east1
          to: us-west
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 15s
      baseEjectionTime: 1m
"
    );
    node.start(&config, "us-east1", false);
    let bodies = node.bodies(VIP, 6);
    assert_eq!(count(&bodies, WEST), 6, "{bodies:?}");
    assert_eq!(node.endpoint("eu.test")["priority"], 2);
    assert_eq!(node.endpoint("west.test")["priority"], 1);
}

#[test]
fn new_dns_answers_move_traffic_and_failures_keep_the_last_answer() {
    let mut node = two_regions();
    node.http("127.0.10.4:8080", "east-new");
    node.a_record("east.test", [127, 0, 10, 1], 1);
    let config = blog_entry(8080) + &destination_rule(1, "15s", "1m");
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    node.a_record("east.test", [127, 0, 10, 4], 1);
    wait_until("traffic to follow the new address", TIMEOUT, || {
        node.curl(VIP).is_ok_and(|(_, b)| b == "healthy: east-new")
    });
    assert_eq!(count(&node.bodies(VIP, 3), "healthy: east-new"), 3);
    // A DNS failure keeps the last good answer.
    node.dns.set_servfail("east.test").unwrap();
    wait_until("a failed refresh of east.test", TIMEOUT, || {
        node.log().contains("keeping the last good answer")
    });
    assert_eq!(count(&node.bodies(VIP, 3), "healthy: east-new"), 3);
    assert!(
        node.log().contains("keeping the last good answer"),
        "{}",
        node.log()
    );
}

#[test]
fn a_request_cut_off_by_a_dying_primary_is_answered_by_the_failover() {
    let mut node = two_regions();
    // East stalls, so the request is in flight when east dies.
    node.servers[0].set_delay(TIMEOUT);
    let config = blog_entry(8080) + &destination_rule(1, "15s", "1m");
    node.start(&config, "us-east1", false);
    let reply = std::thread::scope(|s| {
        let request = s.spawn(|| node.curl(VIP));
        wait_until("the request to reach east", TIMEOUT, || {
            node.servers[0].requests() == 1
        });
        node.servers[0].stop().unwrap();
        request.join().unwrap()
    });
    // A GET without a body is safe to send again: the app never sees the
    // reset.
    assert_eq!(reply, Ok((200, WEST.to_string())), "{}", node.log());
    assert!(
        node.log().contains("upstream reset before response"),
        "the request had reached east: {}",
        node.log()
    );
    assert_eq!(node.endpoint("east.test")["outlier_check"], "FAILED");
}

#[test]
fn a_long_lived_app_connection_fails_back_when_the_primary_returns() {
    let mut node = two_regions();
    node.servers[0].stop().unwrap();
    let config = blog_entry(8080) + &destination_rule(1, "1s", "2s");
    node.start(&config, "us-east1", false);
    // One keep-alive connection for the whole run (rdt-load with a single
    // connection), 20 requests per second for 6 s.
    let bin = redirector_tests::upstream::bin_path("rdt-load").unwrap();
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--target",
        &format!("{VIP}:80"),
        "--host",
        "mydb.com",
        "--rps",
        "20",
        "--duration",
        "6",
        "--connections",
        "1",
    ])
    .stdout(std::process::Stdio::piped());
    node.ns.configure(&mut cmd);
    node.cgroup.configure(&mut cmd);
    let child = cmd.spawn().unwrap();
    // The first request finds east refusing, goes to west and ejects
    // east; east comes back while it is ejected.
    wait_until("east's ejection", TIMEOUT, || {
        node.endpoint("east.test")["outlier_check"] == "FAILED"
    });
    node.servers[0].restart().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let served: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["status"], 200, "{l}\n{}", node.log());
            v["served_by"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        served.first().map(String::as_str),
        Some("west"),
        "{served:?}"
    );
    // Ejected for 2 s, back on the first 1 s tick after that: well before
    // the end, the same app connection is served by the primary again.
    assert!(
        served[served.len() - 20..].iter().all(|s| s == "east"),
        "{served:?}"
    );
}
