//! `cgroup/connect4`: where a TCP connect to a service VIP:port goes, and
//! where DNS goes.
//!
//! For a service VIP:port (TCP), in order:
//! 1. Sockets carrying the proxy's mark are the proxy's own upstream
//!    connects and are never touched, which is what makes redirect loops
//!    impossible.
//! 2. A service on the kernel fast path goes straight to an endpoint picked
//!    at random from its slot table (weights are repetitions in the table).
//!    The socket's storage says so, and sock_ops reports how it ended.
//! 3. Otherwise, if the daemon's proxy listens in the app's network
//!    namespace, to the proxy; the socket's storage records the VIP:port
//!    and the namespace the listener serves (sock_ops re-keys it by the
//!    source address, which is not chosen yet, into that namespace's map).
//! 4. Someone else's socket holds the proxy port there (a pod's own
//!    sidecar): the namespace is left alone, the connect untouched. So is
//!    one the daemon marked left alone (`RD_NSKNOWN_V3`).
//! 5. Nothing listens (the daemon died or was stopped; its programs stay
//!    attached through pinned links): fail open, straight to an endpoint
//!    from the slot table the daemon last published, unless the proxy's job
//!    was TLS origination, or no endpoint is known; then the connect fails
//!    at once with `EPERM`, rather than going to a VIP that routes nowhere
//!    (a SYN timeout, minutes later).
//!
//! Every rewrite is recorded in the socket's storage (`orig.rs`), so
//! getpeername4 can show the app the VIP:port it dialled, whichever path
//! carried the connection.
//!
//! Any other connect to port 53 (TCP DNS, and UDP sockets a resolver
//! connects before sending, as glibc does) goes to the daemon's DNS
//! responder while it listens in the app's namespace (`dns.rs`). TCP DNS
//! is re-keyed by sock_ops like a proxy connect; a connected UDP socket by
//! the egress program, since no hook sees its source port before the first
//! datagram.
//!
//! Liveness is asked of the kernel on every connect: a lookup of a TCP
//! listener on the proxy address in the connecting socket's network
//! namespace (`bpf_sk_lookup_tcp`), which counts only if it carries the
//! daemon's mark in its storage (`listener.rs`). The kernel closes a
//! process's sockets as it dies, so a `kill -9` takes effect on the next
//! connect, with no heartbeat to expire and nothing for the dying daemon
//! to do.

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use redirector_common::{
    ORIG_DNS, ORIG_SERVICE, PROXY_ANY_LISTENER, PROXY_ENABLED, SOCK_SLOT, SVC_FAIL_OPEN,
    SVC_KERNEL_PATH, ServiceKey, ServiceValue, Slot,
};

use crate::{
    dns::{self, DNS_PORT_BE},
    listener::{self, Found},
    log,
    maps::{PROXY_CONFIG, SERVICES},
    orig::{self, NO_SLOT},
    slots,
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
    if svc.flags & SVC_KERNEL_PATH != 0
        && !listener::left_alone(ctx)
        && let Some(slot) = slots::pick(svc.service_id, key)
    {
        return Ok(to_endpoint(ctx, sa, key, svc.service_id, slot));
    }
    match listener::find(ctx, cfg.proxy_ip_be, cfg.proxy_port_be, true) {
        Found::Ours(ns) => {
            // Without the record the proxy could not route the connect:
            // then it goes on as the app asked.
            log::checked(
                ctx,
                "RD_SKORIG_V3",
                orig::record(
                    ctx,
                    ORIG_SERVICE,
                    (key.vip_be, key.port_be),
                    (cfg.proxy_ip_be, cfg.proxy_port_be),
                    ns,
                    NO_SLOT,
                ),
            )?;
            sa.user_ip4 = cfg.proxy_ip_be;
            sa.user_port = u32::from(cfg.proxy_port_be);
            Ok(PROCEED)
        }
        // Another proxy the daemon redirects to (`--datapath-only`).
        Found::Foreign if cfg.flags & PROXY_ANY_LISTENER != 0 => {
            let _ = orig::record(
                ctx,
                ORIG_SERVICE,
                (key.vip_be, key.port_be),
                (cfg.proxy_ip_be, cfg.proxy_port_be),
                0,
                NO_SLOT,
            );
            sa.user_ip4 = cfg.proxy_ip_be;
            sa.user_port = u32::from(cfg.proxy_port_be);
            Ok(PROCEED)
        }
        // Someone else's socket on the proxy port (a pod's own sidecar):
        // this namespace is left alone.
        Found::Foreign => Ok(PROCEED),
        Found::Nothing => {
            if listener::left_alone(ctx) {
                return Ok(PROCEED);
            }
            if svc.flags & SVC_FAIL_OPEN != 0
                && let Some(slot) = slots::pick(svc.service_id, key)
            {
                return Ok(to_endpoint(ctx, sa, key, svc.service_id, slot));
            }
            if svc.flags & SVC_FAIL_OPEN == 0 {
                log::refused_tls(ctx, key.vip_be, key.port_be);
            } else {
                log::refused_no_slots(ctx, key.vip_be, key.port_be, svc.service_id);
            }
            Ok(REJECT)
        }
    }
}

/// A connect to port 53: to the DNS responder, if it is there to answer.
/// TCP is re-keyed by sock_ops, a connected UDP socket by the egress
/// program, both from the record made here.
fn to_dns(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, tcp: bool) -> Result<i32, i64> {
    let Some((dns, ns)) = dns::responder(ctx, tcp) else {
        return Ok(PROCEED);
    };
    let to = (dns.responder_ip_be, dns.responder_port_be);
    log::checked(
        ctx,
        "RD_SKORIG_V3",
        orig::record(ctx, ORIG_DNS, (sa.user_ip4, DNS_PORT_BE), to, ns, NO_SLOT),
    )?;
    sa.user_ip4 = to.0;
    sa.user_port = u32::from(to.1);
    Ok(PROCEED)
}

fn to_endpoint(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey,
    service_id: u32,
    (slot, connect_timeout_ms): (Slot, u32),
) -> i32 {
    // Best effort: without the record the connect still goes, unreported.
    let _ = orig::record(
        ctx,
        ORIG_SERVICE,
        (key.vip_be, key.port_be),
        (slot.ip_be, slot.port_be),
        0,
        orig::Slot {
            service_id,
            connect_timeout_ms,
            flags: SOCK_SLOT,
        },
    );
    sa.user_ip4 = slot.ip_be;
    sa.user_port = u32::from(slot.port_be);
    PROCEED
}
