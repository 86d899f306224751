//! The redirector daemon under test, run as a child process inside a test
//! namespace (entered with `setns(2)` in `pre_exec`, so `/sys/fs/cgroup` and
//! `/sys/fs/bpf` stay visible) and optionally inside a test cgroup.
//!
//! Its stdout and stderr go to a log file; [`Daemon::start`] returns once
//! the log says `redirector ready`, or fails with the log if the process
//! exits or the deadline passes. Drop kills and reaps it and, if the test
//! is failing, prints the log. Pin directories for tests live under
//! `/sys/fs/bpf/redirector-test-<pid>-<n>` and are removed by
//! [`PinDirGuard`].

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cgroup::TestCgroup, names, netns::Netns, process, tempdir::TempDir};

/// The line the daemon logs once its programs are attached and its
/// listeners are up.
pub const READY_LINE: &str = "redirector ready";

/// Where bpffs is mounted (`cargo xtask setup` mounts it).
pub const BPFFS: &str = "/sys/fs/bpf";

/// The `redirector` binary: `$REDIRECTOR_BIN`, else `target/<profile>/redirector`
/// next to the running test or xtask executable.
///
/// # Panics
/// If neither exists: build it first.
pub fn redirector_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIRECTOR_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "REDIRECTOR_BIN={} does not exist: build it with cargo build -p redirector-user",
            path.display()
        );
        return path;
    }
    process::target_bin("redirector").unwrap_or_else(|| {
        panic!(
            "no redirector binary next to {:?}: build it with cargo build -p redirector-user \
             (or set REDIRECTOR_BIN)",
            std::env::current_exe().ok()
        )
    })
}

/// How to start a [`Daemon`].
#[derive(Debug)]
pub struct DaemonOptions<'a> {
    /// The namespace the daemon runs in.
    pub netns: &'a Netns,
    /// A cgroup the daemon process itself joins (not the one it attaches to;
    /// that one is passed in `args`).
    pub cgroup: Option<&'a TestCgroup>,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// How long to wait for [`READY_LINE`].
    pub ready_timeout: Duration,
    /// Environment variables set for the daemon, on top of the test's own.
    pub env: Vec<(String, String)>,
}

/// A running daemon; killed and reaped on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    program: PathBuf,
    log_path: PathBuf,
    // Last: the log is kept if a test panics.
    dir: TempDir,
}

impl Daemon {
    /// Starts [`redirector_bin`] and waits until it is ready.
    pub fn start(opts: DaemonOptions<'_>) -> Result<Daemon> {
        Daemon::start_program(&redirector_bin(), opts)
    }

    /// Starts `program` as the daemon (the bed's own tests use a script).
    pub fn start_program(program: &Path, opts: DaemonOptions<'_>) -> Result<Daemon> {
        let dir = TempDir::new("daemon")?;
        let log_path = dir.path().join("redirector.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(&opts.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log fd")?)
            .stderr(log);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(cgroup) = opts.cgroup {
            cgroup.configure(&mut cmd);
        }
        opts.netns.configure(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {}", program.display(), opts.netns.name()))?;
        let mut daemon = Daemon {
            child,
            program: program.to_owned(),
            log_path,
            dir,
        };
        daemon.wait_ready(opts.ready_timeout)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(READY_LINE) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {READY_LINE:?}; its log:\n{}",
                    self.program.display(),
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                process::kill_and_reap(&mut self.child);
                bail!(
                    "{} did not log {READY_LINE:?} within {timeout:?}; its log:\n{}",
                    self.program.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map_or_else(
            |err| format!("<cannot read {}: {err}>", self.log_path.display()),
            |bytes| String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL (a crash), then reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("sending SIGKILL to the daemon")?;
        }
        Ok(self.child.wait()?)
    }

    /// SIGTERM, wait up to 10 s for a clean exit, then SIGKILL.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        process::signal(self.pid(), libc::SIGTERM).context("sending SIGTERM to the daemon")?;
        match process::wait_timeout(&mut self.child, Duration::from_secs(10))? {
            Some(status) => Ok(status),
            None => {
                eprintln!("testbed: daemon ignored SIGTERM for 10 s, killing it");
                self.kill()
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "testbed: log of {} (pid {}) in {}:\n{}",
                self.program.display(),
                self.child.id(),
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// A fresh, not yet created, pin directory
/// `/sys/fs/bpf/redirector-test-<pid>-<n>`.
pub fn pin_dir_for_test() -> PathBuf {
    Path::new(BPFFS).join(names::unique(names::PIN_PREFIX))
}

/// Removes a pin directory (recursively) on drop, if it exists. The daemon
/// pins its cgroup links there too, and unpinning a link whose daemon is
/// gone detaches its program, so this also leaves nothing attached.
#[derive(Debug)]
pub struct PinDirGuard {
    path: PathBuf,
}

impl PinDirGuard {
    /// Guards `path`.
    pub fn new(path: impl Into<PathBuf>) -> PinDirGuard {
        PinDirGuard { path: path.into() }
    }

    /// Guards a fresh [`pin_dir_for_test`].
    pub fn for_test() -> PinDirGuard {
        PinDirGuard::new(pin_dir_for_test())
    }

    /// The guarded directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("testbed: cannot remove {}: {err}", self.path.display());
            }
            _ => {}
        }
    }
}
