//! The per-key state machine of the contract, as a pure function.
//!
//! `transition(state, event, observed) -> (state, outcome)` reads no clock, no file and no lock:
//! the store feeds it what it observed (the time, whether the fixer lock is free, the base's pass
//! counter) and persists what it returns. Every row of the contract's table is a unit test below.
//!
//! Guarantees that follow from the shape:
//! - only the agent recorded as fixer can move `fixing` to `passing` (waiters never declare the
//!   build fixed);
//! - an event that carries a generation which is no longer current changes nothing (fencing);
//! - `generation` only grows: elections and resets take `max(own, floor) + 1`, where the floor is
//!   the domain-wide high-water mark, so even a state file lost to damage cannot make it go back;
//! - a registered fixer whose fixer lock is free is dead, whoever fails next, the same agent
//!   included: a second fix never starts beside an orphaned one;
//! - no fixer holds a key for longer than `max_fix_time`, alive or not: past it, the next agent
//!   that fails takes over as from a stale fixer (the old fixer is fenced, its fix an orphan);
//! - a failure is stale only when the key became passing after the check started, judged by a
//!   counter of passes read before the check, never by wall-clock times;
//! - a failure the last fix already fixed, on a HEAD without that fix commit, elects nobody.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::time::Millis;

pub use crate::process::Process;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixer {
    pub agent: String,
    /// The live process that holds the role (commit-retry or `buildlock ci` during a fix run),
    /// once one registered; `None` while the role is held by hand (a plain `git commit` flow).
    #[serde(default)]
    pub pid: Option<u32>,
    pub host: String,
    /// The holder's process start time (clock ticks since boot), to tell it from a reused pid.
    #[serde(default)]
    pub start: Option<u64>,
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
    /// The process elected to go on and register (commit-retry or `buildlock ci` with a
    /// `fix.command`): until it registers, its death is the fixer's (a fixer by hand has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elector: Option<Process>,
}

/// An agent waiting for the current fixer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub agent: String,
    pub pid: u32,
    pub host: String,
    /// The waiting process's start time, so that a reused pid is not taken for it (`None` in
    /// records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// The pid space `pid` belongs to (see `process`'s doc); `None` in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_space: Option<String>,
}

impl Waiter {
    /// The waiting process, as a record to judge.
    pub fn process(&self) -> Process {
        Process {
            pid: self.pid,
            host: self.host.clone(),
            start: self.start,
            token: None,
            pid_space: self.pid_space.clone(),
        }
    }
}

/// The last fix of a key: what it fixed and, when known, the commit that fixed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// The fix commit. Recorded by commit-retry or `buildlock ci` after their commit; otherwise
    /// found later from the fixer's HEAD (the first commit after `head_before`).
    pub commit: Option<String>,
    /// The signature of the failure it fixed.
    pub signature: Option<String>,
    /// Every failure signature seen in the generation it ended (the fixer's re-checks and its
    /// waiters'): with `match = "any"` a fixer's re-check may fail differently, and the fix
    /// still fixes what the others hit.
    #[serde(default)]
    pub signatures: Vec<String>,
    pub by: String,
    pub generation: u64,
    /// The fixer's HEAD when its check passed: the fix commit's parent.
    pub head_before: Option<String>,
    /// The fixer's git dir (its worktree's), where its HEAD can be read.
    pub git_dir: Option<PathBuf>,
    /// The `git commit` that ran the fixer's passing check: while it runs (an editor open for the
    /// message, a slow `commit-msg` hook), the fix commit is on its way.
    #[serde(default)]
    pub committer: Option<Process>,
    /// The process that records the fix commit once it is made (commit-retry holding the role,
    /// on whose behalf the passing check ran), so that a waiter waits for the record while that
    /// process lives, and not a moment longer. `None`: nobody will record it (a fix committed by
    /// hand, or `buildlock ci`, which records its commit with the pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<Process>,
    /// Agents already counted as having avoided a fix run thanks to this fix.
    #[serde(default)]
    pub credited: Vec<String>,
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
    /// Agents waiting for the current fixer now, in order of arrival (one leaves when it stops
    /// waiting).
    #[serde(default)]
    pub waiters: Vec<Waiter>,
    /// Every agent told to wait for the current fixer in this generation: each avoided a fix
    /// run of its own if the fix comes.
    #[serde(default)]
    pub waited: Vec<String>,
    /// Every failure signature seen in this generation (bounded), for the fix it ends in.
    #[serde(default)]
    pub signatures: Vec<String>,
    /// When the status last changed.
    pub changed: Millis,
    /// Who fixed the build last.
    #[serde(default)]
    pub fixed_by: Option<String>,
    /// The fix runs of fixers that left the role (taken over, gave up, released, reset): the
    /// next fixer stops them before fixing.
    #[serde(default, deserialize_with = "one_or_many")]
    pub orphan_fix: Vec<Process>,
    /// The base's pass counter when this key last became passing (see [`Observed::passes`]).
    #[serde(default)]
    pub passed: u64,
    /// The last fix.
    #[serde(default)]
    pub fix: Option<Fix>,
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
            waited: Vec::new(),
            signatures: Vec::new(),
            changed: 0,
            fixed_by: None,
            orphan_fix: Vec::new(),
            passed: 0,
            fix: None,
        }
    }

    /// What an unreadable state file stands for: broken, with nobody fixing.
    pub fn unknown(key: &str) -> Self {
        KeyState {
            status: Status::Broken,
            ..Self::passing(key)
        }
    }

    /// The fix commit that fixed this key last, when known.
    pub fn fix_commit(&self) -> Option<&str> {
        self.fix.as_ref().and_then(|f| f.commit.as_deref())
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

    /// Folds in a sign of life of `agent` (its one lease, which covers every role it holds):
    /// renews the fixer's heartbeat when `agent` is the fixer, of whatever generation.
    pub fn sign_of_life(&mut self, agent: &str, heartbeat: Millis) {
        let generation = self.generation;
        self.renew(&Lease {
            agent: agent.to_owned(),
            generation,
            heartbeat,
        });
    }

    /// Whether `agent`, elected in `generation`, is still the fixer.
    pub fn is_fixer(&self, agent: &str, generation: u64) -> bool {
        self.status == Status::Fixing
            && self.generation == generation
            && self.fixer.as_ref().is_some_and(|f| f.agent == agent)
    }
}

/// How many roles (keys it fixes) one agent holds at once in one base key. Past it, the agent's
/// oldest roles are given up (released: broken, nobody fixing; the next agent whose check fails
/// there is elected): an agent that broke that many different things at once fixes the newest,
/// and what it holds costs every one of its runs at most this much.
pub const MAX_ROLES: usize = 16;

/// The roles of `agent` among `keys` beyond [`MAX_ROLES`], to give up: the oldest elections
/// first, a role whose fix runs (registered) only after every role held by hand, and never
/// `keep` (the key it was just elected for).
pub fn roles_over_cap<'a>(keys: &'a [KeyState], agent: &str, keep: &str) -> Vec<&'a str> {
    let mut held: Vec<(bool, Millis, &str)> = keys
        .iter()
        .filter(|k| k.key != keep && k.status == Status::Fixing)
        .filter_map(|k| {
            let f = k.fixer.as_ref().filter(|f| f.agent == agent)?;
            Some((f.registered, f.since, k.key.as_str()))
        })
        .collect();
    // `keep` is one of the MAX_ROLES.
    let over = (held.len() + 1).saturating_sub(MAX_ROLES);
    held.sort();
    held.into_iter().take(over).map(|(_, _, k)| k).collect()
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub pid: u32,
    pub host: String,
    /// `pid`'s start time and pid space, when known (see [`Waiter`]).
    pub start: Option<u64>,
    pub pid_space: Option<String>,
}

/// What a fixer's passing check saw of its own repository, so that its fix commit can be found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixSeen {
    /// HEAD when the check passed (the fix commit's parent); `None` on an unborn branch.
    pub head_before: Option<String>,
    pub git_dir: Option<PathBuf>,
    /// The fix commit itself, when the caller already has it (`buildlock ci` after a fix run).
    pub commit: Option<String>,
    /// The `git commit` process the check ran under, if any.
    pub committer: Option<Process>,
    /// The process that will record the fix commit once it is made, if any (see
    /// [`Fix::recorder`]).
    pub recorder: Option<Process>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The check failed for `agent`.
    Failed {
        agent: Agent,
        signature: String,
        log: PathBuf,
        /// The base's pass counter read before the check ran; `None`: never stale.
        passes_seen: Option<u64>,
        /// The caller found the key's last fix commit and its HEAD does not contain it.
        lacks_fix: Option<String>,
        /// The process (commit-retry, `buildlock ci`) on whose behalf the check ran, if any.
        holder: Option<u32>,
        /// That process, when it runs `fix.command` itself if elected (see [`Fixer::elector`]).
        elector: Option<Process>,
    },
    /// The check passed for `agent`. `generation` is set when the caller knows the generation it
    /// was elected in (commit-retry's fixer); a stale one changes nothing.
    Passed {
        agent: Agent,
        generation: Option<u64>,
        fix: FixSeen,
    },
    /// The fixer of `generation` made its fix commit.
    FixCommitted {
        agent: String,
        generation: u64,
        commit: String,
    },
    /// The fixer took the key's fixer lock (`holder` is that process) and, optionally, started
    /// its fix command.
    Register {
        agent: String,
        generation: u64,
        holder: Process,
        fix_process: Option<Process>,
    },
    /// A waiter stopped waiting (the fix came, it gave up, or it was interrupted).
    Unwait { agent: String, pid: u32 },
    /// `buildlock release` by `agent`.
    Release { agent: String },
    /// `buildlock reset` by `agent`.
    Reset { agent: String },
}

/// What the caller observed just before the transition, atomically with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub now: Millis,
    pub stale_after: Millis,
    pub max_fix_attempts: u32,
    /// The longest one fixer holds a key (from its election, [`Fixer::since`]), alive or not;
    /// `Millis::MAX`: no bound (a backend that does not compare clocks).
    pub max_fix_time: Millis,
    /// Domain-wide generation high-water mark.
    pub generation_floor: u64,
    /// The base's pass counter: how many times any key of this base became passing.
    pub passes: u64,
    /// The key's fixer lock (of the current generation) is free right now.
    pub fixer_lock_free: bool,
    /// The key's fixer lock is held by a process that runs (not stopped): the fixer is alive
    /// whatever its lease says, so no clock step can get it taken over.
    pub fixer_running: bool,
    /// The caller watched the fixer's lease `(generation, heartbeat)` stay unchanged for
    /// `stale_after` on its own monotonic clock.
    pub seen_silent: Option<(u64, Millis)>,
    /// The fixer has not registered and its elector (see [`Fixer::elector`]) is dead.
    pub elector_dead: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Live,
    /// The lease ran out: the fixer went silent.
    Stale,
    /// The fixer registered a process and its fixer lock is free, or the process elected to
    /// register died before it did: the process died.
    Dead,
    /// Alive, but it has held the key for longer than `max_fix_time`: the next failing agent
    /// takes over as from a stale fixer.
    Overtime,
}

/// How alive the fixer is, and whether it may keep the key: a live fixer that has held it for
/// longer than `max_fix_time` is [`Liveness::Overtime`] (dead and stale say more, and win). A
/// heartbeat further in the future than one lease is not trusted, nor an election further in the
/// future than `max_fix_time`: a clock that far off would otherwise make a fixer eternal.
pub fn liveness(fixer: &Fixer, generation: u64, seen: &Observed) -> Liveness {
    match alive(fixer, generation, seen) {
        Liveness::Live if overtime(fixer, seen) => Liveness::Overtime,
        how => how,
    }
}

/// Whether `fixer` has held the key for longer than `max_fix_time`, by the wall clock the store
/// observed (see [`Observed::max_fix_time`]).
fn overtime(fixer: &Fixer, seen: &Observed) -> bool {
    if seen.max_fix_time == Millis::MAX {
        return false;
    }
    if fixer.since > seen.now {
        fixer.since - seen.now > seen.max_fix_time
    } else {
        seen.now - fixer.since >= seen.max_fix_time
    }
}

/// Dead, stale or live, from the fixer lock, the elector and the lease.
fn alive(fixer: &Fixer, generation: u64, seen: &Observed) -> Liveness {
    if fixer.registered && seen.fixer_lock_free {
        return Liveness::Dead;
    }
    if fixer.registered && seen.fixer_running {
        return Liveness::Live;
    }
    if !fixer.registered && fixer.elector.is_some() && seen.elector_dead {
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

/// What the agent behind an event is told. The ledger turns this into history and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent is the new fixer; `replaced` is the fixer it took over from (possibly its own
    /// earlier process, dead), and why (dead, stale, or overtime).
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
    /// Another agent (or another live process of this agent) is fixing; `first` is true when
    /// this agent was not yet listed as a waiter.
    Wait {
        fixer: Fixer,
        first: bool,
    },
    /// The last fix already fixed this failure, and the agent's HEAD does not have the fix
    /// commit: nobody is elected; the agent takes the fix.
    TakeFix {
        commit: String,
        by: String,
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
    Registered,
    /// The fix commit was recorded.
    Committed,
    /// The agent left the waiters.
    Unwaited,
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

/// The state machine: one function per event; `next` starts as a copy of `state`.
pub fn transition(state: &KeyState, event: &Event, seen: &Observed) -> (KeyState, Outcome) {
    let mut next = state.clone();
    let outcome = match event {
        Event::Failed {
            agent,
            signature,
            lacks_fix: Some(commit),
            ..
        } if fix_found(state, signature, commit) => take_fix(&mut next, agent, commit),
        Event::Failed {
            passes_seen: Some(passes),
            ..
        } if state.status == Status::Passing && state.passed > *passes => Outcome::Stale,
        Event::Failed {
            agent,
            signature,
            log,
            holder,
            elector,
            ..
        } => {
            let failure = Failure {
                agent,
                signature,
                log,
                holder: *holder,
                elector,
            };
            failed(state, &mut next, &failure, seen)
        }
        Event::Passed {
            agent,
            generation,
            fix,
        } => passed(state, &mut next, agent, *generation, fix, seen),
        Event::FixCommitted {
            agent,
            generation,
            commit,
        } => fix_committed(&mut next, agent, *generation, commit),
        Event::Register {
            agent,
            generation,
            holder,
            fix_process,
        } => register(
            state,
            &mut next,
            agent,
            *generation,
            holder,
            fix_process,
            seen,
        ),
        Event::Unwait { agent, pid } => unwait(state, &mut next, agent, *pid),
        Event::Release { agent } => release(state, &mut next, agent, seen),
        Event::Reset { .. } => reset(state, &mut next, seen),
    };
    (next, outcome)
}

/// The generation the next election or reset starts.
fn next_generation(state: &KeyState, seen: &Observed) -> u64 {
    state.generation.max(seen.generation_floor) + 1
}

/// Whether a failure on a passing key is one its last fix fixed, and `commit`, which the caller
/// found on the fixer's HEAD but the agent's HEAD lacks, is that fix (or one not recorded yet).
fn fix_found(state: &KeyState, signature: &str, commit: &str) -> bool {
    state.status == Status::Passing
        && state
            .fix
            .as_ref()
            .is_some_and(|f| f.commit.as_ref().is_none_or(|c| c == commit) && f.fixes(signature))
}

/// `Failed` with a fix to take: the agent is credited and told to take `commit`.
fn take_fix(next: &mut KeyState, agent: &Agent, commit: &str) -> Outcome {
    let fix = next.fix.as_mut().expect("fix_found saw it");
    fix.commit = Some(commit.to_owned());
    if !fix.credited.contains(&agent.id) {
        fix.credited.push(agent.id.clone());
    }
    Outcome::TakeFix {
        commit: commit.to_owned(),
        by: fix.by.clone(),
    }
}

/// What [`failed`] needs of an `Event::Failed`.
struct Failure<'a> {
    agent: &'a Agent,
    signature: &'a String,
    log: &'a PathBuf,
    holder: Option<u32>,
    elector: &'a Option<Process>,
}

/// `Failed`, neither a fix to take nor stale: elect, keep fixing, wait, or give up.
fn failed(state: &KeyState, next: &mut KeyState, failure: &Failure, seen: &Observed) -> Outcome {
    let Failure {
        agent,
        signature,
        log,
        holder,
        elector,
    } = *failure;
    let role = role(state, agent, holder, seen);
    if !matches!(role, Role::Other(_)) {
        // The fixer's failure is the one on record; a waiter's is only in its own log.
        next.signature = Some(signature.clone());
        next.log = Some(log.clone());
    }
    let outcome = match role {
        Role::Mine(fixer) => keep_fixing(next, fixer, seen),
        Role::Other(fixer) => wait_for(state, next, fixer, agent),
        Role::Replace(fixer, how) => {
            elect(next, agent, elector, next_generation(state, seen), seen.now);
            orphan(next, Some(fixer));
            Outcome::Elected {
                replaced: Some((fixer.clone(), how)),
            }
        }
        Role::Nobody => {
            elect(next, agent, elector, next_generation(state, seen), seen.now);
            Outcome::Elected { replaced: None }
        }
    };
    if next.status == Status::Fixing
        && !next.signatures.contains(signature)
        && next.signatures.len() < MAX_SIGNATURES
    {
        next.signatures.push(signature.clone());
    }
    outcome
}

/// Who holds the role, as `agent` (whose check ran on behalf of `holder`) sees it.
fn role<'a>(state: &'a KeyState, agent: &Agent, holder: Option<u32>, seen: &Observed) -> Role<'a> {
    let fixing = state
        .fixer
        .as_ref()
        .filter(|_| state.status == Status::Fixing);
    match fixing {
        None => Role::Nobody,
        Some(f) => match liveness(f, state.generation, seen) {
            // Dead is dead, also when the same agent fails again: its orphaned fix is
            // stopped and it is elected anew.
            Liveness::Dead => Role::Replace(f, Liveness::Dead),
            how if f.agent == agent.id => {
                // Another process of this agent holds the role (a second commit-retry
                // of the same agent): it waits for that one unless that one went silent or
                // held the key too long. The fixer's own failure keeps its role, overtime or
                // not: `max_fix_attempts` bounds that.
                let other_process = f.registered && f.pid.is_some() && f.pid != holder;
                match (other_process, how) {
                    (false, _) => Role::Mine(f),
                    (true, Liveness::Live) => Role::Other(f),
                    (true, how) => Role::Replace(f, how),
                }
            }
            Liveness::Live => Role::Other(f),
            how => Role::Replace(f, how),
        },
    }
}

/// The fixer failed again: one more attempt, or it gives up after `max_fix_attempts`.
fn keep_fixing(next: &mut KeyState, fixer: &Fixer, seen: &Observed) -> Outcome {
    let attempts = fixer.attempts + 1;
    if attempts >= seen.max_fix_attempts {
        orphan(next, Some(fixer));
        next.status = Status::Broken;
        next.fixer = None;
        next.waiters.clear();
        next.changed = seen.now;
        Outcome::GaveUp { attempts }
    } else {
        let f = next.fixer.as_mut().expect("fixer present");
        f.attempts = attempts;
        f.heartbeat = seen.now;
        Outcome::KeepFixing { attempts }
    }
}

/// Another agent's live fixer: `agent` waits for it.
fn wait_for(state: &KeyState, next: &mut KeyState, fixer: &Fixer, agent: &Agent) -> Outcome {
    let listed = state
        .waiters
        .iter()
        .any(|w| w.agent == agent.id && w.pid == agent.pid);
    if !listed {
        next.waiters.retain(|w| w.agent != agent.id);
        next.waiters.push(Waiter {
            agent: agent.id.clone(),
            pid: agent.pid,
            host: agent.host.clone(),
            start: agent.start,
            pid_space: agent.pid_space.clone(),
        });
    }
    let first = !state.waited.contains(&agent.id);
    if first {
        next.waited.push(agent.id.clone());
    }
    Outcome::Wait {
        fixer: fixer.clone(),
        first,
    }
}

/// `Passed`: a broken key recovers; the fixer's pass (of its own generation) is the fix.
fn passed(
    state: &KeyState,
    next: &mut KeyState,
    agent: &Agent,
    generation: Option<u64>,
    fix: &FixSeen,
    seen: &Observed,
) -> Outcome {
    match state.status {
        Status::Passing => Outcome::Unchanged,
        Status::Broken => {
            to_passing(next, seen, None);
            Outcome::Recovered
        }
        Status::Fixing => {
            let is_fixer = state.fixer.as_ref().is_some_and(|f| f.agent == agent.id);
            if is_fixer && generation.is_none_or(|g| g == state.generation) {
                to_passing(next, seen, Some(agent.id.clone()));
                next.fix = Some(Fix {
                    commit: fix.commit.clone(),
                    signature: state.signature.clone(),
                    signatures: state.signatures.clone(),
                    by: agent.id.clone(),
                    generation: state.generation,
                    head_before: fix.head_before.clone(),
                    git_dir: fix.git_dir.clone(),
                    committer: fix.committer.clone(),
                    recorder: fix.recorder.clone(),
                    credited: state.waited.clone(),
                });
                Outcome::Fixed
            } else if is_fixer {
                Outcome::Fenced
            } else {
                Outcome::Unchanged
            }
        }
    }
}

/// `FixCommitted`: the fix of `generation` by `agent` records its commit.
fn fix_committed(next: &mut KeyState, agent: &str, generation: u64, commit: &str) -> Outcome {
    match next.fix.as_mut() {
        Some(f) if f.by == agent && f.generation == generation => {
            f.commit = Some(commit.to_owned());
            Outcome::Committed
        }
        _ => Outcome::Fenced,
    }
}

/// `Register`: the fixer of `generation` took its lock as `holder`, maybe with its fix running.
fn register(
    state: &KeyState,
    next: &mut KeyState,
    agent: &str,
    generation: u64,
    holder: &Process,
    fix_process: &Option<Process>,
    seen: &Observed,
) -> Outcome {
    match next.fixer.as_mut() {
        Some(f) if state.is_fixer(agent, generation) => {
            f.registered = true;
            f.pid = Some(holder.pid);
            f.host = holder.host.clone();
            f.start = holder.start;
            f.heartbeat = f.heartbeat.max(seen.now);
            if fix_process.is_some() {
                f.fix_process = fix_process.clone();
                // The registering fixer stopped any orphan before starting its own fix.
                next.orphan_fix.clear();
            }
            Outcome::Registered
        }
        _ => Outcome::Fenced,
    }
}

/// `Unwait`: a waiter leaves the list.
fn unwait(state: &KeyState, next: &mut KeyState, agent: &str, pid: u32) -> Outcome {
    next.waiters.retain(|w| !(w.agent == agent && w.pid == pid));
    if next.waiters.len() == state.waiters.len() {
        Outcome::Unchanged
    } else {
        Outcome::Unwaited
    }
}

/// `Release`: the fixer gives the role up; the key stays broken.
fn release(state: &KeyState, next: &mut KeyState, agent: &str, seen: &Observed) -> Outcome {
    match &state.fixer {
        Some(f) if state.status == Status::Fixing && f.agent == agent => {
            orphan(next, Some(f));
            next.status = Status::Broken;
            next.fixer = None;
            next.waiters.clear();
            next.changed = seen.now;
            Outcome::Released
        }
        other => Outcome::NotFixer {
            fixer: other.clone(),
        },
    }
}

/// `Reset`: passing, in a new generation, with no fix on record.
fn reset(state: &KeyState, next: &mut KeyState, seen: &Observed) -> Outcome {
    orphan(next, state.fixer.as_ref());
    to_passing(next, seen, None);
    next.generation = next_generation(state, seen);
    next.fix = None;
    Outcome::Reset
}

/// A fixer leaves the role (taken over, gave up, released, reset): its fix run, if it has one,
/// is an orphan the next fixer stops, and sees gone, before its own fix starts. Every such run is
/// kept (a few at most), not only the latest: an older one may still be running.
fn orphan(next: &mut KeyState, fixer: Option<&Fixer>) {
    if let Some(p) = fixer.and_then(|f| f.fix_process.clone()) {
        if !next.orphan_fix.contains(&p) {
            next.orphan_fix.push(p);
        }
        let excess = next.orphan_fix.len().saturating_sub(MAX_ORPHANS);
        next.orphan_fix.drain(..excess);
    }
}

const MAX_ORPHANS: usize = 8;

/// Reads `orphan_fix` as written by any version: one process, or a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Process>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Process),
        Many(Vec<Process>),
        Nothing(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
        OneOrMany::Nothing(()) => Vec::new(),
    })
}

/// Failure signatures kept per generation.
const MAX_SIGNATURES: usize = 32;

impl KeyState {
    /// Whether `agent`'s role of `generation` ended in its own fix: its check passed and marked
    /// the key fixed. Not a loss of the role: the fix that did it may still be committing.
    pub fn fixed_by(&self, agent: &str, generation: u64) -> bool {
        self.status == Status::Passing
            && self
                .fix
                .as_ref()
                .is_some_and(|f| f.by == agent && f.generation == generation)
    }
}

impl Fix {
    /// Whether this fix fixed failures with `signature`.
    pub fn fixes(&self, signature: &str) -> bool {
        self.signature.as_deref() == Some(signature)
            || self.signatures.iter().any(|s| s == signature)
    }
}

/// Who holds the role, as a failing agent sees it.
enum Role<'a> {
    Nobody,
    /// This agent's own role (its lease is renewed).
    Mine(&'a Fixer),
    /// A live fixer: wait for it.
    Other(&'a Fixer),
    /// A fixer that died, went silent or held the key past `max_fix_time`: take over.
    Replace(&'a Fixer, Liveness),
}

fn elect(
    next: &mut KeyState,
    agent: &Agent,
    elector: &Option<Process>,
    generation: u64,
    now: Millis,
) {
    next.status = Status::Fixing;
    next.generation = generation;
    next.waiters.clear();
    next.waited.clear();
    next.signatures.clear();
    next.changed = now;
    next.fixer = Some(Fixer {
        agent: agent.id.clone(),
        pid: None,
        host: agent.host.clone(),
        start: None,
        since: now,
        heartbeat: now,
        attempts: 0,
        registered: false,
        fix_process: None,
        elector: elector.clone(),
    });
}

fn to_passing(next: &mut KeyState, seen: &Observed, fixed_by: Option<String>) {
    next.status = Status::Passing;
    next.fixer = None;
    next.waiters.clear();
    next.waited.clear();
    next.signatures.clear();
    next.changed = seen.now;
    next.passed = seen.passes + 1;
    if fixed_by.is_some() {
        next.fixed_by = fixed_by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Millis = 15 * 60 * 1000;
    const MAX_FIX_TIME: Millis = 60 * 60 * 1000;
    const T0: Millis = 1_795_341_600_000;

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            pid: 100,
            host: "box".into(),
            start: None,
            pid_space: None,
        }
    }

    fn seen(now: Millis) -> Observed {
        Observed {
            now,
            stale_after: LEASE,
            max_fix_attempts: 3,
            max_fix_time: MAX_FIX_TIME,
            generation_floor: 0,
            passes: 0,
            fixer_lock_free: true,
            fixer_running: false,
            seen_silent: None,
            elector_dead: false,
        }
    }

    fn failed(id: &str, signature: &str) -> Event {
        Event::Failed {
            agent: agent(id),
            signature: signature.into(),
            log: "/l".into(),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        }
    }

    fn fail(id: &str) -> Event {
        failed(id, "sig")
    }

    fn with(mut e: Event, change: impl FnOnce(&mut Event)) -> Event {
        change(&mut e);
        e
    }

    fn pass(id: &str) -> Event {
        Event::Passed {
            agent: agent(id),
            generation: None,
            fix: FixSeen::default(),
        }
    }

    fn process(pid: u32) -> Process {
        Process {
            pid,
            host: "box".into(),
            start: Some(42),
            token: None,
            pid_space: None,
        }
    }

    fn register(id: &str, generation: u64, holder: u32, fix: Option<Process>) -> Event {
        Event::Register {
            agent: id.into(),
            generation,
            holder: process(holder),
            fix_process: fix,
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

    /// commit-retry elected, gone before it registered (killed, or stopped on an error): with a
    /// `fix.command` it was to run the fix itself, so its death is the fixer's and the next
    /// failure replaces it at once; a fixer by hand (no elector) keeps its lease.
    #[test]
    fn an_elector_that_died_before_registering_is_replaced_at_once() {
        let elected = transition(
            &KeyState::passing("repo"),
            &with(fail("x"), |e| {
                if let Event::Failed { elector, .. } = e {
                    *elector = Some(process(7));
                }
            }),
            &seen(T0),
        )
        .0;
        assert_eq!(elected.fixer.as_ref().unwrap().elector, Some(process(7)));
        let alive = transition(&elected, &fail("y"), &seen(T0 + 1)).1;
        assert!(matches!(alive, Outcome::Wait { .. }), "{alive:?}");
        let dead = Observed {
            elector_dead: true,
            ..seen(T0 + 1)
        };
        let (s, out) = transition(&elected, &fail("y"), &dead);
        assert!(
            matches!(
                out,
                Outcome::Elected {
                    replaced: Some((_, Liveness::Dead))
                }
            ),
            "{out:?}"
        );
        assert_eq!((fixer_of(&s), s.generation), ("y", 2));
        // Registered, the elector no longer counts: the lock says who lives.
        let registered = transition(&elected, &register("x", 1, 7, None), &seen(T0)).0;
        let out = transition(
            &registered,
            &fail("y"),
            &Observed {
                fixer_lock_free: false,
                fixer_running: true,
                ..dead.clone()
            },
        )
        .1;
        assert!(matches!(out, Outcome::Wait { .. }), "{out:?}");
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
        let other = failed("x", "other");
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
        let names: Vec<&str> = s.waiters.iter().map(|w| w.agent.as_str()).collect();
        assert_eq!(names, ["x"]);
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
        let (s, out) = transition(&s, &register("y", 1, 77, None), &seen(T0));
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

    /// A registered fixer whose lock is held by a running process: as alive as can be.
    fn running_fixer(id: &str) -> KeyState {
        let s = fixing(id, 1);
        transition(&s, &register(id, 1, 6, Some(process(7))), &seen(T0 + 1)).0
    }

    fn running(now: Millis) -> Observed {
        Observed {
            fixer_lock_free: false,
            fixer_running: true,
            ..seen(now)
        }
    }

    #[test]
    fn a_fixer_past_max_fix_time_is_taken_over_alive_or_not() {
        let s = running_fixer("y");
        assert_eq!(
            liveness(s.fixer.as_ref().unwrap(), 1, &running(T0 + MAX_FIX_TIME)),
            Liveness::Overtime
        );
        let (next, out) = transition(&s, &fail("x"), &running(T0 + MAX_FIX_TIME));
        match &out {
            Outcome::Elected {
                replaced: Some((old, Liveness::Overtime)),
            } => assert_eq!(old.agent, "y"),
            other => panic!("expected a takeover for overtime, got {other:?}"),
        }
        assert_eq!((next.status, fixer_of(&next)), (Status::Fixing, "x"));
        assert_eq!(next.generation, 2, "a new generation: y is fenced");
        assert_eq!(next.fixer.as_ref().unwrap().since, T0 + MAX_FIX_TIME);
        assert_eq!(
            next.orphan_fix,
            [process(7)],
            "y's fix is an orphan x stops before its own starts"
        );
        // y, fenced, changes nothing any more.
        let y_back = register("y", 1, 6, Some(process(8)));
        assert_eq!(
            transition(&next, &y_back, &running(T0 + MAX_FIX_TIME)).1,
            Outcome::Fenced
        );
        // The history says why.
        let entries = crate::ledger::history_entries("repo", &fail("x"), &out, &s, &next);
        assert!(
            entries
                .iter()
                .any(|e| e["event"] == "takeover" && e["reason"] == "overtime" && e["from"] == "y"),
            "{entries:?}"
        );
        let mut totals = crate::ledger::Totals::default();
        totals.count(&fail("x"), &out, &s, &next);
        assert_eq!((totals.elections, totals.takeovers), (1, 1));
    }

    #[test]
    fn below_max_fix_time_a_live_fixer_keeps_the_key() {
        let s = running_fixer("y");
        for now in [T0 + 1, T0 + MAX_FIX_TIME - 1] {
            let (next, out) = transition(&s, &fail("x"), &running(now));
            assert!(matches!(out, Outcome::Wait { .. }), "{out:?}");
            assert_eq!((fixer_of(&next), next.generation), ("y", 1));
            assert!(next.orphan_fix.is_empty());
            assert_eq!(
                liveness(s.fixer.as_ref().unwrap(), 1, &running(now)),
                Liveness::Live
            );
        }
    }

    #[test]
    fn max_fix_time_is_counted_from_the_election_not_the_lease() {
        // Heartbeats and re-checks renew the lease; they do not extend the role.
        let s = running_fixer("y");
        let own = with(fail("y"), |e| {
            if let Event::Failed { holder, .. } = e {
                *holder = Some(6);
            }
        });
        let (s, out) = transition(&s, &own, &running(T0 + MAX_FIX_TIME - 10));
        assert_eq!(out, Outcome::KeepFixing { attempts: 1 });
        let mut s = s;
        s.renew(&Lease {
            agent: "y".into(),
            generation: 1,
            heartbeat: T0 + MAX_FIX_TIME,
        });
        assert!(matches!(
            transition(&s, &fail("x"), &running(T0 + MAX_FIX_TIME)).1,
            Outcome::Elected {
                replaced: Some((_, Liveness::Overtime))
            }
        ));
    }

    #[test]
    fn the_fixer_itself_past_max_fix_time_keeps_fixing_and_max_fix_attempts_bounds_it() {
        let s = running_fixer("y");
        let own = with(fail("y"), |e| {
            if let Event::Failed { holder, .. } = e {
                *holder = Some(6);
            }
        });
        let late = running(T0 + 2 * MAX_FIX_TIME);
        let (s, out) = transition(&s, &own, &late);
        assert_eq!(out, Outcome::KeepFixing { attempts: 1 });
        // Another process of the same agent does not wait for an overtime holder.
        let other = with(fail("y"), |e| {
            if let Event::Failed { holder, .. } = e {
                *holder = Some(99);
            }
        });
        assert!(matches!(
            transition(&s, &other, &late).1,
            Outcome::Elected {
                replaced: Some((_, Liveness::Overtime))
            }
        ));
    }

    #[test]
    fn dead_and_stale_say_more_than_overtime() {
        let s = running_fixer("y");
        let dead = seen(T0 + 2 * MAX_FIX_TIME); // the fixer lock is free
        assert!(matches!(
            transition(&s, &fail("x"), &dead).1,
            Outcome::Elected {
                replaced: Some((_, Liveness::Dead))
            }
        ));
        let by_hand = fixing("y", 1);
        assert!(matches!(
            transition(&by_hand, &fail("x"), &seen(T0 + 2 * MAX_FIX_TIME)).1,
            Outcome::Elected {
                replaced: Some((_, Liveness::Stale))
            }
        ));
    }

    #[test]
    fn max_fix_time_unbounded_or_a_clock_far_off() {
        // A backend that does not compare clocks turns the bound off.
        let s = running_fixer("y");
        let off = Observed {
            max_fix_time: Millis::MAX,
            ..running(T0 + 100 * MAX_FIX_TIME)
        };
        assert!(matches!(
            transition(&s, &fail("x"), &off).1,
            Outcome::Wait { .. }
        ));
        // An election far in the future (a clock stepped back) does not make a fixer eternal;
        // a little skew is tolerated.
        let mut ahead = s.clone();
        ahead.fixer.as_mut().unwrap().since = T0 + 10 * MAX_FIX_TIME;
        assert!(matches!(
            transition(&ahead, &fail("x"), &running(T0)).1,
            Outcome::Elected {
                replaced: Some((_, Liveness::Overtime))
            }
        ));
        ahead.fixer.as_mut().unwrap().since = T0 + 1000;
        assert!(matches!(
            transition(&ahead, &fail("x"), &running(T0)).1,
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
        // The check of y started when the base had seen 4 passes; x's fix was the 5th.
        let fixed = transition(
            &fixing("x", 1),
            &pass("x"),
            &Observed {
                passes: 4,
                ..seen(T0 + 500)
            },
        )
        .0;
        assert_eq!(fixed.passed, 5);
        let failed_from = |passes_seen| {
            with(failed("y", "s"), |e| {
                if let Event::Failed { passes_seen: f, .. } = e {
                    *f = passes_seen;
                }
            })
        };
        let after = Observed {
            passes: 5,
            ..seen(T0 + 600)
        };
        assert_eq!(
            transition(&fixed, &failed_from(Some(4)), &after),
            (fixed.clone(), Outcome::Stale)
        );
        // Read after the fix, or not read at all (a bounded re-run): the failure counts.
        for passes_seen in [Some(5), None] {
            assert!(matches!(
                transition(&fixed, &failed_from(passes_seen), &after).1,
                Outcome::Elected { .. }
            ));
        }
        // Wall-clock times play no part: a failure whose clock is far behind is not stale.
        let behind = Observed {
            now: T0 - 30_000,
            ..after.clone()
        };
        assert!(matches!(
            transition(&fixed, &failed_from(Some(5)), &behind).1,
            Outcome::Elected { .. }
        ));
        // Only a passing key makes a failure stale: a broken one is confirmed by it.
        let broken = KeyState {
            passed: 5,
            ..KeyState::unknown("repo")
        };
        assert!(matches!(
            transition(&broken, &failed_from(Some(4)), &after).1,
            Outcome::Elected { .. }
        ));
    }

    #[test]
    fn fixer_with_old_generation_is_fenced() {
        let s = fixing("x", 3);
        let stale = Event::Passed {
            agent: agent("x"),
            generation: Some(2),
            fix: FixSeen::default(),
        };
        let (next, out) = transition(&s, &stale, &seen(T0));
        assert_eq!((out, next), (Outcome::Fenced, s.clone()));
        let current = Event::Passed {
            agent: agent("x"),
            generation: Some(3),
            fix: FixSeen::default(),
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
            let (next, out) = transition(&s, &Event::Reset { agent: "op".into() }, &seen(T0));
            assert_eq!((out, next.status), (Outcome::Reset, Status::Passing));
            assert_eq!(next.generation, s.generation + 1);
            assert!(next.fixer.is_none());
        }
    }

    #[test]
    fn an_agent_past_its_roles_gives_up_the_oldest_held_by_hand_first() {
        let role = |i: usize, agent: &str, registered: bool| {
            let mut s = fixing(agent, 1);
            s.key = format!("repo#{i:016x}");
            let f = s.fixer.as_mut().unwrap();
            f.since = T0 + i as Millis;
            f.registered = registered;
            s
        };
        let mut keys: Vec<KeyState> = (0..MAX_ROLES).map(|i| role(i, "x", i == 0)).collect();
        keys.push(role(99, "y", false));
        let newest = format!("repo#{:016x}", MAX_ROLES - 1);
        assert!(
            roles_over_cap(&keys[..MAX_ROLES - 1], "x", "new").is_empty(),
            "within the cap with the new one"
        );
        assert_eq!(
            roles_over_cap(&keys, "x", "new"),
            [format!("repo#{:016x}", 1)],
            "one too many: the oldest held by hand, not the registered one"
        );
        assert_eq!(roles_over_cap(&keys, "x", &newest).len(), 0, "keep counts");
        assert!(roles_over_cap(&keys, "y", "new").is_empty(), "per agent");
        keys.push(role(100, "x", false));
        let given = roles_over_cap(&keys, "x", "new");
        assert_eq!(given.len(), 2);
        assert!(!given.contains(&format!("repo#{:016x}", 0).as_str()));
    }

    #[test]
    fn a_sign_of_life_renews_the_agent_s_role_whatever_its_generation() {
        let mut s = fixing("x", 5);
        let before = s.fixer.as_ref().unwrap().heartbeat;
        s.sign_of_life("y", before + 10);
        assert_eq!(s.fixer.as_ref().unwrap().heartbeat, before, "not its role");
        s.sign_of_life("x", before + 10);
        assert_eq!(s.fixer.as_ref().unwrap().heartbeat, before + 10);
        s.sign_of_life("x", before + 5);
        assert_eq!(
            s.fixer.as_ref().unwrap().heartbeat,
            before + 10,
            "never back"
        );
        let mut broken = KeyState::unknown("repo");
        broken.sign_of_life("x", before + 20);
        assert!(broken.fixer.is_none());
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
        let back = register("y", 1, 5, None);
        assert_eq!(
            transition(&s, &back, &seen(T0 + LEASE)),
            (s.clone(), Outcome::Fenced)
        );
        let passed = Event::Passed {
            agent: agent("y"),
            generation: Some(1),
            fix: FixSeen::default(),
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
        let (s, _) = transition(&s, &register("y", 1, 6, Some(process(7))), &seen(T0));
        let (s, _) = transition(&s, &fail("x"), &seen(T0 + 1));
        assert_eq!(s.orphan_fix, [process(7)], "x must stop y's fix first");
        let reg = register("x", 2, 9, Some(process(8)));
        assert!(transition(&s, &reg, &seen(T0 + 2)).0.orphan_fix.is_empty());
    }

    #[test]
    fn every_fix_run_left_behind_is_an_orphan_to_stop() {
        // y's fix runs; y gives up or is released: its run is still an orphan to stop.
        let running = |who: &str, pid| {
            let s = fixing(who, 1);
            transition(
                &s,
                &register(who, 1, pid, Some(process(pid + 1))),
                &seen(T0),
            )
            .0
        };
        let released = transition(
            &running("y", 6),
            &Event::Release { agent: "y".into() },
            &seen(T0 + 1),
        )
        .0;
        assert_eq!(released.orphan_fix, [process(7)]);
        let reset = transition(
            &running("y", 6),
            &Event::Reset { agent: "op".into() },
            &seen(T0 + 1),
        )
        .0;
        assert_eq!(reset.orphan_fix, [process(7)]);
        // Taken over twice before anyone stopped anything: both runs are kept.
        let s = running("y", 6);
        let (s, _) = transition(&s, &fail("x"), &seen(T0 + LEASE));
        let (s, _) = transition(
            &s,
            &register("x", 2, 8, Some(process(9))),
            &seen(T0 + LEASE),
        );
        assert!(
            s.orphan_fix.is_empty(),
            "x stopped y's run before registering its own"
        );
        let mut s = s;
        s.orphan_fix.push(process(7)); // as if x had not seen it go
        let (s, _) = transition(&s, &fail("z"), &seen(T0 + 3 * LEASE));
        assert_eq!(s.orphan_fix, [process(7), process(9)]);
    }

    #[test]
    fn register_records_the_holder_and_the_fix_process() {
        let s = fixing("x", 1);
        assert_eq!(
            s.fixer.as_ref().unwrap().pid,
            None,
            "the elected hook is no holder"
        );
        let (s, out) = transition(&s, &register("x", 1, 6, Some(process(7))), &seen(T0));
        assert_eq!(out, Outcome::Registered);
        let f = s.fixer.unwrap();
        assert!(f.registered);
        assert_eq!((f.pid, f.start), (Some(6), Some(42)));
        assert_eq!(f.fix_process, Some(process(7)));
    }

    #[test]
    fn dead_is_dead_also_for_the_same_agent() {
        // x's commit-retry registered, then was killed: its lock is free. x fails again (a new
        // commit-retry): it is elected anew, and must stop the orphaned fix first.
        let s = fixing("x", 1);
        let (s, _) = transition(&s, &register("x", 1, 6, Some(process(7))), &seen(T0));
        let again = with(failed("x", "sig"), |e| {
            if let Event::Failed { holder: f, .. } = e {
                *f = Some(99);
            }
        });
        let (s, out) = transition(&s, &again, &seen(T0 + 1));
        assert!(matches!(
            out,
            Outcome::Elected { replaced: Some((ref old, Liveness::Dead)) } if old.agent == "x"
        ));
        assert_eq!((fixer_of(&s), s.generation), ("x", 2));
        assert_eq!(s.orphan_fix, [process(7)]);
    }

    #[test]
    fn a_second_process_of_the_fixer_agent_waits_for_the_first() {
        let s = fixing("x", 1);
        let (s, _) = transition(&s, &register("x", 1, 6, None), &seen(T0));
        let mut held = seen(T0 + 1);
        held.fixer_lock_free = false;
        // The holder's own re-check: keeps fixing.
        let own = with(failed("x", "sig"), |e| {
            if let Event::Failed { holder: f, .. } = e {
                *f = Some(6);
            }
        });
        assert_eq!(
            transition(&s, &own, &held).1,
            Outcome::KeepFixing { attempts: 1 }
        );
        // Another commit-retry of the same agent: waits, nothing else changes.
        let other = with(failed("x", "sig"), |e| {
            if let Event::Failed { holder: f, .. } = e {
                *f = Some(99);
            }
        });
        let (next, out) = transition(&s, &other, &held);
        assert!(matches!(out, Outcome::Wait { first: true, .. }));
        assert_eq!((next.generation, fixer_of(&next)), (1, "x"));
        // ... unless the holder went silent (stopped): then the agent takes over from it.
        let (next, out) = transition(
            &s,
            &other,
            &Observed {
                fixer_lock_free: false,
                ..seen(T0 + LEASE)
            },
        );
        assert!(matches!(
            out,
            Outcome::Elected {
                replaced: Some((_, Liveness::Stale))
            }
        ));
        assert_eq!(next.generation, 2);
    }

    #[test]
    fn a_running_lock_holder_is_live_whatever_its_lease_says() {
        // A clock step makes the lease look half an hour old (or ahead); the holder still runs.
        // (A step past `max_fix_time` is another matter: by the clock, it held the key that
        // long, and is taken over safely, fenced, its fix stopped first.)
        let s = fixing("y", 1);
        let (s, _) = transition(&s, &register("y", 1, 6, None), &seen(T0));
        for now in [T0 + 2 * LEASE, T0 - 2 * LEASE] {
            let running = Observed {
                fixer_lock_free: false,
                fixer_running: true,
                ..seen(now)
            };
            assert!(matches!(
                transition(&s, &fail("x"), &running).1,
                Outcome::Wait { .. }
            ));
        }
        // Stopped (SIGSTOP): the lease decides again.
        let stopped = Observed {
            fixer_lock_free: false,
            ..seen(T0 + LEASE)
        };
        assert!(matches!(
            transition(&s, &fail("x"), &stopped).1,
            Outcome::Elected { .. }
        ));
    }

    #[test]
    fn the_fixer_by_hand_keeps_its_role_past_its_lease() {
        // Not registered (a plain `git commit` flow): its own failure proves it is alive.
        let s = fixing("x", 1);
        let (s, out) = transition(&s, &fail("x"), &seen(T0 + 2 * LEASE));
        assert_eq!(out, Outcome::KeepFixing { attempts: 1 });
        assert_eq!(s.fixer.unwrap().heartbeat, T0 + 2 * LEASE);
    }

    fn fixed_with_commit(commit: &str) -> KeyState {
        let s = fixing("x", 1);
        let (s, _) = transition(&s, &fail("y"), &seen(T0 + 1));
        let passed = Event::Passed {
            agent: agent("x"),
            generation: Some(1),
            fix: FixSeen {
                head_before: Some("base".into()),
                git_dir: Some("/wt/x".into()),
                commit: None,
                committer: None,
                recorder: None,
            },
        };
        let (s, out) = transition(&s, &passed, &seen(T0 + 2));
        assert_eq!(out, Outcome::Fixed);
        let fix = s.fix.clone().unwrap();
        assert_eq!(
            (
                fix.commit,
                fix.signature.as_deref(),
                fix.head_before.as_deref()
            ),
            (None, Some("sig"), Some("base"))
        );
        assert_eq!(fix.credited, ["y"], "the waiter avoided a fix run");
        let committed = Event::FixCommitted {
            agent: "x".into(),
            generation: 1,
            commit: commit.into(),
        };
        let (s, out) = transition(&s, &committed, &seen(T0 + 3));
        assert_eq!(out, Outcome::Committed);
        assert_eq!(s.fix_commit(), Some(commit));
        s
    }

    #[test]
    fn a_fixed_failure_on_a_head_without_the_fix_takes_the_fix() {
        let s = fixed_with_commit("f1x");
        let lacks = |signature: &str, commit: &str| {
            with(failed("z", signature), |e| {
                if let Event::Failed { lacks_fix, .. } = e {
                    *lacks_fix = Some(commit.into());
                }
            })
        };
        let (next, out) = transition(&s, &lacks("sig", "f1x"), &seen(T0 + 4));
        assert_eq!(
            out,
            Outcome::TakeFix {
                commit: "f1x".into(),
                by: "x".into()
            }
        );
        assert_eq!(next.status, Status::Passing, "nobody elected");
        assert_eq!(next.fix.unwrap().credited, ["y", "z"]);
        // Another signature, or a tree that has the fix: a new breakage.
        for other in [lacks("other", "f1x"), fail("z"), lacks("sig", "0ther")] {
            assert!(matches!(
                transition(&s, &other, &seen(T0 + 4)).1,
                Outcome::Elected { replaced: None }
            ));
        }
    }

    #[test]
    fn a_fix_fixes_every_failure_of_its_generation() {
        // match = "any": the fixer's re-check fails differently before it passes; the waiter's
        // failure (the first signature) is still one that fix fixed.
        let s = fixing("x", 1);
        let (s, _) = transition(&s, &failed("x", "second"), &seen(T0 + 1));
        let (s, _) = transition(&s, &failed("y", "third"), &seen(T0 + 2));
        let passed = Event::Passed {
            agent: agent("x"),
            generation: Some(1),
            fix: FixSeen::default(),
        };
        let (s, _) = transition(&s, &passed, &seen(T0 + 3));
        let fix = s.fix.clone().unwrap();
        assert_eq!(fix.signature.as_deref(), Some("second"));
        for sig in ["sig", "second", "third"] {
            assert!(fix.fixes(sig), "{sig}");
        }
        assert!(!fix.fixes("other"));
        let lacks = with(failed("z", "sig"), |e| {
            if let Event::Failed { lacks_fix, .. } = e {
                *lacks_fix = Some("f1x".into());
            }
        });
        assert!(matches!(
            transition(&s, &lacks, &seen(T0 + 4)).1,
            Outcome::TakeFix { .. }
        ));
    }

    #[test]
    fn a_fix_commit_found_by_a_waiter_is_recorded() {
        let s = fixed_with_commit("f1x");
        let mut unrecorded = s.clone();
        unrecorded.fix.as_mut().unwrap().commit = None;
        let e = with(failed("z", "sig"), |e| {
            if let Event::Failed { lacks_fix, .. } = e {
                *lacks_fix = Some("f1x".into());
            }
        });
        let (next, out) = transition(&unrecorded, &e, &seen(T0 + 4));
        assert!(matches!(out, Outcome::TakeFix { .. }));
        assert_eq!(next.fix_commit(), Some("f1x"));
    }

    #[test]
    fn a_fix_commit_is_recorded_only_by_its_fixer() {
        let s = fixed_with_commit("f1x");
        for (agent, generation) in [("y", 1), ("x", 2)] {
            let e = Event::FixCommitted {
                agent: agent.into(),
                generation,
                commit: "evil".into(),
            };
            assert_eq!(transition(&s, &e, &seen(T0)), (s.clone(), Outcome::Fenced));
        }
    }

    #[test]
    fn a_waiter_that_stops_waiting_leaves_the_list() {
        let s = fixing("x", 1);
        let (s, _) = transition(&s, &fail("y"), &seen(T0 + 1));
        assert_eq!(s.waiters.len(), 1);
        let gone = Event::Unwait {
            agent: "y".into(),
            pid: 100,
        };
        let (next, out) = transition(&s, &gone, &seen(T0 + 2));
        assert_eq!((out, next.waiters.len()), (Outcome::Unwaited, 0));
        // Another process of y (pid 101) is not the one listed.
        let other = Event::Unwait {
            agent: "y".into(),
            pid: 101,
        };
        assert_eq!(transition(&s, &other, &seen(T0 + 2)).1, Outcome::Unchanged);
    }
}
