//! A service's live endpoint set: configured endpoints, their resolved
//! addresses, locality priorities and weights, outlier state and the load
//! balancer, behind one lock.
//!
//! Envoy calls this a cluster (`outbound|80||mydb.com`). Hosts are keyed by
//! their logical endpoint (address as configured, port) plus resolved IP,
//! so outlier state survives DNS refreshes and config reloads that keep the
//! same endpoint, where Envoy would reset it (istio#8673). Every change that
//! `redirector endpoints` should see marks the cluster dirty for the health
//! publisher; nothing on the connection path does I/O.
//!
//! The balancer (`lb`) is rebuilt whenever the hosts or their health differ
//! from what it was built with, and otherwise keeps its round-robin state.
//! Each host counts its requests in flight (for LEAST_REQUEST) through the
//! guard [`Cluster::track`] returns.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::Notify, time::Instant};
use tracing::{info, warn};

use crate::{
    config::{DatapathMode, EndpointAddress, Service},
    lb::{self, Balancer, HostView},
    locality::{self, Locality, Placement},
    metrics::{HostStats, Metrics, ServiceStats},
    outlier::{Detector, Event, Outcome},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HostKey {
    pub(crate) address: EndpointAddress,
    pub(crate) port: u16,
    pub(crate) ip: IpAddr,
}

/// One host's outlier state crossing a handover (see
/// [`Cluster::export_outliers`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CarriedHost {
    /// The endpoint's configured address (an IP, or a name).
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) ip: IpAddr,
    #[serde(flatten)]
    pub(crate) state: crate::outlier::Carried,
}

/// One address to connect to. Cloned per request, so the key and the
/// request counter are shared.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub(crate) key: Arc<HostKey>,
    pub(crate) addr: SocketAddr,
    /// Index into `Service::endpoints`.
    pub(crate) endpoint: usize,
    pub(crate) priority: u8,
    /// Requests in flight and metric handles, shared by the clones.
    shared: Arc<HostShared>,
}

/// What every clone of a host shares.
#[derive(Debug, Default)]
struct HostShared {
    /// Requests (HTTP) or connections (TCP) in flight, for LEAST_REQUEST.
    active: AtomicU32,
    stats: HostStats,
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, self.addr, self.endpoint, self.priority)
            == (&other.key, other.addr, other.endpoint, other.priority)
    }
}

impl Eq for Host {}

impl Host {
    /// Requests or connections in flight to this host.
    pub(crate) fn active(&self) -> u32 {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The host's metric handles.
    pub(crate) fn stats(&self) -> &HostStats {
        &self.shared.stats
    }
}

/// Counts one request or connection as in flight to a host until dropped.
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<HostShared>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key.address {
            EndpointAddress::Dns(name) => write!(f, "{}({name})", self.addr),
            EndpointAddress::Ip(_) => write!(f, "{}", self.addr),
        }
    }
}

/// What `redirector endpoints` shows for one host (or one unresolved name).
#[derive(Clone, Debug)]
pub(crate) struct HostSnapshot {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) address: String,
    pub(crate) locality: Locality,
    pub(crate) priority: u8,
    /// The endpoint's weight; 0 when `distribute` gives its locality no
    /// traffic.
    pub(crate) weight: u32,
    pub(crate) ejected_until: Option<SystemTime>,
    pub(crate) ejections: u32,
    pub(crate) multiplier: u32,
    pub(crate) consecutive_5xx: u32,
    pub(crate) last_error: Option<(SystemTime, String)>,
    /// DNS endpoints: refreshes that failed or came back empty (the last
    /// good answer was kept), and when the name last resolved.
    pub(crate) dns: DnsStats,
}

/// How one endpoint name's DNS refreshes went, since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DnsStats {
    pub(crate) failures: u32,
    pub(crate) last_answer: Option<SystemTime>,
}

pub(crate) struct Cluster {
    pub(crate) id: u32,
    pub(crate) service: Service,
    /// `outbound|<port>||<host>`, as Istio names clusters.
    pub(crate) name: String,
    placement: Placement,
    policy: lb::Policy,
    /// `splitExternalLocalOriginErrors`, known without the lock.
    split_local_origin: bool,
    /// The service's metric handles (hosts hold their own).
    pub(crate) stats: ServiceStats,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    notify: Arc<Notify>,
}

struct Inner {
    /// Per configured endpoint; `None` until its name resolves.
    resolved: Vec<Option<Vec<IpAddr>>>,
    /// Per configured endpoint; stays default for IP endpoints.
    dns: Vec<DnsStats>,
    /// Hosts of placed endpoints (those `distribute` does not drop).
    hosts: Vec<Host>,
    detector: Detector<HostKey>,
    last_error: HashMap<HostKey, (SystemTime, String)>,
    /// Built for the current hosts and health; `None` after a change of
    /// hosts.
    balancer: Option<Balancer>,
}

impl Cluster {
    /// `notify` wakes the health publisher when the cluster changes.
    pub(crate) fn new(
        id: u32,
        service: Service,
        node: &Locality,
        notify: Arc<Notify>,
        metrics: &Metrics,
    ) -> Self {
        let policy = &service.policy;
        // Istio applies locality priorities only with outlier detection:
        // without it nothing would ever move traffic off a dead region.
        let placement = locality::place(
            node,
            &service.endpoints,
            &policy.locality_lb,
            policy.outlier.is_some(),
        );
        let lb_policy = lb::Policy {
            algorithm: policy.load_balancer,
            panic_threshold: policy.outlier.as_ref().map_or(0, |o| o.min_health_percent),
            locality_weighted: placement.locality_weighted,
        };
        // IPs are known now; names wait for their first DNS answer (config
        // validation allows names only with `resolution: DNS`).
        let resolved: Vec<Option<Vec<IpAddr>>> = service
            .endpoints
            .iter()
            .map(|e| match &e.address {
                EndpointAddress::Ip(ip) => Some(vec![*ip]),
                EndpointAddress::Dns(_) => None,
            })
            .collect();
        let name = format!("outbound|{}||{}", service.port.number, service.host);
        let detector = Detector::new(policy.outlier.as_ref());
        let stats = metrics.service(&format!("{}:{}", service.host, service.port.number));
        let cluster = Self {
            id,
            stats,
            split_local_origin: detector.split_local_origin(),
            service,
            name,
            placement,
            policy: lb_policy,
            inner: Mutex::new(Inner {
                dns: vec![DnsStats::default(); resolved.len()],
                resolved,
                hosts: Vec::new(),
                detector,
                last_error: HashMap::new(),
                balancer: None,
            }),
            dirty: AtomicBool::new(true),
            notify,
        };
        cluster
            .inner()
            .rebuild(&cluster.service, &cluster.placement, &cluster.stats);
        cluster
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cluster lock")
    }

    /// DNS names of endpoints that need resolving, with their indices.
    pub(crate) fn dns_endpoints(&self) -> Vec<(usize, String)> {
        self.service
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &e.address {
                EndpointAddress::Dns(name) => Some((i, name.clone())),
                EndpointAddress::Ip(_) => None,
            })
            .collect()
    }

    pub(crate) fn outlier_interval(&self) -> Option<Duration> {
        self.inner().detector.interval()
    }

    /// Whether an endpoint name has had no answer and no failure yet (its
    /// first lookup is still out).
    pub(crate) fn awaiting_first_answer(&self) -> bool {
        let inner = self.inner();
        self.service.endpoints.iter().enumerate().any(|(i, ep)| {
            matches!(ep.address, EndpointAddress::Dns(_))
                && inner.resolved[i].is_none()
                && inner.dns[i] == DnsStats::default()
        })
    }

    /// Counts one DNS refresh of an endpoint name: a good answer (changed
    /// or not), or a failure or empty answer that kept the last good one.
    pub(crate) fn dns_refreshed(&self, endpoint: usize, ok: bool) {
        let mut inner = self.inner();
        let stats = &mut inner.dns[endpoint];
        if ok {
            stats.last_answer = Some(SystemTime::now());
        } else {
            stats.failures = stats.failures.saturating_add(1);
        }
        drop(inner);
        self.mark_dirty();
    }

    /// New addresses for one endpoint (a DNS answer).
    pub(crate) fn set_resolved(&self, endpoint: usize, mut addrs: Vec<IpAddr>) {
        addrs.sort_unstable();
        addrs.dedup();
        let mut inner = self.inner();
        if inner.resolved[endpoint].as_ref() == Some(&addrs) {
            return;
        }
        inner.resolved[endpoint] = Some(addrs);
        inner.rebuild(&self.service, &self.placement, &self.stats);
        drop(inner);
        self.mark_dirty();
    }

    /// Takes over resolved addresses and outlier state from the cluster this
    /// one replaces in a config reload.
    pub(crate) fn adopt(&self, old: &Cluster) {
        let old_inner = old.inner();
        let mut inner = self.inner();
        for (i, ep) in self.service.endpoints.iter().enumerate() {
            if inner.resolved[i].is_some() {
                continue;
            }
            if let Some(j) = old
                .service
                .endpoints
                .iter()
                .position(|o| o.address == ep.address)
            {
                inner.resolved[i] = old_inner.resolved[j].clone();
                inner.dns[i] = old_inner.dns[j];
            }
        }
        inner.rebuild(&self.service, &self.placement, &self.stats);
        // In-flight counts carry over: the old cluster's requests are
        // still running against the same hosts.
        for h in &mut inner.hosts {
            if let Some(old) = old_inner.hosts.iter().find(|o| o.key == h.key) {
                h.shared = old.shared.clone();
            }
        }
        inner.detector.adopt(&old_inner.detector);
        for key in inner
            .hosts
            .iter()
            .map(|h| h.key.clone())
            .collect::<Vec<_>>()
        {
            if let Some(e) = old_inner.last_error.get(&*key) {
                inner.last_error.insert((*key).clone(), e.clone());
            }
        }
        drop(inner);
        self.mark_dirty();
    }

    /// Outlier state worth carrying to a successor daemon (see
    /// `Detector::export`), each host named by its endpoint's address, port
    /// and IP.
    pub(crate) fn export_outliers(&self, now: Instant) -> Vec<CarriedHost> {
        let inner = self.inner();
        inner
            .detector
            .export(now)
            .into_iter()
            .map(|(key, state)| CarriedHost {
                address: match &key.address {
                    EndpointAddress::Ip(ip) => ip.to_string(),
                    EndpointAddress::Dns(name) => name.clone(),
                },
                port: key.port,
                ip: key.ip,
                state,
            })
            .collect()
    }

    /// Takes a predecessor's outlier state for this cluster's hosts; how
    /// many hosts took some (those this cluster does not have are left).
    pub(crate) fn import_outliers(&self, hosts: &[CarriedHost], now: Instant) -> usize {
        let mut inner = self.inner();
        let keys: Vec<Arc<HostKey>> = inner.hosts.iter().map(|h| h.key.clone()).collect();
        let mut taken = 0;
        for carried in hosts {
            let key = keys.iter().find(|k| {
                k.port == carried.port
                    && k.ip == carried.ip
                    && match &k.address {
                        EndpointAddress::Ip(ip) => ip.to_string() == carried.address,
                        EndpointAddress::Dns(name) => *name == carried.address,
                    }
            });
            if let Some(key) = key
                && inner.detector.import(key, &carried.state, now)
            {
                taken += 1;
            }
        }
        if taken > 0 {
            inner.balancer = None;
            drop(inner);
            self.mark_dirty();
        }
        taken
    }

    /// Hosts in the order one new connection (or HTTP request) should try
    /// them: the balancer's pick first.
    pub(crate) fn attempt_order(&self) -> Vec<Host> {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let healthy: Vec<bool> = inner
            .hosts
            .iter()
            .map(|h| !inner.detector.is_ejected(&h.key))
            .collect();
        let stale = inner
            .balancer
            .as_ref()
            .is_none_or(|b| !b.health().eq(healthy.iter().copied()));
        if stale {
            inner.balancer = Some(self.balancer(&inner.hosts, &healthy));
        }
        let hosts = &inner.hosts;
        let balancer = inner.balancer.as_mut().expect("just built");
        balancer
            .attempt_order(&mut rand::rng(), |i| hosts[i].active())
            .into_iter()
            .map(|i| hosts[i].clone())
            .collect()
    }

    fn views(&self, hosts: &[Host], healthy: &[bool]) -> Vec<HostView> {
        hosts
            .iter()
            .zip(healthy)
            .map(|(h, &healthy)| HostView {
                group: self.placement.endpoints[h.endpoint]
                    .expect("only placed endpoints have hosts"),
                healthy,
                weight: self.service.endpoints[h.endpoint].weight,
            })
            .collect()
    }

    fn balancer(&self, hosts: &[Host], healthy: &[bool]) -> Balancer {
        Balancer::new(
            self.views(hosts, healthy),
            &self.placement.groups,
            self.policy,
        )
    }

    /// `n` hosts whose proportions follow the balancer's split over healthy
    /// hosts (see [`lb::slot_table`]), for a datapath that cannot ask the
    /// balancer per connection.
    pub(crate) fn slot_table(&self, n: usize) -> Vec<Host> {
        let inner = self.inner();
        let healthy: Vec<bool> = inner
            .hosts
            .iter()
            .map(|h| !inner.detector.is_ejected(&h.key))
            .collect();
        let views = self.views(&inner.hosts, &healthy);
        lb::slot_table(&views, &self.placement.groups, &self.policy, n)
            .into_iter()
            .map(|i| inner.hosts[i].clone())
            .collect()
    }

    /// Counts a request or connection to `host` as in flight until the
    /// guard is dropped (LEAST_REQUEST balances on these counts).
    pub(crate) fn track(&self, host: &Host) -> ActiveRequest {
        host.shared.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(host.shared.clone())
    }

    /// Feeds one attempt's outcome to outlier detection.
    pub(crate) fn record(&self, host: &Host, outcome: Outcome, error: Option<&str>) {
        // A connect under an HTTP request matters only to a split
        // local-origin counter: skip the lock on every request otherwise.
        if outcome == Outcome::Connected && !self.split_local_origin {
            return;
        }
        let mut inner = self.inner();
        let before = inner.detector.state(&host.key).map(|s| s.consecutive_5xx);
        let event = inner.detector.record(&host.key, outcome, Instant::now());
        if let Some(error) = error {
            inner
                .last_error
                .insert((*host.key).clone(), (SystemTime::now(), error.to_owned()));
        }
        let after = inner.detector.state(&host.key).map(|s| s.consecutive_5xx);
        drop(inner);
        match event {
            Some(Event::Ejected { duration, reason }) => {
                host.stats().ejected();
                warn!(
                cluster = %self.name, endpoint = %host, ejection_time = ?duration,
                threshold = reason.field(), last_error = error.unwrap_or("5xx response"),
                "endpoint ejected by outlier detection"
                );
            }
            Some(Event::EjectionOverflow { reason }) => info!(
                cluster = %self.name, endpoint = %host, threshold = reason.field(),
                "endpoint reached its outlier threshold but stays in: maxEjectionPercent \
                 allows no more ejections"
            ),
            _ => {}
        }
        if event.is_some() || error.is_some() || before != after {
            self.mark_dirty();
        }
    }

    /// The outlier interval timer fired.
    pub(crate) fn tick(&self) {
        let inner = &mut *self.inner();
        let events = inner.detector.tick(Instant::now());
        for (key, _) in &events {
            if let Some(h) = inner.hosts.iter().find(|h| *h.key == *key) {
                h.stats().returned();
            }
            info!(cluster = %self.name, endpoint = %SocketAddr::new(key.ip, key.port),
                  "endpoint returned to service");
        }
        // The multiplier may have decayed, which `endpoints` shows.
        self.mark_dirty();
    }

    /// Returns whether the cluster changed since the last call.
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(crate) fn snapshot(&self) -> Vec<HostSnapshot> {
        let inner = self.inner();
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        let mut out = Vec::new();
        for (i, ep) in self.service.endpoints.iter().enumerate() {
            let placed = self.placement.endpoints[i].is_some();
            let base = HostSnapshot {
                addr: None,
                address: ep.address.to_string(),
                locality: ep.locality.clone(),
                priority: self.placement.priority(i).unwrap_or(0),
                weight: if placed { ep.weight } else { 0 },
                ejected_until: None,
                ejections: 0,
                multiplier: 0,
                consecutive_5xx: 0,
                last_error: None,
                dns: inner.dns[i],
            };
            let Some(ips) = &inner.resolved[i] else {
                out.push(base);
                continue;
            };
            if !placed {
                // No traffic, so no hosts: show the addresses alone.
                out.extend(ips.iter().map(|&ip| HostSnapshot {
                    addr: Some(SocketAddr::new(ip, ep.port)),
                    ..base.clone()
                }));
                continue;
            }
            for h in inner.hosts.iter().filter(|h| h.endpoint == i) {
                let state = inner.detector.state(&h.key).cloned().unwrap_or_default();
                let until = inner
                    .detector
                    .ejected_until(&h.key)
                    .map(|t| now_s + t.saturating_duration_since(now_i));
                out.push(HostSnapshot {
                    addr: Some(h.addr),
                    ejected_until: until,
                    ejections: state.ejections,
                    multiplier: state.multiplier,
                    consecutive_5xx: state.consecutive_5xx,
                    last_error: inner.last_error.get(&h.key).cloned(),
                    ..base.clone()
                });
            }
        }
        out
    }

    /// The kernel's slot table for this service: [`MAX_SLOTS`] addresses in
    /// the proportions the balancer would send traffic in (priority load
    /// with spillover, locality and endpoint weights, healthy hosts only, or
    /// every host when none is healthy). Empty when the service has no
    /// hosts. IPv4 hosts only: the table's layout holds IPv4 addresses
    /// (connect6 reaches them at their IPv4-mapped address), so IPv6 hosts'
    /// shares are left out and the rest keep their proportions.
    pub(crate) fn kernel_slots(&self) -> Vec<SocketAddrV4> {
        self.slot_table(redirector_common::MAX_SLOTS)
            .into_iter()
            .filter_map(|h| match h.addr {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })
            .collect()
    }

    /// connect6's slot table: the same proportions over every host, IPv4
    /// ones at their IPv4-mapped address (which a dual-stack IPv6 socket
    /// reaches over IPv4).
    pub(crate) fn kernel_slots6(&self) -> Vec<SocketAddrV6> {
        self.slot_table(redirector_common::MAX_SLOTS)
            .into_iter()
            .map(|h| match h.addr {
                SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
                SocketAddr::V6(a) => a,
            })
            .collect()
    }

    /// The host at `addr`, for outcomes the kernel reports by address.
    pub(crate) fn host_by_addr(&self, addr: SocketAddr) -> Option<Host> {
        self.inner().hosts.iter().find(|h| h.addr == addr).cloned()
    }

    /// Whether `key` is one of the cluster's hosts now.
    pub(crate) fn has_host(&self, key: &HostKey) -> bool {
        self.inner().hosts.iter().any(|h| *h.key == *key)
    }
}

impl Inner {
    fn rebuild(&mut self, service: &Service, placement: &Placement, stats: &ServiceStats) {
        let kernel_path = service.datapath == DatapathMode::Kernel;
        let old = std::mem::take(&mut self.hosts);
        self.hosts = service
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, ep)| Some((i, ep, placement.priority(i)?)))
            .flat_map(|(i, ep, priority)| {
                let ips = self.resolved[i].clone().unwrap_or_default();
                let old = &old;
                ips.into_iter().map(move |ip| {
                    let key = HostKey {
                        address: ep.address.clone(),
                        port: ep.port,
                        ip,
                    };
                    let addr = SocketAddr::new(ip, ep.port);
                    let shared = old.iter().find(|h| *h.key == key).map_or_else(
                        || {
                            Arc::new(HostShared {
                                active: AtomicU32::new(0),
                                stats: stats.host(&addr.to_string(), kernel_path),
                            })
                        },
                        |h| h.shared.clone(),
                    );
                    Host {
                        key: Arc::new(key),
                        addr,
                        endpoint: i,
                        priority,
                        shared,
                    }
                })
            })
            .collect();
        self.balancer = None;
        self.detector
            .set_hosts(self.hosts.iter().map(|h| (*h.key).clone()));
        let live: std::collections::HashSet<&HostKey> =
            self.hosts.iter().map(|h| &*h.key).collect();
        self.last_error.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod kernel_slot_tests;
#[cfg(test)]
mod tests;
