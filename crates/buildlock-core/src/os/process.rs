//! Facts about processes: our host name, a process's start time, whether it still runs, and
//! stopping a process group that buildlock itself started.
//!
//! Rule: a process group read from state is signalled only when one of its processes carries
//! the fix's token in its environment (see [`stop_group`]), so neither a recycled pid nor a
//! crafted state file can aim a signal at an unrelated process.

pub use buildlock_protocol::process::Process;
use std::time::{Duration, Instant};

/// This machine's name (`localhost` if it cannot be read).
pub fn hostname() -> String {
    hostname::get().map_or_else(
        |_| "localhost".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// The kernel's start time of `pid` in clock ticks since boot, where the OS tells it (Linux).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// What [`stop_group`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing of that group runs any more.
    NotRunning,
    /// It ran, and now it is gone.
    Stopped,
    /// Processes run in a group with that number, but they are not that fix (a reused pid, or a
    /// crafted state): left alone.
    NotOurs,
    /// It ran, and even SIGKILL has not ended it yet.
    StillRunning,
}

/// Stops the process group of a fix that buildlock started, `p`, and waits until it is gone.
///
/// Identity beyond the state file: the group's processes must be on this host, and one of them
/// must carry `p.token` in its environment (`BUILDLOCK_FIX_TOKEN`), a secret only that fix's
/// environment has. A record without a token is never acted on: every fix buildlock starts
/// carries one, so such a record was crafted (a pid, host and start time are all public, in
/// `/proc`), and trusting it would let a state file aim buildlock at any process group of the
/// user. Otherwise nothing is signalled. SIGTERM, then SIGKILL after `grace`.
pub fn stop_group(p: &Process, grace: Duration) -> Stopped {
    let Some(token) = p.token.as_deref().filter(|_| p.host == hostname()) else {
        return Stopped::NotRunning;
    };
    let needle = format!("{}={token}", buildlock_protocol::process::FIX_TOKEN_VAR);
    // Every process group in which a process carries the token: the fix's own group, and any
    // group a part of it moved to. Found by the token, not by the recorded pid, so a fix whose
    // pid was never recorded (its starter died first) is found too.
    let groups = || -> Vec<u32> {
        let mut groups: Vec<u32> = carrying(&needle).into_iter().filter(|&g| g > 1).collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    };
    let found = groups();
    if found.is_empty() {
        return if p.pid > 1 && group_alive(p.pid) {
            Stopped::NotOurs
        } else {
            Stopped::NotRunning
        };
    }
    for &g in &found {
        kill_group(g, libc::SIGTERM);
    }
    let gone = |within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            if groups().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if gone(grace) {
        return Stopped::Stopped;
    }
    for g in groups() {
        kill_group(g, libc::SIGKILL);
    }
    if gone(Duration::from_secs(5)) {
        Stopped::Stopped
    } else {
        Stopped::StillRunning
    }
}

/// The process groups of the live processes whose environment holds `needle`.
fn carrying(needle: &str) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == std::process::id() || !environ_has(pid, needle) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let mut fields = stat.rsplit(')').next()?.split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (state != "Z" && state != "X").then_some(pgrp)
        })
        .collect()
}

/// The one-letter state of process `pid` (`R`, `S`, `T`, `Z`, …) where `/proc` tells; `Err`
/// when it cannot be read (no such process, or no `/proc`).
fn state(pid: u32) -> std::io::Result<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned())
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match state(pid) {
        Ok(state) => state != "Z" && state != "X",
        // SAFETY: signal 0 only checks for existence.
        Err(_) => pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0,
    }
}

/// Whether process `pid` runs: alive and not stopped (SIGSTOP, a debugger). Where there is no
/// `/proc`, alive.
pub fn running(pid: u32) -> bool {
    match state(pid) {
        Ok(state) => !matches!(state.as_str(), "Z" | "X" | "T" | "t" | ""),
        Err(_) => alive(pid),
    }
}

fn environ_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        .unwrap_or(false)
}

/// The live (non-zombie) processes of group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let mut fields = stat.rsplit(')').next()?.split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
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
    if !std::path::Path::new("/proc/self").exists() {
        // SAFETY: signal 0 only checks for existence.
        return unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
    }
    !group_members(pgid).is_empty()
}

/// Sends `signal` to ourselves (fault injection).
pub fn raise(signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), signal) };
}

/// Whether `p` is this very process (same host, pid and start time) and still runs: a zombie
/// (killed, not yet reaped) does not count, since it runs nothing and holds nothing.
pub fn is_live(p: &Process) -> bool {
    p.host == hostname() && p.start.is_some() && start_time(p.pid) == p.start && alive(p.pid)
}

/// This process, as recorded in state.
pub fn me() -> Process {
    let pid = std::process::id();
    Process {
        pid,
        host: hostname(),
        start: start_time(pid),
        token: None,
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_fix_is_found_and_stopped_by_its_token_alone() {
        let token = format!("t{}", std::process::id());
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30"])
            .env(buildlock_protocol::process::FIX_TOKEN_VAR, &token)
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let record = Process {
            pid: 0,
            host: hostname(),
            start: None,
            token: Some(token),
        };
        assert_eq!(
            stop_group(&record, Duration::from_secs(2)),
            Stopped::Stopped
        );
        let _ = child.wait();
        let other = Process {
            token: Some("not-any-fix".into()),
            ..record
        };
        assert_eq!(
            stop_group(&other, Duration::from_secs(1)),
            Stopped::NotRunning
        );
    }
}
