//! The operator's commands: `status`, `release`, `reset`, `log`, `doctor`.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

use crate::flows::context::Context;
use crate::os::lock;
use crate::os::say;
use crate::os::time::{self, human, rfc3339};
use crate::protocol::exit;
use crate::protocol::state::{Event, KeyState, Liveness, Observed, Outcome, Status, liveness};
use crate::store::Totals;

fn fixer_liveness(ctx: &Context, s: &KeyState) -> Option<Liveness> {
    let f = s.fixer.as_ref()?;
    let seen = Observed {
        now: time::now(),
        stale_after: ctx.config.stale_after.as_millis() as u64,
        max_fix_attempts: ctx.config.max_fix_attempts,
        generation_floor: 0,
        passes: 0,
        fixer_lock_free: ctx.store.fixer_gone(&s.key, s.generation),
        seen_silent: None,
    };
    Some(liveness(f, s.generation, &seen))
}

/// The agents still waiting: a waiter whose process is gone (killed while waiting) is not.
fn live_waiters(s: &KeyState) -> Vec<String> {
    let host = crate::os::process::hostname();
    s.waiters
        .iter()
        .filter(|w| w.host != host || crate::os::process::alive(w.pid))
        .map(|w| w.agent.clone())
        .collect()
}

/// The contract's `status --json` document.
pub fn status_json(ctx: &Context) -> Value {
    let keys: Vec<Value> = ctx
        .store
        .all()
        .into_iter()
        .map(|(base, s)| {
            let live = fixer_liveness(ctx, &s);
            let fixer = s.fixer.as_ref().map(|f| {
                json!({"agent": f.agent, "pid": f.pid, "host": f.host, "since": rfc3339(f.since),
                       "heartbeat": rfc3339(f.heartbeat), "attempts": f.attempts,
                       "live": live == Some(Liveness::Live), "liveness": live,
                       "registered": f.registered,
                       "fix_pid": f.fix_process.as_ref().map(|p| p.pid)})
            });
            let fix_commit = s.fix.as_ref().and_then(crate::flows::fixcommit::resolve);
            json!({"key": s.key, "base": base, "status": s.status.as_str(), "generation": s.generation,
                   "fixer": fixer, "signature": s.signature, "log": s.log,
                   "waiters": live_waiters(&s), "changed": rfc3339(s.changed),
                   "fixed_by": s.fixed_by, "fix_commit": fix_commit})
        })
        .collect();
    let t = ctx.store.totals();
    json!({
        "repository": ctx.repo.worktree,
        "backend": ctx.store.backend(),
        "coordination_dir": ctx.home,
        "state": ctx.store.location(),
        "agent": ctx.agent,
        "keys": keys,
        "totals": totals_json(&t, ctx.config.fix_cost),
    })
}

fn totals_json(t: &Totals, cost: f64) -> Value {
    json!({"failures": t.failures, "elections": t.elections, "takeovers": t.takeovers, "waits": t.waits,
           "fixes": t.fixes, "fix_runs": t.fix_runs, "fix_runs_avoided": t.fix_runs_avoided,
           "saved": t.fix_runs_avoided as f64 * cost, "generation": t.generation})
}

pub fn status(ctx: &Context, as_json: bool) -> Result<i32> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&status_json(ctx))?);
        return Ok(exit::OK);
    }
    println!("repository  {}", ctx.repo.worktree.display());
    println!(
        "state       {} ({})",
        ctx.store.location(),
        ctx.store.backend()
    );
    let keys = ctx.store.all();
    let open: Vec<&KeyState> = keys
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.status != Status::Passing)
        .collect();
    if open.is_empty() {
        println!("build       passing: nobody is fixing anything");
    }
    for s in &open {
        println!();
        println!(
            "key `{}`: {} (generation {})",
            s.key,
            s.status.as_str().to_uppercase(),
            s.generation
        );
        if let Some(f) = &s.fixer {
            let ago = |ms: u64| human(Duration::from_millis(time::now().saturating_sub(ms)));
            let live = match fixer_liveness(ctx, s) {
                Some(Liveness::Live) => "live".to_owned(),
                Some(Liveness::Stale) => "STALE: the next failing agent takes over".to_owned(),
                Some(Liveness::Dead) => {
                    "DEAD: the next failing agent takes over at once".to_owned()
                }
                None => "-".to_owned(),
            };
            match f.pid {
                Some(pid) => println!("  fixer     {} (pid {pid} on {})", f.agent, f.host),
                None => println!(
                    "  fixer     {} on {} (fixing by hand: no process holds the role)",
                    f.agent, f.host
                ),
            }
            println!(
                "  since     {} ({} ago); last sign of life {} ago; {live}",
                rfc3339(f.since),
                ago(f.since),
                ago(f.heartbeat)
            );
            println!(
                "  attempts  {} failed re-check(s) of {}",
                f.attempts, ctx.config.max_fix_attempts
            );
        } else {
            println!("  nobody is fixing: the next agent whose check fails becomes the fixer");
        }
        let waiters = live_waiters(s);
        if !waiters.is_empty() {
            println!("  waiting   {}", waiters.join(", "));
        }
        if let Some(log) = &s.log {
            println!("  log       {}", log.display());
        }
    }
    let t = ctx.store.totals();
    println!();
    let n = |count: u64, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    println!(
        "totals      {}, {} ({}), {}, {}",
        n(t.failures, "failure", "failures"),
        n(t.elections, "election", "elections"),
        n(t.takeovers, "takeover", "takeovers"),
        n(t.waits, "wait", "waits"),
        n(t.fixes, "fix", "fixes")
    );
    let saved = if ctx.config.fix_cost > 0.0 {
        format!(
            ", saved {:.2} (fix.cost {})",
            t.fix_runs_avoided as f64 * ctx.config.fix_cost,
            ctx.config.fix_cost
        )
    } else {
        String::new()
    };
    println!(
        "fix runs    {}, {} avoided{saved}",
        n(t.fix_runs, "run", "runs"),
        t.fix_runs_avoided
    );
    Ok(exit::OK)
}

/// `buildlock release`: this agent gives up the fixer role on every key it fixes.
pub fn release(ctx: &Context) -> Result<i32> {
    let mine: Vec<(String, KeyState)> = ctx
        .store
        .all()
        .into_iter()
        .filter(|(_, s)| {
            s.status == Status::Fixing && s.fixer.as_ref().is_some_and(|f| f.agent == ctx.agent)
        })
        .collect();
    if mine.is_empty() {
        let others: Vec<String> = ctx
            .store
            .all()
            .into_iter()
            .filter_map(|(_, s)| {
                s.fixer
                    .map(|f| format!("`{}` fixes key `{}`", f.agent, s.key))
            })
            .collect();
        say::say(format!(
            "you (`{}`) are not the fixer of anything{}; nothing to release (set BUILDLOCK_AGENT if you are a \
             different agent; `buildlock reset` forces the state back to passing)",
            ctx.agent,
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
                s.key
            ));
        }
    }
    Ok(exit::OK)
}

/// `buildlock reset [KEY]`: force keys back to passing (all keys that are not passing, or one).
pub fn reset(ctx: &Context, key: Option<&str>) -> Result<i32> {
    let all = ctx.store.all();
    let targets: Vec<(String, String)> = match key {
        Some(k) => vec![(
            all.iter()
                .find(|(_, s)| s.key == k)
                .map_or_else(|| k.to_owned(), |(b, _)| b.clone()),
            k.to_owned(),
        )],
        None => {
            let open: Vec<(String, String)> = all
                .iter()
                .filter(|(_, s)| s.status != Status::Passing)
                .map(|(b, s)| (b.clone(), s.key.clone()))
                .collect();
            if open.is_empty() {
                vec![(ctx.base(), ctx.base())]
            } else {
                open
            }
        }
    };
    for (base, key) in targets {
        let applied = ctx
            .store
            .apply(&key, &base, &Event::Reset, ctx.policy(), None, &|| false)?;
        say::say(format!(
            "reset key `{key}`: {} -> passing (generation {}); a fixer still at work can no longer mark anything",
            applied.before.status.as_str(),
            applied.after.generation
        ));
    }
    Ok(exit::OK)
}

pub fn log(ctx: &Context, as_json: bool, n: usize) -> Result<i32> {
    let history = ctx.store.history();
    let shown = &history[history.len().saturating_sub(n)..];
    for e in shown {
        if as_json {
            println!("{}", serde_json::to_string(e)?);
            continue;
        }
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
        let g = e
            .get("generation")
            .and_then(Value::as_u64)
            .map(|g| format!(" gen {g}"))
            .unwrap_or_default();
        let detail = match s("event") {
            "failed" => format!(
                "check failed{}",
                e["log"]
                    .as_str()
                    .map(|l| format!(", log {l}"))
                    .unwrap_or_default()
            ),
            "elected" => "elected fixer".to_owned(),
            "takeover" => format!("took over from `{}` ({})", s("from"), s("reason")),
            "waiting" => format!("waits for `{}`", s("fixer")),
            "fixed" if e["recovered"] == true => "check passes: build passing again".to_owned(),
            "fixed" => format!(
                "fixed the build{}",
                e["took_ms"]
                    .as_u64()
                    .map(|ms| format!(" in {}", human(Duration::from_millis(ms))))
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
            "damaged" => format!("state file was unreadable ({}), rewritten", s("reason")),
            other => other.to_owned(),
        };
        let agent = if s("agent").is_empty() {
            "-".to_owned()
        } else {
            s("agent").to_owned()
        };
        println!(
            "{}  {:<12} {:<20} key `{}`{g}: {detail}",
            s("time"),
            s("event"),
            agent,
            s("key")
        );
    }
    if shown.is_empty() && !as_json {
        println!("no events yet ({})", ctx.store.location());
    }
    Ok(exit::OK)
}

/// The hooks directory git uses: `core.hooksPath` (relative to the work tree) or the common dir's.
pub fn hooks_dir(ctx: &Context) -> PathBuf {
    let configured = git2::Repository::open(&ctx.repo.git_dir)
        .ok()
        .and_then(|r| r.config().ok())
        .and_then(|c| c.get_path("core.hooksPath").ok());
    match configured {
        Some(p) if p.is_relative() => ctx.repo.worktree.join(p),
        Some(p) => p,
        None => ctx.repo.common_dir.join("hooks"),
    }
}

/// `buildlock doctor`: is everything in place and working? Exit 0 when no problem was found.
pub fn doctor(ctx: &Context) -> Result<i32> {
    let mut problems = 0;
    let ok = |m: String| println!("ok       {m}");
    println!("repository  {}", ctx.repo.worktree.display());
    println!(
        "common dir  {} (every worktree of this repository shares it)",
        ctx.repo.common_dir.display()
    );
    println!("agent       {}", ctx.agent);
    let sources: Vec<String> = ctx
        .config
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    ok(format!(
        "configuration is valid ({})",
        if sources.is_empty() {
            "built-in defaults only".to_owned()
        } else {
            sources.join(", ")
        }
    ));
    let chained = crate::flows::hook::chained_hook(ctx.home.as_path());
    match (&ctx.config.check, chained.exists()) {
        (Some(c), _) => ok(format!("check: `{c}`")),
        (None, true) => ok(format!("check: the chained hook {}", chained.display())),
        (None, false) => {
            println!(
                "note     no `check` set and no chained hook: the hook passes and says nothing; set `check` in .buildlock.toml"
            );
        }
    }
    let hook = hooks_dir(ctx).join("pre-commit");
    match std::fs::read(&hook) {
        Err(_) => {
            problems += 1;
            println!(
                "problem  no pre-commit hook at {}: run ./install.sh",
                hook.display()
            );
        }
        Ok(bytes) => {
            use std::os::unix::fs::PermissionsExt;
            let ours = bytes.windows(9).any(|w| w == b"buildlock");
            let exec = std::fs::metadata(&hook).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            match (ours, exec) {
                (true, true) => ok(format!(
                    "the hook {} is buildlock's and executable",
                    hook.display()
                )),
                (false, _) => {
                    problems += 1;
                    println!(
                        "problem  the hook {} is not buildlock's: run ./install.sh (it keeps and chains it)",
                        hook.display()
                    );
                }
                (true, false) => {
                    problems += 1;
                    println!(
                        "problem  the hook {} is not executable: chmod +x it",
                        hook.display()
                    );
                }
            }
        }
    }
    match lock::locking_works(ctx.home.as_path()) {
        Ok(true) => ok(format!(
            "file locking works in {}",
            ctx.home.as_path().display()
        )),
        Ok(false) => {
            problems += 1;
            println!(
                "problem  file locking does NOT work in {} (network or virtual file system?): buildlock cannot coordinate here",
                ctx.home.as_path().display()
            );
        }
        Err(e) => {
            problems += 1;
            println!(
                "problem  cannot test locking in {}: {e}",
                ctx.home.as_path().display()
            );
        }
    }
    println!(
        "state       {} (backend `{}`)",
        ctx.store.location(),
        ctx.store.backend()
    );
    for (good, what) in ctx.store.diagnose() {
        if good {
            ok(what);
        } else {
            problems += 1;
            println!("problem  {what}");
        }
    }
    let state_dir = ctx.home.as_path().join("state");
    for entry in std::fs::read_dir(&state_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            println!(
                "note     stray temp file {} (a writer was killed; the next write removes it)",
                entry.path().display()
            );
        }
    }
    for (_, s) in ctx.store.all() {
        let how = match fixer_liveness(ctx, &s) {
            Some(Liveness::Dead) => "dead",
            Some(Liveness::Stale) => "stale",
            _ => continue,
        };
        println!(
            "note     the fixer of key `{}` is {how}: the next failing agent takes over (or `buildlock reset`)",
            s.key
        );
    }
    let alias = git2::Repository::open(&ctx.repo.git_dir)
        .ok()
        .and_then(|r| r.config().ok())
        .and_then(|c| c.get_string("alias.commit-retry").ok());
    match alias {
        Some(a) => ok(format!("`git commit-retry` is set up ({a})")),
        None => println!("note     `git commit-retry` is not set up: ./install.sh adds the alias"),
    }
    if problems == 0 {
        println!("\nno problems found");
        Ok(exit::OK)
    } else {
        println!("\n{problems} problem(s) found");
        Ok(exit::FIXER)
    }
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
