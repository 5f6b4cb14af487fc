//! The per-key state machine of the contract, as a pure function.
//!
//! `transition(state, event, observed) -> (state, outcome)` reads no clock, no file and no lock:
//! the store (`store.rs`) feeds it what it observed (the time, whether the fixer lock is free) and
//! persists what it returns. Every row of the contract's table is a unit test below.
//!
//! Guarantees that follow from the shape:
//! - only the agent recorded as fixer can move `fixing` to `passing` (waiters never declare the
//!   build fixed);
//! - an event that carries a generation which is no longer current changes nothing (fencing);
//! - `generation` only grows: elections and resets take `max(own, floor) + 1`, where the floor is
//!   the domain-wide high-water mark, so even a state file lost to damage cannot make it go back.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::os::time::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Broken,
    Fixing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Broken => "broken",
            Status::Fixing => "fixing",
        }
    }
}

pub use crate::os::process::Process;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixer {
    pub agent: String,
    pub pid: u32,
    pub host: String,
    pub since: Millis,
    /// The lease: renewed by every hook run, commit-retry step and heartbeat of the fixer.
    pub heartbeat: Millis,
    /// Failed re-checks since the election.
    pub attempts: u32,
    /// Set when a process holding the key's fixer lock registered itself: from then on a free
    /// fixer lock means the fixer died, and it is replaced at once.
    #[serde(default)]
    pub registered: bool,
    /// The fix command's process group, so that a successor can stop an orphaned fix.
    #[serde(default)]
    pub fix_process: Option<Process>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub key: String,
    pub status: Status,
    pub generation: u64,
    pub fixer: Option<Fixer>,
    /// Signature of the latest failure recorded for this key.
    pub signature: Option<String>,
    /// Failure log of the latest failure recorded for this key.
    pub log: Option<PathBuf>,
    /// Agents waiting for the current fixer, in order of arrival.
    #[serde(default)]
    pub waiters: Vec<String>,
    /// When the status last changed.
    pub changed: Millis,
    /// Who fixed the build last.
    #[serde(default)]
    pub fixed_by: Option<String>,
    /// The fix process of a fixer that was taken over: its successor stops it before fixing.
    #[serde(default)]
    pub orphan_fix: Option<Process>,
}

impl KeyState {
    pub fn passing(key: &str) -> Self {
        KeyState {
            key: key.to_owned(),
            status: Status::Passing,
            generation: 0,
            fixer: None,
            signature: None,
            log: None,
            waiters: Vec::new(),
            changed: 0,
            fixed_by: None,
            orphan_fix: None,
        }
    }

    /// What an unreadable state file stands for: broken, with nobody fixing.
    pub fn unknown(key: &str) -> Self {
        KeyState {
            status: Status::Broken,
            ..Self::passing(key)
        }
    }
}

/// A fixer's lease renewal, written by its heartbeat to a file of its own (one per key and
/// generation), without the election lock: a fixer stopped mid-heartbeat holds no lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub agent: String,
    pub generation: u64,
    pub heartbeat: Millis,
}

impl KeyState {
    /// Folds a lease renewal into the fixer's heartbeat. Fencing: a lease of another agent or
    /// another generation is ignored.
    pub fn renew(&mut self, lease: &Lease) {
        if self.status != Status::Fixing || self.generation != lease.generation {
            return;
        }
        if let Some(f) = self.fixer.as_mut().filter(|f| f.agent == lease.agent) {
            f.heartbeat = f.heartbeat.max(lease.heartbeat);
        }
    }

    /// Whether `agent`, elected in `generation`, is still the fixer.
    pub fn is_fixer(&self, agent: &str, generation: u64) -> bool {
        self.status == Status::Fixing
            && self.generation == generation
            && self.fixer.as_ref().is_some_and(|f| f.agent == agent)
    }
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub pid: u32,
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The check failed for `agent`; the check started at `check_started`.
    Failed {
        agent: Agent,
        signature: String,
        log: PathBuf,
        check_started: Millis,
    },
    /// The check passed for `agent`. `generation` is set when the caller knows the generation it
    /// was elected in (commit-retry's fixer); a stale one changes nothing.
    Passed {
        agent: Agent,
        generation: Option<u64>,
    },
    /// The fixer took the key's fixer lock and, optionally, started its fix command.
    Register {
        agent: String,
        generation: u64,
        fix_process: Option<Process>,
    },
    /// `buildlock release` by `agent`.
    Release { agent: String },
    /// `buildlock reset`.
    Reset,
}

/// What the caller observed just before the transition, under the election lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub now: Millis,
    pub stale_after: Millis,
    pub max_fix_attempts: u32,
    /// Domain-wide generation high-water mark.
    pub generation_floor: u64,
    /// The key's fixer lock is free right now.
    pub fixer_lock_free: bool,
    /// The caller watched the fixer's lease `(generation, heartbeat)` stay unchanged for
    /// `stale_after` on its own monotonic clock.
    pub seen_silent: Option<(u64, Millis)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Live,
    /// The lease ran out: the fixer went silent.
    Stale,
    /// The fixer registered a process and its fixer lock is free: the process died.
    Dead,
}

/// How alive the fixer is. A heartbeat further in the future than one lease is not trusted: a
/// clock that far off would otherwise make a fixer eternal.
pub fn liveness(fixer: &Fixer, generation: u64, seen: &Observed) -> Liveness {
    if fixer.registered && seen.fixer_lock_free {
        return Liveness::Dead;
    }
    if seen.seen_silent == Some((generation, fixer.heartbeat)) {
        return Liveness::Stale;
    }
    let stale = if fixer.heartbeat > seen.now {
        fixer.heartbeat - seen.now > seen.stale_after
    } else {
        seen.now - fixer.heartbeat >= seen.stale_after
    };
    if stale {
        Liveness::Stale
    } else {
        Liveness::Live
    }
}

/// What the agent behind an event is told. The store turns this into history and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent is the new fixer; `replaced` is the fixer it took over from.
    Elected {
        replaced: Option<(Fixer, Liveness)>,
    },
    /// The fixer failed again and keeps the role.
    KeepFixing {
        attempts: u32,
    },
    /// The fixer failed `max_fix_attempts` times and gave the role up: the key is broken.
    GaveUp {
        attempts: u32,
    },
    /// Another agent is fixing; `first` is true when this agent was not yet listed as a waiter.
    Wait {
        fixer: Fixer,
        first: bool,
    },
    /// The failure was seen before the key last became passing (fixed or reset while the check
    /// ran): it says nothing about the build now. Nothing changed; run the check again.
    Stale,
    /// The fixer's check passed: the key is passing again.
    Fixed,
    /// A check passed on a broken key: passing again, nobody had to fix it.
    Recovered,
    /// Nothing changed (a passing check while another agent fixes, or on a passing key).
    Unchanged,
    Renewed,
    Registered,
    Released,
    /// `release` by an agent that is not the fixer.
    NotFixer {
        fixer: Option<Fixer>,
    },
    Reset,
    /// The event carried a generation that is no longer current, or came from an agent that is no
    /// longer the fixer: nothing changed.
    Fenced,
}

pub fn transition(state: &KeyState, event: &Event, seen: &Observed) -> (KeyState, Outcome) {
    let mut next = state.clone();
    let next_generation = state.generation.max(seen.generation_floor) + 1;
    let outcome = match event {
        Event::Failed { check_started, .. }
            if state.status == Status::Passing && state.changed > *check_started =>
        {
            Outcome::Stale
        }
        Event::Failed {
            agent,
            signature,
            log,
            ..
        } => {
            // The fixer's failure is the one on record; a waiter's is only in its own log.
            let is_fixer = state.status == Status::Fixing
                && state.fixer.as_ref().is_some_and(|f| f.agent == agent.id);
            let live = state
                .fixer
                .as_ref()
                .map(|f| liveness(f, state.generation, seen));
            if is_fixer || state.status != Status::Fixing || live != Some(Liveness::Live) {
                next.signature = Some(signature.clone());
                next.log = Some(log.clone());
            }
            match &state.fixer {
                Some(fixer) if state.status == Status::Fixing && fixer.agent == agent.id => {
                    let attempts = fixer.attempts + 1;
                    if attempts >= seen.max_fix_attempts {
                        next.status = Status::Broken;
                        next.fixer = None;
                        next.waiters.clear();
                        next.changed = seen.now;
                        Outcome::GaveUp { attempts }
                    } else {
                        let f = next.fixer.as_mut().expect("fixer present");
                        f.attempts = attempts;
                        f.heartbeat = seen.now;
                        f.pid = agent.pid;
                        f.host = agent.host.clone();
                        Outcome::KeepFixing { attempts }
                    }
                }
                Some(fixer) if state.status == Status::Fixing => {
                    match liveness(fixer, state.generation, seen) {
                        Liveness::Live => {
                            let first = !state.waiters.contains(&agent.id);
                            if first {
                                next.waiters.push(agent.id.clone());
                            }
                            Outcome::Wait {
                                fixer: fixer.clone(),
                                first,
                            }
                        }
                        how => {
                            elect(&mut next, agent, next_generation, seen.now);
                            next.orphan_fix =
                                fixer.fix_process.clone().or(state.orphan_fix.clone());
                            Outcome::Elected {
                                replaced: Some((fixer.clone(), how)),
                            }
                        }
                    }
                }
                _ => {
                    elect(&mut next, agent, next_generation, seen.now);
                    Outcome::Elected { replaced: None }
                }
            }
        }
        Event::Passed { agent, generation } => match state.status {
            Status::Passing => Outcome::Unchanged,
            Status::Broken => {
                to_passing(&mut next, seen.now, None);
                Outcome::Recovered
            }
            Status::Fixing => {
                let is_fixer = state.fixer.as_ref().is_some_and(|f| f.agent == agent.id);
                if is_fixer && generation.is_none_or(|g| g == state.generation) {
                    to_passing(&mut next, seen.now, Some(agent.id.clone()));
                    Outcome::Fixed
                } else if is_fixer {
                    Outcome::Fenced
                } else {
                    Outcome::Unchanged
                }
            }
        },
        Event::Register {
            agent,
            generation,
            fix_process,
        } => match next.fixer.as_mut() {
            Some(f) if state.is_fixer(agent, *generation) => {
                f.registered = true;
                f.heartbeat = seen.now;
                if fix_process.is_some() {
                    f.fix_process = fix_process.clone();
                    // The registering fixer stopped any orphan before starting its own fix.
                    next.orphan_fix = None;
                }
                Outcome::Registered
            }
            _ => Outcome::Fenced,
        },
        Event::Release { agent } => match &state.fixer {
            Some(f) if state.status == Status::Fixing && f.agent == *agent => {
                next.status = Status::Broken;
                next.fixer = None;
                next.waiters.clear();
                next.changed = seen.now;
                Outcome::Released
            }
            other => Outcome::NotFixer {
                fixer: other.clone(),
            },
        },
        Event::Reset => {
            to_passing(&mut next, seen.now, None);
            next.generation = next_generation;
            Outcome::Reset
        }
    };
    (next, outcome)
}

fn elect(next: &mut KeyState, agent: &Agent, generation: u64, now: Millis) {
    next.status = Status::Fixing;
    next.generation = generation;
    next.waiters.clear();
    next.changed = now;
    next.fixer = Some(Fixer {
        agent: agent.id.clone(),
        pid: agent.pid,
        host: agent.host.clone(),
        since: now,
        heartbeat: now,
        attempts: 0,
        registered: false,
        fix_process: None,
    });
}

fn to_passing(next: &mut KeyState, now: Millis, fixed_by: Option<String>) {
    next.status = Status::Passing;
    next.fixer = None;
    next.waiters.clear();
    next.changed = now;
    if fixed_by.is_some() {
        next.fixed_by = fixed_by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Millis = 15 * 60 * 1000;
    const T0: Millis = 1_795_341_600_000;

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            pid: 100,
            host: "box".into(),
        }
    }

    fn seen(now: Millis) -> Observed {
        Observed {
            now,
            stale_after: LEASE,
            max_fix_attempts: 3,
            generation_floor: 0,
            fixer_lock_free: true,
            seen_silent: None,
        }
    }

    fn fail(id: &str) -> Event {
        Event::Failed {
            agent: agent(id),
            signature: "sig".into(),
            log: "/l".into(),
            check_started: 0,
        }
    }

    fn pass(id: &str) -> Event {
        Event::Passed {
            agent: agent(id),
            generation: None,
        }
    }

    fn fixing(id: &str, generation: u64) -> KeyState {
        let (s, _) = transition(
            &KeyState {
                generation: generation - 1,
                ..KeyState::passing("repo")
            },
            &fail(id),
            &seen(T0),
        );
        s
    }

    fn fixer_of(s: &KeyState) -> &str {
        &s.fixer.as_ref().unwrap().agent
    }

    #[test]
    fn passing_fails_elects_with_next_generation() {
        let (s, out) = transition(&KeyState::passing("repo"), &fail("x"), &seen(T0));
        assert_eq!(out, Outcome::Elected { replaced: None });
        assert_eq!(
            (s.status, s.generation, fixer_of(&s)),
            (Status::Fixing, 1, "x")
        );
        assert_eq!(s.signature.as_deref(), Some("sig"));
    }

    #[test]
    fn broken_fails_elects() {
        let broken = KeyState {
            generation: 4,
            ..KeyState::unknown("repo")
        };
        let (s, out) = transition(&broken, &fail("x"), &seen(T0));
        assert_eq!(out, Outcome::Elected { replaced: None });
        assert_eq!((s.status, s.generation), (Status::Fixing, 5));
    }

    #[test]
    fn generation_never_goes_back_below_the_floor() {
        let lost = KeyState::unknown("repo");
        let (s, _) = transition(
            &lost,
            &fail("x"),
            &Observed {
                generation_floor: 9,
                ..seen(T0)
            },
        );
        assert_eq!(s.generation, 10);
    }

    #[test]
    fn fixer_failing_again_keeps_fixing_then_gives_up() {
        let s = fixing("x", 1);
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + 10));
        assert_eq!(out, Outcome::KeepFixing { attempts: 1 });
        assert_eq!(
            s.fixer.as_ref().unwrap().heartbeat,
            T0 + 10,
            "a failure renews the lease"
        );
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + 20));
        assert_eq!(out, Outcome::KeepFixing { attempts: 2 });
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + 30));
        assert_eq!(out, Outcome::GaveUp { attempts: 3 });
        assert_eq!(
            (s.status, s.fixer.is_none(), s.generation),
            (Status::Broken, true, 1)
        );
    }

    #[test]
    fn live_fixer_makes_others_wait_and_lists_them_once() {
        let s = fixing("y", 1);
        let mut live = seen(T0 + 1000);
        live.fixer_lock_free = false;
        let other = Event::Failed {
            agent: agent("x"),
            signature: "other".into(),
            log: "/x".into(),
            check_started: 0,
        };
        let (s, out) = transition(&s, &other, &live);
        assert_eq!(
            s.signature.as_deref(),
            Some("sig"),
            "the fixer's failure stays on record"
        );
        assert!(matches!(out, Outcome::Wait { first: true, ref fixer } if fixer.agent == "y"));
        let (s, out) = transition(&s, &fail("x"), &live);
        assert!(matches!(out, Outcome::Wait { first: false, .. }));
        assert_eq!(
            (s.status, fixer_of(&s), s.generation),
            (Status::Fixing, "y", 1)
        );
        assert_eq!(s.waiters, ["x"]);
    }

    #[test]
    fn unregistered_fixer_is_live_within_its_lease_even_with_free_lock() {
        let s = fixing("y", 1);
        let (_, out) = transition(&s, &fail("x"), &seen(T0 + LEASE - 1));
        assert!(matches!(out, Outcome::Wait { .. }));
    }

    #[test]
    fn stale_fixer_is_taken_over() {
        let s = fixing("y", 1);
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + LEASE));
        match out {
            Outcome::Elected {
                replaced: Some((old, Liveness::Stale)),
            } => assert_eq!(old.agent, "y"),
            other => panic!("expected a takeover, got {other:?}"),
        }
        assert_eq!((fixer_of(&s), s.generation), ("x", 2));
    }

    #[test]
    fn dead_registered_fixer_is_taken_over_at_once() {
        let s = fixing("y", 1);
        let reg = Event::Register {
            agent: "y".into(),
            generation: 1,
            fix_process: None,
        };
        let (s, out) = transition(&s, &reg, &seen(T0));
        assert_eq!(out, Outcome::Registered);
        let mut held = seen(T0 + 1);
        held.fixer_lock_free = false;
        assert!(matches!(
            transition(&s, &fail("x"), &held).1,
            Outcome::Wait { .. }
        ));
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + 1));
        assert!(matches!(
            out,
            Outcome::Elected {
                replaced: Some((_, Liveness::Dead))
            }
        ));
        assert_eq!((fixer_of(&s), s.generation), ("x", 2));
    }

    #[test]
    fn silence_seen_on_a_monotonic_clock_counts_as_stale() {
        let s = fixing("y", 1);
        let hb = s.fixer.as_ref().unwrap().heartbeat;
        let mut obs = seen(T0 + 5);
        obs.seen_silent = Some((1, hb));
        assert!(matches!(
            transition(&s, &fail("x"), &obs).1,
            Outcome::Elected { .. }
        ));
        // An observation of an older lease says nothing about the current one.
        obs.seen_silent = Some((1, hb - 1));
        assert!(matches!(
            transition(&s, &fail("x"), &obs).1,
            Outcome::Wait { .. }
        ));
    }

    #[test]
    fn heartbeat_far_in_the_future_is_not_eternal() {
        let mut s = fixing("y", 1);
        s.fixer.as_mut().unwrap().heartbeat = T0 + 10 * LEASE;
        assert!(matches!(
            transition(&s, &fail("x"), &seen(T0)).1,
            Outcome::Elected { .. }
        ));
        // A little skew is tolerated.
        s.fixer.as_mut().unwrap().heartbeat = T0 + 1000;
        assert!(matches!(
            transition(&s, &fail("x"), &seen(T0)).1,
            Outcome::Wait { .. }
        ));
    }

    #[test]
    fn fixer_passing_fixes() {
        let s = fixing("x", 1);
        let (s, out) = transition(&s, &pass("x"), &seen(T0 + 5));
        assert_eq!(out, Outcome::Fixed);
        assert_eq!(
            (s.status, s.fixed_by.as_deref(), s.generation),
            (Status::Passing, Some("x"), 1)
        );
        assert!(s.waiters.is_empty());
    }

    #[test]
    fn failure_seen_before_the_fix_is_stale() {
        let (fixed, _) = transition(&fixing("x", 1), &pass("x"), &seen(T0 + 500));
        let failed_from = |check_started| Event::Failed {
            agent: agent("y"),
            signature: "s".into(),
            log: "/y".into(),
            check_started,
        };
        let early = failed_from(T0 + 100);
        assert_eq!(
            transition(&fixed, &early, &seen(T0 + 600)),
            (fixed.clone(), Outcome::Stale)
        );
        let late = failed_from(T0 + 501);
        assert!(matches!(
            transition(&fixed, &late, &seen(T0 + 600)).1,
            Outcome::Elected { .. }
        ));
        // Only a passing key makes a failure stale: a broken one is confirmed by it.
        let broken = KeyState {
            changed: T0 + 500,
            ..KeyState::unknown("repo")
        };
        assert!(matches!(
            transition(&broken, &early, &seen(T0 + 600)).1,
            Outcome::Elected { .. }
        ));
    }

    #[test]
    fn fixer_with_old_generation_is_fenced() {
        let s = fixing("x", 3);
        let stale = Event::Passed {
            agent: agent("x"),
            generation: Some(2),
        };
        let (next, out) = transition(&s, &stale, &seen(T0));
        assert_eq!((out, next), (Outcome::Fenced, s.clone()));
        let current = Event::Passed {
            agent: agent("x"),
            generation: Some(3),
        };
        assert_eq!(transition(&s, &current, &seen(T0)).1, Outcome::Fixed);
    }

    #[test]
    fn others_passing_leave_fixing_unchanged() {
        let s = fixing("y", 1);
        let (next, out) = transition(&s, &pass("x"), &seen(T0));
        assert_eq!((out, next), (Outcome::Unchanged, s));
    }

    #[test]
    fn broken_passing_for_anyone_is_passing() {
        let (s, out) = transition(&KeyState::unknown("repo"), &pass("z"), &seen(T0));
        assert_eq!((out, s.status), (Outcome::Recovered, Status::Passing));
    }

    #[test]
    fn passing_stays_passing() {
        let s = KeyState::passing("repo");
        assert_eq!(
            transition(&s, &pass("z"), &seen(T0)),
            (s, Outcome::Unchanged)
        );
    }

    #[test]
    fn release_by_fixer_breaks_and_by_others_is_refused() {
        let s = fixing("x", 1);
        let (next, out) = transition(&s, &Event::Release { agent: "y".into() }, &seen(T0));
        assert!(matches!(out, Outcome::NotFixer { fixer: Some(_) }));
        assert_eq!(next, s);
        let (next, out) = transition(&s, &Event::Release { agent: "x".into() }, &seen(T0));
        assert_eq!(
            (out, next.status, next.fixer),
            (Outcome::Released, Status::Broken, None)
        );
        assert_eq!(next.generation, 1);
    }

    #[test]
    fn reset_from_any_state_is_passing_with_next_generation() {
        for s in [
            KeyState::passing("repo"),
            KeyState::unknown("repo"),
            fixing("x", 4),
        ] {
            let (next, out) = transition(&s, &Event::Reset, &seen(T0));
            assert_eq!((out, next.status), (Outcome::Reset, Status::Passing));
            assert_eq!(next.generation, s.generation + 1);
            assert!(next.fixer.is_none());
        }
    }

    #[test]
    fn leases_renew_only_the_current_fixer() {
        let mut s = fixing("x", 2);
        let lease = |agent: &str, generation, heartbeat| Lease {
            agent: agent.into(),
            generation,
            heartbeat,
        };
        s.renew(&lease("x", 1, T0 + 99));
        s.renew(&lease("y", 2, T0 + 99));
        assert_eq!(
            s.fixer.as_ref().unwrap().heartbeat,
            T0,
            "another generation or agent is fenced off"
        );
        s.renew(&lease("x", 2, T0 + 99));
        assert_eq!(s.fixer.as_ref().unwrap().heartbeat, T0 + 99);
        s.renew(&lease("x", 2, T0 + 50));
        assert_eq!(
            s.fixer.as_ref().unwrap().heartbeat,
            T0 + 99,
            "a lease never goes back"
        );
        assert!(s.is_fixer("x", 2) && !s.is_fixer("x", 1) && !s.is_fixer("y", 2));
    }

    #[test]
    fn taken_over_fixer_changes_nothing() {
        // y is elected, goes silent, x takes over; y comes back.
        let s = fixing("y", 1);
        let (s, _) = transition(&s, &fail("x"), &seen(T0 + LEASE));
        let back = Event::Register {
            agent: "y".into(),
            generation: 1,
            fix_process: None,
        };
        assert_eq!(
            transition(&s, &back, &seen(T0 + LEASE)),
            (s.clone(), Outcome::Fenced)
        );
        let passed = Event::Passed {
            agent: agent("y"),
            generation: Some(1),
        };
        assert_eq!(
            transition(&s, &passed, &seen(T0 + LEASE)),
            (s.clone(), Outcome::Unchanged)
        );
        assert_eq!(fixer_of(&s), "x");
    }

    #[test]
    fn takeover_hands_the_old_fix_process_to_the_successor() {
        let s = fixing("y", 1);
        let proc = Process {
            pid: 7,
            host: "box".into(),
            start: Some(42),
        };
        let reg = Event::Register {
            agent: "y".into(),
            generation: 1,
            fix_process: Some(proc.clone()),
        };
        let (s, _) = transition(&s, &reg, &seen(T0));
        let (s, _) = transition(&s, &fail("x"), &seen(T0 + 1));
        assert_eq!(
            s.orphan_fix,
            Some(proc.clone()),
            "x must stop y's fix first"
        );
        let mine = Process { pid: 8, ..proc };
        let reg = Event::Register {
            agent: "x".into(),
            generation: 2,
            fix_process: Some(mine),
        };
        assert_eq!(transition(&s, &reg, &seen(T0 + 2)).0.orphan_fix, None);
    }

    #[test]
    fn register_records_the_fix_process() {
        let s = fixing("x", 1);
        let proc = Process {
            pid: 7,
            host: "box".into(),
            start: Some(42),
        };
        let reg = Event::Register {
            agent: "x".into(),
            generation: 1,
            fix_process: Some(proc.clone()),
        };
        let (s, _) = transition(&s, &reg, &seen(T0));
        let f = s.fixer.unwrap();
        assert!(f.registered);
        assert_eq!(f.fix_process, Some(proc));
    }
}
