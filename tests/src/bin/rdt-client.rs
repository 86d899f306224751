//! `rdt-client tcp <ip:port> [--send <text>] [--lines <n>]`: connects,
//! optionally sends `<text>\n`, prints the first `n` (default 1) lines
//! received and exits 0; on any error prints it and exits 1. For TCP-port
//! tests where curl does not fit. Connect and read time out after 5 s.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

const USAGE: &str = "usage: rdt-client tcp <ip:port> [--send <text>] [--lines <n>]";
const TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    addr: SocketAddr,
    send: Option<String>,
    lines: usize,
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
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--send" => args.send = Some(value),
            "--lines" => {
                args.lines = value
                    .parse()
                    .map_err(|e| format!("bad --lines {value:?}: {e}"))?
            }
            _ => return Err(format!("unknown option {flag}; {USAGE}")),
        }
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&args.addr, TIMEOUT)
        .map_err(|e| format!("connect {}: {e}", args.addr))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("set read timeout: {e}"))?;
    if let Some(text) = &args.send {
        stream
            .write_all(format!("{text}\n").as_bytes())
            .map_err(|e| format!("send to {}: {e}", args.addr))?;
    }
    let mut reader = BufReader::new(stream);
    for n in 0..args.lines {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Err(format!(
                    "{} closed the connection after {n} lines",
                    args.addr
                ));
            }
            Ok(_) => print!("{line}"),
            Err(e) => return Err(format!("read from {}: {e}", args.addr)),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rdt-client: {err}");
            ExitCode::FAILURE
        }
    }
}
