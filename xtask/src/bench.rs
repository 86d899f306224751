//! `cargo xtask bench`: runs the benchmark, the `redirector-bench` crate
//! (`bench/`). This only prepares the machine and the binaries: root
//! check, `setup`, a sweep of leftovers, a release build of the daemon,
//! the test bed's binaries and the bench together (the bench measures the
//! `redirector` beside its own executable), then the bench with every
//! argument passed through, and a sweep afterwards. `--help` shows the
//! bench's own options, without root.

use std::{ffi::OsString, process::Command};

use anyhow::Result;

use crate::{cmd, setup, sweep};

/// Everything after `bench`, for the bench itself.
#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// The bench's options (`cargo xtask bench --help` lists them)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: &Args) -> Result<()> {
    let help = args.args.iter().any(|a| a == "--help" || a == "-h");
    if help {
        build()?;
        return cmd::run(&mut bench(args)?);
    }
    cmd::require_root("bench")?;
    setup::run()?;
    sweep::sweep("before the bench")?;
    build()?;
    let result = cmd::run(&mut bench(args)?);
    let swept = sweep::sweep("after the bench");
    result?;
    swept
}

/// Release builds: the bench measures the product, not a debug build.
fn build() -> Result<()> {
    cmd::run(cmd::command("cargo").args([
        "build",
        "--release",
        "-q",
        "-p",
        "redirector-user",
        "-p",
        "redirector-tests",
        "-p",
        "redirector-bench",
        "--bins",
    ]))
}

/// The bench, in the caller's directory (a relative `--out` means what it
/// says), with the caller's arguments.
fn bench(args: &Args) -> Result<Command> {
    let mut cmd = Command::new(cmd::target_dir()?.join("release/redirector-bench"));
    cmd.args(&args.args);
    Ok(cmd)
}
