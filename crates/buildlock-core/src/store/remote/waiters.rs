//! Waiters on the remote: each waiting agent's own ref, so that joining the waiters never moves
//! the key's state ref, and never makes a fixer's push lose a race.
//!
//! ```text
//! refs/buildlock/wait/<base>/<sub>/<generation>/<agent stem>   one waiter of that generation
//! ```
//!
//! The ref points to a small commit (no parent) holding `waiter.json`: the agent, its process,
//! the generation it waits for, and its failure's signature and log. A waiter creates it once
//! per wait (leased on what it read of its own ref) and deletes it when it leaves; nobody else
//! writes it. Every reader folds the records of the current generation into the key's state as
//! if each waiter's failure had been a transition of the state machine (`Event::Failed` against
//! the live fixer: `Outcome::Wait`), so `status` lists them and a fixer's fix credits them; the
//! next state commit (the fixer's heartbeat, its fix) records them for good, with their history
//! entries and counts, and once it has landed deletes the refs of every other generation (in a
//! push of their own: see `transaction`'s `clean_up`).
//!
//! Guarantees:
//! - joining costs one push to a ref no other agent writes: of 32 jobs failing at once, the
//!   fixer's pushes (register, fix started, heartbeat, fixed) never lose a race to a waiter;
//! - a record is data: one that cannot be decoded, or of another key or generation, is ignored
//!   (and deleted with the next state commit), never an error;
//! - a record folded twice changes nothing (`Outcome::Wait` of a listed waiter is no change),
//!   so a record is counted once, when the state commit that lists it first lands;
//! - a waiter's history entry after the fix (it was told to take the fix commit) goes to a ref of
//!   its own too, a *note* (`refs/buildlock/note/<base>/<sub>/<generation>/<agent>`), not to the
//!   state: after a fix, 31 jobs would otherwise queue one by one on the state ref. `buildlock
//!   log` reads the notes from their refs, and the next election of any key moves every note
//!   into its state commit's history and then deletes their refs (so notes are bounded by the
//!   breakages between two elections; a note whose deletion lost to another election's can be
//!   read into two histories);
//! - bounded without an election too: the pruner (see `prune`) deletes the waiters' and notes'
//!   refs of a key it prunes, of a key whose state ref is gone, of a generation older than the
//!   key's current one, and a waiter's ref of a key nobody fixes ([`names_its_record`] says
//!   which refs are ours); never a waiter's ref of the breakage being fixed (its record outlives
//!   the fix it waits for) nor a note of the key's current generation.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use std::time::{Duration, Instant};

use super::RemoteStore;
use super::chain;
use super::refs::{
    NOTE_PREFIX, SideRef, agent_stem, key_path, key_waits, note_ref, wait_ref, waits_of,
};
use crate::os::remote_git::{Pushed, Update};
use crate::os::time::{self, Millis};
use crate::protocol::ledger::history_entries;
use crate::protocol::state::{
    Agent, Event, KeyState, Observed, Outcome, Status, Waiter, transition,
};

/// The schema of `waiter.json`.
const SCHEMA: u32 = 1;
const FILE: &str = "waiter.json";
const MAX_BYTES: usize = 64 << 10;

/// One waiter's record, as its ref's commit holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    pub schema: u32,
    pub key: String,
    /// The generation whose fixer it waits for.
    pub generation: u64,
    pub waiter: Waiter,
    pub signature: String,
    pub log: PathBuf,
    /// A history entry of this agent about the key (no wait): see the module's doc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<serde_json::Value>,
}

impl Record {
    /// The record of `event` (a failure) waiting for `key`'s `generation`; `None` for any other
    /// event.
    pub fn of(key: &str, generation: u64, event: &Event) -> Option<Record> {
        let Event::Failed {
            agent,
            signature,
            log,
            ..
        } = event
        else {
            return None;
        };
        Some(Record {
            schema: SCHEMA,
            key: key.to_owned(),
            generation,
            waiter: Waiter {
                agent: agent.id.clone(),
                pid: agent.pid,
                host: agent.host.clone(),
                start: agent.start,
                pid_space: agent.pid_space.clone(),
            },
            signature: signature.clone(),
            log: log.clone(),
            note: None,
        })
    }

    /// A note: the history entry `entry` of `agent` (this process) about `key`'s `generation`.
    pub fn note(key: &str, generation: u64, agent: &str, entry: serde_json::Value) -> Record {
        Record {
            schema: SCHEMA,
            key: key.to_owned(),
            generation,
            waiter: Waiter {
                agent: agent.to_owned(),
                pid: std::process::id(),
                host: crate::os::process::hostname(),
                start: None,
                pid_space: None,
            },
            signature: String::new(),
            log: PathBuf::new(),
            note: Some(entry),
        }
    }

    /// The failure this record stands for, to replay through the state machine.
    fn event(&self) -> Event {
        Event::Failed {
            agent: Agent {
                id: self.waiter.agent.clone(),
                pid: self.waiter.pid,
                host: self.waiter.host.clone(),
                start: self.waiter.start,
                pid_space: self.waiter.pid_space.clone(),
            },
            signature: self.signature.clone(),
            log: self.log.clone(),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        }
    }
}

/// Writes `record` as a commit into the local object store (no ref moves) and returns its id.
pub(super) fn write(repo: &git2::Repository, record: &Record, now: Millis) -> Result<String> {
    let json = serde_json::to_vec_pretty(record)?;
    let blob = repo.blob(&json).context("cannot write a waiter record")?;
    let mut tree = repo.treebuilder(None)?;
    tree.insert(FILE, blob, 0o100644)?;
    let tree = repo.find_tree(tree.write()?)?;
    let when = git2::Time::new((now / 1000) as i64, 0);
    let sig = git2::Signature::new(chain::NAME, chain::EMAIL, &when)?;
    let message = format!(
        "buildlock {}: {} {} (generation {})\n\nBuildlock-Nonce: {}\n",
        record.key,
        if record.note.is_some() {
            "note by"
        } else {
            "waiting"
        },
        record.waiter.agent,
        record.generation,
        chain::nonce(now)
    );
    let id = repo
        .commit(None, &sig, &sig, &message, &tree, &[])
        .context("cannot write a waiter record")?;
    Ok(id.to_string())
}

/// The record at `oid` in the local object store: `None` when it is not there or is not a
/// waiter record of this schema.
pub(super) fn decode(repo: &git2::Repository, oid: &str) -> Option<Record> {
    let oid = git2::Oid::from_str(oid).ok()?;
    let commit = repo.find_commit(oid).ok()?;
    let entry = commit.tree().ok()?.get_name(FILE)?.to_object(repo).ok()?;
    let blob = entry.as_blob()?;
    if blob.size() > MAX_BYTES {
        return None;
    }
    serde_json::from_slice::<Record>(blob.content())
        .ok()
        .filter(|r| r.schema == SCHEMA)
}

/// Whether the ref `side` holds what its name says: a record (in the local object store) of its
/// key, generation and agent, a note under a note's name and a wait under a waiter's. What the
/// pruner may delete; anything else under those prefixes is not ours to judge.
pub(super) fn names_its_record(repo: &git2::Repository, side: &SideRef) -> bool {
    decode(repo, &side.oid).is_some_and(|r| {
        key_path(&r.key) == side.path
            && r.generation == side.generation
            && agent_stem(&r.waiter.agent) == side.agent
            && r.note.is_some() == side.note
    })
}

impl RemoteStore {
    /// Publishes `record` under its agent's own ref for its key and generation (replacing what
    /// that ref held), tried until `coordination.wait` (at most 10 s) passes.
    pub(super) fn put_own(&self, record: &Record) -> Result<()> {
        let path = key_path(&record.key);
        let (name, pattern) = if record.note.is_some() {
            (
                note_ref(&path, record.generation, &record.waiter.agent),
                format!("{NOTE_PREFIX}{path}/*"),
            )
        } else {
            (
                wait_ref(&path, record.generation, &record.waiter.agent),
                key_waits(&path),
            )
        };
        let commit = write(&self.repo()?, record, time::now())?;
        let started = Instant::now();
        let deadline = started + self.wait.min(Duration::from_secs(10));
        // The ref is new most of the time (one per agent, key and generation): the first push
        // expects none, and what it holds is read only when that lease fails.
        let mut guess: Option<Option<String>> = Some(None);
        loop {
            let guessed = guess.is_some();
            let expect = match guess.take() {
                Some(expect) => expect,
                None => self
                    .git
                    .ls_remote(std::slice::from_ref(&pattern))
                    .map_err(|f| self.failed(f, started.elapsed()))?
                    .into_iter()
                    .find(|(_, n)| *n == name)
                    .map(|(o, _)| o),
            };
            let update = Update {
                name: name.clone(),
                new: Some(commit.clone()),
                expect,
            };
            match self.git.push(std::slice::from_ref(&update)) {
                Ok(Pushed::Landed) => return Ok(()),
                // It is there already: read it, and push again at once.
                Ok(Pushed::Stale) if guessed => {}
                // The fix's push deleted it meanwhile: read again.
                Ok(Pushed::Stale) if Instant::now() < deadline => {
                    std::thread::sleep(time::jitter(Duration::from_millis(200)));
                }
                Ok(Pushed::Stale) => anyhow::bail!(
                    "could not record on the remote `{}`: the ref {name} kept moving",
                    self.git.remote
                ),
                Err(f) => return Err(self.failed(f, started.elapsed())),
            }
        }
    }

    /// `agent` stops waiting on `key`: its own waiter refs are deleted (one `ls-remote`, and one
    /// push when it has any), leased on what was read; nobody else's. Tried until `stop` says so
    /// or `coordination.wait` (at most 10 s) passes.
    pub(super) fn leave_waiters(
        &self,
        key: &str,
        agent: &str,
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        let path = key_path(key);
        let stem = agent_stem(agent);
        let started = Instant::now();
        let deadline = started + self.wait.min(Duration::from_secs(10));
        loop {
            let refs = self
                .git
                .ls_remote(&[key_waits(&path)])
                .map_err(|f| self.failed(f, started.elapsed()))?;
            let mine: Vec<Update> = waits_of(&refs, &path)
                .into_iter()
                .filter(|w| w.agent == stem)
                .map(|w| Update {
                    name: w.name,
                    new: None,
                    expect: Some(w.oid),
                })
                .collect();
            if mine.is_empty() {
                return Ok(());
            }
            match self.git.push(&mine) {
                Ok(Pushed::Landed) => return Ok(()),
                // Another process of the same agent moved one of them: read again.
                Ok(Pushed::Stale) if !stop() && Instant::now() < deadline => {
                    std::thread::sleep(time::jitter(Duration::from_millis(200)));
                }
                Ok(Pushed::Stale) => anyhow::bail!(
                    "could not leave the waiters of key `{key}` on the remote `{}`: its waiter \
                     refs kept moving",
                    self.git.remote
                ),
                Err(f) => return Err(self.failed(f, started.elapsed())),
            }
        }
    }
}

/// What folding the waiters' records into a state did: each failure replayed (the event, its
/// outcome, and the state before and after it), for the history and the counts of the next
/// state commit.
pub(super) type Folded = Vec<(Event, Outcome, KeyState, KeyState)>;

/// `state` with the waiters of `records` that wait for its current fixer: each record of the
/// state's key and generation, while it is fixing, replayed as a failure against the live fixer.
/// A record whose replay is anything but a wait (its own agent is the fixer) is left out.
pub(super) fn fold(state: &KeyState, records: &[Record], seen: &Observed) -> (KeyState, Folded) {
    let mut now = state.clone();
    let mut folded = Vec::new();
    if now.status != Status::Fixing {
        return (now, folded);
    }
    for r in records {
        if r.key != state.key || r.generation != state.generation || r.note.is_some() {
            continue;
        }
        let event = r.event();
        let (after, outcome) = transition(&now, &event, seen);
        if !matches!(outcome, Outcome::Wait { .. }) {
            continue;
        }
        if after != now {
            folded.push((event, outcome, now.clone(), after.clone()));
            now = after;
        }
    }
    (now, folded)
}

impl RemoteStore {
    /// Every note on the remote (one `ls-remote`, one fetch of those not here): its entry and the
    /// update that deletes its ref, leased on what was read. For an election to take in.
    pub(super) fn sweep_notes(&self) -> Result<(Vec<serde_json::Value>, Vec<Update>)> {
        let listed = self
            .git
            .ls_remote(&[format!("{NOTE_PREFIX}*")])
            .map_err(|f| self.failed(f, Duration::ZERO))?;
        if listed.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let repo = self.repo()?;
        let missing: Vec<String> = listed
            .iter()
            .filter(|(oid, _)| !chain::has_object(&repo, oid))
            .map(|(oid, _)| oid.clone())
            .collect();
        self.git
            .fetch_objects(&missing)
            .map_err(|f| self.failed(f, Duration::ZERO))?;
        let entries = notes(&repo, listed.iter().map(|(oid, _)| oid.as_str()));
        let deletes = listed
            .into_iter()
            .map(|(oid, name)| Update {
                name,
                new: None,
                expect: Some(oid),
            })
            .collect();
        Ok((entries, deletes))
    }
}

/// The notes among the records at `oids` (those in the local object store).
pub(super) fn notes<'a>(
    repo: &git2::Repository,
    oids: impl Iterator<Item = &'a str>,
) -> Vec<serde_json::Value> {
    oids.filter_map(|oid| decode(repo, oid)?.note).collect()
}

/// The history entries of what [`fold`] replayed.
pub(super) fn history(key: &str, folded: &Folded) -> Vec<serde_json::Value> {
    folded
        .iter()
        .flat_map(|(e, o, b, a)| history_entries(key, e, o, b, a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state::Fixer;

    fn agent(id: &str) -> Agent {
        Agent {
            id: id.into(),
            pid: 7,
            host: "box".into(),
            start: Some(1),
            pid_space: None,
        }
    }

    fn failed(id: &str, signature: &str) -> Event {
        Event::Failed {
            agent: agent(id),
            signature: signature.into(),
            log: PathBuf::from("/tmp/log"),
            passes_seen: None,
            lacks_fix: None,
            holder: None,
            elector: None,
        }
    }

    fn seen() -> Observed {
        Observed {
            now: 1_000,
            stale_after: Millis::MAX,
            max_fix_attempts: 3,
            max_fix_time: Millis::MAX,
            generation_floor: 0,
            passes: 0,
            fixer_lock_free: false,
            fixer_running: false,
            seen_silent: None,
            elector_dead: false,
        }
    }

    /// `k` fixed by `y` in generation 4.
    fn fixing() -> KeyState {
        let mut s = KeyState::passing("k");
        s.status = Status::Fixing;
        s.generation = 4;
        s.fixer = Some(Fixer {
            agent: "y".into(),
            pid: None,
            host: "box".into(),
            start: None,
            since: 500,
            heartbeat: 500,
            attempts: 0,
            registered: false,
            fix_process: None,
            elector: None,
        });
        s
    }

    fn record(id: &str, generation: u64) -> Record {
        Record::of("k", generation, &failed(id, &format!("sig-{id}"))).unwrap()
    }

    #[test]
    fn a_note_on_a_ref_of_its_own_is_pushed_once_and_replaces_one_that_is_there() {
        let remote = super::super::testing::Remote::new();
        let c = remote.store("c");
        let note = |commit: &str| {
            Record::note(
                "k",
                1,
                "c",
                serde_json::json!({"event": "take_fix", "key": "k", "agent": "c",
                    "commit": commit}),
            )
        };
        let notes = || -> Vec<(String, String)> {
            remote
                .refs()
                .into_iter()
                .filter(|(n, _)| n.starts_with(NOTE_PREFIX))
                .collect()
        };
        c.put_own(&note("f00d")).unwrap();
        let first = notes();
        assert_eq!(first.len(), 1, "{first:?}");
        // The ref is there: the first push's lease (none) fails, and the next one replaces it.
        c.put_own(&note("beef")).unwrap();
        let second = notes();
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(second, first);
        let read = decode(&remote.repo(), &second[0].1).expect("a note");
        assert_eq!(read.note.unwrap()["commit"], "beef");
    }

    #[test]
    fn only_a_failure_makes_a_record() {
        assert!(Record::of("k", 1, &failed("a", "s")).is_some());
        let unwait = Event::Unwait {
            agent: "a".into(),
            pid: 1,
        };
        assert_eq!(Record::of("k", 1, &unwait), None);
    }

    #[test]
    fn folding_is_the_state_machine_on_each_waiters_failure() {
        let state = fixing();
        // The same failures as transitions of the state machine, one after the other.
        let mut direct = state.clone();
        for id in ["a", "b"] {
            direct = transition(&direct, &failed(id, &format!("sig-{id}")), &seen()).0;
        }
        let (folded, steps) = fold(&state, &[record("a", 4), record("b", 4)], &seen());
        assert_eq!(folded, direct);
        let names: Vec<&str> = folded.waiters.iter().map(|w| w.agent.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(steps.len(), 2);
        let events: Vec<(String, String)> = history("k", &steps)
            .iter()
            .filter(|e| e["event"] == "failed" || e["event"] == "waiting")
            .map(|e| (e["event"].to_string(), e["agent"].to_string()))
            .collect();
        assert!(
            events.contains(&("\"waiting\"".into(), "\"a\"".into()))
                && events.contains(&("\"waiting\"".into(), "\"b\"".into())),
            "{events:?}"
        );
        // Folding again what is already on record changes nothing, and counts nothing.
        let (again, steps) = fold(&folded, &[record("a", 4), record("b", 4)], &seen());
        assert_eq!(again, folded);
        assert!(steps.is_empty());
    }

    #[test]
    fn records_of_another_generation_or_key_or_of_the_fixer_are_left_out() {
        let state = fixing();
        let mut other_key = record("c", 4);
        other_key.key = "other".into();
        let (folded, steps) = fold(
            &state,
            &[record("a", 3), record("b", 5), other_key, record("y", 4)],
            &seen(),
        );
        assert!(steps.is_empty(), "{steps:?}");
        assert_eq!(folded, state);
        // Nobody fixing: no waiter at all.
        let passing = KeyState::passing("k");
        assert_eq!(fold(&passing, &[record("a", 0)], &seen()).0, passing);
    }

    #[test]
    fn a_note_is_no_waiter_and_reads_back_as_its_entry() {
        let state = fixing();
        let entry = serde_json::json!({"event": "take_fix", "agent": "a"});
        let note = Record::note("k", 4, "a", entry.clone());
        assert_eq!(fold(&state, std::slice::from_ref(&note), &seen()).0, state);
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let oid = write(&repo, &note, 1_000).unwrap();
        let plain = write(&repo, &record("b", 4), 1_000).unwrap();
        assert_eq!(
            notes(&repo, [oid.as_str(), plain.as_str()].into_iter()),
            [entry]
        );
    }

    #[test]
    fn a_record_reads_back_as_written_and_anything_else_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let r = record("a", 4);
        let oid = write(&repo, &r, 1_000).unwrap();
        assert_eq!(decode(&repo, &oid), Some(r.clone()));
        assert_ne!(
            write(&repo, &r, 1_000).unwrap(),
            oid,
            "every record is unique"
        );
        let blob = repo.blob(b"not a record").unwrap().to_string();
        assert_eq!(decode(&repo, &blob), None);
        assert_eq!(
            decode(&repo, "0123456789012345678901234567890123456789"),
            None
        );
        assert_eq!(decode(&repo, "garbage"), None);
    }
}
