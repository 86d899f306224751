//! `cgroup/connect4`: where a TCP connect to a service VIP:port goes, and
//! where DNS goes.
//!
//! For a service VIP:port (TCP), in order:
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
//! Every rewrite is also recorded in the socket's storage (`orig.rs`), so
//! getpeername4 can show the app the VIP:port it dialled, whichever path
//! carried the connection.
//!
//! Any other connect to port 53 (TCP DNS, and UDP sockets a resolver
//! connects before sending, as glibc does) goes to the daemon's DNS
//! responder while it listens (`dns.rs`). TCP DNS is re-keyed by sock_ops
//! like a proxy connect; a connected UDP socket by the egress program,
//! since no hook sees its source port before the first datagram.
//!
//! Liveness is asked of the kernel on every connect: a lookup of a TCP
//! listener on the proxy address in the connecting socket's network
//! namespace (`bpf_sk_lookup_tcp`). The kernel closes a process's sockets as
//! it dies, so a `kill -9` takes effect on the next connect, with no
//! heartbeat to expire and nothing for the dying daemon to do.

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use redirector_common::{
    ORIG_DNS, ORIG_SERVICE, OrigDst, PROXY_ENABLED, SVC_FAIL_OPEN, SVC_KERNEL_PATH, ServiceKey,
    ServiceValue, Slot, SlotConn,
};

use crate::{
    dns::{self, DNS_PORT_BE},
    listener, log,
    maps::{ORIG_BY_COOKIE, PROXY_CONFIG, SERVICES, SLOT_CONNS},
    orig, slots,
};

/// Let the connect go ahead (rewritten or not).
const PROCEED: i32 = 1;
/// Fail the connect with `EPERM`.
const REJECT: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(connect4)]
pub(crate) fn connect4(ctx: SockAddrContext) -> i32 {
    // Whatever goes wrong, the connect proceeds as the app asked.
    try_connect4(&ctx).unwrap_or(PROCEED)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa = unsafe { &mut *ctx.sock_addr };
    let tcp = match sa.protocol {
        IPPROTO_TCP => true,
        IPPROTO_UDP => false,
        _ => return Ok(PROCEED),
    };
    let key = ServiceKey {
        vip_be: sa.user_ip4,
        // user_port holds the port in network order in its low 16 bits.
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    if tcp && let Some(svc) = unsafe { SERVICES.get(&key) } {
        let svc = *svc;
        return service(ctx, sa, &key, &svc);
    }
    if key.port_be == DNS_PORT_BE {
        return to_dns(ctx, sa, tcp);
    }
    Ok(PROCEED)
}

fn service(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey,
    svc: &ServiceValue,
) -> Result<i32, i64> {
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
        && let Some(slot) = slots::pick(svc.service_id, key)
    {
        return Ok(to_endpoint(ctx, sa, key, cookie, svc.service_id, slot));
    }
    if listener::listening(ctx, cfg.proxy_ip_be, cfg.proxy_port_be, true) {
        let orig = OrigDst {
            vip_be: key.vip_be,
            port_be: key.port_be,
            _pad: 0,
        };
        log::checked(
            ctx,
            "RD_OCOOKIE_V2",
            ORIG_BY_COOKIE.insert(&cookie, &orig, 0),
        )?;
        // Best effort: without it only getpeername() shows the proxy.
        let _ = orig::record(
            ctx,
            ORIG_SERVICE,
            (key.vip_be, key.port_be),
            (cfg.proxy_ip_be, cfg.proxy_port_be),
        );
        sa.user_ip4 = cfg.proxy_ip_be;
        sa.user_port = u32::from(cfg.proxy_port_be);
        return Ok(PROCEED);
    }
    if svc.flags & SVC_FAIL_OPEN != 0
        && let Some(slot) = slots::pick(svc.service_id, key)
    {
        return Ok(to_endpoint(ctx, sa, key, cookie, svc.service_id, slot));
    }
    if svc.flags & SVC_FAIL_OPEN == 0 {
        log::refused_tls(ctx, key.vip_be, key.port_be);
    } else {
        log::refused_no_slots(ctx, key.vip_be, key.port_be, svc.service_id);
    }
    Ok(REJECT)
}

/// A connect to port 53: to the DNS responder, if it is there to answer.
fn to_dns(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, tcp: bool) -> Result<i32, i64> {
    let Some(dns) = dns::responder(ctx, tcp) else {
        return Ok(PROCEED);
    };
    let to = (dns.responder_ip_be, dns.responder_port_be);
    if tcp {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let orig = OrigDst {
            vip_be: sa.user_ip4,
            port_be: DNS_PORT_BE,
            _pad: 0,
        };
        log::checked(
            ctx,
            "RD_OCOOKIE_V2",
            ORIG_BY_COOKIE.insert(&cookie, &orig, 0),
        )?;
        let _ = orig::record(ctx, ORIG_DNS, (sa.user_ip4, DNS_PORT_BE), to);
    } else {
        // The record is how the responder will learn the nameserver (the
        // egress program reads it), so without it the socket is left alone.
        orig::record(ctx, ORIG_DNS, (sa.user_ip4, DNS_PORT_BE), to)?;
    }
    sa.user_ip4 = to.0;
    sa.user_port = u32::from(to.1);
    Ok(PROCEED)
}

fn to_endpoint(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey,
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
    let _ = orig::record(
        ctx,
        ORIG_SERVICE,
        (key.vip_be, key.port_be),
        (slot.ip_be, slot.port_be),
    );
    sa.user_ip4 = slot.ip_be;
    sa.user_port = u32::from(slot.port_be);
    PROCEED
}
