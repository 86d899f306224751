//! `sock_ops`: when a redirected socket sends its SYN, its source port is
//! known; re-key the original destination by that address so the proxy,
//! which only sees its peer address on accept, can find it.
//!
//! `TCP_CONNECT_CB` runs inside `connect()` before the SYN leaves, so the
//! entry exists before the proxy can possibly accept the connection.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB, helpers::bpf_get_socket_cookie, macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_common::SockKey;

use crate::maps::{ORIG_BY_COOKIE, ORIG_BY_SOCK};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn rd_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    // sock_ops return values only matter for ops that ask for a reply.
    1
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), i64> {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB || ctx.family() != AF_INET {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return Ok(());
    };
    let orig = *orig;
    let key = SockKey {
        ip_be: ctx.local_ip4(),
        // local_port is in host order, unlike every other port in the ctx.
        port_be: (ctx.local_port() as u16).to_be(),
        _pad: 0,
    };
    ORIG_BY_SOCK.insert(&key, &orig, 0)?;
    ORIG_BY_COOKIE.remove(&cookie)?;
    Ok(())
}
