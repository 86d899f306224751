//! Connect outcomes of the kernel path: sock_ops writes one record per
//! connect it saw end into a ring buffer; the daemon reads them here.

use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use redirector_common::{ConnectOutcome, ConnectOutcome6};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use super::BpfError;

/// A kernel-path connect outcome, either family (from a
/// [`ConnectOutcome`] or a [`ConnectOutcome6`]; an IPv4-mapped endpoint
/// address comes back as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelOutcome {
    pub(crate) service_id: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) kind: u8,
    pub(crate) syn_retrans: u32,
}

impl From<ConnectOutcome> for KernelOutcome {
    fn from(o: ConnectOutcome) -> Self {
        KernelOutcome {
            service_id: o.service_id,
            addr: o.addr(),
            kind: o.kind,
            syn_retrans: o.syn_retrans,
        }
    }
}

impl From<ConnectOutcome6> for KernelOutcome {
    fn from(o: ConnectOutcome6) -> Self {
        KernelOutcome {
            service_id: o.service_id,
            addr: o.addr(),
            kind: o.kind,
            syn_retrans: o.syn_retrans,
        }
    }
}

/// Connect outcomes of the kernel path, as sock_ops reported them.
pub(crate) struct OutcomeReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl OutcomeReader {
    /// Must run inside the tokio runtime: the ring is registered with it.
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, BpfError> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // until it is dropped, which only the AsyncFd does.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| BpfError::Ring(e.into_parts().1))?;
        Ok(Self { ring })
    }

    /// Waits for a wakeup (sock_ops sends one with every failure) or at
    /// most `poll` (successes are written without one), then appends every
    /// outcome available to `out`.
    pub(crate) async fn read(
        &mut self,
        out: &mut Vec<KernelOutcome>,
        poll: std::time::Duration,
    ) -> Result<(), BpfError> {
        if let Ok(guard) = tokio::time::timeout(poll, self.ring.readable_mut()).await {
            // Cleared before draining, so a wakeup during the drain is kept.
            guard.map_err(BpfError::Ring)?.clear_ready();
        }
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            // The two record types differ in size (16 and 28 bytes).
            // SAFETY: both are plain old data, the kernel wrote one per
            // item, and read_unaligned needs no alignment.
            if item.len() == size_of::<ConnectOutcome6>() {
                let o: ConnectOutcome6 = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(o.into());
            } else if item.len() == size_of::<ConnectOutcome>() {
                let o: ConnectOutcome = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                out.push(o.into());
            } else {
                warn!(
                    len = item.len(),
                    "unexpected item in the outcome ring buffer"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use redirector_common::{OUTCOME_CONNECTED, OUTCOME_FAILED, user::ip4_be};

    use super::*;

    #[test]
    fn outcomes_of_both_families_name_the_endpoint() {
        let v4: KernelOutcome = ConnectOutcome {
            service_id: 1,
            ip_be: ip4_be(Ipv4Addr::new(10, 0, 0, 1)),
            port_be: 80u16.to_be(),
            kind: OUTCOME_CONNECTED,
            _pad: 0,
            syn_retrans: 0,
        }
        .into();
        assert_eq!(v4.addr, "10.0.0.1:80".parse().unwrap());
        let v6: KernelOutcome = ConnectOutcome6 {
            service_id: 2,
            ip6_be: redirector_common::user::ip6_words("fd00::2".parse().unwrap()),
            port_be: 8080u16.to_be(),
            kind: OUTCOME_FAILED,
            _pad: 0,
            syn_retrans: 1,
        }
        .into();
        assert_eq!(v6.addr, "[fd00::2]:8080".parse().unwrap());
        assert_eq!(
            (v6.service_id, v6.kind, v6.syn_retrans),
            (2, OUTCOME_FAILED, 1)
        );
        // An IPv4 endpoint that connect6 reached at its mapped address.
        let mapped: KernelOutcome = ConnectOutcome6 {
            service_id: 2,
            ip6_be: redirector_common::v4_mapped(ip4_be(Ipv4Addr::new(10, 0, 0, 3))),
            port_be: 80u16.to_be(),
            kind: OUTCOME_CONNECTED,
            _pad: 0,
            syn_retrans: 0,
        }
        .into();
        assert_eq!(mapped.addr, "10.0.0.3:80".parse().unwrap());
    }
}
