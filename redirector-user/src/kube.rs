//! The node's locality from its Kubernetes labels, when the daemon runs in
//! a cluster and neither a flag nor the config file says it: Istio reads
//! the same labels (`topology.kubernetes.io/region`, `…/zone`,
//! `topology.istio.io/subzone`) from the node the proxy runs on.
//!
//! One `GET /api/v1/nodes/<name>` at start, over the in-cluster
//! connection every pod has: the API server's address from
//! `KUBERNETES_SERVICE_HOST`/`_PORT`, its CA and our bearer token from the
//! service account directory, the node's name from `NODE_NAME` (the
//! DaemonSet sets it with the downward API). A hand-written request on
//! hyper and rustls, which the daemon already carries, rather than a
//! Kubernetes client crate for one call. Environment access goes through
//! [`Env`], so tests never touch the process environment.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::topology::{LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE, Locality};

/// Where every pod finds its service account's token and the cluster CA.
pub(crate) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The whole exchange with the API server.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A node object is a few KiB; anything near this is not one.
const MAX_BODY: usize = 4 << 20;

/// The process environment, or a test's.
pub(crate) trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    #[error("reading {path}: {error} (the pod's service account {what})")]
    Read {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("{path} holds no usable CA certificate")]
    Ca { path: PathBuf },
    #[error("KUBERNETES_SERVICE_HOST {0:?} is neither an IP address nor a DNS name")]
    Host(String),
    #[error("KUBERNETES_SERVICE_PORT {0:?} is not a port")]
    Port(String),
    #[error("connecting to the Kubernetes API at {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("GET {url}: {status}: {body}{hint}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
        hint: &'static str,
    },
    #[error("GET {url}: the answer is not a node object: {error}")]
    Body { url: String, error: String },
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("node {node}'s labels: {error}")]
    Labels { node: String, error: String },
}

/// What the cluster says about this node.
#[derive(Debug, PartialEq)]
pub(crate) struct NodeLocality {
    pub(crate) node: String,
    pub(crate) locality: Locality,
}

/// The node's locality from its labels, or `None` when not in a cluster
/// (no `NODE_NAME` or no `KUBERNETES_SERVICE_HOST`).
pub(crate) async fn node_locality(env: &dyn Env) -> Result<Option<NodeLocality>, KubeError> {
    let (Some(node), Some(host)) = (env.var("NODE_NAME"), env.var("KUBERNETES_SERVICE_HOST"))
    else {
        return Ok(None);
    };
    let port = env
        .var("KUBERNETES_SERVICE_PORT")
        .unwrap_or_else(|| "443".into());
    let port: u16 = port.parse().map_err(|_| KubeError::Port(port.clone()))?;
    let dir = env
        .var("REDIRECTOR_SERVICE_ACCOUNT_DIR")
        .map_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR), PathBuf::from);
    let token = read(&dir.join("token"), "token")?;
    let token = String::from_utf8_lossy(&token).trim().to_owned();
    let ca = dir.join("ca.crt");
    let roots = roots(&ca, &read(&ca, "cluster CA")?)?;
    let body = tokio::time::timeout(TIMEOUT, get_node(&host, port, &node, &token, roots))
        .await
        .map_err(|_| KubeError::Timeout(TIMEOUT))??;
    let locality = locality_of(&body).map_err(|error| KubeError::Labels {
        node: node.clone(),
        error,
    })?;
    Ok(Some(NodeLocality { node, locality }))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, KubeError> {
    std::fs::read(path).map_err(|error| KubeError::Read {
        path: path.to_owned(),
        what,
        error,
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, KubeError> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(KubeError::Ca {
            path: path.to_owned(),
        });
    }
    Ok(store)
}

async fn get_node(
    host: &str,
    port: u16,
    node: &str,
    token: &str,
    roots: RootCertStore,
) -> Result<Vec<u8>, KubeError> {
    let name = ServerName::try_from(host.to_owned()).map_err(|_| KubeError::Host(host.into()))?;
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let url = format!("https://{addr}/api/v1/nodes/{node}");
    let connect_error = |error: String| KubeError::Connect {
        addr: addr.clone(),
        error,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| connect_error(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    tokio::spawn(conn);
    let request = Request::get(format!("/api/v1/nodes/{node}"))
        .header(header::HOST, &addr)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| KubeError::Body {
            url: url.clone(),
            error: e.to_string(),
        })?
        .to_bytes();
    if !status.is_success() {
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                " (the DaemonSet's service account needs `get` on `nodes`: see deploy/rbac.yaml)"
            }
            StatusCode::NOT_FOUND => " (is NODE_NAME the node's name? set it from spec.nodeName)",
            _ => "",
        };
        return Err(KubeError::Status {
            url,
            status,
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            hint,
        });
    }
    Ok(body.to_vec())
}

/// The locality in a node object's labels.
fn locality_of(node: &[u8]) -> Result<Locality, String> {
    let node: serde_json::Value = serde_json::from_slice(node).map_err(|e| e.to_string())?;
    if node["kind"] != "Node" {
        return Err(format!("kind is {}, not Node", node["kind"]));
    }
    let labels = &node["metadata"]["labels"];
    let label = |key: &str| labels[key].as_str().unwrap_or_default().to_owned();
    let locality = Locality {
        region: label(LABEL_REGION),
        zone: label(LABEL_ZONE),
        subzone: label(LABEL_SUBZONE),
    };
    if locality.region.is_empty() && !locality.is_empty() {
        return Err(format!(
            "{LABEL_ZONE} or {LABEL_SUBZONE} is set but {LABEL_REGION} is not"
        ));
    }
    Ok(locality)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestEnv(Vec<(&'static str, &'static str)>);

    impl Env for TestEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[tokio::test]
    async fn outside_a_cluster_there_is_nothing_to_ask() {
        assert_eq!(node_locality(&TestEnv(vec![])).await.unwrap(), None);
        let only_node = TestEnv(vec![("NODE_NAME", "n1")]);
        assert_eq!(node_locality(&only_node).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_missing_token_says_which_file_and_why() {
        let env = TestEnv(vec![
            ("NODE_NAME", "n1"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("REDIRECTOR_SERVICE_ACCOUNT_DIR", "/nonexistent-sa"),
        ]);
        let e = node_locality(&env).await.unwrap_err().to_string();
        assert!(
            e.starts_with("reading /nonexistent-sa/token: ") && e.contains("service account token"),
            "{e}"
        );
    }

    #[test]
    fn labels_give_the_locality() {
        let node = br#"{"kind":"Node","metadata":{"name":"n1","labels":{
            "topology.kubernetes.io/region":"us-east1",
            "topology.kubernetes.io/zone":"us-east1-b",
            "topology.istio.io/subzone":"rack7",
            "kubernetes.io/hostname":"n1"}}}"#;
        assert_eq!(
            locality_of(node).unwrap(),
            Locality::parse("us-east1/us-east1-b/rack7").unwrap()
        );
        let bare = br#"{"kind":"Node","metadata":{"name":"n1"}}"#;
        assert!(locality_of(bare).unwrap().is_empty());
        let zone_only =
            br#"{"kind":"Node","metadata":{"labels":{"topology.kubernetes.io/zone":"b"}}}"#;
        assert!(locality_of(zone_only).unwrap_err().contains("region"));
        assert!(
            locality_of(br#"{"kind":"Status"}"#)
                .unwrap_err()
                .contains("not Node")
        );
    }
}
