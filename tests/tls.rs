//! The blog's HTTPS variant on real BPF, real DNS and real TLS: the app
//! speaks plain HTTP to the VIP, the daemon originates verified TLS
//! (`tls.mode: SIMPLE`) to the endpoint, and every certificate fault
//! (wrong name, expired, untrusted signer, no TLS at all)
//! is a local-origin failure: the next endpoint is tried at once, the app
//! sees no error, and nothing ever falls back to plain text.
//!
//! Endpoints are [`HttpsServer`]s on loopback addresses inside the test's
//! own namespace, with certificates from a CA made for each test; the
//! daemon trusts it through `caCertificates`.

use std::path::Path;

use redirector_tests::{
    client,
    origination::*,
    pki::{TestCa, untrusted_leaf},
    scenario::{Node, TIMEOUT, count},
};

#[test]
fn test_bed_https_server_answers_curl_and_records_sni() {
    // The bed itself, without the daemon: curl (OpenSSL) straight to the
    // endpoint.
    let (node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let curl = |name: &str, ca_file: &Path| {
        let resolve = format!("{name}:443:127.0.10.1");
        let url = format!("https://{name}/");
        let ca_arg = ca_file.display().to_string();
        let args = [
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca_arg,
            "--resolve",
            &resolve,
            &url,
        ];
        client::run(&node.ns, None, "curl", &args, TIMEOUT)
            .unwrap_or_else(|e| panic!("running curl {url}: {e:#}"))
    };
    let out = curl("east.test", &ca_file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), EAST);
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert!(
        east.last_alpn().iter().any(|p| p == "http/1.1"),
        "{:?}",
        east.last_alpn()
    );
    assert_eq!(
        (east.hellos(), east.handshakes(), east.requests()),
        (1, 1, 1)
    );
    // Trusting another CA: curl aborts the handshake.
    let other_ca = TestCa::new().write_ca(node.dir.path());
    let out = curl("east.test", &other_ca);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        (east.hellos(), east.handshakes(), east.requests()),
        (2, 1, 1)
    );
    // A name the certificate does not carry: curl refuses too (it checks
    // the name after the handshake, unlike rustls, so only the request
    // count tells).
    let out = curl("other.test", &ca_file);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(east.last_sni().as_deref(), Some("other.test"));
    assert_eq!((east.hellos(), east.requests()), (3, 1));
    assert_eq!(east.accepted(), 3);
}

#[test]
fn simple_origination_verifies_the_endpoint_name_and_sends_it_as_sni() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, EAST), 10, "{bodies:?}");
    // The endpoint's own name, not the service host mydb.com (istio#50997).
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(east.last_alpn(), ["http/1.1"]);
    assert_eq!(east.requests(), 10);
    assert!(east.handshakes() >= 1);
    assert_eq!(east.accepted(), east.hellos(), "every connection was TLS");
    assert_eq!(west.accepted(), 0, "west is only the failover");
    let row = node.endpoint("east.test");
    assert_eq!(row["endpoint"], EAST_TLS, "{row:#}");
    assert_eq!(row["outlier_check"], "OK", "{row:#}");
    assert_eq!(row["last_error"], "", "{row:#}");
    let service = &node.endpoints()["services"][0];
    assert_eq!(service["tls_origination"], true, "{service:#}");
    assert_eq!(service["protocol"], "HTTP", "{service:#}");
}

#[test]
fn upstream_tls_connections_are_reused_across_app_connections() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    // Ten requests, each on its own app connection (a new curl process).
    assert_eq!(count(&node.bodies(VIP, 10), EAST), 10);
    assert_eq!(east.requests(), 10);
    // One upstream connection and handshake served them all.
    assert_eq!(east.handshakes(), 1, "pooled upstream connection");
    assert_eq!(east.accepted(), 1);
}

#[test]
fn blog_https_documents_work_against_a_test_ca() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    // The blog's two HTTPS documents verbatim, except for the endpoint
    // names (DynamoDB's regional names become east.test and west.test) and
    // an added `caCertificates` (the test CA instead of the system roots).
    // No `addresses`: the VIP is allocated. `targetPort: 443` on the port.
    let se = include_str!("../config/blog/04-https-service-entry.yaml");
    let dr = include_str!("../config/blog/05-https-destination-rule.yaml");
    let se = replace_once(se, "dynamodb.us-east-1.amazonaws.com", "east.test");
    let se = replace_once(&se, "dynamodb.us-west-1.amazonaws.com", "west.test");
    let ca_line = format!("     caCertificates: {}\n", ca_file.display());
    let dr = replace_once(
        dr,
        "     mode: SIMPLE\n",
        &format!("     mode: SIMPLE\n{ca_line}"),
    );
    node.start(&format!("{se}---\n{dr}"), "us-east1", false);
    let service = &node.endpoints()["services"][0];
    assert_eq!(service["vip_source"], "allocated", "{service:#}");
    assert_eq!(service["tls_origination"], true, "{service:#}");
    let vip = node.vip("mydb.com");
    let bodies = node.bodies(&vip, 10);
    assert_eq!(count(&bodies, EAST), 10, "{bodies:?}");
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(west.accepted(), 0);
    assert_eq!(node.endpoint("east.test")["endpoint"], EAST_TLS);
    assert_eq!(node.endpoint("west.test")["priority"], 1);
}

/// The blog's HTTPS documents with only the endpoint names changed: no
/// `caCertificates`, so the endpoints are verified against the system's
/// root store. The daemon's store is made of `roots` through
/// `SSL_CERT_FILE`, the variable every TLS stack reads (rustls-native-certs
/// included), so the test controls what "the system" trusts.
fn blog_https_verbatim(node: &mut Node, roots: &Path) {
    let se = include_str!("../config/blog/04-https-service-entry.yaml");
    let dr = include_str!("../config/blog/05-https-destination-rule.yaml");
    let se = replace_once(se, "dynamodb.us-east-1.amazonaws.com", "east.test");
    let se = replace_once(&se, "dynamodb.us-west-1.amazonaws.com", "west.test");
    let roots = roots.display().to_string();
    node.start_with_env(
        &format!("{se}---\n{dr}"),
        "us-east1",
        false,
        &[("SSL_CERT_FILE", &roots), ("SSL_CERT_DIR", "")],
    );
}

#[test]
fn blog_https_documents_verbatim_verify_against_the_system_roots() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    blog_https_verbatim(&mut node, &ca_file);
    let vip = node.vip("mydb.com");
    assert_eq!(count(&node.bodies(&vip, 5), EAST), 5);
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(node.endpoint("east.test")["outlier_check"], "OK");
}

#[test]
fn blog_https_documents_verbatim_refuse_endpoints_the_system_does_not_trust() {
    let (mut node, ca, _ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    // The system trusts some other CA: verification is on by default.
    let other = TestCa::new().write_ca(node.dir.path());
    blog_https_verbatim(&mut node, &other);
    let vip = node.vip("mydb.com");
    let (status, body) = node.curl(&vip).expect("an HTTP answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    assert_eq!(
        (east.requests(), west.requests()),
        (0, 0),
        "nothing in plain text or unverified"
    );
    assert_eq!(east.accepted(), east.hellos());
}

#[test]
fn primary_with_a_certificate_for_another_name_fails_over_with_zero_client_errors() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["wrong.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    let row = assert_failed_over(&node, Some(&east), "certificate not valid for name");
    assert!(
        row["last_error"].as_str().unwrap().contains("east.test"),
        "{row:#}"
    );
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(west.last_sni().as_deref(), Some("west.test"));
}

#[test]
fn primary_with_an_expired_certificate_fails_over_with_zero_client_errors() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.expired_leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    assert_failed_over(&node, Some(&east), "certificate expired");
}

#[test]
fn primary_signed_by_an_untrusted_ca_fails_over_with_zero_client_errors() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", untrusted_leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    assert_failed_over(&node, Some(&east), "UnknownIssuer");
}

#[test]
fn primary_speaking_plain_http_on_443_fails_the_handshake_and_fails_over() {
    let (mut node, ca, ca_file) = node();
    let plain = node.http(EAST_TLS, "east");
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    // rustls reads the HTTP server's error answer as a TLS record.
    assert_failed_over(&node, None, "does not speak TLS");
    // The client hello was no HTTP request.
    assert_eq!(node.servers[plain].requests(), 0);
}

#[test]
fn only_endpoint_with_a_bad_certificate_gets_503_and_never_plain_text() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["wrong.test"]));
    // Where a fallback to plain text would go: the service port, and the
    // same address unencrypted.
    let plain = node.http("127.0.10.1:80", "east-plain");
    let config = entry(&[("east.test", "us-east1")]) + &rule(&ca_file, None);
    node.start(&config, "us-east1", false);
    for i in 0..3 {
        let (status, body) = node
            .curl(VIP)
            .unwrap_or_else(|e| panic!("request {i}: {e}\ndaemon log:\n{}", node.log()));
        assert_eq!(status, 503, "request {i}: {body}");
        assert!(
            body.starts_with("no healthy upstream"),
            "request {i}: {body}"
        );
        assert!(body.contains("TLS: "), "request {i}: {body}");
        assert!(
            body.contains("certificate not valid for name"),
            "request {i}: {body}"
        );
    }
    assert_eq!(
        node.servers[plain].requests(),
        0,
        "nothing went in plain text"
    );
    assert_eq!(
        east.accepted(),
        east.hellos(),
        "every connection to east was TLS"
    );
    assert!(
        east.hellos() >= 3,
        "every request tried TLS again: {}",
        east.hellos()
    );
    assert_eq!((east.handshakes(), east.requests()), (0, 0));
    let row = node.endpoint("east.test");
    assert_eq!(row["outlier_check"], "FAILED", "{row:#}");
    assert!(
        row["last_error"].as_str().unwrap().starts_with("TLS: "),
        "{row:#}"
    );
}

#[test]
fn sni_override_is_sent_and_verified_instead_of_the_endpoint_name() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["override.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["override.test"]));
    node.start(
        &two_regions(&ca_file, Some("override.test")),
        "us-east1",
        false,
    );
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(east.last_sni().as_deref(), Some("override.test"));
    assert_eq!(west.accepted(), 0);
}

#[test]
fn sni_override_rejects_a_certificate_for_the_endpoint_name() {
    let (mut node, ca, ca_file) = node();
    // Valid for the endpoint's own name, which `sni` replaces.
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["override.test"]));
    node.start(
        &two_regions(&ca_file, Some("override.test")),
        "us-east1",
        false,
    );
    let row = assert_failed_over(&node, Some(&east), "certificate not valid for name");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("override.test"),
        "{row:#}"
    );
    assert_eq!(east.last_sni().as_deref(), Some("override.test"));
    assert_eq!(west.last_sni().as_deref(), Some("override.test"));
}

#[test]
fn ip_endpoints_send_no_sni_and_need_an_ip_san() {
    let (mut node, ca, ca_file) = node();
    // East's certificate names only its DNS name, west's carries its IP.
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(&node, WEST_TLS, "west", ca.leaf(&["127.0.10.2"]));
    let endpoints = entry(&[("127.0.10.1", "us-east1"), ("127.0.10.2", "us-west")]);
    let config =
        replace_once(&endpoints, "resolution: DNS", "resolution: STATIC") + &rule(&ca_file, None);
    node.start(&config, "us-east1", false);
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, WEST), 5, "{bodies:?}");
    assert_eq!(
        (east.hellos(), east.last_sni()),
        (1, None),
        "no SNI to east"
    );
    assert_eq!(east.handshakes(), 0);
    assert_eq!(west.last_sni(), None, "no SNI to west");
    let row = node.endpoint("127.0.10.1");
    assert_eq!(row["outlier_check"], "FAILED", "{row:#}");
    let last = row["last_error"].as_str().unwrap();
    assert!(
        last.starts_with("TLS: ") && last.contains("not valid for name"),
        "{row:#}"
    );
}
