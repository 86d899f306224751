//! `cargo xtask bench`: the redirector side by side with direct, Envoy,
//! nginx and HAProxy, in one run on this machine. See `bench/model.rs` for
//! what is measured and README.md for the latest results.

// Until the orchestration lands, the parts are not all used yet.
#![allow(dead_code)]

mod install;
mod load;
mod model;
mod peers;
mod plot;
mod report;
mod tools;

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Short smoke run (1 repetition, 1 s cells, a subset of cells), as the test suite runs it
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per cell (full run default 5)
    #[arg(long)]
    pub reps: Option<u32>,
    /// Seconds per cell (full run default 5)
    #[arg(long)]
    pub cell_secs: Option<f64>,
    /// Only these systems (keys as in the table), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Skip the failover runs
    #[arg(long)]
    pub no_failover: bool,
    /// Where to write the results [default: bench/results]
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub fn run(_args: &Args) -> Result<()> {
    anyhow::bail!("the benchmark orchestration is being built")
}
