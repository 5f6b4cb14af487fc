//! The election: who becomes the fixer, and what the agents do when they cannot hold an election
//! (a stopped process holds the election lock, a signal while waiting for it, a check that
//! cannot run at all).

use crate::harness::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A check whose command is not found (exit 127) is a configuration error (78): nobody is
/// elected over `sh: not found`.
// regression: exit 127 elected a fixer
#[test]
fn a_check_command_not_found_elects_nobody() {
    let r = TestRepo::new("check = \"no-such-command-buildlock-test\"\n[hook]\nwait = false\n");
    r.hook(&r.dir, "a").code(78).stderr(contains("FIXER").not());
    assert!(
        r.history_events()
            .iter()
            .all(|e| e != "elected" && e != "failed"),
        "{:?}",
        r.history_events()
    );
}

/// A SIGSTOPped process holds the election lock: the agents behind it exit 70 (coordination
/// failed) and name the stopped pid; none is told it is the fixer.
// regression: three agents exited 1 after 30 s, all told they were fixers
#[test]
fn a_stopped_election_lock_holder_gives_exit_70() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let staller = KillOnDrop(Some(
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "staller")
            .env("BUILDLOCK_FAULT", "election:stop")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = staller.id();
    assert!(eventually(Duration::from_secs(10), || proc_state(pid) == Some('T')));
    let agents: Vec<Child> = (0..3)
        .map(|i| {
            r.cmd(PRE_COMMIT, &r.dir)
                .env("BUILDLOCK_AGENT", format!("a{i}"))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, a) in agents.into_iter().enumerate() {
        let out = wait_output(a, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "a{i}: {err}");
        assert!(!err.contains("FIXER"), "a{i}: {err}");
        assert!(err.contains(&format!("pid {pid}")), "a{i}: {err}");
    }
    drop(staller);
    assert!(r.state()["keys"].as_array().unwrap().is_empty());
}

/// SIGINT while waiting for the election lock (held by a stopped process) ends the hook at once
/// with 130.
// regression: SIGINT was ignored for 29 s, then exit 1
#[test]
fn sigint_while_waiting_for_the_election_lock_exits_130_promptly() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let staller = KillOnDrop(Some(
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "staller")
            .env("BUILDLOCK_FAULT", "election:stop")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = staller.id();
    assert!(eventually(Duration::from_secs(10), || proc_state(pid) == Some('T')));
    let a = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&a, libc::SIGINT);
    let start = Instant::now();
    let out = wait_output(a, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(130),
        "after {:?}: {}",
        start.elapsed(),
        text(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    eprintln!("measured: exit 130 {:?} after SIGINT", start.elapsed());
}
