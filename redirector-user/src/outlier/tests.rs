use super::*;
use tokio::time::advance;

fn policy(n: u32, interval: u64, base: u64) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_5xx: n,
        interval: Duration::from_secs(interval),
        base_ejection_time: Duration::from_secs(base),
        ..OutlierPolicy::default()
    }
}

fn detector(n: u32, hosts: &[&'static str]) -> Detector<&'static str> {
    with_policy(policy(n, 10, 30), hosts)
}

fn with_policy(p: OutlierPolicy, hosts: &[&'static str]) -> Detector<&'static str> {
    let mut d = Detector::new(Some(&p));
    d.set_hosts(hosts.iter().copied());
    d
}

fn ejected(secs: u64, reason: Reason) -> Option<Event> {
    Some(Event::Ejected {
        duration: Duration::from_secs(secs),
        reason,
    })
}

fn many(n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("h{i}").into_boxed_str()))
        .collect()
}

/// Ticks every `interval` until `key` is un-ejected; returns elapsed.
async fn ticks_until_unejected(d: &mut Detector<&'static str>, key: &'static str) -> Duration {
    let start = Instant::now();
    let interval = d.interval().unwrap();
    for _ in 0..1000 {
        advance(interval).await;
        if d.tick(Instant::now())
            .iter()
            .any(|(k, e)| *k == key && *e == Event::Unejected)
        {
            return start.elapsed();
        }
    }
    panic!("{key} never un-ejected");
}

#[tokio::test(start_paused = true)]
async fn ejects_after_consecutive_failures() {
    let mut d = detector(3, &["a", "b"]);
    let now = Instant::now();
    assert_eq!(d.record(&"a", Outcome::Status(500), now), None);
    assert_eq!(d.record(&"a", Outcome::ConnectFailed, now), None);
    assert_eq!(
        d.record(&"a", Outcome::Timeout, now),
        ejected(30, Reason::Consecutive5xx)
    );
    assert!(d.is_ejected(&"a"));
    assert!(!d.is_ejected(&"b"));
}

#[tokio::test(start_paused = true)]
async fn a_success_between_failures_resets_the_count() {
    // Envoy: consecutive 5xx means consecutive; a 200 in between resets.
    let mut d = detector(3, &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::Status(503), now);
    d.record(&"a", Outcome::Status(502), now);
    d.record(&"a", Outcome::Status(200), now);
    d.record(&"a", Outcome::Status(503), now);
    assert_eq!(d.record(&"a", Outcome::Status(504), now), None);
    assert!(!d.is_ejected(&"a"));
    assert_eq!(d.state(&"a").unwrap().consecutive_5xx, 2);
    // A completed TCP connect is a 200 too.
    d.record(&"a", Outcome::Success, now);
    assert_eq!(d.state(&"a").unwrap().consecutive_5xx, 0);
}

#[tokio::test(start_paused = true)]
async fn status_below_500_is_success() {
    let mut d = detector(1, &["a", "b"]);
    assert_eq!(d.record(&"a", Outcome::Status(404), Instant::now()), None);
    assert_eq!(d.record(&"a", Outcome::Status(499), Instant::now()), None);
    assert!(!d.is_ejected(&"a"));
}

#[tokio::test(start_paused = true)]
async fn a_connect_under_a_request_says_nothing_unsplit() {
    // The HTTP response decides; the connect before it neither counts
    // nor resets (Envoy maps LOCAL_ORIGIN_CONNECT_SUCCESS to no code).
    let mut d = detector(2, &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::Status(500), now);
    assert_eq!(d.record(&"a", Outcome::Connected, now), None);
    assert_eq!(d.state(&"a").unwrap().consecutive_5xx, 1);
    assert_eq!(
        d.record(&"a", Outcome::Status(500), now),
        ejected(30, Reason::Consecutive5xx)
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_eject_while_5xx_is_off() {
    let p = OutlierPolicy {
        consecutive_5xx: 0,
        consecutive_gateway: Some(2),
        ..OutlierPolicy::default()
    };
    let mut d = with_policy(p, &["a", "b"]);
    let now = Instant::now();
    // 500 and 501 are 5xx but not gateway errors.
    for _ in 0..10 {
        assert_eq!(d.record(&"a", Outcome::Status(500), now), None);
    }
    d.record(&"a", Outcome::Status(502), now);
    assert_eq!(
        d.record(&"a", Outcome::Status(504), now),
        ejected(30, Reason::ConsecutiveGatewayErrors)
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_gateway_5xx_resets_the_gateway_count_only() {
    // Envoy's putHttpResponseCode: 500 resets the gateway counter but
    // still counts as a 5xx.
    let p = OutlierPolicy {
        consecutive_5xx: 4,
        consecutive_gateway: Some(2),
        ..OutlierPolicy::default()
    };
    let mut d = with_policy(p, &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::Status(503), now);
    d.record(&"a", Outcome::Status(500), now);
    assert_eq!(d.record(&"a", Outcome::Status(503), now), None);
    let s = d.state(&"a").unwrap();
    assert_eq!((s.consecutive_gateway, s.consecutive_5xx), (1, 3));
    // The fourth 5xx in a row trips the 5xx detector...
    assert_eq!(
        d.record(&"a", Outcome::Status(500), now),
        ejected(30, Reason::Consecutive5xx)
    );
}

#[tokio::test(start_paused = true)]
async fn unsplit_local_failures_are_gateway_errors() {
    // A refused connect is a 503 and a timeout a 504: both gateway
    // errors when not split.
    let p = OutlierPolicy {
        consecutive_5xx: 0,
        consecutive_gateway: Some(2),
        ..OutlierPolicy::default()
    };
    let mut d = with_policy(p, &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::ConnectFailed, now);
    assert_eq!(
        d.record(&"a", Outcome::Timeout, now),
        ejected(30, Reason::ConsecutiveGatewayErrors)
    );
}

fn split(local: u32, n5xx: u32) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_5xx: n5xx,
        consecutive_local_origin: local,
        split_external_local_origin_errors: true,
        ..OutlierPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn split_local_failures_count_only_on_their_own() {
    let mut d = with_policy(split(3, 1), &["a", "b"]);
    let now = Instant::now();
    // With 5xx at 1, an unsplit detector would have ejected at once.
    assert_eq!(d.record(&"a", Outcome::ConnectFailed, now), None);
    assert_eq!(d.record(&"a", Outcome::Timeout, now), None);
    let s = d.state(&"a").unwrap();
    assert_eq!((s.consecutive_local_origin, s.consecutive_5xx), (2, 0));
    assert_eq!(
        d.record(&"a", Outcome::ConnectFailed, now),
        ejected(30, Reason::ConsecutiveLocalOriginFailures)
    );
}

#[tokio::test(start_paused = true)]
async fn split_a_successful_connect_resets_the_local_count() {
    let mut d = with_policy(split(2, 5), &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::ConnectFailed, now);
    // A connect that worked, even if the response is then a 5xx.
    d.record(&"a", Outcome::Connected, now);
    d.record(&"a", Outcome::Status(503), now);
    assert_eq!(d.record(&"a", Outcome::ConnectFailed, now), None);
    let s = d.state(&"a").unwrap();
    assert_eq!((s.consecutive_local_origin, s.consecutive_5xx), (1, 1));
    // A response alone does not reset the local count...
    d.record(&"a", Outcome::Status(200), now);
    assert_eq!(d.state(&"a").unwrap().consecutive_local_origin, 1);
    // ...and a 200 resets 5xx but leaves local-origin alone.
    assert_eq!(d.state(&"a").unwrap().consecutive_5xx, 0);
    assert!(d.record(&"a", Outcome::Timeout, now).is_some());
}

#[tokio::test(start_paused = true)]
async fn split_responses_still_count_as_5xx() {
    let mut d = with_policy(split(5, 2), &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::Connected, now);
    d.record(&"a", Outcome::Status(500), now);
    d.record(&"a", Outcome::Connected, now);
    assert_eq!(
        d.record(&"a", Outcome::Status(500), now),
        ejected(30, Reason::Consecutive5xx)
    );
}

#[tokio::test(start_paused = true)]
async fn unejection_waits_for_the_tick() {
    // Blog settings: eject on the first 5xx, interval 15 s, base 1 m.
    let mut d = Detector::new(Some(&policy(1, 15, 60)));
    d.set_hosts(["east", "west"]);
    d.record(&"east", Outcome::ConnectFailed, Instant::now());
    // At exactly 60 s nothing happens without a tick...
    advance(Duration::from_secs(60)).await;
    assert!(d.is_ejected(&"east"));
    // ...and ticks come every 15 s from the start, so un-ejection lands
    // in the 60..75 s window the blog describes.
    let mut d = Detector::new(Some(&policy(1, 15, 60)));
    d.set_hosts(["east", "west"]);
    advance(Duration::from_secs(7)).await; // eject mid-interval
    d.record(&"east", Outcome::ConnectFailed, Instant::now());
    let ejected_at = Instant::now();
    let mut t = Duration::from_secs(0);
    loop {
        let next_tick = Duration::from_secs(15) * (t.as_secs() as u32 / 15 + 1);
        advance(next_tick - t).await;
        t = next_tick;
        if !d.tick(Instant::now()).is_empty() {
            break;
        }
    }
    let took = ejected_at.elapsed();
    assert!(
        took >= Duration::from_secs(60) && took < Duration::from_secs(75),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_while_ejected_do_not_extend_the_ejection() {
    let mut d = detector(1, &["a", "b"]);
    d.record(&"a", Outcome::Timeout, Instant::now());
    advance(Duration::from_secs(20)).await;
    assert_eq!(d.record(&"a", Outcome::Timeout, Instant::now()), None);
    assert_eq!(d.state(&"a").unwrap().ejections, 1);
    // Base 30 s, ticks every 10 s: out at the 30 s tick, not 50 s.
    advance(Duration::from_secs(10)).await;
    assert_eq!(d.tick(Instant::now()), vec![("a", Event::Unejected)]);
}

#[tokio::test(start_paused = true)]
async fn unejection_resets_every_counter() {
    let p = OutlierPolicy {
        consecutive_5xx: 3,
        consecutive_gateway: Some(3),
        ..policy(3, 10, 30)
    };
    let mut d = with_policy(p, &["a", "b"]);
    for _ in 0..3 {
        d.record(&"a", Outcome::Timeout, Instant::now());
    }
    assert!(d.is_ejected(&"a"));
    d.record(&"a", Outcome::Timeout, Instant::now()); // while ejected
    d.record(&"a", Outcome::Status(502), Instant::now());
    ticks_until_unejected(&mut d, "a").await;
    let s = d.state(&"a").unwrap();
    assert_eq!((s.consecutive_5xx, s.consecutive_gateway), (0, 0));
    // Two new failures are not enough to re-eject.
    d.record(&"a", Outcome::Timeout, Instant::now());
    assert_eq!(d.record(&"a", Outcome::Timeout, Instant::now()), None);
    // Same for the split local-origin counter.
    let mut d = with_policy(split(2, 5), &["a", "b"]);
    d.record(&"a", Outcome::Timeout, Instant::now());
    d.record(&"a", Outcome::Timeout, Instant::now());
    d.record(&"a", Outcome::Timeout, Instant::now()); // while ejected
    ticks_until_unejected(&mut d, "a").await;
    assert_eq!(d.state(&"a").unwrap().consecutive_local_origin, 0);
    assert_eq!(d.record(&"a", Outcome::Timeout, Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn ejection_time_backs_off_and_decays() {
    let mut d = detector(1, &["a", "b"]);
    // 1st ejection: 30 s, 2nd right after: 60 s, 3rd: 90 s.
    for expected in [30, 60, 90] {
        let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
        assert_eq!(ev, ejected(expected, Reason::Consecutive5xx));
        let took = ticks_until_unejected(&mut d, "a").await;
        assert!(took >= Duration::from_secs(expected), "{took:?}");
        assert!(took < Duration::from_secs(expected + 10), "{took:?}");
    }
    // The tick that un-ejects does not decay; each later one does.
    assert_eq!(d.state(&"a").unwrap().multiplier, 3);
    advance(Duration::from_secs(10)).await;
    d.tick(Instant::now());
    advance(Duration::from_secs(10)).await;
    d.tick(Instant::now());
    assert_eq!(d.state(&"a").unwrap().multiplier, 1);
    let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
    assert_eq!(ev, ejected(60, Reason::Consecutive5xx));
}

#[tokio::test(start_paused = true)]
async fn a_host_never_ejected_does_not_decay_below_zero() {
    let mut d = detector(1, &["a", "b"]);
    for _ in 0..3 {
        advance(Duration::from_secs(10)).await;
        d.tick(Instant::now());
    }
    assert_eq!(d.state(&"a").unwrap().multiplier, 0);
    assert_eq!(
        d.record(&"a", Outcome::Timeout, Instant::now()),
        ejected(30, Reason::Consecutive5xx)
    );
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped_at_max_of_300s_and_base() {
    let mut d = detector(1, &["a", "b"]);
    let mut last = Duration::ZERO;
    for _ in 0..15 {
        if let Some(Event::Ejected { duration, .. }) =
            d.record(&"a", Outcome::ConnectFailed, Instant::now())
        {
            last = duration;
        }
        ticks_until_unejected(&mut d, "a").await;
    }
    assert_eq!(last, Duration::from_secs(300));
    // Envoy stops the multiplier once base × m reaches max + base: 11
    // for 30 s and 300 s, so one healthy interval still leaves 300 s.
    assert_eq!(d.state(&"a").unwrap().multiplier, 11);
    advance(Duration::from_secs(10)).await;
    d.tick(Instant::now());
    assert_eq!(d.state(&"a").unwrap().multiplier, 10);
    assert_eq!(
        d.record(&"a", Outcome::ConnectFailed, Instant::now()),
        ejected(300, Reason::Consecutive5xx)
    );
    // A base above 300 s is its own cap.
    let mut d = with_policy(policy(1, 10, 400), &["a", "b"]);
    let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
    assert_eq!(ev, ejected(400, Reason::Consecutive5xx));
}

#[tokio::test(start_paused = true)]
async fn unset_max_ejection_percent_allows_one_host_then_ten_percent() {
    // Two hosts: the first ejection is allowed (the blog must fail
    // over), the second would be 100% > 10%.
    let mut d = detector(1, &["a", "b"]);
    assert!(matches!(
        d.record(&"a", Outcome::ConnectFailed, Instant::now()),
        Some(Event::Ejected { .. })
    ));
    assert_eq!(
        d.record(&"b", Outcome::ConnectFailed, Instant::now()),
        Some(Event::EjectionOverflow {
            reason: Reason::Consecutive5xx
        })
    );
    assert!(!d.is_ejected(&"b"));
    assert_eq!(d.overflows(), 1);
    // Twenty hosts: 100 × 2 / 20 = 10% ≤ 10% allows a second one, not a
    // third.
    let keys = many(20);
    let mut d = with_policy(policy(1, 10, 30), &keys);
    let now = Instant::now();
    assert!(matches!(
        d.record(&keys[0], Outcome::Timeout, now),
        Some(Event::Ejected { .. })
    ));
    assert!(matches!(
        d.record(&keys[1], Outcome::Timeout, now),
        Some(Event::Ejected { .. })
    ));
    assert!(matches!(
        d.record(&keys[2], Outcome::Timeout, now),
        Some(Event::EjectionOverflow { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn set_max_ejection_percent_is_exact() {
    let at = |max: u32, hosts: usize| {
        let keys = many(hosts);
        let mut d = with_policy(
            OutlierPolicy {
                max_ejection_percent: Some(max),
                ..policy(1, 10, 30)
            },
            &keys,
        );
        keys.iter()
            .filter(|k| {
                matches!(
                    d.record(k, Outcome::ConnectFailed, Instant::now()),
                    Some(Event::Ejected { .. })
                )
            })
            .count()
    };
    // 4 hosts: 100 × 2 / 4 = 50 ≤ 50 but 75 > 74.
    assert_eq!(at(50, 4), 2);
    assert_eq!(at(74, 4), 2);
    assert_eq!(at(75, 4), 3);
    assert_eq!(at(100, 4), 4);
    // Set explicitly, there is no first-host exemption: 100 × 1 / 2 =
    // 50 > 49, as on Envoy ≥ 1.31.
    assert_eq!(at(49, 2), 0);
    assert_eq!(at(10, 3), 0);
    assert_eq!(at(34, 3), 1);
}

#[tokio::test(start_paused = true)]
async fn denied_host_gets_another_chance_after_threshold_more_failures() {
    let mut d = detector(2, &["a", "b"]);
    let now = Instant::now();
    d.record(&"a", Outcome::Timeout, now);
    d.record(&"a", Outcome::Timeout, now); // a ejected
    d.record(&"b", Outcome::Timeout, now);
    d.record(&"b", Outcome::Timeout, now); // denied: 2 of 2
    assert_eq!(d.state(&"b").unwrap().consecutive_5xx, 0);
    ticks_until_unejected(&mut d, "a").await;
    d.record(&"b", Outcome::Timeout, Instant::now());
    assert!(d.record(&"b", Outcome::Timeout, Instant::now()).is_some());
}

#[tokio::test(start_paused = true)]
async fn zero_threshold_and_no_policy_never_eject() {
    let mut d = detector(0, &["a", "b"]);
    for _ in 0..10 {
        assert_eq!(d.record(&"a", Outcome::Status(503), Instant::now()), None);
    }
    let mut d: Detector<&str> = Detector::new(None);
    d.set_hosts(["a", "b"]);
    assert_eq!(d.record(&"a", Outcome::Status(503), Instant::now()), None);
    assert!(d.tick(Instant::now()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn state_survives_a_host_set_with_the_same_keys() {
    let mut d = detector(1, &["a", "b"]);
    d.record(&"a", Outcome::ConnectFailed, Instant::now());
    d.set_hosts(["b", "a", "c"]);
    assert!(d.is_ejected(&"a"));
    d.set_hosts(["b", "c"]);
    d.set_hosts(["a", "b", "c"]);
    assert!(!d.is_ejected(&"a"), "a host that left starts fresh");
}

/// Whatever durations get this far (validation bounds them; this is the
/// defence behind it), recording, ticking and reading the ejection time
/// never panic: a panic here holds the cluster's lock and poisons it.
#[tokio::test(start_paused = true)]
async fn extreme_durations_never_panic() {
    for (interval, base) in [
        (Duration::MAX, Duration::MAX),
        (Duration::from_nanos(1), Duration::MAX),
        (Duration::MAX, Duration::from_nanos(1)),
        (crate::config::MAX_DURATION, crate::config::MAX_DURATION),
        (
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(u64::MAX / 3),
        ),
    ] {
        let p = OutlierPolicy {
            consecutive_5xx: 1,
            interval,
            base_ejection_time: base,
            max_ejection_percent: Some(100),
            ..OutlierPolicy::default()
        };
        let mut d = with_policy(p, &["a", "b"]);
        for round in 0..5 {
            let now = Instant::now();
            let event = d.record(&"a", Outcome::Status(503), now);
            if round == 0 {
                assert!(
                    matches!(event, Some(Event::Ejected { .. })),
                    "{interval:?}/{base:?}: {event:?}"
                );
            }
            let until = d.ejected_until(&"a").expect("ejected");
            assert!(until >= now, "{interval:?}/{base:?}");
            d.tick(now);
            advance(Duration::from_secs(3600)).await;
            d.tick(Instant::now());
        }
    }
}
