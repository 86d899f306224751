//! Map definitions. Names must equal `redirector_common::map_names` (the
//! attribute needs a literal; userspace fails loudly on a mismatch).
//!
//! The daemon pins every map and a restarted daemon reuses them, so the
//! programs it replaces and the ones it loads share one state.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use redirector_common::{
    Config6, DnsConfig, EndpointHealth, EndpointKey, MAX_ENDPOINTS, MAX_INFLIGHT, MAX_SERVICES,
    OUTCOME_RING_BYTES, OrigDst, ProxyConfig, ServiceInfo, ServiceKey, ServiceKey6, ServiceValue,
    ServiceValue6, SlotConn, SlotConn6, SlotTable, SlotTable6, SockAddr6, SockKey, SockOrig,
    SockOrig6,
};

#[map(name = "RD_SVC_V2")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_CFG_V2")]
pub(crate) static PROXY_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

#[map(name = "RD_OCOOKIE_V2")]
pub(crate) static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map(name = "RD_OSOCK_V2")]
pub(crate) static ORIG_BY_SOCK: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

// Written by userspace only: display data for `redirector endpoints`.
#[map(name = "RD_SINFO_V2")]
pub(crate) static SERVICE_INFO: HashMap<u32, ServiceInfo> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_EP_V2")]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, EndpointHealth> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);

// Not preallocated: an update then swaps in a new element under RCU, so
// connect4 reads either the whole old table or the whole new one, never a
// mix (a preallocated element can be reused while a reader still holds it).
#[map(name = "RD_SLOTS_V2")]
pub(crate) static SLOTS: HashMap<u32, SlotTable> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "RD_SCONN_V2")]
pub(crate) static SLOT_CONNS: LruHashMap<u64, SlotConn> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map(name = "RD_OUTCOME_V2")]
pub(crate) static OUTCOMES: RingBuf = RingBuf::with_byte_size(OUTCOME_RING_BYTES, 0);

#[map(name = "RD_DNSCFG_V2")]
pub(crate) static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

#[map(name = "RD_DNSSOCK_V2")]
pub(crate) static DNS_BY_SOCK: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

// Socket storage needs BTF for its value type, hence a BTF map. The kernel
// frees an entry with its socket, so nothing here can go stale or fill up.
#[btf_map(name = "RD_SKORIG_V2")]
pub(crate) static SOCK_ORIG: SkStorage<SockOrig> = SkStorage::new();

// IPv6: maps of their own beside the IPv4 ones, whose layouts stay as
// they are. The cookie map, the slot tables, the slot connects and the
// outcome ring are shared: they hold no address of the app's family.

#[map(name = "RD_SVC6_V2")]
pub(crate) static SERVICES6: HashMap<ServiceKey6, ServiceValue6> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_CFG6_V2")]
pub(crate) static CONFIG6: Array<Config6> = Array::with_max_entries(1, 0);

#[map(name = "RD_OSOCK6_V2")]
pub(crate) static ORIG_BY_SOCK6: LruHashMap<SockAddr6, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map(name = "RD_DNSSOCK6_V2")]
pub(crate) static DNS_BY_SOCK6: LruHashMap<SockAddr6, SockAddr6> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map(name = "RD_DCOOKIE6_V2")]
pub(crate) static DNS_BY_COOKIE6: LruHashMap<u64, SockAddr6> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

// Not preallocated, as RD_SLOTS_V2: updates swap whole tables.
#[map(name = "RD_SLOTS6_V2")]
pub(crate) static SLOTS6: HashMap<u32, SlotTable6> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "RD_SCONN6_V2")]
pub(crate) static SLOT_CONNS6: LruHashMap<u64, SlotConn6> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[btf_map(name = "RD_SKORIG6_V2")]
pub(crate) static SOCK_ORIG6: SkStorage<SockOrig6> = SkStorage::new();
