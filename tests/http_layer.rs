//! HTTP/1.1 through the proxy, as an app and an endpoint see it: keep-alive
//! on both sides, the Host header kept, bodies streamed intact and with
//! back-pressure both ways, `Expect: 100-continue`, websocket upgrades,
//! header limits, conflicting framing and request smuggling, and endpoints
//! that answer with broken HTTP.
//!
//! The app is curl or `rdt-client` inside the attached cgroup dialling the
//! VIP; endpoints listen on loopback in the node's namespace: `EchoServer`
//! (tells what reached it), `RogueServer` (raw bytes) and
//! `WebSocketServer`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    client,
    echo::{self, EchoServer, Received},
    istio::{mydb_entry, mydb_rule},
    process,
    rogue::{Rogue, RogueServer},
    scenario::{Node, TIMEOUT, wait_until},
    websocket::WebSocketServer,
};

const VIP: &str = "240.240.0.30";
const ENDPOINT: &str = "127.0.10.1:8080";
const MIB: u64 = 1024 * 1024;

/// A node whose `mydb.com` (VIP:80) has one endpoint, [`ENDPOINT`], with
/// outlier detection on (so failures are counted) but a threshold never
/// reached here.
fn start(node: &mut Node) {
    let entry = mydb_entry(VIP, "STATIC", "  - {address: 127.0.10.1}\n");
    let rule = mydb_rule(
        "    outlierDetection:
      consecutive5xxErrors: 100000
      interval: 1m
      baseEjectionTime: 1m
",
    );
    node.start(&(entry + &rule), "us-east1", false);
}

fn echo_node() -> (Node, EchoServer) {
    let mut node = Node::new();
    let echo = EchoServer::start(&node.ns, ENDPOINT.parse().unwrap()).expect("echo endpoint");
    start(&mut node);
    (node, echo)
}

/// [`echo_node`] with [`small_socket_buffers`]; and their bound.
fn echo_node_with_small_buffers() -> (Node, EchoServer, u64) {
    let mut node = Node::new();
    let bound = small_socket_buffers(&node);
    let echo = EchoServer::start(&node.ns, ENDPOINT.parse().unwrap()).expect("echo endpoint");
    start(&mut node);
    (node, echo, bound)
}

/// curl as the app against `http://mydb.com<path>`s (extra `args` first):
/// its output; `-w` adds `\n<status>` after each response.
fn curl(node: &Node, args: &[&str], paths: &[&str]) -> Output {
    let resolve = format!("mydb.com:80:{VIP}");
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("http://mydb.com{p}"))
        .collect();
    let mut all = vec!["-sS", "--max-time", "15", "--resolve", &resolve];
    all.extend_from_slice(args);
    all.extend(urls.iter().map(String::as_str));
    node.client("curl", &all)
}

/// One request with curl: (status, body, curl's stderr).
fn request(node: &Node, args: &[&str], path: &str) -> (u16, String, String) {
    let mut with_status = args.to_vec();
    with_status.extend(["-w", "\n%{http_code}"]);
    let out = curl(node, &with_status, &[path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "curl {path}: {stdout}{stderr}\ndaemon log:\n{}",
        node.log()
    );
    let (body, code) = stdout.rsplit_once('\n').expect("a status line");
    (code.parse().expect("a status"), body.to_owned(), stderr)
}

/// What the echo endpoint said it received, from its JSON answer.
fn received(node: &Node, args: &[&str], path: &str) -> Received {
    let (status, body, _) = request(node, args, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// `rdt-client raw` sending `bytes` to the VIP: (exit code, what came back).
fn raw(node: &Node, name: &str, bytes: &[u8]) -> (i32, String) {
    let file = node.dir.path().join(name);
    std::fs::write(&file, bytes).expect("writing the request");
    let out = node.client(
        client::rdt_client_bin().to_str().unwrap(),
        &[
            "raw",
            &format!("{VIP}:80"),
            "--send-file",
            file.to_str().unwrap(),
        ],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A client process running in the background as the app; killed on drop.
struct Background {
    child: Child,
    /// The last number it printed (`sent <n>`).
    progress: Arc<AtomicU64>,
}

impl Background {
    fn start(node: &Node, args: &[&str]) -> Background {
        let mut cmd = Command::new(client::rdt_client_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        node.ns.configure(&mut cmd);
        node.cgroup.configure(&mut cmd);
        let mut child = cmd.spawn().expect("starting rdt-client");
        let progress = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&progress);
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("sent ").and_then(|n| n.parse().ok()) {
                    seen.store(n, Ordering::SeqCst);
                }
            }
        });
        Background { child, progress }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// Polls `count` until it has not changed for 500 ms (and is above
/// `floor`); its value then.
fn settled(what: &str, floor: u64, count: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (count(), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now > floor && since.elapsed() >= Duration::from_millis(500) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not settle above {floor} (last {last})"
        );
    }
}

/// Caps the node's TCP buffers at 1 MiB each way (the machine's own
/// maxima vary, up to tens of MiB) and returns what the buffers between
/// the app and the endpoint can then hold at most: two TCP hops (app →
/// proxy, proxy → endpoint) of a full send and receive buffer each, plus
/// hyper's buffers (a read buffer and a write queue of about 400 KiB each
/// in the proxy's server and client and in the endpoint, and a frame in
/// flight between them; 4 MiB allowed).
fn small_socket_buffers(node: &Node) -> u64 {
    let out = node.client(
        "sh",
        &[
            "-c",
            "echo '4096 131072 1048576' > /proc/sys/net/ipv4/tcp_rmem && \
             echo '4096 16384 1048576' > /proc/sys/net/ipv4/tcp_wmem",
        ],
    );
    assert!(
        out.status.success(),
        "setting the node's TCP buffers: {out:?}"
    );
    2 * (MIB + MIB) + 4 * MIB
}

/// `-o /dev/null` for each of `n` URLs.
fn discard(n: usize) -> Vec<&'static str> {
    (0..n).flat_map(|_| ["-o", "/dev/null"]).collect()
}

fn daemon_fds(node: &Node) -> usize {
    let pid = node.daemon.as_ref().expect("daemon").pid();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .count()
}

#[test]
fn keep_alive_carries_several_requests_on_one_connection_each_side() {
    let (node, echo) = echo_node();
    let mut args = discard(3);
    args.extend(["-w", "%{http_code}:%{num_connects} "]);
    let out = curl(&node, &args, &["/one", "/two", "/three"]);
    // One app connection: curl connected once and reused it twice.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200:1 200:0 200:0 ",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One upstream connection: the endpoint saw all three on its first.
    let seen: Vec<(u64, u64, String)> = echo
        .received()
        .into_iter()
        .map(|r| (r.connection, r.request_on_connection, r.path))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 1, "/one".to_owned()),
            (1, 2, "/two".to_owned()),
            (1, 3, "/three".to_owned())
        ]
    );
    assert_eq!(echo.connections(), 1);
}

#[test]
fn the_host_header_reaches_the_endpoint_as_the_app_sent_it() {
    let (node, _echo) = echo_node();
    assert_eq!(received(&node, &[], "/").header("host"), ["mydb.com"]);
    let custom = received(&node, &["-H", "Host: Custom.Example:8443"], "/");
    assert_eq!(custom.header("host"), ["Custom.Example:8443"]);
}

#[test]
fn large_bodies_stream_intact_both_ways() {
    let (node, _echo) = echo_node();
    let size = 32 * MIB as usize;
    let data = echo::pattern(size);
    let digest = echo::sha256(&data);
    let file = node.dir.path().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());

    let sized = received(&node, &["--data-binary", &upload], "/upload");
    assert_eq!((sized.body_len, &sized.body_sha256), (size as u64, &digest));
    assert_eq!(sized.header("content-length"), [size.to_string()]);
    assert!(sized.header("transfer-encoding").is_empty());

    let chunked = received(
        &node,
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &upload],
        "/upload",
    );
    assert_eq!(
        (chunked.body_len, &chunked.body_sha256),
        (size as u64, &digest)
    );
    assert_eq!(chunked.header("transfer-encoding"), ["chunked"]);
    assert!(chunked.header("content-length").is_empty());

    for framing in ["cl", "chunked"] {
        let out_file = node.dir.path().join(format!("download-{framing}.bin"));
        let headers = node.dir.path().join(format!("headers-{framing}.txt"));
        let (status, _, _) = request(
            &node,
            &[
                "-o",
                out_file.to_str().unwrap(),
                "-D",
                headers.to_str().unwrap(),
            ],
            &format!("/download/{size}/{framing}"),
        );
        assert_eq!(status, 200);
        let got = std::fs::read(&out_file).unwrap();
        assert_eq!(got.len(), size, "{framing}");
        assert_eq!(echo::sha256(&got), digest, "{framing}");
        let head = std::fs::read_to_string(&headers).unwrap().to_lowercase();
        let expected = match framing {
            "cl" => format!("content-length: {size}"),
            _ => "transfer-encoding: chunked".to_owned(),
        };
        assert!(head.contains(&expected), "{framing}: {head}");
    }
}

#[test]
fn an_endpoint_that_stops_reading_holds_the_app_back() {
    let (node, echo, bound) = echo_node_with_small_buffers();
    let total = 8 * bound;
    let app = Background::start(
        &node,
        &[
            "upload",
            &format!("{VIP}:80"),
            "--path",
            &format!("/stall/{MIB}"),
            "--bytes",
            &total.to_string(),
        ],
    );
    let read = settled("the endpoint's read count", MIB - 1, || echo.body_read());
    let pushed = settled("the app's sent count", MIB, || {
        app.progress.load(Ordering::SeqCst)
    });
    assert!(
        pushed < read + bound,
        "the app pushed {pushed} bytes though the endpoint read only {read}; buffers hold at \
         most {bound}"
    );
    assert!(pushed < total, "the whole body went out");
    eprintln!("stalled upload: endpoint read {read}, app pushed {pushed}, bound {bound}");
}

#[test]
fn an_app_that_stops_reading_holds_the_endpoint_back() {
    let (node, echo, bound) = echo_node_with_small_buffers();
    let _app = Background::start(
        &node,
        &[
            "raw",
            &format!("{VIP}:80"),
            "--send-file",
            &write(
                &node,
                "forever.txt",
                b"GET /forever HTTP/1.1\r\nHost: mydb.com\r\n\r\n",
            ),
            "--hold",
        ],
    );
    let streamed = settled("the endpoint's written count", 0, || echo.streamed());
    eprintln!("unread download: endpoint wrote {streamed}, bound {bound}");
    assert!(
        streamed < bound,
        "the endpoint wrote {streamed} bytes to an app that reads nothing; buffers hold at \
         most {bound}"
    );
}

fn write(node: &Node, name: &str, bytes: &[u8]) -> String {
    let file = node.dir.path().join(name);
    std::fs::write(&file, bytes).unwrap();
    file.display().to_string()
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy() {
    let (node, _echo) = echo_node();
    let data = echo::pattern(MIB as usize);
    let upload = format!("@{}", write(&node, "body.bin", &data));
    let (status, body, stderr) = request(
        &node,
        &[
            "-v",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "60",
            "--data-binary",
            &upload,
        ],
        "/upload",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        stderr.contains("HTTP/1.1 100 Continue"),
        "curl waited for and got 100 Continue: {stderr}"
    );
    let got: Received = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (got.body_len, &got.body_sha256),
        (MIB, &echo::sha256(&data))
    );
    // Stripped: the 100 came from the proxy, not the endpoint.
    assert!(got.header("expect").is_empty(), "{got:?}");
}

#[test]
fn websocket_upgrades_pass_through() {
    let mut node = Node::new();
    let ws = WebSocketServer::start(&node.ns, ENDPOINT.parse().unwrap()).expect("websocket");
    start(&mut node);
    let out = node.client(
        client::rdt_client_bin().to_str().unwrap(),
        &[
            "websocket",
            &format!("{VIP}:80"),
            "--url",
            "ws://mydb.com/chat",
            "--send",
            "hello",
            "--send",
            "through the proxy",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "handshake 101\necho: hello\necho: through the proxy\nclosed\n",
        "{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let handshakes = ws.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    let header = |name: &str| -> Vec<String> {
        handshakes[0]
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.to_lowercase())
            .collect()
    };
    assert_eq!(header("upgrade"), ["websocket"]);
    assert_eq!(header("connection"), ["upgrade"]);
    assert_eq!(header("host"), ["mydb.com"]);
    assert_eq!(header("sec-websocket-key").len(), 1);
}

#[test]
fn an_upgrade_the_endpoint_declines_is_an_ordinary_response() {
    let (node, echo) = echo_node();
    let asked = received(
        &node,
        &["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"],
        "/declined",
    );
    assert_eq!(asked.header("upgrade"), ["websocket"]);
    assert_eq!(asked.header("connection"), ["upgrade"]);
    // `Upgrade` without `Connection: upgrade` is not a request to switch:
    // hop-by-hop, stripped.
    let unasked = received(&node, &["-H", "Upgrade: websocket"], "/plain");
    assert!(unasked.header("upgrade").is_empty(), "{unasked:?}");
    assert!(unasked.header("connection").is_empty(), "{unasked:?}");
    // h2c's settings are for the next hop only: a plain request, as in
    // Envoy.
    let h2c = received(
        &node,
        &[
            "-H",
            "Connection: Upgrade, HTTP2-Settings",
            "-H",
            "Upgrade: h2c",
            "-H",
            "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
        ],
        "/h2c",
    );
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(h2c.header(name).is_empty(), "{name}: {h2c:?}");
    }
    // The declined upgrade's connection was not pooled; the others were.
    let again = received(&node, &[], "/again");
    assert_eq!(h2c.connection, unasked.connection);
    assert_eq!(again.connection, unasked.connection);
    assert_ne!(asked.connection, unasked.connection);
    assert_eq!(echo.connections(), 2);
}

#[test]
fn request_headers_over_the_limits_get_431() {
    let (node, echo) = echo_node();
    // curl sends Host, User-Agent and Accept: 97 more make 100, the limit.
    let headers = |n: usize| -> Vec<String> {
        (0..n)
            .flat_map(|i| ["-H".to_owned(), format!("X-Header-{i}: {i}")])
            .collect()
    };
    let at_limit = headers(97);
    let args: Vec<&str> = at_limit.iter().map(String::as_str).collect();
    assert_eq!(request(&node, &args, "/100-headers").0, 200);
    let over = headers(98);
    let args: Vec<&str> = over.iter().map(String::as_str).collect();
    assert_eq!(request(&node, &args, "/101-headers").0, 431);

    let big = |kib: usize| format!("X-Big: {}", "b".repeat(kib * 1024));
    assert_eq!(request(&node, &["-H", &big(59)], "/59-kib").0, 200);
    assert_eq!(request(&node, &["-H", &big(61)], "/61-kib").0, 431);
    let reached: Vec<String> = echo.received().into_iter().map(|r| r.path).collect();
    assert_eq!(reached, ["/100-headers", "/59-kib"]);
}

#[test]
fn conflicting_request_framing_is_rejected_with_400() {
    let (node, echo) = echo_node();
    let cases: [(&str, &[u8]); 3] = [
        (
            "two-lengths",
            b"POST /two HTTP/1.1\r\nHost: mydb.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "not-chunked",
            b"POST /gzip HTTP/1.1\r\nHost: mydb.com\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        ),
        (
            "bad-chunk",
            b"POST /bad-chunk HTTP/1.1\r\nHost: mydb.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let (code, answer) = raw(&node, name, bytes);
        assert_eq!(code, 0, "{name}: the proxy closes the connection: {answer}");
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{name}: {answer}\ndaemon log:\n{}",
            node.log()
        );
    }
    assert!(echo.received().is_empty(), "{:?}", echo.received());
    // The app's broken body is not the endpoint's failure.
    let endpoint = node.endpoint("127.0.10.1");
    assert_eq!(endpoint["last_error"], "", "{endpoint:#}");
}

#[test]
fn a_request_smuggled_in_length_and_chunked_never_reaches_the_endpoint() {
    let (node, echo) = echo_node();
    // A backend that trusted Content-Length would read the chunk size line
    // as the body and the chunk's contents as a second request.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: mydb.com\r\nContent-Length: 3\r\n\r\nx=1";
    let hidden_in_chunk = format!(
        "POST /first HTTP/1.1\r\nHost: mydb.com\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    // One that trusted Content-Length here would read the terminating
    // chunk as the body and what follows as a second request.
    let after_last_chunk = b"POST /second HTTP/1.1\r\nHost: mydb.com\r\nContent-Length: 5\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: mydb.com\r\n\r\n";
    for (name, bytes) in [
        ("in-chunk", hidden_in_chunk.as_bytes()),
        ("after-last-chunk", &after_last_chunk[..]),
    ] {
        let (code, answer) = raw(&node, name, bytes);
        // One answer, then the proxy closes (RFC 9112 §6.3).
        assert_eq!(code, 0, "{name}: the connection stayed open: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{name}: {answer}");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{name}: {answer}");
    }
    let seen = echo.received();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/first", "/second"], "{seen:#?}");
    for r in &seen {
        assert!(r.header("content-length").is_empty(), "{r:?}");
        assert_eq!(r.header("transfer-encoding"), ["chunked"], "{r:?}");
    }
    // The first body is the chunk, smuggled request and all; the second
    // is empty.
    assert_eq!(seen[0].body_len, smuggled.len() as u64);
    assert_eq!(seen[0].body_sha256, echo::sha256(smuggled.as_bytes()));
    assert_eq!(seen[1].body_len, 0);
}

/// The endpoint row's last error, once the health publisher has it.
fn last_error(node: &Node, containing: &str) -> String {
    let mut last = String::new();
    wait_until(
        &format!("the endpoint's last error to mention {containing:?}"),
        TIMEOUT,
        || {
            last = node.endpoint("127.0.10.1")["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            last.contains(containing)
        },
    );
    last
}

#[test]
fn malformed_responses_get_a_clean_502_and_count_against_the_endpoint() {
    let mut node = Node::new();
    let rogue = RogueServer::start(&node.ns, ENDPOINT.parse().unwrap()).expect("rogue");
    start(&mut node);
    let expected = [
        (Rogue::Garbage, "malformed HTTP response"),
        (Rogue::BadStatusLine, "malformed HTTP response"),
        (
            Rogue::TwoLengths,
            "malformed HTTP response: invalid content-length",
        ),
        (
            Rogue::LengthAndChunked,
            "both Content-Length and Transfer-Encoding",
        ),
        (Rogue::ManyHeaders, "over the limits (100 headers, 60 KiB)"),
        (Rogue::BigHead, "over the limits (100 headers, 60 KiB)"),
    ];
    for (rogue, says) in expected {
        // A POST with a body is not retried: 502.
        let (status, body, _) = request(&node, &["-d", "x"], rogue.path());
        assert_eq!(status, 502, "{rogue:?}: {body}");
        assert!(
            body.starts_with("upstream error: 127.0.10.1:8080: ") && body.contains(says),
            "{rogue:?}: {body}"
        );
        last_error(&node, says);
        // A GET is retried on another endpoint; there is none: 503, and
        // the body still says why.
        let (status, body, _) = request(&node, &[], rogue.path());
        assert_eq!(status, 503, "{rogue:?}: {body}");
        assert!(
            body.starts_with("no healthy upstream") && body.contains(says),
            "{rogue:?}: {body}"
        );
    }
    // Every failure was counted (the threshold is out of reach).
    wait_until("12 failures in a row", TIMEOUT, || {
        node.endpoint("127.0.10.1")["consecutive_5xx"] == 12
    });
    // A broken chunk after a good head: too late for a 502. The app's
    // transfer fails (never a complete-looking response) and the endpoint
    // is charged.
    let out = curl(&node, &[], &[Rogue::BadChunk.path()]);
    assert!(!out.status.success(), "{out:?}");
    last_error(&node, "response body broke off");
    assert_eq!(request(&node, &[], Rogue::Ok.path()).1, "ok");
    // Each request reached the endpoint once (the GETs' retries found no
    // other endpoint).
    let mut expected: Vec<&str> = expected
        .iter()
        .flat_map(|(rogue, _)| [rogue.path(), rogue.path()])
        .collect();
    expected.extend([Rogue::BadChunk.path(), Rogue::Ok.path()]);
    assert_eq!(rogue.paths(), expected);
}

#[test]
fn a_malformed_endpoint_leaks_nothing() {
    let mut node = Node::new();
    let rogue = RogueServer::start(&node.ns, ENDPOINT.parse().unwrap()).expect("rogue");
    start(&mut node);
    let every: Vec<&str> = Rogue::MALFORMED.iter().map(|r| r.path()).collect();
    let quiet = |n: usize| {
        let mut args = discard(n);
        args.extend(["-w", "%{http_code} "]);
        args
    };
    // Warm up (lazy allocations, the health publisher's first writes).
    curl(&node, &quiet(every.len()), &every);
    let before = daemon_fds(&node);
    // 200 requests: GETs (retried, 503) and POSTs (502), keep-alive app
    // connections each carrying 25.
    let paths: Vec<&str> = every.iter().copied().cycle().take(25).collect();
    let mut statuses = String::new();
    for round in 0..8 {
        let mut args = quiet(paths.len());
        if round % 2 == 1 {
            args.extend(["-d", "x"]);
        }
        let out = curl(&node, &args, &paths);
        statuses += &String::from_utf8_lossy(&out.stdout);
    }
    // GETs get 503 (retry found no other endpoint), POSTs 502; the bad
    // chunk's connections close before anything is sent (curl: 000).
    let counted: Vec<&str> = statuses.split_whitespace().collect();
    let expected: Vec<&str> = (0..8)
        .flat_map(|round| {
            paths
                .iter()
                .map(move |p| match (*p == Rogue::BadChunk.path(), round % 2) {
                    (true, _) => "000",
                    (false, 0) => "503",
                    (false, _) => "502",
                })
        })
        .collect();
    assert_eq!(counted, expected);
    let mut after = 0;
    wait_until("the daemon's open files to go back down", TIMEOUT, || {
        after = daemon_fds(&node);
        after <= before + 4
    });
    let daemon = node.daemon.as_mut().unwrap();
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is up");
    let (status, body, _) = request(&node, &[], Rogue::Ok.path());
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(rogue.paths().len() >= 200);
}
