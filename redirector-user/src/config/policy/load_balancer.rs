//! `loadBalancer`: the algorithm (`simple`) and, through
//! [`locality_lb`](super::locality_lb), the locality settings.

use super::locality_lb::locality_lb;
use crate::config::ctx::{Ctx, Doc};
use crate::config::model::{LbAlgorithm, LocalityLbPolicy, TrafficPolicy};
use crate::config::raw;

/// `loadBalancer` under `parent` (a `trafficPolicy` path): the algorithm
/// and the locality settings. `has_outlier` says whether the same policy
/// has `outlierDetection`, which failover needs.
pub(super) fn load_balancer(
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
