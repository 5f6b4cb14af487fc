//! commit-retry: `git commit` that turns "someone else is fixing the build" into a commit that
//! simply succeeds a little later, and that runs the fix when it is the one elected.
//!
//! It learns the hook's decision for certain from the decision file (see `decision.rs`); git
//! failures of its own pass through with git's exit code and no retry, except contention on git's
//! lock files (`index.lock` and friends), which is retried with jittered backoff and elects nobody.
//!
//! As fixer with `fix.command`, it holds the key's fixer lock for the whole fix (so its death is
//! seen at once), renews its lease from a heartbeat thread, stops a predecessor's orphaned fix
//! before starting its own, and stops when another agent has taken the role over.

use anyhow::{Context as _, Result};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::flows::context::{Context, LoadError};
use crate::flows::decision::{Decision, Verdict};
use crate::flows::lease::Heartbeat;
use crate::flows::wait::{self, WaitEnd};
use crate::os::check::{self, Ending};
use crate::os::{env, process, say, time};
use crate::protocol::exit;
use crate::protocol::state::{Event, Process};
use crate::store::FixerHold;

const LOCK_CONTENTION_RETRIES: u32 = 30;
/// Fix runs in one commit-retry, whatever `max_fix_attempts` says: a guard against a loop.
const MAX_FIX_RUNS: u32 = 100;

pub fn main(args: Vec<OsString>) -> i32 {
    crate::os::signals::install();
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
    match (Retry {
        ctx: &ctx,
        git,
        args,
    })
    .run()
    {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("commit-retry: {e:#}"));
            exit::FIXER
        }
    }
}

fn plain_git(git: &Path, args: &[OsString]) -> i32 {
    match Command::new(git).arg("commit").args(args).status() {
        Ok(s) => s.code().unwrap_or_else(|| {
            exit::signal(std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(1))
        }),
        Err(e) => {
            say::say(format!("cannot run git: {e}"));
            127
        }
    }
}

struct Retry<'a> {
    ctx: &'a Context,
    git: PathBuf,
    args: Vec<OsString>,
}

/// One `git commit` run.
struct GitRun {
    code: i32,
    decision: Option<Decision>,
    lock_contention: bool,
}

/// What this process holds while it is the fixer.
struct FixerRole {
    generation: u64,
    _lock: Option<FixerHold>,
}

impl Retry<'_> {
    fn run(&self) -> Result<i32> {
        let cfg = &self.ctx.config;
        let mut blocked = 0;
        let mut contention = 0;
        let mut fix_runs = 0;
        let mut role: Option<FixerRole> = None;
        let mut seen_silent: Option<(u64, u64)> = None;
        loop {
            let git = self.commit(seen_silent.take())?;
            if let Some(signal) = crate::os::signals::pending() {
                return Ok(exit::signal(signal));
            }
            if git.code == 0 {
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
                Verdict::Failed => return Ok(git.code),
                Verdict::GaveUp => {
                    say::say(
                        "you gave the fixer role up; the build stays broken until someone fixes it",
                    );
                    return Ok(exit::FIXER);
                }
                Verdict::Fix => {
                    let Some(command) = cfg.fix_command.clone() else {
                        say::say(
                            "commit-retry: you are the fixer and no `fix.command` is configured: fix the failure \
                             (see the log above), then run `git commit-retry …` again",
                        );
                        return Ok(exit::FIXER);
                    };
                    fix_runs += 1;
                    if fix_runs > MAX_FIX_RUNS {
                        anyhow::bail!(
                            "the fix ran {MAX_FIX_RUNS} times without the build passing; stopping"
                        );
                    }
                    let generation = decision.generation.unwrap_or(0);
                    if role.as_ref().is_none_or(|r| r.generation != generation) {
                        role = Some(self.take_role(&decision)?);
                    }
                    match self.fix(&command, &decision)? {
                        FixEnd::Done => {}
                        FixEnd::TakenOver => {
                            role = None;
                            say::say(
                                "another agent took the fixer role over: stopped our fix; waiting for theirs",
                            );
                        }
                        FixEnd::Signal(n) => return Ok(exit::signal(n)),
                    }
                }
                Verdict::Wait => {
                    role = None;
                    blocked += 1;
                    if blocked >= cfg.retry_attempts {
                        say::say(format!(
                            "commit-retry: still blocked by `{}` after {} commit attempts (exit 75)\nnext: run \
                             `git commit-retry …` again later, check `buildlock status`, or bypass with `git commit --no-verify`",
                            decision.fixer.as_deref().unwrap_or("another agent"),
                            cfg.retry_attempts
                        ));
                        return Ok(exit::BLOCKED);
                    }
                    match self.wait(&decision) {
                        WaitEnd::Signal(n) => return Ok(exit::signal(n)),
                        WaitEnd::FixerSilent(_, lease) => seen_silent = Some(lease),
                        WaitEnd::Fixed { .. } | WaitEnd::Moved { .. } => {
                            if let Some(code) = self.refresh(&decision)? {
                                return Ok(code);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Runs `git commit` with our arguments untouched, asking the hook for its decision.
    fn commit(&self, seen_silent: Option<(u64, u64)>) -> Result<GitRun> {
        let run_dir = self.ctx.home.join("run");
        remove_old_decisions(&run_dir);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let decision_path = run_dir.join(format!("{}-{}.json", std::process::id(), time::now()));
        let mut cmd = Command::new(&self.git);
        cmd.arg("commit")
            .args(&self.args)
            .env(env::DECISION_VAR, &decision_path)
            .stderr(Stdio::piped());
        if let Some((generation, heartbeat)) = seen_silent {
            cmd.env(env::SEEN_SILENT_VAR, format!("{generation}:{heartbeat}"));
        }
        let mut child = cmd.spawn().context("cannot run git commit")?;
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
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(signal) = crate::os::signals::pending() {
                // Stop git; its hook notices that git went away and stops the check.
                // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
                let _ = std::fs::remove_file(&decision_path);
                return Ok(GitRun {
                    code: exit::signal(signal),
                    decision: None,
                    lock_contention: false,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let tail = String::from_utf8_lossy(&tail.join().unwrap_or_default()).into_owned();
        let decision = Decision::read(&decision_path);
        let _ = std::fs::remove_file(&decision_path);
        let code = status.code().unwrap_or_else(|| {
            exit::signal(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(1))
        });
        let lock_contention =
            tail.contains(".lock': File exists") || tail.contains("cannot lock ref");
        Ok(GitRun {
            code,
            decision,
            lock_contention,
        })
    }

    /// Takes the fixer lock (so that our death is seen at once) and registers as the fixer.
    fn take_role(&self, d: &Decision) -> Result<FixerRole> {
        let key = d.key.as_deref().unwrap_or_default();
        let generation = d.generation.unwrap_or(0);
        // A waiter probing the lock holds it for a moment: try for a short while.
        let lock = self.ctx.store.hold_fixer(key, Duration::from_secs(2))?;
        if lock.is_none() {
            say::warn(
                "the fixer lock is held by the previous fixer (a stopped process?); fixing without it, \
                 on the lease alone",
            );
        }
        // Stop what is left of the previous fixer's fix before starting ours.
        if let crate::store::Read::Found { state, .. } = self.ctx.store.read(key) {
            if let Some(orphan) = &state.orphan_fix {
                if process::stop_group(orphan, Duration::from_secs(2)) {
                    say::say(format!(
                        "stopped the previous fixer's fix (pid {} on {})",
                        orphan.pid, orphan.host
                    ));
                }
            }
        }
        if lock.is_some() {
            let event = Event::Register {
                agent: self.ctx.agent.clone(),
                generation,
                fix_process: None,
            };
            self.ctx.store.apply(
                key,
                d.base.as_deref().unwrap_or(key),
                &event,
                self.ctx.policy(),
                None,
            )?;
        }
        Ok(FixerRole {
            generation,
            _lock: lock,
        })
    }

    fn fix(&self, command: &str, d: &Decision) -> Result<FixEnd> {
        let key = d.key.clone().unwrap_or_default();
        let base = d.base.clone().unwrap_or_else(|| key.clone());
        let generation = d.generation.unwrap_or(0);
        let attempt = d.attempts.unwrap_or(0) + 1;
        say::headline(
            say::Tone::Bad,
            format!(
                "commit-retry: you are the fixer; running the fix (attempt {attempt} of {}): {command}",
                self.ctx.config.max_fix_attempts
            ),
        );
        let heartbeat = Heartbeat::start(
            self.ctx.store.clone(),
            key.clone(),
            self.ctx.agent.clone(),
            generation,
            self.ctx.config.stale_after,
        );
        let store = &self.ctx.store;
        let agent = self.ctx.agent.clone();
        let policy = self.ctx.policy();
        let mut on_start = |pgid: u32| {
            let fix_process = Process {
                pid: pgid,
                host: process::hostname(),
                start: process::start_time(pgid),
            };
            let event = Event::Register {
                agent: agent.clone(),
                generation,
                fix_process: Some(fix_process),
            };
            if let Err(e) = store.apply(&key, &base, &event, policy, None) {
                say::warn(format!("could not record the fix process: {e:#}"));
            }
            let _ = store.record(
                serde_json::json!({"event": "fix_started", "key": key, "agent": agent,
                                                     "generation": generation, "attempt": attempt}),
            );
            crate::os::fault::point("fix");
        };
        let run = self.shell(command, self.fix_env(d, attempt), &mut on_start, &|| {
            heartbeat.fenced()
        })?;
        let taken_over = heartbeat.fenced();
        drop(heartbeat);
        let _ = store.record(
            serde_json::json!({"event": "fix_finished", "key": d.key, "agent": self.ctx.agent,
            "generation": generation, "attempt": attempt, "ok": run.ending == Ending::Passed,
            "took_ms": run.took.as_millis() as u64}),
        );
        Ok(match run.ending {
            Ending::Signal(n) => FixEnd::Signal(n),
            _ if taken_over => FixEnd::TakenOver,
            Ending::Passed => {
                say::say(format!(
                    "the fix finished in {}; committing again",
                    time::human(run.took)
                ));
                FixEnd::Done
            }
            other => {
                say::say(format!(
                    "the fix ended with {other:?}; committing again to re-check"
                ));
                FixEnd::Done
            }
        })
    }

    /// Runs `command` with `sh -c` at the work tree root in its own process group, echoed,
    /// bounded by `check_timeout` (the fix and the refresh).
    fn shell(
        &self,
        command: &str,
        env: Vec<(String, OsString)>,
        on_start: &mut dyn FnMut(u32),
        cancel: &dyn Fn() -> bool,
    ) -> Result<check::Run> {
        let options = check::Options {
            dir: &self.ctx.repo.worktree,
            timeout: self.ctx.config.check_timeout,
            echo: true,
            env,
            parent: None,
            on_start,
            cancel,
        };
        Ok(check::run(
            &check::Command::Shell(command.to_owned()),
            options,
        )?)
    }

    fn fix_env(&self, d: &Decision, attempt: u32) -> Vec<(String, OsString)> {
        let mut env = vec![
            (
                "BUILDLOCK_KEY".to_owned(),
                d.key.clone().unwrap_or_default().into(),
            ),
            (
                "BUILDLOCK_SIGNATURE".to_owned(),
                d.signature.clone().unwrap_or_default().into(),
            ),
            (
                "BUILDLOCK_GENERATION".to_owned(),
                d.generation.unwrap_or(0).to_string().into(),
            ),
            ("BUILDLOCK_ATTEMPT".to_owned(), attempt.to_string().into()),
            ("BUILDLOCK_AGENT".to_owned(), self.ctx.agent.clone().into()),
        ];
        if let Some(log) = &d.log {
            env.push(("BUILDLOCK_LOG".to_owned(), log.clone().into_os_string()));
        }
        env
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
        let what = match &end {
            WaitEnd::Fixed { by } => format!(
                "fixed{}",
                by.as_ref()
                    .map(|b| format!(" by `{b}`"))
                    .unwrap_or_default()
            ),
            WaitEnd::Moved { generation } => {
                format!("that fix ended (now generation {generation})")
            }
            WaitEnd::Broken => "the fixer gave the role up".to_owned(),
            WaitEnd::FixerDied(f) => format!("the fixer `{}` died", f.agent),
            WaitEnd::FixerSilent(f, _) => format!("the fixer `{}` went silent", f.agent),
            WaitEnd::TimedOut => format!("no fix after {}", time::human(limit)),
            WaitEnd::Signal(n) => format!("interrupted by signal {n}"),
            WaitEnd::ParentGone => "parent gone".to_owned(),
        };
        say::say(format!("commit-retry: {what}; retrying the commit"));
        end
    }

    /// Runs `retry.refresh` after a fix; `Some(code)` when it failed.
    fn refresh(&self, d: &Decision) -> Result<Option<i32>> {
        let Some(refresh) = &self.ctx.config.retry_refresh else {
            return Ok(None);
        };
        say::say(format!(
            "commit-retry: refreshing before the retry: {refresh}"
        ));
        let run = self.shell(
            refresh,
            self.fix_env(d, d.attempts.unwrap_or(0) + 1),
            &mut |_| {},
            &|| false,
        )?;
        Ok(match run.ending {
            Ending::Passed => None,
            Ending::Signal(n) => Some(exit::signal(n)),
            other => {
                say::say(format!(
                    "commit-retry: `retry.refresh` failed ({other:?}); fix what it reports, then run `git commit-retry …` again"
                ));
                Some(exit::BLOCKED)
            }
        })
    }
}

enum FixEnd {
    Done,
    TakenOver,
    Signal(i32),
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
