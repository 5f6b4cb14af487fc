//! Facts about processes: our host name and pid space, a process's start time, whether it still
//! runs, and stopping the process group of a fix that buildlock itself started.
//!
//! Identity: a recorded process is judged ([`judge`]) only in the pid space it was recorded in
//! (the same host name, boot and pid namespace: see `protocol::process`), and only as the process
//! that started at the recorded time. What cannot be identified is [`Seen::Unknown`], never dead.
//!
//! Rule: a process group read from state is signalled only when one of its processes carries
//! the fix's token in its environment (see [`stop_group`]), so neither a recycled pid nor a
//! crafted state file can aim a signal at an unrelated process. And only that group: a process
//! the fix started that left it for a group or session of its own (a daemon: gpg-agent, sccache,
//! a build server) is not the fix, and lives on.
//!
//! Per platform: Linux reads `/proc` (and macOS, which has none, `libproc`); Windows is in
//! [`windows`](self::windows) (process handles, Toolhelp snapshots, trees instead of groups),
//! behind the same functions, so no flow knows which one it runs on.

#[cfg(windows)]
mod windows;

use crate::os::signals::{SIGKILL, SIGTERM};
pub use buildlock_protocol::process::Process;
use std::time::{Duration, Instant};

/// This machine's name (`localhost` if it cannot be read).
pub fn hostname() -> String {
    hostname::get().map_or_else(
        |_| "localhost".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// This process's pid space: where a pid recorded here means the same process (see
/// `protocol::process`). Linux: `<boot id>/<pid namespace inode>`, from
/// `/proc/sys/kernel/random/boot_id` and `/proc/self/ns/pid`; macOS (no pid namespaces): the
/// boot session's UUID; `None` where the OS tells neither, and then nothing recorded here is
/// ever judged dead by its pid. Read once.
pub fn pid_space() -> Option<String> {
    static SPACE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPACE.get_or_init(read_pid_space).clone()
}

#[cfg(target_os = "linux")]
fn read_pid_space() -> Option<String> {
    let boot = read_proc("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    linux_pid_space(&boot, &ns.to_string_lossy())
}

/// A small file of `/proc`, read in one call (and one more to see its end): its size shows as
/// 0, so `read_to_string` grew its buffer from 32 bytes, one read per doubling (6 for a `stat`).
#[cfg(all(unix, not(target_os = "macos")))]
fn read_proc(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(1024);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// `<boot id>/<inode>` from the text of `boot_id` and the target of `/proc/self/ns/pid`
/// (`pid:[4026531836]`); `None` unless both look as the kernel writes them.
pub fn linux_pid_space(boot_id: &str, ns_link: &str) -> Option<String> {
    let boot = boot_id.trim();
    let valid_boot = boot.len() == 36 && boot.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let inode: u64 = ns_link
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    valid_boot.then(|| format!("{}/{inode}", boot.to_ascii_lowercase()))
}

#[cfg(target_os = "macos")]
fn read_pid_space() -> Option<String> {
    let mut buf = [0u8; 64];
    let mut len: libc::size_t = buf.len();
    // SAFETY: a NUL-terminated name; `buf` is valid for writes of `len` bytes.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.bootsessionuuid".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
    let uuid = text.trim_end_matches('\0').trim();
    (!uuid.is_empty()).then(|| format!("boot:{uuid}"))
}

/// Windows: creation times never repeat for a pid (see `windows`), so one space per host.
#[cfg(windows)]
fn read_pid_space() -> Option<String> {
    Some("windows".to_owned())
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
fn read_pid_space() -> Option<String> {
    None
}

/// What can be said here of a recorded process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// That very process runs (or at least lives: stopped counts).
    Alive,
    /// It is gone: its pid names no process, a zombie, or one started at another time.
    Dead,
    /// It cannot be told from here: another host or pid space, a record without a pid space,
    /// or a live pid whose start time cannot be compared. Never to be taken for dead.
    Unknown,
}

/// Judges a recorded process from here (see [`Seen`]).
pub fn judge(p: &Process) -> Seen {
    if !p.visible_from(&hostname(), pid_space().as_deref()) {
        return Seen::Unknown;
    }
    match (stat(p.pid), p.start) {
        (Ok(stat), _) if stat.gone() => Seen::Dead,
        (Ok(stat), Some(start)) if stat.start != start => Seen::Dead,
        (Ok(_), Some(_)) => Seen::Alive,
        // No start time on record: a live pid may have been reused.
        (Ok(_), None) => Seen::Unknown,
        (Err(_), _) if !alive(p.pid) => Seen::Dead,
        // Alive, and no start time to compare (no /proc here).
        (Err(_), _) => Seen::Unknown,
    }
}

/// `pid` of this host, as recorded in state: its start time and our pid space.
pub fn of(pid: u32) -> Process {
    Process {
        pid,
        host: hostname(),
        start: start_time(pid),
        token: None,
        pid_space: pid_space(),
    }
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
    /// The session.
    pub session: u32,
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
            session: fields.get(3)?.parse().ok()?,
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

/// What the OS says of `pid`: `Err` when there is no such process (or the OS does not tell).
#[cfg(windows)]
pub fn stat(pid: u32) -> std::io::Result<Stat> {
    windows::stat(pid)
}

/// macOS has no `/proc`: libproc tells the state, group, session and start time.
#[cfg(target_os = "macos")]
pub fn stat(pid: u32) -> std::io::Result<Stat> {
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is valid for writes of `size` bytes.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&raw mut info).cast(),
            size,
        )
    };
    if n != size {
        return Err(std::io::Error::last_os_error());
    }
    // SZOMB = 5, SSTOP = 4 (sys/proc.h).
    let state = match info.pbi_status {
        5 => "Z",
        4 => "T",
        _ => "R",
    };
    Ok(Stat {
        state: state.to_owned(),
        pgrp: info.pbi_pgid,
        session: 0,
        // Microseconds since the epoch: unique for a pid, like Linux's ticks since boot.
        start: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
    })
}

/// Reads `/proc/<pid>/stat`: `Err` when there is no such process, or no `/proc`.
#[cfg(not(any(windows, target_os = "macos")))]
pub fn stat(pid: u32) -> std::io::Result<Stat> {
    let text = read_proc(&format!("/proc/{pid}/stat"))?;
    Stat::parse(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: unexpected contents"),
        )
    })
}

/// Every process, with its stat (Windows and macOS: only where a group is asked for, see
/// [`group_members`]).
#[cfg(all(unix, not(target_os = "macos")))]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing of that fix runs any more.
    NotRunning,
    /// These processes of the fix's group ran (pid and command name), and now they are gone.
    Stopped {
        group: u32,
        processes: Vec<(u32, String)>,
    },
    /// Processes run in a group with that number, but they are not that fix (a reused pid, or a
    /// crafted state): left alone.
    NotOurs,
    /// It ran, and even SIGKILL has not ended it yet.
    StillRunning { group: u32 },
}

/// Stops the process group of a fix that buildlock started, `p`, and waits until it is gone.
///
/// The fix is its own process group, started by buildlock with `process_group(0)`: `p.pid` is
/// that group, recorded when it started (0 when its starter died before it could record it).
/// Only that group is signalled, and only when one of its processes carries `p.token` in its
/// environment (`BUILDLOCK_FIX_TOKEN`), a secret only that fix's environment has; a record
/// without a token is never acted on (a pid, host and start time are all public, in `/proc`,
/// so such a record could aim buildlock at any group of the user). A process the fix started
/// that moved to a group or session of its own carries the token too, but is not the fix: it is
/// never signalled. SIGTERM, then SIGKILL after `grace`.
pub fn stop_group(p: &Process, grace: Duration) -> Stopped {
    let Some(token) = p.token.as_deref().filter(|_| p.host == hostname()) else {
        return Stopped::NotRunning;
    };
    let needle = format!("{}={token}", crate::os::env::FIX_TOKEN_VAR);
    let Some(group) = fix_group(p.pid, &needle) else {
        return if p.pid > 1 && group_alive(p.pid) {
            Stopped::NotOurs
        } else {
            Stopped::NotRunning
        };
    };
    let processes: Vec<(u32, String)> = group_members(group)
        .into_iter()
        .map(|pid| (pid, command_name(pid)))
        .collect();
    kill_group(group, SIGTERM);
    let gone = |within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            if group_members(group).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if !gone(grace) {
        kill_group(group, SIGKILL);
        if !gone(Duration::from_secs(5)) {
            return Stopped::StillRunning { group };
        }
    }
    Stopped::Stopped { group, processes }
}

/// The fix's own process group: the recorded one when a process of it carries the token; when
/// none was recorded (`recorded` is 0), the group whose leader carries the token and is not a
/// session leader (buildlock starts a fix as a new group in its own session; a daemon that
/// called `setsid` leads a session of its own).
fn fix_group(recorded: u32, needle: &str) -> Option<u32> {
    let carriers = carrying(needle);
    if recorded > 1 {
        return carriers
            .iter()
            .any(|(_, stat)| stat.pgrp == recorded)
            .then_some(recorded);
    }
    carriers
        .iter()
        .find(|(pid, stat)| stat.pgrp == *pid && stat.session != *pid)
        .map(|(pid, _)| *pid)
}

/// The live processes whose environment holds `needle`, with their stat.
#[cfg(all(unix, not(target_os = "macos")))]
fn carrying(needle: &str) -> Vec<(u32, Stat)> {
    all_processes()
        .into_iter()
        .filter(|(pid, stat)| {
            *pid != std::process::id() && !stat.gone() && environ_has(*pid, needle)
        })
        .collect()
}

/// A process's command name, for people; `?` when it cannot be read.
#[cfg(windows)]
pub fn command_name(pid: u32) -> String {
    windows::command_name(pid).unwrap_or_else(|| "?".to_owned())
}

/// A process's command name (`/proc/<pid>/comm`), for people; `?` when it cannot be read.
#[cfg(unix)]
pub fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match stat(pid) {
        Ok(stat) => !stat.gone(),
        // SAFETY: signal 0 only checks for existence.
        #[cfg(unix)]
        Err(_) => pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0,
        // Refused (another user's process): it exists.
        #[cfg(windows)]
        Err(e) => pid > 0 && !windows::no_such_process(&e),
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

/// Windows: the creation time is on the wall clock already (100 ns ticks since 1601).
#[cfg(windows)]
fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    const FROM_1601_TO_1970: u64 = 11_644_473_600;
    let ticks = start_time(pid)?;
    let since_1970 = Duration::from_nanos(ticks.checked_mul(100)?)
        .checked_sub(Duration::from_secs(FROM_1601_TO_1970))?;
    std::time::UNIX_EPOCH.checked_add(since_1970)
}

/// macOS: the start time is microseconds since the epoch.
#[cfg(target_os = "macos")]
fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(Duration::from_micros(start_time(pid)?))
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
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

#[cfg(all(unix, not(target_os = "macos")))]
fn environ_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        .unwrap_or(false)
}

/// Windows and macOS cannot read another process's environment without reading its memory: no
/// process is found by a fix's token there (see the module header of `windows`).
#[cfg(any(windows, target_os = "macos"))]
fn carrying(_needle: &str) -> Vec<(u32, Stat)> {
    Vec::new()
}

/// The live (non-zombie) processes of group `pgid`.
#[cfg(all(unix, not(target_os = "macos")))]
fn group_members(pgid: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgrp == pgid && !stat.gone())
        .map(|(pid, _)| pid)
        .collect()
}

/// libproc.h's `PROC_PGRP_ONLY` (the libc crate does not name it).
#[cfg(target_os = "macos")]
const PROC_PGRP_ONLY: u32 = 2;

/// macOS: the members of a group, from libproc's list of the group's pids.
#[cfg(target_os = "macos")]
fn group_members(pgid: u32) -> Vec<u32> {
    let mut pids = vec![0 as libc::c_int; 4096];
    let bytes = (pids.len() * std::mem::size_of::<libc::c_int>()) as libc::c_int;
    // SAFETY: `pids` is valid for writes of `bytes` bytes.
    let n = unsafe { libc::proc_listpids(PROC_PGRP_ONLY, pgid, pids.as_mut_ptr().cast(), bytes) };
    let count = (n.max(0) as usize / std::mem::size_of::<libc::c_int>()).min(pids.len());
    pids[..count]
        .iter()
        .filter(|&&p| p > 0)
        .map(|&p| p as u32)
        .filter(|&p| stat(p).is_ok_and(|s| !s.gone()))
        .collect()
}

/// Windows: the group of a run is its process tree (see `windows`).
#[cfg(windows)]
fn group_members(pgid: u32) -> Vec<u32> {
    windows::tree(pgid)
}

/// Sends `signal` to the process group `pgid`, which we created. Windows: ends its process tree
/// (any signal: Windows has no polite one for it).
pub fn kill_group(pgid: u32, signal: i32) {
    if pgid > 1 {
        #[cfg(unix)]
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), signal)
        };
        #[cfg(windows)]
        {
            let _ = signal;
            for pid in windows::tree(pgid) {
                windows::terminate(pid);
            }
        }
    }
}

/// Whether any process of group `pgid` still runs. Zombies do not count: they run nothing and
/// hold nothing, and an orphan's zombie waits for whatever reaps orphans, which can take a while.
pub fn group_alive(pgid: u32) -> bool {
    if pgid <= 1 {
        return false;
    }
    #[cfg(unix)]
    if !std::path::Path::new("/proc/self").exists() {
        // SAFETY: signal 0 only checks for existence.
        return unsafe { libc::kill(-(pgid as libc::pid_t), 0) } == 0;
    }
    !group_members(pgid).is_empty()
}

/// Sends `signal` to the process `pid` (a child of ours, not yet reaped).
/// Windows: ends it (any signal).
pub fn kill(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    #[cfg(unix)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal)
    };
    #[cfg(windows)]
    {
        let _ = signal;
        windows::terminate(pid);
    }
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

/// The effective user id of this process. Windows has no uid: 0, and files read as owned by
/// 0 too (see `os::fs::owner`), so ownership checks compare like with like.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[cfg(unix)]
    unsafe {
        libc::geteuid()
    }
    #[cfg(windows)]
    0
}

/// Sends `signal` to ourselves (fault injection). Windows: SIGSTOP cannot be sent to oneself;
/// every signal ends the process at once, with exit code 128+n.
pub fn raise(signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    #[cfg(unix)]
    unsafe {
        libc::kill(libc::getpid(), signal)
    };
    #[cfg(windows)]
    std::process::exit(128 + signal);
}

/// The parent process's pid; it changes (or, on Windows, becomes 0) when the parent is gone.
pub fn parent_id() -> u32 {
    #[cfg(unix)]
    {
        std::os::unix::process::parent_id()
    }
    #[cfg(windows)]
    {
        windows::parent_id()
    }
}

/// Makes `cmd` start in a process group of its own (unix: `setpgid`; Windows: a new process
/// group for console control events; its tree is what [`kill_group`] ends), so that the group
/// can be stopped without stopping us.
pub fn own_group(cmd: &mut std::process::Command) -> &mut std::process::Command {
    #[cfg(unix)]
    {
        std::os::unix::process::CommandExt::process_group(cmd, 0)
    }
    #[cfg(windows)]
    {
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        std::os::windows::process::CommandExt::creation_flags(cmd, CREATE_NEW_PROCESS_GROUP)
    }
}

/// Replaces this process by `cmd`, shown to ps as `arg0` (unix: exec). Windows cannot replace a
/// process: it runs `cmd`, waits, and exits with its code. Returns only when it could not start.
pub fn exec_as(cmd: &mut std::process::Command, arg0: &str) -> std::io::Error {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0).exec()
    }
    #[cfg(windows)]
    {
        let _ = arg0;
        match cmd.status() {
            Ok(status) => std::process::exit(status.code().unwrap_or(1)),
            Err(e) => e,
        }
    }
}

/// The signal that ended a process, if one did (Windows: never; its exit code says all).
pub fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        std::os::unix::process::ExitStatusExt::signal(status)
    }
    #[cfg(windows)]
    {
        let _ = status;
        None
    }
}

/// Whether `p` is this very process (same host, pid space when recorded, pid and start time)
/// and still runs: a zombie (killed, not yet reaped) does not count, since it runs nothing and
/// holds nothing. A record of another pid space is not: its pid means another process here.
pub fn is_live(p: &Process) -> bool {
    p.host == hostname()
        && p.pid_space
            .as_ref()
            .is_none_or(|s| Some(s) == pid_space().as_ref())
        && p.start.is_some()
        && start_time(p.pid) == p.start
        && alive(p.pid)
}

/// This process, as recorded in state.
pub fn me() -> Process {
    of(std::process::id())
}

/// Identity, liveness and stopping a tree, with helper processes: the same test on every
/// platform (see `os::testing`).
#[cfg(test)]
mod cross_platform_tests {
    use super::*;
    use crate::os::testing::Helper;

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within a minute");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_child_is_alive_with_its_start_time_and_dead_once_it_exits() {
        let mut h = Helper::start("sleep", false);
        assert_eq!(h.next().as_deref(), Some("ready"));
        let p = of(h.pid());
        assert!(p.start.is_some(), "a start time is known: {p:?}");
        assert!(p.pid_space.is_some(), "a pid space is known: {p:?}");
        assert_eq!(judge(&p), Seen::Alive);
        assert!(is_live(&p) && alive(p.pid) && running(p.pid));
        // The same pid with another start time is another process.
        let other = Process {
            start: p.start.map(|s| s + 1),
            ..p.clone()
        };
        assert_eq!(judge(&other), Seen::Dead);
        h.child.kill().unwrap();
        h.child.wait().unwrap();
        assert_eq!(judge(&p), Seen::Dead);
        assert!(!is_live(&p));
        assert!(!may_have_written(p.pid, std::time::SystemTime::now()));
    }

    #[test]
    fn this_process_started_before_now_and_wrote_what_it_writes_now() {
        let me = std::process::id();
        let now = std::time::SystemTime::now();
        assert!(may_have_written(me, now));
        assert!(!may_have_written(
            me,
            now - Duration::from_secs(365 * 24 * 3600)
        ));
    }

    #[test]
    fn a_child_sees_us_as_its_parent() {
        let mut h = Helper::start("report-parent", false);
        assert_eq!(h.next(), Some(std::process::id().to_string()));
    }

    #[test]
    fn stopping_a_group_ends_the_process_and_what_it_started() {
        let mut h = Helper::start("parent", true);
        let grandchild: u32 = h.next().unwrap().parse().unwrap();
        let group = h.pid();
        assert!(group_alive(group) && alive(grandchild));
        kill_group(group, SIGTERM);
        until("the group ends", || !group_alive(group));
        let _ = h.child.wait();
        until("the grandchild ends", || !alive(grandchild));
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
                session: 4242,
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

#[cfg(all(test, target_os = "linux"))]
mod stop_tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Starts `script` as buildlock starts a fix: its own process group, the token in its
    /// environment. Returns it once `expected` processes carry the token.
    fn fix(script: &str, token: &str, expected: usize) -> std::process::Child {
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", script])
            .env(crate::os::env::FIX_TOKEN_VAR, token)
            .process_group(0)
            .spawn()
            .unwrap();
        let needle = format!("{}={token}", crate::os::env::FIX_TOKEN_VAR);
        let deadline = Instant::now() + Duration::from_secs(30);
        while carrying(&needle).len() < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    fn record(pid: u32, token: &str) -> Process {
        Process {
            pid,
            host: hostname(),
            start: None,
            token: Some(token.to_owned()),
            pid_space: pid_space(),
        }
    }

    #[test]
    fn a_fix_is_found_and_stopped_by_its_token_alone() {
        let token = format!("t{}", std::process::id());
        let mut child = fix("sleep 30", &token, 1);
        let stopped = stop_group(&record(0, &token), Duration::from_secs(2));
        let Stopped::Stopped { group, processes } = stopped else {
            panic!("{stopped:?}");
        };
        assert_eq!(group, child.id());
        assert!(
            processes.iter().any(|(pid, _)| *pid == child.id()),
            "{processes:?}"
        );
        let _ = child.wait();
        assert_eq!(
            stop_group(&record(0, "not-any-fix"), Duration::from_secs(1)),
            Stopped::NotRunning
        );
    }

    #[test]
    fn a_daemon_the_fix_started_in_a_session_of_its_own_lives_on() {
        for recorded in [true, false] {
            let token = format!("d{}-{recorded}", std::process::id());
            // The fix: a daemon in a session of its own (it carries the token too), then work.
            let mut child = fix("setsid sleep 60 & sleep 60", &token, 3);
            let pid = if recorded { child.id() } else { 0 };
            let stopped = stop_group(&record(pid, &token), Duration::from_secs(2));
            assert!(
                matches!(&stopped, Stopped::Stopped { group, .. } if *group == child.id()),
                "{stopped:?}"
            );
            let _ = child.wait();
            let needle = format!("{}={token}", crate::os::env::FIX_TOKEN_VAR);
            let left = carrying(&needle);
            assert_eq!(left.len(), 1, "the daemon, and only it, lives on: {left:?}");
            let (daemon, stat) = &left[0];
            assert_eq!(stat.session, *daemon, "a session leader");
            kill(*daemon, SIGKILL);
        }
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn the_linux_pid_space_is_the_boot_id_and_the_pid_namespace() {
        assert_eq!(
            linux_pid_space("1B4E28BA-2FA1-11D2-883F-0016D3CCA427\n", "pid:[4026531836]"),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427/4026531836".into())
        );
        let boot = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        assert_eq!(linux_pid_space(boot, "net:[4026531836]"), None);
        assert_eq!(linux_pid_space(boot, "pid:[x]"), None);
        assert_eq!(linux_pid_space("", "pid:[1]"), None);
        assert_eq!(
            linux_pid_space("not a boot id at all, no sir!!!!!!!", "pid:[1]"),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_pid_space_and_is_alive_in_it() {
        let space = pid_space().expect("Linux tells a pid space");
        assert_eq!(Some(space.clone()), read_pid_space(), "stable");
        let me = me();
        assert_eq!(me.pid_space.as_deref(), Some(space.as_str()));
        assert_eq!(judge(&me), Seen::Alive);
        assert!(is_live(&me));
    }

    #[cfg(target_os = "linux")]
    fn reaped_child() -> Process {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let p = of(child.id());
        child.wait().unwrap();
        p
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_is_judged_dead_only_in_its_own_pid_space() {
        let dead = reaped_child();
        assert!(dead.start.is_some());
        assert_eq!(judge(&dead), Seen::Dead);
        // Same host name, another container or boot: not ours to judge.
        let elsewhere = Process {
            pid_space: Some("00000000-0000-0000-0000-000000000000/1".into()),
            ..dead.clone()
        };
        assert_eq!(judge(&elsewhere), Seen::Unknown);
        assert!(!is_live(&elsewhere));
        let me_elsewhere = Process {
            pid_space: elsewhere.pid_space.clone(),
            ..me()
        };
        assert!(
            !is_live(&me_elsewhere),
            "our pid means another process there"
        );
        // A record of an older version (no pid space): not judged either.
        let old = Process {
            pid_space: None,
            ..dead.clone()
        };
        assert_eq!(judge(&old), Seen::Unknown);
        // Another host name.
        let other_host = Process {
            host: format!("{}-other", hostname()),
            ..dead
        };
        assert_eq!(judge(&other_host), Seen::Unknown);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let reused = Process {
            start: me().start.map(|s| s + 1),
            ..me()
        };
        assert_eq!(judge(&reused), Seen::Dead);
        assert!(!is_live(&reused));
        // No start time on record: a live pid may be a reused one; not judged.
        let no_start = Process {
            start: None,
            ..me()
        };
        assert_eq!(judge(&no_start), Seen::Unknown);
        let mut no_start_dead = reaped_child();
        no_start_dead.start = None;
        assert_eq!(judge(&no_start_dead), Seen::Dead);
    }
}
