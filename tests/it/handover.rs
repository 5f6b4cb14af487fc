//! The fix handed over to the waiters: agents that started from a committed breakage, committing
//! with plain `git commit`: one fixes it, the others are told the fix commit (however it was
//! made: with an editor, `--amend`, `BUILDLOCK=0`), and once they take it every commit lands on
//! its first try. A fix already taken is never handed over again.

use crate::harness::*;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 6;

/// A repository whose committed `dep.txt` breaks the check, and `AGENTS` worktrees started
/// from it.
fn committed_breakage(extra: &str) -> (TestRepo, Vec<std::path::PathBuf>) {
    let r = TestRepo::new("");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"grep -qx ok dep.txt || {{ echo 'dep.txt: bad version'; false; }}\"\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(r.dir.join("dep.txt"), "1.0-broken\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "bump dep (broken)", "--no-verify"]);
    let trees = (0..AGENTS).map(|i| r.worktree(&format!("a{i}"))).collect();
    (r, trees)
}

/// a0, already elected, fixes the committed breakage in `fixer` and commits it with a plain
/// `git commit` (with `env` added); returns the fix commit.
fn commit_fix(r: &TestRepo, fixer: &std::path::Path, env: &[(&str, &str)]) -> String {
    std::fs::write(fixer.join("dep.txt"), "ok\n").unwrap();
    r.git_in(fixer, &["add", "dep.txt"]);
    let mut c = r.cmd("git", fixer);
    c.args(["commit", "-q", "-m", "fix dep"])
        .env("BUILDLOCK_AGENT", "a0")
        .envs(env.iter().copied());
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    r.head(fixer)
}

/// a0 is elected on the committed breakage, fixes it on its own branch; returns the fix commit.
fn fixed_by_a0(r: &TestRepo, fixer: &std::path::Path) -> String {
    r.hook(fixer, "a0").code(1);
    commit_fix(r, fixer, &[])
}

#[test]
fn six_plain_commits_one_fix_five_told_the_commit_then_all_land_first_try() {
    let (r, trees) = committed_breakage("[coordination]\nwait = \"2m\"\n");
    for (i, t) in trees.iter().enumerate() {
        r.stage_change(t, &format!("work{i}"));
    }
    let commits: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| {
            r.cmd("git", t)
                .args(["commit", "-q", "-m", &format!("work {i}")])
                .env("BUILDLOCK_AGENT", format!("a{i}"))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Exactly one is elected: its `git commit` fails at once; the others wait in their hook.
    assert!(eventually(Duration::from_secs(30), || r.state()["keys"][0]
        ["status"]
        == "fixing"));
    let fixer_id = r.state()["keys"][0]["fixer"]["agent"]
        .as_str()
        .unwrap()
        .to_owned();
    let fixer: usize = fixer_id[1..].parse().unwrap();
    let mut outs: Vec<Option<std::process::Output>> = (0..AGENTS).map(|_| None).collect();
    let mut children: Vec<Option<std::process::Child>> = commits.into_iter().map(Some).collect();
    let out = wait_output(children[fixer].take().unwrap(), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));

    // The fixer fixes the dependency and commits: the hook marks the build fixed.
    let t = &trees[fixer];
    std::fs::write(t.join("dep.txt"), "ok\n").unwrap();
    r.git_in(t, &["add", "dep.txt"]);
    let out = r
        .cmd("git", t)
        .args(["commit", "-q", "-m", "fix dep"])
        .env("BUILDLOCK_AGENT", &fixer_id)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you fixed the build"));
    let fix = r.head(t);

    // Every waiter wakes, fails the same way on its own tree, and is told the fix commit:
    // nobody else is elected.
    for (i, child) in children.iter_mut().enumerate() {
        if let Some(child) = child.take() {
            outs[i] = Some(wait_output(child, Duration::from_secs(60)));
        }
    }
    for (i, out) in outs.iter().enumerate() {
        let Some(out) = out else { continue };
        let err = text(&out.stderr);
        assert!(!out.status.success(), "a{i}: {err}");
        assert!(
            err.contains(&format!("already fixed this failure in commit {fix}")),
            "a{i}: {err}"
        );
        assert!(
            err.contains(&format!("git buildlock take-fix {fix}")),
            "a{i}: {err}"
        );
        assert!(!err.contains("you are the FIXER"), "a{i}: {err}");
    }
    let s = r.state();
    assert_eq!(s["keys"][0]["fix_commit"], fix.as_str());
    assert_eq!(s["totals"]["elections"], 1);
    assert_eq!(s["totals"]["fixes"], 1);
    assert_eq!(
        s["totals"]["fix_runs_avoided"],
        (AGENTS - 1) as u64,
        "{}",
        s["totals"]
    );

    // All take the fix at once, with the very command they were told, then commit: first try,
    // each with its own work.
    r.alias_buildlock();
    let told = outs
        .iter()
        .flatten()
        .next()
        .map(|o| text(&o.stderr))
        .unwrap();
    let recipe = told
        .split('`')
        .find(|part| part.starts_with("git buildlock take-fix "))
        .unwrap_or_else(|| panic!("no recipe in: {told}"))
        .to_owned();
    let takers: Vec<_> = trees
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != fixer)
        .map(|(_, t)| r.cmd("sh", t).args(["-c", &recipe]).spawn().unwrap())
        .collect();
    for taker in takers {
        let out = wait_output(taker, Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for (i, t) in trees.iter().enumerate() {
        if i == fixer {
            continue;
        }
        let staged = text(&r.git_in(t, &["diff", "--cached", "--name-only"]).stdout);
        assert_eq!(
            staged.trim(),
            format!("work{i}"),
            "a{i} kept its own work, only"
        );
        let out = r
            .cmd("git", t)
            .args(["commit", "-q", "-m", &format!("work {i}")])
            .env("BUILDLOCK_AGENT", format!("a{i}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "a{i}: {}", text(&out.stderr));
        assert_eq!(r.last_subject(t), format!("work {i}"));
    }
    assert_eq!(r.state()["totals"]["elections"], 1, "still one election");
}

#[test]
fn commit_retry_takes_the_fix_through_retry_refresh() {
    // The refresh gets BUILDLOCK_FIX_COMMIT and takes the fix; the retry then lands.
    let (r, trees) = committed_breakage(&format!(
        "[retry]\nrefresh = '{}'\n",
        buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX
    ));
    r.alias_buildlock();
    let (fixer, waiter) = (&trees[0], &trees[1]);
    // The fixer's plain commit elects it.
    r.stage_change(fixer, "fixer-work");
    let out = r
        .cmd("git", fixer)
        .args(["commit", "-q", "-m", "fixer work"])
        .env("BUILDLOCK_AGENT", "a0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The waiter's commit-retry waits for it.
    r.stage_change(waiter, "waiter-work");
    let child = waiting_commit_retry(&r, waiter, "waiter work");
    let fix = commit_fix(&r, fixer, &[]);
    let out = wait_output(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(r.last_subject(waiter), "waiter work");
    let log = text(&r.git_in(waiter, &["log", "--format=%H"]).stdout);
    assert!(log.contains(&fix), "the waiter's branch has the fix commit");
    assert_eq!(r.state()["totals"]["elections"], 1);
}

#[test]
fn without_a_refresh_commit_retry_says_how_to_take_the_fix() {
    // a0 is elected on the broken base, fixes it and commits.
    let (r, trees) = committed_breakage("");
    let (fixer, other) = (&trees[0], &trees[1]);
    let fix = fixed_by_a0(&r, fixer);
    r.stage_change(other, "w");
    let out = r
        .cmd(COMMIT_RETRY, other)
        .args(["-q", "-m", "w"])
        .env("BUILDLOCK_AGENT", "a1")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!("git buildlock take-fix {fix}")),
        "{err}"
    );
    assert!(err.contains("retry.refresh"), "{err}");
    assert_eq!(r.state()["totals"]["elections"], 1, "nobody else elected");
}

#[test]
fn a_fix_command_that_commits_the_fix_is_the_fix_commit() {
    // The fix script commits the fix itself: its hook acts for commit-retry (which holds the
    // role), marks the build fixed, and that commit, not the agent's own work, is the fix.
    let (r, trees) = committed_breakage(
        "[fix]\ncommand = \"echo ok > dep.txt && git add dep.txt && git commit -q -m 'fix by script' -- dep.txt\"\n\
         [coordination]\nwait = \"20s\"\n",
    );
    let t = &trees[0];
    r.stage_change(t, "work");
    let out = r
        .cmd(COMMIT_RETRY, t)
        .args(["-q", "-m", "agent work"])
        .env("BUILDLOCK_AGENT", "a0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(r.last_subject(t), "agent work");
    let script_commit = text(&r.git_in(t, &["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    assert_eq!(
        text(&r.git_in(t, &["log", "-1", "--format=%s", "HEAD~1"]).stdout).trim(),
        "fix by script"
    );
    let s = r.state();
    assert_eq!(s["keys"][0]["fix_commit"], script_commit.as_str());
    assert_eq!(s["totals"]["elections"], 1);
    assert_eq!(s["totals"]["fix_runs"], 1);
}

#[test]
fn a_fix_command_whose_own_commit_fails_is_not_told_to_wait_for_itself() {
    // The fix script commits too early (the check still fails): that commit's hook acts for the
    // commit-retry that holds the role; it must keep fixing, not wait for itself.
    let (r, trees) = committed_breakage(
        "[fix]\ncommand = \"git commit -q --allow-empty -m early; echo ok > dep.txt\"\n\
         [coordination]\nwait = \"1m\"\n",
    );
    let t = &trees[0];
    r.stage_change(t, "work");
    let out = r
        .cmd(COMMIT_RETRY, t)
        .args(["-q", "-m", "agent work"])
        .env("BUILDLOCK_AGENT", "a0")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("already fixing"), "{err}");
    assert!(err.contains("you are still the FIXER"), "{err}");
    assert_eq!(r.state()["totals"]["elections"], 1);
}

#[test]
fn a_fixer_who_bypasses_with_buildlock_0_still_marks_the_build_fixed() {
    let (r, trees) = committed_breakage("[hook]\nwait = false\n");
    let (fixer, other) = (&trees[0], &trees[1]);
    r.hook(fixer, "a0").code(1);
    r.hook(other, "a1").code(75);
    commit_fix(&r, fixer, &[("BUILDLOCK", "0")]);
    let s = r.state();
    assert_eq!(
        s["keys"][0]["status"], "passing",
        "the waiters are not stranded"
    );
    assert_eq!(s["totals"]["fixes"], 1);
}

#[test]
fn a_fix_whose_branch_is_gone_is_handed_to_nobody() {
    let (r, trees) = committed_breakage("[hook]\nwait = false\n");
    let (fixer, other) = (&trees[0], &trees[1]);
    let fix = fixed_by_a0(&r, fixer);
    // The fixer's work is abandoned: its worktree and branch are deleted.
    r.git(&["worktree", "remove", "--force", fixer.to_str().unwrap()]);
    r.git(&["branch", "-D", "a0"]);
    // Not handed the abandoned commit: elected.
    r.hook(other, "a1").stderr(
        contains(&fix[..12])
            .not()
            .and(contains("you are the FIXER")),
    );
}

#[test]
fn reset_forgets_the_fixes_on_record() {
    let (r, trees) = committed_breakage("[hook]\nwait = false\n");
    let fix = fixed_by_a0(&r, &trees[0]);
    assert_eq!(r.state()["keys"][0]["fix_commit"], fix.as_str());
    r.buildlock(&r.dir, "ops", &["reset"]).success();
    assert_eq!(r.state()["keys"][0]["fix_commit"], serde_json::Value::Null);
    r.hook(&trees[1], "a1")
        .stderr(contains("you are the FIXER"));
}

#[test]
fn a_fix_left_unstaged_is_pointed_out() {
    let (r, trees) = committed_breakage("[fix]\ncommand = \"echo ok > dep.txt\"\n");
    let t = &trees[0];
    r.stage_change(t, "work");
    let out = r
        .cmd(COMMIT_RETRY, t)
        .args(["-q", "-m", "work"])
        .env("BUILDLOCK_AGENT", "a0")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("not staged (dep.txt)"), "{err}");
}

#[test]
fn a_fix_marked_by_a_hook_run_by_hand_is_not_waited_for_as_a_commit() {
    // The fixer runs the hook by hand (no git commit writes anything after it): the waiters must
    // not wait for a fix commit as if a `git commit` were still writing one.
    let (r, trees) = committed_breakage("[coordination]\nwait = \"5m\"\n");
    let (fixer, waiter) = (&trees[0], &trees[1]);
    r.hook(fixer, "a0").code(1);
    r.stage_change(waiter, "w");
    let child = waiting_commit_retry(&r, waiter, "w");
    std::fs::write(fixer.join("dep.txt"), "ok\n").unwrap();
    std::fs::write(waiter.join("dep.txt"), "ok\n").unwrap();
    r.git_in(waiter, &["add", "dep.txt"]);
    r.hook(fixer, "a0").code(0);
    let out = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The documented refresh, when the fix cannot be taken on top of the agent's work: it refuses
/// (exit 75), naming the file, and changes nothing (the old recipe had run `git reset --hard`,
/// and the work lived only in a commit of its own).
#[test]
fn the_example_refresh_keeps_the_work_when_it_cannot_finish() {
    let r = TestRepo::new("");
    r.alias_buildlock();
    std::fs::write(r.dir.join("dep.rs"), "broken\n").unwrap();
    std::fs::write(r.dir.join("notes.txt"), "notes\n").unwrap();
    r.git(&["add", "dep.rs", "notes.txt"]);
    r.git(&["commit", "-q", "-m", "base", "--no-verify"]);
    let wt = r.worktree("waiter");
    // The fix, on main.
    std::fs::write(r.dir.join("dep.rs"), "fixed\n").unwrap();
    r.git(&["commit", "-q", "-am", "fix", "--no-verify"]);
    let fix = r.head(&r.dir);
    // The agent's staged change to the very file the fix changes, and an unstaged one.
    std::fs::write(wt.join("dep.rs"), "my own change\n").unwrap();
    r.git_in(&wt, &["add", "dep.rs"]);
    std::fs::write(wt.join("notes.txt"), "unstaged\n").unwrap();
    let head = r.head(&wt);
    let out = r
        .cmd("sh", &wt)
        .args([
            "-c",
            buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX,
        ])
        .env("BUILDLOCK_FIX_COMMIT", &fix)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("dep.rs"), "{err}");
    assert_eq!(r.head(&wt), head);
    assert_eq!(
        text(&r.git_in(&wt, &["status", "--porcelain"]).stdout),
        "M  dep.rs\n M notes.txt\n"
    );
    assert_eq!(
        std::fs::read_to_string(wt.join("dep.rs")).unwrap(),
        "my own change\n"
    );
}

/// commit-retry of agent `a1` in `dir`, once it waits (listed as the key's only waiter).
fn waiting_commit_retry(r: &TestRepo, dir: &std::path::Path, message: &str) -> std::process::Child {
    let child = r
        .cmd(COMMIT_RETRY, dir)
        .args(["-q", "-m", message])
        .env("BUILDLOCK_AGENT", "a1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["a1"])));
    child
}

/// Six agents in six worktrees start from a branch with a committed breakage and commit with a
/// plain `git commit` (`hook.wait = true`). One is elected and commits its fix on its own branch;
/// the five waiters wake, fail the same way on their own trees, and are told the fix commit
/// instead of being elected in turn. After taking it, every commit lands on its first try.
// regression: a waiter that failed again on its own tree after the fix was elected a second fixer
#[test]
fn default_flow_one_fix_the_others_take_the_fix_commit() {
    const AGENTS: usize = 6;
    let r = TestRepo::new("");
    r.configure("check = \"grep -qx ok state.txt\"\n[coordination]\nwait = \"60s\"\n");
    r.commit_breakage();
    let trees: Vec<PathBuf> = (0..AGENTS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("work{i}"));
            t
        })
        .collect();
    let out = r.git_commit(&trees[0], "a0", "a0 work").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let waiters: Vec<Child> = (1..AGENTS)
        .map(|i| {
            r.git_commit(&trees[i], &format!("a{i}"), &format!("a{i} work"))
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || r.state()["keys"][0]["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == AGENTS - 1)),
        "{}",
        r.state()
    );
    // a0 fixes the failure and commits: its passing commit marks the build fixed.
    std::fs::write(trees[0].join("state.txt"), "ok\n").unwrap();
    r.git_in(&trees[0], &["add", "state.txt"]);
    let out = r.git_commit(&trees[0], "a0", "a0 work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fix = r.head(&trees[0]);
    for (i, w) in waiters.into_iter().enumerate() {
        let out = wait_output(w, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "a{}: {err}", i + 1);
        assert!(
            err.contains(&fix[..12]) && !err.contains("FIXER"),
            "a{} is told the fix commit, not elected: {err}",
            i + 1
        );
    }
    let key = &r.state()["keys"][0];
    assert_eq!(key["fix_commit"].as_str(), Some(fix.as_str()), "{key}");
    // Each takes the fix and commits again: it lands at once.
    for (i, t) in trees.iter().enumerate().skip(1) {
        r.git_in(t, &["stash", "-q"]);
        r.git_in(t, &["cherry-pick", &fix]);
        r.git_in(t, &["stash", "pop", "-q", "--index"]);
        let out = r
            .git_commit(t, &format!("a{i}"), &format!("a{i} work"))
            .output()
            .unwrap();
        assert!(out.status.success(), "a{i}: {}", text(&out.stderr));
        assert_eq!(r.last_subject(t), format!("a{i} work"));
    }
    let totals = &r.state()["totals"];
    assert_eq!(
        totals["elections"], 1,
        "one fixer for one breakage: {totals}"
    );
    assert_eq!(r.count_events("elected"), 1);
    assert_eq!(r.count_events("take_fix"), AGENTS - 1);
}

/// The fixer commits its fix with `BUILDLOCK=0`: the waiters wake at once instead of waiting
/// their whole wait for nobody.
#[test]
fn a_fixers_bypass_commit_still_wakes_the_waiters() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    r.configure(&format!(
        "check = \"grep -qx ok {}\"\n[coordination]\nwait = \"60s\"\n",
        status.display()
    ));
    std::fs::write(&status, "broken\n").unwrap();
    let tb = r.worktree("tb");
    r.stage_change(&r.dir, "fa");
    r.stage_change(&tb, "fb");
    let out = r.git_commit(&r.dir, "a", "a work").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let b = r.git_commit(&tb, "b", "b work").spawn().unwrap();
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    std::fs::write(&status, "ok\n").unwrap();
    let out = r
        .git_commit(&r.dir, "a", "a work")
        .env("BUILDLOCK", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = Instant::now();
    let out = wait_output(b, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.state()["keys"][0]["status"], "passing");
}

/// The fix was taken the way buildlock says (`git cherry-pick <id>`), so the agent's HEAD has the
/// fix's change but not the fix commit itself. When the same failure comes back on that branch
/// (the same bad merge again, a revert), it is a new breakage and a fixer is elected.
// regression: the agent was told again and again to take the fix it already had
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
    let out = r.git_commit(&trees[0], "a0", "a0 work").output().unwrap();
    assert!(text(&out.stderr).contains("you are the FIXER"));
    std::fs::write(trees[0].join("state.txt"), "ok\n").unwrap();
    r.git_in(&trees[0], &["add", "state.txt"]);
    assert!(
        r.git_commit(&trees[0], "a0", "a0 work")
            .output()
            .unwrap()
            .status
            .success()
    );
    let fix = r.head(&trees[0]);
    // a1 is told the fix and takes it as told.
    let out = r.git_commit(&trees[1], "a1", "a1 work").output().unwrap();
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
    let out = r.git_commit(&trees[1], "a1", "a1 work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same breakage comes back on a1's branch.
    std::fs::write(trees[1].join("state.txt"), "broken\n").unwrap();
    r.git_in(&trees[1], &["add", "state.txt"]);
    let out = r
        .git_commit(&trees[1], "a1", "the bad merge again")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        err.contains("you are the FIXER"),
        "a1 already has that fix; the failure is a new breakage and needs a fixer: {err}"
    );
}

/// The fixer commits with an editor (`git commit` without `-m`) and takes 15 s to write the
/// message, longer than the waiters wait for a fix commit (`fixcommit::GRACE`) once the check
/// passed: the waiters are handed the fix commit, and nobody else is elected.
// regression: a waiter was elected and fixed the breakage again while the message was written
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
    let fix = r.head(&ta);
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

/// The fixer folds its fix into its previous commit with `git commit --amend`: the amended commit
/// is the fix commit, handed to the waiters, although it is not a commit after the HEAD the check
/// saw.
// regression: the waiters waited 10 s for a later commit, then elected a second fixer
#[test]
fn a_fix_made_with_commit_amend_is_handed_over() {
    let r = TestRepo::new("");
    r.configure("check = \"grep -qx ok state.txt\"\n[coordination]\nwait = \"60s\"\n");
    r.commit_breakage();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    // a already has a commit of its own on top of the breakage.
    r.stage_change(&ta, "earlier");
    r.git_in(
        &ta,
        &["commit", "-q", "-m", "a: earlier work", "--no-verify"],
    );
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let out = r.git_commit(&ta, "a", "a work").output().unwrap();
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let b = r.git_commit(&tb, "b", "b work").spawn().unwrap();
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
    let fix = r.head(&ta);
    let start = Instant::now();
    let out = wait_output(b, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(
        err.contains(&fix[..12]) && !err.contains("you are the FIXER"),
        "after {:?}, b was not handed the amended fix commit {fix}: {err}",
        start.elapsed()
    );
}
