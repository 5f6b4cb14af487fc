//! `buildlock take-fix [COMMIT]`: brings a fix commit into this work tree and keeps every kind
//! of local work (staged, unstaged, untracked, intent-to-add, assume-unchanged and skip-worktree
//! entries, submodules, also with `submodule.recurse`).
//!
//! Taking the fix means HEAD comes to contain it: a new commit on HEAD with the fix's changes
//! (a cherry-pick, computed with `git merge-tree` without touching anything), and the fix's
//! paths, and only those, brought into the index and the work tree. Nothing else is touched:
//! no stash, no reset, no checkout, no submodule update. It refuses (exit 75, nothing changed)
//! when a path the fix changes holds local work of any kind (or git cannot say: an
//! assume-unchanged or skip-worktree entry), when the fix does not apply on HEAD, and during a
//! merge, rebase, cherry-pick or revert. When a step fails half-way, the fix's paths are put
//! back as they were (they held no local work) and HEAD is not moved.
//!
//! Exit codes: 0 taken (or already there, or no fix to take); 75 cannot take it now, nothing
//! lost; 70 something failed (what was done is undone, and it says so).

use anyhow::{Context as _, Result, bail};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::os::{env, say};
use crate::protocol::exit;

use super::tree_entries::{self, Change, Entry, index_info};

/// Takes `commit` (default `BUILDLOCK_FIX_COMMIT`); the exit code.
pub fn run(commit: Option<String>) -> i32 {
    let Some(commit) = commit.or_else(env::fix_commit) else {
        say::say(
            "take-fix: no fix commit to take (no COMMIT given and BUILDLOCK_FIX_COMMIT is not \
             set): nothing to do",
        );
        return exit::OK;
    };
    match take(&commit) {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("take-fix: {e:#} (exit 70)"));
            exit::COORDINATION
        }
    }
}

struct Git {
    top: PathBuf,
}

impl Git {
    fn cmd(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("--literal-pathspecs").current_dir(&self.top);
        c
    }

    /// `git args`: its stdout when it succeeded.
    fn out(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run git {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    fn line(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.out(args)?).trim().to_owned())
    }

    fn maybe(&self, args: &[&str]) -> Option<String> {
        self.line(args).ok().filter(|s| !s.is_empty())
    }

    /// `git args` with `input` on stdin.
    fn with_input(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run git {}", args.join(" ")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }
}

/// What is known once the fix is found and can be taken onto HEAD.
struct Taking {
    git: Git,
    /// The fix commit, and its first 12 hex digits.
    fix: String,
    short: String,
    parent: String,
    head: String,
}

/// A step's end: go on with the value, or stop with an exit code (said already).
type Step<T> = Result<std::result::Result<T, i32>>;

fn take(commit: &str) -> Result<i32> {
    let t = match find(commit)? {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let tree = match t.fix_on_head()? {
        Ok(tree) => tree,
        Err(code) => return Ok(code),
    };
    let head_tree = t
        .git
        .line(&["rev-parse", &format!("{}^{{tree}}", t.head)])?;
    if tree == head_tree {
        say::say(format!(
            "take-fix: HEAD has the changes of the fix {} already",
            t.short
        ));
        return Ok(exit::OK);
    }
    let changes =
        tree_entries::parse_raw(&t.git.out(&tree_entries::raw_diff_args(&head_tree, &tree))?);
    let paths: Vec<&[u8]> = changes.iter().map(|(p, ..)| p.as_slice()).collect();
    let local = local_work(&t.git, &paths)?;
    if !local.is_empty() {
        say::say(format!(
            "take-fix: the fix {} changes files where you have local work ({}): commit or \
             move that work, then run `git buildlock take-fix {}` again (exit 75; nothing \
             changed)",
            t.short,
            local.join(", "),
            t.fix
        ));
        return Ok(exit::BLOCKED);
    }
    t.apply(&tree, &changes)
}

/// The repository, the fix commit and HEAD; stops (75 or 0) when the fix is not here, HEAD has
/// it, or a merge or rebase is in progress.
fn find(commit: &str) -> Step<Taking> {
    let probe = Git {
        top: std::env::current_dir().context("cannot read the current directory")?,
    };
    let top = probe
        .line(&["rev-parse", "--show-toplevel"])
        .context("not in a git work tree")?;
    let git = Git {
        top: PathBuf::from(top),
    };
    let git_dir = PathBuf::from(git.line(&["rev-parse", "--absolute-git-dir"])?);
    let shown = say::inert(&commit.chars().take(12).collect::<String>());
    let Some(fix) = git.maybe(&[
        "rev-parse",
        "--verify",
        "-q",
        &format!("{commit}^{{commit}}"),
    ]) else {
        let how = env::fix_ref().map_or_else(
            || "fetch it first".to_owned(),
            |r| format!("fetch it first: `git fetch <remote> {}`", say::inert(&r)),
        );
        say::say(format!(
            "take-fix: the fix commit {shown} is not in this repository; {how}, then run \
             `git buildlock take-fix {}` again (exit 75; nothing changed)",
            say::inert(commit)
        ));
        return Ok(Err(exit::BLOCKED));
    };
    let short = fix.chars().take(12).collect::<String>();
    let Some(head) = git.maybe(&["rev-parse", "--verify", "-q", "HEAD"]) else {
        say::say("take-fix: this work tree has no commit yet to take the fix onto (exit 75)");
        return Ok(Err(exit::BLOCKED));
    };
    if git
        .cmd()
        .args(["merge-base", "--is-ancestor", &fix, &head])
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        say::say(format!("take-fix: HEAD has the fix {short} already"));
        return Ok(Err(exit::OK));
    }
    let busy = [
        ("MERGE_HEAD", "a merge"),
        ("rebase-merge", "a rebase"),
        ("rebase-apply", "a rebase (or `git am`)"),
        ("CHERRY_PICK_HEAD", "a cherry-pick"),
        ("REVERT_HEAD", "a revert"),
    ];
    if let Some((_, what)) = busy.iter().find(|(f, _)| git_dir.join(f).exists()) {
        say::say(format!(
            "take-fix: {what} is in progress in this work tree: finish it (or abort it), then run \
             `git buildlock take-fix {fix}` (exit 75; nothing changed)"
        ));
        return Ok(Err(exit::BLOCKED));
    }
    let Some(parent) = git.maybe(&["rev-parse", "--verify", "-q", &format!("{fix}^1")]) else {
        bail!("the fix commit {short} has no parent: it cannot be taken as a change");
    };
    Ok(Ok(Taking {
        git,
        fix,
        short,
        parent,
        head,
    }))
}

impl Taking {
    /// The fix on HEAD, as a tree: a cherry-pick that touches nothing. Stops (75) on a conflict.
    fn fix_on_head(&self) -> Step<String> {
        let merged = self
            .git
            .cmd()
            .args([
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                &format!("--merge-base={}", self.parent),
                &self.head,
                &self.fix,
            ])
            .stdin(Stdio::null())
            .output()?;
        let listing = String::from_utf8_lossy(&merged.stdout).into_owned();
        let mut lines = listing.lines();
        let tree = lines.next().unwrap_or_default().trim().to_owned();
        match merged.status.code() {
            Some(0) => Ok(Ok(tree)),
            Some(1) => {
                let conflicts: Vec<&str> = lines.take_while(|l| !l.is_empty()).take(10).collect();
                say::say(format!(
                    "take-fix: the fix {short} does not apply on your HEAD (conflicts in {}): take \
                     it by hand with `git cherry-pick {short}` once your work is committed \
                     (exit 75; nothing changed)",
                    conflicts.join(", "),
                    short = self.short
                ));
                Ok(Err(exit::BLOCKED))
            }
            _ => bail!(
                "git merge-tree failed: {}",
                String::from_utf8_lossy(&merged.stderr).trim()
            ),
        }
    }

    /// Takes the fix: the new commit (objects only), the fix's paths in the index and the work
    /// tree (they hold HEAD's content: no local work there), then HEAD, compare-and-swap. When a
    /// step fails, the fix's paths are put back as they were.
    fn apply(&self, tree: &str, changes: &[Change]) -> Result<i32> {
        let (git, fix, short) = (&self.git, &self.fix, &self.short);
        let new = new_commit(git, fix, &self.parent, &self.head, tree)?;
        let taken: Vec<(Vec<u8>, Entry)> = changes
            .iter()
            .map(|(p, _, t)| (p.clone(), t.clone()))
            .collect();
        let back: Vec<(Vec<u8>, Entry)> = changes
            .iter()
            .map(|(p, h, _)| (p.clone(), h.clone()))
            .collect();
        if let Err(e) = git.with_input(&["update-index", "-z", "--index-info"], &index_info(&taken))
        {
            say::say(format!(
                "take-fix: cannot update the index ({e:#}): another git command may be running in \
                 this work tree; run `git buildlock take-fix {fix}` again (exit 75; nothing changed)"
            ));
            return Ok(exit::BLOCKED);
        }
        if let Err(e) = write_paths(git, &taken) {
            return self.undo(&back, format!("cannot write the fix's files ({e:#})"));
        }
        let reason = format!("take-fix: {short}");
        if let Err(e) = git.out(&["update-ref", "-m", &reason, "HEAD", &new, &self.head]) {
            return self.undo(&back, format!("HEAD moved meanwhile ({e:#}); run it again"));
        }
        // Stat information for the paths just written (best effort: content is right either way).
        let _ = git
            .cmd()
            .args(["update-index", "-q", "--refresh"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let names: Vec<String> = changes
            .iter()
            .take(5)
            .map(|(p, ..)| say::inert(&String::from_utf8_lossy(p)))
            .collect();
        say::say(format!(
            "take-fix: took the fix {short} as {} ({}{}); your own work is as it was",
            new.chars().take(12).collect::<String>(),
            names.join(", "),
            if changes.len() > 5 { ", …" } else { "" }
        ));
        Ok(exit::OK)
    }

    /// Puts the fix's paths back in the index and the work tree after a failed step.
    fn undo(&self, back: &[(Vec<u8>, Entry)], why: String) -> Result<i32> {
        let index = self
            .git
            .with_input(&["update-index", "-z", "--index-info"], &index_info(back));
        let files = write_paths(&self.git, back);
        match (index, files) {
            (Ok(_), Ok(())) => {
                say::say(format!(
                    "take-fix: {why}; the fix's files are put back as they were, and nothing \
                     of your own work was touched (exit 75)"
                ));
                Ok(exit::BLOCKED)
            }
            (i, f) => bail!(
                "{why}; and putting the fix's files back failed ({}): `git status` shows what \
                 is left; your own work is in no file the fix changes",
                i.err()
                    .or(f.err())
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The commit HEAD moves to: the fix itself when HEAD is its parent (HEAD then contains it),
/// else a new commit of `tree` on `head` with the fix's message and author (a cherry-pick).
fn new_commit(git: &Git, fix: &str, parent: &str, head: &str, tree: &str) -> Result<String> {
    if head == parent {
        return Ok(fix.to_owned());
    }
    let message = git.out(&["log", "-1", "--format=%B", fix])?;
    let mut message = String::from_utf8_lossy(&message).trim_end().to_owned();
    message.push_str(&format!("\n\n(cherry picked from commit {fix})\n"));
    let author = git.line(&["log", "-1", "--format=%an%x00%ae%x00%ad", "--date=raw", fix])?;
    let mut who = author.split('\0');
    let mut c = git.cmd();
    c.args(["commit-tree", tree, "-p", head, "-F", "-"]);
    if let (Some(name), Some(email), Some(date)) = (who.next(), who.next(), who.next()) {
        c.env("GIT_AUTHOR_NAME", name)
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_AUTHOR_DATE", date);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(message.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "git commit-tree failed: {} (nothing changed)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The paths of `paths` that hold local work of any kind, or whose state git cannot tell:
/// staged, unstaged, intent-to-add, untracked, ignored, unmerged, assume-unchanged,
/// skip-worktree, submodules; and a file standing where the fix needs a folder.
fn local_work(git: &Git, paths: &[&[u8]]) -> Result<Vec<String>> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |p: &[u8], why: &str| {
        let name = format!("{} ({why})", String::from_utf8_lossy(p));
        if !found.contains(&name) && found.len() < 10 {
            found.push(name);
        }
    };
    let pathspec: Vec<std::path::PathBuf> = paths
        .iter()
        .map(|p| crate::os::fs::path_from_bytes(p))
        .collect();
    // Anything status sees: staged, unstaged, intent-to-add, untracked, ignored, unmerged.
    let out = git
        .cmd()
        .args([
            "status",
            "--porcelain=v2",
            "-z",
            "--no-renames",
            "--untracked-files=all",
            "--ignored=matching",
            "--ignore-submodules=none",
            "--",
        ])
        .args(&pathspec)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "git status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for record in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let text = String::from_utf8_lossy(record);
        let (why, fields) = match text.chars().next() {
            Some('1') => ("changed", 8),
            Some('u') => ("unmerged", 10),
            Some('?') => ("untracked", 1),
            Some('!') => ("ignored", 1),
            _ => continue,
        };
        let path = text.splitn(fields + 1, ' ').nth(fields).unwrap_or_default();
        add(path.as_bytes(), why);
    }
    // What status cannot see: entries git is told not to look at.
    let flags = git
        .cmd()
        .args(["ls-files", "-v", "-z", "--"])
        .args(&pathspec)
        .stdin(Stdio::null())
        .output()?;
    for record in flags.stdout.split(|&b| b == 0).filter(|r| r.len() > 2) {
        let tag = record[0];
        let path = &record[2..];
        if tag == b'S' {
            add(path, "skip-worktree");
        } else if tag.is_ascii_lowercase() {
            add(path, "assume-unchanged");
        }
    }
    // A submodule the fix changes, and a file where the fix needs a folder.
    let stage = git
        .cmd()
        .args(["ls-files", "-s", "-z", "--"])
        .args(&pathspec)
        .stdin(Stdio::null())
        .output()?;
    for record in stage.stdout.split(|&b| b == 0) {
        if record.starts_with(b"160000 ") {
            if let Some(tab) = record.iter().position(|&b| b == b'\t') {
                add(&record[tab + 1..], "a submodule");
            }
        }
    }
    for p in paths {
        let mut dir = git.top.join(crate::os::fs::path_from_bytes(p));
        while dir.pop() && dir != git.top {
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                add(p, "a file stands where the fix needs a folder");
            }
        }
    }
    Ok(found)
}

/// Writes the entries (`None`: removes the file) into the work tree.
fn write_paths(git: &Git, entries: &[(Vec<u8>, Entry)]) -> Result<()> {
    for (path, entry) in entries {
        let file = git.top.join(crate::os::fs::path_from_bytes(path));
        match entry {
            None => {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot remove {}", file.display()));
                    }
                }
                // Folders the removal left empty go too, as git would.
                let mut dir = file.clone();
                while dir.pop() && dir != git.top && std::fs::remove_dir(&dir).is_ok() {}
            }
            Some((mode, _)) if mode == "160000" => bail!("{} is a submodule", file.display()),
            Some((mode, oid)) => {
                let content = git.out(&["cat-file", "blob", oid])?;
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                if std::fs::symlink_metadata(&file).is_ok() {
                    std::fs::remove_file(&file)
                        .with_context(|| format!("cannot replace {}", file.display()))?;
                }
                if mode == "120000" {
                    crate::os::fs::symlink_file(&crate::os::fs::path_from_bytes(&content), &file)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                } else {
                    std::fs::write(&file, &content)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    if mode == "100755" {
                        crate::os::fs::set_mode(&file, 0o755)?;
                    }
                }
            }
        }
    }
    Ok(())
}
