//! The fixer's own staged work, kept out of its fix commit.
//!
//! commit-retry's fixer was committing its own work when the check failed. If `fix.command`
//! only stages its fix, the next commit would hold both, under the agent's own message, and
//! that commit is what every waiter is handed to cherry-pick: the fixer's unrelated work would
//! land on every other agent's branch. So the fix is committed on its own first, from an index
//! file of its own (HEAD plus exactly what the fix staged), and the agent's own commit follows.
//!
//! The agent's index is never changed (trees are written from a copy of it): whenever this
//! process is killed, its staging is as the agent left it plus the fix, as it would be without
//! any of this, and a plain `git commit` still commits it.
//!
//! The same holds when the agent's own commit does not take the index as it is (`-a`, `--only`,
//! pathspecs): the fix it staged would otherwise never be committed. Not split: a merge, cherry-
//! pick or revert in progress (git would make the fix commit the merge), and `--amend` and the
//! like; if git refuses the fix commit (a `commit-msg` policy), the fix goes with the agent's
//! commit, as before.

use anyhow::{Result, bail};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::os::say;

/// Commit arguments that rewrite or join an earlier commit: with them the fix and the own work
/// cannot be two commits. git accepts any unambiguous prefix of a long option.
const JOINING: [&str; 4] = ["--amend", "--fixup", "--squash", "--dry-run"];
/// Long options of `git commit` that take their value in the next argument (unless `=value`).
const LONG_VALUED: [&str; 12] = [
    "--message",
    "--file",
    "--reuse-message",
    "--reedit-message",
    "--template",
    "--author",
    "--date",
    "--cleanup",
    "--fixup",
    "--squash",
    "--trailer",
    "--pathspec-from-file",
];
/// Short options of `git commit` that take a value (the rest of the cluster, or the next
/// argument).
const SHORT_VALUED: &[u8] = b"mFCct";

/// What the agent's commit arguments say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    /// They rewrite or join an earlier commit (`--amend`, …).
    joining: bool,
    /// The commit takes the work tree, not the index as it is: `-a`, `-o`, `-i`, pathspecs.
    worktree: bool,
}

fn is_prefix_of(arg: &str, long: &str) -> bool {
    arg.len() > 3 && long.starts_with(arg)
}

fn read_args(args: &[OsString]) -> Args {
    let mut out = Args::default();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.worktree |= it.next().is_some();
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or(""));
            out.joining |= JOINING.iter().any(|j| is_prefix_of(&name, j));
            out.worktree |= ["--all", "--only", "--include", "--pathspec-from-file"]
                .iter()
                .any(|o| name == *o || is_prefix_of(&name, o));
            if LONG_VALUED.contains(&name.as_str()) && !long.contains('=') {
                it.next();
            }
            continue;
        }
        if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (i, c) in cluster.bytes().enumerate() {
                if matches!(c, b'a' | b'o' | b'i') {
                    out.worktree = true;
                }
                if SHORT_VALUED.contains(&c) {
                    if i + 1 == cluster.len() {
                        it.next();
                    }
                    break;
                }
            }
            continue;
        }
        // A pathspec.
        out.worktree = true;
    }
    out
}

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

/// An index file of ours (`GIT_INDEX_FILE`): the fix's own (HEAD plus only the fix), or a copy
/// of the agent's to write a tree from. Removed when dropped.
pub struct TempIndex {
    pub path: PathBuf,
}

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl OwnWork {
    /// What is the agent's own before the fix runs: what it staged, and with `-a` or pathspecs
    /// its tracked changes. `None` when the fix need not be committed apart (nothing staged and
    /// a commit of the index as it is: the agent's commit is the fix), when it cannot be (a
    /// merge in progress, `--amend` and the like), or without a HEAD yet.
    pub fn note(worktree: &Path, git_dir: &Path, args: &[OsString]) -> Option<OwnWork> {
        let read = read_args(args);
        let in_progress = [
            "MERGE_HEAD",
            "CHERRY_PICK_HEAD",
            "REVERT_HEAD",
            "SQUASH_MSG",
        ]
        .iter()
        .any(|f| git_dir.join(f).exists());
        if read.joining || in_progress {
            return None;
        }
        let base = git_out(
            worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
            None,
        )?;
        // Unmerged entries cannot be written as a tree: such an index is left to the agent.
        let own = index_tree(worktree, git_dir)?;
        if own == base && !read.worktree {
            // Nothing of its own: the agent's commit is the fix, as it always was.
            return None;
        }
        let mut paths = changed(worktree, &base, &own).ok()?;
        if read.worktree {
            // Its tracked changes in the work tree are its own too (`-a`, pathspecs).
            if let Some(out) = git_out(worktree, &["diff", "-z", "--name-only"], None) {
                paths.extend(
                    out.split('\0')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.as_bytes().to_vec()),
                );
            }
        }
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
    pub fn fix_index(&self, git_dir: &Path) -> Result<Option<TempIndex>> {
        let head = git_out(
            &self.worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
            None,
        );
        if head.as_deref() != Some(self.base.as_str()) {
            // The fix committed on its own already.
            return Ok(None);
        }
        let Some(after) = index_tree(&self.worktree, git_dir) else {
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
        let index = TempIndex {
            path: git_dir.join(format!("{FIX_INDEX}{}", std::process::id())),
        };
        let env = Some(index.path.as_path());
        git_ok(&self.worktree, &["read-tree", &self.base], env)?;
        let source = format!("--source={after}");
        git_paths(&self.worktree, &["restore", "--staged", &source], &fix, env)?;
        Ok(Some(index))
    }
}

const FIX_INDEX: &str = "buildlock-fix-index-";

/// The agent's index as a tree, written from a copy of it: the index itself is not touched (not
/// even its cache, nor its lock).
fn index_tree(worktree: &Path, git_dir: &Path) -> Option<String> {
    let copy = TempIndex {
        path: git_dir.join(format!("{INDEX_COPY}{}", std::process::id())),
    };
    std::fs::copy(git_dir.join("index"), &copy.path).ok()?;
    // Written now, whatever time the copy kept: a sweeper tells a live run's file by it.
    crate::os::fs::touch_existing(&copy.path);
    git_out(worktree, &["write-tree"], Some(&copy.path))
}

/// The index files (the fix's own, copies of the agent's) that commit-retry runs left in the
/// repository's git dirs (the common dir and each linked worktree's) when they were killed: each
/// is named after its run's pid, and that pid is gone, or is now a process that started after the
/// file was written (a reused pid). A live run's files are never among them.
pub fn strays(common_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![common_dir.to_owned()];
    dirs.extend(
        std::fs::read_dir(common_dir.join("worktrees"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    let mut found = Vec::new();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(FIX_INDEX)
                .or_else(|| name.strip_prefix(INDEX_COPY))
                .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let written = e
                .metadata()
                .ok()
                .filter(std::fs::Metadata::is_file)
                .and_then(|m| m.modified().ok());
            if written.is_some_and(|t| !crate::os::process::may_have_written(pid, t)) {
                found.push(e.path());
            }
        }
    }
    found
}

/// Removes the [`strays`]: when commit-retry starts its work (a green commit never pays for it).
pub fn remove_strays(common_dir: &Path) {
    for path in strays(common_dir) {
        let _ = std::fs::remove_file(path);
    }
}

const INDEX_COPY: &str = "buildlock-index-copy-";

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
    succeeded(args, git(worktree, index).args(args).output()?)
}

/// `Ok` when git succeeded, else its words.
fn succeeded(args: &[&str], out: std::process::Output) -> Result<()> {
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
    succeeded(args, child.wait_with_output()?)
}

/// The paths that differ between two trees.
fn changed(worktree: &Path, from: &str, to: &str) -> Result<Vec<Vec<u8>>> {
    let args = [
        "diff-tree",
        "-r",
        "-z",
        "--no-renames",
        "--name-only",
        from,
        to,
    ];
    let out = git(worktree, None).args(args).output()?;
    let names = out.stdout.clone();
    succeeded(&args, out)?;
    Ok(names
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(args: &[&str]) -> Args {
        read_args(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn commit_arguments_are_read_as_git_reads_them() {
        assert_eq!(read(&["-q", "-m", "a -a message"]), Args::default());
        assert!(read(&["-m", "x", "--", "a.txt"]).worktree);
        assert!(read(&["-m", "x", "a.txt"]).worktree);
        assert!(read(&["-am", "x"]).worktree);
        assert!(!read(&["-ma"]).worktree, "`a` is the value of -m");
        assert!(read(&["-ma", "x"]).worktree, "`x` is a pathspec");
        assert!(read(&["--all", "-m", "x"]).worktree);
        assert_eq!(read(&["--author", "A <a@b>", "-m", "x"]), Args::default());
        assert_eq!(read(&["--author=A <a@b>", "-m", "x"]), Args::default());
        assert_eq!(read(&["-F", "msg.txt"]), Args::default());
        assert!(read(&["--amend", "--no-edit"]).joining);
        assert!(read(&["--amen", "--no-edit"]).joining, "git takes a prefix");
        assert!(read(&["--fixup=HEAD"]).joining);
        assert!(
            !read(&["-m", "--amend"]).joining,
            "a message, not an option"
        );
    }
}
