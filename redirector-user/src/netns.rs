//! Other network namespaces, without the privilege to enter them.
//!
//! Serving a pod means having sockets in its network namespace: listeners
//! where the kernel's rewrite to loopback lands, and upstream sockets so the
//! external service sees the pod's address and the pod's egress policy
//! applies. A socket belongs for life to the namespace it was created in,
//! and creating one elsewhere takes `setns`, which needs `CAP_SYS_ADMIN`;
//! finding a process's namespace takes `CAP_SYS_PTRACE` for processes of
//! other users; and a pod's per-namespace maps (`CAP_BPF`) are made at run
//! time too.
//!
//! The daemon parses every byte pods and the network send it, so it keeps
//! none of that: at start, before it drops its capabilities, it starts a
//! helper, the same binary (`redirector netns-helper`), which keeps exactly
//! those three and does nothing else. The two talk over a `SOCK_SEQPACKET`
//! socket pair: one JSON request per message, descriptors as `SCM_RIGHTS`
//! both ways (a namespace to work in; the sockets or maps made there). The
//! helper reads nothing from the network and nothing from pods; it dies
//! with the daemon (`PR_SET_PDEATHSIG`) and exits when the pair closes.
//! ztunnel keeps `CAP_SYS_ADMIN` in the proxy itself for the same job.
//!
//! [`Netns`] is one namespace the daemon works in: its identity
//! ([`NsId`]: the netns cookie, else the namespace's inode), a descriptor
//! that keeps it open, and a way to make sockets in it.

pub(crate) mod helper;

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex},
};

use redirector_common::NsId;
use socket2::{Domain, Protocol, Socket, Type};

use crate::datapath::NsMaps;
pub(crate) use helper::{Helper, SockKind};

/// `SO_NETNS_COOKIE` (asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The netns cookie of the namespace `socket` belongs to (Linux ≥ 5.14),
/// which the kernel never reuses; `None` on a kernel without them.
pub(crate) fn cookie(socket: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r == 0 {
        return Ok(Some(cookie));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
        return Ok(None);
    }
    Err(err)
}

/// The identity of the namespace `socket` belongs to, in the maps and the
/// daemon: its netns cookie, or on a kernel without them the inode of
/// `ns_fd` (that namespace) with the top bit set, unique while the
/// namespace lives (the daemon holds it open while it serves it).
pub(crate) fn ns_id(socket: BorrowedFd<'_>, ns_fd: BorrowedFd<'_>) -> io::Result<NsId> {
    match cookie(socket)? {
        Some(cookie) => Ok(cookie),
        None => Ok(inode(ns_fd)? | 1 << 63),
    }
}

/// The inode of the namespace file `fd` (`/proc/<pid>/ns/net`, a bind
/// mount of one, or an fd of either).
pub(crate) fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    Ok(std::os::unix::fs::MetadataExt::ino(&file.metadata()?))
}

/// Where sockets of one namespace come from.
#[derive(Clone)]
pub(crate) enum Sockets {
    /// The daemon's own namespace: made directly.
    Here,
    /// Another one: made by the helper, in the namespace `fd`; `ready`
    /// holds sockets asked for ahead (one round trip for many).
    There {
        helper: Arc<Helper>,
        fd: Arc<OwnedFd>,
        ready: Arc<Mutex<Vec<Prefetched>>>,
    },
}

/// A socket asked for ahead: its kind, whether IPv6, and the socket.
type Prefetched = ((SockKind, bool), OwnedFd);

impl Sockets {
    /// A new non-blocking socket of `kind` for `addr`'s family.
    pub(crate) async fn socket(&self, kind: SockKind, addr: &SocketAddr) -> io::Result<Socket> {
        let v6 = addr.is_ipv6();
        let socket = match self {
            Sockets::Here => {
                let (ty, proto) = match kind {
                    SockKind::Tcp => (Type::STREAM, Protocol::TCP),
                    SockKind::Udp => (Type::DGRAM, Protocol::UDP),
                };
                let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
                Socket::new(domain, ty.cloexec(), Some(proto))?
            }
            Sockets::There { helper, fd, ready } => {
                let prefetched = {
                    let mut ready = ready.lock().expect("sockets lock");
                    ready
                        .iter()
                        .position(|(k, _)| *k == (kind, v6))
                        .map(|i| ready.remove(i).1)
                };
                match prefetched {
                    Some(fd) => Socket::from(fd),
                    None => {
                        let mut got = helper
                            .sockets(fd.as_fd(), &[(kind, v6)])
                            .await
                            .map_err(io::Error::other)?;
                        Socket::from(got.pop().ok_or_else(|| io::Error::other("no socket"))?)
                    }
                }
            }
        };
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Sockets of the namespace `fd`, made by `helper`.
    pub(crate) fn there(helper: Arc<Helper>, fd: Arc<OwnedFd>) -> Self {
        Sockets::There {
            helper,
            fd,
            ready: Arc::default(),
        }
    }

    /// Asks for sockets of `kinds` ((kind, IPv6?)) at once, to be taken by
    /// the next [`Sockets::socket`] calls; a no-op here.
    pub(crate) async fn prefetch(&self, kinds: &[(SockKind, bool)]) -> io::Result<()> {
        let Sockets::There { helper, fd, ready } = self else {
            return Ok(());
        };
        let got = helper
            .sockets(fd.as_fd(), kinds)
            .await
            .map_err(io::Error::other)?;
        ready
            .lock()
            .expect("sockets lock")
            .extend(kinds.iter().copied().zip(got));
        Ok(())
    }

    /// Drops sockets asked for ahead and not taken.
    pub(crate) fn clear(&self) {
        if let Sockets::There { ready, .. } = self {
            ready.lock().expect("sockets lock").clear();
        }
    }

    /// A TCP listener on `addr`, as `TcpListener::bind` makes one (address
    /// reuse on, backlog 1024), given `mark` before it is bound.
    pub(crate) async fn listen(
        &self,
        addr: SocketAddr,
        mark: Mark<'_>,
    ) -> io::Result<tokio::net::TcpListener> {
        let socket = self.socket(SockKind::Tcp, &addr).await?;
        socket.set_reuse_address(true)?;
        mark(socket.as_fd())?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        tokio::net::TcpListener::from_std(socket.into())
    }
}

/// What a new socket of the daemon's gets before it is bound: the mark
/// that makes it the daemon's in the kernel's eyes (`Datapath::own`).
/// Marked first, a listener is never found unmarked, so no connect meets
/// it and goes on untouched (a restarted daemon's sockets appear while the
/// kernel already sends connects to whatever it finds).
pub(crate) type Mark<'a> = &'a (dyn Fn(BorrowedFd<'_>) -> io::Result<()> + Sync);

/// One network namespace the daemon serves: its identity, its own maps
/// (where the kernel records what it sends to the daemon's sockets there),
/// and where its sockets come from. The proxy and the DNS responder of the
/// namespace work through it, so nothing of one namespace reaches
/// another's.
pub(crate) struct Namespace {
    pub(crate) id: NsId,
    /// For the log: `host`, or the pod's `namespace/name`.
    pub(crate) name: String,
    pub(crate) sockets: Sockets,
    maps: Mutex<NsMaps>,
}

impl Namespace {
    pub(crate) fn new(id: NsId, name: String, sockets: Sockets, maps: NsMaps) -> Self {
        Self {
            id,
            name,
            sockets,
            maps: Mutex::new(maps),
        }
    }

    /// The VIP:port (IPv4, the route key) a redirected connection from
    /// `peer` was meant for; consumed.
    pub(crate) fn take_original_destination(&self, peer: SocketAddr) -> Option<SocketAddrV4> {
        let mut maps = self.maps.lock().expect("namespace maps lock");
        match peer {
            SocketAddr::V4(p) => maps.take_original_destination(p),
            SocketAddr::V6(p) => maps.take_original_destination6(p),
        }
    }

    /// Runs `f` on the namespace's maps.
    pub(crate) fn with_maps<T>(&self, f: impl FnOnce(&NsMaps) -> T) -> T {
        f(&self.maps.lock().expect("namespace maps lock"))
    }

    /// The nameserver the app's DNS socket at `peer` asked; `tcp` takes
    /// the record (a TCP connection is accepted once).
    pub(crate) fn dns_nameserver(&self, peer: SocketAddr, tcp: bool) -> Option<SocketAddr> {
        let mut maps = self.maps.lock().expect("namespace maps lock");
        match (peer, tcp) {
            (SocketAddr::V4(p), false) => maps.dns_nameserver(p).map(SocketAddr::V4),
            // TCP DNS over IPv4 is recorded like a proxy connect.
            (SocketAddr::V4(p), true) => maps.take_original_destination(p).map(SocketAddr::V4),
            (SocketAddr::V6(p), take) => maps.dns_nameserver6(p, take),
        }
    }
}
