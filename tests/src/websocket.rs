//! A websocket endpoint (tokio-tungstenite): keeps the handshake headers
//! of every connection and answers each text message `m` with `echo: m`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

use crate::{netns::Netns, serve::Acceptor};

/// Handshake headers (names lowercase) of one connection.
pub type Handshake = Vec<(String, String)>;

/// The endpoint, in a namespace; stopped on drop.
pub struct WebSocketServer {
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    acceptor: Acceptor,
}

impl WebSocketServer {
    /// Listens on `addr` inside `netns`.
    pub fn start(netns: &Netns, addr: SocketAddr) -> Result<WebSocketServer> {
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&handshakes);
        let acceptor = Acceptor::start(netns, addr, "websocket", move |stream| {
            echo(stream, Arc::clone(&seen))
        })?;
        Ok(WebSocketServer {
            handshakes,
            acceptor,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The handshake of every connection that completed one.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn echo(stream: TcpStream, seen: Arc<Mutex<Vec<Handshake>>>) {
    #[allow(
        clippy::result_large_err,
        reason = "the signature of tungstenite's handshake callback"
    )]
    let record = |request: &Request, response: Response| {
        let headers = request
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(headers);
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    // tungstenite answers pings and the closing handshake itself; the
    // stream ends once the connection is closed.
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) => Message::text(format!("echo: {}", text.as_str())),
            Message::Binary(data) => Message::Binary(data),
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}
