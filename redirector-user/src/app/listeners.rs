//! The daemon's listening sockets: bound afresh, or adopted from a
//! predecessor that handed them over (`handover.rs`), and kept (as
//! duplicates) for a successor.
//!
//! A [`ListenerSet`] is what the kernel's rewrite to loopback lands on in
//! one network namespace: the proxy on 127.0.0.1 and `[::1]`, and the DNS
//! responder (UDP and TCP) on both. The daemon has one in its own
//! namespace and one in each pod's (`pods.rs`); each of its sockets is
//! marked as the daemon's, serving that namespace (`datapath::own`), or
//! the kernel does not send it anything. The admin server and the CNI
//! plugin's socket are the node's, apart.

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use anyhow::Context as _;
use redirector_common::{NSI_DNS4, NSI_DNS6, NSI_PROXY4, NSI_PROXY6, NsId, OWN_DNS, OWN_PROXY};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

use crate::{
    admin,
    datapath::{BpfError, Datapath},
    dns,
    handover::{self, Handed, Kind, Listening},
    netns::{Mark, Namespace, Sockets},
    proxy::{self, route::Routes},
    state::{Node, Services},
};

/// The proxy listeners and DNS responders of one network namespace.
pub(super) struct ListenerSet {
    proxy: TcpListener,
    /// `None` without IPv6 in the namespace.
    proxy6: Option<TcpListener>,
    /// `None` when DNS capture is off.
    dns: Option<dns::serve::Responder>,
    /// `None` when DNS capture is off or the namespace has no IPv6.
    dns6: Option<dns::serve::Responder>,
    /// The app connections the proxy listeners serve at once: this
    /// namespace's count and the daemon's.
    caps: proxy::Caps,
}

/// Why a namespace's set could not be bound.
#[derive(Debug, thiserror::Error)]
pub(super) enum BindError {
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    #[error(transparent)]
    Dns(#[from] dns::serve::DnsError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl BindError {
    /// The port someone else already holds there, if that is the reason.
    pub(super) fn port_taken(&self) -> Option<SocketAddr> {
        match self {
            BindError::Proxy(proxy::ProxyError::PortInUse { addr })
            | BindError::Dns(dns::serve::DnsError::PortInUse { addr }) => Some(*addr),
            _ => None,
        }
    }
}

impl ListenerSet {
    /// The set of one namespace (`ns`: none for the daemon's own): the
    /// sockets a predecessor handed over where it did, the rest bound now
    /// with sockets from `sockets` (made in that namespace), each marked
    /// as the daemon's, serving `id`, before it is bound (see
    /// [`crate::netns::Mark`]). The namespace's maps must be in the kernel
    /// already: from the mark on, the kernel records what it sends here
    /// in them.
    pub(super) async fn bind_or_adopt(
        node: &Node,
        handed: &mut Option<Handed>,
        (ns, id): (Option<NsId>, NsId),
        sockets: &Sockets,
        datapath: &Datapath,
    ) -> Result<Self, BindError> {
        let own = |kind: u32| {
            move |fd: BorrowedFd<'_>| {
                datapath
                    .own(&fd.as_raw_fd(), id, kind)
                    .map_err(std::io::Error::other)
            }
        };
        let (mark_proxy, mark_dns) = (own(OWN_PROXY), own(OWN_DNS));
        let listen6: SocketAddr =
            SocketAddrV6::new(Ipv6Addr::LOCALHOST, node.listen.port(), 0, 0).into();
        let proxy = match handed_socket(handed, ns, Kind::Proxy, node.listen.into())? {
            Some(fd) => adopt_listener(fd)?,
            None => proxy::bind(node.listen.into(), sockets, &mark_proxy).await?,
        };
        let proxy6 = match handed_socket(handed, ns, Kind::Proxy, listen6)? {
            Some(fd) => Some(adopt_listener(fd)?),
            None => proxy::bind_optional(listen6, sockets, &mark_proxy).await?,
        };
        // Likewise the DNS responder: bound, programs send DNS to it.
        let dns = match node.dns {
            Some(addr) => {
                adopt_or_bind_responder(handed, ns, addr.into(), sockets, &mark_dns).await?
            }
            None => None,
        };
        let dns6 = match node.dns {
            Some(addr) if proxy6.is_some() => {
                adopt_or_bind_responder(
                    handed,
                    ns,
                    SocketAddrV6::new(Ipv6Addr::LOCALHOST, addr.port(), 0, 0).into(),
                    sockets,
                    &mark_dns,
                )
                .await?
            }
            _ => None,
        };
        Ok(Self {
            proxy,
            proxy6,
            dns,
            dns6,
            caps: proxy::Caps::new(&node.limits),
        })
    }

    /// What listens, as `NsInfo::listeners` says it.
    pub(super) fn bits(&self) -> u8 {
        NSI_PROXY4
            | if self.proxy6.is_some() { NSI_PROXY6 } else { 0 }
            | if self.dns.is_some() { NSI_DNS4 } else { 0 }
            | if self.dns6.is_some() { NSI_DNS6 } else { 0 }
    }

    /// Marks every socket as the daemon's, serving namespace `ns`: from
    /// now on the kernel sends that namespace's connects and DNS here.
    /// Those bound here are marked already; this is for sockets a
    /// predecessor handed over (its marks are in its own map when it ran
    /// another ABI).
    pub(super) fn own(&self, datapath: &Datapath, ns: NsId) -> Result<(), BpfError> {
        for l in std::iter::once(&self.proxy).chain(&self.proxy6) {
            datapath.own(&l.as_raw_fd(), ns, OWN_PROXY)?;
        }
        for r in self.dns.iter().chain(&self.dns6) {
            let (udp, tcp) = r.fds();
            datapath.own(&udp.as_raw_fd(), ns, OWN_DNS)?;
            datapath.own(&tcp.as_raw_fd(), ns, OWN_DNS)?;
        }
        Ok(())
    }

    /// Duplicates of the sockets, for a successor (`ns`: none for the
    /// daemon's own namespace).
    pub(super) fn keep_for_handover(
        &self,
        ns: Option<NsId>,
        listening: &mut Listening,
    ) -> anyhow::Result<()> {
        for l in std::iter::once(&self.proxy).chain(&self.proxy6) {
            listening
                .add_in(ns, Kind::Proxy, l.as_fd())
                .context("keeping the proxy listener for a handover")?;
        }
        for r in self.dns.iter().chain(&self.dns6) {
            let (udp, tcp) = r.fds();
            listening
                .add_in(ns, Kind::DnsUdp, udp)
                .and_then(|()| listening.add_in(ns, Kind::DnsTcp, tcp))
                .context("keeping the DNS responder for a handover")?;
        }
        Ok(())
    }

    /// Starts serving namespace `ns`: the proxy's accept loops
    /// (connections run on `drain`'s tracker), and the DNS responders,
    /// which answer from the live service table.
    pub(super) fn serve(
        self,
        ns: &Arc<Namespace>,
        routes: &Routes,
        services: &Services,
        drain: &proxy::Drain,
    ) -> (Vec<AbortOnDropHandle<()>>, Vec<AbortOnDropHandle<()>>) {
        let ipv6 = self.proxy6.is_some();
        let accept = std::iter::once(self.proxy)
            .chain(self.proxy6)
            .map(|listener| {
                AbortOnDropHandle::new(tokio::spawn(proxy::serve(
                    listener,
                    ns.clone(),
                    routes.clone(),
                    drain.clone(),
                    self.caps.clone(),
                )))
            })
            .collect();
        let mut responders = Vec::new();
        if let Some(dns) = self.dns {
            let hosts = Arc::new(dns::HostTable::new(services.clone(), ipv6));
            for responder in self.dns6.into_iter().chain([dns]) {
                responders.push(AbortOnDropHandle::new(tokio::spawn(dns::serve::serve(
                    responder,
                    ns.clone(),
                    hosts.clone(),
                ))));
            }
        }
        (accept, responders)
    }
}

/// The admin listener: handed over, or bound now; `None` when off.
pub(super) async fn admin(
    node: &Node,
    handed: &mut Option<Handed>,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = node.admin else {
        return Ok(None);
    };
    Ok(Some(
        match handed_socket(handed, None, Kind::Admin, addr.into())? {
            Some(fd) => adopt_listener(fd)?,
            None => admin::bind(addr.into()).await?,
        },
    ))
}

/// A duplicate of the admin listener, for a successor.
pub(super) fn keep_admin_for_handover(
    listener: &TcpListener,
    listening: &mut Listening,
) -> anyhow::Result<()> {
    listening
        .add(Kind::Admin, listener.as_fd())
        .context("keeping the admin listener for a handover")
}

/// A socket of `kind` on `addr` serving `ns` a predecessor handed over,
/// checked.
fn handed_socket(
    handed: &mut Option<Handed>,
    ns: Option<NsId>,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<Option<OwnedFd>> {
    let Some(fd) = handed.as_mut().and_then(|h| h.take_in(ns, kind, addr)) else {
        return Ok(None);
    };
    handover::check(kind, &fd, addr)
        .with_context(|| format!("adopting the handed-over {kind:?} socket on {addr}"))?;
    Ok(Some(fd))
}

fn adopt_listener(fd: OwnedFd) -> anyhow::Result<TcpListener> {
    TcpListener::from_std(std::net::TcpListener::from(fd))
        .context("adopting the handed-over proxy listener")
}

/// The DNS responder on `addr`: the predecessor's two sockets if it handed
/// both over, else bound afresh (on `[::1]` only if the node has IPv6).
async fn adopt_or_bind_responder(
    handed: &mut Option<Handed>,
    ns: Option<NsId>,
    addr: SocketAddr,
    sockets: &Sockets,
    mark: Mark<'_>,
) -> Result<Option<dns::serve::Responder>, BindError> {
    let udp = handed_socket(handed, ns, Kind::DnsUdp, addr)?;
    let tcp = handed_socket(handed, ns, Kind::DnsTcp, addr)?;
    // Half a responder is none: it closes here, and both are bound afresh.
    if let (Some(udp), Some(tcp)) = (udp, tcp) {
        return Ok(Some(
            dns::serve::Responder::adopt(udp.into(), tcp.into())
                .context("adopting the handed-over DNS responder")?,
        ));
    }
    Ok(match addr {
        SocketAddr::V4(a) => Some(dns::serve::bind(a, sockets, mark).await?),
        SocketAddr::V6(a) => dns::serve::bind6(a, sockets, mark).await?,
    })
}
