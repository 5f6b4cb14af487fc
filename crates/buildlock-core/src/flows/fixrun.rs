//! Running the fix and the refresh for an elected fixer or a waiter, shared by commit-retry and
//! `buildlock ci`.
//!
//! - The fixer holds the key's fixer role for the whole fix (with the local backend the kernel
//!   frees it when the process dies, so death is seen at once), renews its lease from a heartbeat
//!   thread, stops a predecessor's orphaned fix before starting its own, and stops its fix when
//!   another agent has taken the role over (fenced).
//! - The fix and the refresh run with `sh -c` at the work tree root in their own process group
//!   (see `os::check`), bounded by `check_timeout`, with the contract's environment.

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::flows::context::Context;
use crate::flows::lease::Heartbeat;
use crate::os::check::{self, Ending};
use crate::os::{process, say, time};
use crate::protocol::exit;
use crate::protocol::state::{Event, Process};
use crate::store::{FixerHold, Read};

/// What a fix run or a refresh is about.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub key: String,
    pub base: String,
    pub generation: u64,
    /// 1 for the first fix run of this election.
    pub attempt: u32,
    pub signature: Option<String>,
    pub log: Option<PathBuf>,
}

/// What this process holds while it is the fixer.
pub struct FixerRole {
    pub generation: u64,
    _hold: Option<FixerHold>,
}

pub enum FixEnd {
    Done,
    TakenOver,
    Signal(i32),
}

/// The contract's environment for `fix.command` and `retry.refresh`.
pub fn job_env(ctx: &Context, job: &Job) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("BUILDLOCK_KEY".to_owned(), job.key.clone().into()),
        (
            "BUILDLOCK_SIGNATURE".to_owned(),
            job.signature.clone().unwrap_or_default().into(),
        ),
        (
            "BUILDLOCK_GENERATION".to_owned(),
            job.generation.to_string().into(),
        ),
        (
            "BUILDLOCK_ATTEMPT".to_owned(),
            job.attempt.to_string().into(),
        ),
        ("BUILDLOCK_AGENT".to_owned(), ctx.agent.clone().into()),
    ];
    if let Some(log) = &job.log {
        env.push(("BUILDLOCK_LOG".to_owned(), log.clone().into_os_string()));
    }
    env
}

/// Runs `command` with `sh -c` at the work tree root in its own process group, echoed, bounded
/// by `check_timeout`.
pub fn shell(
    ctx: &Context,
    command: &str,
    env: Vec<(String, OsString)>,
    on_start: &mut dyn FnMut(u32),
    cancel: &dyn Fn() -> bool,
) -> Result<check::Run> {
    let options = check::Options {
        dir: &ctx.repo.worktree,
        timeout: ctx.config.check_timeout,
        echo: true,
        env,
        parent: None,
        on_start,
        cancel,
    };
    Ok(check::run(
        &check::Command::Shell(command.to_owned()),
        options,
    )?)
}

/// Takes the key's fixer role (so that our death is seen at once where the store can see it),
/// stops what is left of a predecessor's fix, and registers as the fixer.
pub fn take_role(ctx: &Context, job: &Job) -> Result<FixerRole> {
    // A waiter probing the lock holds it for a moment: try for a short while.
    let hold = ctx.store.hold_fixer(&job.key, Duration::from_secs(2))?;
    if hold.is_none() {
        say::warn(
            "the fixer lock is held by the previous fixer (a stopped process?); fixing without it, \
             on the lease alone",
        );
    }
    if let Read::Found { state, .. } = ctx.store.read(&job.key) {
        if let Some(orphan) = &state.orphan_fix {
            if process::stop_group(orphan, Duration::from_secs(2)) {
                say::say(format!(
                    "stopped the previous fixer's fix (pid {} on {})",
                    orphan.pid, orphan.host
                ));
            }
        }
    }
    if hold.is_some() {
        let event = Event::Register {
            agent: ctx.agent.clone(),
            generation: job.generation,
            fix_process: None,
        };
        ctx.store
            .apply(&job.key, &job.base, &event, ctx.policy(), None)?;
    }
    Ok(FixerRole {
        generation: job.generation,
        _hold: hold,
    })
}

/// Runs `fix.command` as the fixer of `job`, with the heartbeat running; `who` names the program
/// in what it says.
pub fn run_fix(ctx: &Context, command: &str, job: &Job, who: &str) -> Result<FixEnd> {
    say::headline(
        say::Tone::Bad,
        format!(
            "{who}: you are the fixer; running the fix (attempt {} of {}): {command}",
            job.attempt, ctx.config.max_fix_attempts
        ),
    );
    let heartbeat = Heartbeat::start(
        ctx.store.clone(),
        job.key.clone(),
        ctx.agent.clone(),
        job.generation,
        ctx.config.stale_after,
    );
    let store = &ctx.store;
    let agent = ctx.agent.clone();
    let policy = ctx.policy();
    let mut on_start = |pgid: u32| {
        let fix_process = Process {
            pid: pgid,
            host: process::hostname(),
            start: process::start_time(pgid),
        };
        let event = Event::Register {
            agent: agent.clone(),
            generation: job.generation,
            fix_process: Some(fix_process),
        };
        if let Err(e) = store.apply(&job.key, &job.base, &event, policy, None) {
            say::warn(format!("could not record the fix process: {e:#}"));
        }
        let _ = store.record(serde_json::json!({"event": "fix_started", "key": job.key,
            "agent": agent, "generation": job.generation, "attempt": job.attempt}));
        crate::os::fault::point("fix");
    };
    let run = shell(ctx, command, job_env(ctx, job), &mut on_start, &|| {
        heartbeat.fenced()
    })?;
    let taken_over = heartbeat.fenced();
    drop(heartbeat);
    let _ = store.record(serde_json::json!({"event": "fix_finished", "key": job.key,
        "agent": ctx.agent, "generation": job.generation, "attempt": job.attempt,
        "ok": run.ending == Ending::Passed, "took_ms": run.took.as_millis() as u64}));
    Ok(match run.ending {
        Ending::Signal(n) => FixEnd::Signal(n),
        _ if taken_over => FixEnd::TakenOver,
        Ending::Passed => {
            say::say(format!(
                "the fix finished in {}; checking again",
                time::human(run.took)
            ));
            FixEnd::Done
        }
        other => {
            say::say(format!("the fix ended with {other:?}; checking again"));
            FixEnd::Done
        }
    })
}

/// The fix a waiter takes: the fix commit and, with the remote backend, a ref that holds it.
#[derive(Clone, Debug, Default)]
pub struct FixHandle {
    pub commit: Option<String>,
    pub reference: Option<String>,
}

/// Runs `retry.refresh` (if set) after a fix; `Some(code)` when it failed.
pub fn refresh(ctx: &Context, job: &Job, fix: &FixHandle, who: &str) -> Result<Option<i32>> {
    let Some(refresh) = &ctx.config.retry_refresh else {
        return Ok(None);
    };
    say::say(format!("{who}: refreshing before the retry: {refresh}"));
    let mut env = job_env(ctx, job);
    if let Some(c) = &fix.commit {
        env.push(("BUILDLOCK_FIX_COMMIT".to_owned(), c.into()));
    }
    if let Some(r) = &fix.reference {
        env.push(("BUILDLOCK_FIX_REF".to_owned(), r.into()));
    }
    let run = shell(ctx, refresh, env, &mut |_| {}, &|| false)?;
    Ok(match run.ending {
        Ending::Passed => None,
        Ending::Signal(n) => Some(exit::signal(n)),
        other => {
            say::say(format!(
                "{who}: `retry.refresh` failed ({other:?}); fix what it reports, then run it again"
            ));
            Some(exit::BLOCKED)
        }
    })
}
