//! TLS origination (`tls.mode: SIMPLE`): the app speaks plain text to the
//! VIP, the proxy speaks verified TLS to the endpoint.
//!
//! Verification is always on: against `caCertificates` when given, else the
//! system's root store. The name checked (and sent as SNI) is `sni` when
//! set, else the endpoint's own DNS name, so the blog's HTTPS variant works
//! against regional endpoints whose certificates do not say `mydb.com`
//! (where Istio sends the service host and fails, istio#50997). An IP
//! endpoint without `sni` sends no SNI and its certificate must carry the
//! IP. A failed handshake is an error for outlier detection, never a reason
//! to fall back to plain text.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tracing::warn;

use crate::config::{EndpointAddress, TlsPolicy};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("caCertificates {path}: {error}")]
    CaFile { path: PathBuf, error: String },
    #[error("caCertificates {path}: no certificate in the file")]
    CaEmpty { path: PathBuf },
    #[error("the system root store has no usable certificate; set caCertificates")]
    NoSystemRoots,
    #[error("sni {0:?} is not a valid DNS name or IP address")]
    BadSni(String),
}

/// Originates TLS for one service.
pub struct TlsOrigin {
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl TlsOrigin {
    /// `None` for `DISABLE`. `http` asks for ALPN `http/1.1`.
    pub fn new(policy: &TlsPolicy, http: bool) -> Result<Option<Arc<Self>>, TlsError> {
        let TlsPolicy::Simple {
            sni,
            ca_certificates,
        } = policy
        else {
            return Ok(None);
        };
        let roots = match ca_certificates {
            Some(path) => Arc::new(load_ca_file(path)?),
            None => system_roots()?,
        };
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let sni = sni
            .as_ref()
            .map(|s| ServerName::try_from(s.clone()).map_err(|_| TlsError::BadSni(s.clone())))
            .transpose()?;
        Ok(Some(Arc::new(Self {
            connector: TlsConnector::from(Arc::new(config)),
            sni,
        })))
    }

    /// The name to verify (and send as SNI, unless an IP) for an endpoint.
    pub fn server_name(&self, endpoint: &EndpointAddress) -> ServerName<'static> {
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

    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

fn load_ca_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::CaFile {
            path: path.into(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::CaEmpty { path: path.into() });
    }
    let mut store = RootCertStore::empty();
    let (_, rejected) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(TlsError::CaFile {
            path: path.into(),
            error: format!("{rejected} certificate(s), none usable as a trust anchor"),
        });
    }
    Ok(store)
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
