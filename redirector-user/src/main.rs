use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use redirector_user::cli::{Cli, LogFormat};

fn main() -> ExitCode {
    // Under the name `redirector-cni`, the CNI plugin: its stdout is the
    // runtime's, so logs go to stderr only (as for every command).
    let cli = Cli::parse_from(redirector_user::cli::args());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line: timestamp, level, target, fields.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match redirector_user::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
