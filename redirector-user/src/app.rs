//! The daemon: wire config, kernel datapath, proxy, DNS and outlier timers
//! together, and keep them consistent across reloads.
//!
//! Start-up order leaves no gap: load the programs (opening the maps a
//! previous daemon pinned, if any), bind the listener, fill the maps, then
//! attach, replacing the previous daemon's programs (see `bpf.rs`). A reload
//! (the config file changed, see `watch.rs`, or SIGHUP) builds a complete
//! new generation of clusters next to the old one, carries over resolved
//! addresses, outlier state, and (where the settings allow) TLS sessions
//! and pooled connections, and swaps it in; requests on open app
//! connections follow it from their next request on. An invalid file is
//! logged and the running config stays in force, never half-applied. SIGTERM and SIGINT stop the daemon and leave the kernel
//! datapath attached, serving connects without the proxy, for the next
//! daemon to take over; `redirector cleanup` removes it.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use redirector_common::{
    HOST_LEN, PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS, SVC_FAIL_OPEN, SVC_INFO_KERNEL_PATH,
    SVC_KERNEL_PATH, SVC_TLS_MUTUAL, SVC_TLS_ORIGINATION, SVC_VIP_AUTO, ServiceInfo, ServiceKey,
    ServiceKey6, ServiceValue, write_str,
};
use serde::Serialize;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    admin::{self, Admin},
    bpf::{self, BpfError, Datapath, DatapathOptions, PinError, ServiceMapEntry},
    cluster::Cluster,
    config::{self, Config, DatapathMode, NodeSettings, Protocol, Service},
    dns, handover, health, kube,
    locality::Locality,
    metrics::Metrics,
    privs,
    proxy::{self, Route, Routes},
    resolve::{self, Resolve},
    sys,
    tls::TlsOrigin,
    watch,
};

pub const DEFAULT_LISTEN_PORT: u16 = 15001;
pub const DEFAULT_DNS_PORT: u16 = 15053;
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/redirector";

pub struct RunOptions {
    pub config: PathBuf,
    /// From flags; they win over the file's NodeConfig.
    pub overrides: NodeSettings,
    /// Attach the redirect but leave the listener to another proxy (the
    /// benchmark puts Envoy, nginx and HAProxy behind the same hook).
    pub datapath_only: bool,
    /// How long a stopping daemon lets open connections finish.
    pub drain_timeout: Duration,
    /// When another daemon holds the pin directory, ask it to hand over
    /// its listeners (see `handover.rs`) instead of failing.
    pub take_over: bool,
    /// Where readiness is kept for `redirector ready` (see `admin.rs`).
    pub ready_file: Option<PathBuf>,
}

/// Node settings with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Node {
    locality: Locality,
    /// The locality the node's Kubernetes labels gave at start, used when
    /// neither a flag nor the file sets one.
    cluster_locality: Option<Locality>,
    cgroup: PathBuf,
    listen: SocketAddrV4,
    /// The DNS responder; `None` when capture is off (`dnsPort: 0`).
    dns: Option<SocketAddrV4>,
    /// The admin server; `None` when off (`adminPort: 0`).
    admin: Option<SocketAddrV4>,
    pin_dir: PathBuf,
    nameservers: Vec<SocketAddr>,
}

impl Node {
    fn resolve(
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
        })
    }
}

/// Everything built from one config: clusters, routes and their tasks.
struct Generation {
    config: Config,
    node: Node,
    routes: Arc<HashMap<SocketAddrV4, Arc<Route>>>,
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
    /// Takes over from `previous`, now that `self` is in force: each route
    /// its predecessor's pooled connections (see `Route::take_over`), and
    /// services that are gone close theirs.
    fn take_over(&self, previous: &Generation) {
        let key = |r: &Route| {
            (
                r.cluster.service.host.clone(),
                r.cluster.service.port.number,
            )
        };
        for old in previous.routes.values() {
            match self.routes.values().find(|r| key(r) == key(old)) {
                Some(new) => new.take_over(old),
                None => old.pool.hand_over(None, |_| false),
            }
        }
    }

    fn build(
        config: Config,
        node: Node,
        notify: &Arc<Notify>,
        previous: Option<&Generation>,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let resolver: Arc<dyn Resolve> = Arc::new(
            resolve::Hickory::new(&node.nameservers).context("setting up the DNS resolver")?,
        );
        let old: HashMap<(&str, u16), &Arc<Route>> = previous
            .map(|p| {
                p.routes
                    .values()
                    .map(|r| {
                        let s = &r.cluster.service;
                        ((s.host.as_str(), s.port.number), r)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut routes = HashMap::new();
        let mut tasks = Vec::new();
        // DNS name → every (cluster, endpoint index) that uses it.
        let mut names: HashMap<String, Vec<(Arc<Cluster>, usize)>> = HashMap::new();
        for (i, service) in config.services.iter().enumerate() {
            let before = old.get(&(service.host.as_str(), service.port.number));
            let mut tls =
                TlsOrigin::new(&service.policy.tls, service.port.protocol == Protocol::Http)
                    .with_context(|| format!("service {}:{}", service.host, service.port.number))?;
            // Unchanged TLS keeps its session cache, and so its pooled
            // connections (see Route::succeeding).
            if let (Some(new), Some(prev)) = (&tls, before.and_then(|r| r.tls.as_ref()))
                && new.same_as(prev)
            {
                tls = Some(prev.clone());
            }
            let cluster = Arc::new(Cluster::new(
                i as u32 + 1,
                service.clone(),
                &node.locality,
                notify.clone(),
                metrics,
            ));
            if let Some(prev) = before {
                cluster.adopt(&prev.cluster);
            }
            for (idx, name) in cluster.dns_endpoints() {
                names.entry(name).or_default().push((cluster.clone(), idx));
            }
            if let Some(interval) = cluster.outlier_interval() {
                let c = cluster.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                    loop {
                        ticker.tick().await;
                        c.tick();
                    }
                }));
            }
            let vip = SocketAddrV4::new(service.vip, service.port.number);
            routes.insert(
                vip,
                Arc::new(Route::succeeding(cluster, tls, before.map(|r| &***r))),
            );
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
            routes: Arc::new(routes),
            tasks,
        })
    }
}

/// The kernel's view of the services: VIP:port → service id (the id is
/// the position in `services` plus one, as `Generation::build` numbers
/// clusters), with display data for `redirector endpoints`.
fn service_entries(services: &[Service]) -> Vec<ServiceMapEntry> {
    services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let tls = s.policy.tls.origination();
            let kernel = s.datapath == DatapathMode::Kernel;
            let mut info = ServiceInfo {
                vip_be: u32::from(s.vip).to_be(),
                port_be: s.port.number.to_be(),
                protocol: match s.port.protocol {
                    Protocol::Http => PROTO_HTTP,
                    Protocol::Https => PROTO_HTTPS,
                    Protocol::Tcp => PROTO_TCP,
                    Protocol::Tls => PROTO_TLS,
                },
                flags: if s.vip_allocated { SVC_VIP_AUTO } else { 0 }
                    | match tls {
                        None => 0,
                        Some(o) if o.client.is_some() => SVC_TLS_ORIGINATION | SVC_TLS_MUTUAL,
                        Some(_) => SVC_TLS_ORIGINATION,
                    }
                    | if kernel { SVC_INFO_KERNEL_PATH } else { 0 },
                endpoint_count: s.endpoints.len() as u32,
                _pad: 0,
                host: [0; HOST_LEN],
            };
            write_str(&mut info.host, &s.host);
            ServiceMapEntry {
                key: ServiceKey {
                    vip_be: info.vip_be,
                    port_be: info.port_be,
                    _pad: 0,
                },
                key6: ServiceKey6 {
                    vip6_be: crate::bpf::ip6_words(s.vip6),
                    port_be: info.port_be,
                    _pad: 0,
                },
                value: ServiceValue {
                    service_id: i as u32 + 1,
                    flags: if kernel { SVC_KERNEL_PATH } else { 0 }
                        | if health::has_slots(s) {
                            SVC_FAIL_OPEN
                        } else {
                            0
                        },
                },
                info,
            }
        })
        .collect()
}

fn log_config(config: &Config, node: &Node) {
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

/// What `redirector check` adds to validation: the TLS files each service
/// names, read and parsed as the daemon would, every problem at once.
pub fn check_tls_files(config: &Config) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    for s in &config.services {
        if let Err(e) = TlsOrigin::new(&s.policy.tls, s.port.protocol == Protocol::Http) {
            let e = e.to_string();
            // Ports of one host share their rule's files.
            if !problems.contains(&e) {
                problems.push(e);
            }
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

fn load(
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
async fn cluster_locality(config: &Config) -> anyhow::Result<Option<Locality>> {
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

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The most basic problem first: without privileges nothing else matters.
    crate::bpf::check_privileges()?;
    let config = config::load_file(&opts.config, &opts.overrides)?;
    let node = Node::resolve(&config.node, cluster_locality(&config).await?)?;
    log_config(&config, &node);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let mut admin = Admin::new(registry);
    if let Some(path) = &opts.ready_file {
        admin = admin.with_ready_file(path.clone());
    }
    let admin = Arc::new(admin);
    if opts.datapath_only {
        let (datapath, _) = load_datapath(&opts, &node).await?;
        let _admin_task = match node.admin {
            Some(addr) => Some(serve_admin(admin::bind(addr.into()).await?, &admin)),
            None => None,
        };
        let result = redirect_only(&config, node, &datapath, &admin).await;
        datapath.release();
        return result;
    }
    serve(&opts, config, node, &admin, &metrics).await
}

/// The admin server on `listener`: it answers 503 until the daemon is
/// ready, and from the start on, so a port in use fails the start before
/// anything is attached.
fn serve_admin(listener: tokio::net::TcpListener, admin: &Arc<Admin>) -> AbortOnDrop {
    info!(
        addr = ?listener.local_addr().ok(),
        "admin server: /ready, /metrics, /config_dump"
    );
    AbortOnDrop(vec![tokio::spawn(admin::serve(listener, admin.clone()))])
}

/// Loads the datapath, claiming the pin directory; with `--take-over`, a
/// daemon holding it is asked for its listeners first (`handover.rs`), and
/// those come back too.
async fn load_datapath(
    opts: &RunOptions,
    node: &Node,
) -> anyhow::Result<(Datapath, Option<handover::Handed>)> {
    let options = || DatapathOptions {
        cgroup: node.cgroup.clone(),
        pin_dir: node.pin_dir.clone(),
        proxy: node.listen,
        // With no responder of ours, DNS is left alone.
        dns: node.dns.filter(|_| !opts.datapath_only),
        proxy6: Some(Ipv6Addr::LOCALHOST),
        dns6: Some(Ipv6Addr::LOCALHOST),
    };
    let (datapath, handed) = match Datapath::load(options()) {
        Err(BpfError::Pins(PinError::InUse { pid, .. })) if opts.take_over => {
            let path = bpf::handover_path(&node.pin_dir);
            info!(
                "pid {pid} holds {}: asking it to hand its listeners over ({})",
                node.pin_dir.display(),
                path.display()
            );
            let handed = tokio::task::spawn_blocking(move || handover::request(&path))
                .await
                .context("the handover task")?
                .with_context(|| {
                    format!(
                        "pid {pid} holds {} and did not hand over",
                        node.pin_dir.display()
                    )
                })?;
            info!(
                from = handed.pid, sockets = ?handed.describe(),
                "took over the listeners; the previous daemon stopped accepting"
            );
            (Datapath::load(options())?, Some(handed))
        }
        other => (other?, None),
    };
    if let Some(pid) = datapath.previous_pid() {
        info!(
            "taking over the datapath pid {pid} left attached in {}",
            node.pin_dir.display()
        );
    }
    Ok((datapath, handed))
}

/// The effective config and live endpoint health, for `/config_dump`.
struct Live {
    /// `{"node": …, "config": …}` of the generation in force.
    effective: RwLock<serde_json::Value>,
    routes: Routes,
}

impl Live {
    fn effective(config: &Config, node: &Node) -> serde_json::Value {
        serde_json::json!({ "node": node, "config": config })
    }
}

impl admin::ConfigDump for Live {
    fn config_dump(&self) -> serde_json::Value {
        let mut dump = self.effective.read().expect("dump lock").clone();
        let routes = self.routes.read().expect("routes lock").clone();
        let mut health: Vec<(String, serde_json::Value)> = routes
            .values()
            .map(|r| {
                let c = &r.cluster;
                let service = format!("{}:{}", c.service.host, c.service.port.number);
                let endpoints: Vec<serde_json::Value> = c
                    .snapshot()
                    .into_iter()
                    .map(|h| {
                        serde_json::json!({
                            "address": h.address,
                            "addr": h.addr.map(|a| a.to_string()),
                            "locality": h.locality.to_string(),
                            "priority": h.priority,
                            "weight": h.weight,
                            "ejected": h.ejected_until.is_some(),
                            "ejections": h.ejections,
                            "consecutive_5xx": h.consecutive_5xx,
                            "dns_failures": h.dns.failures,
                            "last_error": h.last_error.map(|(_, e)| e),
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "service": service,
                    "cluster": c.name,
                    "vip": SocketAddrV4::new(c.service.vip, c.service.port.number).to_string(),
                    "endpoints": endpoints,
                });
                (service, v)
            })
            .collect();
        health.sort_by(|a, b| a.0.cmp(&b.0));
        dump["health"] = health.into_iter().map(|(_, v)| v).collect();
        dump
    }
}

/// Attached and listening: what the daemon no longer needs goes, then it
/// says it is ready.
fn ready(admin: &Admin) -> anyhow::Result<()> {
    privs::drop_after_start().context("dropping capabilities after start")?;
    admin.set_ready();
    Ok(())
}

/// `--datapath-only`: the kernel side alone, redirecting the config's VIPs
/// to `--listen-port`, where some other proxy listens.
async fn redirect_only(
    config: &Config,
    node: Node,
    datapath: &Datapath,
    admin: &Admin,
) -> anyhow::Result<()> {
    datapath.set_services(&service_entries(&config.services))?;
    datapath.attach()?;
    admin.set_config_dump(Arc::new(Live {
        effective: RwLock::new(Live::effective(config, &node)),
        routes: Routes::default(),
    }));
    ready(admin)?;
    info!(pid = std::process::id(), "redirector ready (datapath only)");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The longest start-up waits for endpoint names' first DNS answers
/// (resolver timeouts are shorter, so a dead resolver fails well before).
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(5);

async fn serve(
    opts: &RunOptions,
    config: Config,
    node: Node,
    admin: &Arc<Admin>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let notify = Arc::new(Notify::new());
    let current = Generation::build(config, node, &notify, None, metrics)?;
    let routes: Routes = Arc::new(RwLock::new(current.routes.clone()));
    // Endpoint names get their first answer (or failure) before the
    // listener opens: during a takeover the kernel keeps failing open to the
    // previous daemon's slot tables meanwhile, where a listening proxy
    // would answer "no healthy upstream" for names it has not resolved yet.
    let deadline = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
    while current
        .routes
        .values()
        .any(|r| r.cluster.awaiting_first_answer())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Routes and first answers are ready before the pin directory is
    // claimed: a daemon handing over stops accepting only once this one is
    // about to.
    let (datapath, mut handed) = load_datapath(opts, &current.node).await?;
    let datapath = Arc::new(datapath);
    let result = serve_on(
        opts,
        current,
        routes,
        notify,
        &datapath,
        &mut handed,
        (admin, metrics),
    )
    .await;
    datapath.release();
    result
}

async fn serve_on(
    opts: &RunOptions,
    mut current: Generation,
    routes: Routes,
    notify: Arc<Notify>,
    datapath: &Arc<Datapath>,
    handed: &mut Option<handover::Handed>,
    (admin, metrics): (&Arc<Admin>, &Metrics),
) -> anyhow::Result<()> {
    // The routes exist before the listener: once it is bound, programs a
    // previous daemon left attached send connects to it. A predecessor's
    // listeners, handed over, never stopped listening.
    let listen6: SocketAddr =
        SocketAddrV6::new(Ipv6Addr::LOCALHOST, current.node.listen.port(), 0, 0).into();
    let listener = match handed_socket(handed, handover::Kind::Proxy, current.node.listen.into())? {
        Some(fd) => adopt_listener(fd)?,
        None => proxy::bind(current.node.listen.into()).await?,
    };
    let listener6 = match handed_socket(handed, handover::Kind::Proxy, listen6)? {
        Some(fd) => Some(adopt_listener(fd)?),
        None => proxy::bind_optional(listen6).await?,
    };
    let ipv6 = listener6.is_some();
    let admin_listener = match current.node.admin {
        Some(addr) => Some(
            match handed_socket(handed, handover::Kind::Admin, addr.into())? {
                Some(fd) => adopt_listener(fd)?,
                None => admin::bind(addr.into()).await?,
            },
        ),
        None => None,
    };
    // Likewise the DNS responder: bound, programs send DNS to it.
    let responder = match current.node.dns {
        Some(addr) => adopt_or_bind_responder(handed, addr.into()).await?,
        None => None,
    };
    let responder6 = match current.node.dns {
        Some(addr) if ipv6 => {
            adopt_or_bind_responder(
                handed,
                SocketAddrV6::new(Ipv6Addr::LOCALHOST, addr.port(), 0, 0).into(),
            )
            .await?
        }
        _ => None,
    };
    // What was handed and is not wanted here (the ports changed) closes.
    handed.take();
    // Duplicates of the listening sockets, for a successor.
    let mut listening = handover::Listening::default();
    for l in std::iter::once(&listener).chain(&listener6) {
        listening
            .add(handover::Kind::Proxy, l.as_fd())
            .context("keeping the proxy listener for a handover")?;
    }
    if let Some(l) = &admin_listener {
        listening
            .add(handover::Kind::Admin, l.as_fd())
            .context("keeping the admin listener for a handover")?;
    }
    for r in responder.iter().chain(&responder6) {
        let (udp, tcp) = r.fds();
        listening
            .add(handover::Kind::DnsUdp, udp)
            .and_then(|()| listening.add(handover::Kind::DnsTcp, tcp))
            .context("keeping the DNS responder for a handover")?;
    }
    let successors = handover::Server::bind(bpf::handover_path(&current.node.pin_dir))?;
    let admin_task = admin_listener.map(|l| serve_admin(l, admin));
    datapath.set_services(&service_entries(&current.config.services))?;
    health::publish_all(datapath, &routes);
    let drain = proxy::Drain::default();
    let mut accept = vec![tokio::spawn(proxy::serve(
        listener,
        datapath.clone(),
        routes.clone(),
        drain.clone(),
    ))];
    if let Some(listener6) = listener6 {
        accept.push(tokio::spawn(proxy::serve(
            listener6,
            datapath.clone(),
            routes.clone(),
            drain.clone(),
        )));
    }
    let accept = AbortOnDrop(accept);
    let mut tasks = vec![tokio::spawn(health::publish(
        datapath.clone(),
        routes.clone(),
        notify.clone(),
    ))];
    if let Some(responder) = responder {
        let hosts = Arc::new(dns::HostTable::new(routes.clone(), ipv6));
        if let Some(responder6) = responder6 {
            tasks.push(tokio::spawn(dns::serve::serve(
                responder6,
                datapath.clone(),
                hosts.clone(),
            )));
        }
        tasks.push(tokio::spawn(dns::serve::serve(
            responder,
            datapath.clone(),
            hosts,
        )));
    }
    if let Some(reader) = datapath.take_outcomes()? {
        tasks.push(tokio::spawn(health::consume_outcomes(
            reader,
            routes.clone(),
        )));
    }
    let guard = AbortOnDrop(tasks);
    datapath.attach()?;
    for s in &current.config.services {
        info!(
            "{}:{} is served at VIP {}:{} and [{}]:{}",
            s.host, s.port.number, s.vip, s.port.number, s.vip6, s.port.number
        );
    }
    if let Some(addr) = current.node.dns {
        info!(
            "DNS capture on: configured hosts resolve to their VIPs, other names go to the \
             nameserver each app asked (responder {addr})"
        );
    }
    let live = Arc::new(Live {
        effective: RwLock::new(Live::effective(&current.config, &current.node)),
        routes: routes.clone(),
    });
    admin.set_config_dump(live.clone());
    ready(admin)?;
    info!(pid = std::process::id(), "redirector ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel(1);
    let mut watching = watch_files(opts, &current, &changed_tx);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => info!("SIGHUP: reloading {}", opts.config.display()),
            Some(path) = changed.recv() => info!("{} changed: reloading", path.display()),
            successor = successors.next() => {
                let pid = successor.pid;
                info!("pid {pid} asks for the listeners: handing over");
                if let Err(e) = successor.offer(&listening) {
                    error!("handing over to pid {pid} failed, serving on: {e}");
                    continue;
                }
                // Nothing of ours writes the maps from here on, and the
                // successor may claim them once the connection closes.
                admin.set_draining();
                drop((accept, guard, watching, admin_task));
                datapath.hand_over();
                drop(successor);
                return handed_over(opts, pid, drain).await;
            }
        }
        match reload(opts, &current, &notify, metrics) {
            Ok(next) => {
                metrics.config_reloads.inc();
                *live.effective.write().expect("dump lock") =
                    Live::effective(&next.config, &next.node);
                next.take_over(&current);
                // Routes first, so a newly published VIP always has one.
                *routes.write().expect("routes lock") = next.routes.clone();
                if let Err(e) = datapath.set_services(&service_entries(&next.config.services)) {
                    error!("publishing the reloaded services to the kernel: {e}");
                }
                current = next;
                notify.notify_one();
                // What was just read is in force: watch from there, with
                // the TLS files the new config names.
                watching = watch_files(opts, &current, &changed_tx);
                while changed.try_recv().is_ok() {}
                info!(services = current.config.services.len(), "config reloaded");
            }
            Err(e) => {
                metrics.config_reload_rejections.inc();
                error!("config reload rejected, keeping the running config: {e:#}")
            }
        }
    }
    // Not ready from now on: the readiness probe sees the drain.
    admin.set_draining();
    stop(opts, &current, datapath, accept, drain).await;
    Ok(())
}

/// A socket of `kind` on `addr` a predecessor handed over, checked.
fn handed_socket(
    handed: &mut Option<handover::Handed>,
    kind: handover::Kind,
    addr: SocketAddr,
) -> anyhow::Result<Option<OwnedFd>> {
    let Some(fd) = handed.as_mut().and_then(|h| h.take(kind, addr)) else {
        return Ok(None);
    };
    handover::check(kind, &fd, addr)
        .with_context(|| format!("adopting the handed-over {kind:?} socket on {addr}"))?;
    Ok(Some(fd))
}

fn adopt_listener(fd: OwnedFd) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
        .context("adopting the handed-over proxy listener")
}

/// The DNS responder on `addr`: the predecessor's two sockets if it handed
/// both over, else bound afresh (on `[::1]` only if the node has IPv6).
async fn adopt_or_bind_responder(
    handed: &mut Option<handover::Handed>,
    addr: SocketAddr,
) -> anyhow::Result<Option<dns::serve::Responder>> {
    let udp = handed_socket(handed, handover::Kind::DnsUdp, addr)?;
    let tcp = handed_socket(handed, handover::Kind::DnsTcp, addr)?;
    // Half a responder is none: it closes here, and both are bound afresh.
    if let (Some(udp), Some(tcp)) = (udp, tcp) {
        return Ok(Some(
            dns::serve::Responder::adopt(udp.into(), tcp.into())
                .context("adopting the handed-over DNS responder")?,
        ));
    }
    Ok(match addr {
        SocketAddr::V4(a) => Some(dns::serve::bind(a).await?),
        SocketAddr::V6(a) => dns::serve::bind6(a).await?,
    })
}

/// After a handover: the successor accepts everything new; connections
/// open here finish (HTTP ones after their request in flight, as on
/// SIGTERM), and the process waits for SIGTERM to exit, so that a
/// supervisor does not restart it (a Kubernetes rolling update with
/// `maxSurge` deletes the old pod once the new one is ready).
async fn handed_over(opts: &RunOptions, successor: u32, drain: proxy::Drain) -> anyhow::Result<()> {
    drain.tracker.close();
    drain.stop.cancel();
    info!(
        successor,
        open_connections = drain.tracker.len(),
        "handed the listeners and the datapath over to pid {successor}; draining, then waiting \
         for SIGTERM"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signalled = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::pin!(signalled);
    tokio::select! {
        () = drain.tracker.wait() => {
            info!("drained; waiting for SIGTERM");
            signalled.await;
        }
        () = &mut signalled => {
            match tokio::time::timeout(opts.drain_timeout, drain.tracker.wait()).await {
                Ok(()) => info!("drained"),
                Err(_) => warn!(
                    still_open = drain.tracker.len(),
                    "drain timeout reached; closing the remaining connections"
                ),
            }
        }
    }
    info!("exiting");
    Ok(())
}

/// How long the listener keeps accepting after new connects stopped coming
/// to it: connects the kernel had already sent it are in its queue.
const ACCEPT_GRACE: Duration = Duration::from_millis(200);

/// SIGTERM/SIGINT: new connects stop coming to the proxy (every service
/// that can skip it goes straight to an endpoint from its slot table, as
/// when no daemon runs; a TLS-originating one cannot, and its connects are
/// refused until the next daemon listens), the listener closes once what
/// was already queued is accepted, HTTP connections finish the request in
/// flight and close, and TCP connections run on; after
/// `--drain-timeout` whatever is still open is closed with the process.
/// The kernel datapath stays attached, for the next daemon to take over.
async fn stop(
    opts: &RunOptions,
    current: &Generation,
    datapath: &Datapath,
    accept: AbortOnDrop,
    drain: proxy::Drain,
) {
    let mut entries = service_entries(&current.config.services);
    for e in &mut entries {
        if e.value.flags & SVC_FAIL_OPEN != 0 {
            e.value.flags |= SVC_KERNEL_PATH;
        }
    }
    if let Err(e) = datapath.set_services(&entries) {
        warn!("sending new connects past the stopping proxy: {e}");
    }
    tokio::time::sleep(ACCEPT_GRACE).await;
    drop(accept);
    drain.tracker.close();
    drain.stop.cancel();
    let open = drain.tracker.len();
    info!(
        open_connections = open,
        timeout = ?opts.drain_timeout,
        "stopping: listener closed, draining open connections"
    );
    match tokio::time::timeout(opts.drain_timeout, drain.tracker.wait()).await {
        Ok(()) => info!("drained; exiting"),
        Err(_) => warn!(
            still_open = drain.tracker.len(),
            "drain timeout reached; closing the remaining connections"
        ),
    }
}

/// Watches the config file and the TLS files `generation` was built from;
/// a change of any reloads (the task stops when the guard is dropped).
fn watch_files(
    opts: &RunOptions,
    generation: &Generation,
    changed: &tokio::sync::mpsc::Sender<PathBuf>,
) -> AbortOnDrop {
    let tls_files = generation
        .config
        .services
        .iter()
        .filter_map(|s| s.policy.tls.origination())
        .flat_map(|o| {
            let client = o
                .client
                .iter()
                .flat_map(|c| [&c.certificate, &c.private_key]);
            o.ca_certificates.iter().chain(&o.ca_crl).chain(client)
        })
        .map(|f| f.path.clone());
    let files = std::iter::once(opts.config.clone()).chain(tls_files);
    AbortOnDrop(vec![tokio::spawn(watch::run(
        watch::Watch::new(files),
        changed.clone(),
    ))])
}

fn reload(
    opts: &RunOptions,
    current: &Generation,
    notify: &Arc<Notify>,
    metrics: &Metrics,
) -> anyhow::Result<Generation> {
    let (config, mut node) = load(
        &opts.config,
        &opts.overrides,
        current.node.cluster_locality.clone(),
    )?;
    // These are bound to kernel objects and sockets made at start.
    for (what, changed) in [
        ("cgroup", node.cgroup != current.node.cgroup),
        ("listenPort", node.listen != current.node.listen),
        ("dnsPort", node.dns != current.node.dns),
        ("adminPort", node.admin != current.node.admin),
        ("pinDir", node.pin_dir != current.node.pin_dir),
    ] {
        if changed {
            warn!("{what} changed in the config; it takes effect on restart only");
        }
    }
    node.cgroup = current.node.cgroup.clone();
    node.listen = current.node.listen;
    node.dns = current.node.dns;
    node.admin = current.node.admin;
    node.pin_dir = current.node.pin_dir.clone();
    log_config(&config, &node);
    Generation::build(config, node, notify, Some(current), metrics)
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What `redirector check` prints: every service with its VIP and
/// endpoints, as the daemon would serve them.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "config OK: {} service(s), VIP ranges {} and {}\n",
        config.services.len(),
        config.vip_range,
        config.vip_range6
    );
    for s in &config.services {
        let _ = writeln!(
            out,
            "\n{}:{} ({}) VIP {} ({}) from ServiceEntry {}{}",
            s.host,
            s.port.number,
            s.port.protocol,
            s.vip,
            if s.vip_allocated {
                "allocated"
            } else {
                "addresses"
            },
            s.service_entry,
            s.destination_rule
                .as_ref()
                .map(|d| format!(", DestinationRule {d}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  IPv6 VIP [{}]:{} ({})",
            s.vip6,
            s.port.number,
            if s.vip6_allocated {
                "allocated"
            } else {
                "addresses"
            }
        );
        if s.datapath == DatapathMode::Kernel {
            let _ = writeln!(
                out,
                "  datapath: kernel (connects go straight to an endpoint, no proxy hop)"
            );
        }
        if let Some(o) = &s.policy.outlier {
            let _ = writeln!(
                out,
                "  outlier detection: {} consecutive 5xx, interval {:?}, base ejection {:?}",
                o.consecutive_5xx, o.interval, o.base_ejection_time
            );
            if let Some(n) = o.consecutive_gateway {
                let _ = writeln!(out, "    {n} consecutive gateway errors (502, 503, 504)");
            }
            if o.split_external_local_origin_errors {
                let _ = writeln!(
                    out,
                    "    local-origin failures split: {} consecutive eject",
                    o.consecutive_local_origin
                );
            }
            if let Some(p) = o.max_ejection_percent {
                let _ = writeln!(out, "    max ejection {p}%");
            }
        }
        let pool = &s.policy.connection_pool;
        if *pool != config::ConnectionPoolPolicy::default() {
            let limit = |n: u32| {
                if n == u32::MAX {
                    "unlimited".to_owned()
                } else {
                    n.to_string()
                }
            };
            let _ = writeln!(
                out,
                "  connection pool: connect timeout {:?}, max connections {}, max pending {}, \
                 max retries {}, {} requests per connection, idle timeout {:?}{}",
                pool.connect_timeout,
                limit(pool.max_connections),
                limit(pool.http1_max_pending_requests),
                limit(pool.max_retries),
                if pool.max_requests_per_connection == 0 {
                    "unlimited".to_owned()
                } else {
                    pool.max_requests_per_connection.to_string()
                },
                pool.idle_timeout,
                if pool.tcp_keepalive.is_some() {
                    ", TCP keepalive"
                } else {
                    ""
                }
            );
        }
        if let Some(o) = s.policy.tls.origination() {
            let verify = if o.insecure_skip_verify {
                "NOT VERIFIED (insecureSkipVerify)".to_owned()
            } else {
                let names = match (&o.subject_alt_names[..], &o.sni) {
                    ([], Some(sni)) => sni.clone(),
                    ([], None) => "each endpoint's own name".to_owned(),
                    (sans, _) => format!("one of {}", sans.join(", ")),
                };
                let roots = o
                    .ca_certificates
                    .as_ref()
                    .map_or("the system roots".to_owned(), |f| f.to_string());
                let crl = o
                    .ca_crl
                    .as_ref()
                    .map(|f| format!(", revocation from {f}"))
                    .unwrap_or_default();
                format!("verified against {roots}{crl} for {names}")
            };
            let client = o
                .client
                .as_ref()
                .map(|c| format!(", client certificate {}", c.certificate))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  TLS origination: {}, SNI {}, {verify}{client}",
                o.mode(),
                o.sni.as_deref().unwrap_or("<endpoint name>")
            );
        }
        for e in &s.endpoints {
            let _ = writeln!(
                out,
                "  endpoint {}:{} locality {:?}",
                e.address,
                e.port,
                e.locality.to_string()
            );
        }
    }
    out
}
