//! CPU and memory accounting from /proc, around each run of each cell.
//!
//! Three numbers matter: the CPU of the system under test (its processes'
//! utime+stime), the whole machine's busy and steal time, and "foreign" CPU:
//! busy time nobody in this harness spent. The harness's own share includes
//! reaped children (`cutime`/`cstime`), so a load generator that ran and
//! exited inside the cell is not mistaken for noise.

use std::{
    collections::HashMap,
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::model::Sample;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_sec() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `/proc/stat` totals: (busy, steal) in ticks, all CPUs.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(v.len() >= 8, "unexpected /proc/stat line {line:?}");
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok((busy, v[7]))
}

/// Fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|x| x.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect(),
    )
}

/// (ppid, utime+stime, cutime+cstime) of a process.
fn proc_times(pid: u32) -> Option<(u32, u64, u64)> {
    let f = stat_fields(pid)?;
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    Some((f.get(1).copied()? as u32, f[11] + f[12], f[13] + f[14]))
}

/// utime+stime of `pids`, in ticks.
fn cpu_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| proc_times(p))
        .map(|(_, own, _)| own)
        .sum()
}

/// This process, its live descendants, and everything it has reaped.
fn harness_ticks() -> u64 {
    let me = std::process::id();
    let mut parents: HashMap<u32, u32> = HashMap::new();
    let mut own: HashMap<u32, u64> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((ppid, cpu, _)) = proc_times(pid) {
                parents.insert(pid, ppid);
                own.insert(pid, cpu);
            }
        }
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            match parents.get(&pid) {
                Some(&pp) if pp != 0 => pid = pp,
                _ => return false,
            }
        }
        false
    };
    let live: u64 = own
        .iter()
        .filter(|(pid, _)| **pid != me && descends(**pid))
        .map(|(_, c)| c)
        .sum();
    let (_, mine, reaped) = proc_times(me).unwrap_or_default();
    live + mine + reaped
}

/// Sum of VmHWM (peak resident set) of `pids`, KiB.
pub(crate) fn peak_rss_kib(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            total += kib;
            any = true;
        }
    }
    any.then_some(total)
}

/// Sum of VmRSS of `pids`, KiB.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    let mut total = None;
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
        total = Some(total.unwrap_or(0) + kib);
    }
    total
}

/// Polls the SUT's RSS every 50 ms and keeps the largest value.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(&pids) {
                    m.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self { stop, max, thread }
    }

    fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        Some(self.max.load(Ordering::Relaxed)).filter(|&k| k > 0)
    }
}

/// A snapshot taken before a run; [`Probe::finish`] turns it into a
/// [`Sample`] of the interval.
pub(crate) struct Probe {
    sut: Vec<u32>,
    sut_ticks: u64,
    harness: u64,
    busy: u64,
    steal: u64,
    rss: Option<RssSampler>,
    start: Instant,
}

impl Probe {
    /// `sut`: every process of the system under test (empty for the direct
    /// rows).
    pub(crate) fn start(sut: &[u32]) -> Result<Self> {
        let (busy, steal) = machine_ticks()?;
        Ok(Self {
            sut: sut.to_vec(),
            sut_ticks: cpu_of(sut),
            harness: harness_ticks(),
            busy,
            steal,
            rss: (!sut.is_empty()).then(|| RssSampler::start(sut.to_vec())),
            start: Instant::now(),
        })
    }

    pub(crate) fn finish(self) -> Result<Sample> {
        let wall_secs = self.start.elapsed().as_secs_f64();
        let sut_rss_kib = self.rss.and_then(RssSampler::finish);
        let (busy, steal) = machine_ticks()?;
        let tps = ticks_per_sec();
        let busy_secs = busy.saturating_sub(self.busy) as f64 / tps;
        // The SUT is a child of this harness, so it is inside `harness`.
        let ours = harness_ticks().saturating_sub(self.harness) as f64 / tps;
        let has_sut = !self.sut.is_empty();
        Ok(Sample {
            sut_cpu_secs: has_sut
                .then(|| cpu_of(&self.sut).saturating_sub(self.sut_ticks) as f64 / tps),
            machine_busy_secs: busy_secs,
            steal_secs: steal.saturating_sub(self.steal) as f64 / tps,
            foreign_cpu_secs: (busy_secs - ours).max(0.0),
            sut_peak_rss_kib: if has_sut {
                peak_rss_kib(&self.sut)
            } else {
                None
            },
            sut_rss_kib,
            wall_secs,
        })
    }
}

/// Whether a run was disturbed: steal or foreign CPU above `threshold` of
/// one core over its wall time.
pub(crate) fn is_noisy(s: &Sample, threshold: f64) -> bool {
    s.wall_secs > 0.0
        && (s.steal_secs / s.wall_secs > threshold || s.foreign_cpu_secs / s.wall_secs > threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's CPU seconds so far, itself and reaped children.
    fn own_cpu() -> (f64, f64) {
        let (_, own, children) = proc_times(std::process::id()).unwrap();
        let tps = ticks_per_sec();
        (own as f64 / tps, children as f64 / tps)
    }

    // Both tests measure CPU time, not wall time, and compare what the
    // probe attributes to us with what we know we burned: other processes
    // on a busy machine only add to `foreign`, never to ours.

    #[test]
    fn own_cpu_is_counted_as_the_systems_and_not_foreign() {
        let probe = Probe::start(&[std::process::id()]).unwrap();
        let (start, _) = own_cpu();
        let mut x = 0u64;
        while own_cpu().0 - start < 0.2 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let s = probe.finish().unwrap();
        let sut = s.sut_cpu_secs.unwrap();
        assert!(sut >= 0.19, "{s:?}");
        assert!(s.sut_peak_rss_kib.unwrap() > 0);
        assert!(s.sut_rss_kib.unwrap() > 0);
        // What we burned is in the machine's busy time but not foreign.
        assert!(s.machine_busy_secs - s.foreign_cpu_secs >= 0.15, "{s:?}");
    }

    #[test]
    fn reaped_children_count_as_ours() {
        let probe = Probe::start(&[]).unwrap();
        let (_, before) = own_cpu();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let (_, after) = own_cpu();
        let s = probe.finish().unwrap();
        assert_eq!(s.sut_cpu_secs, None);
        let child = after - before;
        assert!(child >= 0.1, "the child burned only {child} s");
        // The child's CPU is ours: busy minus foreign covers it, however
        // busy the rest of the machine was. /proc/stat counts in ticks and
        // the kernel's per-task times are precise, so under load the two
        // drift apart by a few percent (seen: 0.68 s of busy-minus-foreign
        // for a 0.71 s child); uncounted children would leave ~0.
        assert!(
            s.machine_busy_secs - s.foreign_cpu_secs >= child * 0.9 - 0.03,
            "child {child} s, {s:?}"
        );
    }
}
