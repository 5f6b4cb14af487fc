//! The one harness of the integration tests: a temp repository builder, an isolated environment
//! for running the real binaries, and the witnesses and fault tools the tests share. Every helper
//! used by more than one test file lives here, and only here.
//!
//! Every command starts from a cleared environment: temporary `HOME` and `XDG_CONFIG_HOME`, no
//! global or system git config, fixed author dates, a fast poll interval, no colour. Runs whose
//! outcome is checked at once return an [`Assert`] (assert_cmd), which prints the command's
//! status, stdout and stderr when a check fails; runs that race are spawned as [`Child`]ren.

pub use assert_cmd::assert::{Assert, OutputAssertExt};
pub use predicates::prelude::*;
pub use predicates::str::contains;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PRE_COMMIT: &str = env!("CARGO_BIN_EXE_pre-commit");
pub const COMMIT_RETRY: &str = env!("CARGO_BIN_EXE_commit-retry");
pub const BUILDLOCK: &str = env!("CARGO_BIN_EXE_buildlock");

pub struct TestRepo {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub dir: PathBuf,
}

/// A command with the isolated environment.
pub fn command(program: impl AsRef<std::ffi::OsStr>, root: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-11-22T10:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-11-22T10:00:00Z")
        .env("LANG", "C")
        .env("NO_COLOR", "1")
        .env("BUILDLOCK_POLL", "20ms")
        .stdin(Stdio::null());
    c
}

pub fn run_ok(mut c: Command) -> Output {
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a checked run printed on stdout, for checks that predicates do not express (parsing,
/// columns).
pub fn stdout_of(run: &Assert) -> String {
    text(&run.get_output().stdout)
}

impl TestRepo {
    /// A repository with `.buildlock.toml` = `config`, one commit, and the hook installed.
    pub fn new(config: &str) -> TestRepo {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let dir = root.join("repo");
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let r = TestRepo {
            _tmp: tmp,
            root,
            dir,
        };
        r.git(&["init", "-q", "-b", "main"]);
        std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
        std::fs::write(r.dir.join("README"), "hello\n").unwrap();
        r.git(&["add", "-A"]);
        r.git(&["commit", "-q", "-m", "init"]);
        r.install_hook();
        r
    }

    /// The `git buildlock` alias, as install.sh adds it (what the exit-75 message and the
    /// example `retry.refresh` run).
    pub fn alias_buildlock(&self) {
        self.git(&[
            "config",
            "alias.buildlock",
            &format!("!f() {{ cd \"${{GIT_PREFIX:-.}}\" && exec '{BUILDLOCK}' \"$@\"; }}; f"),
        ]);
    }

    pub fn install_hook(&self) {
        let hooks = self.dir.join(".git/hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        let hook = hooks.join("pre-commit");
        let _ = std::fs::remove_file(&hook);
        std::os::unix::fs::symlink(PRE_COMMIT, hook).unwrap();
    }

    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
        let mut c = command(program, &self.root);
        c.current_dir(dir);
        c
    }

    pub fn git(&self, args: &[&str]) -> Output {
        self.git_in(&self.dir, args)
    }

    pub fn git_in(&self, dir: &Path, args: &[&str]) -> Output {
        let mut c = self.cmd("git", dir);
        c.args(args);
        run_ok(c)
    }

    /// A linked worktree on a new branch, with the same `.buildlock.toml`.
    pub fn worktree(&self, name: &str) -> PathBuf {
        let path = self.root.join(name);
        self.git(&["worktree", "add", "-q", "-b", name, path.to_str().unwrap()]);
        path
    }

    /// Stages a new file in `dir`.
    pub fn stage_change(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(name), format!("{name}\n")).unwrap();
        self.git_in(dir, &["add", name]);
    }

    /// Runs the hook by hand in `dir` as agent `agent`.
    pub fn hook(&self, dir: &Path, agent: &str) -> Assert {
        self.cmd(PRE_COMMIT, dir)
            .env("BUILDLOCK_AGENT", agent)
            .assert()
    }

    /// Runs `buildlock args` in `dir` as agent `agent`.
    pub fn buildlock(&self, dir: &Path, agent: &str, args: &[&str]) -> Assert {
        self.cmd(BUILDLOCK, dir)
            .env("BUILDLOCK_AGENT", agent)
            .args(args)
            .assert()
    }

    /// `git commit -q -m msg` in `dir` as `agent`: the plain flow, the hook installed. Spawn it
    /// to race, or `.assert()` it.
    pub fn git_commit(&self, dir: &Path, agent: &str, msg: &str) -> Command {
        let mut c = self.cmd("git", dir);
        c.args(["commit", "-q", "-m", msg])
            .env("BUILDLOCK_AGENT", agent)
            .stderr(Stdio::piped());
        c
    }

    /// `commit-retry -q -m "<agent> work"` in `dir` as `agent`, not started yet.
    pub fn commit_retry_cmd(&self, dir: &Path, agent: &str) -> Command {
        let mut c = self.cmd(COMMIT_RETRY, dir);
        c.args(["-q", "-m", &format!("{agent} work")])
            .env("BUILDLOCK_AGENT", agent)
            .stderr(Stdio::piped());
        c
    }

    /// `commit-retry -q -m "<agent> work"` in `dir` as `agent`, started.
    pub fn commit_retry(&self, dir: &Path, agent: &str) -> Child {
        self.commit_retry_cmd(dir, agent).spawn().unwrap()
    }

    /// Commits `.buildlock.toml` = `config` without the hook.
    pub fn configure(&self, config: &str) {
        std::fs::write(self.dir.join(".buildlock.toml"), config).unwrap();
        self.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    }

    /// Commits `state.txt` = `broken` on main: the breakage the agents' branches start from.
    pub fn commit_breakage(&self) {
        std::fs::write(self.dir.join("state.txt"), "broken\n").unwrap();
        self.git(&["add", "state.txt"]);
        self.git(&["commit", "-q", "-m", "a bad merge", "--no-verify"]);
    }

    pub fn head(&self, dir: &Path) -> String {
        text(&self.git_in(dir, &["rev-parse", "HEAD"]).stdout)
            .trim()
            .to_owned()
    }

    /// The lines of the shared witness file that fix commands append to.
    pub fn witness(&self) -> Vec<String> {
        lines(&self.shared("witness"))
    }

    pub fn buildlock_dir(&self) -> PathBuf {
        self.dir.join(".git/buildlock")
    }

    pub fn state(&self) -> serde_json::Value {
        let mut c = self.cmd(BUILDLOCK, &self.dir);
        c.args(["status", "--json"]);
        serde_json::from_slice(&run_ok(c).stdout).unwrap()
    }

    pub fn count_events(&self, event: &str) -> usize {
        self.history_events().iter().filter(|e| *e == event).count()
    }

    pub fn history_events(&self) -> Vec<String> {
        std::fs::read_to_string(self.buildlock_dir().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// A path outside every work tree, shared by all agents (a "shared dependency").
    pub fn shared(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn last_subject(&self, dir: &Path) -> String {
        text(&self.git_in(dir, &["log", "-1", "--format=%s"]).stdout)
            .trim()
            .to_owned()
    }
}

/// Waits until `cond` holds, for at most `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn signal(child: &Child, sig: i32) {
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Waits for a child with a time limit, killing it if it runs over.
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if d2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    out
}

/// The lines of the file at `path` (none when it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processes, from /proc.
// ---------------------------------------------------------------------------------------------

/// Field `n` of `/proc/<pid>/stat` after the command name: 0 is the state, 1 the parent, 19 the
/// start time.
fn proc_stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(n)
        .map(str::to_owned)
}

/// The state of process `pid` (`R`, `S`, `T` stopped, `Z`…).
pub fn proc_state(pid: u32) -> Option<char> {
    proc_stat_field(pid, 0)?.chars().next()
}

pub fn parent_pid(pid: u32) -> Option<u32> {
    proc_stat_field(pid, 1)?.parse().ok()
}

pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat_field(pid, 19)?.parse().ok()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The fix witness, the repositories built on it, and the fault tools.
// ---------------------------------------------------------------------------------------------

/// `<witness>/running` (mkdir is atomic) or it records `OVERLAP`; it removes it when it ends, or
/// when it is stopped with SIGTERM (buildlock stops an orphaned fix with TERM first). Each run
/// logs `start|end|stopped <agent> <pid>` to `<witness>/log`. `work` is what the fix does.
///
/// SIGPIPE is ignored: an orphaned fix (its commit-retry was killed) writes to a pipe nobody
/// reads, and the shell's own "Terminated" notice would otherwise kill it before its trap runs.
pub fn witness_fix(root: &Path, sleep: &str, work: &str) -> PathBuf {
    let w = root.join("w");
    std::fs::create_dir_all(&w).unwrap();
    let script = root.join("fix.sh");
    std::fs::write(
        &script,
        format!(
            "W={w}\n\
             trap '' PIPE\n\
             if ! mkdir \"$W/running\" 2>/dev/null; then echo \"OVERLAP $BUILDLOCK_AGENT $$\" >> \"$W/log\"; exit 1; fi\n\
             trap 'echo \"stopped $BUILDLOCK_AGENT $$\" >> \"$W/log\"; rmdir \"$W/running\"; exit 143' TERM\n\
             echo \"start $BUILDLOCK_AGENT $$\" >> \"$W/log\"\n\
             sleep {sleep} & wait $!\n\
             {work}\n\
             echo \"end $BUILDLOCK_AGENT $$\" >> \"$W/log\"\n\
             rmdir \"$W/running\"\n",
            w = w.display()
        ),
    )
    .unwrap();
    script
}

pub fn witness_log(root: &Path) -> Vec<String> {
    lines(&root.join("w").join("log"))
}

pub fn starts(log: &[String]) -> Vec<&String> {
    log.iter().filter(|l| l.starts_with("start ")).collect()
}

/// The `n`th fix run has started and its process is on record (so a successor can stop it),
/// and its fixer is between steps (see [`fixer_between_steps`]).
pub fn fix_on_record(r: &TestRepo, n: usize) -> bool {
    starts(&witness_log(&r.root)).len() == n
        && r.state()["keys"][0]["fixer"]["fix_pid"].is_u64()
        && fixer_between_steps(r, n)
}

/// The fixer has recorded the start of its `n`th fix run (its last step under the election
/// lock before it waits for the fix) and the election lock is free: a SIGSTOP sent now does
/// not stop it while it holds the lock, which would stall every other agent for the lock's
/// whole timeout.
pub fn fixer_between_steps(r: &TestRepo, n: usize) -> bool {
    if r.count_events("fix_started") < n {
        return false;
    }
    let Ok(file) = std::fs::File::open(r.buildlock_dir().join("locks/election.lock")) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own; the lock, if taken, goes with the file at the end.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

pub fn assert_never_two_fixes(log: &[String]) {
    assert!(
        !log.iter().any(|l| l.starts_with("OVERLAP")),
        "two fix runs at once: {log:?}"
    );
}

/// A repository whose check reads the shared file `status` and whose fix (with the witness)
/// writes `ok` there after `sleep`.
pub fn shared_status_repo(sleep: &str, extra: &str) -> TestRepo {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, sleep, &format!("echo ok > {}", status.display()));
    r.configure(&format!(
        "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n{extra}",
        s = status.display(),
        f = fix.display()
    ));
    std::fs::write(&status, "broken\n").unwrap();
    r
}

/// An `LD_PRELOAD` library that shifts the wall clock (CLOCK_REALTIME and gettimeofday) by
/// `FAKE_CLOCK_OFFSET_MS`, or by the number of milliseconds in the file
/// `FAKE_CLOCK_OFFSET_FILE` (read at every call, so that a test can step the clock of running
/// processes), built once with the system C compiler (the one Rust links with). With
/// `FAKE_SLOW_RENAME_MS`, every `rename` is delayed that long.
pub fn clock_shift_library() -> PathBuf {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let src = dir.join("clockshift.c");
        let lib = dir.join(format!("clockshift-{}.so", std::process::id()));
        std::fs::write(
            &src,
            r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/time.h>
#include <time.h>
static long long shift_ms(void) {
    const char *file = getenv("FAKE_CLOCK_OFFSET_FILE");
    if (file) {
        /* Read on every call: the test steps the clock of running processes. */
        char buf[32] = {0};
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) return atoll(buf);
        }
        return 0;
    }
    const char *s = getenv("FAKE_CLOCK_OFFSET_MS");
    return s ? atoll(s) : 0;
}
static void shift(struct timespec *ts) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ms() * 1000000LL;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
    return rc;
}
/* FAKE_SLOW_RENAME_MS: every rename(2) takes that long, so that a test can kill a process
   in the middle of a state write (buildlock writes state by renaming a temp file over it). */
int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    const char *ms = getenv("FAKE_SLOW_RENAME_MS");
    if (ms) usleep((useconds_t)atoi(ms) * 1000);
    return real(from, to);
}
int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    (void)tz;
    return rc;
}
"#,
        )
        .unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("a C compiler (cc) to build the clock shim");
        assert!(out.status.success(), "{}", text(&out.stderr));
        lib
    })
    .clone()
}

/// Makes a directory tree read-only for this test, whoever we are: a read-only bind mount as
/// root (root ignores permissions), `chmod a-w` otherwise. Undone on drop. `None` when root
/// cannot mount here (a container without CAP_SYS_ADMIN).
pub struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    pub fn new(dir: &Path) -> Option<ReadOnly> {
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let sh = |cmd: String| {
                Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let d = dir.display();
            if !sh(format!("mount --bind '{d}' '{d}'")) {
                return None;
            }
            let ro = ReadOnly {
                dir: dir.to_owned(),
                mounted: true,
            };
            sh(format!("mount -o remount,bind,ro '{d}'")).then_some(ro)
        } else {
            let status = Command::new("chmod")
                .args(["-R", "a-w"])
                .arg(dir)
                .status()
                .unwrap();
            assert!(status.success());
            Some(ReadOnly {
                dir: dir.to_owned(),
                mounted: false,
            })
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        } else {
            let _ = Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// Kills a child on drop (a process the test stopped, or one left when an assertion fails).
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small deterministic random source; the seed is printed so that a run can be repeated with
/// `BUILDLOCK_TEST_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("BUILDLOCK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{what}: BUILDLOCK_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
/// A tree-dependent check, the breakage committed on main, and worktrees `a` and `b` with
/// staged work. `a` is elected with a plain `git commit`; `b` then waits in its hook.
pub fn a_elected_b_waiting(config: &str) -> (TestRepo, PathBuf, PathBuf, Child) {
    let r = TestRepo::new("");
    r.configure(config);
    r.commit_breakage();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let out = r.git_commit(&ta, "a", "a work").output().unwrap();
    assert!(
        text(&out.stderr).contains("you are the FIXER"),
        "{}",
        text(&out.stderr)
    );
    let b = r.git_commit(&tb, "b", "b work").spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    (r, ta, tb, b)
}

/// The processes (zombies left out) whose environment holds the entry `needle` (`NAME=value`),
/// with their command names: what a test started, found by a tag in the environment that every
/// process it starts inherits, never by name.
pub fn processes_with_env(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && proc_state(pid).is_some_and(|s| s != 'Z'))
        .filter(|&pid| env_has(pid, needle))
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_owned())
        })
        .collect()
}

/// Whether the environment of process `pid` holds the entry `needle` (`NAME=value`).
pub fn env_has(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == needle.as_bytes()))
}

/// A `git` first on PATH that logs every run to `log` (`<BUILD_FLAVOR> <subcommand>`, and for a
/// push each of its `--porcelain` result lines: `<BUILD_FLAVOR> pushed <flag>\t<refs>\t<summary>`),
/// then passes everything through to the real git. Returns the PATH to give to the programs.
pub fn git_witness(dir: &Path, log: &Path) -> std::ffi::OsString {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let real = real.trim();
    std::fs::create_dir_all(dir).unwrap();
    let shim = dir.join("git");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n\
             sub=''; skip=0; for a in \"$@\"; do if [ $skip = 1 ]; then skip=0; continue; fi; \
             case $a in -c|--git-dir|-C) skip=1;; -*) ;; *) sub=$a; break;; esac; done\n\
             echo \"$BUILD_FLAVOR $sub\" >> '{log}'\n\
             [ \"$sub\" = push ] || exec '{real}' \"$@\"\n\
             out=$('{real}' \"$@\"); rc=$?\n\
             [ -n \"$out\" ] && printf '%s\\n' \"$out\"\n\
             printf '%s\\n' \"$out\" | grep \"$(printf '\\t')\" | sed \"s|^|$BUILD_FLAVOR pushed |\" >> '{log}'\n\
             exit $rc\n",
            log = log.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = std::ffi::OsString::from(dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}
