//! The repository as git hands it to a hook, found without a git subprocess on the hot path.
//!
//! - Where git's own rules leave no doubt (Unix; the current directory holds `.git`, a folder or
//!   a `gitdir:` file, or `GIT_DIR` names the same git dir; nothing moves the work tree or the
//!   common dir: no `GIT_WORK_TREE`, `GIT_COMMON_DIR`, `core.worktree` or `core.bare`; the files
//!   owned by this user), the repository is read from those few files: git already found it
//!   (and judged `safe.directory`) before it ran the hook. git2 opens it only when something needs
//!   objects, refs or the index (lazily, [`Repo::git`]), and finds it in every other case, as
//!   before: a subfolder, a bare repository, another owner, any override.
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
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

pub struct Repo {
    pub worktree: PathBuf,
    pub git_dir: PathBuf,
    pub common_dir: PathBuf,
    /// Opened on first use: a green commit needs none of it.
    repo: OnceCell<git2::Repository>,
}

impl Repo {
    /// The repository of the current directory, honouring `GIT_DIR`, `GIT_WORK_TREE`,
    /// `GIT_COMMON_DIR`, `GIT_INDEX_FILE` and `GIT_CEILING_DIRECTORIES` as git does.
    pub fn discover() -> Result<Repo> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        if let Some(found) = plain(&cwd) {
            return Ok(found);
        }
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
            repo: OnceCell::from(repo),
        })
    }

    /// The repository opened in process, on first use, from the git dir found (not from the
    /// environment again: whatever the current directory is by then), with the work tree found.
    pub fn git(&self) -> Result<&git2::Repository> {
        if let Some(repo) = self.repo.get() {
            return Ok(repo);
        }
        let repo = git2::Repository::open(&self.git_dir)
            .with_context(|| format!("cannot open the repository {}", self.git_dir.display()))?;
        if repo.workdir() != Some(self.worktree.as_path()) {
            repo.set_workdir(&self.worktree, false).with_context(|| {
                format!("cannot use {} as the work tree", self.worktree.display())
            })?;
        }
        Ok(self.repo.get_or_init(|| repo))
    }

    /// The current branch name; `HEAD` when detached. Read from the git dir's `HEAD` (a symbolic
    /// ref names the branch, born or not; anything else is detached), as git does.
    pub fn branch(&self) -> String {
        std::fs::read_to_string(self.git_dir.join("HEAD"))
            .ok()
            .and_then(|head| branch_of_head(&head).map(str::to_owned))
            .unwrap_or_else(|| "HEAD".to_owned())
    }

    /// The HEAD commit id; `unborn` before the first commit.
    pub fn head_commit(&self) -> String {
        self.head_oid().unwrap_or_else(|| "unborn".to_owned())
    }

    /// The HEAD commit id, `None` on an unborn branch.
    pub fn head_oid(&self) -> Option<String> {
        self.git()
            .ok()?
            .head()
            .ok()
            .and_then(|h| h.target())
            .map(|oid| oid.to_string())
    }

    /// Tracked files whose changes in the work tree are not staged (at most `limit` names).
    pub fn unstaged(&self, limit: usize) -> Vec<String> {
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(false).include_ignored(false);
        let Ok(repo) = self.git() else {
            return Vec::new();
        };
        let Ok(statuses) = repo.statuses(Some(&mut opts)) else {
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
        let Ok(repo) = self.git() else {
            return true;
        };
        let Ok(refs) = repo.references() else {
            return true;
        };
        let mut tips: Vec<git2::Oid> = refs
            .flatten()
            .filter(|r| r.is_branch() || r.is_remote())
            .filter_map(|r| r.target())
            .collect();
        tips.extend(repo.head().ok().and_then(|h| h.target()));
        if let Ok(worktrees) = repo.worktrees() {
            for name in worktrees.iter().flatten() {
                let head = repo
                    .find_worktree(name)
                    .ok()
                    .and_then(|w| git2::Repository::open_from_worktree(&w).ok())
                    .and_then(|r| r.head().ok().and_then(|h| h.target()));
                tips.extend(head);
            }
        }
        tips.iter()
            .any(|&tip| tip == commit || repo.graph_descendant_of(tip, commit).unwrap_or(false))
    }

    /// Whether HEAD is `commit` or descends from it. `None` when `commit` is not in this
    /// repository's object store (not fetched yet).
    pub fn head_contains(&self, commit: &str) -> Option<bool> {
        let commit = git2::Oid::from_str(commit).ok()?;
        let repo = self.git().ok()?;
        repo.find_commit(commit).ok()?;
        let Some(head) = repo.head().ok().and_then(|h| h.target()) else {
            return Some(false);
        };
        if head == commit || repo.graph_descendant_of(head, commit).unwrap_or(false) {
            return Some(true);
        }
        Some(self.head_has_changes_of(commit).unwrap_or(false))
    }

    /// Whether HEAD's tree has every change `commit` made to its first parent (each path it
    /// touched holds the same content in HEAD, or is absent where the commit deleted it): a fix
    /// taken by `git cherry-pick` or a rebase is a new commit, but the same change.
    fn head_has_changes_of(&self, commit: git2::Oid) -> Option<bool> {
        let repo = self.git().ok()?;
        let commit = repo.find_commit(commit).ok()?;
        let after = commit.tree().ok()?;
        let before = commit.parent(0).ok().and_then(|p| p.tree().ok());
        let head = repo.head().ok()?.peel_to_tree().ok()?;
        let diff = repo
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

    /// The hooks directory git uses: `core.hooksPath` (relative to the work tree), else the
    /// common dir's `hooks`.
    pub fn hooks_dir(&self) -> PathBuf {
        let configured = self
            .git()
            .ok()
            .and_then(|r| r.config().ok())
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

/// The branch a `HEAD` file names (`ref: refs/heads/<branch>`), born or not; `None` when detached.
fn branch_of_head(head: &str) -> Option<&str> {
    head.trim_end()
        .strip_prefix("ref:")?
        .trim_start()
        .strip_prefix("refs/heads/")
}

/// The repository at `cwd` found from its files alone, where git's rules leave no doubt (see the
/// module's header); `None` sends the caller to git2, which knows every other case.
#[cfg(unix)]
fn plain(cwd: &Path) -> Option<Repo> {
    use std::os::unix::fs::MetadataExt;
    if crate::os::env::git_layout_overridden() {
        return None;
    }
    let me = crate::os::process::euid();
    let dot_git = cwd.join(".git");
    let entry = std::fs::symlink_metadata(&dot_git).ok()?;
    if entry.uid() != me {
        return None;
    }
    // The work tree's own `.git`: a folder (the main work tree), or a file naming the git dir (a
    // linked worktree, a submodule: their paths resolved, the work tree's is the kernel's own).
    let git_dir = if entry.is_dir() {
        dot_git
    } else if entry.is_file() {
        let text = crate::os::fs::read_bounded(&dot_git, 4096).ok()??;
        let named = std::str::from_utf8(&text)
            .ok()?
            .strip_prefix("gitdir:")?
            .trim();
        crate::os::fs::canonical(&cwd.join(named)).ok()?
    } else {
        return None;
    };
    // `GIT_DIR` (git sets it for hooks in linked worktrees): the same git dir, or git2 decides.
    if let Some(given) = crate::os::env::git_dir() {
        if crate::os::fs::canonical(&cwd.join(given)).ok()? != git_dir {
            return None;
        }
    }
    let meta = std::fs::metadata(&git_dir).ok()?;
    if meta.uid() != me || !git_dir.join("HEAD").is_file() {
        return None;
    }
    let common_dir = match crate::os::fs::read_bounded(&git_dir.join("commondir"), 4096) {
        Ok(Some(text)) => {
            let named = std::str::from_utf8(&text)
                .ok()?
                .trim_end_matches(['\n', '\r']);
            crate::os::fs::canonical(&git_dir.join(named)).ok()?
        }
        Ok(None) => return None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => git_dir.clone(),
        Err(_) => return None,
    };
    // A work tree somewhere else (`core.worktree`), a bare repository, per-worktree config
    // (`extensions.worktreeConfig`), included files: git2 reads those.
    let config = crate::os::fs::read_bounded(&common_dir.join("config"), 64 * 1024).ok()??;
    let moved = String::from_utf8_lossy(&config).lines().any(|line| {
        let line: String = line
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        line.starts_with("worktree")
            || line.starts_with("[include")
            || (line.starts_with("bare") && line != "bare=false")
    });
    if moved {
        return None;
    }
    Some(Repo {
        worktree: cwd.to_owned(),
        git_dir,
        common_dir,
        repo: OnceCell::new(),
    })
}

#[cfg(not(unix))]
fn plain(_cwd: &Path) -> Option<Repo> {
    None
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_head_file_names_its_branch_born_or_not() {
        assert_eq!(branch_of_head("ref: refs/heads/main\n"), Some("main"));
        assert_eq!(branch_of_head("ref: refs/heads/feat/x"), Some("feat/x"));
        assert_eq!(branch_of_head("ref: refs/remotes/origin/main\n"), None);
        assert_eq!(
            branch_of_head("3f2a9c0e5b7d1a4f6e8c9b0a1d2e3f4a5b6c7d8e\n"),
            None
        );
    }

    fn git(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    /// Found from its files, a repository is what git2 finds: the main work tree and a linked
    /// worktree (its own git dir, the shared common dir); with `core.worktree` set, it is left to
    /// git2.
    #[test]
    fn the_plain_finder_agrees_with_git2_or_leaves_it_to_git2() {
        let tmp = tempfile::tempdir().unwrap();
        let root = crate::os::fs::canonical(tmp.path()).unwrap();
        let main = root.join("main");
        std::fs::create_dir(&main).unwrap();
        git(&main, &["init", "-q", "-b", "main"]);
        git(
            &main,
            &[
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@a",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "x",
            ],
        );
        git(&main, &["worktree", "add", "-q", "../linked"]);
        let linked = root.join("linked");
        for tree in [&main, &linked] {
            let found = plain(tree).expect("found from its files");
            let by_git2 = git2::Repository::open(tree).unwrap();
            assert_eq!(found.worktree, *tree);
            assert_eq!(
                found.git_dir,
                crate::os::fs::canonical(by_git2.path()).unwrap()
            );
            assert_eq!(
                found.common_dir,
                crate::os::fs::canonical(by_git2.commondir()).unwrap()
            );
            assert_eq!(
                found.head_oid(),
                by_git2.head().unwrap().target().map(|o| o.to_string())
            );
        }
        assert_eq!(plain(&linked).unwrap().branch(), "linked");
        assert!(
            plain(&root).is_none(),
            "no .git here: git2 searches upwards"
        );
        git(&main, &["config", "core.worktree", main.to_str().unwrap()]);
        assert!(plain(&main).is_none(), "core.worktree: git2 decides");
    }
}
