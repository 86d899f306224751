//! How much of the traffic each priority level gets: Envoy's priority load
//! (`LoadBalancerBase::recalculatePerPriorityState` and
//! `recalculatePerPriorityPanic`).
//!
//! Envoy treats every level as overprovisioned by 1.4: a level's health is
//! `min(100, 140 × healthy / total)` (integer, by host count, not weight), so
//! it keeps all of its traffic until fewer than ~71.4% of its hosts are
//! healthy, and the shortfall spills to the next level. When the levels'
//! health adds up to less than 100 there is not enough capacity anywhere, and
//! the health scores are scaled up to share 100% between them.
//!
//! A level is in panic when the total health is below 100 and its share of
//! healthy hosts is below the panic threshold (Istio's `minHealthPercent`;
//! 0, Istio's default, turns panic off). Traffic sent to a level in panic goes
//! to all of its hosts, healthy or not. When every level is in panic the
//! split follows host counts instead of health.
//!
//! Rounding: Envoy's code floors each level's scaled share and gives the
//! leftover percent to the first healthy level (its unit tests: 20/20/20%
//! healthy → 34/33/33), while its documentation shows rounded shares
//! (25/25/20% healthy → 36/36/28, where the floor-and-first code gives
//! 37/35/28). We apportion by largest remainder (ties to the higher
//! priority), which reproduces both the documented tables and Envoy's tests.

/// Envoy's default overprovisioning factor, in percent (1.4).
pub(crate) const OVERPROVISIONING_FACTOR: u64 = 140;

/// Host counts of one priority level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) healthy: usize,
    pub(crate) total: usize,
}

/// The outcome for all levels, indexed by priority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PriorityLoad {
    /// Percent of new connections per level; sums to 100 unless
    /// `stranded`.
    pub(crate) load: Vec<u32>,
    /// Levels in panic: traffic sent there goes to all their hosts.
    pub(crate) panic: Vec<bool>,
    /// No healthy host anywhere and panic is off. Envoy then answers "no
    /// healthy upstream"; all loads are 0 and the caller decides.
    pub(crate) stranded: bool,
}

/// Envoy's health score of a level: 0–100.
pub(crate) fn health(level: Level) -> u32 {
    if level.total == 0 {
        return 0;
    }
    let score = OVERPROVISIONING_FACTOR * level.healthy as u64 / level.total as u64;
    score.min(100) as u32
}

/// The priority load of `levels` (index = priority) with the panic
/// threshold `panic_threshold` percent (0 turns panic off).
pub(crate) fn priority_load(levels: &[Level], panic_threshold: u32) -> PriorityLoad {
    let n = levels.len();
    let threshold = panic_threshold.min(100);
    let health: Vec<u32> = levels.iter().map(|&l| health(l)).collect();
    let total_health = health.iter().sum::<u32>().min(100);
    if total_health == 0 && threshold == 0 {
        return PriorityLoad {
            load: vec![0; n],
            panic: vec![false; n],
            stranded: true,
        };
    }
    // Never panic while the levels together have enough healthy capacity.
    let panic: Vec<bool> = levels
        .iter()
        .map(|l| total_health < 100 && healthy_percent(*l) < f64::from(threshold))
        .collect();
    let load = if !panic.is_empty() && panic.iter().all(|&p| p) {
        by_host_count(levels)
    } else {
        by_health(&health, total_health)
    };
    PriorityLoad {
        load,
        panic,
        stranded: false,
    }
}

fn healthy_percent(l: Level) -> f64 {
    if l.total == 0 {
        0.0
    } else {
        100.0 * l.healthy as f64 / l.total as f64
    }
}

/// Health scores in priority order, each level taking what is left of 100
/// at most; scaled by `100 / total_health` when that is below 100.
fn by_health(health: &[u32], total_health: u32) -> Vec<u32> {
    if total_health >= 100 {
        let mut left = 100;
        return health
            .iter()
            .map(|&h| {
                let take = h.min(left);
                left -= take;
                take
            })
            .collect();
    }
    // The scaled shares add up to exactly 100.
    let shares: Vec<(u64, u64)> = health
        .iter()
        .map(|&h| (u64::from(h) * 100, u64::from(total_health)))
        .collect();
    largest_remainder(&shares, 100)
}

/// Total panic: the split follows the number of hosts per level, floored,
/// with the leftover to the first level that has hosts (Envoy's
/// `recalculateLoadInTotalPanic`).
fn by_host_count(levels: &[Level]) -> Vec<u32> {
    let mut load = vec![0u32; levels.len()];
    let hosts: usize = levels.iter().map(|l| l.total).sum();
    if hosts == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    let mut left = 100u32;
    for (i, l) in levels.iter().enumerate() {
        load[i] = (100 * l.total / hosts) as u32;
        left -= load[i];
    }
    if let Some(first) = levels.iter().position(|l| l.total > 0) {
        load[first] += left;
    }
    load
}

/// Integer parts of `total` split by the fractions `num / den` (which add up
/// to `total`): each gets its floor, and the units left over go to the
/// largest remainders, ties to the lower index.
pub(crate) fn largest_remainder(shares: &[(u64, u64)], total: u64) -> Vec<u32> {
    let mut out: Vec<u64> = shares.iter().map(|&(n, d)| n / d).collect();
    let given: u64 = out.iter().sum();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    // Compare remainders r_i / d_i exactly: r_i × d_j vs r_j × d_i.
    let rem = |i: usize| {
        let (n, d) = shares[i];
        (u128::from(n % d), u128::from(d))
    };
    order.sort_by(|&a, &b| {
        let ((ra, da), (rb, db)) = (rem(a), rem(b));
        (rb * da).cmp(&(ra * db)).then(a.cmp(&b))
    });
    for &i in order.iter().take(total.saturating_sub(given) as usize) {
        out[i] += 1;
    }
    out.into_iter().map(|v| v as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level with `percent`% of 100 hosts healthy.
    fn pct(percent: usize) -> Level {
        Level {
            healthy: percent,
            total: 100,
        }
    }

    fn level(healthy: usize, total: usize) -> Level {
        Level { healthy, total }
    }

    fn load(levels: &[Level]) -> Vec<u32> {
        priority_load(levels, 0).load
    }

    #[test]
    fn envoy_docs_two_levels_with_a_healthy_failover() {
        // Envoy's "Priority levels" page, first table.
        for (p0, expected) in [
            (100, [100, 0]),
            (72, [100, 0]),
            (71, [99, 1]),
            (50, [70, 30]),
            (25, [35, 65]),
            (0, [0, 100]),
        ] {
            assert_eq!(load(&[pct(p0), pct(100)]), expected, "P0 {p0}% healthy");
        }
    }

    #[test]
    fn envoy_docs_two_levels_normalised() {
        // Second table: both levels degrade; below 100 total health the
        // scores are scaled up.
        for ((p0, p1), expected) in [
            ((100, 100), [100, 0]),
            ((72, 72), [100, 0]),
            ((71, 71), [99, 1]),
            ((50, 50), [70, 30]),
            ((25, 100), [35, 65]),
            ((25, 25), [50, 50]),
        ] {
            assert_eq!(load(&[pct(p0), pct(p1)]), expected, "{p0}%/{p1}%");
        }
        // The prose's example: health {20, 30} becomes {40, 60}.
        assert_eq!(load(&[level(1, 7), level(3, 14)]), [40, 60]);
        assert_eq!(health(level(1, 7)), 20);
        assert_eq!(health(level(3, 14)), 30);
    }

    #[test]
    fn envoy_docs_three_levels() {
        for ((p0, p1, p2), expected) in [
            ((100, 100, 100), [100, 0, 0]),
            ((72, 72, 100), [100, 0, 0]),
            ((71, 71, 100), [99, 1, 0]),
            ((50, 50, 100), [70, 30, 0]),
            ((25, 100, 100), [35, 65, 0]),
            ((25, 25, 100), [35, 35, 30]),
            ((25, 25, 20), [36, 36, 28]),
        ] {
            assert_eq!(
                load(&[pct(p0), pct(p1), pct(p2)]),
                expected,
                "{p0}%/{p1}%/{p2}%"
            );
        }
        // The same with small host counts, as in Envoy's tests: 1 of 4, 1 of
        // 4, 1 of 5.
        assert_eq!(load(&[level(1, 4), level(1, 4), level(1, 5)]), [36, 36, 28]);
    }

    #[test]
    fn envoy_unit_tests_gentle_failover_with_extra_levels() {
        // load_balancer_impl_test.cc, panic threshold 50 (Envoy's default).
        let l = |levels: &[Level]| priority_load(levels, 50);
        let r = l(&[level(2, 2), level(1, 1), level(1, 1)]);
        assert_eq!((r.load, r.panic), (vec![100, 0, 0], vec![false; 3]));
        assert_eq!(
            l(&[level(1, 2), level(1, 2), level(1, 2)]).load,
            [70, 30, 0]
        );
        assert_eq!(
            l(&[level(1, 4), level(1, 4), level(1, 4)]).load,
            [35, 35, 30]
        );
        // 28 × 3 < 100 and every level below 50% healthy: total panic, the
        // split follows host counts.
        let r = l(&[level(1, 5), level(1, 5), level(1, 5)]);
        assert_eq!((r.load, r.panic), (vec![34, 33, 33], vec![true; 3]));
        // Two dead levels and a healthy one: no panic.
        let r = l(&[level(0, 5), level(0, 5), level(5, 5)]);
        assert_eq!((r.load, r.panic), (vec![0, 0, 100], vec![false; 3]));
        let r = l(&[level(0, 5), level(0, 5), level(4, 5)]);
        assert_eq!((r.load, r.panic), (vec![0, 0, 100], vec![false; 3]));
        let r = l(&[level(0, 5), level(0, 5), level(2, 5)]);
        assert_eq!((r.load, r.panic), (vec![34, 33, 33], vec![true; 3]));
    }

    #[test]
    fn envoy_unit_tests_gentle_failover() {
        let l = |levels: &[Level]| priority_load(levels, 50);
        // Total health 35 + 100 ≥ 100: P0 is below the threshold, but
        // there is no panic while the total is enough.
        let r = l(&[level(1, 4), level(2, 2)]);
        assert_eq!((r.load, r.panic), (vec![35, 65], vec![false, false]));
        let r = l(&[level(1, 4), level(1, 4)]);
        assert_eq!((r.load, r.panic), (vec![50, 50], vec![true, true]));
        // Total panic by host counts: 4 and 6 hosts.
        let r = l(&[level(0, 4), level(1, 6)]);
        assert_eq!((r.load, r.panic), (vec![40, 60], vec![true, true]));
        // Overprovisioning: 2 of 4 healthy in both levels.
        assert_eq!(l(&[level(2, 4), level(2, 4)]).load, [70, 30]);
    }

    #[test]
    fn partial_panic_keeps_the_health_split() {
        // P0 is in panic (10% < 30%) but P1 is not, so the split stays by
        // health and only P0's share goes to all of P0's hosts.
        // Health 14 and 70 scaled to 16.7 and 83.3.
        let r = priority_load(&[level(1, 10), level(3, 6)], 30);
        assert_eq!(r.load, [17, 83]);
        assert_eq!(r.panic, [true, false]);
        // The same with panic off.
        let r = priority_load(&[level(1, 10), level(3, 6)], 0);
        assert_eq!((r.load, r.panic), (vec![17, 83], vec![false, false]));
    }

    #[test]
    fn nothing_healthy() {
        // Panic off: Envoy has nowhere to send; we report it.
        let r = priority_load(&[level(0, 2), level(0, 1)], 0);
        assert!(r.stranded);
        assert_eq!(r.load, [0, 0]);
        // Panic on: total panic by host counts.
        let r = priority_load(&[level(0, 2), level(0, 1)], 1);
        assert!(!r.stranded);
        assert_eq!((r.load, r.panic), (vec![67, 33], vec![true, true]));
        // No levels at all.
        assert!(priority_load(&[], 0).stranded);
    }

    #[test]
    fn one_level_always_gets_everything_it_can() {
        // A single level is scaled to 100% however few hosts are healthy.
        assert_eq!(load(&[level(1, 10)]), [100]);
        let r = priority_load(&[level(1, 10)], 50);
        assert_eq!((r.load, r.panic), (vec![100], vec![true]));
    }

    #[test]
    fn largest_remainder_splits_exactly() {
        assert_eq!(largest_remainder(&[(1, 3), (1, 3), (1, 3)], 1), [1, 0, 0]);
        assert_eq!(largest_remainder(&[(2, 3), (2, 3), (2, 3)], 2), [1, 1, 0]);
        assert_eq!(largest_remainder(&[(30, 4), (10, 4)], 10), [8, 2]);
        assert_eq!(largest_remainder(&[(5, 9), (40, 9)], 5), [1, 4]);
    }
}
