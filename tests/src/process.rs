//! Small process helpers shared by the bed and the benchmark: run a tool
//! and turn a failure into an error that shows the command and its stderr,
//! wait for a child with a deadline, send signals, pin a child to a CPU,
//! drain its pipes.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to completion; returns its stdout, or an error with the
/// command line, exit status and stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `child` until it exits or `timeout` passes; `None` on timeout.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// SIGKILLs `child` (if still running) and reaps it.
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// `target/<profile>/<name>` found from the running executable, which is
/// either `target/<profile>/<exe>` (xtask) or `target/<profile>/deps/<test>`
/// (test binaries). `None` if there is no such file.
pub fn target_bin(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir = dir.parent()?;
    }
    let path = dir.join(name);
    path.is_file().then_some(path)
}

/// Makes `cmd`'s child run only on `cpu` (`sched_setaffinity` before it
/// execs; its threads and children inherit it).
pub fn pin_to_cpu(cmd: &mut Command, cpu: u32) -> Result<&mut Command> {
    let index = usize::try_from(cpu)?;
    if index >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        bail!("cpu {cpu} is beyond what cpu_set_t holds");
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set, and the
    // index is within it (checked above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(index, &mut set) };
    // SAFETY: sched_setaffinity(2) is a plain syscall on a set built before
    // the fork: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
                == 0
            {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(cmd)
}

/// Reads a child's pipe to the end on its own thread, so a child that
/// fills one pipe while we wait on the other cannot block.
pub fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}
