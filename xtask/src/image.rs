//! `cargo xtask image`: the DaemonSet's image, `deploy/Dockerfile`, built
//! on this machine with podman and no registry: the binary is built here
//! (debug, or `--release` as a published image carries it) and passed as
//! `BINARY`, the base is a Debian 12 that debootstrap makes once and the
//! test bed caches (`redirector_tests::image`). Prints the image's name
//! and size; load it into a cluster with `podman save`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::{self, command};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Put the release binary in the image (a fat-LTO build, minutes on 2 cores) instead of the debug one
    #[arg(long)]
    release: bool,
    /// The image's name
    #[arg(long, default_value = "localhost/redirector:dev")]
    tag: String,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    cmd::require_root("image")?;
    let profile = if args.release { "release" } else { "debug" };
    let mut build = command("cargo");
    build.args(["build", "-p", "redirector-user", "--bins"]);
    if args.release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let binary = cmd::target_dir()?.join(profile).join("redirector");
    let image = redirector_tests::image::build(&binary, Some(&args.tag))
        .context("building the image (cargo xtask setup installs podman, runc, debootstrap)")?;
    let size = image.size()?;
    let base = file_size(Path::new(redirector_tests::image::CACHE_DIR).join("base-bookworm.tar"));
    eprintln!(
        "image: {} ({profile} binary, debug info stripped): {:.1} MB, of which the base {:.1} MB",
        image.name(),
        size as f64 / 1e6,
        base as f64 / 1e6,
    );
    eprintln!(
        "image: `podman save {} | ctr -n k8s.io images import -` on a node loads it",
        image.name()
    );
    Ok(())
}

fn file_size(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
