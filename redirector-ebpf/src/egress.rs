//! `cgroup_skb/egress`: re-keys a connected UDP DNS socket by its source
//! address, as sock_ops does for TCP; IPv4 sockets connect4 sent to the
//! responder, and IPv6 ones connect6 sent to its `[::1]` socket.
//!
//! glibc connects its UDP socket to the nameserver, and connect4 sends it
//! to the responder before the kernel picks its source port; sending on a
//! connected socket runs no sendmsg hook. Its first datagram is the first
//! moment the port is known and still ahead of the responder (this runs in
//! the sender's context, before the packet is queued), so the nameserver
//! from the socket's storage is stored here under the source address, in
//! the map of the namespace whose responder it was sent to (also in the
//! storage), where the UDP responder looks it up.
//!
//! It runs for every packet of the cgroup, so the first test (is this
//! socket connected to the responder?) uses socket fields the context
//! already has, before any helper call.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_sk_fullsock, bpf_sk_storage_get},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use redirector_common::{DNS_ENABLED, ORIG_DNS, OrigDst, SockAddr6, SockKey, SockOrig, SockOrig6};

use crate::{
    log,
    maps::{CONFIG6, DNS_BY_SOCK, DNS_BY_SOCK6, DNS_CONFIG, SOCK_ORIG, SOCK_ORIG6},
};

/// Let the packet go; this program never drops anything.
const PASS: i32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_UDP: u32 = 17;

#[cgroup_skb(egress)]
pub(crate) fn rd_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_egress(&ctx);
    PASS
}

fn try_egress(ctx: &SkBuffContext) -> Result<(), i64> {
    let skb: &__sk_buff = unsafe { &*ctx.skb.skb };
    let Some(cfg) = DNS_CONFIG.get(0) else {
        return Ok(());
    };
    // remote_port: the socket's peer port in network order, in the upper
    // 16 bits (the kernel's __sk_buff quirk on little-endian).
    if skb.family == AF_INET6 && (skb.remote_port >> 16) as u16 == cfg.responder_port_be {
        return egress6(skb, cfg.flags);
    }
    if skb.remote_ip4 != cfg.responder_ip_be
        || (skb.remote_port >> 16) as u16 != cfg.responder_port_be
        || cfg.flags & DNS_ENABLED == 0
        || skb.family != AF_INET
    {
        return Ok(());
    }
    let sk = unsafe { skb.__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() || unsafe { (*sk).protocol } != IPPROTO_UDP {
        return Ok(());
    }
    let map = (&raw const SOCK_ORIG).cast_mut().cast();
    let rec =
        unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<SockOrig>();
    if rec.is_null() {
        return Ok(());
    }
    let rec = unsafe { *rec };
    if rec.kind != ORIG_DNS {
        return Ok(());
    }
    let Some(by_sock) = (unsafe { DNS_BY_SOCK.get(&rec.ns_id) }) else {
        return Ok(());
    };
    let key = SockKey {
        ip_be: skb.local_ip4,
        // Host order, unlike remote_port.
        port_be: (skb.local_port as u16).to_be(),
        _pad: 0,
    };
    let nameserver = OrigDst {
        vip_be: rec.orig_ip_be,
        port_be: rec.orig_port_be,
        _pad: 0,
    };
    log::checked(ctx, "RD_DNSSOCK_V3", by_sock.insert(&key, &nameserver, 0))?;
    Ok(())
}

/// The IPv6 case: a socket connect6 sent to the responder's `[::1]`.
fn egress6(skb: &__sk_buff, flags: u32) -> Result<(), i64> {
    if flags & DNS_ENABLED == 0 {
        return Ok(());
    }
    let Some(cfg6) = CONFIG6.get(0) else {
        return Ok(());
    };
    // Word by word: the verifier allows only 32-bit loads of these.
    let remote = unsafe {
        [
            core::ptr::read_volatile(&raw const skb.remote_ip6[0]),
            core::ptr::read_volatile(&raw const skb.remote_ip6[1]),
            core::ptr::read_volatile(&raw const skb.remote_ip6[2]),
            core::ptr::read_volatile(&raw const skb.remote_ip6[3]),
        ]
    };
    if remote != cfg6.responder_ip6_be || remote == [0; 4] {
        return Ok(());
    }
    let sk = unsafe { skb.__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() || unsafe { (*sk).protocol } != IPPROTO_UDP {
        return Ok(());
    }
    let map = (&raw const SOCK_ORIG6).cast_mut().cast();
    let rec =
        unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<SockOrig6>();
    if rec.is_null() {
        return Ok(());
    }
    let rec = unsafe { *rec };
    if rec.kind != ORIG_DNS {
        return Ok(());
    }
    let local = unsafe {
        [
            core::ptr::read_volatile(&raw const skb.local_ip6[0]),
            core::ptr::read_volatile(&raw const skb.local_ip6[1]),
            core::ptr::read_volatile(&raw const skb.local_ip6[2]),
            core::ptr::read_volatile(&raw const skb.local_ip6[3]),
        ]
    };
    let Some(by_sock) = (unsafe { DNS_BY_SOCK6.get(&rec.ns_id) }) else {
        return Ok(());
    };
    let key = SockAddr6 {
        ip6_be: local,
        // Host order, unlike remote_port.
        port_be: (skb.local_port as u16).to_be(),
        _pad: 0,
    };
    let nameserver = SockAddr6 {
        ip6_be: rec.orig_ip6_be,
        port_be: rec.orig_port_be,
        _pad: 0,
    };
    by_sock.insert(&key, &nameserver, 0)?;
    Ok(())
}
