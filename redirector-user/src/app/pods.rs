//! Every network namespace the daemon serves: its own (the node's, where
//! `hostNetwork` apps live) and each pod's. In each it holds a
//! [`ListenerSet`] (so the kernel's rewrite to loopback lands on the
//! daemon there), its own maps, and makes the pod's upstream connections
//! and DNS forwards from inside it, as ztunnel's in-pod mode does.
//!
//! Pods arrive three ways: the CNI plugin tells the daemon as a pod is
//! created, before its containers start (`cni.rs`, race-free); the kernel
//! reports the first socket made in a namespace it does not know
//! (`sock_create`, within milliseconds); and a scan of the attached
//! cgroup's processes every second catches the rest and notices
//! namespaces whose processes are all gone (`discover.rs`). A namespace
//! whose own app already holds the proxy or DNS port (an Istio sidecar
//! does) is left alone: the daemon binds nothing there and the kernel
//! leaves its traffic as it is.
//!
//! Releasing a namespace (CNI `DEL`, or its processes gone) ends its
//! connections, closes its listeners and its idle upstream connections,
//! forgets its TLS sessions and takes its maps out: nothing the daemon
//! held keeps it alive.

mod entry;
mod handover;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use redirector_common::{NS_LEFT_ALONE, NS_SERVED, NsId};
use tokio::sync::Mutex;
use tracing::{info, warn};

pub(super) use self::entry::{Described, PodMeta, Source};
use self::entry::{Entry, Serving, State, display_name};
use super::listeners::ListenerSet;
use crate::{
    cni::protocol::Outcome,
    datapath::{Datapath, NsMaps},
    handover::{Handed, Kind, Listening},
    metrics::Metrics,
    netns::{self, Helper, Namespace, SockKind, Sockets},
    proxy::{self, route::Routes},
    state::{Node, Services},
};

/// What the daemon needs to serve a namespace.
pub(super) struct Ctx {
    pub(super) datapath: Arc<Datapath>,
    /// `None`: the daemon may not enter other namespaces (no
    /// `CAP_SYS_ADMIN` at start); only its own is served.
    pub(super) helper: Option<Arc<Helper>>,
    pub(super) node: Node,
    pub(super) routes: Routes,
    pub(super) services: Services,
    pub(super) metrics: Metrics,
}

/// How many network namespaces found in one cgroup (not announced by the
/// CNI plugin) the daemon serves at most: a pod's own, and a few its
/// processes made.
const MAX_FOUND_PER_CGROUP: usize = 4;

/// The pods the daemon serves (and leaves alone), and its own namespace.
pub(super) struct Pods {
    ctx: Ctx,
    /// Held across a namespace's whole setup or release, so they happen
    /// one at a time.
    entries: Mutex<HashMap<NsId, Entry>>,
    /// The inode of the daemon's own namespace (never served as a pod).
    host_inode: u64,
}

impl Pods {
    pub(super) fn new(ctx: Ctx) -> anyhow::Result<Self> {
        let host = std::fs::File::open("/proc/self/ns/net")?;
        let host_inode = netns::inode(host.as_fd())?;
        Ok(Self {
            ctx,
            entries: Mutex::new(HashMap::new()),
            host_inode,
        })
    }

    pub(super) fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    pub(super) fn host_inode(&self) -> u64 {
        self.host_inode
    }

    /// Serves the daemon's own namespace: the predecessor's maps if it
    /// handed them over (what it recorded stays findable), else new ones,
    /// in the kernel before a listener is marked; its listeners handed
    /// over or bound.
    pub(super) async fn serve_host(&self, handed: &mut Option<Handed>) -> anyhow::Result<()> {
        let started = Instant::now();
        let datapath = &self.ctx.datapath;
        let host = std::fs::File::open("/proc/self/ns/net")?;
        let probe =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM.cloexec(), None)?;
        let id = netns::ns_id(probe.as_fd(), host.as_fd())?;
        let cookie = netns::cookie(probe.as_fd())?;
        let maps = match handed.as_mut().map(|h| h.take_maps(id)) {
            Some(Some(fds)) => NsMaps::from_fds(fds)?,
            _ => {
                let maps = NsMaps::create()?;
                datapath.serve_namespace(id, &maps)?;
                maps
            }
        };
        let set = ListenerSet::bind_or_adopt(
            &self.ctx.node,
            handed,
            (None, id),
            &Sockets::Here,
            datapath,
        )
        .await?;
        let ns = Arc::new(Namespace::new(id, "host".to_owned(), Sockets::Here, maps));
        let mut entries = self.entries.lock().await;
        let serving = self.start(id, cookie, ns, set, None)?;
        let described = Described {
            ns: id,
            inode: self.host_inode,
            cookie,
            source: Source::Host,
            meta: PodMeta::default(),
            pid: std::process::id(),
            cgroup: 0,
        };
        let entry = Entry::new(described, State::Serving(serving), started);
        self.publish(&entry);
        entries.insert(id, entry);
        Ok(())
    }

    /// Starts serving `ns`, whose maps are in the kernel and whose
    /// sockets `set` are bound. `netns`: a pod's namespace (kept for a
    /// successor with the maps).
    fn start(
        &self,
        id: NsId,
        cookie: Option<u64>,
        ns: Arc<Namespace>,
        set: ListenerSet,
        netns: Option<&OwnedFd>,
    ) -> anyhow::Result<Serving> {
        let datapath = &self.ctx.datapath;
        let pod = netns.is_some().then_some(id);
        let mut kept = Listening::default();
        set.keep_for_handover(pod, &mut kept)?;
        if let Some(fd) = netns {
            kept.add_other(Kind::Netns, id, None, fd.as_fd())?;
        }
        // The maps go over too, the host's as well: what the kernel
        // recorded for connects still in a listener's backlog is in them.
        ns.with_maps(|maps| {
            for (i, fd) in maps.fds().into_iter().enumerate() {
                kept.add_other(Kind::NsMap, id, Some(i as u8), fd)?;
            }
            anyhow::Ok(())
        })?;
        let bits = set.bits();
        // Sockets bound here were marked before their bind; handed-over
        // ones again, in case the predecessor ran another ABI. The accept
        // loops start before anything is awaited; connects that came in
        // meanwhile wait in the backlog.
        set.own(datapath, id)?;
        let drain = proxy::Drain::default();
        let (accept, responders) = set.serve(&ns, &self.ctx.routes, &self.ctx.services, &drain);
        if let Some(cookie) = cookie {
            datapath.set_known(cookie, Some(NS_SERVED))?;
        }
        Ok(Serving {
            accept,
            responders,
            drain,
            kept,
            bits,
            ns,
        })
    }

    /// Serves the pod namespace `fd` (from the CNI plugin, or found), unless
    /// it is served already (then what the plugin says of it is kept) or
    /// its own app holds the proxy or DNS port (then it is left alone).
    pub(super) async fn serve(
        &self,
        fd: OwnedFd,
        source: Source,
        meta: PodMeta,
        (pid, cgroup): (u32, u64),
    ) -> (Outcome, String) {
        let started = Instant::now();
        let inode = match netns::inode(fd.as_fd()) {
            Ok(i) => i,
            Err(e) => return (Outcome::NotServed, format!("not a network namespace: {e}")),
        };
        if inode == self.host_inode {
            return (
                Outcome::NotServed,
                "the node's own network namespace (served as the host)".into(),
            );
        }
        let mut entries = self.entries.lock().await;
        if let Some(e) = entries.values_mut().find(|e| e.inode == inode) {
            if source == Source::Cni {
                // The plugin names what discovery found first.
                e.meta = meta;
                e.source = Source::Cni;
                self.publish(e);
            }
            return match &e.state {
                State::Serving(_) => (Outcome::Served, format!("served as {}", e.name())),
                State::LeftAlone(why) => (Outcome::LeftAlone, why.clone()),
            };
        }
        let Some(helper) = self.ctx.helper.clone() else {
            return (
                Outcome::NotServed,
                "the daemon cannot enter other network namespaces (it started without \
                 CAP_SYS_ADMIN)"
                    .into(),
            );
        };
        // A process may make network namespaces of its own (unshare) and
        // have the daemon serve each: one cgroup gets at most a few that
        // way, so a pod cannot use up what the node's other pods need.
        // Pods the CNI plugin announces are not counted.
        let found_here = entries
            .values()
            .filter(|e| cgroup != 0 && e.cgroup == cgroup && e.source == Source::Found)
            .count();
        if source == Source::Found && found_here >= MAX_FOUND_PER_CGROUP {
            return (
                Outcome::NotServed,
                format!(
                    "its cgroup (id {cgroup}) has {found_here} network namespaces served \
                     already, the most one cgroup gets without the CNI plugin"
                ),
            );
        }
        if entries.len() >= redirector_common::MAX_NAMESPACES as usize {
            return (
                Outcome::NotServed,
                format!(
                    "already serving {} network namespaces, the most it can",
                    entries.len()
                ),
            );
        }
        let name = display_name(&meta, source, inode);
        let described = |ns, cookie| Described {
            ns,
            inode,
            cookie,
            source,
            meta,
            pid,
            cgroup,
        };
        match self.set_up(fd, &name, helper).await {
            Ok((id, cookie, Ok(serving))) => {
                let entry = Entry::new(described(id, cookie), State::Serving(serving), started);
                self.ctx.metrics.pods_served.inc();
                self.ctx
                    .metrics
                    .pod_setup_seconds
                    .observe(entry.setup.as_secs_f64());
                info!(
                    pod = %name, netns = inode, ns = %format!("{id:#x}"), ?source,
                    setup_us = entry.setup.as_micros() as u64,
                    "serving the pod's network namespace"
                );
                self.publish(&entry);
                entries.insert(id, entry);
                (Outcome::Served, format!("served as {name}"))
            }
            Ok((id, cookie, Err(why))) => {
                warn!(pod = %name, netns = inode, "{why}: leaving its traffic alone");
                if let Some(cookie) = cookie
                    && let Err(e) = self.ctx.datapath.set_known(cookie, Some(NS_LEFT_ALONE))
                {
                    warn!(pod = %name, error = %e, "telling the kernel to leave it alone");
                }
                let state = State::LeftAlone(why.clone());
                let entry = Entry::new(described(id, cookie), state, started);
                self.ctx.metrics.pods_left_alone.inc();
                self.publish(&entry);
                entries.insert(id, entry);
                (Outcome::LeftAlone, why)
            }
            Err(e) => {
                warn!(pod = %name, netns = inode, "cannot serve the pod: {e:#}");
                (Outcome::NotServed, format!("{e:#}"))
            }
        }
    }

    /// Maps, sockets, listeners for the pod namespace `fd`: its id and
    /// cookie, and how it is served, or why it is left alone.
    async fn set_up(
        &self,
        fd: OwnedFd,
        name: &str,
        helper: Arc<Helper>,
    ) -> anyhow::Result<(NsId, Option<u64>, Result<Serving, String>)> {
        let fd = Arc::new(fd);
        let sockets = Sockets::there(helper.clone(), fd.clone());
        // One round trip for what a listener set needs: the proxy (TCP,
        // both families), the responder (UDP and TCP, both), and a probe.
        sockets
            .prefetch(&[
                (SockKind::Udp, false),
                (SockKind::Tcp, false),
                (SockKind::Tcp, true),
                (SockKind::Udp, false),
                (SockKind::Tcp, false),
                (SockKind::Udp, true),
                (SockKind::Tcp, true),
            ])
            .await?;
        // The namespace's identity, from a socket made there.
        let probe = sockets
            .socket(SockKind::Udp, &"127.0.0.1:0".parse().expect("an address"))
            .await?;
        let cookie = netns::cookie(probe.as_fd())?;
        let id = netns::ns_id(probe.as_fd(), fd.as_fd())?;
        drop(probe);
        let maps = NsMaps::from_fds(helper.maps(NsMaps::specs()).await?)?;
        let datapath = &self.ctx.datapath;
        datapath.serve_namespace(id, &maps)?;
        let bound = ListenerSet::bind_or_adopt(
            &self.ctx.node,
            &mut None,
            (Some(id), id),
            &sockets,
            datapath,
        )
        .await;
        sockets.clear();
        let set = match bound {
            Ok(set) => set,
            Err(e) => {
                if let Err(e) = datapath.forget_namespace(id) {
                    warn!(pod = %name, error = %e, "taking the namespace's maps out");
                }
                return match e.port_taken() {
                    Some(addr) => Ok((id, cookie, Err(format!("its own app listens on {addr}")))),
                    None => Err(e.into()),
                };
            }
        };
        let ns = Arc::new(Namespace::new(id, name.to_owned(), sockets, maps));
        let serving = self.start(id, cookie, ns, set, Some(&fd))?;
        Ok((id, cookie, Ok(serving)))
    }

    /// Lets namespace `id` go: its connections end, its listeners and idle
    /// upstream connections close, its TLS sessions and maps are dropped.
    /// The daemon's own namespace is never let go.
    pub(super) async fn release(&self, id: NsId, why: &str) -> bool {
        let mut entries = self.entries.lock().await;
        let Some(entry) = entries.get(&id) else {
            return false;
        };
        if entry.source == Source::Host {
            return false;
        }
        let entry = entries.remove(&id).expect("just found");
        drop(entries);
        self.forget(entry, why);
        true
    }

    /// [`Self::release`] of the pod the CNI plugin knows as `container_id`.
    pub(super) async fn release_container(&self, container_id: &str) -> bool {
        let id = {
            let entries = self.entries.lock().await;
            entries
                .values()
                .find(|e| e.meta.container_id.as_deref() == Some(container_id))
                .map(|e| e.id)
        };
        match id {
            Some(id) => self.release(id, "CNI DEL").await,
            None => false,
        }
    }

    fn forget(&self, entry: Entry, why: &str) {
        let name = entry.name();
        match entry.state {
            State::Serving(serving) => {
                serving.drain.kill.cancel();
                serving.drain.stop.cancel();
                serving.drain.tracker.close();
                for route in self.ctx.routes.read().expect("routes lock").values() {
                    route.pool.forget_namespace(entry.id);
                    if let Some(tls) = &route.tls {
                        tls.forget_namespace(entry.id);
                    }
                }
                self.ctx.metrics.pods_served.dec();
                drop(serving);
            }
            State::LeftAlone(_) => {
                self.ctx.metrics.pods_left_alone.dec();
            }
        }
        if let Err(e) = self.ctx.datapath.forget_namespace(entry.id) {
            warn!(pod = %name, error = %e, "taking the namespace's maps out");
        }
        if let Some(cookie) = entry.cookie
            && let Err(e) = self.ctx.datapath.set_known(cookie, None)
        {
            warn!(pod = %name, error = %e, "forgetting the namespace in the kernel");
        }
        info!(pod = %name, netns = entry.inode, "released the pod's network namespace ({why})");
    }

    /// Writes `redirector pods`' entry of `e`.
    fn publish(&self, e: &Entry) {
        if let Err(err) = self.ctx.datapath.set_ns_info(e.id, &e.info()) {
            warn!(pod = %e.name(), error = %err, "publishing the namespace for `redirector pods`");
        }
    }

    /// Keeps `redirector pods`' entries (open connections change) fresh:
    /// every entry written again about once a second.
    pub(super) async fn publish_every_second(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let entries = self.entries.lock().await;
            for e in entries.values() {
                self.publish(e);
            }
        }
    }

    /// The namespaces served or left alone, by inode, with whether the
    /// scan saw processes in them: for `discover.rs`.
    pub(super) async fn inodes(&self) -> Vec<(u64, NsId)> {
        let entries = self.entries.lock().await;
        entries.values().map(|e| (e.inode, e.id)).collect()
    }

    /// Whether a namespace with netns cookie `cookie` is known (served or
    /// left alone); if so, the kernel is told again (its entry aged out).
    pub(super) async fn knows_cookie(&self, cookie: u64) -> bool {
        let entries = self.entries.lock().await;
        let Some(e) = entries.values().find(|e| e.cookie == Some(cookie)) else {
            return false;
        };
        let state = match e.state {
            State::Serving(_) => NS_SERVED,
            State::LeftAlone(_) => NS_LEFT_ALONE,
        };
        let _ = self.ctx.datapath.set_known(cookie, Some(state));
        true
    }

    /// One cgroup scan's verdict: `live` are the inodes of namespaces with
    /// a process in the attached cgroup. Pods seen before and missing for
    /// two scans in a row are released (a pod the plugin told of and never
    /// seen with a process waits for its `DEL`).
    pub(super) async fn after_scan(&self, live: &std::collections::HashSet<u64>) {
        let mut gone = Vec::new();
        {
            let mut entries = self.entries.lock().await;
            for e in entries.values_mut() {
                if e.source == Source::Host {
                    continue;
                }
                if live.contains(&e.inode) {
                    e.seen = true;
                    e.missing = 0;
                } else if e.seen {
                    e.missing += 1;
                    if e.missing >= 2 {
                        gone.push(e.id);
                    }
                }
            }
        }
        for id in gone {
            self.release(id, "no process of the cgroup lives in it any more")
                .await;
        }
    }

    /// SIGTERM, step one: nothing new is accepted anywhere.
    pub(super) async fn stop_accepting(&self) {
        let mut entries = self.entries.lock().await;
        for e in entries.values_mut() {
            if let State::Serving(s) = &mut e.state {
                s.accept.clear();
                s.drain.tracker.close();
                s.drain.stop.cancel();
            }
        }
    }

    /// Connections open, over every namespace.
    pub(super) async fn open_connections(&self) -> usize {
        let entries = self.entries.lock().await;
        entries
            .values()
            .map(|e| match &e.state {
                State::Serving(s) => s.drain.tracker.len(),
                State::LeftAlone(_) => 0,
            })
            .sum()
    }

    /// Waits until every namespace's connections are done.
    pub(super) async fn drained(&self) {
        let trackers: Vec<_> = {
            let entries = self.entries.lock().await;
            entries
                .values()
                .filter_map(|e| match &e.state {
                    State::Serving(s) => Some(s.drain.tracker.clone()),
                    State::LeftAlone(_) => None,
                })
                .collect()
        };
        for t in trackers {
            t.wait().await;
        }
    }
}
