//! The balancer against Envoy's rules, with a seeded random source.

use rand::{SeedableRng, rngs::SmallRng};

use super::*;

const RR: Policy = Policy {
    algorithm: LbAlgorithm::RoundRobin,
    panic_threshold: 0,
    locality_weighted: true,
};

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

/// One locality per priority, weight 1 each: `hosts` are (priority,
/// healthy).
fn simple(hosts: &[(u8, bool)]) -> (Vec<HostView>, Vec<Group>) {
    let max = hosts.iter().map(|h| h.0).max().unwrap_or(0);
    let groups: Vec<Group> = (0..=max)
        .map(|p| Group {
            priority: p,
            weight: hosts.iter().filter(|h| h.0 == p).count() as u64,
        })
        .collect();
    let views = hosts
        .iter()
        .map(|&(p, healthy)| HostView {
            group: usize::from(p),
            healthy,
            weight: 1,
        })
        .collect();
    (views, groups)
}

fn orders(b: &mut Balancer, n: usize) -> Vec<Vec<usize>> {
    let mut r = rng();
    (0..n).map(|_| b.attempt_order(&mut r, |_| 0)).collect()
}

fn firsts(b: &mut Balancer, n: usize, active: impl Fn(usize) -> u32) -> Vec<usize> {
    let mut r = rng();
    (0..n)
        .map(|_| b.attempt_order(&mut r, &active)[0])
        .collect()
}

fn count(picks: &[usize], host: usize) -> usize {
    picks.iter().filter(|&&h| h == host).count()
}

#[test]
fn round_robin_within_the_best_priority_then_the_rest() {
    let (hosts, groups) = simple(&[(1, true), (0, true), (0, true), (2, true)]);
    let mut b = Balancer::new(hosts, &groups, RR);
    let o = orders(&mut b, 3);
    // The pick alternates over P0; the other P0 host, then P1 and P2 follow.
    assert_eq!(o[0], [1, 2, 0, 3]);
    assert_eq!(o[1], [2, 1, 0, 3]);
    assert_eq!(o[2], [1, 2, 0, 3]);
}

#[test]
fn ejected_hosts_are_skipped_while_any_is_healthy() {
    let (hosts, groups) = simple(&[(0, false), (1, true), (1, false)]);
    let mut b = Balancer::new(hosts, &groups, RR);
    for o in orders(&mut b, 5) {
        assert_eq!(o, [1]);
    }
}

#[test]
fn nothing_healthy_and_no_panic_tries_everything_by_priority() {
    let (hosts, groups) = simple(&[(1, false), (0, false), (1, false)]);
    let mut b = Balancer::new(hosts, &groups, RR);
    assert!(b.priority_load().stranded);
    let o = orders(&mut b, 2);
    assert_eq!(o[0], [1, 2, 0]);
    assert_eq!(o[1], [1, 0, 2]);
}

#[test]
fn no_hosts_no_attempts() {
    let mut b = Balancer::new(Vec::new(), &[], RR);
    assert!(orders(&mut b, 2).iter().all(Vec::is_empty));
}

#[test]
fn spillover_follows_the_priority_load() {
    // P0: 1 of 2 healthy → health 70; P1 healthy → 70/30.
    let (hosts, groups) = simple(&[(0, true), (0, false), (1, true), (1, true)]);
    let mut b = Balancer::new(hosts, &groups, RR);
    assert_eq!(b.priority_load().load, [70, 30]);
    let picks = firsts(&mut b, 2000, |_| 0);
    let p0 = count(&picks, 0);
    assert!((1300..=1500).contains(&p0), "P0 got {p0} of 2000");
    assert_eq!(count(&picks, 1), 0, "the ejected host gets nothing");
    assert_eq!(count(&picks, 2) + count(&picks, 3), 2000 - p0);
    // Whatever the pick, the fallbacks cover every healthy host once.
    for o in orders(&mut b, 20) {
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 2, 3], "{o:?}");
    }
}

#[test]
fn panic_sends_a_levels_share_to_all_its_hosts() {
    // 1 of 4 healthy in P0, 1 of 4 in P1: total health 70 < 100 and both
    // below a 50% threshold, so both levels are in panic.
    let (hosts, groups) = simple(&[
        (0, true),
        (0, false),
        (0, false),
        (0, false),
        (1, true),
        (1, false),
        (1, false),
        (1, false),
    ]);
    let policy = Policy {
        panic_threshold: 50,
        ..RR
    };
    let mut b = Balancer::new(hosts.clone(), &groups, policy);
    assert_eq!(b.priority_load().panic, [true, true]);
    let picks = firsts(&mut b, 800, |_| 0);
    // Round robin over all four hosts of the chosen level.
    for h in 0..8 {
        assert!(count(&picks, h) > 60, "host {h}: {picks:?}");
    }
    // A panic pick falls back to healthy hosts before the unhealthy rest.
    let o = b.attempt_order(&mut rng(), |_| 0);
    let healthy_at: Vec<usize> = [0, 4]
        .iter()
        .map(|h| o.iter().position(|x| x == h).unwrap())
        .collect();
    assert!(healthy_at.iter().all(|&i| i <= 2), "{o:?}");
    // Without panic only the healthy hosts get picks.
    let mut b = Balancer::new(hosts, &groups, RR);
    let picks = firsts(&mut b, 200, |_| 0);
    assert_eq!(count(&picks, 0) + count(&picks, 4), 200);
}

#[test]
fn weighted_round_robin_is_exact() {
    let groups = [Group {
        priority: 0,
        weight: 4,
    }];
    let hosts = vec![
        HostView {
            group: 0,
            healthy: true,
            weight: 3,
        },
        HostView {
            group: 0,
            healthy: true,
            weight: 1,
        },
    ];
    let mut b = Balancer::new(hosts, &groups, RR);
    let picks = firsts(&mut b, 400, |_| 0);
    assert_eq!((count(&picks, 0), count(&picks, 1)), (300, 100));
    // Interleaved, not bunched: 1 comes every three or four picks (the
    // float deadlines decide the ties at whole numbers).
    assert!(!picks.windows(5).any(|w| w == [0; 5]), "{picks:?}");
}

#[test]
fn random_ignores_weights_and_spreads() {
    let groups = [Group {
        priority: 0,
        weight: 10,
    }];
    let hosts = vec![
        HostView {
            group: 0,
            healthy: true,
            weight: 9,
        },
        HostView {
            group: 0,
            healthy: true,
            weight: 1,
        },
    ];
    let policy = Policy {
        algorithm: LbAlgorithm::Random,
        ..RR
    };
    let mut b = Balancer::new(hosts, &groups, policy);
    let picks = firsts(&mut b, 2000, |_| 0);
    let zero = count(&picks, 0);
    assert!((900..=1100).contains(&zero), "{zero} of 2000");
}

#[test]
fn least_request_prefers_the_idle_host() {
    let (hosts, groups) = simple(&[(0, true), (0, true), (0, true)]);
    let policy = Policy {
        algorithm: LbAlgorithm::LeastRequest,
        ..RR
    };
    let mut b = Balancer::new(hosts, &groups, policy);
    // Host 1 is busy: it is picked only when both choices land on it (1/9).
    let picks = firsts(&mut b, 900, |h| if h == 1 { 5 } else { 0 });
    let busy = count(&picks, 1);
    assert!(busy < 180, "the busy host got {busy} of 900");
    assert!(
        count(&picks, 0) > 300 && count(&picks, 2) > 300,
        "{picks:?}"
    );
    // All idle: two random choices tie, so it is random.
    let picks = firsts(&mut b, 900, |_| 0);
    for h in 0..3 {
        assert!((200..=400).contains(&count(&picks, h)), "{picks:?}");
    }
    // The busiest host never gets a pick while another one is idle and
    // there are only two.
    let (hosts, groups) = simple(&[(0, true), (0, true)]);
    let mut b = Balancer::new(hosts, &groups, policy);
    let picks = firsts(&mut b, 300, |h| if h == 0 { 3 } else { 1 });
    let expected = picks.iter().filter(|&&h| h == 0).count();
    assert!(
        expected < 100,
        "P2C picks the busier one only when both rolls hit it"
    );
}

#[test]
fn weighted_least_request_divides_weight_by_active_requests() {
    let groups = [Group {
        priority: 0,
        weight: 2,
    }];
    let hosts = vec![
        HostView {
            group: 0,
            healthy: true,
            weight: 2,
        },
        HostView {
            group: 0,
            healthy: true,
            weight: 1,
        },
    ];
    let policy = Policy {
        algorithm: LbAlgorithm::LeastRequest,
        ..RR
    };
    // Idle: the weights decide, 2:1.
    let mut b = Balancer::new(hosts.clone(), &groups, policy);
    let picks = firsts(&mut b, 300, |_| 0);
    assert_eq!((count(&picks, 0), count(&picks, 1)), (200, 100));
    // Host 0 has three requests in flight: 2 / 4 < 1 / 1, host 1 leads.
    let mut b = Balancer::new(hosts, &groups, policy);
    let picks = firsts(&mut b, 300, |h| if h == 0 { 3 } else { 0 });
    assert!(count(&picks, 1) > count(&picks, 0), "{picks:?}");
}

#[test]
fn locality_weights_split_a_priority() {
    // distribute: 80% to locality 0 (one host), 20% to locality 1 (two).
    let groups = [
        Group {
            priority: 0,
            weight: 80,
        },
        Group {
            priority: 0,
            weight: 20,
        },
    ];
    let h = |group| HostView {
        group,
        healthy: true,
        weight: 1,
    };
    let hosts = vec![h(0), h(1), h(1)];
    let mut b = Balancer::new(hosts.clone(), &groups, RR);
    let picks = firsts(&mut b, 1000, |_| 0);
    assert_eq!(count(&picks, 0), 800);
    assert_eq!((count(&picks, 1), count(&picks, 2)), (100, 100));
    // Without locality weighting the hosts share equally.
    let flat = Policy {
        locality_weighted: false,
        ..RR
    };
    let mut b = Balancer::new(hosts, &groups, flat);
    let picks = firsts(&mut b, 300, |_| 0);
    assert_eq!(count(&picks, 0), 100);
}

#[test]
fn a_locality_loses_weight_only_below_overprovisioned_health() {
    // Two localities of weight 4 with 4 hosts each. One ejection leaves
    // 3/4 × 1.4 > 1: still half the traffic. Three ejections leave
    // 1/4 × 1.4 = 0.35 of its weight.
    let groups = [
        Group {
            priority: 0,
            weight: 4,
        },
        Group {
            priority: 0,
            weight: 4,
        },
    ];
    let mk = |ejected_in_a: usize| -> Vec<HostView> {
        (0..8)
            .map(|i| HostView {
                group: i / 4,
                healthy: !(i < 4 && i < ejected_in_a),
                weight: 1,
            })
            .collect()
    };
    let a_share = |ejected| {
        let mut b = Balancer::new(mk(ejected), &groups, RR);
        let picks = firsts(&mut b, 1350, |_| 0);
        picks.iter().filter(|&&h| h < 4).count()
    };
    assert_eq!(a_share(1), 675);
    // 0.35 / 1.35 of 1350 picks.
    assert_eq!(a_share(3), 350);
}

#[test]
fn slot_table_follows_weights() {
    let groups = [Group {
        priority: 0,
        weight: 4,
    }];
    let hosts = vec![
        HostView {
            group: 0,
            healthy: true,
            weight: 3,
        },
        HostView {
            group: 0,
            healthy: true,
            weight: 1,
        },
    ];
    let t = slot_table(&hosts, &groups, &RR, 64);
    assert_eq!(t.len(), 64);
    assert_eq!((count(&t, 0), count(&t, 1)), (48, 16));
    // Interleaved: host 1 every fourth slot.
    assert!(!t.windows(4).any(|w| w == [0, 0, 0, 0]), "{t:?}");
    // RANDOM ignores endpoint weights.
    let random = Policy {
        algorithm: LbAlgorithm::Random,
        ..RR
    };
    let t = slot_table(&hosts, &groups, &random, 64);
    assert_eq!((count(&t, 0), count(&t, 1)), (32, 32));
}

#[test]
fn slot_table_follows_the_priority_load_and_health() {
    // P0: 1 of 2 healthy (70%), P1: 2 healthy (30%).
    let (hosts, groups) = simple(&[(0, true), (0, false), (1, true), (1, true)]);
    let t = slot_table(&hosts, &groups, &RR, 100);
    assert_eq!(count(&t, 0), 70);
    assert_eq!(count(&t, 1), 0);
    assert_eq!((count(&t, 2), count(&t, 3)), (15, 15));
    // All healthy: P0 only.
    let (hosts, groups) = simple(&[(0, true), (0, true), (1, true)]);
    let t = slot_table(&hosts, &groups, &RR, 64);
    assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (32, 32, 0));
    // Nothing healthy, panic off: every host, by host count.
    let (hosts, groups) = simple(&[(0, false), (1, false)]);
    let t = slot_table(&hosts, &groups, &RR, 10);
    assert_eq!((count(&t, 0), count(&t, 1)), (5, 5));
    assert!(slot_table(&[], &[], &RR, 64).is_empty());
}

#[test]
fn slot_table_follows_locality_weights() {
    let groups = [
        Group {
            priority: 0,
            weight: 75,
        },
        Group {
            priority: 0,
            weight: 25,
        },
    ];
    let h = |group, weight| HostView {
        group,
        healthy: true,
        weight,
    };
    // Locality 0 has two hosts weighted 2:1.
    let hosts = vec![h(0, 2), h(0, 1), h(1, 5)];
    let t = slot_table(&hosts, &groups, &RR, 64);
    // 48 × 2/3, 48 × 1/3, 16.
    assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (32, 16, 16));
}
