//! `cargo xtask sweep`: removes what killed test runs left behind (their
//! Drop impls never ran). Anything named after, or marked with, a pid that
//! is no longer alive is stale; live runs are untouched. `cargo xtask test`
//! sweeps before and after the tests.

use anyhow::{Context, Result};

use crate::cmd;

pub(crate) fn run() -> Result<()> {
    cmd::require_root("sweep")?;
    sweep("now")
}

/// Sweeps and prints one line per thing removed.
pub(crate) fn sweep(when: &str) -> Result<()> {
    let removed = redirector_tests::sweep::sweep_stale()
        .with_context(|| format!("sweeping leftovers {when}"))?;
    if removed.is_empty() {
        eprintln!("sweep {when}: nothing stale");
    }
    for item in removed {
        eprintln!("sweep {when}: removed {item}");
    }
    Ok(())
}
