//! Outlier detection: Envoy's consecutive-5xx ejection, host by host.
//!
//! Passive health checking decides from real traffic, so an endpoint that
//! starts failing is taken out after `consecutive5xxErrors` failures in a row
//! and put back after its ejection time, without probes. The rules follow
//! Envoy (`source/common/upstream/outlier_detection_impl.cc`) so Istio users
//! get what they configured:
//!
//! - Local-origin failures count as 5xx (not split mode): a refused or reset
//!   connect or a TLS failure is a 503, a connect timeout a 504. A success
//!   (status below 500; for TCP a completed connect) resets the count.
//! - Reaching the threshold ejects at once, not on the tick. The counter is
//!   reset after the attempt, ejected or not.
//! - Ejection time is `min(base × multiplier, max(300 s, base))`; the
//!   multiplier grows by one per ejection (while below the cap) and shrinks by
//!   one on every interval tick the host is not ejected.
//! - Un-ejection happens only on interval ticks, and resets the counter.
//!   Failures while ejected never extend the ejection.
//! - `maxEjectionPercent` is not configurable yet. Like Envoy before 1.31 (and
//!   unlike Envoy ≥ 1.31 with Istio's 10%), one host may always be ejected, so
//!   a two-endpoint service fails over; more only while `100 × (ejected + 1) /
//!   hosts ≤ 10`.
//!
//! The detector is pure: callers pass `now`, so tests run on paused time.

use std::{collections::HashMap, hash::Hash, time::Duration};

use tokio::time::Instant;

use crate::config::OutlierPolicy;

/// Envoy's floor for `max_ejection_time`.
const MAX_EJECTION_TIME_FLOOR: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent`, applied beyond the first ejection.
const DEFAULT_MAX_EJECTION_PERCENT: u64 = 10;

/// What one attempt against a host came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500, or a completed connect on a TCP port.
    Success,
    /// The endpoint answered with this status (≥ 500 counts as failure).
    Status(u16),
    /// Refused, reset, unreachable, TLS failure: Envoy counts a 503.
    ConnectFailed,
    /// Connect timed out: Envoy counts a 504.
    Timeout,
}

impl Outcome {
    fn is_failure(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Status(s) => s >= 500,
            Outcome::ConnectFailed | Outcome::Timeout => true,
        }
    }
}

/// A state change worth logging and publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Ejected { duration: Duration },
    Unejected,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub consecutive_5xx: u32,
    pub ejected_at: Option<Instant>,
    pub multiplier: u32,
    pub ejections: u32,
}

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    consecutive_5xx: u32,
    interval: Duration,
    base: Duration,
    max: Duration,
}

/// Outlier state of every host of one service, keyed by a logical host key
/// so state survives DNS refreshes that return the same addresses.
#[derive(Debug)]
pub struct Detector<K> {
    settings: Option<Settings>,
    hosts: HashMap<K, HostState>,
}

impl<K: Clone + Eq + Hash> Detector<K> {
    /// `None`: the DestinationRule has no `outlierDetection`; nothing is ever
    /// ejected.
    pub fn new(policy: Option<&OutlierPolicy>) -> Self {
        Self {
            settings: policy.map(|p| Settings {
                consecutive_5xx: p.consecutive_5xx,
                interval: p.interval,
                base: p.base_ejection_time,
                max: p.base_ejection_time.max(MAX_EJECTION_TIME_FLOOR),
            }),
            hosts: HashMap::new(),
        }
    }

    pub fn interval(&self) -> Option<Duration> {
        self.settings.as_ref().map(|s| s.interval)
    }

    /// Replaces the host set: known hosts keep their state, new ones start
    /// healthy, gone ones are forgotten.
    pub fn set_hosts(&mut self, keys: impl IntoIterator<Item = K>) {
        let mut next = HashMap::new();
        for key in keys {
            let state = self.hosts.remove(&key).unwrap_or_default();
            next.insert(key, state);
        }
        self.hosts = next;
    }

    /// Carries state over from a detector of the previous config.
    pub fn adopt(&mut self, old: &Detector<K>) {
        for (key, state) in &mut self.hosts {
            if let Some(prev) = old.hosts.get(key) {
                *state = prev.clone();
            }
        }
    }

    pub fn state(&self, key: &K) -> Option<&HostState> {
        self.hosts.get(key)
    }

    pub fn is_ejected(&self, key: &K) -> bool {
        self.hosts.get(key).is_some_and(|h| h.ejected_at.is_some())
    }

    /// When the host becomes eligible for un-ejection (it happens on the
    /// first tick at or after this).
    pub fn ejected_until(&self, key: &K) -> Option<Instant> {
        let s = self.settings.as_ref()?;
        let h = self.hosts.get(key)?;
        Some(h.ejected_at? + ejection_time(s, h.multiplier))
    }

    pub fn record(&mut self, key: &K, outcome: Outcome, now: Instant) -> Option<Event> {
        let settings = self.settings.as_ref()?;
        let ejected_now = self.ejected_count();
        let total = self.hosts.len() as u64;
        let host = self.hosts.get_mut(key)?;
        if !outcome.is_failure() {
            host.consecutive_5xx = 0;
            return None;
        }
        host.consecutive_5xx = host.consecutive_5xx.saturating_add(1);
        if settings.consecutive_5xx == 0 || host.consecutive_5xx < settings.consecutive_5xx {
            return None;
        }
        host.consecutive_5xx = 0;
        if host.ejected_at.is_some() {
            return None;
        }
        let allowed =
            ejected_now == 0 || 100 * (ejected_now + 1) <= DEFAULT_MAX_EJECTION_PERCENT * total;
        if !allowed {
            return None;
        }
        host.ejected_at = Some(now);
        host.ejections += 1;
        if settings.base.saturating_mul(host.multiplier) < settings.max {
            host.multiplier += 1;
        }
        Some(Event::Ejected {
            duration: ejection_time(settings, host.multiplier),
        })
    }

    /// The interval timer: un-ejects hosts whose time is up and lets the
    /// multiplier of healthy hosts decay.
    pub fn tick(&mut self, now: Instant) -> Vec<(K, Event)> {
        let Some(settings) = self.settings.as_ref() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for (key, host) in &mut self.hosts {
            match host.ejected_at {
                None => host.multiplier = host.multiplier.saturating_sub(1),
                Some(at) if now.duration_since(at) >= ejection_time(settings, host.multiplier) => {
                    host.ejected_at = None;
                    host.consecutive_5xx = 0;
                    events.push((key.clone(), Event::Unejected));
                }
                Some(_) => {}
            }
        }
        events
    }

    fn ejected_count(&self) -> u64 {
        self.hosts
            .values()
            .filter(|h| h.ejected_at.is_some())
            .count() as u64
    }
}

fn ejection_time(s: &Settings, multiplier: u32) -> Duration {
    s.base.saturating_mul(multiplier).min(s.max)
}

#[cfg(test)]
mod tests {
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
        let mut d = Detector::new(Some(&policy(n, 10, 30)));
        d.set_hosts(hosts.iter().copied());
        d
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
            Some(Event::Ejected {
                duration: Duration::from_secs(30)
            })
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
    }

    #[tokio::test(start_paused = true)]
    async fn status_below_500_is_success() {
        let mut d = detector(1, &["a", "b"]);
        assert_eq!(d.record(&"a", Outcome::Status(404), Instant::now()), None);
        assert_eq!(d.record(&"a", Outcome::Status(499), Instant::now()), None);
        assert!(!d.is_ejected(&"a"));
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
    async fn unejection_resets_the_counter() {
        let mut d = detector(2, &["a", "b"]);
        d.record(&"a", Outcome::Timeout, Instant::now());
        d.record(&"a", Outcome::Timeout, Instant::now());
        d.record(&"a", Outcome::Timeout, Instant::now()); // while ejected
        ticks_until_unejected(&mut d, "a").await;
        assert_eq!(d.state(&"a").unwrap().consecutive_5xx, 0);
        // One new failure is not enough to re-eject.
        assert_eq!(d.record(&"a", Outcome::Timeout, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_backs_off_and_decays() {
        let mut d = detector(1, &["a", "b"]);
        // 1st ejection: 30 s, 2nd right after: 60 s, 3rd: 90 s.
        for expected in [30, 60, 90] {
            let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
            assert_eq!(
                ev,
                Some(Event::Ejected {
                    duration: Duration::from_secs(expected)
                })
            );
            let took = ticks_until_unejected(&mut d, "a").await;
            assert!(took >= Duration::from_secs(expected), "{took:?}");
            assert!(took < Duration::from_secs(expected + 10), "{took:?}");
        }
        // Healthy ticks decay the multiplier by one each.
        assert_eq!(d.state(&"a").unwrap().multiplier, 3);
        advance(Duration::from_secs(10)).await;
        d.tick(Instant::now());
        advance(Duration::from_secs(10)).await;
        d.tick(Instant::now());
        assert_eq!(d.state(&"a").unwrap().multiplier, 1);
        let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
        assert_eq!(
            ev,
            Some(Event::Ejected {
                duration: Duration::from_secs(60)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_is_capped_at_max_of_300s_and_base() {
        let mut d = detector(1, &["a", "b"]);
        let mut last = Duration::ZERO;
        for _ in 0..15 {
            if let Some(Event::Ejected { duration }) =
                d.record(&"a", Outcome::ConnectFailed, Instant::now())
            {
                last = duration;
            }
            ticks_until_unejected(&mut d, "a").await;
        }
        assert_eq!(last, Duration::from_secs(300));
        // A base above 300 s is its own cap.
        let mut d = Detector::new(Some(&policy(1, 10, 400)));
        d.set_hosts(["a", "b"]);
        let ev = d.record(&"a", Outcome::ConnectFailed, Instant::now());
        assert_eq!(
            ev,
            Some(Event::Ejected {
                duration: Duration::from_secs(400)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_host_may_always_be_ejected_then_ten_percent() {
        // Two hosts: the first ejection is allowed (the blog must fail
        // over), the second would be 100% > 10%.
        let mut d = detector(1, &["a", "b"]);
        assert!(
            d.record(&"a", Outcome::ConnectFailed, Instant::now())
                .is_some()
        );
        assert!(
            d.record(&"b", Outcome::ConnectFailed, Instant::now())
                .is_none()
        );
        assert!(!d.is_ejected(&"b"));
        // Twenty hosts: 100 × 2 / 20 = 10% ≤ 10% allows a second one, not a
        // third.
        let keys: Vec<&'static str> = (0..20)
            .map(|i| &*Box::leak(format!("h{i}").into_boxed_str()))
            .collect();
        let mut d = Detector::new(Some(&policy(1, 10, 30)));
        d.set_hosts(keys.iter().copied());
        let now = Instant::now();
        assert!(d.record(&keys[0], Outcome::Timeout, now).is_some());
        assert!(d.record(&keys[1], Outcome::Timeout, now).is_some());
        assert!(d.record(&keys[2], Outcome::Timeout, now).is_none());
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
}
