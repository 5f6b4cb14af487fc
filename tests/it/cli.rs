//! The `buildlock` operator CLI.

use crate::harness::*;
use std::time::Duration;

/// `a1` is the fixer (by hand: a plain hook run); `a2` was told to wait and exited (75).
fn broken_with_fixer() -> TestRepo {
    let r = TestRepo::new("check = \"echo boom; false\"\n[hook]\nwait = false\n");
    r.hook(&r.dir, "a1").code(1);
    r.hook(&r.dir, "a2").code(75);
    r
}

/// `a1` is the fixer (by hand: a plain hook run), `a2` waits for it in a live process.
fn broken_with_fixer_and_waiter() -> (TestRepo, std::process::Child) {
    let r = TestRepo::new(
        "check = \"test -e fixed || { echo boom; false; }\"\n[hook]\nwait = true\n[fix]\ncost = 0.5\n",
    );
    r.hook(&r.dir, "a1").code(1);
    let waiter = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a2")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while r.state()["keys"][0]["waiters"] != serde_json::json!(["a2"]) {
        assert!(std::time::Instant::now() < until, "a2 never waited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (r, waiter)
}

#[test]
fn status_json_has_the_contract_fields() {
    let (r, waiter) = broken_with_fixer_and_waiter();
    let s = r.state();
    assert_eq!(s["backend"], "local");
    let key = &s["keys"][0];
    // `match = "signature"` (the default): the base key, then the failure's signature.
    assert_eq!(
        key["key"].as_str().unwrap(),
        format!("repo#{}", key["signature"].as_str().unwrap())
    );
    assert_eq!(key["status"], "fixing");
    assert_eq!(key["generation"], 1);
    assert_eq!(key["fix_commit"], serde_json::Value::Null);
    let f = &key["fixer"];
    assert_eq!(f["agent"], "a1");
    // Fixing by hand: the hook that elected a1 has exited, so no process holds the role.
    assert_eq!(f["pid"], serde_json::Value::Null);
    assert!(f["host"].is_string());
    for t in ["since", "heartbeat"] {
        let v = f[t].as_str().unwrap();
        assert!(
            v.len() == 20 && v.ends_with('Z') && v.as_bytes()[10] == b'T',
            "{t}: {v}"
        );
    }
    assert_eq!(
        (f["attempts"].as_u64(), f["live"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(key["signature"].as_str().unwrap().len(), 16);
    assert!(std::path::Path::new(key["log"].as_str().unwrap()).is_absolute());
    assert_eq!(
        std::fs::read_to_string(key["log"].as_str().unwrap()).unwrap(),
        "boom\n"
    );
    assert_eq!(key["waiters"], serde_json::json!(["a2"]));
    // a1 fixes it: a2 wakes, and the wait counts as a fix run avoided.
    std::fs::write(r.dir.join("fixed"), "").unwrap();
    r.hook(&r.dir, "a1").code(0);
    let out = wait_output(waiter, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = r.state();
    assert_eq!(s["keys"][0]["status"], "passing");
    assert_eq!(s["keys"][0]["waiters"], serde_json::json!([]));
    let t = &s["totals"];
    for (field, want) in [
        ("failures", 2.0),
        ("elections", 1.0),
        ("takeovers", 0.0),
        ("waits", 1.0),
        ("fixes", 1.0),
        ("fix_runs", 0.0),
        ("fix_runs_avoided", 1.0),
        ("saved", 0.5),
    ] {
        assert_eq!(t[field].as_f64(), Some(want), "{field}");
    }
}

#[test]
fn status_for_people() {
    let (r, mut waiter) = broken_with_fixer_and_waiter();
    r.buildlock(&r.dir, "x", &["status"]).stdout(
        contains("key `repo#")
            .and(contains("`: FIXING (generation 1)"))
            .and(contains("fixer     a1"))
            .and(contains("waiting   a2")),
    );
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    // A killed waiter is not listed.
    let status = r
        .buildlock(&r.dir, "x", &["status"])
        .stdout(contains("waiting   a2").not());
    let s = stdout_of(&status);
    // Each figure says what it counts; the saving shows how it was computed.
    for line in [
        "2  failed checks",
        "1  fixer elected, 0 of them taking over from a dead or silent fixer",
        "0  breakages fixed by their fixer",
        "1  agent told to wait for a fixer (once per agent and breakage)",
        "0  runs of fix.command (by commit-retry or `buildlock ci`)",
        "0  duplicate fixes avoided",
        "saved       0.00 = 0 duplicate fix(es) avoided x fix.cost 0.5",
    ] {
        assert!(s.contains(line), "{line:?} in\n{s}");
    }
}

#[test]
fn release_by_the_fixer_only() {
    let r = broken_with_fixer();
    r.buildlock(&r.dir, "a2", &["release"])
        .code(1)
        .stderr(contains("`a1` fixes key `repo#"));
    r.buildlock(&r.dir, "a1", &["release"]).code(0);
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["fixer"].is_null()),
        (Some("broken"), true)
    );
    assert!(r.history_events().contains(&"released".to_owned()));
}

#[test]
fn reset_forces_passing_with_a_new_generation() {
    let r = broken_with_fixer();
    r.buildlock(&r.dir, "ops", &["reset"]).code(0);
    let key = &r.state()["keys"][0];
    assert_eq!(
        (key["status"].as_str(), key["generation"].as_u64()),
        (Some("passing"), Some(2))
    );
    // The old fixer's passing check can no longer mark anything; its failure starts a new episode.
    r.hook(&r.dir, "a1").code(1);
    assert_eq!(r.state()["keys"][0]["generation"], 3);
    // Who reset it is on record, and in the log.
    let json = stdout_of(&r.buildlock(&r.dir, "x", &["log", "--json"]));
    let reset: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "reset")
        .expect("a reset event");
    assert_eq!(reset["agent"], "ops", "{reset}");
    let log = stdout_of(&r.buildlock(&r.dir, "x", &["log"]));
    assert!(
        log.lines()
            .any(|l| l.contains(" reset ") && l.contains(" ops ")),
        "{log}"
    );
}

#[test]
fn log_agent_shows_one_agents_events() {
    let r = broken_with_fixer();
    let json = stdout_of(&r.buildlock(&r.dir, "x", &["log", "--json", "--agent", "a2"]));
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!events.is_empty(), "{json}");
    assert!(events.iter().all(|e| e["agent"] == "a2"), "{json}");
    assert!(events.iter().any(|e| e["event"] == "waiting"), "{json}");
    // -n counts that agent's events.
    let last = stdout_of(&r.buildlock(&r.dir, "x", &["log", "--agent", "a1", "-n", "1"]));
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains(" a1 "), "{last}");
    r.buildlock(&r.dir, "x", &["log", "--agent", "nobody"])
        .code(0)
        .stdout(contains("no events of agent `nobody`"));
}

#[test]
fn log_tells_the_story() {
    let r = broken_with_fixer();
    r.buildlock(&r.dir, "x", &["log"])
        .stdout(contains("elected fixer").and(contains("waits for `a1`")));
    let json = stdout_of(&r.buildlock(&r.dir, "x", &["log", "--json", "-n", "2"]));
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["event"], "waiting");
    assert!(events[1]["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn doctor_and_usage_errors() {
    let r = TestRepo::new("check = \"true\"\n");
    doctor(&r)
        .code(0)
        .stdout(contains("file locking works").and(contains("is buildlock's")));
    std::fs::remove_file(r.dir.join(".git/hooks/pre-commit")).unwrap();
    doctor(&r).code(1).stdout(contains("no pre-commit hook"));
    r.buildlock(&r.dir, "x", &["frobnicate"]).code(2);
    r.buildlock(&r.dir, "x", &["log", "-n"]).code(2);
    std::fs::write(r.dir.join(".buildlock.toml"), "bad = 1\n").unwrap();
    r.buildlock(&r.dir, "x", &["status"]).code(78);
}

#[test]
fn reset_of_an_unknown_key_lists_the_keys_and_changes_nothing() {
    let r = broken_with_fixer();
    let before = std::fs::read_dir(r.buildlock_dir().join("state"))
        .unwrap()
        .count();
    let history = r.history_events().len();
    // `match = "signature"` (the default): the key is `repo#<signature>`.
    r.buildlock(&r.dir, "ops", &["reset", "nosuchkey"])
        .code(1)
        .stderr(
            contains("unknown key `nosuchkey`: nothing was changed")
                .and(contains("`repo#"))
                .and(contains("` (fixing)")),
        );
    let after = std::fs::read_dir(r.buildlock_dir().join("state"))
        .unwrap()
        .count();
    assert_eq!((after, r.history_events().len()), (before, history));
    assert_eq!(r.state()["keys"][0]["status"], "fixing");
    // A fresh repository: no key at all, and still nothing is created.
    let fresh = TestRepo::new("check = \"true\"\n");
    fresh
        .buildlock(&fresh.dir, "ops", &["reset", "repo2"])
        .code(1)
        .stderr(contains("no key has a state yet"));
    fresh
        .buildlock(&fresh.dir, "ops", &["reset"])
        .code(0)
        .stderr(contains("nothing to reset"));
    assert!(!fresh.buildlock_dir().join("state").exists());
}

#[test]
fn log_n_0_prints_nothing_and_long_agent_ids_fit() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let long = "build-host.example.com:/home/someone/src/a/rather/long/worktree/path";
    r.hook(&r.dir, long).code(1);
    r.hook(&r.dir, "a2").code(75);
    r.buildlock(&r.dir, "x", &["log", "-n", "0"])
        .code(0)
        .stdout("");
    r.buildlock(&r.dir, "x", &["log", "--json", "-n", "0"])
        .code(0)
        .stdout("");
    // Every line's key column starts at the same place, whatever the agent's id.
    let s = stdout_of(&r.buildlock(&r.dir, "x", &["log"]));
    let columns: Vec<usize> = s.lines().map(|l| l.find(" key `").unwrap()).collect();
    assert!(
        columns.len() >= 3 && columns.iter().all(|c| *c == columns[0]),
        "{s}"
    );
    assert!(s.contains(&format!(" {long} key `repo#")), "{s}");
}

#[test]
fn buildlock_off_in_any_case() {
    for off in ["0", "false", "FALSE", "Off", "No"] {
        let r = TestRepo::new("check = \"echo boom; false\"\n");
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK", off)
            .env("BUILDLOCK_AGENT", "a1")
            .assert()
            .code(1)
            .stderr(contains("coordination is off"));
        assert!(
            r.history_events().is_empty(),
            "{off}: something was coordinated"
        );
    }
    // Anything else coordinates as usual.
    let r = TestRepo::new("check = \"false\"\n");
    r.cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK", "on")
        .env("BUILDLOCK_AGENT", "a1")
        .assert()
        .code(1);
    assert!(r.history_events().contains(&"elected".to_owned()));
}

#[test]
fn an_absurd_duration_is_a_configuration_error_not_a_panic() {
    let r = TestRepo::new("check = \"false\"\n[coordination]\nwait = \"2562047788015216h\"\n");
    r.stage_change(&r.dir, "x.txt");
    for (program, args) in [(PRE_COMMIT, &[][..]), (BUILDLOCK, &["status"][..])] {
        r.cmd(program, &r.dir).args(args).assert().code(78).stderr(
            contains(".buildlock.toml line 3, key `coordination.wait`")
                .and(contains("at most one year"))
                .and(contains("panicked").not()),
        );
    }
    // The bound itself is accepted.
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        "check = \"true\"\n[coordination]\nwait = \"8760h\"\n",
    )
    .unwrap();
    r.buildlock(&r.dir, "x", &["status"]).code(0);
}

/// Runs `buildlock args` with a stdout whose reader is already gone: every write fails with EPIPE.
fn with_closed_stdout(r: &TestRepo, args: &[&str], tmp: &std::path::Path) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = r.cmd(BUILDLOCK, &r.dir);
    c.args(args)
        .env("TMPDIR", tmp)
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    drop(c); // our copy of the pipe's write end
    wait_output(child, std::time::Duration::from_secs(60))
}

#[test]
fn a_closed_stdout_is_no_panic() {
    let r = broken_with_fixer();
    let tmp = r.root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["doctor"],
        &["log"],
        &["log", "--json"],
        &["demo"],
        &["completions", "bash"],
        &["--help"],
        &["--version"],
    ] {
        with_closed_stdout(&r, args, &tmp)
            .assert()
            .append_context("args", format!("{args:?}"))
            .code(0)
            .stderr(contains("panicked").not());
    }
    // The demo left nothing in its temp dir.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    for program in [PRE_COMMIT, COMMIT_RETRY] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        r.cmd(program, &r.dir)
            .arg("--help")
            .stdout(writer)
            .assert()
            .code(0)
            .stderr(contains("panicked").not());
    }
}

#[test]
fn the_demo_cleans_up_when_interrupted() {
    let r = TestRepo::new("");
    let tmp = r.root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for signal_number in [libc::SIGTERM, libc::SIGINT] {
        let mut child = r
            .cmd(BUILDLOCK, &r.dir)
            .arg("demo")
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read until the agents are committing, then interrupt.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("[agent-") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the agents never spoke");
        signal(&child, signal_number);
        let out = wait_output(child, std::time::Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(128 + signal_number),
            "{}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("stopped its agents and removed its files"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "files left behind"
        );
    }
}

fn doctor(r: &TestRepo) -> Assert {
    r.buildlock(&r.dir, "x", &["doctor"])
}

#[test]
fn doctor_finds_a_bell_that_is_not_a_fifo() {
    let r = TestRepo::new("check = \"true\"\n");
    std::fs::create_dir_all(r.buildlock_dir()).unwrap();
    std::fs::write(r.buildlock_dir().join("state.bell"), "x").unwrap();
    doctor(&r)
        .code(1)
        .stdout(contains("state.bell is not a FIFO of yours"));
}

/// `fix.command` and `retry.refresh` run only in a breakage: doctor finds their typos before.
#[test]
fn doctor_finds_fix_and_refresh_commands_that_do_not_exist() {
    let r = TestRepo::new(
        "check = \"true\"\n[fix]\ncommand = \"my-llm-fixer --go\"\n[retry]\nrefresh = \"nosuchcmd\"\n",
    );
    doctor(&r).code(1).stdout(
        contains("`fix.command` runs `my-llm-fixer`, which is not found").and(contains(
            "`retry.refresh` runs `nosuchcmd`, which is not found",
        )),
    );
    let r = TestRepo::new(
        "check = \"true\"\n[fix]\ncommand = \"git add -A\"\n[retry]\nrefresh = \"git status\"\n",
    );
    doctor(&r)
        .code(0)
        .stdout(contains("fix.command: `git add -A` (its commands exist)"))
        .stdout(contains("fix.command` runs").not());
}

#[test]
fn doctor_finds_a_check_command_that_does_not_exist() {
    let r = TestRepo::new("check = \"cd . && nosuchtool-xyz --all | tee out.log\"\n");
    doctor(&r).code(1).stdout(
        contains("PROBLEM  the check's command `nosuchtool-xyz` is not found")
            .and(contains("what to do: install `nosuchtool-xyz`")),
    );
    // Builtins, keywords and commands on PATH are fine; a path is resolved at the work tree.
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        "check = \"cd . && if true; then sh ./check.sh 2>&1 | tee out.log; fi\"\n",
    )
    .unwrap();
    doctor(&r).code(0).stdout(contains(
        "the check's command(s) exist: `cd`, `true`, `sh`, `tee`",
    ));
    std::fs::write(r.dir.join(".buildlock.toml"), "check = \"./check.sh\"\n").unwrap();
    doctor(&r)
        .code(1)
        .stdout(contains("`./check.sh` does not exist"));
    std::fs::write(r.dir.join("check.sh"), "exit 0\n").unwrap();
    doctor(&r)
        .code(1)
        .stdout(contains("`./check.sh` is not executable"));
}

#[test]
fn doctor_finds_a_chained_hook_that_check_replaces() {
    let r = TestRepo::new("check = \"true\"\n");
    let chained = r.buildlock_dir().join("chained/pre-commit");
    std::fs::create_dir_all(chained.parent().unwrap()).unwrap();
    std::fs::write(&chained, "#!/bin/sh\n# generated by lefthook\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&chained, std::fs::Permissions::from_mode(0o755)).unwrap();
    doctor(&r).code(1).stdout(
        contains("your previous pre-commit hook (lefthook) was kept as").and(
            contains("it no longer runs on commit").and(contains(format!(
                "check = \"{} && true\"",
                chained.display()
            ))),
        ),
    );
    // Without `check`, the chained hook is the check: all clear.
    std::fs::write(r.dir.join(".buildlock.toml"), "").unwrap();
    doctor(&r).code(0).stdout(contains(
        "(your previous pre-commit hook (lefthook), chained)",
    ));
}

#[test]
fn doctor_finds_a_coordination_folder_that_is_a_file() {
    // Tests run as root, which chmod does not stop: a file where a folder must be makes every
    // write into it fail for anyone (ENOTDIR).
    let r = broken_with_fixer();
    doctor(&r)
        .code(0)
        .stdout(contains("is writable").and(contains("state/ 1 file")));
    let state = r.buildlock_dir().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a folder").unwrap();
    doctor(&r)
        .code(1)
        .stdout(
            contains(format!("PROBLEM  {} is not a folder", state.display())).and(contains("mv ")),
        )
        .stdout(
            contains("./install.sh")
                .not()
                .and(contains(".buildlock.toml.example").not()),
        );
}

/// `chattr +i` makes a folder unwritable even for root; removed again when dropped.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn doctor_finds_a_coordination_folder_it_cannot_write() {
    let r = broken_with_fixer();
    let logs = r.buildlock_dir().join("logs");
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&logs)
        .status();
    if !immutable.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: `chattr +i` is not available here (no e2fsprogs, or a file system without attributes)"
        );
        return;
    }
    let _guard = Immutable(logs.clone());
    // The old probe (re-opening locks/probe.lock) passed here: the folder still reads fine.
    assert!(std::fs::read_dir(&logs).is_ok());
    doctor(&r).code(1).stdout(
        contains(format!(
            "PROBLEM  cannot write in {} (failure logs)",
            logs.display()
        ))
        .and(contains("lsattr -d")),
    );
}

#[test]
fn doctor_hints_name_what_exists_here() {
    let r = TestRepo::new("check = \"true\"\n");
    // Installed binaries, as install.sh leaves them, and no hook.
    let bin = r.buildlock_dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["pre-commit", "commit-retry", "buildlock"] {
        std::os::unix::fs::symlink(
            std::path::Path::new(PRE_COMMIT).with_file_name(b),
            bin.join(b),
        )
        .unwrap();
    }
    let hook = r.dir.join(".git/hooks/pre-commit");
    std::fs::remove_file(&hook).unwrap();
    doctor(&r)
        .code(1)
        .stdout(contains(format!(
            "ln -sf {} {}",
            bin.join("pre-commit").display(),
            hook.display()
        )))
        .stdout(contains(format!(
            "git config alias.commit-retry '!f() {{ cd \"${{GIT_PREFIX:-.}}\" && exec \"{}\"",
            bin.join("commit-retry").display()
        )))
        .stdout(
            contains("./install.sh")
                .not()
                .and(contains(".buildlock.toml.example").not()),
        );
}

#[test]
fn wait_for_an_agent_never_seen_is_an_error_not_a_go() {
    let r = broken_with_fixer();
    r.buildlock(&r.dir, "x", &["wait-for", "a1x", "--timeout", "1s"])
        .code(2)
        .stderr(contains("no agent named `a1x`").and(contains("a1")));
    // A known agent is waited for as before.
    r.buildlock(&r.dir, "x", &["wait-for", "a2", "--timeout", "1s"])
        .code(predicate::ne(2));
}

/// `status` names the process that holds the role (commit-retry running the fix), which `kill`
/// reaches; a fixer by hand, whose hook has exited, has no pid or a live one.
// regression: `status` named the elected hook, long exited, as the fixer's pid
#[test]
fn status_names_the_live_process_that_holds_the_role() {
    let r = shared_status_repo("3", "");
    r.stage_change(&r.dir, "fa");
    let a = KillOnDrop(Some(r.commit_retry(&r.dir, "a")));
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    let fixer = r.state()["keys"][0]["fixer"].clone();
    assert_eq!(fixer["pid"].as_u64(), Some(u64::from(a.id())), "{fixer}");
    drop(a);
    // A fixer by hand (the plain hook, which has exited): no pid to name, or a live one.
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    r.hook(&r.dir, "x").code(1);
    let fixer = r.state()["keys"][0]["fixer"].clone();
    assert!(
        fixer["pid"].is_null() || alive(fixer["pid"].as_u64().unwrap() as u32),
        "a dead pid: {fixer}"
    );
}
