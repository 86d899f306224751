//! The accept loop shared by the HTTP and TCP servers, with the faults
//! tests need: [`Acceptor::stop`] closes the listener and every open
//! connection (new connects are refused), [`Acceptor::restart`] binds the
//! same address again.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::oneshot,
    task::JoinSet,
};

use crate::{netns::Netns, runtime::NsRuntime};

type Handler = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A listener in a namespace that hands each connection to a handler.
pub(crate) struct Acceptor {
    label: String,
    addr: SocketAddr,
    handler: Handler,
    running: Mutex<Option<Running>>,
    // Last: dropped after `running`, and its drop ends every task.
    rt: NsRuntime,
}

impl Acceptor {
    /// Binds `addr` in `netns` (port 0 picks one, kept across restarts) and
    /// starts accepting.
    pub(crate) fn start<H, Fut>(
        netns: &Netns,
        addr: SocketAddr,
        label: &str,
        handler: H,
    ) -> Result<Acceptor>
    where
        H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = NsRuntime::start(netns, label)?;
        let handler: Handler = Arc::new(move |stream| Box::pin(handler(stream)));
        let mut acceptor = Acceptor {
            label: label.to_owned(),
            addr,
            handler,
            running: Mutex::new(None),
            rt,
        };
        acceptor.addr = acceptor.bind()?;
        Ok(acceptor)
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection; waits until they are
    /// closed. Idempotent.
    pub(crate) fn stop(&self) -> Result<()> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Running { stop, task }) = running {
            self.rt.run(async move {
                let _ = stop.send(());
                let _ = task.await;
            })?;
        }
        Ok(())
    }

    /// Binds the address again after [`Acceptor::stop`] (stops first if
    /// still running).
    pub(crate) fn restart(&self) -> Result<()> {
        self.stop()?;
        self.bind().map(|_| ())
    }

    fn bind(&self) -> Result<SocketAddr> {
        let addr = self.addr;
        let handler = Arc::clone(&self.handler);
        let (stop, stopped) = oneshot::channel();
        let (local, task) = self
            .rt
            .run(async move {
                let listener = listen(addr)?;
                let local = listener.local_addr()?;
                let task = tokio::spawn(accept_loop(listener, handler, stopped));
                io::Result::Ok((local, task))
            })?
            .with_context(|| format!("{}: cannot listen on {addr}", self.label))?;
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { stop, task });
        Ok(local)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("testbed: stopping {}: {err:#}", self.label);
        }
    }
}

/// A listening socket with SO_REUSEADDR, so a restart can bind at once.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, handler: Handler, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(handler(stream));
                }
                Err(err) => {
                    eprintln!("testbed: accept on {:?}: {err}", listener.local_addr());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}
