//! The claims guard: before the hook runs the check, the paths the commit changes are compared
//! with the live exclusive claims of other agents. A conflict costs no check run.
//!
//! Cost, in order (each step only when the one before found something):
//! 1. `claims.guard = false` or `BUILDLOCK=0`: nothing;
//! 2. nobody claims anything: one `stat` (the registry's `claimed` marker); the index is not
//!    opened. With `backend = "remote"` the claims are on the remote: one `ls-remote` (no
//!    registry ref: nobody claims anything), and a fetch of the registry commit only when it
//!    changed since this clone last read it;
//! 3. claims exist, but none is another agent's live exclusive claim: one small file read;
//! 4. otherwise: the index git is committing is compared with HEAD in process (`os/changes.rs`),
//!    only below the directories those claims can cover (`src/api` for `src/api/*.py`; the whole
//!    tree for `*.py`), and each changed path is matched against those claims.
//!
//! A guard that cannot do its job (an unreadable index, a remote that cannot be reached) warns
//! loudly that the commit was not checked against other agents' claims, records it in the
//! history, and lets the commit go on: the guard keeps agents apart, it never turns a
//! coordination failure into a refused commit (which, with the remote down, would block every
//! agent on every machine).

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::flows::claims::common as cl;
use crate::flows::commit::decision::{Decision, Verdict};
use crate::flows::context::Context;
use crate::os::time::{self, human, rfc3339};
use crate::os::{changes, env, process, say, signals};
use crate::protocol::claims::{Blocked, PathConflict, Request};
use crate::protocol::exit;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardOutcome {
    /// Nothing this commit changes is claimed by someone else.
    Clear,
    /// These changed paths are under other agents' live exclusive claims.
    Conflict(Vec<PathConflict>),
}

/// The guard's verdict for the commit being made (see the module header for its cost).
pub fn guard(ctx: &Context) -> Result<GuardOutcome> {
    if !ctx.config.claims_guard || !env::coordination_enabled() {
        return Ok(GuardOutcome::Clear);
    }
    let Some(reg) = ctx.claims.guard_read()? else {
        return Ok(GuardOutcome::Clear);
    };
    let (now, ttl) = (time::now(), cl::limits(ctx).ttl_ms());
    if !reg.others_claim(&ctx.agent, now, ttl) {
        return Ok(GuardOutcome::Clear);
    }
    let dirs = reg.guarded_dirs(&ctx.agent, now, ttl);
    let changed = changes::changed_paths(&ctx.repo, Some(&dirs))?;
    let conflicts = reg.guard(&ctx.agent, &changed, now, ttl);
    Ok(if conflicts.is_empty() {
        GuardOutcome::Clear
    } else {
        GuardOutcome::Conflict(conflicts)
    })
}

/// The guard against a fixed set of changed paths (while waiting: the commit does not change).
fn recheck(ctx: &Context, changed: &[String]) -> Result<Vec<PathConflict>> {
    let reg = ctx.claims.read()?;
    Ok(reg.guard(&ctx.agent, changed, time::now(), cl::limits(ctx).ttl_ms()))
}

/// How a wait for claims to be released ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardWait {
    /// Released or lapsed: the commit may go on.
    Clear,
    TimedOut(Vec<PathConflict>),
    Signal(i32),
    ParentGone,
}

/// Waits (within `limit`) until none of `changed` (paths of this commit) is claimed by someone
/// else. Wakes when the registry changes or a claim lapses; shows who holds what meanwhile. The
/// agent is listed as `blocked` in `buildlock agents` while it waits.
pub fn wait_release(
    ctx: &Context,
    changed: &[String],
    limit: Duration,
    parent: Option<u32>,
) -> Result<GuardWait> {
    signals::install();
    let store = &ctx.claims;
    let mut watch = store.listen();
    let mut conflicts = recheck(ctx, changed)?;
    if conflicts.is_empty() {
        return Ok(GuardWait::Clear);
    }
    let me = cl::who(ctx, cl::priority_or_default());
    let block = |on: Option<Blocked>| match store.apply(
        &Request::Blocked {
            who: me.clone(),
            on,
        },
        cl::limits(ctx),
    ) {
        Ok(applied) => cl::record(ctx, applied.events),
        Err(e) => say::warn(format!("could not record the wait in the registry: {e:#}")),
    };
    block(Some(blocked_on(&conflicts)));
    let start = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let end = loop {
        if let Some(n) = signals::pending() {
            break GuardWait::Signal(n);
        }
        if parent.is_some_and(|p| p != crate::os::process::parent_id()) {
            break GuardWait::ParentGone;
        }
        conflicts = recheck(ctx, changed)?;
        if conflicts.is_empty() {
            break GuardWait::Clear;
        }
        let waited = start.elapsed();
        if waited >= limit {
            break GuardWait::TimedOut(conflicts.clone());
        }
        let every = cl::progress_every();
        if last_progress.is_none_or(|t| t.elapsed() >= every) {
            last_progress = Some(Instant::now());
            let first = &conflicts[0];
            say::progress(format!(
                "waiting for `{}` to release `{}` ({} path(s) of this commit claimed; lapses by {}); waited {}, \
                 giving up in {}",
                say::inert(&first.agent),
                say::inert(&first.spec),
                conflicts.len(),
                rfc3339(first.until),
                human(waited),
                human(limit - waited)
            ));
        }
        let next_lapse = conflicts.iter().map(|c| c.until).min().unwrap_or(0);
        cl::nap(ctx, &mut watch, limit - waited, Some(next_lapse));
    };
    say::progress_done();
    block(None);
    Ok(end)
}

fn blocked_on(conflicts: &[PathConflict]) -> Blocked {
    Blocked {
        by: conflicts[0].agent.clone(),
        paths: conflicts.iter().map(|c| c.path.clone()).collect(),
        process: process::me(),
    }
}

/// Tells the agent what was refused and what to do: `waited`, after a wait that ran out;
/// `waiting`, before this very program waits (a plain `git commit` with `hook.wait`, or
/// commit-retry), so there is nothing for the agent to do next but let it.
pub fn tell(conflicts: &[PathConflict], waited: bool, waiting: bool) {
    say::headline(
        say::Tone::Wait,
        if waited {
            "this commit still changes paths another agent claimed exclusively; the check did not run".to_owned()
        } else {
            "this commit changes paths another agent claimed exclusively; the check did not run"
                .to_owned()
        },
    );
    let mut lines = Vec::new();
    for c in conflicts.iter().take(20) {
        lines.push(format!(
            "  {}  (claim `{}` by `{}`, until {} at the latest)",
            say::inert(&c.path),
            say::inert(&c.spec),
            say::inert(&c.agent),
            until(c.until)
        ));
    }
    if conflicts.len() > 20 {
        lines.push(format!("  … and {} more", conflicts.len() - 20));
    }
    say::say(lines.join("\n"));
    let holders: std::collections::BTreeSet<&str> =
        conflicts.iter().map(|c| c.agent.as_str()).collect();
    let holders: Vec<String> = holders
        .iter()
        .map(|h| format!("`{}`", say::inert(h)))
        .collect();
    if waiting {
        say::say(format!(
            "held by {}: released with `buildlock unclaim`/`buildlock done` or when the claims lapse; \
             `buildlock agents` shows who holds what\nbypass: `BUILDLOCK=0 git commit …` (no coordination) \
             or `git commit --no-verify` (no hook)",
            holders.join(", ")
        ));
        return;
    }
    say::say(format!(
        "next: `git commit-retry …` waits for {} to release them (`buildlock unclaim`/`buildlock done`) or for the \
         claims to lapse, then commits; or leave those paths out of this commit; `buildlock agents` shows who \
         holds what\nbypass: `BUILDLOCK=0 git commit …` (no coordination) or `git commit --no-verify` (no hook)",
        holders.join(", ")
    ));
}

fn until(at: u64) -> String {
    let now = time::now();
    format!(
        "{} (in {})",
        rfc3339(at),
        human(Duration::from_millis(at.saturating_sub(now)))
    )
}

/// The hook's call, before its check: `None` to go on; `Some(code)` to exit with it. A plain
/// `git commit` with `hook.wait = true` waits for the release within `coordination.wait`; under
/// commit-retry the hook hands the refusal over (`Verdict::Claimed`) and commit-retry waits.
pub fn in_hook(ctx: &Context, parent: u32) -> Option<i32> {
    let deadline = Instant::now() + ctx.config.wait;
    let mut told = false;
    loop {
        let conflicts = match guard(ctx) {
            Ok(GuardOutcome::Clear) => return None,
            Ok(GuardOutcome::Conflict(c)) => c,
            Err(e) => {
                unchecked(ctx, &e);
                return None;
            }
        };
        let under_retry = env::decision_file().is_some();
        if under_retry || !ctx.config.hook_wait {
            record_conflict(ctx, &conflicts);
            let mut d = Decision::new(Verdict::Claimed);
            d.fixer = Some(conflicts[0].agent.clone());
            d.claimed = conflicts.iter().map(|c| c.path.clone()).collect();
            d.hand_over();
            if !under_retry {
                tell(&conflicts, false, false);
            }
            return Some(exit::BLOCKED);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !told {
            told = true;
            record_conflict(ctx, &conflicts);
            tell(&conflicts, false, true);
            say::say(format!(
                "waiting up to {} for the claim to be released, then this commit goes on, or is refused if the paths are still claimed (Ctrl-C to stop)",
                human(left)
            ));
        }
        let paths: Vec<String> = conflicts.iter().map(|c| c.path.clone()).collect();
        match wait_release(ctx, &paths, left, Some(parent)) {
            // Released: look again (another claim may cover other paths of this commit).
            Ok(GuardWait::Clear) => {
                say::headline(say::Tone::Good, "released; going on with the commit");
            }
            Ok(GuardWait::TimedOut(c)) => {
                tell(&c, true, false);
                return Some(exit::BLOCKED);
            }
            Ok(GuardWait::Signal(n)) => return Some(exit::signal(n)),
            Ok(GuardWait::ParentGone) => return Some(exit::signal(signals::SIGHUP)),
            Err(e) => {
                say::warn(format!(
                    "the claims guard could not wait ({e:#}); going on without it"
                ));
                return None;
            }
        }
    }
}

/// The guard could not do its job: said loudly (the commit was not checked against anyone's
/// claims), recorded, and the commit goes on.
fn unchecked(ctx: &Context, e: &anyhow::Error) {
    say::warn(format!(
        "the claims guard could not do its job ({e:#}): this commit was NOT checked against other agents' \
         claims (kept on {}); going on without it. `buildlock claims` shows the claims once they can be read",
        ctx.claims.place()
    ));
    let _ = ctx
        .store
        .record(crate::store::Entry::from_json(serde_json::json!({
        "event": "guard_unchecked", "agent": ctx.agent, "reason": format!("{e:#}")})));
}

fn record_conflict(ctx: &Context, conflicts: &[PathConflict]) {
    let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
    let _ = ctx.store.record(crate::store::Entry::from_json(
        serde_json::json!({"event": "conflict",
        "agent": ctx.agent, "holder": conflicts[0].agent, "paths": paths, "by": "commit"}),
    ));
}

/// commit-retry's call after its hook refused on a claim (`d.claimed`: the paths): waits within
/// `coordination.wait`. `None`: released, commit again; `Some(code)`: exit with it.
pub fn retry_wait(ctx: &Context, d: &Decision) -> Option<i32> {
    let limit = ctx.config.wait;
    // commit-retry does not see the index its `git commit` used: the hook named the paths.
    let conflicts = match recheck(ctx, &d.claimed) {
        Ok(c) => c,
        Err(e) => {
            unchecked(ctx, &e);
            return None;
        }
    };
    if conflicts.is_empty() {
        // Released meanwhile: commit again.
        return None;
    }
    tell(&conflicts, false, true);
    say::say(format!(
        "commit-retry: waiting up to {} for the claim to be released, then committing again",
        human(limit)
    ));
    match wait_release(ctx, &d.claimed, limit, None) {
        Ok(GuardWait::Clear) => {
            say::headline(say::Tone::Good, "commit-retry: released; committing again");
            None
        }
        Ok(GuardWait::TimedOut(c)) => {
            tell(&c, true, false);
            say::say(format!(
                "commit-retry: still claimed after {} (exit 75)",
                human(limit)
            ));
            Some(exit::BLOCKED)
        }
        Ok(GuardWait::Signal(n)) => Some(exit::signal(n)),
        Ok(GuardWait::ParentGone) => Some(exit::signal(signals::SIGHUP)),
        Err(e) => {
            say::warn(format!("could not wait for the claim: {e:#}"));
            Some(exit::BLOCKED)
        }
    }
}
