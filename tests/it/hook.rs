//! The pre-commit hook on real repositories.

use crate::harness::*;
use std::process::Stdio;
use std::time::Duration;

/// A repository whose check fails while the shared file `status` does not say `ok`.
fn repo_with_shared_check(extra: &str) -> TestRepo {
    let r = TestRepo::new("");
    let config = format!(
        "check = \"grep -qx ok {}\"\n{extra}",
        r.shared("status").display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    r
}

#[test]
fn no_check_and_no_chained_hook_passes_silently() {
    let r = TestRepo::new("");
    r.stage_change(&r.dir, "a");
    r.cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .assert()
        .success()
        .stderr("");
    assert!(
        !r.buildlock_dir().exists(),
        "nothing to coordinate, nothing written"
    );
}

#[test]
fn green_commit_writes_nothing() {
    let r = repo_with_shared_check("");
    r.stage_change(&r.dir, "a");
    r.cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .assert()
        .success()
        .stderr("");
    assert!(!r.buildlock_dir().join("state").exists());
}

#[test]
fn runs_by_hand_from_a_subfolder() {
    let r = repo_with_shared_check("[hook]\nwait = false\n");
    std::fs::create_dir_all(r.dir.join("sub/deeper")).unwrap();
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.cmd(PRE_COMMIT, &r.dir.join("sub/deeper"))
        .assert()
        .code(1)
        .stderr(contains("you are the FIXER"));
    assert_eq!(r.state()["keys"][0]["status"], "fixing");
}

/// The race: 16 agents in 16 worktrees fail at the same instant, round after round.
#[test]
fn sixteen_agents_one_fixer_per_round() {
    const AGENTS: usize = 16;
    let rounds: usize = std::env::var("BUILDLOCK_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let r = TestRepo::new("");
    let go = r.shared("go");
    // The check waits for the starting gun, so all 16 fail at the same instant.
    let config = format!(
        "check = \"while [ ! -e {go} ]; do sleep 0.005; done; grep -qx ok {status} || {{ cat {status}; false; }}\"\n[hook]\nwait = false\n",
        go = go.display(),
        status = r.shared("status").display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    let trees: Vec<_> = (0..AGENTS)
        .map(|i| r.worktree(&format!("agent{i}")))
        .collect();
    for round in 0..rounds {
        // Each round is a new breakage, with an error of its own.
        std::fs::write(r.shared("status"), format!("broken in round {round}\n")).unwrap();
        let _ = std::fs::remove_file(&go);
        let children: Vec<_> = trees
            .iter()
            .enumerate()
            .map(|(i, t)| {
                r.cmd(PRE_COMMIT, t)
                    .env("BUILDLOCK_AGENT", format!("agent{i}"))
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(&go, "").unwrap();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| wait_output(c, Duration::from_secs(60)))
            .collect();
        let fixers: Vec<usize> = (0..AGENTS)
            .filter(|&i| outs[i].status.code() == Some(1))
            .collect();
        let waiters = outs.iter().filter(|o| o.status.code() == Some(75)).count();
        assert_eq!(
            fixers.len(),
            1,
            "round {round}: exactly one fixer, got {fixers:?}"
        );
        assert_eq!(waiters, AGENTS - 1, "round {round}: everyone else waits");
        let fixer = fixers[0];
        assert!(text(&outs[fixer].stderr).contains("you are the FIXER"));
        for (i, o) in outs.iter().enumerate() {
            if i != fixer {
                assert!(
                    text(&o.stderr).contains(&format!("`agent{fixer}` is already fixing")),
                    "{}",
                    text(&o.stderr)
                );
            }
        }
        // `match = "signature"` (the default): each round's error is a breakage of its own, and
        // so a key of its own (generations count elections across the base's keys).
        let state = r.state();
        let fixing: Vec<_> = state["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["status"] == "fixing")
            .collect();
        assert_eq!(fixing.len(), 1, "round {round}: one key being fixed");
        let key = fixing[0]["key"].as_str().unwrap().to_owned();
        assert_eq!(fixing[0]["generation"], round as u64 + 1);
        // With `hook.wait = false` the waiters exited at once: none is listed as waiting.
        assert_eq!(fixing[0]["waiters"], serde_json::json!([]));

        // The fixer repairs the shared dependency and commits: the state goes back to passing.
        std::fs::write(r.shared("status"), "ok\n").unwrap();
        r.stage_change(&trees[fixer], &format!("fix{round}"));
        let out = r
            .cmd("git", &trees[fixer])
            .args(["commit", "-q", "-m", "fix"])
            .env("BUILDLOCK_AGENT", format!("agent{fixer}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("you fixed the build"));
        let state = r.state();
        let fixed = state["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == key.as_str());
        assert_eq!(fixed.unwrap()["status"], "passing");
    }
    // Then every waiter commits.
    for (i, t) in trees.iter().enumerate() {
        r.stage_change(t, &format!("work{i}"));
        let out = r
            .cmd("git", t)
            .args(["commit", "-q", "-m", &format!("agent{i}")])
            .env("BUILDLOCK_AGENT", format!("agent{i}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(r.last_subject(t), format!("agent{i}"));
    }
    let totals = &r.state()["totals"];
    assert_eq!(totals["elections"], rounds as u64);
    assert_eq!(totals["fixes"], rounds as u64);
    assert_eq!(totals["fix_runs_avoided"], (rounds * (AGENTS - 1)) as u64);
}

#[test]
fn fixer_repeated_failures_give_the_role_up() {
    let r = repo_with_shared_check("[hook]\nwait = false\n[coordination]\nmax_fix_attempts = 2\n");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let hook = |agent: &str| r.hook(&r.dir, agent);
    hook("x").code(1);
    hook("x").code(1).stderr(contains("failed re-check 1 of 2"));
    hook("x").code(1).stderr(contains("gave the fixer role up"));
    assert_eq!(r.state()["keys"][0]["status"], "broken");
    assert!(r.history_events().contains(&"gave_up".to_owned()));
}

#[test]
fn silent_fixer_is_taken_over_after_the_lease() {
    let r = repo_with_shared_check("[hook]\nwait = false\n[coordination]\nstale_after = \"1s\"\n");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let hook = |agent: &str| r.hook(&r.dir, agent);
    hook("silent").code(1);
    // The lease is fresh: wait.
    hook("other").code(75);
    std::thread::sleep(Duration::from_millis(1200));
    hook("other")
        .code(1)
        .stderr(contains("taking over from `silent`"));
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["fixer"]["agent"].as_str(), key["generation"].as_u64()),
        (Some("other"), Some(2))
    );
    assert!(r.history_events().contains(&"takeover".to_owned()));
    // The old fixer's passing check changes nothing now.
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    hook("silent").code(0);
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "other");
}

#[test]
fn waiting_hook_commits_once_the_fixer_fixes() {
    let r = repo_with_shared_check("[coordination]\nwait = \"30s\"\n");
    let waiter_tree = r.worktree("waiter");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.hook(&r.dir, "fixer").code(1);
    r.stage_change(&waiter_tree, "w");
    let waiter = r
        .cmd("git", &waiter_tree)
        .args(["commit", "-q", "-m", "waited"])
        .env("BUILDLOCK_AGENT", "waiter")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["waiter"])));
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    r.hook(&r.dir, "fixer").code(0);
    let out = wait_output(waiter, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("waiting for `fixer`") && err.contains("fixed by `fixer`"),
        "{err}"
    );
    assert_eq!(r.last_subject(&waiter_tree), "waited");
}

#[test]
fn wait_runs_out_with_exit_75() {
    let r = repo_with_shared_check("[coordination]\nwait = \"300ms\"\n");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.hook(&r.dir, "a").code(1);
    r.hook(&r.dir, "b")
        .code(75)
        .stderr(contains("still fixing"));
}

#[test]
fn coordination_off_still_runs_the_check() {
    let r = repo_with_shared_check("");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "0")
        .assert()
        .code(1)
        .stderr(contains("coordination is off"));
    assert!(!r.buildlock_dir().join("state").exists());
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "0")
        .assert()
        .code(0);
}

#[test]
fn damaged_state_files_are_survived_and_rewritten() {
    let damage: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "truncated",
            b"{\"schema\": 1, \"base\": \"repo\", \"key\": \"re".to_vec(),
        ),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        (
            "other schema",
            b"{\"schema\": 7, \"key\": \"repo\"}".to_vec(),
        ),
        ("10 MB", vec![b'{'; 10 << 20]),
    ];
    for (what, bytes) in damage {
        let r = repo_with_shared_check("[hook]\nwait = false\n");
        let state = r.buildlock_dir().join("state/repo.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, &bytes).unwrap();
        std::fs::write(r.shared("status"), "broken\n").unwrap();
        r.cmd(PRE_COMMIT, &r.dir)
            .assert()
            .append_context("damage", what)
            .code(1)
            .stderr(contains("was unreadable"));
        assert_eq!(
            r.state()["keys"][0]["status"],
            "fixing",
            "{what}: rewritten"
        );
        assert!(r.history_events().contains(&"damaged".to_owned()));
    }
    // A directory in its place, and a damaged file met by a passing check.
    let r = repo_with_shared_check("");
    std::fs::create_dir_all(r.buildlock_dir().join("state/repo.json/x")).unwrap();
    r.cmd(PRE_COMMIT, &r.dir).assert().code(0);
    assert_eq!(r.state()["keys"][0]["status"], "passing");
}

#[test]
fn bad_configs_exit_78_naming_file_line_and_key() {
    let cases = [
        (
            "[coordination]\nwiat = \"5m\"\n",
            "line 2, key `coordination.wiat`",
        ),
        ("check = 5\n", "line 1, key `check`"),
        (
            "[coordination]\nwait = \"5 minutes\"\n",
            "key `coordination.wait`: bad duration",
        ),
        (
            "[coordination]\nscope = \"galaxy\"\n",
            "key `coordination.scope`",
        ),
        ("[retry]\nattempts = 0\n", "key `retry.attempts`"),
        ("check = \"x\"\n[coordination\n", "line 2"),
    ];
    for (config, expect) in cases {
        let r = TestRepo::new(config);
        r.cmd(PRE_COMMIT, &r.dir)
            .assert()
            .append_context("config", config)
            .code(78)
            .stderr(contains(".buildlock.toml").and(contains(expect)));
    }
    // BUILDLOCK_CONFIG wins over the repository file and must exist.
    let r = TestRepo::new("check = \"true\"\n");
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_CONFIG", r.root.join("nope.toml"))
        .assert()
        .code(78)
        .stderr(contains("nope.toml"));
    std::fs::write(r.root.join("ci.toml"), "check = \"false\"\n").unwrap();
    // The later layer's check runs.
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_CONFIG", r.root.join("ci.toml"))
        .env("BUILDLOCK", "0")
        .assert()
        .code(1);
}

#[test]
fn user_config_is_the_lowest_layer() {
    let r = TestRepo::new("");
    let user = r.root.join("config/buildlock");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("config.toml"), "check = \"exit 3\"\n").unwrap();
    // The user file's check runs...
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "0")
        .assert()
        .code(1);
    // ... and the repository's file wins over it.
    std::fs::write(r.dir.join(".buildlock.toml"), "check = \"true\"\n").unwrap();
    r.cmd(PRE_COMMIT, &r.dir).assert().code(0);
}

/// The check sees exactly what git will commit, for every form of GIT_INDEX_FILE.
#[test]
fn the_check_sees_the_index_git_commits() {
    let r = TestRepo::new("");
    let seen = r.shared("seen");
    let config = format!(
        "check = \"git diff --cached --name-only > {}\"\n",
        seen.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    std::fs::write(r.dir.join("tracked"), "1\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "tracked"]);
    let read = || lines(&seen);

    r.stage_change(&r.dir, "plain");
    r.git(&["commit", "-q", "-m", "plain"]);
    assert_eq!(read(), ["plain"]);

    std::fs::write(r.dir.join("tracked"), "2\n").unwrap();
    r.git(&["commit", "-q", "-a", "-m", "all"]);
    assert_eq!(read(), ["tracked"], "commit -a: the temporary index");

    std::fs::write(r.dir.join("tracked"), "3\n").unwrap();
    r.stage_change(&r.dir, "staged-but-not-committed");
    r.git(&["commit", "-q", "-m", "only", "--", "tracked"]);
    assert_eq!(read(), ["tracked"], "commit -- <path>: only that path");
    let committed = text(&r.git(&["show", "--name-only", "--format=", "HEAD"]).stdout);
    assert_eq!(committed.trim(), "tracked");
}

#[test]
fn linked_worktrees_share_one_domain_and_a_submodule_has_its_own() {
    let r = repo_with_shared_check("[hook]\nwait = false\n");
    let wt = r.worktree("linked");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.hook(&wt, "in-linked").code(1);
    assert_eq!(
        r.state()["keys"][0]["fixer"]["agent"],
        "in-linked",
        "seen from the main work tree"
    );
    assert!(!wt.join(".git/buildlock").exists() && r.buildlock_dir().exists());

    // A submodule: its own common dir, its own state.
    let sub_src = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    r.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        sub_src.dir.to_str().unwrap(),
        "sub",
    ]);
    r.hook(&r.dir.join("sub"), "in-sub").code(1);
    assert!(r.dir.join(".git/modules/sub/buildlock/state").exists());
    assert_eq!(
        r.state()["keys"][0]["fixer"]["agent"],
        "in-linked",
        "the submodule did not touch the parent"
    );
}

#[test]
fn git_dir_set_as_in_a_linked_worktree_hook() {
    let r = repo_with_shared_check("[hook]\nwait = false\n");
    let wt = r.worktree("w");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    r.cmd(PRE_COMMIT, &wt)
        .env("GIT_DIR", r.dir.join(".git/worktrees/w"))
        .assert()
        .code(1)
        .stderr(contains(r.buildlock_dir().display().to_string()));
}

#[test]
fn scope_branch_and_signature_make_separate_keys() {
    let r = TestRepo::new("");
    let config = format!(
        "check = \"cat {f}; false\"\n[hook]\nwait = false\n[coordination]\nscope = \"branch\"\nmatch = \"signature\"\n",
        f = r.shared("error").display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    let hook = |agent: &str| r.hook(&r.dir, agent);
    std::fs::write(r.shared("error"), "error: one\n").unwrap();
    hook("a").code(1);
    // The same failure: wait.
    hook("b").code(75);
    // A different failure: its own fixer.
    std::fs::write(r.shared("error"), "error: two\n").unwrap();
    hook("b").code(1);
    let keys = r.state()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .all(|k| k["key"].as_str().unwrap().starts_with("main#"))
    );
}

#[test]
fn ctrl_c_stops_the_check_and_records_nothing() {
    let r = TestRepo::new("");
    let pidfile = r.shared("check.pid");
    let config = format!("check = \"echo $$ > {}; sleep 30\"\n", pidfile.display());
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    // The hook leads its own process group here, as git does for its hooks under a terminal.
    let child = {
        use std::os::unix::process::CommandExt;
        r.cmd(PRE_COMMIT, &r.dir)
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(10), || pidfile.exists()));
    let check_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        eventually(Duration::from_secs(2), || !alive(check_pid)),
        "the check was stopped"
    );
    assert!(
        !r.buildlock_dir().join("state").exists(),
        "no false 'broken' recorded"
    );
}

#[test]
fn killing_git_alone_stops_the_orphaned_check() {
    let r = TestRepo::new("");
    let pidfile = r.shared("check.pid");
    let config = format!("check = \"echo $$ > {}; sleep 30\"\n", pidfile.display());
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.stage_change(&r.dir, "a");
    let git = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || pidfile.exists()));
    let check_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(&git, libc::SIGKILL);
    let _ = wait_output(git, Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || !alive(check_pid)),
        "the hook noticed and stopped its check"
    );
    assert!(!r.buildlock_dir().join("state").exists());
}

#[test]
fn a_daemon_started_by_the_check_holds_no_lock() {
    let r = TestRepo::new("");
    let pidfile = r.shared("daemon.pid");
    let script = r.shared("daemon.sh");
    std::fs::write(
        &script,
        format!("echo $$ > {}\nexec sleep 20\n", pidfile.display()),
    )
    .unwrap();
    let config = format!(
        "check = \"setsid sh {} >/dev/null 2>&1 < /dev/null & false\"\n[hook]\nwait = false\n",
        script.display()
    );
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.hook(&r.dir, "a").code(1);
    assert!(eventually(Duration::from_secs(5), || pidfile.exists()));
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(daemon as u32), "the daemon outlives the hook");
    // Its holding our files does not hold the locks: another agent decides at once.
    r.hook(&r.dir, "b").code(75);
    unsafe { libc::kill(daemon, libc::SIGKILL) };
}

/// A waiter whose wait ran out, and one interrupted with SIGINT, are no longer listed.
// regression: a waiter that had exited 75 stayed listed
#[test]
fn waiters_that_gave_up_or_were_interrupted_leave_the_list() {
    let r = TestRepo::new("check = \"false\"\n[coordination]\nwait = \"1s\"\n");
    r.hook(&r.dir, "fixer").code(1);
    r.hook(&r.dir, "gave-up").code(75);
    assert_eq!(
        r.state()["keys"][0]["waiters"],
        serde_json::json!([]),
        "the waiter whose wait ran out"
    );
    let patient = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "interrupted")
        .env("BUILDLOCK_CONFIG", {
            let p = r.shared("long-wait.toml");
            std::fs::write(&p, "[coordination]\nwait = \"60s\"\n").unwrap();
            p
        })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["interrupted"])));
    signal(&patient, libc::SIGINT);
    let out = wait_output(patient, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(r.state()["keys"][0]["waiters"], serde_json::json!([]));
}
