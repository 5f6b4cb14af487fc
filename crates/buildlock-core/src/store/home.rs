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
    pub fn write_log(&self, agent: &str, output: &[u8]) -> Result<PathBuf> {
        let dir = self.logs();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (now, pid) = (time::now(), std::process::id());
        let name = format!("{now}-{}-{pid}.log", key::file_stem(agent));
        let path = dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot write the failure log {}", path.display()))?;
        file.write_all(output)
            .with_context(|| format!("cannot write the failure log {}", path.display()))?;
        if (now.wrapping_mul(31) ^ u64::from(pid)) % PRUNE_EVERY == 0 {
            self.prune_logs();
        }
        Ok(path)
    }

    /// Removes all but the newest [`KEEP_LOGS`] failure logs.
    pub fn prune_logs(&self) {
        let dir = self.logs();
        // Names start with the time in milliseconds (13 digits until the year 2286), so their
        // byte order is their age. Sorted as names, not paths: comparing paths component by
        // component was 4 % of a failing hook's CPU.
        if let Ok(entries) = fs::read_dir(&dir) {
            let mut logs: Vec<std::ffi::OsString> =
                entries.flatten().map(|e| e.file_name()).collect();
            if logs.len() > KEEP_LOGS {
                let old = logs.len() - KEEP_LOGS;
                logs.select_nth_unstable(old);
                for name in &logs[..old] {
                    let _ = fs::remove_file(dir.join(name));
                }
            }
        }
    }
}

impl AsRef<Path> for Home {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}

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
        assert_eq!(fs::read_dir(home.logs()).unwrap().count(), KEEP_LOGS);
        assert!(first.exists(), "the oldest go first");
        // Failures prune now and then: the directory stays near its bound.
        for i in 0..2_000 {
            home.write_log(&format!("agent{i}"), b"x").unwrap();
        }
        let kept = fs::read_dir(home.logs()).unwrap().count();
        assert!(kept < KEEP_LOGS + 500, "{kept} logs after 2,000 failures");
    }
}
