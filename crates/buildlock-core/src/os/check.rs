//! Running the check (and the fix): in its own process group, output streamed to stderr and kept
//! for the failure log, bounded by a timeout.
//!
//! - On SIGINT, SIGTERM or SIGHUP the whole group is stopped (TERM, then KILL after a grace) and
//!   the run ends as [`Ending::Signal`]; nothing is recorded as a failure.
//! - When our parent process changes (git was killed and we were orphaned) the group is stopped
//!   the same way: [`Ending::ParentGone`].
//! - A daemon started by the command that keeps our output pipe open does not hold us: once the
//!   command itself has exited we stop reading after a short grace. It inherits no lock either:
//!   every file buildlock opens is close-on-exec.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read;
#[cfg(target_os = "linux")]
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
#[cfg(not(unix))]
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::os::{process, say, signals};

#[derive(Clone, Debug)]
pub enum Command {
    /// Run with `sh -c`.
    Shell(String),
    /// A program with arguments (a chained hook).
    Program(PathBuf, Vec<OsString>),
}

impl Command {
    pub fn describe(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Program(p, _) => p.display().to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Passed,
    /// Exited non-zero (the code), or was killed by a signal it did not get from us (None).
    Failed(Option<i32>),
    TimedOut(Duration),
    /// We received this signal and stopped the command.
    Signal(i32),
    /// Our parent went away and we stopped the command.
    ParentGone,
}

#[derive(Debug)]
pub struct Run {
    pub ending: Ending,
    pub output: Vec<u8>,
    pub took: Duration,
}

pub struct Options<'a> {
    pub dir: &'a Path,
    pub timeout: Duration,
    /// Stream the output to stderr as it comes.
    pub echo: bool,
    pub env: Vec<(String, OsString)>,
    /// Stop when our parent pid is no longer this one.
    pub parent: Option<u32>,
    /// Called once the command runs, with its process group id.
    pub on_start: &'a mut dyn FnMut(u32),
    /// Polled while the command runs: `true` stops it (the fixer was taken over).
    pub cancel: &'a dyn Fn() -> bool,
}

const TICK: Duration = Duration::from_millis(50);
const GRACE: Duration = Duration::from_secs(2);
const KEEP_HEAD: usize = 64 << 10;
const KEEP_TAIL: usize = 16 << 20;

/// The POSIX shell: `/bin/sh` where it is (no PATH search: on a PATH with many entries before
/// it, each commit paid one failed exec per entry), else `sh` from PATH.
fn shell() -> &'static str {
    if std::path::Path::new("/bin/sh").exists() {
        "/bin/sh"
    } else {
        "sh"
    }
}

pub fn run(command: &Command, opts: Options<'_>) -> std::io::Result<Run> {
    let start = Instant::now();
    let (reader, writer) = std::io::pipe()?;
    let (program, args): (&std::ffi::OsStr, Vec<&std::ffi::OsStr>) = match command {
        Command::Shell(script) => (shell().as_ref(), vec!["-c".as_ref(), script.as_ref()]),
        Command::Program(path, args) => (
            path.as_os_str(),
            args.iter().map(|a| a.as_os_str()).collect(),
        ),
    };
    let cannot_start = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot start `{}`: {e}", command.describe()),
        )
    };
    // Linux: started without forking us (see os/spawn.rs), when it is named by a path.
    #[cfg(target_os = "linux")]
    let child: Box<dyn Child> = if program.as_bytes().contains(&b'/') {
        Box::new(
            crate::os::spawn::in_own_group(program, &args, opts.dir, &opts.env, writer.into())
                .map_err(cannot_start)?,
        )
    } else {
        Box::new(std_spawn(program, &args, &opts, writer).map_err(cannot_start)?)
    };
    #[cfg(not(target_os = "linux"))]
    let child = std_spawn(program, &args, &opts, writer).map_err(cannot_start)?;
    let pgid = child.id();
    (opts.on_start)(pgid);

    let (ending, mut output) = watch(child, reader, &opts, start)?;
    if let Ending::TimedOut(t) = &ending {
        output.extend_from_slice(
            format!("\nbuildlock: the check was still running after {} (check_timeout) and was stopped\n", crate::os::time::human(*t))
                .as_bytes(),
        );
    }
    Ok(Run {
        ending,
        output,
        took: start.elapsed(),
    })
}

/// Starts the command with std's `Command` (which forks where it cannot use posix_spawn).
fn std_spawn(
    program: &std::ffi::OsStr,
    args: &[&std::ffi::OsStr],
    opts: &Options<'_>,
    writer: std::io::PipeWriter,
) -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(opts.dir)
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    process::own_group(&mut cmd);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    // The Command holds our copies of the pipe's write end: dropped with it, or we would never
    // see EOF.
    cmd.spawn()
}

/// The started command, as `watch` needs it: std's child, or ours where we spawn it ourselves.
#[cfg(unix)]
trait Child {
    fn id(&self) -> u32;
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>>;
}

#[cfg(unix)]
impl Child for std::process::Child {
    fn id(&self) -> u32 {
        std::process::Child::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        std::process::Child::try_wait(self)
    }
}

#[cfg(target_os = "linux")]
impl<C: Child + ?Sized> Child for Box<C> {
    fn id(&self) -> u32 {
        (**self).id()
    }
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        (**self).try_wait()
    }
}

#[cfg(target_os = "linux")]
impl Child for crate::os::spawn::Spawned {
    fn id(&self) -> u32 {
        crate::os::spawn::Spawned::id(self)
    }
    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        crate::os::spawn::Spawned::try_wait(self)
    }
}

/// Reads the output and waits for the command on this thread: `poll` on the pipe, bounded by the
/// tick at which signals, the parent, `cancel` and the timeout are looked at. No thread, so no
/// thread stack to fault in on every commit.
#[cfg(unix)]
fn watch(
    mut child: impl Child,
    mut reader: std::io::PipeReader,
    opts: &Options<'_>,
    start: Instant,
) -> std::io::Result<(Ending, Vec<u8>)> {
    let pgid = child.id();
    let mut capture = Capture::default();
    let mut buf = vec![0u8; 16 << 10];
    // One read of what `poll` said is there; `false` at the end of the output.
    let mut read = |reader: &mut std::io::PipeReader, capture: &mut Capture| -> bool {
        match reader.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                if opts.echo {
                    say::raw(&buf[..n]);
                }
                capture.push(&buf[..n]);
                true
            }
            Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
        }
    };
    let stop = |why: Ending, child: &mut dyn Child| {
        let deadline = Instant::now() + GRACE;
        process::kill_group(pgid, signals::SIGTERM);
        if !exited_within(child, GRACE) {
            process::kill_group(pgid, signals::SIGKILL);
            exited_within(child, GRACE);
        }
        // The rest of the group gets the same grace as its leader (a `sh -c` leader dies at once
        // on SIGTERM; the script it runs may be cleaning up in a trap), then SIGKILL.
        while process::group_alive(pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        process::kill_group(pgid, signals::SIGKILL);
        why
    };
    let mut open = true;
    // Once the output has ended, the command's exit follows within microseconds (its files are
    // closed before it becomes a zombie): look again soon, then every tick (a command that
    // closed its output and runs on).
    let mut pause = Duration::from_micros(50);
    // Signals, the parent, `cancel` and the timeout are looked at once a tick, as with a thread
    // waiting for the exit: an exit within the tick wins (a fix that ended as its fixer's pass
    // marked the key passing is a fix that ended, not a fixer that lost its role).
    let mut look_at = Instant::now() + TICK;
    #[cfg(target_os = "linux")]
    let mut exit_fd: Option<Option<std::os::fd::OwnedFd>> = None;
    let ending = loop {
        if let Some(status) = child.try_wait()? {
            break ending_of(status);
        }
        if Instant::now() >= look_at {
            look_at = Instant::now() + TICK;
            if let Some(signal) = signals::pending() {
                break stop(Ending::Signal(signal), &mut child);
            }
            if opts.parent.is_some_and(|p| p != process::parent_id()) {
                break stop(Ending::ParentGone, &mut child);
            }
            if (opts.cancel)() {
                break stop(Ending::Failed(None), &mut child);
            }
            if start.elapsed() >= opts.timeout {
                break stop(Ending::TimedOut(opts.timeout), &mut child);
            }
        }
        let until_look = look_at.saturating_duration_since(Instant::now());
        if open {
            if readable(&reader, until_look) {
                open = read(&mut reader, &mut capture);
            }
        } else {
            // Linux: until the exit itself (a pidfd is readable once the child is a zombie),
            // instead of looking again and again: on a busy machine the exit can come long
            // after the output ends, and 64 agents' looks were a fifth of their CPU.
            #[cfg(target_os = "linux")]
            if let Some(exited) = exit_fd.get_or_insert_with(|| pidfd(pgid)) {
                use std::os::fd::AsFd;
                crate::os::poll::input(exited.as_fd(), until_look);
                continue;
            }
            std::thread::sleep(pause.min(until_look));
            pause = (pause * 2).min(TICK);
        }
    };
    // The command is done. Read to the end of its output, as long as output still comes; a
    // daemon it left that holds the pipe open (and is quiet) ends the wait after a moment.
    let mut quiet_since = Instant::now();
    let drained_by = Instant::now() + Duration::from_secs(10);
    while open && Instant::now() < drained_by {
        if readable(&reader, Duration::from_millis(20)) {
            let before = capture.total;
            open = read(&mut reader, &mut capture);
            if capture.total != before {
                quiet_since = Instant::now();
            }
        } else if quiet_since.elapsed() >= Duration::from_millis(200) {
            break;
        }
    }
    Ok((ending, capture.into_bytes()))
}

/// Whether `poll` says the pipe has something to read (output, its end, or an error) within
/// `limit`. A signal cuts the wait short (`false`): the caller looks at it.
#[cfg(unix)]
fn readable(reader: &std::io::PipeReader, limit: Duration) -> bool {
    use std::os::fd::AsFd;
    crate::os::poll::input(reader.as_fd(), limit) == crate::os::poll::Ready::Readable
}

/// A pidfd of our child `pid` (not reaped yet, so the pid cannot be another process's), readable
/// once it exits; `None` where the kernel has none (before Linux 5.3).
#[cfg(target_os = "linux")]
fn pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a descriptor the kernel just returned to us, owned by nothing else.
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// Whether the child exited (and was reaped) within `limit`.
#[cfg(unix)]
fn exited_within(child: &mut dyn Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads the output and waits for the command with two threads (Windows has no `poll` on a
/// pipe): one reads, one waits; this one ticks.
#[cfg(not(unix))]
fn watch(
    child: std::process::Child,
    mut reader: std::io::PipeReader,
    opts: &Options<'_>,
    start: Instant,
) -> std::io::Result<(Ending, Vec<u8>)> {
    let pgid = child.id();
    let echo = opts.echo;
    // Shared, not sent at EOF: a daemon the command left may hold the pipe open for ever, and
    // what was read until then is the failure's output all the same.
    let capture = std::sync::Arc::new(std::sync::Mutex::new(Capture::default()));
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    let shared = capture.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if echo {
                        say::raw(&buf[..n]);
                    }
                    if let Ok(mut c) = shared.lock() {
                        c.push(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = eof_tx.send(());
    });
    let (exit_tx, exit_rx) = mpsc::channel();
    let mut child: std::process::Child = child;
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });

    let stop = |why: Ending, exit_rx: &mpsc::Receiver<std::io::Result<ExitStatus>>| {
        let deadline = Instant::now() + GRACE;
        process::kill_group(pgid, signals::SIGTERM);
        if exit_rx.recv_timeout(GRACE).is_err() {
            process::kill_group(pgid, signals::SIGKILL);
            let _ = exit_rx.recv_timeout(GRACE);
        }
        // The rest of the group gets the same grace as its leader (a `sh -c` leader dies at once
        // on SIGTERM; the script it runs may be cleaning up in a trap), then SIGKILL.
        while process::group_alive(pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        process::kill_group(pgid, signals::SIGKILL);
        why
    };

    let ending = loop {
        match exit_rx.recv_timeout(TICK) {
            Ok(status) => break ending_of(status?),
            Err(RecvTimeoutError::Disconnected) => break Ending::Failed(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(signal) = signals::pending() {
            break stop(Ending::Signal(signal), &exit_rx);
        }
        if opts.parent.is_some_and(|p| p != process::parent_id()) {
            break stop(Ending::ParentGone, &exit_rx);
        }
        if (opts.cancel)() {
            break stop(Ending::Failed(None), &exit_rx);
        }
        if start.elapsed() >= opts.timeout {
            break stop(Ending::TimedOut(opts.timeout), &exit_rx);
        }
    };
    // The command is done. Read to the end of its output, as long as output still comes; a
    // daemon it left that holds the pipe open (and is quiet) ends the wait after a moment.
    let mut seen = capture.lock().map_or(0, |c| c.total);
    let mut quiet_since = Instant::now();
    let drained_by = Instant::now() + Duration::from_secs(10);
    loop {
        match eof_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let total = capture.lock().map_or(0, |c| c.total);
        if total != seen {
            (seen, quiet_since) = (total, Instant::now());
        } else if quiet_since.elapsed() >= Duration::from_millis(200) {
            break;
        }
        if Instant::now() >= drained_by {
            break;
        }
    }
    let output = capture
        .lock()
        .map(|mut c| std::mem::take(&mut *c).into_bytes())
        .unwrap_or_default();
    Ok((ending, output))
}

fn ending_of(status: ExitStatus) -> Ending {
    match status.code() {
        Some(0) => Ending::Passed,
        Some(code) => Ending::Failed(Some(code)),
        None => Ending::Failed(process::exit_signal(&status).map(|s| 128 + s)),
    }
}

/// The first 64 KiB and the last 16 MiB of the output.
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
    /// Bytes read so far, kept or not.
    total: u64,
}

impl Capture {
    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = KEEP_HEAD.saturating_sub(self.head.len());
        let (h, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(h);
        bytes = rest;
        self.tail.extend(bytes);
        if self.tail.len() > KEEP_TAIL {
            let excess = self.tail.len() - KEEP_TAIL;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = self.head;
        if self.dropped > 0 {
            out.extend_from_slice(
                format!("\n[buildlock: {} bytes of output omitted]\n", self.dropped).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

// These run `sh` scripts: on Windows, Git for Windows' sh (the project's workflow); under Wine
// no Windows sh exists, and Wine cannot pipe a Linux one.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn run_sh(script: &str, timeout: Duration) -> Run {
        let dir = std::env::temp_dir();
        let opts = Options {
            dir: &dir,
            timeout,
            echo: false,
            env: vec![("BUILDLOCK_TEST_VAR".into(), "v".into())],
            parent: None,
            on_start: &mut |_| {},
            cancel: &|| false,
        };
        run(&Command::Shell(script.into()), opts).unwrap()
    }

    #[test]
    fn reports_pass_fail_and_output() {
        let r = run_sh(
            "echo out; echo err >&2; echo $BUILDLOCK_TEST_VAR",
            Duration::from_secs(10),
        );
        assert_eq!(r.ending, Ending::Passed);
        assert_eq!(String::from_utf8_lossy(&r.output), "out\nerr\nv\n");
        assert_eq!(
            run_sh("exit 3", Duration::from_secs(10)).ending,
            Ending::Failed(Some(3))
        );
    }

    #[test]
    fn times_out_and_stops_the_group() {
        let r = run_sh("sleep 30 & sleep 30", Duration::from_millis(200));
        assert_eq!(r.ending, Ending::TimedOut(Duration::from_millis(200)));
        assert!(r.took < Duration::from_secs(5));
        assert!(String::from_utf8_lossy(&r.output).contains("check_timeout"));
    }

    /// The leader (`sh -c`) dies at once on SIGTERM; the script it runs traps it to clean up,
    /// and gets the grace too before SIGKILL.
    // regression: the group was SIGKILLed the moment its leader exited, mid-trap
    #[test]
    fn a_stopped_group_gets_its_grace_after_the_leader_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("inner.sh");
        let cleaned = dir.path().join("cleaned");
        std::fs::write(
            &script,
            format!(
                "trap 'sleep 0.3; echo yes > {}; exit 143' TERM\nsleep 30 & wait $!\n",
                cleaned.display()
            ),
        )
        .unwrap();
        let r = run_sh(
            &format!("sh {}; echo after", script.display()),
            Duration::from_millis(300),
        );
        assert_eq!(r.ending, Ending::TimedOut(Duration::from_millis(300)));
        assert_eq!(
            std::fs::read_to_string(&cleaned).unwrap_or_default(),
            "yes\n"
        );
    }

    #[test]
    fn a_daemon_holding_the_pipe_does_not_hold_us() {
        let r = run_sh("setsid sleep 5 & echo started", Duration::from_secs(10));
        assert_eq!(r.ending, Ending::Passed);
        assert!(r.took < Duration::from_secs(3), "{:?}", r.took);
    }

    /// The output is the failure's signature and log: a daemon left holding the pipe must not
    /// cost it (it was dropped whole: an empty log, and one signature for every such failure).
    #[test]
    fn a_daemon_holding_the_pipe_does_not_cost_the_output() {
        let r = run_sh(
            "setsid sleep 5 & echo 'error: the real failure'; exit 3",
            Duration::from_secs(10),
        );
        assert_eq!(r.ending, Ending::Failed(Some(3)));
        assert!(r.took < Duration::from_secs(3), "{:?}", r.took);
        assert_eq!(
            String::from_utf8_lossy(&r.output),
            "error: the real failure\n"
        );
    }

    /// Output still streaming after the command exits (a child writing on) is read to its end.
    #[test]
    fn output_still_coming_after_the_exit_is_kept() {
        let r = run_sh(
            // 20 ms apart, well within the 200 ms of quiet that ends the reading: 100 ms apart,
            // a loaded machine stretched one gap past it (once in 24 runs at load).
            "(for i in 1 2 3 4 5; do sleep 0.02; echo line $i; done) & exit 1",
            Duration::from_secs(10),
        );
        assert!(
            String::from_utf8_lossy(&r.output).contains("line 5"),
            "{:?}",
            String::from_utf8_lossy(&r.output)
        );
    }

    /// Watching a quiet check costs a wake-up per tick, not a spin: a wait of less than a
    /// millisecond truncated to a zero-millisecond poll spun to the end of every tick (about
    /// 2 % of a core; 2,500 polls per hook run while 64 agents' checks blocked).
    #[cfg(target_os = "linux")]
    #[test]
    fn watching_a_quiet_check_does_not_spin() {
        fn thread_cpu() -> Duration {
            // SAFETY: getrusage fills the zeroed struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            Duration::from_micros(us(u.ru_utime) + us(u.ru_stime))
        }
        let before = thread_cpu();
        let r = run_sh("sleep 1.5", Duration::from_secs(60));
        let spent = thread_cpu() - before;
        assert_eq!(r.ending, Ending::Passed);
        // 30 ticks of a few microseconds each, and the spawn; the spin cost ≈ 30 ms.
        assert!(
            spent < Duration::from_millis(12),
            "{spent:?} of CPU to watch a 1.5 s check"
        );
    }

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::default();
        c.push(&vec![b'a'; KEEP_HEAD]);
        c.push(&vec![b'b'; KEEP_TAIL + 10]);
        c.push(b"end");
        let out = c.into_bytes();
        assert!(out.starts_with(b"aaa"));
        assert!(out.ends_with(b"bbend"));
        assert!(String::from_utf8_lossy(&out).contains("13 bytes of output omitted"));
    }
}
