//! Defects found by the fault review of issue 8's work (listed in `docs/issue8-cases.md`): each
//! test failed on main as of bc5be4e and passes since the commit that fixed it (each names its
//! test).

use crate::fixer_cases::{
    assert_never_two_fixes, clock_shift_library, commit_breakage, commit_retry, configure,
    count_events, fix_on_record, git_commit, head, lines, starts, witness_fix, witness_log,
};
use crate::harness::*;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The fix was taken the way buildlock says (`git cherry-pick <id>`), so the agent's HEAD has
/// the fix's change but not the fix commit itself. When the same failure comes back on that
/// branch (the same bad merge again, a revert), nobody is ever elected: the agent is told, again
/// and again, to take a fix it already took, and `git cherry-pick` of it now fails.
#[test]
fn a_breakage_that_comes_back_after_a_cherry_picked_fix_elects_a_fixer() {
    let r = TestRepo::new("");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        "check = \"grep -qx ok state.txt\"\n[hook]\nwait = false\n",
    )
    .unwrap();
    std::fs::write(r.dir.join("state.txt"), "broken\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "a bad merge", "--no-verify"]);
    let trees: Vec<PathBuf> = (0..2).map(|i| r.worktree(&format!("a{i}"))).collect();
    r.stage_change(&trees[0], "w0");
    r.stage_change(&trees[1], "w1");
    let out = git_commit(&r, &trees[0], "a0", "a0 work").output().unwrap();
    assert!(text(&out.stderr).contains("you are the FIXER"));
    std::fs::write(trees[0].join("state.txt"), "ok\n").unwrap();
    r.git_in(&trees[0], &["add", "state.txt"]);
    assert!(
        git_commit(&r, &trees[0], "a0", "a0 work")
            .output()
            .unwrap()
            .status
            .success()
    );
    let fix = head(&r, &trees[0]);
    // a1 is told the fix and takes it as told.
    let out = git_commit(&r, &trees[1], "a1", "a1 work").output().unwrap();
    assert!(
        text(&out.stderr).contains(&fix[..12]),
        "{}",
        text(&out.stderr)
    );
    r.git_in(&trees[1], &["stash", "-q"]);
    // A cherry-pick made later than the fix: a commit of its own (the harness fixes the dates,
    // which would otherwise make it the very same commit).
    let mut pick = r.cmd("git", &trees[1]);
    pick.args(["cherry-pick", &fix])
        .env("GIT_COMMITTER_DATE", "2026-11-22T11:00:00Z");
    run_ok(pick);
    r.git_in(&trees[1], &["stash", "pop", "-q", "--index"]);
    let out = git_commit(&r, &trees[1], "a1", "a1 work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same breakage comes back on a1's branch.
    std::fs::write(trees[1].join("state.txt"), "broken\n").unwrap();
    r.git_in(&trees[1], &["add", "state.txt"]);
    let out = git_commit(&r, &trees[1], "a1", "the bad merge again")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains("you are the FIXER"),
        "a1 already has that fix; the failure is a new breakage and needs a fixer: {err}"
    );
}

/// commit-retry is SIGKILLed in the moment between starting the fix and recording its process
/// group (`Register` in `on_start`). The fix goes on, and nothing on record names it: the next
/// fixer (the same agent, retrying) cannot stop it and runs a second fix beside it.
#[test]
fn a_fix_killed_before_it_is_recorded_is_still_stopped() {
    // The fix kills its own commit-retry first thing, while commit-retry is still recording the
    // fix's process group: its state writes are slowed down (every rename takes 300 ms) so
    // that this happens every time.
    for round in 0..2 {
        let r = TestRepo::new("");
        let status = r.shared("status");
        let fix = crate::fixer_cases::witness_fix(
            &r.root,
            "2",
            &format!("echo ok > {}", status.display()),
        );
        let wrapper = r.shared("fix-wrapper.sh");
        std::fs::write(
            &wrapper,
            format!(
                "if [ ! -e {once} ]; then\n\
                   touch {once}; p=$PPID\n\
                   while [ \"$(cat /proc/$p/comm)\" != commit-retry ] && [ $p -gt 1 ]; do set -- $(cat /proc/$p/stat); p=$4; done\n\
                   [ $p -gt 1 ] && kill -KILL $p\n\
                 fi\n\
                 exec sh {fix}\n",
                once = r.shared("killed-once").display(),
                fix = fix.display()
            ),
        )
        .unwrap();
        std::fs::write(
            r.dir.join(".buildlock.toml"),
            format!(
                "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {w}\"\n",
                s = status.display(),
                w = wrapper.display()
            ),
        )
        .unwrap();
        r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
        std::fs::write(&status, "broken\n").unwrap();
        r.stage_change(&r.dir, "fa");
        let first = r
            .cmd(COMMIT_RETRY, &r.dir)
            .args(["-q", "-m", "a work"])
            .env("BUILDLOCK_AGENT", "a")
            .env("LD_PRELOAD", clock_shift_library())
            .env("FAKE_SLOW_RENAME_MS", "300")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let first = wait_output(first, Duration::from_secs(30));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&first.status),
            Some(libc::SIGKILL),
            "{}",
            text(&first.stderr)
        );
        let again = wait_output(commit_retry(&r, &r.dir, "a"), Duration::from_secs(60));
        let log = lines(&r.root.join("w").join("log"));
        assert!(
            !log.iter().any(|l| l.starts_with("OVERLAP")),
            "round {round}: two fix runs at once: {log:?}\n{}",
            text(&again.stderr)
        );
        assert!(again.status.success(), "{}", text(&again.stderr));
    }
}

/// A tree-dependent check, the breakage committed on main, and worktrees `a` and `b` with
/// staged work. `a` is elected with a plain `git commit`; `b` then waits in its hook.
fn a_elected_b_waiting(config: &str) -> (TestRepo, PathBuf, PathBuf, std::process::Child) {
    let r = TestRepo::new("");
    configure(&r, config);
    commit_breakage(&r);
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let out = git_commit(&r, &ta, "a", "a work").output().unwrap();
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
    let b = git_commit(&r, &tb, "b", "b work").spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    (r, ta, tb, b)
}

/// The fixer commits with an editor (`git commit` without `-m`) and takes 15 s to write the
/// message. Its check passed before the editor opened, so the waiters wake, wait 10 s for the
/// fix commit (`fixcommit::GRACE`), and then one of them is elected and fixes the same breakage
/// again, while the fix is one keystroke from being committed.
#[test]
fn a_fixer_writing_its_commit_message_is_not_replaced() {
    let (r, ta, _tb, b) =
        a_elected_b_waiting("check = \"grep -qx ok state.txt\"\n[coordination]\nwait = \"60s\"\n");
    std::fs::write(ta.join("state.txt"), "ok\n").unwrap();
    r.git_in(&ta, &["add", "state.txt"]);
    let editor = r.shared("slow-editor.sh");
    std::fs::write(&editor, "sleep 15; echo 'fix the bad merge' > \"$1\"\n").unwrap();
    let mut c = r.cmd("git", &ta);
    c.args(["commit", "-q"])
        .env("BUILDLOCK_AGENT", "a")
        .env("GIT_EDITOR", format!("sh {}", editor.display()));
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fix = head(&r, &ta);
    let out = wait_output(b, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        !err.contains("you are the FIXER"),
        "b was elected while a wrote its commit message: {err}"
    );
    assert!(
        err.contains(&fix[..12]),
        "b is handed a's fix commit: {err}"
    );
    assert_eq!(r.state()["totals"]["elections"], 1);
}

/// The fixer folds its fix into its previous commit with `git commit --amend`. The fix commit is
/// looked for as "the first commit after the HEAD the check saw", which an amended commit never
/// is: the waiters wait 10 s and then elect a second fixer.
#[test]
fn a_fix_made_with_commit_amend_is_handed_over() {
    let r = TestRepo::new("");
    configure(
        &r,
        "check = \"grep -qx ok state.txt\"\n[coordination]\nwait = \"60s\"\n",
    );
    commit_breakage(&r);
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    // a already has a commit of its own on top of the breakage.
    r.stage_change(&ta, "earlier");
    r.git_in(
        &ta,
        &["commit", "-q", "-m", "a: earlier work", "--no-verify"],
    );
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let out = git_commit(&r, &ta, "a", "a work").output().unwrap();
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let b = git_commit(&r, &tb, "b", "b work").spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    std::fs::write(ta.join("state.txt"), "ok\n").unwrap();
    r.git_in(&ta, &["add", "state.txt"]);
    let mut c = r.cmd("git", &ta);
    c.args(["commit", "-q", "--amend", "--no-edit"])
        .env("BUILDLOCK_AGENT", "a")
        .env("GIT_COMMITTER_DATE", "2026-11-22T11:00:00Z");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fix = head(&r, &ta);
    let start = Instant::now();
    let out = wait_output(b, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        err.contains(&fix[..12]) && !err.contains("you are the FIXER"),
        "after {:?}, b was not handed the amended fix commit {fix}: {err}",
        start.elapsed()
    );
}

/// The wall clock steps back a minute (NTP, a restored VM) while a live fixer runs its fix:
/// its heartbeats are now older than the lease it wrote, the lease never "moves" (renewals keep
/// the maximum), and within `stale_after` a waiter takes the live fixer over and runs a second
/// fix. Every process here sees the same stepped clock (an `LD_PRELOAD` shim).
#[test]
fn a_backward_clock_step_does_not_get_a_live_fixer_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, "8", &format!("echo ok > {}", status.display()));
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"2s\"\nwait = \"60s\"\n",
            s = status.display(),
            f = fix.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    let offset = r.shared("clock-offset");
    std::fs::write(&offset, "0").unwrap();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let spawn = |dir: &PathBuf, agent: &str| {
        r.cmd(COMMIT_RETRY, dir)
            .args(["-q", "-m", &format!("{agent} work")])
            .env("BUILDLOCK_AGENT", agent)
            .env("LD_PRELOAD", clock_shift_library())
            .env("FAKE_CLOCK_OFFSET_FILE", &offset)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    let b = spawn(&tb, "b");
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    std::fs::write(&offset, "-60000").unwrap();
    let (oa, ob) = (
        wait_output(a, Duration::from_secs(60)),
        wait_output(b, Duration::from_secs(60)),
    );
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert!(oa.status.success(), "{}", text(&oa.stderr));
    assert!(ob.status.success(), "{}", text(&ob.stderr));
    assert_eq!(
        starts(&log).len(),
        1,
        "a live fixer was taken over: {log:?}\n{}",
        text(&ob.stderr)
    );
}

/// Case 5 of the issue for a fixer by hand (a plain `git commit`, no commit-retry): its
/// re-check passes slowly (3 s, longer than `stale_after`), nothing renews its lease meanwhile,
/// and the waiter takes it over and is elected a second fixer of a breakage already fixed.
#[test]
fn a_fixer_by_hand_keeps_its_lease_through_a_slow_recheck() {
    let (r, ta, _tb, b) = a_elected_b_waiting(
        "check = \"grep -qx ok state.txt || exit 1; sleep 3\"\n\
         [coordination]\nstale_after = \"1s\"\nwait = \"60s\"\n",
    );
    std::fs::write(ta.join("state.txt"), "ok\n").unwrap();
    r.git_in(&ta, &["add", "state.txt"]);
    let out = git_commit(&r, &ta, "a", "a work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wait_output(b, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        !err.contains("you are the FIXER"),
        "b took the fixer over during its passing re-check: {err}"
    );
    assert_eq!(count_events(&r, "takeover"), 0, "{:?}", r.history_events());
}

/// commit-retry with a read-only coordination dir and a PASSING check: it cannot create its
/// decision folder (`<common dir>/buildlock/run/`) and exits 70 without even trying the commit.
/// The contract: a passing check is never refused because coordination failed.
#[test]
fn commit_retry_commits_a_passing_check_with_a_read_only_coordination_dir() {
    let r = TestRepo::new("");
    let ok = r.shared("ok");
    configure(
        &r,
        &format!(
            "check = \"test -e {}\"\n[hook]\nwait = false\n",
            ok.display()
        ),
    );
    assert_eq!(r.hook(&r.dir, "a").status.code(), Some(1));
    std::fs::write(&ok, "").unwrap();
    r.stage_change(&r.dir, "fa");
    let Some(ro) = crate::fixer_cases::ReadOnly::new(&r.buildlock_dir()) else {
        eprintln!("cannot make the coordination dir read-only here (root without mount): skipped");
        return;
    };
    let out = wait_output(commit_retry(&r, &r.dir, "a"), Duration::from_secs(60));
    drop(ro);
    assert!(out.status.success(), "refused: {}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "a work");
}

/// The coordination dir's disk is full: the hook cannot write the state (it says "coordination
/// failed" and exits 70) nor hand its decision to commit-retry (the decision file lives on the
/// same disk). commit-retry then takes git's exit code for its own and exits 1, which the
/// contract reserves for "you are the fixer". It must exit 70.
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
    let out = wait_output(commit_retry(&r, &r.dir, "a"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(err.contains("coordination itself failed"), "{err}");
    assert_eq!(out.status.code(), Some(70), "{err}");
}

/// With `match = "signature"` every distinct failure is a key of its own, and a key whose fixer
/// went away stays open (fixing) for ever: open keys are never bounded. All keys of a base live
/// in one state file, read whole on every hook run, and a file over 1 MiB reads as damaged:
/// once about 1,600 keys are open, the next failure finds the file "damaged", rewrites it with
/// its own key alone, and every other breakage's fixer is forgotten. (Measured with real hook
/// runs: 1,700 agents with distinct failures left 95 keys on record.) Here the open keys are
/// cloned from a real one to keep the test fast.
#[test]
fn many_open_signature_keys_are_not_lost() {
    let r = TestRepo::new(
        "check = \"echo error in $BUILDLOCK_AGENT; false\"\n[coordination]\nmatch = \"signature\"\n\
         [hook]\nwait = false\n",
    );
    assert_eq!(r.hook(&r.dir, "seed").status.code(), Some(1));
    let path = r.buildlock_dir().join("state/repo.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let template = file["keys"][0].clone();
    const OPEN: usize = 2000;
    let keys: Vec<serde_json::Value> = (0..OPEN as u32)
        .map(|i| {
            let mut k = template.clone();
            k["key"] = format!("repo#{:016x}", 0x1000 + i).into();
            k["fixer"]["agent"] = format!("agent{i}").into();
            k
        })
        .collect();
    file["keys"] = keys.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let open = |r: &TestRepo| r.state()["keys"].as_array().map_or(0, |k| k.len());
    assert_eq!(open(&r), OPEN, "a state file of {size} bytes");
    let out = r.hook(&r.dir, "newcomer");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        open(&r),
        OPEN + 1,
        "one more failure: {}",
        text(&out.stderr)
    );
}

/// The wall clock steps forward (a resumed laptop or VM, NTP) past `stale_after` while a live
/// fixer runs its fix and holds its fixer lock: until its next heartbeat (up to a quarter of
/// `stale_after` later, at most a minute) its lease looks expired, and an agent that fails in
/// that window takes the live fixer over and stops its fix.
#[test]
fn a_forward_clock_step_does_not_get_a_live_fixer_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, "6", &format!("echo ok > {}", status.display()));
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"20s\"\nwait = \"60s\"\n[hook]\nwait = false\n",
            s = status.display(),
            f = fix.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    let offset = r.shared("clock-offset");
    std::fs::write(&offset, "0").unwrap();
    r.stage_change(&r.dir, "fa");
    let a = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "a work"])
        .env("BUILDLOCK_AGENT", "a")
        .env("LD_PRELOAD", clock_shift_library())
        .env("FAKE_CLOCK_OFFSET_FILE", &offset)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    std::fs::write(&offset, "60000").unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "c")
        .env("LD_PRELOAD", clock_shift_library())
        .env("FAKE_CLOCK_OFFSET_FILE", &offset)
        .output()
        .unwrap();
    let oa = wait_output(a, Duration::from_secs(60));
    let log = witness_log(&r.root);
    assert_eq!(
        out.status.code(),
        Some(75),
        "c took the live fixer over: {}\n{log:?}",
        text(&out.stderr)
    );
    assert!(oa.status.success(), "{}", text(&oa.stderr));
}
