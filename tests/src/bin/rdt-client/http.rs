//! The HTTP-level subcommands, for tests where curl cannot say or do
//! what is needed:
//!
//! - `raw <ip:port> --send-file <path> [--hold]`: sends the file's bytes
//!   as they are, then prints every byte received until the peer closes
//!   (exit 0), or exits 3 if it has not closed within 10 s. With `--hold`
//!   it reads nothing and waits to be killed (an app that stopped reading).
//! - `upload <ip:port> --host <h> --path <p> --bytes <n> [--chunked]`: a
//!   POST whose body is written 64 KiB at a time, printing `sent <total>`
//!   after each write; then prints the response's first line.
//! - `websocket <ip:port> --url <ws://host/path> --send <text>...`: a
//!   websocket handshake (tungstenite), each text sent and its reply
//!   printed, one line each, then a clean close; with `--hold`, no close:
//!   it waits to be killed (a websocket kept open).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

pub(crate) fn main(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let command = argv.next().unwrap_or_default();
    let result = argv
        .next()
        .ok_or_else(|| format!("{command} needs an address"))
        .and_then(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("bad address {a:?}: {e}"))
        })
        .and_then(|addr| {
            let flags = Flags::parse(argv)?;
            match command.as_str() {
                "raw" => raw(addr, &flags),
                "upload" => upload(addr, &flags),
                "websocket" => websocket(addr, &flags),
                other => Err(format!("unknown command {other}")),
            }
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rdt-client: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Flags {
    send_file: Option<String>,
    hold: bool,
    host: Option<String>,
    path: Option<String>,
    bytes: u64,
    chunked: bool,
    url: Option<String>,
    send: Vec<String>,
}

impl Flags {
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Flags, String> {
        let mut flags = Flags::default();
        while let Some(flag) = argv.next() {
            let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--hold" => flags.hold = true,
                "--chunked" => flags.chunked = true,
                "--send-file" => flags.send_file = Some(value()?),
                "--host" => flags.host = Some(value()?),
                "--path" => flags.path = Some(value()?),
                "--url" => flags.url = Some(value()?),
                "--send" => flags.send.push(value()?),
                "--bytes" => {
                    let v = value()?;
                    flags.bytes = v.parse().map_err(|e| format!("bad --bytes {v:?}: {e}"))?;
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(flags)
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("set read timeout: {e}"))?;
    Ok(stream)
}

fn raw(addr: SocketAddr, flags: &Flags) -> Result<ExitCode, String> {
    let file = flags.send_file.as_ref().ok_or("raw needs --send-file")?;
    let bytes = std::fs::read(file).map_err(|e| format!("reading {file}: {e}"))?;
    let mut stream = connect(addr)?;
    stream
        .write_all(&bytes)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    if flags.hold {
        println!("sent {}", bytes.len());
        std::io::stdout().flush().ok();
        loop {
            std::thread::park();
        }
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let code = loop {
        match stream.read(&mut buf) {
            Ok(0) => break ExitCode::SUCCESS,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                eprintln!("rdt-client: {addr} did not close the connection within {TIMEOUT:?}");
                break ExitCode::from(3);
            }
            // A reset after the answer still ends the connection.
            Err(e) => {
                eprintln!("rdt-client: read from {addr}: {e}");
                break ExitCode::SUCCESS;
            }
        }
    };
    std::io::stdout()
        .write_all(&received)
        .map_err(|e| format!("stdout: {e}"))?;
    Ok(code)
}

fn upload(addr: SocketAddr, flags: &Flags) -> Result<ExitCode, String> {
    let host = flags.host.as_deref().unwrap_or("mydb.com");
    let path = flags.path.as_deref().unwrap_or("/");
    let framing = if flags.chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", flags.bytes)
    };
    let mut stream = connect(addr)?;
    let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let chunk = vec![b'x'; CHUNK];
    let mut sent = 0u64;
    let mut out = std::io::stdout();
    while sent < flags.bytes {
        let n = (flags.bytes - sent).min(CHUNK as u64) as usize;
        let written = if flags.chunked {
            stream
                .write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| stream.write_all(&chunk[..n]))
                .and_then(|()| stream.write_all(b"\r\n"))
        } else {
            stream.write_all(&chunk[..n])
        };
        written.map_err(|e| format!("send to {addr} after {sent} bytes: {e}"))?;
        sent += n as u64;
        writeln!(out, "sent {sent}").and_then(|()| out.flush()).ok();
    }
    if flags.chunked {
        stream
            .write_all(b"0\r\n\r\n")
            .map_err(|e| format!("send to {addr}: {e}"))?;
    }
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    print!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn websocket(addr: SocketAddr, flags: &Flags) -> Result<ExitCode, String> {
    let url = flags.url.as_deref().ok_or("websocket needs --url")?;
    let stream = connect(addr)?;
    let (mut ws, response) =
        tungstenite::client(url, stream).map_err(|e| format!("websocket handshake: {e}"))?;
    println!("handshake {}", response.status().as_u16());
    for text in &flags.send {
        ws.send(Message::text(text.as_str()))
            .map_err(|e| format!("send {text:?}: {e}"))?;
        let reply = ws.read().map_err(|e| format!("read: {e}"))?;
        println!("{}", reply.to_text().map_err(|e| format!("reply: {e}"))?);
    }
    if flags.hold {
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    ws.close(None).map_err(|e| format!("close: {e}"))?;
    // Until the endpoint's close frame comes back.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(format!("closing: {e}")),
        }
    }
    println!("closed");
    Ok(ExitCode::SUCCESS)
}
