//! `cargo xtask test`: everything CI runs, in order, stopping at the first
//! failure (except formatting, reported at the end): setup, sweep of leftovers from killed runs, `cargo fmt --check`,
//! build of the daemon (its build.rs builds the kernel programs), clippy on
//! the host crates and, separately, on the eBPF crate for its own target,
//! then every test with `REDIRECTOR_BIN` pointing at the fresh daemon, then
//! every fuzz target for a little while from its corpus (`fuzz.rs`), then
//! the demo and a quick benchmark run. The sweep runs again at the end
//! whatever happened.

use std::{process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::{
    cmd::{self, command},
    fuzz, setup, sweep,
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Arguments for `cargo test` after `--` (e.g. a test-name filter, or `--test testbed`)
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    cmd::require_root("test")?;
    let start = Instant::now();
    setup::run()?;
    sweep::sweep("before the run")?;
    let result = steps(args);
    let swept = sweep::sweep("after the run");
    result?;
    swept?;
    eprintln!("test: all passed in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn steps(args: &Args) -> Result<()> {
    // A formatting slip should not hide build or test results: report it
    // at the end instead of stopping here.
    let format = step("format", command("cargo").args(["fmt", "--all", "--check"]));
    step(
        "build the daemon",
        command("cargo").args(["build", "-p", "redirector-user", "--bins"]),
    )?;
    step(
        "clippy (host crates)",
        command("cargo").args([
            "clippy",
            "--workspace",
            "--exclude",
            "redirector-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Linted on its own: it only builds for the BPF target, and feature
    // unification with the host crates would break a single clippy run.
    // needless_borrows_for_generic_args is allowed: aya-ebpf map methods
    // take `impl Borrow<K>`, and `&key` (aya's own style) keeps keys from
    // being copied onto the 512-byte BPF stack.
    step(
        "clippy (eBPF crate)",
        command("cargo").args([
            "+nightly",
            "clippy",
            "-p",
            "redirector-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
            "-A",
            "clippy::needless_borrows_for_generic_args",
        ]),
    )?;
    let redirector = cmd::target_dir()?.join("debug").join("redirector");
    // CI and the rest of the environment pass through untouched.
    step(
        "tests",
        command("cargo")
            .args(["test", "--workspace", "--exclude", "redirector-ebpf"])
            .args(&args.cargo_test_args)
            .env("REDIRECTOR_BIN", &redirector),
    )?;
    // The fuzz targets, the README's other command and the benchmark:
    // skipped only when the caller narrowed the run to some tests.
    if args.cargo_test_args.is_empty() {
        // Every fuzz target for a little while from its corpus, after one
        // build of them all: a crash fails the run and names its input.
        timed(
            &format!(
                "fuzz ({} targets, {} s each)",
                fuzz::TARGETS.len(),
                fuzz::SMOKE_SECS
            ),
            || {
                cmd::run(&mut fuzz::build()?)?;
                for target in fuzz::TARGETS {
                    fuzz::run_target(target, fuzz::SMOKE_SECS)?;
                }
                Ok(())
            },
        )?;
        // The demo checks every phase of the blog post, so running it
        // here keeps it from rotting.
        step("demo", command("cargo").args(["xtask", "demo"]))?;
        // A short smoke run of the benchmark, so the harness never rots;
        // its results stay out of bench/results.
        let out = cmd::target_dir()?.join("bench-quick");
        step(
            "bench --quick",
            command("cargo")
                .args(["xtask", "bench", "--quick", "--out"])
                .arg(&out),
        )?;
    }
    format.context("everything else passed, but `cargo fmt --all` has changes to make")
}

/// Runs one step; a failure is said right after its `FAILED` line, with
/// the error chain (the command, then its last lines of output).
fn step(what: &str, cmd: &mut Command) -> Result<()> {
    timed(what, || cmd::run(cmd))
}

/// Runs a step made of more than one command, as [`step`] runs one.
fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("==> {what}");
    let start = Instant::now();
    let result = f();
    eprintln!(
        "==> {what}: {} in {:.1} s",
        if result.is_ok() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if let Err(err) = &result {
        eprintln!("==> {what}: {}", cmd::chain(err));
    }
    result.with_context(|| format!("step `{what}`"))
}
