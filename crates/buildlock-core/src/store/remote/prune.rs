//! Keeping the remote bounded: where the next state commit goes (extending the key's chain, or
//! *compacting* it into a new root under the next epoch), which refs a transition retires, and
//! which keys a fix prunes.
//!
//! Guarantees:
//! - **Fast-forward only.** No ref is ever rewound: a chain grows by a child of its tip, and a
//!   compacted chain is a new ref (the next epoch) whose root records the old tip in a
//!   `Buildlock-Previous:` trailer; the old epoch (and any stray) is deleted in the same atomic
//!   push, leased on what was read, so there is never a moment with no ref for the key and a
//!   racing agent's lease on the old epoch fails;
//! - **Bounded.** A chain is compacted once it is [`compact_after`] commits long; passing keys
//!   untouched for [`prune_after`] are deleted (with leases; best effort, one try: whatever raced
//!   it stays for the next time) after a fix; a key's fix refs are replaced by the newest one;
//! - every deletion carries the oid it was read at: nothing that moved since is deleted.
//!
//! The rules are pure functions; [`RemoteStore::prune`] is their only I/O.

use std::time::Duration;

use super::RemoteStore;
use super::chain::Doc;
use super::read::View;
use super::refs::{Tip, fix_ref_name};
use crate::os::env;
use crate::os::remote_git::Update;
use crate::os::time::{self, Millis};
use crate::protocol::state::{Outcome, Status};

/// A chain this long is compacted by the next transition.
pub fn compact_after() -> u64 {
    env::remote_compact_after().unwrap_or(64).max(2)
}

/// Passing keys untouched this long are deleted from the remote.
pub fn prune_after() -> Duration {
    env::remote_prune_after().unwrap_or(Duration::from_secs(24 * 3600))
}

/// One push prunes at most about this many refs; the rest wait for the next fix.
const PRUNE_BATCH: usize = 200;

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

/// Keys whose state changed before this are old enough to prune.
pub(super) fn cutoff(now: Millis, prune_after: Duration) -> Millis {
    now.saturating_sub(prune_after.as_millis() as Millis)
}

/// Whether the key at `path` whose tip holds `doc` is pruned: passing, untouched since before
/// `cutoff`, and not the key that was just fixed (`except`).
pub(super) fn prunable(path: &str, doc: &Doc, except: &str, cutoff: Millis) -> bool {
    path != except && doc.state.status == Status::Passing && doc.state.changed < cutoff
}

/// The deletions that prune `views` (every ref of each prunable key), about [`PRUNE_BATCH`] at
/// most. A key whose tip is damaged is left alone.
pub(super) fn prune_updates(views: &[(String, View)], except: &str, cutoff: Millis) -> Vec<Update> {
    let mut updates = Vec::new();
    for (path, v) in views {
        let Some(doc) = &v.doc else { continue };
        if !prunable(path, doc, except, cutoff) {
            continue;
        }
        for t in v.current.iter().chain(&v.strays) {
            updates.push(delete(&t.name, &t.oid));
        }
        for (n, oid) in &v.fixes {
            updates.push(delete(n, oid));
        }
        if updates.len() >= PRUNE_BATCH {
            break;
        }
    }
    updates
}

impl RemoteStore {
    /// After a fix: deletes passing keys untouched for [`prune_after`] (with leases; best effort,
    /// one try: whatever raced it stays for the next time).
    pub(super) fn prune(&self, except: &str) {
        let Ok(views) = self.views() else {
            return;
        };
        let updates = prune_updates(&views, except, cutoff(time::now(), prune_after()));
        if !updates.is_empty() {
            let _ = self.git.push(&updates);
        }
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
    fn the_cutoff_is_now_minus_the_age_and_never_negative() {
        assert_eq!(cutoff(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(cutoff(1_000, Duration::from_secs(3)), 0);
    }

    #[test]
    fn only_old_passing_keys_other_than_the_fixed_one_are_pruned() {
        let old = doc("a", Status::Passing, 100);
        assert!(prunable("a/_", &old, "b/_", 101));
        assert!(
            !prunable("a/_", &old, "a/_", 101),
            "the key just fixed stays"
        );
        assert!(
            !prunable("a/_", &old, "b/_", 100),
            "changed at the cutoff stays"
        );
        for status in [Status::Broken, Status::Fixing] {
            assert!(
                !prunable("a/_", &doc("a", status, 1), "b/_", 101),
                "{status:?}"
            );
        }
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
            Some(doc("b", Status::Passing, 500)),
        );
        let broken = view(
            Some(tip("c/_", 1, "c1")),
            Vec::new(),
            &[],
            Some(doc("c", Status::Broken, 1)),
        );
        let damaged = view(Some(tip("d/_", 1, "d1")), Vec::new(), &[], None);
        let views = vec![
            ("a/_".to_owned(), pruned),
            ("b/_".to_owned(), fresh),
            ("c/_".to_owned(), broken),
            ("d/_".to_owned(), damaged),
        ];
        assert_eq!(
            names(&prune_updates(&views, "x/_", 100)),
            [
                ("refs/buildlock/state/a/_/3", None, Some("a3")),
                ("refs/buildlock/state/a/_/1", None, Some("a1")),
                ("refs/buildlock/fix/a/_/f", None, Some("f")),
            ]
        );
        assert!(prune_updates(&views, "a/_", 100).is_empty());
    }

    #[test]
    fn one_prune_is_bounded() {
        let views: Vec<(String, View)> = (0..500)
            .map(|i| {
                let key = format!("k{i}");
                let path = key_path(&key);
                let v = view(
                    Some(tip(&path, 1, "o")),
                    Vec::new(),
                    &[],
                    Some(doc(&key, Status::Passing, 1)),
                );
                (path, v)
            })
            .collect();
        assert_eq!(prune_updates(&views, "", 100).len(), PRUNE_BATCH);
    }

    #[test]
    fn pruning_a_real_remote_deletes_old_passing_keys() {
        let remote = super::super::testing::Remote::new();
        let store = remote.store("a");
        // `changed` 0 is long before any cutoff: both are old; "keep" is the key just fixed.
        let gone = remote.put_state(&doc("gone", Status::Passing, 0));
        remote.set_ref(&fix_ref_name("gone", &gone), &gone);
        remote.put_state(&doc("keep", Status::Passing, 0));
        remote.put_state(&doc("open", Status::Broken, 0));
        store.prune(&key_path("keep"));
        let left: Vec<String> = remote.refs().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            left,
            [
                "refs/buildlock/state/keep/_/1",
                "refs/buildlock/state/open/_/1"
            ]
        );
    }
}
