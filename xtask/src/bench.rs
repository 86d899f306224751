//! `cargo xtask bench`: runs the benchmark, the `redirector-bench` crate
//! (`bench/`). This only prepares the machine and the binaries: root
//! check, `setup`, a sweep of leftovers, a release build of the daemon and
//! the test bed's binaries (whose paths the bench gets in
//! `REDIRECTOR_BIN`, `RDT_UPSTREAM_BIN` and `RDT_LOAD_BIN`), a debug build
//! of the bench itself (a harness, as it was inside xtask), then the
//! bench with every argument passed through, and a sweep afterwards.
//! `--help` shows the bench's own options, without root.

use std::{ffi::OsString, process::Command};

use anyhow::Result;

use crate::{cmd, setup, sweep};

/// Everything after `bench`, for the bench itself.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// The bench's options (`cargo xtask bench --help` lists them)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.args.iter().any(|a| a == "--help" || a == "-h") {
        build_bench()?;
        return cmd::run(&mut bench(args)?);
    }
    cmd::require_root("bench")?;
    setup::run()?;
    sweep::sweep("before the bench")?;
    // Release builds: the bench measures the product, not a debug build.
    cmd::run(cmd::command("cargo").args([
        "build",
        "--release",
        "-q",
        "-p",
        "redirector-user",
        "-p",
        "redirector-tests",
        "--bins",
    ]))?;
    build_bench()?;
    let release = cmd::target_dir()?.join("release");
    let mut bench = bench(args)?;
    for (var, bin) in [
        ("REDIRECTOR_BIN", "redirector"),
        ("RDT_UPSTREAM_BIN", "rdt-upstream"),
        ("RDT_LOAD_BIN", "rdt-load"),
    ] {
        bench.env(var, release.join(bin));
    }
    let result = cmd::run(&mut bench);
    let swept = sweep::sweep("after the bench");
    result?;
    swept
}

fn build_bench() -> Result<()> {
    cmd::run(cmd::command("cargo").args(["build", "-q", "-p", "redirector-bench"]))
}

/// The bench, in the caller's directory (a relative `--out` or
/// `--baseline` means what it says), with the caller's arguments.
fn bench(args: &Args) -> Result<Command> {
    let mut cmd = Command::new(cmd::target_dir()?.join("debug/redirector-bench"));
    cmd.args(&args.args);
    Ok(cmd)
}
