//! Stale failures: a check that failed on a tree older than the last change on record (a fix, a
//! reset) is run again, a bounded number of times, and a stale failure counts as neither a
//! breakage nor an avoided fix run.

use crate::harness::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A failing check, with `buildlock reset` (of a key another agent broke) during each of its
/// first three runs: after two stale re-runs the failure counts. Each of the first three runs
/// waits for its reset before it fails, so the resets land inside the runs however loaded the
/// machine is.
// regression: the check ran again and again until killed, recording no failure
#[test]
fn stale_reruns_are_bounded_when_every_run_is_reset() {
    let r = TestRepo::new("");
    let runs = r.shared("runs");
    let reset = r.shared("reset");
    r.configure(&format!(
        "check = \"echo run >> {runs}; n=$(wc -l < {runs}); \
             [ $n -gt 3 ] || while [ ! -e {reset}-$n ]; do sleep 0.02; done; false\"\n\
             [hook]\nwait = false\n",
        runs = runs.display(),
        reset = reset.display()
    ));
    let hook = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Another agent's failure makes the key broken again before each reset (a reset of a
    // passing key changes nothing).
    let z_config = r.shared("z.toml");
    std::fs::write(&z_config, "check = \"false\"\n").unwrap();
    for n in 1..=3 {
        if !eventually(Duration::from_secs(10), || lines(&runs).len() >= n) {
            break;
        }
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "z")
            .env("BUILDLOCK_CONFIG", &z_config)
            .assert()
            .code(1);
        r.buildlock(&r.dir, "operator", &["reset"]).success();
        std::fs::write(format!("{}-{n}", reset.display()), "").unwrap();
    }
    let out = wait_output(hook, Duration::from_secs(15));
    let runs = lines(&runs).len();
    assert_eq!(
        out.status.code(),
        Some(1),
        "ran {runs} times: {}",
        text(&out.stderr)
    );
    assert_eq!(runs, 3, "two stale re-runs, then the failure counts");
    let history = std::fs::read_to_string(r.buildlock_dir().join("history.jsonl")).unwrap();
    let failed_a = history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "failed" && e["agent"] == "a")
        .count();
    assert_eq!(failed_a, 1, "the third failure of `a` counts: {history}");
    eprintln!("measured: {runs} runs, exit 1, 1 failure of `a` recorded");
}

/// The agent's clock is 30 s behind the time of the last change on record: staleness is decided
/// by a counter, not the clock, so the failure counts at once.
// regression: every failure looked older than the fix and the check ran again forever
#[test]
fn a_clock_behind_the_recorded_change_does_not_loop() {
    let r = TestRepo::new("");
    let runs = r.shared("runs");
    r.configure(&format!(
        "check = \"echo run >> {}; false\"\n[hook]\nwait = false\n",
        runs.display()
    ));
    r.buildlock(&r.dir, "operator", &["reset"]).success();
    let start = Instant::now();
    let hook = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "behind")
        .env("LD_PRELOAD", clock_shift_library())
        .env("FAKE_CLOCK_OFFSET_MS", "-30000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(hook, Duration::from_secs(5));
    let runs = lines(&runs).len();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the check ran {runs} times in {:?}",
        start.elapsed()
    );
    assert_eq!(runs, 1);
    assert!(text(&out.stderr).contains("you are the FIXER"));
    eprintln!("measured: 1 run, elected, in {:?}", start.elapsed());
}

/// `b`'s check started before `a`'s fix and failed after it: a stale failure, re-run, passing.
/// `b` hit no breakage on record and avoided no fix run.
// regression: the stale re-run counted as a fix run avoided
#[test]
fn a_stale_rerun_is_not_an_avoided_fix_run() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let marker = r.shared("b-checking");
    r.configure(&format!(
            "check = \"grep -qx ok {s} && exit 0; [ $BUILDLOCK_AGENT = b ] && touch {m}; sleep 1; false\"\n\
             [hook]\nwait = false\n",
            s = status.display(),
            m = marker.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    r.hook(&r.dir, "a").code(1);
    let b = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "b")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || marker.exists()));
    std::fs::write(&status, "ok\n").unwrap();
    r.hook(&r.dir, "a").code(0);
    let out = wait_output(b, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("running it again"),
        "{}",
        text(&out.stderr)
    );
    let totals = &r.state()["totals"];
    assert_eq!(totals["fix_runs_avoided"], 0, "{totals}");
    assert_eq!(totals["failures"], 1, "{totals}");
}
