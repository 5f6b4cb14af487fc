//! The pre-commit hook: runs the repository's check and elects one fixer per breakage.
//!
//! git runs it with no arguments. A first argument of `--help`/`-h` or `--version`/`-V` is
//! answered here, before anything is loaded: the check never runs for it.

use buildlock_core::os::say;

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

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("--help" | "-h") => {
            let _ = say::out(USAGE);
            std::process::exit(0);
        }
        Some("--version" | "-V") => {
            let _ = say::out(concat!(
                "pre-commit (buildlock) ",
                env!("CARGO_PKG_VERSION")
            ));
            std::process::exit(0);
        }
        _ => {}
    }
    std::process::exit(buildlock_core::flows::hook::main(args));
}
