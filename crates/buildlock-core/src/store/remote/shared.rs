//! One `ls-remote` for the hook's two reads of the remote: the claims guard's read of the claims
//! registry and, just after it, the read of the base's states before the check.
//!
//! The guard's read lists both prefixes at once (`refs/buildlock/claims/*` and
//! `refs/buildlock/state/*`: one round trip, a few more lines) and leaves the listing here; the
//! store's next base read in the same process takes it instead of asking the remote again. The
//! flows do not know: they call the guard and `Store::read_base` as with any backend.
//!
//! Guarantees:
//! - a listing is taken once, by a reader of the same repository and remote, and only within
//!   [`FRESH`] of its reading (the guard may wait for a claim, and then the store reads anew):
//!   using it is the same as having read the states a moment earlier, before the check, which is
//!   all the base read promises (its pass counter judges a failure stale, never a pass);
//! - nothing else reads it: a transition, a waiter's look and every other read still ask the
//!   remote.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old a listing may be and still serve the base read.
pub(super) const FRESH: Duration = Duration::from_secs(1);

struct Listing {
    git_dir: PathBuf,
    remote: String,
    taken: Instant,
    refs: Vec<(String, String)>,
}

static LAST: Mutex<Option<Listing>> = Mutex::new(None);

/// Leaves `refs` (`ls-remote` output of the state prefix, among others) for the next base read
/// of the repository at `git_dir` against `remote`.
pub(super) fn offer(git_dir: &Path, remote: &str, refs: &[(String, String)]) {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    *last = Some(Listing {
        git_dir: git_dir.to_owned(),
        remote: remote.to_owned(),
        taken: Instant::now(),
        refs: refs.to_vec(),
    });
}

/// The listing left for this repository and remote, when it is fresh: the refs whose names start
/// with `prefix`. Taken once.
pub(super) fn take(git_dir: &Path, remote: &str, prefix: &str) -> Option<Vec<(String, String)>> {
    let listing = LAST.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    (listing.git_dir == git_dir && listing.remote == remote && listing.taken.elapsed() < FRESH)
        .then(|| {
            listing
                .refs
                .into_iter()
                .filter(|(_, name)| name.starts_with(prefix))
                .collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> Vec<(String, String)> {
        [
            ("a", "refs/buildlock/claims/1"),
            ("b", "refs/buildlock/state/commit/_/1"),
            ("c", "refs/buildlock/state/other/_/1"),
        ]
        .iter()
        .map(|(o, n)| ((*o).to_owned(), (*n).to_owned()))
        .collect()
    }

    // One test for the one process-wide slot: tests run in parallel threads.
    #[test]
    fn a_listing_serves_one_read_of_the_same_repository_and_remote_while_fresh() {
        let dir = Path::new("/r/.git");
        offer(dir, "origin", &refs());
        assert_eq!(
            take(dir, "origin", "refs/buildlock/state/commit/"),
            Some(vec![(
                "b".to_owned(),
                "refs/buildlock/state/commit/_/1".to_owned()
            )])
        );
        assert_eq!(take(dir, "origin", "refs/"), None, "taken once");
        offer(dir, "origin", &refs());
        assert_eq!(take(dir, "upstream", "refs/"), None, "another remote");
        offer(dir, "origin", &refs());
        assert_eq!(take(Path::new("/s/.git"), "origin", "refs/"), None);
        offer(dir, "origin", &refs());
        LAST.lock().unwrap().as_mut().unwrap().taken = Instant::now() - FRESH;
        assert_eq!(take(dir, "origin", "refs/"), None, "too old");
    }
}
