//! buildlock's core: every decision lives here; the binaries are thin.
//!
//! The layers, each depending only on those above it in this list:
//! - [`os`]: the ground: one module per OS primitive (locks, processes, signals, environment,
//!   time, terminal output, files, the git repository, running a command);
//! - [`protocol`]: pure rules: configuration, keys, failure signatures, the state machine, the
//!   ledger (counters and history), exit codes;
//! - [`store`]: where the state lives, one interface ([`store::Store`]) with its backends;
//! - [`flows`]: what the programs do (the hook, commit-retry, the operator's commands, the demo);
//!   they talk to the store interface, never to a backend.

pub mod flows;
pub mod os;
pub mod protocol;
pub mod store;
