//! `sock_ops`: two jobs on client sockets of the attached cgroup.
//!
//! Proxy path: when a redirected socket sends its SYN, its source port is
//! known; re-key the original destination by that address (IPv4 or IPv6,
//! in a map per family) so the proxy,
//! which only sees its peer address on accept, can find it.
//! `TCP_CONNECT_CB` runs inside `connect()` before the SYN leaves, so the
//! entry exists before the proxy can possibly accept the connection.
//!
//! Kernel path: report how each connect connect4 sent straight to an
//! endpoint ended, so outlier detection in the daemon sees those endpoints
//! fail. `ACTIVE_ESTABLISHED_CB` is a success. A failure (refused,
//! unreachable, SYN retries exhausted) is the socket going from SYN_SENT to
//! CLOSE, which only `STATE_CB` shows, and the kernel calls that only for
//! sockets that ask: so at `TCP_CONNECT_CB` those sockets, and only those,
//! turn it on. Outcomes go to a ring buffer the daemon reads.
//!
//! Kernel-path connects also get the service's `connectTimeout`: without a
//! proxy to time out the connect, a black-holed endpoint would hold the app
//! for the kernel's SYN retries (about two minutes) and take minutes to
//! eject. `TCP_USER_TIMEOUT` bounds the handshake; it is set only when the
//! app has not set one itself, and cleared again once connected, so the
//! established connection behaves as the app configured it.

use aya_ebpf::{
    bindings::{
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::{bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_common::{
    ConnectOutcome, ConnectOutcome6, OUTCOME_CONNECTED, OUTCOME_FAILED, SLOT_CONN_TIMEOUT_SET,
    SockAddr6, SockKey,
};

use crate::{
    log,
    maps::{
        DNS_BY_COOKIE6, DNS_BY_SOCK6, ORIG_BY_COOKIE, ORIG_BY_SOCK, ORIG_BY_SOCK6, OUTCOMES,
        SLOT_CONNS, SLOT_CONNS6,
    },
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOL_TCP: i32 = 6;
const TCP_USER_TIMEOUT: i32 = 18;

#[sock_ops]
pub(crate) fn rd_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    // sock_ops return values only matter for ops that ask for a reply.
    1
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), i64> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_end(ctx, OUTCOME_CONNECTED),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_SYN_SENT && ctx.arg(1) == BPF_TCP_CLOSE => {
            on_end(ctx, OUTCOME_FAILED)
        }
        _ => Ok(()),
    }
}

fn cookie(ctx: &SockOpsContext) -> u64 {
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

fn on_connect(ctx: &SockOpsContext) -> Result<(), i64> {
    let cookie = cookie(ctx);
    if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(&cookie) } {
        let orig = *orig;
        // local_port is in host order, unlike every other port in the ctx.
        let port_be = (ctx.local_port() as u16).to_be();
        if ctx.family() == AF_INET6 {
            // connect6 recorded it: an IPv6 client of the proxy's [::1]
            // listener.
            let key = SockAddr6 {
                ip6_be: local_ip6(ctx),
                port_be,
                _pad: 0,
            };
            log::checked(ctx, "RD_OSOCK6_V2", ORIG_BY_SOCK6.insert(&key, &orig, 0))?;
        } else {
            let key = SockKey {
                ip_be: ctx.local_ip4(),
                port_be,
                _pad: 0,
            };
            log::checked(ctx, "RD_OSOCK_V2", ORIG_BY_SOCK.insert(&key, &orig, 0))?;
        }
        ORIG_BY_COOKIE.remove(&cookie)?;
        return Ok(());
    }
    if ctx.family() == AF_INET6
        && let Some(ns) = unsafe { DNS_BY_COOKIE6.get(&cookie) }
    {
        // TCP DNS over IPv6 (connect6): the responder looks the
        // nameserver up by its peer address.
        let ns = *ns;
        let key = SockAddr6 {
            ip6_be: local_ip6(ctx),
            port_be: (ctx.local_port() as u16).to_be(),
            _pad: 0,
        };
        DNS_BY_SOCK6.insert(&key, &ns, 0)?;
        DNS_BY_COOKIE6.remove(&cookie)?;
        return Ok(());
    }
    if ctx.family() == AF_INET6
        && let Some(conn) = unsafe { SLOT_CONNS6.get(&cookie) }
    {
        let mut conn = *conn;
        ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)?;
        if conn.connect_timeout_ms != 0 && user_timeout(ctx) == Some(0) {
            let ms = conn.connect_timeout_ms.min(i32::MAX as u32) as i32;
            if set_user_timeout(ctx, ms) {
                conn.flags |= SLOT_CONN_TIMEOUT_SET;
                SLOT_CONNS6.insert(&cookie, &conn, 0)?;
            }
        }
        return Ok(());
    }
    let Some(conn) = (unsafe { SLOT_CONNS.get(&cookie) }) else {
        return Ok(());
    };
    let mut conn = *conn;
    ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)?;
    if conn.connect_timeout_ms != 0 && user_timeout(ctx) == Some(0) {
        let ms = conn.connect_timeout_ms.min(i32::MAX as u32) as i32;
        if set_user_timeout(ctx, ms) {
            conn.flags |= SLOT_CONN_TIMEOUT_SET;
            SLOT_CONNS.insert(&cookie, &conn, 0)?;
        }
    }
    Ok(())
}

/// The socket's IPv6 address, word by word: the verifier allows only
/// 32-bit loads at constant offsets of the context, and a copy of the
/// whole array (`SockOpsContext::local_ip6`) compiles to a load through a
/// moved context pointer, which it refuses.
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
        ]
    }
}

fn user_timeout(ctx: &SockOpsContext) -> Option<i32> {
    let mut ms: i32 = 0;
    let rc = unsafe {
        bpf_getsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut ms).cast(),
            size_of::<i32>() as i32,
        )
    };
    (rc == 0).then_some(ms)
}

fn set_user_timeout(ctx: &SockOpsContext, ms: i32) -> bool {
    let mut ms = ms;
    let rc = unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut ms).cast(),
            size_of::<i32>() as i32,
        )
    };
    rc == 0
}

fn on_end(ctx: &SockOpsContext, kind: u8) -> Result<(), i64> {
    let cookie = cookie(ctx);
    let syn_retrans = if kind == OUTCOME_FAILED {
        unsafe { (*ctx.ops).total_retrans }
    } else {
        0
    };
    if ctx.family() == AF_INET6
        && let Some(conn) = unsafe { SLOT_CONNS6.get(&cookie) }
    {
        let conn = *conn;
        SLOT_CONNS6.remove(&cookie)?;
        let outcome = ConnectOutcome6 {
            service_id: conn.service_id,
            ip6_be: conn.ip6_be,
            port_be: conn.port_be,
            kind,
            _pad: 0,
            syn_retrans,
        };
        let _ = OUTCOMES.output::<ConnectOutcome6>(&outcome, u64::from(wakeup(kind)));
        return after_outcome(ctx, kind, conn.flags);
    }
    let Some(conn) = (unsafe { SLOT_CONNS.get(&cookie) }) else {
        return Ok(());
    };
    let conn = *conn;
    SLOT_CONNS.remove(&cookie)?;
    let outcome = ConnectOutcome {
        service_id: conn.service_id,
        ip_be: conn.ip_be,
        port_be: conn.port_be,
        kind,
        _pad: 0,
        syn_retrans,
    };
    let _ = OUTCOMES.output::<ConnectOutcome>(&outcome, u64::from(wakeup(kind)));
    after_outcome(ctx, kind, conn.flags)
}

/// A full ring (the daemon is gone or behind) loses the outcome, never
/// the connection. A success only resets counters, so it waits for the
/// daemon's next poll: waking the daemon per connect costs an interrupt
/// (a hypervisor exit on a VM) and halved new-connection throughput in
/// the benchmark. A failure may eject, so it wakes the daemon at once.
fn wakeup(kind: u8) -> u32 {
    if kind == OUTCOME_CONNECTED {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    }
}

fn after_outcome(ctx: &SockOpsContext, kind: u8, flags: u16) -> Result<(), i64> {
    if kind == OUTCOME_CONNECTED {
        if flags & SLOT_CONN_TIMEOUT_SET != 0 {
            set_user_timeout(ctx, 0);
        }
        // Nothing more to learn from this socket's state changes.
        ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32)?;
    }
    Ok(())
}
