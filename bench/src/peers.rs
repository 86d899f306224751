//! The other proxies the redirector is compared with (Envoy, nginx,
//! HAProxy), each configured for the same job: route by Host to a plain or
//! a TLS-originating service, prefer the primary (us-east1) endpoint, fail
//! over to the backup (us-west) on connect failures and 503s, take the
//! primary back after the ejection time. One worker each, pinned to the
//! core under test, access logs off, error logs in `dir`.
//!
//! This module starts and stops the processes; `peers/<system>.rs` writes
//! each one's configuration and says where it follows (or cannot follow)
//! the redirector's semantics.

mod envoy;
mod haproxy;
mod nginx;
#[cfg(test)]
mod tests;

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{Read, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use redirector_tests::{netns::Netns, process};

use crate::{
    model::SystemId,
    tools::Tools,
    wait::{self, Seen},
};

/// Envoy's consecutive-5xx outlier detection timings (Istio's
/// `outlierDetection`), translated by each peer into its own terms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutlierTiming {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
}

/// What a peer serves and where its upstreams are.
#[derive(Clone, Debug)]
pub(crate) struct PeerConfig {
    /// `127.0.0.1:<port>` in the bench namespace.
    pub listen: SocketAddrV4,
    /// Host header selecting the plain service, e.g. `plain.test`.
    pub plain_host: String,
    /// Host header selecting the TLS-originating service, e.g. `tls.test`.
    pub tls_host: String,
    /// Primary (us-east1) and failover (us-west) endpoints, HTTP.
    pub east_plain: SocketAddrV4,
    pub west_plain: SocketAddrV4,
    /// The same hosts, HTTPS.
    pub east_tls: SocketAddrV4,
    pub west_tls: SocketAddrV4,
    /// DNS names in their certificate (`east.test`, `west.test`).
    pub east_name: String,
    pub west_name: String,
    /// PEM of the test CA that signed the upstream certificate.
    pub ca_file: PathBuf,
    pub outlier: OutlierTiming,
    /// 10 s, Istio's default.
    pub connect_timeout: Duration,
    /// Where config files and logs go (file names start with the system's key).
    pub dir: PathBuf,
}

/// How to run one peer, as its config module prepares it.
struct Launch {
    command: Command,
    /// Files `Peer::log` shows, besides the captured stdout/stderr.
    logs: Vec<PathBuf>,
    /// Envoy's admin address file: ready once `/ready` answers 200.
    admin_address_file: Option<PathBuf>,
}

/// A running peer; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub(crate) struct Peer {
    system: SystemId,
    child: Child,
    logs: Vec<PathBuf>,
}

/// How long a peer may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of each log `Peer::log` shows (the end).
const LOG_TAIL: usize = 8 * 1024;

impl Peer {
    /// Starts `system` (Envoy, Nginx or Haproxy) inside `netns`, pinned to
    /// `cpu`, with one worker, and waits until it answers on `cfg.listen`.
    pub(crate) fn start(
        system: SystemId,
        tools: &Tools,
        cfg: &PeerConfig,
        netns: &Netns,
        cpu: u32,
    ) -> Result<Peer> {
        fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
        let mut launch = match system {
            SystemId::Envoy => envoy::launch(tools, cfg)?,
            SystemId::Nginx => nginx::launch(tools, cfg)?,
            SystemId::Haproxy => haproxy::launch(tools, cfg)?,
            other => bail!("{other} is not a peer proxy (only envoy, nginx, haproxy)"),
        };
        let output = cfg.dir.join(format!("{}.out", system.key()));
        let out =
            File::create(&output).with_context(|| format!("creating {}", output.display()))?;
        let err = out.try_clone().context("duplicating the output file")?;
        let cmd = &mut launch.command;
        cmd.current_dir(&cfg.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        process::pin_to_cpu(cmd, cpu)?;
        netns.configure(cmd);
        let shown = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {system}: {shown}"))?;
        let mut logs = launch.logs;
        logs.push(output);
        // From here on, Drop stops it whatever fails next.
        let mut peer = Peer {
            system,
            child,
            logs,
        };
        peer.wait_ready(netns, cfg.listen, launch.admin_address_file.as_deref())
            .with_context(|| format!("{system} did not start ({shown})\n{}", peer.log()))?;
        Ok(peer)
    }

    /// Every process of it: the one started and its descendants (nginx's
    /// master and worker).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(descendants(self.child.id()));
        pids
    }

    /// The end of each of its logs, for failure messages.
    pub(crate) fn log(&self) -> String {
        let mut text = String::new();
        for path in &self.logs {
            let _ = writeln!(text, "== {} ==", path.display());
            match fs::read(path) {
                Ok(bytes) => {
                    let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL)..];
                    text.push_str(String::from_utf8_lossy(tail).trim_end());
                    text.push('\n');
                }
                Err(err) => {
                    let _ = writeln!(text, "(unreadable: {err})");
                }
            }
        }
        text
    }

    /// Until the peer answers HTTP on `listen` (Envoy: once its admin's
    /// `/ready` answers 200, the server initialised), within
    /// [`wait::READY`]; an exit ends the wait at once.
    fn wait_ready(
        &mut self,
        netns: &Netns,
        listen: SocketAddrV4,
        admin_address_file: Option<&Path>,
    ) -> Result<()> {
        let mut admin_ready = admin_address_file.is_none();
        let what = match admin_address_file {
            Some(file) => format!(
                "its admin (address in {}) to answer GET /ready with 200, and an HTTP answer on {listen}",
                file.display()
            ),
            None => format!("an HTTP answer on {listen}"),
        };
        wait::until(&what, wait::READY, Duration::from_millis(20), || {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited with {status}");
            }
            if !admin_ready && let Some(file) = admin_address_file {
                admin_ready = envoy_admin_ready(netns, file);
            }
            Ok(if !admin_ready {
                Seen::Not("the admin not ready".into())
            } else if !answers_http(netns, listen) {
                Seen::Not(format!("no HTTP answer on {listen}"))
            } else {
                Seen::Ready(())
            })
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let pid = self.child.id();
        let family = descendants(pid);
        if let Ok(None) = self.child.try_wait() {
            let _ = process::signal(pid, libc::SIGTERM);
        }
        match process::wait_timeout(&mut self.child, STOP_TIMEOUT) {
            Ok(Some(_)) => {}
            _ => {
                eprintln!(
                    "bench: {} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}: killing it",
                    self.system
                );
                process::kill_and_reap(&mut self.child);
            }
        }
        // nginx's workers leave with their master on SIGTERM; after a
        // SIGKILL they would stay.
        for child in family {
            if process_alive(child) {
                let _ = process::signal(child, libc::SIGKILL);
            }
        }
    }
}

/// Whether the proxy at `addr` (inside `netns`) answers an HTTP request:
/// any status will do (an unknown host gets 404 from every peer, without
/// reaching an upstream). A TCP connect is not enough: the kernel
/// completes it on a listening socket before nginx has forked the worker
/// that will accept it.
fn answers_http(netns: &Netns, addr: SocketAddrV4) -> bool {
    netns
        .spawn(move || std::future::ready(http_status(addr.into(), "/")))
        .join()
        .ok()
        .flatten()
        .is_some()
}

/// Whether Envoy's admin (address in `file`, written once it listens)
/// answers `GET /ready` with 200: the server finished initialising.
fn envoy_admin_ready(netns: &Netns, file: &Path) -> bool {
    let Ok(text) = fs::read_to_string(file) else {
        return false;
    };
    let Ok(addr) = text.trim().parse::<std::net::SocketAddr>() else {
        return false;
    };
    netns
        .spawn(move || std::future::ready(http_status(addr, "/ready")))
        .join()
        .ok()
        .flatten()
        == Some(200)
}

/// The status of a one-shot `GET <path>`, `None` on any failure. HTTP/1.1:
/// Envoy answers HTTP/1.0 with 426.
fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every descendant of `pid` (children, their children, …) from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// The parent pid in `/proc/<pid>/stat` (the field after the `)` that ends
/// the command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    // A zombie is gone for our purpose: only its parent can reap it.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z"))
        })
        .unwrap_or(false)
}

/// A duration as nginx and HAProxy write it: whole milliseconds.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Whole seconds, rounded up, at least 1 (nginx's `fail_timeout` takes no
/// smaller unit).
fn seconds_up(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    format!("{}s", secs.max(1))
}
