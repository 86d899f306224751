//! `rdt-load --target <ip:port> --host <host> --rps <n> --duration <secs>
//! [--timeout <secs>] [--connections <n>]`: the failover runs' client. It
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
//! system's). Each request, waiting included, has `--timeout`.
//!
//! It runs as the app (inside the app's namespace and cgroup) and makes
//! ordinary `connect()` calls to the target, so the redirector's hook sees
//! them like any other app's.
//!
//! Prints one JSON object per request, in schedule order, once the last one
//! finished or timed out: `{"t_ms", "at_unix_ms" (the same moment on the
//! wall clock), "latency_ms", "status" (0: no response), "served_by" (the
//! word after `healthy: `), "error"}`.

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
}

type Sender = SendRequest<Empty<Bytes>>;

/// Keep-alive connections not carrying a request right now. The semaphore
/// bounds requests in flight; a request takes an idle connection or opens
/// one, so connections never outnumber its permits.
struct Pool {
    target: SocketAddr,
    host: String,
    idle: Mutex<Vec<Sender>>,
    in_flight: Semaphore,
}

/// What happened to one request.
struct Outcome {
    status: u16,
    served_by: String,
    error: String,
}

impl Pool {
    /// The most recently used idle connection that is still open.
    async fn idle_connection(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            // A closed connection (the server went away) is dropped, not used.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, String> {
        let stream = TcpStream::connect(self.target)
            .await
            .map_err(|e| format!("connect {}: {e}", self.target))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            // Its errors reach the request that was using it.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// One GET; the connection goes back to the pool if it can carry more.
    async fn get(&self) -> Outcome {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return failure("the pool is closed".to_owned());
        };
        let mut sender = match self.idle_connection().await {
            Some(sender) => sender,
            None => match self.connect().await {
                Ok(sender) => sender,
                Err(error) => return failure(error),
            },
        };
        let request = Request::get("/")
            .header(header::HOST, &self.host)
            .body(Empty::new())
            .expect("a valid request");
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => return failure(format!("request: {err}")),
        };
        let status = response.status().as_u16();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => {
                return Outcome {
                    status,
                    served_by: String::new(),
                    error: format!("body: {err}"),
                };
            }
        };
        // hyper closes the connection after a `connection: close` answer.
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sender);
        }
        Outcome {
            status,
            served_by: served_by(&body),
            error: String::new(),
        }
    }
}

fn failure(error: String) -> Outcome {
    Outcome {
        status: 0,
        served_by: String::new(),
        error,
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
fn line(start_unix_ms: f64, t: Duration, latency: Duration, outcome: &Outcome) -> String {
    serde_json::json!({
        "t_ms": t.as_secs_f64() * 1000.0,
        "at_unix_ms": start_unix_ms + t.as_secs_f64() * 1000.0,
        "latency_ms": latency.as_secs_f64() * 1000.0,
        "status": outcome.status,
        "served_by": outcome.served_by,
        "error": outcome.error,
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
    let pool = Arc::new(Pool {
        target: args.target,
        host: args.host,
        idle: Mutex::new(Vec::new()),
        in_flight: Semaphore::new(args.connections as usize),
    });
    let start = Instant::now();
    // The same start on the wall clock, so whoever injects faults can place
    // them on this timeline exactly.
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_secs_f64()
        * 1000.0;
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
            let outcome = timeout_at(issued + timeout, pool.get())
                .await
                .unwrap_or_else(|_| failure(format!("timed out after {timeout:?}")));
            let latency = issued.elapsed();
            (i, line(start_unix_ms, due, latency, &outcome))
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
