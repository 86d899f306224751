//! Map ABI shared by the kernel programs and the userspace daemon.
//!
//! Both sides compile these exact types, so a layout change cannot drift
//! silently: every type is `#[repr(C)]`, has explicit padding, carries its
//! byte order in field names (`_be` = network order), and has a size assert.
//! Map names carry [`ABI_VERSION`] so a daemon never misreads maps pinned by a
//! build with another layout: it fails to find them instead.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

/// Bumped whenever a key or value below changes layout. Part of every map
/// name and of the pin directory.
pub const ABI_VERSION: u32 = 3;

/// Map names, as declared in `redirector-ebpf` (the `#[map(name = ..)]`
/// attribute needs a literal, so userspace checks these at load time).
/// Kernel object names are limited to 15 bytes.
pub mod map_names {
    /// [`super::ServiceKey`] → [`super::ServiceValue`]: the VIPs to redirect.
    pub const SERVICES: &str = "RD_SVC_V3";
    /// `u32` index 0 → [`super::ProxyConfig`]: where to redirect, loop guard.
    pub const PROXY_CONFIG: &str = "RD_CFG_V3";
    /// Hash of maps: a network namespace ([`super::NsId`]) → its own LRU
    /// map of [`super::SockKey`] (a client of the proxy, or of the DNS
    /// responder over TCP, as they see their peer) → [`super::OrigDst`]
    /// (what it dialled), written by sock_ops from the socket's
    /// [`super::SockOrig`]; read (and deleted) on accept. One inner map per
    /// namespace, so one namespace can evict only its own entries.
    pub const ORIG_BY_SOCK: &str = "RD_OSOCK_V3";
    /// `u32` service id → [`super::ServiceInfo`]: for `redirector endpoints`.
    pub const SERVICE_INFO: &str = "RD_SINFO_V3";
    /// [`super::EndpointKey`] → [`super::EndpointHealth`]: endpoint state.
    pub const ENDPOINTS: &str = "RD_EP_V3";
    /// `u32` service id → [`super::SlotTable`]: where connect4 sends a
    /// connect without the proxy (kernel fast path, or fail-open).
    pub const SLOTS: &str = "RD_SLOTS_V3";
    /// Ring buffer of [`super::ConnectOutcome`] and
    /// [`super::ConnectOutcome6`], read by the daemon.
    pub const OUTCOMES: &str = "RD_OUTCOME_V3";
    /// `u32` index 0 → [`super::DnsConfig`]: where the DNS responder
    /// listens, and whether port-53 traffic goes to it.
    pub const DNS_CONFIG: &str = "RD_DNSCFG_V3";
    /// Hash of maps, as [`ORIG_BY_SOCK`]: a namespace → its LRU map of
    /// [`super::SockKey`] (an app's UDP DNS socket, as the responder sees
    /// its peer) → [`super::OrigDst`] (the nameserver it asked), written by
    /// sendmsg4 and the egress program; read by the UDP responder.
    pub const DNS_BY_SOCK: &str = "RD_DNSSOCK_V3";
    /// Socket storage ([`super::SockOrig`]): what a socket the hooks
    /// redirected asked for, in which namespace, and (kernel path) which
    /// endpoint it went to, for as long as the socket lives.
    pub const SOCK_ORIG: &str = "RD_SKORIG_V3";
    /// [`super::ServiceKey6`] → [`super::ServiceValue6`]: the IPv6 VIPs to
    /// redirect (connect6).
    pub const SERVICES6: &str = "RD_SVC6_V3";
    /// `u32` index 0 → [`super::Config6`]: the daemon's IPv6 listeners.
    pub const CONFIG6: &str = "RD_CFG6_V3";
    /// Hash of maps, as [`ORIG_BY_SOCK`], for IPv6 clients: a namespace →
    /// [`super::SockAddr6`] → [`super::OrigDst`] (the service's IPv4
    /// VIP:port, the proxy's route key).
    pub const ORIG_BY_SOCK6: &str = "RD_OSOCK6_V3";
    /// Socket storage ([`super::SockOrig6`]) of IPv6 sockets.
    pub const SOCK_ORIG6: &str = "RD_SKORIG6_V3";
    /// Hash of maps, as [`DNS_BY_SOCK`], for IPv6 DNS sockets: a namespace
    /// → [`super::SockAddr6`] → [`super::SockAddr6`] (the nameserver),
    /// written by sendmsg6 and the egress program (UDP) and by sock_ops
    /// (TCP); read by the responder.
    pub const DNS_BY_SOCK6: &str = "RD_DNSSOCK6_V3";
    /// `u32` service id → [`super::SlotTable6`]: where connect6 sends a
    /// connect without the proxy; IPv6 endpoints, and IPv4 ones at their
    /// IPv4-mapped address.
    pub const SLOTS6: &str = "RD_SLOTS6_V3";
    /// Socket storage ([`super::Own`]) on the daemon's own listening
    /// sockets: which namespace they serve. A listener without it on the
    /// proxy or DNS port is someone else's, and the hooks leave that
    /// namespace's traffic alone.
    pub const OWN: &str = "RD_OWN_V3";
    /// netns cookie (`u64`) → `u32` ([`super::NS_REPORTED`],
    /// [`super::NS_SERVED`], [`super::NS_LEFT_ALONE`]): the namespaces the
    /// daemon knows of (LRU: entries of namespaces long gone age out).
    pub const NS_KNOWN: &str = "RD_NSKNOWN_V3";
    /// Ring buffer of [`super::NsEvent`]: a socket made in a namespace the
    /// daemon does not know yet (sock_create), once per namespace.
    pub const NS_EVENTS: &str = "RD_NSEVENT_V3";
    /// [`super::NsId`] → [`super::NsInfo`]: the namespaces the daemon
    /// serves or leaves alone, for `redirector pods`.
    pub const NS_INFO: &str = "RD_NSINFO_V3";
    /// `u32` index 0 → [`super::Life`]: which daemon serves, and whether
    /// the kernel has started killing it.
    pub const LIFE: &str = "RD_LIFE_V3";
}

/// Program names (the Rust function names in `redirector-ebpf`).
pub mod program_names {
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "connect4";
    /// `sock_ops`.
    pub const SOCKOPS: &str = "rd_sockops";
    /// `cgroup/sendmsg4`.
    pub const SENDMSG4: &str = "sendmsg4";
    /// `cgroup/recvmsg4`.
    pub const RECVMSG4: &str = "recvmsg4";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "getpeername4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "connect6";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "getpeername6";
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: &str = "sendmsg6";
    /// `cgroup/recvmsg6`.
    pub const RECVMSG6: &str = "recvmsg6";
    /// `cgroup_skb/egress`.
    pub const EGRESS: &str = "rd_egress";
    /// `cgroup/sock_create`.
    pub const SOCK_CREATE: &str = "rd_sock_create";
    /// `raw_tracepoint/signal_deliver`.
    pub const SIGNAL_DELIVER: &str = "rd_signal_deliver";
}

/// Services (VIP:port pairs) the maps hold; also the largest service id.
pub const MAX_SERVICES: u32 = 4096;
/// Endpoint entries of [`map_names::ENDPOINTS`], over all services.
pub const MAX_ENDPOINTS: u32 = 16384;
/// In-flight redirected connects (between `connect()` and the proxy's
/// `accept()`, or between connect4 and the handshake's end on the kernel
/// path); LRU, so a dead reader cannot fill them.
pub const MAX_INFLIGHT: u32 = 65536;
/// Entries of a [`SlotTable`]: endpoints repeated by weight, so a uniform
/// pick over them is a weighted pick over endpoints.
pub const MAX_SLOTS: usize = 64;
/// Bytes of the [`map_names::OUTCOMES`] ring buffer (a power of two, a
/// multiple of the page size): 16384 outcomes between two reads.
pub const OUTCOME_RING_BYTES: u32 = 256 * 1024;

/// A VIP and port an app may dial.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The VIP, network order.
    pub vip_be: u32,
    /// The port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// [`ServiceValue::flags`]: connects go straight to an endpoint from the
/// service's [`SlotTable`] (`redirector.dev/datapath: kernel`), not through
/// the proxy.
pub const SVC_KERNEL_PATH: u32 = 1;
/// [`ServiceValue::flags`]: when the proxy is not listening, connects may
/// go straight to an endpoint from the slot table. Cleared for services
/// whose proxy originates TLS: plaintext to a TLS endpoint would be wrong,
/// so their connects fail at once (`EPERM`) instead.
pub const SVC_FAIL_OPEN: u32 = 2;

/// What connect4 needs of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// The service's id: its position in the daemon's config plus one.
    pub service_id: u32,
    /// [`SVC_KERNEL_PATH`], [`SVC_FAIL_OPEN`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

/// [`ProxyConfig::flags`]: redirect is on. Cleared, connects proceed to
/// the VIP untouched.
pub const PROXY_ENABLED: u32 = 1;
/// [`ProxyConfig::flags`]: any listener on the proxy address counts as the
/// proxy, not only the daemon's own (`--datapath-only`: another proxy
/// listens there, and nothing is recorded for it).
pub const PROXY_ANY_LISTENER: u32 = 2;

/// Where connect4 sends redirected connects, and how it recognises the
/// proxy's own sockets (`SO_MARK == mark`) so it never redirects them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy listener's address, network order.
    pub proxy_ip_be: u32,
    /// The proxy listener's port, network order.
    pub proxy_port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
    /// `SO_MARK` of the daemon's own sockets, which the programs never redirect.
    pub mark: u32,
    /// [`PROXY_ENABLED`], [`PROXY_ANY_LISTENER`].
    pub flags: u32,
    /// The daemon that owns the maps, for `redirector endpoints`.
    pub daemon_pid: u32,
    /// Padding; zero.
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<ProxyConfig>() == 24);

/// Which daemon serves the node now, and whether it is dying
/// ([`map_names::LIFE`]). The serving daemon writes its pid and its PID
/// namespace (the device and inode of `/proc/self/ns/pid`, as
/// `bpf_get_ns_current_pid_tgid` takes them, so a daemon in a container's
/// own PID namespace is told apart from a host process of the same number)
/// once it serves, with `dying_pid` zero; the signal_deliver program writes
/// `dying_pid` when a thread of that process takes the fatal `SIGKILL` path
/// (kill -9, the OOM killer, or any exit of a multi-threaded process),
/// before the kernel closes its sockets. From then on the hooks treat its
/// listeners as gone, so connects fail open at once instead of queueing on
/// listeners about to be closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    /// The serving daemon's pid in its own PID namespace; zero: none
    /// registered.
    pub serving_pid: u32,
    /// Set to `serving_pid` by the kernel once that daemon is dying.
    pub dying_pid: u32,
    /// The device of the daemon's PID namespace file, in the kernel's
    /// `dev_t` encoding (major << 20 | minor).
    pub pidns_dev: u64,
    /// The inode of the daemon's PID namespace file.
    pub pidns_ino: u64,
}
const _: () = assert!(core::mem::size_of::<Life>() == 24);

impl Life {
    /// Whether the serving daemon is dying: its listeners are about to go.
    pub fn dying(&self) -> bool {
        self.dying_pid != 0 && self.dying_pid == self.serving_pid
    }
}

/// The destination the app asked for before connect4 rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// The address the app dialled (a VIP, or a nameserver), network order.
    pub vip_be: u32,
    /// Its port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<OrigDst>() == 8);

/// The client socket's local address, which the proxy sees as its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// The socket's local address, network order.
    pub ip_be: u32,
    /// Its local port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 8);

/// One endpoint address in a [`SlotTable`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The endpoint's address, network order.
    pub ip_be: u32,
    /// The endpoint's port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 8);

/// The endpoints a service's connects may go to without the proxy: the
/// healthy hosts of the priority that takes traffic, each repeated by its
/// weight. connect4 picks `slots[random % count]`.
///
/// The table names the VIP:port it was computed for, and connect4 uses it
/// only for that VIP:port: service ids are positions in a config, so a
/// table left by a daemon with another config can never send one service's
/// connects to another's endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTable {
    /// The VIP the table is for, network order.
    pub vip_be: u32,
    /// The service port the table is for, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
    /// Used entries of `slots`, 0 to [`MAX_SLOTS`].
    pub count: u32,
    /// The service's `connectTimeout`: how long a kernel-path connect may
    /// go unanswered (`TCP_USER_TIMEOUT` during the handshake); 0 leaves
    /// the kernel's SYN retries (about two minutes).
    pub connect_timeout_ms: u32,
    /// The endpoints; the first `count` are used.
    pub slots: [Slot; MAX_SLOTS],
}
const _: () = assert!(core::mem::size_of::<SlotTable>() == 16 + 8 * MAX_SLOTS);

/// [`ConnectOutcome::kind`]: the handshake completed.
pub const OUTCOME_CONNECTED: u8 = 1;
/// [`ConnectOutcome::kind`]: the socket went from SYN_SENT to CLOSE on an
/// answer from the peer's side (a reset: refused). An app that closes its
/// own socket before an answer is not reported at all.
pub const OUTCOME_FAILED: u8 = 2;
/// [`ConnectOutcome::kind`]: the handshake timed out in the kernel (the
/// service's connect timeout, as `TCP_USER_TIMEOUT`, or SYN retries
/// running out): the retransmission timer said so (`BPF_SOCK_OPS_RTO_CB`
/// with its "expired" argument) just before the socket closed.
pub const OUTCOME_TIMED_OUT: u8 = 3;

/// How a kernel-path connect ended, for outlier detection in the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// The service the connect was for.
    pub service_id: u32,
    /// The endpoint, network order.
    pub ip_be: u32,
    /// The endpoint's port, network order.
    pub port_be: u16,
    /// [`OUTCOME_CONNECTED`], [`OUTCOME_FAILED`] or [`OUTCOME_TIMED_OUT`].
    pub kind: u8,
    /// Padding; zero.
    pub _pad: u8,
    /// SYN retransmissions before the end: 0 for an answer (RST or
    /// SYN-ACK) to the first SYN, more when SYNs went unanswered.
    pub syn_retrans: u32,
}
const _: () = assert!(core::mem::size_of::<ConnectOutcome>() == 16);

/// [`DnsConfig::flags`]: port-53 traffic goes to the responder (while it
/// listens). Cleared, DNS goes where the app sent it.
pub const DNS_ENABLED: u32 = 1;

/// Where the daemon's DNS responder listens (UDP and TCP, same port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The responder's address, network order.
    pub responder_ip_be: u32,
    /// The responder's port (UDP and TCP), network order.
    pub responder_port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
    /// [`DNS_ENABLED`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DnsConfig>() == 12);

/// [`SockOrig::kind`]: a connect to a service VIP:port, sent to the proxy
/// or (kernel path, fail-open) to an endpoint.
pub const ORIG_SERVICE: u8 = 1;
/// [`SockOrig::kind`]: DNS to a nameserver, sent to the DNS responder.
pub const ORIG_DNS: u8 = 2;

/// [`SockOrig::flags`]: the socket went straight to an endpoint of a slot
/// table (kernel path or fail-open); sock_ops reports how its connect
/// ended, for outlier detection.
pub const SOCK_SLOT: u8 = 1;
/// [`SockOrig::flags`]: sock_ops set `TCP_USER_TIMEOUT` for the handshake
/// (the service's connect timeout) and clears it once connected.
pub const SOCK_TIMEOUT_SET: u8 = 2;
/// [`SockOrig::flags`]: the connect's outcome was reported.
pub const SOCK_REPORTED: u8 = 4;
/// [`SockOrig::flags`]: the retransmission timer gave the handshake up
/// (the kernel closes the socket next, with `ETIMEDOUT`).
pub const SOCK_TIMED_OUT: u8 = 8;

/// Per-socket record of a redirect (socket storage, so it lives and dies
/// with the socket, and no other socket can touch it): the address the app
/// asked for and the one the hook put in its place, the namespace of the
/// daemon socket it was sent to, and for a slot connect the service and
/// its connect timeout. getpeername4 and recvmsg4 show the app `orig`
/// where the kernel would show `to`, so the redirect stays invisible;
/// sock_ops re-keys proxy and TCP DNS connects by their source address
/// into the namespace's own map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOrig {
    /// The address the app asked for, network order.
    pub orig_ip_be: u32,
    /// Its port, network order.
    pub orig_port_be: u16,
    /// [`ORIG_SERVICE`] or [`ORIG_DNS`].
    pub kind: u8,
    /// [`SOCK_SLOT`], [`SOCK_TIMEOUT_SET`], [`SOCK_REPORTED`], [`SOCK_TIMED_OUT`].
    pub flags: u8,
    /// Where the hook sent the socket instead, network order.
    pub to_ip_be: u32,
    /// Its port, network order.
    pub to_port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
    /// The namespace whose daemon socket it was sent to (0 for a slot
    /// connect).
    pub ns_id: u64,
    /// A slot connect's service.
    pub service_id: u32,
    /// A slot connect's handshake bound ([`SlotTable::connect_timeout_ms`]).
    pub connect_timeout_ms: u32,
}
const _: () = assert!(core::mem::size_of::<SockOrig>() == 32);

/// A network namespace as the maps know it: its netns cookie (Linux ≥
/// 5.14; else the namespace's inode with the top bit set).
pub type NsId = u64;

/// [`Own::kind`]: a proxy listener (TCP, 127.0.0.1 or `[::1]`).
pub const OWN_PROXY: u32 = 1;
/// [`Own::kind`]: a DNS responder socket (UDP or TCP).
pub const OWN_DNS: u32 = 2;

/// Socket storage the daemon writes on each of its listening sockets: the
/// hooks send a namespace's traffic to a socket on the proxy or DNS port
/// only if it carries this, and record its namespace with what they send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own {
    /// The namespace the socket serves.
    pub ns_id: NsId,
    /// [`OWN_PROXY`] or [`OWN_DNS`].
    pub kind: u32,
    /// Padding; zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Own>() == 16);

/// [`map_names::NS_KNOWN`]: sock_create reported the namespace.
pub const NS_REPORTED: u32 = 1;
/// [`map_names::NS_KNOWN`]: the daemon serves the namespace.
pub const NS_SERVED: u32 = 2;
/// [`map_names::NS_KNOWN`]: the namespace's own app holds the proxy or DNS
/// port, and the hooks leave its traffic alone.
pub const NS_LEFT_ALONE: u32 = 3;

/// A socket made in a namespace the daemon does not know yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsEvent {
    /// The namespace's netns cookie.
    pub netns_cookie: u64,
    /// The process that made the socket (its thread group id).
    pub pid: u32,
    /// Padding; zero.
    pub _pad: u32,
    /// Its cgroup (v2) id.
    pub cgroup_id: u64,
}
const _: () = assert!(core::mem::size_of::<NsEvent>() == 24);

/// [`NsInfo::state`]: the daemon's listeners are up in the namespace.
pub const NSI_SERVED: u8 = 1;
/// [`NsInfo::state`]: the namespace's own app holds the proxy or DNS port.
pub const NSI_LEFT_ALONE: u8 = 2;
/// [`NsInfo::state`]: the daemon could not serve it (see `detail`).
pub const NSI_FAILED: u8 = 3;
/// [`NsInfo::source`]: the node's own namespace (the daemon's).
pub const NSI_HOST: u8 = 1;
/// [`NsInfo::source`]: told by the CNI plugin.
pub const NSI_CNI: u8 = 2;
/// [`NsInfo::source`]: found by the daemon (a process in the cgroup).
pub const NSI_FOUND: u8 = 3;
/// [`NsInfo::listeners`]: the proxy on 127.0.0.1.
pub const NSI_PROXY4: u8 = 1;
/// [`NsInfo::listeners`]: the proxy on `[::1]`.
pub const NSI_PROXY6: u8 = 2;
/// [`NsInfo::listeners`]: the DNS responder on 127.0.0.1.
pub const NSI_DNS4: u8 = 4;
/// [`NsInfo::listeners`]: the DNS responder on `[::1]`.
pub const NSI_DNS6: u8 = 8;
/// Bytes of [`NsInfo::pod_namespace`].
pub const POD_NAMESPACE_LEN: usize = 64;
/// Bytes of [`NsInfo::pod_name`].
pub const POD_NAME_LEN: usize = 128;
/// Bytes of [`NsInfo::detail`].
pub const NS_DETAIL_LEN: usize = 128;

/// A namespace the daemon serves or leaves alone, for `redirector pods`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NsInfo {
    /// `NSI_SERVED`, `NSI_LEFT_ALONE` or `NSI_FAILED`.
    pub state: u8,
    /// `NSI_HOST`, `NSI_CNI` or `NSI_FOUND`.
    pub source: u8,
    /// `NSI_PROXY4` | `NSI_PROXY6` | `NSI_DNS4` | `NSI_DNS6`: what listens.
    pub listeners: u8,
    /// Padding; zero.
    pub _pad: u8,
    /// App connections the proxy holds from the namespace (updated about
    /// once a second).
    pub open_connections: u32,
    /// How long serving it took (µs), from being told or finding it.
    pub setup_us: u32,
    /// A process in the namespace when it was found (0 if told by CNI).
    pub pid: u32,
    /// When the daemon began serving it (unix ms).
    pub since_unix_ms: u64,
    /// The pod's namespace (from the CNI plugin), NUL-padded.
    pub pod_namespace: [u8; POD_NAMESPACE_LEN],
    /// The pod's name (from the CNI plugin), NUL-padded.
    pub pod_name: [u8; POD_NAME_LEN],
    /// Why it is left alone or not served, NUL-padded.
    pub detail: [u8; NS_DETAIL_LEN],
}
const _: () = assert!(
    core::mem::size_of::<NsInfo>() == 24 + POD_NAMESPACE_LEN + POD_NAME_LEN + NS_DETAIL_LEN
);

/// Namespaces the daemon serves at most (the outer maps' size).
pub const MAX_NAMESPACES: u32 = 1024;
/// Entries of each namespace's own maps: connects and DNS sockets in
/// flight in one namespace.
pub const NS_INFLIGHT: u32 = 1024;
/// Bytes of the [`map_names::NS_EVENTS`] ring buffer.
pub const NS_EVENT_RING_BYTES: u32 = 16 * 1024;

/// An IPv6 VIP and port an app may dial (connect6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey6 {
    /// The address's 16 bytes in network order, as `bpf_sock_addr.user_ip6`.
    pub vip6_be: [u32; 4],
    /// The port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);

/// A service as connect6 sees it. Every service has an IPv4 VIP too, and
/// the proxy's routes and the slot tables are keyed by it: connect6 records
/// `vip4_be` and the port as the original destination, and uses the
/// IPv4 slot table (endpoints as IPv4-mapped addresses) on the kernel path
/// and to fail open.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue6 {
    /// As [`ServiceValue::service_id`].
    pub service_id: u32,
    /// As [`ServiceValue::flags`].
    pub flags: u32,
    /// The service's IPv4 VIP, network order: the proxy's route key.
    pub vip4_be: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue6>() == 12);

/// The daemon's IPv6 listeners (ports as in [`ProxyConfig`] and
/// [`DnsConfig`]). All zero: nothing listens on IPv6, connect6 fails open.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config6 {
    /// The proxy's IPv6 listener (`[::1]`) as `user_ip6` words.
    pub proxy_ip6_be: [u32; 4],
    /// The DNS responder's IPv6 address as `user_ip6` words.
    pub responder_ip6_be: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Config6>() == 32);

/// An IPv6 socket address: a client socket as the proxy sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAddr6 {
    /// The address as `user_ip6` words.
    pub ip6_be: [u32; 4],
    /// The port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockAddr6>() == 20);

/// [`SockOrig`] for IPv6 sockets. `to` may be an IPv4-mapped address
/// (kernel path and fail-open to IPv4 endpoints).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOrig6 {
    /// The address the app asked for, as `user_ip6` words.
    pub orig_ip6_be: [u32; 4],
    /// Where the hook sent the socket instead.
    pub to_ip6_be: [u32; 4],
    /// The port the app asked for, network order.
    pub orig_port_be: u16,
    /// The port it was sent to, network order.
    pub to_port_be: u16,
    /// [`ORIG_SERVICE`] or [`ORIG_DNS`].
    pub kind: u8,
    /// As [`SockOrig::flags`].
    pub flags: u8,
    // Scalars, not arrays: zeroing an array compiles to a byte loop whose
    // pointer arithmetic the verifier refuses without CAP_PERFMON.
    /// Padding; zero.
    pub _pad: u16,
    /// As [`SockOrig::ns_id`].
    pub ns_id: NsId,
    /// A service connect's IPv4 VIP, network order: the proxy's route key
    /// (the app dialled the IPv6 VIP, or the IPv4 one at its mapped
    /// address).
    pub route_vip_be: u32,
    /// A slot connect's service.
    pub service_id: u32,
    /// A slot connect's handshake bound.
    pub connect_timeout_ms: u32,
    /// Padding; zero.
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<SockOrig6>() == 64);

/// One endpoint address in a [`SlotTable6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot6 {
    /// The endpoint's address as `user_ip6` words.
    pub ip6_be: [u32; 4],
    /// The endpoint's port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Slot6>() == 20);

/// [`SlotTable`] for connect6: the same proportions over every endpoint,
/// IPv6 ones as they are and IPv4 ones at their IPv4-mapped address. It
/// names the service's IPv4 VIP:port ([`ServiceValue6::vip4_be`]), which
/// connect6 checks as connect4 checks its table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTable6 {
    /// The IPv4 VIP of the service the table is for, network order.
    pub vip_be: u32,
    /// The service port, network order.
    pub port_be: u16,
    /// Padding; zero.
    pub _pad: u16,
    /// Used entries of `slots`.
    pub count: u32,
    /// As [`SlotTable::connect_timeout_ms`].
    pub connect_timeout_ms: u32,
    /// The endpoints; the first `count` are used.
    pub slots: [Slot6; MAX_SLOTS],
}
const _: () = assert!(core::mem::size_of::<SlotTable6>() == 16 + 20 * MAX_SLOTS);

/// [`ConnectOutcome`] of a kernel-path connect of an IPv6 socket. Shares the outcome ring; the
/// reader tells the two apart by size (16 and 28 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOutcome6 {
    /// The service the connect was for.
    pub service_id: u32,
    /// The endpoint, as `user_ip6` words.
    pub ip6_be: [u32; 4],
    /// The endpoint's port, network order.
    pub port_be: u16,
    /// [`OUTCOME_CONNECTED`], [`OUTCOME_FAILED`] or [`OUTCOME_TIMED_OUT`].
    pub kind: u8,
    /// Padding; zero.
    pub _pad: u8,
    /// As [`ConnectOutcome::syn_retrans`].
    pub syn_retrans: u32,
}
const _: () = assert!(core::mem::size_of::<ConnectOutcome6>() == 28);

/// The IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) of `ip_be`, as
/// `user_ip6` words: how connect6 sends a dual-stack socket to an IPv4
/// endpoint.
pub const fn v4_mapped(ip_be: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip_be]
}

/// [`ServiceInfo::protocol`]: TCP.
pub const PROTO_TCP: u8 = 1;
/// [`ServiceInfo::protocol`]: HTTP.
pub const PROTO_HTTP: u8 = 2;
/// [`ServiceInfo::protocol`]: HTTPS (passed through).
pub const PROTO_HTTPS: u8 = 3;
/// [`ServiceInfo::protocol`]: TLS (passed through).
pub const PROTO_TLS: u8 = 4;

/// [`ServiceInfo::flags`]: the VIP was allocated, not given in `addresses`.
pub const SVC_VIP_AUTO: u8 = 1;
/// [`ServiceInfo::flags`]: the proxy originates TLS to the endpoints.
pub const SVC_TLS_ORIGINATION: u8 = 2;
/// [`ServiceInfo::flags`]: the service uses the kernel fast path.
pub const SVC_INFO_KERNEL_PATH: u8 = 4;
/// [`ServiceInfo::flags`], with [`SVC_TLS_ORIGINATION`]: mutual TLS (the
/// proxy presents a client certificate).
pub const SVC_TLS_MUTUAL: u8 = 8;

/// Bytes of a host name field ([`ServiceInfo::host`], [`EndpointHealth::hostname`]).
pub const HOST_LEN: usize = 256;

/// Display data of a service, so `redirector endpoints` needs only the maps.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ServiceInfo {
    /// The VIP, network order.
    pub vip_be: u32,
    /// The port, network order.
    pub port_be: u16,
    /// `PROTO_*`.
    pub protocol: u8,
    /// `SVC_VIP_AUTO`, `SVC_TLS_ORIGINATION`, `SVC_INFO_KERNEL_PATH`, `SVC_TLS_MUTUAL`.
    pub flags: u8,
    /// Endpoints the ServiceEntry lists.
    pub endpoint_count: u32,
    /// Padding; zero.
    pub _pad: u32,
    /// NUL-padded UTF-8.
    pub host: [u8; HOST_LEN],
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 16 + HOST_LEN);

/// One endpoint entry of a service in [`map_names::ENDPOINTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// The service.
    pub service_id: u32,
    /// The entry's position, 0 to the service's entry count.
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 8);

/// [`EndpointHealth::status`] values.
pub const EP_HEALTHY: u8 = 0;
/// [`EndpointHealth::status`]: ejected by outlier detection.
pub const EP_EJECTED: u8 = 1;
/// A DNS endpoint whose name has not resolved (yet): no address to use.
pub const EP_UNRESOLVED: u8 = 2;

/// Bytes of [`EndpointHealth::locality`].
pub const LOCALITY_LEN: usize = 128;
/// Bytes of [`EndpointHealth::last_error`].
pub const LAST_ERROR_LEN: usize = 192;

/// One endpoint (one resolved address of a ServiceEntry endpoint) and its
/// outlier-detection state, published by the proxy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EndpointHealth {
    /// The IPv4 address, network order; 0 for an IPv6 host or a name not resolved.
    pub addr_be: u32,
    /// The port, network order.
    pub port_be: u16,
    /// Its locality priority (0 is the best).
    pub priority: u8,
    /// `EP_HEALTHY`, `EP_EJECTED` or `EP_UNRESOLVED`.
    pub status: u8,
    /// Total ejections since the daemon started.
    pub ejections: u32,
    /// Current ejection-time multiplier (Envoy's backoff).
    pub multiplier: u32,
    /// Consecutive 5xx (or local-origin failures) so far.
    pub consecutive_5xx: u32,
    /// The ServiceEntry endpoint's `weight`.
    pub weight: u32,
    /// DNS endpoints: refreshes that failed or came back empty (the last
    /// good answer was kept) since the daemon started.
    pub dns_failures: u32,
    /// Padding; zero.
    pub _pad: u32,
    /// When the name last resolved; 0 for IP endpoints and never.
    pub dns_answer_unix_ms: u64,
    /// 0 when not ejected. Un-ejection happens on the first interval tick
    /// at or after this time.
    pub ejected_until_unix_ms: u64,
    /// When `last_error` happened (unix ms); 0 for never.
    pub last_error_unix_ms: u64,
    /// `region/zone/subzone`, NUL-padded.
    pub locality: [u8; LOCALITY_LEN],
    /// The endpoint's address as configured (hostname or IP), NUL-padded.
    pub hostname: [u8; HOST_LEN],
    /// The last failure, NUL-padded.
    pub last_error: [u8; LAST_ERROR_LEN],
}
const _: () = assert!(
    core::mem::size_of::<EndpointHealth>() == 56 + LOCALITY_LEN + HOST_LEN + LAST_ERROR_LEN
);

/// Copies `s` into a NUL-padded field, truncating on a char boundary.
pub fn write_str(dst: &mut [u8], s: &str) {
    let mut n = s.len().min(dst.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n..].fill(0);
}

/// Reads a NUL-padded field written by [`write_str`].
pub fn read_str(src: &[u8]) -> &str {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    core::str::from_utf8(&src[..end]).unwrap_or("<invalid utf-8>")
}

#[cfg(feature = "user")]
pub mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_fields_round_trip_and_truncate_on_char_boundary() {
        let mut buf = [0xffu8; 8];
        write_str(&mut buf, "us-east1");
        assert_eq!(read_str(&buf), "us-east1");
        write_str(&mut buf, "ab");
        assert_eq!(read_str(&buf), "ab");
        assert!(buf[2..].iter().all(|&b| b == 0));
        // "é" is two bytes; a cut through it must back off.
        write_str(&mut buf, "abcdefgé");
        assert_eq!(read_str(&buf), "abcdefg");
    }

    #[test]
    fn v4_mapped_is_the_rfc4291_layout() {
        let ip = core::net::Ipv4Addr::new(10, 1, 2, 3);
        let words = v4_mapped(u32::from(ip).to_be());
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes.chunks_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(core::net::Ipv6Addr::from(bytes), ip.to_ipv6_mapped());
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in [
            map_names::SERVICES,
            map_names::PROXY_CONFIG,
            map_names::ORIG_BY_SOCK,
            map_names::SERVICE_INFO,
            map_names::ENDPOINTS,
            map_names::SLOTS,
            map_names::OUTCOMES,
            map_names::DNS_CONFIG,
            map_names::DNS_BY_SOCK,
            map_names::SOCK_ORIG,
            map_names::SERVICES6,
            map_names::CONFIG6,
            map_names::ORIG_BY_SOCK6,
            map_names::SOCK_ORIG6,
            map_names::DNS_BY_SOCK6,
            map_names::SLOTS6,
            map_names::OWN,
            map_names::NS_KNOWN,
            map_names::NS_EVENTS,
            map_names::NS_INFO,
            map_names::LIFE,
        ] {
            assert!(name.len() <= 15, "{name} exceeds BPF_OBJ_NAME_LEN");
            let suffix = format!("_V{ABI_VERSION}");
            assert!(name.ends_with(&suffix), "{name} must carry ABI_VERSION");
        }
    }
}
