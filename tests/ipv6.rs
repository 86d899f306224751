//! IPv6: every ServiceEntry host gets an IPv6 VIP beside its IPv4 one
//! (from `addresses`, or allocated from 2001:2::/48 as Istio does), which
//! connect6 sends to the proxy's `[::1]` listener, or straight to an
//! endpoint on the kernel path and when the daemon is dead; the DNS
//! responder answers AAAA with it, so dual-stack apps reach the service
//! whichever family they pick. DNS sent over IPv6 sockets is captured by
//! sendmsg6, connect6 and the egress program, like IPv4's. Endpoints may
//! be IPv6 too (literals, or names with only AAAA records), reached by the
//! proxy over a veth with ULA addresses inside the test's namespaces.
//!
//! The bed is scenario.rs's node: one namespace with only `lo` (IPv6 on
//! for it), a real DNS server on 127.0.0.1:53 the apps' resolv.conf names,
//! endpoints on loopback addresses. Neither VIP has a route there, so a
//! connect the kernel failed to redirect fails instead of reaching
//! anything.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Command, Output},
};

use redirector_tests::{
    client::{self, Client},
    daemon::{Daemon, DaemonOptions},
    dns::DnsServer,
    http::HttpServer,
    istio::{destination_rule, mydb_entry},
    netns::{self, Netns},
    scenario::{Node, TIMEOUT, count, tcp_client, wait_until},
    tcp::TcpServer,
};

const VIP4: &str = "240.240.0.40";
const FAST4: &str = "240.240.0.41";
const FAST_PORT: u16 = 5432;
const NAMESERVER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A node with IPv6 on (`::1` on `lo`, whatever the host's defaults are)
/// and a non-loopback address of each family (on `lo`: they add no route
/// off the node), as a real node has: resolvers that pass `AI_ADDRCONFIG`
/// (getent) skip a family the node has no such address of.
/// A "remote" namespace with IPv6, joined to the node by a veth:
/// `<prefix>::1` on the node's side, `<prefix>::2` and `::3` on the
/// remote's.
fn remote(node: &Node, prefix: &str) -> (Netns, netns::Link) {
    let remote = Netns::new("remote").expect("creating the remote namespace");
    let mut cmd = Command::new("sysctl");
    cmd.args(["-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
    remote.configure(&mut cmd);
    assert!(cmd.status().expect("sysctl").success());
    let link = netns::link(
        &node.ns,
        &format!("{prefix}::1/64"),
        &remote,
        &format!("{prefix}::2/64"),
    )
    .expect("linking the veth");
    remote
        .ip([
            "addr",
            "add",
            &format!("{prefix}::3/64"),
            "dev",
            &link.b_dev,
            "nodad",
        ])
        .expect("a second remote address");
    (remote, link)
}

fn node() -> Node {
    let node = Node::new();
    let mut cmd = Command::new("sysctl");
    cmd.args(["-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
    node.ns.configure(&mut cmd);
    let status = cmd.status().expect("running sysctl");
    assert!(status.success(), "turning IPv6 on in the node namespace");
    for args in [
        &["addr", "add", "10.66.0.1/32", "dev", "lo"][..],
        &["addr", "add", "fd00:66::1/128", "dev", "lo", "nodad"],
    ] {
        node.ns
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"));
    }
    node
}

/// Either endpoint answered: without outlierDetection both regions take
/// traffic, as in Istio.
fn served(reply: Result<(u16, String), String>) -> bool {
    matches!(&reply, Ok((200, body)) if body == "healthy: east" || body == "healthy: west")
}

/// mydb.com:80 (HTTP) at VIP4 (its IPv6 VIP allocated), endpoints east
/// (127.0.0.2:8080) and west (127.0.0.3:8080) in two regions.
fn mydb() -> String {
    mydb_entry(
        VIP4,
        "STATIC",
        "  - {address: 127.0.0.2, locality: us-east1/a}\n  - {address: 127.0.0.3, locality: us-west1/a}\n",
    )
}

/// fast.test:5432 (TCP) on the kernel path, an explicit IPv6 VIP, one
/// endpoint at 127.0.0.4:9000.
fn fast(vip6: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: fast
  annotations: {{redirector.dev/datapath: kernel}}
spec:
  hosts: [fast.test]
  addresses: [{FAST4}, \"{vip6}\"]
  ports: [{{number: {FAST_PORT}, name: tcp, protocol: TCP, targetPort: 9000}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.4
"
    )
}

fn start(node: &mut Node, yaml: &str) {
    node.http("127.0.0.2:8080", "east");
    node.http("127.0.0.3:8080", "west");
    node.start(yaml, "us-east1/a", false);
}

/// The IPv6 VIP the daemon logged for `host:port`.
fn vip6(node: &Node, host: &str, port: u16) -> Ipv6Addr {
    let log = node.log();
    let prefix = format!("{host}:{port} is served at VIP ");
    let line = log
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no VIP logged for {host}:{port}:\n{log}"));
    // "<v4>:<port> and [<v6>]:<port>"
    let v6 = line
        .split_once(" and [")
        .and_then(|(_, r)| r.split_once(']'))
        .unwrap_or_else(|| panic!("no IPv6 VIP in {line:?}"))
        .0;
    v6.parse().unwrap_or_else(|e| panic!("{v6:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `program args…` as an app: the node, the attached cgroup, a resolv.conf
/// naming the node's nameserver.
fn app(node: &Node, program: &str, args: &[&str]) -> Output {
    Client::new(&node.ns, program)
        .args(args)
        .cgroup(&node.cgroup)
        .nameserver(NAMESERVER)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e:#}"))
}

/// `curl <extra> http://<host>/`: `(status, body)` or what curl said.
fn curl(node: &Node, extra: &[&str], host: &str) -> Result<(u16, String), String> {
    let url = format!("http://{host}/");
    let mut args = vec!["-gsS", "--max-time", "10", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = app(node, "curl", &args);
    let text = stdout(&out);
    if !out.status.success() {
        return Err(format!(
            "curl {url}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    Ok((code.parse().expect("a status"), body.to_owned()))
}

/// `rdt-client peer <addr>`: what getpeername() and getsockname() say.
fn peer(node: &Node, addr: SocketAddr) -> (String, String) {
    let out = Client::new(&node.ns, client::rdt_client_bin())
        .args(["peer", &addr.to_string()])
        .cgroup(&node.cgroup)
        .timeout(TIMEOUT)
        .run()
        .expect("running rdt-client peer");
    assert!(out.status.success(), "rdt-client peer {addr}: {out:?}");
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in {text}"))
            .to_owned()
    };
    (field("peer "), field("local "))
}

fn python(node: &Node, script: &str) -> String {
    let out = app(node, "python3", &["-c", script]);
    assert!(
        out.status.success(),
        "python3 failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    stdout(&out).trim().to_owned()
}

#[test]
fn the_ipv6_vip_reaches_the_service_through_the_proxy() {
    let mut node = node();
    start(&mut node, &mydb());
    let vip6 = vip6(&node, "mydb.com", 80);
    assert_eq!(
        vip6.segments()[..3],
        [0x2001, 2, 0],
        "{vip6} allocated from Istio's 2001:2::/48"
    );

    let reply = curl(&node, &[], &format!("[{vip6}]"));
    assert!(served(reply.clone()), "{reply:?}; log:\n{}", node.log());
    // getpeername6 shows what was dialled; the local end shows the
    // connection really went to the proxy's [::1] listener.
    let (peer_addr, local) = peer(&node, SocketAddr::new(vip6.into(), 80));
    assert_eq!(peer_addr, format!("[{vip6}]:80"));
    assert!(local.starts_with("[::1]:"), "{local}");
    // A socket that refuses IPv4-mapped addresses (IPV6_V6ONLY, as Go's
    // dialer sets) is served too: the proxy listens on [::1] itself.
    let reply = python(
        &node,
        &format!(
            "import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.settimeout(10)
s.connect(('{vip6}', 80))
s.sendall(b'GET / HTTP/1.1\\r\\nHost: mydb.com\\r\\nConnection: close\\r\\n\\r\\n')
data = b''
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b'\\r\\n')[0].decode(), data.split(b'\\r\\n\\r\\n', 1)[1].decode())"
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK healthy: "), "{reply}");
    // The IPv4 VIP dialled from a dual-stack IPv6 socket at its mapped
    // address, as Java dials every IPv4 destination: connect4 never runs
    // for it; connect6 serves it.
    let reply = python(
        &node,
        &format!(
            "import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(('::ffff:{VIP4}', 80))
print(s.getpeername()[:2])
s.sendall(b'GET / HTTP/1.1\\r\\nHost: mydb.com\\r\\nConnection: close\\r\\n\\r\\n')
data = b''
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b'\\r\\n')[0].decode())"
        ),
    );
    assert_eq!(
        reply,
        format!("('::ffff:{VIP4}', 80)\nHTTP/1.1 200 OK"),
        "{}",
        node.log()
    );
    // Another port of the VIP is nobody's: untouched, and with no route
    // there it fails rather than leaving the node.
    let out = app(
        &node,
        "curl",
        &["-gsS", "--max-time", "5", &format!("http://[{vip6}]:81/")],
    );
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn aaaa_answers_let_dual_stack_apps_pick_either_family() {
    let mut node = node();
    node.a_record("other.test", [127, 0, 0, 9], 30);
    start(&mut node, &mydb());
    let vip6 = vip6(&node, "mydb.com", 80);

    // glibc, both families.
    let out = app(&node, "getent", &["ahosts", "mydb.com"]);
    assert!(out.status.success(), "{out:?}");
    let addrs: std::collections::BTreeSet<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(
        addrs,
        [VIP4.to_owned(), vip6.to_string()].into(),
        "getent ahosts"
    );
    let out = app(&node, "getent", &["ahostsv6", "mydb.com"]);
    assert!(
        stdout(&out).starts_with(&format!("{vip6} ")),
        "{out:?} {:#?}\n{}",
        node.dns.log(),
        node.log()
    );
    // Python's getaddrinfo(AF_UNSPEC).
    assert_eq!(
        python(
            &node,
            "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('mydb.com', 80)}))"
        ),
        // Python sorts the strings: "2…" before "240…".
        format!("['{vip6}', '{VIP4}']")
    );
    // dig's AAAA question, answered with the VIP and a TTL of 30 s.
    let out = app(
        &node,
        "dig",
        &["+tries=1", "+noall", "+answer", "mydb.com", "AAAA"],
    );
    let answer = stdout(&out);
    assert!(
        answer.contains("\t30\tIN\tAAAA\t") && answer.trim_end().ends_with(&vip6.to_string()),
        "{answer}"
    );
    // curl as apps run it: either family, and whichever it prefers.
    for extra in [&["-6"][..], &["-4"], &[]] {
        let reply = curl(&node, extra, "mydb.com");
        assert!(
            served(reply.clone()),
            "curl {extra:?} http://mydb.com/: {reply:?}; log:\n{}",
            node.log()
        );
    }
    assert_eq!(node.dns.seen("mydb.com"), vec![], "answered locally");

    // Other names still go to the nameserver, AAAA questions included,
    // and its answer comes back as it sent it.
    let out = app(&node, "getent", &["ahosts", "other.test"]);
    assert!(stdout(&out).starts_with("127.0.0.9 "), "{out:?}");
    let seen = node.dns.seen("other.test");
    assert!(
        seen.iter().any(|s| s.qtype == "AAAA") && seen.iter().any(|s| s.qtype == "A"),
        "{seen:#?}"
    );
}

#[test]
fn locality_failover_works_through_the_ipv6_vip() {
    let mut node = node();
    let yaml = format!("{}{}", mydb(), destination_rule(1, "1s", "1m"));
    start(&mut node, &yaml);
    let vip6 = vip6(&node, "mydb.com", 80);
    let host = format!("[{vip6}]");

    assert_eq!(curl(&node, &[], &host), Ok((200, "healthy: east".into())));
    node.servers[0].set_status(503).expect("east answers 503");
    // The first 503 ejects east (consecutive5xxErrors: 1); from then on
    // the other region serves.
    let bodies: Vec<String> = (0..6)
        .map(|_| curl(&node, &[], &host).expect("an answer").1)
        .collect();
    assert_eq!(
        count(&bodies[1..], "healthy: west"),
        5,
        "{bodies:?}; log:\n{}",
        node.log()
    );
}

#[test]
fn kernel_path_and_fail_open_carry_ipv6_vips_to_ipv4_endpoints() {
    let mut node = node();
    let _endpoint = TcpServer::start(&node.ns, "127.0.0.4:9000".parse().unwrap(), "fast")
        .expect("starting the TCP endpoint");
    let fast6: Ipv6Addr = "fd00:5::10".parse().unwrap();
    let yaml = format!("{}{}", mydb(), fast(&fast6.to_string()));
    start(&mut node, &yaml);
    let vip6 = vip6(&node, "mydb.com", 80);
    assert_eq!(self::vip6(&node, "fast.test", FAST_PORT), fast6);

    // Kernel path: straight to the endpoint at its IPv4-mapped address.
    let fast = SocketAddr::new(fast6.into(), FAST_PORT);
    let out = tcp_client(&node, fast);
    assert!(out.status.success(), "{out:?}\n{}", node.log());
    assert_eq!(stdout(&out).trim(), "hello from fast");
    // Its IPv4 VIP from an IPv6 socket, at the mapped address.
    let mapped = SocketAddr::new(
        FAST4.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped().into(),
        FAST_PORT,
    );
    let out = tcp_client(&node, mapped);
    assert!(out.status.success(), "{out:?}\n{}", node.log());
    assert_eq!(stdout(&out).trim(), "hello from fast");
    let (peer_addr, _) = peer(&node, mapped);
    assert_eq!(peer_addr, format!("[::ffff:{FAST4}]:{FAST_PORT}"));
    let (peer_addr, local) = peer(&node, fast);
    assert_eq!(peer_addr, format!("[{fast6}]:{FAST_PORT}"));
    assert!(local.starts_with("[::ffff:127.0.0."), "{local}");
    assert!(
        !node.log().contains("accepted"),
        "the proxy carried a kernel-path connect:\n{}",
        node.log()
    );

    // The daemon dies: the proxy's listeners are gone, and connects to
    // the IPv6 VIP go to the last published slot table's endpoint.
    node.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");
    let reply = curl(&node, &[], &format!("[{vip6}]"));
    assert!(served(reply.clone()), "fail-open over IPv6: {reply:?}");
    let (peer_addr, local) = peer(&node, SocketAddr::new(vip6.into(), 80));
    assert_eq!(peer_addr, format!("[{vip6}]:80"), "still the VIP");
    assert!(local.starts_with("[::ffff:127.0.0."), "{local}");
}

/// glibc, Python and dig talking DNS to a nameserver at `[::1]:53`: the
/// responder's `[::1]` sockets answer configured hosts, other names reach
/// that nameserver from the responder's own sockets, over UDP (connected
/// and not) and TCP. The daemon lives in the attached cgroup and resolves
/// its endpoint name through the same nameserver: its marked sockets are
/// left alone, or the name (also a configured host) would resolve to its
/// own VIP.
#[test]
fn dns_over_ipv6_sockets_is_captured_and_other_names_forwarded() {
    let mut node = node();
    let ns6 = DnsServer::start(&node.ns, "[::1]:53".parse().unwrap()).expect("DNS on [::1]:53");
    ns6.set_a("other.test", &[Ipv4Addr::new(127, 0, 0, 9)], 30)
        .expect("A record");
    ns6.set_a("db.test", &[Ipv4Addr::new(127, 0, 0, 2)], 1)
        .expect("A record");
    node.http("127.0.0.2:8080", "east");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{VIP4}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: DNS
  endpoints:
  - address: db.test
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: also}}
spec:
  hosts: [db.test]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.5
"
    );
    node.write_config(&yaml);
    let args: Vec<String> = node
        .args("us-east1/a")
        .into_iter()
        .map(|a| {
            if a == "127.0.0.1:53" {
                "[::1]:53".into()
            } else {
                a
            }
        })
        .collect();
    let daemon = Daemon::start(DaemonOptions {
        netns: &node.ns,
        cgroup: Some(&node.cgroup),
        args,
        ready_timeout: TIMEOUT,
        env: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
    node.daemon = Some(daemon);
    let vip6 = vip6(&node, "mydb.com", 80);

    let app6 = |program: &str, args: &[&str]| {
        Client::new(&node.ns, program)
            .args(args)
            .cgroup(&node.cgroup)
            .resolv_conf("nameserver ::1\noptions timeout:2 attempts:2\n")
            .timeout(TIMEOUT)
            .run()
            .unwrap_or_else(|e| panic!("running {program} {args:?}: {e:#}"))
    };
    let first_words = |out: &Output| -> std::collections::BTreeSet<String> {
        stdout(out)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    // glibc connects its UDP socket to [::1]:53 (connect6, then egress).
    let out = app6("getent", &["ahosts", "mydb.com"]);
    assert_eq!(
        first_words(&out),
        [VIP4.to_owned(), vip6.to_string()].into(),
        "{out:?}\n{}",
        node.log()
    );
    let out = app6("getent", &["ahosts", "other.test"]);
    assert_eq!(
        first_words(&out),
        ["127.0.0.9".to_owned()].into(),
        "{out:?}"
    );
    assert!(
        node.log().contains("relayed an answer from [::1]:53"),
        "forwarded to the nameserver the app asked; log:\n{}",
        node.log()
    );
    // curl by name, nameserver over IPv6.
    let out = app6("curl", &["-sS", "--max-time", "10", "http://mydb.com/"]);
    assert_eq!(stdout(&out), "healthy: east", "{out:?}\n{}", node.log());

    // An unconnected socket (sendmsg6 per datagram), from a known port.
    let script = "import socket, struct
def query(name, qtype):
    q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\\x00' + struct.pack('>HH', qtype, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.bind(('::', 45455))
for name, qtype in [('mydb.com', 28), ('other.test', 1)]:
    s.sendto(query(name, qtype), ('::1', 53))
    data, src = s.recvfrom(512)
    ancount = struct.unpack('>H', data[6:8])[0]
    addr = data[-16:] if qtype == 28 else data[-4:]
    fam = socket.AF_INET6 if qtype == 28 else socket.AF_INET
    print(src[:2], data[:2] == b'\\x12\\x34', ancount, socket.inet_ntop(fam, addr))
";
    let out = app6("python3", &["-c", script]);
    assert_eq!(
        stdout(&out).trim(),
        format!("('::1', 53) True 1 {vip6}\n('::1', 53) True 1 127.0.0.9"),
        "answers appear to come from the nameserver asked: {out:?}\n{}",
        node.log()
    );
    // TCP over IPv6 (connect6, then sock_ops).
    let out = app6(
        "dig",
        &["+tcp", "+short", "+tries=1", "@::1", "mydb.com", "AAAA"],
    );
    assert_eq!(stdout(&out).trim(), vip6.to_string(), "{out:?}");
    let out = app6("dig", &["+tcp", "+short", "+tries=1", "@::1", "other.test"]);
    assert_eq!(stdout(&out).trim(), "127.0.0.9", "{out:?}\n{}", node.log());

    assert_eq!(ns6.seen("mydb.com"), vec![], "answered locally");
    let seen = ns6.seen("other.test");
    assert!(
        seen.iter().all(|s| s.src.port() != 45455) && seen.iter().any(|s| s.tcp),
        "forwarded by the responder, over the app's transport: {seen:#?}"
    );
    assert!(
        node.dns.seen("other.test").is_empty(),
        "not the IPv4 nameserver"
    );
    // The daemon's own lookups of db.test reached the nameserver.
    assert!(!ns6.seen("db.test").is_empty(), "{:#?}", ns6.log());
}

/// IPv6 endpoints behind the proxy, whichever VIP the app dials: east is
/// an IPv6 literal, west a name with only AAAA records (resolution DNS
/// takes AAAA when a name has no A records, Envoy's V4_PREFERRED). Both
/// live in a "remote" namespace joined to the node by a veth with ULA
/// addresses. When east answers 503 it is ejected and west serves.
#[test]
fn ipv6_endpoints_serve_and_fail_over() {
    let mut node = node();
    let (remote, _link) = remote(&node, "fd00:7");
    let east = HttpServer::start(&remote, "[fd00:7::2]:8080".parse().unwrap(), "east")
        .expect("starting east");
    let _west = HttpServer::start(&remote, "[fd00:7::3]:8080".parse().unwrap(), "west")
        .expect("starting west");
    node.dns
        .set_aaaa("west.v6.test", &["fd00:7::3".parse().unwrap()], 30)
        .expect("AAAA record");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [mydb.com]
  addresses: [{VIP4}]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  resolution: DNS
  endpoints:
  - {{address: \"fd00:7::2\", locality: us-east1/a}}
  - {{address: west.v6.test, locality: us-west1/a}}
{}",
        destination_rule(1, "1s", "1m")
    );
    node.start(&yaml, "us-east1/a", false);
    let vip6 = vip6(&node, "mydb.com", 80);
    let v6_host = format!("[{vip6}]");

    for host in [v6_host.as_str(), VIP4] {
        assert_eq!(
            curl(&node, &[], host),
            Ok((200, "healthy: east".into())),
            "via {host}; log:\n{}",
            node.log()
        );
    }
    east.set_status(503).expect("east answers 503");
    let bodies: Vec<String> = (0..5)
        .map(|_| curl(&node, &[], &v6_host).expect("an answer").1)
        .collect();
    assert_eq!(
        count(&bodies[1..], "healthy: west"),
        4,
        "{bodies:?}; log:\n{}",
        node.log()
    );
    assert_eq!(curl(&node, &[], VIP4), Ok((200, "healthy: west".into())));
    let out = Command::new(redirector_tests::daemon::redirector_bin())
        .args(["endpoints", "--pin-dir"])
        .arg(node.pins.path())
        .output()
        .expect("redirector endpoints");
    let table = stdout(&out);
    assert!(
        table.contains("[fd00:7::2]:8080") && table.contains("west.v6.test (IPv6):8080"),
        "{table}"
    );
    // The daemon dies: connect6 fails open to the IPv6 slot table, which
    // holds west only (east is ejected). The IPv4 table cannot hold IPv6
    // endpoints, so the IPv4 VIP has none to fail open to: EPERM at once.
    node.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");
    assert_eq!(
        curl(&node, &[], &v6_host),
        Ok((200, "healthy: west".into())),
        "fail-open to an IPv6 endpoint"
    );
    let failed = curl(&node, &[], VIP4).expect_err("no IPv4 slot table");
    assert!(
        failed.contains("Operation not permitted") || failed.contains("(7)"),
        "{failed}"
    );
    // The daemon goes before the remote namespace its endpoints live in.
    drop(node);
}

/// The kernel path to IPv6 endpoints: connect6 picks from the service's
/// IPv6 slot table, sock_ops reports each outcome (an IPv6 record in the
/// outcome ring), and a refusing endpoint is ejected from the table. A
/// socket with IPV6_V6ONLY reaches IPv6 endpoints too.
#[test]
fn the_kernel_path_reaches_ipv6_endpoints_and_ejects_a_refusing_one() {
    let mut node = node();
    let (remote, _link) = remote(&node, "fd00:8");
    // fd00:8::3 has nothing listening: connects to it are refused.
    let _up = TcpServer::start(&remote, "[fd00:8::2]:9000".parse().unwrap(), "up")
        .expect("starting the endpoint");
    let vip6: Ipv6Addr = "fd00:5::20".parse().unwrap();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: pg
  annotations: {{redirector.dev/datapath: kernel}}
spec:
  hosts: [pg.test]
  addresses: [{FAST4}, \"{vip6}\"]
  ports: [{{number: {FAST_PORT}, name: tcp, protocol: TCP, targetPort: 9000}}]
  resolution: STATIC
  endpoints:
  - address: \"fd00:8::2\"
  - address: \"fd00:8::3\"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pg}}
spec:
  host: pg.test
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m}}
"
    );
    node.start(&yaml, "us-east1/a", false);
    let vip = SocketAddr::new(vip6.into(), FAST_PORT);

    // Half the slots refuse until the refusal is reported and ejects.
    let mut refused = 0;
    for _ in 0..30 {
        let out = tcp_client(&node, vip);
        if out.status.success() {
            assert_eq!(stdout(&out).trim(), "hello from up");
        } else {
            refused += 1;
            break;
        }
    }
    assert_eq!(refused, 1, "no connect reached the refusing endpoint");
    wait_until("the refusing endpoint to be ejected", TIMEOUT, || {
        node.log().contains("ejected") && node.log().contains("[fd00:8::3]:9000")
    });
    for _ in 0..10 {
        let out = tcp_client(&node, vip);
        assert!(out.status.success(), "{out:?}\n{}", node.log());
        assert_eq!(stdout(&out).trim(), "hello from up");
    }
    assert!(
        !node.log().contains("accepted"),
        "the proxy carried a kernel-path connect:\n{}",
        node.log()
    );
    let (peer_addr, local) = peer(&node, vip);
    assert_eq!(peer_addr, format!("[{vip6}]:{FAST_PORT}"));
    assert!(
        local.starts_with("[fd00:8::1]:"),
        "straight to the endpoint: {local}"
    );
    let reply = python(
        &node,
        &format!(
            "import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.settimeout(10)
s.connect(('{vip6}', {FAST_PORT}))
print(s.recv(64).decode().strip())"
        ),
    );
    assert_eq!(reply, "hello from up", "an IPV6_V6ONLY socket, kernel path");
    // The daemon goes before the remote namespace its endpoints live in.
    drop(node);
}

/// A pin directory of a build before IPv6 (same ABI) lacks IPv6's
/// maps and four links: a new daemon takes it over, creating them,
/// and both VIPs work at once.
#[test]
fn a_pin_dir_from_before_ipv6_is_taken_over() {
    let mut node = node();
    start(&mut node, &mydb());
    node.daemon
        .as_mut()
        .expect("a daemon")
        .kill()
        .expect("kill -9");
    let v3 = node.pins.path().join("v3");
    for pin in [
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
        std::fs::remove_file(v3.join(pin)).unwrap_or_else(|e| panic!("removing {pin}: {e}"));
    }
    assert!(v3.join("link_connect4").exists() && v3.join("RD_SVC_V3").exists());

    node.start(&mydb(), "us-east1/a", false);
    assert!(node.log().contains("taking over"), "{}", node.log());
    for pin in [
        "RD_SVC6_V3",
        "RD_SLOTS6_V3",
        "link_connect6",
        "link_sendmsg6",
    ] {
        assert!(v3.join(pin).exists(), "{pin} is pinned again");
    }
    let vip6 = vip6(&node, "mydb.com", 80);
    for host in [format!("[{vip6}]"), VIP4.to_owned(), "mydb.com".to_owned()] {
        let reply = curl(&node, &[], &host);
        assert!(served(reply.clone()), "{host}: {reply:?}\n{}", node.log());
    }
}
