//! The benchmark's vocabulary: which systems, which workloads, what one
//! run of one cell measured. Everything else (running, reporting,
//! plotting) speaks these types, and the JSON under `bench/results/` is
//! their serde form.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// A system under test (a row of the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SystemId {
    /// Client straight to the upstream, upstream on the client's core.
    DirectBeside,
    /// Client straight to an upstream pinned to the proxies' core, so
    /// cross-core wakeups are not blamed on the proxies.
    DirectSutCore,
    /// The redirector: connect hook → node-local proxy.
    Redirector,
    /// Another build of the redirector (`--baseline <binary>`), configured
    /// and measured exactly like `Redirector`: this build against that one,
    /// in the same run.
    RedirectorBaseline,
    /// The redirector's own daemon, with the client in a pod it serves
    /// (the pod's network namespace and cgroup, made by the real CNI
    /// plugins): the proxy listens and connects upstream from inside the
    /// pod, whose traffic crosses the node's bridge.
    RedirectorPod,
    /// The redirector's kernel fast path (`redirector.dev/datapath:
    /// kernel`): connect4 rewrites the VIP straight to an endpoint, no
    /// proxy hop.
    RedirectorFastPath,
    Envoy,
    Nginx,
    Haproxy,
}

impl SystemId {
    /// Every system, in the order of the tables. The baseline runs only
    /// when given (`--baseline`).
    pub(crate) const ALL: [SystemId; 9] = [
        SystemId::DirectBeside,
        SystemId::DirectSutCore,
        SystemId::Redirector,
        SystemId::RedirectorBaseline,
        SystemId::RedirectorPod,
        SystemId::RedirectorFastPath,
        SystemId::Envoy,
        SystemId::Nginx,
        SystemId::Haproxy,
    ];

    /// Short stable key, used in JSON, file names and `--systems`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            SystemId::DirectBeside => "direct-beside",
            SystemId::DirectSutCore => "direct-sut-core",
            SystemId::Redirector => "redirector",
            SystemId::RedirectorBaseline => "redirector-baseline",
            SystemId::RedirectorPod => "redirector-pod",
            SystemId::RedirectorFastPath => "redirector-fast-path",
            SystemId::Envoy => "envoy",
            SystemId::Nginx => "nginx",
            SystemId::Haproxy => "haproxy",
        }
    }

    /// Proxies that are compared against each other (not the direct rows).
    pub(crate) fn is_proxy(self) -> bool {
        !matches!(self, SystemId::DirectBeside | SystemId::DirectSutCore)
    }

    /// The redirector's own daemons, which can be killed and taken over
    /// (the fail-open run); the peers have no such mode. Not the pod row:
    /// its daemon is the redirector's.
    pub(crate) fn is_redirector(self) -> bool {
        matches!(
            self,
            SystemId::Redirector | SystemId::RedirectorBaseline | SystemId::RedirectorFastPath
        )
    }

    /// The redirector's proxy datapath, from this build or the baseline's:
    /// the systems every failover fault runs through, even in a quick run.
    pub(crate) fn is_redirector_proxy(self) -> bool {
        matches!(self, SystemId::Redirector | SystemId::RedirectorBaseline)
    }

    /// Why this system cannot run `w` at all, if it cannot.
    pub(crate) fn unavailable(self, w: &Workload) -> Option<&'static str> {
        match (self, w.upstream) {
            (SystemId::RedirectorFastPath, Upstream::Tls) => Some(FAST_PATH_NO_TLS),
            _ => None,
        }
    }
}

/// Why the fast path has no plain→HTTPS cells.
pub(crate) const FAST_PATH_NO_TLS: &str = "the kernel path cannot originate TLS; the app would have to \
     speak TLS itself (the config rejects `redirector.dev/datapath: kernel` with `tls.mode: SIMPLE`)";

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Conn {
    /// One connection carries many requests.
    KeepAlive,
    /// A new TCP connection for every request.
    NewPerRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Upstream {
    /// Plain HTTP to the upstream.
    Plain,
    /// The system originates TLS (verified, SNI, pooled) to an HTTPS upstream;
    /// the client still speaks plain HTTP.
    Tls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub(crate) enum Load {
    /// Fixed arrival rate with latency correction (oha): latency under load.
    OpenLoop { rps: u32 },
    /// As fast as it goes with this many connections (wrk): saturation.
    ClosedLoop { connections: u32 },
}

/// A column group of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Workload {
    pub conn: Conn,
    pub upstream: Upstream,
    pub load: Load,
}

impl Workload {
    /// e.g. `keep-alive/plain/open-1000rps`, `new-conn/tls/closed-32c`.
    pub(crate) fn key(&self) -> String {
        let conn = match self.conn {
            Conn::KeepAlive => "keep-alive",
            Conn::NewPerRequest => "new-conn",
        };
        let up = match self.upstream {
            Upstream::Plain => "plain",
            Upstream::Tls => "tls",
        };
        let load = match self.load {
            Load::OpenLoop { rps } => format!("open-{rps}rps"),
            Load::ClosedLoop { connections } => format!("closed-{connections}c"),
        };
        format!("{conn}/{up}/{load}")
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// What the load generator saw in one run of one cell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LoadResult {
    /// Completed requests (any status).
    pub requests: u64,
    /// Transport errors plus non-2xx responses.
    pub errors: u64,
    /// Achieved rate over the measured duration.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Measured duration, seconds.
    pub duration_secs: f64,
}

/// Resource use during one run of one cell, from /proc.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// utime+stime of every process of the system under test (None for the
    /// direct rows, which have none).
    pub sut_cpu_secs: Option<f64>,
    /// Busy CPU time of the whole machine (all cores, excluding idle and
    /// iowait), seconds.
    pub machine_busy_secs: f64,
    /// Steal time (hypervisor) on all cores, seconds.
    pub steal_secs: f64,
    /// Busy CPU time not spent by the harness, its children or the SUT.
    pub foreign_cpu_secs: f64,
    /// Peak RSS of the SUT's processes since they started (sum of VmHWM),
    /// KiB: includes start-up transients.
    pub sut_peak_rss_kib: Option<u64>,
    /// Largest RSS of the SUT's processes sampled during the run (sum of
    /// VmRSS every 50 ms), KiB: the memory the load needs.
    #[serde(default)]
    pub sut_rss_kib: Option<u64>,
    pub wall_secs: f64,
}

impl Sample {
    /// The SUT's CPU, in vCPU per 1000 requests per second.
    pub(crate) fn cpu_per_krps(&self, rps: f64) -> Option<f64> {
        let cpu = self.sut_cpu_secs?;
        (rps > 0.0 && self.wall_secs > 0.0).then(|| cpu / self.wall_secs / (rps / 1000.0))
    }
}

/// What the HTTPS upstreams (`rdt-upstream`, rustls with its default
/// session cache and TLS 1.3 tickets) counted during one run of a TLS
/// cell: differences of their counters from just before to just after the
/// measured run (not the warm-up), summed over every HTTPS upstream (east
/// and west :443, east :8443). Through a proxy these are the proxy's
/// upstream connections; in the direct rows, the load generator's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct UpstreamTls {
    /// HTTP requests the HTTPS upstreams answered.
    pub requests: u64,
    /// TCP connections they accepted.
    pub connections: u64,
    /// Full handshakes of connections whose first request came in the run:
    /// the connections that carried the traffic.
    pub full: u64,
    /// Resumed handshakes of such connections.
    pub resumed: u64,
    /// Every completed full handshake, whether or not its connection
    /// carried a request (HAProxy's TLS health checks of both regions
    /// handshake and leave, whichever system is measured).
    pub all_full: u64,
    /// Every completed resumed handshake.
    pub all_resumed: u64,
    /// Of `all_full`, those that needed a HelloRetryRequest.
    pub hello_retries: u64,
    /// Handshakes that failed or were abandoned.
    pub failed: u64,
}

impl UpstreamTls {
    /// (full, resumed) handshakes of connections that carried requests, per
    /// 1000 requests the upstreams answered; None without requests.
    pub(crate) fn per_krequests(&self) -> Option<(f64, f64)> {
        (self.requests > 0).then(|| {
            let k = self.requests as f64 / 1000.0;
            (self.full as f64 / k, self.resumed as f64 / k)
        })
    }

    /// Handshakes whose connection carried no request in the run (at least
    /// 0: a connection opened in the warm-up may carry its first request in
    /// the run).
    pub(crate) fn idle_handshakes(&self) -> u64 {
        (self.all_full + self.all_resumed).saturating_sub(self.full + self.resumed)
    }
}

/// One repetition of one (system, workload) cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CellRun {
    pub system: SystemId,
    pub workload: Workload,
    pub rep: u32,
    pub load: LoadResult,
    pub sample: Sample,
    /// Dropped from medians: steal or foreign CPU above the threshold.
    pub noisy: bool,
    /// The HTTPS upstreams' counters over the run (TLS cells only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
}

/// A cell the system cannot run yet, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct NotAvailable {
    pub system: SystemId,
    pub workload: Workload,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Fault {
    /// The primary answers 503 to everything.
    Status503,
    /// The primary process is killed (connections reset, connects refused).
    Killed,
    /// Packets to the primary vanish (connects and requests time out).
    BlackHoled,
}

/// One failover run: constant-rate client, fault at `fault_at_ms`, fault
/// removed at `restore_at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FailoverRun {
    pub system: SystemId,
    pub fault: Fault,
    pub rps: u32,
    pub requests: u64,
    pub fault_at_ms: f64,
    pub restore_at_ms: f64,
    /// Requests that got no 2xx, between the fault and the end.
    pub errors_after_fault: u64,
    /// From the fault until every later request (up to the restore) is
    /// served by the failover region; None if that never happened.
    pub time_to_full_failover_ms: Option<f64>,
    /// Worst latency of requests sent between the fault and the restore.
    pub worst_latency_after_fault_ms: f64,
    /// Worst latency in the first 100 ms after the fault: the failover
    /// itself, without the rest of the window's ordinary tail.
    #[serde(default)]
    pub worst_latency_first_100ms_ms: f64,
    /// Worst latency before the fault: the machine's ordinary tail, for
    /// scale.
    #[serde(default)]
    pub worst_latency_before_fault_ms: f64,
    /// From the restore until requests are served by the primary again;
    /// None if it did not happen before the end.
    pub time_to_fail_back_ms: Option<f64>,
    /// Per 100 ms bucket from the start: (served by primary, served by
    /// failover, errors), for plots and post-mortems.
    pub timeline: Vec<(u32, u32, u32)>,
}

/// One fail-open run: a constant-rate client opening a new connection per
/// request to the VIP of one of the redirector's systems; its daemon gets
/// SIGKILL at `kill_at_ms` and a new daemon is started on the same pinned
/// state (a takeover) at `restart_at_ms`. Times count from the client's
/// first request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FailOpenRun {
    pub system: SystemId,
    pub rps: u32,
    pub requests: u64,
    /// SIGKILL sent.
    pub kill_at_ms: f64,
    /// The killed daemon reaped: its listener is closed.
    pub dead_at_ms: f64,
    /// The new daemon started.
    pub restart_at_ms: f64,
    /// The new daemon logged ready (its programs attached).
    pub ready_at_ms: f64,
    /// Requests whose connect failed or timed out: the app's `connect()`
    /// saw the daemon's death.
    pub failed_connects: u64,
    /// Requests whose connection connect4 sent to the proxy before the kill
    /// (`connect()` was called before it), left without an answer: the
    /// in-flight ones nothing can save.
    pub broken_in_flight: u64,
    /// Requests whose connection connect4 sent to the killed proxy after
    /// the kill, left without an answer. The kernel closes a killed
    /// process's sockets only as it tears the process down, and until then
    /// connect4 sees a listener (unless the death watch, `RD_LIFE_V3`,
    /// marked the daemon dying first): new connections that failed, though
    /// their `connect()` may have succeeded.
    #[serde(default)]
    pub broken_after_kill: u64,
    /// Every other request without a 2xx answer: connected, then broken or
    /// answered with an error.
    pub other_errors: u64,
    /// 2xx answers to requests sent between the kill and the new daemon's
    /// ready, by `path/upstream`: `kernel/east` (connect4 went straight to
    /// an endpoint), `proxy/east` (a daemon's proxy carried it).
    pub served_while_down: BTreeMap<String, u64>,
    /// From the restart until the first 2xx on a connection to the new
    /// daemon's proxy; None if none came (the fast path never uses it).
    pub restart_to_proxy_ms: Option<f64>,
    /// Worst latency of requests sent before the kill (the ordinary tail).
    pub worst_latency_before_kill_ms: f64,
    /// Worst latency of requests sent from the kill on.
    pub worst_latency_after_kill_ms: f64,
    /// Per 100 ms bucket from the start: (2xx through a proxy, 2xx straight
    /// from the kernel, errors).
    pub timeline: Vec<(u32, u32, u32)>,
}

impl FailOpenRun {
    /// What the target counts: every error of a connection opened from
    /// the kill on (everything but `broken_in_flight`).
    pub(crate) fn new_connection_errors(&self) -> u64 {
        self.failed_connects + self.broken_after_kill + self.other_errors
    }
}

/// Where and with what the numbers were taken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MachineInfo {
    /// RFC 3339, UTC.
    pub date: String,
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_kib: u64,
    /// Tool and system versions: redirector (git describe), redirector-baseline
    /// (its path and the start of its SHA-256, with `--baseline`), envoy, nginx,
    /// haproxy, oha, wrk, rustc.
    pub versions: BTreeMap<String, String>,
}

/// How the run was set up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunSettings {
    pub quick: bool,
    pub reps: u32,
    pub cell_secs: f64,
    pub warmup_secs: f64,
    pub body_bytes: u32,
    /// CPU the load generator and upstreams are pinned to.
    pub client_cpu: u32,
    /// CPU the system under test is pinned to.
    pub sut_cpu: u32,
    /// A repetition is noisy when steal or foreign CPU exceeds this share
    /// of one core over its wall time.
    pub noise_threshold: f64,
}

/// Everything one `cargo xtask bench` run produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BenchReport {
    pub machine: MachineInfo,
    pub settings: RunSettings,
    pub cells: Vec<CellRun>,
    pub not_available: Vec<NotAvailable>,
    pub failover: Vec<FailoverRun>,
    #[serde(default)]
    pub fail_open: Vec<FailOpenRun>,
    /// The pod scenarios (None when not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsReport>,
}

/// What the redirector's daemon holds, read from /proc: its process and
/// its netns helper's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Footprint {
    /// Pods the daemon serves (`redirector pods`, the node's own row not
    /// counted).
    pub pods: u32,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Of those, sockets (listeners, app and upstream connections).
    pub sockets: u64,
    /// Every descriptor by kind: `socket`, `bpf-map`, `net` (a network
    /// namespace), `eventpoll`, `pipe`, `file`, …
    #[serde(default)]
    pub fd_kinds: BTreeMap<String, u64>,
    /// The same, process by process: `daemon`, `netns helper`.
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessUse>,
    /// BPF maps its descriptors hold (distinct map ids).
    pub bpf_maps: u64,
    /// Their kernel memory (`memlock` in fdinfo), KiB.
    pub bpf_map_kib: u64,
}

/// What one of the daemon's processes holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcessUse {
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u64,
    pub fd_kinds: BTreeMap<String, u64>,
}

/// How one new pod's first connect to a VIP came to be served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PodStart {
    pub pod: String,
    /// The redirector's CNI plugin was in the chain: its ADD returned once
    /// the daemon listened in the pod. Otherwise the daemon found the pod
    /// on its own.
    pub plugin: bool,
    /// How long the CNI ADD took (every plugin of the chain).
    pub add_ms: f64,
    /// From the start of the ADD to the app's first `connect()`: the ADD,
    /// the sandbox's own process, the app's start.
    pub first_connect_ms: f64,
    /// From the start of the ADD to the first `connect()` the daemon
    /// served (sent to its proxy in the pod and answered 200).
    pub served_ms: f64,
    /// Connects before that one which the kernel sent straight to an
    /// endpoint (fail-open: nothing listened in the pod yet).
    pub kernel_connects: u32,
    /// Connects before it that failed.
    pub failed_connects: u32,
    /// How the daemon lists it: `cni` (told by the plugin) or `found`.
    pub source: String,
    /// The daemon's own time from being told of the pod or finding it to
    /// its listeners there being up (`redirector pods`).
    pub setup_ms: f64,
}

/// The pod scenarios: what pods cost the daemon, and how soon a new pod's
/// first connect is served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PodsReport {
    /// With no pod, then at each step of pods served (e.g. 10, 50).
    pub footprints: Vec<Footprint>,
    /// Once every pod was deleted and the daemon let go of them.
    pub after_delete: Option<Footprint>,
    /// Every pod, in the order they were made (with and without the plugin
    /// alternately).
    pub starts: Vec<PodStart>,
}
