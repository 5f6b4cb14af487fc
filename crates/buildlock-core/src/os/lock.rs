//! The locks: the only module that takes one.
//!
//! Locks are advisory `flock`s (through fd-lock) on empty files that are never deleted, renamed or
//! truncated. The kernel frees a dead holder's lock at once, so a crashed process never leaves a
//! stale lock. Files are opened with `O_CLOEXEC` (Rust's default), so children never inherit one.
//!
//! - The election lock (`locks/election.lock`) is held only for one read-decide-write step.
//! - A key's fixer lock (`locks/<key>.fixer`) is held by commit-retry for a whole fix: while it is
//!   held the fixer is alive; once free, a registered fixer is dead.
//!
//! After locking, the file at the path must still be the file we locked: if the directory was
//! removed or the file replaced, another process could lock the new file and two "holders" would
//! coexist, so we start over on the file now at the path. That same check makes it safe to delete
//! a lock file that is no longer needed ([`remove_if_free`]): it is unlinked only while held, and
//! anyone who opened it before will find it gone after locking and start over.
//!
//! Lock files are opened with `O_NOFOLLOW`: a symlink planted in their place is refused.
//!
//! Windows: fd-lock takes `LockFileEx` (exclusive, fail-immediately) on the whole file, which the
//! kernel also frees when the holder dies; the file identity is the volume serial and file index
//! ([`crate::os::fs::file_id`]). Windows does not tell who holds a lock ([`holder`] is `None`),
//! so `doctor` and the stray sweeps name no holder there.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// A held exclusive lock. Dropping it closes the file, which releases the lock.
#[must_use = "the lock is released when this is dropped"]
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    // fd-lock takes the lock (flock on Unix, LockFileEx on Windows), but its guard borrows the
    // `RwLock`, so it cannot live in this struct beside it. The guard is forgotten instead: both
    // kinds of lock last as long as the open file, which this value owns, so closing the file on
    // drop is the unlock (and a crashed holder's lock is freed by the kernel the same way).
    _file: fd_lock::RwLock<File>,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if nobody holds it: `Ok(None)` when someone does.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        Self::take_at(path, &mut || false, |lock, _| match lock.try_write() {
            Ok(guard) => {
                std::mem::forget(guard);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(with_path(e, path)),
        })
    }

    /// The one way a lock is taken: open the file at `path`, lock it with `take` (`Ok(false)`:
    /// not taken, `Ok(None)` here), and keep it only if the path still names the file that was
    /// locked; else start over on the file now there (see the module header). `give_up` is
    /// asked before each open, so that a wait given up never makes a removed lock file again,
    /// and handed to `take` for its own waits.
    fn take_at(
        path: &Path,
        give_up: &mut dyn FnMut() -> bool,
        mut take: impl FnMut(&mut fd_lock::RwLock<File>, &mut dyn FnMut() -> bool) -> io::Result<bool>,
    ) -> io::Result<Option<Lock>> {
        for _ in 0..8 {
            if give_up() {
                return Ok(None);
            }
            let file = open(path)?;
            let opened = crate::os::fs::file_id(&file).map_err(|e| with_path(e, path))?;
            let mut lock = fd_lock::RwLock::new(file);
            if !take(&mut lock, give_up)? {
                return Ok(None);
            }
            if crate::os::fs::path_id(path).is_ok_and(|id| id == opened) {
                return Ok(Some(Lock {
                    path: path.to_owned(),
                    _file: lock,
                }));
            }
        }
        Err(io::Error::other(format!(
            "{} keeps being replaced while we lock it",
            path.display()
        )))
    }

    /// Takes the lock, waiting for at most `timeout`; `on_wait` is called once when the lock is
    /// found held for longer than a moment. `Ok(None)` when the time ran out.
    pub fn acquire(
        path: &Path,
        timeout: Duration,
        on_wait: impl FnMut(),
    ) -> io::Result<Option<Lock>> {
        Self::acquire_or_stop(path, timeout, on_wait, || false)
    }

    /// [`Lock::acquire`] that also gives up (`Ok(None)`) as soon as `stop` says so: a signal
    /// arrived, or the parent went away. A person waiting on a lock can always leave.
    ///
    /// A held lock is waited for in the kernel (a blocking flock, LockFileEx on Windows), so it
    /// passes to the next holder the moment it is freed: polling with a backoff left it idle
    /// between tries, and 64 agents failing at once took 5× the time of the same steps handed on
    /// at once. `stop` and the time are looked at every tick: on Linux a timer of this thread's
    /// own interrupts the flock (SIGALRM, see [`Ticker`]); elsewhere, or if the timer cannot be
    /// made, the blocking call runs on a thread of its own while this one looks (a thread cost
    /// a fifth of a waiting agent's CPU: its start, and a wake-up to hand the lock over). When we
    /// give up, that thread is told so: if it gets the lock later, it drops it at once (and
    /// takes no lock file that was removed meanwhile).
    pub fn acquire_or_stop(
        path: &Path,
        timeout: Duration,
        mut on_wait: impl FnMut(),
        stop: impl Fn() -> bool,
    ) -> io::Result<Option<Lock>> {
        if let Some(lock) = Self::try_acquire(path)? {
            return Ok(Some(lock));
        }
        let start = Instant::now();
        let mut told = false;
        // Whether to give up now; tells once when the wait has been long.
        let mut give_up = || {
            let waited = start.elapsed();
            if !told && waited >= Duration::from_secs(1) {
                told = true;
                on_wait();
            }
            waited >= timeout || stop()
        };
        #[cfg(target_os = "linux")]
        if let Ok(_ticker) = Ticker::start(TICK) {
            return Self::acquire_blocking(path, &mut give_up);
        }
        Self::acquire_on_a_thread(path, &mut give_up)
    }

    /// The blocking call on a thread of its own (see [`Lock::acquire_or_stop`]).
    fn acquire_on_a_thread(
        path: &Path,
        give_up: &mut dyn FnMut() -> bool,
    ) -> io::Result<Option<Lock>> {
        let wanted = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let (path, wanted) = (path.to_owned(), wanted.clone());
            std::thread::Builder::new()
                .name("lock wait".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    let got = Self::acquire_blocking(&path, &mut || !wanted.load(Ordering::SeqCst));
                    // Refused when we gave up meanwhile: the lock is dropped, so released.
                    let _ = tx.send(got);
                })?;
        }
        let stop_waiting = || {
            wanted.store(false, Ordering::SeqCst);
            Ok(None)
        };
        loop {
            if give_up() {
                return stop_waiting();
            }
            match rx.recv_timeout(TICK) {
                Ok(Ok(Some(lock))) => return Ok(Some(lock)),
                Ok(Ok(None)) => return stop_waiting(),
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other(format!(
                        "the thread waiting for the lock {} ended without it",
                        path.display()
                    )));
                }
            }
        }
    }

    /// Blocks until the lock is ours (see [`Lock::take_at`]). Each interruption of the wait (a
    /// signal: the caller's [`Ticker`], or any other) asks `give_up`; `Ok(None)` when it says
    /// so.
    fn acquire_blocking(
        path: &Path,
        give_up: &mut dyn FnMut() -> bool,
    ) -> io::Result<Option<Lock>> {
        Self::take_at(path, give_up, |lock, give_up| {
            loop {
                match lock.write() {
                    Ok(guard) => {
                        std::mem::forget(guard);
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        if give_up() {
                            return Ok(false);
                        }
                    }
                    Err(e) => return Err(with_path(e, path)),
                }
            }
        })
    }
}

/// A timer that sends SIGALRM to this thread (and to no other) every tick while it lives, so
/// that a blocking call here returns EINTR that often (the handler does nothing and is
/// installed without SA_RESTART: [`crate::os::signals::interrupt_on_alarm`]). Linux only
/// (`SIGEV_THREAD_ID`): a process-wide alarm could land on another thread and leave this one
/// blocked. A signal still pending when the timer is deleted is delivered on the way out of
/// that call, so it interrupts nothing later.
///
/// SIGALRM is unblocked on this thread while the timer lives (and the mask put back after): the
/// mask is inherited across exec, and a hook started with SIGALRM blocked (by a parent that
/// blocks it) never saw a tick, so its wait ignored its timeout and Ctrl-C (SIGINT restarts the
/// flock) for as long as the holder held on.
#[cfg(target_os = "linux")]
struct Ticker {
    timer: libc::timer_t,
    mask: libc::sigset_t,
}

#[cfg(target_os = "linux")]
impl Ticker {
    fn start(every: Duration) -> io::Result<Ticker> {
        crate::os::signals::interrupt_on_alarm();
        // SAFETY: timer_create, timer_settime and pthread_sigmask are given fully initialised
        // structs; the timer is deleted once, by Drop, which also puts the mask back.
        unsafe {
            let mut alarm: libc::sigset_t = std::mem::zeroed();
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut alarm);
            libc::sigaddset(&mut alarm, libc::SIGALRM);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &alarm, &mut mask);
            let restore = |mask: &libc::sigset_t| {
                libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut())
            };
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = libc::SIGALRM;
            // The system call, not glibc's gettid(): that one only came with glibc 2.30.
            event.sigev_notify_thread_id = libc::syscall(libc::SYS_gettid) as libc::pid_t;
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) != 0 {
                let e = io::Error::last_os_error();
                restore(&mask);
                return Err(e);
            }
            let tick = libc::timespec {
                tv_sec: every.as_secs() as _,
                tv_nsec: every.subsec_nanos() as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: tick,
                it_value: tick,
            };
            if libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) != 0 {
                let e = io::Error::last_os_error();
                libc::timer_delete(id);
                restore(&mask);
                return Err(e);
            }
            Ok(Ticker { timer: id, mask })
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Ticker {
    fn drop(&mut self) {
        // SAFETY: the timer was made by `start` and is deleted only here; the mask is the one
        // `start` found. Deleted first, so that a tick still pending is delivered (unblocked).
        unsafe {
            libc::timer_delete(self.timer);
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.mask, std::ptr::null_mut());
        }
    }
}

/// How often a wait for a lock looks at `stop` and the time.
const TICK: Duration = Duration::from_millis(50);

/// Who holds the lock at `path`, where the OS tells (Linux `/proc/locks`): the pid, and whether
/// that process is stopped (SIGSTOP or a debugger), which keeps a lock for as long as it lasts.
#[cfg(unix)]
pub fn holder(path: &Path) -> Option<(u32, bool)> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).ok()?.ino();
    // In one read: the kernel lists /proc/locks a record at a time from an index, so a lock
    // freed between two reads shifts the list and skips a line (a held lock went unnamed in 92
    // of 654 small reads while others took and freed locks). One read fills the whole buffer.
    let mut locks = String::with_capacity(1 << 20);
    std::fs::File::open("/proc/locks")
        .ok()?
        .read_to_string(&mut locks)
        .ok()?;
    let pid: u32 = locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, dev_ino) = (f.get(1)?, f.get(4)?, f.get(5)?);
        (*kind == "FLOCK" && dev_ino.rsplit(':').next()?.parse::<u64>().ok()? == ino)
            .then(|| pid.parse().ok())?
    })?;
    Some((pid, crate::os::process::stat(pid).ok()?.stopped()))
}

/// Windows does not say who holds a LockFileEx lock.
#[cfg(windows)]
pub fn holder(_path: &Path) -> Option<(u32, bool)> {
    None
}

/// Whether nobody holds the lock at `path` right now. A missing file is free.
pub fn is_free(path: &Path) -> io::Result<bool> {
    if !path.exists() {
        return Ok(true);
    }
    Ok(Lock::try_acquire(path)?.is_some())
}

/// Deletes the lock file at `path` if nobody holds it: it is unlinked while we hold it, so a
/// process that opened it earlier finds, once it gets the lock, that the path no longer names
/// its file, and starts over on a new one. Returns whether the file is gone.
pub fn remove_if_free(path: &Path) -> bool {
    if std::fs::symlink_metadata(path).is_err() {
        return true;
    }
    match Lock::try_acquire(path) {
        Ok(Some(held)) => {
            let removed = std::fs::remove_file(path).is_ok();
            drop(held);
            removed
        }
        _ => false,
    }
}

/// Whether locking really works in `dir`: a second handle in the same process must be refused
/// while the first holds the lock. Fails on file systems that fake or ignore flock (NFS, some
/// container file systems).
pub fn locking_works(dir: &Path) -> io::Result<bool> {
    let path = dir.join("locks").join("probe.lock");
    let Some(_held) = Lock::try_acquire(&path)? else {
        // Someone else is probing right now: that refusal is itself proof.
        return Ok(true);
    };
    Ok(Lock::try_acquire(&path)?.is_none())
}

/// Opens a lock file, read-only (flock needs no more), creating it if missing.
fn open(path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        // std refuses `create` without write access, so a read-only create asks for O_CREAT
        // directly.
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CREAT)
            .mode(0o644)
            .open(path)
    };
    // Windows: write access to create (never truncated: no data is ever written); a symlink in
    // its place is opened as itself and refused.
    #[cfg(windows)]
    let open = || {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        crate::os::fs::no_follow(&mut opts);
        crate::os::fs::refuse_link(opts.open(path)?)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
            }
            open().map_err(|e| with_path(e, path))
        }
        other => other.map_err(|e| with_path(e, path)),
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/a.lock");
        let first = Lock::try_acquire(&path).unwrap().expect("free at first");
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        assert!(!is_free(&path).unwrap());
        drop(first);
        assert!(is_free(&path).unwrap());
        assert!(Lock::try_acquire(&path).unwrap().is_some());
    }

    // Windows keeps a deleted file that is open at its path until its last handle closes: the
    // path cannot name a second file meanwhile, so there is nothing to test there.
    #[cfg(unix)]
    #[test]
    fn a_lock_file_replaced_while_held_is_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/a.lock");
        let _first = Lock::try_acquire(&path).unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        // The new file at the path is a different lock; taking it is right, and it is checked.
        let second = Lock::try_acquire(&path).unwrap().unwrap();
        assert!(second.path().exists());
    }

    #[test]
    fn acquire_gives_up_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let _held = Lock::try_acquire(&path).unwrap().unwrap();
        let start = Instant::now();
        assert!(
            Lock::acquire(&path, Duration::from_millis(120), || {})
                .unwrap()
                .is_none()
        );
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    /// A wait given up leaves nothing behind: the thread still blocked in the kernel drops the
    /// lock as soon as it gets it, and does not create again a lock file removed meanwhile.
    #[test]
    fn a_wait_given_up_holds_nothing_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.lock");
        let held = Lock::try_acquire(&path).unwrap().unwrap();
        assert!(
            Lock::acquire(&path, Duration::from_millis(100), || {})
                .unwrap()
                .is_none()
        );
        drop(held);
        // The abandoned waiter may take the freed lock for an instant; never for longer.
        let got = Lock::acquire(&path, Duration::from_secs(60), || {}).unwrap();
        assert!(
            got.is_some(),
            "the lock was kept by a wait that was given up"
        );
        drop(got);

        let held = Lock::try_acquire(&path).unwrap().unwrap();
        assert!(
            Lock::acquire_or_stop(&path, Duration::from_secs(60), || {}, || true)
                .unwrap()
                .is_none()
        );
        std::fs::remove_file(&path).unwrap();
        drop(held);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !path.exists(),
            "a given-up wait made the removed lock file again"
        );
    }

    /// A freed lock goes to a waiter that was blocked on it, from another thread as from
    /// another process.
    #[test]
    fn a_waiter_gets_the_lock_its_holder_frees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.lock");
        let held = Lock::try_acquire(&path).unwrap().unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || Lock::acquire(&path, Duration::from_secs(60), || {}))
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let got = waiter.join().unwrap().unwrap();
        assert!(got.is_some());
        assert!(
            Lock::try_acquire(&path).unwrap().is_none(),
            "held by the waiter"
        );
    }

    /// The signal mask is inherited across exec: a hook whose parent blocked SIGALRM must still
    /// see its ticks, or its wait ignores its timeout (and Ctrl-C) while the holder holds on.
    // regression: the flock was never interrupted and the wait lasted as long as the holder
    #[cfg(target_os = "linux")]
    #[test]
    fn a_wait_times_out_on_a_thread_that_blocks_sigalrm() {
        fn alarm_blocked() -> bool {
            // SAFETY: reading this thread's mask into a zeroed set.
            unsafe {
                let mut now: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
                libc::sigismember(&now, libc::SIGALRM) == 1
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.lock");
        let held = Lock::try_acquire(&path).unwrap().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                // SAFETY: blocking one signal on this thread only.
                unsafe {
                    let mut alarm: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut alarm);
                    libc::sigaddset(&mut alarm, libc::SIGALRM);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &alarm, std::ptr::null_mut());
                }
                let got = Lock::acquire(&path, Duration::from_millis(200), || {}).unwrap();
                tx.send((got.is_some(), alarm_blocked())).unwrap();
            })
        };
        // Generous: the wait itself is 200 ms.
        let answer = rx.recv_timeout(Duration::from_secs(30));
        drop(held); // frees a wait stuck in the kernel, so the thread ends either way
        waiter.join().unwrap();
        assert_eq!(
            answer,
            Ok((false, true)),
            "(got the lock, SIGALRM blocked after): the wait did not time out, or the mask changed"
        );
    }

    #[test]
    fn the_holder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.lock");
        let _held = Lock::try_acquire(&path).unwrap().unwrap();
        if cfg!(unix) && std::path::Path::new("/proc/locks").exists() {
            assert_eq!(holder(&path), Some((std::process::id(), false)));
        }
    }

    #[test]
    fn a_lock_file_is_removed_only_when_free_and_racers_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.fixer");
        let held = Lock::try_acquire(&path).unwrap().unwrap();
        assert!(!remove_if_free(&path), "held: kept");
        drop(held);
        // Many threads lock and delete the same path at once; never two holders at a time.
        let holders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (path, holders) = (path.clone(), holders.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        match Lock::try_acquire(&path) {
                            Ok(Some(lock)) => {
                                let n = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                assert_eq!(n, 0, "two holders of one lock path");
                                holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                                drop(lock);
                            }
                            Ok(None) => {}
                            // Eight threads deleting the path in a loop can replace it under one
                            // racer eight times in a row (under load): it gives up, holding
                            // nothing, which is safe.
                            Err(e) if e.to_string().contains("keeps being replaced") => {}
                            Err(e) => panic!("{e}"),
                        }
                        remove_if_free(&path);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn acquire_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let _held = Lock::try_acquire(&path).unwrap().unwrap();
        let start = Instant::now();
        let got = Lock::acquire_or_stop(&path, Duration::from_secs(60), || {}, || true).unwrap();
        assert!(got.is_none() && start.elapsed() < Duration::from_secs(5));
    }

    /// Between two processes, on every platform (flock; LockFileEx on Windows): refused while
    /// the other holds it, free once the holder is killed, with no unlock of its own.
    #[test]
    fn another_process_is_refused_the_lock_until_its_holder_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/x.lock");
        let mut holder =
            crate::os::testing::Helper::start(&format!("lock {}", path.display()), false);
        assert_eq!(holder.next().as_deref(), Some("locked"));
        assert!(
            Lock::try_acquire(&path).unwrap().is_none(),
            "held by the helper"
        );
        let mut other =
            crate::os::testing::Helper::start(&format!("lock {}", path.display()), false);
        assert_eq!(
            other.next().as_deref(),
            Some("refused"),
            "and refused to a third process"
        );
        holder.child.kill().unwrap();
        holder.child.wait().unwrap();
        // Freed by the kernel: generous room, never a fixed sleep.
        let got = Lock::acquire(&path, Duration::from_secs(60), || {}).unwrap();
        assert!(got.is_some(), "the dead holder's lock was never freed");
    }

    #[test]
    fn locking_works_here() {
        assert!(locking_works(tempfile::tempdir().unwrap().path()).unwrap());
    }

    #[test]
    fn lock_files_are_created_with_their_folder_and_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/x.lock");
        drop(Lock::try_acquire(&path).unwrap().unwrap());
        std::fs::write(&path, b"keep").unwrap();
        drop(Lock::try_acquire(&path).unwrap().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
