//! A temp repository builder and an isolated environment for running the real binaries.
//!
//! Every command starts from a cleared environment: temporary `HOME` and `XDG_CONFIG_HOME`, no
//! global or system git config, fixed author dates, a fast poll interval, no colour.

#![allow(dead_code)]

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
    pub fn hook(&self, dir: &Path, agent: &str) -> Output {
        self.cmd(PRE_COMMIT, dir)
            .env("BUILDLOCK_AGENT", agent)
            .output()
            .unwrap()
    }

    /// The lines of the shared witness file that fix commands append to.
    pub fn witness(&self) -> Vec<String> {
        std::fs::read_to_string(self.shared("witness"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn buildlock_dir(&self) -> PathBuf {
        self.dir.join(".git/buildlock")
    }

    pub fn state(&self) -> serde_json::Value {
        let mut c = self.cmd(BUILDLOCK, &self.dir);
        c.args(["status", "--json"]);
        serde_json::from_slice(&run_ok(c).stdout).unwrap()
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
