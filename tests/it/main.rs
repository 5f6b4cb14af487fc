//! Integration tests: the real binaries on real temporary repositories. Each file is named by the
//! behaviour it tests; what they share is in `harness.rs`.

mod claims;
mod cli;
mod election;
mod faults;
mod handover;
mod harness;
mod help;
mod hook;
mod install;
mod race;
mod remote;
mod resource_limits;
mod retry;
mod stale;
mod state;
mod strays;
mod stress;
mod takeover;
