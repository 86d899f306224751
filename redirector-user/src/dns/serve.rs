//! The responder's sockets: UDP and TCP on one loopback port (127.0.0.1,
//! and `[::1]` for IPv6 sockets' DNS when the node has IPv6), and the
//! forwarding of queries it does not answer itself.
//!
//! UDP: each datagram is answered from the host table, or forwarded from a
//! fresh socket of its own (a random source port per query, as a resolver
//! would use) to the nameserver the kernel recorded for the sender; the
//! first reply carrying the query's id goes back to the app. What one
//! source or one nameserver may hold is bounded (`limits.rs`): a query
//! with no room is answered REFUSED, one to a nameserver remembered as
//! silent SERVFAIL, at once. A nameserver that does not answer within
//! [`FORWARD_TIMEOUT`] (or an error such as ICMP unreachable) gets the app
//! SERVFAIL, so its resolver moves on to its next nameserver. The reply is
//! read into a buffer of the size the app takes (`dns::Reply`), not 64 KiB.
//!
//! TCP: one task per app connection, at most [`super::limits::MAX_TCP_CONNS`] on
//! the node and [`super::limits::MAX_TCP_CONNS_PER_SOURCE`] per source (past
//! those a connection is closed as soon as accepted). The nameserver is
//! the connection's original destination (connect4 and sock_ops record it
//! as for a proxied connect); a connection to it is opened on the first
//! query to forward and kept for the app connection's life. Queries are
//! handled one at a time, in order (at most one in flight per
//! connection; a pipelining client waits in the kernel's buffers). The
//! timeouts are CoreDNS's server defaults: a connection with no query for
//! [`TCP_IDLE`] is closed, so is one that started a message and did not
//! finish it within [`TCP_READ`], or does not take an answer within
//! [`TCP_WRITE`]. A message's buffer grows with the bytes that arrive, not
//! with the length it announces.
//!
//! A query that must be forwarded but has no recorded nameserver (someone
//! dialled the responder directly) is answered REFUSED.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, BorrowedFd},
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    HostTable, Reply,
    limits::{Denied, FORWARD_TIMEOUT, Forwards, Outcome, TcpConns},
    refused, reply, servfail, truncated,
};
use crate::{
    datapath::PROXY_MARK,
    netns::{Mark, Namespace, SockKind, Sockets},
};

/// An app's TCP connection with no query for this long is closed
/// (CoreDNS's idle timeout).
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// A TCP message started must be complete within this (CoreDNS's read
/// timeout).
pub(crate) const TCP_READ: Duration = Duration::from_secs(3);
/// An answer must be taken by the app within this (CoreDNS's write
/// timeout).
pub(crate) const TCP_WRITE: Duration = Duration::from_secs(5);

/// The node's forwarding limits, shared by every namespace's responders.
static FORWARDS: LazyLock<Arc<Forwards>> = LazyLock::new(|| Arc::new(Forwards::default()));
/// The node's DNS-over-TCP connection limits.
static TCP_CONNS: LazyLock<Arc<TcpConns>> = LazyLock::new(|| Arc::new(TcpConns::default()));

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
    // One buffer for the socket: any datagram, whole.
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
        let udp_size = match reply(query, &hosts.current()) {
            Reply::Local(answer) => {
                debug!(%peer, "DNS: answered a configured host");
                let _ = udp.send_to(&answer, peer).await;
                continue;
            }
            Reply::Forward { udp_size } => udp_size,
        };
        let Some(nameserver) = ns.dns_nameserver(peer, false) else {
            debug!(%peer, "DNS: no nameserver recorded for this sender; REFUSED");
            if let Some(answer) = refused(query) {
                let _ = udp.send_to(&answer, peer).await;
            }
            continue;
        };
        let permit = match FORWARDS.admit((ns.id, peer.ip()), (ns.id, nameserver), Instant::now()) {
            Ok(permit) => permit,
            Err(denied) => {
                let answer = match denied {
                    Denied::Busy => {
                        debug!(%peer, %nameserver, "DNS: no room to forward (limits); REFUSED");
                        refused(query)
                    }
                    Denied::Down => {
                        debug!(%peer, %nameserver, "DNS: nameserver not answering lately; SERVFAIL");
                        servfail(query)
                    }
                };
                if let Some(answer) = answer {
                    let _ = udp.send_to(&answer, peer).await;
                }
                continue;
            }
        };
        let query = query.to_vec();
        let udp = udp.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let (outcome, answer) = match forward_udp(&query, udp_size, nameserver, &ns).await {
                Ok(answer) => {
                    debug!("DNS: relayed an answer from {nameserver} to {peer}");
                    (Outcome::Answered, Some(answer))
                }
                Err(e) => {
                    debug!(%peer, %nameserver, error = %e, "DNS: forwarding failed; SERVFAIL");
                    let outcome = if e.kind() == io::ErrorKind::TimedOut {
                        Outcome::TimedOut
                    } else {
                        Outcome::Failed
                    };
                    (outcome, servfail(&query))
                }
            };
            permit.finish(outcome, Instant::now());
            if let Some(answer) = answer {
                let _ = udp.send_to(&answer, peer).await;
            }
        });
    }
}

/// Sends `query` to `nameserver` from a marked socket of its own, made in
/// namespace `ns` (the app's: its nameserver, its egress policy), and
/// returns the first reply with the query's id, within
/// [`FORWARD_TIMEOUT`]. A reply longer than `udp_size` (what the app
/// takes) comes back as an empty truncated answer.
async fn forward_udp(
    query: &[u8],
    udp_size: usize,
    nameserver: SocketAddr,
    ns: &Namespace,
) -> io::Result<Vec<u8>> {
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
    // One byte more than allowed: a longer datagram shows as such.
    let mut buf = vec![0u8; udp_size + 1];
    timeout(FORWARD_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                if n > udp_size {
                    return truncated(query)
                        .ok_or_else(|| io::Error::other("an answer too long for the app"));
                }
                buf.truncate(n);
                return Ok(buf);
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn serve_tcp(listener: TcpListener, ns: Arc<Namespace>, hosts: Arc<HostTable>) {
    // Out of descriptors (EMFILE), accept backs off as the proxy's does.
    let mut backoff = None;
    loop {
        let (stream, peer) =
            crate::proxy::limits::accept(&listener, "DNS over TCP", &mut backoff).await;
        // Taken now, as the proxy does: each connection is accepted once.
        let nameserver = ns.dns_nameserver(peer, true);
        let Some(permit) = TCP_CONNS.admit((ns.id, peer.ip())) else {
            debug!(%peer, "DNS over TCP: too many connections (limits); closing this one");
            drop(stream);
            continue;
        };
        let hosts = hosts.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp_conn(stream, nameserver, &hosts, &ns).await {
                debug!(%peer, error = %e, "DNS over TCP: connection ended");
            }
            drop(permit);
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
        let Some(query) = read_message(&mut app, TCP_IDLE, TCP_READ).await? else {
            return Ok(());
        };
        let answer = match (reply(&query, &hosts.current()), nameserver) {
            (Reply::Local(answer), _) => answer,
            (Reply::Forward { .. }, Some(nameserver)) => {
                debug!("DNS over TCP: forwarding a query to {nameserver}");
                match forward_tcp(&mut upstream, &query, nameserver, ns).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        debug!(%nameserver, error = %e, "DNS over TCP: forwarding failed; SERVFAIL");
                        // A new connection for the next query.
                        upstream = None;
                        match servfail(&query) {
                            Some(answer) => answer,
                            None => return Ok(()),
                        }
                    }
                }
            }
            (Reply::Forward { .. }, None) => match refused(&query) {
                Some(answer) => answer,
                None => return Ok(()),
            },
        };
        timeout(TCP_WRITE, write_message(&mut app, &answer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the app took no answer"))??;
    }
}

/// `query` over the app connection's upstream connection (opened now if
/// there is none), and its answer, all within [`FORWARD_TIMEOUT`].
async fn forward_tcp(
    upstream: &mut Option<TcpStream>,
    query: &[u8],
    nameserver: SocketAddr,
    ns: &Namespace,
) -> io::Result<Vec<u8>> {
    timeout(FORWARD_TIMEOUT, async {
        let conn = match upstream {
            Some(conn) => conn,
            None => upstream.insert(connect_marked(nameserver, ns).await?),
        };
        write_message(conn, query).await?;
        read_message(conn, FORWARD_TIMEOUT, FORWARD_TIMEOUT)
            .await?
            .ok_or_else(|| io::Error::other("the nameserver closed the connection"))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn connect_marked(nameserver: SocketAddr, ns: &Namespace) -> io::Result<TcpStream> {
    let socket = ns.sockets.socket(SockKind::Tcp, &nameserver).await?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    // Before connect(), where the kernel would redirect it.
    SockRef::from(&socket).set_mark(PROXY_MARK)?;
    socket.set_nodelay(true)?;
    socket.connect(nameserver).await
}

/// One length-prefixed DNS message (RFC 1035 §4.2.2); `None` at a clean
/// end of stream, or when nothing at all arrives within `idle`. Once its
/// first byte is in, the message must be whole within `read` (else
/// `TimedOut`). The buffer grows with what arrives, so a peer announcing
/// 64 KiB and sending little holds little.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
    idle: Duration,
    read: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match timeout(idle, stream.read(&mut len[..1])).await {
        Err(_) | Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    timeout(read, async {
        stream.read_exact(&mut len[1..]).await?;
        let len = u16::from_be_bytes(len);
        let mut message = Vec::with_capacity(usize::from(len).min(512));
        (&mut *stream)
            .take(u64::from(len))
            .read_to_end(&mut message)
            .await?;
        if message.len() < usize::from(len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a DNS message",
            ));
        }
        Ok(Some(message))
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "a DNS message not finished in time",
        )
    })?
}

/// `message` with its length prefix (RFC 1035 §4.2.2), as one write.
pub(crate) fn frame(message: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::other("DNS message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

async fn write_message<W: AsyncWrite + Unpin>(stream: &mut W, message: &[u8]) -> io::Result<()> {
    stream.write_all(&frame(message)?).await
}
