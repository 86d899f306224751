//! `cgroup/connect4`: a TCP connect to a service VIP:port goes to the proxy.
//!
//! The original destination is stored under the socket cookie; the source
//! port is not chosen yet at this point, so `sockops` re-keys it once it is.
//! Sockets carrying the proxy's mark are the proxy's own upstream connects
//! and are never touched, which is what makes redirect loops impossible.

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use redirector_common::{OrigDst, PROXY_ENABLED, ServiceKey};

use crate::maps::{ORIG_BY_COOKIE, PROXY_CONFIG, SERVICES};

/// Let the connect go ahead (rewritten or not).
const PROCEED: i32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // Fail open: whatever goes wrong, the connect proceeds as the app asked.
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
    if unsafe { SERVICES.get(&key) }.is_none() {
        return Ok(PROCEED);
    }
    let Some(cfg) = PROXY_CONFIG.get(0) else {
        return Ok(PROCEED);
    };
    if cfg.flags & PROXY_ENABLED == 0 {
        return Ok(PROCEED);
    }
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == cfg.mark {
        return Ok(PROCEED);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let orig = OrigDst {
        vip_be: key.vip_be,
        port_be: key.port_be,
        _pad: 0,
    };
    ORIG_BY_COOKIE.insert(&cookie, &orig, 0)?;
    sa.user_ip4 = cfg.proxy_ip_be;
    sa.user_port = u32::from(cfg.proxy_port_be);
    Ok(PROCEED)
}
