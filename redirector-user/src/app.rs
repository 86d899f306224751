//! The daemon's composition root: build everything from the config
//! ([`Running::start`]), then wait for termination
//! ([`Running::wait_termination`], in `lifecycle.rs`).
//!
//! Start-up order leaves no gap: build the clusters and routes and let
//! endpoint names resolve, load the programs (opening the maps a previous
//! daemon pinned, if any), bind or adopt the listeners (`listeners.rs`),
//! fill the maps, then attach, replacing the previous daemon's programs
//! (see `datapath.rs`). A reload (the config file changed, see
//! `watch.rs`, or SIGHUP) builds a complete new generation next to the old
//! one (`state.rs`, `proxy/route.rs`), carrying over resolved addresses,
//! outlier state, and (where the settings allow) TLS sessions and pooled
//! connections, and swaps it in; requests on open app connections follow
//! it from their next request on. An invalid file is logged and the
//! running config stays in force, never half-applied. SIGTERM and SIGINT
//! stop the daemon and leave the kernel datapath attached, serving
//! connects without the proxy, for the next daemon to take over;
//! `redirector cleanup` removes it.

mod carry;
mod cni_socket;
mod datapath_only;
mod discover;
mod lifecycle;
mod listeners;
mod pods;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::{
    admin::{self, Admin, Dump},
    config::{Config, NodeSettings},
    datapath::{self, BpfError, Datapath, DatapathOptions, PinError, service_entries},
    handover,
    metrics::Metrics,
    netns::Helper,
    privs,
    proxy::route::{self, Routes},
    state::{self, Generation, Node, Services},
    sync,
};

pub(crate) struct RunOptions {
    pub(crate) config: PathBuf,
    /// From flags; they win over the file's NodeConfig.
    pub(crate) overrides: NodeSettings,
    /// Attach the redirect but leave the listener to another proxy (the
    /// benchmark puts Envoy, nginx and HAProxy behind the same hook).
    pub(crate) datapath_only: bool,
    /// How long a stopping daemon lets open connections finish.
    pub(crate) drain_timeout: Duration,
    /// When another daemon holds the pin directory, ask it to hand over
    /// its listeners (see `handover.rs`) instead of failing.
    pub(crate) take_over: bool,
    /// Where readiness is kept for `redirector ready` (see `admin.rs`).
    pub(crate) ready_file: Option<PathBuf>,
    /// Where the CNI plugin reaches the daemon; default: see
    /// `cni_socket::path`.
    pub(crate) cni_socket: Option<PathBuf>,
}

/// The longest start-up waits for endpoint names' first DNS answers
/// (resolver timeouts are shorter, so a dead resolver fails well before).
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The most basic problem first: without privileges nothing else matters.
    datapath::check_privileges()?;
    let config = crate::config::load_file(&opts.config, &opts.overrides)?;
    let node = Node::resolve(&config.node, state::cluster_locality(&config).await?)?;
    state::log_effective(&config, &node);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let mut admin = Admin::new(registry);
    if let Some(path) = &opts.ready_file {
        admin = admin.with_ready_file(path.clone());
    }
    let admin = Arc::new(admin);
    if opts.datapath_only {
        return datapath_only::run(&opts, &config, node, &admin).await;
    }
    let running = Running::start(opts, config, node, admin, metrics).await?;
    running.wait_termination().await
}

/// A daemon serving: the generation in force and everything built from it
/// and for it. `lifecycle.rs` keeps it consistent until it stops.
struct Running {
    opts: RunOptions,
    current: Generation,
    /// The live service table (from `current`), read by DNS, the health
    /// publisher and `/config_dump`.
    services: Services,
    /// The proxy's routes (from `current`).
    routes: Routes,
    /// Wakes the health publisher when a cluster changes.
    notify: Arc<Notify>,
    datapath: Arc<Datapath>,
    /// Every network namespace served: the node's and the pods'.
    pods: Arc<pods::Pods>,
    /// The node's own sockets for a successor (admin, CNI), and where
    /// successors ask.
    kept: handover::Listening,
    successors: handover::Server,
    /// The health publisher, the outcome and kernel-log readers, pod
    /// discovery, the CNI socket and `redirector pods`' publisher.
    tasks: Vec<AbortOnDropHandle<()>>,
    admin: Arc<Admin>,
    admin_task: Option<AbortOnDropHandle<()>>,
    dump: Arc<Dump>,
    metrics: Metrics,
    /// Signals and file changes, until `wait_termination` takes them.
    events: Option<lifecycle::Events>,
}

impl Running {
    async fn start(
        opts: RunOptions,
        config: Config,
        node: Node,
        admin: Arc<Admin>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        // While the daemon still may: the helper that enters pods'
        // namespaces for it keeps the capabilities this process drops.
        let helper = Helper::start_if_permitted();
        let notify = Arc::new(Notify::new());
        let current = Generation::build(config, node, &notify, None, &metrics)?;
        let routes: Routes = Arc::new(RwLock::new(Arc::new(route::build(
            &current.services,
            None,
        )?)));
        let services = Services::new(current.services.clone());
        // Endpoint names get their first answer (or failure) before the
        // listener opens: during a takeover the kernel keeps failing open to
        // the previous daemon's slot tables meanwhile, where a listening
        // proxy would answer "no healthy upstream" for names it has not
        // resolved yet.
        let deadline = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
        while current.awaiting_first_answer() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Routes and first answers are ready before the pin directory is
        // claimed: a daemon handing over stops accepting only once this one
        // is about to.
        let (datapath, mut handed) = load_datapath(&opts, &current.node).await?;
        // Kept apart from what `serve` takes: until this daemon confirms,
        // the predecessor waits (and serves on if it goes without).
        let confirmation = handed
            .as_mut()
            .and_then(handover::Handed::take_confirmation);
        if let Some(h) = &handed {
            carry::import(&current.services, &h.outliers);
        }
        let datapath = Arc::new(datapath);
        let started = Self::serve(
            opts,
            current,
            services,
            routes,
            notify,
            &datapath,
            &mut handed,
            admin,
            metrics,
            helper,
        )
        .await;
        let started = match (started, confirmation) {
            (Ok(running), Some(confirmation)) => {
                fault_point("serving");
                running.confirm(confirmation).await
            }
            // Dropped unconfirmed: the predecessor serves on.
            (started, _) => started,
        };
        if started.is_err() {
            datapath.release();
        }
        started
    }

    /// Tells the predecessor this daemon serves (see `handover.rs`). If it
    /// does not acknowledge, it serves on, and this daemon stops at once
    /// without writing the maps again.
    async fn confirm(mut self, confirmation: handover::Confirmation) -> anyhow::Result<Self> {
        let confirmed = tokio::task::spawn_blocking(move || confirmation.confirm())
            .await
            .context("the handover task")?;
        match confirmed {
            Ok(how) => {
                self.datapath.confirmed()?;
                match how {
                    handover::Confirmed::Acknowledged => {
                        info!("the previous daemon acknowledged: this one serves, it drains");
                    }
                    handover::Confirmed::PredecessorGone => {
                        warn!("the previous daemon is gone without acknowledging: this one serves");
                    }
                }
                Ok(self)
            }
            Err(e) => {
                self.pods.pause().await;
                drop(std::mem::take(&mut self.tasks));
                drop(self.admin_task.take());
                Err(anyhow::Error::from(e).context("the handover was not completed"))
            }
        }
    }

    /// From a loaded datapath to ready: listeners (bound or handed over),
    /// in the node's namespace and every pod's, maps filled, tasks
    /// started, programs attached, privileges dropped.
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        opts: RunOptions,
        current: Generation,
        services: Services,
        routes: Routes,
        notify: Arc<Notify>,
        datapath: &Arc<Datapath>,
        handed: &mut Option<handover::Handed>,
        admin: Arc<Admin>,
        metrics: Metrics,
        helper: Option<Arc<Helper>>,
    ) -> anyhow::Result<Self> {
        // The routes exist before the listeners: once they are bound,
        // programs a previous daemon left attached send connects to them.
        // A predecessor's listeners, handed over, never stopped listening.
        let node = &current.node;
        let pods = Arc::new(pods::Pods::new(pods::Ctx {
            datapath: datapath.clone(),
            helper,
            node: node.clone(),
            routes: routes.clone(),
            services: services.clone(),
            metrics: metrics.clone(),
        })?);
        pods.serve_host(handed).await?;
        let admin_listener = listeners::admin(node, handed).await?;
        let mut kept = handover::Listening::default();
        if let Some(l) = &admin_listener {
            listeners::keep_admin_for_handover(l, &mut kept)?;
        }
        let cni = cni_socket::open(opts.cni_socket.as_deref(), &pods, handed, &mut kept)?;
        let adopted = pods.adopt(handed).await;
        if adopted > 0 {
            info!(
                pods = adopted,
                "took over the pods the previous daemon served"
            );
        }
        // What was handed and is not wanted here (the ports changed) closes.
        handed.take();
        let successors =
            handover::Server::bind(datapath::handover_path(&node.pin_dir), datapath.map_ids())?;
        let admin_task = admin_listener.map(|l| serve_admin(l, &admin));
        datapath.set_services(&service_entries(&current.config.services))?;
        sync::publish_all(datapath, &services);
        let mut tasks = map_tasks(datapath, &services, &notify)?;
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
        tasks.extend(pod_tasks(&pods, datapath, cni).await?);
        let dump = Arc::new(Dump::new(&current.config, &current.node, services.clone()));
        admin.set_config_dump(dump.clone());
        let events = lifecycle::Events::new(&opts, &current)?;
        ready(&admin)?;
        info!(pid = std::process::id(), "redirector ready");
        Ok(Self {
            opts,
            current,
            services,
            routes,
            notify,
            datapath: datapath.clone(),
            pods,
            kept,
            successors,
            tasks,
            admin,
            admin_task,
            dump,
            metrics,
            events: Some(events),
        })
    }
}

/// The tasks that write the maps from the clusters' health and read the
/// rings (outcomes, kernel logs): started at start, stopped in phase 1 of a
/// handover, started again if the successor fails.
fn map_tasks(
    datapath: &Arc<Datapath>,
    services: &Services,
    notify: &Arc<Notify>,
) -> anyhow::Result<Vec<AbortOnDropHandle<()>>> {
    let mut tasks = vec![AbortOnDropHandle::new(tokio::spawn(sync::publish(
        datapath.clone(),
        services.clone(),
        notify.clone(),
    )))];
    if let Some(logs) = datapath.take_kernel_logs() {
        tasks.push(AbortOnDropHandle::new(tokio::spawn(logs.run())));
    }
    if let Some(reader) = datapath.take_outcomes()? {
        tasks.push(AbortOnDropHandle::new(tokio::spawn(
            sync::consume_outcomes(reader, services.clone()),
        )));
    }
    Ok(tasks)
}

/// The tasks that serve pods as they come and go (discovery, the CNI
/// socket) and publish them; like [`map_tasks`].
async fn pod_tasks(
    pods: &Arc<pods::Pods>,
    datapath: &Datapath,
    cni: Option<cni_socket::CniListener>,
) -> anyhow::Result<Vec<AbortOnDropHandle<()>>> {
    let mut tasks = Vec::new();
    if pods.ctx().helper.is_some() {
        // The pods already running are served before the daemon says it
        // is ready; those that come later are found as they start.
        tasks.push(discover::start(pods, datapath.take_ns_events()?).await);
    }
    tasks.extend(cni.map(|listener| listener.serve(pods)));
    tasks.push(AbortOnDropHandle::new(tokio::spawn(
        pods.clone().publish_every_second(),
    )));
    Ok(tasks)
}

/// The admin server on `listener`: it answers 503 until the daemon is
/// ready, and from the start on, so a port in use fails the start before
/// anything is attached.
pub(super) fn serve_admin(
    listener: tokio::net::TcpListener,
    admin: &Arc<Admin>,
) -> AbortOnDropHandle<()> {
    info!(
        addr = ?listener.local_addr().ok(),
        "admin server: /ready, /metrics, /config_dump"
    );
    AbortOnDropHandle::new(tokio::spawn(admin::serve(listener, admin.clone())))
}

/// Loads the datapath, claiming the pin directory; with `--take-over`, a
/// daemon holding it is asked for its listeners first (`handover.rs`), and
/// those come back too.
pub(super) async fn load_datapath(
    opts: &RunOptions,
    node: &Node,
) -> anyhow::Result<(Datapath, Option<handover::Handed>)> {
    let options = || DatapathOptions {
        cgroup: node.cgroup.clone(),
        pin_dir: node.pin_dir.clone(),
        proxy: node.listen,
        // With no responder of ours, DNS is left alone.
        dns: node.dns.filter(|_| !opts.datapath_only),
        proxy6: Some(std::net::Ipv6Addr::LOCALHOST),
        dns6: Some(std::net::Ipv6Addr::LOCALHOST),
        kernel_log_level: datapath::kernel_log_level(),
        any_listener: opts.datapath_only,
        lock: None,
        prepared: None,
    };
    let (datapath, handed) = match Datapath::load(options()) {
        Err(BpfError::Pins(PinError::InUse { pid, .. })) if opts.take_over => {
            let path = datapath::handover_path(&node.pin_dir);
            // Everything that can fail without the pin directory fails
            // now, while the running daemon still serves.
            let checking = options();
            let (proof, prepared) =
                tokio::task::spawn_blocking(move || Datapath::preflight(&checking))
                    .await
                    .context("the pre-handover checks")?
                    .with_context(|| {
                        format!(
                            "pid {pid} holds {} and keeps serving: this daemon cannot run here",
                            node.pin_dir.display()
                        )
                    })?;
            info!(
                "pid {pid} holds {}: the programs load and the pinned maps fit; asking it to \
                 hand its listeners over ({})",
                node.pin_dir.display(),
                path.display()
            );
            let mut handed =
                tokio::task::spawn_blocking(move || handover::request(&path, Some(proof)))
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
            fault_point("received");
            let mut options = options();
            options.lock = handed.take_lock();
            options.prepared = Some(prepared);
            (Datapath::load(options)?, Some(handed))
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

/// Debug builds only (the tests' daemon): with
/// `REDIRECTOR_TEST_KILL_SELF=<point>` a successor kills itself with
/// SIGKILL at `point` of a take-over (`received`: the descriptors came;
/// `serving`: attached and serving, not yet confirmed), as an OOM kill or
/// a crash would, at a moment a test cannot hit from outside; with
/// `<point>:stop` it stops itself there (SIGSTOP), as a stall would.
fn fault_point(point: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(wanted) = std::env::var("REDIRECTOR_TEST_KILL_SELF") else {
        return;
    };
    let signal = if wanted == point {
        libc::SIGKILL
    } else if wanted.strip_suffix(":stop") == Some(point) {
        libc::SIGSTOP
    } else {
        return;
    };
    warn!("REDIRECTOR_TEST_KILL_SELF: signal {signal} to this process at {point:?}");
    // SAFETY: a plain system call on this process.
    unsafe { libc::kill(libc::getpid(), signal) };
}

/// Attached and listening: what the daemon no longer needs goes, then it
/// says it is ready.
pub(super) fn ready(admin: &Admin) -> anyhow::Result<()> {
    privs::drop_after_start().context("dropping capabilities after start")?;
    admin.set_ready();
    Ok(())
}
