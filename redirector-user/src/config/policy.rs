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
//!
//! Each sub-policy is checked in its own module (`outlier`,
//! `connection_pool`, `load_balancer` with `locality_lb`, `tls`); this one
//! assembles them, for the rule and for each port.

mod connection_pool;
mod load_balancer;
mod locality_lb;
mod outlier;
mod tls;

use serde_saphyr::Spanned;

use super::checks::{metadata_name, port_number};
use super::ctx::{Ctx, Doc, Pos, pos};
use super::model::TrafficPolicy;
use super::raw;
use connection_pool::connection_pool;
use load_balancer::load_balancer;
use outlier::outlier;

/// A rule's policy, and where its TLS mode is written (for checks against
/// the ServiceEntry's ports).
pub(super) struct Checked<'a> {
    pub(super) policy: TrafficPolicy,
    pub(super) tls_mode: Option<&'a Spanned<String>>,
    /// Where `loadBalancer.simple` is written (PASSTHROUGH is checked
    /// against the ServiceEntry).
    pub(super) simple: Option<&'a Spanned<String>>,
    /// `portLevelSettings`, each replacing `policy` on its port.
    pub(super) ports: Vec<PortPolicy<'a>>,
}

/// The policy of one `portLevelSettings` entry.
pub(super) struct PortPolicy<'a> {
    pub(super) number: u16,
    /// Where the port number is written, and its field path.
    pub(super) at: Pos,
    pub(super) field: String,
    pub(super) policy: TrafficPolicy,
    pub(super) tls_mode: Option<&'a Spanned<String>>,
    /// `spec.trafficPolicy.portLevelSettings[i].tls.mode`.
    pub(super) tls_mode_field: String,
    pub(super) simple: Option<&'a Spanned<String>>,
}

/// Validates one DestinationRule; `None` if anything in it is wrong.
pub(super) fn validate<'a>(
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
        policy.tls = tls::validate(ctx, doc, parent, &t.value);
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
