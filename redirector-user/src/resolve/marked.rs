//! hickory's tokio runtime, with every socket it opens carrying the proxy's
//! mark ([`PROXY_MARK`]): the daemon's own lookups of endpoint names then
//! reach the nameserver directly, never the DNS responder, even when the
//! daemon runs inside the cgroup whose DNS is captured.

use std::{future::Future, io, net::SocketAddr, pin::Pin, time::Duration};

use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime, iocompat::AsyncIoTokioAsStd,
};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::datapath::PROXY_MARK;

/// hickory's own default for a TCP connect without a timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxFuture<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

#[derive(Clone, Default)]
pub(crate) struct MarkedRuntime(TokioRuntimeProvider);

impl RuntimeProvider for MarkedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.0.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        wait_for: Option<Duration>,
    ) -> BoxFuture<Self::Tcp> {
        Box::pin(async move {
            let socket = match server_addr {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }?;
            // Before connect(): that is where the kernel would redirect it.
            socket2::SockRef::from(&socket).set_mark(PROXY_MARK)?;
            if let Some(bind_addr) = bind_addr {
                socket.bind(bind_addr)?;
            }
            socket.set_nodelay(true)?;
            let wait_for = wait_for.unwrap_or(CONNECT_TIMEOUT);
            match tokio::time::timeout(wait_for, socket.connect(server_addr)).await {
                Ok(stream) => Ok(AsyncIoTokioAsStd(stream?)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TCP connect timed out",
                )),
            }
        })
    }

    fn bind_udp(&self, local_addr: SocketAddr, _server_addr: SocketAddr) -> BoxFuture<Self::Udp> {
        Box::pin(async move {
            let socket = UdpSocket::bind(local_addr).await?;
            socket2::SockRef::from(&socket).set_mark(PROXY_MARK)?;
            Ok(socket)
        })
    }
}
