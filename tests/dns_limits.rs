//! What one app can hold of the DNS responder (`dns/limits.rs`), on real
//! BPF with real sockets: a flood of forwarded queries to a black-holed
//! nameserver, or to many, leaves other apps' queries answered; a flood of
//! DNS-over-TCP connections is capped per source, half-sent messages and
//! idle connections are closed at their timeouts, and a normal TCP query
//! is still answered, with the daemon's memory bounded.
//!
//! The bed is scenario.rs's node (loopback only, a real nameserver on
//! 127.0.0.1:53). A black-holed nameserver is a UDP socket on a loopback
//! address that never reads: datagrams to it vanish, with no ICMP error
//! to end the wait early.

use std::{
    net::{Ipv4Addr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client::Client,
    istio::mydb_entry,
    scenario::{Node, TIMEOUT},
};

/// A name the nameserver knows and the config does not: forwarded.
const OTHER: &str = "other.test";
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

fn node() -> Node {
    let mut node = Node::new();
    node.dns.set_a(OTHER, &[OTHER_IP], 30).expect("an A record");
    node.http("127.0.0.2:8080", "east");
    node.start(
        &mydb_entry("240.240.0.40", "STATIC", "  - {address: 127.0.0.2}\n"),
        "us-east1/a",
        false,
    );
    node
}

/// UDP sockets on `addrs`:53 in the node's namespace that never read.
fn black_holes(node: &Node, addrs: Vec<Ipv4Addr>) -> Vec<UdpSocket> {
    node.ns
        .spawn(move || async move {
            addrs
                .into_iter()
                .map(|a| UdpSocket::bind((a, 53)).unwrap_or_else(|e| panic!("{a}:53: {e}")))
                .collect::<Vec<_>>()
        })
        .join()
        .expect("binding the black holes")
}

/// Python: `query(name, tid)` builds an A query; `rcode(data)`.
const PY_DNS: &str = "import socket, struct, time, random, json, sys
def query(name, tid):
    q = struct.pack('>HHHHHH', tid, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\\x00' + struct.pack('>HH', 1, 1)
def rcode(data):
    return data[3] & 15
";

/// Sends A queries for `name` at `rate` per second for `secs` from one
/// unconnected socket (bound to `src`:0) to `targets` in turn, never
/// waiting for answers; prints the count sent and the answers' rcodes as
/// JSON.
fn flood_script(src: &str, targets: &[String], rate: u32, secs: u32) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{PY_DNS}
targets = [{targets}]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{src}', 0))
s.setblocking(False)
rcodes = {{}}
def drain():
    while True:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        r = rcode(data)
        rcodes[r] = rcodes.get(r, 0) + 1
sent = 0
start = time.monotonic()
while time.monotonic() - start < {secs}:
    due = int((time.monotonic() - start) * {rate})
    while sent < due:
        try:
            s.sendto(query('flood%d.test' % sent, sent & 0xffff), (targets[sent % len(targets)], 53))
        except BlockingIOError:
            pass
        sent += 1
    drain()
    time.sleep(0.005)
time.sleep(2.5)
drain()
print(json.dumps({{'sent': sent, 'rcodes': rcodes}}))
"
    )
}

/// Asks for OTHER `n` times, `gap_ms` apart, each from a fresh socket
/// bound to `src`:0, without waiting for earlier answers (an app's
/// threads); an answer counts if it has the right address within 2 s (a
/// resolver's `timeout:2`). Prints how many did, then the others' fates.
fn victim_script(src: &str, n: u32, gap_ms: u32) -> String {
    format!(
        "{PY_DNS}
import selectors
sel = selectors.DefaultSelector()
sent_at = {{}}
fate = {{}}
def poll(until):
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        for key, _ in sel.select(timeout=left):
            i = key.data
            data = key.fileobj.recv(4096)
            took = time.monotonic() - sent_at[i]
            sel.unregister(key.fileobj)
            key.fileobj.close()
            if rcode(data) != 0:
                fate[i] = 'rcode %d' % rcode(data)
            elif socket.inet_ntoa(data[-4:]) != '{OTHER_IP}':
                fate[i] = 'wrong address'
            elif took > 2:
                fate[i] = 'late %.1f s' % took
            else:
                fate[i] = 'ok'
for i in range({n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('{src}', 0))
    s.setblocking(False)
    sent_at[i] = time.monotonic()
    s.sendto(query('{OTHER}', 0x4000 + i), ('127.0.0.1', 53))
    sel.register(s, selectors.EVENT_READ, i)
    poll(time.monotonic() + {gap_ms} / 1000)
poll(time.monotonic() + 2.5)
print(sum(1 for f in fate.values() if f == 'ok'))
print([fate.get(i, 'timeout') for i in range({n}) if fate.get(i) != 'ok'])
"
    )
}

fn python(node: &Node, script: &str) -> String {
    let out = Client::new(&node.ns, "python3")
        .args(["-c", script])
        .cgroup(&node.cgroup)
        .timeout(Duration::from_secs(60))
        .run()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python3: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The daemon's resident memory, KiB.
fn rss_kib(node: &Node) -> u64 {
    let pid = node.daemon.as_ref().expect("a daemon").pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Runs `flood` in the background, and `victim` once `delay` has passed;
/// (flood's output, victim's output).
fn flood_and_victim(node: &Node, flood: &str, victim: &str, delay: Duration) -> (String, String) {
    thread::scope(|s| {
        let flooder = s.spawn(|| python(node, flood));
        thread::sleep(delay);
        let victim = python(node, victim);
        (flooder.join().expect("the flooder"), victim)
    })
}

/// The victim's output: (answered, failures).
fn answered(out: &str) -> (u32, String) {
    let (ok, bad) = out.split_once('\n').unwrap_or((out, ""));
    (ok.trim().parse().expect("a count"), bad.to_owned())
}

/// One process floods a black-holed nameserver at 400 queries a second
/// (twice what filled the old node-wide 1,024 slots held 5 s each); another
/// process of the same namespace, with the same source address
/// (127.0.0.1), asks the real nameserver 30 times meanwhile: every query
/// is answered within its 2 s timeout. The flood's queries fail fast:
/// REFUSED past the nameserver's share, then SERVFAIL once it is
/// remembered as silent.
#[test]
fn a_flood_to_a_black_holed_nameserver_leaves_other_queries_answered() {
    let node = node();
    let _holes = black_holes(&node, vec![Ipv4Addr::new(127, 0, 0, 99)]);
    let flood = flood_script("0.0.0.0", &["127.0.0.99".into()], 400, 8);
    let victim = victim_script("0.0.0.0", 30, 150);
    let before = rss_kib(&node);
    let (flood, victim, peak) = thread::scope(|s| {
        let both = s.spawn(|| flood_and_victim(&node, &flood, &victim, Duration::from_secs(3)));
        thread::sleep(Duration::from_secs(5));
        let peak = rss_kib(&node);
        let (flood, victim) = both.join().expect("flood and victim");
        (flood, victim, peak)
    });
    eprintln!(
        "flood: {flood}; victim: {victim}; daemon RSS {before} KiB before, {peak} KiB under the flood"
    );
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
    let (ok, bad) = answered(&victim);
    assert_eq!(ok, 30, "the other process's queries: {bad}\n{flood}");
    let flood: serde_json::Value = serde_json::from_str(&flood).expect("the flood's JSON");
    let servfail = flood["rcodes"]["2"].as_u64().unwrap_or(0);
    let refused = flood["rcodes"]["5"].as_u64().unwrap_or(0);
    let sent = flood["sent"].as_u64().expect("sent");
    assert!(
        servfail > sent / 2,
        "the silent nameserver's queries fail fast: {flood}"
    );
    assert!(refused > 0, "past its share, REFUSED at once: {flood}");
}

/// One source (127.0.0.1) floods 200 black-holed nameservers at 1,000
/// queries a second, which would hold every slot of the node; a process
/// with its own source address (bound to 127.0.0.53, as a local stub
/// resolver is) still gets all its answers.
#[test]
fn one_source_cannot_take_the_whole_nodes_forwarding() {
    let node = node();
    let addrs: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let targets: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let _holes = black_holes(&node, addrs);
    let flood = flood_script("0.0.0.0", &targets, 1000, 6);
    let victim = victim_script("127.0.0.53", 30, 100);
    let (flood, victim) = flood_and_victim(&node, &flood, &victim, Duration::from_secs(2));
    eprintln!("flood: {flood}; victim: {victim}");
    let (ok, bad) = answered(&victim);
    assert_eq!(ok, 30, "the other source's queries: {bad}\n{flood}");
    let flood: serde_json::Value = serde_json::from_str(&flood).expect("the flood's JSON");
    assert!(
        flood["rcodes"]["5"].as_u64().unwrap_or(0) > 1000,
        "the flooding source is REFUSED past its share: {flood}"
    );
}

/// Python: opens `per_source` DNS-over-TCP connections (to 127.0.0.1:53,
/// captured) from each of `sources` (bound addresses); on every other one
/// sends one byte of a length prefix and stops (a slowloris), the rest
/// stay silent. Watches them for `secs`; prints one line per connection:
/// kind (`partial`/`idle`), source, and when the daemon closed it
/// (seconds), or -1.
fn tcp_flood_script(sources: &[String], per_source: u32, secs: u32) -> String {
    let sources = sources
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "import socket, selectors, time, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
conns = []
start = time.monotonic()
for src in [{sources}]:
    for i in range({per_source}):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((src, 0))
        c.connect(('127.0.0.1', 53))
        kind = 'partial' if i % 2 == 0 else 'idle'
        if kind == 'partial':
            c.send(b'\\x00')
        c.setblocking(False)
        conns.append([kind, src, -1.0])
        sel.register(c, selectors.EVENT_READ, len(conns) - 1)
open_ = len(conns)
while open_ and time.monotonic() - start < {secs}:
    for key, _ in sel.select(timeout=0.2):
        try:
            data = key.fileobj.recv(4096)
        except (ConnectionResetError, BlockingIOError):
            data = b''
        if not data:
            conns[key.data][2] = time.monotonic() - start
            sel.unregister(key.fileobj)
            key.fileobj.close()
            open_ -= 1
for kind, src, closed in conns:
    print(kind, src, round(closed, 2))
"
    )
}

/// A DNS-over-TCP flood: 12 sources with 40 connections each, half of
/// them having sent one byte of a message, half silent. Each source gets
/// 32 (the rest are closed at once); the half-sent ones are closed at the
/// read timeout (3 s), the silent ones at the idle timeout (10 s); a
/// normal TCP query from another source is answered meanwhile; the
/// daemon's memory grows by little.
#[test]
fn dns_over_tcp_floods_are_capped_and_timed_out() {
    let node = node();
    let sources: Vec<String> = (10..22).map(|i| format!("127.0.0.{i}")).collect();
    let script = tcp_flood_script(&sources, 40, 16);
    let before = rss_kib(&node);
    let (lines, peak, dig, dig_took) = thread::scope(|s| {
        let flooder = s.spawn(|| python(&node, &script));
        thread::sleep(Duration::from_secs(2));
        let peak = rss_kib(&node);
        let started = Instant::now();
        let dig = Client::new(&node.ns, "dig")
            .args(["@127.0.0.1", "+tcp", "+tries=1", "+time=3", "+short", OTHER])
            .cgroup(&node.cgroup)
            .timeout(TIMEOUT)
            .run()
            .expect("running dig");
        let took = started.elapsed();
        (flooder.join().expect("the flooder"), peak, dig, took)
    });
    eprintln!(
        "daemon RSS {before} KiB before, {peak} KiB under the flood; dig +tcp took {dig_took:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        OTHER_IP.to_string(),
        "a normal TCP query during the flood: {dig:?}"
    );
    let conns: Vec<(String, String, f64)> = lines
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let kind = w.next().expect("kind").to_owned();
            let src = w.next().expect("source").to_owned();
            let closed = w.next().expect("closed").parse().expect("a time");
            (kind, src, closed)
        })
        .collect();
    assert_eq!(conns.len(), 480);
    let refused = |c: &&(String, String, f64)| c.2 >= 0.0 && c.2 < 1.5;
    for src in &sources {
        let held = conns.iter().filter(|c| &c.1 == src && !refused(c)).count();
        assert_eq!(held, 32, "{src}'s connections held: {lines}");
    }
    for (kind, src, closed) in conns.iter().filter(|c| !refused(c)) {
        let (lo, hi) = if kind == "partial" {
            (2.5, 8.0)
        } else {
            (9.5, 15.5)
        };
        assert!(
            (lo..hi).contains(closed),
            "a {kind} connection from {src} closed at {closed} s, not within {lo}..{hi}"
        );
    }
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
}

/// An app that pipelines DNS-over-TCP queries and never reads the answers
/// holds the responder's task and buffers only until the write timeout
/// (5 s): the connection is then closed, with answers to many of its
/// queries never written.
#[test]
fn a_tcp_client_that_takes_no_answers_is_closed_at_the_write_timeout() {
    let node = node();
    let script = format!(
        "{PY_DNS}
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
c.connect(('127.0.0.1', 53))
c.setblocking(False)
one = query('mydb.com', 7)
blob = (struct.pack('>H', len(one)) + one) * 200000
sent = 0
start = time.monotonic()
stalled = None
closed = 'open'
while time.monotonic() - start < 6:
    try:
        n = c.send(blob[sent:sent + 65536])
        sent += n
        stalled = None
    except BlockingIOError:
        stalled = stalled or time.monotonic()
        if time.monotonic() - stalled > 1:
            break
        time.sleep(0.01)
    except (ConnectionResetError, BrokenPipeError):
        # On a slow machine the responder may keep reading long enough
        # for its write timeout to end the connection while this still
        # sends.
        closed = 'reset'
        break
blocked_at = time.monotonic() - start
if closed == 'open':
    time.sleep(7)
c.setblocking(True)
c.settimeout(3)
got = 0
try:
    while closed == 'open':
        data = c.recv(65536)
        if not data:
            closed = 'eof'
            break
        got += len(data)
except ConnectionResetError:
    closed = 'reset'
except socket.timeout:
    pass
print(sent // (len(one) + 2), got, closed, round(blocked_at, 1))
"
    );
    let out = python(&node, &script);
    eprintln!("queries sent, answer bytes read, end, stalled at: {out}");
    let mut w = out.split_whitespace();
    let sent: u64 = w.next().and_then(|v| v.parse().ok()).expect("sent");
    let got: u64 = w.next().and_then(|v| v.parse().ok()).expect("read");
    let end = w.next().expect("end");
    assert!(
        end == "eof" || end == "reset",
        "the connection is closed once the app took no answer for 5 s: {out}\n{}",
        node.log()
    );
    // Each answer is longer than its query: not all were written.
    assert!(got < sent * 30, "{out}");
    assert!(
        node.log().contains("the app took no answer"),
        "{}",
        node.log()
    );
}
