//! Outlier detection: Envoy's consecutive-error ejection, host by host.
//!
//! Passive health checking decides from real traffic, so an endpoint that
//! starts failing is taken out after a run of failures and put back after
//! its ejection time, without probes. The rules follow Envoy
//! (`source/common/upstream/outlier_detection_impl.cc`) so Istio users get
//! what they configured:
//!
//! - Three detectors, each a counter of consecutive failures with its own
//!   threshold: 5xx (`consecutive5xxErrors`), gateway errors 502/503/504
//!   (`consecutiveGatewayErrors`, off unless set, as in Istio) and, with
//!   `splitExternalLocalOriginErrors`, local-origin failures
//!   (`consecutiveLocalOriginFailures`).
//! - Without the split, local-origin failures become HTTP codes, as Envoy's
//!   `resultToHttpCode` maps them: a refused or reset connect or a TLS
//!   failure is a 503, a connect timeout a 504, so both count as 5xx and as
//!   gateway errors. A connect that is the whole verdict (TCP ports) is a
//!   200; a connect under an HTTP request says nothing (the response will).
//! - With the split, local-origin failures count only toward their own
//!   counter, and any successful connect resets it; responses feed the 5xx
//!   and gateway counters alone.
//! - A response below 500 resets the 5xx and gateway counters; a 5xx that
//!   is not a gateway error resets the gateway counter (Envoy's
//!   `putHttpResponseCode`).
//! - Reaching a threshold ejects at once, not on the tick, and resets the
//!   counter that fired, ejected or not.
//! - Ejection time is `min(base × multiplier, max(300 s, base))`. The
//!   multiplier grows by one per ejection while `multiplier × base < max +
//!   base`, and shrinks by one on each interval tick that finds the host
//!   healthy at least one interval after its last un-ejection.
//! - Un-ejection happens only on interval ticks, and resets every counter.
//!   Failures while ejected never extend the ejection.
//! - `maxEjectionPercent`, when set, is Envoy's rule exactly: a host is
//!   ejected only if `100 × (ejected + 1) / hosts ≤ max`. When unset, one
//!   host may always be ejected (Envoy before 1.31; since then, Istio's
//!   default of 10% ejects nothing in a two-endpoint service, so the blog's
//!   failover would not happen), and more only while the rule holds for 10%.
//!
//! The detector is pure: callers pass `now`, so tests run on paused time.

use std::{collections::HashMap, hash::Hash, time::Duration};

use tokio::time::Instant;

use crate::config::OutlierPolicy;

/// Envoy's floor for `max_ejection_time`.
const MAX_EJECTION_TIME_FLOOR: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent`, applied beyond the first ejection
/// when `maxEjectionPercent` is unset.
const DEFAULT_MAX_EJECTION_PERCENT: u64 = 10;

/// What one attempt against a host came to, in Envoy's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection is up and a request goes out on it; the response will
    /// tell (Envoy's `LOCAL_ORIGIN_CONNECT_SUCCESS`). Only resets the
    /// local-origin counter, and only in split mode.
    Connected,
    /// A completed connect that is the whole verdict, on TCP ports (Envoy's
    /// `LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`): a 200 unsplit.
    Success,
    /// The endpoint answered with this status.
    Status(u16),
    /// Refused, reset, unreachable, TLS failure: a 503 unsplit.
    ConnectFailed,
    /// Connect timed out: a 504 unsplit.
    Timeout,
}

/// Which detector fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

impl Reason {
    /// The Istio field whose threshold was reached.
    pub fn field(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive5xxErrors",
            Reason::ConsecutiveGatewayErrors => "consecutiveGatewayErrors",
            Reason::ConsecutiveLocalOriginFailures => "consecutiveLocalOriginFailures",
        }
    }
}

/// A state change worth logging and publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Ejected {
        duration: Duration,
        reason: Reason,
    },
    /// A threshold was reached but `maxEjectionPercent` kept the host in
    /// (Envoy's `ejections_overflow`).
    EjectionOverflow {
        reason: Reason,
    },
    Unejected,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local_origin: u32,
    pub ejected_at: Option<Instant>,
    pub last_unejected: Option<Instant>,
    pub multiplier: u32,
    pub ejections: u32,
}

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    /// 0: off.
    consecutive_5xx: u32,
    /// 0: off.
    consecutive_gateway: u32,
    /// 0: not split (local failures are mapped to 503/504).
    consecutive_local_origin: u32,
    split: bool,
    interval: Duration,
    base: Duration,
    max: Duration,
    max_ejection_percent: Option<u32>,
}

/// Outlier state of every host of one service, keyed by a logical host key
/// so state survives DNS refreshes that return the same addresses.
#[derive(Debug)]
pub struct Detector<K> {
    settings: Option<Settings>,
    hosts: HashMap<K, HostState>,
    overflows: u64,
}

impl<K: Clone + Eq + Hash> Detector<K> {
    /// `None`: the DestinationRule has no `outlierDetection`; nothing is ever
    /// ejected.
    pub fn new(policy: Option<&OutlierPolicy>) -> Self {
        Self {
            settings: policy.map(|p| Settings {
                consecutive_5xx: p.consecutive_5xx,
                consecutive_gateway: p.consecutive_gateway.unwrap_or(0),
                consecutive_local_origin: p.consecutive_local_origin,
                split: p.split_external_local_origin_errors,
                interval: p.interval,
                base: p.base_ejection_time,
                max: p.base_ejection_time.max(MAX_EJECTION_TIME_FLOOR),
                max_ejection_percent: p.max_ejection_percent,
            }),
            hosts: HashMap::new(),
            overflows: 0,
        }
    }

    pub fn interval(&self) -> Option<Duration> {
        self.settings.as_ref().map(|s| s.interval)
    }

    /// Whether local-origin failures have their own counter.
    pub fn split_local_origin(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.split)
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
        self.overflows = old.overflows;
    }

    pub fn state(&self, key: &K) -> Option<&HostState> {
        self.hosts.get(key)
    }

    pub fn is_ejected(&self, key: &K) -> bool {
        self.hosts.get(key).is_some_and(|h| h.ejected_at.is_some())
    }

    /// Ejections `maxEjectionPercent` prevented so far.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// When the host becomes eligible for un-ejection (it happens on the
    /// first tick at or after this).
    pub fn ejected_until(&self, key: &K) -> Option<Instant> {
        let s = self.settings.as_ref()?;
        let h = self.hosts.get(key)?;
        Some(h.ejected_at? + ejection_time(s, h.multiplier))
    }

    pub fn record(&mut self, key: &K, outcome: Outcome, now: Instant) -> Option<Event> {
        let s = self.settings.as_ref()?;
        let host = self.hosts.get_mut(key)?;
        let fired = match (outcome, s.split) {
            (Outcome::Connected, false) => None,
            (Outcome::Connected | Outcome::Success, true) => {
                host.consecutive_local_origin = 0;
                None
            }
            (Outcome::ConnectFailed | Outcome::Timeout, true) => {
                host.consecutive_local_origin = host.consecutive_local_origin.saturating_add(1);
                reached(host.consecutive_local_origin, s.consecutive_local_origin)
                    .then_some(Reason::ConsecutiveLocalOriginFailures)
            }
            (Outcome::Success, false) => http_code(host, s, 200),
            (Outcome::ConnectFailed, false) => http_code(host, s, 503),
            (Outcome::Timeout, false) => http_code(host, s, 504),
            (Outcome::Status(code), _) => http_code(host, s, code),
        }?;
        // Envoy resets the counter that fired, whatever comes of it, so a
        // bout of errors is detected again even without a success between.
        match fired {
            Reason::Consecutive5xx => host.consecutive_5xx = 0,
            Reason::ConsecutiveGatewayErrors => host.consecutive_gateway = 0,
            Reason::ConsecutiveLocalOriginFailures => host.consecutive_local_origin = 0,
        }
        if host.ejected_at.is_some() {
            return None;
        }
        let ejected = self
            .hosts
            .values()
            .filter(|h| h.ejected_at.is_some())
            .count() as u64;
        let total = self.hosts.len() as u64;
        let allowed = match s.max_ejection_percent {
            Some(max) => 100 * (ejected + 1) <= u64::from(max) * total,
            None => ejected == 0 || 100 * (ejected + 1) <= DEFAULT_MAX_EJECTION_PERCENT * total,
        };
        if !allowed {
            self.overflows += 1;
            return Some(Event::EjectionOverflow { reason: fired });
        }
        let host = self.hosts.get_mut(key)?;
        host.ejected_at = Some(now);
        host.ejections += 1;
        if s.base.saturating_mul(host.multiplier) < s.max.saturating_add(s.base) {
            host.multiplier += 1;
        }
        Some(Event::Ejected {
            duration: ejection_time(s, host.multiplier),
            reason: fired,
        })
    }

    /// The interval timer: un-ejects hosts whose time is up and lets the
    /// multiplier of healthy hosts decay.
    pub fn tick(&mut self, now: Instant) -> Vec<(K, Event)> {
        let Some(s) = self.settings.as_ref() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for (key, host) in &mut self.hosts {
            if let Some(at) = host.ejected_at
                && now.duration_since(at) >= ejection_time(s, host.multiplier)
            {
                host.ejected_at = None;
                host.last_unejected = Some(now);
                host.consecutive_5xx = 0;
                host.consecutive_gateway = 0;
                host.consecutive_local_origin = 0;
                events.push((key.clone(), Event::Unejected));
            }
            // Healthy for a whole interval since it came back.
            if host.ejected_at.is_none()
                && host
                    .last_unejected
                    .is_some_and(|at| now.duration_since(at) >= s.interval)
            {
                host.multiplier = host.multiplier.saturating_sub(1);
            }
        }
        events
    }
}

/// Envoy's `putHttpResponseCode`: which detector, if any, reached its
/// threshold.
fn http_code(host: &mut HostState, s: &Settings, code: u16) -> Option<Reason> {
    if code < 500 {
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        return None;
    }
    if matches!(code, 502..=504) {
        host.consecutive_gateway = host.consecutive_gateway.saturating_add(1);
    } else {
        host.consecutive_gateway = 0;
    }
    host.consecutive_5xx = host.consecutive_5xx.saturating_add(1);
    let gateway = reached(host.consecutive_gateway, s.consecutive_gateway);
    let any = reached(host.consecutive_5xx, s.consecutive_5xx);
    if gateway && any {
        // Both fire on the same response; Envoy handles both events and
        // resets both counters.
        host.consecutive_5xx = 0;
    }
    if gateway {
        Some(Reason::ConsecutiveGatewayErrors)
    } else if any {
        Some(Reason::Consecutive5xx)
    } else {
        None
    }
}

/// A threshold of 0 is off.
fn reached(count: u32, threshold: u32) -> bool {
    threshold > 0 && count >= threshold
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
}
