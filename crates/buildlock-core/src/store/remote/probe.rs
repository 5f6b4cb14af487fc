//! `buildlock doctor`'s look at the remote: can this machine read `refs/buildlock/*` there, and
//! may it create, update and delete refs under it (a probe ref, pushed and deleted)?
//!
//! Guarantees:
//! - the probe leaves nothing behind when it succeeds: its ref is created (it must not exist) and
//!   deleted (leased on the commit it created), and it lies outside the state and fix refs, so no
//!   agent ever reads it as a key's state;
//! - every failure names the remote and what is missing (reading, creating, deleting), in git's
//!   words, with what to do about it; a probe ref that could not be deleted is named, to delete by
//!   hand.

use std::time::Instant;

use super::RemoteStore;
use super::chain::{self, Doc};
use super::git::{Pushed, Update};
use super::refs::{self, STATE_PREFIX};
use crate::os::time;
use crate::protocol::ledger::Totals;
use crate::protocol::state::KeyState;

impl RemoteStore {
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
        let name = refs::probe_ref_name(&crate::os::process::hostname(), std::process::id());
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

    /// `buildlock doctor`'s checks of the remote: it answers (how fast, how many keys), and it
    /// accepts this machine's pushes and deletions under `refs/buildlock/` (see [`Self::probe`]).
    pub(super) fn diagnosis(&self) -> Vec<(bool, String, String)> {
        let mut out = Vec::new();
        let started = Instant::now();
        match self.git.ls_remote(&[format!("{STATE_PREFIX}*")]) {
            Ok(refs) => out.push((
                true,
                format!(
                    "the remote `{}` ({}) answers ({} ms; {} key ref(s) under {STATE_PREFIX})",
                    self.git.remote,
                    self.url,
                    started.elapsed().as_millis(),
                    refs.len()
                ),
                String::new(),
            )),
            Err(f) => {
                out.push((
                    false,
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
            Ok(()) => out.push((
                true,
                format!(
                    "the remote `{}` accepts pushes to refs/buildlock/* (created and deleted a probe ref)",
                    self.git.remote
                ),
                String::new(),
            )),
            Err(m) => out.push((
                false,
                m,
                "give the credentials git uses here permission to create, update and delete refs                  under refs/buildlock/ (see docs/ci/ for GitHub Actions and GitLab)"
                    .to_owned(),
            )),
        }
        out
    }
}
