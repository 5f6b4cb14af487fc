//! Help and version of all three programs, and clap's usage errors (exit 2). The hook and
//! commit-retry answer --help/--version without running the check or git: a check that writes a
//! marker file proves it.

use crate::harness::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(r: &TestRepo, program: &str, args: &[&str]) -> Assert {
    r.cmd(program, &r.dir)
        .args(args)
        .assert()
        .append_context("args", format!("{args:?}"))
}

#[test]
fn buildlock_help_and_version_for_every_command() {
    let r = TestRepo::new("check = \"true\"\n");
    run(&r, BUILDLOCK, &["--version"])
        .code(0)
        .stdout(predicate::str::diff(format!("buildlock {VERSION}")).trim());
    for args in [&["--help"][..], &["-h"], &["help"]] {
        run(&r, BUILDLOCK, args)
            .code(0)
            .stdout(contains("Usage: buildlock <COMMAND>").and(contains("Exit codes")));
    }
    let commands = [
        "status",
        "release",
        "reset",
        "log",
        "doctor",
        "demo",
        "completions",
    ];
    for command in commands {
        for args in [vec![command, "--help"], vec!["help", command]] {
            run(&r, BUILDLOCK, &args)
                .code(0)
                .stdout(contains(format!("Usage: buildlock {command}")));
        }
    }
    // `help` is a command like the others: it has a help of its own.
    run(&r, BUILDLOCK, &["help", "--help"])
        .code(0)
        .stdout(contains("Usage: buildlock help"));
    run(&r, BUILDLOCK, &["help", "frobnicate"])
        .code(2)
        .stderr(contains("frobnicate"));
    // Options appear in their command's help.
    run(&r, BUILDLOCK, &["log", "--help"]).stdout(contains("--json").and(contains("-n <N>")));
    // The help did not touch the repository's coordination state.
    assert!(!r.buildlock_dir().join("history.jsonl").exists());
}

#[test]
fn buildlock_usage_errors_exit_2() {
    let r = TestRepo::new("check = \"true\"\n");
    for args in [
        &[][..],
        &["frobnicate"],
        &["demo", "--bogus"],
        &["status", "extra"],
        &["log", "-n"],
        &["log", "-n", "many"],
        &["log", "-n", "-1"],
        &["release", "now"],
        &["reset", "a", "b"],
        &["completions", "tcsh"],
    ] {
        // clap says what was wrong and where to read more (no command at all: the help).
        run(&r, BUILDLOCK, args).code(2).stderr(
            contains("error:")
                .and(contains("--help"))
                .or(contains("Usage: buildlock")),
        );
    }
}

#[test]
fn completions_for_bash_zsh_fish() {
    let r = TestRepo::new("");
    for shell in ["bash", "zsh", "fish"] {
        run(&r, BUILDLOCK, &["completions", shell])
            .code(0)
            .stdout(contains("buildlock").and(contains("doctor")));
    }
    // bash accepts what it generated.
    let out = run(&r, BUILDLOCK, &["completions", "bash"]).success();
    let script = r.root.join("completion.bash");
    std::fs::write(&script, &out.get_output().stdout).unwrap();
    r.cmd("bash", &r.dir)
        .arg("-c")
        .arg(format!(". {} && complete -p buildlock", script.display()))
        .assert()
        .success();
}

/// A repository whose check writes a marker file, with a staged change.
fn marker_repo() -> (TestRepo, std::path::PathBuf) {
    let r = TestRepo::new("");
    let marker = r.shared("check-ran");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("check = \"touch '{}'\"\n", marker.display()),
    )
    .unwrap();
    r.stage_change(&r.dir, "change.txt");
    (r, marker)
}

#[test]
fn the_hook_answers_help_and_version_without_running_the_check() {
    let (r, marker) = marker_repo();
    for flag in ["--help", "-h"] {
        run(&r, PRE_COMMIT, &[flag])
            .code(0)
            .stdout(contains("Usage:").and(contains("Exit codes")));
    }
    for flag in ["--version", "-V"] {
        run(&r, PRE_COMMIT, &[flag])
            .code(0)
            .stdout(predicate::str::diff(format!("pre-commit (buildlock) {VERSION}")).trim());
    }
    assert!(!marker.exists(), "the check ran for --help/--version");
    // The control: run plainly, the hook does run the check and writes the marker.
    run(&r, PRE_COMMIT, &[]).code(0);
    assert!(marker.exists());
}

#[test]
fn commit_retry_answers_help_and_version_without_running_git() {
    let (r, marker) = marker_repo();
    let head = text(&r.git(&["rev-parse", "HEAD"]).stdout);
    for flag in ["--help", "-h", "--version"] {
        let out = run(&r, COMMIT_RETRY, &[flag]).code(0);
        if flag == "--version" {
            out.stdout(predicate::str::diff(format!("commit-retry (buildlock) {VERSION}")).trim());
        } else {
            out.stdout(contains("Usage: git commit-retry").and(contains("Exit codes")));
        }
    }
    assert!(!marker.exists(), "the check ran for --help/--version");
    assert_eq!(text(&r.git(&["rev-parse", "HEAD"]).stdout), head);
    // Only a FIRST argument is ours: later ones are git's (here `-m` and its message).
    run(&r, COMMIT_RETRY, &["-q", "-m", "--help"]).code(0);
    assert_eq!(r.last_subject(&r.dir), "--help");
    assert!(marker.exists(), "the control commit ran the check");
}
