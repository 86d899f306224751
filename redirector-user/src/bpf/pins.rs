//! The bpffs directory where a daemon publishes its maps, and reading them
//! back from another process (`redirector endpoints`).
//!
//! Pins live in `<pin dir>/v<ABI_VERSION>/`, so a build with another map
//! layout looks in another directory and never misreads these. One daemon
//! owns a pin directory at a time: an flock on a file in /run says which, so
//! a second daemon fails with a sentence instead of clobbering the first.
//! Pins a crashed daemon left behind are removed by the next one.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use redirector_common::{
    ABI_VERSION, EndpointHealth, EndpointKey, ProxyConfig, ServiceInfo, map_names,
};

use crate::sys;

const LOCK_DIR: &str = "/run/redirector";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pin dir {dir}: {ancestor} is not a bpf filesystem; mount one with \
         `mount -t bpf bpf /sys/fs/bpf` or pass --pin-dir on bpffs"
    )]
    NotBpffs { dir: PathBuf, ancestor: PathBuf },
    #[error(
        "pin dir {dir} is in use by another redirector (pid {pid}); stop it or use another --pin-dir"
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("pin dir {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pinning map {name} at {path}: {error}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        error: aya::pin::PinError,
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

/// `<pin dir>/v<ABI>/<map name>`.
fn pin_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(format!("v{ABI_VERSION}")).join(map)
}

/// A claimed pin directory. Dropping it releases the lock but leaves pins;
/// [`Pins::remove`] removes them.
pub(super) struct Pins {
    dir: PathBuf,
    versioned: PathBuf,
    _lock: File,
}

impl Pins {
    pub(super) fn claim(dir: &Path) -> Result<Self, PinError> {
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
        let lock = lock(dir)?;
        let versioned = dir.join(format!("v{ABI_VERSION}"));
        fs::create_dir_all(&versioned).map_err(io_err(&versioned))?;
        for d in [dir, versioned.as_path()] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
        }
        // We hold the lock, so whatever is here was left by a dead daemon.
        for entry in fs::read_dir(&versioned).map_err(io_err(&versioned))? {
            let path = entry.map_err(io_err(&versioned))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(Self {
            dir: dir.into(),
            versioned,
            _lock: lock,
        })
    }

    pub(super) fn pin(&self, name: &'static str, map: &Map) -> Result<(), PinError> {
        let path = self.versioned.join(name);
        map.pin(&path)
            .map_err(|error| PinError::Pin { name, path, error })
    }

    pub(super) fn remove(self) {
        let _ = fs::remove_dir_all(&self.versioned);
        // Only if empty: the directory may hold other versions' pins.
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_file(lock_path(&self.dir));
    }
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

/// The maps of a running daemon, opened from their pins.
pub struct PinnedState {
    pub config: ProxyConfig,
    pub services: Vec<(u32, ServiceInfo)>,
    pub endpoints: Vec<(EndpointKey, EndpointHealth)>,
}

impl PinnedState {
    pub fn read(pin_dir: &Path) -> Result<Self, PinError> {
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
        Ok(Self {
            config,
            services,
            endpoints,
        })
    }
}
