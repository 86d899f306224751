//! Handing the listening sockets of a running daemon to its successor, so
//! an upgrade has no window at all.
//!
//! The kernel sends every redirected connect to the proxy's address and
//! every captured DNS query to the responder's. While some process holds
//! those listening sockets, connects wait in the listen backlog and queries
//! in the receive buffer, whichever process takes them out. A successor
//! that bound sockets of its own would need the predecessor's closed first,
//! and in between a TLS-originating service (which cannot fail open) would
//! refuse connects and configured hosts would not resolve. So the successor
//! asks for the sockets themselves, passed as file descriptors over a Unix
//! socket next to the pin directory's lock, as Envoy's hot restart and
//! HAProxy's `-x` do.
//!
//! One exchange per connection, on a `SOCK_STREAM` Unix socket (mode
//! 0600, and a peer of another uid is refused):
//! 1. the successor sends one JSON line, `{"pid":N}`;
//! 2. the predecessor stops accepting and sends one JSON line,
//!    `{"pid":N,"sockets":[{"kind":"proxy","addr":"127.0.0.1:15001"},..],
//!    "extra":{..}}`, describing every descriptor it passes, in order: the
//!    listening sockets of every namespace it serves (`ns`: which one;
//!    none for its own), and for each pod's namespace the namespace itself
//!    and its four maps (`kind` `netns`, `ns_map`); `extra` is what the
//!    daemon says of its namespaces. The descriptors go as `SCM_RIGHTS`,
//!    at most [`MAX_FDS_PER_MESSAGE`] per `sendmsg` (the kernel's limit):
//!    the first batch with the line, each further one with a single
//!    space;
//! 3. the predecessor stops writing the maps, releases the pin directory's
//!    lock and closes the connection: end of file says the successor may
//!    claim the directory.
//!
//! A predecessor without this (an older build, or a dead daemon) does not
//! answer, and the successor reports the directory as in use, as before.

use std::{
    io::{self, IoSlice, IoSliceMut, Write},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tracing::warn;

/// How long either side waits for the other's message.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// More descriptors than any daemon hands over: its own sockets, and for
/// each namespace it can serve, six sockets, the namespace and four maps.
const MAX_FDS: usize = 16 + 11 * redirector_common::MAX_NAMESPACES as usize;
/// Descriptors one message carries at most (the kernel's `SCM_MAX_FD`).
const MAX_FDS_PER_MESSAGE: usize = 253;
/// A longer offer is not one of ours.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("handover socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("handover socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// What a handed descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Proxy,
    DnsUdp,
    DnsTcp,
    Admin,
    /// The CNI plugin's Unix listener.
    Cni,
    /// A pod's network namespace.
    Netns,
    /// One of a namespace's own maps (`index` says which).
    NsMap,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    pid: u32,
    sockets: Vec<Described>,
    #[serde(default)]
    extra: serde_json::Value,
}

/// One handed descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Described {
    pub(crate) kind: Kind,
    /// Where a socket is bound (none for a namespace or a map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) addr: Option<SocketAddr>,
    /// The namespace it serves or is (none: the daemon's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ns: Option<u64>,
    /// Which of a namespace's maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u8>,
}

/// A daemon's descriptors for a successor, kept (as duplicates of the
/// descriptors its tasks own) so they can be handed over once those tasks
/// are gone, and what it says of its namespaces.
#[derive(Default)]
pub(crate) struct Listening {
    items: Vec<(Described, OwnedFd)>,
    pub(crate) extra: serde_json::Value,
}

impl Listening {
    /// A listening socket of the daemon's own namespace.
    pub(crate) fn add(&mut self, kind: Kind, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.add_in(None, kind, socket)
    }

    /// A listening socket serving namespace `ns` (none: the daemon's own).
    pub(crate) fn add_in(
        &mut self,
        ns: Option<u64>,
        kind: Kind,
        socket: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let addr = socket2::SockRef::from(&socket).local_addr()?;
        let addr = match kind {
            Kind::Cni => None,
            _ => Some(
                addr.as_socket()
                    .ok_or_else(|| io::Error::other("not an IP socket"))?,
            ),
        };
        self.items.push((
            Described {
                kind,
                addr,
                ns,
                index: None,
            },
            socket.try_clone_to_owned()?,
        ));
        Ok(())
    }

    /// A descriptor that is not a socket: a namespace, or one of its maps.
    pub(crate) fn add_other(
        &mut self,
        kind: Kind,
        ns: u64,
        index: Option<u8>,
        fd: BorrowedFd<'_>,
    ) -> io::Result<()> {
        self.items.push((
            Described {
                kind,
                addr: None,
                ns: Some(ns),
                index,
            },
            fd.try_clone_to_owned()?,
        ));
        Ok(())
    }

    /// A copy, with descriptors of its own.
    pub(crate) fn duplicate(&self) -> io::Result<Listening> {
        Ok(Listening {
            items: self
                .items
                .iter()
                .map(|(d, fd)| Ok((d.clone(), fd.try_clone()?)))
                .collect::<io::Result<_>>()?,
            extra: self.extra.clone(),
        })
    }

    /// Moves everything `other` kept into this one.
    pub(crate) fn take_all(&mut self, other: Listening) {
        self.items.extend(other.items);
    }
}

/// The descriptors a predecessor handed over. Those nobody takes are
/// closed when this is dropped.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The predecessor's pid.
    pub(crate) pid: u32,
    items: Vec<(Described, OwnedFd)>,
    /// What the predecessor said of its namespaces.
    pub(crate) extra: serde_json::Value,
}

impl Handed {
    /// The handed socket of `kind` bound to `addr` in the daemon's own
    /// namespace, if there is one.
    #[cfg(test)]
    pub(crate) fn take(&mut self, kind: Kind, addr: SocketAddr) -> Option<OwnedFd> {
        self.take_in(None, kind, addr)
    }

    /// The handed socket of `kind` bound to `addr` serving namespace `ns`.
    pub(crate) fn take_in(
        &mut self,
        ns: Option<u64>,
        kind: Kind,
        addr: SocketAddr,
    ) -> Option<OwnedFd> {
        let i = self
            .items
            .iter()
            .position(|(d, _)| d.kind == kind && d.addr == Some(addr) && d.ns == ns)?;
        Some(self.items.remove(i).1)
    }

    /// The handed descriptor of `kind` (and `index`) for namespace `ns`.
    pub(crate) fn take_other(&mut self, kind: Kind, ns: u64, index: Option<u8>) -> Option<OwnedFd> {
        let i = self
            .items
            .iter()
            .position(|(d, _)| d.kind == kind && d.ns == Some(ns) && d.index == index)?;
        Some(self.items.remove(i).1)
    }

    /// The CNI plugin's socket, if it was handed over.
    pub(crate) fn take_cni(&mut self) -> Option<OwnedFd> {
        let i = self.items.iter().position(|(d, _)| d.kind == Kind::Cni)?;
        Some(self.items.remove(i).1)
    }

    /// The four maps of namespace `ns`, in order, if all were handed over.
    pub(crate) fn take_maps(&mut self, ns: u64) -> Option<Vec<OwnedFd>> {
        let all = (0..4u8).all(|i| {
            self.items
                .iter()
                .any(|(d, _)| d.kind == Kind::NsMap && d.ns == Some(ns) && d.index == Some(i))
        });
        if !all {
            return None;
        }
        (0..4u8)
            .map(|i| self.take_other(Kind::NsMap, ns, Some(i)))
            .collect()
    }

    /// What was handed, for the log.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|(d, _)| match (d.addr, d.ns) {
                (Some(a), None) => format!("{:?} {a}", d.kind),
                (Some(a), Some(ns)) => format!("{:?} {a} in {ns:#x}", d.kind),
                (None, Some(ns)) => format!("{:?} {ns:#x}", d.kind),
                (None, None) => format!("{:?}", d.kind),
            })
            .collect()
    }
}

/// The predecessor's side: a listener for successors.
pub(crate) struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path`, replacing a socket file a previous daemon left (the
    /// caller holds the pin directory's lock, so no live daemon uses it).
    pub(crate) fn bind(path: PathBuf) -> Result<Self, HandoverError> {
        let err = |error| HandoverError::Io {
            path: path.clone(),
            error,
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self { listener, path })
    }

    /// The next successor's request. Peers of another uid, and requests
    /// that do not parse, are logged and skipped.
    pub(crate) async fn next(&self) -> Successor {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "handover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.read_request(stream).await {
                Ok(successor) => return successor,
                Err(e) => warn!("ignoring a handover request: {e}"),
            }
        }
    }

    async fn read_request(
        &self,
        stream: tokio::net::UnixStream,
    ) -> Result<Successor, HandoverError> {
        let protocol = |reason: String| HandoverError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let creds = getsockopt(&stream, PeerCredentials)
            .map_err(|e| protocol(format!("reading the peer's credentials: {e}")))?;
        let me = nix::unistd::geteuid().as_raw();
        if creds.uid() != me {
            return Err(protocol(format!(
                "the peer (pid {}) runs as uid {}, not {me}",
                creds.pid(),
                creds.uid()
            )));
        }
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        let mut limited = (&mut reader).take(MAX_MESSAGE as u64);
        match tokio::time::timeout(EXCHANGE_TIMEOUT, limited.read_line(&mut line)).await {
            Err(_) => return Err(protocol("no request within 5 s".into())),
            Ok(Err(error)) => {
                return Err(HandoverError::Io {
                    path: self.path.clone(),
                    error,
                });
            }
            Ok(Ok(_)) => {}
        }
        let request: Request = serde_json::from_str(line.trim_end())
            .map_err(|e| protocol(format!("request {line:?}: {e}")))?;
        let stream = reader
            .into_inner()
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|error| HandoverError::Io {
                path: self.path.clone(),
                error,
            })?;
        Ok(Successor {
            pid: request.pid,
            stream,
            path: self.path.clone(),
        })
    }
}

/// A successor that asked for the sockets.
pub(crate) struct Successor {
    pub(crate) pid: u32,
    stream: UnixStream,
    path: PathBuf,
}

impl Successor {
    /// Sends `listening`. The caller must have stopped accepting, and once
    /// this returns must stop writing the maps and release the pin
    /// directory, then drop `self`: that tells the successor to go on.
    pub(crate) fn offer(&self, listening: &Listening) -> Result<(), HandoverError> {
        let offer = Offer {
            pid: std::process::id(),
            sockets: listening.items.iter().map(|(d, _)| d.clone()).collect(),
            extra: listening.extra.clone(),
        };
        let mut message = serde_json::to_vec(&offer).expect("an offer serializes");
        message.push(b'\n');
        let fds: Vec<i32> = listening
            .items
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .collect();
        let io_err = |error| HandoverError::Io {
            path: self.path.clone(),
            error,
        };
        self.stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .map_err(io_err)?;
        let mut batches = fds.chunks(MAX_FDS_PER_MESSAGE);
        let first = batches.next().unwrap_or_default();
        let sent = send_fds(&self.stream, &message, first).map_err(io_err)?;
        // The first batch went with the first byte; the rest of the line
        // is plain data, then each further batch rides on one space.
        (&self.stream).write_all(&message[sent..]).map_err(io_err)?;
        for batch in batches {
            send_fds(&self.stream, b" ", batch).map_err(io_err)?;
        }
        Ok(())
    }
}

/// One `sendmsg` of `bytes` with `fds` attached; how many bytes went.
fn send_fds(stream: &UnixStream, bytes: &[u8], fds: &[i32]) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    Ok(sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// The successor's side: asks the daemon listening at `path` for its
/// sockets and waits until it has released the pin directory. Blocking.
pub(crate) fn request(path: &Path) -> Result<Handed, HandoverError> {
    let io_err = |error| HandoverError::Io {
        path: path.into(),
        error,
    };
    let protocol = |reason: String| HandoverError::Protocol {
        path: path.into(),
        reason,
    };
    let mut stream = UnixStream::connect(path).map_err(io_err)?;
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err)?;
    let mut request = serde_json::to_vec(&Request {
        pid: std::process::id(),
    })
    .expect("a request serializes");
    request.push(b'\n');
    stream.write_all(&request).map_err(io_err)?;

    // Everything until end of file (the predecessor has released the pin
    // directory then): the line, the spaces the later batches rode on,
    // and every batch of descriptors, in order.
    let mut message = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_PER_MESSAGE]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err(e.into()))?;
        let n = msg.bytes;
        for c in msg
            .cmsgs()
            .map_err(|e| protocol(format!("control messages: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in
                // this process for us; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(protocol(
                "more descriptors in one message than expected".into(),
            ));
        }
        if n == 0 {
            break;
        }
        message.extend_from_slice(&buf[..n]);
        if message.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(protocol("the offer is larger than any daemon's".into()));
        }
    }
    if message.is_empty() {
        return Err(protocol(
            "the running daemon closed the connection without handing over".into(),
        ));
    }
    let end = message
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| protocol("the offer has no end of line".into()))?;
    let line = std::str::from_utf8(&message[..end])
        .map_err(|_| protocol("the offer is not UTF-8".into()))?;
    let offer: Offer =
        serde_json::from_str(line).map_err(|e| protocol(format!("offer {line:?}: {e}")))?;
    if offer.sockets.len() != fds.len() {
        return Err(protocol(format!(
            "the offer describes {} sockets but carried {}",
            offer.sockets.len(),
            fds.len()
        )));
    }
    let items = offer.sockets.into_iter().zip(fds).collect();
    Ok(Handed {
        pid: offer.pid,
        items,
        extra: offer.extra,
    })
}

/// Checks that `fd` is a socket of the type `kind` needs, bound where the
/// offer said, before it is used as one.
pub(crate) fn check(kind: Kind, fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(fd);
    let want = match kind {
        Kind::Proxy | Kind::DnsTcp | Kind::Admin | Kind::Cni => socket2::Type::STREAM,
        Kind::DnsUdp => socket2::Type::DGRAM,
        Kind::Netns | Kind::NsMap => {
            return Err(io::Error::other(format!("a {kind:?} is not a socket")));
        }
    };
    let bound = sock.local_addr()?.as_socket();
    let listening = want == socket2::Type::DGRAM || sock.is_listener()?;
    if sock.r#type()? != want || bound != Some(addr) || !listening {
        return Err(io::Error::other(format!(
            "the handed {kind:?} socket is not a {want:?} socket listening on {addr}"
        )));
    }
    // Whatever the predecessor set, tokio needs non-blocking sockets.
    sock.set_nonblocking(true)
}

#[cfg(test)]
mod tests;
