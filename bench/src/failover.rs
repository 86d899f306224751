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

use crate::{
    model::{FailoverRun, Fault, SystemId, Upstream},
    topology::{Bed, System},
    wait::{self, Seen},
};

pub(crate) struct Plan {
    pub rps: u32,
    pub duration: Duration,
    pub fault_at: Duration,
    pub restore_at: Duration,
    /// Per-request timeout of the client (beyond the 10 s connect timeout).
    pub timeout: Duration,
}

/// One line of `rdt-load` output.
#[derive(Debug, Deserialize)]
pub(crate) struct Record {
    /// When the request was due, on the wall clock.
    pub at_unix_ms: f64,
    pub latency_ms: f64,
    pub status: u16,
    pub served_by: String,
    /// What went wrong, if anything.
    #[serde(default)]
    pub error: String,
    /// When it finished or was given up, on the wall clock.
    #[serde(default)]
    pub done_unix_ms: f64,
    /// When its connection called `connect()` (the connect hook chose its
    /// way then), on the wall clock; None if it did not.
    #[serde(default)]
    pub connect_unix_ms: Option<f64>,
    /// When its connection was established, on the wall clock; None if it
    /// never was.
    #[serde(default)]
    pub connected_unix_ms: Option<f64>,
    /// That connection's peer address as the app sees it ("" if none).
    #[serde(default)]
    pub peer: String,
    /// That connection's local address ("" if none).
    #[serde(default)]
    pub local: String,
}

impl Record {
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How `rdt-load` is run.
pub(crate) struct LoadPlan {
    pub rps: u32,
    pub duration: Duration,
    pub timeout: Duration,
    /// A new connection per request (`--new-connections`).
    pub new_connections: bool,
}

/// `rdt-load` running as the app of `system`, writing to `out_path`.
pub(crate) struct Load {
    child: std::process::Child,
    out_path: std::path::PathBuf,
    limit: Duration,
    system: SystemId,
    /// When it was started.
    pub start: Instant,
}

impl Load {
    pub(crate) fn start(
        bed: &Bed,
        system: &System,
        plan: &LoadPlan,
        out_path: std::path::PathBuf,
    ) -> Result<Load> {
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
        if plan.new_connections {
            cmd.arg("--new-connections");
        }
        bed.bench.configure(&mut cmd);
        if let Some(cg) = &system.cgroup {
            cg.configure(&mut cmd);
        }
        let start = Instant::now();
        let child = cmd.spawn().context("starting rdt-load")?;
        Ok(Load {
            child,
            out_path,
            limit: plan.duration + plan.timeout + Duration::from_secs(10),
            system: system.id,
            start,
        })
    }

    /// Waits for the client to finish and reads its records.
    pub(crate) fn finish(mut self) -> Result<Vec<Record>> {
        let status = process::wait_timeout(&mut self.child, self.limit)?;
        if status.is_none() {
            process::kill_and_reap(&mut self.child);
        }
        ensure!(
            status.is_some_and(|s| s.success()),
            "rdt-load through {} failed ({status:?})",
            self.system
        );
        let text = std::fs::read_to_string(&self.out_path)?;
        let records: Vec<Record> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", self.out_path.display()))?;
        ensure!(!records.is_empty(), "rdt-load produced no requests");
        Ok(records)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Unless finished: a fault that failed must not leave it running.
        process::kill_and_reap(&mut self.child);
    }
}

pub(crate) fn run(bed: &Bed, system: &System, fault: Fault, plan: &Plan) -> Result<FailoverRun> {
    heal(bed)?;
    wait_for_primary(bed, system)?;
    let load = Load::start(
        bed,
        system,
        &LoadPlan {
            rps: plan.rps,
            duration: plan.duration,
            timeout: plan.timeout,
            new_connections: false,
        },
        bed.dir
            .path()
            .join(format!("failover-{}-{fault:?}.jsonl", system.id)),
    )?;
    let start = load.start;
    // The moments of the fault and the restore, on the wall clock the
    // client stamps its requests with.
    let result = (|| -> Result<(f64, f64)> {
        sleep_until(start, plan.fault_at);
        let fault_at = unix_ms();
        inject(bed, fault)?;
        sleep_until(start, plan.restore_at);
        let restore_at = unix_ms();
        restore(bed, fault)?;
        Ok((fault_at, restore_at))
    })();
    let records = load.finish();
    let (fault_at, restore_at) = result?;
    let records = records?;
    let mut run = analyze(&records, fault_at, restore_at);
    run.system = system.id;
    run.fault = fault;
    run.rps = plan.rps;
    Ok(run)
}

pub(crate) fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

pub(crate) fn sleep_until(start: Instant, at: Duration) {
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
pub(crate) fn heal(bed: &Bed) -> Result<()> {
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
/// still have it ejected from the previous run): three answers in a row
/// from east, within [`wait::READY`].
pub(crate) fn wait_for_primary(bed: &Bed, system: &System) -> Result<()> {
    let mut streak = 0;
    let what = format!("{} to answer from the primary 3 times in a row", system.id);
    wait::until(&what, wait::READY, Duration::from_millis(200), || {
        let body = bed.probe(system, Upstream::Plain);
        Ok(match body {
            Ok(body) if body.starts_with("healthy: east") => {
                streak += 1;
                if streak == 3 {
                    Seen::Ready(())
                } else {
                    Seen::Not(format!("{streak} in a row"))
                }
            }
            Ok(body) => {
                streak = 0;
                Seen::Not(format!(
                    "the answer {:?}",
                    body.lines().next().unwrap_or("")
                ))
            }
            Err(err) => {
                streak = 0;
                Seen::Not(format!("{err:#}"))
            }
        })
    })
}

/// The figures of one run from its per-request records; the fault and the
/// restore are wall-clock times (unix ms). Times in the result count from
/// the client's first request.
pub(crate) fn analyze(records: &[Record], fault_unix_ms: f64, restore_unix_ms: f64) -> FailoverRun {
    let origin = records
        .iter()
        .map(|r| r.at_unix_ms)
        .fold(f64::INFINITY, f64::min);
    let t = |r: &Record| r.at_unix_ms - origin;
    let fault_ms = fault_unix_ms - origin;
    let restore_ms = restore_unix_ms - origin;
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| a.at_unix_ms.total_cmp(&b.at_unix_ms));
    let by = |r: &Record, who: &str| r.ok() && r.served_by == who;
    let during: Vec<&Record> = sorted
        .iter()
        .copied()
        .filter(|r| t(r) >= fault_ms && t(r) < restore_ms)
        .collect();
    // The first request from which every later one (until the restore) was
    // answered by the failover region.
    let mut full_failover = None;
    for r in during.iter().rev() {
        if by(r, "west") {
            full_failover = Some(t(r) - fault_ms);
        } else {
            break;
        }
    }
    let fail_back = sorted
        .iter()
        .find(|r| t(r) >= restore_ms && by(r, "east"))
        .map(|r| t(r) - restore_ms);
    let end_ms = sorted.last().map_or(0.0, |r| t(r));
    let mut timeline = vec![(0u32, 0u32, 0u32); (end_ms / 100.0) as usize + 1];
    for r in &sorted {
        let b = &mut timeline[(t(r) / 100.0) as usize];
        match (r.ok(), r.served_by.as_str()) {
            (true, "east") => b.0 += 1,
            (true, "west") => b.1 += 1,
            _ => b.2 += 1,
        }
    }
    FailoverRun {
        system: SystemId::Redirector,
        fault: Fault::Status503,
        rps: 0,
        requests: records.len() as u64,
        fault_at_ms: fault_ms,
        restore_at_ms: restore_ms,
        errors_after_fault: sorted
            .iter()
            .filter(|r| t(r) >= fault_ms && !r.ok())
            .count() as u64,
        time_to_full_failover_ms: full_failover,
        worst_latency_after_fault_ms: worst(&during),
        worst_latency_first_100ms_ms: worst(
            &sorted
                .iter()
                .copied()
                .filter(|r| t(r) >= fault_ms && t(r) < fault_ms + 100.0)
                .collect::<Vec<_>>(),
        ),
        worst_latency_before_fault_ms: worst(
            &sorted
                .iter()
                .copied()
                .filter(|r| t(r) < fault_ms)
                .collect::<Vec<_>>(),
        ),
        time_to_fail_back_ms: fail_back,
        timeline,
    }
}

fn worst(records: &[&Record]) -> f64 {
    records.iter().map(|r| r.latency_ms).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests of a client that started at unix time 1e12 ms.
    const T0: f64 = 1e12;

    fn rec(t_ms: f64, latency_ms: f64, status: u16, served_by: &str) -> Record {
        Record {
            at_unix_ms: T0 + t_ms,
            latency_ms,
            status,
            served_by: served_by.into(),
            error: String::new(),
            done_unix_ms: T0 + t_ms + latency_ms,
            connect_unix_ms: None,
            connected_unix_ms: None,
            peer: String::new(),
            local: String::new(),
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
        let run = analyze(&records, T0 + 1000.0, T0 + 2000.0);
        assert_eq!(run.requests, 7);
        assert_eq!(run.errors_after_fault, 1);
        assert_eq!(run.time_to_full_failover_ms, Some(100.0));
        assert_eq!(run.worst_latency_after_fault_ms, 5.0);
        assert_eq!(run.worst_latency_first_100ms_ms, 0.3);
        assert_eq!(run.worst_latency_before_fault_ms, 0.2);
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
        let run = analyze(&records, T0 + 1000.0, T0 + 2000.0);
        assert_eq!(run.time_to_full_failover_ms, None);
        assert_eq!(run.time_to_fail_back_ms, None);
        assert_eq!(run.errors_after_fault, 2);
    }
}
