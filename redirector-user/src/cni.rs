//! The CNI plugin side of the redirector: the `redirector-cni` binary (this
//! binary under that name, chained after the cluster's own plugins) tells
//! the daemon about each pod as it is created and deleted; `redirector cni
//! install` and `uninstall` put it into the node's CNI configuration and
//! take it out again.
//!
//! - [`plugin`]: what the runtime runs for every pod (`ADD`, `DEL`,
//!   `CHECK`, `VERSION`, `STATUS`, `GC`). It passes the previous plugin's
//!   result through and never fails a pod because of the daemon.
//! - [`client`]: one exchange with the daemon over its Unix socket, the
//!   pod's network namespace passed as a descriptor ([`protocol`]).
//! - [`install`]: the binary into the runtime's plugin directory and an
//!   entry into the primary network config, written aside and renamed;
//!   [`conflist`] is the pure JSON part of it.

pub(crate) mod client;
pub(crate) mod conflist;
pub(crate) mod install;
pub(crate) mod plugin;
pub(crate) mod protocol;

use clap::{Args, Subcommand};

/// The plugin's `type` in a network config, and its file name in the
/// runtime's plugin directory: runtimes exec a plugin by its type.
pub(crate) const PLUGIN_TYPE: &str = "redirector-cni";

/// The CNI spec versions the plugin speaks, oldest first. Its result is
/// the previous plugin's, passed through, so every version whose results
/// a chained plugin may see is fine; 0.1.0 and 0.2.0 had no chaining.
pub(crate) const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version the plugin answers in when the runtime named none it speaks.
pub(crate) const NEWEST_VERSION: &str = "1.1.0";

/// `redirector cni`: with no subcommand, the plugin itself.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct CniArgs {
    #[command(subcommand)]
    pub(crate) command: Option<CniCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CniCommand {
    /// Copy this binary to --bin-dir as redirector-cni and chain it in the node's primary CNI config.
    Install(install::InstallArgs),
    /// Take redirector-cni out of the node's CNI config, then remove the binary.
    Uninstall(install::UninstallArgs),
}

/// Runs `redirector cni …`.
pub(crate) fn run(args: CniArgs) -> anyhow::Result<()> {
    match args.command {
        None => plugin::main(),
        Some(CniCommand::Install(args)) => install::install(&args),
        Some(CniCommand::Uninstall(args)) => install::uninstall(&args),
    }
}
