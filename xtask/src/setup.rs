//! `cargo xtask setup`: installs what building and testing need, and only
//! what is missing, so a second run costs a few probes (well under a
//! second). One line per item says `present` or `installed`.
//!
//! - nightly with `rust-src` (aya-build builds the kernel programs with
//!   `-Z build-std=core`) and `clippy` (the eBPF crate is linted with it);
//! - stable `rustfmt` and `clippy` (`cargo xtask test` runs both);
//! - Debian packages: LLVM 22 and friends for bpf-linker, iproute2, curl,
//!   dig (bind9-dnsutils), python3 and the CNI plugins
//!   (containernetworking-plugins, in [`CNI_PLUGIN_DIR`]: the test bed
//!   builds pods with them) for the tests (from bookworm-security, hence
//!   `apt-get update`), podman, runc and debootstrap for the image test;
//! - bpf-linker 0.13.0 built against LLVM 22;
//! - cargo-fuzz (`cargo xtask fuzz`, and the fuzz step of `cargo xtask
//!   test`);
//! - bpffs mounted at `/sys/fs/bpf` (pins live there);
//! - `kubernetes-validate` (PyPI, with the Kubernetes schemas bundled) in a
//!   venv at [`TOOLS_VENV`], for checking `deploy/` offline.

use std::{path::Path, time::Instant};

use anyhow::{Result, bail};

use crate::cmd::{self, command, probe};

const PACKAGES: [&str; 11] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "curl",
    // DNS capture's tests: `dig` (UDP and TCP) and Python's resolver calls.
    "bind9-dnsutils",
    "python3",
    // The test bed's pods: bridge, host-local, loopback, run as a
    // container runtime runs them.
    "containernetworking-plugins",
    // The DaemonSet's image (tests/image.rs, `cargo xtask image`): podman
    // builds and runs it with runc (crun refuses this machine's cgroup
    // layout) on a Debian base debootstrap makes; no registry needed.
    "podman",
    "runc",
    "debootstrap",
];
/// Where Debian's containernetworking-plugins puts the plugins (the test
/// bed's `pod::CNI_PLUGIN_DIR`; upstream's tarball uses /opt/cni/bin).
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where the Python test tools live (the deploy tests run them from here).
pub(crate) const TOOLS_VENV: &str = "/opt/redirector-tools/venv";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const BPFFS: &str = "/sys/fs/bpf";

pub(crate) fn run() -> Result<()> {
    cmd::require_root("setup")?;
    let start = Instant::now();
    nightly()?;
    stable_components()?;
    packages()?;
    bpf_linker()?;
    crate::fuzz::install()?;
    bpffs()?;
    kubernetes_validate()?;
    eprintln!("setup: done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn report(item: &str, installed: bool) {
    eprintln!(
        "setup: {item}: {}",
        if installed { "installed" } else { "present" }
    );
}

fn nightly() -> Result<()> {
    const WANTED: [&str; 2] = ["rust-src", "clippy"];
    let item = "nightly toolchain with rust-src, clippy";
    let listed = probe(command("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    let Some(listed) = listed else {
        cmd::run(command("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
        report(item, true);
        return Ok(());
    };
    // Installed components read `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = WANTED
        .into_iter()
        .filter(|want| {
            !listed
                .lines()
                .any(|l| l == *want || l.starts_with(&format!("{want}-")))
        })
        .collect();
    if !missing.is_empty() {
        cmd::run(
            command("rustup")
                .args(["component", "add", "--toolchain", "nightly"])
                .args(&missing),
        )?;
    }
    report(item, !missing.is_empty());
    Ok(())
}

fn stable_components() -> Result<()> {
    let fmt = probe(command("cargo").args(["fmt", "--version"])).is_some();
    let clippy = probe(command("cargo").args(["clippy", "--version"])).is_some();
    if !(fmt && clippy) {
        cmd::run(command("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    report("rustfmt, clippy", !(fmt && clippy));
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

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| !package_installed(p))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    for package in PACKAGES {
        report(package, missing.contains(&package));
    }
    let bridge = Path::new(CNI_PLUGIN_DIR).join("bridge");
    if !bridge.is_file() {
        bail!(
            "containernetworking-plugins is installed but {} is missing: where did this Debian put the plugins?",
            bridge.display()
        );
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    probe(command("bpf-linker").arg("--version"))
        .is_some_and(|v| v.split_whitespace().any(|word| word == BPF_LINKER_VERSION))
}

fn bpf_linker() -> Result<()> {
    let item = format!("bpf-linker {BPF_LINKER_VERSION}");
    if bpf_linker_ok() {
        report(&item, false);
        return Ok(());
    }
    cmd::run(
        command("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} installed but `bpf-linker --version` disagrees: is ~/.cargo/bin on PATH?"
        );
    }
    report(&item, true);
    Ok(())
}

fn bpffs() -> Result<()> {
    let item = format!("bpffs at {BPFFS}");
    let mounted = redirector_tests::mounts::mount_points("bpf")?
        .iter()
        .any(|p| p == Path::new(BPFFS));
    if !mounted {
        cmd::run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    report(&item, !mounted);
    Ok(())
}

fn kubernetes_validate() -> Result<()> {
    let bin = format!("{TOOLS_VENV}/bin/kubernetes-validate");
    let version = KUBERNETES_VALIDATE.split("==").nth(1).unwrap_or_default();
    let ok = || probe(command(&bin).arg("--version")).is_some_and(|v| v.trim().ends_with(version));
    if ok() {
        report(KUBERNETES_VALIDATE, false);
        return Ok(());
    }
    cmd::run(command("python3").args(["-m", "venv", TOOLS_VENV]))?;
    cmd::run(command(&format!("{TOOLS_VENV}/bin/pip")).args([
        "install",
        "--quiet",
        KUBERNETES_VALIDATE,
    ]))?;
    if !ok() {
        bail!("{KUBERNETES_VALIDATE} installed in {TOOLS_VENV} but `{bin} --version` disagrees");
    }
    report(KUBERNETES_VALIDATE, true);
    Ok(())
}
