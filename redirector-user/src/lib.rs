//! The redirector daemon and CLI. See ARCHITECTURE.md for how the pieces
//! fit. `main.rs` parses the command line, sets up logging and calls
//! [`run`]; everything else is private to this crate.

mod admin;
mod app;
mod check;
pub mod cli;
mod cluster;
mod cni;
mod config;
mod datapath;
mod dns;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handover;
mod inspect;
mod kube;
mod lb;
mod locality;
mod metrics;
mod netns;
mod outlier;
mod privs;
mod proxy;
mod resolve;
mod state;
mod sync;
mod sys;
mod tls;
mod topology;
mod watch;

use anyhow::Context as _;

use crate::cli::{Cli, Command, Output};

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            // Before anything opens a descriptor.
            match sys::raise_nofile_limit() {
                Ok((before, now)) => {
                    tracing::info!(before, now, "descriptor limit (RLIMIT_NOFILE)");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot raise the descriptor limit (RLIMIT_NOFILE)");
                }
            }
            rustls::crypto::ring::default_provider()
                .install_default()
                .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
            // One worker: a current-thread runtime, with no cross-thread
            // wake-ups, is the leanest event loop (nginx's model).
            let runtime = if args.workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(args.workers)
                    .enable_all()
                    .build()
            }
            .context("starting the tokio runtime")?;
            runtime.block_on(app::run(app::RunOptions {
                config: args.config,
                overrides: args.node.to_settings(),
                datapath_only: args.datapath_only,
                drain_timeout: args.drain_timeout,
                take_over: args.take_over,
                ready_file: args.ready_file,
                cni_socket: args.cni_socket,
            }))
        }
        Command::Check(args) => check::run(&args.config, &args.node.to_settings()),
        Command::Ready(args) => {
            let pid = admin::check_ready_file(&args.ready_file).map_err(|e| anyhow::anyhow!(e))?;
            println!("ready (pid {pid})");
            Ok(())
        }
        Command::Cleanup(args) => {
            let done = datapath::cleanup(&args.pin_dir)?;
            if !done.found {
                println!("nothing to remove at {}", args.pin_dir.display());
            } else {
                println!(
                    "detached {} program link(s) and removed {}",
                    done.links.len(),
                    args.pin_dir.display()
                );
            }
            Ok(())
        }
        Command::NetnsHelper(args) => netns::helper::serve(args.fd),
        Command::Pods(args) => {
            let report = inspect::pods::report(&args.pin_dir)?;
            match args.output {
                Output::Table => print!("{}", inspect::pods::render_table(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
        Command::Cni(args) => cni::run(args),
        Command::Endpoints(args) => {
            let report = inspect::report(&args.pin_dir)?;
            match args.output {
                Output::Table => print!("{}", inspect::render_table(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
    }
}
