//! What the kernel side tells an operator, through aya-log: a connect
//! refused while no proxy listens (why: TLS origination, or no slot table
//! to fail open to), and a map update that failed (the connect or query
//! then goes on unredirected, or the proxy cannot route it).
//!
//! Off by default, at no cost: `AYA_LOG_LEVEL` is read-only data the
//! daemon sets at load time from its own log level (these are `debug`
//! events of target `redirector::kernel`, so `--log-level
//! info,redirector::kernel=debug` turns them on), and with it at 0 the
//! verifier sees every log branch as dead and leaves it out of the
//! program. The ring they go to is pinned with the other maps, so what the
//! programs said while no daemon ran is read by the next one.
//!
//! Addresses are logged as numbers in host order (`{:i}` shows them as
//! addresses); IPv6 sockets' refusals name the service's IPv4 VIP, which
//! the daemon's log also shows beside the IPv6 one.

use aya_ebpf::programs::{SkBuffContext, SockAddrContext, SockOpsContext};
use aya_log_ebpf::debug;

/// The target of every kernel log record.
const TARGET: &str = "redirector::kernel";

/// A context the log macros accept (they only need it to exist).
pub(crate) trait Ctx {}
impl Ctx for SockAddrContext {}
impl Ctx for SockOpsContext {}
impl Ctx for SkBuffContext {}

/// A connect refused with `EPERM`: no proxy listens in the app's network
/// namespace, and the service originates TLS, so it cannot skip the proxy.
#[inline(always)]
pub(crate) fn refused_tls<C: Ctx>(ctx: &C, vip_be: u32, port_be: u16) {
    debug!(
        ctx,
        target: TARGET,
        "connect to {:i}:{} refused: no proxy listens and the service originates TLS",
        u32::from_be(vip_be),
        u16::from_be(port_be)
    );
}

/// A connect refused with `EPERM`: no proxy listens, and the service has
/// no slot table (or an empty one, or one for another VIP) to fail open to.
#[inline(always)]
pub(crate) fn refused_no_slots<C: Ctx>(ctx: &C, vip_be: u32, port_be: u16, service_id: u32) {
    debug!(
        ctx,
        target: TARGET,
        "connect to {:i}:{} refused: no proxy listens and service {} has no slot table",
        u32::from_be(vip_be),
        u16::from_be(port_be),
        service_id
    );
}

/// A map update failed with `err` (a negative errno).
#[inline(always)]
pub(crate) fn map_update_failed<C: Ctx>(ctx: &C, map: &str, err: i64) {
    debug!(ctx, target: TARGET, "updating {} failed: error {}", map, err);
}

/// `result`, logged when it is a failure of updating `map`.
#[inline(always)]
pub(crate) fn checked<C: Ctx, E: Copy + Into<i64>>(
    ctx: &C,
    map: &str,
    result: Result<(), E>,
) -> Result<(), E> {
    if let Err(e) = result {
        map_update_failed(ctx, map, e.into());
    }
    result
}
