//! Unit tests' remote: a bare repository in a temporary directory, reached by the system `git`
//! through a path URL, and one local repository per agent that names it `origin`.

use std::path::PathBuf;
use std::time::Duration;

use super::RemoteStore;
use super::chain::{self, Doc};
use super::read::View;
use super::refs::{self, Tip};
use crate::protocol::ledger::Totals;
use crate::protocol::state::KeyState;

/// A state commit's contents for `key` (its own base), numbered `seq`.
pub(super) fn doc(key: &str, seq: u64) -> Doc {
    Doc {
        schema: chain::SCHEMA,
        base: key.into(),
        seq,
        totals: Totals::default(),
        passes: 0,
        state: KeyState::passing(key),
    }
}

/// The ref of `key`'s chain in `epoch`, at `oid`.
pub(super) fn tip(key: &str, epoch: u64, oid: &str) -> Tip {
    Tip {
        epoch,
        oid: oid.into(),
        name: refs::state_ref(&refs::key_path(key), epoch),
    }
}

/// What a read of a key whose tip `current` holds `doc` finds (no strays, no fix refs).
pub(super) fn view(current: Option<Tip>, doc: Option<Doc>) -> View {
    View {
        current,
        strays: Vec::new(),
        fixes: Vec::new(),
        doc,
        damaged: None,
        tip_is_commit: true,
        last_good: None,
        base_passes: 0,
    }
}

pub(super) struct Remote {
    dir: tempfile::TempDir,
    pub bare: PathBuf,
}

impl Remote {
    pub fn new() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("remote.git");
        git2::Repository::init_bare(&bare).unwrap();
        Remote { dir, bare }
    }

    fn open(&self) -> git2::Repository {
        git2::Repository::open_bare(&self.bare).unwrap()
    }

    /// An agent's store: its own repository (and object store), with `origin` = this remote.
    pub fn store(&self, agent: &str) -> RemoteStore {
        let git_dir = self.dir.path().join(format!("{agent}.git"));
        let repo = git2::Repository::init_bare(&git_dir).unwrap();
        repo.remote("origin", self.bare.to_str().unwrap()).unwrap();
        RemoteStore::new(
            &git_dir,
            "origin",
            Duration::from_secs(20),
            Duration::from_millis(10),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    /// Writes `doc` on the remote directly, as the root of its key's chain (epoch = its `seq`).
    pub fn put_state(&self, doc: &Doc) -> String {
        let repo = self.open();
        let oid = chain::write(&repo, doc, None, "test", &[], None, 1000).unwrap();
        let name = refs::state_ref(&refs::key_path(&doc.state.key), doc.seq);
        self.set_ref(&name, &oid);
        oid
    }

    pub fn set_ref(&self, name: &str, oid: &str) {
        self.open()
            .reference(name, git2::Oid::from_str(oid).unwrap(), true, "test")
            .unwrap();
    }

    /// `(name, oid)` of every ref under `refs/buildlock/` on the remote, sorted.
    pub fn refs(&self) -> Vec<(String, String)> {
        let repo = self.open();
        let mut out: Vec<(String, String)> = repo
            .references_glob("refs/buildlock/*")
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (
                    r.name().unwrap().to_owned(),
                    r.target().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The remote's repository, to read state commits with.
    pub fn repo(&self) -> git2::Repository {
        self.open()
    }

    /// The remote refuses every deletion under `refs/buildlock/` (an `update` hook: git's own
    /// `receive.denyDeletes` covers branches only).
    pub fn deny_deletions(&self) {
        let hook = self.bare.join("hooks/update");
        std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
        std::fs::write(
            &hook,
            "#!/bin/sh\ncase $1 in refs/buildlock/*) case $3 in *[!0]*) ;; *) echo 'no deletions' >&2; exit 1;; esac;; esac\n",
        )
        .unwrap();
        crate::os::fs::set_mode(&hook, 0o755).unwrap();
    }

    /// A commit in `agent`'s repository (as a fix commit is, before it is published).
    pub fn commit_in(&self, agent: &str) -> String {
        let repo =
            git2::Repository::open_bare(self.dir.path().join(format!("{agent}.git"))).unwrap();
        chain::write(&repo, &doc("fix", 1), None, "a fix", &[], None, 1000).unwrap()
    }

    /// The remote goes away: every later operation fails.
    pub fn remove(&self) {
        std::fs::remove_dir_all(&self.bare).unwrap();
    }
}
