//! Running the external tools the bench installs and asks for versions:
//! echo the command, run it in the workspace root with inherited stdio,
//! and fail with the command line when it fails. The processes it
//! measures are started by the test bed (`redirector_tests`) instead.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("the bench lives in the workspace")
        .to_owned()
}

/// A command that runs in the workspace root.
pub(crate) fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

fn shown(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = shown(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout if it exits 0, `None` if it
/// fails or cannot start (used for "is it installed?" probes).
pub(crate) fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless running as root.
pub(crate) fn require_root() -> Result<()> {
    if !redirector_tests::privilege::is_root() {
        bail!(
            "the bench needs root (packages, bpffs, namespaces, cgroups): run `cargo xtask bench` as root or with sudo -E"
        );
    }
    Ok(())
}
