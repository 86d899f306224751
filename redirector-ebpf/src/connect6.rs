//! `cgroup/connect6`: connect4 for IPv6 sockets. A TCP connect to a
//! service's IPv6 VIP:port goes, in connect4's order, to the kernel path's
//! slot, the proxy's IPv6 listener, or (the proxy is not listening) a slot
//! to fail open, else `EPERM`.
//!
//! The service's IPv4 VIP:port ([`ServiceValue6::vip4_be`]) is what the
//! proxy routes by and what the slot table is checked against, so it is
//! recorded in the socket's storage beside the IPv6 VIP the app dialled
//! (sock_ops re-keys it by the socket's IPv6 address into the namespace's
//! map). The slot table is the
//! service's IPv6 one (`RD_SLOTS6_V3`): IPv6 endpoints, and IPv4 ones at
//! their IPv4-mapped address (`::ffff:a.b.c.d`), as Cilium's socket load
//! balancer does; a socket with `IPV6_V6ONLY` cannot reach those, and gets
//! the kernel's `ENETUNREACH` (never on the proxy path, which is why the
//! proxy listens on `[::1]` rather than at `::ffff:127.0.0.1`). Kernel-path
//! connects are marked in the socket's storage for sock_ops' outcome report.
//!
//! A connect to an IPv4 VIP at its IPv4-mapped address (`::ffff:a.b.c.d`,
//! a dual-stack socket, as Java's are) is served the same way from the
//! IPv4 service map: the kernel runs no connect4 for it.
//!
//! Any other connect to port 53 goes to the DNS responder's `[::1]`
//! sockets while they listen, as in connect4: a connected UDP socket is
//! re-keyed by the egress program, a TCP one by sock_ops, both from the
//! socket's storage.

use aya_ebpf::{bindings::bpf_sock_addr, macros::cgroup_sock_addr, programs::SockAddrContext};
use redirector_common::{
    ORIG_DNS, ORIG_SERVICE, PROXY_ANY_LISTENER, PROXY_ENABLED, SOCK_SLOT, SVC_FAIL_OPEN,
    SVC_KERNEL_PATH, ServiceKey, ServiceKey6, ServiceValue6, Slot6, v4_mapped,
};

use crate::{
    dns::{self, DNS_PORT_BE},
    listener::{self, Found},
    log,
    maps::{CONFIG6, PROXY_CONFIG, SERVICES, SERVICES6},
    orig::{self, NO_SLOT},
    slots,
};

/// Let the connect go ahead (rewritten or not).
const PROCEED: i32 = 1;
/// Fail the connect with `EPERM`.
const REJECT: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// The first three words of an IPv4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_PREFIX: [u32; 3] = {
    let m = v4_mapped(0);
    [m[0], m[1], m[2]]
};

#[cgroup_sock_addr(connect6)]
pub(crate) fn connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx)
}

// Whatever goes wrong, the connect proceeds as the app asked. These return
// the verdict itself rather than connect4's `Result`: returned through the
// stack, its unused payload counts as an uninitialised read for a verifier
// without CAP_PERFMON.
fn try_connect6(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let tcp = match sa.protocol {
        IPPROTO_TCP => true,
        IPPROTO_UDP => false,
        _ => return PROCEED,
    };
    let key = ServiceKey6 {
        vip6_be: [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ],
        // user_port holds the port in network order in its low 16 bits.
        port_be: sa.user_port as u16,
        _pad: 0,
    };
    if tcp && let Some(svc) = unsafe { SERVICES6.get(&key) } {
        let svc = *svc;
        return service(ctx, sa, &key, &svc);
    }
    // An IPv4 VIP dialled from a dual-stack IPv6 socket at its
    // IPv4-mapped address (Java does this for every IPv4 destination):
    // connect4 never runs for such a connect, so it is served here, the
    // same way, proxy at [::1] included (the socket is not IPV6_V6ONLY).
    if tcp && key.vip6_be[..3] == V4_MAPPED_PREFIX {
        let route = ServiceKey {
            vip_be: key.vip6_be[3],
            port_be: key.port_be,
            _pad: 0,
        };
        if let Some(svc) = unsafe { SERVICES.get(&route) } {
            let svc = ServiceValue6 {
                service_id: svc.service_id,
                flags: svc.flags,
                vip4_be: route.vip_be,
            };
            return service(ctx, sa, &key, &svc);
        }
    }
    if key.port_be == DNS_PORT_BE {
        return to_dns(ctx, sa, &key, tcp);
    }
    PROCEED
}

/// A connect to port 53: to the DNS responder, if it is there to answer.
fn to_dns(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, key: &ServiceKey6, tcp: bool) -> i32 {
    let Some((to, ns)) = dns::responder6(ctx, tcp) else {
        return PROCEED;
    };
    let nameserver = (key.vip6_be, DNS_PORT_BE);
    // The record is how sock_ops (TCP) or the egress program (UDP) tell
    // the responder the nameserver: without it the socket is left alone.
    if let Err(e) = orig::record6(ctx, ORIG_DNS, nameserver, to, ns, 0, NO_SLOT) {
        log::map_update_failed(ctx, "RD_SKORIG6_V3", e);
        return PROCEED;
    }
    set_dst(sa, to.0, to.1);
    PROCEED
}

fn service(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey6,
    svc: &ServiceValue6,
) -> i32 {
    let Some(cfg) = PROXY_CONFIG.get(0) else {
        return PROCEED;
    };
    let cfg = *cfg;
    if cfg.flags & PROXY_ENABLED == 0 {
        return PROCEED;
    }
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == cfg.mark {
        return PROCEED;
    }
    let route = ServiceKey {
        vip_be: svc.vip4_be,
        port_be: key.port_be,
        _pad: 0,
    };
    if svc.flags & SVC_KERNEL_PATH != 0
        && !listener::left_alone(ctx)
        && let Some(slot) = slots::pick6(svc.service_id, &route)
    {
        return to_endpoint(ctx, sa, key, &route, svc.service_id, slot);
    }
    let proxy_ip6 = CONFIG6.get(0).map_or([0; 4], |c| c.proxy_ip6_be);
    let found = if proxy_ip6 == [0; 4] {
        Found::Nothing
    } else {
        listener::find6(ctx, proxy_ip6, cfg.proxy_port_be, true)
    };
    match found {
        Found::Ours(ns) => {
            let recorded = orig::record6(
                ctx,
                ORIG_SERVICE,
                (key.vip6_be, key.port_be),
                (proxy_ip6, cfg.proxy_port_be),
                ns,
                route.vip_be,
                NO_SLOT,
            );
            // Without the record the proxy could not route the connect:
            // then it goes on as the app asked.
            if let Err(e) = recorded {
                log::map_update_failed(ctx, "RD_SKORIG6_V3", e);
                return PROCEED;
            }
            set_dst(sa, proxy_ip6, cfg.proxy_port_be);
            PROCEED
        }
        // Another proxy the daemon redirects to (`--datapath-only`).
        Found::Foreign if cfg.flags & PROXY_ANY_LISTENER != 0 => {
            let _ = orig::record6(
                ctx,
                ORIG_SERVICE,
                (key.vip6_be, key.port_be),
                (proxy_ip6, cfg.proxy_port_be),
                0,
                route.vip_be,
                NO_SLOT,
            );
            set_dst(sa, proxy_ip6, cfg.proxy_port_be);
            PROCEED
        }
        Found::Foreign => PROCEED,
        Found::Nothing => {
            if listener::left_alone(ctx) {
                return PROCEED;
            }
            if svc.flags & SVC_FAIL_OPEN != 0
                && let Some(slot) = slots::pick6(svc.service_id, &route)
            {
                return to_endpoint(ctx, sa, key, &route, svc.service_id, slot);
            }
            if svc.flags & SVC_FAIL_OPEN == 0 {
                log::refused_tls(ctx, route.vip_be, route.port_be);
            } else {
                log::refused_no_slots(ctx, route.vip_be, route.port_be, svc.service_id);
            }
            REJECT
        }
    }
}

fn to_endpoint(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey6,
    route: &ServiceKey,
    service_id: u32,
    (slot, connect_timeout_ms): (Slot6, u32),
) -> i32 {
    // Best effort: without the record the connect still goes, unreported.
    let _ = orig::record6(
        ctx,
        ORIG_SERVICE,
        (key.vip6_be, key.port_be),
        (slot.ip6_be, slot.port_be),
        0,
        route.vip_be,
        orig::Slot {
            service_id,
            connect_timeout_ms,
            flags: SOCK_SLOT,
        },
    );
    set_dst(sa, slot.ip6_be, slot.port_be);
    PROCEED
}

fn set_dst(sa: &mut bpf_sock_addr, ip6_be: [u32; 4], port_be: u16) {
    // One 32-bit store per word: the only access the verifier allows.
    sa.user_ip6[0] = ip6_be[0];
    sa.user_ip6[1] = ip6_be[1];
    sa.user_ip6[2] = ip6_be[2];
    sa.user_ip6[3] = ip6_be[3];
    sa.user_port = u32::from(port_be);
}
