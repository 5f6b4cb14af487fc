//! The pre-commit hook: runs the repository's check and elects one fixer per breakage.
//!
//! The hook file install.sh writes is a script whose interpreter is this binary
//! (`#!<git common dir>/buildlock/bin/pre-commit --hook-script`): the kernel starts it directly,
//! as cheap as the bare binary, while hook managers still read a small text file. The kernel puts
//! `--hook-script <hook file>` before git's arguments; they are dropped here, so the check
//! (a chained hook) gets exactly git's.
fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--hook-script") {
        args.drain(..args.len().min(2));
    }
    // Run as the pre-commit framework's legacy hook (`pre-commit install` after buildlock), the
    // check we chain may be that framework again, run from elsewhere: its recursion guard
    // ("installed in migration mode") must not fire there.
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { std::env::remove_var("PRE_COMMIT_RUNNING_LEGACY") };
    std::process::exit(buildlock_core::hook::main(args));
}
