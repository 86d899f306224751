//! Connecting to endpoints, and moving on to the next one when a connect
//! fails, before the app has seen a single byte.
//!
//! Istio's blog shows one failed request when the primary goes away ("the
//! first call will fail, which triggers the failover"). Here a refused,
//! timed-out or TLS-failed connect is recorded for outlier detection and the
//! next host in attempt order is tried at once, so the app sees no error.
//! Every upstream socket carries [`PROXY_MARK`] so connect4 never redirects
//! the proxy's own connects back to itself.

use std::{fmt, io, sync::Arc, time::Duration};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tracing::debug;

use super::{http::UpBody, pool::Pool};
use crate::{
    bpf::PROXY_MARK,
    cluster::{Cluster, Host, HostKey},
    outlier::Outcome,
    tls::TlsOrigin,
};

/// Istio's default `connectionPool.tcp.connectTimeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct hosts one new connection tries before giving up.
const MAX_ATTEMPTS: usize = 5;

pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Everything needed to reach one service's endpoints.
pub struct Route {
    pub cluster: Arc<Cluster>,
    pub tls: Option<Arc<TlsOrigin>>,
    /// Idle upstream HTTP connections (HTTP ports only).
    pub pool: Pool<UpBody>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect: {0}")]
    Io(io::Error),
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {}", describe_tls(.0))]
    Tls(io::Error),
}

/// rustls' words for "this is not TLS at all" are cryptic; say it plainly.
fn describe_tls(e: &io::Error) -> String {
    use rustls::{Error, InvalidMessage};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            format!("the endpoint does not speak TLS (plain text on a TLS port?): {e}")
        }
        _ => e.to_string(),
    }
}

impl ConnectError {
    /// Envoy maps a connect failure to 503 and a timeout to 504; both count
    /// toward consecutive 5xx.
    pub fn outcome(&self) -> Outcome {
        match self {
            ConnectError::Timeout(_) => Outcome::Timeout,
            ConnectError::Io(_) | ConnectError::Tls(_) => Outcome::ConnectFailed,
        }
    }
}

/// No host could be reached.
#[derive(Debug)]
pub struct NoUpstream {
    pub service: String,
    pub failures: Vec<(Host, ConnectError)>,
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

pub async fn connect(route: &Route, host: &Host) -> Result<Stream, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(ConnectError::Io)?;
    SockRef::from(&socket)
        .set_mark(PROXY_MARK)
        .map_err(ConnectError::Io)?;
    socket.set_nodelay(true).map_err(ConnectError::Io)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(host.addr.into()))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ConnectError::Io)?;
    let Some(tls) = &route.tls else {
        return Ok(Either::Left(tcp));
    };
    let name = tls.server_name(&host.key.address);
    let handshake = tls.connect(name, tcp);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ConnectError::Tls)?;
    Ok(Either::Right(stream))
}

/// Connects to the first host that answers, in the cluster's attempt
/// order. Failures are recorded; a success is recorded only when
/// `connect_is_success` (TCP ports: the connect is the whole verdict; HTTP
/// ports wait for the response status).
/// Hosts in `exclude` (already tried by this request) are skipped.
pub async fn connect_first(
    route: &Route,
    connect_is_success: bool,
    exclude: &[Arc<HostKey>],
) -> Result<(Host, Stream), NoUpstream> {
    connect_in_order(route, candidates(route, exclude), connect_is_success).await
}

/// The cluster's attempt order without the hosts in `exclude`.
pub fn candidates(route: &Route, exclude: &[Arc<HostKey>]) -> Vec<Host> {
    let mut order = route.cluster.attempt_order();
    order.retain(|h| !exclude.contains(&h.key));
    order
}

/// Like [`connect_first`], over an order the caller already has.
pub async fn connect_in_order(
    route: &Route,
    order: Vec<Host>,
    connect_is_success: bool,
) -> Result<(Host, Stream), NoUpstream> {
    let cluster = &route.cluster;
    let mut failures = Vec::new();
    for host in order.into_iter().take(MAX_ATTEMPTS) {
        match connect(route, &host).await {
            Ok(stream) => {
                if connect_is_success {
                    cluster.record(&host, Outcome::Success, None);
                }
                return Ok((host, stream));
            }
            Err(e) => {
                debug!(cluster = %cluster.name, endpoint = %host, error = %e, "connect failed; trying the next endpoint");
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
