//! The node-local proxy: accepts connections connect4 redirected, finds
//! out which VIP:port each was meant for, and serves it as that service's
//! protocol says.

mod breakers;
pub(crate) mod http;
pub(crate) mod limits;
mod pool;
pub(crate) mod route;
mod tcp;
mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub(crate) use self::limits::{Caps, Limits};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use self::route::Routes;
use crate::{
    config::Protocol,
    netns::{Mark, Namespace, Sockets},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error(
        "listen address {addr} is already in use (another redirector, or choose another port \
         with --listen-port)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("listening on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The proxy's listener on `addr`, a socket made where `sockets` makes
/// them (in the namespace it serves).
pub(crate) async fn bind(
    addr: SocketAddr,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<TcpListener, ProxyError> {
    sockets.listen(addr, mark).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            ProxyError::PortInUse { addr }
        } else {
            ProxyError::Listen { addr, error }
        }
    })
}

/// The IPv6 listener (`[::1]`, connect6's target): a node without IPv6
/// (no `::1`) runs without it, and connects to IPv6 VIPs fail open there.
pub(crate) async fn bind_optional(
    addr: SocketAddr,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<Option<TcpListener>, ProxyError> {
    match bind(addr, sockets, mark).await {
        Ok(l) => Ok(Some(l)),
        Err(e @ ProxyError::PortInUse { .. }) => Err(e),
        Err(e) => {
            warn!("{e}; IPv6 VIPs are served without the proxy (straight to endpoints)");
            Ok(None)
        }
    }
}

/// The app connections being served, for a graceful stop: every
/// connection task runs on `tracker`, and `stop` asks them to finish.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the daemon stops: HTTP connections finish the
    /// request in flight and close; TCP connections run on.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the namespace is gone (its pod was deleted): every
    /// connection ends now.
    pub(crate) kill: CancellationToken,
}

/// Accepts until the task is dropped: connections to the listener the
/// daemon holds in namespace `ns`, whose records are in `ns`'s own maps.
/// Over `caps`, a connection is reset at once (Envoy's overload manager
/// and listener `connection_limit` do the same).
pub(crate) async fn serve(
    listener: TcpListener,
    ns: Arc<Namespace>,
    routes: Routes,
    drain: Drain,
    caps: Caps,
) {
    let mut backoff = None;
    // Overflow warnings at most once a second.
    let mut last_warned: Option<tokio::time::Instant> = None;
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = limits::accept(&listener, "proxy", &mut backoff).await;
        let admitted = match caps.admit() {
            Ok(a) => a,
            Err(limit) => {
                refused += 1;
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_warned = Some(tokio::time::Instant::now());
                    warn!(
                        %peer, namespace = %ns.name, limit, refused,
                        "too many app connections; resetting new ones"
                    );
                }
                tcp::reset(stream);
                continue;
            }
        };
        let ns = ns.clone();
        let routes = routes.clone();
        let stop = drain.stop.clone();
        let kill = drain.kill.clone();
        let limits = caps.limits.clone();
        drain.tracker.spawn(async move {
            let _admitted = admitted;
            tokio::select! {
                () = handle(stream, peer, ns, &routes, stop, &limits) => {}
                () = kill.cancelled() => {}
            }
        });
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ns: Arc<Namespace>,
    routes: &Routes,
    stop: CancellationToken,
    limits: &Limits,
) {
    let _ = stream.set_nodelay(true);
    // The route key is the service's IPv4 VIP:port, whichever VIP the
    // app dialled (connect6 records it for IPv6 clients).
    let Some(orig) = ns.take_original_destination(peer) else {
        // Someone dialled the proxy port directly: nothing to serve.
        debug!(%peer, namespace = %ns.name, "connection without a redirect record; closing");
        return tcp::reset(stream);
    };
    let route = routes.read().expect("routes lock").get(&orig).cloned();
    let Some(route) = route else {
        warn!(%peer, %orig, "no service for this VIP:port any more; resetting");
        return tcp::reset(stream);
    };
    debug!(%peer, %orig, namespace = %ns.name, cluster = %route.cluster.name, "accepted");
    let _connection = route.cluster.stats.connection();
    match route.cluster.service.port.protocol {
        Protocol::Http => http::serve(stream, routes.clone(), orig, route, ns, stop, limits).await,
        Protocol::Tcp | Protocol::Https | Protocol::Tls => {
            tcp::serve(stream, &route, &ns, limits.tcp_idle_timeout).await;
        }
    }
}
