//! The container runtime's half of CNI (spec 1.0.0), as libcni does it
//! for a network configuration list (a conflist): enough for the test
//! bed's pods ([`crate::pod`]) to be made by the real plugins.
//!
//! - ADD runs the plugins in order. Each gets its own config with the
//!   list's `cniVersion` and `name` put in and, after the first, the result
//!   of the one before as `prevResult`; the last result is the
//!   attachment's. A failed ADD is undone by a DEL of the whole list, as a
//!   runtime tears down a sandbox whose network setup failed.
//! - DEL runs them in reverse, each with the ADD's result as `prevResult`
//!   (libcni's cached result); past a failing plugin too, so one broken
//!   plugin does not leak what the others hold (the failures are reported
//!   together).
//! - CHECK runs them in order with the ADD's result.
//!
//! A plugin is the executable named by its `type`, looked up in the
//! `CNI_PATH` directories in order. It runs with `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS` (a path), `CNI_IFNAME`, `CNI_ARGS` and
//! `CNI_PATH` on top of the test's environment, its config on stdin,
//! inside the namespace the runtime was given (a node's: bridges and the
//! host ends of veths are made there; entered with `setns(2)` before exec,
//! like `nsenter --net`), and prints its result, or a CNI error, on stdout.

use std::{
    fmt,
    io::Write,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    names,
    netns::{self, Netns},
    process,
};

/// A network configuration list: plugins run in order for ADD.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    /// The spec version every plugin is asked to speak (`1.0.0`).
    pub cni_version: String,
    /// The network's name (host-local keeps its leases under it).
    pub name: String,
    /// Each plugin's own config: at least `type`.
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// What plugin `index` reads on stdin: its config with the list's
    /// version and name, and `prev` as `prevResult`.
    fn plugin_config(&self, index: usize, prev: Option<&Value>) -> Result<Value> {
        let mut config = self.plugins[index].clone();
        let Some(object) = config.as_object_mut() else {
            bail!(
                "plugin {index} of network {} is not a JSON object",
                self.name
            );
        };
        object.insert("cniVersion".into(), self.cni_version.clone().into());
        object.insert("name".into(), self.name.clone().into());
        if let Some(prev) = prev {
            object.insert("prevResult".into(), prev.clone());
        }
        Ok(config)
    }
}

/// One attachment of a container to a network: the key of ADD, CHECK and
/// DEL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the pod sandbox's id.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the sandbox's network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to make inside it (`eth0`).
    pub ifname: String,
    /// `CNI_ARGS`: `key=value` pairs separated by `;`.
    pub args: String,
}

/// A plugin that failed: what it said (a CNI error on stdout, else its
/// exit status and stderr).
#[derive(Clone, Debug)]
pub struct PluginError {
    /// The plugin's `type`.
    pub plugin: String,
    /// `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// The CNI error code, when it printed one.
    pub code: Option<u64>,
    /// The error's `msg`, or what went wrong running it.
    pub msg: String,
    /// The error's `details`.
    pub details: String,
    /// Its stderr.
    pub stderr: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI plugin {} {} failed", self.plugin, self.command)?;
        if let Some(code) = self.code {
            write!(f, " with code {code}")?;
        }
        write!(f, ": {}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "; stderr: {}", self.stderr.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

/// How long one plugin may run: they take milliseconds, but a chained
/// plugin may wait for a daemon, and a loaded machine is slow.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs network lists' plugins from `CNI_PATH`, inside one namespace.
#[derive(Clone, Debug)]
pub struct Runtime {
    cni_path: Vec<PathBuf>,
    run_in: Arc<OwnedFd>,
    run_in_name: String,
}

impl Runtime {
    /// Plugins found in `cni_path` (in order), run inside `run_in`.
    pub fn new(run_in: &Netns, cni_path: Vec<PathBuf>) -> Runtime {
        Runtime {
            cni_path,
            run_in: Arc::clone(run_in.fd()),
            run_in_name: run_in.name().to_owned(),
        }
    }

    /// ADD: the attachment's result (the last plugin's). On failure, DEL
    /// of the whole list has run; the error is the failing plugin's (a
    /// [`PluginError`] when it ran).
    pub fn add(&self, list: &NetworkList, attachment: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for index in 0..list.plugins.len() {
            let config = list.plugin_config(index, prev.as_ref())?;
            match self.exec("ADD", &config, attachment) {
                Ok(result) if result.is_object() => prev = Some(result),
                Ok(other) => {
                    let err = anyhow!(
                        "CNI plugin {} ADD printed no result object: {other}",
                        plugin_type(&config)
                    );
                    return Err(self.undo(list, attachment, err));
                }
                Err(err) => return Err(self.undo(list, attachment, err)),
            }
        }
        prev.with_context(|| format!("network {} has no plugins", list.name))
    }

    /// DEL in reverse order, each plugin with `result` (the ADD's) as
    /// `prevResult`; every plugin runs even if one before failed.
    pub fn del(
        &self,
        list: &NetworkList,
        attachment: &Attachment,
        result: Option<&Value>,
    ) -> Result<()> {
        let mut failures = Vec::new();
        for index in (0..list.plugins.len()).rev() {
            let outcome = list
                .plugin_config(index, result)
                .and_then(|config| self.exec("DEL", &config, attachment));
            if let Err(err) = outcome {
                failures.push(format!("{err:#}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "CNI DEL of {} for {}: {}",
                list.name,
                attachment.container_id,
                failures.join("; ")
            )
        }
    }

    /// CHECK in order, each plugin with `result` (the ADD's) as
    /// `prevResult`; the first failure is the answer.
    pub fn check(&self, list: &NetworkList, attachment: &Attachment, result: &Value) -> Result<()> {
        for index in 0..list.plugins.len() {
            let config = list.plugin_config(index, Some(result))?;
            self.exec("CHECK", &config, attachment)?;
        }
        Ok(())
    }

    /// A failed ADD: DEL the whole list, return the ADD's error (with the
    /// DEL's, if that failed too).
    fn undo(
        &self,
        list: &NetworkList,
        attachment: &Attachment,
        err: anyhow::Error,
    ) -> anyhow::Error {
        match self.del(list, attachment, None) {
            Ok(()) => err,
            Err(del) => err.context(format!("and undoing it failed: {del:#}")),
        }
    }

    /// Where the plugin `name` is: the first `CNI_PATH` directory that has
    /// it.
    fn find(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') {
            bail!("{name:?} is not a CNI plugin name");
        }
        self.cni_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
            .with_context(|| {
                format!(
                    "no CNI plugin {name} in {:?} (cargo xtask setup installs Debian's containernetworking-plugins)",
                    self.cni_path
                )
            })
    }

    /// Runs one plugin; its stdout as JSON (`Null` when empty).
    fn exec(&self, command: &str, config: &Value, attachment: &Attachment) -> Result<Value> {
        let plugin = plugin_type(config);
        let path = self.find(&plugin)?;
        let cni_path = std::env::join_paths(&self.cni_path).context("CNI_PATH")?;
        let mut cmd = Command::new(&path);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", &attachment.args)
            .env("CNI_PATH", cni_path)
            .env(names::OWNER_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = Arc::clone(&self.run_in);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe.
        unsafe { cmd.pre_exec(move || netns::enter(&fd)) };
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting CNI plugin {} in {}",
                path.display(),
                self.run_in_name
            )
        })?;
        let stdout = process::drain(child.stdout.take());
        let stderr = process::drain(child.stderr.take());
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading says why on stdout.
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        let status = process::wait_timeout(&mut child, PLUGIN_TIMEOUT)?;
        if status.is_none() {
            process::kill_and_reap(&mut child);
        }
        let stdout = stdout.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
        let failed = |code, msg: String, details: String| PluginError {
            plugin: plugin.clone(),
            command: command.to_owned(),
            code,
            msg,
            details,
            stderr: stderr.clone(),
        };
        let Some(status) = status else {
            return Err(failed(
                None,
                format!("no answer within {PLUGIN_TIMEOUT:?}"),
                String::new(),
            )
            .into());
        };
        let parsed: Option<Value> = serde_json::from_slice(&stdout).ok();
        if !status.success() {
            let error = parsed.unwrap_or_default();
            let msg = error["msg"].as_str().map_or_else(
                || format!("{status}: {}", String::from_utf8_lossy(&stdout).trim()),
                str::to_owned,
            );
            return Err(failed(
                error["code"].as_u64(),
                msg,
                error["details"].as_str().unwrap_or_default().to_owned(),
            )
            .into());
        }
        if stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        parsed.ok_or_else(|| {
            failed(
                None,
                format!(
                    "printed something that is not JSON: {}",
                    String::from_utf8_lossy(&stdout).trim()
                ),
                String::new(),
            )
            .into()
        })
    }
}

/// A plugin config's `type` (empty if it has none).
fn plugin_type(config: &Value) -> String {
    config["type"].as_str().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugins_get_the_lists_version_name_and_prev_result() {
        let list = NetworkList {
            cni_version: "1.0.0".into(),
            name: "pods".into(),
            plugins: vec![
                json!({"type": "bridge", "bridge": "cni0"}),
                json!({"type": "redirector-cni", "socket": "/run/x.sock", "name": "theirs"}),
            ],
        };
        assert_eq!(
            list.plugin_config(0, None).unwrap(),
            json!({"type": "bridge", "bridge": "cni0", "cniVersion": "1.0.0", "name": "pods"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.0.2/24"}]});
        assert_eq!(
            list.plugin_config(1, Some(&prev)).unwrap(),
            json!({
                "type": "redirector-cni",
                "socket": "/run/x.sock",
                "cniVersion": "1.0.0",
                "name": "pods",
                "prevResult": prev,
            })
        );
        let bad = NetworkList {
            plugins: vec![json!("bridge")],
            ..list
        };
        assert!(bad.plugin_config(0, None).is_err());
    }
}
