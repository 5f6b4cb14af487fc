//! Running a program that must end by a deadline (the remote backend's `git`): it runs in its
//! own process group, its output is read without ever blocking past the deadline, and at the
//! deadline the whole group ends: the program and every helper it started (`git-remote-https`,
//! `ssh`), SIGTERM and then SIGKILL.
//!
//! - A helper that inherited the output pipes cannot hold us: the pipes are read with poll(2)
//!   and non-blocking reads, never to an end that may not come.
//! - The group is signalled only while its leader is unreaped (a zombie keeps its pid, and so
//!   the group's id, from being reused): we never signal a process we did not start.
//! - When the program has exited, what is left of its group (a helper it did not wait for) is
//!   ended too, once the pipes are closed or after a short grace.
//! - A signal buildlock received (SIGINT, SIGTERM, SIGHUP, caught by [`crate::os::signals`])
//!   ends the run at once, the same way.
//! - On Linux the program also gets SIGTERM when buildlock itself dies (a parent-death signal),
//!   so that a buildlock killed outright does not leave a stalled git waiting forever.
//! - Windows has no poll(2) on pipes: each pipe is read by a thread of its own that hands what
//!   it reads over a channel (one thread per pipe per run); the loop waits on the channel. A
//!   reader thread that a helper keeps blocked ends when the helper is ended with the tree.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::os::{process, signals};

/// How a run that did not end by itself was ended.
#[derive(Debug)]
pub enum Error {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// The deadline passed: the group was ended. What it had printed so far is kept.
    TimedOut(Unfinished),
    /// buildlock received this signal: the group was ended.
    Interrupted(i32, Unfinished),
}

/// What a run that was stopped had printed, and how long it ran.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub took: Duration,
}

/// How often the loop looks at the child and the signals while the pipes are quiet.
const TICK: Duration = Duration::from_millis(50);
/// Between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_millis(500);
/// How long the pipes may stay open once the program has exited (a helper that inherited them).
const AFTER_EXIT: Duration = Duration::from_millis(500);

/// Runs `command` with stdout and stderr piped and kept, in a process group of its own, for at
/// most `limit`. The caller sets everything else (arguments, environment, stdin).
pub fn run(mut command: Command, limit: Duration) -> Result<Output, Error> {
    let start = Instant::now();
    let deadline = start + limit;
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    process::own_group(&mut command);
    die_with_parent(&mut command);
    let mut child = command.spawn().map_err(Error::Spawn)?;
    drop(command);
    let pgid = child.id();
    let mut pipes = [
        Pipe::new(child.stdout.take().map(pipe_end)),
        Pipe::new(child.stderr.take().map(pipe_end)),
    ];
    let mut exited_at: Option<Instant> = None;
    let stopped = loop {
        if exited_at.is_none() && has_exited(&child) {
            exited_at = Some(Instant::now());
        }
        let open = pipes.iter().any(Pipe::open);
        if let Some(at) = exited_at {
            if !open || at.elapsed() >= AFTER_EXIT {
                break None;
            }
        }
        if let Some(signal) = signals::pending() {
            break Some(Some(signal));
        }
        let now = Instant::now();
        if now >= deadline {
            break Some(None);
        }
        if open {
            poll(&mut pipes, (deadline - now).min(TICK));
        } else {
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
    };
    // Whatever is left of the group (all of it when stopped; a helper git did not wait for
    // otherwise) ends now, while the unreaped leader still holds the group's id.
    end_group(pgid, &mut pipes);
    let status = reap(&mut child);
    let [out, err] = pipes;
    let unfinished = || Unfinished {
        stdout: out.buf.clone(),
        stderr: err.buf.clone(),
        took: start.elapsed(),
    };
    match (stopped, status) {
        (None, Some(status)) => Ok(Output {
            status,
            stdout: out.buf,
            stderr: err.buf,
        }),
        (Some(Some(signal)), _) => Err(Error::Interrupted(signal, unfinished())),
        _ => Err(Error::TimedOut(unfinished())),
    }
}

#[cfg(unix)]
fn pipe_end(pipe: impl Into<std::os::fd::OwnedFd>) -> std::os::fd::OwnedFd {
    pipe.into()
}

#[cfg(windows)]
fn pipe_end<T: Read + Send + 'static>(pipe: T) -> T {
    pipe
}

/// One output pipe, read without blocking, and what came through it.
#[cfg(unix)]
struct Pipe {
    fd: Option<std::fs::File>,
    buf: Vec<u8>,
}

#[cfg(unix)]
impl Pipe {
    fn new(fd: Option<std::os::fd::OwnedFd>) -> Pipe {
        use std::os::fd::AsRawFd;
        let fd = fd.map(std::fs::File::from);
        if let Some(f) = &fd {
            // SAFETY: fcntl on a descriptor we own; only the status flags change.
            unsafe {
                let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Pipe {
            fd,
            buf: Vec::new(),
        }
    }

    fn open(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads what is there now; closes the pipe at its end or on an error.
    fn drain(&mut self) {
        let Some(f) = self.fd.as_mut() else { return };
        let mut chunk = [0u8; 8192];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => {
                    self.fd = None;
                    return;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fd = None;
                    return;
                }
            }
        }
    }
}

/// Waits until one of the open pipes can be read or `timeout` passes, then reads them.
#[cfg(unix)]
fn poll(pipes: &mut [Pipe; 2], timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .filter_map(|p| p.fd.as_ref())
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: fds is a valid array of fds.len() pollfds for the duration of the call. A failure
    // (EINTR) only means reading sooner.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    for p in pipes.iter_mut() {
        p.drain();
    }
}

/// One output pipe, read by a thread of its own (see the module header).
#[cfg(windows)]
struct Pipe {
    rx: Option<std::sync::mpsc::Receiver<Option<Vec<u8>>>>,
    buf: Vec<u8>,
}

#[cfg(windows)]
impl Pipe {
    fn new(pipe: Option<impl Read + Send + 'static>) -> Pipe {
        let rx = pipe.map(|mut pipe| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(n) if n > 0 => {
                            if tx.send(Some(chunk[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        _ => break,
                    }
                }
                let _ = tx.send(None);
            });
            rx
        });
        Pipe {
            rx,
            buf: Vec::new(),
        }
    }

    fn open(&self) -> bool {
        self.rx.is_some()
    }

    /// Takes what the reader handed over, waiting at most `timeout` for the first chunk.
    fn take(&mut self, timeout: Duration) {
        use std::sync::mpsc::RecvTimeoutError;
        let Some(rx) = self.rx.as_ref() else { return };
        let mut wait = timeout;
        loop {
            match rx.recv_timeout(wait) {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    self.rx = None;
                    return;
                }
                Err(RecvTimeoutError::Timeout) => return,
            }
            wait = Duration::ZERO;
        }
    }

    fn drain(&mut self) {
        self.take(Duration::ZERO);
    }
}

/// Waits until one of the open pipes brought something or `timeout` passes, then reads them.
#[cfg(windows)]
fn poll(pipes: &mut [Pipe; 2], timeout: Duration) {
    if let Some(first) = pipes.iter_mut().find(|p| p.open()) {
        first.take(timeout);
    }
    for p in pipes.iter_mut() {
        p.drain();
    }
}

/// Windows: the child's handle, held by `Child` until it is dropped, keeps its pid from reuse.
#[cfg(windows)]
fn has_exited(child: &Child) -> bool {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::WAIT_OBJECT_0;
    // SAFETY: a valid process handle, owned by `child`.
    unsafe {
        windows_sys::Win32::System::Threading::WaitForSingleObject(child.as_raw_handle(), 0)
            == WAIT_OBJECT_0
    }
}

/// Whether the child has exited, without reaping it (its pid stays taken, so its group's id
/// cannot be reused while we may still signal the group).
#[cfg(unix)]
fn has_exited(child: &Child) -> bool {
    // SAFETY: waitid with WNOWAIT only reads the child's state into `info`, which is zeroed.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            child.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

/// Ends whatever still runs in group `pgid` (whose leader is unreaped): SIGTERM, then SIGKILL
/// after [`GRACE`], reading the pipes meanwhile so nobody blocks on a full one.
fn end_group(pgid: u32, pipes: &mut [Pipe; 2]) {
    if !process::group_alive(pgid) {
        return;
    }
    process::kill_group(pgid, signals::SIGTERM);
    let until = Instant::now() + GRACE;
    while process::group_alive(pgid) {
        if Instant::now() >= until {
            process::kill_group(pgid, signals::SIGKILL);
            break;
        }
        poll(pipes, Duration::from_millis(20));
    }
    // Once killed, the rest is only what is already in the pipes.
    for p in pipes.iter_mut() {
        p.drain();
    }
}

/// Reaps the child: at once when it exited; a killed one within a few seconds at most (a
/// process in uninterruptible sleep is left to the kernel rather than waited on forever).
fn reap(child: &mut Child) -> Option<ExitStatus> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// On Linux: SIGTERM to the program when the thread that started it dies (buildlock killed),
/// so that git ends and, in turn, stops its helpers. [`run`] does not return while the program
/// runs, so the starting thread outlives it in every other case.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe; nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]).stdin(Stdio::null());
        c
    }

    #[test]
    fn output_and_status_of_a_run_that_ends_in_time() {
        let out = run(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_helper_that_holds_the_pipes_past_the_deadline_is_ended_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The "helper" keeps both pipes open and ignores SIGTERM; the program waits for it.
        let script = format!(
            "echo $$ > {p}; echo said >&2; sh -c 'trap \"\" TERM; sleep 60' & wait",
            p = pids.display()
        );
        let start = Instant::now();
        let r = run(sh(&script), Duration::from_secs(2));
        let took = start.elapsed();
        let Err(Error::TimedOut(u)) = r else {
            panic!("not timed out: {r:?}")
        };
        assert!(took < Duration::from_secs(20), "took {took:?}");
        assert_eq!(u.stderr, b"said\n");
        let group: u32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILLed: gone once the kernel has torn it down and its reaper (init, for the
        // orphaned helper) has reaped it, which a loaded machine can take a moment to do.
        let gone_by = Instant::now() + Duration::from_secs(30);
        while process::group_alive(group) && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!process::group_alive(group), "group {group} still runs");
    }

    #[test]
    fn a_helper_left_after_the_program_exited_does_not_hold_the_run() {
        let start = Instant::now();
        let out = run(sh("sleep 60 & echo done"), Duration::from_secs(30)).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"done\n");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_program_that_cannot_start_says_so() {
        let r = run(
            Command::new("/nonexistent/buildlock-test"),
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(Error::Spawn(_))), "{r:?}");
    }
}
