//! The maps the proxy and the DNS responder read: where a redirected
//! connection or query was going, by the peer address they see.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use redirector_common::{OrigDst, SockAddr6, SockKey, map_names};
use tracing::debug;

use super::{BpfError, maps::typed_map};

pub(super) struct Lookups {
    orig: HashMap<MapData, SockKey, OrigDst>,
    orig6: HashMap<MapData, SockAddr6, OrigDst>,
    dns_by_sock: HashMap<MapData, SockKey, OrigDst>,
    dns_by_sock6: HashMap<MapData, SockAddr6, SockAddr6>,
}

impl Lookups {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            orig: typed_map(ebpf, map_names::ORIG_BY_SOCK, HashMap::try_from)?,
            orig6: typed_map(ebpf, map_names::ORIG_BY_SOCK6, HashMap::try_from)?,
            dns_by_sock: typed_map(ebpf, map_names::DNS_BY_SOCK, HashMap::try_from)?,
            dns_by_sock6: typed_map(ebpf, map_names::DNS_BY_SOCK6, HashMap::try_from)?,
        })
    }

    pub(super) fn take_original_destination(&mut self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        take(&mut self.orig, SockKey::new(peer), &peer)
    }

    pub(super) fn take_original_destination6(
        &mut self,
        peer: SocketAddrV6,
    ) -> Option<SocketAddrV4> {
        take(&mut self.orig6, SockAddr6::new(peer), &peer)
    }

    pub(super) fn dns_nameserver(&self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        let ns = self.dns_by_sock.get(&SockKey::new(peer), 0).ok()?;
        Some(ns.addr())
    }

    pub(super) fn dns_nameserver6(&mut self, peer: SocketAddrV6, take: bool) -> Option<SocketAddr> {
        let key = SockAddr6::new(peer);
        let ns = self.dns_by_sock6.get(&key, 0).ok()?;
        if take && let Err(e) = self.dns_by_sock6.remove(&key) {
            debug!(%peer, error = %e, "removing a DNS nameserver entry");
        }
        Some(ns.addr())
    }
}

/// The original destination recorded under `key`, removed as it is read:
/// each connection is accepted once.
fn take<K: aya::Pod>(
    map: &mut HashMap<MapData, K, OrigDst>,
    key: K,
    peer: &dyn std::fmt::Display,
) -> Option<SocketAddrV4> {
    let orig = map.get(&key, 0).ok()?;
    if let Err(e) = map.remove(&key) {
        debug!(%peer, error = %e, "removing original-destination entry");
    }
    Some(orig.addr())
}
