//! A key's chain of state commits, in the local object store (git2, in process; no git
//! subprocess, no ref written).
//!
//! One state commit:
//!
//! ```text
//! tree      state.json             the key's state, the local backend's JSON plus `seq` and `totals`
//! parent    the previous state commit (none for a chain's root)
//! author    buildlock <buildlock@invalid>   (CI runners often have no identity configured)
//! message   buildlock <key>: <what happened>
//!
//!           {"event": "failed", …}          the history entries of this transition, one per line
//!
//!           Buildlock-Nonce: <host>/<pid>/<ms>/<random>   every commit is unique: a push of an
//!                                                         oid the ref already has changes nothing
//!           Buildlock-Previous: <oid>       a compacted chain's root: the tip it replaced
//! ```
//!
//! Decoding never fails: anything that is not a state commit of the expected key (a blob or a
//! tree in the ref's place, a missing or garbage `state.json`, another schema, another key)
//! reads as damaged, with the reason.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::os::time::Millis;
use crate::protocol::ledger::Totals;
use crate::protocol::state::KeyState;

/// The schema of `state.json` in a state commit. The key's state inside is the local backend's
/// `KeyState` JSON, field for field.
pub const SCHEMA: u32 = 1;
const STATE_FILE: &str = "state.json";
const MAX_STATE_BYTES: usize = 1 << 20;
pub const NAME: &str = "buildlock";
pub const EMAIL: &str = "buildlock@invalid";

/// What one state commit holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub schema: u32,
    /// The base key (scope) this key belongs to.
    pub base: String,
    /// Transitions of this key since it was created on the remote; a chain's root is named by
    /// the `seq` it starts at.
    pub seq: u64,
    /// This key's counters (the domain's totals are the sum over the keys on the remote).
    #[serde(default)]
    pub totals: Totals,
    /// The pass counter as this key saw its base's (see `Observed::passes`).
    #[serde(default)]
    pub passes: u64,
    #[serde(flatten)]
    pub state: KeyState,
}

/// A decoded commit: its doc (or why it is unusable) and its parent.
pub struct Decoded {
    pub doc: Result<Doc, String>,
    /// Whether the object is a commit (and so can be a parent).
    pub is_commit: bool,
}

pub fn open(git_dir: &std::path::Path) -> Result<git2::Repository> {
    git2::Repository::open(git_dir)
        .with_context(|| format!("cannot open the repository at {}", git_dir.display()))
}

pub fn has_object(repo: &git2::Repository, oid: &str) -> bool {
    git2::Oid::from_str(oid)
        .ok()
        .and_then(|o| repo.odb().ok().map(|db| db.exists(o)))
        .unwrap_or(false)
}

/// Reads the state commit `oid` for `key`.
pub fn decode(repo: &git2::Repository, oid: &str, key: &str) -> Decoded {
    let damaged = |why: String, is_commit| Decoded {
        doc: Err(why),
        is_commit,
    };
    let Ok(id) = git2::Oid::from_str(oid) else {
        return damaged(format!("`{oid}` is not an object id"), false);
    };
    let obj = match repo.find_object(id, None) {
        Ok(o) => o,
        Err(e) => return damaged(format!("object {oid} is missing: {}", e.message()), false),
    };
    let Ok(commit) = obj.peel_to_commit() else {
        return damaged(
            format!(
                "the ref holds a {} where a state commit belongs",
                obj.kind().map_or("object", |k| k.str())
            ),
            false,
        );
    };
    let blob = commit
        .tree()
        .ok()
        .and_then(|t| t.get_name(STATE_FILE).map(|e| e.id()))
        .and_then(|id| repo.find_blob(id).ok());
    let Some(blob) = blob else {
        return damaged(format!("commit {oid} has no {STATE_FILE}"), true);
    };
    let bytes = blob.content();
    if bytes.len() > MAX_STATE_BYTES {
        return damaged(format!("{} bytes is far too large", bytes.len()), true);
    }
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    match serde_json::from_slice::<Version>(bytes) {
        Ok(v) if v.schema != SCHEMA => {
            return damaged(format!("schema {} is not {SCHEMA}", v.schema), true);
        }
        Ok(_) => {}
        Err(e) => return damaged(format!("not valid state: {e}"), true),
    }
    match serde_json::from_slice::<Doc>(bytes) {
        Ok(doc) if key.is_empty() || doc.state.key == key => Decoded {
            doc: Ok(doc),
            is_commit: true,
        },
        Ok(doc) => damaged(format!("it holds key `{}`", doc.state.key), true),
        Err(e) => damaged(format!("not valid state: {e}"), true),
    }
}

/// The newest decodable doc at or below `oid` (first parents), for the generation floor and the
/// counters of a key whose tip is damaged. Looks at most `limit` commits back.
pub fn last_good(repo: &git2::Repository, oid: &str, key: &str, limit: usize) -> Option<Doc> {
    let mut next = git2::Oid::from_str(oid).ok()?;
    for _ in 0..limit {
        if let Ok(doc) = decode(repo, &next.to_string(), key).doc {
            return Some(doc);
        }
        let commit = repo.find_commit(next).ok()?;
        next = commit.parent_id(0).ok()?;
    }
    None
}

/// Writes a state commit into the local object store and returns its id.
pub fn write(
    repo: &git2::Repository,
    doc: &Doc,
    parent: Option<&str>,
    subject: &str,
    history: &[serde_json::Value],
    previous: Option<&str>,
    now: Millis,
) -> Result<String> {
    let json = serde_json::to_vec_pretty(doc)?;
    let blob = repo.blob(&json).context("cannot write a state blob")?;
    let mut tree = repo.treebuilder(None)?;
    tree.insert(STATE_FILE, blob, 0o100644)?;
    let tree = repo.find_tree(tree.write()?)?;
    let parents: Vec<git2::Commit> = match parent {
        Some(p) => vec![repo.find_commit(git2::Oid::from_str(p)?)?],
        None => Vec::new(),
    };
    let parents: Vec<&git2::Commit> = parents.iter().collect();
    let when = git2::Time::new((now / 1000) as i64, 0);
    let sig = git2::Signature::new(NAME, EMAIL, &when)?;
    let mut message = format!("{subject}\n\n");
    for entry in history {
        message.push_str(&serde_json::to_string(entry)?);
        message.push('\n');
    }
    if !history.is_empty() {
        message.push('\n');
    }
    message.push_str(&format!("Buildlock-Nonce: {}\n", nonce(now)));
    if let Some(prev) = previous {
        message.push_str(&format!("Buildlock-Previous: {prev}\n"));
    }
    // `commit` with no update_ref writes the object only: no ref of the user's repository moves.
    let id = repo
        .commit(None, &sig, &sig, &message, &tree, &parents)
        .context("cannot write a state commit")?;
    Ok(id.to_string())
}

/// Host, process, time and a random part: no two state commits are ever the same object.
pub(super) fn nonce(now: Millis) -> String {
    let random = crate::os::time::jitter(std::time::Duration::from_secs(1 << 40)).as_nanos();
    format!(
        "{}/{}/{now}/{random:x}",
        crate::os::process::hostname(),
        std::process::id()
    )
}

/// The history entries recorded in the chain below `oid`, oldest first, at most `limit`
/// commits back (to the chain's root: compaction drops what came before it).
pub fn history(repo: &git2::Repository, oid: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(mut next) = git2::Oid::from_str(oid) else {
        return out;
    };
    for _ in 0..limit {
        let Ok(commit) = repo.find_commit(next) else {
            break;
        };
        let when = commit.time().seconds().max(0) as u64 * 1000;
        let mut entries: Vec<serde_json::Value> = commit
            .message()
            .unwrap_or("")
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for e in &mut entries {
            if let Some(obj) = e.as_object_mut() {
                obj.entry("ms").or_insert(when.into());
                obj.entry("time")
                    .or_insert(crate::os::time::rfc3339(when).into());
            }
        }
        out.extend(entries.into_iter().rev());
        match commit.parent_id(0) {
            Ok(p) => next = p,
            Err(_) => break,
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(key: &str, seq: u64) -> Doc {
        Doc {
            schema: SCHEMA,
            base: key.into(),
            seq,
            totals: Totals::default(),
            passes: 0,
            state: KeyState::passing(key),
        }
    }

    #[test]
    fn writes_and_reads_unique_commits_with_history() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let e1 = serde_json::json!({"event": "failed", "key": "k", "ms": 5});
        let a = write(&repo, &doc("k", 1), None, "s1", &[e1], None, 1000).unwrap();
        let b = write(&repo, &doc("k", 1), None, "s1", &[], None, 1000).unwrap();
        assert_ne!(a, b, "the nonce makes every commit unique");
        let e2 = serde_json::json!({"event": "elected", "key": "k"});
        let c = write(&repo, &doc("k", 2), Some(&a), "s2", &[e2], None, 2000).unwrap();
        assert_eq!(decode(&repo, &c, "k").doc.unwrap().seq, 2);
        assert!(decode(&repo, &c, "other").doc.is_err());
        let h = history(&repo, &c, 10);
        let events: Vec<_> = h.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["failed", "elected"]);
        assert_eq!(
            h[1]["ms"], 2000,
            "the commit time stands in for a missing time"
        );
    }

    #[test]
    fn damage_reads_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blob = repo.blob(b"garbage").unwrap().to_string();
        let d = decode(&repo, &blob, "k");
        assert!(d.doc.unwrap_err().contains("blob"));
        assert!(!d.is_commit);
        let good = write(&repo, &doc("k", 1), None, "s", &[], None, 1).unwrap();
        // A commit whose state.json is garbage, on top of a good one.
        let bad_blob = repo.blob(b"{not json").unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert(STATE_FILE, bad_blob, 0o100644).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("x", "x@x").unwrap();
        let parent = repo
            .find_commit(git2::Oid::from_str(&good).unwrap())
            .unwrap();
        let bad = repo
            .commit(None, &sig, &sig, "bad", &tree, &[&parent])
            .unwrap()
            .to_string();
        let d = decode(&repo, &bad, "k");
        assert!(d.is_commit);
        assert!(d.doc.unwrap_err().contains("not valid state"));
        assert_eq!(last_good(&repo, &bad, "k", 10).unwrap().seq, 1);
        assert!(decode(&repo, "0000", "k").doc.is_err());
    }
}
