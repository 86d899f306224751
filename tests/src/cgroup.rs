//! Child cgroups for tests: the redirector attaches its `cgroup/connect4`
//! program to one, and only processes placed in it are redirected.
//!
//! Children join in `pre_exec` by writing `0` to `cgroup.procs` through a
//! descriptor opened before the fork, so they are inside the cgroup before
//! their first instruction. Drop kills whatever is left, waits for the
//! cgroup to empty and removes it, child cgroups (pods') first.

use std::{
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{mounts, names, process};

/// The cgroup2 mount point, from `/proc/self/mountinfo` (never hard-coded:
/// it is `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> Result<PathBuf> {
    mounts::mount_points("cgroup2")?
        .into_iter()
        .next()
        .context("no cgroup2 filesystem in /proc/self/mountinfo: mount one (mount -t cgroup2 none /sys/fs/cgroup)")
}

/// `enum bpf_attach_type`: `cgroup/connect4` programs.
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `enum bpf_attach_type`: `sock_ops` programs.
pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// `enum bpf_attach_type`: `cgroup/connect6` programs.
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// `<cgroup2 root>/rdt-<pid>-<n>`, removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    procs: Arc<OwnedFd>,
}

impl TestCgroup {
    /// Creates a fresh cgroup directly under the cgroup2 root.
    pub fn new() -> Result<TestCgroup> {
        TestCgroup::create(cgroup2_root()?.join(names::unique(names::PREFIX)))
    }

    fn create(path: PathBuf) -> Result<TestCgroup> {
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let procs = match File::options().write(true).open(path.join("cgroup.procs")) {
            Ok(file) => Arc::new(OwnedFd::from(file)),
            Err(err) => {
                let _ = fs::remove_dir(&path);
                return Err(err)
                    .with_context(|| format!("opening {}/cgroup.procs", path.display()));
            }
        };
        Ok(TestCgroup { path, procs })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id (the directory's inode number), as BPF helpers such as
    /// `bpf_get_current_cgroup_id` report it.
    pub fn id(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path)
            .with_context(|| format!("stat {}", self.path.display()))?
            .ino())
    }

    /// How many BPF programs are attached to this cgroup itself (not
    /// inherited) for `attach_type` (a `BPF_CGROUP_*` value, such as
    /// [`BPF_CGROUP_INET4_CONNECT`]), links included: `BPF_PROG_QUERY`.
    pub fn attached_programs(&self, attach_type: u32) -> Result<u32> {
        const BPF_PROG_QUERY: libc::c_long = 16;
        let dir = File::open(&self.path)
            .with_context(|| format!("opening cgroup {}", self.path.display()))?;
        // `union bpf_attr`, query member: target_fd, attach_type,
        // query_flags, attach_flags, prog_ids (u64), prog_cnt; the rest
        // zero. With no prog_ids buffer the kernel only writes the count.
        let mut attr = [0u32; 32];
        attr[0] = dir.as_raw_fd() as u32;
        attr[1] = attach_type;
        // SAFETY: bpf(2) with a zeroed, large enough attr that outlives the
        // call; the kernel writes only prog_cnt and attach_flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("BPF_PROG_QUERY on {}", self.path.display()));
        }
        Ok(attr[6])
    }

    /// The path as it appears in `/proc/<pid>/cgroup` (`0::/rdt-…`).
    pub fn proc_path(&self) -> Result<String> {
        let root = cgroup2_root()?;
        let rel = self
            .path
            .strip_prefix(&root)
            .with_context(|| format!("{} is not under {}", self.path.display(), root.display()))?;
        Ok(format!("/{}", rel.display()))
    }

    /// Makes `cmd`'s child join this cgroup before it execs. The child is
    /// marked with [`names::OWNER_ENV`] for the sweep.
    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env(names::OWNER_ENV, std::process::id().to_string());
        let procs = Arc::clone(&self.procs);
        // SAFETY: the closure only calls write(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if rc == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            })
        }
    }

    /// Moves an existing process into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids(&self.path)
    }

    /// Kills what runs in the cgroup and removes it (and its children)
    /// now, reporting a failure that Drop could only print.
    pub fn remove(self) -> Result<()> {
        // Drop finds the directory gone and has nothing left to do.
        remove(&self.path)
    }

    /// The child cgroups, by name.
    pub fn children(&self) -> Result<Vec<String>> {
        Ok(children(&self.path)?
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.path) {
            eprintln!("testbed: {err:#}");
        }
    }
}

/// Pids listed in `<dir>/cgroup.procs`.
fn pids(dir: &Path) -> Result<Vec<u32>> {
    let file = dir.join("cgroup.procs");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Creates the child cgroup `<parent>/<name>` (a pod's, say): programs
/// attached to the parent apply to it too. Fails if it exists. Removing
/// the parent removes its children first.
pub(crate) fn child_of(parent: &Path, name: &str) -> Result<TestCgroup> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("{name:?} is not a cgroup name");
    }
    TestCgroup::create(parent.join(name))
}

/// Child cgroups of `dir` (its subdirectories; an absent `dir` has none).
fn children(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Removes the child cgroups of `dir` (depth first), then kills every
/// process in `dir`, waits until it is empty and removes it (retrying
/// briefly while the kernel still reports it busy).
pub(crate) fn remove(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for child in children(dir)? {
        remove(&child)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = pids(dir)?;
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "cgroup {} still has processes {left:?} after SIGKILL",
                dir.display()
            );
        }
        // cgroup.kill (5.14+) also catches processes forked meanwhile.
        if fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in left {
                let _ = process::signal(pid, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if Instant::now() < deadline && err.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("removing cgroup {}", dir.display()));
            }
        }
    }
}
