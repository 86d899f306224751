//! The HTTPS variant of the blog on one [`Node`]: DNS names `east.test`
//! and `west.test` for HTTPS endpoints on loopback addresses, a CA made for
//! the test, and the blog's HTTPS documents with those names.

use std::path::{Path, PathBuf};

use crate::{
    https::{HttpsServer, TlsOptions},
    pki::TestCa,
    scenario::{Node, count},
};

pub const VIP: &str = "240.240.0.20";
pub const EAST: &str = "healthy: east";
pub const WEST: &str = "healthy: west";
pub const EAST_TLS: &str = "127.0.10.1:443";
pub const WEST_TLS: &str = "127.0.10.2:443";

/// A node whose DNS knows `east.test` and `west.test`, and a fresh CA
/// whose root is written into the node's directory.
pub fn node() -> (Node, TestCa, PathBuf) {
    let node = Node::new();
    node.a_record("east.test", [127, 0, 10, 1], 30);
    node.a_record("west.test", [127, 0, 10, 2], 30);
    let ca = TestCa::new();
    let ca_file = ca.write_ca(node.dir.path());
    (node, ca, ca_file)
}

/// An HTTPS endpoint in the node's namespace.
pub fn https(node: &Node, addr: &str, name: &str, cert: (String, String)) -> HttpsServer {
    https_with(node, addr, name, cert, &TlsOptions::default())
}

/// An HTTPS endpoint that demands what `options` say.
pub fn https_with(
    node: &Node,
    addr: &str,
    name: &str,
    (cert, key): (String, String),
    options: &TlsOptions,
) -> HttpsServer {
    HttpsServer::start_with(&node.ns, addr.parse().unwrap(), name, &cert, &key, options)
        .unwrap_or_else(|e| panic!("starting HTTPS server {name} on {addr}: {e:#}"))
}

/// The blog's HTTPS ServiceEntry (`config/blog/04`) with our endpoints
/// (`(address, locality)`, port 443 by port name) and an explicit VIP.
pub fn entry(endpoints: &[(&str, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(address, locality)| {
            format!(
                " - address: {address}
   locality: {locality}
   ports:
     http-port: 443
"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
 name: external-svc-dns
spec:
 hosts:
 - mydb.com
 addresses:
 - {VIP}
 ports:
 - number: 80
   name: http-port
   protocol: HTTP
 resolution: DNS
 endpoints:
{endpoints}"
    )
}

/// The blog's HTTPS DestinationRule (`config/blog/05`): SIMPLE TLS,
/// failover us-east1 → us-west, eject after one failure for 1m; plus
/// `caCertificates` and, if given, `sni`.
pub fn rule(ca_file: &Path, sni: Option<&str>) -> String {
    let sni = sni.map(|s| format!("     sni: {s}\n")).unwrap_or_default();
    rule_with(ca_file, &sni, "")
}

/// [`rule`] with more `tls` lines (indented five spaces) and more
/// `trafficPolicy` entries (indented three).
pub fn rule_with(ca_file: &Path, tls: &str, policy: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
 name: mydynamodb
spec:
 host: mydb.com
 trafficPolicy:
   tls:
     mode: SIMPLE
     caCertificates: {}
{tls}   loadBalancer:
     simple: ROUND_ROBIN
     localityLbSetting:
       enabled: true
       failover:
         - from: us-east1
           to: us-west
   outlierDetection:
     consecutive5xxErrors: 1
     interval: 15s
     baseEjectionTime: 1m
{policy}",
        ca_file.display()
    )
}

/// Both regions, as in the blog.
pub fn two_regions(ca_file: &Path, sni: Option<&str>) -> String {
    entry(&[("east.test", "us-east1"), ("west.test", "us-west")]) + &rule(ca_file, sni)
}

/// `text` with the one occurrence of `from` replaced by `to`.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in:\n{text}");
    text.replacen(from, to, 1)
}

/// Ten requests, all answered by west; east (whose TLS is broken) never
/// completed a handshake nor saw a request and is ejected with a TLS error
/// containing `error`. Returns east's row.
pub fn assert_failed_over(
    node: &Node,
    east_tls: Option<&HttpsServer>,
    error: &str,
) -> serde_json::Value {
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    if let Some(east) = east_tls {
        assert_eq!(east.handshakes(), 0, "no handshake with east completed");
        assert_eq!(east.requests(), 0, "east saw no request");
        assert_eq!(
            east.accepted(),
            east.hellos(),
            "every connection to east was TLS"
        );
    }
    let east = node.endpoint("east.test");
    assert_eq!(east["endpoint"], EAST_TLS, "{east:#}");
    assert_eq!(east["outlier_check"], "FAILED", "{east:#}");
    assert_eq!(east["ejections"], 1, "{east:#}");
    let last = east["last_error"].as_str().unwrap();
    assert!(last.starts_with("TLS: "), "{east:#}");
    assert!(last.contains(error), "expected {error:?} in {east:#}");
    assert_eq!(node.endpoint("west.test")["outlier_check"], "OK");
    east
}
