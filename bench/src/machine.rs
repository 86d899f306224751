//! Where and with what the numbers were taken: they mean little without
//! the machine, the kernel and every tool's version beside them.

use std::{fs, path::Path, process::Command};

use anyhow::Result;

use crate::cmd::{self, command};
use crate::{install, model::MachineInfo, tools::Tools};

fn first_line(cmd: &mut Command) -> String {
    cmd::probe(cmd)
        .and_then(|out| out.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// `<path>, sha256 <first 12 hex digits>`: which build the baseline was.
fn identify(binary: &Path) -> String {
    let digest = cmd::probe(Command::new("sha256sum").arg(binary))
        .and_then(|out| {
            out.split_whitespace()
                .next()
                .map(|d| d[..12.min(d.len())].to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{}, sha256 {digest}", binary.display())
}

pub(crate) fn info(tools: &Tools, baseline: Option<&Path>) -> Result<MachineInfo> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut versions = install::versions(tools);
    versions.insert(
        "redirector".into(),
        first_line(command("git").args(["describe", "--always", "--dirty"])),
    );
    if let Some(binary) = baseline {
        versions.insert("redirector-baseline".into(), identify(binary));
    }
    versions.insert("rustc".into(), first_line(Command::new("rustc").arg("-V")));
    Ok(MachineInfo {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        hostname: fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        cpus: cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count() as u32,
        memory_kib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0),
        versions,
    })
}
