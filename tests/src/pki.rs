//! A certificate authority made at test time (rcgen), for endpoints that
//! speak TLS: the daemon trusts it through `caCertificates`, and the
//! certificate faults the tests inject are certificates it would reject:
//! a wrong name (`ca.leaf(&["wrong.test"])`), an expiry in the past
//! ([`TestCa::expired_leaf`]), a signer it does not trust
//! ([`untrusted_leaf`]) and a revoked certificate ([`TestCa::crl`]). It
//! also issues client certificates for mutual TLS ([`TestCa::client_leaf`]).
//!
//! Keys are ECDSA P-256, PEM everywhere. Nothing is cached or shared
//! between tests: every CA is new, so a test can never pass on another
//! test's trust.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

use crate::names;

/// A self-signed root that signs leaf certificates.
pub struct TestCa {
    name: String,
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
    /// Serial number of each certificate issued, by its PEM (for [`TestCa::crl`]).
    serials: Mutex<HashMap<String, u64>>,
}

impl TestCa {
    /// A new root, `CN=redirector test CA <pid>-<n>`, valid from 1975 to
    /// 4096 (rcgen's default).
    ///
    /// # Panics
    /// If rcgen cannot make a key or sign (it only fails on bad input).
    pub fn new() -> TestCa {
        let name = format!(
            "redirector test CA {}",
            names::unique("").trim_start_matches('-')
        );
        let mut params = CertificateParams::new(Vec::new()).expect("no SANs is valid");
        params.distinguished_name.push(DnType::CommonName, &name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{name}: generating a key: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("{name}: self-signing: {e}"));
        TestCa {
            issuer: Issuer::new(params, key),
            cert,
            name,
            serials: Mutex::new(HashMap::new()),
        }
    }

    /// The subject common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the root certificate to `<dir>/<name>.pem` (for
    /// `caCertificates`) and returns the path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pem", self.name.replace(' ', "-")));
        std::fs::write(&path, self.cert_pem())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A server certificate for `sans` (DNS names, IP addresses as IP SANs,
    /// and anything with `://` as a URI SAN), signed by this CA and valid now: `(cert_pem, key_pem)`. The
    /// first SAN is also the subject common name.
    ///
    /// # Panics
    /// If a SAN is neither an IP address nor a valid DNS name.
    pub fn leaf(&self, sans: &[&str]) -> (String, String) {
        self.sign(sans, None, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Like [`TestCa::leaf`], but valid only on 1 January 2000: expired.
    pub fn expired_leaf(&self, sans: &[&str]) -> (String, String) {
        self.sign(
            sans,
            Some((2000, 1, 1)),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (`CN=<name>`, extended key usage clientAuth)
    /// for mutual TLS: `(cert_pem, key_pem)`.
    pub fn client_leaf(&self, name: &str) -> (String, String) {
        self.sign(&[name], None, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A certificate revocation list, signed by this CA, revoking the
    /// certificates in `revoked` (PEMs this CA issued), PEM.
    ///
    /// # Panics
    /// If a certificate was not issued by this CA.
    pub fn crl(&self, revoked: &[&str]) -> String {
        let serials = self
            .serials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let revoked_certs = revoked
            .iter()
            .map(|pem| RevokedCertParams {
                serial_number: SerialNumber::from(
                    *serials
                        .get(*pem)
                        .unwrap_or_else(|| panic!("{}: not a certificate of this CA", self.name)),
                ),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .unwrap_or_else(|e| panic!("{}: signing a CRL: {e}", self.name))
    }

    /// Writes `pem` to `<dir>/<file>` and returns the path.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write(dir: &Path, file: &str, pem: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    fn sign(
        &self,
        sans: &[&str],
        only_on: Option<(i32, u8, u8)>,
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                san(s).unwrap_or_else(|e| {
                    panic!("a leaf for {sans:?}: bad subject alt name {s:?}: {e}")
                })
            })
            .collect();
        if let Some(first) = sans.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let mut serials = self
            .serials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let serial = serials.len() as u64 + 2;
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        if let Some((year, month, day)) = only_on {
            params.not_before = date_time_ymd(year, month, day);
            params.not_after = date_time_ymd(year, month, day + 1);
        }
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("generating a key: {e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("{}: signing a leaf for {sans:?}: {e}", self.name));
        serials.insert(cert.pem(), serial);
        (cert.pem(), key.serialize_pem())
    }
}

/// An IP address, a URI (with `://`) or else a DNS name.
fn san(s: &str) -> Result<SanType, rcgen::Error> {
    Ok(if let Ok(ip) = s.parse() {
        SanType::IpAddress(ip)
    } else if s.contains("://") {
        SanType::URI(s.try_into()?)
    } else {
        SanType::DnsName(s.try_into()?)
    })
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

/// A valid-looking certificate for `sans` from a fresh CA that nobody
/// trusts (its root is thrown away): `(cert_pem, key_pem)`.
pub fn untrusted_leaf(sans: &[&str]) -> (String, String) {
    TestCa::new().leaf(sans)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{
        RootCertStore,
        client::{WebPkiServerVerifier, danger::ServerCertVerifier},
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    };

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("one PEM certificate")
    }

    /// What the daemon's verifier (rustls, webpki) says about `leaf` for
    /// `name`, trusting only `ca`.
    fn verify(ca: &TestCa, leaf: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).expect("the root is usable");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("a verifier");
        let name = ServerName::try_from(name.to_owned()).expect("a server name");
        verifier
            .verify_server_cert(&der(leaf), &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn a_leaf_verifies_for_its_names_and_ips_only() {
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(&["east.test", "127.0.10.1"]);
        PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a PEM key");
        verify(&ca, &cert, "east.test").expect("valid for its DNS name");
        verify(&ca, &cert, "127.0.10.1").expect("valid for its IP");
        let wrong = verify(&ca, &cert, "west.test").unwrap_err();
        assert!(wrong.to_string().contains("not valid for name"), "{wrong}");
    }

    #[test]
    fn expired_and_untrusted_leaves_are_rejected() {
        let ca = TestCa::new();
        let expired = verify(&ca, &ca.expired_leaf(&["east.test"]).0, "east.test").unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");
        let untrusted = verify(&ca, &untrusted_leaf(&["east.test"]).0, "east.test").unwrap_err();
        assert!(
            untrusted.to_string().contains("UnknownIssuer"),
            "{untrusted}"
        );
    }

    #[test]
    fn a_crl_revokes_exactly_the_certificates_it_names() {
        let ca = TestCa::new();
        let (revoked, good) = (ca.leaf(&["east.test"]).0, ca.leaf(&["east.test"]).0);
        let crl = ca.crl(&[&revoked]);
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).expect("the root is usable");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls([
                rustls::pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes())
                    .expect("one PEM CRL"),
            ])
            .build()
            .expect("a verifier");
        let name = ServerName::try_from("east.test").unwrap();
        let check =
            |leaf: &str| verifier.verify_server_cert(&der(leaf), &[], &name, &[], UnixTime::now());
        let e = check(&revoked).unwrap_err();
        assert!(e.to_string().contains("Revoked"), "{e}");
        check(&good).expect("not on the list");
    }

    #[test]
    fn client_leaves_are_for_client_auth() {
        let ca = TestCa::new();
        let (cert, _) = ca.client_leaf("app.test");
        let mut roots = RootCertStore::empty();
        roots.add(der(&ca.cert_pem())).expect("the root is usable");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("a verifier");
        verifier
            .verify_client_cert(&der(&cert), &[], UnixTime::now())
            .expect("a valid client certificate");
        // Not a server certificate.
        assert!(verify(&ca, &cert, "app.test").is_err());
    }

    #[test]
    fn every_ca_is_new_and_its_file_holds_the_root() {
        let (a, b) = (TestCa::new(), TestCa::new());
        assert_ne!(a.name(), b.name());
        assert_ne!(a.cert_pem(), b.cert_pem());
        let dir = crate::tempdir::TempDir::new("pki").expect("a temp dir");
        let (path_a, path_b) = (a.write_ca(dir.path()), b.write_ca(dir.path()));
        assert_ne!(path_a, path_b);
        assert_eq!(std::fs::read_to_string(path_a).unwrap(), a.cert_pem());
    }
}
