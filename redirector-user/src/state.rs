//! The daemon's state, apart from any one consumer of it: the node's
//! settings with every default filled in, the clusters built from one
//! config (a [`Generation`], with its DNS watches and outlier timers), and
//! the live service table (VIP:port → cluster) that the proxy, the DNS
//! responder, the health publisher and the admin server read.
//!
//! Data flows one way: config → state → proxy, DNS, datapath. A reload
//! builds a complete new generation next to the old one, carrying over
//! resolved addresses and outlier state ([`Cluster::adopt`]); nothing of
//! the running one changes until the new one is swapped in, so a reload
//! rejected half-way leaves everything as it was (the kernel's service
//! maps too: they are replaced all or nothing, `datapath/maps.rs`, before
//! the swap).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::{sync::Notify, task::JoinHandle};
use tracing::info;

use crate::{
    cluster::Cluster,
    config::{self, Config, NodeSettings},
    kube,
    metrics::Metrics,
    proxy::Limits,
    resolve::{self, Resolve},
    sys,
    topology::Locality,
};

pub(crate) const DEFAULT_LISTEN_PORT: u16 = 15001;
pub(crate) const DEFAULT_DNS_PORT: u16 = 15053;
pub(crate) const DEFAULT_ADMIN_PORT: u16 = 15000;
pub(crate) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/redirector";

/// Node settings with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Node {
    pub(crate) locality: Locality,
    /// The locality the node's Kubernetes labels gave at start, used when
    /// neither a flag nor the file sets one.
    pub(crate) cluster_locality: Option<Locality>,
    pub(crate) cgroup: PathBuf,
    pub(crate) listen: SocketAddrV4,
    /// The DNS responder; `None` when capture is off (`dnsPort: 0`).
    pub(crate) dns: Option<SocketAddrV4>,
    /// The admin server; `None` when off (`adminPort: 0`).
    pub(crate) admin: Option<SocketAddrV4>,
    pub(crate) pin_dir: PathBuf,
    pub(crate) nameservers: Vec<SocketAddr>,
    /// Connection limits and timeouts (`proxy/limits.rs`), read at start.
    pub(crate) limits: Limits,
}

impl Node {
    pub(crate) fn resolve(
        settings: &NodeSettings,
        cluster_locality: Option<Locality>,
    ) -> anyhow::Result<Self> {
        let cgroup = match &settings.cgroup {
            Some(c) => c.clone(),
            None => {
                sys::cgroup2_root().context("finding the default cgroup (the cgroup v2 root)")?
            }
        };
        let listen_port = settings.listen_port.unwrap_or(DEFAULT_LISTEN_PORT);
        let dns_port = settings.dns_port.unwrap_or(DEFAULT_DNS_PORT);
        let admin_port = settings.admin_port.unwrap_or(DEFAULT_ADMIN_PORT);
        anyhow::ensure!(
            dns_port != listen_port,
            "the DNS responder and the proxy cannot share port {dns_port} (TCP): change \
             --dns-port or --listen-port"
        );
        anyhow::ensure!(
            admin_port == 0 || (admin_port != listen_port && admin_port != dns_port),
            "the admin server cannot share port {admin_port} (TCP) with the proxy or the DNS \
             responder: change --admin-port"
        );
        Ok(Self {
            locality: settings
                .locality
                .clone()
                .or_else(|| cluster_locality.clone())
                .unwrap_or_default(),
            cluster_locality,
            cgroup,
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, listen_port),
            dns: (dns_port != 0).then(|| SocketAddrV4::new(Ipv4Addr::LOCALHOST, dns_port)),
            admin: (admin_port != 0).then(|| SocketAddrV4::new(Ipv4Addr::LOCALHOST, admin_port)),
            pin_dir: settings
                .pin_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            nameservers: settings.nameservers.clone(),
            limits: Limits::resolve(&settings.limits),
        })
    }
}

/// Reads the config at `path` and the node settings it gives, flags in
/// `overrides` winning.
pub(crate) fn load(
    path: &Path,
    overrides: &NodeSettings,
    cluster_locality: Option<Locality>,
) -> anyhow::Result<(Config, Node)> {
    let config = config::load_file(path, overrides)?;
    let node = Node::resolve(&config.node, cluster_locality)?;
    Ok((config, node))
}

/// The node's locality from its Kubernetes labels, when running in a
/// cluster and the config sets none (flags and `NodeConfig` win).
pub(crate) async fn cluster_locality(config: &Config) -> anyhow::Result<Option<Locality>> {
    if config.node.locality.is_some() {
        return Ok(None);
    }
    let found = kube::node_locality(&kube::ProcessEnv).await.context(
        "reading this node's locality from its Kubernetes labels (or set it with --locality)",
    )?;
    Ok(found.map(|n| {
        info!(
            node = %n.node, locality = %n.locality,
            "locality from the node's labels (topology.kubernetes.io/region, zone, topology.istio.io/subzone)"
        );
        n.locality
    }))
}

/// Logs the effective config: the node's settings, then every service.
pub(crate) fn log_effective(config: &Config, node: &Node) {
    info!(
        locality = %node.locality, cgroup = %node.cgroup.display(), listen = %node.listen,
        dns = %node.dns.map_or("off".to_owned(), |d| d.to_string()),
        admin = %node.admin.map_or("off".to_owned(), |a| a.to_string()),
        pin_dir = %node.pin_dir.display(), vip_range = %config.vip_range,
        vip_range6 = %config.vip_range6,
        nameservers = ?node.nameservers, services = config.services.len(), "effective config"
    );
    for s in &config.services {
        let endpoints: Vec<String> = s
            .endpoints
            .iter()
            .map(|e| format!("{}:{}@{}", e.address, e.port, e.locality))
            .collect();
        info!(
            host = %s.host, port = s.port.number, protocol = ?s.port.protocol,
            vip = %s.vip, vip_source = if s.vip_allocated { "allocated" } else { "addresses" },
            vip6 = %s.vip6,
            ?endpoints, outlier_detection = ?s.policy.outlier, datapath = %s.datapath,
            connection_pool = ?s.policy.connection_pool,
            tls = s.policy.tls.origination().map_or("DISABLE", |o| o.mode()),
            "service {} -> {}:{}", s.host, s.vip, s.port.number
        );
    }
}

/// VIP:port → the cluster that serves it.
pub(crate) type ServiceTable = HashMap<SocketAddrV4, Arc<Cluster>>;

/// The live service table, swapped as a whole when a reload is applied.
#[derive(Clone, Default)]
pub(crate) struct Services(Arc<RwLock<Arc<ServiceTable>>>);

impl Services {
    pub(crate) fn new(table: Arc<ServiceTable>) -> Self {
        Self(Arc::new(RwLock::new(table)))
    }

    /// The table in force now.
    pub(crate) fn current(&self) -> Arc<ServiceTable> {
        self.0.read().expect("services lock").clone()
    }

    pub(crate) fn set(&self, table: Arc<ServiceTable>) {
        *self.0.write().expect("services lock") = table;
    }
}

/// Everything built from one config: its clusters and their tasks (DNS
/// watches of endpoint names, outlier-detection timers), which stop when
/// the generation is dropped.
pub(crate) struct Generation {
    pub(crate) config: Config,
    pub(crate) node: Node,
    pub(crate) services: Arc<ServiceTable>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Generation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Generation {
    /// Builds the clusters of `config`. Each cluster is numbered by its
    /// service's position plus one (the kernel's service id, see
    /// `datapath::service_entries`); one that replaces a cluster of
    /// `previous` (same host and port) adopts its resolved addresses and
    /// outlier state, which leaves `previous` as it was. `notify` wakes
    /// the health publisher when a cluster changes.
    pub(crate) fn build(
        config: Config,
        node: Node,
        notify: &Arc<Notify>,
        previous: Option<&Generation>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let resolver: Arc<dyn Resolve> = Arc::new(
            resolve::Hickory::new(&node.nameservers).context("setting up the DNS resolver")?,
        );
        let old: HashMap<(&str, u16), &Arc<Cluster>> = previous
            .map(|p| {
                p.services
                    .values()
                    .map(|c| ((c.service.host.as_str(), c.service.port.number), c))
                    .collect()
            })
            .unwrap_or_default();
        let mut services = HashMap::new();
        let mut tasks = Vec::new();
        // DNS name → every (cluster, endpoint index) that uses it.
        let mut names: HashMap<String, Vec<(Arc<Cluster>, usize)>> = HashMap::new();
        for (i, service) in config.services.iter().enumerate() {
            let cluster = Arc::new(Cluster::new(
                i as u32 + 1,
                service.clone(),
                &node.locality,
                notify.clone(),
                metrics,
            ));
            if let Some(prev) = old.get(&(service.host.as_str(), service.port.number)) {
                cluster.adopt(prev);
            }
            for (idx, name) in cluster.dns_endpoints() {
                names.entry(name).or_default().push((cluster.clone(), idx));
            }
            if let Some(interval) = cluster.outlier_interval() {
                let c = cluster.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ticker = tokio::time::interval_at(config::deadline(interval), interval);
                    loop {
                        ticker.tick().await;
                        c.tick();
                    }
                }));
            }
            services.insert(SocketAddrV4::new(service.vip, service.port.number), cluster);
        }
        for (name, users) in names {
            let stats = metrics.dns(&name);
            tasks.push(resolve::watch(resolver.clone(), name, move |refresh| {
                stats.refreshed(!matches!(refresh, resolve::Refresh::Failed));
                for (cluster, idx) in &users {
                    match &refresh {
                        resolve::Refresh::Changed(addrs) => {
                            cluster.set_resolved(*idx, addrs.clone());
                            cluster.dns_refreshed(*idx, true);
                        }
                        resolve::Refresh::Unchanged => cluster.dns_refreshed(*idx, true),
                        resolve::Refresh::Failed => cluster.dns_refreshed(*idx, false),
                    }
                }
            }));
        }
        Ok(Self {
            config,
            node,
            services: Arc::new(services),
            tasks,
        })
    }

    /// Whether some endpoint name still waits for its first DNS answer.
    pub(crate) fn awaiting_first_answer(&self) -> bool {
        self.services.values().any(|c| c.awaiting_first_answer())
    }
}
