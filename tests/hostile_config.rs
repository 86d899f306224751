//! Hostile config values (durations past what any clock holds, counts past
//! u32, percentages past 100, more services or endpoints than the kernel's
//! tables hold) are rejected with file, line and field, by `redirector
//! check` and by a running daemon's reload (file watch or SIGHUP), which
//! keeps serving the running config: its VIP answered, the kernel's maps
//! unchanged, no panic in the log, the process alive.
//!
//! Before, a huge `baseEjectionTime` loaded and panicked the daemon on the
//! first ejection (`Instant + Duration`, under the cluster's lock), a huge
//! `connectTimeout` panicked every connect, a fraction could overflow the
//! duration parser, and more services than the kernel holds half-applied.

use std::{fmt::Write as _, process::Command};

use redirector_tests::{
    daemon::redirector_bin,
    istio::{mydb_entry, mydb_rule},
    process,
    scenario::{Node, TIMEOUT, count, wait_until},
    tempdir::TempDir,
};

const VIP: &str = "240.240.0.61";
const EAST: &str = "healthy: east";

/// `mydb.com` at VIP:80 → 127.0.10.1:8080, with `traffic_policy` (indented
/// four spaces) in its DestinationRule.
fn with_policy(traffic_policy: &str) -> String {
    mydb_entry(VIP, "STATIC", "  - {address: 127.0.10.1}\n") + &mydb_rule(traffic_policy)
}

fn good() -> String {
    with_policy("    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 30s}\n")
}

/// `mydb.com` with ports 1..=`ports` and `endpoints` static endpoints.
fn big(ports: u32, endpoints: u32) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: big}\nspec:\n  \
         hosts: [big.example]\n  resolution: STATIC\n  ports:\n",
    );
    for n in 1..=ports {
        writeln!(text, "  - {{number: {n}, name: p{n}, protocol: TCP}}").unwrap();
    }
    text.push_str("  endpoints:\n");
    for i in 0..endpoints {
        writeln!(text, "  - address: 10.{}.{}.1", i / 256, i % 256).unwrap();
    }
    text
}

/// A hostile config: what it is, its text, the text the error must point
/// at (its line is looked up) and the field it must name.
struct Case {
    what: &'static str,
    yaml: String,
    at: String,
    field: &'static str,
}

fn cases() -> Vec<Case> {
    let od = |what, value: &str, key: &'static str, field| Case {
        what,
        yaml: with_policy(&format!("    outlierDetection: {{{key}: {value}}}\n")),
        at: value.to_owned(),
        field,
    };
    let tcp = |what, value: &str, key: &'static str, field| Case {
        what,
        yaml: with_policy(&format!(
            "    connectionPool: {{tcp: {{{key}: {value}}}}}\n"
        )),
        at: value.to_owned(),
        field,
    };
    let mut all = vec![
        od(
            "a base ejection time no clock holds",
            "9999999999h",
            "baseEjectionTime",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        ),
        od(
            "an interval whose fraction overflowed the parser",
            "94522879700260684295381835.9h",
            "interval",
            "spec.trafficPolicy.outlierDetection.interval",
        ),
        od(
            "a percentage past 100",
            "1000",
            "maxEjectionPercent",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        od(
            "a count past u32",
            "4294967296",
            "consecutive5xxErrors",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
        ),
        tcp(
            "a connect timeout no clock holds",
            "5124095576030431h",
            "connectTimeout",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        ),
        tcp(
            "a negative connection limit",
            "-1",
            "maxConnections",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        ),
    ];
    all.push(Case {
        what: "one service more than the kernel's tables hold",
        // mydb.com's one service and 4096 more.
        yaml: format!("{}---\n{}", good(), big(4096, 1)),
        at: "{number: 4096,".to_owned(),
        field: "spec.ports[4095]",
    });
    all.push(Case {
        what: "more endpoints than the kernel's endpoint table holds",
        // mydb.com's one endpoint and 2 × 8192 more.
        yaml: format!("{}---\n{}", good(), big(2, 8192)),
        at: "{number: 2,".to_owned(),
        field: "spec.ports[1]",
    });
    all
}

/// `file:line:` of the first line of `text` holding `needle`.
fn location(file: &str, text: &str, needle: &str) -> String {
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"));
    format!("{file}:{}:", line + 1)
}

#[test]
fn redirector_check_rejects_every_hostile_value_with_file_line_and_field() {
    let dir = TempDir::new("hostile").unwrap();
    let path = dir.path().join("hostile.yaml");
    std::fs::write(&path, good()).unwrap();
    let ok = Command::new(redirector_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for case in cases() {
        std::fs::write(&path, &case.yaml).unwrap();
        let out = Command::new(redirector_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", case.what);
        let at = location(&path.display().to_string(), &case.yaml, &case.at);
        assert!(
            err.lines()
                .any(|l| l.contains(&at) && l.contains(case.field)),
            "{}: expected {at} … {}; got:\n{err}",
            case.what,
            case.field
        );
        assert!(!err.contains("panicked"), "{}: {err}", case.what);
    }
}

#[test]
fn a_hostile_reload_is_rejected_and_the_running_config_keeps_serving() {
    let mut node = Node::new();
    node.http("127.0.10.1:8080", "east");
    node.start(&good(), "", false);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    let file = node.config_path().display().to_string();
    let rejected = |node: &Node| node.log().matches("config reload rejected").count();
    let mut last = None;
    for case in cases() {
        // The file watch notices the edit.
        node.write_config(&case.yaml);
        let at = location(&file, &case.yaml, &case.at);
        wait_until(case.what, TIMEOUT, || {
            node.log()
                .lines()
                .any(|l| l.contains(&at) && l.contains(case.field))
        });
        // The running config serves on, in the proxy and in the kernel.
        assert_eq!(count(&node.bodies(VIP, 2), EAST), 2, "{}", case.what);
        assert_eq!(node.vip("mydb.com"), VIP, "{}", case.what);
        last = Some(case);
    }
    // SIGHUP reads the (last, unchanged) file again: rejected again.
    let before = rejected(&node);
    let pid = node.daemon.as_ref().unwrap().pid();
    process::signal(pid, libc::SIGHUP).unwrap();
    wait_until("the SIGHUP's rejection", TIMEOUT, || {
        rejected(&node) > before
    });
    let last = last.expect("cases");
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2, "{}", last.what);
    let log = node.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("config reloaded"),
        "nothing hostile applied:\n{log}"
    );
    assert!(
        node.daemon.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon exited:\n{log}"
    );
    // A good edit still applies.
    node.reload(
        &with_policy("    outlierDetection: {consecutive5xxErrors: 5}\n"),
        "config reloaded",
    );
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
}
