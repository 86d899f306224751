//! A service's live endpoint set: configured endpoints, their resolved
//! addresses, locality priorities and outlier state, behind one lock.
//!
//! Envoy calls this a cluster (`outbound|80||mydb.com`). Hosts are keyed by
//! their logical endpoint (address as configured, port) plus resolved IP,
//! so outlier state survives DNS refreshes and config reloads that keep the
//! same endpoint, where Envoy would reset it (istio#8673). Every change that
//! `redirector endpoints` should see marks the cluster dirty for the health
//! publisher; nothing on the connection path does I/O.

use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::Notify, time::Instant};
use tracing::{info, warn};

use crate::{
    config::{EndpointAddress, Service},
    lb::{self, HostView},
    locality::{self, Locality},
    outlier::{Detector, Event, Outcome},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub address: EndpointAddress,
    pub port: u16,
    pub ip: Ipv4Addr,
}

/// One address to connect to. Cloned per request, so the key is shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub key: Arc<HostKey>,
    pub addr: SocketAddrV4,
    /// Index into `Service::endpoints`.
    pub endpoint: usize,
    pub priority: u8,
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
pub struct HostSnapshot {
    pub addr: Option<SocketAddrV4>,
    pub address: String,
    pub locality: Locality,
    pub priority: u8,
    /// The endpoint's `weight` from the ServiceEntry.
    pub weight: u32,
    pub ejected_until: Option<SystemTime>,
    pub ejections: u32,
    pub multiplier: u32,
    pub consecutive_5xx: u32,
    pub last_error: Option<(SystemTime, String)>,
}

pub struct Cluster {
    pub id: u32,
    pub service: Service,
    /// `outbound|<port>||<host>`, as Istio names clusters.
    pub name: String,
    priorities: Vec<u8>,
    cursor: AtomicUsize,
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    notify: Arc<Notify>,
}

struct Inner {
    /// Per configured endpoint; `None` until its name resolves.
    resolved: Vec<Option<Vec<Ipv4Addr>>>,
    hosts: Vec<Host>,
    detector: Detector<HostKey>,
    last_error: HashMap<HostKey, (SystemTime, String)>,
}

impl Cluster {
    /// `notify` wakes the health publisher when the cluster changes.
    pub fn new(id: u32, service: Service, node: &Locality, notify: Arc<Notify>) -> Self {
        let policy = &service.policy;
        // Istio applies locality priorities only with outlier detection:
        // without it nothing would ever move traffic off a dead region.
        let priorities = if policy.outlier.is_some() && policy.locality_lb.enabled {
            locality::priorities(
                node,
                service.endpoints.iter().map(|e| &e.locality),
                &policy.locality_lb.failover,
            )
        } else {
            vec![0; service.endpoints.len()]
        };
        // IPs are known now; names wait for their first DNS answer (config
        // validation allows names only with `resolution: DNS`).
        let resolved = service
            .endpoints
            .iter()
            .map(|e| match &e.address {
                EndpointAddress::Ip(ip) => Some(vec![*ip]),
                EndpointAddress::Dns(_) => None,
            })
            .collect();
        let name = format!("outbound|{}||{}", service.port.number, service.host);
        let detector = Detector::new(policy.outlier.as_ref());
        let cluster = Self {
            id,
            service,
            name,
            priorities,
            cursor: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                resolved,
                hosts: Vec::new(),
                detector,
                last_error: HashMap::new(),
            }),
            dirty: AtomicBool::new(true),
            notify,
        };
        cluster
            .inner()
            .rebuild(&cluster.service, &cluster.priorities);
        cluster
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("cluster lock")
    }

    /// DNS names of endpoints that need resolving, with their indices.
    pub fn dns_endpoints(&self) -> Vec<(usize, String)> {
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

    pub fn outlier_interval(&self) -> Option<Duration> {
        self.inner().detector.interval()
    }

    /// New addresses for one endpoint (a DNS answer).
    pub fn set_resolved(&self, endpoint: usize, mut addrs: Vec<Ipv4Addr>) {
        addrs.sort_unstable();
        addrs.dedup();
        let mut inner = self.inner();
        if inner.resolved[endpoint].as_ref() == Some(&addrs) {
            return;
        }
        inner.resolved[endpoint] = Some(addrs);
        inner.rebuild(&self.service, &self.priorities);
        drop(inner);
        self.mark_dirty();
    }

    /// Takes over resolved addresses and outlier state from the cluster this
    /// one replaces in a config reload.
    pub fn adopt(&self, old: &Cluster) {
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
            }
        }
        inner.rebuild(&self.service, &self.priorities);
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

    /// Hosts in the order one new connection should try them.
    pub fn attempt_order(&self) -> Vec<Host> {
        let inner = self.inner();
        let views: Vec<HostView> = inner
            .hosts
            .iter()
            .map(|h| HostView {
                priority: h.priority,
                healthy: !inner.detector.is_ejected(&h.key),
            })
            .collect();
        let cursor = self.cursor.fetch_add(1, Ordering::Relaxed);
        lb::attempt_order(&views, cursor)
            .into_iter()
            .map(|i| inner.hosts[i].clone())
            .collect()
    }

    pub fn is_ejected(&self, host: &Host) -> bool {
        self.inner().detector.is_ejected(&host.key)
    }

    /// Feeds one attempt's outcome to outlier detection.
    pub fn record(&self, host: &Host, outcome: Outcome, error: Option<&str>) {
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
        if let Some(Event::Ejected { duration }) = event {
            warn!(
                cluster = %self.name, endpoint = %host, ejection_time = ?duration,
                last_error = error.unwrap_or("5xx response"),
                "endpoint ejected by outlier detection"
            );
        }
        if event.is_some() || error.is_some() || before != after {
            self.mark_dirty();
        }
    }

    /// The outlier interval timer fired.
    pub fn tick(&self) {
        let events = self.inner().detector.tick(Instant::now());
        for (key, _) in &events {
            info!(cluster = %self.name, endpoint = %SocketAddrV4::new(key.ip, key.port),
                  "endpoint returned to service");
        }
        // The multiplier may have decayed, which `endpoints` shows.
        self.mark_dirty();
    }

    /// Returns whether the cluster changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn snapshot(&self) -> Vec<HostSnapshot> {
        let inner = self.inner();
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        let mut out = Vec::new();
        for (i, ep) in self.service.endpoints.iter().enumerate() {
            let base = HostSnapshot {
                addr: None,
                address: ep.address.to_string(),
                locality: ep.locality.clone(),
                priority: self.priorities[i],
                weight: ep.weight,
                ejected_until: None,
                ejections: 0,
                multiplier: 0,
                consecutive_5xx: 0,
                last_error: None,
            };
            if inner.resolved[i].is_none() {
                out.push(base);
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

    /// Where the kernel sends this service's connects without the proxy
    /// (the fast path, or fail-open while the proxy is down): the healthy
    /// hosts of the best priority that has one, each repeated `weight`
    /// times, in host order. With no healthy host, every host of the best
    /// priority (a guess beats a certain error, as `lb` does). Empty only
    /// while no address is known. The table is fitted to the kernel's slot
    /// count by `bpf::slots`.
    pub fn kernel_slots(&self) -> Vec<SocketAddrV4> {
        let inner = self.inner();
        let healthy = |h: &Host| !inner.detector.is_ejected(&h.key);
        let any_healthy = inner.hosts.iter().any(healthy);
        let eligible = |h: &&Host| !any_healthy || healthy(h);
        let Some(best) = inner
            .hosts
            .iter()
            .filter(eligible)
            .map(|h| h.priority)
            .min()
        else {
            return Vec::new();
        };
        let chosen: Vec<(SocketAddrV4, u64)> = inner
            .hosts
            .iter()
            .filter(eligible)
            .filter(|h| h.priority == best)
            .map(|h| {
                (
                    h.addr,
                    u64::from(self.service.endpoints[h.endpoint].weight.max(1)),
                )
            })
            .collect();
        // Weights are u32: divide by their gcd, and scale huge ones down
        // (keeping every host) so the list stays small.
        const MAX_LEN: u64 = 1024;
        let gcd = chosen.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let total: u64 = chosen.iter().map(|&(_, w)| w / gcd).sum();
        chosen
            .into_iter()
            .flat_map(|(addr, w)| {
                let w = w / gcd;
                let n = if total > MAX_LEN {
                    (w * MAX_LEN / total).max(1)
                } else {
                    w
                };
                std::iter::repeat_n(addr, n as usize)
            })
            .collect()
    }

    /// The host at `addr`, for outcomes the kernel reports by address.
    pub fn host_by_addr(&self, addr: SocketAddrV4) -> Option<Host> {
        self.inner().hosts.iter().find(|h| h.addr == addr).cloned()
    }
}

impl Inner {
    fn rebuild(&mut self, service: &Service, priorities: &[u8]) {
        self.hosts = service
            .endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, ep)| {
                let ips = self.resolved[i].clone().unwrap_or_default();
                ips.into_iter().map(move |ip| Host {
                    key: Arc::new(HostKey {
                        address: ep.address.clone(),
                        port: ep.port,
                        ip,
                    }),
                    addr: SocketAddrV4::new(ip, ep.port),
                    endpoint: i,
                    priority: priorities[i],
                })
            })
            .collect();
        self.detector
            .set_hosts(self.hosts.iter().map(|h| (*h.key).clone()));
        let live: std::collections::HashSet<&HostKey> =
            self.hosts.iter().map(|h| &*h.key).collect();
        self.last_error.retain(|k, _| live.contains(k));
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod kernel_slot_tests {
    use super::*;
    use crate::config::{self, NodeSettings};

    /// Endpoints in the node's region (priority 0) and one elsewhere
    /// (priority 1), ejected after one failure.
    fn cluster(east: &[&str]) -> Cluster {
        let endpoints: String = east
            .iter()
            .map(|a| format!("  - {{address: {a}, locality: us-east1}}\n"))
            .collect();
        let yaml = format!(
            "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example]
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-pg}}]
  endpoints:
{endpoints}  - {{address: 10.0.1.1, locality: us-west1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: db.example
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s}}
"
        );
        let config = config::load_str("t.yaml", &yaml, &NodeSettings::default()).unwrap();
        let mut service = config.services[0].clone();
        service.endpoints[0].weight = 3;
        let node = Locality::parse("us-east1").unwrap();
        Cluster::new(1, service, &node, Arc::new(Notify::new()))
    }

    fn ep(s: &str) -> SocketAddrV4 {
        format!("{s}:5432").parse().unwrap()
    }

    fn fail(c: &Cluster, addr: &str) {
        let host = c.host_by_addr(ep(addr)).unwrap();
        c.record(&host, Outcome::ConnectFailed, Some("refused"));
    }

    #[test]
    fn best_priority_hosts_repeated_by_weight() {
        let c = cluster(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            c.kernel_slots(),
            [
                ep("10.0.0.1"),
                ep("10.0.0.1"),
                ep("10.0.0.1"),
                ep("10.0.0.2")
            ]
        );
        fail(&c, "10.0.0.1");
        assert_eq!(c.kernel_slots(), [ep("10.0.0.2")]);
    }

    #[test]
    fn when_the_best_priority_is_ejected_the_next_takes_over() {
        let c = cluster(&["10.0.0.1"]);
        // One host: its weight of 3 reduces to 1.
        assert_eq!(c.kernel_slots(), [ep("10.0.0.1")]);
        fail(&c, "10.0.0.1");
        assert_eq!(c.kernel_slots(), [ep("10.0.1.1")]);
        // A success elsewhere changes nothing; un-ejection waits for a tick.
        let west = c.host_by_addr(ep("10.0.1.1")).unwrap();
        c.record(&west, Outcome::Success, None);
        assert_eq!(c.kernel_slots(), [ep("10.0.1.1")]);
        assert!(c.host_by_addr(ep("10.9.9.9")).is_none());
    }

    #[test]
    fn huge_weights_are_reduced() {
        let mut c = cluster(&["10.0.0.1", "10.0.0.2"]);
        c.service.endpoints[0].weight = 3_000_000;
        c.service.endpoints[1].weight = 1_000_000;
        assert_eq!(
            c.kernel_slots(),
            [
                ep("10.0.0.1"),
                ep("10.0.0.1"),
                ep("10.0.0.1"),
                ep("10.0.0.2")
            ]
        );
        c.service.endpoints[0].weight = u32::MAX;
        c.service.endpoints[1].weight = 1;
        let slots = c.kernel_slots();
        assert!(slots.len() <= 1025, "{}", slots.len());
        assert_eq!(slots.iter().filter(|a| **a == ep("10.0.0.2")).count(), 1);
    }
}
