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
    /// Creates `/tmp/rdt-<pid>-<n>-<what>`. A directory of that name may
    /// be left from a failed run whose process had the same pid (they are
    /// kept for inspection): then the next `n` is taken.
    pub fn new(what: &str) -> Result<TempDir> {
        let mut tries = 0;
        loop {
            let name = format!("{}-{what}", names::unique(names::PREFIX));
            let path = std::env::temp_dir().join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 1000 => {
                    tries += 1;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
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
