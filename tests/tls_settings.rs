//! The rest of Istio's `ClientTLSSettings` on real BPF, real DNS and real
//! TLS: mutual TLS, `subjectAltNames` (the rule's and the ServiceEntry's),
//! `caCrl`, `insecureSkipVerify`, servers that demand SNI or a client
//! certificate, session resumption on new upstream connections, and TLS
//! files that are wrong (reported by `redirector check`, and a reload that
//! names them keeps the running config).
//!
//! Endpoints are [`HttpsServer`]s on loopback addresses inside the test's
//! own namespace, with certificates from a CA made for each test.

use std::{path::Path, process::Command};

use redirector_tests::{
    daemon::redirector_bin,
    https::TlsOptions,
    origination::*,
    pki::TestCa,
    scenario::{Node, count},
};

/// `caCertificates: <ca_file>` as `rule_with` writes it.
fn ca_line(ca_file: &Path) -> String {
    format!("     caCertificates: {}\n", ca_file.display())
}

/// `clientCertificate` and `privateKey` lines for a client certificate the
/// CA issued, written into the node's directory.
fn client_identity(node: &Node, ca: &TestCa) -> String {
    let (cert, key) = ca.client_leaf("redirector.test");
    let cert = TestCa::write(node.dir.path(), "client.pem", &cert);
    let key = TestCa::write(node.dir.path(), "client.key", &key);
    format!(
        "     clientCertificate: {}\n     privateKey: {}\n",
        cert.display(),
        key.display()
    )
}

/// Both regions over fixed IPs (`resolution: STATIC`).
fn static_regions() -> String {
    replace_once(
        &entry(&[("127.0.10.1", "us-east1"), ("127.0.10.2", "us-west")]),
        "resolution: DNS",
        "resolution: STATIC",
    )
}

fn demands_client_certificate(ca: &TestCa) -> TlsOptions {
    TlsOptions {
        client_ca: Some(ca.cert_pem()),
        ..TlsOptions::default()
    }
}

#[test]
fn mutual_tls_presents_the_client_certificate_the_endpoint_demands() {
    let (mut node, ca, ca_file) = node();
    let mtls = demands_client_certificate(&ca);
    let east = https_with(&node, EAST_TLS, "east", ca.leaf(&["east.test"]), &mtls);
    let west = https_with(&node, WEST_TLS, "west", ca.leaf(&["west.test"]), &mtls);
    let rule = replace_once(
        &rule_with(&ca_file, &client_identity(&node, &ca), ""),
        "mode: SIMPLE",
        "mode: MUTUAL",
    );
    node.start(
        &(entry(&[("east.test", "us-east1"), ("west.test", "us-west")]) + &rule),
        "us-east1",
        false,
    );
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert!(east.handshakes() >= 1);
    assert_eq!(
        east.client_certificates(),
        east.handshakes(),
        "every handshake carried our certificate"
    );
    assert_eq!(east.requests(), 5);
    assert_eq!(west.accepted(), 0);
    let service = &node.endpoints()["services"][0];
    assert_eq!(service["tls_mode"], "MUTUAL", "{service:#}");
    assert_eq!(node.endpoint("east.test")["outlier_check"], "OK");
}

#[test]
fn an_endpoint_that_demands_a_client_certificate_is_failed_over_without_one() {
    let (mut node, ca, ca_file) = node();
    let east = https_with(
        &node,
        EAST_TLS,
        "east",
        ca.leaf(&["east.test"]),
        &demands_client_certificate(&ca),
    );
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    // TLS 1.3: the endpoint refuses after our side of the handshake, so the
    // first request learns it; being a GET, it is sent again to west.
    let bodies = node.bodies(VIP, 10);
    assert_eq!(count(&bodies, WEST), 10, "{bodies:?}");
    assert_eq!((east.handshakes(), east.requests()), (0, 0));
    assert!(east.hellos() >= 1);
    let row = node.endpoint("east.test");
    assert_eq!(row["outlier_check"], "FAILED", "{row:#}");
    assert_eq!(row["ejections"], 1, "{row:#}");
    let last = row["last_error"].as_str().unwrap();
    assert!(last.contains("requires a client certificate"), "{row:#}");
}

#[test]
fn a_revoked_primary_is_failed_over_with_the_ca_crl() {
    let (mut node, ca, ca_file) = node();
    let east_cert = ca.leaf(&["east.test"]);
    let crl = TestCa::write(node.dir.path(), "crl.pem", &ca.crl(&[&east_cert.0]));
    let east = https(&node, EAST_TLS, "east", east_cert);
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    let config = entry(&[("east.test", "us-east1"), ("west.test", "us-west")])
        + &rule_with(&ca_file, &format!("     caCrl: {}\n", crl.display()), "");
    node.start(&config, "us-east1", false);
    assert_failed_over(&node, Some(&east), "revoked (listed in caCrl)");
}

#[test]
fn service_entry_subject_alt_names_verify_ip_endpoints_that_get_no_sni() {
    let (mut node, ca, ca_file) = node();
    // Neither certificate carries its IP: the names verify them.
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["db.internal"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["db.internal"]));
    let se = replace_once(
        &static_regions(),
        " resolution: STATIC\n",
        " resolution: STATIC\n subjectAltNames:\n - db.internal\n",
    );
    node.start(&(se + &rule(&ca_file, None)), "us-east1", false);
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(east.last_sni(), None, "never an IP as SNI");
    assert!(east.handshakes() >= 1);
}

#[test]
fn a_primary_without_any_of_the_rules_subject_alt_names_is_failed_over() {
    let (mut node, ca, ca_file) = node();
    // Valid for its own name, which the list replaces.
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let west = https(
        &node,
        WEST_TLS,
        "west",
        ca.leaf(&["west.test", "db.internal"]),
    );
    let config = entry(&[("east.test", "us-east1"), ("west.test", "us-west")])
        + &rule_with(&ca_file, "     subjectAltNames: [db.internal]\n", "");
    node.start(&config, "us-east1", false);
    assert_failed_over(
        &node,
        Some(&east),
        "matches none of subjectAltNames [db.internal]; it is valid for [east.test]",
    );
    // SNI is still each endpoint's own name.
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(west.last_sni().as_deref(), Some("west.test"));
}

#[test]
fn insecure_skip_verify_reaches_an_untrusted_endpoint_and_says_so() {
    let (mut node, _ca, ca_file) = node();
    // Expired, for another name, from a CA nobody trusts.
    let east = https(
        &node,
        EAST_TLS,
        "east",
        TestCa::new().expired_leaf(&["elsewhere.test"]),
    );
    let _west = https(&node, WEST_TLS, "west", TestCa::new().leaf(&["west.test"]));
    let rule = replace_once(
        &rule(&ca_file, None),
        &ca_line(&ca_file),
        "     insecureSkipVerify: true\n",
    );
    let config = entry(&[("east.test", "us-east1"), ("west.test", "us-west")]) + &rule;
    node.start(&config, "us-east1", false);
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert!(east.handshakes() >= 1);
    assert!(
        node.log()
            .contains("insecureSkipVerify: endpoint certificates are NOT verified"),
        "{}",
        node.log()
    );
    let check = Command::new(redirector_bin())
        .args(["check", "--config"])
        .arg(node.config_path())
        .output()
        .expect("running redirector check");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(out.contains("NOT VERIFIED (insecureSkipVerify)"), "{out}");
}

#[test]
fn a_server_that_demands_sni_gets_each_endpoint_its_name() {
    let (mut node, ca, ca_file) = node();
    let sni_only = |name: &str| TlsOptions {
        require_sni: Some(vec![name.to_owned()]),
        ..TlsOptions::default()
    };
    let east = https_with(
        &node,
        EAST_TLS,
        "east",
        ca.leaf(&["east.test"]),
        &sni_only("east.test"),
    );
    let west = https_with(
        &node,
        WEST_TLS,
        "west",
        ca.leaf(&["west.test"]),
        &sni_only("west.test"),
    );
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    let bodies = node.bodies(VIP, 5);
    assert_eq!(count(&bodies, EAST), 5, "{bodies:?}");
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert_eq!(west.accepted(), 0);
}

#[test]
fn an_ip_endpoint_behind_a_server_that_demands_sni_needs_tls_sni() {
    let (mut node, ca, ca_file) = node();
    let east = https_with(
        &node,
        EAST_TLS,
        "east",
        ca.leaf(&["east.test", "127.0.10.1"]),
        &TlsOptions {
            require_sni: Some(vec!["east.test".into()]),
            ..TlsOptions::default()
        },
    );
    let only_east = replace_once(
        &entry(&[("127.0.10.1", "us-east1")]),
        "resolution: DNS",
        "resolution: STATIC",
    );
    // An IP endpoint gets no SNI: the server refuses the hello.
    node.start(
        &(only_east.clone() + &rule(&ca_file, None)),
        "us-east1",
        false,
    );
    let (status, body) = node.curl(VIP).expect("an HTTP answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("TLS: ") && body.contains("alert"), "{body}");
    assert_eq!((east.last_sni(), east.handshakes()), (None, 0));
    // With `sni`, it gets the name and answers.
    node.reload(
        &(only_east + &rule(&ca_file, Some("east.test"))),
        "config reloaded",
    );
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
}

#[test]
fn new_upstream_connections_resume_the_tls_session() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    // One request per upstream connection: every request needs a handshake.
    let config = entry(&[("east.test", "us-east1"), ("west.test", "us-west")])
        + &rule_with(
            &ca_file,
            "",
            "   connectionPool:\n     http:\n       maxRequestsPerConnection: 1\n",
        );
    node.start(&config, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 6), EAST), 6);
    assert_eq!(east.accepted(), 6, "a connection per request");
    assert_eq!(east.handshakes(), 6);
    assert_eq!(east.resumed(), 5, "only the first handshake was a full one");
}

#[test]
fn a_tcp_port_originates_tls_without_alpn() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    // The app's bytes are opaque on a TCP port; here they happen to be HTTP.
    let config = replace_once(
        &two_regions(&ca_file, None),
        "   name: http-port\n   protocol: HTTP\n",
        "   name: tcp-port\n   protocol: TCP\n",
    )
    .replace("http-port: 443", "tcp-port: 443");
    node.start(&config, "us-east1", false);
    let resolve = format!("mydb.com:80:{VIP}");
    let out = node.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "http://mydb.com/",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", node.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), EAST);
    assert_eq!(east.last_sni().as_deref(), Some("east.test"));
    assert!(east.last_alpn().is_empty(), "{:?}", east.last_alpn());
    assert_eq!(node.endpoints()["services"][0]["protocol"], "TCP");
}

#[test]
fn a_pooled_connection_the_endpoint_closed_is_replaced_without_an_error() {
    let (mut node, ca, ca_file) = node();
    let east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    node.start(&two_regions(&ca_file, None), "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    assert_eq!(east.accepted(), 1, "one pooled connection");
    // The endpoint closes every connection (as on its idle timeout or a
    // restart) and listens again: the pooled one is dead.
    east.stop().unwrap();
    east.restart().unwrap();
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
    assert_eq!(east.accepted(), 2, "one new connection");
    assert_eq!(east.resumed(), 1, "which resumed the session");
    let row = node.endpoint("east.test");
    assert_eq!(row["outlier_check"], "OK", "{row:#}");
    assert_eq!(row["last_error"], "", "not the endpoint's fault: {row:#}");
}

#[test]
fn bad_tls_files_fail_check_with_their_line_and_a_reload_keeps_the_running_config() {
    let (mut node, ca, ca_file) = node();
    let _east = https(&node, EAST_TLS, "east", ca.leaf(&["east.test"]));
    let _west = https(&node, WEST_TLS, "west", ca.leaf(&["west.test"]));
    let good = two_regions(&ca_file, None);
    node.start(&good, "us-east1", false);
    assert_eq!(count(&node.bodies(VIP, 2), EAST), 2);
    let missing = node.dir.path().join("no-such-ca.pem");
    let not_a_key = TestCa::write(node.dir.path(), "not-a-key.pem", &ca.cert_pem());
    let bad = replace_once(
        &good,
        &ca_line(&ca_file),
        &format!("     caCertificates: {}\n", missing.display()),
    );
    // Two problems, reported together: a missing CA file on one host, and
    // a client "key" that is a certificate on another.
    let other = entry(&[("west.test", "us-west")])
        .replace("mydb.com", "other.com")
        .replace("external-svc-dns", "other")
        .replace(&format!(" addresses:\n - {VIP}\n"), "")
        + &replace_once(
            &rule_with(
                &ca_file,
                &format!(
                    "     clientCertificate: {}\n     privateKey: {}\n",
                    not_a_key.display(),
                    not_a_key.display()
                ),
                "",
            ),
            "mode: SIMPLE",
            "mode: MUTUAL",
        )
        .replace("host: mydb.com", "host: other.com")
        .replace("name: mydynamodb", "name: other");
    let bad = format!("{bad}---\n{other}");
    node.write_config(&bad);
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    let path = node.config_path().display().to_string();
    let ca_problem = format!(
        "{path}:{}: DestinationRule \"mydynamodb\" (document 2): \
         spec.trafficPolicy.tls.caCertificates: cannot read {}",
        value_at(&text, "caCertificates", &missing),
        missing.display()
    );
    let key_problem = format!(
        "{path}:{}: DestinationRule \"other\" (document 4): spec.trafficPolicy.tls.privateKey: \
         {} holds no PEM private key",
        value_at(&text, "privateKey", &not_a_key),
        not_a_key.display()
    );
    let check = Command::new(redirector_bin())
        .args(["check", "--config", &path])
        .output()
        .expect("running redirector check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{check:?}");
    assert!(
        stderr.contains(&ca_problem),
        "expected {ca_problem:?} in:\n{stderr}"
    );
    assert!(
        stderr.contains(&key_problem),
        "expected {key_problem:?} in:\n{stderr}"
    );
    // The daemon refuses it as a whole and keeps serving the old config.
    node.reload(&bad, "config reload rejected");
    assert!(node.log().contains(&ca_problem), "{}", node.log());
    assert_eq!(count(&node.bodies(VIP, 3), EAST), 3);
}

/// `line:column` of `value` on the line `key: value` of `text`.
fn value_at(text: &str, key: &str, value: &Path) -> String {
    let entry = format!("{key}: {}", value.display());
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(&entry))
        .unwrap_or_else(|| panic!("{entry:?} in\n{text}"));
    let column = line.find(&entry).unwrap() + key.len() + 3;
    format!("{}:{column}", i + 1)
}
