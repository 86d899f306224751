//! From raw documents to [`Config`]: every rule that needs more than one
//! document (a host in one ServiceEntry only, one DestinationRule per host,
//! unique VIP:port) and the assembly of per-(host, port) services.
//!
//! Validation never stops at the first problem: each check records what is
//! wrong and carries on with what it can, so one run lists everything. A
//! config with any problem is rejected as a whole, since running with part
//! of a config would route some traffic differently from what was written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use redirector_common::{MAX_ENDPOINTS, MAX_SERVICES};
use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::checks::qualified_name;
use super::ctx::{ConfigError, Ctx, Doc};
use super::model::{
    Config, DEFAULT_VIP_RANGE, DEFAULT_VIP_RANGE6, DatapathMode, EndpointAddress, EndpointSpec,
    LbAlgorithm, NodeSettings, Protocol, Service, TlsPolicy, TrafficPolicy,
};
use super::raw::{self, IgnoredAnyOr};
use super::service_entry::{self, Entry};
use super::{node, policy, vip, yaml};
use crate::topology::Locality;

const ISTIO_API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const NODE_API_VERSION: &str = "redirector.dev/v1alpha1";

/// Istio's other kinds: named so the message says "not implemented yet"
/// instead of "unknown".
const OTHER_ISTIO_KINDS: [&str; 7] = [
    "VirtualService",
    "Gateway",
    "Sidecar",
    "WorkloadEntry",
    "WorkloadGroup",
    "EnvoyFilter",
    "ProxyConfig",
];

/// The documents of a file, typed by kind.
struct Documents<'a> {
    service_entries: Vec<(Doc<'a>, raw::Document<raw::ServiceEntrySpec>)>,
    destination_rules: Vec<(Doc<'a>, raw::Document<raw::DestinationRuleSpec>)>,
    nodes: Vec<(Doc<'a>, raw::NodeDocument)>,
}

pub(super) fn load(
    source: &str,
    text: &str,
    overrides: &NodeSettings,
) -> Result<Config, ConfigError> {
    let mut ctx = Ctx::new(source);
    let split = yaml::split(text);
    let docs = classify(&mut ctx, &split);

    let file_node = node::settings(&mut ctx, &docs.nodes);
    let node = file_node.merged_with(overrides);
    let vip_range = node.vip_range.map_or(DEFAULT_VIP_RANGE, |r| r.trunc());
    let vip_range6 = node.vip_range6.map_or(DEFAULT_VIP_RANGE6, |r| r.trunc());

    let entries: Vec<Entry> = docs
        .service_entries
        .iter()
        .map(|(doc, se)| service_entry::validate(&mut ctx, doc, se))
        .collect();
    let owners = host_owners(&mut ctx, &docs, &entries);
    let rules = destination_rules(&mut ctx, &docs, &entries, &owners);
    let services = services(&mut ctx, &docs, &entries, &rules, (vip_range, vip_range6));

    if ctx.problems.is_empty() {
        Ok(Config {
            node,
            vip_range,
            vip_range6,
            services,
        })
    } else {
        let mut problems = ctx.problems;
        problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        Err(ConfigError { problems })
    }
}

/// Reads each document as the type its `kind` names.
fn classify<'a>(ctx: &mut Ctx, split: &'a [yaml::Document]) -> Documents<'a> {
    let mut out = Documents {
        service_entries: Vec::new(),
        destination_rules: Vec::new(),
        nodes: Vec::new(),
    };
    for d in split {
        let unnamed = format!("document {}", d.index);
        let header: raw::Header = match yaml::read_header(d) {
            Ok(h) => h,
            Err(mut e) => {
                if e.field.is_none() && e.message == "expected mapping start" {
                    e.message =
                        "a document must be a mapping with apiVersion, kind, metadata and spec"
                            .to_owned();
                }
                ctx.read_error(&unnamed, e);
                continue;
            }
        };
        // In the document's own lines, as every position given to `ctx`.
        let start = (Some(d.first_line - d.line_offset), Some(1));
        let anonymous = Doc {
            label: unnamed.clone(),
            text: &d.text,
            line_offset: d.line_offset,
        };
        let (Some(api_version), Some(kind)) = (&header.api_version, &header.kind) else {
            let missing = if header.kind.is_none() {
                "kind"
            } else {
                "apiVersion"
            };
            ctx.at(
                &anonymous,
                start,
                "",
                format!(
                    "missing `{missing}`: every document needs apiVersion and kind \
                     (ServiceEntry or DestinationRule of networking.istio.io, or NodeConfig of {NODE_API_VERSION})"
                ),
            );
            continue;
        };
        let name = match header.metadata {
            Some(IgnoredAnyOr::Value(raw::HeaderMetadata {
                name: Some(IgnoredAnyOr::Value(name)),
            })) => Some(name),
            _ => None,
        };
        let label = match &name {
            Some(name) => format!("{} {name:?} ({unnamed})", kind.value),
            None => format!("{} ({unnamed})", kind.value),
        };
        let doc = Doc {
            label,
            text: &d.text,
            line_offset: d.line_offset,
        };
        let istio = ISTIO_API_VERSIONS.contains(&api_version.value.as_str());
        let expected = match kind.value.as_str() {
            "ServiceEntry" | "DestinationRule" if !istio => {
                Some(format!("one of {}", ISTIO_API_VERSIONS.join(", ")))
            }
            "NodeConfig" if api_version.value != NODE_API_VERSION => {
                Some(NODE_API_VERSION.to_owned())
            }
            _ => None,
        };
        if let Some(expected) = expected {
            ctx.value(
                &doc,
                api_version,
                "apiVersion",
                format!(
                    "apiVersion {:?} is not supported for {}; expected {expected}",
                    api_version.value, kind.value
                ),
            );
            continue;
        }
        match kind.value.as_str() {
            "ServiceEntry" => {
                if let Some(se) = typed(ctx, &doc, d) {
                    out.service_entries.push((doc, se));
                }
            }
            "DestinationRule" => {
                if let Some(dr) = typed(ctx, &doc, d) {
                    out.destination_rules.push((doc, dr));
                }
            }
            "NodeConfig" => {
                if let Some(n) = typed(ctx, &doc, d) {
                    out.nodes.push((doc, n));
                }
            }
            other if istio && OTHER_ISTIO_KINDS.contains(&other) => ctx.value(
                &doc,
                kind,
                "kind",
                format!("not implemented yet: kind {other}; redirector reads only ServiceEntry and DestinationRule"),
            ),
            other => ctx.value(
                &doc,
                kind,
                "kind",
                format!(
                    "unknown kind {other:?} (apiVersion {:?}); expected ServiceEntry or DestinationRule \
                     (networking.istio.io), or NodeConfig ({NODE_API_VERSION})",
                    api_version.value
                ),
            ),
        }
    }
    out
}

fn typed<T: DeserializeOwned>(ctx: &mut Ctx, doc: &Doc, d: &yaml::Document) -> Option<T> {
    yaml::read(d)
        .map_err(|e| ctx.read_error(&doc.label, e))
        .ok()
}

/// Which ServiceEntry (index into `entries`) owns each host. A host in two
/// ServiceEntries is ambiguous: Istio merges or picks by age, neither of which
/// a node-local file should depend on.
fn host_owners(ctx: &mut Ctx, docs: &Documents, entries: &[Entry]) -> BTreeMap<String, usize> {
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let doc = &docs.service_entries[i].0;
        for (host, at, field) in &entry.hosts {
            match owners.get(host) {
                Some(&j) if j == i => ctx.at(doc, *at, field, format!("host {host} is listed twice")),
                Some(&j) => ctx.at(
                    doc,
                    *at,
                    field,
                    format!(
                        "host {host} is already defined by {}; a host may be in only one ServiceEntry",
                        docs.service_entries[j].0.label
                    ),
                ),
                None => {
                    owners.insert(host.clone(), i);
                }
            }
        }
    }
    owners
}

/// A DestinationRule attached to its ServiceEntry host.
struct Rule {
    name: String,
    policy: TrafficPolicy,
    /// `portLevelSettings`: port number → the policy that replaces `policy`
    /// on that port.
    ports: BTreeMap<u16, TrafficPolicy>,
}

/// Validates DestinationRules and matches them to hosts: host → rule.
fn destination_rules(
    ctx: &mut Ctx,
    docs: &Documents,
    entries: &[Entry],
    owners: &BTreeMap<String, usize>,
) -> BTreeMap<String, Rule> {
    let mut rules: BTreeMap<String, Rule> = BTreeMap::new();
    // Which document claimed each host, even if it turned out invalid.
    let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
    for (doc, dr) in &docs.destination_rules {
        let checked = policy::validate(ctx, doc, dr);
        let host = &dr.spec.value.host;
        let host_field = "spec.host";
        let Some(&owner) = owners.get(&host.value) else {
            let message = if host.value.contains('*') {
                format!(
                    "not implemented yet: wildcard host {:?}; use the exact ServiceEntry host",
                    host.value
                )
            } else if !host.value.contains('.') {
                format!(
                    "not implemented yet: short host name {:?}; use the full ServiceEntry host",
                    host.value
                )
            } else {
                let known: Vec<&str> = owners.keys().map(String::as_str).collect();
                format!(
                    "no ServiceEntry has host {:?} (ServiceEntry hosts: {})",
                    host.value,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            };
            ctx.value(doc, host, host_field, message);
            continue;
        };
        if let Some(other) = claimed.get(host.value.as_str()) {
            ctx.value(
                doc,
                host,
                host_field,
                format!(
                    "host {} already has {other}; not implemented yet: one DestinationRule per host (Istio would merge them)",
                    host.value
                ),
            );
            continue;
        }
        claimed.insert(&host.value, &doc.label);
        let Some(checked) = checked else { continue };
        let ports = &entries[owner].ports;
        let mut ok = true;
        // A port selector that matches nothing would silently do nothing
        // (Istio ignores it).
        for p in &checked.ports {
            if !ports.iter().any(|(port, _, _)| port.number == p.number) {
                let known: Vec<String> = ports
                    .iter()
                    .map(|(port, _, _)| port.number.to_string())
                    .collect();
                ctx.at(
                    doc,
                    p.at,
                    &p.field,
                    format!(
                        "ServiceEntry {:?} of host {} has no port {} (its ports: {}); \
                         portLevelSettings select ports by number",
                        entries[owner].name,
                        host.value,
                        p.number,
                        known.join(", ")
                    ),
                );
                ok = false;
            }
        }
        // Originating TLS towards a port the app already speaks TLS on would
        // encrypt twice.
        for (port, _, _) in ports {
            let (policy, mode, field) = match checked.ports.iter().find(|p| p.number == port.number)
            {
                Some(p) => (&p.policy, p.tls_mode, p.tls_mode_field.as_str()),
                None => (
                    &checked.policy,
                    checked.tls_mode,
                    "spec.trafficPolicy.tls.mode",
                ),
            };
            if let (Some(o), Some(mode)) = (policy.tls.origination(), mode)
                && matches!(port.protocol, Protocol::Https | Protocol::Tls)
            {
                ctx.value(
                    doc,
                    mode,
                    field,
                    format!(
                        "tls mode {} on port {} ({}) whose protocol is {}: the app already speaks TLS \
                         there, so originating TLS again would double-encrypt; use mode DISABLE, or declare \
                         the port as HTTP or TCP",
                        o.mode(), port.number, port.name, port.protocol
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            continue;
        }
        if checked.policy.load_balancer == LbAlgorithm::Passthrough
            && let Some(simple) = checked.simple
        {
            let field = "spec.trafficPolicy.loadBalancer.simple";
            passthrough(ctx, doc, simple, field, &entries[owner]);
            continue;
        }
        if let Some(p) = checked
            .ports
            .iter()
            .find(|p| p.policy.load_balancer == LbAlgorithm::Passthrough)
            && let Some(simple) = p.simple
        {
            let field = format!(
                "{}.loadBalancer.simple",
                p.field.trim_end_matches(".port.number")
            );
            passthrough(ctx, doc, simple, &field, &entries[owner]);
            continue;
        }
        let name = qualified_name(&dr.metadata).unwrap_or_default();
        rules.insert(
            host.value.clone(),
            Rule {
                name,
                policy: checked.policy,
                ports: checked
                    .ports
                    .into_iter()
                    .map(|p| (p.number, p.policy))
                    .collect(),
            },
        );
    }
    rules
}

/// Assigns VIPs and expands each ServiceEntry into one service per
/// (host, port), with endpoint ports chosen for that port.
fn services(
    ctx: &mut Ctx,
    docs: &Documents,
    entries: &[Entry],
    rules: &BTreeMap<String, Rule>,
    (vip_range, vip_range6): (ipnet::Ipv4Net, ipnet::Ipv6Net),
) -> Vec<Service> {
    let taken: BTreeSet<Ipv4Addr> = entries
        .iter()
        .filter_map(|e| e.address.map(|(ip, _)| ip))
        .collect();
    let need: Vec<&str> = entries
        .iter()
        .filter(|e| e.address.is_none())
        .flat_map(|e| e.hosts.iter().map(|(h, _, _)| h.as_str()))
        .collect();
    let taken6: BTreeSet<Ipv6Addr> = entries
        .iter()
        .filter_map(|e| e.address6.map(|(ip, _)| ip))
        .collect();
    let need6: Vec<&str> = entries
        .iter()
        .filter(|e| e.address6.is_none())
        .flat_map(|e| e.hosts.iter().map(|(h, _, _)| h.as_str()))
        .collect();
    let allocated = vip::allocate(vip_range, need, &taken).map_err(|e| (e, vip_range.to_string()));
    let allocated6 =
        vip::allocate6(vip_range6, need6, &taken6).map_err(|e| (e, vip_range6.to_string()));
    let (allocated, allocated6): (BTreeMap<String, Ipv4Addr>, BTreeMap<String, Ipv6Addr>) =
        match (allocated, allocated6) {
            (Ok(v4), Ok(v6)) => (v4.into_iter().collect(), v6.into_iter().collect()),
            (Err((e, range)), _) | (_, Err((e, range))) => {
                let (i, at, field) = entries
                    .iter()
                    .enumerate()
                    .find_map(|(i, en)| {
                        en.hosts
                            .iter()
                            .find(|(h, _, _)| *h == e.host)
                            .map(|(_, at, f)| (i, *at, f.clone()))
                    })
                    .expect("an exhausted host comes from a ServiceEntry");
                ctx.at(
                &docs.service_entries[i].0,
                at,
                field,
                format!(
                    "no free VIP left for host {} in {range} ({} usable addresses); widen vipRange \
                     (vipRange6 for IPv6) or give ServiceEntries explicit addresses",
                    e.host, e.usable
                ),
            );
                return Vec::new();
            }
        };

    for (i, entry) in entries.iter().enumerate() {
        locality_weight_sums(ctx, &docs.service_entries[i].0, entry);
    }
    let mut out = Vec::new();
    // Where the kernel's tables overflow, if they do: reported once, at the
    // port that crosses the limit, with the totals.
    let mut endpoint_entries = 0usize;
    let mut too_many_services = None;
    let mut too_many_endpoints = None;
    let mut by_vip_port: BTreeMap<(std::net::IpAddr, u16), String> = BTreeMap::new();
    // A host listed twice has been reported already; build it once.
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let doc = &docs.service_entries[i].0;
        let mut sans_used = false;
        for (host, _, _) in &entry.hosts {
            if !seen.insert(host) {
                continue;
            }
            let (vip, vip_allocated) = match entry.address {
                Some((ip, _)) => (ip, false),
                None => (allocated[host], true),
            };
            let (vip6, vip6_allocated) = match entry.address6 {
                Some((ip, _)) => (ip, false),
                None => (allocated6[host], true),
            };
            for ep in &entry.endpoints {
                if ep.address == EndpointAddress::Ip(vip.into())
                    || ep.address == EndpointAddress::Ip(vip6.into())
                {
                    let vip = match &ep.address {
                        EndpointAddress::Ip(ip) => *ip,
                        EndpointAddress::Dns(_) => vip.into(),
                    };
                    ctx.at(
                        doc,
                        ep.at,
                        format!("{}.address", ep.field),
                        format!(
                            "endpoint {vip} is the VIP of {host} itself: connections would loop back into the redirector"
                        ),
                    );
                }
            }
            for (port, at, field) in &entry.ports {
                let clash = [vip.into(), vip6.into()].into_iter().find_map(|ip| {
                    by_vip_port
                        .get(&(ip, port.number))
                        .map(|other| (ip, other.clone()))
                });
                if let Some((ip, other)) = clash {
                    let at_vip = std::net::SocketAddr::new(ip, port.number);
                    ctx.at(
                        doc,
                        *at,
                        field,
                        format!(
                            "{at_vip} is used by both {other} and {host}; each VIP and port pair must belong to one host"
                        ),
                    );
                    continue;
                }
                by_vip_port.insert((vip.into(), port.number), host.clone());
                by_vip_port.insert((vip6.into(), port.number), host.clone());
                let endpoints = if entry.endpoints.is_empty() {
                    vec![EndpointSpec {
                        address: EndpointAddress::Dns(host.clone()),
                        port: port.target_port,
                        locality: Default::default(),
                        weight: 1,
                        labels: Default::default(),
                        network: String::new(),
                    }]
                } else {
                    entry
                        .endpoints
                        .iter()
                        .map(|ep| EndpointSpec {
                            address: ep.address.clone(),
                            port: ep
                                .ports
                                .get(&port.name)
                                .copied()
                                .unwrap_or(port.target_port),
                            locality: ep.locality.clone(),
                            weight: ep.weight,
                            labels: ep.labels.clone(),
                            network: ep.network.clone(),
                        })
                        .collect()
                };
                let rule = rules.get(host);
                // A port's own settings replace the rule's whole policy.
                let mut policy = rule
                    .map(|r| r.ports.get(&port.number).unwrap_or(&r.policy).clone())
                    .unwrap_or_default();
                // Istio: the ServiceEntry's subjectAltNames verify the
                // endpoints when the rule's TLS settings name none.
                if let TlsPolicy::Originate(o) = &mut policy.tls {
                    sans_used = true;
                    if o.subject_alt_names.is_empty()
                        && !o.insecure_skip_verify
                        && let Some((names, _)) = &entry.subject_alt_names
                    {
                        o.subject_alt_names = names.clone();
                    }
                }
                if let (DatapathMode::Kernel, Some(at)) = (entry.datapath, entry.datapath_at)
                    && let Some(why) = service_entry::kernel_datapath_problem(
                        port,
                        &policy.tls,
                        rule.map(|r| r.name.as_str()),
                    )
                {
                    let field = format!(
                        "metadata.annotations.{}",
                        service_entry::DATAPATH_ANNOTATION
                    );
                    ctx.at(doc, at, field, why);
                }
                if out.len() == MAX_SERVICES as usize && too_many_services.is_none() {
                    too_many_services = Some((i, *at, field.clone()));
                }
                let before = endpoint_entries;
                endpoint_entries += endpoints.len();
                if before <= MAX_ENDPOINTS as usize
                    && endpoint_entries > MAX_ENDPOINTS as usize
                    && too_many_endpoints.is_none()
                {
                    too_many_endpoints = Some((i, *at, field.clone()));
                }
                out.push(Service {
                    host: host.clone(),
                    vip,
                    vip_allocated,
                    vip6,
                    vip6_allocated,
                    port: port.clone(),
                    resolution: entry.resolution,
                    endpoints,
                    policy,
                    datapath: entry.datapath,
                    service_entry: entry.name.clone(),
                    destination_rule: rule.map(|r| r.name.clone()),
                });
            }
        }
        if let Some((names, at)) = &entry.subject_alt_names
            && !names.is_empty()
            && !sans_used
        {
            ctx.at(
                doc,
                *at,
                "spec.subjectAltNames",
                "used only to verify endpoint certificates where a DestinationRule originates TLS \
                 (tls mode SIMPLE or MUTUAL), and no port of this ServiceEntry has one that does; \
                 remove it or set tls in the host's DestinationRule",
            );
        }
    }
    if let Some((i, at, field)) = too_many_services {
        ctx.at(
            &docs.service_entries[i].0,
            at,
            field,
            format!(
                "too many services: the config has {} (one per host and port), and the kernel's \
                 tables hold {MAX_SERVICES}; this port is the first past that",
                out.len()
            ),
        );
    }
    if let Some((i, at, field)) = too_many_endpoints {
        ctx.at(
            &docs.service_entries[i].0,
            at,
            field,
            format!(
                "too many endpoints: the services have {endpoint_entries} endpoints in all (an \
                 endpoint of a ServiceEntry counts once per port, a ServiceEntry without \
                 endpoints once per port for its host), and the kernel's endpoint table holds \
                 {MAX_ENDPOINTS}; this port is the first past that"
            ),
        );
    }
    out.sort_by(|a, b| (&a.host, a.port.number).cmp(&(&b.host, b.port.number)));
    out
}

/// Envoy refuses a locality whose endpoint weights add up to more than
/// 2^32 − 1 ("The sum of weights of all upstream hosts in a locality
/// exceeds 4294967295"); reported at the endpoint that crosses it.
fn locality_weight_sums(ctx: &mut Ctx, doc: &Doc, entry: &Entry) {
    let mut sums: BTreeMap<&Locality, u64> = BTreeMap::new();
    for ep in &entry.endpoints {
        let sum = sums.entry(&ep.locality).or_default();
        let before = *sum;
        *sum += u64::from(ep.weight);
        if u32::try_from(before).is_ok() && *sum > u64::from(u32::MAX) {
            ctx.at(
                doc,
                ep.at,
                format!("{}.weight", ep.field),
                format!(
                    "the weights of the endpoints in locality {:?} add up to more than {} (Envoy rejects that)",
                    ep.locality.to_string(),
                    u32::MAX
                ),
            );
        }
    }
}

/// PASSTHROUGH (Envoy's ORIGINAL_DST) connects to the address the app
/// dialled instead of to the endpoints. With an allocated VIP that address
/// leads nowhere; with an explicit one it would mean not redirecting the
/// service at all, which the datapath cannot express per service yet.
fn passthrough(ctx: &mut Ctx, doc: &Doc, simple: &Spanned<String>, field: &str, entry: &Entry) {
    let message = match entry.address {
        None => format!(
            "PASSTHROUGH sends each connection to the address the app dialled, but the hosts of {} have \
             VIPs allocated by redirector, which lead nowhere: there is nothing to pass through to; use \
             ROUND_ROBIN, LEAST_REQUEST or RANDOM",
            entry.name
        ),
        Some((ip, _)) => format!(
            "not implemented yet: PASSTHROUGH would send connections to {ip} itself, bypassing the \
             endpoints, which means not redirecting this service at all; remove the ServiceEntry instead \
             (or use ROUND_ROBIN, LEAST_REQUEST or RANDOM)"
        ),
    };
    ctx.value(doc, simple, field, message);
}
