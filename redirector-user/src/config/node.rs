//! The `NodeConfig` document: settings of this node rather than of a service.
//!
//! Istio learns a proxy's locality and listeners from Kubernetes; a
//! node-local file has no such source, so they are written here (or given as
//! flags, which win). One document at most, so there is never a question of
//! which one applies.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::checks::{U32_MAX, number, port_number, positive_duration};
use super::ctx::{Ctx, Doc, pos};
use super::model::{LimitSettings, NodeSettings};
use super::raw;
use crate::topology::Locality;

/// The file's node settings (before flags are applied).
pub(super) fn settings(ctx: &mut Ctx, nodes: &[(Doc, raw::NodeDocument)]) -> NodeSettings {
    let mut out = NodeSettings::default();
    let Some((first_doc, first)) = nodes.first() else {
        return out;
    };
    for (doc, extra) in &nodes[1..] {
        ctx.at(
            doc,
            pos(extra.kind.referenced),
            "kind",
            format!(
                "only one NodeConfig is allowed; the first is {}",
                first_doc.label
            ),
        );
    }
    let doc = first_doc;
    let Some(spec) = &first.spec else {
        return out;
    };
    if let Some(l) = &spec.locality {
        match Locality::parse(&l.value) {
            Ok(l) => out.locality = Some(l),
            Err(e) => ctx.value(doc, l, "spec.locality", e.to_string()),
        }
    }
    out.cgroup = path(ctx, doc, &spec.cgroup, "spec.cgroup");
    out.pin_dir = path(ctx, doc, &spec.pin_dir, "spec.pinDir");
    for (i, ns) in spec.nameservers.iter().flatten().enumerate() {
        match nameserver(&ns.value) {
            Some(addr) => out.nameservers.push(addr),
            None => ctx.value(
                doc,
                ns,
                format!("spec.nameservers[{i}]"),
                format!("{:?} is not IP or IP:PORT (port 53 if omitted)", ns.value),
            ),
        }
    }
    if let Some(p) = &spec.listen_port {
        out.listen_port = port_number(ctx, doc, p, "spec.listenPort");
    }
    if let Some(p) = &spec.dns_port {
        out.dns_port = port_or_off(ctx, doc, p, "spec.dnsPort", "DNS capture");
    }
    if let Some(p) = &spec.admin_port {
        out.admin_port = port_or_off(ctx, doc, p, "spec.adminPort", "the admin server");
    }
    if let Some(r) = &spec.vip_range {
        out.vip_range = vip_range(ctx, doc, r);
    }
    if let Some(r) = &spec.vip_range6 {
        out.vip_range6 = vip_range6(ctx, doc, r);
    }
    if let Some(l) = &spec.limits {
        out.limits = limits(ctx, doc, l);
    }
    out
}

/// `spec.limits`: durations greater than zero (at most a day, so no
/// deadline overflows), counts 1 to 2^32-1.
fn limits(ctx: &mut Ctx, doc: &Doc, l: &raw::NodeLimits) -> LimitSettings {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    let mut duration = |v: &Option<Spanned<String>>, field: &str| {
        let v = v.as_ref()?;
        let d = positive_duration(ctx, doc, &Some(v.clone()), field, Duration::ZERO)?;
        if d > DAY {
            ctx.value(
                doc,
                v,
                field,
                format!("{:?} is longer than a day (24h)", v.value),
            );
            return None;
        }
        Some(d)
    };
    let request_headers_timeout = duration(
        &l.request_headers_timeout,
        "spec.limits.requestHeadersTimeout",
    );
    let stream_idle_timeout = duration(&l.stream_idle_timeout, "spec.limits.streamIdleTimeout");
    let tcp_idle_timeout = duration(&l.tcp_idle_timeout, "spec.limits.tcpIdleTimeout");
    let mut count = |v: &Option<Spanned<i64>>, field: &str| {
        number(ctx, doc, v.as_ref()?, field, 1..=U32_MAX, "1-4294967295")
    };
    LimitSettings {
        request_headers_timeout,
        stream_idle_timeout,
        tcp_idle_timeout,
        max_connections: count(&l.max_connections, "spec.limits.maxConnections"),
        max_connections_per_namespace: count(
            &l.max_connections_per_namespace,
            "spec.limits.maxConnectionsPerNamespace",
        ),
    }
}

/// 1–65535, or 0 to turn `what` off.
fn port_or_off(ctx: &mut Ctx, doc: &Doc, n: &Spanned<i64>, field: &str, what: &str) -> Option<u16> {
    let port = u16::try_from(n.value).ok();
    if port.is_none() {
        ctx.value(
            doc,
            n,
            field,
            format!(
                "port {} is out of range 1-65535 (0 turns {what} off)",
                n.value
            ),
        );
    }
    port
}

fn path(ctx: &mut Ctx, doc: &Doc, v: &Option<Spanned<String>>, field: &str) -> Option<PathBuf> {
    let v = v.as_ref()?;
    if v.value.is_empty() {
        ctx.value(doc, v, field, "must be a path");
        return None;
    }
    Some(PathBuf::from(&v.value))
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP meaning port 53.
fn nameserver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

fn vip_range(ctx: &mut Ctx, doc: &Doc, r: &Spanned<String>) -> Option<ipnet::Ipv4Net> {
    let field = "spec.vipRange";
    match r.value.parse::<ipnet::Ipv4Net>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            ctx.value(
                doc,
                r,
                field,
                format!(
                    "vipRange {net} has host bits set; did you mean {}?",
                    net.trunc()
                ),
            );
            None
        }
        Err(_) if r.value.parse::<ipnet::Ipv6Net>().is_ok() => {
            ctx.value(
                doc,
                r,
                field,
                "an IPv6 range belongs in vipRange6; vipRange is the IPv4 one",
            );
            None
        }
        Err(_) => {
            ctx.value(
                doc,
                r,
                field,
                format!("{:?} is not an IPv4 CIDR such as 240.240.0.0/16", r.value),
            );
            None
        }
    }
}

fn vip_range6(ctx: &mut Ctx, doc: &Doc, r: &Spanned<String>) -> Option<ipnet::Ipv6Net> {
    let field = "spec.vipRange6";
    match r.value.parse::<ipnet::Ipv6Net>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            ctx.value(
                doc,
                r,
                field,
                format!(
                    "vipRange6 {net} has host bits set; did you mean {}?",
                    net.trunc()
                ),
            );
            None
        }
        Err(_) => {
            ctx.value(
                doc,
                r,
                field,
                format!("{:?} is not an IPv6 CIDR such as 2001:2::/48", r.value),
            );
            None
        }
    }
}
