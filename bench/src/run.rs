//! One run of the benchmark, in order: the tools, the bed with every
//! system up, a check that each serves the primary, the pod scenarios,
//! the pod row, the matrix of cells (workloads × systems × repetitions,
//! systems interleaved), the failover and fail-open runs, then the report.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use redirector_tests::upstream::UpstreamStats;

use crate::{
    Args, cmd, failopen, failover, install, load, machine,
    model::{
        self, BenchReport, CellRun, Conn, Fault, Load, NotAvailable, RunSettings, SystemId,
        Upstream, UpstreamTls, Workload,
    },
    pods, report, sample,
    tools::Tools,
    topology::{Bed, BedOptions, System},
    wait::{self, Seen},
};

const CLIENT_CPU: u32 = 0;
const SUT_CPU: u32 = 1;
const BODY_BYTES: u32 = 1024;

fn workloads(quick: bool) -> Vec<Workload> {
    use Conn::*;
    use Load::*;
    use Upstream::*;
    let w = |conn, upstream, load| Workload {
        conn,
        upstream,
        load,
    };
    if quick {
        return vec![
            w(KeepAlive, Plain, OpenLoop { rps: 1000 }),
            w(KeepAlive, Tls, ClosedLoop { connections: 16 }),
            w(NewPerRequest, Plain, OpenLoop { rps: 200 }),
        ];
    }
    vec![
        w(KeepAlive, Plain, OpenLoop { rps: 1000 }),
        w(KeepAlive, Plain, OpenLoop { rps: 5000 }),
        w(KeepAlive, Plain, ClosedLoop { connections: 32 }),
        w(NewPerRequest, Plain, OpenLoop { rps: 1000 }),
        w(NewPerRequest, Plain, ClosedLoop { connections: 32 }),
        w(KeepAlive, Tls, OpenLoop { rps: 1000 }),
        w(KeepAlive, Tls, OpenLoop { rps: 5000 }),
        w(KeepAlive, Tls, ClosedLoop { connections: 32 }),
        w(NewPerRequest, Tls, OpenLoop { rps: 1000 }),
        w(NewPerRequest, Tls, ClosedLoop { connections: 32 }),
    ]
}

/// The systems to run: `--systems` in its order, else every system; the
/// baseline only with `--baseline`, and then always unless `--systems`
/// names it.
fn selected_systems(filter: &[String], baseline: bool) -> Result<Vec<SystemId>> {
    if filter.is_empty() {
        return Ok(SystemId::ALL
            .into_iter()
            .filter(|s| baseline || *s != SystemId::RedirectorBaseline)
            .collect());
    }
    let systems = filter
        .iter()
        .map(|k| {
            SystemId::ALL
                .into_iter()
                .find(|s| s.key() == k)
                .with_context(|| {
                    let keys: Vec<_> = SystemId::ALL.iter().map(|s| s.key()).collect();
                    format!("unknown system {k:?}; known: {}", keys.join(", "))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    if systems.contains(&SystemId::RedirectorPod) && !systems.contains(&SystemId::Redirector) {
        bail!(
            "--systems names {}, whose client runs in a pod the redirector's daemon serves: name {} too",
            SystemId::RedirectorPod,
            SystemId::Redirector
        );
    }
    let named = systems.contains(&SystemId::RedirectorBaseline);
    if named && !baseline {
        bail!(
            "--systems names {}, which needs --baseline <a redirector binary>",
            SystemId::RedirectorBaseline
        );
    }
    if baseline && !named {
        bail!(
            "--baseline is given but --systems leaves out {}",
            SystemId::RedirectorBaseline
        );
    }
    Ok(systems)
}

/// The `--baseline` binary, as an absolute path.
fn baseline_binary(path: &Path) -> Result<PathBuf> {
    let resolved = path
        .canonicalize()
        .with_context(|| format!("--baseline {}", path.display()))?;
    if !resolved.is_file() {
        bail!("--baseline {} is not a file", path.display());
    }
    Ok(resolved)
}

pub(crate) fn run(args: &Args) -> Result<()> {
    cmd::require_root()?;
    let systems = selected_systems(&args.systems, args.baseline.is_some())?;
    let baseline = args.baseline.as_deref().map(baseline_binary).transpose()?;
    check_release_binaries()?;
    let tools = install::ensure().context("installing the bench's tools")?;
    pin_to(CLIENT_CPU)?;
    let settings = RunSettings {
        quick: args.quick,
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 5 }),
        cell_secs: args.cell_secs.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
        warmup_secs: if args.quick { 0.2 } else { 1.0 },
        body_bytes: BODY_BYTES,
        client_cpu: CLIENT_CPU,
        sut_cpu: SUT_CPU,
        noise_threshold: 0.10,
    };
    bench(args, &tools, &systems, baseline.as_deref(), settings)
}

/// The `redirector`, `rdt-upstream` and `rdt-load` the test bed runs:
/// release builds (this measures the product, not a debug build), which
/// `cargo xtask bench` builds and names in these variables. Never the test
/// bed's fallback, the debug builds beside this executable.
fn check_release_binaries() -> Result<()> {
    for (var, bin) in [
        ("REDIRECTOR_BIN", "redirector"),
        ("RDT_UPSTREAM_BIN", "rdt-upstream"),
        ("RDT_LOAD_BIN", "rdt-load"),
    ] {
        let Some(path) = std::env::var_os(var).map(PathBuf::from) else {
            bail!(
                "{var} is not set: run the bench with `cargo xtask bench`, which builds the \
                 release {bin} and passes its path"
            );
        };
        if !path.is_file() {
            bail!("{var}={} is not a file", path.display());
        }
    }
    Ok(())
}

fn bench(
    args: &Args,
    tools: &Tools,
    systems: &[SystemId],
    baseline: Option<&Path>,
    settings: RunSettings,
) -> Result<()> {
    eprintln!("bench: starting {} systems", systems.len());
    let phase = Phases::new();
    let mut bed = Bed::new(&BedOptions {
        tools,
        systems,
        baseline,
        body_bytes: BODY_BYTES as usize,
        client_cpu: CLIENT_CPU,
        sut_cpu: SUT_CPU,
    })
    .context("starting the bed: namespaces, upstreams, DNS and every system")?;
    for system in &bed.systems {
        serves_the_primary(&bed, system)?;
    }
    phase.done("the bed up, every system serving the primary");
    let mut report = BenchReport {
        settings: settings.clone(),
        ..Default::default()
    };
    if !args.no_pods && bed.pods.is_some() {
        let plan = pods::Plan {
            steps: if settings.quick {
                vec![10]
            } else {
                vec![10, 50]
            },
            deadline: Duration::from_secs(10),
        };
        let run = pods::run(&bed, &plan).context("the pod scenarios")?;
        phase.done(&format!("the pod scenarios ({} pods)", run.starts.len()));
        report.pods = Some(run);
    }
    if systems.contains(&SystemId::RedirectorPod) {
        bed.start_pod_client().context("starting the pod row")?;
        let system = bed
            .system(SystemId::RedirectorPod)
            .context("the pod row started")?;
        serves_the_primary(&bed, system)?;
        phase.done("the pod row serving the primary");
    }
    let mut workloads = workloads(settings.quick);
    if !args.workloads.is_empty() {
        workloads.retain(|w| args.workloads.iter().any(|f| w.key().contains(f.as_str())));
    }
    for system in systems {
        for w in &workloads {
            if let Some(reason) = system.unavailable(w) {
                report.not_available.push(NotAvailable {
                    system: *system,
                    workload: *w,
                    reason: reason.into(),
                });
            }
        }
    }
    let total = settings.reps as usize
        * workloads
            .iter()
            .map(|w| {
                bed.systems
                    .iter()
                    .filter(|s| s.id.unavailable(w).is_none())
                    .count()
            })
            .sum::<usize>();
    let mut done = 0;
    for rep in 0..settings.reps {
        for workload in &workloads {
            for system in &bed.systems {
                if system.id.unavailable(workload).is_some() {
                    continue;
                }
                done += 1;
                let run = cell_run(&bed, tools, system, *workload, rep, &settings).with_context(
                    || {
                        format!(
                            "cell {done}/{total}: rep {rep} of {workload} through {}\n{}",
                            system.id,
                            system.log()
                        )
                    },
                )?;
                let result = &run.load;
                let handshakes = run
                    .upstream_tls
                    .as_ref()
                    .and_then(UpstreamTls::per_krequests)
                    .map(|(full, resumed)| {
                        format!(
                            ", upstream TLS handshakes/1000 req {full:.2} full {resumed:.2} resumed"
                        )
                    })
                    .unwrap_or_default();
                eprintln!(
                    "bench [{done}/{total}] rep {rep} {workload} {}: {:.0} rps, p50 {:.3} ms, p99 {:.3} ms, {} errors, cpu/krps {}{handshakes}{}",
                    system.id,
                    result.rps,
                    result.p50_ms,
                    result.p99_ms,
                    result.errors,
                    run.sample
                        .cpu_per_krps(result.rps)
                        .map_or_else(|| "-".into(), |c| format!("{c:.3}")),
                    if run.noisy { " (noisy)" } else { "" }
                );
                report.cells.push(run);
            }
        }
    }
    phase.done(&format!("{total} cells"));
    if !args.no_failover {
        report.failover = failovers(&bed, settings.quick)?;
        phase.done(&format!("{} failover runs", report.failover.len()));
    }
    if !args.no_fail_open {
        report.fail_open = fail_opens(&bed, settings.quick)?;
        phase.done(&format!("{} fail-open runs", report.fail_open.len()));
    }
    report.machine = machine::info(tools, baseline).context("reading the machine's details")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    let written = report::write(&report, &out)
        .with_context(|| format!("writing the results to {}", out.display()))?;
    println!("{}", report::markdown(&report));
    eprintln!(
        "bench: wrote {}, {} and {}",
        written.json.display(),
        written.markdown.display(),
        written.plot.display()
    );
    Ok(())
}

/// Until `system` answers from the primary (east) through each of its
/// services, within [`wait::READY`]: its first answers may still be
/// errors, or the backup's, while it starts (a DNS service has no
/// endpoint until its names resolve; HAProxy marks the primary down if
/// its first health check times out).
fn serves_the_primary(bed: &Bed, system: &System) -> Result<()> {
    for upstream in [Upstream::Plain, Upstream::Tls] {
        if system.id == SystemId::RedirectorFastPath && upstream == Upstream::Tls {
            continue;
        }
        let what = format!("{} ({upstream:?}) to answer from the primary", system.id);
        wait::until(&what, wait::READY, Duration::from_millis(200), || {
            Ok(match bed.probe(system, upstream) {
                Ok(body) if body.starts_with("healthy: east") => Seen::Ready(()),
                Ok(body) => Seen::Not(format!("the answer {:?}", first_line(&body))),
                Err(err) => Seen::Not(format!("{err:#}")),
            })
        })
        .with_context(|| format!("{}\n{}", system.id, system.log()))?;
    }
    Ok(())
}

/// The first line of an answer (`healthy: west`, `503 from east`,
/// `no healthy upstream`), without the padding of the body.
fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or_default()
}

/// One repetition of one cell: the warm-up, then the measured run with
/// the system's CPU and memory, and for TLS cells the HTTPS upstreams'
/// counters, around it.
fn cell_run(
    bed: &Bed,
    tools: &Tools,
    system: &System,
    workload: Workload,
    rep: u32,
    settings: &RunSettings,
) -> Result<CellRun> {
    let (target, host, https) = system.target(workload.upstream);
    let spec = |duration| load::LoadSpec {
        target,
        host,
        https,
        workload,
        duration,
    };
    let app = load::App {
        command: &|program| system.app_command(&bed.bench, program),
        place: system.app_place(&bed.bench),
    };
    let warmup = Duration::from_secs_f64(settings.warmup_secs);
    if !warmup.is_zero() {
        load::observe(tools, &spec(warmup), &app, CLIENT_CPU).context("the warm-up")?;
    }
    // The HTTPS upstreams' counters around the measured run: the
    // handshakes this system made (or, direct, the load generator made)
    // with its pool warmed up.
    let tls_before = (workload.upstream == Upstream::Tls)
        .then(|| bed.upstreams.tls_stats())
        .transpose()
        .context("the HTTPS upstreams' counters before the run")?;
    let probe = sample::Probe::start(&system.pids()).context("sampling /proc before the run")?;
    let cell = Duration::from_secs_f64(settings.cell_secs);
    let observed =
        load::observe(tools, &spec(cell), &app, CLIENT_CPU).context("the measured run")?;
    let sample = probe.finish().context("sampling /proc after the run")?;
    let upstream_tls = match tls_before {
        Some(before) => Some(upstream_tls(
            &bed.upstreams
                .tls_stats()
                .context("the HTTPS upstreams' counters after the run")?
                .since(&before),
        )),
        None => None,
    };
    // Every system must carry the whole 1 KiB body (wrk also counts the
    // status line and headers).
    if let Some(bytes) = observed.bytes_per_response
        && bytes < f64::from(BODY_BYTES)
    {
        bail!(
            "{} {workload}: {bytes:.0} bytes per response, not the {BODY_BYTES}-byte body",
            system.id
        );
    }
    let noisy = sample::is_noisy(&sample, settings.noise_threshold);
    Ok(CellRun {
        system: system.id,
        workload,
        rep,
        load: observed.result,
        sample,
        noisy,
        upstream_tls,
    })
}

/// How long each phase of the run took, said as it ends (where the time
/// of a run goes, quick or not).
struct Phases {
    start: Cell<Instant>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            start: Cell::new(Instant::now()),
        }
    }

    fn done(&self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "bench: {what} in {:.1} s",
            (now - self.start.get()).as_secs_f64()
        );
        self.start.set(now);
    }
}

/// The report's view of the HTTPS upstreams' counters over one run.
fn upstream_tls(d: &UpstreamStats) -> UpstreamTls {
    UpstreamTls {
        requests: d.requests,
        connections: d.connections,
        full: d.tls_full_used,
        resumed: d.tls_resumed_used,
        all_full: d.tls_full,
        all_resumed: d.tls_resumed,
        hello_retries: d.tls_hello_retry,
        failed: d.tls_failed,
    }
}

fn failovers(bed: &Bed, quick: bool) -> Result<Vec<model::FailoverRun>> {
    let plan = if quick {
        failover::Plan {
            rps: 200,
            duration: Duration::from_secs(7),
            fault_at: Duration::from_secs(1),
            restore_at: Duration::from_secs(2),
            timeout: Duration::from_secs(15),
        }
    } else {
        failover::Plan {
            rps: 500,
            // Long enough after the restore for a second ejection (the
            // base time doubled, as in Envoy) to run out.
            duration: Duration::from_secs(16),
            fault_at: Duration::from_secs(2),
            restore_at: Duration::from_secs(6),
            timeout: Duration::from_secs(15),
        }
    };
    let mut runs = Vec::new();
    // Not the fast path: these faults measure retries and 5xx ejection,
    // which the kernel path does not do by design (it cannot retry a
    // connect nor see an HTTP status; docs/config-reference.md). Not the
    // pod row either: its proxy is the redirector's, already run.
    for system in bed.systems.iter().filter(|s| {
        s.id.is_proxy() && !matches!(s.id, SystemId::RedirectorFastPath | SystemId::RedirectorPod)
    }) {
        for fault in [Fault::Status503, Fault::Killed, Fault::BlackHoled] {
            // The smoke run does one fault per peer and all of them for us
            // (and the baseline).
            if quick && !system.id.is_redirector_proxy() && fault != Fault::Status503 {
                continue;
            }
            let run = failover::run(bed, system, fault, &plan).with_context(|| {
                format!("failover {fault:?} through {}\n{}", system.id, system.log())
            })?;
            eprintln!(
                "bench failover {} {fault:?}: {} errors, full failover {:?} ms, worst latency {:.1} ms (first 100 ms {:.1}, before the fault {:.1}), fail back {:?} ms",
                system.id,
                run.errors_after_fault,
                run.time_to_full_failover_ms.map(f64::round),
                run.worst_latency_after_fault_ms,
                run.worst_latency_first_100ms_ms,
                run.worst_latency_before_fault_ms,
                run.time_to_fail_back_ms.map(f64::round)
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

/// `kill -9` of each of the redirector's daemons under new-connection
/// load, and a new daemon taking over a few seconds later.
fn fail_opens(bed: &Bed, quick: bool) -> Result<Vec<model::FailOpenRun>> {
    let plan = if quick {
        failopen::Plan {
            rps: 200,
            duration: Duration::from_secs(4),
            kill_at: Duration::from_secs(1),
            restart_at: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        }
    } else {
        failopen::Plan {
            rps: 500,
            duration: Duration::from_secs(10),
            kill_at: Duration::from_secs(2),
            restart_at: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    };
    let mut runs = Vec::new();
    for system in bed.systems.iter().filter(|s| s.id.is_redirector()) {
        let run = failopen::run(bed, system, &plan)
            .with_context(|| format!("fail-open through {}\n{}", system.id, system.log()))?;
        eprintln!(
            "bench fail-open {}: {} failed connects, {} broken in flight, {} broken after the kill, {} other errors of {} requests; served while down {:?}; restart → ready {:.0} ms, → proxy serving {:?} ms; worst latency after the kill {:.1} ms (before {:.1})",
            system.id,
            run.failed_connects,
            run.broken_in_flight,
            run.broken_after_kill,
            run.other_errors,
            run.requests,
            run.served_while_down,
            run.ready_at_ms - run.restart_at_ms,
            run.restart_to_proxy_ms.map(f64::round),
            run.worst_latency_after_kill_ms,
            run.worst_latency_before_kill_ms,
        );
        runs.push(run);
    }
    Ok(runs)
}

/// Pins this process (and so every thread and child it makes later) to one
/// CPU.
fn pin_to(cpu: u32) -> Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) }
        != 0
    {
        bail!(
            "pinning the harness to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(filter: &[&str], baseline: bool) -> Result<Vec<&'static str>> {
        let filter: Vec<String> = filter.iter().map(|s| (*s).to_owned()).collect();
        Ok(selected_systems(&filter, baseline)?
            .into_iter()
            .map(SystemId::key)
            .collect())
    }

    #[test]
    fn the_baseline_runs_only_when_given() {
        let all = keys(&[], false).unwrap();
        assert_eq!(all.len(), SystemId::ALL.len() - 1);
        assert!(!all.contains(&"redirector-baseline"));
        let with = keys(&[], true).unwrap();
        assert_eq!(with[2..4], ["redirector", "redirector-baseline"]);
        assert_eq!(
            keys(&["redirector", "redirector-baseline"], true).unwrap(),
            ["redirector", "redirector-baseline"]
        );
    }

    #[test]
    fn the_pod_row_needs_the_redirector() {
        let err = keys(&["redirector-pod", "nginx"], false).unwrap_err();
        assert!(err.to_string().contains("name redirector too"), "{err}");
        assert_eq!(
            keys(&["redirector", "redirector-pod"], false).unwrap(),
            ["redirector", "redirector-pod"]
        );
        assert!(keys(&[], false).unwrap().contains(&"redirector-pod"));
    }

    #[test]
    fn a_baseline_left_out_or_missing_is_an_error() {
        let err = keys(&["redirector-baseline"], false).unwrap_err();
        assert!(err.to_string().contains("needs --baseline"), "{err}");
        let err = keys(&["redirector", "nginx"], true).unwrap_err();
        assert!(
            err.to_string().contains("leaves out redirector-baseline"),
            "{err}"
        );
        let err = keys(&["redirectr"], false).unwrap_err();
        assert!(err.to_string().contains("unknown system"), "{err}");
    }
}
