//! Why a store step failed, as the flows need to tell it apart: the caller was told to stop, the
//! store did not answer in time, it refused, or its files could not be read or written.
//!
//! The messages are the ones people see (`buildlock: {err:#}` at the top): a variant's `Display`
//! is its own message, and its cause chain follows as the error's `source`, so `{:#}` reads the
//! same whether it prints a [`StoreError`] or the `anyhow::Error` it became at a flow's edge.

use std::fmt;

/// A failure at the [`Store`](super::Store) boundary.
#[derive(Debug)]
pub enum StoreError {
    /// Waiting (for the election lock, or for the remote) was given up because the caller was
    /// told to stop (a signal, or git went away): not a coordination failure.
    Interrupted,
    /// The store did not answer within the time allowed: the remote could not be reached, or
    /// another process held the lock the whole time. Trying again later may work. The message
    /// names the remote or the lock, how long it waited, and who or what stood in the way.
    Unreachable(String),
    /// The store refused to coordinate, and no retry can change that: the remote declined
    /// (permission, authentication, a server hook), or file locking does not work where the
    /// state lives. The message says what refused, and why.
    Refused(String),
    /// Reading or writing the store failed (a state file, a lock file, the local object
    /// store). The chain says what, and the path or the key it is about.
    Io(anyhow::Error),
}

impl StoreError {
    /// Whether the caller was told to stop while waiting.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, StoreError::Interrupted)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Interrupted => {
                f.write_str("interrupted while waiting for the election lock")
            }
            StoreError::Unreachable(m) | StoreError::Refused(m) => f.write_str(m),
            // `{:#}` says the whole chain, like anyhow's; `{}` the outermost context only, the
            // rest being `source`.
            StoreError::Io(e) if f.alternate() => write!(f, "{e:#}"),
            StoreError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => e.source(),
            _ => None,
        }
    }
}

/// A failure a backend reports without a kind: a [`StoreError`] it carries is kept as it is
/// (the remote's transaction still speaks `anyhow` inside), anything else is a read or write
/// that failed.
impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> StoreError {
        match e.downcast::<StoreError>() {
            Ok(typed) => typed,
            Err(e) => StoreError::Io(e),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e.into())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError::Io(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn the_message_and_its_chain_read_the_same_through_anyhow() {
        let inner: anyhow::Result<()> = Err(std::io::Error::other("disk on fire"))
            .with_context(|| "cannot write /x/state/repo.json");
        let typed = StoreError::from(inner.unwrap_err());
        assert_eq!(
            format!("{typed:#}"),
            "cannot write /x/state/repo.json: disk on fire"
        );
        assert_eq!(format!("{typed}"), "cannot write /x/state/repo.json");
        let edge = anyhow::Error::from(typed);
        assert_eq!(
            format!("{edge:#}"),
            "cannot write /x/state/repo.json: disk on fire"
        );
    }

    #[test]
    fn a_typed_error_carried_by_anyhow_comes_back_typed() {
        let carried = anyhow::Error::from(StoreError::Interrupted);
        assert!(StoreError::from(carried).is_interrupted());
        let refused = anyhow::Error::from(StoreError::Refused("no".into()));
        assert!(matches!(StoreError::from(refused), StoreError::Refused(m) if m == "no"));
    }
}
