//! `buildlock ci [-- COMMAND [ARGS…]]`: the coordination protocol for a CI step or a script,
//! without a commit, with either backend.
//!
//! It runs COMMAND (default: the configured check) at the work tree root.
//! - Passing: exit 0. A passing fixer marks the key it was elected for fixed, with its fix
//!   commit when its HEAD moved (the remote backend publishes that commit in the same atomic
//!   push, under `refs/buildlock/fix/…`).
//! - Failing: an election. The fixer runs `fix.command` (holding the role, heartbeat running)
//!   and COMMAND again, up to `max_fix_attempts`; with no `fix.command` it exits 1 saying it is
//!   the fixer. A waiter waits for the fix (`coordination.wait`), runs `retry.refresh` with
//!   `BUILDLOCK_FIX_COMMIT` (and `BUILDLOCK_FIX_REF` with the remote backend), and runs COMMAND
//!   again. A failure that the last fix already fixed, on a HEAD without the fix commit, elects
//!   nobody: the refresh takes the fix.
//!
//! The key is fixed at election: a fix commit moves HEAD (and so the `commit` scope's key), but
//! the fixer's later checks are about the key it was elected for. Exit codes are commit-retry's:
//! 0, 1, 75, 78, 70 (the check failed and coordination failed: nobody was elected), 128+n; and 3
//! when the tested commit failed and the job passed only on the fix (`ci.pass_on_fix = true`: 0).
//!
//! The CI result (contract: "the CI result and the fix's way home"):
//! - the *tested commit* is HEAD when the job starts. A job passes "on the fix" when its tested
//!   commit failed and its passing check ran on another HEAD (the fix commit, taken by
//!   `retry.refresh` or made by its own fix) or on tracked changes not committed (a fix that made
//!   no commit). A job whose check failed and then passed on the same clean tested commit (the
//!   fix was outside the repository, or the failure was flaky) passes: exit 0, said as such.
//! - every job prints a block saying so in its log and, where `GITHUB_STEP_SUMMARY` is set,
//!   appends the same account in Markdown: tested commit, verdict, who fixed it, the fix commit,
//!   where it was delivered, and which jobs are known to have passed on it (the fixer's own check
//!   and this job; each other job reports its own).
//! - the fixer delivers its fix commit (`ci.deliver`) before it marks the build fixed, so that a
//!   waiter that sees the build fixed can also see where the fix went: to the branch
//!   `buildlock/fix/<12 hex of the tested commit>` created with an empty expected old value
//!   (never moved once there), or (`"push"`) onto the tested branch, leased on the tested commit.
//!   The remote is `coordination.remote` with the remote backend, `origin` with the local one;
//!   with no such remote the fix is not delivered, and the job says so.

use anyhow::Result;
use std::path::PathBuf;

use crate::flows::commit::failure::{self, Failure, Recorded};
use crate::flows::commit::fixcommit;
use crate::flows::commit::fixer::{self, Announce, Assignment, Finished, FixEnd, Role, Took};
use crate::flows::commit::wait::{self, WaitEnd};
use crate::flows::context::Context;
use crate::os::check::{self, Ending};
use crate::os::{env, say, signals, time};

use crate::protocol::exit;
use crate::protocol::state::{Event, FixSeen, KeyState, Liveness, Outcome, Status};
use crate::store::{BaseView, StoreError};

mod deliver;
mod push;
mod verdict;

pub use deliver::fix_branch;

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
                    "buildlock ci: nothing to run: give a command (`buildlock ci -- make test`) or \
                     set `check` in .buildlock.toml",
                );
                return Ok(exit::CONFIG);
            }
        },
    };
    let tested = ctx.repo.head_oid();
    let branch = ctx.repo.branch();
    let tested_branch = if branch != "HEAD" {
        Some(branch)
    } else {
        env::ci_branch()
    };
    let mut ci = Ci {
        ctx,
        check,
        role: None,
        seen_silent: None,
        stale_reruns: 0,
        blocked: 0,
        fix_runs: 0,
        tested,
        tested_branch,
        failed: false,
        passed_on: None,
        fix: None,
        aside: Vec::new(),
    };
    let code = ci.run();
    // The records made aside are on the remote (or said to have failed) before the job ends.
    for record in ci.aside.drain(..) {
        let _ = record.join();
    }
    Ok(ci.verdict(code?))
}

/// The fix this job passed on (or waited for), as far as it knows.
#[derive(Default)]
struct JobFix {
    /// Who fixed it.
    by: Option<String>,
    /// The fix commit.
    commit: Option<String>,
    /// The jobs that waited for it.
    waited: Vec<String>,
    /// This job ran the fix.
    mine: bool,
    /// Where it was delivered, in words (Markdown-safe), and the link to open a pull or merge
    /// request.
    delivered: Option<String>,
    link: Option<String>,
}

/// The fixer role this process holds, and HEAD when it was won (a different HEAD after the fix
/// is the fix commit).
struct Held {
    role: Role,
    head_before: Option<String>,
}

struct Ci<'a> {
    ctx: &'a Context,
    check: check::Command,
    role: Option<Held>,
    /// The fixer lease a wait saw silent, for the next failure to report.
    seen_silent: Option<(u64, u64)>,
    /// Failures in a row that turned out stale.
    stale_reruns: u32,
    /// Waits and fixes taken so far.
    blocked: u32,
    fix_runs: u32,
    /// HEAD when the job started: the commit whose verdict it reports.
    tested: Option<String>,
    /// The branch being tested (the checked-out branch, else the one the CI names).
    tested_branch: Option<String>,
    /// The check failed at least once.
    failed: bool,
    /// Where the passing check ran: HEAD, and whether tracked files differed from it.
    passed_on: Option<(Option<String>, bool)>,
    /// The fix, once there is one.
    fix: Option<JobFix>,
    /// History records written on threads of their own meanwhile (being told to take the fix).
    aside: Vec<std::thread::JoinHandle<()>>,
}

fn stop() -> bool {
    signals::pending().is_some()
}

/// The check failed with coordination off (`BUILDLOCK=0`) or unusable here: nobody is elected.
fn uncoordinated(ctx: &Context) -> i32 {
    match &ctx.unusable {
        Some(why) => {
            say::say(format!(
                "{WHO}: the check failed and coordination cannot work here ({why}): \
                 nobody was elected (exit 70)"
            ));
            exit::COORDINATION
        }
        None => {
            say::say(format!(
                "{WHO}: the check failed; coordination is off (BUILDLOCK=0), so nobody \
                 was elected"
            ));
            exit::FIXER
        }
    }
}

/// Recording the failure failed: interrupted, or coordination itself failed.
fn coordination_failed(e: &StoreError) -> i32 {
    if matches!(e, StoreError::Interrupted) {
        return exit::signal(signals::pending().unwrap_or(signals::SIGINT));
    }
    say::say(format!("{WHO}: {e:#}"));
    say::say(
        "the check failed and coordination failed, so nobody was elected (exit \
         70); run it again, or without coordination with BUILDLOCK=0",
    );
    exit::COORDINATION
}

impl Ci<'_> {
    fn run(&mut self) -> Result<i32> {
        let code = self.run_rounds();
        // A fix run's end not yet recorded with a step (see `Finished::WithNextStep`).
        self.record_finished();
        code
    }

    /// Records the last fix run's end on its own, when no step took it.
    fn record_finished(&self) {
        if let Some(entry) = self.role.as_ref().and_then(|h| h.role.take_finished()) {
            if let Err(e) = self.ctx.store.record(entry) {
                say::warn(format!("could not record in the history: {e:#}"));
            }
        }
    }

    fn run_rounds(&mut self) -> Result<i32> {
        let ctx = self.ctx;
        let coordinate = env::coordination_enabled() && ctx.unusable.is_none();
        loop {
            // The key a fixer works on is the one it was elected for, wherever HEAD went since.
            let base = match &self.role {
                Some(h) => h.role.base.clone(),
                None => ctx.base(),
            };
            let view = if coordinate {
                ctx.store.read_base(&base)
            } else {
                BaseView::default()
            };
            let passes_seen = (self.stale_reruns < MAX_STALE_RERUNS).then_some(view.passes);
            let run = match self.run_check() {
                Ok(run) => run,
                Err(e) => {
                    say::say(format!("{WHO}: cannot run the command: {e:#}"));
                    return Ok(exit::CONFIG);
                }
            };
            if let Some(code) = self.check_ended(&run.ending, coordinate, &base, &view) {
                return Ok(code);
            }
            self.failed = true;
            if !coordinate {
                return Ok(uncoordinated(ctx));
            }
            let seen_silent = self.seen_silent.take();
            // The fix run's end goes on record before the failure of its re-check.
            self.record_finished();
            let (a, outcome, after) =
                match self.failed(&run.output, &base, &view, passes_seen, seen_silent) {
                    Ok(x) => x,
                    Err(e) => return Ok(coordination_failed(&e)),
                };
            if let Some(code) = self.act(&a, outcome, &after)? {
                return Ok(code);
            }
        }
    }

    /// The exit code when the check's run ends the job (a signal, a pass, a command that could
    /// not run); `None` when it failed and the protocol goes on.
    fn check_ended(
        &mut self,
        ending: &Ending,
        coordinate: bool,
        base: &str,
        view: &BaseView,
    ) -> Option<i32> {
        match ending {
            Ending::Signal(n) => {
                say::say(format!(
                    "{WHO}: interrupted by signal {n}: stopped the command; nothing was recorded"
                ));
                Some(exit::signal(*n))
            }
            Ending::ParentGone => Some(exit::signal(signals::SIGHUP)),
            Ending::Passed => {
                self.passed_on = Some((self.ctx.repo.head_oid(), tracked_changes(self.ctx)));
                if coordinate {
                    self.passed(base, view);
                }
                say::headline(say::Tone::Good, format!("{WHO}: the check passes"));
                Some(exit::OK)
            }
            Ending::Failed(Some(code @ (126 | 127))) => {
                say::say(format!(
                    "{WHO}: the command could not run (exit {code}: {}); this is not a broken \
                     build, so nobody was elected",
                    if *code == 127 {
                        "not found"
                    } else {
                        "not executable"
                    }
                ));
                Some(exit::CONFIG)
            }
            Ending::Failed(_) | Ending::TimedOut(_) => None,
        }
    }

    /// What this job does about the outcome of its failure; `Some(code)` to exit with, `None` to
    /// run the check again.
    fn act(&mut self, a: &Assignment, outcome: Outcome, after: &KeyState) -> Result<Option<i32>> {
        match outcome {
            Outcome::Stale => {
                self.stale_reruns += 1;
                say::say(format!(
                    "{WHO}: the build was fixed while your check ran; running it again"
                ));
                Ok(None)
            }
            Outcome::Elected { .. } | Outcome::KeepFixing { .. } => self.fix(a, after),
            Outcome::GaveUp { attempts } => {
                say::say(format!(
                    "{WHO}: the check still fails after {attempts} fix attempts: you gave the \
                     fixer role up (exit 1); the key is broken with nobody fixing; ask a person \
                     to look at {}",
                    a.log
                        .as_ref()
                        .map_or_else(|| "-".into(), |l| l.display().to_string())
                ));
                Ok(Some(exit::FIXER))
            }
            Outcome::Wait { .. } => {
                self.role = None;
                self.blocked += 1;
                if self.blocked > self.ctx.config.retry_attempts {
                    wait::leave(self.ctx, &a.key, &a.base);
                    say::say(format!(
                        "{WHO}: still blocked after {} waits (exit 75); run it again later, or \
                         check `buildlock status`",
                        self.ctx.config.retry_attempts
                    ));
                    return Ok(Some(exit::BLOCKED));
                }
                self.wait(a, after)
            }
            Outcome::TakeFix { commit, by } => self.take_fix(a, &commit, &say::inert(&by)),
            other => anyhow::bail!("unexpected outcome of a failed check: {other:?}"),
        }
    }

    /// Elected: runs `fix.command` holding the role (taken first, unless held already).
    fn fix(&mut self, a: &Assignment, after: &KeyState) -> Result<Option<i32>> {
        let ctx = self.ctx;
        let Some(command) = ctx.config.fix_command.clone() else {
            say::say(format!(
                "{WHO}: you are the fixer and no `fix.command` is configured (exit 1): \
                 fix the failure (log: {}), and run `buildlock ci` again; or give the \
                 role up with `buildlock release`",
                a.log
                    .as_ref()
                    .map_or_else(|| "-".into(), |l| l.display().to_string())
            ));
            return Ok(Some(exit::FIXER));
        };
        self.fix_runs += 1;
        if self.fix_runs > MAX_FIX_RUNS {
            anyhow::bail!("the fix ran {MAX_FIX_RUNS} times without the check passing; stopping");
        }
        if !self.role.as_ref().is_some_and(|h| h.role.is_for(a)) {
            self.role = None;
            // The fix runs right below: the registration announces it.
            match Role::take(ctx, a, Announce::FixNext, Some(after))? {
                Took::Role(role) => {
                    self.role = Some(Held {
                        role,
                        head_before: ctx.repo.head_oid(),
                    })
                }
                Took::NotFixer => return Ok(None),
                Took::HeldElsewhere => {
                    say::say(format!(
                        "{WHO}: another run of agent `{}` holds this fixer role \
                         (generation {}); waiting for it instead of fixing beside it",
                        ctx.agent, a.generation
                    ));
                    return self.wait(a, after);
                }
            }
        }
        let held = self.role.as_ref().expect("taken above");
        // A run that ended (Done) is recorded with the re-check's step: its pass marks the
        // key fixed in the same write.
        let end = held
            .role
            .run_fix(ctx, &command, a, &[], Finished::WithNextStep)?;
        if !matches!(end, FixEnd::Done) {
            self.record_finished();
        }
        match end {
            FixEnd::Done => {}
            FixEnd::TakenOver => {
                self.role = None;
                say::say(format!(
                    "{WHO}: the fixer role moved on (taken over, released or reset): stopped \
                     our fix; this job goes on as any other"
                ));
            }
            FixEnd::NotStarted => self.role = None,
            FixEnd::Signal(n) => {
                say::say(format!("{WHO}: interrupted by signal {n}; stopped the fix"));
                return Ok(Some(exit::signal(n)));
            }
        }
        Ok(None)
    }

    /// The fix exists as `commit` and this checkout lacks it: `retry.refresh` takes it, else
    /// the job stops and says how.
    fn take_fix(&mut self, a: &Assignment, commit: &str, by: &str) -> Result<Option<i32>> {
        self.role = None;
        self.blocked += 1;
        say::say(format!(
            "{WHO}: `{by}` already fixed this failure in commit {commit}, which this \
             checkout lacks"
        ));
        self.fix = Some(JobFix {
            by: Some(by.to_owned()),
            commit: Some(commit.to_owned()),
            ..JobFix::default()
        });
        self.hand_fix(a, commit, by, true)
    }

    /// This checkout lacks the fix `commit` by `by`: `retry.refresh` takes it, else the job stops
    /// and says how (exit 75), as it does past `retry.attempts` when `counted` (a wait that
    /// ended in the fix counted already).
    fn hand_fix(
        &mut self,
        a: &Assignment,
        commit: &str,
        by: &str,
        counted: bool,
    ) -> Result<Option<i32>> {
        let ctx = self.ctx;
        if !counted {
            // Recorded while the fix is taken and the check runs: nothing here waits for it.
            self.aside.push(fixcommit::record_told_aside(
                ctx,
                &a.key,
                Some(a.generation),
                commit,
                by,
            ));
            say::say(format!(
                "{WHO}: `{by}` fixed it in commit {commit}, which this checkout lacks"
            ));
        }
        let over = counted && self.blocked > ctx.config.retry_attempts;
        if ctx.config.retry_refresh.is_none() || over {
            say::say(format!(
                "{WHO}: take the fix ({}), then run `buildlock ci` again (exit 75); \
                 `retry.refresh` takes it on its own with BUILDLOCK_FIX_COMMIT{}",
                fixcommit::how_to_take(commit),
                ctx.store
                    .fix_ref(&a.key, commit)
                    .map(|r| format!(" and BUILDLOCK_FIX_REF={r}"))
                    .unwrap_or_default()
            ));
            return Ok(Some(exit::BLOCKED));
        }
        fixer::refresh(ctx, a, Some(commit))
    }

    fn run_check(&self) -> std::io::Result<check::Run> {
        let opts = check::Options {
            dir: &self.ctx.repo.worktree,
            timeout: self.ctx.config.check_timeout,
            echo: true,
            env: Vec::new(),
            parent: None,
            on_start: &mut |_| crate::os::fault::point("check"),
            cancel: &|| {
                self.ctx.prepare_for_a_failure();
                false
            },
        };
        check::run(&self.check, opts)
    }

    /// Records the failure and learns this job's role.
    fn failed(
        &self,
        output: &[u8],
        base: &str,
        view: &BaseView,
        passes_seen: Option<u64>,
        seen_silent: Option<(u64, u64)>,
    ) -> Result<(Assignment, Outcome, KeyState), StoreError> {
        let ctx = self.ctx;
        let failure = Failure {
            output,
            base,
            key: self.role.as_ref().map(|h| h.role.key.clone()),
            view,
            passes_seen,
            seen_silent,
            holder: Some(std::process::id()),
            elector: ctx
                .config
                .fix_command
                .is_some()
                .then(crate::os::process::me),
        };
        let Recorded {
            key,
            signature,
            log,
            applied,
        } = failure::record(ctx, failure, &stop)?;
        let attempts = applied
            .after
            .fixer
            .as_ref()
            .filter(|f| f.agent == ctx.agent)
            .map_or(0, |f| f.attempts);
        let a = Assignment {
            key,
            base: base.to_owned(),
            generation: applied.after.generation,
            signature: Some(signature),
            log,
            attempts,
        };
        match &applied.outcome {
            Outcome::Elected { replaced } => say::headline(
                say::Tone::Bad,
                format!(
                    "{WHO}: the check failed and you are the FIXER (key `{}`, generation {}){}",
                    a.key,
                    a.generation,
                    replaced
                        .as_ref()
                        .map(|(f, why)| match why {
                            Liveness::Overtime => format!(
                                ", taking over from `{}`, which {}: it is fenced and its fix \
                                 is stopped before ours starts",
                                say::inert(&f.agent),
                                fixer::held_too_long(ctx)
                            ),
                            _ => format!(", taking over from `{}`", say::inert(&f.agent)),
                        })
                        .unwrap_or_default()
                ),
            ),
            Outcome::KeepFixing { attempts } => say::say(format!(
                "{WHO}: the check still fails after the fix (failed re-check {attempts} of {})",
                ctx.config.max_fix_attempts
            )),
            Outcome::Wait { fixer, .. } => say::say(format!(
                "{WHO}: `{}` is fixing this breakage (since {}); waiting up to {} for the fix",
                say::inert(&fixer.agent),
                time::rfc3339(fixer.since),
                time::human(ctx.config.wait)
            )),
            _ => {}
        }
        Ok((a, applied.outcome, applied.after))
    }

    /// Waits for the fixer of `a`; `Some(code)` to exit with.
    fn wait(&mut self, a: &Assignment, state: &KeyState) -> Result<Option<i32>> {
        let ctx = self.ctx;
        let end = wait::wait_for_fix(&wait::Waiting {
            store: ctx.store.as_ref(),
            key: &a.key,
            generation: state.generation,
            limit: ctx.config.wait,
            stale_after: ctx.config.stale_after,
            poll: env::poll_override(),
            parent: None,
        });
        Ok(match end {
            WaitEnd::Signal(n) => {
                wait::leave(ctx, &a.key, &a.base);
                Some(exit::signal(n))
            }
            WaitEnd::ParentGone => Some(exit::signal(signals::SIGHUP)),
            WaitEnd::TimedOut => {
                wait::leave(ctx, &a.key, &a.base);
                say::say(format!(
                    "{WHO}: no fix after {} (exit 75); run it again later, or check `buildlock status`",
                    time::human(ctx.config.wait)
                ));
                Some(exit::BLOCKED)
            }
            WaitEnd::FixerSilent(f, lease) => {
                say::say(format!(
                    "{WHO}: the fixer `{}` went silent for {}; checking again (and taking over if \
                     it still fails)",
                    say::inert(&f.agent),
                    time::human(ctx.config.stale_after)
                ));
                self.seen_silent = Some(lease);
                None
            }
            WaitEnd::Fixed { by, fix, herd } => {
                say::headline(
                    say::Tone::Good,
                    format!(
                        "{WHO}: the build was fixed{}",
                        by.as_ref()
                            .map(|b| format!(" by `{}`", say::inert(b)))
                            .unwrap_or_default()
                    ),
                );
                wait::stagger(herd);
                // The fix commit on record, once it exists, when this checkout lacks it: taken
                // (or told) at once, with no check run again only to fail.
                let to_take = fix.as_ref().and_then(|f| {
                    fixcommit::to_take(&ctx.repo, ctx.store.as_ref(), &a.key, f, &stop)
                });
                let commit = to_take.clone().or_else(|| {
                    fix.as_ref()
                        .and_then(|f| fixcommit::await_commit(f, fixcommit::GRACE, &stop))
                });
                self.fix = Some(JobFix {
                    by: by.clone().or_else(|| fix.as_ref().map(|f| f.by.clone())),
                    commit: commit.clone(),
                    waited: fix.as_ref().map(|f| f.credited.clone()).unwrap_or_default(),
                    ..JobFix::default()
                });
                match to_take {
                    Some(commit) => {
                        let by = by.or_else(|| fix.map(|f| f.by)).unwrap_or_default();
                        self.hand_fix(a, &commit, &say::inert(&by), false)?
                    }
                    // No fix commit on record (the fix may be outside the repository): the
                    // refresh gets the commit the fixer's HEAD moved to, and the check runs.
                    None => {
                        let lacking = commit.and_then(|c| fixcommit::lacking(&ctx.repo, &c));
                        fixer::refresh(ctx, a, lacking.as_deref())?
                    }
                }
            }
            WaitEnd::Moved { generation, fix } => {
                let lacking = fix.as_ref().and_then(|f| {
                    fixcommit::to_take(&ctx.repo, ctx.store.as_ref(), &a.key, f, &stop)
                        .map(|c| (c, f.by.clone()))
                });
                match lacking {
                    Some((commit, by)) => {
                        self.fix = Some(JobFix {
                            by: Some(by.clone()),
                            commit: Some(commit.clone()),
                            ..JobFix::default()
                        });
                        self.hand_fix(a, &commit, &say::inert(&by), false)?
                    }
                    None => {
                        say::say(format!(
                            "{WHO}: that fix ended and generation {generation} began; checking \
                             again"
                        ));
                        None
                    }
                }
            }
            WaitEnd::Broken => {
                say::say(format!("{WHO}: the fixer gave the role up; checking again"));
                None
            }
            WaitEnd::FixerDied(f) => {
                say::say(format!(
                    "{WHO}: the fixer `{}` died; checking again",
                    say::inert(&f.agent)
                ));
                None
            }
        })
    }

    /// Marks the build passing: the fixer marks the key it was elected for (with its fix commit
    /// when HEAD moved); anyone marks a broken key of the scope passing. A coordination failure
    /// here never fails a passing check.
    fn passed(&mut self, base: &str, view: &BaseView) {
        let ctx = self.ctx;
        let head = ctx.repo.head_oid();
        let mut marks: Vec<(String, Option<u64>, FixSeen)> = Vec::new();
        if let Some(h) = &self.role {
            let moved = head.is_some() && head != h.head_before;
            // Delivered before the build is marked fixed: a waiter that sees it fixed can see
            // where the fix went.
            let mut mine = JobFix {
                by: Some(ctx.agent.clone()),
                commit: if moved { head.clone() } else { None },
                mine: true,
                ..JobFix::default()
            };
            match mine.commit.clone() {
                Some(commit) => self.deliver(&commit, &mut mine),
                None => say::say(format!(
                    "{WHO}: the fix made no commit (the check passed on uncommitted changes): \
                     nothing to deliver; commit the fix in `fix.command` to hand it on"
                )),
            }
            self.fix = Some(mine);
            let h = self.role.as_ref().expect("held above");
            marks.push((
                h.role.key.clone(),
                Some(h.role.generation),
                FixSeen {
                    head_before: h.head_before.clone(),
                    git_dir: Some(ctx.repo.git_dir.clone()),
                    commit: if moved { head.clone() } else { None },
                    committer: None,
                    recorder: None,
                },
            ));
        } else {
            let mine = |s: &KeyState| {
                s.status == Status::Broken
                    || (s.status == Status::Fixing
                        && s.fixer.as_ref().is_some_and(|f| f.agent == ctx.agent))
            };
            for s in view.keys.iter().filter(|s| mine(s)) {
                marks.push((
                    s.key.clone(),
                    None,
                    FixSeen {
                        head_before: head.clone(),
                        git_dir: Some(ctx.repo.git_dir.clone()),
                        commit: None,
                        committer: None,
                        recorder: None,
                    },
                ));
            }
        }
        // The fix run's end, recorded with the mark of the key it fixed (one write).
        let mut finished = self.role.as_ref().and_then(|h| h.role.take_finished());
        for (key, generation, fix) in marks {
            let commit = fix.commit.clone();
            let event = Event::Passed {
                agent: ctx.agent(),
                generation,
                fix,
            };
            let applied = match finished.take() {
                Some(entry) => {
                    ctx.store
                        .apply_and_record(&key, base, &event, ctx.policy(), entry, &stop)
                }
                None => ctx
                    .store
                    .apply(&key, base, &event, ctx.policy(), None, &stop),
            };
            if let (Ok(applied), Some(fix)) = (&applied, self.fix.as_mut()) {
                if applied.outcome == Outcome::Fixed {
                    fix.waited = applied
                        .after
                        .fix
                        .as_ref()
                        .map(|f| f.credited.clone())
                        .unwrap_or_default();
                }
            }
            match applied {
                Ok(applied) if applied.outcome == Outcome::Fixed => say::headline(
                    say::Tone::Good,
                    format!(
                        "{WHO}: you fixed the build (key `{key}`, generation {}){}; the jobs \
                         waiting for you resume now",
                        applied.after.generation,
                        commit
                            .map(|c| format!(
                                "; they are handed your fix commit {c}{}",
                                ctx.store
                                    .fix_ref(&key, &c)
                                    .map(|r| format!(" ({r})"))
                                    .unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    ),
                ),
                Ok(applied) if applied.outcome == Outcome::Recovered => {
                    say::say(format!("{WHO}: the build (key `{key}`) is passing again"))
                }
                Ok(_) => {}
                Err(e) => say::warn(format!(
                    "{WHO}: the check passed, but the build could not be marked fixed: {e:#}"
                )),
            }
        }
    }
}

/// Tracked files that differ from HEAD (staged or not): the check ran on something that is not
/// the commit.
fn tracked_changes(ctx: &Context) -> bool {
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(false)
        .include_ignored(false)
        .exclude_submodules(true);
    ctx.repo
        .git()
        .and_then(|g| Ok(g.statuses(Some(&mut opts))?))
        .is_ok_and(|s| s.iter().any(|e| e.status() != git2::Status::CURRENT))
}
