//! Holding a fixer role and running the fix: shared by commit-retry and `buildlock ci`.
//!
//! A [`Role`] is held for as long as the process acts as fixer, re-checks included:
//! - it holds the fixer lock of its generation (registered means holding it: a process that
//!   cannot get the lock never registers, so a live fixer is never declared dead);
//! - it stops a predecessor's orphaned fix, and sees it gone, before registering;
//! - its heartbeat renews the lease the whole time, fix and re-check commit alike, and notices
//!   when another agent took the role over (fencing).
//!
//! Dropping the role stops the heartbeat and lets the lock go.

use anyhow::{Result, bail};
use std::cell::Cell;
use std::ffi::OsString;
use std::time::Duration;

use crate::flows::commit::lease::{Heartbeat, SignOfLife};
use crate::flows::context::Context;
use crate::os::check::{self, Ending};
use crate::os::process::{self, Process, Stopped};
use crate::os::{env, say, time};
use crate::protocol::state::{Event, KeyState, Outcome};
use crate::store::{Entry, FixerHold, Read};

/// What a breakage's fixer works on: from the hook's decision, or `buildlock ci`'s election.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub key: String,
    pub base: String,
    pub generation: u64,
    pub signature: Option<String>,
    pub log: Option<std::path::PathBuf>,
    /// Failed re-checks so far.
    pub attempts: u32,
}

pub struct Role {
    pub key: String,
    pub base: String,
    pub generation: u64,
    heartbeat: Heartbeat,
    /// The token that the registration announced for the fix about to start (see
    /// [`Announce::FixNext`]): the next [`Role::run_fix`] starts its fix under it, without an
    /// announcement of its own. Taken by that run, whatever it does.
    announced: Cell<Option<String>>,
    /// The last fix run's `fix_finished`, not recorded yet (see [`Finished::WithNextStep`]).
    finished: Cell<Option<serde_json::Value>>,
    _hold: FixerHold,
}

/// When [`Role::run_fix`] records the run's end (`fix_finished`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// At once, on its own.
    Now,
    /// With the caller's next step on the key ([`Role::take_finished`]): the re-check's pass
    /// marks the key fixed in the same write (one push to the state instead of two with the
    /// remote backend, where every push makes every waiter fetch once); the caller records it
    /// on its own before any other step, and before it ends.
    WithNextStep,
}

/// Whether the registration of [`Role::take`] also announces the fix run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// Registers the holder only; each fix run announces itself (commit-retry: its own work is
    /// set aside between taking the role and the first run).
    Nothing,
    /// The caller runs the fix right after taking the role, with nothing in between: the
    /// registration carries the first run's token, and is that run's gate. One push to the
    /// state instead of two before the fix starts (with the remote backend each push makes
    /// every waiter fetch once).
    FixNext,
}

/// What [`Role::take`] found.
pub enum Took {
    Role(Role),
    /// Another process holds this generation's role: another run of the same agent. Wait for it.
    HeldElsewhere,
    /// The role moved on before we could register (taken over, reset): nothing to do.
    NotFixer,
}

impl Role {
    /// Takes the role of `a`. `known`: the key's state as the caller's own step just wrote it
    /// (the election of `a`), read again otherwise: the orphaned fixes to stop are those it
    /// lists. No later step can add one without fencing `a`'s generation (a takeover, a
    /// release, a reset), and then the registration is refused and no fix starts.
    pub fn take(
        ctx: &Context,
        a: &Assignment,
        announce: Announce,
        known: Option<&KeyState>,
    ) -> Result<Took> {
        // A waiter probing the lock holds it for a moment: try for a short while.
        let Some(hold) = ctx
            .store
            .hold_fixer(&a.key, a.generation, Duration::from_secs(2))?
        else {
            return Ok(Took::HeldElsewhere);
        };
        // Stop what is left of the previous fixer's fix, and see it gone, before ours starts.
        match known.filter(|s| s.key == a.key && s.generation == a.generation) {
            Some(state) => stop_orphaned_fixes(ctx, state)?,
            None => {
                if let Read::Found { state, .. } = ctx.store.read(&a.key) {
                    stop_orphaned_fixes(ctx, &state)?;
                }
            }
        }
        // Announced here, the token is on record before the fix starts, as the run's own
        // announcement would put it (see `run_fix`), and the same refusal gates it: a
        // generation fenced before this registration starts nothing.
        let announced = (announce == Announce::FixNext).then(token);
        let event = Event::Register {
            agent: ctx.agent.clone(),
            generation: a.generation,
            holder: this_process(),
            fix_process: announced.clone().map(announcement),
        };
        let applied = ctx
            .store
            .apply(&a.key, &a.base, &event, ctx.policy(), None, &stop)?;
        if applied.outcome != Outcome::Registered {
            return Ok(Took::NotFixer);
        }
        let heartbeat = Heartbeat::watching(
            ctx.store.clone(),
            a.key.clone(),
            ctx.agent.clone(),
            a.generation,
            ctx.config.stale_after,
        );
        Ok(Took::Role(Role {
            key: a.key.clone(),
            base: a.base.clone(),
            generation: a.generation,
            heartbeat,
            announced: Cell::new(announced),
            finished: Cell::new(None),
            _hold: hold,
        }))
    }

    /// Whether another agent took the role over.
    pub fn fenced(&self) -> bool {
        self.heartbeat.fenced()
    }

    /// Whether the state, read now, still names this agent the fixer of `a`'s generation, or
    /// says that generation ended in this agent's own fix (a state that cannot be read says
    /// nothing: not knowing is not being fenced).
    fn still_fixer(&self, ctx: &Context, a: &Assignment) -> bool {
        match ctx.store.read(&a.key) {
            Read::Found { state, .. } => {
                state.is_fixer(&ctx.agent, a.generation) || state.fixed_by(&ctx.agent, a.generation)
            }
            _ => true,
        }
    }

    /// The last fix run's `fix_finished` that [`Finished::WithNextStep`] left to the caller.
    pub fn take_finished(&self) -> Option<Entry> {
        self.finished.take().map(Entry::from_json)
    }

    pub fn is_for(&self, a: &Assignment) -> bool {
        self.key == a.key && self.generation == a.generation
    }

    /// Runs `fix.command` once, with the contract's environment and a token that identifies
    /// this run, registering its process group so that a successor can stop it. A run still
    /// going after `fix.timeout` is stopped, its process group with it; the re-check that
    /// follows every run then counts the failed attempt, so a fix that hangs costs
    /// `fix.timeout` per attempt, never more.
    /// `aside`: paths of the agent's own work, set aside while the fix runs (their changes in
    /// the work tree are not the fix's).
    pub fn run_fix(
        &self,
        ctx: &Context,
        command: &str,
        a: &Assignment,
        aside: &[String],
        finished: Finished,
    ) -> Result<FixEnd> {
        let attempt = a.attempts + 1;
        // Announced with the registration (the run right after it), or announced below.
        let announced = self.announced.take();
        // A fixer whose role moved on starts nothing; the check is made again, under the
        // election lock, when the fix's token goes on record just below (or went on record
        // with the registration just before).
        if self.fenced() {
            return Ok(not_started(a));
        }
        say::headline(
            say::Tone::Bad,
            format!(
                "you are the fixer; running the fix (attempt {attempt} of {}): {command}",
                ctx.config.max_fix_attempts
            ),
        );
        let store = &ctx.store;
        let token = match announced {
            Some(token) => token,
            None => {
                let token = token();
                // The token goes on record before the fix starts: if this process dies before
                // it can record the fix's process group, a successor still finds the fix by
                // its token.
                let announce = Event::Register {
                    agent: ctx.agent.clone(),
                    generation: a.generation,
                    holder: this_process(),
                    fix_process: Some(announcement(token.clone())),
                };
                // The gate: the record that the fix starts is refused once the generation is
                // fenced (a reset, a release, a takeover), and then nothing starts.
                let gate = store.apply(&a.key, &a.base, &announce, ctx.policy(), None, &stop)?;
                if gate.outcome != Outcome::Registered {
                    return Ok(not_started(a));
                }
                token
            }
        };
        let mut env = fix_env(ctx, a, attempt);
        env.push((env::FIX_TOKEN_VAR.to_owned(), token.clone().into()));
        let mut on_start = |pgid: u32| {
            let fix_process = Process {
                pid: pgid,
                host: process::hostname(),
                start: process::start_time(pgid),
                token: Some(token.clone()),
                pid_space: process::pid_space(),
            };
            let event = Event::Register {
                agent: ctx.agent.clone(),
                generation: a.generation,
                holder: this_process(),
                fix_process: Some(fix_process),
            };
            // The process group and the fix run's start, in one write.
            let started = Entry::from_json(serde_json::json!({"event": "fix_started",
                "key": a.key, "agent": ctx.agent, "generation": a.generation,
                "attempt": attempt}));
            if let Err(e) =
                store.apply_and_record(&a.key, &a.base, &event, ctx.policy(), started, &stop)
            {
                say::warn(format!("could not record the fix process: {e:#}"));
            }
            crate::os::fault::point("fix");
        };
        let run = shell(ctx, command, env, Limit::FixTimeout, &mut on_start, &|| {
            self.fenced()
        })?;
        // The successor may stop our fix (an orphan to it) before our heartbeat sees the role
        // gone: a run that did not pass asks the state once, so that it is told as what it was.
        let taken_over =
            self.fenced() || (run.ending != Ending::Passed && !self.still_fixer(ctx, a));
        let ended = serde_json::json!({"event": "fix_finished",
            "key": a.key, "agent": ctx.agent, "generation": a.generation, "attempt": attempt,
            "ok": run.ending == Ending::Passed, "took_ms": run.took.as_millis() as u64});
        match finished {
            Finished::Now => {
                let _ = store.record(Entry::from_json(ended));
            }
            Finished::WithNextStep => self.finished.set(Some(ended)),
        }
        Ok(match run.ending {
            Ending::Signal(n) => FixEnd::Signal(n),
            _ if taken_over => FixEnd::TakenOver,
            Ending::Passed => {
                say::say(format!(
                    "the fix finished in {}; checking again",
                    time::human(run.took)
                ));
                warn_unstaged(ctx, aside);
                FixEnd::Done
            }
            other => {
                say::say(format!(
                    "the fix {}; checking again anyway",
                    describe_ending(&other, Limit::FixTimeout)
                ));
                FixEnd::Done
            }
        })
    }
}

/// The check runs on the work tree, the commit takes the index: a fix left unstaged passes the
/// check but is not in the commit that everyone else is handed.
fn warn_unstaged(ctx: &Context, aside: &[String]) {
    let files: Vec<String> = ctx
        .repo
        .unstaged(usize::MAX)
        .into_iter()
        .filter(|f| !aside.contains(f))
        .take(5)
        .collect();
    if !files.is_empty() {
        say::warn(format!(
            "the fix left changes that are not staged ({}): the check sees them, but the commit \
             will not have them; `fix.command` should `git add` what it fixes",
            files.join(", ")
        ));
    }
}

/// How a fix run ended.
pub enum FixEnd {
    Done,
    /// Another agent took the role over (or it was reset or released) while the fix ran: the
    /// fix was stopped.
    TakenOver,
    /// The role had moved on before the fix could start: it never started.
    NotStarted,
    Signal(i32),
}

/// Says why a fix did not start.
fn not_started(a: &Assignment) -> FixEnd {
    say::say(format!(
        "the fixer role of generation {} moved on before the fix started (reset, released or \
         taken over): not starting it; this agent goes on as any other",
        a.generation
    ));
    FixEnd::NotStarted
}

/// Why a live fixer was taken over, in words: "held the role for longer than …".
pub fn held_too_long(ctx: &Context) -> String {
    format!(
        "held the role for longer than coordination.max_fix_time ({})",
        time::human(ctx.config.max_fix_time)
    )
}

/// Which setting bounds a command that [`shell`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `fix.timeout`: a run of `fix.command`.
    FixTimeout,
    /// `check_timeout`: `retry.refresh` (it runs what a check would, a rebase or a build).
    CheckTimeout,
}

impl Limit {
    /// The setting's name, as the user writes it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::FixTimeout => "fix.timeout",
            Limit::CheckTimeout => "check_timeout",
        }
    }

    fn of(self, ctx: &Context) -> Duration {
        match self {
            Limit::FixTimeout => ctx.config.fix_timeout,
            Limit::CheckTimeout => ctx.config.check_timeout,
        }
    }
}

/// A command's ending, in words; `limit` is the setting that bounded it.
pub fn describe_ending(ending: &Ending, limit: Limit) -> String {
    match ending {
        Ending::Passed => "succeeded".to_owned(),
        Ending::Failed(Some(code)) => format!("failed (exit {code})"),
        Ending::Failed(None) => "was killed by a signal".to_owned(),
        Ending::TimedOut(after) => format!(
            "was stopped after {} ({}), its process group with it",
            limit.name(),
            time::human(*after)
        ),
        Ending::Signal(n) => format!("was interrupted by signal {n}"),
        Ending::ParentGone => "was stopped because its parent went away".to_owned(),
    }
}

/// Stops every fix run that a fixer who left the role left behind (taken over, released, reset),
/// and sees it gone: before a new fixer's fix starts, and as soon as any program takes the role
/// over. Each is stopped as its own process group, nothing else (see `os::process::stop_group`).
///
/// The new fixer keeps its lease the whole time (stopping a fix can take seconds: a grace after
/// SIGTERM, then SIGKILL): a short `stale_after` must not see it silent and replace it before it
/// has even started.
pub fn stop_orphaned_fixes(ctx: &Context, state: &KeyState) -> Result<()> {
    if state.orphan_fix.is_empty() {
        return Ok(());
    }
    let _lease = SignOfLife::start(
        ctx.store.clone(),
        ctx.agent.clone(),
        vec![(state.key.clone(), state.generation)],
        ctx.config.stale_after,
    );
    for orphan in &state.orphan_fix {
        match process::stop_group(orphan, Duration::from_secs(2)) {
            Stopped::Stopped { group, processes } => say::say(format!(
                "stopped the previous fixer's fix: process group {group} on {} ({})",
                orphan.host,
                processes
                    .iter()
                    .map(|(pid, name)| format!("{} {pid}", say::inert(name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Stopped::NotRunning | Stopped::NotOurs => {}
            Stopped::StillRunning { group } => bail!(
                "the previous fixer's fix (process group {group}) still runs after SIGKILL; \
                 not starting a second fix beside it"
            ),
        }
    }
    Ok(())
}

/// A fix run announced before it starts: its token, no process group yet.
fn announcement(token: String) -> Process {
    Process {
        pid: 0,
        host: process::hostname(),
        start: None,
        token: Some(token),
        pid_space: process::pid_space(),
    }
}

/// This process, as the holder of a role.
fn this_process() -> Process {
    process::me()
}

/// Stop waiting for the election lock on a signal.
fn stop() -> bool {
    crate::os::signals::pending().is_some()
}

/// A value only this fix run's environment carries.
fn token() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let seed = time::now() ^ (u64::from(std::process::id()) << 32);
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..].copy_from_slice(
            &time::jitter(Duration::from_secs(3600))
                .as_nanos()
                .to_le_bytes()[..8],
        );
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The contract's environment for `fix.command` and `retry.refresh`.
pub fn fix_env(ctx: &Context, a: &Assignment, attempt: u32) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("BUILDLOCK_KEY".to_owned(), a.key.clone().into()),
        (
            "BUILDLOCK_SIGNATURE".to_owned(),
            a.signature.clone().unwrap_or_default().into(),
        ),
        (
            "BUILDLOCK_GENERATION".to_owned(),
            a.generation.to_string().into(),
        ),
        ("BUILDLOCK_ATTEMPT".to_owned(), attempt.to_string().into()),
        ("BUILDLOCK_AGENT".to_owned(), ctx.agent.clone().into()),
        // A fix (or refresh) that commits runs the hook: it acts for this process, which holds
        // the role, and must not wait for it.
        (
            env::HOLDER_VAR.to_owned(),
            std::process::id().to_string().into(),
        ),
        (
            env::FIXER_GENERATION_VAR.to_owned(),
            a.generation.to_string().into(),
        ),
    ];
    if let Some(log) = &a.log {
        // The command may write to it: not to the logs of other failures with the same output.
        crate::store::home::own_file(log);
        env.push(("BUILDLOCK_LOG".to_owned(), log.clone().into_os_string()));
    }
    env
}

/// Runs `command` with `sh -c` at the work tree root in its own process group, echoed, bounded
/// by `limit` (`fix.timeout` for the fix, `check_timeout` for the refresh): past it, the whole
/// group is stopped (TERM, then KILL).
pub fn shell(
    ctx: &Context,
    command: &str,
    env: Vec<(String, OsString)>,
    limit: Limit,
    on_start: &mut dyn FnMut(u32),
    cancel: &dyn Fn() -> bool,
) -> Result<check::Run> {
    let options = check::Options {
        dir: &ctx.repo.worktree,
        timeout: limit.of(ctx),
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

/// Runs `retry.refresh` (after a fix, before retrying) with the contract's environment and the
/// fix commit. `Ok(None)` when it succeeded or there is none; `Some(code)` to exit with.
pub fn refresh(ctx: &Context, a: &Assignment, fix_commit: Option<&str>) -> Result<Option<i32>> {
    let Some(refresh) = &ctx.config.retry_refresh else {
        return Ok(None);
    };
    say::say(format!("refreshing before the retry: {refresh}"));
    let mut env = fix_env(ctx, a, a.attempts + 1);
    if let Some(commit) = fix_commit {
        env.push(("BUILDLOCK_FIX_COMMIT".to_owned(), commit.into()));
        // With the remote backend, a ref on the remote that holds it (fetch it from there).
        if let Some(reference) = ctx.store.fix_ref(&a.key, commit) {
            env.push(("BUILDLOCK_FIX_REF".to_owned(), reference.into()));
        }
    }
    let run = shell(ctx, refresh, env, Limit::CheckTimeout, &mut |_| {}, &|| {
        false
    })?;
    Ok(match run.ending {
        Ending::Passed => None,
        Ending::Signal(n) => Some(crate::protocol::exit::signal(n)),
        other => {
            say::say(format!(
                "`retry.refresh` {}; fix what it reports, then run `git commit-retry …` again",
                describe_ending(&other, Limit::CheckTimeout)
            ));
            Some(crate::protocol::exit::BLOCKED)
        }
    })
}
