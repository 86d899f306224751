//! The bench's little world, built once per run and torn down on drop.
//!
//! ```text
//!  netns bench (CPU 0: load generator; CPU 1: the system under test)
//!    client ── connect(VIP) ──► connect4 of the system's own cgroup
//!                                 → 127.0.0.1:<that system's listener>
//!    SUT ── veth 10.213.1.1/30 ──► netns east  10.213.1.2  :80 :443 (CPU 0)
//!                                              :8080 :8443 (CPU 1, "direct on the SUT's core")
//!        ── veth 10.213.2.1/30 ──► netns west  10.213.2.2  :80 :443 (CPU 0)
//!    DNS 127.0.0.1:53: east.test, west.test
//! ```
//!
//! Every proxy gets its own cgroup with the connect hook attached, so all
//! systems stay up for the whole run and are interleaved without restarts:
//! the redirector's own daemon for the redirector, and a `--datapath-only`
//! redirector pointing at the peer's listener for Envoy, nginx and HAProxy.
//! So every system pays the same connect-time rewrite and only the proxy
//! differs. The client is placed in the cgroup of the system it measures.
//!
//! The fast path is a second redirector daemon with its own cgroup and
//! config, in which the plain service is a `TCP` port annotated
//! `redirector.dev/datapath: kernel` (the annotation is refused on `HTTP`
//! ports, which need the proxy per request; the HTTP load works over TCP,
//! bytes go end to end). Its connects go from the client straight to east
//! :80 on the client's core, the very upstream process direct-beside
//! reaches, so direct-beside is its baseline. It has no TLS service: the
//! kernel cannot originate TLS.
//!
//! With `--baseline`, another build of the redirector runs beside this one
//! as a third daemon, with its own cgroup, pins and ports and the same
//! config, flags and core as the redirector: the two builds are measured
//! alike, interleaved in the same run.
//!
//! With the redirector, the bench namespace is also a node with pods
//! (`topology/pods.rs`): the redirector's cgroup is the node's, pods are
//! made in it by the real CNI plugins on the bridge `cni0`
//! (10.244.0.0/24), east and west route the pod subnet back, and the
//! redirector's daemon serves each pod from inside it (told by its CNI
//! plugin on `--cni-socket`, or finding the pod on its own). The pod row
//! (`redirector-pod`) is that same daemon with the client in a pod.

mod pods;

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use redirector_tests::{
    cgroup::TestCgroup,
    daemon::{Daemon, DaemonOptions, PinDirGuard, redirector_bin},
    dns::DnsServer,
    netns::{self, Link, Netns},
    pki::TestCa,
    pod::{Pod, PodNetwork},
    process,
    tempdir::TempDir,
    upstream::{UpstreamProcess, UpstreamStats},
};

use crate::{
    model::{SystemId, Upstream},
    peers::{OutlierTiming, Peer, PeerConfig},
    tools::Tools,
    wait::{self, Seen},
};

pub(crate) const EAST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
pub(crate) const WEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);
/// The bench namespace's ends of the east and west links.
const EAST_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
const WEST_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 1);
pub(crate) const VIP_PLAIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(240, 240, 0, 10), 80);
pub(crate) const VIP_TLS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(240, 240, 0, 11), 80);
pub(crate) const HOST_PLAIN: &str = "plain.test";
pub(crate) const HOST_TLS: &str = "tls.test";
const PLAIN_PORT: u16 = 80;
const TLS_PORT: u16 = 443;
const CORE_PLAIN_PORT: u16 = 8080;
const CORE_TLS_PORT: u16 = 8443;
/// Listen ports of the redirector's daemons (the fast path's proxy carries
/// nothing, but every daemon has one: it is what connect4 checks to know
/// the daemon is alive).
const REDIRECTOR_PORT: u16 = 15001;
const FAST_PATH_PORT: u16 = 15002;
const BASELINE_PORT: u16 = 15003;

/// The DNS responder's port of the daemon listening on `port`: the
/// redirector's daemons share the bench namespace, so they need a port each
/// (DNS capture stays on, as by default, so its hooks are measured too).
/// `--datapath-only` daemons have no responder.
fn dns_port(port: u16) -> u16 {
    match port {
        REDIRECTOR_PORT => 15053,
        FAST_PATH_PORT => 15054,
        BASELINE_PORT => 15055,
        _ => 0,
    }
}

/// The admin server's port of the daemon listening on `port`: every
/// daemon in the bench namespace (the redirector's, and the
/// `--datapath-only` ones in front of the peers) needs its own.
fn admin_port(port: u16) -> u16 {
    port + 1000
}

/// Outlier timings shared by every system, short enough for the failover
/// runs to see ejection and return within seconds.
pub(crate) const OUTLIER: OutlierTiming = OutlierTiming {
    consecutive_5xx: 1,
    interval: Duration::from_secs(1),
    base_ejection: Duration::from_secs(3),
};
/// Istio's default connect timeout; the same for every system.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The identical upstreams behind every system.
pub(crate) struct Upstreams {
    /// The primary of the failover runs; faults mutate it.
    pub east_plain: Mutex<UpstreamProcess>,
    /// Every HTTPS upstream (east, west, east on the SUT's core), whose
    /// handshake counters the TLS cells read.
    tls: Vec<UpstreamProcess>,
    /// The rest only need to run: west plain and east plain on the SUT's
    /// core.
    _others: Vec<UpstreamProcess>,
}

impl Upstreams {
    /// The counters of every HTTPS upstream, summed.
    pub(crate) fn tls_stats(&self) -> Result<UpstreamStats> {
        self.tls
            .iter()
            .try_fold(UpstreamStats::default(), |sum, up| {
                Ok(sum.plus(&up.stats()?))
            })
    }
}

enum Kind {
    Direct,
    /// The redirector, its baseline or its fast path: a daemon that the
    /// fail-open run kills and replaces, so it sits behind a lock (shared
    /// with the pod row, which measures the same daemon).
    Redirector {
        daemon: Arc<Mutex<Daemon>>,
        /// The `redirector` binary it runs.
        program: PathBuf,
        config: PathBuf,
        port: u16,
        cpu: u32,
        pins: PinDirGuard,
        /// Where it listens for the CNI plugin (the redirector's only: a
        /// baseline binary may predate the flag).
        cni_socket: Option<PathBuf>,
    },
    /// The redirector's daemon with the client in a pod. Field order is
    /// drop order: the pod is deleted while the daemon still runs.
    InPod {
        pod: Pod,
        daemon: Arc<Mutex<Daemon>>,
    },
    Peer {
        // Field order is drop order: the redirect goes before the proxy.
        redirect: Daemon,
        _pins: PinDirGuard,
        peer: Peer,
    },
}

/// One row of the table, running.
pub(crate) struct System {
    pub id: SystemId,
    /// Where the client runs: the cgroup with this system's connect hook
    /// (none for the direct rows, and for the pod row, whose client runs
    /// in the pod's own).
    pub cgroup: Option<TestCgroup>,
    kind: Kind,
}

impl System {
    /// Every process of the system under test, for CPU and RSS.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Direct => Vec::new(),
            Kind::Redirector { daemon, .. } | Kind::InPod { daemon, .. } => {
                vec![lock(daemon).pid()]
            }
            Kind::Peer { peer, .. } => peer.pids(),
        }
    }

    /// `program`, ready to spawn as this system's app: in the bench
    /// namespace and the system's cgroup, or in the pod's namespace and
    /// cgroup. Not with the pod's resolv.conf (`Pod::command`'s): with the
    /// kubelet's search domains and `ndots:5`, oha's resolver looks even
    /// the VIP's address up as a name, some 8 queries per new connection
    /// through the daemon's DNS responder to cluster DNS, and the pod row
    /// would measure that instead of the proxy (the apps here dial the VIP
    /// itself; the node's resolv.conf has neither).
    pub(crate) fn app_command(&self, bench: &Netns, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Kind::InPod { pod, .. } = &self.kind {
            pod.cgroup().configure(&mut cmd);
            pod.netns().configure(&mut cmd);
            return cmd;
        }
        bench.configure(&mut cmd);
        if let Some(cgroup) = &self.cgroup {
            cgroup.configure(&mut cmd);
        }
        cmd
    }

    /// Where its app runs, for messages.
    pub(crate) fn app_place(&self, bench: &Netns) -> String {
        match &self.kind {
            Kind::InPod { pod, .. } => {
                format!("pod {} ({})", pod.name(), pod.netns().name())
            }
            _ => bench.name().to_owned(),
        }
    }

    /// (address the client dials, Host header, whether the client itself
    /// speaks TLS).
    pub(crate) fn target(&self, upstream: Upstream) -> (SocketAddrV4, &'static str, bool) {
        match (self.id, upstream) {
            (SystemId::DirectBeside, Upstream::Plain) => {
                (SocketAddrV4::new(EAST_IP, PLAIN_PORT), HOST_PLAIN, false)
            }
            (SystemId::DirectBeside, Upstream::Tls) => {
                (SocketAddrV4::new(EAST_IP, TLS_PORT), HOST_TLS, true)
            }
            (SystemId::DirectSutCore, Upstream::Plain) => (
                SocketAddrV4::new(EAST_IP, CORE_PLAIN_PORT),
                HOST_PLAIN,
                false,
            ),
            (SystemId::DirectSutCore, Upstream::Tls) => {
                (SocketAddrV4::new(EAST_IP, CORE_TLS_PORT), HOST_TLS, true)
            }
            (_, Upstream::Plain) => (VIP_PLAIN, HOST_PLAIN, false),
            (_, Upstream::Tls) => (VIP_TLS, HOST_TLS, false),
        }
    }

    /// The system's own logs, for failure messages.
    pub(crate) fn log(&self) -> String {
        match &self.kind {
            Kind::Direct => String::new(),
            Kind::Redirector { daemon, .. } | Kind::InPod { daemon, .. } => lock(daemon).log(),
            Kind::Peer { peer, redirect, .. } => format!(
                "{}== its redirect (redirector --datapath-only, {}) ==\n{}",
                peer.log(),
                redirect.log_path().display(),
                redirect.log()
            ),
        }
    }

    /// Where the redirector's proxy listens: the peer address a client's
    /// connection has when connect4 sent it to the proxy.
    pub(crate) fn proxy_addr(&self) -> Option<SocketAddrV4> {
        match &self.kind {
            Kind::Redirector { port, .. } => Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)),
            _ => None,
        }
    }

    /// SIGKILL to the redirector's daemon, returning once it is reaped (its
    /// sockets closed). The pinned datapath stays attached.
    pub(crate) fn kill_daemon(&self) -> Result<()> {
        let Kind::Redirector { daemon, .. } = &self.kind else {
            bail!("{} has no redirector daemon to kill", self.id);
        };
        let status = lock(daemon).kill()?;
        if status.success() {
            bail!("{}'s daemon had exited on its own before the kill", self.id);
        }
        Ok(())
    }
}

fn lock(daemon: &Mutex<Daemon>) -> MutexGuard<'_, Daemon> {
    // A panic while holding it cannot leave a daemon half-replaced.
    daemon
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything the bench runs in. Field order is drop order, after the
/// systems, which go last first (see Drop).
pub(crate) struct Bed {
    pub systems: Vec<System>,
    /// The pods' network on the bench namespace, with the redirector.
    pub pods: Option<PodNetwork>,
    pub upstreams: Upstreams,
    dns: DnsServer,
    pub dir: TempDir,
    pub ca_file: PathBuf,
    /// Device on the bench side of the east link (black-hole faults).
    pub east_dev: String,
    _links: Vec<Link>,
    east: Netns,
    west: Netns,
    pub bench: Netns,
}

pub(crate) struct BedOptions<'a> {
    pub tools: &'a Tools,
    pub systems: &'a [SystemId],
    /// The `redirector` binary of `SystemId::RedirectorBaseline`.
    pub baseline: Option<&'a Path>,
    pub body_bytes: usize,
    pub client_cpu: u32,
    pub sut_cpu: u32,
}

impl Bed {
    pub(crate) fn new(o: &BedOptions<'_>) -> Result<Self> {
        let bench = Netns::new("bench")?;
        let east = Netns::new("east")?;
        let west = Netns::new("west")?;
        let east_link = netns::link(
            &bench,
            &format!("{EAST_NODE_IP}/30"),
            &east,
            &format!("{EAST_IP}/30"),
        )?;
        let west_link = netns::link(
            &bench,
            &format!("{WEST_NODE_IP}/30"),
            &west,
            &format!("{WEST_IP}/30"),
        )?;
        let dir = TempDir::new("bench")?;
        let ca = TestCa::new();
        let ca_file = ca.write_ca(dir.path());
        let (cert, key) = ca.leaf(&["east.test", "west.test", HOST_PLAIN, HOST_TLS]);
        let cert_file = dir.path().join("upstream.pem");
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        let tls = Some((cert_file.as_path(), key_file.as_path()));
        let up = |ns: &Netns, ip, port, name: &str, tls, cpu| {
            UpstreamProcess::start(
                ns,
                SocketAddrV4::new(ip, port).into(),
                name,
                o.body_bytes,
                tls,
                Some(cpu),
            )
            .with_context(|| format!("starting upstream {name} on {ip}:{port}"))
        };
        let upstreams = Upstreams {
            east_plain: Mutex::new(up(&east, EAST_IP, PLAIN_PORT, "east", None, o.client_cpu)?),
            tls: vec![
                up(&east, EAST_IP, TLS_PORT, "east", tls, o.client_cpu)?,
                up(&west, WEST_IP, TLS_PORT, "west", tls, o.client_cpu)?,
                up(&east, EAST_IP, CORE_TLS_PORT, "east", tls, o.sut_cpu)?,
            ],
            _others: vec![
                up(&west, WEST_IP, PLAIN_PORT, "west", None, o.client_cpu)?,
                up(&east, EAST_IP, CORE_PLAIN_PORT, "east", None, o.sut_cpu)?,
            ],
        };
        let dns = DnsServer::start(&bench, "127.0.0.1:53".parse()?)?;
        dns.set_a("east.test", &[EAST_IP], 300)?;
        dns.set_a("west.test", &[WEST_IP], 300)?;
        let config = dir.path().join("redirector.yaml");
        std::fs::write(&config, redirector_config(&ca_file))?;
        let fast_path_config = dir.path().join("redirector-fast-path.yaml");
        std::fs::write(&fast_path_config, fast_path_config_text())?;

        let mut bed = Bed {
            systems: Vec::new(),
            pods: None,
            upstreams,
            dns,
            ca_file,
            east_dev: east_link.a_dev.clone(),
            _links: vec![east_link, west_link],
            east,
            west,
            bench,
            dir,
        };
        for &id in o.systems {
            let config = if id == SystemId::RedirectorFastPath {
                &fast_path_config
            } else {
                &config
            };
            // The pod row starts once the pod scenarios are done (they
            // count pods from none): `Bed::start_pod_client`.
            if id == SystemId::RedirectorPod {
                continue;
            }
            let system = bed
                .start_system(id, o, config)
                .with_context(|| format!("starting {id}"))?;
            bed.systems.push(system);
        }
        if let Some(redirector) = bed.system(SystemId::Redirector) {
            let network = bed
                .pod_network(redirector)
                .context("setting up pods on the bench namespace")?;
            bed.pods = Some(network);
        }
        Ok(bed)
    }

    /// The running system `id`, if it runs.
    pub(crate) fn system(&self, id: SystemId) -> Option<&System> {
        self.systems.iter().find(|s| s.id == id)
    }

    fn start_system(&self, id: SystemId, o: &BedOptions<'_>, config: &Path) -> Result<System> {
        let kind = match id {
            SystemId::DirectBeside | SystemId::DirectSutCore => {
                return Ok(System {
                    id,
                    cgroup: None,
                    kind: Kind::Direct,
                });
            }
            SystemId::Redirector | SystemId::RedirectorBaseline | SystemId::RedirectorFastPath => {
                let (port, path, program) = match id {
                    SystemId::Redirector => (REDIRECTOR_PORT, "proxy", redirector_bin()),
                    SystemId::RedirectorBaseline => (
                        BASELINE_PORT,
                        "proxy",
                        o.baseline
                            .context("the baseline needs --baseline <a redirector binary>")?
                            .to_owned(),
                    ),
                    _ => (FAST_PATH_PORT, "kernel", redirector_bin()),
                };
                let cgroup = TestCgroup::new()?;
                let pins = PinDirGuard::for_test();
                let cni_socket =
                    (id == SystemId::Redirector).then(|| self.dir.path().join("cni.sock"));
                let daemon = self.redirector(
                    &program,
                    config,
                    &cgroup,
                    &pins,
                    port,
                    o.sut_cpu,
                    Flavour::Proxy {
                        cni_socket: cni_socket.as_deref(),
                    },
                )?;
                let system = System {
                    id,
                    cgroup: Some(cgroup),
                    kind: Kind::Redirector {
                        daemon: Arc::new(Mutex::new(daemon)),
                        program,
                        config: config.to_owned(),
                        port,
                        cpu: o.sut_cpu,
                        pins,
                        cni_socket,
                    },
                };
                // A DNS service has no slot table until its names resolve,
                // and until then even a kernel-path service goes through
                // the proxy: wait, so no cell measures that.
                self.wait_for_path(&system, path)?;
                return Ok(system);
            }
            SystemId::RedirectorPod => {
                bail!("the pod row starts with Bed::start_pod_client, once the pod scenarios ran")
            }
            SystemId::Envoy | SystemId::Nginx | SystemId::Haproxy => id,
        };
        let port = match kind {
            SystemId::Envoy => 15101,
            SystemId::Nginx => 15102,
            _ => 15103,
        };
        let dir = self.dir.path().join(id.key());
        std::fs::create_dir_all(&dir)?;
        let peer = Peer::start(
            id,
            o.tools,
            &PeerConfig {
                listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
                plain_host: HOST_PLAIN.into(),
                tls_host: HOST_TLS.into(),
                east_plain: SocketAddrV4::new(EAST_IP, PLAIN_PORT),
                west_plain: SocketAddrV4::new(WEST_IP, PLAIN_PORT),
                east_tls: SocketAddrV4::new(EAST_IP, TLS_PORT),
                west_tls: SocketAddrV4::new(WEST_IP, TLS_PORT),
                east_name: "east.test".into(),
                west_name: "west.test".into(),
                ca_file: self.ca_file.clone(),
                outlier: OUTLIER,
                connect_timeout: CONNECT_TIMEOUT,
                dir,
            },
            &self.bench,
            o.sut_cpu,
        )?;
        let cgroup = TestCgroup::new()?;
        let pins = PinDirGuard::for_test();
        // The redirect alone; it idles, so it shares the client's core.
        let redirect = self.redirector(
            &redirector_bin(),
            config,
            &cgroup,
            &pins,
            port,
            o.client_cpu,
            Flavour::DatapathOnly,
        )?;
        Ok(System {
            id,
            cgroup: Some(cgroup),
            kind: Kind::Peer {
                redirect,
                _pins: pins,
                peer,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn redirector(
        &self,
        program: &Path,
        config: &Path,
        cgroup: &TestCgroup,
        pins: &PinDirGuard,
        port: u16,
        cpu: u32,
        flavour: Flavour<'_>,
    ) -> Result<Daemon> {
        let mut args = vec![
            "-c".to_string(),
            cpu.to_string(),
            program.display().to_string(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--cgroup".into(),
            cgroup.path().display().to_string(),
            "--locality".into(),
            "us-east1".into(),
            "--nameserver".into(),
            "127.0.0.1:53".into(),
            "--pin-dir".into(),
            pins.path().display().to_string(),
            "--listen-port".into(),
            port.to_string(),
            "--dns-port".into(),
            dns_port(port).to_string(),
            "--admin-port".into(),
            admin_port(port).to_string(),
            "--workers".into(),
            "1".into(),
            "--log-level".into(),
            "warn,redirector_user::app=info".into(),
        ];
        match flavour {
            Flavour::DatapathOnly => args.push("--datapath-only".into()),
            Flavour::Proxy {
                cni_socket: Some(path),
            } => {
                args.push("--cni-socket".into());
                args.push(path.display().to_string());
            }
            Flavour::Proxy { cni_socket: None } => {}
        }
        // taskset execs the daemon, so the pid is the daemon's.
        Daemon::start_program(
            Path::new("/usr/bin/taskset"),
            DaemonOptions {
                netns: &self.bench,
                cgroup: None,
                args,
                ready_timeout: wait::READY,
                env: Vec::new(),
            },
        )
    }

    /// Starts a new daemon for the redirector `system` on the pinned state
    /// of the one that was killed (a takeover), returning once it is ready.
    pub(crate) fn restart_daemon(&self, system: &System) -> Result<()> {
        let Kind::Redirector {
            daemon,
            program,
            config,
            port,
            cpu,
            pins,
            cni_socket,
        } = &system.kind
        else {
            bail!("{} has no redirector daemon to restart", system.id);
        };
        let cgroup = system
            .cgroup
            .as_ref()
            .context("a redirector has a cgroup")?;
        let new = self.redirector(
            program,
            config,
            cgroup,
            pins,
            *port,
            *cpu,
            Flavour::Proxy {
                cni_socket: cni_socket.as_deref(),
            },
        )?;
        // The old one is dead and reaped; dropping it only frees its log.
        *lock(daemon) = new;
        Ok(())
    }

    /// Where a new connect to the plain VIP goes now, as `redirector
    /// endpoints` reads it from the system's pinned maps: `proxy`,
    /// `kernel`, `kernel (fail-open)`, `rejected`.
    pub(crate) fn path_now(&self, system: &System) -> Result<String> {
        let report = self.inspect(system, "endpoints")?;
        let vip = VIP_PLAIN.ip().to_string();
        report["services"]
            .as_array()
            .and_then(|services| services.iter().find(|s| s["vip"] == vip.as_str()))
            .and_then(|s| s["path_now"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no service at {vip} in {report:#}"))
    }

    /// `redirector <what> --output json` (`endpoints`, `pods`) of the
    /// redirector `system`, read from its pinned maps.
    pub(crate) fn inspect(&self, system: &System, what: &str) -> Result<serde_json::Value> {
        let Kind::Redirector { pins, program, .. } = &system.kind else {
            bail!("{} is not a redirector", system.id);
        };
        // Its own build reads its own pins.
        let mut cmd = Command::new(program);
        cmd.args([what, "--output", "json", "--pin-dir"])
            .arg(pins.path());
        self.bench.configure(&mut cmd);
        let out = process::run_checked(&mut cmd)?;
        serde_json::from_str(&out).with_context(|| format!("redirector {what}: {out}"))
    }

    /// Until a new connect to the plain VIP takes the `want` path, within
    /// [`wait::READY`].
    fn wait_for_path(&self, system: &System, want: &str) -> Result<()> {
        let what = format!("connects to {VIP_PLAIN} to take the {want:?} path");
        wait::until(&what, wait::READY, Duration::from_millis(100), || {
            let now = self.path_now(system)?;
            Ok(if now == want {
                Seen::Ready(())
            } else {
                Seen::Not(format!("the {now:?} path"))
            })
        })
        .with_context(|| format!("{}\n{}", system.id, system.log()))
    }

    /// Packets to the primary vanish: its neighbour entry points nowhere.
    pub(crate) fn black_hole_east(&self, on: bool) -> Result<()> {
        let ip = EAST_IP.to_string();
        let args: Vec<&str> = if on {
            vec![
                "neigh",
                "replace",
                &ip,
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                &self.east_dev,
                "nud",
                "permanent",
            ]
        } else {
            vec!["neigh", "del", &ip, "dev", &self.east_dev]
        };
        self.bench.ip(args)?;
        Ok(())
    }

    /// Runs `curl` as the app of `system` once; the body, or an error.
    pub(crate) fn probe(&self, system: &System, upstream: Upstream) -> Result<String> {
        let (addr, host, https) = system.target(upstream);
        let scheme = if https { "https" } else { "http" };
        let url = format!("{scheme}://{addr}/");
        let mut cmd = system.app_command(&self.bench, "curl");
        cmd.args([
            "-sS",
            "-k",
            "--max-time",
            "5",
            "-H",
            &format!("Host: {host}"),
            &url,
        ]);
        let out = process::run_checked(&mut cmd)?;
        Ok(out)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The last started first: the pod row's pod is deleted (CNI DEL)
        // while the redirector's daemon and cgroup are still there.
        while self.systems.pop().is_some() {}
    }
}

/// What a redirector daemon of the bed is for.
#[derive(Clone, Copy)]
enum Flavour<'a> {
    /// The redirector's proxy (and, given a socket, its CNI plugin's).
    Proxy { cni_socket: Option<&'a Path> },
    /// The redirect alone, in front of a peer's listener.
    DatapathOnly,
}

/// The redirector's view of the same job the peers are configured for: the
/// blog's documents, a plain and a TLS-originating service.
fn redirector_config(ca_file: &Path) -> String {
    let service = |name: &str, host: &str, vip: SocketAddrV4, target: u16| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  addresses: [{ip}]
  ports: [{{number: {port}, name: http, protocol: HTTP, targetPort: {target}}}]
  resolution: DNS
  endpoints:
  - {{address: east.test, locality: us-east1}}
  - {{address: west.test, locality: us-west}}
",
            ip = vip.ip(),
            port = vip.port(),
        )
    };
    let rule = |name: &str, host: &str, tls: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {host}
  trafficPolicy:
{tls}    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - {{from: us-east1, to: us-west}}
    outlierDetection:
      consecutive5xxErrors: {n}
      interval: {i}s
      baseEjectionTime: {b}s
",
            n = OUTLIER.consecutive_5xx,
            i = OUTLIER.interval.as_secs(),
            b = OUTLIER.base_ejection.as_secs(),
        )
    };
    let tls = format!(
        "    tls:\n      mode: SIMPLE\n      caCertificates: {}\n",
        ca_file.display()
    );
    service("plain", HOST_PLAIN, VIP_PLAIN, PLAIN_PORT)
        + &service("tls", HOST_TLS, VIP_TLS, TLS_PORT)
        + &rule("plain", HOST_PLAIN, "")
        + &rule("tls", HOST_TLS, &tls)
}

/// The fast path's config: the same plain service, endpoints and outlier
/// detection, as a `TCP` port on the kernel datapath (no load-balancer
/// setting: the kernel picks at random from the slot table).
fn fast_path_config_text() -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: plain
  annotations:
    redirector.dev/datapath: kernel
spec:
  hosts: [{HOST_PLAIN}]
  addresses: [{ip}]
  ports: [{{number: {port}, name: tcp, protocol: TCP, targetPort: {PLAIN_PORT}}}]
  resolution: DNS
  endpoints:
  - {{address: east.test, locality: us-east1}}
  - {{address: west.test, locality: us-west}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: plain}}
spec:
  host: {HOST_PLAIN}
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover:
        - {{from: us-east1, to: us-west}}
    outlierDetection:
      consecutive5xxErrors: {n}
      interval: {i}s
      baseEjectionTime: {b}s
",
        ip = VIP_PLAIN.ip(),
        port = VIP_PLAIN.port(),
        n = OUTLIER.consecutive_5xx,
        i = OUTLIER.interval.as_secs(),
        b = OUTLIER.base_ejection.as_secs(),
    )
}
