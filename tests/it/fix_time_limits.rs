//! How long a fix may take: `fix.timeout` bounds one run of `fix.command` (a hung fix is stopped,
//! its process tree with it, and the re-check counts the failed attempt), and
//! `coordination.max_fix_time` bounds the whole role (past it, the next failing agent takes over
//! as from a stale fixer; the old fix is stopped before the new one starts). Fix runs are judged
//! by the independent witness (`harness::witness_fix`) and by the processes left on the machine,
//! never by buildlock's own account.

use crate::harness::*;
use std::time::Duration;

/// The pids of the processes running `sleep <arg>`: each test sleeps for a duration of its own,
/// so that the processes of its fix runs can be told from everything else on the machine.
fn sleeping(arg: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
                && proc_state(*pid).is_some_and(|s| s != 'Z')
        })
        .collect()
}

/// The history's entries with event `event`, whole.
fn history_of(r: &TestRepo, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(r.buildlock_dir().join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == event)
        .collect()
}

/// A fix that hangs (an LLM call that never answers) is stopped after `fix.timeout`, with what it
/// started; the re-check runs and fails, which counts the attempt; after `max_fix_attempts` the
/// role is given up (status broken), all within seconds instead of `check_timeout` per attempt.
// regression: the fix was bounded only by check_timeout (30 min a run, 90 min in all)
#[test]
fn a_hung_fix_is_stopped_after_fix_timeout_and_counts_as_a_failed_attempt() {
    const SLEEP: &str = "601.5";
    let r = shared_status_repo(
        SLEEP,
        "timeout = \"2s\"\n[coordination]\nmax_fix_attempts = 2\n",
    );
    r.stage_change(&r.dir, "fa");
    let a = r.commit_retry(&r.dir, "a");
    // Generous: each run is stopped after 2 s; 600 s is what it would take unbounded.
    let out = wait_output(a, Duration::from_secs(120));
    let err = text(&out.stderr);
    let log = witness_log(&r.root);
    assert_eq!(
        out.status.code(),
        Some(1),
        "gave the role up: {err}\n{log:?}"
    );
    assert!(
        err.contains("the fix was stopped after fix.timeout (2s)"),
        "{err}"
    );
    // Two runs (one per attempt), each stopped (its TERM trap ran), none ran to its end, never
    // two at once.
    assert_never_two_fixes(&log);
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    assert_eq!(
        log.iter().filter(|l| l.starts_with("stopped a")).count(),
        2,
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("end ")), "{log:?}");
    // The process tree ended with each run: the fix's own `sleep` is gone too.
    assert!(
        eventually(Duration::from_secs(10), || sleeping(SLEEP).is_empty()),
        "a fix's child outlived its run: {:?}",
        sleeping(SLEEP)
    );
    let key = &r.state()["keys"][0];
    assert_eq!(key["status"], "broken", "{key}");
    assert!(key["fixer"].is_null(), "{key}");
    let gave_up = history_of(&r, "gave_up");
    assert_eq!(gave_up.len(), 1, "{:?}", r.history_events());
    assert_eq!(gave_up[0]["attempts"], 2);
    let finished = history_of(&r, "fix_finished");
    assert_eq!(finished.len(), 2, "{:?}", r.history_events());
    assert!(finished.iter().all(|f| f["ok"] == false), "{finished:?}");
}

/// A live fixer whose fix hangs (and whose `fix.timeout` is long) holds the key past
/// `max_fix_time`: the next agent that fails takes over (logged as a takeover for `overtime`), the
/// old fix is stopped before the new one starts, and the old fixer, fenced, starts nothing more
/// and goes on as any other agent: its commit passes on the new fixer's fix.
// regression: a live fixer was never taken over, however long it held the key
#[test]
fn past_max_fix_time_the_next_failing_agent_takes_over_and_stops_the_old_fix() {
    const SLEEP: &str = "602.5";
    // a's fix hangs; b's fixes quickly.
    let sleep = format!("$(if [ \"$BUILDLOCK_AGENT\" = a ]; then echo {SLEEP}; else echo 0.2; fi)");
    let r = shared_status_repo(
        &sleep,
        "timeout = \"10m\"\n[coordination]\nmax_fix_time = \"3s\"\nwait = \"60s\"\n",
    );
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let mut a = KillOnDrop(Some(r.commit_retry(&ta, "a")));
    assert!(
        eventually(Duration::from_secs(30), || fix_on_record(&r, 1)),
        "{:?}",
        witness_log(&r.root)
    );
    // Wait for the event, not for a time: the status says when a held the key too long. Until
    // then a is live, and its fix runs.
    assert!(
        eventually(Duration::from_secs(30), || {
            r.state()["keys"][0]["fixer"]["liveness"] == "overtime"
        }),
        "{}",
        r.state()
    );
    let fixer = &r.state()["keys"][0]["fixer"];
    assert_eq!(
        (&fixer["agent"], &fixer["live"]),
        (&"a".into(), &true.into())
    );
    let b = r.commit_retry(&tb, "b");
    let ob = wait_output(b, Duration::from_secs(60));
    let oa = wait_output(a.0.take().unwrap(), Duration::from_secs(60));
    let (ea, eb) = (text(&oa.stderr), text(&ob.stderr));
    let log = witness_log(&r.root);
    assert!(ob.status.success(), "b: {eb}\n{log:?}");
    assert!(
        eb.contains("held the role for longer than coordination.max_fix_time (3s)"),
        "{eb}"
    );
    // The old fix was stopped before the new one started, never two at once.
    assert_never_two_fixes(&log);
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    let at = |prefix: &str| log.iter().position(|l| l.starts_with(prefix));
    assert!(
        matches!((at("start a"), at("stopped a"), at("start b"), at("end b")),
            (Some(sa), Some(xa), Some(sb), Some(eb)) if sa < xa && xa < sb && sb < eb),
        "{log:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || sleeping(SLEEP).is_empty()),
        "the old fix's child outlived it: {:?}",
        sleeping(SLEEP)
    );
    // The takeover is on record, with its reason.
    let takeovers = history_of(&r, "takeover");
    assert_eq!(takeovers.len(), 1, "{:?}", r.history_events());
    assert_eq!(
        (
            &takeovers[0]["from"],
            &takeovers[0]["agent"],
            &takeovers[0]["reason"]
        ),
        (&"a".into(), &"b".into(), &"overtime".into())
    );
    // a was fenced: it started nothing more and committed its own work once the build was fixed.
    assert!(oa.status.success(), "a: {ea}\n{log:?}");
    assert!(ea.contains("the fixer role moved on"), "{ea}");
    assert_eq!(r.last_subject(&ta), "a work");
    assert_eq!(r.state()["keys"][0]["status"], "passing");
    assert_eq!(r.state()["totals"]["takeovers"], 1);
}
