//! The `buildlock` operator CLI.

use crate::harness::*;

fn buildlock(r: &TestRepo, args: &[&str], agent: &str) -> std::process::Output {
    r.cmd(BUILDLOCK, &r.dir)
        .args(args)
        .env("BUILDLOCK_AGENT", agent)
        .output()
        .unwrap()
}

/// `a1` is the fixer (by hand: a plain hook run); `a2` was told to wait and exited (75).
fn broken_with_fixer() -> TestRepo {
    let r = TestRepo::new("check = \"echo boom; false\"\n[hook]\nwait = false\n");
    assert_eq!(r.hook(&r.dir, "a1").status.code(), Some(1));
    assert_eq!(r.hook(&r.dir, "a2").status.code(), Some(75));
    r
}

/// `a1` is the fixer (by hand: a plain hook run), `a2` waits for it in a live process.
fn broken_with_fixer_and_waiter() -> (TestRepo, std::process::Child) {
    let r = TestRepo::new(
        "check = \"test -e fixed || { echo boom; false; }\"\n[hook]\nwait = true\n[fix]\ncost = 0.5\n",
    );
    assert_eq!(r.hook(&r.dir, "a1").status.code(), Some(1));
    let waiter = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a2")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while r.state()["keys"][0]["waiters"] != serde_json::json!(["a2"]) {
        assert!(std::time::Instant::now() < until, "a2 never waited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (r, waiter)
}

#[test]
fn status_json_has_the_contract_fields() {
    let (r, waiter) = broken_with_fixer_and_waiter();
    let s = r.state();
    assert_eq!(s["backend"], "local");
    let key = &s["keys"][0];
    assert_eq!(key["key"], "repo");
    assert_eq!(key["status"], "fixing");
    assert_eq!(key["generation"], 1);
    assert_eq!(key["fix_commit"], serde_json::Value::Null);
    let f = &key["fixer"];
    assert_eq!(f["agent"], "a1");
    // Fixing by hand: the hook that elected a1 has exited, so no process holds the role.
    assert_eq!(f["pid"], serde_json::Value::Null);
    assert!(f["host"].is_string());
    for t in ["since", "heartbeat"] {
        let v = f[t].as_str().unwrap();
        assert!(
            v.len() == 20 && v.ends_with('Z') && v.as_bytes()[10] == b'T',
            "{t}: {v}"
        );
    }
    assert_eq!(
        (f["attempts"].as_u64(), f["live"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(key["signature"].as_str().unwrap().len(), 16);
    assert!(std::path::Path::new(key["log"].as_str().unwrap()).is_absolute());
    assert_eq!(
        std::fs::read_to_string(key["log"].as_str().unwrap()).unwrap(),
        "boom\n"
    );
    assert_eq!(key["waiters"], serde_json::json!(["a2"]));
    // a1 fixes it: a2 wakes, and the wait counts as a fix run avoided.
    std::fs::write(r.dir.join("fixed"), "").unwrap();
    assert_eq!(r.hook(&r.dir, "a1").status.code(), Some(0));
    let out = wait_output(waiter, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = r.state();
    assert_eq!(s["keys"][0]["status"], "passing");
    assert_eq!(s["keys"][0]["waiters"], serde_json::json!([]));
    let t = &s["totals"];
    for (field, want) in [
        ("failures", 2.0),
        ("elections", 1.0),
        ("takeovers", 0.0),
        ("waits", 1.0),
        ("fixes", 1.0),
        ("fix_runs", 0.0),
        ("fix_runs_avoided", 1.0),
        ("saved", 0.5),
    ] {
        assert_eq!(t[field].as_f64(), Some(want), "{field}");
    }
}

#[test]
fn status_for_people() {
    let (r, mut waiter) = broken_with_fixer_and_waiter();
    let out = buildlock(&r, &["status"], "x");
    let s = text(&out.stdout);
    assert!(
        s.contains("key `repo`: FIXING (generation 1)")
            && s.contains("fixer     a1")
            && s.contains("waiting   a2"),
        "{s}"
    );
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    let s = text(&buildlock(&r, &["status"], "x").stdout);
    assert!(
        !s.contains("waiting   a2"),
        "a killed waiter is not listed: {s}"
    );
}

#[test]
fn release_by_the_fixer_only() {
    let r = broken_with_fixer();
    let out = buildlock(&r, &["release"], "a2");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`a1` fixes key `repo`"),
        "{}",
        text(&out.stderr)
    );
    let out = buildlock(&r, &["release"], "a1");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["fixer"].is_null()),
        (Some("broken"), true)
    );
    assert!(r.history_events().contains(&"released".to_owned()));
}

#[test]
fn reset_forces_passing_with_a_new_generation() {
    let r = broken_with_fixer();
    let out = buildlock(&r, &["reset"], "ops");
    assert_eq!(out.status.code(), Some(0));
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["generation"].as_u64()),
        (Some("passing"), Some(2))
    );
    // The old fixer's passing check can no longer mark anything; its failure starts a new episode.
    assert_eq!(r.hook(&r.dir, "a1").status.code(), Some(1));
    assert_eq!(r.state()["keys"][0]["generation"], 3);
}

#[test]
fn log_tells_the_story() {
    let r = broken_with_fixer();
    let out = buildlock(&r, &["log"], "x");
    let s = text(&out.stdout);
    assert!(
        s.contains("elected fixer") && s.contains("waits for `a1`"),
        "{s}"
    );
    let json = text(&buildlock(&r, &["log", "--json", "-n", "2"], "x").stdout);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["event"], "waiting");
    assert!(events[1]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn doctor_and_usage_errors() {
    let r = TestRepo::new("check = \"true\"\n");
    let out = buildlock(&r, &["doctor"], "x");
    let s = text(&out.stdout);
    assert!(
        s.contains("file locking works") && s.contains("is buildlock's and executable"),
        "{s}"
    );
    assert_eq!(out.status.code(), Some(0), "{s}");
    std::fs::remove_file(r.dir.join(".git/hooks/pre-commit")).unwrap();
    let out = buildlock(&r, &["doctor"], "x");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no pre-commit hook"));
    assert_eq!(buildlock(&r, &["frobnicate"], "x").status.code(), Some(2));
    assert_eq!(buildlock(&r, &["log", "-n"], "x").status.code(), Some(2));
    std::fs::write(r.dir.join(".buildlock.toml"), "bad = 1\n").unwrap();
    assert_eq!(buildlock(&r, &["status"], "x").status.code(), Some(78));
}
