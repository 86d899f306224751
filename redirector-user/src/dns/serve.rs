//! The responder's sockets: UDP and TCP on one loopback port (127.0.0.1,
//! and `[::1]` for IPv6 sockets' DNS when the node has IPv6), and the
//! forwarding of queries it does not answer itself.
//!
//! UDP: each datagram is answered from the host table, or forwarded from a
//! fresh socket of its own (a random source port per query, as a resolver
//! would use) to the nameserver the kernel recorded for the sender, with a
//! timeout; the first reply carrying the query's id goes back to the app.
//! At most [`MAX_FORWARDS`] queries are upstream at once; past that a query
//! is dropped, and the app's resolver retries as for any lost datagram.
//!
//! TCP: one task per app connection. The nameserver is the connection's
//! original destination (connect4 and sock_ops record it as for a proxied
//! connect); a connection to it is opened on the first query to forward
//! and kept for the app connection's life. Queries are handled in order.
//!
//! A query that must be forwarded but has no recorded nameserver (someone
//! dialled the responder directly) is answered REFUSED.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, BorrowedFd},
    sync::Arc,
    time::Duration,
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, warn};

use super::{HostTable, Reply, refused, reply};
use crate::{
    datapath::PROXY_MARK,
    netns::{Mark, Namespace, SockKind, Sockets},
};

/// How long the nameserver has to answer a forwarded query (glibc's own
/// timeout per try is 5 s; it retries with a new query meanwhile).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// An app's TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// UDP queries upstream at once.
const MAX_FORWARDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    #[error(
        "DNS responder address {addr} is already in use (choose another port with --dns-port, \
         or 0 to turn DNS capture off)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("DNS responder on {addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
}

/// The responder's two sockets, bound.
pub(crate) struct Responder {
    udp: UdpSocket,
    tcp: TcpListener,
}

/// The responder's sockets on `addr`, made where `sockets` makes them (in
/// the namespace it serves).
pub(crate) async fn bind(
    addr: SocketAddrV4,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<Responder, DnsError> {
    bind_addr(addr.into(), sockets, mark).await
}

/// The `[::1]` responder, for DNS of IPv6 sockets: a node without IPv6
/// runs without it (their DNS is then left alone).
pub(crate) async fn bind6(
    addr: SocketAddrV6,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<Option<Responder>, DnsError> {
    match bind_addr(addr.into(), sockets, mark).await {
        Ok(r) => Ok(Some(r)),
        Err(e @ DnsError::PortInUse { .. }) => Err(e),
        Err(e) => {
            warn!("{e}; DNS of IPv6 sockets is not captured");
            Ok(None)
        }
    }
}

async fn bind_addr(
    addr: SocketAddr,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<Responder, DnsError> {
    let err = |error: io::Error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            DnsError::PortInUse { addr }
        } else {
            DnsError::Listen { addr, error }
        }
    };
    let udp = sockets.socket(SockKind::Udp, &addr).await.map_err(err)?;
    mark(udp.as_fd()).map_err(err)?;
    udp.bind(&addr.into()).map_err(err)?;
    let udp = UdpSocket::from_std(udp.into()).map_err(err)?;
    let tcp = sockets.listen(addr, mark).await.map_err(err)?;
    Ok(Responder { udp, tcp })
}

impl Responder {
    /// A responder on sockets a previous daemon handed over (see
    /// `handover.rs`), bound and listening already.
    pub(crate) fn adopt(udp: std::net::UdpSocket, tcp: std::net::TcpListener) -> io::Result<Self> {
        Ok(Self {
            udp: UdpSocket::from_std(udp)?,
            tcp: TcpListener::from_std(tcp)?,
        })
    }

    /// The two sockets, to be kept for a successor.
    pub(crate) fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.udp.as_fd(), self.tcp.as_fd())
    }
}

/// Serves both sockets, which the daemon holds in namespace `ns` (whose
/// own maps say which nameserver each app socket asked, and where the
/// forwarded queries are made from), until the task is dropped.
pub(crate) async fn serve(responder: Responder, ns: Arc<Namespace>, hosts: Arc<HostTable>) {
    let Responder { udp, tcp } = responder;
    tokio::join!(
        serve_udp(udp, ns.clone(), hosts.clone()),
        serve_tcp(tcp, ns, hosts)
    );
}

async fn serve_udp(udp: UdpSocket, ns: Arc<Namespace>, hosts: Arc<HostTable>) {
    let udp = Arc::new(udp);
    let upstream = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS responder: receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let query = &buf[..n];
        let nameserver = match reply(query, &hosts.current()) {
            Reply::Local(answer) => {
                debug!(%peer, "DNS: answered a configured host");
                let _ = udp.send_to(&answer, peer).await;
                continue;
            }
            Reply::Forward => ns.dns_nameserver(peer, false),
        };
        let Some(nameserver) = nameserver else {
            debug!(%peer, "DNS: no nameserver recorded for this sender; REFUSED");
            if let Some(answer) = refused(query) {
                let _ = udp.send_to(&answer, peer).await;
            }
            continue;
        };
        let Ok(permit) = upstream.clone().try_acquire_owned() else {
            debug!(%peer, "DNS: too many queries upstream; dropping one");
            continue;
        };
        let query = query.to_vec();
        let udp = udp.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            match forward_udp(&query, nameserver, &ns).await {
                Ok(answer) => {
                    debug!("DNS: relayed an answer from {nameserver} to {peer}");
                    let _ = udp.send_to(&answer, peer).await;
                }
                Err(e) => debug!(%peer, %nameserver, error = %e, "DNS: forwarding failed"),
            }
            drop(permit);
        });
    }
}

/// Sends `query` to `nameserver` from a marked socket of its own, made in
/// namespace `ns` (the app's: its nameserver, its egress policy), and
/// returns the first reply with the query's id.
async fn forward_udp(query: &[u8], nameserver: SocketAddr, ns: &Namespace) -> io::Result<Vec<u8>> {
    let socket = ns.sockets.socket(SockKind::Udp, &nameserver).await?;
    socket.set_mark(PROXY_MARK)?;
    let any: SocketAddr = match nameserver {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(nameserver).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    timeout(FORWARD_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn serve_tcp(listener: TcpListener, ns: Arc<Namespace>, hosts: Arc<HostTable>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS responder: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Taken now, as the proxy does: each connection is accepted once.
        let nameserver = ns.dns_nameserver(peer, true);
        let hosts = hosts.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp_conn(stream, nameserver, &hosts, &ns).await {
                debug!(%peer, error = %e, "DNS over TCP: connection ended");
            }
        });
    }
}

async fn serve_tcp_conn(
    mut app: TcpStream,
    nameserver: Option<SocketAddr>,
    hosts: &HostTable,
    ns: &Namespace,
) -> io::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    loop {
        let Ok(query) = timeout(TCP_IDLE, read_message(&mut app)).await else {
            return Ok(());
        };
        let Some(query) = query? else {
            return Ok(());
        };
        let answer = match (reply(&query, &hosts.current()), nameserver) {
            (Reply::Local(answer), _) => answer,
            (Reply::Forward, Some(nameserver)) => {
                let conn = match &mut upstream {
                    Some(conn) => conn,
                    None => upstream.insert(connect_marked(nameserver, ns).await?),
                };
                debug!("DNS over TCP: forwarding a query to {nameserver}");
                write_message(conn, &query).await?;
                timeout(FORWARD_TIMEOUT, read_message(conn))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??
                    .ok_or_else(|| io::Error::other("the nameserver closed the connection"))?
            }
            (Reply::Forward, None) => match refused(&query) {
                Some(answer) => answer,
                None => return Ok(()),
            },
        };
        write_message(&mut app, &answer).await?;
    }
}

async fn connect_marked(nameserver: SocketAddr, ns: &Namespace) -> io::Result<TcpStream> {
    let socket = ns.sockets.socket(SockKind::Tcp, &nameserver).await?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    // Before connect(), where the kernel would redirect it.
    SockRef::from(&socket).set_mark(PROXY_MARK)?;
    socket.set_nodelay(true)?;
    timeout(FORWARD_TIMEOUT, socket.connect(nameserver))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// One length-prefixed DNS message (RFC 1035 §4.2.2); `None` at a clean
/// end of stream.
pub(crate) async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

pub(crate) async fn write_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::other("DNS message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}
