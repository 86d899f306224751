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
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use socket2::{Domain, Protocol, Socket, Type};

pub(crate) use helper::{Helper, HelperError, SockKind};

/// A network namespace's identity in the maps and the daemon: its netns
/// cookie (`SO_NETNS_COOKIE`, Linux ≥ 5.14), which the kernel never reuses;
/// on older kernels its inode with the top bit set, which is unique while
/// the namespace lives (the daemon holds it open while it serves it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub(crate) struct NsId(pub(crate) u64);

impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// `SO_NETNS_COOKIE` (asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The identity of the namespace `socket` belongs to; `ns_fd` is that
/// namespace, for its inode when the kernel has no netns cookies.
pub(crate) fn ns_id(socket: BorrowedFd<'_>, ns_fd: BorrowedFd<'_>) -> io::Result<NsId> {
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
    if r == 0 && cookie != 0 {
        return Ok(NsId(cookie));
    }
    let err = io::Error::last_os_error();
    if r != 0 && err.raw_os_error() != Some(libc::ENOPROTOOPT) {
        return Err(err);
    }
    Ok(NsId(inode(ns_fd)? | 1 << 63))
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
    /// Another one: made by the helper, in the namespace `fd`.
    There { helper: Arc<Helper>, fd: Arc<OwnedFd> },
}

impl Sockets {
    /// A new non-blocking socket of `kind` for `addr`'s family.
    pub(crate) async fn socket(&self, kind: SockKind, addr: &SocketAddr) -> io::Result<Socket> {
        let v6 = addr.is_ipv6();
        match self {
            Sockets::Here => {
                let (ty, proto) = match kind {
                    SockKind::Tcp => (Type::STREAM, Protocol::TCP),
                    SockKind::Udp => (Type::DGRAM, Protocol::UDP),
                };
                let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
                let s = Socket::new(domain, ty.nonblocking().cloexec(), Some(proto))?;
                Ok(s)
            }
            Sockets::There { helper, fd } => {
                let mut got = helper
                    .sockets(fd.as_fd(), &[(kind, v6)])
                    .await
                    .map_err(io::Error::other)?;
                let s = Socket::from(got.pop().ok_or_else(|| io::Error::other("no socket"))?);
                s.set_nonblocking(true)?;
                Ok(s)
            }
        }
    }
}
