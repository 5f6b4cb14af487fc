//! Facts about processes: our host name, a process's start time, whether it still runs, and
//! stopping a process group that buildlock itself started.
//!
//! Rule: a pid read from state is acted on only together with its host and its start time, so a
//! recycled pid is never signalled.

use serde::{Deserialize, Serialize};

/// One process of one agent, as recorded in state. `pid` and `start` are shown to people and
/// acted on only when `host` and `start` (the kernel's process start time) both still match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub host: String,
    /// Process start time in clock ticks since boot (Linux `/proc/<pid>/stat` field 22).
    pub start: Option<u64>,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel's start time of `pid` in clock ticks since boot, where the OS tells it (Linux).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Is this exact process (same host, same pid, same start time) still running?
pub fn is_same_process_running(p: &Process) -> bool {
    p.host == hostname() && p.start.is_some() && start_time(p.pid) == p.start
}

/// Stops the process group led by `p`, a group buildlock started, if `p` is still that very
/// process: SIGTERM, then SIGKILL after `grace`. Returns whether it was running.
pub fn stop_group(p: &Process, grace: std::time::Duration) -> bool {
    if !is_same_process_running(p) {
        return false;
    }
    kill_group(p.pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !group_alive(p.pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_group(p.pid, libc::SIGKILL);
    true
}

/// Sends `signal` to the process group `pgid`, which we created.
pub fn kill_group(pgid: u32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    }
}

/// Whether any process of group `pgid` still runs. Zombies do not count: they run nothing and
/// hold nothing, and an orphan's zombie waits for whatever reaps orphans, which can take a while.
pub fn group_alive(pgid: u32) -> bool {
    if pgid <= 1 {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks for existence.
        return unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
    };
    procs.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

/// Sends `signal` to ourselves (fault injection).
pub fn raise(signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), signal) };
}
