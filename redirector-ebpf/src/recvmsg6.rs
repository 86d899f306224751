//! `cgroup/recvmsg6`: recvmsg4 for IPv6 sockets. A reply from the DNS
//! responder's `[::1]` socket is shown as coming from the nameserver the
//! app asked.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::orig;

/// The only value the kernel accepts from this hook.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn recvmsg6(ctx: SockAddrContext) -> i32 {
    orig::restore6(&ctx);
    PROCEED
}
