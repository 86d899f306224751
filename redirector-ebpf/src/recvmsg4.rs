//! `cgroup/recvmsg4`: a reply from the DNS responder is shown to the app
//! as coming from the nameserver it asked, so stub resolvers that check
//! the source of an answer (glibc does) accept it. Runs for every UDP
//! receive that asks for the source address; only sockets whose storage
//! says they were sent to the responder, and datagrams from it, change.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::orig;

/// The only value the kernel accepts from this hook.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn recvmsg4(ctx: SockAddrContext) -> i32 {
    try_recvmsg4(&ctx);
    PROCEED
}

fn try_recvmsg4(ctx: &SockAddrContext) {
    orig::restore(ctx);
}
