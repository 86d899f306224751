//! `cgroup/connect4`: where a TCP connect to a service VIP:port goes.
//!
//! In order:
//! 1. Sockets carrying the proxy's mark are the proxy's own upstream
//!    connects and are never touched, which is what makes redirect loops
//!    impossible.
//! 2. A service on the kernel fast path goes straight to an endpoint picked
//!    at random from its slot table (weights are repetitions in the table).
//!    The cookie is remembered so sock_ops can report how the connect ended.
//! 3. Otherwise, if the proxy is listening, to the proxy; the original
//!    destination is stored under the socket cookie (the source port is not
//!    chosen yet, so `sockops` re-keys it once it is).
//! 4. The proxy is not listening (the daemon died or was stopped; its
//!    programs stay attached through pinned links): fail open, straight to an
//!    endpoint from the slot table the daemon last published, unless the
//!    proxy's job was TLS origination, or no endpoint is known; then the
//!    connect fails at once with `EPERM`, rather than going to a VIP that
//!    routes nowhere (a SYN timeout, minutes later).
//!
//! Liveness is asked of the kernel on every connect: a lookup of a TCP
//! listener on the proxy address in the connecting socket's network
//! namespace (`bpf_sk_lookup_tcp`). The kernel closes a process's sockets as
//! it dies, so a `kill -9` takes effect on the next connect, with no
//! heartbeat to expire and nothing for the dying daemon to do.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_addr, bpf_sock_tuple},
    helpers::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_sk_lookup_tcp, bpf_sk_release},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use redirector_common::{
    OrigDst, PROXY_ENABLED, ProxyConfig, SVC_FAIL_OPEN, SVC_KERNEL_PATH, ServiceKey, Slot, SlotConn,
};

use crate::maps::{ORIG_BY_COOKIE, PROXY_CONFIG, SERVICES, SLOT_CONNS, SLOTS};

/// Let the connect go ahead (rewritten or not).
const PROCEED: i32 = 1;
/// Fail the connect with `EPERM`.
const REJECT: i32 = 0;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // Whatever goes wrong, the connect proceeds as the app asked.
    try_connect4(&ctx).unwrap_or(PROCEED)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_TCP {
        return Ok(PROCEED);
    }
    let key = ServiceKey {
        vip_be: sa.user_ip4,
        // user_port holds the port in network order in its low 16 bits.
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    let Some(svc) = (unsafe { SERVICES.get(&key) }) else {
        return Ok(PROCEED);
    };
    let svc = *svc;
    let Some(cfg) = PROXY_CONFIG.get(0) else {
        return Ok(PROCEED);
    };
    let cfg = *cfg;
    if cfg.flags & PROXY_ENABLED == 0 {
        return Ok(PROCEED);
    }
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == cfg.mark {
        return Ok(PROCEED);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if svc.flags & SVC_KERNEL_PATH != 0
        && let Some(slot) = pick(svc.service_id, &key)
    {
        return Ok(to_endpoint(sa, cookie, svc.service_id, slot));
    }
    if proxy_listening(ctx, &cfg) {
        let orig = OrigDst {
            vip_be: key.vip_be,
            port_be: key.port_be,
            _pad: 0,
        };
        ORIG_BY_COOKIE.insert(&cookie, &orig, 0)?;
        sa.user_ip4 = cfg.proxy_ip_be;
        sa.user_port = u32::from(cfg.proxy_port_be);
        return Ok(PROCEED);
    }
    if svc.flags & SVC_FAIL_OPEN != 0
        && let Some(slot) = pick(svc.service_id, &key)
    {
        return Ok(to_endpoint(sa, cookie, svc.service_id, slot));
    }
    Ok(REJECT)
}

/// A random entry of the service's slot table, if it has one for this
/// VIP:port, with the service's connect timeout.
fn pick(service_id: u32, key: &ServiceKey) -> Option<(Slot, u32)> {
    let table = unsafe { SLOTS.get(&service_id) }?;
    let count = table.count;
    if table.vip_be != key.vip_be || table.port_be != key.port_be || count == 0 {
        return None;
    }
    let i = unsafe { bpf_get_prandom_u32() } % count;
    let slot = table.slots.get(i as usize).copied()?;
    Some((slot, table.connect_timeout_ms))
}

fn to_endpoint(
    sa: &mut bpf_sock_addr,
    cookie: u64,
    service_id: u32,
    (slot, connect_timeout_ms): (Slot, u32),
) -> i32 {
    let conn = SlotConn {
        service_id,
        ip_be: slot.ip_be,
        port_be: slot.port_be,
        flags: 0,
        connect_timeout_ms,
    };
    // Best effort: without the entry the connect still goes, unreported.
    let _ = SLOT_CONNS.insert(&cookie, &conn, 0);
    sa.user_ip4 = slot.ip_be;
    sa.user_port = u32::from(slot.port_be);
    PROCEED
}

/// `bpf_sock_tuple`'s IPv4 member, the only part the lookup reads.
#[repr(C)]
struct Ipv4Tuple {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Whether a TCP listener holds the proxy address in this socket's network
/// namespace. A zero source never matches an established socket, so only
/// listeners can answer.
fn proxy_listening(ctx: &SockAddrContext, cfg: &ProxyConfig) -> bool {
    let mut tuple = Ipv4Tuple {
        saddr: 0,
        daddr: cfg.proxy_ip_be,
        sport: 0,
        dport: cfg.proxy_port_be,
    };
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.sock_addr.cast(),
            (&raw mut tuple).cast::<bpf_sock_tuple>(),
            core::mem::size_of::<Ipv4Tuple>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk.cast()) };
    true
}
