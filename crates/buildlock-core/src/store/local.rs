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
//! leases/<key>-g<N>.json       the lease renewals of generation N's fixer, written by it alone
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
//! Sizes stay bounded: a base file keeps its open keys and its last [`KEEP_PASSING`] passing
//! keys; at most [`KEEP_BASES`] base files are kept (the oldest all-passing ones go first, only
//! when a new one is created); a fixer lock or lease file goes with its generation, or, if its
//! fixer still held it then, at the next new generation of any key: `locks/` holds the fixer
//! locks of the generations being fixed, and those still held by a live (or stopped) process.
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
use crate::protocol::state::{Event, KeyState, Lease, Observed, Status, transition};

/// The state file schema. A file with another version reads as damaged.
pub const SCHEMA: u32 = 2;
/// Passing keys kept per base file (the newest), for stale failures and the last fix commit.
pub const KEEP_PASSING: usize = 16;
/// Base files kept in `state/`.
pub const KEEP_BASES: usize = 64;
/// A guard against an absurd file, not a limit on keys: a base file with thousands of open keys
/// is read whole (its growth is bounded by `put`, not by refusing to read it).
const MAX_STATE_BYTES: u64 = 64 << 20;
/// Broken keys (nobody fixing) kept per base file, the newest.
pub const KEEP_BROKEN: usize = 64;
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
}

impl BaseFile {
    fn new(base: &str) -> BaseFile {
        BaseFile {
            schema: SCHEMA,
            base: base.to_owned(),
            passes: 0,
            keys: Vec::new(),
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
            BaseRead::Found(file) => BaseView {
                passes: file.passes,
                keys: file.keys.into_iter().map(|k| self.with_lease(k)).collect(),
                damaged: None,
            },
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

        if after != before || damaged.is_some() {
            // Durable when it changes who fixes what; a waiter joining or leaving need not
            // cost a disk flush (it is rewritten by the next step anyway).
            let durability = if decisive(&before, &after) || damaged.is_some() {
                Durability::Synced
            } else {
                Durability::Atomic
            };
            file.put(after.clone());
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
        if let Err(e) = self.append_history(&entries, next_totals) {
            crate::os::say::warn(format!("could not write the history: {e:#}"));
        }
        if before.generation != after.generation
            || (before.status == Status::Fixing && after.status != Status::Fixing)
        {
            self.forget_generation(key, before.generation);
        }
        if after.generation > before.generation {
            // A new generation (an election, a takeover, a reset): the fixer locks that could not
            // go when their generation ended (their fixer still held them, as it does while it
            // commits its fix) go now, whatever their key, if free.
            self.sweep_locks();
        }
        if !existed {
            self.prune_bases(base);
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
            .map(|(b, k)| (b, self.with_lease(k)))
            .collect();
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

    fn write_lease(&self, key: &str, lease: &Lease) -> Result<(), StoreError> {
        Ok(write_atomic(
            &self.lease_path(key, lease.generation),
            &serde_json::to_vec(lease)?,
            Durability::Atomic,
        )?)
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

    fn lease_path(&self, key: &str, generation: u64) -> PathBuf {
        self.dir
            .join("leases")
            .join(format!("{}-g{generation}.json", key::file_stem(key)))
    }

    /// The state with its fixer's latest lease renewal folded in.
    fn with_lease(&self, mut state: KeyState) -> KeyState {
        if state.status == Status::Fixing {
            let lease = osfs::read_bounded(&self.lease_path(&state.key, state.generation), 4096)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Lease>(&b).ok());
            if let Some(lease) = lease {
                state.renew(&lease);
            }
        }
        state
    }

    /// A generation of `key` is over: its lease and (if free) its fixer lock go.
    fn forget_generation(&self, key: &str, generation: u64) {
        let _ = fs::remove_file(self.lease_path(key, generation));
        lock::remove_if_free(&self.fixer_lock_path(key, generation));
    }

    /// Keeps `state/` within [`KEEP_BASES`] files: the oldest base files whose keys all pass go,
    /// with their keys' lock files. Runs only when a base file was created, and parses only the
    /// candidates, never every file. Also sweeps stray temp files and fixer locks of generations
    /// that are over (a stopped fixer may have held one when its generation ended).
    fn prune_bases(&self, keep: &str) {
        let state_dir = self.dir.join("state");
        let Ok(entries) = fs::read_dir(&state_dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && !n.starts_with('.')
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        osfs::remove_strays(&state_dir);
        if files.len() <= KEEP_BASES {
            return;
        }
        files.sort();
        let mut excess = files.len() - KEEP_BASES;
        let keep_path = self.base_path(keep);
        for (_, path) in files {
            if excess == 0 {
                break;
            }
            if path == keep_path {
                continue;
            }
            let BaseRead::Found(file) = read_base_file(&path, "") else {
                continue;
            };
            if file.keys.iter().any(|k| k.status != Status::Passing) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                excess -= 1;
            }
        }
        self.sweep_locks();
    }

    /// Fixer locks and leases whose generation is no longer any key's current one.
    fn sweep_locks(&self) {
        let open: Vec<String> = self
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, s)| s.status == Status::Fixing)
            .map(|(_, s)| format!("{}-g{}", key::file_stem(&s.key), s.generation))
            .collect();
        for (dir, suffix) in [("locks", ".fixer"), ("leases", ".json")] {
            let dir = self.dir.join(dir);
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(suffix) else {
                    continue;
                };
                if open.iter().any(|o| o == stem) {
                    continue;
                }
                if suffix == ".fixer" {
                    lock::remove_if_free(&e.path());
                } else {
                    let _ = fs::remove_file(e.path());
                }
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
        let mut tail = Vec::new();
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
        assert!(count("state") <= KEEP_BASES + 1, "{}", count("state"));
        assert!(count("locks") <= 4, "{}", count("locks"));
        assert!(count("leases") <= 2, "{}", count("leases"));
        assert_eq!(store.totals().unwrap().fixes, 150);
    }
}
