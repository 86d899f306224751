//! `redirector pods`: the network namespaces the daemon serves (its own,
//! and each pod's), read from its pinned maps like `redirector endpoints`:
//! which pod (when the CNI plugin named it), how it was found, what
//! listens there, the connections open, and its state. While no daemon
//! runs, every namespace it served fails open (the kernel sends its
//! connects straight to endpoints), and the table says so.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redirector_common::{
    NSI_CNI, NSI_DNS4, NSI_DNS6, NSI_FOUND, NSI_HOST, NSI_LEFT_ALONE, NSI_PROXY4, NSI_PROXY6,
    NSI_SERVED, read_str,
};
use serde::Serialize;

use super::{pid_alive, table};
use crate::datapath::{PinError, PinnedState};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) daemon_pid: u32,
    pub(crate) daemon_running: bool,
    pub(crate) namespaces: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    /// The namespace's netns cookie (or, without cookies, its inode with
    /// the top bit set), as the maps know it.
    pub(crate) netns: String,
    /// `namespace/name` of the pod, as the CNI plugin said; `host` for the
    /// node's own namespace; empty when found without the plugin.
    pub(crate) pod: String,
    /// `host`, `cni` or `found`.
    pub(crate) source: &'static str,
    /// `served`, `left alone`, or `failing open` (no daemon runs).
    pub(crate) state: &'static str,
    /// Why it is left alone.
    pub(crate) detail: String,
    /// What the daemon listens on there (`proxy4`, `proxy6`, `dns4`,
    /// `dns6`).
    pub(crate) listeners: Vec<&'static str>,
    pub(crate) open_connections: u32,
    /// From being told of it or finding it to its listeners being up.
    pub(crate) setup_ms: f64,
    /// A process of the namespace when it was found (0: told by CNI).
    pub(crate) pid: u32,
    pub(crate) served_for_secs: u64,
}

pub(crate) fn report(pin_dir: &Path) -> Result<Report, PinError> {
    let state = PinnedState::read(pin_dir)?;
    let daemon_running = pid_alive(state.config.daemon_pid);
    let now = SystemTime::now();
    let mut namespaces: Vec<Row> = state
        .namespaces
        .iter()
        .map(|(id, info)| {
            let (ns, name) = (read_str(&info.pod_namespace), read_str(&info.pod_name));
            let pod = match (info.source, ns, name) {
                (NSI_HOST, _, _) => "host".to_owned(),
                (_, "", "") => String::new(),
                (_, "", name) => name.to_owned(),
                (_, ns, name) => format!("{ns}/{name}"),
            };
            let since = UNIX_EPOCH + Duration::from_millis(info.since_unix_ms);
            Row {
                netns: format!("{id:#x}"),
                pod,
                source: match info.source {
                    NSI_HOST => "host",
                    NSI_CNI => "cni",
                    NSI_FOUND => "found",
                    _ => "?",
                },
                state: match (daemon_running, info.state) {
                    (_, NSI_LEFT_ALONE) => "left alone",
                    (false, _) => "failing open",
                    (true, NSI_SERVED) => "served",
                    (true, _) => "not served",
                },
                detail: read_str(&info.detail).to_owned(),
                listeners: [
                    (NSI_PROXY4, "proxy4"),
                    (NSI_PROXY6, "proxy6"),
                    (NSI_DNS4, "dns4"),
                    (NSI_DNS6, "dns6"),
                ]
                .into_iter()
                .filter(|(bit, _)| info.listeners & bit != 0)
                .map(|(_, name)| name)
                .collect(),
                open_connections: if daemon_running {
                    info.open_connections
                } else {
                    0
                },
                setup_ms: f64::from(info.setup_us) / 1000.0,
                pid: info.pid,
                served_for_secs: now.duration_since(since).unwrap_or_default().as_secs(),
            }
        })
        .collect();
    // The node first, then pods by name.
    namespaces.sort_by(|a, b| (a.source != "host", &a.pod).cmp(&(b.source != "host", &b.pod)));
    Ok(Report {
        daemon_pid: state.config.daemon_pid,
        daemon_running,
        namespaces,
    })
}

pub(crate) fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redirector pid {} ({}), {} network namespace(s)\n",
        r.daemon_pid,
        if r.daemon_running {
            "running"
        } else {
            "NOT RUNNING: every namespace fails open"
        },
        r.namespaces.len()
    );
    let rows: Vec<Vec<String>> = r
        .namespaces
        .iter()
        .map(|n| {
            vec![
                if n.pod.is_empty() {
                    "-".into()
                } else {
                    n.pod.clone()
                },
                n.netns.clone(),
                n.source.into(),
                if n.detail.is_empty() {
                    n.state.into()
                } else {
                    format!("{} ({})", n.state, n.detail)
                },
                if n.listeners.is_empty() {
                    "-".into()
                } else {
                    n.listeners.join(",")
                },
                n.open_connections.to_string(),
                format!("{:.1}ms", n.setup_ms),
                format!("{}s", n.served_for_secs),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "POD",
            "NETNS",
            "SOURCE",
            "STATE",
            "LISTENERS",
            "CONNECTIONS",
            "SETUP",
            "AGE",
        ],
        &rows,
    );
    out
}
