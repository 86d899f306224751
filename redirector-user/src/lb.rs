//! Choosing hosts for new connections and requests, as Envoy does for a
//! cluster Istio configured: a priority level by Envoy's priority load
//! (spillover with overprovisioning 1.4, panic threshold), then a locality
//! by its weight, then a host by the `loadBalancer.simple` algorithm.
//!
//! The balancer returns an *attempt order*, not a single pick: a connect
//! that fails before any byte reached the app is retried on the next host
//! without the app noticing. The order is the pick, then the other healthy
//! hosts of its priority, then the healthy hosts of the other priorities,
//! lowest first (and, when the pick's level is in panic, its unhealthy
//! hosts last). Envoy would make a fresh pick per retry; trying the rest in
//! priority order is close to it and needs no extra state.
//!
//! Algorithms within a (priority, locality):
//! - ROUND_ROBIN: in turn when all weights are equal, else Envoy's
//!   earliest-deadline-first schedule, so weights 3:1 give a, a, a, b, ….
//! - LEAST_REQUEST: equal weights: two random hosts, the one with fewer
//!   active requests (Envoy's P2C; a tie keeps the first). Unequal weights:
//!   EDF with weight / (active + 1), Envoy's default `active_request_bias`
//!   of 1.
//! - RANDOM: a uniformly random host; like Envoy it ignores endpoint
//!   weights (locality weights still apply).
//!
//! When no host is healthy and panic is off, Envoy has nothing to send to
//! and answers 503. We try every host in priority order instead: a guess
//! beats a certain error (documented as a deviation).
//!
//! Everything here is pure: the caller passes the hosts' health, the
//! random source and the active request counts, so tests are exact.

mod edf;
pub(crate) mod priority;

use rand::{Rng, RngExt};

use crate::config::LbAlgorithm;
use edf::Edf;
pub(crate) use priority::{Level, PriorityLoad, priority_load};

/// What the balancer needs to know about one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostView {
    /// Index of its locality group, which also gives its priority.
    pub(crate) group: usize,
    pub(crate) healthy: bool,
    /// The endpoint's weight, at least 1.
    pub(crate) weight: u32,
}

/// The hosts of one locality at one priority (Envoy's
/// `LocalityLbEndpoints`), with the locality's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) priority: u8,
    pub(crate) weight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) algorithm: LbAlgorithm,
    /// Istio's `minHealthPercent`; 0 turns panic off.
    pub(crate) panic_threshold: u32,
    /// Envoy's locality weighted load balancing: a locality is chosen by
    /// weight before a host. Istio turns it on whenever locality load
    /// balancing is enabled.
    pub(crate) locality_weighted: bool,
}

/// The balancer for one state of a cluster's hosts. Build a new one when
/// hosts or their health change; it keeps the round-robin and EDF state
/// between picks.
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: Policy,
    hosts: Vec<HostView>,
    load: PriorityLoad,
    levels: Vec<LevelState>,
    /// Rotates fallbacks, so retries do not all land on one host.
    turn: usize,
}

#[derive(Debug, Default)]
struct LevelState {
    /// Every host of the level, in host order.
    all: Vec<usize>,
    /// Where this level's traffic goes: sources[0] is the whole level (its
    /// healthy hosts, or all of them in panic); with locality weighting,
    /// one more source per locality that has healthy hosts.
    sources: Vec<Source>,
    /// Picks a locality source (index into `sources`, with its effective
    /// weight) by weight.
    localities: Edf<(usize, f64)>,
}

#[derive(Debug)]
struct Source {
    hosts: Vec<usize>,
    /// Unequal weights: picks go through `edf`.
    weighted: bool,
    edf: Edf<usize>,
    next: usize,
}

impl Source {
    fn new(hosts: Vec<usize>, views: &[HostView]) -> Self {
        let weighted = hosts
            .windows(2)
            .any(|w| views[w[0]].weight != views[w[1]].weight);
        let mut edf = Edf::default();
        if weighted {
            for &h in &hosts {
                edf.add(h, f64::from(views[h].weight));
            }
        }
        Source {
            hosts,
            weighted,
            edf,
            next: 0,
        }
    }
}

impl Balancer {
    pub(crate) fn new(hosts: Vec<HostView>, groups: &[Group], policy: Policy) -> Self {
        let levels_n = groups
            .iter()
            .map(|g| usize::from(g.priority) + 1)
            .max()
            .unwrap_or(0);
        let mut counts = vec![Level::default(); levels_n];
        for h in &hosts {
            let l = &mut counts[usize::from(groups[h.group].priority)];
            l.total += 1;
            l.healthy += usize::from(h.healthy);
        }
        let load = priority_load(&counts, policy.panic_threshold);
        let mut levels: Vec<LevelState> = (0..levels_n).map(|_| LevelState::default()).collect();
        for (i, h) in hosts.iter().enumerate() {
            levels[usize::from(groups[h.group].priority)].all.push(i);
        }
        for (p, level) in levels.iter_mut().enumerate() {
            let panic = load.panic.get(p).copied().unwrap_or(false);
            let eligible: Vec<usize> = level
                .all
                .iter()
                .copied()
                .filter(|&i| panic || hosts[i].healthy)
                .collect();
            level.sources.push(Source::new(eligible, &hosts));
            if policy.locality_weighted && !panic {
                for (g, weight) in locality_weights(&hosts, groups, &level.all) {
                    let members: Vec<usize> = level
                        .all
                        .iter()
                        .copied()
                        .filter(|&i| hosts[i].group == g && hosts[i].healthy)
                        .collect();
                    level.sources.push(Source::new(members, &hosts));
                    level
                        .localities
                        .add((level.sources.len() - 1, weight), weight);
                }
            }
        }
        Balancer {
            policy,
            hosts,
            load,
            levels,
            turn: 0,
        }
    }

    /// Health of each host as the balancer was built with.
    pub(crate) fn health(&self) -> impl Iterator<Item = bool> + '_ {
        self.hosts.iter().map(|h| h.healthy)
    }

    #[cfg(test)]
    pub(crate) fn priority_load(&self) -> &PriorityLoad {
        &self.load
    }

    /// Host indices in the order one new connection (or request) should try
    /// them. `active(i)` is host i's number of requests in flight.
    pub(crate) fn attempt_order<R: Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        active: impl Fn(usize) -> u32,
    ) -> Vec<usize> {
        self.turn = self.turn.wrapping_add(1);
        if self.load.stranded {
            return self.last_resort();
        }
        let Some(p) = self.choose_priority(rng) else {
            return Vec::new();
        };
        let Some(first) = self.choose_host(p, rng, &active) else {
            return self.fallbacks(None, p);
        };
        let mut order = vec![first];
        order.extend(self.fallbacks(Some(first), p));
        order
    }

    /// Envoy's `choosePriority`: a number in 1..=100 against the running
    /// sum of the levels' loads.
    fn choose_priority<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let roll: u32 = rng.random_range(1..=100);
        let mut sum = 0;
        self.load.load.iter().position(|&l| {
            sum += l;
            roll <= sum
        })
    }

    fn choose_host<R: Rng + ?Sized>(
        &mut self,
        p: usize,
        rng: &mut R,
        active: &impl Fn(usize) -> u32,
    ) -> Option<usize> {
        let algorithm = self.policy.algorithm;
        let hosts = &self.hosts;
        let level = &mut self.levels[p];
        // Locality weights only change with health, which rebuilds the
        // balancer: each goes back with the weight it had.
        let source = level
            .localities
            .pick_and_add(|&(_, w)| w)
            .map_or(0, |(s, _)| s);
        let src = &mut level.sources[source];
        if src.hosts.is_empty() {
            return None;
        }
        let weight = |h: usize| f64::from(hosts[h].weight);
        Some(match algorithm {
            LbAlgorithm::Random => src.hosts[rng.random_range(0..src.hosts.len())],
            LbAlgorithm::LeastRequest if src.weighted => src
                .edf
                .pick_and_add(|&h| weight(h) / f64::from(active(h).saturating_add(1)))?,
            LbAlgorithm::LeastRequest => {
                let n = src.hosts.len();
                let a = src.hosts[rng.random_range(0..n)];
                let b = src.hosts[rng.random_range(0..n)];
                if active(b) < active(a) { b } else { a }
            }
            // PASSTHROUGH never reaches a cluster (config validation
            // rejects it); balance it like round robin if it ever did.
            LbAlgorithm::RoundRobin | LbAlgorithm::Passthrough if src.weighted => {
                src.edf.pick_and_add(|&h| weight(h))?
            }
            LbAlgorithm::RoundRobin | LbAlgorithm::Passthrough => {
                let h = src.hosts[src.next % src.hosts.len()];
                src.next = src.next.wrapping_add(1);
                h
            }
        })
    }

    /// After `first` (in level `p`): the other healthy hosts of `p`, then
    /// the healthy hosts of the other levels, lowest priority first, then
    /// (if `p` is in panic) the rest of `p`.
    fn fallbacks(&self, first: Option<usize>, p: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let healthy = |l: usize| -> Vec<usize> {
            let hosts: Vec<usize> = self.levels[l]
                .all
                .iter()
                .copied()
                .filter(|&i| self.hosts[i].healthy && Some(i) != first)
                .collect();
            rotate(hosts, self.turn)
        };
        out.extend(healthy(p));
        for l in (0..self.levels.len()).filter(|&l| l != p) {
            out.extend(healthy(l));
        }
        if self.load.panic.get(p).copied().unwrap_or(false) {
            let rest: Vec<usize> = self.levels[p]
                .all
                .iter()
                .copied()
                .filter(|&i| !self.hosts[i].healthy && Some(i) != first)
                .collect();
            out.extend(rotate(rest, self.turn));
        }
        out
    }

    /// Nothing healthy and panic off: every host, lowest priority first.
    fn last_resort(&self) -> Vec<usize> {
        self.levels
            .iter()
            .flat_map(|l| rotate(l.all.clone(), self.turn))
            .collect()
    }
}

/// `v` started at position `turn % len`.
fn rotate(mut v: Vec<usize>, turn: usize) -> Vec<usize> {
    if !v.is_empty() {
        let k = turn % v.len();
        v.rotate_left(k);
    }
    v
}

/// Envoy's effective locality weights within one level (`all` are its
/// hosts): the locality weight × min(1, 1.4 × healthy / total), for each
/// group with a positive result, in group order.
fn locality_weights(hosts: &[HostView], groups: &[Group], all: &[usize]) -> Vec<(usize, f64)> {
    let mut ids: Vec<usize> = all.iter().map(|&i| hosts[i].group).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|g| {
            let members = all.iter().filter(|&&i| hosts[i].group == g);
            let total = members.clone().count();
            let healthy = members.filter(|&&i| hosts[i].healthy).count();
            let factor = priority::OVERPROVISIONING_FACTOR as f64 / 100.0;
            let availability = (factor * healthy as f64 / total as f64).min(1.0);
            let weight = groups[g].weight as f64 * availability;
            (weight > 0.0).then_some((g, weight))
        })
        .collect()
}

/// A table of `n` host indices whose proportions follow what the balancer
/// would do on average: the priority load, then locality weights, then
/// host weights (equal shares for RANDOM, as Envoy ignores weights there).
/// Only hosts that may get traffic appear: healthy ones, or all hosts of a
/// level in panic. With no healthy host and panic off, every host appears
/// by host count (the proxy's last resort). Entries are interleaved, so a
/// rotating index spreads consecutive picks. Empty without hosts.
///
/// Hosts whose share is below one slot may get none; LEAST_REQUEST becomes
/// its weights' proportions (a table cannot see active requests).
pub(crate) fn slot_table(
    hosts: &[HostView],
    groups: &[Group],
    policy: &Policy,
    n: usize,
) -> Vec<usize> {
    if hosts.is_empty() || n == 0 {
        return Vec::new();
    }
    let balancer = Balancer::new(hosts.to_vec(), groups, *policy);
    let mut share = vec![0.0f64; hosts.len()];
    let host_weight = |i: usize| match policy.algorithm {
        LbAlgorithm::Random => 1.0,
        _ => f64::from(hosts[i].weight),
    };
    let spread = |share: &mut [f64], members: &[usize], amount: f64| {
        let total: f64 = members.iter().map(|&i| host_weight(i)).sum();
        if total > 0.0 {
            for &i in members {
                share[i] += amount * host_weight(i) / total;
            }
        }
    };
    if balancer.load.stranded {
        let total = hosts.len() as f64;
        for level in &balancer.levels {
            spread(&mut share, &level.all, level.all.len() as f64 / total);
        }
    } else {
        for (p, level) in balancer.levels.iter().enumerate() {
            let amount = f64::from(balancer.load.load[p]) / 100.0;
            if amount == 0.0 {
                continue;
            }
            let panic = balancer.load.panic[p];
            let localities = if policy.locality_weighted && !panic {
                locality_weights(hosts, groups, &level.all)
            } else {
                Vec::new()
            };
            let total: f64 = localities.iter().map(|(_, w)| w).sum();
            if total > 0.0 {
                for (g, w) in localities {
                    let members: Vec<usize> = level
                        .all
                        .iter()
                        .copied()
                        .filter(|&i| hosts[i].group == g && hosts[i].healthy)
                        .collect();
                    spread(&mut share, &members, amount * w / total);
                }
            } else {
                spread(&mut share, &level.sources[0].hosts, amount);
            }
        }
    }
    interleave(&apportion(&share, n))
}

/// Whole slots per host from fractional shares (summing to 1): floors of
/// `share × n`, the rest to the largest remainders (ties to the lower index).
fn apportion(share: &[f64], n: usize) -> Vec<usize> {
    let exact: Vec<f64> = share.iter().map(|s| s * n as f64).collect();
    let mut count: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let given: usize = count.iter().sum();
    let mut order: Vec<usize> = (0..share.len()).filter(|&i| share[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().take(n.saturating_sub(given)) {
        count[i] += 1;
    }
    count
}

/// Lays out `count[i]` copies of each `i` spread evenly (nginx's smooth
/// weighted round robin over the counts).
fn interleave(count: &[usize]) -> Vec<usize> {
    let n: usize = count.iter().sum();
    let mut current = vec![0i64; count.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        for (c, &k) in current.iter_mut().zip(count) {
            *c += k as i64;
        }
        let best = (0..count.len())
            .filter(|&i| count[i] > 0)
            .max_by(|&a, &b| current[a].cmp(&current[b]).then(b.cmp(&a)))
            .expect("a host with slots");
        current[best] -= n as i64;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
