//! Liveness and takeover: a dead fixer's orphaned fix is stopped before the next fix starts, and
//! a live fixer is never taken over, whatever its re-check takes, whoever released it, and
//! however the wall clock steps. Fix runs are judged by an independent witness (see
//! `harness::witness_fix`), never by buildlock's own account.

use crate::harness::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// commit-retry is SIGKILLed mid-fix (its fix goes on in its own process group) and the same
/// agent runs commit-retry again: the dead run's orphaned fix is stopped before the new one
/// starts.
// regression: "you are still the fixer", and a second fix ran beside the first
#[test]
fn same_agent_after_sigkill_stops_its_orphaned_fix_first() {
    let r = shared_status_repo("3", "");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let first = r.commit_retry(&ta, "a");
    // Mid-fix: the fix runs and is on record (see `a_fix_killed_before_it_is_recorded_…` for
    // a kill just before that).
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    signal(&first, libc::SIGKILL);
    let _ = wait_output(first, Duration::from_secs(5));
    let again = r.commit_retry(&ta, "a");
    let out = wait_output(again, Duration::from_secs(60));
    let log = witness_log(&r.root);
    let err = text(&out.stderr);
    assert!(
        !log.iter().any(|l| l.starts_with("OVERLAP")),
        "two fix runs at once: {log:?}\n{err}"
    );
    assert!(out.status.success(), "{err}\n{log:?}");
    assert!(err.contains("stopped the previous fixer's fix"), "{err}");
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    assert!(log[1].starts_with("stopped a"), "{log:?}");
    assert_eq!(r.last_subject(&ta), "a work");
}

/// commit-retry is SIGKILLed between starting the fix and recording its process group: the next
/// fixer (the same agent, retrying) still finds and stops that fix before running its own.
// regression: nothing on record named the fix, and a second ran beside it
#[test]
fn a_fix_killed_before_it_is_recorded_is_still_stopped() {
    // The fix kills its own commit-retry first thing, while commit-retry is still recording the
    // fix's process group: its state writes are slowed down (every rename takes 300 ms) so
    // that this happens every time.
    for round in 0..2 {
        let r = TestRepo::new("");
        let status = r.shared("status");
        let fix = witness_fix(&r.root, "2", &format!("echo ok > {}", status.display()));
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
        let again = wait_output(r.commit_retry(&r.dir, "a"), Duration::from_secs(60));
        let log = lines(&r.root.join("w").join("log"));
        assert!(
            !log.iter().any(|l| l.starts_with("OVERLAP")),
            "round {round}: two fix runs at once: {log:?}\n{}",
            text(&again.stderr)
        );
        assert!(again.status.success(), "{}", text(&again.stderr));
    }
}

/// A state that names an unrelated process group as a dead fixer's orphaned fix (pid, host and
/// start time all right, as a crafted or stale state can have them) never makes the next fixer
/// kill that group.
#[test]
fn a_crafted_orphan_record_never_kills_an_unrelated_group() {
    for token in [Some("0123456789abcdef"), None] {
        let r = shared_status_repo("0", "");
        r.hook(&r.dir, "a").code(1);
        r.buildlock(&r.dir, "a", &["release"]).success();
        // The decoy: a process group of its own that buildlock did not start.
        let decoy = KillOnDrop(Some({
            use std::os::unix::process::CommandExt;
            Command::new("sleep")
                .arg("60")
                .process_group(0)
                .spawn()
                .unwrap()
        }));
        let pid = decoy.id();
        let orphan = serde_json::json!({"pid": pid, "host": hostname(),
            "start": start_time(pid), "token": token});
        let state_dir = r.buildlock_dir().join("state");
        for e in std::fs::read_dir(&state_dir).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            set_key_everywhere(&mut v, "orphan_fix", &orphan);
            std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        }
        r.stage_change(&r.dir, "fb");
        let out = wait_output(r.commit_retry(&r.dir, "b"), Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            proc_state(pid).is_some_and(|s| s != 'Z'),
            "token {token:?}: buildlock killed an unrelated process group: {}",
            text(&out.stderr)
        );
    }
}

fn set_key_everywhere(v: &mut serde_json::Value, key: &str, to: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key(key) {
                map.insert(key.to_owned(), to.clone());
            }
            for (_, inner) in map.iter_mut() {
                set_key_everywhere(inner, key, to);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                set_key_everywhere(inner, key, to);
            }
        }
        _ => {}
    }
}

/// The fixer `a` is SIGSTOPped mid-fix; `b` takes over after the lease; `a` is resumed. Locks
/// are per generation: `b` holds its own, so `c`, failing meanwhile, waits for `b`.
// regression: `b` ran without the fixer lock, looked dead once `a` let go; `c` killed its fix
#[test]
fn resumed_old_fixer_does_not_make_the_new_one_look_dead() {
    // `a`'s fix outlasts any load, so that `b` stops it (SIGSTOP does not stop a fix run: it is
    // a process group of its own); `b`'s is long enough that `c` fails while `b` still fixes.
    let r = shared_status_repo(
        "$([ \"$BUILDLOCK_AGENT\" = a ] && echo 60 || echo 6)",
        "[coordination]\nstale_after = \"2s\"\nwait = \"40s\"\n",
    );
    let trees: Vec<PathBuf> = ["ta", "tb", "tc"]
        .iter()
        .map(|n| {
            let t = r.worktree(n);
            r.stage_change(&t, &format!("f{n}"));
            t
        })
        .collect();
    let a = r.commit_retry(&trees[0], "a");
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    signal(&a, libc::SIGSTOP);
    let b = r.commit_retry(&trees[1], "b");
    assert!(
        eventually(Duration::from_secs(30), || starts(&witness_log(&r.root))
            .len()
            == 2),
        "{:?}",
        witness_log(&r.root)
    );
    signal(&a, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let c = r.commit_retry(&trees[2], "c");
    let outs: Vec<_> = [a, b, c]
        .into_iter()
        .map(|child| wait_output(child, Duration::from_secs(60)))
        .collect();
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert_eq!(starts(&log).len(), 2, "a's fix and b's, no third: {log:?}");
    assert!(
        log.iter().any(|l| l.starts_with("end b")),
        "b's fix ran to its end: {log:?}"
    );
    for (name, out) in ["a", "b", "c"].iter().zip(&outs) {
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    assert!(
        !text(&outs[2].stderr).contains("taking over"),
        "{}",
        text(&outs[2].stderr)
    );
    assert_eq!(r.state()["totals"]["elections"], 2);
}

/// `buildlock release` during `a`'s fix stops that fix; `a`'s next commit fails and `a` is
/// elected again: `a` holds its new generation's lock, and `b` waits for it.
// regression: `a` looked dead once its old hold was dropped, and `b` took over and killed its fix
#[test]
fn fixer_elected_again_after_release_is_not_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let first = r.shared("first-run");
    // The first fix run is long (the release stops it); the next one is short, and fixes.
    let sleep = format!(
        "$(if [ -e {f} ]; then echo 1; else touch {f}; echo 60; fi)",
        f = first.display()
    );
    let work = format!("echo ok > {s}", s = status.display());
    let fix = witness_fix(&r.root, &sleep, &work);
    r.configure(&format!(
            "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n[coordination]\nwait = \"40s\"\n",
            s = status.display(),
            f = fix.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || starts(
        &witness_log(&r.root)
    )
    .len()
        == 1));
    r.buildlock(&ta, "a", &["release"]).success();
    // The release stopped a's fix (promptly: not at its end, a minute later); a's next fix
    // run: b fails meanwhile and must wait for it.
    assert!(
        eventually(Duration::from_secs(20), || starts(&witness_log(&r.root))
            .len()
            == 2),
        "{:?}",
        witness_log(&r.root)
    );
    let b = r.commit_retry(&tb, "b");
    let (oa, ob) = (
        wait_output(a, Duration::from_secs(60)),
        wait_output(b, Duration::from_secs(60)),
    );
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert!(oa.status.success(), "a: {}\n{log:?}", text(&oa.stderr));
    assert!(ob.status.success(), "b: {}\n{log:?}", text(&ob.stderr));
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    assert!(
        starts(&log).iter().all(|l| l.starts_with("start a")),
        "b never fixed: {log:?}"
    );
    assert!(
        log[1].starts_with("stopped a"),
        "the release stopped the fix: {log:?}"
    );
    assert_eq!(r.count_events("takeover"), 0, "{:?}", r.history_events());
}

/// The fixer's re-check (the check passes slowly: 4 s) is longer than `stale_after` (2 s): the
/// lease is held through the re-check, and the waiter takes the fix commit instead of taking over.
// regression: commit-retry stopped its heartbeat for the re-check and the waiter ran a second fix
#[test]
fn fixer_keeps_its_lease_through_a_recheck_longer_than_stale_after() {
    let r = TestRepo::new("");
    let fix = witness_fix(&r.root, "0.2", "echo ok > state.txt && git add state.txt");
    r.configure(&format!(
            "check = \"grep -qx ok state.txt || exit 1; sleep 4\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"2s\"\nwait = \"40s\"\n[retry]\n\
             refresh = \"git stash -q && git cherry-pick $BUILDLOCK_FIX_COMMIT && git stash pop -q --index\"\n",
            f = fix.display()
        ),
    );
    r.commit_breakage();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || starts(
        &witness_log(&r.root)
    )
    .len()
        == 1));
    let b = r.commit_retry(&tb, "b");
    let (oa, ob) = (
        wait_output(a, Duration::from_secs(60)),
        wait_output(b, Duration::from_secs(60)),
    );
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert!(oa.status.success(), "a: {}", text(&oa.stderr));
    assert_eq!(starts(&log).len(), 1, "one fix run: {log:?}");
    assert_eq!(r.count_events("takeover"), 0, "{:?}", r.history_events());
    assert!(ob.status.success(), "b: {}", text(&ob.stderr));
    assert_eq!(r.last_subject(&tb), "b work");
}

/// The same for a fixer by hand (a plain `git commit`, no commit-retry): its re-check passes
/// slowly (3 s, longer than `stale_after`), and the waiter does not take it over.
// regression: nothing renewed the lease, and the waiter was elected a second fixer
#[test]
fn a_fixer_by_hand_keeps_its_lease_through_a_slow_recheck() {
    let (r, ta, _tb, b) = a_elected_b_waiting(
        "check = \"grep -qx ok state.txt || exit 1; sleep 3\"\n\
         [coordination]\nstale_after = \"1s\"\nwait = \"60s\"\n",
    );
    std::fs::write(ta.join("state.txt"), "ok\n").unwrap();
    r.git_in(&ta, &["add", "state.txt"]);
    let out = r.git_commit(&ta, "a", "a work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wait_output(b, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        !err.contains("you are the FIXER"),
        "b took the fixer over during its passing re-check: {err}"
    );
    assert_eq!(r.count_events("takeover"), 0, "{:?}", r.history_events());
}

/// The wall clock steps back a minute (NTP, a restored VM) while a live fixer runs its fix: its
/// heartbeats are older than the lease it wrote, and still no waiter takes it over. Every process
/// here sees the same stepped clock (an `LD_PRELOAD` shim).
// regression: the lease never "moved" (renewals keep the maximum) and a waiter ran a second fix
#[test]
fn a_backward_clock_step_does_not_get_a_live_fixer_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, "8", &format!("echo ok > {}", status.display()));
    r.configure(&format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"2s\"\nwait = \"60s\"\n",
        s = status.display(),
        f = fix.display()
    ));
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

/// The wall clock steps forward (a resumed laptop or VM, NTP) past `stale_after` while a live
/// fixer runs its fix and holds its fixer lock: an agent that fails before the fixer's next
/// heartbeat waits for it (75) instead of taking it over.
// regression: the lease looked expired until the next heartbeat, and the agent stopped the live fix
#[test]
fn a_forward_clock_step_does_not_get_a_live_fixer_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, "6", &format!("echo ok > {}", status.display()));
    r.configure(&format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"20s\"\nwait = \"60s\"\n[hook]\nwait = false\n",
        s = status.display(),
        f = fix.display()
    ));
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

/// commit-retry is SIGKILLed mid-fix and a plain `git commit` (no commit-retry, so no fix of its
/// own) takes over: the orphaned fix is stopped by that commit's hook, at once.
// regression: the orphan ran on until the new fixer later ran a fix of its own
#[test]
fn a_plain_commit_that_takes_over_stops_the_orphaned_fix_at_once() {
    let r = shared_status_repo("60", "[hook]\nwait = false\n");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let first = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(30), || fix_on_record(&r, 1)));
    signal(&first, libc::SIGKILL);
    let _ = wait_output(first, Duration::from_secs(5));
    let out = r.git_commit(&tb, "b", "b work").output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "b is the fixer now: {err}");
    assert!(err.contains("you are the FIXER"), "{err}");
    assert!(err.contains("stopped the previous fixer's fix"), "{err}");
    // The orphan's own trap wrote its last line before the hook returned.
    let log = witness_log(&r.root);
    assert_eq!(starts(&log).len(), 1, "{log:?}");
    assert!(
        log.iter().any(|l| l.starts_with("stopped a")),
        "stopped before the hook returned: {log:?}"
    );
}

/// The fix starts a daemon in a session of its own (as gpg-agent, sccache or a build server
/// does) and is orphaned; the next fixer stops the fix and nothing else: the daemon lives on,
/// and the message names what was stopped.
// regression: every process group carrying the fix's token was killed, daemons included
#[test]
fn stopping_an_orphaned_fix_spares_a_daemon_it_started_in_a_session_of_its_own() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let daemon_pid = r.shared("daemon.pid");
    let fix = r.shared("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "if [ \"$BUILDLOCK_AGENT\" = a ]; then\n\
               setsid sh -c 'echo $$ > {pid}; exec sleep 300' </dev/null >/dev/null 2>&1 &\n\
               sleep 60\n\
             fi\n\
             echo ok > {status}\n",
            pid = daemon_pid.display(),
            status = status.display()
        ),
    )
    .unwrap();
    r.configure(&format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n",
        s = status.display(),
        f = fix.display()
    ));
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let first = r.commit_retry(&ta, "a");
    let daemon = || -> Option<u32> {
        std::fs::read_to_string(&daemon_pid)
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    assert!(eventually(Duration::from_secs(30), || daemon().is_some()
        && r.state()["keys"][0]["fixer"]["fix_pid"].is_u64()));
    let daemon = daemon().unwrap();
    signal(&first, libc::SIGKILL);
    let _ = wait_output(first, Duration::from_secs(5));
    // b takes over with commit-retry, stops a's fix, runs its own and commits.
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(60));
    let err = text(&out.stderr);
    // The daemon is stopped only by this test, whatever the assertions say.
    let cleanup = scopeguard(daemon);
    assert!(out.status.success(), "{err}");
    assert!(
        alive(daemon),
        "the daemon in its own session lives on: {err}"
    );
    assert!(
        err.contains("stopped the previous fixer's fix: process group"),
        "{err}"
    );
    assert!(err.contains("sleep"), "names what was stopped: {err}");
    drop(cleanup);
}

/// Kills `pid` when dropped (a process the test itself started).
fn scopeguard(pid: u32) -> impl Drop {
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
    Kill(pid)
}

/// A `git` on PATH that, for `write-tree` (commit-retry's look at its own staged work, between
/// its election and its fix), marks `<dir>/in-window` and sleeps `secs` first: a window opened
/// on purpose, for one agent only.
fn slow_write_tree(dir: &std::path::Path, secs: u32) -> std::ffi::OsString {
    let bin = dir.join("slow-git");
    std::fs::create_dir_all(&bin).unwrap();
    let git = which_git();
    std::fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do\n\
               if [ \"$a\" = write-tree ] && [ ! -e {mark} ]; then touch {mark}; sleep {secs}; break; fi\n\
             done\n\
             exec {git} \"$@\"\n",
            mark = dir.join("in-window").display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = std::ffi::OsString::from(bin.as_os_str());
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// Worktrees `ta` and `tb` with staged work; `a` (commit-retry in `ta`) elected and held in the
/// window before its fix for `secs`. Returns `a` and `tb`.
fn a_in_the_window(r: &TestRepo, secs: u32) -> (std::process::Child, PathBuf) {
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let slow = slow_write_tree(&r.root, secs);
    let a = r
        .commit_retry_cmd(&ta, "a")
        .env("PATH", slow)
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || r
        .root
        .join("in-window")
        .exists()));
    (a, tb)
}

/// Both agents end, both commits land, and the witness saw one fix run: `b`'s. Their stderr.
fn only_b_fixed(r: &TestRepo, a: std::process::Child, b: std::process::Child) -> (String, String) {
    let (a, b) = (
        wait_output(a, Duration::from_secs(90)),
        wait_output(b, Duration::from_secs(90)),
    );
    let (ea, eb) = (text(&a.stderr), text(&b.stderr));
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert_eq!(
        starts(&log).len(),
        1,
        "only b's fix ran: {log:?}\n{ea}\n{eb}"
    );
    assert!(starts(&log)[0].starts_with("start b"), "{log:?}");
    assert!(a.status.success() && b.status.success(), "{ea}\n{eb}");
    (ea, eb)
}

fn which_git() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `a` is elected and registered, and then, before its fix starts, an operator resets the key
/// and `b` is elected for the same breakage: `a` starts no fix; `b`'s is the only one.
// regression: the fenced "fix started" record was ignored and a's fix ran beside b's
#[test]
fn a_fixer_reset_before_its_fix_starts_starts_nothing() {
    let r = shared_status_repo("3", "");
    let (a, tb) = a_in_the_window(&r, 4);
    r.buildlock(&r.dir, "operator", &["reset"]).success();
    let b = r.commit_retry(&tb, "b");
    let (ea, _) = only_b_fixed(&r, a, b);
    assert!(ea.contains("moved on before the fix started"), "{ea}");
}

/// The same window without any operator: `a` is SIGSTOPped there for longer than
/// `stale_after`, `b` takes over and fixes; `a` is continued and starts no fix.
// regression: a's fix started beside b's when a was continued
#[test]
fn a_fixer_stopped_before_its_fix_and_taken_over_starts_nothing_when_continued() {
    let r = shared_status_repo("4", "[coordination]\nstale_after = \"2s\"\n");
    let (a, tb) = a_in_the_window(&r, 1);
    signal(&a, libc::SIGSTOP);
    let b = r.commit_retry(&tb, "b");
    // b takes over once a's lease is silent, and its fix starts.
    assert!(eventually(Duration::from_secs(60), || starts(
        &witness_log(&r.root)
    )
    .len()
        == 1));
    signal(&a, libc::SIGCONT);
    only_b_fixed(&r, a, b);
}

/// `a` and its fix are both SIGSTOPped (a stopped fix takes the whole grace to stop: SIGTERM
/// waits, then SIGKILL); `b` takes over after the 1 s lease and stops a's fix, which takes
/// longer than `stale_after`; `c`, waiting meanwhile, waits for `b`: one takeover, not two.
// regression: the new fixer renewed no lease while it stopped the old fix, and was taken over
#[test]
fn a_fixer_stopping_its_predecessors_fix_keeps_its_lease() {
    // a's fix is long; its successor's is short. (No witness marker: a stopped fix ends by
    // SIGKILL here, which no trap sees.)
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = r.shared("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "if [ \"$BUILDLOCK_AGENT\" = a ]; then sleep 60; fi\necho ok > {}\n",
            status.display()
        ),
    )
    .unwrap();
    r.configure(&format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n\
         [coordination]\nstale_after = \"1s\"\nwait = \"60s\"\n",
        s = status.display(),
        f = fix.display()
    ));
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb, tc) = (r.worktree("ta"), r.worktree("tb"), r.worktree("tc"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    r.stage_change(&tc, "fc");
    let a = KillOnDrop(Some(r.commit_retry(&ta, "a")));
    assert!(eventually(Duration::from_secs(30), || r.state()["keys"][0]
        ["fixer"]["fix_pid"]
        .is_u64()));
    let fix_group = r.state()["keys"][0]["fixer"]["fix_pid"].as_u64().unwrap() as i32;
    // regression: the status showed pid 0 between the fix's announcement and its start, and
    // kill(-0) stopped this test's own process group
    assert!(fix_group > 1, "not a fix's process group: {fix_group}");
    // SAFETY: kill has no memory-safety preconditions; the group is the fix this test started.
    unsafe { libc::kill(-fix_group, libc::SIGSTOP) };
    signal(a.0.as_ref().unwrap(), libc::SIGSTOP);
    let b = r.commit_retry(&tb, "b");
    let c = r.commit_retry(&tc, "c");
    let (ob, oc) = (
        wait_output(b, Duration::from_secs(120)),
        wait_output(c, Duration::from_secs(120)),
    );
    let (eb, ec) = (text(&ob.stderr), text(&oc.stderr));
    assert!(
        ob.status.success() && oc.status.success(),
        "b: {eb}\nc: {ec}"
    );
    assert_eq!(
        r.count_events("takeover"),
        1,
        "only a was taken over: {:?}\nb: {eb}\nc: {ec}",
        r.history_events()
    );
}
