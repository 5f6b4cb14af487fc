//! Claims across machines (`backend = "remote"`): separate clones of a bare repository served by
//! `git daemon` on a loopback port stand for agents on machines that share only `origin`. A claim
//! made in one clone must refuse a conflicting claim and a conflicting commit (the hook's guard)
//! in another; releases reach the other clones; nothing is silently local, and a remote that
//! cannot be reached fails the claims commands with exit 70 and the guard loudly.

use crate::harness::*;
use crate::remote::{Server, git};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

/// A server with the remote backend and a passing check, served by `git daemon`, and one clone
/// per name, each with the hook installed.
fn machines(wait: &str, extra: &str, names: &[&str]) -> (Server, Vec<PathBuf>) {
    let mut s = Server::new(&format!(
        "check = \"true\"\n[coordination]\nbackend = \"remote\"\nremote_poll = \"200ms\"\nwait = \"{wait}\"\n{extra}"
    ));
    s.start_daemon();
    let url = s.daemon_url();
    let clones = names
        .iter()
        .map(|n| {
            let dir = s.clone(n, &url);
            let hooks = dir.join(".git/hooks");
            std::fs::create_dir_all(&hooks).unwrap();
            std::os::unix::fs::symlink(PRE_COMMIT, hooks.join("pre-commit")).unwrap();
            dir
        })
        .collect();
    (s, clones)
}

fn bl(s: &Server, dir: &Path, agent: &str, args: &[&str]) -> Output {
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(dir).env("BUILDLOCK_AGENT", agent).args(args);
    c.output().unwrap()
}

fn spawn(s: &Server, program: &str, dir: &Path, agent: &str, args: &[&str]) -> Child {
    let mut c = command(program, &s.root);
    c.current_dir(dir)
        .env("BUILDLOCK_AGENT", agent)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn said(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", said(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Changes `status` in `dir` and stages it.
fn stage_status(s: &Server, dir: &Path, line: &str) {
    std::fs::write(dir.join("status"), format!("{line}\n")).unwrap();
    git(&s.root, dir, &["add", "status"]);
}

fn commit(s: &Server, dir: &Path, agent: &str, msg: &str) -> Output {
    let mut c = command("git", &s.root);
    c.current_dir(dir)
        .env("BUILDLOCK_AGENT", agent)
        .args(["commit", "-q", "-m", msg]);
    c.output().unwrap()
}

fn claims_refs(s: &Server) -> Vec<String> {
    text(
        &git(
            &s.root,
            &s.bare,
            &[
                "for-each-ref",
                "--format=%(refname)",
                "refs/buildlock/claims",
            ],
        )
        .stdout,
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_claim_in_one_clone_refuses_a_conflicting_claim_and_commit_in_another() {
    let (s, c) = machines("60s", "[hook]\nwait = false\n", &["alice", "bob"]);
    let (a, b) = (&c[0], &c[1]);
    let o = bl(&s, a, "alice", &["claim", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert_eq!(claims_refs(&s), ["refs/buildlock/claims/1"]);

    // Another machine: the claim is refused, naming the holder.
    let o = bl(&s, b, "bob", &["claim", "status"]);
    assert_eq!(o.status.code(), Some(75), "{}", said(&o));
    assert!(
        text(&o.stderr).contains("`alice` holds `status`"),
        "{}",
        said(&o)
    );

    // ... and so is a commit that changes the claimed path: the guard, before any check.
    stage_status(&s, b, "bob was here");
    let head = s.head(b);
    let o = commit(&s, b, "bob", "bob's change");
    assert_ne!(o.status.code(), Some(0), "{}", said(&o));
    let err = text(&o.stderr);
    assert!(err.contains("claimed exclusively"), "{err}");
    assert!(err.contains("`alice`"), "{err}");
    assert_eq!(s.head(b), head, "nothing was committed");

    // The other machine sees the claim and its holder.
    let claims = json(&bl(&s, b, "bob", &["claims", "--json"]));
    assert_eq!(claims["claims"][0]["agent"], "alice", "{claims}");
    let agents = json(&bl(&s, b, "bob", &["agents", "--json"]));
    let listed: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["agent"].as_str())
        .collect();
    assert!(listed.contains(&"alice"), "{agents}");
    assert_eq!(agents["claims_backend"], "remote");
    assert_eq!(agents["check_slots"], "per machine");
    let text_view = bl(&s, b, "bob", &["agents"]);
    assert!(
        text(&text_view.stdout).contains("check slots are per machine"),
        "{}",
        said(&text_view)
    );

    // Nothing local stood in for the remote: bob's clone has no claim of its own on disk.
    assert!(!b.join(".git/buildlock/claimed").exists());

    // Released on the first machine: the second may commit and claim.
    let o = bl(&s, a, "alice", &["done"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let o = bl(&s, b, "bob", &["wait-for", "alice", "--timeout", "30s"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let o = commit(&s, b, "bob", "bob's change");
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let o = bl(&s, b, "bob", &["claim", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let o = bl(&s, a, "alice", &["unclaim", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let claims = json(&bl(&s, a, "alice", &["claims", "--json"]));
    assert_eq!(claims["claims"][0]["agent"], "bob", "{claims}");
    assert!(
        s.heads_and_tags().lines().count() == 1,
        "no branch or tag was added"
    );
}

#[test]
fn commit_retry_on_another_machine_waits_for_the_release_then_commits() {
    let (s, c) = machines("60s", "", &["alice", "bob"]);
    let (a, b) = (&c[0], &c[1]);
    let o = bl(&s, a, "alice", &["claim", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    stage_status(&s, b, "bob was here");
    let head = s.head(b);
    let bob = spawn(&s, COMMIT_RETRY, b, "bob", &["-q", "-m", "bob's change"]);
    // Wait for the event (bob listed as blocked on the remote), not for a time.
    let blocked = eventually(Duration::from_secs(120), || {
        let agents = json(&bl(&s, a, "alice", &["agents", "--json"]));
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["agent"] == "bob" && x["state"] == "blocked")
    });
    assert!(blocked, "bob never showed as blocked on alice's machine");
    assert_eq!(s.head(b), head, "nothing committed while claimed");
    let o = bl(&s, a, "alice", &["done"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let out = wait_output(bob, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_ne!(s.head(b), head, "bob's commit landed after the release");
}

#[test]
fn a_claim_queued_on_another_machine_is_granted_when_the_holder_is_done() {
    let (s, c) = machines("60s", "", &["alice", "bob"]);
    let (a, b) = (&c[0], &c[1]);
    let o = bl(&s, a, "alice", &["claim", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let bob = spawn(
        &s,
        BUILDLOCK,
        b,
        "bob",
        &["claim", "--wait", "120s", "status"],
    );
    let queued = eventually(Duration::from_secs(120), || {
        let claims = json(&bl(&s, a, "alice", &["claims", "--json"]));
        claims["queue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["agent"] == "bob")
    });
    assert!(queued, "bob's queued claim never reached alice's machine");
    let o = bl(&s, a, "alice", &["done"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let out = wait_output(bob, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let claims = json(&bl(&s, a, "alice", &["claims", "--json"]));
    assert_eq!(claims["claims"][0]["agent"], "bob", "{claims}");
    assert!(claims["queue"].as_array().unwrap().is_empty(), "{claims}");
}

#[test]
fn six_machines_claim_one_path_at_once_and_exactly_one_gets_it() {
    let names = ["m0", "m1", "m2", "m3", "m4", "m5"];
    let (s, c) = machines("60s", "", &names);
    let children: Vec<Child> = c
        .iter()
        .zip(names)
        .map(|(dir, n)| spawn(&s, BUILDLOCK, dir, n, &["claim", "status"]))
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| wait_output(ch, Duration::from_secs(180)))
        .collect();
    let all: String = outs.iter().map(said).collect::<Vec<_>>().join("\n---\n");
    let granted = outs.iter().filter(|o| o.status.code() == Some(0)).count();
    let refused = outs.iter().filter(|o| o.status.code() == Some(75)).count();
    assert_eq!((granted, refused), (1, 5), "{all}");
    let claims = json(&bl(&s, &c[0], "observer", &["claims", "--json"]));
    assert_eq!(claims["claims"].as_array().unwrap().len(), 1, "{claims}");
    let winner = claims["claims"][0]["agent"].as_str().unwrap().to_owned();
    let i = names.iter().position(|n| *n == winner).unwrap();
    assert_eq!(
        outs[i].status.code(),
        Some(0),
        "the listed holder is the one told so"
    );
}

#[test]
fn an_unreachable_remote_fails_the_claims_commands_and_the_guard_says_so() {
    let (s, c) = machines("2s", "", &["alice"]);
    let a = &c[0];
    // A port nobody listens on: the remote cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    git(
        &s.root,
        a,
        &[
            "remote",
            "set-url",
            "origin",
            &format!("git://127.0.0.1:{closed}/srv.git"),
        ],
    );
    for args in [
        &["claim", "status"][..],
        &["unclaim", "--all"],
        &["claims"],
        &["agents", "--json"],
        &["done"],
    ] {
        let o = bl(&s, a, "alice", args);
        assert_eq!(o.status.code(), Some(70), "{args:?}: {}", said(&o));
        let err = text(&o.stderr);
        assert!(err.contains("remote `origin`"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: nothing reported as read");
    }
    assert!(!a.join(".git/buildlock/claimed").exists(), "no local claim");
}

#[test]
fn a_commit_with_the_remote_unreachable_goes_on_but_says_it_was_not_checked() {
    let (s, c) = machines("2s", "", &["alice"]);
    let a = &c[0];
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    git(
        &s.root,
        a,
        &[
            "remote",
            "set-url",
            "origin",
            &format!("git://127.0.0.1:{closed}/srv.git"),
        ],
    );
    stage_status(&s, a, "alice was here");
    let o = commit(&s, a, "alice", "alice's change");
    let err = text(&o.stderr);
    assert!(
        err.contains("NOT checked against other agents' claims"),
        "{}",
        said(&o)
    );
    assert!(err.contains("remote `origin`"), "{}", said(&o));
}
