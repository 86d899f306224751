//! `connectionPool`: connection and request limits, timeouts and TCP
//! keepalive, with Envoy's defaults. Istio cannot tell 0 from unset for most
//! limits, so 0 keeps the default.

use std::time::Duration;

use serde_saphyr::Spanned;

use crate::config::checks::{U32_MAX, number, positive_duration};
use crate::config::ctx::{Ctx, Doc};
use crate::config::model::{ConnectionPoolPolicy, TcpKeepalive};
use crate::config::raw;

/// Linux's limits for `TCP_KEEPCNT` and `TCP_KEEPIDLE`/`TCP_KEEPINTVL`.
const MAX_KEEPALIVE_PROBES: i64 = 127;
const MAX_KEEPALIVE_SECS: u64 = 32767;

pub(super) fn connection_pool(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    cp: &Spanned<raw::ConnectionPool>,
) -> Option<ConnectionPoolPolicy> {
    let parent = format!("{parent}.connectionPool");
    let before = ctx.problems.len();
    let mut out = ConnectionPoolPolicy::default();
    if cp.value.tcp.is_none() && cp.value.http.is_none() {
        ctx.value(
            doc,
            cp,
            &parent,
            "a connection pool needs at least one of tcp, http",
        );
    }
    // Istio cannot tell 0 from unset for these limits: 0 keeps the default.
    let limit = |ctx: &mut Ctx, v: &Spanned<i64>, field: String, default: u32| {
        number(
            ctx,
            doc,
            v,
            &field,
            0..=U32_MAX,
            &format!("0 (unset) to {}", u32::MAX),
        )
        .map(|n| if n == 0 { default } else { n })
    };
    if let Some(tcp) = &cp.value.tcp {
        let parent = format!("{parent}.tcp");
        let tcp = &tcp.value;
        for (key, v) in [
            ("maxConnectionDuration", &tcp.max_connection_duration),
            ("idleTimeout", &tcp.idle_timeout),
        ] {
            ctx.unsupported(doc, &parent, key, v);
        }
        if let Some(v) = &tcp.max_connections
            && let Some(n) = limit(
                ctx,
                v,
                format!("{parent}.maxConnections"),
                out.max_connections,
            )
        {
            out.max_connections = n;
        }
        if let Some(d) = positive_duration(
            ctx,
            doc,
            &tcp.connect_timeout,
            &format!("{parent}.connectTimeout"),
            out.connect_timeout,
        ) {
            out.connect_timeout = d;
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            out.tcp_keepalive = Some(keepalive(
                ctx,
                doc,
                &format!("{parent}.tcpKeepalive"),
                &ka.value,
            ));
        }
    }
    if let Some(http) = &cp.value.http {
        let parent = format!("{parent}.http");
        let http = &http.value;
        for (key, v) in [
            ("http2MaxRequests", &http.http2_max_requests),
            ("maxConcurrentStreams", &http.max_concurrent_streams),
        ] {
            ctx.unsupported(doc, &parent, key, v);
        }
        if let Some(v) = &http.http1_max_pending_requests
            && let Some(n) = limit(
                ctx,
                v,
                format!("{parent}.http1MaxPendingRequests"),
                out.http1_max_pending_requests,
            )
        {
            out.http1_max_pending_requests = n;
        }
        if let Some(v) = &http.max_requests_per_connection
            && let Some(n) = number(
                ctx,
                doc,
                v,
                &format!("{parent}.maxRequestsPerConnection"),
                0..=U32_MAX,
                &format!("0 (unlimited) to {}", u32::MAX),
            )
        {
            out.max_requests_per_connection = n;
        }
        if let Some(v) = &http.max_retries
            && let Some(n) = limit(ctx, v, format!("{parent}.maxRetries"), out.max_retries)
        {
            out.max_retries = n;
        }
        if let Some(d) = positive_duration(
            ctx,
            doc,
            &http.idle_timeout,
            &format!("{parent}.idleTimeout"),
            out.idle_timeout,
        ) {
            out.idle_timeout = d;
        }
        if let Some(v) = &http.h2_upgrade_policy {
            let field = format!("{parent}.h2UpgradePolicy");
            match v.value.as_str() {
                // Upstream HTTP is HTTP/1.1 here: never upgrading is what
                // both of these ask for.
                "DEFAULT" | "DO_NOT_UPGRADE" => {}
                "UPGRADE" => ctx.value(
                    doc,
                    v,
                    field,
                    "not implemented yet: h2UpgradePolicy UPGRADE; redirector speaks HTTP/1.1 to \
                     endpoints",
                ),
                other => ctx.value(
                    doc,
                    v,
                    field,
                    format!(
                        "unknown h2UpgradePolicy {other:?}; expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"
                    ),
                ),
            }
        }
        // `useClientProtocol` either way means HTTP/1.1 upstream: apps
        // speak HTTP/1.1 to redirector's HTTP ports.
    }
    (ctx.problems.len() == before).then_some(out)
}

fn keepalive(ctx: &mut Ctx, doc: &Doc, parent: &str, ka: &raw::TcpKeepalive) -> TcpKeepalive {
    let mut out = TcpKeepalive::default();
    if let Some(v) = &ka.probes {
        // 0, like unset, keeps the OS default (Istio sets only positive ones).
        out.probes = number(
            ctx,
            doc,
            v,
            &format!("{parent}.probes"),
            0..=MAX_KEEPALIVE_PROBES,
            &format!("0 (OS default) to {MAX_KEEPALIVE_PROBES}, Linux's limit"),
        )
        .filter(|&n| n > 0);
    }
    out.time = keepalive_seconds(ctx, doc, &format!("{parent}.time"), &ka.time);
    out.interval = keepalive_seconds(ctx, doc, &format!("{parent}.interval"), &ka.interval);
    out
}

/// A keepalive duration: whole seconds, as the kernel takes them.
fn keepalive_seconds(
    ctx: &mut Ctx,
    doc: &Doc,
    field: &str,
    v: &Option<Spanned<String>>,
) -> Option<Duration> {
    let raw = v.as_ref()?;
    let d = positive_duration(ctx, doc, v, field, Duration::ZERO)?;
    if d.subsec_nanos() != 0 || d.as_secs() > MAX_KEEPALIVE_SECS {
        ctx.value(
            doc,
            raw,
            field,
            format!(
                "{:?} is not a whole number of seconds from 1s to {MAX_KEEPALIVE_SECS}s: \
                 the kernel counts keepalive in seconds",
                raw.value
            ),
        );
        return None;
    }
    Some(d)
}
