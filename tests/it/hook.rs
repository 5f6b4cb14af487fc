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
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    assert!(
        !r.buildlock_dir().exists(),
        "nothing to coordinate, nothing written"
    );
}

#[test]
fn green_commit_writes_nothing() {
    let r = repo_with_shared_check("");
    r.stage_change(&r.dir, "a");
    let out = r
        .cmd("git", &r.dir)
        .args(["commit", "-q", "-m", "a"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    assert!(!r.buildlock_dir().join("state").exists());
}

#[test]
fn runs_by_hand_from_a_subfolder() {
    let r = repo_with_shared_check("[hook]\nwait = false\n");
    std::fs::create_dir_all(r.dir.join("sub/deeper")).unwrap();
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir.join("sub/deeper"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));
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
    let first = hook("x");
    assert_eq!(first.status.code(), Some(1));
    let again = hook("x");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("failed re-check 1 of 2"),
        "{}",
        text(&again.stderr)
    );
    let last = hook("x");
    assert_eq!(last.status.code(), Some(1));
    assert!(
        text(&last.stderr).contains("gave the fixer role up"),
        "{}",
        text(&last.stderr)
    );
    assert_eq!(r.state()["keys"][0]["status"], "broken");
    assert!(r.history_events().contains(&"gave_up".to_owned()));
}

#[test]
fn silent_fixer_is_taken_over_after_the_lease() {
    let r = repo_with_shared_check("[hook]\nwait = false\n[coordination]\nstale_after = \"1s\"\n");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let hook = |agent: &str| r.hook(&r.dir, agent);
    assert_eq!(hook("silent").status.code(), Some(1));
    assert_eq!(hook("other").status.code(), Some(75), "the lease is fresh");
    std::thread::sleep(Duration::from_millis(1200));
    let out = hook("other");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("taking over from `silent`"),
        "{}",
        text(&out.stderr)
    );
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["fixer"]["agent"].as_str(), key["generation"].as_u64()),
        (Some("other"), Some(2))
    );
    assert!(r.history_events().contains(&"takeover".to_owned()));
    // The old fixer's passing check changes nothing now.
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    assert_eq!(hook("silent").status.code(), Some(0));
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "other");
}

#[test]
fn waiting_hook_commits_once_the_fixer_fixes() {
    let r = repo_with_shared_check("[coordination]\nwait = \"30s\"\n");
    let waiter_tree = r.worktree("waiter");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let fixer = r.hook(&r.dir, "fixer");
    assert_eq!(fixer.status.code(), Some(1));
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
    let fixed = r.hook(&r.dir, "fixer");
    assert_eq!(fixed.status.code(), Some(0));
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
    assert_eq!(r.hook(&r.dir, "a").status.code(), Some(1));
    let out = r.hook(&r.dir, "b");
    assert_eq!(out.status.code(), Some(75));
    assert!(
        text(&out.stderr).contains("still fixing"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn coordination_off_still_runs_the_check() {
    let r = repo_with_shared_check("");
    std::fs::write(r.shared("status"), "broken\n").unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("coordination is off"));
    assert!(!r.buildlock_dir().join("state").exists());
    std::fs::write(r.shared("status"), "ok\n").unwrap();
    assert_eq!(
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK", "0")
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
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
        let out = r.cmd(PRE_COMMIT, &r.dir).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("was unreadable"),
            "{what}: {}",
            text(&out.stderr)
        );
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
    let out = r.cmd(PRE_COMMIT, &r.dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
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
        let out = r.cmd(PRE_COMMIT, &r.dir).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{config}");
        let err = text(&out.stderr);
        assert!(
            err.contains(".buildlock.toml") && err.contains(expect),
            "{config}: {err}"
        );
    }
    // BUILDLOCK_CONFIG wins over the repository file and must exist.
    let r = TestRepo::new("check = \"true\"\n");
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_CONFIG", r.root.join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("nope.toml"));
    std::fs::write(r.root.join("ci.toml"), "check = \"false\"\n").unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_CONFIG", r.root.join("ci.toml"))
        .env("BUILDLOCK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the later layer's check ran");
}

#[test]
fn user_config_is_the_lowest_layer() {
    let r = TestRepo::new("");
    let user = r.root.join("config/buildlock");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("config.toml"), "check = \"exit 3\"\n").unwrap();
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the user file's check ran");
    std::fs::write(r.dir.join(".buildlock.toml"), "check = \"true\"\n").unwrap();
    assert_eq!(
        r.cmd(PRE_COMMIT, &r.dir).output().unwrap().status.code(),
        Some(0),
        "the repo file wins"
    );
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
    let read = || {
        std::fs::read_to_string(&seen)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

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
    assert_eq!(r.hook(&wt, "in-linked").status.code(), Some(1));
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
    let out = r
        .cmd(PRE_COMMIT, &r.dir.join("sub"))
        .env("BUILDLOCK_AGENT", "in-sub")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
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
    let out = r
        .cmd(PRE_COMMIT, &wt)
        .env("GIT_DIR", r.dir.join(".git/worktrees/w"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("{}", r.buildlock_dir().display())));
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
    assert_eq!(hook("a").status.code(), Some(1));
    assert_eq!(hook("b").status.code(), Some(75), "same failure: wait");
    std::fs::write(r.shared("error"), "error: two\n").unwrap();
    assert_eq!(
        hook("b").status.code(),
        Some(1),
        "a different failure: its own fixer"
    );
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
    let out = r.hook(&r.dir, "a");
    assert_eq!(out.status.code(), Some(1));
    assert!(eventually(Duration::from_secs(5), || pidfile.exists()));
    let daemon: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(daemon as u32), "the daemon outlives the hook");
    // Its holding our files does not hold the locks: another agent decides at once.
    let out = r.hook(&r.dir, "b");
    assert_eq!(out.status.code(), Some(75));
    unsafe { libc::kill(daemon, libc::SIGKILL) };
}
