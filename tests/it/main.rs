//! Integration tests: the real binaries on real temporary repositories.

mod harness;
mod hook;
mod install;
mod retry;
mod cli;
