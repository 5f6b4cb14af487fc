//! `buildlock ci [-- COMMAND [ARGS…]]`: the coordination protocol for a CI step or a script,
//! without a commit, with either backend.
//!
//! It runs COMMAND (default: the configured check) at the work tree root.
//! - Passing: exit 0. A passing fixer marks the key it was elected for fixed (with the fix
//!   commit when its HEAD moved, which the remote backend publishes in the same atomic push).
//! - Failing: an election. The fixer runs `fix.command` (holding the role, heartbeat running)
//!   and the check again, up to `max_fix_attempts`; with no `fix.command` it exits 1 saying it is
//!   the fixer. A waiter waits for the fix (`coordination.wait`), runs `retry.refresh` with
//!   `BUILDLOCK_FIX_COMMIT` and `BUILDLOCK_FIX_REF`, and runs the check again.
//!
//! The key is fixed at election: a fix commit moves HEAD (and so the `commit` scope's key), but
//! the fixer's later checks are about the key it was elected for. Exit codes are commit-retry's:
//! 0, 1, 75, 78, 70 (the check failed and coordination failed: nobody was elected), 128+n.

use anyhow::Result;
use std::path::PathBuf;

use crate::flows::context::Context;
use crate::flows::fixrun::{self, FixEnd, FixHandle, FixerRole, Job};
use crate::flows::wait::{self, WaitEnd};
use crate::os::check::{self, Ending};
use crate::os::{env, say, signals, time};
use crate::protocol::config::Match;
use crate::protocol::state::{Event, Outcome, Status};
use crate::protocol::{exit, signature};
use crate::store::Read;

const WHO: &str = "buildlock ci";
/// Fix runs in one `buildlock ci`, whatever `max_fix_attempts` says: a guard against a loop.
const MAX_FIX_RUNS: u32 = 100;
/// Checks whose failure turned out stale, in a row, before a failure counts whatever its age.
const MAX_STALE_RERUNS: u32 = 3;

/// Runs the protocol; returns the exit code.
pub fn run(ctx: &Context, command: Vec<String>) -> Result<i32> {
    signals::install();
    let check = match command.split_first() {
        Some((program, args)) => check::Command::Program(
            PathBuf::from(program),
            args.iter().map(Into::into).collect(),
        ),
        None => match &ctx.config.check {
            Some(c) => check::Command::Shell(c.clone()),
            None => {
                say::say(
                    "buildlock ci: nothing to run: give a command (`buildlock ci -- make test`) or set `check` \
                     in .buildlock.toml",
                );
                return Ok(exit::CONFIG);
            }
        },
    };
    Ci {
        ctx,
        check,
        role: None,
    }
    .run()
}

/// The fixer role this process won, and the key it was won for.
struct Elected {
    job: Job,
    /// HEAD when the role was won: a different HEAD after the fix is the fix commit.
    head_before: String,
    _role: FixerRole,
}

struct Ci<'a> {
    ctx: &'a Context,
    check: check::Command,
    role: Option<Elected>,
}

impl Ci<'_> {
    fn run(&mut self) -> Result<i32> {
        let ctx = self.ctx;
        let coordinate = env::coordination_enabled();
        let mut seen_silent: Option<(u64, u64)> = None;
        let mut stale_reruns = 0;
        let mut waits = 0;
        let mut fix_runs = 0;
        loop {
            let check_started = if stale_reruns < MAX_STALE_RERUNS {
                time::now()
            } else {
                0
            };
            let run = self.run_check()?;
            match run.ending {
                Ending::Signal(n) => {
                    say::say(format!(
                        "{WHO}: interrupted by signal {n}: stopped the command; nothing was recorded"
                    ));
                    return Ok(exit::signal(n));
                }
                Ending::ParentGone => return Ok(exit::signal(libc::SIGHUP)),
                Ending::Passed => {
                    if coordinate {
                        self.passed();
                    }
                    say::headline(say::Tone::Good, format!("{WHO}: the check passes"));
                    return Ok(exit::OK);
                }
                Ending::Failed(_) | Ending::TimedOut(_) if !coordinate => {
                    say::say(format!(
                        "{WHO}: the check failed; coordination is off (BUILDLOCK=0), so nobody was elected"
                    ));
                    return Ok(exit::FIXER);
                }
                Ending::Failed(_) | Ending::TimedOut(_) => {}
            }
            let (job, outcome, fixer_since) = match self.failed(
                &run.output,
                seen_silent.take(),
                check_started,
            ) {
                Ok(x) => x,
                Err(e) => {
                    say::say(format!("{WHO}: {e:#}"));
                    say::say(
                        "the check failed and coordination failed, so nobody was elected (exit 70); \
                             run it again, or without coordination with BUILDLOCK=0",
                    );
                    return Ok(exit::COORDINATION);
                }
            };
            match outcome {
                Outcome::Stale => {
                    stale_reruns += 1;
                    say::say(format!(
                        "{WHO}: the build was fixed while your check ran; running it again"
                    ));
                }
                Outcome::Elected { .. } | Outcome::KeepFixing { .. } => {
                    let Some(command) = ctx.config.fix_command.clone() else {
                        say::say(format!(
                            "{WHO}: you are the fixer and no `fix.command` is configured (exit 1): fix the failure \
                             (log: {}), push the fix, and run `buildlock ci` again; or give the role up with \
                             `buildlock release`",
                            job.log
                                .as_ref()
                                .map_or_else(|| "-".into(), |l| l.display().to_string())
                        ));
                        return Ok(exit::FIXER);
                    };
                    fix_runs += 1;
                    if fix_runs > MAX_FIX_RUNS {
                        anyhow::bail!(
                            "the fix ran {MAX_FIX_RUNS} times without the check passing; stopping"
                        );
                    }
                    if self
                        .role
                        .as_ref()
                        .is_none_or(|r| r.job.generation != job.generation || r.job.key != job.key)
                    {
                        let role = fixrun::take_role(ctx, &job)?;
                        self.role = Some(Elected {
                            job: job.clone(),
                            head_before: ctx.repo.head_commit(),
                            _role: role,
                        });
                    }
                    match fixrun::run_fix(ctx, &command, &job, WHO)? {
                        FixEnd::Done => {}
                        FixEnd::TakenOver => {
                            self.role = None;
                            say::say(format!(
                                "{WHO}: another agent took the fixer role over: stopped our fix; waiting for theirs"
                            ));
                        }
                        FixEnd::Signal(n) => return Ok(exit::signal(n)),
                    }
                }
                Outcome::GaveUp { attempts } => {
                    say::say(format!(
                        "{WHO}: the check still fails after {attempts} fix attempts: you gave the fixer role up \
                         (exit 1); the key is broken with nobody fixing; ask a person to look at {}",
                        job.log
                            .as_ref()
                            .map_or_else(|| "-".into(), |l| l.display().to_string())
                    ));
                    return Ok(exit::FIXER);
                }
                Outcome::Wait { fixer, .. } => {
                    self.role = None;
                    waits += 1;
                    if waits > ctx.config.retry_attempts {
                        say::say(format!(
                            "{WHO}: still blocked by `{}` after {} waits (exit 75); run it again later or check \
                             `buildlock status`",
                            fixer.agent, ctx.config.retry_attempts
                        ));
                        return Ok(exit::BLOCKED);
                    }
                    say::say(format!(
                        "{WHO}: `{}` is fixing this breakage (since {}); waiting up to {} for the fix",
                        fixer.agent,
                        time::rfc3339(fixer_since.unwrap_or(fixer.since)),
                        time::human(ctx.config.wait)
                    ));
                    match self.wait(&job) {
                        WaitEnd::Signal(n) => return Ok(exit::signal(n)),
                        WaitEnd::ParentGone => return Ok(exit::signal(libc::SIGHUP)),
                        WaitEnd::TimedOut => {
                            say::say(format!(
                                "{WHO}: no fix after {} (exit 75); run it again later, or check `buildlock status`",
                                time::human(ctx.config.wait)
                            ));
                            return Ok(exit::BLOCKED);
                        }
                        WaitEnd::FixerSilent(f, lease) => {
                            say::say(format!(
                                "{WHO}: the fixer `{}` went silent for {}; checking again (and taking over if it \
                                 still fails)",
                                f.agent,
                                time::human(ctx.config.stale_after)
                            ));
                            seen_silent = Some(lease);
                        }
                        WaitEnd::Fixed { by } => {
                            say::headline(
                                say::Tone::Good,
                                format!(
                                    "{WHO}: the build was fixed{}",
                                    by.map(|b| format!(" by `{b}`")).unwrap_or_default()
                                ),
                            );
                            let fix = self.fix_of(&job.key);
                            if let Some(code) = fixrun::refresh(ctx, &job, &fix, WHO)? {
                                return Ok(code);
                            }
                        }
                        WaitEnd::Moved { generation } => say::say(format!(
                            "{WHO}: that fix ended and generation {generation} began; checking again"
                        )),
                        WaitEnd::Broken => {
                            say::say(format!("{WHO}: the fixer gave the role up; checking again"))
                        }
                        WaitEnd::FixerDied(f) => say::say(format!(
                            "{WHO}: the fixer `{}` died; checking again",
                            f.agent
                        )),
                    }
                }
                other => anyhow::bail!("unexpected outcome of a failed check: {other:?}"),
            }
        }
    }

    fn run_check(&self) -> Result<check::Run> {
        let opts = check::Options {
            dir: &self.ctx.repo.worktree,
            timeout: self.ctx.config.check_timeout,
            echo: true,
            env: Vec::new(),
            parent: None,
            on_start: &mut |_| crate::os::fault::point("check"),
            cancel: &|| false,
        };
        Ok(check::run(&self.check, opts)?)
    }

    /// The key this failure is about: the one we were elected for, else the current scope's.
    fn failed(
        &self,
        output: &[u8],
        seen_silent: Option<(u64, u64)>,
        check_started: u64,
    ) -> Result<(Job, Outcome, Option<u64>)> {
        let ctx = self.ctx;
        let sig = signature::signature(output, &ctx.repo.worktree, env::home_dir().as_deref());
        let log = crate::store::local::write_log(&ctx.home, &ctx.agent, output)?;
        let (key, base) = match &self.role {
            Some(r) => (r.job.key.clone(), r.job.base.clone()),
            None => {
                let base = ctx.base();
                (
                    crate::protocol::key::for_failure(&base, ctx.config.matching, &sig),
                    base,
                )
            }
        };
        let event = Event::Failed {
            agent: ctx.agent(),
            signature: sig.clone(),
            log: log.clone(),
            check_started,
        };
        let applied = ctx
            .store
            .apply(&key, &base, &event, ctx.policy(), seen_silent)?;
        let attempts = applied
            .after
            .fixer
            .as_ref()
            .filter(|f| f.agent == ctx.agent)
            .map_or(0, |f| f.attempts);
        let job = Job {
            key,
            base,
            generation: applied.after.generation,
            attempt: attempts + 1,
            signature: Some(sig),
            log: Some(log),
        };
        let since = match &applied.outcome {
            Outcome::Wait { fixer, .. } => Some(fixer.since),
            _ => None,
        };
        match &applied.outcome {
            Outcome::Elected { replaced } => say::headline(
                say::Tone::Bad,
                format!(
                    "{WHO}: the check failed and you are the FIXER (key `{}`, generation {}){}",
                    job.key,
                    job.generation,
                    replaced
                        .as_ref()
                        .map(|(f, _)| format!(", taking over from `{}`", f.agent))
                        .unwrap_or_default()
                ),
            ),
            Outcome::KeepFixing { attempts } => say::say(format!(
                "{WHO}: the check still fails after the fix (failed re-check {attempts} of {})",
                ctx.config.max_fix_attempts
            )),
            _ => {}
        }
        Ok((job, applied.outcome, since))
    }

    /// Marks the build passing: the fixer marks the key it was elected for; anyone marks a broken
    /// key of the current scope passing. A coordination failure here never fails a passing check.
    fn passed(&self) {
        let ctx = self.ctx;
        let result = (|| -> Result<()> {
            if let Some(r) = &self.role {
                let event = Event::Passed {
                    agent: ctx.agent(),
                    generation: Some(r.job.generation),
                };
                let applied =
                    ctx.store
                        .apply(&r.job.key, &r.job.base, &event, ctx.policy(), None)?;
                if applied.outcome == Outcome::Fixed {
                    let head = ctx.repo.head_commit();
                    let moved = if head != r.head_before {
                        format!("; the fix is commit {head}")
                    } else {
                        String::new()
                    };
                    say::headline(
                        say::Tone::Good,
                        format!(
                            "{WHO}: you fixed the build (key `{}`, generation {}){moved}; the agents waiting \
                             for you resume now",
                            r.job.key, r.job.generation
                        ),
                    );
                }
                return Ok(());
            }
            let base = ctx.base();
            let keys: Vec<String> = match ctx.config.matching {
                Match::Any => match ctx.store.read(&base) {
                    Read::Found { state, .. } if state.status == Status::Passing => return Ok(()),
                    Read::Missing => return Ok(()),
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
                ctx.store.apply(&key, &base, &event, ctx.policy(), None)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            say::warn(format!(
                "{WHO}: the check passed but could not be recorded: {e:#}"
            ));
        }
    }

    fn wait(&self, job: &Job) -> WaitEnd {
        wait::wait_for_fix(&wait::Waiting {
            store: self.ctx.store.as_ref(),
            key: &job.key,
            generation: job.generation,
            limit: self.ctx.config.wait,
            stale_after: self.ctx.config.stale_after,
            poll: env::poll_interval(),
            parent: None,
        })
    }

    /// The fix commit of `key`'s last fix, and where the remote publishes it.
    fn fix_of(&self, _key: &str) -> FixHandle {
        FixHandle::default()
    }
}
