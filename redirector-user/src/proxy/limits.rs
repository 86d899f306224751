//! Bounds on what an app (any process in the cgroup) can hold in the
//! daemon: how many connections, for how long without progress, and how
//! the accept loops behave when the process runs out of descriptors.
//!
//! Every timeout is "no progress for this long", never a cap on a busy
//! connection's life, as Envoy's idle timeouts are:
//! - `requestHeadersTimeout` (hyper's header-read timer, which needs a
//!   timer to run at all): from accept, or from the end of the previous
//!   exchange on a keep-alive connection, until a whole request head is in.
//!   So it is also how long an idle keep-alive app connection stays open.
//! - `streamIdleTimeout` (Envoy's HCM `stream_idle_timeout`, 5 min): no
//!   byte read from or written to the app's HTTP connection for this long
//!   closes it: a body sent byte by byte, an app that stops reading the
//!   answer (our writes stall), an endpoint that never answers.
//! - `tcpIdleTimeout` (Envoy's TCP proxy `idle_timeout`, 1 h): no byte
//!   either way on a TCP (or TLS passthrough) connection, or on an
//!   upgraded (websocket) one, closes it.
//!
//! Counts: `maxConnections` app connections in the whole daemon (Envoy's
//! overload manager `global_downstream_max_connections`) and
//! `maxConnectionsPerNamespace` in one network namespace's listeners
//! (Envoy's listener `connection_limit`); over either, a new connection is
//! accepted and reset at once, as Envoy does.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::warn;

use crate::config::LimitSettings;

/// Default `requestHeadersTimeout`. Envoy's `request_headers_timeout` is
/// off by default, which is what lets a slow client hold a connection
/// forever; nginx's `client_header_timeout` and Node.js's
/// `headersTimeout` are 60 s.
pub(crate) const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `streamIdleTimeout`: Envoy's HCM `stream_idle_timeout`.
pub(crate) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default `tcpIdleTimeout`: Envoy's TCP proxy `idle_timeout`.
pub(crate) const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Default `maxConnections`: app connections the daemon serves at once.
/// Envoy's edge best practice (and Envoy Gateway's bootstrap) sets 50,000
/// for a proxy with gigabytes; at up to ~64 KiB per connection (a request
/// head being read is at most 60 KiB) this keeps the worst case near the
/// DaemonSet's 256 MiB memory limit minus the daemon's own.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default `maxConnectionsPerNamespace`: so one pod cannot take them all.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE: u32 = 1024;

/// The admin server's connections at once (kubelet probes, Prometheus).
/// It listens on the node's loopback only, so only host-network processes
/// reach it; high enough that a flood of slow ones (each closed after
/// [`ADMIN_HEADERS_TIMEOUT`]) rarely crowds out a probe, low enough to
/// bound their memory (~10 KiB each).
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 1024;
/// The admin server's header-read (and keep-alive idle) timeout.
pub(crate) const ADMIN_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// An admin connection with no byte either way for this long is closed (a
/// scraper that stops reading `/metrics`).
pub(crate) const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first pause of an accept loop after an error (out of descriptors,
/// kernel memory), doubled on each error in a row up to
/// [`ACCEPT_BACKOFF_MAX`], as Go's `net/http` does (5 ms to 1 s).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The limits in force, resolved from the node settings (defaults filled).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Limits {
    #[serde(serialize_with = "secs")]
    pub(crate) request_headers_timeout: Duration,
    #[serde(serialize_with = "secs")]
    pub(crate) stream_idle_timeout: Duration,
    #[serde(serialize_with = "secs")]
    pub(crate) tcp_idle_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_namespace: u32,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs_f64()))
}

impl Default for Limits {
    fn default() -> Self {
        Self::resolve(&LimitSettings::default())
    }
}

impl Limits {
    pub(crate) fn resolve(s: &LimitSettings) -> Self {
        Self {
            request_headers_timeout: s
                .request_headers_timeout
                .unwrap_or(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            stream_idle_timeout: s.stream_idle_timeout.unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT),
            tcp_idle_timeout: s.tcp_idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT),
            max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_namespace: s
                .max_connections_per_namespace
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_NAMESPACE),
        }
    }
}

/// The daemon-wide count of app connections, sized by the first caller
/// (the limits are read at start; a reload does not change them).
fn global(max: u32) -> Arc<Semaphore> {
    static GLOBAL: OnceLock<Arc<Semaphore>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| Arc::new(Semaphore::new(max as usize)))
        .clone()
}

/// The connection counts one listener set's accept loops take from.
#[derive(Clone)]
pub(crate) struct Caps {
    pub(crate) limits: Arc<Limits>,
    global: Arc<Semaphore>,
    namespace: Arc<Semaphore>,
}

/// One app connection's place under both counts, given back on drop.
pub(crate) struct Admitted {
    _global: OwnedSemaphorePermit,
    _namespace: OwnedSemaphorePermit,
}

impl Caps {
    /// The counts of a new namespace's listener set, under `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            limits: Arc::new(limits.clone()),
            global: global(limits.max_connections),
            namespace: Arc::new(Semaphore::new(
                limits.max_connections_per_namespace as usize,
            )),
        }
    }

    /// A place for one more connection, or which limit is full.
    pub(crate) fn admit(&self) -> Result<Admitted, &'static str> {
        let namespace = self
            .namespace
            .clone()
            .try_acquire_owned()
            .map_err(|_| "maxConnectionsPerNamespace")?;
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| "maxConnections")?;
        Ok(Admitted {
            _global: global,
            _namespace: namespace,
        })
    }
}

/// Accepts from `listener`, pausing after errors: `EMFILE`/`ENFILE` (out
/// of descriptors) and the like leave the connection in the backlog and
/// the listener readable, so retrying at once would spin. The pause grows
/// from 10 ms to 1 s while the errors go on and is forgotten after an
/// accept; one warning per run of errors, then one per 1 s pause.
pub(crate) async fn accept(
    listener: &TcpListener,
    what: &str,
    backoff: &mut Option<Duration>,
) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => {
                *backoff = None;
                return x;
            }
            Err(e) => {
                let pause = backoff.map_or(ACCEPT_BACKOFF_MIN, |p| (p * 2).min(ACCEPT_BACKOFF_MAX));
                if backoff.is_none() || pause == ACCEPT_BACKOFF_MAX {
                    warn!(
                        error = %e, listener = what, pause_ms = pause.as_millis() as u64,
                        "accept failed; pausing (raise the descriptor limit if this is EMFILE)"
                    );
                }
                *backoff = Some(pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// When a connection last moved a byte either way, shared between its IO
/// and the watchdog that closes it after a stretch without.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last progress.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Completes once nothing has moved for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// `io`, touching this on every read or write that moves bytes.
    pub(crate) fn wrap<T>(&self, io: T) -> Tracked<T> {
        Tracked {
            io,
            activity: self.clone(),
        }
    }
}

/// An IO that records its progress in an [`Activity`].
pub(crate) struct Tracked<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Runs `work` until it ends or `activity` has been idle for `timeout`;
/// its output, or `None` if it was cut off.
pub(crate) async fn unless_idle<F: Future>(
    work: F,
    activity: &Activity,
    timeout: Duration,
) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        () = activity.idle_for(timeout) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_byte_either_way_for_the_timeout() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut a = activity.wrap(a);
        let timeout = Duration::from_secs(10);
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move {
                let started = Instant::now();
                activity.idle_for(timeout).await;
                started.elapsed()
            }
        });
        // Progress every 6 s keeps it alive past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            a.read_exact(&mut one).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        a.write_all(b"y").await.unwrap();
        let took = watchdog.await.unwrap();
        // The last byte moved at 24 s: idle from then on.
        assert_eq!(took, Duration::from_secs(34));
    }

    fn node(limits: &str) -> Result<Limits, String> {
        let text = format!(
            "apiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\nspec:\n  limits:\n{limits}"
        );
        crate::config::load_str("n.yaml", &text, &crate::config::NodeSettings::default())
            .map(|c| Limits::resolve(&c.node.limits))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn node_settings_set_limits_and_the_rest_default() {
        let l =
            node("    requestHeadersTimeout: 3s\n    maxConnectionsPerNamespace: 10\n").unwrap();
        assert_eq!(
            l,
            Limits {
                request_headers_timeout: Duration::from_secs(3),
                max_connections_per_namespace: 10,
                ..Limits::default()
            }
        );
        assert_eq!(l.stream_idle_timeout, Duration::from_secs(300));
        assert_eq!(l.tcp_idle_timeout, Duration::from_secs(3600));
        assert_eq!(l.max_connections, 4096);
    }

    #[test]
    fn bad_limits_are_rejected_with_their_field() {
        for (yaml, field, why) in [
            (
                "    requestHeadersTimeout: 0s\n",
                "spec.limits.requestHeadersTimeout",
                "greater than zero",
            ),
            (
                "    streamIdleTimeout: 25h\n",
                "spec.limits.streamIdleTimeout",
                "longer than a day",
            ),
            (
                "    tcpIdleTimeout: soon\n",
                "spec.limits.tcpIdleTimeout",
                "",
            ),
            (
                "    maxConnections: 0\n",
                "spec.limits.maxConnections",
                "out of range",
            ),
            (
                "    maxConnectionsPerNamespace: 4294967296\n",
                "spec.limits.maxConnectionsPerNamespace",
                "out of range",
            ),
            ("    maxConnection: 5\n", "maxConnection", "unknown field"),
        ] {
            let err = node(yaml).unwrap_err();
            assert!(err.contains(field) && err.contains(why), "{yaml}: {err}");
        }
    }

    #[test]
    fn caps_refuse_over_either_count() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_namespace: 2,
            ..Limits::default()
        };
        let ns = Caps {
            limits: Arc::new(limits.clone()),
            global: Arc::new(Semaphore::new(3)),
            namespace: Arc::new(Semaphore::new(2)),
        };
        let other = Caps {
            namespace: Arc::new(Semaphore::new(2)),
            ..ns.clone()
        };
        let a = ns.admit().unwrap();
        let _b = ns.admit().unwrap();
        assert_eq!(ns.admit().err(), Some("maxConnectionsPerNamespace"));
        let _c = other.admit().unwrap();
        assert_eq!(other.admit().err(), Some("maxConnections"));
        drop(a);
        assert!(other.admit().is_ok());
    }
}
