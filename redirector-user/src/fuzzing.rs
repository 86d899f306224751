//! Entry points for the fuzz targets in `fuzz/` (built with the `fuzzing`
//! feature only; the daemon never has them). Each takes bytes or text as a
//! peer or a user would send them and calls the daemon's own code, as thin
//! as possible, so a target keeps fuzzing whatever that code becomes:
//!
//! | entry point | what it calls |
//! | --- | --- |
//! | [`config`] | `config::load_str`, then for each service what the daemon builds from it: `Cluster::new`, its names resolved, its slot tables, outcomes until an ejection, a tick, its snapshot |
//! | [`duration`] | `config::parse_duration` |
//! | [`dns_reply`] | `dns::reply` over a fixed host table, and `dns::refused` for what it forwards |
//! | [`dns_tcp`] | `dns::serve::read_message` and `frame` (RFC 1035 §4.2.2 framing) around `dns::reply` / `dns::refused`, as a TCP connection without a nameserver is served |
//! | [`handover_offer`] | `handover::request` against a predecessor that sends the given bytes (and descriptors) |
//! | [`handover_request`] | `handover::Server::next` reading the given bytes from a successor |
//! | [`http_response_head`] | `proxy::http`'s checks of an endpoint's response head: `ResponseError::check_framing`, `upgrade::protocol`, `strip_hop_by_hop` |
//!
//! Nothing here may panic on any input except where the code it calls
//! does: a panic is a bug in that code.

use std::{
    io::{IoSlice, Read as _},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::Duration,
};

use crate::{cluster::Cluster, config, dns, handover, metrics::Metrics, outlier::Outcome, proxy};

/// Loads `text` as a config file (with no flags). On success, builds each
/// service's cluster as the daemon does, fills its slot tables, fails its
/// first host until outlier detection acts, ticks, and takes the snapshot
/// the admin server shows: returns the number of services. On failure,
/// the problems as `redirector check` prints them.
pub fn config(text: &str) -> Result<usize, String> {
    let config = config::load_str("fuzz.yaml", text, &config::NodeSettings::default())
        .map_err(|e| e.to_string())?;
    // The effective config, as `redirector check` prints it.
    serde_json::to_string(&config).map_err(|e| format!("the config does not serialize: {e}"))?;
    let node = config.node.locality.clone().unwrap_or_default();
    let metrics = Metrics::default();
    let n = config.services.len();
    for (id, service) in config.services.into_iter().enumerate() {
        let cluster = Cluster::new(
            id as u32,
            service,
            &node,
            Arc::new(tokio::sync::Notify::new()),
            &metrics,
        );
        // Names resolve to one address each, as a nameserver might answer.
        for (i, _) in cluster.dns_endpoints() {
            let ip = Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8);
            cluster.set_resolved(i, vec![ip.into()]);
        }
        let _ = cluster.kernel_slots();
        let _ = cluster.kernel_slots6();
        if let Some(host) = cluster.attempt_order().into_iter().next() {
            for _ in 0..8 {
                cluster.record(&host, Outcome::ConnectFailed, Some("fuzz"));
                cluster.record(&host, Outcome::Status(503), None);
                cluster.record(&host, Outcome::Timeout, None);
            }
            let _ = cluster.kernel_slots();
        }
        cluster.tick();
        let _ = cluster.snapshot();
    }
    Ok(n)
}

/// A duration as the config and the flags take one.
pub fn duration(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
}

/// The hosts every DNS entry point answers for (the corpus asks for them).
fn hosts() -> &'static dns::Hosts {
    static HOSTS: OnceLock<dns::Hosts> = OnceLock::new();
    HOSTS.get_or_init(|| {
        dns::Hosts::new([
            (
                "mydb.example.com",
                Ipv4Addr::new(240, 240, 0, 1),
                "fd00:f0f0::1".parse().expect("an IPv6 address"),
            ),
            (
                "api.dynamodb.us-east-1.amazonaws.com",
                Ipv4Addr::new(240, 240, 0, 2),
                "fd00:f0f0::2".parse().expect("an IPv6 address"),
            ),
        ])
    })
}

/// The responder's answer to one query: `Some` when it answers itself (a
/// configured host), `None` when it would forward the query unchanged.
/// For a forwarded query it also makes the REFUSED it sends when it knows
/// no nameserver.
pub fn dns_reply(query: &[u8]) -> Option<Vec<u8>> {
    match dns::reply(query, hosts()) {
        dns::Reply::Local(answer) => Some(answer),
        dns::Reply::Forward { .. } => {
            let _ = dns::refused(query);
            None
        }
    }
}

/// One tokio runtime per thread for the entry points that run async code.
fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// The responder's waits for a DNS-over-TCP message; bytes in memory
/// never make it wait.
const WAIT: Duration = Duration::from_secs(10);

/// A DNS-over-TCP connection that sent `stream` and then closed, served
/// as the responder serves one with no nameserver recorded: each framed
/// query answered from the host table or REFUSED, until the end of the
/// stream, a truncated frame, or a query that does not parse. Returns the
/// bytes written back.
pub fn dns_tcp(stream: &[u8]) -> Vec<u8> {
    block_on(async {
        let mut input = stream;
        let mut output = Vec::new();
        while let Ok(Some(query)) = dns::serve::read_message(&mut input, WAIT, WAIT).await {
            let answer = match dns::reply(&query, hosts()) {
                dns::Reply::Local(answer) => answer,
                dns::Reply::Forward { .. } => match dns::refused(&query) {
                    Some(answer) => answer,
                    None => break,
                },
            };
            match dns::serve::frame(&answer) {
                Ok(framed) => output.extend_from_slice(&framed),
                Err(_) => break,
            }
        }
        output
    })
}

/// The messages framed in `stream` (what a DNS-over-TCP peer reads).
pub fn dns_tcp_frames(stream: &[u8]) -> Vec<Vec<u8>> {
    block_on(async {
        let mut input = stream;
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = dns::serve::read_message(&mut input, WAIT, WAIT).await {
            frames.push(frame);
        }
        frames
    })
}

/// Removes [`socket_dir`] (at exit).
extern "C" fn remove() {
    if let Some(dir) = SOCKET_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

static SOCKET_DIR: OnceLock<PathBuf> = OnceLock::new();

/// A directory of this process's sockets, removed at exit.
fn socket_dir() -> &'static PathBuf {
    SOCKET_DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("redirector-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the fuzzing sockets");
        // SAFETY: `remove` is an `extern "C" fn()` that never unwinds.
        unsafe { libc::atexit(remove) };
        dir
    })
}

/// What the fake predecessor sends to the next successor.
type Job = (Vec<u8>, usize);

/// A predecessor on a socket of its own that, for each successor, reads
/// its request line and answers with the next job's bytes, with that many
/// descriptors attached, then closes.
fn predecessor() -> &'static (PathBuf, Mutex<mpsc::Sender<Job>>) {
    static PREDECESSOR: OnceLock<(PathBuf, Mutex<mpsc::Sender<Job>>)> = OnceLock::new();
    PREDECESSOR.get_or_init(|| {
        let path = socket_dir().join("offer.sock");
        let listener = UnixListener::bind(&path).expect("binding the fake predecessor");
        let (jobs, next) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let null = std::fs::File::open("/dev/null").expect("/dev/null");
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok((bytes, fds)) = next.recv() else {
                    return;
                };
                // The request line (the successor sent it before reading).
                let mut byte = [0u8; 1];
                while let Ok(1) = stream.read(&mut byte) {
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                let fds: Vec<OwnedFd> = (0..fds)
                    .filter_map(|_| null.try_clone().ok().map(OwnedFd::from))
                    .collect();
                let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                let rights = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                let cmsgs: &[_] = if raw.is_empty() { &[] } else { &rights };
                // Whatever the successor did with it, the next one comes.
                let _ = nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&bytes)],
                    cmsgs,
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                    None,
                );
            }
        });
        (path, Mutex::new(jobs))
    })
}

/// A successor's side of a handover whose predecessor answered `offer`
/// with `fds` descriptors attached (at most 16) and closed: what it took,
/// described, or why it refused the offer.
pub fn handover_offer(offer: &[u8], fds: usize) -> Result<Vec<String>, String> {
    let (path, jobs) = predecessor();
    jobs.lock()
        .expect("the job queue")
        .send((offer.to_vec(), fds.min(16)))
        .expect("the fake predecessor runs");
    handover::request(path, None)
        .map(|handed| handed.describe())
        .map_err(|e| e.to_string())
}

/// The predecessor's side of a handover: a successor connects, sends
/// `request` (without descriptors) and closes. The predecessor must skip
/// it, whatever it says: with no map to prove it could run the datapath,
/// no request is authenticated. Returns whether it was skipped; a proper
/// request (with a real map as its proof) follows each, so the server
/// always has one to return.
pub fn handover_request(request: &[u8]) -> bool {
    thread_local! {
        static SERVER: (PathBuf, handover::Server, OwnedFd) = {
            let path = socket_dir().join(format!(
                "request-{:?}.sock",
                std::thread::current().id()
            ));
            let (proof, id) = proof_map();
            let server = block_on(async { handover::Server::bind(path.clone(), vec![id]) })
                .expect("binding the handover socket");
            (path, server, proof)
        };
    }
    SERVER.with(|(path, server, proof)| {
        let mut fuzzed = UnixStream::connect(path).expect("connecting to the handover socket");
        // The server reads only after accepting: keep within the socket
        // buffer, as every real request does.
        let _ = std::io::Write::write_all(&mut fuzzed, &request[..request.len().min(64 * 1024)]);
        drop(fuzzed);
        let good = UnixStream::connect(path).expect("connecting to the handover socket");
        let line = format!("{{\"version\":2,\"pid\":{}}}\n", std::process::id());
        let raw = [proof.as_raw_fd()];
        nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
            good.as_raw_fd(),
            &[IoSlice::new(line.as_bytes())],
            &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .expect("sending the proper request");
        // The first request the server returns is the proper one.
        let successor = block_on(server.next());
        drop(good);
        successor.pid == std::process::id()
    })
}

/// A one-entry BPF array made for this process, and its id: the proof a
/// proper successor sends. bpf(2) by hand (no object to load it from).
fn proof_map() -> (OwnedFd, u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u32; 28],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        rest: [0; 28],
    };
    // SAFETY: BPF_MAP_CREATE reads `size_of::<MapCreate>()` bytes of
    // `attr`, all initialized; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const attr,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "creating a BPF map (fuzzing runs as root): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just returned to this process.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let id = aya::maps::MapData::from_fd(fd.try_clone().expect("duplicating the map"))
        .and_then(|m| m.info())
        .map(|i| i.id())
        .expect("the map's id");
    (fd, id)
}

/// What the proxy makes of an endpoint's response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The valid headers, as received: lower-case name, value.
    pub received: Vec<(String, Vec<u8>)>,
    /// Refused as ambiguous framing (both `Content-Length` and
    /// `Transfer-Encoding`).
    pub ambiguous_framing: bool,
    /// The protocol the head would switch to if it were an upgrade's
    /// request (`Connection: upgrade` with `Upgrade`, not `h2c`).
    pub upgrade: Option<Vec<u8>>,
    /// The header names left after the hop-by-hop ones were stripped,
    /// lower-case, in order, repeated as often as they appear.
    pub forwarded: Vec<String>,
}

/// An endpoint's response headers (name, value pairs; those that are not
/// valid HTTP are dropped, as hyper's parser would have refused them) as
/// the proxy checks and strips them before the app sees them.
pub fn http_response_head(headers: &[(&[u8], &[u8])]) -> ResponseHead {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    let received = map
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let ambiguous_framing = proxy::http::reply::ResponseError::check_framing(&map).is_err();
    let upgrade = proxy::http::upgrade::protocol(&map).map(|v| v.as_bytes().to_vec());
    proxy::http::strip_hop_by_hop(&mut map);
    ResponseHead {
        received,
        ambiguous_framing,
        upgrade,
        forwarded: map
            .iter()
            .map(|(name, _)| name.as_str().to_owned())
            .collect(),
    }
}
