//! Removes what crashed or killed test runs left behind.
//!
//! Drop impls clean up after a failing test, but not after a test process
//! that was itself killed (timeout, Ctrl-C, SIGKILL). Every resource name
//! carries its owner's pid and every spawned process carries
//! `RDT_OWNER_PID`, so anything whose owner is dead is stale; resources of
//! live test processes (a concurrent run) are left alone. `cargo xtask
//! test` sweeps before and after the run.

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Result, bail};

use crate::{cgroup, daemon::BPFFS, names, netns, process};

/// Removes stale processes, cgroups (with their children: a node's pods'),
/// namespaces (pods' too) and pin directories; returns
/// one line per thing removed. Keeps going past failures and reports them
/// all at the end.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut failed = Vec::new();

    for (pid, owner, comm) in stale_processes() {
        match process::signal(pid, libc::SIGKILL) {
            Ok(()) => removed.push(format!(
                "process {pid} ({comm}) of dead test process {owner}"
            )),
            Err(err) => failed.push(format!("killing process {pid} ({comm}): {err}")),
        }
    }
    if !removed.is_empty() {
        // Let the kernel tear them down before their cgroups go.
        thread::sleep(Duration::from_millis(50));
    }

    match cgroup::cgroup2_root() {
        Ok(root) => {
            for dir in stale_entries(&root, names::PREFIX) {
                match cgroup::remove(&dir) {
                    Ok(()) => removed.push(format!("cgroup {}", dir.display())),
                    Err(err) => failed.push(format!("{err:#}")),
                }
            }
        }
        Err(err) => failed.push(format!("{err:#}")),
    }

    for path in stale_entries(Path::new("/run/netns"), names::PREFIX) {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match netns::delete(&name) {
            Ok(()) => removed.push(format!("netns {name}")),
            Err(err) => failed.push(format!("{err:#}")),
        }
    }

    // Removing a pin directory also unpins the daemon's cgroup links,
    // which detaches their programs.
    for dir in stale_entries(Path::new(BPFFS), names::PIN_PREFIX) {
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(format!("pin directory {}", dir.display())),
            Err(err) => failed.push(format!("removing {}: {err}", dir.display())),
        }
    }

    // Containers and per-run images of the image tests.
    match crate::image::sweep_stale() {
        Ok(images) => removed.extend(images),
        Err(err) => failed.push(format!("{err:#}")),
    }

    if failed.is_empty() {
        Ok(removed)
    } else {
        bail!(
            "sweep removed {removed:?} but failed on:\n  {}",
            failed.join("\n  ")
        )
    }
}

/// Entries of `dir` named `<prefix>-<pid>-…` whose pid is dead (an absent
/// `dir` has none).
fn stale_entries(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            names::owner_pid(&name.to_string_lossy(), prefix)
                .is_some_and(|pid| !names::pid_alive(pid))
        })
        .map(|entry| entry.path())
        .collect()
}

/// `(pid, owner, comm)` of processes whose `RDT_OWNER_PID` is dead.
fn stale_processes() -> Vec<(u32, u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Unreadable environ: a kernel thread or a process that just exited.
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marker = format!("{}=", names::OWNER_ENV);
        let owner = environ
            .split(|b| *b == 0)
            .filter_map(|var| var.strip_prefix(marker.as_bytes()))
            .find_map(|value| std::str::from_utf8(value).ok()?.parse::<u32>().ok());
        if let Some(owner) = owner
            && !names::pid_alive(owner)
        {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            stale.push((pid, owner, comm.trim().to_owned()));
        }
    }
    stale
}
