//! The paths a commit changes: the index git is committing against HEAD, read in process with
//! git2 (no git subprocess).
//!
//! The index is the one git hands the hook in `GIT_INDEX_FILE`: `.git/index` for a plain commit,
//! `.git/index.lock` for `commit -a`, `.git/next-index-<pid>.lock` for `commit -- <path>` (a
//! relative path is relative to the current directory, the work tree root in a hook). Without it
//! (the hook run by hand) it is the repository's own index. The index is only read, never
//! locked or written. No rename detection: a rename is its old path deleted and its new path
//! added, so both count, as do both sides of a deletion and a type change.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::os::repo::Repo;

/// Every path that differs between HEAD and the index being committed, sorted, relative to the
/// work tree root; with `under`, only below those directories (an empty one: anywhere), each
/// compared on its own so that the tree walk stays inside it.
pub fn changed_paths(repo: &Repo, under: Option<&[String]>) -> Result<Vec<String>> {
    let git = repo.git()?;
    let index = match crate::os::env::index_file() {
        Some(path) => {
            let path: PathBuf = if path.is_relative() {
                std::env::current_dir()
                    .context("cannot read the current directory")?
                    .join(path)
            } else {
                path
            };
            git2::Index::open(&path)
                .with_context(|| format!("cannot read the index {}", path.display()))?
        }
        None => git.index().context("cannot read the repository's index")?,
    };
    let tree = match git.head() {
        Ok(head) => Some(head.peel_to_tree().context("cannot read HEAD's tree")?),
        // An unborn branch: everything in the index is new.
        Err(_) => None,
    };
    let dirs: Vec<Option<&str>> = match under {
        Some(dirs) if !dirs.iter().any(String::is_empty) => {
            dirs.iter().map(|d| Some(d.as_str())).collect()
        }
        _ => vec![None],
    };
    let mut paths = BTreeSet::new();
    for dir in dirs {
        let mut opts = git2::DiffOptions::new();
        opts.include_typechange(true).ignore_submodules(false);
        if let Some(dir) = dir {
            // A literal path: the directory (or file) and what is below it.
            opts.pathspec(dir).disable_pathspec_match(true);
        }
        let diff = git
            .diff_tree_to_index(tree.as_ref(), Some(&index), Some(&mut opts))
            .context("cannot compare the index with HEAD")?;
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(p) = file.path_bytes() {
                    paths.insert(String::from_utf8_lossy(p).into_owned());
                }
            }
        }
    }
    Ok(paths.into_iter().collect())
}
