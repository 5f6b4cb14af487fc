//! What the registry looks like to people: `buildlock claims`, `buildlock agents`, and how
//! `buildlock log` words a claims event.

use anyhow::Result;
use serde_json::{Value, json};
use std::time::Duration;

use crate::flows::claims::common::{limits, out, read_all, until_text};
use crate::flows::context::Context;
use crate::os::say;
use crate::os::time::{self, Millis, human, rfc3339};
use crate::protocol::claims::{self, Claim, DEFAULT_PRIORITY};
use crate::protocol::exit;
use crate::protocol::state::{KeyState, Status};
use crate::store::registry::Seen;

/// How `buildlock log` words a claims event (`other`: its name, for events it does not know).
pub fn log_detail(event: &str, e: &Value) -> String {
    let paths = e["paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|p| format!("`{}`", say::inert(p)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let s = |k: &str| say::inert(e.get(k).and_then(Value::as_str).unwrap_or(""));
    match event {
        "claim" => {
            let waited = e["waited_ms"].as_u64().unwrap_or(0);
            format!(
                "claimed {paths} ({}){}",
                s("mode"),
                if waited > 0 {
                    format!(" after waiting {}", human(Duration::from_millis(waited)))
                } else {
                    String::new()
                }
            )
        }
        "release" => format!("released {paths}"),
        "lapse" => format!(
            "claim on {paths} lapsed ({})",
            if s("reason") == "for" {
                "its --for term ended"
            } else {
                "no sign of life for claims.ttl"
            }
        ),
        "done" if paths.is_empty() => "done".to_owned(),
        "done" => format!("done; released {paths}"),
        "conflict" => format!(
            "{} refused: {paths} claimed by `{}`",
            if s("by") == "commit" {
                "commit"
            } else {
                "claim"
            },
            s("holder")
        ),
        other => other.to_owned(),
    }
}

/// `buildlock claims [--json]`: the live claims and the waiting requests.
pub fn list(ctx: &Context, as_json: bool) -> Result<i32> {
    let reg = ctx.claims.read()?;
    let (now, ttl) = (time::now(), limits(ctx).ttl_ms());
    let live: Vec<&Claim> = reg.live_claims(now, ttl).collect();
    if as_json {
        let claims: Vec<Value> = live
            .iter()
            .map(|c| {
                json!({"agent": c.agent, "paths": c.paths, "mode": c.mode,
                       "until": rfc3339(c.lapses_at(&reg, ttl)), "granted": rfc3339(c.granted),
                       "fixed_term": c.until.is_some()})
            })
            .collect();
        let queue: Vec<Value> = reg
            .claim_queue
            .iter()
            .map(|w| {
                json!({"agent": w.agent, "paths": w.paths, "mode": w.mode, "priority": w.priority,
                       "since": rfc3339(w.arrived), "pid": w.process.pid})
            })
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({"claims": claims, "queue": queue}))?
        ));
        return Ok(exit::OK);
    }
    if live.is_empty() && reg.claim_queue.is_empty() {
        out("no live claims\n");
        return Ok(exit::OK);
    }
    let mut text = format!("{:<24} {:<9}  {}\n", "AGENT", "MODE", "TERM  PATHS");
    for c in &live {
        text.push_str(&format!(
            "{:<24} {:<9}  until {}  {}\n",
            say::inert(&c.agent),
            c.mode.as_str(),
            until_text(c.lapses_at(&reg, ttl)),
            inert_all(&c.paths)
        ));
    }
    for w in &reg.claim_queue {
        text.push_str(&format!(
            "{:<24} {:<9}  WAITING since {} (priority {})  {}\n",
            say::inert(&w.agent),
            w.mode.as_str(),
            rfc3339(w.arrived),
            w.priority,
            inert_all(&w.paths)
        ));
    }
    out(&text);
    Ok(exit::OK)
}

/// Names or paths, each shown inert, separated by spaces.
fn inert_all(names: &[String]) -> String {
    names
        .iter()
        .map(|n| say::inert(n))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row of `buildlock agents`.
pub(super) struct AgentRow {
    pub(super) agent: String,
    state: &'static str,
    priority: u8,
    claims: Vec<Value>,
    last_seen: Millis,
    host: String,
    pid: Option<u32>,
    worktree: Option<String>,
    branch: Option<String>,
    /// Other work trees the same id committed in within `claims.ttl`: two agents under one id.
    also_active_in: Vec<Seen>,
}

pub(super) fn agent_rows(ctx: &Context) -> Result<Vec<AgentRow>> {
    let reg = read_all(ctx)?;
    let (now, ttl) = (time::now(), limits(ctx).ttl_ms());
    let keys = ctx.store.all().unwrap_or_default();
    let fixing = |a: &str| {
        keys.iter().any(|(_, s)| {
            s.status == Status::Fixing && s.fixer.as_ref().is_some_and(|f| f.agent == a)
        })
    };
    let waiting = |a: &str| {
        keys.iter()
            .any(|(_, s)| s.status == Status::Fixing && s.waiters.iter().any(|w| w.agent == a))
    };
    let mut rows: Vec<AgentRow> = Vec::new();
    for (name, a) in &reg.agents {
        let claims: Vec<Value> = reg
            .claims_of(name, now, ttl)
            .map(|c| {
                json!({"paths": c.paths, "mode": c.mode, "until": rfc3339(c.lapses_at(&reg, ttl))})
            })
            .collect();
        let busy = !claims.is_empty()
            || reg.slots.iter().any(|h| &h.agent == name)
            || reg.slot_queue.iter().any(|w| &w.agent == name)
            || reg.claim_queue.iter().any(|w| &w.agent == name);
        if !busy && a.last_seen.saturating_add(ttl) <= now {
            continue;
        }
        rows.push(AgentRow {
            agent: name.clone(),
            state: claims::agent_state(&reg, name, fixing(name), waiting(name)),
            priority: a.priority,
            claims,
            last_seen: a.last_seen,
            host: a.host.clone(),
            pid: Some(a.pid),
            worktree: Some(a.worktree.clone()),
            branch: Some(a.branch.clone()),
            also_active_in: Vec::new(),
        });
    }
    let seen = ctx.registry.seen_agents(now, ttl);
    let seen_as = |name: &str| seen.iter().find(|s| s.agent == name);
    // Agents known only from the build state: fixers and waiters.
    for (_, s) in &keys {
        if s.status != Status::Fixing {
            continue;
        }
        let mut names: Vec<(String, Option<&crate::protocol::state::Fixer>)> = Vec::new();
        if let Some(f) = &s.fixer {
            names.push((f.agent.clone(), Some(f)));
        }
        names.extend(s.waiters.iter().map(|w| (w.agent.clone(), None)));
        for (name, fixer) in names {
            if rows.iter().any(|r| r.agent == name) {
                continue;
            }
            rows.push(AgentRow {
                state: claims::agent_state(&reg, &name, fixing(&name), waiting(&name)),
                priority: DEFAULT_PRIORITY,
                claims: Vec::new(),
                last_seen: fixer.map_or(s.changed, |f| f.heartbeat),
                host: fixer.map_or_else(String::new, |f| f.host.clone()),
                pid: fixer.and_then(|f| f.pid),
                worktree: seen_as(&name).map(|s| s.worktree.display().to_string()),
                branch: seen_as(&name).and_then(|s| current_branch(s.git_dir.as_deref()?)),
                also_active_in: Vec::new(),
                agent: name,
            });
        }
    }
    // Agents known only from their commits: they claim nothing and nothing waits on them.
    for s in &seen {
        if rows.iter().any(|r| r.agent == s.agent) {
            continue;
        }
        rows.push(AgentRow {
            agent: s.agent.clone(),
            state: claims::agent_state(&reg, &s.agent, false, false),
            priority: DEFAULT_PRIORITY,
            claims: Vec::new(),
            last_seen: s.last_seen,
            host: s.host.clone(),
            pid: None,
            worktree: Some(s.worktree.display().to_string()),
            branch: s.git_dir.as_deref().and_then(current_branch),
            also_active_in: Vec::new(),
        });
    }
    for row in &mut rows {
        live_now(ctx, row, &keys, seen_as(&row.agent), now, ttl);
    }
    rows.sort_by(|a, b| a.agent.cmp(&b.agent));
    Ok(rows)
}

/// What the records above cannot know, from what runs now: a check of the agent's (its
/// `checking` lock), its live waiting process (pid, host, and a sign of life that is now), its
/// latest commit's time and work tree, and the other work trees it is active in.
fn live_now(
    ctx: &Context,
    row: &mut AgentRow,
    keys: &[(String, KeyState)],
    seen: Option<&Seen>,
    now: Millis,
    ttl: Millis,
) {
    let mut live_pid = None;
    let mut host = None;
    if let Some(pid) = ctx.registry.checking_now(&row.agent) {
        if matches!(row.state, "idle" | "done" | "waiting" | "fixing") {
            row.state = "checking";
        }
        live_pid = pid;
        host = Some(crate::os::process::hostname());
    }
    for (_, s) in keys.iter().filter(|(_, s)| s.status == Status::Fixing) {
        if let Some(f) = s.fixer.as_ref().filter(|f| f.agent == row.agent) {
            row.last_seen = row.last_seen.max(f.heartbeat);
            host = host.or_else(|| Some(f.host.clone()));
        }
        for w in s.waiters.iter().filter(|w| w.agent == row.agent) {
            host = host.or_else(|| Some(w.host.clone()));
            if live_pid.is_none() && crate::os::process::is_live(&w.process()) {
                live_pid = Some(w.pid);
            }
        }
    }
    if live_pid.is_some() {
        // A process of the agent's that runs now is a sign of life now.
        row.last_seen = now;
        row.pid = live_pid;
    }
    if let Some(s) = seen {
        row.last_seen = row.last_seen.max(s.last_seen);
    }
    let mut trees = ctx.registry.worktrees_of(&row.agent, now, ttl);
    if !trees.is_empty() {
        let latest = trees.remove(0);
        row.last_seen = row.last_seen.max(latest.last_seen);
        row.worktree = Some(latest.worktree.display().to_string());
        row.branch = latest.git_dir.as_deref().and_then(current_branch);
        host = host.or(Some(latest.host));
    }
    row.also_active_in = trees;
    if row.host.is_empty() {
        row.host = host.unwrap_or_default();
    }
}

/// The branch checked out in the work tree whose git dir is `git_dir` (None when detached).
fn current_branch(git_dir: &std::path::Path) -> Option<String> {
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    head.trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_owned)
}

/// `buildlock agents [--json]`: every agent seen within `claims.ttl`, and what it is doing.
pub fn agents(ctx: &Context, as_json: bool) -> Result<i32> {
    let rows = agent_rows(ctx)?;
    if as_json {
        let agents: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"agent": r.agent, "state": r.state, "priority": r.priority, "claims": r.claims,
                       "last_seen": rfc3339(r.last_seen), "host": r.host, "pid": r.pid,
                       "worktree": r.worktree, "branch": r.branch,
                       "also_active_in": r.also_active_in.iter().map(|t| json!({
                           "worktree": t.worktree.display().to_string(), "host": t.host,
                           "branch": t.git_dir.as_deref().and_then(current_branch),
                           "last_seen": rfc3339(t.last_seen)})).collect::<Vec<_>>()})
            })
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({"agents": agents,
                "claims_backend": if ctx.claims.is_remote() { "remote" } else { "local" },
                "check_slots": "per machine"}))?
        ));
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        out(&format!(
            "no agents seen within {} (claims.ttl)\n{}",
            human(ctx.config.claims_ttl),
            where_from(ctx)
        ));
        return Ok(exit::OK);
    }
    let mut text = format!(
        "{:<24} {:<9} {:>3}  {:<10} {:<20} CLAIMS\n",
        "AGENT", "STATE", "PRI", "SEEN", "BRANCH"
    );
    let now = time::now();
    for r in &rows {
        let claims: Vec<String> = r
            .claims
            .iter()
            .map(|c| {
                let paths: Vec<String> = c["paths"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "{}{}",
                    inert_all(&paths),
                    if c["mode"] == "shared" {
                        " (shared)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        text.push_str(&format!(
            "{:<24} {:<9} {:>3}  {:<10} {:<20} {}\n",
            say::inert(&r.agent),
            r.state,
            r.priority,
            format!(
                "{} ago",
                human(Duration::from_millis(now.saturating_sub(r.last_seen)))
            ),
            r.branch
                .as_deref()
                .map_or_else(|| "-".to_owned(), say::inert),
            if claims.is_empty() {
                "-".to_owned()
            } else {
                claims.join(", ")
            }
        ));
        for other in &r.also_active_in {
            text.push_str(&format!(
                "  ! the same id is also active in {} ({} ago): two agents under one id? give \
                 each its own BUILDLOCK_AGENT\n",
                say::inert(&other.worktree.display().to_string()),
                human(Duration::from_millis(now.saturating_sub(other.last_seen))),
            ));
        }
    }
    text.push_str(&where_from(ctx));
    out(&text);
    Ok(exit::OK)
}

/// Under the remote backend, what `buildlock agents` knows from where: claims from every
/// machine, check slots and running checks from this one only.
fn where_from(ctx: &Context) -> String {
    if !ctx.claims.is_remote() {
        return String::new();
    }
    format!(
        "claims, `done` and blocked commits: from every machine, through {}; agents of other machines \
         show here when they claim, wait or fix; check slots (check_slots) and `checking`: this machine's \
         only (check slots are per machine)\n",
        ctx.claims.place()
    )
}
