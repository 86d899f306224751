//! `cgroup/getpeername4`: a redirected socket's peer is what the app
//! dialled (a service VIP:port, or the nameserver:53), not the proxy's
//! listener, the endpoint the kernel path chose, or the DNS responder.
//! `getsockname()` is left alone: the local address is real.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::orig;

/// The only value the kernel accepts from this hook.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername4(&ctx);
    PROCEED
}

fn try_getpeername4(ctx: &SockAddrContext) {
    orig::restore(ctx);
}
