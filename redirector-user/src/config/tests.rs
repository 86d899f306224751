//! Loading and rejection, end to end through `load_str`: every rejection is
//! checked for its message and for where it points. This file holds the
//! shared helpers and the document-level cases; `service_tests` and
//! `rule_tests` hold the ServiceEntry and DestinationRule ones.

use super::model::DEFAULT_VIP_RANGE;
use super::*;
use crate::topology::Locality;

pub(super) const SE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [mydb.com]
  resolution: DNS
  ports:
  - number: 80
    name: http
  endpoints:
  - address: east.example
    locality: us-east1
";

pub(super) const DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: db-rule
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
";

pub(super) fn load(text: &str) -> Config {
    load_str("t.yaml", text, &NodeSettings::default())
        .unwrap_or_else(|e| panic!("should load:\n{e}\n--- text ---\n{text}"))
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    problems_with(text, &NodeSettings::default())
}

pub(super) fn problems_with(text: &str, overrides: &NodeSettings) -> Vec<Problem> {
    match load_str("t.yaml", text, overrides) {
        Ok(c) => panic!(
            "should be rejected, loaded {:#?}\n--- text ---\n{text}",
            c.services
        ),
        Err(e) => e.problems,
    }
}

/// 1-based line and column of the first `needle` at or after line `from`;
/// a trailing `\n` in `needle` means "at the end of the line".
pub(super) fn pos_of(text: &str, needle: &str, from: u64) -> (u64, u64) {
    let (needle, at_end) = match needle.strip_suffix('\n') {
        Some(n) => (n, true),
        None => (needle, false),
    };
    for (i, line) in text.lines().enumerate().skip(from as usize - 1) {
        let byte = if at_end {
            line.ends_with(needle).then(|| line.len() - needle.len())
        } else {
            line.find(needle)
        };
        if let Some(byte) = byte {
            return (i as u64 + 1, line[..byte].chars().count() as u64 + 1);
        }
    }
    panic!("{needle:?} not in the text after line {from}:\n{text}")
}

/// Asserts that some problem is at `needle`'s position (at or after line
/// `from`) on `field` with a message containing `message`.
#[track_caller]
pub(super) fn assert_problem(
    problems: &[Problem],
    text: &str,
    needle: &str,
    from: u64,
    field: &str,
    message: &str,
) {
    let (line, column) = pos_of(text, needle, from);
    let found = problems.iter().any(|p| {
        p.line == Some(line)
            && p.column == Some(column)
            && p.field.as_deref().unwrap_or("") == field
            && p.message.contains(message)
    });
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        found,
        "expected a problem at {line}:{column} on {field} containing {message:?}; got:\n{}",
        list.join("\n")
    );
}

/// The one problem of `text`, which must be at `needle` on `field`.
#[track_caller]
pub(super) fn rejects(text: &str, needle: &str, field: &str, message: &str) -> Problem {
    rejects_after(text, 1, needle, field, message)
}

/// Like [`rejects`], with `needle` searched from line `from`.
#[track_caller]
pub(super) fn rejects_after(
    text: &str,
    from: u64,
    needle: &str,
    field: &str,
    message: &str,
) -> Problem {
    let p = problems(text);
    assert_problem(&p, text, needle, from, field, message);
    assert_eq!(p.len(), 1, "expected only one problem: {p:#?}");
    p.into_iter().next().expect("one")
}

pub(super) fn se_with(spec_tail: &str) -> String {
    format!("{SE}{spec_tail}")
}

pub(super) fn se_and_dr(dr_tail: &str) -> String {
    format!("{SE}---\n{DR}{dr_tail}")
}

#[test]
fn minimal_service_entry_loads_with_defaults() {
    let c = load(SE);
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(
        s.port.protocol,
        Protocol::Http,
        "inferred from the name http"
    );
    assert_eq!(s.port.target_port, 80);
    assert_eq!(s.endpoints[0].port, 80);
    assert_eq!(s.endpoints[0].address.to_string(), "east.example");
    assert_eq!(c.node, NodeSettings::default());
    assert_eq!(c.vip_range, DEFAULT_VIP_RANGE);
}

#[test]
fn display_has_every_known_part() {
    let text = se_and_dr("    tunnel: {protocol: CONNECT}\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let (line, col) = pos_of(&text, "tunnel", 1);
    assert_eq!(
        p[0].to_string(),
        format!(
            "t.yaml:{line}:{col}: DestinationRule \"db-rule\" (document 2): spec.trafficPolicy.tunnel: \
             not implemented yet: redirector does not support this Istio field; remove it"
        )
    );
    let bare = Problem {
        source: "f".into(),
        line: Some(3),
        column: None,
        document: None,
        field: None,
        message: "m".into(),
    };
    assert_eq!(bare.to_string(), "f:3: m");
    let two = ConfigError {
        problems: vec![bare.clone(), Problem { line: None, ..bare }],
    };
    assert_eq!(two.to_string(), "f:3: m\nf: m");
}

#[test]
fn malformed_yaml_gives_line_and_column() {
    let text = format!("{SE}---\nkind: ServiceEntry\nspec:\n  hosts: [a.com\n  ports: 1\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let (line, _) = pos_of(&text, "  ports: 1", 15);
    assert_eq!(p[0].line, Some(line), "{p:#?}");
    assert!(p[0].column.is_some(), "{p:#?}");
    assert_eq!(p[0].document.as_deref(), Some("document 2"));
}

#[test]
fn unknown_kind_and_api_version() {
    let text = format!("{SE}---\napiVersion: v1\nkind: ConfigMap\n");
    let p = rejects(
        &text,
        "ConfigMap",
        "kind",
        "unknown kind \"ConfigMap\" (apiVersion \"v1\")",
    );
    assert_eq!(p.document.as_deref(), Some("ConfigMap (document 2)"));

    let text = SE.replace("networking.istio.io/v1", "networking.istio.io/v2");
    rejects(
        &text,
        "networking",
        "apiVersion",
        "apiVersion \"networking.istio.io/v2\" is not supported for ServiceEntry",
    );

    let text = format!(
        "{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\n"
    );
    rejects(
        &text,
        "VirtualService",
        "kind",
        "not implemented yet: kind VirtualService",
    );

    let text = format!("{SE}---\nkind: ServiceEntry\n");
    let p = problems(&text);
    assert_eq!((p.len(), p[0].line), (1, Some(15)), "{p:#?}");
    assert!(p[0].message.contains("missing `apiVersion`"), "{p:#?}");
}

#[test]
fn a_document_must_be_a_mapping() {
    let text = format!("{SE}---\n- a\n");
    rejects_after(&text, 14, "- a", "", "");
    let p = problems(&text);
    assert_eq!(p[0].field, None);
    assert!(p[0].message.contains("must be a mapping"), "{p:#?}");
}

#[test]
fn all_istio_api_versions_are_accepted() {
    for v in ["v1", "v1beta1", "v1alpha3"] {
        load(&format!(
            "{}---\n{}",
            SE.replace("/v1\n", &format!("/{v}\n")),
            DR.replace("/v1\n", &format!("/{v}\n"))
        ));
    }
}

#[test]
fn typo_is_unknown_but_istio_field_is_not_implemented() {
    let typo = se_and_dr("    connectionPol:\n      tcp: {}\n");
    let p = rejects(
        &typo,
        "connectionPol",
        "spec.trafficPolicy.connectionPol",
        "unknown field `connectionPol`, expected one of",
    );
    assert!(
        p.message.contains("connectionPool"),
        "lists the valid names: {p}"
    );

    let real = se_and_dr("    tunnel: {protocol: CONNECT}\n");
    rejects(
        &real,
        "tunnel",
        "spec.trafficPolicy.tunnel",
        "not implemented yet",
    );

    let typo = se_with("    wieght: 3\n");
    rejects(
        &typo,
        "wieght",
        "spec.endpoints[0].wieght",
        "unknown field `wieght`",
    );
    let real = se_with("    serviceAccount: sa\n");
    rejects(
        &real,
        "serviceAccount",
        "spec.endpoints[0].serviceAccount",
        "not implemented yet",
    );
}

#[test]
fn every_unimplemented_istio_field_is_rejected_with_its_line() {
    // (document tail, key, field path)
    let se_cases = [
        ("  exportTo: [\".\"]\n", "exportTo", "spec.exportTo"),
        (
            "  workloadSelector:\n    labels: {app: x}\n",
            "workloadSelector",
            "spec.workloadSelector",
        ),
        (
            "    serviceAccount: sa\n",
            "serviceAccount",
            "spec.endpoints[0].serviceAccount",
        ),
    ];
    for (tail, key, field) in se_cases {
        // Tails continue the ServiceEntry, whose last key is endpoints[0]
        // .locality: four spaces add to that endpoint, two are spec keys.
        let text = se_with(tail);
        rejects(&text, &format!("{key}:"), field, "not implemented yet");
    }
    let dr_cases = [
        (
            "    connectionPool:\n      tcp: {maxConnectionDuration: 1h}\n",
            "maxConnectionDuration",
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
        ),
        (
            "    connectionPool:\n      tcp: {idleTimeout: 1h}\n",
            "idleTimeout",
            "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
        ),
        (
            "    connectionPool:\n      http: {http2MaxRequests: 10}\n",
            "http2MaxRequests",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
        ),
        (
            "    connectionPool:\n      http: {maxConcurrentStreams: 10}\n",
            "maxConcurrentStreams",
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
        ),
        (
            "    tunnel: {protocol: CONNECT}\n",
            "tunnel",
            "spec.trafficPolicy.tunnel",
        ),
        (
            "    proxyProtocol: {}\n",
            "proxyProtocol",
            "spec.trafficPolicy.proxyProtocol",
        ),
        (
            "    loadBalancer:\n      consistentHash: {useSourceIp: true}\n",
            "consistentHash",
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "    loadBalancer:\n      warmupDurationSecs: 10s\n",
            "warmupDurationSecs",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        ),
    ];
    for (tail, key, field) in dr_cases {
        // Tails continue the DR, whose last key is outlierDetection's
        // consecutive5xxErrors: six spaces add to it, four are its siblings.
        let text = se_and_dr(tail);
        rejects(&text, &format!("{key}:"), field, "not implemented yet");
    }
    for (tail, key, field) in [
        ("  subsets:\n  - name: v1\n", "subsets", "spec.subsets"),
        ("  exportTo: [\".\"]\n", "exportTo", "spec.exportTo"),
        (
            "  workloadSelector: {matchLabels: {a: b}}\n",
            "workloadSelector",
            "spec.workloadSelector",
        ),
    ] {
        let text = format!(
            "{SE}---\n{}{tail}",
            DR.replace(
                "  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 2\n",
                ""
            )
        );
        rejects(&text, &format!("{key}:"), field, "not implemented yet");
    }
}

#[test]
fn node_config_and_overrides() {
    let node = "\
apiVersion: redirector.dev/v1alpha1
kind: NodeConfig
spec:
  locality: us-east1/b
  cgroup: /sys/fs/cgroup/app
  nameservers: [10.0.0.2, \"10.0.0.3:5353\", \"[::1]:53\"]
  listenPort: 15001
  dnsPort: 5353
  adminPort: 15100
  vipRange: 10.99.0.0/24
  pinDir: /sys/fs/bpf/r
---
";
    let text = format!("{node}{SE}");
    let c = load(&text);
    assert_eq!(
        c.node.locality,
        Some(Locality::parse("us-east1/b").expect("locality"))
    );
    assert_eq!(c.node.nameservers.len(), 3);
    assert_eq!(c.node.nameservers[0], "10.0.0.2:53".parse().expect("addr"));
    assert_eq!(c.node.listen_port, Some(15001));
    assert_eq!(c.node.dns_port, Some(5353));
    assert_eq!(c.node.admin_port, Some(15100));
    assert_eq!(c.vip_range, "10.99.0.0/24".parse().expect("net"));
    assert!(c.vip_range.contains(&c.services[0].vip));

    let overrides = NodeSettings {
        locality: Some(Locality::parse("eu-west1").expect("locality")),
        nameservers: vec!["1.1.1.1:53".parse().expect("addr")],
        vip_range: Some("10.98.0.0/24".parse().expect("net")),
        ..NodeSettings::default()
    };
    let c = load_str("t.yaml", &text, &overrides).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node.locality, overrides.locality);
    assert_eq!(c.node.nameservers, overrides.nameservers);
    assert_eq!(c.node.vip_range, overrides.vip_range);
    assert_eq!(
        c.node.listen_port,
        Some(15001),
        "unset overrides keep the file's value"
    );
    assert_eq!(c.node.cgroup, Some("/sys/fs/cgroup/app".into()));
    assert!(
        "10.98.0.0/24"
            .parse::<ipnet::Ipv4Net>()
            .expect("net")
            .contains(&c.services[0].vip)
    );

    // Overrides alone, without a NodeConfig.
    let c = load_str("t.yaml", SE, &overrides).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.node, overrides);
}

#[test]
fn node_config_rejections() {
    let node = |spec: &str| {
        format!("apiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\nspec:\n{spec}---\n{SE}")
    };
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            node("  locality: /z\n"),
            "/z",
            "spec.locality",
            "empty region",
        ),
        (
            node("  nameservers: [dns.google]\n"),
            "dns.google",
            "spec.nameservers[0]",
            "not IP or IP:PORT",
        ),
        (
            node("  listenPort: 0\n"),
            "0",
            "spec.listenPort",
            "out of range",
        ),
        (
            node("  dnsPort: 65536\n"),
            "65536",
            "spec.dnsPort",
            "0 turns DNS capture off",
        ),
        (
            node("  adminPort: -1\n"),
            "-1",
            "spec.adminPort",
            "0 turns the admin server off",
        ),
        (
            node("  vipRange: 240.240.1.0/16\n"),
            "240.240.1.0/16",
            "spec.vipRange",
            "did you mean 240.240.0.0/16?",
        ),
        (
            node("  vipRange: fd00::/64\n"),
            "fd00::/64",
            "spec.vipRange",
            "an IPv6 range belongs in vipRange6",
        ),
        (
            node("  vipRange6: 10.0.0.0/8\n"),
            "10.0.0.0/8",
            "spec.vipRange6",
            "not an IPv6 CIDR",
        ),
        (
            node("  vipRange6: \"fd00::1/64\"\n"),
            "\"fd00::1/64",
            "spec.vipRange6",
            "has host bits set; did you mean fd00::/64?",
        ),
        (
            node("  vipRange: lots\n"),
            "lots",
            "spec.vipRange",
            "not an IPv4 CIDR",
        ),
        (
            node("  cgroup: \"\"\n"),
            "\"\"",
            "spec.cgroup",
            "must be a path",
        ),
        (
            node("  listenPorts: 1\n"),
            "listenPorts",
            "spec.listenPorts",
            "unknown field `listenPorts`, expected one of",
        ),
        (
            format!("apiVersion: redirector.dev/v1\nkind: NodeConfig\n---\n{SE}"),
            "redirector.dev/v1",
            "apiVersion",
            "expected redirector.dev/v1alpha1",
        ),
        (
            format!(
                "apiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\n---\n{SE}---\napiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\n"
            ),
            "NodeConfig\n",
            "kind",
            "only one NodeConfig is allowed; the first is NodeConfig (document 1)",
        ),
    ];
    for (text, needle, field, message) in &cases {
        // The duplicate NodeConfig is the second one.
        let from = if message.contains("only one") { 5 } else { 1 };
        let p = problems(text);
        assert_problem(&p, text, needle, from, field, message);
        assert_eq!(
            p.len(),
            1,
            "one problem expected for {field} {message:?}: {p:#?}"
        );
    }
}

#[test]
fn problems_from_all_documents_are_reported_together_in_line_order() {
    let text = format!(
        "{}---\n{}---\n{}",
        SE.replace("resolution: DNS", "resolution: NONE")
            .replace("number: 80", "number: 0"),
        DR.replace(
            "consecutive5xxErrors: 2",
            "consecutive5xxErrors: 2\n      maxEjectionPercent: 101\n      interval: x"
        ),
        "apiVersion: nope\nkind: Nope\n",
    );
    let p = problems(&text);
    let lines: Vec<Option<u64>> = p.iter().map(|p| p.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "sorted by line: {p:#?}");
    for (needle, from, message) in [
        ("NONE", 1, "resolution NONE"),
        ("number: 0", 1, "out of range"),
        ("101", 15, "out of range"),
        ("x\n", 24, "invalid duration"),
        ("Nope", 26, "unknown kind"),
    ] {
        let (line, _) = pos_of(&text, needle, from);
        assert!(
            p.iter()
                .any(|p| p.line == Some(line) && p.message.contains(message)),
            "missing {message:?} on line {line}: {p:#?}"
        );
    }
    // The DestinationRule's own problems do not hide that it matched its host.
    assert!(
        !p.iter()
            .any(|p| p.message.contains("no ServiceEntry has host")),
        "{p:#?}"
    );
}

#[test]
fn duplicate_keys_are_rejected_in_a_named_document() {
    let text = SE.replace(
        "    locality: us-east1\n",
        "    locality: us-east1\n    locality: us-west1\n",
    );
    let p = rejects_after(
        &text,
        14,
        "locality",
        "spec.endpoints[0]",
        "duplicate mapping key `locality`",
    );
    assert_eq!(
        p.document.as_deref(),
        Some("ServiceEntry \"db\" (document 1)")
    );
}

#[test]
fn anchors_and_merge_keys_work() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [mydb.com]
  resolution: DNS
  ports:
  - &web {number: 80, name: http}
  - <<: *web
    number: 8080
    name: http-alt
  endpoints:
  - address: east.example
";
    let c = load(text);
    let ports: Vec<(u16, &str)> = c
        .services
        .iter()
        .map(|s| (s.port.number, s.port.name.as_str()))
        .collect();
    assert_eq!(ports, [(80, "http"), (8080, "http-alt")]);
}

#[test]
fn serde_reports_one_problem_per_document() {
    let bad = SE.replace(
        "  resolution: DNS\n",
        "  resolution: DNS\n  typo1: 1\n  typo2: 2\n",
    );
    let text = format!(
        "{bad}---\n{}",
        bad.replace("name: db", "name: db2")
            .replace("mydb.com", "other.com")
    );
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p.iter()
            .all(|p| p.message.contains("unknown field `typo1`")),
        "{p:#?}"
    );
    assert_eq!(
        p[1].document.as_deref(),
        Some("ServiceEntry \"db2\" (document 2)")
    );
}

#[test]
fn unreadable_file_is_one_problem() {
    let e = load_file(
        std::path::Path::new("/nonexistent/redirector.yaml"),
        &NodeSettings::default(),
    )
    .expect_err("no such file");
    assert_eq!(e.problems.len(), 1);
    let text = e.to_string();
    assert!(
        text.starts_with("/nonexistent/redirector.yaml: cannot read the config file: "),
        "{text}"
    );
}

#[test]
fn empty_file_has_no_services() {
    let c = load("# nothing yet\n---\n");
    assert!(c.services.is_empty());
}
