//! Exit codes, in one place, shared by the binaries (contract: "Exit codes").

/// `pre-commit`: the check passed. `commit-retry`: committed.
pub const OK: i32 = 0;
/// `pre-commit`: the check failed and you are the fixer (or just gave the role up).
/// `commit-retry`: you are the fixer and there is no `fix.command`, or the fix failed
/// `max_fix_attempts` times. `buildlock`: the command failed.
pub const FIXER: i32 = 1;
/// `buildlock`: the command line was wrong.
pub const USAGE: i32 = 2;
/// `buildlock ci`: the tested commit failed and the job passed only on the fix commit ("broken
/// here, passes on the fix"); `ci.pass_on_fix = true` makes it [`OK`].
pub const BROKEN_PASSES_ON_FIX: i32 = 3;
/// Another agent is fixing and the wait ran out, or was not wanted (EX_TEMPFAIL).
pub const BLOCKED: i32 = 75;
/// The configuration is wrong (EX_CONFIG).
pub const CONFIG: i32 = 78;

/// The check failed and coordination itself failed (state unwritable, lock unobtainable, remote
/// unreachable):
/// nobody was elected (EX_SOFTWARE).
pub const COORDINATION: i32 = 70;

/// Ended by signal `n`.
pub fn signal(n: i32) -> i32 {
    128 + n
}
