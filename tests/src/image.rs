//! The DaemonSet's image, built and run on this machine with Debian's
//! podman and no registry (`tests/image.rs`, `cargo xtask image`).
//!
//! - The base: Debian 12 made by `debootstrap --variant=minbase
//!   --include=ca-certificates` from the mirror apt uses, trimmed of
//!   caches, docs and locales, kept as a tarball under [`CACHE_DIR`] with
//!   a stamp of its recipe, and imported once as [`BASE_IMAGE`] (labelled
//!   with the same stamp). Only the first run pays for it (about a
//!   minute); concurrent runs wait on a lock, and each builds aside and
//!   renames, so none sees half a base.
//! - The image: `deploy/Dockerfile` with `BASE` that base and `BINARY` the
//!   binary under test (its debug info stripped, symbols kept), from a
//!   context holding just that binary; nothing is pulled.
//! - Containers: `podman --runtime runc` (crun refuses this machine's
//!   hybrid cgroup layout) with explicit ulimits (podman's defaults exceed
//!   the machine's hard limits). Per-run images and containers are named
//!   after the test process (`redirector-test-<pid>-<n>`), removed on drop,
//!   and swept by [`sweep_stale`] when their owner died.

use std::{
    fs::{self, File},
    io::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{names, process, tempdir::TempDir};

/// Where the base tarball, its stamp and lock live, across runs.
pub const CACHE_DIR: &str = "/var/cache/redirector-test";
/// The base image, as imported.
pub const BASE_IMAGE: &str = "localhost/redirector-test-base-bookworm";
/// What the base is made of; a cache or image with another stamp is made
/// again.
const BASE_STAMP: &str = "bookworm-minbase-ca-certificates-trimmed-1";
/// Images built per run: `<IMAGE_REPO>:<pid>-<n>`.
pub const IMAGE_REPO: &str = "localhost/redirector-test-image";
/// Containers: `redirector-test-<pid>-<n>`.
const CONTAINER_PREFIX: &str = "redirector-test";

const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const PODMAN_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long a run waits for another to finish making the base.
const LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// `podman` with the runtime this machine needs.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

/// Limits for `podman build` and `run` within the machine's hard limits.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Runs `cmd` to its end within `timeout`, killing it after; its output,
/// or an error with the command, status and stderr.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    let stdout = process::drain(child.stdout.take());
    let stderr = process::drain(child.stderr.take());
    let Some(status) = process::wait_timeout(&mut child, timeout)? else {
        process::kill_and_reap(&mut child);
        bail!("{shown} did not finish within {timeout:?}");
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    Ok(out)
}

/// Like [`run_within`], failing unless the command succeeded; its stdout.
pub fn checked(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = run_within(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive `flock` on `path`, waited for up to [`LOCK_TIMEOUT`];
/// released when the file is dropped.
fn lock(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut said = false;
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if Instant::now() >= deadline {
            bail!(
                "{} stayed locked for {LOCK_TIMEOUT:?} (another run making the base?)",
                path.display()
            );
        }
        if !said {
            eprintln!(
                "image: waiting for another run to finish the base ({})",
                path.display()
            );
            said = true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(file)
}

/// The Debian mirror apt uses for bookworm (deb822 `.sources` or one-line
/// `sources.list`), else Debian's own.
fn mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "sources" || x == "list")
            {
                texts.push(fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    mirror_from(&texts).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn mirror_from(texts: &[String]) -> Option<String> {
    for text in texts {
        // deb822: stanzas separated by blank lines.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
                && suites.split_whitespace().any(|s| s == "bookworm")
                && !stanza.lines().any(|l| l.trim() == "Enabled: no")
            {
                return uris.split_whitespace().next().map(str::to_owned);
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == "bookworm" {
                return Some(words[1].to_owned());
            }
        }
    }
    None
}

/// The base image, made (and cached) if needed.
pub fn base_image() -> Result<String> {
    let cache = Path::new(CACHE_DIR);
    fs::create_dir_all(cache).with_context(|| format!("creating {CACHE_DIR}"))?;
    let _lock = lock(&cache.join("base.lock"))?;
    // Only the lock's holder makes files aside: any left is a killed run's.
    for entry in fs::read_dir(cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".root") || name.ends_with(".tmp") {
            let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
        }
    }
    let tar = cache.join("base-bookworm.tar");
    let stamp = cache.join("base-bookworm.stamp");
    let cached = tar.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == BASE_STAMP);
    if !cached {
        make_base(cache, &tar, &stamp)?;
    }
    let label = checked(
        podman().args([
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"redirector.stamp\"}}",
            BASE_IMAGE,
        ]),
        PODMAN_TIMEOUT,
    )
    .unwrap_or_default();
    if label.trim() != BASE_STAMP || !cached {
        let start = Instant::now();
        checked(
            podman()
                .args(["import", "--change"])
                .arg(format!("LABEL redirector.stamp={BASE_STAMP}"))
                .arg(&tar)
                .arg(BASE_IMAGE),
            PODMAN_TIMEOUT,
        )?;
        eprintln!(
            "image: imported {} as {BASE_IMAGE} in {:.1} s",
            tar.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(BASE_IMAGE.to_owned())
}

/// debootstrap into a directory aside, trim, tar aside, rename; the stamp
/// last.
fn make_base(cache: &Path, tar: &Path, stamp: &Path) -> Result<()> {
    let start = Instant::now();
    let root = cache.join(format!("base-bookworm.{}.root", std::process::id()));
    let mirror = mirror();
    eprintln!("image: making the base with debootstrap from {mirror} (once; about a minute)");
    let made = (|| {
        checked(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--include=ca-certificates", "bookworm"])
                .arg(&root)
                .arg(&mirror),
            DEBOOTSTRAP_TIMEOUT,
        )
        .context("debootstrap (cargo xtask setup installs it)")?;
        // What debian:bookworm-slim leaves out too.
        for dir in [
            "var/cache/apt",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ] {
            let path = root.join(dir);
            if let Ok(entries) = fs::read_dir(&path) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
        }
        let aside = tar.with_extension(format!("tar.{}.tmp", std::process::id()));
        checked(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&aside)
                .arg("."),
            DEBOOTSTRAP_TIMEOUT,
        )?;
        fs::rename(&aside, tar).with_context(|| format!("renaming to {}", tar.display()))?;
        let stamp_aside = stamp.with_extension("tmp");
        let mut f = File::create(&stamp_aside)?;
        writeln!(f, "{BASE_STAMP}")?;
        f.sync_all()?;
        fs::rename(&stamp_aside, stamp)?;
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&root);
    made?;
    eprintln!(
        "image: base made in {:.0} s, cached in {}",
        start.elapsed().as_secs_f64(),
        tar.display()
    );
    Ok(())
}

/// An image built from `deploy/Dockerfile`; removed on drop when it was
/// built for this run.
#[derive(Debug)]
pub struct Image {
    name: String,
    owned: bool,
}

impl Image {
    /// `repo:tag`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes, as podman counts it (every layer, the base's too).
    pub fn size(&self) -> Result<u64> {
        let out = checked(
            podman().args(["image", "inspect", "--format", "{{.Size}}", &self.name]),
            PODMAN_TIMEOUT,
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("podman's size of {}: {out:?}", self.name))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.owned {
            let _ = run_within(
                podman().args(["rmi", "--force", &self.name]),
                PODMAN_TIMEOUT,
            );
        }
    }
}

/// The workspace's `deploy/Dockerfile`.
pub fn dockerfile() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile")
}

/// Builds the image of `binary` on the cached base: as `name` (kept), or
/// under a name of this run (removed on drop) when `None`.
pub fn build(binary: &Path, name: Option<&str>) -> Result<Image> {
    let base = base_image()?;
    let context = TempDir::new("image")?;
    let copy = context.path().join("redirector");
    // Debug info out (a debug build is mostly that), symbols kept.
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(binary, &copy)
            .with_context(|| format!("copying {} into the build context", binary.display()))?;
    }
    let image = Image {
        name: name.map_or_else(
            || format!("{IMAGE_REPO}:{}-{}", std::process::id(), names::next_id()),
            str::to_owned,
        ),
        owned: name.is_none(),
    };
    let start = Instant::now();
    checked(
        podman()
            .arg("build")
            .args(ULIMITS)
            // No cached intermediate images left behind per run.
            .arg("--layers=false")
            .arg("-f")
            .arg(dockerfile())
            .arg("--build-arg")
            .arg(format!("BASE={base}"))
            .args(["--build-arg", "BINARY=redirector", "-t", &image.name])
            .arg(context.path()),
        PODMAN_TIMEOUT,
    )
    .context("podman build -f deploy/Dockerfile")?;
    eprintln!(
        "image: built {} from {} in {:.1} s",
        image.name,
        binary.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// How a container runs: a pod's container spec, in podman's words.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    /// Added after `--cap-drop all`, without the `CAP_` prefix.
    pub caps: Vec<String>,
    pub host_network: bool,
    pub host_pid: bool,
    pub read_only: bool,
    pub no_new_privs: bool,
    pub user: Option<u32>,
    /// (host path, container path, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    pub env: Vec<(String, String)>,
    /// Replaces the image's entrypoint (a pod's `command`).
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
}

/// A container of this run, removed on drop.
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// Starts `spec` from `image`, detached.
    pub fn start(image: &str, spec: &RunSpec) -> Result<Container> {
        let name = names::unique(CONTAINER_PREFIX);
        let mut cmd = podman();
        cmd.args(["run", "--detach", "--name", &name])
            .args(ULIMITS)
            .args(["--cap-drop", "all"]);
        for cap in &spec.caps {
            cmd.args(["--cap-add", cap]);
        }
        if spec.host_network {
            cmd.args(["--network", "host"]);
        }
        if spec.host_pid {
            cmd.args(["--pid", "host"]);
        }
        if spec.read_only {
            cmd.arg("--read-only");
        }
        if spec.no_new_privs {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        if let Some(uid) = spec.user {
            cmd.args(["--user", &uid.to_string()]);
        }
        for (host, inside, ro) in &spec.mounts {
            cmd.arg("--volume").arg(format!(
                "{}:{inside}{}",
                host.display(),
                if *ro { ":ro" } else { "" }
            ));
        }
        for (k, v) in &spec.env {
            cmd.args(["--env", &format!("{k}={v}")]);
        }
        let mut args = spec.args.clone();
        if let Some(command) = &spec.command {
            let (first, rest) = command.split_first().context("an empty command")?;
            cmd.args(["--entrypoint", first]);
            args = rest.iter().cloned().chain(args).collect();
        }
        cmd.arg(image).args(&args);
        let container = Container { name };
        checked(&mut cmd, PODMAN_TIMEOUT).context("podman run")?;
        Ok(container)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman inspect` of one field.
    fn inspect(&self, format: &str) -> Result<String> {
        Ok(checked(
            podman().args(["inspect", "--format", format, &self.name]),
            PODMAN_TIMEOUT,
        )?
        .trim()
        .to_owned())
    }

    /// Its exit code once it exited within `timeout`; `None` if it runs on.
    pub fn wait(&self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inspect("{{.State.Status}}")? == "exited" {
                let code = self.inspect("{{.State.ExitCode}}")?;
                return Ok(Some(code.parse().context("an exit code")?));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether it still runs.
    pub fn running(&self) -> Result<bool> {
        Ok(self.inspect("{{.State.Status}}")? == "running")
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        run_within(podman().args(["logs", &self.name]), PODMAN_TIMEOUT).map_or_else(
            |e| format!("<no logs: {e:#}>"),
            |o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            },
        )
    }

    /// Runs `args` inside it (as a probe's `exec` does).
    pub fn exec(&self, args: &[String]) -> Result<Output> {
        run_within(
            podman().arg("exec").arg(&self.name).args(args),
            PODMAN_TIMEOUT,
        )
    }

    /// SIGTERM, then SIGKILL after `grace`, as the kubelet stops a pod; the
    /// exit code.
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        checked(
            podman().args(["stop", "--time", &grace.as_secs().to_string(), &self.name]),
            grace + PODMAN_TIMEOUT,
        )?;
        self.wait(PODMAN_TIMEOUT)?
            .context("podman stop returned, the container still runs")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("testbed: logs of container {}:\n{}", self.name, self.logs());
        }
        let _ = run_within(
            podman().args(["rm", "--force", "--time", "0", &self.name]),
            PODMAN_TIMEOUT,
        );
    }
}

/// Removes containers and per-run images whose test process is gone;
/// nothing when podman is not installed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(out) = run_within(
        podman().args(["ps", "--all", "--format", "{{.Names}}"]),
        PODMAN_TIMEOUT,
    ) else {
        return Ok(removed);
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        if names::owner_pid(name, CONTAINER_PREFIX).is_some_and(|pid| !names::pid_alive(pid)) {
            checked(
                podman().args(["rm", "--force", "--time", "0", name]),
                PODMAN_TIMEOUT,
            )?;
            removed.push(format!("container {name}"));
        }
    }
    let out = checked(
        podman().args(["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        PODMAN_TIMEOUT,
    )?;
    for image in out.lines() {
        let Some(tag) = image.strip_prefix(&format!("{IMAGE_REPO}:")) else {
            continue;
        };
        let owner = tag.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !names::pid_alive(pid)) {
            checked(podman().args(["rmi", "--force", image]), PODMAN_TIMEOUT)?;
            removed.push(format!("image {image}"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_apts() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://security.example\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from(&[deb822.into()]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let list = "# comment\ndeb [arch=amd64] http://ftp.example/debian bookworm main\n";
        assert_eq!(
            mirror_from(&[String::new(), list.into()]).as_deref(),
            Some("http://ftp.example/debian")
        );
        assert_eq!(mirror_from(&["deb http://x trixie main".into()]), None);
    }
}
