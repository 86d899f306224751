//! The userspace side of the ABI: `aya::Pod` for every map type, and
//! constructors and accessors between these types and `core::net`
//! addresses. This is the one place that knows the byte order of the
//! kernel's fields (`_be`: network order; IPv6 addresses as `user_ip6`
//! words), so the daemon never converts by hand.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::*;

unsafe impl aya::Pod for ServiceKey {}
unsafe impl aya::Pod for ServiceValue {}
unsafe impl aya::Pod for ProxyConfig {}
unsafe impl aya::Pod for OrigDst {}
unsafe impl aya::Pod for SockKey {}
unsafe impl aya::Pod for ServiceInfo {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointHealth {}
unsafe impl aya::Pod for SlotTable {}
unsafe impl aya::Pod for ConnectOutcome {}
unsafe impl aya::Pod for DnsConfig {}
unsafe impl aya::Pod for SockOrig {}
unsafe impl aya::Pod for ServiceKey6 {}
unsafe impl aya::Pod for ServiceValue6 {}
unsafe impl aya::Pod for Config6 {}
unsafe impl aya::Pod for SockAddr6 {}
unsafe impl aya::Pod for SockOrig6 {}
unsafe impl aya::Pod for SlotTable6 {}
unsafe impl aya::Pod for Own {}
unsafe impl aya::Pod for NsEvent {}
unsafe impl aya::Pod for NsInfo {}
unsafe impl aya::Pod for Life {}

/// An IPv4 address in network order, as the kernel's `user_ip4`.
pub fn ip4_be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

/// The inverse of [`ip4_be`].
pub fn ip4_from_be(ip_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(ip_be))
}

/// An IPv6 address as the kernel's `user_ip6` words (network order).
pub fn ip6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`ip6_words`].
pub fn ip6_from_words(words: [u32; 4]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, w) in octets.chunks_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

fn v4(ip_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip4_from_be(ip_be), u16::from_be(port_be))
}

/// An IPv6 socket address from the kernel's words, an IPv4-mapped one
/// (`::ffff:a.b.c.d`) as the IPv4 address it stands for.
fn unmapped(ip6_be: [u32; 4], port_be: u16) -> SocketAddr {
    let ip = ip6_from_words(ip6_be);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, u16::from_be(port_be))
}

impl ServiceKey {
    /// A `ServiceKey` for these addresses, in the kernel's byte order.
    pub fn new(vip: SocketAddrV4) -> Self {
        Self {
            vip_be: ip4_be(*vip.ip()),
            port_be: vip.port().to_be(),
            _pad: 0,
        }
    }

    /// The address, in host terms.
    pub fn addr(&self) -> SocketAddrV4 {
        v4(self.vip_be, self.port_be)
    }
}

impl ServiceKey6 {
    /// A `ServiceKey6` for these addresses, in the kernel's byte order.
    pub fn new(vip: SocketAddrV6) -> Self {
        Self {
            vip6_be: ip6_words(*vip.ip()),
            port_be: vip.port().to_be(),
            _pad: 0,
        }
    }
}

impl OrigDst {
    /// A `OrigDst` for these addresses, in the kernel's byte order.
    pub fn new(dst: SocketAddrV4) -> Self {
        Self {
            vip_be: ip4_be(*dst.ip()),
            port_be: dst.port().to_be(),
            _pad: 0,
        }
    }

    /// The address, in host terms.
    pub fn addr(&self) -> SocketAddrV4 {
        v4(self.vip_be, self.port_be)
    }
}

impl SockKey {
    /// A `SockKey` for these addresses, in the kernel's byte order.
    pub fn new(addr: SocketAddrV4) -> Self {
        Self {
            ip_be: ip4_be(*addr.ip()),
            port_be: addr.port().to_be(),
            _pad: 0,
        }
    }
}

impl SockAddr6 {
    /// A `SockAddr6` for these addresses, in the kernel's byte order.
    pub fn new(addr: SocketAddrV6) -> Self {
        Self {
            ip6_be: ip6_words(*addr.ip()),
            port_be: addr.port().to_be(),
            _pad: 0,
        }
    }

    /// The address, an IPv4-mapped one as IPv4.
    pub fn addr(&self) -> SocketAddr {
        unmapped(self.ip6_be, self.port_be)
    }
}

impl Slot {
    /// A `Slot` for these addresses, in the kernel's byte order.
    pub fn new(addr: SocketAddrV4) -> Self {
        Self {
            ip_be: ip4_be(*addr.ip()),
            port_be: addr.port().to_be(),
            _pad: 0,
        }
    }

    /// The address, in host terms.
    pub fn addr(&self) -> SocketAddrV4 {
        v4(self.ip_be, self.port_be)
    }
}

impl Slot6 {
    /// A `Slot6` for these addresses, in the kernel's byte order.
    pub fn new(addr: SocketAddrV6) -> Self {
        Self {
            ip6_be: ip6_words(*addr.ip()),
            port_be: addr.port().to_be(),
            _pad: 0,
        }
    }
}

fn millis(d: core::time::Duration) -> u32 {
    d.as_millis().try_into().unwrap_or(u32::MAX)
}

impl SlotTable {
    /// An empty table for connects to `vip`.
    pub fn new(vip: SocketAddrV4, connect_timeout: core::time::Duration) -> Self {
        Self {
            vip_be: ip4_be(*vip.ip()),
            port_be: vip.port().to_be(),
            _pad: 0,
            count: 0,
            connect_timeout_ms: millis(connect_timeout),
            slots: [Slot::default(); MAX_SLOTS],
        }
    }

    /// The VIP:port the table is for.
    pub fn vip(&self) -> SocketAddrV4 {
        v4(self.vip_be, self.port_be)
    }

    /// The used entries.
    pub fn used(&self) -> &[Slot] {
        &self.slots[..(self.count as usize).min(MAX_SLOTS)]
    }
}

impl SlotTable6 {
    /// An empty table for connects to the service whose IPv4 VIP is `vip`.
    pub fn new(vip: SocketAddrV4, connect_timeout: core::time::Duration) -> Self {
        Self {
            vip_be: ip4_be(*vip.ip()),
            port_be: vip.port().to_be(),
            _pad: 0,
            count: 0,
            connect_timeout_ms: millis(connect_timeout),
            slots: [Slot6::default(); MAX_SLOTS],
        }
    }
}

impl ProxyConfig {
    /// A `ProxyConfig` for these addresses, in the kernel's byte order.
    pub fn new(proxy: SocketAddrV4, mark: u32, flags: u32, daemon_pid: u32) -> Self {
        Self {
            proxy_ip_be: ip4_be(*proxy.ip()),
            proxy_port_be: proxy.port().to_be(),
            _pad: 0,
            mark,
            flags,
            daemon_pid,
            _pad2: 0,
        }
    }

    /// The proxy listener's address.
    pub fn proxy(&self) -> SocketAddrV4 {
        v4(self.proxy_ip_be, self.proxy_port_be)
    }
}

impl DnsConfig {
    /// Where the responder listens; `None`: DNS is left alone.
    pub fn new(responder: Option<SocketAddrV4>) -> Self {
        Self {
            responder_ip_be: responder.map_or(0, |r| ip4_be(*r.ip())),
            responder_port_be: responder.map_or(0, |r| r.port().to_be()),
            _pad: 0,
            flags: if responder.is_some() { DNS_ENABLED } else { 0 },
        }
    }
}

impl Config6 {
    /// The daemon's IPv6 listeners; `None`: not listening there.
    pub fn new(proxy: Option<Ipv6Addr>, responder: Option<Ipv6Addr>) -> Self {
        Self {
            proxy_ip6_be: proxy.map_or([0; 4], ip6_words),
            responder_ip6_be: responder.map_or([0; 4], ip6_words),
        }
    }
}

impl ServiceInfo {
    /// The VIP:port it is for.
    pub fn vip(&self) -> SocketAddrV4 {
        v4(self.vip_be, self.port_be)
    }
}

impl EndpointHealth {
    /// The endpoint's IPv4 address; `None` for an IPv6 host (the layout
    /// holds IPv4 only) or one not resolved.
    pub fn addr(&self) -> Option<SocketAddrV4> {
        (self.addr_be != 0).then(|| v4(self.addr_be, self.port_be))
    }

    /// The port, in host order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

impl ConnectOutcome {
    /// The address, in host terms.
    pub fn addr(&self) -> SocketAddr {
        v4(self.ip_be, self.port_be).into()
    }
}

impl ConnectOutcome6 {
    /// The endpoint, an IPv4-mapped address as IPv4.
    pub fn addr(&self) -> SocketAddr {
        unmapped(self.ip6_be, self.port_be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_are_the_kernels_network_order_and_round_trip() {
        let ip: Ipv6Addr = "2001:2::630f:247f:524b:4833".parse().unwrap();
        let words = ip6_words(ip);
        // user_ip6[0] holds the first four bytes as they are on the wire.
        assert_eq!(words[0].to_ne_bytes(), [0x20, 0x01, 0x00, 0x02]);
        assert_eq!(ip6_from_words(words), ip);
        let mapped = Ipv4Addr::new(127, 0, 0, 4).to_ipv6_mapped();
        assert_eq!(
            ip6_words(mapped),
            v4_mapped(ip4_be(Ipv4Addr::new(127, 0, 0, 4)))
        );
    }

    #[test]
    fn addresses_round_trip_in_network_order() {
        let a: SocketAddrV4 = "10.1.2.3:8080".parse().unwrap();
        let k = ServiceKey::new(a);
        assert_eq!(k.vip_be.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(k.port_be.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(k.addr(), a);
        assert_eq!(OrigDst::new(a).addr(), a);
        assert_eq!(Slot::new(a).addr(), a);
        let mapped = SockAddr6::new(SocketAddrV6::new(a.ip().to_ipv6_mapped(), 53, 0, 0));
        assert_eq!(mapped.addr(), "10.1.2.3:53".parse::<SocketAddr>().unwrap());
        let six: SocketAddrV6 = "[fd00::2]:8080".parse().unwrap();
        assert_eq!(SockAddr6::new(six).addr(), SocketAddr::V6(six));
    }
}
