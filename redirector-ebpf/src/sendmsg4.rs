//! `cgroup/sendmsg4`: a datagram an unconnected UDP socket sends to port 53
//! goes to the daemon's DNS responder instead, while it listens.
//!
//! The responder must know which nameserver the app asked, and only sees
//! the datagram's source address. That is known here (the kernel binds an
//! unbound socket before this hook runs), so the nameserver is stored under
//! it in the namespace's own map ([`DNS_BY_SOCK`]), and in the socket's storage for recvmsg4, which
//! shows the responder's reply as coming from that nameserver. A socket
//! that talks to several nameservers is matched with the last one it asked.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use redirector_common::{ORIG_DNS, OrigDst, SockKey};

use crate::{
    dns::{self, DNS_PORT_BE},
    log,
    maps::DNS_BY_SOCK,
    orig::{self, NO_SLOT},
};

/// Let the datagram go (rewritten or not).
const PROCEED: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn sendmsg4(ctx: SockAddrContext) -> i32 {
    // Whatever goes wrong, the datagram goes where the app sent it.
    try_sendmsg4(&ctx).unwrap_or(PROCEED)
}

fn try_sendmsg4(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa = unsafe { &mut *ctx.sock_addr };
    // user_port holds the port in network order in its low 16 bits.
    if sa.user_port as u16 != DNS_PORT_BE {
        return Ok(PROCEED);
    }
    let Some((dns, ns)) = dns::responder(ctx, false) else {
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
    // The namespace's own map: without one (the daemon is setting the
    // namespace up or letting it go) the datagram goes where it was sent.
    let Some(by_sock) = (unsafe { DNS_BY_SOCK.get(&ns) }) else {
        return Ok(PROCEED);
    };
    // The source the datagram will carry: one the app chose, else what the
    // kernel picks towards the responder's loopback address, which is that
    // address. `msg_src_ip4` is the kernel's `ipc.addr`, which udp_sendmsg
    // starts from the socket's bound address (`inet_saddr`) and IP_PKTINFO
    // may override, so a socket bound to 127.0.0.53 or to a pod's address
    // is keyed by that address (tests/dns_capture.rs binds both).
    let src_ip = if sa.msg_src_ip4 != 0 {
        sa.msg_src_ip4
    } else {
        dns.responder_ip_be
    };
    let key = SockKey {
        ip_be: src_ip,
        port_be: src_port.to_be(),
        _pad: 0,
    };
    let nameserver = OrigDst {
        vip_be: sa.user_ip4,
        port_be: DNS_PORT_BE,
        _pad: 0,
    };
    log::checked(ctx, "RD_DNSSOCK_V3", by_sock.insert(&key, &nameserver, 0))?;
    orig::record(
        ctx,
        ORIG_DNS,
        (sa.user_ip4, DNS_PORT_BE),
        (dns.responder_ip_be, dns.responder_port_be),
        ns,
        NO_SLOT,
    )?;
    sa.user_ip4 = dns.responder_ip_be;
    sa.user_port = u32::from(dns.responder_port_be);
    Ok(PROCEED)
}
