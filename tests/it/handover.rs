//! The fix handed to the waiters (issue 8, "Done means"): agents that started from a committed
//! breakage, committing with plain `git commit`: one fixes it, the others are told the fix
//! commit, and once they take it every commit lands on its first try.

use crate::harness::*;
use std::process::Stdio;
use std::time::Duration;

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
    text(&r.git_in(fixer, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_owned()
}

/// a0 is elected on the committed breakage, fixes it on its own branch; returns the fix commit.
fn fixed_by_a0(r: &TestRepo, fixer: &std::path::Path) -> String {
    assert_eq!(r.hook(fixer, "a0").status.code(), Some(1));
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
    let fix = text(&r.git_in(t, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_owned();

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
            err.contains(&format!("git cherry-pick {}", &fix[..12])),
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

    // All take the fix at once, with the very command they were told (worktrees share one
    // `refs/stash`: the recipe must not use it), then commit: first try, each with its own work.
    let told = outs
        .iter()
        .flatten()
        .next()
        .map(|o| text(&o.stderr))
        .unwrap();
    let recipe = told
        .split('`')
        .find(|part| part.starts_with("BUILDLOCK_FIX_COMMIT="))
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
        err.contains(&format!("git cherry-pick {}", &fix[..12])),
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
    assert_eq!(r.hook(fixer, "a0").status.code(), Some(1));
    assert_eq!(r.hook(other, "a1").status.code(), Some(75));
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
    let out = r.hook(other, "a1");
    let err = text(&out.stderr);
    assert!(
        !err.contains(&fix[..12]),
        "handed an abandoned commit: {err}"
    );
    assert!(err.contains("you are the FIXER"), "{err}");
}

#[test]
fn reset_forgets_the_fixes_on_record() {
    let (r, trees) = committed_breakage("[hook]\nwait = false\n");
    let fix = fixed_by_a0(&r, &trees[0]);
    assert_eq!(r.state()["keys"][0]["fix_commit"], fix.as_str());
    let out = r.cmd(BUILDLOCK, &r.dir).arg("reset").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(r.state()["keys"][0]["fix_commit"], serde_json::Value::Null);
    let out = r.hook(&trees[1], "a1");
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
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
    assert_eq!(r.hook(fixer, "a0").status.code(), Some(1));
    r.stage_change(waiter, "w");
    let child = waiting_commit_retry(&r, waiter, "w");
    std::fs::write(fixer.join("dep.txt"), "ok\n").unwrap();
    std::fs::write(waiter.join("dep.txt"), "ok\n").unwrap();
    r.git_in(waiter, &["add", "dep.txt"]);
    assert_eq!(r.hook(fixer, "a0").status.code(), Some(0));
    let out = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The documented refresh, when the fix cannot be taken on top of the agent's work: nothing is
/// lost (it was: `git reset --hard` had run, and the work lived only in an unreachable commit).
#[test]
fn the_example_refresh_keeps_the_work_when_it_cannot_finish() {
    let r = TestRepo::new("");
    std::fs::write(r.dir.join("dep.rs"), "broken\n").unwrap();
    std::fs::write(r.dir.join("notes.txt"), "notes\n").unwrap();
    r.git(&["add", "dep.rs", "notes.txt"]);
    r.git(&["commit", "-q", "-m", "base", "--no-verify"]);
    let wt = r.worktree("waiter");
    // The fix, on main.
    std::fs::write(r.dir.join("dep.rs"), "fixed\n").unwrap();
    r.git(&["commit", "-q", "-am", "fix", "--no-verify"]);
    let fix = text(&r.git(&["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_owned();
    let refresh = |dir: &std::path::Path| {
        r.cmd("sh", dir)
            .args([
                "-c",
                buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX,
            ])
            .env("BUILDLOCK_FIX_COMMIT", &fix)
            .output()
            .unwrap()
    };
    // 1. The agent's staged change to the very file the fix changes: the work does not apply
    //    on top of the fix. It is kept in a ref, and the refresh says how to take it back.
    std::fs::write(wt.join("dep.rs"), "my own change\n").unwrap();
    r.git_in(&wt, &["add", "dep.rs"]);
    std::fs::write(wt.join("notes.txt"), "unstaged\n").unwrap();
    let out = refresh(&wt);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let kept = err
        .split("git stash apply --index ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("not said how to take the work back: {err}"));
    let refs = text(
        &r.git(&[
            "for-each-ref",
            "--format=%(objectname)",
            "refs/buildlock/kept/",
        ])
        .stdout,
    );
    assert!(refs.contains(&kept), "{refs}");
    r.git_in(&wt, &["reset", "-q", "--hard", "HEAD~1"]);
    r.git_in(&wt, &["stash", "apply", "-q", "--index", &kept]);
    assert_eq!(
        std::fs::read_to_string(wt.join("dep.rs")).unwrap(),
        "my own change\n"
    );
    assert_eq!(
        std::fs::read_to_string(wt.join("notes.txt")).unwrap(),
        "unstaged\n"
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
