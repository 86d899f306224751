//! The kernel's own datapath: the fast path that skips the proxy, fail-open
//! when the daemon is killed, takeover by the next daemon with no failed
//! connect in between, and `redirector cleanup`.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use redirector_common::{Life, map_names};
use redirector_tests::{
    cgroup, client,
    daemon::redirector_bin,
    istio::{destination_rule, service_entry},
    pki::TestCa,
    process,
    scenario::{Node, TIMEOUT, tcp_client, wait_until},
    tcp::TcpServer,
};
use serde_json::Value;

const VIP: &str = "240.240.0.30";
const PORT: u16 = 5432;
/// Concurrent load clients in the kill test.
const CLIENTS: usize = 4;

/// A TCP service with one endpoint per `(ip, region)`, all on port 9000,
/// optionally on the kernel datapath, with outlier detection ejecting after
/// `consecutive` failures for 5 minutes.
fn tcp_service(endpoints: &[(&str, &str)], kernel: bool, consecutive: u32) -> String {
    let annotation = if kernel {
        "  annotations:\n    redirector.dev/datapath: kernel\n"
    } else {
        ""
    };
    let endpoints: String = endpoints
        .iter()
        .map(|(ip, region)| format!("  - {{address: {ip}, locality: {region}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: pg
{annotation}spec:
  hosts: [pg.example]
  addresses: [{VIP}]
  resolution: STATIC
  ports:
  - {{number: {PORT}, name: tcp-pg, targetPort: 9000}}
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: pg
spec:
  host: pg.example
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: {consecutive}
      interval: 1s
      baseEjectionTime: 5m
"
    )
}

/// [`tcp_service`] with one endpoint, `ip`, and TLS origination to it
/// (`SIMPLE`, a fresh test CA's certificate in the node's directory).
fn tls_service(node: &Node, ip: &str) -> String {
    let ca_file = TestCa::new().write_ca(node.dir.path());
    tcp_service(&[(ip, "us-east1")], false, 5)
        + &format!(
            "    tls:\n      mode: SIMPLE\n      sni: pg.example\n      caCertificates: {}\n",
            ca_file.display()
        )
}

fn vip() -> std::net::SocketAddr {
    format!("{VIP}:{PORT}").parse().unwrap()
}

/// What `rdt-client --repeat` reported.
#[derive(Debug)]
struct Load {
    ok: u64,
    connect_failed: u64,
    broken: u64,
    replies: Value,
    summary: Value,
}

impl Load {
    fn replies_from(&self, name: &str) -> u64 {
        self.replies[format!("hello from {name}")]
            .as_u64()
            .unwrap_or(0)
    }
}

/// Starts `rounds` new connections to the VIP, one at a time,
/// `interval_ms` apart, stopping early once `until` exists; returns at once.
fn spawn_load(node: &Node, rounds: u64, interval_ms: u64, until: Option<&Path>) -> Child {
    let mut cmd = Command::new(client::rdt_client_bin());
    cmd.args(["tcp", &vip().to_string(), "--send", "ping"])
        .args(["--repeat", &rounds.to_string()])
        .args(["--interval-ms", &interval_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = until {
        cmd.arg("--until").arg(p);
    }
    node.cgroup.configure(&mut cmd);
    node.ns.configure(&mut cmd);
    cmd.spawn().expect("starting rdt-client")
}

/// Waits for a [`spawn_load`] client and reads its summary.
fn finish_load(mut child: Child, node: &Node) -> Load {
    let status = process::wait_timeout(&mut child, Duration::from_secs(120)).unwrap();
    if status.is_none() {
        process::kill_and_reap(&mut child);
        panic!("rdt-client did not finish\n{}", node.log());
    }
    let out = child.wait_with_output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rdt-client printed no summary ({e}): {out:?}\n{}",
            node.log()
        )
    });
    Load {
        ok: summary["ok"].as_u64().unwrap(),
        connect_failed: summary["connect_failed"].as_u64().unwrap(),
        broken: summary["broken"].as_u64().unwrap(),
        replies: summary["replies"].clone(),
        summary,
    }
}

fn load(node: &Node, rounds: u64, interval_ms: u64) -> Load {
    finish_load(spawn_load(node, rounds, interval_ms, None), node)
}

/// `redirector endpoints --output json` in the node's namespace, where the
/// apps are: with the daemon dead, that is where it looks for a listener.
fn endpoints(node: &Node) -> Value {
    let pin_dir = node.pins.path().display().to_string();
    let (ok, out, err) = run_redirector(
        node,
        &["endpoints", "--output", "json", "--pin-dir", &pin_dir],
    );
    assert!(ok, "redirector endpoints failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("endpoints JSON ({e}): {out}"))
}

fn service(eps: &Value) -> &Value {
    &eps["services"][0]
}

fn slot_endpoints(eps: &Value) -> Vec<String> {
    service(eps)["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap().to_owned())
        .collect()
}

/// (connect4, sock_ops) programs attached to the node's cgroup.
fn attached(node: &Node) -> (u32, u32) {
    (
        node.cgroup
            .attached_programs(cgroup::BPF_CGROUP_INET4_CONNECT)
            .unwrap(),
        node.cgroup
            .attached_programs(cgroup::BPF_CGROUP_SOCK_OPS)
            .unwrap(),
    )
}

fn kill_daemon(node: &mut Node) {
    let daemon = node.daemon.as_mut().expect("a daemon");
    let status = daemon.kill().expect("killing the daemon");
    assert!(!status.success(), "{status}");
}

/// How long the failed `connect()` of `rdt-client tcp` took by its own
/// clock (`… (after <n> ms)` in its error): the app's wait, without the
/// time a loaded machine takes to start the process.
fn connect_took(stderr: &str) -> Duration {
    let ms = stderr
        .rsplit_once("(after ")
        .and_then(|(_, rest)| rest.split_once(" ms)"))
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("no connect time in {stderr:?}"));
    Duration::from_millis(ms)
}

/// Runs `redirector <args>` in the node's namespace; (success, stdout,
/// stderr).
fn run_redirector(node: &Node, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(redirector_bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    node.ns.configure(&mut cmd);
    let out = cmd.output().expect("running redirector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`run_redirector`], with stdout and stderr together.
fn redirector(node: &Node, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run_redirector(node, args);
    (ok, out + &err)
}

#[test]
fn the_kernel_path_skips_the_proxy_and_ejects_a_refusing_endpoint() {
    let mut node = Node::new();
    let east = TcpServer::start(&node.ns, "127.0.40.1:9000".parse().unwrap(), "east").unwrap();
    let _west = TcpServer::start(&node.ns, "127.0.40.2:9000".parse().unwrap(), "west").unwrap();
    node.start(
        &tcp_service(
            &[("127.0.40.1", "us-east1"), ("127.0.40.2", "us-east1")],
            true,
            2,
        ),
        "us-east1",
        false,
    );
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["datapath"], "kernel", "{eps:#}");
    assert_eq!(service(&eps)["path_now"], "kernel", "{eps:#}");
    assert_eq!(
        slot_endpoints(&eps),
        ["127.0.40.1:9000", "127.0.40.2:9000"],
        "{eps:#}"
    );

    // Spread over both, and never through the proxy.
    let before = load(&node, 40, 5);
    assert_eq!(before.ok, 40, "{before:?}");
    assert!(
        before.replies_from("east") > 0 && before.replies_from("west") > 0,
        "{before:?}"
    );
    assert!(
        !node.log().contains("accepted"),
        "a kernel-path connect reached the proxy:\n{}",
        node.log()
    );

    // East refuses. The kernel cannot retry, so the app sees the refusals
    // until the daemon, told by sock_ops, ejects east.
    east.stop().unwrap();
    let during = load(&node, 60, 20);
    assert!(
        during.connect_failed >= 2,
        "east's refusals reach the app on the kernel path: {during:?}"
    );
    wait_until("east's ejection", TIMEOUT, || {
        node.endpoint("127.0.40.1")["outlier_check"] == "FAILED"
    });
    let east_row = node.endpoint("127.0.40.1");
    assert!(
        east_row["last_error"]
            .as_str()
            .unwrap()
            .contains("kernel datapath"),
        "{east_row:#}"
    );
    assert_eq!(slot_endpoints(&endpoints(&node)), ["127.0.40.2:9000"]);

    let after = load(&node, 40, 5);
    assert_eq!(after.connect_failed, 0, "{after:?}");
    assert_eq!(after.replies_from("west"), 40, "{after:?}");
}

#[test]
fn kill_9_under_load_fails_no_new_connection_and_a_restart_takes_over() {
    let mut node = Node::new();
    let east = TcpServer::start(&node.ns, "127.0.41.1:9000".parse().unwrap(), "east").unwrap();
    let _west = TcpServer::start(&node.ns, "127.0.41.2:9000".parse().unwrap(), "west").unwrap();
    let config = tcp_service(
        &[("127.0.41.1", "us-east1"), ("127.0.41.2", "us-west1")],
        false,
        5,
    );
    node.start(&config, "us-east1", false);
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["path_now"], "proxy", "{eps:#}");
    assert_eq!(eps["proxy_listening"], true, "{eps:#}");
    let first_pid = node.daemon.as_ref().unwrap().pid();

    let stop = node.dir.path().join("stop-load");
    // Four clients, each one connection at a time.
    let clients: Vec<Child> = (0..CLIENTS)
        .map(|_| spawn_load(&node, 100_000, 1, Some(&stop)))
        .collect();
    // Each phase lasts until east has accepted `n` more connections (about
    // `n / CLIENTS` per client), however fast the machine is.
    let more_load = |what: &str, n: u64| {
        let until = east.accepted() + n;
        wait_until(&format!("{n} more connections {what}"), TIMEOUT, || {
            east.accepted() >= until
        });
    };
    more_load("through the proxy", 400);
    kill_daemon(&mut node);
    // Dead: the kernel serves on its own, from the published slots.
    more_load("with the daemon dead", 400);
    let eps = endpoints(&node);
    assert_eq!(eps["daemon_running"], false, "{eps:#}");
    assert_eq!(eps["datapath_attached"], true, "{eps:#}");
    assert_eq!(attached(&node), (1, 1));
    assert_eq!(eps["proxy_listening"], false, "{eps:#}");
    assert_eq!(service(&eps)["path_now"], "kernel (fail-open)", "{eps:#}");
    node.start(&config, "us-east1", false);
    more_load("after the restart", 800);
    std::fs::write(&stop, "").unwrap();
    let results: Vec<Load> = clients.into_iter().map(|c| finish_load(c, &node)).collect();
    let second = node.daemon.as_ref().unwrap();
    assert!(
        second
            .log()
            .contains(&format!("taking over the datapath pid {first_pid}")),
        "{}",
        second.log()
    );
    assert!(
        second
            .log()
            .contains(&format!("replacing those of pid {first_pid}")),
        "{}",
        second.log()
    );
    for result in &results {
        eprintln!("load across kill -9 and restart: {}", result.summary);
        assert_eq!(
            result.connect_failed, 0,
            "new connections failed: {:?}",
            result.summary
        );
        // One connection at a time: at most the one in flight at the kill.
        assert!(result.broken <= 1, "{:?}", result.summary);
        assert!(
            result.ok > 300,
            "too little load to prove much: {:?}",
            result.summary
        );
        assert_eq!(
            result.replies_from("east"),
            result.ok,
            "the local region answers throughout: {:?}",
            result.summary
        );
    }
    // The first daemon's programs are gone, not running beside the new ones.
    wait_until("the old programs to detach", TIMEOUT, || {
        attached(&node) == (1, 1)
    });
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["path_now"], "proxy", "{eps:#}");
    // The second daemon serves: its proxy is in the path again.
    let out = tcp_client(&node, vip());
    assert!(out.status.success(), "{out:?}");
    wait_until("the new proxy to carry a connection", TIMEOUT, || {
        node.log().contains("accepted")
    });
}

#[test]
fn a_dead_daemons_last_ejections_steer_fail_open_connects() {
    let mut node = Node::new();
    // East, the local region, is down; west answers.
    node.http("127.0.42.2:80", "west");
    let config = service_entry(
        Some("240.240.0.42"),
        ("127.0.42.1", "us-east1", 80),
        ("127.0.42.2", "us-west1", 80),
    ) + &destination_rule(1, "1s", "5m");
    node.start(&config, "us-east1", false);
    let eps = endpoints(&node);
    assert_eq!(slot_endpoints(&eps), ["127.0.42.1:80"], "{eps:#}");
    // Through the proxy, the refusal is retried on west and ejects east.
    assert_eq!(node.bodies("240.240.0.42", 1), ["healthy: west"]);
    wait_until("east's ejection", TIMEOUT, || {
        node.endpoint("127.0.42.1")["outlier_check"] == "FAILED"
    });
    let eps = endpoints(&node);
    assert_eq!(slot_endpoints(&eps), ["127.0.42.2:80"], "{eps:#}");

    kill_daemon(&mut node);
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["path_now"], "kernel (fail-open)", "{eps:#}");
    // The ejection outlives the daemon: HTTP goes straight to west.
    assert_eq!(node.bodies("240.240.0.42", 5), ["healthy: west"; 5]);

    // A second daemon takes over; while one runs, cleanup refuses.
    node.start(&config, "us-east1", false);
    assert_eq!(node.bodies("240.240.0.42", 2), ["healthy: west"; 2]);
    let pin_dir = node.pins.path().display().to_string();
    let (ok, out) = redirector(&node, &["cleanup", "--pin-dir", &pin_dir]);
    assert!(!ok && out.contains("in use by another redirector"), "{out}");
    // Its outlier state started fresh: east was tried, and ejected again.
    wait_until("east's ejection by the second daemon", TIMEOUT, || {
        node.endpoint("127.0.42.1")["outlier_check"] == "FAILED"
    });

    // SIGTERM leaves the datapath serving, as a kill does.
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}\n{}", node.log());
    assert!(
        node.log().contains("the kernel datapath stays attached"),
        "{}",
        node.log()
    );
    let eps = endpoints(&node);
    assert_eq!(eps["datapath_attached"], true, "{eps:#}");
    assert_eq!(service(&eps)["path_now"], "kernel (fail-open)", "{eps:#}");
    // What the second daemon published before it stopped.
    assert_eq!(slot_endpoints(&eps), ["127.0.42.2:80"], "{eps:#}");
    assert_eq!(node.bodies("240.240.0.42", 3), ["healthy: west"; 3]);

    // cleanup detaches: the VIP is not redirected any more.
    let (ok, out) = redirector(&node, &["cleanup", "--pin-dir", &pin_dir]);
    assert!(ok, "{out}");
    // connect4, sock_ops, getpeername4, connect6, getpeername6, DNS
    // capture's sendmsg4, recvmsg4, sendmsg6, recvmsg6 and egress, and
    // sock_create (which reports new network namespaces).
    assert!(out.contains("detached 11 program link(s)"), "{out}");
    assert!(!node.pins.path().exists());
    wait_until("the programs to detach", TIMEOUT, || {
        attached(&node) == (0, 0)
            && node
                .cgroup
                .attached_programs(cgroup::BPF_CGROUP_INET6_CONNECT)
                .unwrap()
                == 0
    });
    wait_until("the VIP to be left alone", TIMEOUT, || {
        node.curl("240.240.0.42").is_err()
    });
    let (ok, out) = redirector(&node, &["cleanup", "--pin-dir", &pin_dir]);
    assert!(ok && out.contains("nothing to remove"), "{out}");
}

#[test]
fn without_a_proxy_tls_origination_fails_fast_instead_of_falling_back_to_plaintext() {
    let mut node = Node::new();
    let _plain = TcpServer::start(&node.ns, "127.0.43.1:9000".parse().unwrap(), "plain").unwrap();
    let config = tls_service(&node, "127.0.43.1");
    node.start(&config, "us-east1", false);
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["tls_origination"], true, "{eps:#}");
    assert!(slot_endpoints(&eps).is_empty(), "{eps:#}");
    kill_daemon(&mut node);
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["path_now"], "rejected", "{eps:#}");
    let out = tcp_client(&node, vip());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    let took = connect_took(&stderr);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// The serving daemon's entry in the pinned death-watch map.
fn life(node: &Node) -> Array<MapData, Life> {
    let pin = node.pins.path().join("v3").join(map_names::LIFE);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    Array::try_from(Map::Array(data)).expect("an array of Life")
}

/// The death watch: once a daemon serves it is registered in `RD_LIFE_V3`;
/// while that entry says it is dying, connect4 takes its listeners for
/// gone even though they still listen (seen through a TLS-originating
/// service, whose fail-open is a distinct `EPERM`); and a `kill -9` marks
/// it dying from the kernel's own signal path.
#[test]
fn a_daemon_the_kernel_is_killing_is_failed_open_before_its_listeners_close() {
    let mut node = Node::new();
    let _plain = TcpServer::start(&node.ns, "127.0.44.1:9000".parse().unwrap(), "plain").unwrap();
    let config = tls_service(&node, "127.0.44.1");
    node.start(&config, "us-east1", false);
    assert!(
        node.log().contains("watching for this daemon's death"),
        "{}",
        node.log()
    );
    let pid = node.daemon.as_ref().unwrap().pid();
    let mut map = life(&node);
    let serving = map.get(&0, 0).unwrap();
    assert_eq!((serving.serving_pid, serving.dying_pid), (pid, 0));
    // The daemon's PID namespace (here the test's own).
    let pidns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    assert_eq!(serving.pidns_ino, pidns.ino());
    let refused = |node: &Node| {
        let out = tcp_client(node, vip());
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted")
    };
    assert!(!refused(&node), "the proxy takes the connect");

    // Marked dying (as signal_deliver would): its listening proxy is
    // skipped, and this service, which cannot fail open, refuses at once.
    let dying = Life {
        dying_pid: pid,
        ..serving
    };
    map.set(0, dying, 0).unwrap();
    assert!(refused(&node), "{}", node.log());
    // Another pid's death means nothing to this daemon.
    let other = Life {
        dying_pid: pid + 1,
        ..serving
    };
    map.set(0, other, 0).unwrap();
    assert!(!refused(&node), "{}", node.log());
    map.set(0, serving, 0).unwrap();

    // The kernel marks it on its own when the daemon is killed.
    kill_daemon(&mut node);
    assert_eq!(map.get(&0, 0).unwrap(), dying);
    // A new daemon registers itself, not dying.
    node.start(&config, "us-east1", false);
    let next = node.daemon.as_ref().unwrap().pid();
    assert_ne!(next, pid);
    assert_eq!(
        map.get(&0, 0).unwrap(),
        Life {
            serving_pid: next,
            ..serving
        }
    );
    assert!(!refused(&node), "the new proxy takes the connect");
    let registered = map.get(&0, 0).unwrap();

    // The pid is read in the registered PID namespace: a process of that
    // number elsewhere (a daemon in a container names its own pid) is not
    // the daemon. Another namespace: the one `unshare --pid` makes.
    let mut outer = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sleep", "60"])
        .spawn()
        .expect("unshare");
    let children = format!("/proc/{}/ns/pid_for_children", outer.id());
    let mut other_ns = 0;
    wait_until("unshare to make its PID namespace", TIMEOUT, || {
        other_ns = std::fs::metadata(&children).map_or(0, |m| m.ino());
        other_ns != 0 && other_ns != pidns.ino()
    });
    for (ino, marked) in [(other_ns, false), (pidns.ino(), true)] {
        let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
        let victim_pid = victim.id();
        let watched = Life {
            serving_pid: victim_pid,
            dying_pid: 0,
            pidns_ino: ino,
            ..registered
        };
        map.set(0, watched, 0).unwrap();
        process::kill_and_reap(&mut victim);
        let after = map.get(&0, 0).unwrap();
        assert_eq!(after.dying_pid == victim_pid, marked, "{after:?}");
    }
    process::kill_and_reap(&mut outer);
    map.set(0, registered, 0).unwrap();
}

#[test]
fn a_reload_that_turns_on_tls_origination_drops_the_services_slot_table() {
    let mut node = Node::new();
    let _plain = TcpServer::start(&node.ns, "127.0.43.1:9000".parse().unwrap(), "plain").unwrap();
    let plain = tcp_service(&[("127.0.43.1", "us-east1")], false, 5);
    node.start(&plain, "us-east1", false);
    assert!(!slot_endpoints(&endpoints(&node)).is_empty());
    let ca_file = TestCa::new().write_ca(node.dir.path());
    node.reload(
        &format!(
            "{plain}    tls:\n      mode: SIMPLE\n      sni: pg.example\n      caCertificates: {}\n",
            ca_file.display()
        ),
        "config reloaded",
    );
    // A table left behind would send a failing-open connect in plain text
    // to an endpoint that now expects TLS; it must be gone, not just unused.
    let eps = endpoints(&node);
    assert_eq!(service(&eps)["tls_origination"], true, "{eps:#}");
    assert!(slot_endpoints(&eps).is_empty(), "{eps:#}");
}

#[test]
fn a_black_holed_endpoint_on_the_kernel_path_times_out_at_the_connect_timeout() {
    let (node, _west, _hole) = black_hole_node(45, None);
    // The app would wait 30 s; the service's connect timeout (10 s,
    // Istio's default) ends the handshake first.
    let out = connect_giving_up_after(&node, 30_000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("timed out"), "{stderr}");
    let took = connect_took(&stderr);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "the connect took {took:?}"
    );
    black_hole_ejected_for_its_timeout(&node);
}

/// A node whose local endpoint, 10.99.0.3, is a black hole (10.99.0.3 is
/// on a link, but its neighbour entry points at a MAC nobody has: SYNs
/// leave and nothing ever answers) with `127.0.<net>.2` answering in
/// another region, on the kernel path, ejecting at the first failure, with
/// the service's `connectTimeout` set to `connect_timeout` (else Istio's
/// default, 10 s).
fn black_hole_node(
    net: u8,
    connect_timeout: Option<&str>,
) -> (Node, TcpServer, redirector_tests::netns::Netns) {
    let mut node = Node::new();
    let west_ip = format!("127.0.{net}.2");
    let west =
        TcpServer::start(&node.ns, format!("{west_ip}:9000").parse().unwrap(), "west").unwrap();
    let hole = redirector_tests::netns::Netns::new("hole").unwrap();
    let link =
        redirector_tests::netns::link(&node.ns, "10.99.0.1/24", &hole, "10.99.0.2/24").unwrap();
    node.ns
        .ip([
            "neigh",
            "replace",
            "10.99.0.3",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            &link.a_dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    let mut config = tcp_service(
        &[("10.99.0.3", "us-east1"), (&west_ip, "us-west1")],
        true,
        1,
    );
    if let Some(t) = connect_timeout {
        config += &format!("    connectionPool:\n      tcp:\n        connectTimeout: {t}\n");
    }
    node.start(&config, "us-east1", false);
    assert_eq!(slot_endpoints(&endpoints(&node)), ["10.99.0.3:9000"]);
    (node, west, hole)
}

/// Waits for [`black_hole_node`]'s black hole to be ejected for a timeout
/// on the kernel path, and checks the VIP then reaches west.
fn black_hole_ejected_for_its_timeout(node: &Node) {
    wait_until("the black hole's ejection", TIMEOUT, || {
        node.endpoint("10.99.0.3")["outlier_check"] == "FAILED"
    });
    let row = node.endpoint("10.99.0.3");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out (kernel datapath)"),
        "{row:#}"
    );
    let out = tcp_client(node, vip());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from west"
    );
}

/// `rdt-client tcp VIP`, which gives up on its connect after `ms` by
/// itself.
fn connect_giving_up_after(node: &Node, ms: u64) -> std::process::Output {
    client::Client::new(&node.ns, client::rdt_client_bin())
        .args([
            "tcp",
            &vip().to_string(),
            "--connect-timeout-ms",
            &ms.to_string(),
        ])
        .cgroup(&node.cgroup)
        .timeout(Duration::from_secs(60))
        .run()
        .unwrap()
}

#[test]
fn connects_the_app_abandons_itself_eject_nothing_on_the_kernel_path() {
    // The service waits 5 s for a handshake; the apps give up first: at
    // once (Happy Eyeballs losers) or after 1.5 s, when one SYN has been
    // retransmitted. None of that is the endpoint's doing, and with
    // `consecutive5xxErrors: 1` a single counted failure would eject it.
    let (node, _west, _hole) = black_hole_node(46, Some("5s"));
    let shared = &node;
    std::thread::scope(|s| {
        let clients: Vec<_> = [30, 30, 30, 30, 1500, 1500, 1500, 1500]
            .into_iter()
            .map(|ms| s.spawn(move || connect_giving_up_after(shared, ms)))
            .collect();
        for c in clients {
            let out = c.join().unwrap();
            assert!(!out.status.success(), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("timed out"), "{stderr}");
        }
    });
    // A failure wakes the daemon at once; give a loaded machine time to
    // read the ring anyway, then look.
    std::thread::sleep(Duration::from_secs(1));
    let row = node.endpoint("10.99.0.3");
    assert_ne!(row["outlier_check"], "FAILED", "{row:#}\n{}", node.log());
    assert_eq!(slot_endpoints(&endpoints(&node)), ["10.99.0.3:9000"]);

    // The endpoint's own failure still counts: an app that waits sees the
    // service's connect timeout, and the black hole is ejected.
    let out = connect_giving_up_after(&node, 30_000);
    let took = connect_took(&String::from_utf8_lossy(&out.stderr));
    assert!(took >= Duration::from_secs(4), "the connect took {took:?}");
    wait_until("the black hole's ejection", TIMEOUT, || {
        node.endpoint("10.99.0.3")["outlier_check"] == "FAILED"
    });
}

#[test]
fn a_connect_timeout_below_the_first_retransmission_timeout_still_ejects() {
    // 500 ms, less than the first SYN retransmission timeout (1 s): the
    // kernel clamps its timer to the connect timeout and gives the
    // handshake up early. The retransmission timer's verdict (not a count
    // of retransmissions, nor an answer) is what makes it the endpoint's
    // failure.
    let (node, _west, _hole) = black_hole_node(47, Some("500ms"));
    let out = connect_giving_up_after(&node, 30_000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    let took = connect_took(&stderr);
    assert!(took < Duration::from_secs(5), "the connect took {took:?}");
    black_hole_ejected_for_its_timeout(&node);
}
