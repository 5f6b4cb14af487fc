//! `commit-retry [git commit arguments]`: git commit that waits for another agent's fix and
//! retries, or runs `fix.command` when elected fixer.
fn main() {
    std::process::exit(buildlock_core::flows::retry::main(
        std::env::args_os().skip(1).collect(),
    ));
}
