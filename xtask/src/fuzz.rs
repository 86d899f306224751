//! `cargo xtask fuzz <target>|all [--secs N]`: runs fuzz targets (the
//! crate in `fuzz/`, built with nightly and cargo-fuzz, its entry points
//! redirector-user's `fuzzing` module) from their committed corpus.
//! `cargo xtask test` runs each for [`SMOKE_SECS`].
//!
//! Each run reads `fuzz/corpus/<target>` (seeds) and
//! `fuzz/regressions/<target>` (inputs that once crashed it, replayed
//! first) and writes what it discovers to a scratch corpus in the target
//! directory, so the committed corpus changes only by hand. A crash fails
//! the run and names the input libFuzzer saved (under
//! `fuzz/artifacts/<target>/`): copy it to `fuzz/regressions/<target>/`
//! with the fix.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, command, workspace_root};

/// Every target (`fuzz/Cargo.toml` lists them).
pub(crate) const TARGETS: [&str; 7] = [
    "config",
    "duration",
    "dns_reply",
    "dns_tcp",
    "handover_offer",
    "handover_request",
    "http_response_head",
];
/// Seconds per target in `cargo xtask test`.
pub(crate) const SMOKE_SECS: u64 = 20;
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A target (config, duration, dns_reply, dns_tcp, handover_offer, handover_request, http_response_head) or `all`
    target: String,
    /// How long to run each target
    #[arg(long, default_value_t = 300)]
    secs: u64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let targets: Vec<&str> = if args.target == "all" {
        TARGETS.to_vec()
    } else if TARGETS.contains(&args.target.as_str()) {
        vec![args.target.as_str()]
    } else {
        bail!(
            "no fuzz target {:?}: one of {} or all",
            args.target,
            TARGETS.join(", ")
        );
    };
    install()?;
    cmd::run(&mut build()?)?;
    for target in targets {
        run_target(target, args.secs)?;
    }
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    cmd::probe(command("cargo").args(["+nightly", "fuzz", "--version"]))
        .is_some_and(|v| v.split_whitespace().any(|word| word == CARGO_FUZZ_VERSION))
}

/// Installs cargo-fuzz unless this version is there (a probe otherwise).
pub(crate) fn install() -> Result<()> {
    let item = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if cargo_fuzz_ok() {
        eprintln!("setup: {item}: present");
        return Ok(());
    }
    cmd::run(command("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))?;
    if !cargo_fuzz_ok() {
        bail!(
            "cargo-fuzz {CARGO_FUZZ_VERSION} installed but `cargo fuzz --version` disagrees: is ~/.cargo/bin on PATH?"
        );
    }
    eprintln!("setup: {item}: installed");
    Ok(())
}

/// `cargo fuzz` with the options every use shares: nightly, debug
/// assertions (overflow checks), our target directory, and no kernel
/// programs (the targets never load them; aya-build would build them
/// with the sanitizer's flags).
fn cargo_fuzz(what: &str) -> Result<std::process::Command> {
    let mut cmd = command("cargo");
    cmd.args([
        "+nightly",
        "fuzz",
        what,
        "--debug-assertions",
        "--target-dir",
    ])
    .arg(cmd::target_dir()?.join("fuzz"))
    .env("AYA_BUILD_SKIP", "1");
    Ok(cmd)
}

/// Builds every target.
pub(crate) fn build() -> Result<std::process::Command> {
    cargo_fuzz("build")
}

/// Runs `target` for `secs` seconds from its corpus and regression
/// inputs; fails naming the input that crashed it.
pub(crate) fn run_target(target: &str, secs: u64) -> Result<()> {
    let root = workspace_root();
    let scratch = cmd::target_dir()?.join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let mut cmd = cargo_fuzz("run")?;
    cmd.arg(target).arg(&scratch);
    for dir in ["corpus", "regressions"] {
        let dir = root.join("fuzz").join(dir).join(target);
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    // One crash is enough; a slow input (10 s) or 2 GiB counts as one.
    cmd.args(["--", &format!("-max_total_time={secs}")]).args([
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    let started = SystemTime::now();
    let start = Instant::now();
    eprintln!("fuzz: {target} for {secs} s");
    let result = cmd::run(&mut cmd);
    eprintln!(
        "fuzz: {target}: {} after {:.0} s",
        if result.is_ok() { "no crash" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if result.is_err() {
        let saved = saved_since(&root.join("fuzz/artifacts").join(target), started);
        for input in &saved {
            eprintln!("fuzz: {target}: crash input {}", input.display());
        }
        return result.with_context(|| match saved.first() {
            Some(input) => format!(
                "fuzz target {target} crashed on {} (reproduce: cargo +nightly fuzz run {target} {}; \
                 keep it in fuzz/regressions/{target}/ with the fix)",
                input.display(),
                input.display()
            ),
            None => format!("fuzz target {target} failed"),
        });
    }
    Ok(())
}

/// Files in `dir` written since `since` (what libFuzzer saved this run).
fn saved_since(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect()
}
