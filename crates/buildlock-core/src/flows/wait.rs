//! Bounded waiting for a fix: sleeps until the key's state changes (the store wakes it: inotify
//! with the local backend), shows who fixes and for how long, and ends as soon as the build is
//! fixed, the role is given up, or the fixer dies or goes silent.
//!
//! Between changes a waiter costs nothing: it wakes at most every `poll` (default 1 s) to show
//! progress and check on the fixer, and on every change of the state or of a fixer lock.
//!
//! Silence is judged on our own monotonic clock: the fixer's lease (generation, heartbeat) that
//! did not move for a whole `stale_after` while we watched. No clocks of two hosts are compared.

use std::time::{Duration, Instant};

use crate::flows::context::Context;
use crate::os::time::{self, Millis};
use crate::os::{say, signals};
use crate::protocol::state::{Event, Fix, Fixer, Status};
use crate::store::{Read, Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The key is passing again; `fix` is the fix, to find its commit.
    Fixed {
        by: Option<String>,
        fix: Option<Fix>,
    },
    /// The episode we waited on ended and another began (fixed and broken again, or reset):
    /// the generation moved on.
    Moved {
        generation: u64,
    },
    /// Nobody is fixing any more (given up, released, or the state became unreadable).
    Broken,
    /// The fixer's process died (its fixer lock is free).
    FixerDied(Fixer),
    /// The fixer's lease did not move for `stale_after`: `(generation, heartbeat)` seen silent.
    FixerSilent(Fixer, (u64, Millis)),
    TimedOut,
    Signal(i32),
    ParentGone,
}

pub struct Waiting<'a> {
    pub store: &'a dyn Store,
    pub key: &'a str,
    /// The generation whose fixer we wait for.
    pub generation: u64,
    pub limit: Duration,
    pub stale_after: Duration,
    /// The longest sleep between two looks.
    pub poll: Duration,
    pub parent: Option<u32>,
}

pub fn wait_for_fix(w: &Waiting<'_>) -> WaitEnd {
    crate::os::fault::point("wait");
    let start = Instant::now();
    let mut last_lease: Option<(u64, Millis)> = None;
    let mut lease_seen_at = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let progress_every = if say::stderr_is_terminal() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    // Without change notifications, look more often.
    let poll = if w.store.watches() {
        w.poll
    } else {
        w.poll.min(Duration::from_millis(100))
    };
    let end = loop {
        if let Some(signal) = signals::pending() {
            break WaitEnd::Signal(signal);
        }
        if w.parent
            .is_some_and(|p| p != std::os::unix::process::parent_id())
        {
            break WaitEnd::ParentGone;
        }
        let state = match w.store.read(w.key) {
            Read::Missing => {
                break WaitEnd::Fixed {
                    by: None,
                    fix: None,
                };
            }
            Read::Damaged(_) => break WaitEnd::Broken,
            Read::Found { state, .. } => state,
            Read::Unreachable(why) => {
                // Keep trying, and say so. Time we could not look does not count as silence:
                // the silence clock starts again at the next successful read.
                let first = last_lease.is_some();
                last_lease = None;
                if start.elapsed() >= w.limit {
                    break WaitEnd::TimedOut;
                }
                if first || last_progress.is_none_or(|t| t.elapsed() >= progress_every) {
                    last_progress = Some(Instant::now());
                    say::progress(format!(
                        "{why}; still waiting for the fix and trying again (giving up in {})",
                        time::human(w.limit.saturating_sub(start.elapsed()))
                    ));
                }
                w.store
                    .wait_change(w.key, w.poll + time::jitter(w.poll / 4));
                continue;
            }
        };
        if state.generation != w.generation && state.status != Status::Passing {
            break WaitEnd::Moved {
                generation: state.generation,
            };
        }
        let fixer = match (state.status, state.fixer) {
            (Status::Passing, _) => {
                break WaitEnd::Fixed {
                    by: state.fixed_by,
                    fix: state.fix.filter(|f| f.generation == w.generation),
                };
            }
            (Status::Fixing, Some(f)) => f,
            _ => break WaitEnd::Broken,
        };
        if fixer.registered && w.store.fixer_gone(w.key, state.generation) {
            // Re-read: a fixer that just finished marks the state before it lets the lock go.
            match w.store.read(w.key) {
                Read::Found { state: again, .. }
                    if again.generation == state.generation && again.status == Status::Fixing =>
                {
                    break WaitEnd::FixerDied(fixer);
                }
                _ => continue,
            }
        }
        let lease = (state.generation, fixer.heartbeat);
        // A holder that runs is alive whatever its lease says (a clock step): no silence.
        let running = fixer.registered && w.store.fixer_running(w.key, state.generation);
        if last_lease != Some(lease) || running {
            last_lease = Some(lease);
            lease_seen_at = Instant::now();
        } else if lease_seen_at.elapsed() >= w.stale_after {
            break WaitEnd::FixerSilent(fixer, lease);
        }
        let waited = start.elapsed();
        if waited >= w.limit {
            break WaitEnd::TimedOut;
        }
        if last_progress.is_none_or(|t| t.elapsed() >= progress_every) {
            last_progress = Some(Instant::now());
            let fixing_for = Duration::from_millis(time::now().saturating_sub(fixer.since));
            say::progress(format!(
                "waiting for `{}` to fix the build (fixing for {}, since {}); waited {}, giving up in {}",
                fixer.agent,
                time::human(fixing_for),
                time::rfc3339(fixer.since),
                time::human(waited),
                time::human(w.limit - waited),
            ));
        }
        let until_silent = w.stale_after.saturating_sub(lease_seen_at.elapsed());
        let nap = poll
            .min(w.limit - waited)
            .min(progress_every)
            .min(until_silent.max(Duration::from_millis(1)));
        w.store.wait_change(w.key, nap + time::jitter(nap / 8));
    };
    say::progress_done();
    end
}

/// This agent stops waiting on `key` (it gave up, was interrupted, or goes to take the fix): it
/// leaves the waiters, so that `buildlock status` tells the truth. Best effort.
pub fn leave(ctx: &Context, key: &str, base: &str) {
    let event = Event::Unwait {
        agent: ctx.agent.clone(),
        pid: ctx.agent().pid,
    };
    // A signal may be what made us leave: leave anyway, but never wait long for the lock.
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = ctx.store.apply(key, base, &event, ctx.policy(), None, &|| {
        Instant::now() > deadline
    });
}
