//! `rdt-client tcp <ip:port> [--send <text>] [--lines <n>]`: connects,
//! optionally sends `<text>\n`, prints the first `n` (default 1) lines
//! received and exits 0; on any error prints it and exits 1. For TCP-port
//! tests where curl does not fit. Connect and read time out after 5 s
//! (`--connect-timeout-ms` changes the connect's).
//!
//! With `--repeat <n>` it is a steady load of new connections instead: up to
//! `n` rounds, one connection at a time, `--interval-ms` apart (default 2),
//! stopping early once the file `--until <path>` exists. Each round is
//! classified, and one JSON line sums them up (exit 0 whatever happened):
//! `{"rounds", "ok", "connect_failed", "broken", "replies": {line: count},
//! "errors": [first 20, each "round <n> at <unix ms>: <error>"]}`. `connect_failed` means `connect()` itself failed
//! (what fail-open must prevent); `broken` means the connection was made
//! but died before the first line (a connection a dying proxy held).
//!
//! `raw`, `upload` and `websocket` speak HTTP (see `http.rs` beside this file).
//!
//! `hold` holds many connections open, idle or with a partial request
//! (see `hold.rs`).
//!
//! `rdt-client peer <ip:port>` connects and prints what the app sees of the
//! connection: `peer <getpeername()>` and `local <getsockname()>`, one per
//! line.

mod hold;
mod http;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: rdt-client tcp <ip:port> [--send <text>] [--lines <n>] \
                     [--connect-timeout-ms <ms>] [--repeat <n> [--interval-ms <ms>] \
                     [--until <path>]]";
const TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    addr: SocketAddr,
    send: Option<String>,
    lines: usize,
    connect_timeout: Duration,
    repeat: Option<u64>,
    interval: Duration,
    until: Option<PathBuf>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    if argv.next().as_deref() != Some("tcp") {
        return Err(USAGE.to_owned());
    }
    let addr = argv.next().ok_or(USAGE)?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let mut args = Args {
        addr,
        send: None,
        lines: 1,
        connect_timeout: TIMEOUT,
        repeat: None,
        interval: Duration::from_millis(2),
        until: None,
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("bad {flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--send" => args.send = Some(value),
            "--lines" => args.lines = number(&value)? as usize,
            "--connect-timeout-ms" => args.connect_timeout = Duration::from_millis(number(&value)?),
            "--repeat" => args.repeat = Some(number(&value)?),
            "--interval-ms" => args.interval = Duration::from_millis(number(&value)?),
            "--until" => args.until = Some(value.into()),
            _ => return Err(format!("unknown option {flag}; {USAGE}")),
        }
    }
    Ok(args)
}

/// How one connection went.
enum Round {
    Ok(Vec<String>),
    ConnectFailed(String),
    Broken(String),
}

fn round(args: &Args) -> Round {
    let started = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&args.addr, args.connect_timeout) {
        Ok(s) => s,
        // How long connect() took, by this process's clock: what a test of
        // timeouts bounds, without the time the process took to start.
        Err(e) => {
            return Round::ConnectFailed(format!(
                "connect {}: {e} (after {} ms)",
                args.addr,
                started.elapsed().as_millis()
            ));
        }
    };
    if let Err(e) = stream.set_read_timeout(Some(TIMEOUT)) {
        return Round::Broken(format!("set read timeout: {e}"));
    }
    if let Some(text) = &args.send
        && let Err(e) = stream.write_all(format!("{text}\n").as_bytes())
    {
        return Round::Broken(format!("send to {}: {e}", args.addr));
    }
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for n in 0..args.lines {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Round::Broken(format!(
                    "{} closed the connection after {n} lines",
                    args.addr
                ));
            }
            Ok(_) => lines.push(line),
            Err(e) => return Round::Broken(format!("read from {}: {e}", args.addr)),
        }
    }
    Round::Ok(lines)
}

fn run_once(args: &Args) -> Result<(), String> {
    match round(args) {
        Round::Ok(lines) => {
            for line in lines {
                print!("{line}");
            }
            Ok(())
        }
        Round::ConnectFailed(e) | Round::Broken(e) => Err(e),
    }
}

/// Now on the wall clock, in milliseconds (to line errors up with logs).
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn run_load(args: &Args, rounds: u64) -> String {
    let (mut ok, mut connect_failed, mut broken) = (0u64, 0u64, 0u64);
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut done = 0;
    while done < rounds {
        if args.until.as_ref().is_some_and(|p| p.exists()) {
            break;
        }
        done += 1;
        match round(args) {
            Round::Ok(lines) => {
                ok += 1;
                *replies
                    .entry(lines.concat().trim_end().to_owned())
                    .or_default() += 1;
            }
            Round::ConnectFailed(e) => {
                connect_failed += 1;
                errors.push(format!("round {done} at {}: {e}", unix_ms()));
            }
            Round::Broken(e) => {
                broken += 1;
                errors.push(format!("round {done} at {}: {e}", unix_ms()));
            }
        }
        thread::sleep(args.interval);
    }
    errors.truncate(20);
    let replies: Vec<String> = replies
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_string(k)))
        .collect();
    let errors: Vec<String> = errors.iter().map(|e| json_string(e)).collect();
    format!(
        "{{\"rounds\":{done},\"ok\":{ok},\"connect_failed\":{connect_failed},\"broken\":{broken},\
         \"replies\":{{{}}},\"errors\":[{}]}}",
        replies.join(","),
        errors.join(",")
    )
}

/// A JSON string literal (the client has no JSON dependency).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `peer <ip:port>`: connect, print both ends as the socket calls give them.
fn peer(mut argv: impl Iterator<Item = String>) -> Result<(), String> {
    let addr: SocketAddr = argv
        .next()
        .ok_or("usage: rdt-client peer <ip:port>")?
        .parse()
        .map_err(|e| format!("bad address: {e}"))?;
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    let peer = stream
        .peer_addr()
        .map_err(|e| format!("getpeername: {e}"))?;
    let local = stream
        .local_addr()
        .map_err(|e| format!("getsockname: {e}"))?;
    println!("peer {peer}\nlocal {local}");
    Ok(())
}

fn main() -> ExitCode {
    if let Some("raw" | "upload" | "websocket") = std::env::args().nth(1).as_deref() {
        return http::main(std::env::args().skip(1));
    }
    if std::env::args().nth(1).as_deref() == Some("hold") {
        return hold::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("peer") {
        return match peer(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("rdt-client: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("rdt-client: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(rounds) = args.repeat {
        println!("{}", run_load(&args, rounds));
        return ExitCode::SUCCESS;
    }
    match run_once(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rdt-client: {err}");
            ExitCode::FAILURE
        }
    }
}
