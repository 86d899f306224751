//! A plain TCP endpoint for TCP-port (L4) tests: greets every connection
//! with `hello from <name>\n`, then echoes what it receives.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Result;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{netns::Netns, serve::Acceptor};

/// A greeting echo server in a namespace; stopped on drop.
pub struct TcpServer {
    name: String,
    accepted: Arc<AtomicU64>,
    acceptor: Acceptor,
}

impl TcpServer {
    /// Listens on `addr` inside `netns` (port 0 picks a free port).
    pub fn start(netns: &Netns, addr: SocketAddr, name: &str) -> Result<TcpServer> {
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let greeting: Arc<str> = format!("hello from {name}\n").into();
        let acceptor = Acceptor::start(netns, addr, &format!("tcp {name}"), move |stream| {
            counter.fetch_add(1, Ordering::SeqCst);
            greet_and_echo(stream, Arc::clone(&greeting))
        })?;
        Ok(TcpServer {
            name: name.to_owned(),
            accepted,
            acceptor,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The name in the greeting.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection (new connects are
    /// refused).
    pub fn stop(&self) -> Result<()> {
        self.acceptor.stop()
    }

    /// Listens on the same address again.
    pub fn restart(&self) -> Result<()> {
        self.acceptor.restart()
    }
}

async fn greet_and_echo(mut stream: TcpStream, greeting: Arc<str>) {
    if stream.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let (mut read, mut write) = stream.split();
    let _ = tokio::io::copy(&mut read, &mut write).await;
}
