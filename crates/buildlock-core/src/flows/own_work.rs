//! The fixer's own staged work, kept out of its fix commit.
//!
//! commit-retry's fixer was committing its own work when the check failed. If `fix.command`
//! only stages its fix, the next commit would hold both, under the agent's own message, and
//! that commit is what every waiter is handed to cherry-pick: the fixer's unrelated work would
//! land on every other agent's branch. So the fix is committed on its own first, from an index
//! file of its own (HEAD plus exactly what the fix staged), and the agent's own commit follows.
//!
//! The agent's index is never changed: whenever this process is killed, its staging is as the
//! agent left it plus the fix, as it would be without any of this, and a plain `git commit`
//! still commits it.

use anyhow::{Result, bail};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::os::say;

/// Commit arguments that rewrite or join an earlier commit: with them the fix and the own work
/// cannot be two commits.
const JOINING: [&str; 4] = ["--amend", "--fixup", "--squash", "--dry-run"];

/// What the agent had staged when the fix started.
pub struct OwnWork {
    worktree: PathBuf,
    /// HEAD's tree then.
    base: String,
    /// The index then, as a tree.
    own: String,
    /// The paths the own work changes.
    paths: Vec<Vec<u8>>,
}

/// An index file holding HEAD plus only the fix: `GIT_INDEX_FILE` for the fix's own commit.
/// Removed when dropped.
pub struct FixIndex {
    pub path: PathBuf,
}

impl Drop for FixIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl OwnWork {
    /// What is staged before the fix runs; `None` when nothing is, or when the commit arguments
    /// make one commit of everything (`--amend` and the like), or without a HEAD yet.
    pub fn note(worktree: &Path, args: &[OsString]) -> Option<OwnWork> {
        let joining = args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| JOINING.iter().any(|j| a.starts_with(j)))
        });
        if joining {
            return None;
        }
        let base = git_out(
            worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
            None,
        )?;
        // Unmerged entries cannot be written as a tree: such an index is left to the agent.
        let own = git_out(worktree, &["write-tree"], None)?;
        if own == base {
            return None;
        }
        let paths = changed(worktree, &base, &own).ok()?;
        Some(OwnWork {
            worktree: worktree.to_owned(),
            base,
            own,
            paths,
        })
    }

    /// The paths the own work changes.
    pub fn paths(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// After the fix: an index of HEAD plus what the fix staged, to commit the fix alone (in
    /// `git_dir`). `None` when the fix staged nothing (it committed itself, or did nothing), or
    /// staged a path that the own work changes too: then the two cannot be told apart, and
    /// they are committed together, as said here.
    pub fn fix_index(&self, git_dir: &Path) -> Result<Option<FixIndex>> {
        let head = git_out(
            &self.worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
            None,
        );
        if head.as_deref() != Some(self.base.as_str()) {
            // The fix committed on its own already.
            return Ok(None);
        }
        let Some(after) = git_out(&self.worktree, &["write-tree"], None) else {
            return Ok(None);
        };
        let fix = changed(&self.worktree, &self.own, &after)?;
        if fix.is_empty() {
            return Ok(None);
        }
        let both: Vec<String> = fix
            .iter()
            .filter(|p| self.paths.contains(p))
            .take(5)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if !both.is_empty() {
            say::warn(format!(
                "the fix staged files that your own staged work changes too ({}): the fix cannot \
                 be committed apart from your work, so one commit holds both; waiters are handed \
                 that commit",
                both.join(", ")
            ));
            return Ok(None);
        }
        let index = FixIndex {
            path: git_dir.join(format!("buildlock-fix-index-{}", std::process::id())),
        };
        let env = Some(index.path.as_path());
        git_ok(&self.worktree, &["read-tree", &self.base], env)?;
        let source = format!("--source={after}");
        git_paths(&self.worktree, &["restore", "--staged", &source], &fix, env)?;
        Ok(Some(index))
    }
}

fn git(worktree: &Path, index: Option<&Path>) -> Command {
    let mut c = Command::new("git");
    // Paths are literal, whatever characters they hold.
    c.arg("--literal-pathspecs").current_dir(worktree);
    if let Some(index) = index {
        c.env("GIT_INDEX_FILE", index);
    }
    c
}

fn git_out(worktree: &Path, args: &[&str], index: Option<&Path>) -> Option<String> {
    let out = git(worktree, index)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn git_ok(worktree: &Path, args: &[&str], index: Option<&Path>) -> Result<()> {
    let out = git(worktree, index).args(args).output()?;
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
fn git_paths(
    worktree: &Path,
    args: &[&str],
    paths: &[Vec<u8>],
    index: Option<&Path>,
) -> Result<()> {
    let mut child = git(worktree, index)
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
    let out = git(worktree, None)
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
