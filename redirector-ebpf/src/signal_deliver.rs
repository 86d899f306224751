//! `raw_tracepoint/signal_deliver`: notices that the serving daemon is
//! being killed before the kernel closes its sockets.
//!
//! A `kill -9` (or the OOM killer, or a crash) takes a few milliseconds
//! from the signal to the last of the daemon's descriptors closed (its
//! threads exit, its memory is torn down, then its files are closed in
//! order); meanwhile its listeners still take connects into their
//! backlog, which the kernel then resets. Every thread of a process that
//! dies of a fatal signal passes through `get_signal`'s group-exit path,
//! which fires this tracepoint with `SIGKILL` in the dying thread's own
//! context, before any of that teardown. When that thread belongs to the
//! daemon registered in `RD_LIFE_V3` (its pid, as numbered in its own PID
//! namespace), the program marks it dying, and the hooks fail open from
//! the next connect on (`listener.rs`).
//!
//! Not scoped to a cgroup: it runs for every signal delivered on the
//! node; all but `SIGKILL` cost a compare, and a `SIGKILL` an array lookup
//! and one helper call.

use aya_ebpf::{
    bindings::bpf_pidns_info, helpers::generated::bpf_get_ns_current_pid_tgid,
    macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::maps::LIFE;

const SIGKILL: u64 = 9;

#[raw_tracepoint(tracepoint = "signal_deliver")]
pub(crate) fn rd_signal_deliver(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct k_sigaction *ka)
    let sig: u64 = ctx.arg(0);
    if sig & 0xffff_ffff != SIGKILL {
        return 0;
    }
    let Some(life) = LIFE.get_ptr_mut(0) else {
        return 0;
    };
    // Plain loads and a plain store: the daemon writes the whole value
    // only when a new daemon starts serving, which resets `dying_pid` for
    // that one.
    unsafe {
        let serving = (*life).serving_pid;
        if serving == 0 {
            return 0;
        }
        let mut me = bpf_pidns_info { pid: 0, tgid: 0 };
        // Fails (non-zero) for a task outside the daemon's PID namespace.
        let r = bpf_get_ns_current_pid_tgid(
            (*life).pidns_dev,
            (*life).pidns_ino,
            &raw mut me,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        );
        if r == 0 && me.tgid == serving {
            core::ptr::write_volatile(&raw mut (*life).dying_pid, serving);
        }
    }
    0
}
