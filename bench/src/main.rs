//! `redirector-bench`, run as `cargo xtask bench`: the redirector side by
//! side with direct, Envoy, nginx and HAProxy, in one run on this machine,
//! so every change can be judged by ratios measured together.
//!
//! The harness pins itself, the load generator and the upstreams to one
//! core and every system under test to the other, keeps all systems up and
//! interleaves them (A B C … A B C …) for every workload and repetition,
//! samples CPU and memory from /proc around each run, drops runs disturbed
//! by steal or foreign CPU, then runs the failover faults through each
//! proxy and the fail-open run (`kill -9` of the daemon, then a takeover)
//! through the redirector and its kernel fast path. Before the cells, the
//! pod scenarios make real pods (the test bed's CNI plugins) that the
//! redirector's daemon serves: what each pod costs it and how soon a new
//! pod's first connect is served, with its CNI plugin and without; in the
//! cells, the row `redirector-pod` runs the load generator in a pod.
//! Results go to `bench/results/` as JSON, markdown and an SVG plot.
//!
//! `cargo xtask bench` builds the `redirector` and the test bed's
//! `rdt-upstream` and `rdt-load` in release, names them in
//! `REDIRECTOR_BIN`, `RDT_UPSTREAM_BIN` and `RDT_LOAD_BIN`, and runs this
//! with every argument it was given; `--baseline` adds another build of
//! the redirector, measured the same way. The harness itself is a debug
//! build, as it was inside xtask: it waits on its children and reads
//! /proc, and its CPU is counted apart from the system's.
//!
//! Data flows one way: `model.rs` is the vocabulary; `run.rs` runs the
//! bed (`topology.rs`, `peers.rs`), the pod scenarios (`pods.rs`), the
//! cells (`load.rs`, `sample.rs`) and the fault runs (`failover.rs`,
//! `failopen.rs`) into a `BenchReport`;
//! `summary.rs` turns it into medians and ratios, which `report.rs` (with
//! `report/targets.rs`) and `plot.rs` write out. See README.md for the
//! latest table.

mod cmd;
mod failopen;
mod failover;
mod failure;
#[cfg(test)]
mod fixture;
mod format;
mod install;
mod load;
mod machine;
mod model;
mod peers;
mod plot;
mod pods;
mod report;
mod run;
mod sample;
mod summary;
mod tools;
mod topology;
mod wait;

use std::{
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
    process::ExitCode,
};

use clap::Parser;

/// The options of `cargo xtask bench`, which passes them through.
#[derive(Parser, Debug)]
#[command(
    name = "redirector-bench",
    bin_name = "cargo xtask bench",
    about = "Benchmark the redirector against direct, Envoy, nginx and HAProxy (root)"
)]
pub struct Args {
    /// Short smoke run (1 repetition, 1 s cells, fewer cells), as the test suite runs it
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per cell [default: 5, quick 1]
    #[arg(long)]
    pub reps: Option<u32>,
    /// Seconds per cell [default: 5, quick 1]
    #[arg(long)]
    pub cell_secs: Option<f64>,
    /// Only these systems (keys as in the table), comma-separated
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Only workloads whose key contains one of these, comma-separated (e.g. new-conn/plain)
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Skip the failover runs
    #[arg(long)]
    pub no_failover: bool,
    /// Skip the fail-open runs (kill -9 of the redirector's daemons)
    #[arg(long)]
    pub no_fail_open: bool,
    /// Skip the pod scenarios (what pods cost the daemon, time to a new pod's first served connect)
    #[arg(long)]
    pub no_pods: bool,
    /// Where to write the results [default: bench/results]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Another redirector binary (e.g. built from main) to measure beside this build, as the system redirector-baseline
    #[arg(long, value_name = "REDIRECTOR_BINARY")]
    pub baseline: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    failure::keep_panics();
    // A panic unwinds through the bed, whose drops stop every process and
    // may print their logs; the reason comes after them.
    match panic::catch_unwind(AssertUnwindSafe(|| run::run(&args))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            failure::report(&err);
            ExitCode::FAILURE
        }
        Err(_) => {
            failure::report_panic();
            ExitCode::FAILURE
        }
    }
}
