//! The store: where the per-key state lives, behind one interface with two backends.
//!
//! - [`local`]: state files under an OS advisory lock in the git common dir (one machine, all of
//!   its worktrees);
//! - [`registry`]: agents, claims and check slots (local: one machine's worktrees);
//! - [`remote`]: the same states as chains of commits under `refs/buildlock/` on a git remote,
//!   moved by compare-and-swap pushes (agents on several machines).
//!
//! The flows (hook, commit-retry, `buildlock ci`, the operator's commands) talk to [`Store`] and
//! never ask which backend they have: it is chosen once, where the context is built. Every
//! decision is the pure state machine's (`protocol::state`); a store only feeds it what it
//! observed and persists what it returns, atomically.

use std::time::Duration;

use crate::os::process::Process;
use crate::os::time::Millis;
use crate::protocol::state::{Event, KeyState, Lease, Outcome};

pub mod error;
pub mod finding;
pub mod history;
pub mod home;
pub mod local;
mod probe;
pub mod registry;
pub mod remote;

pub use crate::protocol::ledger::Totals;
pub use error::StoreError;
/// The remote's transaction gives up with this (carried in `anyhow`, and recovered typed by
/// `StoreError::from`) until it speaks [`StoreError`] itself.
pub(crate) use error::StoreError::Interrupted;
pub use finding::Finding;
pub use history::Entry;
pub use home::Home;

/// What reading a state file found.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per read, moved once: boxing buys nothing
pub enum Read {
    Missing,
    Found {
        base: String,
        state: KeyState,
    },
    Damaged(String),
    /// The store could not be reached (the remote backend's network): nothing is known; the
    /// message says why, in git's words.
    Unreachable(String),
}

impl Read {
    /// The state to act on: missing is passing, damaged is broken with nobody fixing.
    pub fn state(&self, key: &str) -> KeyState {
        match self {
            Read::Missing => KeyState::passing(key),
            Read::Found { state, .. } => state.clone(),
            Read::Damaged(_) | Read::Unreachable(_) => KeyState::unknown(key),
        }
    }
}

/// The limits the state machine applies.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub stale_after: Duration,
    pub max_fix_attempts: u32,
    /// `coordination.max_fix_time`: the longest one fixer holds a key (a backend that compares
    /// no clocks does not apply it; see `remote`).
    pub max_fix_time: Duration,
}

/// A duration as the state machine's milliseconds (saturating).
pub(crate) fn millis(d: Duration) -> Millis {
    d.as_millis().min(u128::from(u64::MAX)) as Millis
}

/// The result of one step under the election lock.
#[derive(Debug)]
pub struct Applied {
    pub before: KeyState,
    pub after: KeyState,
    pub outcome: Outcome,
    /// Why the state file could not be read, when it could not.
    pub damaged: Option<String>,
}

/// Holding a key's fixer role for this process: while it is held, the fixer is alive. Dropping it
/// lets the role's liveness go (with the local backend, the kernel frees the fixer lock; a
/// crashed process frees it just the same).
#[must_use = "the fixer role is held until this is dropped"]
pub struct FixerHold {
    _held: Box<dyn Send>,
}

impl FixerHold {
    pub fn new(held: impl Send + 'static) -> FixerHold {
        FixerHold {
            _held: Box::new(held),
        }
    }
}

/// A base key's states as the hook's hot path reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaseView {
    /// The base's pass counter (see `Observed::passes`): read before a check, it tells whether a
    /// failure became stale while the check ran.
    pub passes: u64,
    /// The base's keys on record: every open one, and the last few passing ones.
    pub keys: Vec<KeyState>,
    /// Why the state could not be read, when it could not.
    pub damaged: Option<String>,
}

/// One coordination domain's store: the per-key states, and what a flow needs around them.
///
/// A backend is chosen once, where the context is built (`flows::context`); flows hold an
/// `Arc<dyn Store>` and never ask which one they have. Implementations are safe to use from
/// several processes at once: [`Store::apply`] is the only read-decide-write, and it is atomic.
///
/// The methods, by concern:
/// - **state**: [`read`](Store::read), [`read_base`](Store::read_base), [`apply`](Store::apply),
///   [`all`](Store::all), [`totals`](Store::totals), [`history`](Store::history),
///   [`record`](Store::record);
/// - **liveness** of the fixer: [`write_lease`](Store::write_lease),
///   [`renew_roles`](Store::renew_roles),
///   [`hold_fixer`](Store::hold_fixer), [`fixer_gone`](Store::fixer_gone),
///   [`fixer_running`](Store::fixer_running);
/// - **waking** a waiter: [`watch`](Store::watch), [`wait_change`](Store::wait_change),
///   [`wait_for_change`](Store::wait_for_change), [`sign_of_life`](Store::sign_of_life);
/// - **describing** the store to people: [`backend`](Store::backend),
///   [`location`](Store::location), [`diagnose`](Store::diagnose), [`fix_ref`](Store::fix_ref).
///
/// Reads never fail (what they could not read is in their answer); the steps that write return a
/// [`StoreError`], whose [`StoreError::Interrupted`] tells a caller that was told to stop from a
/// coordination failure.
pub trait Store: Send + Sync {
    // State.

    /// A key's state, without any lock.
    fn read(&self, key: &str) -> Read;

    /// [`Store::read`] for the fixer's own looks while its fix runs (its heartbeat). A backend
    /// whose mark of the fix needs what the waiters wrote (remote: their records, to credit
    /// them) fetches it here, a little at each look, rather than all at once in the mark, when
    /// every waiter waits for it.
    fn read_as_fixer(&self, key: &str) -> Read {
        self.read(key)
    }

    /// A base key's states, without any lock: the hook's hot path, one small read however many
    /// keys are on record.
    fn read_base(&self, base: &str) -> BaseView;

    /// One atomic read-decide-write step for `key`: reads the state, runs the state machine on
    /// `event` with what it observed, persists the result (the commit point), then does the
    /// bookkeeping (totals, history), which never turns a persisted step into a failure.
    ///
    /// `seen_silent` is the caller's monotonic observation that the fixer's lease did not move
    /// for a whole `stale_after` (see `Observed::seen_silent`). Waiting for the election gives up
    /// with [`StoreError::Interrupted`] as soon as `stop` says so.
    fn apply(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        seen_silent: Option<(u64, Millis)>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Applied, StoreError>;

    /// Every key on record, with its base key. An error when the store could not be read: a
    /// store that cannot be reached is never reported as having nothing on record.
    fn all(&self) -> Result<Vec<(String, KeyState)>, StoreError>;

    /// The running counters of the domain (see `protocol::ledger`).
    fn totals(&self) -> Result<Totals, StoreError>;

    /// The history of events, oldest first.
    fn history(&self) -> Result<Vec<Entry>, StoreError>;

    /// Records an event that changes no state (a fix run started or finished); it counts in the
    /// totals where the ledger says so.
    fn record(&self, entry: Entry) -> Result<(), StoreError>;

    /// [`Store::record`] of `entry`, then [`Store::apply`] of `event` (without a silent
    /// fixer's lease: only a failure reports one), the record written whatever the step's
    /// outcome (a fenced step changes no state). Each goes as it would alone; a backend where
    /// every write is a round trip that wakes every reader (remote) makes them one write, the
    /// record's history entry first. The record's error is said, never returned: the step is
    /// what the caller acts on.
    fn apply_and_record(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        entry: Entry,
        stop: &dyn Fn() -> bool,
    ) -> Result<Applied, StoreError> {
        if let Err(e) = self.record(entry) {
            crate::os::say::warn(format!("could not record in the history: {e:#}"));
        }
        self.apply(key, base, event, policy, None, stop)
    }

    // Liveness of the fixer.

    /// Renews a fixer's lease without the election: only that fixer writes it.
    fn write_lease(&self, key: &str, lease: &Lease) -> Result<(), StoreError>;

    /// One sign of life of `agent`, renewing every role in `roles` (`(key, generation)`) at
    /// `heartbeat`. A backend whose lease is the agent's (local: one lease file per agent)
    /// writes once, however many roles; the default renews each role's lease in turn.
    fn renew_roles(
        &self,
        agent: &str,
        roles: &[(String, u64)],
        heartbeat: Millis,
    ) -> Result<(), StoreError> {
        for (key, generation) in roles {
            let lease = Lease {
                agent: agent.to_owned(),
                generation: *generation,
                heartbeat,
            };
            self.write_lease(key, &lease)?;
        }
        Ok(())
    }

    /// Takes the fixer role of `key`'s `generation` for this process, trying for at most
    /// `timeout`: `Ok(None)` when another process holds it. One hold per generation, so a stopped
    /// fixer of an older generation never blocks the current one.
    fn hold_fixer(
        &self,
        key: &str,
        generation: u64,
        timeout: Duration,
    ) -> Result<Option<FixerHold>, StoreError>;

    /// Whether the fixer that registered a process for `key`'s `generation` has died (its hold is
    /// free). Backends that cannot see a process die answer `false` and rely on the lease.
    fn fixer_gone(&self, key: &str, generation: u64) -> bool;

    /// Whether a process that runs (is not stopped) holds the fixer role of `key`'s
    /// `generation`: such a fixer is alive, whatever the clocks say. Backends that cannot tell
    /// answer `false`.
    fn fixer_running(&self, _key: &str, _generation: u64) -> bool {
        false
    }

    /// Whether this backend applies `coordination.max_fix_time`, which compares the fixer's
    /// election time with the clock now: the remote one does not (no decision there compares
    /// the clocks of two machines).
    fn bounds_fix_time(&self) -> bool {
        true
    }

    // Waking a waiter.

    /// How often a process may look at a key's state without costing anyone anything: a fixer's
    /// heartbeat looks this often, so that it notices at once when its role moved on (local: a
    /// small file read; remote: a round trip, so `remote_poll`).
    fn look_every(&self) -> Duration;

    /// Starts watching `key` for [`Store::wait_change`], before the caller's first look at the
    /// state, so that a change in between is not missed. Whether changes wake the waiter (else
    /// it should look more often).
    fn watch(&self, key: &str) -> bool;

    /// Sleeps until `key`'s state may have changed, `fixer` (the process that holds the fixer
    /// role, when one does) exited, a signal arrived, or `timeout` passed. Callers re-read after
    /// every wake-up.
    fn wait_change(&self, key: &str, fixer: Option<&Process>, timeout: Duration);

    /// [`Store::wait_change`], answering whether something woke it that may have changed the
    /// state (a ring, the fixer's exit, a signal) rather than the timeout alone: a waiter whose
    /// nap merely ran out may look at the fixer's sign of life alone ([`Store::sign_of_life`]).
    /// By default every wake-up may have changed it.
    fn wait_for_change(&self, key: &str, fixer: Option<&Process>, timeout: Duration) -> bool {
        self.wait_change(key, fixer, timeout);
        true
    }

    /// `agent`'s last sign of life, when this backend keeps it apart from the state (local: its
    /// lease file), so that a waiter's periodic look reads that small record instead of the
    /// state, which lists every waiter: `Some(None)` when it has none on record. `None`: not kept
    /// apart (read the state).
    fn sign_of_life(&self, _agent: &str) -> Option<Option<Millis>> {
        None
    }

    // Describing the store.

    /// `"local"` or `"remote"`, for `status --json`.
    fn backend(&self) -> &'static str;

    /// Where the state lives, for people (a directory, or refs on a remote).
    fn location(&self) -> String;

    /// The backend's own health checks for `buildlock doctor`, which prints them in order: the
    /// local backend probes its folders and its locks, the remote one the remote's answers.
    fn diagnose(&self) -> Vec<Finding>;

    /// Where a waiter can fetch the fix commit `commit` of `key` (`BUILDLOCK_FIX_REF`), when the
    /// backend publishes it.
    fn fix_ref(&self, _key: &str, _commit: &str) -> Option<String> {
        None
    }
}

/// Whether `fixer` never registered and the process elected to register it is gone. Only a
/// process of this pid space (same host name, boot and pid namespace) can be seen gone: another
/// host's or container's, or a record without a pid space (older versions), is never judged dead
/// here, and its lease decides (see `os::process::judge`). Both backends feed it to the state
/// machine as `Observed::elector_dead`.
pub fn elector_dead(fixer: &crate::protocol::state::Fixer) -> bool {
    use crate::os::process::{Seen, judge};
    !fixer.registered
        && fixer
            .elector
            .as_ref()
            .is_some_and(|p| judge(p) == Seen::Dead)
}
