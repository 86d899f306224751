//! Running external tools from the workflows: echo the command, run it in
//! the workspace root, pass its output through, and fail with the command
//! line and its last lines of output when it fails, so the reason of a
//! failure travels with the error up to the last lines `cargo xtask`
//! prints.

use std::{
    collections::VecDeque,
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

/// How many of its last lines of stderr, where tools say why they failed,
/// a failed command's error carries; and of its stdout, shown first.
const STDERR_LINES: usize = 25;
const STDOUT_LINES: usize = 10;
/// How long to wait, after a command exited, for the rest of its output
/// (a process it left behind may hold its pipes open for ever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The workspace root (the parent of this crate).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// A command that runs in the workspace root, without the variables
/// `cargo run` set for the xtask itself: a cargo build started from here
/// then sees what a build by hand sees (ring's build script reruns when
/// `CARGO_MANIFEST_DIR` changes, and every switch between the two cost a
/// full release rebuild).
pub(crate) fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key);
        }
    }
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

/// The last lines of one of a command's outputs. Each output keeps its
/// own: read on two threads, their order between each other is lost, and
/// a flood of stdout must not push out the reason on stderr.
struct Tail {
    lines: VecDeque<String>,
    keep: usize,
}

impl Tail {
    fn new(keep: usize) -> Arc<Mutex<Tail>> {
        Arc::new(Mutex::new(Tail {
            lines: VecDeque::new(),
            keep,
        }))
    }

    fn push(&mut self, line: &[u8]) {
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        let line = String::from_utf8_lossy(line);
        self.lines.push_back(line.trim_end().to_owned());
    }

    fn text(tail: &Mutex<Tail>) -> String {
        let tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tail.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Copies `pipe` to `to` as it comes, keeping its lines in `tail`;
/// signals `done` at its end.
fn forward(
    mut pipe: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    tail: Arc<Mutex<Tail>>,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut line = Vec::new();
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            for &b in &buf[..n] {
                if b == b'\n' {
                    tail.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(&line);
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            tail.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(&line);
        }
        let _ = done.send(());
    });
}

/// Runs `cmd`, passing its output through; fails unless it exits 0, with
/// its last lines of output as the cause.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = shown(cmd);
    eprintln!("$ {line}");
    // Its output goes through a pipe now: keep cargo's colours on a
    // terminal.
    if cmd.get_program() == std::ffi::OsStr::new("cargo")
        && std::io::stderr().is_terminal()
        && std::env::var_os("CARGO_TERM_COLOR").is_none()
    {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    let (out_tail, err_tail) = (Tail::new(STDOUT_LINES), Tail::new(STDERR_LINES));
    let (done, finished) = mpsc::channel();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    forward(
        stdout,
        std::io::stdout(),
        Arc::clone(&out_tail),
        done.clone(),
    );
    forward(stderr, std::io::stderr(), Arc::clone(&err_tail), done);
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    for _ in 0..2 {
        if finished.recv_timeout(DRAIN_TIMEOUT).is_err() {
            break;
        }
    }
    if !status.success() {
        let mut last = String::new();
        for (name, tail) in [("stdout", &out_tail), ("stderr", &err_tail)] {
            let text = Tail::text(tail);
            if !text.is_empty() {
                last += &format!("\n(its {name})\n{text}");
            }
        }
        return Err(anyhow!("its last lines of output:{last}"))
            .context(format!("`{line}` failed ({status})"));
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
pub(crate) fn require_root(what: &str) -> Result<()> {
    if !redirector_tests::privilege::is_root() {
        bail!(
            "`cargo xtask {what}` needs root (packages, bpffs, namespaces, cgroups): run it as root or with sudo -E"
        );
    }
    Ok(())
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and config).
pub(crate) fn target_dir() -> Result<PathBuf> {
    let out = command("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// An error and its causes, one per line, outermost first; a cause of
/// several lines (a log, the last lines of a command) is indented below
/// its first.
pub(crate) fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for (i, cause) in err.chain().enumerate() {
        let cause = cause.to_string();
        let mut lines = cause.lines();
        let first = lines.next().unwrap_or_default();
        if i == 0 {
            text.push_str(first);
        } else {
            text.push_str("\n  because: ");
            text.push_str(first);
        }
        for line in lines {
            text.push_str("\n    ");
            text.push_str(line);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_carries_its_last_lines_of_output() {
        let script = "for i in $(seq 1 40); do echo out $i; echo err $i >&2; done; \
                      echo the reason >&2; exit 3";
        let err = run(Command::new("sh").args(["-c", script])).unwrap_err();
        let text = chain(&err);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("`sh -c for i in")
                && lines[0].ends_with("failed (exit status: 3)"),
            "{text}"
        );
        let mut want = vec!["  because: its last lines of output:", "    (its stdout)"];
        let outs: Vec<String> = (31..=40).map(|i| format!("    out {i}")).collect();
        want.extend(outs.iter().map(String::as_str));
        want.push("    (its stderr)");
        let errs: Vec<String> = (17..=40).map(|i| format!("    err {i}")).collect();
        want.extend(errs.iter().map(String::as_str));
        want.push("    the reason");
        assert_eq!(lines[1..], want, "{text}");
    }

    #[test]
    fn a_command_that_succeeds_is_ok() {
        run(Command::new("sh").args(["-c", "echo fine"])).unwrap();
        assert!(run(&mut Command::new("/nonexistent/program")).is_err());
    }

    #[test]
    fn the_chain_is_one_cause_per_line() {
        let err = Err::<(), _>(anyhow!("inner\nlog 1\nlog 2"))
            .context("middle")
            .context("outer")
            .unwrap_err();
        assert_eq!(
            chain(&err),
            "outer\n  because: middle\n  because: inner\n    log 1\n    log 2"
        );
    }
}
