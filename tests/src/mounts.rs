//! Where a filesystem type is mounted, read from `/proc/self/mountinfo`.
//!
//! The cgroup2 mount is `/sys/fs/cgroup` on most machines but
//! `/sys/fs/cgroup/unified` on hybrid setups (like our CI VM), so nothing
//! hard-codes it; the same parser tells `cargo xtask setup` whether bpffs is
//! mounted.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Mount points of every mount whose filesystem type is `fstype`, in
/// mountinfo order.
pub fn mount_points(fstype: &str) -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse(&text, fstype))
}

/// Parses mountinfo text (see proc(5)): fields before ` - ` hold the mount
/// point at index 4, the first field after it is the filesystem type.
pub fn parse(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 25 0:26 / /sys rw,nosuid shared:7 - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw,mode=700
43 25 0:40 / /mnt/with\\040space rw - cgroup2 none rw
";

    #[test]
    fn finds_cgroup2_and_bpf_mounts() {
        assert_eq!(
            parse(SAMPLE, "cgroup2"),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
        assert_eq!(parse(SAMPLE, "bpf"), [PathBuf::from("/sys/fs/bpf")]);
        assert!(parse(SAMPLE, "tmpfs").is_empty());
    }
}
