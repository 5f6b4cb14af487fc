//! The operator's commands: `status`, `release`, `reset`, `log` (`doctor` is in `doctor.rs`).
//!
//! Reports go to stdout through [`out!`](crate::out), which stops a command quietly when the
//! reader went away (`buildlock log | head -1`); messages about what was done go to stderr.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

use crate::flows::context::Context;
use crate::os::say;
use crate::os::time::{self, human, rfc3339};
use crate::out;
use crate::protocol::exit;
use crate::protocol::state::{Event, KeyState, Liveness, Observed, Outcome, Status, liveness};
use crate::store::StoreError;
use crate::store::{Read, Totals};

pub(crate) fn fixer_liveness(ctx: &Context, s: &KeyState) -> Option<Liveness> {
    let f = s.fixer.as_ref()?;
    let seen = Observed {
        now: time::now(),
        stale_after: ctx.config.stale_after.as_millis() as u64,
        max_fix_attempts: ctx.config.max_fix_attempts,
        max_fix_time: if ctx.store.bounds_fix_time() {
            crate::store::millis(ctx.config.max_fix_time)
        } else {
            time::Millis::MAX
        },
        generation_floor: 0,
        passes: 0,
        fixer_lock_free: ctx.store.fixer_gone(&s.key, s.generation),
        fixer_running: ctx.store.fixer_running(&s.key, s.generation),
        seen_silent: None,
        elector_dead: crate::store::elector_dead(f),
    };
    Some(liveness(f, s.generation, &seen))
}

/// The agents still waiting: a waiter whose process is gone (killed while waiting) is not. One
/// that cannot be seen from here (another host or container) is shown.
fn live_waiters(s: &KeyState) -> Vec<String> {
    use crate::os::process::{Seen, judge};
    s.waiters
        .iter()
        .filter(|w| judge(&w.process()) != Seen::Dead)
        .map(|w| w.agent.clone())
        .collect()
}

/// The contract's `status --json` document.
pub fn status_json(ctx: &Context) -> Result<Value, StoreError> {
    let keys: Vec<Value> = ctx
        .store
        .all()?
        .into_iter()
        .map(|(base, s)| {
            let live = fixer_liveness(ctx, &s);
            let fixer = s.fixer.as_ref().map(|f| {
                json!({"agent": f.agent, "pid": f.pid, "host": f.host, "since": rfc3339(f.since),
                       "heartbeat": rfc3339(f.heartbeat), "attempts": f.attempts,
                       "live": matches!(live, Some(Liveness::Live | Liveness::Overtime)),
                       "liveness": live,
                       "registered": f.registered,
                       // Announced but not started yet (pid 0): no process to name.
                       "fix_pid": f.fix_process.as_ref().map(|p| p.pid).filter(|&pid| pid != 0)})
            });
            let fix_commit = s.fix.as_ref().and_then(crate::flows::commit::fixcommit::resolve);
            json!({"key": s.key, "base": base, "status": s.status.as_str(), "generation": s.generation,
                   "fixer": fixer, "signature": s.signature, "log": s.log,
                   "waiters": live_waiters(&s), "changed": rfc3339(s.changed),
                   "fixed_by": s.fixed_by, "fix_commit": fix_commit})
        })
        .collect();
    let t = ctx.store.totals()?;
    Ok(json!({
        "repository": ctx.repo.worktree,
        "backend": ctx.store.backend(),
        "coordination_dir": ctx.home.path(),
        "state": ctx.store.location(),
        "agent": ctx.agent,
        "keys": keys,
        "totals": totals_json(&t, ctx.config.fix_cost),
    }))
}

fn totals_json(t: &Totals, cost: f64) -> Value {
    json!({"failures": t.failures, "elections": t.elections, "takeovers": t.takeovers, "waits": t.waits,
           "fixes": t.fixes, "fix_runs": t.fix_runs, "fix_runs_avoided": t.fix_runs_avoided,
           "saved": t.fix_runs_avoided as f64 * cost, "generation": t.generation})
}

pub fn status(ctx: &Context, as_json: bool) -> Result<i32> {
    if as_json {
        out!("{}", serde_json::to_string_pretty(&status_json(ctx)?)?)?;
        return Ok(exit::OK);
    }
    out!("repository  {}", ctx.repo.worktree.display())?;
    out!(
        "state       {} ({})",
        ctx.store.location(),
        ctx.store.backend()
    )?;
    let keys = ctx.store.all()?;
    let open: Vec<&KeyState> = keys
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.status != Status::Passing)
        .collect();
    if open.is_empty() {
        out!("build       passing: nobody is fixing anything")?;
    }
    for s in &open {
        out!("")?;
        out!(
            "key `{}`: {} (generation {})",
            say::inert(&s.key),
            s.status.as_str().to_uppercase(),
            s.generation
        )?;
        if let Some(f) = &s.fixer {
            let ago = |ms: u64| human(Duration::from_millis(time::now().saturating_sub(ms)));
            let live = match fixer_liveness(ctx, s) {
                Some(Liveness::Live) => "live".to_owned(),
                Some(Liveness::Stale) => "STALE: the next failing agent takes over".to_owned(),
                Some(Liveness::Dead) => {
                    "DEAD: the next failing agent takes over at once".to_owned()
                }
                Some(Liveness::Overtime) => format!(
                    "OVERTIME: alive, but it has held the key for longer than \
                     coordination.max_fix_time ({}): the next failing agent takes over",
                    human(ctx.config.max_fix_time)
                ),
                None => "-".to_owned(),
            };
            let (agent, host) = (say::inert(&f.agent), say::inert(&f.host));
            match f.pid {
                Some(pid) => out!("  fixer     {agent} (pid {pid} on {host})")?,
                None => out!(
                    "  fixer     {agent} on {host} (fixing by hand: no process holds the role)"
                )?,
            }
            out!(
                "  since     {} ({} ago); last sign of life {} ago; {live}",
                rfc3339(f.since),
                ago(f.since),
                ago(f.heartbeat)
            )?;
            out!(
                "  attempts  {} failed re-check(s) of {}",
                f.attempts,
                ctx.config.max_fix_attempts
            )?;
        } else {
            out!("  nobody is fixing: the next agent whose check fails becomes the fixer")?;
        }
        let waiters = live_waiters(s);
        if !waiters.is_empty() {
            let waiters: Vec<String> = waiters.iter().map(|w| say::inert(w)).collect();
            out!("  waiting   {}", waiters.join(", "))?;
        }
        if let Some(log) = &s.log {
            out!("  log       {}", say::inert(&log.display().to_string()))?;
        }
    }
    totals(ctx)?;
    Ok(exit::OK)
}

/// The counters, each with what it counts (`protocol/ledger.rs` and docs/operating.md define the same).
fn totals(ctx: &Context) -> Result<()> {
    let t = ctx.store.totals()?;
    let plural = |count: u64, one: &str, many: &str| {
        format!("{count:>5}  {}", if count == 1 { one } else { many })
    };
    out!("")?;
    out!("counted     by every agent of this repository, since its coordination dir was created")?;
    let lines = [
        plural(t.failures, "failed check", "failed checks"),
        format!(
            "{}, {} of them taking over from a dead or silent fixer",
            plural(t.elections, "fixer elected", "fixers elected"),
            t.takeovers
        ),
        plural(
            t.fixes,
            "breakage fixed by its fixer",
            "breakages fixed by their fixer",
        ),
        plural(
            t.waits,
            "agent told to wait for a fixer (once per agent and breakage)",
            "agents told to wait for a fixer (once per agent and breakage)",
        ),
        plural(
            t.fix_runs,
            "run of fix.command (by commit-retry or `buildlock ci`)",
            "runs of fix.command (by commit-retry or `buildlock ci`)",
        ),
        plural(
            t.fix_runs_avoided,
            "duplicate fix avoided: an agent hit a breakage and its fixer fixed it",
            "duplicate fixes avoided: agents hit a breakage and its fixer fixed it",
        ),
    ];
    for line in lines {
        out!("  {line}")?;
    }
    if ctx.config.fix_cost > 0.0 {
        out!(
            "saved       {:.2} = {} duplicate fix(es) avoided x fix.cost {}",
            t.fix_runs_avoided as f64 * ctx.config.fix_cost,
            t.fix_runs_avoided,
            ctx.config.fix_cost
        )?;
    } else {
        out!(
            "saved       set fix.cost (what one fix costs you) to see what the avoided fixes saved"
        )?;
    }
    Ok(())
}

/// `buildlock release`: this agent gives up the fixer role on every key it fixes.
pub fn release(ctx: &Context) -> Result<i32> {
    let all = ctx.store.all()?;
    let mine: Vec<(String, KeyState)> = all
        .iter()
        .filter(|(_, s)| {
            s.status == Status::Fixing && s.fixer.as_ref().is_some_and(|f| f.agent == ctx.agent)
        })
        .cloned()
        .collect();
    if mine.is_empty() {
        let others: Vec<String> = all
            .into_iter()
            .filter_map(|(_, s)| {
                s.fixer.map(|f| {
                    format!(
                        "`{}` fixes key `{}`",
                        say::inert(&f.agent),
                        say::inert(&s.key)
                    )
                })
            })
            .collect();
        say::say(format!(
            "you (`{}`) are not the fixer of anything{}; nothing to release (set BUILDLOCK_AGENT if you are a \
             different agent; `buildlock reset` forces the state back to passing)",
            say::inert(&ctx.agent),
            if others.is_empty() {
                String::new()
            } else {
                format!(": {}", others.join(", "))
            }
        ));
        return Ok(exit::FIXER);
    }
    for (base, s) in mine {
        let applied = ctx.store.apply(
            &s.key,
            &base,
            &Event::Release {
                agent: ctx.agent.clone(),
            },
            ctx.policy(),
            None,
            &|| false,
        )?;
        if applied.outcome == Outcome::Released {
            say::say(format!(
                "released key `{}`: it is broken with nobody fixing; the next agent whose check fails becomes the fixer",
                say::inert(&s.key)
            ));
        }
    }
    Ok(exit::OK)
}

/// `buildlock reset [KEY]`: force keys back to passing (every key that is not passing, or KEY).
/// An unknown KEY is an error that lists the keys on record, and changes nothing.
pub fn reset(ctx: &Context, key: Option<&str>) -> Result<i32> {
    let all = ctx.store.all()?;
    // A damaged state file is not "on record" (it cannot be read) but is broken: reset repairs it.
    let damaged = |k: &str| matches!(ctx.store.read(k), Read::Damaged(_));
    let base_of = |k: &str| k.split_once('#').map_or(k, |(b, _)| b).to_owned();
    let targets: Vec<(String, String)> = match key {
        Some(k) => match all.iter().find(|(_, s)| s.key == k) {
            Some((base, s)) => vec![(base.clone(), s.key.clone())],
            None if damaged(k) => vec![(base_of(k), k.to_owned())],
            None => {
                let known: Vec<String> = all
                    .iter()
                    .map(|(_, s)| format!("`{}` ({})", say::inert(&s.key), s.status.as_str()))
                    .collect();
                say::say(format!(
                    "unknown key `{}`: nothing was changed; {}",
                    say::inert(k),
                    if known.is_empty() {
                        "no key has a state yet (no check has failed here)".to_owned()
                    } else {
                        format!(
                            "the keys on record are {}; `buildlock reset` with no key resets every key that is not passing",
                            known.join(", ")
                        )
                    }
                ));
                return Ok(exit::FIXER);
            }
        },
        None => {
            let mut open: Vec<(String, String)> = all
                .iter()
                // Passing keys with a fix on record too: a reset forgets fixes, so that nobody is
                // handed an old fix commit again.
                .filter(|(_, s)| s.status != Status::Passing || s.fix.is_some())
                .map(|(b, s)| (b.clone(), s.key.clone()))
                .collect();
            let base = ctx.base();
            if open.is_empty() && damaged(&base) {
                open.push((base.clone(), base));
            }
            open
        }
    };
    if targets.is_empty() {
        say::say(format!(
            "nothing to reset: every key is passing, with no fix on record ({} on record)",
            all.len()
        ));
        return Ok(exit::OK);
    }
    for (base, key) in targets {
        let reset = Event::Reset {
            agent: ctx.agent.clone(),
        };
        let applied = ctx
            .store
            .apply(&key, &base, &reset, ctx.policy(), None, &|| false)?;
        say::say(format!(
            "reset key `{}`: {} -> passing (generation {}); a fixer still at work can no longer mark anything",
            say::inert(&key),
            applied.before.status.as_str(),
            applied.after.generation
        ));
    }
    Ok(exit::OK)
}

/// `buildlock log [--json] [-n N] [--agent AGENT]`: the last `n` events (of `agent` only, when
/// given: the events it caused, as their `agent` field names it).
pub fn log(ctx: &Context, as_json: bool, n: usize, agent: Option<&str>) -> Result<i32> {
    let history: Vec<Value> = ctx
        .store
        .history()?
        .into_iter()
        .filter(|e| agent.is_none() || e.agent() == agent)
        .map(Value::from)
        .collect();
    let shown = &history[history.len().saturating_sub(n)..];
    // The agent column fits the longest id shown (default ids are `<host>:<work tree path>`).
    let agent_width = shown
        .iter()
        .filter_map(|e| e.get("agent").and_then(Value::as_str))
        .map(|a| say::inert(a).chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    for e in shown {
        if as_json {
            out!("{}", serde_json::to_string(e)?)?;
            continue;
        }
        // Every name in the history is shown inert: an old or hostile writer may have put
        // anything there.
        let s = |k: &str| say::inert(e.get(k).and_then(Value::as_str).unwrap_or(""));
        let g = e
            .get("generation")
            .and_then(Value::as_u64)
            .map(|g| format!(" gen {g}"))
            .unwrap_or_default();
        let detail = match s("event").as_str() {
            "failed" => format!(
                "check failed{}",
                e["log"]
                    .as_str()
                    .map(|l| format!(", log {}", say::inert(l)))
                    .unwrap_or_default()
            ),
            "elected" => "elected fixer".to_owned(),
            "takeover" => format!("took over from `{}` ({})", s("from"), s("reason")),
            "waiting" => format!("waits for `{}`", s("fixer")),
            "fixed" if e["recovered"] == true => "check passes: build passing again".to_owned(),
            "fixed" => format!(
                "fixed the build{}{}",
                e["took_ms"]
                    .as_u64()
                    .map(|ms| format!(" in {}", human(Duration::from_millis(ms))))
                    .unwrap_or_default(),
                e["fix_commit"]
                    .as_str()
                    .map(|c| format!(", commit {}", short(c)))
                    .unwrap_or_default()
            ),
            "gave_up" => format!("gave the role up after {} failed re-checks", e["attempts"]),
            "released" => "released the role".to_owned(),
            "reset" => format!("state reset (was {})", s("was")),
            "fix_started" => format!("fix started (attempt {})", e["attempt"]),
            "fix_finished" => format!(
                "fix finished ({}, {})",
                if e["ok"] == true { "ok" } else { "failed" },
                human(Duration::from_millis(e["took_ms"].as_u64().unwrap_or(0)))
            ),
            "stale" => "its failure predates the fix: checking again".to_owned(),
            "take_fix" => format!(
                "told to take `{}`'s fix commit {}",
                s("fixer"),
                short(&s("commit"))
            ),
            "fix_commit" => format!("the fix is commit {}", short(&s("commit"))),
            "stopped_waiting" => "stopped waiting".to_owned(),
            "damaged" => format!("state file was unreadable ({}), rewritten", s("reason")),
            // Claims events: claim, release, lapse, done, conflict.
            other => crate::flows::claims::commands::log_detail(other, e),
        };
        let agent = if s("agent").is_empty() {
            "-".to_owned()
        } else {
            s("agent")
        };
        // Claims events have no key.
        let key = match s("key").as_str() {
            "" => String::new(),
            k => format!("key `{k}`{g}: "),
        };
        out!(
            "{}  {:<12} {:<agent_width$} {key}{detail}",
            s("time"),
            s("event"),
            agent,
        )?;
    }
    if history.is_empty() && n > 0 && !as_json {
        match agent {
            Some(a) => out!(
                "no events of agent `{}` ({})",
                say::inert(a),
                ctx.store.location()
            )?,
            None => out!("no events yet ({})", ctx.store.location())?,
        }
    }
    Ok(exit::OK)
}

/// The sibling binary `name` next to the running one.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing next to {}: build all three binaries (`cargo build`)",
            name,
            me.display()
        );
    }
    Ok(path)
}

/// A commit id as people read it: its first 12 characters, shown inert (the history may hold
/// anything; a byte slice would panic inside a character).
fn short(commit: &str) -> String {
    say::inert(&commit.chars().take(12).collect::<String>())
}
