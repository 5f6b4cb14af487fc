//! commit-retry: `git commit` that turns "someone else is fixing the build" into a commit that
//! simply succeeds a little later, and that runs the fix when it is the one elected.
//!
//! It learns the hook's decision for certain from the decision file (see `decision.rs`); git
//! failures of its own pass through with git's exit code and no retry, except contention on git's
//! lock files (`index.lock` and friends), which is retried with jittered backoff and elects nobody.
//!
//! As fixer with `fix.command`, it holds a [`Role`] for as long as it is the fixer, re-check
//! commits included (see `fixer.rs`), and records its fix commit once the commit is made. As a
//! waiter it waits for the fix, takes the fix commit through `retry.refresh`, and retries.

use anyhow::{Context as _, Result};
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::flows::context::{Context, LoadError};
use crate::flows::decision::{Decision, Verdict};
use crate::flows::fixcommit;
use crate::flows::fixer::{self, Assignment, FixEnd, Role, Took};
use crate::flows::wait::{self, WaitEnd};
use crate::os::{env, say, signals, time};
use crate::protocol::exit;
use crate::protocol::state::Event;
use crate::store::Read;

const LOCK_CONTENTION_RETRIES: u32 = 30;
/// Fix runs in one commit-retry, whatever `max_fix_attempts` says: a guard against a loop.
const MAX_FIX_RUNS: u32 = 100;

pub fn main(args: Vec<OsString>) -> i32 {
    signals::install();
    let git = match which::which("git") {
        Ok(git) => git,
        Err(_) => {
            say::say("`git` is not on PATH; install git or fix PATH, then run commit-retry again");
            return 127;
        }
    };
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(LoadError::Config(e)) => {
            say::say(format!("{e}"));
            return exit::CONFIG;
        }
        // Not a repository, or similar: git says it best.
        Err(LoadError::Other(_)) => return plain_git(&git, &args),
    };
    let retry = Retry {
        ctx: &ctx,
        git,
        args,
        elected: std::cell::RefCell::new(None),
    };
    match retry.run() {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("commit-retry: {e:#}"));
            retry.give_up_role();
            exit::COORDINATION
        }
    }
}

fn plain_git(git: &Path, args: &[OsString]) -> i32 {
    match Command::new(git).arg("commit").args(args).status() {
        Ok(s) => code_of(s),
        Err(e) => {
            say::say(format!("cannot run git: {e}"));
            127
        }
    }
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| {
        exit::signal(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(1))
    })
}

struct Retry<'a> {
    ctx: &'a Context,
    git: PathBuf,
    args: Vec<OsString>,
    /// The breakage this run was elected to fix, if any: given up if the run fails, so that the
    /// others need not wait for a fixer that is gone without having registered.
    elected: std::cell::RefCell<Option<Assignment>>,
}

/// One `git commit` run.
struct GitRun {
    code: i32,
    decision: Option<Decision>,
    lock_contention: bool,
}

fn assignment(d: &Decision) -> Assignment {
    let key = d.key.clone().unwrap_or_default();
    Assignment {
        base: d.base.clone().unwrap_or_else(|| key.clone()),
        key,
        generation: d.generation.unwrap_or(0),
        signature: d.signature.clone(),
        log: d.log.clone(),
        attempts: d.attempts.unwrap_or(0),
    }
}

impl Retry<'_> {
    fn run(&self) -> Result<i32> {
        let cfg = &self.ctx.config;
        let mut blocked = 0;
        let mut contention = 0;
        let mut fix_runs = 0;
        let mut coordination_since: Option<Instant> = None;
        let mut role: Option<Role> = None;
        let mut seen_silent: Option<(u64, u64)> = None;
        let mut claim_waits = 0; // issue 12
        loop {
            let git = self.commit(role.as_ref(), seen_silent.take())?;
            if let Some(signal) = signals::pending() {
                say::say(format!(
                    "commit-retry: interrupted by signal {signal}; stopping (nothing was committed)"
                ));
                return Ok(exit::signal(signal));
            }
            if git.code == 0 {
                if let Some(role) = &role {
                    self.record_fix_commit(role);
                }
                if blocked > 0 || role.is_some() {
                    say::headline(say::Tone::Good, "committed");
                }
                return Ok(exit::OK);
            }
            let decision = match git.decision {
                Some(d) if d.verdict != Verdict::Pass => d,
                // git failed on its own (before the hook, or after it passed).
                _ if git.lock_contention && contention < LOCK_CONTENTION_RETRIES => {
                    contention += 1;
                    let pause = Duration::from_millis(100 * u64::from(contention.min(10)))
                        + time::jitter(Duration::from_millis(200));
                    say::say(format!(
                        "another git process holds a lock in this repository; retrying in {} ({contention}/{LOCK_CONTENTION_RETRIES})",
                        time::human(pause)
                    ));
                    std::thread::sleep(pause);
                    continue;
                }
                _ => return Ok(git.code),
            };
            match decision.verdict {
                Verdict::Pass => unreachable!("handled above"),
                Verdict::ConfigError => return Ok(exit::CONFIG),
                // Claims guard (issue 12): refused before the check; wait for the release.
                Verdict::Claimed => {
                    claim_waits += 1;
                    if claim_waits > cfg.retry_attempts {
                        return Ok(exit::BLOCKED);
                    }
                    match crate::flows::guard::retry_wait(self.ctx, &decision) {
                        Some(code) => return Ok(code),
                        None => continue,
                    }
                }
                Verdict::Failed => return Ok(git.code),
                Verdict::CoordinationFailed => {
                    let since = *coordination_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= cfg.wait {
                        say::say(format!(
                            "commit-retry: coordination kept failing for {}; giving up (exit 70)",
                            time::human(cfg.wait)
                        ));
                        return Ok(exit::COORDINATION);
                    }
                    let pause = Duration::from_secs(1) + time::jitter(Duration::from_secs(1));
                    say::say(format!(
                        "commit-retry: coordination failed; retrying in {}",
                        time::human(pause)
                    ));
                    std::thread::sleep(pause);
                    continue;
                }
                Verdict::GaveUp => {
                    say::say(
                        "you gave the fixer role up; the build stays broken until someone fixes it",
                    );
                    return Ok(exit::FIXER);
                }
                Verdict::Fix => {
                    let a = assignment(&decision);
                    *self.elected.borrow_mut() = Some(a.clone());
                    let Some(command) = cfg.fix_command.clone() else {
                        say::say(
                            "commit-retry: you are the fixer and no `fix.command` is configured: fix \
                             the failure (see the log above), then run `git commit-retry …` again",
                        );
                        return Ok(exit::FIXER);
                    };
                    fix_runs += 1;
                    if fix_runs > MAX_FIX_RUNS {
                        anyhow::bail!(
                            "the fix ran {MAX_FIX_RUNS} times without the build passing; stopping"
                        );
                    }
                    if !role.as_ref().is_some_and(|r| r.is_for(&a)) {
                        // Drop an old role before taking a new one.
                        role = None;
                        match Role::take(self.ctx, &a)? {
                            Took::Role(r) => role = Some(r),
                            Took::NotFixer => continue,
                            Took::HeldElsewhere => {
                                say::say(format!(
                                    "commit-retry: another run of agent `{}` already holds this \
                                     fixer role (generation {}); waiting for it instead of \
                                     fixing beside it",
                                    self.ctx.agent, a.generation
                                ));
                                let mut d = decision.clone();
                                d.fixer = Some(self.ctx.agent.clone());
                                match self.wait_or_give_up(&d, &mut blocked)? {
                                    Waited::Exit(code) => return Ok(code),
                                    _ => continue,
                                }
                            }
                        }
                    }
                    let r = role.as_ref().expect("taken above");
                    match r.run_fix(self.ctx, &command, &a)? {
                        FixEnd::Done => {}
                        FixEnd::TakenOver => {
                            role = None;
                            say::say(
                                "another agent took the fixer role over: stopped our fix; waiting \
                                 for theirs",
                            );
                        }
                        FixEnd::Signal(n) => {
                            say::say(format!(
                                "commit-retry: interrupted by signal {n}; stopped the fix"
                            ));
                            return Ok(exit::signal(n));
                        }
                    }
                }
                Verdict::Wait => {
                    role = None;
                    match self.wait_or_give_up(&decision, &mut blocked)? {
                        Waited::Exit(code) => return Ok(code),
                        Waited::Silent(lease) => seen_silent = Some(lease),
                        Waited::Again => {}
                    }
                }
                Verdict::TakeFix => {
                    role = None;
                    blocked += 1;
                    let commit = decision.fix_commit.clone().unwrap_or_default();
                    if let Some(code) = self.take_fix(&decision, &commit, blocked)? {
                        return Ok(code);
                    }
                }
            }
        }
    }

    /// This run failed while elected: give the role up (best effort), so that the next failing
    /// agent is elected at once instead of everyone waiting out the lease.
    fn give_up_role(&self) {
        let Some(a) = self.elected.borrow_mut().take() else {
            return;
        };
        let event = Event::Release {
            agent: self.ctx.agent.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let released =
            self.ctx
                .store
                .apply(&a.key, &a.base, &event, self.ctx.policy(), None, &|| {
                    Instant::now() > deadline
                });
        if released.is_ok_and(|r| r.outcome == crate::protocol::state::Outcome::Released) {
            say::say(format!(
                "commit-retry: gave the fixer role of key `{}` up, so that another agent can take it",
                a.key
            ));
        }
    }

    /// After the fixer's own commit: records which commit fixed it (best effort): the first
    /// commit after the HEAD its passing check saw, which is this commit unless the fix command
    /// committed the fix itself.
    fn record_fix_commit(&self, role: &Role) {
        let Read::Found { state, .. } = self.ctx.store.read(&role.key) else {
            return;
        };
        let Some(fix) = state
            .fix
            .filter(|f| f.by == self.ctx.agent && f.generation == role.generation)
        else {
            return;
        };
        if fix.commit.is_some() {
            return;
        }
        let Some(commit) = fixcommit::resolve(&fix).or_else(|| self.ctx.repo.head_oid()) else {
            return;
        };
        let event = Event::FixCommitted {
            agent: self.ctx.agent.clone(),
            generation: role.generation,
            commit,
        };
        if let Err(e) = self.ctx.store.apply(
            &role.key,
            &role.base,
            &event,
            self.ctx.policy(),
            None,
            &|| false,
        ) {
            say::warn(format!("could not record the fix commit: {e:#}"));
        }
    }

    /// Waits (counting a blocked attempt); `Waited::Exit` when commit-retry must stop.
    fn wait_or_give_up(&self, d: &Decision, blocked: &mut u32) -> Result<Waited> {
        *blocked += 1;
        if *blocked >= self.ctx.config.retry_attempts {
            say::say(format!(
                "commit-retry: still blocked by `{}` after {} commit attempts (exit 75)\nnext: run \
                 `git commit-retry …` again later, check `git buildlock status`, or bypass with \
                 `git commit --no-verify`",
                d.fixer.as_deref().unwrap_or("another agent"),
                self.ctx.config.retry_attempts
            ));
            return Ok(Waited::Exit(exit::BLOCKED));
        }
        let a = assignment(d);
        Ok(match self.wait(d) {
            WaitEnd::Signal(n) => Waited::Exit(exit::signal(n)),
            WaitEnd::FixerSilent(_, lease) => Waited::Silent(lease),
            WaitEnd::Fixed { fix, .. } => {
                // git writes the fix commit just after the fixer's hook returns: wait for it
                // (bounded), then hand it to `retry.refresh` when this branch lacks it.
                let commit = fix.as_ref().and_then(|f| {
                    fixcommit::await_commit(f, fixcommit::GRACE, &|| signals::pending().is_some())
                });
                let lacking = commit.and_then(|c| fixcommit::lacking(&self.ctx.repo, &c));
                match fixer::refresh(self.ctx, &a, lacking.as_deref())? {
                    Some(code) => Waited::Exit(code),
                    None => Waited::Again,
                }
            }
            WaitEnd::Moved { .. } => match fixer::refresh(self.ctx, &a, None)? {
                Some(code) => Waited::Exit(code),
                None => Waited::Again,
            },
            _ => Waited::Again,
        })
    }

    /// The fix exists as `commit` and this branch lacks it: `retry.refresh` takes it, with
    /// `BUILDLOCK_FIX_COMMIT`; without a refresh the agent is told how. `Some(code)` to exit with.
    fn take_fix(&self, d: &Decision, commit: &str, blocked: u32) -> Result<Option<i32>> {
        if self.ctx.config.retry_refresh.is_none() {
            say::say(format!(
                "commit-retry: take the fix with {}, then run `git commit-retry …` again \
                 (or set `retry.refresh` in .buildlock.toml to take it on its own: it gets \
                 BUILDLOCK_FIX_COMMIT; the example config has one that does it safely)",
                fixcommit::how_to_take(commit)
            ));
            return Ok(Some(exit::BLOCKED));
        }
        if blocked >= self.ctx.config.retry_attempts {
            say::say(format!(
                "commit-retry: `retry.refresh` did not bring in the fix commit {commit} after {} \
                 attempts (exit 75); take it with {}",
                self.ctx.config.retry_attempts,
                fixcommit::how_to_take(commit)
            ));
            return Ok(Some(exit::BLOCKED));
        }
        fixer::refresh(self.ctx, &assignment(d), Some(commit))
    }

    /// Runs `git commit` with our arguments untouched, asking the hook for its decision, and
    /// waits for it by blocking (no polling).
    fn commit(&self, role: Option<&Role>, seen_silent: Option<(u64, u64)>) -> Result<GitRun> {
        // The hand-over file lives in the coordination dir, or, where its folder cannot be made
        // (read-only), in the temp dir: a passing commit must never be refused for it. A hook
        // that cannot write it (a full disk) says so, and that is read below.
        let mut run_dir = self.ctx.home.join("run");
        remove_old_decisions(&run_dir);
        if std::fs::create_dir_all(&run_dir).is_err() {
            run_dir = std::env::temp_dir();
        }
        let decision_path = run_dir.join(format!(
            "buildlock-decision-{}-{}.json",
            std::process::id(),
            time::now()
        ));
        let mut cmd = Command::new(&self.git);
        cmd.arg("commit")
            .args(&self.args)
            .env(env::DECISION_VAR, &decision_path)
            .env(env::HOLDER_VAR, std::process::id().to_string())
            .stderr(Stdio::piped());
        if let Some(role) = role {
            cmd.env(env::FIXER_GENERATION_VAR, role.generation.to_string());
        }
        if let Some((generation, heartbeat)) = seen_silent {
            cmd.env(env::SEEN_SILENT_VAR, format!("{generation}:{heartbeat}"));
        }
        let mut child = cmd.spawn().context("cannot run git commit")?;
        let pid = child.id();
        // Pass git's stderr through as it comes, keeping the end to recognise lock contention.
        let mut stderr = child.stderr.take().expect("piped");
        let tail = std::thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                say::raw(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 16384 {
                    tail.drain(..tail.len() - 8192);
                }
            }
            tail
        });
        // A thread blocks in wait(); we block on its answer, waking only to look for a signal.
        let (done, exited) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        let status = loop {
            match exited.recv_timeout(Duration::from_millis(200)) {
                Ok(status) => break status.context("cannot wait for git commit")?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("lost track of git commit (pid {pid})")
                }
            }
            if signals::pending().is_some() {
                // Stop git; its hook notices that git went away and stops the check.
                // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        };
        let _ = waiter.join();
        let tail = String::from_utf8_lossy(&tail.join().unwrap_or_default()).into_owned();
        let mut decision = Decision::read(&decision_path);
        if decision.is_none() && tail.contains(crate::flows::decision::HAND_OVER_FAILED) {
            // The hook decided but could not say what: treat it as coordination failing, never
            // as git's own exit code (which would read as "you are the fixer").
            decision = Some(Decision::new(Verdict::CoordinationFailed));
        }
        let _ = std::fs::remove_file(&decision_path);
        let lock_contention =
            tail.contains(".lock': File exists") || tail.contains("cannot lock ref");
        Ok(GitRun {
            code: code_of(status),
            decision,
            lock_contention,
        })
    }

    fn wait(&self, d: &Decision) -> WaitEnd {
        let key = d.key.clone().unwrap_or_default();
        let limit = self.ctx.config.wait;
        say::say(format!(
            "commit-retry: `{}` is fixing; waiting up to {} for the fix, then retrying the commit",
            d.fixer.as_deref().unwrap_or("another agent"),
            time::human(limit)
        ));
        let end = wait::wait_for_fix(&wait::Waiting {
            store: self.ctx.store.as_ref(),
            key: &key,
            generation: d.generation.unwrap_or(0),
            limit,
            stale_after: self.ctx.config.stale_after,
            poll: env::poll_interval(),
            parent: None,
        });
        if !matches!(end, WaitEnd::Fixed { .. }) {
            wait::leave(self.ctx, &key, d.base.as_deref().unwrap_or(&key));
        }
        let (what, next) = match &end {
            WaitEnd::Fixed { by, .. } => (
                format!(
                    "fixed{}",
                    by.as_ref()
                        .map(|b| format!(" by `{b}`"))
                        .unwrap_or_default()
                ),
                "retrying the commit",
            ),
            WaitEnd::Moved { generation } => (
                format!("that fix ended (now generation {generation})"),
                "retrying the commit",
            ),
            WaitEnd::Broken => (
                "the fixer gave the role up".to_owned(),
                "retrying the commit",
            ),
            WaitEnd::FixerDied(f) => (
                format!("the fixer `{}` died", f.agent),
                "retrying the commit",
            ),
            WaitEnd::FixerSilent(f, _) => (
                format!("the fixer `{}` went silent", f.agent),
                "retrying the commit",
            ),
            WaitEnd::TimedOut => (
                format!("no fix after {}", time::human(limit)),
                "retrying the commit",
            ),
            WaitEnd::Signal(n) => (format!("interrupted by signal {n}"), "stopping"),
            WaitEnd::ParentGone => ("parent gone".to_owned(), "stopping"),
        };
        say::say(format!("commit-retry: {what}; {next}"));
        end
    }
}

enum Waited {
    Again,
    Silent((u64, u64)),
    Exit(i32),
}

/// Decision files older than a day: left by a commit-retry that was killed mid-commit.
fn remove_old_decisions(run_dir: &Path) {
    let day = Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
