//! buildlock's core: every decision lives here; the binaries are thin.
//!
//! The protocol, module by module:
//! - [`config`]: the layered configuration;
//! - [`repo`]: the work tree, the git common dir (one coordination domain), branch and HEAD;
//! - [`key`]: what one fixer covers (scope, and the failure signature with `match = "signature"`);
//! - [`state`]: the state machine, a pure function;
//! - [`store`]: state files, atomic writes, history, failure logs, under the election lock;
//! - [`election`]: the only module that takes a lock;
//! - [`lease`]: the fixer's lease renewal (heartbeat);
//! - [`wait`]: bounded waiting for a fix, with progress;
//! - [`signature`]: failure normalisation and hashing;
//! - [`check`]: running the check and the fix in their own process group;
//! - [`ops`]: the operator's commands; [`demo`]: the demo;
//! - [`hook`]: the pre-commit flow; [`retry`]: commit-retry; [`decision`]: what the hook hands to commit-retry;
//! - [`signals`], [`process`], [`env`], [`fault`], [`time`], [`say`]: OS primitives, one module each.

pub mod check;
pub mod config;
pub mod context;
pub mod decision;
pub mod demo;
pub mod election;
pub mod env;
pub mod exit;
pub mod fault;
pub mod hook;
pub mod installation;
pub mod key;
pub mod lease;
pub mod ops;
pub mod process;
pub mod repo;
pub mod retry;
pub mod say;
pub mod signals;
pub mod signature;
pub mod state;
pub mod store;
pub mod time;
pub mod wait;
