//! `redirector cni install` and `uninstall`: the plugin into the node's CNI
//! setup and out again, the way istio-cni chains itself.
//!
//! Install:
//! 1. copies this binary (`/proc/self/exe`) to `<bin-dir>/redirector-cni`,
//!    mode 0755, written aside and renamed (a runtime running the old one
//!    keeps it);
//! 2. finds the primary network config as the runtimes do: the
//!    lexicographically first `*.conflist`, `*.conf` or `*.json` of
//!    `<conf-dir>`; with `--wait`, polls until there is one that parses
//!    (the cluster's CNI may install after us), saying what it waits for;
//! 3. chains the plugin's entry at the end of its `plugins`, or updates
//!    the entry already there ([`conflist`]); a single-plugin file becomes
//!    `<stem>.conflist`, refused if that would change which file is first;
//! 4. writes the file aside and renames it over, so the runtime never
//!    reads half a file, and only if the file is still the one read: a
//!    file another tool rewrote meanwhile is read again (a few times).
//!
//! Uninstall takes the entry out of every config file that has it
//! (turning a converted list back into its single-plugin file when
//! nothing else was chained since), then removes the binary, never while a
//! config still names it (the runtime would fail every pod). Both are
//! idempotent.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::Value;
use tracing::info;

use super::{
    PLUGIN_TYPE,
    conflist::{self, ConfError, Entry, Kind, Restored},
    protocol,
};

/// A config file longer than this is not a network config.
const MAX_CONFIG: u64 = 1024 * 1024;
/// How often `--wait` looks again.
const POLL: Duration = Duration::from_secs(1);
/// How often `--wait` says what it waits for.
const SAY_EVERY: Duration = Duration::from_secs(30);
/// Reads of a file that another tool keeps rewriting, before giving up.
const ATTEMPTS: usize = 5;

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// The runtime's CNI plugin directory (where it finds plugins by type).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub(crate) bin_dir: PathBuf,
    /// The runtime's CNI network config directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub(crate) conf_dir: PathBuf,
    /// The daemon's socket (`redirector run --cni-socket`), written into the plugin's entry.
    #[arg(long, default_value = protocol::DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// A file the plugin appends one line to per pod event (besides stderr).
    #[arg(long)]
    pub(crate) log_file: Option<PathBuf>,
    /// Wait for the primary network config to appear (or to parse) instead of failing.
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long --wait waits (e.g. 10m, 30s).
    #[arg(long, default_value = "10m", value_parser = crate::config::parse_duration)]
    pub(crate) wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct UninstallArgs {
    /// The runtime's CNI plugin directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub(crate) bin_dir: PathBuf,
    /// The runtime's CNI network config directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub(crate) conf_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error(
        "no CNI network config in {dir} (no *.conflist, *.conf or *.json file): is the cluster's \
         CNI installed yet? (--wait waits for it)"
    )]
    NoConfig { dir: PathBuf },
    #[error(
        "waited {waited:.0?} for a primary CNI network config in {dir}; the last problem: {last}"
    )]
    Timeout {
        dir: PathBuf,
        waited: Duration,
        last: Box<InstallError>,
    },
    #[error(
        "{file} changed while being edited, {ATTEMPTS} times in a row: is another tool rewriting it?"
    )]
    Busy { file: PathBuf },
    #[error(
        "{file} has one plugin and must become a list, {list}, but {other} {why}: the runtime \
         would then use another file; rename one of them"
    )]
    Order {
        file: PathBuf,
        list: String,
        other: String,
        why: &'static str,
    },
    #[error(
        "{bin} is kept: {files} still name redirector-cni (the runtime would fail every pod \
         without the binary); remove the entries by hand, then run uninstall again"
    )]
    StillNamed { bin: PathBuf, files: String },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> InstallError + '_ {
    move |error| InstallError::Io {
        path: path.into(),
        error,
    }
}

/// `redirector cni install`.
pub(crate) fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let installer = Installer::new(Path::new("/proc/self/exe"));
    let done = installer.install(args)?;
    println!("{done}");
    Ok(())
}

/// `redirector cni uninstall`.
pub(crate) fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let installer = Installer::new(Path::new("/proc/self/exe"));
    for line in installer.uninstall(args)? {
        println!("{line}");
    }
    Ok(())
}

/// The file-system work, with what tests replace: the binary to copy,
/// the poll interval, and a hook run between reading a config and
/// replacing it (where another tool may rewrite it).
pub(crate) struct Installer<'a> {
    exe: &'a Path,
    poll: Duration,
    before_replace: Box<dyn FnMut(&Path) + 'a>,
}

/// A config file as read: its bytes, and what tells a rewrite.
struct Snapshot {
    name: String,
    path: PathBuf,
    bytes: Vec<u8>,
    id: FileId,
    mode: u32,
}

/// Device, inode, size, modification and change times: any rename over
/// the file or write into it changes one of them.
#[derive(Debug, PartialEq, Eq)]
struct FileId(u64, u64, u64, i64, i64, i64, i64);

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        FileId(
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
    }
}

impl<'a> Installer<'a> {
    pub(crate) fn new(exe: &'a Path) -> Self {
        Self {
            exe,
            poll: POLL,
            before_replace: Box::new(|_| {}),
        }
    }

    pub(crate) fn install(mut self, args: &InstallArgs) -> Result<String, InstallError> {
        let bin = self.copy_binary(&args.bin_dir)?;
        let entry = Entry {
            socket: args.socket.clone(),
            log_file: args.log_file.clone(),
        };
        let deadline = args.wait.then(|| Instant::now() + args.wait_timeout);
        for _ in 0..ATTEMPTS {
            let snapshot = self.primary(&args.conf_dir, deadline)?;
            let file = snapshot.path.display().to_string();
            let kind = Kind::of(&snapshot.name).expect("a config file's name");
            let config = conflist::parse(&file, kind, &snapshot.bytes)?;
            conflist::check_version(&file, &config)?;
            let list = conflist::with_entry(&config, &snapshot.name, &entry);
            let target = match kind {
                Kind::List if config.json == list => {
                    return Ok(format!(
                        "installed {}; redirector-cni was already chained in {file}",
                        bin.display()
                    ));
                }
                Kind::List => snapshot.name.clone(),
                Kind::Single => self.list_name(&args.conf_dir, &snapshot)?,
            };
            (self.before_replace)(&snapshot.path);
            if !unchanged(&snapshot)? {
                info!(
                    file,
                    "the file changed while being edited: reading it again"
                );
                continue;
            }
            let target_path = args.conf_dir.join(&target);
            write_aside(&target_path, &conflist::to_bytes(&list), snapshot.mode)?;
            if target != snapshot.name {
                fs::remove_file(&snapshot.path).map_err(io_err(&snapshot.path))?;
                sync_dir(&args.conf_dir)?;
                return Ok(format!(
                    "installed {}; {file} became {} with redirector-cni chained last (socket {})",
                    bin.display(),
                    target_path.display(),
                    args.socket.display()
                ));
            }
            return Ok(format!(
                "installed {}; chained redirector-cni in {file} (socket {})",
                bin.display(),
                args.socket.display()
            ));
        }
        Err(InstallError::Busy {
            file: args.conf_dir.clone(),
        })
    }

    /// Copies the binary to `<dir>/redirector-cni`: aside, then renamed.
    fn copy_binary(&self, dir: &Path) -> Result<PathBuf, InstallError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let target = dir.join(PLUGIN_TYPE);
        let aside = dir.join(format!(".{PLUGIN_TYPE}.{}.tmp", std::process::id()));
        let copied = (|| {
            let mut from = File::open(self.exe).map_err(io_err(self.exe))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&aside)
                .map_err(io_err(&aside))?;
            io::copy(&mut from, &mut to).map_err(io_err(&aside))?;
            to.set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(io_err(&aside))?;
            to.sync_all().map_err(io_err(&aside))?;
            fs::rename(&aside, &target).map_err(io_err(&target))?;
            sync_dir(dir)
        })();
        if copied.is_err() {
            let _ = fs::remove_file(&aside);
        }
        copied.map(|()| target)
    }

    /// The primary config, waiting for one until `deadline` if given.
    fn primary(&self, dir: &Path, deadline: Option<Instant>) -> Result<Snapshot, InstallError> {
        let start = Instant::now();
        let mut said: Option<Instant> = None;
        loop {
            let found = first_config(dir).and_then(|snapshot| {
                let kind = Kind::of(&snapshot.name).expect("a config file's name");
                let file = snapshot.path.display().to_string();
                let config = conflist::parse(&file, kind, &snapshot.bytes)?;
                conflist::check_version(&file, &config)?;
                Ok(snapshot)
            });
            let Some(deadline) = deadline else {
                return found;
            };
            let problem = match found {
                Ok(snapshot) => return Ok(snapshot),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(InstallError::Timeout {
                    dir: dir.into(),
                    waited: start.elapsed(),
                    last: Box::new(problem),
                });
            }
            if said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                info!("waiting for the node's primary CNI network config: {problem}");
                said = Some(Instant::now());
            }
            thread::sleep(self.poll);
        }
    }

    /// The list name for the single-plugin `snapshot`, if it stays first.
    fn list_name(&self, dir: &Path, snapshot: &Snapshot) -> Result<String, InstallError> {
        let list = conflist::list_name(&snapshot.name);
        for other in config_files(dir)? {
            if other == snapshot.name || other > list {
                continue;
            }
            let order = |why| InstallError::Order {
                file: snapshot.path.clone(),
                list: list.clone(),
                other: other.clone(),
                why,
            };
            if other < list {
                return Err(order("sorts before it"));
            }
            // Our own earlier conversion of this very file, which the
            // cluster's CNI wrote again since: replaced.
            let path = dir.join(&other);
            let stale = read(&path).ok().and_then(|s| {
                let c = conflist::parse(&other, Kind::List, &s.bytes).ok()?;
                let plugins = c.json.get("plugins")?.as_array()?.clone();
                Some(plugins.iter().any(|p| {
                    p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
                        && p.get(conflist::CONVERTED_FROM).and_then(Value::as_str)
                            == Some(snapshot.name.as_str())
                }))
            });
            if stale != Some(true) {
                return Err(order("exists already"));
            }
        }
        Ok(list)
    }

    pub(crate) fn uninstall(mut self, args: &UninstallArgs) -> Result<Vec<String>, InstallError> {
        let dir = &args.conf_dir;
        let mut said = Vec::new();
        let mut still_named = Vec::new();
        let names = match config_files(dir) {
            Err(InstallError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                Vec::new()
            }
            other => other?,
        };
        for name in names {
            let path = dir.join(&name);
            let mut attempts = 0;
            loop {
                attempts += 1;
                if attempts > ATTEMPTS {
                    return Err(InstallError::Busy { file: path });
                }
                let snapshot = match read(&path) {
                    Ok(s) => s,
                    Err(InstallError::Io { error, .. })
                        if error.kind() == io::ErrorKind::NotFound =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let kind = Kind::of(&name).expect("a config file's name");
                let file = path.display().to_string();
                let config = match conflist::parse(&file, kind, &snapshot.bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        // Not ours to fix, unless it names us.
                        if contains(&snapshot.bytes, PLUGIN_TYPE) {
                            still_named.push(format!("{file} ({e})"));
                        }
                        break;
                    }
                };
                if !conflist::has_entry(&config) {
                    break;
                }
                if kind == Kind::Single {
                    // Not one we wrote: a config of its own for the plugin.
                    still_named.push(format!("{file} (a network of redirector-cni alone)"));
                    break;
                }
                let removed = conflist::without_entry(&config);
                (self.before_replace)(&path);
                if !unchanged(&snapshot)? {
                    continue;
                }
                match removed.result {
                    Restored::Single { file: single, json } if !dir.join(&single).exists() => {
                        let single_path = dir.join(&single);
                        write_aside(&single_path, &conflist::to_bytes(&json), snapshot.mode)?;
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        sync_dir(dir)?;
                        said.push(format!(
                            "removed redirector-cni from {file}, back to {}",
                            single_path.display()
                        ));
                    }
                    Restored::Single { file: single, .. } => {
                        // The cluster's CNI wrote the single file again:
                        // it is first, and the list made from its old
                        // content goes.
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        sync_dir(dir)?;
                        said.push(format!(
                            "removed {file} (made by install from {single}, which exists again)"
                        ));
                    }
                    Restored::List(list) => {
                        write_aside(&path, &conflist::to_bytes(&list), snapshot.mode)?;
                        said.push(format!("removed redirector-cni from {file}"));
                    }
                }
                break;
            }
        }
        let bin = args.bin_dir.join(PLUGIN_TYPE);
        if !still_named.is_empty() {
            return Err(InstallError::StillNamed {
                bin,
                files: still_named.join(", "),
            });
        }
        match fs::remove_file(&bin) {
            Ok(()) => said.push(format!("removed {}", bin.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&bin)(e)),
        }
        if said.is_empty() {
            said.push(format!(
                "nothing to remove: no entry in {} and no {}",
                dir.display(),
                bin.display()
            ));
        }
        Ok(said)
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The config files of `dir` the runtime considers, sorted as it sorts
/// them (by name, bytewise).
fn config_files(dir: &Path) -> Result<Vec<String>, InstallError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if Kind::of(&name).is_none() {
            continue;
        }
        // Directories are skipped; files and links to files count.
        if fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The first config file, read.
fn first_config(dir: &Path) -> Result<Snapshot, InstallError> {
    let name = config_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig { dir: dir.into() })?;
    read(&dir.join(name))
}

fn read(path: &Path) -> Result<Snapshot, InstallError> {
    let file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(io_err(path)(io::Error::other(format!(
            "longer than {MAX_CONFIG} bytes: not a network config"
        ))));
    }
    Ok(Snapshot {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.into(),
        bytes,
        id: FileId::of(&meta),
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// Whether the file at the snapshot's path is still the one read.
fn unchanged(snapshot: &Snapshot) -> Result<bool, InstallError> {
    match fs::metadata(&snapshot.path) {
        Ok(meta) => Ok(FileId::of(&meta) == snapshot.id),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&snapshot.path)(e)),
    }
}

/// Writes `bytes` to `.<name>.redirector.tmp` beside `path` (a name the
/// runtimes skip), syncs it and renames it over `path`.
fn write_aside(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.join(format!(".{name}.redirector.tmp"));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&aside)
            .map_err(io_err(&aside))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&aside))?;
        file.write_all(bytes).map_err(io_err(&aside))?;
        file.sync_all().map_err(io_err(&aside))?;
        fs::rename(&aside, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&aside);
    }
    written
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
