//! A ServiceEntry's own rules: hosts, address, ports, resolution, endpoints.
//!
//! Defaults follow Istio (`targetPort` is `number`, protocol inferred from
//! the port name, location MESH_EXTERNAL) except where Istio's default is
//! something redirector cannot do: Istio's default resolution NONE means
//! "send to whatever address the app dialled", which has no meaning for a VIP
//! we allocated, so resolution must be written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_saphyr::Spanned;

use super::checks::{
    dns_name_problem, label_key_problem, label_value_problem, metadata_name, port_number,
    subject_alt_names,
};
use super::ctx::{Ctx, Doc, Pos, pos};
use super::model::{DatapathMode, EndpointAddress, Protocol, Resolution, ServicePort, TlsPolicy};
use super::{raw, yaml};
use crate::topology::Locality;

/// The ServiceEntry annotation that chooses the datapath.
pub(super) const DATAPATH_ANNOTATION: &str = "redirector.dev/datapath";
const OUR_ANNOTATIONS: &str = "redirector.dev/";

/// A validated ServiceEntry, kept even when parts of it are wrong so the
/// cross-document checks still see its hosts.
pub(super) struct Entry {
    /// `namespace/name` or `name`.
    pub(super) name: String,
    /// Host, where it is written, its field path.
    pub(super) hosts: Vec<(String, Pos, String)>,
    pub(super) address: Option<(Ipv4Addr, Pos)>,
    /// The IPv6 address among `addresses`, if any.
    pub(super) address6: Option<(Ipv6Addr, Pos)>,
    pub(super) ports: Vec<(ServicePort, Pos, String)>,
    pub(super) resolution: Resolution,
    /// Empty for DNS without endpoints: each host is then its own endpoint.
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) datapath: DatapathMode,
    /// Where `redirector.dev/datapath` is written, if it is.
    pub(super) datapath_at: Option<Pos>,
    /// `subjectAltNames`, for ports whose DestinationRule originates TLS
    /// without names of its own; where the key is written.
    pub(super) subject_alt_names: Option<(Vec<String>, Pos)>,
}

pub(super) struct Endpoint {
    pub(super) address: EndpointAddress,
    /// Port name → port, overriding the service port's `targetPort`.
    pub(super) ports: BTreeMap<String, u16>,
    pub(super) locality: Locality,
    /// At least 1 (Istio reads 0 and unset as 1).
    pub(super) weight: u32,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) network: String,
    /// Where the address is written, and the endpoint's field path.
    pub(super) at: Pos,
    pub(super) field: String,
}

pub(super) fn validate(
    ctx: &mut Ctx,
    doc: &Doc,
    se: &raw::Document<raw::ServiceEntrySpec>,
) -> Entry {
    let spec = &se.spec.value;
    let name = metadata_name(ctx, doc, se);
    for (key, v) in [
        ("exportTo", &spec.export_to),
        ("workloadSelector", &spec.workload_selector),
    ] {
        ctx.unsupported(doc, "spec", key, v);
    }
    if let Some(location) = &spec.location {
        match location.value.as_str() {
            "MESH_EXTERNAL" => {}
            "MESH_INTERNAL" => ctx.value(
                doc,
                location,
                "spec.location",
                "not implemented yet: location MESH_INTERNAL (there is no mesh here); use MESH_EXTERNAL",
            ),
            other => ctx.value(
                doc,
                location,
                "spec.location",
                format!("unknown location {other:?}; expected MESH_EXTERNAL"),
            ),
        }
    }
    let resolution = resolution(ctx, doc, se);
    let (datapath, datapath_at) = annotations(ctx, doc, se);
    let (address, address6) = addresses(ctx, doc, &spec.addresses);
    Entry {
        datapath,
        datapath_at,
        name,
        hosts: hosts(ctx, doc, &spec.hosts),
        address,
        address6,
        ports: ports(ctx, doc, &spec.ports),
        endpoints: endpoints(ctx, doc, spec, resolution),
        resolution: resolution.unwrap_or(Resolution::Dns),
        subject_alt_names: spec.subject_alt_names.as_ref().map(|list| {
            let field = "spec.subjectAltNames";
            let names = subject_alt_names(ctx, doc, field, list);
            let at = yaml::key_position(doc.text, "subjectAltNames", list.referenced);
            (names, at)
        }),
    }
}

/// `redirector.dev/*` annotations: the datapath, nothing else. Other
/// annotations belong to other tools and are ignored.
fn annotations(
    ctx: &mut Ctx,
    doc: &Doc,
    se: &raw::Document<raw::ServiceEntrySpec>,
) -> (DatapathMode, Option<Pos>) {
    let mut out = (DatapathMode::Proxy, None);
    let annotations = se
        .metadata
        .as_ref()
        .and_then(|m| m.value.annotations.as_ref());
    for (key, value) in annotations.into_iter().flatten() {
        let field = format!("metadata.annotations.{key}");
        if key == DATAPATH_ANNOTATION {
            match value.value.as_str() {
                "proxy" => out = (DatapathMode::Proxy, Some(pos(value.referenced))),
                "kernel" => out = (DatapathMode::Kernel, Some(pos(value.referenced))),
                other => ctx.value(
                    doc,
                    value,
                    field,
                    format!("unknown datapath {other:?}; expected proxy or kernel"),
                ),
            }
        } else if key.starts_with(OUR_ANNOTATIONS) {
            let at = yaml::key_position(doc.text, key, value.referenced);
            ctx.at(
                doc,
                at,
                field,
                format!(
                    "unknown redirector annotation {key:?}; the only one is {DATAPATH_ANNOTATION}"
                ),
            );
        }
    }
    out
}

/// Why a service port cannot use the kernel datapath, if it cannot.
/// `rule` names the DestinationRule whose `tls` applies.
pub(super) fn kernel_datapath_problem(
    port: &ServicePort,
    tls: &TlsPolicy,
    rule: Option<&str>,
) -> Option<String> {
    if port.protocol == Protocol::Http {
        return Some(format!(
            "datapath kernel cannot serve port {} ({}): it is HTTP, and the kernel hands whole \
             connections to one endpoint, while HTTP needs the proxy to balance and retry each \
             request and to count 5xx answers for outlier detection; use proxy, or declare the \
             port TCP",
            port.number, port.name
        ));
    }
    if let Some(o) = tls.origination() {
        return Some(format!(
            "datapath kernel cannot serve port {} ({}): DestinationRule {} originates TLS \
             (tls.mode {}), which only the proxy can do; use proxy",
            port.number,
            port.name,
            rule.unwrap_or("?"),
            o.mode()
        ));
    }
    None
}

fn resolution(
    ctx: &mut Ctx,
    doc: &Doc,
    se: &raw::Document<raw::ServiceEntrySpec>,
) -> Option<Resolution> {
    let Some(r) = &se.spec.value.resolution else {
        ctx.at(
            doc,
            pos(se.spec.referenced),
            "spec.resolution",
            "resolution is missing, and Istio's default NONE is not implemented yet; set resolution: DNS or STATIC",
        );
        return None;
    };
    let field = "spec.resolution";
    match r.value.as_str() {
        "STATIC" => Some(Resolution::Static),
        "DNS" => Some(Resolution::Dns),
        "NONE" | "DNS_ROUND_ROBIN" => {
            ctx.value(
                doc,
                r,
                field,
                format!(
                    "not implemented yet: resolution {}; use DNS or STATIC",
                    r.value
                ),
            );
            None
        }
        other => {
            ctx.value(
                doc,
                r,
                field,
                format!("unknown resolution {other:?}; expected DNS or STATIC"),
            );
            None
        }
    }
}

fn hosts(
    ctx: &mut Ctx,
    doc: &Doc,
    hosts: &Spanned<Vec<Spanned<String>>>,
) -> Vec<(String, Pos, String)> {
    if hosts.value.is_empty() {
        ctx.value(
            doc,
            hosts,
            "spec.hosts",
            "hosts must list at least one host",
        );
    }
    let mut out = Vec::new();
    for (i, h) in hosts.value.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        let problem = if h.value.contains('*') {
            Some(format!(
                "not implemented yet: wildcard host {:?}; list each host",
                h.value
            ))
        } else if h.value.parse::<IpAddr>().is_ok() {
            Some(format!(
                "host {:?} is an IP address; hosts are names (put a VIP in addresses)",
                h.value
            ))
        } else {
            dns_name_problem(&h.value)
        };
        match problem {
            Some(message) => ctx.value(doc, h, field, message),
            None => out.push((h.value.clone(), pos(h.referenced), field)),
        }
    }
    out
}

/// At most one address per family (Istio allows more; one VIP per family
/// is what the datapath and the DNS answers carry).
#[allow(clippy::type_complexity)]
fn addresses(
    ctx: &mut Ctx,
    doc: &Doc,
    addresses: &Option<Spanned<Vec<Spanned<String>>>>,
) -> (Option<(Ipv4Addr, Pos)>, Option<(Ipv6Addr, Pos)>) {
    let mut v4 = None;
    let mut v6 = None;
    let Some(addresses) = addresses.as_ref() else {
        return (v4, v6);
    };
    for (i, a) in addresses.value.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        let text = a.value.as_str();
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let ip = match (ip.parse::<IpAddr>(), prefix) {
            (Ok(IpAddr::V4(ip)), None | Some("32")) => IpAddr::V4(ip),
            (Ok(IpAddr::V6(ip)), None | Some("128")) => IpAddr::V6(ip),
            (Ok(_), Some(p)) if p.parse::<u8>().is_ok() => {
                ctx.value(
                    doc,
                    a,
                    field,
                    format!(
                        "not implemented yet: CIDR {text:?}; give a single address (or /32, /128)"
                    ),
                );
                continue;
            }
            _ => {
                ctx.value(doc, a, field, format!("{text:?} is not an IP address"));
                continue;
            }
        };
        let unusable = match ip {
            IpAddr::V4(ip) => ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast(),
            IpAddr::V6(ip) => {
                ip.is_unspecified()
                    || ip.is_multicast()
                    || ip.is_loopback()
                    || ip.to_ipv4_mapped().is_some()
            }
        };
        if unusable {
            ctx.value(doc, a, field, format!("{ip} cannot be a service address"));
            continue;
        }
        let taken = match ip {
            IpAddr::V4(ip) => v4.replace((ip, pos(a.referenced))).is_some(),
            IpAddr::V6(ip) => v6.replace((ip, pos(a.referenced))).is_some(),
        };
        if taken {
            ctx.value(
                doc,
                a,
                field,
                "not implemented yet: more than one address of a family per ServiceEntry; split \
                 the hosts into several ServiceEntries",
            );
        }
    }
    (v4, v6)
}

fn ports(
    ctx: &mut Ctx,
    doc: &Doc,
    ports: &Spanned<Vec<Spanned<raw::Port>>>,
) -> Vec<(ServicePort, Pos, String)> {
    if ports.value.is_empty() {
        ctx.value(
            doc,
            ports,
            "spec.ports",
            "ports must list at least one port",
        );
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in ports.value.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let at = pos(p.referenced);
        let raw = &p.value;
        let number = match &raw.number {
            Some(n) => port_number(ctx, doc, n, &format!("{field}.number")),
            None => {
                ctx.at(
                    doc,
                    at,
                    format!("{field}.number"),
                    "port number is required",
                );
                None
            }
        };
        let number = match (number, &raw.number) {
            (Some(n), Some(spanned)) if !numbers.insert(n) => {
                ctx.value(
                    doc,
                    spanned,
                    format!("{field}.number"),
                    format!("port {n} is listed twice"),
                );
                None
            }
            (n, _) => n,
        };
        let name = match &raw.name {
            Some(name) if !name.value.is_empty() => {
                if !names.insert(name.value.clone()) {
                    ctx.value(
                        doc,
                        name,
                        format!("{field}.name"),
                        format!("port name {:?} is used twice", name.value),
                    );
                }
                Some(name.value.clone())
            }
            _ => {
                ctx.at(doc, at, format!("{field}.name"), "port name is required");
                None
            }
        };
        let protocol = match &raw.protocol {
            Some(pr) => protocol(ctx, doc, pr, &format!("{field}.protocol")),
            None => name.as_deref().map(infer_protocol),
        };
        let target_port = match &raw.target_port {
            Some(t) => port_number(ctx, doc, t, &format!("{field}.targetPort")),
            None => number,
        };
        if let (Some(number), Some(name), Some(protocol), Some(target_port)) =
            (number, name, protocol, target_port)
        {
            out.push((
                ServicePort {
                    number,
                    name,
                    protocol,
                    target_port,
                },
                at,
                field,
            ));
        }
    }
    out
}

fn protocol(ctx: &mut Ctx, doc: &Doc, p: &Spanned<String>, field: &str) -> Option<Protocol> {
    match p.value.to_ascii_uppercase().as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        "TCP" => Some(Protocol::Tcp),
        "TLS" => Some(Protocol::Tls),
        known @ ("GRPC" | "HTTP2" | "GRPC-WEB" | "MONGO" | "MYSQL" | "REDIS" | "UDP") => {
            ctx.value(
                doc,
                p,
                field,
                format!("not implemented yet: protocol {known}; use HTTP, HTTPS, TCP or TLS"),
            );
            None
        }
        _ => {
            ctx.value(
                doc,
                p,
                field,
                format!(
                    "unknown protocol {:?}; expected HTTP, HTTPS, TCP or TLS",
                    p.value
                ),
            );
            None
        }
    }
}

/// Istio's convention for ports without a protocol: the name's prefix up to
/// the first `-` names it. Prefixes we cannot serve fall back to TCP, which
/// forwards bytes unchanged.
fn infer_protocol(name: &str) -> Protocol {
    let prefix = name
        .split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match prefix.as_str() {
        "http" => Protocol::Http,
        "https" => Protocol::Https,
        "tls" => Protocol::Tls,
        _ => Protocol::Tcp,
    }
}

fn endpoints(
    ctx: &mut Ctx,
    doc: &Doc,
    spec: &raw::ServiceEntrySpec,
    resolution: Option<Resolution>,
) -> Vec<Endpoint> {
    let raw_endpoints = spec.endpoints.as_deref().unwrap_or_default();
    if raw_endpoints.is_empty() && resolution == Some(Resolution::Static) {
        ctx.at(
            doc,
            pos(spec.hosts.referenced),
            "spec.endpoints",
            "resolution STATIC needs endpoints with IP addresses",
        );
    }
    let port_names: BTreeSet<&str> = spec
        .ports
        .value
        .iter()
        .filter_map(|p| p.value.name.as_ref().map(|n| n.value.as_str()))
        .collect();
    let mut out = Vec::new();
    for (i, ep) in raw_endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{i}]");
        let raw = &ep.value;
        ctx.unsupported(doc, &field, "serviceAccount", &raw.service_account);
        let address = match &raw.address {
            Some(a) => endpoint_address(ctx, doc, a, &format!("{field}.address"), resolution),
            None => {
                ctx.at(
                    doc,
                    pos(ep.referenced),
                    format!("{field}.address"),
                    "endpoint address is required",
                );
                None
            }
        };
        let mut ports = BTreeMap::new();
        for (name, port) in raw.ports.iter().flatten() {
            let port_field = format!("{field}.ports.{name}");
            if !port_names.contains(name.as_str()) {
                let at = yaml::key_position(doc.text, name, port.referenced);
                let known: Vec<&str> = port_names.iter().copied().collect();
                ctx.at(
                    doc,
                    at,
                    port_field,
                    format!(
                        "{name:?} is not the name of a port of this ServiceEntry (ports: {})",
                        known.join(", ")
                    ),
                );
            } else if let Some(p) = port_number(ctx, doc, port, &port_field) {
                ports.insert(name.clone(), p);
            }
        }
        let locality = match &raw.locality {
            Some(l) => match Locality::parse(&l.value) {
                Ok(l) => l,
                Err(e) => {
                    ctx.value(doc, l, format!("{field}.locality"), e.to_string());
                    Locality::default()
                }
            },
            None => Locality::default(),
        };
        let weight = match &raw.weight {
            None => 1,
            Some(w) => match u32::try_from(w.value) {
                // Istio treats 0 like unset: weight 1.
                Ok(w) => w.max(1),
                Err(_) => {
                    ctx.value(
                        doc,
                        w,
                        format!("{field}.weight"),
                        format!(
                            "weight {} is out of range 0-{} (0 means the default, 1)",
                            w.value,
                            u32::MAX
                        ),
                    );
                    1
                }
            },
        };
        let mut labels = BTreeMap::new();
        for (key, value) in raw.labels.iter().flat_map(|l| &l.value) {
            let label_field = format!("{field}.labels.{key}");
            if let Some(p) = label_key_problem(key) {
                let at = yaml::key_position(doc.text, key, value.referenced);
                ctx.at(doc, at, label_field, p);
            } else if let Some(p) = label_value_problem(&value.value) {
                ctx.value(doc, value, label_field, p);
            } else {
                labels.insert(key.clone(), value.value.clone());
            }
        }
        let network = raw
            .network
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_default();
        if let (Some(address), Some(written)) = (address, &raw.address) {
            out.push(Endpoint {
                address,
                ports,
                locality,
                weight,
                labels,
                network,
                at: pos(written.referenced),
                field,
            });
        }
    }
    out
}

fn endpoint_address(
    ctx: &mut Ctx,
    doc: &Doc,
    a: &Spanned<String>,
    field: &str,
    resolution: Option<Resolution>,
) -> Option<EndpointAddress> {
    let text = a.value.as_str();
    let problem = if text.starts_with("unix://") {
        "unix domain socket endpoints are not supported: redirector proxies to network endpoints"
            .to_owned()
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        if ip.is_unspecified() || ip.is_multicast() {
            format!("{ip} cannot be an endpoint address")
        } else {
            return Some(EndpointAddress::Ip(ip));
        }
    } else if let Some(p) = dns_name_problem(text) {
        format!("endpoint address must be an IP address or a DNS name: {p}")
    } else if resolution == Some(Resolution::Static) {
        format!(
            "resolution STATIC needs IP addresses, but {text:?} is a DNS name; use resolution: DNS"
        )
    } else {
        return Some(EndpointAddress::Dns(text.to_owned()));
    };
    ctx.value(doc, a, field, problem);
    None
}
