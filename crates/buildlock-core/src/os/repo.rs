//! The repository as git hands it to a hook, found in process with git2 (no git subprocess on the
//! hot path).
//!
//! - The work tree: what git says, or, when `GIT_DIR` is set without a work tree (git's own rule
//!   for hooks in linked worktrees), the current directory. Run by hand from a subfolder, the
//!   repository is discovered upwards from the current directory.
//! - The common dir: shared by every linked worktree, so they share one coordination domain; a
//!   submodule has its own.
//! - The index git is committing: `GIT_INDEX_FILE` (`commit -a` and `commit -- <path>` use a
//!   temporary index) and `GIT_DIR` are left exactly as git set them, so the check, which inherits
//!   them, sees what git will commit. buildlock itself never writes the index; the claims guard
//!   reads the one git is committing (`os/changes.rs`), and only when another agent claims paths.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub struct Repo {
    pub worktree: PathBuf,
    pub git_dir: PathBuf,
    pub common_dir: PathBuf,
    repo: git2::Repository,
}

impl Repo {
    /// The repository of the current directory, honouring `GIT_DIR`, `GIT_WORK_TREE`,
    /// `GIT_COMMON_DIR`, `GIT_INDEX_FILE` and `GIT_CEILING_DIRECTORIES` as git does.
    pub fn discover() -> Result<Repo> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let repo = git2::Repository::open_from_env().map_err(|e| {
            anyhow::anyhow!(
                "{} is not inside a git repository ({}); run this from a work tree",
                cwd.display(),
                e.message()
            )
        })?;
        let worktree = match repo.workdir() {
            Some(dir) => dir.to_owned(),
            None if crate::os::env::git_dir_set() && !repo.is_bare() => cwd.clone(),
            None => bail!(
                "{} is a bare repository without a work tree: buildlock coordinates commits made in \
                 work trees; run it inside one (git worktree add …)",
                repo.path().display()
            ),
        };
        let clean = |p: &Path| crate::os::fs::canonical(p).unwrap_or_else(|_| p.to_owned());
        Ok(Repo {
            worktree: clean(&worktree),
            git_dir: clean(repo.path()),
            common_dir: clean(repo.commondir()),
            repo,
        })
    }

    /// The current branch name; `HEAD` when detached.
    pub fn branch(&self) -> String {
        match self.repo.head() {
            Ok(head) if head.is_branch() => head.shorthand().unwrap_or("HEAD").to_owned(),
            Ok(_) => "HEAD".to_owned(),
            // Unborn branch: HEAD points at a ref that does not exist yet.
            Err(_) => self
                .repo
                .find_reference("HEAD")
                .ok()
                .and_then(|r| {
                    r.symbolic_target()
                        .map(|t| t.trim_start_matches("refs/heads/").to_owned())
                })
                .unwrap_or_else(|| "HEAD".to_owned()),
        }
    }

    /// The HEAD commit id; `unborn` before the first commit.
    pub fn head_commit(&self) -> String {
        self.repo
            .head()
            .ok()
            .and_then(|h| h.target())
            .map_or_else(|| "unborn".to_owned(), |oid| oid.to_string())
    }

    /// The HEAD commit id, `None` on an unborn branch.
    pub fn head_oid(&self) -> Option<String> {
        self.repo
            .head()
            .ok()
            .and_then(|h| h.target())
            .map(|oid| oid.to_string())
    }

    /// Tracked files whose changes in the work tree are not staged (at most `limit` names).
    pub fn unstaged(&self, limit: usize) -> Vec<String> {
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(false).include_ignored(false);
        let Ok(statuses) = self.repo.statuses(Some(&mut opts)) else {
            return Vec::new();
        };
        statuses
            .iter()
            .filter(|e| {
                e.status().intersects(
                    git2::Status::WT_MODIFIED | git2::Status::WT_DELETED | git2::Status::WT_RENAMED,
                )
            })
            .filter_map(|e| e.path().map(str::to_owned))
            .take(limit)
            .collect()
    }

    /// Whether some branch (or some worktree's HEAD) still contains `commit`: a fix commit no
    /// branch has any more (its branch deleted, its work abandoned) is handed to nobody.
    pub fn reachable(&self, commit: &str) -> bool {
        let Ok(commit) = git2::Oid::from_str(commit) else {
            return false;
        };
        let Ok(refs) = self.repo.references() else {
            return true;
        };
        let mut tips: Vec<git2::Oid> = refs
            .flatten()
            .filter(|r| r.is_branch() || r.is_remote())
            .filter_map(|r| r.target())
            .collect();
        tips.extend(self.repo.head().ok().and_then(|h| h.target()));
        if let Ok(worktrees) = self.repo.worktrees() {
            for name in worktrees.iter().flatten() {
                let head = self
                    .repo
                    .find_worktree(name)
                    .ok()
                    .and_then(|w| git2::Repository::open_from_worktree(&w).ok())
                    .and_then(|r| r.head().ok().and_then(|h| h.target()));
                tips.extend(head);
            }
        }
        tips.iter().any(|&tip| {
            tip == commit || self.repo.graph_descendant_of(tip, commit).unwrap_or(false)
        })
    }

    /// Whether HEAD is `commit` or descends from it. `None` when `commit` is not in this
    /// repository's object store (not fetched yet).
    pub fn head_contains(&self, commit: &str) -> Option<bool> {
        let commit = git2::Oid::from_str(commit).ok()?;
        self.repo.find_commit(commit).ok()?;
        let Some(head) = self.repo.head().ok().and_then(|h| h.target()) else {
            return Some(false);
        };
        if head == commit || self.repo.graph_descendant_of(head, commit).unwrap_or(false) {
            return Some(true);
        }
        Some(self.head_has_changes_of(commit).unwrap_or(false))
    }

    /// Whether HEAD's tree has every change `commit` made to its first parent (each path it
    /// touched holds the same content in HEAD, or is absent where the commit deleted it): a fix
    /// taken by `git cherry-pick` or a rebase is a new commit, but the same change.
    fn head_has_changes_of(&self, commit: git2::Oid) -> Option<bool> {
        let commit = self.repo.find_commit(commit).ok()?;
        let after = commit.tree().ok()?;
        let before = commit.parent(0).ok().and_then(|p| p.tree().ok());
        let head = self.repo.head().ok()?.peel_to_tree().ok()?;
        let diff = self
            .repo
            .diff_tree_to_tree(before.as_ref(), Some(&after), None)
            .ok()?;
        let mut all = true;
        for delta in diff.deltas() {
            let new = delta.new_file();
            let Some(path) = new.path() else {
                return Some(false);
            };
            let in_head = head.get_path(path).ok().map(|e| e.id());
            let wanted = (!new.id().is_zero()).then(|| new.id());
            all &= in_head == wanted;
            if let Some(old) = delta.old_file().path().filter(|p| *p != path) {
                // A rename: the old path must be gone too.
                all &= head.get_path(old).is_err();
            }
        }
        Some(all)
    }

    /// The repository, opened in process (for `os/changes.rs`).
    pub fn git(&self) -> &git2::Repository {
        &self.repo
    }

    /// The hooks directory git uses: `core.hooksPath` (relative to the work tree), else the
    /// common dir's `hooks`.
    pub fn hooks_dir(&self) -> PathBuf {
        let configured = self
            .repo
            .config()
            .ok()
            .and_then(|c| c.get_path("core.hooksPath").ok());
        match configured {
            Some(p) if p.is_relative() => self.worktree.join(p),
            Some(p) => p,
            None => self.common_dir.join("hooks"),
        }
    }

    /// Where buildlock keeps its coordination files.
    pub fn buildlock_dir(&self) -> PathBuf {
        self.common_dir.join("buildlock")
    }
}

/// The commit made on top of `head_before` in the repository (or linked worktree) whose git dir
/// is `git_dir`: the commit that HEAD moved to from `head_before` by a commit (its reflog says
/// so, `git commit --amend` included), else the first commit after `head_before` on HEAD's
/// first-parent line. `None` while HEAD is still `head_before` (the commit is not made yet) or
/// when neither finds it.
pub fn commit_after(git_dir: &Path, head_before: Option<&str>) -> Option<String> {
    let repo = git2::Repository::open(git_dir).ok()?;
    let before = match head_before {
        Some(b) => Some(git2::Oid::from_str(b).ok()?),
        None => None,
    };
    let mut at = repo.head().ok()?.peel_to_commit().ok()?;
    if Some(at.id()) == before {
        return None;
    }
    if let Ok(log) = repo.reflog("HEAD") {
        // Oldest move from `before` that a commit made.
        let from = before.unwrap_or_else(git2::Oid::zero);
        let made = log
            .iter()
            .rev()
            .find(|e| e.id_old() == from && e.message().is_some_and(|m| m.starts_with("commit")));
        if let Some(e) = made {
            return Some(e.id_new().to_string());
        }
    }
    for _ in 0..1000 {
        let parent = at.parent_id(0).ok();
        if parent == before {
            return Some(at.id().to_string());
        }
        at = at.parent(0).ok()?;
    }
    None
}
