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
//! - **Damage is repaired, never hidden.** A tip that cannot be decoded is replaced by a new state
//!   (broken, nobody fixing) with a `damaged` history entry, and a warning says so;
//! - **Never fails open.** Transient failures are retried with backoff within the limit, permanent
//!   ones fail at once; both carry git's own message and name the remote.

use anyhow::{Result, anyhow};
use std::time::{Duration, Instant};

use super::RemoteStore;
use super::chain::{self, Doc};
use super::git::{Failure, Pushed, Update};
use super::prune::{self, Placement, compact_after};
use super::read::View;
use super::refs::{fix_ref_name, key_path, state_ref};
use crate::os::{say, time};
use crate::protocol::ledger::Totals;
use crate::protocol::state::KeyState;
use crate::store::Interrupted;

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

/// Whether the key's tip, as `view` read it, is the commit `oid`.
fn holds(view: &View, oid: &str) -> bool {
    view.current.as_ref().is_some_and(|t| t.oid == oid)
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
        mut decide: impl FnMut(&KeyState, &View) -> Step<R>,
    ) -> Result<Transacted<R>> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut lost = 0u32;
        // The last push that lost, or whose report was lost: its commit and what it did.
        let mut pushed: Option<(String, Transacted<R>)> = None;
        loop {
            let round = Instant::now();
            if stop() {
                return Err(Interrupted.into());
            }
            let view = self
                .retrying(deadline, || self.view(key))
                .map_err(|f| self.failed(f, started.elapsed()))?;
            // A push whose report we lost (or that raced our re-read) may have landed.
            if let Some((oid, done)) = pushed.take() {
                if holds(&view, &oid) {
                    return Ok(done);
                }
            }
            let before = state_before(key, &view);
            let (result, after, history, count) = match decide(&before, &view) {
                Step::Keep(result) if nothing_to_repair(&view) => {
                    return Ok(Transacted {
                        result,
                        after: before.clone(),
                        before,
                        damaged: None,
                    });
                }
                Step::Keep(result) => (result, before.clone(), Vec::new(), None),
                Step::Write {
                    result,
                    after,
                    history,
                    count,
                } => (result, after, history, count),
            };
            let (commit, epoch) = self.write_state(key, base, &view, &after, history, count)?;
            let new_fix = new_fix(key, &view, &after);
            let updates = updates(key, &view, &commit, epoch, new_fix.as_deref());
            let outcome = self.retrying(deadline, || self.git.push(&updates));
            let done = Transacted {
                result,
                before,
                after,
                damaged: view.damaged.clone(),
            };
            match outcome {
                Ok(Pushed::Landed) => return Ok(done),
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
                        Ok(done)
                    } else {
                        Err(self.failed(Failure::Transient(m), started.elapsed()))
                    };
                }
                Err(f) => return Err(self.failed(f, started.elapsed())),
            }
        }
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
        self.view(key).is_ok_and(|v| holds(&v, commit))
    }

    fn too_many_races(&self, key: &str, lost: u32, limit: Duration) -> anyhow::Error {
        anyhow!(
            "coordination failed: lost {lost} races in a row for key `{key}` on the remote `{}` \
             within {} (too many agents at once?)",
            self.git.remote,
            time::human(limit)
        )
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
    fn failed(&self, f: Failure, waited: Duration) -> anyhow::Error {
        match f {
            Failure::Transient(m) => anyhow!(
                "coordination failed: could not reach the remote `{}` ({}) for {}: {m}",
                self.git.remote,
                self.url,
                time::human(waited)
            ),
            Failure::Permanent(m) => anyhow!(
                "coordination failed on the remote `{}` ({}): {m}",
                self.git.remote,
                self.url
            ),
        }
    }
}
