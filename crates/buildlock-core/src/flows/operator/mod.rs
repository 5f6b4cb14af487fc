//! The operator's tools: [`ops`] (`status`, `release`, `reset`, `log`), [`doctor`] (with
//! [`shell_words`], its lexer of the check's command line), and [`installation`] (is the
//! installed hook ours, and what replaced it).

pub mod doctor;
pub mod installation;
pub mod ops;
pub mod shell_words;
