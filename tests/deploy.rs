//! The Kubernetes deployment (`deploy/`): the manifests validate against
//! the Kubernetes schemas offline (`kubernetes-validate`, installed by
//! `cargo xtask setup`), the ConfigMap's config loads, the daemon runs and
//! serves with exactly the capabilities the DaemonSet grants, and it takes
//! the node's locality from the node's labels through the Kubernetes API
//! when nothing else sets it (flags and the file win, without asking).

use std::{path::PathBuf, process::Command};

use redirector_tests::{
    daemon::{Daemon, DaemonOptions, redirector_bin},
    istio::{destination_rule, service_entry},
    kubeapi::KubeApi,
    scenario::{Node, TIMEOUT, count},
};
use serde_json::Value;

/// Where `cargo xtask setup` installs the Python test tools.
const TOOLS_VENV: &str = "/opt/redirector-tools/venv";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of `deploy/<file>`.
fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn daemonset() -> Value {
    documents("daemonset.yaml")
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/daemonset.yaml")
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validate = format!("{TOOLS_VENV}/bin/kubernetes-validate");
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("listing deploy/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("running {validate} (cargo xtask setup installs it): {e}"));
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for kind in [
        "daemonset",
        "configmap",
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}/")),
            "{kind} not validated:\n{said}"
        );
    }
}

#[test]
fn the_config_map_holds_a_config_that_loads() {
    let cm = documents("configmap.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    // The DaemonSet mounts this ConfigMap where its --config points.
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .expect("the ConfigMap is a volume");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("and mounted");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let key = config_arg
        .strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap()))
        .expect("--config is in the mount");
    let text = cm["data"][key].as_str().expect("the config key");
    let dir = redirector_tests::tempdir::TempDir::new("deploy").unwrap();
    let file = dir.path().join(key);
    std::fs::write(&file, text).unwrap();
    let out = Command::new(redirector_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("running redirector check");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("mydb.com:80 (HTTP)"), "{printed}");
    assert!(
        printed.contains("dynamodb.us-west-1.amazonaws.com"),
        "{printed}"
    );
}

/// `CAP_X` names for the DaemonSet's `capabilities.add` (Kubernetes
/// writes them without the prefix).
fn granted_capabilities() -> Vec<String> {
    let ds = daemonset();
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["privileged"], false);
    sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_ascii_lowercase())
        .collect()
}

#[test]
fn the_daemon_serves_with_only_the_daemonsets_capabilities() {
    let caps = granted_capabilities();
    assert!(!caps.iter().any(|c| c == "sys_admin"), "{caps:?}");
    let mut node = Node::new();
    node.a_record("east.test", [127, 0, 10, 1], 30);
    node.a_record("west.test", [127, 0, 10, 2], 30);
    node.http("127.0.10.1:80", "east");
    node.http("127.0.10.2:80", "west");
    let vip = "240.240.0.80";
    node.write_config(
        &(service_entry(
            Some(vip),
            ("east.test", "us-east1", 80),
            ("west.test", "us-west1", 80),
        ) + &destination_rule(1, "15s", "1m")),
    );
    // As root (the pins are root's) with nothing but the granted
    // capabilities in every set.
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "--bounding-set".to_owned(),
        bounding,
        "--inh-caps".into(),
        "-all".into(),
        "--".into(),
        redirector_bin().display().to_string(),
    ];
    args.extend(node.args("us-east1"));
    // The pod's readiness, as its probe reads it.
    let (ready_file, probe) = readiness();
    let ready_file = node.dir.path().join(ready_file.file_name().unwrap());
    args.extend(["--ready-file".into(), ready_file.display().to_string()]);
    let daemon = Daemon::start_program(
        &PathBuf::from("/usr/bin/setpriv"),
        DaemonOptions {
            netns: &node.ns,
            cgroup: None,
            args,
            ready_timeout: TIMEOUT,
            env: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("the daemon with capabilities {caps:?} only: {e:#}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    node.daemon = Some(daemon);
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_ADMIN is 12, CAP_BPF 39.
    let bits = |names: &[String]| {
        names.iter().fold(0u64, |acc, n| {
            acc | match n.as_str() {
                "net_admin" => 1 << 12,
                "bpf" => 1 << 39,
                other => panic!("a capability this test does not know: {other}"),
            }
        })
    };
    // Without CAP_SETPCAP the bounding set stays as the pod got it.
    assert_eq!(bnd, bits(&caps), "bounding set {bnd:#x}:\n{status}");
    // Once ready, only CAP_NET_ADMIN (SO_MARK) is left to use.
    for key in ["CapEff:", "CapPrm:"] {
        let set = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(set, 1 << 12, "{key} {set:#x}:\n{status}");
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert_eq!(count(&node.bodies(vip, 3), "healthy: east"), 3);
    // The probe's command, with our binary and file, says ready.
    let out = Command::new(redirector_bin())
        .args(&probe[1..])
        .arg(&ready_file)
        .output()
        .expect("running the readiness probe");
    assert!(out.status.success(), "{out:?}");
}

/// The file the DaemonSet's `--ready-file` names, and its readiness
/// probe's command but for that file's path (which must be the same, on a
/// volume of the pod's own).
fn readiness() -> (PathBuf, Vec<String>) {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let args = strings(&container["args"]);
    let file = args[args.iter().position(|a| a == "--ready-file").unwrap() + 1].clone();
    let mut probe = strings(&container["readinessProbe"]["exec"]["command"]);
    assert_eq!(probe[0], "/usr/local/bin/redirector", "the image's binary");
    assert_eq!(probe.pop().as_deref(), Some(file.as_str()), "{probe:?}");
    assert_eq!(probe[1..], ["ready", "--ready-file"]);
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| std::path::Path::new(&file).starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the ready file is on a mounted volume");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "the pod's own: {volume}");
    (PathBuf::from(file), probe)
}

fn node_with_mydb() -> (Node, &'static str) {
    let mut node = Node::new();
    node.a_record("east.test", [127, 0, 10, 1], 30);
    node.a_record("west.test", [127, 0, 10, 2], 30);
    node.http("127.0.10.1:80", "east");
    node.http("127.0.10.2:80", "west");
    let vip = "240.240.0.81";
    node.write_config(
        &(service_entry(
            Some(vip),
            ("east.test", "us-east1", 80),
            ("west.test", "us-west1", 80),
        ) + &destination_rule(1, "15s", "1m")),
    );
    (node, vip)
}

fn start_in_pod(node: &mut Node, api: &KubeApi, locality_flag: Option<&str>) {
    let mut args = node.args(locality_flag.unwrap_or(""));
    if locality_flag.is_none() {
        let at = args.iter().position(|a| a == "--locality").unwrap();
        args.drain(at..at + 2);
    }
    let daemon = Daemon::start(DaemonOptions {
        netns: &node.ns,
        cgroup: None,
        args,
        ready_timeout: TIMEOUT,
        env: api.pod_env(),
    })
    .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
    node.daemon = Some(daemon);
}

#[test]
fn the_locality_comes_from_the_nodes_labels_through_the_kubernetes_api() {
    let (mut node, vip) = node_with_mydb();
    let api = KubeApi::start(
        &node.ns,
        "127.0.0.9:6443".parse().unwrap(),
        "node-a",
        &[
            ("topology.kubernetes.io/region", "us-west1"),
            ("topology.kubernetes.io/zone", "us-west1-b"),
            ("kubernetes.io/hostname", "node-a"),
        ],
        &node.dir.path().join("serviceaccount"),
    )
    .unwrap();
    start_in_pod(&mut node, &api, None);
    assert_eq!(api.requests(), 1);
    assert!(
        node.log().contains("locality from the node's labels")
            && node.log().contains("us-west1/us-west1-b"),
        "{}",
        node.log()
    );
    // In us-west1, west is the local region.
    assert_eq!(count(&node.bodies(vip, 3), "healthy: west"), 3);
    assert_eq!(node.endpoint("west.test")["priority"], 0);
}

#[test]
fn a_locality_flag_wins_and_the_api_is_not_asked() {
    let (mut node, vip) = node_with_mydb();
    let api = KubeApi::start(
        &node.ns,
        "127.0.0.9:6443".parse().unwrap(),
        "node-a",
        &[("topology.kubernetes.io/region", "us-west1")],
        &node.dir.path().join("serviceaccount"),
    )
    .unwrap();
    start_in_pod(&mut node, &api, Some("us-east1"));
    assert_eq!(api.requests(), 0);
    assert_eq!(count(&node.bodies(vip, 3), "healthy: east"), 3);
}

#[test]
fn an_unknown_node_stops_the_start_with_the_reason() {
    let (node, _) = node_with_mydb();
    let api = KubeApi::start(
        &node.ns,
        "127.0.0.9:6443".parse().unwrap(),
        "some-other-node",
        &[],
        &node.dir.path().join("serviceaccount"),
    )
    .unwrap();
    let mut env = api.pod_env();
    env.retain(|(k, _)| k != "NODE_NAME");
    env.push(("NODE_NAME".into(), "node-a".into()));
    let mut args = node.args("");
    let at = args.iter().position(|a| a == "--locality").unwrap();
    args.drain(at..at + 2);
    let mut cmd = Command::new(redirector_bin());
    cmd.args(&args).envs(env);
    node.ns.configure(&mut cmd);
    let out = cmd.output().expect("running redirector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reading this node's locality from its Kubernetes labels")
            && stderr.contains("404")
            && stderr.contains("NODE_NAME"),
        "{stderr}"
    );
}
