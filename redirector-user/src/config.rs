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

use std::io::Read as _;
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

pub(crate) use duration::MAX as MAX_DURATION;

/// `now + timeout` as a deadline that always fits: the timeout is capped
/// at [`MAX_DURATION`], which validation already bounds every config
/// duration by, so a bad value that got past it cannot panic here
/// (`Instant + Duration` panics on overflow).
pub(crate) fn deadline(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout.min(MAX_DURATION)).unwrap_or(now)
}

/// A non-negative Go-style duration (`15s`, `1m30s`, `500ms`), as durations
/// are written in the config, for flags that take one.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.negative {
        return Err(format!("{text:?}: a duration must not be negative"));
    }
    Ok(d.magnitude)
}

/// The largest config file read: 16 times what a Kubernetes ConfigMap
/// holds (1 MiB), and far more than the kernel's 4096 services take to
/// write, so only a file that is not a config (or a hostile one) is
/// refused before it is read into memory.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads and validates the config file at `path`. `overrides` (from flags)
/// win over the file's `NodeConfig`.
pub(crate) fn load_file(path: &Path, overrides: &NodeSettings) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let problem = |message: String| ConfigError {
        problems: vec![Problem::file(&source, message)],
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| problem(format!("cannot read the config file: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(format!(
            "the config file is larger than {} MiB, the most redirector reads",
            MAX_FILE_BYTES >> 20
        )));
    }
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
mod bounds_tests;
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
