//! The CNI plugin (spec 1.0.0 and 1.1.0; network configs of 0.3.x and
//! 0.4.0 too), chained after the cluster's own plugins. The runtime runs
//! it with `CNI_*` variables and the network config on stdin, and reads
//! its result from stdout (so logs go to stderr only).
//!
//! - `ADD`: opens `CNI_NETNS`, tells the daemon (`op: add`, the namespace
//!   as a descriptor) and waits for its answer, then prints `prevResult`
//!   unchanged: a chained plugin that sets up no interface passes the
//!   result through.
//! - `DEL`: tells the daemon (`op: del`, the namespace too while it still
//!   exists); prints nothing, never fails.
//! - `CHECK`, `STATUS`, `GC`: succeed without asking the daemon.
//! - `VERSION`: the versions above.
//!
//! The daemon is an optimisation of the pod's traffic, never a condition
//! of its network: whatever goes wrong on the way to it (no socket, the
//! daemon down or slow, a bad answer, a namespace it cannot serve) is
//! logged, to stderr (which runtimes keep in their log) and to the
//! config's `log_file` if set, and the plugin succeeds. It fails, with a
//! CNI error object on stdout and a non-zero exit, only for what the spec
//! calls the runtime's errors: no `CNI_COMMAND`, a config that does not
//! parse or whose `cniVersion` it does not speak, no `CNI_CONTAINERID` or
//! `CNI_NETNS` on `ADD`.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::{
    NEWEST_VERSION, SUPPORTED_VERSIONS, client,
    protocol::{self, Op, Outcome, Request},
};

/// A network config longer than this is not a runtime's.
const MAX_CONFIG: u64 = 1024 * 1024;
/// How long the runtime has to write the config and close stdin.
const STDIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The log file is moved to `<log_file>.1` when it grows past this.
const MAX_LOG: u64 = 1024 * 1024;

/// The CNI spec's error codes (reserved 1–99) the plugin uses.
pub(crate) mod code {
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    pub(crate) const INVALID_ENV: u32 = 4;
    pub(crate) const IO_FAILURE: u32 = 5;
    pub(crate) const DECODE: u32 = 6;
    pub(crate) const INVALID_CONFIG: u32 = 7;
}

/// A CNI error: printed on stdout as the spec's error object, and the
/// plugin exits non-zero.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub(crate) struct CniError {
    pub(crate) code: u32,
    pub(crate) msg: String,
    pub(crate) details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object, in `version` (the config's, when known).
    pub(crate) fn to_json(&self, version: &str) -> String {
        let mut object = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = self.details.clone().into();
        }
        object.to_string()
    }
}

/// Where the plugin reads `CNI_*` from: the process environment, or a
/// table in tests.
pub(crate) trait Env {
    /// The variable's value; unset, empty and non-UTF-8 are all `None`.
    fn var(&self, key: &str) -> Option<String>;
}

struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// The plugin's entry in a network config (with what the runtime adds).
#[derive(Debug)]
pub(crate) struct NetConf {
    pub(crate) cni_version: String,
    pub(crate) name: String,
    /// The daemon's socket.
    pub(crate) socket: PathBuf,
    /// One line per pod event is appended here too.
    pub(crate) log_file: Option<PathBuf>,
    /// The previous plugin's result, byte for byte.
    pub(crate) prev_result: Option<Box<RawValue>>,
    /// Keys neither the spec nor the plugin knows (logged, not fatal: a
    /// runtime may add its own).
    pub(crate) unknown: Vec<String>,
}

/// Keys the spec defines for any plugin's config, and those that runtimes
/// add at run time, which the plugin accepts and does not use.
const SPEC_KEYS: [&str; 9] = [
    "args",
    "capabilities",
    "dns",
    "ipMasq",
    "ipam",
    "runtimeConfig",
    "type",
    "disableCheck",
    "disableGC",
];

/// The config's `key`, as a `T`, if present.
fn field<T: for<'de> Deserialize<'de>>(
    map: &mut BTreeMap<String, Box<RawValue>>,
    key: &str,
) -> Result<Option<T>, CniError> {
    let Some(raw) = map.remove(key) else {
        return Ok(None);
    };
    serde_json::from_str::<Option<T>>(raw.get()).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("network config field `{key}`: {e}"),
            raw.get().chars().take(200).collect::<String>(),
        )
    })
}

impl NetConf {
    /// Parses a network config (one plugin's, as the runtime passes it).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let decode = |e: serde_json::Error| {
            CniError::new(
                code::DECODE,
                "the network config on stdin is not a JSON object",
                e.to_string(),
            )
        };
        let mut map: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(decode)?;
        let cni_version: String = field(&mut map, "cniVersion")?.ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the network config has no `cniVersion`",
                "",
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("redirector-cni does not speak CNI version {cni_version:?}"),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = field(&mut map, "name")?.unwrap_or_default();
        let socket: Option<PathBuf> = field(&mut map, "socket")?;
        let socket = socket.unwrap_or_else(|| protocol::DEFAULT_SOCKET.into());
        if socket.as_os_str().is_empty() || !socket.is_absolute() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network config field `socket`: {} is not an absolute path",
                    socket.display()
                ),
                "",
            ));
        }
        let log_file: Option<PathBuf> = field(&mut map, "log_file")?;
        // `null` is as good as absent.
        let prev_result = map.remove("prevResult").filter(|r| r.get() != "null");
        // Written by `redirector cni install`, read by its uninstall.
        map.remove("converted_from");
        let unknown = map
            .into_keys()
            .filter(|k| !SPEC_KEYS.contains(&k.as_str()))
            .collect();
        Ok(Self {
            cni_version,
            name,
            socket,
            log_file,
            prev_result,
            unknown,
        })
    }

    /// The `ADD` result: the previous plugin's, unchanged, or an empty one
    /// in the config's version when this plugin runs alone. A previous
    /// result without a `cniVersion` gets the config's (the runtime reads
    /// the version from the result).
    pub(crate) fn result(&self) -> String {
        let empty = || serde_json::json!({ "cniVersion": self.cni_version }).to_string();
        let Some(prev) = &self.prev_result else {
            return empty();
        };
        match serde_json::from_str::<serde_json::Value>(prev.get()) {
            Ok(serde_json::Value::Object(mut object)) if !object.contains_key("cniVersion") => {
                object.insert("cniVersion".into(), self.cni_version.clone().into());
                serde_json::Value::Object(object).to_string()
            }
            _ => prev.get().to_owned(),
        }
    }
}

/// What one invocation prints on stdout (possibly nothing).
pub(crate) type Output = String;

/// `redirector-cni`, as the runtime runs it: the process environment,
/// stdin, stdout, and the exit status.
pub(crate) fn main() -> anyhow::Result<()> {
    // Without CNI_COMMAND (run by hand) there is no config to wait for.
    let outcome = if ProcessEnv.var("CNI_COMMAND").is_none() {
        handle(&ProcessEnv, b"")
    } else {
        read_stdin().and_then(|stdin| handle(&ProcessEnv, &stdin))
    };
    let mut stdout = io::stdout().lock();
    match outcome {
        Ok(output) => {
            if !output.is_empty() {
                writeln!(stdout, "{output}")?;
            }
            stdout.flush()?;
            Ok(())
        }
        Err((error, version)) => {
            writeln!(stdout, "{}", error.to_json(&version))?;
            stdout.flush()?;
            Err(error.into())
        }
    }
}

/// All of stdin, up to [`MAX_CONFIG`], within [`STDIN_TIMEOUT`].
fn read_stdin() -> Result<Vec<u8>, (CniError, String)> {
    let (tx, rx) = mpsc::channel();
    // A thread, so a runtime that never closes stdin gets an error in
    // time; the thread dies with the process.
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = io::stdin()
            .lock()
            .take(MAX_CONFIG + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes);
        let _ = tx.send(read);
    });
    let fail = |error| (error, NEWEST_VERSION.to_owned());
    match rx.recv_timeout(STDIN_TIMEOUT) {
        Ok(Ok(bytes)) if bytes.len() as u64 > MAX_CONFIG => Err(fail(CniError::new(
            code::DECODE,
            format!("the network config on stdin is longer than {MAX_CONFIG} bytes"),
            "",
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(fail(CniError::new(
            code::IO_FAILURE,
            "reading the network config from stdin",
            e.to_string(),
        ))),
        Err(_) => Err(fail(CniError::new(
            code::IO_FAILURE,
            format!("stdin was not closed within {STDIN_TIMEOUT:?}"),
            "",
        ))),
    }
}

/// One invocation: the output, or the error with the version to write it
/// in.
pub(crate) fn handle(env: &dyn Env, stdin: &[u8]) -> Result<Output, (CniError, String)> {
    let newest = |e| (e, NEWEST_VERSION.to_owned());
    let command = env.var("CNI_COMMAND").ok_or_else(|| {
        newest(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set: redirector-cni is a CNI plugin, run by the container runtime",
            "",
        ))
    })?;
    match command.as_str() {
        "VERSION" => Ok(version(stdin)),
        "ADD" => {
            let conf = NetConf::parse(stdin).map_err(newest)?;
            let in_version = |e| (e, conf.cni_version.clone());
            add(env, &conf).map_err(in_version)?;
            Ok(conf.result())
        }
        "DEL" => {
            del(env, stdin);
            Ok(String::new())
        }
        "CHECK" | "STATUS" | "GC" => {
            // Nothing of the pod's network is the plugin's to check, and
            // the runtime needs no daemon to create pods.
            let conf = NetConf::parse(stdin).map_err(newest)?;
            warn_unknown(&conf);
            Ok(String::new())
        }
        other => Err(newest(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is none of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            "",
        ))),
    }
}

fn version(stdin: &[u8]) -> Output {
    #[derive(Deserialize)]
    struct Asked {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    // Answer in the version asked, when it is one of ours.
    let asked = serde_json::from_slice::<Asked>(stdin)
        .ok()
        .and_then(|a| a.cni_version)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| NEWEST_VERSION.to_owned());
    serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn warn_unknown(conf: &NetConf) {
    if !conf.unknown.is_empty() {
        warn!(keys = ?conf.unknown, network = %conf.name, "redirector-cni: ignoring unknown keys of its network config");
    }
}

fn required(env: &dyn Env, key: &str) -> Result<String, CniError> {
    env.var(key).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("{key} is not set (or not UTF-8)"),
            "",
        )
    })
}

/// The request for `op`, from the runtime's variables.
fn request(env: &dyn Env, op: Op, container_id: String) -> Request {
    let (pod_namespace, pod_name) =
        protocol::pod_from_args(&env.var("CNI_ARGS").unwrap_or_default());
    Request {
        op,
        container_id,
        netns: env.var("CNI_NETNS").unwrap_or_default(),
        pod_namespace,
        pod_name,
    }
}

fn add(env: &dyn Env, conf: &NetConf) -> Result<(), CniError> {
    warn_unknown(conf);
    let container_id = required(env, "CNI_CONTAINERID")?;
    let netns = required(env, "CNI_NETNS")?;
    let request = request(env, Op::Add, container_id);
    let said = match open_netns(Path::new(&netns)) {
        Ok(ns) => tell(conf, &request, Some(&ns)),
        Err(e) => format!("not served: {e}"),
    };
    note(conf, &request, &said);
    Ok(())
}

fn del(env: &dyn Env, stdin: &[u8]) {
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => {
            // A pod must always be deletable: use the defaults.
            warn!(error = %e, "redirector-cni DEL: using the default socket");
            NetConf {
                cni_version: NEWEST_VERSION.into(),
                name: String::new(),
                socket: protocol::DEFAULT_SOCKET.into(),
                log_file: None,
                prev_result: None,
                unknown: Vec::new(),
            }
        }
    };
    let Some(container_id) = env.var("CNI_CONTAINERID") else {
        warn!("redirector-cni DEL without CNI_CONTAINERID: nothing to release");
        return;
    };
    let request = request(env, Op::Del, container_id);
    // The namespace may be gone already; the container id names the pod.
    let ns = env
        .var("CNI_NETNS")
        .and_then(|p| open_netns(Path::new(&p)).ok());
    let said = tell(&conf, &request, ns.as_ref());
    note(&conf, &request, &said);
}

/// `ioctl(NS_GET_NSTYPE)` (linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens `path` and checks that it is a network namespace, so nothing
/// else is ever passed to the daemon.
fn open_netns(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::other(format!(
            "{} is not a network namespace",
            path.display()
        )));
    }
    Ok(file)
}

/// Asks the daemon; says how it went, in words for the log.
fn tell(conf: &NetConf, request: &Request, ns: Option<&File>) -> String {
    match client::exchange(
        &conf.socket,
        request,
        ns.map(AsFd::as_fd),
        protocol::EXCHANGE_TIMEOUT,
    ) {
        Ok(answer) => {
            let outcome = match answer.outcome {
                Outcome::Served => "served",
                Outcome::LeftAlone => "left alone",
                Outcome::Released => "released",
                Outcome::NotServed => "not served",
            };
            if answer.detail.is_empty() {
                outcome.to_owned()
            } else {
                format!("{outcome}: {}", answer.detail)
            }
        }
        Err(e) => format!("not served: {e} (the pod's network is as without the redirector)"),
    }
}

/// Logs what happened to the pod, to stderr and the config's log file.
fn note(conf: &NetConf, request: &Request, said: &str) {
    let op = match request.op {
        Op::Add => "ADD",
        Op::Del => "DEL",
    };
    let pod = match (&request.pod_namespace, &request.pod_name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => "-".to_owned(),
    };
    if said.starts_with("not served") {
        warn!(op, %pod, container = %request.container_id, netns = %request.netns, "redirector-cni: {said}");
    } else {
        info!(op, %pod, container = %request.container_id, netns = %request.netns, "redirector-cni: {said}");
    }
    if let Some(path) = &conf.log_file {
        let line = format!(
            "{} {op} pod {pod} container {} netns {}: {said}\n",
            utc_now(),
            request.container_id,
            if request.netns.is_empty() {
                "-"
            } else {
                &request.netns
            },
        );
        if let Err(e) = append_log(path, &line) {
            warn!(file = %path.display(), error = %e, "redirector-cni: cannot write its log file");
        }
    }
}

/// Appends `line`, after moving a file grown past [`MAX_LOG`] to `.1`.
fn append_log(path: &Path, line: &str) -> io::Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        fs::rename(path, old)?;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let _ = file.set_permissions(fs::Permissions::from_mode(0o644));
    // One write with O_APPEND: lines of concurrent plugins do not mix.
    file.write_all(line.as_bytes())
}

/// Now as `2026-12-07T05:31:50Z`.
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
