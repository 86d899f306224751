//! The bpffs directory that holds the datapath between daemons: every map
//! and the cgroup links, so the programs keep running when the daemon
//! is gone and the next daemon takes over the same state.
//!
//! Pins live in `<pin dir>/v<ABI_VERSION>/`, so a build with another map
//! layout looks in another directory and never misreads these; its pins are
//! removed when a daemon of this version attaches (see
//! [`Pins::remove_other_versions`]). One daemon owns a pin directory at a
//! time: an flock on a file in /run says which, so a second daemon fails
//! with a sentence instead of clobbering the first. Pins a dead daemon left
//! are not removed: they are the running datapath, and the next daemon
//! adopts them. `redirector cleanup` removes them.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError},
    programs::links::FdLink,
};
use redirector_common::{
    ABI_VERSION, EndpointHealth, EndpointKey, NsId, NsInfo, ProxyConfig, ServiceInfo, SlotTable,
    map_names,
};

use crate::sys;

const LOCK_DIR: &str = "/run/redirector";
/// Mode of every pinned map and link.
const PIN_MODE: u32 = 0o600;
/// Pin names of the cgroup links, next to the maps.
pub(super) const LINK_CONNECT4: &str = "link_connect4";
pub(super) const LINK_SOCKOPS: &str = "link_sockops";
pub(super) const LINK_GETPEERNAME4: &str = "link_getpeername4";
pub(super) const LINK_SENDMSG4: &str = "link_sendmsg4";
pub(super) const LINK_RECVMSG4: &str = "link_recvmsg4";
pub(super) const LINK_EGRESS: &str = "link_egress";
pub(super) const LINK_CONNECT6: &str = "link_connect6";
pub(super) const LINK_GETPEERNAME6: &str = "link_getpeername6";
pub(super) const LINK_SENDMSG6: &str = "link_sendmsg6";
pub(super) const LINK_RECVMSG6: &str = "link_recvmsg6";
pub(super) const LINK_SOCK_CREATE: &str = "link_sock_create";
const LINKS: [&str; 11] = [
    LINK_CONNECT4,
    LINK_SOCKOPS,
    LINK_GETPEERNAME4,
    LINK_SENDMSG4,
    LINK_RECVMSG4,
    LINK_EGRESS,
    LINK_CONNECT6,
    LINK_GETPEERNAME6,
    LINK_SENDMSG6,
    LINK_RECVMSG6,
    LINK_SOCK_CREATE,
];
/// The links every daemon attaches (the others came later, or serve DNS
/// capture only): with these the redirect is in place.
const REDIRECT_LINKS: [&str; 2] = [LINK_CONNECT4, LINK_SOCKOPS];

#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    #[error(
        "pin dir {dir}: {ancestor} is not a bpf filesystem; mount one with \
         `mount -t bpf bpf /sys/fs/bpf` or pass --pin-dir on bpffs"
    )]
    NotBpffs { dir: PathBuf, ancestor: PathBuf },
    #[error(
        "pin dir {dir} is in use by another redirector (pid {pid}); stop it, use another \
         --pin-dir, or start this one with --take-over to have it hand over"
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("pin dir {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pinning {name} at {path}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        error: aya::pin::PinError,
    },
    #[error(
        "pinned map {path} has {what} {found}, this build expects {expected}: it was left by a \
         build with another layout under the same ABI version; remove it with `redirector \
         cleanup --pin-dir {dir}`"
    )]
    Layout {
        path: PathBuf,
        dir: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("no redirector state at {path}; is the daemon running with this --pin-dir?")]
    NotRunning {
        path: PathBuf,
        #[source]
        error: MapError,
    },
    #[error("reading pinned map {name}")]
    Read {
        name: &'static str,
        #[source]
        error: MapError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |error| PinError::Io {
        path: path.into(),
        error,
    }
}

/// `<pin dir>/v<ABI>/<name>`.
fn pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("v{ABI_VERSION}")).join(name)
}

/// What a map must look like: key and value size, max entries.
pub(super) struct Layout {
    pub(super) name: &'static str,
    pub(super) key: u32,
    pub(super) value: u32,
    pub(super) max_entries: u32,
}

/// A claimed pin directory. Dropping it releases the lock and leaves the
/// pins; [`Pins::release`] and [`Pins::remove`] say what happens to them.
pub(super) struct Pins {
    dir: PathBuf,
    versioned: PathBuf,
    _lock: File,
}

impl Pins {
    pub(super) fn claim(dir: &Path) -> Result<Self, PinError> {
        check_bpffs(dir)?;
        let lock = lock(dir)?;
        let versioned = dir.join(format!("v{ABI_VERSION}"));
        fs::create_dir_all(&versioned).map_err(io_err(&versioned))?;
        for d in [dir, versioned.as_path()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
        }
        // Half-done link replacements (`<link>_new`) of a daemon that died
        // mid-way.
        for entry in fs::read_dir(&versioned).map_err(io_err(&versioned))? {
            let path = entry.map_err(io_err(&versioned))?.path();
            if path.to_string_lossy().ends_with("_new") {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(Self {
            dir: dir.into(),
            versioned,
            _lock: lock,
        })
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.versioned.join(name)
    }

    /// Whether a previous daemon left its programs attached here.
    pub(super) fn has_links(&self) -> bool {
        LINKS.iter().any(|l| self.path(l).exists())
    }

    /// Fails on a pinned map whose kernel layout is not `expected`, instead
    /// of letting the programs misread it.
    pub(super) fn check_layouts(&self, expected: &[Layout]) -> Result<(), PinError> {
        for l in expected {
            let path = self.path(l.name);
            if !path.exists() {
                continue;
            }
            let info = MapData::from_pin(&path)
                .and_then(|m| m.info())
                .map_err(|error| PinError::Read {
                    name: l.name,
                    error,
                })?;
            for (what, found, expected) in [
                ("key size", info.key_size(), l.key),
                ("value size", info.value_size(), l.value),
                ("max entries", info.max_entries(), l.max_entries),
            ] {
                if found != expected {
                    return Err(PinError::Layout {
                        path,
                        dir: self.dir.clone(),
                        what,
                        found,
                        expected,
                    });
                }
            }
        }
        Ok(())
    }

    /// Pins `link` as `name`, replacing whatever link had that name: the new
    /// one is pinned beside it and renamed over it, so the cgroup never lacks
    /// the program and the old link detaches as its last reference goes.
    pub(super) fn pin_link(&self, name: &'static str, link: FdLink) -> Result<(), PinError> {
        let path = self.path(name);
        // bpffs refuses names with a dot.
        let staging = self.path(&format!("{name}_new"));
        link.pin(&staging).map_err(|error| PinError::Pin {
            name,
            path: staging.clone(),
            error,
        })?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(PIN_MODE))
            .map_err(io_err(&staging))?;
        fs::rename(&staging, &path).map_err(io_err(&path))
    }

    /// Makes every pin root's alone: directories 0700, pinned maps and
    /// links 0600 (anyone who can open a pin can read or rewrite the
    /// map, or detach the program). bpffs pins are 0600 less the umask
    /// already; pins an older daemon left are made so too.
    pub(super) fn restrict(&self) -> Result<(), PinError> {
        for d in [self.dir.as_path(), self.versioned.as_path()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
        }
        for entry in fs::read_dir(&self.versioned).map_err(io_err(&self.versioned))? {
            let path = entry.map_err(io_err(&self.versioned))?.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(PIN_MODE))
                .map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Removes the link pinned as `name`, if any; its program detaches once
    /// no daemon holds the link.
    pub(super) fn unpin_link(&self, name: &'static str) -> Result<(), PinError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Removes pins of other ABI versions in this directory. Their programs
    /// use maps this daemon does not fill, so they must not run beside ours.
    pub(super) fn remove_other_versions(&self) -> Vec<PathBuf> {
        let mine = self
            .versioned
            .file_name()
            .map(std::borrow::ToOwned::to_owned);
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let versioned = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if versioned && Some(&name) != mine.as_ref() && fs::remove_dir_all(entry.path()).is_ok()
            {
                removed.push(entry.path());
            }
        }
        removed
    }

    /// Gives the directory up. Attached programs stay with their pins for
    /// the next daemon (that is fail-open); without links nothing runs from
    /// here, so the maps are removed too.
    pub(super) fn release(self) -> bool {
        if self.has_links() {
            return false;
        }
        self.remove();
        true
    }

    /// Removes every pin (unpinning a link detaches its program) and the
    /// lock file.
    pub(super) fn remove(self) {
        let _ = fs::remove_dir_all(&self.versioned);
        self.remove_other_versions();
        // Only if empty: it may hold files that are not ours.
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_file(lock_path(&self.dir));
        let _ = fs::remove_file(handover_path(&self.dir));
    }
}

fn check_bpffs(dir: &Path) -> Result<(), PinError> {
    let ancestor = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    if sys::fs_type(&ancestor).map_err(io_err(&ancestor))? != sys::BPF_FS_MAGIC {
        return Err(PinError::NotBpffs {
            dir: dir.into(),
            ancestor,
        });
    }
    Ok(())
}

/// What `redirector cleanup` removed.
#[derive(Debug)]
pub(crate) struct Cleanup {
    /// Pinned links (each one detached a program).
    pub(crate) links: Vec<PathBuf>,
    /// Whether there was anything at all.
    pub(crate) found: bool,
}

/// Detaches and unpins everything a daemon left in `dir`. Refuses while a
/// daemon holds the directory.
pub(crate) fn cleanup(dir: &Path) -> Result<Cleanup, PinError> {
    if !dir.exists() {
        return Ok(Cleanup {
            links: Vec::new(),
            found: false,
        });
    }
    let pins = Pins::claim(dir)?;
    let mut links = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        for l in LINKS {
            let path = entry.path().join(l);
            if path.exists() {
                links.push(path);
            }
        }
    }
    pins.remove();
    Ok(Cleanup { links, found: true })
}

/// Where the daemon holding `dir` takes handover requests (see
/// `handover.rs`), beside the lock.
pub(crate) fn handover_path(dir: &Path) -> PathBuf {
    lock_path(dir).with_extension("handover")
}

fn lock_path(dir: &Path) -> PathBuf {
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Path::new(LOCK_DIR).join(format!("{name}.lock"))
}

fn lock(dir: &Path) -> Result<File, PinError> {
    fs::create_dir_all(LOCK_DIR).map_err(io_err(Path::new(LOCK_DIR)))?;
    let path = lock_path(dir);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(PinError::InUse {
            dir: dir.into(),
            pid: pid.trim().to_owned(),
        });
    }
    file.set_len(0).map_err(io_err(&path))?;
    file.rewind().map_err(io_err(&path))?;
    write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(file)
}

/// The maps of a daemon (running, or gone with its programs still
/// attached), opened from their pins.
pub(crate) struct PinnedState {
    pub(crate) config: ProxyConfig,
    pub(crate) services: Vec<(u32, ServiceInfo)>,
    pub(crate) endpoints: Vec<(EndpointKey, EndpointHealth)>,
    pub(crate) slots: Vec<(u32, SlotTable)>,
    /// The network namespaces the daemon serves or leaves alone.
    pub(crate) namespaces: Vec<(NsId, NsInfo)>,
    /// Whether the programs are attached through pinned links (they stay
    /// attached without a daemon).
    pub(crate) attached: bool,
}

impl PinnedState {
    pub(crate) fn read(pin_dir: &Path) -> Result<Self, PinError> {
        let open = |name: &'static str| {
            let path = pin_path(pin_dir, name);
            MapData::from_pin(&path)
                .map_err(|error| PinError::NotRunning { path, error })
                .and_then(|d| Map::from_map_data(d).map_err(|error| PinError::Read { name, error }))
        };
        let read = |name| move |error| PinError::Read { name, error };
        let config: Array<MapData, ProxyConfig> = Array::try_from(open(map_names::PROXY_CONFIG)?)
            .map_err(read(map_names::PROXY_CONFIG))?;
        let config = config.get(&0, 0).map_err(read(map_names::PROXY_CONFIG))?;
        let info: HashMap<MapData, u32, ServiceInfo> =
            HashMap::try_from(open(map_names::SERVICE_INFO)?)
                .map_err(read(map_names::SERVICE_INFO))?;
        let services = info
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(map_names::SERVICE_INFO))?;
        let eps: HashMap<MapData, EndpointKey, EndpointHealth> =
            HashMap::try_from(open(map_names::ENDPOINTS)?).map_err(read(map_names::ENDPOINTS))?;
        let endpoints = eps
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(map_names::ENDPOINTS))?;
        let slot_map: HashMap<MapData, u32, SlotTable> =
            HashMap::try_from(open(map_names::SLOTS)?).map_err(read(map_names::SLOTS))?;
        let slots = slot_map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(map_names::SLOTS))?;
        // `redirector pods`' map (a pin directory of an older build of
        // this ABI may lack it: then no namespace is shown).
        let namespaces = match open(map_names::NS_INFO) {
            Ok(map) => {
                let ns: HashMap<MapData, NsId, NsInfo> =
                    HashMap::try_from(map).map_err(read(map_names::NS_INFO))?;
                ns.iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(read(map_names::NS_INFO))?
            }
            Err(_) => Vec::new(),
        };
        let attached = REDIRECT_LINKS.iter().all(|l| pin_path(pin_dir, l).exists());
        Ok(Self {
            config,
            services,
            endpoints,
            slots,
            namespaces,
            attached,
        })
    }
}
