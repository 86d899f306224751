//! The per-socket record of a redirect ([`SockOrig`] in socket storage):
//! written where a hook rewrites a destination (connect4, sendmsg4),
//! read where the kernel would show the app the rewritten address
//! (getpeername4, recvmsg4), by sock_ops (to re-key a connect by its
//! source address into its namespace's map, or to report a slot
//! connect's outcome) and by the egress program. The kernel frees it with
//! the socket, so it can never describe another socket, and nothing of
//! another namespace can reach it.

use aya_ebpf::programs::SockAddrContext;
use redirector_common::{NsId, SockOrig, SockOrig6};

use crate::maps::{SOCK_ORIG, SOCK_ORIG6};

/// A slot connect: the service, its connect timeout, and the
/// `SOCK_*` flags to start with.
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) service_id: u32,
    pub(crate) connect_timeout_ms: u32,
    pub(crate) flags: u8,
}

/// Not a slot connect.
pub(crate) const NO_SLOT: Slot = Slot {
    service_id: 0,
    connect_timeout_ms: 0,
    flags: 0,
};

/// Remembers that this socket asked for `orig` and was sent to `to`
/// (addresses and ports in network order) in namespace `ns_id`, and for a
/// slot connect which. Replaces an earlier record: a socket is redirected
/// again on every connect or datagram.
pub(crate) fn record(
    ctx: &SockAddrContext,
    kind: u8,
    (orig_ip_be, orig_port_be): (u32, u16),
    (to_ip_be, to_port_be): (u32, u16),
    ns_id: NsId,
    slot: Slot,
) -> Result<(), i64> {
    let mut value = SockOrig {
        orig_ip_be,
        orig_port_be,
        kind,
        flags: slot.flags,
        to_ip_be,
        to_port_be,
        _pad: 0,
        ns_id,
        service_id: slot.service_id,
        connect_timeout_ms: slot.connect_timeout_ms,
    };
    let p = unsafe { SOCK_ORIG.get_or_insert_ptr_mut(ctx, Some(&mut value)) };
    if p.is_null() {
        return Err(-1);
    }
    // Field by field: a whole-struct store from a value that was also
    // handed to the helper compiles to a memmove, whose pointer
    // subtraction the verifier refuses without CAP_PERFMON (the DaemonSet
    // grants CAP_BPF and CAP_NET_ADMIN only).
    unsafe {
        (*p).orig_ip_be = orig_ip_be;
        (*p).orig_port_be = orig_port_be;
        (*p).kind = kind;
        (*p).flags = slot.flags;
        (*p).to_ip_be = to_ip_be;
        (*p).to_port_be = to_port_be;
        (*p).ns_id = ns_id;
        (*p).service_id = slot.service_id;
        (*p).connect_timeout_ms = slot.connect_timeout_ms;
    }
    Ok(())
}

/// If the address in `ctx` (a peer, or a datagram's source) is where this
/// socket was redirected to, puts back the one it asked for.
pub(crate) fn restore(ctx: &SockAddrContext) {
    let p = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if p.is_null() {
        return;
    }
    let rec = unsafe { *p };
    let sa = unsafe { &mut *ctx.sock_addr };
    // user_port holds the port in network order in its low 16 bits.
    if sa.user_ip4 == rec.to_ip_be && sa.user_port as u16 == rec.to_port_be {
        sa.user_ip4 = rec.orig_ip_be;
        sa.user_port = u32::from(rec.orig_port_be);
    }
}

/// [`record`] for an IPv6 socket (connect6, sendmsg6): 16-byte addresses
/// as `user_ip6` words; `route_vip_be` is a service connect's IPv4 VIP.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record6(
    ctx: &SockAddrContext,
    kind: u8,
    (orig_ip6_be, orig_port_be): ([u32; 4], u16),
    (to_ip6_be, to_port_be): ([u32; 4], u16),
    ns_id: NsId,
    route_vip_be: u32,
    slot: Slot,
) -> Result<(), i64> {
    let mut value = SockOrig6 {
        orig_ip6_be,
        to_ip6_be,
        orig_port_be,
        to_port_be,
        kind,
        flags: slot.flags,
        _pad: 0,
        ns_id,
        route_vip_be,
        service_id: slot.service_id,
        connect_timeout_ms: slot.connect_timeout_ms,
        _pad2: 0,
    };
    let p = unsafe { SOCK_ORIG6.get_or_insert_ptr_mut(ctx, Some(&mut value)) };
    if p.is_null() {
        return Err(-1);
    }
    // Field by field, as in `record`.
    unsafe {
        (*p).orig_ip6_be[0] = orig_ip6_be[0];
        (*p).orig_ip6_be[1] = orig_ip6_be[1];
        (*p).orig_ip6_be[2] = orig_ip6_be[2];
        (*p).orig_ip6_be[3] = orig_ip6_be[3];
        (*p).to_ip6_be[0] = to_ip6_be[0];
        (*p).to_ip6_be[1] = to_ip6_be[1];
        (*p).to_ip6_be[2] = to_ip6_be[2];
        (*p).to_ip6_be[3] = to_ip6_be[3];
        (*p).orig_port_be = orig_port_be;
        (*p).to_port_be = to_port_be;
        (*p).kind = kind;
        (*p).flags = slot.flags;
        (*p).ns_id = ns_id;
        (*p).route_vip_be = route_vip_be;
        (*p).service_id = slot.service_id;
        (*p).connect_timeout_ms = slot.connect_timeout_ms;
    }
    Ok(())
}

/// [`restore`] for an IPv6 socket (getpeername6, recvmsg6).
pub(crate) fn restore6(ctx: &SockAddrContext) {
    let p = unsafe { SOCK_ORIG6.get_ptr_mut(ctx) };
    if p.is_null() {
        return;
    }
    let rec = unsafe { *p };
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_port as u16 == rec.to_port_be
        && sa.user_ip6[0] == rec.to_ip6_be[0]
        && sa.user_ip6[1] == rec.to_ip6_be[1]
        && sa.user_ip6[2] == rec.to_ip6_be[2]
        && sa.user_ip6[3] == rec.to_ip6_be[3]
    {
        sa.user_ip6[0] = rec.orig_ip6_be[0];
        sa.user_ip6[1] = rec.orig_ip6_be[1];
        sa.user_ip6[2] = rec.orig_ip6_be[2];
        sa.user_ip6[3] = rec.orig_ip6_be[3];
        sa.user_port = u32::from(rec.orig_port_be);
    }
}
