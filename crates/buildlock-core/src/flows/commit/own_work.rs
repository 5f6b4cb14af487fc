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

use super::tree_entries::{self, Change, Entry};
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

/// What was the agent's own when the fix started, and where the fix began: enough to tell the
/// fix apart from the own work afterwards, whatever the fix staged (`git add -A` included), and
/// kept on disk ([`PENDING`]) so that a run killed before the fix was committed apart can be
/// completed by the next one.
pub struct OwnWork {
    worktree: PathBuf,
    git_dir: PathBuf,
    /// HEAD then.
    head: String,
    /// HEAD's tree then.
    base: String,
    /// The index then, as a tree.
    own: String,
    /// The whole work tree then, tracked and untracked (what `git add -A` would stage), as a
    /// tree: the fix is what changed from this snapshot to the one taken after it.
    before: String,
    /// The failure log, for the fix commit's title.
    log: Option<PathBuf>,
    /// The agent's commit takes the index as it is (no `-a`, no pathspecs) and nothing was
    /// staged: after the fix's own commit there is nothing more to commit.
    nothing_staged: bool,
    /// The paths the own work changes (staged, unstaged or untracked).
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

/// The record of a fix started and not yet committed apart, in the work tree's own git dir:
/// `head base own before nothing_staged pid` on its first line, the failure log on the second.
pub const PENDING: &str = "buildlock-fix-pending";

/// Whether the work tree around the current directory has a [`PENDING`] record: a few file
/// system look-ups and no git process, for commit-retry to ask before its first commit (whose
/// check would pass on the fix, and commit it mixed with the agent's own work).
pub fn pending_here() -> bool {
    let Ok(mut dir) = std::env::current_dir() else {
        return false;
    };
    loop {
        let dot = dir.join(".git");
        if dot.is_dir() {
            return dot.join(PENDING).is_file();
        }
        if dot.is_file() {
            let text = std::fs::read_to_string(&dot).unwrap_or_default();
            return text
                .trim()
                .strip_prefix("gitdir:")
                .is_some_and(|gd| dir.join(gd.trim()).join(PENDING).is_file());
        }
        if !dir.pop() {
            return false;
        }
    }
}

impl OwnWork {
    /// What is the agent's own before the fix runs: what it staged, and everything else in its
    /// work tree. `None` when the fix cannot be committed apart (a merge in progress, `--amend`
    /// and the like, an index with conflicts), or without a HEAD yet.
    pub fn note(
        worktree: &Path,
        git_dir: &Path,
        args: &[OsString],
        log: Option<&Path>,
    ) -> Option<OwnWork> {
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
        let head = git_out(worktree, &["rev-parse", "--verify", "-q", "HEAD"], None)?;
        let base = git_out(
            worktree,
            &["rev-parse", "--verify", "-q", "HEAD^{tree}"],
            None,
        )?;
        // Unmerged entries cannot be written as a tree: such an index is left to the agent.
        let own = index_tree(worktree, git_dir)?;
        let before = snapshot(worktree, git_dir)?;
        let work = OwnWork {
            worktree: worktree.to_owned(),
            git_dir: git_dir.to_owned(),
            nothing_staged: own == base && !read.worktree,
            head,
            base,
            own,
            before,
            log: log.map(Path::to_owned),
            paths: Vec::new(),
        };
        let work = work.with_paths();
        work.keep();
        Some(work)
    }

    fn with_paths(mut self) -> OwnWork {
        let mut paths = changed(&self.worktree, &self.base, &self.own).unwrap_or_default();
        for p in changed(&self.worktree, &self.base, &self.before).unwrap_or_default() {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
        self.paths = paths;
        self
    }

    /// Writes the [`PENDING`] record (best effort: without it only a kill loses the split).
    fn keep(&self) {
        let text = format!(
            "{} {} {} {} {} {}\n{}\n",
            self.head,
            self.base,
            self.own,
            self.before,
            u8::from(self.nothing_staged),
            std::process::id(),
            self.log
                .as_deref()
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        );
        let path = self.git_dir.join(PENDING);
        let tmp = self
            .git_dir
            .join(format!("{PENDING}.{}", std::process::id()));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    /// The fix is committed apart, or will never be: the record goes.
    pub fn done(&self) {
        let _ = std::fs::remove_file(self.git_dir.join(PENDING));
    }

    /// A fix that a killed run started and did not commit apart (its [`PENDING`] record, whose
    /// writer is gone, and HEAD still where the fix began): to be completed now. A record that
    /// no longer applies is removed.
    pub fn pending(worktree: &Path, git_dir: &Path) -> Option<OwnWork> {
        let path = git_dir.join(PENDING);
        let written = std::fs::metadata(&path).ok()?.modified().ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let mut lines = text.lines();
        let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
        let log = lines.next().filter(|l| !l.is_empty()).map(PathBuf::from);
        let head = git_out(worktree, &["rev-parse", "--verify", "-q", "HEAD"], None);
        let [h, base, own, before, nothing, pid] = first[..] else {
            let _ = std::fs::remove_file(&path);
            return None;
        };
        let pid = pid.parse::<u32>().unwrap_or(0);
        if pid != std::process::id() && crate::os::process::may_have_written(pid, written) {
            // Its run is alive: the fix is still its own to commit.
            return None;
        }
        if head.as_deref() != Some(h) {
            // Committed since (by hand, or the fix committed itself): nothing to complete.
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(
            OwnWork {
                worktree: worktree.to_owned(),
                git_dir: git_dir.to_owned(),
                head: h.to_owned(),
                base: base.to_owned(),
                own: own.to_owned(),
                before: before.to_owned(),
                log,
                nothing_staged: nothing == "1",
                paths: Vec::new(),
            }
            .with_paths(),
        )
    }

    /// The paths the own work changes.
    pub fn paths(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Whether the agent had nothing of its own to commit (see [`OwnWork::nothing_staged`]).
    pub fn nothing_staged(&self) -> bool {
        self.nothing_staged
    }

    /// The failure log the fix was for.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// After the fix: an index of HEAD plus what the fix changed (the difference between a
    /// snapshot of the whole work tree before the fix and one after it), to commit the fix alone
    /// (in `git_dir`); and the agent's own index put back as it was, plus the fix, whatever the
    /// fix staged. `None` when the fix changed nothing in the work tree, or committed itself.
    pub fn fix_index(&self) -> Result<Option<TempIndex>> {
        let head = git_out(
            &self.worktree,
            &["rev-parse", "--verify", "-q", "HEAD"],
            None,
        );
        if head.as_deref() != Some(self.head.as_str()) {
            // The fix committed on its own already.
            self.done();
            return Ok(None);
        }
        let Some(after) = snapshot(&self.worktree, &self.git_dir) else {
            bail!("cannot take a snapshot of the work tree after the fix");
        };
        let fix = raw_diff(&self.worktree, &self.before, &after)?;
        let paths: Vec<Vec<u8>> = fix.iter().map(|(p, ..)| p.clone()).collect();
        let heads = entries(&self.worktree, &self.base, &paths)?;
        let owns = entries(&self.worktree, &self.own, &paths)?;
        let mut fix_entries = Vec::new();
        let mut own_entries = Vec::new();
        let mut mixed = Vec::new();
        for (path, before, after) in &fix {
            let at_head = heads.get(path).cloned().flatten();
            let at_own = owns.get(path).cloned().flatten();
            let f = match combine(&self.worktree, &at_head, before, after) {
                Some(e) => e,
                None => {
                    mixed.push(String::from_utf8_lossy(path).into_owned());
                    after.clone()
                }
            };
            let o =
                combine(&self.worktree, &at_own, before, after).unwrap_or_else(|| after.clone());
            fix_entries.push((path.clone(), f));
            own_entries.push((path.clone(), o));
        }
        if !mixed.is_empty() {
            say::warn(format!(
                "the fix changed lines that your own unstaged work changes too ({}): they cannot \
                 be told apart, so the fix commit holds your change there too",
                mixed.join(", ")
            ));
        }
        // The agent's index: as it was, plus the fix.
        self.restore_own(&own_entries)?;
        if fix_entries.is_empty() {
            self.done();
            return Ok(None);
        }
        let index = TempIndex {
            path: self
                .git_dir
                .join(format!("{FIX_INDEX}{}", std::process::id())),
        };
        let env = Some(index.path.as_path());
        git_ok(&self.worktree, &["read-tree", &self.base], env)?;
        index_info(&self.worktree, &fix_entries, env)?;
        if git_out(&self.worktree, &["write-tree"], env).as_deref() == Some(self.base.as_str()) {
            self.done();
            return Ok(None);
        }
        Ok(Some(index))
    }

    /// Puts the agent's index back as it was before the fix, plus `fix` (its entries for the
    /// fix's paths): what the fix staged of the agent's own work is unstaged again, and what it
    /// added of untracked files is untracked again. Only entries that differ are written.
    fn restore_own(&self, fix: &[(Vec<u8>, Entry)]) -> Result<()> {
        let Some(now) = index_tree(&self.worktree, &self.git_dir) else {
            say::warn(
                "your index has conflicts after the fix: it is left as the fix left it".to_owned(),
            );
            return Ok(());
        };
        let want = TempIndex {
            path: self
                .git_dir
                .join(format!("{WANT_INDEX}{}", std::process::id())),
        };
        let env = Some(want.path.as_path());
        git_ok(&self.worktree, &["read-tree", &self.own], env)?;
        index_info(&self.worktree, fix, env)?;
        let Some(want_tree) = git_out(&self.worktree, &["write-tree"], env) else {
            bail!("cannot write the index wanted after the fix");
        };
        let diff = raw_diff(&self.worktree, &now, &want_tree)?;
        if diff.is_empty() {
            return Ok(());
        }
        let entries: Vec<(Vec<u8>, Entry)> = diff.into_iter().map(|(p, _, e)| (p, e)).collect();
        index_info(&self.worktree, &entries, None)
    }
}

/// A snapshot of the whole work tree (tracked and untracked, ignoring what .gitignore ignores)
/// as a tree: `git add -A` into a copy of the agent's index. Neither the index nor the work tree
/// is touched.
pub fn snapshot(worktree: &Path, git_dir: &Path) -> Option<String> {
    let copy = TempIndex {
        path: git_dir.join(format!("{INDEX_COPY}{}", std::process::id())),
    };
    std::fs::copy(git_dir.join("index"), &copy.path).ok()?;
    crate::os::fs::touch_existing(&copy.path);
    let env = Some(copy.path.as_path());
    let added = git(worktree, env)
        .args(["add", "-A", "--ignore-errors"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !added.success() {
        return None;
    }
    git_out(worktree, &["write-tree"], env)
}

/// The entry that `x` (the same path in another tree) gets when the change `before` → `after`
/// is made to it: `after` where `x` is `before` (or already `after`); a three-way merge of the
/// content where all three are files; `None` where the two cannot be told apart.
fn combine(worktree: &Path, x: &Entry, before: &Entry, after: &Entry) -> Option<Entry> {
    if x == before || x == after {
        return Some(after.clone());
    }
    let (Some((xm, xo)), Some((bm, bo)), Some((am, ao))) = (x, before, after) else {
        return None;
    };
    let file = |m: &str| m == "100644" || m == "100755";
    if !(file(xm) && file(bm) && file(am)) {
        return None;
    }
    let merged = git_out(
        worktree,
        &[
            "merge-file",
            "--object-id",
            xo.as_str(),
            bo.as_str(),
            ao.as_str(),
        ],
        None,
    )?;
    // The mode the fix gave, unless the fix kept it and `x` has its own.
    let mode = if am == bm { xm.clone() } else { am.clone() };
    Some(Some((mode, merged)))
}

/// The paths that differ between two trees, with their entries on each side.
fn raw_diff(worktree: &Path, from: &str, to: &str) -> Result<Vec<Change>> {
    let args = tree_entries::raw_diff_args(from, to);
    let out = git(worktree, None).args(args).output()?;
    let raw = out.stdout.clone();
    succeeded(&args, out)?;
    Ok(tree_entries::parse_raw(&raw))
}

/// `git update-index -z --index-info` with `entries` (an absent entry removes the path).
fn index_info(worktree: &Path, entries: &[(Vec<u8>, Entry)], index: Option<&Path>) -> Result<()> {
    let args = ["update-index", "-z", "--index-info"];
    let mut child = git(worktree, index)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&tree_entries::index_info(entries))?;
    }
    succeeded(&args, child.wait_with_output()?)
}

/// The entries of `paths` in `tree`.
fn entries(
    worktree: &Path,
    tree: &str,
    paths: &[Vec<u8>],
) -> Result<std::collections::HashMap<Vec<u8>, Entry>> {
    let mut found = std::collections::HashMap::new();
    if paths.is_empty() {
        return Ok(found);
    }
    let args = ["ls-tree", "-r", "-z", "--full-tree", tree];
    let mut child = git(worktree, None)
        .args(args)
        .arg("--")
        .args(
            paths
                .iter()
                .map(|p| crate::os::fs::path_from_bytes(p).into_os_string()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let _ = &mut child;
    let out = child.wait_with_output()?;
    let listing = out.stdout.clone();
    succeeded(&args, out)?;
    for record in listing.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        // <mode> SP <type> SP <oid> TAB <path>
        let Some(tab) = record.iter().position(|&b| b == b'\t') else {
            continue;
        };
        let head = String::from_utf8_lossy(&record[..tab]);
        let mut parts = head.split(' ');
        let (Some(mode), _, Some(oid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        found.insert(
            record[tab + 1..].to_vec(),
            Some((mode.to_owned(), oid.to_owned())),
        );
    }
    for p in paths {
        found.entry(p.clone()).or_insert(None);
    }
    Ok(found)
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
                .or_else(|| name.strip_prefix(WANT_INDEX))
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
const WANT_INDEX: &str = "buildlock-want-index-";

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
