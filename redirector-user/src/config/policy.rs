//! A DestinationRule's `trafficPolicy`: outlier detection, locality load
//! balancing and TLS origination, with Istio's and Envoy's defaults.
//!
//! Only what redirector implements with Istio's meaning is accepted. The
//! load-balancing algorithm in particular is round robin only for now, so
//! `simple` accepts just ROUND_ROBIN: silently using round robin for
//! LEAST_REQUEST would look right and behave differently under load.

use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw;
use super::service_entry::metadata_name;
use super::validate::{Ctx, Doc};
use super::{Failover, LocalityLbPolicy, OutlierPolicy, TlsPolicy, TrafficPolicy, duration};

/// Envoy's defaults, which Istio leaves in place.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);

/// A rule's policy, and where its TLS mode is written (for checks against
/// the ServiceEntry's ports).
pub struct Checked<'a> {
    pub policy: TrafficPolicy,
    pub tls_mode: Option<&'a Spanned<String>>,
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
            policy.locality_lb = load_balancer(ctx, doc, lb);
        }
        if let Some(t) = &tp.tls {
            policy.tls = tls(ctx, doc, &t.value);
            tls_mode = t.value.mode.as_ref();
        }
    }
    (ctx.problems.len() == before).then_some(Checked { policy, tls_mode })
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

fn load_balancer(ctx: &mut Ctx, doc: &Doc, lb: &raw::LoadBalancer) -> LocalityLbPolicy {
    let parent = "spec.trafficPolicy.loadBalancer";
    for (key, v) in [
        ("consistentHash", &lb.consistent_hash),
        ("warmupDurationSecs", &lb.warmup_duration_secs),
        ("warmup", &lb.warmup),
    ] {
        ctx.unsupported(doc, parent, key, v);
    }
    if let Some(simple) = &lb.simple {
        let field = format!("{parent}.simple");
        match simple.value.as_str() {
            "ROUND_ROBIN" => {}
            "LEAST_REQUEST" | "LEAST_CONN" | "RANDOM" | "PASSTHROUGH" | "UNSPECIFIED" => ctx.value(
                doc,
                simple,
                field,
                format!(
                    "not implemented yet: load balancer {}; redirector balances ROUND_ROBIN only for now",
                    simple.value
                ),
            ),
            other => ctx.value(
                doc,
                simple,
                field,
                format!("unknown load balancer {other:?}; expected ROUND_ROBIN"),
            ),
        }
    }
    let mut out = TrafficPolicy::default().locality_lb;
    let Some(setting) = &lb.locality_lb_setting else {
        return out;
    };
    let parent = format!("{parent}.localityLbSetting");
    ctx.unsupported(doc, &parent, "failoverPriority", &setting.failover_priority);
    ctx.unsupported(doc, &parent, "distribute", &setting.distribute);
    if let Some(enabled) = &setting.enabled {
        out.enabled = enabled.value;
    }
    for (i, f) in setting.failover.iter().flatten().enumerate() {
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
    out
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
    if v.value.is_empty() || v.value.contains('/') {
        ctx.value(
            doc,
            v,
            field,
            format!(
                "{:?} is not a region: failover takes region names, without `/`",
                v.value
            ),
        );
        return None;
    }
    Some((v.value.clone(), v))
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
