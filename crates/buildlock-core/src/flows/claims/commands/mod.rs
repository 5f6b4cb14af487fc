//! The claims commands: `claim`, `unclaim`, `claims`, `agents`, `done`, `wait-for`.
//!
//! Each is a library function that returns the exit code of the contract: 0; 75 refused or timed
//! out; 2 a wrong command line (every input is checked before anything changes, and the message
//! names what was wrong); 78 a configuration error (when loading the context). Every change is one
//! step of the registry store under its lock (`store/registry.rs`); the decisions are the pure
//! rules' (`protocol/claims.rs`). Waiting (`claim --wait`, `wait-for`) wakes when a registry change
//! rings its bell (`os::bell`) or at the next moment something can lapse, with a bounded fallback poll,
//! and shows progress on stderr.
//!
//! By topic: [`claim`] (`claim`, `unclaim`), [`listing`] (`claims`, `agents`, and how `buildlock
//! log` words claims events), [`done`] (`done`, `wait-for`); what they share with the guard and
//! the slots is in [`crate::flows::claims::common`].

pub mod claim;
pub mod done;
pub mod listing;

pub use claim::{ClaimArgs, claim, unclaim};
pub use done::{done, wait_for};
pub use listing::{agents, list, log_detail};
