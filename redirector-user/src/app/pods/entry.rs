//! One namespace as the daemon holds it: what it knows of it (where it
//! came from, which pod), and how it serves it.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use redirector_common::{
    NS_DETAIL_LEN, NSI_CNI, NSI_FOUND, NSI_HOST, NSI_LEFT_ALONE, NSI_SERVED, NsId, NsInfo,
    POD_NAME_LEN, POD_NAMESPACE_LEN, write_str,
};
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use crate::{handover::Listening, netns::Namespace, proxy};

/// What the CNI plugin said of a pod, for display and for `DEL`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::app) struct PodMeta {
    pub(in crate::app) container_id: Option<String>,
    pub(in crate::app) namespace: Option<String>,
    pub(in crate::app) name: Option<String>,
}

/// How the daemon came to serve a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(in crate::app) enum Source {
    /// The daemon's own.
    Host,
    /// Told by the CNI plugin.
    Cni,
    /// Found: a process of the attached cgroup lives in it.
    Found,
}

/// A namespace being served.
pub(super) struct Serving {
    pub(super) accept: Vec<AbortOnDropHandle<()>>,
    pub(super) responders: Vec<AbortOnDropHandle<()>>,
    pub(super) drain: proxy::Drain,
    /// Duplicates of its sockets (and, for a pod, the namespace and its
    /// maps), for a successor.
    pub(super) kept: Listening,
    /// What listens (`NSI_*`).
    pub(super) bits: u8,
    /// The namespace, to serve again on its kept sockets after a failed
    /// handover.
    pub(super) ns: Arc<Namespace>,
}

pub(super) enum State {
    Serving(Serving),
    /// Its own app holds the proxy or DNS port (the reason says which).
    LeftAlone(String),
}

pub(super) struct Entry {
    pub(super) id: NsId,
    pub(super) cookie: Option<u64>,
    pub(super) inode: u64,
    pub(super) meta: PodMeta,
    pub(super) source: Source,
    pub(super) state: State,
    /// A process of the namespace when it was found (0: told by CNI).
    pub(super) pid: u32,
    /// That process's cgroup (its id; 0: told by CNI, or handed over).
    pub(super) cgroup: u64,
    /// Whether the cgroup scan ever saw a process in it, and for how many
    /// scans in a row it saw none since.
    pub(super) seen: bool,
    pub(super) missing: u32,
    pub(super) setup: Duration,
    pub(super) since: SystemTime,
}

impl Entry {
    /// `d`, served or left alone (`state`) from now on, set up since
    /// `started`.
    pub(super) fn new(d: Described, state: State, started: Instant) -> Entry {
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

    /// What a successor needs to know of it.
    pub(super) fn described(&self) -> Described {
        Described {
            ns: self.id,
            inode: self.inode,
            cookie: self.cookie,
            source: self.source,
            meta: self.meta.clone(),
            pid: self.pid,
            cgroup: self.cgroup,
        }
    }

    pub(super) fn name(&self) -> String {
        display_name(&self.meta, self.source, self.inode)
    }

    pub(super) fn info(&self) -> NsInfo {
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
pub(super) fn display_name(meta: &PodMeta, source: Source, inode: u64) -> String {
    match (source, &meta.namespace, &meta.name) {
        (Source::Host, _, _) => "host".to_owned(),
        (_, Some(ns), Some(name)) => format!("{ns}/{name}"),
        (_, None, Some(name)) => name.clone(),
        _ => format!("netns:[{inode}]"),
    }
}

/// What one served namespace looks like to `/config_dump` and the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(in crate::app) struct Described {
    pub(in crate::app) ns: NsId,
    pub(in crate::app) inode: u64,
    pub(in crate::app) cookie: Option<u64>,
    pub(in crate::app) source: Source,
    pub(in crate::app) meta: PodMeta,
    pub(in crate::app) pid: u32,
    /// The cgroup it was found in (0: announced by the CNI plugin).
    #[serde(default)]
    pub(in crate::app) cgroup: u64,
}
