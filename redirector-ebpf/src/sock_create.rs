//! `cgroup/sock_create`: the first socket made in a network namespace the
//! daemon does not know yet tells it so, so a pod started without the CNI
//! plugin (or before the daemon) is found within milliseconds, not at the
//! daemon's next scan of the cgroup.
//!
//! Runs for every socket made in the attached cgroup: one helper call and
//! one lookup in `RD_NSKNOWN_V3` (netns cookie → what the daemon knows).
//! An unknown namespace is marked reported there (`BPF_NOEXIST`, so only
//! the first socket of it reports) and an [`NsEvent`] goes to the ring.
//! The map is LRU, so namespaces that report and are never served (a
//! process that unshared one of its own) cannot fill it. Never refuses a
//! socket.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};
use redirector_common::{NS_REPORTED, NsEvent};

use crate::maps::{NS_EVENTS, NS_KNOWN};

/// Let the socket be made.
const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub(crate) fn rd_sock_create(ctx: SockContext) -> i32 {
    report(&ctx);
    ALLOW
}

fn report(ctx: &SockContext) {
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock.cast()) };
    if unsafe { NS_KNOWN.get(&cookie) }.is_some() {
        return;
    }
    if NS_KNOWN
        .insert(&cookie, &NS_REPORTED, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return;
    }
    let event = NsEvent {
        netns_cookie: cookie,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    };
    let _ = NS_EVENTS.output::<NsEvent>(&event, 0);
}
