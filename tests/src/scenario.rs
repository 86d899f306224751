//! One node for a test: a network namespace with no route off the box, a
//! child cgroup the daemon attaches to, a real DNS server, HTTP endpoints
//! on loopback addresses, and the daemon; on demand, pods
//! ([`Node::pods`]) and endpoint namespaces they reach through the node
//! ([`Node::endpoint_ns`]). Drop tears it all down in order
//! (daemon first), also when the test panics.
//!
//! The Istio documents the tests give the daemon are in [`crate::istio`];
//! the HTTPS variant of the node in [`crate::origination`].

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Output,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::{
    cgroup::TestCgroup,
    client::{self, Client},
    daemon::{Daemon, DaemonOptions, PinDirGuard, redirector_bin},
    dns::DnsServer,
    http::HttpServer,
    netns::{self, Netns},
    pod::{PodNetwork, PodNetworkOptions},
    privilege,
    tempdir::TempDir,
};

pub const DNS: &str = "127.0.0.1:53";
/// The daemon's admin port (its default).
pub const ADMIN: &str = "127.0.0.1:15000";
/// How long the tests wait for anything that should happen (a daemon
/// ready, a reload applied, an ejection, an answer): generous, since a
/// loaded 2-core machine can be slow, and never asserted as a duration.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Node {
    // Field order is drop order: the daemon goes before what it uses.
    pub daemon: Option<Daemon>,
    /// Made by the first [`Node::pods`].
    pods: OnceLock<PodNetwork>,
    pub servers: Vec<HttpServer>,
    pub dns: DnsServer,
    pub pins: PinDirGuard,
    pub cgroup: TestCgroup,
    pub dir: TempDir,
    pub ns: Netns,
}

impl Node {
    pub fn new() -> Node {
        privilege::require_root();
        let ns = Netns::new("node").expect("creating the node namespace");
        let dns = DnsServer::start(&ns, DNS.parse().unwrap()).expect("starting the DNS server");
        Node {
            daemon: None,
            pods: OnceLock::new(),
            servers: Vec::new(),
            dns,
            pins: PinDirGuard::for_test(),
            cgroup: TestCgroup::new().expect("creating the test cgroup"),
            dir: TempDir::new("node").expect("creating a temp dir"),
            ns,
        }
    }

    /// An HTTP endpoint answering `healthy: <name>` on `addr` (loopback).
    pub fn http(&mut self, addr: &str, name: &str) -> usize {
        let server = HttpServer::start(&self.ns, addr.parse().unwrap(), name)
            .unwrap_or_else(|e| panic!("starting HTTP server {name} on {addr}: {e:#}"));
        self.servers.push(server);
        self.servers.len() - 1
    }

    /// The node's pod network ([`crate::pod`]), set up on first use:
    /// cluster DNS, forwarding, then the bridge with the first pod. Clone
    /// it (cheap) to keep it across `&mut` uses of the node, such as
    /// [`Node::start`].
    pub fn pods(&self) -> &PodNetwork {
        self.pods.get_or_init(|| {
            PodNetwork::new(
                &self.ns,
                &self.cgroup,
                &self.dns,
                PodNetworkOptions::default(),
            )
            .unwrap_or_else(|e| panic!("setting up the node's pod network: {e:#}"))
        })
    }

    /// A namespace for endpoints, joined to the node by veth (`node_cidr`
    /// on the node's end, `cidr` on its own, say `10.213.1.1/24` and
    /// `10.213.1.2/24`), with the pod subnet routed back through the node
    /// (so it sets up [`Node::pods`]).
    pub fn endpoint_ns(&self, role: &str, node_cidr: &str, cidr: &str) -> Netns {
        let ns = Netns::new(role).unwrap_or_else(|e| panic!("creating namespace {role}: {e:#}"));
        netns::link(&self.ns, node_cidr, &ns, cidr)
            .unwrap_or_else(|e| panic!("linking {role} to the node: {e:#}"));
        let via = node_cidr
            .split('/')
            .next()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("{node_cidr} is not an IPv4 address/prefix"));
        self.pods()
            .route_back(&ns, via)
            .unwrap_or_else(|e| panic!("routing the pods back from {role}: {e:#}"));
        ns
    }

    pub fn a_record(&self, name: &str, ip: [u8; 4], ttl: u32) {
        self.dns
            .set_a(name, &[Ipv4Addr::from(ip)], ttl)
            .expect("setting an A record");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("redirector.yaml")
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).expect("writing the config");
    }

    pub fn args(&self, locality: &str) -> Vec<String> {
        vec![
            "run".into(),
            "--config".into(),
            self.config_path().display().to_string(),
            "--cgroup".into(),
            self.cgroup.path().display().to_string(),
            "--locality".into(),
            locality.into(),
            "--nameserver".into(),
            DNS.into(),
            "--pin-dir".into(),
            self.pins.path().display().to_string(),
            "--log-level".into(),
            "redirector_user=debug,info".into(),
        ]
    }

    /// Starts the daemon with `yaml`; the daemon process stays outside the
    /// attached cgroup unless `in_cgroup`.
    pub fn start(&mut self, yaml: &str, locality: &str, in_cgroup: bool) {
        self.start_with_env(yaml, locality, in_cgroup, &[]);
    }

    /// Like [`Node::start`], with environment variables for the daemon.
    pub fn start_with_env(
        &mut self,
        yaml: &str,
        locality: &str,
        in_cgroup: bool,
        env: &[(&str, &str)],
    ) {
        self.write_config(yaml);
        let daemon = Daemon::start(DaemonOptions {
            netns: &self.ns,
            cgroup: in_cgroup.then_some(&self.cgroup),
            args: self.args(locality),
            ready_timeout: TIMEOUT,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
        self.daemon = Some(daemon);
    }

    /// Starts the daemon with exactly `args` (say, [`Node::args`] and more
    /// flags), outside the attached cgroup.
    pub fn start_args(&mut self, args: Vec<String>) {
        self.daemon = Some(start_daemon(&self.ns, args));
    }

    /// Writes `yaml` as the config, which the daemon notices by itself
    /// (it watches its config file), and waits for it to log `outcome`
    /// (`config reloaded` or `config reload rejected`) once more than
    /// before.
    ///
    /// No SIGHUP on top: the daemon would handle the same edit twice (a
    /// rejected one is rejected again when the watcher sees it), and the
    /// tests count reloads. `datapath.rs` covers SIGHUP.
    pub fn reload(&self, yaml: &str, outcome: &str) {
        let before = self.log().matches(outcome).count();
        self.write_config(yaml);
        wait_until(outcome, TIMEOUT, || {
            self.log().matches(outcome).count() > before
        });
    }

    pub fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(super::daemon::Daemon::log)
            .unwrap_or_default()
    }

    /// Runs a client process inside the namespace and the attached cgroup.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        client::run(&self.ns, Some(&self.cgroup), program, args, TIMEOUT)
            .unwrap_or_else(|e| panic!("running {program} {args:?}: {e:#}"))
    }

    /// `GET http://mydb.com/` in the app's position, with the name pinned to
    /// `vip` as DNS capture would; (HTTP status, body), or what curl said.
    pub fn curl(&self, vip: &str) -> Result<(u16, String), String> {
        client::http_get(
            &self.ns,
            Some(&self.cgroup),
            "mydb.com",
            vip,
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("running curl: {e:#}"))
    }

    /// `n` requests that must all succeed with 200; their bodies.
    pub fn bodies(&self, vip: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| match self.curl(vip) {
                Ok((200, body)) => body,
                other => panic!(
                    "request {i} to mydb.com at {vip}: {other:?}\ndaemon log:\n{}",
                    self.log()
                ),
            })
            .collect()
    }

    /// `redirector endpoints --output json`, read from the pinned maps.
    pub fn endpoints(&self) -> serde_json::Value {
        self.report("endpoints")
    }

    /// `redirector <command> --output json` (`endpoints`, `pods`) on the
    /// node's pin directory.
    pub fn report(&self, command: &str) -> serde_json::Value {
        let out = std::process::Command::new(redirector_bin())
            .args([command, "--output", "json", "--pin-dir"])
            .arg(self.pins.path())
            .output()
            .unwrap_or_else(|e| panic!("running redirector {command}: {e}"));
        assert!(
            out.status.success(),
            "redirector {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("redirector {command}'s JSON: {e}"))
    }

    /// The VIP the daemon gave `host` (explicit or allocated), from the
    /// services of `redirector endpoints`.
    pub fn vip(&self, host: &str) -> String {
        let all = self.endpoints();
        let service = all["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == host)
            .unwrap_or_else(|| panic!("no service {host} in {all:#}"));
        service["vip"].as_str().expect("a VIP").to_owned()
    }

    /// `GET http://127.0.0.1:15000<path>` (the admin port) from inside the
    /// node's namespace, not in the redirected cgroup; (status, body), or
    /// curl's error.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let out = client::run(
            &self.ns,
            None,
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{ADMIN}{path}"),
            ],
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("running curl: {e:#}"));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("curl's status line");
        Ok((
            code.trim().parse().expect("an HTTP status"),
            body.to_owned(),
        ))
    }

    /// `/metrics` of the admin port.
    pub fn metrics(&self) -> String {
        match self.admin_get("/metrics") {
            Ok((200, body)) => body,
            other => panic!("/metrics: {other:?}\n{}", self.log()),
        }
    }

    /// TCP connections in the node's namespace that are established to
    /// `addr` (say, the proxy's pooled connections to an endpoint).
    pub fn established_to(&self, addr: &str) -> usize {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns.name(),
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .arg(format!("dst {addr}"))
            .output()
            .expect("running ss");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// The endpoint row whose configured address is `address`.
    pub fn endpoint(&self, address: &str) -> serde_json::Value {
        let all = self.endpoints();
        all["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == address)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {address} in {all:#}"))
    }
}

impl Default for Node {
    fn default() -> Node {
        Node::new()
    }
}

impl Node {
    /// `rdt-load` in the app's position against `vip`:80 (Host mydb.com):
    /// `rps` requests per second for `secs` seconds over at most
    /// `connections` connections; (status, served_by) per request.
    pub fn load(&self, vip: &str, rps: u32, secs: f64, connections: u32) -> Vec<(u16, String)> {
        let mut cmd = std::process::Command::new(client::rdt_load_bin());
        self.ns.configure(&mut cmd);
        self.cgroup.configure(&mut cmd);
        client::rdt_load(
            cmd,
            vip,
            rps,
            secs,
            &["--connections", &connections.to_string()],
        )
        .iter()
        .map(|v| {
            let status = v["status"].as_u64().expect("status") as u16;
            (
                status,
                v["served_by"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
    }
}

/// A daemon in `ns`, outside the attached cgroup, with exactly `args`.
pub fn start_daemon(ns: &Netns, args: Vec<String>) -> Daemon {
    Daemon::start(DaemonOptions {
        netns: ns,
        cgroup: None,
        args,
        ready_timeout: TIMEOUT,
        env: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"))
}

/// Polls `cond` until true, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP client (`rdt-client`) in the app's position.
pub fn tcp_client(node: &Node, addr: SocketAddr) -> Output {
    Client::new(&node.ns, client::rdt_client_bin())
        .args(["tcp", &addr.to_string(), "--send", "ping"])
        .cgroup(&node.cgroup)
        .timeout(TIMEOUT)
        .run()
        .expect("running rdt-client")
}

/// The value of the series `series` (name with its labels, as printed)
/// in a `/metrics` text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// How many of `bodies` are exactly `needle`.
pub fn count(bodies: &[String], needle: &str) -> usize {
    bodies.iter().filter(|b| b.as_str() == needle).count()
}

/// Every one of `statuses` (HTTP statuses, 0: no answer) is a 200, and
/// there are `expected` of them; else says which failed, and `log`.
pub fn assert_all_ok(what: &str, statuses: &[u64], expected: usize, log: &str) {
    let failed: Vec<(usize, u64)> = statuses
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| *s != 200)
        .collect();
    assert_eq!(statuses.len(), expected, "{what}");
    assert!(
        failed.is_empty(),
        "{what}: failed requests (index, status): {failed:?}\n{log}"
    );
}
