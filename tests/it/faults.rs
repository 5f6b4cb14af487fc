//! Faults, and the fault-injection plan row by row. Faults are injected at named points with
//! `BUILDLOCK_FAULT=point[:action]` (see `crates/buildlock-core/src/os/fault.rs`) or with real
//! signals, with short leases, and the invariants are checked afterwards. The tests of the rows
//! that live elsewhere are named in the table; the coordination dir made read-only or full is
//! tested here, below the plan's own rows.
//!
//! | row | fault | test |
//! |---|---|---|
//! | 1 | SIGKILL the fixer mid-fix | `retry::sigkilled_fixer_is_replaced_and_its_orphaned_fix_stopped` |
//! | 2 | SIGKILL after taking the election lock | `faults::killed_holding_the_election_lock` |
//! | 3 | SIGKILL during a state write | `faults::killed_during_a_state_write` |
//! | 4 | damaged state files | `hook::damaged_state_files_are_survived_and_rewritten`, `store` unit tests |
//! | 5 | 8 to 64 agents at once, many rounds | `race::*` (`race_full` for 8/16/32/64) |
//! | 6 | the check starts a daemon | `hook::a_daemon_started_by_the_check_holds_no_lock` |
//! | 7 | SIGINT to the process group | `hook::ctrl_c_stops_the_check_and_records_nothing` |
//! | 8 | SIGKILL to git's pid only | `hook::killing_git_alone_stops_the_orphaned_check` |
//! | 9 | SIGSTOP the fixer, SIGCONT later | `retry::sigstopped_fixer_is_taken_over_after_the_lease_and_fenced_when_resumed` |
//! | 10 | `rm -rf` the coordination dir mid-fix | `faults::coordination_dir_removed_mid_fix` |
//! | 11 | concurrent git in one work tree | `retry::git_lock_contention_is_retried_and_elects_nobody` |
//! | 12 | worktrees, bare repo, submodule, `GIT_DIR`, `commit -- <path>`, `commit -a` | `hook::linked_worktrees_*`, `hook::git_dir_set_*`, `hook::the_check_sees_the_index_git_commits`, `faults::bare_repository_with_worktrees` |

use crate::harness::*;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn failing_repo() -> TestRepo {
    TestRepo::new("check = \"false\"\n[hook]\nwait = false\n")
}

fn state_dir_strays(r: &TestRepo) -> Vec<String> {
    std::fs::read_dir(r.buildlock_dir().join("state"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_holding_the_election_lock() {
    let r = failing_repo();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a")
        .env("BUILDLOCK_FAULT", "election")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "the fault fired");
    // The kernel freed the lock: the next agent proceeds at once, on the old (empty) state.
    r.hook(&r.dir, "b").code(1);
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["fixer"]["agent"].as_str(), key["generation"].as_u64()),
        (Some("b"), Some(1))
    );
}

#[test]
fn killed_during_a_state_write() {
    let r = failing_repo();
    r.hook(&r.dir, "a").code(1);
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "b")
        .env("BUILDLOCK_FAULT", "state-write")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        state_dir_strays(&r).len(),
        1,
        "the killed writer left its temp file"
    );
    // The state still parses: the old version, without b.
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["fixer"]["agent"].as_str()),
        (Some("fixing"), Some("a"))
    );
    assert_eq!(key["waiters"], serde_json::json!([]));
    // The next writer takes the stray over.
    r.hook(&r.dir, "c").code(75);
    assert_eq!(state_dir_strays(&r), Vec::<String>::new());
    assert!(r.history_events().contains(&"waiting".to_owned()));
}

#[test]
fn killed_in_many_state_writes_never_corrupts() {
    // Kill 20 writers mid-write, interleaved with good writes: the file always parses.
    let r = failing_repo();
    for i in 0..20 {
        let agent = format!("k{i}");
        let out = r
            .cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", &agent)
            .env("BUILDLOCK_FAULT", "state-write")
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
        let state = std::fs::read(r.buildlock_dir().join("state/repo.json"));
        if let Ok(bytes) = state {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "round {i}: corrupt state"
            );
        }
        let out = r
            .cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", format!("ok{i}"))
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(1 | 75)),
            "round {i}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("unreadable"),
            "round {i}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn coordination_dir_removed_mid_fix() {
    let r = TestRepo::new("");
    let witness = r.shared("witness");
    let config = format!(
        "check = \"test -e {ok}\"\n[fix]\ncommand = \"echo start >> {w}; sleep 1; touch {ok}\"\n[coordination]\nstale_after = \"1s\"\n",
        ok = r.shared("ok").display(),
        w = witness.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.stage_change(&r.dir, "a");
    let child = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "survived"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || witness.exists()));
    // The fixer's heartbeat keeps writing into it: `rm -rf` may need a second pass, as by hand.
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::remove_dir_all(r.buildlock_dir()).is_ok()
    }));
    let out = wait_output(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(r.last_subject(&r.dir), "survived");
    // The next run recreates the directory.
    std::fs::remove_file(r.shared("ok")).unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "next")
        .env("BUILDLOCK", "1")
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(1 | 75)),
        "{}",
        text(&out.stderr)
    );
    assert!(r.buildlock_dir().join("state").exists());
}

#[test]
fn bare_repository_with_worktrees() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let bare = root.join("b.git");
    let git = |dir: &std::path::Path, args: &[&str]| {
        let mut c = command("git", &root);
        c.current_dir(dir).args(args);
        run_ok(c)
    };
    git(
        &root,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    git(
        &bare,
        &[
            "worktree",
            "add",
            "-q",
            "--orphan",
            "-b",
            "main",
            root.join("w1").to_str().unwrap(),
        ],
    );
    std::fs::write(
        root.join("w1/.buildlock.toml"),
        "check = \"false\"\n[hook]\nwait = false\n",
    )
    .unwrap();
    git(&root.join("w1"), &["add", "-A"]);
    git(&root.join("w1"), &["commit", "-q", "-m", "init"]);
    git(
        &bare,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "two",
            root.join("w2").to_str().unwrap(),
            "main",
        ],
    );
    std::fs::create_dir_all(bare.join("hooks")).unwrap();
    std::os::unix::fs::symlink(PRE_COMMIT, bare.join("hooks/pre-commit")).unwrap();
    let commit = |wt: &str, agent: &str| {
        let dir = root.join(wt);
        std::fs::write(dir.join(agent), "x").unwrap();
        git(&dir, &["add", agent]);
        let mut c = command(PRE_COMMIT, &root);
        c.current_dir(&dir).env("BUILDLOCK_AGENT", agent);
        c.output().unwrap()
    };
    assert_eq!(commit("w1", "a").status.code(), Some(1));
    let out = commit("w2", "b");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(
        bare.join("buildlock/state/repo.json").exists(),
        "one domain, in the bare repository's common dir"
    );
}

/// The coordination dir is read-only and the fixer's check passes: the commit goes ahead, with a
/// warning. A passing check is never refused because coordination failed.
// regression: refused with exit 1 ("cannot take the election lock … Read-only file system")
#[test]
fn a_passing_check_commits_with_a_read_only_coordination_dir() {
    let r = TestRepo::new("");
    r.configure("check = \"grep -qx ok state.txt\"\n[hook]\nwait = false\n");
    r.commit_breakage();
    r.stage_change(&r.dir, "work");
    let out = r.git_commit(&r.dir, "a", "a work").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    std::fs::write(r.dir.join("state.txt"), "ok\n").unwrap();
    r.git(&["add", "state.txt"]);
    let ro = ReadOnly::new(&r.buildlock_dir());
    if ro.is_none() {
        // Root without the right to mount: make every state write fail another way.
        eprintln!("cannot mount read-only here: the state folder is replaced by a file instead");
        let state = r.buildlock_dir().join("state");
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, "not a folder").unwrap();
    }
    let out = r.git_commit(&r.dir, "a", "a work").output().unwrap();
    drop(ro);
    assert!(out.status.success(), "refused: {}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "a work");
}

/// The same through commit-retry: with a read-only coordination dir it cannot create its decision
/// folder (`<common dir>/buildlock/run/`), and a passing check still commits.
// regression: commit-retry exited 70 without trying the commit
#[test]
fn commit_retry_commits_a_passing_check_with_a_read_only_coordination_dir() {
    let r = TestRepo::new("");
    let ok = r.shared("ok");
    r.configure(&format!(
        "check = \"test -e {}\"\n[hook]\nwait = false\n",
        ok.display()
    ));
    r.hook(&r.dir, "a").code(1);
    std::fs::write(&ok, "").unwrap();
    r.stage_change(&r.dir, "fa");
    let Some(ro) = ReadOnly::new(&r.buildlock_dir()) else {
        eprintln!("cannot make the coordination dir read-only here (root without mount): skipped");
        return;
    };
    let out = wait_output(r.commit_retry(&r.dir, "a"), Duration::from_secs(60));
    drop(ro);
    assert!(out.status.success(), "refused: {}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "a work");
}

/// The coordination dir's disk is full: the hook can neither write the state nor hand its decision
/// to commit-retry (the decision file lives on the same disk), and commit-retry exits 70
/// (coordination failed), never 1, which the contract reserves for "you are the fixer".
// regression: commit-retry took git's exit code (1) for its own
#[test]
fn commit_retry_exits_70_when_the_coordination_disk_is_full() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("needs root to mount a small tmpfs: skipped");
        return;
    }
    // commit-retry retries a coordination failure within `coordination.wait`, then exits 70.
    let r =
        TestRepo::new("check = \"false\"\n[hook]\nwait = false\n[coordination]\nwait = \"3s\"\n");
    let dir = r.buildlock_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mount = |args: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(args)
            .status()
            .unwrap()
            .success()
    };
    assert!(mount(&format!(
        "mount -t tmpfs -o size=64k tmpfs '{}'",
        dir.display()
    )));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    // Fill it.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", dir.join("fill").display()))
        .stderr(Stdio::null())
        .status();
    r.stage_change(&r.dir, "fa");
    let out = wait_output(r.commit_retry(&r.dir, "a"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(err.contains("coordination itself failed"), "{err}");
    assert_eq!(out.status.code(), Some(70), "{err}");
}
