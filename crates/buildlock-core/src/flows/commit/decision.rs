//! The hook's decision, handed to the commit-retry that started it.
//!
//! commit-retry sets `BUILDLOCK_DECISION` to a file path for the `git commit` it runs; the hook
//! writes what it decided there when it rejects the commit. commit-retry then knows for certain
//! whether the hook rejected the commit and why, instead of guessing from git's output: no file
//! means the hook passed (or never ran) and git failed on its own. A passing hook writes nothing:
//! every green commit would pay for a file it does not need.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The check failed and this agent is the fixer.
    Fix,
    /// The check failed and another agent is fixing.
    Wait,
    /// The fixer failed `max_fix_attempts` times and gave the role up.
    GaveUp,
    /// The check failed with coordination off (`BUILDLOCK=0`).
    Failed,
    /// The check failed; the last fix fixed this failure and HEAD lacks its commit (`fix_commit`).
    TakeFix,
    /// The check failed and coordination itself failed: nobody was elected.
    CoordinationFailed,
    /// The configuration is wrong.
    ConfigError,
    /// The claims guard refused the commit before its check: `claimed` names the paths, `fixer`
    /// the agent that holds the first of them.
    Claimed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub key: Option<String>,
    pub base: Option<String>,
    pub generation: Option<u64>,
    pub fixer: Option<String>,
    pub since: Option<u64>,
    /// The failure log of this agent's check.
    pub log: Option<PathBuf>,
    pub signature: Option<String>,
    pub attempts: Option<u32>,
    /// The commit to take, with [`Verdict::TakeFix`] (or after a wait that ended in a fix).
    #[serde(default)]
    pub fix_commit: Option<String>,
    /// `Claimed`: the paths of the commit that other agents claimed.
    #[serde(default)]
    pub claimed: Vec<String>,
}

/// What the hook says when it cannot write its decision; commit-retry recognises it.
pub const HAND_OVER_FAILED: &str = "cannot hand the decision to commit-retry";

impl Decision {
    pub fn new(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            key: None,
            base: None,
            generation: None,
            fixer: None,
            since: None,
            log: None,
            signature: None,
            attempts: None,
            fix_commit: None,
            claimed: Vec::new(),
        }
    }

    /// Writes the decision where commit-retry asked for it, if it did.
    pub fn hand_over(&self) {
        if let Some(path) = crate::os::env::decision_file() {
            if let Ok(json) = serde_json::to_vec(self) {
                if let Err(e) = std::fs::write(&path, json) {
                    crate::os::say::warn(format!("{HAND_OVER_FAILED} at {}: {e}", path.display()));
                }
            }
        }
    }

    pub fn read(path: &Path) -> Option<Decision> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
