//! Workflows of the redirector workspace, run as `cargo xtask <command>`
//! (the alias lives in `.cargo/config.toml`). One module per subcommand;
//! the `///` line on each variant is its `--help`. The xtask depends only
//! on the test bed, never on the daemon or the kernel programs, so it
//! builds before bpf-linker is installed.

mod bench;
mod cmd;
mod demo;
mod fuzz;
mod image;
mod setup;
mod sweep;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Workflows of the redirector workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the redirector against direct, Envoy, nginx and HAProxy (root; --quick for a smoke run, --help for every option)
    Bench(bench::Args),
    /// Reproduce Istio's external-service failover blog post on this machine (root)
    Demo,
    /// Run a fuzz target (or `all`) from its committed corpus for --secs seconds each (nightly; installs cargo-fuzz)
    Fuzz(fuzz::Args),
    /// Build the DaemonSet's image with podman, offline, from a local Debian base (root; --release)
    Image(image::Args),
    /// Install what is missing to build and test (nightly + rust-src, LLVM 22, bpf-linker, bpffs); root
    Setup,
    /// Remove namespaces, cgroups, pins and processes left behind by killed test runs; root
    Sweep,
    /// Setup, sweep leftovers, then fmt check, build, clippy and every test; root
    Test(test::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
        Command::Demo => demo::run(),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Setup => setup::run(),
        Command::Sweep => sweep::run(),
        Command::Test(args) => test::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The reason, last: what failed, then each cause on its line.
            eprintln!("xtask: {}", cmd::chain(&err));
            ExitCode::FAILURE
        }
    }
}
