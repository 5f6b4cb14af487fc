//! The registry of agents, claims, queues and check slots (local backend: one machine's
//! worktrees), in `<git common dir>/buildlock/`:
//!
//! ```text
//! registry.json           agents, claims, the claim and slot queues, slot holders (schema'd JSON)
//! claimed                 present while the registry holds any claim (the guard's one stat)
//! seen/<agent>            every agent that committed through the hook or claimed: who it is and
//!                         where; its mtime is its last sign of life (renews its claims, and lists
//!                         it in `buildlock agents` even when it claims nothing)
//! where/<agent>/<tree>    one per work tree the agent's hook ran in: who it is there; its mtime
//!                         is its last commit there (two recent ones: one id used by two agents)
//! locks/registry.lock     held for one read-decide-write of the registry (empty, never removed)
//! locks/slot-<i>.lock     held by the process running a check in slot i, for the whole check
//! locks/checking/<agent>.lock  held by the hook while it runs the agent's check (with or
//!                         without check slots): `buildlock agents` shows it `checking`, and its
//!                         holder's pid
//! ```
//!
//! Every change is one step under `locks/registry.lock`: read, observe (time, dead waiters,
//! free slot locks), run the pure `protocol::claims::decide`, write atomically. Never
//! check-then-write. Reading without the lock is safe (the file is replaced by rename) and is what
//! the guard and the listings do.
//!
//! Signs of life cost nothing for an agent without claims: [`touch`] is one `utimensat` on
//! `seen/<agent>` (ENOENT for an agent never seen, which then holds no claim). No lock, no
//! write: the next step folds the file's mtime into the agent's `last_seen`. Where every program
//! gives one as it loads ([`sign_of_life`]), a sign younger than the [`grain`] (a hundredth of
//! `claims.ttl`: 6 s by default) is taken as now: one `stat`, no inode write (which waits on the
//! file system's journal under I/O load). A claim thus lapses at most a grain early. The same
//! grain spares a commit the `where/` record when its work tree's record is that fresh.
//!
//! Liveness of a slot holder is its flock: the kernel frees it the instant the holder dies, and a
//! free slot lock is a free slot whatever the registry still says. A queued waiter is live while
//! its process (pid, start time, not a zombie) runs.

use anyhow::{Context, Result, anyhow};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os::fs::{Durability, modified_ms, touch_existing, write_atomic};
use crate::os::lock::{self, Lock};
use crate::os::{process, say, time};
use crate::protocol::claims::{
    HistoryEvent, Registry, RegistryObserved, RegistryOutcome, Request, SCHEMA, decide,
};

pub const FILE: &str = "registry.json";

/// The bell rung after every change of the registry (see `os::bell`).
pub fn bell(home: &std::path::Path) -> crate::os::bell::Bell {
    crate::os::bell::Bell::in_dir(home, "registry")
}
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BYTES: u64 = 4 << 20;

/// The limits a step applies (from the configuration).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `claims.ttl`.
    pub ttl: Duration,
    /// `check_slots` (0: no slots).
    pub slots: usize,
}

impl Limits {
    pub fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }
}

/// The result of one step.
#[must_use]
pub struct RegistryStep {
    pub before: Registry,
    pub after: Registry,
    pub decision: RegistryOutcome,
    /// History entries for `buildlock log`.
    pub events: Vec<HistoryEvent>,
    /// The slot lock to hold for the check, when the decision was `TakeSlot`.
    pub slot: Option<Lock>,
}

/// Where the claims live: the seam between the claims flows (commands, the guard, `wait-for`)
/// and a backend, chosen once in `flows::context`. [`RegistryStore`] keeps them in this
/// machine's git common dir; `store::remote::claims::RemoteRegistry` in one ref on the git
/// remote, so that agents on several machines see each other's claims. Check slots are no part
/// of it: they stay per machine ([`RegistryStore`]) whatever the backend.
pub trait ClaimsRegistry: Send + Sync {
    /// Where the claims are, for people: `this machine` or `the remote `origin` (URL)`.
    fn place(&self) -> String;
    /// Whether the claims are shared through a remote (other machines see them).
    fn is_remote(&self) -> bool;
    /// The registry as it is now. A remote that cannot be read is an error (a `StoreError`:
    /// exit 70), never an empty registry.
    fn read(&self) -> Result<Registry>;
    /// The guard's read: `None` when there is certainly no claim at all (local: one `stat`;
    /// remote: one `ls-remote` that finds no registry ref).
    fn guard_read(&self) -> Result<Option<Registry>>;
    /// One read-decide-write step of the pure `protocol::claims::decide`.
    fn apply(&self, request: &Request, limits: Limits) -> Result<RegistryStep>;
    /// A sign of life of `agent` that renews its claims; never an error (a warning at most).
    /// Cheap for an agent without claims: no write, no network.
    fn renew(&self, agent: &str, limits: Limits);
    /// What a wait on the claims listens to (the local registry's bell).
    fn listen(&self) -> crate::os::bell::Listener;
    /// How often a wait looks again when nothing wakes it: `Some(remote_poll)` for a remote,
    /// whose changes ring no bell here.
    fn poll(&self) -> Option<Duration>;
}

impl ClaimsRegistry for RegistryStore {
    fn place(&self) -> String {
        "this machine".to_owned()
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn read(&self) -> Result<Registry> {
        Ok(RegistryStore::read(self))
    }

    fn guard_read(&self) -> Result<Option<Registry>> {
        Ok(self.any_claims().then(|| RegistryStore::read(self)))
    }

    fn apply(&self, request: &Request, limits: Limits) -> Result<RegistryStep> {
        RegistryStore::apply(self, request, limits)
    }

    fn renew(&self, agent: &str, _limits: Limits) {
        let _ = self.touch(agent);
    }

    fn listen(&self) -> crate::os::bell::Listener {
        self.bell().listen()
    }

    fn poll(&self) -> Option<Duration> {
        None
    }
}

pub struct RegistryStore {
    home: PathBuf,
}

impl RegistryStore {
    pub fn new(home: &Path) -> RegistryStore {
        RegistryStore {
            home: home.to_owned(),
        }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn path(&self) -> PathBuf {
        self.home.join(FILE)
    }

    fn lock_path(&self) -> PathBuf {
        self.home.join("locks").join("registry.lock")
    }

    fn marker(&self) -> PathBuf {
        self.home.join("claimed")
    }

    /// The bell rung after every change of the registry.
    pub fn bell(&self) -> crate::os::bell::Bell {
        bell(&self.home)
    }

    /// A sign of life of `agent` (see [`touch`]).
    pub fn touch(&self, agent: &str) -> bool {
        touch(&self.home, agent)
    }

    /// A sign of life of `agent` as a program loads (see [`sign_of_life`]).
    pub fn sign_of_life(&self, agent: &str, grain: u64) -> bool {
        sign_of_life(&self.home, agent, grain)
    }

    /// Writes `seen/<agent>` for an agent that has none (see [`seen`]).
    pub fn seen(&self, agent: &str, describe: impl FnOnce() -> Seen) {
        seen(&self.home, agent, describe)
    }

    /// Agents seen within `ttl` (see [`seen_agents`]).
    pub fn seen_agents(&self, now: crate::os::time::Millis, ttl: u64) -> Vec<Seen> {
        seen_agents(&self.home, now, ttl)
    }

    /// Records a commit of `agent` in the work tree `here.worktree` (see [`seen_in`]) and returns
    /// the other work trees the same id was active in within `window`, newest first.
    pub fn seen_in(&self, here: &Seen, window: u64, grain: u64) -> Vec<Seen> {
        seen_in(&self.home, here, window, grain)
    }

    /// The work trees `agent` committed in within `window`, newest first.
    pub fn worktrees_of(
        &self,
        agent: &str,
        now: crate::os::time::Millis,
        window: u64,
    ) -> Vec<Seen> {
        worktrees_of(&self.home, agent, now, window)
    }

    fn checking_path(&self, agent: &str) -> PathBuf {
        self.home
            .join("locks")
            .join("checking")
            .join(format!("{}.lock", crate::protocol::key::file_stem(agent)))
    }

    /// Held while the agent's check runs: `buildlock agents` shows the agent `checking`. Best
    /// effort: `None` when another process of the same agent already holds it (that one shows)
    /// or the folder cannot be written (nothing is refused for it).
    pub fn checking(&self, agent: &str) -> Option<Lock> {
        // The lock's own open creates the folder the first time (no `mkdir` on every commit).
        Lock::try_acquire(&self.checking_path(agent)).ok().flatten()
    }

    /// Whether a check of `agent` runs now, and the pid that runs it where the OS tells.
    pub fn checking_now(&self, agent: &str) -> Option<Option<u32>> {
        let path = self.checking_path(agent);
        if let Some((pid, _)) = lock::holder(&path) {
            return Some(Some(pid));
        }
        (!lock::is_free(&path).unwrap_or(true)).then_some(None)
    }

    pub fn slot_lock_path(&self, slot: usize) -> PathBuf {
        self.home.join("locks").join(format!("slot-{slot}.lock"))
    }

    /// Whether any claim may exist: one `stat`. `false` is certain (the marker is created before
    /// the first claim is written and removed after the last one is).
    pub fn any_claims(&self) -> bool {
        self.marker().exists()
    }

    /// The registry as it is now, without the lock, with the agents' touches folded in.
    pub fn read(&self) -> Registry {
        let mut reg = match self.read_file() {
            Ok(reg) => reg,
            Err(why) => {
                say::warn(format!("{why}; reading it as empty"));
                Registry::default()
            }
        };
        self.fold_touches(&mut reg);
        reg
    }

    fn read_file(&self) -> std::result::Result<Registry, String> {
        let path = self.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if meta.is_dir() || meta.len() > MAX_BYTES {
            return Err(format!("{} is not a registry file", path.display()));
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        match serde_json::from_slice::<Registry>(&bytes) {
            Ok(r) if r.schema == SCHEMA => Ok(r),
            Ok(r) => Err(format!(
                "{} has schema {} (this buildlock reads {SCHEMA})",
                path.display(),
                r.schema
            )),
            Err(e) => Err(format!("{} is damaged ({e})", path.display())),
        }
    }

    /// Folds `seen/<agent>` mtimes (the agents' touches) into their `last_seen`.
    fn fold_touches(&self, reg: &mut Registry) {
        let holders: BTreeSet<String> = reg.claims.iter().map(|c| c.agent.clone()).collect();
        for agent in holders {
            if let (Some(seen), Some(rec)) = (
                modified_ms(&seen_path(&self.home, &agent)),
                reg.agents.get_mut(&agent),
            ) {
                rec.last_seen = rec.last_seen.max(seen);
            }
        }
    }

    /// One read-decide-write step under the registry lock.
    pub fn apply(&self, request: &Request, limits: Limits) -> Result<RegistryStep> {
        let _lock = self.lock()?;
        let mut before = match self.read_file() {
            Ok(reg) => reg,
            Err(why) => {
                say::warn(format!("{why}; starting an empty registry"));
                Registry::default()
            }
        };
        self.fold_touches(&mut before);
        // Slot locks free right now: a free lock is a free slot, whatever the registry says.
        let mut free = Vec::new();
        let mut probes = Vec::new();
        for slot in 0..limits.slots {
            if let Some(l) = Lock::try_acquire(&self.slot_lock_path(slot))? {
                free.push(slot);
                probes.push((slot, l));
            }
        }
        let dead: BTreeSet<u64> = before
            .claim_queue
            .iter()
            .map(|w| (w.ticket, &w.process))
            .chain(before.slot_queue.iter().map(|w| (w.ticket, &w.process)))
            .filter(|(_, p)| !process::is_live(p))
            .map(|(t, _)| t)
            .collect();
        let unblocked = before
            .agents
            .iter()
            .filter(|(_, a)| {
                a.blocked
                    .as_ref()
                    .is_some_and(|b| !process::is_live(&b.process))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let seen = RegistryObserved {
            now: time::now(),
            ttl: limits.ttl_ms(),
            dead,
            unblocked,
            free_slots: free,
        };
        let (after, decision, events) = decide(&before, request, &seen);
        let slot = match &decision {
            RegistryOutcome::TakeSlot { slot, .. } => {
                probes.into_iter().find(|(s, _)| s == slot).map(|(_, l)| l)
            }
            _ => None,
        };
        if after != before {
            if !after.claims.is_empty() {
                // Before the claims are written: the marker never misses a claim.
                if !self.any_claims() {
                    std::fs::write(self.marker(), b"")
                        .with_context(|| format!("cannot create {}", self.marker().display()))?;
                }
                // Every holder has a sign of life to renew its claims with.
                for c in &after.claims {
                    let holder = after.agents.get(&c.agent);
                    self::seen(&self.home, &c.agent, || Seen {
                        agent: c.agent.clone(),
                        host: holder.map_or_else(process::hostname, |a| a.host.clone()),
                        worktree: holder
                            .map(|a| PathBuf::from(&a.worktree))
                            .unwrap_or_default(),
                        git_dir: None,
                        last_seen: 0,
                    });
                }
            }
            // A crash of the process leaves the old registry or the new one; a crash of the machine
            // ends every claim holder and queued process anyway, so no fsync on this path.
            write_atomic(
                &self.path(),
                &serde_json::to_vec_pretty(&after)?,
                Durability::Atomic,
            )?;
            bell(&self.home).ring();
            if after.claims.is_empty() && self.any_claims() {
                let _ = std::fs::remove_file(self.marker());
            }
        }
        Ok(RegistryStep {
            before,
            after,
            decision,
            events,
            slot,
        })
    }

    fn lock(&self) -> Result<Lock> {
        let path = self.lock_path();
        Lock::acquire(&path, LOCK_TIMEOUT, || {
            say::say(format!(
                "waiting for the registry lock {} (another buildlock is deciding)",
                path.display()
            ))
        })
        .with_context(|| format!("cannot take the registry lock {}", path.display()))?
        .ok_or_else(|| {
            let who = match lock::holder(&path) {
                Some((pid, true)) => format!(
                    "by pid {pid}, which is STOPPED: resume it with `kill -CONT {pid}` or end it"
                ),
                Some((pid, false)) => format!("by pid {pid}"),
                None => "by another process".to_owned(),
            };
            anyhow!(
                "the registry lock {} has been held for {} {who}",
                path.display(),
                time::human(LOCK_TIMEOUT)
            )
        })
    }
}

fn seen_path(home: &Path, agent: &str) -> PathBuf {
    seen_dir(home).join(crate::protocol::key::file_stem(agent))
}

/// A sign of life of `agent`: renews its claims and keeps it listed. One `utimensat`; `false`
/// (ENOENT, at once) for an agent never seen, which holds no claim.
pub fn touch(home: &Path, agent: &str) -> bool {
    touch_existing(&seen_path(home, agent))
}

/// How old a sign of life may be and still count as now, in ms: a hundredth of `claims.ttl`.
pub fn grain(ttl: Duration) -> u64 {
    (ttl.as_millis() / 100) as u64
}

/// Whether a record last renewed at `mtime` is fresh within `grain` now (never one from the
/// future: a clock stepped back renews it).
fn fresh(mtime: Option<crate::os::time::Millis>, grain: u64) -> bool {
    let now = time::now();
    mtime.is_some_and(|m| m <= now && now - m < grain)
}

/// A sign of life of `agent` as a program loads: [`touch`], unless `seen/<agent>` was renewed
/// within `grain` ms (one `stat` then, and no write). `false` for an agent never seen.
pub fn sign_of_life(home: &Path, agent: &str, grain: u64) -> bool {
    let path = seen_path(home, agent);
    let mtime = modified_ms(&path);
    if fresh(mtime, grain) {
        return true;
    }
    mtime.is_some() && touch_existing(&path)
}

/// An agent known from its commits only (`seen/<agent>`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub agent: String,
    pub host: String,
    pub worktree: PathBuf,
    /// The work tree's git dir, where its current branch is read (known to the hook).
    #[serde(default)]
    pub git_dir: Option<PathBuf>,
    /// The last commit's time (the file's mtime), unix milliseconds.
    #[serde(skip)]
    pub last_seen: crate::os::time::Millis,
}

fn seen_dir(home: &Path) -> PathBuf {
    home.join("seen")
}

fn where_dir(home: &Path, agent: &str) -> PathBuf {
    home.join("where")
        .join(crate::protocol::key::file_stem(agent))
}

/// Records that `here.agent` committed in the work tree `here.worktree` now: one `stat` of
/// `where/<agent>/<tree>`; then, unless it was renewed within `grain` ms (the same commit stream
/// in the same work tree: nothing to record or tell), one `utimensat` (written whole the first
/// time) and one look at the agent's folder, which holds one file per work tree. Returns the
/// other work trees the same id committed in within `window` (so one agent's commits are warned
/// about at most once a grain per work tree): one id active in two work trees at once is two
/// agents taken for one (a failure of either counts as the fixer's own, they share claims),
/// which the caller warns about and refuses nothing for. Files of work trees not seen for a day
/// are removed. Best effort.
pub fn seen_in(home: &Path, here: &Seen, window: u64, grain: u64) -> Vec<Seen> {
    let dir = where_dir(home, &here.agent);
    let name = crate::protocol::key::file_stem(&here.worktree.to_string_lossy());
    let path = dir.join(&name);
    let mtime = modified_ms(&path);
    if fresh(mtime, grain) {
        return Vec::new();
    }
    if mtime.is_none() || !touch_existing(&path) {
        let _ = std::fs::create_dir_all(&dir);
        let tmp = dir.join(format!(".{}.{}", std::process::id(), time::now()));
        if let Ok(bytes) = serde_json::to_vec(here) {
            if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, &path).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    trees_of(home, &here.agent, time::now(), window, Some(&name))
        .into_iter()
        .filter(|s| s.worktree != here.worktree)
        .collect()
}

/// The work trees `agent` committed in within `window` (`where/<agent>/`), newest first.
pub fn worktrees_of(
    home: &Path,
    agent: &str,
    now: crate::os::time::Millis,
    window: u64,
) -> Vec<Seen> {
    trees_of(home, agent, now, window, None)
}

/// [`worktrees_of`], without reading the file named `except` (the caller's own work tree).
fn trees_of(
    home: &Path,
    agent: &str,
    now: crate::os::time::Millis,
    window: u64,
    except: Option<&str>,
) -> Vec<Seen> {
    records(&where_dir(home, agent), now, window, |name| {
        !name.starts_with('.') && except.is_none_or(|x| name != x)
    })
    .into_iter()
    .filter(|seen| seen.agent == agent)
    .collect()
}

/// Writes `seen/<agent>` for an agent that has none (see [`touch`], which renews it). Best
/// effort: a coordination dir we cannot write costs the caller nothing.
pub fn seen(home: &Path, agent: &str, describe: impl FnOnce() -> Seen) {
    let path = seen_path(home, agent);
    if path.exists() {
        return;
    }
    let _ = std::fs::create_dir_all(seen_dir(home));
    // Whole or not at all (a torn file would stay torn: later commits only touch it), and not
    // through `write_atomic`, whose fault point belongs to the state.
    let tmp = seen_dir(home).join(format!(".{}.{}", std::process::id(), time::now()));
    if let Ok(bytes) = serde_json::to_vec(&describe()) {
        if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Agents seen within `ttl` (by their last commit), newest first. Files of agents not seen for
/// a day (and longer than `ttl`) are removed: the folder holds the agents of the last day.
pub fn seen_agents(home: &Path, now: crate::os::time::Millis, ttl: u64) -> Vec<Seen> {
    records(&seen_dir(home), now, ttl, |_| true)
}

/// The `Seen` records in `dir` (files named as `wanted` says) changed within `window`, newest
/// first, each dated by its mtime. Files older than a day (and than `window`) are removed: the
/// folder holds the last day's.
fn records(
    dir: &Path,
    now: crate::os::time::Millis,
    window: u64,
    wanted: impl Fn(&str) -> bool,
) -> Vec<Seen> {
    let forget_after = window.max(24 * 3600 * 1000);
    let mut found: Vec<Seen> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wanted(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let path = e.path();
            let last_seen = modified_ms(&path)?;
            let age = now.saturating_sub(last_seen);
            if age > forget_after {
                let _ = std::fs::remove_file(&path);
                return None;
            }
            if age > window {
                return None;
            }
            let bytes = crate::os::fs::read_bounded(&path, 64 * 1024).ok()??;
            let mut seen: Seen = serde_json::from_slice(&bytes).ok()?;
            seen.last_seen = last_seen;
            Some(seen)
        })
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
    found
}

/// Requests and limits the registries' unit tests share (local and remote).
#[cfg(test)]
pub(crate) mod test_requests {
    use super::Limits;
    use crate::os::process;
    use crate::protocol::claims::{Mode, Request, Who};
    use std::time::Duration;

    pub(crate) fn who(agent: &str) -> Who {
        Who {
            agent: agent.into(),
            priority: 3,
            process: process::me(),
            worktree: "/w".into(),
            branch: "main".into(),
        }
    }

    /// An exclusive claim of `path` by `agent`, not waiting.
    pub(crate) fn claim(agent: &str, path: &str) -> Request {
        Request::Claim {
            who: who(agent),
            paths: vec![path.into()],
            mode: Mode::Exclusive,
            term: None,
            wait: false,
            ticket: None,
        }
    }

    pub(crate) const LIMITS: Limits = Limits {
        ttl: Duration::from_secs(600),
        slots: 0,
    };
}

#[cfg(test)]
mod tests {
    use super::test_requests::{LIMITS, claim, who};
    use super::*;

    #[test]
    fn the_marker_and_alive_files_follow_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(dir.path());
        assert!(!store.any_claims());
        let a = store.apply(&claim("a", "x"), LIMITS).unwrap();
        assert!(matches!(a.decision, RegistryOutcome::Granted { .. }));
        assert!(store.any_claims());
        assert!(seen_path(dir.path(), "a").exists());
        let b = store.apply(&claim("b", "x"), LIMITS).unwrap();
        assert!(matches!(b.decision, RegistryOutcome::Refused { .. }));
        let _ = store
            .apply(&Request::Done { who: who("a") }, LIMITS)
            .unwrap();
        assert!(!store.any_claims());
        // It stays: the agent's sign of life, whether it claims or not.
        assert!(seen_path(dir.path(), "a").exists());
        assert!(store.read().agents["a"].done);
    }

    fn set_mtime(path: &Path, ago: Duration) {
        let t = std::time::SystemTime::now() - ago;
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn here(agent: &str, tree: &str) -> Seen {
        Seen {
            agent: agent.into(),
            host: "h".into(),
            worktree: PathBuf::from(tree),
            git_dir: None,
            last_seen: 0,
        }
    }

    /// A sign of life within the grain is taken as now (no write); an older one is renewed, and
    /// one from the future (a clock stepped back) too.
    #[test]
    fn a_sign_of_life_is_written_only_when_older_than_the_grain() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        assert!(!sign_of_life(home, "a", 6000), "never seen");
        seen(home, "a", || here("a", "/t"));
        let path = seen_path(home, "a");
        set_mtime(&path, Duration::from_secs(3));
        let before = modified_ms(&path).unwrap();
        assert!(sign_of_life(home, "a", 6000));
        assert_eq!(modified_ms(&path), Some(before), "fresh: not rewritten");
        set_mtime(&path, Duration::from_secs(10));
        assert!(sign_of_life(home, "a", 6000));
        assert!(time::now() - modified_ms(&path).unwrap() < 2000, "renewed");
        let future = std::time::SystemTime::now() + Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(future)
            .unwrap();
        assert!(sign_of_life(home, "a", 6000));
        assert!(
            modified_ms(&path).unwrap() <= time::now(),
            "a future mtime is renewed"
        );
    }

    /// The `where/` record: the other work tree is told on the first commit in a new one; a
    /// record fresh within the grain spares the look; an old one is renewed and looks again.
    #[test]
    fn the_work_tree_record_looks_at_the_others_unless_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let (ta, tb) = (here("dup", "/ta"), here("dup", "/tb"));
        let window = 600_000;
        assert!(seen_in(home, &ta, window, 6000).is_empty());
        let others = seen_in(home, &tb, window, 6000);
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].worktree, PathBuf::from("/ta"));
        // Fresh: nothing looked at, nothing told.
        assert!(seen_in(home, &ta, window, 6000).is_empty());
        // Older than the grain: renewed, and tb (fresh) is told.
        let ta_file = where_dir(home, "dup").join(crate::protocol::key::file_stem("/ta"));
        set_mtime(&ta_file, Duration::from_secs(10));
        let others = seen_in(home, &ta, window, 6000);
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].worktree, PathBuf::from("/tb"));
        assert!(
            time::now() - modified_ms(&ta_file).unwrap() < 2000,
            "renewed"
        );
        // Both listed for `buildlock agents`, newest first.
        let all = worktrees_of(home, "dup", time::now(), window);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_touch_renews_the_claims_of_its_agent_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(dir.path());
        let _ = store.apply(&claim("a", "x"), LIMITS).unwrap();
        let before = store.read().agents["a"].last_seen;
        std::thread::sleep(Duration::from_millis(20));
        touch(dir.path(), "a");
        touch(dir.path(), "nobody");
        assert!(!seen_path(dir.path(), "nobody").exists());
        assert!(store.read().agents["a"].last_seen > before);
    }

    #[test]
    fn a_damaged_registry_reads_as_empty_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(dir.path());
        for bad in [&b""[..], b"{", b"\xff\x00", br#"{"schema": 99}"#] {
            std::fs::write(store.path(), bad).unwrap();
            assert_eq!(store.read(), Registry::default());
            let a = store.apply(&claim("a", "x"), LIMITS).unwrap();
            assert!(matches!(a.decision, RegistryOutcome::Granted { .. }));
            assert_eq!(store.read().claims.len(), 1);
            let _ = store
                .apply(&Request::Done { who: who("a") }, LIMITS)
                .unwrap();
        }
    }

    #[test]
    fn a_slot_is_handed_out_with_its_lock_and_freed_by_dropping_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(dir.path());
        let limits = Limits { slots: 1, ..LIMITS };
        let a = store
            .apply(
                &Request::Slot {
                    who: who("a"),
                    ticket: None,
                },
                limits,
            )
            .unwrap();
        assert!(matches!(
            a.decision,
            RegistryOutcome::TakeSlot { slot: 0, .. }
        ));
        let held = a.slot.expect("the lock comes with the decision");
        let b = store
            .apply(
                &Request::Slot {
                    who: who("b"),
                    ticket: None,
                },
                limits,
            )
            .unwrap();
        let RegistryOutcome::SlotQueued { ticket: tb, .. } = b.decision else {
            panic!("{:?}", b.decision)
        };
        drop(held);
        let b = store
            .apply(
                &Request::Slot {
                    who: who("b"),
                    ticket: Some(tb),
                },
                limits,
            )
            .unwrap();
        assert!(matches!(
            b.decision,
            RegistryOutcome::TakeSlot { slot: 0, .. }
        ));
    }
}
