//! The rules, pure: no file, no environment, no clock, no process, no repository, no lock. What
//! a rule needs from the machine (a file's text, the branch, the time, which processes live) is
//! handed to it as a value; this crate depends on serde, serde_json and toml only, so the compiler
//! keeps it that way.
//!
//! - [`config`]: the layered configuration; [`key`]: what one fixer covers;
//! - [`failure_lines`]: which lines of a failed check's output carry the failure;
//! - [`signature`]: failure normalisation and hashing; [`state`]: the state machine;
//! - [`ledger`]: what each transition adds to the counters and the history;
//! - [`claims`]: claims, check slots and the agent registry; [`pathspec`]: the paths a claim names;
//! - [`exit`]: the exit codes of the contract;
//! - [`time`]: unix milliseconds and the duration grammar; [`process`]: a process as recorded.

pub mod claims;
pub mod config;
pub mod exit;
pub mod failure_lines;
pub mod key;
pub mod ledger;
pub mod pathspec;
pub mod process;
pub mod signature;
pub mod state;
pub mod time;
