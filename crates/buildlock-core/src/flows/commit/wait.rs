//! Bounded waiting for a fix: sleeps until the key's state changes (the store wakes it: a bell
//! with the local backend), shows who fixes and for how long, and ends as soon as the build is
//! fixed, the role is given up, or the fixer dies or goes silent.
//!
//! Between changes a waiter costs nothing: it wakes when a step that changes who fixes what rings
//! the store's bell, when its fixer's process exits, to show progress (every few seconds), and
//! when a deadline comes (the fixer's silence, the wait's limit). It polls only where nothing can
//! wake it (every 100 ms), or every `BUILDLOCK_POLL` when that is set.
//!
//! A look that follows a nap which merely ran out (no ring, no exit of the fixer) reads only the
//! fixer's sign of life where the store keeps it apart (`Store::sign_of_life`), not the state,
//! which lists every waiter: so a waiter's periodic work does not grow with the number of
//! waiters. The state is read whole after every wake-up that may have changed it, and at least
//! every [`READ_WHOLE_EVERY`] besides.
//!
//! Silence is judged on our own monotonic clock: the fixer's lease (generation, heartbeat) that
//! did not move for a whole `stale_after` while we watched. No clocks of two hosts are compared.
//!
//! A silent fixer is outwaited: when the wait's own limit comes shortly before the fixer's lease
//! runs out (within one more such wait), while that lease has not moved since the wait began and
//! no running process holds the role (a fixer by hand whose session died, a stopped one), the
//! wait goes on until the lease runs out, says so, and ends as [`WaitEnd::FixerSilent`], so that
//! the caller takes over. So a wait lasts at most twice its limit, and never more than
//! `stale_after` past it (the lease runs out at most that long after we first saw it); it ends
//! as [`WaitEnd::TimedOut`] as soon as the fixer shows a sign of life. Without this, a waiter
//! whose waits add up to a little less than `stale_after` gives up just before the dead fixer
//! could be replaced. A lease that runs out long after the wait is not waited for: the waiter
//! gives up at its limit, as before.

use std::time::{Duration, Instant};

use crate::flows::context::Context;
use crate::os::process::Process;
use crate::os::time::{self, Millis};
use crate::os::{say, signals};
use crate::protocol::state::{Event, Fix, Fixer, KeyState, Status};
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
    /// the generation moved on. `fix` is the fix that ended ours, when it was fixed (a waiter
    /// that lacks its commit takes it before anything else).
    Moved {
        generation: u64,
        fix: Option<Fix>,
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

/// The longest a waiter goes on the fixer's sign of life alone without reading the state whole.
pub const READ_WHOLE_EVERY: Duration = Duration::from_secs(60);

pub fn wait_for_fix(w: &Waiting<'_>) -> WaitEnd {
    crate::os::fault::point("wait");
    // Watch before the first look, so that a change in between wakes us.
    let woken = w.store.watch(w.key);
    let mut watch = Watch::new(w, woken);
    let end = loop {
        if let Some(end) = watch.look() {
            break end;
        }
    };
    say::progress_done();
    end
}

/// One wait for a fix, between two looks: what it saw of the fixer's lease and when.
struct Watch<'w, 'a> {
    w: &'w Waiting<'a>,
    start: Instant,
    /// The wait's limit: `w.limit`, or, outwaiting a silent fixer, when its lease runs out.
    limit: Duration,
    /// The first lease seen in this wait: the fixer is silent while it is still the one.
    first_lease: Option<(u64, Millis)>,
    /// The silent fixer's lease being outwaited past `w.limit` (see the module's doc).
    outwaiting: Option<(u64, Millis)>,
    herd: usize,
    last_lease: Option<(u64, Millis)>,
    lease_seen_at: Instant,
    last_progress: Option<Instant>,
    progress_every: Duration,
    poll: Duration,
    /// The state as last read whole, and when.
    whole: Option<(KeyState, Instant)>,
    /// The last nap may have changed the state (a ring, the fixer's exit, a signal).
    woken: bool,
}

impl<'w, 'a> Watch<'w, 'a> {
    fn new(w: &'w Waiting<'a>, woken: bool) -> Self {
        let poll = w.poll.unwrap_or(if woken {
            // Progress, silence and the limit bound each sleep below.
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(100)
        });
        Watch {
            w,
            start: Instant::now(),
            limit: w.limit,
            first_lease: None,
            outwaiting: None,
            herd: 0,
            last_lease: None,
            lease_seen_at: Instant::now(),
            last_progress: None,
            progress_every: if say::stderr_is_terminal() {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            },
            poll,
            whole: None,
            woken: true,
        }
    }
}

impl Watch<'_, '_> {
    /// One look at the key, then a nap until something may have changed; `Some` when the wait
    /// is over.
    fn look(&mut self) -> Option<WaitEnd> {
        let w = self.w;
        if let Some(signal) = signals::pending() {
            return Some(WaitEnd::Signal(signal));
        }
        if w.parent
            .is_some_and(|p| p != crate::os::process::parent_id())
        {
            return Some(WaitEnd::ParentGone);
        }
        let state = match self.quick_look() {
            Some(state) => state,
            None => {
                let state = match w.store.read(w.key) {
                    Read::Missing => {
                        return Some(WaitEnd::Fixed {
                            by: None,
                            fix: None,
                            herd: self.herd,
                        });
                    }
                    Read::Damaged(_) => return Some(WaitEnd::Broken),
                    Read::Found { state, .. } => state,
                    Read::Unreachable(why) => return self.unreachable(&why),
                };
                self.whole = Some((state.clone(), Instant::now()));
                state
            }
        };
        // The fix that ended the episode we waited on: its own, or a takeover's (a later
        // generation); never an older one.
        let fix = state.fix.filter(|f| f.generation >= w.generation);
        if state.generation != w.generation && state.status != Status::Passing {
            return Some(WaitEnd::Moved {
                generation: state.generation,
                fix,
            });
        }
        let fixer = match (state.status, state.fixer) {
            (Status::Passing, _) => {
                return Some(WaitEnd::Fixed {
                    by: state.fixed_by,
                    fix,
                    herd: self.herd,
                });
            }
            (Status::Fixing, Some(f)) => f,
            _ => return Some(WaitEnd::Broken),
        };
        if fixer.registered && w.store.fixer_gone(w.key, state.generation) {
            // Re-read: a fixer that just finished marks the state before it lets the lock go.
            return match w.store.read(w.key) {
                Read::Found { state: again, .. }
                    if again.generation == state.generation && again.status == Status::Fixing =>
                {
                    Some(WaitEnd::FixerDied(fixer))
                }
                _ => None,
            };
        }
        if crate::store::elector_dead(&fixer) {
            // Elected, and gone before it could register (killed, or it stopped on an error).
            return Some(WaitEnd::FixerDied(fixer));
        }
        self.herd = state.waiters.len();
        if let Some(lease) = self.silent(state.generation, &fixer) {
            return Some(WaitEnd::FixerSilent(fixer, lease));
        }
        let lease = (state.generation, fixer.heartbeat);
        self.first_lease.get_or_insert(lease);
        if let Some(outwaited) = self.outwaiting {
            if outwaited != lease {
                say::progress_done();
                say::say(format!(
                    "the fixer `{}` renewed its lease: it is alive; not waiting for it to run out",
                    fixer.agent
                ));
                return Some(WaitEnd::TimedOut);
            }
            if self.start.elapsed() >= self.limit {
                // Its lease ran out (on this machine's clock, which the local store's lease
                // rule uses too): take over.
                return Some(WaitEnd::FixerSilent(fixer, lease));
            }
        }
        let waited = self.start.elapsed();
        if waited >= self.limit && !self.outwait(lease, &fixer, waited) {
            return Some(WaitEnd::TimedOut);
        }
        let waited = self.start.elapsed();
        self.show_progress(&fixer, waited);
        self.nap(&fixer, waited);
        None
    }

    /// The state as last read whole with the fixer's latest sign of life folded in, when nothing
    /// may have changed it since (see the module's doc); `None`: read it whole.
    fn quick_look(&self) -> Option<KeyState> {
        if self.woken {
            return None;
        }
        let (state, read_at) = self.whole.as_ref()?;
        if read_at.elapsed() >= READ_WHOLE_EVERY || state.status != Status::Fixing {
            return None;
        }
        let agent = &state.fixer.as_ref()?.agent;
        let heartbeat = self.w.store.sign_of_life(agent)?;
        let mut state = state.clone();
        if let Some(heartbeat) = heartbeat {
            state.sign_of_life(agent, heartbeat);
        }
        Some(state)
    }

    /// The store could not be read: keep trying, and say so. Time we could not look does not
    /// count as silence: the silence clock starts again at the next successful read.
    fn unreachable(&mut self, why: &str) -> Option<WaitEnd> {
        let w = self.w;
        let first = self.last_lease.is_some();
        self.last_lease = None;
        if self.start.elapsed() >= self.limit {
            return Some(WaitEnd::TimedOut);
        }
        if first
            || self
                .last_progress
                .is_none_or(|t| t.elapsed() >= self.progress_every)
        {
            self.last_progress = Some(Instant::now());
            say::progress(format!(
                "{why}; still waiting for the fix and trying again (giving up in {})",
                time::human(self.limit.saturating_sub(self.start.elapsed()))
            ));
        }
        let nap = self.poll.min(self.progress_every);
        w.store
            .wait_change(w.key, None, nap + time::jitter(nap / 4));
        self.woken = true;
        None
    }

    /// The fixer's lease `(generation, heartbeat)` when it did not move for `stale_after` and
    /// its holder does not run.
    fn silent(&mut self, generation: u64, fixer: &Fixer) -> Option<(u64, Millis)> {
        let w = self.w;
        let lease = (generation, fixer.heartbeat);
        if self.last_lease != Some(lease) {
            self.last_lease = Some(lease);
            self.lease_seen_at = Instant::now();
        } else if self.lease_seen_at.elapsed() >= w.stale_after {
            // A holder that runs is alive whatever its lease says (a clock step): no silence
            // yet; look again in a second.
            if !(fixer.registered && w.store.fixer_running(w.key, generation)) {
                return Some(lease);
            }
            self.lease_seen_at = Instant::now()
                .checked_sub(w.stale_after.saturating_sub(Duration::from_secs(1)))
                .unwrap_or_else(Instant::now);
        }
        None
    }

    /// The wait's limit came (`waited` so far) and the fixer's lease is `lease`: whether to
    /// outwait a silent fixer whose lease runs out within one more `w.limit` (see the module's
    /// doc), saying so. Its lease runs out at the earlier of a whole `stale_after` of silence on
    /// our own clock and, with the local store (whose lease rule is this machine's wall clock),
    /// its heartbeat plus `stale_after`.
    fn outwait(&mut self, lease: (u64, Millis), fixer: &Fixer, waited: Duration) -> bool {
        let w = self.w;
        let silent_throughout = self.first_lease == Some(lease) && self.last_lease == Some(lease);
        if self.outwaiting.is_some()
            || !silent_throughout
            || (fixer.registered && w.store.fixer_running(w.key, lease.0))
        {
            return false;
        }
        let by_us = w.stale_after.saturating_sub(self.lease_seen_at.elapsed());
        let stale_ms = Millis::try_from(w.stale_after.as_millis()).unwrap_or(Millis::MAX);
        let now = time::now();
        let by_clock = (w.store.backend() == "local" && fixer.heartbeat <= now).then(|| {
            Duration::from_millis(fixer.heartbeat.saturating_add(stale_ms).saturating_sub(now))
        });
        let left = by_clock.map_or(by_us, |c| c.min(by_us));
        if left > w.limit {
            // Not shortly: the lease runs out long after our wait; it decides for a later try.
            return false;
        }
        self.outwaiting = Some(lease);
        self.limit = waited + left;
        let runs_out = now.saturating_add(Millis::try_from(left.as_millis()).unwrap_or(0));
        say::progress_done();
        say::say(format!(
            "the fixer `{}` has been silent since {} (no sign of life: its lease was not \
             renewed); waiting until its lease runs out at {} (in {}) to take over",
            fixer.agent,
            time::rfc3339(fixer.heartbeat),
            time::rfc3339(runs_out),
            time::human(left),
        ));
        true
    }

    fn show_progress(&mut self, fixer: &Fixer, waited: Duration) {
        if self
            .last_progress
            .is_none_or(|t| t.elapsed() >= self.progress_every)
        {
            self.last_progress = Some(Instant::now());
            let fixing_for = Duration::from_millis(time::now().saturating_sub(fixer.since));
            let then = if self.outwaiting.is_some() {
                "its lease runs out (then taking over) in"
            } else {
                "giving up in"
            };
            say::progress(format!(
                "waiting for `{}` to fix the build (fixing for {}, since {}); waited {}, {then} {}",
                say::inert(&fixer.agent),
                time::human(fixing_for),
                time::rfc3339(fixer.since),
                time::human(waited),
                time::human(self.limit.saturating_sub(waited)),
            ));
        }
    }

    /// Sleeps until the key changes, the fixer's process exits, or the next thing falls due
    /// (progress, silence, the limit).
    fn nap(&mut self, fixer: &Fixer, waited: Duration) {
        let w = self.w;
        let until_silent = w.stale_after.saturating_sub(self.lease_seen_at.elapsed());
        let nap = self
            .poll
            .min(self.limit.saturating_sub(waited))
            .min(self.progress_every)
            .min(until_silent.max(Duration::from_millis(1)));
        // The holder's exit wakes us too (a registered fixer that dies is replaced at once), or,
        // before it registers, the elected process's: when it is that very process of ours to
        // watch (not one of another host or container, whose pid names another process here).
        let holder = match fixer.pid.filter(|_| fixer.registered) {
            Some(pid) => Some(Process {
                pid,
                host: fixer.host.clone(),
                start: fixer.start,
                token: None,
                pid_space: None,
            }),
            None => fixer.elector.clone(),
        }
        .filter(crate::os::process::is_live);
        self.woken = w
            .store
            .wait_for_change(w.key, holder.as_ref(), nap + time::jitter(nap / 8));
    }
}

/// Before a herd of waiters retries at once: a pause drawn at random within
/// [`stagger_spread`], so that their retries (each a `git commit`, a hook and a check) come one
/// after another instead of all at one instant on the same cores. A signal cuts it short.
pub fn stagger(herd: usize) {
    let spread = stagger_spread(herd);
    let until = Instant::now() + time::jitter(spread);
    while signals::pending().is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The spread of a herd's retries: [`STAGGER_PER_WAITER`] per other waiter, at most
/// [`STAGGER_MAX`]. It grows with the herd (it was capped at one second, which put any herd past
/// 250 into that second): 384 waiters spread over 0.19 s, 10,000 over 5 s. It only has to keep
/// the herd from landing at one instant: 384 retries of a cheap check (the hook's part about
/// 1 ms of CPU, the check's the rest) already take 0.4–0.5 s of 2 cores, so a wider spread
/// only made the last retry later (1 ms per waiter: the slowest of 384 at 0.47–0.59 s; 0.5 ms:
/// 0.42–0.52 s, at load 24).
pub fn stagger_spread(herd: usize) -> Duration {
    let others = u32::try_from(herd.saturating_sub(1)).unwrap_or(u32::MAX);
    STAGGER_PER_WAITER.saturating_mul(others).min(STAGGER_MAX)
}

/// What each other waiter adds to the spread of a herd's retries (see [`stagger`]).
pub const STAGGER_PER_WAITER: Duration = Duration::from_micros(500);
/// The longest spread of a herd's retries (10,000 waiters).
pub const STAGGER_MAX: Duration = Duration::from_secs(10);

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
    // The first waiter we can see alive and running: with its start time and pid space on
    // record, a waiter that died and whose pid now names another process is not it, nor is
    // another container's. A record of an older version (neither on record) is judged as
    // before, by its pid on this host, with the start time it has now.
    let first = state.waiters.iter().find_map(|w| {
        let mut p = w.process();
        if p.start.is_none() && p.pid_space.is_none() {
            p.start = crate::os::process::start_time(p.pid);
        }
        let seen = p.host == crate::os::process::hostname()
            && crate::os::process::is_live(&p)
            && crate::os::process::running(p.pid);
        seen.then_some((w, p))
    });
    let (first_waiter, first) = first?;
    if (first_waiter.agent.as_str(), first_waiter.pid) == me {
        return None;
    }
    let first_agent = first_waiter.agent.clone();
    // Its retry failed differently (another key, with `match = "signature"`): it fixes that
    // one, and nobody takes this one over unless we do.
    let fixing_elsewhere = || {
        store.all().unwrap_or_default().iter().any(|(_, s)| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_spread_grows_with_the_herd_up_to_its_bound() {
        assert_eq!(stagger_spread(0), Duration::ZERO);
        assert_eq!(stagger_spread(1), Duration::ZERO, "alone: no pause");
        assert_eq!(stagger_spread(385), Duration::from_millis(192));
        assert_eq!(
            stagger_spread(10_001),
            Duration::from_secs(5),
            "no one-second cap"
        );
        assert_eq!(stagger_spread(usize::MAX), STAGGER_MAX);
    }
}
