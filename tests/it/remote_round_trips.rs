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
