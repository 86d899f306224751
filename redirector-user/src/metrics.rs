//! The daemon's Prometheus metrics, served on the admin port's `/metrics`
//! (see `admin.rs`).
//!
//! Every metric is a label family registered once, at start. The hot path
//! never formats a label: a cluster resolves its service's handles when it
//! is built ([`ServiceStats`]), and each host its endpoint's handles when
//! the host appears ([`HostStats`]); a request then costs an atomic add.
//! Handles are shared by label, so a config reload that keeps a service
//! keeps counting into the same series, and a removed service's series stay
//! at their last value (Prometheus counters never go back).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    service: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KernelLabels {
    service: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

/// Status classes of `redirector_requests_total`, by `status / 100`.
const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a request went to another endpoint (`redirector_retries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The connect failed (refused, timed out, TLS): the next host.
    ConnectFailure = 0,
    /// The request left and the connection broke before an answer.
    Reset = 1,
    /// A body-less request was answered 503.
    Status503 = 2,
}
const RETRY_REASONS: [&str; 3] = ["connect_failure", "reset", "503"];

/// How a kernel-path connect ended (`redirector_kernel_connects_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelOutcome {
    Connected = 0,
    Failed = 1,
    TimedOut = 2,
}
const KERNEL_OUTCOMES: [&str; 3] = ["connected", "failed", "timeout"];

/// Every metric family of the daemon. Cheap to clone (each family is an
/// `Arc`).
#[derive(Clone)]
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    connections: Family<ServiceLabels, Counter>,
    active_connections: Family<ServiceLabels, Gauge>,
    connect_failures: Family<EndpointLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    ejected: Family<EndpointLabels, Gauge>,
    kernel_connects: Family<KernelLabels, Counter>,
    dns_refreshes: Family<NameLabels, Counter>,
    dns_failures: Family<NameLabels, Counter>,
    /// Config reloads applied, and rejected (the running config stayed).
    pub(crate) config_reloads: Counter,
    pub(crate) config_reload_rejections: Counter,
    /// Pods' network namespaces served now, and left alone (their own app
    /// holds the proxy or DNS port).
    pub(crate) pods_served: Gauge,
    pub(crate) pods_left_alone: Gauge,
    /// How long serving a pod's namespace took, from being told of it (CNI)
    /// or finding it, to its listeners being up.
    pub(crate) pod_setup_seconds: Histogram,
}

impl Default for Metrics {
    /// Families registered nowhere (unit tests).
    fn default() -> Self {
        Self::new(&mut Registry::default())
    }
}

impl Metrics {
    /// Registers every family in `registry`, named `redirector_*`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            retries: Family::default(),
            connections: Family::default(),
            active_connections: Family::default(),
            connect_failures: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            kernel_connects: Family::default(),
            dns_refreshes: Family::default(),
            dns_failures: Family::default(),
            config_reloads: Counter::default(),
            config_reload_rejections: Counter::default(),
            pods_served: Gauge::default(),
            pods_left_alone: Gauge::default(),
            pod_setup_seconds: Histogram::new([
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        };
        let r = registry.sub_registry_with_prefix("redirector");
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "requests",
            "HTTP requests proxied, by service (host:port) and the status class the app got",
            m.requests.clone(),
        );
        r.register(
            "retries",
            "Requests or connects sent to another endpoint, by service and reason",
            m.retries.clone(),
        );
        r.register(
            "connections",
            "App connections accepted by the proxy, by service",
            m.connections.clone(),
        );
        r.register(
            "active_connections",
            "App connections the proxy is serving now, by service",
            m.active_connections.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Failed connects to an endpoint (refused, timed out, TLS handshake; kernel path \
             included), by service and endpoint (ip:port)",
            m.connect_failures.clone(),
        );
        r.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by service and endpoint",
            m.ejections.clone(),
        );
        r.register(
            "outlier_ejected",
            "Whether the endpoint is ejected now (1) or not (0)",
            m.ejected.clone(),
        );
        r.register(
            "kernel_connects",
            "Connects of kernel-datapath services, by service, endpoint and outcome",
            m.kernel_connects.clone(),
        );
        r.register(
            "dns_refreshes",
            "DNS lookups of an endpoint name (answered or not)",
            m.dns_refreshes.clone(),
        );
        r.register(
            "dns_failures",
            "DNS lookups of an endpoint name that failed or came back empty (the last good \
             answer was kept)",
            m.dns_failures.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads applied",
            m.config_reloads.clone(),
        );
        r.register(
            "config_reload_rejections",
            "Config reloads rejected (invalid file; the running config stayed in force)",
            m.config_reload_rejections.clone(),
        );
        r.register(
            "pods_served",
            "Pods' network namespaces the daemon serves now (listeners up in each)",
            m.pods_served.clone(),
        );
        r.register(
            "pods_left_alone",
            "Pods' network namespaces left alone (their own app holds the proxy or DNS port)",
            m.pods_left_alone.clone(),
        );
        r.register(
            "pod_setup_seconds",
            "Time from being told of a pod (CNI) or finding it to its listeners being up",
            m.pod_setup_seconds.clone(),
        );
        m
    }

    /// The handles of one service, `host:port`.
    pub(crate) fn service(&self, service: &str) -> ServiceStats {
        let label = ServiceLabels {
            service: service.to_owned(),
        };
        ServiceStats {
            requests: CLASSES.map(|class| {
                self.requests.get_or_create_owned(&RequestLabels {
                    service: service.to_owned(),
                    class,
                })
            }),
            retries: RETRY_REASONS.map(|reason| {
                self.retries.get_or_create_owned(&RetryLabels {
                    service: service.to_owned(),
                    reason,
                })
            }),
            connections: self.connections.get_or_create_owned(&label),
            active: self.active_connections.get_or_create_owned(&label),
            service: label.service,
            metrics: self.clone(),
        }
    }

    /// The handles of one endpoint name's DNS refreshes.
    pub(crate) fn dns(&self, name: &str) -> DnsStats {
        let l = NameLabels {
            name: name.to_owned(),
        };
        DnsStats {
            refreshes: self.dns_refreshes.get_or_create_owned(&l),
            failures: self.dns_failures.get_or_create_owned(&l),
        }
    }
}

/// One service's handles, resolved once per cluster.
#[derive(Clone)]
pub(crate) struct ServiceStats {
    service: String,
    requests: [Counter; 6],
    retries: [Counter; 3],
    connections: Counter,
    active: Gauge,
    metrics: Metrics,
}

impl Default for ServiceStats {
    fn default() -> Self {
        Metrics::default().service("")
    }
}

impl ServiceStats {
    /// One HTTP request answered `status` (by the endpoint or the proxy).
    pub(crate) fn request(&self, status: u16) {
        let class = usize::from(status / 100);
        self.requests[if class < CLASSES.len() { class } else { 0 }].inc();
    }

    pub(crate) fn retry(&self, why: Retry) {
        self.retries[why as usize].inc();
    }

    /// Counts an accepted app connection, active until the guard drops.
    pub(crate) fn connection(&self) -> ActiveConnection {
        self.connections.inc();
        self.active.inc();
        ActiveConnection(self.active.clone())
    }

    /// The handles of one host (`ip:port`) of this service.
    pub(crate) fn host(&self, endpoint: &str, kernel_path: bool) -> HostStats {
        let l = EndpointLabels {
            service: self.service.clone(),
            endpoint: endpoint.to_owned(),
        };
        let m = &self.metrics;
        HostStats {
            connect_failures: m.connect_failures.get_or_create_owned(&l),
            ejections: m.ejections.get_or_create_owned(&l),
            ejected: m.ejected.get_or_create_owned(&l),
            kernel: kernel_path.then(|| {
                Arc::new(KERNEL_OUTCOMES.map(|outcome| {
                    m.kernel_connects.get_or_create_owned(&KernelLabels {
                        service: self.service.clone(),
                        endpoint: endpoint.to_owned(),
                        outcome,
                    })
                }))
            }),
        }
    }
}

/// An app connection in `redirector_active_connections` until dropped.
pub(crate) struct ActiveConnection(Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One host's handles, resolved when the host appears.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostStats {
    connect_failures: Counter,
    ejections: Counter,
    ejected: Gauge,
    /// Only for hosts of kernel-datapath services.
    kernel: Option<Arc<[Counter; 3]>>,
}

impl HostStats {
    pub(crate) fn connect_failed(&self) {
        self.connect_failures.inc();
    }

    pub(crate) fn ejected(&self) {
        self.ejections.inc();
        self.ejected.set(1);
    }

    pub(crate) fn returned(&self) {
        self.ejected.set(0);
    }

    pub(crate) fn kernel_connect(&self, outcome: KernelOutcome) {
        if let Some(k) = &self.kernel {
            k[outcome as usize].inc();
        }
    }
}

/// One endpoint name's DNS handles.
#[derive(Clone, Debug, Default)]
pub(crate) struct DnsStats {
    refreshes: Counter,
    failures: Counter,
}

impl DnsStats {
    pub(crate) fn refreshed(&self, ok: bool) {
        self.refreshes.inc();
        if !ok {
            self.failures.inc();
        }
    }
}

/// `registry` in the Prometheus text format (0.0.4).
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

pub(crate) use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Registry, Metrics) {
        let mut r = Registry::default();
        let m = Metrics::new(&mut r);
        (r, m)
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let (r, m) = setup();
        let s = m.service("mydb.com:80");
        s.request(200);
        s.request(503);
        s.request(204);
        s.retry(Retry::ConnectFailure);
        let h = s.host("10.0.0.1:80", false);
        h.connect_failed();
        h.ejected();
        m.dns("east.test").refreshed(false);
        m.config_reloads.inc();
        let text = encode(&r);
        for line in [
            "redirector_requests_total{service=\"mydb.com:80\",class=\"2xx\"} 2",
            "redirector_requests_total{service=\"mydb.com:80\",class=\"5xx\"} 1",
            "redirector_retries_total{service=\"mydb.com:80\",reason=\"connect_failure\"} 1",
            "redirector_upstream_connect_failures_total{service=\"mydb.com:80\",endpoint=\"10.0.0.1:80\"} 1",
            "redirector_outlier_ejections_total{service=\"mydb.com:80\",endpoint=\"10.0.0.1:80\"} 1",
            "redirector_outlier_ejected{service=\"mydb.com:80\",endpoint=\"10.0.0.1:80\"} 1",
            "redirector_dns_refreshes_total{name=\"east.test\"} 1",
            "redirector_dns_failures_total{name=\"east.test\"} 1",
            "redirector_config_reloads_total 1",
            "redirector_config_reload_rejections_total 0",
            "# TYPE redirector_active_connections gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Kernel-path series exist only for kernel-path hosts.
        assert!(
            !text.contains("redirector_kernel_connects_total{"),
            "{text}"
        );
    }

    #[test]
    fn handles_of_the_same_labels_share_one_series() {
        let (r, m) = setup();
        // A reload builds the service's handles again.
        m.service("a:80").request(200);
        m.service("a:80").request(200);
        let guard = m.service("a:80").connection();
        let text = encode(&r);
        assert!(
            text.contains("redirector_requests_total{service=\"a:80\",class=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("redirector_active_connections{service=\"a:80\"} 1"),
            "{text}"
        );
        drop(guard);
        let text = encode(&r);
        assert!(
            text.contains("redirector_active_connections{service=\"a:80\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("redirector_connections_total{service=\"a:80\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn odd_statuses_and_kernel_outcomes() {
        let (r, m) = setup();
        let s = m.service("k:80");
        s.request(999);
        let h = s.host("10.0.0.2:80", true);
        h.kernel_connect(KernelOutcome::TimedOut);
        h.ejected();
        h.returned();
        let text = encode(&r);
        for line in [
            "redirector_requests_total{service=\"k:80\",class=\"other\"} 1",
            "redirector_kernel_connects_total{service=\"k:80\",endpoint=\"10.0.0.2:80\",outcome=\"timeout\"} 1",
            "redirector_kernel_connects_total{service=\"k:80\",endpoint=\"10.0.0.2:80\",outcome=\"connected\"} 0",
            "redirector_outlier_ejected{service=\"k:80\",endpoint=\"10.0.0.2:80\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
