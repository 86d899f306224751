//! The daemon's listening sockets: bound afresh, or adopted from a
//! predecessor that handed them over (`handover.rs`), and kept (as
//! duplicates) for a successor.
//!
//! A [`ListenerSet`] is what the kernel's rewrite to loopback lands on in
//! one network namespace: the proxy on 127.0.0.1 and `[::1]`, and the DNS
//! responder (UDP and TCP) on both. The admin server is the node's, apart.

use std::{
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

use crate::{
    admin,
    datapath::Datapath,
    dns,
    handover::{self, Handed, Kind, Listening},
    proxy::{self, route::Routes},
    state::{Node, Services},
};

/// The proxy listeners and DNS responders of one network namespace.
pub(super) struct ListenerSet {
    proxy: TcpListener,
    /// `None` on a node without IPv6.
    proxy6: Option<TcpListener>,
    /// `None` when DNS capture is off.
    dns: Option<dns::serve::Responder>,
    /// `None` when DNS capture is off or the node has no IPv6.
    dns6: Option<dns::serve::Responder>,
}

/// What keeps serving until the daemon stops or hands over: the accept
/// loops, the connections they started, the sockets a successor would
/// get, and where successors ask.
pub(super) struct Serving {
    pub(super) accept: Vec<AbortOnDropHandle<()>>,
    pub(super) drain: proxy::Drain,
    pub(super) listening: Listening,
    pub(super) successors: handover::Server,
}

impl ListenerSet {
    /// The node's listeners: those a predecessor handed over where it did,
    /// the rest bound now.
    pub(super) async fn bind_or_adopt(
        node: &Node,
        handed: &mut Option<Handed>,
    ) -> anyhow::Result<Self> {
        let listen6: SocketAddr =
            SocketAddrV6::new(Ipv6Addr::LOCALHOST, node.listen.port(), 0, 0).into();
        let proxy = match handed_socket(handed, Kind::Proxy, node.listen.into())? {
            Some(fd) => adopt_listener(fd)?,
            None => proxy::bind(node.listen.into()).await?,
        };
        let proxy6 = match handed_socket(handed, Kind::Proxy, listen6)? {
            Some(fd) => Some(adopt_listener(fd)?),
            None => proxy::bind_optional(listen6).await?,
        };
        // Likewise the DNS responder: bound, programs send DNS to it.
        let dns = match node.dns {
            Some(addr) => adopt_or_bind_responder(handed, addr.into()).await?,
            None => None,
        };
        let dns6 = match node.dns {
            Some(addr) if proxy6.is_some() => {
                adopt_or_bind_responder(
                    handed,
                    SocketAddrV6::new(Ipv6Addr::LOCALHOST, addr.port(), 0, 0).into(),
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
        })
    }

    /// Duplicates of the sockets, for a successor.
    pub(super) fn keep_for_handover(&self, listening: &mut Listening) -> anyhow::Result<()> {
        for l in std::iter::once(&self.proxy).chain(&self.proxy6) {
            listening
                .add(Kind::Proxy, l.as_fd())
                .context("keeping the proxy listener for a handover")?;
        }
        for r in self.dns.iter().chain(&self.dns6) {
            let (udp, tcp) = r.fds();
            listening
                .add(Kind::DnsUdp, udp)
                .and_then(|()| listening.add(Kind::DnsTcp, tcp))
                .context("keeping the DNS responder for a handover")?;
        }
        Ok(())
    }

    /// Starts serving: the proxy's accept loops (connections run on
    /// `drain`'s tracker), and the DNS responders, which answer from the
    /// live service table.
    pub(super) fn serve(
        self,
        datapath: &Arc<Datapath>,
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
                    datapath.clone(),
                    routes.clone(),
                    drain.clone(),
                )))
            })
            .collect();
        let mut responders = Vec::new();
        if let Some(dns) = self.dns {
            let hosts = Arc::new(dns::HostTable::new(services.clone(), ipv6));
            for responder in self.dns6.into_iter().chain([dns]) {
                responders.push(AbortOnDropHandle::new(tokio::spawn(dns::serve::serve(
                    responder,
                    datapath.clone(),
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
        match handed_socket(handed, Kind::Admin, addr.into())? {
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

/// A socket of `kind` on `addr` a predecessor handed over, checked.
fn handed_socket(
    handed: &mut Option<Handed>,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<Option<OwnedFd>> {
    let Some(fd) = handed.as_mut().and_then(|h| h.take(kind, addr)) else {
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
    addr: SocketAddr,
) -> anyhow::Result<Option<dns::serve::Responder>> {
    let udp = handed_socket(handed, Kind::DnsUdp, addr)?;
    let tcp = handed_socket(handed, Kind::DnsTcp, addr)?;
    // Half a responder is none: it closes here, and both are bound afresh.
    if let (Some(udp), Some(tcp)) = (udp, tcp) {
        return Ok(Some(
            dns::serve::Responder::adopt(udp.into(), tcp.into())
                .context("adopting the handed-over DNS responder")?,
        ));
    }
    Ok(match addr {
        SocketAddr::V4(a) => Some(dns::serve::bind(a).await?),
        SocketAddr::V6(a) => dns::serve::bind6(a).await?,
    })
}
