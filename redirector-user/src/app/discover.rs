//! Finding pods on its own, without the CNI plugin and across restarts and
//! handovers, from the kernel's view only (no Kubernetes API):
//!
//! - a scan of the attached cgroup subtree: every process's network
//!   namespace (its inode, read by the netns helper, which may read other
//!   users' `/proc/<pid>/ns/net`); a namespace not served yet is served,
//!   and a pod's namespace with no process left for two scans in a row is
//!   released. At start, before the daemon says it is ready, and then
//!   every [`SCAN_EVERY`];
//! - the kernel's report of the first socket made in a namespace it does
//!   not know (`sock_create`), which gets a pod started after the daemon
//!   served within milliseconds, not at the next scan.
//!
//! A namespace that could not be served is tried again after
//! [`RETRY_AFTER`], not on every scan.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use redirector_common::NsEvent;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::pods::{PodMeta, Pods, Source};
use crate::{cni::protocol::Outcome, datapath::NsEvents, netns};

/// How often the cgroup is scanned.
pub(super) const SCAN_EVERY: Duration = Duration::from_secs(1);
/// How long a namespace that could not be served waits to be tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Processes a scan reads at most (a bound against a runaway subtree).
const MAX_PIDS: usize = 1 << 20;
/// Pids asked of the helper at once.
const PIDS_PER_REQUEST: usize = 4096;

/// What discovery remembers between scans.
#[derive(Default)]
pub(super) struct Discovery {
    /// Namespaces (by inode) that could not be served, and when.
    failed: HashMap<u64, Instant>,
}

impl Discovery {
    /// One scan of `cgroup`: serves what is new, releases what is gone.
    pub(super) async fn scan(&mut self, pods: &Pods, cgroup: &Path) {
        let Some(helper) = pods.ctx().helper.clone() else {
            return;
        };
        let dir = cgroup.to_owned();
        let pids = match tokio::task::spawn_blocking(move || cgroup_pids(&dir)).await {
            Ok(pids) => pids,
            Err(e) => {
                warn!(error = %e, "scanning the cgroup");
                return;
            }
        };
        let mut live = HashSet::new();
        // One process per namespace is enough to open it.
        let mut first: HashMap<u64, (u32, u64)> = HashMap::new();
        for chunk in pids.chunks(PIDS_PER_REQUEST) {
            let only_pids = chunk.iter().map(|&(pid, _)| pid).collect();
            let inodes = match helper.inodes(only_pids).await {
                Ok(i) => i,
                Err(e) => {
                    warn!(error = %e, "asking the netns helper for namespaces");
                    return;
                }
            };
            for (&(pid, cgroup), inode) in chunk.iter().zip(inodes) {
                if inode != 0 {
                    live.insert(inode);
                    first.entry(inode).or_insert((pid, cgroup));
                }
            }
        }
        let known: HashSet<u64> = pods.inodes().await.into_iter().map(|(i, _)| i).collect();
        self.failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        for (inode, (pid, cgroup)) in first {
            if inode == pods.host_inode()
                || known.contains(&inode)
                || self.failed.contains_key(&inode)
            {
                continue;
            }
            self.serve_pid(pods, (pid, cgroup), Some(inode)).await;
        }
        pods.after_scan(&live).await;
    }

    /// The kernel saw a socket made in a namespace it did not know.
    pub(super) async fn on_event(&mut self, pods: &Pods, event: &NsEvent) {
        if pods.knows_cookie(event.netns_cookie).await {
            return;
        }
        debug!(
            pid = event.pid,
            cookie = %format!("{:#x}", event.netns_cookie),
            "a socket in a namespace the daemon does not know"
        );
        self.serve_pid(pods, (event.pid, event.cgroup_id), None)
            .await;
    }

    /// Serves the namespace of process `pid` of cgroup `cgroup` (its id;
    /// whose namespace's inode the scan read as `expected`, if it did).
    async fn serve_pid(&mut self, pods: &Pods, (pid, cgroup): (u32, u64), expected: Option<u64>) {
        let Some(helper) = pods.ctx().helper.clone() else {
            return;
        };
        let fd = match helper.open_pid(pid).await {
            Ok(fd) => fd,
            // Gone meanwhile: the next scan sees what is left.
            Err(e) => {
                debug!(pid, error = %e, "opening a process's network namespace");
                return;
            }
        };
        let Ok(inode) = netns::inode(std::os::fd::AsFd::as_fd(&fd)) else {
            return;
        };
        // The pid may have been reused by another process meanwhile.
        if expected.is_some_and(|e| e != inode) || inode == pods.host_inode() {
            return;
        }
        let (outcome, detail) = pods
            .serve(fd, Source::Found, PodMeta::default(), (pid, cgroup))
            .await;
        match outcome {
            Outcome::NotServed => {
                self.failed.insert(inode, Instant::now());
                info!(
                    pid,
                    netns = inode,
                    "not serving a namespace found in the cgroup: {detail}"
                );
            }
            Outcome::Served | Outcome::LeftAlone | Outcome::Released => {}
        }
    }
}

/// Serves the pods running now (one scan, before the daemon says it is
/// ready), takes out what a previous daemon left for namespaces gone
/// since, then finds pods as they come until the task is dropped.
pub(super) async fn start(pods: &Arc<Pods>, events: Option<NsEvents>) -> AbortOnDropHandle<()> {
    let cgroup = pods.ctx().node.cgroup.clone();
    Discovery::default().scan(pods, &cgroup).await;
    pods.forget_stale().await;
    AbortOnDropHandle::new(tokio::spawn(run(pods.clone(), cgroup, events)))
}

/// Runs discovery until dropped: the kernel's reports as they come, and a
/// scan every [`SCAN_EVERY`].
async fn run(pods: Arc<Pods>, cgroup: PathBuf, events: Option<NsEvents>) {
    let mut discovery = Discovery::default();
    let mut ticker = tokio::time::interval(SCAN_EVERY);
    ticker.tick().await;
    let mut events = events;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => discovery.scan(&pods, &cgroup).await,
            read = async {
                match events.as_mut() {
                    Some(e) => e.read(&mut batch).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = read {
                    warn!(error = %e, "reading the kernel's namespace reports; scanning only");
                    events = None;
                }
                for event in std::mem::take(&mut batch) {
                    discovery.on_event(&pods, &event).await;
                }
            }
        }
    }
}

/// Every process of the cgroup subtree at `root` (its own and its
/// descendants' `cgroup.procs`), at most [`MAX_PIDS`], with the id of its
/// cgroup (on cgroup v2, the directory's inode: what
/// `bpf_get_current_cgroup_id` says).
fn cgroup_pids(root: &Path) -> Vec<(u32, u64)> {
    let mut pids = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            let id = std::fs::metadata(&dir).map_or(0, |m| m.ino());
            pids.extend(
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .map(|pid| (pid, id)),
            );
            if pids.len() >= MAX_PIDS {
                pids.truncate(MAX_PIDS);
                break;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_tree_lists_its_processes_and_its_childrens() {
        let dir = tempfile::tempdir().unwrap();
        let child = dir.path().join("pod-a");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "2\n1\n").unwrap();
        std::fs::write(child.join("cgroup.procs"), "3\n").unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let (root, pod) = (ino(dir.path()), ino(&child));
        assert_eq!(cgroup_pids(dir.path()), [(1, root), (2, root), (3, pod)]);
    }
}
