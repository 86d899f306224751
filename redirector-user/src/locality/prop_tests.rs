//! Locality ranking does not depend on the order endpoints are listed in
//! (proptest; runs in a few seconds).

use proptest::prelude::*;

use super::*;
use crate::config::{Distribute, EndpointAddress, EndpointSpec, LocalityLbPolicy};
use crate::topology::{LABEL_NETWORK, LABEL_REGION, LABEL_ZONE};

fn locality() -> impl Strategy<Value = Locality> {
    (
        prop::sample::select(vec!["r1", "r2", "r3", ""]),
        prop::sample::select(vec!["z1", "z2", ""]),
        prop::sample::select(vec!["s1", ""]),
    )
        .prop_map(|(r, z, s)| Locality {
            region: r.into(),
            zone: z.into(),
            subzone: s.into(),
        })
}

fn endpoint() -> impl Strategy<Value = EndpointSpec> {
    (
        locality(),
        1u32..5,
        prop::sample::select(vec!["", "a", "b"]),
        prop::sample::select(vec!["", "n1", "n2"]),
        any::<u16>(),
    )
        .prop_map(|(locality, weight, app, network, port)| EndpointSpec {
            address: EndpointAddress::Dns(format!("{port}.example")),
            port,
            locality,
            weight,
            labels: [("app".to_owned(), app.to_owned())]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            network: network.into(),
        })
}

fn policy() -> impl Strategy<Value = LocalityLbPolicy> {
    let region = || prop::sample::select(vec!["r1", "r2", "r3"]);
    let pattern = || prop::sample::select(vec!["*", "r1", "r2/*", "r1/z1", "r3/z2/s1"]);
    (
        any::<bool>(),
        prop::collection::vec(
            (region(), region()).prop_map(|(from, to)| Failover {
                from: from.into(),
                to: to.into(),
            }),
            0..3,
        ),
        prop::sample::subsequence(
            vec![LABEL_NETWORK, LABEL_REGION, LABEL_ZONE, "app", "app=a"],
            0..=3,
        ),
        prop::collection::vec(
            (
                pattern(),
                prop::collection::vec((pattern(), 0u32..=100), 1..3),
            )
                .prop_map(|(from, to)| Distribute {
                    from: from.into(),
                    to: to.into_iter().map(|(p, w)| (p.into(), w)).collect(),
                }),
            0..2,
        ),
    )
        .prop_map(
            |(enabled, failover, failover_priority, distribute)| LocalityLbPolicy {
                enabled,
                failover,
                failover_priority: failover_priority.into_iter().map(String::from).collect(),
                distribute,
            },
        )
}

/// Endpoints and the same endpoints in another order (`order[k]` is the
/// original index of the k-th shuffled one).
fn shuffled() -> impl Strategy<Value = (Vec<EndpointSpec>, Vec<usize>)> {
    prop::collection::vec(endpoint(), 1..12).prop_flat_map(|eps| {
        let n = eps.len();
        (
            Just(eps),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Every endpoint gets the same priority, the same locality group
    /// (by locality) and the same group weight, or is left out alike,
    /// whatever order the endpoints are listed in.
    #[test]
    fn ranking_is_stable_under_endpoint_order(
        node in locality(),
        (eps, order) in shuffled(),
        policy in policy(),
        failover in any::<bool>(),
    ) {
        let other: Vec<EndpointSpec> = order.iter().map(|&i| eps[i].clone()).collect();
        let a = place(&node, &eps, &policy, failover);
        let b = place(&node, &other, &policy, failover);
        prop_assert_eq!(a.locality_weighted, b.locality_weighted);
        prop_assert_eq!(a.groups.len(), b.groups.len());
        for (k, &i) in order.iter().enumerate() {
            prop_assert_eq!(a.priority(i), b.priority(k), "endpoint {}", i);
            let weight = |p: &Placement, e: usize| p.endpoints[e].map(|g| p.groups[g].weight);
            prop_assert_eq!(weight(&a, i), weight(&b, k), "endpoint {}", i);
        }
        // The raw ranking too, before compaction.
        let raw_a = raw_priorities(&node, eps.iter().map(|e| &e.locality), &policy.failover);
        let raw_b = raw_priorities(&node, other.iter().map(|e| &e.locality), &policy.failover);
        for (k, &i) in order.iter().enumerate() {
            prop_assert_eq!(raw_a[i], raw_b[k]);
        }
    }
}
