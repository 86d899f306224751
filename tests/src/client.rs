//! Client processes (curl, getent, `rdt-client`) run the way an app would:
//! inside the test namespace and, when given, the test cgroup the
//! redirector is attached to. Every run is bounded by a timeout.
//!
//! [`Client`] adds a private `/etc/resolv.conf` (a mount namespace of the
//! child's own, set up in `pre_exec`) so glibc resolves through a test DNS
//! server without `ip netns exec`.

use std::{
    ffi::{CString, OsStr, OsString},
    net::IpAddr,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{cgroup::TestCgroup, netns::Netns, process, tempdir::TempDir};

/// Runs `program args…` inside `netns` (and `cgroup`), killing it after
/// `timeout` (an error that includes what it printed).
pub fn run(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Output> {
    let mut client = Client::new(netns, program);
    client.args(args).timeout(timeout);
    if let Some(cgroup) = cgroup {
        client.cgroup(cgroup);
    }
    client.run()
}

/// The `rdt-client` binary of this package: `$RDT_CLIENT_BIN`, else
/// `target/<profile>/rdt-client`.
///
/// # Panics
/// If it is not built (`cargo build -p redirector-tests --bins`).
pub fn rdt_client_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RDT_CLIENT_BIN") {
        return PathBuf::from(path);
    }
    process::target_bin("rdt-client").unwrap_or_else(|| {
        panic!("no rdt-client binary next to the test executable: build it with cargo build -p redirector-tests --bins")
    })
}

/// A client command with options beyond [`run`].
#[derive(Debug)]
pub struct Client<'a> {
    netns: &'a Netns,
    cgroup: Option<&'a TestCgroup>,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    resolv_conf: Option<Resolv>,
    timeout: Duration,
}

/// Where a client's private `/etc/resolv.conf` comes from.
#[derive(Debug)]
enum Resolv {
    /// Written to a temp file for the run.
    Text(String),
    /// An existing file (a pod's).
    File(PathBuf),
}

impl<'a> Client<'a> {
    /// `program` in `netns`, 10 s timeout.
    pub fn new(netns: &'a Netns, program: impl AsRef<OsStr>) -> Client<'a> {
        Client {
            netns,
            cgroup: None,
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            resolv_conf: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs the client inside `cgroup` too.
    pub fn cgroup(&mut self, cgroup: &'a TestCgroup) -> &mut Self {
        self.cgroup = Some(cgroup);
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Gives the child a private `/etc/resolv.conf` naming only this
    /// nameserver (port 53).
    pub fn nameserver(&mut self, ip: IpAddr) -> &mut Self {
        self.resolv_conf(&format!("nameserver {ip}\noptions timeout:2 attempts:2\n"))
    }

    /// Gives the child a private `/etc/resolv.conf` with this text.
    pub fn resolv_conf(&mut self, text: &str) -> &mut Self {
        self.resolv_conf = Some(Resolv::Text(text.to_owned()));
        self
    }

    /// Gives the child this file as its `/etc/resolv.conf` (bind-mounted
    /// in a mount namespace of its own).
    pub fn resolv_conf_file(&mut self, file: impl Into<PathBuf>) -> &mut Self {
        self.resolv_conf = Some(Resolv::File(file.into()));
        self
    }

    /// Kills the client after this long.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Runs to completion; `Ok` whatever the exit status, `Err` if it
    /// cannot start or times out.
    pub fn run(&self) -> Result<Output> {
        let shown = format!("{} {:?}", self.program.to_string_lossy(), self.args);
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cgroup) = self.cgroup {
            cgroup.configure(&mut cmd);
        }
        self.netns.configure(&mut cmd);
        let _resolv_dir = match &self.resolv_conf {
            Some(Resolv::Text(text)) => Some(private_resolv_conf(&mut cmd, text)?),
            Some(Resolv::File(file)) => {
                bind_resolv_conf(&mut cmd, file)?;
                None
            }
            None => None,
        };

        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {shown} in {}", self.netns.name()))?;
        let stdout = process::drain(child.stdout.take());
        let stderr = process::drain(child.stderr.take());
        let status = process::wait_timeout(&mut child, self.timeout)?;
        if status.is_none() {
            process::kill_and_reap(&mut child);
        }
        let output = Output {
            status: match status {
                Some(status) => status,
                None => child.wait()?,
            },
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        if status.is_none() {
            bail!(
                "{shown} timed out after {:?} in {}; stdout: {:?}; stderr: {:?}",
                self.timeout,
                self.netns.name(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }
}

/// Writes `text` as a resolv.conf and makes the child bind-mount it over
/// `/etc/resolv.conf` in a mount namespace of its own.
fn private_resolv_conf(cmd: &mut Command, text: &str) -> Result<TempDir> {
    let dir = TempDir::new("resolv")?;
    let file = dir.path().join("resolv.conf");
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    bind_resolv_conf(cmd, &file)?;
    Ok(dir)
}

/// Makes the child bind-mount `file` over `/etc/resolv.conf` in a mount
/// namespace of its own (the file must outlive the child's start).
pub(crate) fn bind_resolv_conf(cmd: &mut Command, file: &Path) -> Result<()> {
    let source = CString::new(file.as_os_str().as_bytes()).context("path with NUL")?;
    let target = c"/etc/resolv.conf";
    // SAFETY: unshare(2) and mount(2) are plain syscalls, async-signal-safe;
    // the CStrings were built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Keep our bind mount out of the parent's namespace.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
    Ok(())
}

/// `GET http://<host>/` with curl, as an app in `netns` and `cgroup` would
/// make it, with `<host>` resolved to `vip` the way DNS capture would (so
/// the request carries `Host: <host>`). `Ok(Ok((status, body)))` for any
/// HTTP answer; `Ok(Err(what curl said))` when there was none (refused,
/// reset, timed out); `Err` if curl could not be run.
pub fn http_get(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    host: &str,
    vip: &str,
    timeout: Duration,
) -> Result<std::result::Result<(u16, String), String>> {
    let mut client = Client::new(netns, "curl");
    client.args(["--resolve", &format!("{host}:80:{vip}")]);
    if let Some(cgroup) = cgroup {
        client.cgroup(cgroup);
    }
    curl(&mut client, &format!("http://{host}/"), timeout)
}

/// `curl http://<host>/` exactly as an app runs it: the name is resolved
/// by curl (glibc) through a private resolv.conf naming `nameserver`, so
/// with DNS capture the redirector's responder answers it. Results as for
/// [`http_get`].
pub fn http_get_by_name(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    host: &str,
    nameserver: IpAddr,
    timeout: Duration,
) -> Result<std::result::Result<(u16, String), String>> {
    let mut client = Client::new(netns, "curl");
    client.nameserver(nameserver);
    if let Some(cgroup) = cgroup {
        client.cgroup(cgroup);
    }
    curl(&mut client, &format!("http://{host}/"), timeout)
}

/// Runs `client` (curl, with what it was given) on `url`, bounded by
/// `timeout`. Results as for [`http_get`].
pub fn curl(
    client: &mut Client<'_>,
    url: &str,
    timeout: Duration,
) -> Result<std::result::Result<(u16, String), String>> {
    let max_time = timeout.as_secs().max(1).to_string();
    client
        .args(["-sS", "--max-time", &max_time, "-w", "\n%{http_code}", url])
        .timeout(timeout + Duration::from_secs(5));
    let out = client.run()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Ok(Err(format!(
            "curl {url} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    let (body, code) = stdout
        .rsplit_once('\n')
        .context("curl printed no status line")?;
    let status = code
        .parse()
        .with_context(|| format!("curl printed a bad status {code:?}"))?;
    Ok(Ok((status, body.to_owned())))
}

/// `rdt-load` (`cmd`: a command for its binary, [`rdt_load_bin`], placed
/// in the app's namespace and cgroup) against `vip`:80 with `Host:
/// mydb.com`: `rps` requests a second for `secs` seconds, with `more`
/// arguments (`--new-connections`, `--connections <n>`); one JSON record
/// per request, as `rdt-load` prints them.
pub fn rdt_load(
    mut cmd: Command,
    vip: &str,
    rps: u32,
    secs: f64,
    more: &[&str],
) -> Vec<serde_json::Value> {
    cmd.args([
        "--target",
        &format!("{vip}:80"),
        "--host",
        "mydb.com",
        "--rps",
        &rps.to_string(),
        "--duration",
        &secs.to_string(),
    ])
    .args(more)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = cmd.output().expect("running rdt-load");
    assert!(out.status.success(), "rdt-load: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The `rdt-load` binary.
pub fn rdt_load_bin() -> PathBuf {
    crate::upstream::bin_path("rdt-load").expect("rdt-load is built")
}
