//! `buildlock done` and `buildlock wait-for`: an agent says its work is finished; another waits
//! until it is (or gone).

use anyhow::Result;
use std::time::Instant;

use crate::flows::claims::commands::listing::agent_rows;
use crate::flows::claims::common::{
    duration_arg, limits, nap, priority_or_default, progress_every, record, ticked, usage, who,
};
use crate::flows::context::Context;
use crate::os::time::{self, Millis, human};
use crate::os::{say, signals};
use crate::protocol::claims::{self, RegistryOutcome, Request};
use crate::protocol::exit;
use crate::protocol::state::Status;
use crate::store::registry::ClaimsRegistry;

/// `buildlock done`: release every claim of this agent and mark it done.
pub fn done(ctx: &Context) -> Result<i32> {
    let applied = ctx.claims.apply(
        &Request::Done {
            who: who(ctx, priority_or_default()),
        },
        limits(ctx),
    )?;
    record(ctx, applied.events);
    let released = match applied.decision {
        RegistryOutcome::Done { released } => released,
        other => anyhow::bail!("unexpected answer to done: {other:?}"),
    };
    say::headline(
        say::Tone::Good,
        format!(
            "`{}` is done: released {released} claim(s); agents waiting for you (`buildlock wait-for {}`) go on now",
            say::inert(&ctx.agent),
            say::inert(&ctx.agent)
        ),
    );
    Ok(exit::OK)
}

/// `buildlock wait-for AGENT… [--timeout D]`: until each agent is done or gone (no sign of life
/// for `claims.ttl`). Default timeout: `coordination.wait`.
pub fn wait_for(ctx: &Context, names: &[String], timeout: Option<&str>) -> Result<i32> {
    signals::install();
    if names.is_empty() {
        return usage("wait-for needs at least one AGENT (as `buildlock agents` shows them)");
    }
    if let Some(bad) = names.iter().find(|n| n.trim().is_empty()) {
        return usage(format!(
            "wait-for: `{}` is not an agent name",
            say::inert(bad)
        ));
    }
    let limit = match timeout.map(|t| duration_arg("--timeout", t)) {
        None => ctx.config.wait,
        Some(Ok(d)) => d,
        Some(Err(e)) => return usage(e),
    };
    let reg = ctx.claims.as_ref();
    // A name never seen (a typo) would read as "gone" and let the caller go on at once.
    let known: Vec<String> = agent_rows(ctx)?.into_iter().map(|a| a.agent).collect();
    let history: std::collections::HashSet<String> = ctx
        .store
        .history()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.agent().map(str::to_owned))
        .collect();
    let reg_now = reg.read()?;
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !known.contains(n) && !history.contains(*n) && !reg_now.agents.contains_key(*n))
        .collect();
    if !unknown.is_empty() {
        say::say(format!(
            "wait-for: no agent named {} was ever seen here; nothing to wait for. Known agents: {}",
            ticked(&unknown),
            if known.is_empty() {
                "none yet".to_owned()
            } else {
                ticked(&known)
            }
        ));
        return Ok(exit::USAGE);
    }
    let mut watch = reg.listen();
    let start = Instant::now();
    let mut last_progress: Option<Instant> = None;
    loop {
        let (pending, next_gone) = still_running(ctx, reg, names)?;
        if pending.is_empty() {
            say::progress_done();
            say::say(format!(
                "{} done or gone after {}",
                ticked(names),
                human(start.elapsed())
            ));
            return Ok(exit::OK);
        }
        if let Some(n) = signals::pending() {
            say::progress_done();
            return Ok(exit::signal(n));
        }
        let waited = start.elapsed();
        if waited >= limit {
            say::progress_done();
            say::say(format!(
                "still running after {}: {} (exit 75); `buildlock agents` shows what they do",
                human(limit),
                pending.join(", ")
            ));
            return Ok(exit::BLOCKED);
        }
        let every = progress_every();
        if last_progress.is_none_or(|t| t.elapsed() >= every) {
            last_progress = Some(Instant::now());
            say::progress(format!(
                "waiting for {} to be done; waited {}, giving up in {}",
                pending.join(", "),
                human(waited),
                human(limit - waited)
            ));
        }
        nap(ctx, &mut watch, limit - waited, next_gone);
    }
}

/// The named agents still at work (described), and when the first of them will count as gone.
fn still_running(
    ctx: &Context,
    reg: &dyn ClaimsRegistry,
    names: &[String],
) -> Result<(Vec<String>, Option<Millis>)> {
    let mut r = reg.read()?;
    if reg.is_remote() {
        let here = ctx.registry.read();
        r.slots = here.slots;
        r.slot_queue = here.slot_queue;
    }
    let (now, ttl) = (time::now(), limits(ctx).ttl_ms());
    let keys = ctx.store.all().unwrap_or_default();
    let mut pending = Vec::new();
    let mut next_gone: Option<Millis> = None;
    for name in names {
        let fixing = keys.iter().any(|(_, s)| {
            s.status == Status::Fixing && s.fixer.as_ref().is_some_and(|f| &f.agent == name)
        });
        let holds = r.claims_of(name, now, ttl).count() > 0
            || r.claim_queue.iter().any(|w| &w.agent == name)
            || r.slots.iter().any(|h| &h.agent == name)
            || r.slot_queue.iter().any(|w| &w.agent == name);
        let (alive, gone_at) = match r.agents.get(name) {
            Some(a) if a.done && !holds => (false, None),
            Some(a) => {
                let at = a.last_seen.saturating_add(ttl);
                (at > now || holds, Some(at))
            }
            None => (holds, None),
        };
        if alive || fixing {
            let state = claims::agent_state(&r, name, fixing, false);
            pending.push(format!("`{}` ({state})", say::inert(name)));
            if let Some(at) = gone_at.filter(|_| !holds && !fixing) {
                next_gone = Some(next_gone.map_or(at, |n: Millis| n.min(at)));
            }
        }
    }
    Ok((pending, next_gone))
}
