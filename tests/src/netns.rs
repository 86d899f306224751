//! Network namespaces made with `ip netns`, entered with `setns(2)`.
//!
//! Every test gets its own namespaces, so the only addresses it can reach
//! are its own: loopback and the veth links it created. `ip netns exec` is
//! never used because it remounts `/sys`, hiding the cgroup2 and bpffs
//! mounts the redirector needs; processes enter a namespace in `pre_exec`
//! ([`Netns::configure`]) and async code runs on a thread that entered it
//! ([`Netns::spawn`]): namespaces are per thread in Linux.

use std::{
    ffi::OsStr,
    fs::File,
    future::Future,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, bail};

use crate::{names, process::run_checked};

/// Serialises `ip netns add`: its first use mounts `/run/netns`, and two
/// racing first uses stack mounts.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A network namespace `rdt-<pid>-<n>-<role>` with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    fd: Arc<OwnedFd>,
    /// Set by [`Netns::delete`], so Drop does not delete it again.
    deleted: bool,
}

impl Netns {
    /// Creates the namespace and brings `lo` up.
    pub fn new(role: &str) -> Result<Netns> {
        let netns = Netns::without_lo(role)?;
        netns.ip(["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Creates the namespace and leaves it as the kernel made it, `lo`
    /// down: what a container runtime hands its CNI plugins (see
    /// [`crate::pod`]).
    pub(crate) fn without_lo(role: &str) -> Result<Netns> {
        if role.is_empty()
            || role.len() > 24
            || !role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            bail!("netns role {role:?} must be 1-24 characters of [A-Za-z0-9_]");
        }
        let name = format!("{}-{role}", names::unique(names::PREFIX));
        {
            let _guard = ADD_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run_checked(Command::new("ip").args(["netns", "add", &name]))
                .with_context(|| format!("creating network namespace {name}"))?;
        }
        let path = Path::new("/run/netns").join(&name);
        let fd = match File::open(&path) {
            Ok(file) => Arc::new(OwnedFd::from(file)),
            Err(err) => {
                let _ = delete(&name);
                return Err(err).with_context(|| format!("opening {}", path.display()));
            }
        };
        Ok(Netns {
            name,
            path,
            fd,
            deleted: false,
        })
    }

    /// `rdt-<pid>-<n>-<role>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s child enter this namespace before it execs. The
    /// namespace fd is already open, so the child only calls `setns(2)`.
    /// The child is marked with [`names::OWNER_ENV`] for the sweep.
    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env(names::OWNER_ENV, std::process::id().to_string());
        let fd = Arc::clone(&self.fd);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // and touches no locks or allocations.
        unsafe { cmd.pre_exec(move || enter(&fd)) }
    }

    /// Runs `f()` to completion on a new thread that entered this namespace,
    /// inside a tokio current-thread runtime (all drivers enabled). Sockets
    /// created there belong to the namespace. A failure to enter the
    /// namespace panics that thread, so `join()` reports it.
    pub fn spawn<F, Fut, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let fd = Arc::clone(&self.fd);
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("netns {}", self.name))
            .spawn(move || {
                enter(&fd).unwrap_or_else(|e| panic!("cannot enter network namespace {name}: {e}"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build a tokio runtime in {name}: {e}"));
                runtime.block_on(f())
            })
            .expect("cannot spawn a thread")
    }

    /// Runs `ip -n <name> <args…>`; returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    pub(crate) fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// Deletes the namespace now (`ip netns del`), reporting a failure
    /// that Drop could only print. The namespace itself lives on while a
    /// process or an open descriptor still holds it.
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        delete(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if let Err(err) = delete(&self.name) {
            eprintln!("testbed: {err:#}");
        }
    }
}

/// Moves the calling thread into the namespace behind `fd`.
pub(crate) fn enter(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: setns(2) on a valid fd; only this thread changes namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `ip netns del <name>`.
pub(crate) fn delete(name: &str) -> Result<()> {
    run_checked(Command::new("ip").args(["netns", "del", name]))
        .with_context(|| format!("deleting network namespace {name}"))
        .map(|_| ())
}

/// The two ends of a veth pair made by [`link`].
#[derive(Clone, Debug)]
pub struct Link {
    /// Interface name inside the first namespace.
    pub a_dev: String,
    /// Interface name inside the second namespace.
    pub b_dev: String,
}

/// Joins `a` and `b` with a veth pair, gives each end its address
/// (`10.213.0.1/24`, or IPv6 with DAD off) and brings both up.
pub fn link(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> Result<Link> {
    // The counter is process-wide and both namespaces are ours, so the
    // names are unique in each; 15 characters is the kernel limit.
    let n = names::next_id();
    let link = Link {
        a_dev: format!("rdt{n}a"),
        b_dev: format!("rdt{n}b"),
    };
    // One command, so the peer never appears in the root namespace.
    a.ip([
        "link",
        "add",
        &link.a_dev,
        "type",
        "veth",
        "peer",
        "name",
        &link.b_dev,
        "netns",
        &b.name,
    ])
    .with_context(|| format!("linking {} and {}", a.name, b.name))?;
    for (ns, dev, cidr) in [(a, &link.a_dev, a_cidr), (b, &link.b_dev, b_cidr)] {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            // Skip duplicate address detection: the address is usable at once.
            args.push("nodad");
        }
        ns.ip(&args)?;
        ns.ip(["link", "set", dev, "up"])?;
    }
    Ok(link)
}
