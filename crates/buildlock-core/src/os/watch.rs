//! Sleeping until a directory changes: inotify on Linux, a plain sleep elsewhere.
//!
//! Waiters sleep here instead of polling the state: the store replaces a state file by renaming
//! a temp file over it, which inotify reports as `IN_MOVED_TO` on the directory. A waiter wakes
//! within microseconds of the change and costs no CPU in between. A signal interrupts the sleep
//! (poll(2) is never restarted after a handler), so Ctrl-C is as prompt as ever.
//!
//! A process that dies closes its files, which inotify reports as `IN_CLOSE_WRITE` for a file it
//! had open for writing: watching the lock directory that way wakes waiters the instant a fixer
//! holding its fixer lock dies. (Probes and elections open lock files read-only, so they wake
//! nobody.)
//!
//! Nothing is lost if a notification is missed or the watch cannot be set up (another file
//! system, inotify limits): callers re-read the state after every wake-up and bound each sleep,
//! so the worst case is the bound, never a hang.

use std::time::Duration;

/// What wakes a sleeper in one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changes {
    /// A file created, written, renamed into it or removed.
    Files,
    /// A file that was open for writing closed (its holder let go of it, or died).
    Closed,
}

/// A watch on some directories. Dropping it closes the inotify descriptor.
pub struct Watch {
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
}

impl Watch {
    /// Watches each directory for its kind of change. Never fails: a directory that cannot be
    /// watched is skipped, and without any watch [`Watch::sleep`] simply sleeps.
    pub fn new(dirs: &[(std::path::PathBuf, Changes)]) -> Watch {
        #[cfg(target_os = "linux")]
        {
            Watch {
                fd: linux::watch(dirs),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dirs;
            Watch {}
        }
    }

    /// Whether this platform can wake sleepers on changes at all.
    pub fn supported() -> bool {
        cfg!(target_os = "linux")
    }

    /// Whether changes wake the sleeper (else it sleeps its whole bound).
    pub fn is_live(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Sleeps until something changes in the directory, a signal arrives, or `at_most` passed.
    pub fn sleep(&self, at_most: Duration) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            linux::wait(fd, at_most);
            return;
        }
        std::thread::sleep(at_most);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Changes;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    pub fn watch(dirs: &[(std::path::PathBuf, Changes)]) -> Option<OwnedFd> {
        // SAFETY: inotify_init1 has no preconditions; a non-negative result is a new descriptor
        // that we own from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a valid descriptor returned just above and not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut watching = false;
        for (dir, changes) in dirs {
            let _ = std::fs::create_dir_all(dir);
            let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
                continue;
            };
            let mask = match changes {
                Changes::Files => {
                    libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_DELETE
                }
                Changes::Closed => libc::IN_CLOSE_WRITE,
            };
            // SAFETY: fd is valid and path is a NUL-terminated string that outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
            watching |= wd >= 0;
        }
        watching.then_some(fd)
    }

    pub fn wait(fd: &OwnedFd, at_most: Duration) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = at_most.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready > 0 {
            drain(fd);
        }
    }

    /// Reads and discards the pending events: callers re-read the state whatever changed.
    fn drain(fd: &OwnedFd) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is valid for writes of its length; the descriptor is non-blocking.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wakes_on_a_rename_into_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let watch = Watch::new(&[(dir.path().to_owned(), Changes::Files)]);
        assert!(watch.is_live());
        let path = dir.path().to_owned();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(path.join(".tmp"), b"x").unwrap();
            std::fs::rename(path.join(".tmp"), path.join("state.json")).unwrap();
        });
        let start = Instant::now();
        watch.sleep(Duration::from_secs(20));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "woke on the change"
        );
        writer.join().unwrap();
    }

    #[test]
    fn wakes_when_a_writer_dies_but_not_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("k.fixer");
        std::fs::write(&lock, b"").unwrap();
        let watch = Watch::new(&[(dir.path().to_owned(), Changes::Closed)]);
        // A reader opening and closing wakes nobody.
        drop(std::fs::File::open(&lock).unwrap());
        let start = Instant::now();
        watch.sleep(Duration::from_millis(300));
        assert!(start.elapsed() >= Duration::from_millis(300));
        // A holder (open for writing) that goes away does.
        let path = lock.clone();
        let holder = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            drop(f);
        });
        let start = Instant::now();
        watch.sleep(Duration::from_secs(20));
        assert!(start.elapsed() < Duration::from_secs(10));
        holder.join().unwrap();
    }

    #[test]
    fn sleeps_its_bound_when_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        Watch::new(&[(dir.path().to_owned(), Changes::Files)]).sleep(Duration::from_millis(50));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
