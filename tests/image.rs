//! The DaemonSet's image: `deploy/Dockerfile` built with podman from the
//! binary under test on a local Debian 12 base (cached, see
//! `redirector_tests::image`), and the manifests' containers run from it
//! as a node would run them: each with its securityContext exactly
//! (`--cap-drop all` plus its capabilities, no_new_privs, read-only root,
//! uid 0, never privileged), the pod's host namespaces, and its volumes
//! mounted where the manifest mounts them. A volume's host side is the
//! real one where the test can share it (bpffs, the cgroup root) and a
//! directory of the test otherwise (the CNI directories, /run/redirector,
//! the ConfigMap, the emptyDir), so runs never touch the node's own.
//!
//! One node's life: the init container waits for the cluster's CNI config
//! and chains the plugin; the daemon gets ready (by its probe's own
//! command) holding only CAP_NET_ADMIN in every thread; a pod is created
//! through the installed plugin; SIGTERM stops the daemon; the uninstall
//! DaemonSet's containers take the plugin and the datapath away.

use std::{
    collections::BTreeMap,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use redirector_common::{Life, map_names};
use redirector_tests::{
    cgroup::TestCgroup,
    client::Client,
    daemon::{PinDirGuard, redirector_bin},
    http::HttpServer,
    image::{self, Container, RunSpec},
    manifest::{added_capabilities, cap_bits, container, flag, mount_path, pod_spec, strings},
    netns::Netns,
    privilege,
    tempdir::TempDir,
};
use serde_json::{Value, json};

const VIP: &str = "240.240.0.90";
/// How long the daemon has to get ready, and a one-shot container to end.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One node's host side: where each volume of the manifests is.
struct Node {
    _dir: TempDir,
    volumes: BTreeMap<&'static str, PathBuf>,
    cgroup: TestCgroup,
    pins: PinDirGuard,
}

impl Node {
    fn new() -> Node {
        let dir = TempDir::new("image-node").unwrap();
        let mut volumes = BTreeMap::from([
            ("bpffs", PathBuf::from("/sys/fs/bpf")),
            ("cgroup", PathBuf::from("/sys/fs/cgroup")),
        ]);
        for name in ["cni-bin", "cni-conf", "run", "config", "pod-run"] {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            volumes.insert(name, path);
        }
        Node {
            _dir: dir,
            volumes,
            cgroup: TestCgroup::new().unwrap(),
            pins: PinDirGuard::for_test(),
        }
    }

    fn volume(&self, name: &str) -> &Path {
        self.volumes
            .get(name)
            .unwrap_or_else(|| panic!("the test has no host side for volume {name}"))
    }

    /// `container` of `pod` in podman's words, with `args` (default: the
    /// manifest's).
    fn spec(&self, pod: &Value, container: &Value, args: Option<Vec<String>>) -> RunSpec {
        let mounts = container["volumeMounts"]
            .as_array()
            .map(|mounts| {
                mounts
                    .iter()
                    .map(|m| {
                        let name = m["name"].as_str().unwrap();
                        (
                            self.volume(name).to_owned(),
                            m["mountPath"].as_str().unwrap().to_owned(),
                            m["readOnly"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let env = container["env"]
            .as_array()
            .map(|env| {
                env.iter()
                    .filter_map(|e| {
                        // fieldRef values (the node's name) are the API's.
                        Some((e["name"].as_str()?.into(), e["value"].as_str()?.into()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let sc = &container["securityContext"];
        RunSpec {
            caps: added_capabilities(container),
            host_network: pod["hostNetwork"] == true,
            host_pid: pod["hostPID"] == true,
            read_only: sc["readOnlyRootFilesystem"] == true,
            no_new_privs: sc["allowPrivilegeEscalation"] == false,
            user: sc["runAsUser"].as_u64().map(|u| u as u32),
            mounts,
            env,
            command: container["command"]
                .as_array()
                .map(|_| strings(&container["command"])),
            args: args.unwrap_or_else(|| {
                container["args"]
                    .as_array()
                    .map(|_| strings(&container["args"]))
                    .unwrap_or_default()
            }),
        }
    }
}

/// Runs a one-shot container to its end; its exit code and logs.
fn run_to_end(image: &str, spec: &RunSpec) -> (i32, String) {
    let c = Container::start(image, spec).unwrap();
    let code = c
        .wait(TIMEOUT)
        .unwrap()
        .unwrap_or_else(|| panic!("{} still runs after {TIMEOUT:?}:\n{}", c.name(), c.logs()));
    (code, c.logs())
}

/// A port free for TCP and UDP on 127.0.0.1 of this (the host's) network.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn calico() -> Value {
    json!({"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[
        {"type":"calico","ipam":{"type":"calico-ipam"}},
        {"type":"portmap","snat":true,"capabilities":{"portMappings":true}}]})
}

#[test]
fn the_image_runs_the_daemonset_as_its_manifests_say() {
    privilege::require_root();
    let node = Node::new();
    let image = image::build(&redirector_bin(), None).unwrap_or_else(|e| panic!("{e:#}"));
    let size = image.size().unwrap();
    eprintln!(
        "image {}: {:.1} MB (podman's count, base included)",
        image.name(),
        size as f64 / 1e6
    );
    let ds = pod_spec("daemonset.yaml");

    // The init container: the cluster's CNI writes its config a moment
    // after the pod started.
    let init = container(&ds, "initContainers", "install-cni");
    let installing = Container::start(image.name(), &node.spec(&ds, init, None)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let conflist = node.volume("cni-conf").join("10-calico.conflist");
    std::fs::write(&conflist, serde_json::to_vec_pretty(&calico()).unwrap()).unwrap();
    let code = installing.wait(TIMEOUT).unwrap();
    let logs = installing.logs();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("waiting for the node's primary CNI network config"),
        "{logs}"
    );
    let chained: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    let socket = flag(&strings(&init["args"]), "--socket");
    assert_eq!(
        chained["plugins"][2],
        json!({"type":"redirector-cni","socket":socket})
    );
    let plugin = node.volume("cni-bin").join("redirector-cni");
    assert!(plugin.is_file(), "{logs}");

    // The daemon, with the DaemonSet's args but for this test's cgroup,
    // pins and ports (it shares the host's network).
    let daemon_spec = ds["containers"][0].clone();
    let config_dir = node.volume("config");
    let (listen, dns, admin, endpoint) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        config_dir.join("config.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: image-test
spec:
  hosts: [image.test]
  addresses: [{VIP}]
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {endpoint}}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
"
        ),
    )
    .unwrap();
    let mut args = strings(&daemon_spec["args"]);
    let cgroup_at = args.iter().position(|a| a == "--cgroup").unwrap() + 1;
    args[cgroup_at] = node.cgroup.path().display().to_string();
    args.extend([
        "--pin-dir".into(),
        node.pins.path().display().to_string(),
        "--locality".into(),
        "us-east1".into(),
        "--listen-port".into(),
        listen.to_string(),
        "--dns-port".into(),
        dns.to_string(),
        "--admin-port".into(),
        admin.to_string(),
    ]);
    let spec = node.spec(&ds, &daemon_spec, Some(args));
    assert!(spec.host_network && spec.host_pid && spec.read_only && spec.no_new_privs);
    let daemon = Container::start(image.name(), &spec).unwrap();
    let probe = strings(&daemon_spec["readinessProbe"]["exec"]["command"]);
    let start = Instant::now();
    loop {
        let out = daemon.exec(&probe).unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            daemon.running().unwrap(),
            "the daemon exited:\n{}",
            daemon.logs()
        );
        assert!(
            start.elapsed() < TIMEOUT,
            "not ready within {TIMEOUT:?} ({out:?}):\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "daemon ready {:.1} s after its start",
        start.elapsed().as_secs_f64()
    );
    // Its pid on the host (hostPID), from the ready file the probe read.
    let ready_file = node.volume("pod-run").join(
        Path::new(&flag(&strings(&daemon_spec["args"]), "--ready-file"))
            .file_name()
            .unwrap(),
    );
    let pid: u32 = std::fs::read_to_string(&ready_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        Path::new("/usr/local/bin/redirector"),
        "the image's binary"
    );
    let granted = cap_bits(&spec.caps);
    let mark =
        redirector_tests::privilege::mark_capability(spec.caps.iter().any(|c| c == "net_raw"));
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let set = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap()
        };
        assert_eq!(set("CapEff:"), mark, "only the mark capability:\n{status}");
        assert_eq!(set("CapPrm:"), mark, "only the mark capability:\n{status}");
        assert_eq!(set("CapInh:"), 0, "{status}");
        assert_eq!(set("CapBnd:"), granted, "the pod's bounding set:\n{status}");
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
    // The death watch, with the DaemonSet's capabilities and the runtime's
    // default seccomp profile: its raw tracepoint attached, and the daemon
    // registered by its pid.
    assert!(
        daemon.logs().contains("watching for this daemon's death"),
        "{}",
        daemon.logs()
    );
    let life = node.pins.path().join("v3").join(map_names::LIFE);
    let life: Array<MapData, Life> =
        Array::try_from(Map::Array(MapData::from_pin(&life).unwrap())).unwrap();
    assert_eq!(life.get(&0, 0).unwrap().serving_pid, pid);
    // The liveness probe's port (this test's listen port).
    std::net::TcpStream::connect(("127.0.0.1", listen)).expect("the proxy listens");

    serve_a_pod(&node, &plugin, &chained["plugins"][2], endpoint);

    // Stopping as the kubelet does: SIGTERM, the grace period.
    let grace = Duration::from_secs(ds["terminationGracePeriodSeconds"].as_u64().unwrap());
    let code = daemon.stop(grace).unwrap();
    assert_eq!(code, 0, "{}", daemon.logs());
    assert!(
        node.pins.path().exists(),
        "the datapath outlives the daemon"
    );

    // The uninstall DaemonSet's init containers, in order.
    let uninstall = pod_spec("uninstall.yaml");
    let remove_cni = container(&uninstall, "initContainers", "uninstall-cni");
    let (code, logs) = run_to_end(image.name(), &node.spec(&uninstall, remove_cni, None));
    assert_eq!(code, 0, "{logs}");
    let restored: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(restored, calico(), "{logs}");
    assert!(!plugin.exists(), "{logs}");
    let remove_datapath = container(&uninstall, "initContainers", "remove-datapath");
    let mut args = strings(&remove_datapath["args"]);
    let pins_at = args.iter().position(|a| a == "--pin-dir").unwrap() + 1;
    assert!(args[pins_at].starts_with(mount_path(remove_datapath, "bpffs")));
    args[pins_at] = node.pins.path().display().to_string();
    let (code, logs) = run_to_end(
        image.name(),
        &node.spec(&uninstall, remove_datapath, Some(args)),
    );
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("detached"), "{logs}");
    assert!(!node.pins.path().exists(), "{logs}");
    // And the container left waiting to be deleted starts.
    let done = container(&uninstall, "containers", "done");
    let waiting = Container::start(image.name(), &node.spec(&uninstall, done, None)).unwrap();
    assert!(
        waiting.wait(Duration::from_secs(1)).unwrap().is_none(),
        "{}",
        waiting.logs()
    );
}

/// A pod created on this node through the plugin the init container
/// installed, run as the container runtime runs it: by its type's name,
/// with `CNI_*`, its entry of the conflist (socket on this node's side of
/// the `run` volume) and the primary plugin's result.
///
/// A pod created through the installed plugin is served by the daemon in
/// the image before ADD returns (the plugin's stderr says `served`), and
/// its connect to the VIP reaches an endpoint only the pod's namespace
/// has (127.0.0.1:`endpoint` there): through the daemon's listener and
/// sockets inside the pod.
fn serve_a_pod(node: &Node, plugin: &Path, entry: &Value, endpoint: u16) {
    let pod = Netns::new("pod").unwrap();
    let _inside = HttpServer::start(&pod, ([127, 0, 0, 1], endpoint).into(), "inside the pod")
        .expect("starting the pod's own endpoint");
    let socket_on_node = node.volume("run").join(
        Path::new(entry["socket"].as_str().unwrap())
            .file_name()
            .unwrap(),
    );
    let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":pod.path()}],
                      "ips":[{"address":"10.244.0.7/24","interface":0}]});
    let mut config = entry.clone();
    config["cniVersion"] = json!("1.0.0");
    config["name"] = json!("k8s-pod-network");
    config["socket"] = json!(socket_on_node);
    config["prevResult"] = prev.clone();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod.name())
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap())
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=image-test",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        config.to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, prev, "the pod's result, passed through:\n{stderr}");
    assert!(
        stderr.contains("redirector-cni: served"),
        "the plugin's log: {stderr}"
    );
    let out = Client::new(&pod, "curl")
        .args(["-sS", "-m", "10", &format!("http://{VIP}/")])
        .cgroup(&node.cgroup)
        .timeout(TIMEOUT)
        .run()
        .expect("running curl in the pod");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "healthy: inside the pod",
        "{out:?}"
    );
}
