//! `cgroup/connect6`: connect4 for IPv6 sockets. A TCP connect to a
//! service's IPv6 VIP:port goes, in connect4's order, to the kernel path's
//! slot, the proxy's IPv6 listener, or (the proxy is not listening) a slot
//! to fail open, else `EPERM`.
//!
//! The service's IPv4 VIP:port ([`ServiceValue6::vip4_be`]) is what the
//! proxy routes by and what the slot table is checked against, so it is
//! the original destination recorded under the socket cookie (sock_ops
//! re-keys it by the socket's IPv6 address). The slot table is the
//! service's IPv6 one (`RD_SLOTS6_V2`): IPv6 endpoints, and IPv4 ones at
//! their IPv4-mapped address (`::ffff:a.b.c.d`), as Cilium's socket load
//! balancer does; a socket with `IPV6_V6ONLY` cannot reach those, and gets
//! the kernel's `ENETUNREACH` (never on the proxy path, which is why the
//! proxy listens on `[::1]` rather than at `::ffff:127.0.0.1`). Kernel-path
//! connects are remembered in `RD_SCONN6_V2` for sock_ops' outcome report.
//!
//! A connect to an IPv4 VIP at its IPv4-mapped address (`::ffff:a.b.c.d`,
//! a dual-stack socket, as Java's are) is served the same way from the
//! IPv4 service map: the kernel runs no connect4 for it.
//!
//! Any other connect to port 53 goes to the DNS responder's `[::1]`
//! sockets while they listen, as in connect4: a connected UDP socket is
//! re-keyed by the egress program, a TCP one by sock_ops (from
//! [`DNS_BY_COOKIE6`], since the cookie map's values are IPv4).

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use redirector_common::{
    ORIG_DNS, ORIG_SERVICE, OrigDst, PROXY_ENABLED, SVC_FAIL_OPEN, SVC_KERNEL_PATH, ServiceKey,
    ServiceKey6, ServiceValue6, Slot6, SlotConn6, SockAddr6, v4_mapped,
};

use crate::{
    dns::{self, DNS_PORT_BE},
    listener, log,
    maps::{
        CONFIG6, DNS_BY_COOKIE6, ORIG_BY_COOKIE, PROXY_CONFIG, SERVICES, SERVICES6, SLOT_CONNS6,
    },
    orig, slots,
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
    let Some(to) = dns::responder6(ctx, tcp) else {
        return PROCEED;
    };
    let nameserver = (key.vip6_be, DNS_PORT_BE);
    if tcp {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let ns = SockAddr6 {
            ip6_be: key.vip6_be,
            port_be: DNS_PORT_BE,
            _pad: 0,
        };
        if DNS_BY_COOKIE6.insert(&cookie, &ns, 0).is_err() {
            return PROCEED;
        }
        let _ = orig::record6(ctx, ORIG_DNS, nameserver, to);
    } else if orig::record6(ctx, ORIG_DNS, nameserver, to).is_err() {
        // The egress program learns the nameserver from this record.
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if svc.flags & SVC_KERNEL_PATH != 0
        && let Some(slot) = slots::pick6(svc.service_id, &route)
    {
        return to_endpoint(ctx, sa, key, cookie, svc.service_id, slot);
    }
    let proxy_ip6 = CONFIG6.get(0).map(|c| c.proxy_ip6_be);
    if let Some(proxy_ip6) = proxy_ip6
        && proxy_ip6 != [0; 4]
        && listener::listening6(ctx, proxy_ip6, cfg.proxy_port_be, true)
    {
        let orig = OrigDst {
            vip_be: route.vip_be,
            port_be: route.port_be,
            _pad: 0,
        };
        if let Err(e) = ORIG_BY_COOKIE.insert(&cookie, &orig, 0) {
            log::map_update_failed(ctx, "RD_OCOOKIE_V2", e.into());
            return PROCEED;
        }
        // Best effort: without it only getpeername() shows the proxy.
        let _ = orig::record6(
            ctx,
            ORIG_SERVICE,
            (key.vip6_be, key.port_be),
            (proxy_ip6, cfg.proxy_port_be),
        );
        set_dst(sa, proxy_ip6, cfg.proxy_port_be);
        return PROCEED;
    }
    if svc.flags & SVC_FAIL_OPEN != 0
        && let Some(slot) = slots::pick6(svc.service_id, &route)
    {
        return to_endpoint(ctx, sa, key, cookie, svc.service_id, slot);
    }
    if svc.flags & SVC_FAIL_OPEN == 0 {
        log::refused_tls(ctx, route.vip_be, route.port_be);
    } else {
        log::refused_no_slots(ctx, route.vip_be, route.port_be, svc.service_id);
    }
    REJECT
}

fn to_endpoint(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    key: &ServiceKey6,
    cookie: u64,
    service_id: u32,
    (slot, connect_timeout_ms): (Slot6, u32),
) -> i32 {
    let conn = SlotConn6 {
        service_id,
        ip6_be: slot.ip6_be,
        port_be: slot.port_be,
        flags: 0,
        connect_timeout_ms,
    };
    // Best effort: without the entry the connect still goes, unreported.
    let _ = SLOT_CONNS6.insert(&cookie, &conn, 0);
    let _ = orig::record6(
        ctx,
        ORIG_SERVICE,
        (key.vip6_be, key.port_be),
        (slot.ip6_be, slot.port_be),
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
