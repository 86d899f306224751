//! The validated configuration, as the rest of redirector reads it: one
//! [`Service`] per (host, port) with its endpoints and [`TrafficPolicy`]
//! resolved, Istio's defaults already applied.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::duration;
use crate::topology::{Failover, Locality};

/// The range Istio's DNS proxy allocates IPv4 VIPs from.
pub(crate) const DEFAULT_VIP_RANGE: ipnet::Ipv4Net =
    ipnet::Ipv4Net::new_assert(Ipv4Addr::new(240, 240, 0, 0), 16);

/// The range Istio's DNS proxy allocates IPv6 VIPs from.
pub(crate) const DEFAULT_VIP_RANGE6: ipnet::Ipv6Net =
    ipnet::Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48);

/// The effective configuration.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Config {
    /// The file's `NodeConfig` merged with the overrides.
    pub(crate) node: NodeSettings,
    /// Where VIPs are allocated from: `node.vip_range` or [`DEFAULT_VIP_RANGE`].
    #[serde(serialize_with = "display")]
    pub(crate) vip_range: ipnet::Ipv4Net,
    /// Where IPv6 VIPs are allocated from: `node.vip_range6` or
    /// [`DEFAULT_VIP_RANGE6`].
    #[serde(serialize_with = "display")]
    pub(crate) vip_range6: ipnet::Ipv6Net,
    /// One per (ServiceEntry host, port), sorted by host then port number.
    pub(crate) services: Vec<Service>,
}

/// Node settings, from the `NodeConfig` document or from flags.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct NodeSettings {
    pub(crate) locality: Option<Locality>,
    pub(crate) cgroup: Option<PathBuf>,
    /// Empty means unset.
    pub(crate) nameservers: Vec<SocketAddr>,
    pub(crate) listen_port: Option<u16>,
    /// The DNS responder's port on 127.0.0.1; `Some(0)` turns DNS capture
    /// off.
    pub(crate) dns_port: Option<u16>,
    /// The admin server's port on 127.0.0.1 (`/ready`, `/metrics`,
    /// `/config_dump`); `Some(0)` turns it off.
    pub(crate) admin_port: Option<u16>,
    #[serde(serialize_with = "display_opt")]
    pub(crate) vip_range: Option<ipnet::Ipv4Net>,
    #[serde(serialize_with = "display_opt")]
    pub(crate) vip_range6: Option<ipnet::Ipv6Net>,
    pub(crate) pin_dir: Option<PathBuf>,
    /// `spec.limits`: connection limits and timeouts (file only, no flags).
    pub(crate) limits: LimitSettings,
}

/// `NodeConfig.spec.limits`; unset fields take the defaults in
/// `proxy/limits.rs`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct LimitSettings {
    #[serde(serialize_with = "duration::serialize_opt")]
    pub(crate) request_headers_timeout: Option<Duration>,
    #[serde(serialize_with = "duration::serialize_opt")]
    pub(crate) stream_idle_timeout: Option<Duration>,
    #[serde(serialize_with = "duration::serialize_opt")]
    pub(crate) tcp_idle_timeout: Option<Duration>,
    pub(crate) max_connections: Option<u32>,
    pub(crate) max_connections_per_namespace: Option<u32>,
}

impl NodeSettings {
    /// `self` with every field that is set in `overrides` replaced.
    pub(crate) fn merged_with(&self, overrides: &NodeSettings) -> NodeSettings {
        NodeSettings {
            locality: overrides.locality.clone().or_else(|| self.locality.clone()),
            cgroup: overrides.cgroup.clone().or_else(|| self.cgroup.clone()),
            nameservers: if overrides.nameservers.is_empty() {
                self.nameservers.clone()
            } else {
                overrides.nameservers.clone()
            },
            listen_port: overrides.listen_port.or(self.listen_port),
            dns_port: overrides.dns_port.or(self.dns_port),
            admin_port: overrides.admin_port.or(self.admin_port),
            vip_range: overrides.vip_range.or(self.vip_range),
            vip_range6: overrides.vip_range6.or(self.vip_range6),
            pin_dir: overrides.pin_dir.clone().or_else(|| self.pin_dir.clone()),
            limits: self.limits.clone(),
        }
    }
}

/// One ServiceEntry host on one of its ports.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Service {
    pub(crate) host: String,
    pub(crate) vip: Ipv4Addr,
    /// True when the VIP was allocated from the range rather than written in
    /// the ServiceEntry's `addresses`.
    pub(crate) vip_allocated: bool,
    /// The IPv6 VIP (connect6, AAAA answers): from `addresses`, or
    /// allocated from the IPv6 range when they list none.
    pub(crate) vip6: Ipv6Addr,
    pub(crate) vip6_allocated: bool,
    pub(crate) port: ServicePort,
    pub(crate) resolution: Resolution,
    /// Endpoints with their port for this service port already chosen.
    pub(crate) endpoints: Vec<EndpointSpec>,
    pub(crate) policy: TrafficPolicy,
    /// From the ServiceEntry's `redirector.dev/datapath` annotation.
    pub(crate) datapath: DatapathMode,
    /// `namespace/name` of the ServiceEntry, or `name` without a namespace.
    pub(crate) service_entry: String,
    /// The DestinationRule that applies, named like `service_entry`.
    pub(crate) destination_rule: Option<String>,
}

/// How connects to a service travel: the ServiceEntry annotation
/// `redirector.dev/datapath: proxy | kernel`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) enum DatapathMode {
    /// Through the node-local proxy, which retries a failed connect on the
    /// next endpoint so the app never sees it.
    #[default]
    Proxy,
    /// connect4 sends each connect straight to an endpoint (no proxy hop);
    /// a failed connect reaches the app, and still counts for outlier
    /// detection. TCP, TLS and HTTPS ports without TLS origination only.
    Kernel,
}

impl fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatapathMode::Proxy => "proxy",
            DatapathMode::Kernel => "kernel",
        })
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ServicePort {
    pub(crate) number: u16,
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    /// Where endpoints listen unless an endpoint's `ports` says otherwise.
    pub(crate) target_port: u16,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Https,
    Tcp,
    Tls,
}

/// Istio's spelling: `HTTP`, `HTTPS`, `TCP`, `TLS`.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
        })
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub(crate) enum Resolution {
    Static,
    Dns,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct EndpointSpec {
    pub(crate) address: EndpointAddress,
    pub(crate) port: u16,
    pub(crate) locality: Locality,
    /// Relative share of traffic within its locality and priority (Istio's
    /// `weight`, default 1).
    pub(crate) weight: u32,
    /// Endpoint labels, matched by `failoverPriority`.
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    /// Istio's `network` (matched by `failoverPriority: [network]`).
    pub(crate) network: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
pub(crate) enum EndpointAddress {
    /// IPv4 or IPv6.
    Ip(std::net::IpAddr),
    /// Resolved at run time (resolution DNS).
    Dns(String),
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(ip) => ip.fmt(f),
            EndpointAddress::Dns(name) => f.write_str(name),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct TrafficPolicy {
    pub(crate) load_balancer: LbAlgorithm,
    /// `None` without `outlierDetection`: no ejection, and (as in Istio) no
    /// locality failover either.
    pub(crate) outlier: Option<OutlierPolicy>,
    pub(crate) locality_lb: LocalityLbPolicy,
    pub(crate) connection_pool: ConnectionPoolPolicy,
    pub(crate) tls: TlsPolicy,
}

impl Default for TrafficPolicy {
    /// What applies without a DestinationRule.
    fn default() -> Self {
        TrafficPolicy {
            load_balancer: LbAlgorithm::default(),
            outlier: None,
            locality_lb: LocalityLbPolicy {
                enabled: true,
                failover: Vec::new(),
                failover_priority: Vec::new(),
                distribute: Vec::new(),
            },
            connection_pool: ConnectionPoolPolicy::default(),
            tls: TlsPolicy::Disable,
        }
    }
}

/// `loadBalancer.simple`. Istio's default when unset is LEAST_REQUEST.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) enum LbAlgorithm {
    RoundRobin,
    /// Power of two choices on active requests.
    #[default]
    LeastRequest,
    Random,
    /// No balancing: the connection goes to the address the app dialled.
    /// Parsed only to be refused with its reason (see `validate`), so no
    /// loaded config holds it.
    Passthrough,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct OutlierPolicy {
    /// Consecutive failures that eject an endpoint; 0 turns ejection off.
    pub(crate) consecutive_5xx: u32,
    /// Consecutive 502/503/504 (and, unsplit, local-origin failures) that
    /// eject; `None` (Istio's default) turns this detector off.
    pub(crate) consecutive_gateway: Option<u32>,
    /// With `split_external_local_origin_errors`: consecutive connect,
    /// reset, timeout and TLS failures that eject (Envoy default 5).
    pub(crate) consecutive_local_origin: u32,
    pub(crate) split_external_local_origin_errors: bool,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) interval: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) base_ejection_time: Duration,
    /// `None`: unset, which lets one host always be ejected (see the config
    /// reference); `Some(p)`: `100 × (ejected + 1) / hosts ≤ p` exactly.
    pub(crate) max_ejection_percent: Option<u32>,
    /// Panic threshold: below this % of healthy hosts in a priority, traffic
    /// goes to all its hosts. 0 (Istio's default) turns panic mode off.
    pub(crate) min_health_percent: u32,
}

impl Default for OutlierPolicy {
    /// An `outlierDetection: {}` with Istio's and Envoy's defaults.
    fn default() -> Self {
        OutlierPolicy {
            consecutive_5xx: 5,
            consecutive_gateway: None,
            consecutive_local_origin: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: None,
            min_health_percent: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct LocalityLbPolicy {
    pub(crate) enabled: bool,
    pub(crate) failover: Vec<Failover>,
    /// Ordered label names (`topology.istio.io/network`, `region`, …).
    pub(crate) failover_priority: Vec<String>,
    pub(crate) distribute: Vec<Distribute>,
}

/// One `distribute` entry: traffic from a node in `from` (with `*`
/// wildcards) goes to localities in `to` by weight (summing to 100).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct Distribute {
    pub(crate) from: String,
    pub(crate) to: Vec<(String, u32)>,
}

/// `connectionPool`, with Istio's defaults (which are Envoy's).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ConnectionPoolPolicy {
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) connect_timeout: Duration,
    /// Upstream connections per service; Envoy's default is 2^32−1.
    pub(crate) max_connections: u32,
    pub(crate) tcp_keepalive: Option<TcpKeepalive>,
    /// Requests waiting for a connection; over it, fail fast with 503.
    pub(crate) http1_max_pending_requests: u32,
    /// 0: unlimited.
    pub(crate) max_requests_per_connection: u32,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) idle_timeout: Duration,
    /// Retries in flight per service (Envoy's `max_retries` circuit breaker).
    pub(crate) max_retries: u32,
}

impl Default for ConnectionPoolPolicy {
    fn default() -> Self {
        ConnectionPoolPolicy {
            connect_timeout: Duration::from_secs(10),
            max_connections: u32::MAX,
            tcp_keepalive: None,
            http1_max_pending_requests: u32::MAX,
            max_requests_per_connection: 0,
            idle_timeout: Duration::from_secs(3600),
            max_retries: u32::MAX,
        }
    }
}

/// `connectionPool.tcp.tcpKeepalive`; unset parts keep the OS defaults.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct TcpKeepalive {
    pub(crate) probes: Option<u32>,
    #[serde(serialize_with = "duration::serialize_opt")]
    pub(crate) time: Option<Duration>,
    #[serde(serialize_with = "duration::serialize_opt")]
    pub(crate) interval: Option<Duration>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) enum TlsPolicy {
    /// The app's bytes go to the endpoint as they are.
    Disable,
    /// `SIMPLE` or `MUTUAL`: the app speaks plain text to the VIP, the proxy
    /// speaks TLS to the endpoint.
    Originate(Box<TlsOrigination>),
}

impl TlsPolicy {
    /// The origination settings, when the proxy originates TLS.
    pub(crate) fn origination(&self) -> Option<&TlsOrigination> {
        match self {
            TlsPolicy::Disable => None,
            TlsPolicy::Originate(o) => Some(o),
        }
    }

    pub(crate) fn originates(&self) -> bool {
        self.origination().is_some()
    }
}

/// Istio's `ClientTLSSettings` for `SIMPLE` and `MUTUAL`, checked.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct TlsOrigination {
    /// Sent as SNI and verified instead of each endpoint's own name.
    pub(crate) sni: Option<String>,
    /// PEM trust anchors; the system's root store when unset.
    pub(crate) ca_certificates: Option<ConfigFile>,
    /// PEM certificate revocation lists checked against the whole chain.
    pub(crate) ca_crl: Option<ConfigFile>,
    /// `MUTUAL`: what the proxy presents; `None` for `SIMPLE`.
    pub(crate) client: Option<ClientIdentity>,
    /// Names one of which the certificate must carry, replacing the check of
    /// the endpoint's name: the rule's, or else the ServiceEntry's.
    pub(crate) subject_alt_names: Vec<String>,
    /// Accept any certificate (an explicit, logged opt-in).
    pub(crate) insecure_skip_verify: bool,
}

impl TlsOrigination {
    /// Istio's name for the mode.
    pub(crate) fn mode(&self) -> &'static str {
        if self.client.is_some() {
            "MUTUAL"
        } else {
            "SIMPLE"
        }
    }
}

/// `clientCertificate` and `privateKey` of `tls.mode: MUTUAL`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ClientIdentity {
    /// PEM certificate chain, leaf first.
    pub(crate) certificate: ConfigFile,
    pub(crate) private_key: ConfigFile,
}

/// A file named in the config. It is read when the proxy is built, so a
/// problem with its contents is reported then, located by `at`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ConfigFile {
    pub(crate) path: PathBuf,
    /// `file:line:column: document: field` of the config field naming it.
    #[serde(skip)]
    pub(crate) at: String,
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn display_opt<T: fmt::Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}
