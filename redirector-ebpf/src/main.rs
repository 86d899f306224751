//! Kernel side of the redirector: catch connects to service VIPs and hand
//! them to the node-local proxy, and DNS to its responder, remembering
//! where they were going; show the app what it asked for.
//!
//! The kernel does the minimum (look up, rewrite, record); every decision
//! about endpoints and names stays in userspace. One file per hook
//! (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`, `sockops`,
//! `egress`); `dns`, `listener` and `orig` are shared by several.
#![no_std]
#![no_main]

mod connect4;
mod dns;
mod egress;
mod getpeername4;
mod listener;
mod maps;
mod orig;
mod recvmsg4;
mod sendmsg4;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
