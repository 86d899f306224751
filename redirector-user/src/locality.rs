//! Locality priorities, as Istio computes them for Envoy (`applyLocalityFailover`).
//!
//! Envoy sends traffic to the lowest priority that has healthy endpoints, so
//! the whole of "prefer my region, fail over to that one" is encoded in one
//! small number per endpoint. Istio derives it from how much of
//! `region/zone/subzone` an endpoint shares with the node: all three 0, region
//! and zone 1, region 2, nothing 3. A `failover` rule whose `from` is the
//! node's region demotes every other region except its `to` to 4. Priorities
//! are then compacted to 0..N without gaps. String matches are exact, and an
//! empty part matches an empty part, as in Istio. `placement` adds the rest
//! of `localityLbSetting` (`failoverPriority`, `distribute`) and the
//! locality weights.

mod placement;

pub(crate) use crate::topology::{Failover, Locality};
pub(crate) use placement::{Placement, place};

/// Istio's `util.LbPriority`: how far an endpoint is from the node.
fn distance(node: &Locality, ep: &Locality) -> u8 {
    if node.region != ep.region {
        3
    } else if node.zone != ep.zone {
        2
    } else if node.subzone != ep.subzone {
        1
    } else {
        0
    }
}

#[cfg(test)]
/// Priority of each endpoint locality relative to the node, compacted to
/// `0..N`. Same order as `endpoints`.
pub(crate) fn priorities<'a>(
    node: &Locality,
    endpoints: impl IntoIterator<Item = &'a Locality>,
    failover: &[Failover],
) -> Vec<u8> {
    compact(raw_priorities(node, endpoints, failover))
}

/// Istio's priority before compaction: the distance 0–3, or 4 for another
/// region than the `to` of the failover rule whose `from` is the node's
/// region (the first such rule).
pub(crate) fn raw_priorities<'a>(
    node: &Locality,
    endpoints: impl IntoIterator<Item = &'a Locality>,
    failover: &[Failover],
) -> Vec<u8> {
    let rule = failover.iter().find(|f| f.from == node.region);
    endpoints
        .into_iter()
        .map(|ep| match distance(node, ep) {
            3 if rule.is_some_and(|r| ep.region != r.to) => 4,
            d => d,
        })
        .collect()
}

/// Ranks `keys`: the k-th smallest distinct key becomes k, so priorities
/// run 0..N without gaps, as Envoy requires.
pub(crate) fn compact<K: Ord + Clone>(keys: Vec<K>) -> Vec<u8> {
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    keys.iter()
        .map(|k| {
            let rank = distinct.binary_search(k).expect("a key of the list");
            u8::try_from(rank).unwrap_or(u8::MAX)
        })
        .collect()
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s).unwrap()
    }

    fn prio(node: &str, eps: &[&str], failover: &[(&str, &str)]) -> Vec<u8> {
        let eps: Vec<Locality> = eps.iter().map(|s| loc(s)).collect();
        let failover: Vec<Failover> = failover
            .iter()
            .map(|(f, t)| Failover {
                from: (*f).into(),
                to: (*t).into(),
            })
            .collect();
        priorities(&loc(node), &eps, &failover)
    }

    #[test]
    fn blog_same_region_first() {
        // The blog's node is in us-east1.
        assert_eq!(prio("us-east1", &["us-east1", "us-west1"], &[]), [0, 1]);
    }

    #[test]
    fn distances_are_ranked_then_compacted() {
        let eps = ["r/z/s", "r/z/other", "r/other", "far", "r/z/s"];
        assert_eq!(prio("r/z/s", &eps, &[]), [0, 1, 2, 3, 0]);
        // Without the exact match, everything moves up without gaps.
        assert_eq!(prio("r/z/s", &eps[1..4], &[]), [0, 1, 2]);
    }

    #[test]
    fn failover_demotes_other_regions_below_its_target() {
        let eps = ["us-east1", "eu-west1", "us-west", "ap-south1"];
        assert_eq!(
            prio("us-east1", &eps, &[("us-east1", "us-west")]),
            [0, 2, 1, 2]
        );
        // A rule for another region does nothing here.
        assert_eq!(
            prio("us-east1", &eps, &[("eu-west1", "us-west")]),
            [0, 1, 1, 1]
        );
        // First matching rule wins, as in Istio.
        assert_eq!(
            prio(
                "us-east1",
                &eps,
                &[("us-east1", "eu-west1"), ("us-east1", "us-west")]
            ),
            [0, 1, 2, 2]
        );
    }

    #[test]
    fn blog_failure_phase_puts_both_endpoints_together() {
        // Phase (c) of the blog moves the primary to us-central1: neither
        // endpoint shares the node's region, so both are priority 0.
        assert_eq!(prio("us-east1", &["us-central1", "us-west"], &[]), [0, 0]);
    }

    #[test]
    fn empty_node_locality_matches_only_empty_endpoints() {
        assert_eq!(prio("", &["", "us-east1"], &[]), [0, 1]);
    }
}
