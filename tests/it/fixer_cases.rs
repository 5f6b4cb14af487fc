//! Issue 8, "Exactly one fixer in every case": each case of the issue's first section, on real
//! temporary repositories with the real binaries. Every test here fails on 04bf3f1 (the main
//! before the issue's work) and passes on main since a3b663d (the crafted-orphan one since
//! 41a55b1); `docs/issue8-cases.md` lists what each printed before and after.
//!
//! | case (issue 8) | test |
//! |---|---|
//! | the default flow elects every agent in turn | `default_flow_one_fix_the_others_take_the_fix_commit` |
//! | an endless check loop: resets during the check | `stale_reruns_are_bounded_when_every_run_is_reset` |
//! | an endless check loop: a clock 30 s behind | `a_clock_behind_the_recorded_change_does_not_loop` |
//! | two fix runs overlap (SIGKILL, same agent again) | `same_agent_after_sigkill_stops_its_orphaned_fix_first` |
//! | a live fixer declared dead (SIGSTOP/SIGCONT) | `resumed_old_fixer_does_not_make_the_new_one_look_dead` |
//! | a live fixer declared dead (release, re-check) | `fixer_elected_again_after_release_is_not_taken_over` |
//! | a live fixer taken over during its own re-check | `fixer_keeps_its_lease_through_a_recheck_longer_than_stale_after` |
//! | saved but reported as failed | `a_failed_history_write_after_the_state_write_is_not_a_failure` |
//! | exit 1 = coordination failed: stopped lock holder | `a_stopped_election_lock_holder_gives_exit_70` |
//! | exit 1 = coordination failed: read-only dir | `a_passing_check_commits_with_a_read_only_coordination_dir` |
//! | exit 1 = coordination failed: SIGINT while waiting | `sigint_while_waiting_for_the_election_lock_exits_130_promptly` |
//! | `status` names a dead pid | `status_names_the_live_process_that_holds_the_role` |
//! | waiters that gave up stay listed | `waiters_that_gave_up_or_were_interrupted_leave_the_list` |
//! | stale re-runs counted as avoided | `a_stale_rerun_is_not_an_avoided_fix_run` |
//! | totals and history disagree after SIGKILLs | `totals_and_history_agree_after_random_sigkills` |
//! | check exit 127 elects a fixer | `a_check_command_not_found_elects_nobody` |
//! | the fixer's `BUILDLOCK=0` strands waiters | `a_fixers_bypass_commit_still_wakes_the_waiters` |
//! | files opened through symlinks | `a_symlink_in_the_coordination_dir_is_not_followed` |
//! | the orphaned-fix stop trusts a crafted state | `a_crafted_orphan_record_never_kills_an_unrelated_group` |

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers shared by the cases (and by `stress.rs`).
// ---------------------------------------------------------------------------------------------

/// `git commit -q -m msg` in `dir` as `agent`: the plain flow, the hook installed.
pub fn git_commit(r: &TestRepo, dir: &Path, agent: &str, msg: &str) -> Command {
    let mut c = r.cmd("git", dir);
    c.args(["commit", "-q", "-m", msg])
        .env("BUILDLOCK_AGENT", agent)
        .stderr(Stdio::piped());
    c
}

pub fn commit_retry(r: &TestRepo, dir: &Path, agent: &str) -> Child {
    r.cmd(COMMIT_RETRY, dir)
        .args(["-q", "-m", &format!("{agent} work")])
        .env("BUILDLOCK_AGENT", agent)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn count_events(r: &TestRepo, event: &str) -> usize {
    r.history_events().iter().filter(|e| *e == event).count()
}

fn buildlock(r: &TestRepo, dir: &Path, agent: &str, args: &[&str]) -> std::process::Output {
    r.cmd(BUILDLOCK, dir)
        .args(args)
        .env("BUILDLOCK_AGENT", agent)
        .output()
        .unwrap()
}

/// Commits `.buildlock.toml` = `config` without the hook.
pub fn configure(r: &TestRepo, config: &str) {
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
}

/// Commits `state.txt` = `broken` on main: the breakage the agents' branches start from.
pub fn commit_breakage(r: &TestRepo) {
    std::fs::write(r.dir.join("state.txt"), "broken\n").unwrap();
    r.git(&["add", "state.txt"]);
    r.git(&["commit", "-q", "-m", "a bad merge", "--no-verify"]);
}

pub fn head(r: &TestRepo, dir: &Path) -> String {
    text(&r.git_in(dir, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_owned()
}

/// The state of process `pid` (`R`, `S`, `T` stopped, `Z`…), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A fix command with an independent witness of overlap: it must create the directory
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

/// The `n`th fix run has started and its process is on record (so a successor can stop it).
pub fn fix_on_record(r: &TestRepo, n: usize) -> bool {
    starts(&witness_log(&r.root)).len() == n && r.state()["keys"][0]["fixer"]["fix_pid"].is_u64()
}

pub fn assert_never_two_fixes(log: &[String]) {
    assert!(
        !log.iter().any(|l| l.starts_with("OVERLAP")),
        "two fix runs at once: {log:?}"
    );
}

/// A repository whose check reads the shared file `status` and whose fix (with the witness)
/// writes `ok` there after `sleep`.
fn shared_status_repo(sleep: &str, extra: &str) -> TestRepo {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let fix = witness_fix(&r.root, sleep, &format!("echo ok > {}", status.display()));
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n{extra}",
            s = status.display(),
            f = fix.display()
        ),
    );
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
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
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

// ---------------------------------------------------------------------------------------------
// The default flow.
// ---------------------------------------------------------------------------------------------

/// Six agents in six worktrees start from a branch with a committed breakage and commit with a
/// plain `git commit` (`hook.wait = true`). One is elected and commits its fix on its own branch;
/// the five waiters wake, fail the same way on their own trees, and are told the fix commit
/// instead of being elected in turn. After taking it, every commit lands on its first try.
#[test]
fn default_flow_one_fix_the_others_take_the_fix_commit() {
    const AGENTS: usize = 6;
    let r = TestRepo::new("");
    configure(
        &r,
        "check = \"grep -qx ok state.txt\"\n[coordination]\nwait = \"60s\"\n",
    );
    commit_breakage(&r);
    let trees: Vec<PathBuf> = (0..AGENTS)
        .map(|i| {
            let t = r.worktree(&format!("a{i}"));
            r.stage_change(&t, &format!("work{i}"));
            t
        })
        .collect();
    let out = git_commit(&r, &trees[0], "a0", "a0 work").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("you are the FIXER"));
    let waiters: Vec<Child> = (1..AGENTS)
        .map(|i| {
            git_commit(&r, &trees[i], &format!("a{i}"), &format!("a{i} work"))
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || r.state()["keys"][0]["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == AGENTS - 1)),
        "{}",
        r.state()
    );
    // a0 fixes the failure and commits: its passing commit marks the build fixed.
    std::fs::write(trees[0].join("state.txt"), "ok\n").unwrap();
    r.git_in(&trees[0], &["add", "state.txt"]);
    let out = git_commit(&r, &trees[0], "a0", "a0 work").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fix = head(&r, &trees[0]);
    for (i, w) in waiters.into_iter().enumerate() {
        let out = wait_output(w, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "a{}: {err}", i + 1);
        assert!(
            err.contains(&fix[..12]) && !err.contains("FIXER"),
            "a{} is told the fix commit, not elected: {err}",
            i + 1
        );
    }
    let key = &r.state()["keys"][0];
    assert_eq!(key["fix_commit"].as_str(), Some(fix.as_str()), "{key}");
    // Each takes the fix and commits again: it lands at once.
    for (i, t) in trees.iter().enumerate().skip(1) {
        r.git_in(t, &["stash", "-q"]);
        r.git_in(t, &["cherry-pick", &fix]);
        r.git_in(t, &["stash", "pop", "-q", "--index"]);
        let out = git_commit(&r, t, &format!("a{i}"), &format!("a{i} work"))
            .output()
            .unwrap();
        assert!(out.status.success(), "a{i}: {}", text(&out.stderr));
        assert_eq!(r.last_subject(t), format!("a{i} work"));
    }
    let totals = &r.state()["totals"];
    assert_eq!(
        totals["elections"], 1,
        "one fixer for one breakage: {totals}"
    );
    assert_eq!(count_events(&r, "elected"), 1);
    assert_eq!(count_events(&r, "take_fix"), AGENTS - 1);
}

// ---------------------------------------------------------------------------------------------
// The endless check loop.
// ---------------------------------------------------------------------------------------------

/// A failing check, with `buildlock reset` (of a key another agent broke) during each of its
/// first three runs: before, it ran until killed (25 runs, 0 failures recorded); now, after two
/// stale re-runs the failure counts. Each of the first three runs waits for its reset before it
/// fails, so the resets land inside the runs however loaded the machine is.
#[test]
fn stale_reruns_are_bounded_when_every_run_is_reset() {
    let r = TestRepo::new("");
    let runs = r.shared("runs");
    let reset = r.shared("reset");
    configure(
        &r,
        &format!(
            "check = \"echo run >> {runs}; n=$(wc -l < {runs}); \
             [ $n -gt 3 ] || while [ ! -e {reset}-$n ]; do sleep 0.02; done; false\"\n\
             [hook]\nwait = false\n",
            runs = runs.display(),
            reset = reset.display()
        ),
    );
    let hook = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Another agent's failure makes the key broken again before each reset (a reset of a
    // passing key changes nothing).
    let z_config = r.shared("z.toml");
    std::fs::write(&z_config, "check = \"false\"\n").unwrap();
    for n in 1..=3 {
        if !eventually(Duration::from_secs(10), || lines(&runs).len() >= n) {
            break;
        }
        let z = r
            .cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "z")
            .env("BUILDLOCK_CONFIG", &z_config)
            .output()
            .unwrap();
        assert_eq!(z.status.code(), Some(1), "{}", text(&z.stderr));
        let out = buildlock(&r, &r.dir, "operator", &["reset"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::write(format!("{}-{n}", reset.display()), "").unwrap();
    }
    let out = wait_output(hook, Duration::from_secs(15));
    let runs = lines(&runs).len();
    assert_eq!(
        out.status.code(),
        Some(1),
        "ran {runs} times: {}",
        text(&out.stderr)
    );
    assert_eq!(runs, 3, "two stale re-runs, then the failure counts");
    let history = std::fs::read_to_string(r.buildlock_dir().join("history.jsonl")).unwrap();
    let failed_a = history
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "failed" && e["agent"] == "a")
        .count();
    assert_eq!(failed_a, 1, "the third failure of `a` counts: {history}");
    eprintln!("measured: {runs} runs, exit 1, 1 failure of `a` recorded");
}

/// The agent's clock is 30 s behind the time of the last change on record: before, every
/// failure looked older than the fix and the check ran again forever (98,213 runs in 5 s); now
/// staleness is decided by a counter, and the failure counts at once.
#[test]
fn a_clock_behind_the_recorded_change_does_not_loop() {
    let r = TestRepo::new("");
    let runs = r.shared("runs");
    configure(
        &r,
        &format!(
            "check = \"echo run >> {}; false\"\n[hook]\nwait = false\n",
            runs.display()
        ),
    );
    let out = buildlock(&r, &r.dir, "operator", &["reset"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = Instant::now();
    let hook = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "behind")
        .env("LD_PRELOAD", clock_shift_library())
        .env("FAKE_CLOCK_OFFSET_MS", "-30000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(hook, Duration::from_secs(5));
    let runs = lines(&runs).len();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the check ran {runs} times in {:?}",
        start.elapsed()
    );
    assert_eq!(runs, 1);
    assert!(text(&out.stderr).contains("you are the FIXER"));
    eprintln!("measured: 1 run, elected, in {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Two fix runs at once; live fixers declared dead.
// ---------------------------------------------------------------------------------------------

/// commit-retry is SIGKILLed mid-fix (its fix goes on in its own process group) and the same
/// agent runs commit-retry again: before, the hook said "you are still the fixer" and a second
/// fix ran beside the first; now the dead run's orphaned fix is stopped before the new one.
#[test]
fn same_agent_after_sigkill_stops_its_orphaned_fix_first() {
    let r = shared_status_repo("3", "");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let first = commit_retry(&r, &ta, "a");
    // Mid-fix: the fix runs and is on record (see `a_fix_killed_before_it_is_recorded_…` for
    // a kill just before that).
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    signal(&first, libc::SIGKILL);
    let _ = wait_output(first, Duration::from_secs(5));
    let again = commit_retry(&r, &ta, "a");
    let out = wait_output(again, Duration::from_secs(60));
    let log = witness_log(&r.root);
    let err = text(&out.stderr);
    assert!(
        !log.iter().any(|l| l.starts_with("OVERLAP")),
        "two fix runs at once: {log:?}\n{err}"
    );
    assert!(out.status.success(), "{err}\n{log:?}");
    assert!(err.contains("stopped the previous fixer's fix"), "{err}");
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    assert!(log[1].starts_with("stopped a"), "{log:?}");
    assert_eq!(r.last_subject(&ta), "a work");
}

/// The fixer `a` is SIGSTOPped mid-fix; `b` takes over after the lease; `a` is resumed. Before,
/// `b` could not get the fixer lock (the stopped `a` held it), registered anyway, and once `a`
/// let the lock go `b` looked dead: `c` took over and killed `b`'s running fix (three fix runs).
/// Now locks are per generation: `b` holds its own, and `c` waits for it.
#[test]
fn resumed_old_fixer_does_not_make_the_new_one_look_dead() {
    // Fix runs long enough that `b` stops `a`'s fix, and that `c` fails while `b` still fixes.
    let r = shared_status_repo(
        "6",
        "[coordination]\nstale_after = \"2s\"\nwait = \"40s\"\n",
    );
    let trees: Vec<PathBuf> = ["ta", "tb", "tc"]
        .iter()
        .map(|n| {
            let t = r.worktree(n);
            r.stage_change(&t, &format!("f{n}"));
            t
        })
        .collect();
    let a = commit_retry(&r, &trees[0], "a");
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    signal(&a, libc::SIGSTOP);
    let b = commit_retry(&r, &trees[1], "b");
    assert!(
        eventually(Duration::from_secs(30), || starts(&witness_log(&r.root))
            .len()
            == 2),
        "{:?}",
        witness_log(&r.root)
    );
    signal(&a, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let c = commit_retry(&r, &trees[2], "c");
    let outs: Vec<_> = [a, b, c]
        .into_iter()
        .map(|child| wait_output(child, Duration::from_secs(60)))
        .collect();
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert_eq!(starts(&log).len(), 2, "a's fix and b's, no third: {log:?}");
    assert!(
        log.iter().any(|l| l.starts_with("end b")),
        "b's fix ran to its end: {log:?}"
    );
    for (name, out) in ["a", "b", "c"].iter().zip(&outs) {
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    assert!(
        !text(&outs[2].stderr).contains("taking over"),
        "{}",
        text(&outs[2].stderr)
    );
    assert_eq!(r.state()["totals"]["elections"], 2);
}

/// `buildlock release` during `a`'s fix, then `a`'s re-check fails and `a` is elected again:
/// before, it registered without the fixer lock (its own old hold had it), looked dead as soon as
/// that was dropped, and `b` took over and killed its running fix. Now `a` holds its new
/// generation's lock and `b` waits.
#[test]
fn fixer_elected_again_after_release_is_not_taken_over() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let count = r.shared("fix-count");
    // The first fix run does not fix; the next ones do.
    let work = format!(
        "echo x >> {c}; [ $(wc -l < {c}) -ge 2 ] && echo ok > {s}; true",
        c = count.display(),
        s = status.display()
    );
    let fix = witness_fix(&r.root, "2", &work);
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {s}\"\n[fix]\ncommand = \"sh {f}\"\n[coordination]\nwait = \"40s\"\n",
            s = status.display(),
            f = fix.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = commit_retry(&r, &ta, "a");
    assert!(eventually(Duration::from_secs(20), || starts(
        &witness_log(&r.root)
    )
    .len()
        == 1));
    let out = buildlock(&r, &ta, "a", &["release"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // a's next fix run: b fails meanwhile and must wait for it.
    assert!(
        eventually(Duration::from_secs(20), || starts(&witness_log(&r.root))
            .len()
            == 2),
        "{:?}",
        witness_log(&r.root)
    );
    let b = commit_retry(&r, &tb, "b");
    let (oa, ob) = (
        wait_output(a, Duration::from_secs(60)),
        wait_output(b, Duration::from_secs(60)),
    );
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert!(oa.status.success(), "a: {}\n{log:?}", text(&oa.stderr));
    assert!(ob.status.success(), "b: {}\n{log:?}", text(&ob.stderr));
    assert_eq!(starts(&log).len(), 2, "{log:?}");
    assert!(
        starts(&log).iter().all(|l| l.starts_with("start a")),
        "b never fixed: {log:?}"
    );
    assert_eq!(count_events(&r, "takeover"), 0, "{:?}", r.history_events());
}

/// The fixer's re-check (the check passes slowly: 4 s) is longer than `stale_after` (2 s).
/// Before, commit-retry stopped its heartbeat for the re-check commit and the waiter took over
/// and ran a second fix; now the lease is held through the re-check.
#[test]
fn fixer_keeps_its_lease_through_a_recheck_longer_than_stale_after() {
    let r = TestRepo::new("");
    let fix = witness_fix(&r.root, "0.2", "echo ok > state.txt && git add state.txt");
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok state.txt || exit 1; sleep 4\"\n[fix]\ncommand = \"sh {f}\"\n\
             [coordination]\nstale_after = \"2s\"\nwait = \"40s\"\n[retry]\n\
             refresh = \"git stash -q && git cherry-pick $BUILDLOCK_FIX_COMMIT && git stash pop -q --index\"\n",
            f = fix.display()
        ),
    );
    commit_breakage(&r);
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.stage_change(&ta, "fa");
    r.stage_change(&tb, "fb");
    let a = commit_retry(&r, &ta, "a");
    assert!(eventually(Duration::from_secs(20), || starts(
        &witness_log(&r.root)
    )
    .len()
        == 1));
    let b = commit_retry(&r, &tb, "b");
    let (oa, ob) = (
        wait_output(a, Duration::from_secs(60)),
        wait_output(b, Duration::from_secs(60)),
    );
    let log = witness_log(&r.root);
    assert_never_two_fixes(&log);
    assert!(oa.status.success(), "a: {}", text(&oa.stderr));
    assert_eq!(starts(&log).len(), 1, "one fix run: {log:?}");
    assert_eq!(count_events(&r, "takeover"), 0, "{:?}", r.history_events());
    assert!(ob.status.success(), "b: {}", text(&ob.stderr));
    assert_eq!(r.last_subject(&tb), "b work");
}

// ---------------------------------------------------------------------------------------------
// The state write is the commit point; exit codes.
// ---------------------------------------------------------------------------------------------

/// The state write succeeds and the history write after it fails (a directory is in the
/// history's place, so the write really fails). Before: "coordination failed" while the state
/// said `fixing(a)`: `a` never learned it was the fixer. Now `a` is told, with a warning.
#[test]
fn a_failed_history_write_after_the_state_write_is_not_a_failure() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    std::fs::create_dir_all(r.buildlock_dir().join("history.jsonl/blocked")).unwrap();
    let out = r.hook(&r.dir, "a");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("you are the FIXER"), "{err}");
    assert!(
        err.contains("history"),
        "the failed write is warned about: {err}"
    );
    let key = &r.state()["keys"][0];
    assert_eq!(key["fixer"]["agent"], "a", "{key}");
    let out = r.hook(&r.dir, "b");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
}

/// A SIGSTOPped process holds the election lock: before, three agents exited 1 after 30 s, all
/// told they were "fixers"; now they exit 70 (coordination failed) and name the stopped pid.
#[test]
fn a_stopped_election_lock_holder_gives_exit_70() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let staller = KillOnDrop(Some(
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "staller")
            .env("BUILDLOCK_FAULT", "election:stop")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = staller.id();
    assert!(eventually(Duration::from_secs(10), || proc_state(pid) == Some('T')));
    let agents: Vec<Child> = (0..3)
        .map(|i| {
            r.cmd(PRE_COMMIT, &r.dir)
                .env("BUILDLOCK_AGENT", format!("a{i}"))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, a) in agents.into_iter().enumerate() {
        let out = wait_output(a, Duration::from_secs(60));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "a{i}: {err}");
        assert!(!err.contains("FIXER"), "a{i}: {err}");
        assert!(err.contains(&format!("pid {pid}")), "a{i}: {err}");
    }
    drop(staller);
    assert!(r.state()["keys"].as_array().unwrap().is_empty());
}

/// The coordination dir is read-only and the fixer's check passes: the commit goes ahead with a
/// warning (before: refused, exit 1).
#[test]
fn a_passing_check_commits_with_a_read_only_coordination_dir() {
    let r = TestRepo::new("");
    configure(
        &r,
        "check = \"grep -qx ok state.txt\"\n[hook]\nwait = false\n",
    );
    commit_breakage(&r);
    r.stage_change(&r.dir, "work");
    let out = git_commit(&r, &r.dir, "a", "a work").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    std::fs::write(r.dir.join("state.txt"), "ok\n").unwrap();
    r.git(&["add", "state.txt"]);
    let ro = ReadOnly::new(&r.buildlock_dir());
    if ro.is_none() {
        // Root without the right to mount: make every state write fail another way.
        eprintln!("cannot mount read-only here: the state folder is replaced by a file instead");
        let state = r.buildlock_dir().join("state");
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, "not a folder").unwrap();
    }
    let out = git_commit(&r, &r.dir, "a", "a work").output().unwrap();
    drop(ro);
    assert!(out.status.success(), "refused: {}", text(&out.stderr));
    assert_eq!(r.last_subject(&r.dir), "a work");
}

/// SIGINT while waiting for the election lock (held by a stopped process): before, ignored for
/// 29 s and then exit 1; now exit 130 at once.
#[test]
fn sigint_while_waiting_for_the_election_lock_exits_130_promptly() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let staller = KillOnDrop(Some(
        r.cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", "staller")
            .env("BUILDLOCK_FAULT", "election:stop")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = staller.id();
    assert!(eventually(Duration::from_secs(10), || proc_state(pid) == Some('T')));
    let a = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "a")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&a, libc::SIGINT);
    let start = Instant::now();
    let out = wait_output(a, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(130),
        "after {:?}: {}",
        start.elapsed(),
        text(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    eprintln!("measured: exit 130 {:?} after SIGINT", start.elapsed());
}

/// `status` names the process that holds the role (commit-retry running the fix), which `kill`
/// reaches; before, it named the hook that was elected and had exited.
#[test]
fn status_names_the_live_process_that_holds_the_role() {
    let r = shared_status_repo("3", "");
    r.stage_change(&r.dir, "fa");
    let a = KillOnDrop(Some(commit_retry(&r, &r.dir, "a")));
    assert!(eventually(Duration::from_secs(20), || fix_on_record(&r, 1)));
    let fixer = r.state()["keys"][0]["fixer"].clone();
    assert_eq!(fixer["pid"].as_u64(), Some(u64::from(a.id())), "{fixer}");
    drop(a);
    // A fixer by hand (the plain hook, which has exited): no pid to name, or a live one.
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    assert_eq!(r.hook(&r.dir, "x").status.code(), Some(1));
    let fixer = r.state()["keys"][0]["fixer"].clone();
    assert!(
        fixer["pid"].is_null() || alive(fixer["pid"].as_u64().unwrap() as u32),
        "a dead pid: {fixer}"
    );
}

// ---------------------------------------------------------------------------------------------
// The smaller items.
// ---------------------------------------------------------------------------------------------

/// A waiter whose wait ran out, and one interrupted with SIGINT, are no longer listed.
#[test]
fn waiters_that_gave_up_or_were_interrupted_leave_the_list() {
    let r = TestRepo::new("check = \"false\"\n[coordination]\nwait = \"1s\"\n");
    assert_eq!(r.hook(&r.dir, "fixer").status.code(), Some(1));
    let out = r.hook(&r.dir, "gave-up");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert_eq!(
        r.state()["keys"][0]["waiters"],
        serde_json::json!([]),
        "the waiter whose wait ran out"
    );
    let patient = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "interrupted")
        .env("BUILDLOCK_CONFIG", {
            let p = r.shared("long-wait.toml");
            std::fs::write(&p, "[coordination]\nwait = \"60s\"\n").unwrap();
            p
        })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["interrupted"])));
    signal(&patient, libc::SIGINT);
    let out = wait_output(patient, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(r.state()["keys"][0]["waiters"], serde_json::json!([]));
}

/// `b`'s check started before `a`'s fix and failed after it: a stale failure, re-run, passing.
/// `b` hit no breakage on record and avoided no fix run (before, it counted as one).
#[test]
fn a_stale_rerun_is_not_an_avoided_fix_run() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let marker = r.shared("b-checking");
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {s} && exit 0; [ $BUILDLOCK_AGENT = b ] && touch {m}; sleep 1; false\"\n\
             [hook]\nwait = false\n",
            s = status.display(),
            m = marker.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    assert_eq!(r.hook(&r.dir, "a").status.code(), Some(1));
    let b = r
        .cmd(PRE_COMMIT, &r.dir)
        .env("BUILDLOCK_AGENT", "b")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || marker.exists()));
    std::fs::write(&status, "ok\n").unwrap();
    assert_eq!(r.hook(&r.dir, "a").status.code(), Some(0));
    let out = wait_output(b, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("running it again"),
        "{}",
        text(&out.stderr)
    );
    let totals = &r.state()["totals"];
    assert_eq!(totals["fix_runs_avoided"], 0, "{totals}");
    assert_eq!(totals["failures"], 1, "{totals}");
}

/// Hooks SIGKILLed at random moments, many times: the totals still agree with the history.
/// Before, 300 kills left 89 failures counted against 69 history lines.
#[test]
fn totals_and_history_agree_after_random_sigkills() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let mut rng = Rng::from_env("totals_and_history_agree_after_random_sigkills");
    // How long a failing hook takes here, so that the kills land in its decision.
    let start = Instant::now();
    assert_eq!(r.hook(&r.dir, "probe").status.code(), Some(1));
    let took = start.elapsed().as_micros() as u64;
    for i in 0..150 {
        let child = r
            .cmd(PRE_COMMIT, &r.dir)
            .env("BUILDLOCK_AGENT", format!("k{}", i % 7))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(took / 2 + rng.below(took)));
        signal(&child, libc::SIGKILL);
        let _ = wait_output(child, Duration::from_secs(10));
    }
    let history: Vec<serde_json::Value> =
        std::fs::read_to_string(r.buildlock_dir().join("history.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    let count = |e: &str| history.iter().filter(|h| h["event"] == e).count() as u64;
    let totals = &r.state()["totals"];
    assert_eq!(
        (
            totals["failures"].as_u64(),
            totals["elections"].as_u64(),
            totals["waits"].as_u64()
        ),
        (
            Some(count("failed")),
            Some(count("elected") + count("takeover")),
            Some(count("waiting"))
        ),
        "totals {totals} vs history"
    );
}

/// A check whose command is not found (exit 127) is a configuration error: nobody is elected
/// over `sh: not found`.
#[test]
fn a_check_command_not_found_elects_nobody() {
    let r = TestRepo::new("check = \"no-such-command-buildlock-test\"\n[hook]\nwait = false\n");
    let out = r.hook(&r.dir, "a");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(!err.contains("FIXER"), "{err}");
    assert!(
        r.history_events()
            .iter()
            .all(|e| e != "elected" && e != "failed"),
        "{:?}",
        r.history_events()
    );
}

/// The fixer commits its fix with `BUILDLOCK=0`: the waiters wake at once instead of waiting
/// their whole wait for nobody.
#[test]
fn a_fixers_bypass_commit_still_wakes_the_waiters() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    configure(
        &r,
        &format!(
            "check = \"grep -qx ok {}\"\n[coordination]\nwait = \"60s\"\n",
            status.display()
        ),
    );
    std::fs::write(&status, "broken\n").unwrap();
    let tb = r.worktree("tb");
    r.stage_change(&r.dir, "fa");
    r.stage_change(&tb, "fb");
    let out = git_commit(&r, &r.dir, "a", "a work").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let b = git_commit(&r, &tb, "b", "b work").spawn().unwrap();
    assert!(eventually(Duration::from_secs(10), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    std::fs::write(&status, "ok\n").unwrap();
    let out = git_commit(&r, &r.dir, "a", "a work")
        .env("BUILDLOCK", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let start = Instant::now();
    let out = wait_output(b, Duration::from_secs(20));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.state()["keys"][0]["status"], "passing");
}

/// Symlinks planted in the coordination dir are not followed: the history's target and the
/// state's target stay untouched.
#[test]
fn a_symlink_in_the_coordination_dir_is_not_followed() {
    let r = TestRepo::new("check = \"false\"\n[hook]\nwait = false\n");
    let dir = r.buildlock_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let outside = r.shared("outside.txt");
    std::fs::write(&outside, "precious\n").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("history.jsonl")).unwrap();
    let out = r.hook(&r.dir, "a");
    assert!(
        matches!(out.status.code(), Some(1 | 70)),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "precious\n",
        "written through the symlink"
    );
}

/// A state that names an unrelated process group as a dead fixer's orphaned fix (pid, host and
/// start time all right, as a crafted or stale state can have them) never makes the next fixer
/// kill that group.
#[test]
fn a_crafted_orphan_record_never_kills_an_unrelated_group() {
    for token in [Some("0123456789abcdef"), None] {
        let r = shared_status_repo("0", "");
        assert_eq!(r.hook(&r.dir, "a").status.code(), Some(1));
        let out = buildlock(&r, &r.dir, "a", &["release"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The decoy: a process group of its own that buildlock did not start.
        let decoy = KillOnDrop(Some({
            use std::os::unix::process::CommandExt;
            Command::new("sleep")
                .arg("60")
                .process_group(0)
                .spawn()
                .unwrap()
        }));
        let pid = decoy.id();
        let orphan = serde_json::json!({"pid": pid, "host": hostname(),
            "start": start_time(pid), "token": token});
        let state_dir = r.buildlock_dir().join("state");
        for e in std::fs::read_dir(&state_dir).unwrap().flatten() {
            if !e.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            set_key_everywhere(&mut v, "orphan_fix", &orphan);
            std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        }
        r.stage_change(&r.dir, "fb");
        let out = wait_output(commit_retry(&r, &r.dir, "b"), Duration::from_secs(30));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            proc_state(pid).is_some_and(|s| s != 'Z'),
            "token {token:?}: buildlock killed an unrelated process group: {}",
            text(&out.stderr)
        );
    }
}

fn set_key_everywhere(v: &mut serde_json::Value, key: &str, to: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.contains_key(key) {
                map.insert(key.to_owned(), to.clone());
            }
            for (_, inner) in map.iter_mut() {
                set_key_everywhere(inner, key, to);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                set_key_everywhere(inner, key, to);
            }
        }
        _ => {}
    }
}
