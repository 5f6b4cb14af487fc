//! The coordination directory, `<git common dir>/buildlock/`, shared by every worktree:
//!
//! ```text
//! locks/election.lock     held for one read-decide-write step (empty, never removed)
//! locks/<key>.fixer       held by a registered fixer for its whole fix (empty, never removed)
//! state/<key>.json        one state file per key, with a schema version, written atomically
//! leases/<key>-g<N>.json  the lease renewals of generation N's fixer, written by it alone
//! totals.json             counters for `buildlock status` and the generation high-water mark
//! history.jsonl           one JSON object per event, capped in size
//! logs/                   failure logs
//! ```
//!
//! Every write happens under the election lock, so a temp file found there by a writer is a
//! stray of a killed writer and is removed. Reading state never fails: an empty, truncated, huge,
//! garbage, wrong-schema file or a directory in its place reads as damaged, which the state machine
//! handles as "broken with nobody fixing"; the damage is warned about, logged, and the file
//! rewritten.

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Applied, FixerHold, Policy, Read, Store, Totals};
use crate::os::fs::write_atomic;
use crate::os::lock::{self, Lock};
use crate::os::time::{self, Millis};
use crate::protocol::ledger::history_entries;
use crate::protocol::state::{Event, KeyState, Lease, Observed, Outcome, Status, transition};

/// The state file schema. A file with another version reads as damaged.
pub const SCHEMA: u32 = 1;
const MAX_STATE_BYTES: u64 = 1 << 20;
const HISTORY_CAP: u64 = 1 << 20;
const KEEP_LOGS: usize = 200;
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The local backend: state files under a flock in `<git common dir>/buildlock/`.
pub struct LocalStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    schema: u32,
    /// The base key (scope) this key belongs to.
    base: String,
    #[serde(flatten)]
    state: KeyState,
}

impl Store for LocalStore {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn read(&self, key: &str) -> Read {
        LocalStore::read(self, key)
    }

    fn apply(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        seen_silent: Option<(u64, Millis)>,
    ) -> Result<Applied> {
        LocalStore::apply(self, key, base, event, policy, seen_silent)
    }

    fn all(&self) -> Vec<(String, KeyState)> {
        LocalStore::all(self)
    }

    fn totals(&self) -> Totals {
        LocalStore::totals(self)
    }

    fn history(&self) -> Vec<serde_json::Value> {
        LocalStore::history(self)
    }

    fn record(&self, entry: serde_json::Value) -> Result<()> {
        LocalStore::record(self, entry)
    }

    fn write_lease(&self, key: &str, lease: &Lease) -> Result<()> {
        LocalStore::write_lease(self, key, lease)
    }

    fn hold_fixer(&self, key: &str, timeout: Duration) -> Result<Option<FixerHold>> {
        let path = self.fixer_lock_path(key);
        Ok(Lock::acquire(&path, timeout, || {})?.map(FixerHold::new))
    }

    fn fixer_gone(&self, key: &str) -> bool {
        lock::is_free(&self.fixer_lock_path(key)).unwrap_or(false)
    }

    fn wait_change(&self, _key: &str, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}

impl LocalStore {
    pub fn new(dir: PathBuf) -> LocalStore {
        LocalStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("state")
            .join(format!("{}.json", crate::protocol::key::file_stem(key)))
    }

    pub fn fixer_lock_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("locks")
            .join(format!("{}.fixer", crate::protocol::key::file_stem(key)))
    }

    fn election_lock_path(&self) -> PathBuf {
        self.dir.join("locks").join("election.lock")
    }

    pub fn history_path(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }

    fn lease_path(&self, key: &str, generation: u64) -> PathBuf {
        self.dir.join("leases").join(format!(
            "{}-g{generation}.json",
            crate::protocol::key::file_stem(key)
        ))
    }

    /// Reads a key's state without any lock: one small file read (the hook's hot path), and the
    /// fixer's lease when someone is fixing.
    pub fn read(&self, key: &str) -> Read {
        self.with_lease(read_state(&self.state_path(key), key))
    }

    fn with_lease(&self, read: Read) -> Read {
        match read {
            Read::Found { base, mut state } if state.status == Status::Fixing => {
                let lease = fs::read(self.lease_path(&state.key, state.generation))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Lease>(&b).ok());
                if let Some(lease) = lease {
                    state.renew(&lease);
                }
                Read::Found { base, state }
            }
            other => other,
        }
    }

    /// Renews the fixer's lease. Takes no lock: only generation `lease.generation`'s fixer writes
    /// this file, and readers ignore a lease that is not the current fixer's.
    pub fn write_lease(&self, key: &str, lease: &Lease) -> Result<()> {
        write_atomic(
            &self.lease_path(key, lease.generation),
            &serde_json::to_vec(lease)?,
        )
    }

    /// Lease files of `key` other than generation `keep`'s (under the election lock).
    fn remove_old_leases(&self, key: &str, keep: u64) {
        let prefix = format!("{}-g", crate::protocol::key::file_stem(key));
        let keep = format!("{prefix}{keep}.json");
        if let Ok(entries) = fs::read_dir(self.dir.join("leases")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name != keep && !name.starts_with('.') {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every key on record, with its base.
    pub fn all(&self) -> Vec<(String, KeyState)> {
        let Ok(entries) = fs::read_dir(self.dir.join("state")) else {
            return Vec::new();
        };
        let mut keys: Vec<(String, KeyState)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| match self.with_lease(read_state(&e.path(), "")) {
                Read::Found { base, state } => Some((base, state)),
                _ => None,
            })
            .collect();
        keys.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        keys
    }

    pub fn totals(&self) -> Totals {
        fs::read(self.dir.join("totals.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// One read-decide-write step for `key` under the election lock.
    ///
    /// `seen_silent` is the caller's monotonic observation that the fixer's lease did not move
    /// for a whole `stale_after` (see [`Observed::seen_silent`]).
    pub fn apply(
        &self,
        key: &str,
        base: &str,
        event: &Event,
        policy: Policy,
        seen_silent: Option<(u64, Millis)>,
    ) -> Result<Applied> {
        let _lock = self.election_lock()?;
        crate::os::fault::point("election");

        let path = self.state_path(key);
        let read = self.with_lease(read_state(&path, key));
        let damaged = match &read {
            Read::Damaged(why) => Some(why.clone()),
            _ => None,
        };
        let before = read.state(key);
        let mut totals = self.totals();
        let fixer_lock_free = match &before.fixer {
            Some(f) if f.registered => lock::is_free(&self.fixer_lock_path(key))?,
            _ => true,
        };
        let seen = Observed {
            now: time::now(),
            stale_after: policy.stale_after.as_millis() as Millis,
            max_fix_attempts: policy.max_fix_attempts,
            generation_floor: totals.generation,
            fixer_lock_free,
            seen_silent,
        };
        let (after, outcome) = transition(&before, event, &seen);

        if let Some(why) = &damaged {
            crate::os::say::warn(format!(
                "the state file {} was unreadable ({why}); treating key `{key}` as broken with nobody \
                 fixing, and rewriting it",
                path.display()
            ));
            self.append_history(
                &serde_json::json!({"event": "damaged", "key": key, "reason": why}),
            )?;
        }
        if after != before || damaged.is_some() {
            let file = StateFile {
                schema: SCHEMA,
                base: base.to_owned(),
                state: after.clone(),
            };
            write_atomic(&path, &serde_json::to_vec_pretty(&file)?)?;
        }
        let old_totals = totals;
        totals.count(event, &outcome, &after);
        if totals != old_totals {
            write_atomic(
                &self.dir.join("totals.json"),
                &serde_json::to_vec_pretty(&totals)?,
            )?;
        }
        for entry in history_entries(key, event, &outcome, &before, &after) {
            self.append_history(&entry)?;
        }
        if after.generation != before.generation || after.status != Status::Fixing {
            let keep = if after.status == Status::Fixing {
                after.generation
            } else {
                u64::MAX
            };
            self.remove_old_leases(key, keep);
        }
        if matches!(
            outcome,
            Outcome::Fixed | Outcome::Recovered | Outcome::Reset
        ) {
            self.prune_states();
        }
        Ok(Applied {
            before,
            after,
            outcome,
            damaged,
        })
    }

    /// Appends one event to the history without the election lock (one `O_APPEND` write of one
    /// line, so lines never interleave); the size cap is applied by the next locked step.
    pub fn record(&self, entry: serde_json::Value) -> Result<()> {
        self.append_line(&entry).map(|_| ())
    }

    fn election_lock(&self) -> Result<Lock> {
        let path = self.election_lock_path();
        let lock = Lock::acquire(&path, ELECTION_TIMEOUT, || {
            crate::os::say::say(format!("waiting for the election lock {} (another buildlock is deciding)", path.display()))
        })
        .with_context(|| format!("cannot take the election lock in {}", self.dir.display()))?
        .ok_or_else(|| {
            let who = match lock::holder(&path) {
                Some((pid, true)) => format!(
                    "by pid {pid}, which is STOPPED (SIGSTOP or a debugger): resume it with `kill -CONT {pid}` \
                     or end it"
                ),
                Some((pid, false)) => format!("by pid {pid}"),
                None => format!("by another process (find it with `fuser {}`)", path.display()),
            };
            anyhow!(
                "the election lock {} has been held for {} {who}; meanwhile commit with BUILDLOCK=0 \
                 (no coordination) or --no-verify",
                path.display(),
                time::human(ELECTION_TIMEOUT),
            )
        })?;
        // A second handle must be refused while we hold the lock, or locking is not real here.
        if Lock::try_acquire(&path)?.is_some() {
            return Err(anyhow!(
                "file locking does not work in {} (a network or virtual file system?): buildlock cannot \
                 coordinate here and refuses to pretend; keep the repository on a local disk or set BUILDLOCK=0",
                self.dir.display()
            ));
        }
        Ok(lock)
    }

    /// Appends under the election lock, and keeps the history within its cap.
    fn append_history(&self, entry: &serde_json::Value) -> Result<()> {
        let path = self.history_path();
        if self.append_line(entry)? > HISTORY_CAP {
            // Keep the newest half, cut at a line boundary.
            let text = fs::read(&path)?;
            let cut = text.len() - (HISTORY_CAP as usize / 2);
            let start = text[cut..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |i| cut + i + 1);
            write_atomic(&path, &text[start..])?;
        }
        Ok(())
    }

    /// Appends one line to the history and returns the file's new size.
    fn append_line(&self, entry: &serde_json::Value) -> Result<u64> {
        let path = self.history_path();
        let mut entry = entry.clone();
        let now = time::now();
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("time".into(), time::rfc3339(now).into());
            obj.insert("ms".into(), now.into());
        }
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.write_all(&line)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    }

    /// The history, oldest first; unreadable lines are skipped.
    pub fn history(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.history_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Drops passing keys untouched for a day once there are many (scope = "commit" makes one
    /// key per commit).
    fn prune_states(&self) {
        let all = self.all();
        if all.len() <= 64 {
            return;
        }
        let day_ago = time::now().saturating_sub(24 * 3600 * 1000);
        for (_, s) in all {
            if s.status == Status::Passing && s.changed < day_ago {
                let _ = fs::remove_file(self.state_path(&s.key));
            }
        }
    }
}

/// Saves a failure's output and returns its path.
pub fn write_log(home: &Path, agent: &str, output: &[u8]) -> Result<PathBuf> {
    let dir = home.join("logs");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!(
        "{}-{}-{}.log",
        time::now(),
        crate::protocol::key::file_stem(agent),
        std::process::id()
    );
    let path = dir.join(name);
    fs::write(&path, output)
        .with_context(|| format!("cannot write the failure log {}", path.display()))?;
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        if logs.len() > KEEP_LOGS {
            logs.sort();
            for old in &logs[..logs.len() - KEEP_LOGS] {
                let _ = fs::remove_file(old);
            }
        }
    }
    Ok(path)
}

fn read_state(path: &Path, key: &str) -> Read {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => return Read::Damaged(format!("cannot read it: {e}")),
    };
    if meta.is_dir() {
        return Read::Damaged("a directory is in its place".into());
    }
    if meta.len() > MAX_STATE_BYTES {
        return Read::Damaged(format!("{} bytes is far too large", meta.len()));
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => return Read::Damaged(format!("cannot read it: {e}")),
    };
    if bytes.is_empty() {
        return Read::Damaged("it is empty".into());
    }
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    match serde_json::from_slice::<Version>(&bytes) {
        Ok(v) if v.schema != SCHEMA => {
            return Read::Damaged(format!("schema {} is not {SCHEMA}", v.schema));
        }
        Ok(_) => {}
        Err(e) => return Read::Damaged(format!("not valid state: {e}")),
    }
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(f) if key.is_empty() || f.state.key == key => Read::Found {
            base: f.base,
            state: f.state,
        },
        Ok(f) => Read::Damaged(format!("it holds key `{}`", f.state.key)),
        Err(e) => Read::Damaged(format!("not valid state: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state::Agent;

    fn policy() -> Policy {
        Policy {
            stale_after: Duration::from_secs(60),
            max_fix_attempts: 3,
        }
    }

    fn fail(id: &str) -> Event {
        Event::Failed {
            agent: Agent {
                id: id.into(),
                pid: 1,
                host: "h".into(),
            },
            signature: "s".into(),
            log: "/l".into(),
            check_started: 0,
        }
    }

    #[test]
    fn elects_then_waits_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("buildlock"));
        assert_eq!(store.read("repo"), Read::Missing);
        let a = store
            .apply("repo", "repo", &fail("a"), policy(), None)
            .unwrap();
        assert_eq!(a.outcome, Outcome::Elected { replaced: None });
        let b = store
            .apply("repo", "repo", &fail("b"), policy(), None)
            .unwrap();
        assert!(matches!(b.outcome, Outcome::Wait { first: true, .. }));
        let t = store.totals();
        assert_eq!(
            (
                t.failures,
                t.elections,
                t.waits,
                t.fix_runs,
                t.fix_runs_avoided
            ),
            (2, 1, 1, 1, 1)
        );
        let events: Vec<String> = store
            .history()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(events, ["failed", "elected", "failed", "waiting"]);
    }

    #[test]
    fn damaged_state_reads_as_unknown_and_is_rewritten() {
        let huge = vec![b'x'; 2 << 20];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            (
                "truncated",
                br#"{"schema": 1, "base": "repo", "key": "re"#.to_vec(),
            ),
            ("garbage", vec![0xff, 0x00, 0x13, 0x37]),
            ("other schema", br#"{"schema": 99}"#.to_vec()),
            ("huge", huge),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::new(dir.path().to_owned());
            let path = store.state_path("repo");
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
            assert!(matches!(store.read("repo"), Read::Damaged(_)), "{what}");
            let applied = store
                .apply("repo", "repo", &fail("a"), policy(), None)
                .unwrap();
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
    fn a_directory_in_place_of_the_state_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        fs::create_dir_all(store.state_path("repo").join("inner")).unwrap();
        assert!(matches!(store.read("repo"), Read::Damaged(_)));
        store
            .apply("repo", "repo", &fail("a"), policy(), None)
            .unwrap();
        assert!(matches!(store.read("repo"), Read::Found { .. }));
    }

    #[test]
    fn generation_survives_a_lost_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        store
            .apply("repo", "repo", &fail("a"), policy(), None)
            .unwrap();
        store
            .apply("repo", "repo", &Event::Reset, policy(), None)
            .unwrap();
        fs::write(store.state_path("repo"), b"").unwrap();
        let a = store
            .apply("repo", "repo", &fail("b"), policy(), None)
            .unwrap();
        assert_eq!(a.after.generation, 3);
    }

    #[test]
    fn atomic_write_cleans_strays_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        fs::write(dir.path().join(".x.json.tmp-12345"), b"half").unwrap();
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["x.json"]);
    }

    #[test]
    fn history_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned());
        fs::create_dir_all(dir.path()).unwrap();
        let pad = "p".repeat(1000);
        for i in 0..1500 {
            store
                .append_history(&serde_json::json!({"event": "x", "i": i, "pad": pad}))
                .unwrap();
        }
        let len = fs::metadata(store.history_path()).unwrap().len();
        assert!(len <= HISTORY_CAP, "{len}");
        let h = store.history();
        assert_eq!(h.last().unwrap()["i"], 1499);
        assert!(
            h.iter().all(|e| e["event"] == "x"),
            "cut at a line boundary"
        );
    }
}
