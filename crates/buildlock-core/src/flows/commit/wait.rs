//! Bounded waiting for a fix: sleeps until the key's state changes (the store wakes it: a bell
//! with the local backend), shows who fixes and for how long, and ends as soon as the build is
//! fixed, the role is given up, or the fixer dies or goes silent.
//!
//! Between changes a waiter costs nothing: it wakes when a step that changes who fixes what rings
//! the store's bell, when its fixer's process exits, to show progress (every few seconds), and
//! when a deadline comes (the fixer's silence, the wait's limit). It polls only where nothing can
//! wake it (every 100 ms), or every `BUILDLOCK_POLL` when that is set.
//!
//! Silence is judged on our own monotonic clock: the fixer's lease (generation, heartbeat) that
//! did not move for a whole `stale_after` while we watched. No clocks of two hosts are compared.

use std::time::{Duration, Instant};

use crate::flows::context::Context;
use crate::os::process::Process;
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
        /// How many agents waited for this fix with us (the herd that now retries).
        herd: usize,
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
    /// The longest sleep between two looks (`BUILDLOCK_POLL`); by default as long as nothing
    /// is due where changes wake us, else 100 ms.
    pub poll: Option<Duration>,
    pub parent: Option<u32>,
}

pub fn wait_for_fix(w: &Waiting<'_>) -> WaitEnd {
    crate::os::fault::point("wait");
    // Watch before the first look, so that a change in between wakes us.
    let woken = w.store.watch(w.key);
    let start = Instant::now();
    let mut herd = 0;
    let mut last_lease: Option<(u64, Millis)> = None;
    let mut lease_seen_at = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let progress_every = if say::stderr_is_terminal() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let poll = w.poll.unwrap_or(if woken {
        // Progress, silence and the limit bound each sleep below.
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(100)
    });
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
                    herd,
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
                let nap = poll.min(progress_every);
                w.store
                    .wait_change(w.key, None, nap + time::jitter(nap / 4));
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
                    herd,
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
        if crate::store::elector_dead(&fixer) {
            // Elected, and gone before it could register (killed, or it stopped on an error).
            break WaitEnd::FixerDied(fixer);
        }
        herd = state.waiters.len();
        let lease = (state.generation, fixer.heartbeat);
        if last_lease != Some(lease) {
            last_lease = Some(lease);
            lease_seen_at = Instant::now();
        } else if lease_seen_at.elapsed() >= w.stale_after {
            // A holder that runs is alive whatever its lease says (a clock step): no silence
            // yet; look again in a second.
            if !(fixer.registered && w.store.fixer_running(w.key, state.generation)) {
                break WaitEnd::FixerSilent(fixer, lease);
            }
            lease_seen_at = Instant::now()
                .checked_sub(w.stale_after.saturating_sub(Duration::from_secs(1)))
                .unwrap_or_else(Instant::now);
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
        // The holder's exit wakes us too (a registered fixer that dies is replaced at once), or,
        // before it registers, the elected process's.
        let holder = match fixer.pid.filter(|_| fixer.registered) {
            Some(pid) => Some(Process {
                pid,
                host: fixer.host.clone(),
                start: fixer.start,
                token: None,
            }),
            None => fixer.elector.clone(),
        };
        w.store
            .wait_change(w.key, holder.as_ref(), nap + time::jitter(nap / 8));
    };
    say::progress_done();
    end
}

/// Before a herd of waiters retries at once: a pause of up to 4 ms per other waiter (at most a
/// second), drawn at random, so that their retries (each a `git commit`, a hook and a check)
/// come one after another instead of all at one instant on the same cores, where the last
/// waiters to wake would queue behind the first ones' retries. A signal cuts it short.
pub fn stagger(herd: usize) {
    let spread = (Duration::from_millis(4) * herd.saturating_sub(1).min(250) as u32)
        .min(Duration::from_secs(1));
    let until = Instant::now() + time::jitter(spread);
    while signals::pending().is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The fixer we waited for died or went silent, and every waiter noticed at the same instant.
/// One of them is enough to take over (and to run its check to do so): the first live waiter
/// on record goes at once; the others wait until the state moves, that waiter ends, or
/// `limit` passes. `Some((generation, agent))` when another agent took over meanwhile (a newer
/// generation whose fixer is not known dead): wait for that one, no check run needed. `None`:
/// commit again now. `me` is this waiter's (agent, pid) as on record.
pub fn taken_over(
    store: &dyn Store,
    key: &str,
    generation: u64,
    me: (&str, u32),
    limit: Duration,
) -> Option<(u64, String)> {
    store.watch(key);
    let Read::Found { state, .. } = store.read(key) else {
        return None;
    };
    let host = crate::os::process::hostname();
    let first = state
        .waiters
        .iter()
        .find(|w| w.host == host && crate::os::process::running(w.pid))?;
    if (first.agent.as_str(), first.pid) == me {
        return None;
    }
    let first_agent = first.agent.clone();
    let first = Process {
        pid: first.pid,
        host,
        start: crate::os::process::start_time(first.pid),
        token: None,
    };
    // Its retry failed differently (another key, with `match = "signature"`): it fixes that
    // one, and nobody takes this one over unless we do.
    let fixing_elsewhere = || {
        store.all().iter().any(|(_, s)| {
            s.key != key
                && s.status == Status::Fixing
                && s.fixer.as_ref().is_some_and(|f| f.agent == first_agent)
        })
    };
    let deadline = Instant::now() + limit;
    loop {
        let Read::Found { state, .. } = store.read(key) else {
            return None;
        };
        if state.generation != generation || state.status != Status::Fixing {
            let fixer = state.fixer.filter(|_| state.status == Status::Fixing)?;
            let dead = crate::store::elector_dead(&fixer)
                || (fixer.registered && store.fixer_gone(key, state.generation));
            return (state.generation > generation && !dead)
                .then_some((state.generation, fixer.agent));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let gone = !crate::os::process::is_live(&first)
            || !crate::os::process::running(first.pid)
            || fixing_elsewhere();
        if left.is_zero() || gone || signals::pending().is_some() {
            return None;
        }
        store.wait_change(key, Some(&first), left.min(Duration::from_secs(1)));
    }
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
