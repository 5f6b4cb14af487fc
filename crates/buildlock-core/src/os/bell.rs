//! A doorbell for waiters: sleeping until a writer says that something they wait on changed, or
//! until a process exits, or until a bound passes. Waiters sleep here instead of polling.
//!
//! The bell is a FIFO. A waiter listens by opening it for reading (never blocks) and sleeping in
//! poll(2) on it; a writer rings it after its change by opening it for writing and closing it at
//! once (never blocks either: with nobody listening the open fails, which costs one syscall).
//! When the last writer closes, the kernel reports POLLHUP to every reader: one ring wakes every
//! listener, with no data and no per-user limit (inotify allows 128 instances per user, and a
//! machine with more waiting agents than that would leave the rest polling). A listener that was
//! woken opens the FIFO again before it returns, to hear the next ring.
//!
//! Guarantee: "listen, look, wait" never misses a change. A writer changes, then rings; a
//! listener is listening before it looks. A ring that finds no listener (all of them between two
//! opens) came after a change that every one of them looks at after opening again.
//!
//! Writers ring only for changes that waiters act on (see the store), so that a crowd joining
//! the waiters does not wake itself once per newcomer. Process exits wake through pidfds. Where
//! neither works (another OS, a FIFO that cannot be made) [`Listener::is_live`] is false and a
//! wait is a plain sleep of its bound: callers re-read after every wake-up and bound each sleep,
//! so the worst case is the bound, never a hang.
//!
//! Per platform (what a wait costs):
//! - Linux: the FIFO and pidfds above; a wait is one poll(2), no wake-up until something happens.
//! - Windows and macOS have no such FIFO semantics to rely on, so there the bell is a directory
//!   at the same path: a ring creates and removes a file in it (two directory entries changed,
//!   about 0.1 ms), and a listener is told of entries changed in that directory (Windows:
//!   `FindFirstChangeNotification`, a waitable handle, waited on together with the watched
//!   processes' handles in one `WaitForMultipleObjects`; macOS: a kqueue with `EVFILT_VNODE` on
//!   the directory and `EVFILT_PROC`/`NOTE_EXIT` for the processes). A wait costs no wake-up
//!   until something happens there too; each listener holds one handle (Windows) or two
//!   descriptors (macOS). The watch is armed when listening starts, so a ring between listening
//!   and waiting is not missed either. A listener woken by something else in the directory
//!   (a writer killed between its create and its remove leaves a file: later rings still
//!   change the directory) only re-reads.

use std::path::{Path, PathBuf};
use std::time::Duration;
#[cfg(not(any(windows, target_os = "macos")))]
use std::time::Instant;

use crate::os::process::{self, Process};

/// Why a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The bell rang.
    Rang,
    /// One of the watched processes exited.
    Exited,
    /// The bound passed (or a signal came).
    TimedOut,
}

/// A bell at a path; rung by writers, listened to by waiters.
#[derive(Clone, Debug)]
pub struct Bell {
    path: PathBuf,
}

impl Bell {
    pub fn new(path: PathBuf) -> Bell {
        Bell { path }
    }

    /// `dir/<name>.bell`.
    pub fn in_dir(dir: &Path, name: &str) -> Bell {
        Bell::new(dir.join(format!("{name}.bell")))
    }

    /// Wakes every listener. Costs one failing open(2) when nobody listens.
    pub fn ring(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Opening and closing is the ring; a regular file put here by mistake is opened
            // and closed untouched.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&self.path);
        }
        #[cfg(not(target_os = "linux"))]
        dir_bell::ring(&self.path);
    }

    /// Starts listening (making the FIFO, or the directory, if needed): a ring from now on
    /// wakes the next wait.
    pub fn listen(&self) -> Listener {
        Listener {
            path: self.path.clone(),
            #[cfg(target_os = "linux")]
            fd: linux::open(&self.path),
            #[cfg(windows)]
            watch: windows::Watch::open(&self.path),
            #[cfg(target_os = "macos")]
            watch: macos::Watch::open(&self.path),
        }
    }
}

/// Whether `meta` is what a bell is on this platform: a FIFO on Linux, a directory elsewhere
/// (for `doctor`).
pub fn is_bell(meta: &std::fs::Metadata) -> bool {
    if cfg!(target_os = "linux") {
        crate::os::fs::is_fifo(meta)
    } else {
        meta.is_dir()
    }
}

/// One waiter listening to a bell.
pub struct Listener {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    path: PathBuf,
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
    #[cfg(windows)]
    watch: Option<windows::Watch>,
    #[cfg(target_os = "macos")]
    watch: Option<macos::Watch>,
}

impl Listener {
    /// Whether a ring wakes us (else a wait sleeps its whole bound, unless a process exits).
    pub fn is_live(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(any(windows, target_os = "macos"))]
        {
            self.watch.is_some()
        }
        #[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
        {
            false
        }
    }

    /// Sleeps until the bell rings or `at_most` passed (or a signal came).
    pub fn sleep(&mut self, at_most: Duration) -> Wake {
        self.wait(&[], at_most)
    }

    /// Sleeps until the bell rings, one of `procs` exits, or `timeout` passes (or a signal
    /// came: the caller looks at its signal flag).
    pub fn wait(&mut self, procs: &[Process], timeout: Duration) -> Wake {
        // A process that is already gone needs no waiting.
        if procs.iter().any(|p| !process::is_live(p)) {
            return Wake::Exited;
        }
        #[cfg(target_os = "linux")]
        {
            linux::wait(self, procs, timeout)
        }
        #[cfg(windows)]
        {
            windows::wait(self.watch.as_ref(), procs, timeout)
        }
        #[cfg(target_os = "macos")]
        {
            macos::wait(self.watch.as_ref(), procs, timeout)
        }
        #[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
        {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Wake::TimedOut;
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
                if procs.iter().any(|p| !process::is_live(p)) {
                    return Wake::Exited;
                }
            }
        }
    }
}

/// The bell as a directory (Windows, macOS: see the module header).
#[cfg(not(target_os = "linux"))]
mod dir_bell {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Makes the bell directory if needed; `false` unless a real directory is there (a symlink
    /// or a file in its place is not trusted).
    pub fn make(path: &Path) -> bool {
        let _ = std::fs::create_dir_all(path);
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }

    /// Creates and removes a file of our own in the bell directory; nothing when no listener
    /// ever made it.
    pub fn ring(path: &Path) {
        static RINGS: AtomicU64 = AtomicU64::new(0);
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            return;
        }
        let n = RINGS.fetch_add(1, Ordering::Relaxed);
        let file = path.join(format!("{}-{n}", std::process::id()));
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
            .is_ok()
        {
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[cfg(windows)]
mod windows {
    use super::*;
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{
        CloseHandle, HANDLE, INVALID_HANDLE_VALUE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_NOTIFY_CHANGE_FILE_NAME, FindCloseChangeNotification, FindFirstChangeNotificationW,
        FindNextChangeNotification,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_SYNCHRONIZE, WaitForMultipleObjects,
    };

    /// A change notification on the bell directory: signalled when an entry is created,
    /// removed or renamed in it.
    pub struct Watch(HANDLE);

    // SAFETY: a change-notification handle may be waited on, re-armed and closed from any
    // thread; the Watch owns it alone.
    unsafe impl Send for Watch {}
    unsafe impl Sync for Watch {}

    impl Watch {
        pub fn open(path: &Path) -> Option<Watch> {
            if !super::dir_bell::make(path) {
                return None;
            }
            let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
            // SAFETY: a NUL-terminated wide path.
            let h = unsafe {
                FindFirstChangeNotificationW(wide.as_ptr(), 0, FILE_NOTIFY_CHANGE_FILE_NAME)
            };
            (h != INVALID_HANDLE_VALUE && !h.is_null()).then_some(Watch(h))
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            // SAFETY: a change handle we opened.
            unsafe { FindCloseChangeNotification(self.0) };
        }
    }

    /// Sleeps until the directory changes, one of `procs` exits (their handles signal), or
    /// `timeout` passes.
    pub fn wait(watch: Option<&Watch>, procs: &[Process], timeout: Duration) -> Wake {
        let opened: Vec<HANDLE> = procs
            .iter()
            .filter(|p| p.host == process::hostname())
            // SAFETY: OpenProcess has no memory-safety preconditions.
            .map(|p| unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, p.pid) })
            .filter(|h| !h.is_null())
            .take(63) // MAXIMUM_WAIT_OBJECTS, less the bell's
            .collect();
        let mut handles: Vec<HANDLE> = watch.map(|w| w.0).into_iter().collect();
        let bell = handles.len();
        handles.extend(&opened);
        // Opened after checking: make sure each pid was not recycled meanwhile.
        let woke = if procs.iter().any(|p| !process::is_live(p)) {
            Wake::Exited
        } else if handles.is_empty() {
            std::thread::sleep(timeout);
            Wake::TimedOut
        } else {
            let ms = timeout.as_millis().min(u128::from(u32::MAX - 1)) as u32;
            // SAFETY: `handles` holds valid waitable handles, at most 64.
            match unsafe { WaitForMultipleObjects(handles.len() as u32, handles.as_ptr(), 0, ms) } {
                WAIT_TIMEOUT => Wake::TimedOut,
                WAIT_FAILED => {
                    std::thread::sleep(timeout);
                    Wake::TimedOut
                }
                i if bell == 1 && i == WAIT_OBJECT_0 => {
                    // Re-armed before the caller looks: the next change signals again.
                    // SAFETY: the change handle is valid.
                    unsafe { FindNextChangeNotification(handles[0]) };
                    Wake::Rang
                }
                _ => Wake::Exited,
            }
        };
        for h in opened {
            // SAFETY: handles we opened.
            unsafe { CloseHandle(h) };
        }
        woke
    }
}

#[cfg(target_os = "macos")]
mod macos {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    /// A kqueue watching the bell directory for changed entries (`NOTE_WRITE`), and the
    /// directory's descriptor (opened for events only).
    pub struct Watch {
        kq: OwnedFd,
        _dir: OwnedFd,
    }

    fn event(ident: usize, filter: i16, flags: u16, fflags: u32) -> libc::kevent {
        libc::kevent {
            ident,
            filter,
            flags,
            fflags,
            data: 0,
            udata: std::ptr::null_mut(),
        }
    }

    impl Watch {
        pub fn open(path: &Path) -> Option<Watch> {
            if !super::dir_bell::make(path) {
                return None;
            }
            let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
            // SAFETY: a NUL-terminated path.
            let dir = unsafe { libc::open(c.as_ptr(), libc::O_EVTONLY | libc::O_CLOEXEC) };
            if dir < 0 {
                return None;
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let dir = unsafe { OwnedFd::from_raw_fd(dir) };
            // SAFETY: kqueue has no preconditions.
            let kq = unsafe { libc::kqueue() };
            if kq < 0 {
                return None;
            }
            // SAFETY: as above.
            let kq = unsafe { OwnedFd::from_raw_fd(kq) };
            let ev = event(
                dir.as_raw_fd() as usize,
                libc::EVFILT_VNODE,
                libc::EV_ADD | libc::EV_CLEAR,
                libc::NOTE_WRITE,
            );
            // SAFETY: one valid change, no event list.
            let rc = unsafe {
                libc::kevent(
                    kq.as_raw_fd(),
                    &ev,
                    1,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                )
            };
            (rc == 0).then_some(Watch { kq, _dir: dir })
        }
    }

    /// Sleeps until the directory changes, one of `procs` exits, or `timeout` passes.
    pub fn wait(watch: Option<&Watch>, procs: &[Process], timeout: Duration) -> Wake {
        let Some(watch) = watch else {
            std::thread::sleep(timeout);
            return Wake::TimedOut;
        };
        let kq = watch.kq.as_raw_fd();
        let mut watched = Vec::new();
        for p in procs.iter().filter(|p| p.host == process::hostname()) {
            let ev = event(
                p.pid as usize,
                libc::EVFILT_PROC,
                libc::EV_ADD | libc::EV_ONESHOT,
                libc::NOTE_EXIT,
            );
            // SAFETY: one valid change, no event list.
            let rc = unsafe { libc::kevent(kq, &ev, 1, std::ptr::null_mut(), 0, std::ptr::null()) };
            if rc != 0 {
                // ESRCH: already gone.
                return Wake::Exited;
            }
            watched.push(p.pid);
        }
        let woke = if procs.iter().any(|p| !process::is_live(p)) {
            Wake::Exited
        } else {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            let mut out = event(0, 0, 0, 0);
            // SAFETY: no changes, one event to write.
            let n = unsafe { libc::kevent(kq, std::ptr::null(), 0, &mut out, 1, &ts) };
            match n {
                1 if out.filter == libc::EVFILT_VNODE => Wake::Rang,
                1 => Wake::Exited,
                // Timed out, or a signal: the caller looks at its signal flag.
                _ => Wake::TimedOut,
            }
        };
        for pid in watched {
            let ev = event(pid as usize, libc::EVFILT_PROC, libc::EV_DELETE, 0);
            // SAFETY: one valid change; a filter already gone (one-shot) is an ignored error.
            unsafe { libc::kevent(kq, &ev, 1, std::ptr::null_mut(), 0, std::ptr::null()) };
        }
        woke
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

    /// Opens the FIFO for reading (made 0600 if missing); `None` unless it is a FIFO of ours.
    pub fn open(path: &Path) -> Option<OwnedFd> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: a NUL-terminated path; EEXIST (made by another listener) is fine.
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let ours = meta.uid() == unsafe { libc::geteuid() };
        (meta.file_type().is_fifo() && ours).then(|| OwnedFd::from(file))
    }

    pub fn wait(l: &mut Listener, procs: &[Process], timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        let pidfds: Vec<OwnedFd> = procs.iter().filter_map(pidfd).collect();
        let mut fds: Vec<i32> = l.fd.iter().map(|f| f.as_raw_fd()).collect();
        let bell = fds.len();
        fds.extend(pidfds.iter().map(|f| f.as_raw_fd()));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::TimedOut;
            }
            if fds.is_empty() {
                std::thread::sleep(left);
                continue;
            }
            // A timeout a hair early (poll counts whole milliseconds) sleeps the rest.
            let Some(ready) = poll(&fds, left) else {
                continue;
            };
            if ready[bell..].iter().any(|&r| r) {
                return Wake::Exited;
            }
            if bell == 1 && ready[0] {
                // Rung. Bytes someone wrote into the FIFO (`echo > state.bell`) would keep it
                // readable for every listener for ever: drain them. Then listen again before
                // the caller looks, for the next ring.
                if let Some(fd) = &l.fd {
                    drain(fd.as_raw_fd());
                }
                l.fd = open(&l.path);
                return Wake::Rang;
            }
            // A signal: the caller looks at its signal flag.
            return Wake::TimedOut;
        }
    }

    /// Reads whatever the (non-blocking) FIFO holds, up to 1 MiB.
    fn drain(fd: i32) {
        let mut buf = [0u8; 4096];
        for _ in 0..256 {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
        }
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

    /// poll(2) for readability (or hang-up); which fds are ready (none on a signal), or `None`
    /// on timeout.
    fn poll(fds: &[i32], timeout: Duration) -> Option<Vec<bool>> {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Rounded up: never a busy loop of zero-millisecond polls.
        let ms = crate::os::poll::millis_rounded_up(timeout).max(1);
        // SAFETY: `pfds` is a valid array of its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            return Some(vec![false; pfds.len()]);
        }
        if n == 0 {
            return None;
        }
        Some(pfds.iter().map(|p| p.revents != 0).collect())
    }
}

/// Waking on a ring and on a process exit, on every platform (a FIFO and pidfds; a directory
/// watch and process handles; a kqueue).
#[cfg(test)]
mod cross_platform_tests {
    use super::*;

    #[test]
    fn a_ring_wakes_every_listener_and_each_hears_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        let mut listeners: Vec<Listener> = (0..3).map(|_| bell.listen()).collect();
        assert!(
            listeners.iter().all(Listener::is_live),
            "the bell works here"
        );
        for l in &mut listeners {
            assert_eq!(
                l.sleep(Duration::from_millis(30)),
                Wake::TimedOut,
                "no ring yet"
            );
        }
        // Rung from another thread while they sleep; generous bounds, never a timing assert.
        let ringer = bell.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            ringer.ring();
        });
        for l in &mut listeners {
            assert_eq!(l.sleep(Duration::from_secs(120)), Wake::Rang);
        }
        t.join().unwrap();
        for l in &mut listeners {
            // Whatever else the ring left to hear is heard now; then it is quiet.
            while l.sleep(Duration::from_millis(50)) == Wake::Rang {}
        }
        bell.ring();
        for l in &mut listeners {
            assert_eq!(
                l.sleep(Duration::from_secs(120)),
                Wake::Rang,
                "the next ring"
            );
        }
    }

    #[test]
    fn a_ring_between_listening_and_waiting_is_not_missed_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "registry");
        let mut l = bell.listen();
        bell.ring();
        assert_eq!(l.sleep(Duration::from_secs(120)), Wake::Rang);
    }

    #[test]
    fn a_ring_from_another_process_wakes_a_listener() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        let mut l = bell.listen();
        let mut h = crate::os::testing::Helper::start(
            &format!("ring {}", dir.path().join("state.bell").display()),
            false,
        );
        assert_eq!(h.next().as_deref(), Some("rang"));
        assert_eq!(l.sleep(Duration::from_secs(120)), Wake::Rang);
    }

    #[test]
    fn the_exit_of_a_watched_helper_wakes_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Bell::in_dir(dir.path(), "state").listen();
        let mut h = crate::os::testing::Helper::start("exit-soon", false);
        assert_eq!(h.next().as_deref(), Some("ready"));
        let p = process::of(h.pid());
        let start = std::time::Instant::now();
        assert_eq!(
            l.wait(std::slice::from_ref(&p), Duration::from_secs(120)),
            Wake::Exited
        );
        assert!(
            start.elapsed() < Duration::from_secs(100),
            "woken, not timed out"
        );
        h.child.wait().unwrap();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `echo x > state.bell` (a "ring" by hand) leaves bytes in the FIFO: heard once, drained,
    /// not heard again and again (every waiter spun at 100 % of a core).
    #[test]
    fn bytes_written_into_the_bell_are_heard_once() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        let mut l = bell.listen();
        assert!(l.is_live());
        let path = dir.path().join("state.bell");
        let mut w = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().write(true),
            libc::O_NONBLOCK,
        )
        .open(&path)
        .unwrap();
        std::io::Write::write_all(&mut w, b"x\n").unwrap();
        drop(w);
        assert_eq!(l.sleep(Duration::from_secs(5)), Wake::Rang);
        assert_eq!(
            l.sleep(Duration::from_millis(100)),
            Wake::TimedOut,
            "the bytes were drained"
        );
    }

    #[test]
    fn one_ring_wakes_every_listener_and_each_hears_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        let mut listeners: Vec<Listener> = (0..3).map(|_| bell.listen()).collect();
        assert!(listeners.iter().all(Listener::is_live));
        for l in &mut listeners {
            assert_eq!(
                l.sleep(Duration::from_millis(30)),
                Wake::TimedOut,
                "no ring yet"
            );
        }
        let ringer = bell.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            ringer.ring();
        });
        let start = Instant::now();
        for l in &mut listeners {
            assert_eq!(l.sleep(Duration::from_secs(10)), Wake::Rang);
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        // Heard once: the next wait waits for the next ring.
        for l in &mut listeners {
            assert_eq!(l.sleep(Duration::from_millis(30)), Wake::TimedOut);
        }
        bell.ring();
        for l in &mut listeners {
            assert_eq!(l.sleep(Duration::from_secs(10)), Wake::Rang);
        }
    }

    #[test]
    fn a_ring_between_listening_and_waiting_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        let mut l = bell.listen();
        bell.ring();
        assert_eq!(l.sleep(Duration::from_secs(10)), Wake::Rang);
    }

    #[test]
    fn ringing_with_nobody_listening_costs_nothing_and_blocks_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        bell.ring(); // no FIFO yet
        drop(bell.listen()); // a FIFO, nobody listening
        let start = Instant::now();
        bell.ring();
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_bell_that_is_not_a_fifo_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.bell"), b"").unwrap();
        let bell = Bell::in_dir(dir.path(), "state");
        assert!(!bell.listen().is_live());
        bell.ring();
        assert_eq!(std::fs::read(dir.path().join("state.bell")).unwrap(), b"");
    }

    #[test]
    fn sleeps_its_bound_when_nothing_rings() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut l = Bell::in_dir(dir.path(), "state").listen();
        let woke = l.sleep(Duration::from_millis(50));
        assert_eq!(woke, Wake::TimedOut);
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_exit_of_a_watched_process_wakes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Bell::in_dir(dir.path(), "state").listen();
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let p = process::of(child.id());
        let start = Instant::now();
        assert_eq!(
            l.wait(std::slice::from_ref(&p), Duration::from_secs(10)),
            Wake::Exited
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        child.wait().unwrap();
        assert_eq!(
            l.wait(&[p], Duration::from_secs(10)),
            Wake::Exited,
            "already gone"
        );
    }
}
