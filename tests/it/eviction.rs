//! Abandoned breakages leave the record, so that what a step costs does not grow with them; what
//! a live agent still acts on stays: a key with a waiter, a key whose fixer process holds its
//! lock (running or stopped). And one agent's roles stay within `MAX_ROLES` per base, its oldest
//! given up.

use crate::harness::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A `match = "signature"` repository whose check fails with `error: broken $BREAK` until the
/// shared file `fixed-$BREAK` exists; its fix (with the witness) waits for the shared file `go`,
/// then makes that file.
fn signature_repo(coordination: &str) -> TestRepo {
    let r = TestRepo::new("");
    let root = r.root.display().to_string();
    let fix = witness_fix(
        &r.root,
        "0",
        &format!("while [ ! -f {root}/go ]; do sleep 0.05; done; : > {root}/fixed-$BREAK"),
    );
    r.configure(&format!(
        "check = 'if [ -n \"$BREAK\" ] && [ ! -f {root}/fixed-$BREAK ]; then echo \"error: broken \
         $BREAK\"; exit 1; fi'\n\
         [coordination]\nmatch = \"signature\"\n{coordination}\n\
         [hook]\nwait = true\n[fix]\ncommand = \"sh {fix}\"\n",
        fix = fix.display()
    ));
    r
}

/// A word of letters for `i` (the signature keeps letters; digits may be normalised away).
fn word(i: usize) -> String {
    let (mut i, mut w) = (i + 1, String::new());
    while i > 0 {
        i -= 1;
        w.insert(0, (b'a' + (i % 26) as u8) as char);
        i /= 26;
    }
    format!("crowd{w}")
}

/// The hook by hand, failing with `what`: `agent` is elected fixer of that breakage's key.
fn fail_by_hand(r: &TestRepo, dir: &Path, agent: &str, what: &str) {
    let out = r
        .cmd(PRE_COMMIT, dir)
        .env("BUILDLOCK_AGENT", agent)
        .env("BREAK", what)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// SIGSTOPs `pid` at a moment it does not hold the election lock (a stopped holder would block
/// every agent: that is another test's matter).
fn stop_outside_the_election(r: &TestRepo, pid: u32) {
    use std::os::unix::fs::MetadataExt;
    let lock = r.buildlock_dir().join("locks/election.lock");
    let ino = std::fs::metadata(&lock).unwrap().ino();
    for _ in 0..100 {
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        assert!(eventually(Duration::from_secs(10), || proc_state(pid) == Some('T')));
        let held = std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(4) == Some(&pid.to_string().as_str())
                    && f.get(5)
                        .and_then(|d| d.rsplit(':').next()?.parse::<u64>().ok())
                        == Some(ino)
            });
        if !held {
            return;
        }
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{pid} always held the election lock");
}

/// The state file of the `repo` base: its keys as stored.
fn stored_keys(r: &TestRepo) -> Vec<serde_json::Value> {
    let path = r.buildlock_dir().join("state/repo.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["keys"].as_array().unwrap().clone()
}

fn key_fixed_by(r: &TestRepo, agent: &str) -> Option<(String, u64)> {
    stored_keys(r).into_iter().find_map(|k| {
        if k["status"] != "fixing" || k["fixer"]["agent"] != agent {
            return None;
        }
        Some((k["key"].as_str()?.to_owned(), k["generation"].as_u64()?))
    })
}

fn history(r: &TestRepo) -> Vec<serde_json::Value> {
    lines(&r.buildlock_dir().join("history.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A crowd of agents leaves breakages that their fixers abandon (by hand, then silent and past
/// `max_fix_time`), while the eviction they set off races two live ones on the same base: a
/// waiter waiting on a key whose fixer is past `max_fix_time` (the bound wakes no waiter: it
/// waits out its `wait`), and a fixer whose commit-retry is SIGSTOPped mid-fix (its lease goes
/// silent, but its process holds the fixer lock). The waiter waits its whole `wait` for that
/// fixer (the key stayed on record), the stopped fixer keeps its role, resumes and marks its key
/// fixed, one fix run in all; and the base file keeps few of the crowd's keys.
#[test]
fn abandoned_breakages_are_evicted_and_keys_live_agents_act_on_stay() {
    let r = signature_repo("stale_after = \"3s\"\nmax_fix_time = \"2s\"\nwait = \"15s\"");
    let (tw, tf) = (r.worktree("tw"), r.worktree("tf"));
    r.stage_change(&tw, "fw");
    r.stage_change(&tf, "ff");

    // The stopped fixer: commit-retry elected for `held`, its fix waiting for `go`.
    let mut f = r.commit_retry_cmd(&tf, "stopped");
    f.env("BREAK", "held").stderr(Stdio::null());
    let f = KillOnDrop(Some(f.spawn().unwrap()));
    assert!(
        eventually(Duration::from_secs(60), || starts(&witness_log(&r.root))
            .len()
            == 1),
        "the fix started: {:?}",
        witness_log(&r.root)
    );
    assert!(eventually(Duration::from_secs(60), || r
        .history_events()
        .iter()
        .any(|e| e == "fix_started")));
    let (held, held_generation) = key_fixed_by(&r, "stopped").expect("the fixer is on record");
    stop_outside_the_election(&r, f.id());

    // A fixer by hand that keeps its lease (as its session would) past `max_fix_time`, and a
    // waiter on its key.
    fail_by_hand(&r, &r.dir, "gone", "kept");
    let (kept, kept_generation) = key_fixed_by(&r, "gone").unwrap();
    let renewing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lease = {
        let (renewing, path) = (
            renewing.clone(),
            r.buildlock_dir().join("leases/gone.agent"),
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::thread::spawn(move || {
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                let lease = serde_json::json!({"agent": "gone", "generation": kept_generation,
                                               "heartbeat": now as u64});
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, lease.to_string()).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut w = r.git_commit(&tw, "waiter", "waiter work");
    w.env("BREAK", "kept");
    let w = w.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || stored_keys(&r).iter().any(
            |k| k["key"] == kept.as_str() && k["waiters"][0]["agent"] == "waiter"
        )),
        "the waiter is on record"
    );

    // The crowd, four at a time, then again once its first fixers went silent.
    let crowd = |from: usize, to: usize| {
        for batch in (from..to).collect::<Vec<_>>().chunks(4) {
            let runs: Vec<_> = batch
                .iter()
                .map(|&i| {
                    r.cmd(PRE_COMMIT, &r.dir)
                        .env("BUILDLOCK_AGENT", format!("c{i}"))
                        .env("BREAK", word(i))
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut run in runs {
                assert_eq!(run.wait().unwrap().code(), Some(1));
            }
        }
    };
    crowd(0, 90);
    // Every fixer of the crowd silent, and every one past `max_fix_time`.
    std::thread::sleep(Duration::from_secs(4));
    crowd(90, 110);

    let keys = stored_keys(&r);
    let open = keys.iter().filter(|k| k["status"] == "fixing").count();
    assert!(open <= 64 + 24, "abandoned keys were evicted: {open} open");
    assert!(
        keys.iter().any(|k| k["key"] == held.as_str()
            && k["status"] == "fixing"
            && k["generation"] == held_generation
            && k["fixer"]["agent"] == "stopped"),
        "the stopped fixer's key stays, its role with it"
    );

    // The waiter waited its whole `wait` for the fixer on record (had the key gone, it would
    // have read it as fixed, run its check again and been elected).
    let out = wait_output(w, Duration::from_secs(120));
    renewing.store(false, std::sync::atomic::Ordering::SeqCst);
    lease.join().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "git: the hook refused, {err}");
    assert!(err.contains("`gone` is still fixing"), "{err}");
    assert!(
        !history(&r).iter().any(|e| e["key"] == kept.as_str()
            && e["agent"] == "waiter"
            && e["event"] == "elected"),
        "{:?}",
        r.history_events()
    );

    // The stopped fixer resumes, and its fix lands: one run, never two at once.
    unsafe { libc::kill(f.id() as libc::pid_t, libc::SIGCONT) };
    std::fs::write(r.shared("go"), "").unwrap();
    let mut f = f;
    let out = wait_output(f.0.take().unwrap(), Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0));
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert_eq!(starts(&log).len(), 1, "{log:?}");
    assert!(
        history(&r)
            .iter()
            .any(|e| e["event"] == "fixed" && e["key"] == held.as_str() && e["agent"] == "stopped"),
        "{:?}",
        r.history_events()
    );
}

/// One agent that broke many things at once (a new signature each time) holds at most
/// `MAX_ROLES` (16) roles in a base: the oldest are given up (broken, released for too many
/// roles), so its runs cost what 16 roles cost, and leases/ holds one file for it.
#[test]
fn one_agent_holds_at_most_sixteen_roles_and_one_lease() {
    let r = signature_repo("");
    for i in 0..24 {
        fail_by_hand(&r, &r.dir, "busy", &word(i));
    }
    let keys = stored_keys(&r);
    let held = keys
        .iter()
        .filter(|k| k["status"] == "fixing" && k["fixer"]["agent"] == "busy")
        .count();
    assert_eq!(held, 16, "{keys:?}");
    let released: Vec<_> = history(&r)
        .into_iter()
        .filter(|e| e["event"] == "released")
        .collect();
    assert_eq!(released.len(), 8);
    assert!(released.iter().all(|e| e["reason"] == "too_many_roles"));
    // A role given up is broken: nobody fixes it until the next agent that hits it.
    let given_up = released[0]["key"].as_str().unwrap().to_owned();
    let that = keys.iter().find(|k| k["key"] == given_up.as_str());
    assert_eq!(that.map(|k| k["status"].clone()), Some("broken".into()));
    // Its re-check renews all its roles with one lease (and, passing, fixes them).
    let out = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "busy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let leases = std::fs::read_dir(r.buildlock_dir().join("leases"))
        .unwrap()
        .count();
    assert_eq!(leases, 1);
}
