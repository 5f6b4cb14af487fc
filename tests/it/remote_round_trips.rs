//! What one hook run costs the remote backend, counted by a `git` witness on PATH that logs
//! every git run: a commit whose check passes, with the claims guard on (the default), looks at
//! the remote once: the guard's `ls-remote` also lists the build states the hook reads before
//! its check.

use crate::harness::*;
use crate::remote::{Server, git};

// regression: the claims guard ran its own `ls-remote` on top of the hook's state read
#[test]
fn remote_a_passing_hook_run_costs_one_ls_remote_for_the_guard_and_the_state() {
    let mut s =
        Server::new("check = \"true\"\n[coordination]\nbackend = \"remote\"\nscope = \"commit\"\n");
    s.start_daemon();
    let a = s.clone("a", &s.daemon_url());
    let log = s.path("git-calls.log");
    let path = git_witness(&s.path("shim"), &log);
    // Someone claims something, so that the guard has a registry to read (and a path of ours
    // that is not claimed, so that the commit goes on).
    let mut claim = command(BUILDLOCK, &s.root);
    claim
        .current_dir(&a)
        .env("BUILDLOCK_AGENT", "other")
        .args(["claim", "docs/"]);
    run_ok(claim);
    std::fs::write(a.join("file"), "x\n").unwrap();
    git(&s.root, &a, &["add", "file"]);
    let _ = std::fs::remove_file(&log);
    let mut hook = command(PRE_COMMIT, &s.root);
    hook.current_dir(&a)
        .env("BUILDLOCK_AGENT", "me")
        .env("PATH", &path);
    let out = run_ok(hook);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let looks = calls.lines().filter(|l| l.ends_with(" ls-remote")).count();
    assert_eq!(
        looks,
        1,
        "one look at the remote per hook run: {calls}\n{}",
        text(&out.stderr)
    );
    assert!(
        !calls.lines().any(|l| l.ends_with(" push")),
        "a passing check pushes nothing: {calls}"
    );
}

/// The state commits of `key_ref` on the server, oldest first: (subject, the state it records).
fn chain(s: &Server, key_ref: &str) -> Vec<(String, serde_json::Value)> {
    let oids = text(&git(&s.root, &s.bare, &["rev-list", "--reverse", key_ref]).stdout);
    oids.lines()
        .map(|oid| {
            let subject = text(&git(&s.root, &s.bare, &["log", "-1", "--format=%s", oid]).stdout);
            let doc = text(
                &git(
                    &s.root,
                    &s.bare,
                    &["cat-file", "-p", &format!("{oid}:state.json")],
                )
                .stdout,
            );
            (
                subject.trim().to_owned(),
                serde_json::from_str(&doc).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

// regression: a `buildlock ci` fixer pushed the key's state four times around the start of its
// fix (its registration, the fix's token, the fix's process group, `fix_started`) and twice at
// its end (`fix_finished`, the mark), and each push made every waiting job of the matrix fetch
// once
#[test]
fn remote_a_ci_fixer_pushes_once_before_its_fix_once_as_it_starts_and_once_at_the_end() {
    let mut s = Server::new(
        "check = \"grep -qx ok status\"\n[coordination]\nbackend = \"remote\"\nscope = \"commit\"\n\
         [fix]\ncommand = \"echo ok > status && git commit -q -am fix\"\n[ci]\ndeliver = \"none\"\n",
    );
    s.start_daemon();
    let a = s.clone("a", &s.daemon_url());
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(&a).arg("ci").env("BUILD_FLAVOR", "a");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let refs: Vec<String> = s
        .buildlock_refs()
        .into_iter()
        .filter(|r| r.starts_with("refs/buildlock/state/"))
        .collect();
    assert_eq!(refs.len(), 1, "{refs:?}");
    let chain = chain(&s, &refs[0]);
    let subjects: Vec<&str> = chain.iter().map(|(s, _)| s.as_str()).collect();
    let elected = subjects
        .iter()
        .position(|s| s.contains("elected"))
        .unwrap_or_else(|| panic!("{subjects:?}"));
    let started = subjects
        .iter()
        .position(|s| s.contains("fix_started"))
        .unwrap_or_else(|| panic!("{subjects:?}"));
    assert_eq!(
        started,
        elected + 2,
        "one state commit between the election and the fix's start: {subjects:#?}"
    );
    // The one before the fix registers the holder and announces the fix run by its token.
    let announced = &chain[elected + 1].1["fixer"];
    assert_eq!(announced["registered"], true, "{announced}");
    assert_eq!(announced["fix_process"]["pid"], 0, "{announced}");
    assert!(announced["fix_process"]["token"].is_string(), "{announced}");
    // The one as it starts records the fix's process group with `fix_started`.
    let recorded = &chain[started].1["fixer"]["fix_process"];
    assert!(recorded["pid"].as_u64().unwrap_or(0) > 0, "{recorded}");
    assert_eq!(recorded["token"], announced["fix_process"]["token"]);
    // The fix run's end goes with the mark of the key fixed: the next and last commit.
    assert_eq!(subjects.len(), started + 2, "{subjects:#?}");
    assert!(
        subjects[started + 1].contains("fix_finished a, fixed a (passing"),
        "{subjects:#?}"
    );
    let st = s.status(&a);
    assert_eq!(st["totals"]["fix_runs"], 1, "{st}");
    assert_eq!(st["totals"]["fixes"], 1, "{st}");
}
