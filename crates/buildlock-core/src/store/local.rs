//! The local backend: the coordination directory `<git common dir>/buildlock/`, shared by every
//! worktree of the repository.
//!
//! ```text
//! locks/election.lock          held for one read-decide-write step (empty, never removed)
//! locks/<key>-g<N>.fixer       held by generation N's registered fixer for its whole fix (empty;
//!                              removed only while free, once that generation is over)
//! state/<base>.json            one file per base key: its pass counter and its keys' states
//!                              (open keys and the few last passing ones), schema-versioned,
//!                              replaced atomically
//! leases/<agent>.agent         an agent's sign of life: one lease renewing every role it holds,
//!                              written by that agent alone
//! history.jsonl                one JSON object per event, each with the running totals; capped
//! logs/, run/, bin/, …         this machine's own files, whatever the backend (see `Home`)
//! ```
//!
//! Every state write happens under the election lock and is the commit point of a step: what
//! follows it (history, totals, cleaning) is best effort and never turns a step that was saved
//! into a failure. Reading state never fails: an empty, truncated, huge, garbage, wrong-schema
//! file, a symlink or a directory in its place reads as damaged, which the state machine handles
//! as "broken with nobody fixing"; the damage is warned about, logged, and the file rewritten.
//!
//! Sizes stay bounded, and what a step costs does not grow with what is on record:
//! - a base file keeps its open keys, its last [`KEEP_PASSING`] passing keys and its last
//!   [`KEEP_BROKEN`] broken ones; past [`KEEP_OPEN`] keys being fixed, the abandoned ones go
//!   (see below), looked at only when their number doubled or `stale_after` passed since the
//!   last look, so that the work is O(1) per step however many are on record;
//! - one agent holds at most `MAX_ROLES` roles per base (the oldest are given up, see
//!   `protocol::state::roles_over_cap`), and renews them all with one lease file;
//! - `state/` keeps at most [`KEEP_BASES`] + [`PRUNE_SLACK`] base files: when a new one is
//!   created and they are more, the oldest whose keys are all abandoned go, oldest first, parsed
//!   one at a time until [`KEEP_BASES`] are left;
//! - a free fixer lock goes with its generation or at the next new generation of any key
//!   (`locks/` holds the locks of fixers that run, or are stopped), and a lease file that renews
//!   nothing any more (older than twice `stale_after`) at the next new generation.
//!
//! **Abandoned** (the eviction rule): a key that no live agent can still act on. It is passing
//! or broken, or its fixer is dead (its registered fixer lock is free, or its elector died before
//! registering), silent (its lease is older than `stale_after`) or overtime (elected longer than
//! `max_fix_time` ago); and no process of it may still act: no waiter, no fix run, no elector
//! that is not seen dead, and no process holding its fixer lock (a stopped one included: it may
//! resume, and only a takeover, which records its fix as an orphan to stop, may replace it).
//! Evicting such a key changes no decision: the next failure on it elects a fixer, as a takeover
//! would (the generation still grows: the domain's high-water mark is in the history's totals);
//! a fixer that comes back finds its role gone and changes nothing, as if fenced.
//!
//! The hook's hot path is [`Store::read_base`]: one small file read, whatever the number of keys
//! on record.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read as _, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{
    Applied, BaseView, Entry, Finding, FixerHold, Policy, Read, Store, StoreError, Totals,
};
use crate::os::bell::{Bell, Listener};
use crate::os::fs::{self as osfs, Durability, write_atomic};
use crate::os::lock::{self, Lock};
use crate::os::process::Process;
use crate::os::time::{self, Millis};
use crate::protocol::key;
use crate::protocol::ledger::history_entries;
use crate::protocol::state::{
    Event, KeyState, Lease, Observed, Outcome, Status, roles_over_cap, transition,
};

/// The state file schema. A file with another version reads as damaged.
pub const SCHEMA: u32 = 2;
/// Passing keys kept per base file (the newest), for stale failures and the last fix commit.
pub const KEEP_PASSING: usize = 16;
/// Base files kept in `state/` (pruned back to this many once it holds [`PRUNE_SLACK`] more).
pub const KEEP_BASES: usize = 64;
/// How far `state/` may grow past [`KEEP_BASES`] before it is pruned.
pub const PRUNE_SLACK: usize = 16;
/// A guard against an absurd file, not a limit on keys: a base file with thousands of open keys
/// is read whole (its growth is bounded by `put`, not by refusing to read it).
const MAX_STATE_BYTES: u64 = 64 << 20;
/// Broken keys (nobody fixing) kept per base file, the newest.
pub const KEEP_BROKEN: usize = 16;
/// Keys being fixed in a base file before the abandoned ones are looked for.
pub const KEEP_OPEN: usize = 16;
const HISTORY_CAP: u64 = 1 << 20;
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LocalStore {
    dir: PathBuf,
    /// A waiter listening to the state bell, from [`Store::watch`] on.
    listener: Mutex<Option<Listener>>,
}

/// One base key's file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BaseFile {
    schema: u32,
    base: String,
    /// How many times a key of this base became passing.
    #[serde(default)]
    passes: u64,
    keys: Vec<KeyState>,
    /// Keys being fixed left after the last look for abandoned ones, and when it was: the next
    /// look comes when their number doubled, or `stale_after` later.
    #[serde(default, skip_serializing_if = "is_zero")]
    open_kept: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    open_looked: Millis,
    /// The limits of the last step that wrote the file, `(stale_after, max_fix_time)` in ms: a
    /// read that finds a look for abandoned keys due does it with them (see `tidy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<(Millis, Millis)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BaseFile {
    fn new(base: &str) -> BaseFile {
        BaseFile {
            schema: SCHEMA,
            base: base.to_owned(),
            passes: 0,
            keys: Vec::new(),
            open_kept: 0,
            open_looked: 0,
            limits: None,
        }
    }

    fn get(&self, key: &str) -> Option<&KeyState> {
        self.keys.iter().find(|k| k.key == key)
    }

    /// Puts `state` in, and keeps the file small: every key being fixed, the newest broken ones
    /// (nobody fixes them; a new failure elects a fixer anyway) and the newest passing ones.
    fn put(&mut self, state: KeyState) {
        self.passes = self.passes.max(state.passed);
        match self.keys.iter_mut().find(|k| k.key == state.key) {
            Some(k) => *k = state,
            None => self.keys.push(state),
        }
        for (status, keep) in [
            (Status::Passing, KEEP_PASSING),
            (Status::Broken, KEEP_BROKEN),
        ] {
            let mut these: Vec<(Millis, String)> = self
                .keys
                .iter()
                .filter(|k| k.status == status)
                .map(|k| (k.changed, k.key.clone()))
                .collect();
            if these.len() > keep {
                these.sort();
                let drop: std::collections::HashSet<String> = these[..these.len() - keep]
                    .iter()
                    .map(|(_, k)| k.clone())
                    .collect();
                self.keys.retain(|k| !drop.contains(&k.key));
            }
        }
        self.keys.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

enum BaseRead {
    Missing,
    Found(BaseFile),
    Damaged(String),
}

impl Store for LocalStore {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn read(&self, key: &str) -> Read {
        let base = key::base_of(key);
        match read_base_file(&self.base_path(base), base) {
            BaseRead::Missing => Read::Missing,
            BaseRead::Damaged(why) => Read::Damaged(why),
            BaseRead::Found(file) => match file.get(key) {
                None => Read::Missing,
                Some(state) => Read::Found {
                    base: file.base.clone(),
                    state: self.with_lease(state.clone()),
                },
            },
        }
    }

    fn read_base(&self, base: &str) -> BaseView {
        match read_base_file(&self.base_path(base), base) {
            BaseRead::Missing => BaseView::default(),
            BaseRead::Damaged(why) => BaseView {
                damaged: Some(why),
                ..BaseView::default()
            },
            BaseRead::Found(mut file) => {
                if let Some(tidied) = self.tidy(&file) {
                    file = tidied;
                }
                let mut leases = Leases::new(self);
                BaseView {
                    passes: file.passes,
                    keys: file.keys.into_iter().map(|k| leases.fold(k)).collect(),
                    damaged: None,
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
    ) -> Result<Applied, StoreError> {
        let _lock = self.election_lock(stop)?;
        crate::os::fault::point("election");

        let path = self.base_path(base);
        let (mut file, damaged, existed) = match read_base_file(&path, base) {
            BaseRead::Missing => (BaseFile::new(base), None, false),
            BaseRead::Found(f) => (f, None, true),
            BaseRead::Damaged(why) => (BaseFile::new(base), Some(why), true),
        };
        let before = match (file.get(key), &damaged) {
            (Some(s), _) => self.with_lease(s.clone()),
            (None, Some(_)) => KeyState::unknown(key),
            (None, None) => KeyState::passing(key),
        };
        let totals = self.totals_now();
        let fixer_lock_free = match &before.fixer {
            Some(f) if f.registered => {
                lock::is_free(&self.fixer_lock_path(key, before.generation))?
            }
            _ => true,
        };
        let registered = before.fixer.as_ref().is_some_and(|f| f.registered);
        let fixer_running =
            registered && !fixer_lock_free && self.fixer_running(key, before.generation);
        let seen = Observed {
            now: time::now(),
            stale_after: super::millis(policy.stale_after),
            max_fix_attempts: policy.max_fix_attempts,
            // One machine, one clock: the fixer's election time and `now` were both read here.
            max_fix_time: super::millis(policy.max_fix_time),
            generation_floor: totals.generation,
            passes: file.passes,
            fixer_lock_free,
            fixer_running,
            seen_silent,
            elector_dead: before
                .fixer
                .as_ref()
                .is_some_and(crate::store::elector_dead),
        };
        let (after, outcome) = transition(&before, event, &seen);

        let mut given_up = Vec::new();
        let mut evicted = Vec::new();
        if after != before || damaged.is_some() {
            // Durable when it changes who fixes what; a waiter joining or leaving need not
            // cost a disk flush (it is rewritten by the next step anyway).
            let durability = if decisive(&before, &after) || damaged.is_some() {
                Durability::Synced
            } else {
                Durability::Atomic
            };
            file.put(after.clone());
            if matches!(outcome, Outcome::Elected { .. }) {
                given_up = self.give_up_roles(&mut file, key, &after, &seen);
            }
            file.limits = Some((
                super::millis(policy.stale_after),
                super::millis(policy.max_fix_time),
            ));
            evicted = self.evict_abandoned(&mut file, key, seen.now, policy);
            write_atomic(&path, &serde_json::to_vec_pretty(&file)?, durability)?;
            // Waiters act on who fixes what only: a waiter joining or leaving wakes nobody
            // (else a crowd of n waiters forming would wake n² times).
            if durability == Durability::Synced {
                self.bell().ring();
            }
        }
        // The step is saved. Everything below is bookkeeping: warned about, never a failure.
        let mut entries = Vec::new();
        if let Some(why) = &damaged {
            crate::os::say::warn(format!(
                "the state file {} was unreadable ({why}); treating key `{key}` as broken with \
                 nobody fixing, and rewriting it",
                path.display()
            ));
            entries.push(Entry::from_json(
                serde_json::json!({"event": "damaged", "key": key, "reason": why}),
            ));
        }
        entries.extend(
            history_entries(key, event, &outcome, &before, &after)
                .into_iter()
                .map(Entry::from_json),
        );
        let mut next_totals = totals;
        next_totals.count(event, &outcome, &before, &after);
        for (event, (was, now, out)) in &given_up {
            let lines = history_entries(&now.key, event, out, was, now);
            entries.extend(lines.into_iter().map(|mut line| {
                line["reason"] = "too_many_roles".into();
                Entry::from_json(line)
            }));
            next_totals.count(event, out, was, now);
        }
        if let Err(e) = self.append_history(&entries, next_totals) {
            crate::os::say::warn(format!("could not write the history: {e:#}"));
        }
        if before.generation != after.generation
            || (before.status == Status::Fixing && after.status != Status::Fixing)
        {
            self.forget_generation(key, before.generation);
        }
        for (_, (was, _, _)) in &given_up {
            self.forget_generation(&was.key, was.generation);
        }
        for gone in &evicted {
            self.forget_generation(&gone.key, gone.generation);
        }
        if after.generation > before.generation {
            // A new generation (an election, a takeover, a reset): the fixer locks that could not
            // go when their generation ended (their fixer still held them, as it does while it
            // commits its fix) go now, whatever their key, if free; and leases that renew
            // nothing any more.
            self.sweep_locks(policy);
        }
        if !existed {
            self.prune_bases(base, seen.now, policy);
        }
        Ok(Applied {
            before,
            after,
            outcome,
            damaged,
        })
    }

    fn all(&self) -> Result<Vec<(String, KeyState)>, StoreError> {
        let Ok(entries) = fs::read_dir(self.dir.join("state")) else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<(String, KeyState)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".json") && !name.starts_with('.')
            })
            .filter_map(|e| match read_base_file(&e.path(), "") {
                BaseRead::Found(f) => Some(f),
                _ => None,
            })
            .flat_map(|f| {
                let base = f.base.clone();
                f.keys
                    .into_iter()
                    .map(move |k| (base.clone(), k))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut leases = Leases::new(self);
        for (_, k) in keys.iter_mut() {
            *k = leases.fold(std::mem::replace(k, KeyState::passing("")));
        }
        keys.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        Ok(keys)
    }

    fn totals(&self) -> Result<Totals, StoreError> {
        Ok(self.totals_now())
    }

    fn history(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self.history_now())
    }

    fn record(&self, entry: Entry) -> Result<(), StoreError> {
        let _lock = self.election_lock(&|| false)?;
        let mut totals = self.totals_now();
        totals.count_record(&serde_json::Value::from(entry.clone()));
        Ok(self.append_history(&[entry], totals)?)
    }

    /// One lease per agent: renewing one role renews them all (see [`Store::renew_roles`]).
    fn write_lease(&self, _key: &str, lease: &Lease) -> Result<(), StoreError> {
        Ok(write_atomic(
            &self.lease_path(&lease.agent),
            &serde_json::to_vec(lease)?,
            Durability::Atomic,
        )?)
    }

    fn renew_roles(
        &self,
        agent: &str,
        roles: &[(String, u64)],
        heartbeat: Millis,
    ) -> Result<(), StoreError> {
        let Some((key, generation)) = roles.first() else {
            return Ok(());
        };
        let lease = Lease {
            agent: agent.to_owned(),
            generation: *generation,
            heartbeat,
        };
        self.write_lease(key, &lease)
    }

    fn hold_fixer(
        &self,
        key: &str,
        generation: u64,
        timeout: Duration,
    ) -> Result<Option<FixerHold>, StoreError> {
        let path = self.fixer_lock_path(key, generation);
        Ok(Lock::acquire(&path, timeout, || {})?.map(FixerHold::new))
    }

    fn fixer_gone(&self, key: &str, generation: u64) -> bool {
        lock::is_free(&self.fixer_lock_path(key, generation)).unwrap_or(false)
    }

    fn fixer_running(&self, key: &str, generation: u64) -> bool {
        matches!(
            lock::holder(&self.fixer_lock_path(key, generation)),
            Some((_, false))
        )
    }

    fn look_every(&self) -> Duration {
        Duration::from_millis(250)
    }

    fn watch(&self, _key: &str) -> bool {
        let Ok(mut slot) = self.listener.lock() else {
            return false;
        };
        slot.get_or_insert_with(|| self.bell().listen()).is_live()
    }

    fn wait_change(&self, key: &str, fixer: Option<&Process>, timeout: Duration) {
        self.watch(key);
        let Ok(mut slot) = self.listener.lock() else {
            std::thread::sleep(timeout);
            return;
        };
        if let Some(listener) = slot.as_mut() {
            listener.wait(fixer.map(std::slice::from_ref).unwrap_or_default(), timeout);
        }
    }

    fn wait_for_change(&self, key: &str, fixer: Option<&Process>, timeout: Duration) -> bool {
        self.watch(key);
        let Ok(mut slot) = self.listener.lock() else {
            std::thread::sleep(timeout);
            return true;
        };
        match slot.as_mut() {
            Some(listener) => {
                let procs = fixer.map(std::slice::from_ref).unwrap_or_default();
                // A listener that cannot hear the bell sleeps out its nap: anything may have
                // changed meanwhile.
                listener.wait(procs, timeout) != crate::os::bell::Wake::TimedOut
                    || !listener.is_live()
                    || crate::os::signals::pending().is_some()
            }
            None => {
                std::thread::sleep(timeout);
                true
            }
        }
    }

    fn sign_of_life(&self, agent: &str) -> Option<Option<Millis>> {
        Some(Leases::new(self).heartbeat(agent))
    }

    fn diagnose(&self) -> Vec<Finding> {
        super::probe::store_findings(&self.dir)
    }
}

/// Whether a step changes who fixes what (and so must survive a crash of the machine).
fn decisive(before: &KeyState, after: &KeyState) -> bool {
    let who = |s: &KeyState| {
        s.fixer
            .as_ref()
            .map(|f| (f.agent.clone(), f.registered, f.pid, f.fix_process.clone()))
    };
    before.status != after.status
        || before.generation != after.generation
        || who(before) != who(after)
        || before.fix != after.fix
}

fn open_keys(file: &BaseFile) -> u64 {
    file.keys
        .iter()
        .filter(|k| k.status == Status::Fixing)
        .count() as u64
}

/// Whether a look for abandoned keys in `file` is due: past [`KEEP_OPEN`] keys being fixed, when
/// their number doubled or `stale_after` passed since the last look.
fn eviction_due(file: &BaseFile, now: Millis, stale_after: Millis) -> bool {
    let open = open_keys(file);
    open > KEEP_OPEN as u64
        && (open >= 2 * file.open_kept || now >= file.open_looked.saturating_add(stale_after))
}

/// Leases read once per agent: a read that folds them into many keys reads one file per agent
/// among their fixers, however many roles each holds.
struct Leases<'a> {
    store: &'a LocalStore,
    read: std::collections::HashMap<String, Option<Millis>>,
}

impl<'a> Leases<'a> {
    fn new(store: &'a LocalStore) -> Leases<'a> {
        Leases {
            store,
            read: std::collections::HashMap::new(),
        }
    }

    /// `state` with its fixer's last sign of life folded in.
    fn fold(&mut self, mut state: KeyState) -> KeyState {
        let Some(agent) = state
            .fixer
            .as_ref()
            .filter(|_| state.status == Status::Fixing)
            .map(|f| f.agent.clone())
        else {
            return state;
        };
        if let Some(heartbeat) = self.heartbeat(&agent) {
            state.sign_of_life(&agent, heartbeat);
        }
        state
    }

    /// `agent`'s last sign of life on record, if any.
    fn heartbeat(&mut self, agent: &str) -> Option<Millis> {
        let store = self.store;
        *self.read.entry(agent.to_owned()).or_insert_with(|| {
            osfs::read_bounded(&store.lease_path(agent), 4096)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
                .filter(|l| l.agent == agent)
                .map(|l| l.heartbeat)
        })
    }
}

impl LocalStore {
    /// The counters, from the history's last line that has them (none yet: zero).
    fn totals_now(&self) -> Totals {
        last_totals(&self.history_path()).unwrap_or_default()
    }

    /// The history, as much of it as can be read (a damaged line is skipped).
    fn history_now(&self) -> Vec<Entry> {
        osfs::read_bounded(&self.history_path(), 2 * HISTORY_CAP)
            .ok()
            .flatten()
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn new(dir: PathBuf) -> LocalStore {
        LocalStore {
            dir,
            listener: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn base_path(&self, base: &str) -> PathBuf {
        self.dir
            .join("state")
            .join(format!("{}.json", key::file_stem(base)))
    }

    pub fn fixer_lock_path(&self, key: &str, generation: u64) -> PathBuf {
        self.dir
            .join("locks")
            .join(format!("{}-g{generation}.fixer", key::file_stem(key)))
    }

    /// Rung after every step that changes who fixes what (see `os::bell`).
    fn bell(&self) -> Bell {
        Bell::in_dir(&self.dir, "state")
    }

    fn election_lock_path(&self) -> PathBuf {
        self.dir.join("locks").join("election.lock")
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }

    /// `agent`'s lease: its last sign of life, which renews every role it holds.
    fn lease_path(&self, agent: &str) -> PathBuf {
        self.dir
            .join("leases")
            .join(format!("{}.agent", key::file_stem(agent)))
    }

    /// The state with its fixer's latest sign of life folded in.
    fn with_lease(&self, state: KeyState) -> KeyState {
        Leases::new(self).fold(state)
    }

    /// A generation of `key` is over: its fixer lock goes, if free. (Leases are the agent's,
    /// not the generation's: they go once they renew nothing, see [`LocalStore::sweep_locks`].)
    fn forget_generation(&self, key: &str, generation: u64) {
        lock::remove_if_free(&self.fixer_lock_path(key, generation));
    }

    /// Past [`MAX_ROLES`](crate::protocol::state::MAX_ROLES) roles of the agent just elected for `key` in this base, its oldest
    /// give the role up (released), in the same write. Returns each with the event applied,
    /// its state before and after, and the outcome, for the history.
    fn give_up_roles(
        &self,
        file: &mut BaseFile,
        key: &str,
        elected: &KeyState,
        seen: &Observed,
    ) -> Vec<(Event, (KeyState, KeyState, Outcome))> {
        let Some(agent) = elected.fixer.as_ref().map(|f| f.agent.clone()) else {
            return Vec::new();
        };
        let over: Vec<String> = roles_over_cap(&file.keys, &agent, key)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut given = Vec::new();
        for k in over {
            let Some(was) = file.get(&k).cloned() else {
                continue;
            };
            let was = self.with_lease(was);
            let event = Event::Release {
                agent: agent.clone(),
            };
            let (now, out) = transition(&was, &event, seen);
            if now != was {
                file.put(now.clone());
                given.push((event, (was, now, out)));
            }
        }
        given
    }

    /// Takes the abandoned keys being fixed (see the module's doc) out of `file`, never `keep`:
    /// only past [`KEEP_OPEN`] of them, and only when their number doubled or `stale_after`
    /// passed since the last look (so each step costs O(1) on average). Returns those taken out.
    fn evict_abandoned(
        &self,
        file: &mut BaseFile,
        keep: &str,
        now: Millis,
        policy: Policy,
    ) -> Vec<KeyState> {
        let open = open_keys(file);
        if !eviction_due(file, now, super::millis(policy.stale_after)) {
            return Vec::new();
        }
        let mut leases = Leases::new(self);
        let (gone, kept): (Vec<KeyState>, Vec<KeyState>) =
            std::mem::take(&mut file.keys).into_iter().partition(|k| {
                k.key != keep
                    && k.status == Status::Fixing
                    && self.abandoned(&leases.fold(k.clone()), now, policy)
            });
        file.keys = kept;
        file.open_kept = open - gone.len() as u64;
        file.open_looked = now;
        gone
    }

    /// A read of `file` that finds a look for abandoned keys due (past [`KEEP_OPEN`] keys being
    /// fixed, `stale_after` after the last look) does it, with the limits of the last step, when
    /// the election lock is free at once: so that keys whose fixers went silent after the last
    /// step leave the file, and the reads after this one, even if no step comes. Best effort;
    /// the file as tidied, when it was.
    fn tidy(&self, file: &BaseFile) -> Option<BaseFile> {
        let (stale_after, max_fix_time) = file.limits?;
        let now = time::now();
        if !eviction_due(file, now, stale_after) {
            return None;
        }
        let _lock = Lock::try_acquire(&self.election_lock_path()).ok()??;
        let path = self.base_path(&file.base);
        let BaseRead::Found(mut file) = read_base_file(&path, &file.base) else {
            return None;
        };
        let policy = Policy {
            stale_after: Duration::from_millis(stale_after),
            max_fix_attempts: 0,
            max_fix_time: Duration::from_millis(max_fix_time),
        };
        let evicted = self.evict_abandoned(&mut file, "", now, policy);
        let bytes = serde_json::to_vec_pretty(&file).ok()?;
        write_atomic(&path, &bytes, Durability::Atomic).ok()?;
        for gone in &evicted {
            self.forget_generation(&gone.key, gone.generation);
        }
        Some(file)
    }

    /// Whether no live agent can still act on `state` (the eviction rule, in the module's doc).
    /// `state` has its lease folded in.
    fn abandoned(&self, state: &KeyState, now: Millis, policy: Policy) -> bool {
        use crate::os::process::{Seen, judge};
        // Unknown (another host or pid space, no start time) may act: only dead is dead.
        let may_act = |p: &Process| judge(p) != Seen::Dead;
        if state.waiters.iter().any(|w| may_act(&w.process()))
            || state.orphan_fix.iter().any(may_act)
        {
            return false;
        }
        let Some(fixer) = state
            .fixer
            .as_ref()
            .filter(|_| state.status == Status::Fixing)
        else {
            return true;
        };
        if fixer.fix_process.as_ref().is_some_and(may_act) {
            return false;
        }
        if fixer.registered {
            // Held, by a process that runs or a stopped one: only a takeover replaces it. Free:
            // the fixer died.
            return lock::is_free(&self.fixer_lock_path(&state.key, state.generation))
                .unwrap_or(false);
        }
        if let Some(elector) = &fixer.elector {
            return !may_act(elector);
        }
        let silent = fixer
            .heartbeat
            .saturating_add(super::millis(policy.stale_after))
            <= now;
        let overtime = fixer
            .since
            .saturating_add(super::millis(policy.max_fix_time))
            <= now;
        silent || overtime
    }

    /// Keeps `state/` within [`KEEP_BASES`] + [`PRUNE_SLACK`] files: when a base file was
    /// created and they are more, the oldest base files whose keys are all abandoned (see the
    /// module's doc) go, down to [`KEEP_BASES`], with their free fixer locks. Each is parsed one at a time, oldest first, and at most [`KEEP_BASES`] per step:
    /// the step costs O(1) however many files a version before this one left. Also sweeps stray
    /// temp files, free fixer locks and leases that renew nothing.
    fn prune_bases(&self, keep: &str, now: Millis, policy: Policy) {
        let state_dir = self.dir.join("state");
        let Ok(entries) = fs::read_dir(&state_dir) else {
            return;
        };
        let names: Vec<fs::DirEntry> = entries
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && !n.starts_with('.')
            })
            .collect();
        // Counted by name; their ages are read only once the folder has grown [`PRUNE_SLACK`]
        // past its bound, and then it goes back to [`KEEP_BASES`] at once: reading every
        // file's age at every new base was a third of what a new breakage cost.
        if names.len() <= KEEP_BASES + PRUNE_SLACK {
            return;
        }
        osfs::remove_strays(&state_dir);
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = names
            .into_iter()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= KEEP_BASES {
            return;
        }
        files.sort();
        let mut excess = files.len() - KEEP_BASES;
        let keep_path = self.base_path(keep);
        let mut leases = Leases::new(self);
        for (_, path) in files.into_iter().take(KEEP_BASES) {
            if excess == 0 {
                break;
            }
            if path == keep_path {
                continue;
            }
            let BaseRead::Found(file) = read_base_file(&path, "") else {
                continue;
            };
            let keys: Vec<KeyState> = file.keys.into_iter().map(|k| leases.fold(k)).collect();
            if !keys.iter().all(|k| self.abandoned(k, now, policy)) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                excess -= 1;
                for k in keys.iter().filter(|k| k.status == Status::Fixing) {
                    self.forget_generation(&k.key, k.generation);
                }
            }
        }
        self.sweep_locks(policy);
    }

    /// Fixer locks that nobody holds (the generations that are over, and fixers that died: a
    /// free lock and a missing one say the same), and leases not renewed for twice
    /// `stale_after` (whatever role they renewed is silent without them too). Looks at the files
    /// of `locks/` and `leases/` only, never at the state.
    fn sweep_locks(&self, policy: Policy) {
        for e in fs::read_dir(self.dir.join("locks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".fixer") {
                lock::remove_if_free(&e.path());
            }
        }
        let renews_nothing = std::time::SystemTime::now()
            .checked_sub(policy.stale_after.saturating_mul(2))
            .unwrap_or(std::time::UNIX_EPOCH);
        for e in fs::read_dir(self.dir.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.json`: the per-generation leases of versions before one lease per agent.
            if !(name.ends_with(".agent") || name.ends_with(".json")) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < renews_nothing);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn election_lock(&self, stop: &dyn Fn() -> bool) -> Result<Lock, StoreError> {
        let path = self.election_lock_path();
        let lock = Lock::acquire_or_stop(
            &path,
            ELECTION_TIMEOUT,
            || {
                crate::os::say::say(format!(
                    "waiting for the election lock {} (another buildlock is deciding)",
                    path.display()
                ))
            },
            stop,
        )
        .with_context(|| format!("cannot take the election lock in {}", self.dir.display()))?;
        let Some(lock) = lock else {
            if stop() {
                return Err(StoreError::Interrupted);
            }
            let who = match lock::holder(&path) {
                Some((pid, true)) => format!(
                    "by pid {pid}, which is STOPPED (SIGSTOP or a debugger): resume it with \
                     `kill -CONT {pid}` or end it"
                ),
                Some((pid, false)) => format!("by pid {pid}"),
                None => format!(
                    "by another process (find it with `fuser {}`)",
                    path.display()
                ),
            };
            return Err(StoreError::Unreachable(format!(
                "the election lock {} has been held for {} {who}",
                path.display(),
                time::human(ELECTION_TIMEOUT),
            )));
        };
        // A second handle must be refused while we hold the lock, or locking is not real here.
        if Lock::try_acquire(&path)?.is_some() {
            return Err(StoreError::Refused(format!(
                "file locking does not work in {} (a network or virtual file system?): buildlock \
                 cannot coordinate here and refuses to pretend; keep the repository on a local disk",
                self.dir.display()
            )));
        }
        Ok(lock)
    }

    /// Appends the entries in one write, the last one carrying the running totals, and keeps the
    /// history within its cap. Under the election lock.
    fn append_history(&self, entries: &[Entry], totals: Totals) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.history_path();
        let now = time::now();
        let mut text = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let mut entry = entry.clone();
            entry.stamp(now);
            if i + 1 == entries.len() {
                entry
                    .fields
                    .insert("totals".into(), serde_json::to_value(totals)?);
            }
            serde_json::to_writer(&mut text, &entry)?;
            text.push(b'\n');
        }
        let mut file = match osfs::open_append(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir)?;
                osfs::open_append(&path)
            }
            other => other,
        }
        .with_context(|| format!("cannot open {}", path.display()))?;
        file.write_all(&text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Closed before the file is replaced: Windows refuses to rename over an open file.
        drop(file);
        if len > HISTORY_CAP {
            // Keep the newest half, cut at a line boundary.
            let all = fs::read(&path)?;
            let cut = all.len() - (HISTORY_CAP as usize / 2);
            let start = all[cut..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(all.len(), |i| cut + i + 1);
            write_atomic(&path, &all[start..], Durability::Atomic)?;
        }
        Ok(())
    }
}

/// The totals on the last line of the history that has them: read from the end of the file.
fn last_totals(path: &Path) -> Option<Totals> {
    let mut file = osfs::open_nofollow(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut window = 4096u64;
    loop {
        let from = len.saturating_sub(window);
        file.seek(SeekFrom::Start(from)).ok()?;
        // Sized for the window: one read, not one per doubling of an empty buffer.
        let mut tail = Vec::with_capacity(window as usize);
        (&mut file).take(window).read_to_end(&mut tail).ok()?;
        let text = String::from_utf8_lossy(&tail);
        let mut lines: Vec<&str> = text.lines().collect();
        if from > 0 && !lines.is_empty() {
            lines.remove(0); // maybe cut in the middle
        }
        let found = lines.iter().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            serde_json::from_value::<Totals>(v.get("totals")?.clone()).ok()
        });
        if found.is_some() || from == 0 || window >= 1 << 20 {
            return found;
        }
        window *= 4;
    }
}

fn read_base_file(path: &Path, base: &str) -> BaseRead {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BaseRead::Missing,
        Err(e) => return BaseRead::Damaged(format!("cannot read it: {e}")),
    };
    if meta.is_dir() {
        return BaseRead::Damaged("a directory is in its place".into());
    }
    if meta.file_type().is_symlink() {
        return BaseRead::Damaged("a symbolic link is in its place".into());
    }
    let bytes = match osfs::read_bounded(path, MAX_STATE_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return BaseRead::Damaged(format!("{} bytes is far too large", meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BaseRead::Missing,
        Err(e) => return BaseRead::Damaged(format!("cannot read it: {e}")),
    };
    if bytes.is_empty() {
        return BaseRead::Damaged("it is empty".into());
    }
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    match serde_json::from_slice::<Version>(&bytes) {
        Ok(v) if v.schema != SCHEMA => {
            return BaseRead::Damaged(format!("schema {} is not {SCHEMA}", v.schema));
        }
        Ok(_) => {}
        Err(e) => return BaseRead::Damaged(format!("not valid state: {e}")),
    }
    match serde_json::from_slice::<BaseFile>(&bytes) {
        Ok(f) if base.is_empty() || f.base == base => BaseRead::Found(f),
        Ok(f) => BaseRead::Damaged(format!("it holds base `{}`", f.base)),
        Err(e) => BaseRead::Damaged(format!("not valid state: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state::{Agent, FixSeen, Outcome};

    fn policy() -> Policy {
        Policy {
            stale_after: Duration::from_secs(60),
            max_fix_attempts: 3,
            max_fix_time: Duration::from_secs(3600),
        }
    }

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            pid: 1,
            host: "h".into(),
            start: None,
            pid_space: None,
        }
    }

    fn fail(id: &str) -> Event {
        Event::Failed {
            agent: agent(id),
            signature: "s".into(),
            log: "/l".into(),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        }
    }

    fn pass(id: &str) -> Event {
        Event::Passed {
            agent: agent(id),
            generation: None,
            fix: FixSeen::default(),
        }
    }

    fn apply(store: &LocalStore, key: &str, event: &Event) -> Applied {
        let base = key::base_of(key);
        store
            .apply(key, base, event, policy(), None, &|| false)
            .unwrap()
    }

    /// Waiters wake on the steps that change who fixes what, and only on those: a crowd of n
    /// waiters joining one by one must not wake itself n² times.
    #[test]
    fn the_state_bell_rings_for_who_fixes_what_not_for_waiters_joining() {
        use crate::os::bell::Wake;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let mut listener = store.bell().listen();
        assert!(listener.is_live());
        let short = Duration::from_millis(50);
        let long = Duration::from_secs(10);

        let elected = apply(&store, "k", &fail("a")).outcome;
        assert!(matches!(elected, Outcome::Elected { .. }), "{elected:?}");
        assert_eq!(listener.sleep(long), Wake::Rang, "an election");
        for w in ["b", "c"] {
            let waits = apply(&store, "k", &fail(w)).outcome;
            assert!(matches!(waits, Outcome::Wait { .. }), "{waits:?}");
        }
        assert_eq!(listener.sleep(short), Wake::TimedOut, "waiters joining");
        apply(&store, "k", &pass("a"));
        assert_eq!(listener.sleep(long), Wake::Rang, "the fix");
    }

    #[test]
    fn elects_then_waits_and_counts_in_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("buildlock"));
        assert_eq!(store.read("repo"), Read::Missing);
        let a = apply(&store, "repo", &fail("a"));
        assert_eq!(a.outcome, Outcome::Elected { replaced: None });
        let b = apply(&store, "repo", &fail("b"));
        assert!(matches!(b.outcome, Outcome::Wait { first: true, .. }));
        let t = store.totals().unwrap();
        assert_eq!((t.failures, t.elections, t.waits, t.fix_runs), (2, 1, 1, 0));
        apply(&store, "repo", &pass("a"));
        let t = store.totals().unwrap();
        assert_eq!((t.fixes, t.fix_runs_avoided), (1, 1));
        let history = store.history().unwrap();
        let events: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["failed", "elected", "failed", "waiting", "fixed"]);
        assert_eq!(
            history.last().unwrap().totals().unwrap().fixes,
            1,
            "the history carries the totals"
        );
    }

    #[test]
    fn damaged_state_reads_as_unknown_and_is_rewritten() {
        let huge = vec![b'x'; 2 << 20];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            (
                "truncated",
                br#"{"schema": 2, "base": "repo", "keys": [{"key": "re"#.to_vec(),
            ),
            ("garbage", vec![0xff, 0x00, 0x13, 0x37]),
            ("other schema", br#"{"schema": 99}"#.to_vec()),
            ("huge", huge),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::new(dir.path().to_owned());
            let path = store.base_path("repo");
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
            assert!(matches!(store.read("repo"), Read::Damaged(_)), "{what}");
            let applied = apply(&store, "repo", &fail("a"));
            assert!(applied.damaged.is_some(), "{what}");
            assert_eq!(
                applied.outcome,
                Outcome::Elected { replaced: None },
                "{what}"
            );
            assert!(
                matches!(store.read("repo"), Read::Found { .. }),
                "{what}: rewritten"
            );
        }
    }

    #[test]
    fn a_directory_or_a_symlink_in_place_of_the_state_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        fs::create_dir_all(store.base_path("repo").join("inner")).unwrap();
        assert!(matches!(store.read("repo"), Read::Damaged(_)));
        apply(&store, "repo", &fail("a"));
        assert!(matches!(store.read("repo"), Read::Found { .. }));

        let target = dir.path().join("target.json");
        fs::copy(store.base_path("repo"), &target).unwrap();
        fs::remove_file(store.base_path("repo")).unwrap();
        crate::os::fs::symlink_file(&target, &store.base_path("repo")).unwrap();
        assert!(
            matches!(store.read("repo"), Read::Damaged(_)),
            "not followed"
        );
        apply(&store, "repo", &fail("b"));
        let kept = fs::read(&target).unwrap();
        assert!(
            !String::from_utf8_lossy(&kept).contains("\"b\""),
            "target untouched"
        );
    }

    #[test]
    fn generation_survives_a_lost_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        apply(&store, "repo", &fail("a"));
        apply(&store, "repo", &Event::Reset { agent: "op".into() });
        fs::write(store.base_path("repo"), b"").unwrap();
        let a = apply(&store, "repo", &fail("b"));
        assert_eq!(a.after.generation, 3);
    }

    // regression: on Windows the capped history was replaced while still open for append (os error 5).
    #[test]
    fn history_is_capped_and_keeps_its_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        fs::create_dir_all(dir.path()).unwrap();
        let pad = "p".repeat(1000);
        for i in 0..1500u64 {
            let totals = Totals {
                failures: i,
                ..Totals::default()
            };
            store
                .append_history(
                    &[Entry::from_json(
                        serde_json::json!({"event": "x", "i": i, "pad": pad}),
                    )],
                    totals,
                )
                .unwrap();
        }
        let len = fs::metadata(store.history_path()).unwrap().len();
        assert!(len <= HISTORY_CAP, "{len}");
        let h = store.history().unwrap();
        assert_eq!(h.last().unwrap().fields["i"], 1499);
        assert!(h.iter().all(|e| e.event == "x"), "cut at a line boundary");
        assert_eq!(store.totals().unwrap().failures, 1499);
    }

    #[test]
    fn many_signatures_stay_in_a_bounded_base_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        for i in 0..100 {
            let key = format!("repo#{i:016x}");
            apply(&store, &key, &fail("a"));
            apply(&store, &key, &pass("a"));
        }
        let view = store.read_base("repo");
        assert_eq!(view.passes, 100);
        assert_eq!(
            view.keys.len(),
            KEEP_PASSING,
            "only the newest passing keys"
        );
        let open = format!("repo#{:016x}", 7777);
        apply(&store, &open, &fail("b"));
        assert!(store.read_base("repo").keys.iter().any(|k| k.key == open));
    }

    /// A fixer holds its lock while its fix commit declares the build fixed, so that lock cannot
    /// go with its generation; the next election (of any key) removes it once free.
    #[test]
    fn a_lock_held_when_its_generation_ended_goes_at_the_next_election() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let fixer_locks = || {
            fs::read_dir(dir.path().join("locks"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".fixer"))
                .count()
        };
        for i in 0..20u32 {
            let key = format!("repo#{i:016x}");
            let generation = apply(&store, &key, &fail("a")).after.generation;
            let hold = store
                .hold_fixer(&key, generation, Duration::from_secs(1))
                .unwrap()
                .unwrap();
            apply(&store, &key, &pass("a"));
            drop(hold);
            assert!(fixer_locks() <= 2, "{i}: {}", fixer_locks());
        }
    }

    fn apply_with(store: &LocalStore, key: &str, event: &Event, policy: Policy) -> Applied {
        store
            .apply(key, key::base_of(key), event, policy, None, &|| false)
            .unwrap()
    }

    fn silent_after(ms: u64) -> Policy {
        Policy {
            stale_after: Duration::from_millis(ms),
            ..policy()
        }
    }

    /// An agent that broke more things at once than it may fix keeps the newest roles: its
    /// oldest are given up (broken, in the history as released for too many roles), and what it
    /// holds stays within the rule however often it fails.
    #[test]
    fn an_agent_holds_at_most_max_roles_and_gives_up_the_oldest() {
        use crate::protocol::state::MAX_ROLES;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let key = |i: usize| format!("repo#{i:016x}");
        for i in 0..MAX_ROLES + 24 {
            let a = apply(&store, &key(i), &fail("a"));
            assert!(matches!(a.outcome, Outcome::Elected { .. }), "{i}");
        }
        let view = store.read_base("repo");
        let held: Vec<&str> = view
            .keys
            .iter()
            .filter(|k| k.is_fixer("a", k.generation))
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(held.len(), MAX_ROLES);
        assert!(held.contains(&key(MAX_ROLES + 23).as_str()), "the newest");
        assert!(!held.contains(&key(0).as_str()), "the oldest went");
        let released: Vec<_> = store
            .history()
            .unwrap()
            .into_iter()
            .filter(|e| e.event == "released")
            .collect();
        assert_eq!(released.len(), 24);
        assert!(
            released
                .iter()
                .all(|e| e.fields["reason"] == "too_many_roles")
        );
        // A role given up is broken: the next failure there elects someone else.
        let b = apply(&store, &key(23), &fail("b"));
        assert_eq!(b.before.status, Status::Broken);
        assert!(matches!(b.outcome, Outcome::Elected { replaced: None }));
        // Another agent's roles are its own.
        assert!(
            store
                .read_base("repo")
                .keys
                .iter()
                .any(|k| k.is_fixer("b", k.generation))
        );
    }

    /// One lease per agent: one renewal renews every role it holds, and leases/ holds one file.
    #[test]
    fn one_sign_of_life_renews_every_role_of_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let roles: Vec<(String, u64)> = (0..5)
            .map(|i| {
                let key = format!("repo#{i:016x}");
                let generation = apply(&store, &key, &fail("a")).after.generation;
                (key, generation)
            })
            .collect();
        apply(&store, "repo#00000000000000ff", &fail("b"));
        let later = time::now() + 60_000;
        store.renew_roles("a", &roles, later).unwrap();
        let view = store.read_base("repo");
        for k in &view.keys {
            let f = k.fixer.as_ref().unwrap();
            assert_eq!(f.heartbeat == later, f.agent == "a", "{}", k.key);
        }
        let leases = fs::read_dir(dir.path().join("leases")).unwrap().count();
        assert_eq!(leases, 1);
    }

    /// Keys whose fixer went silent go from a base file past KEEP_OPEN; a live fixer's key, one
    /// with a live waiter and the key being written stay.
    #[test]
    fn abandoned_keys_leave_the_base_file_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let silent = silent_after(50);
        let key = |i: usize| format!("repo#{i:016x}");
        // A live fixer (its lease renewed below) and a key a live waiter (this process) waits on.
        apply(&store, &key(0), &fail("live"));
        apply(&store, &key(1), &fail("gone"));
        let mut me = agent("waiter");
        me.pid = std::process::id();
        me.start = crate::os::process::start_time(me.pid);
        let waits = Event::Failed {
            agent: me,
            signature: "s".into(),
            log: "/l".into(),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        };
        assert!(matches!(
            apply(&store, &key(1), &waits).outcome,
            Outcome::Wait { .. }
        ));
        // The live fixer renews its lease.
        let renew = || {
            let live = store.read(&key(0)).state(&key(0));
            let lease = Lease {
                agent: "live".into(),
                generation: live.generation,
                heartbeat: time::now() + 60_000,
            };
            store.write_lease(&key(0), &lease).unwrap();
        };
        for i in 2..KEEP_OPEN + 40 {
            apply_with(&store, &key(i), &fail(&format!("a{i}")), silent);
            renew();
            std::thread::sleep(Duration::from_millis(2));
        }
        // Every fixer of the loop is silent now, however fast the loop ran (on a quick machine
        // the keys of the last 50 ms were still live at the loop's last look); the next step
        // looks again, stale_after after the last look.
        std::thread::sleep(Duration::from_millis(150));
        renew();
        apply_with(&store, &key(KEEP_OPEN + 40), &fail("last"), silent);
        let view = store.read_base("repo");
        let open = view
            .keys
            .iter()
            .filter(|k| k.status == Status::Fixing)
            .count();
        assert!(open <= KEEP_OPEN + 1, "{open}");
        let has = |k: &str| view.keys.iter().any(|s| s.key == k);
        assert!(has(&key(0)), "a live fixer's key stays");
        assert!(has(&key(1)), "a key with a live waiter stays");
        assert!(has(&key(KEEP_OPEN + 40)), "the key just written stays");
        // An evicted key elects anew, and the generation still grows.
        let high = store.totals().unwrap().generation;
        let again = apply(&store, &key(3), &fail("c"));
        assert!(matches!(again.outcome, Outcome::Elected { .. }));
        assert!(again.after.generation > high);
    }

    /// `scope = "commit"`: every HEAD is a base file. Files whose fixers went silent or gave
    /// the role up go, so state/ stays within KEEP_BASES, and one whose fixer lives stays.
    #[test]
    fn abandoned_base_files_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        let silent = silent_after(50);
        let live = format!("{:040x}", 7);
        apply(&store, &live, &fail("live"));
        for i in 100..100 + 3 * KEEP_BASES {
            // Renewed just before each step, which sweeps leases older than 2 × 50 ms: renewed
            // after it (and a pause), a loaded machine let it lapse and the base went.
            store
                .write_lease(
                    &live,
                    &Lease {
                        agent: "live".into(),
                        generation: 1,
                        heartbeat: time::now() + 60_000,
                    },
                )
                .unwrap();
            let base = format!("{i:040x}");
            apply_with(&store, &base, &fail(&format!("a{i}")), silent);
            if i % 3 == 0 {
                apply_with(
                    &store,
                    &base,
                    &Event::Release {
                        agent: format!("a{i}"),
                    },
                    silent,
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let count = fs::read_dir(dir.path().join("state")).unwrap().count();
        assert!(count <= KEEP_BASES + PRUNE_SLACK + 2, "{count}");
        assert!(store.base_path(&live).exists(), "a live fixer's base stays");
        let locks = fs::read_dir(dir.path().join("locks")).unwrap().count();
        assert!(locks <= 2, "{locks}");
    }

    #[test]
    fn base_files_locks_and_leases_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        for i in 0..150u32 {
            let base = format!("{i:040x}");
            apply(&store, &base, &fail("a"));
            let generation = store.read_base(&base).keys[0].generation;
            let hold = store
                .hold_fixer(&base, generation, Duration::from_secs(1))
                .unwrap()
                .unwrap();
            store
                .write_lease(
                    &base,
                    &Lease {
                        agent: "a".into(),
                        generation,
                        heartbeat: time::now(),
                    },
                )
                .unwrap();
            drop(hold);
            apply(&store, &base, &pass("a"));
        }
        let count = |d: &str| fs::read_dir(dir.path().join(d)).map_or(0, |e| e.count());
        assert!(
            count("state") <= KEEP_BASES + PRUNE_SLACK,
            "{}",
            count("state")
        );
        assert!(count("locks") <= 4, "{}", count("locks"));
        assert!(count("leases") <= 2, "{}", count("leases"));
        assert_eq!(store.totals().unwrap().fixes, 150);
    }
}
