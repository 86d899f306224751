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
//! adopts them. `redirector cleanup` removes them. A pinned map is adopted
//! only if its key and value sizes, max entries, type and flags are what
//! this build's object defines ([`check_layouts`]); a successor checks
//! this before it asks for the directory, and during a handover it claims
//! the directory with the lock its predecessor shares (`handover.rs`).

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{
        fd::{AsFd as _, AsRawFd},
        unix::fs::PermissionsExt,
    },
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
    #[error(
        "pinned map {path} has type {found} and flags {found_flags:#x}, this build expects type \
         {expected} and flags {expected_flags:#x}: it was left by a build with another \
         layout under the same ABI version; remove it with `redirector cleanup --pin-dir {dir}`"
    )]
    Kind {
        path: PathBuf,
        dir: PathBuf,
        found: String,
        found_flags: u32,
        expected: String,
        expected_flags: u32,
    },
    #[error("the pin directory's lock a predecessor handed over is not {path}: refusing to use it")]
    HandedLock { path: PathBuf },
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
pub(super) fn pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("v{ABI_VERSION}")).join(name)
}

/// What a map must look like: key and value size, max entries, and (when
/// known: this build's object defines the map) its type and flags.
pub(super) struct Layout {
    pub(super) name: &'static str,
    pub(super) key: u32,
    pub(super) value: u32,
    pub(super) max_entries: u32,
    /// `(BPF_MAP_TYPE_*, BPF_F_*)`.
    pub(super) kind: Option<(u32, u32)>,
}

/// A map type's name for a message (the kernel's `BPF_MAP_TYPE_*` number
/// when aya does not know it).
fn type_name(map_type: u32) -> String {
    let name = match map_type {
        1 => "hash",
        2 => "array",
        5 => "per-CPU hash",
        6 => "per-CPU array",
        9 => "LRU hash",
        12 => "array of maps",
        13 => "hash of maps",
        24 => "socket storage",
        27 => "ring buffer",
        _ => return format!("type-{map_type}"),
    };
    name.to_owned()
}

/// A claimed pin directory. Dropping it releases the lock and leaves the
/// pins; [`Pins::release`] and [`Pins::remove`] say what happens to them.
pub(super) struct Pins {
    dir: PathBuf,
    versioned: PathBuf,
    _lock: File,
}

impl Pins {
    /// Claims `dir`: takes its lock, or (`handed`: a predecessor shares
    /// its own during a handover, see `handover.rs`) checks that the
    /// handed descriptor is this directory's lock and holds it.
    pub(super) fn claim(dir: &Path, handed: Option<File>) -> Result<Self, PinError> {
        check_bpffs(dir)?;
        let lock = match handed {
            Some(file) => adopt_lock(dir, file)?,
            None => lock(dir)?,
        };
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
        check_layouts(&self.dir, expected)
    }

    /// A duplicate of the lock's descriptor, for a successor to share it
    /// during a handover (flock's lock belongs to the open file, so it is
    /// held while either process has it open).
    pub(super) fn share_lock(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self._lock.as_fd().try_clone_to_owned()
    }

    /// Writes this process's pid in the lock file (who holds the
    /// directory, for the message a second daemon gets).
    pub(super) fn write_pid(&self) -> Result<(), PinError> {
        write_pid(&self._lock, &lock_path(&self.dir))
    }

    /// The ids of the maps pinned here (a successor proves it can open
    /// them, see `handover.rs`).
    pub(super) fn map_ids(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir(&self.versioned) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let map = MapData::from_pin(e.path()).ok()?;
                is_bpf_map(map.fd().as_fd()).then_some(map.info().ok()?.id())
            })
            .collect()
    }

    /// Recreates the versioned directory if it is gone (a successor of
    /// another ABI attached, removing it, then failed).
    pub(super) fn recreate(&self) -> Result<(), PinError> {
        fs::create_dir_all(&self.versioned).map_err(io_err(&self.versioned))?;
        fs::set_permissions(&self.versioned, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.versioned))
    }
}

/// Makes `<pin dir>/v<ABI>/` (mode 0700) if it is not there, for maps to be
/// pinned in before the directory is claimed (a successor's preflight).
pub(super) fn ensure_versioned(dir: &Path) -> Result<(), PinError> {
    check_bpffs(dir)?;
    let versioned = dir.join(format!("v{ABI_VERSION}"));
    if !versioned.exists() {
        fs::create_dir_all(&versioned).map_err(io_err(&versioned))?;
        fs::set_permissions(&versioned, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&versioned))?;
    }
    Ok(())
}

/// Fails on a map pinned in `dir` whose kernel layout is not `expected`,
/// instead of letting the programs misread it. Reads only: a successor
/// checks this before asking for the directory.
pub(super) fn check_layouts(dir: &Path, expected: &[Layout]) -> Result<(), PinError> {
    for l in expected {
        let path = pin_path(dir, l.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|error| PinError::Read {
                name: l.name,
                error,
            })?;
        if let Some((map_type, flags)) = l.kind {
            // Sizes can match while the type does not (an array where
            // a hash was, a per-CPU map, an LRU): the programs would
            // misread it just the same.
            let found_type = info.map_type().map_or(u32::MAX, |t| t as u32);
            if found_type != map_type || info.map_flags() != flags {
                return Err(PinError::Kind {
                    path,
                    dir: dir.into(),
                    found: type_name(found_type),
                    found_flags: info.map_flags(),
                    expected: type_name(map_type),
                    expected_flags: flags,
                });
            }
        }
        for (what, found, expected) in [
            ("key size", info.key_size(), l.key),
            ("value size", info.value_size(), l.value),
            ("max entries", info.max_entries(), l.max_entries),
        ] {
            if found != expected {
                return Err(PinError::Layout {
                    path,
                    dir: dir.into(),
                    what,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(())
}

impl Pins {
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
    let pins = Pins::claim(dir, None)?;
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

/// A descriptor of some map pinned under `dir` (any ABI version's), opened
/// as a successor does before asking for the directory: the proof that it
/// can open the datapath's pins (see `handover.rs`).
pub(crate) fn open_any_map(dir: &Path) -> Result<std::os::fd::OwnedFd, PinError> {
    let mut last = None;
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    // This build's version first.
    let mine = dir.join(format!("v{ABI_VERSION}"));
    dirs.sort_by_key(|d| *d != mine);
    for d in dirs {
        for entry in fs::read_dir(&d).map_err(io_err(&d))?.flatten() {
            match MapData::from_pin(entry.path()) {
                Ok(map) if is_bpf_map(map.fd().as_fd()) => {
                    return map.fd().as_fd().try_clone_to_owned().map_err(io_err(dir));
                }
                // A link.
                Ok(_) => {}
                Err(e) => last = Some((entry.path(), e)),
            }
        }
    }
    Err(match last {
        Some((path, error)) => PinError::NotRunning { path, error },
        None => PinError::Io {
            path: dir.into(),
            error: std::io::Error::other("no pinned map to open"),
        },
    })
}

/// Whether `fd` is a BPF map (a pinned link opens with the same call, and
/// its info reads as a map's with an id from another space).
pub(crate) fn is_bpf_map(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map")
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
    write_pid(&file, &path)?;
    Ok(file)
}

fn write_pid(mut file: &File, path: &Path) -> Result<(), PinError> {
    file.set_len(0).map_err(io_err(path))?;
    file.rewind().map_err(io_err(path))?;
    write!(file, "{}", std::process::id()).map_err(io_err(path))
}

/// The lock a predecessor shares during a handover: it must be `dir`'s
/// lock file (same file), and flock on it succeeds at once since this
/// open file holds the lock already. The pid in it stays the
/// predecessor's until the handover is confirmed.
fn adopt_lock(dir: &Path, file: File) -> Result<File, PinError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = lock_path(dir);
    let same = match (file.metadata(), fs::metadata(&path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !same || unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(PinError::HandedLock { path });
    }
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

#[cfg(test)]
mod tests {
    use aya::maps::MapData;

    use super::*;

    /// A map of `map_type` pinned as `name` in `dir`'s versioned directory.
    fn pin_map(dir: &Path, name: &str, map_type: u32, flags: u32) {
        let obj = aya_obj::Map::new_from_params(map_type, 4, 8, 1, flags);
        let map = MapData::create(obj, "rd_pins_test", None).expect("creating a map (root)");
        fs::create_dir_all(dir.join(format!("v{ABI_VERSION}"))).unwrap();
        map.pin(pin_path(dir, name)).unwrap();
    }

    fn layout(kind: (u32, u32)) -> Layout {
        Layout {
            name: "RD_TEST",
            key: 4,
            value: 8,
            max_entries: 1,
            kind: Some(kind),
        }
    }

    #[test]
    fn a_pinned_map_of_another_type_or_flags_is_refused_by_name() {
        const HASH: u32 = 1;
        const ARRAY: u32 = 2;
        const BPF_F_RDONLY_PROG: u32 = 1 << 7;
        let dir = PathBuf::from(format!("/sys/fs/bpf/rd-pins-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        pin_map(&dir, "RD_TEST", ARRAY, 0);
        let checked = (
            check_layouts(&dir, &[layout((ARRAY, 0))]),
            check_layouts(&dir, &[layout((HASH, 0))]).map_err(|e| e.to_string()),
            check_layouts(&dir, &[layout((ARRAY, BPF_F_RDONLY_PROG))]).map_err(|e| e.to_string()),
        );
        let _ = fs::remove_dir_all(&dir);
        let (same, other_type, other_flags) = checked;
        same.expect("the same type and flags");
        let err = other_type.unwrap_err();
        assert!(
            err.contains("RD_TEST has type array and flags 0x0")
                && err.contains("expects type hash and flags 0x0")
                && err.contains("redirector cleanup --pin-dir"),
            "{err}"
        );
        let err = other_flags.unwrap_err();
        assert!(err.contains("expects type array and flags 0x80"), "{err}");
    }
}
