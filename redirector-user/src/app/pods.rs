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

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use redirector_common::{
    NS_DETAIL_LEN, NS_LEFT_ALONE, NS_SERVED, NSI_CNI, NSI_FOUND, NSI_HOST, NSI_LEFT_ALONE,
    NSI_SERVED, NsId, NsInfo, POD_NAME_LEN, POD_NAMESPACE_LEN, write_str,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

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

/// What the CNI plugin said of a pod, for display and for `DEL`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PodMeta {
    pub(super) container_id: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
}

/// How the daemon came to serve a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Source {
    /// The daemon's own.
    Host,
    /// Told by the CNI plugin.
    Cni,
    /// Found: a process of the attached cgroup lives in it.
    Found,
}

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

/// A namespace being served.
struct Serving {
    accept: Vec<AbortOnDropHandle<()>>,
    responders: Vec<AbortOnDropHandle<()>>,
    drain: proxy::Drain,
    /// Duplicates of its sockets (and, for a pod, the namespace and its
    /// maps), for a successor.
    kept: Listening,
    /// What listens (`NSI_*`).
    bits: u8,
}

enum State {
    Serving(Serving),
    /// Its own app holds the proxy or DNS port (the reason says which).
    LeftAlone(String),
}

/// How many network namespaces found in one cgroup (not announced by the
/// CNI plugin) the daemon serves at most: a pod's own, and a few its
/// processes made.
const MAX_FOUND_PER_CGROUP: usize = 4;

struct Entry {
    id: NsId,
    cookie: Option<u64>,
    inode: u64,
    meta: PodMeta,
    source: Source,
    state: State,
    /// A process of the namespace when it was found (0: told by CNI).
    pid: u32,
    /// That process's cgroup (its id; 0: told by CNI, or handed over).
    cgroup: u64,
    /// Whether the cgroup scan ever saw a process in it, and for how many
    /// scans in a row it saw none since.
    seen: bool,
    missing: u32,
    setup: Duration,
    since: SystemTime,
}

impl Entry {
    /// `d`, served or left alone (`state`) from now on, set up since
    /// `started`.
    fn new(d: Described, state: State, started: Instant) -> Entry {
        Entry {
            id: d.ns,
            cookie: d.cookie,
            inode: d.inode,
            meta: d.meta,
            source: d.source,
            state,
            pid: d.pid,
            cgroup: d.cgroup,
            // Pods found through a process are released when the scan no
            // longer sees one; a pod the plugin announced waits for DEL
            // until a scan sees it.
            seen: d.pid != 0,
            missing: 0,
            setup: started.elapsed(),
            since: SystemTime::now(),
        }
    }

    fn name(&self) -> String {
        display_name(&self.meta, self.source, self.inode)
    }

    fn info(&self) -> NsInfo {
        let mut info = NsInfo {
            state: match &self.state {
                State::Serving(_) => NSI_SERVED,
                State::LeftAlone(_) => NSI_LEFT_ALONE,
            },
            source: match self.source {
                Source::Host => NSI_HOST,
                Source::Cni => NSI_CNI,
                Source::Found => NSI_FOUND,
            },
            listeners: match &self.state {
                State::Serving(s) => s.bits,
                State::LeftAlone(_) => 0,
            },
            _pad: 0,
            open_connections: match &self.state {
                State::Serving(s) => u32::try_from(s.drain.tracker.len()).unwrap_or(u32::MAX),
                State::LeftAlone(_) => 0,
            },
            setup_us: u32::try_from(self.setup.as_micros()).unwrap_or(u32::MAX),
            pid: self.pid,
            since_unix_ms: unix_ms(self.since),
            pod_namespace: [0; POD_NAMESPACE_LEN],
            pod_name: [0; POD_NAME_LEN],
            detail: [0; NS_DETAIL_LEN],
        };
        write_str(
            &mut info.pod_namespace,
            self.meta.namespace.as_deref().unwrap_or(""),
        );
        write_str(&mut info.pod_name, self.meta.name.as_deref().unwrap_or(""));
        if let State::LeftAlone(why) = &self.state {
            write_str(&mut info.detail, why);
        }
        info
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// For the log: `host`, a pod's `namespace/name`, or its namespace's
/// inode when nothing named it.
fn display_name(meta: &PodMeta, source: Source, inode: u64) -> String {
    match (source, &meta.namespace, &meta.name) {
        (Source::Host, _, _) => "host".to_owned(),
        (_, Some(ns), Some(name)) => format!("{ns}/{name}"),
        (_, None, Some(name)) => name.clone(),
        _ => format!("netns:[{inode}]"),
    }
}

/// The pods the daemon serves (and leaves alone), and its own namespace.
pub(super) struct Pods {
    ctx: Ctx,
    /// Held across a namespace's whole setup or release, so they happen
    /// one at a time.
    entries: Mutex<HashMap<NsId, Entry>>,
    /// The inode of the daemon's own namespace (never served as a pod).
    host_inode: u64,
}

/// What one served namespace looks like to `/config_dump` and the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Described {
    pub(super) ns: NsId,
    pub(super) inode: u64,
    pub(super) cookie: Option<u64>,
    pub(super) source: Source,
    pub(super) meta: PodMeta,
    pub(super) pid: u32,
    /// The cgroup it was found in (0: announced by the CNI plugin).
    #[serde(default)]
    pub(super) cgroup: u64,
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

    /// The daemon's own namespace, whose listeners `set` are bound (or
    /// handed over) already and whose `maps` are in the kernel: it is
    /// served from now on.
    pub(super) async fn add_host(
        &self,
        set: ListenerSet,
        maps: NsMaps,
    ) -> anyhow::Result<Arc<Namespace>> {
        let started = Instant::now();
        let host = std::fs::File::open("/proc/self/ns/net")?;
        let cookie = netns::cookie(set.any_socket())?;
        let id = netns::ns_id(set.any_socket(), host.as_fd())?;
        let ns = Arc::new(Namespace::new(id, "host".to_owned(), Sockets::Here, maps));
        let mut entries = self.entries.lock().await;
        let entry = self.start(id, cookie, ns.clone(), set, None)?;
        entries.insert(
            id,
            Entry::new(
                Described {
                    ns: id,
                    inode: self.host_inode,
                    cookie,
                    source: Source::Host,
                    meta: PodMeta::default(),
                    pid: std::process::id(),
                    cgroup: 0,
                },
                State::Serving(entry),
                started,
            ),
        );
        self.publish(&entries[&id]);
        Ok(ns)
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

    /// Writes every entry (open connections change), about once a second.
    pub(super) async fn publish_all(&self) {
        let entries = self.entries.lock().await;
        for e in entries.values() {
            self.publish(e);
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

    /// Duplicates of every namespace's sockets (and a pod's namespace and
    /// maps) for a successor, with what the daemon knows of its pods.
    pub(super) async fn keep_for_handover(&self, listening: &mut Listening) -> std::io::Result<()> {
        let entries = self.entries.lock().await;
        let mut described = Vec::new();
        for e in entries.values() {
            if let State::Serving(s) = &e.state {
                listening.take_all(s.kept.duplicate()?);
                if e.source != Source::Host {
                    described.push(Described {
                        ns: e.id,
                        inode: e.inode,
                        cookie: e.cookie,
                        source: e.source,
                        meta: e.meta.clone(),
                        pid: e.pid,
                        cgroup: e.cgroup,
                    });
                }
            }
        }
        listening.extra = serde_json::json!({ "pods": described });
        Ok(())
    }

    /// A successor took over: nothing is accepted or answered here any
    /// more, and what is open drains.
    pub(super) async fn stop_serving(&self) {
        let mut entries = self.entries.lock().await;
        for e in entries.values_mut() {
            if let State::Serving(s) = &mut e.state {
                s.accept.clear();
                s.responders.clear();
                s.drain.tracker.close();
                s.drain.stop.cancel();
            }
        }
    }

    /// A predecessor handed its pods over: each is served again on its
    /// very sockets and maps, so nothing it had redirected is lost.
    pub(super) async fn adopt(&self, handed: &mut Option<Handed>) -> usize {
        let Some(h) = handed.as_ref() else {
            return 0;
        };
        let pods: Vec<Described> = h
            .extra
            .get("pods")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let mut adopted = 0;
        for pod in pods {
            match self.adopt_one(handed, &pod).await {
                Ok(()) => adopted += 1,
                Err(e) => warn!(
                    pod = %display_name(&pod.meta, pod.source, pod.inode),
                    "not taking the pod over: {e:#}"
                ),
            }
        }
        adopted
    }

    async fn adopt_one(&self, handed: &mut Option<Handed>, pod: &Described) -> anyhow::Result<()> {
        let started = Instant::now();
        let h = handed.as_mut().expect("adopting from a handover");
        let fd = h
            .take_other(Kind::Netns, pod.ns, None)
            .ok_or_else(|| anyhow::anyhow!("its network namespace was not handed over"))?;
        let maps = (0..4)
            .map(|i| {
                h.take_other(Kind::NsMap, pod.ns, Some(i))
                    .ok_or_else(|| anyhow::anyhow!("its map {i} was not handed over"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let maps = NsMaps::from_fds(maps)?;
        let helper = self
            .ctx
            .helper
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no netns helper"))?;
        anyhow::ensure!(
            netns::inode(fd.as_fd())? == pod.inode,
            "the handed namespace is not the one described"
        );
        let fd = Arc::new(fd);
        let sockets = Sockets::there(helper, fd.clone());
        let set = ListenerSet::bind_or_adopt(
            &self.ctx.node,
            handed,
            (Some(pod.ns), pod.ns),
            &sockets,
            &self.ctx.datapath,
        )
        .await?;
        let name = display_name(&pod.meta, pod.source, pod.inode);
        let ns = Arc::new(Namespace::new(pod.ns, name, sockets, maps));
        // Its maps are in place: the predecessor's, still in the outer maps.
        let serving = self.start(pod.ns, pod.cookie, ns, set, Some(&fd))?;
        let mut entries = self.entries.lock().await;
        let entry = Entry::new(pod.clone(), State::Serving(serving), started);
        self.ctx.metrics.pods_served.inc();
        self.publish(&entry);
        entries.insert(pod.ns, entry);
        Ok(())
    }

    /// Namespaces a previous daemon left in the maps that this one does
    /// not serve: taken out.
    pub(super) async fn forget_stale(&self) {
        let entries = self.entries.lock().await;
        for id in self.ctx.datapath.namespaces() {
            if !entries.contains_key(&id)
                && let Err(e) = self.ctx.datapath.forget_namespace(id)
            {
                warn!(ns = %format!("{id:#x}"), error = %e, "taking a stale namespace out");
            }
        }
    }
}
