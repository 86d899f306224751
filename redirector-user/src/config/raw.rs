//! The YAML documents as written, before any meaning is given to them.
//!
//! These structs mirror Istio's `networking.istio.io` protos closely enough
//! that a user's documents load unchanged, and they reject every key they do
//! not name (`deny_unknown_fields`), so a typo gets serde's "unknown field,
//! expected one of …" instead of being dropped. Istio fields that redirector
//! does not implement are still named here, as `Option<Spanned<IgnoredAny>>`:
//! that way validation can say "not implemented yet" with the line, which
//! tells the user the field is real but unsupported rather than misspelt.
//!
//! Values whose meaning we check ourselves (enums, ports, durations) are kept
//! as strings or wide integers with their location, so validation can report
//! every problem of a document, not just serde's first.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// An Istio field we accept in the schema only to reject it with its line.
pub type Unsupported = Option<Spanned<IgnoredAny>>;

/// Just enough of a document to choose the type to read it as. Unknown keys
/// are ignored here; the typed pass checks them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub metadata: Option<IgnoredAnyOr<HeaderMetadata>>,
}

#[derive(Debug, Deserialize)]
pub struct HeaderMetadata {
    pub name: Option<IgnoredAnyOr<String>>,
}

/// A value that is either of type `T` or anything else, so the header pass
/// never fails on a field the typed pass will report properly.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IgnoredAnyOr<T> {
    Value(T),
    Other(IgnoredAny),
}

/// One Kubernetes-style document with a typed `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    /// Checked by [`Header`] before the document is read as this type.
    #[serde(rename = "apiVersion")]
    pub _api_version: IgnoredAny,
    pub kind: Spanned<String>,
    pub metadata: Option<Spanned<Metadata>>,
    pub spec: Spanned<S>,
}

/// `NodeConfig` may omit `spec` (everything then comes from flags).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeDocument {
    #[serde(rename = "apiVersion")]
    pub _api_version: IgnoredAny,
    pub kind: Spanned<String>,
    /// Optional and unused: there is only one node.
    #[serde(rename = "metadata")]
    pub _metadata: Option<Metadata>,
    #[serde(default)]
    pub spec: Option<NodeConfigSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    /// Accepted (checked to be string maps) for files shared with Kubernetes.
    #[serde(rename = "labels")]
    pub _labels: Option<BTreeMap<String, String>>,
    /// Ignored, except `redirector.dev/*` keys on a ServiceEntry.
    pub annotations: Option<BTreeMap<String, Spanned<String>>>,
}

/// `redirector.dev/v1alpha1` `NodeConfig`: the node's own settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfigSpec {
    pub locality: Option<Spanned<String>>,
    pub cgroup: Option<Spanned<String>>,
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub listen_port: Option<Spanned<i64>>,
    pub dns_port: Option<Spanned<i64>>,
    pub admin_port: Option<Spanned<i64>>,
    pub vip_range: Option<Spanned<String>>,
    pub vip_range6: Option<Spanned<String>>,
    pub pin_dir: Option<Spanned<String>>,
}

/// `networking.istio.io` `ServiceEntry.spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub ports: Spanned<Vec<Spanned<Port>>>,
    pub location: Option<Spanned<String>>,
    pub resolution: Option<Spanned<String>>,
    pub endpoints: Option<Vec<Spanned<WorkloadEntry>>>,
    pub export_to: Unsupported,
    pub subject_alt_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub workload_selector: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    pub number: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    pub target_port: Option<Spanned<i64>>,
}

/// A ServiceEntry endpoint (Istio's `WorkloadEntry` without its envelope).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: Option<Spanned<String>>,
    pub ports: Option<BTreeMap<String, Spanned<i64>>>,
    pub locality: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub labels: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub network: Option<Spanned<String>>,
    pub service_account: Unsupported,
}

/// `networking.istio.io` `DestinationRule.spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: Spanned<String>,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Unsupported,
    pub export_to: Unsupported,
    pub workload_selector: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    pub tls: Option<Spanned<ClientTls>>,
    pub connection_pool: Option<Spanned<ConnectionPool>>,
    pub port_level_settings: Option<Vec<Spanned<PortTrafficPolicy>>>,
    pub tunnel: Unsupported,
    pub proxy_protocol: Unsupported,
}

/// One `portLevelSettings` entry: the sub-policies for one port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<Spanned<PortSelector>>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<Spanned<ConnectionPool>>,
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    pub tls: Option<Spanned<ClientTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: Option<Spanned<i64>>,
}

/// Istio's `OutlierDetection`. Counts and percentages are kept wide so
/// validation can say "out of range" with the line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<Spanned<i64>>,
    pub consecutive_gateway_errors: Option<Spanned<i64>>,
    pub consecutive_local_origin_failures: Option<Spanned<i64>>,
    pub split_external_local_origin_errors: Option<Spanned<bool>>,
    /// Deprecated in Istio; mapped to gateway errors as Istio did.
    pub consecutive_errors: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
    pub min_health_percent: Option<Spanned<i64>>,
}

/// Istio's `ConnectionPoolSettings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    pub tcp: Option<Spanned<TcpSettings>>,
    pub http: Option<Spanned<HttpSettings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub tcp_keepalive: Option<Spanned<TcpKeepalive>>,
    pub max_connection_duration: Unsupported,
    pub idle_timeout: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    pub probes: Option<Spanned<i64>>,
    pub time: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<Spanned<i64>>,
    pub max_requests_per_connection: Option<Spanned<i64>>,
    pub max_retries: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub h2_upgrade_policy: Option<Spanned<String>>,
    /// Read for its type only: either value means HTTP/1.1 upstream here.
    #[allow(dead_code)]
    pub use_client_protocol: Option<Spanned<bool>>,
    pub http2_max_requests: Unsupported,
    pub max_concurrent_streams: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<Spanned<String>>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub consistent_hash: Unsupported,
    pub warmup_duration_secs: Unsupported,
    pub warmup: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    pub enabled: Option<Spanned<bool>>,
    pub failover: Option<Spanned<Vec<Spanned<Failover>>>>,
    pub failover_priority: Option<Spanned<Vec<Spanned<String>>>>,
    pub distribute: Option<Spanned<Vec<Spanned<Distribute>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribute {
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<String>>,
}

/// Istio's `ClientTLSSettings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: Option<Spanned<String>>,
    pub sni: Option<Spanned<String>>,
    pub ca_certificates: Option<Spanned<String>>,
    pub client_certificate: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub subject_alt_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
    pub credential_name: Unsupported,
    pub ca_crl: Option<Spanned<String>>,
}
