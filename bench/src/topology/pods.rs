//! The bench namespace as a Kubernetes node with pods, made by the test
//! bed's [`PodNetwork`] (the real CNI plugins: bridge `cni0` with the pod
//! subnet 10.244.0.0/24, host-local, loopback, then the redirector's own
//! plugin when chained). The node's cgroup is the redirector's, so its
//! daemon serves every pod made here from inside the pod; east and west
//! route the pod subnet back through the bench namespace, whose DNS server
//! also answers as cluster DNS. The pod row's client runs in one of them.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use redirector_tests::pod::{PodNetwork, PodNetworkOptions};

use super::{Bed, EAST_NODE_IP, Kind, System, WEST_NODE_IP};
use crate::model::SystemId;

impl System {
    /// Where the redirector's daemon listens for its CNI plugin.
    pub(crate) fn cni_socket(&self) -> Result<&Path> {
        match &self.kind {
            Kind::Redirector {
                cni_socket: Some(path),
                ..
            } => Ok(path),
            _ => bail!("{} has no CNI plugin socket", self.id),
        }
    }
}

/// The pod the pod row's load generator runs in.
const CLIENT_POD: &str = "bench-client";

impl Bed {
    /// Pods on the bench namespace, served by `redirector` (whose cgroup
    /// becomes the node's); none made yet.
    pub(super) fn pod_network(&self, redirector: &System) -> Result<PodNetwork> {
        let cgroup = redirector
            .cgroup
            .as_ref()
            .context("the redirector has a cgroup")?;
        let network =
            PodNetwork::new(&self.bench, cgroup, &self.dns, PodNetworkOptions::default())?;
        for (ns, via) in [(&self.east, EAST_NODE_IP), (&self.west, WEST_NODE_IP)] {
            network
                .route_back(ns, via)
                .with_context(|| format!("routing the pods back from {}", ns.name()))?;
        }
        Ok(network)
    }

    /// The pods' network, which exists with the redirector.
    pub(crate) fn pod_network_or_fail(&self) -> Result<&PodNetwork> {
        self.pods
            .as_ref()
            .context("pods need the redirector (its daemon serves them): add it to --systems")
    }

    /// Starts the pod row: a pod made with the redirector's CNI plugin in
    /// the chain (so it is served when its ADD returns), measured through
    /// the redirector's daemon; placed right after the redirector, so the
    /// two clients of one daemon run back to back in every repetition.
    pub(crate) fn start_pod_client(&mut self) -> Result<()> {
        let network = self.pod_network_or_fail()?.clone();
        let at = self
            .systems
            .iter()
            .position(|s| s.id == SystemId::Redirector)
            .context("the pod row needs the redirector: add it to --systems")?;
        let redirector = &self.systems[at];
        let Kind::Redirector { daemon, .. } = &redirector.kind else {
            bail!("the redirector runs no daemon of its own");
        };
        let daemon = Arc::clone(daemon);
        network.unchain();
        network.chain_redirector(redirector.cni_socket()?)?;
        let pod = network.pod(CLIENT_POD)?;
        self.systems.insert(
            at + 1,
            System {
                id: SystemId::RedirectorPod,
                cgroup: None,
                kind: Kind::InPod { pod, daemon },
            },
        );
        Ok(())
    }
}
