//! Whether a daemon listener exists in the calling socket's network
//! namespace: asked of the kernel per call (`bpf_sk_lookup_*`), so a dead
//! daemon's listeners stop drawing traffic the moment the kernel closes
//! them, with nothing to expire.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    programs::SockAddrContext,
};

/// `bpf_sock_tuple`'s IPv4 member, the only part the lookups read.
#[repr(C)]
struct Ipv4Tuple {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// `bpf_sock_tuple`'s IPv6 member.
#[repr(C)]
struct Ipv6Tuple {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// A TCP listener, or a UDP socket bound, on `ip_be:port_be`. A zero
/// source never matches a connected socket, so only those can answer.
pub(crate) fn listening(ctx: &SockAddrContext, ip_be: u32, port_be: u16, tcp: bool) -> bool {
    let mut tuple = Ipv4Tuple {
        saddr: 0,
        daddr: ip_be,
        sport: 0,
        dport: port_be,
    };
    lookup(
        ctx,
        (&raw mut tuple).cast(),
        core::mem::size_of::<Ipv4Tuple>() as u32,
        tcp,
    )
}

/// [`listening`] on an IPv6 address (`user_ip6` words).
pub(crate) fn listening6(ctx: &SockAddrContext, ip6_be: [u32; 4], port_be: u16, tcp: bool) -> bool {
    // Written word by word: a zeroed array literal compiles to a memset
    // loop whose pointer arithmetic the verifier refuses without
    // CAP_PERFMON (the DaemonSet grants CAP_BPF and CAP_NET_ADMIN only).
    let mut tuple = core::mem::MaybeUninit::<Ipv6Tuple>::uninit();
    let t = tuple.as_mut_ptr();
    unsafe {
        for (i, word) in ip6_be.into_iter().enumerate() {
            core::ptr::write_volatile(&raw mut (*t).saddr[i], 0);
            core::ptr::write_volatile(&raw mut (*t).daddr[i], word);
        }
        core::ptr::write_volatile(&raw mut (*t).sport, 0);
        core::ptr::write_volatile(&raw mut (*t).dport, port_be);
    }
    lookup(ctx, t.cast(), core::mem::size_of::<Ipv6Tuple>() as u32, tcp)
}

#[inline(always)]
fn lookup(ctx: &SockAddrContext, tuple_ptr: *mut bpf_sock_tuple, size: u32, tcp: bool) -> bool {
    let netns = BPF_F_CURRENT_NETNS as u64;
    let sk = unsafe {
        if tcp {
            bpf_sk_lookup_tcp(ctx.sock_addr.cast(), tuple_ptr, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.sock_addr.cast(), tuple_ptr, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk.cast()) };
    true
}
