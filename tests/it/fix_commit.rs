//! The fix commit every waiter is handed holds the fix and nothing else: not the fixer's own
//! staged, unstaged or untracked work, however the fix stages, and not after a kill.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// A repository whose build is broken in `build.txt` (its first line), with a check that says
/// what broke, and `fix` as `fix.command`. Also committed: `a.txt`.
fn broken(fix: &str) -> TestRepo {
    let r = TestRepo::new("");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"head -n 1 build.txt | grep -qx ok || {{ echo 'error: build.txt line 1 is not ok'; exit 1; }}\"\n\
             [fix]\ncommand = '{fix}'\n"
        ),
    )
    .unwrap();
    std::fs::write(r.dir.join("build.txt"), "broken\n2\n3\n4\n5\n6\nlast\n").unwrap();
    std::fs::write(r.dir.join("a.txt"), "a\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "broken build", "--no-verify"]);
    r
}

/// What an LLM fixer typically runs: repair, then `git add -A`.
const ADD_ALL_FIX: &str = "sed -i 1s/.*/ok/ build.txt && git add -A";

fn files_of(r: &TestRepo, rev: &str) -> Vec<String> {
    text(&r.git(&["show", "--format=", "--name-only", rev]).stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn fix_commit(r: &TestRepo) -> String {
    r.state()["keys"][0]["fix_commit"]
        .as_str()
        .unwrap_or_else(|| panic!("no fix commit on record: {}", r.state()))
        .to_owned()
}

/// The agent's own work of every kind: `mine.txt` staged, an unstaged edit of `a.txt`, an
/// untracked `notes.txt`.
fn own_work(dir: &Path, r: &TestRepo) {
    std::fs::write(dir.join("mine.txt"), "mine\n").unwrap();
    r.git_in(dir, &["add", "mine.txt"]);
    std::fs::write(dir.join("a.txt"), "a, my unstaged edit\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "private notes\n").unwrap();
}

/// The own work is where it was: `a.txt` unstaged, `notes.txt` untracked.
fn assert_own_work_kept(r: &TestRepo, dir: &Path) {
    let status = text(&r.git_in(dir, &["status", "--porcelain"]).stdout);
    assert_eq!(status, " M a.txt\n?? notes.txt\n", "{status}");
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).unwrap(),
        "a, my unstaged edit\n"
    );
}

#[test]
fn a_git_add_all_fix_commits_the_fix_alone_and_leaves_the_own_work_where_it_was() {
    let r = broken(ADD_ALL_FIX);
    own_work(&r.dir, &r);
    let out = wait_output(r.commit_retry(&r.dir, "fixer"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fix = fix_commit(&r);
    assert_eq!(files_of(&r, &fix), ["build.txt"], "{err}");
    assert_eq!(r.last_subject(&r.dir), "fixer work");
    assert_eq!(files_of(&r, "HEAD"), ["mine.txt"], "{err}");
    assert_eq!(text(&r.git(&["rev-parse", "HEAD~1"]).stdout).trim(), fix);
    assert_own_work_kept(&r, &r.dir);
    assert!(
        !err.contains("not staged (a.txt"),
        "the agent's own edit is not the fix's: {err}"
    );
}

#[test]
fn a_fix_in_the_file_of_an_unstaged_own_edit_commits_only_the_fix() {
    let r = broken("sed -i 1s/.*/ok/ build.txt && git add build.txt");
    r.stage_change(&r.dir, "mine.txt");
    // The agent's own unstaged edit, in the very file the fix repairs (another line).
    std::fs::write(r.dir.join("build.txt"), "broken\n2\n3\n4\n5\n6\nmy edit\n").unwrap();
    let out = wait_output(r.commit_retry(&r.dir, "fixer"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fix = fix_commit(&r);
    assert_eq!(
        text(&r.git(&["show", &format!("{fix}:build.txt")]).stdout),
        "ok\n2\n3\n4\n5\n6\nlast\n",
        "the fix commit holds the fix, not the agent's edit: {err}"
    );
    assert_eq!(files_of(&r, "HEAD"), ["mine.txt"]);
    assert_eq!(
        std::fs::read_to_string(r.dir.join("build.txt")).unwrap(),
        "ok\n2\n3\n4\n5\n6\nmy edit\n"
    );
    assert_eq!(
        text(&r.git(&["status", "--porcelain"]).stdout),
        " M build.txt\n",
        "the agent's edit stays unstaged"
    );
}

#[test]
fn the_fix_commit_says_what_broke() {
    let r = broken(ADD_ALL_FIX);
    r.stage_change(&r.dir, "mine.txt");
    let out = wait_output(r.commit_retry(&r.dir, "fixer"), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fix = fix_commit(&r);
    let subject = text(&r.git(&["log", "-1", "--format=%s", &fix]).stdout);
    assert!(
        subject.contains("build.txt line 1 is not ok"),
        "the title says what broke: {subject}"
    );
}

/// commit-retry killed after the fix staged everything (`git add -A`) and before the fix was
/// committed alone: the next run completes the fix apart, and what is handed over is the fix.
#[test]
fn a_fixer_killed_between_staging_and_committing_the_fix_hands_over_the_fix_alone() {
    let r = broken(ADD_ALL_FIX);
    own_work(&r.dir, &r);
    let killed = r
        .commit_retry_cmd(&r.dir, "fixer")
        .env("BUILDLOCK_FAULT", "fix-done")
        .spawn()
        .unwrap();
    let out = wait_output(killed, Duration::from_secs(60));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "{}",
        text(&out.stderr)
    );
    // The agent runs its commit again.
    let out = wait_output(r.commit_retry(&r.dir, "fixer"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fix = fix_commit(&r);
    assert_eq!(files_of(&r, &fix), ["build.txt"], "{err}");
    assert_eq!(files_of(&r, "HEAD"), ["mine.txt"], "{err}");
    assert_own_work_kept(&r, &r.dir);
}
