use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use redirector_user::{
    app,
    cli::{Cli, Command, LogFormat, Output},
    config, endpoints,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line: timestamp, level, target, fields.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
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
            }))
        }
        Command::Check(args) => {
            let config = config::load_file(&args.config, &args.node.to_settings())?;
            app::check_tls_files(&config)?;
            print!("{}", app::describe(&config));
            Ok(())
        }
        Command::Ready(args) => {
            let pid = redirector_user::admin::check_ready_file(&args.ready_file)
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("ready (pid {pid})");
            Ok(())
        }
        Command::Cleanup(args) => {
            let done = redirector_user::bpf::cleanup(&args.pin_dir)?;
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
        Command::Endpoints(args) => {
            let report = endpoints::report(&args.pin_dir)?;
            match args.output {
                Output::Table => print!("{}", endpoints::render_table(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(())
        }
    }
}
