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
use super::git::Update;
use super::read::View;
use super::refs::{Tip, fix_ref_name};
use crate::os::env;
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
