//! `rdt-upstream` processes for the benchmark: the one upstream every
//! system under test sits in front of, run as a separate process so it can
//! be pinned to a core, measured apart from the harness, and killed for
//! real (the "primary killed" fault) and started again.
//!
//! The child enters the namespace with `setns(2)` in `pre_exec` (like
//! [`Netns::configure`], but keeping only the namespace's descriptor, so an
//! [`UpstreamProcess`] does not borrow the [`Netns`] and can restart on its
//! own) and is pinned to its CPU there too. [`UpstreamProcess::start`]
//! returns once the child printed `listening on <addr>`.
//! [`UpstreamProcess::stats`] reads its counters (connections, TLS
//! handshakes full and resumed, requests) from its `--stats` socket.

mod stats;

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    os::{
        fd::OwnedFd,
        unix::{net::UnixStream, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

pub use self::stats::UpstreamStats;
use crate::{
    names,
    netns::{self, Netns},
    process,
    tempdir::TempDir,
};

/// How long a starting upstream may take to print its `listening` line:
/// well under a second when idle, but the benchmark starts (and restarts)
/// them on a machine that may be busy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the counters may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// A binary of this package: `$<NAME>_BIN` (`rdt-upstream` →
/// `RDT_UPSTREAM_BIN`), else `target/<profile>/<name>` next to the running
/// test or xtask executable.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{var}={} does not exist", path.display());
        }
        return Ok(path);
    }
    process::target_bin(name).with_context(|| {
        format!(
            "no {name} binary next to {:?}: build it with cargo build -p redirector-tests --bins (or set {var})",
            std::env::current_exe().ok()
        )
    })
}

/// A running `rdt-upstream`; killed and reaped on drop.
#[derive(Debug)]
pub struct UpstreamProcess {
    child: Child,
    addr: SocketAddr,
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    netns_name: String,
    netns_fd: Arc<OwnedFd>,
    cpu: Option<u32>,
    /// Holds the `--stats` socket; removed after the child is killed.
    stats_dir: TempDir,
}

impl UpstreamProcess {
    /// Starts `rdt-upstream` listening on `addr` inside `netns`, answering
    /// `healthy: <name>` with `body_bytes`-byte bodies, over HTTPS with
    /// `tls = Some((cert_pem_path, key_pem_path))`, pinned to `cpu`.
    pub fn start(
        netns: &Netns,
        addr: SocketAddr,
        name: &str,
        body_bytes: usize,
        tls: Option<(&Path, &Path)>,
        cpu: Option<u32>,
    ) -> Result<UpstreamProcess> {
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            addr.to_string().into(),
            "--name".into(),
            name.into(),
            "--body-bytes".into(),
            body_bytes.to_string().into(),
        ];
        if let Some((cert, key)) = tls {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
        }
        let stats_dir = TempDir::new("upstream")?;
        args.extend(["--stats".into(), stats_dir.path().join("stats.sock").into()]);
        let program = bin_path("rdt-upstream")?;
        let netns_fd = Arc::clone(netns.fd());
        let (child, addr) = spawn(&program, &args, netns.name(), &netns_fd, cpu, name)?;
        Ok(UpstreamProcess {
            child,
            addr,
            name: name.to_owned(),
            program,
            args,
            netns_name: netns.name().to_owned(),
            netns_fd,
            cpu,
            stats_dir,
        })
    }

    /// The bound address (the real port if started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name in its bodies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `503`: answer `503 from <name>` from now on (SIGUSR1); `200`: back
    /// to healthy (SIGUSR2). Takes effect as soon as the process handles
    /// the signal, well under a millisecond on an idle core.
    pub fn set_status(&mut self, status: u16) -> Result<()> {
        let signal = match status {
            503 => libc::SIGUSR1,
            200 => libc::SIGUSR2,
            _ => bail!("rdt-upstream answers 200 or 503, not {status}"),
        };
        if self.child.try_wait()?.is_some() {
            bail!("upstream {} (pid {}) is not running", self.name, self.pid());
        }
        process::signal(self.pid(), signal)
            .with_context(|| format!("signalling upstream {} (pid {})", self.name, self.pid()))
    }

    /// Its counters since it (last) started.
    pub fn stats(&self) -> Result<UpstreamStats> {
        let path = self.stats_dir.path().join("stats.sock");
        let read = || -> std::io::Result<String> {
            let mut stream = UnixStream::connect(&path)?;
            stream.set_read_timeout(Some(STATS_TIMEOUT))?;
            let mut line = String::new();
            stream.read_to_string(&mut line)?;
            Ok(line)
        };
        let line = read().with_context(|| {
            format!(
                "reading the counters of upstream {} (pid {}) from {}",
                self.name,
                self.pid(),
                path.display()
            )
        })?;
        UpstreamStats::parse(&line)
            .with_context(|| format!("the counters of upstream {}", self.name))
    }

    /// SIGKILL and reap: connections reset, connects refused until
    /// [`UpstreamProcess::restart`].
    pub fn kill(&mut self) {
        process::kill_and_reap(&mut self.child);
    }

    /// Starts the upstream again with the same arguments (killing it first
    /// if it still runs), on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let listen = self.addr.to_string();
        // Port 0 was resolved at the first start: keep the same port.
        if let Some(arg) = self.args.get_mut(1) {
            *arg = listen.into();
        }
        let (child, addr) = spawn(
            &self.program,
            &self.args,
            &self.netns_name,
            &self.netns_fd,
            self.cpu,
            &self.name,
        )?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
    }
}

/// Spawns the upstream and waits for its `listening on <addr>` line.
fn spawn(
    program: &Path,
    args: &[OsString],
    netns_name: &str,
    netns_fd: &Arc<OwnedFd>,
    cpu: Option<u32>,
    name: &str,
) -> Result<(Child, SocketAddr)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(names::OWNER_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let fd = Arc::clone(netns_fd);
    // SAFETY: the closure only calls setns(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(move || netns::enter(&fd)) };
    if let Some(cpu) = cpu {
        process::pin_to_cpu(&mut cmd, cpu)?;
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {netns_name}", program.display()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    // Reads the first line, then drains stdout until the process exits, so
    // the child never writes into a closed pipe.
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(line)) => line,
        Ok(Err(err)) => {
            process::kill_and_reap(&mut child);
            bail!("upstream {name}: reading its stdout: {err}");
        }
        Err(_) => {
            process::kill_and_reap(&mut child);
            bail!("upstream {name} did not say it listens within {READY_TIMEOUT:?}");
        }
    };
    match line.trim().strip_prefix("listening on ").map(str::parse) {
        Some(Ok(addr)) => Ok((child, addr)),
        _ => {
            let status = process::wait_timeout(&mut child, Duration::from_millis(500));
            process::kill_and_reap(&mut child);
            bail!(
                "upstream {name} in {netns_name} did not start (exit: {status:?}, printed {line:?}; \
                 its stderr is above)"
            );
        }
    }
}

/// Root: namespaces. Needs the package's binaries, which `cargo test`
/// builds for the integration tests of this package.
#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Instant};

    use serde_json::Value;

    use super::*;
    use crate::client::Client;

    /// One line of rdt-load's output.
    #[derive(Debug)]
    struct Line {
        t_ms: f64,
        latency_ms: f64,
        status: u64,
        served_by: String,
        error: String,
    }

    /// Runs rdt-load against `target` at 200 rps for 2 s, and `during()`
    /// on this thread meanwhile.
    fn timeline(netns: &Netns, target: SocketAddr, during: impl FnOnce()) -> Vec<Line> {
        let bin = bin_path("rdt-load").expect("rdt-load is built");
        let output = thread::scope(|scope| {
            let load = scope.spawn(|| {
                Client::new(netns, &bin)
                    .args(["--target", &target.to_string(), "--host", "plain.test"])
                    .args(["--rps", "200", "--duration", "2", "--timeout", "5"])
                    .timeout(Duration::from_secs(15))
                    .run()
            });
            during();
            load.join().expect("the rdt-load thread")
        })
        .expect("rdt-load runs");
        assert!(output.status.success(), "rdt-load: {output:?}");
        String::from_utf8(output.stdout)
            .expect("UTF-8")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                Line {
                    t_ms: v["t_ms"].as_f64().expect("t_ms"),
                    latency_ms: v["latency_ms"].as_f64().expect("latency_ms"),
                    status: v["status"].as_u64().expect("status"),
                    served_by: v["served_by"].as_str().expect("served_by").to_owned(),
                    error: v["error"].as_str().expect("error").to_owned(),
                }
            })
            .collect()
    }

    fn ok(line: &Line) -> bool {
        line.status == 200 && line.served_by == "east.test" && line.error.is_empty()
    }

    fn sleep_until(at: Instant) {
        thread::sleep(at.saturating_duration_since(Instant::now()));
    }

    /// When `up` got a request beyond its first `before`: rdt-load's
    /// clock (`t_ms`) started then, give or take a connect, however long
    /// the process took to start on a loaded machine.
    fn first_request(up: &UpstreamProcess, before: u64) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if up.stats().expect("the counters").requests > before {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "rdt-load sent nothing");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn rdt_load_records_every_request_through_503_kill_and_restart() {
        let netns = Netns::new("upstream").expect("a namespace");
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut up = UpstreamProcess::start(&netns, any, "east.test", 1024, None, None)
            .expect("the upstream starts");
        let target = up.addr();
        assert_ne!(target.port(), 0);

        // Healthy: 400 requests, on schedule, all answered by the upstream.
        let lines = timeline(&netns, target, || {});
        assert_eq!(lines.len(), 400);
        for (i, line) in lines.iter().enumerate() {
            assert!(ok(line), "{i}: {line:?}");
            assert!((line.t_ms - i as f64 * 5.0).abs() < 1e-6, "{i}: {line:?}");
            assert!(line.latency_ms < 100.0, "{i}: {line:?}");
        }
        let stats = up.stats().expect("the counters");
        assert_eq!(stats.requests, 400, "{stats:?}");
        assert!(stats.connections >= 1, "{stats:?}");
        assert_eq!(
            (stats.tls_full, stats.tls_resumed, stats.tls_failed),
            (0, 0, 0),
            "plain HTTP: {stats:?}"
        );

        // 503 from halfway: one switch from 200 to 503, near 1 s.
        let before = up.stats().expect("the counters").requests;
        let lines = timeline(&netns, target, || {
            let started = first_request(&up, before);
            sleep_until(started + Duration::from_secs(1));
            up.set_status(503).expect("SIGUSR1");
        });
        up.set_status(200).expect("SIGUSR2");
        assert_eq!(lines.len(), 400);
        let switch = lines
            .iter()
            .position(|l| l.status == 503)
            .expect("503s after the switch");
        assert!(lines[..switch].iter().all(ok), "{lines:?}");
        assert!(
            lines[switch..]
                .iter()
                .all(|l| l.status == 503 && l.served_by.is_empty() && l.error.is_empty()),
            "{lines:?}"
        );
        let at = lines[switch].t_ms;
        assert!((800.0..1300.0).contains(&at), "switched at {at} ms");

        // Killed at 1 s, back at 1.5 s: errors in between, then recovery.
        let first_pid = up.pid();
        let before = up.stats().expect("the counters").requests;
        let lines = timeline(&netns, target, || {
            let started = first_request(&up, before);
            sleep_until(started + Duration::from_secs(1));
            up.kill();
            sleep_until(started + Duration::from_millis(1500));
            up.restart().expect("the upstream restarts");
        });
        assert_ne!(up.pid(), first_pid);
        assert_eq!(up.addr(), target);
        assert_eq!(lines.len(), 400);
        let failed: Vec<&Line> = lines.iter().filter(|l| !ok(l)).collect();
        assert!(!failed.is_empty(), "no request failed while it was dead");
        for line in &failed {
            assert_eq!(line.status, 0, "{line:?}");
            assert!(!line.error.is_empty(), "{line:?}");
            assert!((800.0..1800.0).contains(&line.t_ms), "{line:?}");
        }
        assert!(lines[..150].iter().all(ok), "{lines:?}");
        assert!(lines[360..].iter().all(ok), "no recovery: {lines:?}");
        // The new process counts from zero, on the same socket path.
        let stats = up.stats().expect("the restarted upstream's counters");
        assert!(
            (40..400).contains(&stats.requests),
            "only what came after the restart: {stats:?}"
        );
        eprintln!(
            "killed: {} of 400 failed, first {:?}",
            failed.len(),
            failed.first()
        );
    }

    #[test]
    fn tls_upstream_and_bad_arguments() {
        let netns = Netns::new("upstream").expect("a namespace");
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let ca = crate::pki::TestCa::new();
        let (cert, key) = ca.leaf(&["tls.test"]);
        let dir = crate::tempdir::TempDir::new("upstream").expect("a temp dir");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let up = UpstreamProcess::start(
            &netns,
            any,
            "tls.east",
            1024,
            Some((&cert_path, &key_path)),
            Some(0),
        )
        .expect("the TLS upstream starts");
        let ca_path = ca.write_ca(dir.path());
        let resolve = format!("tls.test:{}:127.0.0.1", up.addr().port());
        let url = format!("https://tls.test:{}/", up.addr().port());
        let out = Client::new(&netns, "curl")
            .args(["-sS", "--cacert"])
            .args([&ca_path])
            .args([
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{size_download} %{http_version}",
                &url,
            ])
            .run()
            .expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.starts_with("healthy: tls.east\n..."), "{stdout}");
        assert!(stdout.ends_with("\n200 1024 1.1"), "{stdout}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", up.pid())).unwrap();
        assert!(status.contains("Cpus_allowed_list:\t0\n"), "{status}");
        let first = up.stats().expect("the counters");
        assert_eq!(
            (
                first.connections,
                first.tls_full,
                first.tls_resumed,
                first.requests
            ),
            (1, 1, 0, 1),
            "{first:?}"
        );

        // One curl, three connections (the server closes each): curl
        // resumes its session on the second and third.
        let out = Client::new(&netns, "curl")
            .args(["-sS", "--cacert"])
            .args([&ca_path])
            .args(["--resolve", &resolve, "-H", "Connection: close"])
            .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
            .args([&url, &url, &url])
            .run()
            .expect("curl runs");
        assert!(out.status.success(), "{out:?}");
        // Plain HTTP to the TLS port: a failed handshake.
        let plain = format!("http://tls.test:{}/", up.addr().port());
        let out = Client::new(&netns, "curl")
            .args(["-sS", "--max-time", "5", "--resolve", &resolve, &plain])
            .run()
            .expect("curl runs");
        assert!(!out.status.success(), "{out:?}");
        let stats = up.stats().expect("the counters").since(&first);
        assert_eq!(
            stats,
            UpstreamStats {
                connections: 4,
                tls_failed: 1,
                tls_full: 1,
                tls_hello_retry: 0,
                tls_resumed: 2,
                tls_full_used: 1,
                tls_resumed_used: 2,
                requests: 3,
            }
        );

        let err = UpstreamProcess::start(&netns, any, "a-long-name", 8, None, None).unwrap_err();
        assert!(format!("{err:#}").contains("did not start"), "{err:#}");
    }
}
