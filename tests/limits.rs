//! What an app (any process in the cgroup) can hold in the daemon, on the
//! real datapath: slowloris and idle floods against the proxy and the
//! admin server are closed at the timeouts while a normal request is
//! still served and the daemon's memory stays bounded; the connection
//! caps reset what is over them; the daemon raises its descriptor limit,
//! and out of descriptors it backs off instead of spinning and recovers;
//! an upgraded (websocket) connection holds its `maxConnections` slot
//! until it closes.
//!
//! The floods are `rdt-client hold` processes (thousands of connections
//! from one process, which raises its own descriptor limit). Timeouts are
//! set small through the `NodeConfig`'s `limits`, so each test takes
//! seconds.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client,
    echo::EchoServer,
    istio::{mydb_entry, mydb_rule},
    process,
    scenario::{ADMIN, Node, TIMEOUT, wait_until},
    tcp::TcpServer,
    websocket::WebSocketServer,
};

const VIP: &str = "240.240.0.40";
const MIB: u64 = 1024 * 1024;

/// A `NodeConfig` document with `limits` (indented four spaces).
fn node_config(limits: &str) -> String {
    format!(
        "apiVersion: redirector.dev/v1alpha1
kind: NodeConfig
spec:
  limits:
{limits}---
"
    )
}

/// `mydb.com` at [`VIP`]:80 (HTTP) → 127.0.10.1:8080.
fn http_entry() -> String {
    mydb_entry(VIP, "STATIC", "  - {address: 127.0.10.1}\n")
}

/// A `rdt-client hold` flood in the background; killed on drop.
struct Flood {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

/// What a flood saw: its final JSON line.
#[derive(Debug)]
struct Held {
    opened: u64,
    failed: u64,
    closed: u64,
    open_at_end: u64,
    closes_ms: Vec<u64>,
}

impl Flood {
    /// `count` connections to `addr` from inside the app cgroup (when
    /// `in_cgroup`), each sent `send` (none: idle), held up to `max_secs`.
    fn start(
        node: &Node,
        addr: &str,
        count: usize,
        send: Option<&str>,
        max_secs: u64,
        in_cgroup: bool,
    ) -> Flood {
        let mut cmd = Command::new(client::rdt_client_bin());
        // Paced: the kernel keeps 1,024 connects in flight per namespace
        // for the proxy to look up (NS_INFLIGHT); a burst further ahead
        // of its accepts would lose records, and those connections be
        // reset.
        cmd.args(["hold", addr, "--count", &count.to_string()])
            .args(["--max-secs", &max_secs.to_string(), "--pace", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(text) = send {
            cmd.args(["--send", text]);
        }
        node.ns.configure(&mut cmd);
        if in_cgroup {
            node.cgroup.configure(&mut cmd);
        }
        let mut child = cmd.spawn().expect("starting rdt-client hold");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Flood { child, stdout }
    }

    /// Waits for `opened <n> failed <m>`; (n, m).
    fn opened(&mut self) -> (u64, u64) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading the flood");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["opened", n, "failed", m] => (n.parse().unwrap(), m.parse().unwrap()),
            _ => panic!("the flood said {line:?}"),
        }
    }

    /// Waits for the end; what it saw.
    fn finish(mut self) -> Held {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading the flood");
        let _ = self.child.wait();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        Held {
            opened: n("opened"),
            failed: n("failed"),
            closed: n("closed"),
            open_at_end: n("open_at_end"),
            closes_ms: v["closes_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect(),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

fn pid(node: &Node) -> u32 {
    node.daemon.as_ref().expect("daemon").pid()
}

/// The daemon's resident memory (`VmRSS`), in bytes.
fn rss(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid(node))).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The daemon's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(node: &Node) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid(node))).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The daemon's open descriptors.
fn fds(node: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", pid(node)))
        .unwrap()
        .count()
}

/// The peak of [`rss`] sampled for `for_`.
fn peak_rss(node: &Node, for_: Duration) -> u64 {
    let end = Instant::now() + for_;
    let mut peak = rss(node);
    while Instant::now() < end {
        peak = peak.max(rss(node));
        thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// A flood of `count` connections to the proxy, each sent `send`: all
/// held until the header timeout (`timeout`) closes them, a normal
/// request served meanwhile; the daemon's memory growth while they are
/// held, and that per connection, in bytes.
fn flood_the_proxy(node: &Node, count: usize, send: Option<&str>, timeout: Duration) -> (u64, u64) {
    let before = rss(node);
    let mut flood = Flood::start(node, &format!("{VIP}:80"), count, send, 60, true);
    let (opened, failed) = flood.opened();
    assert_eq!((opened, failed), (count as u64, 0), "{}", node.log());
    // All are held now (the first ones for a while already).
    let during = peak_rss(node, Duration::from_millis(500));
    match node.curl(VIP) {
        Ok((200, body)) => assert_eq!(body, "healthy: east"),
        other => panic!(
            "a normal request during the flood: {other:?}\n{}",
            node.log()
        ),
    }
    let held = flood.finish();
    assert_eq!((held.opened, held.failed), (count as u64, 0), "{held:?}");
    assert_eq!(held.closed, count as u64, "{held:?}");
    assert_eq!(held.open_at_end, 0, "{held:?}");
    let (first, last) = (held.closes_ms[0], *held.closes_ms.last().unwrap());
    let timeout_ms = timeout.as_millis() as u64;
    // Not before the timeout (hyper's timer starts at the first read, a
    // little after the connect), and not long after it.
    assert!(first + 200 >= timeout_ms, "closed early: {first} ms");
    assert!(
        last <= timeout_ms + 10_000,
        "closed late: {last} ms (timeout {timeout_ms} ms)"
    );
    let growth = during.saturating_sub(before);
    (growth, growth / count as u64)
}

/// 2,000 connections each sending a partial request head (slowloris),
/// then 2,000 idle ones: each closed at `requestHeadersTimeout` (3 s
/// here), a normal request served during the flood, and the daemon's
/// memory grows by less than 64 MiB for 2,000 connections.
///
/// The bound: a held connection costs the daemon its socket, hyper's
/// 8 KiB read buffer, the connection task and the connection's state
/// (about 20 KiB measured); 32 KiB each allows for allocator slack.
/// Without the timer, hyper's header timeout never fires and no
/// connection is closed.
#[test]
fn slowloris_and_idle_floods_against_the_proxy_close_at_the_header_timeout() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let limits = node_config(
        "    requestHeadersTimeout: 3s
    maxConnections: 10000
    maxConnectionsPerNamespace: 10000
",
    );
    node.start(&(limits + &http_entry()), "us-east1", false);
    let timeout = Duration::from_secs(3);
    let partial = "GET / HTTP/1.1\\r\\nHost: mydb.com\\r\\nX-Slow: ";
    let (growth, each) = flood_the_proxy(&node, 2000, Some(partial), timeout);
    eprintln!("slowloris, 2000 connections: RSS +{growth} bytes, {each} per connection");
    assert!(growth < 64 * MIB, "RSS grew by {growth} bytes");
    let (growth, each) = flood_the_proxy(&node, 2000, None, timeout);
    eprintln!("idle flood, 2000 connections: RSS +{growth} bytes, {each} per connection");
    assert!(growth < 64 * MIB, "RSS grew by {growth} bytes");
}

/// Over `maxConnectionsPerNamespace` a new connection is reset at once;
/// those under it are held until the timeout.
#[test]
fn connections_over_the_cap_are_reset_at_once() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let limits = node_config(
        "    requestHeadersTimeout: 4s
    maxConnectionsPerNamespace: 100
",
    );
    node.start(&(limits + &http_entry()), "us-east1", false);
    let mut flood = Flood::start(&node, &format!("{VIP}:80"), 300, None, 30, true);
    let (opened, failed) = flood.opened();
    assert_eq!(opened + failed, 300);
    let held = flood.finish();
    assert_eq!(held.closed, opened, "{held:?}");
    let early = held.closes_ms.iter().filter(|&&ms| ms < 2000).count() as u64;
    let late = held.closes_ms.iter().filter(|&&ms| ms >= 3800).count();
    // 100 held until the timeout; the other 200 reset as they came (a
    // reset can beat the end of the app's connect(): it failed then).
    assert_eq!((early + failed, late), (200, 100), "{held:?}");
    assert!(
        node.log().contains("too many app connections"),
        "{}",
        node.log()
    );
    // And served again once they are gone.
    assert_eq!(node.curl(VIP), Ok((200, "healthy: east".into())));
}

/// An HTTP request whose body stops coming (3 of 100 bytes sent) is
/// closed after `streamIdleTimeout` without a byte either way; hyper's
/// header timer does not run while a body is read, so without the
/// watchdog these are held forever.
#[test]
fn a_stalled_request_body_is_closed_at_the_stream_idle_timeout() {
    let mut node = Node::new();
    // Reads the whole body before it answers.
    let _echo = EchoServer::start(&node.ns, "127.0.10.1:8080".parse().unwrap()).expect("echo");
    let limits = node_config("    streamIdleTimeout: 2s\n");
    node.start(&(limits + &http_entry()), "us-east1", false);
    let stalled = "POST / HTTP/1.1\\r\\nHost: mydb.com\\r\\nContent-Length: 100\\r\\n\\r\\nabc";
    let mut flood = Flood::start(&node, &format!("{VIP}:80"), 20, Some(stalled), 30, true);
    assert_eq!(flood.opened(), (20, 0));
    let held = flood.finish();
    assert_eq!(held.closed, 20, "{held:?}\n{}", node.log());
    assert!(held.closes_ms[0] >= 1800, "{held:?}");
    assert!(*held.closes_ms.last().unwrap() <= 2000 + 10_000, "{held:?}");
}

/// A TCP port's connection idle for `tcpIdleTimeout` is closed.
#[test]
fn idle_tcp_connections_close_at_the_tcp_idle_timeout() {
    let mut node = Node::new();
    let _tcp = TcpServer::start(&node.ns, "127.0.10.1:9000".parse().unwrap(), "east")
        .expect("tcp endpoint");
    let entry = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{VIP}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.10.1}}
"
    );
    let limits = node_config("    tcpIdleTimeout: 2s\n");
    node.start(&(limits + &entry), "us-east1", false);
    // Each connection gets the endpoint's greeting (bytes moved), then
    // nothing more either way.
    let mut flood = Flood::start(&node, &format!("{VIP}:9000"), 50, Some("hi\\n"), 30, true);
    assert_eq!(flood.opened(), (50, 0));
    let held = flood.finish();
    assert_eq!(held.closed, 50, "{held:?}\n{}", node.log());
    assert!(held.closes_ms[0] >= 1800, "{held:?}");
    assert!(*held.closes_ms.last().unwrap() <= 2000 + 10_000, "{held:?}");
}

/// 1,000 slow connections to the admin server (under its cap of 1,024):
/// `/ready` is still answered, they close at its 10 s header timeout, and
/// memory grows by less than 32 MiB (32 KiB each, as for the proxy).
#[test]
fn a_slowloris_against_the_admin_server_closes_at_its_timeout() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.start(&http_entry(), "us-east1", false);
    let before = rss(&node);
    let partial = "GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: ";
    let mut flood = Flood::start(&node, ADMIN, 1000, Some(partial), 60, false);
    assert_eq!(flood.opened(), (1000, 0));
    let during = peak_rss(&node, Duration::from_millis(500));
    assert_eq!(
        node.admin_get("/ready"),
        Ok((200, "ready\n".into())),
        "{}",
        node.log()
    );
    let held = flood.finish();
    assert_eq!(held.closed, 1000, "{held:?}");
    assert!(held.closes_ms[0] >= 9800, "{held:?}");
    assert!(*held.closes_ms.last().unwrap() <= 20_000, "{held:?}");
    let growth = during.saturating_sub(before);
    eprintln!(
        "admin slowloris, 1000 connections: RSS +{growth} bytes, {} per connection",
        growth / 1000
    );
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");
}

/// Sets this process's soft descriptor limit (children inherit it).
fn set_soft_nofile(soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        let before = lim.rlim_cur;
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
        before
    }
}

/// "Max open files" of `pid`: (soft, hard).
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_owned(), v[4].to_owned())
}

/// Started with a soft limit of 512, the daemon raises it to the hard one.
/// Then, its soft limit lowered under it (prlimit) and 300 idle
/// connections made, its accepts fail with EMFILE: it pauses (10 ms
/// doubling to 1 s) instead of retrying at once, so over 3 s it uses
/// little CPU and warns a few times, not once per retry; once the
/// header timeout has closed the connections it holds, it accepts the
/// rest and serves a normal request.
#[test]
fn out_of_descriptors_the_daemon_backs_off_and_recovers() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    let limits = node_config("    requestHeadersTimeout: 6s\n");
    let before = set_soft_nofile(512);
    node.start(&(limits + &http_entry()), "us-east1", false);
    set_soft_nofile(before);
    let (soft, hard) = nofile(pid(&node));
    assert_eq!(soft, hard, "the daemon's descriptor limit");
    assert!(node.log().contains("descriptor limit"), "{}", node.log());

    let open = fds(&node);
    let ceiling = open + 150;
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid(&node).to_string(),
            &format!("--nofile={ceiling}:{hard}"),
        ])
        .output()
        .expect("running prlimit");
    assert!(out.status.success(), "{out:?}");
    let warned_before = node.log().matches("accept failed").count();
    let mut flood = Flood::start(&node, &format!("{VIP}:80"), 300, None, 40, true);
    assert_eq!(flood.opened(), (300, 0), "the backlog takes them");
    wait_until("accepts failing", TIMEOUT, || {
        node.log().matches("accept failed").count() > warned_before
    });
    let (cpu0, warned0) = (
        cpu_ticks(&node),
        node.log().matches("accept failed").count(),
    );
    thread::sleep(Duration::from_secs(3));
    let (cpu, warned) = (
        cpu_ticks(&node) - cpu0,
        node.log().matches("accept failed").count() - warned0,
    );
    eprintln!("out of descriptors for 3 s: {cpu} CPU ticks, {warned} warnings");
    // Spinning would be ~300 ticks (100 a second); retrying every 50 ms
    // warned 60 times.
    assert!(cpu < 60, "{cpu} ticks of CPU in 3 s");
    assert!(warned <= 8, "{warned} warnings in 3 s");
    // Held at the limit (give or take a descriptor the kernel made
    // without counting), far from the 300 connections waiting.
    let now = fds(&node);
    assert!(
        now <= ceiling + 5,
        "{now} descriptors open, limit {ceiling}"
    );
    // The held connections close at the header timeout, the backlog is
    // accepted (and closed in turn); then a normal request is served.
    let held = flood.finish();
    assert_eq!(held.closed, 300, "{held:?}");
    match node.curl(VIP) {
        Ok((200, body)) => assert_eq!(body, "healthy: east"),
        other => panic!("after the flood: {other:?}\n{}", node.log()),
    }
}

/// A websocket through `mydb.com` with `maxConnections: 1` keeps its
/// upstream connection's slot while it is open, as Envoy counts upgraded
/// connections: the next request finds no connection free (503 naming the
/// limit, after waiting the 1 s connect timeout), and once the websocket
/// closes the slot is free again.
#[test]
fn an_open_websocket_holds_its_max_connections_slot() {
    let mut node = Node::new();
    let _ws = WebSocketServer::start(&node.ns, "127.0.10.1:8080".parse().unwrap())
        .expect("websocket endpoint");
    let rule = mydb_rule(
        "    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 1s}
      http: {http1MaxPendingRequests: 1}
",
    );
    node.start(&(http_entry() + &rule), "us-east1", false);
    let mut cmd = Command::new(client::rdt_client_bin());
    cmd.args([
        "websocket",
        &format!("{VIP}:80"),
        "--url",
        "ws://mydb.com/chat",
        "--send",
        "hello",
        "--hold",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    node.ns.configure(&mut cmd);
    node.cgroup.configure(&mut cmd);
    let mut ws = cmd.spawn().expect("starting the websocket app");
    let mut lines = BufReader::new(ws.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "handshake 101");
    assert_eq!(lines.next().unwrap().unwrap(), "echo: hello");
    let reply = node.curl(VIP);
    let (status, body) = reply.expect("curl");
    assert_eq!(status, 503, "{body}\n{}", node.log());
    assert!(
        body.contains("connectionPool.tcp.maxConnections"),
        "the body names the limit: {body}"
    );
    process::kill_and_reap(&mut ws);
    // Its connection closed, the slot is free: another websocket gets it.
    wait_until("the slot freed", TIMEOUT, || {
        let out = node.client(
            client::rdt_client_bin().to_str().unwrap(),
            &[
                "websocket",
                &format!("{VIP}:80"),
                "--url",
                "ws://mydb.com/chat",
                "--send",
                "again",
            ],
        );
        String::from_utf8_lossy(&out.stdout) == "handshake 101\necho: again\nclosed\n"
    });
}
