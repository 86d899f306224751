//! Virtual IPs for hosts whose ServiceEntry has no `addresses`.
//!
//! Apps reach a ServiceEntry host through an address that the kernel program
//! rewrites, so every host needs one. Istio's DNS proxy auto-allocates from
//! 240.240.0.0/16 (class E, never routed); we do the same, but the address
//! must not move when the file is edited elsewhere or documents are
//! reordered, or connections and cached DNS answers would go to another
//! service. So each host starts at a hash of its own name (FNV-1a 64) within
//! the range and probes linearly past taken addresses. Hosts are processed in
//! sorted order, so the result depends only on the set of hosts and of
//! explicit addresses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The range has no free address left for `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub host: String,
    pub usable: u64,
}

/// FNV-1a, 64 bit: tiny, stable across Rust versions and platforms, unlike
/// `std`'s `DefaultHasher`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
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
pub fn allocate<'a>(
    range: Ipv4Net,
    hosts: impl IntoIterator<Item = &'a str>,
    taken: &BTreeSet<Ipv4Addr>,
) -> Result<Vec<(String, Ipv4Addr)>, Exhausted> {
    let range = range.trunc();
    let (first, count) = usable(range);
    let hosts: BTreeSet<&str> = hosts.into_iter().collect();
    let mut used: BTreeSet<u64> = taken
        .iter()
        .map(|&ip| u64::from(u32::from(ip).wrapping_sub(first)))
        .filter(|&offset| offset < count)
        .collect();
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let exhausted = || Exhausted {
            host: host.to_owned(),
            usable: count,
        };
        if used.len() as u64 >= count {
            return Err(exhausted());
        }
        let start = fnv1a64(host.as_bytes()) % count;
        let offset = (0..count)
            .map(|i| (start + i) % count)
            .find(|o| !used.contains(o))
            .ok_or_else(exhausted)?;
        used.insert(offset);
        out.push((host.to_owned(), Ipv4Addr::from(first + offset as u32)));
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
