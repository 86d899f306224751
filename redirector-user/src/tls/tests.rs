//! Real handshakes on loopback between [`TlsOrigin`] and a rustls server,
//! with certificates from a CA made for each test.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use rustls::{
    HandshakeKind, ServerConfig, pki_types::pem::PemObject, server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use self::ca::TestCa;
use super::*;
use crate::config::{ClientIdentity, TlsOrigination};

mod ca;

/// What the server saw of one connection.
#[derive(Clone, Debug)]
struct Seen {
    sni: Option<String>,
    resumed: bool,
    client_certificate: bool,
}

/// A TLS server on 127.0.0.1 that answers `hello` to each handshake.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves `(cert, key)`; with `client_ca`, demands a client certificate
    /// it signed.
    async fn start((cert, key): &(String, String), client_ca: Option<&TestCa>) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
                    .unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(builder.with_single_cert(chain, key).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    record.lock().unwrap().push(Seen {
                        sni: conn.server_name().map(str::to_owned),
                        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                        client_certificate: conn.peer_certificates().is_some(),
                    });
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Server { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Files of one test.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    /// `pem` written to a file, named by a config field at a made-up place.
    fn file(&self, name: &str, pem: &str) -> ConfigFile {
        let path = self.0.path().join(name);
        std::fs::write(&path, pem).unwrap();
        ConfigFile {
            path,
            at: format!("test.yaml:7:21: DestinationRule \"db\" (document 2): tls.{name}"),
        }
    }

    fn ca(&self, ca: &TestCa) -> ConfigFile {
        self.file("caCertificates", &ca.cert_pem())
    }

    fn missing(&self, name: &str) -> ConfigFile {
        ConfigFile {
            path: self.0.path().join("nothing-here.pem"),
            at: format!("test.yaml:9:5: DestinationRule \"db\" (document 2): tls.{name}"),
        }
    }
}

fn policy(o: TlsOrigination) -> TlsPolicy {
    TlsPolicy::Originate(Box::new(o))
}

fn trusting(files: &Files, ca: &TestCa) -> TlsOrigination {
    TlsOrigination {
        ca_certificates: Some(files.ca(ca)),
        ..Default::default()
    }
}

fn origin(p: TlsOrigination) -> Arc<TlsOrigin> {
    TlsOrigin::new(&policy(p), true)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("originates")
}

fn dns(name: &str) -> EndpointAddress {
    EndpointAddress::Dns(name.to_owned())
}

/// Connects to `server` as `endpoint` and reads its answer; the TLS error
/// in the words the proxy would log, if any.
async fn talk(
    origin: &TlsOrigin,
    server: &Server,
    endpoint: &EndpointAddress,
) -> Result<(), String> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let describe = |e: io::Error| explain(&e).unwrap_or_else(|| e.to_string());
    let mut tls = origin
        .connect(0, origin.server_name(endpoint), tcp)
        .await
        .map_err(describe)?;
    // TLS 1.3: the server judges a client certificate after the client's
    // handshake is done, so a refusal arrives as an alert on this read.
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.map_err(describe)?;
    assert_eq!(answer, "hello");
    Ok(())
}

#[tokio::test]
async fn the_endpoint_name_is_verified_and_sent_as_sni() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["east.test"]), None).await;
    let origin = origin(trusting(&files, &ca));
    talk(&origin, &server, &dns("east.test")).await.unwrap();
    assert_eq!(server.seen()[0].sni.as_deref(), Some("east.test"));
    let wrong = talk(&origin, &server, &dns("west.test")).await.unwrap_err();
    assert!(wrong.contains("not valid for name"), "{wrong}");
    assert!(wrong.contains("west.test"), "{wrong}");
    assert_eq!(
        server.seen().len(),
        1,
        "the second handshake never completed"
    );
}

#[tokio::test]
async fn untrusted_and_expired_certificates_are_refused() {
    let (files, ca) = (Files::new(), TestCa::new());
    let origin = origin(trusting(&files, &ca));
    let untrusted = Server::start(&TestCa::new().leaf(&["east.test"]), None).await;
    let e = talk(&origin, &untrusted, &dns("east.test"))
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let expired = Server::start(&ca.expired_leaf(&["east.test"]), None).await;
    let e = talk(&origin, &expired, &dns("east.test"))
        .await
        .unwrap_err();
    assert!(e.contains("expired"), "{e}");
}

#[tokio::test]
async fn subject_alt_names_replace_the_name_check_but_not_the_sni() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["db.internal"]), None).await;
    let origin = origin(TlsOrigination {
        subject_alt_names: vec!["other.test".into(), "db.internal".into()],
        ..trusting(&files, &ca)
    });
    talk(&origin, &server, &dns("east.test")).await.unwrap();
    assert_eq!(server.seen()[0].sni.as_deref(), Some("east.test"));
}

#[tokio::test]
async fn a_certificate_without_any_of_the_subject_alt_names_is_refused_naming_them() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["east.test"]), None).await;
    let origin = origin(TlsOrigination {
        subject_alt_names: vec!["a.test".into(), "10.0.0.1".into()],
        ..trusting(&files, &ca)
    });
    // The endpoint's own name is on the certificate, but the list rules.
    let e = talk(&origin, &server, &dns("east.test")).await.unwrap_err();
    assert!(
        e.contains(
            "matches none of subjectAltNames [a.test, 10.0.0.1]; it is valid for [east.test]"
        ),
        "{e}"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn uri_subject_alt_names_match_exactly() {
    let (files, ca) = (Files::new(), TestCa::new());
    let spiffe = "spiffe://example.org/ns/db/sa/server";
    let server = Server::start(&ca.leaf(&["east.test", spiffe]), None).await;
    let exact = origin(TlsOrigination {
        subject_alt_names: vec![spiffe.into()],
        ..trusting(&files, &ca)
    });
    talk(&exact, &server, &dns("east.test")).await.unwrap();
    let other = origin(TlsOrigination {
        subject_alt_names: vec!["spiffe://example.org/ns/db/sa/other".into()],
        ..trusting(&files, &ca)
    });
    let e = talk(&other, &server, &dns("east.test")).await.unwrap_err();
    assert!(e.contains(spiffe), "presented names are listed: {e}");
}

#[tokio::test]
async fn an_ip_endpoint_sends_no_sni_and_is_checked_against_subject_alt_names() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["db.test"]), None).await;
    let ip = EndpointAddress::Ip([127, 0, 0, 1].into());
    // Without subjectAltNames the IP itself must be on the certificate.
    let plain = origin(trusting(&files, &ca));
    let e = talk(&plain, &server, &ip).await.unwrap_err();
    assert!(
        e.contains("not valid for name") && e.contains("127.0.0.1"),
        "{e}"
    );
    let sans = origin(TlsOrigination {
        subject_alt_names: vec!["db.test".into()],
        ..trusting(&files, &ca)
    });
    talk(&sans, &server, &ip).await.unwrap();
    assert_eq!(server.seen()[0].sni, None);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let server = Server::start(&untrusted_expired(), None).await;
    let origin = origin(TlsOrigination {
        insecure_skip_verify: true,
        ..Default::default()
    });
    talk(&origin, &server, &dns("east.test")).await.unwrap();
}

/// Expired, for another name, from a CA nobody trusts.
fn untrusted_expired() -> (String, String) {
    TestCa::new().expired_leaf(&["elsewhere.test"])
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_with_the_ca_crl() {
    let (files, ca) = (Files::new(), TestCa::new());
    let revoked = ca.leaf(&["east.test"]);
    let good = ca.leaf(&["east.test"]);
    let origin = origin(TlsOrigination {
        ca_crl: Some(files.file("caCrl", &ca.crl(&[&revoked.0]))),
        ..trusting(&files, &ca)
    });
    let server = Server::start(&revoked, None).await;
    let e = talk(&origin, &server, &dns("east.test")).await.unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    let server = Server::start(&good, None).await;
    talk(&origin, &server, &dns("east.test")).await.unwrap();
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_and_simple_is_told_it_needs_one() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["east.test"]), Some(&ca)).await;
    let (cert, key) = ca.client_leaf("redirector.test");
    let mutual = origin(TlsOrigination {
        client: Some(ClientIdentity {
            certificate: files.file("clientCertificate", &cert),
            private_key: files.file("privateKey", &key),
        }),
        ..trusting(&files, &ca)
    });
    talk(&mutual, &server, &dns("east.test")).await.unwrap();
    assert!(server.seen()[0].client_certificate);
    let simple = origin(trusting(&files, &ca));
    let e = talk(&simple, &server, &dns("east.test")).await.unwrap_err();
    assert!(e.contains("requires a client certificate"), "{e}");
    // A certificate the server's CA did not sign.
    let (cert, key) = TestCa::new().client_leaf("stranger.test");
    let stranger = origin(TlsOrigination {
        client: Some(ClientIdentity {
            certificate: files.file("stranger.pem", &cert),
            private_key: files.file("stranger.key", &key),
        }),
        ..trusting(&files, &ca)
    });
    let e = talk(&stranger, &server, &dns("east.test"))
        .await
        .unwrap_err();
    assert!(e.contains("rejected our client certificate"), "{e}");
}

#[tokio::test]
async fn a_new_connection_resumes_the_last_session() {
    let (files, ca) = (Files::new(), TestCa::new());
    let server = Server::start(&ca.leaf(&["east.test"]), None).await;
    let origin = origin(trusting(&files, &ca));
    for _ in 0..3 {
        talk(&origin, &server, &dns("east.test")).await.unwrap();
    }
    let resumed: Vec<bool> = server.seen().iter().map(|s| s.resumed).collect();
    assert_eq!(resumed, [false, true, true]);
}

#[test]
fn file_problems_name_the_field_and_the_file() {
    let (files, ca) = (Files::new(), TestCa::new());
    let error = |o: TlsOrigination| match TlsOrigin::new(&policy(o), true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    let missing = files.missing("caCertificates");
    let e = error(TlsOrigination {
        ca_certificates: Some(missing.clone()),
        ..Default::default()
    });
    assert!(
        e.starts_with(
            "test.yaml:9:5: DestinationRule \"db\" (document 2): tls.caCertificates: cannot read "
        ),
        "{e}"
    );
    assert!(
        e.contains("nothing-here.pem") && e.contains("No such file"),
        "{e}"
    );
    let e = error(TlsOrigination {
        ca_certificates: Some(files.file("caCertificates", "not a certificate\n")),
        ..Default::default()
    });
    assert!(e.ends_with("holds no PEM certificate"), "{e}");
    let e = error(TlsOrigination {
        ca_crl: Some(files.file("caCrl", &ca.cert_pem())),
        ..trusting(&files, &ca)
    });
    assert!(
        e.contains("tls.caCrl") && e.contains("holds no PEM certificate revocation list"),
        "{e}"
    );
    // A key that is not the certificate's.
    let (cert, _) = ca.client_leaf("a.test");
    let (_, other_key) = ca.client_leaf("b.test");
    let e = error(TlsOrigination {
        client: Some(ClientIdentity {
            certificate: files.file("clientCertificate", &cert),
            private_key: files.file("privateKey", &other_key),
        }),
        ..trusting(&files, &ca)
    });
    assert!(
        e.contains("tls.clientCertificate") && e.contains("do not belong together"),
        "{e}"
    );
    let e = error(TlsOrigination {
        client: Some(ClientIdentity {
            certificate: files.file("clientCertificate", &cert),
            private_key: files.file("privateKey", &cert),
        }),
        ..trusting(&files, &ca)
    });
    assert!(
        e.contains("tls.privateKey") && e.ends_with("holds no PEM private key"),
        "{e}"
    );
}

#[test]
fn explain_sees_through_io_errors() {
    let e = io::Error::new(
        io::ErrorKind::InvalidData,
        Error::AlertReceived(rustls::AlertDescription::UnrecognisedName),
    );
    let said = explain(&e).unwrap();
    assert!(
        said.starts_with("the endpoint does not know the name sent as SNI"),
        "{said}"
    );
    assert_eq!(explain(&io::Error::other("plain")), None);
}
