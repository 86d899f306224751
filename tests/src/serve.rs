//! The accept loop shared by the HTTP and TCP servers, with the faults
//! tests need: [`Acceptor::stop`] closes the listener and every open
//! connection (new connects are refused), [`Acceptor::restart`] binds the
//! same address again.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        *self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Running { stop, task });
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

/// Duplicates of the open connections' sockets, by connection number.
///
/// Closing our descriptor is not enough to close a socket at once: a child
/// that another test thread forked keeps a copy of every descriptor until
/// it execs. `shutdown(2)` acts on the socket itself, so [`accept_loop`]
/// shuts these down (and the listener) when stopped, and peers see the
/// close (and new connects the refusal) before `stop()` returns.
type OpenSockets = Arc<Mutex<HashMap<u64, OwnedFd>>>;

/// Forgets (and closes) a connection's duplicate when its task ends or is
/// aborted.
struct Forget {
    open: OpenSockets,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown(2) on a descriptor we own; failure (ENOTCONN on a
    // connection the peer already closed) changes nothing.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

async fn accept_loop(listener: TcpListener, handler: Handler, mut stopped: oneshot::Receiver<()>) {
    let open = OpenSockets::default();
    let mut connections = JoinSet::new();
    for id in 0u64.. {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.as_fd().try_clone_to_owned() {
                        Ok(dup) => {
                            open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, dup);
                        }
                        Err(err) => eprintln!("testbed: cannot track a connection: {err}"),
                    }
                    let forget = Forget { open: Arc::clone(&open), id };
                    let serve = handler(stream);
                    connections.spawn(async move {
                        let _forget = forget;
                        serve.await;
                    });
                }
                Err(err) => {
                    eprintln!("testbed: accept on {:?}: {err}", listener.local_addr());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    shutdown(listener.as_fd());
    drop(listener);
    for fd in open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
    {
        shutdown(fd.as_fd());
    }
    connections.shutdown().await;
}
