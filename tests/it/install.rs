//! install.sh into fresh temporary repositories, with the test build's binaries (`--bin-dir`).

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

fn install_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh")
}

fn bin_dir() -> PathBuf {
    Path::new(PRE_COMMIT).parent().unwrap().to_owned()
}

fn install(r: &TestRepo, dir: &Path, args: &[&str]) -> Output {
    let mut c = r.cmd("sh", dir);
    c.arg(install_sh())
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(args);
    c.output().unwrap()
}

/// A repository without buildlock's hook.
fn bare_repo() -> TestRepo {
    let r = TestRepo::new("");
    std::fs::remove_file(r.dir.join(".git/hooks/pre-commit")).unwrap();
    std::fs::remove_file(r.dir.join(".buildlock.toml")).unwrap();
    r.git(&["commit", "-q", "-am", "no config", "--no-verify"]);
    r
}

/// Every file under `dir` with its bytes and mode (symlinks as their target).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                out.push((
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                    0,
                ));
            } else {
                out.push((
                    p.clone(),
                    std::fs::read(&p).unwrap(),
                    meta.permissions().mode(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn git_config(r: &TestRepo) -> String {
    std::fs::read_to_string(r.dir.join(".git/config")).unwrap()
}

#[test]
fn plain_repository() {
    let r = bare_repo();
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("installed the hook") && said.contains("set 'check'"),
        "{said}"
    );
    let hook = r.dir.join(".git/hooks/pre-commit");
    assert_eq!(
        std::fs::read_link(&hook).unwrap(),
        r.dir.join(".git/buildlock/bin/pre-commit")
    );
    assert!(r.dir.join(".buildlock.toml").exists());
    // It works: a failing check elects the committer.
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        "check = \"false\"\n[hook]\nwait = false\n",
    )
    .unwrap();
    r.stage_change(&r.dir, "a");
    let out = r
        .cmd("git", &r.dir)
        .args(["commit-retry", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let status = r
        .cmd("git", &r.dir)
        .args(["buildlock", "status", "--json"])
        .output()
        .unwrap();
    assert!(text(&status.stdout).contains("\"fixing\""));
}

#[test]
fn existing_hook_is_chained_and_restored_exactly() {
    let r = bare_repo();
    let hook = r.dir.join(".git/hooks/pre-commit");
    let marker = r.shared("hand-written-ran");
    let script = format!(
        "#!/bin/sh\ntouch {}\ntest ! -e {}\n",
        marker.display(),
        r.shared("STOP").display()
    );
    std::fs::write(&hook, &script).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o741)).unwrap();
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kept your existing hook"));
    std::fs::remove_file(r.dir.join(".buildlock.toml")).unwrap();

    r.stage_change(&r.dir, "a");
    r.git(&["commit", "-q", "-m", "a"]);
    assert!(
        marker.exists(),
        "the hand-written hook still runs, as the check"
    );
    std::fs::write(r.shared("STOP"), "").unwrap();
    r.stage_change(&r.dir, "b");
    let out = r.cmd(PRE_COMMIT, &r.dir).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "its failure elects a fixer: {}",
        text(&out.stderr)
    );

    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&hook).unwrap(), script);
    assert_eq!(
        std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777,
        0o741
    );
    assert!(!git_config(&r).contains("commit-retry"));
    assert!(
        r.dir.join(".git/buildlock/state").exists(),
        "state kept without --purge"
    );
}

#[test]
fn a_hook_manager_reinstalling_its_hook_is_handled() {
    let r = bare_repo();
    let hook = r.dir.join(".git/hooks/pre-commit");
    let managed = "#!/bin/sh\n# generated by a hook manager\nexit 0\n";
    std::fs::write(&hook, managed).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(install(&r, &r.dir, &[]).status.success());
    // The manager regenerates its hook over ours (as `lefthook install` does on npm install).
    std::fs::remove_file(&hook).unwrap();
    std::fs::write(&hook, managed).unwrap();
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("put back by a hook manager"));
    assert!(std::fs::read_link(&hook).is_ok(), "ours is back in place");
    // A different foreign hook is not silently dropped.
    std::fs::remove_file(&hook).unwrap();
    std::fs::write(&hook, "#!/bin/sh\necho something else\n").unwrap();
    let out = install(&r, &r.dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("a different hook is already kept"));
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\necho something else\n"
    );
}

#[test]
fn core_hooks_path_gets_the_shim() {
    let r = bare_repo();
    std::fs::create_dir_all(r.dir.join(".githooks")).unwrap();
    r.git(&["config", "core.hooksPath", ".githooks"]);
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shim = std::fs::read_to_string(r.dir.join(".githooks/pre-commit")).unwrap();
    assert!(shim.starts_with("#!/bin/sh") && shim.contains("buildlock-hook"));
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        "check = \"false\"\n[hook]\nwait = false\n",
    )
    .unwrap();
    r.stage_change(&r.dir, "a");
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "the shim ran the binary: {}",
        text(&out.stderr)
    );
}

#[test]
fn husky_is_refused_with_the_way_on_and_nothing_changes() {
    let r = bare_repo();
    std::fs::create_dir_all(r.dir.join(".husky/_")).unwrap();
    r.git(&["config", "core.hooksPath", ".husky/_"]);
    let before = (
        snapshot(&r.dir.join(".git")),
        snapshot(&r.dir.join(".husky")),
    );
    let out = install(&r, &r.dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("husky") && err.contains("--force-hooks-path"),
        "{err}"
    );
    assert_eq!(
        before,
        (
            snapshot(&r.dir.join(".git")),
            snapshot(&r.dir.join(".husky"))
        )
    );
}

#[test]
fn from_a_linked_worktree_installs_for_the_whole_repository() {
    let r = bare_repo();
    let wt = r.worktree("linked");
    let out = install(&r, &wt, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("installing for the whole repository"));
    assert!(r.dir.join(".git/hooks/pre-commit").exists());
    assert!(r.dir.join(".git/buildlock/bin/pre-commit").exists());
}

#[test]
fn installing_twice_changes_nothing() {
    let r = bare_repo();
    assert!(install(&r, &r.dir, &[]).status.success());
    let before = (
        snapshot(&r.dir.join(".git/hooks")),
        snapshot(&r.dir.join(".git/buildlock")),
        git_config(&r),
    );
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("already buildlock's"));
    assert_eq!(
        before,
        (
            snapshot(&r.dir.join(".git/hooks")),
            snapshot(&r.dir.join(".git/buildlock")),
            git_config(&r)
        )
    );
}

#[test]
fn uninstall_without_a_previous_hook_leaves_none() {
    let r = bare_repo();
    let before = (snapshot(&r.dir.join(".git/hooks")), git_config(&r));
    assert!(install(&r, &r.dir, &[]).status.success());
    let out = install(&r, &r.dir, &["--uninstall", "--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        before,
        (snapshot(&r.dir.join(".git/hooks")), git_config(&r))
    );
    assert!(
        !r.dir.join(".buildlock.toml").exists(),
        "the unchanged example is removed"
    );
    assert!(!r.dir.join(".git/buildlock").exists());
}

#[test]
fn failures_say_why_and_change_nothing() {
    // Not a git repository.
    let tmp = tempfile::tempdir().unwrap();
    let out = command("sh", tmp.path())
        .arg(install_sh())
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not inside a git repository"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    // A bare repository.
    let bare = tmp.path().join("bare.git");
    run_ok({
        let mut c = command("git", tmp.path());
        c.args(["init", "-q", "--bare", bare.to_str().unwrap()]);
        c
    });
    let before = snapshot(&bare);
    let out = command("sh", tmp.path())
        .arg(install_sh())
        .arg(&bare)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bare repository"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(before, snapshot(&bare));

    // No cargo and nothing built.
    let r = bare_repo();
    let before = snapshot(&r.dir.join(".git"));
    let mut c = r.cmd("sh", &r.dir);
    c.arg(install_sh())
        .env("PATH", "/usr/bin:/bin")
        .env("CARGO_TARGET_DIR", r.root.join("empty-target"));
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cargo is not installed"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(before, snapshot(&r.dir.join(".git")));

    // A hooks directory that cannot be written (here: a file in its place).
    let r = bare_repo();
    std::fs::write(r.dir.join("hookfile"), "").unwrap();
    r.git(&["config", "core.hooksPath", "hookfile"]);
    let before = snapshot(&r.dir.join(".git"));
    let out = install(&r, &r.dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(before, snapshot(&r.dir.join(".git")));
}
