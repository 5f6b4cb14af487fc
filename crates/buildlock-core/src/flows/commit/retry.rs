//! commit-retry: `git commit` that turns "someone else is fixing the build" into a commit that
//! simply succeeds a little later, and that runs the fix when it is the one elected.
//!
//! It learns the hook's decision for certain from the decision file (see `decision.rs`); git
//! failures of its own pass through with git's exit code and no retry, except contention on git's
//! lock files (`index.lock` and friends), which is retried with jittered backoff and elects nobody.
//!
//! As fixer with `fix.command`, it holds a [`Role`](crate::flows::commit::fixer::Role) for as
//! long as it is the fixer, re-check commits included (see `fixer.rs`), and records its fix
//! commit once the commit is made. As a waiter it waits for the fix, takes the fix commit
//! through `retry.refresh`, and retries.
//!
//! Its parts: [`git`] runs `git commit` and relays its stderr; [`handover`] is the folder where
//! the hook hands its decision over; [`rounds`] acts on each decision until the commit is made.
//! This file is the plumbing between the two binaries that run it.

use std::ffi::OsString;

use crate::flows::context::{Context, LoadError};
use crate::os::{process, say, signals};
use crate::protocol::exit;

mod git;
pub(crate) mod handover;
mod rounds;

use git::{Ran, run_git};
use handover::Handover;
use rounds::Retry;

/// `commit-retry`'s first commit, all that a passing commit runs: no repository, no
/// configuration, no store is loaded, and the binary that runs it links none of them (every
/// commit pays for the wrapper's start). Anything but a clean commit goes on in the `buildlock`
/// binary beside this one, by exec (same process, same pid: the hook was told it), at [`resume`].
pub fn front(args: Vec<OsString>) -> i32 {
    signals::install();
    // The private temp folder; where it cannot be used (a symlink or someone else's folder in
    // its place, an unwritable TMPDIR), the repository's own, found by asking git (rare: it
    // costs a process). Without either the hook could not say what it decided.
    let handover = Handover::private().or_else(Handover::in_repository);
    // A fix that a killed run left staged and not committed apart: no first commit (its check
    // would pass on the fix and commit it mixed with the agent's work); the rounds complete it.
    let first = if crate::flows::commit::own_work::pending_here() {
        Ran::not_made()
    } else {
        match run_git(&args, handover.as_ref(), &[]) {
            Ok(first) => first,
            Err(code) => return code,
        }
    };
    if first.code == 0 {
        // A passing hook wrote no decision: nothing to remove.
        return exit::OK;
    }
    if let Some(signal) = signals::pending() {
        first.discard();
        return exit::signal(signal);
    }
    let buildlock = std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join("buildlock")))
        .filter(|b| b.is_file());
    // From here on a failure to go on is coordination failing (exit 70), never git's own code
    // (1 would read as "you are the fixer"). Elected, this process's end frees the role at once.
    let Some(buildlock) = buildlock else {
        first.discard();
        say::say(format!(
            "commit-retry: the commit failed (git exit {}), and the `buildlock` binary that \
             waits and retries is not beside commit-retry: reinstall buildlock (install.sh), \
             which puts pre-commit, commit-retry and buildlock in one folder (exit 70)",
            first.code
        ));
        return exit::COORDINATION;
    };
    let Ok(json) = serde_json::to_string(&first) else {
        first.discard();
        say::say(format!(
            "commit-retry: the commit failed (git exit {}), and its hand-over file's path {} \
             is not UTF-8: set TMPDIR to a plain path (exit 70)",
            first.code,
            first
                .decision
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ));
        return exit::COORDINATION;
    };
    // Still `commit-retry` to ps, top and pkill.
    let e = process::exec_as(
        std::process::Command::new(&buildlock)
            .arg(RESUME_ARG)
            .args(&args)
            .env(RESUME_VAR, json),
        "commit-retry",
    );
    first.discard();
    say::say(format!(
        "commit-retry: the commit failed (git exit {}); cannot run {} to wait and retry: {e} \
         (exit 70)",
        first.code,
        buildlock.display()
    ));
    exit::COORDINATION
}

/// The first argument with which commit-retry's [`front`] hands over to `buildlock`.
pub const RESUME_ARG: &str = "__commit-retry";
// What the first commit left ([`Ran`], as JSON), for [`resume`].
use crate::os::env::RETRY_FIRST_VAR as RESUME_VAR;

/// The rest of commit-retry, after a first commit that did not simply pass (see [`front`]).
pub fn resume(args: Vec<OsString>) -> i32 {
    signals::install();
    process::set_name(c"commit-retry");
    let first: Option<Ran> =
        crate::os::env::take_retry_first().and_then(|json| serde_json::from_str(&json).ok());
    let Some(first) = first else {
        say::say(format!(
            "`buildlock {RESUME_ARG}` is commit-retry's second half; run `git commit-retry …`"
        ));
        return exit::USAGE;
    };
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(LoadError::Config(e)) => {
            first.discard();
            say::say(format!("{e}"));
            return exit::CONFIG;
        }
        // Not a repository, or similar: git has said it already.
        Err(LoadError::Other(_)) => {
            first.discard();
            return first.code;
        }
    };
    let (handover, first) = match first.decision.as_ref().and_then(|d| d.parent()) {
        Some(dir) => (
            Handover {
                dir: dir.to_owned(),
            },
            Some(first.into_git_run()),
        ),
        // No private temp folder: hand over in the coordination dir, and commit again, this
        // time with the hook told where to say what it decided.
        None => (Handover::in_dir(ctx.home.run()), None),
    };
    // What killed runs left (hand-over files, index copies): swept here, never on a green commit.
    handover.remove_strays(&ctx.home.run());
    crate::flows::commit::own_work::remove_strays(&ctx.repo.common_dir);
    let mut retry = Retry::new(&ctx, args, handover);
    // A fix that a killed run started and did not commit apart: completed apart first.
    let first = match retry.complete_pending() {
        // The first commit's decision (if one was made) was read already: it goes.
        Ok(true) => None,
        Ok(false) => first,
        Err(e) => {
            say::warn(format!(
                "could not complete the fix a killed run left: {e:#}"
            ));
            first
        }
    };
    match retry.run(first) {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("commit-retry: {e:#}"));
            retry.give_up_role();
            exit::COORDINATION
        }
    }
}
