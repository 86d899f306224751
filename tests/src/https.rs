//! An HTTPS endpoint for TLS-origination tests: rustls in front of an
//! [`HttpServer`], so the answers (`healthy: <name>`, the 5xx and delay
//! faults) are exactly the plain server's.
//!
//! The TLS side listens where the test says (the endpoint's `:443`) and
//! passes each connection, once its handshake is done, to the HTTP server
//! on a private `127.0.0.1` port in the same namespace. What a test needs
//! to judge the client's TLS is counted on the way: connections, client
//! hellos (with the SNI and ALPN they offered) and completed handshakes.
//! A client that rejects the certificate sends an alert instead of its
//! Finished, so its handshake never completes; a client that speaks plain
//! text sends no hello at all.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use rustls::{
    HandshakeKind, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{Acceptor as HelloReader, ResolvesServerCertUsingSni, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::{http::HttpServer, netns::Netns, serve::Acceptor};

/// What the last client hello offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Hello {
    sni: Option<String>,
    alpn: Vec<String>,
}

struct State {
    config: Arc<ServerConfig>,
    /// The plain HTTP server behind the TLS side.
    backend: SocketAddr,
    accepted: AtomicU64,
    hellos: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
    client_certificates: AtomicU64,
    last_hello: Mutex<Option<Hello>>,
}

/// What the server demands beyond a TLS client.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM root: demand a client certificate it signed (mutual TLS).
    pub client_ca: Option<String>,
    /// Serve the certificate only to a hello whose SNI is one of its DNS
    /// names; refuse other hellos (with or without SNI).
    pub require_sni: Option<Vec<String>>,
}

/// An HTTPS server in a namespace; stopped on drop.
pub struct HttpsServer {
    state: Arc<State>,
    // Field order is drop order: the TLS side stops before its backend.
    acceptor: Acceptor,
    http: HttpServer,
}

impl HttpsServer {
    /// Listens on `addr` inside `netns` with the certificate chain and key
    /// in `cert_pem` and `key_pem` (see [`crate::pki`]), offers ALPN
    /// `http/1.1`, and answers like [`HttpServer`]: `200 healthy: <name>`.
    pub fn start(
        netns: &Netns,
        addr: SocketAddr,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<HttpsServer> {
        Self::start_with(netns, addr, name, cert_pem, key_pem, &TlsOptions::default())
    }

    /// Like [`HttpsServer::start`], demanding what `options` say.
    pub fn start_with(
        netns: &Netns,
        addr: SocketAddr,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
        options: &TlsOptions,
    ) -> Result<HttpsServer> {
        let config = server_config(cert_pem, key_pem, options)
            .with_context(|| format!("https {name}: the certificate, key or options"))?;
        let http = HttpServer::start(netns, (Ipv4Addr::LOCALHOST, 0).into(), name)?;
        let state = Arc::new(State {
            config,
            backend: http.addr(),
            accepted: AtomicU64::new(0),
            hellos: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            client_certificates: AtomicU64::new(0),
            last_hello: Mutex::new(None),
        });
        let conn_state = Arc::clone(&state);
        let acceptor = Acceptor::start(netns, addr, &format!("https {name}"), move |stream| {
            terminate(stream, Arc::clone(&conn_state))
        })?;
        Ok(HttpsServer {
            state,
            acceptor,
            http,
        })
    }

    /// The bound (TLS) address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The name in the response bodies.
    pub fn name(&self) -> &str {
        self.http.name()
    }

    /// TCP connections accepted on the TLS address.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections that opened with a TLS client hello. Fewer than
    /// [`HttpsServer::accepted`] means someone spoke something else.
    pub fn hellos(&self) -> u64 {
        self.state.hellos.load(Ordering::SeqCst)
    }

    /// Handshakes that completed: the client accepted the certificate.
    pub fn handshakes(&self) -> u64 {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Completed handshakes that resumed an earlier session (no certificate
    /// exchanged, no full key exchange).
    pub fn resumed(&self) -> u64 {
        self.state.resumed.load(Ordering::SeqCst)
    }

    /// Completed handshakes in which the client presented a certificate.
    pub fn client_certificates(&self) -> u64 {
        self.state.client_certificates.load(Ordering::SeqCst)
    }

    /// The server name (SNI) the last client hello sent; `None` before any
    /// hello and when the last hello sent none.
    pub fn last_sni(&self) -> Option<String> {
        self.last_hello().and_then(|h| h.sni)
    }

    /// The ALPN protocols the last client hello offered, in order.
    pub fn last_alpn(&self) -> Vec<String> {
        self.last_hello().map(|h| h.alpn).unwrap_or_default()
    }

    /// HTTP requests received (over completed handshakes).
    pub fn requests(&self) -> u64 {
        self.http.requests()
    }

    /// See [`HttpServer::set_status`].
    pub fn set_status(&self, status: u16) -> Result<()> {
        self.http.set_status(status)
    }

    /// See [`HttpServer::set_delay`].
    pub fn set_delay(&self, delay: Duration) {
        self.http.set_delay(delay);
    }

    /// Closes the TLS listener and every open connection: new connects are
    /// refused until [`HttpsServer::restart`].
    pub fn stop(&self) -> Result<()> {
        self.acceptor.stop()
    }

    /// Listens on the same address again.
    pub fn restart(&self) -> Result<()> {
        self.acceptor.restart()
    }

    fn last_hello(&self) -> Option<Hello> {
        self.state
            .last_hello
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn server_config(cert_pem: &str, key_pem: &str, options: &TlsOptions) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading the key PEM")?;
    // Our own provider, so no process-wide default has to be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &options.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).context("the client CA PEM")?)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = match &options.require_sni {
        None => builder
            .with_single_cert(chain, key)
            .context("the key does not fit the certificate")?,
        Some(names) => {
            let certified = CertifiedKey::from_der(chain, key, &provider)
                .context("the key does not fit the certificate")?;
            let mut by_name = ResolvesServerCertUsingSni::new();
            for name in names {
                by_name.add(name, certified.clone())?;
            }
            builder.with_cert_resolver(Arc::new(by_name))
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the client hello, completes the handshake and relays the
/// plaintext to the HTTP backend. Failures end the connection; the tests
/// judge by the counters and by what the client saw.
async fn terminate(stream: TcpStream, state: Arc<State>) {
    state.accepted.fetch_add(1, Ordering::SeqCst);
    let Ok(start) = LazyConfigAcceptor::new(HelloReader::default(), stream).await else {
        return;
    };
    let hello = start.client_hello();
    let hello = Hello {
        sni: hello.server_name().map(str::to_owned),
        alpn: hello
            .alpn()
            .into_iter()
            .flatten()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
    };
    *state
        .last_hello
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hello);
    state.hellos.fetch_add(1, Ordering::SeqCst);
    let Ok(mut tls) = start.into_stream(Arc::clone(&state.config)).await else {
        return;
    };
    state.handshakes.fetch_add(1, Ordering::SeqCst);
    let conn = tls.get_ref().1;
    if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        state.resumed.fetch_add(1, Ordering::SeqCst);
    }
    if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
        state.client_certificates.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(mut backend) = TcpStream::connect(state.backend).await else {
        eprintln!(
            "testbed: https: cannot reach the HTTP backend {}",
            state.backend
        );
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
}
