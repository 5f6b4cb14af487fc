//! The remote backend: each key's state is a chain of commits under `refs/buildlock/` on a git
//! remote, moved only by compare-and-swap pushes. Agents on machines that share no disk (the jobs
//! of a CI matrix) coordinate through the repository's own remote, with no server of ours.
//!
//! The parts, one topic each:
//! - [`refs`]: the ref layout (a key's chain, its fix refs, the doctor's probe) and reading it back;
//! - [`chain`]: one state commit, written and decoded in process (git2);
//! - [`git`]: the transport, the user's own `git` for every remote operation;
//! - `read`: one read of a key (or of every key), decoded;
//! - `transaction`: the read–decide–push compare-and-swap engine;
//! - `prune`: compaction of long chains and pruning of old keys and fix refs;
//! - [`claims`]: the claims registry (claims, agents, the claim queue) in one ref, for every
//!   machine;
//! - `waiters`: each waiter's own ref, so that joining the waiters never races the fixer;
//! - `shared`: one `ls-remote` serves the hook's claims guard and its base read;
//! - `probe`: `buildlock doctor`'s checks of the remote;
//! - [`deliver`]: `buildlock ci`'s delivery of a fix commit to a branch (`ci.deliver`);
//! - this module: the [`Store`] implementation, which feeds the pure state machine what the
//!   remote can observe.
//!
//! Guarantees:
//! - **One winner.** A transition reads the key's tip, runs the pure state machine, writes a new
//!   state commit whose parent is the tip (a fast-forward) and pushes it with
//!   `--force-with-lease=<ref>:<tip>` (empty: must not exist) and `--atomic`. Of N agents that read
//!   the same tip exactly one push lands; the others re-read and decide again (with jittered
//!   backoff, within `coordination.wait`). Every commit carries a nonce, so a push can never
//!   "succeed" by naming an oid the ref already has; a push whose report was lost is recognised
//!   by re-reading: the tip is then our own oid.
//! - **Fast-forward only.** No ref is ever rewound, so a server that denies non-fast-forward
//!   updates (for every ref, by a hook) accepts every update. A chain is bounded by *compaction*:
//!   once it is [`compact_after`] commits long, the next transition starts a new root commit
//!   (recording the old tip in a `Buildlock-Previous:` trailer) under the next epoch name, and
//!   deletes the old epoch, in one atomic push leased on the old tip. There is never a moment
//!   with no ref for the key, and a racing agent's lease on the old epoch fails, so no update is
//!   lost. Readers take the highest epoch: an agent that read "no such key" long ago and creates
//!   epoch 1 next to a newer epoch is ignored by everyone (and fenced at its next step).
//! - **Bounded.** The end of a breakage prunes (with leases) passing keys untouched for
//!   [`prune_after`], or for [`crowded_after`] beyond the newest [`KEEP_NEWEST`], and
//!   breakages abandoned for [`prune_after`]; fix refs of a key are replaced by the newest one
//!   (the rule and why: `prune`).
//! - **No wall clocks compared.** The remote cannot see a process die ([`Store::fixer_gone`] is
//!   always false) and the wall-clock lease rule is switched off: a fixer is stale only when a
//!   waiter watched its lease (generation, heartbeat) not move for `stale_after` on its own
//!   monotonic clock (`Observed::seen_silent`). A heartbeat is a state commit; its value is only
//!   compared for equality. For the same reason `coordination.max_fix_time` does not apply here:
//!   a fixer's election time was read on its machine's clock, and judging how long it has held
//!   the key would compare that clock with the waiter's. What bounds a remote fixer instead is
//!   its own process: each fix run is stopped after `fix.timeout` (on the fixer's own monotonic
//!   clock) and counted by the re-check, so a live fixer gives the role up after
//!   `max_fix_attempts` runs; a silent one is taken over after `stale_after`.
//! - **Never fails open.** A transient failure (connection refused, timeout, a server that hung
//!   up) is retried with backoff within `coordination.wait`; a permanent one (permission,
//!   authentication, no such remote, a server hook that declines) fails at once; both carry git's
//!   own message. A read that cannot reach the remote says so ([`Read::Unreachable`]).
//! - **The user's git.** Every remote operation runs their `git` (see [`git`]); state commits are
//!   written in process into the local object store and carry buildlock's own identity.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Applied, BaseView, FixerHold, Policy, Read, Store, Totals};
use crate::os::process::Process;
use crate::os::say;
use crate::os::time::{self, Millis};
use crate::protocol::ledger::history_entries;
use crate::protocol::state::{Event, KeyState, Lease, Observed, Outcome, transition};

pub mod chain;
pub mod claims;

mod probe;
mod prune;
mod read;
pub mod refs;
pub(crate) mod shared;
#[cfg(test)]
mod testing;
mod transaction;
mod waiters;

pub use prune::{KEEP_NEWEST, compact_after, crowded_after, prune_after};
pub use refs::{FIX_PREFIX, PROBE_PREFIX, STATE_PREFIX, fix_ref_name, key_path};

use crate::os::remote_git::{Failure, Git};
use read::View;
use transaction::Step;

/// How far back `buildlock log` looks in one chain.
const WALK_LIMIT: usize = 10_000;

pub struct RemoteStore {
    git: Git,
    git_dir: PathBuf,
    url: String,
    /// `coordination.wait`: how long a transition keeps trying.
    wait: Duration,
    /// `coordination.remote_poll`.
    poll: Duration,
    /// `coordination.stale_after`: bounds a heartbeat's tries.
    stale_after: Duration,
    /// When reads began to fail, to say so once and then now and then.
    unreachable: Mutex<Option<(Instant, Instant)>>,
}

impl RemoteStore {
    /// One step of the state machine on `key`, decided on the state it commits to, with
    /// `record`'s history entry in the same state commit when there is one (see
    /// [`with_record`]); then the pruning the step may call for.
    #[allow(clippy::too_many_arguments)]
    fn decided(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        seen_silent: Option<(u64, Millis)>,
        record: Option<&serde_json::Value>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Applied, super::StoreError> {
        let records = ends_a_wait(event);
        let done = self.transact_reading(key, base, self.wait, records, stop, |before, view| {
            let elector_dead = before
                .fixer
                .as_ref()
                .is_some_and(crate::store::elector_dead);
            let seen = observed(view, policy, seen_silent, time::now(), elector_dead);
            let step = joined(key, event, decide(key, event, before, &seen));
            match record {
                Some(entry) => with_record(step, before, view, entry),
                None => step,
            }
        })?;
        if prune::prunes_after(&done.result) {
            self.prune(&key_path(key));
        }
        Ok(Applied {
            before: done.before,
            after: done.after,
            outcome: done.result,
            damaged: done.damaged,
        })
    }

    /// Why the remote could not be read, naming it and in git's words: never "nothing there".
    fn unread(&self, f: Failure) -> super::StoreError {
        match f {
            Failure::Transient(m) => super::StoreError::Unreachable(format!(
                "cannot read the remote `{}` ({}): {m}",
                self.git.remote, self.url
            )),
            Failure::Permanent(m) => super::StoreError::Refused(format!(
                "cannot read the remote `{}` ({}): {m}",
                self.git.remote, self.url
            )),
        }
    }

    /// The store on remote `remote` of the repository at `git_dir`. Fails when git is missing or
    /// the remote does not exist (the caller names the config line).
    pub fn new(
        git_dir: &Path,
        remote: &str,
        wait: Duration,
        poll: Duration,
        stale_after: Duration,
    ) -> Result<RemoteStore, String> {
        let url = chain::open(git_dir)
            .ok()
            .and_then(|r| {
                r.find_remote(remote)
                    .ok()
                    .and_then(|rem| rem.url().map(str::to_owned))
            })
            .ok_or_else(|| {
                format!(
                    "there is no git remote named `{remote}` in this repository (`git remote -v` lists \
                     them): add it (`git remote add {remote} URL`) or set coordination.remote to one that exists"
                )
            })?;
        let git = Git::new(git_dir, remote)?;
        Ok(RemoteStore {
            git,
            git_dir: git_dir.to_owned(),
            url,
            wait,
            poll,
            stale_after,
            unreachable: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn repo(&self) -> Result<git2::Repository> {
        chain::open(&self.git_dir)
    }
}

/// What the remote can observe for a transition, from what `view` read.
fn observed(
    view: &View,
    policy: Policy,
    seen_silent: Option<(u64, Millis)>,
    now: Millis,
    elector_dead: bool,
) -> Observed {
    Observed {
        now,
        // The remote never compares clocks: only a waiter's monotonic observation
        // (`seen_silent`) makes a fixer stale.
        stale_after: Millis::MAX,
        max_fix_attempts: policy.max_fix_attempts,
        // Nor `max_fix_time`: the fixer's `since` is another machine's clock (see the module).
        max_fix_time: Millis::MAX,
        generation_floor: view.prev().map_or(0, |d| d.state.generation),
        passes: view.base_passes,
        fixer_lock_free: false,
        fixer_running: false,
        seen_silent,
        elector_dead,
    }
}

/// The state machine's step for `event`: written (with its history and counts) when it changes
/// the state, kept otherwise.
fn decide(key: &str, event: &Event, before: &KeyState, seen: &Observed) -> Step<Outcome> {
    let (mut after, outcome) = transition(before, event, seen);
    // Another machine cannot read the fixer's git dir: only a recorded fix commit means
    // anything there (`buildlock ci` and commit-retry record it).
    if let Some(fix) = after.fix.as_mut() {
        fix.git_dir = None;
        fix.committer = None;
    }
    if after == *before {
        return Step::Keep(outcome);
    }
    let history = history_entries(key, event, &outcome, before, &after);
    let (ev, out, bef, aft) = (
        event.clone(),
        outcome.clone(),
        before.clone(),
        after.clone(),
    );
    Step::Write {
        result: outcome,
        after,
        history,
        count: Some(Box::new(move |t: &mut Totals| {
            t.count(&ev, &out, &bef, &aft)
        })),
    }
}

/// Whether `event` most likely ends the waiters' wait: a fixer's pass (it names its
/// generation). Its transaction reads their records at once (see `transact_reading`).
fn ends_a_wait(event: &Event) -> bool {
    matches!(
        event,
        Event::Passed {
            generation: Some(_),
            ..
        }
    )
}

/// A decision to wait (a failure against a live fixer) goes to the waiter's own ref, not to the
/// key's state: see `waiters`.
fn joined(key: &str, event: &Event, step: Step<Outcome>) -> Step<Outcome> {
    match step {
        Step::Write {
            result: result @ Outcome::Wait { .. },
            after,
            history,
            count,
        } => match waiters::Record::of(key, after.generation, event) {
            Some(record) => Step::Join {
                result,
                after,
                record,
            },
            None => Step::Write {
                result,
                after,
                history,
                count,
            },
        },
        other => other,
    }
}

/// A record of an event that changes no state: the history entry and its counts, written only
/// where the key has a state on the remote.
fn recorded(before: &KeyState, view: &View, entry: &serde_json::Value) -> Step<()> {
    if view.current.is_none() {
        return Step::Keep(());
    }
    let e = entry.clone();
    Step::Write {
        result: (),
        after: before.clone(),
        history: vec![entry.clone()],
        count: Some(Box::new(move |t: &mut Totals| t.count_record(&e))),
    }
}

/// `step` with the record `entry` in the same state commit: its history entry (before the
/// step's own: it happened first) and its counts added to what the step writes, or written
/// alone where the step keeps the state (as [`recorded`] would). A decision to join the waiters
/// goes to the waiter's own ref, as without a record, and the record with it is left out: no
/// waiter records a fix run.
fn with_record<R>(
    step: Step<R>,
    before: &KeyState,
    view: &View,
    entry: &serde_json::Value,
) -> Step<R> {
    match step {
        Step::Keep(result) => match recorded(before, view, entry) {
            Step::Write {
                after,
                history,
                count,
                ..
            } => Step::Write {
                result,
                after,
                history,
                count,
            },
            _ => Step::Keep(result),
        },
        Step::Write {
            result,
            after,
            mut history,
            count,
        } => {
            history.insert(0, entry.clone());
            let e = entry.clone();
            Step::Write {
                result,
                after,
                history,
                count: Some(Box::new(move |t: &mut Totals| {
                    if let Some(count) = count {
                        count(t);
                    }
                    t.count_record(&e);
                })),
            }
        }
        join @ Step::Join { .. } => join,
    }
}

/// A heartbeat: `lease` folded into the state, written when it moves the fixer's lease.
fn renewed(before: &KeyState, lease: &Lease) -> Step<()> {
    let mut after = before.clone();
    // Strictly increasing, so that the lease visibly moves even on a machine whose clock
    // stands still or went back: waiters compare it for equality only.
    let mut lease = lease.clone();
    if let Some(f) = before.fixer.as_ref() {
        lease.heartbeat = lease.heartbeat.max(f.heartbeat + 1);
    }
    after.renew(&lease);
    if after == *before {
        Step::Keep(())
    } else {
        Step::Write {
            result: (),
            after,
            history: Vec::new(),
            count: None,
        }
    }
}

/// Adds one key's counters to the domain's.
fn add_totals(sum: &mut Totals, t: &Totals) {
    sum.failures += t.failures;
    sum.elections += t.elections;
    sum.takeovers += t.takeovers;
    sum.waits += t.waits;
    sum.fixes += t.fixes;
    sum.fix_runs += t.fix_runs;
    sum.fix_runs_avoided += t.fix_runs_avoided;
    sum.generation = sum.generation.max(t.generation);
}

impl Store for RemoteStore {
    fn backend(&self) -> &'static str {
        "remote"
    }

    fn location(&self) -> String {
        format!(
            "refs/buildlock/* on remote `{}` ({})",
            self.git.remote, self.url
        )
    }

    fn read(&self, key: &str) -> Read {
        self.read_key(key, false)
    }

    fn read_as_fixer(&self, key: &str) -> Read {
        // The waiters' records too: the fixer's pass credits them, and has them all by then.
        self.read_key(key, true)
    }

    fn read_base(&self, base: &str) -> BaseView {
        match self.base_view(base) {
            Ok(view) => {
                self.reached();
                view
            }
            Err(f) => {
                // Nothing is known: no key to mark, and no failure judged stale (a pass counter
                // no key can exceed). A failing check then finds out in `apply`, with retries.
                say::warn(format!(
                    "cannot reach the remote `{}`: {}",
                    self.git.remote,
                    f.message()
                ));
                BaseView {
                    passes: u64::MAX,
                    ..BaseView::default()
                }
            }
        }
    }

    fn apply(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        seen_silent: Option<(u64, Millis)>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Applied, super::StoreError> {
        if let Event::Unwait { agent, .. } = event {
            // Its own refs first (no other agent writes them); then the state, where a state
            // commit recorded it. A ref left behind is deleted by the next state commit.
            if let Err(e) = self.leave_waiters(key, agent, stop) {
                say::warn(format!("could not leave the waiters of key `{key}`: {e:#}"));
            }
        }
        self.decided(key, base, event, policy, seen_silent, None, stop)
    }

    fn all(&self) -> Result<Vec<(String, KeyState)>, super::StoreError> {
        let mut keys: Vec<(String, KeyState)> = self
            .views()
            .map_err(|f| self.unread(f))?
            .into_iter()
            .filter_map(|(_, v)| v.doc.map(|d| (d.base, d.state)))
            .collect();
        keys.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        Ok(keys)
    }

    fn totals(&self) -> Result<Totals, super::StoreError> {
        let mut sum = Totals::default();
        for (_, v, waiting) in self.views_waiting().map_err(|f| self.unread(f))? {
            if let Some(d) = v.doc {
                // Waiters that no state commit has recorded yet count as waits already.
                let mut totals = d.totals;
                for (e, o, b, a) in &waiting.folded {
                    totals.count(e, o, b, a);
                }
                add_totals(&mut sum, &totals);
            }
        }
        Ok(sum)
    }

    fn history(&self) -> Result<Vec<super::Entry>, super::StoreError> {
        let views = self.views().map_err(|f| self.unread(f))?;
        let repo = self.repo().map_err(super::StoreError::Io)?;
        let mut all: Vec<super::Entry> = Vec::new();
        for (_, v) in views {
            if let Some(t) = &v.current {
                let entries = chain::history(&repo, &t.oid, WALK_LIMIT);
                all.extend(entries.into_iter().map(super::Entry::from_json));
            }
        }
        // Notes no election has taken into a chain yet (see `waiters`).
        let (notes, _) = self.sweep_notes().map_err(super::StoreError::from)?;
        all.extend(notes.into_iter().map(super::Entry::from_json));
        all.sort_by_key(|e| e.ms.unwrap_or(0));
        Ok(all)
    }

    fn record(&self, entry: super::Entry) -> Result<(), super::StoreError> {
        // A fix run started or ended: no state changes, but the counters (fix runs) and the
        // history do; one push, like any transition.
        let Some(key) = entry.key.clone() else {
            return Ok(());
        };
        if entry.event == "take_fix" {
            // A waiter told to take the fix, after the fix: a note on its own ref (see
            // `waiters`), so that a whole matrix told at once does not queue on the state ref.
            let generation = entry
                .fields
                .get("generation")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let agent = entry.agent().unwrap_or_default().to_owned();
            let mut value = serde_json::Value::from(entry);
            let now = time::now();
            if let Some(obj) = value.as_object_mut() {
                obj.insert("time".into(), time::rfc3339(now).into());
                obj.insert("ms".into(), now.into());
            }
            let note = waiters::Record::note(&key, generation, &agent, value);
            return self.put_own(&note).map_err(Into::into);
        }
        let entry = serde_json::Value::from(entry);
        let limit = self.wait.min(Duration::from_secs(30));
        self.transact(&key, &key, limit, &|| false, |before, view| {
            recorded(before, view, &entry)
        })?;
        Ok(())
    }

    fn apply_and_record(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        entry: super::Entry,
        stop: &dyn Fn() -> bool,
    ) -> Result<Applied, super::StoreError> {
        // One state commit for both: every push to the state ref costs each waiter a fetch.
        let entry = serde_json::Value::from(entry);
        self.decided(key, base, event, policy, None, Some(&entry), stop)
    }

    fn write_lease(&self, key: &str, lease: &Lease) -> Result<(), super::StoreError> {
        let limit = (self.stale_after / 2).clamp(
            Duration::from_millis(500),
            self.wait.max(Duration::from_millis(500)),
        );
        self.transact(key, "", limit, &|| false, |before, _| {
            renewed(before, lease)
        })?;
        Ok(())
    }

    fn hold_fixer(
        &self,
        _key: &str,
        _generation: u64,
        _timeout: Duration,
    ) -> Result<Option<FixerHold>, super::StoreError> {
        // Another machine cannot see this process die; the heartbeat is the sign of life.
        Ok(Some(FixerHold::new(())))
    }

    fn fixer_gone(&self, _key: &str, _generation: u64) -> bool {
        false
    }

    fn bounds_fix_time(&self) -> bool {
        false
    }

    fn look_every(&self) -> Duration {
        self.poll
    }

    fn watch(&self, _key: &str) -> bool {
        // `wait_change` sleeps `remote_poll` itself, whatever it is asked: each look is a round
        // trip to the remote.
        true
    }

    fn diagnose(&self) -> Vec<super::Finding> {
        self.diagnosis()
    }

    fn fix_ref(&self, key: &str, commit: &str) -> Option<String> {
        Some(fix_ref_name(key, commit))
    }

    fn wait_change(&self, _key: &str, _fixer: Option<&Process>, _timeout: Duration) {
        // Every look costs a round trip to the remote: look every `remote_poll`, whatever the
        // caller's local poll interval is.
        std::thread::sleep(self.poll + time::jitter(self.poll / 4));
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Remote, doc, tip, view};
    use super::*;
    use crate::os::process::Process;
    use crate::protocol::state::{Agent, FixSeen, Status};

    fn policy() -> Policy {
        Policy {
            stale_after: Duration::from_secs(60),
            max_fix_attempts: 3,
            max_fix_time: Duration::from_secs(1),
        }
    }

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            pid: 100,
            host: "box".into(),
            start: None,
            pid_space: None,
        }
    }

    fn failed(id: &str) -> Event {
        Event::Failed {
            agent: agent(id),
            signature: "sig".into(),
            log: PathBuf::from("/tmp/log"),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        }
    }

    fn passed(id: &str, git_dir: &str) -> Event {
        passed_with(id, git_dir, "f00d")
    }

    fn passed_with(id: &str, git_dir: &str, commit: &str) -> Event {
        Event::Passed {
            agent: agent(id),
            generation: None,
            fix: FixSeen {
                head_before: Some("head".into()),
                git_dir: Some(PathBuf::from(git_dir)),
                commit: Some(commit.into()),
                committer: Some(Process {
                    pid: 7,
                    host: "box".into(),
                    start: None,
                    token: None,
                    pid_space: None,
                }),
                recorder: None,
            },
        }
    }

    fn seen() -> Observed {
        observed(&view(None, None), policy(), None, 1_000, false)
    }

    fn written<R>(step: Step<R>) -> (R, KeyState, Vec<serde_json::Value>, Totals) {
        match step {
            Step::Write {
                result,
                after,
                history,
                count,
            } => {
                let mut totals = Totals::default();
                if let Some(count) = count {
                    count(&mut totals);
                }
                (result, after, history, totals)
            }
            Step::Keep(_) | Step::Join { .. } => panic!("expected a write"),
        }
    }

    #[test]
    fn the_remote_observes_no_clock_and_no_process() {
        let mut d = doc("k", 1);
        d.state.generation = 4;
        let mut v = view(Some(tip("k", 1, "t")), Some(d));
        v.base_passes = 9;
        let seen = observed(&v, policy(), Some((4, 5)), 1_000, true);
        assert_eq!(seen.stale_after, Millis::MAX, "no wall-clock lease rule");
        assert_eq!(
            seen.max_fix_time,
            Millis::MAX,
            "no wall-clock bound on the role"
        );
        assert!(!seen.fixer_lock_free && !seen.fixer_running);
        assert_eq!(seen.generation_floor, 4);
        assert_eq!(seen.passes, 9);
        assert_eq!(seen.seen_silent, Some((4, 5)));
        assert_eq!(seen.max_fix_attempts, 3);
        assert!(seen.elector_dead);
        assert_eq!(seen.now, 1_000);
    }

    #[test]
    fn the_generation_floor_survives_a_damaged_tip() {
        let mut good = doc("k", 1);
        good.state.generation = 6;
        let mut v = view(Some(tip("k", 2, "bad")), None);
        v.damaged = Some("garbage".into());
        v.last_good = Some(good);
        assert_eq!(observed(&v, policy(), None, 0, false).generation_floor, 6);
        assert_eq!(seen().generation_floor, 0);
    }

    #[test]
    fn a_failure_elects_and_counts() {
        let before = KeyState::passing("k");
        let (outcome, after, history, totals) =
            written(decide("k", &failed("a"), &before, &seen()));
        assert!(
            matches!(outcome, Outcome::Elected { replaced: None }),
            "{outcome:?}"
        );
        assert_eq!(after.status, Status::Fixing);
        assert!(!history.is_empty());
        assert_eq!((totals.failures, totals.elections), (1, 1));
    }

    #[test]
    fn a_fix_recorded_on_the_remote_keeps_only_what_another_machine_can_use() {
        let (_, fixing, _, _) =
            written(decide("k", &failed("a"), &KeyState::passing("k"), &seen()));
        let (outcome, after, _, totals) =
            written(decide("k", &passed("a", "/home/a/.git"), &fixing, &seen()));
        assert_eq!(outcome, Outcome::Fixed);
        let fix = after.fix.unwrap();
        assert_eq!(fix.commit.as_deref(), Some("f00d"));
        assert_eq!(fix.head_before.as_deref(), Some("head"));
        assert_eq!(
            fix.git_dir, None,
            "this machine's git dir means nothing elsewhere"
        );
        assert_eq!(fix.committer, None);
        assert_eq!(totals.fixes, 1);
    }

    #[test]
    fn a_transition_that_changes_nothing_writes_nothing() {
        let before = KeyState::passing("k");
        match decide("k", &passed("a", "/x"), &before, &seen()) {
            Step::Keep(outcome) => assert_eq!(outcome, Outcome::Unchanged),
            Step::Write { .. } | Step::Join { .. } => panic!("a pass on a passing key wrote"),
        }
    }

    #[test]
    fn a_failure_against_a_live_fixer_joins_the_waiters_and_writes_no_state() {
        let (_, fixing, _, _) =
            written(decide("k", &failed("a"), &KeyState::passing("k"), &seen()));
        let step = joined(
            "k",
            &failed("b"),
            decide("k", &failed("b"), &fixing, &seen()),
        );
        let Step::Join {
            result,
            after,
            record,
        } = step
        else {
            panic!("a waiter wrote the state");
        };
        assert!(
            matches!(result, Outcome::Wait { first: true, .. }),
            "{result:?}"
        );
        assert_eq!(after.waiters.len(), 1);
        assert_eq!(
            (
                record.key.as_str(),
                record.generation,
                record.waiter.agent.as_str()
            ),
            ("k", fixing.generation, "b")
        );
        // Every other decision is the state machine's, written as before.
        let again = joined(
            "k",
            &failed("a"),
            decide("k", &failed("a"), &fixing, &seen()),
        );
        assert!(matches!(
            again,
            Step::Write {
                result: Outcome::KeepFixing { .. },
                ..
            }
        ));
    }

    #[test]
    fn waiters_join_without_moving_the_state_and_the_fix_credits_and_clears_them() {
        let remote = Remote::new();
        let (a, b, c) = (remote.store("a"), remote.store("b"), remote.store("c"));
        let never = &|| false;
        let refs_under = |prefix: &str| -> Vec<(String, String)> {
            remote
                .refs()
                .into_iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .collect()
        };
        a.apply("k", "k", &failed("a"), policy(), None, never)
            .unwrap();
        let tip = refs_under(STATE_PREFIX);
        for (store, id) in [(&b, "b"), (&c, "c")] {
            let joined = store
                .apply("k", "k", &failed(id), policy(), None, never)
                .unwrap();
            assert!(matches!(joined.outcome, Outcome::Wait { first: true, .. }));
            assert!(joined.after.waiters.iter().any(|w| w.agent == id));
        }
        assert_eq!(refs_under(STATE_PREFIX), tip, "joining moved no state ref");
        assert_eq!(refs_under(refs::WAIT_PREFIX).len(), 2);
        // Every reader of every key lists them (status reads every key).
        let (_, listed) = &a.all().unwrap()[0];
        let names: Vec<&str> = listed.waiters.iter().map(|w| w.agent.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(
            a.totals().unwrap().waits,
            2,
            "waits count before any state commit"
        );
        // `c` leaves: its ref goes, nobody else's.
        c.apply(
            "k",
            "k",
            &Event::Unwait {
                agent: "c".into(),
                pid: 100,
            },
            policy(),
            None,
            never,
        )
        .unwrap();
        let waits = refs_under(refs::WAIT_PREFIX);
        assert_eq!(waits.len(), 1);
        assert!(waits[0].0.ends_with("/b"), "{waits:?}");
        // The fix, by a fixer that never read `b`'s record before: credited, and its ref gone.
        let fix = remote.commit_in("a");
        let fixed = a
            .apply(
                "k",
                "k",
                &passed_with("a", "/a/.git", &fix),
                policy(),
                None,
                never,
            )
            .unwrap();
        assert_eq!(fixed.outcome, Outcome::Fixed);
        assert_eq!(fixed.after.fix.unwrap().credited, ["b"]);
        assert!(
            refs_under(refs::WAIT_PREFIX).is_empty(),
            "{:?}",
            remote.refs()
        );
        let totals = c.totals().unwrap();
        assert_eq!((totals.waits, totals.fix_runs_avoided), (1, 1));
        let events: Vec<String> = c
            .history()
            .unwrap()
            .iter()
            .map(|e| e.event.clone())
            .collect();
        assert!(events.contains(&"waiting".to_owned()), "{events:?}");
        // After the fix `c` is told to take it: a note on its own ref, not a state commit.
        let tip = refs_under(STATE_PREFIX);
        c.record(crate::store::Entry::from_json(serde_json::json!({
            "event": "take_fix", "key": "k", "agent": "c", "commit": fix, "generation": 1})))
            .unwrap();
        assert_eq!(refs_under(STATE_PREFIX), tip, "the note moved no state ref");
        assert_eq!(refs_under(refs::NOTE_PREFIX).len(), 1);
        let told = |s: &RemoteStore| {
            s.history()
                .unwrap()
                .iter()
                .filter(|e| e.event == "take_fix" && e.agent() == Some("c"))
                .count()
        };
        assert_eq!(told(&b), 1, "the log reads the note");
        // The next election, of any key, moves it into its chain and deletes its ref.
        a.apply("other", "other", &failed("a"), policy(), None, never)
            .unwrap();
        assert!(
            refs_under(refs::NOTE_PREFIX).is_empty(),
            "{:?}",
            remote.refs()
        );
        assert_eq!(told(&b), 1, "recorded once, in the chain");
    }

    #[test]
    fn the_fixers_looks_fetch_the_waiters_records_and_a_waiters_do_not() {
        let remote = Remote::new();
        let (a, b, c) = (remote.store("a"), remote.store("b"), remote.store("c"));
        let never = &|| false;
        a.apply("k", "k", &failed("a"), policy(), None, never)
            .unwrap();
        for (store, id) in [(&b, "b"), (&c, "c")] {
            store
                .apply("k", "k", &failed(id), policy(), None, never)
                .unwrap();
        }
        let records: Vec<String> = remote
            .refs()
            .into_iter()
            .filter(|(n, _)| n.starts_with(refs::WAIT_PREFIX))
            .map(|(_, oid)| oid)
            .collect();
        assert_eq!(records.len(), 2);
        let here = |s: &RemoteStore, oid: &str| chain::has_object(&s.repo().unwrap(), oid);
        // A waiter's look fetches the state, not the others' records.
        assert!(matches!(b.read("k"), Read::Found { .. }));
        assert!(!here(&b, &records[1]) || !here(&b, &records[0]));
        // The fixer's look fetches them all: its pass then has them.
        match a.read_as_fixer("k") {
            Read::Found { state, .. } => assert_eq!(state.waiters.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(records.iter().all(|oid| here(&a, oid)), "{records:?}");
    }

    #[test]
    fn a_record_is_written_only_on_a_key_with_state() {
        let entry = serde_json::json!({"event": "fix_started", "key": "k"});
        let before = KeyState::unknown("k");
        assert!(matches!(
            recorded(&before, &view(None, None), &entry),
            Step::Keep(())
        ));
        let v = view(Some(tip("k", 1, "t")), Some(doc("k", 1)));
        let ((), after, history, totals) = written(recorded(&before, &v, &entry));
        assert_eq!(after, before);
        assert_eq!(history, [entry]);
        assert_eq!(totals.fix_runs, 1);
    }

    #[test]
    fn a_record_goes_with_the_step_first_or_alone_when_the_step_writes_nothing() {
        let entry = serde_json::json!({"event": "fix_started", "key": "k"});
        let v = view(Some(tip("k", 1, "t")), Some(doc("k", 1)));
        // A step that writes: the record's entry first, both counted.
        let before = KeyState::passing("k");
        let step = with_record(
            decide("k", &failed("a"), &before, &seen()),
            &before,
            &v,
            &entry,
        );
        let (outcome, after, history, totals) = written(step);
        assert!(matches!(outcome, Outcome::Elected { .. }), "{outcome:?}");
        assert_eq!(after.status, Status::Fixing);
        assert_eq!(history[0], entry, "{history:?}");
        assert!(history.len() > 1, "{history:?}");
        assert_eq!((totals.elections, totals.fix_runs), (1, 1));
        // A step that changes nothing (fenced): the record is written all the same.
        let register = Event::Register {
            agent: "b".into(),
            generation: after.generation,
            holder: Process {
                pid: 9,
                host: "box".into(),
                start: None,
                token: None,
                pid_space: None,
            },
            fix_process: None,
        };
        let step = with_record(decide("k", &register, &after, &seen()), &after, &v, &entry);
        let (outcome, unchanged, history, totals) = written(step);
        assert_eq!(outcome, Outcome::Fenced);
        assert_eq!(unchanged, after);
        assert_eq!(history, std::slice::from_ref(&entry));
        assert_eq!(totals.fix_runs, 1);
        // Nothing on the remote for the key: nothing written.
        let step = with_record(
            decide("k", &register, &after, &seen()),
            &after,
            &view(None, None),
            &entry,
        );
        assert!(matches!(step, Step::Keep(Outcome::Fenced)));
    }

    #[test]
    fn a_heartbeat_always_moves_the_lease_forward() {
        let (_, fixing, _, _) =
            written(decide("k", &failed("a"), &KeyState::passing("k"), &seen()));
        let fixer = fixing.fixer.clone().unwrap();
        // A clock that went back: the heartbeat still moves.
        let lease = Lease {
            agent: "a".into(),
            generation: fixing.generation,
            heartbeat: fixer.heartbeat.saturating_sub(500),
        };
        let ((), after, history, _) = written(renewed(&fixing, &lease));
        assert_eq!(after.fixer.unwrap().heartbeat, fixer.heartbeat + 1);
        assert!(history.is_empty());
        // Another agent's lease changes nothing.
        let other = Lease {
            agent: "b".into(),
            ..lease
        };
        assert!(matches!(renewed(&fixing, &other), Step::Keep(())));
    }

    #[test]
    fn totals_add_up_and_the_generation_is_the_highest() {
        let mut sum = Totals::default();
        let one = Totals {
            failures: 1,
            elections: 2,
            takeovers: 3,
            waits: 4,
            fixes: 5,
            fix_runs: 6,
            fix_runs_avoided: 7,
            generation: 9,
        };
        add_totals(&mut sum, &one);
        add_totals(
            &mut sum,
            &Totals {
                generation: 2,
                ..one
            },
        );
        assert_eq!(
            sum,
            Totals {
                failures: 2,
                elections: 4,
                takeovers: 6,
                waits: 8,
                fixes: 10,
                fix_runs: 12,
                fix_runs_avoided: 14,
                generation: 9,
            }
        );
    }

    #[test]
    fn a_breakage_and_its_fix_through_the_store() {
        let remote = Remote::new();
        let a = remote.store("a");
        let b = remote.store("b");
        let never = &|| false;
        let elected = a
            .apply("k", "k", &failed("a"), policy(), None, never)
            .unwrap();
        assert!(matches!(elected.outcome, Outcome::Elected { .. }));
        let waiting = b
            .apply("k", "k", &failed("b"), policy(), None, never)
            .unwrap();
        assert!(
            matches!(waiting.outcome, Outcome::Wait { .. }),
            "{:?}",
            waiting.outcome
        );
        let lease = Lease {
            agent: "a".into(),
            generation: elected.after.generation,
            heartbeat: 0,
        };
        a.write_lease("k", &lease).unwrap();
        a.record(crate::store::Entry::from_json(
            serde_json::json!({"event": "fix_started", "key": "k"}),
        ))
        .unwrap();
        let fix = remote.commit_in("a");
        let fixed = a
            .apply(
                "k",
                "k",
                &passed_with("a", "/a/.git", &fix),
                policy(),
                None,
                never,
            )
            .unwrap();
        assert_eq!(fixed.outcome, Outcome::Fixed);
        match b.read("k") {
            Read::Found { state, .. } => {
                assert_eq!(state.status, Status::Passing);
                assert_eq!(state.fix_commit(), Some(fix.as_str()));
            }
            other => panic!("{other:?}"),
        }
        let fix_ref = b.fix_ref("k", &fix).unwrap();
        assert_eq!(fix_ref, format!("refs/buildlock/fix/k/_/{fix}"));
        assert!(
            remote.refs().contains(&(fix_ref, fix.clone())),
            "the fix commit travelled with the state: {:?}",
            remote.refs()
        );
        let totals = b.totals().unwrap();
        assert_eq!((totals.failures, totals.elections, totals.waits), (2, 1, 1));
        assert_eq!((totals.fixes, totals.fix_runs), (1, 1));
        assert_eq!(b.all().unwrap().len(), 1);
        let events: Vec<String> = b
            .history()
            .unwrap()
            .iter()
            .map(|e| e.event.clone())
            .collect();
        assert!(events.contains(&"fix_started".to_owned()), "{events:?}");
        assert_eq!(b.read_base("k").keys.len(), 1);
    }
}
