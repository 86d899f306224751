//! Scratch directories (`/tmp/rdt-<pid>-<n>-<what>`) for daemon logs and
//! private `resolv.conf` files. Removed on drop, except while the thread is
//! panicking: then the path is printed so the log can be read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::names;

/// A directory removed on drop (kept for post-mortem if a test fails).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/rdt-<pid>-<n>-<what>`.
    pub fn new(what: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{}-{what}", names::unique(names::PREFIX)));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("testbed: keeping {} for inspection", self.path.display());
        } else if let Err(err) = std::fs::remove_dir_all(&self.path) {
            eprintln!("testbed: cannot remove {}: {err}", self.path.display());
        }
    }
}
