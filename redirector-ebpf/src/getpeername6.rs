//! `cgroup/getpeername6`: getpeername4 for IPv6 sockets. A socket connect6
//! redirected shows the IPv6 VIP:port it dialled, not `[::1]`'s proxy
//! listener or the IPv4-mapped endpoint of the kernel path.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::orig;

/// The only value the kernel accepts from this hook.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn getpeername6(ctx: SockAddrContext) -> i32 {
    orig::restore6(&ctx);
    PROCEED
}
