//! commit-retry's hand-over folder: where the hook writes what it decided for each `git commit`
//! (see `decision.rs`), private to this user; made again if it goes, cleaned of files left by a
//! killed commit-retry.

use std::path::PathBuf;
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

    /// Decision files older than a day: left by a commit-retry that was killed mid-commit.
    pub(super) fn remove_old(&self) {
        let day = Duration::from_secs(24 * 3600);
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let ours = name.to_string_lossy().starts_with("decision-")
                || name.to_string_lossy().starts_with("buildlock-decision-");
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if ours && old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
