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
use super::refs::{self, STATE_PREFIX};
use crate::os::remote_git::{Pushed, Update};
use crate::os::time;
use crate::protocol::ledger::Totals;
use crate::protocol::state::KeyState;
use crate::store::Finding;

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
                 the remote bounded: the credentials need permission to delete refs there (a server-side \
                 hook or a protection rule on refs/buildlock/* refuses it); delete {name} by hand"
            )),
        }
    }

    /// `buildlock doctor`'s checks of the remote: it answers (how fast, how many keys), and it
    /// accepts this machine's pushes and deletions under `refs/buildlock/` (see [`Self::probe`]).
    pub(super) fn diagnosis(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let started = Instant::now();
        match self.git.ls_remote(&[format!("{STATE_PREFIX}*")]) {
            Ok(refs) => out.push(Finding::ok(format!(
                "the remote `{}` ({}) answers ({} ms; {} key ref(s) under {STATE_PREFIX})",
                self.git.remote,
                self.url,
                started.elapsed().as_millis(),
                refs.len()
            ))),
            Err(f) => {
                out.push(Finding::problem(
                    format!(
                        "cannot read the remote `{}` ({}): {f}",
                        self.git.remote, self.url
                    ),
                    format!(
                        "make `git ls-remote {} 'refs/buildlock/*'` work here (network, URL, \
                         credentials), or set coordination.remote to a remote that does",
                        self.git.remote
                    ),
                ));
                return out;
            }
        }
        match self.probe() {
            Ok(()) => out.push(Finding::ok(format!(
                "the remote `{}` accepts pushes to refs/buildlock/* (created and deleted a probe ref)",
                self.git.remote
            ))),
            Err(m) => out.push(Finding::problem(
                m,
                "give the credentials git uses here permission to create, update and delete refs \
                 under refs/buildlock/ (see docs/ci/ for GitHub Actions and GitLab)"
                    .to_owned(),
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::store::remote::testing::Remote;

    #[test]
    fn a_probe_that_may_write_leaves_nothing_behind() {
        let remote = Remote::new();
        let store = remote.store("a");
        store.probe().unwrap();
        assert!(remote.refs().is_empty(), "{:?}", remote.refs());
        let checks = store.diagnosis();
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks.iter().all(|c| !c.is_problem()), "{checks:?}");
        assert!(checks[0].what.contains("0 key ref(s)"), "{checks:?}");
    }

    #[test]
    fn a_remote_that_refuses_deletions_is_named_with_the_ref_to_delete() {
        let remote = Remote::new();
        remote.deny_deletions();
        let store = remote.store("a");
        let err = store.probe().unwrap_err();
        assert!(err.starts_with("created refs/buildlock/probe/"), "{err}");
        assert!(err.contains("cannot delete it"), "{err}");
        let left = remote.refs();
        assert_eq!(left.len(), 1);
        assert!(
            err.contains(&format!("delete {} by hand", left[0].0)),
            "{err}"
        );
        let checks = store.diagnosis();
        assert_eq!(checks.len(), 2);
        assert!(!checks[0].is_problem(), "reading works: {checks:?}");
        assert!(checks[1].is_problem(), "{checks:?}");
    }

    #[test]
    fn a_remote_that_cannot_be_read_is_one_failed_check() {
        let remote = Remote::new();
        let store = remote.store("a");
        remote.remove();
        let checks = store.diagnosis();
        assert_eq!(checks.len(), 1, "no probe without a read: {checks:?}");
        let (found, todo) = (&checks[0].what, &checks[0].todo);
        assert!(checks[0].is_problem());
        assert!(
            found.starts_with("cannot read the remote `origin`"),
            "{found}"
        );
        assert!(todo.contains("git ls-remote origin"), "{todo}");
    }
}
