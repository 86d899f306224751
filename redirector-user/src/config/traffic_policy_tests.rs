//! `outlierDetection`, `connectionPool` and `portLevelSettings`, through
//! `load_str`: every field's value, default and rejection.

use std::time::Duration;

use super::tests::*;
use super::*;

/// The DR with its `outlierDetection` block replaced by `yaml` (indented
/// four spaces, under `trafficPolicy`).
fn policy(yaml: &str) -> String {
    format!(
        "{SE}---\n{}",
        DR.replace(
            "    outlierDetection:\n      consecutive5xxErrors: 2\n",
            yaml
        )
    )
}

fn outlier_of(yaml: &str) -> OutlierPolicy {
    let c = load(&policy(yaml));
    c.services[0]
        .policy
        .outlier
        .clone()
        .expect("outlier detection")
}

fn pool_of(yaml: &str) -> ConnectionPoolPolicy {
    load(&policy(yaml)).services[0]
        .policy
        .connection_pool
        .clone()
}

/// Each case must give exactly one problem at `needle` (searched from the
/// DR's first line) on `field` containing `message`.
#[track_caller]
fn rejects_each(cases: &[(&str, &str, &str, &str)]) {
    for (yaml, needle, field, message) in cases {
        let text = policy(yaml);
        let p = problems(&text);
        assert_problem(&p, &text, needle, 15, field, message);
        assert_eq!(p.len(), 1, "one problem expected for {yaml:?}: {p:#?}");
    }
}

#[test]
fn every_outlier_field_loads() {
    let o = outlier_of(
        "    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      interval: 5s
      baseEjectionTime: 45s
      maxEjectionPercent: 50
      minHealthPercent: 30
",
    );
    assert_eq!(
        o,
        OutlierPolicy {
            consecutive_5xx: 7,
            consecutive_gateway: Some(3),
            consecutive_local_origin: 2,
            split_external_local_origin_errors: true,
            interval: Duration::from_secs(5),
            base_ejection_time: Duration::from_secs(45),
            max_ejection_percent: Some(50),
            min_health_percent: 30,
        }
    );
}

#[test]
fn outlier_defaults_are_istios() {
    let o = outlier_of("    outlierDetection: {}\n");
    assert_eq!(o, OutlierPolicy::default());
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(o.consecutive_gateway, None, "Istio leaves it off");
    assert_eq!(o.consecutive_local_origin, 5);
    assert!(!o.split_external_local_origin_errors);
    assert_eq!(o.max_ejection_percent, None);
    assert_eq!(o.min_health_percent, 0, "panic mode off");
    // Zero turns a detector off; Istio cannot tell a zero percentage from
    // an unset one.
    let o = outlier_of(
        "    outlierDetection: {consecutiveGatewayErrors: 0, maxEjectionPercent: 0, minHealthPercent: 100}\n",
    );
    assert_eq!(o.consecutive_gateway, None);
    assert_eq!(o.max_ejection_percent, None);
    assert_eq!(o.min_health_percent, 100);
    // Split without a threshold uses Envoy's 5.
    let o = outlier_of("    outlierDetection: {splitExternalLocalOriginErrors: true}\n");
    assert!(o.split_external_local_origin_errors);
    assert_eq!(o.consecutive_local_origin, 5);
}

#[test]
fn deprecated_consecutive_errors_means_gateway_errors() {
    // As Istio mapped it: gateway errors only, 5xx detection off...
    let o = outlier_of("    outlierDetection: {consecutiveErrors: 3}\n");
    assert_eq!((o.consecutive_gateway, o.consecutive_5xx), (Some(3), 0));
    // ...unless the newer fields say otherwise.
    let o = outlier_of("    outlierDetection: {consecutiveErrors: 3, consecutive5xxErrors: 4}\n");
    assert_eq!((o.consecutive_gateway, o.consecutive_5xx), (Some(3), 4));
    let o =
        outlier_of("    outlierDetection: {consecutiveErrors: 3, consecutiveGatewayErrors: 6}\n");
    assert_eq!((o.consecutive_gateway, o.consecutive_5xx), (Some(6), 0));
    // 0 is unset.
    let o = outlier_of("    outlierDetection: {consecutiveErrors: 0}\n");
    assert_eq!(o, OutlierPolicy::default());
}

#[test]
fn outlier_rejections() {
    let od = "spec.trafficPolicy.outlierDetection";
    rejects_each(&[
        (
            "    outlierDetection: {consecutiveGatewayErrors: -1}\n",
            "-1",
            format!("{od}.consecutiveGatewayErrors").as_str(),
            "out of range",
        ),
        (
            "    outlierDetection: {consecutiveErrors: -2}\n",
            "-2",
            format!("{od}.consecutiveErrors").as_str(),
            "out of range",
        ),
        (
            "    outlierDetection: {maxEjectionPercent: 101}\n",
            "101",
            format!("{od}.maxEjectionPercent").as_str(),
            "101 is out of range: expected a percentage, 0 to 100",
        ),
        (
            "    outlierDetection: {maxEjectionPercent: -5}\n",
            "-5",
            format!("{od}.maxEjectionPercent").as_str(),
            "out of range",
        ),
        (
            "    outlierDetection: {minHealthPercent: 150}\n",
            "150",
            format!("{od}.minHealthPercent").as_str(),
            "expected a percentage, 0 (panic mode off) to 100",
        ),
        (
            "    outlierDetection: {consecutiveLocalOriginFailures: 3}\n",
            "consecutiveLocalOriginFailures",
            format!("{od}.consecutiveLocalOriginFailures").as_str(),
            "only used with splitExternalLocalOriginErrors: true",
        ),
        (
            "    outlierDetection: {splitExternalLocalOriginErrors: false, consecutiveLocalOriginFailures: 3}\n",
            "consecutiveLocalOriginFailures",
            format!("{od}.consecutiveLocalOriginFailures").as_str(),
            "only used with splitExternalLocalOriginErrors: true",
        ),
        (
            "    outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 0}\n",
            "0}",
            format!("{od}.consecutiveLocalOriginFailures").as_str(),
            "1 or more (Istio ignores 0 and Envoy then uses 5)",
        ),
    ]);
}

#[test]
fn every_connection_pool_field_loads() {
    let pool = pool_of(
        "    connectionPool:
      tcp:
        maxConnections: 3
        connectTimeout: 250ms
        tcpKeepalive: {probes: 4, time: 30s, interval: 5s}
      http:
        http1MaxPendingRequests: 2
        maxRequestsPerConnection: 10
        maxRetries: 1
        idleTimeout: 90s
        h2UpgradePolicy: DO_NOT_UPGRADE
        useClientProtocol: true
",
    );
    assert_eq!(
        pool,
        ConnectionPoolPolicy {
            connect_timeout: Duration::from_millis(250),
            max_connections: 3,
            tcp_keepalive: Some(TcpKeepalive {
                probes: Some(4),
                time: Some(Duration::from_secs(30)),
                interval: Some(Duration::from_secs(5)),
            }),
            http1_max_pending_requests: 2,
            max_requests_per_connection: 10,
            idle_timeout: Duration::from_secs(90),
            max_retries: 1,
        }
    );
}

#[test]
fn connection_pool_defaults_are_istios() {
    let d = ConnectionPoolPolicy::default();
    assert_eq!(d.connect_timeout, Duration::from_secs(10));
    assert_eq!(d.idle_timeout, Duration::from_secs(3600));
    for limit in [
        d.max_connections,
        d.http1_max_pending_requests,
        d.max_retries,
    ] {
        assert_eq!(limit, u32::MAX, "Istio's 2³²−1");
    }
    assert_eq!(d.max_requests_per_connection, 0);
    assert_eq!(d.tcp_keepalive, None);
    // Without a DestinationRule, and with one that has no connectionPool.
    assert_eq!(load(SE).services[0].policy.connection_pool, d);
    assert_eq!(
        load(&format!("{SE}---\n{DR}")).services[0]
            .policy
            .connection_pool,
        d
    );
    // One half alone leaves the other at its defaults; an empty keepalive
    // turns keepalive on with the OS's timings.
    let pool = pool_of("    connectionPool:\n      tcp: {tcpKeepalive: {}}\n");
    assert_eq!(
        pool,
        ConnectionPoolPolicy {
            tcp_keepalive: Some(TcpKeepalive::default()),
            ..d.clone()
        }
    );
    // Istio cannot tell 0 from unset: the limits stay unlimited, and 0
    // probes keep the OS default.
    let pool = pool_of(
        "    connectionPool:\n      tcp: {maxConnections: 0, tcpKeepalive: {probes: 0}}\n      http: {http1MaxPendingRequests: 0, maxRetries: 0, maxRequestsPerConnection: 0}\n",
    );
    assert_eq!(
        pool,
        ConnectionPoolPolicy {
            tcp_keepalive: Some(TcpKeepalive::default()),
            ..d
        }
    );
}

#[test]
fn connection_pool_rejections() {
    let cp = "spec.trafficPolicy.connectionPool";
    rejects_each(&[
        (
            "    connectionPool: {}\n",
            "{}",
            cp,
            "a connection pool needs at least one of tcp, http",
        ),
        (
            "    connectionPool:\n      tcp: {maxConnections: -1}\n",
            "-1",
            format!("{cp}.tcp.maxConnections").as_str(),
            "-1 is out of range: expected 0 (unset) to 4294967295",
        ),
        (
            "    connectionPool:\n      tcp: {maxConnections: 4294967296}\n",
            "4294967296",
            format!("{cp}.tcp.maxConnections").as_str(),
            "out of range",
        ),
        (
            "    connectionPool:\n      tcp: {connectTimeout: 0s}\n",
            "0s",
            format!("{cp}.tcp.connectTimeout").as_str(),
            "greater than zero",
        ),
        (
            "    connectionPool:\n      tcp: {connectTimeout: 10}\n",
            "10}",
            format!("{cp}.tcp.connectTimeout").as_str(),
            "missing unit",
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {probes: 128}}\n",
            "128",
            format!("{cp}.tcp.tcpKeepalive.probes").as_str(),
            "0 (OS default) to 127, Linux's limit",
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {time: 1500ms}}\n",
            "1500ms",
            format!("{cp}.tcp.tcpKeepalive.time").as_str(),
            "not a whole number of seconds",
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {interval: 10h}}\n",
            "10h",
            format!("{cp}.tcp.tcpKeepalive.interval").as_str(),
            "from 1s to 32767s",
        ),
        (
            "    connectionPool:\n      tcp: {tcpKeepalive: {interval: 0s}}\n",
            "0s",
            format!("{cp}.tcp.tcpKeepalive.interval").as_str(),
            "greater than zero",
        ),
        (
            "    connectionPool:\n      http: {http1MaxPendingRequests: -3}\n",
            "-3",
            format!("{cp}.http.http1MaxPendingRequests").as_str(),
            "out of range",
        ),
        (
            "    connectionPool:\n      http: {maxRequestsPerConnection: -1}\n",
            "-1",
            format!("{cp}.http.maxRequestsPerConnection").as_str(),
            "expected 0 (unlimited) to",
        ),
        (
            "    connectionPool:\n      http: {maxRetries: -1}\n",
            "-1",
            format!("{cp}.http.maxRetries").as_str(),
            "out of range",
        ),
        (
            "    connectionPool:\n      http: {idleTimeout: soon}\n",
            "soon",
            format!("{cp}.http.idleTimeout").as_str(),
            "invalid duration",
        ),
        (
            "    connectionPool:\n      http: {h2UpgradePolicy: UPGRADE}\n",
            "UPGRADE",
            format!("{cp}.http.h2UpgradePolicy").as_str(),
            "not implemented yet: h2UpgradePolicy UPGRADE",
        ),
        (
            "    connectionPool:\n      http: {h2UpgradePolicy: upgrade}\n",
            "upgrade",
            format!("{cp}.http.h2UpgradePolicy").as_str(),
            "unknown h2UpgradePolicy \"upgrade\"",
        ),
    ]);
}

/// The test ServiceEntry with a second HTTP port, 8080.
fn two_ports() -> String {
    SE.replace(
        "  - number: 80\n    name: http\n",
        "  - number: 80\n    name: http\n  - number: 8080\n    name: http-alt\n",
    )
}

fn two_ports_with(dr_tail: &str) -> String {
    format!(
        "{}---\n{}{dr_tail}",
        two_ports(),
        DR.replace(
            "    outlierDetection:\n      consecutive5xxErrors: 2\n",
            "    outlierDetection:\n      consecutive5xxErrors: 2\n    connectionPool:\n      tcp: {maxConnections: 9}\n"
        )
    )
}

#[test]
fn a_port_entry_replaces_the_whole_policy_on_its_port() {
    let c = load(&two_ports_with(
        "    portLevelSettings:
    - port: {number: 8080}
      connectionPool:
        http: {maxRequestsPerConnection: 1}
",
    ));
    let (p80, p8080) = (&c.services[0], &c.services[1]);
    assert_eq!((p80.port.number, p8080.port.number), (80, 8080));
    // Port 80 keeps the rule's policy.
    assert_eq!(p80.policy.outlier.as_ref().unwrap().consecutive_5xx, 2);
    assert_eq!(p80.policy.connection_pool.max_connections, 9);
    assert_eq!(p80.policy.connection_pool.max_requests_per_connection, 0);
    // Port 8080 gets its entry, and defaults where the entry is silent, as
    // Istio's GetPortLevelTrafficPolicy does: no outlier detection, and
    // maxConnections back to unlimited.
    assert_eq!(p8080.policy.connection_pool.max_requests_per_connection, 1);
    assert_eq!(p8080.policy.connection_pool.max_connections, u32::MAX);
    assert_eq!(p8080.policy.outlier, None);
    assert_eq!(p8080.policy.tls, TlsPolicy::Disable);
    assert_eq!(p8080.destination_rule.as_deref(), Some("db-rule"));
}

#[test]
fn each_port_entry_takes_every_sub_policy() {
    let c = load(&two_ports_with(
        "    portLevelSettings:
    - port: {number: 80}
      outlierDetection: {consecutiveGatewayErrors: 1, maxEjectionPercent: 100}
      loadBalancer:
        localityLbSetting: {enabled: false}
      tls: {mode: SIMPLE, sni: other.example}
",
    ));
    let (p80, p8080) = (&c.services[0], &c.services[1]);
    let o = p80.policy.outlier.as_ref().unwrap();
    assert_eq!(
        (
            o.consecutive_5xx,
            o.consecutive_gateway,
            o.max_ejection_percent
        ),
        (5, Some(1), Some(100))
    );
    assert!(!p80.policy.locality_lb.enabled);
    assert_eq!(
        p80.policy.tls,
        TlsPolicy::Originate(Box::new(TlsOrigination {
            sni: Some("other.example".into()),
            ..Default::default()
        }))
    );
    assert_eq!(p80.policy.connection_pool, ConnectionPoolPolicy::default());
    // The other port is untouched.
    assert_eq!(p8080.policy.connection_pool.max_connections, 9);
    assert_eq!(p8080.policy.outlier.as_ref().unwrap().consecutive_5xx, 2);
    assert!(p8080.policy.locality_lb.enabled);
}

#[test]
fn port_level_rejections() {
    let cases: [(&str, &str, &str, &str); 6] = [
        (
            "    portLevelSettings:\n    - port: {number: 9090}\n      connectionPool: {tcp: {maxConnections: 1}}\n",
            "9090",
            "spec.trafficPolicy.portLevelSettings[0].port.number",
            "ServiceEntry \"db\" of host mydb.com has no port 9090 (its ports: 80, 8080)",
        ),
        (
            "    portLevelSettings:\n    - {connectionPool: {tcp: {maxConnections: 1}}}\n",
            "{connectionPool",
            "spec.trafficPolicy.portLevelSettings[0].port",
            "required",
        ),
        (
            "    portLevelSettings:\n    - port: {}\n      connectionPool: {tcp: {maxConnections: 1}}\n",
            "{}",
            "spec.trafficPolicy.portLevelSettings[0].port.number",
            "required",
        ),
        (
            "    portLevelSettings:\n    - {port: {number: 80}}\n",
            "{port",
            "spec.trafficPolicy.portLevelSettings[0]",
            "at least one of loadBalancer, connectionPool, outlierDetection, tls",
        ),
        (
            "    portLevelSettings:\n    - {port: {number: 80}, tls: {mode: SIMPLE}}\n    - {port: {number: 80}, tls: {mode: DISABLE}}\n",
            "80}, tls: {mode: DISABLE",
            "spec.trafficPolicy.portLevelSettings[1].port.number",
            "port 80 already has settings at spec.trafficPolicy.portLevelSettings[0]",
        ),
        (
            "    portLevelSettings:\n    - port: {number: 80}\n      outlierDetection: {maxEjectionPercent: 200}\n",
            "200",
            "spec.trafficPolicy.portLevelSettings[0].outlierDetection.maxEjectionPercent",
            "out of range",
        ),
    ];
    for (tail, needle, field, message) in cases {
        let text = two_ports_with(tail);
        let p = problems(&text);
        assert_problem(&p, &text, needle, 16, field, message);
        assert_eq!(p.len(), 1, "one problem expected for {tail:?}: {p:#?}");
    }
}

#[test]
fn port_level_tls_is_checked_against_its_own_port() {
    // SIMPLE for the whole host, but the HTTPS port overrides it with
    // DISABLE: the app's TLS passes through there, which is fine.
    let se = SE.replace(
        "  - number: 80\n    name: http\n",
        "  - number: 80\n    name: http\n  - number: 443\n    name: https\n",
    );
    let dr = DR.replace(
        "    outlierDetection:\n      consecutive5xxErrors: 2\n",
        "    tls: {mode: SIMPLE}\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: DISABLE}\n",
    );
    let c = load(&format!("{se}---\n{dr}"));
    assert!(c.services[0].policy.tls.originates());
    assert_eq!(c.services[1].policy.tls, TlsPolicy::Disable);
    // The other way round, SIMPLE on the HTTPS port itself is refused where
    // the port entry says it.
    let dr = DR.replace(
        "    outlierDetection:\n      consecutive5xxErrors: 2\n",
        "    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: SIMPLE}\n",
    );
    let text = format!("{se}---\n{dr}");
    let p = problems(&text);
    assert_problem(
        &p,
        &text,
        "SIMPLE",
        16,
        "spec.trafficPolicy.portLevelSettings[0].tls.mode",
        "tls mode SIMPLE on port 443 (https) whose protocol is HTTPS",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
}
