//! Keeping agents out of each other's way before anything breaks: [`commands`] (`claim`,
//! `unclaim`, `claims`, `agents`, `done`, `wait-for`), the hook's claims [`guard`], and check
//! [`slots`].

pub mod commands;
pub mod guard;
pub mod slots;
