//! Keeping the remote bounded: where the next state commit goes (extending the key's chain, or
//! *compacting* it into a new root under the next epoch), which refs a transition retires, and
//! which keys the end of a breakage prunes.
//!
//! # The pruning rule
//!
//! After every transition that ends a breakage (a fix, a recovery, a reset), the agent that made
//! it deletes, in one leased push, every ref of each key that
//!
//! - is **passing** and was last touched (its status changed) more than [`prune_after`] ago
//!   (a day), or more than [`crowded_after`] ago (an hour) when it is not among the
//!   [`KEEP_NEWEST`] most recently touched passing keys; or
//! - was **abandoned**: broken with nobody fixing, or fixing with a lease (the fixer's last
//!   heartbeat) that has not moved for [`prune_after`], and for twice `stale_after` at least.
//!   A fixer alive renews its lease every `stale_after / 3`, so a breakage still fixing with a
//!   fresh lease is never pruned.
//!
//! The key that was just fixed always stays. A key's refs are its state refs (every epoch), its
//! fix refs under `refs/buildlock/fix/`, and its waiters' and notes' refs under
//! `refs/buildlock/wait/` and `refs/buildlock/note/` (see `waiters`). Those two also go on their
//! own (see [`side_updates`]): when their key has no state ref any more, when they belong to a
//! generation older than the key's current one, and a waiter's ref when nobody fixes its key (a
//! join that landed after the fix's clean-up read the refs, a job killed while it waited). A
//! waiter's ref of the breakage being fixed always stays (its record outlives the fix it waits
//! for), and so does a note of the current generation (the next election takes it into its
//! history). A fix *delivered* by `buildlock ci` is a normal
//! branch (`refs/heads/buildlock/fix/…`), which nothing here ever reads or deletes. So the
//! remote holds at most the passing keys of the last hour, at least [`KEEP_NEWEST`], all of them
//! gone after a day, plus the breakages being fixed now. Why an hour: what still reads a passing
//! key is a waiter that saw the fix and fetches it (seconds), and a late job of the same commit
//! that is told to take the fix instead of electing a fixer of its own (a CI queue's lag).
//!
//! Ages compare the pruning machine's clock with the clock of the machine that wrote the state:
//! with margins of an hour and a day a skewed clock matters only beyond that, and then costs at
//! most one more fix run of a breakage already fixed, never two fixers at once (a deletion is
//! leased on the tip that was judged, and only a passing or abandoned tip is ever judged).
//!
//! Guarantees:
//! - **An allowlist of ref shapes.** Only `refs/buildlock/state/<base>/<sub>/<epoch>` whose tip
//!   decodes as a state, `refs/buildlock/fix/<base>/<sub>/<oid>` that points at that `<oid>`
//!   ([`super::refs::group`]), and `refs/buildlock/{wait,note}/<base>/<sub>/<generation>/<agent>`
//!   whose commit is a waiter's record of that key, generation and agent
//!   ([`super::refs::side_refs`], [`super::waiters::names_its_record`]) are ever deleted; any
//!   other ref under `refs/buildlock/` (claims, the doctor's probe, whatever a later version
//!   adds) is left alone;
//! - **Fast-forward only.** No ref is ever rewound: a chain grows by a child of its tip, and a
//!   compacted chain is a new ref (the next epoch) whose root records the old tip in a
//!   `Buildlock-Previous:` trailer; the old epoch (and any stray) is deleted in the same atomic
//!   push, leased on what was read, so there is never a moment with no ref for the key and a
//!   racing agent's lease on the old epoch fails;
//! - **Bounded.** A chain is compacted once it is [`compact_after`] commits long; one prune
//!   deletes about [`PRUNE_BATCH`] refs at most (the rest go at the next one); a key's fix refs
//!   are replaced by the newest one;
//! - **Leased.** Every deletion carries the oid it was read at: nothing that moved since is
//!   deleted. The push of the states and fix refs is atomic, so a key that moved meanwhile fails
//!   the whole push; the prune then reads again and tries again (a few times), without the key
//!   that moved. The waiters' and notes' refs go in a second push, so that a waiter leaving
//!   never fails the first; a deletion whose ref went after the server listed it is a lost race
//!   too.
//!
//! The rules are pure functions; [`RemoteStore::prune`] is their only I/O.

use std::time::Duration;

use super::RemoteStore;
use super::chain::{self, Doc};
use super::read::View;
use super::refs::{NOTE_PREFIX, SideRef, Tip, WAIT_PREFIX, fix_ref_name, side_refs};
use super::waiters;
use crate::os::env;
use crate::os::remote_git::{Pushed, Update};
use crate::os::time::{self, Millis};
use crate::protocol::state::{Outcome, Status};

/// A chain this long is compacted by the next transition.
pub fn compact_after() -> u64 {
    env::remote_compact_after().unwrap_or(64).max(2)
}

/// Passing keys (and abandoned breakages) untouched this long are deleted from the remote.
pub fn prune_after() -> Duration {
    env::remote_prune_after().unwrap_or(Duration::from_secs(24 * 3600))
}

/// Passing keys beyond the newest [`KEEP_NEWEST`] are deleted once untouched this long: a 24th of
/// [`prune_after`] (an hour by default).
pub fn crowded_after() -> Duration {
    prune_after() / 24
}

/// How many of the most recently touched passing keys only age deletes.
pub const KEEP_NEWEST: usize = 32;

/// One push prunes at most about this many refs; the rest wait for the next fix.
const PRUNE_BATCH: usize = 200;

/// Tries of one prune whose atomic push lost a race with a key that moved.
const PRUNE_TRIES: u32 = 3;

/// Where a key's next state commit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement<'a> {
    /// The epoch of the chain it goes in (the ref's last part).
    pub epoch: u64,
    /// The tip it extends; `None`: it is a chain's root.
    pub parent: Option<&'a str>,
    /// The tip a new root replaces (its `Buildlock-Previous:` trailer).
    pub previous: Option<&'a str>,
}

/// Where the commit numbered `seq` of a key whose tip is `current` goes: a new chain when the key
/// is new, the tip cannot be a parent (it is not a commit), or the chain is long; else on top of
/// the tip.
pub(super) fn placement(
    current: Option<&Tip>,
    tip_is_commit: bool,
    seq: u64,
    compact_after: u64,
) -> Placement<'_> {
    match current {
        Some(t) if tip_is_commit && seq.saturating_sub(t.epoch) + 1 < compact_after => Placement {
            epoch: t.epoch,
            parent: Some(t.oid.as_str()),
            previous: None,
        },
        Some(t) => Placement {
            epoch: seq.max(t.epoch + 1),
            parent: None,
            previous: Some(t.oid.as_str()),
        },
        None => Placement {
            epoch: seq,
            parent: None,
            previous: None,
        },
    }
}

/// A deletion of `name`, leased on the `oid` it was read at.
fn delete(name: &str, oid: &str) -> Update {
    Update {
        name: name.to_owned(),
        new: None,
        expect: Some(oid.to_owned()),
    }
}

/// The deletions that retire a key's other epochs when its state goes to the ref `name`: the
/// old epoch after a compaction, and any stray.
pub(super) fn retire(view: &View, name: &str) -> Vec<Update> {
    view.current
        .iter()
        .chain(&view.strays)
        .filter(|old| old.name != name)
        .map(|old| delete(&old.name, &old.oid))
        .collect()
}

/// The updates that publish `key`'s new fix commit `fix` and delete its other fix refs. Nothing
/// when the fix is already published.
pub(super) fn replace_fix(key: &str, fixes: &[(String, String)], fix: &str) -> Vec<Update> {
    let fix_name = fix_ref_name(key, fix);
    let mut updates = Vec::new();
    if !fixes.iter().any(|(n, _)| *n == fix_name) {
        updates.push(Update {
            name: fix_name.clone(),
            new: Some(fix.to_owned()),
            expect: None,
        });
    }
    for (n, oid) in fixes {
        if *n != fix_name {
            updates.push(delete(n, oid));
        }
    }
    updates
}

/// Whether a transition with this outcome prunes the remote: one that ended a breakage (a fix,
/// a recovery, a reset), so that pruning costs nothing on the hot path.
pub(super) fn prunes_after(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Fixed | Outcome::Recovered | Outcome::Reset
    )
}

/// The ages of the pruning rule, as cutoffs: a passing key last touched before `old` is old
/// (pruned by age alone), one touched before `crowded` is pruned when it is not among the
/// newest; a breakage last touched before `abandoned` is abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cutoffs {
    pub old: Millis,
    pub crowded: Millis,
    pub abandoned: Millis,
}

/// The cutoffs at `now` for the ages `prune_after` and `crowded_after`, never negative; a
/// breakage is abandoned after `prune_after`, and never before twice `stale_after` (a live fixer
/// renews its lease every third of it, whatever the age limit says).
pub(super) fn cutoffs(
    now: Millis,
    prune_after: Duration,
    crowded_after: Duration,
    stale_after: Duration,
) -> Cutoffs {
    let before = |age: Duration| now.saturating_sub(age.as_millis() as Millis);
    Cutoffs {
        old: before(prune_after),
        crowded: before(crowded_after),
        abandoned: before(prune_after.max(stale_after * 2)),
    }
}

/// When a key was last touched: its status changed, or its fixer renewed the lease.
pub(super) fn touched(doc: &Doc) -> Millis {
    let lease = doc.state.fixer.as_ref().map_or(0, |f| f.heartbeat);
    doc.state.changed.max(lease)
}

/// Whether a key in this state is pruned when it was last touched at `touched`: `newest` says
/// whether it is among the [`KEEP_NEWEST`] most recently touched passing keys.
pub(super) fn prunable(status: Status, touched: Millis, newest: bool, cut: Cutoffs) -> bool {
    match status {
        Status::Passing => touched < cut.old || (!newest && touched < cut.crowded),
        // Abandoned: nobody fixing, or a fixer whose lease stopped moving a day ago.
        Status::Broken | Status::Fixing => touched < cut.abandoned,
    }
}

/// The keys of `views` to prune (their paths), by the rule of this module; never `except`, the
/// key just fixed, nor a key whose tip is damaged.
pub(super) fn to_prune<'v>(
    views: &'v [(String, View)],
    except: &str,
    cut: Cutoffs,
) -> Vec<&'v str> {
    let mut passing: Vec<(Millis, &str)> = views
        .iter()
        .filter_map(|(path, v)| Some((path, v.doc.as_ref()?)))
        .filter(|(_, d)| d.state.status == Status::Passing)
        .map(|(path, d)| (touched(d), path.as_str()))
        .collect();
    // Newest first; among equals, by path, so that every agent ranks the keys alike.
    passing.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let newest: Vec<&str> = passing.iter().take(KEEP_NEWEST).map(|p| p.1).collect();
    views
        .iter()
        .filter(|(path, _)| path != except)
        .filter_map(|(path, v)| Some((path.as_str(), v.doc.as_ref()?)))
        .filter(|(path, d)| prunable(d.state.status, touched(d), newest.contains(path), cut))
        .map(|(path, _)| path)
        .collect()
}

/// The deletions that prune `views` (every state and fix ref of each key [`to_prune`] names),
/// about [`PRUNE_BATCH`] at most, oldest keys first; and the keys (paths) they prune.
pub(super) fn prune_updates<'v>(
    views: &'v [(String, View)],
    except: &str,
    cut: Cutoffs,
) -> (Vec<Update>, Vec<&'v str>) {
    let mut keys: Vec<(Millis, &str)> = to_prune(views, except, cut)
        .into_iter()
        .filter_map(|p| {
            let (_, v) = views.iter().find(|(path, _)| path == p)?;
            Some((touched(v.doc.as_ref()?), p))
        })
        .collect();
    keys.sort();
    let mut updates = Vec::new();
    let mut pruned = Vec::new();
    for (_, path) in keys {
        let Some((_, v)) = views.iter().find(|(p, _)| p == path) else {
            continue;
        };
        for t in v.current.iter().chain(&v.strays) {
            updates.push(delete(&t.name, &t.oid));
        }
        for (n, oid) in &v.fixes {
            updates.push(delete(n, oid));
        }
        pruned.push(path);
        if updates.len() >= PRUNE_BATCH {
            break;
        }
    }
    (updates, pruned)
}

/// The deletions of waiters' and notes' refs (listed *before* `views` was read) that nothing
/// reads again, about [`PRUNE_BATCH`] at most: those of a key `pruned` now, of a key with no
/// state ref in `views` (a waiter joins only a key whose state it read, so its key lost that
/// state since), of a generation older than its key's current one (generations never go back),
/// and a waiter's of a key nobody fixes (what the fix's own clean-up deletes: a join that landed
/// after that clean-up read the refs). Never a waiter's ref of the generation being fixed, nor a
/// note of the current generation (the next election takes it into its history), nor anything
/// of a damaged key, whose generation is unknown. Only refs that `ours` says hold what their
/// names say.
pub(super) fn side_updates(
    side: &[SideRef],
    views: &[(String, View)],
    pruned: &[&str],
    ours: impl Fn(&SideRef) -> bool,
) -> Vec<Update> {
    side.iter()
        .filter(|r| {
            if pruned.contains(&r.path.as_str()) {
                return true;
            }
            match views.iter().find(|(p, _)| *p == r.path) {
                None => true,
                Some((_, v)) => v.doc.as_ref().is_some_and(|d| {
                    r.generation < d.state.generation
                        || (!r.note && d.state.status != Status::Fixing)
                }),
            }
        })
        .filter(|r| ours(r))
        .take(PRUNE_BATCH)
        .map(|r| delete(&r.name, &r.oid))
        .collect()
}

impl RemoteStore {
    /// After the end of a breakage: deletes what the rule of this module names (with leases;
    /// best effort: a push that lost a race is tried again on a fresh read, a few times, and
    /// whatever still raced it stays for the next time). Returns how many refs it deleted.
    ///
    /// Two pushes: the states and fix refs, then the waiters' and notes' refs. A waiter leaving
    /// (deleting its own ref) must not fail the prune of the states; a key whose states went and
    /// whose waiter refs lost a race is a key with no state at the next try, or the next prune.
    pub(super) fn prune(&self, except: &str) -> usize {
        let mut deleted = 0;
        for _ in 0..PRUNE_TRIES {
            // The waiters' and notes' refs first, then the states: see `side_updates`.
            let Ok(listed) = self
                .git
                .ls_remote(&[format!("{WAIT_PREFIX}*"), format!("{NOTE_PREFIX}*")])
            else {
                return deleted;
            };
            let Ok(views) = self.views() else {
                return deleted;
            };
            let side = side_refs(&listed);
            let Ok(repo) = self.repo() else {
                return deleted;
            };
            let missing: Vec<String> = side
                .iter()
                .filter(|r| !chain::has_object(&repo, &r.oid))
                .map(|r| r.oid.clone())
                .collect();
            if self.git.fetch_objects(&missing).is_err() {
                return deleted;
            }
            let cut = cutoffs(
                time::now(),
                prune_after(),
                crowded_after(),
                self.stale_after,
            );
            let (states, pruned) = prune_updates(&views, except, cut);
            let side = side_updates(&side, &views, &pruned, |r| {
                waiters::names_its_record(&repo, r)
            });
            let mut raced = false;
            for batch in [states, side] {
                if batch.is_empty() {
                    continue;
                }
                match self.git.push(&batch) {
                    Ok(Pushed::Landed) => deleted += batch.len(),
                    Ok(Pushed::Stale) => {
                        raced = true;
                        break;
                    }
                    Err(_) => return deleted,
                }
            }
            if !raced {
                return deleted;
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ledger::Totals;
    use crate::protocol::state::KeyState;
    use crate::store::remote::refs::{key_path, state_ref};

    fn tip(path: &str, epoch: u64, oid: &str) -> Tip {
        Tip {
            epoch,
            oid: oid.into(),
            name: state_ref(path, epoch),
        }
    }

    fn doc(key: &str, status: Status, changed: Millis) -> Doc {
        let mut state = KeyState::passing(key);
        state.status = status;
        state.changed = changed;
        Doc {
            schema: super::super::chain::SCHEMA,
            base: key.into(),
            seq: 1,
            totals: Totals::default(),
            passes: 0,
            state,
        }
    }

    fn view(
        current: Option<Tip>,
        strays: Vec<Tip>,
        fixes: &[(&str, &str)],
        doc: Option<Doc>,
    ) -> View {
        View {
            current,
            strays,
            fixes: fixes
                .iter()
                .map(|(n, o)| ((*n).to_owned(), (*o).to_owned()))
                .collect(),
            doc,
            damaged: None,
            tip_is_commit: true,
            last_good: None,
            base_passes: 0,
        }
    }

    fn names(updates: &[Update]) -> Vec<(&str, Option<&str>, Option<&str>)> {
        updates
            .iter()
            .map(|u| (u.name.as_str(), u.new.as_deref(), u.expect.as_deref()))
            .collect()
    }

    #[test]
    fn a_new_key_starts_a_chain_named_by_its_seq() {
        assert_eq!(
            placement(None, false, 1, 64),
            Placement {
                epoch: 1,
                parent: None,
                previous: None
            }
        );
        assert_eq!(placement(None, true, 1, 2).epoch, 1);
    }

    #[test]
    fn a_short_chain_grows_on_its_tip() {
        let t = tip("k/_", 1, "t");
        assert_eq!(
            placement(Some(&t), true, 2, 4),
            Placement {
                epoch: 1,
                parent: Some("t"),
                previous: None
            }
        );
        assert_eq!(placement(Some(&t), true, 3, 4).parent, Some("t"));
    }

    #[test]
    fn a_long_chain_is_compacted_into_the_next_epoch() {
        // With compact_after = 4, the chain rooted at seq 1 holds seq 1, 2 and 3: the fourth
        // commit is a new root named by its seq, recording the old tip.
        let t = tip("k/_", 1, "t");
        assert_eq!(
            placement(Some(&t), true, 4, 4),
            Placement {
                epoch: 4,
                parent: None,
                previous: Some("t")
            }
        );
        let t = tip("k/_", 4, "u");
        assert_eq!(placement(Some(&t), true, 6, 4).parent, Some("u"));
        assert_eq!(placement(Some(&t), true, 7, 4).epoch, 7);
    }

    #[test]
    fn a_tip_that_is_not_a_commit_is_replaced_by_a_higher_epoch() {
        // A damaged tip with no good state below it: the seq starts again, the epoch must not.
        let t = tip("k/_", 9, "blob");
        assert_eq!(
            placement(Some(&t), false, 1, 64),
            Placement {
                epoch: 10,
                parent: None,
                previous: Some("blob")
            }
        );
        assert_eq!(placement(Some(&t), false, 30, 64).epoch, 30);
    }

    #[test]
    fn the_compaction_length_is_never_below_two() {
        // The environment sets it for tests; whatever it says, a chain can hold its root.
        assert!(compact_after() >= 2);
    }

    #[test]
    fn a_transition_retires_every_other_epoch_with_leases() {
        let v = view(
            Some(tip("k/_", 5, "cur")),
            vec![tip("k/_", 1, "stray")],
            &[],
            None,
        );
        // Staying in epoch 5: only the stray goes.
        assert_eq!(
            names(&retire(&v, &state_ref("k/_", 5))),
            [("refs/buildlock/state/k/_/1", None, Some("stray"))]
        );
        // Compacting into epoch 9: the old epoch goes too.
        assert_eq!(
            names(&retire(&v, &state_ref("k/_", 9))),
            [
                ("refs/buildlock/state/k/_/5", None, Some("cur")),
                ("refs/buildlock/state/k/_/1", None, Some("stray"))
            ]
        );
    }

    #[test]
    fn a_new_fix_replaces_the_old_fix_refs() {
        let old = fix_ref_name("k", "old");
        let new = fix_ref_name("k", "new");
        assert_eq!(
            names(&replace_fix("k", &[(old.clone(), "old".into())], "new")),
            [
                (new.as_str(), Some("new"), None),
                (old.as_str(), None, Some("old"))
            ]
        );
        // Already published: the others still go, the fix ref is not pushed again.
        assert_eq!(
            names(&replace_fix(
                "k",
                &[(old.clone(), "old".into()), (new.clone(), "new".into())],
                "new"
            )),
            [(old.as_str(), None, Some("old"))]
        );
        assert_eq!(
            names(&replace_fix("k", &[], "new")),
            [(new.as_str(), Some("new"), None)]
        );
    }

    #[test]
    fn only_the_end_of_a_breakage_prunes() {
        for outcome in [Outcome::Fixed, Outcome::Recovered, Outcome::Reset] {
            assert!(prunes_after(&outcome), "{outcome:?}");
        }
        for outcome in [
            Outcome::Stale,
            Outcome::KeepFixing { attempts: 1 },
            Outcome::GaveUp { attempts: 3 },
            Outcome::Elected { replaced: None },
        ] {
            assert!(!prunes_after(&outcome), "{outcome:?}");
        }
    }

    #[test]
    fn the_cutoffs_are_now_minus_the_ages_and_never_negative() {
        let s = Duration::from_secs;
        assert_eq!(
            cutoffs(10_000, s(3), s(1), s(1)),
            Cutoffs {
                old: 7_000,
                crowded: 9_000,
                abandoned: 7_000
            }
        );
        assert_eq!(
            cutoffs(1_000, s(3), s(2), s(1)),
            Cutoffs {
                old: 0,
                crowded: 0,
                abandoned: 0
            }
        );
        // A lease is never judged abandoned before twice stale_after, whatever the age limit.
        assert_eq!(cutoffs(100_000, s(3), s(1), s(20)).abandoned, 60_000);
    }

    #[test]
    fn the_crowded_age_is_a_24th_of_the_age_limit() {
        // The environment may set the age limit for tests; the ratio holds whatever it says.
        assert_eq!(crowded_after(), prune_after() / 24);
    }

    const CUT: Cutoffs = Cutoffs {
        old: 100,
        crowded: 1_000,
        abandoned: 100,
    };

    #[test]
    fn a_passing_key_goes_by_age_or_when_crowded_out_and_past_the_shorter_age() {
        // Among the newest: only the long age prunes it.
        assert!(prunable(Status::Passing, 99, true, CUT));
        assert!(
            !prunable(Status::Passing, 100, true, CUT),
            "at the cutoff it stays"
        );
        assert!(!prunable(Status::Passing, 500, true, CUT));
        // Crowded out: the shorter age does.
        assert!(prunable(Status::Passing, 500, false, CUT));
        assert!(
            !prunable(Status::Passing, 1_000, false, CUT),
            "too fresh for any rule"
        );
    }

    #[test]
    fn a_breakage_goes_only_when_abandoned_for_the_long_age() {
        for status in [Status::Broken, Status::Fixing] {
            assert!(prunable(status, 99, false, CUT), "{status:?}");
            assert!(!prunable(status, 100, false, CUT), "{status:?}");
            assert!(
                !prunable(status, 500, false, CUT),
                "{status:?}: crowding never prunes a breakage"
            );
        }
    }

    fn fixing(key: &str, changed: Millis, heartbeat: Millis) -> Doc {
        let mut d = doc(key, Status::Fixing, changed);
        d.state.fixer = Some(crate::protocol::state::Fixer {
            agent: "a".into(),
            pid: None,
            host: "h".into(),
            start: None,
            since: changed,
            heartbeat,
            attempts: 0,
            registered: false,
            fix_process: None,
            elector: None,
        });
        d
    }

    #[test]
    fn a_fixer_s_heartbeat_touches_its_key() {
        // Elected long ago, lease renewed just now: fresh, never pruned.
        let d = fixing("k", 1, 5_000);
        assert_eq!(touched(&d), 5_000);
        assert!(!prunable(d.state.status, touched(&d), false, CUT));
        assert_eq!(touched(&doc("k", Status::Passing, 7)), 7);
    }

    fn keyed(key: &str, d: Doc) -> (String, View) {
        let path = key_path(key);
        let oid = format!("{key}-tip");
        let v = view(Some(tip(&path, 1, &oid)), Vec::new(), &[], Some(d));
        (path, v)
    }

    #[test]
    fn the_newest_passing_keys_stay_and_the_crowd_behind_them_goes() {
        // KEEP_NEWEST + 3 passing keys, all past the shorter age, none past the long one; the
        // newest of them all is the one just fixed (it stays, and counts among the newest).
        let n = KEEP_NEWEST + 3;
        let mut views: Vec<(String, View)> = (0..n)
            .map(|i| {
                keyed(
                    &format!("p{i:02}"),
                    doc("p", Status::Passing, 200 + i as Millis),
                )
            })
            .collect();
        views.push(keyed("open", fixing("open", 150, 160)));
        views.push(keyed("broken", doc("broken", Status::Broken, 150)));
        views.push(keyed("fresh", doc("fresh", Status::Passing, 5_000)));
        let except = key_path(&format!("p{:02}", n - 1));
        let gone = to_prune(&views, &except, CUT);
        // "fresh" is the newest; then p34 .. p04 fill the 32 places: p00 .. p03 go.
        let want: Vec<String> = (0..4).map(|i| key_path(&format!("p{i:02}"))).collect();
        assert_eq!(gone, want);
    }

    #[test]
    fn pruning_deletes_every_ref_of_a_pruned_key_and_nothing_else() {
        let pruned = view(
            Some(tip("a/_", 3, "a3")),
            vec![tip("a/_", 1, "a1")],
            &[("refs/buildlock/fix/a/_/f", "f")],
            Some(doc("a", Status::Passing, 1)),
        );
        let fresh = view(
            Some(tip("b/_", 1, "b1")),
            Vec::new(),
            &[],
            Some(doc("b", Status::Passing, 5_000)),
        );
        let broken = view(
            Some(tip("c/_", 1, "c1")),
            Vec::new(),
            &[],
            Some(doc("c", Status::Broken, 500)),
        );
        let damaged = view(Some(tip("d/_", 1, "d1")), Vec::new(), &[], None);
        let views = vec![
            ("a/_".to_owned(), pruned),
            ("b/_".to_owned(), fresh),
            ("c/_".to_owned(), broken),
            ("d/_".to_owned(), damaged),
        ];
        assert_eq!(
            names(&prune_updates(&views, "x/_", CUT).0),
            [
                ("refs/buildlock/state/a/_/3", None, Some("a3")),
                ("refs/buildlock/state/a/_/1", None, Some("a1")),
                ("refs/buildlock/fix/a/_/f", None, Some("f")),
            ]
        );
        assert!(prune_updates(&views, "a/_", CUT).0.is_empty());
    }

    #[test]
    fn one_prune_is_bounded_and_takes_the_oldest_first() {
        let views: Vec<(String, View)> = (0..500)
            .map(|i| {
                keyed(
                    &format!("k{i:03}"),
                    doc("k", Status::Passing, 1 + i as Millis),
                )
            })
            .collect();
        let (updates, _) = prune_updates(&views, "", CUT);
        assert_eq!(updates.len(), PRUNE_BATCH);
        assert_eq!(updates[0].name, state_ref(&key_path("k000"), 1));
    }

    fn side(path: &str, generation: u64, agent: &str, note: bool) -> SideRef {
        let prefix = if note { NOTE_PREFIX } else { WAIT_PREFIX };
        SideRef {
            name: format!("{prefix}{path}/{generation}/{agent}"),
            oid: format!("{path}-{generation}-{agent}"),
            path: path.into(),
            generation,
            agent: agent.into(),
            note,
        }
    }

    fn at_generation(key: &str, status: Status, generation: u64) -> Doc {
        // Touched now: fresh by every cutoff, whatever the clock.
        let mut d = doc(key, status, time::now());
        d.state.generation = generation;
        d
    }

    #[test]
    fn waiters_and_notes_go_with_their_key_their_state_or_their_generation_only() {
        let mut views = vec![
            keyed("gone", at_generation("gone", Status::Passing, 3)),
            keyed("live", at_generation("live", Status::Fixing, 5)),
        ];
        views.push((key_path("damaged"), {
            let mut v = view(Some(tip("damaged/_", 1, "d1")), Vec::new(), &[], None);
            v.damaged = Some("garbage".into());
            v
        }));
        let listed = [
            side("gone/_", 3, "a", false),
            side("gone/_", 3, "a", true),
            side("orphan/_", 9, "b", false),
            side("orphan/_", 9, "b", true),
            side("live/_", 4, "c", false),
            side("live/_", 4, "c", true),
            // The current generation of a live key, and a newer one than was read: they stay.
            side("live/_", 5, "d", false),
            side("live/_", 5, "d", true),
            side("live/_", 6, "e", false),
            // A damaged key's generation is unknown: its refs stay.
            side("damaged/_", 0, "f", false),
            // Not what its name says (the record disagrees): not ours.
            side("orphan/_", 1, "not-ours", false),
        ];
        let updates = side_updates(&listed, &views, &["gone/_"], |r| r.agent != "not-ours");
        let got: Vec<&str> = updates.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            got,
            [
                "refs/buildlock/wait/gone/_/3/a",
                "refs/buildlock/note/gone/_/3/a",
                "refs/buildlock/wait/orphan/_/9/b",
                "refs/buildlock/note/orphan/_/9/b",
                "refs/buildlock/wait/live/_/4/c",
                "refs/buildlock/note/live/_/4/c",
            ]
        );
        for (u, r) in updates.iter().zip(&listed) {
            assert_eq!(
                (u.new.as_deref(), u.expect.as_deref()),
                (None, Some(r.oid.as_str()))
            );
        }
        // Not pruned now: a passing key's notes of its current generation stay (the next
        // election takes them in); its waiters' refs wait for nothing any more.
        let kept = side_updates(&listed[..2], &views, &[], |_| true);
        assert_eq!(
            names(&kept),
            [(listed[0].name.as_str(), None, Some(listed[0].oid.as_str()))]
        );
    }

    /// A waiter's record (or a note) of `key`'s `generation` by `agent`, on the remote under its
    /// own ref; returns the ref.
    fn put_side(
        remote: &super::super::testing::Remote,
        key: &str,
        generation: u64,
        agent: &str,
        note: bool,
    ) -> String {
        let mut record = waiters::Record::note(key, generation, agent, serde_json::json!({}));
        let path = key_path(key);
        let name = if note {
            crate::store::remote::refs::note_ref(&path, generation, agent)
        } else {
            record.note = None;
            crate::store::remote::refs::wait_ref(&path, generation, agent)
        };
        let oid = waiters::write(&remote.repo(), &record, 1_000).unwrap();
        remote.set_ref(&name, &oid);
        name
    }

    /// A remote with a pruned key's, an orphan's, an old generation's waiters and notes (to go),
    /// and the current generation's of two live keys, a claims ref and a look-alike (to stay).
    fn remote_with_waiters() -> (super::super::testing::Remote, Vec<String>, Vec<String>) {
        let remote = super::super::testing::Remote::new();
        remote.put_state(&at_generation("keep", Status::Passing, 2));
        let mut old = at_generation("gone", Status::Passing, 4);
        old.state.changed = 0;
        remote.put_state(&old);
        remote.put_state(&at_generation("open", Status::Fixing, 7));
        let go = vec![
            put_side(&remote, "gone", 4, "a", false),
            put_side(&remote, "gone", 4, "a", true),
            put_side(&remote, "orphan", 2, "b", false),
            put_side(&remote, "orphan", 2, "b", true),
            put_side(&remote, "open", 6, "c", false),
            put_side(&remote, "keep", 1, "d", true),
            // A join that landed after the fix's clean-up read the refs.
            put_side(&remote, "keep", 2, "d", false),
        ];
        let mut stay = vec![
            put_side(&remote, "open", 7, "c", false),
            put_side(&remote, "keep", 2, "d", true),
            "refs/buildlock/claims/registry".to_owned(),
            // The shape of a waiter's ref, but a state commit: not ours.
            "refs/buildlock/wait/orphan/_/1/x".to_owned(),
        ];
        let bait = remote.put_state(&at_generation("bait", Status::Broken, 1));
        for name in &stay[2..] {
            remote.set_ref(name, &bait);
        }
        stay.push("refs/buildlock/state/bait/_/1".to_owned());
        stay.extend(["keep", "open"].map(|k| state_ref(&key_path(k), 1)));
        stay.sort();
        (remote, go, stay)
    }

    fn left(remote: &super::super::testing::Remote) -> Vec<String> {
        remote.refs().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn pruning_a_real_remote_deletes_the_waiters_and_notes_nothing_reads_again() {
        let (remote, go, stay) = remote_with_waiters();
        let deleted = remote.store("a").prune(&key_path("keep"));
        assert_eq!(left(&remote), stay, "deleted: {go:?}");
        assert_eq!(
            deleted,
            1 + go.len(),
            "gone's state, and the waiters and notes"
        );
    }

    // regression: a deletion whose ref vanished between the server's advertisement and its
    // update ("unable to resolve reference") was a permanent error, and the prune gave up.
    #[test]
    fn a_prune_whose_deletion_loses_a_race_on_the_server_reads_again() {
        let (remote, go, stay) = remote_with_waiters();
        // The server's pre-receive hook (after the advertisement, before the update) deletes
        // one of the refs the push deletes, once: as a waiter leaving at that moment does.
        let hook = remote.bare.join("hooks/pre-receive");
        std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
        let once = remote.bare.join("raced");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\ngrep -q ' {victim}$' || exit 0\ntest -e {once} && exit 0\n\
                 touch {once}\nenv -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY \
                 -u GIT_ALTERNATE_OBJECT_DIRECTORIES git update-ref -d {victim}\n",
                once = once.display(),
                victim = go[4],
            ),
        )
        .unwrap();
        crate::os::fs::set_mode(&hook, 0o755).unwrap();
        let store = remote.store("a");
        let deleted = store.prune(&key_path("keep"));
        assert!(once.exists(), "the race was run");
        assert_eq!(left(&remote), stay, "deleted: {go:?}");
        assert_eq!(deleted, go.len(), "all but the ref deleted by the race");
    }

    #[test]
    fn pruning_a_real_remote_deletes_old_keys_and_leaves_unknown_refs_alone() {
        let remote = super::super::testing::Remote::new();
        let store = remote.store("a");
        // `changed` 0 is long before any cutoff: all are old; "keep" is the key just fixed.
        let gone = remote.put_state(&doc("gone", Status::Passing, 0));
        remote.set_ref(&fix_ref_name("gone", &gone), &gone);
        remote.put_state(&doc("keep", Status::Passing, 0));
        remote.put_state(&doc("open", Status::Fixing, time::now()));
        // Refs under refs/buildlock/ that are not a key's: another part's (claims), or
        // shapes we never write. Each points at an old passing state, the bait.
        let bait = remote.put_state(&doc("bait", Status::Passing, 0));
        let foreign = [
            "refs/buildlock/claims/registry".to_owned(),
            "refs/buildlock/agents/a".to_owned(),
            "refs/buildlock/state/bait/_/x1".to_owned(),
            "refs/buildlock/fix/bait/_/not-its-oid".to_owned(),
            format!("refs/buildlock/fix/bait/{bait}"),
        ];
        for name in &foreign {
            remote.set_ref(name, &bait);
        }
        assert_eq!(
            store.prune(&key_path("keep")),
            3,
            "gone's state and fix, bait's state"
        );
        let left: Vec<String> = remote.refs().into_iter().map(|(n, _)| n).collect();
        let mut want: Vec<String> = foreign.to_vec();
        want.extend([
            "refs/buildlock/state/keep/_/1".to_owned(),
            "refs/buildlock/state/open/_/1".to_owned(),
        ]);
        want.sort();
        assert_eq!(left, want);
    }
}
