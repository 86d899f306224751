//! A DestinationRule's `trafficPolicy`: outlier detection, connection
//! pool, load balancing and TLS origination, with Istio's and Envoy's
//! defaults, and `portLevelSettings`.
//!
//! Only what redirector implements with Istio's meaning is accepted, and
//! settings Istio would silently ignore (failover without outlier
//! detection, anything under `enabled: false`, `failoverPriority` next to
//! `distribute`) are errors rather than no-ops.
//!
//! A port's entry in `portLevelSettings` replaces the whole policy for that
//! port, as Istio's `GetPortLevelTrafficPolicy` does: the sub-policies it
//! names are used, and the ones it leaves out fall back to their defaults,
//! not to the rule's top-level ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::checks::{
    U32_MAX, label_key_problem, label_value_problem, metadata_name, number, port_number,
    positive_duration,
};
use super::ctx::{Ctx, Doc, Pos, pos};
use super::raw;
use super::{
    ConnectionPoolPolicy, Distribute, Failover, LbAlgorithm, LocalityLbPolicy, OutlierPolicy,
    TcpKeepalive, TrafficPolicy,
};
use crate::locality::{LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE};

/// Linux's limits for `TCP_KEEPCNT` and `TCP_KEEPIDLE`/`TCP_KEEPINTVL`.
const MAX_KEEPALIVE_PROBES: i64 = 127;
const MAX_KEEPALIVE_SECS: u64 = 32767;

/// A rule's policy, and where its TLS mode is written (for checks against
/// the ServiceEntry's ports).
pub struct Checked<'a> {
    pub policy: TrafficPolicy,
    pub tls_mode: Option<&'a Spanned<String>>,
    /// Where `loadBalancer.simple` is written (PASSTHROUGH is checked
    /// against the ServiceEntry).
    pub simple: Option<&'a Spanned<String>>,
    /// `portLevelSettings`, each replacing `policy` on its port.
    pub ports: Vec<PortPolicy<'a>>,
}

/// The policy of one `portLevelSettings` entry.
pub struct PortPolicy<'a> {
    pub number: u16,
    /// Where the port number is written, and its field path.
    pub at: Pos,
    pub field: String,
    pub policy: TrafficPolicy,
    pub tls_mode: Option<&'a Spanned<String>>,
    /// `spec.trafficPolicy.portLevelSettings[i].tls.mode`.
    pub tls_mode_field: String,
    pub simple: Option<&'a Spanned<String>>,
}

/// Validates one DestinationRule; `None` if anything in it is wrong.
pub fn validate<'a>(
    ctx: &mut Ctx,
    doc: &Doc,
    dr: &'a raw::Document<raw::DestinationRuleSpec>,
) -> Option<Checked<'a>> {
    let before = ctx.problems.len();
    metadata_name(ctx, doc, dr);
    let spec = &dr.spec.value;
    for (key, v) in [
        ("subsets", &spec.subsets),
        ("exportTo", &spec.export_to),
        ("workloadSelector", &spec.workload_selector),
    ] {
        ctx.unsupported(doc, "spec", key, v);
    }
    let mut checked = Checked {
        policy: TrafficPolicy::default(),
        tls_mode: None,
        simple: None,
        ports: Vec::new(),
    };
    if let Some(tp) = &spec.traffic_policy {
        let parent = "spec.trafficPolicy";
        for (key, v) in [
            ("tunnel", &tp.tunnel),
            ("proxyProtocol", &tp.proxy_protocol),
        ] {
            ctx.unsupported(doc, parent, key, v);
        }
        (checked.policy, checked.tls_mode, checked.simple) = sub_policies(
            ctx,
            doc,
            parent,
            SubPolicies {
                load_balancer: tp.load_balancer.as_ref(),
                outlier_detection: tp.outlier_detection.as_ref(),
                connection_pool: tp.connection_pool.as_ref(),
                tls: tp.tls.as_ref(),
            },
        );
        for (i, p) in tp.port_level_settings.iter().flatten().enumerate() {
            let field = format!("{parent}.portLevelSettings[{i}]");
            if let Some(port) = port_policy(ctx, doc, &field, p, &checked.ports) {
                checked.ports.push(port);
            }
        }
    }
    (ctx.problems.len() == before).then_some(checked)
}

/// The four sub-policies a top-level or port-level policy may hold.
struct SubPolicies<'a> {
    load_balancer: Option<&'a raw::LoadBalancer>,
    outlier_detection: Option<&'a Spanned<raw::OutlierDetection>>,
    connection_pool: Option<&'a Spanned<raw::ConnectionPool>>,
    tls: Option<&'a Spanned<raw::ClientTls>>,
}

/// A policy from its sub-policies, each missing one at its default.
fn sub_policies<'a>(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    subs: SubPolicies<'a>,
) -> (
    TrafficPolicy,
    Option<&'a Spanned<String>>,
    Option<&'a Spanned<String>>,
) {
    let mut policy = TrafficPolicy::default();
    let mut tls_mode = None;
    let mut simple = None;
    if let Some(od) = subs.outlier_detection {
        policy.outlier = outlier(ctx, doc, parent, od);
    }
    if let Some(cp) = subs.connection_pool
        && let Some(pool) = connection_pool(ctx, doc, parent, cp)
    {
        policy.connection_pool = pool;
    }
    if let Some(lb) = subs.load_balancer {
        let has_outlier = subs.outlier_detection.is_some();
        (policy.load_balancer, policy.locality_lb) =
            load_balancer(ctx, doc, parent, lb, has_outlier);
        simple = lb.simple.as_ref();
    }
    if let Some(t) = subs.tls {
        policy.tls = super::client_tls::validate(ctx, doc, parent, &t.value);
        tls_mode = t.value.mode.as_ref();
    }
    (policy, tls_mode, simple)
}

fn port_policy<'a>(
    ctx: &mut Ctx,
    doc: &Doc,
    field: &str,
    p: &'a Spanned<raw::PortTrafficPolicy>,
    earlier: &[PortPolicy],
) -> Option<PortPolicy<'a>> {
    let v = &p.value;
    let number = match v.port.as_ref().map(|s| (s, &s.value.number)) {
        None => {
            ctx.value(
                doc,
                p,
                format!("{field}.port"),
                "required: the port this entry applies to, like `port: {number: 80}`",
            );
            None
        }
        Some((selector, None)) => {
            ctx.value(
                doc,
                selector,
                format!("{field}.port.number"),
                "required: a port number of the ServiceEntry",
            );
            None
        }
        Some((_, Some(n))) => {
            port_number(ctx, doc, n, &format!("{field}.port.number")).map(|number| (number, n))
        }
    };
    if v.load_balancer.is_none()
        && v.connection_pool.is_none()
        && v.outlier_detection.is_none()
        && v.tls.is_none()
    {
        ctx.value(
            doc,
            p,
            field,
            "a port's settings need at least one of loadBalancer, connectionPool, \
             outlierDetection, tls",
        );
    }
    let (policy, tls_mode, simple) = sub_policies(
        ctx,
        doc,
        field,
        SubPolicies {
            load_balancer: v.load_balancer.as_ref(),
            outlier_detection: v.outlier_detection.as_ref(),
            connection_pool: v.connection_pool.as_ref(),
            tls: v.tls.as_ref(),
        },
    );
    let (number, n) = number?;
    let number_field = format!("{field}.port.number");
    if let Some(first) = earlier.iter().find(|e| e.number == number) {
        ctx.value(
            doc,
            n,
            &number_field,
            format!(
                "port {number} already has settings at {}; Istio would use only the first",
                first.field.trim_end_matches(".port.number")
            ),
        );
        return None;
    }
    Some(PortPolicy {
        number,
        at: pos(n.referenced),
        field: number_field,
        policy,
        tls_mode,
        tls_mode_field: format!("{field}.tls.mode"),
        simple,
    })
}

fn outlier(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    od: &Spanned<raw::OutlierDetection>,
) -> Option<OutlierPolicy> {
    let parent = format!("{parent}.outlierDetection");
    let od = &od.value;
    let before = ctx.problems.len();
    let mut out = OutlierPolicy::default();
    let field = |key: &str| format!("{parent}.{key}");
    // Deprecated: Istio mapped it to gateway errors only (istio/api#617),
    // turning consecutive 5xx off unless consecutive5xxErrors is written too.
    if let Some(v) = &od.consecutive_errors
        && let Some(n) = number(
            ctx,
            doc,
            v,
            &field("consecutiveErrors"),
            0..=U32_MAX,
            "0 (unset) or more",
        )
        && n > 0
    {
        out.consecutive_gateway = Some(n);
        out.consecutive_5xx = 0;
    }
    if let Some(v) = &od.consecutive_5xx_errors
        && let Some(n) = number(
            ctx,
            doc,
            v,
            &field("consecutive5xxErrors"),
            0..=U32_MAX,
            &format!("0 (off) to {}", u32::MAX),
        )
    {
        out.consecutive_5xx = n;
    }
    if let Some(v) = &od.consecutive_gateway_errors
        && let Some(n) = number(
            ctx,
            doc,
            v,
            &field("consecutiveGatewayErrors"),
            0..=U32_MAX,
            &format!("0 (off) to {}", u32::MAX),
        )
    {
        out.consecutive_gateway = (n > 0).then_some(n);
    }
    out.split_external_local_origin_errors = od
        .split_external_local_origin_errors
        .as_ref()
        .is_some_and(|v| v.value);
    if let Some(v) = &od.consecutive_local_origin_failures {
        if !out.split_external_local_origin_errors {
            ctx.key(
                doc,
                &parent,
                "consecutiveLocalOriginFailures",
                v,
                "only used with splitExternalLocalOriginErrors: true (without it, local failures \
                 count as 5xx); set it or remove this field",
            );
        } else if let Some(n) = number(
            ctx,
            doc,
            v,
            &field("consecutiveLocalOriginFailures"),
            1..=U32_MAX,
            "1 or more (Istio ignores 0 and Envoy then uses 5)",
        ) {
            out.consecutive_local_origin = n;
        }
    }
    if let Some(d) = positive_duration(ctx, doc, &od.interval, &field("interval"), out.interval) {
        out.interval = d;
    }
    if let Some(d) = positive_duration(
        ctx,
        doc,
        &od.base_ejection_time,
        &field("baseEjectionTime"),
        out.base_ejection_time,
    ) {
        out.base_ejection_time = d;
    }
    if let Some(v) = &od.max_ejection_percent
        && let Some(p) = number(
            ctx,
            doc,
            v,
            &field("maxEjectionPercent"),
            0..=100,
            "a percentage, 0 to 100",
        )
    {
        // Istio cannot tell 0 from unset and leaves Envoy's default.
        out.max_ejection_percent = (p > 0).then_some(p);
    }
    if let Some(v) = &od.min_health_percent
        && let Some(p) = number(
            ctx,
            doc,
            v,
            &field("minHealthPercent"),
            0..=100,
            "a percentage, 0 (panic mode off) to 100",
        )
    {
        out.min_health_percent = p;
    }
    (ctx.problems.len() == before).then_some(out)
}

fn connection_pool(
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

/// `loadBalancer` under `parent` (a `trafficPolicy` path): the algorithm
/// and the locality settings. `has_outlier` says whether the same policy
/// has `outlierDetection`, which failover needs.
pub fn load_balancer(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    lb: &raw::LoadBalancer,
    has_outlier: bool,
) -> (LbAlgorithm, LocalityLbPolicy) {
    let parent = format!("{parent}.loadBalancer");
    for (key, v) in [
        ("consistentHash", &lb.consistent_hash),
        ("warmupDurationSecs", &lb.warmup_duration_secs),
        ("warmup", &lb.warmup),
    ] {
        ctx.unsupported(doc, &parent, key, v);
    }
    let algorithm = match &lb.simple {
        None => LbAlgorithm::default(),
        Some(simple) => match simple.value.as_str() {
            "ROUND_ROBIN" => LbAlgorithm::RoundRobin,
            // LEAST_CONN is Istio's deprecated name for LEAST_REQUEST;
            // UNSPECIFIED is its default.
            "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => LbAlgorithm::LeastRequest,
            "RANDOM" => LbAlgorithm::Random,
            // Checked against the ServiceEntry's address in `validate`.
            "PASSTHROUGH" => LbAlgorithm::Passthrough,
            other => {
                ctx.value(
                    doc,
                    simple,
                    format!("{parent}.simple"),
                    format!(
                        "unknown load balancer {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"
                    ),
                );
                LbAlgorithm::default()
            }
        },
    };
    let mut out = TrafficPolicy::default().locality_lb;
    if let Some(setting) = &lb.locality_lb_setting {
        locality_lb(
            ctx,
            doc,
            &format!("{parent}.localityLbSetting"),
            setting,
            has_outlier,
            &mut out,
        );
    }
    (algorithm, out)
}

fn locality_lb(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    setting: &raw::LocalityLbSetting,
    has_outlier: bool,
    out: &mut LocalityLbPolicy,
) {
    if let Some(enabled) = &setting.enabled {
        out.enabled = enabled.value;
    }
    let failover = setting.failover.as_ref().filter(|f| !f.value.is_empty());
    let priority = setting
        .failover_priority
        .as_ref()
        .filter(|f| !f.value.is_empty());
    let distribute = setting.distribute.as_ref().filter(|d| !d.value.is_empty());
    if !out.enabled {
        // Istio drops the whole setting: anything else written would do
        // nothing.
        let unused = "has no effect with enabled: false (Istio then ignores the whole localityLbSetting); remove it";
        if let Some(v) = failover {
            ctx.key(doc, parent, "failover", v, unused);
        }
        if let Some(v) = priority {
            ctx.key(doc, parent, "failoverPriority", v, unused);
        }
        if let Some(v) = distribute {
            ctx.key(doc, parent, "distribute", v, unused);
        }
        return;
    }
    if let (Some(d), Some(_)) = (distribute, failover) {
        ctx.key(
            doc,
            parent,
            "distribute",
            d,
            "distribute and failover cannot both be set (Istio: \"can not simultaneously specify 'distribute' and 'failover'\")",
        );
    }
    if let (Some(p), Some(_)) = (priority, distribute) {
        ctx.key(
            doc,
            parent,
            "failoverPriority",
            p,
            "failoverPriority has no effect with distribute (Istio applies distribute and ignores failover priorities); remove one of them",
        );
    }
    if !has_outlier {
        let needs = "failover needs outlierDetection: without it Istio never moves traffic between priorities and ignores this (it only warns); add outlierDetection";
        if let Some(v) = failover {
            ctx.key(doc, parent, "failover", v, needs);
        }
        if let Some(v) = priority {
            ctx.key(doc, parent, "failoverPriority", v, needs);
        }
    }
    for (i, f) in failover
        .map(|f| f.value.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("{parent}.failover[{i}]");
        let from = region(ctx, doc, &f.value.from, f, &format!("{field}.from"));
        let to = region(ctx, doc, &f.value.to, f, &format!("{field}.to"));
        let (Some(from), Some((to, to_at))) = (from, to) else {
            continue;
        };
        if from.0 == to {
            ctx.value(
                doc,
                to_at,
                format!("{field}.to"),
                format!("failover from {to} to itself"),
            );
            continue;
        }
        let from = from.0;
        out.failover.push(Failover { from, to });
    }
    if let Some(p) = priority {
        out.failover_priority = failover_priority(ctx, doc, parent, p, failover.is_some());
    }
    if let Some(d) = distribute {
        out.distribute = distribute_rules(ctx, doc, parent, d);
    }
}

/// A failover `from`/`to`: a region name, as Istio requires.
fn region<'a, T>(
    ctx: &mut Ctx,
    doc: &Doc,
    v: &'a Option<Spanned<String>>,
    parent: &Spanned<T>,
    field: &str,
) -> Option<(String, &'a Spanned<String>)> {
    let Some(v) = v else {
        ctx.value(doc, parent, field, "required: a region name");
        return None;
    };
    let problem = if v.value.is_empty() || v.value.contains('/') {
        "is not a region: failover takes region names, without `/`"
    } else if v.value.contains('*') {
        "is not a region: failover regions take no `*` wildcard"
    } else {
        return Some((v.value.clone(), v));
    };
    ctx.value(doc, v, field, format!("{:?} {problem}", v.value));
    None
}

/// `failoverPriority`: label names, or `label=value` to give the node's
/// value. The node's only labels are the topology labels of its locality,
/// so any other label needs its value written.
fn failover_priority(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    list: &Spanned<Vec<Spanned<String>>>,
    with_failover: bool,
) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, entry) in list.value.iter().enumerate() {
        let field = format!("{parent}.failoverPriority[{i}]");
        let (key, value) = match entry.value.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (entry.value.as_str(), None),
        };
        let topology = [LABEL_REGION, LABEL_ZONE, LABEL_SUBZONE].contains(&key);
        let problem = if let Some(p) = label_key_problem(key) {
            Some(p)
        } else if let Some(p) = value.and_then(label_value_problem) {
            Some(p)
        } else if !seen.insert(key.to_owned()) {
            Some(format!("label {key} is listed twice"))
        } else if with_failover && topology {
            Some(format!(
                "cannot use the topology label {key} together with failover (Istio: \"can not simultaneously set 'failover' and topology label\"); use failover or the label"
            ))
        } else if value.is_none() && !topology {
            Some(format!(
                "the node has no label {key} (its only labels are {LABEL_REGION}, {LABEL_ZONE} and {LABEL_SUBZONE} from its locality): write {key}=<value> to prefer endpoints with that value"
            ))
        } else {
            None
        };
        match problem {
            Some(p) => ctx.value(doc, entry, field, p),
            None => out.push(entry.value.clone()),
        }
    }
    out
}

/// `distribute`: each `from` locality (with `*`) sends its traffic to the
/// `to` localities by weights that add up to 100, as Istio validates them.
fn distribute_rules(
    ctx: &mut Ctx,
    doc: &Doc,
    parent: &str,
    list: &Spanned<Vec<Spanned<raw::Distribute>>>,
) -> Vec<Distribute> {
    let mut out = Vec::new();
    let mut froms: Vec<String> = Vec::new();
    for (i, entry) in list.value.iter().enumerate() {
        let field = format!("{parent}.distribute[{i}]");
        let from = match &entry.value.from {
            None => {
                ctx.value(doc, entry, format!("{field}.from"), "required: a locality");
                None
            }
            Some(f) => match locality_pattern_problem(&f.value) {
                Some(p) => {
                    ctx.value(doc, f, format!("{field}.from"), p);
                    None
                }
                None => {
                    if let Some(other) = froms.iter().find(|o| patterns_overlap(o, &f.value)) {
                        ctx.value(
                            doc,
                            f,
                            format!("{field}.from"),
                            format!("{:?} overlaps {other:?} of an earlier entry: a node in both would match two rules", f.value),
                        );
                        None
                    } else {
                        froms.push(f.value.clone());
                        Some(f.value.clone())
                    }
                }
            },
        };
        let to = match &entry.value.to {
            None => {
                ctx.value(
                    doc,
                    entry,
                    format!("{field}.to"),
                    "required: localities with weights adding up to 100",
                );
                None
            }
            Some(to) => distribute_to(ctx, doc, &format!("{field}.to"), to),
        };
        if let (Some(from), Some(to)) = (from, to) {
            out.push(Distribute { from, to });
        }
    }
    out
}

fn distribute_to(
    ctx: &mut Ctx,
    doc: &Doc,
    field: &str,
    to: &Spanned<BTreeMap<String, Spanned<i64>>>,
) -> Option<Vec<(String, u32)>> {
    let before = ctx.problems.len();
    let mut out: Vec<(String, u32)> = Vec::new();
    let mut total: i64 = 0;
    for (locality, weight) in &to.value {
        let key_at = || super::yaml::key_position(doc.text, locality, weight.referenced);
        if let Some(p) = locality_pattern_problem(locality) {
            ctx.at(doc, key_at(), format!("{field}[{locality:?}]"), p);
            continue;
        }
        if let Some((other, _)) = out.iter().find(|(o, _)| patterns_overlap(o, locality)) {
            ctx.at(
                doc,
                key_at(),
                format!("{field}[{locality:?}]"),
                format!("{locality:?} overlaps {other:?}: an endpoint locality would match both"),
            );
            continue;
        }
        match u32::try_from(weight.value) {
            Ok(w @ 1..=100) => {
                total += weight.value;
                out.push((locality.clone(), w));
            }
            _ => ctx.value(
                doc,
                weight,
                format!("{field}[{locality:?}]"),
                format!("locality weight {} is out of range 1-100", weight.value),
            ),
        }
    }
    if out.is_empty() && ctx.problems.len() == before {
        ctx.value(doc, to, field, "to must list at least one locality");
    } else if ctx.problems.len() == before && total != 100 {
        ctx.value(
            doc,
            to,
            field,
            format!("the weights add up to {total}; they must add up to 100"),
        );
    }
    (ctx.problems.len() == before).then_some(out)
}

/// Why `p` is not a `distribute` locality: `region[/zone[/subzone]]`
/// without empty parts, with `*` only as the whole last part (Istio
/// accepts `us-*` but never matches it).
fn locality_pattern_problem(p: &str) -> Option<String> {
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() > 3 {
        Some(format!(
            "locality {p:?} has more than three `/`-separated parts (region/zone/subzone)"
        ))
    } else if parts.iter().any(|part| part.is_empty()) {
        Some(format!(
            "locality {p:?} must not contain an empty region, zone or subzone"
        ))
    } else if parts
        .iter()
        .enumerate()
        .any(|(i, part)| part.contains('*') && (*part != "*" || i + 1 != parts.len()))
    {
        Some(format!(
            "locality {p:?}: `*` can only be the whole last part, as in `us-east1/*` or `*`"
        ))
    } else {
        None
    }
}

/// Whether some locality matches both patterns (missing parts and `*`
/// match anything).
fn patterns_overlap(a: &str, b: &str) -> bool {
    let part = |p: &str, i: usize| p.split('/').nth(i).unwrap_or("*").to_owned();
    (0..3).all(|i| {
        let (x, y) = (part(a, i), part(b, i));
        x == "*" || y == "*" || x == y
    })
}
