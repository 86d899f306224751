//! Turns one `BenchReport` into what a reader looks at: the markdown
//! (per-cell medians and spread, ratios against direct access and against
//! the peers, failover and fail-open tables, the pods, the pass/miss table
//! of the project's targets) and the files under `bench/results/` (JSON,
//! markdown, SVG plot). The figures come from `summary.rs`, the targets
//! from `report/targets.rs`, the pods' section from `report/pods.rs`, the
//! plot from `plot.rs`; data flows one way,
//! from the report's numbers to the files.

mod pods;
pub(crate) mod targets;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

pub(crate) use self::targets::{Verdict, targets};
use crate::{
    format::{mib, ms, sig3},
    model::{BenchReport, CellRun, FailOpenRun, Fault, SystemId, Workload},
    plot,
    summary::{Aggregate, PEERS, Ratio, Stat, aggregate, ratios},
};

/// Steal and foreign CPU of one repetition, as shares of one core over its
/// wall time (the unit of `RunSettings::noise_threshold`).
fn noise_shares(run: &CellRun) -> (f64, f64) {
    let wall = run.sample.wall_secs;
    if wall > 0.0 {
        (
            run.sample.steal_secs / wall,
            run.sample.foreign_cpu_secs / wall,
        )
    } else {
        (0.0, 0.0)
    }
}

// ---------------------------------------------------------------- format

fn range(s: &Stat, f: impl Fn(f64) -> String) -> String {
    if s.min == s.max {
        f(s.median)
    } else {
        format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
    }
}

fn opt_ms(x: Option<f64>) -> String {
    x.map_or_else(|| "never".into(), ms)
}

fn ratio_cell(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), sig3)
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::Status503 => "503",
        Fault::Killed => "killed",
        Fault::BlackHoled => "black-holed",
    }
}

/// Markdown footnotes for "n/a" cells, one per distinct reason.
#[derive(Default)]
struct Footnotes(Vec<String>);

impl Footnotes {
    fn mark(&mut self, reason: &str) -> String {
        let i = match self.0.iter().position(|r| r == reason) {
            Some(i) => i,
            None => {
                self.0.push(reason.to_string());
                self.0.len() - 1
            }
        };
        format!("[^na{}]", i + 1)
    }

    fn render(&self, out: &mut String) {
        if self.0.is_empty() {
            return;
        }
        out.push('\n');
        for (i, r) in self.0.iter().enumerate() {
            // A footnote is one line: fold the reason.
            let r = r.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, "[^na{}]: {r}", i + 1);
        }
    }
}

/// The whole report as markdown: header, one table per workload, ratios,
/// failover, targets, noise.
pub(crate) fn markdown(report: &BenchReport) -> String {
    markdown_with_plot(report, None)
}

fn markdown_with_plot(report: &BenchReport, plot_file: Option<&str>) -> String {
    let mut out = String::new();
    let mut notes = Footnotes::default();
    header(report, &mut out);
    if let Some(file) = plot_file {
        let _ = writeln!(
            out,
            "![Latency percentiles and CPU per 1000 rps per system]({file})\n"
        );
    }
    let aggs = aggregate(report);
    workload_tables(report, &aggs, &mut notes, &mut out);
    handshake_table(report, &aggs, &mut out);
    ratio_tables(report, &mut out);
    failover_table(report, &mut out);
    fail_open_table(report, &mut out);
    pods::section(report, &mut out);
    targets_table(report, &mut out);
    noise_line(report, &aggs, &mut out);
    notes.render(&mut out);
    out
}

fn header(report: &BenchReport, out: &mut String) {
    let m = &report.machine;
    let s = &report.settings;
    let date = if m.date.is_empty() {
        "(undated)"
    } else {
        &m.date
    };
    let cpu = if m.cpu_model.is_empty() {
        "unknown CPU"
    } else {
        &m.cpu_model
    };
    let kernel = if m.kernel.is_empty() { "?" } else { &m.kernel };
    let _ = writeln!(
        out,
        "# redirector benchmark, {date}: {cpu}, {} vCPU, kernel {kernel}\n",
        m.cpus
    );
    let host = if m.hostname.is_empty() {
        String::new()
    } else {
        format!("host `{}`, ", m.hostname)
    };
    let _ = writeln!(
        out,
        "Machine: {host}{:.1} GiB RAM.\n",
        m.memory_kib as f64 / 1024.0 / 1024.0,
    );
    let _ = writeln!(
        out,
        "Settings: {}{} repetitions per cell, systems interleaved; {} s per cell after {} s warm-up; \
         {}-byte response bodies; load generator and upstreams on CPU {}, system under test on CPU {}; \
         a repetition is noisy when steal or foreign CPU exceeds {}% of one core.\n",
        if s.quick { "quick run, " } else { "" },
        s.reps,
        s.cell_secs,
        s.warmup_secs,
        s.body_bytes,
        s.client_cpu,
        s.sut_cpu,
        sig3(s.noise_threshold * 100.0),
    );
    if !m.versions.is_empty() {
        let v: Vec<String> = m
            .versions
            .iter()
            .map(|(k, v)| format!("{k} `{v}`"))
            .collect();
        let _ = writeln!(out, "Versions: {}.\n", v.join(", "));
    }
    let _ = writeln!(
        out,
        "Each figure is the median over the repetitions used, with the spread as (min–max). \
         Latency is as the client saw it (open loop: corrected for coordinated omission). \
         Errors are transport errors plus non-2xx responses, summed. CPU/1000 rps is the CPU \
         of the system under test's processes, in vCPU per 1000 requests per second (the \
         direct rows have none); machine CPU is the busy share of all cores. Peak RSS is the \
         largest over all repetitions.\n"
    );
}

fn workload_tables(
    report: &BenchReport,
    aggs: &[Aggregate],
    notes: &mut Footnotes,
    out: &mut String,
) {
    let mut workloads: Vec<Workload> = aggs
        .iter()
        .map(|a| a.workload)
        .chain(report.not_available.iter().map(|n| n.workload))
        .collect();
    workloads.sort();
    workloads.dedup();
    for w in workloads {
        let _ = writeln!(out, "## {w}\n");
        let _ = writeln!(
            out,
            "| system | rps | p50 ms | p99 ms | p99.9 ms | errors | CPU/1000 rps (vCPU) | machine CPU | RSS under load (MiB) | peak RSS since start (MiB) | reps used |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for sys in SystemId::ALL {
            if let Some(a) = aggs.iter().find(|a| a.workload == w && a.system == sys) {
                let errors = if a.errors == 0 {
                    "0".to_string()
                } else {
                    let share = a.errors as f64 / a.requests.max(1) as f64 * 100.0;
                    format!("{} ({}%)", a.errors, sig3(share))
                };
                let reps = if a.all_noisy {
                    format!("{}/{} (all noisy)", a.reps_used, a.reps_total)
                } else {
                    format!("{}/{}", a.reps_used, a.reps_total)
                };
                let _ = writeln!(
                    out,
                    "| {sys} | {} | {} | {} | {} | {errors} | {} | {} | {} | {} | {reps} |",
                    range(&a.rps, |x| format!("{x:.0}")),
                    range(&a.p50_ms, sig3),
                    range(&a.p99_ms, sig3),
                    range(&a.p999_ms, sig3),
                    a.cpu_per_krps
                        .as_ref()
                        .map_or_else(|| "–".into(), |s| range(s, |x| format!("{x:.3}"))),
                    a.machine_cpu_share.as_ref().map_or_else(
                        || "–".into(),
                        |s| range(s, |x| format!("{:.0}%", x * 100.0))
                    ),
                    a.rss_under_load_kib.map_or_else(|| "–".into(), mib),
                    a.peak_rss_kib.map_or_else(|| "–".into(), mib),
                );
            } else if let Some(na) = report
                .not_available
                .iter()
                .find(|n| n.workload == w && n.system == sys)
            {
                let mark = notes.mark(&na.reason);
                let _ = writeln!(
                    out,
                    "| {sys} | n/a{mark} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0/0 |"
                );
            }
        }
        out.push('\n');
    }
}

/// Upstream TLS handshakes per 1000 requests, TLS cell × system.
fn handshake_table(report: &BenchReport, aggs: &[Aggregate], out: &mut String) {
    let counted: Vec<&Aggregate> = aggs
        .iter()
        .filter(|a| a.tls_full_per_krequests.is_some())
        .collect();
    if counted.is_empty() {
        return;
    }
    let mut workloads: Vec<Workload> = counted.iter().map(|a| a.workload).collect();
    workloads.dedup();
    // Every system that ran these cells, so one without counts shows "–".
    let systems: Vec<SystemId> = SystemId::ALL
        .into_iter()
        .filter(|s| {
            aggs.iter()
                .any(|a| a.system == *s && workloads.contains(&a.workload))
        })
        .collect();
    let _ = writeln!(
        out,
        "## Upstream TLS handshakes per 1000 requests
"
    );
    let _ = writeln!(
        out,
        "Full / resumed, counted by the HTTPS upstreams (rustls with its default session \
         cache and TLS 1.3 tickets) over the measured part of each run, after the warm-up, \
         per 1000 requests they answered; medians over the repetitions used (per-run \
         counts are in the JSON). Through a proxy these are the handshakes of its upstream \
         connections; in the direct rows the load generator speaks TLS itself, so they are \
         its own (oha in open loop, wrk in closed loop; a new process every run, so even \
         with keep-alive its connections' handshakes fall in every run, more of them per \
         1000 requests the shorter the run). Only connections that carried a request count.\n"
    );
    let _ = writeln!(
        out,
        "| workload | {} |",
        systems
            .iter()
            .map(|s| s.key())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "--:|".repeat(systems.len()));
    for w in workloads {
        let cells: Vec<String> = systems
            .iter()
            .map(|&s| {
                let a = counted.iter().find(|a| a.workload == w && a.system == s);
                match a
                    .and_then(|a| Some((a.tls_full_per_krequests?, a.tls_resumed_per_krequests?)))
                {
                    Some((full, resumed)) => {
                        format!("{} / {}", sig3(full.median), sig3(resumed.median))
                    }
                    None if report
                        .not_available
                        .iter()
                        .any(|n| n.workload == w && n.system == s) =>
                    {
                        "n/a".into()
                    }
                    None => "–".into(),
                }
            })
            .collect();
        let _ = writeln!(out, "| {w} | {} |", cells.join(" | "));
    }
    out.push('\n');
    let counts: Vec<&crate::model::UpstreamTls> = report
        .cells
        .iter()
        .filter_map(|c| c.upstream_tls.as_ref())
        .collect();
    let wall: f64 = report
        .cells
        .iter()
        .filter(|c| c.upstream_tls.is_some())
        .map(|c| c.sample.wall_secs)
        .sum();
    let idle: u64 = counts.iter().map(|c| c.idle_handshakes()).sum();
    let failed: u64 = counts.iter().map(|c| c.failed).sum();
    let retries: u64 = counts.iter().map(|c| c.hello_retries).sum();
    let rate = |n: u64| {
        if wall > 0.0 {
            format!(" ({}/s)", sig3(n as f64 / wall))
        } else {
            String::new()
        }
    };
    let _ = write!(
        out,
        "Left out, over the TLS runs: {idle} completed handshakes{} and {failed} failed or \
         abandoned ones{} of connections that carried no request",
        rate(idle),
        rate(failed),
    );
    let haproxy = if report.cells.iter().any(|c| c.system == SystemId::Haproxy) {
        "HAProxy's TLS health checks of both regions (which run whichever system is \
         measured) and "
    } else {
        ""
    };
    let _ = writeln!(
        out,
        ", such as {haproxy}the handshakes a load generator leaves in flight when its run \
         ends. Full handshakes with a HelloRetryRequest: {retries}.\n"
    );
}

fn ratio_tables(report: &BenchReport, out: &mut String) {
    let all = ratios(report);
    if all.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Ratios\n");
    let _ = writeln!(
        out,
        "Within this run: the median over repetitions of (system ÷ baseline) for the same \
         repetition, which ran back to back. Below 1 is lower (better for latency and CPU, \
         worse for rps). CPU against direct is whole-machine CPU per 1000 rps, since direct \
         has no process of its own.\n"
    );
    let find = |w: Workload, s: SystemId, b: SystemId| {
        all.iter()
            .find(|r| r.workload == w && r.system == s && r.baseline == b)
    };
    let mut rows = String::new();
    for r in all.iter().filter(|r| r.baseline == SystemId::DirectBeside) {
        let sut = find(r.workload, r.system, SystemId::DirectSutCore);
        let _ = writeln!(
            rows,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.system,
            ratio_cell(r.rps),
            ratio_cell(r.p50),
            ratio_cell(r.p99),
            ratio_cell(r.p999),
            ratio_cell(sut.and_then(|s| s.p50)),
            ratio_cell(sut.and_then(|s| s.p99)),
            ratio_cell(r.machine_cpu_per_krps),
        );
    }
    if !rows.is_empty() {
        let _ = writeln!(out, "### Against direct\n");
        let _ = writeln!(
            out,
            "| workload | system | rps ÷ direct-beside | p50 ÷ direct-beside | p99 ÷ direct-beside | p99.9 ÷ direct-beside | p50 ÷ direct-sut-core | p99 ÷ direct-sut-core | machine CPU/1000 rps ÷ direct-beside |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
        out.push_str(&rows);
        out.push('\n');
        if all.iter().any(|r| r.system == SystemId::RedirectorFastPath) {
            let _ = writeln!(out, "{FAST_PATH_NOTE}\n");
        }
    }
    let peers: Vec<&Ratio> = all
        .iter()
        .filter(|r| r.system == SystemId::Redirector && PEERS.contains(&r.baseline))
        .collect();
    if !peers.is_empty() {
        let _ = writeln!(out, "### redirector ÷ peers\n");
        let _ = writeln!(
            out,
            "| workload | peer | rps | p50 | p99 | p99.9 | CPU/1000 rps | machine CPU/1000 rps |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|");
        for r in peers {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                r.baseline,
                ratio_cell(r.rps),
                ratio_cell(r.p50),
                ratio_cell(r.p99),
                ratio_cell(r.p999),
                ratio_cell(r.cpu_per_krps),
                ratio_cell(r.machine_cpu_per_krps),
            );
        }
        out.push('\n');
    }
    let builds: Vec<&Ratio> = all
        .iter()
        .filter(|r| r.system == SystemId::Redirector && r.baseline == SystemId::RedirectorBaseline)
        .collect();
    if !builds.is_empty() {
        let _ = writeln!(
            out,
            "### redirector ÷ redirector-baseline
"
        );
        let _ = writeln!(
            out,
            "This build ÷ the `--baseline` build (see Versions), configured and measured alike \
             and interleaved in this run: below 1 is lower for this build.\n"
        );
        let _ = writeln!(
            out,
            "| workload | rps | p50 | p99 | p99.9 | CPU/1000 rps | machine CPU/1000 rps |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
        for r in builds {
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                if r.noisy { " (noisy)" } else { "" },
                ratio_cell(r.rps),
                ratio_cell(r.p50),
                ratio_cell(r.p99),
                ratio_cell(r.p999),
                ratio_cell(r.cpu_per_krps),
                ratio_cell(r.machine_cpu_per_krps),
            );
        }
        out.push('\n');
    }
}

fn failover_table(report: &BenchReport, out: &mut String) {
    if report.failover.is_empty() {
        return;
    }
    let mut runs: Vec<_> = report.failover.iter().collect();
    runs.sort_by_key(|r| (r.system, r.fault));
    let _ = writeln!(out, "## Failover\n");
    let _ = writeln!(
        out,
        "A constant-rate client; the primary region's endpoint fails at the fault and \
         recovers at the restore. Errors are requests without a 2xx after the fault; \
         time to full failover runs from the fault until every later request is served \
         by the failover region; time to fail back runs from the restore until the \
         primary serves again (`never`: not within the run). The worst latency \
         after the fault is split out for its first 100 ms (the failover itself) and \
         shown beside the worst before the fault (the machine's ordinary tail).\n"
    );
    let _ = writeln!(
        out,
        "| system | fault | rate (rps) | requests | errors after fault | time to full failover | worst latency after fault | … in its first 100 ms | … before the fault | time to fail back |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            fault_name(r.fault),
            r.rps,
            r.requests,
            r.errors_after_fault,
            opt_ms(r.time_to_full_failover_ms),
            ms(r.worst_latency_after_fault_ms),
            ms(r.worst_latency_first_100ms_ms),
            ms(r.worst_latency_before_fault_ms),
            opt_ms(r.time_to_fail_back_ms),
        );
    }
    out.push('\n');
}

/// Under the ratios against direct, when the fast path ran.
const FAST_PATH_NOTE: &str = "redirector-fast-path has no process in the path: its \
CPU/1000 rps is its daemon's (publishing slots, reading connect outcomes), while connect4 \
and sock_ops run inside the client's `connect()` and are charged to the client, so its whole \
cost shows only in machine CPU ÷ direct-beside. Its baseline is direct-beside: its \
connections reach the same upstream process (east :80, on the client's core) with nothing in \
between, while direct-sut-core's upstream sits on the proxies' core, which the fast path \
never touches.";

fn fail_open_table(report: &BenchReport, out: &mut String) {
    if report.fail_open.is_empty() {
        return;
    }
    let mut runs: Vec<&FailOpenRun> = report.fail_open.iter().collect();
    runs.sort_by_key(|r| r.system);
    let _ = writeln!(out, "## Fail-open (kill -9 of the daemon)\n");
    let _ = writeln!(
        out,
        "A constant-rate client opening a new connection per request to the VIP; the \
         daemon gets SIGKILL at the kill, and a new daemon is started on the same pinned \
         state at the restart (a takeover). Failed connects: the app's `connect()` failed; \
         broken in flight: requests whose `connect()` was sent to the proxy before the kill \
         and got no answer (nothing can save those); broken after the kill: requests whose \
         `connect()` came after the kill and was still sent to the killed proxy (the kernel \
         closes a killed process's sockets only as it tears it down, and until then connect4 \
         sees a listener unless the daemon's death watch marked it dying), left without an \
         answer; other errors: every other request without a \
         2xx. The target counts all but the broken in flight. Served while \
         down: 2xx answers to requests sent between the kill and the new daemon's ready, \
         by path (`kernel`: connect4 sent the connect straight to the endpoint; `proxy`: a \
         daemon's proxy carried it) and upstream. Envoy, nginx and HAProxy have no such \
         mode (with their process gone nothing answers) and are not run.\n"
    );
    let _ = writeln!(
        out,
        "| system | rate (rps) | requests | failed connects | broken in flight | broken after the kill | other errors | served while down | kill → restart | restart → ready | restart → first answer through the proxy | worst latency after the kill | … before the kill |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|");
    for r in runs {
        let served = if r.served_while_down.is_empty() {
            "none".to_string()
        } else {
            r.served_while_down
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let proxy = match (r.restart_to_proxy_ms, r.system) {
            (Some(t), _) => ms(t),
            (None, SystemId::RedirectorFastPath) => "– (kernel path)".into(),
            (None, _) => "never".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {served} | {} | {} | {proxy} | {} | {} |",
            r.system,
            r.rps,
            r.requests,
            r.failed_connects,
            r.broken_in_flight,
            r.broken_after_kill,
            r.other_errors,
            ms(r.restart_at_ms - r.kill_at_ms),
            ms(r.ready_at_ms - r.restart_at_ms),
            ms(r.worst_latency_after_kill_ms),
            ms(r.worst_latency_before_kill_ms),
        );
    }
    out.push('\n');
}

fn targets_table(report: &BenchReport, out: &mut String) {
    let ts = targets(report);
    let pass = ts.iter().filter(|t| t.verdict == Verdict::Pass).count();
    let miss = ts.iter().filter(|t| t.verdict == Verdict::Miss).count();
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "{pass} pass, {miss} miss, {} n/a. Comparisons use the ratios above (same run, \
         per repetition).\n",
        ts.len() - pass - miss
    );
    let _ = writeln!(out, "| target | where | measured | result |");
    let _ = writeln!(out, "|---|---|---|---|");
    for t in &ts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.target,
            t.scope,
            t.measured,
            t.verdict.label()
        );
    }
    out.push('\n');
}

fn noise_line(report: &BenchReport, aggs: &[Aggregate], out: &mut String) {
    let total = report.cells.len();
    let noisy = report.cells.iter().filter(|c| c.noisy).count();
    let (steal, foreign) = report
        .cells
        .iter()
        .map(noise_shares)
        .fold((0.0f64, 0.0f64), |(s, f), (s1, f1)| (s.max(s1), f.max(f1)));
    let dropped: usize = aggs
        .iter()
        .filter(|a| !a.all_noisy)
        .map(|a| a.reps_noisy as usize)
        .sum();
    let _ = write!(
        out,
        "Noise: {noisy} of {total} repetitions noisy, {dropped} dropped from medians \
         (threshold {}% of one core); worst steal {}% and worst foreign CPU {}% of one core.",
        sig3(report.settings.noise_threshold * 100.0),
        sig3(steal * 100.0),
        sig3(foreign * 100.0),
    );
    let kept: Vec<String> = aggs
        .iter()
        .filter(|a| a.all_noisy)
        .map(|a| format!("{} in {}", a.system, a.workload))
        .collect();
    if !kept.is_empty() {
        let _ = write!(
            out,
            " Every repetition was noisy, so all were used, for: {}.",
            kept.join("; ")
        );
    }
    out.push('\n');
}

// ----------------------------------------------------------------- files

/// The files `write` produced (the dated ones; `latest.*` are copies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub plot: PathBuf,
}

/// Writes `<UTC date-time>.{json,md,svg}` into `dir` (created if missing)
/// and copies them to `latest.{json,md,svg}`. The JSON comes first, so the
/// raw numbers survive a failure to render the rest.
pub(crate) fn write(report: &BenchReport, dir: &Path) -> Result<Written> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = file_stem(report);
    let mut stem = base.clone();
    let mut n = 1;
    while ["json", "md", "svg"]
        .iter()
        .any(|ext| dir.join(format!("{stem}.{ext}")).exists())
    {
        n += 1;
        stem = format!("{base}-{n}");
    }
    let written = Written {
        json: dir.join(format!("{stem}.json")),
        markdown: dir.join(format!("{stem}.md")),
        plot: dir.join(format!("{stem}.svg")),
    };
    let json = serde_json::to_string_pretty(report).context("serializing the report")? + "\n";
    write_file(&written.json, &json)?;
    let md = markdown_with_plot(report, Some(&format!("{stem}.svg")));
    write_file(&written.markdown, &md)?;
    plot::svg(report, &written.plot)
        .with_context(|| format!("plotting {}", written.plot.display()))?;
    for (src, name) in [
        (&written.json, "latest.json"),
        (&written.markdown, "latest.md"),
        (&written.plot, "latest.svg"),
    ] {
        let dst = dir.join(name);
        fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(written)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `2026-11-26T21-41-13Z` from the report's RFC 3339 UTC date (colons
/// are not allowed in file names everywhere), or from the clock when the
/// date is missing or malformed.
fn file_stem(report: &BenchReport) -> String {
    let d = report.machine.date.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let ok = d.len() >= shape.len()
        && shape.iter().zip(d).all(|(s, c)| match s {
            b'd' => c.is_ascii_digit(),
            b'T' => *c == b'T' || *c == b't' || *c == b' ',
            s => s == c,
        });
    if ok {
        let date = &report.machine.date;
        return format!("{}T{}Z", &date[..10], date[11..19].replace(':', "-"));
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_stem(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH-MM-SSZ` (civil-from-days,
/// proleptic Gregorian).
fn utc_stem(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
