//! What a store's own health checks found, for `buildlock doctor` to print.

/// How a [`Finding`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Works as it must.
    Ok,
    /// Worth knowing, not a problem (a stray temp file the next write removes).
    Note,
    /// Breaks or degrades coordination: `todo` says what to do.
    Problem,
    /// How much room the store takes.
    Size,
}

/// One finding of [`Store::diagnose`](super::Store::diagnose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was found, with the path or the remote it is about.
    pub what: String,
    /// What to do about it (a problem's only; empty otherwise).
    pub todo: String,
}

impl Finding {
    pub fn ok(what: impl Into<String>) -> Finding {
        Finding::new(Level::Ok, what, String::new())
    }

    pub fn note(what: impl Into<String>) -> Finding {
        Finding::new(Level::Note, what, String::new())
    }

    pub fn problem(what: impl Into<String>, todo: impl Into<String>) -> Finding {
        Finding::new(Level::Problem, what, todo)
    }

    pub fn size(what: impl Into<String>) -> Finding {
        Finding::new(Level::Size, what, String::new())
    }

    fn new(level: Level, what: impl Into<String>, todo: impl Into<String>) -> Finding {
        Finding {
            level,
            what: what.into(),
            todo: todo.into(),
        }
    }

    pub fn is_problem(&self) -> bool {
        self.level == Level::Problem
    }
}
