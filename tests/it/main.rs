//! Integration tests: the real binaries on real temporary repositories. Each file is named by the
//! behaviour it tests; what they share is in `harness.rs`.

// The tests read their own knobs (rounds, seeds) and hand PATH on to the programs they run;
// clippy.toml keeps the environment in os/env.rs for the programs themselves.
#![allow(clippy::disallowed_methods)]
// They drive the programs with unix signals, process groups and `sh`: unix only. On Windows the
// core's own unit tests cover the OS layer (README, "Platforms").
#![cfg(unix)]

mod agent_view;
mod ci_files;
mod ci_gitlab_local;
mod ci_verdict;
mod claims;
mod claims_remote;
mod cli;
mod commit_paths;
mod election;
mod eviction;
mod faults;
mod fix_commit;
mod fix_time_limits;
mod handover;
mod harness;
mod help;
mod hook;
mod identity;
mod input;
mod install;
mod race;
mod remote;
mod remote_prune;
mod remote_round_trips;
mod remote_stall;
mod remote_waiters;
mod resource_limits;
mod retry;
mod stale;
mod state;
mod strays;
mod stress;
mod take_fix;
mod takeover;
mod waiter_takes_fix;
mod waiting;
