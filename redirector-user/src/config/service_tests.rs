//! ServiceEntry rules and VIP allocation, through `load_str`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::model::{DEFAULT_VIP_RANGE6, Resolution};
use super::tests::*;
use super::*;
use crate::topology::Locality;

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
                "  resolution: DNS\n  addresses: [\"2001:db8::1\", \"2001:db8::2\"]\n",
            ),
            "\"2001:db8::2",
            "spec.addresses[1]",
            "not implemented yet: more than one address of a family",
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
            "spec.addresses[1]",
            "not implemented yet: more than one address",
        ),
        (
            with(
                "  resolution: DNS\n",
                "  resolution: DNS\n  addresses: [banana]\n",
            ),
            "banana",
            "spec.addresses[0]",
            "not an IP address",
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
            with("east.example", "\"ff02::1\""),
            "\"ff02",
            "spec.endpoints[0].address",
            "ff02::1 cannot be an endpoint address",
        ),
        (
            with("east.example", "not..valid"),
            "not..valid",
            "spec.endpoints[0].address",
            "IP address or a DNS name",
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
        EndpointAddress::Ip(Ipv4Addr::new(10, 1, 0, 1).into())
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
        weight: 1,
        labels: Default::default(),
        network: String::new(),
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
fn ipv6_vips_come_from_addresses_or_the_ipv6_range_and_stay_put() {
    let a = named_se(
        "a",
        "[a.example]",
        "  addresses: [10.7.7.7, \"2001:db8::7\"]\n",
    );
    let b = named_se("b", "[b.example]", "");
    let one = load(&format!("{a}---\n{b}"));
    let svc = |c: &Config, host: &str| {
        c.services
            .iter()
            .find(|s| s.host == host)
            .cloned()
            .expect("the service")
    };
    let a1 = svc(&one, "a.example");
    assert_eq!(
        (a1.vip, a1.vip6, a1.vip6_allocated),
        (
            Ipv4Addr::new(10, 7, 7, 7),
            "2001:db8::7".parse().unwrap(),
            false
        )
    );
    let b1 = svc(&one, "b.example");
    assert!(b1.vip6_allocated);
    assert_eq!(one.vip_range6, DEFAULT_VIP_RANGE6);
    // The documented hash, after the range's first address.
    let expected = u128::from(std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1))
        + u128::from(vip::fnv1a64(b"b.example"));
    assert_eq!(b1.vip6, std::net::Ipv6Addr::from(expected));
    // Unrelated hosts, and an explicit IPv6 address elsewhere, move nothing.
    let c = named_se("c", "[c.example]", "  addresses: [\"2001:db8::8\"]\n");
    let d = named_se("d", "[d.example, e.example]", "");
    let two = load(&format!("{c}---\n{d}---\n{b}---\n{a}"));
    assert_eq!(svc(&two, "b.example").vip6, b1.vip6);
    assert_eq!(svc(&two, "b.example").vip, b1.vip);
    assert_eq!(svc(&two, "a.example").vip6, a1.vip6);
    // An IPv6-only `addresses` still gets an IPv4 VIP allocated.
    let three = load(&c);
    assert!(svc(&three, "c.example").vip_allocated);
    // vipRange6 moves allocations into it.
    let overrides = NodeSettings {
        vip_range6: Some("fd00:1::/64".parse().expect("net")),
        ..Default::default()
    };
    let moved = load_str("t.yaml", &b, &overrides).expect("loads");
    let range: ipnet::Ipv6Net = "fd00:1::/64".parse().unwrap();
    assert!(range.contains(&moved.services[0].vip6), "{moved:#?}");
    // Two hosts on one IPv6 address and port clash like IPv4 ones.
    let p = problems(&named_se(
        "x",
        "[x.example, y.example]",
        "  addresses: [\"2001:db8::9\"]\n",
    ));
    assert!(
        p.iter()
            .any(|p| p.message.contains("[2001:db8::9]:80 is used by both")),
        "{p:#?}"
    );
}

#[test]
fn ipv6_endpoints_load_and_must_not_be_their_own_vip() {
    let text = SE
        .replace("resolution: DNS", "resolution: STATIC")
        .replace("east.example", "\"fd00::2\"")
        .replace("west.example", "10.0.0.3");
    let c = load(&text);
    assert_eq!(
        c.services[0].endpoints[0].address,
        EndpointAddress::Ip("fd00::2".parse().unwrap())
    );
    let looping = named_se("a", "[a.example]", "  addresses: [\"2001:db8::7\"]\n")
        .replace("east.example", "\"2001:db8::7\"");
    let p = problems(&looping);
    assert!(
        p.iter().any(|p| p
            .message
            .contains("2001:db8::7 is the VIP of a.example itself")),
        "{p:#?}"
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
