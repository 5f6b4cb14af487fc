//! Running `git commit` for commit-retry: its arguments untouched, the hook told where to hand
//! its decision over, git's stderr relayed as it comes (its end kept, to recognise lock
//! contention), a signal we get passed on to git.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::handover::Handover;
use crate::flows::commit::decision::{Decision, Verdict};
use crate::os::poll::{self, Ready};
use crate::os::{env, process, say, signals};
use crate::protocol::exit;

/// One `git commit` run.
pub(super) struct GitRun {
    pub(super) code: i32,
    pub(super) decision: Option<Decision>,
    pub(super) lock_contention: bool,
}

/// Runs `git commit` with `args` untouched and the hook told where to hand its decision over
/// (when `handover` is given). git's stderr passes through as it comes; its end is kept to
/// recognise lock contention. No thread and no polling of git: one poll(2) on its stderr, which
/// wakes for output, for its end, or every 200 ms to forward a signal we got. `Err` is the exit
/// code when git cannot run at all (said here).
pub(super) fn run_git(
    args: &[OsString],
    handover: Option<&Handover>,
    vars: &[(&str, String)],
) -> Result<Ran, i32> {
    let decision_path = handover.map(Handover::next);
    let mut cmd = Command::new("git");
    cmd.arg("commit")
        .args(args)
        .env(env::HOLDER_VAR, std::process::id().to_string())
        .stderr(Stdio::piped());
    if let Some(path) = &decision_path {
        cmd.env(env::DECISION_VAR, path);
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say::say("`git` is not on PATH; install git or fix PATH, then run commit-retry again");
            return Err(127);
        }
        Err(e) => {
            say::say(format!("cannot run git commit: {e}"));
            return Err(127);
        }
    };
    let tail = relay_stderr(&mut child);
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            say::say(format!("cannot wait for git commit: {e}"));
            return Err(exit::COORDINATION);
        }
    };
    let tail = String::from_utf8_lossy(&tail);
    Ok(Ran {
        code: code_of(status),
        decision: decision_path,
        hand_over_failed: tail.contains(crate::flows::commit::decision::HAND_OVER_FAILED),
        lock_contention: tail.contains(".lock': File exists") || tail.contains("cannot lock ref"),
    })
}

/// One `git commit` as it ran, before its decision file is read.
#[derive(Serialize, Deserialize)]
pub(super) struct Ran {
    pub(super) code: i32,
    /// Where the hook was asked to hand its decision over.
    pub(super) decision: Option<PathBuf>,
    /// The hook said it could not write it.
    hand_over_failed: bool,
    lock_contention: bool,
}

impl Ran {
    /// A first commit not made: commit-retry goes straight to its rounds (a fix to complete).
    pub(super) fn not_made() -> Ran {
        Ran {
            code: 1,
            decision: None,
            hand_over_failed: false,
            lock_contention: false,
        }
    }

    /// Reads the hook's decision, if it rejected the commit, and removes its file.
    pub(super) fn into_git_run(self) -> GitRun {
        let mut decision = None;
        if let Some(path) = &self.decision {
            if self.code != 0 {
                decision = Decision::read(path);
                let _ = std::fs::remove_file(path);
            }
        }
        if self.code != 0 && decision.is_none() && self.hand_over_failed {
            // The hook decided but could not say what: treat it as coordination failing, never
            // as git's own exit code (which would read as "you are the fixer").
            decision = Some(Decision::new(Verdict::CoordinationFailed));
        }
        GitRun {
            code: self.code,
            decision,
            lock_contention: self.lock_contention,
        }
    }

    /// Removes the decision file, for a run that goes no further.
    pub(super) fn discard(&self) {
        if let Some(path) = &self.decision {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Copies the child's stderr to ours until it ends (or, if a process the hook left behind keeps
/// it open, until git exits); returns its last 8–16 KiB. A signal we got is passed on to git as
/// SIGTERM (its hook notices that git went away and stops the check).
fn relay_stderr(child: &mut std::process::Child) -> Vec<u8> {
    let Some(mut stderr) = child.stderr.take() else {
        return Vec::new();
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut forwarded = false;
    let mut git_done = false;
    loop {
        let timeout = if git_done {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        };
        let ready = poll::readable(&stderr, timeout);
        if ready == Ready::Readable {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    say::raw(&buf[..n]);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 16384 {
                        tail.drain(..tail.len() - 8192);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        } else if git_done {
            // git is gone and nothing more is pending: whoever keeps the pipe open is not git.
            break;
        }
        if !forwarded && signals::pending().is_some() {
            forwarded = true;
            process::kill(child.id(), signals::SIGTERM);
        }
        if ready == Ready::Failed {
            // Most often EINTR; anything else must not turn this loop into a busy one.
            std::thread::sleep(Duration::from_millis(10));
        }
        if ready != Ready::Readable && matches!(child.try_wait(), Ok(Some(_))) {
            git_done = true;
        }
    }
    tail
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| exit::signal(process::exit_signal(&status).unwrap_or(1)))
}
