//! The fail-open run: a constant-rate client opening a new connection per
//! request to the VIP, the redirector's daemon killed with SIGKILL at a
//! known time and a new one started on the same pinned state a few seconds
//! later, and what the client saw.
//!
//! New connections per request, because that is what fail-open promises:
//! while no daemon runs, connect4 sends new connects straight to an
//! endpoint from the slot table the dead daemon published, and the new
//! daemon takes over without a moment where a connect fails. Connections
//! the proxy was carrying when it died break, and nothing can save them;
//! they are counted apart from the new connections that failed, which is
//! what the target counts. `rdt-load` records each connection's local
//! address, which tells apart a request the proxy carried (the app's end
//! is on loopback, like the listener it reached) from one the kernel sent
//! straight to an endpoint (the namespace's own address). Its peer address
//! cannot: getpeername4 shows the app the VIP either way.
//!
//! It runs for the redirector (proxy datapath) and its kernel fast path
//! (which should not notice). The peers have no such mode: with their
//! process gone, nothing answers.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use anyhow::{Context, Result};

use crate::{
    failover::{self, Load, LoadPlan, Record, sleep_until, unix_ms},
    model::{FailOpenRun, SystemId},
    topology::{Bed, System},
};

pub(crate) struct Plan {
    pub rps: u32,
    pub duration: Duration,
    pub kill_at: Duration,
    pub restart_at: Duration,
    /// Per-request timeout of the client.
    pub timeout: Duration,
}

/// The moments of one run on the wall clock (unix ms), as the client
/// stamps its requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moments {
    pub kill: f64,
    pub dead: f64,
    pub restart: f64,
    pub ready: f64,
}

pub(crate) fn run(bed: &Bed, system: &System, plan: &Plan) -> Result<FailOpenRun> {
    failover::heal(bed)?;
    failover::wait_for_primary(bed, system)?;
    let proxy = system
        .proxy_addr()
        .with_context(|| format!("{} has no daemon of its own", system.id))?;
    let load = Load::start(
        bed,
        system,
        &LoadPlan {
            rps: plan.rps,
            duration: plan.duration,
            timeout: plan.timeout,
            new_connections: true,
        },
        bed.dir
            .path()
            .join(format!("fail-open-{}.jsonl", system.id)),
    )?;
    let start = load.start;
    let moments = (|| -> Result<(Moments, String)> {
        sleep_until(start, plan.kill_at);
        let kill = unix_ms();
        system.kill_daemon()?;
        let dead = unix_ms();
        // What `redirector endpoints` says while no daemon runs, for the log.
        let path = bed.path_now(system)?;
        sleep_until(start, plan.restart_at);
        let restart = unix_ms();
        bed.restart_daemon(system)?;
        let ready = unix_ms();
        Ok((
            Moments {
                kill,
                dead,
                restart,
                ready,
            },
            path,
        ))
    })();
    let records = load.finish();
    let (moments, path) = moments.context("killing the daemon and starting another")?;
    let records = records?;
    eprintln!(
        "bench fail-open {}: with the daemon dead, `redirector endpoints` said the path is {path:?}",
        system.id
    );
    // The failures themselves, for whoever has to explain them.
    let origin = records
        .iter()
        .map(|r| r.at_unix_ms)
        .fold(f64::INFINITY, f64::min);
    let since_kill = |t: f64| t - moments.kill;
    for r in records.iter().filter(|r| !r.ok()).take(10) {
        eprintln!(
            "bench fail-open {}: failed request due {:.1} ms after the kill (kill at {:.0} ms, reaped +{:.1}, restart +{:.1}, ready +{:.1}), connect() {}, connected {}, done +{:.1} ms, peer {:?} from {:?}, status {}: {}",
            system.id,
            since_kill(r.at_unix_ms),
            moments.kill - origin,
            since_kill(moments.dead),
            since_kill(moments.restart),
            since_kill(moments.ready),
            r.connect_unix_ms
                .map_or_else(|| "never".into(), |c| format!("+{:.1} ms", since_kill(c))),
            r.connected_unix_ms
                .map_or_else(|| "never".into(), |c| format!("+{:.1} ms", since_kill(c))),
            since_kill(r.done_unix_ms),
            r.peer,
            r.local,
            r.status,
            r.error
        );
    }
    let mut run = analyze(&records, &moments, proxy);
    if run.new_connection_errors() + run.broken_in_flight > 0 {
        // What the new daemon said about them (e.g. no endpoint resolved
        // yet).
        for line in system
            .log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
        {
            eprintln!("bench fail-open {}: new daemon: {line}", system.id);
        }
    }
    run.system = system.id;
    run.rps = plan.rps;
    Ok(run)
}

/// Which way a request's connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// To a daemon's proxy listener.
    Proxy,
    /// Straight to an endpoint: connect4 rewrote the VIP to it.
    Kernel,
    /// Nowhere: the connect failed.
    None,
}

fn via(r: &Record, proxy: SocketAddrV4) -> Via {
    match r.local.parse::<SocketAddrV4>() {
        Err(_) => Via::None,
        _ if r.connected_unix_ms.is_none() => Via::None,
        // A connect to the listener leaves from the listener's address.
        Ok(local) if local.ip() == proxy.ip() => Via::Proxy,
        Ok(_) => Via::Kernel,
    }
}

/// The figures of one run from its per-request records. Times in the
/// result count from the client's first request.
pub(crate) fn analyze(records: &[Record], m: &Moments, proxy: SocketAddrV4) -> FailOpenRun {
    let origin = records
        .iter()
        .map(|r| r.at_unix_ms)
        .fold(f64::INFINITY, f64::min);
    let mut failed_connects = 0;
    let mut broken_in_flight = 0;
    let mut broken_after_kill = 0;
    let mut other_errors = 0;
    let mut served_while_down = BTreeMap::new();
    let mut first_proxy_after_restart: Option<f64> = None;
    let (mut worst_before, mut worst_after) = (0.0f64, 0.0f64);
    let end = records
        .iter()
        .map(|r| r.at_unix_ms - origin)
        .fold(0.0, f64::max);
    let mut timeline = vec![(0u32, 0u32, 0u32); (end / 100.0) as usize + 1];
    for r in records {
        let path = via(r, proxy);
        let bucket = &mut timeline[((r.at_unix_ms - origin) / 100.0) as usize];
        if r.at_unix_ms < m.kill {
            worst_before = worst_before.max(r.latency_ms);
        } else {
            worst_after = worst_after.max(r.latency_ms);
        }
        if r.ok() {
            match path {
                Via::Proxy => bucket.0 += 1,
                _ => bucket.1 += 1,
            }
            if (m.kill..m.ready).contains(&r.at_unix_ms) {
                let name = match path {
                    Via::Proxy => "proxy",
                    _ => "kernel",
                };
                *served_while_down
                    .entry(format!("{name}/{}", r.served_by))
                    .or_insert(0) += 1;
            }
            if path == Via::Proxy
                && let Some(c) = r.connected_unix_ms
                && c >= m.restart
            {
                let served = c - m.restart;
                first_proxy_after_restart =
                    Some(first_proxy_after_restart.map_or(served, |f| f.min(served)));
            }
            continue;
        }
        bucket.2 += 1;
        // When connect4 chose the way: at the `connect()` call.
        let decided = r.connect_unix_ms.or(r.connected_unix_ms);
        match (path, decided) {
            (Via::None, _) | (_, None) => failed_connects += 1,
            // Sent to the proxy before the kill, and still waiting then.
            (Via::Proxy, Some(d)) if d < m.kill && r.done_unix_ms >= m.kill && r.status == 0 => {
                broken_in_flight += 1;
            }
            // Sent after the kill to the killed proxy, whose listener the
            // kernel had not closed yet (the new daemon was not started).
            (Via::Proxy, Some(d)) if (m.kill..m.restart).contains(&d) && r.status == 0 => {
                broken_after_kill += 1;
            }
            _ => other_errors += 1,
        }
    }
    FailOpenRun {
        system: SystemId::Redirector,
        rps: 0,
        requests: records.len() as u64,
        kill_at_ms: m.kill - origin,
        dead_at_ms: m.dead - origin,
        restart_at_ms: m.restart - origin,
        ready_at_ms: m.ready - origin,
        failed_connects,
        broken_in_flight,
        broken_after_kill,
        other_errors,
        served_while_down,
        restart_to_proxy_ms: first_proxy_after_restart,
        worst_latency_before_kill_ms: worst_before,
        worst_latency_after_kill_ms: worst_after,
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The client started at unix time 1e12 ms.
    const T0: f64 = 1e12;
    const PROXY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001);
    /// The app's end of a connection to the proxy's listener.
    const VIA_PROXY: &str = "127.0.0.1:40000";
    /// The app's end of a connection connect4 sent to an endpoint.
    const VIA_KERNEL: &str = "10.213.1.1:40000";

    /// A request due at `t_ms`, issued 0.5 ms late (the client's timer),
    /// calling `connect()` then and connected `connected` ms after it was
    /// due, from the local address `local` (None: the connect failed).
    fn rec(t_ms: f64, latency_ms: f64, status: u16, connected: Option<(f64, &str)>) -> Record {
        Record {
            at_unix_ms: T0 + t_ms,
            latency_ms,
            status,
            served_by: if status == 200 {
                "east".into()
            } else {
                "".into()
            },
            error: String::new(),
            done_unix_ms: T0 + t_ms + 0.5 + latency_ms,
            connect_unix_ms: Some(T0 + t_ms + 0.5),
            connected_unix_ms: connected.map(|(c, _)| T0 + t_ms + c),
            // What getpeername4 shows the app, whatever the path.
            peer: connected
                .map(|_| "240.240.151.69:80".to_owned())
                .unwrap_or_default(),
            local: connected.map(|(_, l)| l.to_owned()).unwrap_or_default(),
        }
    }

    fn moments() -> Moments {
        Moments {
            kill: T0 + 1000.0,
            dead: T0 + 1005.0,
            restart: T0 + 3000.0,
            ready: T0 + 3200.0,
        }
    }

    #[test]
    fn the_proxy_path_across_kill_and_restart() {
        let records = vec![
            rec(0.0, 0.3, 200, Some((0.1, VIA_PROXY))),
            // Broken through the proxy long before the kill: not in flight.
            rec(500.0, 0.3, 0, Some((0.1, VIA_PROXY))),
            // Connected to the proxy before the kill, broken by it.
            rec(999.0, 6.0, 0, Some((0.1, VIA_PROXY))),
            // The same, though due time plus latency falls before the kill
            // and it was established after: the client's timer was late,
            // and it called connect() before the kill.
            rec(998.5, 1.3, 0, Some((1.6, VIA_PROXY))),
            // Sent to the dying proxy after the signal: its listener still
            // took the connect, then closed. A new connection that failed,
            // not an in-flight one.
            rec(1001.0, 4.5, 0, Some((0.1, VIA_PROXY))),
            // Dead: the kernel serves.
            rec(1010.0, 0.2, 200, Some((0.05, VIA_KERNEL))),
            rec(2000.0, 0.2, 200, Some((0.05, VIA_KERNEL))),
            // Refused: a failed connect.
            rec(2500.0, 0.1, 0, None),
            // The new daemon's proxy serves before it logs ready.
            rec(3100.0, 0.4, 200, Some((0.1, VIA_PROXY))),
            rec(3300.0, 0.3, 200, Some((0.1, VIA_PROXY))),
            // A 503 answered through the new proxy.
            rec(3400.0, 0.3, 503, Some((0.1, VIA_PROXY))),
        ];
        let run = analyze(&records, &moments(), PROXY);
        assert_eq!(run.requests, 11);
        assert_eq!(run.kill_at_ms, 1000.0);
        assert_eq!(run.dead_at_ms, 1005.0);
        assert_eq!(run.restart_at_ms, 3000.0);
        assert_eq!(run.ready_at_ms, 3200.0);
        assert_eq!(run.failed_connects, 1);
        assert_eq!(run.broken_in_flight, 2);
        assert_eq!(run.broken_after_kill, 1);
        assert_eq!(run.other_errors, 2);
        assert_eq!(run.new_connection_errors(), 4);
        assert_eq!(
            run.served_while_down,
            BTreeMap::from([("kernel/east".to_owned(), 2), ("proxy/east".to_owned(), 1)])
        );
        // Unix ms near 1e12 carry about 1e-4 ms of precision.
        assert!((run.restart_to_proxy_ms.unwrap() - 100.1).abs() < 1e-3);
        assert_eq!(run.worst_latency_before_kill_ms, 6.0);
        assert_eq!(run.worst_latency_after_kill_ms, 4.5);
        assert_eq!(run.timeline.len(), 35);
        assert_eq!(run.timeline[0], (1, 0, 0));
        assert_eq!(run.timeline[5], (0, 0, 1));
        assert_eq!(run.timeline[9], (0, 0, 2));
        assert_eq!(run.timeline[10], (0, 1, 1));
        assert_eq!(run.timeline[25], (0, 0, 1));
        assert_eq!(run.timeline[31], (1, 0, 0));
        assert_eq!(run.timeline[34], (0, 0, 1));
    }

    #[test]
    fn the_kernel_path_never_reaches_the_proxy() {
        let records: Vec<Record> = (0..50)
            .map(|i| rec(f64::from(i) * 100.0, 0.2, 200, Some((0.05, VIA_KERNEL))))
            .collect();
        let run = analyze(&records, &moments(), PROXY);
        assert_eq!(run.new_connection_errors(), 0);
        assert_eq!(run.broken_in_flight, 0);
        // Due in [1000, 3200): 22 requests.
        assert_eq!(
            run.served_while_down,
            BTreeMap::from([("kernel/east".to_owned(), 22)])
        );
        assert_eq!(run.restart_to_proxy_ms, None);
        assert!(run.timeline.iter().all(|b| *b == (0, 1, 0)));
    }

    #[test]
    fn a_kernel_path_connection_broken_at_the_kill_is_not_in_flight_through_the_proxy() {
        // The daemon's death cannot break a connection it never carried.
        let records = vec![
            rec(999.0, 8.0, 0, Some((0.1, VIA_KERNEL))),
            rec(1001.0, 8.0, 0, Some((0.1, VIA_KERNEL))),
        ];
        let run = analyze(&records, &moments(), PROXY);
        assert_eq!(
            (
                run.broken_in_flight,
                run.broken_after_kill,
                run.other_errors
            ),
            (0, 0, 2)
        );
    }
}
