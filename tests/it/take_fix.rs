//! `buildlock take-fix [COMMIT]`: the fix comes into the work tree and every kind of local work
//! stays as it was, one kind per test; when it cannot take the fix it changes nothing.

use crate::harness::*;
use std::path::Path;

/// A repository on `main` whose `dep.rs` is broken, with `a.txt` and `b.txt` committed, and a
/// fix commit (`dep.rs` fixed) made in a worktree on branch `fixer`: the repository, the fix.
fn with_a_fix() -> (TestRepo, String) {
    let r = TestRepo::new("");
    std::fs::write(r.dir.join("dep.rs"), "broken\n").unwrap();
    std::fs::write(r.dir.join("a.txt"), "a\n").unwrap();
    std::fs::write(r.dir.join("b.txt"), "b\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "base", "--no-verify"]);
    let fix = make_fix(&r);
    // This branch moved on since: taking the fix is a cherry-pick, not a fast-forward.
    std::fs::write(r.dir.join("c.txt"), "c\n").unwrap();
    r.git(&["add", "c.txt"]);
    r.git(&["commit", "-q", "-m", "c", "--no-verify"]);
    (r, fix)
}

/// The fix commit, made in a worktree of its own on branch `fixer`.
fn make_fix(r: &TestRepo) -> String {
    let wt = r.worktree("fixer");
    std::fs::write(wt.join("dep.rs"), "fixed\n").unwrap();
    r.git_in(
        &wt,
        &[
            "commit",
            "-q",
            "-am",
            "Fix the build: dep.rs",
            "--no-verify",
        ],
    );
    r.head(&wt)
}

fn take_fix(r: &TestRepo, dir: &Path, fix: &str) -> Assert {
    r.cmd(BUILDLOCK, dir).args(["take-fix", fix]).assert()
}

fn git_text(r: &TestRepo, args: &[&str]) -> String {
    text(&r.git(args).stdout)
}

/// The fix is in HEAD (a new commit on the old HEAD, with the fix's change) and in the work tree.
fn assert_taken(r: &TestRepo, before: &str) {
    assert!(
        git_text(r, &["log", "-1", "--format=%B"]).contains("cherry picked from commit"),
        "a cherry-pick"
    );
    assert_eq!(git_text(r, &["rev-parse", "HEAD~1"]).trim(), before);
    assert_eq!(git_text(r, &["show", "HEAD:dep.rs"]), "fixed\n");
    assert_eq!(
        std::fs::read_to_string(r.dir.join("dep.rs")).unwrap(),
        "fixed\n"
    );
    assert_eq!(
        git_text(r, &["show", "--format=", "--name-only", "HEAD"]),
        "dep.rs\n"
    );
}

#[test]
fn staged_work_stays_staged() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    std::fs::write(r.dir.join("a.txt"), "a staged\n").unwrap();
    std::fs::write(r.dir.join("new.txt"), "new staged\n").unwrap();
    r.git(&["add", "a.txt", "new.txt"]);
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(
        git_text(&r, &["status", "--porcelain"]),
        "M  a.txt\nA  new.txt\n"
    );
    assert_eq!(git_text(&r, &["show", ":a.txt"]), "a staged\n");
}

#[test]
fn unstaged_work_stays_unstaged() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    std::fs::write(r.dir.join("a.txt"), "a unstaged\n").unwrap();
    // Staged and then changed again: both layers kept.
    std::fs::write(r.dir.join("b.txt"), "b staged\n").unwrap();
    r.git(&["add", "b.txt"]);
    std::fs::write(r.dir.join("b.txt"), "b staged, then more\n").unwrap();
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(
        git_text(&r, &["status", "--porcelain"]),
        " M a.txt\nMM b.txt\n"
    );
    assert_eq!(git_text(&r, &["show", ":b.txt"]), "b staged\n");
    assert_eq!(
        std::fs::read_to_string(r.dir.join("b.txt")).unwrap(),
        "b staged, then more\n"
    );
}

#[test]
fn untracked_and_ignored_files_stay() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    std::fs::write(r.dir.join(".git/info/exclude"), "*.log\n").unwrap();
    std::fs::write(r.dir.join("notes.txt"), "private notes\n").unwrap();
    std::fs::write(r.dir.join("build.log"), "ignored\n").unwrap();
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(git_text(&r, &["status", "--porcelain"]), "?? notes.txt\n");
    assert_eq!(
        std::fs::read_to_string(r.dir.join("build.log")).unwrap(),
        "ignored\n"
    );
}

#[test]
fn intent_to_add_entries_stay() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    std::fs::write(r.dir.join("planned.txt"), "planned\n").unwrap();
    r.git(&["add", "-N", "planned.txt"]);
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(git_text(&r, &["status", "--porcelain"]), " A planned.txt\n");
}

#[test]
fn an_assume_unchanged_files_local_edit_stays() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    r.git(&["update-index", "--assume-unchanged", "a.txt"]);
    std::fs::write(r.dir.join("a.txt"), "my local setting\n").unwrap();
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(
        std::fs::read_to_string(r.dir.join("a.txt")).unwrap(),
        "my local setting\n"
    );
    assert!(
        git_text(&r, &["ls-files", "-v", "a.txt"]).starts_with("h "),
        "still assume-unchanged"
    );
}

#[test]
fn a_skip_worktree_files_local_edit_stays() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    r.git(&["update-index", "--skip-worktree", "b.txt"]);
    std::fs::write(r.dir.join("b.txt"), "my local b\n").unwrap();
    take_fix(&r, &r.dir, &fix).success();
    assert_taken(&r, &before);
    assert_eq!(
        std::fs::read_to_string(r.dir.join("b.txt")).unwrap(),
        "my local b\n"
    );
    assert!(
        git_text(&r, &["ls-files", "-v", "b.txt"]).starts_with("S "),
        "still skip-worktree"
    );
}

/// A submodule with a local commit and a dirty file, with `submodule.recurse = true`: both stay.
#[test]
fn a_submodules_local_commit_and_dirty_work_stay_with_submodule_recurse() {
    let r = TestRepo::new("");
    let lib = r.root.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    r.git_in(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.rs"), "lib\n").unwrap();
    r.git_in(&lib, &["add", "-A"]);
    r.git_in(&lib, &["commit", "-q", "-m", "lib"]);
    std::fs::write(r.dir.join("dep.rs"), "broken\n").unwrap();
    r.git(&["add", "dep.rs"]);
    r.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        lib.to_str().unwrap(),
        "lib",
    ]);
    r.git(&["commit", "-q", "-m", "base", "--no-verify"]);
    let fix = make_fix(&r);
    let before = r.head(&r.dir);
    r.git(&["config", "submodule.recurse", "true"]);
    let sub = r.dir.join("lib");
    std::fs::write(sub.join("lib.rs"), "my local lib commit\n").unwrap();
    r.git_in(&sub, &["commit", "-q", "-am", "local lib work"]);
    let sub_head = r.head(&sub);
    std::fs::write(sub.join("lib.rs"), "dirty lib\n").unwrap();
    take_fix(&r, &r.dir, &fix).success();
    assert_eq!(git_text(&r, &["rev-parse", "HEAD~1"]).trim(), before);
    assert_eq!(git_text(&r, &["show", "HEAD:dep.rs"]), "fixed\n");
    assert_eq!(r.head(&sub), sub_head, "the submodule's local commit stays");
    assert_eq!(
        std::fs::read_to_string(sub.join("lib.rs")).unwrap(),
        "dirty lib\n"
    );
}

fn assert_nothing_changed(r: &TestRepo, head: &str, status: &str) {
    assert_eq!(r.head(&r.dir), head, "HEAD did not move");
    assert_eq!(git_text(r, &["status", "--porcelain"]), status);
}

#[test]
fn during_a_merge_it_refuses_and_changes_nothing() {
    let (r, fix) = with_a_fix();
    r.git(&["checkout", "-q", "-b", "side"]);
    std::fs::write(r.dir.join("side.txt"), "side\n").unwrap();
    r.git(&["add", "side.txt"]);
    r.git(&["commit", "-q", "-m", "side", "--no-verify"]);
    r.git(&["checkout", "-q", "main"]);
    std::fs::write(r.dir.join("a.txt"), "a on main\n").unwrap();
    r.git(&["commit", "-q", "-am", "main moves", "--no-verify"]);
    r.git(&["merge", "-q", "--no-commit", "--no-ff", "side"]);
    let head = r.head(&r.dir);
    take_fix(&r, &r.dir, &fix)
        .code(75)
        .stderr(contains("a merge is in progress"));
    assert_nothing_changed(&r, &head, "A  side.txt\n");
    assert!(r.dir.join(".git/MERGE_HEAD").exists());
}

#[test]
fn during_a_rebase_it_refuses_and_changes_nothing() {
    let (r, fix) = with_a_fix();
    std::fs::write(r.dir.join("a.txt"), "a, one more\n").unwrap();
    r.git(&["commit", "-q", "-am", "one more", "--no-verify"]);
    // A rebase that stops on a failing exec.
    let stopped = r
        .cmd("git", &r.dir)
        .args(["rebase", "-q", "-x", "false", "HEAD~1"])
        .output()
        .unwrap();
    assert!(!stopped.status.success());
    let head = r.head(&r.dir);
    take_fix(&r, &r.dir, &fix)
        .code(75)
        .stderr(contains("a rebase is in progress"));
    assert_nothing_changed(&r, &head, "");
}

#[test]
fn local_work_in_a_file_the_fix_changes_is_refused_naming_it_and_nothing_changes() {
    let (r, fix) = with_a_fix();
    let head = r.head(&r.dir);
    std::fs::write(r.dir.join("dep.rs"), "my own attempt\n").unwrap();
    take_fix(&r, &r.dir, &fix)
        .code(75)
        .stderr(contains("dep.rs"));
    assert_nothing_changed(&r, &head, " M dep.rs\n");
    assert_eq!(
        std::fs::read_to_string(r.dir.join("dep.rs")).unwrap(),
        "my own attempt\n"
    );
}

#[test]
fn the_default_commit_is_buildlock_fix_commit_and_a_second_take_is_a_no_op() {
    let (r, fix) = with_a_fix();
    let before = r.head(&r.dir);
    r.cmd(BUILDLOCK, &r.dir)
        .arg("take-fix")
        .env("BUILDLOCK_FIX_COMMIT", &fix)
        .assert()
        .success();
    assert_taken(&r, &before);
    let head = r.head(&r.dir);
    take_fix(&r, &r.dir, &fix).success();
    assert_eq!(r.head(&r.dir), head, "taken once");
    // Without any fix commit: nothing to do.
    r.cmd(BUILDLOCK, &r.dir).arg("take-fix").assert().success();
}

// regression: the commit named on the command line was cut by bytes, and a non-ASCII one panicked
#[test]
fn a_commit_name_that_is_no_commit_changes_nothing_and_does_not_panic() {
    let (r, _) = with_a_fix();
    let head = r.head(&r.dir);
    let status = git_text(&r, &["status", "--porcelain"]);
    for name in ["aéééééééééééé", "0123abc\u{1b}[2J"] {
        take_fix(&r, &r.dir, name)
            .code(75)
            .stderr(predicates::str::contains("is not in this repository"))
            .stderr(predicates::str::contains("\u{1b}").not());
    }
    assert_nothing_changed(&r, &head, &status);
}
