//! `bench-first-connect <ip:port> <host> <deadline-ms>`: a new pod's app
//! as it starts, for the benchmark's pod scenarios (`src/pods.rs`). It
//! connects to a service VIP again and again, 1 ms apart, until a
//! connection reaches the redirector's proxy in this network namespace
//! and a `GET /` on it is answered 200, then prints one JSON line and
//! exits 0:
//!
//! `{"first_attempt_unix_ms", "served_connect_unix_ms" (when the served
//! connection's connect() was called; null if none was within the
//! deadline), "answered_unix_ms", "attempts", "kernel" (connections the
//! kernel sent straight to an endpoint: the daemon did not listen in the
//! namespace yet, so connect4 failed open), "failed" (connects that
//! failed), "last_error"}`.
//!
//! A connection went to the proxy when its local address is a loopback
//! one (connect4 rewrote it to the proxy's 127.0.0.1 listener); one the
//! kernel sent to an endpoint has the pod's own address. Its peer is the
//! VIP either way (getpeername4). Connections that did not reach the
//! proxy are closed at once, without a request. Times are on the wall
//! clock, as the harness stamps the pod's CNI ADD. Std only and blocking:
//! nothing runs before the first connect but the process's own start.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Between two attempts.
const PAUSE: Duration = Duration::from_millis(1);
/// One connect, and the answer on a served connection.
const TIMEOUT: Duration = Duration::from_secs(2);

fn now_unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `GET /` with `Host: host` on `stream`, to the end of the answer; its
/// status code.
fn get(mut stream: TcpStream, host: &str) -> Result<u16, String> {
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("set read timeout: {e}"))?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", text.lines().next()))?;
    Ok(status)
}

struct Args {
    target: SocketAddr,
    host: String,
    deadline: Duration,
}

fn parse() -> Result<Args, String> {
    const USAGE: &str = "usage: bench-first-connect <ip:port> <host> <deadline-ms>";
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let [target, host, deadline] = argv.as_slice() else {
        return Err(USAGE.to_owned());
    };
    Ok(Args {
        target: target
            .parse()
            .map_err(|e| format!("bad address {target:?}: {e}; {USAGE}"))?,
        host: host.clone(),
        deadline: Duration::from_millis(
            deadline
                .parse()
                .map_err(|e| format!("bad deadline {deadline:?}: {e}; {USAGE}"))?,
        ),
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("bench-first-connect: {err}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let mut first_attempt = None;
    let (mut attempts, mut kernel, mut failed) = (0u32, 0u32, 0u32);
    let mut last_error = String::new();
    let mut served = None;
    while start.elapsed() < args.deadline {
        attempts += 1;
        let connect_at = now_unix_ms();
        first_attempt.get_or_insert(connect_at);
        match TcpStream::connect_timeout(&args.target, TIMEOUT) {
            Err(e) => {
                failed += 1;
                last_error = format!("connect {}: {e}", args.target);
            }
            Ok(stream) => match stream.local_addr() {
                Ok(local) if local.ip().is_loopback() => match get(stream, &args.host) {
                    Ok(200) => {
                        served = Some((connect_at, now_unix_ms()));
                        break;
                    }
                    Ok(status) => last_error = format!("status {status} through the proxy"),
                    Err(e) => last_error = format!("through the proxy: {e}"),
                },
                Ok(_) => kernel += 1,
                Err(e) => last_error = format!("getsockname: {e}"),
            },
        }
        thread::sleep(PAUSE);
    }
    let line = serde_json::json!({
        "first_attempt_unix_ms": first_attempt.unwrap_or_else(now_unix_ms),
        "served_connect_unix_ms": served.map(|(connect, _)| connect),
        "answered_unix_ms": served.map(|(_, answered)| answered),
        "attempts": attempts,
        "kernel": kernel,
        "failed": failed,
        "last_error": last_error,
    });
    println!("{line}");
    ExitCode::SUCCESS
}
