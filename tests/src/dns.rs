//! An authoritative DNS server (hickory-server, UDP and TCP) for endpoint
//! names of `resolution: DNS` ServiceEntries.
//!
//! It is authoritative for every name: names set with [`DnsServer::set_a`]
//! answer their A records, other types of a known name answer NOERROR with
//! no records (NODATA), unknown names NXDOMAIN. Records change at run time,
//! which is what TTL-driven refresh tests need, and the DNS faults the
//! tests inject are here: [`DnsServer::set_servfail`], an empty answer
//! (`set_a(name, &[], ttl)`) and changed IPs. Negative answers carry an SOA with TTL 0 so
//! no resolver caches them. Answered by ordinary stub resolvers (glibc,
//! hickory-resolver). Every query is logged ([`DnsServer::log`]): who
//! asked what, over which transport.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Edns, MessageType, Metadata, OpCode, ResponseCode},
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, AAAA, SOA},
    },
};
use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::net::{TcpListener, UdpSocket};

use crate::{netns::Netns, runtime::NsRuntime};

#[derive(Clone, Debug)]
enum Entry {
    A {
        ips: Vec<Ipv4Addr>,
        ttl: u32,
    },
    /// An IPv6-only name: AAAA records, A questions get NODATA.
    Aaaa {
        ips: Vec<Ipv6Addr>,
        ttl: u32,
    },
    ServFail,
}

#[derive(Default)]
struct Zone {
    entries: Mutex<HashMap<LowerName, Entry>>,
    queries: AtomicU64,
    log: Mutex<Vec<Seen>>,
}

/// One query the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Lower case, with the trailing dot.
    pub name: String,
    /// `A`, `AAAA`, …
    pub qtype: String,
    /// The sender's address and port.
    pub src: SocketAddr,
    /// Over TCP (else UDP).
    pub tcp: bool,
}

impl Zone {
    fn set(&self, name: &str, entry: Option<Entry>) -> Result<()> {
        let key = lower_name(name)?;
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match entry {
            Some(entry) => entries.insert(key, entry),
            None => entries.remove(&key),
        };
        Ok(())
    }

    fn get(&self, name: &LowerName) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

fn lower_name(name: &str) -> Result<LowerName> {
    let mut parsed = Name::from_str(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    parsed.set_fqdn(true);
    Ok(LowerName::new(&parsed))
}

/// A DNS server in a namespace; stopped on drop.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    rt: NsRuntime,
}

impl DnsServer {
    /// Serves UDP and TCP on `addr` inside `netns` (port 0 picks a port for
    /// UDP and uses the same one for TCP).
    pub fn start(netns: &Netns, addr: SocketAddr) -> Result<DnsServer> {
        let rt = NsRuntime::start(netns, &format!("dns {addr}"))?;
        let zone = Arc::new(Zone::default());
        let bound = listen(&rt, &zone, addr)?;
        Ok(DnsServer {
            addr: bound,
            zone,
            rt,
        })
    }

    /// Answers from the same records on `addr` too (UDP and TCP, in the
    /// same namespace; the address must be one of its own): a pod's
    /// cluster DNS address, say. Returns the bound address.
    pub fn serve_also(&self, addr: SocketAddr) -> Result<SocketAddr> {
        listen(&self.rt, &self.zone, addr)
    }

    /// The bound address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A records of `name` (`svc.example` or `svc.example.`);
    /// an empty slice makes the name answer with no records.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl_secs: u32) -> Result<()> {
        let entry = Entry::A {
            ips: ips.to_vec(),
            ttl: ttl_secs,
        };
        self.zone.set(name, Some(entry))
    }

    /// Makes `name` an IPv6-only name with these AAAA records (replacing
    /// its A records, if any).
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr], ttl_secs: u32) -> Result<()> {
        let entry = Entry::Aaaa {
            ips: ips.to_vec(),
            ttl: ttl_secs,
        };
        self.zone.set(name, Some(entry))
    }

    /// Makes every query for `name` answer SERVFAIL (until `set_a` or
    /// `remove`).
    pub fn set_servfail(&self, name: &str) -> Result<()> {
        self.zone.set(name, Some(Entry::ServFail))
    }

    /// Forgets `name`: it answers NXDOMAIN.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.zone.set(name, None)
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Every query with a question received so far, in order.
    pub fn log(&self) -> Vec<Seen> {
        self.zone
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The logged queries for `name` (any case, with or without the dot).
    pub fn seen(&self, name: &str) -> Vec<Seen> {
        let name = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.log().into_iter().filter(|s| s.name == name).collect()
    }
}

/// Serves `zone` on `addr` (UDP, and TCP on the port UDP got) from a task
/// of `rt`; returns the bound address.
fn listen(rt: &NsRuntime, zone: &Arc<Zone>, addr: SocketAddr) -> Result<SocketAddr> {
    let handler = Handler {
        zone: Arc::clone(zone),
    };
    let (bound, mut server) = rt
        .run(async move {
            let udp = UdpSocket::bind(addr).await?;
            let bound = udp.local_addr()?;
            let tcp = TcpListener::bind(bound).await?;
            let mut server = Server::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 64);
            std::io::Result::Ok((bound, server))
        })?
        .with_context(|| format!("DNS server cannot listen on {addr}"))?;
    // The task owns the server; dropping the runtime ends both.
    rt.spawn(async move {
        let _ = server.block_until_done().await;
    });
    Ok(bound)
}

struct Handler {
    zone: Arc<Zone>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.zone.queries.fetch_add(1, Ordering::SeqCst);
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());

        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query
                    && request.metadata.op_code == OpCode::Query =>
            {
                info.query
            }
            Ok(_) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::NotImp);
                return send(&mut response_handle, request, response).await;
            }
            Err(_) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return send(&mut response_handle, request, response).await;
            }
        };

        self.zone
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Seen {
                name: query.name().to_string().to_ascii_lowercase(),
                qtype: query.query_type().to_string(),
                src: request.src(),
                tcp: request.protocol() == hickory_server::net::xfer::Protocol::Tcp,
            });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let name = Name::from(query.name().clone());
        let answers: Vec<Record> = match self.zone.get(query.name()) {
            None => {
                metadata.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
            Some(Entry::ServFail) => {
                let response = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                return send(&mut response_handle, request, response).await;
            }
            Some(Entry::A { ips, ttl }) => match query.query_type() {
                RecordType::A | RecordType::ANY => ips
                    .iter()
                    .map(|ip| Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))))
                    .collect(),
                _ => Vec::new(),
            },
            Some(Entry::Aaaa { ips, ttl }) => match query.query_type() {
                RecordType::AAAA | RecordType::ANY => ips
                    .iter()
                    .map(|ip| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*ip))))
                    .collect(),
                _ => Vec::new(),
            },
        };
        let soa = if answers.is_empty() {
            vec![negative_soa()]
        } else {
            Vec::new()
        };
        let response = builder.build(metadata, answers.iter(), [], soa.iter(), []);
        send(&mut response_handle, request, response).await
    }
}

/// The SOA of the root zone we pretend to own; TTL and minimum 0, so
/// negative answers are not cached.
fn negative_soa() -> Record {
    let soa = SOA::new(
        Name::from_ascii("ns.rdt.test.").expect("valid name"),
        Name::from_ascii("hostmaster.rdt.test.").expect("valid name"),
        1,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(Name::root(), 0, RData::SOA(soa))
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    request: &Request,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(err) => {
            eprintln!("testbed: DNS server cannot answer {}: {err}", request.src());
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}
