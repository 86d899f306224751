//! A real HTTP/1.1 server (hyper, keep-alive) standing in for a service
//! endpoint, like the `healthy: <name>` backends of the Istio locality
//! failover blog post.
//!
//! Faults for outlier-detection tests: [`HttpServer::set_status`] (5xx),
//! [`HttpServer::set_delay`] (slow or stalled responses),
//! [`HttpServer::stop`] (connection refused) and [`HttpServer::restart`].

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::{netns::Netns, serve::Acceptor};

struct State {
    name: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    requests: AtomicU64,
    connections: AtomicU64,
    last_peer: Mutex<Option<IpAddr>>,
}

/// An HTTP server in a namespace; stopped on drop.
pub struct HttpServer {
    state: Arc<State>,
    acceptor: Acceptor,
}

impl HttpServer {
    /// Listens on `addr` inside `netns` (port 0 picks a free port, see
    /// [`HttpServer::addr`]) and answers `200 healthy: <name>`.
    pub fn start(netns: &Netns, addr: SocketAddr, name: &str) -> Result<HttpServer> {
        let state = Arc::new(State {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_peer: Mutex::new(None),
        });
        let conn_state = Arc::clone(&state);
        let acceptor = Acceptor::start(netns, addr, &format!("http {name}"), move |stream| {
            serve_connection(stream, Arc::clone(&conn_state))
        })?;
        Ok(HttpServer { state, acceptor })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The name in the response bodies.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Answer `status` from now on, with body `<status> from <name>`;
    /// `200` goes back to `healthy: <name>`.
    pub fn set_status(&self, status: u16) -> Result<()> {
        if StatusCode::from_u16(status).is_err() {
            bail!("{status} is not an HTTP status code");
        }
        self.state.status.store(status, Ordering::SeqCst);
        Ok(())
    }

    /// Wait this long before answering each request (a long delay is a
    /// stalled upstream).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests received so far (counted when they arrive).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The address the last connection came from.
    pub fn last_peer_ip(&self) -> Option<IpAddr> {
        *self
            .state
            .last_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the listener and every open connection: new connects are
    /// refused until [`HttpServer::restart`].
    pub fn stop(&self) -> Result<()> {
        self.acceptor.stop()
    }

    /// Listens on the same address again.
    pub fn restart(&self) -> Result<()> {
        self.acceptor.restart()
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<State>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    if let Ok(peer) = stream.peer_addr() {
        *state
            .last_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(peer.ip());
    }
    let service = service_fn(move |request| respond(request, Arc::clone(&state)));
    // Errors here are client resets and the like: the tests judge by what
    // the client saw.
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn respond(
    _request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = state.status.load(Ordering::SeqCst);
    let body = if status == 200 {
        format!("healthy: {}", state.name)
    } else {
        format!("{status} from {}", state.name)
    };
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .header("x-served-by", &state.name)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response");
    Ok(response)
}
