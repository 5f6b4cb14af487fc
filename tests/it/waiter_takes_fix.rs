//! A waiter that lacks the fix is handed it as soon as the fix commit exists (contract: "The fix
//! commit and taking it"): its `retry.refresh` runs with `BUILDLOCK_FIX_COMMIT` set, or it is told
//! to take the fix (exit 75), and no check runs again only to find out that it still fails.
//!
//! Every agent works on a branch of its own (a worktree, or a clone for `buildlock ci`), started
//! from a committed breakage. The check appends `<agent> <what it saw>` to a witness file each
//! time it runs, so that every check run is counted: a waiter runs its check once on the broken
//! tree (which makes it a waiter) and, with a refresh, once more on the fixed tree, where it
//! passes. The fixer's `fix.command` waits for the test's starting gun, then fixes and commits.

use crate::harness::*;
use crate::remote::{Server, git, server_with};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

const WAITERS: usize = 3;

/// How a waiter commits.
#[derive(Clone, Copy, PartialEq)]
enum Waiter {
    /// `git commit-retry` with `retry.refresh = 'git buildlock take-fix'` (recorded).
    RetryRefresh,
    /// `git commit-retry` without a refresh.
    RetryTold,
    /// A plain `git commit`, waiting in the hook.
    PlainCommit,
}

/// One round in worktrees: a0 is elected (commit-retry, its fix held back until the gun), the
/// waiters wait for it, then the gun: a0 fixes and commits on its branch. Returns the repository,
/// the worktrees, the fix commit and the waiters' outputs.
fn round(kind: Waiter) -> (TestRepo, Vec<PathBuf>, String, Vec<Output>) {
    let r = TestRepo::new("");
    let witness = r.shared("checks");
    let refreshes = r.shared("refreshes");
    let go = r.shared("go");
    let refresh = match kind {
        Waiter::RetryRefresh => format!(
            "[retry]\nrefresh = 'echo \"$BUILDLOCK_AGENT [$BUILDLOCK_FIX_COMMIT]\" >> {}; {}'\n",
            refreshes.display(),
            buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX
        ),
        Waiter::RetryTold | Waiter::PlainCommit => String::new(),
    };
    r.configure(&format!(
        "check = 'echo \"$BUILDLOCK_AGENT $(cat state.txt)\" >> {w}; grep -qx ok state.txt'\n\
         [coordination]\nwait = \"2m\"\n\
         [fix]\ncommand = 'while [ ! -e {go} ]; do sleep 0.05; done; echo ok > state.txt && \
         git add state.txt && git commit -q -m \"fix the bad merge\" -- state.txt'\n{refresh}",
        w = witness.display(),
        go = go.display(),
    ));
    r.commit_breakage();
    r.alias_buildlock();
    let trees: Vec<PathBuf> = (0..=WAITERS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("work{i}"));
            t
        })
        .collect();
    // a0 is elected; its fix waits for the gun.
    let fixer = r.commit_retry(&trees[0], "a0");
    assert!(
        eventually(
            Duration::from_secs(60),
            || r.state()["keys"][0]["fixer"]["agent"] == "a0"
        ),
        "{}",
        r.state()
    );
    let waiters: Vec<Child> = (1..=WAITERS)
        .map(|i| {
            let agent = format!("a{i}");
            match kind {
                Waiter::PlainCommit => r
                    .git_commit(&trees[i], &agent, &format!("{agent} work"))
                    .spawn()
                    .unwrap(),
                _ => r.commit_retry(&trees[i], &agent),
            }
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || r.state()["keys"][0]["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == WAITERS)),
        "{}",
        r.state()
    );
    std::fs::write(&go, "").unwrap();
    let out = wait_output(fixer, Duration::from_secs(120));
    assert!(out.status.success(), "a0: {}", text(&out.stderr));
    let fix = text(&r.git_in(&trees[0], &["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    assert_eq!(
        text(
            &r.git_in(&trees[0], &["log", "-1", "--format=%s", &fix])
                .stdout
        )
        .trim(),
        "fix the bad merge"
    );
    let outs = waiters
        .into_iter()
        .map(|w| wait_output(w, Duration::from_secs(120)))
        .collect();
    (r, trees, fix, outs)
}

/// The check runs of `agent`, in order: what `state.txt` said each time.
fn checks_of(r: &TestRepo, agent: &str) -> Vec<String> {
    lines(&r.shared("checks"))
        .into_iter()
        .filter_map(|l| l.strip_prefix(&format!("{agent} ")).map(str::to_owned))
        .collect()
}

/// Every agent's check runs, for the failure messages.
fn all_checks(r: &TestRepo) -> String {
    lines(&r.shared("checks")).join(", ")
}

#[test]
fn commit_retry_waiters_refresh_with_the_fix_commit_and_never_recheck_to_fail() {
    let (r, trees, fix, outs) = round(Waiter::RetryRefresh);
    let refreshes = lines(&r.shared("refreshes"));
    for (i, out) in outs.iter().enumerate() {
        let (i, err) = (i + 1, text(&out.stderr));
        let agent = format!("a{i}");
        assert!(out.status.success(), "{agent}: {err}");
        assert_eq!(r.last_subject(&trees[i]), format!("{agent} work"));
        let log = text(&r.git_in(&trees[i], &["log", "--format=%H"]).stdout);
        assert!(log.contains(&fix), "{agent}'s branch has the fix commit");
        // Once on the broken tree (which made it a waiter), once on the fixed tree (its commit).
        assert_eq!(
            checks_of(&r, &agent),
            ["broken", "ok"],
            "{agent}'s check runs (all: {})\n{err}",
            all_checks(&r)
        );
        // Its refresh ran once, handed the fix commit.
        let mine: Vec<&String> = refreshes
            .iter()
            .filter(|l| l.starts_with(&format!("{agent} ")))
            .collect();
        assert_eq!(mine, [&format!("{agent} [{fix}]")], "{refreshes:?}\n{err}");
    }
    assert_eq!(r.state()["totals"]["elections"], 1);
}

#[test]
fn commit_retry_waiters_without_a_refresh_are_told_the_fix_without_a_recheck() {
    let (r, trees, fix, outs) = round(Waiter::RetryTold);
    for (i, out) in outs.iter().enumerate() {
        let (i, err) = (i + 1, text(&out.stderr));
        let agent = format!("a{i}");
        assert_eq!(out.status.code(), Some(75), "{agent}: {err}");
        assert!(
            err.contains(&format!("git buildlock take-fix {fix}")),
            "{agent}: {err}"
        );
        assert!(err.contains("retry.refresh"), "{agent}: {err}");
        assert!(!err.contains("FIXER"), "{agent}: {err}");
        assert_eq!(
            checks_of(&r, &agent),
            ["broken"],
            "{agent} ran its check only once (all: {})\n{err}",
            all_checks(&r)
        );
        assert_ne!(r.last_subject(&trees[i]), format!("{agent} work"));
    }
    let s = r.state();
    assert_eq!(s["totals"]["elections"], 1);
    assert_eq!(s["keys"][0]["fix_commit"], fix.as_str());
}

#[test]
fn plain_commits_waiting_in_the_hook_are_told_the_fix_without_a_recheck() {
    let (r, _trees, fix, outs) = round(Waiter::PlainCommit);
    for (i, out) in outs.iter().enumerate() {
        let (i, err) = (i + 1, text(&out.stderr));
        let agent = format!("a{i}");
        assert!(!out.status.success(), "{agent}: {err}");
        assert!(
            err.contains(&format!("already fixed this failure in commit {fix}"))
                && err.contains(&format!("git buildlock take-fix {fix}")),
            "{agent}: {err}"
        );
        assert!(!err.contains("FIXER"), "{agent}: {err}");
        assert_eq!(
            checks_of(&r, &agent),
            ["broken"],
            "{agent} ran its check only once (all: {})\n{err}",
            all_checks(&r)
        );
    }
    assert_eq!(r.state()["totals"]["elections"], 1);
}

/// The waiters' checks are still running when the fix lands (their failure is then stale: the
/// key became passing while they ran): the fix is handed over at once, not found out by a
/// check run again only to fail.
#[test]
fn a_waiter_whose_check_ran_while_the_fix_landed_takes_it_without_a_recheck() {
    let r = TestRepo::new("");
    let (witness, refreshes) = (r.shared("checks"), r.shared("refreshes"));
    let (go, release) = (r.shared("go"), r.shared("release"));
    r.configure(&format!(
        "check = 'echo \"$BUILDLOCK_AGENT $(cat state.txt)\" >> {w}; \
         [ \"$BUILDLOCK_AGENT\" = a0 ] || grep -qx ok state.txt || \
         while [ ! -e {release} ]; do sleep 0.05; done; grep -qx ok state.txt'\n\
         [coordination]\nwait = \"2m\"\n\
         [fix]\ncommand = 'while [ ! -e {go} ]; do sleep 0.05; done; echo ok > state.txt && \
         git add state.txt && git commit -q -m \"fix the bad merge\" -- state.txt'\n\
         [retry]\nrefresh = 'echo \"$BUILDLOCK_AGENT [$BUILDLOCK_FIX_COMMIT]\" >> {refreshes}; {take}'\n",
        w = witness.display(),
        go = go.display(),
        release = release.display(),
        refreshes = refreshes.display(),
        take = buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX,
    ));
    r.commit_breakage();
    r.alias_buildlock();
    let trees: Vec<PathBuf> = (0..=WAITERS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("work{i}"));
            t
        })
        .collect();
    let fixer = r.commit_retry(&trees[0], "a0");
    assert!(
        eventually(
            Duration::from_secs(60),
            || r.state()["keys"][0]["fixer"]["agent"] == "a0"
        ),
        "{}",
        r.state()
    );
    // The waiters' checks start on the broken tree and hold on until the fix is in.
    let waiters: Vec<Child> = (1..=WAITERS)
        .map(|i| r.commit_retry(&trees[i], &format!("a{i}")))
        .collect();
    assert!(eventually(Duration::from_secs(60), || {
        (1..=WAITERS).all(|i| checks_of(&r, &format!("a{i}")).len() == 1)
    }));
    std::fs::write(&go, "").unwrap();
    let out = wait_output(fixer, Duration::from_secs(120));
    assert!(out.status.success(), "a0: {}", text(&out.stderr));
    assert_eq!(r.state()["keys"][0]["status"], "passing");
    let fix = text(&r.git_in(&trees[0], &["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    std::fs::write(&release, "").unwrap();
    let taken = |agent: &str| -> Vec<String> {
        lines(&refreshes)
            .into_iter()
            .filter(|l| l.starts_with(&format!("{agent} ")))
            .collect()
    };
    for (i, w) in waiters.into_iter().enumerate() {
        let out = wait_output(w, Duration::from_secs(120));
        let (i, err) = (i + 1, text(&out.stderr));
        let agent = format!("a{i}");
        assert!(out.status.success(), "{agent}: {err}");
        assert_eq!(r.last_subject(&trees[i]), format!("{agent} work"));
        assert_eq!(
            checks_of(&r, &agent),
            ["broken", "ok"],
            "{agent}'s check runs (all: {})\n{err}",
            all_checks(&r)
        );
        assert_eq!(taken(&agent), [format!("{agent} [{fix}]")], "{err}");
    }
    assert_eq!(r.state()["totals"]["elections"], 1);
}

/// The fixer (commit-retry) is held, stopped, between making its fix commit and recording it
/// (the `record-fix` fault point), for longer than a waiter once waited for the record: the
/// waiters, whose checks failed after the fix landed, wait for the record while their recorder
/// lives instead of running their checks again, and take the fix once it is recorded.
// regression: a waiter gave up on the record after 2 s and ran its check again only to fail
#[test]
fn waiters_wait_for_a_held_recorder_to_record_the_fix_instead_of_rechecking() {
    let r = TestRepo::new("");
    let (witness, refreshes) = (r.shared("checks"), r.shared("refreshes"));
    let (go, release, ended) = (r.shared("go"), r.shared("release"), r.shared("ended"));
    r.configure(&format!(
        "check = 'echo \"$BUILDLOCK_AGENT $(cat state.txt)\" >> {w}; \
         [ \"$BUILDLOCK_AGENT\" = a0 ] || grep -qx ok state.txt || \
         {{ while [ ! -e {release} ]; do sleep 0.05; done; echo \"$BUILDLOCK_AGENT\" >> {ended}; }}; \
         grep -qx ok state.txt'\n\
         [coordination]\nwait = \"2m\"\n\
         [fix]\ncommand = 'while [ ! -e {go} ]; do sleep 0.05; done; echo ok > state.txt && \
         git add state.txt && git commit -q -m \"fix the bad merge\" -- state.txt'\n\
         [retry]\nrefresh = 'echo \"$BUILDLOCK_AGENT [$BUILDLOCK_FIX_COMMIT]\" >> {refreshes}; {take}'\n",
        w = witness.display(),
        go = go.display(),
        release = release.display(),
        ended = ended.display(),
        refreshes = refreshes.display(),
        take = buildlock_core::flows::commit::fixcommit::REFRESH_TAKING_THE_FIX,
    ));
    r.commit_breakage();
    r.alias_buildlock();
    let trees: Vec<PathBuf> = (0..=WAITERS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("work{i}"));
            t
        })
        .collect();
    let fixer = r
        .commit_retry_cmd(&trees[0], "a0")
        .env("BUILDLOCK_FAULT", "record-fix:stop")
        .spawn()
        .unwrap();
    assert!(
        eventually(
            Duration::from_secs(60),
            || r.state()["keys"][0]["fixer"]["agent"] == "a0"
        ),
        "{}",
        r.state()
    );
    let waiters: Vec<Child> = (1..=WAITERS)
        .map(|i| r.commit_retry(&trees[i], &format!("a{i}")))
        .collect();
    assert!(eventually(Duration::from_secs(60), || {
        (1..=WAITERS).all(|i| checks_of(&r, &format!("a{i}")).len() == 1)
    }));
    std::fs::write(&go, "").unwrap();
    // The fix commit is made and the key passing; the recorder stopped itself before recording.
    assert!(
        eventually(Duration::from_secs(120), || proc_state(fixer.id())
            == Some('T')),
        "a0 never reached the point between its fix commit and its record"
    );
    // Judged only once a0 is resumed, so that a failure leaves no stopped process behind.
    let passing = r.state()["keys"][0]["status"] == "passing";
    std::fs::write(&release, "").unwrap();
    let all_ended = eventually(Duration::from_secs(60), || lines(&ended).len() == WAITERS);
    // Well past the 2 s a waiter once gave the record: nobody ran its check again meanwhile.
    std::thread::sleep(Duration::from_secs(5));
    let while_held = all_checks(&r);
    let rechecked: Vec<usize> = (1..=WAITERS)
        .filter(|i| checks_of(&r, &format!("a{i}")).len() != 1)
        .collect();
    signal(&fixer, libc::SIGCONT);
    assert!(passing, "the fix commit was made, the key is passing");
    assert!(all_ended, "the waiters' checks ended: {while_held}");
    assert!(
        rechecked.is_empty(),
        "waiters {rechecked:?} ran their check again while the fix waited to be recorded \
         (all: {while_held})"
    );
    let out = wait_output(fixer, Duration::from_secs(120));
    assert!(out.status.success(), "a0: {}", text(&out.stderr));
    let fix = text(&r.git_in(&trees[0], &["rev-parse", "HEAD~1"]).stdout)
        .trim()
        .to_owned();
    for (i, w) in waiters.into_iter().enumerate() {
        let out = wait_output(w, Duration::from_secs(120));
        let (i, err) = (i + 1, text(&out.stderr));
        let agent = format!("a{i}");
        assert!(out.status.success(), "{agent}: {err}");
        assert_eq!(r.last_subject(&trees[i]), format!("{agent} work"));
        assert_eq!(
            checks_of(&r, &agent),
            ["broken", "ok"],
            "{agent}'s check runs (all: {})\n{err}",
            all_checks(&r)
        );
        let taken: Vec<String> = lines(&refreshes)
            .into_iter()
            .filter(|l| l.starts_with(&format!("{agent} ")))
            .collect();
        assert_eq!(taken, [format!("{agent} [{fix}]")], "{err}");
    }
    assert_eq!(r.state()["totals"]["elections"], 1);
}

// Across machines: `buildlock ci` over git daemon ------------------------------------------------

/// The `buildlock ci` configuration: the check records `<flavor> <status>`, the fix waits for the
/// gun, then commits `ok`; `refresh` is the waiters' `retry.refresh` (none when empty).
fn ci_config(root: &Path, refresh: &str) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "while [ ! -e {go} ]; do sleep 0.05; done\n\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n",
            go = root.join("go").display(),
        ),
    )
    .unwrap();
    format!(
        "check = 'echo \"$BUILD_FLAVOR $(cat status)\" >> {w}; grep -qx ok status'\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nwait = \"2m\"\n\
         stale_after = \"60s\"\nremote_poll = \"200ms\"\n\
         [fix]\ncommand = \"sh {fix}\"\n{refresh}\
         [ci]\npass_on_fix = true\ndeliver = \"none\"\n",
        w = root.join("checks").display(),
        fix = fix.display(),
    )
}

/// One `buildlock ci` round over git daemon: flavor0 is elected (its fix held back), the others
/// fail and wait, then the gun. With `refresh`, the waiters' `retry.refresh` records itself in
/// `refreshes`, fetches the fix ref and takes the fix. Returns the server, the clones and every
/// job's output.
fn ci_round(refresh: bool) -> (Server, Vec<PathBuf>, Vec<Output>) {
    let mut s = server_with(|root| {
        let refresh = if refresh {
            format!(
                "[retry]\nrefresh = 'echo \"$BUILD_FLAVOR [$BUILDLOCK_FIX_COMMIT]\" >> {}; \
                 git fetch -q origin \"$BUILDLOCK_FIX_REF\" && git buildlock take-fix'\n",
                root.join("refreshes").display()
            )
        } else {
            String::new()
        };
        ci_config(root, &refresh)
    });
    s.start_daemon();
    let url = s.daemon_url();
    let clones: Vec<PathBuf> = (0..=WAITERS)
        .map(|i| {
            let c = s.clone(&format!("c{i}"), &url);
            git(
                &s.root,
                &c,
                &[
                    "config",
                    "alias.buildlock",
                    &format!(
                        "!f() {{ cd \"${{GIT_PREFIX:-.}}\" && exec '{BUILDLOCK}' \"$@\"; }}; f"
                    ),
                ],
            );
            c
        })
        .collect();
    let fixer = s.ci(&clones[0], "flavor0", &[]);
    // Elected: its fix waits for the gun.
    assert!(
        eventually(Duration::from_secs(60), || {
            let mut c = command(BUILDLOCK, &s.root);
            c.current_dir(&clones[0]).args(["status", "--json"]);
            let out = c.output().unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|st| {
                st["keys"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k["fixer"]["agent"] == "flavor0"))
            })
        }),
        "flavor0 was not elected"
    );
    let waiters: Vec<Child> = (1..=WAITERS)
        .map(|i| s.ci(&clones[i], &format!("flavor{i}"), &[]))
        .collect();
    // Each waiter's check failed and it is waiting (it said so) before the fix is let go.
    let checks = s.path("checks");
    assert!(eventually(Duration::from_secs(60), || {
        (1..=WAITERS).all(|i| lines(&checks).contains(&format!("flavor{i} broken")))
    }));
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(s.path("go"), "").unwrap();
    let mut outs = vec![wait_output(fixer, Duration::from_secs(120))];
    outs.extend(
        waiters
            .into_iter()
            .map(|w| wait_output(w, Duration::from_secs(120))),
    );
    (s, clones, outs)
}

fn ci_checks_of(s: &Server, flavor: &str) -> Vec<String> {
    lines(&s.path("checks"))
        .into_iter()
        .filter_map(|l| l.strip_prefix(&format!("{flavor} ")).map(str::to_owned))
        .collect()
}

fn ci_report(outs: &[Output]) -> String {
    outs.iter()
        .enumerate()
        .map(|(i, o)| format!("--- flavor{i} ({:?})\n{}", o.status, text(&o.stderr)))
        .collect()
}

#[test]
fn ci_waiters_refresh_with_the_fix_commit_and_never_recheck_to_fail() {
    let (s, clones, outs) = ci_round(true);
    let report = ci_report(&outs);
    let taken = lines(&s.path("refreshes"));
    assert_eq!(outs[0].status.code(), Some(0), "{report}");
    let fix = s.head(&clones[0]);
    for (i, out) in outs.iter().enumerate().skip(1) {
        let flavor = format!("flavor{i}");
        assert_eq!(out.status.code(), Some(0), "{flavor}\n{report}");
        assert_eq!(
            ci_checks_of(&s, &flavor),
            ["broken", "ok"],
            "{flavor}'s check runs\n{report}"
        );
        let mine: Vec<&String> = taken
            .iter()
            .filter(|l| l.starts_with(&format!("{flavor} ")))
            .collect();
        assert_eq!(mine, [&format!("{flavor} [{fix}]")], "{taken:?}\n{report}");
    }
}

#[test]
fn ci_waiters_without_a_refresh_are_told_the_fix_without_a_recheck() {
    let (s, clones, outs) = ci_round(false);
    let report = ci_report(&outs);
    assert_eq!(outs[0].status.code(), Some(0), "{report}");
    let fix = s.head(&clones[0]);
    for (i, out) in outs.iter().enumerate().skip(1) {
        let flavor = format!("flavor{i}");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{flavor}\n{report}");
        assert!(
            err.contains(&format!("git buildlock take-fix {fix}")),
            "{flavor}\n{report}"
        );
        assert_eq!(
            ci_checks_of(&s, &flavor),
            ["broken"],
            "{flavor} ran its check only once\n{report}"
        );
    }
}
