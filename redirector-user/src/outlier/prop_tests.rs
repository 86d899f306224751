//! Random outcome sequences against outlier detection (proptest; runs in
//! a few seconds): ejections never exceed `maxEjectionPercent`.

use proptest::prelude::*;

use super::*;

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Connected),
        Just(Outcome::Success),
        Just(Outcome::ConnectFailed),
        Just(Outcome::Timeout),
        prop::sample::select(vec![200u16, 404, 500, 502, 503, 504]).prop_map(Outcome::Status),
    ]
}

fn policy() -> impl Strategy<Value = OutlierPolicy> {
    (
        0u32..5,
        prop::option::of(0u32..5),
        0u32..5,
        any::<bool>(),
        1u64..30,
        1u64..120,
        prop::option::of(0u32..=100),
    )
        .prop_map(
            |(n5xx, gateway, local, split, interval, base, max)| OutlierPolicy {
                consecutive_5xx: n5xx,
                consecutive_gateway: gateway,
                consecutive_local_origin: local,
                split_external_local_origin_errors: split,
                interval: Duration::from_secs(interval),
                base_ejection_time: Duration::from_secs(base),
                max_ejection_percent: max,
                min_health_percent: 0,
            },
        )
}

/// One step: an outcome on a host (by index, modulo the host count), the
/// seconds that pass, and whether the interval timer fires.
fn steps() -> impl Strategy<Value = Vec<(usize, Outcome, u64, bool)>> {
    prop::collection::vec((0usize..64, outcome(), 0u64..40, any::<bool>()), 0..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// With `maxEjectionPercent` set, `100 × ejected ≤ max × hosts` at
    /// every step; unset, one host at most, or 10% of them.
    #[test]
    fn ejections_never_exceed_max_ejection_percent(
        policy in policy(),
        hosts in 1usize..20,
        steps in steps(),
    ) {
        let mut d = Detector::new(Some(&policy));
        d.set_hosts(0..hosts);
        let mut now = Instant::from_std(std::time::Instant::now());
        let allowed = |ejected: usize| match policy.max_ejection_percent {
            Some(max) => 100 * ejected <= max as usize * hosts,
            None => ejected <= (hosts / 10).max(1),
        };
        for (host, outcome, secs, tick) in steps {
            now += Duration::from_secs(secs);
            let event = d.record(&(host % hosts), outcome, now);
            if tick {
                d.tick(now);
            }
            let ejected = (0..hosts).filter(|h| d.is_ejected(h)).count();
            prop_assert!(
                allowed(ejected),
                "{} of {} hosts ejected with {:?} (last event {:?})",
                ejected, hosts, policy.max_ejection_percent, event
            );
            if let Some(Event::Ejected { duration, .. }) = event {
                prop_assert!(duration <= policy.base_ejection_time.max(MAX_EJECTION_TIME_FLOOR));
            }
        }
    }
}
