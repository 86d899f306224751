//! Outlier detection, connection pool and per-port settings on real BPF
//! and real servers: gateway-error ejection, `maxEjectionPercent`,
//! `connectTimeout` against a black hole, `maxConnections` with
//! `http1MaxPendingRequests` overflow, `maxRetries`,
//! `maxRequestsPerConnection` as the endpoint sees it, and
//! `portLevelSettings`.
//!
//! Endpoints listen on loopback addresses inside the test's own namespace
//! (the black hole is behind a veth link of its own); the client dials the VIP,
//! which has no route there, so only the redirect can reach anything.

use std::time::Duration;

use redirector_tests::{
    istio::{mydb_entry, mydb_rule},
    netns::{self, Netns},
    scenario::{Node, TIMEOUT, count, metric, wait_until},
};

const VIP: &str = "240.240.0.20";
const EAST: &str = "healthy: east";
const WEST: &str = "healthy: west";
/// App connections the proxy holds for the service.
const ACTIVE: &str = "redirector_active_connections{service=\"mydb.com:80\"}";

/// `mydb.com` at [`VIP`] with STATIC endpoints `(address, locality)`, all
/// on port 8080, and HTTP port 80.
fn static_entry(endpoints: &[(&str, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(address, locality)| format!("  - {{address: {address}, locality: {locality}}}\n"))
        .collect();
    mydb_entry(VIP, "STATIC", &endpoints)
}

/// A DestinationRule for `mydb.com` with `traffic_policy` (indented four
/// spaces) under `trafficPolicy`.
fn rule(traffic_policy: &str) -> String {
    mydb_rule(traffic_policy)
}

/// East (the node's region) and west, both answering.
fn two_regions() -> (Node, String) {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "west");
    let entry = static_entry(&[("127.0.10.1", "us-east1"), ("127.0.10.2", "us-west1")]);
    (node, entry)
}

fn ejected_count(node: &Node) -> usize {
    let all = node.endpoints();
    all["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outlier_check"] == "FAILED")
        .count()
}

/// `GET http://mydb.com:<port>/` as the app: (status, body).
fn get(node: &Node, port: u16) -> (u16, String) {
    let resolve = format!("mydb.com:{port}:{VIP}");
    let url = format!("http://mydb.com:{port}/");
    let out = node.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "15",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url}: {stdout}{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let (body, code) = stdout.rsplit_once('\n').expect("a status line");
    (code.parse().expect("a status"), body.to_owned())
}

/// [`Node::curl`], and how long the request took by curl's own clock
/// (`time_total`, from the start of the request to the end of the
/// answer): what the timing checks are about, without the start of a
/// process in the namespace and cgroup, which a loaded machine can take
/// seconds over.
fn timed_curl(node: &Node) -> (Result<(u16, String), String>, Duration) {
    let resolve = format!("mydb.com:80:{VIP}");
    let out = node.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "15",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{time_total}",
            "http://mydb.com/",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (code, secs) = last.split_once(' ').expect("status and time_total");
    let took = Duration::from_secs_f64(secs.trim().parse().expect("time_total"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return (Err(format!("curl failed ({}): {stderr}", out.status)), took);
    }
    (Ok((code.parse().expect("a status"), body.to_owned())), took)
}

#[test]
fn gateway_errors_eject_on_502_while_5xx_detection_is_off() {
    let (mut node, entry) = two_regions();
    node.servers[0].set_status(500).unwrap();
    let config = entry
        + &rule(
            "    outlierDetection:
      consecutive5xxErrors: 0
      consecutiveGatewayErrors: 2
      interval: 15s
      baseEjectionTime: 1m
",
        );
    node.start(&config, "us-east1", false);
    // 500 is a 5xx but not a gateway error: with consecutive5xxErrors off,
    // east stays in however many the app sees.
    for i in 0..4 {
        assert_eq!(
            node.curl(VIP),
            Ok((500, "500 from east".into())),
            "request {i}"
        );
    }
    assert_eq!(node.endpoint("127.0.10.1")["outlier_check"], "OK");
    // Two 502s in a row eject it (502 is not retried).
    node.servers[0].set_status(502).unwrap();
    assert_eq!(node.curl(VIP), Ok((502, "502 from east".into())));
    assert_eq!(node.endpoint("127.0.10.1")["outlier_check"], "OK");
    assert_eq!(node.curl(VIP), Ok((502, "502 from east".into())));
    let east = node.endpoint("127.0.10.1");
    assert_eq!(east["outlier_check"], "FAILED", "{east:#}");
    assert_eq!(count(&node.bodies(VIP, 4), WEST), 4);
    assert!(
        node.log().contains("consecutiveGatewayErrors"),
        "the log names the detector: {}",
        node.log()
    );
}

#[test]
fn max_ejection_percent_is_honoured_exactly() {
    let mut node = Node::new();
    let addresses = ["127.0.10.1", "127.0.10.2", "127.0.10.3", "127.0.10.4"];
    for (i, a) in addresses.iter().enumerate() {
        node.http(&format!("{a}:8080"), &format!("h{i}"));
        node.servers[i].set_status(500).unwrap();
    }
    let endpoints: Vec<(&str, &str)> = addresses.iter().map(|a| (*a, "us-east1")).collect();
    let config = |percent: u32| {
        static_entry(&endpoints)
            + &rule(&format!(
                "    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1m
      baseEjectionTime: 5m
      maxEjectionPercent: {percent}
"
            ))
    };
    // 4 hosts: 100 × 2 / 4 = 50 ≤ 50 ejects a second, 75 > 50 not a third.
    node.start(&config(50), "us-east1", false);
    for _ in 0..12 {
        assert_eq!(node.curl(VIP).map(|(s, _)| s), Ok(500));
    }
    assert_eq!(ejected_count(&node), 2, "{:#}", node.endpoints());
    assert!(
        node.log()
            .contains("maxEjectionPercent allows no more ejections"),
        "{}",
        node.log()
    );
    // 75: exactly three.
    drop(node.daemon.take());
    node.start(&config(75), "us-east1", false);
    for _ in 0..12 {
        assert_eq!(node.curl(VIP).map(|(s, _)| s), Ok(500));
    }
    assert_eq!(ejected_count(&node), 3, "{:#}", node.endpoints());
}

#[test]
fn connect_timeout_fails_over_from_a_black_hole_in_time() {
    let mut node = Node::new();
    // A veth link to an empty namespace, and a neighbour entry for
    // 10.99.0.2 that points at no one: SYNs to it vanish, as to a dead
    // host (the benchmark's black hole).
    let peer = Netns::new("blackhole").expect("creating the peer namespace");
    let link = netns::link(&node.ns, "10.99.0.1/24", &peer, "10.99.0.3/24").unwrap();
    node.ns
        .ip([
            "neigh",
            "replace",
            "10.99.0.2",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            &link.a_dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    node.http("127.0.10.2:8080", "west");
    let config = static_entry(&[("10.99.0.2", "us-east1"), ("127.0.10.2", "us-west1")])
        + &rule(
            "    connectionPool:
      tcp: {connectTimeout: 500ms}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 15s
      baseEjectionTime: 1m
",
        );
    node.start(&config, "us-east1", false);
    let (reply, took) = timed_curl(&node);
    assert_eq!(reply, Ok((200, WEST.into())), "{}", node.log());
    // The configured 500 ms, not Istio's default 10 s (curl itself adds a
    // little).
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
        "first request took {took:?}"
    );
    let east = node.endpoint("10.99.0.2");
    assert_eq!(east["outlier_check"], "FAILED", "{east:#}");
    let error = east["last_error"].as_str().unwrap();
    assert!(error.contains("timed out after 500ms"), "{east:#}");
    // Ejected: the next ones go straight to west.
    let (replies, took): (Vec<_>, Vec<_>) = (0..3).map(|_| timed_curl(&node)).unzip();
    let bodies: Vec<String> = replies
        .into_iter()
        .map(|r| match r {
            Ok((200, body)) => body,
            other => panic!("{other:?}\ndaemon log:\n{}", node.log()),
        })
        .collect();
    assert_eq!(count(&bodies, WEST), 3);
    assert!(took.iter().sum::<Duration>() < Duration::from_millis(1500));
}

#[test]
fn max_connections_and_pending_overflow_answer_a_fast_503() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    // Each answer takes 4 s, so the one connection stays busy while the
    // test lines up the other two (the second waits at most the connect
    // timeout, Istio's default 10 s, for it).
    node.servers[0].set_delay(Duration::from_secs(4));
    let config = static_entry(&[("127.0.10.1", "us-east1")])
        + &rule(
            "    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
",
        );
    node.start(&config, "us-east1", false);
    std::thread::scope(|s| {
        let first = s.spawn(|| node.curl(VIP));
        wait_until("the first request to arrive", TIMEOUT, || {
            node.servers[0].requests() == 1
        });
        // The second waits for the connection, as the one pending request.
        let second = s.spawn(|| node.curl(VIP));
        wait_until("the second app connection", TIMEOUT, || {
            metric(&node.metrics(), ACTIVE) == 2.0
        });
        assert_eq!(node.servers[0].requests(), 1, "the second must be waiting");
        // The third finds the connection and the pending slot taken.
        let (reply, took) = timed_curl(&node);
        let (status, body) = reply.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("connectionPool.tcp.maxConnections")
                && body.contains("connectionPool.http.http1MaxPendingRequests"),
            "the body names the limits: {body}"
        );
        assert!(took < Duration::from_millis(1000), "not fast: {took:?}");
        assert_eq!(first.join().unwrap(), Ok((200, EAST.into())));
        assert_eq!(second.join().unwrap(), Ok((200, EAST.into())));
    });
    // The waiting request got the first one's connection.
    assert_eq!(node.servers[0].requests(), 2);
    assert_eq!(node.servers[0].connections(), 1);
    assert!(
        node.log().contains("circuit breaker overflow"),
        "{}",
        node.log()
    );
}

#[test]
fn max_requests_per_connection_is_seen_by_the_server() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let config = static_entry(&[("127.0.10.1", "us-east1")])
        + &rule(
            "    connectionPool:
      http: {maxRequestsPerConnection: 2}
",
        );
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 6), EAST), 6);
    // Pooled, two requests each: three connections, not one (pooling
    // without a limit) or six (no reuse).
    assert_eq!(node.servers[0].connections(), 3);
}

#[test]
fn idle_timeout_closes_pooled_connections() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let config = static_entry(&[("127.0.10.1", "us-east1")])
        + &rule(
            "    connectionPool:
      http: {idleTimeout: 5s}
",
        );
    node.start(&config, "us-east1", false);
    // Back to back, the pooled connection is reused.
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    assert_eq!(node.servers[0].connections(), 1);
    // Idle for longer than idleTimeout, it is closed (Istio's default
    // would keep it an hour): the next request needs a new one.
    wait_until("the idle pooled connection to close", TIMEOUT, || {
        node.established_to("127.0.10.1:8080") == 0
    });
    assert_eq!(count(&node.bodies(VIP, 1), EAST), 1);
    assert_eq!(node.servers[0].connections(), 2);
}

#[test]
fn port_level_settings_apply_a_different_policy_to_a_second_port() {
    let (mut node, _) = two_regions();
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{VIP}]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}
  - {{number: 8080, name: http-alt, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.10.1, locality: us-east1}}
  - {{address: 127.0.10.2, locality: us-west1}}
"
    ) + &rule(
        "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 15s
      baseEjectionTime: 1m
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool:
        http: {maxRequestsPerConnection: 1}
",
    );
    node.start(&config, "us-east1", false);
    // Port 80: the rule's policy. Outlier detection turns locality failover
    // on, so the local region takes everything, over one pooled connection.
    for _ in 0..6 {
        assert_eq!(get(&node, 80), (200, EAST.into()));
    }
    assert_eq!(node.servers[0].connections(), 1);
    assert_eq!(node.servers[1].connections(), 0);
    // Port 8080: its entry replaces the whole policy, so it has no outlier
    // detection (every endpoint at one priority, round robin) and one
    // request per connection.
    let bodies: Vec<String> = (0..10).map(|_| get(&node, 8080).1).collect();
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(count(&bodies, WEST), 5, "{bodies:?}");
    assert_eq!(node.servers[0].connections(), 1 + 5);
    assert_eq!(node.servers[1].connections(), 5);
}

#[test]
fn max_retries_caps_the_retries_in_flight() {
    let (mut node, entry) = two_regions();
    // East answers 503 at once; west, where retries go, takes its time
    // (4 s: the first retry is still in flight when the second request
    // comes, however slow the machine is to send it).
    node.servers[0].set_status(503).unwrap();
    node.servers[1].set_delay(Duration::from_secs(4));
    let config = entry
        + &rule(
            "    outlierDetection:
      consecutive5xxErrors: 0
    connectionPool:
      http: {maxRetries: 1}
",
        );
    node.start(&config, "us-east1", false);
    std::thread::scope(|s| {
        // The first request's retry to west is the one in flight...
        let first = s.spawn(|| node.curl(VIP));
        wait_until("the first retry to reach west", TIMEOUT, || {
            node.servers[1].requests() == 1
        });
        // ...so the second gets east's 503 as it is, at once.
        let (reply, took) = timed_curl(&node);
        assert_eq!(reply, Ok((503, "503 from east".into())));
        assert!(took < Duration::from_millis(1000));
        assert_eq!(node.servers[1].requests(), 1, "not retried");
        assert_eq!(first.join().unwrap(), Ok((200, WEST.into())));
    });
    assert!(
        node.log().contains("connectionPool.http.maxRetries"),
        "the overflow is logged: {}",
        node.log()
    );
    // With the retry back, the next 503 is retried again.
    assert_eq!(node.curl(VIP), Ok((200, WEST.into())));
}
