//! The fixer's own staged work, set aside while its fix is committed on its own.
//!
//! commit-retry's fixer was committing its own work when the check failed. If `fix.command`
//! only stages its fix, the next commit would hold both, under the agent's own message, and
//! that commit is what every waiter is handed to cherry-pick: the fixer's unrelated work would
//! land on every other agent's branch. So before the fix runs, the index is saved as a tree and
//! reset to HEAD (the work tree is not touched); the fix is committed alone; then the own work
//! is staged again on top of it, exactly as it was staged, and committed with the agent's own
//! arguments.
//!
//! Nothing is lost if this process dies in between: the work tree still holds everything, the
//! set-aside is on record (`run/aside-<agent>.json`), and the agent's next commit-retry stages the
//! work again before anything else ([`recover`]); by hand, the saved tree (printed when it is set
//! aside) restores the exact staging with `git restore --staged --source=<tree> -- .`. On every
//! ordinary exit the staging is restored at once.

use anyhow::{Context as _, Result, bail};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::os::say;

/// Commit arguments that rewrite or join an earlier commit: with them the fix and the own work
/// cannot be two commits, and nothing is set aside.
const JOINING: [&str; 4] = ["--amend", "--fixup", "--squash", "--dry-run"];

#[derive(serde::Serialize, serde::Deserialize)]
pub struct SetAside {
    /// The commit-retry that set it aside (to tell a live one from a dead one).
    holder: crate::os::process::Process,
    worktree: PathBuf,
    /// HEAD's tree when the work was set aside.
    base: String,
    /// The index as the agent had staged it.
    own: String,
    /// The paths the own work changes (relative to the work tree root).
    paths: Vec<Vec<u8>>,
    #[serde(skip)]
    record: PathBuf,
    #[serde(skip)]
    restored: bool,
}

fn record_path(home: &Path, agent: &str) -> PathBuf {
    home.join("run").join(format!(
        "aside-{}.json",
        crate::protocol::key::file_stem(agent)
    ))
}

/// Stages again the work that an earlier commit-retry of `agent` in this work tree set aside
/// and could not put back (it was killed). `true` when it did.
pub fn recover(home: &Path, agent: &str, worktree: &Path) -> Result<bool> {
    let record = record_path(home, agent);
    let Some(bytes) = crate::os::fs::read_bounded(&record, 1 << 20).ok().flatten() else {
        return Ok(false);
    };
    let Ok(mut aside) = serde_json::from_slice::<SetAside>(&bytes) else {
        let _ = std::fs::remove_file(&record);
        return Ok(false);
    };
    if aside.worktree != worktree || crate::os::process::is_live(&aside.holder) {
        return Ok(false);
    }
    aside.record = record;
    aside.restore()?;
    say::say(format!(
        "commit-retry: staged your work again ({} path{}), which an interrupted commit-retry had set \
         aside while its fix ran",
        aside.paths.len(),
        if aside.paths.len() == 1 { "" } else { "s" }
    ));
    Ok(true)
}

impl SetAside {
    /// Sets the staged work aside when there is some and the commit arguments allow two
    /// commits; `None` otherwise (nothing staged, an `--amend`, no HEAD yet, unmerged paths).
    pub fn take(
        home: &Path,
        agent: &str,
        worktree: &Path,
        args: &[OsString],
    ) -> Result<Option<SetAside>> {
        let joining = args.iter().any(|a| {
            JOINING
                .iter()
                .any(|j| a.to_str().is_some_and(|a| a.starts_with(j)))
        });
        if joining {
            return Ok(None);
        }
        let Some(base) = git_out(worktree, &["rev-parse", "--verify", "-q", "HEAD^{tree}"]) else {
            return Ok(None);
        };
        // Unmerged entries cannot be written as a tree: leave such an index alone.
        let Some(own) = git_out(worktree, &["write-tree"]) else {
            return Ok(None);
        };
        if own == base {
            return Ok(None);
        }
        let paths = changed(worktree, &base, &own)?;
        let aside = SetAside {
            holder: crate::os::process::me(),
            worktree: worktree.to_owned(),
            base,
            own,
            paths,
            record: record_path(home, agent),
            restored: false,
        };
        // On record before the index changes: whatever happens next, it can be put back.
        if let Some(dir) = aside.record.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::os::fs::write_atomic(
            &aside.record,
            &serde_json::to_vec(&aside)?,
            crate::os::fs::Durability::Atomic,
        )
        .context("cannot record the set-aside of your staged work")?;
        let (paths, own) = (&aside.paths, &aside.own);
        if let Err(e) = git_ok(worktree, &["reset", "-q", "--", "."]) {
            let _ = std::fs::remove_file(&aside.record);
            std::mem::forget(aside);
            return Err(e.context("cannot set your staged work aside (git reset)"));
        }
        say::say(format!(
            "commit-retry: set your staged work aside ({} path{}, saved as tree {}) so that the fix \
             is committed on its own; it is staged again after the fix commit (if this is \
             interrupted: `git restore --staged --source={} -- .`)",
            paths.len(),
            if paths.len() == 1 { "" } else { "s" },
            short(own),
            own
        ));
        Ok(Some(aside))
    }

    /// The paths the own work changes.
    pub fn paths(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Whether the index now holds something to commit (the fix staged its changes).
    pub fn fix_staged(&self) -> bool {
        git_ok(&self.worktree, &["diff", "--cached", "--quiet"]).is_err()
    }

    /// Stages the own work again on top of HEAD as it is now: each path as the agent had staged
    /// it, except the paths the fix changed too, which are staged from the work tree (where both
    /// changes are).
    pub fn restore(&mut self) -> Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        let head = git_out(
            &self.worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
        )
        .unwrap_or_else(|| self.base.clone());
        let fixed = changed(&self.worktree, &self.base, &head)?;
        let (both, mine): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
            self.paths.iter().partition(|p| fixed.contains(p));
        if !mine.is_empty() {
            let source = format!("--source={}", self.own);
            git_paths(&self.worktree, &["restore", "--staged", &source], &mine).with_context(
                || {
                    format!(
                        "cannot stage your work again; it is all in the work tree, and \
                     `git restore --staged --source={} -- .` stages it as it was",
                        self.own
                    )
                },
            )?;
        }
        if !both.is_empty() {
            git_paths(&self.worktree, &["add", "-A"], &both)
                .context("cannot stage the files that both your work and the fix changed")?;
            say::warn(format!(
                "the fix changed files that your staged work changes too ({}): they are staged \
                 as the work tree has them, with both changes",
                both.iter()
                    .take(5)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let _ = std::fs::remove_file(&self.record);
        Ok(())
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            say::warn(format!("{e:#}"));
        }
    }
}

fn short(oid: &str) -> &str {
    &oid[..oid.len().min(12)]
}

fn git(worktree: &Path) -> Command {
    let mut c = Command::new("git");
    // Paths are literal, whatever characters they hold; no hook or editor runs for these.
    c.arg("--literal-pathspecs").current_dir(worktree);
    c
}

fn git_out(worktree: &Path, args: &[&str]) -> Option<String> {
    let out = git(worktree)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn git_ok(worktree: &Path, args: &[&str]) -> Result<()> {
    let out = git(worktree).args(args).output()?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `git <args> --pathspec-from-file=- --pathspec-file-nul` with `paths` on stdin.
fn git_paths(worktree: &Path, args: &[&str], paths: &[&Vec<u8>]) -> Result<()> {
    let mut child = git(worktree)
        .args(args)
        .args(["--pathspec-from-file=-", "--pathspec-file-nul"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        for p in paths {
            stdin.write_all(p)?;
            stdin.write_all(b"\0")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The paths that differ between two trees.
fn changed(worktree: &Path, from: &str, to: &str) -> Result<Vec<Vec<u8>>> {
    let out = git(worktree)
        .args([
            "diff-tree",
            "-r",
            "-z",
            "--no-renames",
            "--name-only",
            from,
            to,
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "git diff-tree failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}
