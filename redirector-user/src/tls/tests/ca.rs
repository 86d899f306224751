//! A certificate authority made for one test (rcgen): server and client
//! leaves it signs, an expired leaf and a revocation list. ECDSA P-256,
//! PEM everywhere; every CA is new, so no test passes on another's trust.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// A self-signed root that signs leaf certificates.
pub(super) struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The serial number of each leaf issued, by its PEM (for [`TestCa::crl`]).
    serials: Mutex<HashMap<String, u64>>,
}

impl TestCa {
    /// A new root, `CN=redirector unit test CA <n>`.
    pub(super) fn new() -> TestCa {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "redirector unit test CA {}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut params = CertificateParams::new(Vec::new()).expect("no SANs is valid");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed root");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            serials: Mutex::new(HashMap::new()),
        }
    }

    /// The root certificate, PEM.
    pub(super) fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A server certificate for `sans` (IP addresses as IP SANs, anything
    /// with `://` as a URI SAN, else DNS names), valid now: `(cert, key)`.
    pub(super) fn leaf(&self, sans: &[&str]) -> (String, String) {
        self.sign(sans, false, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Like [`TestCa::leaf`], but valid only on 1 January 2000: expired.
    pub(super) fn expired_leaf(&self, sans: &[&str]) -> (String, String) {
        self.sign(sans, true, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (`CN=<name>`, clientAuth): `(cert, key)`.
    pub(super) fn client_leaf(&self, name: &str) -> (String, String) {
        self.sign(&[name], false, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A revocation list, signed by this CA, revoking `revoked` (PEMs of
    /// leaves it issued), PEM.
    pub(super) fn crl(&self, revoked: &[&str]) -> String {
        let serials = self.serials.lock().unwrap();
        let revoked_certs = revoked
            .iter()
            .map(|pem| RevokedCertParams {
                serial_number: SerialNumber::from(serials[*pem]),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .and_then(|crl| crl.pem())
        .expect("a signed CRL")
    }

    fn sign(
        &self,
        sans: &[&str],
        expired: bool,
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
        params.distinguished_name.push(DnType::CommonName, sans[0]);
        let mut serials = self.serials.lock().unwrap();
        let serial = serials.len() as u64 + 2;
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2000, 1, 2);
        }
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a signed leaf");
        serials.insert(cert.pem(), serial);
        (cert.pem(), key.serialize_pem())
    }
}

/// An IP address, a URI (with `://`) or else a DNS name.
fn san(s: &str) -> SanType {
    if let Ok(ip) = s.parse() {
        SanType::IpAddress(ip)
    } else if s.contains("://") {
        SanType::URI(s.try_into().expect("a URI SAN"))
    } else {
        SanType::DnsName(s.try_into().expect("a DNS name SAN"))
    }
}
