//! The one Kubernetes API call the daemon makes, served for tests: `GET
//! /api/v1/nodes/<name>` over HTTPS with a bearer token, answering a node
//! object with the labels the test gives (or 404 for other names, 401 for
//! a wrong token). Not a mock of the daemon's logic: the daemon's TLS,
//! token and label handling run for real against it, as against a
//! kube-apiserver. It also writes the service account directory a pod
//! would have (`token`, `ca.crt`).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio_rustls::TlsAcceptor;

use crate::{netns::Netns, pki::TestCa, serve::Acceptor};

const TOKEN: &str = "test-service-account-token";

struct State {
    node: String,
    labels: BTreeMap<String, String>,
    requests: AtomicU64,
}

/// A Kubernetes API endpoint for one node; stopped on drop.
pub struct KubeApi {
    state: Arc<State>,
    acceptor: Acceptor,
    service_account: PathBuf,
}

impl KubeApi {
    /// Serves node `node` with `labels` on `addr` (an IP, as
    /// `KUBERNETES_SERVICE_HOST` is) in `netns`, with a certificate for that
    /// IP from a new CA, and writes `token` and `ca.crt` into `dir`.
    pub fn start(
        netns: &Netns,
        addr: SocketAddr,
        node: &str,
        labels: &[(&str, &str)],
        dir: &Path,
    ) -> Result<KubeApi> {
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(&[&addr.ip().to_string()]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?,
                PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            )?;
        let tls = TlsAcceptor::from(Arc::new(config));
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("token"), format!("{TOKEN}\n"))?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
        let state = Arc::new(State {
            node: node.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            requests: AtomicU64::new(0),
        });
        let conn_state = Arc::clone(&state);
        let acceptor = Acceptor::start(netns, addr, "kube-apiserver", move |tcp| {
            let (tls, state) = (tls.clone(), Arc::clone(&conn_state));
            async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| {
                    std::future::ready(Ok::<_, Infallible>(respond(&req, &state)))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .context("starting the Kubernetes API stand-in")?;
        Ok(KubeApi {
            state,
            acceptor,
            service_account: dir.to_owned(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// Requests received, whatever they asked.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The environment a pod on this node would have.
    pub fn pod_env(&self) -> Vec<(String, String)> {
        vec![
            ("NODE_NAME".into(), self.state.node.clone()),
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.addr().ip().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.addr().port().to_string(),
            ),
            (
                "REDIRECTOR_SERVICE_ACCOUNT_DIR".into(),
                self.service_account.display().to_string(),
            ),
        ]
    }
}

fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    let (status, body) = if !authorized {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"kind":"Status","reason":"Unauthorized"}"#.to_owned(),
        )
    } else if req.uri().path() == format!("/api/v1/nodes/{}", state.node) {
        let node = serde_json::json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": state.node, "labels": state.labels},
        });
        (StatusCode::OK, node.to_string())
    } else {
        (
            StatusCode::NOT_FOUND,
            r#"{"kind":"Status","reason":"NotFound"}"#.to_owned(),
        )
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
