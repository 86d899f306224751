//! Port-53 traffic and the daemon's DNS responder, shared by connect4 and
//! connect6 (TCP DNS, connected UDP sockets) and sendmsg4 and sendmsg6
//! (unconnected UDP).

use aya_ebpf::programs::SockAddrContext;
use redirector_common::{DNS_ENABLED, DnsConfig, NsId};

use crate::{
    listener::{self, Found},
    maps::{CONFIG6, DNS_CONFIG, PROXY_CONFIG},
};

/// Port 53 as the hooks see it (network order).
pub(crate) const DNS_PORT_BE: u16 = 53u16.to_be();

/// The responder, and the namespace it serves, if this socket's port-53
/// traffic should go to it: capture is on, the socket is not one of the
/// daemon's own (its upstream queries carry the proxy's mark), and the
/// daemon's responder is there to answer in this socket's network
/// namespace. Otherwise DNS goes where the app sent it, so a dead daemon
/// costs apps their configured names, nothing more, and a namespace whose
/// own app holds the port keeps its DNS to itself.
pub(crate) fn responder(ctx: &SockAddrContext, tcp: bool) -> Option<(DnsConfig, NsId)> {
    let cfg = *DNS_CONFIG.get(0)?;
    if cfg.flags & DNS_ENABLED == 0 {
        return None;
    }
    let mark = PROXY_CONFIG.get(0)?.mark;
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() || unsafe { (*sk).mark } == mark {
        return None;
    }
    match listener::find(ctx, cfg.responder_ip_be, cfg.responder_port_be, tcp) {
        Found::Ours(ns) => Some((cfg, ns)),
        Found::Foreign | Found::Nothing => None,
    }
}

/// [`responder`] for an IPv6 socket: the responder's `[::1]` address and
/// port, and its namespace, if it listens there.
pub(crate) fn responder6(ctx: &SockAddrContext, tcp: bool) -> Option<(([u32; 4], u16), NsId)> {
    let cfg = *DNS_CONFIG.get(0)?;
    if cfg.flags & DNS_ENABLED == 0 {
        return None;
    }
    let ip6 = CONFIG6.get(0)?.responder_ip6_be;
    if ip6 == [0; 4] {
        return None;
    }
    let mark = PROXY_CONFIG.get(0)?.mark;
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() || unsafe { (*sk).mark } == mark {
        return None;
    }
    match listener::find6(ctx, ip6, cfg.responder_port_be, tcp) {
        Found::Ours(ns) => Some(((ip6, cfg.responder_port_be), ns)),
        Found::Foreign | Found::Nothing => None,
    }
}
