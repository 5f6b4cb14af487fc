//! Every way a commit reaches git runs the hook: `git commit-retry` from a subdirectory of any
//! worktree with any core.hooksPath, and a merge git makes without a conflict (pre-merge-commit).
//! Installed with install.sh, as users install it.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Output;

fn install(r: &TestRepo, args: &[&str]) -> Output {
    let mut c = r.cmd("sh", &r.dir);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .arg("--bin-dir")
        .arg(Path::new(PRE_COMMIT).parent().unwrap())
        .args(args);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out
}

/// A repository without the test harness's hook, whose committed check logs each run.
fn repo(check: &str) -> (TestRepo, PathBuf) {
    let r = TestRepo::new("");
    std::fs::remove_file(r.dir.join(".git/hooks/pre-commit")).unwrap();
    let witness = r.root.join("witness");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("check = \"echo ran >> '{}'; {check}\"\n", witness.display()),
    )
    .unwrap();
    std::fs::create_dir_all(r.dir.join("sub")).unwrap();
    std::fs::write(r.dir.join("sub/file"), "0\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "config", "--no-verify"]);
    (r, witness)
}

fn runs(witness: &Path) -> usize {
    std::fs::read_to_string(witness).map_or(0, |s| s.lines().count())
}

#[test]
fn commit_retry_from_a_subdirectory_of_any_worktree_runs_the_hook() {
    let abs = tempfile::tempdir().unwrap();
    let absolute = abs.path().canonicalize().unwrap();
    for hooks_path in [None, Some(".githooks"), Some(absolute.to_str().unwrap())] {
        let (r, witness) = repo("true");
        if let Some(p) = hooks_path {
            r.git(&["config", "core.hooksPath", p]);
        }
        install(&r, &[]);
        // The committed folder goes to the worktrees with the branch.
        r.git(&["add", "-A"]);
        r.git(&[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "hooks",
            "--no-verify",
        ]);
        let wt = r.worktree("wt");
        for (i, top) in [r.dir.clone(), wt].iter().enumerate() {
            let sub = top.join("sub");
            std::fs::write(sub.join("file"), format!("changed {i}\n")).unwrap();
            r.git_in(&sub, &["add", "file"]);
            let before = runs(&witness);
            let head = r.head(top);
            let out = r
                .cmd("git", &sub)
                .args(["commit-retry", "-q", "-m", "from sub"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "hooksPath {hooks_path:?}, in {}: {:?} {}",
                top.display(),
                out.status,
                text(&out.stderr)
            );
            assert_ne!(r.head(top), head, "the commit was made");
            assert_eq!(
                runs(&witness),
                before + 1,
                "hooksPath {hooks_path:?}, in {}: commit-retry from sub/ ran no hook\n{}",
                top.display(),
                text(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&absolute);
        std::fs::create_dir_all(&absolute).unwrap();
    }
}

/// main and a branch `side` that breaks the build (a file BROKEN), merged without conflict.
fn diverged(r: &TestRepo) {
    r.git(&["checkout", "-q", "-b", "side"]);
    std::fs::write(r.dir.join("BROKEN"), "x\n").unwrap();
    r.git(&["add", "BROKEN"]);
    r.git(&["commit", "-q", "-m", "breaks", "--no-verify"]);
    r.git(&["checkout", "-q", "main"]);
    std::fs::write(r.dir.join("other"), "x\n").unwrap();
    r.git(&["add", "other"]);
    r.git(&["commit", "-q", "-m", "other", "--no-verify"]);
}

fn merge(r: &TestRepo) -> Output {
    r.cmd("git", &r.dir)
        .args(["merge", "-q", "--no-edit", "side"])
        .env("BUILDLOCK_AGENT", "merger")
        .output()
        .unwrap()
}

#[test]
fn a_clean_merge_over_a_broken_build_is_checked_and_coordinated() {
    let (r, witness) = repo("test ! -e BROKEN");
    install(&r, &[]);
    assert!(r.dir.join(".git/hooks/pre-merge-commit").is_file());
    diverged(&r);
    let head = r.head(&r.dir);
    let out = merge(&r);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(r.head(&r.dir), head, "the merge did not land");
    assert_eq!(runs(&witness), 1);
    let state = r.state();
    assert!(
        state.to_string().contains("merger"),
        "the merger is the fixer: {state}"
    );
    r.git(&["merge", "--abort"]);

    // Uninstalled: no hook of ours left behind, and merges are git's own again.
    let out = r
        .cmd("sh", &r.dir)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--uninstall"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!r.dir.join(".git/hooks/pre-merge-commit").exists());
    assert!(merge(&r).status.success());
}

#[test]
fn a_previous_pre_merge_commit_hook_is_chained_and_restored() {
    let (r, witness) = repo("true");
    let theirs = format!(
        "#!/bin/sh\necho theirs >> '{}'\ntest -z \"$1\" && test -n \"$GIT_INDEX_FILE\"\n",
        witness.display()
    );
    let hook = r.dir.join(".git/hooks/pre-merge-commit");
    std::fs::write(&hook, &theirs).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    install(&r, &[]);
    diverged(&r);
    std::fs::remove_file(r.dir.join("BROKEN")).ok();
    let out = merge(&r);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(&witness).unwrap();
    assert_eq!(log, "ran\ntheirs\n", "buildlock's check, then their hook");
    install(&r, &[]); // twice: nothing changes
    let out = r
        .cmd("sh", &r.dir)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh"))
        .args(["--uninstall"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&hook).unwrap(), theirs);
}
