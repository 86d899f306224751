//! The privileged helper (see `netns.rs`): its process, its protocol, and
//! the daemon's side of it.
//!
//! One exchange per request, over a `SOCK_SEQPACKET` pair (message
//! boundaries kept, so a request and its descriptors arrive together):
//! the daemon sends one JSON [`Request`], with a namespace descriptor when
//! the request works in one; the helper answers one JSON [`Response`] with
//! the descriptors it made. Requests are serialised by a lock on the
//! daemon's side, so the helper, single-threaded, simply loops.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::datapath::MapSpec;

/// How long the daemon waits for an answer (the helper does a few
/// syscalls per request; this only bounds a helper gone wrong).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;
/// Descriptors one message carries at most (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HelperError {
    #[error("starting the netns helper: {0}")]
    Spawn(io::Error),
    #[error("talking to the netns helper: {0}")]
    Io(io::Error),
    #[error("the netns helper: {0}")]
    Refused(String),
}

/// What a socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SockKind {
    Tcp,
    Udp,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Request {
    /// A descriptor of the network namespace of process `pid`.
    OpenPid { pid: u32 },
    /// Sockets made in the namespace passed along: (kind, IPv6?).
    Sockets { kinds: Vec<(SockKind, bool)> },
    /// The inodes of the network namespaces of `pids` (0: gone, or not
    /// ours to read).
    Inodes { pids: Vec<u32> },
    /// New maps.
    Maps { specs: Vec<MapSpec> },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Response {
    error: Option<String>,
    inodes: Vec<u64>,
}

/// The daemon's side: the helper process and the pair to it.
pub(crate) struct Helper {
    /// Held by one exchange at a time.
    pair: Arc<Mutex<OwnedFd>>,
    child: Mutex<Child>,
}

impl Helper {
    /// The helper, if this process may start one that enters other
    /// namespaces; without, only the node's own namespace is served (the
    /// log says why).
    pub(crate) fn start_if_permitted() -> Option<Arc<Self>> {
        let caps = crate::sys::effective_caps().unwrap_or(0);
        if !crate::sys::has_cap(caps, crate::sys::CAP_SYS_ADMIN) {
            info!(
                "pods in network namespaces of their own are not served: entering them takes \
                 CAP_SYS_ADMIN, which this process lacks (apps in the node's namespace are served)"
            );
            return None;
        }
        match Self::spawn() {
            Ok(helper) => {
                info!(pid = helper.pid(), "netns helper started");
                Some(Arc::new(helper))
            }
            Err(e) => {
                warn!("pods in network namespaces of their own are not served: {e}");
                None
            }
        }
    }

    /// Starts the helper, this binary as `redirector netns-helper`, while
    /// this process still has the capabilities the helper keeps. It gets
    /// its end of the pair as fd 3 and dies with this process.
    pub(crate) fn spawn() -> Result<Self, HelperError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| HelperError::Spawn(e.into()))?;
        let child_fd: RawFd = theirs.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(["netns-helper", "--fd", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(child_fd, 3) < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(HelperError::Spawn)?;
        drop(theirs);
        set_timeouts(ours.as_fd()).map_err(HelperError::Spawn)?;
        Ok(Self {
            pair: Arc::new(Mutex::new(ours)),
            child: Mutex::new(child),
        })
    }

    /// The helper's pid, for the log.
    pub(crate) fn pid(&self) -> u32 {
        self.child.lock().expect("helper lock").id()
    }

    /// Whether the helper still runs.
    pub(crate) fn alive(&self) -> bool {
        matches!(self.child.lock().expect("helper lock").try_wait(), Ok(None))
    }

    /// Returns once the helper has exited (looked at every second).
    pub(crate) async fn gone(&self) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        while self.alive() {
            ticker.tick().await;
        }
    }

    /// A descriptor of the network namespace of process `pid`.
    pub(crate) async fn open_pid(&self, pid: u32) -> Result<OwnedFd, HelperError> {
        let (_, mut fds) = self.call(Request::OpenPid { pid }, None).await?;
        fds.pop()
            .ok_or_else(|| HelperError::Refused("no descriptor in the answer".into()))
    }

    /// Sockets of `kinds` ((kind, IPv6?)) made in the namespace `ns`.
    pub(crate) async fn sockets(
        &self,
        ns: BorrowedFd<'_>,
        kinds: &[(SockKind, bool)],
    ) -> Result<Vec<OwnedFd>, HelperError> {
        let ns = ns.try_clone_to_owned().map_err(HelperError::Io)?;
        let (_, fds) = self
            .call(
                Request::Sockets {
                    kinds: kinds.to_vec(),
                },
                Some(ns),
            )
            .await?;
        if fds.len() != kinds.len() {
            return Err(HelperError::Refused(format!(
                "{} sockets asked, {} made",
                kinds.len(),
                fds.len()
            )));
        }
        Ok(fds)
    }

    /// The inodes of the network namespaces of `pids`, in order (0 for a
    /// process gone meanwhile).
    pub(crate) async fn inodes(&self, pids: Vec<u32>) -> Result<Vec<u64>, HelperError> {
        let n = pids.len();
        let (response, _) = self.call(Request::Inodes { pids }, None).await?;
        if response.inodes.len() != n {
            return Err(HelperError::Refused("inode count mismatch".into()));
        }
        Ok(response.inodes)
    }

    /// New maps, one per spec, in order.
    pub(crate) async fn maps(&self, specs: Vec<MapSpec>) -> Result<Vec<OwnedFd>, HelperError> {
        let n = specs.len();
        let (_, fds) = self.call(Request::Maps { specs }, None).await?;
        if fds.len() != n {
            return Err(HelperError::Refused(format!(
                "{n} maps asked, {} made",
                fds.len()
            )));
        }
        Ok(fds)
    }

    async fn call(
        &self,
        request: Request,
        fd: Option<OwnedFd>,
    ) -> Result<(Response, Vec<OwnedFd>), HelperError> {
        let message = serde_json::to_vec(&request).map_err(|e| HelperError::Io(e.into()))?;
        // A blocking exchange, off the runtime's threads, one at a time.
        let pair = self.pair.clone();
        let exchange = tokio::task::spawn_blocking(move || {
            let pair = pair.lock().expect("helper pair lock");
            let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
            send(pair.as_fd(), &message, &fds)?;
            drop(fd);
            recv(pair.as_fd())
        });
        let (bytes, fds) = exchange
            .await
            .map_err(|e| HelperError::Io(io::Error::other(e)))?
            .map_err(HelperError::Io)?;
        let response: Response =
            serde_json::from_slice(&bytes).map_err(|e| HelperError::Io(e.into()))?;
        if let Some(error) = response.error {
            return Err(HelperError::Refused(error));
        }
        Ok((response, fds))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing the pair ends the helper's loop; reap it.
        let mut child = self.child.lock().expect("helper lock");
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn set_timeouts(fd: BorrowedFd<'_>) -> io::Result<()> {
    let s = socket2::SockRef::from(&fd);
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))
}

fn send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

fn recv(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("message truncated"));
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed",
        ));
    }
    buf.truncate(n);
    Ok((buf, fds))
}

/// `redirector netns-helper`: keeps `CAP_SYS_ADMIN` (`setns`, map
/// creation) and `CAP_SYS_PTRACE` (other users' `/proc/<pid>/ns/net`),
/// drops everything else, and serves the daemon on `fd` until it closes.
pub(crate) fn serve(fd: RawFd) -> anyhow::Result<()> {
    // SAFETY: the daemon passed its end of the pair as this descriptor.
    let pair = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::privs::keep_only(&[
        caps::Capability::CAP_SYS_ADMIN,
        caps::Capability::CAP_SYS_PTRACE,
    ])?;
    loop {
        let (bytes, mut fds) = match recv(pair.as_fd()) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (response, made) = match serde_json::from_slice::<Request>(&bytes) {
            Ok(request) => answer(request, fds.pop()),
            Err(e) => (error(format!("request: {e}")), Vec::new()),
        };
        let raw: Vec<RawFd> = made.iter().map(AsRawFd::as_raw_fd).collect();
        let bytes = serde_json::to_vec(&response)?;
        send(pair.as_fd(), &bytes, &raw)?;
    }
}

fn error(e: impl std::fmt::Display) -> Response {
    Response {
        error: Some(e.to_string()),
        ..Response::default()
    }
}

fn answer(request: Request, ns: Option<OwnedFd>) -> (Response, Vec<OwnedFd>) {
    let made = match request {
        Request::OpenPid { pid } => open_pid(pid).map(|fd| vec![fd]),
        Request::Sockets { kinds } => match ns {
            None => Err(io::Error::other("no namespace passed")),
            Some(ns) => sockets_in(ns.as_fd(), &kinds),
        },
        Request::Inodes { pids } => {
            let inodes = pids
                .into_iter()
                .map(|pid| pid_inode(pid).unwrap_or(0))
                .collect();
            return (
                Response {
                    inodes,
                    ..Response::default()
                },
                Vec::new(),
            );
        }
        Request::Maps { specs } => specs.iter().map(create_map).collect(),
    };
    match made {
        Ok(fds) if fds.len() <= MAX_FDS => (Response::default(), fds),
        Ok(_) => (error("too many descriptors asked"), Vec::new()),
        Err(e) => (error(e), Vec::new()),
    }
}

fn open_pid(pid: u32) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    Ok(file.into())
}

fn pid_inode(pid: u32) -> io::Result<u64> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok(std::os::unix::fs::MetadataExt::ino(&meta))
}

fn sockets_in(ns: BorrowedFd<'_>, kinds: &[(SockKind, bool)]) -> io::Result<Vec<OwnedFd>> {
    if kinds.len() > MAX_FDS {
        return Err(io::Error::other("too many sockets asked"));
    }
    // Only this (single-threaded) process moves: it stays in the
    // namespace until the next request moves it again.
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    kinds
        .iter()
        .map(|&(kind, v6)| {
            let domain = if v6 {
                socket2::Domain::IPV6
            } else {
                socket2::Domain::IPV4
            };
            let (ty, proto) = match kind {
                SockKind::Tcp => (socket2::Type::STREAM, socket2::Protocol::TCP),
                SockKind::Udp => (socket2::Type::DGRAM, socket2::Protocol::UDP),
            };
            let s = socket2::Socket::new(domain, ty.cloexec(), Some(proto))?;
            Ok(OwnedFd::from(s))
        })
        .collect()
}

fn create_map(spec: &MapSpec) -> io::Result<OwnedFd> {
    spec.create().map_err(io::Error::other)
}
