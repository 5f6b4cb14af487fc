//! commit-retry on real repositories: waiting, fixing, takeover, contention, exit codes.

use crate::harness::*;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// A repository whose check reads the shared `status`, and whose fix repairs it, appending
/// `start <agent>` and `end <agent>` to the shared witness file.
fn repo_with_fix(fix_sleep: &str, extra: &str) -> TestRepo {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let witness = r.shared("witness");
    let fix = r.shared("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT\" >> {w}\nsleep {fix_sleep}\necho ok > {s}\necho \"end $BUILDLOCK_AGENT\" >> {w}\n",
            w = witness.display(),
            s = status.display()
        ),
    )
    .unwrap();
    let config = format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\ncost = 0.25\n{extra}",
        s = status.display(),
        f = fix.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    std::fs::write(&status, "broken\n").unwrap();
    r
}

/// Fix runs never overlap: every `start` is followed by its own `end` before the next `start`,
/// except a run that was stopped (no `end`).
fn assert_no_overlap(lines: &[String]) {
    let mut open: Option<&str> = None;
    for l in lines {
        if let Some(agent) = l.strip_prefix("start ") {
            open = Some(agent);
        } else if let Some(agent) = l.strip_prefix("end ") {
            assert_eq!(
                open,
                Some(agent),
                "an `end` that is not of the running fix: {lines:?}"
            );
            open = None;
        }
    }
}

#[test]
fn sixteen_agents_one_fix_every_commit_lands() {
    const AGENTS: usize = 16;
    let r = repo_with_fix("0.5", "");
    let trees: Vec<_> = (0..AGENTS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("f{i}"));
            t
        })
        .collect();
    let children: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| r.commit_retry(t, &format!("a{i}")))
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| wait_output(c, Duration::from_secs(120)))
        .collect();
    // On a failure, every agent's story: the one that failed is rarely the one that went wrong.
    let all = || {
        outs.iter()
            .enumerate()
            .map(|(i, o)| format!("--- a{i} ({:?}):\n{}", o.status, text(&o.stderr)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (i, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "a{i} failed; all agents:\n{}", all());
        assert_eq!(r.last_subject(&trees[i]), format!("a{i} work"));
    }
    let w = r.witness();
    assert_eq!(w.len(), 2, "exactly one fix ran: {w:?}");
    assert_no_overlap(&w);
    let status = r.state();
    let totals = &status["totals"];
    assert_eq!(totals["fix_runs"], 1);
    assert_eq!(totals["fix_runs_avoided"], (AGENTS - 1) as u64);
    assert_eq!(totals["saved"], 0.25 * (AGENTS - 1) as f64);
    assert_eq!(status["keys"][0]["status"], "passing");
    assert!(status["keys"][0]["fixer"].is_null());
}

#[test]
fn sigkilled_fixer_is_replaced_and_its_orphaned_fix_stopped() {
    let r = repo_with_fix("3", "");
    let (ta, tb) = (r.worktree("a"), r.worktree("b"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || r.witness() == ["start a"]));
    let b = r.commit_retry(&tb, "b");
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    signal(&a, libc::SIGKILL);
    let _ = wait_output(a, Duration::from_secs(5));
    let out = wait_output(b, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("the fixer `a` died"), "{err}");
    assert!(err.contains("stopped the previous fixer's fix"), "{err}");
    let w = r.witness();
    assert_eq!(
        w,
        ["start a", "start b", "end b"],
        "a's orphaned fix was stopped before b's began"
    );
    assert_no_overlap(&w);
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["generation"].as_u64()),
        (Some("passing"), Some(2))
    );
    assert!(r.history_events().contains(&"takeover".to_owned()));
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        r.witness(),
        ["start a", "start b", "end b"],
        "the orphan never finished"
    );
}

#[test]
fn sigstopped_fixer_is_taken_over_after_the_lease_and_fenced_when_resumed() {
    // a's fix outlasts any load (b's takeover stops it); b's own fix is short. With one short
    // fix for both, a's fix, which SIGSTOP does not stop, could end before b's check ran.
    let r = repo_with_fix(
        "$([ \"$BUILDLOCK_AGENT\" = a ] && echo 60 || echo 2)",
        "[coordination]\nstale_after = \"1s\"\nwait = \"20s\"\n",
    );
    let (ta, tb) = (r.worktree("a"), r.worktree("b"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || r.witness() == ["start a"]));
    // Mid-fix: the fix runs and is registered (the fixer holds no lock now).
    // regression: stopped between registering its fix and recording it, `a` held the election
    // lock, and `b` could not decide anything for 30 s
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["fixer"]["fix_pid"]
        .is_u64()
        && fixer_between_steps(&r, 1)));
    signal(&a, libc::SIGSTOP);
    let b = r.commit_retry(&tb, "b");
    let out = wait_output(b, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after_b = r.state();
    assert_eq!(after_b["keys"][0]["status"], "passing");
    let generation = after_b["keys"][0]["generation"].as_u64().unwrap();
    assert_eq!(generation, 2);
    // a resumes: it was fenced, changes nothing, and still gets its commit in.
    signal(&a, libc::SIGCONT);
    let out = wait_output(a, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["generation"].as_u64()),
        (Some("passing"), Some(generation))
    );
    assert_eq!(r.last_subject(&ta), "a work");
    let w = r.witness();
    assert_eq!(
        w.iter().filter(|l| l.starts_with("start")).count(),
        2,
        "{w:?}"
    );
    assert_no_overlap(&w);
}

#[test]
fn git_lock_contention_is_retried_and_elects_nobody() {
    let r = repo_with_fix("0", "");
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    r.stage_change(&r.dir, "x");
    let lock = r.dir.join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let child = r.commit_retry(&r.dir, "a");
    std::thread::sleep(Duration::from_millis(700));
    std::fs::remove_file(&lock).unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another git process holds a lock"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !r.history_events()
            .iter()
            .any(|e| e == "elected" || e == "failed")
    );
}

#[test]
fn exit_codes() {
    // 0: committed.
    let r = repo_with_fix("0", "");
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    r.stage_change(&r.dir, "a");
    assert_eq!(
        wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30))
            .status
            .code(),
        Some(0)
    );

    // git's own code passes through: nothing to commit.
    let out = wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains("fixer"),
        "{}",
        text(&out.stderr)
    );
    // ... and a bad option (git's 129).
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(129));

    // 1: the fixer without fix.command.
    let r = TestRepo::new("check = \"false\"\n");
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no `fix.command` is configured"),
        "{}",
        text(&out.stderr)
    );

    // 75: still blocked after retry.attempts.
    let config = "check = \"false\"\n[coordination]\nwait = \"200ms\"\n[retry]\nattempts = 2\n";
    let r = TestRepo::new(config);
    r.hook(&r.dir, "fixer").code(1);
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("still blocked by `fixer` after 2 commit attempts"));

    // 1: the fix failed max_fix_attempts times.
    let config =
        "check = \"false\"\n[fix]\ncommand = \"true\"\n[coordination]\nmax_fix_attempts = 2\n";
    let r = TestRepo::new(config);
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("gave the fixer role up"));
    assert_eq!(r.state()["keys"][0]["status"], "broken");
    assert_eq!(r.state()["totals"]["fix_runs"], 2);

    // 78: configuration error.
    let r = TestRepo::new("[fix]\ncomand = \"x\"\n");
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "x"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("fix.comand"));

    // 128+n: ended by a signal while waiting.
    let config = "check = \"false\"\n[coordination]\nwait = \"30s\"\n";
    let r = TestRepo::new(config);
    r.hook(&r.dir, "fixer").code(1);
    r.stage_change(&r.dir, "a");
    let child = r.commit_retry(&r.dir, "x");
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["x"])));
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_output(child, Duration::from_secs(10)).status.code(),
        Some(143)
    );
}

#[test]
fn fix_gets_the_contract_environment() {
    let r = TestRepo::new("");
    let env_out = r.shared("env");
    let config = format!(
        "check = \"test -e {ok}\"\n[fix]\ncommand = \"env | grep ^BUILDLOCK_ | sort > {e}; touch {ok}\"\n",
        ok = r.shared("ok").display(),
        e = env_out.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "fx"), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env = std::fs::read_to_string(env_out).unwrap();
    for var in [
        "BUILDLOCK_AGENT=fx",
        "BUILDLOCK_ATTEMPT=1",
        "BUILDLOCK_GENERATION=1",
        "BUILDLOCK_KEY=repo",
        "BUILDLOCK_LOG=/",
        "BUILDLOCK_SIGNATURE=",
    ] {
        assert!(env.contains(var), "{var} missing from:\n{env}");
    }
}

/// A child's stderr as it comes, for tests that time when a line appears.
fn stream_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read as _;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (mut err, into) = (child.stderr.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Waits (20 s at most) until the streamed stderr says `what`; fails with all of it otherwise.
fn until_said(err: &std::sync::Mutex<String>, what: &str) {
    assert!(
        eventually(Duration::from_secs(20), || err
            .lock()
            .unwrap()
            .contains(what)),
        "never said {what:?}:\n{}",
        err.lock().unwrap()
    );
}

/// Without `BUILDLOCK_POLL` a waiter sleeps until something is due (its next progress line is
/// 5 s away): only the fixer's step itself can wake it this soon (the state bell).
#[test]
fn a_waiter_wakes_on_the_fix_itself_not_on_a_poll() {
    let r = repo_with_fix("0", "");
    // a is the fixer.
    r.hook(&r.dir, "a").code(1);
    let tb = r.worktree("b");
    r.stage_change(&tb, "fb");
    let mut b = commit_retry_without_poll(&r, &tb, "b");
    let err = stream_stderr(&mut b);
    until_said(&err, "waiting up to");
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    let fixed = std::time::Instant::now();
    // The fix passes.
    r.hook(&r.dir, "a").code(0);
    until_said(&err, "retrying the commit");
    let noticed = fixed.elapsed();
    let out = wait_output(b, Duration::from_secs(30));
    assert!(out.status.success(), "{}", err.lock().unwrap());
    assert!(
        noticed < Duration::from_millis(2500),
        "b noticed the fix after {noticed:?}: on a poll, not on the change"
    );
}

/// The same for a fixer that dies: its exit wakes the waiter (a pidfd), not a poll.
#[test]
fn a_waiter_wakes_on_the_fixers_death_itself_not_on_a_poll() {
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
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"grep -qx ok {}\"\n[fix]\ncommand = \"sh {}\"\n",
            status.display(),
            fix.display()
        ),
    )
    .unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb) = (r.worktree("a"), r.worktree("b"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    assert!(eventually(Duration::from_secs(20), || {
        r.state()["keys"][0]["fixer"]["registered"] == true
    }));
    let mut b = commit_retry_without_poll(&r, &tb, "b");
    let err = stream_stderr(&mut b);
    until_said(&err, "waiting up to");
    signal(&a, libc::SIGKILL);
    let died = std::time::Instant::now();
    until_said(&err, "the fixer `a` died");
    let noticed = died.elapsed();
    let _ = wait_output(a, Duration::from_secs(5));
    let out = wait_output(b, Duration::from_secs(60));
    assert!(out.status.success(), "{}", err.lock().unwrap());
    // Without BUILDLOCK_POLL nothing else is due for a minute (the periodic full look) or for
    // the lease (15 min): within half of that it was the exit that woke b, with room for a
    // loaded machine (a 2.5 s bound failed at load 10).
    assert!(
        noticed < Duration::from_secs(30),
        "b noticed the death after {noticed:?}: on a poll, not on the exit"
    );
}

fn commit_retry_without_poll(r: &TestRepo, dir: &Path, agent: &str) -> Child {
    r.commit_retry_cmd(dir, agent)
        .env_remove("BUILDLOCK_POLL")
        .spawn()
        .unwrap()
}

/// A green commit through commit-retry loads nothing and leaves nothing: no decision file in
/// its private folder, and none in the coordination dir.
#[test]
fn a_green_commit_retry_leaves_no_decision_file() {
    let r = TestRepo::new("check = \"true\"\n");
    let tmp = r.root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    r.stage_change(&r.dir, "f");
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "green"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "green");
    let private = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("buildlock-"))
        .expect("the private hand-over folder");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        private.metadata().unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(std::fs::read_dir(private.path()).unwrap().count(), 0);
    assert!(!r.buildlock_dir().join("run").exists());
}

/// The fixer was committing its own work: a fix that only stages what it fixes is committed on
/// its own, so that the commit every waiter is handed holds the fix and nothing else; the own
/// work follows in a commit of its own, staged exactly as the agent had staged it.
#[test]
fn the_fix_is_committed_on_its_own_not_with_the_fixers_work() {
    let r = repo_broken_in_tree("");
    // The agent's work: a new file, and a change staged in part (the rest stays unstaged).
    std::fs::write(r.dir.join("mine.txt"), "my work\n").unwrap();
    std::fs::write(r.dir.join("notes.txt"), "one\ntwo\n").unwrap();
    r.git(&["add", "mine.txt", "notes.txt"]);
    std::fs::write(r.dir.join("notes.txt"), "one\ntwo\nthree (not staged)\n").unwrap();

    let out = wait_output(r.commit_retry(&r.dir, "fixer"), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = |rev: &str| {
        text(&r.git(&["show", "--format=", "--name-only", rev]).stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(files("HEAD~1"), ["build.txt"], "{}", text(&out.stderr));
    assert!(r.last_subject(&r.dir).ends_with("fixer work"));
    assert_eq!(files("HEAD"), ["mine.txt", "notes.txt"]);
    assert_eq!(
        text(&r.git(&["show", "HEAD:notes.txt"]).stdout),
        "one\ntwo\n",
        "the own work is committed as it was staged"
    );
    assert_eq!(
        std::fs::read_to_string(r.dir.join("notes.txt")).unwrap(),
        "one\ntwo\nthree (not staged)\n",
        "the work tree is untouched"
    );
    // What the waiters are handed is the fix alone.
    let fix_commit = text(&r.git(&["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    assert_eq!(r.state()["keys"][0]["fix_commit"], fix_commit.as_str());
}

/// commit-retry killed while its first commit's check runs: git and the hook go on, and the
/// hook elects it. It was to run `fix.command` itself and never will: the next agent to fail
/// takes the role over at once, not after `stale_after`.
#[test]
fn a_commit_retry_killed_before_it_took_its_role_is_replaced_at_once() {
    let r = repo_with_fix(
        "0.2",
        "[coordination]\nstale_after = \"10m\"\nwait = \"30s\"\n",
    );
    // A check slow enough to kill commit-retry while it runs.
    let config = std::fs::read_to_string(r.dir.join(".buildlock.toml")).unwrap();
    let config = config.replace("check = \"grep", "check = \"sleep 1; grep");
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "slow check", "--no-verify"]);
    let (ta, tb) = (r.worktree("a"), r.worktree("b"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = r.commit_retry(&ta, "a");
    std::thread::sleep(Duration::from_millis(300));
    signal(&a, libc::SIGKILL);
    let _ = wait_output(a, Duration::from_secs(5));
    // a's orphaned hook finishes its check and elects a.
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["fixer"]["agent"]
        == "a"));
    let started = std::time::Instant::now();
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("taking over from `a`"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.witness(), ["start b", "end b"]);
}

/// The fixer dies with several agents waiting: one of them takes over, the others wait for it
/// instead of all running their (possibly long) check at the same instant only to learn that.
#[test]
fn when_the_fixer_dies_one_waiter_takes_over_and_the_others_wait_without_a_check() {
    const WAITERS: usize = 6;
    let r = repo_with_fix("1.5", "[coordination]\nwait = \"60s\"\n");
    // Every check run leaves a line.
    let runs = r.shared("check-runs");
    let config = std::fs::read_to_string(r.dir.join(".buildlock.toml")).unwrap();
    let config = config.replace(
        "check = \"grep",
        &format!("check = \"echo run >> {}; grep", runs.display()),
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "counting check", "--no-verify"]);
    let trees: Vec<_> = (0..=WAITERS)
        .map(|i| {
            let t = r.worktree(&format!("t{i}"));
            r.stage_change(&t, &format!("f{i}"));
            t
        })
        .collect();
    let fixer = r.commit_retry(&trees[0], "a0");
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["fixer"]["fix_pid"]
        .is_u64()));
    let waiters: Vec<_> = (1..=WAITERS)
        .map(|i| r.commit_retry(&trees[i], &format!("a{i}")))
        .collect();
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        .as_array()
        .is_some_and(|w| w.len() == WAITERS)));
    let before = lines(&runs).len();
    signal(&fixer, libc::SIGKILL);
    let _ = wait_output(fixer, Duration::from_secs(5));
    for (i, w) in waiters.into_iter().enumerate() {
        let out = wait_output(w, Duration::from_secs(60));
        assert!(out.status.success(), "a{}: {}", i + 1, text(&out.stderr));
    }
    // After the kill: the new fixer's failing check, its passing re-check, and one passing
    // check per other waiter's commit. Before, every waiter also ran a failing check at once.
    let after = lines(&runs).len() - before;
    assert!(after <= WAITERS + 2, "{after} check runs after the kill");
    assert_eq!(
        r.witness()
            .iter()
            .filter(|l| l.starts_with("start"))
            .count(),
        2
    );
}

/// The private temp folder cannot be used (here TMPDIR is a file): the first commit hands its
/// decision over in the repository's own folder, so the fixer runs the fix at once instead of
/// committing again (a second check, counted as a failed re-check: with `max_fix_attempts = 1`
/// it gave the role up without ever running the fix).
#[test]
fn an_unusable_temp_dir_costs_no_second_check() {
    let r = repo_with_fix("0.1", "[coordination]\nmax_fix_attempts = 1\n");
    let not_a_dir = r.shared("not-a-dir");
    std::fs::write(&not_a_dir, "").unwrap();
    r.stage_change(&r.dir, "mine");
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "fixer work"])
        .env("BUILDLOCK_AGENT", "a")
        .env("TMPDIR", &not_a_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(r.witness(), ["start a", "end a"]);
    assert_eq!(r.last_subject(&r.dir), "fixer work");
}

/// commit-retry without its second half beside it: a waiter must not exit 1, which says "you
/// are the fixer".
#[test]
fn without_the_buildlock_binary_commit_retry_exits_70_and_says_why() {
    let r = repo_with_fix("0.1", "");
    let lone = r.shared("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(COMMIT_RETRY, lone.join("commit-retry")).unwrap();
    r.stage_change(&r.dir, "mine");
    let out = r
        .cmd(lone.join("commit-retry").to_str().unwrap(), &r.dir)
        .args(["-q", "-m", "work"])
        .env("BUILDLOCK_AGENT", "a")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("reinstall buildlock"),
        "{}",
        text(&out.stderr)
    );
}

/// The fix is committed apart without ever changing the agent's index: a fixer killed mid-fix
/// leaves its staging as it was (a plain `git commit` afterwards still commits the work).
#[test]
fn a_fixer_killed_mid_fix_leaves_its_staging_as_it_was() {
    let r = repo_broken_in_tree("sleep 30\n");
    r.stage_change(&r.dir, "mine.txt");
    let staged = || text(&r.git(&["diff", "--cached", "--name-only"]).stdout);
    let fixer = r.commit_retry(&r.dir, "fixer");
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["fixer"]["fix_pid"]
        .is_u64()));
    assert_eq!(
        staged(),
        "mine.txt\n",
        "staging untouched while the fix runs"
    );
    let fix_group = r.state()["keys"][0]["fixer"]["fix_pid"].as_u64().unwrap();
    assert!(fix_group > 1, "not a fix's process group: {fix_group}");
    signal(&fixer, libc::SIGKILL);
    let _ = wait_output(fixer, Duration::from_secs(5));
    // The orphaned fix, which a successor would stop.
    unsafe { libc::kill(-(fix_group as libc::pid_t), libc::SIGKILL) };
    assert_eq!(staged(), "mine.txt\n");
    r.git(&["commit", "-q", "-m", "by hand", "--no-verify"]);
    assert_eq!(
        text(&r.git(&["show", "--format=", "--name-only", "HEAD"]).stdout),
        "mine.txt\n"
    );
}

/// The fixer has nothing staged: its fix makes the check pass, git then says "nothing to
/// commit" (exit 1). commit-retry says that the build is fixed and that git made no commit,
/// rather than leave an exit 1 that reads as "you are the fixer".
#[test]
fn a_fixer_with_nothing_staged_is_told_the_build_is_fixed_and_nothing_was_committed() {
    let r = repo_with_fix("0.1", "");
    let out = wait_output(r.commit_retry(&r.dir, "a"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the build is marked fixed, but git made no commit"),
        "{err}"
    );
    assert_eq!(r.state()["keys"][0]["status"], "passing");
}

/// A repository whose build is broken in `build.txt`, and whose fix (after `before`) repairs
/// and stages it. Also committed: `a.txt` and `notes.txt`.
fn repo_broken_in_tree(before: &str) -> TestRepo {
    let r = TestRepo::new("");
    let fix = r.shared("fix.sh");
    std::fs::write(
        &fix,
        format!("{before}echo ok > build.txt\ngit add build.txt\n"),
    )
    .unwrap();
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"grep -qx ok build.txt\"\n[fix]\ncommand = \"sh {}\"\n",
            fix.display()
        ),
    )
    .unwrap();
    std::fs::write(r.dir.join("build.txt"), "broken\n").unwrap();
    std::fs::write(r.dir.join("a.txt"), "a\n").unwrap();
    std::fs::write(r.dir.join("notes.txt"), "one\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "broken build", "--no-verify"]);
    r
}

fn files_of(r: &TestRepo, rev: &str) -> String {
    text(&r.git(&["show", "--format=", "--name-only", rev]).stdout)
}

/// A pathspec commit takes the work tree, not the index: the fix the fix command staged is
/// committed on its own first (else it was never committed, and the agent's commit was handed
/// to the waiters as the fix).
#[test]
fn with_a_pathspec_commit_the_fix_is_committed_on_its_own() {
    let r = repo_broken_in_tree("");
    std::fs::write(r.dir.join("a.txt"), "a changed\n").unwrap();
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "my a", "--", "a.txt"])
        .env("BUILDLOCK_AGENT", "a")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(files_of(&r, "HEAD~1"), "build.txt\n");
    assert_eq!(files_of(&r, "HEAD"), "a.txt\n");
    assert_eq!(text(&r.git(&["status", "--porcelain"]).stdout), "");
    let fix = text(&r.git(&["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    assert_eq!(r.state()["keys"][0]["fix_commit"], fix.as_str());
}

/// A `commit-msg` policy the fix's own message does not meet: the fix goes with the agent's
/// commit, as before, and says so (it made no commit at all and exited 1).
#[test]
fn a_fix_commit_that_git_refuses_goes_with_the_agents_commit() {
    let r = repo_broken_in_tree("");
    let hook = r.dir.join(".git/hooks/commit-msg");
    // The subject must name a ticket (the agent's message body is carried into the fix
    // commit's, which meets a rule that looks anywhere in the message).
    std::fs::write(
        &hook,
        "#!/bin/sh\nhead -n 1 \"$1\" | grep -q '^PROJ-[0-9]'\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    r.stage_change(&r.dir, "mine.txt");
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "PROJ-1 my work"])
        .env("BUILDLOCK_AGENT", "a")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("could not be committed on its own"), "{err}");
    assert_eq!(files_of(&r, "HEAD"), "build.txt\nmine.txt\n");
}

/// A merge in progress: git would make the fix's own commit the merge (dropping the other
/// side's changes from its tree). Nothing is split; the merge commit holds the fix.
#[test]
fn during_a_merge_the_fix_is_not_committed_apart() {
    let r = repo_broken_in_tree("");
    r.git(&["checkout", "-q", "-b", "side"]);
    std::fs::write(r.dir.join("side.txt"), "side\n").unwrap();
    r.git(&["add", "side.txt"]);
    r.git(&["commit", "-q", "-m", "side", "--no-verify"]);
    r.git(&["checkout", "-q", "-"]);
    std::fs::write(r.dir.join("a.txt"), "a on main\n").unwrap();
    r.git(&["commit", "-q", "-am", "main moves", "--no-verify"]);
    r.git(&["merge", "-q", "--no-commit", "--no-ff", "side"]);
    let out = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["-q", "-m", "merge side"])
        .env("BUILDLOCK_AGENT", "a")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let parents = text(&r.git(&["rev-list", "--parents", "-n", "1", "HEAD"]).stdout);
    assert_eq!(parents.split_whitespace().count(), 3, "a merge: {parents}");
    let tree = text(&r.git(&["ls-tree", "--name-only", "HEAD"]).stdout);
    assert!(
        tree.contains("side.txt") && tree.contains("build.txt"),
        "{tree}"
    );
    assert_eq!(text(&r.git(&["show", "HEAD:build.txt"]).stdout), "ok\n");
}

/// Failures with the same output share one file (logs/.same): a fix.command that writes to its
/// `$BUILDLOCK_LOG` must not change the log of another failure that printed the same bytes.
#[test]
fn a_fix_that_appends_to_its_log_leaves_other_failures_logs_alone() {
    let r = TestRepo::new("");
    let (ok, note) = (r.shared("ok"), r.shared("note"));
    let config = format!(
        "check = \"test -e {ok} || {{ echo broken; exit 1; }}\"\n[fix]\n\
         command = \"if test -e {note}; then echo NOTE >> \\\"$BUILDLOCK_LOG\\\"; fi; touch {ok}\"\n",
        ok = ok.display(),
        note = note.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    let logs = r.buildlock_dir().join("logs");
    let names = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(&logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "log"));
        v.sort();
        v
    };
    // The first failure's fix leaves its log as it is.
    r.stage_change(&r.dir, "a");
    let out = wait_output(r.commit_retry(&r.dir, "first"), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = names();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(std::fs::read(&first[0]).unwrap(), b"broken\n");
    // The same failure again: this fix writes a note into its log.
    std::fs::remove_file(&ok).unwrap();
    std::fs::write(&note, "").unwrap();
    r.stage_change(&r.dir, "b");
    let out = wait_output(r.commit_retry(&r.dir, "second"), Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = names();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        std::fs::read(&first[0]).unwrap(),
        b"broken\n",
        "the first failure's log is its own output"
    );
    let second = all.iter().find(|p| **p != first[0]).unwrap();
    assert_eq!(std::fs::read(second).unwrap(), b"broken\nNOTE\n");
}
