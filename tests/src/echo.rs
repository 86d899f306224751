//! An HTTP/1.1 endpoint (hyper, keep-alive) that tells what reached it,
//! for tests of the HTTP layer between the app and the endpoint.
//!
//! By path:
//! - `/download/<bytes>/<cl|chunked>`: [`pattern`] bytes, framed with a
//!   Content-Length or chunked.
//! - `/forever`: a chunked body that never ends; [`EchoServer::streamed`]
//!   counts the bytes hyper took from it (it takes more only as the
//!   connection drains).
//! - `/stall/<bytes>`: reads that much of the request body, then stops
//!   reading and never answers; [`EchoServer::body_read`] counts.
//! - anything else: reads the whole body and answers 200 with
//!   [`Received`] as JSON (also kept, see [`EchoServer::received`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

use crate::{netns::Netns, serve::Acceptor};

/// One request as the endpoint saw it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Received {
    /// Which accepted connection (from 1), and which request on it (from 1).
    pub connection: u64,
    pub request_on_connection: u64,
    pub method: String,
    pub path: String,
    /// Every header, names lowercase, in the order received.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
}

impl Received {
    /// The values of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    connections: AtomicU64,
    streamed: AtomicU64,
    body_read: AtomicU64,
}

/// The endpoint, in a namespace; stopped on drop.
pub struct EchoServer {
    state: Arc<State>,
    acceptor: Acceptor,
}

impl EchoServer {
    /// Listens on `addr` inside `netns`.
    pub fn start(netns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
        let state = Arc::new(State::default());
        let conn_state = Arc::clone(&state);
        let acceptor = Acceptor::start(netns, addr, "echo", move |stream| {
            serve_connection(stream, Arc::clone(&conn_state))
        })?;
        Ok(EchoServer { state, acceptor })
    }

    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// Every request answered with [`Received`] so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Body bytes of `/forever` responses handed to hyper so far.
    pub fn streamed(&self) -> u64 {
        self.state.streamed.load(Ordering::SeqCst)
    }

    /// Body bytes of `/stall` requests read so far.
    pub fn body_read(&self) -> u64 {
        self.state.body_read.load(Ordering::SeqCst)
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<State>) {
    let connection = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let requests = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |request| {
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        respond(request, Arc::clone(&state), connection, n)
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type Reply = Response<Either<Full<Bytes>, Pattern>>;

async fn respond(
    request: Request<Incoming>,
    state: Arc<State>,
    connection: u64,
    request_on_connection: u64,
) -> Result<Reply, Infallible> {
    let path = request.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["download", bytes, framing] => {
            let len = bytes.parse().unwrap_or(0);
            let body = Pattern::new(Some(len), *framing == "cl", None);
            return Ok(Response::new(Either::Right(body)));
        }
        ["forever"] => {
            let counter = Arc::clone(&state);
            return Ok(Response::new(Either::Right(Pattern::new(
                None,
                false,
                Some(counter),
            ))));
        }
        ["stall", bytes] => {
            let limit: u64 = bytes.parse().unwrap_or(0);
            let mut body = request.into_body();
            let mut read = 0;
            while read < limit {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                        read += n;
                        state.body_read.fetch_add(n, Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            // Keep the body unread and never answer.
            std::future::pending::<()>().await;
            unreachable!();
        }
        _ => {}
    }
    let (head, mut body) = request.into_parts();
    let mut digest = Sha256::new();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                    body_len += data.len() as u64;
                }
            }
            Err(e) => {
                // Cut off or malformed on the way: not a request to record.
                return Ok(Response::builder()
                    .status(400)
                    .body(Either::Left(Full::new(Bytes::from(e.to_string()))))
                    .expect("a valid response"));
            }
        }
    }
    let received = Received {
        connection,
        request_on_connection,
        method: head.method.to_string(),
        path,
        headers: head
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        body_sha256: hex(&digest.finalize()),
    };
    let json = serde_json::to_vec(&received).expect("JSON of a record");
    state
        .received
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(received);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(json))))
        .expect("a valid response"))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` bytes of a fixed pseudo-random sequence (xorshift64), the same
/// bytes every time: what `/download` sends and what uploads are made of.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = SEED;
    while out.len() < len {
        let (word, next) = step(state);
        state = next;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word.to_le_bytes()[..take]);
    }
    out
}

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const CHUNK: usize = 64 * 1024;

fn step(mut x: u64) -> (u64, u64) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x, x)
}

/// A body of [`pattern`] bytes in 64 KiB frames; `len: None` never ends.
pub struct Pattern {
    remaining: Option<u64>,
    exact: bool,
    state: u64,
    counter: Option<Arc<State>>,
}

impl Pattern {
    fn new(len: Option<u64>, exact: bool, counter: Option<Arc<State>>) -> Self {
        Pattern {
            remaining: len,
            exact,
            state: SEED,
            counter,
        }
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let size = match this.remaining {
            Some(0) => return Poll::Ready(None),
            Some(left) => left.min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        // Whole words, so consecutive frames continue the same sequence.
        let mut chunk = Vec::with_capacity(size);
        while chunk.len() < size {
            let (word, next) = step(this.state);
            this.state = next;
            let take = (size - chunk.len()).min(8);
            chunk.extend_from_slice(&word.to_le_bytes()[..take]);
        }
        if let Some(left) = &mut this.remaining {
            *left -= size as u64;
        }
        if let Some(state) = &this.counter {
            state.streamed.fetch_add(size as u64, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) if self.exact => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_streamed_body_is_the_pattern() {
        let len = 3 * CHUNK + 5;
        let mut body = Pattern::new(Some(len as u64), true, None);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut all = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            all.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(all, pattern(len));
    }
}
