//! DNS capture: apps in the attached cgroup resolve ServiceEntry hosts to
//! their VIPs without any change to the app, its image or `/etc/hosts`.
//!
//! The kernel sends port-53 traffic of the cgroup to this responder (UDP
//! and TCP on 127.0.0.1, `--dns-port`): sendmsg4 for datagrams of
//! unconnected sockets, connect4 for TCP DNS and for UDP sockets a resolver
//! connects first (glibc does), each recording the nameserver the app
//! asked. recvmsg4 shows the replies as coming from that nameserver, which
//! stub resolvers check. The responder decides per query ([`reply`]):
//!
//! - A standard query (opcode QUERY, one question, class IN) for a
//!   configured host, matched exactly, in any letter case, with or without
//!   the trailing dot, is answered here and never forwarded: `A` with the
//!   host's IPv4 VIP, `AAAA` with its IPv6 VIP (TTL [`ANSWER_TTL`]), any
//!   other type with NOERROR and no records (NODATA). Every host has a VIP
//!   of each family, so dual-stack resolvers (`getaddrinfo` with
//!   `AF_UNSPEC`, which asks both) get both, and the app reaches the
//!   service whichever it dials. On a node without IPv6 (the proxy could
//!   not listen on `[::1]`) AAAA gets NODATA, as Istio's DNS proxy
//!   answers when the proxy is not dual-stack.
//! - Anything else, other names (search-domain expansions such as
//!   `mydb.com.svc.cluster.local` included), other opcodes, messages we
//!   cannot parse, goes byte for byte to the nameserver the app asked,
//!   over the transport it used, and its answer comes back unchanged (so
//!   with the app's transaction id). See `dns/serve.rs`.
//!
//! The host table is derived from the live service table (`state.rs`),
//! so a config reload, which swaps it (after the proxy's routes), changes
//! the answers with no step of its own: a name resolves to a VIP exactly
//! when the proxy serves that VIP.
//!
//! The responder's upstream sockets, like the resolver's for endpoint names
//! (`resolve.rs`), carry the proxy's mark, and the kernel programs leave
//! marked sockets alone, so the daemon's own DNS is never captured.

pub(crate) mod limits;
pub(crate) mod serve;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};

use crate::state::{ServiceTable, Services};

/// TTL of the answers for configured hosts: short, so a reload that moves
/// a VIP reaches apps within half a minute, as Istio's DNS proxy does.
pub(crate) const ANSWER_TTL: u32 = 30;

/// The EDNS payload size we announce (the DNS flag day's 1232 bytes).
const EDNS_PAYLOAD: u16 = 1232;

/// Configured hosts and their VIPs, by lower-case name without the
/// trailing dot.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Hosts(HashMap<String, Vips>);

/// A host's VIPs, sorted (one of each family, unless several ServiceEntry
/// documents disagree).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Vips {
    pub(crate) v4: Vec<Ipv4Addr>,
    pub(crate) v6: Vec<Ipv6Addr>,
}

impl Hosts {
    pub(crate) fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, Ipv4Addr, Ipv6Addr)>,
    ) -> Self {
        let mut map: HashMap<String, Vips> = HashMap::new();
        for (host, vip, vip6) in entries {
            let vips = map.entry(normalize(host)).or_default();
            if !vips.v4.contains(&vip) {
                vips.v4.push(vip);
            }
            if !vips.v6.contains(&vip6) {
                vips.v6.push(vip6);
            }
        }
        for vips in map.values_mut() {
            vips.v4.sort_unstable();
            vips.v6.sort_unstable();
        }
        Self(map)
    }

    /// Every service of the table: its host and its VIPs; without
    /// `ipv6` (the proxy has no IPv6 listener: the node has no `::1`), no
    /// IPv6 VIPs, so AAAA questions get NODATA as before IPv6 support, and
    /// apps use IPv4.
    pub(crate) fn from_services(services: &ServiceTable, ipv6: bool) -> Self {
        let mut hosts = Self::new(services.values().map(|c| {
            let s = &c.service;
            (s.host.as_str(), s.vip, s.vip6)
        }));
        if !ipv6 {
            for vips in hosts.0.values_mut() {
                vips.v6.clear();
            }
        }
        hosts
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Vips> {
        self.0.get(&normalize(name))
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The current [`Hosts`], rebuilt when a reload swaps the service table.
pub(crate) struct HostTable {
    services: Services,
    ipv6: bool,
    cache: Mutex<(Arc<ServiceTable>, Arc<Hosts>)>,
}

impl HostTable {
    /// `ipv6`: whether to answer AAAA (see [`Hosts::from_services`]).
    pub(crate) fn new(services: Services, ipv6: bool) -> Self {
        let current = services.current();
        let hosts = Arc::new(Hosts::from_services(&current, ipv6));
        Self {
            services,
            ipv6,
            cache: Mutex::new((current, hosts)),
        }
    }

    pub(crate) fn current(&self) -> Arc<Hosts> {
        let services = self.services.current();
        let mut cache = self.cache.lock().expect("host table lock");
        if !Arc::ptr_eq(&cache.0, &services) {
            let hosts = Arc::new(Hosts::from_services(&services, self.ipv6));
            *cache = (services, hosts);
        }
        cache.1.clone()
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// Answer with these bytes.
    Local(Vec<u8>),
    /// Send it, unchanged, to the nameserver the app asked; over UDP, its
    /// answer can be at most `udp_size` bytes (see [`udp_size`]).
    Forward { udp_size: usize },
}

/// The largest UDP answer a query's sender takes: its EDNS payload size
/// (RFC 6891), 512 bytes without EDNS (RFC 1035), within 512..=4096 (the
/// responder's receive buffer per forwarded query; a larger answer goes
/// back truncated, and the resolver retries over TCP). A query we cannot
/// parse gets 4096: it is forwarded as it is, whatever it is.
fn udp_size(msg: Option<&Message>) -> usize {
    match msg {
        None => MAX_UDP_ANSWER,
        Some(msg) => msg.edns.as_ref().map_or(512, |edns| {
            usize::from(edns.max_payload()).clamp(512, MAX_UDP_ANSWER)
        }),
    }
}

/// The largest forwarded UDP answer relayed whole.
pub(crate) const MAX_UDP_ANSWER: usize = 4096;

/// Decides a query from its wire bytes; see the module docs.
pub(crate) fn reply(query: &[u8], hosts: &Hosts) -> Reply {
    let Ok(msg) = Message::from_vec(query) else {
        return Reply::Forward {
            udp_size: udp_size(None),
        };
    };
    let forward = Reply::Forward {
        udp_size: udp_size(Some(&msg)),
    };
    let [question] = msg.queries.as_slice() else {
        return forward;
    };
    if msg.metadata.message_type != MessageType::Query
        || msg.metadata.op_code != OpCode::Query
        || question.query_class() != DNSClass::IN
    {
        return forward;
    }
    let Some(vips) = hosts.get(&question.name().to_ascii()) else {
        return forward;
    };
    let mut response = Message::response(msg.metadata.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = msg.metadata.recursion_desired;
    // We stand in for a recursive nameserver; stub resolvers expect RA.
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = msg.metadata.checking_disabled;
    response.add_query(question.clone());
    let answers: Vec<RData> = match question.query_type() {
        RecordType::A => vips.v4.iter().map(|ip| RData::A(A(*ip))).collect(),
        RecordType::AAAA => vips.v6.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
        _ => Vec::new(),
    };
    for data in answers {
        response.add_answer(Record::from_rdata(
            question.name().clone(),
            ANSWER_TTL,
            data,
        ));
    }
    if msg.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    match response.to_vec() {
        Ok(bytes) => Reply::Local(bytes),
        // Cannot happen for names that parsed; the nameserver can answer.
        Err(_) => forward,
    }
}

/// REFUSED for `query`, when it cannot be forwarded (nobody said where
/// to, or no room: see `dns/limits.rs`); `None` if the query does not
/// even parse.
pub(crate) fn refused(query: &[u8]) -> Option<Vec<u8>> {
    error_reply(query, ResponseCode::Refused)
}

/// SERVFAIL for `query`, when its nameserver did not answer (in time, or
/// lately: see `dns/limits.rs`); `None` if the query does not parse.
pub(crate) fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    error_reply(query, ResponseCode::ServFail)
}

/// An answer to `query` with `code`, its id and question, no records;
/// `None` if the query does not parse.
fn error_reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut response = Message::error_msg(msg.metadata.id, msg.metadata.op_code, code);
    response.metadata.recursion_desired = msg.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(msg.queries);
    response.to_vec().ok()
}

/// An empty answer to `query` with the TC flag, for a forwarded answer too
/// long for the sender's UDP size: its resolver asks again over TCP
/// (RFC 1035 §4.2.1, RFC 7766). `None` if the query does not parse.
pub(crate) fn truncated(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut response = Message::response(msg.metadata.id, msg.metadata.op_code);
    response.metadata.truncation = true;
    response.metadata.recursion_desired = msg.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(msg.queries);
    response.to_vec().ok()
}

#[cfg(test)]
mod tests;
