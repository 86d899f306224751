//! The per-socket record of a redirect ([`redirector_common::SockOrig`] in socket storage):
//! written where a hook rewrites a destination (connect4, sendmsg4),
//! read where the kernel would show the app the rewritten address
//! (getpeername4, recvmsg4), by sock_ops (to re-key a connect by its
//! source address into its namespace's map, or to report a slot
//! connect's outcome) and by the egress program. The kernel frees it with
//! the socket, so it can never describe another socket, and nothing of
//! another namespace can reach it.

use aya_ebpf::programs::SockAddrContext;
use redirector_common::NsId;

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
    // No value on the stack: the kernel creates the storage zeroed. Every
    // field is then stored volatile, because LLVM merges adjacent constant
    // stores (a connect to a foreign listener writes only zeros after
    // `to_port_be`) into a memset, which this target compiles to a byte
    // loop whose pointer arithmetic the verifier refuses without
    // CAP_PERFMON (the DaemonSet grants CAP_BPF and CAP_NET_ADMIN only).
    let p = unsafe { SOCK_ORIG.get_or_insert_ptr_mut(ctx, None) };
    if p.is_null() {
        return Err(-1);
    }
    unsafe {
        put(&raw mut (*p).orig_ip_be, orig_ip_be);
        put(&raw mut (*p).orig_port_be, orig_port_be);
        put(&raw mut (*p).kind, kind);
        put(&raw mut (*p).flags, slot.flags);
        put(&raw mut (*p).to_ip_be, to_ip_be);
        put(&raw mut (*p).to_port_be, to_port_be);
        put(&raw mut (*p).ns_id, ns_id);
        put(&raw mut (*p).service_id, slot.service_id);
        put(&raw mut (*p).connect_timeout_ms, slot.connect_timeout_ms);
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
    // As in `record`: zeroed storage, then volatile stores.
    let p = unsafe { SOCK_ORIG6.get_or_insert_ptr_mut(ctx, None) };
    if p.is_null() {
        return Err(-1);
    }
    unsafe {
        for i in 0..4 {
            put(&raw mut (*p).orig_ip6_be[i], orig_ip6_be[i]);
            put(&raw mut (*p).to_ip6_be[i], to_ip6_be[i]);
        }
        put(&raw mut (*p).orig_port_be, orig_port_be);
        put(&raw mut (*p).to_port_be, to_port_be);
        put(&raw mut (*p).kind, kind);
        put(&raw mut (*p).flags, slot.flags);
        put(&raw mut (*p).ns_id, ns_id);
        put(&raw mut (*p).route_vip_be, route_vip_be);
        put(&raw mut (*p).service_id, slot.service_id);
        put(&raw mut (*p).connect_timeout_ms, slot.connect_timeout_ms);
    }
    Ok(())
}

/// One store LLVM may not merge with its neighbours (see [`record`]).
///
/// # Safety
/// `dst` must be valid for a write of `T`.
#[inline(always)]
unsafe fn put<T>(dst: *mut T, value: T) {
    unsafe { core::ptr::write_volatile(dst, value) }
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
