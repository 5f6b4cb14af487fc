//! The rules, pure: no clock, no file, no lock.
//!
//! - [`config`]: the layered configuration; [`key`]: what one fixer covers;
//! - [`failure_lines`]: which lines of a failed check's output carry the failure;
//! - [`signature`]: failure normalisation and hashing; [`state`]: the state machine;
//! - [`ledger`]: what each transition adds to the counters and the history;
//! - [`claims`]: claims, check slots and the agent registry;
//! - [`exit`]: the exit codes of the contract.

pub mod claims;
pub mod config;
pub mod exit;
pub mod failure_lines;
pub mod key;
pub mod ledger;
pub mod signature;
pub mod state;
