//! Notices when the config file (or a TLS file it names: a rotated
//! certificate) changes, however it was changed: written
//! in place, replaced by a rename, or re-pointed the way the kubelet
//! updates a mounted ConfigMap (`config.yaml` → `..data/config.yaml`, and
//! `..data` swapped to a new timestamped directory by renaming a symlink).
//!
//! One mechanism catches all three: every [`POLL`] the file is `stat`ed
//! through its symlinks, and read only when its identity (device, inode),
//! size or times changed. inotify would need a different watch per case
//! (the file, its directory for renames, the `..data` symlink's directory
//! for ConfigMaps) and still miss edits through a symlink it does not
//! watch; a stat four times a second costs nothing.
//!
//! A change fires only once the new content has been the same on two
//! consecutive looks, so a file caught halfway through a non-atomic write
//! is not reported as a broken config; identical content (a `touch`, or a
//! ConfigMap update that changed another key) does not fire at all.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::debug;

/// How often the file is looked at: with the stability check, a change is
/// seen within two polls.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The files a running config was read from (the config file and the TLS
/// files it names), advanced by [`Watch::look`].
pub(crate) struct Watch {
    files: Vec<File>,
}

impl Watch {
    /// Watches `paths` from their content now, which is in force.
    pub(crate) fn new(paths: impl IntoIterator<Item = PathBuf>) -> Watch {
        let mut files: Vec<File> = Vec::new();
        for path in paths {
            if files.iter().all(|f| f.path != path) {
                files.push(File::new(path));
            }
        }
        Watch { files }
    }

    /// Looks at every file once: a file that now holds new content that
    /// was the same on the previous look too (the first, if several do).
    pub(crate) fn look(&mut self) -> Option<PathBuf> {
        let mut changed = None;
        // Every file is looked at, so each one's state stays current.
        for f in &mut self.files {
            if f.look() && changed.is_none() {
                changed = Some(f.path.clone());
            }
        }
        changed
    }
}

/// One watched file.
struct File {
    path: PathBuf,
    stamp: Option<Stamp>,
    /// The content last reported (or there at start; `None`: unreadable).
    current: Option<Vec<u8>>,
    /// New content seen once, waiting to be seen again unchanged.
    pending: Option<Vec<u8>>,
}

impl File {
    fn new(path: PathBuf) -> File {
        File {
            stamp: Stamp::of(&path),
            current: std::fs::read(&path).ok(),
            pending: None,
            path,
        }
    }

    fn look(&mut self) -> bool {
        let stamp = Stamp::of(&self.path);
        if stamp == self.stamp && self.pending.is_none() {
            return false;
        }
        self.stamp = stamp;
        let Ok(content) = std::fs::read(&self.path) else {
            // Between a delete and a create, or a dangling symlink for a
            // moment: look again next time.
            debug!(path = %self.path.display(), "watched file unreadable for now");
            self.pending = None;
            return false;
        };
        if self.current.as_ref() == Some(&content) {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&content) {
            self.current = Some(content);
            self.pending = None;
            return true;
        }
        self.pending = Some(content);
        false
    }
}

/// Sends the path on `changed` every time a file settles on new content,
/// until the receiver is gone.
pub(crate) async fn run(mut watch: Watch, changed: mpsc::Sender<PathBuf>) {
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(path) = watch.look()
            && changed.send(path).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use tempfile::TempDir;

    use super::*;

    fn dir() -> TempDir {
        tempfile::tempdir().expect("a temp dir")
    }

    /// Looks until the watch fires or `n` looks have passed; how many it took.
    fn looks_until_fired(w: &mut Watch, n: usize) -> Option<usize> {
        (1..=n).find(|_| w.look().is_some())
    }

    #[test]
    fn an_in_place_write_fires_once_it_is_stable() {
        let d = dir();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "a").unwrap();
        let mut w = Watch::new([f.clone()]);
        assert_eq!(looks_until_fired(&mut w, 3), None, "nothing changed");
        std::fs::write(&f, "b").unwrap();
        assert_eq!(w.look(), None, "seen once: may be half written");
        assert_eq!(w.look(), Some(f.clone()), "seen twice the same: fires");
        assert_eq!(looks_until_fired(&mut w, 3), None, "and only once");
    }

    #[test]
    fn a_half_written_file_is_not_reported_until_it_settles() {
        let d = dir();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "old").unwrap();
        let mut w = Watch::new([f.clone()]);
        std::fs::write(&f, "new but").unwrap();
        assert_eq!(w.look(), None);
        std::fs::write(&f, "new but complete").unwrap();
        assert_eq!(w.look(), None, "changed again since the last look");
        assert!(w.look().is_some());
        assert_eq!(
            w.files[0].current.as_deref(),
            Some(&b"new but complete"[..])
        );
    }

    #[test]
    fn a_rename_over_the_file_fires() {
        let d = dir();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "a").unwrap();
        let mut w = Watch::new([f.clone()]);
        let tmp = d.path().join(".c.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), Some(2));
    }

    #[test]
    fn a_configmap_style_symlink_swap_fires() {
        // What the kubelet's atomic writer does: files live in a timestamped
        // directory, `..data` points at it, `config.yaml` at `..data/`.
        let d = dir();
        let v1 = d.path().join("..2026_12_05_v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("config.yaml"), "a").unwrap();
        symlink("..2026_12_05_v1", d.path().join("..data")).unwrap();
        let f = d.path().join("config.yaml");
        symlink("..data/config.yaml", &f).unwrap();
        let mut w = Watch::new([f.clone()]);
        let v2 = d.path().join("..2026_12_05_v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("config.yaml"), "b").unwrap();
        symlink("..2026_12_05_v2", d.path().join("..data_tmp")).unwrap();
        std::fs::rename(d.path().join("..data_tmp"), d.path().join("..data")).unwrap();
        std::fs::remove_dir_all(&v1).unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), Some(2));
        assert_eq!(w.files[0].current.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn any_of_several_files_fires_and_each_is_watched_once() {
        let d = dir();
        let (a, b) = (d.path().join("a.yaml"), d.path().join("cert.pem"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "cert 1").unwrap();
        let mut w = Watch::new([a.clone(), b.clone(), a.clone()]);
        assert_eq!(w.files.len(), 2);
        std::fs::write(&b, "cert 2").unwrap();
        assert_eq!(w.look(), None);
        assert_eq!(w.look(), Some(b.clone()));
        assert_eq!(looks_until_fired(&mut w, 3), None);
    }

    #[test]
    fn the_same_content_and_a_missing_file_do_not_fire() {
        let d = dir();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "a").unwrap();
        let mut w = Watch::new([f.clone()]);
        // A touch, a rewrite with the same bytes.
        std::fs::write(&f, "a").unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), None);
        std::fs::remove_file(&f).unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), None);
        std::fs::write(&f, "a").unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), None, "back as it was");
        std::fs::write(&f, "c").unwrap();
        assert_eq!(looks_until_fired(&mut w, 3), Some(2));
    }
}
