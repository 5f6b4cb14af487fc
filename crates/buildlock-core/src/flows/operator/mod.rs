//! The operator's tools: [`ops`] (`status`, `release`, `reset`, `log`), [`doctor`], and
//! [`installation`] (is the installed hook ours, and what replaced it).

pub mod doctor;
pub mod installation;
pub mod ops;
