//! Proves the test bed itself before anything relies on it: namespaces
//! joined by veth, the HTTP/TCP/DNS servers and their faults, clients in
//! cgroups, the daemon harness, and that Drop and the sweep leave nothing
//! behind. Root only; traffic stays inside the namespaces created here
//! (10.213.0.0/16) and their loopback.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    path::Path,
    process::{Command, Output},
    time::Duration,
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
    daemon::{Daemon, DaemonOptions, PinDirGuard, pin_dir_for_test},
    dns::DnsServer,
    http::HttpServer,
    names,
    netns::{Netns, link},
    privilege::require_root,
    sweep::sweep_stale,
    tcp::TcpServer,
};

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

    let ns_name = format!("rdt-{dead}-{n}-stale");
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
    let mut orphan = Command::new("sleep")
        .arg("30")
        .env(names::OWNER_ENV, dead.to_string())
        .spawn()
        .expect("spawning a stale process");

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
