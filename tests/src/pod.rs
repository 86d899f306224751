//! Pods on a test node, made the way a container runtime makes them: a
//! network namespace of their own, wired by the real CNI plugins
//! (Debian's `containernetworking-plugins`, in [`CNI_PLUGIN_DIR`]) through
//! the runtime's side of CNI in [`crate::cni`].
//!
//! A [`PodNetwork`] is the cluster network on one node (a
//! [`crate::scenario::Node`], whose [`crate::scenario::Node::pods`] makes
//! it): the chain `bridge` (bridge `cni0` in the node's namespace with the
//! node's pod subnet, 10.244.0.0/24 by default; its gateway 10.244.0.1 on
//! the bridge, `isGateway`, no masquerade, `host-local` leases in the
//! network's temp dir) then `loopback`, then whatever a test chains after
//! them (the redirector's own plugin: [`PodNetwork::chain_redirector`]).
//! The plugins run inside the node's namespace with `CNI_NETNS` naming the
//! pod's; their `CNI_PATH` is Debian's directory then the network's own
//! [`PodNetwork::bin_dir`], where a test puts `redirector-cni`. The node
//! serves cluster DNS at [`CLUSTER_DNS`] (an address on its `lo`) from its
//! real DNS server, and forwards: pods reach endpoint namespaces linked to
//! the node ([`crate::scenario::Node::endpoint_ns`]), which route the pod
//! subnet back through it ([`PodNetwork::route_back`]). Nothing has a route
//! off the box. IPv4 only.
//!
//! A [`Pod`] is made as a runtime runs a sandbox: its cgroup
//! `<node cgroup>/pod-<name>` (under the one the daemon attaches to), a
//! namespace `rdt-<pid>-<n>-pod_<name>` with `lo` down, then CNI ADD
//! (`CNI_ARGS` carries `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
//! `K8S_POD_INFRA_CONTAINER_ID`), then its infra process (`sleep
//! infinity` for `pause`, [`Pod::infra_pid`]). Its processes ([`Pod::command`],
//! [`Pod::client`], [`Pod::spawn`]) run in its namespace and cgroup and
//! see the kubelet's resolv.conf (cluster DNS, search domains, `ndots:5`)
//! through a bind mount in a mount namespace of their own. Deleting it
//! ([`Pod::delete`], or Drop) goes the other way: kill its processes and
//! remove its cgroup, CNI DEL in reverse order with the ADD's result, then
//! the namespace. Names carry the test's pid, so `cargo xtask sweep`
//! removes what a killed test left (namespaces; node cgroups with their
//! pods'); bridge and veths live in the node's namespace, the leases in a
//! temp dir.
//!
//! ```no_run
//! use redirector_tests::scenario::Node;
//!
//! let node = Node::new();
//! let east = node.endpoint_ns("east", "10.213.1.1/24", "10.213.1.2/24");
//! let _server = redirector_tests::http::HttpServer::start(
//!     &east,
//!     "10.213.1.2:80".parse().unwrap(),
//!     "east",
//! )
//! .unwrap();
//! node.a_record("east.pods.test", [10, 213, 1, 2], 30);
//! let web = node.pods().pod("web").unwrap(); // CNI ADD
//! let out = web
//!     .client("curl")
//!     .args(["-sS", "http://east.pods.test/"])
//!     .run()
//!     .unwrap();
//! web.delete().unwrap(); // CNI DEL, namespace and cgroup gone
//! ```

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    cgroup::TestCgroup,
    client::{self, Client},
    cni::{Attachment, NetworkList, Runtime},
    daemon::redirector_bin,
    dns::DnsServer,
    names,
    netns::Netns,
    process,
    tempdir::TempDir,
};

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The plugins every pod network needs.
const PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// The cluster DNS address pods' resolv.conf names (Kubernetes' usual
/// kube-dns ClusterIP), served in the node's namespace.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The interface in the node's namespace that holds [`CLUSTER_DNS`]: its
/// `lo`, where a local address is reachable from every interface (NodeLocal
/// DNSCache uses a dummy interface; kernels without `CONFIG_DUMMY`, like
/// the test VMs', have none).
const DNS_DEVICE: &str = "lo";
/// The network's name (host-local keeps its leases in a directory of it).
pub const NETWORK: &str = "pods";
/// The interface CNI makes in each pod.
pub const POD_IFNAME: &str = "eth0";
/// The name the redirector's binary answers to as a CNI plugin.
pub const REDIRECTOR_PLUGIN: &str = "redirector-cni";

/// The node's side of its pods' network.
#[derive(Clone, Debug)]
pub struct PodNetworkOptions {
    /// The node's pod subnet (its podCIDR): network address and prefix.
    pub subnet: (Ipv4Addr, u8),
    /// The bridge in the node's namespace.
    pub bridge: String,
    /// The Kubernetes namespace of pods made with [`PodNetwork::pod`].
    pub namespace: String,
}

impl Default for PodNetworkOptions {
    fn default() -> PodNetworkOptions {
        PodNetworkOptions {
            subnet: (Ipv4Addr::new(10, 244, 0, 0), 24),
            bridge: "cni0".into(),
            namespace: "default".into(),
        }
    }
}

/// The pods' network on one node; cheap to clone (pods share it too, so
/// it outlives the node's struct if a pod does).
#[derive(Clone, Debug)]
pub struct PodNetwork {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: PodNetworkOptions,
    runtime: Runtime,
    node_ns: String,
    node_cgroup: PathBuf,
    /// Plugins chained after `bridge` and `loopback` for pods made from
    /// now on.
    chained: Mutex<Vec<Value>>,
    /// `bin/` (the network's own plugins), `ipam/` (leases), `pods/<name>/`.
    dir: TempDir,
}

impl PodNetwork {
    /// Sets up pods' networking on the node: its namespace `node_ns`, the
    /// cgroup the daemon attaches to `node_cgroup` (pods get children of
    /// it), and its DNS server, which starts answering on [`CLUSTER_DNS`]
    /// too. The bridge appears with the first pod, as with a real node.
    pub fn new(
        node_ns: &Netns,
        node_cgroup: &TestCgroup,
        dns: &DnsServer,
        options: PodNetworkOptions,
    ) -> Result<PodNetwork> {
        let (network, prefix) = options.subnet;
        if prefix > 30 || u32::from(network) & !prefix_mask(prefix) != 0 {
            bail!("{network}/{prefix} is not a pod subnet");
        }
        for plugin in PLUGINS {
            if !Path::new(CNI_PLUGIN_DIR).join(plugin).is_file() {
                bail!(
                    "no CNI plugin {CNI_PLUGIN_DIR}/{plugin}: run cargo xtask setup (installs Debian's containernetworking-plugins)"
                );
            }
        }
        let dir = TempDir::new("pods")?;
        for sub in ["bin", "ipam", "pods"] {
            fs::create_dir(dir.path().join(sub))
                .with_context(|| format!("creating {}/{sub}", dir.path().display()))?;
        }
        node_ns.ip([
            "addr",
            "add",
            &format!("{CLUSTER_DNS}/32"),
            "dev",
            DNS_DEVICE,
        ])?;
        dns.serve_also(SocketAddr::from((CLUSTER_DNS, 53)))
            .context("serving cluster DNS")?;
        // The bridge plugin turns forwarding on with the first pod; endpoint
        // namespaces made before it need it too.
        node_ns
            .spawn(|| async { fs::write("/proc/sys/net/ipv4/ip_forward", "1") })
            .join()
            .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
            .with_context(|| format!("turning forwarding on in {}", node_ns.name()))?;
        let runtime = Runtime::new(
            node_ns,
            vec![PathBuf::from(CNI_PLUGIN_DIR), dir.path().join("bin")],
        );
        Ok(PodNetwork {
            shared: Arc::new(Shared {
                options,
                runtime,
                node_ns: node_ns.name().to_owned(),
                node_cgroup: node_cgroup.path().to_owned(),
                chained: Mutex::new(Vec::new()),
                dir,
            }),
        })
    }

    /// A pod `name` in the network's Kubernetes namespace (`default`): CNI
    /// ADD has run. Pod names are unique on a node.
    pub fn pod(&self, name: &str) -> Result<Pod> {
        self.pod_in(&self.shared.options.namespace, name)
    }

    /// A pod `name` in the Kubernetes namespace `namespace`.
    pub fn pod_in(&self, namespace: &str, name: &str) -> Result<Pod> {
        Pod::create(self, namespace, name)
            .with_context(|| format!("creating pod {namespace}/{name}"))
    }

    /// Chains `plugin` (its config: `{"type": …, …}`, passed as given) after
    /// the ones before, for pods made from now on; pods keep the chain
    /// they were made with, for their DEL too.
    pub fn chain(&self, plugin: Value) {
        self.chained().push(plugin);
    }

    /// Pods made from now on get only `bridge` and `loopback`.
    pub fn unchain(&self) {
        self.chained().clear();
    }

    /// Chains the redirector's CNI plugin, talking to the daemon on
    /// `socket`: the daemon's binary (`$REDIRECTOR_BIN`), linked into
    /// [`PodNetwork::bin_dir`] as `redirector-cni`, with
    /// `{"type":"redirector-cni","socket":"<socket>"}`.
    pub fn chain_redirector(&self, socket: &Path) -> Result<()> {
        self.install_plugin(REDIRECTOR_PLUGIN, &redirector_bin())?;
        self.chain(json!({"type": REDIRECTOR_PLUGIN, "socket": socket}));
        Ok(())
    }

    /// Links `program` into [`PodNetwork::bin_dir`] as the plugin `name`
    /// (replacing one of that name); its path.
    pub fn install_plugin(&self, name: &str, program: &Path) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') {
            bail!("{name:?} is not a plugin name");
        }
        let link = self.bin_dir().join(name);
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", link.display())),
        }
        std::os::unix::fs::symlink(program, &link)
            .with_context(|| format!("linking {} to {}", link.display(), program.display()))?;
        Ok(link)
    }

    /// The network's own plugin directory, last in `CNI_PATH`.
    pub fn bin_dir(&self) -> PathBuf {
        self.shared.dir.path().join("bin")
    }

    /// The network list pods made now get.
    pub fn network_list(&self) -> NetworkList {
        let (network, prefix) = self.shared.options.subnet;
        let mut plugins = vec![
            json!({
                "type": "bridge",
                "bridge": self.shared.options.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": format!("{network}/{prefix}"),
                        "gateway": self.gateway().to_string(),
                    }]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.ipam_dir(),
                },
            }),
            json!({"type": "loopback"}),
        ];
        plugins.extend(self.chained().iter().cloned());
        NetworkList {
            cni_version: "1.0.0".into(),
            name: NETWORK.into(),
            plugins,
        }
    }

    /// The node's pod subnet: network address and prefix length.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        self.shared.options.subnet
    }

    /// Whether `ip` is in the pod subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (network, prefix) = self.subnet();
        u32::from(ip) & prefix_mask(prefix) == u32::from(network)
    }

    /// The pods' default gateway: the subnet's first address, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet().0) + 1)
    }

    /// The bridge's name in the node's namespace.
    pub fn bridge(&self) -> &str {
        &self.shared.options.bridge
    }

    /// host-local's `dataDir`: its leases are in `<dir>/pods/<ip>`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.shared.dir.path().join("ipam")
    }

    /// The addresses host-local has leased.
    pub fn leases(&self) -> Result<Vec<Ipv4Addr>> {
        let dir = self.ipam_dir().join(NETWORK);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
        };
        let mut ips: Vec<Ipv4Addr> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        ips.sort();
        Ok(ips)
    }

    /// The interfaces enslaved to the bridge (pods' host-side veths).
    pub fn bridge_ports(&self) -> Result<Vec<String>> {
        let out = netns_ip(&self.shared.node_ns, &["-j", "link", "show"])?;
        let links: Vec<Value> = serde_json::from_str(&out).context("ip -j link show")?;
        Ok(links
            .iter()
            .filter(|l| l["master"] == self.bridge())
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Routes the pod subnet from `ns` through `via` (the node's end of
    /// its link), so endpoints there can answer pods.
    pub fn route_back(&self, ns: &Netns, via: Ipv4Addr) -> Result<()> {
        let (network, prefix) = self.subnet();
        ns.ip([
            "route",
            "add",
            &format!("{network}/{prefix}"),
            "via",
            &via.to_string(),
        ])
        .map(|_| ())
    }

    fn chained(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        self.shared
            .chained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One pod: its namespace, cgroup and CNI attachment. Deleted on drop.
#[derive(Debug)]
pub struct Pod {
    network: PodNetwork,
    namespace: String,
    name: String,
    container_id: String,
    /// The list its ADD ran (its DEL runs the same).
    list: NetworkList,
    /// The ADD's result (`Null` until it succeeded).
    result: Value,
    /// When its ADD started, on the wall clock, and how long it took.
    add_started: SystemTime,
    add_took: Duration,
    ip: Ipv4Addr,
    dir: PathBuf,
    cgroup: Option<TestCgroup>,
    netns: Option<Netns>,
    /// The sandbox's own process (a runtime's `pause`).
    infra: Option<PodProcess>,
    torn_down: bool,
}

impl Pod {
    fn create(network: &PodNetwork, namespace: &str, name: &str) -> Result<Pod> {
        let valid = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        // The namespace's role (`pod_<name>`) is at most 24 characters.
        if !valid(name, 20) || !valid(namespace, 63) {
            bail!("pod names are 1-20 and namespaces 1-63 characters of [a-z0-9-]");
        }
        let shared = &network.shared;
        let dir = shared.dir.path().join("pods").join(name);
        fs::create_dir(&dir).with_context(|| {
            format!("a pod named {name} exists on this node ({})", dir.display())
        })?;
        // From here on, Drop undoes whatever was made.
        let mut pod = Pod {
            network: network.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container_id: sandbox_id(name),
            list: network.network_list(),
            result: Value::Null,
            add_started: UNIX_EPOCH,
            add_took: Duration::ZERO,
            ip: Ipv4Addr::UNSPECIFIED,
            dir,
            cgroup: None,
            netns: None,
            infra: None,
            torn_down: false,
        };
        fs::write(pod.resolv_conf(), resolv_conf(namespace))
            .with_context(|| format!("writing {}", pod.resolv_conf().display()))?;
        pod.cgroup = Some(crate::cgroup::child_of(
            &shared.node_cgroup,
            &format!("pod-{name}"),
        )?);
        pod.netns = Some(Netns::without_lo(&format!(
            "pod_{}",
            name.replace('-', "_")
        ))?);
        pod.add_started = SystemTime::now();
        let started = Instant::now();
        let result = shared.runtime.add(&pod.list, &pod.attachment())?;
        pod.add_took = started.elapsed();
        pod.result = result;
        pod.ip = first_ipv4(&pod.result)
            .with_context(|| format!("no IPv4 address in the ADD result {}", pod.result))?;
        // What `pause` is to a runtime: a process that holds the sandbox,
        // so the pod has one in its cgroup and namespace from the start.
        let infra = pod
            .command("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the pod's infra process")?;
        pod.infra = Some(PodProcess { child: infra });
        Ok(pod)
    }

    /// `K8S_POD_NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `K8S_POD_NAMESPACE`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `CNI_CONTAINERID`: the sandbox's id (64 hex digits, as runtimes
    /// make them).
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// `CNI_ARGS` as the plugins got it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.namespace, self.name, self.container_id
        )
    }

    /// Its address on `eth0`, from the ADD's result.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The ADD's result (CNI 1.0.0: `interfaces`, `ips`, `routes`, `dns`).
    pub fn result(&self) -> &Value {
        &self.result
    }

    /// When its CNI ADD started, on the wall clock (a benchmark times a
    /// pod's start from here).
    pub fn add_started(&self) -> SystemTime {
        self.add_started
    }

    /// How long its CNI ADD took, every plugin of the chain.
    pub fn add_took(&self) -> Duration {
        self.add_took
    }

    /// The network list its ADD ran and its DEL will run.
    pub fn network_list(&self) -> &NetworkList {
        &self.list
    }

    /// The host end of its veth (on the bridge, in the node's namespace),
    /// from the ADD's result.
    pub fn host_veth(&self) -> Option<String> {
        self.result["interfaces"]
            .as_array()?
            .iter()
            .filter(|i| i.get("sandbox").is_none_or(Value::is_null))
            .filter_map(|i| i["name"].as_str())
            .find(|name| *name != self.network.bridge())
            .map(str::to_owned)
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("a pod has its namespace until deleted")
    }

    /// The pid of its infra process (`sleep infinity` standing in for a
    /// runtime's `pause`), in its namespace and cgroup for its whole life.
    pub fn infra_pid(&self) -> u32 {
        self.infra
            .as_ref()
            .expect("a pod has its infra process until deleted")
            .pid()
    }

    /// Its cgroup, `<node cgroup>/pod-<name>`.
    pub fn cgroup(&self) -> &TestCgroup {
        self.cgroup
            .as_ref()
            .expect("a pod has its cgroup until deleted")
    }

    /// The resolv.conf its processes see as `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// `program`, ready to spawn in the pod: its network namespace, its
    /// cgroup (joined before exec), its resolv.conf; marked for the sweep.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.cgroup().configure(&mut cmd);
        self.netns().configure(&mut cmd);
        client::bind_resolv_conf(&mut cmd, &self.resolv_conf())
            .expect("a pod's resolv.conf path has no NUL");
        cmd
    }

    /// `program` run to completion in the pod ([`Client::run`]: bounded by
    /// its timeout, output captured).
    pub fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Client<'_> {
        let mut client = Client::new(self.netns(), program);
        client
            .cgroup(self.cgroup())
            .resolv_conf_file(self.resolv_conf());
        client
    }

    /// `curl <url>` as the pod's app makes it (names resolved through the
    /// pod's resolv.conf): `Ok((status, body))` for any HTTP answer,
    /// `Err(what curl said)` when there was none.
    pub fn get(&self, url: &str) -> std::result::Result<(u16, String), String> {
        client::curl(&mut self.client("curl"), url, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("running curl in pod {}: {e:#}", self.name))
    }

    /// A long-running `program args…` in the pod, stdin closed, stdout
    /// and stderr piped (read them, or it may block); killed on drop and
    /// when the pod is deleted.
    pub fn spawn<I, S>(&self, program: &str, args: I) -> Result<PodProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in pod {}", self.name))?;
        Ok(PodProcess { child })
    }

    /// CNI CHECK of its attachment, with the ADD's result.
    pub fn check(&self) -> Result<()> {
        self.network
            .shared
            .runtime
            .check(&self.list, &self.attachment(), &self.result)
    }

    /// Deletes the pod now, reporting what failed.
    pub fn delete(mut self) -> Result<()> {
        self.teardown()
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            netns: self
                .netns
                .as_ref()
                .map(|ns| ns.path().to_owned())
                .unwrap_or_default(),
            ifname: POD_IFNAME.into(),
            args: self.cni_args(),
        }
    }

    /// As a runtime stops a sandbox: its processes, then its network, then
    /// its namespace. Every step runs even if one before failed.
    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut failures = Vec::new();
        // Removing the cgroup kills them; reaped here.
        let infra = self.infra.take();
        if let Some(cgroup) = self.cgroup.take()
            && let Err(err) = cgroup.remove()
        {
            failures.push(format!("{err:#}"));
        }
        drop(infra);
        if !self.result.is_null()
            && let Err(err) =
                self.network
                    .shared
                    .runtime
                    .del(&self.list, &self.attachment(), Some(&self.result))
        {
            failures.push(format!("{err:#}"));
        }
        if let Some(netns) = self.netns.take()
            && let Err(err) = netns.delete()
        {
            failures.push(format!("{err:#}"));
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            failures.push(format!("removing {}: {err}", self.dir.display()));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "deleting pod {}/{}: {}",
                self.namespace,
                self.name,
                failures.join("; ")
            )
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Err(err) = self.teardown() {
            eprintln!("testbed: {err:#}");
        }
    }
}

/// A long-running process in a pod ([`Pod::spawn`]); SIGKILLed and reaped
/// on drop.
#[derive(Debug)]
pub struct PodProcess {
    /// The process.
    pub child: Child,
}

impl PodProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout, to read (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// What the kubelet writes for a pod with `dnsPolicy: ClusterFirst`.
fn resolv_conf(namespace: &str) -> String {
    format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver {CLUSTER_DNS}\n\
         options ndots:5\n"
    )
}

/// A sandbox id as runtimes make them: 64 hex digits, unique.
fn sandbox_id(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}-{}-{name}-{nanos}", std::process::id(), names::next_id());
    crate::echo::hex(&Sha256::digest(seed.as_bytes()))
}

/// The first IPv4 address of a CNI result's `ips`.
fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let address = ip["address"].as_str()?;
        address.split('/').next()?.parse().ok()
    })
}

fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// `ip -n <ns> <args…>`'s stdout.
fn netns_ip(ns: &str, args: &[&str]) -> Result<String> {
    process::run_checked(Command::new("ip").args(["-n", ns]).args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_result_and_the_subnet() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.244.0.7/24", "gateway": "10.244.0.1", "interface": 2}],
        });
        assert_eq!(first_ipv4(&result), Some(Ipv4Addr::new(10, 244, 0, 7)));
        assert_eq!(first_ipv4(&json!({})), None);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(sandbox_id("web").len(), 64);
        assert_ne!(sandbox_id("web"), sandbox_id("web"));
        assert!(resolv_conf("team").contains("search team.svc.cluster.local "));
    }
}
