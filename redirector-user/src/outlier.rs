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
pub(crate) enum Outcome {
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
pub(crate) enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

impl Reason {
    /// The Istio field whose threshold was reached.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive5xxErrors",
            Reason::ConsecutiveGatewayErrors => "consecutiveGatewayErrors",
            Reason::ConsecutiveLocalOriginFailures => "consecutiveLocalOriginFailures",
        }
    }
}

/// A state change worth logging and publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
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
pub(crate) struct HostState {
    pub(crate) consecutive_5xx: u32,
    pub(crate) consecutive_gateway: u32,
    pub(crate) consecutive_local_origin: u32,
    pub(crate) ejected_at: Option<Instant>,
    pub(crate) last_unejected: Option<Instant>,
    pub(crate) multiplier: u32,
    pub(crate) ejections: u32,
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
pub(crate) struct Detector<K> {
    settings: Option<Settings>,
    hosts: HashMap<K, HostState>,
    overflows: u64,
}

impl<K: Clone + Eq + Hash> Detector<K> {
    /// `None`: the DestinationRule has no `outlierDetection`; nothing is ever
    /// ejected.
    pub(crate) fn new(policy: Option<&OutlierPolicy>) -> Self {
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

    pub(crate) fn interval(&self) -> Option<Duration> {
        self.settings.as_ref().map(|s| s.interval)
    }

    /// Whether local-origin failures have their own counter.
    pub(crate) fn split_local_origin(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.split)
    }

    /// Replaces the host set: known hosts keep their state, new ones start
    /// healthy, gone ones are forgotten.
    pub(crate) fn set_hosts(&mut self, keys: impl IntoIterator<Item = K>) {
        let mut next = HashMap::new();
        for key in keys {
            let state = self.hosts.remove(&key).unwrap_or_default();
            next.insert(key, state);
        }
        self.hosts = next;
    }

    /// Carries state over from a detector of the previous config.
    pub(crate) fn adopt(&mut self, old: &Detector<K>) {
        for (key, state) in &mut self.hosts {
            if let Some(prev) = old.hosts.get(key) {
                *state = prev.clone();
            }
        }
        self.overflows = old.overflows;
    }

    pub(crate) fn state(&self, key: &K) -> Option<&HostState> {
        self.hosts.get(key)
    }

    pub(crate) fn is_ejected(&self, key: &K) -> bool {
        self.hosts.get(key).is_some_and(|h| h.ejected_at.is_some())
    }

    #[cfg(test)]
    /// Ejections `maxEjectionPercent` prevented so far.
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows
    }

    /// When the host becomes eligible for un-ejection (it happens on the
    /// first tick at or after this).
    pub(crate) fn ejected_until(&self, key: &K) -> Option<Instant> {
        let s = self.settings.as_ref()?;
        let h = self.hosts.get(key)?;
        Some(later(h.ejected_at?, ejection_time(s, h.multiplier)))
    }

    pub(crate) fn record(&mut self, key: &K, outcome: Outcome, now: Instant) -> Option<Event> {
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
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<(K, Event)> {
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

/// `at + d`, saturating: `Instant + Duration` panics past the clock's
/// range, and a panic here (under the cluster's lock) would poison the
/// cluster for every later request. Validation bounds durations far below
/// that; this holds whatever gets through.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(crate::config::MAX_DURATION))
        .unwrap_or(at)
}

fn ejection_time(s: &Settings, multiplier: u32) -> Duration {
    s.base.saturating_mul(multiplier).min(s.max)
}

/// One host's outlier state as it crosses a handover to a successor
/// daemon (see `handover.rs`): what makes an ejection last, with the
/// ejection as the time it has left (an `Instant` means nothing in another
/// process).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Carried {
    pub(crate) multiplier: u32,
    pub(crate) ejections: u32,
    /// Milliseconds of ejection left; none when not ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ejected_for_ms: Option<u64>,
}

impl<K: Clone + Eq + Hash> Detector<K> {
    /// The state worth carrying across a handover: hosts ejected, or
    /// ejected before (their multiplier makes the next ejection longer).
    pub(crate) fn export(&self, now: Instant) -> Vec<(K, Carried)> {
        let Some(s) = &self.settings else {
            return Vec::new();
        };
        self.hosts
            .iter()
            .filter(|(_, h)| h.ejected_at.is_some() || h.multiplier > 0)
            .map(|(k, h)| {
                let left = h.ejected_at.map(|at| {
                    let until = later(at, ejection_time(s, h.multiplier));
                    until.saturating_duration_since(now).as_millis() as u64
                });
                (
                    k.clone(),
                    Carried {
                        multiplier: h.multiplier,
                        ejections: h.ejections,
                        ejected_for_ms: left,
                    },
                )
            })
            .collect()
    }

    /// Takes `carried` for host `key` from a predecessor; whether it was
    /// taken (an unknown host, or a service without outlier detection,
    /// takes nothing). Values are bounded as this detector's own would be:
    /// the multiplier as far as it can grow, the time left to the longest
    /// ejection.
    pub(crate) fn import(&mut self, key: &K, carried: &Carried, now: Instant) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let Some(host) = self.hosts.get_mut(key) else {
            return false;
        };
        let mut multiplier = 0u32;
        while multiplier < carried.multiplier
            && s.base.saturating_mul(multiplier) < s.max.saturating_add(s.base)
        {
            multiplier += 1;
        }
        host.multiplier = multiplier;
        host.ejections = carried.ejections;
        host.ejected_at = carried.ejected_for_ms.map(|ms| {
            let full = ejection_time(s, multiplier);
            let left = Duration::from_millis(ms).min(full);
            // Ejected as long ago as the time already served; on a clock
            // too young for that, now (a little longer out).
            now.checked_sub(full - left).unwrap_or(now)
        });
        true
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
