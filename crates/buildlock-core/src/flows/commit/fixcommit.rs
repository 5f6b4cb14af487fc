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
//!
//! A commit id read from the state is pasted into the command agents are told to run and handed
//! to `retry.refresh`: only an object id (4 to 64 hex digits) is ever used; anything else (a state
//! written by an old or hostile process) is ignored with a warning.

use std::time::{Duration, Instant};

/// The least a fix commit is waited for while the fixer's `git commit` runs (see
/// [`await_commit`]: at most ten minutes, an editor left open).
pub const GRACE: Duration = Duration::from_secs(10);

use crate::os::process::{self, Process, Seen};
use crate::os::repo::{self, Repo};
use crate::os::say;
use crate::protocol::state::Fix;
use crate::store::{Read, Store};

/// Whether `id` can be a git object id, full or abbreviated: 4 to 64 hex digits (SHA-1 or
/// SHA-256), nothing else.
pub fn is_object_id(id: &str) -> bool {
    (4..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The fix commit, when it is known or can be found now. A recorded commit that is not an object
/// id is ignored (with a warning): that fix is handed to nobody, and a failure it would have fixed
/// is a breakage of its own.
pub fn resolve(fix: &Fix) -> Option<String> {
    match fix.commit.as_deref() {
        Some(commit) if is_object_id(commit) => Some(commit.to_owned()),
        Some(commit) => {
            say::warn(format!(
                "the state names a fix commit that is not a commit id (`{}`): ignoring it",
                say::inert(commit)
            ));
            None
        }
        None => found(fix),
    }
}

/// The fix commit found from the fixer's HEAD (git's own answer: an object id).
fn found(fix: &Fix) -> Option<String> {
    repo::commit_after(fix.git_dir.as_deref()?, fix.head_before.as_deref())
}

/// Waits until the fix commit can be found, for at most `limit`, stopping early when `stop`
/// says so.
pub fn await_commit(fix: &Fix, limit: Duration, stop: &dyn Fn() -> bool) -> Option<String> {
    if let Some(commit) = resolve(fix) {
        return Some(commit);
    }
    if fix.commit.is_some()
        || fix.committer.is_none()
        || !fix.git_dir.as_ref().is_some_and(|d| d.exists())
    {
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
        if let Some(commit) = found(fix) {
            return Some(commit);
        }
        if !committing(fix) {
            return found(fix);
        }
        if start.elapsed() >= EDITOR_LIMIT.max(limit) || stop() {
            return None;
        }
    }
}

/// The fix commit a waiter whose wait ended in `fix` (of `key`) must take before anything else,
/// when its HEAD lacks it, so that it is handed over as soon as it exists (contract: no check is
/// run again only to find out that it still fails).
///
/// Only a commit *recorded* as the fix is handed over this way: one made apart by commit-retry,
/// committed by `fix.command` itself, made by a `buildlock ci` fixer, or confirmed by another
/// waiter's failure. A commit only found after the fixer's HEAD may be the fixer's own work after
/// a fix outside the repository (a shared dependency): there the check runs again, and the state
/// machine hands the commit over if it still fails. The record is waited for while it is on its
/// way, never by the clock alone: while the fixer's `git commit` runs on this host, then while
/// the process that records it ([`Fix::recorder`]) lives (see [`recorded`]).
///
/// `None`: this HEAD has it, or no fix commit is on record (the caller runs its check again).
pub fn to_take(
    repo: &Repo,
    store: &dyn Store,
    key: &str,
    fix: &Fix,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    lacking(repo, &recorded(store, key, fix, stop)?)
}

/// The longest a waiter waits for a live recorder to record the fix commit: it records right
/// after its commit, so only a recorder that is stopped (SIGSTOP, a debugger) or starved for
/// this long is not waited for to the end, and the waiter runs its check again.
pub const RECORD_LIMIT: Duration = Duration::from_secs(120);

/// The fix commit on record for `fix`, waited for as [`to_take`] says: the wait ends as soon as
/// the state records the commit or moves on to another fix, or the recorder is gone (after one
/// last look: it may have recorded on its way out), or [`RECORD_LIMIT`] passed. A recorder
/// that cannot be seen from here (another host or pid space) is waited for [`GRACE`].
pub fn recorded(
    store: &dyn Store,
    key: &str,
    fix: &Fix,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    if fix.commit.is_some() {
        return resolve(fix);
    }
    let committer = fix.committer.as_ref()?;
    if committer.host == process::hostname() {
        // Written by a `git commit` here: none on its way once it ended without one.
        await_commit(fix, GRACE, stop)?;
    }
    // Nobody records it (a fix committed by hand): nothing to wait for.
    let recorder = fix.recorder.as_ref()?;
    await_recorded(store, key, fix, recorder, stop)
}

/// Waits until the state of `key` records the commit of `fix` (its `recorder` records it once
/// its commit is made), as [`recorded`] says; `None` as soon as the state moves on to another
/// fix or the recorder is gone without recording it.
fn await_recorded(
    store: &dyn Store,
    key: &str,
    fix: &Fix,
    recorder: &Process,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    let limit = match process::judge(recorder) {
        Seen::Unknown => GRACE,
        Seen::Alive | Seen::Dead => RECORD_LIMIT,
    };
    let deadline = Instant::now() + limit;
    store.watch(key);
    loop {
        // Judged before the read: a recorder gone before a read that lacks its record is gone
        // without recording it.
        let gone = process::judge(recorder) == Seen::Dead;
        match store.read(key) {
            Read::Found { state, .. } => match state.fix {
                Some(f) if f.generation == fix.generation && f.by == fix.by => {
                    if f.commit.is_some() {
                        return resolve(&f);
                    }
                }
                _ => return None,
            },
            Read::Unreachable(_) => {}
            Read::Missing | Read::Damaged(_) => return None,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if gone || left.is_zero() || stop() {
            return None;
        }
        // Wakes when the state changes or the recorder exits.
        store.wait_change(key, Some(recorder), left.min(store.look_every()));
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

/// `Some(commit)` when this repository's HEAD does not have the fix commit `commit` (never for
/// something that is not an object id: nobody is told to take it).
pub fn lacking(repo: &Repo, commit: &str) -> Option<String> {
    if !is_object_id(commit) {
        return None;
    }
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

/// Records that `agent` was told to take the fix `commit` of `key` without a check run (a
/// wait that ended on the fix): the same history event as a failure told to take it, so that
/// `buildlock log` and the counts say the same whichever way the agent learnt it.
pub fn record_told(
    ctx: &crate::flows::context::Context,
    key: &str,
    generation: Option<u64>,
    commit: &str,
    by: &str,
) {
    record_entry(ctx.store.as_ref(), told(ctx, key, generation, commit, by));
}

/// [`record_told`] on a thread of its own, for a caller that goes on at once (taking the fix,
/// running its check) and joins it before it exits: with the remote backend the record is a
/// round trip or two, on no path that needs its answer.
pub fn record_told_aside(
    ctx: &crate::flows::context::Context,
    key: &str,
    generation: Option<u64>,
    commit: &str,
    by: &str,
) -> std::thread::JoinHandle<()> {
    let store = ctx.store.clone();
    let entry = told(ctx, key, generation, commit, by);
    std::thread::spawn(move || record_entry(store.as_ref(), entry))
}

fn told(
    ctx: &crate::flows::context::Context,
    key: &str,
    generation: Option<u64>,
    commit: &str,
    by: &str,
) -> serde_json::Value {
    serde_json::json!({"event": "take_fix", "key": key, "agent": ctx.agent,
        "commit": commit, "fixer": by, "generation": generation})
}

fn record_entry(store: &dyn Store, entry: serde_json::Value) {
    if let Err(e) = store.record(crate::store::Entry::from_json(entry)) {
        say::warn(format!("could not record in the history: {e:#}"));
    }
}

/// How to take the fix, for people and agents: `buildlock take-fix`, which keeps every kind of
/// local work and changes nothing when it cannot take the fix (see `take_fix.rs`).
pub fn how_to_take(commit: &str) -> String {
    // Callers hand over object ids only; whatever else comes is shown inert.
    let commit = say::inert(commit);
    format!(
        "`git buildlock take-fix {commit}` (it keeps all your local work, staged, unstaged and \
         untracked; when it cannot take the fix it changes nothing and says why)"
    )
}

/// A `retry.refresh` that takes the fix commit safely (see [`how_to_take`]): it reads
/// `BUILDLOCK_FIX_COMMIT`, and does nothing without one. `git buildlock` is the alias that
/// install.sh adds.
pub const REFRESH_TAKING_THE_FIX: &str = "git buildlock take-fix";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_object_ids_are_commits() {
        for good in [
            "abcd",
            "0123456789abcdef0123456789abcdef01234567",
            &"a".repeat(64),
        ] {
            assert!(is_object_id(good), "{good:?}");
        }
        for bad in [
            "",
            "abc",
            "abcd; sh ./evil.sh",
            "$(sh evil.sh)",
            "ééééééééééééééé",
            "g123456",
            &"a".repeat(65),
        ] {
            assert!(!is_object_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_recorded_commit_that_is_not_an_object_id_is_ignored() {
        let fix = |commit: &str| Fix {
            commit: Some(commit.to_owned()),
            signature: None,
            signatures: Vec::new(),
            by: "a0".to_owned(),
            generation: 1,
            head_before: None,
            git_dir: None,
            committer: None,
            recorder: None,
            credited: Vec::new(),
        };
        assert_eq!(resolve(&fix("0123abcd")), Some("0123abcd".to_owned()));
        assert_eq!(resolve(&fix("0123abcd' ; sh ./evil.sh ; '")), None);
        assert_eq!(resolve(&fix("ééééééééééééé")), None);
        // Never a panic, whatever it is handed.
        assert!(how_to_take("éééééééééééé").contains("ééé"));
    }
}
