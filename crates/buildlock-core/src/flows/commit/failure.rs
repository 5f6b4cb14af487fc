//! The failure step that the hook and `buildlock ci` share: a failed check becomes a signature
//! and a failure log, and one step of the store under the election lock decides who fixes.
//!
//! What differs between the two callers is given, never guessed: the key (the hook's is the
//! failure's own; a `buildlock ci` fixer keeps the key it was elected for), who holds the role
//! while the agent waits (`holder`, `elector`) and when to stop waiting for the lock (`stop`).
//! Telling the agent what was decided is the caller's.

use anyhow::Result;
use std::path::PathBuf;

use crate::flows::commit::{fixcommit, fixer};
use crate::flows::context::Context;
use crate::os::process::Process;
use crate::os::say;
use crate::protocol::state::{Event, Outcome, Status};
use crate::protocol::{key, signature};
use crate::store::{Applied, BaseView};

/// A failed check, as the caller knows it.
pub struct Failure<'a> {
    /// What the check printed.
    pub output: &'a [u8],
    pub base: &'a str,
    /// The key to record the failure under; `None`: the failure's own key in `base`.
    pub key: Option<String>,
    /// The base as read before the check ran.
    pub view: &'a BaseView,
    /// The pass counter read before the check, to judge the failure stale.
    pub passes_seen: Option<u64>,
    /// The fixer lease a wait saw silent, if it did.
    pub seen_silent: Option<(u64, u64)>,
    pub holder: Option<u32>,
    pub elector: Option<Process>,
}

/// The failure as recorded, and the store's step.
pub struct Recorded {
    pub key: String,
    pub signature: String,
    /// The failure log, unless it could not be written.
    pub log: Option<PathBuf>,
    pub applied: Applied,
}

/// Records the failure: signature, log, the last fix of this failure when HEAD lacks it, and the
/// store's step. The log is written whatever the step decides (a stale failure's is the caller's
/// to remove).
pub fn record(ctx: &Context, f: Failure<'_>, stop: &dyn Fn() -> bool) -> Result<Recorded> {
    let sig = signature::signature(f.output, &ctx.failure_places());
    let log = match ctx.home.write_log(&ctx.agent, f.output) {
        Ok(log) => Some(log),
        Err(e) => {
            say::warn(format!("{e:#}; going on without a failure log"));
            None
        }
    };
    let key = f
        .key
        .unwrap_or_else(|| key::for_failure(f.base, ctx.config.matching, &sig));
    // The last fix of this failure, when our HEAD does not have it.
    let lacks_fix = f
        .view
        .keys
        .iter()
        .find(|s| s.key == key && s.status == Status::Passing)
        .and_then(|s| s.fix.as_ref())
        .filter(|fix| fix.fixes(&sig))
        // git writes the fix commit just after the fixer's hook returns: a check that
        // failed right after the fix may have to wait a moment for it.
        .and_then(|fix| fixcommit::await_commit(fix, fixcommit::GRACE, stop))
        .and_then(|commit| fixcommit::lacking(&ctx.repo, &commit));
    let event = |lacks_fix| Event::Failed {
        agent: ctx.agent(),
        signature: sig.clone(),
        log: log.clone().unwrap_or_default(),
        passes_seen: f.passes_seen,
        lacks_fix,
        holder: f.holder,
        elector: f.elector.clone(),
    };
    let looked = lacks_fix.is_some();
    let mut applied = ctx.store.apply(
        &key,
        f.base,
        &event(lacks_fix),
        ctx.policy(),
        f.seen_silent,
        stop,
    )?;
    // Stale: the key was fixed while the check ran. When that fix's commit is one this HEAD
    // lacks, running the check again would only fail again: the fix is handed over now.
    if applied.outcome == Outcome::Stale && !looked {
        let lacks_fix = Some(&applied.after)
            .filter(|s| s.status == Status::Passing)
            .and_then(|s| s.fix.as_ref())
            .filter(|fix| fix.fixes(&sig))
            .and_then(|fix| fixcommit::to_take(&ctx.repo, ctx.store.as_ref(), &key, fix, stop));
        if lacks_fix.is_some() {
            applied = ctx.store.apply(
                &key,
                f.base,
                &event(lacks_fix),
                ctx.policy(),
                f.seen_silent,
                stop,
            )?;
        }
    }
    // A takeover stops the fix its predecessor left running at once, whichever program took
    // over: a plain `git commit` may never run a fix of its own to stop it.
    if matches!(applied.outcome, Outcome::Elected { .. }) {
        if let Err(e) = fixer::stop_orphaned_fixes(ctx, &applied.after) {
            say::warn(format!("{e:#}"));
        }
    }
    Ok(Recorded {
        key,
        signature: sig,
        log,
        applied,
    })
}
