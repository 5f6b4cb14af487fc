//! The pre-commit hook: runs the repository's check and elects one fixer per breakage.
fn main() {
    std::process::exit(buildlock_core::flows::hook::main(
        std::env::args_os().skip(1).collect(),
    ));
}
