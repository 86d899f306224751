//! Fitting a weighted endpoint list into a service's fixed-size slot table.
//!
//! The cluster hands over endpoints repeated by weight (weights 3 and 1 give
//! `[a, a, a, b]`); connect4 picks an entry uniformly, so repetition is
//! weight. When the list is longer than [`MAX_SLOTS`], shares are scaled
//! down by largest remainder, and every endpoint keeps at least one slot as
//! long as there are fewer endpoints than slots (past that, the first
//! [`MAX_SLOTS`] endpoints, one slot each).

use std::{
    net::{SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use redirector_common::{MAX_SLOTS, Slot, Slot6, SlotTable, SlotTable6};

/// The table connect4 reads for connects to `vip`.
pub(crate) fn table(
    vip: SocketAddrV4,
    weighted: &[SocketAddrV4],
    connect_timeout: Duration,
) -> SlotTable {
    let mut t = SlotTable::new(vip, connect_timeout);
    let entries = fit(weighted);
    for (slot, addr) in t.slots.iter_mut().zip(&entries) {
        *slot = Slot::new(*addr);
    }
    t.count = entries.len() as u32;
    t
}

/// The IPv6 table connect6 reads for connects to the service whose IPv4
/// VIP is `vip` (endpoints of both families, IPv4 ones mapped).
pub(crate) fn table6(
    vip: SocketAddrV4,
    weighted: &[SocketAddrV6],
    connect_timeout: Duration,
) -> SlotTable6 {
    let mut t = SlotTable6::new(vip, connect_timeout);
    let entries = fit(weighted);
    for (slot, addr) in t.slots.iter_mut().zip(&entries) {
        *slot = Slot6::new(*addr);
    }
    t.count = entries.len() as u32;
    t
}

/// The table's entries, at most [`MAX_SLOTS`].
pub(crate) fn fit<A: Copy + PartialEq>(weighted: &[A]) -> Vec<A> {
    if weighted.len() <= MAX_SLOTS {
        return weighted.to_vec();
    }
    // Distinct endpoints in order of first appearance, with their counts.
    let mut counts: Vec<(A, u64)> = Vec::new();
    for a in weighted {
        match counts.iter_mut().find(|(b, _)| b == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((*a, 1)),
        }
    }
    if counts.len() >= MAX_SLOTS {
        return counts.iter().take(MAX_SLOTS).map(|(a, _)| *a).collect();
    }
    let total = weighted.len() as u64;
    let spare = (MAX_SLOTS - counts.len()) as u64;
    let mut shares: Vec<(u64, u64)> = counts
        .iter()
        .map(|(_, n)| (1 + n * spare / total, n * spare % total))
        .collect();
    let mut left = MAX_SLOTS as u64 - shares.iter().map(|(s, _)| s).sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by_key(|&i| std::cmp::Reverse(shares[i].1));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        shares[i].0 += 1;
        left -= 1;
    }
    counts
        .iter()
        .zip(&shares)
        .flat_map(|((a, _), (s, _))| std::iter::repeat_n(*a, *s as usize))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new([10, 0, 0, last].into(), 80)
    }

    fn count(v: &[SocketAddrV4], a: SocketAddrV4) -> usize {
        v.iter().filter(|x| **x == a).count()
    }

    #[test]
    fn short_lists_are_kept_as_they_are() {
        let list = [ep(1), ep(1), ep(1), ep(2)];
        assert_eq!(fit(&list), list);
        let vip = SocketAddrV4::new([240, 240, 0, 1].into(), 5432);
        let t = table(vip, &list, Duration::from_secs(10));
        assert_eq!(t.count, 4);
        assert_eq!(t.connect_timeout_ms, 10_000);
        assert_eq!(u16::from_be(t.port_be), 5432);
        assert_eq!(u16::from_be(t.slots[3].port_be), 80);
        assert_eq!(
            std::net::Ipv4Addr::from(u32::from_be(t.slots[3].ip_be)),
            *ep(2).ip()
        );
    }

    #[test]
    fn long_lists_are_scaled_to_the_table_keeping_every_endpoint() {
        // Weights 1000 and 1: the light one keeps a slot.
        let mut list = vec![ep(1); 1000];
        list.push(ep(2));
        let fitted = fit(&list);
        assert_eq!(fitted.len(), MAX_SLOTS);
        assert_eq!(count(&fitted, ep(2)), 1);
        assert_eq!(count(&fitted, ep(1)), MAX_SLOTS - 1);
        // Weights 3:1 over 128 entries: 48 and 16.
        let mut list = vec![ep(1); 96];
        list.extend(vec![ep(2); 32]);
        let fitted = fit(&list);
        assert_eq!(count(&fitted, ep(1)), 48);
        assert_eq!(count(&fitted, ep(2)), 16);
    }

    #[test]
    fn more_endpoints_than_slots_take_one_each() {
        let list: Vec<SocketAddrV4> = (0..100).flat_map(|i| [ep(i), ep(i)]).collect();
        let fitted = fit(&list);
        assert_eq!(fitted.len(), MAX_SLOTS);
        assert_eq!(fitted[0], ep(0));
        assert_eq!(count(&fitted, ep(0)), 1);
    }

    #[test]
    fn empty_is_empty() {
        assert!(fit::<SocketAddrV4>(&[]).is_empty());
        assert_eq!(table(ep(9), &[], Duration::ZERO).count, 0);
    }

    #[test]
    fn ipv6_tables_carry_both_families_in_kernel_words() {
        let v6: SocketAddrV6 = "[fd00::2]:8080".parse().unwrap();
        let mapped = SocketAddrV6::new(ep(3).ip().to_ipv6_mapped(), 80, 0, 0);
        let t = table6(ep(9), &[v6, v6, mapped], Duration::from_secs(10));
        assert_eq!(t.count, 3);
        assert_eq!(
            (t.vip_be, t.port_be),
            (u32::from(*ep(9).ip()).to_be(), 80u16.to_be())
        );
        assert_eq!(t.connect_timeout_ms, 10_000);
        assert_eq!(
            t.slots[0].ip6_be,
            redirector_common::user::ip6_words(*v6.ip())
        );
        assert_eq!(t.slots[0].port_be, 8080u16.to_be());
        assert_eq!(
            t.slots[2].ip6_be,
            redirector_common::v4_mapped(u32::from(*ep(3).ip()).to_be())
        );
    }
}
