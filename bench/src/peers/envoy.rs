//! Envoy configured the way Istio's pilot generates a sidecar's outbound
//! config for the seed ServiceEntry + DestinationRule (outlierDetection
//! only, no VirtualService), written as a static bootstrap. What is
//! followed, from istio/istio `pilot/pkg/networking/core/`:
//!
//! - `route/retry/retry.go` `DefaultPolicy()`: `retry_on:
//!   connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`,
//!   `retriable_status_codes: [503]`, `num_retries: 2`,
//!   `retry_host_predicate: previous_hosts`,
//!   `host_selection_retry_max_attempts: 5`. No `retry_priority`: Istio adds
//!   `previous_priorities` only when a VirtualService sets
//!   `retryRemoteLocalities`.
//! - `cluster_traffic_policy.go` `applyOutlierDetection()`:
//!   `consecutive_5xx` with `enforcing_consecutive_5xx: 100`,
//!   `enforcing_success_rate: 0`, `interval`, `base_ejection_time`;
//!   `max_ejection_percent` only when the rule sets `maxEjectionPercent`, so
//!   Envoy's default (10%) stays; `healthy_panic_threshold: 0` when
//!   `minHealthPercent` is unset. `getDefaultCircuitBreakerThresholds()`:
//!   every threshold at u32::MAX (Envoy's default `max_retries: 3` would cap
//!   concurrent retries). Load balancing: LEAST_REQUEST (Istio's default).
//! - `loadbalancer/loadbalancer.go` `ApplyLocalityLoadBalancer()` (failover
//!   on because the rule has outlierDetection): with the proxy in us-east1,
//!   the east endpoint is priority 0 and the west one priority 1, in one
//!   cluster's `load_assignment`.
//! - `cluster_tls.go` `constructUpstreamTLS()` for `tls.mode: SIMPLE` with
//!   `caCertificates` and no `sni`/`subjectAltNames`:
//!   `setAutoSniAndAutoSanValidation()` turns on `auto_sni` and
//!   `auto_san_validation`, so the SNI and the name checked are the
//!   request's Host (the service host, `tls.test`) for both regions; Istio
//!   serves the CA over SDS, here it is a `trusted_ca` file. The redirector
//!   uses each endpoint's own name instead (east.test / west.test).
//! - Routes: one virtual host per service (`<host>` and `<host>:<port>`),
//!   `timeout: 0s` (Istio disables Envoy's 15 s route timeout by default);
//!   mesh `connectTimeout` 10 s; no access log (Istio's default).
//!
//! Consequence, by design: with Envoy ≥ 1.31 and two hosts, ejecting one is
//! 50% > 10%, so Envoy never ejects (`ejections_overflow`), and retries go
//! back to the priority-0 host (`previous_hosts` has no other host there):
//! Istio as generated does not fail over for this rule. The redirector
//! always allows one ejection when `maxEjectionPercent` is unset.

use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{Launch, PeerConfig};
use crate::tools::Tools;

/// Makes `--base-id` distinct per Envoy started by this process (it names
/// the hot-restart shared memory and sockets).
static INSTANCES: AtomicU32 = AtomicU32::new(0);

pub(super) fn launch(tools: &Tools, cfg: &PeerConfig) -> Result<Launch> {
    // JSON is YAML: serde_json quotes every name and path correctly.
    let bootstrap = cfg.dir.join("envoy-bootstrap.yaml");
    let text = serde_json::to_string_pretty(&bootstrap_config(cfg))?;
    fs::write(&bootstrap, text).with_context(|| format!("writing {}", bootstrap.display()))?;
    let log = cfg.dir.join("envoy.log");
    let admin_address_file = cfg.dir.join("envoy-admin.address");
    let _ = fs::remove_file(&admin_address_file);
    let base_id =
        (std::process::id() % 40_000) * 100 + INSTANCES.fetch_add(1, Ordering::Relaxed) % 100;
    let mut command = std::process::Command::new(&tools.envoy);
    command
        .arg("-c")
        .arg(&bootstrap)
        .args(["--concurrency", "1"])
        .args(["--base-id", &base_id.to_string()])
        .arg("--log-path")
        .arg(&log)
        .arg("--admin-address-path")
        .arg(&admin_address_file);
    Ok(Launch {
        command,
        logs: vec![log],
        admin_address_file: Some(admin_address_file),
    })
}

/// A protobuf JSON duration.
fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

fn socket_address(addr: std::net::SocketAddrV4) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// Istio's outbound cluster name.
fn cluster_name(host: &str) -> String {
    format!("outbound|80||{host}")
}

pub(super) fn bootstrap_config(cfg: &PeerConfig) -> Value {
    let mut tls_cluster = cluster(cfg, &cfg.tls_host, cfg.east_tls, cfg.west_tls);
    tls_cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": { "filename": cfg.ca_file.display().to_string() }
                }
            }
        }
    });
    tls_cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "upstream_http_protocol_options": { "auto_sni": true, "auto_san_validation": true },
            "explicit_http_config": { "http_protocol_options": {} }
        }
    });
    json!({
        "node": { "id": "bench-envoy", "cluster": "bench", "locality": { "region": "us-east1" } },
        "admin": { "address": socket_address(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0)) },
        "static_resources": {
            "listeners": [{
                "name": format!("{}_{}", cfg.listen.ip(), cfg.listen.port()),
                "address": socket_address(cfg.listen),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "outbound_0.0.0.0_80",
                            "route_config": {
                                "name": "80",
                                "virtual_hosts": [
                                    virtual_host(cfg, &cfg.plain_host),
                                    virtual_host(cfg, &cfg.tls_host),
                                ]
                            },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                }
                            }]
                        }
                    }]
                }]
            }],
            "clusters": [
                cluster(cfg, &cfg.plain_host, cfg.east_plain, cfg.west_plain),
                tls_cluster,
            ]
        }
    })
}

fn virtual_host(cfg: &PeerConfig, host: &str) -> Value {
    json!({
        "name": format!("{host}:80"),
        "domains": [host, format!("{host}:80"), format!("{host}:{}", cfg.listen.port())],
        "routes": [{
            "match": { "prefix": "/" },
            "route": {
                "cluster": cluster_name(host),
                "timeout": "0s",
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                    "num_retries": 2,
                    "retry_host_predicate": [{
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        }
                    }],
                    "host_selection_retry_max_attempts": 5,
                    "retriable_status_codes": [503]
                }
            }
        }]
    })
}

fn cluster(
    cfg: &PeerConfig,
    host: &str,
    east: std::net::SocketAddrV4,
    west: std::net::SocketAddrV4,
) -> Value {
    let endpoint = |addr| json!({ "endpoint": { "address": socket_address(addr) } });
    json!({
        "name": cluster_name(host),
        "type": "STATIC",
        "connect_timeout": duration(cfg.connect_timeout),
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [{
                "max_connections": u32::MAX,
                "max_pending_requests": u32::MAX,
                "max_requests": u32::MAX,
                "max_retries": u32::MAX,
                "track_remaining": true
            }]
        },
        "common_lb_config": { "healthy_panic_threshold": { "value": 0 } },
        "outlier_detection": {
            "consecutive_5xx": cfg.outlier.consecutive_5xx,
            "enforcing_consecutive_5xx": if cfg.outlier.consecutive_5xx > 0 { 100 } else { 0 },
            "enforcing_success_rate": 0,
            "interval": duration(cfg.outlier.interval),
            "base_ejection_time": duration(cfg.outlier.base_ejection)
        },
        "load_assignment": {
            "cluster_name": cluster_name(host),
            "endpoints": [
                { "locality": { "region": "us-east1" }, "priority": 0, "lb_endpoints": [endpoint(east)] },
                { "locality": { "region": "us-west" }, "priority": 1, "lb_endpoints": [endpoint(west)] }
            ]
        }
    })
}
