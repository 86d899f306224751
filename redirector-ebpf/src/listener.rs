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

/// A TCP listener, or a UDP socket bound, on `ip_be:port_be`. A zero
/// source never matches a connected socket, so only those can answer.
pub fn listening(ctx: &SockAddrContext, ip_be: u32, port_be: u16, tcp: bool) -> bool {
    let mut tuple = Ipv4Tuple {
        saddr: 0,
        daddr: ip_be,
        sport: 0,
        dport: port_be,
    };
    let tuple_ptr = (&raw mut tuple).cast::<bpf_sock_tuple>();
    let size = core::mem::size_of::<Ipv4Tuple>() as u32;
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
