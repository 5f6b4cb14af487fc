//! Help and version of all three programs, and clap's usage errors (exit 2). The hook and
//! commit-retry answer --help/--version without running the check or git: a check that writes a
//! marker file proves it.

use crate::harness::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(r: &TestRepo, program: &str, args: &[&str]) -> std::process::Output {
    r.cmd(program, &r.dir).args(args).output().unwrap()
}

#[test]
fn buildlock_help_and_version_for_every_command() {
    let r = TestRepo::new("check = \"true\"\n");
    let out = run(&r, BUILDLOCK, &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), format!("buildlock {VERSION}"));
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = run(&r, BUILDLOCK, args);
        let s = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            s.contains("Usage: buildlock <COMMAND>") && s.contains("Exit codes"),
            "{s}"
        );
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
            let out = run(&r, BUILDLOCK, &args);
            let s = text(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?}: {}",
                text(&out.stderr)
            );
            assert!(
                s.contains(&format!("Usage: buildlock {command}")),
                "{args:?}: {s}"
            );
        }
    }
    // Options appear in their command's help.
    let s = text(&run(&r, BUILDLOCK, &["log", "--help"]).stdout);
    assert!(s.contains("--json") && s.contains("-n <N>"), "{s}");
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
        let out = run(&r, BUILDLOCK, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        // clap says what was wrong and where to read more (no command at all: the help).
        let e = text(&out.stderr);
        assert!(
            (e.contains("error:") && e.contains("--help")) || e.contains("Usage: buildlock"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn completions_for_bash_zsh_fish() {
    let r = TestRepo::new("");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&r, BUILDLOCK, &["completions", shell]);
        let s = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            s.contains("buildlock") && s.contains("doctor"),
            "{shell}: {s}"
        );
    }
    // bash accepts what it generated.
    let out = run(&r, BUILDLOCK, &["completions", "bash"]);
    let script = r.root.join("completion.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let mut c = r.cmd("bash", &r.dir);
    c.arg("-c")
        .arg(format!(". {} && complete -p buildlock", script.display()));
    let check = c.output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
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
        let out = run(&r, PRE_COMMIT, &[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let s = text(&out.stdout);
        assert!(
            s.contains("Usage:") && s.contains("Exit codes"),
            "{flag}: {s}"
        );
    }
    for flag in ["--version", "-V"] {
        let out = run(&r, PRE_COMMIT, &[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(
            text(&out.stdout).trim(),
            format!("pre-commit (buildlock) {VERSION}")
        );
    }
    assert!(!marker.exists(), "the check ran for --help/--version");
    // The control: run plainly, the hook does run the check and writes the marker.
    assert_eq!(run(&r, PRE_COMMIT, &[]).status.code(), Some(0));
    assert!(marker.exists());
}

#[test]
fn commit_retry_answers_help_and_version_without_running_git() {
    let (r, marker) = marker_repo();
    let head = text(&r.git(&["rev-parse", "HEAD"]).stdout);
    for flag in ["--help", "-h", "--version"] {
        let out = run(&r, COMMIT_RETRY, &[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        let s = text(&out.stdout);
        if flag == "--version" {
            assert_eq!(s.trim(), format!("commit-retry (buildlock) {VERSION}"));
        } else {
            assert!(
                s.contains("Usage: git commit-retry") && s.contains("Exit codes"),
                "{s}"
            );
        }
    }
    assert!(!marker.exists(), "the check ran for --help/--version");
    assert_eq!(text(&r.git(&["rev-parse", "HEAD"]).stdout), head);
    // Only a FIRST argument is ours: later ones are git's (here `-m` and its message).
    let out = run(&r, COMMIT_RETRY, &["-q", "-m", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "--help");
    assert!(marker.exists(), "the control commit ran the check");
}
