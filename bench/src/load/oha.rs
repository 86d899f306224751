//! oha 1.16 for the open-loop cells: its command line and its JSON report
//! (`--output-format json`; the fields were read off real runs, kept in
//! `fixtures/oha-*.json`). Times in the report are seconds; percentiles
//! and `slowest` are `null` when nothing answered.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{LoadSpec, Observed, REQUEST_TIMEOUT};
use crate::model::{Conn, LoadResult};

/// oha's name for requests still running when `-z` ends; not failures.
const DEADLINE: &str = "aborted due to deadline";

/// Connections for `rps`: each may be busy 20 ms before arrivals queue
/// (and queueing counts as latency), never fewer than 16.
pub(super) fn connections(rps: u32) -> u32 {
    rps.div_ceil(50).clamp(16, 512)
}

pub(super) fn args(spec: &LoadSpec, rps: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-tui",
        "--output-format",
        "json",
        // One thread: the generator gets one core, like the app it plays.
        "--worker-threads",
        "1",
        "--latency-correction",
    ]
    .map(str::to_owned)
    .into();
    args.extend([
        "-q".to_owned(),
        rps.to_string(),
        "-c".to_owned(),
        connections(rps).to_string(),
        "-z".to_owned(),
        format!("{}ms", spec.duration.as_millis().max(1)),
        "-t".to_owned(),
        format!("{}s", REQUEST_TIMEOUT.as_secs()),
        "-H".to_owned(),
        format!("Host: {}", spec.host),
    ]);
    if spec.workload.conn == Conn::NewPerRequest {
        // oha then also sends `connection: close`.
        args.push("--disable-keepalive".to_owned());
    }
    if spec.https {
        args.push("--insecure".to_owned());
    }
    args.push(spec.url());
    args
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    summary: Summary,
    latency_percentiles: Percentiles,
    status_code_distribution: BTreeMap<u16, u64>,
    error_distribution: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    /// Wall time of the run.
    total: f64,
    slowest: Option<f64>,
    /// Body bytes per response.
    size_per_request: Option<f64>,
}

#[derive(Deserialize)]
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
    #[serde(rename = "p99.9")]
    p999: Option<f64>,
}

pub(super) fn parse(json: &str) -> Result<Observed> {
    let report: Report = serde_json::from_str(json).context("not oha's JSON report")?;
    let requests: u64 = report.status_code_distribution.values().sum();
    let non_2xx: u64 = report
        .status_code_distribution
        .iter()
        .filter(|(status, _)| !(200..300).contains(*status))
        .map(|(_, n)| n)
        .sum();
    let transport: u64 = report
        .error_distribution
        .iter()
        .filter(|(what, _)| what.as_str() != DEADLINE)
        .map(|(_, n)| n)
        .sum();
    let secs = report.summary.total;
    let ms = |s: Option<f64>| s.unwrap_or(0.0) * 1000.0;
    Ok(Observed {
        result: LoadResult {
            requests,
            errors: transport + non_2xx,
            rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            p50_ms: ms(report.latency_percentiles.p50),
            p99_ms: ms(report.latency_percentiles.p99),
            p999_ms: ms(report.latency_percentiles.p999),
            max_ms: ms(report.summary.slowest),
            duration_secs: secs,
        },
        bytes_per_response: report.summary.size_per_request,
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

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn keep_alive_report() {
        let o = parse(include_str!(
            "fixtures/oha-keep-alive-plain-open-1000rps.json"
        ))
        .unwrap();
        let r = &o.result;
        assert_eq!((r.requests, r.errors), (1000, 0));
        assert!(close(r.duration_secs, 1.001274856), "{r:?}");
        assert!(close(r.rps, 1000.0 / 1.001274856), "{r:?}");
        assert!(close(r.p50_ms, 0.04671), "{r:?}");
        assert!(close(r.p99_ms, 0.248882), "{r:?}");
        assert!(close(r.p999_ms, 0.474379), "{r:?}");
        assert!(close(r.max_ms, 0.474379), "{r:?}");
        assert_eq!(o.bytes_per_response, Some(1024.0));
    }

    #[test]
    fn new_connection_tls_report() {
        let o = parse(include_str!("fixtures/oha-new-conn-tls-open-1000rps.json")).unwrap();
        let r = &o.result;
        assert_eq!((r.requests, r.errors), (999, 0));
        assert!(close(r.p50_ms, 0.819576), "{r:?}");
        assert!(close(r.p999_ms, 55.36742), "{r:?}");
        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.p999_ms && r.p999_ms <= r.max_ms);
    }

    #[test]
    fn non_2xx_answers_are_errors() {
        let r = parse(include_str!("fixtures/oha-503-open-200rps.json"))
            .unwrap()
            .result;
        assert_eq!((r.requests, r.errors), (200, 200));
    }

    #[test]
    fn transport_errors_are_errors_and_null_latencies_zero() {
        let o = parse(include_str!("fixtures/oha-refused-open-200rps.json")).unwrap();
        let r = &o.result;
        assert_eq!((r.requests, r.errors), (0, 200));
        assert_eq!((r.rps, r.p50_ms, r.max_ms), (0.0, 0.0, 0.0));
        assert_eq!(o.bytes_per_response, None);
    }

    #[test]
    fn deadline_aborts_are_not_errors() {
        let json = include_str!("fixtures/oha-keep-alive-plain-open-1000rps.json").replace(
            r#""errorDistribution": {}"#,
            r#""errorDistribution": {"aborted due to deadline": 3, "timeout": 2}"#,
        );
        assert_eq!(parse(&json).unwrap().result.errors, 2);
    }

    #[test]
    fn command_line() {
        let spec = LoadSpec {
            target: SocketAddrV4::new(Ipv4Addr::new(240, 240, 0, 1), 80),
            host: "plain.test",
            https: false,
            workload: Workload {
                conn: Conn::NewPerRequest,
                upstream: Upstream::Plain,
                load: Load::OpenLoop { rps: 5000 },
            },
            duration: Duration::from_millis(1500),
        };
        let args = args(&spec, 5000).join(" ");
        assert!(
            args.contains("-q 5000 -c 100 -z 1500ms -t 10s -H Host: plain.test"),
            "{args}"
        );
        assert!(
            args.ends_with("--disable-keepalive http://240.240.0.1:80/"),
            "{args}"
        );
        let https = LoadSpec {
            https: true,
            ..spec
        };
        assert!(args_of(&https).ends_with("--insecure https://240.240.0.1:80/"));
        assert_eq!(connections(200), 16);
        assert_eq!(connections(1000), 20);
    }

    fn args_of(spec: &LoadSpec) -> String {
        args(spec, 5000).join(" ")
    }
}
