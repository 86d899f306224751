//! Virtual IPs for hosts whose ServiceEntry has no `addresses` (of a
//! family).
//!
//! Apps reach a ServiceEntry host through an address that the kernel program
//! rewrites, so every host needs one of each family. Istio's DNS proxy
//! auto-allocates from 240.240.0.0/16 (class E, never routed) and, for
//! IPv6, from 2001:2::/48 (RFC 5180's benchmarking range, never routed);
//! we do the same, but the address
//! must not move when the file is edited elsewhere or documents are
//! reordered, or connections and cached DNS answers would go to another
//! service. So each host starts at a hash of its own name (FNV-1a 64) within
//! the range and probes linearly past taken addresses. Hosts are processed in
//! sorted order, so the result depends only on the set of hosts and of
//! explicit addresses of that family: the two families are allocated
//! apart, so neither moves the other. In an IPv6 range larger than 2^64
//! the hash alone picks the address (offsets past 2^64 are never used,
//! which leaves more room than any config needs).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The range has no free address left for `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exhausted {
    pub(super) host: String,
    pub(super) usable: u128,
}

/// FNV-1a, 64 bit: tiny, stable across Rust versions and platforms, unlike
/// `std`'s `DefaultHasher`.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// First usable address and how many there are: the network and broadcast
/// addresses are left out when the prefix leaves room for them (≤ /30).
fn usable(range: Ipv4Net) -> (u32, u64) {
    let network = u32::from(range.network());
    let size = 1u64 << (32 - range.prefix_len());
    if range.prefix_len() <= 30 {
        (network + 1, size - 2)
    } else {
        (network, size)
    }
}

/// Allocates an address from `range` to every host in `hosts`, avoiding
/// `taken` (explicit ServiceEntry addresses). Returns `(host, vip)` sorted by
/// host; duplicates in `hosts` get one address.
pub(super) fn allocate<'a>(
    range: Ipv4Net,
    hosts: impl IntoIterator<Item = &'a str>,
    taken: &BTreeSet<Ipv4Addr>,
) -> Result<Vec<(String, Ipv4Addr)>, Exhausted> {
    let range = range.trunc();
    let (first, count) = usable(range);
    let taken = taken
        .iter()
        .map(|&ip| u128::from(u32::from(ip).wrapping_sub(first)));
    let out = probe(u128::from(count), hosts, taken)?;
    Ok(out
        .into_iter()
        .map(|(h, o)| (h, Ipv4Addr::from(first + o as u32)))
        .collect())
}

/// [`allocate`] for IPv6. The range's first address (the subnet-router
/// anycast address) is left out when there is room for that (≤ /127).
pub(super) fn allocate6<'a>(
    range: Ipv6Net,
    hosts: impl IntoIterator<Item = &'a str>,
    taken: &BTreeSet<Ipv6Addr>,
) -> Result<Vec<(String, Ipv6Addr)>, Exhausted> {
    let range = range.trunc();
    let network = u128::from(range.network());
    let bits = 128 - u32::from(range.prefix_len());
    let size = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    let (first, count) = if range.prefix_len() <= 127 {
        (network + 1, size - 1)
    } else {
        (network, size)
    };
    let taken = taken.iter().map(|&ip| u128::from(ip).wrapping_sub(first));
    let out = probe(count, hosts, taken)?;
    Ok(out
        .into_iter()
        .map(|(h, o)| (h, Ipv6Addr::from(first + o)))
        .collect())
}

/// Offsets in `0..count` for each host: its hash, then linear probing past
/// offsets already used.
fn probe<'a>(
    count: u128,
    hosts: impl IntoIterator<Item = &'a str>,
    taken: impl Iterator<Item = u128>,
) -> Result<Vec<(String, u128)>, Exhausted> {
    let hosts: BTreeSet<&str> = hosts.into_iter().collect();
    let mut used: BTreeSet<u128> = taken.filter(|&offset| offset < count).collect();
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let exhausted = || Exhausted {
            host: host.to_owned(),
            usable: count,
        };
        if used.len() as u128 >= count {
            return Err(exhausted());
        }
        let start = u128::from(fnv1a64(host.as_bytes())) % count;
        // At most `used.len()` steps: there is a free offset.
        let offset = (0..count)
            .map(|i| (start + i) % count)
            .find(|o| !used.contains(o))
            .ok_or_else(exhausted)?;
        used.insert(offset);
        out.push((host.to_owned(), offset));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn allocation_starts_at_the_hash_and_is_order_independent() {
        let range = net("240.240.0.0/16");
        let a = allocate(
            range,
            ["mydb.com", "b.example", "a.example"],
            &BTreeSet::new(),
        )
        .expect("room");
        let b = allocate(
            range,
            ["a.example", "mydb.com", "b.example", "mydb.com"],
            &BTreeSet::new(),
        )
        .expect("room");
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        let expected = 0xf0f0_0001 + (fnv1a64(b"mydb.com") % 65534) as u32;
        let mydb = a.iter().find(|(h, _)| h == "mydb.com").expect("allocated");
        assert_eq!(mydb.1, Ipv4Addr::from(expected));
        assert!(a.iter().all(|(_, ip)| range.contains(ip)));
    }

    #[test]
    fn collisions_probe_linearly_and_wrap() {
        // A /30 has two usable addresses: .1 and .2.
        let range = net("10.0.0.0/30");
        let hosts = ["a", "b"];
        let got = allocate(range, hosts, &BTreeSet::new()).expect("two fit");
        let ips: BTreeSet<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(
            ips,
            ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into()
        );
        // "a" goes to its hash slot; "b" gets the other one, whichever it is.
        let a_slot = (fnv1a64(b"a") % 2) as u32;
        assert_eq!(got[0].1, Ipv4Addr::from(0x0a00_0001 + a_slot));
        // Taking "a"'s slot explicitly moves "a" to the next one, wrapping.
        let taken = BTreeSet::from([got[0].1]);
        let moved = allocate(range, ["a"], &taken).expect("one left");
        assert_eq!(moved[0].1, Ipv4Addr::from(0x0a00_0001 + (a_slot + 1) % 2));
    }

    #[test]
    fn exhausted_range_is_an_error() {
        let range = net("10.0.0.0/30");
        let e = allocate(range, ["a", "b", "c"], &BTreeSet::new()).expect_err("3 > 2");
        assert_eq!(e.usable, 2);
        let taken = BTreeSet::from(["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()]);
        let e = allocate(range, ["a"], &taken).expect_err("all taken");
        assert_eq!(
            e,
            Exhausted {
                host: "a".into(),
                usable: 2
            }
        );
        // Addresses outside the range do not count.
        let outside = BTreeSet::from(["10.0.1.1".parse().unwrap()]);
        assert_eq!(allocate(range, ["a"], &outside).expect("room").len(), 1);
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn ipv6_allocation_starts_at_the_hash_in_istios_range() {
        let range = net6("2001:2::/48");
        let got = allocate6(range, ["mydb.com", "a.example"], &BTreeSet::new()).expect("room");
        let mydb = got
            .iter()
            .find(|(h, _)| h == "mydb.com")
            .expect("allocated");
        // A /48 has more than 2^64 addresses: the hash is the offset.
        let expected =
            u128::from("2001:2::1".parse::<Ipv6Addr>().unwrap()) + u128::from(fnv1a64(b"mydb.com"));
        assert_eq!(mydb.1, Ipv6Addr::from(expected));
        assert!(got.iter().all(|(_, ip)| range.contains(ip)));
    }

    #[test]
    fn ipv6_vips_stay_when_hosts_are_added_and_probe_past_taken() {
        let range = net6("2001:2::/48");
        let before = allocate6(range, ["mydb.com"], &BTreeSet::new()).expect("room");
        let after = allocate6(
            range,
            ["z.example", "mydb.com", "a.example"],
            &BTreeSet::from(["2001:db8::1".parse().unwrap()]),
        )
        .expect("room");
        assert_eq!(
            after.iter().find(|(h, _)| h == "mydb.com"),
            Some(&before[0]),
            "an unrelated host or address must not move mydb.com's VIP"
        );
        // Taking mydb.com's address explicitly moves it one on.
        let taken = BTreeSet::from([before[0].1]);
        let moved = allocate6(range, ["mydb.com"], &taken).expect("room");
        assert_eq!(moved[0].1, Ipv6Addr::from(u128::from(before[0].1) + 1));
    }

    #[test]
    fn small_ipv6_ranges_skip_the_anycast_address_and_run_out() {
        let got = allocate6(net6("fd00::/126"), ["a", "b", "c"], &BTreeSet::new()).expect("3");
        let ips: BTreeSet<Ipv6Addr> = got.iter().map(|(_, ip)| *ip).collect();
        assert_eq!(
            ips,
            ["fd00::1", "fd00::2", "fd00::3"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect()
        );
        let e = allocate6(net6("fd00::/126"), ["a", "b", "c", "d"], &BTreeSet::new())
            .expect_err("4 > 3");
        assert_eq!(e.usable, 3);
        let one = allocate6(net6("fd00::7/128"), ["a"], &BTreeSet::new()).expect("one");
        assert_eq!(one[0].1, "fd00::7".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn tiny_prefixes_use_every_address() {
        let got = allocate(net("10.0.0.7/32"), ["a"], &BTreeSet::new()).expect("one");
        assert_eq!(got[0].1, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(
            allocate(net("10.0.0.6/31"), ["a", "b"], &BTreeSet::new())
                .expect("two")
                .len(),
            2
        );
    }
}
