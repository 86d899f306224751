//! `redirector endpoints`: what the daemon decided, read from its pinned
//! BPF maps rather than asked of the daemon, so it shows exactly the state
//! the kernel side holds, also while no daemon runs and the kernel serves
//! connects on its own. Laid out like `istioctl proxy-config endpoints`.
//!
//! For each service it says which path a new connect takes right now, by
//! the same rules connect4 applies (see `datapath.rs`): its configured datapath,
//! whether a listener holds the proxy address (in the daemon's network
//! namespace while it runs, else in this process's), and whether the slot
//! table has endpoints.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redirector_common::{
    EP_EJECTED, EP_UNRESOLVED, EndpointHealth, PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS,
    PROXY_ENABLED, SVC_INFO_KERNEL_PATH, SVC_TLS_MUTUAL, SVC_TLS_ORIGINATION, SVC_VIP_AUTO,
    ServiceInfo, SlotTable, read_str,
};
use serde::Serialize;

use crate::datapath::{PinError, PinnedState};

pub(crate) mod pods;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) daemon_pid: u32,
    pub(crate) daemon_running: bool,
    pub(crate) redirect_enabled: bool,
    /// Whether the programs are attached through pinned links (they stay
    /// attached when the daemon is gone).
    pub(crate) datapath_attached: bool,
    pub(crate) proxy: String,
    /// Whether a TCP listener holds the proxy address: what connect4 checks
    /// on every connect (in the connecting app's network namespace).
    pub(crate) proxy_listening: bool,
    pub(crate) services: Vec<ServiceRow>,
    pub(crate) endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServiceRow {
    pub(crate) host: String,
    pub(crate) vip: String,
    pub(crate) port: u16,
    pub(crate) protocol: &'static str,
    pub(crate) vip_source: &'static str,
    pub(crate) tls_origination: bool,
    /// `DISABLE`, `SIMPLE` or `MUTUAL`.
    pub(crate) tls_mode: &'static str,
    pub(crate) cluster: String,
    /// As configured: `proxy` or `kernel`.
    pub(crate) datapath: &'static str,
    /// Where a new connect goes now: `proxy`, `kernel`, `kernel (fail-open)`,
    /// `rejected` (connect fails with EPERM: the proxy is down and there is
    /// no endpoint it may use) or `not redirected`.
    pub(crate) path_now: &'static str,
    /// The slot table: each endpoint with its number of slots (its share
    /// of kernel-path connects is slots / total).
    pub(crate) slots: Vec<SlotShare>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct SlotShare {
    pub(crate) endpoint: String,
    pub(crate) slots: u32,
}

#[derive(Debug, Serialize)]
pub(crate) struct EndpointRow {
    /// `ip:port`, or the DNS name while it has no address.
    pub(crate) endpoint: String,
    pub(crate) address: String,
    pub(crate) status: &'static str,
    pub(crate) outlier_check: &'static str,
    pub(crate) ejected: bool,
    pub(crate) locality: String,
    pub(crate) priority: u8,
    pub(crate) weight: u32,
    pub(crate) cluster: String,
    pub(crate) ejections: u32,
    pub(crate) multiplier: u32,
    pub(crate) consecutive_5xx: u32,
    /// Seconds until the host is eligible for un-ejection (on the next
    /// interval tick at or after it).
    pub(crate) ejected_for_secs: Option<u64>,
    pub(crate) last_error: String,
    /// Entries of the service's slot table that point here.
    pub(crate) kernel_slots: u32,
    /// DNS endpoints: refreshes that failed or came back empty since the
    /// daemon started (each kept the last good answer).
    pub(crate) dns_failures: u32,
    /// Seconds since the name last resolved; `None` for IP endpoints or a
    /// name that never resolved.
    pub(crate) dns_answer_secs_ago: Option<u64>,
}

pub(crate) fn report(pin_dir: &Path) -> Result<Report, PinError> {
    let state = PinnedState::read(pin_dir)?;
    let cfg = state.config;
    let mut services: Vec<(u32, ServiceInfo)> = state.services;
    services.sort_by_key(|(id, _)| *id);
    let cluster_of = |id: u32| {
        services.iter().find(|(i, _)| *i == id).map_or_else(
            || format!("service #{id}"),
            |(_, s)| format!("outbound|{}||{}", s.vip().port(), read_str(&s.host)),
        )
    };
    let proxy = cfg.proxy();
    let daemon_running = pid_alive(cfg.daemon_pid);
    // The daemon's network namespace while it runs (where its proxy, or a
    // `--datapath-only` peer, listens); ours once it is gone.
    let tcp_table = if daemon_running {
        format!("/proc/{}/net/tcp", cfg.daemon_pid)
    } else {
        "/proc/net/tcp".to_owned()
    };
    let proxy_listening = std::fs::read_to_string(tcp_table).is_ok_and(|t| listening(&t, proxy));
    let redirect_enabled = cfg.flags & PROXY_ENABLED != 0;
    let slots: HashMap<u32, Vec<SlotShare>> = state
        .slots
        .iter()
        .map(|(id, t)| {
            let for_this = services.iter().any(|(i, s)| i == id && s.vip() == t.vip());
            (*id, if for_this { shares(t) } else { Vec::new() })
        })
        .collect();
    let mut endpoints = state.endpoints;
    endpoints.sort_by_key(|(k, _)| (k.service_id, k.index));
    let now = SystemTime::now();
    Ok(Report {
        daemon_pid: cfg.daemon_pid,
        daemon_running,
        redirect_enabled,
        datapath_attached: state.attached,
        proxy: proxy.to_string(),
        proxy_listening,
        endpoints: endpoints
            .iter()
            .map(|(k, e)| {
                let mut row = endpoint_row(cluster_of(k.service_id), e, now);
                row.kernel_slots = slots
                    .get(&k.service_id)
                    .and_then(|s| s.iter().find(|s| s.endpoint == row.endpoint))
                    .map_or(0, |s| s.slots);
                row
            })
            .collect(),
        services: services
            .iter()
            .map(|(id, s)| {
                let slots = slots.get(id).cloned().unwrap_or_default();
                ServiceRow {
                    host: read_str(&s.host).to_owned(),
                    vip: s.vip().ip().to_string(),
                    port: s.vip().port(),
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
                    tls_mode: match (
                        s.flags & SVC_TLS_ORIGINATION != 0,
                        s.flags & SVC_TLS_MUTUAL != 0,
                    ) {
                        (false, _) => "DISABLE",
                        (true, false) => "SIMPLE",
                        (true, true) => "MUTUAL",
                    },
                    cluster: cluster_of(*id),
                    datapath: if s.flags & SVC_INFO_KERNEL_PATH != 0 {
                        "kernel"
                    } else {
                        "proxy"
                    },
                    path_now: path_now(
                        state.attached && redirect_enabled,
                        s.flags,
                        proxy_listening,
                        !slots.is_empty(),
                    ),
                    slots,
                }
            })
            .collect(),
    })
}

/// connect4's decision for a service, from what it reads.
fn path_now(active: bool, flags: u8, proxy_listening: bool, has_slots: bool) -> &'static str {
    let kernel = flags & SVC_INFO_KERNEL_PATH != 0;
    let fail_open = flags & SVC_TLS_ORIGINATION == 0;
    if !active {
        "not redirected"
    } else if kernel && has_slots {
        "kernel"
    } else if proxy_listening {
        "proxy"
    } else if fail_open && has_slots {
        "kernel (fail-open)"
    } else {
        "rejected"
    }
}

/// Each endpoint of a slot table with its number of slots, in table order.
fn shares(t: &SlotTable) -> Vec<SlotShare> {
    let mut out: Vec<SlotShare> = Vec::new();
    for slot in t.used() {
        let endpoint = slot.addr().to_string();
        match out.iter_mut().find(|s| s.endpoint == endpoint) {
            Some(s) => s.slots += 1,
            None => out.push(SlotShare { endpoint, slots: 1 }),
        }
    }
    out
}

/// Whether `/proc/net/tcp` (`text`) has a listener that a connect to
/// `proxy` would reach: on that address or on 0.0.0.0, same port.
fn listening(text: &str, proxy: SocketAddrV4) -> bool {
    const TCP_LISTEN: &str = "0A";
    text.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (cols.nth(1), cols.next(), cols.next())
        else {
            return false;
        };
        let Some((ip, port)) = local.split_once(':') else {
            return false;
        };
        let (Ok(ip), Ok(port)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16))
        else {
            return false;
        };
        // The kernel prints the address's bytes as a native-endian number.
        let ip = Ipv4Addr::from(ip.to_ne_bytes());
        state == TCP_LISTEN
            && port == proxy.port()
            && (ip == *proxy.ip() || ip == Ipv4Addr::UNSPECIFIED)
    })
}

fn endpoint_row(cluster: String, e: &EndpointHealth, now: SystemTime) -> EndpointRow {
    let ejected = e.status == EP_EJECTED;
    let ejected_for_secs = ejected.then(|| {
        let until = UNIX_EPOCH + Duration::from_millis(e.ejected_until_unix_ms);
        until.duration_since(now).unwrap_or_default().as_secs()
    });
    EndpointRow {
        endpoint: if e.status == EP_UNRESOLVED {
            read_str(&e.hostname).to_owned()
        } else if let Some(addr) = e.addr() {
            addr.to_string()
        } else {
            // An IPv6 host: the map's address field is IPv4 only, so it is
            // shown by its configured address (see datapath/encode.rs).
            let port = e.port();
            match read_str(&e.hostname).parse::<std::net::Ipv6Addr>() {
                Ok(ip) => std::net::SocketAddrV6::new(ip, port, 0, 0).to_string(),
                Err(_) => format!("{} (IPv6):{port}", read_str(&e.hostname)),
            }
        },
        address: read_str(&e.hostname).to_owned(),
        // No active health checks: like Envoy for DNS clusters, every
        // resolved host is HEALTHY and outlier detection is reported apart.
        status: if e.status == EP_UNRESOLVED {
            "UNRESOLVED"
        } else {
            "HEALTHY"
        },
        outlier_check: if ejected { "FAILED" } else { "OK" },
        ejected,
        locality: read_str(&e.locality).to_owned(),
        priority: e.priority,
        weight: e.weight,
        cluster,
        ejections: e.ejections,
        multiplier: e.multiplier,
        consecutive_5xx: e.consecutive_5xx,
        ejected_for_secs,
        last_error: read_str(&e.last_error).to_owned(),
        kernel_slots: 0,
        dns_failures: e.dns_failures,
        dns_answer_secs_ago: (e.dns_answer_unix_ms != 0).then(|| {
            let at = UNIX_EPOCH + Duration::from_millis(e.dns_answer_unix_ms);
            now.duration_since(at).unwrap_or_default().as_secs()
        }),
    }
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

pub(crate) fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redirector pid {} ({}), proxy {} ({}), kernel datapath {}, redirect {}\n",
        r.daemon_pid,
        if r.daemon_running {
            "running"
        } else {
            "NOT RUNNING"
        },
        r.proxy,
        if r.proxy_listening {
            "listening"
        } else {
            "NOT LISTENING: the kernel serves without it, see PATH NOW"
        },
        if r.datapath_attached {
            "attached"
        } else {
            "not attached"
        },
        if r.redirect_enabled { "on" } else { "off" },
    );
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            let slots: Vec<String> = s
                .slots
                .iter()
                .map(|x| format!("{}×{}", x.endpoint, x.slots))
                .collect();
            vec![
                s.host.clone(),
                s.vip.clone(),
                s.port.to_string(),
                s.protocol.into(),
                s.vip_source.into(),
                if s.tls_origination { s.tls_mode } else { "-" }.into(),
                s.datapath.into(),
                s.path_now.into(),
                if slots.is_empty() {
                    "-".into()
                } else {
                    slots.join(" ")
                },
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
            "DATAPATH",
            "PATH NOW",
            "KERNEL SLOTS",
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
                e.weight.to_string(),
                e.cluster.clone(),
                e.address.clone(),
                e.ejections.to_string(),
                e.multiplier.to_string(),
                e.ejected_for_secs
                    .map_or_else(|| "-".into(), |s| format!("{s}s")),
                e.kernel_slots.to_string(),
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
            "WEIGHT",
            "CLUSTER",
            "ADDRESS",
            "EJECTIONS",
            "MULTIPLIER",
            "EJECTED FOR",
            "SLOTS",
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
            weight: 3,
            dns_failures: 2,
            _pad: 0,
            dns_answer_unix_ms: 0,
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
        assert!(row.ejected);
        assert_eq!(row.weight, 3);
        assert_eq!((row.dns_failures, row.dns_answer_secs_ago), (2, None));
        let report = Report {
            daemon_pid: 1,
            daemon_running: true,
            redirect_enabled: true,
            datapath_attached: true,
            proxy: "127.0.0.1:15001".into(),
            proxy_listening: true,
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

    #[test]
    fn the_path_now_follows_connect4s_rules() {
        let tls = SVC_TLS_ORIGINATION;
        let kernel = SVC_INFO_KERNEL_PATH;
        assert_eq!(path_now(false, 0, true, true), "not redirected");
        assert_eq!(path_now(true, kernel, true, true), "kernel");
        assert_eq!(path_now(true, kernel, false, true), "kernel");
        // No slots yet: the kernel path falls back to the proxy.
        assert_eq!(path_now(true, kernel, true, false), "proxy");
        assert_eq!(path_now(true, 0, true, true), "proxy");
        assert_eq!(path_now(true, 0, false, true), "kernel (fail-open)");
        assert_eq!(path_now(true, tls, false, true), "rejected");
        assert_eq!(path_now(true, 0, false, false), "rejected");
    }

    #[test]
    fn slot_tables_read_as_shares() {
        let mut t = SlotTable {
            vip_be: 0,
            port_be: 0,
            _pad: 0,
            count: 3,
            connect_timeout_ms: 0,
            slots: [redirector_common::Slot::default(); redirector_common::MAX_SLOTS],
        };
        let a = redirector_common::Slot {
            ip_be: u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be(),
            port_be: 80u16.to_be(),
            _pad: 0,
        };
        let b = redirector_common::Slot {
            ip_be: u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
            ..a
        };
        t.slots[0] = a;
        t.slots[1] = b;
        t.slots[2] = a;
        // Past `count`: not part of the table.
        t.slots[3] = b;
        assert_eq!(
            shares(&t),
            [
                SlotShare {
                    endpoint: "10.0.0.1:80".into(),
                    slots: 2
                },
                SlotShare {
                    endpoint: "10.0.0.2:80".into(),
                    slots: 1
                }
            ]
        );
    }

    #[test]
    fn proc_net_tcp_listeners_are_found() {
        let proxy: SocketAddrV4 = "127.0.0.1:15001".parse().unwrap();
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 15001 = 0x3A99; 127.0.0.1 prints as 0100007F on little-endian.
        let ip = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        let listen = format!(
            "{header}   0: {ip}:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
        );
        assert!(listening(&listen, proxy));
        let established = listen.replace(" 0A ", " 01 ");
        assert!(!listening(&established, proxy));
        let other_port = listen.replace(":3A99", ":3A9A");
        assert!(!listening(&other_port, proxy));
        let wildcard = listen.replace(&ip, "00000000");
        assert!(listening(&wildcard, proxy));
        assert!(!listening(header, proxy));
    }
}
