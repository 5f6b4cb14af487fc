//! A commit's way through buildlock, in the order a failed commit meets them (see
//! [`crate::flows`] for the story): [`retry`] (commit-retry) runs `git commit`; git runs the
//! [`hook`], which hands its [`decision`] back; the elected [`fixer`] runs the fix under its
//! [`lease`], keeping its [`own_work`] out of the [`fixcommit`] that waiters are handed; the
//! others [`wait`], then [`take_fix`] brings the fix into their work tree.

pub mod decision;
pub mod failure;
pub mod fixcommit;
pub mod fixer;
pub mod hook;
pub mod lease;
pub mod own_work;
pub mod retry;
pub mod take_fix;
mod tree_entries;
pub mod wait;
