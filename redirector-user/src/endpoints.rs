//! `redirector endpoints`: what the daemon decided, read from its pinned
//! BPF maps rather than asked of the daemon, so it shows exactly the state
//! the kernel side holds. Laid out like `istioctl proxy-config endpoints`.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redirector_common::{
    EP_EJECTED, EP_UNRESOLVED, EndpointHealth, PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS,
    PROXY_ENABLED, SVC_TLS_ORIGINATION, SVC_VIP_AUTO, ServiceInfo, read_str,
};
use serde::Serialize;

use crate::bpf::{PinError, PinnedState};

#[derive(Debug, Serialize)]
pub struct Report {
    pub daemon_pid: u32,
    pub daemon_running: bool,
    pub redirect_enabled: bool,
    pub proxy: String,
    pub services: Vec<ServiceRow>,
    pub endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub host: String,
    pub vip: String,
    pub port: u16,
    pub protocol: &'static str,
    pub vip_source: &'static str,
    pub tls_origination: bool,
    pub cluster: String,
}

#[derive(Debug, Serialize)]
pub struct EndpointRow {
    /// `ip:port`, or the DNS name while it has no address.
    pub endpoint: String,
    pub address: String,
    pub status: &'static str,
    pub outlier_check: &'static str,
    pub locality: String,
    pub priority: u8,
    pub cluster: String,
    pub ejections: u32,
    pub multiplier: u32,
    pub consecutive_5xx: u32,
    /// Seconds until the host is eligible for un-ejection (on the next
    /// interval tick at or after it).
    pub ejected_for_secs: Option<u64>,
    pub last_error: String,
}

pub fn report(pin_dir: &Path) -> Result<Report, PinError> {
    let state = PinnedState::read(pin_dir)?;
    let cfg = state.config;
    let mut services: Vec<(u32, ServiceInfo)> = state.services;
    services.sort_by_key(|(id, _)| *id);
    let cluster_of = |id: u32| {
        services
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| {
                format!(
                    "outbound|{}||{}",
                    u16::from_be(s.port_be),
                    read_str(&s.host)
                )
            })
            .unwrap_or_else(|| format!("service #{id}"))
    };
    let mut endpoints = state.endpoints;
    endpoints.sort_by_key(|(k, _)| (k.service_id, k.index));
    let now = SystemTime::now();
    Ok(Report {
        daemon_pid: cfg.daemon_pid,
        daemon_running: pid_alive(cfg.daemon_pid),
        redirect_enabled: cfg.flags & PROXY_ENABLED != 0,
        proxy: addr(cfg.proxy_ip_be, cfg.proxy_port_be).to_string(),
        endpoints: endpoints
            .iter()
            .map(|(k, e)| endpoint_row(cluster_of(k.service_id), e, now))
            .collect(),
        services: services
            .iter()
            .map(|(id, s)| ServiceRow {
                host: read_str(&s.host).to_owned(),
                vip: Ipv4Addr::from(u32::from_be(s.vip_be)).to_string(),
                port: u16::from_be(s.port_be),
                protocol: match s.protocol {
                    PROTO_HTTP => "HTTP",
                    PROTO_HTTPS => "HTTPS",
                    PROTO_TCP => "TCP",
                    PROTO_TLS => "TLS",
                    _ => "?",
                },
                vip_source: if s.flags & SVC_VIP_AUTO != 0 {
                    "allocated"
                } else {
                    "addresses"
                },
                tls_origination: s.flags & SVC_TLS_ORIGINATION != 0,
                cluster: cluster_of(*id),
            })
            .collect(),
    })
}

fn endpoint_row(cluster: String, e: &EndpointHealth, now: SystemTime) -> EndpointRow {
    let ejected_for_secs = (e.status == EP_EJECTED).then(|| {
        let until = UNIX_EPOCH + Duration::from_millis(e.ejected_until_unix_ms);
        until.duration_since(now).unwrap_or_default().as_secs()
    });
    EndpointRow {
        endpoint: if e.status == EP_UNRESOLVED {
            read_str(&e.hostname).to_owned()
        } else {
            addr(e.addr_be, e.port_be).to_string()
        },
        address: read_str(&e.hostname).to_owned(),
        // No active health checks: like Envoy for DNS clusters, every
        // resolved host is HEALTHY and outlier detection is reported apart.
        status: if e.status == EP_UNRESOLVED {
            "UNRESOLVED"
        } else {
            "HEALTHY"
        },
        outlier_check: if e.status == EP_EJECTED {
            "FAILED"
        } else {
            "OK"
        },
        locality: read_str(&e.locality).to_owned(),
        priority: e.priority,
        cluster,
        ejections: e.ejections,
        multiplier: e.multiplier,
        consecutive_5xx: e.consecutive_5xx,
        ejected_for_secs,
        last_error: read_str(&e.last_error).to_owned(),
    }
}

fn addr(ip_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(ip_be)), u16::from_be(port_be))
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redirector pid {} ({}), redirect {}, proxy {}\n",
        r.daemon_pid,
        if r.daemon_running {
            "running"
        } else {
            "NOT RUNNING: stale state"
        },
        if r.redirect_enabled { "on" } else { "off" },
        r.proxy
    );
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            vec![
                s.host.clone(),
                s.vip.clone(),
                s.port.to_string(),
                s.protocol.into(),
                s.vip_source.into(),
                if s.tls_origination { "SIMPLE" } else { "-" }.into(),
                s.cluster.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "SERVICE",
            "VIP",
            "PORT",
            "PROTOCOL",
            "VIP SOURCE",
            "TLS",
            "CLUSTER",
        ],
        &rows,
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.endpoint.clone(),
                e.status.into(),
                e.outlier_check.into(),
                e.locality.clone(),
                e.priority.to_string(),
                e.cluster.clone(),
                e.address.clone(),
                e.ejections.to_string(),
                e.ejected_for_secs
                    .map(|s| format!("{s}s"))
                    .unwrap_or_else(|| "-".into()),
                if e.last_error.is_empty() {
                    "-".into()
                } else {
                    e.last_error.clone()
                },
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "ENDPOINT",
            "STATUS",
            "OUTLIER CHECK",
            "LOCALITY",
            "PRIORITY",
            "CLUSTER",
            "ADDRESS",
            "EJECTIONS",
            "EJECTED FOR",
            "LAST ERROR",
        ],
        &rows,
    );
    out
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(s, "{cell:<w$}   ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redirector_common::{HOST_LEN, LAST_ERROR_LEN, LOCALITY_LEN, write_str};

    #[test]
    fn ejected_endpoint_row_reads_like_istioctl() {
        let mut e = EndpointHealth {
            addr_be: u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be(),
            port_be: 81u16.to_be(),
            priority: 0,
            status: EP_EJECTED,
            ejections: 1,
            multiplier: 1,
            consecutive_5xx: 0,
            _pad: 0,
            ejected_until_unix_ms: 0,
            last_error_unix_ms: 0,
            locality: [0; LOCALITY_LEN],
            hostname: [0; HOST_LEN],
            last_error: [0; LAST_ERROR_LEN],
        };
        let now = SystemTime::now();
        e.ejected_until_unix_ms = (now + Duration::from_secs(42))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        write_str(&mut e.locality, "us-east1");
        write_str(&mut e.hostname, "east.test");
        write_str(&mut e.last_error, "connect: Connection refused");
        let row = endpoint_row("outbound|80||mydb.com".into(), &e, now);
        assert_eq!(row.endpoint, "10.0.0.1:81");
        assert_eq!(row.status, "HEALTHY");
        assert_eq!(row.outlier_check, "FAILED");
        assert!(matches!(row.ejected_for_secs, Some(41 | 42)));
        let report = Report {
            daemon_pid: 1,
            daemon_running: true,
            redirect_enabled: true,
            proxy: "127.0.0.1:15001".into(),
            services: vec![],
            endpoints: vec![row],
        };
        let text = render_table(&report);
        assert!(text.contains("ENDPOINT"), "{text}");
        let line = text.lines().find(|l| l.starts_with("10.0.0.1:81")).unwrap();
        assert!(
            line.contains("FAILED") && line.contains("outbound|80||mydb.com"),
            "{line}"
        );
    }
}
