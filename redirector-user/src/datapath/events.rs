//! Namespaces the kernel saw a socket made in before the daemon knew
//! them (`sock_create`, once per namespace), read from their ring.

use aya::maps::{MapData, RingBuf};
use redirector_common::NsEvent;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use super::BpfError;

/// The reader of `RD_NSEVENT_V3`.
pub(crate) struct NsEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl NsEvents {
    /// Must run inside the tokio runtime: the ring is registered with it.
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, BpfError> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // until it is dropped, which only the AsyncFd does.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| BpfError::Ring(e.into_parts().1))?;
        Ok(Self { ring })
    }

    /// Waits for events, then appends every one available to `out`.
    pub(crate) async fn read(&mut self, out: &mut Vec<NsEvent>) -> Result<(), BpfError> {
        let mut guard = self.ring.readable_mut().await.map_err(BpfError::Ring)?;
        // Cleared before draining, so a wakeup during the drain is kept.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() == size_of::<NsEvent>() {
                // SAFETY: plain old data the kernel wrote whole;
                // read_unaligned needs no alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            } else {
                warn!(
                    len = item.len(),
                    "unexpected item in the namespace event ring"
                );
            }
        }
        Ok(())
    }
}
