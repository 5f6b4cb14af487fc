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

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::flows::commit::decision::{Decision, Verdict};
use crate::flows::commit::fixcommit;
use crate::flows::commit::fixer::{self, Assignment, FixEnd, Role, Took};
use crate::flows::commit::own_work::{OwnWork, TempIndex};
use crate::flows::commit::wait::{self, WaitEnd};
use crate::flows::context::{Context, LoadError};
use crate::os::{env, say, signals, time};
use crate::protocol::exit;
use crate::protocol::state::Event;
use crate::store::Read;

const LOCK_CONTENTION_RETRIES: u32 = 30;
/// Fix runs in one commit-retry, whatever `max_fix_attempts` says: a guard against a loop.
const MAX_FIX_RUNS: u32 = 100;

/// `commit-retry`'s first commit, all that a passing commit runs: no repository, no
/// configuration, no store is loaded, and the binary that runs it links none of them (every
/// commit pays for the wrapper's start). Anything but a clean commit goes on in the `buildlock`
/// binary beside this one, by exec (same process, same pid: the hook was told it), at [`resume`].
pub fn front(args: Vec<OsString>) -> i32 {
    signals::install();
    // The private temp folder; where it cannot be used (a symlink or someone else's folder in
    // its place, an unwritable TMPDIR), the repository's own, found by asking git (rare: it
    // costs a process). Without either the hook could not say what it decided.
    let handover = Handover::private().or_else(Handover::in_repository);
    let first = match run_git(&args, handover.as_ref(), &[]) {
        Ok(first) => first,
        Err(code) => return code,
    };
    if first.code == 0 {
        // A passing hook wrote no decision: nothing to remove.
        return exit::OK;
    }
    if let Some(signal) = signals::pending() {
        first.discard();
        return exit::signal(signal);
    }
    let buildlock = std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join("buildlock")))
        .filter(|b| b.is_file());
    // From here on a failure to go on is coordination failing (exit 70), never git's own code
    // (1 would read as "you are the fixer"). Elected, this process's end frees the role at once.
    let Some(buildlock) = buildlock else {
        first.discard();
        say::say(format!(
            "commit-retry: the commit failed (git exit {}), and the `buildlock` binary that \
             waits and retries is not beside commit-retry: reinstall buildlock (install.sh), \
             which puts pre-commit, commit-retry and buildlock in one folder (exit 70)",
            first.code
        ));
        return exit::COORDINATION;
    };
    let Ok(json) = serde_json::to_string(&first) else {
        first.discard();
        say::say(format!(
            "commit-retry: the commit failed (git exit {}), and its hand-over file's path {} \
             is not UTF-8: set TMPDIR to a plain path (exit 70)",
            first.code,
            first
                .decision
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ));
        return exit::COORDINATION;
    };
    // Still `commit-retry` to ps, top and pkill.
    let e = std::process::Command::new(&buildlock)
        .arg0("commit-retry")
        .arg(RESUME_ARG)
        .args(&args)
        .env(RESUME_VAR, json)
        .exec();
    first.discard();
    say::say(format!(
        "commit-retry: the commit failed (git exit {}); cannot run {} to wait and retry: {e} \
         (exit 70)",
        first.code,
        buildlock.display()
    ));
    exit::COORDINATION
}

/// The first argument with which commit-retry's [`front`] hands over to `buildlock`.
pub const RESUME_ARG: &str = "__commit-retry";
// What the first commit left ([`Ran`], as JSON), for [`resume`].
use crate::os::env::RETRY_FIRST_VAR as RESUME_VAR;

/// The rest of commit-retry, after a first commit that did not simply pass (see [`front`]).
pub fn resume(args: Vec<OsString>) -> i32 {
    signals::install();
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"commit-retry".as_ptr());
    }
    let first: Option<Ran> =
        crate::os::env::take_retry_first().and_then(|json| serde_json::from_str(&json).ok());
    let Some(first) = first else {
        say::say(format!(
            "`buildlock {RESUME_ARG}` is commit-retry's second half; run `git commit-retry …`"
        ));
        return exit::USAGE;
    };
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(LoadError::Config(e)) => {
            first.discard();
            say::say(format!("{e}"));
            return exit::CONFIG;
        }
        // Not a repository, or similar: git has said it already.
        Err(LoadError::Other(_)) => {
            first.discard();
            return first.code;
        }
    };
    let (handover, first) = match first.decision.as_ref().and_then(|d| d.parent()) {
        Some(dir) => (
            Handover {
                dir: dir.to_owned(),
            },
            Some(first.into_git_run()),
        ),
        // No private temp folder: hand over in the coordination dir, and commit again, this
        // time with the hook told where to say what it decided.
        None => (Handover::in_dir(ctx.home.join("run")), None),
    };
    handover.remove_old();
    let retry = Retry {
        ctx: &ctx,
        args,
        handover,
        elected: std::cell::RefCell::new(None),
    };
    match retry.run(first) {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("commit-retry: {e:#}"));
            retry.give_up_role();
            exit::COORDINATION
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
    args: Vec<OsString>,
    handover: Handover,
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
    /// Commits until done; `first` is the commit already made, if any.
    fn run(&self, mut first: Option<GitRun>) -> Result<i32> {
        let cfg = &self.ctx.config;
        let mut blocked = 0;
        let mut contention = 0;
        let mut fix_runs = 0;
        let mut coordination_since: Option<Instant> = None;
        let mut role: Option<Role> = None;
        let mut seen_silent: Option<(u64, u64)> = None;
        let mut claim_waits = 0; // issue 12
        // What the fixer had staged of its own when its fix started, kept out of the fix commit.
        let mut own: Option<OwnWork> = None;
        // The fix is staged apart from the own work: the next commit is the fix alone, from
        // this index, with a message of its own.
        let mut fix_commit_next: Option<TempIndex> = None;
        loop {
            let fix_index = fix_commit_next.take();
            let fix_commit = fix_index.is_some();
            let git = match (first.take(), &fix_index) {
                (Some(run), _) => run,
                (None, Some(index)) => {
                    let args = self.fix_commit_args(role.as_ref());
                    let index = index.path.to_string_lossy().into_owned();
                    self.commit(&args, role.as_ref(), None, Some(index))?
                }
                (None, None) => self.commit(&self.args, role.as_ref(), seen_silent.take(), None)?,
            };
            drop(fix_index);
            if let Some(signal) = signals::pending() {
                say::say(format!(
                    "commit-retry: interrupted by signal {signal}; stopping (nothing was committed)"
                ));
                return Ok(exit::signal(signal));
            }
            if fix_commit && git.code == 0 {
                if let Some(role) = role.take() {
                    self.record_fix_commit(&role);
                }
                own = None;
                say::headline(
                    say::Tone::Good,
                    format!(
                        "committed the fix on its own ({}); now committing your own work",
                        self.ctx
                            .repo
                            .head_oid()
                            .as_deref()
                            .map_or("", |h| &h[..h.len().min(12)])
                    ),
                );
                continue;
            }
            if fix_commit && git.decision.is_none() {
                // git refused the fix's own commit (a `commit-msg` policy, signing, a lock): the
                // fix is still staged with the agent's work, and goes with its commit, as before.
                say::warn(format!(
                    "the fix could not be committed on its own (git exit {}, see above); it goes \
                     with your commit, and waiters are handed that commit",
                    git.code
                ));
                own = None;
                continue;
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
                Some(d) => d,
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
                _ => {
                    if role.is_some() {
                        // Our check passed (the build is marked fixed); git ended the commit
                        // itself, e.g. with nothing staged. Its code is passed through, and 1
                        // would otherwise read as "you are the fixer".
                        say::say(format!(
                            "commit-retry: the check passes and the build is marked fixed, but \
                             git made no commit (git exit {}, see its message above: nothing \
                             staged?); its exit code is passed through",
                            git.code
                        ));
                    }
                    return Ok(git.code);
                }
            };
            if decision.verdict != Verdict::Fix {
                own = None;
            }
            match decision.verdict {
                Verdict::ConfigError => return Ok(exit::CONFIG),
                // Claims guard (issue 12): refused before the check; wait for the release.
                Verdict::Claimed => {
                    claim_waits += 1;
                    if claim_waits > cfg.retry_attempts {
                        return Ok(exit::BLOCKED);
                    }
                    match crate::flows::claims::guard::retry_wait(self.ctx, &decision) {
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
                             the failure (see the log above) and commit the fix on its own, staging \
                             only the fix, with `git commit-retry …`; then commit your other work",
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
                    if own.is_none() {
                        own = OwnWork::note(
                            &self.ctx.repo.worktree,
                            &self.ctx.repo.git_dir,
                            &self.args,
                        );
                    }
                    let own_paths = own.as_ref().map(OwnWork::paths).unwrap_or_default();
                    match r.run_fix(self.ctx, &command, &a, &own_paths)? {
                        FixEnd::Done => {
                            // The fix staged apart from the agent's own work: committed alone
                            // next. Else (it committed itself, or staged nothing) the next
                            // commit is the agent's, as before.
                            if let Some(work) = &own {
                                fix_commit_next = work.fix_index(&self.ctx.repo.git_dir)?;
                            }
                        }
                        FixEnd::TakenOver => {
                            role = None;
                            own = None;
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
        let mut d = d.clone();
        let end = loop {
            let end = self.wait(&d);
            if !matches!(end, WaitEnd::FixerDied(_) | WaitEnd::FixerSilent(..)) {
                break end;
            }
            // Another waiter may have taken over already: wait for it without a check run.
            let me = (self.ctx.agent.as_str(), self.ctx.agent().pid);
            let generation = d.generation.unwrap_or(0);
            match wait::taken_over(
                self.ctx.store.as_ref(),
                &a.key,
                generation,
                me,
                self.ctx.config.wait,
            ) {
                Some((generation, fixer)) => {
                    say::say(format!(
                        "commit-retry: `{fixer}` took the fixer role over (generation {generation})"
                    ));
                    d.generation = Some(generation);
                    d.fixer = Some(fixer);
                }
                None => break end,
            }
        };
        Ok(match end {
            WaitEnd::Signal(n) => Waited::Exit(exit::signal(n)),
            WaitEnd::FixerSilent(_, lease) => Waited::Silent(lease),
            WaitEnd::Fixed { fix, herd, .. } => {
                wait::stagger(herd);
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

    /// The arguments of the fix's own commit: its own message, and the agent's `-q` if it gave one.
    fn fix_commit_args(&self, role: Option<&Role>) -> Vec<OsString> {
        // The agent's choices that a team's rules may require of every commit: quiet, sign-off,
        // signing, author and date.
        let mut args: Vec<OsString> = Vec::new();
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            let text = a.to_string_lossy();
            let kept = matches!(
                text.as_ref(),
                "-q" | "--quiet" | "-s" | "--signoff" | "--no-gpg-sign"
            ) || text.starts_with("-S")
                || text.starts_with("--gpg-sign")
                || text.starts_with("--author=")
                || text.starts_with("--date=");
            if kept {
                args.push(a.clone());
            } else if text == "--author" || text == "--date" {
                args.push(a.clone());
                args.extend(it.next().cloned());
            }
        }
        let what = role.map_or_else(String::new, |r| {
            format!(" (key {}, generation {})", r.key, r.generation)
        });
        args.push("-m".into());
        args.push(
            format!(
                "Fix the build{what}\n\nCommitted on its own by buildlock's commit-retry for agent \
                 {}, the elected fixer, so that the agents waiting for it can take exactly this \
                 fix.{}",
                self.ctx.agent,
                self.message()
                    .map(|m| format!(" The agent was committing:\n\n{m}"))
                    .unwrap_or_default()
            )
            .into(),
        );
        args
    }

    /// The agent's commit message, from `-m`/`--message` (paragraphs joined as git does).
    fn message(&self) -> Option<String> {
        let mut parts = Vec::new();
        let mut it = self.args.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(a) = it.next() {
            if a == "--" {
                break;
            }
            if a == "-m" || a == "--message" {
                parts.extend(it.next());
            } else if let Some(m) = a.strip_prefix("--message=") {
                parts.push(m.to_owned());
            } else if let Some(m) = a.strip_prefix("-m").filter(|_| !a.starts_with("--")) {
                parts.push(m.to_owned());
            }
        }
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// Runs `git commit` again, telling the hook about our fixer role and a silence we saw.
    fn commit(
        &self,
        args: &[OsString],
        role: Option<&Role>,
        seen_silent: Option<(u64, u64)>,
        index: Option<String>,
    ) -> Result<GitRun> {
        let mut vars = Vec::new();
        if let Some(index) = index {
            vars.push(("GIT_INDEX_FILE", index));
        }
        if let Some(role) = role {
            vars.push((env::FIXER_GENERATION_VAR, role.generation.to_string()));
        }
        if let Some((generation, heartbeat)) = seen_silent {
            vars.push((env::SEEN_SILENT_VAR, format!("{generation}:{heartbeat}")));
        }
        run_git(args, Some(&self.handover), &vars)
            .map(Ran::into_git_run)
            .map_err(|code| anyhow::anyhow!("cannot run git commit (exit {code})"))
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
            poll: env::poll_override(),
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

/// Where the hook hands its decision to us: a file per `git commit`, in a folder only this user
/// can enter (see `decision.rs`).
struct Handover {
    dir: PathBuf,
}

impl Handover {
    /// The private temp folder: needs no repository, so the first commit starts at once.
    fn private() -> Option<Handover> {
        crate::os::fs::private_temp_dir("buildlock").map(|dir| Handover { dir })
    }

    /// A folder of the coordination dir, made if missing; the temp dir where it cannot be.
    fn in_dir(dir: PathBuf) -> Handover {
        if std::fs::create_dir_all(&dir).is_ok() {
            Handover { dir }
        } else {
            Handover {
                dir: std::env::temp_dir(),
            }
        }
    }

    /// The repository's own hand-over folder (`<git common dir>/buildlock/run`), found by
    /// asking git: for a first commit whose private temp folder cannot be used.
    fn in_repository() -> Option<Handover> {
        let out = Command::new("git")
            .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let common = String::from_utf8(out.stdout).ok()?;
        let dir = PathBuf::from(common.trim()).join("buildlock").join("run");
        (out.status.success() && std::fs::create_dir_all(&dir).is_ok()).then_some(Handover { dir })
    }

    /// A new file name for one `git commit`. The folder is made again if it went (a temp dir
    /// cleaner, by hand): the hook could not hand its decision over otherwise.
    fn next(&self) -> PathBuf {
        if !self.dir.is_dir() {
            let private = Handover::private().filter(|p| p.dir == self.dir);
            if private.is_none() {
                let _ = std::fs::create_dir_all(&self.dir);
            }
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!(
            "decision-{}-{}-{seq}.json",
            std::process::id(),
            time::now()
        ))
    }

    /// Decision files older than a day: left by a commit-retry that was killed mid-commit.
    fn remove_old(&self) {
        let day = Duration::from_secs(24 * 3600);
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let ours = name.to_string_lossy().starts_with("decision-")
                || name.to_string_lossy().starts_with("buildlock-decision-");
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if ours && old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs `git commit` with `args` untouched and the hook told where to hand its decision over
/// (when `handover` is given). git's stderr passes through as it comes; its end is kept to
/// recognise lock contention. No thread and no polling of git: one poll(2) on its stderr, which
/// wakes for output, for its end, or every 200 ms to forward a signal we got. `Err` is the exit
/// code when git cannot run at all (said here).
fn run_git(
    args: &[OsString],
    handover: Option<&Handover>,
    vars: &[(&str, String)],
) -> Result<Ran, i32> {
    let decision_path = handover.map(Handover::next);
    let mut cmd = Command::new("git");
    cmd.arg("commit")
        .args(args)
        .env(env::HOLDER_VAR, std::process::id().to_string())
        .stderr(Stdio::piped());
    if let Some(path) = &decision_path {
        cmd.env(env::DECISION_VAR, path);
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say::say("`git` is not on PATH; install git or fix PATH, then run commit-retry again");
            return Err(127);
        }
        Err(e) => {
            say::say(format!("cannot run git commit: {e}"));
            return Err(127);
        }
    };
    let tail = relay_stderr(&mut child);
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => {
            say::say(format!("cannot wait for git commit: {e}"));
            return Err(exit::COORDINATION);
        }
    };
    let tail = String::from_utf8_lossy(&tail);
    Ok(Ran {
        code: code_of(status),
        decision: decision_path,
        hand_over_failed: tail.contains(crate::flows::commit::decision::HAND_OVER_FAILED),
        lock_contention: tail.contains(".lock': File exists") || tail.contains("cannot lock ref"),
    })
}

/// One `git commit` as it ran, before its decision file is read.
#[derive(Serialize, Deserialize)]
struct Ran {
    code: i32,
    /// Where the hook was asked to hand its decision over.
    decision: Option<PathBuf>,
    /// The hook said it could not write it.
    hand_over_failed: bool,
    lock_contention: bool,
}

impl Ran {
    /// Reads the hook's decision, if it rejected the commit, and removes its file.
    fn into_git_run(self) -> GitRun {
        let mut decision = None;
        if let Some(path) = &self.decision {
            if self.code != 0 {
                decision = Decision::read(path);
                let _ = std::fs::remove_file(path);
            }
        }
        if self.code != 0 && decision.is_none() && self.hand_over_failed {
            // The hook decided but could not say what: treat it as coordination failing, never
            // as git's own exit code (which would read as "you are the fixer").
            decision = Some(Decision::new(Verdict::CoordinationFailed));
        }
        GitRun {
            code: self.code,
            decision,
            lock_contention: self.lock_contention,
        }
    }

    /// Removes the decision file, for a run that goes no further.
    fn discard(&self) {
        if let Some(path) = &self.decision {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Copies the child's stderr to ours until it ends (or, if a process the hook left behind keeps
/// it open, until git exits); returns its last 8–16 KiB. A signal we got is passed on to git as
/// SIGTERM (its hook notices that git went away and stops the check).
fn relay_stderr(child: &mut std::process::Child) -> Vec<u8> {
    use std::os::fd::AsRawFd as _;
    let Some(mut stderr) = child.stderr.take() else {
        return Vec::new();
    };
    let fd = stderr.as_raw_fd();
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut forwarded = false;
    let mut git_done = false;
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, if git_done { 0 } else { 200 }) };
        if ready > 0 {
            match stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    say::raw(&buf[..n]);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 16384 {
                        tail.drain(..tail.len() - 8192);
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        } else if git_done {
            // git is gone and nothing more is pending: whoever keeps the pipe open is not git.
            break;
        }
        if !forwarded && signals::pending().is_some() {
            forwarded = true;
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        if ready == 0 && matches!(child.try_wait(), Ok(Some(_))) {
            git_done = true;
        }
    }
    tail
}
