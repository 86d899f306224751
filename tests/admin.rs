//! The admin server and least privilege, on real BPF: `/ready` through a
//! start and a drain, `/metrics` counting real traffic, DNS refreshes and
//! reloads, `/config_dump` following a reload; the capabilities every
//! thread of the running daemon keeps, and that a reload and traffic work
//! with only those; pins readable by root alone; listeners unreachable
//! from outside the node's loopback.
//!
//! Waits are bounded (TIMEOUT) but never asserted as durations.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, thread, time::Duration};

use redirector_tests::{
    client::Client,
    istio::{destination_rule, mydb_entry, service_entry},
    netns::{self, Netns},
    scenario::{ADMIN, Node, TIMEOUT, count, metric, wait_until},
    tcp::TcpServer,
};

const SERVICE: &str = "mydb.com:80";

fn config_dump(node: &Node) -> serde_json::Value {
    match node.admin_get("/config_dump") {
        Ok((200, body)) => serde_json::from_str(&body).expect("config_dump JSON"),
        other => panic!("/config_dump: {other:?}"),
    }
}

fn dumped_services(dump: &serde_json::Value) -> Vec<String> {
    dump["config"]["services"]
        .as_array()
        .expect("config.services")
        .iter()
        .map(|s| format!("{}:{}", s["host"].as_str().unwrap(), s["port"]["number"]))
        .collect()
}

const VIP: &str = "240.240.0.90";
const OTHER_VIP: &str = "240.240.0.91";

fn one_service() -> String {
    mydb_entry(
        VIP,
        "STATIC",
        "  - {address: 127.0.10.1, locality: us-east1}\n",
    )
}

fn with_other_service() -> String {
    one_service()
        + &format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other}}
spec:
  hosts: [other.com]
  addresses: [{OTHER_VIP}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.10.2, locality: us-east1}}]
"
        )
}

#[test]
fn ready_metrics_and_config_dump_follow_traffic_and_reloads() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "other");
    node.start(&one_service(), "us-east1", false);
    assert_eq!(node.admin_get("/ready"), Ok((200, "ready\n".into())));

    let requests = format!("redirector_requests_total{{service=\"{SERVICE}\",class=\"2xx\"}}");
    assert_eq!(metric(&node.metrics(), &requests), 0.0);
    assert_eq!(count(&node.bodies(VIP, 7), "healthy: east"), 7);
    let m = node.metrics();
    assert_eq!(metric(&m, &requests), 7.0, "{m}");
    assert_eq!(
        metric(
            &m,
            &format!("redirector_requests_total{{service=\"{SERVICE}\",class=\"5xx\"}}")
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("redirector_connections_total{{service=\"{SERVICE}\"}}")
        ),
        7.0,
        "curl opens one connection per request:\n{m}"
    );
    assert_eq!(metric(&m, "redirector_config_reloads_total"), 0.0);

    let dump = config_dump(&node);
    assert_eq!(dumped_services(&dump), [SERVICE]);
    assert_eq!(dump["node"]["admin"], ADMIN, "{dump:#}");
    assert_eq!(dump["node"]["listen"], "127.0.0.1:15001", "{dump:#}");
    assert_eq!(dump["health"][0]["endpoints"][0]["addr"], "127.0.10.1:8080");
    assert_eq!(dump["health"][0]["endpoints"][0]["ejected"], false);

    // A broken edit: rejected, counted, nothing else changes.
    node.reload("this: [is not a config", "config reload rejected");
    let m = node.metrics();
    assert_eq!(metric(&m, "redirector_config_reload_rejections_total"), 1.0);
    assert_eq!(metric(&m, "redirector_config_reloads_total"), 0.0);
    assert_eq!(dumped_services(&config_dump(&node)), [SERVICE]);

    // A good one, adding a service: applied, counted, dumped, served.
    node.reload(&with_other_service(), "config reloaded");
    let m = node.metrics();
    assert_eq!(metric(&m, "redirector_config_reloads_total"), 1.0);
    assert_eq!(metric(&m, "redirector_config_reload_rejections_total"), 1.0);
    assert_eq!(
        dumped_services(&config_dump(&node)),
        [SERVICE, "other.com:80"]
    );
    assert_eq!(count(&node.bodies(OTHER_VIP, 2), "healthy: other"), 2);
    // Counted apart, and the first service's count carried over.
    let m = node.metrics();
    assert_eq!(
        metric(
            &m,
            "redirector_requests_total{service=\"other.com:80\",class=\"2xx\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(metric(&m, &requests), 7.0, "{m}");
    assert_eq!(node.admin_get("/nothing-here").map(|(s, _)| s), Ok(404));
}

#[test]
fn a_refusing_endpoint_is_counted_and_ejected_and_dns_refreshes_are_counted() {
    let mut node = Node::new();
    // east.test's port refuses; west.test answers. Short TTLs: refreshes.
    node.a_record("east.test", [127, 0, 10, 1], 1);
    node.a_record("west.test", [127, 0, 10, 2], 1);
    node.http("127.0.10.2:80", "west");
    let vip = "240.240.0.92";
    let config = service_entry(
        Some(vip),
        ("east.test", "us-east1", 81),
        ("west.test", "us-west1", 80),
    ) + &destination_rule(1, "15s", "10m");
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(vip, 4), "healthy: west"), 4);

    let east = "service=\"mydb.com:80\",endpoint=\"127.0.10.1:81\"";
    let west = "service=\"mydb.com:80\",endpoint=\"127.0.10.2:80\"";
    let m = node.metrics();
    assert!(
        metric(
            &m,
            &format!("redirector_upstream_connect_failures_total{{{east}}}")
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("redirector_upstream_connect_failures_total{{{west}}}")
        ),
        0.0,
        "{m}"
    );
    // Ejected once (for ten minutes), and ejected now.
    assert_eq!(
        metric(&m, &format!("redirector_outlier_ejections_total{{{east}}}")),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("redirector_outlier_ejected{{{east}}}")),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("redirector_outlier_ejected{{{west}}}")),
        0.0
    );
    assert!(
        metric(
            &m,
            "redirector_retries_total{service=\"mydb.com:80\",reason=\"connect_failure\"}"
        ) >= 1.0,
        "the failed connect went on to west:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "redirector_requests_total{service=\"mydb.com:80\",class=\"2xx\"}"
        ),
        4.0,
        "{m}"
    );
    let dump = config_dump(&node);
    let endpoints = dump["health"][0]["endpoints"].as_array().unwrap().clone();
    let east_health = endpoints
        .iter()
        .find(|e| e["address"] == "east.test")
        .unwrap_or_else(|| panic!("{dump:#}"));
    assert_eq!(east_health["ejected"], true, "{dump:#}");

    // DNS: every refresh counted per name; a failing name counts failures.
    let refreshes = "redirector_dns_refreshes_total{name=\"west.test\"}";
    let first = metric(&m, refreshes);
    assert!(first >= 1.0, "{m}");
    wait_until("two more refreshes of west.test", TIMEOUT, || {
        metric(&node.metrics(), refreshes) >= first + 2.0
    });
    assert_eq!(
        metric(
            &node.metrics(),
            "redirector_dns_failures_total{name=\"west.test\"}"
        ),
        0.0
    );
    node.dns
        .set_servfail("east.test")
        .expect("SERVFAIL for east.test");
    wait_until("a failed refresh of east.test", TIMEOUT, || {
        metric(
            &node.metrics(),
            "redirector_dns_failures_total{name=\"east.test\"}",
        ) >= 1.0
    });
}

#[test]
fn ready_turns_503_while_the_daemon_drains() {
    let mut node = Node::new();
    let _east = TcpServer::start(&node.ns, "127.0.10.1:9000".parse().unwrap(), "east").unwrap();
    let vip = "240.240.0.93";
    node.write_config(&format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pg}}
spec:
  hosts: [pg.example]
  addresses: [{vip}]
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-pg, targetPort: 9000}}]
  endpoints: [{{address: 127.0.10.1, locality: us-east1}}]
"
    ));
    let mut args = node.args("us-east1");
    args.extend(["--drain-timeout".into(), "5m".into()]);
    node.start_args(args);
    assert_eq!(node.admin_get("/ready").map(|(s, _)| s), Ok(200));
    // An app holds a TCP connection open until told to close it.
    let ready = node.dir.path().join("ready");
    let close = node.dir.path().join("close");
    let script = format!(
        "
import os, socket, time
s = socket.create_connection(('{vip}', 5432), timeout=60)
print(s.makefile('rb').readline().decode().strip())
open('{ready}', 'w').close()
while not os.path.exists('{close}'):
    time.sleep(0.05)
s.close()
",
        ready = ready.display(),
        close = close.display()
    );
    thread::scope(|s| {
        let app = s.spawn(|| {
            Client::new(&node.ns, "python3")
                .args(["-c", &script])
                .cgroup(&node.cgroup)
                .timeout(Duration::from_secs(120))
                .run()
                .expect("running the app")
        });
        wait_until("the app's connection", TIMEOUT, || ready.exists());
        let active = "redirector_active_connections{service=\"pg.example:5432\"}";
        assert_eq!(metric(&node.metrics(), active), 1.0);

        let pid = node.daemon.as_ref().unwrap().pid();
        redirector_tests::process::signal(pid, libc::SIGTERM).expect("SIGTERM");
        wait_until("the daemon draining", TIMEOUT, || {
            node.log().contains("draining open connections")
        });
        // Draining, with the connection open: not ready, still serving.
        assert_eq!(
            node.admin_get("/ready"),
            Ok((503, "draining\n".into())),
            "{}",
            node.log()
        );
        assert_eq!(metric(&node.metrics(), active), 1.0);
        assert!(node.daemon.as_mut().unwrap().try_wait().unwrap().is_none());

        std::fs::write(&close, "").unwrap();
        let out = app.join().expect("the app");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hello from east"
        );
    });
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}\n{}", node.log());
    assert!(node.log().contains("drained; exiting"), "{}", node.log());
}

/// `CapXxx` of `/proc/<pid>/task/<tid>/status`, as a number.
fn cap_line(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map_or_else(
            || panic!("no {key} in\n{status}"),
            |v| u64::from_str_radix(v.trim(), 16).unwrap(),
        )
}

#[test]
fn after_start_every_thread_keeps_only_the_capability_to_mark_and_the_pins_are_private() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "other");
    // As root, with every capability, and two workers: more threads.
    node.write_config(&one_service());
    let mut args = node.args("us-east1");
    args.extend(["--workers".into(), "2".into()]);
    node.start_args(args);
    assert!(
        node.log().contains("capabilities dropped"),
        "{}",
        node.log()
    );
    // As root, CAP_NET_RAW is held: it is the one kept where the kernel
    // lets it set marks.
    let mark = redirector_tests::privilege::mark_capability(true);
    let pid = node.daemon.as_ref().unwrap().pid();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() >= 3, "main and two workers: {tasks:?}");
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                cap_line(&status, key),
                mark,
                "{key} of {}:\n{status}",
                task.display()
            );
        }
        assert_eq!(cap_line(&status, "CapInh"), 0, "{status}");
        assert_eq!(cap_line(&status, "CapAmb"), 0, "{status}");
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }

    // What runs after the drop still works: traffic, a reload that adds a
    // service (new maps entries, new marked sockets), traffic through it.
    assert_eq!(count(&node.bodies(VIP, 2), "healthy: east"), 2);
    node.reload(&with_other_service(), "config reloaded");
    assert_eq!(count(&node.bodies(OTHER_VIP, 3), "healthy: other"), 3);
    assert_eq!(count(&node.bodies(VIP, 2), "healthy: east"), 2);
    // `redirector endpoints` reads the published health of both.
    let endpoints = node.endpoints();
    assert_eq!(endpoints["services"].as_array().unwrap().len(), 2);

    // Pins: directories 0700, maps and links 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let root = node.pins.path();
    assert_eq!(mode(root), 0o700, "{}", root.display());
    let mut files = 0;
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for pin in std::fs::read_dir(&dir).unwrap() {
            let pin = pin.unwrap().path();
            assert_eq!(mode(&pin), 0o600, "{}", pin.display());
            files += 1;
        }
    }
    // Twelve maps and at least the connect4, sock_ops and getpeername links.
    assert!(files >= 15, "{files} pins");
}

/// Whether a TCP handshake with `addr` completes: the connect succeeds,
/// or fails with a reset, which only a listener that accepted it can send
/// (the proxy resets a connection no redirect sent it, and on a loaded
/// machine that reset can arrive before this task sees its connect
/// complete, which then reports ECONNRESET). A port nobody listens on
/// refuses the handshake at once (ECONNREFUSED), so the deadline only
/// bounds a machine too loaded to answer, and never decides.
async fn tcp_connects(addr: SocketAddr) -> bool {
    match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    }
}

/// Whether a DNS query over UDP to `addr` gets any answer. The socket is
/// connected, so a port nobody listens on is known at once too (the ICMP
/// port unreachable comes back as a refused `recv`).
async fn udp_answers(addr: SocketAddr) -> bool {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    // `mydb.com A`, id 0x1234, recursion desired.
    let query: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
                         \x04mydb\x03com\x00\x00\x01\x00\x01";
    if socket.send(query).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await,
        Ok(Ok(_))
    )
}

#[test]
fn listeners_answer_on_loopback_only() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let outside = Netns::new("outside").expect("creating a second namespace");
    let _link = netns::link(&node.ns, "10.213.70.1/24", &outside, "10.213.70.2/24")
        .expect("linking the namespaces");
    node.start(&one_service(), "us-east1", false);

    let ports = [15000u16, 15001, 15053];
    let from_outside = outside
        .spawn(move || async move {
            let mut reached = Vec::new();
            for port in ports {
                let addr: SocketAddr = ([10, 213, 70, 1], port).into();
                if tcp_connects(addr).await {
                    reached.push(format!("tcp {addr}"));
                }
            }
            let dns: SocketAddr = ([10, 213, 70, 1], 15053).into();
            if udp_answers(dns).await {
                reached.push(format!("udp {dns}"));
            }
            reached
        })
        .join()
        .expect("probing from outside");
    assert!(
        from_outside.is_empty(),
        "reached from another namespace: {from_outside:?}"
    );

    // The same node's loopback reaches each; its veth address none.
    let inside = node
        .ns
        .spawn(move || async move {
            let mut reached = Vec::new();
            for port in ports {
                for ip in [[127, 0, 0, 1], [10, 213, 70, 1]] {
                    let addr: SocketAddr = (ip, port).into();
                    if tcp_connects(addr).await {
                        reached.push(format!("tcp {addr}"));
                    }
                }
            }
            if udp_answers(([127, 0, 0, 1], 15053).into()).await {
                reached.push("udp 127.0.0.1:15053".to_owned());
            }
            reached
        })
        .join()
        .expect("probing from inside");
    assert_eq!(
        inside,
        [
            "tcp 127.0.0.1:15000",
            "tcp 127.0.0.1:15001",
            "tcp 127.0.0.1:15053",
            "udp 127.0.0.1:15053"
        ]
    );
    assert_eq!(node.admin_get("/ready").map(|(s, _)| s), Ok(200));
}
