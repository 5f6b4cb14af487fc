//! Helper processes for the OS layer's tests, the same on Linux, macOS and Windows (under Wine
//! too, where no POSIX sh runs): the unit-test binary starts itself again, running only
//! [`helper`], which plays the role named in `BUILDLOCK_TEST_HELPER` and reports on stdout.
//!
//! Roles: `lock PATH` (takes the lock, says `locked`, holds it until stdin closes or it is
//! killed); `sleep` (says `ready`, sleeps a minute); `exit-soon` (says `ready`, exits after
//! 300 ms); `ring PATH` (rings the bell at PATH); `report-parent` (says its parent's pid); `parent` (starts a `sleep` child, says its pid, sleeps a minute).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A helper process and its stdout, line by line.
pub struct Helper {
    pub child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Helper {
    /// Starts the test binary as a helper in `role` (see the module header); `own_group` starts
    /// it as buildlock starts a check, in a group of its own.
    pub fn start(role: &str, own_group: bool) -> Helper {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["os::testing::helper", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1", "-q"])
            .env("BUILDLOCK_TEST_HELPER", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if own_group {
            crate::os::process::own_group(&mut cmd);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Helper { child, lines }
    }

    /// The next line the helper reports (skipping what libtest prints), or `None` at its end.
    pub fn next(&mut self) -> Option<String> {
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if let Some(said) = line.strip_prefix("helper: ") {
                return Some(said.to_owned());
            }
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(what: impl std::fmt::Display) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "helper: {what}");
    let _ = out.flush();
}

/// The helper's body; a no-op when the test binary runs as itself.
#[test]
#[ignore = "a helper process for the OS layer's tests, started by them"]
fn helper() {
    let Some(role) = crate::os::env::test_helper_role() else {
        return;
    };
    let (role, arg) = role.split_once(' ').unwrap_or((role.as_str(), ""));
    match role {
        "lock" => {
            let lock = crate::os::lock::Lock::try_acquire(std::path::Path::new(arg)).unwrap();
            say(if lock.is_some() { "locked" } else { "refused" });
            let _ = std::io::stdin().lines().count();
            drop(lock);
        }
        "sleep" => {
            say("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        "ring" => {
            crate::os::bell::Bell::new(arg.into()).ring();
            say("rang");
        }
        "report-parent" => say(crate::os::process::parent_id()),
        "exit-soon" => {
            say("ready");
            std::thread::sleep(Duration::from_millis(300));
        }
        "parent" => {
            let mut child = Helper::start("sleep", false);
            assert_eq!(child.next().as_deref(), Some("ready"));
            say(child.pid());
            std::mem::forget(child);
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown helper role {other}"),
    }
}
