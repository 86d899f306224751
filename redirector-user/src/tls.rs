//! TLS origination (`tls.mode: SIMPLE` or `MUTUAL`): the app speaks plain
//! text to the VIP, the proxy speaks verified TLS to the endpoint.
//!
//! Verification is on unless `insecureSkipVerify` says otherwise (logged at
//! every load): against `caCertificates` when given, else the system's root
//! store, with `caCrl` revocation lists when given. The name checked (and
//! sent as SNI) is `sni` when set, else the endpoint's own DNS name, so the
//! blog's HTTPS variant works against regional endpoints whose certificates
//! do not say `mydb.com` (where Istio sends the service host and fails,
//! istio#50997). An IP endpoint without `sni` sends no SNI and its
//! certificate must carry the IP. `subjectAltNames` (the rule's, else the
//! ServiceEntry's) replace that name check, as in Envoy: the certificate
//! must carry one of them. A failed handshake is an error for outlier
//! detection, never a reason to fall back to plain text.
//!
//! One `ClientConfig` per service holds the session cache, so a new
//! upstream connection to an endpoint resumes its last session (TLS 1.3
//! tickets, TLS 1.2 session ids) instead of a full handshake.

use std::{
    fmt,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore,
    SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
        pem::PemObject,
    },
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::warn;

use redirector_common::NsId;

use crate::config::{ConfigFile, EndpointAddress, TlsOrigination, TlsPolicy};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{}: cannot read {file}: {error}", file.at)]
    Read { file: ConfigFile, error: String },
    #[error("{}: {file} holds no PEM {what}", file.at)]
    Empty {
        file: ConfigFile,
        what: &'static str,
    },
    #[error(
        "{}: none of the {count} certificate(s) in {file} is usable as a trust anchor",
        file.at
    )]
    NoTrustAnchor { file: ConfigFile, count: usize },
    #[error("{}: {file}: {error}", file.at)]
    Crl { file: ConfigFile, error: String },
    #[error(
        "{}: the certificate in {certificate} and the key in {} (privateKey) do not belong \
         together: {error}",
        certificate.at, key.display()
    )]
    ClientKey {
        certificate: ConfigFile,
        key: PathBuf,
        error: String,
    },
    #[error("the system root store has no usable certificate; set caCertificates")]
    NoSystemRoots,
    #[error("sni {0:?} is not a valid DNS name")]
    BadSni(String),
}

/// Originates TLS for one service. Each network namespace gets a session
/// cache of its own: a pod's resumed sessions are never offered from
/// another pod's connections (or the host's).
pub(crate) struct TlsOrigin {
    config: Arc<ClientConfig>,
    connectors: std::sync::Mutex<std::collections::HashMap<NsId, TlsConnector>>,
    sni: Option<ServerName<'static>>,
    /// The settings and the bytes of every file read: two origins with the
    /// same fingerprint verify and present exactly the same, so a reload
    /// may keep the old one, its session cache and its connections.
    fingerprint: u64,
}

impl TlsOrigin {
    /// `None` for `DISABLE`. Reads the files the policy names. `http` asks
    /// for ALPN `http/1.1`.
    pub(crate) fn new(policy: &TlsPolicy, http: bool) -> Result<Option<Arc<Self>>, TlsError> {
        let Some(o) = policy.origination() else {
            return Ok(None);
        };
        let mut files = Reader::new(o, http);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if o.insecure_skip_verify {
            warn!(
                "insecureSkipVerify: endpoint certificates are NOT verified; anyone on the path can \
                 impersonate the endpoints"
            );
            Arc::new(AnyCertificate(provider.signature_verification_algorithms))
        } else {
            let roots = match &o.ca_certificates {
                Some(file) => Arc::new(load_roots(file, &files.read(file)?)?),
                None => system_roots()?,
            };
            let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
            if let Some(file) = &o.ca_crl {
                builder = builder.with_crls(load_crls(file, &files.read(file)?)?);
            }
            let webpki = builder.build().map_err(|e| match &o.ca_crl {
                Some(file) => TlsError::Crl {
                    file: file.clone(),
                    error: e.to_string(),
                },
                // Without CRLs only an empty root store fails, and that
                // was checked while loading it.
                None => unreachable!("building a verifier over a non-empty store: {e}"),
            })?;
            if o.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(SanVerifier {
                    inner: webpki,
                    names: o.subject_alt_names.iter().map(|n| San::parse(n)).collect(),
                })
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &o.client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let chain = load_certs(
                    &client.certificate,
                    &files.read(&client.certificate)?,
                    "certificate",
                )?;
                let key = load_key(&client.private_key, &files.read(&client.private_key)?)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| TlsError::ClientKey {
                        certificate: client.certificate.clone(),
                        key: client.private_key.path.clone(),
                        error: error.to_string(),
                    })?
            }
        };
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let sni = o
            .sni
            .as_ref()
            .map(|s| ServerName::try_from(s.clone()).map_err(|_| TlsError::BadSni(s.clone())))
            .transpose()?;
        Ok(Some(Arc::new(Self {
            config: Arc::new(config),
            connectors: std::sync::Mutex::default(),
            sni,
            fingerprint: files.hasher.finish(),
        })))
    }

    /// Whether `self` and `other` were built from the same settings and
    /// file contents.
    pub(crate) fn same_as(&self, other: &TlsOrigin) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// The name to verify (and send as SNI, unless an IP) for an endpoint.
    pub(crate) fn server_name(&self, endpoint: &EndpointAddress) -> ServerName<'static> {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        match endpoint {
            EndpointAddress::Dns(name) => {
                ServerName::try_from(name.trim_end_matches('.').to_owned()).unwrap_or_else(|_| {
                    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
                })
            }
            EndpointAddress::Ip(ip) => ServerName::IpAddress((*ip).into()),
        }
    }

    /// A TLS connection over `tcp`, made in namespace `ns` (whose own
    /// session cache it resumes from).
    pub(crate) async fn connect(
        &self,
        ns: NsId,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let connector = self
            .connectors
            .lock()
            .expect("tls connectors lock")
            .entry(ns)
            .or_insert_with(|| {
                let mut config = (*self.config).clone();
                config.resumption = rustls::client::Resumption::default();
                TlsConnector::from(Arc::new(config))
            })
            .clone();
        connector.connect(name, tcp).await
    }

    /// Drops namespace `ns`'s session cache (it is gone).
    pub(crate) fn forget_namespace(&self, ns: NsId) {
        self.connectors
            .lock()
            .expect("tls connectors lock")
            .remove(&ns);
    }
}

/// A TLS failure in words an operator can act on, if `e` (or what caused
/// it) is one; rustls' own words otherwise.
pub(crate) fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as Alert, InvalidMessage};
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<Error>() {
            return Some(match e {
                Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
                    format!("the endpoint does not speak TLS (plain text on a TLS port?): {e}")
                }
                Error::AlertReceived(Alert::CertificateRequired) => format!(
                    "the endpoint requires a client certificate (tls mode MUTUAL with \
                     clientCertificate and privateKey): {e}"
                ),
                Error::AlertReceived(
                    Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown,
                ) => format!("the endpoint rejected our client certificate: {e}"),
                Error::AlertReceived(Alert::UnrecognisedName) => {
                    format!("the endpoint does not know the name sent as SNI (set tls.sni?): {e}")
                }
                Error::InvalidCertificate(CertificateError::Revoked) => {
                    "invalid peer certificate: revoked (listed in caCrl)".to_owned()
                }
                Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
                    "invalid peer certificate: caCrl has no revocation list from the issuer of a \
                     certificate in the endpoint's chain (each CA of the chain needs one)"
                        .to_owned()
                }
                Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                    format!("invalid peer certificate: {inner}")
                }
                _ => e.to_string(),
            });
        }
        // io::Error's `source` skips the error it wraps.
        cause = match c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// Accepts any certificate, still checking that the endpoint holds its key
/// (`insecureSkipVerify`).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// One entry of `subjectAltNames`.
#[derive(Debug)]
enum San {
    /// A DNS name or IP address, matched as webpki matches server names
    /// (a wildcard certificate covers the names it matches).
    Name(ServerName<'static>),
    /// A URI such as `spiffe://…`, matched exactly.
    Uri(String),
}

impl San {
    /// Config validation let only DNS names, IPs and URIs through.
    fn parse(name: &str) -> San {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return San::Name(ServerName::IpAddress(ip.into()));
        }
        match ServerName::try_from(name.to_owned()) {
            Ok(n) if !name.contains(':') => San::Name(n),
            _ => San::Uri(name.to_owned()),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Name(ServerName::DnsName(n)) => f.write_str(n.as_ref()),
            San::Name(ServerName::IpAddress(ip)) => write!(f, "{}", IpAddr::from(*ip)),
            San::Name(other) => write!(f, "{other:?}"),
            San::Uri(u) => f.write_str(u),
        }
    }
}

/// The chain (and revocation) as webpki checks it, then one of
/// `subjectAltNames` instead of the name the connection was made for.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<San>,
}

/// The certificate carries none of `subjectAltNames`.
#[derive(Debug)]
struct NoSanMatches {
    expected: String,
    presented: String,
}

impl fmt::Display for NoSanMatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate matches none of subjectAltNames [{}]; it is valid for [{}]",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for NoSanMatches {}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the name last: a name mismatch means the chain,
        // validity and revocation all passed.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        let matches = |san: &San| match san {
            San::Name(name) => cert.verify_is_valid_for_subject_name(name).is_ok(),
            San::Uri(uri) => cert.valid_uri_names().any(|u| u == uri),
        };
        if self.names.iter().any(matches) {
            return Ok(ServerCertVerified::assertion());
        }
        let expected: Vec<String> = self.names.iter().map(San::to_string).collect();
        let presented: Vec<&str> = cert
            .valid_dns_names()
            .chain(cert.valid_uri_names())
            .collect();
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NoSanMatches {
                expected: expected.join(", "),
                presented: presented.join(", "),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read_error(file: &ConfigFile, e: impl fmt::Display) -> TlsError {
    TlsError::Read {
        file: file.clone(),
        error: e.to_string(),
    }
}

/// Reads the files a policy names, hashing them with the settings that
/// shape the connection (see [`TlsOrigin::same_as`]).
struct Reader {
    hasher: DefaultHasher,
}

impl Reader {
    fn new(o: &TlsOrigination, http: bool) -> Reader {
        let mut hasher = DefaultHasher::new();
        (
            &o.sni,
            &o.subject_alt_names,
            o.insecure_skip_verify,
            o.mode(),
            http,
        )
            .hash(&mut hasher);
        Reader { hasher }
    }

    fn read(&mut self, file: &ConfigFile) -> Result<Vec<u8>, TlsError> {
        let bytes = std::fs::read(&file.path).map_err(|e| read_error(file, e))?;
        (&file.path, &bytes).hash(&mut self.hasher);
        Ok(bytes)
    }
}

/// Every PEM certificate in `pem` (read from `file`); at least one.
fn load_certs(
    file: &ConfigFile,
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(file, pem_error(&file.path, e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            file: file.clone(),
            what,
        });
    }
    Ok(certs)
}

fn load_roots(file: &ConfigFile, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(file, pem, "certificate")?;
    let count = certs.len();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(TlsError::NoTrustAnchor {
            file: file.clone(),
            count,
        });
    }
    Ok(store)
}

fn load_crls(
    file: &ConfigFile,
    pem: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(file, pem_error(&file.path, e)))?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            file: file.clone(),
            what: "certificate revocation list (X509 CRL)",
        });
    }
    Ok(crls)
}

fn load_key(file: &ConfigFile, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            file: file.clone(),
            what: "private key",
        },
        e => read_error(file, pem_error(&file.path, e)),
    })
}

/// `pem::Error`'s I/O variant says nothing of the path.
fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM: {other:?} (in {})", path.display()),
    }
}

/// Loaded once: reading the system store takes milliseconds.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(r) = ROOTS.get() {
        return Ok(r.clone());
    }
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        warn!(error = %e, "reading a system root certificate");
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(result.certs);
    if store.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(ROOTS.get_or_init(|| Arc::new(store)).clone())
}

#[cfg(test)]
mod tests;
