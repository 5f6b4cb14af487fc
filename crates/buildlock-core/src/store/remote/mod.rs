//! The remote backend: each key's state is a chain of commits under `refs/buildlock/` on a git
//! remote, moved only by compare-and-swap pushes. Agents on machines that share no disk (the jobs
//! of a CI matrix) coordinate through the repository's own remote, with no server of ours.
//!
//! ```text
//! refs/buildlock/state/<base>/<sub>/<E>   the key's chain; E = the `seq` of the chain's root
//! refs/buildlock/fix/<base>/<sub>/<oid>   the commit that fixed the key's last breakage
//!
//! <base> is the base key's file stem; <sub> is `_` for the base key itself, or the signature
//! of a `match = "signature"` key: a base's keys are listed with one pattern, and no ref name is
//! ever a prefix directory of another (git refuses `a` beside `a/b`).
//! refs/buildlock/probe/<nonce>           `buildlock doctor`'s push test (created, then deleted)
//! ```
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
//! - **Bounded.** Passing keys untouched for [`prune_after`] are deleted (with leases) after a
//!   fix; fix refs of a key are replaced by the newest one.
//! - **No wall clocks compared.** The remote cannot see a process die ([`Store::fixer_gone`] is
//!   always false) and the wall-clock lease rule is switched off: a fixer is stale only when a
//!   waiter watched its lease (generation, heartbeat) not move for `stale_after` on its own
//!   monotonic clock (`Observed::seen_silent`). A heartbeat is a state commit; its value is only
//!   compared for equality.
//! - **Never fails open.** A transient failure (connection refused, timeout, a server that hung
//!   up) is retried with backoff within `coordination.wait`; a permanent one (permission,
//!   authentication, no such remote, a server hook that declines) fails at once; both carry git's
//!   own message. A read that cannot reach the remote says so ([`Read::Unreachable`]).
//! - **The user's git.** Every remote operation runs their `git` (see [`git`]); state commits are
//!   written in process into the local object store and carry buildlock's own identity.

use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Applied, BaseView, FixerHold, Interrupted, Policy, Read, Store, Totals};
use crate::os::process::Process;
use crate::os::time::{self, Millis};
use crate::os::{env, say};
use crate::protocol::key::{base_of, file_stem};
use crate::protocol::ledger::history_entries;
use crate::protocol::state::{Event, KeyState, Lease, Observed, Outcome, Status, transition};

pub mod chain;
pub mod git;

use chain::Doc;
use git::{Failure, Git, Pushed, Update};

pub const STATE_PREFIX: &str = "refs/buildlock/state/";
pub const FIX_PREFIX: &str = "refs/buildlock/fix/";
pub const PROBE_PREFIX: &str = "refs/buildlock/probe/";

/// A chain this long is compacted by the next transition.
pub fn compact_after() -> u64 {
    env::remote_compact_after().unwrap_or(64).max(2)
}

/// Passing keys untouched this long are deleted from the remote.
pub fn prune_after() -> Duration {
    env::remote_prune_after().unwrap_or(Duration::from_secs(24 * 3600))
}

/// How far back `buildlock log` and the generation floor look in one chain.
const WALK_LIMIT: usize = 10_000;

/// One ref of a key's chain on the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tip {
    epoch: u64,
    oid: String,
    name: String,
}

/// A key's refs on the remote: its chain's epochs, and its fix refs `(name, oid)`.
type KeyRefs = (Vec<Tip>, Vec<(String, String)>);

/// Adds a transition's counts to a key's totals.
type Count = Box<dyn FnOnce(&mut Totals)>;

/// What one read of a key on the remote found.
struct View {
    /// The highest epoch: the key's state.
    current: Option<Tip>,
    /// Lower epochs (left by an agent that created the key from a stale read): deleted with
    /// leases by the next transition.
    strays: Vec<Tip>,
    /// The key's fix refs `(name, oid)`.
    fixes: Vec<(String, String)>,
    /// The decoded tip.
    doc: Option<Doc>,
    /// Why the tip could not be used, when it could not.
    damaged: Option<String>,
    /// Whether the tip is a commit, so that the next state commit can descend from it.
    tip_is_commit: bool,
    /// For a damaged tip: the newest good state below it (generation floor, counters).
    last_good: Option<Doc>,
    /// The base's pass counter: the highest over its keys.
    base_passes: u64,
}

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

    fn state_ref(path: &str, epoch: u64) -> String {
        format!("{STATE_PREFIX}{path}/{epoch}")
    }

    /// The ref under which the fix commit `commit` of `key` is published.
    pub fn fix_ref_name(key: &str, commit: &str) -> String {
        format!("{FIX_PREFIX}{}/{commit}", key_path(key))
    }

    /// Groups `ls-remote` output into keys: stem -> (epochs, fix refs).
    fn group(refs: &[(String, String)]) -> BTreeMap<String, KeyRefs> {
        let mut keys: BTreeMap<String, KeyRefs> = BTreeMap::new();
        for (oid, name) in refs {
            if let Some(rest) = name.strip_prefix(STATE_PREFIX) {
                let Some((stem, epoch)) = rest.rsplit_once('/') else {
                    continue;
                };
                if stem.matches('/').count() != 1 {
                    continue;
                }
                let Ok(epoch) = epoch.parse::<u64>() else {
                    continue;
                };
                keys.entry(stem.to_owned()).or_default().0.push(Tip {
                    epoch,
                    oid: oid.clone(),
                    name: name.clone(),
                });
            } else if let Some(rest) = name.strip_prefix(FIX_PREFIX) {
                if let Some((stem, _)) = rest
                    .rsplit_once('/')
                    .filter(|(s, _)| s.matches('/').count() == 1)
                {
                    keys.entry(stem.to_owned())
                        .or_default()
                        .1
                        .push((name.clone(), oid.clone()));
                }
            }
        }
        keys
    }

    /// Fetches the objects among `oids` that the local object store lacks (one fetch).
    fn fetch_missing(&self, repo: &git2::Repository, oids: &[&str]) -> Result<(), Failure> {
        let missing: Vec<String> = oids
            .iter()
            .filter(|o| !chain::has_object(repo, o))
            .map(|o| (*o).to_owned())
            .collect();
        self.git.fetch_objects(&missing)
    }

    fn view_of(
        &self,
        repo: &git2::Repository,
        key: &str,
        mut tips: Vec<Tip>,
        fixes: Vec<(String, String)>,
    ) -> View {
        tips.sort_by_key(|t| t.epoch);
        let current = tips.pop();
        let mut view = View {
            current: current.clone(),
            strays: tips,
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
                            .and_then(|p| chain::last_good(repo, &p.to_string(), key, 64));
                    }
                }
            }
        }
        view
    }

    /// One read of `key`: one `ls-remote` of its base's refs, and one fetch of the tips that are
    /// new here. The base's other keys give its pass counter (`Observed::passes`).
    fn view(&self, key: &str) -> Result<View, Failure> {
        let path = key_path(key);
        let base_stem = file_stem(base_of(key));
        let refs = self.git.ls_remote(&[
            format!("{STATE_PREFIX}{base_stem}/*"),
            format!("{FIX_PREFIX}{path}/*"),
        ])?;
        let mut groups = Self::group(&refs);
        let repo = self
            .repo()
            .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
        let tops: Vec<&str> = groups
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{base_stem}/")))
            .filter_map(|(_, (tips, _))| tips.iter().max_by_key(|t| t.epoch))
            .map(|t| t.oid.as_str())
            .collect();
        self.fetch_missing(&repo, &tops)?;
        let base_passes = groups
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("{base_stem}/")) && **p != path)
            .filter_map(|(_, (tips, _))| tips.iter().max_by_key(|t| t.epoch))
            .filter_map(|t| chain::decode(&repo, &t.oid, "").doc.ok())
            .map(|d| d.passes)
            .max()
            .unwrap_or(0);
        let (tips, fixes) = groups.remove(&path).unwrap_or_default();
        let mut view = self.view_of(&repo, key, tips, fixes);
        view.base_passes = base_passes.max(view.doc.as_ref().map_or(0, |d| d.passes));
        Ok(view)
    }

    /// Every key on the remote, decoded (one `ls-remote`, one fetch of the new tips).
    fn views(&self) -> Result<Vec<(String, View)>, Failure> {
        let refs = self
            .git
            .ls_remote(&[format!("{STATE_PREFIX}*"), format!("{FIX_PREFIX}*")])?;
        let groups = Self::group(&refs);
        let repo = self
            .repo()
            .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
        let tops: Vec<&str> = groups
            .values()
            .filter_map(|(tips, _)| tips.iter().max_by_key(|t| t.epoch))
            .map(|t| t.oid.as_str())
            .collect();
        self.fetch_missing(&repo, &tops)?;
        Ok(groups
            .into_iter()
            .filter(|(_, (tips, _))| !tips.is_empty())
            .map(|(stem, (tips, fixes))| {
                let view = self.view_of(&repo, "", tips, fixes);
                (stem, view)
            })
            .collect())
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
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

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

    /// The ref updates that publish `commit` as `key`'s new state (and its fix commit), each
    /// leased on what `view` saw.
    #[allow(clippy::too_many_arguments)]
    fn updates(
        &self,
        key: &str,
        view: &View,
        commit: &str,
        epoch: u64,
        new_fix: Option<&str>,
    ) -> Vec<Update> {
        let name = Self::state_ref(&key_path(key), epoch);
        let mut updates = vec![Update {
            name: name.clone(),
            new: Some(commit.to_owned()),
            expect: view
                .current
                .as_ref()
                .filter(|t| t.name == name)
                .map(|t| t.oid.clone()),
        }];
        // A new epoch retires the old one (and any stray) in the same atomic push.
        for old in view.current.iter().chain(&view.strays) {
            if old.name != name {
                updates.push(Update {
                    name: old.name.clone(),
                    new: None,
                    expect: Some(old.oid.clone()),
                });
            }
        }
        if let Some(fix) = new_fix {
            let fix_name = Self::fix_ref_name(key, fix);
            if !view.fixes.iter().any(|(n, _)| *n == fix_name) {
                updates.push(Update {
                    name: fix_name.clone(),
                    new: Some(fix.to_owned()),
                    expect: None,
                });
            }
            for (n, oid) in &view.fixes {
                if *n != fix_name {
                    updates.push(Update {
                        name: n.clone(),
                        new: None,
                        expect: Some(oid.clone()),
                    });
                }
            }
        }
        updates
    }

    /// One compare-and-swap transition: `decide` maps the state read to the state to write (or
    /// `None`: nothing to write). Loops until a push lands, re-reading after every lost race.
    fn transact<R>(
        &self,
        key: &str,
        base: &str,
        limit: Duration,
        stop: &dyn Fn() -> bool,
        mut decide: impl FnMut(&KeyState, &View) -> Step<R>,
    ) -> Result<(R, KeyState, KeyState, Option<String>)> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut lost = 0u32;
        let mut pushed: Option<(String, R, KeyState, KeyState, Option<String>)> = None;
        loop {
            let round = Instant::now();
            if stop() {
                return Err(Interrupted.into());
            }
            let view = self
                .retrying(deadline, || self.view(key))
                .map_err(|f| self.failed(f, started.elapsed()))?;
            // A push whose report we lost (or that raced our re-read) may have landed.
            if let Some((oid, r, before, after, damaged)) = pushed.take() {
                if view.current.as_ref().is_some_and(|t| t.oid == oid) {
                    return Ok((r, before, after, damaged));
                }
            }
            let before = match (&view.doc, &view.damaged) {
                (Some(doc), _) => doc.state.clone(),
                (None, Some(_)) => KeyState::unknown(key),
                (None, None) => KeyState::passing(key),
            };
            let (r, after, history, totals_delta) = match decide(&before, &view) {
                Step::Keep(r) if view.damaged.is_none() && view.strays.is_empty() => {
                    return Ok((r, before.clone(), before, None));
                }
                Step::Keep(r) => (r, before.clone(), Vec::new(), None),
                Step::Write {
                    result,
                    after,
                    history,
                    count,
                } => (result, after, history, count),
            };
            let prev = view.doc.as_ref().or(view.last_good.as_ref());
            let mut totals = prev.map(|d| d.totals).unwrap_or_default();
            if let Some(count) = totals_delta {
                count(&mut totals);
            }
            let seq = prev.map_or(0, |d| d.seq) + 1;
            let passes = prev
                .map_or(0, |d| d.passes)
                .max(view.base_passes)
                .max(after.passed);
            let current_epoch = view.current.as_ref().map(|t| t.epoch);
            // A new chain when the key is new, the tip cannot be a parent, or the chain is long.
            let (epoch, parent, previous) = match &view.current {
                Some(t)
                    if view.tip_is_commit && seq.saturating_sub(t.epoch) + 1 < compact_after() =>
                {
                    (t.epoch, Some(t.oid.as_str()), None)
                }
                Some(t) => (
                    seq.max(current_epoch.unwrap_or(0) + 1),
                    None,
                    Some(t.oid.as_str()),
                ),
                None => (seq, None, None),
            };
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
            let now = time::now();
            let mut history = history;
            if let Some(why) = &view.damaged {
                say::warn(format!(
                    "the state of key `{key}` on the remote `{}` was unreadable ({why}); treating it as broken \
                     with nobody fixing, and writing a new state",
                    self.git.remote
                ));
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
            let subject = subject(key, &history, &after);
            let repo = self.repo()?;
            let commit = chain::write(&repo, &doc, parent, &subject, &history, previous, now)?;
            drop(repo);
            // The fix commit travels with the state that records it (and is published again
            // if its ref went missing).
            let new_fix = after.fix_commit().map(str::to_owned).filter(|f| {
                !view
                    .fixes
                    .iter()
                    .any(|(n, _)| *n == Self::fix_ref_name(key, f))
            });
            let updates = self.updates(key, &view, &commit, epoch, new_fix.as_deref());
            let outcome = self.retrying(deadline, || self.git.push(&updates));
            let damaged = view.damaged.clone();
            match outcome {
                Ok(Pushed::Landed) => return Ok((r, before, after, damaged)),
                Ok(Pushed::Stale) => {
                    lost += 1;
                    if Instant::now() >= deadline {
                        return Err(anyhow!(
                            "coordination failed: lost {lost} races in a row for key `{key}` on the remote `{}` \
                             within {} (too many agents at once?)",
                            self.git.remote,
                            time::human(limit)
                        ));
                    }
                    pushed = Some((commit, r, before, after, damaged));
                    // Back off by a random part of a few round trips (one read and one push, as
                    // just measured), more after each loss: N agents that collided spread out
                    // over about N round trips instead of colliding again in lockstep.
                    let rtt = round.elapsed().min(Duration::from_secs(2));
                    std::thread::sleep(time::jitter(rtt * lost.min(4)));
                }
                Err(Failure::Transient(m)) => {
                    // Did it land after all? One last look.
                    if let Ok(v) = self.view(key) {
                        if v.current.as_ref().is_some_and(|t| t.oid == commit) {
                            return Ok((r, before, after, damaged));
                        }
                    }
                    return Err(self.failed(Failure::Transient(m), started.elapsed()));
                }
                Err(f) => return Err(self.failed(f, started.elapsed())),
            }
        }
    }

    /// After a fix: deletes passing keys untouched for [`prune_after`] (with leases; best effort,
    /// one try: whatever raced it stays for the next time).
    fn prune(&self, except: &str) {
        let Ok(views) = self.views() else {
            return;
        };
        let cutoff = time::now().saturating_sub(prune_after().as_millis() as Millis);
        let mut updates = Vec::new();
        for (stem, v) in views {
            let Some(doc) = &v.doc else { continue };
            if stem == except || doc.state.status != Status::Passing || doc.state.changed >= cutoff
            {
                continue;
            }
            for t in v.current.iter().chain(&v.strays) {
                updates.push(Update {
                    name: t.name.clone(),
                    new: None,
                    expect: Some(t.oid.clone()),
                });
            }
            for (n, oid) in &v.fixes {
                updates.push(Update {
                    name: n.clone(),
                    new: None,
                    expect: Some(oid.clone()),
                });
            }
            if updates.len() >= 200 {
                break;
            }
        }
        if !updates.is_empty() {
            let _ = self.git.push(&updates);
        }
    }

    /// Pushes and deletes a probe ref: whether this machine may write `refs/buildlock/*`.
    pub fn probe(&self) -> Result<(), String> {
        let repo = self.repo().map_err(|e| format!("{e:#}"))?;
        let doc = Doc {
            schema: chain::SCHEMA,
            base: "probe".into(),
            seq: 1,
            totals: Totals::default(),
            passes: 0,
            state: KeyState::passing("probe"),
        };
        let now = time::now();
        let commit = chain::write(
            &repo,
            &doc,
            None,
            "buildlock doctor: push test",
            &[],
            None,
            now,
        )
        .map_err(|e| format!("{e:#}"))?;
        let name = format!(
            "{PROBE_PREFIX}{}-{}",
            crate::os::process::hostname(),
            std::process::id()
        );
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_./".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let create = [Update {
            name: name.clone(),
            new: Some(commit.clone()),
            expect: None,
        }];
        match self.git.push(&create) {
            Ok(Pushed::Landed) => {}
            Ok(Pushed::Stale) => return Err(format!("{name} exists already on the remote")),
            Err(f) => {
                return Err(format!(
                    "cannot create {name}: {f}\nthe credentials git uses here need permission to push refs \
                     under refs/buildlock/ (GitHub Actions: `permissions: contents: write`; GitLab: a token \
                     with write_repository, or a deploy key with write access)"
                ));
            }
        }
        let delete = [Update {
            name: name.clone(),
            new: None,
            expect: Some(commit),
        }];
        match self.git.push(&delete) {
            Ok(Pushed::Landed) => Ok(()),
            Ok(Pushed::Stale) => Err(format!("{name} changed while testing")),
            Err(f) => Err(format!(
                "created {name} but cannot delete it: {f}\nbuildlock deletes refs under refs/buildlock/ to keep \
                 the remote bounded: the credentials need permission to delete refs there (a server with \
                 receive.denyDeletes or a protection rule on refs/buildlock/* refuses it); delete {name} by hand"
            )),
        }
    }

    /// The read for the flows: the key's state, or why the remote could not be reached.
    fn read_key(&self, key: &str) -> Read {
        match self.view(key) {
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

    fn reached(&self) {
        let mut u = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        if u.take().is_some() {
            say::say(format!("reached the remote `{}` again", self.git.remote));
        }
    }
}

/// What a transition decided.
#[allow(clippy::large_enum_variant)] // one per transition, moved once
enum Step<R> {
    /// Nothing to write.
    Keep(R),
    Write {
        result: R,
        after: KeyState,
        history: Vec<serde_json::Value>,
        count: Option<Count>,
    },
}

/// Where `key`'s refs live under `refs/buildlock/state/` and `refs/buildlock/fix/`:
/// `<base stem>/<sub>` (see the module header).
pub fn key_path(key: &str) -> String {
    let base = base_of(key);
    let sub = if base.len() == key.len() {
        "_".to_owned()
    } else {
        file_stem(&key[base.len() + 1..])
    };
    format!("{}/{sub}", file_stem(base))
}

fn short(oid: &str) -> &str {
    &oid[..oid.len().min(12)]
}

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
        self.read_key(key)
    }

    fn read_base(&self, base: &str) -> BaseView {
        let path = key_path(base);
        let base_stem = path.split('/').next().unwrap_or_default().to_owned();
        let read = || -> Result<BaseView, Failure> {
            let refs = self
                .git
                .ls_remote(&[format!("{STATE_PREFIX}{base_stem}/*")])?;
            let groups = Self::group(&refs);
            let repo = self
                .repo()
                .map_err(|e| Failure::Permanent(format!("{e:#}")))?;
            let tops: Vec<&str> = groups
                .values()
                .filter_map(|(tips, _)| tips.iter().max_by_key(|t| t.epoch))
                .map(|t| t.oid.as_str())
                .collect();
            self.fetch_missing(&repo, &tops)?;
            let mut view = BaseView::default();
            for (p, (tips, _)) in groups {
                if !p.starts_with(&format!("{base_stem}/")) {
                    continue;
                }
                let Some(top) = tips.iter().max_by_key(|t| t.epoch) else {
                    continue;
                };
                match chain::decode(&repo, &top.oid, "").doc {
                    Ok(doc) if doc.base == base => {
                        view.passes = view.passes.max(doc.passes);
                        view.keys.push(doc.state);
                    }
                    Ok(_) => {}
                    Err(why) if p == path => view.damaged = Some(why),
                    Err(_) => {}
                }
            }
            Ok(view)
        };
        match read() {
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
        let (outcome, before, after, damaged) =
            self.transact(key, base, self.wait, stop, |before, view| {
                let floor = view
                    .doc
                    .as_ref()
                    .or(view.last_good.as_ref())
                    .map_or(0, |d| d.state.generation);
                let seen = Observed {
                    now: time::now(),
                    // The remote never compares clocks: only a waiter's monotonic observation
                    // (`seen_silent`) makes a fixer stale.
                    stale_after: Millis::MAX,
                    max_fix_attempts: policy.max_fix_attempts,
                    generation_floor: floor,
                    passes: view.base_passes,
                    fixer_lock_free: false,
                    fixer_running: false,
                    seen_silent,
                    elector_dead: before
                        .fixer
                        .as_ref()
                        .is_some_and(crate::store::elector_dead),
                };
                let (mut after, outcome) = transition(before, event, &seen);
                // Another machine cannot read the fixer's git dir: only a recorded fix commit
                // means anything there (`buildlock ci` and commit-retry record it).
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
            })?;
        if matches!(
            outcome,
            Outcome::Fixed | Outcome::Recovered | Outcome::Reset
        ) {
            self.prune(&key_path(key));
        }
        Ok(Applied {
            before,
            after,
            outcome,
            damaged,
        })
    }

    fn all(&self) -> Vec<(String, KeyState)> {
        let mut keys: Vec<(String, KeyState)> = self
            .views()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, v)| v.doc.map(|d| (d.base, d.state)))
            .collect();
        keys.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        keys
    }

    fn totals(&self) -> Totals {
        let mut sum = Totals::default();
        for (_, v) in self.views().unwrap_or_default() {
            if let Some(d) = v.doc {
                let t = d.totals;
                sum.failures += t.failures;
                sum.elections += t.elections;
                sum.takeovers += t.takeovers;
                sum.waits += t.waits;
                sum.fixes += t.fixes;
                sum.fix_runs += t.fix_runs;
                sum.fix_runs_avoided += t.fix_runs_avoided;
                sum.generation = sum.generation.max(t.generation);
            }
        }
        sum
    }

    fn history(&self) -> Vec<super::Entry> {
        let Ok(views) = self.views() else {
            return Vec::new();
        };
        let Ok(repo) = self.repo() else {
            return Vec::new();
        };
        let mut all: Vec<super::Entry> = Vec::new();
        for (_, v) in views {
            if let Some(t) = &v.current {
                let entries = chain::history(&repo, &t.oid, WALK_LIMIT);
                all.extend(entries.into_iter().map(super::Entry::from_json));
            }
        }
        all.sort_by_key(|e| e.ms.unwrap_or(0));
        all
    }

    fn record(&self, entry: super::Entry) -> Result<(), super::StoreError> {
        // A fix run started or ended: no state changes, but the counters (fix runs) and the
        // history do; one push, like any transition.
        let Some(key) = entry.key.clone() else {
            return Ok(());
        };
        let entry = serde_json::Value::from(entry);
        let limit = self.wait.min(Duration::from_secs(30));
        self.transact(&key, &key, limit, &|| false, |before, view| {
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
        })?;
        Ok(())
    }

    fn write_lease(&self, key: &str, lease: &Lease) -> Result<(), super::StoreError> {
        let limit = (self.stale_after / 2).clamp(
            Duration::from_millis(500),
            self.wait.max(Duration::from_millis(500)),
        );
        self.transact(key, "", limit, &|| false, |before, _| {
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

    fn watch(&self, _key: &str) -> bool {
        // `wait_change` sleeps `remote_poll` itself, whatever it is asked: each look is a round
        // trip to the remote.
        true
    }

    fn diagnose(&self) -> Vec<super::Finding> {
        let mut out = Vec::new();
        let started = Instant::now();
        match self.git.ls_remote(&[format!("{STATE_PREFIX}*")]) {
            Ok(refs) => out.push(super::Finding::ok(format!(
                "the remote `{}` ({}) answers ({} ms; {} key ref(s) under {STATE_PREFIX})",
                self.git.remote,
                self.url,
                started.elapsed().as_millis(),
                refs.len()
            ))),
            Err(f) => {
                out.push(super::Finding::problem(
                    format!("cannot read the remote `{}` ({}): {f}", self.git.remote, self.url),
                    format!(
                        "make `git ls-remote {} 'refs/buildlock/*'` work here (network, URL,                          credentials), or set coordination.remote to a remote that does",
                        self.git.remote
                    ),
                ));
                return out;
            }
        }
        match self.probe() {
            Ok(()) => out.push(super::Finding::ok(format!(
                    "the remote `{}` accepts pushes to refs/buildlock/* (created and deleted a probe ref)",
                    self.git.remote
            ))),
            Err(m) => out.push(super::Finding::problem(
                m,
                "give the credentials git uses here permission to create, update and delete refs                  under refs/buildlock/ (see docs/ci/ for GitHub Actions and GitLab)"
                    .to_owned(),
            )),
        }
        out
    }

    fn fix_ref(&self, key: &str, commit: &str) -> Option<String> {
        Some(Self::fix_ref_name(key, commit))
    }

    fn wait_change(&self, _key: &str, _fixer: Option<&Process>, _timeout: Duration) {
        // Every look costs a round trip to the remote: look every `remote_poll`, whatever the
        // caller's local poll interval is.
        std::thread::sleep(self.poll + time::jitter(self.poll / 4));
    }
}
