//! `<git common dir>/buildlock/`: this machine's own files, whatever backend holds the
//! coordination state.
//!
//! ```text
//! logs/                   failure logs (the newest 200), written by the hook and `buildlock ci`
//! run/                    commit-retry's hand-over files, when it has no private temp folder
//! bin/                    the installed binaries (install.sh)
//! chained/pre-commit      the hook that was there before buildlock's, run after the check
//! install.manifest        what install.sh installed, to say what to run again
//! ```
//!
//! The local backend keeps its state in the same folder (see [`super::local`]), and so does the
//! claims registry (see [`super::registry`]). Like cargo's `Filesystem`, a [`Home`] names the
//! place and the files in it; nothing is created until something is written.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::os::time;
use crate::protocol::key;
use crate::protocol::signature::fnv1a64;

/// Failure logs kept in `logs/`, the newest (give or take the few since the last pruning).
pub const KEEP_LOGS: usize = 200;
/// `logs/` is pruned at about one failure in this many.
pub const PRUNE_EVERY: u64 = 16;

/// `<git common dir>/buildlock/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: PathBuf) -> Home {
        Home { root }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `buildlock doctor`'s checks of what every backend uses here: the folder and its logs can
    /// be written, locking works in it (the claims registry), the registry's bell, the size.
    pub fn diagnose(&self) -> Vec<super::Finding> {
        super::probe::home_findings(&self.root)
    }

    /// `logs/`: failure logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `run/`: commit-retry's hand-over files, when it has no private temp folder.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `bin/`: the installed binaries.
    pub fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// `chained/pre-commit`: the hook that was there before buildlock's.
    pub fn chained_hook(&self) -> PathBuf {
        self.root.join("chained").join("pre-commit")
    }

    /// Saves a failure's output under `logs/` and returns its path. About the newest
    /// [`KEEP_LOGS`] are kept: the directory is pruned at about one failure in
    /// [`PRUNE_EVERY`] (listing it at every failure was a tenth of a failing agent's CPU when 64
    /// failed at once), so it holds [`KEEP_LOGS`] plus the few written since.
    ///
    /// Each failure has a log of its own name (its time, agent and pid). A crowd that hits the
    /// same breakage mostly prints the same bytes: a log whose output is byte for byte one
    /// written before is a second name (a hard link) of that one's file, found by its content's
    /// hash (FNV-1a, as signatures use; the size rules out a collision) in `logs/.same/`, so 64
    /// agents failing alike write one file, not 64 (a new file is the dearest step of a failure
    /// on some file systems: ext4 without a journal scans past every inode freed in the last
    /// seconds to allocate one).
    pub fn write_log(&self, agent: &str, output: &[u8]) -> Result<PathBuf> {
        let dir = self.logs();
        let (now, pid) = (time::now(), std::process::id());
        let name = format!("{now}-{}-{pid}.log", key::file_stem(agent));
        let path = dir.join(name);
        let same = dir.join(SAME).join(format!("{:016x}", fnv1a64(output)));
        if fs::hard_link(&same, &path).is_ok() {
            // A different output of the same hash (never seen, but cheap to rule out by size)
            // gets a file of its own.
            if fs::metadata(&path).is_ok_and(|m| m.len() == output.len() as u64) {
                self.maybe_prune(now, pid);
                return Ok(path);
            }
            let _ = fs::remove_file(&path);
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot write the failure log {}", path.display()))?;
        file.write_all(output)
            .with_context(|| format!("cannot write the failure log {}", path.display()))?;
        drop(file);
        // Offered to the next failure of the same output once whole; a race with another
        // agent's link only means one more file.
        let _ = fs::create_dir(dir.join(SAME));
        let _ = fs::remove_file(&same);
        let _ = fs::hard_link(&path, &same);
        self.maybe_prune(now, pid);
        Ok(path)
    }

    /// Prunes at about one call in [`PRUNE_EVERY`]: by the time and pid across processes, and
    /// by a count within one (which may write many logs in one millisecond).
    fn maybe_prune(&self, now: u64, pid: u32) {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if (now.wrapping_mul(31) ^ u64::from(pid) ^ call.wrapping_mul(7))
            .is_multiple_of(PRUNE_EVERY)
        {
            self.prune_logs();
        }
    }

    /// Removes all but the newest [`KEEP_LOGS`] failure logs, and the content index
    /// (`logs/.same/`, rebuilt by the failures that follow: what it held is pruned with it or
    /// still has its own names).
    pub fn prune_logs(&self) {
        let dir = self.logs();
        // Names start with the time in milliseconds (13 digits until the year 2286), so their
        // byte order is their age. Sorted as names, not paths: comparing paths component by
        // component was 4 % of a failing hook's CPU.
        if let Ok(entries) = fs::read_dir(&dir) {
            let mut logs: Vec<std::ffi::OsString> = entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != SAME)
                .collect();
            if logs.len() > KEEP_LOGS {
                let old = logs.len() - KEEP_LOGS;
                logs.select_nth_unstable(old);
                for name in &logs[..old] {
                    let _ = fs::remove_file(dir.join(name));
                }
            }
        }
        if let Ok(entries) = fs::read_dir(dir.join(SAME)) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Gives the failure log at `path` a file of its own when it is one more name of a file that
/// other failures' logs share (see [`Home::write_log`]): done before the log is handed, as
/// `$BUILDLOCK_LOG`, to a program that may write to it (`fix.command`, `retry.refresh`), so that
/// a fix appending its notes changes its own log only, not every log of the same output. A copy
/// renamed over the name; when that fails the log stays as it is.
pub fn own_file(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if fs::metadata(path).map_or(true, |m| m.nlink() <= 1) {
            return;
        }
    }
    let mut copy = path.as_os_str().to_owned();
    copy.push(format!(".own-{}", std::process::id()));
    if fs::copy(path, &copy).is_err() || fs::rename(&copy, path).is_err() {
        let _ = fs::remove_file(&copy);
    }
}

/// `logs/.same/<hash of the content>`: a second name of the newest log of each output.
const SAME: &str = ".same";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_written_under_logs_and_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("buildlock"));
        let first = home.write_log("host:/w", b"error[E0308]").unwrap();
        assert!(first.starts_with(home.logs()));
        assert_eq!(fs::read(&first).unwrap(), b"error[E0308]");
        for i in 0..KEEP_LOGS + 5 {
            fs::write(home.logs().join(format!("0-old-{i:04}.log")), b"").unwrap();
        }
        home.prune_logs();
        let names = || {
            fs::read_dir(home.logs())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name() != SAME)
                .count()
        };
        assert_eq!(names(), KEEP_LOGS);
        assert!(first.exists(), "the oldest go first");
        // Failures prune now and then: the directory stays near its bound.
        for i in 0..2_000 {
            home.write_log(&format!("agent{i}"), b"x").unwrap();
        }
        let kept = names();
        assert!(kept < KEEP_LOGS + 500, "{kept} logs after 2,000 failures");
    }

    #[test]
    fn failures_with_the_same_output_share_one_file_under_their_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("buildlock"));
        let a = home.write_log("a", b"error: the build broke\n").unwrap();
        let b = home.write_log("b", b"error: the build broke\n").unwrap();
        let c = home.write_log("c", b"error: something else\n").unwrap();
        assert!(a != b && b != c, "each failure has its own name");
        assert_eq!(fs::read(&b).unwrap(), b"error: the build broke\n");
        assert_eq!(fs::read(&c).unwrap(), b"error: something else\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = |p: &Path| fs::metadata(p).unwrap().ino();
            assert_eq!(ino(&a), ino(&b), "one file for one output");
            assert_ne!(ino(&a), ino(&c));
        }
        // Pruned, one name goes and the other keeps the content.
        fs::remove_file(&a).unwrap();
        home.prune_logs();
        assert_eq!(fs::read(&b).unwrap(), b"error: the build broke\n");
        let d = home.write_log("d", b"error: the build broke\n").unwrap();
        assert_eq!(fs::read(&d).unwrap(), b"error: the build broke\n");
    }

    #[test]
    fn a_log_is_never_a_name_of_a_file_with_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("buildlock"));
        let a = home.write_log("a", b"first output").unwrap();
        // An index entry that lies (as a hash collision would): the size rules it out.
        let same = home
            .logs()
            .join(SAME)
            .join(format!("{:016x}", fnv1a64(b"second, longer output")));
        fs::hard_link(&a, &same).unwrap();
        let b = home.write_log("b", b"second, longer output").unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"second, longer output");
        assert_eq!(fs::read(&a).unwrap(), b"first output");
    }
}
