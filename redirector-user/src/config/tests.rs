//! Loading and rejection, end to end through `load_str`: every rejection is
//! checked for its message and for where it points.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;

const SE: &str = "\
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

const DR: &str = "\
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

fn load(text: &str) -> Config {
    load_str("t.yaml", text, &NodeSettings::default())
        .unwrap_or_else(|e| panic!("should load:\n{e}\n--- text ---\n{text}"))
}

fn problems(text: &str) -> Vec<Problem> {
    problems_with(text, &NodeSettings::default())
}

fn problems_with(text: &str, overrides: &NodeSettings) -> Vec<Problem> {
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
fn pos_of(text: &str, needle: &str, from: u64) -> (u64, u64) {
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
fn assert_problem(
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
fn rejects(text: &str, needle: &str, field: &str, message: &str) -> Problem {
    rejects_after(text, 1, needle, field, message)
}

/// Like [`rejects`], with `needle` searched from line `from`.
#[track_caller]
fn rejects_after(text: &str, from: u64, needle: &str, field: &str, message: &str) -> Problem {
    let p = problems(text);
    assert_problem(&p, text, needle, from, field, message);
    assert_eq!(p.len(), 1, "expected only one problem: {p:#?}");
    p.into_iter().next().expect("one")
}

fn se_with(spec_tail: &str) -> String {
    format!("{SE}{spec_tail}")
}

fn se_and_dr(dr_tail: &str) -> String {
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
    let text = se_and_dr("    connectionPool:\n      tcp: {maxConnections: 1}\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    let (line, col) = pos_of(&text, "connectionPool", 1);
    assert_eq!(
        p[0].to_string(),
        format!(
            "t.yaml:{line}:{col}: DestinationRule \"db-rule\" (document 2): spec.trafficPolicy.connectionPool: \
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

    let real = se_and_dr("    connectionPool:\n      tcp: {}\n");
    rejects(
        &real,
        "connectionPool",
        "spec.trafficPolicy.connectionPool",
        "not implemented yet",
    );

    let typo = se_with("    wieght: 3\n");
    rejects(
        &typo,
        "wieght",
        "spec.endpoints[0].wieght",
        "unknown field `wieght`",
    );
    let real = se_with("    weight: 3\n");
    rejects(
        &real,
        "weight",
        "spec.endpoints[0].weight",
        "not implemented yet",
    );
}

#[test]
fn every_unimplemented_istio_field_is_rejected_with_its_line() {
    // (document tail, key, field path)
    let se_cases = [
        ("  exportTo: [\".\"]\n", "exportTo", "spec.exportTo"),
        (
            "  subjectAltNames: [a]\n",
            "subjectAltNames",
            "spec.subjectAltNames",
        ),
        (
            "  workloadSelector:\n    labels: {app: x}\n",
            "workloadSelector",
            "spec.workloadSelector",
        ),
        ("    weight: 2\n", "weight", "spec.endpoints[0].weight"),
        ("    labels: {a: b}\n", "labels", "spec.endpoints[0].labels"),
        ("    network: n1\n", "network", "spec.endpoints[0].network"),
        (
            "    serviceAccount: sa\n",
            "serviceAccount",
            "spec.endpoints[0].serviceAccount",
        ),
    ];
    for (tail, key, field) in se_cases {
        // Spec-level keys go after the endpoint list: indent them as spec keys.
        let text = se_with(tail);
        rejects(&text, &format!("{key}:"), field, "not implemented yet");
    }
    let dr_cases = [
        (
            "    connectionPool:\n      http: {}\n",
            "connectionPool",
            "spec.trafficPolicy.connectionPool",
        ),
        (
            "    portLevelSettings: []\n",
            "portLevelSettings",
            "spec.trafficPolicy.portLevelSettings",
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
            "      consecutiveErrors: 1\n",
            "consecutiveErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
        ),
        (
            "      consecutiveGatewayErrors: 1\n",
            "consecutiveGatewayErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors",
        ),
        (
            "      consecutiveLocalOriginFailures: 1\n",
            "consecutiveLocalOriginFailures",
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        ),
        (
            "      splitExternalLocalOriginErrors: true\n",
            "splitExternalLocalOriginErrors",
            "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
        ),
        (
            "      maxEjectionPercent: 50\n",
            "maxEjectionPercent",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            "      minHealthPercent: 50\n",
            "minHealthPercent",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
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
        (
            "    loadBalancer:\n      localityLbSetting:\n        failoverPriority: [topology.kubernetes.io/region]\n",
            "failoverPriority",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority",
        ),
        (
            "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: a/*\n          to: {\"a/*\": 100}\n",
            "distribute",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute",
        ),
        (
            "    tls: {mode: SIMPLE, clientCertificate: /c.pem}\n",
            "clientCertificate",
            "spec.trafficPolicy.tls.clientCertificate",
        ),
        (
            "    tls: {mode: SIMPLE, privateKey: /k.pem}\n",
            "privateKey",
            "spec.trafficPolicy.tls.privateKey",
        ),
        (
            "    tls: {mode: SIMPLE, subjectAltNames: [a]}\n",
            "subjectAltNames",
            "spec.trafficPolicy.tls.subjectAltNames",
        ),
        (
            "    tls: {mode: SIMPLE, insecureSkipVerify: true}\n",
            "insecureSkipVerify",
            "spec.trafficPolicy.tls.insecureSkipVerify",
        ),
        (
            "    tls: {mode: SIMPLE, credentialName: c}\n",
            "credentialName",
            "spec.trafficPolicy.tls.credentialName",
        ),
        (
            "    tls: {mode: SIMPLE, caCrl: /crl.pem}\n",
            "caCrl",
            "spec.trafficPolicy.tls.caCrl",
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
fn service_entry_rejections() {
    let with = |from: &str, to: &str| {
        assert!(SE.contains(from), "{from:?} not in SE");
        SE.replacen(from, to, 1)
    };
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            with("[mydb.com]", "[\"*.mydb.com\"]"),
            "\"*.mydb.com\"",
            "spec.hosts[0]",
            "not implemented yet: wildcard host",
        ),
        (
            with("[mydb.com]", "[10.1.1.1]"),
            "10.1.1.1",
            "spec.hosts[0]",
            "is an IP address",
        ),
        (
            with("[mydb.com]", "[bad_host-.com]"),
            "bad_host-.com",
            "spec.hosts[0]",
            "not a valid DNS name",
        ),
        (
            with("[mydb.com]", "[mydb.com, mydb.com]"),
            "mydb.com]",
            "spec.hosts[1]",
            "listed twice",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [\"2001:db8::1\"]\n",
            ),
            "\"2001",
            "spec.addresses[0]",
            "not implemented yet: IPv6",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [10.0.0.0/24]\n",
            ),
            "10.0.0.0/24",
            "spec.addresses[0]",
            "not implemented yet: CIDR",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [10.0.0.1, 10.0.0.2]\n",
            ),
            "10.0.0.2",
            "spec.addresses",
            "not implemented yet: more than one address",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [banana]\n",
            ),
            "banana",
            "spec.addresses[0]",
            "not an IPv4 address",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [0.0.0.0]\n",
            ),
            "0.0.0.0",
            "spec.addresses[0]",
            "cannot be a service address",
        ),
        (
            with("number: 80", "number: 0"),
            "0\n",
            "spec.ports[0].number",
            "out of range 1-65535",
        ),
        (
            with("number: 80", "number: 70000"),
            "70000",
            "spec.ports[0].number",
            "out of range 1-65535",
        ),
        (
            with("    name: http\n", "    name: http\n    targetPort: -1\n"),
            "-1",
            "spec.ports[0].targetPort",
            "out of range",
        ),
        (
            with("    name: http\n", ""),
            "number: 80",
            "spec.ports[0].name",
            "port name is required",
        ),
        (
            with(
                "    name: http\n",
                "    name: http\n  - number: 81\n    name: http # again\n",
            ),
            "http # again",
            "spec.ports[1].name",
            "port name \"http\" is used twice",
        ),
        (
            with(
                "    name: http\n",
                "    name: http\n  - number: 80 # again\n    name: web\n",
            ),
            "80 # again",
            "spec.ports[1].number",
            "port 80 is listed twice",
        ),
        (
            with("  ports:\n", "  location: MESH_INTERNAL\n  ports:\n"),
            "MESH_INTERNAL",
            "spec.location",
            "not implemented yet: location MESH_INTERNAL",
        ),
        (
            with("  ports:\n", "  location: OUTSIDE\n  ports:\n"),
            "OUTSIDE",
            "spec.location",
            "unknown location",
        ),
        (
            with("resolution: DNS", "resolution: NONE"),
            "NONE",
            "spec.resolution",
            "not implemented yet: resolution NONE; use DNS or STATIC",
        ),
        (
            with("resolution: DNS", "resolution: DNS_ROUND_ROBIN"),
            "DNS_ROUND_ROBIN",
            "spec.resolution",
            "not implemented yet",
        ),
        (
            with("resolution: DNS", "resolution: dns"),
            "dns",
            "spec.resolution",
            "unknown resolution",
        ),
        (
            with("  resolution: DNS\n", ""),
            "hosts:",
            "spec.resolution",
            "Istio's default NONE is not implemented yet; set resolution: DNS or STATIC",
        ),
        (
            with("resolution: DNS", "resolution: STATIC"),
            "east.example",
            "spec.endpoints[0].address",
            "resolution STATIC needs IP addresses",
        ),
        (
            with("east.example", "unix:///var/run/db.sock"),
            "unix://",
            "spec.endpoints[0].address",
            "unix domain socket",
        ),
        (
            with("east.example", "\"2001:db8::2\""),
            "\"2001",
            "spec.endpoints[0].address",
            "not implemented yet: IPv6 endpoint",
        ),
        (
            with("east.example", "not..valid"),
            "not..valid",
            "spec.endpoints[0].address",
            "IPv4 address or a DNS name",
        ),
        (
            with("locality: us-east1", "locality: a/b/c/d"),
            "a/b/c/d",
            "spec.endpoints[0].locality",
            "more than three",
        ),
        (
            with("  - address: east.example\n", "  - "),
            "locality: us-east1",
            "spec.endpoints[0].address",
            "endpoint address is required",
        ),
        (
            with(
                "    locality: us-east1\n",
                "    locality: us-east1\n    ports: {https: 8443}\n",
            ),
            "https",
            "spec.endpoints[0].ports.https",
            "\"https\" is not the name of a port of this ServiceEntry (ports: http)",
        ),
        (
            with(
                "    locality: us-east1\n",
                "    locality: us-east1\n    ports: {http: 0}\n",
            ),
            "0}",
            "spec.endpoints[0].ports.http",
            "out of range",
        ),
        (
            with("  hosts: [mydb.com]\n", "  hosts: []\n"),
            "[]",
            "spec.hosts",
            "at least one host",
        ),
        (
            with(
                "  ports:\n  - number: 80\n    name: http\n",
                "  ports: []\n",
            ),
            "[]",
            "spec.ports",
            "at least one port",
        ),
        (
            with("  name: db\n", "  namespace: ns\n"),
            "namespace",
            "metadata.name",
            "metadata.name is required",
        ),
        (
            with("  name: db\n", "  name: db\n  uid: 1234\n"),
            "uid",
            "metadata.uid",
            "unknown field `uid`, expected one of name, namespace, labels, annotations",
        ),
    ];
    for (text, needle, field, message) in &cases {
        let p = problems(text);
        assert_problem(&p, text, needle, 1, field, message);
        assert_eq!(
            p.len(),
            1,
            "one problem expected for {field} {message:?}: {p:#?}"
        );
    }
}

#[test]
fn static_needs_endpoints_and_ips() {
    let text = SE
        .replace("resolution: DNS", "resolution: STATIC")
        .replace("east.example", "10.1.0.1");
    let c = load(&text);
    assert_eq!(c.services[0].resolution, Resolution::Static);
    assert_eq!(
        c.services[0].endpoints[0].address,
        EndpointAddress::Ip(Ipv4Addr::new(10, 1, 0, 1))
    );

    let text = SE.replace("resolution: DNS", "resolution: STATIC").replace(
        "  endpoints:\n  - address: east.example\n    locality: us-east1\n",
        "",
    );
    rejects(
        &text,
        "[mydb.com]",
        "spec.endpoints",
        "resolution STATIC needs endpoints",
    );
}

#[test]
fn dns_without_endpoints_resolves_each_host() {
    let text = SE
        .replace("[mydb.com]", "[b.example, a.example]")
        .replace("    name: http\n", "    name: http\n    targetPort: 8080\n")
        .replace(
            "  endpoints:\n  - address: east.example\n    locality: us-east1\n",
            "",
        );
    let c = load(&text);
    let got: Vec<(&str, EndpointSpec)> = c
        .services
        .iter()
        .map(|s| (s.host.as_str(), s.endpoints[0].clone()))
        .collect();
    let want = |h: &str| EndpointSpec {
        address: EndpointAddress::Dns(h.into()),
        port: 8080,
        locality: Locality::default(),
    };
    assert_eq!(
        got,
        [
            ("a.example", want("a.example")),
            ("b.example", want("b.example"))
        ]
    );
    assert!(c.services.iter().all(|s| s.endpoints.len() == 1));
}

#[test]
fn endpoint_ports_map_by_name_else_target_port() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi, namespace: ns}
spec:
  hosts: [multi.example]
  resolution: DNS
  ports:
  - {number: 80, name: http, targetPort: 8080}
  - {number: 443, name: tls-x}
  endpoints:
  - address: a.example
    ports: {http: 9090}
  - address: b.example
    ports: {tls-x: 9443, http: 9091}
  - address: c.example
";
    let c = load(text);
    let ports = |i: usize| -> Vec<u16> { c.services[i].endpoints.iter().map(|e| e.port).collect() };
    assert_eq!(c.services[0].port.number, 80);
    assert_eq!(ports(0), [9090, 9091, 8080]);
    assert_eq!(c.services[1].port.number, 443);
    assert_eq!(c.services[1].port.target_port, 443);
    assert_eq!(c.services[1].port.protocol, Protocol::Tls);
    assert_eq!(ports(1), [443, 9443, 443]);
    assert_eq!(c.services[0].service_entry, "ns/multi");
    assert_eq!(c.services[0].vip, c.services[1].vip, "one VIP per host");
}

#[test]
fn protocol_is_explicit_or_inferred_from_the_name() {
    let port = |name: &str, protocol: Option<&str>| {
        let line = match protocol {
            Some(p) => format!("    name: {name}\n    protocol: {p}\n"),
            None => format!("    name: {name}\n"),
        };
        SE.replace("    name: http\n", &line)
    };
    for (name, want) in [
        ("http", Protocol::Http),
        ("http-web", Protocol::Http),
        ("HTTP-upper", Protocol::Http),
        ("https", Protocol::Https),
        ("https-api", Protocol::Https),
        ("tls", Protocol::Tls),
        ("tls-db", Protocol::Tls),
        ("tcp-db", Protocol::Tcp),
        ("http2", Protocol::Tcp),
        ("grpc-x", Protocol::Tcp),
        ("postgres", Protocol::Tcp),
        ("httpx", Protocol::Tcp),
    ] {
        assert_eq!(
            load(&port(name, None)).services[0].port.protocol,
            want,
            "name {name}"
        );
    }
    for (p, want) in [
        ("HTTP", Protocol::Http),
        ("https", Protocol::Https),
        ("Tcp", Protocol::Tcp),
        ("TLS", Protocol::Tls),
    ] {
        assert_eq!(
            load(&port("web", Some(p))).services[0].port.protocol,
            want,
            "protocol {p}"
        );
    }
    for p in [
        "GRPC", "HTTP2", "GRPC-WEB", "MONGO", "MYSQL", "REDIS", "UDP", "grpc",
    ] {
        let text = port("web", Some(p));
        rejects(
            &text,
            &format!("protocol: {p}")[10..],
            "spec.ports[0].protocol",
            "not implemented yet: protocol",
        );
    }
    let text = port("web", Some("SMTP"));
    rejects(
        &text,
        "SMTP",
        "spec.ports[0].protocol",
        "unknown protocol \"SMTP\"; expected HTTP, HTTPS, TCP or TLS",
    );
}

#[test]
fn same_host_in_two_service_entries() {
    let text = format!("{SE}---\n{}", SE.replace("name: db", "name: db2"));
    let p = rejects_after(&text, 15, "mydb.com", "spec.hosts[0]", "");
    assert!(
        p.message
            .contains("already defined by ServiceEntry \"db\" (document 1)"),
        "{p}"
    );
    assert_eq!(
        p.document.as_deref(),
        Some("ServiceEntry \"db2\" (document 2)")
    );
}

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
            tp("    loadBalancer: {simple: LEAST_REQUEST}\n"),
            "LEAST_REQUEST",
            "spec.trafficPolicy.loadBalancer.simple",
            "not implemented yet: load balancer LEAST_REQUEST",
        ),
        (
            tp("    loadBalancer: {simple: RANDOM}\n"),
            "RANDOM",
            "spec.trafficPolicy.loadBalancer.simple",
            "ROUND_ROBIN only",
        ),
        (
            tp("    loadBalancer: {simple: PASSTHROUGH}\n"),
            "PASSTHROUGH",
            "spec.trafficPolicy.loadBalancer.simple",
            "not implemented yet",
        ),
        (
            tp("    loadBalancer: {simple: LEAST_CONN}\n"),
            "LEAST_CONN",
            "spec.trafficPolicy.loadBalancer.simple",
            "not implemented yet",
        ),
        (
            tp("    loadBalancer: {simple: FASTEST}\n"),
            "FASTEST",
            "spec.trafficPolicy.loadBalancer.simple",
            "unknown load balancer",
        ),
        (
            tp(
                "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1/a, to: us-west}]\n",
            ),
            "us-east1/a",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from",
            "not a region",
        ),
        (
            tp(
                "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1, to: us-east1}]\n",
            ),
            "us-east1}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
            "failover from us-east1 to itself",
        ),
        (
            tp(
                "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us-east1}]\n",
            ),
            "{from",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to",
            "required",
        ),
        (
            tp("    tls: {mode: MUTUAL}\n"),
            "MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "not implemented yet: tls mode MUTUAL",
        ),
        (
            tp("    tls: {mode: ISTIO_MUTUAL}\n"),
            "ISTIO_MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "no mesh identity",
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
            "only used with tls mode SIMPLE",
        ),
        (
            tp("    tls: {mode: DISABLE, caCertificates: /ca.pem}\n"),
            "caCertificates",
            "spec.trafficPolicy.tls.caCertificates",
            "only used with tls mode SIMPLE",
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
            base_ejection_time: Duration::from_secs(30)
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
            base_ejection_time: Duration::from_secs(5400)
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
            node("  vipRange: 240.240.1.0/16\n"),
            "240.240.1.0/16",
            "spec.vipRange",
            "did you mean 240.240.0.0/16?",
        ),
        (
            node("  vipRange: fd00::/64\n"),
            "fd00::/64",
            "spec.vipRange",
            "not implemented yet: IPv6 vipRange",
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
            "consecutive5xxErrors: 2\n      maxEjectionPercent: 10\n      interval: x"
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
        ("maxEjectionPercent", 15, "not implemented yet"),
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

fn vip_of(c: &Config, host: &str) -> Ipv4Addr {
    c.services
        .iter()
        .find(|s| s.host == host)
        .unwrap_or_else(|| panic!("no {host}"))
        .vip
}

fn named_se(name: &str, hosts: &str, extra: &str) -> String {
    SE.replace("name: db", &format!("name: {name}"))
        .replace("[mydb.com]", hosts)
        .replace(
            "  resolution: DNS\n",
            &format!("  resolution: DNS\n{extra}"),
        )
}

#[test]
fn vips_are_deterministic_whatever_the_document_order() {
    let a = named_se("a", "[a.example, c.example]", "");
    let b = named_se("b", "[b.example]", "");
    let fixed = named_se("f", "[f.example]", "  addresses: [10.7.7.7]\n");
    let one = load(&format!("{a}---\n{b}---\n{fixed}"));
    let two = load(&format!("{fixed}---\n{b}---\n{a}"));
    for host in ["a.example", "b.example", "c.example", "f.example"] {
        assert_eq!(vip_of(&one, host), vip_of(&two, host), "{host}");
    }
    let vips: BTreeSet<Ipv4Addr> = one.services.iter().map(|s| s.vip).collect();
    assert_eq!(vips.len(), 4, "distinct VIPs");
    assert_eq!(vip_of(&one, "f.example"), Ipv4Addr::new(10, 7, 7, 7));
    assert!(
        !one.services
            .iter()
            .find(|s| s.host == "f.example")
            .expect("f")
            .vip_allocated
    );
    // The allocation is the documented hash: FNV-1a of the host, modulo the
    // usable addresses, after the network address.
    let expected = 0xf0f0_0001 + (vip::fnv1a64(b"b.example") % 65534) as u32;
    assert_eq!(vip_of(&one, "b.example"), Ipv4Addr::from(expected));
    // Same file, same VIPs.
    assert_eq!(
        vip_of(&load(&format!("{a}---\n{b}---\n{fixed}")), "a.example"),
        vip_of(&one, "a.example")
    );
}

#[test]
fn allocation_probes_past_explicit_addresses() {
    let node = |range: &str| {
        format!(
            "apiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\nspec: {{vipRange: {range}}}\n---\n"
        )
    };
    let free = load(&format!(
        "{}{}",
        node("10.9.0.0/24"),
        named_se("a", "[a.example]", "")
    ));
    let slot = vip_of(&free, "a.example");
    let next = Ipv4Addr::from(if u32::from(slot) == 0x0a09_00fe {
        0x0a09_0001
    } else {
        u32::from(slot) + 1
    });
    // Another ServiceEntry takes a.example's slot explicitly: a.example moves on.
    let text = format!(
        "{}{}---\n{}",
        node("10.9.0.0/24"),
        named_se("a", "[a.example]", ""),
        named_se("x", "[x.example]", &format!("  addresses: [{slot}]\n"))
    );
    let c = load(&text);
    assert_eq!(vip_of(&c, "x.example"), slot);
    assert_eq!(vip_of(&c, "a.example"), next);
}

#[test]
fn exhausted_range_is_reported_at_the_host() {
    let text = format!(
        "apiVersion: redirector.dev/v1alpha1\nkind: NodeConfig\nspec: {{vipRange: 10.9.0.0/30}}\n---\n{}",
        named_se("a", "[a.example, b.example, c.example]", "")
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].message
            .contains("no free VIP left for host c.example in 10.9.0.0/30 (2 usable addresses)"),
        "{p:#?}"
    );
    assert_eq!(
        (p[0].line, p[0].column),
        (
            Some(pos_of(&text, "c.example", 1).0),
            Some(pos_of(&text, "c.example", 1).1)
        )
    );
    // The flag's range counts too.
    let overrides = NodeSettings {
        vip_range: Some("10.9.0.0/31".parse().expect("net")),
        ..NodeSettings::default()
    };
    let p = problems_with(
        &named_se("a", "[a.example, b.example, c.example]", ""),
        &overrides,
    );
    assert!(p[0].message.contains("10.9.0.0/31 (2 usable"), "{p:#?}");
}

#[test]
fn vip_and_port_pairs_are_unique() {
    let a = named_se("a", "[a.example]", "  addresses: [10.7.7.7]\n");
    let b = named_se("b", "[b.example]", "  addresses: [\"10.7.7.7/32\"]\n");
    let text = format!("{a}---\n{b}");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].message
            .contains("10.7.7.7:80 is used by both a.example and b.example"),
        "{p:#?}"
    );
    assert_eq!(p[0].line, Some(pos_of(&text, "- number: 80", 15).0));
    // Another port on the same address is fine.
    load(&format!(
        "{a}---\n{}",
        b.replace("number: 80", "number: 81")
    ));
    // One address for two hosts puts both on the same VIP:port.
    let text = named_se("a", "[a.example, b.example]", "  addresses: [10.7.7.7]\n");
    let p = problems(&text);
    assert!(
        p[0].message
            .contains("used by both a.example and b.example"),
        "{p:#?}"
    );
}

#[test]
fn endpoint_on_its_own_vip_would_loop() {
    let text = named_se("a", "[a.example]", "  addresses: [10.7.7.7]\n")
        .replace("east.example", "10.7.7.7");
    rejects_after(
        &text,
        12,
        "10.7.7.7",
        "spec.endpoints[0].address",
        "is the VIP of a.example itself",
    );
}
