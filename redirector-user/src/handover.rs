//! Handing the listening sockets of a running daemon to its successor, so
//! an upgrade has no window at all, in two phases, so that a successor
//! that fails half-way cannot leave the node without a daemon.
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
//! **Protocol version 2.** One exchange per connection, on a
//! `SOCK_STREAM` Unix socket (mode 0600), each message one JSON line:
//! 0. before it asks, the successor checks everything it can without the
//!    pin directory: its privileges, the cgroup, the kernel, the layouts
//!    (sizes, types, flags) of the maps pinned there, and every program
//!    through the verifier, loaded on the pinned maps and kept
//!    (`Datapath::preflight`). A build that cannot run here fails now,
//!    while the predecessor serves, and phase 1 below is short;
//! 1. the successor sends `{"version":2,"pid":N}` with one descriptor
//!    attached: a map pinned in the directory, which it opened itself;
//! 2. the predecessor authenticates it (see [`authenticate`]: same uid and
//!    user namespace, `CAP_NET_ADMIN` and `CAP_BPF` or `CAP_SYS_ADMIN` in
//!    its effective set, and the attached map is one of the
//!    predecessor's own pins, compared by map id) and checks the version.
//!    A peer that fails gets `{"version":2,"refused":"<why>"}` and the
//!    connection closes; the predecessor logs why and serves on;
//! 3. phase 1: the predecessor stops accepting and answering (its
//!    listening sockets stay open: nothing queued is lost), stops writing
//!    the maps and reading the rings, and sends
//!    `{"version":2,"pid":N,"sockets":[{"kind":"proxy","addr":"127.0.0.1:15001"},..],
//!    "extra":{..},"outliers":[..]}`, describing every descriptor it
//!    passes, in order: the listening sockets of every namespace it
//!    serves (`ns`: which one; none for its own), for each pod's
//!    namespace the namespace itself and its four maps (`kind` `netns`,
//!    `ns_map`), and last the pin directory's lock (`kind` `lock`);
//!    `extra` is what the daemon says of its namespaces, `outliers` the
//!    outlier state of its endpoints (see `state::export_outliers`). The
//!    descriptors go as `SCM_RIGHTS`, at most [`MAX_FDS_PER_MESSAGE`] per
//!    `sendmsg` (the kernel's limit): the first batch with the line, each
//!    further one with a single space;
//! 4. the successor claims the directory with the handed lock (an flock
//!    belongs to the open file, so both hold it now: a crash of either
//!    leaves it with the other, never with neither), loads, fills the maps,
//!    adopts the sockets, attaches and starts serving, then sends
//!    `{"confirm":true}`;
//! 5. the predecessor answers `{"ack":true}` and only then closes its copy
//!    of the lock, lets go of the maps and drains. The ack is the commit
//!    point: both sides follow the predecessor's decision.
//!
//! If the exchange ends in phase 1 without the confirmation (end of file:
//! the successor died; an error; garbage; or [`CONFIRM_TIMEOUT`] after
//! the offer went out), the predecessor serves on at once: it accepts
//! again on the very sockets, writes its config maps again, attaches its
//! programs again over whatever the successor attached (pinned links are
//! renamed over, never a gap; DNS capture's `cgroup_skb` egress program
//! needs `CAP_NET_ADMIN` to attach, which a daemon that kept only
//! `CAP_NET_RAW` lacks: the one pinned stays), registers itself again as the serving
//! daemon for the kernel's death watch (`RD_LIFE_V3`), reads the rings
//! again and publishes its whole state, taking out the namespaces the
//! successor served and it does not. A successor that gets no ack (its
//! confirmation came too late) stops at once without touching the maps,
//! unless the predecessor's process is gone, in which case it serves on
//! alone. While phase 1 lasts (at most [`CONFIRM_TIMEOUT`]), new connects
//! and queries wait in the sockets' queues, and signals and config
//! changes wait for the exchange to end.
//!
//! Version 1 (before the two phases) had no `version` field: a request
//! without one is refused; an offer without one (a predecessor of an older
//! build) is taken in version 1's way (that predecessor has already let go
//! of everything, and releases the lock as it closes the connection).
//! The messages are parsed by [`parse_request`], [`parse_offer`] and
//! [`parse_confirmation`] (bytes in, no I/O).

use std::{
    io::{self, IoSlice, IoSliceMut, Read as _, Write},
    net::SocketAddr,
    os::{
        fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt as _, Interest};
use tracing::warn;

use crate::sys;

/// The protocol this build speaks (see the module docs).
pub(crate) const PROTOCOL_VERSION: u32 = 2;
/// How long either side waits for the other's message.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a predecessor waits, after its offer went out, for the
/// successor to say it serves; then it serves on. Long enough for a
/// successor on a loaded node to load its programs and take over every pod
/// (about a second here), short enough that connects queued meanwhile
/// still succeed (a Linux client's SYN retries last over a minute, and an
/// accepted-but-unserved connect is already established).
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// More descriptors than any daemon hands over: its own sockets, and for
/// each namespace it can serve, six sockets, the namespace and four maps,
/// and the lock.
const MAX_FDS: usize = 16 + 11 * redirector_common::MAX_NAMESPACES as usize;
/// Descriptors one message carries at most (the kernel's `SCM_MAX_FD`).
const MAX_FDS_PER_MESSAGE: usize = 253;
/// A longer offer is not one of ours.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// A longer request, confirmation or ack is not one of ours.
const MAX_SHORT_MESSAGE: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("handover socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("handover socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
    #[error("handover socket {path}: the running daemon refused: {reason}")]
    Refused { path: PathBuf, reason: String },
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
    /// The pin directory's lock, shared until the handover ends.
    Lock,
}

/// A message without a `version` is version 1's.
fn version_1() -> u32 {
    1
}

/// What a successor asks (step 1).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    #[serde(default = "version_1")]
    pub(crate) version: u32,
    pub(crate) pid: u32,
}

/// What a predecessor offers (step 3).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    #[serde(default = "version_1")]
    pub(crate) version: u32,
    pub(crate) pid: u32,
    pub(crate) sockets: Vec<Described>,
    #[serde(default)]
    pub(crate) extra: serde_json::Value,
    #[serde(default)]
    pub(crate) outliers: serde_json::Value,
}

/// A predecessor's refusal (step 2).
#[derive(Debug, Serialize, Deserialize)]
struct Refusal {
    version: u32,
    refused: String,
}

/// What a predecessor answers a request with.
#[derive(Debug)]
pub(crate) enum Reply {
    Offer(Offer),
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confirm {
    confirm: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    ack: bool,
}

/// A successor's request line (without its end of line).
pub(crate) fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("request {:?}: {e}", lossy(line)))
}

/// A predecessor's answer line (without its end of line): an offer or a
/// refusal.
pub(crate) fn parse_offer(line: &[u8]) -> Result<Reply, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("offer {:?}: {e}", lossy(line)))?;
    if value.get("refused").is_some() {
        let refusal: Refusal =
            serde_json::from_value(value).map_err(|e| format!("refusal {:?}: {e}", lossy(line)))?;
        return Ok(Reply::Refused(refusal.refused));
    }
    let offer: Offer =
        serde_json::from_value(value).map_err(|e| format!("offer {:?}: {e}", lossy(line)))?;
    if offer.sockets.len() > MAX_FDS {
        return Err(format!(
            "the offer describes {} descriptors, more than any daemon hands over",
            offer.sockets.len()
        ));
    }
    Ok(Reply::Offer(offer))
}

/// A successor's confirmation line, or a predecessor's ack (`ack`): true
/// only for exactly `{"confirm":true}` or `{"ack":true}`.
pub(crate) fn parse_confirmation(line: &[u8], ack: bool) -> Result<(), String> {
    let ok = if ack {
        serde_json::from_slice::<Ack>(line).map(|a| a.ack)
    } else {
        serde_json::from_slice::<Confirm>(line).map(|c| c.confirm)
    };
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{:?} says no", lossy(line))),
        Err(e) => Err(format!("{:?}: {e}", lossy(line))),
    }
}

/// At most 200 characters of `bytes`, for a message.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
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
    /// Its endpoints' outlier state.
    pub(crate) outliers: serde_json::Value,
    /// Where to confirm (version 2; none from a version 1 predecessor,
    /// which let go of everything already).
    confirmation: Option<Confirmation>,
}

impl Handed {
    /// A daemon's own kept descriptors, as if handed to it: how it takes
    /// its sockets up again when a successor failed.
    pub(crate) fn from_listening(listening: Listening) -> Self {
        Self {
            pid: std::process::id(),
            items: listening.items,
            extra: listening.extra,
            outliers: serde_json::Value::Null,
            confirmation: None,
        }
    }

    /// The pin directory's lock the predecessor shares, if it did.
    pub(crate) fn take_lock(&mut self) -> Option<OwnedFd> {
        let i = self.items.iter().position(|(d, _)| d.kind == Kind::Lock)?;
        Some(self.items.remove(i).1)
    }

    /// Where to tell the predecessor this daemon serves (version 2).
    pub(crate) fn take_confirmation(&mut self) -> Option<Confirmation> {
        self.confirmation.take()
    }

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
    /// The ids of the maps pinned in the directory this daemon holds: a
    /// successor's proof must be one of them.
    map_ids: Vec<u32>,
}

impl Server {
    /// Binds `path`, replacing a socket file a previous daemon left (the
    /// caller holds the pin directory's lock, so no live daemon uses it).
    pub(crate) fn bind(path: PathBuf, map_ids: Vec<u32>) -> Result<Self, HandoverError> {
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
        Ok(Self {
            listener,
            path,
            map_ids,
        })
    }

    /// The ids of the maps a successor's proof may be (see [`Self::bind`]).
    pub(crate) fn map_ids(&self) -> Vec<u32> {
        self.map_ids.clone()
    }

    /// The next authenticated successor's request. Peers that fail
    /// [`authenticate`], speak another version, or send something that
    /// does not parse are logged, told why when they asked properly, and
    /// skipped.
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
                Err(e) => warn!("refusing a handover request: {e}"),
            }
        }
    }

    async fn read_request(
        &self,
        mut stream: tokio::net::UnixStream,
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
        let (line, proof) =
            match tokio::time::timeout(EXCHANGE_TIMEOUT, read_line_async(&stream)).await {
                Err(_) => return Err(protocol("no request within 5 s".into())),
                Ok(Err(error)) => {
                    return Err(HandoverError::Io {
                        path: self.path.clone(),
                        error,
                    });
                }
                Ok(Ok(read)) => read,
            };
        let request = parse_request(&line).map_err(protocol)?;
        let peer = u32::try_from(creds.pid()).unwrap_or(0);
        let checked = if request.version == PROTOCOL_VERSION {
            authenticate(peer, &proof, &self.map_ids)
        } else {
            Err(format!(
                "it speaks handover protocol version {}, this daemon {PROTOCOL_VERSION}",
                request.version
            ))
        };
        if let Err(reason) = checked {
            let mut refusal = serde_json::to_vec(&Refusal {
                version: PROTOCOL_VERSION,
                refused: reason.clone(),
            })
            .expect("a refusal serializes");
            refusal.push(b'\n');
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, stream.write_all(&refusal)).await;
            return Err(protocol(format!(
                "refused pid {peer} (it says pid {}): {reason}",
                request.pid
            )));
        }
        let stream = stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|error| HandoverError::Io {
                path: self.path.clone(),
                error,
            })?;
        Ok(Successor {
            pid: peer,
            stream,
            path: self.path.clone(),
            exited: pidfd_open(peer),
        })
    }
}

/// One line (at most [`MAX_SHORT_MESSAGE`] bytes, without its end of line)
/// and the descriptors that came with it.
async fn read_line_async(stream: &tokio::net::UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        let (n, received) = stream
            .async_io(Interest::READABLE, || {
                recv_with_fds(stream.as_fd(), &mut buf)
            })
            .await?;
        fds.extend(received);
        if fds.len() > 4 {
            return Err(io::Error::other("more descriptors than a request carries"));
        }
        if n == 0 {
            return Err(io::Error::other(
                "the peer closed the connection mid-request",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok((line, fds));
        }
        if line.len() > MAX_SHORT_MESSAGE {
            return Err(io::Error::other("a request longer than any successor's"));
        }
    }
}

/// Whether the peer `pid` could run the datapath itself, so that it may
/// have the live sockets (all plaintext before TLS origination, all
/// captured DNS): (besides the uid, checked first) `CAP_NET_ADMIN` and
/// `CAP_BPF` (or `CAP_SYS_ADMIN`) in its effective set (read from
/// `/proc/<pid>/status`, the pid the kernel gave for the connection), and
/// a descriptor of a map it opened from this daemon's pins (`proof`),
/// whose id is one of `map_ids`. A root process with no capabilities fails
/// the second. Why it failed, for the log and the peer.
pub(crate) fn authenticate(pid: u32, proof: &[OwnedFd], map_ids: &[u32]) -> Result<(), String> {
    if pid == 0 {
        return Err("the kernel gave no pid for the peer".into());
    }
    // `status` is readable without privileges (this daemon dropped most
    // of its own after start); its namespaces would not be.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| format!("no CapEff in /proc/{pid}/status"))?;
    let mut missing = Vec::new();
    if !sys::has_cap(caps, sys::CAP_BPF) && !sys::has_cap(caps, sys::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    if !sys::has_cap(caps, sys::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        return Err(format!(
            "it lacks {} (effective capabilities {caps:#x}): it could not run the datapath",
            missing.join(" and ")
        ));
    }
    let [map] = proof else {
        return Err(format!(
            "it sent {} descriptors, not one map opened from the pin directory",
            proof.len()
        ));
    };
    let dup = map
        .try_clone()
        .map_err(|e| format!("duplicating its descriptor: {e}"))?;
    // A pinned link opens and answers the info call too, with an id
    // from another space: only a map will do.
    if !crate::datapath::is_bpf_map(map.as_fd()) {
        return Err("the descriptor it sent is not a BPF map".into());
    }
    let id = aya::maps::MapData::from_fd(dup)
        .and_then(|m| m.info())
        .map(|i| i.id())
        .map_err(|e| format!("the descriptor it sent is not a BPF map: {e}"))?;
    if !map_ids.contains(&id) {
        return Err(format!(
            "the map it sent (id {id}) is not one of the {} pinned in this daemon's pin directory",
            map_ids.len()
        ));
    }
    Ok(())
}

/// A successor that asked for the sockets, authenticated.
pub(crate) struct Successor {
    pub(crate) pid: u32,
    stream: UnixStream,
    path: PathBuf,
    /// A pidfd of its process (readable once it exited), taken while it
    /// certainly lives; none on a kernel without `pidfd_open` (< 5.3).
    exited: Option<OwnedFd>,
}

/// A pidfd for process `pid`.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: a plain system call; a non-negative result is a new
    // descriptor this process owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: just returned by the kernel, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Successor {
    /// Its pidfd (see the field), to wait for its exit once the handover
    /// failed.
    pub(crate) fn take_exit(&mut self) -> Option<OwnedFd> {
        self.exited.take()
    }

    /// Sends `listening`, the pin directory's `lock` and `outliers` (step
    /// 3). The caller must have stopped accepting and writing the maps.
    pub(crate) fn offer(
        &self,
        listening: &Listening,
        lock: Option<BorrowedFd<'_>>,
        outliers: serde_json::Value,
    ) -> Result<(), HandoverError> {
        let mut sockets: Vec<Described> = listening.items.iter().map(|(d, _)| d.clone()).collect();
        let mut fds: Vec<i32> = listening
            .items
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .collect();
        if let Some(lock) = lock {
            sockets.push(Described {
                kind: Kind::Lock,
                addr: None,
                ns: None,
                index: None,
            });
            fds.push(lock.as_raw_fd());
        }
        let offer = Offer {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            sockets,
            extra: listening.extra.clone(),
            outliers,
        };
        let mut message = serde_json::to_vec(&offer).expect("an offer serializes");
        message.push(b'\n');
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

    /// Waits (blocking) until `deadline` for the successor's confirmation
    /// and acknowledges it (step 5): `Ok` means the successor serves and
    /// this daemon must let go; an error, that it must serve on.
    pub(crate) fn confirmed(&self, deadline: Instant) -> Result<(), HandoverError> {
        let protocol = |reason: String| HandoverError::Protocol {
            path: self.path.clone(),
            reason,
        };
        let line = read_line_until(&self.stream, deadline).map_err(|e| {
            protocol(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                    "pid {} did not confirm within {CONFIRM_TIMEOUT:?}",
                    self.pid
                ),
                io::ErrorKind::UnexpectedEof => format!(
                    "pid {} closed the connection without confirming (it failed or died)",
                    self.pid
                ),
                _ => format!("reading pid {}'s confirmation: {e}", self.pid),
            })
        })?;
        parse_confirmation(&line, false)
            .map_err(|e| protocol(format!("pid {}'s confirmation: {e}", self.pid)))?;
        // A confirmation read after the deadline (this process was held
        // up) is too late: the successor may have given up.
        if Instant::now() > deadline {
            return Err(protocol(format!(
                "pid {}'s confirmation came after {CONFIRM_TIMEOUT:?}",
                self.pid
            )));
        }
        (&self.stream)
            .write_all(b"{\"ack\":true}\n")
            .map_err(|error| HandoverError::Io {
                path: self.path.clone(),
                error,
            })
    }
}

/// One line read (blocking) until `deadline`, without its end of line.
fn read_line_until(mut stream: &UnixStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > MAX_SHORT_MESSAGE {
            return Err(io::Error::other("a line longer than any of the protocol's"));
        }
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

/// One `recvmsg` into `buf`: the bytes read and the descriptors that came.
fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other(
            "more descriptors in one message than expected",
        ));
    }
    Ok((msg.bytes, fds))
}

/// The successor's side (steps 1 and 4): asks the daemon listening at
/// `path` for its sockets, with `proof` (a map opened from the pin
/// directory, see [`authenticate`]). Blocking. From a version 2
/// predecessor this returns once every descriptor came (it waits for
/// the confirmation, see [`Handed::take_confirmation`]); from a version 1
/// one, once it closed the connection (it has released the pin directory
/// then).
pub(crate) fn request(path: &Path, proof: Option<OwnedFd>) -> Result<Handed, HandoverError> {
    let io_err = |error| HandoverError::Io {
        path: path.into(),
        error,
    };
    let protocol = |reason: String| HandoverError::Protocol {
        path: path.into(),
        reason,
    };
    let stream = UnixStream::connect(path).map_err(io_err)?;
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(io_err)?;
    let mut request = serde_json::to_vec(&Request {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    })
    .expect("a request serializes");
    request.push(b'\n');
    let proof_fds: Vec<i32> = proof.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = send_fds(&stream, &request, &proof_fds).map_err(io_err)?;
    (&stream).write_all(&request[sent..]).map_err(io_err)?;
    drop(proof);

    // The line, the spaces the later batches rode on, and every batch of
    // descriptors, in order.
    let mut message = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut offer: Option<Offer> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(o) = &offer
            && o.version >= PROTOCOL_VERSION
            && fds.len() >= o.sockets.len()
        {
            break;
        }
        let (n, received) = recv_with_fds(stream.as_fd(), &mut buf).map_err(io_err)?;
        fds.extend(received);
        if n == 0 {
            break;
        }
        message.extend_from_slice(&buf[..n]);
        if message.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(protocol("the offer is larger than any daemon's".into()));
        }
        if offer.is_none()
            && let Some(end) = message.iter().position(|&b| b == b'\n')
        {
            match parse_offer(&message[..end]).map_err(protocol)? {
                Reply::Offer(o) => offer = Some(o),
                Reply::Refused(reason) => {
                    return Err(HandoverError::Refused {
                        path: path.into(),
                        reason,
                    });
                }
            }
        }
    }
    if message.is_empty() {
        return Err(protocol(
            "the running daemon closed the connection without handing over".into(),
        ));
    }
    let offer = offer.ok_or_else(|| protocol("the offer has no end of line".into()))?;
    if offer.sockets.len() != fds.len() {
        return Err(protocol(format!(
            "the offer describes {} sockets but carried {}",
            offer.sockets.len(),
            fds.len()
        )));
    }
    // The kernel's word for who answered (0 if that process is not visible
    // from this PID namespace), not the offer's.
    let predecessor = getsockopt(&stream, PeerCredentials).map_or(0, |c| c.pid());
    let confirmation = (offer.version >= PROTOCOL_VERSION).then(|| Confirmation {
        stream,
        path: path.into(),
        predecessor: u32::try_from(predecessor).unwrap_or(0),
    });
    let items = offer.sockets.into_iter().zip(fds).collect();
    Ok(Handed {
        pid: offer.pid,
        items,
        extra: offer.extra,
        outliers: offer.outliers,
        confirmation,
    })
}

/// The successor's end of a version 2 exchange, until it confirms.
/// Dropping it unconfirmed tells the predecessor to serve on.
#[derive(Debug)]
pub(crate) struct Confirmation {
    stream: UnixStream,
    path: PathBuf,
    predecessor: u32,
}

/// How a confirmed handover ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Confirmed {
    /// The predecessor acknowledged: it lets go and drains.
    Acknowledged,
    /// The predecessor's process is gone (it died during the exchange):
    /// this daemon is the only one.
    PredecessorGone,
}

impl Confirmation {
    /// Tells the predecessor this daemon serves (step 4) and waits
    /// (blocking) for its ack. An error means the predecessor serves on
    /// (the confirmation came too late): this daemon must stop at once
    /// without touching the maps.
    pub(crate) fn confirm(self) -> Result<Confirmed, HandoverError> {
        let failed = |reason: String| HandoverError::Protocol {
            path: self.path.clone(),
            reason,
        };
        // Past the predecessor's own deadline: by then it has answered or
        // decided to serve on.
        let deadline = Instant::now() + CONFIRM_TIMEOUT + EXCHANGE_TIMEOUT;
        let acked = (&self.stream)
            .write_all(b"{\"confirm\":true}\n")
            .map_err(|e| e.to_string())
            .and_then(|()| read_line_until(&self.stream, deadline).map_err(|e| e.to_string()))
            .and_then(|line| parse_confirmation(&line, true));
        match acked {
            Ok(()) => Ok(Confirmed::Acknowledged),
            // Unknown (0): taken for alive, the safe side (this daemon
            // stops, and the node fails open at worst).
            Err(_) if self.predecessor != 0 && !process_alive(self.predecessor) => {
                Ok(Confirmed::PredecessorGone)
            }
            Err(e) => Err(failed(format!(
                "pid {} did not acknowledge this daemon's confirmation ({e}): it serves on",
                self.predecessor
            ))),
        }
    }
}

/// Whether process `pid` still exists (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command's closing parenthesis.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim().chars().next());
        !matches!(state, Some('Z' | 'X'))
    })
}

/// Checks that `fd` is a socket of the type `kind` needs, bound where the
/// offer said, before it is used as one.
pub(crate) fn check(kind: Kind, fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(fd);
    let want = match kind {
        Kind::Proxy | Kind::DnsTcp | Kind::Admin | Kind::Cni => socket2::Type::STREAM,
        Kind::DnsUdp => socket2::Type::DGRAM,
        Kind::Netns | Kind::NsMap | Kind::Lock => {
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
