//! Kernel side of the redirector: catch connects to service VIPs and hand
//! them to the node-local proxy, and DNS to its responder, remembering
//! where they were going; show the app what it asked for.
//!
//! The kernel does the minimum (look up, rewrite, record); every decision
//! about endpoints and names stays in userspace. One file per hook
//! (`connect4`, `connect6`, `sendmsg4`, `sendmsg6`, `recvmsg4`,
//! `recvmsg6`, `getpeername4`, `getpeername6`, `sockops`, `egress`,
//! `sock_create`, and the raw tracepoint `signal_deliver`); `dns`, `listener`, `log`, `orig`
//! and `slots` are shared by several.
#![no_std]
#![no_main]

mod connect4;
mod connect6;
mod dns;
mod egress;
mod getpeername4;
mod getpeername6;
mod listener;
mod log;
mod maps;
mod orig;
mod recvmsg4;
mod recvmsg6;
mod sendmsg4;
mod sendmsg6;
mod signal_deliver;
mod slots;
mod sock_create;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
