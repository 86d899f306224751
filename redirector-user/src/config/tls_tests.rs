//! `tls` of a DestinationRule and `subjectAltNames` of a ServiceEntry,
//! through `load_str`.

use std::path::PathBuf;

use super::tests::*;
use super::*;

/// The rule's policy with `tls` (indented six spaces, under `tls:`).
fn with_tls(tls: &str) -> String {
    se_and_dr(&format!("    tls:\n{tls}"))
}

fn origination(c: &Config) -> TlsOrigination {
    let o = c.services[0].policy.tls.origination();
    (*o.expect("originates TLS")).clone()
}

#[test]
fn every_simple_field_loads_and_files_know_where_they_were_named() {
    let text = with_tls(
        "      mode: SIMPLE
      sni: db.internal
      caCertificates: /etc/ca.pem
      caCrl: /etc/crl.pem
      subjectAltNames: [db.internal, 10.0.0.7, \"spiffe://example.org/ns/db/sa/server\"]
",
    );
    let o = origination(&load(&text));
    assert_eq!(o.mode(), "SIMPLE");
    assert_eq!(o.sni.as_deref(), Some("db.internal"));
    assert_eq!(
        o.subject_alt_names,
        [
            "db.internal",
            "10.0.0.7",
            "spiffe://example.org/ns/db/sa/server"
        ]
    );
    assert!(o.client.is_none() && !o.insecure_skip_verify);
    let ca = o.ca_certificates.expect("caCertificates");
    assert_eq!(ca.path, PathBuf::from("/etc/ca.pem"));
    let (line, column) = pos_of(&text, "/etc/ca.pem", 15);
    assert_eq!(
        ca.at,
        format!(
            "t.yaml:{line}:{column}: DestinationRule \"db-rule\" (document 2): \
             spec.trafficPolicy.tls.caCertificates"
        )
    );
    let crl = o.ca_crl.expect("caCrl");
    assert_eq!(crl.path, PathBuf::from("/etc/crl.pem"));
    assert!(
        crl.at.ends_with("spec.trafficPolicy.tls.caCrl"),
        "{}",
        crl.at
    );
}

#[test]
fn mutual_loads_with_its_certificate_and_key() {
    let text = with_tls(
        "      mode: MUTUAL
      clientCertificate: /etc/client.pem
      privateKey: /etc/client.key
",
    );
    let o = origination(&load(&text));
    assert_eq!(o.mode(), "MUTUAL");
    let client = o.client.expect("a client identity");
    assert_eq!(client.certificate.path, PathBuf::from("/etc/client.pem"));
    assert_eq!(client.private_key.path, PathBuf::from("/etc/client.key"));
    assert!(
        client
            .private_key
            .at
            .ends_with("spec.trafficPolicy.tls.privateKey")
    );
    assert_eq!(o.ca_certificates, None, "the system roots");
}

#[test]
fn insecure_skip_verify_loads_alone() {
    let o = origination(&load(&with_tls(
        "      mode: SIMPLE\n      insecureSkipVerify: true\n",
    )));
    assert!(o.insecure_skip_verify);
    // false is the default, harmless anywhere.
    let c = load(&with_tls(
        "      mode: DISABLE\n      insecureSkipVerify: false\n",
    ));
    assert_eq!(c.services[0].policy.tls, TlsPolicy::Disable);
}

#[test]
fn service_entry_subject_alt_names_verify_when_the_rule_names_none() {
    let se = se_with("  subjectAltNames: [db.example]\n");
    let rule = |tls: &str| format!("{se}---\n{DR}    tls:\n{tls}",);
    let o = origination(&load(&rule("      mode: SIMPLE\n")));
    assert_eq!(o.subject_alt_names, ["db.example"]);
    // The rule's own names win, as in Istio.
    let o = origination(&load(&rule(
        "      mode: MUTUAL\n      clientCertificate: /c\n      privateKey: /k\n      subjectAltNames: [rule.example]\n",
    )));
    assert_eq!(o.subject_alt_names, ["rule.example"]);
    // With nothing to verify they would do nothing.
    rejects(
        &se,
        "subjectAltNames",
        "spec.subjectAltNames",
        "no port of this ServiceEntry has one that does",
    );
    rejects(
        &rule("      mode: DISABLE\n"),
        "subjectAltNames",
        "spec.subjectAltNames",
        "no port of this ServiceEntry has one that does",
    );
    // An empty list is as good as none.
    load(&se_with("  subjectAltNames: []\n"));
}

#[test]
fn tls_rejections() {
    let cases: [(&str, &str, &str, &str); 13] = [
        (
            "      mode: SIMPLE\n      credentialName: db-secret\n",
            "credentialName",
            "spec.trafficPolicy.tls.credentialName",
            "names a Kubernetes Secret, which a node-local redirector does not read",
        ),
        (
            "      mode: MUTUAL\n      clientCertificate: /c.pem\n",
            "MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "tls mode MUTUAL needs privateKey",
        ),
        (
            "      mode: MUTUAL\n      privateKey: /k.pem\n",
            "MUTUAL",
            "spec.trafficPolicy.tls.mode",
            "tls mode MUTUAL needs clientCertificate:",
        ),
        (
            "      mode: SIMPLE\n      clientCertificate: /c.pem\n",
            "clientCertificate",
            "spec.trafficPolicy.tls.clientCertificate",
            "only used with tls mode MUTUAL",
        ),
        (
            "      mode: DISABLE\n      caCertificates: /ca.pem\n",
            "caCertificates",
            "spec.trafficPolicy.tls.caCertificates",
            "only used when originating TLS",
        ),
        (
            "      subjectAltNames: [a.example]\n",
            "subjectAltNames",
            "spec.trafficPolicy.tls.subjectAltNames",
            "only used when originating TLS",
        ),
        (
            "      mode: DISABLE\n      insecureSkipVerify: true\n",
            "insecureSkipVerify",
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "only used when originating TLS",
        ),
        (
            "      mode: SIMPLE\n      insecureSkipVerify: true\n      caCertificates: /ca.pem\n",
            "insecureSkipVerify",
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "turns certificate verification off, so caCertificates would be ignored",
        ),
        (
            "      mode: SIMPLE\n      subjectAltNames: [\"*.example.com\"]\n",
            "\"*.example.com\"",
            "spec.trafficPolicy.tls.subjectAltNames[0]",
            "is a pattern",
        ),
        (
            "      mode: SIMPLE\n      subjectAltNames: [ok.example, \"bad name\"]\n",
            "\"bad name\"",
            "spec.trafficPolicy.tls.subjectAltNames[1]",
            "not a valid DNS name",
        ),
        (
            "      mode: SIMPLE\n      subjectAltNames: [\"9p:x\"]\n",
            "\"9p:x\"",
            "spec.trafficPolicy.tls.subjectAltNames[0]",
            "neither a DNS name, an IP address nor a URI",
        ),
        (
            "      mode: SIMPLE\n      caCrl: \"\"\n",
            "\"\"",
            "spec.trafficPolicy.tls.caCrl",
            "caCrl must be a file path",
        ),
        (
            "      mode: SIMPLE\n      sni: 10.1.2.3\n",
            "10.1.2.3",
            "spec.trafficPolicy.tls.sni",
            "never an IP address",
        ),
    ];
    for (tls, needle, field, message) in cases {
        rejects_after(&with_tls(tls), 15, needle, field, message);
    }
}
