//! DNS capture and the app's view of a redirected socket, on real BPF with
//! real resolvers: glibc (`getent`, curl), Python's `socket`, and `dig`.
//!
//! The bed: a node namespace (the daemon, and the apps in the attached
//! cgroup) joined by veth to a "remote" namespace holding the nameserver
//! (a real DNS server on 10.213.53.2:53, UDP and TCP) and the endpoints.
//! Apps get a private resolv.conf naming that nameserver. The node has no
//! route but the veth, so a connect the kernel failed to redirect goes
//! nowhere, and a query it failed to capture reaches the real server,
//! which logs every query with its source: what the server saw tells
//! captured from uncaptured.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    process::Output,
    time::Duration,
};

use redirector_tests::{
    cgroup::TestCgroup,
    client::{self, Client},
    daemon::{Daemon, DaemonOptions, PinDirGuard, redirector_bin},
    dns::DnsServer,
    http::HttpServer,
    istio::mydb_entry,
    netns::{self, Netns},
    privilege,
    scenario::Node,
    tempdir::TempDir,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const NAMESERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 53, 2);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 53, 1);
/// An endpoint of mydb.com: HTTP on the remote side.
const DB_NAME: &str = "db.remote.test";
const DB_PORT: u16 = 8080;
/// A name the nameserver knows and the config does not.
const OTHER: &str = "other.test";
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 53, 7);

struct Bed {
    // Field order is drop order: the daemon goes before what it uses.
    daemon: Option<Daemon>,
    _servers: Vec<HttpServer>,
    dns: DnsServer,
    pins: PinDirGuard,
    cgroup: TestCgroup,
    dir: TempDir,
    _link: netns::Link,
    remote: Netns,
    node: Netns,
}

impl Bed {
    fn new() -> Bed {
        privilege::require_root();
        let node = Netns::new("node").expect("creating the node namespace");
        let remote = Netns::new("remote").expect("creating the remote namespace");
        let link = netns::link(&node, "10.213.53.1/24", &remote, "10.213.53.2/24")
            .expect("linking node and remote");
        let dns = DnsServer::start(&remote, (NAMESERVER, 53).into()).expect("starting DNS");
        dns.set_a(DB_NAME, &[NAMESERVER], 30).expect("A record");
        dns.set_a(OTHER, &[OTHER_IP], 30).expect("A record");
        let servers = vec![
            HttpServer::start(&remote, (NAMESERVER, DB_PORT).into(), DB_NAME)
                .expect("starting the endpoint"),
        ];
        Bed {
            daemon: None,
            _servers: servers,
            dns,
            pins: PinDirGuard::for_test(),
            cgroup: TestCgroup::new().expect("creating the test cgroup"),
            dir: TempDir::new("dns").expect("creating a temp dir"),
            _link: link,
            remote,
            node,
        }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redirector.yaml")
    }

    /// Starts the daemon on `yaml` with `extra` flags; inside the attached
    /// cgroup when `in_cgroup`, so its own DNS would be captured if it
    /// were not marked.
    fn start(&mut self, yaml: &str, extra: &[&str], in_cgroup: bool) {
        fs::write(self.config_path(), yaml).expect("writing the config");
        let mut args: Vec<String> = [
            "run",
            "--config",
            &self.config_path().display().to_string(),
            "--cgroup",
            &self.cgroup.path().display().to_string(),
            "--locality",
            "us-east1",
            "--nameserver",
            &format!("{NAMESERVER}:53"),
            "--pin-dir",
            &self.pins.path().display().to_string(),
            "--log-level",
            "redirector_user=debug,info",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let daemon = Daemon::start(DaemonOptions {
            netns: &self.node,
            cgroup: in_cgroup.then_some(&self.cgroup),
            args,
            ready_timeout: TIMEOUT,
            env: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
        self.daemon = Some(daemon);
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(redirector_tests::daemon::Daemon::log)
            .unwrap_or_default()
    }

    /// Writes `yaml` and has the daemon reload it; waits for the outcome.
    fn reload(&self, yaml: &str) {
        let before = self.log().matches("config reloaded").count();
        fs::write(self.config_path(), yaml).expect("writing the config");
        let pid = self.daemon.as_ref().expect("a daemon").pid();
        redirector_tests::process::signal(pid, libc::SIGHUP).expect("SIGHUP");
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.log().matches("config reloaded").count() == before {
            assert!(
                std::time::Instant::now() < deadline && !self.log().contains("reload rejected"),
                "the daemon did not reload; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `program` as an app: node namespace, attached cgroup, and a
    /// resolv.conf naming the remote nameserver (plus `resolv_extra`).
    fn app_with(&self, resolv_extra: &str, program: &str, args: &[&str]) -> Output {
        Client::new(&self.node, program)
            .args(args)
            .cgroup(&self.cgroup)
            .resolv_conf(&format!(
                "nameserver {NAMESERVER}\noptions timeout:2 attempts:2\n{resolv_extra}"
            ))
            .timeout(TIMEOUT)
            .run()
            .unwrap_or_else(|e| panic!("running {program} {args:?}: {e:#}"))
    }

    fn app(&self, program: &str, args: &[&str]) -> Output {
        self.app_with("", program, args)
    }

    /// `getent ahostsv4 <name>` (glibc's resolver, IPv4: `getent hosts`
    /// asks AAAA first, and configured hosts have an IPv6 VIP too; see
    /// ipv6.rs): the first address, or `None` if it did not resolve.
    fn getent_with(&self, resolv_extra: &str, name: &str) -> Option<String> {
        let out = self.app_with(resolv_extra, "getent", &["ahostsv4", name]);
        out.status.success().then(|| {
            stdout(&out)
                .split_whitespace()
                .next()
                .expect("an address")
                .to_owned()
        })
    }

    fn getent(&self, name: &str) -> Option<String> {
        self.getent_with("", name)
    }

    /// `dig @nameserver <args>` as an app.
    fn dig(&self, args: &[&str]) -> String {
        let server = format!("@{NAMESERVER}");
        let mut all = vec![server.as_str(), "+tries=1", "+time=5"];
        all.extend_from_slice(args);
        let out = self.app("dig", &all);
        assert!(out.status.success(), "dig {args:?}: {out:?}");
        stdout(&out)
    }

    /// `python3 -c <script>` as an app; its stdout, trimmed.
    fn python(&self, script: &str) -> String {
        let out = self.app("python3", &["-c", script]);
        assert!(
            out.status.success(),
            "python3 failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        stdout(&out).trim().to_owned()
    }

    fn endpoints(&self) -> serde_json::Value {
        let out = std::process::Command::new(redirector_bin())
            .args(["endpoints", "--output", "json", "--pin-dir"])
            .arg(self.pins.path())
            .output()
            .expect("running redirector endpoints");
        assert!(out.status.success(), "redirector endpoints: {out:?}");
        serde_json::from_slice(&out.stdout).expect("endpoints JSON")
    }

    /// The VIP the daemon gave `host`.
    fn vip(&self, host: &str) -> String {
        let all = self.endpoints();
        all["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["host"] == host)
            .unwrap_or_else(|| panic!("no service {host} in {all:#}"))["vip"]
            .as_str()
            .expect("a VIP")
            .to_owned()
    }

    fn curl(&self, host: &str) -> Result<(u16, String), String> {
        client::http_get_by_name(
            &self.node,
            Some(&self.cgroup),
            host,
            IpAddr::V4(NAMESERVER),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("running curl: {e:#}"))
    }

    fn pinned(&self, name: &str) -> bool {
        self.pins.path().join("v3").join(name).exists()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mydb.com:80 (HTTP) → db.remote.test:8080, VIP allocated.
fn mydb(addresses: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
{addresses}  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {DB_PORT}}}]
  resolution: DNS
  endpoints:
  - address: {DB_NAME}
"
    )
}

/// A ServiceEntry for `host` as a TCP service on `port` with one static
/// endpoint, optionally on the kernel path.
fn tcp_entry(name: &str, host: &str, port: u16, endpoint: Ipv4Addr, kernel: bool) -> String {
    let annotation = if kernel {
        "\n  annotations: {redirector.dev/datapath: kernel}"
    } else {
        ""
    };
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}{annotation}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - address: {endpoint}
"
    )
}

/// Python helpers for raw DNS over UDP: `query(name, tid)` builds an A
/// query, `show(data, src)` prints the source, whether the id is 0x1234,
/// the rcode and the first answer's address (or `-`).
const PY_DNS: &str = "import socket, struct
def query(name, tid=0x1234):
    q = struct.pack('>HHHHHH', tid, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\\x00' + struct.pack('>HH', 1, 1)
def show(data, src):
    ancount = struct.unpack('>H', data[6:8])[0]
    ip = socket.inet_ntoa(data[-4:]) if ancount else '-'
    print(src, data[:2] == b'\\x12\\x34', data[3] & 15, ip)
";

/// Documents joined into one file.
fn docs(docs: &[String]) -> String {
    docs.join("---\n")
}

#[test]
fn real_resolvers_get_the_vip_of_a_configured_host() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");

    assert_eq!(bed.getent("mydb.com").as_deref(), Some(vip.as_str()));
    assert_eq!(
        bed.getent("MyDB.Com.").as_deref(),
        Some(vip.as_str()),
        "any letter case, absolute or not"
    );
    let addrs = bed.python(
        "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('mydb.com', 80, socket.AF_INET)}))",
    );
    assert_eq!(addrs, format!("['{vip}']"), "getaddrinfo(AF_INET)");
    assert_eq!(
        bed.curl("mydb.com"),
        Ok((200, format!("healthy: {DB_NAME}"))),
        "curl http://mydb.com/ with no --resolve goes through the proxy"
    );
    // Answered by the responder: not one query for the host upstream.
    assert_eq!(bed.dns.seen("mydb.com"), vec![], "{:#?}", bed.dns.log());
}

#[test]
fn other_names_go_to_the_nameserver_the_app_asked_and_come_back_unchanged() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);

    assert_eq!(bed.getent(OTHER), Some(OTHER_IP.to_string()));
    let seen = bed.dns.seen(OTHER);
    assert!(!seen.is_empty(), "the nameserver saw no query for {OTHER}");
    // The app's source port is known to dig; a forwarded query leaves from
    // the responder's own socket, so the server sees another port.
    let out = bed.dig(&["-b", "0.0.0.0#45353", OTHER, "A"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{OTHER}.")) && l.ends_with(&OTHER_IP.to_string())),
        "{out}"
    );
    assert!(
        out.contains("flags: qr aa rd"),
        "the server's own flags: {out}"
    );
    let seen = bed.dns.seen(OTHER);
    assert!(
        seen.iter().all(|s| s.src.port() != 45353 && !s.tcp),
        "captured queries reach the nameserver from the responder: {seen:#?}"
    );
    // An unknown name: the server's NXDOMAIN and its SOA, relayed as sent.
    let out = bed.dig(&["nothing.test", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("ns.rdt.test."), "the server's SOA: {out}");
    assert_eq!(bed.dns.seen("nothing.test").len(), 1);
    assert!(
        bed.log()
            .contains(&format!("relayed an answer from {NAMESERVER}:53")),
        "the responder forwarded to the nameserver the app asked; log:\n{}",
        bed.log()
    );

    // Search-domain expansions are other names: with ndots:5 glibc tries
    // mydb.com.svc.cluster.local first, which the nameserver answers, then
    // mydb.com, which the responder answers.
    let vip = bed.vip("mydb.com");
    let search = "search svc.cluster.local\noptions ndots:5\n";
    assert_eq!(bed.getent_with(search, "mydb.com"), Some(vip));
    assert!(
        !bed.dns.seen("mydb.com.svc.cluster.local").is_empty(),
        "{:#?}",
        bed.dns.log()
    );
    assert_eq!(bed.dns.seen("mydb.com"), vec![]);
}

/// musl and many resolver libraries send from an unconnected socket, which
/// sendmsg4 redirects datagram by datagram.
#[test]
fn unconnected_udp_sockets_are_captured_per_datagram() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");
    let script = format!(
        "{PY_DNS}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.bind(('0.0.0.0', 45454))
s.sendto(query('mydb.com'), ('{NAMESERVER}', 53))
show(*s.recvfrom(512))
s.sendto(query('{OTHER}'), ('{NAMESERVER}', 53))
show(*s.recvfrom(512))
"
    );
    assert_eq!(
        bed.python(&script),
        format!("('{NAMESERVER}', 53) True 0 {vip}\n('{NAMESERVER}', 53) True 0 {OTHER_IP}"),
        "answers appear to come from the nameserver asked; {}",
        bed.log()
    );
    assert_eq!(bed.dns.seen("mydb.com"), vec![]);
    let seen = bed.dns.seen(OTHER);
    assert!(
        seen.len() == 1 && seen[0].src.port() != 45454,
        "forwarded by the responder: {seen:#?}"
    );
}

#[test]
fn aaaa_of_a_configured_host_is_its_ipv6_vip_and_stays_local() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");

    let out = bed.dig(&["mydb.com", "AAAA"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("ANSWER: 1,"), "{out}");
    let vip6: std::net::Ipv6Addr = bed
        .dig(&["+short", "mydb.com", "AAAA"])
        .trim()
        .parse()
        .expect("an IPv6 address");
    assert_eq!(
        vip6.segments()[..3],
        [0x2001, 2, 0],
        "allocated from 2001:2::/48"
    );
    assert_eq!(bed.dig(&["+short", "mydb.com", "A"]).trim(), vip);
    let v6 = bed.python(
        "import socket; print({a[4][0] for a in socket.getaddrinfo('mydb.com', 80, socket.AF_INET6)})",
    );
    assert_eq!(v6, format!("{{'{vip6}'}}"));
    // Other types are NODATA, also answered here.
    let out = bed.dig(&["mydb.com", "MX"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0,"),
        "{out}"
    );
    assert_eq!(bed.dns.seen("mydb.com"), vec![], "{:#?}", bed.dns.log());
}

#[test]
fn dns_over_tcp_is_captured_too() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");

    assert_eq!(bed.dig(&["+tcp", "+short", "mydb.com"]).trim(), vip);
    assert_eq!(
        bed.dig(&["+tcp", "+short", OTHER]).trim(),
        OTHER_IP.to_string()
    );
    // glibc over TCP.
    let use_vc = "options use-vc\n";
    assert_eq!(bed.getent_with(use_vc, "mydb.com"), Some(vip));
    assert_eq!(bed.getent_with(use_vc, OTHER), Some(OTHER_IP.to_string()));
    let seen = bed.dns.seen(OTHER);
    assert!(
        seen.iter().any(|s| s.tcp) && seen.iter().all(|s| s.tcp),
        "forwarded over the transport the app used: {seen:#?}"
    );
    assert_eq!(bed.dns.seen("mydb.com"), vec![]);
}

#[test]
fn the_daemons_own_lookups_reach_the_nameserver() {
    let mut bed = Bed::new();
    // db.remote.test is an endpoint name of mydb.com and a configured host
    // itself: captured, it would resolve to its own VIP.
    let yaml = docs(&[mydb(""), tcp_entry("also", DB_NAME, 9000, OTHER_IP, false)]);
    // Refreshed every second, so lookups happen with the hooks attached
    // (the first one comes before the daemon attaches anything).
    bed.dns.set_a(DB_NAME, &[NAMESERVER], 1).expect("A record");
    // The daemon lives in the attached cgroup.
    bed.start(&yaml, &[], true);
    let db_vip = bed.vip(DB_NAME);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while bed.dns.seen(DB_NAME).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon's refreshes of {DB_NAME} do not reach the nameserver: {:#?}\n{}",
            bed.dns.log(),
            bed.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(
        bed.getent(DB_NAME).as_deref(),
        Some(db_vip.as_str()),
        "apps get the VIP"
    );
    let all = bed.endpoints();
    let row = all["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == DB_NAME)
        .unwrap_or_else(|| panic!("no endpoint {DB_NAME}: {all:#}"))
        .clone();
    assert_eq!(
        row["endpoint"],
        format!("{NAMESERVER}:{DB_PORT}"),
        "the daemon resolved its endpoint through the nameserver, not its own responder"
    );
    let seen = bed.dns.seen(DB_NAME);
    assert!(
        seen.iter().any(|s| s.src.ip() == IpAddr::V4(NODE_IP)),
        "{seen:#?}"
    );
    assert_eq!(
        bed.curl("mydb.com"),
        Ok((200, format!("healthy: {DB_NAME}")))
    );
    // The responder's forwarding works from inside the cgroup too.
    assert_eq!(bed.getent(OTHER), Some(OTHER_IP.to_string()));
}

#[test]
fn a_reload_changes_the_answers() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let first = bed.vip("mydb.com");
    assert_eq!(bed.getent("mydb.com").as_deref(), Some(first.as_str()));
    assert_eq!(bed.getent("second.test"), None);

    let moved = "240.240.77.77";
    bed.reload(&docs(&[
        mydb(&format!("  addresses: [{moved}]\n")),
        tcp_entry("second", "second.test", 9000, OTHER_IP, false),
    ]));
    assert_ne!(first, moved);
    assert_eq!(bed.getent("mydb.com").as_deref(), Some(moved));
    assert_eq!(
        bed.getent("second.test"),
        Some(bed.vip("second.test")),
        "a new host answers"
    );
    assert_eq!(bed.dns.seen("mydb.com"), vec![]);

    // A host that leaves the config is an ordinary name again.
    bed.reload(&tcp_entry("second", "second.test", 9000, OTHER_IP, false));
    assert_eq!(
        bed.getent("mydb.com"),
        None,
        "the nameserver has no mydb.com"
    );
    assert!(!bed.dns.seen("mydb.com").is_empty());
}

#[test]
fn getpeername_shows_what_the_app_dialled() {
    let mut bed = Bed::new();
    let _tcp = HttpServer::start(&bed.remote, (NAMESERVER, 7000).into(), "tcp")
        .expect("a listener for the kernel-path service");
    let yaml = docs(&[
        mydb(""),
        tcp_entry("fast", "fast.test", 7000, NAMESERVER, true),
    ]);
    bed.start(&yaml, &[], false);
    let vip = bed.vip("mydb.com");
    let fast = bed.vip("fast.test");
    let peer = |addr: String| {
        let out = Client::new(&bed.node, client::rdt_client_bin())
            .args(["peer", &addr])
            .cgroup(&bed.cgroup)
            .timeout(TIMEOUT)
            .run()
            .expect("running rdt-client");
        assert!(out.status.success(), "rdt-client peer {addr}: {out:?}");
        stdout(&out)
    };

    // Proxy path: the kernel connected the socket to 127.0.0.1:15001.
    let out = peer(format!("{vip}:80"));
    assert!(out.contains(&format!("peer {vip}:80\n")), "{out}");
    assert!(
        out.contains("local 127.0.0.1:"),
        "getsockname is real: {out}"
    );
    // Kernel path: connected straight to the endpoint.
    let out = peer(format!("{fast}:7000"));
    assert!(out.contains(&format!("peer {fast}:7000\n")), "{out}");
    assert!(out.contains(&format!("local {NODE_IP}:")), "{out}");
    // Python, by name: whichever family it picks (both resolve), the
    // peer is that family's VIP.
    let vip6 = bed.dig(&["+short", "mydb.com", "AAAA"]).trim().to_owned();
    let got = bed.python(
        "import socket; s = socket.create_connection(('mydb.com', 80)); print(s.getpeername()[:2])",
    );
    assert!(
        got == format!("('{vip}', 80)") || got == format!("('{vip6}', 80)"),
        "{got}"
    );

    // A connected UDP DNS socket (glibc's way) sees the nameserver as its
    // peer and as the source of the answer, which carries the VIP.
    let script = format!(
        "{PY_DNS}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(('{NAMESERVER}', 53))
print(s.getpeername())
s.send(query('mydb.com'))
show(*s.recvfrom(512))
t = socket.create_connection(('{NAMESERVER}', 53))
print(t.getpeername())
"
    );
    let got = bed.python(&script);
    assert_eq!(
        got,
        format!("('{NAMESERVER}', 53)\n('{NAMESERVER}', 53) True 0 {vip}\n('{NAMESERVER}', 53)"),
        "{}",
        bed.log()
    );
}

#[test]
fn dns_goes_straight_to_the_nameserver_while_the_daemon_is_down() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");
    assert_eq!(bed.getent("mydb.com").as_deref(), Some(vip.as_str()));

    bed.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");
    // The hooks stay attached; with no responder listening they leave DNS
    // alone: other names resolve, configured hosts do not.
    assert_eq!(bed.getent(OTHER), Some(OTHER_IP.to_string()));
    assert_eq!(bed.getent("mydb.com"), None);
    let seen = bed.dns.seen("mydb.com");
    assert!(!seen.is_empty(), "the query went to the nameserver");

    // A new daemon takes over and answers again.
    bed.start(&mydb(""), &[], false);
    assert!(bed.log().contains("taking over"), "{}", bed.log());
    assert_eq!(bed.getent("mydb.com").as_deref(), Some(vip.as_str()));
}

#[test]
fn dns_port_0_turns_capture_off_and_removes_its_hooks() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    for link in [
        "link_sendmsg4",
        "link_recvmsg4",
        "link_egress",
        "link_getpeername4",
    ] {
        assert!(bed.pinned(link), "{link} is pinned");
    }
    bed.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");

    bed.start(&mydb(""), &["--dns-port", "0"], false);
    for link in ["link_sendmsg4", "link_recvmsg4", "link_egress"] {
        assert!(!bed.pinned(link), "{link} is gone with capture off");
    }
    assert!(bed.pinned("link_getpeername4"));
    assert_eq!(bed.getent("mydb.com"), None);
    assert!(!bed.dns.seen("mydb.com").is_empty());
    assert_eq!(bed.getent(OTHER), Some(OTHER_IP.to_string()));
    let vip = bed.vip("mydb.com");
    assert_eq!(
        client::http_get(
            &bed.node,
            Some(&bed.cgroup),
            "mydb.com",
            &vip,
            Duration::from_secs(15)
        )
        .expect("curl"),
        Ok((200, format!("healthy: {DB_NAME}"))),
        "the VIP still works"
    );
}

#[test]
fn a_pin_dir_from_before_dns_capture_is_taken_over() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");
    bed.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");
    // What the previous build leaves: its nine maps and two links, none of
    // the DNS capture objects (nor IPv6's, which came later).
    for pin in [
        "RD_DNSCFG_V3",
        "RD_DNSSOCK_V3",
        "RD_SKORIG_V3",
        "link_getpeername4",
        "link_sendmsg4",
        "link_recvmsg4",
        "link_egress",
        "RD_SVC6_V3",
        "RD_CFG6_V3",
        "RD_OSOCK6_V3",
        "RD_SKORIG6_V3",
        "RD_DNSSOCK6_V3",
        "RD_SLOTS6_V3",
        "link_connect6",
        "link_getpeername6",
        "link_sendmsg6",
        "link_recvmsg6",
    ] {
        fs::remove_file(bed.pins.path().join("v3").join(pin))
            .unwrap_or_else(|e| panic!("removing {pin}: {e}"));
    }
    assert!(bed.pinned("link_connect4") && bed.pinned("RD_SVC_V3"));

    bed.start(&mydb(""), &[], false);
    assert!(bed.log().contains("taking over"), "{}", bed.log());
    for pin in [
        "RD_DNSCFG_V3",
        "RD_SKORIG_V3",
        "link_sendmsg4",
        "link_egress",
    ] {
        assert!(bed.pinned(pin), "{pin} is pinned again");
    }
    assert_eq!(bed.getent("mydb.com").as_deref(), Some(vip.as_str()));
    assert_eq!(
        bed.curl("mydb.com"),
        Ok((200, format!("healthy: {DB_NAME}")))
    );
}

/// A resolver socket bound to an address of its own (another loopback
/// address, as a local stub may use, or the namespace's own interface
/// address, as a pod's app may bind), connected or not: its queries are
/// captured and the answers reach it, shown as coming from the nameserver.
#[test]
fn dns_from_a_socket_bound_to_a_specific_address_is_answered() {
    let mut bed = Bed::new();
    bed.start(&mydb(""), &[], false);
    let vip = bed.vip("mydb.com");
    for (src, connect) in [
        ("127.0.0.53", false),
        ("127.0.0.53", true),
        ("127.1.2.3", false),
        (NODE_IP.to_string().as_str(), false),
        (NODE_IP.to_string().as_str(), true),
    ] {
        let send = if connect {
            format!("s.connect(('{NAMESERVER}', 53))\ns.send(query(name))")
        } else {
            format!("s.sendto(query(name), ('{NAMESERVER}', 53))")
        };
        let script = format!(
            "{PY_DNS}
for name in ['mydb.com', '{OTHER}']:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(('{src}', 0))
    {send}
    try:
        show(*s.recvfrom(512))
    except socket.timeout:
        print('timeout')
",
            send = send.replace('\n', "\n    ")
        );
        assert_eq!(
            bed.python(&script),
            format!("('{NAMESERVER}', 53) True 0 {vip}\n('{NAMESERVER}', 53) True 0 {OTHER_IP}"),
            "bound to {src}, connected: {connect}; {}",
            bed.log()
        );
    }
    assert_eq!(bed.dns.seen("mydb.com"), vec![], "{:#?}", bed.dns.log());
}

/// [`dns_from_a_socket_bound_to_a_specific_address_is_answered`] for IPv6
/// sockets (sendmsg6, connect6 and recvmsg6): bound to the namespace's own
/// ULA address, or to `::1`, asking a nameserver at `[::1]:53`.
#[test]
fn dns_from_an_ipv6_socket_bound_to_a_specific_address_is_answered() {
    let mut node = Node::new();
    let mut cmd = std::process::Command::new("sysctl");
    cmd.args(["-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
    node.ns.configure(&mut cmd);
    assert!(cmd.status().expect("sysctl").success(), "IPv6 on");
    node.ns
        .ip(["addr", "add", "fd00:66::1/128", "dev", "lo", "nodad"])
        .expect("a ULA address");
    node.dns
        .serve_also("[::1]:53".parse().unwrap())
        .expect("the nameserver on [::1]:53");
    node.dns.set_a(OTHER, &[OTHER_IP], 30).expect("an A record");
    node.http("127.0.0.2:8080", "east");
    node.start(
        &mydb_entry("240.240.0.40", "STATIC", "  - {address: 127.0.0.2}\n"),
        "us-east1/a",
        false,
    );
    for (src, connect) in [("fd00:66::1", false), ("fd00:66::1", true), ("::1", false)] {
        let send = if connect {
            "s.connect(('::1', 53))\n    s.send(query(name))"
        } else {
            "s.sendto(query(name), ('::1', 53))"
        };
        let script = format!(
            "{PY_DNS}
for name in ['mydb.com', '{OTHER}']:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(('{src}', 0))
    {send}
    try:
        show(*s.recvfrom(512))
    except socket.timeout:
        print('timeout')
"
        );
        let out = Client::new(&node.ns, "python3")
            .args(["-c", &script])
            .cgroup(&node.cgroup)
            .timeout(TIMEOUT)
            .run()
            .expect("running python3");
        assert_eq!(
            stdout(&out).trim(),
            format!("('::1', 53, 0, 0) True 0 240.240.0.40\n('::1', 53, 0, 0) True 0 {OTHER_IP}"),
            "bound to {src}, connected: {connect}: {out:?}\n{}",
            node.log()
        );
    }
}
