//! A running daemon until it ends: signals, reloads (file changes or
//! SIGHUP), the handover to a successor, and the graceful stop (drain).

use std::{os::fd::AsFd, path::PathBuf, sync::Arc, time::Duration};

use redirector_common::{SVC_FAIL_OPEN, SVC_KERNEL_PATH};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use super::{RunOptions, Running, carry, cni_socket};
use crate::{
    datapath::{self, service_entries},
    handover,
    proxy::route,
    state::{self, Generation},
    sync, watch,
};

/// How long the listener keeps accepting after new connects stopped coming
/// to it: connects the kernel had already sent it are in its queue.
const ACCEPT_GRACE: Duration = Duration::from_millis(200);

impl Running {
    /// Serves until SIGTERM or SIGINT (then drains and stops) or until a
    /// successor takes the listeners over (then drains and waits for
    /// SIGTERM); reloads the config whenever it changes or on SIGHUP.
    pub(super) async fn wait_termination(mut self) -> anyhow::Result<()> {
        let Events {
            mut term,
            mut int,
            mut hup,
            changed_tx,
            mut changed,
            mut watching,
        } = self.events.take().expect("events are taken once");
        let helper = self.pods.ctx().helper.clone();
        let helper_gone = async {
            match helper {
                Some(h) => h.gone().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(helper_gone);
        let (retake_tx, mut retake) = mpsc::channel(1);
        let mut failed = None;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = &mut helper_gone => {
                    // Without it no pod's upstream connection can be made
                    // and no new pod served: stop (failing open) and let
                    // the supervisor start a new daemon, which takes over.
                    error!("the netns helper exited; stopping so that a new daemon takes over");
                    failed = Some(anyhow::anyhow!("the netns helper exited"));
                    break;
                }
                _ = hup.recv() => info!("SIGHUP: reloading {}", self.opts.config.display()),
                Some(path) = changed.recv() => info!("{} changed: reloading", path.display()),
                mut successor = self.successors.next() => {
                    let pid = successor.pid;
                    let exited = successor.take_exit();
                    match self.hand_over(successor).await {
                        Ok(()) => {
                            drop(watching);
                            return self.handed_over(pid).await;
                        }
                        Err(e) => {
                            error!("handing over to pid {pid} failed, serving on: {e:#}");
                            self.serve_again(pid).await;
                            if let Some(fd) = exited {
                                self.tasks.push(retake_when_gone(pid, fd, retake_tx.clone()));
                            }
                            continue;
                        }
                    }
                }
                Some(pid) = retake.recv() => {
                    // What the failed successor wrote after this daemon
                    // served again, undone.
                    if let Err(e) = self.datapath.retake(pid) {
                        error!("taking the datapath back from pid {pid}: {e}");
                    }
                    self.publish_again();
                    info!("pid {pid} is gone; the datapath is this daemon's as it left it");
                    continue;
                }
            }
            match self.reload() {
                Ok(next) => {
                    self.metrics.config_reloads.inc();
                    self.apply(next);
                    // What was just read is in force: watch from there, with
                    // the TLS files the new config names.
                    watching = watch_files(&self.opts, &self.current, &changed_tx);
                    while changed.try_recv().is_ok() {}
                    info!(
                        services = self.current.config.services.len(),
                        "config reloaded"
                    );
                }
                Err(e) => {
                    self.metrics.config_reload_rejections.inc();
                    error!("config reload rejected, keeping the running config: {e:#}");
                }
            }
        }
        // Not ready from now on: the readiness probe sees the drain.
        self.admin.set_draining();
        self.stop().await;
        self.datapath.release();
        failed.map_or(Ok(()), Err)
    }

    /// A handover to the authenticated `successor` (see `handover.rs`).
    /// Phase 1: this daemon stops accepting and answering (its sockets stay
    /// open), stops writing the maps and reading the rings, and offers its
    /// sockets, the pin directory's lock and its outlier state; then waits
    /// for the successor's confirmation. `Ok`: confirmed and acknowledged,
    /// this daemon has let go of the datapath and drains. An error: the
    /// successor did not take over, and the caller must
    /// [`Self::serve_again`].
    async fn hand_over(&mut self, successor: handover::Successor) -> anyhow::Result<()> {
        let pid = successor.pid;
        info!(
            "pid {pid} asks for the listeners: handing over; this daemon stops accepting until \
             it confirms it serves (at most {:?})",
            handover::CONFIRM_TIMEOUT
        );
        let mut listening = self.kept.duplicate()?;
        self.pods.keep_for_handover(&mut listening).await?;
        let lock = self.datapath.share_lock()?;
        let outliers = carry::export(&self.services.current());
        self.pods.pause().await;
        drop(std::mem::take(&mut self.tasks));
        successor.offer(&listening, lock.as_ref().map(AsFd::as_fd), outliers)?;
        // The successor has its copies now.
        drop((listening, lock));
        let deadline = std::time::Instant::now() + handover::CONFIRM_TIMEOUT;
        let (successor, confirmed) = tokio::task::spawn_blocking(move || {
            let confirmed = successor.confirmed(deadline);
            (successor, confirmed)
        })
        .await?;
        confirmed?;
        // Acknowledged: nothing of ours writes the maps from here on, and
        // the lock is the successor's alone once ours closes.
        self.admin.set_draining();
        self.pods.stop_serving().await;
        drop(self.admin_task.take());
        self.datapath.hand_over();
        drop(successor);
        Ok(())
    }

    /// Writes this daemon's services, endpoint health and slot tables to
    /// the kernel again, over whatever a failed successor left there.
    fn publish_again(&self) {
        if let Err(e) = self
            .datapath
            .set_services(&service_entries(&self.current.config.services))
        {
            error!("publishing the services to the kernel again: {e}");
        }
        sync::publish_all(&self.datapath, &self.services);
    }

    /// The successor `pid` did not take over (it failed, died, or did not
    /// confirm in time): this daemon accepts again on its very sockets,
    /// writes its config maps again, attaches its programs again over
    /// whatever the successor attached and registers itself again for the
    /// death watch, publishes its whole state, takes out the namespaces the
    /// successor served and it does not, and starts its tasks again.
    async fn serve_again(&mut self, pid: u32) {
        let failed = self.pods.resume().await;
        if let Err(e) = self.datapath.resume(pid) {
            error!("taking the datapath back from pid {pid}: {e}");
        }
        self.publish_again();
        self.pods.forget_stale().await;
        match super::map_tasks(&self.datapath, &self.services, &self.notify) {
            Ok(tasks) => self.tasks = tasks,
            Err(e) => error!("reading the rings again: {e:#}"),
        }
        let cni = cni_socket::open(
            self.opts.cni_socket.as_deref(),
            &self.pods,
            &mut self
                .kept
                .duplicate()
                .ok()
                .map(handover::Handed::from_listening),
            &mut handover::Listening::default(),
        );
        let pod_tasks = match cni {
            Ok(cni) => super::pod_tasks(&self.pods, &self.datapath, cni).await,
            Err(e) => Err(e),
        };
        match pod_tasks {
            Ok(tasks) => self.tasks.extend(tasks),
            Err(e) => error!("serving pods again: {e:#}"),
        }
        // The successor bound the handover socket's path to its own.
        let path = datapath::handover_path(&self.current.node.pin_dir);
        // The ids read at start: the maps are the same, and opening their
        // pins may take privileges this daemon has dropped.
        match handover::Server::bind(path, self.successors.map_ids()) {
            Ok(server) => self.successors = server,
            Err(e) => error!("a later handover will not be possible: {e}"),
        }
        info!(
            namespaces_not_resumed = failed,
            "pid {pid} did not take over: this daemon serves again (accepting, writing the maps, \
             its programs attached, registered for the death watch)"
        );
    }

    /// The config read again and built next to the running one: clusters
    /// (taking over health) and routes (taking over TLS sessions and
    /// limits), then the kernel's services replaced. Nothing else running
    /// changes here, and on an error nothing at all.
    fn reload(&self) -> anyhow::Result<(Generation, route::RouteMap)> {
        let (config, mut node) = state::load(
            &self.opts.config,
            &self.opts.overrides,
            self.current.node.cluster_locality.clone(),
        )?;
        // These are bound to kernel objects and sockets made at start.
        let running = &self.current.node;
        for (what, changed) in [
            ("cgroup", node.cgroup != running.cgroup),
            ("listenPort", node.listen != running.listen),
            ("dnsPort", node.dns != running.dns),
            ("adminPort", node.admin != running.admin),
            ("pinDir", node.pin_dir != running.pin_dir),
        ] {
            if changed {
                warn!("{what} changed in the config; it takes effect on restart only");
            }
        }
        node.cgroup = running.cgroup.clone();
        node.listen = running.listen;
        node.dns = running.dns;
        node.admin = running.admin;
        node.pin_dir = running.pin_dir.clone();
        state::log_effective(&config, &node);
        let next = Generation::build(
            config,
            node,
            &self.notify,
            Some(&self.current),
            &self.metrics,
        )?;
        let previous = self.routes.read().expect("routes lock").clone();
        let routes = route::build(&next.services, Some(&previous))?;
        // Last, as the one step that can fail in the kernel: all or
        // nothing (a failed update puts the maps back as they were).
        self.datapath
            .set_services(&service_entries(&next.config.services))
            .map_err(|e| anyhow::anyhow!("publishing the services to the kernel: {e}"))?;
        Ok((next, routes))
    }

    /// Puts a reloaded generation in force (its services are in the kernel
    /// already): the proxy's routes, then the service table (DNS answers,
    /// health publishing).
    fn apply(&mut self, (next, routes): (Generation, route::RouteMap)) {
        self.dump.set_effective(&next.config, &next.node);
        let previous = self.routes.read().expect("routes lock").clone();
        route::take_over(&routes, &previous);
        *self.routes.write().expect("routes lock") = Arc::new(routes);
        self.services.set(next.services.clone());
        self.current = next;
        self.notify.notify_one();
    }

    /// After a handover: the successor accepts everything new; connections
    /// open here finish (HTTP ones after their request in flight, as on
    /// SIGTERM), and the process waits for SIGTERM to exit, so that a
    /// supervisor does not restart it (a Kubernetes rolling update with
    /// `maxSurge` deletes the old pod once the new one is ready).
    async fn handed_over(self, successor: u32) -> anyhow::Result<()> {
        info!(
            successor,
            open_connections = self.pods.open_connections().await,
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
            () = self.pods.drained() => {
                info!("drained; waiting for SIGTERM");
                signalled.await;
            }
            () = &mut signalled => {
                match tokio::time::timeout(self.opts.drain_timeout, self.pods.drained()).await {
                    Ok(()) => info!("drained"),
                    Err(_) => warn!(
                        still_open = self.pods.open_connections().await,
                        "drain timeout reached; closing the remaining connections"
                    ),
                }
            }
        }
        info!("exiting");
        self.datapath.release();
        Ok(())
    }

    /// SIGTERM/SIGINT: new connects stop coming to the proxy (every service
    /// that can skip it goes straight to an endpoint from its slot table, as
    /// when no daemon runs; a TLS-originating one cannot, and its connects
    /// are refused until the next daemon listens), the listener closes once
    /// what was already queued is accepted, HTTP connections finish the
    /// request in flight and close, and TCP connections run on; after
    /// `--drain-timeout` whatever is still open is closed with the process.
    /// The kernel datapath stays attached, for the next daemon to take over.
    async fn stop(&mut self) {
        let mut entries = service_entries(&self.current.config.services);
        for e in &mut entries {
            if e.value.flags & SVC_FAIL_OPEN != 0 {
                e.value.flags |= SVC_KERNEL_PATH;
            }
        }
        if let Err(e) = self.datapath.set_services(&entries) {
            warn!("sending new connects past the stopping proxy: {e}");
        }
        tokio::time::sleep(ACCEPT_GRACE).await;
        self.pods.stop_accepting().await;
        let open = self.pods.open_connections().await;
        info!(
            open_connections = open,
            timeout = ?self.opts.drain_timeout,
            "stopping: listener closed, draining open connections"
        );
        match tokio::time::timeout(self.opts.drain_timeout, self.pods.drained()).await {
            Ok(()) => info!("drained; exiting"),
            Err(_) => warn!(
                still_open = self.pods.open_connections().await,
                "drain timeout reached; closing the remaining connections"
            ),
        }
    }
}

/// Waits for the failed successor `pid` to exit (`exited`, its pidfd), then
/// asks the main loop to take the datapath back once more (`retake`).
fn retake_when_gone(
    pid: u32,
    exited: std::os::fd::OwnedFd,
    retake: mpsc::Sender<u32>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the pidfd, which nothing closes or
        // replaces while it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(exited, tokio::io::Interest::READABLE)
        };
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(e) => warn!("waiting for pid {pid} to exit: {}", e.into_parts().1),
        }
        let _ = retake.send(pid).await;
    }))
}

/// What the running daemon waits for: signals and changes of the files its
/// config was built from. Set up before the daemon says it is ready, so a
/// signal or an edit right after readiness is never missed.
pub(super) struct Events {
    term: Signal,
    int: Signal,
    hup: Signal,
    changed_tx: mpsc::Sender<PathBuf>,
    changed: mpsc::Receiver<PathBuf>,
    watching: AbortOnDropHandle<()>,
}

impl Events {
    pub(super) fn new(opts: &RunOptions, current: &Generation) -> anyhow::Result<Self> {
        let (changed_tx, changed) = mpsc::channel(1);
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            watching: watch_files(opts, current, &changed_tx),
            changed_tx,
            changed,
        })
    }
}

/// Watches the config file and the TLS files `current` was built from; a
/// change of any reloads (the task stops when the handle is dropped).
fn watch_files(
    opts: &RunOptions,
    current: &Generation,
    changed: &mpsc::Sender<PathBuf>,
) -> AbortOnDropHandle<()> {
    let tls_files = current
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
    AbortOnDropHandle::new(tokio::spawn(watch::run(
        watch::Watch::new(files),
        changed.clone(),
    )))
}
