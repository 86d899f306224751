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
pub(super) type Unsupported = Option<Spanned<IgnoredAny>>;

/// Just enough of a document to choose the type to read it as. Unknown keys
/// are ignored here; the typed pass checks them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Header {
    pub(super) api_version: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) metadata: Option<IgnoredAnyOr<HeaderMetadata>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct HeaderMetadata {
    pub(super) name: Option<IgnoredAnyOr<String>>,
}

/// A value that is either of type `T` or anything else, so the header pass
/// never fails on a field the typed pass will report properly.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum IgnoredAnyOr<T> {
    Value(T),
    Other(IgnoredAny),
}

/// One Kubernetes-style document with a typed `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Document<S> {
    /// Checked by [`Header`] before the document is read as this type.
    #[serde(rename = "apiVersion")]
    pub(super) _api_version: IgnoredAny,
    pub(super) kind: Spanned<String>,
    pub(super) metadata: Option<Spanned<Metadata>>,
    pub(super) spec: Spanned<S>,
}

/// `NodeConfig` may omit `spec` (everything then comes from flags).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NodeDocument {
    #[serde(rename = "apiVersion")]
    pub(super) _api_version: IgnoredAny,
    pub(super) kind: Spanned<String>,
    /// Optional and unused: there is only one node.
    #[serde(rename = "metadata")]
    pub(super) _metadata: Option<Metadata>,
    #[serde(default)]
    pub(super) spec: Option<NodeConfigSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Metadata {
    pub(super) name: Option<Spanned<String>>,
    pub(super) namespace: Option<Spanned<String>>,
    /// Accepted (checked to be string maps) for files shared with Kubernetes.
    #[serde(rename = "labels")]
    pub(super) _labels: Option<BTreeMap<String, String>>,
    /// Ignored, except `redirector.dev/*` keys on a ServiceEntry.
    pub(super) annotations: Option<BTreeMap<String, Spanned<String>>>,
}

/// `redirector.dev/v1alpha1` `NodeConfig`: the node's own settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NodeConfigSpec {
    pub(super) locality: Option<Spanned<String>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) nameservers: Option<Vec<Spanned<String>>>,
    pub(super) listen_port: Option<Spanned<i64>>,
    pub(super) dns_port: Option<Spanned<i64>>,
    pub(super) admin_port: Option<Spanned<i64>>,
    pub(super) vip_range: Option<Spanned<String>>,
    pub(super) vip_range6: Option<Spanned<String>>,
    pub(super) pin_dir: Option<Spanned<String>>,
    pub(super) limits: Option<NodeLimits>,
}

/// `NodeConfig.spec.limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NodeLimits {
    pub(super) request_headers_timeout: Option<Spanned<String>>,
    pub(super) stream_idle_timeout: Option<Spanned<String>>,
    pub(super) tcp_idle_timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_namespace: Option<Spanned<i64>>,
}

/// `networking.istio.io` `ServiceEntry.spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ServiceEntrySpec {
    pub(super) hosts: Spanned<Vec<Spanned<String>>>,
    pub(super) addresses: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) ports: Spanned<Vec<Spanned<Port>>>,
    pub(super) location: Option<Spanned<String>>,
    pub(super) resolution: Option<Spanned<String>>,
    pub(super) endpoints: Option<Vec<Spanned<WorkloadEntry>>>,
    pub(super) export_to: Unsupported,
    pub(super) subject_alt_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) workload_selector: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Port {
    pub(super) number: Option<Spanned<i64>>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) target_port: Option<Spanned<i64>>,
}

/// A ServiceEntry endpoint (Istio's `WorkloadEntry` without its envelope).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct WorkloadEntry {
    pub(super) address: Option<Spanned<String>>,
    pub(super) ports: Option<BTreeMap<String, Spanned<i64>>>,
    pub(super) locality: Option<Spanned<String>>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) labels: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(super) network: Option<Spanned<String>>,
    pub(super) service_account: Unsupported,
}

/// `networking.istio.io` `DestinationRule.spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DestinationRuleSpec {
    pub(super) host: Spanned<String>,
    pub(super) traffic_policy: Option<TrafficPolicy>,
    pub(super) subsets: Unsupported,
    pub(super) export_to: Unsupported,
    pub(super) workload_selector: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TrafficPolicy {
    pub(super) load_balancer: Option<LoadBalancer>,
    pub(super) outlier_detection: Option<Spanned<OutlierDetection>>,
    pub(super) tls: Option<Spanned<ClientTls>>,
    pub(super) connection_pool: Option<Spanned<ConnectionPool>>,
    pub(super) port_level_settings: Option<Vec<Spanned<PortTrafficPolicy>>>,
    pub(super) tunnel: Unsupported,
    pub(super) proxy_protocol: Unsupported,
}

/// One `portLevelSettings` entry: the sub-policies for one port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PortTrafficPolicy {
    pub(super) port: Option<Spanned<PortSelector>>,
    pub(super) load_balancer: Option<LoadBalancer>,
    pub(super) connection_pool: Option<Spanned<ConnectionPool>>,
    pub(super) outlier_detection: Option<Spanned<OutlierDetection>>,
    pub(super) tls: Option<Spanned<ClientTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortSelector {
    pub(super) number: Option<Spanned<i64>>,
}

/// Istio's `OutlierDetection`. Counts and percentages are kept wide so
/// validation can say "out of range" with the line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub(super) consecutive_5xx_errors: Option<Spanned<i64>>,
    pub(super) consecutive_gateway_errors: Option<Spanned<i64>>,
    pub(super) consecutive_local_origin_failures: Option<Spanned<i64>>,
    pub(super) split_external_local_origin_errors: Option<Spanned<bool>>,
    /// Deprecated in Istio; mapped to gateway errors as Istio did.
    pub(super) consecutive_errors: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) base_ejection_time: Option<Spanned<String>>,
    pub(super) max_ejection_percent: Option<Spanned<i64>>,
    pub(super) min_health_percent: Option<Spanned<i64>>,
}

/// Istio's `ConnectionPoolSettings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionPool {
    pub(super) tcp: Option<Spanned<TcpSettings>>,
    pub(super) http: Option<Spanned<HttpSettings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TcpSettings {
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) tcp_keepalive: Option<Spanned<TcpKeepalive>>,
    pub(super) max_connection_duration: Unsupported,
    pub(super) idle_timeout: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TcpKeepalive {
    pub(super) probes: Option<Spanned<i64>>,
    pub(super) time: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpSettings {
    pub(super) http1_max_pending_requests: Option<Spanned<i64>>,
    pub(super) max_requests_per_connection: Option<Spanned<i64>>,
    pub(super) max_retries: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) h2_upgrade_policy: Option<Spanned<String>>,
    /// Read for its type only: either value means HTTP/1.1 upstream here.
    #[allow(dead_code)]
    pub(super) use_client_protocol: Option<Spanned<bool>>,
    pub(super) http2_max_requests: Unsupported,
    pub(super) max_concurrent_streams: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LoadBalancer {
    pub(super) simple: Option<Spanned<String>>,
    pub(super) locality_lb_setting: Option<LocalityLbSetting>,
    pub(super) consistent_hash: Unsupported,
    pub(super) warmup_duration_secs: Unsupported,
    pub(super) warmup: Unsupported,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LocalityLbSetting {
    pub(super) enabled: Option<Spanned<bool>>,
    pub(super) failover: Option<Spanned<Vec<Spanned<Failover>>>>,
    pub(super) failover_priority: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) distribute: Option<Spanned<Vec<Spanned<Distribute>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Distribute {
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Failover {
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<String>>,
}

/// Istio's `ClientTLSSettings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ClientTls {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) sni: Option<Spanned<String>>,
    pub(super) ca_certificates: Option<Spanned<String>>,
    pub(super) client_certificate: Option<Spanned<String>>,
    pub(super) private_key: Option<Spanned<String>>,
    pub(super) subject_alt_names: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) insecure_skip_verify: Option<Spanned<bool>>,
    pub(super) credential_name: Unsupported,
    pub(super) ca_crl: Option<Spanned<String>>,
}
