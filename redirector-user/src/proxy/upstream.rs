//! Connecting to endpoints, and moving on to the next one when a connect
//! fails, before the app has seen a single byte.
//!
//! Istio's blog shows one failed request when the primary goes away ("the
//! first call will fail, which triggers the failover"). Here a refused,
//! timed-out or TLS-failed connect is recorded for outlier detection and the
//! next host in attempt order is tried at once, so the app sees no error.
//! Every upstream socket carries [`PROXY_MARK`] so connect4 never redirects
//! the proxy's own connects back to itself, and gets the service's
//! `connectionPool.tcp` settings: `connectTimeout` bounds the TCP connect
//! and TLS handshake together (Envoy counts a TLS connection as connected
//! after its handshake), `tcpKeepalive` turns on keepalive probes.

use std::{fmt, io, sync::Arc, time::Duration};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tracing::debug;

use super::route::Route;
use crate::{
    cluster::{Host, HostKey},
    config::TcpKeepalive,
    datapath::PROXY_MARK,
    metrics::Retry,
    netns::{Namespace, SockKind},
    outlier::Outcome,
};

/// Distinct hosts one new connection tries before giving up.
const MAX_ATTEMPTS: usize = 5;

pub(crate) type Stream = Either<TcpStream, TlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect: {0}")]
    Io(io::Error),
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {}", crate::tls::explain(.0).unwrap_or_else(|| .0.to_string()))]
    Tls(io::Error),
}

impl ConnectError {
    /// Local-origin failures: unless split, Envoy maps a connect failure to
    /// 503 and a timeout to 504, both 5xx and gateway errors.
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            ConnectError::Timeout(_) => Outcome::Timeout,
            ConnectError::Io(_) | ConnectError::Tls(_) => Outcome::ConnectFailed,
        }
    }
}

/// No host could be reached.
#[derive(Debug)]
pub(crate) struct NoUpstream {
    pub(crate) service: String,
    pub(crate) failures: Vec<(Host, ConnectError)>,
}

impl fmt::Display for NoUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failures.last() {
            None => write!(f, "no healthy upstream for {}", self.service),
            Some((host, e)) => write!(
                f,
                "no upstream for {} could be reached ({} tried); last: {host}: {e}",
                self.service,
                self.failures.len()
            ),
        }
    }
}

/// Connects to `host` from namespace `ns` (a pod's upstream connections
/// are made in the pod's own namespace: its address, its egress policy).
pub(crate) async fn connect(
    route: &Route,
    ns: &Namespace,
    host: &Host,
) -> Result<Stream, ConnectError> {
    let pool = &route.cluster.service.policy.connection_pool;
    let socket = ns
        .sockets
        .socket(SockKind::Tcp, &host.addr)
        .await
        .map_err(ConnectError::Io)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    SockRef::from(&socket)
        .set_mark(PROXY_MARK)
        .map_err(ConnectError::Io)?;
    socket.set_nodelay(true).map_err(ConnectError::Io)?;
    if let Some(ka) = &pool.tcp_keepalive {
        set_keepalive(SockRef::from(&socket), ka).map_err(ConnectError::Io)?;
    }
    let timeout = pool.connect_timeout;
    let deadline = crate::config::deadline(timeout);
    let tcp = tokio::time::timeout_at(deadline, socket.connect(host.addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    let Some(tls) = &route.tls else {
        return Ok(Either::Left(tcp));
    };
    let name = tls.server_name(&host.key.address);
    let handshake = tls.connect(ns.id, name, tcp);
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Tls)?;
    Ok(Either::Right(stream))
}

/// `SO_KEEPALIVE` on, with the parts of `tcpKeepalive` that are set (the
/// rest keep the kernel's defaults: `net.ipv4.tcp_keepalive_*`).
pub(crate) fn set_keepalive(socket: SockRef<'_>, ka: &TcpKeepalive) -> io::Result<()> {
    socket.set_keepalive(true)?;
    let mut params = socket2::TcpKeepalive::new();
    let mut any = false;
    if let Some(time) = ka.time {
        params = params.with_time(time);
        any = true;
    }
    if let Some(interval) = ka.interval {
        params = params.with_interval(interval);
        any = true;
    }
    if let Some(probes) = ka.probes {
        params = params.with_retries(probes);
        any = true;
    }
    if any {
        socket.set_tcp_keepalive(&params)?;
    }
    Ok(())
}

/// Connects to the first host that answers, in the cluster's attempt
/// order. Failures are recorded; a success is recorded only when
/// `connect_is_success` (TCP ports: the connect is the whole verdict; HTTP
/// ports wait for the response status).
/// Hosts in `exclude` (already tried by this request) are skipped.
pub(crate) async fn connect_first(
    route: &Route,
    ns: &Namespace,
    connect_is_success: bool,
    exclude: &[Arc<HostKey>],
) -> Result<(Host, Stream), NoUpstream> {
    connect_in_order(
        route,
        ns,
        candidates(route, exclude),
        connect_is_success,
        &mut || true,
    )
    .await
}

/// The cluster's attempt order without the hosts in `exclude`.
pub(crate) fn candidates(route: &Route, exclude: &[Arc<HostKey>]) -> Vec<Host> {
    let mut order = route.cluster.attempt_order();
    order.retain(|h| !exclude.contains(&h.key));
    order
}

/// Like [`connect_first`], over an order the caller already has.
/// `may_retry` is asked before each host after the first (HTTP ports count
/// these against `maxRetries`); `false` ends the attempts.
pub(crate) async fn connect_in_order(
    route: &Route,
    ns: &Namespace,
    order: Vec<Host>,
    connect_is_success: bool,
    may_retry: &mut (dyn FnMut() -> bool + Send),
) -> Result<(Host, Stream), NoUpstream> {
    let cluster = &route.cluster;
    let mut failures = Vec::new();
    for host in order.into_iter().take(MAX_ATTEMPTS) {
        if !failures.is_empty() {
            if !may_retry() {
                break;
            }
            cluster.stats.retry(Retry::ConnectFailure);
        }
        match connect(route, ns, &host).await {
            Ok(stream) => {
                let outcome = if connect_is_success {
                    Outcome::Success
                } else {
                    Outcome::Connected
                };
                cluster.record(&host, outcome, None);
                return Ok((host, stream));
            }
            Err(e) => {
                debug!(cluster = %cluster.name, endpoint = %host, error = %e, "connect failed; trying the next endpoint");
                host.stats().connect_failed();
                cluster.record(&host, e.outcome(), Some(&e.to_string()));
                failures.push((host, e));
            }
        }
    }
    Err(NoUpstream {
        service: format!("{}:{}", cluster.service.host, cluster.service.port.number),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_settings_reach_the_socket() {
        let socket = TcpSocket::new_v4().unwrap();
        set_keepalive(
            SockRef::from(&socket),
            &TcpKeepalive {
                probes: Some(4),
                time: Some(Duration::from_secs(25)),
                interval: Some(Duration::from_secs(7)),
            },
        )
        .unwrap();
        let s = SockRef::from(&socket);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(25));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
    }

    #[test]
    fn empty_keepalive_turns_it_on_with_os_defaults() {
        let socket = TcpSocket::new_v4().unwrap();
        let before = SockRef::from(&socket).tcp_keepalive_time().unwrap();
        set_keepalive(SockRef::from(&socket), &TcpKeepalive::default()).unwrap();
        let s = SockRef::from(&socket);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), before);
    }
}
