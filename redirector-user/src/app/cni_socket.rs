//! The daemon's side of the CNI plugin's socket (`--cni-socket`, see
//! `cni/protocol.rs`): one request per connection, `add` serves the pod's
//! namespace (passed as a descriptor) and answers once its listeners are
//! up, `del` releases it. Peers of another uid are refused; each exchange
//! is bounded in time and size. The socket is handed to a successor with
//! the listeners, so a pod created during an upgrade is served too.

use std::{
    io::{self, IoSliceMut},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixAddr, getsockopt, recvmsg, sockopt::PeerCredentials,
};
use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::{UnixListener, UnixStream},
};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::pods::{PodMeta, Pods, Source};
use crate::{
    cni::protocol::{EXCHANGE_TIMEOUT, MAX_MESSAGE, Op, Outcome, Request, Response},
    handover::{Handed, Kind, Listening},
    state::Node,
};

/// The socket, listening: handed over by a predecessor, else bound at
/// `path` (`--cni-socket`) or the default for the node's pin directory;
/// kept for a successor. `None` when the daemon serves no pods (no netns
/// helper): the plugin then finds no socket and leaves its pods alone.
pub(super) fn open(
    path: Option<&Path>,
    pods: &Pods,
    handed: &mut Option<Handed>,
    kept: &mut Listening,
) -> anyhow::Result<Option<CniListener>> {
    if pods.ctx().helper.is_none() {
        return Ok(None);
    }
    let path = path.map_or_else(|| default_path(&pods.ctx().node), Path::to_owned);
    let listener = match handed.as_mut().and_then(Handed::take_cni) {
        Some(fd) => adopt(fd)?,
        None => bind(&path)
            .with_context(|| format!("binding the CNI plugin's socket {}", path.display()))?,
    };
    kept.add(Kind::Cni, listener.as_fd())
        .context("keeping the CNI socket for a handover")?;
    Ok(Some(CniListener { listener, path }))
}

/// Where the daemon listens for the CNI plugin unless told: the plugin's
/// default for the default pin directory, else beside the pin directory's
/// lock, so daemons with pin directories of their own never meet.
fn default_path(node: &Node) -> PathBuf {
    if node.pin_dir == Path::new(crate::state::DEFAULT_PIN_DIR) {
        PathBuf::from(crate::cni::protocol::DEFAULT_SOCKET)
    } else {
        crate::datapath::handover_path(&node.pin_dir).with_extension("cni")
    }
}

/// The plugin's socket, listening.
pub(super) struct CniListener {
    listener: UnixListener,
    path: PathBuf,
}

impl CniListener {
    /// Serves the plugin from now on, until the task is dropped.
    pub(super) fn serve(self, pods: &Arc<Pods>) -> AbortOnDropHandle<()> {
        info!(socket = %self.path.display(), "CNI plugin socket: pods are served as they are created");
        AbortOnDropHandle::new(tokio::spawn(serve(self.listener, pods.clone())))
    }
}

/// Binds the socket at `path` (mode 0600), replacing one a previous daemon
/// left (the caller holds the pin directory, so none runs).
fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A listener a predecessor handed over.
fn adopt(fd: OwnedFd) -> io::Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Exchanges in progress at most; more connections wait in the backlog.
const MAX_EXCHANGES: usize = 64;

/// Serves the plugin until dropped.
async fn serve(listener: UnixListener, pods: Arc<Pods>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_EXCHANGES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "CNI socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pods = pods.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &pods)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("CNI socket: {e}"),
                Err(_) => warn!("CNI socket: an exchange took longer than {EXCHANGE_TIMEOUT:?}"),
            }
        });
    }
}

async fn exchange(mut stream: UnixStream, pods: &Pods) -> io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let creds = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
    if creds.uid() != me {
        return Err(io::Error::other(format!(
            "refused a peer (pid {}) of uid {}",
            creds.pid(),
            creds.uid()
        )));
    }
    let (line, fd) = read_request(&stream).await?;
    let request: Request =
        serde_json::from_slice(&line).map_err(|e| io::Error::other(format!("request: {e}")))?;
    debug!(?request, "CNI request");
    let response = match request.op {
        Op::Add => match fd {
            None => Response {
                outcome: Outcome::NotServed,
                detail: "no network namespace came with the request".into(),
            },
            Some(fd) => {
                let meta = PodMeta {
                    container_id: Some(request.container_id.clone()),
                    namespace: request.pod_namespace.clone(),
                    name: request.pod_name.clone(),
                };
                let (outcome, detail) = pods.serve(fd, Source::Cni, meta, (0, 0)).await;
                info!(
                    container = %request.container_id, pod_namespace = ?request.pod_namespace,
                    pod = ?request.pod_name, ?outcome, "CNI ADD: {detail}"
                );
                Response { outcome, detail }
            }
        },
        Op::Del => {
            let released = pods.release_container(&request.container_id).await;
            Response {
                outcome: Outcome::Released,
                detail: if released {
                    "released".into()
                } else {
                    "nothing was held for it".into()
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await
}

/// One JSON line, and the descriptor that came with its first bytes.
async fn read_request(stream: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd = None;
    loop {
        stream.readable().await?;
        let mut buf = [0u8; 4096];
        let got = stream.try_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these for us.
                    fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                }
            }
            Ok((msg.bytes, fds))
        });
        let (n, fds) = match got {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Only one descriptor is ever expected; extra ones close here.
        if fd.is_none() {
            fd = fds.into_iter().next();
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok((line, fd));
        }
        if n == 0 {
            return Err(io::Error::other("the plugin closed before a whole request"));
        }
        if line.len() > MAX_MESSAGE {
            return Err(io::Error::other("a request longer than any plugin's"));
        }
    }
}
