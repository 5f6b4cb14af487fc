//! Claims across machines (`backend = "remote"`): the whole claims registry (agents, claims,
//! the claim queue) is one JSON document in a chain of commits under one ref of the git remote,
//! moved only by compare-and-swap pushes, like a key's build state.
//!
//! ```text
//! refs/buildlock/claims/<E>    the registry's chain; E = the `seq` of the chain's root
//!   tree      registry.json    {"format": 1, "seq": N, "registry": <protocol::claims::Registry>}
//!   message   buildlock claims: <what happened>, the history entries, a nonce
//! ```
//!
//! Why one ref and not one per agent: a claim is refused when it overlaps *another* agent's
//! claim, so the decision reads every agent's claims and must land only if none of them moved.
//! A push can lease only the refs it updates; with one ref per agent, two agents claiming the
//! same path would each lease only their own ref and both land. One ref makes every change a
//! single lease on everything that was read: of N agents that read the same registry exactly one
//! push lands, the others read again and decide again (the same pure `protocol::claims::decide`
//! as the local registry). The price, contention on one ref, stays small because only changes
//! push: claims, releases, `done`, a refused commit's `blocked`, and a claim holder's renewal at
//! most once per `claims.ttl / 3`. Reads (the guard, listings, waits) never push.
//!
//! Guarantees:
//! - **Nothing silently local.** A read or a step that cannot reach the remote is a `StoreError`
//!   (exit 70) naming the remote and git's words, never an empty registry;
//! - **Fast-forward only.** Each change is a child of the tip it read; a chain [`compact_after`]
//!   commits long is restarted as a new root under the next epoch name, and the old epoch is
//!   deleted in the same atomic push, leased on its tip (as the state chains do); readers take the
//!   highest epoch. The pruner of state and fix refs lists `refs/buildlock/state/*` and
//!   `refs/buildlock/fix/*` only, so it never touches these refs, and they need no pruning: one
//!   chain, bounded by compaction;
//! - **Signs of life cost nothing for agents without claims.** [`RemoteRegistry::renew`] is one
//!   `stat` of `<git common dir>/buildlock/claims-renewed/<agent>`, a file present only while the
//!   agent holds (or queues for) a claim made from this machine; its mtime is the last renewal
//!   pushed, and a renewal is pushed only when that is older than `claims.ttl / 3`;
//! - **Liveness is renewals, never a pid.** A process on another machine cannot be seen: a claim
//!   lapses `claims.ttl` after its holder's last renewal, and a queued or blocked request of
//!   another machine goes when its agent was silent for `claims.ttl`. A request of this machine
//!   goes when its process is gone, as with the local registry. The renewal time is the holder's
//!   wall clock, judged on the reader's: machines whose clocks differ by a fraction of
//!   `claims.ttl` (minutes by default) see a claim lapse that much earlier or later;
//! - **The guard costs one `ls-remote` per commit**, plus one fetch of the registry commit when
//!   it changed since this clone last read it (the commit is then in the local object store).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chain;
use super::prune::compact_after;
use super::refs::STATE_PREFIX;
use crate::os::fs::{modified_ms, touch_existing};
use crate::os::remote_git::{Failure, Git, Pushed, Update};
use crate::os::time::{self, Millis};
use crate::os::{process, say};
use crate::protocol::claims::{
    Registry, RegistryObserved, RegistryOutcome, Request, SCHEMA, decide,
};
use crate::store::StoreError;
use crate::store::registry::{ClaimsRegistry, Limits, RegistryStep};

pub const CLAIMS_PREFIX: &str = "refs/buildlock/claims/";
const FILE: &str = "registry.json";
/// The format of `registry.json` in a registry commit.
const FORMAT: u32 = 1;
const MAX_BYTES: usize = 4 << 20;
/// How long a renewal (a sign of life, on the way into any program) may try.
const RENEW_LIMIT: Duration = Duration::from_secs(10);

/// What one registry commit holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Doc {
    format: u32,
    /// Changes since the registry was created on the remote; a chain's root is named by its own.
    seq: u64,
    registry: Registry,
}

/// One epoch of the registry's chain on the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tip {
    epoch: u64,
    oid: String,
    name: String,
}

fn ref_name(epoch: u64) -> String {
    format!("{CLAIMS_PREFIX}{epoch}")
}

/// The registry's epochs in `ls-remote` output: the highest (its state) and the strays below it.
/// A ref under the prefix that does not fit the layout is ignored.
fn epochs(refs: &[(String, String)]) -> (Option<Tip>, Vec<Tip>) {
    let mut tips: Vec<Tip> = refs
        .iter()
        .filter_map(|(oid, name)| {
            let epoch = name.strip_prefix(CLAIMS_PREFIX)?.parse::<u64>().ok()?;
            Some(Tip {
                epoch,
                oid: oid.clone(),
                name: name.clone(),
            })
        })
        .collect();
    tips.sort_by_key(|t| t.epoch);
    let current = tips.pop();
    (current, tips)
}

/// What one read of the remote found.
struct View {
    current: Option<Tip>,
    strays: Vec<Tip>,
    doc: Option<Doc>,
    /// Why the tip could not be used, when it could not.
    damaged: Option<String>,
    tip_is_commit: bool,
}

impl View {
    fn registry(&self) -> Registry {
        self.doc
            .as_ref()
            .map(|d| d.registry.clone())
            .unwrap_or_default()
    }
}

/// Reads the registry commit `oid`: its doc, or why it is unusable; and whether it is a commit.
fn decode(repo: &git2::Repository, oid: &str) -> (Result<Doc, String>, bool) {
    let Ok(id) = git2::Oid::from_str(oid) else {
        return (Err(format!("`{oid}` is not an object id")), false);
    };
    let Ok(commit) = repo.find_commit(id) else {
        return (
            Err(format!(
                "the ref holds {oid}, which is not a commit (or is missing)"
            )),
            false,
        );
    };
    let blob = commit
        .tree()
        .ok()
        .and_then(|t| t.get_name(FILE).map(|e| e.id()))
        .and_then(|id| repo.find_blob(id).ok());
    let Some(blob) = blob else {
        return (Err(format!("commit {oid} has no {FILE}")), true);
    };
    if blob.content().len() > MAX_BYTES {
        return (
            Err(format!("{} bytes is far too large", blob.content().len())),
            true,
        );
    }
    match serde_json::from_slice::<Doc>(blob.content()) {
        Ok(d) if d.format == FORMAT && d.registry.schema == SCHEMA => (Ok(d), true),
        Ok(d) => (
            Err(format!(
                "format {} / schema {} is not {FORMAT} / {SCHEMA}",
                d.format, d.registry.schema
            )),
            true,
        ),
        Err(e) => (Err(format!("not a claims registry: {e}")), true),
    }
}

/// What the remote lets a step observe: the time; which queued or blocked requests are gone (a
/// process of this machine: its pid and start time; of another machine: its agent silent for
/// `ttl`); no check slots (they are per machine).
fn observe(reg: &Registry, now: Millis, ttl: Millis) -> RegistryObserved {
    let me = process::me();
    let gone = |p: &process::Process, agent: &str| {
        if p.host == me.host && p.pid_space == me.pid_space {
            !process::is_live(p)
        } else {
            reg.agents
                .get(agent)
                .is_none_or(|a| a.last_seen.saturating_add(ttl) <= now)
        }
    };
    RegistryObserved {
        now,
        ttl,
        dead: reg
            .claim_queue
            .iter()
            .filter(|w| gone(&w.process, &w.agent))
            .map(|w| w.ticket)
            .collect(),
        unblocked: reg
            .agents
            .iter()
            .filter(|(name, a)| a.blocked.as_ref().is_some_and(|b| gone(&b.process, name)))
            .map(|(name, _)| name.clone())
            .collect(),
        free_slots: Vec::new(),
    }
}

/// The agent a request is about, and whether the step records a sign of life of it.
fn request_agent(request: &Request) -> Option<(&str, bool)> {
    match request {
        Request::Claim { who, ticket, .. } => Some((&who.agent, ticket.is_none())),
        Request::Unclaim { who, .. } | Request::Done { who } | Request::Blocked { who, .. } => {
            Some((&who.agent, true))
        }
        _ => None,
    }
}

/// The commit's subject: what happened.
fn subject(events: &[serde_json::Value]) -> String {
    let what: Vec<String> = events
        .iter()
        .filter_map(|e| {
            let event = e.get("event")?.as_str()?;
            let agent = e.get("agent").and_then(|a| a.as_str()).unwrap_or("");
            Some(format!("{event} {agent}").trim().to_owned())
        })
        .collect();
    if what.is_empty() {
        "buildlock claims: renewal".to_owned()
    } else {
        format!("buildlock claims: {}", what.join(", "))
    }
}

/// The claims registry on a git remote (see the module header).
pub struct RemoteRegistry {
    git: Git,
    git_dir: PathBuf,
    url: String,
    /// `<git common dir>/buildlock/`: the renewal marks and the local bell.
    home: PathBuf,
    /// `coordination.wait`: how long a step keeps trying.
    wait: Duration,
    /// `coordination.remote_poll`.
    poll: Duration,
}

impl RemoteRegistry {
    pub fn new(
        git_dir: &Path,
        remote: &str,
        url: &str,
        home: &Path,
        wait: Duration,
        poll: Duration,
    ) -> Result<RemoteRegistry, String> {
        Ok(RemoteRegistry {
            git: Git::new(git_dir, remote)?,
            git_dir: git_dir.to_owned(),
            url: url.to_owned(),
            home: home.to_owned(),
            wait,
            poll,
        })
    }

    fn mark(&self, agent: &str) -> PathBuf {
        self.home
            .join("claims-renewed")
            .join(crate::protocol::key::file_stem(agent))
    }

    /// Keeps the renewal mark of `agent` in step with what `after` holds for it: present while it
    /// holds or queues for a claim (touched when this step renewed it), gone otherwise.
    fn update_mark(&self, agent: &str, after: &Registry, renewed: bool) {
        let path = self.mark(agent);
        let holds = after.claims.iter().any(|c| c.agent == agent)
            || after.claim_queue.iter().any(|w| w.agent == agent);
        if !holds {
            let _ = std::fs::remove_file(&path);
        } else if (renewed || !path.exists()) && !touch_existing(&path) {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&path, agent.as_bytes());
        }
    }

    fn failed(&self, f: Failure, waited: Duration) -> anyhow::Error {
        match f {
            Failure::Transient(m) => StoreError::Unreachable(format!(
                "claims: could not reach the remote `{}` ({}) for {}: {m}; nothing was read or changed \
                 (the claims live on the remote with backend = \"remote\"; try again when it is back)",
                self.git.remote,
                self.url,
                time::human(waited)
            )),
            Failure::Permanent(m) => StoreError::Refused(format!(
                "claims: the remote `{}` ({}) refused: {m}; nothing was read or changed",
                self.git.remote, self.url
            )),
        }
        .into()
    }

    /// One read: one `ls-remote` of the registry's refs, and one fetch when the tip is not in
    /// the local object store yet.
    fn view(&self) -> Result<View, Failure> {
        self.view_listing(false)
    }

    /// [`Self::view`]; `share`: the same `ls-remote` lists the build states too, and leaves them
    /// for the store's base read that follows the guard (see `remote::shared`).
    fn view_listing(&self, share: bool) -> Result<View, Failure> {
        let refs = if share {
            let refs = self
                .git
                .ls_remote(&[format!("{CLAIMS_PREFIX}*"), format!("{STATE_PREFIX}*")])?;
            super::shared::offer(&self.git_dir, &self.git.remote, &refs);
            refs
        } else {
            self.git.ls_remote(&[format!("{CLAIMS_PREFIX}*")])?
        };
        let (current, strays) = epochs(&refs);
        let Some(tip) = &current else {
            return Ok(View {
                current,
                strays,
                doc: None,
                damaged: None,
                tip_is_commit: false,
            });
        };
        let repo = chain::open(&self.git_dir).map_err(|e| Failure::Permanent(format!("{e:#}")))?;
        if !chain::has_object(&repo, &tip.oid) {
            self.git.fetch_objects(std::slice::from_ref(&tip.oid))?;
        }
        let (doc, tip_is_commit) = decode(&repo, &tip.oid);
        let (doc, damaged) = match doc {
            Ok(d) => (Some(d), None),
            Err(why) => (None, Some(why)),
        };
        Ok(View {
            current,
            strays,
            doc,
            damaged,
            tip_is_commit,
        })
    }

    /// A read for the flows, retried on transient failures within a few `remote_poll`s.
    fn read_view(&self) -> Result<View> {
        self.read_view_listing(false)
    }

    /// [`Self::read_view`], sharing its listing when `share` (see [`Self::view_listing`]).
    fn read_view_listing(&self, share: bool) -> Result<View> {
        let start = Instant::now();
        let limit = (self.poll * 3).clamp(Duration::from_secs(2), Duration::from_secs(10));
        let mut pause = Duration::from_millis(200);
        loop {
            match self.view_listing(share) {
                Ok(v) => {
                    if let Some(why) = &v.damaged {
                        say::warn(format!(
                            "the claims registry on the remote `{}` is unreadable ({why}); reading it as \
                             empty until the next change rewrites it",
                            self.git.remote
                        ));
                    }
                    return Ok(v);
                }
                Err(Failure::Transient(_)) if start.elapsed() + pause < limit => {
                    std::thread::sleep(pause + time::jitter(pause / 2));
                    pause *= 2;
                }
                Err(f) => return Err(self.failed(f, start.elapsed())),
            }
        }
    }

    /// Writes the registry commit for `after` on top of what `view` read, and the ref updates
    /// that publish it, each leased on what was read.
    fn write(
        &self,
        view: &View,
        after: &Registry,
        events: &[serde_json::Value],
        now: Millis,
    ) -> Result<(String, Vec<Update>)> {
        let repo = chain::open(&self.git_dir)?;
        let top = view.current.as_ref();
        let seq = view
            .doc
            .as_ref()
            .map_or(0, |d| d.seq)
            .max(top.map_or(0, |t| t.epoch))
            + 1;
        // Grow the tip's chain, or start a new epoch: no registry yet, a tip that is no
        // commit, or a chain long enough to compact.
        let grow = top.filter(|t| view.tip_is_commit && seq - t.epoch < compact_after());
        let doc = Doc {
            format: FORMAT,
            seq,
            registry: after.clone(),
        };
        let blob = repo.blob(&serde_json::to_vec_pretty(&doc)?)?;
        let mut tree = repo.treebuilder(None)?;
        tree.insert(FILE, blob, 0o100644)?;
        let tree = repo.find_tree(tree.write()?)?;
        let parent = match grow {
            Some(t) => vec![repo.find_commit(git2::Oid::from_str(&t.oid)?)?],
            None => Vec::new(),
        };
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let sig = git2::Signature::new(
            chain::NAME,
            chain::EMAIL,
            &git2::Time::new((now / 1000) as i64, 0),
        )?;
        let mut message = format!("{}\n\n", subject(events));
        for e in events {
            message.push_str(&serde_json::to_string(e)?);
            message.push('\n');
        }
        let random = time::jitter(Duration::from_secs(1 << 40)).as_nanos();
        message.push_str(&format!(
            "\nBuildlock-Nonce: {}/{}/{now}/{random:x}\n",
            process::hostname(),
            std::process::id()
        ));
        if let (None, Some(t)) = (grow, top) {
            message.push_str(&format!("Buildlock-Previous: {}\n", t.oid));
        }
        let commit = repo
            .commit(None, &sig, &sig, &message, &tree, &parents)
            .context("cannot write a claims registry commit")?
            .to_string();
        let mut updates = match grow {
            Some(t) => vec![Update {
                name: t.name.clone(),
                new: Some(commit.clone()),
                expect: Some(t.oid.clone()),
            }],
            None => {
                let mut u = vec![Update {
                    name: ref_name(seq),
                    new: Some(commit.clone()),
                    expect: None,
                }];
                u.extend(top.map(|t| Update {
                    name: t.name.clone(),
                    new: None,
                    expect: Some(t.oid.clone()),
                }));
                u
            }
        };
        updates.extend(view.strays.iter().map(|t| Update {
            name: t.name.clone(),
            new: None,
            expect: Some(t.oid.clone()),
        }));
        Ok((commit, updates))
    }

    /// One compare-and-swap step: read, fold `fold` into what was read (a renewal), decide,
    /// push leased on what was read; after a lost race, read and decide again, within `limit`.
    fn transact(
        &self,
        request: &Request,
        limits: Limits,
        limit: Duration,
        fold: &dyn Fn(&mut Registry, Millis),
    ) -> Result<RegistryStep> {
        let start = Instant::now();
        let deadline = start + limit;
        let mut lost = 0u32;
        let mut pause = Duration::from_millis(250);
        let mut told = false;
        loop {
            let round = Instant::now();
            let view = match self.view() {
                Ok(v) => v,
                Err(Failure::Transient(m)) if Instant::now() + pause < deadline => {
                    if !told {
                        told = true;
                        say::warn(format!(
                            "cannot reach the remote `{}` for the claims ({m}); trying again for up to {}",
                            self.git.remote,
                            time::human(deadline.saturating_duration_since(Instant::now()))
                        ));
                    }
                    std::thread::sleep(pause + time::jitter(pause / 2));
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(f) => return Err(self.failed(f, start.elapsed())),
            };
            if let Some(why) = &view.damaged {
                say::warn(format!(
                    "the claims registry on the remote `{}` was unreadable ({why}); starting an empty one",
                    self.git.remote
                ));
            }
            let now = time::now();
            let mut read = view.registry();
            read.schema = SCHEMA;
            let mut before = read.clone();
            fold(&mut before, now);
            let seen = observe(&before, now, limits.ttl_ms());
            let (after, decision, events) = decide(&before, request, &seen);
            let step = RegistryStep {
                before,
                after,
                decision,
                events,
                slot: None,
            };
            let clean = view.damaged.is_none() && view.strays.is_empty();
            // A refusal changes nothing but the refused agent's sign of life: not worth a push
            // that would contend with the very claim that refused it (measured: 8 clones racing
            // for one path pushed 8 commits, one per refusal, before this).
            let refused = matches!(step.decision, RegistryOutcome::Refused { .. });
            if (step.after == read || refused) && clean {
                return Ok(step);
            }
            let (commit, updates) = self.write(&view, &step.after, &step.events, now)?;
            match self.git.push(&updates) {
                Ok(Pushed::Landed) => return Ok(step),
                Ok(Pushed::Stale) => {
                    lost += 1;
                    if Instant::now() >= deadline {
                        return Err(StoreError::Unreachable(format!(
                            "claims: lost {lost} races in a row on the remote `{}` within {} (too many \
                             agents changing claims at once?); nothing was changed",
                            self.git.remote,
                            time::human(limit)
                        ))
                        .into());
                    }
                    let bound = round.elapsed().min(Duration::from_secs(2)) * lost.min(4);
                    std::thread::sleep(time::jitter(bound));
                }
                Err(Failure::Transient(m)) => {
                    // The push may have landed and only its report been lost.
                    let landed = self
                        .view()
                        .is_ok_and(|v| v.current.is_some_and(|t| t.oid == commit));
                    if landed {
                        return Ok(step);
                    }
                    if Instant::now() + pause >= deadline {
                        return Err(self.failed(Failure::Transient(m), start.elapsed()));
                    }
                    std::thread::sleep(pause + time::jitter(pause / 2));
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(f) => return Err(self.failed(f, start.elapsed())),
            }
        }
    }
}

impl ClaimsRegistry for RemoteRegistry {
    fn place(&self) -> String {
        format!("the remote `{}` ({})", self.git.remote, self.url)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn read(&self) -> Result<Registry> {
        Ok(self.read_view()?.registry())
    }

    fn guard_read(&self) -> Result<Option<Registry>> {
        // The hook reads the base's states next: one listing serves both.
        let view = self.read_view_listing(true)?;
        Ok(view.current.is_some().then(|| view.registry()))
    }

    fn apply(&self, request: &Request, limits: Limits) -> Result<RegistryStep> {
        let step = self.transact(request, limits, self.wait, &|_, _| {})?;
        if let Some((agent, renewed)) = request_agent(request) {
            self.update_mark(agent, &step.after, renewed);
        }
        // Waits of this machine wake at once; other machines' at their next poll.
        crate::store::registry::bell(&self.home).ring();
        Ok(step)
    }

    fn renew(&self, agent: &str, limits: Limits) {
        let Some(last) = modified_ms(&self.mark(agent)) else {
            // No claim made from here: nothing to renew, and no network.
            return;
        };
        if time::now().saturating_sub(last) < limits.ttl_ms() / 3 {
            return;
        }
        let fold = |r: &mut Registry, now: Millis| {
            if let Some(a) = r.agents.get_mut(agent) {
                a.last_seen = a.last_seen.max(now);
            }
        };
        match self.transact(&Request::Settle, limits, RENEW_LIMIT.min(self.wait), &fold) {
            Ok(step) => self.update_mark(agent, &step.after, true),
            Err(e) => say::warn(format!(
                "could not renew the claims of `{}` on the remote: {e:#}; they lapse {} after their last \
                 renewal unless a later buildlock command renews them",
                say::inert(agent),
                time::human(limits.ttl)
            )),
        }
    }

    fn listen(&self) -> crate::os::bell::Listener {
        crate::store::registry::bell(&self.home).listen()
    }

    fn poll(&self) -> Option<Duration> {
        Some(self.poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::registry::test_requests::{LIMITS, claim, who};

    struct Remote {
        dir: tempfile::TempDir,
        bare: PathBuf,
    }

    impl Remote {
        fn new() -> Remote {
            let dir = tempfile::tempdir().unwrap();
            let bare = dir.path().join("remote.git");
            git2::Repository::init_bare(&bare).unwrap();
            Remote { dir, bare }
        }

        /// An agent's registry: its own repository and home, `origin` = this remote.
        fn registry(&self, agent: &str) -> RemoteRegistry {
            let git_dir = self.dir.path().join(format!("{agent}.git"));
            let repo = git2::Repository::init_bare(&git_dir).unwrap();
            repo.remote("origin", self.bare.to_str().unwrap()).unwrap();
            let home = self.dir.path().join(format!("{agent}-home"));
            std::fs::create_dir_all(&home).unwrap();
            RemoteRegistry::new(
                &git_dir,
                "origin",
                self.bare.to_str().unwrap(),
                &home,
                Duration::from_secs(20),
                Duration::from_millis(10),
            )
            .unwrap()
        }

        fn refs(&self) -> Vec<String> {
            let repo = git2::Repository::open_bare(&self.bare).unwrap();
            let mut names: Vec<String> = repo
                .references_glob("refs/buildlock/*")
                .unwrap()
                .filter_map(|r| r.ok()?.name().map(str::to_owned))
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn epochs_take_the_highest_as_numbers_and_ignore_other_names() {
        let refs: Vec<(String, String)> = [
            ("a", "refs/buildlock/claims/9"),
            ("b", "refs/buildlock/claims/10"),
            ("c", "refs/buildlock/claims/x"),
            ("d", "refs/buildlock/claims/1/2"),
        ]
        .iter()
        .map(|(o, n)| ((*o).to_owned(), (*n).to_owned()))
        .collect();
        let (current, strays) = epochs(&refs);
        assert_eq!(current.unwrap().oid, "b");
        assert_eq!(strays.len(), 1);
        assert_eq!(strays[0].oid, "a");
        assert_eq!(epochs(&[]).0, None);
    }

    #[test]
    fn a_claim_made_through_one_clone_refuses_a_conflicting_claim_through_another() {
        let remote = Remote::new();
        let a = remote.registry("a");
        let b = remote.registry("b");
        assert_eq!(b.guard_read().unwrap(), None, "no registry yet: no claims");
        let granted = a.apply(&claim("a", "src/"), LIMITS).unwrap();
        assert!(matches!(granted.decision, RegistryOutcome::Granted { .. }));
        let refused = b.apply(&claim("b", "src/x.rs"), LIMITS).unwrap();
        assert!(
            matches!(refused.decision, RegistryOutcome::Refused { .. }),
            "{:?}",
            refused.decision
        );
        let seen = b.guard_read().unwrap().expect("a registry");
        assert_eq!(seen.claims.len(), 1);
        assert_eq!(seen.claims[0].agent, "a");
        assert_eq!(remote.refs(), ["refs/buildlock/claims/1"]);
        // Released through the first clone: the second may claim.
        let _ = a.apply(&Request::Done { who: who("a") }, LIMITS).unwrap();
        let granted = b.apply(&claim("b", "src/x.rs"), LIMITS).unwrap();
        assert!(matches!(granted.decision, RegistryOutcome::Granted { .. }));
    }

    #[test]
    fn a_renewal_pushes_only_for_an_agent_with_claims_and_only_when_due() {
        let remote = Remote::new();
        let a = remote.registry("a");
        let tip = || {
            let refs = a.git.ls_remote(&[format!("{CLAIMS_PREFIX}*")]).unwrap();
            epochs(&refs).0.map(|t| t.oid)
        };
        a.renew("a", LIMITS);
        assert_eq!(tip(), None, "an agent without claims costs no push");
        let _ = a.apply(&claim("a", "src/"), LIMITS).unwrap();
        let after_claim = tip();
        a.renew("a", LIMITS);
        assert_eq!(tip(), after_claim, "renewed just now: not due");
        let short = Limits {
            ttl: Duration::from_millis(30),
            slots: 0,
        };
        std::thread::sleep(Duration::from_millis(40));
        let before = a.read().unwrap().agents["a"].last_seen;
        a.renew("a", short);
        assert_ne!(tip(), after_claim, "due: one push");
        assert!(a.read().unwrap().agents["a"].last_seen > before);
        let _ = a.apply(&Request::Done { who: who("a") }, LIMITS).unwrap();
        assert!(
            !a.mark("a").exists(),
            "no claim left: no mark, no more renewals"
        );
    }

    #[test]
    fn a_renewal_through_one_clone_moves_the_lapse_another_clone_reads() {
        let remote = Remote::new();
        let a = remote.registry("a");
        let b = remote.registry("b");
        let _ = a.apply(&claim("a", "src/"), LIMITS).unwrap();
        let lapse = || {
            let r = b.read().unwrap();
            r.claims[0].lapses_at(&r, LIMITS.ttl_ms())
        };
        let before = lapse();
        // Due (older than a third of this ttl): no clock is compared here, only the order.
        std::thread::sleep(Duration::from_millis(20));
        let due = Limits {
            ttl: Duration::from_millis(15),
            slots: 0,
        };
        a.renew("a", due);
        assert!(
            lapse() > before,
            "the other clone sees the claim live longer"
        );
    }

    #[test]
    fn a_long_chain_is_compacted_into_a_new_epoch() {
        let remote = Remote::new();
        let a = remote.registry("a");
        for i in 0..(compact_after() + 2) {
            let _ = a.apply(&claim("a", &format!("p{i}")), LIMITS).unwrap();
        }
        let refs = remote.refs();
        assert_eq!(refs.len(), 1, "{refs:?}");
        assert_ne!(refs[0], "refs/buildlock/claims/1", "a later epoch");
        assert_eq!(
            a.read().unwrap().claims.len() as u64,
            compact_after() + 2,
            "nothing was lost"
        );
    }

    #[test]
    fn a_damaged_registry_reads_as_empty_and_the_next_change_replaces_it() {
        let remote = Remote::new();
        let a = remote.registry("a");
        let repo = git2::Repository::open_bare(&remote.bare).unwrap();
        let blob = repo.blob(b"garbage").unwrap();
        repo.reference("refs/buildlock/claims/3", blob, true, "test")
            .unwrap();
        assert_eq!(a.read().unwrap(), Registry::default());
        let granted = a.apply(&claim("a", "src/"), LIMITS).unwrap();
        assert!(matches!(granted.decision, RegistryOutcome::Granted { .. }));
        assert_eq!(remote.refs(), ["refs/buildlock/claims/4"]);
    }

    #[test]
    fn an_unreachable_remote_is_an_error_never_an_empty_registry() {
        let remote = Remote::new();
        let a = remote.registry("a");
        std::fs::remove_dir_all(&remote.bare).unwrap();
        let err = a.read().unwrap_err();
        assert!(
            err.downcast_ref::<StoreError>().is_some(),
            "a StoreError (exit 70): {err:#}"
        );
        assert!(format!("{err:#}").contains("`origin`"), "{err:#}");
        assert!(a.guard_read().is_err());
        assert!(a.apply(&claim("a", "src/"), LIMITS).is_err());
    }
}
