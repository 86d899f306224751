//! Per-route proxy resources, built from the state's clusters for each
//! generation: the TLS origin (with its session cache), the pool of idle
//! upstream HTTP connections and the circuit breakers. What a reload keeps
//! of them is decided here ([`Route::succeeding`], [`take_over`]).

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::{breakers::Breakers, pool::Pool};
use crate::{cluster::Cluster, config::Protocol, state::ServiceTable, tls::TlsOrigin};

/// What the endpoint receives on an HTTP port: the app's streamed body, or
/// none on a retry.
pub(crate) type UpBody = Either<Incoming, Empty<Bytes>>;

/// VIP:port → what serves it.
pub(crate) type RouteMap = HashMap<SocketAddrV4, Arc<Route>>;

/// The current routing table, swapped as a whole on config reload.
pub(crate) type Routes = Arc<RwLock<Arc<RouteMap>>>;

/// Everything needed to reach one service's endpoints.
pub(crate) struct Route {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) tls: Option<Arc<TlsOrigin>>,
    /// Idle upstream HTTP connections (HTTP ports only).
    pub(crate) pool: Arc<Pool<UpBody>>,
    /// The service's `connectionPool` limits.
    pub(crate) breakers: Arc<Breakers>,
}

/// The routes for `services`, each succeeding the route `previous` had
/// for the same service (host and port): an unchanged TLS origin is kept
/// with its session cache, and so are the limits when the route
/// [`continues`](Route::continues) the old one. Nothing of `previous`
/// changes until [`take_over`]. Must run inside the tokio runtime: each
/// pool starts its sweeper.
pub(crate) fn build(
    services: &ServiceTable,
    previous: Option<&RouteMap>,
) -> anyhow::Result<RouteMap> {
    let old: HashMap<(&str, u16), &Arc<Route>> = previous
        .map(|p| {
            p.values()
                .map(|r| {
                    let s = &r.cluster.service;
                    ((s.host.as_str(), s.port.number), r)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut routes = HashMap::new();
    // In service order, so the first bad TLS file named is the first
    // service's, as the config lists them.
    let mut clusters: Vec<(&SocketAddrV4, &Arc<Cluster>)> = services.iter().collect();
    clusters.sort_by_key(|(_, c)| c.id);
    for (vip, cluster) in clusters {
        let service = &cluster.service;
        let before = old.get(&(service.host.as_str(), service.port.number));
        let mut tls = TlsOrigin::new(&service.policy.tls, service.port.protocol == Protocol::Http)
            .with_context(|| format!("service {}:{}", service.host, service.port.number))?;
        // Unchanged TLS keeps its session cache, and so its pooled
        // connections (see Route::succeeding).
        if let (Some(new), Some(prev)) = (&tls, before.and_then(|r| r.tls.as_ref()))
            && new.same_as(prev)
        {
            tls = Some(prev.clone());
        }
        routes.insert(
            *vip,
            Arc::new(Route::succeeding(
                cluster.clone(),
                tls,
                before.map(|r| &***r),
            )),
        );
    }
    Ok(routes)
}

/// Once `new` is in force, it takes over from `old`: each route its
/// predecessor's pooled connections (see [`Route::take_over`]), and
/// services that are gone close theirs.
pub(crate) fn take_over(new: &RouteMap, old: &RouteMap) {
    let key = |r: &Route| {
        (
            r.cluster.service.host.clone(),
            r.cluster.service.port.number,
        )
    };
    for old in old.values() {
        match new.values().find(|r| key(r) == key(old)) {
            Some(new) => new.take_over(old),
            None => old.pool.hand_over(None, |_| false),
        }
    }
}

impl Route {
    /// A route for `cluster` that, after a reload, succeeds `previous`
    /// (the same service in the config before), sharing its limits when
    /// [`Route::continues`] it. Nothing of `previous` changes until
    /// [`Route::take_over`]: a reload that is rejected later leaves the
    /// running routes as they were.
    pub(crate) fn succeeding(
        cluster: Arc<Cluster>,
        tls: Option<Arc<TlsOrigin>>,
        previous: Option<&Route>,
    ) -> Self {
        let policy = &cluster.service.policy.connection_pool;
        let mut route = Self {
            pool: Pool::new(policy.idle_timeout),
            breakers: Breakers::new(&cluster.name, policy),
            tls,
            cluster,
        };
        if let Some(p) = previous.filter(|p| route.continues(p)) {
            route.breakers = p.breakers.clone();
        }
        route
    }

    /// Whether `previous`'s connections are as good as new ones of this
    /// route: made with the same TLS origin (the caller of `succeeding`
    /// passes `previous.tls` itself when nothing changed there), under the
    /// same `connectionPool` settings, for the same protocol.
    fn continues(&self, previous: &Route) -> bool {
        let same_tls = match (&self.tls, &previous.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_tls
            && previous.cluster.service.policy.connection_pool
                == self.cluster.service.policy.connection_pool
            && previous.cluster.service.port.protocol == self.cluster.service.port.protocol
    }

    /// Once the reload is in force: takes `previous`'s idle connections to
    /// endpoints still there when it [`continues`](Route::continues) it;
    /// whatever is not taken over closes once idle (see
    /// [`Pool::hand_over`]).
    pub(crate) fn take_over(&self, previous: &Route) {
        if self.continues(previous) {
            previous
                .pool
                .hand_over(Some(&self.pool), |key| self.cluster.has_host(key));
        } else {
            previous.pool.hand_over(None, |_| false);
        }
    }
}
