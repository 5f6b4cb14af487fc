//! What the programs do. A flow talks to [`crate::store::Store`], never to a backend.
//!
//! - [`context`]: what every program loads first (repository, configuration, store, agent);
//! - [`hook`]: the pre-commit flow; [`retry`]: commit-retry; [`decision`]: what the hook hands
//!   to commit-retry;
//! - [`fixer`]: holding a fixer role and running the fix (commit-retry, `buildlock ci`);
//!   [`own_work`]: the fixer's own staged work, set aside while its fix is committed alone;
//! - [`fixcommit`]: the fix commit handed to waiters;
//! - [`wait`]: bounded waiting for a fix; [`lease`]: the fixer's heartbeat;
//! - [`ci`]: `buildlock ci`, the protocol for a CI step (either backend);
//! - [`installation`]: is the installed hook ours, and what replaced it (hook managers);
//! - [`ops`]: the operator's commands; [`doctor`]: `buildlock doctor`; [`demo`]: the demo;
//! - [`claims`]: claims and agents (`claim`, `unclaim`, `claims`, `agents`, `done`, `wait-for`);
//!   [`guard`]: the hook's claims guard; [`slots`]: check slots; [`claims_demo`]: the demo's scene.

pub mod ci;
pub mod claims;
pub mod claims_demo;
pub mod context;
pub mod decision;
pub mod demo;
pub mod doctor;
pub mod fixcommit;
pub mod fixer;
pub mod guard;
pub mod hook;
pub mod installation;
pub mod lease;
pub mod ops;
pub mod own_work;
pub mod retry;
pub mod slots;
pub mod wait;
