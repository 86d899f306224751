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
//!    `{"pid":N,"sockets":[{"kind":"proxy","addr":"127.0.0.1:15001"},..]}`,
//!    with the sockets, in that order, as `SCM_RIGHTS` of the same
//!    `sendmsg`;
//! 3. the predecessor stops writing the maps, releases the pin directory's
//!    lock and closes the connection: end of file says the successor may
//!    claim the directory.
//!
//! A predecessor without this (an older build, or a dead daemon) does not
//! answer, and the successor reports the directory as in use, as before.

use std::{
    io::{self, IoSlice, IoSliceMut, Read, Write},
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
/// More sockets than any daemon has: the proxy, and DNS over UDP and TCP.
const MAX_SOCKETS: usize = 8;
/// A message longer than this is not one of ours.
const MAX_MESSAGE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("handover socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("handover socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// What a handed socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Proxy,
    DnsUdp,
    DnsTcp,
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    pid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    pid: u32,
    sockets: Vec<Described>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Described {
    kind: Kind,
    addr: SocketAddr,
}

/// A daemon's listening sockets, kept (as duplicates of the descriptors
/// its accept loops own) so they can be handed over once those loops are
/// gone.
#[derive(Default)]
pub(crate) struct Listening(Vec<(Kind, SocketAddr, OwnedFd)>);

impl Listening {
    pub(crate) fn add(&mut self, kind: Kind, socket: BorrowedFd<'_>) -> io::Result<()> {
        let addr = socket2::SockRef::from(&socket)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        self.0.push((kind, addr, socket.try_clone_to_owned()?));
        Ok(())
    }
}

/// The sockets a predecessor handed over. Those nobody takes are closed
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The predecessor's pid.
    pub(crate) pid: u32,
    sockets: Vec<(Kind, SocketAddr, OwnedFd)>,
}

impl Handed {
    /// The handed socket of `kind` bound to `addr`, if there is one.
    pub(crate) fn take(&mut self, kind: Kind, addr: SocketAddr) -> Option<OwnedFd> {
        let i = self
            .sockets
            .iter()
            .position(|(k, a, _)| *k == kind && *a == addr)?;
        Some(self.sockets.remove(i).2)
    }

    /// What was handed, for the log.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.sockets
            .iter()
            .map(|(k, a, _)| format!("{k:?} {a}"))
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
            sockets: listening
                .0
                .iter()
                .map(|(kind, addr, _)| Described {
                    kind: *kind,
                    addr: *addr,
                })
                .collect(),
        };
        let mut message = serde_json::to_vec(&offer).expect("an offer serializes");
        message.push(b'\n');
        let fds: Vec<i32> = listening
            .0
            .iter()
            .map(|(_, _, fd)| fd.as_raw_fd())
            .collect();
        let io_err = |error| HandoverError::Io {
            path: self.path.clone(),
            error,
        };
        self.stream
            .set_write_timeout(Some(EXCHANGE_TIMEOUT))
            .map_err(io_err)?;
        let sent = sendmsg::<UnixAddr>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&message)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| io_err(e.into()))?;
        // The descriptors went with the first byte; the rest is plain data.
        (&self.stream).write_all(&message[sent..]).map_err(io_err)
    }
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

    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_SOCKETS]);
    let (n, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io_err(e.into()))?;
        let mut fds = Vec::new();
        let cmsgs = msg
            .cmsgs()
            .map_err(|e| protocol(format!("control messages: {e}")))?;
        for c in cmsgs {
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
        (msg.bytes, fds)
    };
    if n == 0 {
        return Err(protocol(
            "the running daemon closed the connection without handing over".into(),
        ));
    }
    // The rest of the line, then end of file: the predecessor has released
    // the pin directory.
    let mut message = buf[..n].to_vec();
    (&mut stream)
        .take((MAX_MESSAGE - n) as u64)
        .read_to_end(&mut message)
        .map_err(io_err)?;
    let line = std::str::from_utf8(&message)
        .map_err(|_| protocol("the offer is not UTF-8".into()))?
        .trim_end();
    let offer: Offer =
        serde_json::from_str(line).map_err(|e| protocol(format!("offer {line:?}: {e}")))?;
    if offer.sockets.len() != fds.len() {
        return Err(protocol(format!(
            "the offer describes {} sockets but carried {}",
            offer.sockets.len(),
            fds.len()
        )));
    }
    let sockets = offer
        .sockets
        .into_iter()
        .zip(fds.drain(..))
        .map(|(d, fd)| (d.kind, d.addr, fd))
        .collect();
    Ok(Handed {
        pid: offer.pid,
        sockets,
    })
}

/// Checks that `fd` is a socket of the type `kind` needs, bound where the
/// offer said, before it is used as one.
pub(crate) fn check(kind: Kind, fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(fd);
    let want = match kind {
        Kind::Proxy | Kind::DnsTcp | Kind::Admin => socket2::Type::STREAM,
        Kind::DnsUdp => socket2::Type::DGRAM,
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
