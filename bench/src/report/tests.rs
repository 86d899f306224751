//! The report over the synthetic run of `fixture.rs`, whose medians and
//! ratios are known in closed form.

use std::{fs, path::PathBuf};

use super::{targets::Target, *};
use crate::{
    fixture::*,
    model::{FAST_PATH_NO_TLS, NotAvailable, UpstreamTls},
    summary::{ratio, ratios},
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[track_caller]
fn assert_close(a: f64, b: f64) {
    assert!(close(a, b), "{a} != {b}");
}

fn agg(aggs: &[Aggregate], s: SystemId, w: Workload) -> &Aggregate {
    aggs.iter()
        .find(|a| a.system == s && a.workload == w)
        .unwrap_or_else(|| panic!("no aggregate for {s} {w}"))
}

#[test]
fn stat_median_and_spread() {
    assert_eq!(Stat::of([]), None);
    let s = Stat::of([3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    let s = Stat::of([4.0, 1.0, 3.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
}

#[test]
fn three_significant_digits() {
    for (x, s) in [
        (0.0, "0"),
        (0.0123456, "0.0123"),
        (0.1234, "0.123"),
        (1.0, "1.00"),
        (9.996, "10.0"),
        (12.345, "12.3"),
        (99.96, "100"),
        (123.4, "123"),
        (4321.0, "4321"),
        (f64::NAN, "n/a"),
    ] {
        assert_eq!(sig3(x), s, "{x}");
    }
}

#[test]
fn medians_exclude_the_noisy_repetition() {
    let r = synthetic();
    let aggs = aggregate(&r);
    assert_eq!(aggs.len(), 10);
    // Ordered by workload, then system in SystemId::ALL order.
    let order: Vec<_> = aggs.iter().map(|a| (a.workload, a.system)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    let a = agg(&aggs, SystemId::Redirector, KA_PLAIN);
    assert_eq!((a.reps_total, a.reps_used, a.reps_noisy), (5, 4, 1));
    assert!(!a.all_noisy);
    // Used repetitions 0..=3: factors 0.98..=1.01, median 0.995.
    assert_close(a.p50_ms.median, 0.140 * 0.995);
    assert_close(a.p50_ms.min, 0.140 * 0.98);
    assert_close(a.p50_ms.max, 0.140 * 1.01);
    assert_close(a.p99_ms.median, 0.290 * 0.995);
    assert_close(a.p999_ms.max, 0.610 * 1.01);
    assert_close(a.rps.median, (rps(1) + rps(2)) / 2.0);
    assert_close(a.cpu_per_krps.unwrap().median, 0.080 * 0.995);
    assert_close(a.machine_cpu_share.unwrap().median, 0.3);
    // Peak RSS counts the noisy repetition too (rep 4: +40 KiB).
    assert_eq!(a.peak_rss_kib, Some((8.5 * 1024.0) as u64 + 40));
    assert_eq!(
        a.requests,
        (0..4).map(|r| (rps(r) * WALL) as u64).sum::<u64>()
    );

    let n = agg(&aggs, SystemId::Nginx, KA_PLAIN);
    assert_eq!((n.reps_used, n.reps_noisy), (5, 0));
    assert_close(n.p50_ms.median, 0.150);

    let d = agg(&aggs, SystemId::DirectBeside, KA_PLAIN);
    assert_eq!(d.cpu_per_krps, None);
    assert_eq!(d.peak_rss_kib, None);

    assert_eq!(agg(&aggs, SystemId::Envoy, KA_TLS).errors, 3);
}

#[test]
fn all_noisy_cell_is_used_and_flagged() {
    let mut r = synthetic();
    for c in r
        .cells
        .iter_mut()
        .filter(|c| c.system == SystemId::Envoy && c.workload == KA_TLS)
    {
        c.noisy = true;
    }
    let aggs = aggregate(&r);
    let a = agg(&aggs, SystemId::Envoy, KA_TLS);
    assert!(a.all_noisy);
    assert_eq!((a.reps_total, a.reps_used, a.reps_noisy), (5, 5, 5));
    assert_close(a.p50_ms.median, 0.380);
    let md = markdown(&r);
    assert!(md.contains("| 5/5 (all noisy) |"), "{md}");
    assert!(md.contains("all were used, for: envoy in keep-alive/tls/open-1000rps."));
    assert!(md.contains("6 of 50 repetitions noisy, 1 dropped from medians"));
}

#[test]
fn ratios_pair_repetitions_of_the_same_run() {
    let r = synthetic();
    let all = ratios(&r);
    let find = |w, s, b| {
        all.iter()
            .find(|x: &&Ratio| x.workload == w && x.system == s && x.baseline == b)
            .unwrap_or_else(|| panic!("no ratio {s} ÷ {b} in {w}"))
    };
    let x = find(KA_PLAIN, SystemId::Redirector, SystemId::DirectBeside);
    assert_eq!(x.pairs, 4, "the noisy repetition is not paired");
    assert!(!x.noisy);
    assert_close(x.p50.unwrap(), 0.140 / 0.080);
    assert_close(x.p99.unwrap(), 0.290 / 0.150);
    assert_close(x.rps.unwrap(), 1.0);
    assert_eq!(x.cpu_per_krps, None, "direct has no process of its own");
    assert_close(x.machine_cpu_per_krps.unwrap(), 1.0);

    let x = find(KA_PLAIN, SystemId::Nginx, SystemId::DirectSutCore);
    assert_eq!(x.pairs, 5);
    assert_close(x.p50.unwrap(), 0.150 / 0.095);

    let x = find(KA_TLS, SystemId::Redirector, SystemId::Nginx);
    assert_close(x.cpu_per_krps.unwrap(), 0.150 / 0.140);
    assert_close(x.p99.unwrap(), 0.520 / 0.480);
    let x = find(KA_PLAIN, SystemId::Redirector, SystemId::Envoy);
    assert_close(x.cpu_per_krps.unwrap(), 0.080 / 0.210);

    // Nothing for absent systems, nor direct ÷ itself, nor direct ÷ direct-sut-core.
    assert!(!all.iter().any(|x| x.system == SystemId::Haproxy
        || x.baseline == SystemId::Haproxy
        || x.system == x.baseline
        || (x.baseline == SystemId::DirectSutCore && !x.system.is_proxy())));
    // Per workload: 4 systems ÷ direct-beside, 3 proxies ÷ direct-sut-core,
    // redirector ÷ envoy and nginx.
    assert_eq!(all.len(), 2 * (4 + 3 + 2));
}

#[test]
fn ratio_falls_back_to_medians_when_repetitions_do_not_pair() {
    let mut r = synthetic();
    for c in r.cells.iter_mut().filter(|c| c.system == SystemId::Nginx) {
        c.rep += 100;
    }
    let x = ratio(&r, KA_PLAIN, SystemId::Redirector, SystemId::Nginx).unwrap();
    assert_eq!(x.pairs, 0);
    assert_close(x.p50.unwrap(), 0.140 * 0.995 / 0.150);
    assert_eq!(
        ratio(&r, KA_PLAIN, SystemId::Redirector, SystemId::Haproxy),
        None
    );
}

fn verdicts(r: &BenchReport) -> Vec<(String, String, Verdict)> {
    targets(r)
        .into_iter()
        .map(|t| (t.target, t.scope, t.verdict))
        .collect()
}

#[test]
fn targets_pass_miss_and_na() {
    use Verdict::*;
    let r = synthetic();
    let ts = targets(&r);
    let got: Vec<(&str, &str, Verdict)> = ts
        .iter()
        .map(|t| (t.target.as_str(), t.scope.as_str(), t.verdict))
        .collect();
    let want = [
        (
            "CPU/1000 rps: redirector ≤ nginx (keep-alive, plain)",
            "keep-alive/plain/open-1000rps",
            Pass,
        ),
        (
            "CPU/1000 rps: redirector ≤ nginx (keep-alive, TLS)",
            "keep-alive/tls/open-1000rps",
            Miss,
        ),
        (
            "p99: redirector ≤ nginx (keep-alive, open loop)",
            "keep-alive/plain/open-1000rps",
            Pass,
        ),
        (
            "p99: redirector ≤ nginx (keep-alive, open loop)",
            "keep-alive/tls/open-1000rps",
            Miss,
        ),
        (
            "p50: redirector ≤ nginx (new connection per request)",
            "–",
            NotAvailable,
        ),
        (
            "redirector-fast-path within 5% of direct-beside",
            "all workloads",
            NotAvailable,
        ),
        ("redirector RSS under load < 12 MiB", "all workloads", Pass),
        (
            "failover: no client-visible errors",
            "redirector, 503",
            Pass,
        ),
        (
            "failover: no client-visible errors",
            "redirector, killed",
            Pass,
        ),
        (
            "failover: no client-visible errors",
            "redirector, black-holed",
            Pass,
        ),
        (
            "failover: worst latency after the fault < 2 ms",
            "redirector, 503",
            Pass,
        ),
        (
            "failover: worst latency after the fault < 2 ms",
            "redirector, killed",
            Pass,
        ),
        (
            "fail-open: zero new-connection errors across kill -9 and restart",
            "redirector",
            Pass,
        ),
        (
            "fail-open: zero new-connection errors across kill -9 and restart",
            "redirector-fast-path",
            Pass,
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(
        ts[0].measured,
        "redirector 0.080 vCPU, nginx 0.095 vCPU; ratio 0.842"
    );
    assert_eq!(
        ts[3].measured,
        "redirector 0.520 ms, nginx 0.480 ms; ratio 1.08"
    );
    assert_eq!(
        ts[5].measured,
        format!("redirector-fast-path: {FAST_PATH_REASON}")
    );
    assert_eq!(ts[6].measured, "9.3 MiB (peak since start 9.8 MiB)");
    assert_eq!(ts[9].measured, "0 errors of 5000 requests");
    assert_eq!(
        ts[11].measured,
        "1.90 ms (first 100 ms 0.950 ms; before the fault 0.500 ms)"
    );
    assert_eq!(
        ts[12].measured,
        "0 of 5000 requests (0 failed connects, 0 broken after the kill, 0 other); 1 broken in flight, not counted"
    );
}

#[test]
fn fail_open_counts_new_connections_not_the_broken_in_flight() {
    let mut r = synthetic();
    let get = |r: &BenchReport, system: &str| {
        targets(r)
            .into_iter()
            .find(|t| t.target.starts_with("fail-open") && t.scope == system)
            .unwrap()
    };
    // Many in flight, no new connection failed: still a pass.
    r.fail_open[0].broken_in_flight = 12;
    assert_eq!(get(&r, "redirector").verdict, Verdict::Pass);
    // One refused connect, or one connection the dying proxy took, or one
    // that connected and then got no answer, is a miss.
    r.fail_open[0].failed_connects = 1;
    assert_eq!(get(&r, "redirector").verdict, Verdict::Miss);
    r.fail_open[0].failed_connects = 0;
    r.fail_open[0].broken_after_kill = 1;
    assert_eq!(get(&r, "redirector").verdict, Verdict::Miss);
    r.fail_open[0].broken_after_kill = 0;
    r.fail_open[1].other_errors = 2;
    let t = get(&r, "redirector-fast-path");
    assert_eq!(t.verdict, Verdict::Miss);
    assert_eq!(
        t.measured,
        "2 of 5000 requests (0 failed connects, 0 broken after the kill, 2 other); 0 broken in flight, not counted"
    );
    r.fail_open
        .retain(|f| f.system != SystemId::RedirectorFastPath);
    let t = get(&r, "redirector-fast-path");
    assert_eq!(
        (t.verdict, t.measured.as_str()),
        (Verdict::NotAvailable, "not run")
    );
}

#[test]
fn targets_miss_on_failover_errors_latency_and_memory() {
    let mut r = synthetic();
    for f in r
        .failover
        .iter_mut()
        .filter(|f| f.system == SystemId::Redirector)
    {
        if f.fault == Fault::Killed {
            f.errors_after_fault = 2;
            f.worst_latency_after_fault_ms = 2.0;
        }
    }
    for c in r
        .cells
        .iter_mut()
        .filter(|c| c.system == SystemId::Redirector)
    {
        c.sample.sut_rss_kib = Some(12 * 1024);
    }
    r.failover.retain(|f| f.fault != Fault::BlackHoled);
    let v = verdicts(&r);
    let get = |target: &str, scope: &str| {
        v.iter()
            .find(|(t, s, _)| t == target && s == scope)
            .unwrap()
            .2
    };
    assert_eq!(
        get("failover: no client-visible errors", "redirector, killed"),
        Verdict::Miss
    );
    assert_eq!(
        get("failover: no client-visible errors", "redirector, 503"),
        Verdict::Pass
    );
    assert_eq!(
        get(
            "failover: no client-visible errors",
            "redirector, black-holed"
        ),
        Verdict::NotAvailable
    );
    assert_eq!(
        get(
            "failover: worst latency after the fault < 2 ms",
            "redirector, killed"
        ),
        Verdict::Miss,
        "the bound is strict"
    );
    assert_eq!(
        get("redirector RSS under load < 12 MiB", "all workloads"),
        Verdict::Miss
    );
}

/// The synthetic report with fast-path cells copied from direct-beside's
/// plain ones, latency × `slower`, machine CPU × `busier`; its TLS cells are
/// not available, as in a real run.
fn with_fast_path(slower: f64, busier: f64) -> BenchReport {
    let mut r = synthetic();
    r.not_available = vec![NotAvailable {
        system: SystemId::RedirectorFastPath,
        workload: KA_TLS,
        reason: FAST_PATH_NO_TLS.into(),
    }];
    let extra: Vec<CellRun> = r
        .cells
        .iter()
        .filter(|c| c.system == SystemId::DirectBeside && c.workload == KA_PLAIN)
        .map(|c| {
            let mut c = c.clone();
            c.system = SystemId::RedirectorFastPath;
            c.load.p50_ms *= slower;
            c.load.p99_ms *= slower;
            c.sample.machine_busy_secs *= busier;
            c.sample.sut_cpu_secs = Some(0.0);
            c
        })
        .collect();
    r.cells.extend(extra);
    r
}

fn fast_path_targets(r: &BenchReport) -> Vec<Target> {
    targets(r)
        .into_iter()
        .filter(|t| t.target.starts_with("redirector-fast-path"))
        .collect()
}

#[test]
fn fast_path_is_checked_against_direct_beside_on_plain_workloads() {
    let fp = fast_path_targets(&with_fast_path(1.04, 1.0));
    // No row for TLS: the fast path cannot originate it, by design.
    assert_eq!(fp.len(), 1, "{fp:?}");
    assert_eq!(fp[0].scope, KA_PLAIN.key());
    assert_eq!(fp[0].verdict, Verdict::Pass);
    assert_eq!(
        fp[0].measured,
        "p50 ×1.04, p99 ×1.04, machine CPU/1000 rps ×1.00"
    );
    let fp = fast_path_targets(&with_fast_path(1.10, 1.0));
    assert_eq!(fp[0].verdict, Verdict::Miss);
}

#[test]
fn fast_path_misses_on_the_clients_cpu() {
    // Latency as direct, but the machine works 8% more per request: the
    // hook's cost, charged to the client, is a miss too.
    let fp = fast_path_targets(&with_fast_path(1.0, 1.08));
    assert_eq!(fp[0].verdict, Verdict::Miss);
    assert_eq!(
        fp[0].measured,
        "p50 ×1.00, p99 ×1.00, machine CPU/1000 rps ×1.08"
    );
}

#[test]
fn markdown_explains_the_fast_path_and_its_tls_gap() {
    let md = markdown(&with_fast_path(1.02, 1.01));
    assert!(md.contains(FAST_PATH_NOTE), "{md}");
    assert!(
        md.contains("| redirector-fast-path | n/a[^na1] | n/a |"),
        "{md}"
    );
    assert!(md.contains(&format!("[^na1]: {FAST_PATH_NO_TLS}")), "{md}");
    // Without fast-path cells, no note.
    assert!(!markdown(&synthetic()).contains(FAST_PATH_NOTE));
}

#[test]
fn markdown_has_the_tables() {
    let r = synthetic();
    let md = markdown(&r);
    println!("{md}");
    for needle in [
        "# redirector benchmark, 2026-11-26T21:41:13Z: AMD EPYC 9B14, 2 vCPU, kernel 6.18.0-1-cloud-amd64\n",
        "Machine: host `bench-vm`, 8.0 GiB RAM.",
        "5 repetitions per cell",
        "envoy `1.36.2`, nginx `1.22.1`, redirector `v0.1.0-42-gabcdef0`",
        "## keep-alive/plain/open-1000rps\n",
        "## keep-alive/tls/open-1000rps\n",
        "| system | rps | p50 ms | p99 ms | p99.9 ms | errors |",
        // Medians of repetitions 0..=3, spread min–max.
        "| redirector | 999 (998–1000) | 0.139 (0.137–0.141) | 0.289 (0.284–0.293) | 0.607 (0.598–0.616) | 0 | 0.080 (0.078–0.081) | 30% | 8.0 | 8.5 | 4/5 |",
        "| nginx | 999 (998–1000) | 0.150 (0.147–0.153) |",
        "| direct-beside | 999 (998–1000) | 0.0800 (0.0784–0.0816) |",
        "| – | 30% | – | – | 5/5 |",
        "| envoy | 999 (998–1000) | 0.380 (0.372–0.388) | 0.800 (0.784–0.816) | 2.00 (1.96–2.04) | 3 (0.0120%) |",
        "| redirector-fast-path | n/a[^na1] | n/a |",
        "[^na1]: the kernel fast path is not built yet\n",
        "## Upstream TLS handshakes per 1000 requests\n",
        "| workload | direct-beside | direct-sut-core | redirector | envoy | nginx |\n|---|--:|--:|--:|--:|--:|\n",
        "| keep-alive/tls/open-1000rps | 3.20 / 0 | 3.20 / 0 | 0 / 0.400 | 1.00 / 0 | 0 / 1.00 |\n",
        "Left out, over the TLS runs: 50 completed handshakes (0.400/s) and 0 failed or abandoned \
         ones (0/s) of connections that carried no request, such as the handshakes a load \
         generator leaves in flight when its run ends. Full handshakes with a HelloRetryRequest: 0.",
        "## Ratios",
        "| keep-alive/plain/open-1000rps | redirector | 1.00 | 1.75 | 1.93 |",
        "### redirector ÷ peers",
        "| keep-alive/tls/open-1000rps | nginx | 1.00 | 1.10 | 1.08 | 1.05 | 1.07 | 1.00 |",
        "## Failover",
        "| redirector | 503 | 500 | 5000 | 0 | 0.600 ms | 1.20 ms | 0.600 ms | 0.500 ms | 150 ms |",
        "| redirector | killed | 500 | 5000 | 0 | 1.10 ms | 1.90 ms | 0.950 ms | 0.500 ms | never |",
        "| redirector | black-holed | 500 | 5000 | 0 | never | 1000 ms | 500 ms | 0.500 ms | 2100 ms |",
        "| nginx | killed | 500 | 5000 | 4 | never | 5.20 ms | 2.60 ms | 0.500 ms | never |",
        "## Fail-open (kill -9 of the daemon)",
        "| redirector | 500 | 5000 | 0 | 1 | 0 | 0 | kernel/east 1585, proxy/east 20 | 3000 ms | 210 ms | 42.0 ms | 1.50 ms | 0.800 ms |",
        "| redirector-fast-path | 500 | 5000 | 0 | 0 | 0 | 0 | kernel/east 1605 | 3000 ms | 210 ms | – (kernel path) | 1.50 ms | 0.800 ms |",
        "## Targets",
        "10 pass, 2 miss, 2 n/a.",
        "| CPU/1000 rps: redirector ≤ nginx (keep-alive, TLS) | keep-alive/tls/open-1000rps | redirector 0.150 vCPU, nginx 0.140 vCPU; ratio 1.07 | **miss** |",
        "| redirector-fast-path within 5% of direct-beside | all workloads | redirector-fast-path: the kernel fast path is not built yet | n/a |",
        "Noise: 1 of 50 repetitions noisy, 1 dropped from medians (threshold 10.0% of one core); worst steal 4.00% and worst foreign CPU 35.0% of one core.",
    ] {
        assert!(md.contains(needle), "missing {needle:?}");
    }
    // One footnote for the reason shared by both n/a cells.
    assert_eq!(md.matches("[^na1]:").count(), 1);
    assert!(!md.contains("[^na2]"));
    // Systems in SystemId::ALL order within a table; haproxy never ran.
    let plain = &md[md.find("## keep-alive/plain").unwrap()..md.find("## keep-alive/tls").unwrap()];
    let pos = |s: &str| plain.find(&format!("\n| {s} |")).unwrap();
    assert!(pos("direct-beside") < pos("direct-sut-core"));
    assert!(pos("direct-sut-core") < pos("redirector"));
    assert!(pos("redirector") < pos("redirector-fast-path"));
    assert!(pos("redirector-fast-path") < pos("envoy"));
    assert!(pos("envoy") < pos("nginx"));
    assert!(!md.contains("| haproxy |"));
}

#[test]
fn handshakes_are_medians_of_the_runs_used() {
    let mut r = synthetic();
    let aggs = aggregate(&r);
    let redirector = agg(&aggs, SystemId::Redirector, KA_TLS);
    // 0, 0.2, 0.4, 0.6, 0.8 per 1000 requests.
    let resumed = redirector.tls_resumed_per_krequests.unwrap();
    assert_close(resumed.median, 0.4);
    assert_close(resumed.min, 0.0);
    assert_close(resumed.max, 0.8);
    assert_eq!(
        redirector.tls_full_per_krequests,
        Some(Stat {
            median: 0.0,
            min: 0.0,
            max: 0.0
        })
    );
    let direct = agg(&aggs, SystemId::DirectBeside, KA_TLS);
    assert_close(direct.tls_full_per_krequests.unwrap().median, 3.2);
    // Plain cells count nothing.
    let plain = agg(&aggs, SystemId::Redirector, KA_PLAIN);
    assert_eq!(plain.tls_full_per_krequests, None);
    assert_eq!(plain.tls_resumed_per_krequests, None);

    // A noisy repetition with a burst of handshakes is left out, like its
    // latency: the median is over 0, 0.2, 0.4, 0.6.
    let noisy = r
        .cells
        .iter_mut()
        .find(|c| c.system == SystemId::Redirector && c.workload == KA_TLS && c.rep == 4)
        .unwrap();
    noisy.noisy = true;
    noisy.upstream_tls.as_mut().unwrap().resumed = 5000;
    let aggs = aggregate(&r);
    let resumed = agg(&aggs, SystemId::Redirector, KA_TLS)
        .tls_resumed_per_krequests
        .unwrap();
    assert_close(resumed.median, 0.3);
    assert_close(resumed.max, 0.6);

    // A run whose upstreams answered nothing has no ratio, and a cell
    // with no counts at all (an older JSON) shows "–".
    for c in r
        .cells
        .iter_mut()
        .filter(|c| c.system == SystemId::Envoy && c.workload == KA_TLS)
    {
        if c.rep == 0 {
            c.upstream_tls.as_mut().unwrap().requests = 0;
        } else {
            c.upstream_tls = None;
        }
    }
    let aggs = aggregate(&r);
    assert_eq!(
        agg(&aggs, SystemId::Envoy, KA_TLS).tls_full_per_krequests,
        None
    );
    let md = markdown(&r);
    assert!(
        md.contains(
            "| keep-alive/tls/open-1000rps | 3.20 / 0 | 3.20 / 0 | 0 / 0.300 | – | 0 / 1.00 |\n"
        ),
        "{md}"
    );
    assert!(!md.contains("HAProxy's TLS health checks"), "{md}");

    // With HAProxy in the run, the note names its health checks.
    let mut haproxy = cell(SystemId::Nginx, KA_TLS, 0);
    haproxy.system = SystemId::Haproxy;
    r.cells.push(haproxy);
    let md = markdown(&r);
    assert!(
        md.contains(
            "| workload | direct-beside | direct-sut-core | redirector | envoy | nginx | haproxy |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "such as HAProxy's TLS health checks of both regions (which run whichever system is \
             measured) and the handshakes"
        ),
        "{md}"
    );
}

#[test]
fn upstream_tls_ratios_and_idle_handshakes() {
    let none = UpstreamTls::default();
    assert_eq!(none.per_krequests(), None);
    assert_eq!(none.idle_handshakes(), 0);
    let t = UpstreamTls {
        requests: 2000,
        full: 1,
        resumed: 3,
        all_full: 4,
        all_resumed: 3,
        ..Default::default()
    };
    assert_eq!(t.per_krequests(), Some((0.5, 1.5)));
    assert_eq!(t.idle_handshakes(), 3);
    // A connection opened in the warm-up carried its first request in the
    // run: more used than completed, which is not a negative idle count.
    let warm = UpstreamTls {
        requests: 10,
        resumed: 1,
        ..Default::default()
    };
    assert_eq!(warm.idle_handshakes(), 0);
}

#[test]
fn json_without_handshake_counts_still_reads() {
    let r = synthetic();
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        json.contains("\"upstream_tls\":{\"requests\":5000,"),
        "{json}"
    );
    // Floats may come back 1 ULP off (see below); the counts are integers.
    let back: BenchReport = serde_json::from_str(&json).unwrap();
    let counts = |r: &BenchReport| -> Vec<Option<UpstreamTls>> {
        r.cells.iter().map(|c| c.upstream_tls.clone()).collect()
    };
    assert_eq!(counts(&back), counts(&r));
    // Plain cells leave the field out; a report written before it existed
    // has it nowhere.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    for cell in old["cells"].as_array_mut().unwrap() {
        cell.as_object_mut().unwrap().remove("upstream_tls");
    }
    let old: BenchReport = serde_json::from_value(old).unwrap();
    assert!(old.cells.iter().all(|c| c.upstream_tls.is_none()));
    assert!(!markdown(&old).contains("## Upstream TLS handshakes"));
}

#[test]
fn markdown_of_an_empty_report_does_not_panic() {
    let md = markdown(&BenchReport::default());
    assert!(md.contains("# redirector benchmark, (undated): unknown CPU, 0 vCPU, kernel ?"));
    assert!(md.contains("0 pass, 0 miss,"));
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xtask-report-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn write_produces_dated_files_and_latest_copies() {
    let r = synthetic();
    let tmp = TempDir::new("write");
    let dir = tmp.0.join("bench/results");
    let w = write(&r, &dir).unwrap();
    assert_eq!(w.json, dir.join("2026-11-26T21-41-13Z.json"));
    assert_eq!(w.markdown, dir.join("2026-11-26T21-41-13Z.md"));
    assert_eq!(w.plot, dir.join("2026-11-26T21-41-13Z.svg"));
    for (dated, latest) in [
        (&w.json, "latest.json"),
        (&w.markdown, "latest.md"),
        (&w.plot, "latest.svg"),
    ] {
        assert_eq!(
            fs::read(dated).unwrap(),
            fs::read(dir.join(latest)).unwrap()
        );
    }
    let back: BenchReport = serde_json::from_str(&fs::read_to_string(&w.json).unwrap()).unwrap();
    // serde_json's default float parser may be 1 ULP off, so compare what
    // the report shows rather than the bits.
    assert_eq!(back.cells.len(), r.cells.len());
    assert_eq!(
        (
            &back.machine,
            &back.settings,
            &back.not_available,
            &back.failover,
            &back.fail_open
        ),
        (
            &r.machine,
            &r.settings,
            &r.not_available,
            &r.failover,
            &r.fail_open
        )
    );
    assert_eq!(markdown(&back), markdown(&r));
    let md = fs::read_to_string(&w.markdown).unwrap();
    assert!(md.contains("](2026-11-26T21-41-13Z.svg)"));
    assert!(md.contains("## Targets"));
    let svg = fs::read_to_string(&w.plot).unwrap();
    roxmltree::Document::parse(&svg).unwrap();

    // A second run in the same second does not overwrite the first.
    let w2 = write(&r, &dir).unwrap();
    assert_eq!(w2.json, dir.join("2026-11-26T21-41-13Z-2.json"));
    assert!(w.json.exists());
}

#[test]
fn file_names_come_from_the_date_or_the_clock() {
    let mut r = BenchReport::default();
    r.machine.date = "2026-11-26T21:41:13.123456Z".into();
    assert_eq!(file_stem(&r), "2026-11-26T21-41-13Z");
    r.machine.date = "yesterday".into();
    let stem = file_stem(&r);
    assert_eq!(stem.len(), "2026-11-26T21-41-13Z".len(), "{stem}");
    assert!(stem.starts_with("20") && stem.ends_with('Z'), "{stem}");
    for (secs, s) in [
        (0, "1970-01-01T00-00-00Z"),
        (951_782_400, "2000-02-29T00-00-00Z"),
        (1_795_729_273, "2026-11-26T21-41-13Z"),
        (4_107_542_400, "2100-03-01T00-00-00Z"),
    ] {
        assert_eq!(utc_stem(secs), s);
    }
}

#[test]
fn the_baseline_build_is_a_system_and_compared_with_this_build() {
    let r = with_baseline(synthetic(), 1.25);
    let md = markdown(&r);
    println!("{md}");
    for needle in [
        "redirector-baseline `/work/main/target/release/redirector, sha256 0123456789ab`",
        "| keep-alive/plain/open-1000rps | redirector-baseline | 1.00 |",
        "### redirector ÷ redirector-baseline\n",
        "| workload | rps | p50 | p99 | p99.9 | CPU/1000 rps | machine CPU/1000 rps |",
        "| keep-alive/plain/open-1000rps | 1.00 | 0.800 | 0.800 | 0.800 | 0.800 | 1.00 |",
        "| keep-alive/tls/open-1000rps | 1.00 | 0.800 | 0.800 | 0.800 | 0.800 | 1.00 |",
        "| redirector-baseline | 503 | 500 | 5000 | 0 | 0.600 ms |",
        "| redirector-baseline | 500 | 5000 | 0 | 1 | 0 | 0 | kernel/east 1585, proxy/east 20 |",
    ] {
        assert!(md.contains(needle), "missing {needle:?}");
    }
    // Right after the redirector in every table.
    let plain = &md[md.find("## keep-alive/plain").unwrap()..md.find("## keep-alive/tls").unwrap()];
    let pos = |s: &str| plain.find(&format!("\n| {s} |")).unwrap();
    assert!(pos("redirector") < pos("redirector-baseline"));
    assert!(pos("redirector-baseline") < pos("redirector-fast-path"));
    let x = ratio(
        &r,
        KA_PLAIN,
        SystemId::Redirector,
        SystemId::RedirectorBaseline,
    )
    .unwrap();
    assert_eq!((x.pairs, x.noisy), (4, false));
    assert_close(x.p50.unwrap(), 0.8);
    assert_close(x.cpu_per_krps.unwrap(), 0.8);
    assert_close(x.rps.unwrap(), 1.0);
    // The targets are the redirector's: another build changes none.
    assert_eq!(targets(&r), targets(&synthetic()));
    // Without a baseline, no such table.
    assert!(!markdown(&synthetic()).contains("redirector-baseline"));
}

#[test]
fn the_baseline_reads_back_from_json() {
    let r = with_baseline(synthetic(), 1.25);
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains(r#""system":"redirector-baseline""#));
    let back: BenchReport = serde_json::from_str(&json).unwrap();
    assert_eq!(markdown(&back), markdown(&r));
    assert_eq!(SystemId::RedirectorBaseline.key(), "redirector-baseline");
}
