//! Claims, the guard, check slots and the agent registry, on real repositories with real
//! processes. Overlap and concurrency are judged by independent witnesses (directories that the
//! holders and the checks themselves create), never by buildlock's own account.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn spawn_bl(r: &TestRepo, dir: &Path, agent: &str, args: &[&str]) -> Child {
    r.cmd(BUILDLOCK, dir)
        .env("BUILDLOCK_AGENT", agent)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn claims_json(r: &TestRepo) -> serde_json::Value {
    let o = r
        .buildlock(&r.dir, "observer", &["claims", "--json"])
        .success();
    serde_json::from_slice(&o.get_output().stdout).unwrap()
}

fn agents_json(r: &TestRepo) -> serde_json::Value {
    let o = r
        .buildlock(&r.dir, "observer", &["agents", "--json"])
        .success();
    serde_json::from_slice(&o.get_output().stdout).unwrap()
}

/// A repository with the given config and a few files, committed.
fn repo(config: &str) -> TestRepo {
    let r = TestRepo::new("");
    for f in ["src/api/x.py", "src/api/y.py", "src/other.py", "docs/d.md"] {
        let p = r.dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{f}\n")).unwrap();
    }
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "files", "--no-verify"]);
    r
}

// ------------------------------------------------------------------------------------------
// claim, unclaim, lapse, queue
// ------------------------------------------------------------------------------------------

#[test]
fn exclusive_refuses_overlap_and_names_the_holder() {
    let r = repo("");
    r.buildlock(&r.dir, "a1", &["claim", "src/api/*"]).code(0);
    // Refused, naming the holder, its term and what to do.
    r.buildlock(&r.dir, "a2", &["claim", "src/api/x.py"])
        .code(75)
        .stderr(
            contains("`a1` holds `src/api/*`")
                .and(contains("until 20"))
                .and(contains("claim --wait")),
        );
    // Disjoint paths and one's own paths are fine.
    r.buildlock(&r.dir, "a2", &["claim", "docs/"]).code(0);
    r.buildlock(&r.dir, "a1", &["claim", "src/api/x.py"])
        .code(0);
    let c = claims_json(&r);
    assert_eq!(c["claims"].as_array().unwrap().len(), 3, "{c}");
    assert!(r.history_events().contains(&"conflict".to_owned()));
}

#[test]
fn shared_claims_coexist_and_keep_exclusive_claims_out() {
    let r = repo("");
    r.buildlock(&r.dir, "r1", &["claim", "--shared", "docs"])
        .code(0);
    r.buildlock(&r.dir, "r2", &["claim", "--shared", "docs/d.md"])
        .code(0);
    r.buildlock(&r.dir, "w", &["claim", "docs/*"])
        .code(75)
        .stderr(contains("`r1`").and(contains("`r2`")));
    // Once both readers are done, the writer gets it.
    r.buildlock(&r.dir, "r1", &["done"]).code(0);
    r.buildlock(&r.dir, "r2", &["unclaim", "docs/d.md"]).code(0);
    r.buildlock(&r.dir, "w", &["claim", "docs/*"]).code(0);
    // ... and now a reader is refused.
    r.buildlock(&r.dir, "r3", &["claim", "--shared", "docs/d.md"])
        .code(75);
}

#[test]
fn the_queue_goes_by_priority_then_arrival() {
    let r = repo("");
    r.buildlock(&r.dir, "holder", &["claim", "src/"]).code(0);
    let order = r.shared("order");
    let mut children = Vec::new();
    // Arrive in this order; expected service: p1, p3a, p3b, p5.
    for (i, (agent, prio)) in [("p5", "5"), ("p3a", "3"), ("p1", "1"), ("p3b", "3")]
        .into_iter()
        .enumerate()
    {
        let script = format!(
            "\"$BL\" claim --wait 60s --priority {prio} src/api/x.py && echo {agent} >> {o} && \"$BL\" done",
            o = order.display()
        );
        let child = r
            .cmd("sh", &r.dir)
            .args(["-c", &script])
            .env("BL", BUILDLOCK)
            .env("BUILDLOCK_AGENT", agent)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
        assert!(
            eventually(Duration::from_secs(20), || claims_json(&r)["queue"]
                .as_array()
                .is_some_and(|q| q.len() == i + 1)),
            "{agent} queued"
        );
    }
    let agents = agents_json(&r);
    let p5 = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "p5")
        .unwrap();
    assert_eq!(p5["state"], "blocked", "{agents}");
    assert_eq!(p5["priority"], 5);
    r.buildlock(&r.dir, "holder", &["done"]).code(0);
    for c in children {
        let out = wait_output(c, Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let served: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(served, ["p1", "p3a", "p3b", "p5"]);
}

#[test]
fn a_wait_runs_out_and_leaves_the_queue() {
    let r = repo("");
    r.buildlock(&r.dir, "h", &["claim", "src/"]).code(0);
    let start = Instant::now();
    r.buildlock(&r.dir, "w", &["claim", "--wait", "300ms", "src/x"])
        .code(75)
        .stderr(contains("left the queue"));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(claims_json(&r)["queue"].as_array().unwrap().len(), 0);
}

#[test]
fn claims_lapse_after_ttl_without_a_sign_of_life_and_at_their_term() {
    let r = repo("[claims]\nttl = \"1s\"\n");
    r.buildlock(&r.dir, "a", &["claim", "src/"]).code(0);
    r.buildlock(&r.dir, "b", &["claim", "src/x"]).code(75);
    // A sign of life of `a` (any buildlock program) renews it.
    std::thread::sleep(Duration::from_millis(600));
    r.buildlock(&r.dir, "a", &["status"]).success();
    std::thread::sleep(Duration::from_millis(600));
    // Renewed by status.
    r.buildlock(&r.dir, "b", &["claim", "src/x"]).code(75);
    std::thread::sleep(Duration::from_millis(1100));
    // Lapsed.
    r.buildlock(&r.dir, "b", &["claim", "src/x"]).code(0);
    let h = std::fs::read_to_string(r.buildlock_dir().join("history.jsonl")).unwrap();
    assert!(
        h.contains("\"event\":\"lapse\"") && h.contains("\"reason\":\"ttl\""),
        "{h}"
    );
    // --for: a fixed term, longer than the ttl, not cut by silence.
    r.buildlock(&r.dir, "c", &["claim", "--for", "2500ms", "docs/"])
        .code(0);
    std::thread::sleep(Duration::from_millis(1500));
    // Within its term.
    r.buildlock(&r.dir, "d", &["claim", "docs/d.md"]).code(75);
    std::thread::sleep(Duration::from_millis(1200));
    // After its term.
    r.buildlock(&r.dir, "d", &["claim", "docs/d.md"]).code(0);
}

#[test]
fn every_bad_input_is_refused_clearly_and_changes_nothing() {
    let r = repo("");
    r.buildlock(&r.dir, "h", &["claim", "docs/"]).code(0);
    let snapshot = || {
        (
            std::fs::read(r.buildlock_dir().join("registry.json")).unwrap(),
            std::fs::read(r.buildlock_dir().join("history.jsonl")).unwrap(),
        )
    };
    let before = snapshot();
    let outside = r.root.join("elsewhere");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["claim"], "at least one PATHSPEC"),
        (vec!["claim", "--shared"], "at least one PATHSPEC"),
        (vec!["claim", "../x"], "outside the work tree"),
        (vec!["claim", "src/../../x"], "outside the work tree"),
        (
            vec!["claim", outside.to_str().unwrap()],
            "outside the work tree",
        ),
        (vec!["claim", "/etc/passwd"], "outside the work tree"),
        (vec!["claim", ""], "empty pathspec"),
        (vec!["claim", ":!src"], "magic"),
        (vec!["claim", "--for", "5 minutes", "src/"], "bad duration"),
        (vec!["claim", "--for", "0s", "src/"], "longer than zero"),
        (vec!["claim", "--wait", "5x", "src/"], "bad duration"),
        (vec!["claim", "--priority", "0", "src/"], "1 (highest) to 5"),
        (vec!["claim", "--priority", "9", "src/"], "1 (highest) to 5"),
        (
            vec!["claim", "--priority", "high", "src/"],
            "1 (highest) to 5",
        ),
        (vec!["claim", "--priority"], "a value is required"),
        (vec!["claim", "--bogus", "src/"], "--bogus"),
        (vec!["unclaim"], "--all"),
        (vec!["unclaim", "--all", "src/"], "not both"),
        (vec!["unclaim", "../x"], "outside the work tree"),
        (vec!["wait-for"], "at least one AGENT"),
        (vec!["wait-for", "a", "--timeout", "soon"], "bad duration"),
        (vec!["done", "extra"], "unexpected argument"),
        (vec!["claims", "x"], "unexpected argument"),
    ];
    for (args, says) in cases {
        r.buildlock(&r.dir, "bad", &args)
            .code(2)
            .stderr(contains(says));
        assert_eq!(snapshot(), before, "{args:?} changed something");
    }
    // A bad BUILDLOCK_PRIORITY is a usage error too, naming the variable.
    r.cmd(BUILDLOCK, &r.dir)
        .env("BUILDLOCK_AGENT", "bad")
        .env("BUILDLOCK_PRIORITY", "0")
        .args(["claim", "src/"])
        .assert()
        .code(2)
        .stderr(contains("BUILDLOCK_PRIORITY"));
    assert_eq!(snapshot(), before);
    // A configuration error is 78.
    std::fs::write(r.dir.join(".buildlock.toml"), "[claims]\nttl = \"ten\"\n").unwrap();
    r.buildlock(&r.dir, "bad", &["claim", "src/"])
        .code(78)
        .stderr(contains("claims.ttl"));
    assert_eq!(snapshot(), before);
}

#[test]
fn wait_for_returns_when_the_agent_is_done_or_times_out() {
    let r = repo("");
    r.buildlock(&r.dir, "worker", &["claim", "src/"]).code(0);
    r.buildlock(
        &r.dir,
        "boss",
        &["wait-for", "worker", "--timeout", "300ms"],
    )
    .code(75)
    .stderr(contains("`worker`"));
    let waiter = spawn_bl(
        &r,
        &r.dir,
        "boss",
        &["wait-for", "worker", "--timeout", "60s"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let done_at = Instant::now();
    r.buildlock(&r.dir, "worker", &["done"]).code(0);
    let out = wait_output(waiter, Duration::from_secs(60));
    let took = done_at.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    eprintln!("wait-for woke {took:?} after done");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let a = agents_json(&r);
    let w = a["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == "worker")
        .unwrap();
    assert_eq!(w["state"], "done");
}

#[test]
fn an_agent_that_only_commits_is_listed_until_its_ttl() {
    let r = repo("check = \"true\"\n[claims]\nttl = \"2s\"\n");
    let wt = r.worktree("feature-a");
    r.stage_change(&wt, "a.txt");
    let mut c = r.cmd("git", &wt);
    c.args(["commit", "-q", "-m", "a"])
        .env("BUILDLOCK_AGENT", "ana");
    run_ok(c);
    // A commit with coordination off is no sign of life of an agent.
    r.stage_change(&wt, "b.txt");
    let mut c = r.cmd("git", &wt);
    c.args(["commit", "-q", "-m", "b"])
        .env("BUILDLOCK_AGENT", "bypasser")
        .env("BUILDLOCK", "0");
    run_ok(c);

    let a = agents_json(&r);
    let listed: Vec<&serde_json::Value> = a["agents"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{a:#}");
    let ana = listed[0];
    assert_eq!(ana["agent"], "ana");
    assert_eq!(ana["state"], "idle");
    assert_eq!(ana["branch"], "feature-a");
    assert_eq!(
        std::fs::canonicalize(ana["worktree"].as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&wt).unwrap()
    );
    let table = stdout_of(&r.buildlock(&r.dir, "observer", &["agents"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ana ") && l.contains("feature-a")),
        "{table}"
    );
    // No sign of life for the ttl: no longer listed.
    std::thread::sleep(Duration::from_millis(2300));
    let a = agents_json(&r);
    assert!(a["agents"].as_array().unwrap().is_empty(), "{a:#}");
}

// ------------------------------------------------------------------------------------------
// The race: 16 agents, overlapping globs, many rounds, an independent witness
// ------------------------------------------------------------------------------------------

/// Concrete paths and which of them each spec covers (by hand, independent of buildlock).
const PATHS: [&str; 4] = ["src_a_x.py", "src_a_y.py", "src_b_x.py", "docs_r.md"];
const SPECS: [(&str, &[usize]); 8] = [
    ("src/*", &[0, 1, 2]),
    ("src/a/*", &[0, 1]),
    ("src/a/x.py", &[0]),
    ("*.py", &[0, 1, 2]),
    ("docs/", &[3]),
    ("src/b/", &[2]),
    ("**", &[0, 1, 2, 3]),
    ("src/*/y.py", &[1]),
];

#[test]
fn sixteen_agents_claim_overlapping_globs_and_never_overlap() {
    const AGENTS: usize = 16;
    let rounds: usize = std::env::var("BUILDLOCK_CLAIM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let r = repo("");
    for f in ["src/a/x.py", "src/a/y.py", "src/b/x.py"] {
        let p = r.dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x\n").unwrap();
    }
    let w_path = r.shared("witness");
    std::fs::create_dir_all(&w_path).unwrap();
    let w = w_path.display().to_string();
    let go = r.shared("go");
    let mut children = Vec::new();
    for i in 0..AGENTS {
        let (spec, covered) = SPECS[i % SPECS.len()];
        // Every fourth agent reads (shared); the rest write (exclusive).
        let shared = i % 4 == 3;
        let mut hold = String::new();
        let mut free = String::new();
        for &p in covered {
            let name = PATHS[p];
            if shared {
                // A reader leaves a mark, then checks no writer is in.
                hold.push_str(&format!(
                    "touch {w}/{name}.r.$A; [ -d {w}/{name}.x ] && echo \"$A overlaps a writer on {name}\" >> {w}/errors; "
                ));
                free.push_str(&format!("rm -f {w}/{name}.r.$A; "));
            } else {
                // A writer takes the path's dir (a failing mkdir is two writers), then checks no
                // reader is in.
                hold.push_str(&format!(
                    "mkdir {w}/{name}.x 2>/dev/null || echo \"$A overlaps a writer on {name}\" >> {w}/errors; \
                     ls {w} | grep -q '^{name}\\.r\\.' && echo \"$A overlaps a reader on {name}\" >> {w}/errors; "
                ));
                free.push_str(&format!("rmdir {w}/{name}.x; "));
            }
        }
        let script = format!(
            "while [ ! -e {go} ]; do sleep 0.005; done\n\
             n=0; while [ $n -lt {rounds} ]; do\n\
               if \"$BL\" claim --wait 120s {flag} '{spec}' 2>>{w}/log.$A; then\n\
                 {hold}\n sleep 0.02\n {free}\n\
                 \"$BL\" unclaim '{spec}' 2>>{w}/log.$A || echo \"$A unclaim failed\" >> {w}/errors\n\
                 echo $A >> {w}/rounds\n\
               else echo \"$A claim failed\" >> {w}/errors; fi\n\
               n=$((n+1))\n\
             done",
            go = go.display(),
            flag = if shared { "--shared" } else { "" },
        );
        children.push(
            r.cmd("sh", &r.dir)
                .args(["-c", &script])
                .env("BL", BUILDLOCK)
                .env("A", format!("agent-{i}"))
                .env("BUILDLOCK_AGENT", format!("agent-{i}"))
                .env("BUILDLOCK_PRIORITY", format!("{}", 1 + i % 5))
                .spawn()
                .unwrap(),
        );
    }
    std::fs::write(&go, "").unwrap();
    for c in children {
        let out = wait_output(c, Duration::from_secs(300));
        assert!(out.status.success());
    }
    let errors = std::fs::read_to_string(w_path.join("errors")).unwrap_or_default();
    assert_eq!(errors, "", "overlaps or failures seen by the witness");
    let done = std::fs::read_to_string(w_path.join("rounds")).unwrap_or_default();
    assert_eq!(done.lines().count(), AGENTS * rounds);
    let c = claims_json(&r);
    assert_eq!(c["claims"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(c["queue"].as_array().unwrap().len(), 0, "{c}");
    assert!(
        !r.buildlock_dir().join("claimed").exists(),
        "the marker goes with the last claim"
    );
}

// ------------------------------------------------------------------------------------------
// The guard
// ------------------------------------------------------------------------------------------

/// A repository whose check leaves a witness file when it runs; the hook does not wait.
fn guarded() -> (TestRepo, PathBuf) {
    let r = repo("");
    let ran = r.shared("check-ran");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"touch {}\"\n[hook]\nwait = false\n",
            ran.display()
        ),
    )
    .unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    (r, ran)
}

fn guarded_commit(r: &TestRepo, agent: &str, args: &[&str]) -> Output {
    r.cmd("git", &r.dir)
        .env("BUILDLOCK_AGENT", agent)
        .arg("commit")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_guard_refuses_every_form_of_commit_that_touches_a_claim() {
    let (r, ran) = guarded();
    r.buildlock(&r.dir, "holder", &["claim", "src/api/*"])
        .code(0);
    let refused = |what: &str, out: &Output| {
        let err = text(&out.stderr);
        assert_eq!(
            code(out),
            Some(1),
            "{what}: git exits 1 when the hook refuses: {err}"
        );
        assert!(err.contains("claimed exclusively"), "{what}: {err}");
        assert!(err.contains("`holder`"), "{what}: names the holder: {err}");
        assert!(err.contains("until 20"), "{what}: says until when: {err}");
        assert!(
            err.contains("commit-retry"),
            "{what}: says what to do: {err}"
        );
        assert!(!ran.exists(), "{what}: the check must not run");
    };
    let reset = || {
        r.git(&["reset", "-q", "--hard"]);
        let _ = std::fs::remove_file(&ran);
    };
    // Plain commit of a staged change.
    std::fs::write(r.dir.join("src/api/x.py"), "changed\n").unwrap();
    r.git(&["add", "src/api/x.py"]);
    let o = guarded_commit(&r, "b", &["-m", "plain"]);
    refused("plain commit", &o);
    assert!(text(&o.stderr).contains("src/api/x.py"));
    reset();
    // commit -a: the change is not staged; git hands the hook index.lock.
    std::fs::write(r.dir.join("src/api/x.py"), "changed\n").unwrap();
    refused("commit -a", &guarded_commit(&r, "b", &["-a", "-m", "all"]));
    reset();
    // commit -- path: only that path is committed (next-index-<pid>.lock).
    std::fs::write(r.dir.join("src/api/x.py"), "changed\n").unwrap();
    std::fs::write(r.dir.join("src/other.py"), "changed\n").unwrap();
    refused(
        "commit -- path",
        &guarded_commit(&r, "b", &["-m", "only", "--", "src/api/x.py"]),
    );
    // ... and the same work tree committing only the unclaimed path passes, although a claimed
    // change is staged in the default index.
    r.git(&["add", "src/api/x.py"]);
    let o = guarded_commit(&r, "b", &["-m", "only other", "--", "src/other.py"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o.stderr));
    assert!(ran.exists(), "the check ran");
    reset();
    // A rename out of the claim counts its old path; into the claim, its new one.
    r.git(&["mv", "src/api/x.py", "src/moved.py"]);
    refused("rename out", &guarded_commit(&r, "b", &["-m", "mv out"]));
    reset();
    r.git(&["mv", "src/other.py", "src/api/other.py"]);
    refused("rename in", &guarded_commit(&r, "b", &["-m", "mv in"]));
    reset();
    // A deletion.
    r.git(&["rm", "-q", "src/api/y.py"]);
    refused("deletion", &guarded_commit(&r, "b", &["-m", "rm"]));
    reset();
    // The holder itself commits to its claim; others commit elsewhere.
    std::fs::write(r.dir.join("src/api/x.py"), "mine\n").unwrap();
    r.git(&["add", "-A"]);
    let o = guarded_commit(&r, "holder", &["-m", "own"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o.stderr));
    std::fs::write(r.dir.join("docs/d.md"), "free\n").unwrap();
    r.git(&["add", "-A"]);
    let o = guarded_commit(&r, "b", &["-m", "elsewhere"]);
    assert_eq!(code(&o), Some(0), "{}", text(&o.stderr));
    // A shared claim does not stop a commit.
    r.buildlock(&r.dir, "reader", &["claim", "--shared", "docs/"])
        .code(0);
    std::fs::write(r.dir.join("docs/d.md"), "again\n").unwrap();
    r.git(&["add", "-A"]);
    assert_eq!(
        code(&guarded_commit(&r, "b", &["-m", "under a read claim"])),
        Some(0)
    );
    // claims.guard = false turns it off.
    let cfg = std::fs::read_to_string(r.dir.join(".buildlock.toml")).unwrap();
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("{cfg}[claims]\nguard = false\n"),
    )
    .unwrap();
    std::fs::write(r.dir.join("src/api/x.py"), "unguarded\n").unwrap();
    r.git(&["add", "-A"]);
    assert_eq!(
        code(&guarded_commit(&r, "b", &["-m", "guard off"])),
        Some(0)
    );
}

#[test]
fn a_plain_commit_waits_for_the_release_when_hook_wait_is_on() {
    let r = repo("check = \"true\"\n");
    r.buildlock(&r.dir, "holder", &["claim", "src/api/"])
        .code(0);
    std::fs::write(r.dir.join("src/api/x.py"), "changed\n").unwrap();
    r.git(&["add", "-A"]);
    let child = r
        .cmd("git", &r.dir)
        .env("BUILDLOCK_AGENT", "b")
        .args(["commit", "-m", "waits"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        agents_json(&r)["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent"] == "b" && a["state"] == "blocked")
    }));
    r.buildlock(&r.dir, "holder", &["unclaim", "src/api/"])
        .code(0);
    let out = wait_output(child, Duration::from_secs(30));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(r.last_subject(&r.dir), "waits");
    // The hook waits on its own: it names the holder and how to bypass, and tells nobody to do
    // anything next (commit-retry, leaving paths out) while it waits.
    assert!(
        !err.lines().any(|l| l.starts_with("buildlock: next:")),
        "{err}"
    );
    assert!(err.contains("`holder`") && err.contains("bypass"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Check slots
// ------------------------------------------------------------------------------------------

/// A check that proves how many checks run at once: it must find a free witness dir among
/// `slots` of them (a failing mkdir everywhere means more checks than slots are running).
fn slot_check(r: &TestRepo, slots: usize, hold: &str) -> String {
    let w = r.shared("slots");
    std::fs::create_dir_all(&w).unwrap();
    let dirs: Vec<String> = (0..slots)
        .map(|i| format!("{}/s{i}", w.display()))
        .collect();
    format!(
        "got=; for d in {dirs}; do if mkdir $d 2>/dev/null; then got=$d; break; fi; done; \
         if [ -z \\\"$got\\\" ]; then echo over >> {w}/errors; else echo x >> {w}/ran; sleep {hold}; rmdir $got; fi",
        dirs = dirs.join(" "),
        w = w.display(),
    )
}

#[test]
fn sixteen_hooks_never_run_more_checks_than_slots() {
    const AGENTS: usize = 16;
    const SLOTS: usize = 3;
    let r = repo("");
    let check = slot_check(&r, SLOTS, "0.1");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("check = \"{check}\"\ncheck_slots = {SLOTS}\n"),
    )
    .unwrap();
    let children: Vec<Child> = (0..AGENTS)
        .map(|i| {
            r.cmd(PRE_COMMIT, &r.dir)
                .env("BUILDLOCK_AGENT", format!("agent-{i}"))
                .env("BUILDLOCK_PRIORITY", format!("{}", 1 + i % 5))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = wait_output(c, Duration::from_secs(120));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let w = r.shared("slots");
    assert_eq!(
        std::fs::read_to_string(w.join("errors")).unwrap_or_default(),
        ""
    );
    assert_eq!(
        std::fs::read_to_string(w.join("ran"))
            .unwrap()
            .lines()
            .count(),
        AGENTS
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.buildlock_dir().join("registry.json")).unwrap())
            .unwrap();
    assert_eq!(reg["slots"].as_array().unwrap().len(), 0, "{reg}");
    assert_eq!(reg["slot_queue"].as_array().unwrap().len(), 0, "{reg}");
}

#[test]
fn a_killed_agent_frees_its_slot_at_once_and_its_claim_after_the_ttl() {
    let r = repo("");
    let started = r.shared("started");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"echo $$ > {s}.$BUILDLOCK_AGENT; sleep 30\"\ncheck_slots = 1\n[claims]\nttl = \"2s\"\n",
            s = started.display()
        ),
    )
    .unwrap();
    // The check sees BUILDLOCK_AGENT through the environment the hook inherits.
    r.buildlock(&r.dir, "victim", &["claim", "src/"]).code(0);
    let victim = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "victim")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let victim_started = PathBuf::from(format!("{}.victim", started.display()));
    assert!(eventually(Duration::from_secs(20), || victim_started.exists()));
    let waiter = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "next")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let next_started = PathBuf::from(format!("{}.next", started.display()));
    assert!(eventually(Duration::from_secs(20), || {
        agents_json(&r)["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent"] == "next" && a["state"] == "queued")
    }));
    assert!(!next_started.exists(), "one slot: the second check waits");
    let killed_at = Instant::now();
    signal(&victim, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(20), || next_started.exists()));
    eprintln!(
        "the queued check started {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    // The killed agent's claim is still there until the ttl passes without a sign of life.
    r.buildlock(&r.dir, "other", &["claim", "src/x"]).code(75);
    assert!(eventually(Duration::from_secs(20), || {
        r.buildlock(&r.dir, "other", &["claim", "src/x"])
            .get_output()
            .status
            .success()
    }));
    signal(&waiter, libc::SIGTERM);
    let _ = wait_output(waiter, Duration::from_secs(30));
    let mut victim = victim;
    let _ = victim.wait();
    // The victim's check (`sleep 30`) was in its own process group, which outlived the hook:
    // stop that group, by the pid it wrote.
    if let Ok(pid) = std::fs::read_to_string(&victim_started)
        .unwrap_or_default()
        .trim()
        .parse::<i32>()
    {
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

// ------------------------------------------------------------------------------------------
// Claims, slots and the guard together, end to end
// ------------------------------------------------------------------------------------------

#[test]
fn three_agents_a_refusal_a_wait_and_a_landing() {
    let r = TestRepo::new("");
    let ran = r.shared("ran");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"echo $BUILDLOCK_AGENT >> {}\"\n[hook]\nwait = false\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(r.dir.join("src/api")).unwrap();
    std::fs::write(r.dir.join("src/api/x.py"), "x\n").unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "api", "--no-verify"]);
    let (a, b, c) = (r.worktree("a"), r.worktree("b"), r.worktree("c"));
    r.buildlock(&a, "agent-a", &["claim", "src/api/*"]).code(0);
    r.buildlock(&c, "agent-c", &["claim", "--shared", "docs/"])
        .code(0);
    // b's commit touching src/api/x.py is refused before its check runs, naming the holder.
    std::fs::write(b.join("src/api/x.py"), "b's change\n").unwrap();
    r.git_in(&b, &["add", "-A"]);
    let o = r
        .cmd("git", &b)
        .env("BUILDLOCK_AGENT", "agent-b")
        .args(["commit", "-m", "b"])
        .output()
        .unwrap();
    assert_ne!(code(&o), Some(0));
    assert!(text(&o.stderr).contains("`agent-a`"), "{}", text(&o.stderr));
    assert!(
        !std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .contains("agent-b"),
        "no check ran"
    );
    // b's commit-retry waits, and lands right after a's `buildlock done`.
    let retry = r
        .cmd(COMMIT_RETRY, &b)
        .env("BUILDLOCK_AGENT", "agent-b")
        .args(["-m", "b lands"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || {
        agents_json(&r)["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["agent"] == "agent-b" && x["state"] == "blocked")
    }));
    // `buildlock agents` shows who is doing what.
    let table = stdout_of(&r.buildlock(&c, "agent-c", &["agents"]));
    for want in [
        "agent-a",
        "agent-b",
        "agent-c",
        "blocked",
        "src/api/*",
        "docs/ (shared)",
    ] {
        assert!(table.contains(want), "{want} in:\n{table}");
    }
    let done_at = Instant::now();
    r.buildlock(&a, "agent-a", &["done"]).code(0);
    let out = wait_output(retry, Duration::from_secs(60));
    let took = done_at.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    eprintln!("commit-retry landed {took:?} after `buildlock done`");
    assert!(took < Duration::from_secs(3), "landed {took:?} after done");
    assert_eq!(r.last_subject(&b), "b lands");
    let log = stdout_of(&r.buildlock(&a, "agent-a", &["log", "-n", "50"]));
    for want in ["claim", "conflict", "done"] {
        assert!(log.contains(want), "{want} in the log:\n{log}");
    }
}

#[test]
fn eight_agents_commit_through_two_check_slots() {
    const AGENTS: usize = 8;
    let r = TestRepo::new("");
    let check = slot_check(&r, 2, "0.2");
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!("check = \"{check}\"\ncheck_slots = 2\n"),
    )
    .unwrap();
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "slots", "--no-verify"]);
    let dirs: Vec<PathBuf> = (0..AGENTS).map(|i| r.worktree(&format!("w{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        r.stage_change(d, &format!("f{i}"));
    }
    let children: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            r.cmd(COMMIT_RETRY, d)
                .env("BUILDLOCK_AGENT", format!("agent-{i}"))
                .args(["-m", &format!("commit {i}")])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // While they run, `buildlock agents` shows checks running and queued.
    let mut states = std::collections::BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for a in agents_json(&r)["agents"].as_array().unwrap() {
            states.insert(a["state"].as_str().unwrap().to_owned());
        }
        if states.contains("checking") && states.contains("queued") {
            break;
        }
    }
    for c in children {
        let out = wait_output(c, Duration::from_secs(120));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let w = r.shared("slots");
    assert_eq!(
        std::fs::read_to_string(w.join("errors")).unwrap_or_default(),
        ""
    );
    assert_eq!(
        std::fs::read_to_string(w.join("ran"))
            .unwrap()
            .lines()
            .count(),
        AGENTS
    );
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(r.last_subject(d), format!("commit {i}"));
    }
    assert!(states.contains("checking"), "{states:?}");
    assert!(states.contains("queued"), "{states:?}");
}

#[test]
fn the_demo_scene_plays() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(BUILDLOCK).parent().unwrap().to_owned();
    buildlock_core::flows::demo::claims::scene(&tmp.path().canonicalize().unwrap(), &bin).unwrap();
}

#[test]
fn a_claim_on_an_existing_name_with_glob_characters_is_that_file_not_its_neighbours() {
    let r = repo("check = \"true\"\n[hook]\nwait = false\n");
    for f in ["a[1].txt", "a1.txt"] {
        std::fs::write(r.dir.join(f), "x\n").unwrap();
    }
    r.git(&["add", "-A"]);
    r.git(&["commit", "-q", "-m", "two files", "--no-verify"]);
    r.buildlock(&r.dir, "a1", &["claim", "a[1].txt"]).code(0);
    // Its neighbour, which `a[1].txt` would match as a glob, is free.
    r.buildlock(&r.dir, "a2", &["claim", "a1.txt"]).code(0);
    // The file itself is taken, by a claim and by the guard.
    r.buildlock(&r.dir, "a2", &["claim", "a[1].txt"])
        .code(75)
        .stderr(contains("a1"));
    std::fs::write(r.dir.join("a[1].txt"), "changed\n").unwrap();
    r.git(&["add", "a[1].txt"]);
    r.hook(&r.dir, "a2").code(75);
}

#[test]
fn claims_lists_under_a_header() {
    let r = repo("");
    r.buildlock(&r.dir, "a1", &["claim", "src/api/"]).code(0);
    let out = stdout_of(&r.buildlock(&r.dir, "observer", &["claims"]).code(0));
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("AGENT") && header.contains("MODE") && header.contains("PATHS"),
        "{out}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("a1 ") && l.contains("src/api/")),
        "{out}"
    );
}
