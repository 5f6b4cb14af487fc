//! What the claims commands, the hook's claims guard and the check slots share: the registry
//! store and its limits, this agent as the registry records it, the priority, pathspecs, how
//! claims are worded, and the nap of every wait on the registry's bell.

use anyhow::Result;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::flows::context::Context;
use crate::os::bell::{Listener, Wake};
use crate::os::time::{self, Millis, human, rfc3339};
use crate::os::{env, process, say};
use crate::protocol::claims::{self, Claim, Conflict, DEFAULT_PRIORITY, Mode, Registry, Who};
use crate::protocol::exit;
use crate::store::registry::Limits;

/// How long a waiter sleeps at most between two looks when nothing wakes it.
pub const FALLBACK: Duration = Duration::from_secs(1);

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
        if let Err(err) = ctx.store.record(crate::store::Entry::from_json(e)) {
            say::warn(format!(
                "could not record a claims event in the history: {err:#}"
            ));
        }
    }
}

/// `a`, `b`, `c` as people read names and paths: each in backticks, shown inert.
pub(super) fn ticked<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{}`", say::inert(&i.to_string())))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn usage(msg: impl std::fmt::Display) -> Result<i32> {
    say::say(msg);
    Ok(exit::USAGE)
}

/// Stdout for reports; a closed pipe ends the listing quietly.
pub(super) fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

pub(super) fn until_text(until: Millis) -> String {
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
pub(super) fn duration_arg(flag: &str, text: &str) -> Result<Duration, String> {
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
    use crate::protocol::pathspec::Found;
    // What git tracks: a symlink (to a folder too) is a file; only a real folder is a folder.
    let found = |spec: &str| {
        root.join(spec).symlink_metadata().ok().map(|m| {
            if m.is_dir() {
                Found::Folder
            } else {
                Found::File
            }
        })
    };
    match crate::protocol::pathspec::normalize(raw, root, found) {
        Ok(s) => Ok(s),
        // An absolute path through a symlink to the work tree: judge its real location.
        Err(e) if Path::new(raw).is_absolute() => {
            let p = Path::new(raw);
            let (base, rest) = match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) if !p.exists() => (parent.to_owned(), Some(name)),
                _ => (p.to_owned(), None),
            };
            let Ok(real) = crate::os::fs::canonical(&base) else {
                return Err(e);
            };
            let real = match rest {
                Some(name) => real.join(name),
                None => real,
            };
            crate::protocol::pathspec::normalize(&real.to_string_lossy(), root, found)
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
                say::inert(&c.agent),
                c.mode.as_str(),
                say::inert(&c.theirs)
            )
        } else {
            format!(
                "`{}` holds `{}` ({}) until {}",
                say::inert(&c.agent),
                say::inert(&c.theirs),
                c.mode.as_str(),
                c.until.map_or_else(|| "-".into(), until_text)
            )
        };
        let line = format!("  `{}`: {what}", say::inert(&c.ours));
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines.join("\n")
}

pub(super) fn describe_claim(c: &Claim, reg: &Registry, ttl: Millis) -> String {
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

/// How often a wait shows its progress: every second on a terminal, else every 5 s.
pub(super) fn progress_every() -> Duration {
    if say::stderr_is_terminal() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    }
}

/// The claims as the listings and `wait-for` show them: the claims registry's (local, or the
/// remote's), with this machine's check slots and slot queue (check slots are per machine
/// whatever the backend). A remote that cannot be read is an error (exit 70).
pub fn read_all(ctx: &Context) -> Result<Registry> {
    let mut reg = ctx.claims.read()?;
    if ctx.claims.is_remote() {
        let here = ctx.registry.read();
        reg.slots = here.slots;
        reg.slot_queue = here.slot_queue;
    }
    Ok(reg)
}

/// One nap of a wait on the registry: until its bell rings, `left` (of the wait's limit) has
/// passed, or `lapse` comes (the moment something waited on can lapse); at most [`FALLBACK`],
/// and at most `BUILDLOCK_POLL` where the bell cannot wake us. With claims on a remote, whose
/// changes ring no bell here, at most `coordination.remote_poll` (each look is one `ls-remote`).
/// The claims waits nap here: `claim --wait`, `wait-for` and the guard.
pub(super) fn nap(
    ctx: &Context,
    watch: &mut Listener,
    left: Duration,
    lapse: Option<Millis>,
) -> Wake {
    let mut nap = match ctx.claims.poll() {
        Some(poll) => left.min(poll),
        None => left.min(FALLBACK),
    };
    if let Some(at) = lapse {
        nap = nap.min(Duration::from_millis(at.saturating_sub(time::now()) + 1));
    }
    if !watch.is_live() && ctx.claims.poll().is_none() {
        nap = nap.min(env::poll_interval());
    }
    watch.wait(&[], nap)
}
