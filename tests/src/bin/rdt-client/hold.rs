//! `rdt-client hold <ip:port> --count <n> [--send <text>] [--max-secs <s>]
//! [--pace <k>]`: a slowloris / idle flood. Opens `n` connections one
//! after another (raising its own descriptor limit first; with `--pace`,
//! pausing 50 ms after every `k`, so connects do not run ahead of the
//! proxy's accepts by more than its per-namespace records hold), sends `text` on each (`\r`
//! and `\n` escapes understood; nothing when absent: an idle flood),
//! prints `opened <ok> failed <failed>` and then waits, without sending
//! more, until the peer has closed every connection or `max-secs`
//! (default 60) have passed. Last it prints one JSON line: `opened`,
//! `failed`, `closed`, `open_at_end`, and `first_close_ms` /
//! `last_close_ms`, how long after its own connect the earliest and the
//! latest closed connection was closed (null when none was), and
//! `closes_ms`, all of those times, sorted.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

struct Flags {
    count: usize,
    send: Option<String>,
    max: Duration,
    pace: usize,
}

pub(crate) fn main(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let usage = "usage: rdt-client hold <ip:port> --count <n> [--send <text>] [--max-secs <s>]";
    let Some(addr) = argv.next().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("{usage}");
        return ExitCode::FAILURE;
    };
    let mut flags = Flags {
        count: 1,
        send: None,
        max: Duration::from_secs(60),
        pace: 0,
    };
    while let Some(flag) = argv.next() {
        let Some(value) = argv.next() else {
            eprintln!("{flag} needs a value; {usage}");
            return ExitCode::FAILURE;
        };
        match flag.as_str() {
            "--count" => flags.count = value.parse().unwrap_or(1),
            "--send" => flags.send = Some(value.replace("\\r", "\r").replace("\\n", "\n")),
            "--pace" => flags.pace = value.parse().unwrap_or(0),
            "--max-secs" => flags.max = Duration::from_secs(value.parse().unwrap_or(60)),
            _ => {
                eprintln!("unknown option {flag}; {usage}");
                return ExitCode::FAILURE;
            }
        }
    }
    raise_nofile();
    let mut open: Vec<(TcpStream, Instant)> = Vec::with_capacity(flags.count);
    let mut failed = 0usize;
    for i in 0..flags.count {
        if flags.pace > 0 && i > 0 && i % flags.pace == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut s) => {
                if let Some(text) = &flags.send
                    && let Err(e) = s.write_all(text.as_bytes())
                {
                    failed += 1;
                    if failed <= 5 {
                        eprintln!("rdt-client hold: sending on connection {i}: {e}");
                    }
                    continue;
                }
                let _ = s.set_nonblocking(true);
                open.push((s, Instant::now()));
            }
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("rdt-client hold: connection {i}: {e}");
                }
            }
        }
    }
    let opened = open.len();
    println!("opened {opened} failed {failed}");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + flags.max;
    let mut closes: Vec<u128> = Vec::new();
    let mut buf = [0u8; 4096];
    while !open.is_empty() && Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        let mut still = Vec::with_capacity(open.len());
        for ((mut s, at), p) in open.into_iter().zip(&fds) {
            if p.revents == 0 {
                still.push((s, at));
                continue;
            }
            // Drain what came (a 408, say); closed at EOF or an error.
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            if closed {
                closes.push(at.elapsed().as_millis());
            } else {
                still.push((s, at));
            }
        }
        open = still;
    }
    closes.sort_unstable();
    let all: Vec<String> = closes.iter().map(u128::to_string).collect();
    println!(
        "{{\"opened\": {opened}, \"failed\": {failed}, \"closed\": {}, \"open_at_end\": {}, \
         \"first_close_ms\": {}, \"last_close_ms\": {}, \"closes_ms\": [{}]}}",
        closes.len(),
        open.len(),
        closes.iter().min().map_or("null".into(), u128::to_string),
        closes.iter().max().map_or("null".into(), u128::to_string),
        all.join(", "),
    );
    ExitCode::SUCCESS
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}
