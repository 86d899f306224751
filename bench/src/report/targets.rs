//! The project's performance targets, checked against one run. Each check
//! shows the measured value next to its verdict so a miss is a number to
//! look at, not just a red mark; a check whose cells were not run (or
//! cannot run yet) is `n/a` with the reason, never silently left out.
//!
//! Comparisons between systems use the same-run, per-repetition ratios of
//! `summary::ratio`, so drift of the machine during the run cancels out.

use crate::{
    format::{mib, ms, sig3},
    model::{BenchReport, Conn, FailOpenRun, Fault, Load, SystemId, Upstream, Workload},
    summary::{Aggregate, Ratio, aggregate, ratio},
};

/// Redirector peak RSS must stay below this.
pub(crate) const RSS_LIMIT_KIB: u64 = 12 * 1024;
/// Worst latency after a 503 or a killed primary must stay below this.
pub(crate) const FAILOVER_WORST_MS: f64 = 2.0;
/// The kernel fast path must be within this factor of direct access.
pub(crate) const FAST_PATH_FACTOR: f64 = 1.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Miss,
    /// Not measured in this run (system not available, workload not run).
    NotAvailable,
}

impl Verdict {
    /// As shown in the markdown table (a miss stands out).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "**miss**",
            Verdict::NotAvailable => "n/a",
        }
    }

    fn of(pass: bool) -> Verdict {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

/// One row of the targets table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Target {
    /// What is promised, e.g. "p99: redirector ≤ nginx".
    pub target: String,
    /// Workload or fault the row is about.
    pub scope: String,
    pub measured: String,
    pub verdict: Verdict,
}

#[derive(Clone, Copy)]
enum Metric {
    Cpu,
    P50,
    P99,
}

impl Metric {
    fn of_ratio(self, r: &Ratio) -> Option<f64> {
        match self {
            Metric::Cpu => r.cpu_per_krps,
            Metric::P50 => r.p50,
            Metric::P99 => r.p99,
        }
    }

    fn of_agg(self, a: &Aggregate) -> Option<f64> {
        match self {
            Metric::Cpu => a.cpu_per_krps.map(|s| s.median),
            Metric::P50 => Some(a.p50_ms.median),
            Metric::P99 => Some(a.p99_ms.median),
        }
    }

    fn show(self, x: f64) -> String {
        match self {
            Metric::Cpu => format!("{x:.3} vCPU"),
            Metric::P50 | Metric::P99 => ms(x),
        }
    }
}

struct Ctx<'a> {
    report: &'a BenchReport,
    aggs: Vec<Aggregate>,
    workloads: Vec<Workload>,
}

impl Ctx<'_> {
    fn agg(&self, w: Workload, s: SystemId) -> Option<&Aggregate> {
        self.aggs.iter().find(|a| a.workload == w && a.system == s)
    }

    fn has_cells(&self, s: SystemId) -> bool {
        self.aggs.iter().any(|a| a.system == s)
    }

    /// Why `s` has no numbers (in `w`, if given).
    fn why_missing(&self, s: SystemId, w: Option<Workload>) -> String {
        self.report
            .not_available
            .iter()
            .find(|n| n.system == s && w.is_none_or(|w| n.workload == w))
            .map_or_else(|| format!("{s} not run"), |n| format!("{s}: {}", n.reason))
    }

    /// `system` ÷ `base` on `metric` must be ≤ `limit`.
    fn compare(
        &self,
        target: &str,
        w: Workload,
        system: SystemId,
        base: SystemId,
        metric: Metric,
        limit: f64,
    ) -> Target {
        let row = |measured: String, verdict| Target {
            target: target.to_string(),
            scope: w.key(),
            measured,
            verdict,
        };
        let Some(a) = self.agg(w, system) else {
            return row(self.why_missing(system, Some(w)), Verdict::NotAvailable);
        };
        let Some(b) = self.agg(w, base) else {
            return row(self.why_missing(base, Some(w)), Verdict::NotAvailable);
        };
        let r = ratio(self.report, w, system, base);
        let (Some(x), Some(y), Some(q)) = (
            metric.of_agg(a),
            metric.of_agg(b),
            r.as_ref().and_then(|r| metric.of_ratio(r)),
        ) else {
            return row("no figure to compare".into(), Verdict::NotAvailable);
        };
        let noisy = a.all_noisy || b.all_noisy || r.as_ref().is_some_and(|r| r.noisy);
        let measured = format!(
            "{system} {}, {base} {}; ratio {}{}",
            metric.show(x),
            metric.show(y),
            sig3(q),
            if noisy { " (noisy)" } else { "" }
        );
        row(measured, Verdict::of(q <= limit))
    }

    /// One row per workload matching `pick`, or one n/a row if none does.
    fn per_workload(
        &self,
        out: &mut Vec<Target>,
        target: &str,
        what: &str,
        pick: impl Fn(&Workload) -> bool,
        check: impl Fn(Workload) -> Target,
    ) {
        let ws: Vec<Workload> = self.workloads.iter().copied().filter(|w| pick(w)).collect();
        if ws.is_empty() {
            out.push(Target {
                target: target.into(),
                scope: "–".into(),
                measured: format!("no {what} workload in this run"),
                verdict: Verdict::NotAvailable,
            });
        }
        out.extend(ws.into_iter().map(check));
    }
}

fn is_open(w: &Workload) -> bool {
    matches!(w.load, Load::OpenLoop { .. })
}

/// Every target, in the order of the issue.
pub(crate) fn targets(report: &BenchReport) -> Vec<Target> {
    let aggs = aggregate(report);
    let mut workloads: Vec<Workload> = aggs
        .iter()
        .map(|a| a.workload)
        .chain(report.not_available.iter().map(|n| n.workload))
        .collect();
    workloads.sort();
    workloads.dedup();
    let cx = Ctx {
        report,
        aggs,
        workloads,
    };
    let mut out = Vec::new();
    let (r, nginx) = (SystemId::Redirector, SystemId::Nginx);

    for (up, name) in [(Upstream::Plain, "plain"), (Upstream::Tls, "TLS")] {
        let t = format!("CPU/1000 rps: redirector ≤ nginx (keep-alive, {name})");
        cx.per_workload(
            &mut out,
            &t,
            &format!("keep-alive {name}"),
            |w| w.conn == Conn::KeepAlive && w.upstream == up,
            |w| cx.compare(&t, w, r, nginx, Metric::Cpu, 1.0),
        );
    }
    let t = "p99: redirector ≤ nginx (keep-alive, open loop)";
    cx.per_workload(
        &mut out,
        t,
        "keep-alive open-loop",
        |w| w.conn == Conn::KeepAlive && is_open(w),
        |w| cx.compare(t, w, r, nginx, Metric::P99, 1.0),
    );
    let t = "p50: redirector ≤ nginx (new connection per request)";
    cx.per_workload(
        &mut out,
        t,
        "new-connection",
        |w| w.conn == Conn::NewPerRequest,
        |w| cx.compare(t, w, r, nginx, Metric::P50, 1.0),
    );
    fast_path(&cx, &mut out);
    rss(&cx, &mut out);
    failover(report, &mut out);
    fail_open(report, &mut out);
    out
}

/// The kernel fast path within 5% of direct access, on every figure the
/// two share: p50, p99, whole-machine CPU per 1000 rps (connect4's cost is
/// charged to the client, so only the machine's CPU shows it), and rps
/// under closed loop, where rate is the outcome. Against direct-beside:
/// the fast path's connections go to the same upstream process, on the
/// client's core, with nothing in between. Plain workloads only; the fast
/// path cannot originate TLS, by design.
fn fast_path(cx: &Ctx, out: &mut Vec<Target>) {
    let (fp, direct) = (SystemId::RedirectorFastPath, SystemId::DirectBeside);
    let t = "redirector-fast-path within 5% of direct-beside";
    if !cx.has_cells(fp) {
        out.push(Target {
            target: t.into(),
            scope: "all workloads".into(),
            measured: cx.why_missing(fp, None),
            verdict: Verdict::NotAvailable,
        });
        return;
    }
    cx.per_workload(
        out,
        t,
        "plain",
        |w| {
            w.upstream == Upstream::Plain
                && (cx.agg(*w, direct).is_some() || cx.agg(*w, fp).is_some())
        },
        |w| {
            let mut row = Target {
                target: t.into(),
                scope: w.key(),
                measured: String::new(),
                verdict: Verdict::NotAvailable,
            };
            for s in [fp, direct] {
                if cx.agg(w, s).is_none() {
                    row.measured = cx.why_missing(s, Some(w));
                    return row;
                }
            }
            let Some(q) = ratio(cx.report, w, fp, direct) else {
                row.measured = "no figure to compare".into();
                return row;
            };
            let mut parts = vec![
                ("p50", q.p50, false),
                ("p99", q.p99, false),
                ("machine CPU/1000 rps", q.machine_cpu_per_krps, false),
            ];
            if !is_open(&w) {
                parts.push(("rps", q.rps, true));
            }
            let mut pass = true;
            let mut shown = Vec::new();
            for (name, v, higher_is_better) in parts {
                let Some(v) = v else {
                    row.measured = format!("no {name} to compare");
                    return row;
                };
                pass &= if higher_is_better {
                    v >= 1.0 / FAST_PATH_FACTOR
                } else {
                    v <= FAST_PATH_FACTOR
                };
                shown.push(format!("{name} ×{}", sig3(v)));
            }
            row.measured = format!(
                "{}{}",
                shown.join(", "),
                if q.noisy { " (noisy)" } else { "" }
            );
            row.verdict = Verdict::of(pass);
            row
        },
    );
}

/// "RSS under 12 MiB at these loads": the largest RSS sampled while the
/// loads ran. The peak since start (VmHWM) is shown beside it; it includes
/// start-up transients that no load causes.
fn rss(cx: &Ctx, out: &mut Vec<Target>) {
    let r = SystemId::Redirector;
    let mine = || cx.aggs.iter().filter(|a| a.system == r);
    let under_load = mine().filter_map(|a| a.rss_under_load_kib).max();
    let peak = mine().filter_map(|a| a.peak_rss_kib).max();
    let target = "redirector RSS under load < 12 MiB".to_string();
    let scope = "all workloads".to_string();
    out.push(match under_load {
        Some(kib) => Target {
            target,
            scope,
            measured: match peak {
                Some(p) => format!("{} MiB (peak since start {} MiB)", mib(kib), mib(p)),
                None => format!("{} MiB", mib(kib)),
            },
            verdict: Verdict::of(kib < RSS_LIMIT_KIB),
        },
        None => Target {
            target,
            scope,
            measured: if cx.has_cells(r) {
                "RSS not sampled".into()
            } else {
                cx.why_missing(r, None)
            },
            verdict: Verdict::NotAvailable,
        },
    });
}

fn failover(report: &BenchReport, out: &mut Vec<Target>) {
    let faults = [
        (Fault::Status503, "503", true),
        (Fault::Killed, "killed", true),
        (Fault::BlackHoled, "black-holed", false),
    ];
    for (fault, name, _) in faults {
        let runs: Vec<_> = report
            .failover
            .iter()
            .filter(|f| f.system == SystemId::Redirector && f.fault == fault)
            .collect();
        let (measured, verdict) = if runs.is_empty() {
            ("not run".to_string(), Verdict::NotAvailable)
        } else {
            let errors: u64 = runs.iter().map(|f| f.errors_after_fault).sum();
            let requests: u64 = runs.iter().map(|f| f.requests).sum();
            (
                format!("{errors} errors of {requests} requests"),
                Verdict::of(errors == 0),
            )
        };
        out.push(Target {
            target: "failover: no client-visible errors".into(),
            scope: format!("redirector, {name}"),
            measured,
            verdict,
        });
    }
    for (fault, name, latency_bound) in faults {
        if !latency_bound {
            continue;
        }
        let run = report
            .failover
            .iter()
            .filter(|f| f.system == SystemId::Redirector && f.fault == fault)
            .max_by(|a, b| {
                a.worst_latency_after_fault_ms
                    .total_cmp(&b.worst_latency_after_fault_ms)
            });
        let worst = run.map(|f| f.worst_latency_after_fault_ms);
        out.push(Target {
            target: "failover: worst latency after the fault < 2 ms".into(),
            scope: format!("redirector, {name}"),
            measured: run.map_or_else(
                || "not run".into(),
                |f| {
                    format!(
                        "{} (first 100 ms {}; before the fault {})",
                        ms(f.worst_latency_after_fault_ms),
                        ms(f.worst_latency_first_100ms_ms),
                        ms(f.worst_latency_before_fault_ms)
                    )
                },
            ),
            verdict: worst.map_or(Verdict::NotAvailable, |w| {
                Verdict::of(w < FAILOVER_WORST_MS)
            }),
        });
    }
}

/// "Zero new-connection errors across kill -9 and restart", for the
/// redirector and its fast path. In-flight connections the killed proxy
/// was carrying are shown, not counted.
fn fail_open(report: &BenchReport, out: &mut Vec<Target>) {
    for system in [SystemId::Redirector, SystemId::RedirectorFastPath] {
        let runs: Vec<_> = report
            .fail_open
            .iter()
            .filter(|f| f.system == system)
            .collect();
        let (measured, verdict) = if runs.is_empty() {
            ("not run".to_string(), Verdict::NotAvailable)
        } else {
            let sum = |f: fn(&FailOpenRun) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
            let errors = sum(FailOpenRun::new_connection_errors);
            (
                format!(
                    "{errors} of {} requests ({} failed connects, {} broken after the kill, {} other); {} broken in flight, not counted",
                    sum(|r| r.requests),
                    sum(|r| r.failed_connects),
                    sum(|r| r.broken_after_kill),
                    sum(|r| r.other_errors),
                    sum(|r| r.broken_in_flight),
                ),
                Verdict::of(errors == 0),
            )
        };
        out.push(Target {
            target: "fail-open: zero new-connection errors across kill -9 and restart".into(),
            scope: system.key().into(),
            measured,
            verdict,
        });
    }
}
