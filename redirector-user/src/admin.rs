//! The admin server, on 127.0.0.1 only (`--admin-port`, default 15000):
//!
//! - `GET /ready`: 200 once the programs are attached and the listeners
//!   are up; 503 while starting, and again from SIGTERM on, while the
//!   daemon drains (the DaemonSet's readiness probe).
//! - `GET /metrics`: the Prometheus text format (see `metrics.rs`).
//! - `GET /config_dump`: the effective config as JSON, with the node's
//!   settings and every endpoint's live health.
//!
//! It is plain HTTP/1.1 on hyper, one task per connection, and never
//! touches the proxy's state except through the snapshots it asks for. At
//! most [`ADMIN_MAX_CONNECTIONS`] connections at once (more are reset); a
//! request head must be in within [`ADMIN_HEADERS_TIMEOUT`] (of the
//! accept, or of the previous answer), and a connection that moves no
//! byte for [`ADMIN_IDLE_TIMEOUT`] is closed.
//!
//! Readiness is also written to a file of the daemon's own (`--ready-file`,
//! read by `redirector ready`): with host networking every pod's probe of
//! 127.0.0.1:15000 reaches whichever daemon holds the admin socket, and
//! during an upgrade that socket is handed from the old daemon to the new
//! one (`handover.rs`). A probe of the port would call the new pod ready
//! before it took over, and Kubernetes would stop the old one too early;
//! the file says what this pod's daemon itself is doing.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU8, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::{
    metrics,
    proxy::limits::{
        self, ADMIN_HEADERS_TIMEOUT, ADMIN_IDLE_TIMEOUT, ADMIN_MAX_CONNECTIONS, Activity,
        unless_idle,
    },
};

mod dump;

pub(crate) use dump::{ConfigDump, Dump};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error(
        "admin address {addr} is already in use (another redirector, or choose another port \
         with --admin-port; 0 turns the admin server off)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("admin server on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// The admin server's state, shared with the daemon.
pub(crate) struct Admin {
    state: AtomicU8,
    registry: Registry,
    dump: RwLock<Option<Arc<dyn ConfigDump>>>,
    ready_file: Option<PathBuf>,
}

impl Admin {
    pub(crate) fn new(registry: Registry) -> Self {
        Self {
            state: AtomicU8::new(STARTING),
            registry,
            dump: RwLock::new(None),
            ready_file: None,
        }
    }

    /// Also keeps readiness in `path`: this process's pid while ready, no
    /// file otherwise (one a previous process left is removed now).
    pub(crate) fn with_ready_file(mut self, path: PathBuf) -> Self {
        remove_ready_file(&path);
        self.ready_file = Some(path);
        self
    }

    /// Programs attached, listeners up: `/ready` answers 200.
    pub(crate) fn set_ready(&self) {
        self.state.store(READY, Ordering::Release);
        if let Some(path) = &self.ready_file {
            // Written aside and renamed: a probe never reads half a file.
            let staged = path.with_extension("new");
            let written = std::fs::write(&staged, format!("{}\n", std::process::id()))
                .and_then(|()| std::fs::rename(&staged, path));
            if let Err(e) = written {
                warn!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }
    }

    /// Stopping, or handed over: `/ready` answers 503 from now on.
    pub(crate) fn set_draining(&self) {
        self.state.store(DRAINING, Ordering::Release);
        if let Some(path) = &self.ready_file {
            remove_ready_file(path);
        }
    }

    pub(crate) fn set_config_dump(&self, dump: Arc<dyn ConfigDump>) {
        *self.dump.write().expect("dump lock") = Some(dump);
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match path {
            "/ready" => match self.state.load(Ordering::Acquire) {
                READY => text(StatusCode::OK, "ready\n"),
                DRAINING => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                _ => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            },
            "/metrics" => Response::builder()
                .header(header::CONTENT_TYPE, metrics::CONTENT_TYPE)
                .body(Full::new(Bytes::from(metrics::encode(&self.registry))))
                .expect("a valid response"),
            "/config_dump" => {
                let dump = self.dump.read().expect("dump lock").clone();
                let Some(dump) = dump else {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
                };
                let mut body = serde_json::to_vec_pretty(&dump.config_dump())
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
                body.push(b'\n');
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /ready, /metrics or /config_dump\n",
            ),
        }
    }
}

fn remove_ready_file(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!(path = %path.display(), error = %e, "cannot remove the ready file");
        }
        _ => {}
    }
}

/// `redirector ready`: whether the daemon that keeps `path` is ready, as
/// the pid it wrote, or why not.
pub(crate) fn check_ready_file(path: &Path) -> Result<u32, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "not ready: no {} (the daemon is starting, draining or handed over)",
                path.display()
            ));
        }
        Err(e) => return Err(format!("not ready: reading {}: {e}", path.display())),
    };
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("not ready: {} holds {text:?}, not a pid", path.display()))?;
    if !Path::new("/proc").join(pid.to_string()).exists() {
        return Err(format!(
            "not ready: pid {pid} in {} is not running",
            path.display()
        ));
    }
    Ok(pid)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response")
}

/// Binds the admin listener (the caller passes a loopback address).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            AdminError::PortInUse { addr }
        } else {
            AdminError::Listen { addr, error }
        }
    })
}

/// Serves until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let open = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut backoff = None;
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = limits::accept(&listener, "admin", &mut backoff).await;
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(%peer, refused, max = ADMIN_MAX_CONNECTIONS, "too many admin connections; resetting new ones");
            }
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = admin.respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let activity = Activity::new();
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADERS_TIMEOUT)
                .serve_connection(TokioIo::new(activity.wrap(stream)), service);
            match unless_idle(conn, &activity, ADMIN_IDLE_TIMEOUT).await {
                Some(Err(e)) => debug!(error = %e, "admin connection ended with an error"),
                None => debug!("admin connection idle; closing"),
                Some(Ok(())) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    struct Fixed;

    impl ConfigDump for Fixed {
        fn config_dump(&self) -> serde_json::Value {
            serde_json::json!({"config": {"services": []}})
        }
    }

    async fn get(admin: &Admin, path: &str) -> (StatusCode, String) {
        let resp = admin.respond(&Method::GET, path);
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_follows_start_and_drain() {
        let admin = Admin::new(Registry::default());
        assert_eq!(
            get(&admin, "/ready").await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        );
        admin.set_ready();
        assert_eq!(
            get(&admin, "/ready").await,
            (StatusCode::OK, "ready\n".into())
        );
        admin.set_draining();
        assert_eq!(
            get(&admin, "/ready").await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        );
    }

    #[test]
    fn the_ready_file_holds_our_pid_only_while_ready() {
        let dir = std::env::temp_dir().join(format!("rd-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready");
        // A previous process's file is gone as soon as this one starts.
        std::fs::write(&path, "1\n").unwrap();
        let admin = Admin::new(Registry::default()).with_ready_file(path.clone());
        let err = check_ready_file(&path).unwrap_err();
        assert!(err.contains("starting, draining or handed over"), "{err}");
        admin.set_ready();
        assert_eq!(check_ready_file(&path), Ok(std::process::id()));
        admin.set_draining();
        assert!(check_ready_file(&path).is_err());
        // A pid that is not running is not ready.
        std::fs::write(&path, "4194304\n").unwrap();
        let err = check_ready_file(&path).unwrap_err();
        assert!(err.contains("is not running"), "{err}");
        std::fs::write(&path, "ready\n").unwrap();
        let err = check_ready_file(&path).unwrap_err();
        assert!(err.contains("not a pid"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn metrics_dump_and_unknown_paths() {
        let mut registry = Registry::default();
        let m = crate::metrics::Metrics::new(&mut registry);
        m.config_reloads.inc();
        let admin = Admin::new(registry);
        let (status, body) = get(&admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("redirector_config_reloads_total 1"), "{body}");
        // No dump before the daemon serves.
        assert_eq!(
            get(&admin, "/config_dump").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        admin.set_config_dump(Arc::new(Fixed));
        let (status, body) = get(&admin, "/config_dump").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["config"]["services"], serde_json::json!([]));
        assert_eq!(get(&admin, "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            admin.respond(&Method::POST, "/ready").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
