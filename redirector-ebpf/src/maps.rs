//! Map definitions. Names must equal `redirector_common::map_names` (the
//! attribute needs a literal; userspace fails loudly on a mismatch).
//!
//! The daemon pins every map and a restarted daemon reuses them, so the
//! programs it replaces and the ones it loads share one state. What
//! identifies a connection or a DNS query lives either in the socket's
//! own storage (freed with the socket, untouchable by any other) or in the
//! maps of its network namespace (`RD_OSOCK_V3` and friends: one inner
//! map per namespace, so a namespace can only evict its own entries).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{HashOfMaps, LruHashMap as BtfLruHashMap, SkStorage},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use redirector_common::{
    Config6, DnsConfig, EndpointHealth, EndpointKey, Life, MAX_ENDPOINTS, MAX_NAMESPACES,
    MAX_SERVICES, NS_EVENT_RING_BYTES, NS_INFLIGHT, NsId, NsInfo, OUTCOME_RING_BYTES, OrigDst, Own,
    ProxyConfig, ServiceInfo, ServiceKey, ServiceKey6, ServiceValue, ServiceValue6, SlotTable,
    SlotTable6, SockAddr6, SockKey, SockOrig, SockOrig6,
};

const NAMESPACES: usize = MAX_NAMESPACES as usize;
const INFLIGHT: usize = NS_INFLIGHT as usize;

#[map(name = "RD_SVC_V3")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_CFG_V3")]
pub(crate) static PROXY_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

// Written by userspace only: display data for `redirector endpoints`.
#[map(name = "RD_SINFO_V3")]
pub(crate) static SERVICE_INFO: HashMap<u32, ServiceInfo> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_EP_V3")]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, EndpointHealth> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);

// Not preallocated: an update then swaps in a new element under RCU, so
// connect4 reads either the whole old table or the whole new one, never a
// mix (a preallocated element can be reused while a reader still holds it).
#[map(name = "RD_SLOTS_V3")]
pub(crate) static SLOTS: HashMap<u32, SlotTable> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "RD_OUTCOME_V3")]
pub(crate) static OUTCOMES: RingBuf = RingBuf::with_byte_size(OUTCOME_RING_BYTES, 0);

#[map(name = "RD_DNSCFG_V3")]
pub(crate) static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

// Socket storage needs BTF for its value type, hence a BTF map. The kernel
// frees an entry with its socket, so nothing here can go stale or fill up.
#[btf_map(name = "RD_SKORIG_V3")]
pub(crate) static SOCK_ORIG: SkStorage<SockOrig> = SkStorage::new();

#[map(name = "RD_SVC6_V3")]
pub(crate) static SERVICES6: HashMap<ServiceKey6, ServiceValue6> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_CFG6_V3")]
pub(crate) static CONFIG6: Array<Config6> = Array::with_max_entries(1, 0);

#[btf_map(name = "RD_SKORIG6_V3")]
pub(crate) static SOCK_ORIG6: SkStorage<SockOrig6> = SkStorage::new();

// Not preallocated, as RD_SLOTS_V3: updates swap whole tables.
#[map(name = "RD_SLOTS6_V3")]
pub(crate) static SLOTS6: HashMap<u32, SlotTable6> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

// Written by the daemon (through the socket's fd) on its own listeners.
#[btf_map(name = "RD_OWN_V3")]
pub(crate) static OWN: SkStorage<Own> = SkStorage::new();

// One inner LRU map per served namespace, made and inserted by the daemon.
#[btf_map(name = "RD_OSOCK_V3")]
pub(crate) static ORIG_BY_SOCK: HashOfMaps<
    NsId,
    BtfLruHashMap<SockKey, OrigDst, INFLIGHT>,
    NAMESPACES,
> = HashOfMaps::new();

#[btf_map(name = "RD_OSOCK6_V3")]
pub(crate) static ORIG_BY_SOCK6: HashOfMaps<
    NsId,
    BtfLruHashMap<SockAddr6, OrigDst, INFLIGHT>,
    NAMESPACES,
> = HashOfMaps::new();

#[btf_map(name = "RD_DNSSOCK_V3")]
pub(crate) static DNS_BY_SOCK: HashOfMaps<
    NsId,
    BtfLruHashMap<SockKey, OrigDst, INFLIGHT>,
    NAMESPACES,
> = HashOfMaps::new();

#[btf_map(name = "RD_DNSSOCK6_V3")]
pub(crate) static DNS_BY_SOCK6: HashOfMaps<
    NsId,
    BtfLruHashMap<SockAddr6, SockAddr6, INFLIGHT>,
    NAMESPACES,
> = HashOfMaps::new();

// LRU: a namespace that reports itself and is never served (a process
// that made a namespace of its own and is gone) ages out.
#[map(name = "RD_NSKNOWN_V3")]
pub(crate) static NS_KNOWN: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(4 * MAX_NAMESPACES, 0);

#[map(name = "RD_NSEVENT_V3")]
pub(crate) static NS_EVENTS: RingBuf = RingBuf::with_byte_size(NS_EVENT_RING_BYTES, 0);

// Written by userspace only: display data for `redirector pods`.
#[map(name = "RD_NSINFO_V3")]
pub(crate) static NS_INFO: HashMap<NsId, NsInfo> = HashMap::with_max_entries(MAX_NAMESPACES, 0);

// Written by the daemon (who serves) and by signal_deliver (it is dying).
#[map(name = "RD_LIFE_V3")]
pub(crate) static LIFE: Array<Life> = Array::with_max_entries(1, 0);
