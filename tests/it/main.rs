//! Integration tests: the real binaries on real temporary repositories.

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
mod resource_limits;
mod retry;
mod stress;
