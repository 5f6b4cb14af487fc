//! Reading the remote: what a key's refs hold, decoded ([`View`]), for the flows' reads and for
//! the transaction engine.
//!
//! Guarantees:
//! - one read of a key costs one `ls-remote` (its base's state refs, its own fix and waiter refs)
//!   and at most one fetch, of the tips this machine does not have yet (and, for a transition
//!   that ends the waiters' episode and for `status`, of their records): a waiter that looks
//!   while nothing moves costs the remote one `ls-remote` and nothing else, however many others
//!   join;
//!   nothing of the user's repository changes (no ref is written);
//! - the state read has the waiters' own records folded in (see `waiters`), so every reader sees
//!   who waits, whether or not a state commit has recorded them yet;
//! - a read never guesses: a tip that cannot be decoded is reported as damaged, with the reason
//!   and the newest good state below it (for the generation floor and the counters), and a remote
//!   that cannot be reached reads as [`Read::Unreachable`], never as passing;
//! - being unreachable is said once when it ends ("reached the remote again").

use std::time::Instant;

use super::RemoteStore;
use super::chain::{self, Doc};
use super::refs::{self, KeyRefs, Tip, WaitRef, base_stem, in_base, key_path, short, top};
use super::shared;
use super::waiters::{self, Folded};
use crate::os::remote_git::Failure;
use crate::os::time::Millis;
use crate::os::{say, time};
use crate::protocol::key::{base_of, file_stem};
use crate::protocol::state::Observed;
use crate::store::{BaseView, Read};

/// How far back a damaged tip is searched for the newest good state.
const LAST_GOOD_LIMIT: usize = 64;

/// What one read of a key on the remote found.
pub(super) struct View {
    /// The highest epoch: the key's state.
    pub current: Option<Tip>,
    /// Lower epochs (left by an agent that created the key from a stale read): deleted with
    /// leases by the next transition.
    pub strays: Vec<Tip>,
    /// The key's fix refs `(name, oid)`.
    pub fixes: Vec<(String, String)>,
    /// The decoded tip.
    pub doc: Option<Doc>,
    /// Why the tip could not be used, when it could not.
    pub damaged: Option<String>,
    /// Whether the tip is a commit, so that the next state commit can descend from it.
    pub tip_is_commit: bool,
    /// For a damaged tip: the newest good state below it (generation floor, counters).
    pub last_good: Option<Doc>,
    /// The base's pass counter: the highest over its keys.
    pub base_passes: u64,
}

impl View {
    /// The newest good state of the key: its tip, or below a damaged tip.
    pub fn prev(&self) -> Option<&Doc> {
        self.doc.as_ref().or(self.last_good.as_ref())
    }
}

/// The waiters' refs of a key as one read found them, and what folding their records into its
/// state did (for the history and the counts of the next state commit).
#[derive(Default)]
pub(super) struct Waiting {
    pub refs: Vec<WaitRef>,
    pub folded: Folded,
    /// Records of the current generation that are not in the local object store (not fetched):
    /// left out of the fold.
    pub unread: usize,
}

/// What folding a waiter's record into the state observes: a waiter's failure against a fixer
/// that no machine can see die, judged by no clock.
fn fold_seen(view: &View) -> Observed {
    Observed {
        now: time::now(),
        stale_after: Millis::MAX,
        max_fix_attempts: u32::MAX,
        max_fix_time: Millis::MAX,
        generation_floor: view.prev().map_or(0, |d| d.state.generation),
        passes: view.base_passes,
        fixer_lock_free: false,
        fixer_running: false,
        seen_silent: None,
        elector_dead: false,
    }
}

/// Folds the records of `waits` (those in the local object store) into the state `view` read.
fn fold_waiters(repo: &git2::Repository, view: &mut View, waits: Vec<WaitRef>) -> Waiting {
    let seen = fold_seen(view);
    let mut waiting = Waiting {
        refs: waits,
        folded: Vec::new(),
        unread: 0,
    };
    if let Some(doc) = view.doc.as_mut() {
        let current: Vec<&WaitRef> = waiting
            .refs
            .iter()
            .filter(|w| w.generation == doc.state.generation)
            .collect();
        waiting.unread = current
            .iter()
            .filter(|w| !chain::has_object(repo, &w.oid))
            .count();
        let records: Vec<waiters::Record> = current
            .iter()
            .filter_map(|w| waiters::decode(repo, &w.oid))
            .collect();
        let (state, folded) = waiters::fold(&doc.state, &records, &seen);
        doc.state = state;
        waiting.folded = folded;
    }
    waiting
}

/// The tips (highest epochs) of these keys.
fn tops<'a>(keys: impl Iterator<Item = &'a KeyRefs>) -> Vec<&'a str> {
    keys.filter_map(|(tips, _)| top(tips))
        .map(|t| t.oid.as_str())
        .collect()
}

/// Adds one key of `base` (the one read for when `own`) to the base's view: a key of another
/// base in the same file stem is no part of it, and only the key's own damage is reported.
fn add_to_base(view: &mut BaseView, base: &str, own: bool, doc: Result<Doc, String>) {
    match doc {
        Ok(doc) if doc.base == base => {
            view.passes = view.passes.max(doc.passes);
            view.keys.push(doc.state);
        }
        Ok(_) => {}
        Err(why) if own => view.damaged = Some(why),
        Err(_) => {}
    }
}

impl RemoteStore {
    /// Fetches the objects among `oids` that the local object store lacks (one fetch).
    fn fetch_missing(&self, repo: &git2::Repository, oids: &[&str]) -> Result<(), Failure> {
        let missing: Vec<String> = oids
            .iter()
            .filter(|o| !chain::has_object(repo, o))
            .map(|o| (*o).to_owned())
            .collect();
        self.git.fetch_objects(&missing)
    }

    fn repo_for_read(&self) -> Result<git2::Repository, Failure> {
        self.repo()
            .map_err(|e| Failure::Permanent(format!("{e:#}")))
    }

    /// One read of `key`: one `ls-remote` of its base's refs, and one fetch of the tips and
    /// waiter records that are new here. The base's other keys give its pass counter
    /// (`Observed::passes`).
    pub(super) fn view(&self, key: &str) -> Result<View, Failure> {
        self.view_waiting(key, false).map(|(view, _)| view)
    }

    /// [`Self::view`], with the key's waiters' refs and what folding them did; `records`: fetch
    /// the waiters' records this machine lacks too (else only those it has are folded in).
    pub(super) fn view_waiting(
        &self,
        key: &str,
        records: bool,
    ) -> Result<(View, Waiting), Failure> {
        let path = key_path(key);
        let base_stem = file_stem(base_of(key));
        let refs = self.git.ls_remote(&[
            refs::base_states(&base_stem),
            refs::key_fixes(&path),
            refs::key_waits(&path),
        ])?;
        let waits = refs::waits_of(&refs, &path);
        let mut groups = refs::group(&refs);
        let repo = self.repo_for_read()?;
        let mut wanted = tops(
            groups
                .iter()
                .filter(|(p, _)| in_base(p, &base_stem))
                .map(|(_, k)| k),
        );
        if records {
            wanted.extend(waits.iter().map(|w| w.oid.as_str()));
        }
        self.fetch_missing(&repo, &wanted)?;
        let base_passes = groups
            .iter()
            .filter(|(p, _)| in_base(p, &base_stem) && **p != path)
            .filter_map(|(_, (tips, _))| top(tips))
            .filter_map(|t| chain::decode(&repo, &t.oid, "").doc.ok())
            .map(|d| d.passes)
            .max()
            .unwrap_or(0);
        let (tips, fixes) = groups.remove(&path).unwrap_or_default();
        let mut view = view_of(&repo, key, tips, fixes);
        view.base_passes = base_passes.max(view.doc.as_ref().map_or(0, |d| d.passes));
        let waiting = fold_waiters(&repo, &mut view, waits);
        Ok((view, waiting))
    }

    /// Every key on the remote, decoded, its waiters folded in (one `ls-remote`, one fetch of
    /// what is new).
    pub(super) fn views(&self) -> Result<Vec<(String, View)>, Failure> {
        Ok(self
            .views_waiting()?
            .into_iter()
            .map(|(stem, view, _)| (stem, view))
            .collect())
    }

    /// [`Self::views`], with what folding each key's waiters did.
    pub(super) fn views_waiting(&self) -> Result<Vec<(String, View, Waiting)>, Failure> {
        let refs = self.git.ls_remote(&refs::all_keys())?;
        let groups = refs::group(&refs);
        let repo = self.repo_for_read()?;
        let mut wanted = tops(groups.values());
        wanted.extend(
            refs.iter()
                .filter(|(_, name)| {
                    name.starts_with(refs::WAIT_PREFIX) || name.starts_with(refs::NOTE_PREFIX)
                })
                .map(|(oid, _)| oid.as_str()),
        );
        self.fetch_missing(&repo, &wanted)?;
        Ok(groups
            .into_iter()
            .filter(|(_, (tips, _))| !tips.is_empty())
            .map(|(stem, (tips, fixes))| {
                let mut view = view_of(&repo, "", tips, fixes);
                let waiting = fold_waiters(&repo, &mut view, refs::waits_of(&refs, &stem));
                (stem, view, waiting)
            })
            .collect())
    }

    /// The states of a base's keys (one `ls-remote`, one fetch of the new tips).
    pub(super) fn base_view(&self, base: &str) -> Result<BaseView, Failure> {
        let path = key_path(base);
        let base_stem = base_stem(&path).to_owned();
        // The claims guard's listing, when it just read the states too (see `shared`).
        let prefix = refs::base_states(&base_stem);
        let refs = match shared::take(
            &self.git_dir,
            &self.git.remote,
            prefix.trim_end_matches('*'),
        ) {
            Some(refs) => refs,
            None => self.git.ls_remote(&[prefix])?,
        };
        let groups = refs::group(&refs);
        let repo = self.repo_for_read()?;
        let tops = tops(groups.values());
        self.fetch_missing(&repo, &tops)?;
        let mut view = BaseView::default();
        for (p, (tips, _)) in groups {
            if !in_base(&p, &base_stem) {
                continue;
            }
            let Some(top) = top(&tips) else {
                continue;
            };
            add_to_base(
                &mut view,
                base,
                p == path,
                chain::decode(&repo, &top.oid, "").doc,
            );
        }
        Ok(view)
    }

    /// The read for the flows: the key's state, or why the remote could not be reached.
    /// One read of `key` for a flow; `records`: fetch the waiters' records this machine lacks
    /// too (see [`Self::view_waiting`]).
    pub(super) fn read_key(&self, key: &str, records: bool) -> Read {
        let read = if records {
            self.view_waiting(key, true).map(|(view, _)| view)
        } else {
            self.view(key)
        };
        match read {
            Ok(v) => {
                self.reached();
                match (v.doc, v.damaged) {
                    (Some(doc), _) => Read::Found {
                        base: doc.base,
                        state: doc.state,
                    },
                    (None, Some(why)) => Read::Damaged(why),
                    (None, None) => Read::Missing,
                }
            }
            Err(f) => {
                let mut u = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
                let since = u.map_or_else(Instant::now, |(s, _)| s);
                *u = Some((since, Instant::now()));
                Read::Unreachable(format!(
                    "cannot reach the remote `{}` for {}: {}",
                    self.git.remote,
                    time::human(since.elapsed()),
                    f.message()
                ))
            }
        }
    }

    /// A read reached the remote: says so if reads had been failing.
    pub(super) fn reached(&self) {
        let mut u = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        if u.take().is_some() {
            say::say(format!("reached the remote `{}` again", self.git.remote));
        }
    }
}

/// Decodes a key's refs (`key` empty: whatever key the tip holds).
fn view_of(
    repo: &git2::Repository,
    key: &str,
    tips: Vec<Tip>,
    fixes: Vec<(String, String)>,
) -> View {
    let (current, strays) = refs::split_epochs(tips);
    let mut view = View {
        current: current.clone(),
        strays,
        fixes,
        doc: None,
        damaged: None,
        tip_is_commit: false,
        last_good: None,
        base_passes: 0,
    };
    if let Some(tip) = &current {
        let decoded = chain::decode(repo, &tip.oid, key);
        view.tip_is_commit = decoded.is_commit;
        match decoded.doc {
            Ok(doc) => view.doc = Some(doc),
            Err(why) => {
                view.damaged = Some(format!("{} ({}): {why}", tip.name, short(&tip.oid)));
                if decoded.is_commit {
                    view.last_good = repo
                        .find_commit(git2::Oid::from_str(&tip.oid).unwrap_or(git2::Oid::zero()))
                        .ok()
                        .and_then(|c| c.parent_id(0).ok())
                        .and_then(|p| chain::last_good(repo, &p.to_string(), key, LAST_GOOD_LIMIT));
                }
            }
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ledger::Totals;
    use crate::protocol::state::{KeyState, Status};

    fn doc(key: &str, base: &str, seq: u64, passes: u64) -> Doc {
        Doc {
            schema: chain::SCHEMA,
            base: base.into(),
            seq,
            totals: Totals::default(),
            passes,
            state: KeyState::passing(key),
        }
    }

    fn tip(key: &str, epoch: u64, oid: &str) -> Tip {
        Tip {
            epoch,
            oid: oid.into(),
            name: refs::state_ref(&key_path(key), epoch),
        }
    }

    #[test]
    fn a_base_view_holds_the_keys_of_that_base_only() {
        let mut view = BaseView::default();
        add_to_base(&mut view, "commit", true, Ok(doc("commit", "commit", 1, 3)));
        add_to_base(
            &mut view,
            "commit",
            false,
            Ok(doc("commit#0123456789abcdef", "commit", 1, 5)),
        );
        add_to_base(&mut view, "commit", false, Ok(doc("other", "other", 1, 9)));
        assert_eq!(
            view.passes, 5,
            "the highest pass counter of the base's keys"
        );
        let keys: Vec<&str> = view.keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["commit", "commit#0123456789abcdef"]);
        assert_eq!(view.damaged, None);
    }

    #[test]
    fn only_the_keys_own_damage_is_reported() {
        let mut view = BaseView::default();
        add_to_base(
            &mut view,
            "commit",
            false,
            Err("a sub key is damaged".into()),
        );
        assert_eq!(view.damaged, None);
        add_to_base(&mut view, "commit", true, Err("the key is damaged".into()));
        assert_eq!(view.damaged.as_deref(), Some("the key is damaged"));
        assert!(view.keys.is_empty());
    }

    #[test]
    fn a_view_decodes_the_highest_epoch_and_keeps_the_others_as_strays() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let old = chain::write(&repo, &doc("k", "k", 1, 0), None, "s", &[], None, 1).unwrap();
        let new = chain::write(&repo, &doc("k", "k", 9, 0), None, "s", &[], None, 2).unwrap();
        let fixes = vec![("refs/buildlock/fix/k/_/f".to_owned(), "f".to_owned())];
        let view = view_of(
            &repo,
            "k",
            vec![tip("k", 9, &new), tip("k", 1, &old)],
            fixes.clone(),
        );
        assert_eq!(view.current, Some(tip("k", 9, &new)));
        assert_eq!(view.strays, [tip("k", 1, &old)]);
        assert_eq!(view.fixes, fixes);
        assert_eq!(view.doc.as_ref().map(|d| d.seq), Some(9));
        assert!(view.tip_is_commit);
        assert_eq!(view.damaged, None);
        assert_eq!(view.prev().map(|d| d.seq), Some(9));
    }

    #[test]
    fn a_damaged_tip_says_why_and_finds_the_last_good_state_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let good = chain::write(&repo, &doc("k", "k", 4, 0), None, "s", &[], None, 1).unwrap();
        // The next commit holds another key's state: damaged for `k`.
        let wrong =
            chain::write(&repo, &doc("x", "x", 5, 0), Some(&good), "s", &[], None, 2).unwrap();
        let view = view_of(&repo, "k", vec![tip("k", 1, &wrong)], Vec::new());
        assert!(view.doc.is_none());
        let why = view.damaged.as_deref().unwrap();
        assert!(why.contains(&tip("k", 1, "").name), "{why}");
        assert!(why.contains(short(&wrong)), "{why}");
        assert!(why.contains("it holds key `x`"), "{why}");
        assert!(view.tip_is_commit, "a damaged commit can still be a parent");
        assert_eq!(view.prev().map(|d| d.seq), Some(4));
    }

    #[test]
    fn a_tip_that_is_not_a_commit_has_no_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"not a state").unwrap().to_string();
        let view = view_of(&repo, "k", vec![tip("k", 1, &blob)], Vec::new());
        assert!(view.damaged.as_deref().unwrap().contains("blob"));
        assert!(!view.tip_is_commit);
        assert!(view.prev().is_none());
    }

    #[test]
    fn a_key_with_no_refs_reads_as_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let view = view_of(&repo, "k", Vec::new(), Vec::new());
        assert!(view.current.is_none() && view.doc.is_none() && view.damaged.is_none());
        assert!(!view.tip_is_commit);
    }

    #[test]
    fn reads_against_a_real_remote() {
        let remote = super::super::testing::Remote::new();
        let store = remote.store("a");
        assert!(matches!(store.read_key("commit", false), Read::Missing));
        let base = store.base_view("commit").unwrap();
        assert!(base.keys.is_empty() && base.damaged.is_none());
        remote.put_state(&doc("commit", "commit", 1, 2));
        let mut sub = doc("commit#0123456789abcdef", "commit", 1, 7);
        sub.state.status = Status::Broken;
        remote.put_state(&sub);
        match store.read_key("commit", false) {
            Read::Found { base, state } => {
                assert_eq!(base, "commit");
                assert_eq!(state.status, Status::Passing);
            }
            other => panic!("{other:?}"),
        }
        let view = store.view("commit").unwrap();
        assert_eq!(view.base_passes, 7, "the base's other keys count");
        let base = store.base_view("commit").unwrap();
        assert_eq!(base.keys.len(), 2);
        assert_eq!(base.passes, 7);
        assert_eq!(store.views().unwrap().len(), 2);
    }

    #[test]
    fn an_unreachable_remote_is_never_read_as_passing() {
        let remote = super::super::testing::Remote::new();
        let store = remote.store("a");
        remote.remove();
        match store.read_key("commit", false) {
            Read::Unreachable(why) => assert!(why.contains("origin"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(store.base_view("commit").is_err());
        assert!(store.views().is_err());
    }
}
