//! Pods across a handover: what a daemon keeps of them for a successor,
//! and how the successor takes them over on the same sockets and maps.

use std::{os::fd::AsFd as _, sync::Arc, time::Instant};

use tracing::warn;

use super::{
    Pods,
    entry::{Described, Entry, Source, State, display_name},
};
use crate::{
    app::listeners::ListenerSet,
    datapath::NsMaps,
    handover::{Handed, Kind, Listening},
    netns::{self, Namespace, Sockets},
};

impl Pods {
    /// Duplicates of every namespace's sockets (and a pod's namespace and
    /// maps) for a successor, with what the daemon knows of its pods.
    pub(in crate::app) async fn keep_for_handover(
        &self,
        listening: &mut Listening,
    ) -> std::io::Result<()> {
        let entries = self.entries.lock().await;
        let mut described = Vec::new();
        for e in entries.values() {
            if let State::Serving(s) = &e.state {
                listening.take_all(s.kept.duplicate()?);
                if e.source != Source::Host {
                    described.push(e.described());
                }
            }
        }
        listening.extra = serde_json::json!({ "pods": described });
        Ok(())
    }

    /// Phase 1 of a handover (see `handover.rs`): nothing is accepted or
    /// answered here any more, but every socket stays open (its kept
    /// duplicate holds it), with what waits in its queue, and open
    /// connections run on.
    pub(in crate::app) async fn pause(&self) {
        let mut entries = self.entries.lock().await;
        for e in entries.values_mut() {
            if let State::Serving(s) = &mut e.state {
                s.accept.clear();
                s.responders.clear();
            }
        }
    }

    /// The successor failed: every namespace accepts and answers again,
    /// on its very sockets (taken up again from the kept duplicates, as a
    /// successor takes handed ones). How many namespaces could not.
    pub(in crate::app) async fn resume(&self) -> usize {
        let mut entries = self.entries.lock().await;
        let mut failed = 0;
        for (id, e) in entries.iter_mut() {
            let name = e.name();
            let pod = (e.source != Source::Host).then_some(*id);
            let State::Serving(s) = &mut e.state else {
                continue;
            };
            if !s.accept.is_empty() {
                continue;
            }
            let resumed = async {
                let mut own = Some(Handed::from_listening(s.kept.duplicate()?));
                let set = ListenerSet::bind_or_adopt(
                    &self.ctx.node,
                    &mut own,
                    (pod, *id),
                    &s.ns.sockets,
                    &self.ctx.datapath,
                )
                .await?;
                set.own(&self.ctx.datapath, *id)?;
                anyhow::Ok(set)
            }
            .await;
            match resumed {
                Ok(set) => {
                    let (accept, responders) =
                        set.serve(&s.ns, &self.ctx.routes, &self.ctx.services, &s.drain);
                    s.accept = accept;
                    s.responders = responders;
                }
                Err(e) => {
                    failed += 1;
                    warn!(ns = %name, "serving again on the kept sockets: {e:#}");
                }
            }
        }
        failed
    }

    /// A successor took over: nothing is accepted or answered here any
    /// more, and what is open drains.
    pub(in crate::app) async fn stop_serving(&self) {
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
    pub(in crate::app) async fn adopt(&self, handed: &mut Option<Handed>) -> usize {
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
    pub(in crate::app) async fn forget_stale(&self) {
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
