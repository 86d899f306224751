//! What the redirector's daemon holds, read from /proc: resident memory,
//! open file descriptors (sockets among them), and the BPF maps its
//! descriptors hold with their kernel memory. Of the daemon and its
//! children (the netns helper that enters pods for it): the processes a
//! node runs for the redirector.
//!
//! A map's memory is `memlock` in its fdinfo, which since Linux 6.4 is
//! the map's own estimate of what it uses (`map_mem_usage`); before, the
//! size the map was charged for. Maps are counted once by id, however
//! many descriptors hold them. Maps only the kernel holds (the programs'
//! own, pinned) are the same with any number of pods and not counted; a
//! pod's own maps (the inner maps of its sockets' records) are made for
//! the daemon, which holds them while it serves the pod.

use std::{collections::BTreeMap, fs, io};

use anyhow::{Context, Result};

use crate::model::{Footprint, ProcessUse};

/// The footprint of daemon `pid` and its children, serving `pods`.
pub(crate) fn read(pid: u32, pods: u32) -> Result<Footprint> {
    let mut footprint = Footprint {
        pods,
        ..Footprint::default()
    };
    let mut maps = BTreeMap::new();
    for (role, pid) in std::iter::once(("daemon".to_owned(), pid)).chain(children(pid)) {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rss_kib =
            vm_rss_kib(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        let fds = descriptors(pid).with_context(|| format!("listing /proc/{pid}/fd"))?;
        footprint.rss_kib += rss_kib;
        footprint.fds += fds.total;
        footprint.sockets += fds.sockets;
        for (kind, n) in &fds.kinds {
            *footprint.fd_kinds.entry(kind.clone()).or_default() += n;
        }
        maps.extend(fds.maps);
        footprint.processes.insert(
            role,
            ProcessUse {
                pid,
                rss_kib,
                fds: fds.total,
                fd_kinds: fds.kinds,
            },
        );
    }
    footprint.bpf_maps = maps.len() as u64;
    footprint.bpf_map_kib = maps.values().sum::<u64>().div_ceil(1024);
    Ok(footprint)
}

/// The live children of `pid`, each with its role: `netns helper` (the
/// daemon runs itself as `redirector netns-helper`), else its command.
fn children(pid: u32) -> Vec<(String, u32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(pid)
        })
        .map(|child| {
            let cmdline = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let role = if args.iter().any(|a| a == "netns-helper") {
                "netns helper".to_owned()
            } else {
                format!("child {}", args.first().map_or("?", String::as_str))
            };
            (role, child)
        })
        .collect()
}

/// The ppid in a `/proc/<pid>/stat` line (after the command, which may
/// hold spaces and parentheses).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` of a `/proc/<pid>/status`, KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A process's descriptors.
#[derive(Debug, Default)]
struct Descriptors {
    total: u64,
    sockets: u64,
    kinds: BTreeMap<String, u64>,
    /// BPF maps: id → memlock bytes.
    maps: BTreeMap<u64, u64>,
}

fn descriptors(pid: u32) -> io::Result<Descriptors> {
    let mut out = Descriptors::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        // A descriptor closed meanwhile has no target any more.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        out.total += 1;
        let target = target.to_string_lossy();
        *out.kinds.entry(kind(&target)).or_default() += 1;
        if target.starts_with("socket:") {
            out.sockets += 1;
        } else if target == "anon_inode:bpf-map" {
            let fd = entry.file_name();
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
                .unwrap_or_default();
            if let Some((id, bytes)) = bpf_map(&info) {
                out.maps.insert(id, bytes);
            }
        }
    }
    Ok(out)
}

/// What a descriptor is, from its link's target: `socket:[42]` is a
/// `socket`, `net:[4026532]` a `net` namespace, `anon_inode:bpf-map` a
/// `bpf-map`, `anon_inode:[eventfd]` an `eventfd`, a path a `file`.
fn kind(target: &str) -> String {
    if let Some(inode) = target.strip_prefix("anon_inode:") {
        return inode
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
    }
    match target.split_once(":[") {
        Some((kind, _)) if !target.starts_with('/') => kind.to_owned(),
        _ => "file".to_owned(),
    }
}

/// (map_id, memlock bytes) of a BPF map's fdinfo.
fn bpf_map(fdinfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("map_id")?, field("memlock")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_lines() {
        assert_eq!(
            parent_of("42 (tokio (worker) 1) S 7 42 42 0 -1 4194560"),
            Some(7)
        );
        assert_eq!(parent_of("garbage"), None);
        assert_eq!(
            vm_rss_kib("Name:\tredirector\nVmHWM:\t   9000 kB\nVmRSS:\t    8192 kB\n"),
            Some(8192)
        );
        assert_eq!(vm_rss_kib("Name:\tkthreadd\n"), None);
        // An LRU hash map's fdinfo, as Linux 6.18 writes it.
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2057\nmap_type:\t9\n\
                    key_size:\t16\nvalue_size:\t16\nmax_entries:\t1024\nmap_flags:\t0x0\n\
                    map_extra:\t0x0\nmemlock:\t99584\nmap_id:\t412\nfrozen:\t0\n";
        assert_eq!(bpf_map(info), Some((412, 99584)));
        assert_eq!(bpf_map("pos:\t0\n"), None);
        for (target, k) in [
            ("socket:[81234]", "socket"),
            ("net:[4026532999]", "net"),
            ("pipe:[77]", "pipe"),
            ("anon_inode:bpf-map", "bpf-map"),
            ("anon_inode:[eventpoll]", "eventpoll"),
            ("/dev/null", "file"),
            ("/tmp/a:[b]", "file"),
        ] {
            assert_eq!(kind(target), k, "{target}");
        }
    }

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id(), 0).unwrap();
        assert!(me.rss_kib > 0, "{me:?}");
        // stdin, stdout, stderr at least, and the directory being listed.
        assert!(me.fds >= 3, "{me:?}");
        assert_eq!(me.bpf_maps, 0);
    }
}
