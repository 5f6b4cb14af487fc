//! A remote whose connection stalls: a loopback server that accepts every connection and never
//! answers, used as an `http://` remote, so that git runs `git-remote-http`, which waits for the
//! server forever. The contract: every remote operation is bounded in time, and a stalled
//! connection ends, git and every helper it started; no command outlives its own deadlines.
//!
//! Each run carries a tag in its environment (which git and its helpers inherit), so that the
//! processes it started are found in `/proc` even after they were orphaned.

use crate::harness::*;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A TCP server on loopback that accepts connections, holds them, and never says a word. When
/// dropped it closes every connection (the network "heals": a stalled peer sees the end).
struct Stalled {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stalled {
    fn start() -> Stalled {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        held.push(conn);
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Stalled {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/repo.git", self.port)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TAG_VAR: &str = "BUILDLOCK_TEST_STALL_TAG";

/// The live (not zombie) processes whose environment carries `TAG_VAR=tag`: pid and command line.
fn tagged(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("{TAG_VAR}={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| !matches!(proc_state(pid), None | Some('Z' | 'X')))
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| text(&c).replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            (pid, cmdline)
        })
        .collect()
}

/// Kills what a run left behind (only processes carrying its tag), so that a failing test leaves
/// nothing running.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in tagged(&self.0) {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// What one bounded run did: its exit (None: still running at `limit`, then killed), stderr,
/// how long it took, and the processes it started that were still running once it ended.
struct Ran {
    status: Option<ExitStatus>,
    stderr: String,
    took: Duration,
    left: Vec<(u32, String)>,
}

/// Runs `c` tagged, and waits for its exit for at most `limit`.
fn run_tagged(mut c: Command, root: &Path, name: &str, limit: Duration) -> Ran {
    // Unique per run: tests run at once in one process, and each kills only its own leftovers.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tag = format!("{name}-{}-{run}", std::process::id());
    let _cleanup = Leftovers(tag.clone());
    let err_path = root.join(format!("{name}.stderr"));
    c.env(TAG_VAR, &tag)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    // What it started is ended when it ends; a zombie waiting to be reaped does not count, and
    // a moment is allowed for the kernel to finish a SIGKILL.
    let mut left = tagged(&tag);
    let since = Instant::now();
    while !left.is_empty() && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        left = tagged(&tag);
    }
    Ran {
        status,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        took,
        left,
    }
}

/// One git run may take this long; a transition keeps trying for `coordination.wait` (2 s).
const RUN_TIMEOUT: &str = "3s";
/// The deadline plus a generous margin for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(40);

fn stalled_repo(server: &Stalled) -> TestRepo {
    let r = TestRepo::new(
        "check = \"false\"\n[coordination]\nbackend = \"remote\"\nwait = \"2s\"\nremote_poll = \"200ms\"\n",
    );
    r.git(&["remote", "add", "origin", &server.url()]);
    r
}

fn check_ended(ran: &Ran, what: &str, server: &Stalled) {
    eprintln!(
        "{what}: exit {:?} after {:.1}s; left running: {:?}\n{}",
        ran.status.and_then(|s| s.code()),
        ran.took.as_secs_f64(),
        ran.left,
        ran.stderr
    );
    assert!(
        server.accepted.load(Ordering::SeqCst) > 0,
        "git never reached the stalled server: {}",
        ran.stderr
    );
    assert!(
        ran.status.is_some(),
        "`{what}` was still running {}s after it started (its deadline is a few seconds); \
         left running: {:?}\n{}",
        LIMIT.as_secs(),
        ran.left,
        ran.stderr
    );
    assert!(
        ran.left.is_empty(),
        "`{what}` ended but left processes it started running: {:?}\n{}",
        ran.left,
        ran.stderr
    );
}

/// The contract's answer to an unreachable remote: exit 70, naming the remote.
fn check_unreachable(ran: &Ran) {
    assert_eq!(
        ran.status.and_then(|s| s.code()),
        Some(70),
        "an unreachable remote: {}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("`origin`"),
        "names the remote: {}",
        ran.stderr
    );
}

fn status(server: &Stalled, r: &TestRepo) -> Ran {
    let mut c = r.cmd(BUILDLOCK, &r.dir);
    c.arg("status").env("BUILDLOCK_REMOTE_TIMEOUT", RUN_TIMEOUT);
    let ran = run_tagged(c, &r.root, "status", LIMIT);
    check_ended(&ran, "buildlock status", server);
    ran
}

#[test]
fn remote_stalled_connection_ends_status_within_its_deadline() {
    let server = Stalled::start();
    let r = stalled_repo(&server);
    status(&server, &r);
}

/// `status` against a remote it cannot read exits 70, naming the remote: never "passing".
// regression: the store's all() and totals() read an unreachable remote as "no keys"
#[test]
fn remote_stalled_status_exits_70_naming_the_remote() {
    let server = Stalled::start();
    let r = stalled_repo(&server);
    check_unreachable(&status(&server, &r));
}

/// Every report against a remote that refuses connections (a closed port) exits 70, names the
/// remote and says git's error; none says "passing" or "no events".
// regression: status printed "build passing: nobody is fixing anything", log "no events yet", exit 0
#[test]
fn reports_against_an_unreachable_remote_exit_70_and_say_why() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = TestRepo::new("[coordination]\nbackend = \"remote\"\nwait = \"1s\"\n");
    r.git(&[
        "remote",
        "add",
        "origin",
        &format!("http://127.0.0.1:{closed}/repo.git"),
    ]);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["log"],
        &["log", "--json"],
        &["doctor"],
    ] {
        let out = r.cmd(BUILDLOCK, &r.dir).args(args).output().unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(70), "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains("the remote `origin`"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("Failed to connect")
                || stderr.contains("Connection refused")
                || stderr.contains("Could not connect"),
            "git's own words: {args:?}: {stderr}"
        );
        assert!(
            !stdout.contains("passing") && !stdout.contains("no events"),
            "{args:?}: {stdout}"
        );
    }
}

#[test]
fn remote_stalled_connection_ends_ci_within_its_deadline() {
    let server = Stalled::start();
    let r = stalled_repo(&server);
    let mut c = r.cmd(BUILDLOCK, &r.dir);
    c.arg("ci")
        .env("BUILD_FLAVOR", "stalled")
        .env("BUILDLOCK_REMOTE_TIMEOUT", RUN_TIMEOUT);
    let ran = run_tagged(c, &r.root, "ci", LIMIT);
    check_ended(&ran, "buildlock ci", &server);
    check_unreachable(&ran);
    assert!(ran.stderr.contains("coordination failed"), "{}", ran.stderr);
}
