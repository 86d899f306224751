//! `loadBalancer.localityLbSetting`: `failover` between regions,
//! `failoverPriority` labels and weighted `distribute`. Combinations Istio
//! would silently ignore are errors.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use crate::config::checks::{label_key_problem, label_value_problem};
use crate::config::ctx::{Ctx, Doc};
use crate::config::model::{Distribute, LocalityLbPolicy};
use crate::config::{raw, yaml};
use crate::topology::{Failover, LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE};

pub(super) fn locality_lb(
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
        let key_at = || yaml::key_position(doc.text, locality, weight.referenced);
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
