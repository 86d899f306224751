//! Whether one of the daemon's own sockets listens (or, UDP, is bound) at
//! an address in the calling socket's network namespace: asked of the
//! kernel per call (`bpf_sk_lookup_*`, then the socket's [`OWN`] storage,
//! which only the daemon writes). So a dead daemon's listeners stop
//! drawing traffic the moment the kernel closes them, with nothing to
//! expire, and a socket someone else bound on the port (a pod's own app,
//! an Istio sidecar) draws nothing: that namespace is left alone. A
//! daemon the kernel has started to kill (`RD_LIFE_V3`, written by
//! `signal_deliver`) has nothing listening either: its listeners would
//! still queue connects in the milliseconds before the kernel closes them,
//! and those connects would die with it.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{
        bpf_get_netns_cookie, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_sk_storage_get,
    },
    programs::SockAddrContext,
};
use redirector_common::{Life, NS_LEFT_ALONE, NsId, Own};

use crate::maps::{LIFE, NS_KNOWN, OWN};

/// What listens at an address.
#[derive(Clone, Copy)]
pub(crate) enum Found {
    /// Nothing: no daemon serves this namespace now.
    Nothing,
    /// A socket that is not the daemon's: leave this namespace alone.
    Foreign,
    /// The daemon's, serving the namespace it names.
    Ours(NsId),
}

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
pub(crate) fn find(ctx: &SockAddrContext, ip_be: u32, port_be: u16, tcp: bool) -> Found {
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

/// [`find`] on an IPv6 address (`user_ip6` words).
pub(crate) fn find6(ctx: &SockAddrContext, ip6_be: [u32; 4], port_be: u16, tcp: bool) -> Found {
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
fn lookup(ctx: &SockAddrContext, tuple_ptr: *mut bpf_sock_tuple, size: u32, tcp: bool) -> Found {
    if LIFE.get(0).is_some_and(Life::dying) {
        return Found::Nothing;
    }
    let netns = BPF_F_CURRENT_NETNS as u64;
    let sk = unsafe {
        if tcp {
            bpf_sk_lookup_tcp(ctx.sock_addr.cast(), tuple_ptr, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.sock_addr.cast(), tuple_ptr, size, netns, 0)
        }
    };
    if sk.is_null() {
        return Found::Nothing;
    }
    let map = (&raw const OWN).cast_mut().cast();
    let own = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<Own>();
    let found = if own.is_null() {
        Found::Foreign
    } else {
        Found::Ours(unsafe { (*own).ns_id })
    };
    unsafe { bpf_sk_release(sk.cast()) };
    found
}

/// Whether the daemon leaves the caller's namespace alone (its own app
/// held the proxy or DNS port when the daemon came to serve it).
pub(crate) fn left_alone(ctx: &SockAddrContext) -> bool {
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    matches!(unsafe { NS_KNOWN.get(&cookie) }, Some(&NS_LEFT_ALONE))
}
