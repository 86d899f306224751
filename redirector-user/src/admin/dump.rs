//! What `/config_dump` shows: the effective config of the generation in
//! force (the node's settings with defaults, then the services as
//! validated) and every endpoint's live health from the service table.

use std::{net::SocketAddrV4, sync::RwLock};

use crate::{
    config::Config,
    state::{Node, Services},
};

/// What `/config_dump` shows; the daemon sets it once it serves.
pub(crate) trait ConfigDump: Send + Sync {
    fn config_dump(&self) -> serde_json::Value;
}

/// The effective config and live endpoint health, for `/config_dump`.
pub(crate) struct Dump {
    /// `{"node": …, "config": …}` of the generation in force.
    effective: RwLock<serde_json::Value>,
    services: Services,
}

impl Dump {
    pub(crate) fn new(config: &Config, node: &Node, services: Services) -> Self {
        Self {
            effective: RwLock::new(effective(config, node)),
            services,
        }
    }

    /// A reload was applied: from now on, its config.
    pub(crate) fn set_effective(&self, config: &Config, node: &Node) {
        *self.effective.write().expect("dump lock") = effective(config, node);
    }
}

fn effective(config: &Config, node: &Node) -> serde_json::Value {
    serde_json::json!({ "node": node, "config": config })
}

impl ConfigDump for Dump {
    fn config_dump(&self) -> serde_json::Value {
        let mut dump = self.effective.read().expect("dump lock").clone();
        let services = self.services.current();
        let mut health: Vec<(String, serde_json::Value)> = services
            .values()
            .map(|c| {
                let service = format!("{}:{}", c.service.host, c.service.port.number);
                let endpoints: Vec<serde_json::Value> = c
                    .snapshot()
                    .into_iter()
                    .map(|h| {
                        serde_json::json!({
                            "address": h.address,
                            "addr": h.addr.map(|a| a.to_string()),
                            "locality": h.locality.to_string(),
                            "priority": h.priority,
                            "weight": h.weight,
                            "ejected": h.ejected_until.is_some(),
                            "ejections": h.ejections,
                            "consecutive_5xx": h.consecutive_5xx,
                            "dns_failures": h.dns.failures,
                            "last_error": h.last_error.map(|(_, e)| e),
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "service": service,
                    "cluster": c.name,
                    "vip": SocketAddrV4::new(c.service.vip, c.service.port.number).to_string(),
                    "endpoints": endpoints,
                });
                (service, v)
            })
            .collect();
        health.sort_by(|a, b| a.0.cmp(&b.0));
        dump["health"] = health.into_iter().map(|(_, v)| v).collect();
        dump
    }
}
