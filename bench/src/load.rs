//! Drives the load generators of the main matrix: `oha` for open loop
//! (fixed arrival rate with latency correction, so a stalling system
//! shows its stall instead of slowing the client down) and `wrk` for
//! closed loop (as fast as the connections go: saturation). Each run is
//! one child process placed where the app would be (inside the bench
//! namespace and the cgroup the system's hook is attached to, or inside a
//! pod: the caller's [`App`]), and pinned to the client core. Their
//! reports are parsed into [`LoadResult`] by `load/oha.rs` and
//! `load/wrk.rs`, whose unit tests read real outputs kept in
//! `load/fixtures/`.

mod oha;
mod wrk;

use std::{
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use redirector_tests::{process, tempdir::TempDir};

use crate::{
    model::{Load, LoadResult, Workload},
    tools::Tools,
};

/// One run of one cell, as the generator sees it.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec<'a> {
    /// VIP:80, or the upstream itself for the direct rows.
    pub target: SocketAddrV4,
    /// The Host header (`plain.test`, `tls.test`).
    pub host: &'a str,
    /// The client itself speaks TLS to `target`, without verifying it
    /// (only the direct TLS rows: the proxies take plain HTTP).
    pub https: bool,
    pub workload: Workload,
    pub duration: Duration,
}

impl LoadSpec<'_> {
    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/", self.target)
    }
}

/// What a run measured, plus what the generator says about response sizes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Observed {
    pub result: LoadResult,
    /// Mean bytes per response as the generator counts them: the body for
    /// oha, status line, headers and body for wrk. `None` without responses.
    pub bytes_per_response: Option<f64>,
}

/// Per-request timeout of both generators: a stall longer than this is an
/// error, not a latency.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the generator runs: a command for a program in the app's place.
pub(crate) struct App<'a> {
    /// `program`, ready to spawn where the app runs (namespace, cgroup).
    pub command: &'a dyn Fn(&Path) -> Command,
    /// That place, for messages.
    pub place: String,
}

/// Runs the generator for `spec` as `app`, pinned to `cpu`, and parses its
/// report.
pub(crate) fn observe(tools: &Tools, spec: &LoadSpec, app: &App, cpu: u32) -> Result<Observed> {
    let what = format!("{} against {}", spec.workload, spec.url());
    let limit = |duration| {
        Duration::from_secs(whole_secs(duration)) + REQUEST_TIMEOUT + Duration::from_secs(20)
    };
    match spec.workload.load {
        Load::OpenLoop { rps } => {
            let mut cmd = (app.command)(&tools.oha);
            cmd.args(oha::args(spec, rps));
            process::pin_to_cpu(&mut cmd, cpu)?;
            let stdout = run_bounded(&mut cmd, limit(spec.duration), &app.place)
                .with_context(|| format!("oha {what}"))?;
            oha::parse(&stdout).with_context(|| format!("oha's report for {what}"))
        }
        Load::ClosedLoop { connections } => {
            let dir = TempDir::new("wrk")?;
            let script = dir.path().join("report.lua");
            std::fs::write(&script, wrk::SCRIPT)
                .with_context(|| format!("writing {}", script.display()))?;
            let mut cmd = (app.command)(&tools.wrk);
            cmd.args(wrk::args(spec, connections, &script));
            process::pin_to_cpu(&mut cmd, cpu)?;
            let stdout = run_bounded(&mut cmd, limit(spec.duration), &app.place)
                .with_context(|| format!("wrk {what}"))?;
            wrk::parse(&stdout).with_context(|| format!("wrk's report for {what}"))
        }
    }
}

/// Whole seconds, at least 1 (wrk's `-d` takes no fractions).
fn whole_secs(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

/// Runs `cmd` (placed where the app runs, `place`) and returns its stdout;
/// an error with its stderr if it fails or outlives `limit`, when it is
/// killed.
pub(crate) fn run_bounded(cmd: &mut Command, limit: Duration, place: &str) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {shown} in {place}"))?;
    let stdout = process::drain(child.stdout.take());
    let stderr = process::drain(child.stderr.take());
    let status = process::wait_timeout(&mut child, limit)?;
    if status.is_none() {
        process::kill_and_reap(&mut child);
    }
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    // The first line says what happened; the child's output follows.
    match status {
        None => bail!("{shown} did not finish within {limit:?}\nstderr:\n{stderr}"),
        Some(status) if !status.success() => {
            bail!("{shown} failed ({status})\nstderr:\n{stderr}\nstdout:\n{stdout}")
        }
        Some(_) => Ok(stdout),
    }
}
