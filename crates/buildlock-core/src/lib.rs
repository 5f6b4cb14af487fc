//! buildlock's core: every decision lives here; the binaries are thin.
//!
//! The layers, each depending only on those above it in this list:
//! - [`protocol`]: the rules, pure (configuration, keys, failure signatures, the state machine,
//!   the ledger, claims, exit codes), in a crate of their own, `buildlock-protocol`, whose only
//!   dependencies are serde, serde_json and toml: the compiler keeps them free of files, the
//!   environment, clocks, processes and the repository. Re-exported here as `protocol`;
//! - [`os`]: the ground: one module per OS primitive (locks, processes, signals, environment,
//!   time, terminal output, files, the git repository, running a command); it uses the rules'
//!   data types (`Process`, `Millis`) and duration grammar;
//! - [`store`]: where the state lives, one interface ([`store::Store`]) with its backends;
//! - [`flows`]: what the programs do (the hook, commit-retry, the operator's commands, the demo);
//!   they read what the rules need (configuration files, the branch, the environment) and talk to
//!   the store interface, never to a backend.

pub use buildlock_protocol as protocol;

pub mod flows;
pub mod os;
pub mod store;
