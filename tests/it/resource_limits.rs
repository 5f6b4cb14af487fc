//! Limits the machine sets on a process (`ulimit`): buildlock's own writes that hit one fail like
//! any other write, and the agent is still told its role; the check keeps the limit's default
//! behaviour.

use crate::harness::*;
use std::os::unix::process::CommandExt;

/// The hook run with `ulimit -f` at `blocks` KiB.
fn hook_with_file_size_limit(r: &TestRepo, agent: &str, blocks: u64) -> std::process::Output {
    let mut c = r.cmd(PRE_COMMIT, &r.dir);
    c.env("BUILDLOCK_AGENT", agent);
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: blocks * 1024,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    c.output().unwrap()
}

// regression: the history append after the state write was killed by SIGXFSZ, so the agent was
// fixer on record but never told.
#[test]
fn a_history_past_the_file_size_limit_still_tells_the_fixer_its_role() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let dir = r.buildlock_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // A history already larger than the limit: every append to it goes past the limit.
    let mut history = "x".repeat(600 * 1024);
    history.push('\n');
    std::fs::write(dir.join("history.jsonl"), history).unwrap();

    let out = hook_with_file_size_limit(&r, "a1", 512);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("you are the FIXER"), "{err}");
    assert!(err.contains("could not write the history"), "{err}");
    assert_eq!(r.state()["keys"][0]["fixer"]["agent"], "a1");
}

#[test]
fn the_check_meets_the_file_size_limit_as_it_would_without_buildlock() {
    // A check that writes past the limit is killed by SIGXFSZ, as without buildlock (a shell
    // reports 128+25): buildlock's own handling of the limit is not inherited.
    let r = TestRepo::new(
        "check = \"head -c 2000000 /dev/zero > big.out; echo status=$?\"\n[hook]\nwait = false\n",
    );
    let out = hook_with_file_size_limit(&r, "a1", 1024);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("status=153"),
        "the check's write was killed by SIGXFSZ: {err}"
    );
    let _ = std::fs::remove_file(r.dir.join("big.out"));
}

/// A hook started with SIGCHLD ignored (SIG_IGN survives exec: some process managers start
/// everything so) still waits for its check: ignored, the kernel reaped the check itself and
/// the wait failed.
// regression: "cannot run the check: No child processes", exit 78, for a passing check and a
// failing one alike
#[test]
fn a_hook_started_with_sigchld_ignored_still_runs_its_check() {
    for (check, code, said) in [("true", 0, ""), ("false", 1, "you are the FIXER")] {
        let r = TestRepo::new(&format!("check = \"{check}\"\n[hook]\nwait = false\n"));
        let mut c = r.cmd(PRE_COMMIT, &r.dir);
        c.env("BUILDLOCK_AGENT", "a1");
        // SAFETY: signal() is async-signal-safe and touches no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                Ok(())
            });
        }
        let out = c.output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{check}: {err}");
        assert!(err.contains(said), "{check}: {err}");
    }
}
