//! A DestinationRule's `trafficPolicy`: outlier detection, load balancing
//! and TLS origination, with Istio's and Envoy's defaults.
//!
//! Only what redirector implements with Istio's meaning is accepted, and
//! settings Istio would silently ignore (failover without outlier
//! detection, anything under `enabled: false`, `failoverPriority` next to
//! `distribute`) are errors rather than no-ops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw;
use super::service_entry::{label_key_problem, label_value_problem, metadata_name};
use super::validate::{Ctx, Doc};
use super::{
    Distribute, Failover, LbAlgorithm, LocalityLbPolicy, OutlierPolicy, TlsPolicy, TrafficPolicy,
    duration,
};
use crate::locality::{LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE};

/// Envoy's defaults, which Istio leaves in place.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);

/// A rule's policy, and where its TLS mode is written (for checks against
/// the ServiceEntry's ports).
pub struct Checked<'a> {
    pub policy: TrafficPolicy,
    pub tls_mode: Option<&'a Spanned<String>>,
    /// Where `loadBalancer.simple` is written (PASSTHROUGH is checked
    /// against the ServiceEntry).
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
    let mut policy = TrafficPolicy::default();
    let mut tls_mode = None;
    let mut simple = None;
    if let Some(tp) = &spec.traffic_policy {
        let parent = "spec.trafficPolicy";
        for (key, v) in [
            ("connectionPool", &tp.connection_pool),
            ("portLevelSettings", &tp.port_level_settings),
            ("tunnel", &tp.tunnel),
            ("proxyProtocol", &tp.proxy_protocol),
        ] {
            ctx.unsupported(doc, parent, key, v);
        }
        if let Some(od) = &tp.outlier_detection {
            policy.outlier = outlier(ctx, doc, &od.value);
        }
        if let Some(lb) = &tp.load_balancer {
            let has_outlier = tp.outlier_detection.is_some();
            (policy.load_balancer, policy.locality_lb) =
                load_balancer(ctx, doc, parent, lb, has_outlier);
            simple = lb.simple.as_ref();
        }
        if let Some(t) = &tp.tls {
            policy.tls = tls(ctx, doc, &t.value);
            tls_mode = t.value.mode.as_ref();
        }
    }
    (ctx.problems.len() == before).then_some(Checked {
        policy,
        tls_mode,
        simple,
    })
}

fn outlier(ctx: &mut Ctx, doc: &Doc, od: &raw::OutlierDetection) -> Option<OutlierPolicy> {
    let parent = "spec.trafficPolicy.outlierDetection";
    for (key, v) in [
        ("consecutiveErrors", &od.consecutive_errors),
        ("consecutiveGatewayErrors", &od.consecutive_gateway_errors),
        (
            "consecutiveLocalOriginFailures",
            &od.consecutive_local_origin_failures,
        ),
        (
            "splitExternalLocalOriginErrors",
            &od.split_external_local_origin_errors,
        ),
        ("maxEjectionPercent", &od.max_ejection_percent),
        ("minHealthPercent", &od.min_health_percent),
    ] {
        ctx.unsupported(doc, parent, key, v);
    }
    let consecutive_5xx = match &od.consecutive_5xx_errors {
        None => Some(DEFAULT_CONSECUTIVE_5XX),
        Some(n) => u32::try_from(n.value).ok().or_else(|| {
            ctx.value(
                doc,
                n,
                format!("{parent}.consecutive5xxErrors"),
                format!(
                    "{} is out of range: expected 0 (off) to {}",
                    n.value,
                    u32::MAX
                ),
            );
            None
        }),
    };
    let interval = positive_duration(
        ctx,
        doc,
        &od.interval,
        &format!("{parent}.interval"),
        DEFAULT_INTERVAL,
    );
    let base = positive_duration(
        ctx,
        doc,
        &od.base_ejection_time,
        &format!("{parent}.baseEjectionTime"),
        DEFAULT_BASE_EJECTION_TIME,
    );
    Some(OutlierPolicy {
        consecutive_5xx: consecutive_5xx?,
        interval: interval?,
        base_ejection_time: base?,
        ..OutlierPolicy::default()
    })
}

fn positive_duration(
    ctx: &mut Ctx,
    doc: &Doc,
    v: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Option<Duration> {
    let Some(v) = v else { return Some(default) };
    match duration::parse(&v.value) {
        Ok(d) if !d.negative && !d.magnitude.is_zero() => Some(d.magnitude),
        Ok(_) => {
            ctx.value(
                doc,
                v,
                field,
                format!("duration {:?} must be greater than zero", v.value),
            );
            None
        }
        Err(e) => {
            ctx.value(doc, v, field, e);
            None
        }
    }
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

fn tls(ctx: &mut Ctx, doc: &Doc, t: &raw::ClientTls) -> TlsPolicy {
    let parent = "spec.trafficPolicy.tls";
    for (key, v) in [
        ("clientCertificate", &t.client_certificate),
        ("privateKey", &t.private_key),
        ("subjectAltNames", &t.subject_alt_names),
        ("insecureSkipVerify", &t.insecure_skip_verify),
        ("credentialName", &t.credential_name),
        ("caCrl", &t.ca_crl),
    ] {
        ctx.unsupported(doc, parent, key, v);
    }
    let mode_field = format!("{parent}.mode");
    let simple = match &t.mode {
        None => false,
        Some(m) => match m.value.as_str() {
            "DISABLE" => false,
            "SIMPLE" => true,
            "MUTUAL" => {
                ctx.value(
                    doc,
                    m,
                    mode_field,
                    "not implemented yet: tls mode MUTUAL; use SIMPLE",
                );
                false
            }
            "ISTIO_MUTUAL" => {
                ctx.value(
                    doc,
                    m,
                    mode_field,
                    "tls mode ISTIO_MUTUAL is not supported: there is no mesh identity outside a mesh; use SIMPLE",
                );
                false
            }
            other => {
                ctx.value(
                    doc,
                    m,
                    mode_field,
                    format!("unknown tls mode {other:?}; expected DISABLE or SIMPLE"),
                );
                false
            }
        },
    };
    if let Some(sni) = &t.sni {
        if sni.value.parse::<std::net::IpAddr>().is_ok() {
            ctx.value(
                doc,
                sni,
                format!("{parent}.sni"),
                "sni must be a host name, never an IP address",
            );
        } else if let Some(p) = super::service_entry::dns_name_problem(&sni.value) {
            ctx.value(doc, sni, format!("{parent}.sni"), p);
        }
    }
    if let Some(ca) = &t.ca_certificates
        && ca.value.is_empty()
    {
        ctx.value(
            doc,
            ca,
            format!("{parent}.caCertificates"),
            "caCertificates must be a file path",
        );
    }
    if !simple {
        // Without origination these would silently do nothing.
        if t.mode.as_ref().is_none_or(|m| m.value == "DISABLE") {
            let unused = "only used with tls mode SIMPLE; set mode: SIMPLE or remove it";
            if let Some(v) = &t.sni {
                ctx.key(doc, parent, "sni", v, unused);
            }
            if let Some(v) = &t.ca_certificates {
                ctx.key(doc, parent, "caCertificates", v, unused);
            }
        }
        return TlsPolicy::Disable;
    }
    TlsPolicy::Simple {
        sni: t.sni.as_ref().map(|s| s.value.clone()),
        ca_certificates: t.ca_certificates.as_ref().map(|c| PathBuf::from(&c.value)),
    }
}
