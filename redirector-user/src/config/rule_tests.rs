//! DestinationRule rules, through `load_str`.

use std::time::Duration;

use super::tests::*;
use super::*;

#[test]
fn destination_rule_host_must_match_a_service_entry() {
    let text = format!(
        "{SE}---\n{}",
        DR.replace("host: mydb.com", "host: other.com")
    );
    rejects(
        &text,
        "other.com",
        "spec.host",
        "no ServiceEntry has host \"other.com\" (ServiceEntry hosts: mydb.com)",
    );
    let text = format!(
        "{SE}---\n{}",
        DR.replace("host: mydb.com", "host: \"*.com\"")
    );
    rejects(
        &text,
        "\"*.com\"",
        "spec.host",
        "not implemented yet: wildcard host",
    );
    let text = format!("{SE}---\n{}", DR.replace("host: mydb.com", "host: mydb"));
    rejects(
        &text,
        "mydb\n",
        "spec.host",
        "not implemented yet: short host name",
    );
    // A rule alone has nothing to attach to.
    let p = problems(DR);
    assert!(p[0].message.contains("ServiceEntry hosts: none"), "{p:#?}");
}

#[test]
fn one_destination_rule_per_host() {
    let text = format!("{SE}---\n{DR}---\n{}", DR.replace("db-rule", "db-rule-2"));
    let p = rejects_after(&text, 30, "mydb.com", "spec.host", "");
    assert!(
        p.message
            .contains("already has DestinationRule \"db-rule\" (document 2)"),
        "{p}"
    );
}

#[test]
fn destination_rule_rejections() {
    let tp = |yaml: &str| {
        format!(
            "{SE}---\n{}",
            DR.replace(
                "    outlierDetection:\n      consecutive5xxErrors: 2\n",
                yaml
            )
        )
    };
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            tp("    loadBalancer: {simple: FASTEST}\n"),
            "FASTEST",
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown load balancer \"FASTEST\"; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH",
        ),
        (
            tp("    loadBalancer: {simple: round_robin}\n"),
            "round_robin",
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown load balancer",
        ),
        (
            tp(
                "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1/a, to: us-west}]\n",
            ),
            "us-east1/a",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from",
            "not a region",
        ),
        (
            tp(
                "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1, to: us-east1}]\n",
            ),
            "us-east1}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
            "failover from us-east1 to itself",
        ),
        (
            tp(
                "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1}]\n",
            ),
            "{from",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
            "required",
        ),
        (
            tp(
                "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: \"us-*\", to: us-west}]\n",
            ),
            "\"us-*\"",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from",
            "no `*` wildcard",
        ),
        (
            tp("    tls: {mode: MUTUAL}\n"),
            "MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "tls mode MUTUAL needs clientCertificate and privateKey",
        ),
        (
            tp("    tls: {mode: ISTIO_MUTUAL}\n"),
            "ISTIO_MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "there is no mesh here",
        ),
        (
            tp("    tls: {mode: simple}\n"),
            "simple",
            "spec.trafficPolicy.tls.mode",
            "unknown tls mode",
        ),
        (
            tp("    tls: {mode: SIMPLE, sni: 1.2.3.4}\n"),
            "1.2.3.4",
            "spec.trafficPolicy.tls.sni",
            "never an IP address",
        ),
        (
            tp("    tls: {sni: a.com}\n"),
            "sni",
            "spec.trafficPolicy.tls.sni",
            "only used when originating TLS",
        ),
        (
            tp("    tls: {mode: DISABLE, caCertificates: /ca.pem}\n"),
            "caCertificates",
            "spec.trafficPolicy.tls.caCertificates",
            "only used when originating TLS",
        ),
        (
            tp("    outlierDetection: {consecutive5xxErrors: -1}\n"),
            "-1",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
            "out of range",
        ),
        (
            tp("    outlierDetection: {interval: 15}\n"),
            "15}",
            "spec.trafficPolicy.outlierDetection.interval",
            "missing unit",
        ),
        (
            tp("    outlierDetection: {interval: 0s}\n"),
            "0s",
            "spec.trafficPolicy.outlierDetection.interval",
            "greater than zero",
        ),
        (
            tp("    outlierDetection: {baseEjectionTime: -30s}\n"),
            "-30s",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "greater than zero",
        ),
        (
            tp("    outlierDetection: {baseEjectionTime: 1d}\n"),
            "1d",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "unknown unit \"d\"",
        ),
        (
            tp("    outlierDetection: {interval: soon}\n"),
            "soon",
            "spec.trafficPolicy.outlierDetection.interval",
            "invalid duration \"soon\"",
        ),
    ];
    for (text, needle, field, message) in &cases {
        let p = problems(text);
        assert_problem(&p, text, needle, 15, field, message);
        assert_eq!(
            p.len(),
            1,
            "one problem expected for {field} {message:?}: {p:#?}"
        );
    }
}

#[test]
fn outlier_defaults_and_durations() {
    let tp = |yaml: &str| {
        format!(
            "{SE}---\n{}",
            DR.replace(
                "    outlierDetection:\n      consecutive5xxErrors: 2\n",
                yaml
            )
        )
    };
    let c = load(&tp("    outlierDetection: {}\n"));
    assert_eq!(
        c.services[0].policy.outlier,
        Some(OutlierPolicy {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            ..OutlierPolicy::default()
        })
    );
    let c = load(&tp(
        "    outlierDetection: {consecutive5xxErrors: 0, interval: 1.5s, baseEjectionTime: 1h30m}\n",
    ));
    assert_eq!(
        c.services[0].policy.outlier,
        Some(OutlierPolicy {
            consecutive_5xx: 0,
            interval: Duration::from_millis(1500),
            base_ejection_time: Duration::from_secs(5400),
            ..OutlierPolicy::default()
        })
    );
    let c = load(&tp(
        "    outlierDetection: {interval: 100ms}\n    loadBalancer:\n      localityLbSetting: {enabled: false}\n",
    ));
    let s = &c.services[0];
    assert_eq!(
        s.policy.outlier.as_ref().map(|o| o.interval),
        Some(Duration::from_millis(100))
    );
    assert!(!s.policy.locality_lb.enabled);
}

#[test]
fn simple_tls_on_an_https_port_would_double_encrypt() {
    let text = format!(
        "{}---\n{}",
        SE.replace("    name: http\n", "    name: https\n"),
        DR.replace(
            "    outlierDetection:\n      consecutive5xxErrors: 2\n",
            "    tls:\n      mode: SIMPLE\n"
        )
    );
    rejects(
        &text,
        "SIMPLE",
        "spec.trafficPolicy.tls.mode",
        "tls mode SIMPLE on port 80 (https) whose protocol is HTTPS",
    );
    let text = text.replace("name: https\n", "name: web\n    protocol: TLS\n");
    rejects(
        &text,
        "SIMPLE",
        "spec.trafficPolicy.tls.mode",
        "double-encrypt",
    );
    // DISABLE on the same port is fine: the app's TLS passes through.
    load(&text.replace("mode: SIMPLE", "mode: DISABLE"));
}
