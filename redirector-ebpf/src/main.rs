//! Kernel side of the redirector: catch connects to service VIPs and hand
//! them to the node-local proxy, remembering where they were going.
//!
//! The kernel does the minimum (look up, rewrite, record); every decision
//! about endpoints stays in userspace. One file per hook.
#![no_std]
#![no_main]

mod connect4;
mod maps;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
