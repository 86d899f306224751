//! Properties of the priority load and the kernel's slot tables over
//! random clusters (proptest; each runs in a few seconds).

use proptest::prelude::*;

use super::*;

/// A cluster: locality groups (priority, weight) and hosts on them.
fn cluster() -> impl Strategy<Value = (Vec<Group>, Vec<HostView>)> {
    prop::collection::vec((0u8..4, 0u64..100), 1..6).prop_flat_map(|groups| {
        let n = groups.len();
        let groups: Vec<Group> = groups
            .into_iter()
            .map(|(priority, weight)| Group { priority, weight })
            .collect();
        let hosts = prop::collection::vec(
            (0..n, any::<bool>(), 1u32..10).prop_map(|(group, healthy, weight)| HostView {
                group,
                healthy,
                weight,
            }),
            1..30,
        );
        (Just(groups), hosts)
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![
            Just(LbAlgorithm::RoundRobin),
            Just(LbAlgorithm::LeastRequest),
            Just(LbAlgorithm::Random),
        ],
        prop_oneof![Just(0u32), 1u32..=100],
        any::<bool>(),
    )
        .prop_map(|(algorithm, panic_threshold, locality_weighted)| Policy {
            algorithm,
            panic_threshold,
            locality_weighted,
        })
}

fn levels() -> impl Strategy<Value = Vec<Level>> {
    prop::collection::vec(
        (0usize..40)
            .prop_flat_map(|total| (0..=total, Just(total)))
            .prop_map(|(healthy, total)| Level { healthy, total }),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The loads add up to 100 (or, stranded, are all 0, which only
    /// happens with nothing healthy and panic off); traffic goes only
    /// to a level with health or in panic, and never to an empty level
    /// while another has hosts.
    #[test]
    fn priority_loads_sum_to_100(levels in levels(), threshold in 0u32..150) {
        let r = priority_load(&levels, threshold);
        prop_assert_eq!(r.load.len(), levels.len());
        prop_assert_eq!(r.panic.len(), levels.len());
        let healthy: usize = levels.iter().map(|l| l.healthy).sum();
        if r.stranded {
            prop_assert!(healthy == 0 && threshold == 0, "{:?}", r);
            prop_assert!(r.load.iter().all(|&l| l == 0));
        } else if !levels.is_empty() {
            prop_assert_eq!(r.load.iter().sum::<u32>(), 100, "{:?} → {:?}", levels, r);
            let any_hosts = levels.iter().any(|l| l.total > 0);
            for (p, l) in levels.iter().enumerate() {
                if r.load[p] > 0 {
                    prop_assert!(priority::health(*l) > 0 || r.panic[p], "{:?} → {:?}", levels, r);
                    prop_assert!(l.total > 0 || !any_hosts, "{:?} → {:?}", levels, r);
                }
            }
        }
    }

    /// A slot table has exactly the slots asked for; each level's slots
    /// are its priority load of them, give or take one per host of the
    /// level; and only hosts that may get traffic are in it.
    #[test]
    fn slot_tables_fill_exactly_and_follow_the_priority_load(
        (groups, hosts) in cluster(),
        policy in policy(),
        n in 1usize..=redirector_common::MAX_SLOTS,
    ) {
        let table = slot_table(&hosts, &groups, &policy, n);
        prop_assert_eq!(table.len(), n);
        let levels_n = usize::from(groups.iter().map(|g| g.priority).max().unwrap_or(0)) + 1;
        let mut counts = vec![Level::default(); levels_n];
        for h in &hosts {
            let l = &mut counts[usize::from(groups[h.group].priority)];
            l.total += 1;
            l.healthy += usize::from(h.healthy);
        }
        let load = priority_load(&counts, policy.panic_threshold);
        let level_of = |i: usize| usize::from(groups[hosts[i].group].priority);
        for &i in &table {
            prop_assert!(i < hosts.len());
            let p = level_of(i);
            prop_assert!(
                load.stranded || load.panic[p] || hosts[i].healthy,
                "unhealthy host {} of level {} not in panic: {:?}", i, p, load
            );
        }
        for (p, level) in counts.iter().enumerate() {
            let slots = table.iter().filter(|&&i| level_of(i) == p).count() as f64;
            let want = if load.stranded {
                n as f64 * level.total as f64 / hosts.len() as f64
            } else {
                n as f64 * f64::from(load.load[p]) / 100.0
            };
            prop_assert!(
                (slots - want).abs() <= level.total as f64 + 1e-9,
                "level {}: {} slots for a share of {:.2} ({:?}, {:?})", p, slots, want, load, table
            );
        }
    }
}
