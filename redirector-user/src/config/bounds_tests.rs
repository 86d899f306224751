//! Hostile values: every number and size the config gives is bounded at
//! validation (durations by Go's longest, counts by u32, percentages by
//! 100, the whole config by the kernel's tables), with file, line and
//! field, so nothing out of range reaches code that could panic on it.

use std::fmt::Write as _;

use redirector_common::{MAX_ENDPOINTS, MAX_SERVICES};

use super::tests::{DR, SE, load, problems, rejects};
use super::*;

/// The shared rule with `yaml` (indented four spaces, under
/// `trafficPolicy`) instead of its outlier detection.
fn tp(yaml: &str) -> String {
    format!(
        "{SE}---\n{}",
        DR.replace(
            "    outlierDetection:\n      consecutive5xxErrors: 2\n",
            yaml
        )
    )
}

const OD: &str = "spec.trafficPolicy.outlierDetection";
const CP: &str = "spec.trafficPolicy.connectionPool";

#[test]
fn every_duration_is_bounded_by_gos_longest() {
    // Longer than Go's longest (and so Istio's), each in its field; the
    // first two used to load, and panicked the daemon on the first
    // ejection (`Instant + Duration`) or on every connect.
    for (yaml, value, field) in [
        (
            "    outlierDetection: {baseEjectionTime: 9999999999h}\n",
            "9999999999h",
            format!("{OD}.baseEjectionTime"),
        ),
        (
            "    connectionPool:\n      tcp: {connectTimeout: 5124095576030431h}\n",
            "5124095576030431h",
            format!("{CP}.tcp.connectTimeout"),
        ),
        (
            "    outlierDetection: {interval: 2562047h47m16.854775808s}\n",
            "2562047h47m16.854775808s",
            format!("{OD}.interval"),
        ),
        (
            "    connectionPool:\n      http: {idleTimeout: 2562048h}\n",
            "2562048h",
            format!("{CP}.http.idleTimeout"),
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {time: 94522879700260684295381835.9h}}\n",
            "94522879700260684295381835.9h",
            format!("{CP}.tcp.tcpKeepalive.time"),
        ),
    ] {
        let p = rejects(
            &tp(yaml),
            value,
            &field,
            "longer than 2562047h47m16.854775807s",
        );
        let shown = p.to_string();
        assert!(
            shown.starts_with("t.yaml:") && shown.contains(&field),
            "file, line and field: {shown}"
        );
    }
    // The longest itself loads.
    let c = load(&tp(
        "    outlierDetection: {baseEjectionTime: 2562047h47m16.854775807s}\n    connectionPool:\n      tcp: {connectTimeout: 2562047h}\n",
    ));
    let policy = &c.services[0].policy;
    assert_eq!(
        policy.outlier.as_ref().unwrap().base_ejection_time,
        MAX_DURATION
    );
}

#[test]
fn counts_and_percentages_are_bounded() {
    for (yaml, value, field, message) in [
        (
            "    outlierDetection: {consecutive5xxErrors: 4294967296}\n",
            "4294967296",
            format!("{OD}.consecutive5xxErrors"),
            "out of range",
        ),
        (
            "    outlierDetection: {consecutiveGatewayErrors: 99999999999999999}\n",
            "99999999999999999",
            format!("{OD}.consecutiveGatewayErrors"),
            "out of range",
        ),
        (
            "    outlierDetection: {maxEjectionPercent: 101}\n",
            "101",
            format!("{OD}.maxEjectionPercent"),
            "0 to 100",
        ),
        (
            "    outlierDetection: {minHealthPercent: -1}\n",
            "-1",
            format!("{OD}.minHealthPercent"),
            "0 (panic mode off) to 100",
        ),
        (
            "    connectionPool:\n      tcp: {maxConnections: -9223372036854775808}\n",
            "-9223372036854775808",
            format!("{CP}.tcp.maxConnections"),
            "out of range",
        ),
        (
            "    connectionPool:\n      http: {http1MaxPendingRequests: 4294967296}\n",
            "4294967296",
            format!("{CP}.http.http1MaxPendingRequests"),
            "out of range",
        ),
        (
            "    connectionPool:\n      http: {maxRetries: 4294967296}\n",
            "4294967296",
            format!("{CP}.http.maxRetries"),
            "out of range",
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {probes: 128}}\n",
            "128",
            format!("{CP}.tcp.tcpKeepalive.probes"),
            "out of range",
        ),
    ] {
        rejects(&tp(yaml), value, &field, message);
    }
}

/// One ServiceEntry for `mydb.com` with ports 1..=`ports`, each on its own
/// line, and `endpoints` static endpoints.
fn many(ports: u32, endpoints: u32) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: big}\nspec:\n  hosts: [mydb.com]\n  resolution: STATIC\n  ports:\n",
    );
    for n in 1..=ports {
        writeln!(text, "  - {{number: {n}, name: p{n}}}").unwrap();
    }
    text.push_str("  endpoints:\n");
    for i in 0..endpoints {
        writeln!(text, "  - address: 10.{}.{}.1", i / 256, i % 256).unwrap();
    }
    text
}

#[test]
fn the_kernels_service_capacity_is_checked() {
    assert_eq!(
        load(&many(MAX_SERVICES, 1)).services.len(),
        MAX_SERVICES as usize
    );
    let past = MAX_SERVICES + 1;
    let text = many(past, 1);
    let p = rejects(
        &text,
        &format!("{{number: {past},"),
        &format!("spec.ports[{MAX_SERVICES}]"),
        &format!(
            "the config has {past} (one per host and port), and the kernel's tables hold {MAX_SERVICES}"
        ),
    );
    assert_eq!(p.line, Some(u64::from(7 + past)), "{p}");
}

#[test]
fn the_kernels_endpoint_capacity_is_checked() {
    // Two ports: every endpoint counts twice.
    let half = MAX_ENDPOINTS / 2;
    assert_eq!(load(&many(2, half)).services.len(), 2);
    let text = many(2, half + 1);
    rejects(
        &text,
        "{number: 2,",
        "spec.ports[1]",
        &format!("have {} endpoints in all", 2 * (half + 1)),
    );
    assert!(
        problems(&text)[0]
            .message
            .contains(&format!("holds {MAX_ENDPOINTS}"))
    );
}

#[test]
fn a_file_larger_than_the_limit_is_refused_without_being_loaded() {
    let dir = std::env::temp_dir().join(format!("rd-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.yaml");
    // Comments only: valid YAML of no documents, one byte too long.
    let line = format!("#{}\n", "x".repeat(1022));
    let text = line.repeat((MAX_FILE_BYTES / 1024) as usize) + "#";
    std::fs::write(&path, &text).unwrap();
    let over = load_file(&path, &NodeSettings::default());
    std::fs::write(&path, &text[..text.len() - 1]).unwrap();
    let ok = load_file(&path, &NodeSettings::default());
    std::fs::remove_dir_all(&dir).unwrap();
    let text = over.expect_err("too large").to_string();
    assert!(text.contains("larger than 16 MiB"), "{text}");
    assert!(text.starts_with(&path.display().to_string()), "{text}");
    assert_eq!(ok.expect("exactly the limit loads").services.len(), 0);
}
