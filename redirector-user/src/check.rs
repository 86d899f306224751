//! `redirector check`: validates a config file as the daemon would load
//! it (TLS files read and parsed too) and prints every service with its
//! VIPs, policies and endpoints.

use std::path::Path;

use crate::{
    config::{self, Config, DatapathMode, NodeSettings, Protocol},
    tls::TlsOrigin,
};

/// Checks the file at `path` (node settings from flags in `overrides`)
/// and prints what the daemon would serve.
pub(crate) fn run(path: &Path, overrides: &NodeSettings) -> anyhow::Result<()> {
    let config = config::load_file(path, overrides)?;
    check_tls_files(&config)?;
    print!("{}", describe(&config));
    Ok(())
}

/// What `redirector check` adds to validation: the TLS files each service
/// names, read and parsed as the daemon would, every problem at once.
fn check_tls_files(config: &Config) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    for s in &config.services {
        if let Err(e) = TlsOrigin::new(&s.policy.tls, s.port.protocol == Protocol::Http) {
            let e = e.to_string();
            // Ports of one host share their rule's files.
            if !problems.contains(&e) {
                problems.push(e);
            }
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// What `redirector check` prints: every service with its VIP and
/// endpoints, as the daemon would serve them.
fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "config OK: {} service(s), VIP ranges {} and {}\n",
        config.services.len(),
        config.vip_range,
        config.vip_range6
    );
    for s in &config.services {
        let _ = writeln!(
            out,
            "\n{}:{} ({}) VIP {} ({}) from ServiceEntry {}{}",
            s.host,
            s.port.number,
            s.port.protocol,
            s.vip,
            if s.vip_allocated {
                "allocated"
            } else {
                "addresses"
            },
            s.service_entry,
            s.destination_rule
                .as_ref()
                .map(|d| format!(", DestinationRule {d}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  IPv6 VIP [{}]:{} ({})",
            s.vip6,
            s.port.number,
            if s.vip6_allocated {
                "allocated"
            } else {
                "addresses"
            }
        );
        if s.datapath == DatapathMode::Kernel {
            let _ = writeln!(
                out,
                "  datapath: kernel (connects go straight to an endpoint, no proxy hop)"
            );
        }
        if let Some(o) = &s.policy.outlier {
            let _ = writeln!(
                out,
                "  outlier detection: {} consecutive 5xx, interval {:?}, base ejection {:?}",
                o.consecutive_5xx, o.interval, o.base_ejection_time
            );
            if let Some(n) = o.consecutive_gateway {
                let _ = writeln!(out, "    {n} consecutive gateway errors (502, 503, 504)");
            }
            if o.split_external_local_origin_errors {
                let _ = writeln!(
                    out,
                    "    local-origin failures split: {} consecutive eject",
                    o.consecutive_local_origin
                );
            }
            if let Some(p) = o.max_ejection_percent {
                let _ = writeln!(out, "    max ejection {p}%");
            }
        }
        let pool = &s.policy.connection_pool;
        if *pool != config::ConnectionPoolPolicy::default() {
            let limit = |n: u32| {
                if n == u32::MAX {
                    "unlimited".to_owned()
                } else {
                    n.to_string()
                }
            };
            let _ = writeln!(
                out,
                "  connection pool: connect timeout {:?}, max connections {}, max pending {}, \
                 max retries {}, {} requests per connection, idle timeout {:?}{}",
                pool.connect_timeout,
                limit(pool.max_connections),
                limit(pool.http1_max_pending_requests),
                limit(pool.max_retries),
                if pool.max_requests_per_connection == 0 {
                    "unlimited".to_owned()
                } else {
                    pool.max_requests_per_connection.to_string()
                },
                pool.idle_timeout,
                if pool.tcp_keepalive.is_some() {
                    ", TCP keepalive"
                } else {
                    ""
                }
            );
        }
        if let Some(o) = s.policy.tls.origination() {
            let verify = if o.insecure_skip_verify {
                "NOT VERIFIED (insecureSkipVerify)".to_owned()
            } else {
                let names = match (&o.subject_alt_names[..], &o.sni) {
                    ([], Some(sni)) => sni.clone(),
                    ([], None) => "each endpoint's own name".to_owned(),
                    (sans, _) => format!("one of {}", sans.join(", ")),
                };
                let roots = o.ca_certificates.as_ref().map_or(
                    "the system roots".to_owned(),
                    std::string::ToString::to_string,
                );
                let crl = o
                    .ca_crl
                    .as_ref()
                    .map(|f| format!(", revocation from {f}"))
                    .unwrap_or_default();
                format!("verified against {roots}{crl} for {names}")
            };
            let client = o
                .client
                .as_ref()
                .map(|c| format!(", client certificate {}", c.certificate))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  TLS origination: {}, SNI {}, {verify}{client}",
                o.mode(),
                o.sni.as_deref().unwrap_or("<endpoint name>")
            );
        }
        for e in &s.endpoints {
            let _ = writeln!(
                out,
                "  endpoint {}:{} locality {:?}",
                e.address,
                e.port,
                e.locality.to_string()
            );
        }
    }
    out
}
