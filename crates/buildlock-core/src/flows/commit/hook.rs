//! The pre-commit hook: run the check, then tell this agent whether it is the fixer, must wait,
//! or must take a fix that already exists.
//!
//! Hot path (check passes, nobody fixing): the repository found from a few files (git2 opens it
//! only when a failure or the guard needs it, `os/repo.rs`), the config files, one small state
//! read before the check (the base's pass counter and its open keys), the agent's sign of life
//! and its record in this work tree (a `stat` each while fresh within a hundredth of
//! `claims.ttl`; else a `utimensat` each and a look at its folder of work trees), this agent's
//! own `checking` lock (uncontended), the check, whose output is read on this thread (no thread
//! on Unix). No shared lock, no write, no git subprocess, and nothing more however many keys are
//! on record.
//!
//! What the agent reads of the check's output: with coordination on, the output is kept (not
//! streamed) while the check runs, because whether this agent must fix the failure is only
//! known once it ends. Then the fixer (elected, still fixing, or just given up), a passing check
//! and an agent whose coordination failed get all of it; an agent that waits for another's fix or
//! must take an existing fix gets its first failing lines (at most 20,
//! `protocol::failure_lines::summary`) and where the full log is. A long check says every so
//! often that it still runs. Streamed live as before: with coordination off (`BUILDLOCK=0`) and
//! when this agent already fixes the breakage (its re-check: it is the fixer whatever happens).
//!
//! Exit codes (contract): 0 passed; 1 you are the fixer (or just gave the role up); 75 another
//! agent is fixing, or the fix exists and you must take it; 78 configuration error (the check's
//! command not found or not executable included); 70 the check failed and coordination itself
//! failed; 128+n ended by signal n. A passing check is never refused because coordination failed.

use anyhow::Result;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::flows::commit::decision::{Decision, Verdict};
use crate::flows::commit::failure::{self, Failure, Recorded};
use crate::flows::commit::lease::SignOfLife;
use crate::flows::commit::wait::{self, WaitEnd};
use crate::flows::commit::{fixcommit, fixer};
use crate::flows::context::{Context, LoadError};
use crate::os::check::{self, Ending};
use crate::os::{env, say, signals, time};
use crate::protocol::exit;
use crate::protocol::state::{Event, Fix, FixSeen, Fixer, KeyState, Liveness, Outcome, Status};
use crate::store::{BaseView, StoreError, registry};

/// Re-runs of a check whose failure was stale (the build was fixed while it ran); after that
/// the failure counts, whatever happened meanwhile.
const MAX_STALE_RERUNS: u32 = 2;

pub fn main(args: Vec<OsString>) -> i32 {
    signals::install();
    let parent = crate::os::process::parent_id();
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(LoadError::Config(e)) => {
            say::say(format!("{e}"));
            say::say(
                "fix that line of the file, or commit once without the hook: `git commit --no-verify`",
            );
            Decision::new(Verdict::ConfigError).hand_over();
            return exit::CONFIG;
        }
        Err(LoadError::Other(e)) => {
            say::say(format!("cannot run the pre-commit check: {e:#}"));
            Decision::new(Verdict::CoordinationFailed).hand_over();
            return exit::COORDINATION;
        }
    };
    // Behind a hook manager that re-installed itself in front of us (and that we also chain),
    // say so: its checks run twice. Only where a hook is chained (one stat otherwise).
    if ctx.home.chained_hook().exists() {
        if let Some(warning) = crate::flows::operator::installation::hook_warning(
            &ctx.repo.hooks_dir(),
            ctx.home.path(),
        ) {
            say::warn(warning);
        }
    }
    let Some(command) = the_check(&ctx, args) else {
        return exit::OK;
    };
    Hook {
        ctx: &ctx,
        command,
        parent,
    }
    .run()
}

/// The configured `check`, else a chained hook, else nothing to do.
fn the_check(ctx: &Context, args: Vec<OsString>) -> Option<check::Command> {
    if let Some(check) = &ctx.config.check {
        return Some(check::Command::Shell(check.clone()));
    }
    let chained = ctx.home.chained_hook();
    let executable = std::fs::metadata(&chained).is_ok_and(|m| crate::os::fs::is_executable(&m));
    executable.then_some(check::Command::Program(chained, args))
}

struct Hook<'a> {
    ctx: &'a Context,
    command: check::Command,
    parent: u32,
}

impl Hook<'_> {
    fn stop(&self) -> bool {
        signals::pending().is_some() || crate::os::process::parent_id() != self.parent
    }

    /// The exit code for having been told to stop.
    fn stopped(&self) -> i32 {
        match signals::pending() {
            Some(n) => exit::signal(n),
            None => exit::signal(signals::SIGHUP),
        }
    }

    fn run(&self) -> i32 {
        let ctx = self.ctx;
        let bypass = !env::coordination_enabled();
        // commit-retry waits itself and wants the decision; a plain commit waits here if allowed.
        let under_retry = env::decision_file().is_some();
        let may_wait = !bypass && ctx.config.hook_wait && !under_retry;
        let deadline = Instant::now() + ctx.config.wait;
        let mut seen_silent = env::seen_silent();
        let mut stale_reruns = 0;
        let base = ctx.base();
        if !bypass && ctx.unusable.is_none() {
            commit_seen(ctx);
        }
        // Claims guard: another agent's exclusive claim refuses (or holds) the commit
        // before any check runs.
        if !bypass {
            if let Some(code) = crate::flows::claims::guard::in_hook(ctx, self.parent) {
                return code;
            }
        }
        loop {
            // Read before the check: the pass counter judges a failure stale, the open keys say
            // what a pass must mark. A coordination dir we cannot use is no reason to refuse a
            // passing check: it reads as empty, and a failure then reports the problem (exit 70).
            // With coordination off (BUILDLOCK=0) it is read all the same: a fixer who bypasses
            // must still mark the build fixed, or it would strand the agents waiting for it.
            let view = match &ctx.unusable {
                None => ctx.store.read_base(&base),
                Some(_) => BaseView::default(),
            };
            let passes_seen = (stale_reruns < MAX_STALE_RERUNS).then_some(view.passes);
            let live = bypass || ctx.unusable.is_some() || self.already_fixing(&view);
            let run = match self.run_check(&view, live) {
                Ok(run) => run,
                Err(e) => {
                    say::say(format!("cannot run the check: {e:#}"));
                    Decision::new(Verdict::ConfigError).hand_over();
                    return exit::CONFIG;
                }
            };
            let output = Output {
                bytes: &run.output,
                live,
            };
            // A failure is shown once this agent's role is known; anything else (a pass, a stop,
            // a command that could not run) is shown whole.
            let a_failure = matches!(run.ending, Ending::TimedOut(_))
                || matches!(run.ending, Ending::Failed(c) if !matches!(c, Some(126 | 127)));
            if !a_failure {
                output.whole();
            }
            if let Some(code) = self.check_ended(&run.ending, &base, &view) {
                return code;
            }
            if bypass {
                say::say(
                    "the check failed; coordination is off (BUILDLOCK=0), so nobody was elected",
                );
                Decision::new(Verdict::Failed).hand_over();
                return exit::FIXER;
            }
            if let Some(why) = &ctx.unusable {
                output.whole();
                return coordination_failed(why);
            }
            let failed = match self.failed(&output, &view, passes_seen, seen_silent.take()) {
                Ok(failed) => failed,
                Err(StoreError::Interrupted) => return self.stopped(),
                Err(e) => {
                    output.whole();
                    return coordination_failed(&format!("{e:#}"));
                }
            };
            let (decision, fixer_since) = match failed {
                Failed::Stale => {
                    stale_reruns += 1;
                    say::say("the build was fixed while your check ran; running it again");
                    continue;
                }
                Failed::Decided(d, since) => (d, since),
            };
            decision.hand_over();
            match decision.verdict {
                Verdict::Wait if may_wait && Instant::now() < deadline => {}
                Verdict::Wait => {
                    tell_wait(&decision, fixer_since, under_retry, false);
                    return exit::BLOCKED;
                }
                Verdict::TakeFix => return exit::BLOCKED,
                _ => return exit::FIXER,
            }
            match self.wait(&decision, deadline) {
                HookWait::Again(silent) => seen_silent = silent,
                HookWait::Exit(code) => return code,
            }
        }
    }

    /// The exit code when the check's run ends the hook (a signal, git gone, a pass, a command
    /// that could not run); `None` when it failed (a timeout included) and the hook goes on.
    fn check_ended(&self, ending: &Ending, base: &str, view: &BaseView) -> Option<i32> {
        let ctx = self.ctx;
        match ending {
            Ending::Signal(n) => {
                say::say(format!(
                    "interrupted by signal {n}: stopped the check; nothing was recorded"
                ));
                Some(exit::signal(*n))
            }
            Ending::ParentGone => {
                say::say("git went away: stopped the check; nothing was recorded");
                Some(exit::signal(signals::SIGHUP))
            }
            Ending::Passed => {
                if ctx.unusable.is_none() {
                    self.passed(base, view);
                }
                Some(exit::OK)
            }
            Ending::Failed(Some(code @ (126 | 127))) => {
                say::say(format!(
                    "the check could not run: its command was {} (exit {code}); this is not a \
                     broken build, so nobody was elected\nnext: fix `check` in {} (or the \
                     chained hook), then commit again",
                    if *code == 127 {
                        "not found"
                    } else {
                        "not executable"
                    },
                    ctx.repo.worktree.join(".buildlock.toml").display()
                ));
                Decision::new(Verdict::ConfigError).hand_over();
                Some(exit::CONFIG)
            }
            Ending::TimedOut(limit) => {
                say::say(format!(
                    "the check was still running after check_timeout ({}) and was stopped; \
                     that counts as a failure",
                    time::human(*limit)
                ));
                None
            }
            Ending::Failed(_) => None,
        }
    }

    /// Whether this agent fixes an open key of the base already: its check is its re-check, and
    /// it reads the whole output whatever the check does.
    fn already_fixing(&self, view: &BaseView) -> bool {
        view.keys.iter().any(|s| {
            s.status == Status::Fixing
                && s.fixer.as_ref().is_some_and(|f| f.agent == self.ctx.agent)
        })
    }

    fn run_check(&self, view: &BaseView, live: bool) -> std::io::Result<check::Run> {
        // A fixer by hand (no commit-retry renewing its lease) keeps its lease through its own
        // re-check, however long the check takes: one sign of life renews all its roles.
        let roles: Vec<(String, u64)> = view
            .keys
            .iter()
            .filter(|s| {
                s.status == Status::Fixing
                    && s.fixer
                        .as_ref()
                        .is_some_and(|f| f.agent == self.ctx.agent && !f.registered)
            })
            .map(|s| (s.key.clone(), s.generation))
            .collect();
        let _lease = SignOfLife::start(
            self.ctx.store.clone(),
            self.ctx.agent.clone(),
            roles,
            self.ctx.config.stale_after,
        );
        // Check slots: at most `check_slots` checks at once; nothing when 0.
        let _slot = match crate::flows::claims::slots::take(self.ctx, Some(self.parent))
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?
        {
            Ok(slot) => slot,
            Err(ending) => {
                return Ok(check::Run {
                    ending,
                    output: Vec::new(),
                    took: Duration::ZERO,
                });
            }
        };
        // `buildlock agents` shows this agent as checking while it holds this.
        let _checking = self.ctx.registry.checking(&self.ctx.agent);
        let progress = Progress::new(live);
        let opts = check::Options {
            dir: &self.ctx.repo.worktree,
            timeout: self.ctx.config.check_timeout,
            echo: live,
            env: Vec::new(),
            parent: Some(self.parent),
            on_start: &mut |_| crate::os::fault::point("check"),
            // Called at each tick while the check runs: a check still running after the first
            // is slow enough to read, on the idle CPU, what its failure would need.
            cancel: &|| {
                progress.tick();
                self.ctx.prepare_for_a_failure();
                false
            },
        };
        let run = check::run(&self.command, opts);
        progress.done();
        run
    }

    /// The check passed: a fixer's pass, or any pass on a broken key, marks it passing. Never
    /// refuses the commit: a coordination problem here is a warning.
    fn passed(&self, base: &str, view: &BaseView) {
        let ctx = self.ctx;
        let mine = |s: &KeyState| {
            s.status == Status::Broken
                || (s.status == Status::Fixing
                    && s.fixer.as_ref().is_some_and(|f| f.agent == ctx.agent))
        };
        let mut keys: Vec<String> = view
            .keys
            .iter()
            .filter(|s| mine(s))
            .map(|s| s.key.clone())
            .collect();
        if view.damaged.is_some() && keys.is_empty() {
            keys.push(base.to_owned());
        }
        for key in keys {
            let event = Event::Passed {
                agent: ctx.agent(),
                generation: env::fixer_generation(),
                fix: FixSeen {
                    head_before: ctx.repo.head_oid(),
                    git_dir: Some(ctx.repo.git_dir.clone()),
                    commit: None,
                    // git, our parent, when git runs us for a commit (it sets GIT_INDEX_FILE): it
                    // writes the fix commit once we return. Run by hand, nobody will.
                    committer: env::index_file().map(|_| crate::os::process::of(self.parent)),
                    // commit-retry holding the role (it ran this commit, or the fix that runs
                    // it): it records the fix commit once git has written it.
                    recorder: env::fixer_generation()
                        .and(env::holder())
                        .map(crate::os::process::of),
                },
            };
            let applied = match ctx
                .store
                .apply(&key, base, &event, ctx.policy(), None, &|| self.stop())
            {
                Ok(applied) => applied,
                Err(e) => {
                    say::warn(format!(
                        "the check passed, but the build could not be marked fixed: {e:#}\n\
                         the commit goes ahead; agents waiting for you wake when their wait \
                         runs out, or run `buildlock release`"
                    ));
                    continue;
                }
            };
            match applied.outcome {
                Outcome::Fixed => say::headline(
                    say::Tone::Good,
                    format!(
                        "the check passes: you fixed the build (key `{key}`, generation {}); the \
                         agents waiting for you resume now and are handed your commit",
                        applied.after.generation
                    ),
                ),
                Outcome::Recovered => say::say(format!(
                    "the check passes: the build (key `{key}`) is passing again"
                )),
                _ => {}
            }
        }
    }

    /// The check failed: record it and learn this agent's role.
    fn failed(
        &self,
        output: &Output<'_>,
        view: &BaseView,
        passes_seen: Option<u64>,
        seen_silent: Option<(u64, u64)>,
    ) -> Result<Failed, StoreError> {
        let ctx = self.ctx;
        let base = ctx.base();
        let failure = Failure {
            output: output.bytes,
            base: &base,
            key: None,
            view,
            passes_seen,
            seen_silent,
            holder: env::holder(),
            elector: elector(ctx),
        };
        let Recorded {
            key,
            signature,
            log,
            applied,
        } = failure::record(ctx, failure, &|| self.stop())?;
        if applied.outcome == Outcome::Stale {
            if let Some(log) = &log {
                let _ = std::fs::remove_file(log);
            }
            return Ok(Failed::Stale);
        }
        let log_shown = log
            .as_ref()
            .map_or_else(|| "-".to_owned(), |l| l.display().to_string());
        // Only the one who fixes it reads all of it.
        let must_not_fix = matches!(
            applied.outcome,
            Outcome::Wait { .. } | Outcome::TakeFix { .. }
        );
        if !must_not_fix {
            output.whole();
        }
        let mut d = Decision::new(Verdict::Fix);
        d.key = Some(key.clone());
        d.base = Some(base);
        d.generation = Some(applied.after.generation);
        d.log = log;
        d.signature = Some(signature);
        let told = Told {
            ctx,
            key: &key,
            generation: applied.after.generation,
            log_shown: &log_shown,
        };
        let mut fixer_since = None;
        match &applied.outcome {
            Outcome::Elected { replaced } => {
                d.fixer = Some(ctx.agent.clone());
                d.attempts = Some(0);
                told.elected(replaced.as_ref());
            }
            Outcome::KeepFixing { attempts } => {
                d.fixer = Some(ctx.agent.clone());
                d.attempts = Some(*attempts);
                told.keep_fixing(*attempts);
            }
            Outcome::GaveUp { attempts } => {
                d.verdict = Verdict::GaveUp;
                d.attempts = Some(*attempts);
                told.gave_up(*attempts);
            }
            Outcome::Wait { fixer, .. } => {
                d.verdict = Verdict::Wait;
                d.fixer = Some(fixer.agent.clone());
                d.since = Some(fixer.since);
                fixer_since = Some(fixer.since);
                told.wait(fixer, &applied.after);
                output.summary(&log_shown);
            }
            Outcome::TakeFix { commit, by } => {
                d.verdict = Verdict::TakeFix;
                d.fixer = Some(by.clone());
                d.fix_commit = Some(commit.clone());
                tell_take_fix(commit, &say::inert(by), env::decision_file().is_some());
                output.summary(&log_shown);
            }
            other => {
                return Err(
                    anyhow::anyhow!("unexpected outcome of a failed check: {other:?}").into(),
                );
            }
        }
        Ok(Failed::Decided(d, fixer_since))
    }

    /// Waits in the hook (a plain `git commit` with `hook.wait = true`) for the fix.
    fn wait(&self, decision: &Decision, deadline: Instant) -> HookWait {
        let ctx = self.ctx;
        let key = decision.key.clone().unwrap_or_default();
        let waiting = wait::Waiting {
            store: ctx.store.as_ref(),
            key: &key,
            generation: decision.generation.unwrap_or(0),
            limit: deadline.saturating_duration_since(Instant::now()),
            stale_after: ctx.config.stale_after,
            poll: env::poll_override(),
            parent: Some(self.parent),
        };
        say::say(format!(
            "waiting up to {} for the fix: then the check runs again and this commit goes on \
             if it passes (or, when the fix is a commit this branch lacks, it stops with exit 75 \
             and says how to take it); with no fix by then it stops (exit 75); Ctrl-C to stop \
             waiting",
            time::human(waiting.limit)
        ));
        let end = wait::wait_for_fix(&waiting);
        if !matches!(end, WaitEnd::Fixed { .. }) {
            wait::leave(ctx, &key, decision.base.as_deref().unwrap_or(&key));
        }
        // The fix that ended the wait, when this branch lacks its commit: told at once, with no
        // check run again only to fail (contract: "The fix commit and taking it").
        let to_take = |fix: Option<&Fix>| {
            let fix = fix?;
            let commit =
                fixcommit::to_take(&ctx.repo, ctx.store.as_ref(), &key, fix, &|| self.stop())?;
            Some((commit, fix.by.clone()))
        };
        let told = |commit: &str, by: &str| {
            fixcommit::record_told(ctx, &key, decision.generation, commit, by);
            let mut d = decision.clone();
            d.verdict = Verdict::TakeFix;
            d.fixer = Some(by.to_owned());
            d.fix_commit = Some(commit.to_owned());
            d.hand_over();
            tell_take_fix(commit, &say::inert(by), env::decision_file().is_some());
            HookWait::Exit(exit::BLOCKED)
        };
        match end {
            WaitEnd::Fixed { by, fix, herd } => {
                if let Some((commit, by)) = to_take(fix.as_ref()) {
                    return told(&commit, &by);
                }
                say::headline(
                    say::Tone::Good,
                    format!(
                        "the build was fixed{}; running the check again",
                        by.as_ref()
                            .map(|b| format!(" by `{}`", say::inert(b)))
                            .unwrap_or_default()
                    ),
                );
                wait::stagger(herd);
                HookWait::Again(None)
            }
            WaitEnd::Moved { generation, fix } => {
                if let Some((commit, by)) = to_take(fix.as_ref()) {
                    return told(&commit, &by);
                }
                say::say(format!(
                    "that fix ended and generation {generation} began; running the check again"
                ));
                HookWait::Again(None)
            }
            WaitEnd::Broken => {
                say::say("the fixer gave the role up; running the check again");
                HookWait::Again(None)
            }
            WaitEnd::FixerDied(f) => {
                say::say(format!(
                    "the fixer `{}` died; running the check again",
                    say::inert(&f.agent)
                ));
                HookWait::Again(None)
            }
            WaitEnd::FixerSilent(f, lease) => {
                say::say(format!(
                    "the fixer `{}` went silent; running the check again",
                    say::inert(&f.agent)
                ));
                HookWait::Again(Some(lease))
            }
            WaitEnd::TimedOut => {
                tell_wait(decision, decision.since, false, true);
                HookWait::Exit(exit::BLOCKED)
            }
            WaitEnd::Signal(n) => {
                say::say(format!("interrupted by signal {n} while waiting"));
                HookWait::Exit(exit::signal(n))
            }
            WaitEnd::ParentGone => HookWait::Exit(exit::signal(signals::SIGHUP)),
        }
    }
}

/// The check's output, and what the agent has been shown of it.
struct Output<'a> {
    bytes: &'a [u8],
    /// Streamed as it came: shown already, all of it.
    live: bool,
}

impl Output<'_> {
    /// All of it (for whoever must act on it), unless it was streamed.
    fn whole(&self) {
        if !self.live {
            say::raw(self.bytes);
        }
    }

    /// Its first failing lines and where the whole of it is: for an agent that must not fix it.
    fn summary(&self, log: &str) {
        if self.live {
            return;
        }
        let text = String::from_utf8_lossy(self.bytes);
        let s = crate::protocol::failure_lines::summary(
            &text,
            crate::protocol::failure_lines::SUMMARY_LINES,
        );
        if s.lines.is_empty() {
            say::say(format!(
                "the check printed nothing that shows why; its output: {log}"
            ));
            return;
        }
        let shown = if s.of > s.lines.len() {
            format!("the first {} of its {} failing lines", s.lines.len(), s.of)
        } else {
            "its failing lines".to_owned()
        };
        let mut text = format!(
            "what failed ({shown}; the whole output is in {log}; read it only if you must):"
        );
        for line in &s.lines {
            text.push_str("\n  | ");
            text.push_str(&say::inert(line));
        }
        say::say(text);
    }
}

/// While the check runs unseen (its output kept for later), a sign that it still runs: the
/// first after a while, then a live line on a terminal, else a line a minute.
struct Progress {
    on: bool,
    start: Instant,
    next: std::cell::Cell<Duration>,
    shown: std::cell::Cell<bool>,
}

impl Progress {
    const FIRST: Duration = Duration::from_secs(15);

    fn new(live: bool) -> Progress {
        Progress {
            on: !live,
            start: Instant::now(),
            next: std::cell::Cell::new(Self::FIRST),
            shown: std::cell::Cell::new(false),
        }
    }

    fn tick(&self) {
        let ran = self.start.elapsed();
        if !self.on || ran < self.next.get() {
            return;
        }
        let every = if say::stderr_is_terminal() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        };
        self.next.set(ran + every);
        self.shown.set(true);
        say::progress(format!(
            "the check is still running ({} so far); its output is shown when it ends",
            time::human(Duration::from_secs(ran.as_secs()))
        ));
    }

    fn done(&self) {
        if self.shown.get() {
            say::progress_done();
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per failed check, moved once
enum Failed {
    Stale,
    Decided(Decision, Option<u64>),
}

enum HookWait {
    /// Run the check again (with the fixer lease seen silent, if it was).
    Again(Option<(u64, u64)>),
    Exit(i32),
}

/// What the hook tells the agent about a failure it recorded, one outcome per method.
struct Told<'a> {
    ctx: &'a Context,
    key: &'a str,
    generation: u64,
    log_shown: &'a str,
}

const RELEASE: &str = "give the role up with `buildlock release` (or `git buildlock release`)";

impl Told<'_> {
    fn elected(&self, replaced: Option<&(Fixer, Liveness)>) {
        let (ctx, key, log_shown) = (self.ctx, self.key, self.log_shown);
        let how = match replaced {
            Some((old, why)) if old.agent == ctx.agent => format!(
                " again (your earlier run {})",
                match why {
                    Liveness::Dead => "died".to_owned(),
                    Liveness::Overtime => fixer::held_too_long(ctx),
                    _ => "went silent".to_owned(),
                }
            ),
            Some((old, why)) => format!(
                " (taking over from `{}`, {})",
                say::inert(&old.agent),
                match why {
                    Liveness::Dead => "whose process died".to_owned(),
                    Liveness::Overtime => format!(
                        "which {}: it is fenced and its fix is stopped before yours starts",
                        fixer::held_too_long(ctx)
                    ),
                    _ => "whose lease ran out without a sign of life".to_owned(),
                }
            ),
            None => String::new(),
        };
        say::headline(
            say::Tone::Bad,
            format!("the check failed and you are the FIXER for this breakage{how}"),
        );
        if env::decision_file().is_some() && ctx.config.fix_command.is_some() {
            // commit-retry runs `fix.command` now and says so.
            say::say(format!(
                "  key `{key}`, generation {}; failure log: {log_shown}",
                self.generation
            ));
        } else {
            say::say(format!(
                "  key `{key}`, generation {}; failure log: {log_shown}\n  other agents that hit \
                 this failure now wait for your fix (up to {})\n\
                 next: fix the failure and commit the fix on its own (stage only the fix, with \
                 the hook: your passing commit marks the build fixed, wakes them and hands them \
                 that commit to take), then commit your other work\n{RELEASE}",
                self.generation,
                time::human(ctx.config.wait),
            ));
        }
    }

    fn keep_fixing(&self, attempts: u32) {
        let (ctx, key, log_shown) = (self.ctx, self.key, self.log_shown);
        say::headline(
            say::Tone::Bad,
            format!(
                "the check still fails: you are still the FIXER (failed re-check {attempts} \
                 of {})",
                ctx.config.max_fix_attempts
            ),
        );
        say::say(format!(
            "  key `{key}`; failure log: {log_shown}\nnext: keep fixing and commit again; \
             after {} failed re-checks the role is given up\n{RELEASE}",
            ctx.config.max_fix_attempts,
        ));
    }

    fn gave_up(&self, attempts: u32) {
        let (key, log_shown) = (self.key, self.log_shown);
        say::headline(
            say::Tone::Bad,
            format!(
                "the check failed again: after {attempts} failed re-checks you gave the \
                 fixer role up"
            ),
        );
        say::say(format!(
            "  key `{key}` is now broken with nobody fixing; failure log: {log_shown}\n\
             next: the next agent whose check fails becomes the fixer; ask a person to \
             look at the log"
        ));
    }

    fn wait(&self, fixer: &Fixer, after: &KeyState) {
        let (ctx, key, log_shown) = (self.ctx, self.key, self.log_shown);
        let who = if fixer.agent == ctx.agent {
            format!("another process of yours (`{}`)", say::inert(&fixer.agent))
        } else {
            format!("`{}`", say::inert(&fixer.agent))
        };
        say::headline(
            say::Tone::Wait,
            format!("the check failed, and {who} is already fixing this breakage"),
        );
        say::say(format!(
            "  fixing since {} ({} ago); key `{key}`, generation {}\n  their failure log: \
             {}\n  your failure log: {log_shown}\ndo not fix it yourself: it is being fixed",
            time::rfc3339(fixer.since),
            time::human(Duration::from_millis(
                time::now().saturating_sub(fixer.since)
            )),
            self.generation,
            after
                .log
                .as_ref()
                .map_or_else(|| "-".into(), |l| say::inert(&l.display().to_string())),
        ));
    }
}

/// commit-retry goes on to run `fix.command` if elected: until it registers, its death is the
/// fixer's. Without a `fix.command` the agent fixes by hand.
fn elector(ctx: &Context) -> Option<crate::os::process::Process> {
    env::holder()
        .filter(|_| env::decision_file().is_some() && ctx.config.fix_command.is_some())
        .map(crate::os::process::of)
}

/// A commit of this agent: listed by `buildlock agents` from its first (later ones renew it, with
/// the sign of life every program gives when it loads), in the work tree it ran in. The same id
/// active in another work tree too is warned about (at most once a grain per work tree, see
/// `registry::seen_in`), and nothing more: it may be one agent that moved.
fn commit_seen(ctx: &Context) {
    let here = registry::Seen {
        agent: ctx.agent.clone(),
        host: crate::os::process::hostname(),
        worktree: ctx.repo.worktree.clone(),
        git_dir: Some(ctx.repo.git_dir.clone()),
        last_seen: 0,
    };
    if !ctx.seen {
        ctx.registry.seen(&ctx.agent, || here.clone());
    }
    let window = ctx.config.claims_ttl.as_millis() as u64;
    let grain = registry::grain(ctx.config.claims_ttl);
    let others = ctx.registry.seen_in(&here, window, grain);
    if let Some(other) = others.first() {
        say::warn(format!(
            "the agent id `{}` was also active in the work tree {} (host `{}`) {} ago, and now \
             commits from {}\nif two agents use this id, buildlock takes them for one: a failure \
             of either counts as the fixer's own, and they share claims; give each its own \
             BUILDLOCK_AGENT (nothing was refused; `buildlock agents` shows both work trees)",
            say::inert(&ctx.agent),
            say::inert(&other.worktree.display().to_string()),
            say::inert(&other.host),
            time::human(Duration::from_millis(
                time::now().saturating_sub(other.last_seen)
            )),
            say::inert(&ctx.repo.worktree.display().to_string()),
        ));
    }
}

fn coordination_failed(why: &str) -> i32 {
    say::say(format!(
        "the check failed, and coordination itself failed, so nobody was elected: {why}\n\
         next: fix what the message says (`buildlock doctor` checks the setup); meanwhile \
         `BUILDLOCK=0 git commit …` runs the check without coordination"
    ));
    Decision::new(Verdict::CoordinationFailed).hand_over();
    exit::COORDINATION
}

fn tell_take_fix(commit: &str, by: &str, under_retry: bool) {
    say::headline(
        say::Tone::Wait,
        format!("the check failed, and `{by}` already fixed this failure in commit {commit}"),
    );
    if under_retry {
        return; // commit-retry takes it (retry.refresh) and says so
    }
    say::say(format!(
        "your branch does not have that commit: nobody was elected, do not fix it yourself\n\
         next: take the fix with {}, then commit again",
        fixcommit::how_to_take(commit)
    ));
}

fn tell_wait(d: &Decision, since: Option<u64>, under_retry: bool, waited: bool) {
    if under_retry {
        return; // commit-retry does the waiting and the telling
    }
    let fixer = say::inert(d.fixer.as_deref().unwrap_or("another agent"));
    if waited {
        say::say(format!(
            "`{fixer}` is still fixing (since {}); this commit gives up for now (exit 75)",
            since.map_or_else(|| "-".into(), time::rfc3339)
        ));
    }
    say::say(
        "next: retry your commit in a few minutes, or use `git commit-retry …`, which waits for \
         the fix and retries on its own\nbypass: `BUILDLOCK=0 git commit …` (check runs, no \
         coordination) or `git commit --no-verify` (no hook)",
    );
}
