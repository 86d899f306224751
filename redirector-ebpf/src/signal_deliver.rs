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
//! daemon registered in `RD_LIFE_V3`, the program marks it dying, and the
//! hooks fail open from the next connect on (`listener.rs`).
//!
//! Not scoped to a cgroup: it runs for every signal delivered on the
//! node, and costs one helper call, one array lookup and a compare.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(life) = LIFE.get_ptr_mut(0) {
        // A plain store: the daemon writes the whole value only when a new
        // daemon starts serving, which resets `dying_pid` for that one.
        unsafe {
            if tgid != 0 && (*life).serving_pid == tgid {
                core::ptr::write_volatile(&raw mut (*life).dying_pid, tgid);
            }
        }
    }
    0
}
