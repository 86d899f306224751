//! An endpoint that breaks HTTP on purpose, written on raw TCP so it can
//! send what no HTTP library would: it reads a request head, answers
//! according to the path with one of [`Rogue`]'s responses, and closes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{netns::Netns, serve::Acceptor};

/// What the endpoint answers, chosen by the request path `/<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rogue {
    /// Bytes that are not HTTP at all.
    Garbage,
    /// `HTTP/1.1 2x0 OK`.
    BadStatusLine,
    /// Two different `Content-Length` values.
    TwoLengths,
    /// Both `Content-Length` and `Transfer-Encoding: chunked`.
    LengthAndChunked,
    /// 101 headers (the limit is 100).
    ManyHeaders,
    /// One header of 61 KiB (the limit is 60 KiB for the whole head).
    BigHead,
    /// A good head, then a chunk size that is not hex.
    BadChunk,
    /// A valid `200 ok`.
    Ok,
}

impl Rogue {
    pub const MALFORMED: [Rogue; 7] = [
        Rogue::Garbage,
        Rogue::BadStatusLine,
        Rogue::TwoLengths,
        Rogue::LengthAndChunked,
        Rogue::ManyHeaders,
        Rogue::BigHead,
        Rogue::BadChunk,
    ];

    /// The request path that asks for this answer.
    pub fn path(self) -> &'static str {
        match self {
            Rogue::Garbage => "/garbage",
            Rogue::BadStatusLine => "/bad-status-line",
            Rogue::TwoLengths => "/two-lengths",
            Rogue::LengthAndChunked => "/length-and-chunked",
            Rogue::ManyHeaders => "/many-headers",
            Rogue::BigHead => "/big-head",
            Rogue::BadChunk => "/bad-chunk",
            Rogue::Ok => "/ok",
        }
    }

    fn from_path(path: &str) -> Rogue {
        Rogue::MALFORMED
            .into_iter()
            .find(|r| r.path() == path)
            .unwrap_or(Rogue::Ok)
    }

    fn response(self) -> Vec<u8> {
        match self {
            Rogue::Garbage => b"\x16\x03\x01\x02\x00 this is not HTTP\r\n\r\n".to_vec(),
            Rogue::BadStatusLine => b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Rogue::TwoLengths => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec()
            }
            Rogue::LengthAndChunked => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Rogue::ManyHeaders => {
                let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
                for i in 1..=100 {
                    head += &format!("X-Header-{i}: {i}\r\n");
                }
                head += "\r\nok";
                head.into_bytes()
            }
            Rogue::BigHead => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: {}\r\n\r\nok",
                "b".repeat(61 * 1024)
            )
            .into_bytes(),
            Rogue::BadChunk => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
                    .to_vec()
            }
            Rogue::Ok => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec()
            }
        }
    }
}

/// The rogue endpoint, in a namespace; stopped on drop.
pub struct RogueServer {
    paths: Arc<Mutex<Vec<String>>>,
    acceptor: Acceptor,
}

impl RogueServer {
    /// Listens on `addr` inside `netns`.
    pub fn start(netns: &Netns, addr: SocketAddr) -> Result<RogueServer> {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&paths);
        let acceptor = Acceptor::start(netns, addr, "rogue", move |stream| {
            answer(stream, Arc::clone(&seen))
        })?;
        Ok(RogueServer { paths, acceptor })
    }

    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The path of every request head read so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn answer(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 && data.len() < 128 * 1024 => data.extend_from_slice(&buf[..n]),
            _ => return,
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    // Read the whole (Content-Length) body: closing a socket with unread
    // data would reset the connection before the answer is read.
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = data.len() - end;
    while body < length {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => body += n,
            _ => return,
        }
    }
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let rogue = Rogue::from_path(&path);
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(path);
    let _ = stream.write_all(&rogue.response()).await;
    let _ = stream.shutdown().await;
    // Until the proxy lets go, for the same reason.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
