//! `outlierDetection`: how many consecutive failures of which kind eject an
//! endpoint, for how long, and how many may be out at once, with Istio's
//! and Envoy's defaults.

use serde_saphyr::Spanned;

use crate::config::checks::{U32_MAX, number, positive_duration};
use crate::config::ctx::{Ctx, Doc};
use crate::config::model::OutlierPolicy;
use crate::config::raw;

pub(super) fn outlier(
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
