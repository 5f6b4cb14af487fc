//! `buildlock ci`'s verdict and the fix's way home (contract: "the CI result and the fix's way
//! home"), over a bare repository served by `git daemon` on loopback (see remote.rs): the jobs
//! of a matrix, each in a clone of its own, test one broken commit; one fixes it; every job
//! exits 3 ("broken here, passes on the fix") unless `ci.pass_on_fix`; the fix commit lands on
//! the branch `buildlock/fix/<12 hex of the tested commit>` (or, with `ci.deliver = "push"`, on
//! the tested branch); each job's `GITHUB_STEP_SUMMARY` holds its account.

use crate::harness::*;
use crate::remote::{Server, git, server_with};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

/// The check waits for the starting gun (every job fails at once) and greps `status`; the fix
/// records itself in a witness outside every clone and commits `ok`; a waiter takes the fix
/// from its ref.
fn config(root: &Path) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT\" >> {w}\nsleep 0.3\n\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n",
            w = root.join("witness").display(),
        ),
    )
    .unwrap();
    format!(
        "check = \"while [ ! -e {go} ]; do sleep 0.01; done; grep -qx ok status\"\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nmatch = \"any\"\nwait = \"90s\"\n\
         remote_poll = \"200ms\"\nstale_after = \"60s\"\n\
         [fix]\ncommand = \"sh {fix}\"\n\
         [retry]\nattempts = 5\nrefresh = \"git fetch -q origin $BUILDLOCK_FIX_REF && git checkout -q --detach $BUILDLOCK_FIX_COMMIT\"\n",
        go = root.join("go").display(),
        fix = fix.display(),
    )
}

fn fix_starts(s: &Server) -> Vec<String> {
    std::fs::read_to_string(s.path("witness"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start"))
        .map(str::to_owned)
        .collect()
}

/// A ref of the bare repository, if it exists.
fn remote_ref(s: &Server, name: &str) -> Option<String> {
    let mut c = command("git", &s.root);
    c.current_dir(&s.bare)
        .args(["rev-parse", "--verify", "-q", name]);
    let out = c.output().unwrap();
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_owned())
}

struct Job {
    flavor: String,
    summary: PathBuf,
    out: Output,
}

/// Runs one `buildlock ci` per flavor at once (each in a clone of its own, with its own
/// `GITHUB_STEP_SUMMARY`), fires the starting gun, and waits for all of them.
fn run_jobs(s: &Server, clones: &[(String, PathBuf)], ci_config: Option<&Path>) -> Vec<Job> {
    let _ = std::fs::remove_file(s.path("go"));
    let children: Vec<(String, PathBuf, Child)> = clones
        .iter()
        .map(|(flavor, dir)| {
            let summary = s.path(&format!("summary-{flavor}.md"));
            let summary_s = summary.display().to_string();
            let config_s = ci_config.map(|p| p.display().to_string());
            let mut env: Vec<(&str, &str)> = vec![("GITHUB_STEP_SUMMARY", &summary_s)];
            if let Some(c) = &config_s {
                env.push(("BUILDLOCK_CONFIG", c));
            }
            (flavor.clone(), summary, s.ci(dir, flavor, &env))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(s.path("go"), "").unwrap();
    children
        .into_iter()
        .map(|(flavor, summary, child)| Job {
            flavor,
            summary,
            out: wait_output(child, Duration::from_secs(180)),
        })
        .collect()
}

fn report(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|j| {
            format!(
                "--- {} ({:?})\n{}",
                j.flavor,
                j.out.status,
                text(&j.out.stderr)
            )
        })
        .collect()
}

/// A served broken `main` and three clones (flavors a, b, c); returns the tested commit.
fn matrix() -> (Server, Vec<(String, PathBuf)>, String) {
    let mut s = server_with(config);
    s.start_daemon();
    let url = s.daemon_url();
    let clones: Vec<(String, PathBuf)> = ["a", "b", "c"]
        .iter()
        .map(|f| (f.to_string(), s.clone(&format!("c-{f}"), &url)))
        .collect();
    let tested = s.head(&clones[0].1);
    (s, clones, tested)
}

#[test]
fn ci_broken_commit_exits_3_everywhere_and_the_fix_reaches_a_branch() {
    let (s, clones, tested) = matrix();
    let jobs = run_jobs(&s, &clones, None);
    let all = report(&jobs);
    assert_eq!(fix_starts(&s).len(), 1, "exactly one fix run\n{all}");
    for j in &jobs {
        assert_eq!(
            j.out.status.code(),
            Some(3),
            "{}: broken here, passes on the fix\n{all}",
            j.flavor
        );
    }
    let branch = format!("refs/heads/buildlock/fix/{}", &tested[..12]);
    let fix = remote_ref(&s, &branch)
        .unwrap_or_else(|| panic!("the fix is on {branch}: {}\n{all}", s.heads_and_tags()));
    assert_ne!(fix, tested);
    assert_eq!(
        remote_ref(&s, &format!("{fix}^")).as_deref(),
        Some(tested.as_str()),
        "the fix commit's parent is the tested commit"
    );
    assert_eq!(
        remote_ref(&s, "refs/heads/main").as_deref(),
        Some(tested.as_str()),
        "main did not move (ci.deliver = \"branch\")"
    );
    for j in &jobs {
        let dir = &clones.iter().find(|(f, _)| *f == j.flavor).unwrap().1;
        assert_eq!(s.head(dir), fix, "{} ran on the fix commit", j.flavor);
        let md = std::fs::read_to_string(&j.summary)
            .unwrap_or_else(|e| panic!("{}: no job summary ({e})\n{all}", j.flavor));
        for want in [
            format!(
                "### buildlock ci (`{}`): broken, passes on the fix",
                j.flavor
            ),
            format!("**Tested commit:** `{tested}` on branch `main`"),
            "**Verdict:** broken".to_owned(),
            format!("**Fix commit:** `{fix}`"),
            format!(
                "**Delivered:** branch `buildlock/fix/{}` on `origin`",
                &tested[..12]
            ),
            "**Fixed by:** `".to_owned(),
            "**Passed on the fix:**".to_owned(),
            format!("`{}` (this job", j.flavor),
        ] {
            assert!(md.contains(&want), "{}: {want:?} in\n{md}\n{all}", j.flavor);
        }
        let log = text(&j.out.stderr);
        assert!(
            log.contains("buildlock ci (") && log.contains("Verdict: broken"),
            "{}: the account is in the log too\n{log}",
            j.flavor
        );
    }
    let fixer = jobs
        .iter()
        .find(|j| text(&j.out.stderr).contains("delivered the fix commit"))
        .unwrap_or_else(|| panic!("the fixer says where it delivered\n{all}"));
    let fixer_md = std::fs::read_to_string(&fixer.summary).unwrap();
    assert!(
        fixer_md.contains(&format!("**Fixed by:** `{}` (this job)", fixer.flavor)),
        "{fixer_md}"
    );
    assert_eq!(
        fix_starts(&s)[0],
        format!("start {}", fixer.flavor),
        "the job that ran the fix delivered it"
    );
}

#[test]
fn ci_pass_on_fix_true_exits_0_and_still_tells_the_truth() {
    let (s, clones, tested) = matrix();
    let ci = s.path("ci.toml");
    std::fs::write(&ci, "[ci]\npass_on_fix = true\n").unwrap();
    let jobs = run_jobs(&s, &clones, Some(&ci));
    let all = report(&jobs);
    assert_eq!(fix_starts(&s).len(), 1, "exactly one fix run\n{all}");
    for j in &jobs {
        assert_eq!(j.out.status.code(), Some(0), "{}\n{all}", j.flavor);
        let md = std::fs::read_to_string(&j.summary).unwrap();
        assert!(
            md.contains("broken, passes on the fix") && md.contains("ci.pass_on_fix = true"),
            "{md}"
        );
    }
    assert!(remote_ref(&s, &format!("refs/heads/buildlock/fix/{}", &tested[..12])).is_some());
}

#[test]
fn ci_on_a_passing_commit_exits_0_and_delivers_nothing() {
    let (s, clones, tested) = matrix();
    for (_, dir) in &clones {
        std::fs::write(dir.join("status"), "ok\n").unwrap();
        git(&s.root, dir, &["commit", "-q", "-am", "green"]);
    }
    let jobs = run_jobs(&s, &clones[..1], None);
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(0), "{all}");
    assert!(fix_starts(&s).is_empty(), "{all}");
    let md = std::fs::read_to_string(&jobs[0].summary).unwrap();
    assert!(md.contains("### buildlock ci (`a`): passed"), "{md}");
    assert!(!md.contains("Fix commit"), "{md}");
    assert!(
        !s.heads_and_tags().contains("buildlock/fix/"),
        "{}",
        s.heads_and_tags()
    );
    let _ = tested;
}

#[test]
fn ci_deliver_push_fast_forwards_the_tested_branch() {
    let (s, clones, tested) = matrix();
    let ci = s.path("ci.toml");
    std::fs::write(&ci, "[ci]\ndeliver = \"push\"\n").unwrap();
    let jobs = run_jobs(&s, &clones[..1], Some(&ci));
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(3), "{all}");
    let main = remote_ref(&s, "refs/heads/main").unwrap();
    assert_ne!(main, tested, "main moved to the fix\n{all}");
    assert_eq!(main, s.head(&clones[0].1));
    assert!(
        remote_ref(&s, &format!("refs/heads/buildlock/fix/{}", &tested[..12])).is_none(),
        "no fix branch when main took the fix"
    );
    let md = std::fs::read_to_string(&jobs[0].summary).unwrap();
    assert!(md.contains("pushed to branch `main`"), "{md}");
}

#[test]
fn ci_deliver_push_onto_a_moved_branch_delivers_a_branch_instead() {
    let (s, clones, tested) = matrix();
    // main moves on after the jobs checked out the tested commit.
    let seed = s.root.join("seed");
    std::fs::write(seed.join("other"), "x\n").unwrap();
    git(&s.root, &seed, &["add", "other"]);
    git(&s.root, &seed, &["commit", "-q", "-m", "moved on"]);
    git(
        &s.root,
        &seed,
        &["push", "-q", s.bare.to_str().unwrap(), "main"],
    );
    let moved = remote_ref(&s, "refs/heads/main").unwrap();
    let ci = s.path("ci.toml");
    std::fs::write(&ci, "[ci]\ndeliver = \"push\"\n").unwrap();
    let jobs = run_jobs(&s, &clones[..1], Some(&ci));
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(3), "{all}");
    assert_eq!(
        remote_ref(&s, "refs/heads/main"),
        Some(moved),
        "main untouched"
    );
    assert_eq!(
        remote_ref(&s, &format!("refs/heads/buildlock/fix/{}", &tested[..12])),
        Some(s.head(&clones[0].1)),
        "{all}"
    );
}

#[test]
fn ci_a_delivery_branch_is_never_moved_by_a_second_fixer() {
    let (s, clones, tested) = matrix();
    let branch = format!("buildlock/fix/{}", &tested[..12]);
    // Someone's earlier fix is already on the branch.
    git(
        &s.root,
        &s.bare,
        &["update-ref", &format!("refs/heads/{branch}"), &tested],
    );
    let jobs = run_jobs(&s, &clones[..1], None);
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(3), "{all}");
    assert_eq!(
        remote_ref(&s, &format!("refs/heads/{branch}")),
        Some(tested.clone()),
        "the branch was left as it was"
    );
    let md = std::fs::read_to_string(&jobs[0].summary).unwrap();
    assert!(md.contains("already holds another fix"), "{md}");
}

#[test]
fn ci_with_the_local_backend_delivers_to_origin() {
    let (s, clones, tested) = matrix();
    let ci = s.path("ci.toml");
    std::fs::write(&ci, "[coordination]\nbackend = \"local\"\n").unwrap();
    let jobs = run_jobs(&s, &clones[..1], Some(&ci));
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(3), "{all}");
    assert_eq!(
        remote_ref(&s, &format!("refs/heads/buildlock/fix/{}", &tested[..12])),
        Some(s.head(&clones[0].1)),
        "{all}"
    );
    // Without an `origin`, the job says the fix could not be delivered (and still exits 3).
    let (s2, clones2, _) = matrix();
    git(&s2.root, &clones2[0].1, &["remote", "remove", "origin"]);
    let ci2 = s2.path("ci.toml");
    std::fs::write(
        &ci2,
        "[coordination]\nbackend = \"local\"\n[retry]\nrefresh = \"\"\n",
    )
    .unwrap();
    let jobs = run_jobs(&s2, &clones2[..1], Some(&ci2));
    let all = report(&jobs);
    assert_eq!(jobs[0].out.status.code(), Some(3), "{all}");
    assert!(all.contains("could not be delivered"), "{all}");
    let md = std::fs::read_to_string(&jobs[0].summary).unwrap();
    assert!(md.contains("not delivered: no remote `origin`"), "{md}");
}
