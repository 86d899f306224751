//! A synthetic run whose medians and ratios are known in closed form: 2
//! workloads × 5 systems × 5 repetitions, one noisy repetition, one system
//! not available, failover rows with `None`s. The report's and the plot's
//! tests read it.

use std::collections::BTreeMap;

use crate::model::{
    BenchReport, CellRun, Conn, FailOpenRun, FailoverRun, Fault, Load, LoadResult, MachineInfo,
    NotAvailable, RunSettings, Sample, SystemId, Upstream, UpstreamTls, Workload,
};

pub(crate) const KA_PLAIN: Workload = Workload {
    conn: Conn::KeepAlive,
    upstream: Upstream::Plain,
    load: Load::OpenLoop { rps: 1000 },
};
pub(crate) const KA_TLS: Workload = Workload {
    conn: Conn::KeepAlive,
    upstream: Upstream::Tls,
    load: Load::OpenLoop { rps: 1000 },
};
pub(crate) const FAST_PATH_REASON: &str = "the kernel fast path is not built yet";
pub(crate) const WALL: f64 = 5.0;

/// (p50, p99, p99.9) ms, CPU/1000 rps, peak RSS MiB of each cell.
pub(crate) type Base = (f64, f64, f64, Option<f64>, Option<f64>);

pub(crate) fn base(s: SystemId, w: Workload) -> Base {
    use SystemId::*;
    let plain = w.upstream == Upstream::Plain;
    match (s, plain) {
        (DirectBeside, true) => (0.080, 0.150, 0.300, None, None),
        (DirectSutCore, true) => (0.095, 0.180, 0.400, None, None),
        (Redirector, true) => (0.140, 0.290, 0.610, Some(0.080), Some(8.5)),
        (Envoy, true) => (0.260, 0.520, 1.400, Some(0.210), Some(38.0)),
        (Nginx, true) => (0.150, 0.310, 0.700, Some(0.095), Some(6.0)),
        (DirectBeside, false) => (0.130, 0.240, 0.500, None, None),
        (DirectSutCore, false) => (0.150, 0.280, 0.600, None, None),
        (Redirector, false) => (0.230, 0.520, 1.100, Some(0.150), Some(9.8)),
        (Envoy, false) => (0.380, 0.800, 2.000, Some(0.300), Some(41.0)),
        (Nginx, false) => (0.210, 0.480, 1.050, Some(0.140), Some(6.5)),
        _ => unreachable!("no cells for {s}"),
    }
}

/// Spread of repetition `rep`: 0.98, 0.99, 1.00, 1.01, 1.02.
pub(crate) fn factor(rep: u32) -> f64 {
    1.0 + 0.01 * (f64::from(rep) - 2.0)
}

pub(crate) fn rps(rep: u32) -> f64 {
    1000.0 - 0.5 * f64::from(rep)
}

pub(crate) const SYSTEMS: [SystemId; 5] = [
    SystemId::DirectBeside,
    SystemId::DirectSutCore,
    SystemId::Redirector,
    SystemId::Envoy,
    SystemId::Nginx,
];

/// What the HTTPS upstreams counted in a TLS cell: 5000 requests; direct
/// makes 16 full handshakes (3.20 per 1000), the redirector `rep` resumed
/// ones (median 0.400), Envoy 5 full (1.00), nginx 5 resumed (1.00); every
/// run also sees 2 health-check handshakes that carried no request.
pub(crate) fn upstream_tls(system: SystemId, rep: u32) -> UpstreamTls {
    use SystemId::*;
    let (full, resumed) = match system {
        DirectBeside | DirectSutCore => (16, 0),
        Redirector => (0, u64::from(rep)),
        Envoy => (5, 0),
        Nginx => (0, 5),
        _ => unreachable!("no TLS cells for {system}"),
    };
    UpstreamTls {
        requests: 5000,
        connections: full + resumed + 2,
        full,
        resumed,
        all_full: full + 2,
        all_resumed: resumed,
        hello_retries: 0,
        failed: 0,
    }
}

pub(crate) fn cell(system: SystemId, workload: Workload, rep: u32) -> CellRun {
    let (p50, p99, p999, cpu, rss) = base(system, workload);
    let f = factor(rep);
    let rps = rps(rep);
    let requests = (rps * WALL) as u64;
    let errors = if system == SystemId::Envoy && workload == KA_TLS && rep == 1 {
        3
    } else {
        0
    };
    CellRun {
        system,
        workload,
        rep,
        load: LoadResult {
            requests,
            errors,
            rps,
            p50_ms: p50 * f,
            p99_ms: p99 * f,
            p999_ms: p999 * f,
            max_ms: p999 * f * 2.0,
            duration_secs: WALL,
        },
        sample: Sample {
            sut_cpu_secs: cpu.map(|c| c * f * WALL * rps / 1000.0),
            machine_busy_secs: 0.6 * WALL,
            steal_secs: 0.002 * WALL,
            foreign_cpu_secs: 0.02 * WALL,
            // Grows over the repetitions, as VmHWM does.
            sut_peak_rss_kib: rss.map(|m| (m * 1024.0) as u64 + u64::from(rep) * 10),
            sut_rss_kib: rss.map(|m| (m * 1024.0) as u64 - 512 + u64::from(rep) * 10),
            wall_secs: WALL,
        },
        noisy: false,
        upstream_tls: (workload.upstream == Upstream::Tls).then(|| upstream_tls(system, rep)),
    }
}

pub(crate) fn failover(
    system: SystemId,
    fault: Fault,
    errors: u64,
    full: Option<f64>,
    worst: f64,
    back: Option<f64>,
) -> FailoverRun {
    FailoverRun {
        system,
        fault,
        rps: 500,
        requests: 5000,
        fault_at_ms: 3000.0,
        restore_at_ms: 6000.0,
        errors_after_fault: errors,
        time_to_full_failover_ms: full,
        worst_latency_after_fault_ms: worst,
        worst_latency_first_100ms_ms: worst / 2.0,
        worst_latency_before_fault_ms: 0.5,
        time_to_fail_back_ms: back,
        timeline: vec![(50, 0, 0), (0, 50, 0)],
    }
}

pub(crate) fn fail_open(
    system: SystemId,
    failed_connects: u64,
    broken: u64,
    served: &[(&str, u64)],
    proxy: Option<f64>,
) -> FailOpenRun {
    FailOpenRun {
        system,
        rps: 500,
        requests: 5000,
        kill_at_ms: 2000.0,
        dead_at_ms: 2001.5,
        restart_at_ms: 5000.0,
        ready_at_ms: 5210.0,
        failed_connects,
        broken_in_flight: broken,
        broken_after_kill: 0,
        other_errors: 0,
        served_while_down: served.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
        restart_to_proxy_ms: proxy,
        worst_latency_before_kill_ms: 0.8,
        worst_latency_after_kill_ms: 1.5,
        timeline: vec![(50, 0, 0), (0, 50, 0)],
    }
}

pub(crate) fn synthetic() -> BenchReport {
    let mut cells = Vec::new();
    // Interleaved as the harness runs them: rep, workload, system.
    for rep in 0..5 {
        for w in [KA_PLAIN, KA_TLS] {
            for s in SYSTEMS {
                cells.push(cell(s, w, rep));
            }
        }
    }
    // One noisy repetition, with numbers far off, which must not move the
    // medians.
    let noisy = cells
        .iter_mut()
        .find(|c| c.system == SystemId::Redirector && c.workload == KA_PLAIN && c.rep == 4)
        .unwrap();
    noisy.noisy = true;
    noisy.load.p50_ms *= 10.0;
    noisy.load.p99_ms *= 10.0;
    noisy.load.p999_ms *= 10.0;
    noisy.sample.foreign_cpu_secs = 0.35 * WALL;
    noisy.sample.steal_secs = 0.04 * WALL;
    let mut versions = BTreeMap::new();
    versions.insert("redirector".into(), "v0.1.0-42-gabcdef0".into());
    versions.insert("nginx".into(), "1.22.1".into());
    versions.insert("envoy".into(), "1.36.2".into());
    BenchReport {
        machine: MachineInfo {
            date: "2026-11-26T21:41:13Z".into(),
            hostname: "bench-vm".into(),
            kernel: "6.18.0-1-cloud-amd64".into(),
            cpu_model: "AMD EPYC 9B14".into(),
            cpus: 2,
            memory_kib: 8 * 1024 * 1024,
            versions,
        },
        settings: RunSettings {
            quick: false,
            reps: 5,
            cell_secs: WALL,
            warmup_secs: 1.0,
            body_bytes: 1024,
            client_cpu: 0,
            sut_cpu: 1,
            noise_threshold: 0.1,
        },
        cells,
        not_available: [KA_PLAIN, KA_TLS]
            .into_iter()
            .map(|workload| NotAvailable {
                system: SystemId::RedirectorFastPath,
                workload,
                reason: FAST_PATH_REASON.into(),
            })
            .collect(),
        failover: vec![
            failover(
                SystemId::Redirector,
                Fault::Status503,
                0,
                Some(0.6),
                1.2,
                Some(150.0),
            ),
            failover(SystemId::Redirector, Fault::Killed, 0, Some(1.1), 1.9, None),
            failover(
                SystemId::Redirector,
                Fault::BlackHoled,
                0,
                None,
                1000.0,
                Some(2100.0),
            ),
            failover(
                SystemId::Nginx,
                Fault::Status503,
                1,
                Some(2.0),
                3.0,
                Some(10_000.0),
            ),
            failover(SystemId::Nginx, Fault::Killed, 4, None, 5.2, None),
        ],
        fail_open: vec![
            fail_open(
                SystemId::Redirector,
                0,
                1,
                &[("kernel/east", 1585), ("proxy/east", 20)],
                Some(42.0),
            ),
            fail_open(
                SystemId::RedirectorFastPath,
                0,
                0,
                &[("kernel/east", 1605)],
                None,
            ),
        ],
        pods: None,
    }
}

/// `r` with the pod row (the redirector's cells, latency and CPU `slower`
/// times) and the pod scenarios: footprints at 0, 10 and 50 pods growing
/// by 300 KiB, 12 fds (6 sockets, 4 maps of 100 KiB, 1 namespace) a pod
/// for the first 10 and half that (but the namespace) after; 10 pods, the even ones with the plugin
/// (served 40 + i ms after the ADD started, no connect around the
/// daemon), the odd ones without (first connect at 30 + i ms, served
/// 5 ms later, after i kernel connects).
pub(crate) fn with_pods(mut r: BenchReport, slower: f64) -> BenchReport {
    use crate::model::{Footprint, PodStart, PodsReport, ProcessUse};
    let cells: Vec<CellRun> = r
        .cells
        .iter()
        .filter(|c| c.system == SystemId::Redirector)
        .map(|c| {
            let mut p = c.clone();
            p.system = SystemId::RedirectorPod;
            p.load.p50_ms *= slower;
            p.load.p99_ms *= slower;
            p.load.p999_ms *= slower;
            p.sample.sut_cpu_secs = p.sample.sut_cpu_secs.map(|s| s * slower);
            p
        })
        .collect();
    r.cells.extend(cells);
    let footprint = |pods: u32, rss_kib, fds: u64, sockets, bpf_maps, bpf_map_kib| Footprint {
        pods,
        rss_kib,
        fds,
        sockets,
        bpf_maps,
        bpf_map_kib,
        fd_kinds: [
            ("socket", sockets),
            ("bpf-map", bpf_maps),
            ("net", u64::from(pods)),
            ("file", fds - sockets - bpf_maps - u64::from(pods)),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect(),
        processes: [
            ("daemon", rss_kib - 2_000, fds - 10),
            ("netns helper", 2_000, 10),
        ]
        .into_iter()
        .map(|(role, rss_kib, fds)| {
            let process = ProcessUse {
                pid: 42,
                rss_kib,
                fds,
                fd_kinds: BTreeMap::new(),
            };
            (role.to_owned(), process)
        })
        .collect(),
    };
    let starts = (0..10u32)
        .map(|i| {
            let plugin = i % 2 == 0;
            let t = f64::from(i);
            PodStart {
                pod: format!("bench-pod-{i}"),
                plugin,
                add_ms: if plugin { 35.0 + t } else { 20.0 + t },
                first_connect_ms: if plugin { 40.0 + t } else { 30.0 + t },
                served_ms: if plugin { 40.0 + t } else { 35.0 + t },
                kernel_connects: if plugin { 0 } else { i },
                failed_connects: 0,
                source: if plugin { "cni" } else { "found" }.into(),
                setup_ms: 2.0,
            }
        })
        .collect();
    r.pods = Some(PodsReport {
        footprints: vec![
            footprint(0, 10_000, 100, 10, 60, 5_000),
            footprint(10, 13_000, 220, 70, 100, 6_000),
            footprint(50, 19_000, 460, 190, 180, 8_000),
        ],
        after_delete: Some(footprint(0, 12_000, 100, 10, 60, 5_000)),
        starts,
    });
    r
}

/// `r` with a `redirector-baseline` (another build) whose every cell,
/// failover and fail-open run is the redirector's, its latency and CPU
/// `slower` times the redirector's: so redirector ÷ baseline is
/// 1/`slower` on those, and 1 on rate and machine CPU.
pub(crate) fn with_baseline(mut r: BenchReport, slower: f64) -> BenchReport {
    let cells: Vec<CellRun> = r
        .cells
        .iter()
        .filter(|c| c.system == SystemId::Redirector)
        .map(|c| {
            let mut b = c.clone();
            b.system = SystemId::RedirectorBaseline;
            b.load.p50_ms *= slower;
            b.load.p99_ms *= slower;
            b.load.p999_ms *= slower;
            b.load.max_ms *= slower;
            b.sample.sut_cpu_secs = b.sample.sut_cpu_secs.map(|s| s * slower);
            b
        })
        .collect();
    r.cells.extend(cells);
    let failover: Vec<FailoverRun> = r
        .failover
        .iter()
        .filter(|f| f.system == SystemId::Redirector)
        .map(|f| FailoverRun {
            system: SystemId::RedirectorBaseline,
            ..f.clone()
        })
        .collect();
    r.failover.extend(failover);
    let fail_open: Vec<FailOpenRun> = r
        .fail_open
        .iter()
        .filter(|f| f.system == SystemId::Redirector)
        .map(|f| FailOpenRun {
            system: SystemId::RedirectorBaseline,
            ..f.clone()
        })
        .collect();
    r.fail_open.extend(fail_open);
    r.machine.versions.insert(
        "redirector-baseline".into(),
        "/work/main/target/release/redirector, sha256 0123456789ab".into(),
    );
    r
}
