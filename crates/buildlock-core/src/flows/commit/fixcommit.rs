//! The fix handed to the waiters: which commit fixed a breakage, and whether a HEAD has it.
//!
//! The pre-commit hook runs before the commit exists, so a fixer's passing check records where
//! the fix commit will appear (the fixer's git dir and its HEAD at that moment). The commit is
//! then known in one of two ways, and neither costs a commit anything:
//! - commit-retry and `buildlock ci` record it right after their commit succeeds;
//! - anyone else finds it when they need it: the first commit after that HEAD on the fixer's
//!   first-parent line (all worktrees of a repository share their objects and refs).
//!
//! A waiter can wake before the commit exists (git writes it after the hook returns), and the
//! fixer's commit can still fail after its check passed (a `commit-msg` hook, an aborted editor):
//! [`await_commit`] waits a bounded time for it and otherwise says it is not there.

use std::time::{Duration, Instant};

/// The least a fix commit is waited for while the fixer's `git commit` runs (see
/// [`await_commit`]: at most ten minutes, an editor left open).
pub const GRACE: Duration = Duration::from_secs(10);

use crate::os::process;
use crate::os::repo::{self, Repo};
use crate::protocol::state::Fix;

/// The fix commit, when it is known or can be found now.
pub fn resolve(fix: &Fix) -> Option<String> {
    if let Some(commit) = &fix.commit {
        return Some(commit.clone());
    }
    repo::commit_after(fix.git_dir.as_deref()?, fix.head_before.as_deref())
}

/// Waits until the fix commit can be found, for at most `limit`, stopping early when `stop`
/// says so.
pub fn await_commit(fix: &Fix, limit: Duration, stop: &dyn Fn() -> bool) -> Option<String> {
    if let Some(commit) = resolve(fix) {
        return Some(commit);
    }
    if fix.committer.is_none() || !fix.git_dir.as_ref().is_some_and(|d| d.exists()) {
        // No `git commit` is writing it (a check run by hand, a fix recorded by another
        // machine, the fixer's worktree removed): nothing to wait for.
        return None;
    }
    // The fixer's `git commit` still runs (writing the commit, an editor open for the message,
    // a slow commit-msg hook): the commit is on its way. Once git ended, whatever it wrote is
    // there; a commit it did not write (refused by a hook) never comes.
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
        if let Some(commit) = resolve(fix) {
            return Some(commit);
        }
        if !committing(fix) {
            return resolve(fix);
        }
        if start.elapsed() >= EDITOR_LIMIT.max(limit) || stop() {
            return None;
        }
    }
}

/// How long a fixer's commit in progress is waited for at most.
const EDITOR_LIMIT: Duration = Duration::from_secs(10 * 60);

/// Whether the `git commit` that ran the fixer's passing check still runs (same host, same
/// pid, same start time): it writes the fix commit when its editor or `commit-msg` hook is done.
fn committing(fix: &Fix) -> bool {
    fix.committer.as_ref().is_some_and(|p| {
        p.host == process::hostname() && p.start.is_some() && process::start_time(p.pid) == p.start
    })
}

/// `Some(commit)` when this repository's HEAD does not have the fix commit `commit`.
pub fn lacking(repo: &Repo, commit: &str) -> Option<String> {
    match repo.head_contains(commit) {
        Some(true) => None,
        // A fix commit that exists here but no branch holds any more (its work was abandoned)
        // is handed to nobody: the failure is then a breakage of its own.
        Some(false) if !repo.reachable(commit) => None,
        // Not in our object store (another machine's fix, not fetched yet) also means we lack it.
        Some(false) | None => Some(commit.to_owned()),
    }
}

/// The title of a fix commit: what broke, from the failure log (its first line that says
/// error or failure, else its first line), so that `git log` says what the commit fixed.
pub fn title(log: Option<&std::path::Path>) -> String {
    let text = log
        .and_then(|l| std::fs::read(l).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| strip_ansi(l).trim().to_owned())
        .filter(|l| !l.is_empty())
        .take(200)
        .collect();
    let said = lines
        .iter()
        .find(|l| {
            let l = l.to_lowercase();
            ["error", "fail", "panicked", "fatal"]
                .iter()
                .any(|w| l.contains(w))
        })
        .or_else(|| lines.first());
    match said {
        Some(line) => {
            let mut line: String = line.chars().filter(|c| !c.is_control()).collect();
            if line.chars().count() > 60 {
                line = line.chars().take(59).collect::<String>() + "…";
            }
            format!("Fix the build: {line}")
        }
        None => "Fix the build".to_owned(),
    }
}

/// `line` without ANSI escape sequences (colours).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// How to take the fix, for people and agents: `buildlock take-fix`, which keeps every kind of
/// local work and changes nothing when it cannot take the fix (see `take_fix.rs`).
pub fn how_to_take(commit: &str) -> String {
    format!(
        "`git buildlock take-fix {commit}` (it keeps all your local work, staged, unstaged and \
         untracked; when it cannot take the fix it changes nothing and says why)"
    )
}

/// A `retry.refresh` that takes the fix commit safely (see [`how_to_take`]): it reads
/// `BUILDLOCK_FIX_COMMIT`, and does nothing without one. `git buildlock` is the alias that
/// install.sh adds.
pub const REFRESH_TAKING_THE_FIX: &str = "git buildlock take-fix";
