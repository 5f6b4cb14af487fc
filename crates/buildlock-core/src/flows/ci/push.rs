//! `buildlock ci`'s delivery of a fix commit to a normal branch of a remote (`ci.deliver`), with
//! the same transport as the remote store (the user's own `git`, bounded in time), for either
//! backend.
//!
//! Every update carries an explicit expected old value, as the state's pushes do: a new branch
//! is pushed with `--force-with-lease=<ref>:` (it must not exist yet), so two fixers can never
//! move one delivery branch; a fast-forward of the tested branch is leased on the tested commit.
//! Nothing here ever deletes or rewinds a branch, and the store's pruning only ever touches
//! `refs/buildlock/`: a delivered fix stays.

use std::path::Path;
use std::time::Duration;

use crate::os::remote_git::{Failure, Git, Pushed, Update};

/// Tries of one delivery push when the remote cannot be reached for a moment.
const TRIES: u32 = 3;

/// A connection to `remote` of the repository at `git_dir`, or why there is none (no git, no
/// such remote), in words to show.
pub fn connect(git_dir: &Path, remote: &str) -> Result<Git, String> {
    let git = Git::new(git_dir, remote)?;
    git.url().map_err(|f| f.to_string())?;
    Ok(git)
}

/// Pushes `commit` to `refs/heads/<branch>` on the remote when that ref is `expect` now (`None`:
/// when it does not exist). `Pushed::Stale` when it is something else. A transient failure is
/// tried again a few times.
pub fn push_branch(
    git: &Git,
    branch: &str,
    commit: &str,
    expect: Option<&str>,
) -> Result<Pushed, Failure> {
    let update = Update {
        name: format!("refs/heads/{branch}"),
        new: Some(commit.to_owned()),
        expect: expect.map(str::to_owned),
    };
    let mut pause = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        match git.push(std::slice::from_ref(&update)) {
            Err(Failure::Transient(_)) if tries < TRIES => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            other => return other,
        }
    }
}

/// The commit each of these branches points at on the remote (absent: no such branch).
pub fn branch_tips(git: &Git, branches: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let patterns: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
    Ok(git
        .ls_remote(&patterns)?
        .into_iter()
        .filter_map(|(oid, name)| {
            let branch = name.strip_prefix("refs/heads/")?;
            branches
                .iter()
                .any(|b| b == branch)
                .then(|| (branch.to_owned(), oid))
        })
        .collect())
}
