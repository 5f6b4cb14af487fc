//! commit-retry's hand-over folder: where the hook writes what it decided for each `git commit`
//! (see `decision.rs`), private to this user; made again if it goes, cleaned of files left by a
//! killed commit-retry.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::os::time;

/// Where the hook hands its decision to us: a file per `git commit`, in a folder only this user
/// can enter (see `decision.rs`).
pub(super) struct Handover {
    pub(super) dir: PathBuf,
}

impl Handover {
    /// The private temp folder: needs no repository, so the first commit starts at once.
    pub(super) fn private() -> Option<Handover> {
        crate::os::fs::private_temp_dir("buildlock").map(|dir| Handover { dir })
    }

    /// A folder of the coordination dir, made if missing; the temp dir where it cannot be.
    pub(super) fn in_dir(dir: PathBuf) -> Handover {
        if std::fs::create_dir_all(&dir).is_ok() {
            Handover { dir }
        } else {
            Handover {
                dir: std::env::temp_dir(),
            }
        }
    }

    /// The repository's own hand-over folder (`<git common dir>/buildlock/run`), found by
    /// asking git: for a first commit whose private temp folder cannot be used.
    pub(super) fn in_repository() -> Option<Handover> {
        let out = Command::new("git")
            .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let common = String::from_utf8(out.stdout).ok()?;
        let dir = PathBuf::from(common.trim()).join("buildlock").join("run");
        (out.status.success() && std::fs::create_dir_all(&dir).is_ok()).then_some(Handover { dir })
    }

    /// A new file name for one `git commit`. The folder is made again if it went (a temp dir
    /// cleaner, by hand): the hook could not hand its decision over otherwise.
    pub(super) fn next(&self) -> PathBuf {
        if !self.dir.is_dir() {
            let private = Handover::private().filter(|p| p.dir == self.dir);
            if private.is_none() {
                let _ = std::fs::create_dir_all(&self.dir);
            }
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!(
            "decision-{}-{}-{seq}.json",
            std::process::id(),
            time::now()
        ))
    }

    /// Removes the [`strays`] here and in the coordination dir's `run/` (`also`): when
    /// commit-retry starts its work, after a first commit that did not simply pass.
    pub(super) fn remove_strays(&self, also: &Path) {
        for path in strays(&[self.dir.clone(), also.to_owned()]) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The hand-over folders a doctor looks in, made by nobody: the private temp folder (if it is
/// there) and the coordination dir's `run/`.
pub(crate) fn folders(run: &Path) -> Vec<PathBuf> {
    let me = crate::os::process::euid();
    vec![
        std::env::temp_dir().join(format!("buildlock-{me}")),
        run.to_owned(),
    ]
}

/// Decision files in `dirs` that no commit-retry will read: their name's pid (the commit-retry
/// that made it) is gone, or is now a process that started after the file was written (a reused
/// pid); or, of a form that names no pid, older than a day. A live commit-retry's files are never
/// among them.
pub(crate) fn strays(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let day = Duration::from_secs(24 * 3600);
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for dir in dirs {
        if seen.contains(dir) {
            continue;
        }
        seen.push(dir.clone());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let written = e
                .metadata()
                .ok()
                .filter(std::fs::Metadata::is_file)
                .and_then(|m| m.modified().ok());
            let Some(written) = written else { continue };
            let stray = if let Some(rest) = name.strip_prefix("decision-") {
                // decision-<pid>-<millis>-<seq>.json
                rest.split('-')
                    .next()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !crate::os::process::may_have_written(pid, written))
            } else if name.starts_with("buildlock-decision-") {
                written.elapsed().is_ok_and(|age| age > day)
            } else {
                false
            };
            if stray {
                found.push(e.path());
            }
        }
    }
    found
}
