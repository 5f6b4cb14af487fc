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
    assert_is_our_script(&r.dir.join(".git/hooks/pre-commit"), &r.dir);
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
    assert!(
        text(&out.stdout).contains("had been reinstalled by a hook manager"),
        "{}",
        text(&out.stdout)
    );
    assert_is_our_script(&hook, &r.dir);
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

/// A repository with husky 9 from npm (`npm install husky@9`, then `husky`), whose
/// `.husky/pre-commit` logs each run and fails while a file BROKEN is staged; None (with the
/// reason printed) when npm cannot install it.
fn husky_repo() -> Option<(TestRepo, PathBuf)> {
    let r = bare_repo();
    std::fs::write(
        r.dir.join("package.json"),
        "{\"name\":\"t\",\"version\":\"1.0.0\"}\n",
    )
    .unwrap();
    std::fs::write(r.dir.join(".gitignore"), "node_modules\n").unwrap();
    let npm = r
        .cmd("npm", &r.dir)
        .args(["install", "--no-audit", "--no-fund", "--silent", "husky@9"])
        .output();
    match npm {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("skipped: npm cannot install husky@9: {}", text(&out.stderr));
            return None;
        }
        Err(e) => {
            eprintln!("skipped: npm cannot run: {e}");
            return None;
        }
    }
    let husky = r.dir.join("node_modules/husky/bin.js");
    run_ok({
        let mut c = r.cmd("node", &r.dir);
        c.arg(&husky);
        c
    });
    let witness = r.root.join("team-runs");
    std::fs::write(
        r.dir.join(".husky/pre-commit"),
        format!(
            "echo team >> '{}'\ngit diff --cached --quiet -- BROKEN\n",
            witness.display()
        ),
    )
    .unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "husky", "--no-verify"]);
    Some((r, witness))
}

fn team_count(witness: &Path) -> usize {
    std::fs::read_to_string(witness).map_or(0, |s| s.lines().count())
}

#[test]
fn husky_with_the_line_in_its_pre_commit_is_coordinated_in_every_worktree() {
    let Some((r, witness)) = husky_repo() else {
        return;
    };
    let husky_before = snapshot(&r.dir.join(".husky"));
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        snapshot(&r.dir.join(".husky")),
        husky_before,
        "husky's files are its own"
    );
    let said = text(&out.stdout);
    let line = said
        .lines()
        .find_map(|l| l.strip_prefix("buildlock install:     b="))
        .map(|l| format!("b={l}"))
        .unwrap_or_else(|| panic!("no line to add in {said}"));
    // The line, committed at the top of .husky/pre-commit.
    let team = std::fs::read_to_string(r.dir.join(".husky/pre-commit")).unwrap();
    std::fs::write(r.dir.join(".husky/pre-commit"), format!("{line}\n{team}")).unwrap();
    r.git(&["add", ".husky/pre-commit"]);
    r.git(&["commit", "-q", "-m", "buildlock line", "--no-verify"]);

    // A passing commit runs the team's checks once, through buildlock.
    std::fs::write(r.dir.join("a"), "a\n").unwrap();
    r.git(&["add", "a"]);
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(team_count(&witness), 1);
    // A failing one elects a fixer: coordinated.
    std::fs::write(r.dir.join("BROKEN"), "x\n").unwrap();
    r.git(&["add", "BROKEN"]);
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "broken"])
        .env("BUILDLOCK_AGENT", "husky-agent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(team_count(&witness), 2);
    assert!(r.state().to_string().contains("husky-agent"));
    r.git(&["rm", "-q", "--cached", "BROKEN"]);
    std::fs::remove_file(r.dir.join("BROKEN")).unwrap();
    r.buildlock(&r.dir, "husky-agent", &["reset"]).success();

    // doctor: a working husky setup is no problem.
    let doctor = r.cmd(BUILDLOCK, &r.dir).arg("doctor").output().unwrap();
    assert!(
        !text(&doctor.stdout).contains("PROBLEM  the hook"),
        "{}",
        text(&doctor.stdout)
    );

    // A new worktree has no .husky/_ until husky is installed there: doctor says so.
    let wt = r.worktree("wt");
    let doctor = r.cmd(BUILDLOCK, &wt).arg("doctor").output().unwrap();
    let said = text(&doctor.stdout);
    assert!(said.contains("npm install"), "{said}");
    run_ok({
        let mut c = r.cmd("node", &wt);
        c.arg(r.dir.join("node_modules/husky/bin.js"));
        c
    });
    let doctor = r.cmd(BUILDLOCK, &wt).arg("doctor").output().unwrap();
    assert!(
        !text(&doctor.stdout).contains("PROBLEM  the hook"),
        "{}",
        text(&doctor.stdout)
    );
    // commit-retry from a subdirectory of that worktree runs husky's checks.
    std::fs::create_dir_all(wt.join("sub")).unwrap();
    std::fs::write(wt.join("sub/b"), "b\n").unwrap();
    r.git_in(&wt, &["add", "sub/b"]);
    let out = r
        .cmd("git", &wt.join("sub"))
        .args(["commit-retry", "-q", "-m", "b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        team_count(&witness),
        3,
        "the team's checks ran in the worktree"
    );

    // Uninstalled: the line is named, and skipped, and the team's checks run as before.
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(".husky/pre-commit still calls buildlock"),
        "{said}"
    );
    std::fs::write(r.dir.join("c"), "c\n").unwrap();
    r.git(&["add", "c"]);
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "c"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(team_count(&witness), 4);
}

#[test]
fn husky_with_force_hooks_path_keeps_running_the_team_s_checks() {
    let Some((r, witness)) = husky_repo() else {
        return;
    };
    let before = snapshot(&r.dir.join(".husky"));
    let out = install(&r, &r.dir, &["--force-hooks-path"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        !said.contains("add -A"),
        "nothing to commit in husky's ignored folder: {said}"
    );
    assert_is_our_script_or_shim(&r.dir.join(".husky/_/pre-commit"));
    std::fs::write(r.dir.join("a"), "a\n").unwrap();
    r.git(&["add", "a"]);
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(team_count(&witness), 1, "the team's .husky/pre-commit ran");
    std::fs::write(r.dir.join("BROKEN"), "x\n").unwrap();
    r.git(&["add", "BROKEN"]);
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "broken"])
        .env("BUILDLOCK_AGENT", "husky-agent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(r.state().to_string().contains("husky-agent"));
    r.git(&["rm", "-q", "--cached", "BROKEN"]);
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("add -A"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        snapshot(&r.dir.join(".husky")),
        before,
        "husky's folder as it was"
    );
}

fn assert_is_our_script_or_shim(hook: &Path) {
    let text = std::fs::read_to_string(hook).unwrap();
    assert!(text.contains("buildlock-hook"), "{text}");
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
fn uninstall_keeps_a_committed_config() {
    let r = bare_repo();
    assert!(install(&r, &r.dir, &[]).status.success());
    // As install.sh says to: the config is committed for the team.
    r.git(&["add", ".buildlock.toml"]);
    r.git(&["commit", "-q", "-m", "buildlock config", "--no-verify"]);
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(r.dir.join(".buildlock.toml").exists(), "{said}");
    assert!(said.contains("it is committed"), "{said}");
    assert_eq!(text(&r.git(&["status", "--porcelain"]).stdout), "");
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

/// The hook install.sh writes: a small text file that runs this repository's installed binary,
/// as its `#!` interpreter, or through `sh` where the path cannot stand in a `#!` line.
fn assert_is_our_script(hook: &Path, repo: &Path) {
    let meta = std::fs::symlink_metadata(hook).unwrap();
    assert!(
        meta.is_file(),
        "{} is a regular file, not a link",
        hook.display()
    );
    assert!(meta.len() < 1024, "small: {} bytes", meta.len());
    assert_eq!(meta.permissions().mode() & 0o111, 0o111, "executable");
    let script = std::fs::read_to_string(hook).unwrap();
    let binary = repo.join(".git/buildlock/bin/pre-commit");
    let path = binary.to_str().unwrap();
    let first = if path.contains(char::is_whitespace) {
        assert!(
            script.contains(&format!("\nexec {} \"$@\"\n", shell_quote(path))),
            "{script}"
        );
        "#!/bin/sh\n".to_owned()
    } else {
        format!("#!{path} --hook-script\n")
    };
    assert!(
        script.starts_with(&format!("{first}# buildlock-hook")),
        "{script}"
    );
    let found = buildlock_core::flows::operator::installation::inspect(
        hook.parent().unwrap(),
        &repo.join(".git/buildlock"),
    );
    if hook.file_name().unwrap() == "pre-commit" {
        assert_eq!(
            found,
            buildlock_core::flows::operator::installation::HookInstall::Ours {
                hook: hook.to_owned(),
                form: buildlock_core::flows::operator::installation::Form::Script
            }
        );
    }
}

fn shell_quote(word: &str) -> String {
    buildlock_core::flows::operator::installation::shell_quote(word)
}

/// A repository with one commit at `dir` (which may have spaces and quotes in its path).
fn repo_at(r: &TestRepo, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    r.git_in(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    r.git_in(dir, &["add", "-A"]);
    r.git_in(dir, &["commit", "-q", "-m", "init"]);
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `git commit -q -m MSG` after staging a change, in `dir`.
fn stage_and_commit(r: &TestRepo, dir: &Path, name: &str) -> Output {
    r.stage_change(dir, name);
    r.cmd("git", dir)
        .args(["commit", "-q", "-m", name])
        .output()
        .unwrap()
}

const NO_WAIT: &str = "[hook]\nwait = false\n";

#[test]
fn help_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    for flag in ["--help", "-h"] {
        let out = command("sh", tmp.path())
            .arg(install_sh())
            .arg(flag)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let usage = text(&out.stdout);
        assert!(usage.starts_with("Usage: install.sh"), "{usage}");
        for option in [
            "--bin-dir DIR",
            "--uninstall",
            "--purge",
            "--force-hooks-path",
            "--version",
        ] {
            assert!(usage.contains(option), "{option} in {usage}");
        }
        assert!(
            !usage.contains("set -eu") && !usage.contains("usage()"),
            "the usage text, not the script's source: {usage}"
        );
        assert!(out.stderr.is_empty());
    }
    let out = command("sh", tmp.path())
        .arg(install_sh())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("buildlock install.sh {}\n", env!("CARGO_PKG_VERSION"))
    );
    // Neither looks for a repository nor changes anything (here: not inside one at all).
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn purge_without_uninstall_is_refused_and_changes_nothing() {
    let r = bare_repo();
    let before = (snapshot(&r.dir), git_config(&r));
    let out = install(&r, &r.dir, &["--purge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--purge only goes with --uninstall") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(before, (snapshot(&r.dir), git_config(&r)));
    // Installed, the state is not touched either.
    assert!(install(&r, &r.dir, &[]).status.success());
    let before = snapshot(&r.dir);
    assert_eq!(install(&r, &r.dir, &["--purge"]).status.code(), Some(1));
    assert_eq!(before, snapshot(&r.dir));
}

#[test]
fn paths_with_spaces_and_quotes() {
    let r = bare_repo();
    // install.sh from a checkout, binaries and repository whose paths need quoting.
    let src = r.root.join("buildlock's src");
    std::fs::create_dir_all(src.join("hooks")).unwrap();
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "install.sh",
        ".buildlock.toml.example",
        "hooks/pre-commit",
        "Cargo.toml",
    ] {
        std::fs::copy(checkout.join(f), src.join(f)).unwrap();
    }
    let bins = r.root.join("bin dir");
    std::os::unix::fs::symlink(bin_dir(), &bins).unwrap();
    let repo = r.root.join("it's a repo");
    repo_at(&r, &repo);
    let out = r
        .cmd("sh", &r.root)
        .arg(src.join("install.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg(&repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert_is_our_script(&repo.join(".git/hooks/pre-commit"), &repo);

    // The hook and both aliases run from these paths.
    std::fs::write(
        repo.join(".buildlock.toml"),
        format!("check = \"false\"\n{NO_WAIT}"),
    )
    .unwrap();
    r.stage_change(&repo, "a");
    let out = r
        .cmd("git", &repo)
        .args(["commit-retry", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let out = r
        .cmd("git", &repo)
        .args(["buildlock", "status", "--json"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("\"fixing\""),
        "{}",
        text(&out.stderr)
    );

    // The printed commands paste as they are.
    let printed = |said: &str, after: &str| -> String {
        said.lines()
            .find_map(|l| l.split_once(after).map(|(_, c)| c.trim().to_owned()))
            .unwrap_or_else(|| panic!("no `{after}` in {said}"))
    };
    let uninstall = printed(&said, "remove it again:");
    assert_eq!(
        uninstall,
        format!(
            "sh {} --uninstall {}",
            shell_quote(src.join("install.sh").to_str().unwrap()),
            shell_quote(repo.to_str().unwrap())
        )
    );
    let out = r
        .cmd("sh", &r.root)
        .arg("-c")
        .arg(&uninstall)
        .output()
        .unwrap();
    assert!(out.status.success(), "{uninstall}: {}", text(&out.stderr));
    assert!(!repo.join(".git/hooks/pre-commit").exists());
    let config = std::fs::read_to_string(repo.join(".git/config")).unwrap();
    assert!(!config.contains("alias"), "{config}");
    let purge = printed(&text(&out.stdout), "to remove it too:");
    let out = r.cmd("sh", &r.root).arg("-c").arg(&purge).output().unwrap();
    assert!(out.status.success(), "{purge}: {}", text(&out.stderr));
    assert!(!repo.join(".git/buildlock").exists());
}

#[test]
fn the_hook_is_a_small_script_and_the_old_symlink_is_upgraded() {
    let r = bare_repo();
    assert!(install(&r, &r.dir, &[]).status.success());
    let hook = r.dir.join(".git/hooks/pre-commit");
    assert_is_our_script(&hook, &r.dir);
    // What earlier versions installed: a link to the binary.
    std::fs::remove_file(&hook).unwrap();
    std::os::unix::fs::symlink(r.dir.join(".git/buildlock/bin/pre-commit"), &hook).unwrap();
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("upgraded buildlock's hook"),
        "{}",
        text(&out.stdout)
    );
    assert_is_our_script(&hook, &r.dir);
    // The script runs the hook: a failing check elects the committer. Also when a tool runs it
    // as `sh <hook file>` rather than as a program.
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("check = \"false\"\n{NO_WAIT}"),
    )
    .unwrap();
    r.stage_change(&r.dir, "by-sh");
    let out = r
        .cmd("sh", &r.dir)
        .arg(".git/hooks/pre-commit")
        .env("BUILDLOCK_AGENT", "by-sh")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
    r.cmd(BUILDLOCK, &r.dir).arg("reset").output().unwrap();
    let out = stage_and_commit(&r, &r.dir, "a");
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
    // The old form is still recognised by uninstall.
    std::fs::remove_file(&hook).unwrap();
    std::os::unix::fs::symlink(r.dir.join(".git/buildlock/bin/pre-commit"), &hook).unwrap();
    assert!(install(&r, &r.dir, &["--uninstall"]).status.success());
    assert!(std::fs::symlink_metadata(&hook).is_err());
}

#[test]
fn uninstall_leaves_no_manager_backup_of_ours_behind() {
    let r = bare_repo();
    let hooks = r.dir.join(".git/hooks");
    let mine = "#!/bin/sh\necho hand-written\n";
    write_exec(&hooks.join("pre-commit"), mine);
    assert!(install(&r, &r.dir, &[]).status.success());
    // As `pre-commit install` does: ours becomes its legacy hook, its own goes in front. And an
    // older lefthook run had kept the link form of ours as pre-commit.old.
    let framework =
        "#!/usr/bin/env bash\n# File generated by pre-commit: https://pre-commit.com\nexit 0\n";
    std::fs::rename(hooks.join("pre-commit"), hooks.join("pre-commit.legacy")).unwrap();
    write_exec(&hooks.join("pre-commit"), framework);
    std::os::unix::fs::symlink(
        r.dir.join(".git/buildlock/bin/pre-commit"),
        hooks.join("pre-commit.old"),
    )
    .unwrap();
    let found = buildlock_core::flows::operator::installation::inspect(&hooks, &r.buildlock_dir());
    assert!(
        matches!(
            found,
            buildlock_core::flows::operator::installation::HookInstall::ManagerReinstalled {
                chained_is_its_own: false,
                ..
            }
        ),
        "{found:?}"
    );
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The framework stays in front; the hand-written hook is back where the framework runs it.
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit")).unwrap(),
        framework
    );
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit.legacy")).unwrap(),
        mine
    );
    assert!(
        std::fs::symlink_metadata(hooks.join("pre-commit.old")).is_err(),
        "no dangling link"
    );
    assert!(!r.buildlock_dir().join("chained").exists());
}

/// The team's hook for a committed hooks folder: appends where it ran, fails while STOP exists.
fn team_hook(r: &TestRepo) -> String {
    format!(
        "#!/bin/sh\necho \"$PWD\" >> {}\ntest ! -e {}\n",
        r.shared("team-ran").display(),
        r.shared("STOP").display()
    )
}

fn team_runs(r: &TestRepo) -> Vec<String> {
    std::fs::read_to_string(r.shared("team-ran"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn committed_hooks_folder_keeps_working_for_a_teammate_without_buildlock() {
    let r = bare_repo();
    let hooks = r.dir.join(".githooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let team = team_hook(&r);
    write_exec(&hooks.join("pre-commit"), &team);
    r.git(&["add", ".githooks"]);
    r.git(&["commit", "-q", "-m", "team hook", "--no-verify"]);
    r.git(&["config", "core.hooksPath", ".githooks"]);

    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("commit it, so that every clone gets"),
        "{said}"
    );
    // The team's hook stays committed beside the shim, byte for byte.
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit.chained")).unwrap(),
        team
    );
    assert!(matches!(
        buildlock_core::flows::operator::installation::inspect(&hooks, &r.buildlock_dir()),
        buildlock_core::flows::operator::installation::HookInstall::Ours {
            form: buildlock_core::flows::operator::installation::Form::CommittedShim,
            ..
        }
    ));
    let shim = std::fs::read(hooks.join("pre-commit")).unwrap();
    assert_eq!(
        shim,
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/pre-commit")).unwrap()
    );
    let before = (snapshot(&hooks), snapshot(&r.buildlock_dir()));
    let out = install(&r, &r.dir, &[]);
    assert!(text(&out.stdout).contains("already buildlock's"));
    assert_eq!(
        before,
        (snapshot(&hooks), snapshot(&r.buildlock_dir())),
        "twice changes nothing"
    );
    // The command it printed commits the folder (through the new hook, which runs the team's).
    let printed = said
        .lines()
        .find(|l| l.contains(" add -A -- "))
        .and_then(|l| l.strip_prefix("buildlock install:"))
        .unwrap_or_else(|| panic!("no commit command in {said}"))
        .trim();
    let out = r
        .cmd("sh", &r.root)
        .arg("-c")
        .arg(printed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{printed}: {}", text(&out.stderr));
    assert_eq!(team_runs(&r), vec![r.dir.display().to_string()]);
    let committed = r.git(&["show", "--name-status", "--format=", "HEAD"]);
    assert_eq!(
        text(&committed.stdout),
        "M\t.githooks/pre-commit\nA\t.githooks/pre-commit.chained\nA\t.githooks/pre-merge-commit\n"
    );
    std::fs::write(r.dir.join(".buildlock.toml"), NO_WAIT).unwrap();
    r.git(&["add", ".buildlock.toml"]);
    r.git(&["commit", "-q", "-m", "config", "--no-verify"]);

    // With buildlock: the team's hook is the coordinated check.
    let out = stage_and_commit(&r, &r.dir, "a");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(team_runs(&r).len(), 2);
    std::fs::write(r.shared("STOP"), "").unwrap();
    let out = stage_and_commit(&r, &r.dir, "b");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(r.shared("STOP")).unwrap();
    assert!(
        stage_and_commit(&r, &r.dir, "b").status.success(),
        "the fix lands"
    );

    // A linked worktree runs its own checkout of the team's hook, through buildlock.
    let wt = r.worktree("linked");
    let out = stage_and_commit(&r, &wt, "c");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(team_runs(&r).last().unwrap(), &wt.display().to_string());

    // A teammate's clone without buildlock: the team's hook runs and the commit goes through.
    let mate = r.root.join("teammate");
    r.git(&[
        "clone",
        "-q",
        r.dir.to_str().unwrap(),
        mate.to_str().unwrap(),
    ]);
    r.git_in(&mate, &["config", "core.hooksPath", ".githooks"]);
    assert!(!mate.join(".git/buildlock").exists());
    let out = stage_and_commit(&r, &mate, "d");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("buildlock"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(team_runs(&r).last().unwrap(), &mate.display().to_string());
    std::fs::write(r.shared("STOP"), "").unwrap();
    let out = stage_and_commit(&r, &mate, "e");
    assert!(
        !out.status.success(),
        "the team's failing hook still stops the commit"
    );
    assert!(
        !text(&out.stderr).contains("buildlock"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(r.shared("STOP")).unwrap();

    // The teammate installs buildlock too: the committed shim is already in place.
    let out = install(&r, &mate, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("already buildlock's"),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(r.shared("STOP"), "").unwrap();
    let out = stage_and_commit(&r, &mate, "f");
    assert!(
        text(&out.stderr).contains("FIXER") || text(&out.stderr).contains("already fixing"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(r.shared("STOP")).unwrap();
    // ... and takes it out again: the committed shim stays, it is the team's.
    let before = snapshot(&mate.join(".githooks"));
    let out = install(&r, &mate, &["--uninstall", "--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(before, snapshot(&mate.join(".githooks")));
    assert!(stage_and_commit(&r, &mate, "g").status.success());

    // Uninstalled where it was installed first, the team's hook is restored byte for byte.
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit")).unwrap(),
        team
    );
    assert!(!hooks.join("pre-commit.chained").exists());
    assert!(!r.buildlock_dir().join("chained/pre-commit").exists());
    let said = text(&out.stdout);
    let printed = said
        .lines()
        .find(|l| l.contains(" add -A -- "))
        .and_then(|l| l.strip_prefix("buildlock install:"))
        .unwrap_or_else(|| panic!("no commit command in {said}"))
        .trim();
    let out = r
        .cmd("sh", &r.root)
        .arg("-c")
        .arg(printed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{printed}: {}", text(&out.stderr));
    let committed = r.git(&["show", "--name-status", "--format=", "HEAD"]);
    assert_eq!(
        text(&committed.stdout),
        "M\t.githooks/pre-commit\nD\t.githooks/pre-commit.chained\nD\t.githooks/pre-merge-commit\n"
    );
}

#[test]
fn committed_folder_from_an_earlier_version_gets_the_team_hook_back() {
    let r = bare_repo();
    let hooks = r.dir.join(".githooks");
    std::fs::create_dir_all(&hooks).unwrap();
    r.git(&["config", "core.hooksPath", ".githooks"]);
    assert!(install(&r, &r.dir, &[]).status.success());
    // What the earlier install.sh left: its shim in the folder, the team's hook in this clone only.
    let team = team_hook(&r);
    let chained = r.buildlock_dir().join("chained/pre-commit");
    write_exec(&chained, &team);
    write_exec(
        &hooks.join("pre-commit"),
        "#!/bin/sh\n# buildlock-hook: the pre-commit shim, for repositories that commit their hooks (core.hooksPath).\nexec \"$(git rev-parse --git-common-dir)/buildlock/bin/pre-commit\" \"$@\"\n",
    );
    let out = install(&r, &r.dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("moved your team's hook back"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit.chained")).unwrap(),
        team
    );
    assert!(
        std::fs::read_to_string(&chained)
            .unwrap()
            .contains("# buildlock-chained")
    );
    std::fs::write(r.dir.join(".buildlock.toml"), NO_WAIT).unwrap();
    assert!(stage_and_commit(&r, &r.dir, "a").status.success());
    assert_eq!(team_runs(&r).len(), 1, "the team's hook runs as the check");
    // Uninstall restores it where it was before buildlock.
    assert!(install(&r, &r.dir, &["--uninstall"]).status.success());
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit")).unwrap(),
        team
    );
}

// Hook managers, for real: lefthook from npm and the pre-commit framework from PyPI. Each is taken
// from BUILDLOCK_TEST_LEFTHOOK / BUILDLOCK_TEST_PRE_COMMIT, else from PATH, else installed once
// under the target dir; when none works (no network, no npm, no python3 venv) the test says why
// and passes without running: a missing tool is not a failure of buildlock.

use std::sync::OnceLock;

static LEFTHOOK: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static PRE_COMMIT_FRAMEWORK: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn lefthook() -> Option<PathBuf> {
    tool("lefthook", &LEFTHOOK, || {
        let probe: &[&str] = &["version"];
        from_env("BUILDLOCK_TEST_LEFTHOOK", probe, "").unwrap_or_else(|| {
            on_path("lefthook", probe, "").or_else(|_| {
                let npm = |dir: &str| {
                    vec![command_line(
                        "npm",
                        &[
                            "install",
                            "--prefix",
                            dir,
                            "--no-audit",
                            "--no-fund",
                            "--silent",
                            "--fetch-retries=1",
                            "--fetch-timeout=30000",
                            "lefthook",
                        ],
                    )]
                };
                installed("lefthook", "node_modules/.bin/lefthook", npm)
                    .and_then(|p| verify(p, probe, ""))
            })
        })
    })
}

fn pre_commit_framework() -> Option<PathBuf> {
    tool("the pre-commit framework", &PRE_COMMIT_FRAMEWORK, || {
        let probe: &[&str] = &["--version"];
        let expect = "pre-commit ";
        from_env("BUILDLOCK_TEST_PRE_COMMIT", probe, expect).unwrap_or_else(|| {
            on_path("pre-commit", probe, expect).or_else(|_| {
                let venv = |dir: &str| {
                    vec![
                        command_line("python3", &["-m", "venv", dir]),
                        command_line(
                            &format!("{dir}/bin/pip"),
                            &[
                                "install",
                                "-q",
                                "--disable-pip-version-check",
                                "--retries",
                                "1",
                                "--timeout",
                                "30",
                                "pre-commit",
                            ],
                        ),
                    ]
                };
                installed("pre-commit", "bin/pre-commit", venv)
                    .and_then(|p| verify(p, probe, expect))
            })
        })
    })
}

fn tool(
    name: &str,
    cell: &'static OnceLock<Result<PathBuf, String>>,
    get: impl FnOnce() -> Result<PathBuf, String>,
) -> Option<PathBuf> {
    match cell.get_or_init(get) {
        Ok(path) => Some(path.clone()),
        Err(why) => {
            eprintln!("SKIPPED: {name} is not available, so this test did not run: {why}");
            None
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// The tool that the environment variable `var` names, if it is set (then no other is looked for).
fn from_env(var: &str, probe: &[&str], expect: &str) -> Option<Result<PathBuf, String>> {
    std::env::var_os(var).map(|p| verify(PathBuf::from(p), probe, expect))
}

fn on_path(name: &str, probe: &[&str], expect: &str) -> Result<PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not on PATH"))
        .and_then(|p| verify(p, probe, expect))
}

fn verify(path: PathBuf, probe: &[&str], expect: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new(&path)
        .args(probe)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if out.status.success() && text(&out.stdout).starts_with(expect) {
        Ok(path)
    } else {
        Err(format!(
            "{} {probe:?} did not answer as expected",
            path.display()
        ))
    }
}

/// Installs a tool once per target dir: into a fresh directory (a venv cannot move), named by a
/// pointer file that is replaced atomically, so that concurrent test runs never see half an install.
fn installed(
    name: &str,
    bin: &str,
    steps: impl FnOnce(&str) -> Vec<Vec<String>>,
) -> Result<PathBuf, String> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hook-managers");
    let pointer = cache.join(format!("{name}.path"));
    if let Ok(dir) = std::fs::read_to_string(&pointer) {
        let exe = Path::new(dir.trim()).join(bin);
        if exe.is_file() {
            return Ok(exe);
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = cache.join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for step in steps(dir.to_str().unwrap()) {
        // Outside any repository (lefthook's npm postinstall would install itself into the
        // repository it runs in), with CI set (which makes that postinstall do nothing).
        let child = std::process::Command::new(&step[0])
            .args(&step[1..])
            .current_dir(&dir)
            .env("CI", "true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", step[0]))?;
        let out = wait_output(child, std::time::Duration::from_secs(240));
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            let err = text(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!(
                "`{}` failed ({}): {last}",
                step.join(" "),
                out.status
            ));
        }
    }
    let tmp = pointer.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, dir.to_str().unwrap()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &pointer).map_err(|e| e.to_string())?;
    Ok(dir.join(bin))
}

/// Runs `program args…` in the repository with the test environment; must succeed.
fn run_tool(r: &TestRepo, program: &Path, args: &[&str]) -> String {
    let out = r.cmd(program, &r.dir).args(args).output().unwrap();
    let both = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{} {args:?}: {both}",
        program.display()
    );
    both
}

/// What `buildlock doctor` and the hook will say: the manager reinstalled, and how to recover.
fn reinstalled(
    r: &TestRepo,
) -> (
    buildlock_core::flows::operator::installation::HookInstall,
    String,
) {
    let found = buildlock_core::flows::operator::installation::inspect(
        &r.dir.join(".git/hooks"),
        &r.buildlock_dir(),
    );
    let buildlock_core::flows::operator::installation::HookInstall::ManagerReinstalled {
        what_to_run,
        ..
    } = &found
    else {
        panic!("not detected: {found:?}")
    };
    let what_to_run = what_to_run.clone();
    (found, what_to_run)
}

/// Runs the recovery command that buildlock names (with the test's prebuilt binaries).
fn recover(r: &TestRepo, what_to_run: &str) -> String {
    assert_eq!(
        what_to_run,
        format!("sh {}", shell_quote(install_sh().to_str().unwrap())),
        "it names the install.sh that installed buildlock"
    );
    let line = format!(
        "{what_to_run} --bin-dir {}",
        shell_quote(bin_dir().to_str().unwrap())
    );
    let out = r.cmd("sh", &r.dir).arg("-c").arg(&line).output().unwrap();
    assert!(out.status.success(), "{line}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn lefthook_install_again_is_detected_and_recovered() {
    let Some(lefthook) = lefthook() else { return };
    let r = bare_repo();
    let hooks = r.dir.join(".git/hooks");
    let runs = r.shared("lefthook-ran");
    std::fs::write(
        r.dir.join("lefthook.yml"),
        format!(
            "pre-commit:\n  commands:\n    check:\n      run: echo ran >> '{}' && test ! -e '{}'\n",
            runs.display(),
            r.shared("STOP").display()
        ),
    )
    .unwrap();
    r.git(&["add", "lefthook.yml"]);
    r.git(&["commit", "-q", "-m", "lefthook", "--no-verify"]);
    run_tool(&r, &lefthook, &["install"]);
    let out = install(&r, &r.dir, &[]);
    assert!(
        text(&out.stdout).contains("kept your existing hook"),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(r.dir.join(".buildlock.toml"), NO_WAIT).unwrap();
    assert!(stage_and_commit(&r, &r.dir, "a").status.success());
    assert_eq!(lines(&runs).len(), 1, "lefthook runs, as buildlock's check");

    // `lefthook install` again (npm install does it): it can read our hook now, and keeps it.
    let said = run_tool(&r, &lefthook, &["install"]);
    assert!(!said.contains("token too long"), "{said}");
    assert!(
        !buildlock_core::flows::operator::installation::inspect(&hooks, &r.buildlock_dir())
            .is_ours()
    );
    assert_is_our_script(&hooks.join("pre-commit.old"), &r.dir);
    let (found, what_to_run) = reinstalled(&r);
    assert!(
        found.message().contains("`lefthook install`"),
        "{}",
        found.message()
    );
    // Commits still work (lefthook alone runs, uncoordinated), until the recovery:
    assert!(stage_and_commit(&r, &r.dir, "b").status.success());
    let said = recover(&r, &what_to_run);
    assert!(said.contains("reinstalled by lefthook"), "{said}");
    assert_is_our_script(&hooks.join("pre-commit"), &r.dir);
    assert!(std::fs::symlink_metadata(hooks.join("pre-commit.old")).is_err());
    std::fs::write(r.shared("STOP"), "").unwrap();
    let out = stage_and_commit(&r, &r.dir, "c");
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "coordinated again: {}",
        text(&out.stderr)
    );
    std::fs::remove_file(r.shared("STOP")).unwrap();
    assert!(stage_and_commit(&r, &r.dir, "c").status.success());

    // lefthook.yml changed: lefthook, running as buildlock's check, reinstalls itself over ours.
    // The hook can tell afterwards (hook_warning), and so can doctor.
    let yml = std::fs::read_to_string(r.dir.join("lefthook.yml")).unwrap();
    std::fs::write(
        r.dir.join("lefthook.yml"),
        format!("{yml}    other:\n      run: 'true'\n"),
    )
    .unwrap();
    r.git(&["add", "lefthook.yml"]);
    assert!(stage_and_commit(&r, &r.dir, "yml").status.success());
    let hooks_now =
        buildlock_core::flows::operator::installation::inspect(&hooks, &r.buildlock_dir());
    if hooks_now.is_ours() {
        eprintln!("note: this lefthook did not reinstall itself on a changed lefthook.yml");
    } else {
        let warning =
            buildlock_core::flows::operator::installation::hook_warning(&hooks, &r.buildlock_dir());
        assert!(warning.is_some(), "{hooks_now:?}");
        recover(&r, &reinstalled(&r).1);
    }

    // Reinstalled once more, then buildlock uninstalled: lefthook's hook alone, nothing of ours.
    run_tool(&r, &lefthook, &["install"]);
    let out = install(&r, &r.dir, &["--uninstall", "--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for leftover in ["pre-commit.old", "pre-commit.legacy"] {
        assert!(
            std::fs::symlink_metadata(hooks.join(leftover)).is_err(),
            "{leftover} left behind"
        );
    }
    assert!(!r.buildlock_dir().exists());
    let before = lines(&runs).len();
    let out = stage_and_commit(&r, &r.dir, "d");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&runs).len(), before + 1);
}

#[test]
fn pre_commit_install_again_keeps_commits_working_and_is_recovered() {
    let Some(framework) = pre_commit_framework() else {
        return;
    };
    let r = bare_repo();
    let hooks = r.dir.join(".git/hooks");
    let runs = r.shared("framework-ran");
    std::fs::write(
        r.dir.join(".pre-commit-config.yaml"),
        format!(
            "repos:\n- repo: local\n  hooks:\n  - id: check\n    name: check\n    entry: sh -c \"echo ran >> '{}' && test ! -e '{}'\"\n    language: system\n    always_run: true\n    pass_filenames: false\n",
            runs.display(),
            r.shared("STOP").display()
        ),
    )
    .unwrap();
    r.git(&["add", ".pre-commit-config.yaml"]);
    r.git(&["commit", "-q", "-m", "pre-commit", "--no-verify"]);
    run_tool(&r, &framework, &["install"]);
    assert!(text(&install(&r, &r.dir, &[]).stdout).contains("kept your existing hook"));
    std::fs::write(r.dir.join(".buildlock.toml"), NO_WAIT).unwrap();
    assert!(stage_and_commit(&r, &r.dir, "a").status.success());
    assert_eq!(lines(&runs).len(), 1);

    // `pre-commit install` again: migration mode, ours as its legacy hook. Commits keep working
    // (no "bug: pre-commit's script is installed in migration mode"), coordinated, the checks twice.
    run_tool(&r, &framework, &["install"]);
    assert_is_our_script(&hooks.join("pre-commit.legacy"), &r.dir);
    let out = stage_and_commit(&r, &r.dir, "b");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("bug:"), "{}", text(&out.stderr));
    assert_eq!(
        lines(&runs).len(),
        3,
        "once through buildlock, once more by the framework"
    );
    std::fs::write(r.shared("STOP"), "").unwrap();
    let out = stage_and_commit(&r, &r.dir, "c");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("you are the FIXER") && !err.contains("bug:"),
        "{err}"
    );
    std::fs::remove_file(r.shared("STOP")).unwrap();
    assert!(stage_and_commit(&r, &r.dir, "c").status.success());

    let warning =
        buildlock_core::flows::operator::installation::hook_warning(&hooks, &r.buildlock_dir());
    assert!(
        warning.is_some_and(|w| w.contains("twice")),
        "the hook has something to say"
    );
    let (found, what_to_run) = reinstalled(&r);
    assert!(
        matches!(
            found,
            buildlock_core::flows::operator::installation::HookInstall::ManagerReinstalled {
                manager: Some(buildlock_core::flows::operator::installation::Manager::PreCommit),
                chained_is_its_own: true,
                ..
            }
        ),
        "{found:?}"
    );
    assert!(found.message().contains("twice"), "{}", found.message());
    let said = recover(&r, &what_to_run);
    assert!(said.contains("reinstalled by pre-commit"), "{said}");
    assert_is_our_script(&hooks.join("pre-commit"), &r.dir);
    assert!(std::fs::symlink_metadata(hooks.join("pre-commit.legacy")).is_err());
    let before = lines(&runs).len();
    assert!(stage_and_commit(&r, &r.dir, "d").status.success());
    assert_eq!(lines(&runs).len(), before + 1, "once again");

    // Uninstalled: the framework's own hook, nothing of ours, no dangling legacy hook.
    let out = install(&r, &r.dir, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::symlink_metadata(hooks.join("pre-commit.legacy")).is_err());
    assert!(
        std::fs::read_to_string(hooks.join("pre-commit"))
            .unwrap()
            .contains("File generated by pre-commit")
    );
    let out = stage_and_commit(&r, &r.dir, "e");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("buildlock"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lines(&runs).len(), before + 2);
}

#[test]
fn the_chained_hook_gets_git_s_arguments_only() {
    // Both forms of the hook: the `#!` line (here) and `sh` (a path with a space).
    for name in ["plain", "with space"] {
        let r = bare_repo();
        let repo = r.root.join(name);
        repo_at(&r, &repo);
        let seen = r.shared("arguments");
        write_exec(
            &repo.join(".git/hooks/pre-commit"),
            &format!("#!/bin/sh\necho \"$# $*\" > '{}'\n", seen.display()),
        );
        let out = install(&r, &repo, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_is_our_script(&repo.join(".git/hooks/pre-commit"), &repo);
        let out = stage_and_commit(&r, &repo, "a");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), "0 \n", "{name}");
    }
}
