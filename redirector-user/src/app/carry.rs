//! Outlier state across a handover: the predecessor puts its endpoints'
//! ejections and multipliers in its offer (`handover.rs`), the successor
//! takes them for the same hosts, so an endpoint ejected before an
//! upgrade is not sent traffic again because of it.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{cluster::CarriedHost, state::ServiceTable};

/// Hosts carried at most: more than any config has with outlier state
/// (a node's services have at most `MAX_ENDPOINTS` hosts in the kernel);
/// the rest is dropped, so a predecessor cannot make the offer huge.
pub(super) const MAX_CARRIED_HOSTS: usize = redirector_common::MAX_ENDPOINTS as usize;

#[derive(Debug, Serialize, Deserialize)]
struct CarriedCluster {
    /// `outbound|<port>||<host>`.
    cluster: String,
    hosts: Vec<CarriedHost>,
}

/// The state of every cluster in `services` worth carrying, at most
/// [`MAX_CARRIED_HOSTS`] hosts.
pub(super) fn export(services: &ServiceTable) -> serde_json::Value {
    let now = Instant::now();
    let mut left = MAX_CARRIED_HOSTS;
    let mut clusters: Vec<CarriedCluster> = Vec::new();
    for cluster in services.values() {
        if left == 0 {
            break;
        }
        let mut hosts = cluster.export_outliers(now);
        hosts.truncate(left);
        left -= hosts.len();
        if !hosts.is_empty() {
            clusters.push(CarriedCluster {
                cluster: cluster.name.clone(),
                hosts,
            });
        }
    }
    serde_json::to_value(clusters).unwrap_or_default()
}

/// Takes what a predecessor carried (`value`, from its offer) into the
/// clusters of `services` of the same name; hosts and clusters this daemon
/// does not have are ignored, and so is anything that does not parse (with
/// a warning). How many hosts took state.
pub(super) fn import(services: &ServiceTable, value: &serde_json::Value) -> usize {
    if value.is_null() {
        return 0;
    }
    let clusters: Vec<CarriedCluster> = match serde_json::from_value(value.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!("ignoring the outlier state the previous daemon handed over: {e}");
            return 0;
        }
    };
    let now = Instant::now();
    let mut left = MAX_CARRIED_HOSTS;
    let mut taken = 0;
    for carried in clusters {
        if left == 0 {
            break;
        }
        let hosts = &carried.hosts[..carried.hosts.len().min(left)];
        left -= hosts.len();
        // A service serves several VIPs' ports; each cluster once.
        if let Some(cluster) = services.values().find(|c| c.name == carried.cluster) {
            taken += cluster.import_outliers(hosts, now);
        }
    }
    if taken > 0 {
        info!(
            hosts = taken,
            "took over the previous daemon's outlier state (ejections, multipliers)"
        );
    }
    taken
}
