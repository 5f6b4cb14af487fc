//! Keeping agents out of each other's way before anything breaks: [`commands`] (`claim`,
//! `unclaim`, `claims`, `agents`, `done`, `wait-for`), the hook's claims [`guard`], and check
//! [`slots`]; what they share is in [`common`].

pub mod commands;
pub mod common;
pub mod guard;
pub mod slots;
