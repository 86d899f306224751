//! From a service's endpoints and its `localityLbSetting` to what the
//! balancer needs: each endpoint's priority and locality group, and each
//! group's weight. This is Istio's `ApplyLocalityLoadBalancer` (pilot
//! `networking/core/loadbalancer`), which Envoy then executes:
//!
//! - `enabled: false`: one priority, no locality weighting.
//! - `distribute`: one priority; if an entry's `from` matches the node, each
//!   `to` weight is split over the localities it matches in proportion to
//!   their endpoint weights (rounded up), and localities no `to` matches get
//!   no traffic at all (`applyLocalityWeights`).
//! - otherwise, only with outlier detection (without it nothing would ever
//!   move traffic between priorities, so Istio leaves everything at 0):
//!   - `failoverPriority` (`applyFailoverPriorities`): an endpoint whose
//!     labels match the node's on all N listed labels is priority 0, one
//!     that first differs at label j is N − j; with `failover` as well the
//!     two combine as `label_priority × 5 + locality_priority`. Locality
//!     distance is *not* used unless `failover` is written too.
//!   - else the locality distance with the `failover` rules.
//!
//!   Priorities are compacted to 0..N.
//!
//! A group is the endpoints of one locality at one priority (Envoy's
//! `LocalityLbEndpoints`); its weight is the sum of their weights, so with all
//! hosts healthy each endpoint gets traffic in proportion to its weight.
//!
//! The node has no labels of its own besides the topology labels of its
//! locality; a `failoverPriority` entry `label=value` supplies the node's
//! value, as in Istio.

use std::collections::BTreeMap;

use super::{Locality, compact, raw_priorities};
use crate::{
    config::{Distribute, EndpointSpec, LocalityLbPolicy},
    lb::Group,
    topology::{LABEL_NETWORK, LABEL_REGION, LABEL_SUBZONE, LABEL_ZONE},
};

/// Where the balancer puts each configured endpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Placement {
    /// Per endpoint (same order as the service's): its group, or `None` when
    /// `distribute` gives its locality no traffic.
    pub(crate) endpoints: Vec<Option<usize>>,
    pub(crate) groups: Vec<Group>,
    /// Envoy's locality weighted load balancing, on unless locality load
    /// balancing is disabled.
    pub(crate) locality_weighted: bool,
}

impl Placement {
    pub(crate) fn priority(&self, endpoint: usize) -> Option<u8> {
        self.endpoints[endpoint].map(|g| self.groups[g].priority)
    }
}

/// Places `endpoints` for a node at `node`. `failover` says whether
/// priorities apply at all (Istio: only with outlier detection).
pub(crate) fn place(
    node: &Locality,
    endpoints: &[EndpointSpec],
    policy: &LocalityLbPolicy,
    failover: bool,
) -> Placement {
    let priorities = if !policy.enabled || !policy.distribute.is_empty() || !failover {
        vec![0; endpoints.len()]
    } else {
        failover_priorities(node, endpoints, policy)
    };
    // Groups: (priority, locality) → endpoints.
    let mut keys: BTreeMap<(u8, &Locality), Vec<usize>> = BTreeMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        keys.entry((priorities[i], &ep.locality))
            .or_default()
            .push(i);
    }
    let mut placement = Placement {
        endpoints: vec![None; endpoints.len()],
        groups: Vec::new(),
        locality_weighted: policy.enabled,
    };
    let mut members = Vec::new();
    for ((priority, _), eps) in keys {
        let weight = eps.iter().map(|&i| u64::from(endpoints[i].weight)).sum();
        for &i in &eps {
            placement.endpoints[i] = Some(placement.groups.len());
        }
        placement.groups.push(Group { priority, weight });
        members.push(eps);
    }
    if policy.enabled
        && let Some(rule) = policy
            .distribute
            .iter()
            .find(|d| locality_matches(node, &d.from))
    {
        distribute(&mut placement, &members, endpoints, rule);
    }
    placement
}

/// Istio's `applyLocalityWeights` for the rule that matched the node. All
/// groups are at priority 0 here, one per locality.
fn distribute(
    placement: &mut Placement,
    members: &[Vec<usize>],
    endpoints: &[EndpointSpec],
    rule: &Distribute,
) {
    let locality = |g: usize| &endpoints[members[g][0]].locality;
    let mut unmatched: Vec<bool> = vec![true; placement.groups.len()];
    let mut weights: Vec<Option<u64>> = vec![None; placement.groups.len()];
    for (pattern, to_weight) in &rule.to {
        let matched: Vec<usize> = (0..placement.groups.len())
            .filter(|&g| unmatched[g] && locality_matches(locality(g), pattern))
            .collect();
        let total: u64 = matched.iter().map(|&g| placement.groups[g].weight).sum();
        for g in matched {
            unmatched[g] = false;
            let original = placement.groups[g].weight;
            // ceil(original × weight / total), as Istio computes it.
            let scaled = (original * u64::from(*to_weight)).div_ceil(total);
            if scaled > 0 {
                weights[g] = Some(scaled);
            }
        }
    }
    for (g, weight) in weights.into_iter().enumerate() {
        match weight {
            Some(w) => placement.groups[g].weight = w,
            None if unmatched[g] => {
                for &i in &members[g] {
                    placement.endpoints[i] = None;
                }
            }
            None => {}
        }
    }
}

/// Istio's `LocalityMatch`: `pattern` is `region[/zone[/subzone]]` where `*`
/// matches anything and a missing zone or subzone matches any.
pub(crate) fn locality_matches(locality: &Locality, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let (r, z, s) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    (r == "*" || locality.region == r)
        && (z == "*" || z.is_empty() || locality.zone == z)
        && (s == "*" || s.is_empty() || locality.subzone == s)
}

/// Priorities from `failoverPriority` (and `failover`), or from the
/// locality distance alone.
fn failover_priorities(
    node: &Locality,
    endpoints: &[EndpointSpec],
    policy: &LocalityLbPolicy,
) -> Vec<u8> {
    let localities = endpoints.iter().map(|e| &e.locality);
    if policy.failover_priority.is_empty() {
        return compact(raw_priorities(node, localities, &policy.failover));
    }
    let labels: Vec<(&str, Option<&str>)> = policy
        .failover_priority
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (entry.as_str(), None),
        })
        .collect();
    let n = labels.len();
    let by_label: Vec<usize> = endpoints
        .iter()
        .map(|ep| {
            labels
                .iter()
                .position(|&(key, value)| {
                    let node_value = value.unwrap_or_else(|| node_label(node, key));
                    node_value != endpoint_label(ep, key)
                })
                .map_or(0, |j| n - j)
        })
        .collect();
    if policy.failover.is_empty() {
        return compact(by_label);
    }
    let by_locality = raw_priorities(node, localities, &policy.failover);
    compact(by_label.into_iter().zip(by_locality).collect())
}

/// The node's value of a topology label (it has no other labels).
pub(crate) fn node_label<'a>(node: &'a Locality, key: &str) -> &'a str {
    match key {
        LABEL_REGION => &node.region,
        LABEL_ZONE => &node.zone,
        LABEL_SUBZONE => &node.subzone,
        _ => "",
    }
}

/// An endpoint's label as Istio sees it: its `labels`, with the topology
/// labels of its locality and its `network` added (Istio's
/// `AugmentLabels`: locality parts override, the network does not).
pub(crate) fn endpoint_label<'a>(ep: &'a EndpointSpec, key: &str) -> &'a str {
    let part = match key {
        LABEL_REGION => Some(&ep.locality.region),
        LABEL_ZONE => Some(&ep.locality.zone),
        LABEL_SUBZONE => Some(&ep.locality.subzone),
        _ => None,
    };
    if let Some(part) = part.filter(|p| !p.is_empty()) {
        return part;
    }
    let label = ep.labels.get(key).map_or("", String::as_str);
    if key == LABEL_NETWORK && label.is_empty() {
        return &ep.network;
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::EndpointAddress, topology::Failover};

    fn ep(locality: &str, weight: u32, labels: &[(&str, &str)], network: &str) -> EndpointSpec {
        EndpointSpec {
            address: EndpointAddress::Dns(format!("{locality}.example")),
            port: 80,
            locality: Locality::parse(locality).unwrap(),
            weight,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network: network.into(),
        }
    }

    fn policy() -> LocalityLbPolicy {
        LocalityLbPolicy {
            enabled: true,
            failover: Vec::new(),
            failover_priority: Vec::new(),
            distribute: Vec::new(),
        }
    }

    fn node(s: &str) -> Locality {
        Locality::parse(s).unwrap()
    }

    fn priorities(p: &Placement) -> Vec<Option<u8>> {
        (0..p.endpoints.len()).map(|i| p.priority(i)).collect()
    }

    fn group_weights(p: &Placement) -> Vec<Option<u64>> {
        p.endpoints
            .iter()
            .map(|g| g.map(|g| p.groups[g].weight))
            .collect()
    }

    #[test]
    fn locality_distance_with_outlier_detection_only() {
        let eps = [
            ep("r/z", 1, &[], ""),
            ep("r/y", 1, &[], ""),
            ep("q", 1, &[], ""),
        ];
        let p = place(&node("r/z"), &eps, &policy(), true);
        assert_eq!(priorities(&p), [Some(0), Some(1), Some(2)]);
        assert!(p.locality_weighted);
        // Without outlier detection: one priority, still locality weighted.
        let p = place(&node("r/z"), &eps, &policy(), false);
        assert_eq!(priorities(&p), [Some(0); 3]);
        assert!(p.locality_weighted);
        assert_eq!(p.groups.len(), 3);
        // Disabled: one priority, no locality weighting.
        let off = LocalityLbPolicy {
            enabled: false,
            ..policy()
        };
        let p = place(&node("r/z"), &eps, &off, true);
        assert_eq!(priorities(&p), [Some(0); 3]);
        assert!(!p.locality_weighted);
    }

    #[test]
    fn groups_are_localities_weighted_by_their_endpoints() {
        let eps = [
            ep("a", 3, &[], ""),
            ep("b", 1, &[], ""),
            ep("a", 2, &[], ""),
        ];
        let p = place(&node("a"), &eps, &policy(), false);
        assert_eq!(p.endpoints[0], p.endpoints[2]);
        assert_ne!(p.endpoints[0], p.endpoints[1]);
        assert_eq!(group_weights(&p), [Some(5), Some(1), Some(5)]);
    }

    #[test]
    fn failover_priority_by_labels() {
        // Network, then region, then zone.
        let mk = |loc, net, tier| ep(loc, 1, &[(LABEL_NETWORK, net), ("tier", tier)], "");
        let eps = [
            mk("r1/z1", "n1", "gold"),
            mk("r1/z2", "n1", "gold"),
            mk("r2/z1", "n1", "gold"),
            mk("r1/z1", "n2", "gold"),
            mk("r1/z1", "n1", "iron"),
        ];
        let fp = LocalityLbPolicy {
            failover_priority: vec![
                format!("{LABEL_NETWORK}=n1"),
                LABEL_REGION.into(),
                LABEL_ZONE.into(),
            ],
            ..policy()
        };
        let p = place(&node("r1/z1"), &eps, &fp, true);
        // All three match: 0; zone differs: 1; region differs: 2; network
        // differs: 3. The label `tier` is not listed, so it does not count.
        assert_eq!(
            priorities(&p),
            [Some(0), Some(1), Some(2), Some(3), Some(0)]
        );
        // Compacted: without the zone mismatch the values close up.
        let p = place(&node("r1/z1"), &[eps[0].clone(), eps[3].clone()], &fp, true);
        assert_eq!(priorities(&p), [Some(0), Some(1)]);
    }

    #[test]
    fn failover_priority_without_failover_ignores_locality_distance() {
        let eps = [
            ep("far", 1, &[("tier", "gold")], ""),
            ep("near", 1, &[("tier", "iron")], ""),
            ep("near", 1, &[("tier", "gold")], ""),
        ];
        let fp = LocalityLbPolicy {
            failover_priority: vec!["tier=gold".into()],
            ..policy()
        };
        let p = place(&node("near"), &eps, &fp, true);
        assert_eq!(priorities(&p), [Some(0), Some(1), Some(0)]);
    }

    #[test]
    fn failover_priority_combines_with_failover_as_times_five() {
        let eps = [
            ep("us-east1", 1, &[("tier", "gold")], ""),
            ep("us-west", 1, &[("tier", "gold")], ""),
            ep("eu", 1, &[("tier", "gold")], ""),
            ep("us-east1", 1, &[("tier", "iron")], ""),
            ep("us-west", 1, &[("tier", "iron")], ""),
        ];
        let both = LocalityLbPolicy {
            failover_priority: vec!["tier=gold".into()],
            failover: vec![Failover {
                from: "us-east1".into(),
                to: "us-west".into(),
            }],
            ..policy()
        };
        let p = place(&node("us-east1"), &eps, &both, true);
        // (label, locality): (0,0) (0,3) (0,4) (1,0) (1,3) → 0 1 2 3 4.
        assert_eq!(
            priorities(&p),
            [Some(0), Some(1), Some(2), Some(3), Some(4)]
        );
    }

    #[test]
    fn endpoint_labels_are_augmented_like_istio() {
        let e = ep(
            "r/z/s",
            1,
            &[(LABEL_REGION, "other"), ("app", "db")],
            "net1",
        );
        assert_eq!(endpoint_label(&e, LABEL_REGION), "r");
        assert_eq!(endpoint_label(&e, LABEL_ZONE), "z");
        assert_eq!(endpoint_label(&e, LABEL_SUBZONE), "s");
        assert_eq!(endpoint_label(&e, LABEL_NETWORK), "net1");
        assert_eq!(endpoint_label(&e, "app"), "db");
        assert_eq!(endpoint_label(&e, "missing"), "");
        // A network label wins over `network`; an empty locality part does
        // not override a label.
        let e = ep(
            "r",
            1,
            &[(LABEL_NETWORK, "lab"), (LABEL_ZONE, "zl")],
            "net1",
        );
        assert_eq!(endpoint_label(&e, LABEL_NETWORK), "lab");
        assert_eq!(endpoint_label(&e, LABEL_ZONE), "zl");
        assert_eq!(node_label(&node("a/b/c"), LABEL_SUBZONE), "c");
        assert_eq!(node_label(&node("a/b/c"), "app"), "");
    }

    #[test]
    fn locality_match_like_istio() {
        let l = node("us-east1/a/x");
        for (pattern, expected) in [
            ("*", true),
            ("us-east1", true),
            ("us-east1/*", true),
            ("us-east1/a", true),
            ("us-east1/a/*", true),
            ("us-east1/a/x", true),
            ("us-east1/b", false),
            ("us-east1/a/y", false),
            ("us-west1", false),
            ("*/a", true),
        ] {
            assert_eq!(locality_matches(&l, pattern), expected, "{pattern}");
        }
        assert!(!locality_matches(&node(""), "us-east1"));
        assert!(locality_matches(&node(""), "*"));
    }

    fn dist(from: &str, to: &[(&str, u32)]) -> Distribute {
        Distribute {
            from: from.into(),
            to: to.iter().map(|(l, w)| (l.to_string(), *w)).collect(),
        }
    }

    #[test]
    fn distribute_sets_locality_weights_and_drops_the_rest() {
        let eps = [
            ep("r1/z1", 1, &[], ""),
            ep("r1/z2", 3, &[], ""),
            ep("r2/z1", 1, &[], ""),
            ep("r3", 1, &[], ""),
        ];
        let d = LocalityLbPolicy {
            distribute: vec![
                dist("r9/*", &[("r3", 100)]),
                dist("r1/*", &[("r1/*", 80), ("r2/*", 20)]),
            ],
            ..policy()
        };
        // With outlier detection too: distribute keeps one priority.
        let p = place(&node("r1/z1"), &eps, &d, true);
        assert_eq!(priorities(&p), [Some(0), Some(0), Some(0), None]);
        // 80 split over r1/z1 (weight 1) and r1/z2 (weight 3), rounded up.
        assert_eq!(group_weights(&p), [Some(20), Some(60), Some(20), None]);
        // A node no `from` matches: plain weights, nothing dropped.
        let p = place(&node("r5"), &eps, &d, true);
        assert_eq!(group_weights(&p), [Some(1), Some(3), Some(1), Some(1)]);
        assert_eq!(priorities(&p), [Some(0); 4]);
        // The first matching entry wins.
        let p = place(&node("r9/z"), &eps, &d, false);
        assert_eq!(group_weights(&p), [None, None, None, Some(100)]);
    }

    #[test]
    fn distribute_rounds_up() {
        let eps = [
            ep("a", 1, &[], ""),
            ep("b", 1, &[], ""),
            ep("c", 1, &[], ""),
        ];
        let d = LocalityLbPolicy {
            distribute: vec![dist("*", &[("*", 100)])],
            ..policy()
        };
        let p = place(&node("x"), &eps, &d, false);
        // ceil(1 × 100 / 3) each.
        assert_eq!(group_weights(&p), [Some(34); 3]);
    }
}
