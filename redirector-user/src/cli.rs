//! Command-line interface. Node settings given as flags win over the same
//! settings in the config file's `NodeConfig` document.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{config::NodeSettings, topology::Locality};

#[derive(Debug, Parser)]
#[command(
    name = "redirector",
    version,
    about = "Transparent, eBPF-accelerated locality failover for external services, configured \
             with Istio ServiceEntry and DestinationRule documents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `redirector_user=debug`.
    #[arg(long, global = true, env = "REDIRECTOR_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format: `text` (human-readable lines) or `json` (one object per line).
    #[arg(long, global = true, value_enum, env = "REDIRECTOR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The command line, as `main` parses it: runtimes exec the CNI plugin by
/// its type, so this binary under the name `redirector-cni` is `redirector
/// cni` (the plugin reads the runtime's `CNI_*` variables, not arguments).
pub fn args() -> Vec<std::ffi::OsString> {
    args_from(std::env::args_os())
}

fn args_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.into_iter().collect();
    let plugin = args.first().is_some_and(|argv0| {
        std::path::Path::new(argv0).file_name() == Some(crate::cni::PLUGIN_TYPE.as_ref())
    });
    if plugin {
        args.insert(1, "cni".into());
    }
    args
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon in the foreground (needs root or CAP_BPF + CAP_NET_ADMIN).
    Run(RunArgs),
    /// Print services and endpoint health, read from the running daemon's pinned BPF maps.
    Endpoints(EndpointsArgs),
    /// The network namespaces the daemon serves (its own, and each pod's), from its pinned maps.
    Pods(EndpointsArgs),
    /// Validate a config file, print what it defines, and exit.
    Check(CheckArgs),
    /// Detach the kernel datapath a stopped daemon left attached and remove its pins.
    Cleanup(CleanupArgs),
    /// Exit 0 if the daemon that keeps --ready-file is ready (an exec readiness probe).
    Ready(ReadyArgs),
    /// The daemon's privileged helper (started by the daemon itself).
    #[command(hide = true)]
    NetnsHelper(NetnsHelperArgs),
    /// The CNI plugin (run by the container runtime, also as `redirector-cni`); `install`, `uninstall`.
    Cni(crate::cni::CniArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NetnsHelperArgs {
    /// The daemon's end of the socket pair.
    #[arg(long)]
    pub(crate) fd: i32,
}

#[derive(Debug, Args)]
pub(crate) struct ReadyArgs {
    /// The file the daemon was started with (`redirector run --ready-file`).
    #[arg(long, env = "REDIRECTOR_READY_FILE")]
    pub(crate) ready_file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// bpffs directory of the daemon to remove.
    #[arg(long, default_value = crate::state::DEFAULT_PIN_DIR)]
    pub(crate) pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Multi-document YAML with ServiceEntry, DestinationRule and NodeConfig documents.
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    #[command(flatten)]
    pub(crate) node: NodeFlags,
    /// Proxy worker threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Only attach the redirect to --listen-port, where another proxy listens (benchmarks).
    #[arg(long, hide = true)]
    pub(crate) datapath_only: bool,
    /// On SIGTERM, how long open connections may finish before the daemon exits (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_timeout: std::time::Duration,
    /// If a daemon already holds the pin dir, take its listening sockets and datapath over
    /// without a gap (it stops accepting, drains and waits for SIGTERM) instead of failing.
    #[arg(long, env = "REDIRECTOR_TAKE_OVER")]
    pub(crate) take_over: bool,
    /// Keep this process's pid in this file while it is ready, and no file otherwise
    /// (for `redirector ready`: a readiness probe of this daemon, not of whichever holds the port).
    #[arg(long, env = "REDIRECTOR_READY_FILE")]
    pub(crate) ready_file: Option<PathBuf>,
    /// Unix socket where the CNI plugin tells the daemon about pods
    /// [default: /run/redirector/cni.sock with the default --pin-dir, else one beside the pin-dir lock].
    #[arg(long, env = "REDIRECTOR_CNI_SOCKET")]
    pub(crate) cni_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[arg(long, short)]
    pub(crate) config: PathBuf,
    #[command(flatten)]
    pub(crate) node: NodeFlags,
}

#[derive(Debug, Args)]
pub(crate) struct EndpointsArgs {
    /// bpffs directory of the daemon to inspect.
    #[arg(long, default_value = crate::state::DEFAULT_PIN_DIR)]
    pub(crate) pin_dir: PathBuf,
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct NodeFlags {
    /// Attach the redirect to this cgroup v2 directory [default: the cgroup v2 root].
    #[arg(long)]
    pub(crate) cgroup: Option<PathBuf>,
    /// This node's locality, REGION[/ZONE[/SUBZONE]].
    #[arg(long, value_parser = parse_locality)]
    pub(crate) locality: Option<Locality>,
    /// DNS server for endpoint names, IP[:PORT]; repeatable [default: /etc/resolv.conf].
    #[arg(long = "nameserver", value_parser = parse_nameserver)]
    pub(crate) nameservers: Vec<SocketAddr>,
    /// Proxy listener port on 127.0.0.1 [default: 15001].
    #[arg(long)]
    pub(crate) listen_port: Option<u16>,
    /// DNS responder port on 127.0.0.1 (UDP and TCP), where apps' DNS is captured; 0 turns capture off [default: 15053].
    #[arg(long)]
    pub(crate) dns_port: Option<u16>,
    /// Admin server port on 127.0.0.1 (/ready, /metrics, /config_dump); 0 turns it off [default: 15000].
    #[arg(long)]
    pub(crate) admin_port: Option<u16>,
    /// Range for VIPs of ServiceEntries without `addresses` [default: 240.240.0.0/16].
    #[arg(long)]
    pub(crate) vip_range: Option<ipnet::Ipv4Net>,
    /// Range for IPv6 VIPs of ServiceEntries without an IPv6 address in `addresses` [default: 2001:2::/48].
    #[arg(long)]
    pub(crate) vip_range6: Option<ipnet::Ipv6Net>,
    /// bpffs directory for pinned maps [default: /sys/fs/bpf/redirector].
    #[arg(long)]
    pub(crate) pin_dir: Option<PathBuf>,
}

impl NodeFlags {
    pub(crate) fn to_settings(&self) -> NodeSettings {
        NodeSettings {
            locality: self.locality.clone(),
            cgroup: self.cgroup.clone(),
            nameservers: self.nameservers.clone(),
            listen_port: self.listen_port,
            dns_port: self.dns_port,
            admin_port: self.admin_port,
            vip_range: self.vip_range,
            vip_range6: self.vip_range6,
            pin_dir: self.pin_dir.clone(),
            // No flags: the file only.
            limits: crate::config::LimitSettings::default(),
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

fn parse_locality(s: &str) -> Result<Locality, String> {
    Locality::parse(s).map_err(|e| e.to_string())
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "redirector",
            "run",
            "--config",
            "c.yaml",
            "--locality",
            "us-east1/a",
            "--nameserver",
            "10.0.0.1",
            "--nameserver",
            "127.0.0.1:5353",
            "--admin-port",
            "0",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let s = run.node.to_settings();
        assert_eq!(s.admin_port, Some(0), "0 turns the admin server off");
        assert_eq!(s.locality.unwrap().zone, "a");
        assert_eq!(
            s.nameservers,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
    }

    #[test]
    fn under_the_plugins_name_it_is_the_plugin() {
        let parse = |argv: &[&str]| {
            let cli = Cli::try_parse_from(args_from(argv.iter().map(Into::into))).unwrap();
            matches!(
                cli.command,
                Command::Cni(crate::cni::CniArgs { command: None })
            )
        };
        assert!(parse(&["/opt/cni/bin/redirector-cni"]));
        assert!(parse(&["redirector-cni"]));
        assert!(parse(&["redirector", "cni"]));
        assert!(!parse(&["redirector", "cni", "uninstall"]));
        assert!(!parse(&[
            "/usr/local/bin/redirector",
            "ready",
            "--ready-file",
            "f"
        ]));
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let err = Cli::try_parse_from(["redirector", "run", "-c", "x", "--locality", "a/b/c/d"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than three"), "{err}");
        let err = Cli::try_parse_from(["redirector", "run", "-c", "x", "--nameserver", "dns"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not IP or IP:PORT"), "{err}");
    }
}
