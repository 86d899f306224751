//! The Kubernetes deployment (`deploy/`): the manifests validate against
//! the Kubernetes schemas offline (`kubernetes-validate`, installed by
//! `cargo xtask setup`), the ConfigMap's config loads, the daemon runs and
//! serves with exactly the capabilities the DaemonSet grants, its init
//! container installs the CNI plugin and the uninstall DaemonSet's
//! containers take it and the datapath out again, each with the
//! capabilities its manifest grants (none), and the daemon takes the
//! node's locality from the node's labels through the Kubernetes API when
//! nothing else sets it (flags and the file win, without asking).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use redirector_tests::{
    daemon::{Daemon, DaemonOptions, redirector_bin},
    istio::{destination_rule, service_entry},
    kubeapi::KubeApi,
    manifest::{
        added_capabilities, cap_bits, container, deploy_dir, documents, flag, host_paths,
        mount_path, pod_spec, strings,
    },
    scenario::{Node, TIMEOUT, count},
};
use serde_json::Value;

/// Where `cargo xtask setup` installs the Python test tools.
const TOOLS_VENV: &str = "/opt/redirector-tools/venv";

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
    for resource in [
        "daemonset/redirector",
        "daemonset/redirector-uninstall",
        "configmap/",
        "serviceaccount/",
        "clusterrole/",
        "clusterrolebinding/",
    ] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{resource} not validated:\n{said}"
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
    added_capabilities(&daemonset()["spec"]["template"]["spec"]["containers"][0])
}

#[test]
fn the_daemon_serves_with_only_the_daemonsets_capabilities() {
    let caps = granted_capabilities();
    // Serving pods: the namespaces of the attached cgroup's processes,
    // found through the host's /proc.
    assert_eq!(
        daemonset()["spec"]["template"]["spec"]["hostPID"],
        true,
        "hostPID"
    );
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
    // Without CAP_SETPCAP the bounding set stays as the pod got it.
    assert_eq!(bnd, cap_bits(&caps), "bounding set {bnd:#x}:\n{status}");
    // Once ready, only the capability to mark sockets (SO_MARK) is left
    // to use: CAP_NET_RAW where the kernel takes it (≥ 5.17).
    let mark = redirector_tests::privilege::mark_capability(caps.iter().any(|c| c == "net_raw"));
    for key in ["CapEff:", "CapPrm:"] {
        let set = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(set, mark, "{key} {set:#x}:\n{status}");
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

/// Runs `container`'s args with the test's binary, as root with exactly
/// the capabilities its securityContext adds and `no_new_privs`; each
/// argument starting with a key of `paths` gets that prefix replaced (a
/// mount path by the test's directory).
fn run_container(container: &Value, paths: &[(&str, &Path)]) -> std::process::Output {
    let caps = added_capabilities(container);
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|a| {
            paths
                .iter()
                .find_map(|(from, to)| {
                    a.strip_prefix(from)
                        .map(|rest| format!("{}{rest}", to.display()))
                })
                .unwrap_or(a)
        })
        .collect();
    Command::new("/usr/bin/setpriv")
        .args([
            "--bounding-set",
            &bounding,
            "--inh-caps",
            "-all",
            "--no-new-privs",
            "--",
        ])
        .arg(redirector_bin())
        .args(&args)
        .output()
        .expect("running setpriv")
}

#[test]
fn the_init_container_chains_the_plugin_and_uninstall_takes_it_out_without_capabilities() {
    let pod = pod_spec("daemonset.yaml");
    let init = container(&pod, "initContainers", "install-cni");
    let daemon = &pod["containers"][0];
    // The plugin's socket is where the daemon listens, on a host path the
    // runtime's plugin reaches.
    let init_args = strings(&init["args"]);
    let daemon_args = strings(&daemon["args"]);
    let socket = flag(&init_args, "--socket");
    assert_eq!(socket, flag(&daemon_args, "--cni-socket"));
    let hosts = host_paths(&pod);
    assert_eq!(
        hosts["run"],
        Path::new(&socket).parent().unwrap().to_str().unwrap(),
        "the socket's directory is the node's"
    );
    assert_eq!(mount_path(daemon, "run"), hosts["run"]);
    // The uninstall DaemonSet works on the same host directories.
    let cleanup_pod = pod_spec("uninstall.yaml");
    for (name, path) in host_paths(&cleanup_pod) {
        assert_eq!(hosts.get(&name), Some(&path), "volume {name}");
    }

    let dir = redirector_tests::tempdir::TempDir::new("cni").unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let calico = serde_json::json!({"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[
        {"type":"calico","ipam":{"type":"calico-ipam"}},{"type":"portmap","capabilities":{"portMappings":true}}]});
    let file = conf.join("10-calico.conflist");
    std::fs::write(&file, serde_json::to_vec_pretty(&calico).unwrap()).unwrap();
    let read = || -> Value { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };

    let paths = [
        (mount_path(init, "cni-bin"), bin.as_path()),
        (mount_path(init, "cni-conf"), conf.as_path()),
    ];
    let out = run_container(init, &paths);
    assert!(out.status.success(), "{out:?}");
    let plugins = read()["plugins"].clone();
    assert_eq!(
        plugins[2],
        serde_json::json!({"type":"redirector-cni","socket":socket}),
        "{plugins}"
    );
    let plugin = bin.join("redirector-cni");
    let meta = std::fs::metadata(&plugin).unwrap();
    assert_eq!(
        meta.len(),
        std::fs::metadata(redirector_bin()).unwrap().len()
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o755
    );
    // What the runtime then runs: the plugin, by its type's name.
    let version = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(
        version.status.success()
            && String::from_utf8_lossy(&version.stdout).contains("supportedVersions"),
        "{version:?}"
    );
    // An upgrade's init container: nothing changes but the binary.
    let out = run_container(init, &paths);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read()["plugins"].as_array().unwrap().len(), 3);

    let uninstall = container(&cleanup_pod, "initContainers", "uninstall-cni");
    let paths = [
        (mount_path(uninstall, "cni-bin"), bin.as_path()),
        (mount_path(uninstall, "cni-conf"), conf.as_path()),
    ];
    let out = run_container(uninstall, &paths);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(), calico);
    assert!(!plugin.exists());
}

#[test]
fn the_uninstall_daemonset_removes_the_datapath_without_capabilities() {
    let (mut node, _) = node_with_mydb();
    let daemon = Daemon::start(DaemonOptions {
        netns: &node.ns,
        cgroup: None,
        args: node.args("us-east1"),
        ready_timeout: TIMEOUT,
        env: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("starting the daemon: {e:#}"));
    node.daemon = Some(daemon);
    // SIGTERM leaves the datapath attached and pinned, by design.
    let status = node.daemon.as_mut().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}");
    let pins = node.pins.path().to_owned();
    assert!(pins.exists());
    let pod = pod_spec("uninstall.yaml");
    let remove = container(&pod, "initContainers", "remove-datapath");
    let pin_dir = flag(&strings(&remove["args"]), "--pin-dir");
    assert!(
        pin_dir.starts_with(mount_path(remove, "bpffs")),
        "{pin_dir} is on the bpffs mount"
    );
    assert_eq!(
        mount_path(remove, "run"),
        "/run/redirector",
        "where the lock is"
    );
    let out = run_container(remove, &[(pin_dir.as_str(), pins.as_path())]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached"),
        "{out:?}"
    );
    assert!(!pins.exists(), "{} left", pins.display());
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
