//! The transaction engine: one read–decide–push compare-and-swap step on a key's chain
//! ([`RemoteStore::transact`]), retried until it lands.
//!
//! One round: read the key ([`View`]), let the caller decide ([`Step`]), plan the state commit
//! (counters, sequence number, place in the chain), write it into the local object store, and
//! push it in one atomic push with every ref leased on what was read.
//!
//! Guarantees:
//! - **One winner.** Of N agents that read the same tip exactly one push lands; the others
//!   re-read and decide again, after a jittered backoff that grows with each loss, until
//!   the transaction's time limit;
//! - **A lost report is not a lost push.** Every commit carries a nonce, so a push can never
//!   "succeed" by naming an oid the ref already has; a push whose report was lost (a transient
//!   failure, or a race with our own re-read) is recognised by re-reading: the tip is our oid;
//! - **A waiter never races the fixer.** A decision to wait ([`Step::Join`]) pushes the waiter's
//!   own ref (see `waiters`), not the key's state: the fixer's pushes never lose to a waiter's;
//!   the next state commit records the waiters read (their history and counts) and, once it has
//!   landed, deletes the waiters' refs of every other generation (or all of them when nobody
//!   fixes any more) in a push of its own, never in the state's;
//! - **Damage is repaired, never hidden.** A tip that cannot be decoded is replaced by a new state
//!   (broken, nobody fixing) with a `damaged` history entry, and a warning says so;
//! - **Never fails open.** Transient failures are retried with backoff within the limit, permanent
//!   ones fail at once; both carry git's own message and name the remote.

use anyhow::Result;
use std::time::{Duration, Instant};

use super::RemoteStore;
use super::chain::{self, Doc};
use super::prune::{self, Placement, compact_after};
use super::read::{View, Waiting};
use super::refs::{fix_ref_name, key_path, state_ref, wait_ref};
use super::waiters::{self, Record};
use crate::os::remote_git::{Failure, Pushed, Update};
use crate::os::{say, time};
use crate::protocol::ledger::Totals;
use crate::protocol::state::{KeyState, Status};
use crate::store::{Interrupted, StoreError};

/// Adds a transition's counts to a key's totals.
pub(super) type Count = Box<dyn FnOnce(&mut Totals)>;

/// What a transition decided.
#[allow(clippy::large_enum_variant)] // one per transition, moved once
pub(super) enum Step<R> {
    /// Nothing to write.
    Keep(R),
    Write {
        result: R,
        after: KeyState,
        history: Vec<serde_json::Value>,
        count: Option<Count>,
    },
    /// Join the waiters: the state stays as it is on the remote; `record` goes to the waiter's
    /// own ref. `after` is the state as this waiter now sees it (itself among the waiters).
    Join {
        result: R,
        after: KeyState,
        record: Record,
    },
}

/// What a transaction did.
pub(super) struct Transacted<R> {
    /// What the decision returned.
    pub result: R,
    pub before: KeyState,
    pub after: KeyState,
    /// Why the state read could not be used, when it could not.
    pub damaged: Option<String>,
}

/// A round's push, prepared: the commit written, the ref updates that publish it, the refs to
/// delete once it has landed, and what the transaction did if it lands.
type Pushing<R> = (String, Vec<Update>, Vec<Update>, Transacted<R>);

/// The state commit to write: what it holds and where it goes.
struct Planned<'a> {
    doc: Doc,
    at: Placement<'a>,
}

/// The state a transaction starts from: the tip's, broken with nobody fixing when the tip is
/// damaged, passing when the key has no state yet.
fn state_before(key: &str, view: &View) -> KeyState {
    match (&view.doc, &view.damaged) {
        (Some(doc), _) => doc.state.clone(),
        (None, Some(_)) => KeyState::unknown(key),
        (None, None) => KeyState::passing(key),
    }
}

/// Whether a decision to write nothing can stand: nothing on the remote needs repair (a damaged
/// tip, a stray epoch).
fn nothing_to_repair(view: &View) -> bool {
    view.damaged.is_none() && view.strays.is_empty()
}

/// The state commit that records `after` on top of what `view` read: the counters carried on
/// (plus `count`), the next sequence number, the base's pass counter, and its place in the chain.
fn plan<'v>(
    base: &str,
    view: &'v View,
    after: &KeyState,
    count: Option<Count>,
    compact_after: u64,
) -> Planned<'v> {
    let prev = view.prev();
    let mut totals = prev.map(|d| d.totals).unwrap_or_default();
    if let Some(count) = count {
        count(&mut totals);
    }
    let seq = prev.map_or(0, |d| d.seq) + 1;
    let passes = prev
        .map_or(0, |d| d.passes)
        .max(view.base_passes)
        .max(after.passed);
    let at = prune::placement(
        view.current.as_ref(),
        view.tip_is_commit,
        seq,
        compact_after,
    );
    let doc = Doc {
        schema: chain::SCHEMA,
        base: prev
            .map(|d| d.base.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| base.to_owned()),
        seq,
        totals,
        passes,
        state: after.clone(),
    };
    Planned { doc, at }
}

/// The history entries a commit records: a `damaged` entry first when the tip was unreadable,
/// and every entry stamped with the commit's time.
fn stamp(
    key: &str,
    damaged: Option<&str>,
    mut history: Vec<serde_json::Value>,
    now: time::Millis,
) -> Vec<serde_json::Value> {
    if let Some(why) = damaged {
        history.insert(
            0,
            serde_json::json!({"event": "damaged", "key": key, "reason": why}),
        );
    }
    for entry in &mut history {
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("time".into(), time::rfc3339(now).into());
            obj.insert("ms".into(), now.into());
        }
    }
    history
}

/// A state commit's subject: what happened (a heartbeat when nothing did) and the state it led to.
fn subject(key: &str, history: &[serde_json::Value], after: &KeyState) -> String {
    let what: Vec<String> = history
        .iter()
        .filter_map(|e| {
            let event = e.get("event")?.as_str()?;
            let agent = e.get("agent").and_then(|a| a.as_str()).unwrap_or("");
            Some(if agent.is_empty() {
                event.to_owned()
            } else {
                format!("{event} {agent}")
            })
        })
        .collect();
    let what = if what.is_empty() {
        "heartbeat".to_owned()
    } else {
        what.join(", ")
    };
    format!(
        "buildlock {key}: {what} ({}, generation {})",
        after.status.as_str(),
        after.generation
    )
}

/// The fix commit to publish with `after`: the one it records, unless its ref is already there.
/// (It travels with the state that records it, and is published again if its ref went missing.)
fn new_fix(key: &str, view: &View, after: &KeyState) -> Option<String> {
    after
        .fix_commit()
        .map(str::to_owned)
        .filter(|f| !view.fixes.iter().any(|(n, _)| *n == fix_ref_name(key, f)))
}

/// The ref updates that publish `commit` as `key`'s new state in `epoch` (and its fix commit),
/// each leased on what `view` saw: a new epoch retires the old one (and any stray) in the same
/// atomic push.
fn updates(key: &str, view: &View, commit: &str, epoch: u64, new_fix: Option<&str>) -> Vec<Update> {
    let name = state_ref(&key_path(key), epoch);
    let mut updates = vec![Update {
        name: name.clone(),
        new: Some(commit.to_owned()),
        expect: view
            .current
            .as_ref()
            .filter(|t| t.name == name)
            .map(|t| t.oid.clone()),
    }];
    updates.extend(prune::retire(view, &name));
    if let Some(fix) = new_fix {
        updates.extend(prune::replace_fix(key, &view.fixes, fix));
    }
    updates
}

/// Whether the step from `before` to `after` ends the episode the waiters wait on: a fix, a
/// fixer that gave up, a new generation. Only such a step needs every waiter's record (their
/// credit for the fix, their history and counts); a fixer's other steps (register, fix started,
/// heartbeat) record the waiters this machine has read, and leave the rest to a later step.
fn ends_their_wait(before: &KeyState, after: &KeyState) -> bool {
    before.status == Status::Fixing
        && (after.status != Status::Fixing || after.generation != before.generation)
}

/// The waiters' refs that no longer wait for anything once `after` is the state: every one when
/// nobody fixes, else those of another generation; each deleted leased on what was read.
fn stale_waits(waiting: &Waiting, after: &KeyState) -> Vec<Update> {
    waiting
        .refs
        .iter()
        .filter(|w| after.status != Status::Fixing || w.generation != after.generation)
        .map(|w| Update {
            name: w.name.clone(),
            new: None,
            expect: Some(w.oid.clone()),
        })
        .collect()
}

/// The push of a waiter's own record `commit`: its ref for the generation it waits for, leased
/// on what was read of it; nothing else (its refs of other generations are deleted by the
/// cleanup of the next state commit).
fn join(key: &str, waiting: &Waiting, record: &Record, commit: &str) -> Vec<Update> {
    let name = wait_ref(&key_path(key), record.generation, &record.waiter.agent);
    vec![Update {
        name: name.clone(),
        new: Some(commit.to_owned()),
        expect: waiting
            .refs
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.oid.clone()),
    }]
}

/// Whether the key's tip, or one of its waiters' refs, as `view` read them, is the commit `oid`.
fn holds(view: &View, waiting: &Waiting, oid: &str) -> bool {
    view.current.as_ref().is_some_and(|t| t.oid == oid) || waiting.refs.iter().any(|w| w.oid == oid)
}

/// The bound of the pause after losing `lost` races in a row: a random part of a few round trips
/// (one read and one push, as just measured), more after each loss, so that N agents that
/// collided spread out over about N round trips instead of colliding again in lockstep.
fn backoff(round_trip: Duration, lost: u32) -> Duration {
    round_trip.min(Duration::from_secs(2)) * lost.min(4)
}

/// The pause after a transient failure, and the next one: doubling up to 5 s.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(Duration::from_secs(5))
}

impl RemoteStore {
    /// One compare-and-swap transition: `decide` maps the state read to the state to write (or
    /// [`Step::Keep`]: nothing to write). Loops until a push lands, re-reading after every lost
    /// race, for at most `limit`; `stop` interrupts it between rounds.
    pub(super) fn transact<R>(
        &self,
        key: &str,
        base: &str,
        limit: Duration,
        stop: &dyn Fn() -> bool,
        decide: impl FnMut(&KeyState, &View) -> Step<R>,
    ) -> Result<Transacted<R>> {
        self.transact_reading(key, base, limit, false, stop, decide)
    }

    /// [`Self::transact`]; `records`: the first round reads the waiters' records too, for a
    /// step that most likely ends their wait (a fixer's pass): one round trip less than
    /// finding out from the first read (see `ends_their_wait`), at the moment every waiter
    /// waits for that step.
    pub(super) fn transact_reading<R>(
        &self,
        key: &str,
        base: &str,
        limit: Duration,
        records: bool,
        stop: &dyn Fn() -> bool,
        mut decide: impl FnMut(&KeyState, &View) -> Step<R>,
    ) -> Result<Transacted<R>> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut lost = 0u32;
        // The last push that lost, or whose report was lost: its commit and what it did.
        let mut pushed: Option<(String, Transacted<R>)> = None;
        // Whether this round reads the waiters' records too (see `ends_their_wait`).
        let mut records = records;
        loop {
            let round = Instant::now();
            if stop() {
                return Err(Interrupted.into());
            }
            let (view, waiting) = self
                .retrying(deadline, || self.view_waiting(key, records))
                .map_err(|f| self.failed(f, started.elapsed()))?;
            // A push whose report we lost (or that raced our re-read) may have landed.
            if let Some((oid, done)) = pushed.take() {
                if holds(&view, &waiting, &oid) {
                    return Ok(done);
                }
            }
            let before = state_before(key, &view);
            let (commit, updates, cleanup, done) = match decide(&before, &view) {
                Step::Keep(result) if nothing_to_repair(&view) => {
                    return Ok(Transacted {
                        result,
                        after: before.clone(),
                        before,
                        damaged: None,
                    });
                }
                Step::Join {
                    result,
                    after,
                    record,
                } if nothing_to_repair(&view) => {
                    let commit = self.write_record(&record)?;
                    let updates = join(key, &waiting, &record, &commit);
                    let done = Transacted {
                        result,
                        before,
                        after,
                        damaged: None,
                    };
                    (commit, updates, Vec::new(), done)
                }
                Step::Keep(result) | Step::Join { result, .. } => {
                    let after = before.clone();
                    self.state_push(
                        key,
                        base,
                        &view,
                        &waiting,
                        before,
                        after,
                        result,
                        Vec::new(),
                        None,
                    )?
                }
                // The waiters this machine has not read yet are credited with the fix (or see
                // their episode end): read them, and decide again.
                Step::Write { after, .. }
                    if !records && waiting.unread > 0 && ends_their_wait(&before, &after) =>
                {
                    records = true;
                    continue;
                }
                Step::Write {
                    result,
                    after,
                    history,
                    count,
                } => self.state_push(
                    key, base, &view, &waiting, before, after, result, history, count,
                )?,
            };
            let outcome = self.retrying(deadline, || self.git.push(&updates));
            match outcome {
                Ok(Pushed::Landed) => {
                    self.clean_up(&cleanup);
                    return Ok(done);
                }
                Ok(Pushed::Stale) => {
                    lost += 1;
                    if Instant::now() >= deadline {
                        return Err(self.too_many_races(key, lost, limit));
                    }
                    pushed = Some((commit, done));
                    std::thread::sleep(time::jitter(backoff(round.elapsed(), lost)));
                }
                Err(Failure::Transient(m)) => {
                    return if self.landed_after_all(key, &commit) {
                        self.clean_up(&cleanup);
                        Ok(done)
                    } else {
                        Err(self.failed(Failure::Transient(m), started.elapsed()))
                    };
                }
                Err(f) => return Err(self.failed(f, started.elapsed())),
            }
        }
    }

    /// The state commit that records `after` (and the waiters folded into `before`), written,
    /// with the ref updates that publish it and what the transaction did once they land.
    #[allow(clippy::too_many_arguments)] // one call site per kind of step, all in `transact`
    fn state_push<R>(
        &self,
        key: &str,
        base: &str,
        view: &View,
        waiting: &Waiting,
        before: KeyState,
        after: KeyState,
        result: R,
        history: Vec<serde_json::Value>,
        count: Option<Count>,
    ) -> Result<Pushing<R>> {
        let mut stale = stale_waits(waiting, &after);
        let mut recorded = waiters::history(key, &waiting.folded);
        recorded.extend(history);
        if before.status != Status::Fixing && after.status == Status::Fixing {
            // An election: it takes in every note on the remote (see `waiters`).
            let (notes, deletes) = self.sweep_notes()?;
            recorded.extend(notes);
            stale.extend(deletes);
        }
        let folded = waiting.folded.clone();
        let count: Option<Count> = if folded.is_empty() {
            count
        } else {
            Some(Box::new(move |t: &mut Totals| {
                for (e, o, b, a) in &folded {
                    t.count(e, o, b, a);
                }
                if let Some(count) = count {
                    count(t);
                }
            }))
        };
        let (commit, epoch) = self.write_state(key, base, view, &after, recorded, count)?;
        let new_fix = new_fix(key, view, &after);
        let updates = updates(key, view, &commit, epoch, new_fix.as_deref());
        let done = Transacted {
            result,
            before,
            after,
            damaged: view.damaged.clone(),
        };
        Ok((commit, updates, stale, done))
    }

    /// Deletes, once a state commit has landed, the waiters' refs and notes it made stale. Not in
    /// the state's own atomic push: a ref deleted by someone else meanwhile (a waiter leaving,
    /// another election taking the same notes in) would fail that push as no lost race can,
    /// with the state already decided. Best effort: what is left is deleted by a later commit,
    /// and readers ignore it meanwhile (another generation; a note read twice at worst).
    fn clean_up(&self, stale: &[Update]) {
        if !stale.is_empty() {
            let _ = self.git.push(stale);
        }
    }

    /// Writes a waiter's record into the local object store (nothing is pushed yet).
    fn write_record(&self, record: &Record) -> Result<String> {
        waiters::write(&self.repo()?, record, time::now())
    }

    /// Writes the state commit that records `after` into the local object store (nothing is
    /// pushed yet): its oid, and the epoch whose ref it goes to.
    fn write_state(
        &self,
        key: &str,
        base: &str,
        view: &View,
        after: &KeyState,
        history: Vec<serde_json::Value>,
        count: Option<Count>,
    ) -> Result<(String, u64)> {
        let Planned { doc, at } = plan(base, view, after, count, compact_after());
        let now = time::now();
        if let Some(why) = &view.damaged {
            say::warn(format!(
                "the state of key `{key}` on the remote `{}` was unreadable ({why}); treating it as broken \
                 with nobody fixing, and writing a new state",
                self.git.remote
            ));
        }
        let history = stamp(key, view.damaged.as_deref(), history, now);
        let subject = subject(key, &history, after);
        let repo = self.repo()?;
        let commit = chain::write(&repo, &doc, at.parent, &subject, &history, at.previous, now)?;
        Ok((commit, at.epoch))
    }

    /// After a push failed transiently: one last look at whether it landed after all.
    fn landed_after_all(&self, key: &str, commit: &str) -> bool {
        self.view_waiting(key, false)
            .is_ok_and(|(v, w)| holds(&v, &w, commit))
    }

    fn too_many_races(&self, key: &str, lost: u32, limit: Duration) -> anyhow::Error {
        StoreError::Unreachable(format!(
            "coordination failed: lost {lost} races in a row for key `{key}` on the remote `{}` \
             within {} (too many agents at once?)",
            self.git.remote,
            time::human(limit)
        ))
        .into()
    }

    /// Runs `op` until it succeeds, fails permanently, or `deadline` passes, backing off
    /// between transient failures and saying what it waits for.
    fn retrying<T>(
        &self,
        deadline: Instant,
        mut op: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut pause = Duration::from_millis(250);
        let mut told: Option<Instant> = None;
        loop {
            match op() {
                Ok(v) => {
                    if told.is_some() {
                        say::say(format!("reached the remote `{}` again", self.git.remote));
                    }
                    return Ok(v);
                }
                Err(Failure::Transient(m)) if Instant::now() + pause < deadline => {
                    if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        told = Some(Instant::now());
                        say::warn(format!(
                            "cannot reach the remote `{}` ({m}); trying again for up to {}",
                            self.git.remote,
                            time::human(deadline.saturating_duration_since(Instant::now()))
                        ));
                    }
                    std::thread::sleep(pause + time::jitter(pause / 2));
                    pause = next_pause(pause);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The error a transaction ends with when git failed: how long it tried, for a transient
    /// failure; git's words and the remote's name in both cases.
    pub(super) fn failed(&self, f: Failure, waited: Duration) -> anyhow::Error {
        match f {
            Failure::Transient(m) => StoreError::Unreachable(format!(
                "coordination failed: could not reach the remote `{}` ({}) for {}: {m}",
                self.git.remote,
                self.url,
                time::human(waited)
            )),
            Failure::Permanent(m) => StoreError::Refused(format!(
                "coordination failed on the remote `{}` ({}): {m}",
                self.git.remote, self.url
            )),
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state::Status;
    use crate::store::remote::testing::{Remote, doc, tip, view};
    use std::cell::Cell;

    fn broken(key: &str) -> KeyState {
        KeyState::unknown(key)
    }

    /// A decision that writes `status` (and a history entry by `agent`).
    fn write_status(status: Status, agent: &str) -> impl FnMut(&KeyState, &View) -> Step<()> {
        let agent = agent.to_owned();
        move |before: &KeyState, _: &View| {
            let mut after = before.clone();
            after.status = status;
            after.generation += 1;
            Step::Write {
                result: (),
                after,
                history: vec![serde_json::json!({"event": "failed", "agent": agent})],
                count: Some(Box::new(|t: &mut Totals| t.failures += 1)),
            }
        }
    }

    fn chain_of(remote: &Remote, oid: &str) -> Vec<u64> {
        let repo = remote.repo();
        let mut seqs = Vec::new();
        let mut next = Some(git2::Oid::from_str(oid).unwrap());
        while let Some(id) = next {
            seqs.push(chain::decode(&repo, &id.to_string(), "").doc.unwrap().seq);
            next = repo.find_commit(id).unwrap().parent_id(0).ok();
        }
        seqs
    }

    #[test]
    fn the_state_before_is_the_tips_or_broken_when_damaged_or_passing_when_new() {
        let mut d = doc("k", 3);
        d.state.status = Status::Fixing;
        assert_eq!(
            state_before("k", &view(Some(tip("k", 1, "t")), Some(d.clone()))),
            d.state
        );
        let mut damaged = view(Some(tip("k", 1, "t")), None);
        damaged.damaged = Some("garbage".into());
        assert_eq!(state_before("k", &damaged), broken("k"));
        assert_eq!(state_before("k", &view(None, None)), KeyState::passing("k"));
    }

    #[test]
    fn keeping_the_state_stands_only_when_nothing_needs_repair() {
        let clean = view(Some(tip("k", 3, "t")), Some(doc("k", 3)));
        assert!(nothing_to_repair(&clean));
        let mut stray = view(Some(tip("k", 3, "t")), Some(doc("k", 3)));
        stray.strays.push(tip("k", 1, "s"));
        assert!(!nothing_to_repair(&stray));
        let mut damaged = view(Some(tip("k", 3, "t")), None);
        damaged.damaged = Some("garbage".into());
        assert!(!nothing_to_repair(&damaged));
    }

    #[test]
    fn a_plan_carries_the_counters_on_and_numbers_the_commit() {
        let mut prev = doc("k", 5);
        prev.base = "base".into();
        prev.totals.failures = 2;
        prev.passes = 3;
        let mut v = view(Some(tip("k", 5, "t")), Some(prev));
        v.base_passes = 4;
        let mut after = KeyState::passing("k");
        after.passed = 1;
        let count: Count = Box::new(|t: &mut Totals| t.failures += 1);
        let Planned { doc, at } = plan("ignored", &v, &after, Some(count), 64);
        assert_eq!(doc.seq, 6);
        assert_eq!(doc.totals.failures, 3);
        assert_eq!(
            doc.passes, 4,
            "the highest of the key's, the base's and the state's"
        );
        assert_eq!(doc.base, "base", "a key keeps the base it was created with");
        assert_eq!(doc.state, after);
        assert_eq!(at.epoch, 5);
        assert_eq!(at.parent, Some("t"));
    }

    #[test]
    fn a_new_key_takes_the_callers_base_and_starts_at_one() {
        let mut after = KeyState::passing("k");
        after.passed = 7;
        let new = view(None, None);
        let Planned { doc, at } = plan("base", &new, &after, None, 64);
        assert_eq!((doc.seq, doc.passes, doc.base.as_str()), (1, 7, "base"));
        assert_eq!(doc.totals, Totals::default());
        assert_eq!((at.epoch, at.parent, at.previous), (1, None, None));
        // A record (base "") on a key whose doc has no base takes the caller's.
        let mut prev = doc.clone();
        prev.base = String::new();
        let v = view(Some(tip("k", 1, "t")), Some(prev));
        assert_eq!(plan("caller", &v, &after, None, 64).doc.base, "caller");
    }

    #[test]
    fn below_a_damaged_tip_the_plan_continues_from_the_last_good_state() {
        let mut good = doc("k", 8);
        good.totals.elections = 5;
        let mut v = view(Some(tip("k", 2, "bad")), None);
        v.damaged = Some("garbage".into());
        v.last_good = Some(good);
        let Planned { doc, at } = plan("k", &v, &broken("k"), None, 64);
        assert_eq!(doc.seq, 9);
        assert_eq!(doc.totals.elections, 5);
        assert_eq!(at.parent, Some("bad"), "a damaged commit is still a parent");
    }

    #[test]
    fn history_is_stamped_and_damage_comes_first() {
        let history = vec![
            serde_json::json!({"event": "failed", "agent": "a", "ms": 1}),
            serde_json::json!("not an object"),
        ];
        let out = stamp("k", Some("garbage"), history, 5_000);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["event"], "damaged");
        assert_eq!(out[0]["reason"], "garbage");
        assert_eq!(out[0]["key"], "k");
        assert_eq!(out[1]["ms"], 5_000, "the commit's time wins");
        assert_eq!(out[1]["time"], time::rfc3339(5_000));
        assert_eq!(out[2], "not an object");
        assert_eq!(
            stamp("k", None, Vec::new(), 1),
            Vec::<serde_json::Value>::new()
        );
    }

    #[test]
    fn a_subject_says_what_happened() {
        let mut after = KeyState::unknown("k");
        after.generation = 3;
        let history = [
            serde_json::json!({"event": "failed", "agent": "a"}),
            serde_json::json!({"event": "elected"}),
            serde_json::json!({"no": "event"}),
        ];
        assert_eq!(
            subject("k", &history, &after),
            "buildlock k: failed a, elected (broken, generation 3)"
        );
        assert_eq!(
            subject("k", &[], &KeyState::passing("k")),
            "buildlock k: heartbeat (passing, generation 0)"
        );
    }

    #[test]
    fn a_fix_commit_is_published_unless_its_ref_is_there() {
        let mut after = KeyState::passing("k");
        assert_eq!(new_fix("k", &view(None, None), &after), None);
        after.fix = Some(crate::protocol::state::Fix {
            commit: Some("f00d".into()),
            signature: None,
            signatures: Vec::new(),
            by: "a".into(),
            generation: 1,
            head_before: None,
            git_dir: None,
            committer: None,
            recorder: None,
            credited: Vec::new(),
        });
        let mut v = view(None, None);
        assert_eq!(new_fix("k", &v, &after).as_deref(), Some("f00d"));
        v.fixes.push((fix_ref_name("k", "f00d"), "f00d".into()));
        assert_eq!(new_fix("k", &v, &after), None);
    }

    #[test]
    fn updates_are_leased_on_what_was_read() {
        let name = |e| state_ref("k/_", e);
        // The same epoch: leased on the tip.
        let v = view(Some(tip("k", 1, "old")), Some(doc("k", 1)));
        let u = updates("k", &v, "new", 1, None);
        assert_eq!(u.len(), 1);
        assert_eq!(
            (
                u[0].name.as_str(),
                u[0].new.as_deref(),
                u[0].expect.as_deref()
            ),
            (name(1).as_str(), Some("new"), Some("old"))
        );
        // A new epoch: it must not exist, and the old one goes, leased.
        let u = updates("k", &v, "new", 9, None);
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].name.clone(), u[0].expect.clone()), (name(9), None));
        assert_eq!(
            (u[1].name.clone(), u[1].new.clone(), u[1].expect.clone()),
            (name(1), None, Some("old".to_owned()))
        );
        // A new key: must not exist. A fix travels in the same push.
        let u = updates("k", &view(None, None), "new", 1, Some("f00d"));
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].expect, None);
        assert_eq!(u[1].name, fix_ref_name("k", "f00d"));
        assert_eq!(u[1].new.as_deref(), Some("f00d"));
    }

    #[test]
    fn only_a_step_that_ends_the_fixers_episode_needs_every_waiters_record() {
        let mut fixing = KeyState::passing("k");
        fixing.status = Status::Fixing;
        fixing.generation = 2;
        let mut heartbeat = fixing.clone();
        heartbeat.changed = 9;
        assert!(!ends_their_wait(&fixing, &heartbeat));
        let mut fixed = fixing.clone();
        fixed.status = Status::Passing;
        assert!(ends_their_wait(&fixing, &fixed));
        let mut taken_over = fixing.clone();
        taken_over.generation = 3;
        assert!(ends_their_wait(&fixing, &taken_over));
        assert!(
            !ends_their_wait(&KeyState::passing("k"), &fixing),
            "an election"
        );
    }

    #[test]
    fn backoff_grows_with_losses_and_is_bounded() {
        let rtt = Duration::from_millis(100);
        assert_eq!(backoff(rtt, 1), rtt);
        assert_eq!(backoff(rtt, 3), rtt * 3);
        assert_eq!(backoff(rtt, 40), rtt * 4);
        assert_eq!(backoff(Duration::from_secs(60), 1), Duration::from_secs(2));
        assert_eq!(
            next_pause(Duration::from_millis(250)),
            Duration::from_millis(500)
        );
        assert_eq!(next_pause(Duration::from_secs(4)), Duration::from_secs(5));
    }

    #[test]
    fn a_transaction_creates_a_key_and_then_extends_its_chain() {
        let remote = Remote::new();
        let store = remote.store("a");
        let never = &|| false;
        let t = Duration::from_secs(20);
        let first = store
            .transact("k", "k", t, never, write_status(Status::Broken, "a"))
            .unwrap();
        assert_eq!(first.before, KeyState::passing("k"));
        assert_eq!(first.after.status, Status::Broken);
        let second = store
            .transact("k", "k", t, never, write_status(Status::Fixing, "a"))
            .unwrap();
        assert_eq!(second.before, first.after);
        let refs = remote.refs();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0, "refs/buildlock/state/k/_/1");
        assert_eq!(chain_of(&remote, &refs[0].1), [2, 1]);
        let v = store.view("k").unwrap();
        let d = v.doc.unwrap();
        assert_eq!(d.state.status, Status::Fixing);
        assert_eq!(d.totals.failures, 2, "each transition's count adds up");
        let history = chain::history(&remote.repo(), &refs[0].1, 10);
        assert_eq!(history.len(), 2);
        assert!(history.iter().all(|e| e["ms"].is_u64()));
    }

    #[test]
    fn of_two_agents_that_read_the_same_tip_one_lands_and_the_other_decides_again() {
        let remote = Remote::new();
        let a = remote.store("a");
        let b = remote.store("b");
        let never = &|| false;
        let t = Duration::from_secs(20);
        let rounds = Cell::new(0);
        let done = a
            .transact("k", "k", t, never, |before, _| {
                rounds.set(rounds.get() + 1);
                if rounds.get() == 1 {
                    // B moves the key between A's read and A's push.
                    b.transact("k", "k", t, never, write_status(Status::Broken, "b"))
                        .unwrap();
                    assert_eq!(*before, KeyState::passing("k"));
                } else {
                    assert_eq!(before.status, Status::Broken, "A re-read B's state");
                }
                write_status(Status::Fixing, "a")(before, &view(None, None))
            })
            .unwrap();
        assert_eq!(rounds.get(), 2, "A lost one race and decided again");
        assert_eq!(done.before.status, Status::Broken);
        let refs = remote.refs();
        assert_eq!(refs.len(), 1);
        assert_eq!(chain_of(&remote, &refs[0].1), [2, 1], "no update was lost");
        let history = chain::history(&remote.repo(), &refs[0].1, 10);
        let agents: Vec<&str> = history
            .iter()
            .map(|e| e["agent"].as_str().unwrap())
            .collect();
        assert_eq!(agents, ["b", "a"]);
    }

    #[test]
    fn keeping_a_clean_state_pushes_nothing() {
        let remote = Remote::new();
        let store = remote.store("a");
        let oid = remote.put_state(&doc("k", 1));
        let done = store
            .transact("k", "k", Duration::from_secs(20), &|| false, |_, _| {
                Step::Keep(7)
            })
            .unwrap();
        assert_eq!(done.result, 7);
        assert_eq!(done.before, done.after);
        assert_eq!(
            remote.refs(),
            [("refs/buildlock/state/k/_/1".to_owned(), oid)]
        );
    }

    #[test]
    fn keeping_a_state_with_a_stray_epoch_repairs_it() {
        let remote = Remote::new();
        let store = remote.store("a");
        remote.put_state(&doc("k", 1));
        let current = remote.put_state(&doc("k", 5));
        store
            .transact("k", "k", Duration::from_secs(20), &|| false, |_, _| {
                Step::Keep(())
            })
            .unwrap();
        let refs = remote.refs();
        assert_eq!(refs.len(), 1, "the stray epoch is gone: {refs:?}");
        assert_eq!(refs[0].0, "refs/buildlock/state/k/_/5");
        assert_eq!(chain_of(&remote, &refs[0].1), [6, 5]);
        assert_ne!(refs[0].1, current);
    }

    #[test]
    fn a_damaged_tip_is_replaced_by_a_broken_state_that_says_so() {
        let remote = Remote::new();
        let store = remote.store("a");
        let blob = remote.repo().blob(b"garbage").unwrap().to_string();
        remote.set_ref("refs/buildlock/state/k/_/3", &blob);
        let done = store
            .transact("k", "k", Duration::from_secs(20), &|| false, |_, _| {
                Step::Keep(())
            })
            .unwrap();
        assert_eq!(done.before, broken("k"));
        assert!(done.damaged.as_deref().unwrap().contains("blob"));
        let refs = remote.refs();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0, "refs/buildlock/state/k/_/4", "a higher epoch");
        let history = chain::history(&remote.repo(), &refs[0].1, 10);
        assert_eq!(history[0]["event"], "damaged");
        assert_eq!(store.view("k").unwrap().doc.unwrap().state, broken("k"));
    }

    #[test]
    fn a_transaction_told_to_stop_stops_before_reading() {
        let remote = Remote::new();
        let store = remote.store("a");
        let err = store
            .transact("k", "k", Duration::from_secs(20), &|| true, |_, _| {
                Step::Keep(())
            })
            .err()
            .unwrap();
        assert!(
            matches!(
                crate::store::StoreError::from(err),
                crate::store::StoreError::Interrupted
            ),
            "a stop is an interruption"
        );
        assert!(remote.refs().is_empty());
    }

    #[test]
    fn a_remote_that_is_gone_fails_the_transaction_with_gits_words() {
        let remote = Remote::new();
        let store = remote.store("a");
        remote.remove();
        let err = store
            .transact("k", "k", Duration::from_secs(20), &|| false, |_, _| {
                Step::Keep(())
            })
            .err()
            .unwrap();
        let said = format!("{err:#}");
        assert!(
            said.starts_with("coordination failed on the remote `origin`"),
            "{said}"
        );
        assert!(said.contains("ls-remote"), "{said}");
        // A remote that is not there refuses for good: typed, for the flows to tell apart.
        assert!(
            matches!(StoreError::from(err), StoreError::Refused(m) if m == said),
            "{said}"
        );
    }
}
