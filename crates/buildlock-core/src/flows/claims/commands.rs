//! The claims commands: `claim`, `unclaim`, `claims`, `agents`, `done`, `wait-for`.
//!
//! Each is a library function that returns the exit code of the contract: 0; 75 refused or timed
//! out; 2 a wrong command line (every input is checked before anything changes, and the message
//! names what was wrong); 78 a configuration error (when loading the context). Every change is one
//! step of the registry store under its lock (`store/registry.rs`); the decisions are the pure
//! rules' (`protocol/claims.rs`). Waiting (`claim --wait`, `wait-for`) wakes when a registry change
//! rings its bell (`os::bell`) or at the next moment something can lapse, with a bounded fallback poll,
//! and shows progress on stderr.

use anyhow::Result;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::flows::context::Context;
use crate::os::bell::{Listener, Wake};
use crate::os::time::{self, Millis, human, rfc3339};
use crate::os::{env, process, say, signals};
use crate::protocol::claims::{
    self, Claim, Conflict, DEFAULT_PRIORITY, Decision, Mode, Registry, Request, Who,
};
use crate::protocol::exit;
use crate::protocol::state::Status;
use crate::store::registry::{self, Limits, RegistryStore};

/// How long a waiter sleeps at most between two looks when nothing wakes it.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// `buildlock claim` as given on the command line (parsed by the binary, judged here).
#[derive(Clone, Debug, Default)]
pub struct ClaimArgs {
    pub shared: bool,
    /// `--for D`.
    pub for_: Option<String>,
    /// `--wait` (`Some(None)`) or `--wait D` (`Some(Some(D))`).
    pub wait: Option<Option<String>>,
    pub priority: Option<String>,
    pub paths: Vec<String>,
}

// ------------------------------------------------------------------------------------------
// Helpers shared with the guard and the slots
// ------------------------------------------------------------------------------------------

pub fn store(ctx: &Context) -> RegistryStore {
    RegistryStore::new(&ctx.home)
}

pub fn limits(ctx: &Context) -> Limits {
    Limits {
        ttl: ctx.config.claims_ttl,
        slots: ctx.config.check_slots as usize,
    }
}

/// This agent as the registry records it.
pub fn who(ctx: &Context, priority: u8) -> Who {
    Who {
        agent: ctx.agent.clone(),
        priority,
        process: process::me(),
        worktree: ctx.repo.worktree.display().to_string(),
        branch: ctx.repo.branch(),
    }
}

/// `--priority`, else `BUILDLOCK_PRIORITY`, else 3; an error names which one was wrong.
pub fn priority(flag: Option<&str>) -> Result<u8, String> {
    if let Some(p) = flag {
        return claims::parse_priority(p).map_err(|e| format!("--priority: {e}"));
    }
    match env::priority() {
        Some(p) => claims::parse_priority(&p).map_err(|e| format!("BUILDLOCK_PRIORITY: {e}")),
        None => Ok(DEFAULT_PRIORITY),
    }
}

/// The priority of a hook or commit-retry: a bad `BUILDLOCK_PRIORITY` is warned about, never
/// blocks a commit.
pub fn priority_or_default() -> u8 {
    priority(None).unwrap_or_else(|e| {
        say::warn(format!("{e}; using {DEFAULT_PRIORITY}"));
        DEFAULT_PRIORITY
    })
}

/// Appends the registry's events to the shared history (`buildlock log`).
pub fn record(ctx: &Context, events: Vec<Value>) {
    for e in events {
        if let Err(err) = ctx.store.record(e) {
            say::warn(format!(
                "could not record a claims event in the history: {err:#}"
            ));
        }
    }
}

/// `a`, `b`, `c` as people read names and paths: each in backticks.
fn ticked<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn usage(msg: impl std::fmt::Display) -> Result<i32> {
    say::say(msg);
    Ok(exit::USAGE)
}

/// Stdout for reports; a closed pipe ends the listing quietly.
fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

fn until_text(until: Millis) -> String {
    let now = time::now();
    if until <= now {
        format!("{} (lapsed)", rfc3339(until))
    } else {
        format!(
            "{} (in {})",
            rfc3339(until),
            human(Duration::from_millis(until - now))
        )
    }
}

/// Parses a duration argument; the error names the flag.
fn duration_arg(flag: &str, text: &str) -> Result<Duration, String> {
    time::parse_duration(text).map_err(|e| format!("{flag}: {e}"))
}

/// Every pathspec normalised, or the first error.
pub fn normalize_all(ctx: &Context, raw: &[String]) -> Result<Vec<String>, String> {
    let root = &ctx.repo.worktree;
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let spec = normalize_one(root, r)?;
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    Ok(out)
}

fn normalize_one(root: &Path, raw: &str) -> Result<String, String> {
    let is_file = |spec: &str| root.join(spec).is_file();
    match crate::protocol::pathspec::normalize(raw, root, is_file) {
        Ok(s) => Ok(s),
        // An absolute path through a symlink to the work tree: judge its real location.
        Err(e) if Path::new(raw).is_absolute() => {
            let p = Path::new(raw);
            let (base, rest) = match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) if !p.exists() => (parent.to_owned(), Some(name)),
                _ => (p.to_owned(), None),
            };
            let Ok(real) = base.canonicalize() else {
                return Err(e);
            };
            let real = match rest {
                Some(name) => real.join(name),
                None => real,
            };
            crate::protocol::pathspec::normalize(&real.to_string_lossy(), root, is_file)
                .map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

pub fn describe_conflicts(conflicts: &[Conflict]) -> String {
    let mut lines = Vec::new();
    for c in conflicts {
        let what = if c.queued {
            format!(
                "`{}` ({}) is waiting ahead of you for `{}`",
                c.agent,
                c.mode.as_str(),
                c.theirs
            )
        } else {
            format!(
                "`{}` holds `{}` ({}) until {}",
                c.agent,
                c.theirs,
                c.mode.as_str(),
                c.until.map_or_else(|| "-".into(), until_text)
            )
        };
        let line = format!("  `{}`: {what}", c.ours);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines.join("\n")
}

fn describe_claim(c: &Claim, reg: &Registry, ttl: Millis) -> String {
    let lapse = match c.until {
        Some(_) => "a fixed term (--for)".to_owned(),
        None => format!(
            "it lapses {} after your last buildlock command; any buildlock command (a commit, a status) renews it",
            human(Duration::from_millis(ttl))
        ),
    };
    format!(
        "claimed {} {} until {}; {lapse}",
        ticked(&c.paths),
        match c.mode {
            Mode::Exclusive => "exclusively",
            Mode::Shared => "shared",
        },
        until_text(c.lapses_at(reg, ttl)),
    )
}

/// How `buildlock log` words a claims event (`other`: its name, for events it does not know).
pub fn log_detail(event: &str, e: &Value) -> String {
    let paths = e["paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
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

// ------------------------------------------------------------------------------------------
// claim
// ------------------------------------------------------------------------------------------

/// `buildlock claim [--shared] [--for D] [--wait [D]] [--priority N] PATHSPEC…`
pub fn claim(ctx: &Context, args: &ClaimArgs) -> Result<i32> {
    signals::install();
    let mut raw_paths = args.paths.clone();
    // `--wait src/x` (a parser that takes an optional value greedily): a value that is not a
    // duration is the first pathspec, unless it looks like a mistyped duration.
    let wait = match &args.wait {
        None => None,
        Some(None) => Some(ctx.config.wait),
        Some(Some(v)) => match time::parse_duration(v) {
            Ok(d) => Some(d),
            Err(e) if v.starts_with(|c: char| c.is_ascii_digit()) && !v.contains(['/', '.']) => {
                return usage(format!("--wait: {e}"));
            }
            Err(_) => {
                raw_paths.insert(0, v.clone());
                Some(ctx.config.wait)
            }
        },
    };
    if raw_paths.is_empty() {
        return usage(
            "claim needs at least one PATHSPEC (relative to the work tree root), e.g. \
             `buildlock claim src/api/*.py docs/`; nothing was claimed",
        );
    }
    let paths = match normalize_all(ctx, &raw_paths) {
        Ok(p) => p,
        Err(e) => return usage(format!("{e}; nothing was claimed")),
    };
    let term = match &args.for_ {
        None => None,
        Some(v) => match duration_arg("--for", v) {
            Ok(d) if d.is_zero() => {
                return usage("--for must be longer than zero; nothing was claimed");
            }
            Ok(d) => Some(d.as_millis() as Millis),
            Err(e) => return usage(format!("{e}; nothing was claimed")),
        },
    };
    let priority = match priority(args.priority.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(format!("{e}; nothing was claimed")),
    };
    let mode = if args.shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let reg = store(ctx);
    let limits = limits(ctx);
    // Watch before the first look, so that a release in between is not missed.
    let watch = wait.map(|_| registry::bell(reg.home()).listen());
    let me = who(ctx, priority);
    let applied = reg.apply(
        &Request::Claim {
            who: me.clone(),
            paths: paths.clone(),
            mode,
            term,
            wait: wait.is_some(),
            ticket: None,
        },
        limits,
    )?;
    record(ctx, applied.events);
    match applied.decision {
        Decision::Granted { claim } => {
            say::headline(
                say::Tone::Good,
                describe_claim(&claim, &applied.after, limits.ttl_ms()),
            );
            say::say(
                "release with `buildlock unclaim …`, or `buildlock done` when your work is finished",
            );
            Ok(exit::OK)
        }
        Decision::Refused { conflicts } => {
            say::headline(
                say::Tone::Wait,
                "refused: another agent holds (or waits for) what you claim; nothing was claimed",
            );
            say::say(describe_conflicts(&conflicts));
            say::say(
                "next: work on something else, or queue for it with `buildlock claim --wait …` (granted by \
                 priority, then arrival, as soon as it is released or lapses); `buildlock agents` shows who holds what",
            );
            Ok(exit::BLOCKED)
        }
        Decision::Queued {
            ticket,
            position,
            conflicts,
        } => {
            let limit = wait.unwrap_or_default();
            let mut watch = watch.unwrap_or_else(|| registry::bell(reg.home()).listen());
            say::say(format!(
                "queued (position {} of the waiting claims, priority {priority}); waiting up to {} for:\n{}",
                position + 1,
                human(limit),
                describe_conflicts(&conflicts)
            ));
            wait_for_grant(
                ctx,
                &reg,
                limits,
                &mut watch,
                &me,
                (paths, mode, term),
                ticket,
                limit,
            )
        }
        other => anyhow::bail!("unexpected answer to a claim: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn wait_for_grant(
    ctx: &Context,
    reg: &RegistryStore,
    limits: Limits,
    watch: &mut Listener,
    me: &Who,
    (paths, mode, term): (Vec<String>, Mode, Option<Millis>),
    ticket: u64,
    limit: Duration,
) -> Result<i32> {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let leave = |why: &str| -> Result<()> {
        let applied = reg.apply(&Request::Leave { ticket }, limits)?;
        record(ctx, applied.events);
        say::progress_done();
        say::say(why);
        Ok(())
    };
    loop {
        let waited = start.elapsed();
        if let Some(n) = signals::pending() {
            leave(&format!(
                "interrupted by signal {n}: left the queue; nothing was claimed"
            ))?;
            return Ok(exit::signal(n));
        }
        if waited >= limit {
            leave(&format!(
                "not granted within {}: left the queue; nothing was claimed (exit 75)\nnext: try again later, or see \
                 `buildlock agents` for who holds it",
                human(limit)
            ))?;
            return Ok(exit::BLOCKED);
        }
        let now_reg = reg.read();
        let next_lapse = now_reg
            .next_lapse(time::now(), limits.ttl_ms())
            .map(|at| Duration::from_millis(at.saturating_sub(time::now()) + 1));
        let mut nap = (limit - waited).min(FALLBACK);
        if let Some(l) = next_lapse {
            nap = nap.min(l);
        }
        if !watch.is_live() {
            nap = nap.min(env::poll_interval());
        }
        let _: Wake = watch.wait(&[], nap);
        // A sign of life that renews our other claims without rewriting the registry.
        registry::touch(&ctx.home, &ctx.agent);
        let applied = reg.apply(
            &Request::Claim {
                who: me.clone(),
                paths: paths.clone(),
                mode,
                term,
                wait: true,
                ticket: Some(ticket),
            },
            limits,
        )?;
        record(ctx, applied.events);
        match applied.decision {
            Decision::Granted { claim } => {
                say::progress_done();
                say::headline(
                    say::Tone::Good,
                    format!(
                        "{} after waiting {}",
                        describe_claim(&claim, &applied.after, limits.ttl_ms()),
                        human(start.elapsed())
                    ),
                );
                return Ok(exit::OK);
            }
            Decision::Queued {
                position,
                conflicts,
                ..
            } => {
                let every = if say::stderr_is_terminal() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(5)
                };
                if last_progress.elapsed() >= every {
                    last_progress = Instant::now();
                    let holders: Vec<String> = conflicts
                        .iter()
                        .map(|c| format!("`{}`", c.agent))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    say::progress(format!(
                        "waiting for {} (position {}); waited {}, giving up in {}",
                        holders.join(", "),
                        position + 1,
                        human(start.elapsed()),
                        human(limit.saturating_sub(start.elapsed()))
                    ));
                }
            }
            Decision::Gone => {
                say::progress_done();
                say::say(
                    "your queued claim is no longer in the registry (it was reset or damaged); nothing was \
                     claimed: run `buildlock claim` again",
                );
                return Ok(exit::BLOCKED);
            }
            other => anyhow::bail!("unexpected answer to a queued claim: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// unclaim, done
// ------------------------------------------------------------------------------------------

/// `buildlock unclaim [--all | PATHSPEC…]`
pub fn unclaim(ctx: &Context, all: bool, raw_paths: &[String]) -> Result<i32> {
    let paths = match (all, raw_paths.is_empty()) {
        (true, false) => {
            return usage(
                "unclaim takes either --all or PATHSPECs, not both; nothing was released",
            );
        }
        (false, true) => {
            return usage(
                "unclaim needs PATHSPECs (as you claimed them) or --all; nothing was released",
            );
        }
        (true, true) => None,
        (false, false) => match normalize_all(ctx, raw_paths) {
            Ok(p) => Some(p),
            Err(e) => return usage(format!("{e}; nothing was released")),
        },
    };
    let reg = store(ctx);
    let applied = reg.apply(
        &Request::Unclaim {
            who: who(ctx, priority_or_default()),
            paths,
        },
        limits(ctx),
    )?;
    record(ctx, applied.events);
    let Decision::Released { released, not_held } = applied.decision else {
        anyhow::bail!("unexpected answer to unclaim: {:?}", applied.decision);
    };
    if !released.is_empty() {
        say::say(format!("released {}", ticked(&released)));
    }
    if !not_held.is_empty() {
        let mine: Vec<String> = applied
            .before
            .claims
            .iter()
            .filter(|c| c.agent == ctx.agent)
            .flat_map(|c| c.paths.iter().map(|p| format!("`{p}`")))
            .collect();
        say::say(format!(
            "you (`{}`) hold no claim on {} (already released, lapsed, or written differently); your claims: {}",
            ctx.agent,
            ticked(&not_held),
            if mine.is_empty() {
                "none".to_owned()
            } else {
                mine.join(", ")
            }
        ));
    }
    if released.is_empty() && not_held.is_empty() {
        say::say(format!(
            "you (`{}`) hold no claims; nothing to release",
            ctx.agent
        ));
    }
    Ok(exit::OK)
}

/// `buildlock done`: release every claim of this agent and mark it done.
pub fn done(ctx: &Context) -> Result<i32> {
    let applied = store(ctx).apply(
        &Request::Done {
            who: who(ctx, priority_or_default()),
        },
        limits(ctx),
    )?;
    record(ctx, applied.events);
    let released = match applied.decision {
        Decision::Done { released } => released,
        other => anyhow::bail!("unexpected answer to done: {other:?}"),
    };
    say::headline(
        say::Tone::Good,
        format!(
            "`{}` is done: released {released} claim(s); agents waiting for you (`buildlock wait-for {}`) go on now",
            ctx.agent, ctx.agent
        ),
    );
    Ok(exit::OK)
}

// ------------------------------------------------------------------------------------------
// claims, agents
// ------------------------------------------------------------------------------------------

/// `buildlock claims [--json]`: the live claims and the waiting requests.
pub fn list(ctx: &Context, as_json: bool) -> Result<i32> {
    let reg = store(ctx).read();
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
    let mut text = String::new();
    for c in &live {
        text.push_str(&format!(
            "{:<24} {:<9}  until {}  {}\n",
            c.agent,
            c.mode.as_str(),
            until_text(c.lapses_at(&reg, ttl)),
            c.paths.join(" ")
        ));
    }
    for w in &reg.claim_queue {
        text.push_str(&format!(
            "{:<24} {:<9}  WAITING since {} (priority {})  {}\n",
            w.agent,
            w.mode.as_str(),
            rfc3339(w.arrived),
            w.priority,
            w.paths.join(" ")
        ));
    }
    out(&text);
    Ok(exit::OK)
}

/// One row of `buildlock agents`.
struct AgentRow {
    agent: String,
    state: &'static str,
    priority: u8,
    claims: Vec<Value>,
    last_seen: Millis,
    host: String,
    pid: Option<u32>,
    worktree: Option<String>,
    branch: Option<String>,
}

fn agent_rows(ctx: &Context) -> Vec<AgentRow> {
    let reg = store(ctx).read();
    let (now, ttl) = (time::now(), limits(ctx).ttl_ms());
    let keys = ctx.store.all();
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
        });
    }
    let seen = registry::seen_agents(&ctx.home, now, ttl);
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
        });
    }
    rows.sort_by(|a, b| a.agent.cmp(&b.agent));
    rows
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
    let rows = agent_rows(ctx);
    if as_json {
        let agents: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"agent": r.agent, "state": r.state, "priority": r.priority, "claims": r.claims,
                       "last_seen": rfc3339(r.last_seen), "host": r.host, "pid": r.pid,
                       "worktree": r.worktree, "branch": r.branch})
            })
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({"agents": agents}))?
        ));
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        out(&format!(
            "no agents seen within {} (claims.ttl)\n",
            human(ctx.config.claims_ttl)
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
                let paths: Vec<&str> = c["paths"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "{}{}",
                    paths.join(" "),
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
            r.agent,
            r.state,
            r.priority,
            format!(
                "{} ago",
                human(Duration::from_millis(now.saturating_sub(r.last_seen)))
            ),
            r.branch.as_deref().unwrap_or("-"),
            if claims.is_empty() {
                "-".to_owned()
            } else {
                claims.join(", ")
            }
        ));
    }
    out(&text);
    Ok(exit::OK)
}

// ------------------------------------------------------------------------------------------
// wait-for
// ------------------------------------------------------------------------------------------

/// `buildlock wait-for AGENT… [--timeout D]`: until each agent is done or gone (no sign of life
/// for `claims.ttl`). Default timeout: `coordination.wait`.
pub fn wait_for(ctx: &Context, names: &[String], timeout: Option<&str>) -> Result<i32> {
    signals::install();
    if names.is_empty() {
        return usage("wait-for needs at least one AGENT (as `buildlock agents` shows them)");
    }
    if let Some(bad) = names.iter().find(|n| n.trim().is_empty()) {
        return usage(format!("wait-for: {bad:?} is not an agent name"));
    }
    let limit = match timeout.map(|t| duration_arg("--timeout", t)) {
        None => ctx.config.wait,
        Some(Ok(d)) => d,
        Some(Err(e)) => return usage(e),
    };
    let reg = store(ctx);
    // A name never seen (a typo) would read as "gone" and let the caller go on at once.
    let known: Vec<String> = agent_rows(ctx).into_iter().map(|a| a.agent).collect();
    let history: std::collections::HashSet<String> = ctx
        .store
        .history()
        .iter()
        .filter_map(|e| e["agent"].as_str().map(str::to_owned))
        .collect();
    let reg_now = reg.read();
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
                known.join(", ")
            }
        ));
        return Ok(exit::USAGE);
    }
    let mut watch = registry::bell(reg.home()).listen();
    let start = Instant::now();
    let mut last_progress: Option<Instant> = None;
    loop {
        let (pending, next_gone) = still_running(ctx, &reg, names);
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
        let every = if say::stderr_is_terminal() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if last_progress.is_none_or(|t| t.elapsed() >= every) {
            last_progress = Some(Instant::now());
            say::progress(format!(
                "waiting for {} to be done; waited {}, giving up in {}",
                pending.join(", "),
                human(waited),
                human(limit - waited)
            ));
        }
        let mut nap = (limit - waited).min(FALLBACK);
        if let Some(at) = next_gone {
            nap = nap.min(Duration::from_millis(at.saturating_sub(time::now()) + 1));
        }
        if !watch.is_live() {
            nap = nap.min(env::poll_interval());
        }
        watch.wait(&[], nap);
    }
}

/// The named agents still at work (described), and when the first of them will count as gone.
fn still_running(
    ctx: &Context,
    reg: &RegistryStore,
    names: &[String],
) -> (Vec<String>, Option<Millis>) {
    let r = reg.read();
    let (now, ttl) = (time::now(), limits(ctx).ttl_ms());
    let keys = ctx.store.all();
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
            pending.push(format!("`{name}` ({state})"));
            if let Some(at) = gone_at.filter(|_| !holds && !fixing) {
                next_gone = Some(next_gone.map_or(at, |n: Millis| n.min(at)));
            }
        }
    }
    (pending, next_gone)
}
