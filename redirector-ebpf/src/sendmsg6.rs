//! `cgroup/sendmsg6`: sendmsg4 for IPv6 sockets. A datagram an
//! unconnected UDP socket sends to port 53 goes to the responder's
//! `[::1]` socket, while it listens in the socket's namespace; the
//! nameserver is stored under the datagram's source address in the
//! namespace's own map ([`DNS_BY_SOCK6`]) for the responder, and in the
//! socket's storage for recvmsg6.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use redirector_common::{ORIG_DNS, SockAddr6};

use crate::{
    dns::{self, DNS_PORT_BE},
    maps::DNS_BY_SOCK6,
    orig::{self, NO_SLOT},
};

/// Let the datagram go (rewritten or not).
const PROCEED: i32 = 1;

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // Whatever goes wrong, the datagram goes where the app sent it.
    try_sendmsg6(&ctx).unwrap_or(PROCEED)
}

fn try_sendmsg6(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa = unsafe { &mut *ctx.sock_addr };
    // user_port holds the port in network order in its low 16 bits.
    if sa.user_port as u16 != DNS_PORT_BE {
        return Ok(PROCEED);
    }
    let Some(((responder_ip6, responder_port_be), ns)) = dns::responder6(ctx, false) else {
        return Ok(PROCEED);
    };
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if sk.is_null() {
        return Ok(PROCEED);
    }
    // Host order in bpf_sock.
    let src_port = unsafe { (*sk).src_port } as u16;
    if src_port == 0 {
        return Ok(PROCEED);
    }
    let Some(by_sock) = (unsafe { DNS_BY_SOCK6.get(&ns) }) else {
        return Ok(PROCEED);
    };
    let nameserver_ip6 = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let msg_src = [
        sa.msg_src_ip6[0],
        sa.msg_src_ip6[1],
        sa.msg_src_ip6[2],
        sa.msg_src_ip6[3],
    ];
    // The source the datagram will carry: one the app chose, else what
    // the kernel picks towards the responder's loopback address: that
    // address. `msg_src_ip6` is the flow's source, which udpv6_sendmsg
    // fills from IPV6_PKTINFO or else the socket's bound address before
    // this hook runs, so a socket bound to its own address is keyed by it.
    let src_ip6 = if msg_src != [0; 4] {
        msg_src
    } else {
        responder_ip6
    };
    let key = SockAddr6 {
        ip6_be: src_ip6,
        port_be: src_port.to_be(),
        _pad: 0,
    };
    let nameserver = SockAddr6 {
        ip6_be: nameserver_ip6,
        port_be: DNS_PORT_BE,
        _pad: 0,
    };
    by_sock.insert(&key, &nameserver, 0)?;
    orig::record6(
        ctx,
        ORIG_DNS,
        (nameserver_ip6, DNS_PORT_BE),
        (responder_ip6, responder_port_be),
        ns,
        0,
        NO_SLOT,
    )?;
    sa.user_ip6[0] = responder_ip6[0];
    sa.user_ip6[1] = responder_ip6[1];
    sa.user_ip6[2] = responder_ip6[2];
    sa.user_ip6[3] = responder_ip6[3];
    sa.user_port = u32::from(responder_port_be);
    Ok(PROCEED)
}
