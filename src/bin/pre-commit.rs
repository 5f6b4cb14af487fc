//! The pre-commit hook: runs the repository's check and elects one fixer per breakage.
//!
//! git runs it with no arguments. A first argument of `--help`/`-h` or `--version`/`-V` is
//! answered here, before anything is loaded: the check never runs for it.
//!
//! The hook file install.sh writes is a script whose interpreter is this binary
//! (`#!<git common dir>/buildlock/bin/pre-commit --hook-script`): the kernel starts it directly,
//! as cheap as the bare binary, while hook managers still read a small text file. The kernel puts
//! `--hook-script <hook file>` before git's arguments; they are dropped here, so the check
//! (a chained hook) gets exactly git's.

// No Rust runtime start-up (`no_main`), as in commit-retry: every commit pays for the hook's
// start. What std's start did that we need (SIGPIPE ignored) is done below.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

use buildlock_core::os::{env, say, signals};

// Built against musl (install.sh does so where it can): a bump allocator over a static block,
// as musl's malloc is slow on a failing hook's bookkeeping (see os/arena.rs).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: buildlock_core::os::arena::Arena = buildlock_core::os::arena::Arena;

const USAGE: &str = "\
pre-commit: buildlock's git hook. git runs it on every commit; run by hand, it checks once.

Usage: <hooks dir>/pre-commit     (git passes no arguments)
       pre-commit --help | --version

It runs the repository's check (`check` in .buildlock.toml, else the hook that was there before
buildlock, kept in <git common dir>/buildlock/chained/pre-commit). When the check fails, exactly
one agent becomes the FIXER; the others wait for the fix (coordination.wait), then go on.

Exit codes: 0 the check passed; 1 it failed and you are the fixer (or just gave the role up);
75 it failed and another agent is fixing; 78 a configuration error; 128+n ended by signal n.

Environment: BUILDLOCK=0 runs the check and coordinates nothing; BUILDLOCK_AGENT is your agent id;
BUILDLOCK_CONFIG names one more configuration file.
See also: `git buildlock status`, `git buildlock doctor`; skip the hook once: `git commit --no-verify`.";

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    signals::ignore_sigpipe();
    // SAFETY: main's own argc and argv.
    let mut args: Vec<std::ffi::OsString> = unsafe { env::args_of_main(argc, argv) };
    if args.first().is_some_and(|a| a == "--hook-script") {
        args.drain(..args.len().min(2));
    }
    match args.first().and_then(|a| a.to_str()) {
        Some("--help" | "-h") => {
            let _ = say::out(USAGE);
            return 0;
        }
        Some("--version" | "-V") => {
            let _ = say::out(concat!(
                "pre-commit (buildlock) ",
                env!("CARGO_PKG_VERSION")
            ));
            return 0;
        }
        _ => {}
    }
    // Run as the pre-commit framework's legacy hook (`pre-commit install` after buildlock), the
    // check we chain may be that framework again, run from elsewhere: its recursion guard
    // ("installed in migration mode") must not fire there.
    buildlock_core::os::env::forget_pre_commit_legacy();
    buildlock_core::flows::commit::hook::main(args)
}
