//! Processes on Windows, behind the same functions as `/proc` on Linux.
//!
//! - Identity: a process's start time is its creation time (`GetProcessTimes`, in 100 ns ticks
//!   since 1601), which no later process with the same pid shares, across reboots too; so the
//!   pid space is simply `windows` (Windows has no pid namespaces a record could cross).
//! - Liveness: `OpenProcess` + `WaitForSingleObject(h, 0)`; an exited process whose object is
//!   still held open by someone reads as a zombie (gone). A process of another user may refuse
//!   `OpenProcess`: it reads as `Err`, and [`super::alive`] then says "not alive" only when the
//!   error says there is no such process.
//! - Groups: Windows has no process groups a signal could reach. The "group" of a run is its
//!   process tree: the started process and its descendants, found through the parent pids of a
//!   Toolhelp snapshot (one snapshot per call, about a millisecond for a few hundred processes).
//!   A descendant is only taken when it started after its parent, so a recycled parent pid does
//!   not adopt an unrelated process. Stopping it is `TerminateProcess` on each (Windows has no
//!   polite SIGTERM for a process without a window or a shared console): exit code 1.
//!   Unlike Linux, a daemon the run started (outside a job) is in its tree, so it is stopped too.
//! - A fix's token cannot be read from another process's environment without reading its memory,
//!   so [`environ_has`] is false: a fix whose starter died is not found by its token (its lease
//!   and `max_fix_time` still hand the role over). A job object named after the token would close
//!   that gap; not done yet.

use super::Stat;
use std::io;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_INVALID_PARAMETER, FILETIME, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Threading::{
    GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
    PROCESS_TERMINATE, TerminateProcess, WaitForSingleObject,
};

/// An open process handle, closed on drop.
pub(crate) struct Handle(pub(crate) HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle we opened and own.
        unsafe { CloseHandle(self.0) };
    }
}

pub(crate) fn open(pid: u32, access: u32) -> io::Result<Handle> {
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let h = unsafe { OpenProcess(access, 0, pid) };
    if h.is_null() {
        Err(io::Error::last_os_error())
    } else {
        Ok(Handle(h))
    }
}

/// The creation time of the process behind `h`, in 100 ns ticks since 1601.
fn creation(h: &Handle) -> Option<u64> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: four valid FILETIMEs to write to.
    let ok = unsafe { GetProcessTimes(h.0, &mut created, &mut exited, &mut kernel, &mut user) };
    (ok != 0).then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// What Windows says of `pid`, as a `Stat`: state `R` (running) or `Z` (exited), its start time;
/// its "group" is itself (see the module header).
pub fn stat(pid: u32) -> io::Result<Stat> {
    let h = open(pid, PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE)?;
    let start = creation(&h).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: a valid handle with SYNCHRONIZE access.
    let running = unsafe { WaitForSingleObject(h.0, 0) } == WAIT_TIMEOUT;
    Ok(Stat {
        state: if running { "R" } else { "Z" }.to_owned(),
        pgrp: pid,
        session: 0,
        start,
    })
}

/// Whether an `OpenProcess` error means that there is no such process.
pub fn no_such_process(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32)
}

/// Every process of the snapshot: (pid, parent pid, executable name).
pub fn snapshot() -> Vec<(u32, u32, String)> {
    // SAFETY: no memory-safety preconditions.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap == INVALID_HANDLE_VALUE {
        return Vec::new();
    }
    let snap = Handle(snap);
    // SAFETY: PROCESSENTRY32W is plain data; dwSize set as the API requires.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut out = Vec::new();
    // SAFETY: a valid snapshot handle and entry.
    let mut more = unsafe { Process32FirstW(snap.0, &mut entry) } != 0;
    while more {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        let name = String::from_utf16_lossy(&entry.szExeFile[..len]);
        out.push((entry.th32ProcessID, entry.th32ParentProcessID, name));
        // SAFETY: as above.
        more = unsafe { Process32NextW(snap.0, &mut entry) } != 0;
    }
    out
}

/// The live processes of the tree rooted at `root` (itself included while it runs): the
/// descendants through parent pids, each started after its parent.
pub fn tree(root: u32) -> Vec<u32> {
    let procs = snapshot();
    let start = |pid: u32| stat(pid).ok().filter(|s| !s.gone()).map(|s| s.start);
    let mut members: Vec<(u32, u64)> = start(root).map(|s| vec![(root, s)]).unwrap_or_default();
    let mut i = 0;
    while i < members.len() {
        let (parent, parent_start) = members[i];
        for &(pid, ppid, _) in &procs {
            if ppid == parent && pid != parent && !members.iter().any(|(m, _)| *m == pid) {
                if let Some(s) = start(pid).filter(|&s| s >= parent_start) {
                    members.push((pid, s));
                }
            }
        }
        i += 1;
    }
    members.into_iter().map(|(pid, _)| pid).collect()
}

/// The executable name of `pid`, from a snapshot.
pub fn command_name(pid: u32) -> Option<String> {
    snapshot()
        .into_iter()
        .find(|(p, _, _)| *p == pid)
        .map(|(_, _, name)| name)
}

/// Ends `pid` (exit code 1). Only processes of a tree we started are given here.
pub fn terminate(pid: u32) {
    if let Ok(h) = open(pid, PROCESS_TERMINATE) {
        // SAFETY: a valid handle with PROCESS_TERMINATE access.
        unsafe { TerminateProcess(h.0, 1) };
    }
}

/// The parent of this process while it runs, else 0. Windows keeps a dead parent's pid as the
/// parent pid, so "the parent changed" is "the parent pid no longer runs the process that
/// started before us": the parent is found once (one snapshot), then each call costs one
/// `OpenProcess`.
pub fn parent_id() -> u32 {
    static PARENT: std::sync::OnceLock<Option<(u32, u64)>> = std::sync::OnceLock::new();
    let parent = *PARENT.get_or_init(|| {
        let me = std::process::id();
        let mine = stat(me).ok()?.start;
        let ppid = snapshot().into_iter().find(|(p, _, _)| *p == me)?.1;
        let start = stat(ppid).ok().filter(|s| !s.gone())?.start;
        (start <= mine).then_some((ppid, start))
    });
    match parent {
        Some((ppid, start)) if stat(ppid).is_ok_and(|s| !s.gone() && s.start == start) => ppid,
        _ => 0,
    }
}
