//! The kernel side and the daemon's edges: connects to a VIP reach the
//! service, the proxy's own connects are never redirected, nothing-left
//! behaviour per protocol, reload, and clear start-up errors.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use redirector_tests::{
    daemon::redirector_bin,
    istio::{destination_rule, service_entry},
    process,
    scenario::{Node, TIMEOUT, count, tcp_client, wait_until},
    tcp::TcpServer,
};

const VIP: &str = "240.240.0.10";

fn static_service(host: &str, vip: &str, port: u16, protocol: &str, endpoint: &str) -> String {
    let (ip, ep_port) = endpoint.split_once(':').unwrap();
    format!(
        "---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: {host}-{port}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  ports:
  - {{number: {port}, name: p{port}, protocol: {protocol}, targetPort: {ep_port}}}
  resolution: STATIC
  endpoints:
  - address: {ip}
"
    )
}

#[test]
fn connects_to_a_vip_reach_the_service_over_http_and_tcp() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let _tcp = TcpServer::start(&node.ns, "127.0.10.5:9000".parse().unwrap(), "tcp-east").unwrap();
    let config = static_service("mydb.com", VIP, 80, "HTTP", "127.0.10.1:8080")
        + &static_service("cache.test", "240.240.0.11", 6379, "TCP", "127.0.10.5:9000");
    node.start(&config, "us-east1", false);
    assert_eq!(node.bodies(VIP, 3), ["healthy: east"; 3]);
    let out = tcp_client(&node, "240.240.0.11:6379".parse().unwrap());
    assert!(out.status.success(), "{out:?}\n{}", node.log());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from tcp-east"
    );
    // Not a VIP: untouched, and unroutable in this namespace.
    let out = node.client("curl", &["-sS", "--max-time", "3", "http://240.240.0.99/"]);
    assert!(
        !out.status.success(),
        "a non-VIP address must not be served"
    );
}

#[test]
fn an_allocated_vip_is_shown_by_endpoints_and_served() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.a_record("east.test", [127, 0, 10, 1], 30);
    node.a_record("west.test", [127, 0, 10, 1], 30);
    let config = service_entry(
        None,
        ("east.test", "us-east1", 8080),
        ("west.test", "us-west1", 8080),
    );
    node.start(&config, "us-east1", false);
    let eps = node.endpoints();
    let svc = &eps["services"][0];
    assert_eq!(svc["host"], "mydb.com", "{eps:#}");
    assert_eq!(svc["vip_source"], "allocated", "{eps:#}");
    let vip = svc["vip"].as_str().unwrap().to_owned();
    assert!(vip.starts_with("240.240."), "{vip}");
    assert!(
        node.log()
            .contains(&format!("mydb.com:80 is served at VIP {vip}:80"))
    );
    assert_eq!(node.bodies(&vip, 2), ["healthy: east"; 2]);
}

#[test]
fn the_proxys_own_connects_are_never_redirected() {
    let mut node = Node::new();
    // Service A's endpoint address is service B's VIP. The daemon runs in
    // the attached cgroup, so if its upstream connect were redirected, A's
    // traffic would land on B.
    node.http("127.77.0.2:80", "direct");
    node.http("127.77.0.3:80", "b");
    let config = static_service("mydb.com", "127.77.0.1", 80, "HTTP", "127.77.0.2:80")
        + &static_service("b.test", "127.77.0.2", 80, "HTTP", "127.77.0.3:80");
    node.start(&config, "", true);
    assert_eq!(node.bodies("127.77.0.1", 3), ["healthy: direct"; 3]);
    // The app itself dialling B's VIP is redirected, so the VIP is live.
    assert_eq!(node.bodies("127.77.0.2", 2), ["healthy: b"; 2]);
}

#[test]
fn with_no_endpoint_left_http_answers_503_and_tcp_resets() {
    let mut node = Node::new();
    let config = static_service("mydb.com", VIP, 80, "HTTP", "127.0.10.1:8081")
        + &static_service("cache.test", "240.240.0.11", 6379, "TCP", "127.0.10.5:9001")
        + &destination_rule(1, "15s", "1m");
    node.start(&config, "", false);
    let (status, body) = node.curl(VIP).unwrap();
    assert_eq!(status, 503);
    assert!(body.starts_with("no healthy upstream"), "{body}");
    assert!(body.contains("refused"), "{body}");
    let out = tcp_client(&node, "240.240.0.11:6379".parse().unwrap());
    assert!(!out.status.success(), "{out:?}");
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reset") || err.contains("closed") || err.contains("EOF"),
        "{err}"
    );
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_error() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.http("127.0.10.2:8080", "west");
    node.start(
        &static_service("mydb.com", VIP, 80, "HTTP", "127.0.10.1:8080"),
        "",
        false,
    );
    assert_eq!(node.bodies(VIP, 2), ["healthy: east"; 2]);
    let pid = node.daemon.as_ref().unwrap().pid();
    node.write_config(&static_service(
        "mydb.com",
        VIP,
        80,
        "HTTP",
        "127.0.10.2:8080",
    ));
    process::signal(pid, libc::SIGHUP).unwrap();
    wait_until("the reload", TIMEOUT, || {
        node.log().contains("config reloaded")
    });
    assert_eq!(count(&node.bodies(VIP, 3), "healthy: west"), 3);
    node.write_config("kind: ServiceEntry\nspec: [this is not valid\n");
    process::signal(pid, libc::SIGHUP).unwrap();
    wait_until("the rejection", TIMEOUT, || {
        node.log().contains("config reload rejected")
    });
    assert!(
        node.log().contains("redirector.yaml:2:7"),
        "the error names the line:\n{}",
        node.log()
    );
    assert_eq!(count(&node.bodies(VIP, 3), "healthy: west"), 3);
}

/// Runs `redirector run` expecting it to fail at start; its stderr.
fn failed_start(node: &Node, args: &[String], wrapper: &[&str]) -> String {
    let mut cmd = match wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(redirector_bin());
            c
        }
        None => Command::new(redirector_bin()),
    };
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    node.ns.configure(&mut cmd);
    let mut child = cmd.spawn().expect("spawning redirector");
    let status = process::wait_timeout(&mut child, Duration::from_secs(20))
        .unwrap()
        .unwrap_or_else(|| {
            process::kill_and_reap(&mut child);
            panic!("redirector {args:?} did not exit")
        });
    let out = child.wait_with_output().unwrap();
    assert!(!status.success(), "redirector {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_flag(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    args[i + 1] = value.into();
    args
}

#[test]
fn start_up_errors_name_the_problem() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.write_config(&static_service(
        "mydb.com",
        VIP,
        80,
        "HTTP",
        "127.0.10.1:8080",
    ));
    let args = node.args("");

    let err = failed_start(
        &node,
        &with_flag(args.clone(), "--cgroup", "/sys/fs/cgroup/nope"),
        &[],
    );
    assert!(err.contains("/sys/fs/cgroup/nope: does not exist"), "{err}");
    let err = failed_start(&node, &with_flag(args.clone(), "--cgroup", "/tmp"), &[]);
    assert!(err.contains("not a cgroup v2 directory"), "{err}");

    // Not root: no capabilities at all.
    let err = failed_start(
        &node,
        &args,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
    );
    assert!(err.contains("lacks CAP_BPF"), "{err}");

    // Listener port taken inside the namespace.
    let taken = node.ns.spawn(|| async {
        TcpListener::bind("127.0.0.1:0").map(|l| (l.local_addr().unwrap().port(), l))
    });
    let (port, _listener) = taken.join().unwrap().unwrap();
    let err = failed_start(
        &node,
        &[args.clone(), vec!["--listen-port".into(), port.to_string()]].concat(),
        &[],
    );
    assert!(err.contains("is already in use"), "{err}");

    // A second daemon on the same pin dir.
    node.start(
        &static_service("mydb.com", VIP, 80, "HTTP", "127.0.10.1:8080"),
        "",
        false,
    );
    let err = failed_start(
        &node,
        &with_flag(
            args.clone(),
            "--config",
            node.config_path().to_str().unwrap(),
        ),
        &[],
    );
    assert!(
        err.contains("in use by another redirector") && err.contains("--take-over"),
        "{err}"
    );
    assert_eq!(
        node.bodies(VIP, 1),
        ["healthy: east"],
        "the first daemon is unharmed"
    );

    // A config error names file, line and field, and nothing starts.
    node.write_config(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: mydb.com\n  trafficPolicy:\n    connectionPool: {}\n",
    );
    let out = Command::new(redirector_bin())
        .args(["check", "--config"])
        .arg(node.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":7:") && err.contains("connectionPool"),
        "{err}"
    );
}

#[test]
fn datapath_only_mode_hands_vips_to_another_listener() {
    // What the benchmark does for Envoy, nginx and HAProxy: the same connect
    // hook, but the redirected connections go to their listener.
    let mut node = Node::new();
    node.http("127.0.0.1:15900", "peer-proxy");
    node.write_config(&static_service(
        "mydb.com",
        VIP,
        80,
        "HTTP",
        "127.0.10.1:8080",
    ));
    let mut args = node.args("");
    args.extend([
        "--listen-port".into(),
        "15900".into(),
        "--datapath-only".into(),
    ]);
    node.start_args(args);
    assert_eq!(node.bodies(VIP, 2), ["healthy: peer-proxy"; 2]);
    assert!(node.log().contains("datapath only"), "{}", node.log());
    // Killed, it leaves the VIPs going to the other proxy, which still
    // listens: its death is not the listeners' (the death watch is for a
    // daemon's own).
    let status = node.daemon.as_mut().unwrap().kill().unwrap();
    assert!(!status.success(), "{status}");
    assert_eq!(node.bodies(VIP, 2), ["healthy: peer-proxy"; 2]);
}
