//! Loading the node-local config file: Istio `ServiceEntry` and
//! `DestinationRule` documents, plus an optional `NodeConfig` of our own.
//!
//! Users bring the YAML they already have for Istio, so the documents are
//! read as Istio defines them, and anything redirector would handle
//! differently is refused rather than ignored: a field that silently does
//! nothing is worse than an error. The result is a flat list of services, one
//! per (host, port), with everything the datapath needs already resolved
//! (VIP, endpoint ports, defaults), so no other module looks at raw YAML.
//!
//! All problems of a file are reported at once, each with file, line,
//! column, document and field, because a user fixing a config wants the whole
//! list, not one error per attempt.
//!
//! Modules, each importing only those below it (no cycles):
//!
//! ```text
//! config.rs      load_file, load_str     -> validate, ctx, model, duration
//! validate       documents by kind, rules across documents, assembly
//!                -> service_entry, policy, node, vip, checks, ctx, model, raw, yaml
//! service_entry  a ServiceEntry          -> checks, ctx, model, raw, yaml
//! node           the NodeConfig          -> checks, ctx, model, raw
//! policy         a DestinationRule       -> policy::{outlier, connection_pool,
//!                                           load_balancer, tls}, checks, ctx, model, raw
//!   policy::load_balancer                -> policy::locality_lb, ctx, model, raw
//!   policy::{outlier, connection_pool, tls, locality_lb}
//!                                        -> checks, ctx, model, raw (locality_lb: yaml)
//! checks         shared checks           -> ctx, duration, raw
//! ctx            problems and positions  -> raw, yaml
//! model          the validated types     -> duration
//! raw, yaml, duration, vip               -> nothing in config
//! ```

mod checks;
mod ctx;
mod duration;
mod model;
mod node;
mod policy;
mod raw;
mod service_entry;
mod validate;
mod vip;
mod yaml;

use std::path::Path;
use std::time::Duration;

pub(crate) use ctx::ConfigError;
use ctx::Problem;
pub(crate) use model::{
    Config, ConfigFile, ConnectionPoolPolicy, EndpointAddress, EndpointSpec, LbAlgorithm,
    LocalityLbPolicy, NodeSettings, OutlierPolicy, Service, TcpKeepalive, TlsOrigination,
    TlsPolicy,
};
pub(crate) use model::{DatapathMode, Distribute, Protocol};
// The node's connection limits and timeouts (`proxy/limits.rs`).
pub(crate) use model::LimitSettings;
// Named only by tls/tests.rs outside this module.
#[cfg(test)]
pub(crate) use model::ClientIdentity;

/// A non-negative Go-style duration (`15s`, `1m30s`, `500ms`), as durations
/// are written in the config, for flags that take one.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.negative {
        return Err(format!("{text:?}: a duration must not be negative"));
    }
    Ok(d.magnitude)
}

/// Reads and validates the config file at `path`. `overrides` (from flags)
/// win over the file's `NodeConfig`.
pub(crate) fn load_file(path: &Path, overrides: &NodeSettings) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem::file(
            &source,
            format!("cannot read the config file: {e}"),
        )],
    })?;
    load_str(&source, &text, overrides)
}

/// Validates config text; `source` names it in messages (usually the path).
pub(crate) fn load_str(
    source: &str,
    text: &str,
    overrides: &NodeSettings,
) -> Result<Config, ConfigError> {
    validate::load(source, text, overrides)
}

#[cfg(test)]
mod blog_tests;
#[cfg(test)]
mod datapath_tests;
#[cfg(test)]
mod lb_tests;
#[cfg(test)]
mod rule_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
#[cfg(test)]
mod traffic_policy_tests;
