//! A waiter and a silent fixer: a waiter whose own wait would end before a silent fixer's lease
//! runs out keeps waiting until it does (never longer than `stale_after` past its own wait), says
//! so, and takes over.

use crate::harness::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A repository whose check reads the shared `status` file (broken now), with `extra` config.
/// `with_fix`: a `fix.command` that repairs it. Worktrees `ta` and `tb` have staged work.
fn broken_repo(extra: &str, with_fix: bool) -> (TestRepo, PathBuf, PathBuf) {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = if with_fix {
        format!("[fix]\ncommand = \"echo ok > {}\"\n", status.display())
    } else {
        String::new()
    };
    r.configure(&format!(
        "check = \"grep -qx ok {}\"\n{fix}{extra}",
        status.display()
    ));
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    (r, ta, tb)
}

/// `a` is elected by a plain `git commit` (a fixer by hand) and then says nothing more: it
/// just exits, as an agent whose session died does.
fn a_fixes_by_hand_and_falls_silent(r: &TestRepo, ta: &std::path::Path) {
    let out = r.git_commit(ta, "a", "a work").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
}

/// The reviewer's case: `wait = 2s`, `stale_after = 6s`. commit-retry used to give up after two
/// waits (exit 75 after about 4 s, "it is being fixed") while nobody was fixing; now it keeps
/// waiting until the silent fixer's lease runs out, says so, takes over and runs the fix.
// regression: exit 75 after 4.2 s, the dead fixer by hand outlived its waiter
#[test]
fn a_waiter_outwaits_a_silent_fixer_by_hand_and_takes_over() {
    let (r, ta, tb) = broken_repo(
        "[coordination]\nwait = \"2s\"\nstale_after = \"6s\"\n[hook]\nwait = false\n",
        true,
    );
    a_fixes_by_hand_and_falls_silent(&r, &ta);
    let start = Instant::now();
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(90));
    let took = start.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "after {took:?}: {err}");
    assert!(
        err.contains("the fixer `a` has been silent since"),
        "it says why it keeps waiting: {err}"
    );
    assert!(
        err.contains("waiting until its lease runs out at"),
        "and until when: {err}"
    );
    assert_eq!(r.last_subject(&tb), "b work");
    assert_eq!(r.count_events("takeover"), 1, "{:?}", r.history_events());
    assert_eq!(r.state()["keys"][0]["status"], "passing");
    eprintln!("measured: b took over and committed after {took:?}");
}

/// Without a `fix.command`, the waiter that outwaited the silent fixer is elected: exit 1, "you
/// are the fixer", not 75.
#[test]
fn a_waiter_that_outwaits_a_silent_fixer_is_elected_without_a_fix_command() {
    let (r, ta, tb) = broken_repo(
        "[coordination]\nwait = \"2s\"\nstale_after = \"6s\"\n[hook]\nwait = false\n",
        false,
    );
    a_fixes_by_hand_and_falls_silent(&r, &ta);
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(90));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("you are the fixer"), "{err}");
    assert!(err.contains("has been silent since"), "{err}");
    assert_eq!(r.count_events("takeover"), 1, "{:?}", r.history_events());
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "b");
}

/// The bound, when the lease runs out within one more wait: `wait` = 12 s, one commit attempt
/// to wait in, `stale_after` = 20 s. The waiter waits past its own wait, until the lease runs
/// out (about 20 s after it first saw it), never more than `stale_after` past its own wait, and
/// takes over.
#[test]
fn waiting_past_the_own_wait_is_bounded_by_stale_after() {
    let wait = Duration::from_secs(12);
    let stale_after = Duration::from_secs(20);
    let (r, ta, tb) = broken_repo(
        "[coordination]\nwait = \"12s\"\nstale_after = \"20s\"\n[hook]\nwait = false\n\
         [retry]\nattempts = 2\n",
        false,
    );
    a_fixes_by_hand_and_falls_silent(&r, &ta);
    let start = Instant::now();
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(120));
    let took = start.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {err}");
    assert!(err.contains("waiting until its lease runs out at"), "{err}");
    // Its own wait, then at most `stale_after` (the lease was fresh when b began), plus the
    // commits and checks around them on a loaded machine.
    assert!(
        took < wait + stale_after + Duration::from_secs(10),
        "{took:?}: {err}"
    );
    // It did wait for the lease: it did not give up at its own wait.
    assert!(
        took >= stale_after - Duration::from_secs(2),
        "{took:?}: {err}"
    );
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "b");
    eprintln!("measured: {took:?} (wait {wait:?}, stale_after {stale_after:?})");
}

/// A fresh lease that runs out far beyond the waiter's own waits (`wait` = 2 s, three attempts,
/// `stale_after` = 60 s) is not waited for: the waiter ends at its own waits (exit 75, still
/// blocked), nowhere near `stale_after` later; the lease decides for a later try.
#[test]
fn a_lease_far_beyond_the_own_wait_is_not_waited_for() {
    let (r, ta, tb) = broken_repo(
        "[coordination]\nwait = \"2s\"\nstale_after = \"60s\"\n[hook]\nwait = false\n",
        false,
    );
    a_fixes_by_hand_and_falls_silent(&r, &ta);
    let start = Instant::now();
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(120));
    let took = start.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "after {took:?}: {err}");
    assert!(!err.contains("waiting until its lease runs out"), "{err}");
    assert!(took < Duration::from_secs(30), "{took:?}: {err}");
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "a");
    eprintln!("measured: exit 75 after {took:?}");
}
