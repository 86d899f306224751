//! Proves the test bed itself before anything relies on it: namespaces
//! joined by veth, the HTTP/TCP/DNS servers and their faults, clients in
//! cgroups, the daemon harness, pods made by the real CNI plugins (address,
//! route, cluster DNS, cgroup, a chained plugin's view, DEL, 100 pods
//! without a leak), and that Drop and the sweep leave nothing behind. Root
//! only; traffic stays inside the namespaces created here (10.213.0.0/16,
//! the pods' 10.244.0.0/24 and cluster DNS 10.96.0.10 inside a node's
//! namespace) and their loopback.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use hickory_resolver::{
    Resolver,
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
};
use redirector_tests::{
    cgroup::{TestCgroup, cgroup2_root},
    client::{self, Client, rdt_client_bin},
    cni::PluginError,
    daemon::{Daemon, DaemonOptions, PinDirGuard, pin_dir_for_test, redirector_bin},
    dns::DnsServer,
    http::HttpServer,
    istio::mydb_entry,
    names,
    netns::{Netns, link},
    pod::{CLUSTER_DNS, CNI_PLUGIN_DIR, Pod, REDIRECTOR_PLUGIN},
    privilege::require_root,
    process,
    scenario::{Node, TIMEOUT as NODE_TIMEOUT, wait_until},
    sweep::sweep_stale,
    tcp::TcpServer,
    tempdir::TempDir,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// Two namespaces joined by a veth pair: (server at .1, client at .2).
fn pair(subnet: u8) -> (Netns, Netns) {
    let server = Netns::new("server").expect("creating the server namespace");
    let client = Netns::new("client").expect("creating the client namespace");
    link(
        &server,
        &format!("10.213.{subnet}.1/24"),
        &client,
        &format!("10.213.{subnet}.2/24"),
    )
    .expect("linking the namespaces");
    (server, client)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `curl url` from `ns`: (status code, body) or the failed Output.
fn curl(ns: &Netns, url: &str) -> Result<(u16, String), Output> {
    let out = client::run(
        ns,
        None,
        "curl",
        &["-sS", "-m", "5", "-w", "\n%{http_code}", url],
        TIMEOUT,
    )
    .expect("running curl");
    if !out.status.success() {
        return Err(out);
    }
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').expect("curl -w output");
    Ok((code.parse().expect("an HTTP status"), body.to_owned()))
}

fn rdt_client(ns: &Netns, args: &[&str]) -> Output {
    let bin = rdt_client_bin();
    client::run(ns, None, bin.to_str().expect("UTF-8 path"), args, TIMEOUT)
        .expect("running rdt-client")
}

#[test]
fn http_server_over_veth() {
    require_root();
    let (server_ns, client_ns) = pair(1);
    let server = HttpServer::start(&server_ns, addr("10.213.1.1:8080"), "alpha")
        .expect("starting the HTTP server");
    let url = "http://10.213.1.1:8080/";

    assert_eq!(
        curl(&client_ns, url).expect("curl"),
        (200, "healthy: alpha".to_owned())
    );

    // Keep-alive: two requests in one curl run share one connection.
    let out = client::run(
        &client_ns,
        None,
        "curl",
        &[
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} ",
            url,
            url,
        ],
        TIMEOUT,
    )
    .expect("running curl");
    assert_eq!(
        text(&out.stdout),
        "1 0 ",
        "curl should reuse the connection: {out:?}"
    );

    server.set_status(503).expect("set_status");
    assert_eq!(
        curl(&client_ns, url).expect("curl"),
        (503, "503 from alpha".to_owned())
    );
    server.set_status(200).expect("set_status");
    assert_eq!(server.requests(), 4);

    server.stop().expect("stopping the server");
    let failed = curl(&client_ns, url).expect_err("curl after stop() should fail");
    assert_eq!(
        failed.status.code(),
        Some(7),
        "curl exit 7 = could not connect: {failed:?}"
    );
    let refused = rdt_client(&client_ns, &["tcp", "10.213.1.1:8080"]);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("Connection refused"),
        "a stopped server refuses connects: {refused:?}"
    );

    server.restart().expect("restarting the server");
    assert_eq!(
        curl(&client_ns, url).expect("curl after restart"),
        (200, "healthy: alpha".to_owned())
    );
    assert_eq!(server.requests(), 5);
}

#[test]
fn http_server_on_loopback_with_picked_port() {
    require_root();
    let ns = Netns::new("loopback").expect("creating a namespace");
    let server =
        HttpServer::start(&ns, addr("127.0.0.7:0"), "local").expect("starting the HTTP server");
    assert_eq!(server.addr().ip(), IpAddr::from([127, 0, 0, 7]));
    assert_ne!(server.addr().port(), 0);
    let url = format!("http://{}/", server.addr());
    assert_eq!(
        curl(&ns, &url).expect("curl"),
        (200, "healthy: local".to_owned())
    );

    server.stop().expect("stop");
    server.restart().expect("restart on the same picked port");
    assert_eq!(
        curl(&ns, &url).expect("curl after restart"),
        (200, "healthy: local".to_owned())
    );
}

#[test]
fn http_server_over_ipv6_veth() {
    require_root();
    let server_ns = Netns::new("server6").expect("creating the server namespace");
    let client_ns = Netns::new("client6").expect("creating the client namespace");
    link(
        &server_ns,
        "fd00:213:5::1/64",
        &client_ns,
        "fd00:213:5::2/64",
    )
    .expect("linking over IPv6");
    let _server = HttpServer::start(&server_ns, addr("[fd00:213:5::1]:8080"), "six")
        .expect("starting the HTTP server");
    assert_eq!(
        curl(&client_ns, "http://[fd00:213:5::1]:8080/").expect("curl over IPv6"),
        (200, "healthy: six".to_owned())
    );
}

#[test]
fn tcp_server_greets_and_echoes() {
    require_root();
    let (server_ns, client_ns) = pair(2);
    let server = TcpServer::start(&server_ns, addr("10.213.2.1:9000"), "echo")
        .expect("starting the TCP server");

    let out = rdt_client(&client_ns, &["tcp", "10.213.2.1:9000"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello from echo\n");

    let out = rdt_client(
        &client_ns,
        &["tcp", "10.213.2.1:9000", "--send", "ping", "--lines", "2"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello from echo\nping\n");
    assert_eq!(server.accepted(), 2);

    // stop() also closes connections that are already open.
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let open = client_ns.spawn(move || async move {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect("10.213.2.1:9000").await?;
        let mut greeting = [0u8; 16];
        stream.read_exact(&mut greeting).await?;
        connected_tx.send(()).expect("signalling the test");
        let mut rest = [0u8; 1];
        tokio::time::timeout(TIMEOUT, stream.read(&mut rest)).await?
    });
    connected_rx
        .recv_timeout(TIMEOUT)
        .expect("the open connection got its greeting");
    server.stop().expect("stop");
    let closed = open.join().expect("the connection thread panicked");
    assert!(
        matches!(&closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "an open connection is closed by stop(): {closed:?}"
    );
    let out = rdt_client(&client_ns, &["tcp", "10.213.2.1:9000"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("Connection refused"), "{out:?}");

    server.restart().expect("restart");
    let out = rdt_client(&client_ns, &["tcp", "10.213.2.1:9000"]);
    assert_eq!(text(&out.stdout), "hello from echo\n", "{out:?}");
}

/// Looks `name` up (A records) with hickory-resolver from a thread inside
/// `ns`, over UDP+TCP or TCP only, without caching.
fn resolve(
    ns: &Netns,
    server: Ipv4Addr,
    name: &str,
    tcp_only: bool,
) -> Result<Vec<Ipv4Addr>, String> {
    let name = name.to_owned();
    ns.spawn(move || async move {
        let ip = IpAddr::V4(server);
        let ns_config = if tcp_only {
            NameServerConfig::tcp(ip)
        } else {
            NameServerConfig::udp_and_tcp(ip)
        };
        let mut builder = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns_config]),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().cache_size = 0;
        // Every lookup here gets an answer: the timeout only bounds a
        // machine too loaded to give it.
        builder.options_mut().timeout = TIMEOUT;
        builder.options_mut().attempts = 1;
        let resolver = builder
            .build()
            .map_err(|e| format!("building the resolver: {e}"))?;
        match resolver.ipv4_lookup(name.as_str()).await {
            Ok(lookup) => {
                let mut ips: Vec<Ipv4Addr> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                ips.sort();
                Ok(ips)
            }
            Err(e) if e.is_nx_domain() => Err("NXDOMAIN".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .join()
    .expect("the resolver thread panicked")
}

#[test]
fn dns_server_answers_and_changes() {
    require_root();
    let (server_ns, client_ns) = pair(3);
    let dns = DnsServer::start(&server_ns, addr("10.213.3.1:53")).expect("starting the DNS server");
    let server = Ipv4Addr::new(10, 213, 3, 1);
    let first = [Ipv4Addr::new(10, 213, 9, 1), Ipv4Addr::new(10, 213, 9, 2)];
    dns.set_a("svc.rdt.test", &first, 1).expect("set_a");

    assert_eq!(
        resolve(&client_ns, server, "svc.rdt.test.", false),
        Ok(first.to_vec())
    );
    assert_eq!(
        resolve(&client_ns, server, "SVC.rdt.test.", true),
        Ok(first.to_vec()),
        "over TCP"
    );
    assert_eq!(
        resolve(&client_ns, server, "nope.rdt.test.", false),
        Err("NXDOMAIN".to_owned())
    );

    let second = [Ipv4Addr::new(10, 213, 9, 3)];
    dns.set_a("svc.rdt.test.", &second, 1).expect("set_a");
    assert_eq!(
        resolve(&client_ns, server, "svc.rdt.test.", false),
        Ok(second.to_vec())
    );

    // glibc, through a private resolv.conf.
    let out = Client::new(&client_ns, "getent")
        .args(["ahostsv4", "svc.rdt.test"])
        .nameserver(IpAddr::V4(server))
        .timeout(TIMEOUT)
        .run()
        .expect("running getent");
    assert!(out.status.success(), "glibc lookup failed: {out:?}");
    assert!(text(&out.stdout).starts_with("10.213.9.3 "), "{out:?}");

    dns.set_a("svc.rdt.test", &[], 1).expect("empty answer");
    let empty = resolve(&client_ns, server, "svc.rdt.test.", false);
    assert!(
        empty
            .as_ref()
            .is_err_and(|e| e.contains("no records found")),
        "NODATA, not NXDOMAIN: {empty:?}"
    );

    dns.set_servfail("svc.rdt.test").expect("set_servfail");
    let failed = resolve(&client_ns, server, "svc.rdt.test.", false);
    assert!(
        failed.as_ref().is_err_and(|e| e.contains("Server Failure")),
        "SERVFAIL: {failed:?}"
    );

    dns.remove("svc.rdt.test").expect("remove");
    assert_eq!(
        resolve(&client_ns, server, "svc.rdt.test.", false),
        Err("NXDOMAIN".to_owned())
    );
    let out = Client::new(&client_ns, "getent")
        .args(["ahostsv4", "svc.rdt.test"])
        .nameserver(IpAddr::V4(server))
        .run()
        .expect("running getent");
    assert_eq!(out.status.code(), Some(2), "getent: not found: {out:?}");
    assert!(dns.queries() >= 8, "{} queries", dns.queries());
}

#[test]
fn client_joins_the_cgroup() {
    require_root();
    let ns = Netns::new("cgclient").expect("creating a namespace");
    let cgroup = TestCgroup::new().expect("creating a cgroup");
    let expected = format!("0::{}", cgroup.proc_path().expect("proc_path"));

    let out = client::run(&ns, Some(&cgroup), "cat", &["/proc/self/cgroup"], TIMEOUT)
        .expect("running cat");
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).lines().any(|l| l == expected),
        "expected {expected:?} in {:?}",
        text(&out.stdout)
    );

    let out = client::run(&ns, None, "cat", &["/proc/self/cgroup"], TIMEOUT).expect("running cat");
    assert!(
        !text(&out.stdout).contains(&expected),
        "no cgroup given, not in it"
    );

    // Same netns as the namespace file.
    let out = client::run(
        &ns,
        Some(&cgroup),
        "readlink",
        &["/proc/self/ns/net"],
        TIMEOUT,
    )
    .expect("readlink");
    let ino = std::fs::metadata(ns.path()).expect("stat netns").ino();
    assert_eq!(text(&out.stdout).trim(), format!("net:[{ino}]"));
}

#[test]
fn client_times_out() {
    require_root();
    let ns = Netns::new("slow").expect("creating a namespace");
    let err = client::run(&ns, None, "sleep", &["30"], Duration::from_millis(200))
        .expect_err("sleep 30 must time out");
    assert!(err.to_string().contains("timed out"), "{err:#}");
}

#[test]
fn daemon_harness() {
    require_root();
    let ns = Netns::new("daemon").expect("creating a namespace");
    let cgroup = TestCgroup::new().expect("creating a cgroup");
    let sh = Path::new("/bin/sh");
    let script =
        "readlink /proc/self/ns/net; cat /proc/self/cgroup; echo redirector ready; exec sleep 30";
    let mut daemon = Daemon::start_program(
        sh,
        DaemonOptions {
            netns: &ns,
            cgroup: Some(&cgroup),
            args: vec!["-c".into(), script.into()],
            ready_timeout: TIMEOUT,
            env: Vec::new(),
        },
    )
    .expect("starting the fake daemon");
    let log = daemon.log();
    let ino = std::fs::metadata(ns.path()).expect("stat netns").ino();
    assert!(
        log.contains(&format!("net:[{ino}]")),
        "daemon runs in the netns: {log}"
    );
    let cg_line = format!("0::{}", cgroup.proc_path().expect("proc_path"));
    assert!(
        log.lines().any(|l| l == cg_line),
        "daemon joins the cgroup: {log}"
    );
    assert_eq!(cgroup.pids().expect("pids"), [daemon.pid()]);

    let status = daemon.terminate().expect("terminate");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");

    // The shell stands in for the daemon: `script` decides how it behaves.
    let fake = |script: &str, ready_timeout| {
        Daemon::start_program(
            sh,
            DaemonOptions {
                netns: &ns,
                cgroup: None,
                args: vec!["-c".into(), script.into()],
                ready_timeout,
                env: Vec::new(),
            },
        )
    };
    let err =
        fake("echo config is bad; exit 3", TIMEOUT).expect_err("a daemon that exits is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("config is bad") && msg.contains("exit status: 3"),
        "{msg}"
    );

    // Long enough for the shell to have printed its line even on a loaded
    // machine: the error must carry it.
    let err = fake("echo still starting; exec sleep 30", Duration::from_secs(3))
        .expect_err("a daemon that never gets ready is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("did not log") && msg.contains("still starting"),
        "{msg}"
    );

    let ready = "echo redirector ready; exec sleep 30";
    let mut daemon = fake(ready, TIMEOUT).expect("starting the fake daemon");
    assert_eq!(daemon.kill().expect("kill").signal(), Some(libc::SIGKILL));
    let daemon = fake(ready, TIMEOUT).expect("starting the fake daemon");
    let pid = daemon.pid();
    drop(daemon);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Drop kills and reaps the daemon"
    );
}

fn netns_listed(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    text(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn drop_removes_everything() {
    require_root();
    let (a, b) = pair(4);
    let cgroup = TestCgroup::new().expect("creating a cgroup");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    cgroup.configure(&mut sleeper);
    b.configure(&mut sleeper);
    let mut sleeper = sleeper.spawn().expect("spawning sleep");

    let pins = PinDirGuard::for_test();
    std::fs::create_dir(pins.path()).unwrap_or_else(|e| {
        panic!(
            "creating {} (is bpffs mounted? run cargo xtask setup): {e}",
            pins.path().display()
        )
    });
    std::fs::create_dir(pins.path().join("nested")).expect("nested pin dir");

    let names = [a.name().to_owned(), b.name().to_owned()];
    let paths = [
        a.path().to_owned(),
        b.path().to_owned(),
        cgroup.path().to_owned(),
        pins.path().to_owned(),
    ];
    for name in &names {
        assert!(netns_listed(name), "{name} should be listed");
    }
    for path in &paths {
        assert!(path.exists(), "{} should exist", path.display());
    }

    drop((a, b, cgroup, pins));
    let status = sleeper.wait().expect("reaping sleep");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the cgroup's Drop kills its processes"
    );
    for name in &names {
        assert!(!netns_listed(name), "{name} should be gone");
    }
    for path in &paths {
        assert!(!path.exists(), "{} should be gone", path.display());
    }
}

#[test]
fn sweep_removes_only_stale_resources() {
    require_root();
    // A pid above pid_max can never be alive, so this is stale for sure.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("reading pid_max")
        .trim()
        .parse()
        .expect("pid_max");
    let dead = pid_max + 1;
    let n = names::next_id();

    // A pod's namespace and a node's cgroup with a pod's in it, holding
    // the orphan: what a test killed while it had a pod leaves.
    let ns_name = format!("rdt-{dead}-{n}-pod_web");
    let status = Command::new("ip")
        .args(["netns", "add", &ns_name])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    let cg = cgroup2_root()
        .expect("cgroup2 root")
        .join(format!("rdt-{dead}-{n}"));
    std::fs::create_dir(&cg).expect("creating a stale cgroup");
    let pins = pin_dir_for_test().with_file_name(format!("redirector-test-{dead}-{n}"));
    std::fs::create_dir(&pins).expect("creating a stale pin dir (is bpffs mounted?)");
    let pod_cg = cg.join("pod-web");
    std::fs::create_dir(&pod_cg).expect("creating a stale pod cgroup");
    let mut orphan = Command::new("sleep")
        .arg("30")
        .env(names::OWNER_ENV, dead.to_string())
        .spawn()
        .expect("spawning a stale process");
    std::fs::write(pod_cg.join("cgroup.procs"), orphan.id().to_string())
        .expect("moving the orphan into the pod's cgroup");

    let live = Netns::new("live").expect("creating a live namespace");
    let live_cg = TestCgroup::new().expect("creating a live cgroup");

    let removed = sweep_stale().expect("sweep");
    let status = orphan.wait().expect("reaping the orphan");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "orphan killed; sweep said {removed:?}"
    );
    assert!(!netns_listed(&ns_name), "stale netns removed: {removed:?}");
    assert!(!cg.exists(), "stale cgroup removed: {removed:?}");
    assert!(!pins.exists(), "stale pin dir removed: {removed:?}");
    for what in [
        format!("netns {ns_name}"),
        format!("cgroup {}", cg.display()),
        format!("pin directory {}", pins.display()),
    ] {
        assert!(
            removed.contains(&what),
            "{what:?} not reported in {removed:?}"
        );
    }
    assert!(
        netns_listed(live.name()) && live_cg.path().exists(),
        "live resources stay"
    );
}

// Pods, made by the real CNI plugins (Debian's containernetworking-plugins)
// on a node without the redirector.

/// `program args…` run in `pod`, which must succeed; its stdout.
fn in_pod(pod: &Pod, program: &str, args: &[&str]) -> String {
    let out = pod
        .client(program)
        .args(args)
        .timeout(NODE_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("running {program} in pod {}: {e:#}", pod.name()));
    assert!(
        out.status.success(),
        "{program} {args:?} in pod {}: {out:?}",
        pod.name()
    );
    text(&out.stdout)
}

/// Network namespaces of this test process in /run/netns whose role
/// starts with `role`.
fn netns_with_role(role: &str) -> Vec<String> {
    let prefix = format!("{}-{}-", names::PREFIX, std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix(&prefix)
                        .and_then(|rest| rest.split_once('-'))
                        .is_some_and(|(_, r)| r.starts_with(role))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pod_gets_an_address_and_a_default_route_via_the_node() {
    let node = Node::new();
    let pods = node.pods();
    let web = pods.pod("web").expect("creating pod web");
    let api = pods.pod_in("team", "api").expect("creating pod team/api");

    let ip = web.ip();
    assert!(
        pods.contains(ip) && ip != pods.gateway(),
        "{ip} in the node's subnet"
    );
    assert_ne!(api.ip(), ip, "host-local hands out distinct addresses");
    assert_eq!(
        web.result()["ips"][0]["gateway"],
        pods.gateway().to_string(),
        "{}",
        web.result()
    );

    let addr = in_pod(&web, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains(&format!(" {ip}/24 ")),
        "eth0 holds {ip}/24: {addr}"
    );
    let route = in_pod(&web, "ip", &["-4", "route", "show", "default"]);
    assert_eq!(
        route.trim(),
        format!("default via {} dev eth0", pods.gateway()),
        "default route via the node's bridge"
    );
    let lo = in_pod(&web, "ip", &["-o", "link", "show", "lo"]);
    assert!(lo.contains("LOWER_UP"), "lo up (the loopback plugin): {lo}");
    let lo4 = in_pod(&web, "ip", &["-4", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo4.contains(" 127.0.0.1/8 "), "{lo4}");

    // The node's side: the gateway on the bridge, each pod's veth on it,
    // forwarding on, and still no default route off the node.
    let bridge = node
        .ns
        .ip(["-4", "-o", "addr", "show", "dev", pods.bridge()])
        .expect("the bridge's address");
    assert!(
        bridge.contains(&format!(" {}/24 ", pods.gateway())),
        "{bridge}"
    );
    let ports = pods.bridge_ports().expect("bridge ports");
    for pod in [&web, &api] {
        let veth = pod.host_veth().expect("the ADD result names the host veth");
        assert!(ports.contains(&veth), "{veth} on the bridge: {ports:?}");
    }
    assert_eq!(
        node.ns
            .ip(["route", "show", "default"])
            .expect("node routes")
            .trim(),
        "",
        "the node has no route off the box"
    );
    web.check().expect("CNI CHECK of a healthy pod");
    api.check().expect("CNI CHECK of a healthy pod");
}

#[test]
fn pod_reaches_an_endpoint_through_the_node() {
    let node = Node::new();
    // The pod first, then the endpoint's namespace: either order works.
    let web = node.pods().pod("web").expect("creating pod web");
    let east = node.endpoint_ns("east", "10.213.1.1/24", "10.213.1.2/24");
    let server =
        HttpServer::start(&east, addr("10.213.1.2:80"), "east").expect("starting the HTTP server");

    let out = in_pod(
        &web,
        "curl",
        &[
            "-sS",
            "-m",
            "10",
            "-w",
            "\n%{local_ip}",
            "http://10.213.1.2/",
        ],
    );
    assert_eq!(
        out,
        format!("healthy: east\n{}", web.ip()),
        "answered, from the pod's own address (no masquerade)"
    );
    assert_eq!(server.requests(), 1);

    // A second pod, made after the endpoint, reaches it too.
    let api = node.pods().pod("api").expect("creating pod api");
    let out = in_pod(&api, "curl", &["-sS", "-m", "10", "http://10.213.1.2/"]);
    assert_eq!(out, "healthy: east");
}

#[test]
fn pod_resolves_through_the_cluster_dns_address() {
    let node = Node::new();
    node.a_record("east.pods.test", [10, 213, 1, 2], 30);
    let web = node.pods().pod_in("team", "web").expect("creating pod web");

    let resolv = in_pod(&web, "cat", &["/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {CLUSTER_DNS}\n"))
            && resolv.contains("search team.svc.cluster.local svc.cluster.local cluster.local\n"),
        "the kubelet's resolv.conf: {resolv}"
    );
    let answer = in_pod(&web, "getent", &["hosts", "east.pods.test"]);
    assert_eq!(
        answer.split_whitespace().collect::<Vec<_>>(),
        ["10.213.1.2", "east.pods.test"],
        "glibc's answer"
    );
    // The node's DNS server got the questions at the cluster address, from
    // the pod's own address; ndots:5 tried the search domains first.
    let seen = node.dns.seen("east.pods.test");
    assert!(
        seen.iter().any(|s| s.src.ip() == IpAddr::V4(web.ip())),
        "asked by the pod {}: {seen:?}",
        web.ip()
    );
    assert!(
        !node
            .dns
            .seen("east.pods.test.team.svc.cluster.local")
            .is_empty(),
        "search domains tried first (ndots:5): {:?}",
        node.dns.log()
    );

    // The host's own resolv.conf is untouched.
    let ours = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(!ours.contains(&CLUSTER_DNS.to_string()), "{ours}");
}

#[test]
fn pod_processes_are_in_its_cgroup_and_network_namespace() {
    let node = Node::new();
    let web = node.pods().pod("web").expect("creating pod web");

    let expected = format!(
        "0::{}/pod-web",
        node.cgroup.proc_path().expect("the node's cgroup")
    );
    let cgroup = in_pod(&web, "cat", &["/proc/self/cgroup"]);
    assert!(
        cgroup.lines().any(|l| l == expected),
        "{expected:?} in {cgroup:?}"
    );
    assert_eq!(
        web.cgroup().path(),
        node.cgroup.path().join("pod-web"),
        "a child of the cgroup the daemon attaches to"
    );

    let ns = in_pod(&web, "readlink", &["/proc/self/ns/net"]);
    let pod_ino = std::fs::metadata(web.netns().path())
        .expect("stat the pod's netns")
        .ino();
    let node_ino = std::fs::metadata(node.ns.path())
        .expect("stat the node's netns")
        .ino();
    assert_eq!(ns.trim(), format!("net:[{pod_ino}]"));
    assert_ne!(pod_ino, node_ino, "not the node's namespace");

    // Its infra process holds both from the start, as `pause` does.
    let infra = web.infra_pid();
    assert_eq!(web.cgroup().pids().expect("pids"), [infra]);
    let link = std::fs::read_link(format!("/proc/{infra}/ns/net")).expect("its netns");
    assert_eq!(link.to_string_lossy(), format!("net:[{pod_ino}]"));

    // A long-running process: in the pod until the pod goes, which kills
    // it (and the infra process).
    let mut sleeper = web.spawn("sleep", ["600"]).expect("spawning sleep");
    let pid = sleeper.pid();
    wait_until("sleep in the pod's cgroup", NODE_TIMEOUT, || {
        web.cgroup().pids().is_ok_and(|p| p.contains(&pid))
    });
    // std's Command::spawn returns once exec succeeded, so this is sleep.
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("its netns");
    assert_eq!(link.to_string_lossy(), format!("net:[{pod_ino}]"));

    web.delete().expect("deleting the pod");
    let status = sleeper.child.wait().expect("reaping sleep");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "deleting the pod kills its processes"
    );
    assert!(
        !Path::new(&format!("/proc/{infra}")).exists(),
        "the infra process is killed and reaped"
    );
}

#[test]
fn cni_del_removes_the_veth_and_the_lease() {
    let node = Node::new();
    let pods = node.pods();
    for explicit in [true, false] {
        let pod = pods.pod("web").expect("creating pod web");
        let veth = pod.host_veth().expect("the host veth");
        let (ip, netns) = (pod.ip(), pod.netns().name().to_owned());
        let cgroup = pod.cgroup().path().to_owned();
        assert_eq!(
            pods.bridge_ports().expect("bridge ports"),
            std::slice::from_ref(&veth)
        );
        assert_eq!(pods.leases().expect("leases"), [ip]);
        let lease = std::fs::read_to_string(pods.ipam_dir().join("pods").join(ip.to_string()))
            .expect("reading the lease");
        assert!(
            lease.starts_with(pod.container_id()),
            "the lease names the sandbox: {lease:?}"
        );
        assert!(netns_listed(&netns) && cgroup.exists());

        if explicit {
            pod.delete().expect("deleting the pod");
        } else {
            drop(pod);
        }
        assert_eq!(
            pods.bridge_ports().expect("bridge ports"),
            Vec::<String>::new(),
            "veth {veth} gone"
        );
        assert!(
            node.ns.ip(["link", "show", &veth]).is_err(),
            "{veth} gone from the node"
        );
        assert_eq!(
            pods.leases().expect("leases"),
            Vec::<std::net::Ipv4Addr>::new(),
            "lease released"
        );
        assert!(!netns_listed(&netns), "{netns} gone");
        assert!(!cgroup.exists(), "{} gone", cgroup.display());
    }
}

/// A stand-in for the redirector's plugin: records what it got (config on
/// stdin, CNI_* environment) into `<config.record>/<command>.json`, and
/// on ADD echoes prevResult (or fails, with `fail_add`), as a chained
/// plugin must.
const RECORDING_PLUGIN: &str = r#"#!/usr/bin/python3
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND", "")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}))
    sys.exit(0)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(conf["record"], cmd + ".json"), "w") as f:
    json.dump({"env": env, "config": conf}, f)
if cmd == "ADD" and conf.get("fail_add"):
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 999, "msg": "refused by the test", "details": "fail_add"}))
    sys.exit(1)
if cmd == "ADD":
    json.dump(conf["prevResult"], sys.stdout)
"#;

fn recorded(dir: &Path, command: &str) -> serde_json::Value {
    let file = dir.join(format!("{command}.json"));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("the plugin recorded no {command}: {e}"));
    serde_json::from_str(&text).expect("the plugin's record")
}

#[test]
fn chained_plugin_gets_prev_result_and_the_cni_environment() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let pods = node.pods();
    let dir = TempDir::new("plugin").expect("a temp dir");
    let script = dir.path().join("recorder.py");
    std::fs::write(&script, RECORDING_PLUGIN).expect("writing the plugin");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the plugin");
    pods.install_plugin(REDIRECTOR_PLUGIN, &script)
        .expect("installing the plugin");
    let record = dir.path().join("seen");
    std::fs::create_dir(&record).expect("the record dir");
    pods.chain(json!({"type": REDIRECTOR_PLUGIN, "record": record, "socket": "/run/test.sock"}));

    let pod = pods.pod_in("team", "api").expect("creating pod team/api");
    let add = recorded(&record, "ADD");
    let env = &add["env"];
    let netns = pod.netns().path().to_str().expect("UTF-8 path").to_owned();
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], pod.container_id());
    assert_eq!(env["CNI_NETNS"], netns);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=team;K8S_POD_NAME=api;K8S_POD_INFRA_CONTAINER_ID={}",
            pod.container_id()
        )
    );
    assert_eq!(
        env["CNI_PATH"],
        format!("{CNI_PLUGIN_DIR}:{}", pods.bin_dir().display())
    );
    let config = &add["config"];
    assert_eq!(config["type"], REDIRECTOR_PLUGIN);
    assert_eq!(config["socket"], "/run/test.sock", "passed as given");
    assert_eq!(config["cniVersion"], "1.0.0");
    assert_eq!(config["name"], "pods");
    let prev = &config["prevResult"];
    assert_eq!(
        prev["ips"][0]["address"],
        format!("{}/24", pod.ip()),
        "{prev}"
    );
    assert!(
        prev["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .any(|i| i["name"] == "eth0" && i["sandbox"] == netns.as_str()),
        "{prev}"
    );
    assert_eq!(
        pod.result(),
        prev,
        "the chain's result is the last plugin's"
    );

    pod.check().expect("CNI CHECK");
    let check = recorded(&record, "CHECK");
    assert_eq!(&check["config"]["prevResult"], pod.result());
    let result = pod.result().clone();
    let id = pod.container_id().to_owned();
    pod.delete().expect("deleting the pod");
    let del = recorded(&record, "DEL");
    assert_eq!(del["env"]["CNI_COMMAND"], "DEL");
    assert_eq!(del["env"]["CNI_CONTAINERID"], id.as_str());
    assert_eq!(
        del["config"]["prevResult"], result,
        "DEL gets the ADD's result"
    );

    // A chained plugin that fails ADD: the pod is not made, and the whole
    // chain is undone (DEL), leaving nothing behind.
    let failing = dir.path().join("failing");
    std::fs::create_dir(&failing).expect("the record dir");
    pods.unchain();
    pods.chain(json!({"type": REDIRECTOR_PLUGIN, "record": failing, "fail_add": true}));
    let err = pods
        .pod("broken")
        .expect_err("a failing plugin fails the pod");
    let plugin = err
        .chain()
        .find_map(|e| e.downcast_ref::<PluginError>())
        .unwrap_or_else(|| panic!("a plugin error: {err:#}"));
    assert_eq!(
        (plugin.code, plugin.msg.as_str(), plugin.command.as_str()),
        (Some(999), "refused by the test", "ADD"),
        "{err:#}"
    );
    assert_eq!(recorded(&failing, "DEL")["env"]["CNI_COMMAND"], "DEL");
    assert_eq!(
        pods.leases().expect("leases"),
        Vec::<std::net::Ipv4Addr>::new(),
        "lease released"
    );
    assert_eq!(pods.bridge_ports().expect("ports"), Vec::<String>::new());
    assert_eq!(netns_with_role("pod_broken"), Vec::<String>::new());
    assert!(!node.cgroup.path().join("pod-broken").exists());
    // Without it, the same name works.
    pods.unchain();
    let pod = pods.pod("broken").expect("creating pod broken");
    assert_eq!(pod.network_list().plugins.len(), 2, "bridge and loopback");
}

/// What a node's pods hold, counted from the kernel and the disk.
#[derive(Debug, PartialEq, Eq)]
struct Census {
    netns: usize,
    bridge_ports: usize,
    cgroups: usize,
    leases: usize,
    fds: usize,
    /// Children of the test process, zombies included.
    children: usize,
}

fn census(node: &Node) -> Census {
    Census {
        netns: netns_with_role("pod_").len(),
        bridge_ports: node.pods().bridge_ports().expect("bridge ports").len(),
        cgroups: node.cgroup.children().expect("pod cgroups").len(),
        leases: node.pods().leases().expect("leases").len(),
        fds: std::fs::read_dir("/proc/self/fd")
            .expect("listing /proc/self/fd")
            .count(),
        children: children_of(std::process::id()),
    }
}

/// How many processes have `parent` as their parent.
fn children_of(parent: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("listing /proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(parent)
        })
        .count()
}

/// Run by `hundred_pods_leave_nothing`, alone in a test process of its
/// own: the other tests' descriptors would make the count meaningless.
#[test]
#[ignore = "run by hundred_pods_leave_nothing in a process of its own"]
fn hundred_pods_alone() {
    const PODS: u32 = 100;
    let node = Node::new();
    let pods = node.pods();
    // The bridge and the DNS listener appear with the first pod.
    pods.pod("first")
        .expect("creating a pod")
        .delete()
        .expect("deleting it");
    let before = census(&node);
    assert_eq!(
        (
            before.netns,
            before.bridge_ports,
            before.cgroups,
            before.leases
        ),
        (0, 0, 0, 0),
        "{before:?}"
    );

    let start = Instant::now();
    let made: Vec<Pod> = (0..PODS)
        .map(|i| {
            pods.pod(&format!("pod{i}"))
                .unwrap_or_else(|e| panic!("creating pod {i}: {e:#}"))
        })
        .collect();
    let create = start.elapsed();
    let mut ips: Vec<_> = made.iter().map(Pod::ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), made.len(), "distinct addresses");
    let full = census(&node);
    assert_eq!(
        (
            full.netns,
            full.bridge_ports,
            full.cgroups,
            full.leases,
            full.children - before.children
        ),
        (100, 100, 100, 100, 100),
        "one infra process each: {full:?}"
    );

    let start = Instant::now();
    for pod in made {
        pod.delete().expect("deleting a pod");
    }
    let delete = start.elapsed();
    assert_eq!(census(&node), before, "nothing left behind");
    println!(
        "{PODS} pods: create {:.1} ms/pod, delete {:.1} ms/pod; before and after: {before:?}",
        create.as_secs_f64() * 1000.0 / f64::from(PODS),
        delete.as_secs_f64() * 1000.0 / f64::from(PODS)
    );
}

#[test]
fn hundred_pods_leave_nothing() {
    require_root();
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "hundred_pods_alone",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running hundred_pods_alone");
    let stdout = process::drain(child.stdout.take());
    let stderr = process::drain(child.stderr.take());
    // Seconds when idle, under a minute on a loaded machine: the bound
    // only stops a hang.
    let status = process::wait_timeout(&mut child, Duration::from_secs(600)).expect("waiting");
    if status.is_none() {
        process::kill_and_reap(&mut child);
    }
    let (stdout, stderr) = (
        text(&stdout.join().unwrap_or_default()),
        text(&stderr.join().unwrap_or_default()),
    );
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("1 passed"),
        "hundred_pods_alone: {status:?}\n{stdout}\n{stderr}"
    );
}

#[test]
fn chain_redirector_links_the_daemons_binary() {
    let node = Node::new();
    let pods = node.pods();
    let socket = node.dir.path().join("cni.sock");
    pods.chain_redirector(&socket)
        .expect("chaining the redirector's plugin");
    let link = pods.bin_dir().join(REDIRECTOR_PLUGIN);
    assert_eq!(
        std::fs::read_link(&link).expect("redirector-cni is a link"),
        redirector_bin(),
        "the daemon's binary, under the plugin's name"
    );
    let list = pods.network_list();
    let types: Vec<&str> = list
        .plugins
        .iter()
        .map(|p| p["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["bridge", "loopback", REDIRECTOR_PLUGIN]);
    assert_eq!(
        list.plugins[2],
        json!({"type": REDIRECTOR_PLUGIN, "socket": socket})
    );
    pods.unchain();
    assert_eq!(pods.network_list().plugins.len(), 2);
}

#[test]
fn pods_before_and_after_the_daemon_starts() {
    let mut node = Node::new();
    // A clone outlives the borrow of `node`, which start() needs mutably.
    let pods = node.pods().clone();
    let east = node.endpoint_ns("east", "10.213.2.1/24", "10.213.2.2/24");
    let _server =
        HttpServer::start(&east, addr("10.213.2.2:80"), "east").expect("starting the HTTP server");
    let before = pods
        .pod("before")
        .expect("creating a pod before the daemon");
    node.start(
        &mydb_entry("240.240.0.9", "STATIC", "  - {address: 10.213.2.2}\n"),
        "us-east1",
        false,
    );
    let after = pods.pod("after").expect("creating a pod after the daemon");
    for pod in [&before, &after] {
        let out = in_pod(pod, "curl", &["-sS", "-m", "10", "http://10.213.2.2/"]);
        assert_eq!(out, "healthy: east", "from pod {}", pod.name());
    }
    before
        .delete()
        .expect("deleting a pod while the daemon runs");
    after
        .delete()
        .expect("deleting a pod while the daemon runs");
    assert_eq!(
        pods.leases().expect("leases"),
        Vec::<std::net::Ipv4Addr>::new()
    );
}
