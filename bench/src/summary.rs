//! What one `BenchReport` says, as numbers: per-cell medians and spread,
//! and ratios between systems. The markdown, the targets and the plot all
//! read these; none of them computes its own.
//!
//! Choices, and why:
//! - Spread is min–max over the repetitions used, not an IQR: with the
//!   five repetitions a full run makes, quartiles are just the 2nd and 4th
//!   values and hide the outliers a reader should see.
//! - Noisy repetitions (steal or foreign CPU above the threshold) are
//!   counted but left out of medians, since the machine, not the system,
//!   set those numbers. If every repetition of a cell is noisy they are
//!   used anyway and the cell is flagged, rather than showing nothing.
//! - Ratios are taken within the same run and the same repetition: the
//!   harness interleaves systems, so repetition `r` of two systems ran
//!   back to back, and the median of per-repetition ratios cancels slow
//!   drift (thermal, neighbours) that a ratio of medians would keep.
//! - Peak RSS is the maximum over every repetition, noisy or not: CPU
//!   noise does not inflate memory, and the target is an upper bound.
//! - Upstream TLS handshakes are per 1000 requests the upstreams answered
//!   (not the client's count), so each run's ratio is of two counters read
//!   at the same instants; only handshakes of connections that carried
//!   requests count, so health checks (HAProxy's run whatever system is
//!   measured) are not charged to the system. They are left out and
//!   counted apart, in the note under the report's table.
//! - Everything here is a pure function of the report, so it is unit-tested
//!   with a synthetic report (`report/tests.rs`) and can be re-run on an old
//!   JSON file.

use std::collections::BTreeMap;

use crate::model::{BenchReport, CellRun, Footprint, Load, PodsReport, SystemId, Workload};

/// Median and spread (min–max) of one figure over the repetitions used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// None when there are no values.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One (system, workload) cell over its repetitions.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Aggregate {
    pub system: SystemId,
    pub workload: Workload,
    /// Repetitions run.
    pub reps_total: u32,
    /// Repetitions the medians are taken over.
    pub reps_used: u32,
    /// Repetitions marked noisy (dropped, unless `all_noisy`).
    pub reps_noisy: u32,
    /// Every repetition was noisy, so they were used anyway.
    pub all_noisy: bool,
    /// Achieved requests per second.
    pub rps: Stat,
    pub p50_ms: Stat,
    pub p99_ms: Stat,
    pub p999_ms: Stat,
    /// Completed requests, summed over the repetitions used.
    pub requests: u64,
    /// Transport errors plus non-2xx, summed over the repetitions used.
    pub errors: u64,
    /// CPU of the system under test, vCPU per 1000 rps (None for direct).
    pub cpu_per_krps: Option<Stat>,
    /// Busy share of the whole machine (all cores), 0..=1.
    pub machine_cpu_share: Option<Stat>,
    /// Peak RSS of the system under test since it started (VmHWM), max
    /// over all repetitions, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Largest RSS sampled while the load ran, max over all repetitions, KiB.
    pub rss_under_load_kib: Option<u64>,
    /// Full upstream TLS handshakes per 1000 requests (TLS cells).
    pub tls_full_per_krequests: Option<Stat>,
    /// Resumed upstream TLS handshakes per 1000 requests (TLS cells).
    pub tls_resumed_per_krequests: Option<Stat>,
}

impl Aggregate {
    fn of(report: &BenchReport, runs: &[&CellRun]) -> Option<Aggregate> {
        let first = runs.first()?;
        let clean: Vec<&CellRun> = runs.iter().copied().filter(|r| !r.noisy).collect();
        let all_noisy = clean.is_empty();
        let used = if all_noisy { runs.to_vec() } else { clean };
        let cpus = f64::from(report.machine.cpus);
        Some(Aggregate {
            system: first.system,
            workload: first.workload,
            reps_total: count(runs.len()),
            reps_used: count(used.len()),
            reps_noisy: count(runs.iter().filter(|r| r.noisy).count()),
            all_noisy,
            rps: Stat::of(used.iter().map(|r| r.load.rps))?,
            p50_ms: Stat::of(used.iter().map(|r| r.load.p50_ms))?,
            p99_ms: Stat::of(used.iter().map(|r| r.load.p99_ms))?,
            p999_ms: Stat::of(used.iter().map(|r| r.load.p999_ms))?,
            requests: used.iter().map(|r| r.load.requests).sum(),
            errors: used.iter().map(|r| r.load.errors).sum(),
            cpu_per_krps: Stat::of(used.iter().filter_map(|r| cpu_per_krps(r))),
            machine_cpu_share: Stat::of(
                used.iter()
                    .filter(|r| cpus > 0.0 && r.sample.wall_secs > 0.0)
                    .map(|r| r.sample.machine_busy_secs / r.sample.wall_secs / cpus),
            ),
            peak_rss_kib: runs.iter().filter_map(|r| r.sample.sut_peak_rss_kib).max(),
            rss_under_load_kib: runs.iter().filter_map(|r| r.sample.sut_rss_kib).max(),
            tls_full_per_krequests: Stat::of(handshakes(&used).map(|(full, _)| full)),
            tls_resumed_per_krequests: Stat::of(handshakes(&used).map(|(_, resumed)| resumed)),
        })
    }
}

/// (full, resumed) upstream TLS handshakes per 1000 requests of each run
/// that counted them.
fn handshakes<'a>(runs: &'a [&'a CellRun]) -> impl Iterator<Item = (f64, f64)> + 'a {
    runs.iter()
        .filter_map(|r| r.upstream_tls.as_ref()?.per_krequests())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn cpu_per_krps(run: &CellRun) -> Option<f64> {
    run.sample.cpu_per_krps(run.load.rps)
}

/// Whole-machine busy CPU per 1000 rps: the only CPU figure the direct
/// rows have, so the one CPU ratio against direct is taken on it.
fn machine_cpu_per_krps(run: &CellRun) -> Option<f64> {
    let s = &run.sample;
    (run.load.rps > 0.0 && s.wall_secs > 0.0)
        .then(|| s.machine_busy_secs / s.wall_secs / (run.load.rps / 1000.0))
}

/// Repetitions grouped by (workload, system), both in their natural order
/// (`SystemId`'s order is `SystemId::ALL`).
fn cells_by_key(report: &BenchReport) -> BTreeMap<(Workload, SystemId), Vec<&CellRun>> {
    let mut map: BTreeMap<_, Vec<&CellRun>> = BTreeMap::new();
    for run in &report.cells {
        map.entry((run.workload, run.system)).or_default().push(run);
    }
    for runs in map.values_mut() {
        runs.sort_by_key(|r| r.rep);
    }
    map
}

/// One `Aggregate` per (system, workload) that has runs, ordered by
/// workload, then system in `SystemId::ALL` order.
pub(crate) fn aggregate(report: &BenchReport) -> Vec<Aggregate> {
    cells_by_key(report)
        .values()
        .filter_map(|runs| Aggregate::of(report, runs))
        .collect()
}

/// `system` ÷ `baseline` for one workload: medians of per-repetition
/// ratios, pairing repetitions by number.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ratio {
    pub workload: Workload,
    pub system: SystemId,
    pub baseline: SystemId,
    /// Repetition pairs the medians are over; 0 means no repetition
    /// numbers matched and the figures are ratios of medians instead.
    pub pairs: u32,
    /// No pair was free of noise, so noisy pairs were used.
    pub noisy: bool,
    pub rps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    /// CPU of the system under test per 1000 rps (None against direct).
    pub cpu_per_krps: Option<f64>,
    /// Whole-machine busy CPU per 1000 rps.
    pub machine_cpu_per_krps: Option<f64>,
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// `system` ÷ `baseline` in `workload`, None when either has no runs.
pub(crate) fn ratio(
    report: &BenchReport,
    workload: Workload,
    system: SystemId,
    baseline: SystemId,
) -> Option<Ratio> {
    let by_key = cells_by_key(report);
    ratio_in(report, &by_key, workload, system, baseline)
}

fn ratio_in(
    report: &BenchReport,
    by_key: &BTreeMap<(Workload, SystemId), Vec<&CellRun>>,
    workload: Workload,
    system: SystemId,
    baseline: SystemId,
) -> Option<Ratio> {
    let num = by_key.get(&(workload, system))?;
    let den = by_key.get(&(workload, baseline))?;
    let all_pairs: Vec<(&CellRun, &CellRun)> = num
        .iter()
        .filter_map(|a| den.iter().find(|b| b.rep == a.rep).map(|b| (*a, *b)))
        .collect();
    let clean: Vec<_> = all_pairs
        .iter()
        .copied()
        .filter(|(a, b)| !a.noisy && !b.noisy)
        .collect();
    let noisy = clean.is_empty() && !all_pairs.is_empty();
    let pairs = if noisy { all_pairs } else { clean };
    let mut r = Ratio {
        workload,
        system,
        baseline,
        pairs: count(pairs.len()),
        noisy,
        rps: None,
        p50: None,
        p99: None,
        p999: None,
        cpu_per_krps: None,
        machine_cpu_per_krps: None,
    };
    if pairs.is_empty() {
        // Repetition numbers did not line up: fall back to medians.
        let a = Aggregate::of(report, num)?;
        let b = Aggregate::of(report, den)?;
        r.noisy = a.all_noisy || b.all_noisy;
        r.rps = div(Some(a.rps.median), Some(b.rps.median));
        r.p50 = div(Some(a.p50_ms.median), Some(b.p50_ms.median));
        r.p99 = div(Some(a.p99_ms.median), Some(b.p99_ms.median));
        r.p999 = div(Some(a.p999_ms.median), Some(b.p999_ms.median));
        r.cpu_per_krps = div(
            a.cpu_per_krps.map(|s| s.median),
            b.cpu_per_krps.map(|s| s.median),
        );
        let mcpu = |runs: &[&CellRun]| {
            Stat::of(runs.iter().filter_map(|r| machine_cpu_per_krps(r))).map(|s| s.median)
        };
        r.machine_cpu_per_krps = div(mcpu(num), mcpu(den));
        return Some(r);
    }
    let per_pair = |f: &dyn Fn(&CellRun) -> Option<f64>| {
        Stat::of(pairs.iter().filter_map(|(a, b)| div(f(a), f(b)))).map(|s| s.median)
    };
    r.rps = per_pair(&|c| Some(c.load.rps));
    r.p50 = per_pair(&|c| Some(c.load.p50_ms));
    r.p99 = per_pair(&|c| Some(c.load.p99_ms));
    r.p999 = per_pair(&|c| Some(c.load.p999_ms));
    r.cpu_per_krps = per_pair(&cpu_per_krps);
    r.machine_cpu_per_krps = per_pair(&machine_cpu_per_krps);
    Some(r)
}

/// The peers the redirector is compared with.
pub(crate) const PEERS: [SystemId; 3] = [SystemId::Envoy, SystemId::Nginx, SystemId::Haproxy];

/// Per workload: every system ÷ `direct-beside`, every proxy ÷
/// `direct-sut-core` (the fair latency baseline: its upstream shares the
/// proxies' core), the redirector ÷ each peer, the redirector ÷
/// `redirector-baseline` (this build ÷ the other one), and
/// `redirector-pod` ÷ the redirector and ÷ nginx. Workloads in order,
/// then baseline, then system.
pub(crate) fn ratios(report: &BenchReport) -> Vec<Ratio> {
    let by_key = cells_by_key(report);
    let mut workloads: Vec<Workload> = by_key.keys().map(|(w, _)| *w).collect();
    workloads.dedup();
    let mut out = Vec::new();
    for w in workloads {
        let mut push = |system, baseline| {
            if let Some(r) = ratio_in(report, &by_key, w, system, baseline) {
                out.push(r);
            }
        };
        for s in SystemId::ALL {
            if s != SystemId::DirectBeside {
                push(s, SystemId::DirectBeside);
            }
        }
        for s in SystemId::ALL.into_iter().filter(|s| s.is_proxy()) {
            push(s, SystemId::DirectSutCore);
        }
        for peer in PEERS {
            push(SystemId::Redirector, peer);
        }
        push(SystemId::Redirector, SystemId::RedirectorBaseline);
        // A client in a pod against one on the node (the same daemon),
        // and against the reference peer.
        push(SystemId::RedirectorPod, SystemId::Redirector);
        push(SystemId::RedirectorPod, SystemId::Nginx);
    }
    out
}

/// Open-loop rate of a workload, for picking the highest one.
pub(crate) fn open_rps(w: &Workload) -> Option<u32> {
    match w.load {
        Load::OpenLoop { rps } => Some(rps),
        Load::ClosedLoop { .. } => None,
    }
}

/// p50, p99 and the largest of some values, nearest-rank (with fewer than
/// 100 values p99 is the largest but one or the largest itself).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    /// None when there are no values.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Spread {
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// New pods' starts of one kind: with the redirector's CNI plugin in the
/// chain, or found by the daemon on its own.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Starts {
    pub plugin: bool,
    pub pods: u32,
    /// The CNI ADD.
    pub add_ms: Spread,
    /// From the start of the ADD to the app's first `connect()`.
    pub first_connect_ms: Spread,
    /// From the start of the ADD to the first `connect()` the daemon served.
    pub served_ms: Spread,
    /// From the app's first `connect()` to the first one served: how long
    /// an app that connects at once goes around the daemon.
    pub waited_ms: Spread,
    /// The daemon's own set-up of the pod.
    pub setup_ms: Spread,
    /// Connects the kernel sent straight to an endpoint before the first
    /// served one, summed, and the pods that had any.
    pub kernel_connects: u64,
    pub pods_with_kernel_connects: u32,
    /// Connects that failed before the first served one, summed.
    pub failed_connects: u64,
    /// How the daemon lists them (`cni`, `found`), counted.
    pub sources: BTreeMap<String, u32>,
}

/// The starts with the plugin, then without; a kind with no pod is left out.
pub(crate) fn pod_starts(pods: &PodsReport) -> Vec<Starts> {
    [true, false]
        .into_iter()
        .filter_map(|plugin| {
            let starts: Vec<_> = pods.starts.iter().filter(|s| s.plugin == plugin).collect();
            let spread = |f: &dyn Fn(&crate::model::PodStart) -> f64| {
                Spread::of(starts.iter().map(|s| f(s)))
            };
            let mut sources = BTreeMap::new();
            for s in &starts {
                *sources.entry(s.source.clone()).or_default() += 1;
            }
            Some(Starts {
                plugin,
                pods: count(starts.len()),
                add_ms: spread(&|s| s.add_ms)?,
                first_connect_ms: spread(&|s| s.first_connect_ms)?,
                served_ms: spread(&|s| s.served_ms)?,
                waited_ms: spread(&|s| s.served_ms - s.first_connect_ms)?,
                setup_ms: spread(&|s| s.setup_ms)?,
                kernel_connects: starts.iter().map(|s| u64::from(s.kernel_connects)).sum(),
                pods_with_kernel_connects: count(
                    starts.iter().filter(|s| s.kernel_connects > 0).count(),
                ),
                failed_connects: starts.iter().map(|s| u64::from(s.failed_connects)).sum(),
                sources,
            })
        })
        .collect()
}

/// What each pod added to the daemon's footprint between two readings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PodCost {
    /// Pods served at the two readings.
    pub from: u32,
    pub to: u32,
    pub rss_kib: f64,
    pub fds: f64,
    pub sockets: f64,
    pub bpf_maps: f64,
    pub bpf_map_kib: f64,
}

impl PodCost {
    /// `b` − `a`, per pod; None without pods between them.
    pub(crate) fn between(a: &Footprint, b: &Footprint) -> Option<PodCost> {
        let pods = f64::from(b.pods.checked_sub(a.pods).filter(|&n| n > 0)?);
        let per = |x: u64, y: u64| (y as f64 - x as f64) / pods;
        Some(PodCost {
            from: a.pods,
            to: b.pods,
            rss_kib: per(a.rss_kib, b.rss_kib),
            fds: per(a.fds, b.fds),
            sockets: per(a.sockets, b.sockets),
            bpf_maps: per(a.bpf_maps, b.bpf_maps),
            bpf_map_kib: per(a.bpf_map_kib, b.bpf_map_kib),
        })
    }
}

/// Per pod from none to each step, then between consecutive steps (what
/// the later pods added).
pub(crate) fn pod_costs(f: &[Footprint]) -> Vec<PodCost> {
    let Some(none) = f.first() else {
        return Vec::new();
    };
    let from_none = f.iter().skip(1).filter_map(|b| PodCost::between(none, b));
    let marginal = f
        .windows(2)
        .skip(1)
        .filter_map(|w| PodCost::between(&w[0], &w[1]));
    from_none.chain(marginal).collect()
}
