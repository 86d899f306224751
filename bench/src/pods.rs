//! The pod scenarios, on real pods (`topology/pods.rs`) served by the
//! redirector's daemon, run before the cells so they count pods from none:
//!
//! - What pods cost the daemon: its footprint (`pods/footprint.rs`: RSS,
//!   descriptors, the BPF maps they hold) with no pod, at each step of
//!   pods served (10 and 50; quick 10), and once they are all deleted.
//!   Each pod has made one request by then, so it also holds the upstream
//!   connection the daemon keeps pooled for it (idle timeout: 1 h).
//! - How soon a new pod's first connect is served, from the start of its
//!   CNI ADD: pods are made one at a time, alternately with the
//!   redirector's CNI plugin in the chain (its ADD returns once the daemon
//!   listens in the pod) and without it (the daemon finds the pod on its
//!   own: the kernel's report of the first socket made in the pod, or its
//!   scan of the cgroup every second). Right after the ADD an app,
//!   `bench-first-connect`, connects to the plain VIP every millisecond
//!   until a connection reaches the daemon's proxy in the pod and is
//!   answered 200. Connects before that went straight to an endpoint
//!   (connect4 fails open while nothing listens in the pod) and are
//!   counted. Timings are never checked against a bound: a pod not served
//!   within the deadline fails the run, with the daemon's log.

mod footprint;

use std::{
    path::PathBuf,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use redirector_tests::pod::Pod;
use serde::Deserialize;

use crate::{
    load,
    model::{PodStart, PodsReport, SystemId},
    topology::{Bed, HOST_PLAIN, System, VIP_PLAIN},
    wait::{self, Seen},
};

/// What the pod scenarios do.
pub(crate) struct Plan {
    /// Pods served when the footprint is read, ascending; the last is how
    /// many pods are made.
    pub steps: Vec<u32>,
    /// How long a pod's app tries before its first connect must be served.
    pub deadline: Duration,
}

/// One pod made, and what its app saw.
struct Made {
    pod: Pod,
    plugin: bool,
    app: AppReport,
    cookie: u64,
}

pub(crate) fn run(bed: &Bed, plan: &Plan) -> Result<PodsReport> {
    let network = bed.pod_network_or_fail()?;
    let redirector = bed
        .system(SystemId::Redirector)
        .context("the pod scenarios need the redirector")?;
    let socket = redirector.cni_socket()?.to_owned();
    let pid = *redirector
        .pids()
        .first()
        .context("the redirector has a daemon")?;
    let mut report = PodsReport::default();
    settle(bed, redirector, &[])?;
    report.footprints.push(footprint::read(pid, 0)?);
    let total = plan.steps.last().copied().unwrap_or(0);
    let mut made: Vec<Made> = Vec::new();
    for i in 0..total {
        let plugin = i % 2 == 0;
        network.unchain();
        if plugin {
            network.chain_redirector(&socket)?;
        }
        let name = format!("bench-pod-{i}");
        let pod = network.pod(&name)?;
        let app = first_connect(&pod, plan.deadline).with_context(|| {
            format!(
                "pod {name}'s first connect to {VIP_PLAIN}\n{}",
                redirector.log()
            )
        })?;
        let cookie = netns_cookie(&pod)?;
        let t0 = unix_ms(&pod);
        eprintln!(
            "bench pod {name} ({}): ADD {:.1} ms, first connect at {:.1} ms, served at {:.1} ms; {} connects straight to the endpoint before",
            if plugin { "CNI plugin" } else { "found" },
            pod.add_took().as_secs_f64() * 1000.0,
            app.first_attempt_unix_ms - t0,
            app.served_connect_unix_ms.unwrap_or(f64::NAN) - t0,
            app.kernel,
        );
        made.push(Made {
            pod,
            plugin,
            app,
            cookie,
        });
        let served = u32::try_from(made.len())?;
        if plan.steps.contains(&served) {
            let cookies: Vec<u64> = made.iter().map(|m| m.cookie).collect();
            settle(bed, redirector, &cookies)?;
            report.footprints.push(footprint::read(pid, served)?);
        }
    }
    let rows = namespaces(bed, redirector)?;
    for m in &made {
        let row = rows
            .iter()
            .find(|r| r.cookie() == Some(m.cookie))
            .with_context(|| format!("pod {} is not in redirector pods", m.pod.name()))?;
        let t0 = unix_ms(&m.pod);
        report.starts.push(PodStart {
            pod: m.pod.name().to_owned(),
            plugin: m.plugin,
            add_ms: m.pod.add_took().as_secs_f64() * 1000.0,
            first_connect_ms: m.app.first_attempt_unix_ms - t0,
            served_ms: m.app.served_connect_unix_ms.unwrap_or(f64::NAN) - t0,
            kernel_connects: m.app.kernel,
            failed_connects: m.app.failed,
            source: row.source.clone(),
            setup_ms: row.setup_ms,
        });
    }
    let failures: Vec<String> = made
        .into_iter()
        .filter_map(|m| m.pod.delete().err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("deleting the pods: {}", failures.join("; "));
    }
    settle(bed, redirector, &[])?;
    report.after_delete = Some(footprint::read(pid, 0)?);
    Ok(report)
}

/// `bench-first-connect`'s line.
#[derive(Debug, Deserialize)]
struct AppReport {
    first_attempt_unix_ms: f64,
    served_connect_unix_ms: Option<f64>,
    attempts: u32,
    kernel: u32,
    failed: u32,
    last_error: String,
}

/// Runs the app in `pod` until its first connect is served.
fn first_connect(pod: &Pod, deadline: Duration) -> Result<AppReport> {
    let program = app_program()?;
    let mut cmd = pod.command(&program);
    cmd.arg(VIP_PLAIN.to_string())
        .arg(HOST_PLAIN)
        .arg(deadline.as_millis().to_string());
    let place = format!("pod {} ({})", pod.name(), pod.netns().name());
    let out = load::run_bounded(&mut cmd, deadline + Duration::from_secs(10), &place)?;
    let app: AppReport = serde_json::from_str(out.trim())
        .with_context(|| format!("bench-first-connect said {out:?}"))?;
    if app.served_connect_unix_ms.is_none() {
        bail!(
            "no connect was served within {deadline:?}: {} attempts, {} sent straight to the endpoint, {} failed; last error: {}",
            app.attempts,
            app.kernel,
            app.failed,
            app.last_error
        );
    }
    Ok(app)
}

/// `bench-first-connect`, built beside this executable.
fn app_program() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the bench's executable")?;
    let program = exe.with_file_name("bench-first-connect");
    if !program.is_file() {
        bail!(
            "{} is missing: build it with cargo build -p redirector-bench (cargo xtask bench does)",
            program.display()
        );
    }
    Ok(program)
}

/// When `pod`'s ADD started, in unix ms.
fn unix_ms(pod: &Pod) -> f64 {
    pod.add_started()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The netns cookie of `pod`'s namespace (`SO_NETNS_COOKIE` of a socket
/// made there by a thread of this process, which is in no cgroup the
/// daemon watches, so the daemon hears nothing of it).
fn netns_cookie(pod: &Pod) -> Result<u64> {
    pod.netns()
        .spawn(|| async { cookie_here() })
        .join()
        .map_err(|_| anyhow!("the thread reading {}'s netns cookie panicked", pod.name()))?
        .with_context(|| format!("reading the netns cookie of pod {}", pod.name()))
}

fn cookie_here() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain syscalls on a descriptor this function owns; the
    // option value is a u64 the kernel writes at most `len` bytes of.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// A row of `redirector pods --output json`.
#[derive(Debug, Deserialize)]
struct Row {
    netns: String,
    source: String,
    state: String,
    open_connections: u32,
    setup_ms: f64,
}

impl Row {
    fn cookie(&self) -> Option<u64> {
        u64::from_str_radix(self.netns.strip_prefix("0x")?, 16).ok()
    }
}

fn namespaces(bed: &Bed, redirector: &System) -> Result<Vec<Row>> {
    let report = bed.inspect(redirector, "pods")?;
    serde_json::from_value(report["namespaces"].clone())
        .with_context(|| format!("the namespaces of redirector pods: {report:#}"))
}

/// Until the daemon serves exactly the pods `cookies` (besides its own
/// namespace), none with a connection open: settled, for a footprint.
fn settle(bed: &Bed, redirector: &System, cookies: &[u64]) -> Result<()> {
    let what = format!("the daemon to serve {} pods, idle", cookies.len());
    wait::until(&what, wait::READY, Duration::from_millis(100), || {
        let rows = namespaces(bed, redirector)?;
        let pods: Vec<&Row> = rows.iter().filter(|r| r.source != "host").collect();
        let ours = pods.len() == cookies.len()
            && pods
                .iter()
                .all(|r| r.cookie().is_some_and(|c| cookies.contains(&c)));
        let busy: Vec<String> = pods
            .iter()
            .filter(|r| r.state != "served" || r.open_connections > 0)
            .map(|r| {
                format!(
                    "{} {} with {} connections",
                    r.netns, r.state, r.open_connections
                )
            })
            .collect();
        Ok(if ours && busy.is_empty() {
            Seen::Ready(())
        } else {
            Seen::Not(format!(
                "{} pods listed; not settled: {}",
                pods.len(),
                busy.join(", ")
            ))
        })
    })
    .with_context(|| format!("{}\n{}", redirector.id, redirector.log()))
}
