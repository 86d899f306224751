//! Map definitions. Names must equal `redirector_common::map_names` (the
//! attribute needs a literal; userspace fails loudly on a mismatch).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use redirector_common::{
    EndpointHealth, EndpointKey, MAX_ENDPOINTS, MAX_INFLIGHT, MAX_SERVICES, OrigDst, ProxyConfig,
    ServiceInfo, ServiceKey, ServiceValue, SockKey,
};

#[map(name = "RD_SVC_V1")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_CFG_V1")]
pub static PROXY_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

#[map(name = "RD_OCOOKIE_V1")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map(name = "RD_OSOCK_V1")]
pub static ORIG_BY_SOCK: LruHashMap<SockKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

// Written by userspace only, for now; declared here so the ABI lives in one
// object and later kernel fast paths can read endpoint health directly.
#[map(name = "RD_SINFO_V1")]
pub static SERVICE_INFO: HashMap<u32, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RD_EP_V1")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointHealth> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);
