//! Facts about processes: our host name, a process's start time, whether it still runs, and
//! stopping a process group that buildlock itself started; signalling a child, naming this
//! process and its user id.
//!
//! Rule: a process group read from state is signalled only when one of its processes carries
//! the fix's token in its environment (see [`stop_group`]), so neither a recycled pid nor a
//! crafted state file can aim a signal at an unrelated process.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One process of one agent, as recorded in state. `pid` and `start` are shown to people; a fix
/// process is acted on only through its `token` (see [`stop_group`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub host: String,
    /// Process start time in clock ticks since boot (Linux `/proc/<pid>/stat` field 22).
    pub start: Option<u64>,
    /// A secret that only this process's environment carries (`BUILDLOCK_FIX_TOKEN`), so that a
    /// crafted or stale state can never make buildlock signal an unrelated process group.
    #[serde(default)]
    pub token: Option<String>,
}

/// This machine's name (`localhost` if it cannot be read).
pub fn hostname() -> String {
    hostname::get().map_or_else(
        |_| "localhost".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// The kernel's start time of `pid` in clock ticks since boot, where the OS tells it (Linux).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).ok().map(|s| s.start)
}

/// What `/proc/<pid>/stat` says of a process: the one reader of that file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The one-letter state: `R`, `S`, `D`, `T` (stopped), `t` (traced), `Z` (zombie), `X`, …
    pub state: String,
    /// The process group.
    pub pgrp: u32,
    /// Start time in clock ticks since boot (field 22).
    pub start: u64,
}

impl Stat {
    /// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
    /// parentheses, so fields are counted after the last `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let after = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some(Stat {
            state: (*fields.first()?).to_owned(),
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    /// A zombie or a dead process runs nothing and holds nothing.
    pub fn gone(&self) -> bool {
        matches!(self.state.as_str(), "Z" | "X")
    }

    /// Stopped by a signal (SIGSTOP) or a debugger.
    pub fn stopped(&self) -> bool {
        matches!(self.state.as_str(), "T" | "t")
    }
}

/// Reads `/proc/<pid>/stat`: `Err` when there is no such process, or no `/proc`.
pub fn stat(pid: u32) -> std::io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Stat::parse(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected contents"),
        )
    })
}

/// Every process `/proc` lists, with its stat.
fn all_processes() -> Vec<(u32, Stat)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid).ok()?)))
        .collect()
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
    let needle = format!("{}={token}", crate::os::env::FIX_TOKEN_VAR);
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
    all_processes()
        .into_iter()
        .filter(|(pid, stat)| {
            *pid != std::process::id() && !stat.gone() && environ_has(*pid, needle)
        })
        .map(|(_, stat)| stat.pgrp)
        .collect()
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match stat(pid) {
        Ok(stat) => !stat.gone(),
        // SAFETY: signal 0 only checks for existence.
        Err(_) => pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0,
    }
}

/// Whether process `pid` may have written a file last modified at `written`: it is alive, and it
/// started before then. A pid that is gone, or that now names a process started after the file
/// was written (the pid was reused), did not write it. Where the start time cannot be told, a
/// live pid may have.
///
/// A file's time is on the wall clock, so this compares wall clocks, with a margin of
/// [`WRITER_MARGIN`]: a clock stepped forward by more than that while the writer runs is the one
/// way a live writer's file could be taken for a stray. Within it, a reused pid is taken for the
/// writer, which only keeps a stray file until that process ends.
pub fn may_have_written(pid: u32, written: std::time::SystemTime) -> bool {
    if pid == 0 || !alive(pid) {
        return false;
    }
    started_at(pid).is_none_or(|start| start <= written + WRITER_MARGIN)
}

/// See [`may_have_written`].
const WRITER_MARGIN: Duration = Duration::from_secs(60);

/// When process `pid` started, on the wall clock (Linux: its start in ticks since boot, plus the
/// boot time, itself the wall clock less `CLOCK_BOOTTIME`).
#[cfg(target_os = "linux")]
fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    let ticks = start_time(pid)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&hz| hz > 0)?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let since_boot = Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    let boot = std::time::SystemTime::now().checked_sub(since_boot)?;
    boot.checked_add(Duration::from_millis(ticks.checked_mul(1000)? / hz))
}

#[cfg(not(target_os = "linux"))]
fn started_at(_pid: u32) -> Option<std::time::SystemTime> {
    None
}

/// Whether process `pid` runs: alive and not stopped (SIGSTOP, a debugger). Where there is no
/// `/proc`, alive.
pub fn running(pid: u32) -> bool {
    match stat(pid) {
        Ok(stat) => !stat.gone() && !stat.stopped(),
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
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgrp == pgid && !stat.gone())
        .map(|(pid, _)| pid)
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

/// Sends `signal` to the process `pid` (a child of ours, not yet reaped).
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Names this process for ps, top and pkill (Linux, which keeps at most 15 bytes of it; a no-op
/// elsewhere).
pub fn set_name(name: &std::ffi::CStr) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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
mod stat_tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        let text = "4242 (a) b (c) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(
            Stat::parse(text),
            Some(Stat {
                state: "S".into(),
                pgrp: 4242,
                start: 987654
            })
        );
        assert_eq!(Stat::parse("4242 (sh"), None);
        assert_eq!(Stat::parse("4242 (sh) S 1"), None);
    }

    #[test]
    fn this_process_reads_as_running_with_its_own_start_time() {
        let me = stat(std::process::id()).unwrap();
        assert!(!me.gone() && !me.stopped());
        assert_eq!(Some(me.start), start_time(std::process::id()));
    }

    /// A file is this process's when written after it started; one written before it started
    /// was written by an earlier holder of its pid.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_pid_wrote_only_files_written_after_it_started() {
        let me = std::process::id();
        let now = std::time::SystemTime::now();
        assert!(may_have_written(me, now));
        assert!(!may_have_written(
            me,
            now - Duration::from_secs(365 * 24 * 3600)
        ));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!may_have_written(gone, now));
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
            .env(crate::os::env::FIX_TOKEN_VAR, &token)
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
