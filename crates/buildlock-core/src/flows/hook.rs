//! The pre-commit hook: run the check, then tell this agent whether it is the fixer or must wait.
//!
//! Hot path (check passes, nobody fixing): one in-process repository open, the config files, the
//! check, one small state file read. No lock, no write, no git subprocess.

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::flows::context::{Context, LoadError};
use crate::flows::decision::{Decision, Verdict};
use crate::flows::wait::{self, WaitEnd};
use crate::os::check::{self, Ending};
use crate::os::{env, say, time};
use crate::protocol::config::Match;
use crate::protocol::state::{Event, Outcome, Status};
use crate::protocol::{exit, signature};
use crate::store::Read;

/// Where install.sh keeps a pre-existing hook that buildlock chains.
pub fn chained_hook(buildlock_dir: &std::path::Path) -> PathBuf {
    buildlock_dir.join("chained").join("pre-commit")
}

pub fn main(args: Vec<OsString>) -> i32 {
    crate::os::signals::install();
    let parent = std::os::unix::process::parent_id();
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(LoadError::Config(e)) => {
            say::say(format!("{e}"));
            say::say(
                "fix the file (see .buildlock.toml.example), or bypass once with `git commit --no-verify`",
            );
            Decision::new(Verdict::ConfigError).hand_over();
            return exit::CONFIG;
        }
        Err(LoadError::Other(e)) => {
            say::say(format!("cannot run the pre-commit check: {e:#}"));
            return exit::FIXER;
        }
    };
    let Some(command) = the_check(&ctx, args) else {
        Decision::new(Verdict::Pass).hand_over();
        return exit::OK;
    };
    let hook = Hook {
        ctx: &ctx,
        command,
        parent,
    };
    match hook.run() {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("{e:#}"));
            say::say(
                "coordination failed, so this failure was not coordinated; bypass with BUILDLOCK=0 if it persists",
            );
            exit::FIXER
        }
    }
}

/// The configured `check`, else a chained hook, else nothing to do.
fn the_check(ctx: &Context, args: Vec<OsString>) -> Option<check::Command> {
    if let Some(check) = &ctx.config.check {
        return Some(check::Command::Shell(check.clone()));
    }
    let chained = chained_hook(&ctx.home);
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(&chained)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    executable.then_some(check::Command::Program(chained, args))
}

struct Hook<'a> {
    ctx: &'a Context,
    command: check::Command,
    parent: u32,
}

impl Hook<'_> {
    fn run(&self) -> Result<i32> {
        let coordinate = env::coordination_enabled();
        // commit-retry waits itself and wants the decision; a plain commit waits here if allowed.
        let under_retry = env::decision_file().is_some();
        let may_wait = coordinate && self.ctx.config.hook_wait && !under_retry;
        let deadline = Instant::now() + self.ctx.config.wait;
        let mut seen_silent = env::seen_silent();
        let mut stale_reruns = 0;
        loop {
            // A failure seen before the build was fixed is stale; a few re-runs at most, then the
            // failure counts whatever its age.
            let check_started = if stale_reruns < 3 { time::now() } else { 0 };
            let run = self.run_check()?;
            match run.ending {
                Ending::Signal(n) => {
                    say::say(format!(
                        "interrupted by signal {n}: stopped the check; nothing was recorded"
                    ));
                    return Ok(exit::signal(n));
                }
                Ending::ParentGone => {
                    say::say("git went away: stopped the check; nothing was recorded");
                    return Ok(exit::signal(libc::SIGHUP));
                }
                Ending::Passed => {
                    if coordinate {
                        self.passed()?;
                    }
                    Decision::new(Verdict::Pass).hand_over();
                    return Ok(exit::OK);
                }
                Ending::Failed(_) | Ending::TimedOut(_) if !coordinate => {
                    say::say(
                        "the check failed; coordination is off (BUILDLOCK=0), so nobody was elected",
                    );
                    Decision::new(Verdict::Failed).hand_over();
                    return Ok(exit::FIXER);
                }
                Ending::Failed(_) | Ending::TimedOut(_) => {}
            }
            let Some((decision, fixer_since)) =
                self.failed(&run.output, seen_silent.take(), check_started)?
            else {
                stale_reruns += 1;
                say::say("the build was fixed while your check ran; running it again");
                continue;
            };
            decision.hand_over();
            match decision.verdict {
                Verdict::Wait if may_wait && Instant::now() < deadline => {}
                Verdict::Wait => {
                    tell_wait(
                        &decision,
                        fixer_since,
                        under_retry,
                        self.ctx.config.hook_wait,
                    );
                    return Ok(exit::BLOCKED);
                }
                _ => return Ok(exit::FIXER),
            }
            let key = decision.key.clone().unwrap_or_default();
            let waiting = wait::Waiting {
                store: self.ctx.store.as_ref(),
                key: &key,
                generation: decision.generation.unwrap_or(0),
                limit: deadline.saturating_duration_since(Instant::now()),
                stale_after: self.ctx.config.stale_after,
                poll: env::poll_interval(),
                parent: Some(self.parent),
            };
            say::say(format!(
                "waiting up to {} for the fix, then this commit goes ahead or gives up (exit 75); \
                 Ctrl-C to stop waiting",
                time::human(waiting.limit)
            ));
            match wait::wait_for_fix(&waiting) {
                WaitEnd::Fixed { by } => say::headline(
                    say::Tone::Good,
                    format!(
                        "the build was fixed{}; running the check again",
                        by.map(|b| format!(" by `{b}`")).unwrap_or_default()
                    ),
                ),
                WaitEnd::Moved { generation } => say::say(format!(
                    "that fix ended and generation {generation} began; running the check again"
                )),
                WaitEnd::Broken => say::say("the fixer gave the role up; running the check again"),
                WaitEnd::FixerDied(f) => say::say(format!(
                    "the fixer `{}` died; running the check again",
                    f.agent
                )),
                WaitEnd::FixerSilent(f, lease) => {
                    say::say(format!(
                        "the fixer `{}` went silent; running the check again",
                        f.agent
                    ));
                    seen_silent = Some(lease);
                }
                WaitEnd::TimedOut => {
                    tell_wait(&decision, fixer_since, false, true);
                    return Ok(exit::BLOCKED);
                }
                WaitEnd::Signal(n) => {
                    say::say(format!("interrupted by signal {n} while waiting"));
                    return Ok(exit::signal(n));
                }
                WaitEnd::ParentGone => return Ok(exit::signal(libc::SIGHUP)),
            }
        }
    }

    fn run_check(&self) -> Result<check::Run> {
        let opts = check::Options {
            dir: &self.ctx.repo.worktree,
            timeout: self.ctx.config.check_timeout,
            echo: true,
            env: Vec::new(),
            parent: Some(self.parent),
            on_start: &mut |_| crate::os::fault::point("check"),
            cancel: &|| false,
        };
        Ok(check::run(&self.command, opts)?)
    }

    /// The check passed: a fixer's pass, or any pass on a broken key, marks it passing.
    fn passed(&self) -> Result<()> {
        let ctx = self.ctx;
        let base = ctx.base();
        let keys: Vec<String> = match ctx.config.matching {
            Match::Any => match ctx.store.read(&base) {
                Read::Found { state, .. } if state.status == Status::Passing => return Ok(()),
                Read::Missing => return Ok(()),
                // A passing check is never refused because coordination failed.
                Read::Unreachable(why) => {
                    say::warn(format!("{why}; the check passed, so this goes ahead"));
                    return Ok(());
                }
                _ => vec![base.clone()],
            },
            Match::Signature => ctx
                .store
                .all()
                .into_iter()
                .filter(|(b, s)| *b == base && s.status != Status::Passing)
                .map(|(_, s)| s.key)
                .collect(),
        };
        for key in keys {
            let event = Event::Passed {
                agent: ctx.agent(),
                generation: None,
            };
            let applied = ctx.store.apply(&key, &base, &event, ctx.policy(), None)?;
            match applied.outcome {
                Outcome::Fixed => say::headline(
                    say::Tone::Good,
                    format!(
                        "the check passes: you fixed the build (key `{key}`, generation {}); agents waiting for \
                         you are resuming now",
                        applied.after.generation
                    ),
                ),
                Outcome::Recovered => say::say(format!(
                    "the check passes: the build (key `{key}`) is passing again"
                )),
                _ => {}
            }
        }
        Ok(())
    }

    /// The check failed: record it and learn this agent's role.
    /// `None` when the failure was stale (seen before the build was fixed).
    fn failed(
        &self,
        output: &[u8],
        seen_silent: Option<(u64, u64)>,
        check_started: u64,
    ) -> Result<Option<(Decision, Option<u64>)>> {
        let ctx = self.ctx;
        let sig = signature::signature(output, &ctx.repo.worktree, env::home_dir().as_deref());
        let log = crate::store::local::write_log(&ctx.home, &ctx.agent, output)?;
        let base = ctx.base();
        let key = crate::protocol::key::for_failure(&base, ctx.config.matching, &sig);
        let event = Event::Failed {
            agent: ctx.agent(),
            signature: sig.clone(),
            log: log.clone(),
            check_started,
        };
        let applied = ctx
            .store
            .apply(&key, &base, &event, ctx.policy(), seen_silent)?;
        if applied.outcome == Outcome::Stale {
            let _ = std::fs::remove_file(&log);
            return Ok(None);
        }
        let mut d = Decision::new(Verdict::Fix);
        d.key = Some(key.clone());
        d.base = Some(base);
        d.generation = Some(applied.after.generation);
        d.log = Some(log.clone());
        d.signature = Some(sig);
        let release = "give the role up with `buildlock release` (or `git buildlock release`)";
        let bypass = "bypass: `BUILDLOCK=0 git commit …` (check runs, no coordination) or `git commit --no-verify` (no hook)";
        let mut fixer_since = None;
        match &applied.outcome {
            Outcome::Elected { replaced } => {
                d.fixer = Some(ctx.agent.clone());
                d.attempts = Some(0);
                let how = match replaced {
                    Some((old, why)) => format!(
                        " (taking over from `{}`, whose {})",
                        old.agent,
                        match why {
                            crate::protocol::state::Liveness::Dead => "process died",
                            _ => "lease ran out without a sign of life",
                        }
                    ),
                    None => String::new(),
                };
                say::headline(
                    say::Tone::Bad,
                    format!("the check failed and you are the FIXER for this breakage{how}"),
                );
                say::say(format!(
                    "  key `{key}`, generation {}; failure log: {}\n  other agents that hit this failure now wait for your fix (up to {})\n\
                     next: fix the failure and commit again; your passing commit marks the build fixed and wakes them\n{release}\n{bypass}",
                    applied.after.generation,
                    log.display(),
                    time::human(ctx.config.wait),
                ));
            }
            Outcome::KeepFixing { attempts } => {
                d.fixer = Some(ctx.agent.clone());
                d.attempts = Some(*attempts);
                say::headline(
                    say::Tone::Bad,
                    format!(
                        "the check still fails: you are still the FIXER (failed re-check {attempts} of {})",
                        ctx.config.max_fix_attempts
                    ),
                );
                say::say(format!(
                    "  key `{key}`; failure log: {}\nnext: keep fixing and commit again; after {} failed re-checks \
                     the role is given up\n{release}",
                    log.display(),
                    ctx.config.max_fix_attempts,
                ));
            }
            Outcome::GaveUp { attempts } => {
                d.verdict = Verdict::GaveUp;
                d.attempts = Some(*attempts);
                say::headline(
                    say::Tone::Bad,
                    format!(
                        "the check failed again: after {attempts} failed re-checks you gave the fixer role up"
                    ),
                );
                say::say(format!(
                    "  key `{key}` is now broken with nobody fixing; failure log: {}\nnext: the next agent whose check \
                     fails becomes the fixer; ask a person to look at the log",
                    log.display()
                ));
            }
            Outcome::Wait { fixer, .. } => {
                d.verdict = Verdict::Wait;
                d.fixer = Some(fixer.agent.clone());
                d.since = Some(fixer.since);
                fixer_since = Some(fixer.since);
                say::headline(
                    say::Tone::Wait,
                    format!(
                        "the check failed, and `{}` is already fixing this breakage",
                        fixer.agent
                    ),
                );
                say::say(format!(
                    "  fixing since {} ({} ago); key `{key}`, generation {}\n  their failure log: {}\n  your failure log: {}\n\
                     do not fix it yourself: it is being fixed",
                    time::rfc3339(fixer.since),
                    time::human(Duration::from_millis(
                        time::now().saturating_sub(fixer.since)
                    )),
                    applied.after.generation,
                    applied
                        .after
                        .log
                        .as_ref()
                        .map_or_else(|| "-".into(), |l| l.display().to_string()),
                    log.display(),
                ));
            }
            other => anyhow::bail!("unexpected outcome of a failed check: {other:?}"),
        }
        Ok(Some((d, fixer_since)))
    }
}

fn tell_wait(d: &Decision, since: Option<u64>, under_retry: bool, waited: bool) {
    if under_retry {
        return; // commit-retry does the waiting and the telling
    }
    let fixer = d.fixer.as_deref().unwrap_or("another agent");
    if waited {
        say::say(format!(
            "`{fixer}` is still fixing (since {}); this commit gives up for now (exit 75)",
            since.map_or_else(|| "-".into(), time::rfc3339)
        ));
    }
    say::say(
        "next: retry your commit in a few minutes, or use `git commit-retry …`, which waits for the fix and \
         retries on its own\nbypass: `BUILDLOCK=0 git commit …` (check runs, no coordination) or `git commit --no-verify` (no hook)",
    );
}
