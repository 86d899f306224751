//! `rdt-load --target <ip:port> --host <host> --rps <n> --duration <secs>
//! [--timeout <secs>] [--connections <n>] [--new-connections]`: the
//! failover and fail-open runs' client. It
//! records every request rather than a summary, because what a failover
//! costs (which requests failed, when the failover region took over, how
//! long the worst one waited) is only visible request by request.
//!
//! Open loop: request `i` is due at `i / rps` seconds from the start and is
//! issued then, whether or not earlier ones finished, so a stalled upstream
//! cannot slow the arrival rate down (no coordinated omission). It goes on
//! an idle keep-alive connection if there is one, else on a new one; with
//! `--connections` requests in flight, later ones wait, and that wait counts
//! in their latency, which runs from when the request was issued (its due
//! time plus the timer's lateness, which is the client's, not the
//! system's). Each request, waiting included, has `--timeout`. With
//! `--new-connections` every request opens its own connection and closes it
//! after the answer (`connection: close`), as an app without keep-alive
//! does: what the fail-open run needs, since it is new connects that must
//! survive the daemon's death.
//!
//! It runs as the app (inside the app's namespace and cgroup) and makes
//! ordinary `connect()` calls to the target, so the redirector's hook sees
//! them like any other app's.
//!
//! Prints one JSON object per request, in schedule order, once the last one
//! finished or timed out: `{"t_ms", "at_unix_ms" (the same moment on the
//! wall clock), "latency_ms", "status" (0: no response), "served_by" (the
//! word after `healthy: `), "error", "done_unix_ms" (when it finished or
//! was given up, on the wall clock), "connect_unix_ms" (when the request's
//! connection called `connect()`, which is when the connect hook chose
//! where it goes; null if the request found an idle connection or never
//! got to connect), "connected_unix_ms" (when the
//! request's connection was established, on the wall clock; null if it
//! never was: the connect failed or timed out), "peer" (that connection's
//! peer address as `getpeername` gives it: the VIP:port the app dialled,
//! whichever way the redirector sent it; "" if none), "local" (its local
//! address, `getsockname`: a loopback address when the connect hook sent
//! it to a proxy's listener, the namespace's own address when the kernel
//! sent it straight to an endpoint; "" if none)}`.

use std::{
    io::Write,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, sleep_until, timeout_at},
};

#[derive(Parser)]
#[command(
    name = "rdt-load",
    about = "Open-loop HTTP/1.1 GETs, one JSON line per request"
)]
struct Args {
    /// Where to connect (the service VIP for the app's view)
    #[arg(long)]
    target: SocketAddr,
    /// Host header
    #[arg(long)]
    host: String,
    /// Requests per second, on a fixed schedule
    #[arg(long)]
    rps: u32,
    /// Seconds of schedule
    #[arg(long)]
    duration: f64,
    /// Seconds a request may take, from when it was due
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
    /// Most requests in flight, and so most connections open
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// A new connection for every request, closed after the answer
    #[arg(long)]
    new_connections: bool,
}

type Sender = SendRequest<Empty<Bytes>>;

/// An open connection and where it goes.
struct Connection {
    sender: Sender,
    /// Its peer address (`getpeername`), "" if unknown.
    peer: String,
    /// Its local address (`getsockname`), "" if unknown.
    local: String,
    /// When `connect()` was called (and so the connect hook decided where
    /// it goes), on the wall clock (unix ms).
    connect_unix_ms: f64,
    /// When it was established, on the wall clock (unix ms).
    connected_unix_ms: f64,
}

/// Keep-alive connections not carrying a request right now. The semaphore
/// bounds requests in flight; a request takes an idle connection or opens
/// one, so connections never outnumber its permits.
struct Pool {
    target: SocketAddr,
    host: String,
    /// Never reuse a connection (`--new-connections`).
    new_connections: bool,
    idle: Mutex<Vec<Connection>>,
    in_flight: Semaphore,
    /// The run's start, on both clocks, to stamp connections with.
    start: Instant,
    start_unix_ms: f64,
}

/// What happened to one request.
struct Outcome {
    status: u16,
    served_by: String,
    error: String,
    /// When its connection's `connect()` was called (None: it was not).
    connect_unix_ms: Option<f64>,
    /// When its connection was established (None: it never was).
    connected_unix_ms: Option<f64>,
    peer: String,
    local: String,
}

impl Pool {
    /// Now on the wall clock, in unix ms, as the run's timeline has it.
    fn now_unix_ms(&self) -> f64 {
        self.start_unix_ms + self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// The most recently used idle connection that is still open.
    async fn idle_connection(&self) -> Option<Connection> {
        loop {
            let mut conn = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()?;
            // A closed connection (the server went away) is dropped, not used.
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// A new connection; `connect_unix_ms` is now, passed in so a caller
    /// that gives up still knows it.
    async fn connect(&self, connect_unix_ms: f64) -> Result<Connection, String> {
        // tokio calls connect(2) on the first poll, so the connect hook
        // runs now.
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| format!("connect {}: {e}", self.target))?;
        let connected_unix_ms = self.now_unix_ms();
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            // Its errors reach the request that was using it.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            peer,
            local,
            connect_unix_ms,
            connected_unix_ms,
        })
    }

    /// One GET, given up at `deadline`; the connection goes back to the
    /// pool if it can carry more.
    async fn get(&self, deadline: Instant, timeout: Duration) -> Outcome {
        let timed_out = || format!("timed out after {timeout:?}");
        let _permit = match timeout_at(deadline, self.in_flight.acquire()).await {
            Err(_) => return failure(timed_out()),
            Ok(Err(_)) => return failure("the pool is closed".to_owned()),
            Ok(Ok(permit)) => permit,
        };
        let reused = if self.new_connections {
            None
        } else {
            timeout_at(deadline, self.idle_connection())
                .await
                .unwrap_or(None)
        };
        let mut conn = match reused {
            Some(conn) => conn,
            None => {
                let started = self.now_unix_ms();
                let failed = |error| Outcome {
                    connect_unix_ms: Some(started),
                    ..failure(error)
                };
                match timeout_at(deadline, self.connect(started)).await {
                    Err(_) => return failed(timed_out()),
                    Ok(Err(error)) => return failed(error),
                    Ok(Ok(conn)) => conn,
                }
            }
        };
        let mut outcome = Outcome {
            status: 0,
            served_by: String::new(),
            error: String::new(),
            connect_unix_ms: Some(conn.connect_unix_ms),
            connected_unix_ms: Some(conn.connected_unix_ms),
            peer: conn.peer.clone(),
            local: conn.local.clone(),
        };
        let mut request = Request::get("/").header(header::HOST, &self.host);
        if self.new_connections {
            request = request.header(header::CONNECTION, "close");
        }
        let request = request.body(Empty::new()).expect("a valid request");
        let exchange = async {
            let response = conn
                .sender
                .send_request(request)
                .await
                .map_err(|err| (0, format!("request: {err}")))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| (status, format!("body: {err}")))?;
            Ok::<_, (u16, String)>((status, body.to_bytes()))
        };
        match timeout_at(deadline, exchange).await {
            Err(_) => outcome.error = timed_out(),
            Ok(Err((status, error))) => {
                outcome.status = status;
                outcome.error = error;
            }
            Ok(Ok((status, body))) => {
                outcome.status = status;
                outcome.served_by = served_by(&body);
                // hyper closes the connection after a `connection: close`
                // answer.
                if !self.new_connections && !conn.sender.is_closed() {
                    self.idle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(conn);
                }
            }
        }
        outcome
    }
}

fn failure(error: String) -> Outcome {
    Outcome {
        status: 0,
        served_by: String::new(),
        error,
        connect_unix_ms: None,
        connected_unix_ms: None,
        peer: String::new(),
        local: String::new(),
    }
}

/// The word after `healthy: ` (up to whitespace; trailing `.` padding
/// removed), or `""`.
fn served_by(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.find("healthy: ")
        .map(|at| {
            text[at + "healthy: ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('.')
                .to_owned()
        })
        .unwrap_or_default()
}

/// One output line.
fn line(
    start_unix_ms: f64,
    t: Duration,
    latency: Duration,
    done: Duration,
    outcome: &Outcome,
) -> String {
    serde_json::json!({
        "t_ms": t.as_secs_f64() * 1000.0,
        "at_unix_ms": start_unix_ms + t.as_secs_f64() * 1000.0,
        "latency_ms": latency.as_secs_f64() * 1000.0,
        "status": outcome.status,
        "served_by": outcome.served_by,
        "error": outcome.error,
        "done_unix_ms": start_unix_ms + done.as_secs_f64() * 1000.0,
        "connect_unix_ms": outcome.connect_unix_ms,
        "connected_unix_ms": outcome.connected_unix_ms,
        "peer": outcome.peer,
        "local": outcome.local,
    })
    .to_string()
}

async fn run(args: Args) -> Result<Vec<String>, String> {
    if args.rps == 0 || args.connections == 0 {
        return Err("--rps and --connections must be at least 1".to_owned());
    }
    let duration = Duration::try_from_secs_f64(args.duration)
        .map_err(|e| format!("--duration {}: {e}", args.duration))?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .map_err(|e| format!("--timeout {}: {e}", args.timeout))?;
    let count = (duration.as_secs_f64() * f64::from(args.rps)).round() as u32;
    let start = Instant::now();
    // The same start on the wall clock, so whoever injects faults can place
    // them on this timeline exactly.
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_secs_f64()
        * 1000.0;
    let pool = Arc::new(Pool {
        target: args.target,
        host: args.host,
        new_connections: args.new_connections,
        idle: Mutex::new(Vec::new()),
        in_flight: Semaphore::new(args.connections as usize),
        start,
        start_unix_ms,
    });
    let mut requests = JoinSet::new();
    for i in 0..count {
        let due = Duration::from_secs_f64(f64::from(i) / f64::from(args.rps));
        sleep_until(start + due).await;
        // Latency counts from here, when the request really left: tokio's
        // timer wakes us up to a millisecond or two after `due`, which is
        // the client's lateness, not the system's. Waiting for a free
        // connection still counts.
        let issued = Instant::now();
        let pool = Arc::clone(&pool);
        requests.spawn(async move {
            let outcome = pool.get(issued + timeout, timeout).await;
            let latency = issued.elapsed();
            let done = start.elapsed();
            (i, line(start_unix_ms, due, latency, done, &outcome))
        });
    }
    let mut lines = vec![String::new(); count as usize];
    while let Some(done) = requests.join_next().await {
        let (i, line) = done.map_err(|e| format!("a request task failed: {e}"))?;
        lines[i as usize] = line;
    }
    Ok(lines)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread is plenty for a few thousand requests per second, and
    // keeps the client on the one core the harness gives it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rdt-load: tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let lines = match runtime.block_on(run(args)) {
        Ok(lines) => lines,
        Err(err) => {
            eprintln!("rdt-load: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in &lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_by_is_the_name_after_healthy() {
        assert_eq!(served_by(b"healthy: east.test\n......"), "east.test");
        assert_eq!(served_by(b"healthy: east"), "east");
        assert_eq!(served_by(b"healthy: east....."), "east");
        assert_eq!(served_by(b"503 from east\n..."), "");
        assert_eq!(served_by(b""), "");
    }
}
