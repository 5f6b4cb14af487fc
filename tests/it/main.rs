//! Integration tests: the real binaries on real temporary repositories.

// The tests read their own knobs (rounds, seeds) and hand PATH on to the programs they run;
// clippy.toml keeps the environment in os/env.rs for the programs themselves.
#![allow(clippy::disallowed_methods)]

mod claims;
mod cli;
mod faults;
mod fixer_cases;
mod fixer_defects;
mod handover;
mod harness;
mod help;
mod hook;
mod install;
mod race;
mod remote;
mod retry;
mod stress;
