//! The failover run: a constant-rate client (`rdt-load`, one JSON line per
//! request) through one system, a fault injected into the primary at a
//! known time and removed later, and what the client saw.
//!
//! The same plan runs for every proxy, so "zero errors at failover" and
//! "how long until the primary is back in use" are compared like for like.

use std::{
    fs::File,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use redirector_tests::{process, upstream::bin_path};
use serde::Deserialize;

use super::{
    model::{FailoverRun, Fault, Upstream},
    topology::{Bed, System},
};

pub struct Plan {
    pub rps: u32,
    pub duration: Duration,
    pub fault_at: Duration,
    pub restore_at: Duration,
    /// Per-request timeout of the client (beyond the 10 s connect timeout).
    pub timeout: Duration,
}

/// One line of `rdt-load` output.
#[derive(Debug, Deserialize)]
pub struct Record {
    pub t_ms: f64,
    pub latency_ms: f64,
    pub status: u16,
    pub served_by: String,
}

impl Record {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub fn run(bed: &Bed, system: &System, fault: Fault, plan: &Plan) -> Result<FailoverRun> {
    heal(bed)?;
    wait_for_primary(bed, system)?;
    let out_path = bed
        .dir
        .path()
        .join(format!("failover-{}-{fault:?}.jsonl", system.id));
    let out = File::create(&out_path)?;
    let (target, host, _) = system.target(Upstream::Plain);
    let mut cmd = Command::new(bin_path("rdt-load")?);
    cmd.args([
        "--target",
        &target.to_string(),
        "--host",
        host,
        "--rps",
        &plan.rps.to_string(),
        "--duration",
        &plan.duration.as_secs_f64().to_string(),
        "--timeout",
        &plan.timeout.as_secs_f64().to_string(),
    ])
    .stdout(out)
    .stderr(Stdio::inherit());
    bed.bench.configure(&mut cmd);
    if let Some(cg) = &system.cgroup {
        cg.configure(&mut cmd);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting rdt-load")?;
    let result = (|| {
        sleep_until(start, plan.fault_at);
        inject(bed, fault)?;
        sleep_until(start, plan.restore_at);
        restore(bed, fault)
    })();
    let status = process::wait_timeout(
        &mut child,
        plan.duration + plan.timeout + Duration::from_secs(10),
    )?;
    if status.is_none() {
        process::kill_and_reap(&mut child);
    }
    result?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "rdt-load through {} failed ({status:?})",
        system.id
    );
    let text = std::fs::read_to_string(&out_path)?;
    let records: Vec<Record> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", out_path.display()))?;
    ensure!(!records.is_empty(), "rdt-load produced no requests");
    let mut run = analyze(&records, plan.fault_at, plan.restore_at);
    run.system = system.id;
    run.fault = fault;
    run.rps = plan.rps;
    Ok(run)
}

fn sleep_until(start: Instant, at: Duration) {
    if let Some(left) = at.checked_sub(start.elapsed()) {
        thread::sleep(left);
    }
}

fn inject(bed: &Bed, fault: Fault) -> Result<()> {
    let mut east = bed.upstreams.east_plain.lock().expect("east lock");
    match fault {
        Fault::Status503 => east.set_status(503),
        Fault::Killed => {
            east.kill();
            Ok(())
        }
        Fault::BlackHoled => bed.black_hole_east(true),
    }
}

/// Undoes `fault`.
fn restore(bed: &Bed, fault: Fault) -> Result<()> {
    let mut east = bed.upstreams.east_plain.lock().expect("east lock");
    match fault {
        Fault::Status503 => east.set_status(200),
        Fault::Killed => east.restart(),
        Fault::BlackHoled => bed.black_hole_east(false),
    }
}

/// Before a run: the primary answers 200 and is reachable, whatever an
/// earlier, aborted run left behind.
fn heal(bed: &Bed) -> Result<()> {
    bed.upstreams
        .east_plain
        .lock()
        .expect("east lock")
        .set_status(200)?;
    // Fails when there is no black-hole entry, which is the normal case.
    let _ = bed.black_hole_east(false);
    Ok(())
}

/// Waits until the system sends traffic to the primary again (it may
/// still have it ejected from the previous run).
fn wait_for_primary(bed: &Bed, system: &System) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streak = 0;
    while streak < 3 {
        let body = bed.probe(system, Upstream::Plain).unwrap_or_default();
        streak = if body.starts_with("healthy: east") {
            streak + 1
        } else {
            0
        };
        ensure!(
            Instant::now() < deadline,
            "{} did not return to the primary within 30 s; last answer {body:?}\n{}",
            system.id,
            system.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The figures of one run from its per-request records.
pub fn analyze(records: &[Record], fault_at: Duration, restore_at: Duration) -> FailoverRun {
    let fault_ms = fault_at.as_secs_f64() * 1000.0;
    let restore_ms = restore_at.as_secs_f64() * 1000.0;
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let by = |r: &Record, who: &str| r.ok() && r.served_by == who;
    let during: Vec<&&Record> = sorted
        .iter()
        .filter(|r| r.t_ms >= fault_ms && r.t_ms < restore_ms)
        .collect();
    // The first request from which every later one (until the restore) was
    // answered by the failover region.
    let mut full_failover = None;
    for r in during.iter().rev() {
        if by(r, "west") {
            full_failover = Some(r.t_ms - fault_ms);
        } else {
            break;
        }
    }
    let fail_back = sorted
        .iter()
        .find(|r| r.t_ms >= restore_ms && by(r, "east"))
        .map(|r| r.t_ms - restore_ms);
    let end_ms = sorted.last().map(|r| r.t_ms).unwrap_or(0.0);
    let buckets = (end_ms / 100.0) as usize + 1;
    let mut timeline = vec![(0u32, 0u32, 0u32); buckets];
    for r in &sorted {
        let b = &mut timeline[(r.t_ms / 100.0) as usize];
        match (r.ok(), r.served_by.as_str()) {
            (true, "east") => b.0 += 1,
            (true, "west") => b.1 += 1,
            _ => b.2 += 1,
        }
    }
    FailoverRun {
        system: super::model::SystemId::Redirector,
        fault: Fault::Status503,
        rps: 0,
        requests: records.len() as u64,
        fault_at_ms: fault_ms,
        restore_at_ms: restore_ms,
        errors_after_fault: sorted
            .iter()
            .filter(|r| r.t_ms >= fault_ms && !r.ok())
            .count() as u64,
        time_to_full_failover_ms: full_failover,
        worst_latency_after_fault_ms: during.iter().map(|r| r.latency_ms).fold(0.0, f64::max),
        time_to_fail_back_ms: fail_back,
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t_ms: f64, latency_ms: f64, status: u16, served_by: &str) -> Record {
        Record {
            t_ms,
            latency_ms,
            status,
            served_by: served_by.into(),
        }
    }

    #[test]
    fn figures_of_a_failover_with_one_error() {
        let records = vec![
            rec(0.0, 0.2, 200, "east"),
            rec(900.0, 0.2, 200, "east"),
            rec(1000.0, 0.3, 503, "east"), // first request after the fault
            rec(1100.0, 5.0, 200, "west"),
            rec(1500.0, 0.4, 200, "west"),
            rec(2100.0, 0.2, 200, "west"), // after the restore, still west
            rec(2600.0, 0.2, 200, "east"), // back
        ];
        let run = analyze(&records, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(run.requests, 7);
        assert_eq!(run.errors_after_fault, 1);
        assert_eq!(run.time_to_full_failover_ms, Some(100.0));
        assert_eq!(run.worst_latency_after_fault_ms, 5.0);
        assert_eq!(run.time_to_fail_back_ms, Some(600.0));
        assert_eq!(run.timeline[0], (1, 0, 0));
        assert_eq!(run.timeline[10], (0, 0, 1));
        assert_eq!(run.timeline[11], (0, 1, 0));
    }

    #[test]
    fn never_failing_over_or_back_is_none() {
        let records = vec![
            rec(0.0, 0.2, 200, "east"),
            rec(1200.0, 0.2, 503, "east"),
            rec(1900.0, 0.2, 200, "west"),
            rec(1950.0, 0.2, 503, "east"), // the last one before the restore failed
            rec(2500.0, 0.2, 200, "west"),
        ];
        let run = analyze(&records, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(run.time_to_full_failover_ms, None);
        assert_eq!(run.time_to_fail_back_ms, None);
        assert_eq!(run.errors_after_fault, 2);
    }
}
