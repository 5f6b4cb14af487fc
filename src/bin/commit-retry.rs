//! `commit-retry [git commit arguments]`: git commit that waits for another agent's fix and
//! retries, or runs `fix.command` when elected fixer.
//!
//! Every argument goes to `git commit` untouched, except a FIRST argument of exactly `--help`,
//! `-h` or `--version`, which is answered here without running git (`git commit -h` still shows
//! git's own options).

// No Rust runtime start-up (`no_main`): every commit through commit-retry pays for the wrapper's
// start, and std's (stack-guard probing of /proc/self/maps and friends) is a tenth of a
// millisecond of it. What it did that we need is done below.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

use buildlock_core::os::{env, say, signals};

// Built against musl (install.sh does so where it can): a bump allocator over a static block,
// as musl's malloc is slow on a failing hook's bookkeeping (see os/arena.rs).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: buildlock_core::os::arena::Arena = buildlock_core::os::arena::Arena;

const USAGE: &str = "\
commit-retry: `git commit` that waits for another agent's fix and retries.

Usage: git commit-retry [git commit arguments]      (the alias buildlock's install.sh adds)
       commit-retry --help | --version

Every argument goes to `git commit` as it is (`git commit -h` lists them); only a first argument
of exactly --help, -h or --version is answered here.

If the check fails while another agent is fixing it, commit-retry waits for their fix
(coordination.wait), runs retry.refresh, and commits again (retry.attempts in all). If you are
elected FIXER, it runs fix.command holding the fixer role and commits again; with no fix.command
it stops and tells you to fix the failure yourself.

Exit codes: 0 committed; 1 you are the fixer and there is no fix.command, or the fix failed
max_fix_attempts times; 75 still blocked by another fixer after retry.attempts; 78 a configuration
error; 128+n ended by signal n; any other code is git's own, passed through (no retry).

Environment: BUILDLOCK_AGENT is your agent id; BUILDLOCK=0 coordinates nothing.
See also: `git buildlock status`, `git buildlock release` (give the fixer role up).";

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    signals::ignore_sigpipe();
    // SAFETY: main's own argc and argv.
    let args: Vec<std::ffi::OsString> = unsafe { env::args_of_main(argc, argv) };
    match args.first().and_then(|a| a.to_str()) {
        Some("--help" | "-h") => {
            let _ = say::out(USAGE);
            return 0;
        }
        Some("--version") => {
            let _ = say::out(concat!(
                "commit-retry (buildlock) ",
                env!("CARGO_PKG_VERSION")
            ));
            return 0;
        }
        _ => {}
    }
    buildlock_core::flows::commit::retry::front(args)
}
