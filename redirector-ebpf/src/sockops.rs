//! `sock_ops`: two jobs on client sockets of the attached cgroup.
//!
//! Proxy path: when a redirected socket sends its SYN, its source port is
//! known; the original destination connect4 put in the socket's storage
//! goes into the map of the namespace whose listener it was sent to, keyed
//! by that address (IPv4 or IPv6, a map per family), so the proxy, which
//! only sees its peer address on accept, can find it.
//! `TCP_CONNECT_CB` runs inside `connect()` before the SYN leaves, so the
//! entry exists before the proxy can possibly accept the connection.
//!
//! Kernel path: report how each connect connect4 sent straight to an
//! endpoint ended (the socket's storage says which), so outlier detection
//! in the daemon sees those endpoints fail. `ACTIVE_ESTABLISHED_CB` is a
//! success. The end of a failed connect is the socket going from SYN_SENT
//! to CLOSE, which only `STATE_CB` shows, and the kernel calls that only
//! for sockets that ask: so at `TCP_CONNECT_CB` those sockets, and only
//! those, turn it on. That transition does not say why, and the app's own
//! `close()` of a connecting socket (a Happy Eyeballs loser, an app timeout
//! shorter than the service's) makes it too: counting those would let any
//! app eject a healthy endpoint for everyone. So only the endpoint's own
//! failures count: a segment from it (a reset: refused), or the
//! retransmission timer giving the handshake up, which `RTO_CB` (also
//! asked for at connect) says with its "expired" argument just before the
//! kernel closes the socket. An ICMP error ends the connect the same way
//! as the app's close and is not told apart here (the proxy path counts
//! it). Outcomes go to a ring buffer the daemon reads.
//!
//! Kernel-path connects also get the service's `connectTimeout`: without a
//! proxy to time out the connect, a black-holed endpoint would hold the app
//! for the kernel's SYN retries (about two minutes) and take minutes to
//! eject. `TCP_USER_TIMEOUT` bounds the handshake; it is set only when the
//! app has not set one itself, and cleared again once connected, so the
//! established connection behaves as the app configured it.

use aya_ebpf::{
    bindings::{
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::{bpf_getsockopt, bpf_setsockopt, bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use redirector_common::{
    ConnectOutcome, ConnectOutcome6, ORIG_DNS, ORIG_SERVICE, OUTCOME_CONNECTED, OUTCOME_FAILED,
    OUTCOME_TIMED_OUT, OrigDst, SOCK_REPORTED, SOCK_SLOT, SOCK_TIMED_OUT, SOCK_TIMEOUT_SET,
    SockAddr6, SockKey, SockOrig, SockOrig6,
};

use crate::{
    log,
    maps::{DNS_BY_SOCK6, ORIG_BY_SOCK, ORIG_BY_SOCK6, OUTCOMES, SOCK_ORIG, SOCK_ORIG6},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOL_TCP: i32 = 6;
const TCP_USER_TIMEOUT: i32 = 18;

#[sock_ops]
pub(crate) fn rd_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    // sock_ops return values only matter for ops that ask for a reply.
    1
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), i64> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx, family),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_end(ctx, family, OUTCOME_CONNECTED),
        // arg 2: the handshake is given up (the socket closes next).
        BPF_SOCK_OPS_RTO_CB if ctx.arg(2) != 0 => on_expired(ctx, family),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == BPF_TCP_SYN_SENT && ctx.arg(1) == BPF_TCP_CLOSE => {
            on_end(ctx, family, OUTCOME_FAILED)
        }
        _ => Ok(()),
    }
}

/// The socket's storage in `map` (`RD_SKORIG_V3` or `RD_SKORIG6_V3`), if
/// a hook wrote one.
fn storage<T>(ctx: &SockOpsContext, map: *const core::ffi::c_void) -> Option<*mut T> {
    let sk = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    let p = unsafe { bpf_sk_storage_get(map.cast_mut(), sk.cast(), core::ptr::null_mut(), 0) };
    (!p.is_null()).then_some(p.cast())
}

/// The peer's port (network order) as `bpf_sock_ops` holds it: in the
/// upper 16 bits on little-endian machines.
fn remote_port_be(ctx: &SockOpsContext) -> u16 {
    (ctx.remote_port() >> 16) as u16
}

fn on_connect(ctx: &SockOpsContext, family: u32) -> Result<(), i64> {
    // local_port is in host order, unlike every other port in the ctx.
    let local_port_be = (ctx.local_port() as u16).to_be();
    if family == AF_INET6 {
        let Some(rec) = storage::<SockOrig6>(ctx, (&raw const SOCK_ORIG6).cast()) else {
            return Ok(());
        };
        let r = unsafe { *rec };
        // A record of an earlier connect of this socket is not this one's.
        let remote = remote_ip6(ctx);
        if r.to_port_be != remote_port_be(ctx) || r.to_ip6_be != remote {
            return Ok(());
        }
        if r.flags & SOCK_SLOT != 0 {
            return slot_connect(ctx, r.connect_timeout_ms, unsafe { &mut (*rec).flags });
        }
        let key = SockAddr6 {
            ip6_be: local_ip6(ctx),
            port_be: local_port_be,
            _pad: 0,
        };
        if r.kind == ORIG_SERVICE {
            // connect6 recorded it: an IPv6 client of the proxy's [::1]
            // listener, routed by the service's IPv4 VIP.
            let orig = OrigDst {
                vip_be: r.route_vip_be,
                port_be: r.orig_port_be,
                _pad: 0,
            };
            let Some(map) = (unsafe { ORIG_BY_SOCK6.get(&r.ns_id) }) else {
                return Ok(());
            };
            log::checked(ctx, "RD_OSOCK6_V3", map.insert(&key, &orig, 0))?;
        } else if r.kind == ORIG_DNS {
            // TCP DNS over IPv6: the responder looks the nameserver up by
            // its peer address.
            let ns = SockAddr6 {
                ip6_be: r.orig_ip6_be,
                port_be: r.orig_port_be,
                _pad: 0,
            };
            let Some(map) = (unsafe { DNS_BY_SOCK6.get(&r.ns_id) }) else {
                return Ok(());
            };
            log::checked(ctx, "RD_DNSSOCK6_V3", map.insert(&key, &ns, 0))?;
        }
        return Ok(());
    }
    let Some(rec) = storage::<SockOrig>(ctx, (&raw const SOCK_ORIG).cast()) else {
        return Ok(());
    };
    let r = unsafe { *rec };
    if r.to_ip_be != ctx.remote_ip4() || r.to_port_be != remote_port_be(ctx) {
        return Ok(());
    }
    if r.flags & SOCK_SLOT != 0 {
        return slot_connect(ctx, r.connect_timeout_ms, unsafe { &mut (*rec).flags });
    }
    // A proxy connect, or TCP DNS: the proxy and the responder both take
    // the original destination by their peer's address.
    let key = SockKey {
        ip_be: ctx.local_ip4(),
        port_be: local_port_be,
        _pad: 0,
    };
    let orig = OrigDst {
        vip_be: r.orig_ip_be,
        port_be: r.orig_port_be,
        _pad: 0,
    };
    let Some(map) = (unsafe { ORIG_BY_SOCK.get(&r.ns_id) }) else {
        return Ok(());
    };
    log::checked(ctx, "RD_OSOCK_V3", map.insert(&key, &orig, 0))?;
    Ok(())
}

/// A slot connect starts: its end is reported, and the handshake is
/// bounded by the service's connect timeout unless the app set one.
fn slot_connect(ctx: &SockOpsContext, connect_timeout_ms: u32, flags: &mut u8) -> Result<(), i64> {
    ctx.set_cb_flags(
        (ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG) as i32,
    )?;
    if connect_timeout_ms != 0 && user_timeout(ctx) == Some(0) {
        let ms = connect_timeout_ms.min(i32::MAX as u32) as i32;
        if set_user_timeout(ctx, ms) {
            *flags |= SOCK_TIMEOUT_SET;
        }
    }
    Ok(())
}

/// The socket's IPv6 address, word by word: the verifier allows only
/// 32-bit loads at constant offsets of the context, and a copy of the
/// whole array (`SockOpsContext::local_ip6`) compiles to a load through a
/// moved context pointer, which it refuses.
fn local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
        ]
    }
}

/// The peer's IPv6 address, as [`local_ip6`].
fn remote_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    let ops = ctx.ops;
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
            core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
        ]
    }
}

fn user_timeout(ctx: &SockOpsContext) -> Option<i32> {
    let mut ms: i32 = 0;
    let rc = unsafe {
        bpf_getsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut ms).cast(),
            size_of::<i32>() as i32,
        )
    };
    (rc == 0).then_some(ms)
}

fn set_user_timeout(ctx: &SockOpsContext, ms: i32) -> bool {
    let mut ms = ms;
    let rc = unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_TCP,
            TCP_USER_TIMEOUT,
            (&raw mut ms).cast(),
            size_of::<i32>() as i32,
        )
    };
    rc == 0
}

/// The retransmission timer gave a slot connect's handshake up: marked,
/// so the close that follows is reported as a timeout.
fn on_expired(ctx: &SockOpsContext, family: u32) -> Result<(), i64> {
    if family == AF_INET6 {
        mark_expired::<SockOrig6>(ctx, (&raw const SOCK_ORIG6).cast());
    } else {
        mark_expired::<SockOrig>(ctx, (&raw const SOCK_ORIG).cast());
    }
    Ok(())
}

fn mark_expired<T: Flagged>(ctx: &SockOpsContext, map: *const core::ffi::c_void) {
    if let Some(rec) = storage::<T>(ctx, map) {
        let flags = unsafe { (*rec).flags() };
        if *flags & SOCK_SLOT != 0 {
            *flags |= SOCK_TIMED_OUT;
        }
    }
}

/// A slot connect ended: report it once. A failure counts only when the
/// endpoint's side ended it: a segment from it (a reset) or the handshake
/// timing out. A socket the app closed while its SYN was unanswered tells
/// nothing about the endpoint, however long the app waited, and is not
/// reported.
fn on_end(ctx: &SockOpsContext, family: u32, kind: u8) -> Result<(), i64> {
    let syn_retrans = if kind == OUTCOME_FAILED {
        unsafe { (*ctx.ops).total_retrans }
    } else {
        0
    };
    let answered = unsafe { (*ctx.ops).segs_in } != 0;
    if family == AF_INET6 {
        let Some(r) = first_end::<SockOrig6>(ctx, (&raw const SOCK_ORIG6).cast()) else {
            return Ok(());
        };
        let (report, kind) = verdict(kind, answered, r.flags);
        if report {
            let outcome = ConnectOutcome6 {
                service_id: r.service_id,
                ip6_be: r.to_ip6_be,
                port_be: r.to_port_be,
                kind,
                _pad: 0,
                syn_retrans,
            };
            let _ = OUTCOMES.output::<ConnectOutcome6>(&outcome, u64::from(wakeup(kind)));
        }
        return after_outcome(ctx, kind, r.flags);
    }
    let Some(r) = first_end::<SockOrig>(ctx, (&raw const SOCK_ORIG).cast()) else {
        return Ok(());
    };
    let (report, kind) = verdict(kind, answered, r.flags);
    if report {
        let outcome = ConnectOutcome {
            service_id: r.service_id,
            ip_be: r.to_ip_be,
            port_be: r.to_port_be,
            kind,
            _pad: 0,
            syn_retrans,
        };
        let _ = OUTCOMES.output::<ConnectOutcome>(&outcome, u64::from(wakeup(kind)));
    }
    after_outcome(ctx, kind, r.flags)
}

/// Whether a slot connect's end is reported, and as what: a success
/// always; a failure after the handshake timed out as a timeout, after a
/// segment from the endpoint (a reset) as a refusal, otherwise (the app's
/// own close, or an ICMP error) not at all.
fn verdict(kind: u8, answered: bool, flags: u8) -> (bool, u8) {
    if kind == OUTCOME_CONNECTED {
        (true, kind)
    } else if flags & SOCK_TIMED_OUT != 0 {
        (true, OUTCOME_TIMED_OUT)
    } else {
        (answered, kind)
    }
}

/// A socket record with `SOCK_*` flags (`SockOrig`, `SockOrig6`).
trait Flagged: Copy {
    fn flags(&mut self) -> &mut u8;
}

impl Flagged for SockOrig {
    fn flags(&mut self) -> &mut u8 {
        &mut self.flags
    }
}

impl Flagged for SockOrig6 {
    fn flags(&mut self) -> &mut u8 {
        &mut self.flags
    }
}

/// The socket's record (in `map`) if it is a slot connect whose end was
/// not reported yet, as it was; the record is marked reported.
fn first_end<T: Flagged>(ctx: &SockOpsContext, map: *const core::ffi::c_void) -> Option<T> {
    let rec = storage::<T>(ctx, map)?;
    let mut r = unsafe { *rec };
    let flags = *r.flags();
    if flags & SOCK_SLOT == 0 || flags & SOCK_REPORTED != 0 {
        return None;
    }
    unsafe { *(*rec).flags() = flags | SOCK_REPORTED };
    Some(r)
}

/// A full ring (the daemon is gone or behind) loses the outcome, never
/// the connection. A success only resets counters, so it waits for the
/// daemon's next poll: waking the daemon per connect costs an interrupt
/// (a hypervisor exit on a VM) and halved new-connection throughput in
/// the benchmark. A failure may eject, so it wakes the daemon at once.
fn wakeup(kind: u8) -> u32 {
    if kind == OUTCOME_CONNECTED {
        BPF_RB_NO_WAKEUP
    } else {
        BPF_RB_FORCE_WAKEUP
    }
}

fn after_outcome(ctx: &SockOpsContext, kind: u8, flags: u8) -> Result<(), i64> {
    if kind == OUTCOME_CONNECTED {
        if flags & SOCK_TIMEOUT_SET != 0 {
            set_user_timeout(ctx, 0);
        }
        // Nothing more to learn from this socket's state changes or
        // retransmissions.
        ctx.set_cb_flags(
            (ctx.cb_flags() & !(BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG)) as i32,
        )?;
    }
    Ok(())
}
