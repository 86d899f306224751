//! What the datapath holds per network namespace: its own maps (the inner
//! maps of `RD_OSOCK_V3`, `RD_OSOCK6_V3`, `RD_DNSSOCK_V3`,
//! `RD_DNSSOCK6_V3`), where the kernel records the connects and DNS
//! sockets sent to the daemon's sockets in that namespace, and where the
//! proxy and the responder there look them up.
//!
//! One set per namespace bounds what a namespace can do to others: its
//! connects and queries can only fill and evict its own entries. The maps
//! are made by the daemon itself for its own namespace at start, and by
//! the netns helper for pods (making a map needs `CAP_BPF`, which the
//! daemon drops after start).

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{HashMap, MapData, MapError};
use redirector_common::{NS_INFLIGHT, OrigDst, SockAddr6, SockKey};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::BpfError;

/// `BPF_MAP_TYPE_LRU_HASH`.
const LRU_HASH: u32 = 9;

/// A map to make: what the kernel needs to create it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MapSpec {
    pub(crate) name: String,
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    pub(crate) flags: u32,
}

impl MapSpec {
    fn lru<K, V>(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            map_type: LRU_HASH,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries: NS_INFLIGHT,
            flags: 0,
        }
    }

    /// Makes the map (this process needs `CAP_BPF` or `CAP_SYS_ADMIN`).
    pub(crate) fn create(&self) -> Result<OwnedFd, MapError> {
        let obj = aya_obj::Map::new_from_params(
            self.map_type,
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags,
        );
        let map = MapData::create(obj, &self.name, None)?;
        map.fd().as_fd().try_clone_to_owned().map_err(|e| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            })
        })
    }
}

/// One namespace's maps.
pub(crate) struct NsMaps {
    pub(super) orig: HashMap<MapData, SockKey, OrigDst>,
    pub(super) orig6: HashMap<MapData, SockAddr6, OrigDst>,
    pub(super) dns: HashMap<MapData, SockKey, OrigDst>,
    pub(super) dns6: HashMap<MapData, SockAddr6, SockAddr6>,
}

impl NsMaps {
    /// What [`NsMaps::from_fds`] takes, in order: the inner maps of
    /// `RD_OSOCK_V3`, `RD_OSOCK6_V3`, `RD_DNSSOCK_V3`, `RD_DNSSOCK6_V3`
    /// (each exactly as the programs' BTF defines the inner map).
    pub(crate) fn specs() -> Vec<MapSpec> {
        vec![
            MapSpec::lru::<SockKey, OrigDst>("rd_ns_osock"),
            MapSpec::lru::<SockAddr6, OrigDst>("rd_ns_osock6"),
            MapSpec::lru::<SockKey, OrigDst>("rd_ns_dnssock"),
            MapSpec::lru::<SockAddr6, SockAddr6>("rd_ns_dnssock6"),
        ]
    }

    /// Makes them here (the daemon's own namespace, at start).
    pub(crate) fn create() -> Result<Self, BpfError> {
        let fds = Self::specs()
            .iter()
            .map(|s| {
                s.create().map_err(|error| BpfError::Map {
                    name: "a namespace's map",
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_fds(fds)
    }

    /// The maps made elsewhere (the netns helper), in [`NsMaps::specs`]'
    /// order; each is checked to be what it should be.
    pub(crate) fn from_fds(fds: Vec<OwnedFd>) -> Result<Self, BpfError> {
        let [orig, orig6, dns, dns6]: [OwnedFd; 4] = fds.try_into().map_err(|_| BpfError::Map {
            name: "a namespace's maps",
            error: MapError::InvalidName {
                name: "four maps expected".into(),
            },
        })?;
        Ok(Self {
            orig: typed(orig, "rd_ns_osock")?,
            orig6: typed(orig6, "rd_ns_osock6")?,
            dns: typed(dns, "rd_ns_dnssock")?,
            dns6: typed(dns6, "rd_ns_dnssock6")?,
        })
    }

    /// The four maps, in [`NsMaps::specs`]' order, for a successor.
    pub(crate) fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 4] {
        use aya::maps::IterableMap as _;
        [
            self.orig.map().fd().as_fd(),
            self.orig6.map().fd().as_fd(),
            self.dns.map().fd().as_fd(),
            self.dns6.map().fd().as_fd(),
        ]
    }

    /// The VIP:port a redirected connection from `peer` was meant for.
    /// Consumes the entry: each connection is accepted once.
    pub(crate) fn take_original_destination(&mut self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        take(&mut self.orig, SockKey::new(peer), &peer)
    }

    /// [`Self::take_original_destination`] for a client of the proxy's
    /// IPv6 listener: the service's IPv4 VIP:port, which the routes are
    /// keyed by (connect6 recorded it; the app dialled the IPv6 VIP).
    pub(crate) fn take_original_destination6(
        &mut self,
        peer: SocketAddrV6,
    ) -> Option<SocketAddrV4> {
        take(&mut self.orig6, SockAddr6::new(peer), &peer)
    }

    /// The nameserver the app socket at `peer` sent its DNS query to, as
    /// sendmsg4 or the egress program recorded it. Not consumed: a socket
    /// sends many queries (the LRU map forgets sockets long gone).
    pub(crate) fn dns_nameserver(&self, peer: SocketAddrV4) -> Option<SocketAddrV4> {
        let ns = self.dns.get(&SockKey::new(peer), 0).ok()?;
        Some(ns.addr())
    }

    /// [`Self::dns_nameserver`] for an app's IPv6 DNS socket (sendmsg6,
    /// the egress program, or for TCP sock_ops recorded it); `take`
    /// removes the entry (TCP: each connection is accepted once). An
    /// IPv4-mapped nameserver comes back as IPv4.
    pub(crate) fn dns_nameserver6(&mut self, peer: SocketAddrV6, take: bool) -> Option<SocketAddr> {
        let key = SockAddr6::new(peer);
        let ns = self.dns6.get(&key, 0).ok()?;
        if take && let Err(e) = self.dns6.remove(&key) {
            debug!(%peer, error = %e, "removing a DNS nameserver entry");
        }
        Some(ns.addr())
    }
}

/// The map `fd` as the typed hash map aya reads it through (key and value
/// sizes checked against the map's).
fn typed<K: aya::Pod, V: aya::Pod>(
    fd: OwnedFd,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, BpfError> {
    let err = |error| BpfError::Map { name, error };
    let data = MapData::from_fd(fd).map_err(err)?;
    HashMap::try_from(aya::maps::Map::from_map_data(data).map_err(err)?).map_err(err)
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
