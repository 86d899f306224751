//! What the CNI plugin and the daemon say to each other over the daemon's
//! node-local socket (`--cni-socket`, default [`DEFAULT_SOCKET`]): one
//! exchange per connection on a `SOCK_STREAM` Unix socket.
//!
//! 1. The plugin sends one JSON line, a [`Request`], with the pod's network
//!    namespace as an `SCM_RIGHTS` descriptor on `add` (the plugin runs as
//!    root in the host's namespaces and opened `CNI_NETNS` itself, so the
//!    daemon needs no access to the runtime's netns directory), and on
//!    `del` too while the namespace still exists (the container id stays
//!    the key; the descriptor is only a second identity). The plugin
//!    checks that it is a network namespace (`NS_GET_NSTYPE`) and sends
//!    it only to a peer of its own uid.
//! 2. The daemon answers one JSON line, a [`Response`], once the pod is
//!    served (its listeners are up) or it decided not to serve it, and
//!    closes.
//!
//! The daemon refuses peers of another uid. Either side gives up on a
//! message that does not come within [`EXCHANGE_TIMEOUT`] or is longer
//! than [`MAX_MESSAGE`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon listens for the plugin unless told otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/run/redirector/cni.sock";
/// How long either side waits for the other's message.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A longer message is not one of ours.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024;

/// What the runtime asked of the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    /// A pod's network is up: serve its namespace (passed along).
    Add,
    /// A pod's network is being torn down: release what is held for it.
    Del,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) op: Op,
    /// `CNI_CONTAINERID`: the pod sandbox, the key `del` names it by.
    pub(crate) container_id: String,
    /// `CNI_NETNS`, for display (the namespace itself is the descriptor).
    #[serde(default)]
    pub(crate) netns: String,
    /// From `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), for display.
    #[serde(default)]
    pub(crate) pod_namespace: Option<String>,
    #[serde(default)]
    pub(crate) pod_name: Option<String>,
}

/// How the daemon took a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// The pod's listeners are up: its traffic is served from now on.
    Served,
    /// The pod's own app holds the proxy or DNS port: its traffic is left
    /// as it would be without the redirector.
    LeftAlone,
    /// Released (`del`), or nothing was held for it.
    Released,
    /// The daemon could not serve it (the reason is in `detail`); the
    /// kernel fails open for it as when no daemon runs.
    NotServed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) outcome: Outcome,
    #[serde(default)]
    pub(crate) detail: String,
}

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from a `CNI_ARGS` value
/// (`key=value` pairs separated by `;`).
pub(crate) fn pod_from_args(args: &str) -> (Option<String>, Option<String>) {
    let mut namespace = None;
    let mut name = None;
    for pair in args.split(';') {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => namespace = Some(v.to_owned()),
            Some(("K8S_POD_NAME", v)) if !v.is_empty() => name = Some(v.to_owned()),
            _ => {}
        }
    }
    (namespace, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_come_from_cni_args() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=sleep-7c9;\
                    K8S_POD_INFRA_CONTAINER_ID=abc";
        assert_eq!(
            pod_from_args(args),
            (Some("default".into()), Some("sleep-7c9".into()))
        );
        assert_eq!(pod_from_args(""), (None, None));
        assert_eq!(pod_from_args("K8S_POD_NAME="), (None, None));
    }

    #[test]
    fn messages_are_one_json_line_each() {
        let r = Request {
            op: Op::Add,
            container_id: "abc".into(),
            netns: "/var/run/netns/cni-1".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("sleep".into()),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        let minimal: Request =
            serde_json::from_str(r#"{"op":"del","container_id":"abc"}"#).unwrap();
        assert_eq!(minimal.op, Op::Del);
    }
}
