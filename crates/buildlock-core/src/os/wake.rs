//! Waking a waiter without a polling delay: inotify on one file name in a directory (the registry
//! file, replaced by an atomic rename on every change), and pidfds of the processes whose exit we
//! wait for (a check slot's holder), bounded by a timeout. (`watch.rs` wakes on any change in a
//! directory; this one filters by file name, so the history appends and failure logs written
//! beside the registry wake nobody, and it adds process exits.)
//!
//! Guarantees: a change made after [`Watch::new`] is never missed: events queue in the inotify
//! descriptor until the next [`Watch::wait`] drains them, so the pattern "evaluate, then wait"
//! wakes at once for a change that came in between. Where inotify or pidfds are unavailable
//! (another OS, a kernel without pidfd_open, too many watches) the wait is a plain sleep of the
//! timeout, so callers always pass a bounded fallback.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::os::process::{self, Process};

pub struct Watch {
    inotify: Option<OwnedFd>,
    name: Vec<u8>,
}

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The watched file changed (or the directory went away).
    Changed,
    /// One of the watched processes exited.
    Exited,
    TimedOut,
}

impl Watch {
    /// Watches `dir/name`; creates `dir` if needed. Never fails: without inotify, waits sleep.
    pub fn new(dir: &Path, name: &str) -> Watch {
        let _ = std::fs::create_dir_all(dir);
        Watch {
            inotify: inotify(dir),
            name: name.as_bytes().to_vec(),
        }
    }

    /// Whether changes wake us (inotify works here).
    pub fn is_live(&self) -> bool {
        self.inotify.is_some()
    }

    /// Sleeps until the watched file changes, one of `procs` exits, or `timeout` passes.
    pub fn wait(&self, procs: &[Process], timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        // A process that is already gone needs no waiting.
        if procs.iter().any(|p| !process::is_live(p)) {
            return Wake::Exited;
        }
        let pidfds: Vec<OwnedFd> = procs.iter().filter_map(pidfd).collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::TimedOut;
            }
            let Some(ino) = &self.inotify else {
                if pidfds.is_empty() {
                    std::thread::sleep(left);
                    return Wake::TimedOut;
                }
                return match poll(&pidfds.iter().collect::<Vec<_>>(), left) {
                    Some(_) => Wake::Exited,
                    None => Wake::TimedOut,
                };
            };
            let mut fds: Vec<&OwnedFd> = vec![ino];
            fds.extend(pidfds.iter());
            match poll(&fds, left) {
                None => return Wake::TimedOut,
                Some(ready) if ready.iter().skip(1).any(|&r| r) => return Wake::Exited,
                Some(_) => {
                    if self.drain(ino) {
                        return Wake::Changed;
                    }
                    // Another file of the directory changed: keep waiting.
                }
            }
        }
    }

    /// Reads every queued event; whether one was about our file (or the directory itself).
    fn drain(&self, ino: &OwnedFd) -> bool {
        let mut hit = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own, of its length, from an fd we own.
            let n = unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            let n = n as usize;
            let mut at = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let len = ev.len as usize;
                let name_bytes = &buf[at + head..(at + head + len).min(n)];
                let name = name_bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0
                    || ev.mask & libc::IN_Q_OVERFLOW != 0
                    || name == self.name.as_slice()
                {
                    hit = true;
                }
                at += head + len;
            }
        }
    }
}

fn inotify(dir: &Path) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned at once.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor that nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mask = libc::IN_MOVED_TO
        | libc::IN_CLOSE_WRITE
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF;
    // SAFETY: valid fd and NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(owned.as_raw_fd(), path.as_ptr(), mask) };
    (wd >= 0).then_some(owned)
}

/// A pidfd for `p` if it is still that very process.
fn pidfd(p: &Process) -> Option<OwnedFd> {
    if p.host != process::hostname() {
        return None;
    }
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Opened after checking nothing: make sure the pid was not recycled meanwhile.
    process::is_live(p).then_some(owned)
}

/// `poll` for readability; which fds are ready, or `None` on timeout.
fn poll(fds: &[&OwnedFd], timeout: Duration) -> Option<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of its length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        // EINTR (a signal): the caller looks at its signal flag and waits again.
        return Some(vec![false; pfds.len()]);
    }
    if n == 0 {
        return None;
    }
    Some(pfds.iter().map(|p| p.revents != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_over_the_file_wakes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(dir.path(), "registry.json");
        assert!(w.is_live());
        let p = dir.path().to_owned();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // Another file first: must not wake us.
            std::fs::write(p.join("other"), b"x").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            crate::os::fs::write_atomic(
                &p.join("registry.json"),
                b"{}",
                crate::os::fs::Durability::Atomic,
            )
            .unwrap();
        });
        let start = Instant::now();
        assert_eq!(w.wait(&[], Duration::from_secs(10)), Wake::Changed);
        assert!(start.elapsed() >= Duration::from_millis(90));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn a_change_before_the_wait_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(dir.path(), "r.json");
        crate::os::fs::write_atomic(
            &dir.path().join("r.json"),
            b"{}",
            crate::os::fs::Durability::Atomic,
        )
        .unwrap();
        assert_eq!(w.wait(&[], Duration::from_secs(10)), Wake::Changed);
        assert_eq!(w.wait(&[], Duration::from_millis(30)), Wake::TimedOut);
    }

    #[test]
    fn the_exit_of_a_watched_process_wakes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watch::new(dir.path(), "r.json");
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let p = Process {
            pid: child.id(),
            host: process::hostname(),
            start: process::start_time(child.id()),
            token: None,
        };
        let start = Instant::now();
        assert_eq!(w.wait(&[p.clone()], Duration::from_secs(10)), Wake::Exited);
        assert!(start.elapsed() < Duration::from_secs(5));
        child.wait().unwrap();
        assert_eq!(
            w.wait(&[p], Duration::from_secs(10)),
            Wake::Exited,
            "already gone"
        );
    }
}
