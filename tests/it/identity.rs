//! Process identity: a pid recorded in state means something only on the same host, in the same
//! boot and the same pid namespace ("pid space"), and only for the process that started at the
//! recorded time. Two containers with `--network host` share the host name but not their pids:
//! one must never declare the other's processes dead. What cannot be identified is judged by
//! its lease.

use crate::harness::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// This process's pid space as buildlock records it: the boot id and the pid namespace's inode.
fn our_pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns = ns.to_string_lossy();
    let inode = ns
        .strip_prefix("pid:[")
        .and_then(|s| s.strip_suffix(']'))
        .unwrap();
    format!("{}/{inode}", boot.trim())
}

/// A pid that names no process here: a child's, reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// `x` is elected by hand (the hook, `hook.wait = false`, a long lease); then its state record
/// is given an `elector` (the process elected to register, as commit-retry with a `fix.command`
/// is) as `elector` says: the host name of this machine and a pid that does not exist here.
fn fixer_with_elector(elector: serde_json::Value) -> TestRepo {
    let r = TestRepo::new(
        "check = \"false\"\n[coordination]\nstale_after = \"10m\"\n[hook]\nwait = false\n",
    );
    r.hook(&r.dir, "x").code(1);
    let path = r.buildlock_dir().join("state/repo.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let fixer = &mut file["keys"][0]["fixer"];
    assert_eq!(fixer["agent"], "x");
    assert_eq!(fixer["registered"], false);
    fixer["elector"] = elector;
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    r
}

/// Same host name, another container (another boot id and pid namespace): its elector's pid
/// means nothing here, so it is not declared dead; its fresh lease keeps it the fixer.
// regression: the hook took the other container's just-elected fixer for dead and took over
#[test]
fn an_elector_in_another_pid_space_is_not_judged_dead() {
    let r = fixer_with_elector(serde_json::json!({
        "pid": dead_pid(), "host": hostname(), "start": 12345,
        "pid_space": "00000000-0000-0000-0000-000000000000/4026531836",
    }));
    let run = r.hook(&r.dir, "b").code(75);
    let err = text(&run.get_output().stderr);
    assert!(err.contains("`x` is already fixing"), "{err}");
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "x");
    assert_eq!(r.count_events("takeover"), 0, "{:?}", r.history_events());
}

/// A record written by an older version has no pid space: it cannot be identified either, and
/// is judged by its lease.
#[test]
fn an_elector_recorded_without_a_pid_space_is_judged_by_its_lease() {
    let r = fixer_with_elector(serde_json::json!({
        "pid": dead_pid(), "host": hostname(), "start": 12345, "token": null,
    }));
    r.hook(&r.dir, "b").code(75);
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "x");
    assert_eq!(r.count_events("takeover"), 0, "{:?}", r.history_events());
}

/// The same pid space and a pid that is gone: the elector died before it could register, and
/// the next failure takes over at once, long before the lease runs out.
#[test]
fn an_elector_in_this_pid_space_that_died_is_replaced_at_once() {
    let r = fixer_with_elector(serde_json::json!({
        "pid": dead_pid(), "host": hostname(), "start": 12345,
        "pid_space": our_pid_space(),
    }));
    r.hook(&r.dir, "b").code(1);
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "b");
    assert_eq!(r.count_events("takeover"), 1, "{:?}", r.history_events());
}

/// The same pid space and the pid alive, but started at another time: a reused pid, not the
/// elector, which is dead.
#[test]
fn an_elector_whose_pid_was_reused_is_replaced_at_once() {
    let other = KillOnDrop(Some(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    ));
    let start = start_time(other.id()).unwrap();
    let r = fixer_with_elector(serde_json::json!({
        "pid": other.id(), "host": hostname(), "start": start + 1,
        "pid_space": our_pid_space(),
    }));
    r.hook(&r.dir, "b").code(1);
    drop(other);
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "b");
}

/// A waiter's pid is recorded with its start time: a waiter that died and whose pid now names an
/// unrelated process is not taken for a live waiter. When the fixer goes silent, the live
/// waiter behind it takes over at once instead of waiting (its whole `wait`) for that process.
// regression: the waiters waited for whatever process had reused the first waiter's pid
#[test]
fn a_waiter_whose_pid_was_reused_does_not_delay_a_takeover() {
    let r = TestRepo::new(
        "check = \"false\"\n[coordination]\nstale_after = \"5s\"\nwait = \"40s\"\n\
         [hook]\nwait = false\n",
    );
    r.hook(&r.dir, "x").code(1);
    // The unrelated process that now has the dead waiter's pid.
    let other = KillOnDrop(Some(
        std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .unwrap(),
    ));
    let start = start_time(other.id()).unwrap();
    let path = r.buildlock_dir().join("state/repo.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["keys"][0]["waiters"] = serde_json::json!([{
        "agent": "ghost", "pid": other.id(), "host": hostname(),
        "start": start + 1, "pid_space": our_pid_space(),
    }]);
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let began = Instant::now();
    let b = r
        .cmd(COMMIT_RETRY, &r.dir)
        .args(["--allow-empty", "-q", "-m", "b work"])
        .env("BUILDLOCK_AGENT", "b")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(b, Duration::from_secs(120));
    let took = began.elapsed();
    drop(other);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "after {took:?}: {err}");
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "b");
    // The lease (5 s), then a takeover at once; not the 40 s wait for the ghost.
    assert!(took < Duration::from_secs(25), "{took:?}: {err}");
    eprintln!("measured: b took over after {took:?}");
}
