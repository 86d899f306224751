//! The order in which one new connection tries a service's hosts.
//!
//! A connect that fails before any byte reached the app can be retried on
//! another host without the app noticing, so the balancer returns a whole
//! attempt order rather than one pick: healthy hosts of the best priority
//! first, rotated by a round-robin cursor, then healthy hosts of each next
//! priority. Ejected hosts get no traffic while any host is healthy. If every
//! host is ejected, all of them are tried in priority order (Envoy's panic
//! mode): a guess beats a certain error.
//!
//! Weighted priority spillover (Envoy's overprovisioning factor) is not done
//! yet: the lowest priority with a healthy host takes all traffic.

/// What the balancer needs to know about one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostView {
    pub priority: u8,
    pub healthy: bool,
}

/// Indices into `hosts`, in the order to try them.
pub fn attempt_order(hosts: &[HostView], cursor: usize) -> Vec<usize> {
    let any_healthy = hosts.iter().any(|h| h.healthy);
    let eligible = |h: &HostView| h.healthy || !any_healthy;
    let mut priorities: Vec<u8> = hosts
        .iter()
        .filter(|h| eligible(h))
        .map(|h| h.priority)
        .collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut order = Vec::with_capacity(hosts.len());
    for p in priorities {
        let level: Vec<usize> = (0..hosts.len())
            .filter(|&i| hosts[i].priority == p && eligible(&hosts[i]))
            .collect();
        let start = cursor % level.len();
        order.extend(level[start..].iter().chain(&level[..start]));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(priority: u8, healthy: bool) -> HostView {
        HostView { priority, healthy }
    }

    #[test]
    fn round_robin_within_the_best_priority_then_the_rest() {
        let hosts = [h(1, true), h(0, true), h(0, true), h(2, true)];
        assert_eq!(attempt_order(&hosts, 0), [1, 2, 0, 3]);
        assert_eq!(attempt_order(&hosts, 1), [2, 1, 0, 3]);
        assert_eq!(attempt_order(&hosts, 2), [1, 2, 0, 3]);
    }

    #[test]
    fn ejected_hosts_are_skipped_while_any_is_healthy() {
        let hosts = [h(0, false), h(1, true), h(1, false)];
        assert_eq!(attempt_order(&hosts, 0), [1]);
        assert_eq!(attempt_order(&hosts, 7), [1]);
    }

    #[test]
    fn all_ejected_tries_everything_by_priority() {
        let hosts = [h(1, false), h(0, false)];
        assert_eq!(attempt_order(&hosts, 0), [1, 0]);
    }

    #[test]
    fn same_priority_spreads_traffic() {
        // The blog without a DestinationRule: both regions at priority 0.
        let hosts = [h(0, true), h(0, true)];
        let firsts: Vec<usize> = (0..4).map(|c| attempt_order(&hosts, c)[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn no_hosts_no_attempts() {
        assert!(attempt_order(&[], 3).is_empty());
    }
}
