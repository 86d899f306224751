//! wrk 4 for the closed-loop cells: its command line and the report of
//! [`SCRIPT`], a `done()` hook that prints one JSON line (marked
//! `RDT_WRK`) after wrk's own text report, since wrk has no machine
//! output of its own. Captured runs are in `fixtures/wrk-*.txt`.
//!
//! wrk counts a response as a status error when its status is 400 or
//! more, so a 3xx is not an error here (the upstream never sends one).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{LoadSpec, Observed, REQUEST_TIMEOUT, whole_secs};
use crate::model::{Conn, LoadResult};

/// Prefix of the script's line in wrk's stdout.
const MARKER: &str = "RDT_WRK ";

/// The `done()` hook: counts, errors by kind, rate, latency in µs.
/// `%.0f` rather than `%d`, which newer Luas refuse for non-integers.
pub(super) const SCRIPT: &str = r#"-- cargo xtask bench: one JSON line for the harness.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RDT_WRK {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"rps":%.3f,"latency_us":{"p50":%.0f,"p99":%.0f,"p99_9":%.0f,"max":%.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

pub(super) fn args(spec: &LoadSpec, connections: u32, script: &Path) -> Vec<String> {
    let mut args = vec![
        // One thread: the generator gets one core, like the app it plays.
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", whole_secs(spec.duration)),
        "--timeout".to_owned(),
        format!("{}s", REQUEST_TIMEOUT.as_secs()),
        "-s".to_owned(),
        script.display().to_string(),
        "-H".to_owned(),
        format!("Host: {}", spec.host),
    ];
    if spec.workload.conn == Conn::NewPerRequest {
        // The server closes after answering; wrk then reconnects.
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    // wrk speaks TLS for https:// URLs and never verifies.
    args.push(spec.url());
    args
}

#[derive(Deserialize)]
struct Report {
    requests: u64,
    duration_us: f64,
    bytes: f64,
    errors: Errors,
    rps: f64,
    latency_us: Latency,
}

#[derive(Deserialize)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

#[derive(Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

pub(super) fn parse(stdout: &str) -> Result<Observed> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .with_context(|| format!("no {MARKER:?} line in wrk's output: {stdout}"))?;
    let r: Report = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    let e = &r.errors;
    Ok(Observed {
        result: LoadResult {
            requests: r.requests,
            errors: e.connect + e.read + e.write + e.timeout + e.status,
            rps: r.rps,
            p50_ms: r.latency_us.p50 / 1000.0,
            p99_ms: r.latency_us.p99 / 1000.0,
            p999_ms: r.latency_us.p99_9 / 1000.0,
            max_ms: r.latency_us.max / 1000.0,
            duration_secs: r.duration_us / 1e6,
        },
        bytes_per_response: (r.requests > 0).then(|| r.bytes / r.requests as f64),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::Duration,
    };

    use super::*;
    use crate::model::{Load, Upstream, Workload};

    #[test]
    fn keep_alive_report() {
        let o = parse(include_str!("fixtures/wrk-keep-alive-plain-closed-16c.txt")).unwrap();
        let r = &o.result;
        assert_eq!((r.requests, r.errors), (177447, 0));
        assert_eq!(r.rps, 177393.959);
        assert_eq!(
            (r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms),
            (0.069, 0.144, 1.963, 3.305)
        );
        assert_eq!(r.duration_secs, 1.000299);
        // 1024 body bytes plus the status line and headers.
        let bytes = o.bytes_per_response.unwrap();
        assert!((1024.0..1200.0).contains(&bytes), "{bytes}");
    }

    #[test]
    fn new_connection_tls_report() {
        let r = parse(include_str!("fixtures/wrk-new-conn-tls-closed-16c.txt"))
            .unwrap()
            .result;
        assert_eq!((r.requests, r.errors), (3049, 0));
        assert_eq!((r.p50_ms, r.p99_ms), (1.077, 3.117));
    }

    #[test]
    fn status_errors_count() {
        let r = parse(include_str!("fixtures/wrk-503-closed-4c.txt"))
            .unwrap()
            .result;
        assert_eq!((r.requests, r.errors), (54494, 54494));
    }

    #[test]
    fn other_errors_count_and_a_missing_line_is_an_error() {
        let line = r#"RDT_WRK {"requests":10,"duration_us":1000000,"bytes":10240,"errors":{"connect":1,"read":2,"write":3,"status":4,"timeout":5},"rps":10.000,"latency_us":{"p50":1,"p99":2,"p99_9":3,"max":4}}"#;
        assert_eq!(parse(line).unwrap().result.errors, 15);
        let err = parse("unable to connect to 127.0.0.1:1 Connection refused").unwrap_err();
        assert!(err.to_string().contains("no \"RDT_WRK \" line"), "{err}");
    }

    #[test]
    fn command_line() {
        let spec = LoadSpec {
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8443),
            host: "tls.test",
            https: true,
            workload: Workload {
                conn: Conn::NewPerRequest,
                upstream: Upstream::Tls,
                load: Load::ClosedLoop { connections: 32 },
            },
            duration: Duration::from_millis(200),
        };
        let args = args(&spec, 32, Path::new("/tmp/x/report.lua")).join(" ");
        assert_eq!(
            args,
            "-t1 -c32 -d1s --timeout 10s -s /tmp/x/report.lua -H Host: tls.test \
             -H Connection: close https://127.0.0.1:8443/"
        );
    }
}
