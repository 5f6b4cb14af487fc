//! What the programs do. A flow talks to [`crate::store::Store`], never to a backend; which
//! backend it has is decided once, in [`context`].
//!
//! # The life of a failed commit
//!
//! Everything a commit goes through is in [`commit`], in this order:
//!
//! 1. [`commit::retry`]: `git commit-retry` runs `git commit` (and re-execs itself through
//!    `buildlock __commit-retry` where it must be statically linked);
//! 2. [`commit::hook`]: git runs the pre-commit hook; it loads the [`context`], asks the claims
//!    guard ([`claims::guard`]) and a check slot ([`claims::slots`]), runs the check; on a failure
//!    [`commit::failure`] (shared with `buildlock ci`) records it and one step under the election
//!    lock decides who fixes (the pure state machine in `protocol::state`);
//! 3. [`commit::decision`]: the hook writes what it decided for the commit-retry that started it;
//! 4. the elected fixer: [`commit::fixer`] holds the role and runs `fix.command`, renewing its
//!    lease from [`commit::lease`]'s heartbeat; [`commit::own_work`] keeps the fixer's own work out
//!    of the fix, which [`commit::fixcommit`] records and hands to the waiters;
//! 5. every other agent: [`commit::wait`] waits for the fix (or for a dead or silent fixer to be
//!    replaced), then takes the fix commit ([`commit::take_fix`], `buildlock take-fix`, through
//!    `retry.refresh`) and commits again.
//!
//! [`ci`] is the same protocol for a CI step, without a commit (either backend), with the job's
//! verdict and the fix's delivery to a branch.
//!
//! # Everything else
//!
//! - [`claims`]: claims and agents (`claim`, `unclaim`, `claims`, `agents`, `done`, `wait-for`),
//!   the hook's claims guard, check slots;
//! - [`operator`]: the operator's commands (`status`, `release`, `reset`, `log`), `doctor`, and
//!   whether the installed hook is ours;
//! - [`demo`]: `buildlock demo`, the whole story on a throwaway repository.

pub mod ci;
pub mod claims;
pub mod commit;
pub mod context;
pub mod demo;
pub mod operator;
