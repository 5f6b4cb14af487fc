//! commit-retry's rounds: commit, read what the hook decided, act on it (wait, fix, take the
//! fix, wait for a claim, pause), and commit again, until the commit is made or there is a
//! reason to stop. Every exit code is decided here, except those of `front` and `resume`.

use anyhow::Result;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use super::git::{GitRun, Ran, run_git};
use super::handover::Handover;
use crate::flows::commit::decision::{Decision, Verdict};
use crate::flows::commit::fixcommit;
use crate::flows::commit::fixer::{self, Announce, Assignment, Finished, FixEnd, Role, Took};
use crate::flows::commit::own_work::{OwnWork, TempIndex};
use crate::flows::commit::wait::{self, WaitEnd};
use crate::flows::context::Context;
use crate::os::{env, say, signals, time};
use crate::protocol::exit;
use crate::protocol::state::{Event, Fix};
use crate::store::Read;

const LOCK_CONTENTION_RETRIES: u32 = 30;
/// Fix runs in one commit-retry, whatever `max_fix_attempts` says: a guard against a loop.
const MAX_FIX_RUNS: u32 = 100;

pub(super) struct Retry<'a> {
    ctx: &'a Context,
    args: Vec<OsString>,
    handover: Handover,
    /// The breakage this run was elected to fix, if any: given up if the run fails, so that the
    /// others need not wait for a fixer that is gone without having registered.
    elected: std::cell::RefCell<Option<Assignment>>,
    /// The fixer role held, re-check commits included.
    role: Option<Role>,
    /// What the fixer had staged of its own when its fix started, kept out of the fix commit.
    own: Option<OwnWork>,
    /// The fix is staged apart from the own work: the next commit is the fix alone, from
    /// this index, with a message of its own.
    fix_commit_next: Option<TempIndex>,
    /// The fixer lease a wait saw silent, for the next commit's hook.
    seen_silent: Option<(u64, u64)>,
    /// Commits blocked by a fixer or a fix to take.
    blocked: u32,
    /// Retries for git's lock files.
    contention: u32,
    fix_runs: u32,
    /// Since when coordination keeps failing.
    coordination_since: Option<Instant>,
    /// Waits for another agent's claim so far.
    claim_waits: u32,
    /// A fix run of ours changed the work tree (or committed): a commit after it holds the fix.
    fix_in_tree: bool,
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

/// What a `git commit` left to act on.
#[allow(clippy::large_enum_variant)] // one per commit, moved once
enum Committed {
    /// The hook decided (and did not let the commit through).
    Decided(Decision),
    /// Commit again at once.
    Again,
    Exit(i32),
}

impl<'a> Retry<'a> {
    pub(super) fn new(ctx: &'a Context, args: Vec<OsString>, handover: Handover) -> Retry<'a> {
        Retry {
            ctx,
            args,
            handover,
            elected: std::cell::RefCell::new(None),
            role: None,
            own: None,
            fix_commit_next: None,
            seen_silent: None,
            blocked: 0,
            contention: 0,
            fix_runs: 0,
            coordination_since: None,
            claim_waits: 0,
            fix_in_tree: false,
        }
    }
}

impl Retry<'_> {
    /// A fix that a killed run started and did not commit apart ([`OwnWork::pending`]): the
    /// next commit is that fix alone, then the agent's own. `true` when there is one.
    pub(super) fn complete_pending(&mut self) -> Result<bool> {
        let Some(work) = OwnWork::pending(&self.ctx.repo.worktree, &self.ctx.repo.git_dir) else {
            return Ok(false);
        };
        say::say(
            "commit-retry: a fix that a killed run made is not committed yet: committing it on \
             its own first, then your own work",
        );
        let index = work.fix_index()?;
        let found = index.is_some();
        self.fix_commit_next = index;
        self.own = found.then_some(work);
        Ok(found)
    }

    /// Commits until done; `first` is the commit already made, if any.
    pub(super) fn run(&mut self, mut first: Option<GitRun>) -> Result<i32> {
        loop {
            let fix_index = self.fix_commit_next.take();
            let fix_commit = fix_index.is_some();
            let git = match (first.take(), &fix_index) {
                (Some(run), _) => run,
                (None, Some(index)) => {
                    let args = self.fix_commit_args(self.role.as_ref());
                    let index = index.path.to_string_lossy().into_owned();
                    self.commit(&args, self.role.as_ref(), None, Some(index))?
                }
                (None, None) => {
                    let seen_silent = self.seen_silent.take();
                    self.commit(&self.args, self.role.as_ref(), seen_silent, None)?
                }
            };
            drop(fix_index);
            if let Some(signal) = signals::pending() {
                say::say(format!(
                    "commit-retry: interrupted by signal {signal}; stopping (nothing was committed)"
                ));
                return Ok(exit::signal(signal));
            }
            let code = git.code;
            let decision = match self.committed(git, fix_commit) {
                Committed::Decided(d) => d,
                Committed::Again => continue,
                Committed::Exit(code) => return Ok(code),
            };
            if decision.verdict != Verdict::Fix {
                self.own.take().inspect(OwnWork::done);
            }
            if let Some(code) = self.act(&decision, code)? {
                return Ok(code);
            }
        }
    }

    /// What the commit that just ran left: made (the fix's own commit, or the agent's), git's
    /// own failure (lock contention is retried), or the hook's decision.
    fn committed(&mut self, git: GitRun, fix_commit: bool) -> Committed {
        if fix_commit && git.code == 0 {
            if let Some(role) = self.role.take() {
                self.record_fix_commit(&role);
            }
            let own = self.own.take();
            own.as_ref().inspect(|o| o.done());
            if own.as_ref().is_some_and(OwnWork::nothing_staged) {
                say::headline(
                    say::Tone::Good,
                    format!(
                        "committed the fix on its own ({}); you had nothing of your own staged, \
                         so there is nothing more to commit",
                        self.ctx
                            .repo
                            .head_oid()
                            .as_deref()
                            .map_or("", |h| &h[..h.len().min(12)])
                    ),
                );
                return Committed::Exit(exit::OK);
            }
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
            return Committed::Again;
        }
        if fix_commit && git.decision.is_none() {
            // git refused the fix's own commit (a `commit-msg` policy, signing, a lock): the
            // fix is still staged with the agent's work, and goes with its commit, as before.
            say::warn(format!(
                "the fix could not be committed on its own (git exit {}, see above); it goes \
                 with your commit, and waiters are handed that commit",
                git.code
            ));
            // The agent's index holds the fix (see `OwnWork::fix_index`): its commit has it.
            self.own.take().inspect(OwnWork::done);
            return Committed::Again;
        }
        if git.code == 0 {
            // This commit holds the fix (it went with the agent's work), unless the fix changed
            // nothing in the work tree (a shared dependency): then no commit is the fix, and the
            // waiters run their check again instead of taking the fixer's own work.
            if let Some(role) = self.role.as_ref().filter(|_| self.fix_in_tree) {
                self.record_fix_commit(role);
            }
            if self.blocked > 0 || self.role.is_some() {
                say::headline(say::Tone::Good, "committed");
            }
            return Committed::Exit(exit::OK);
        }
        match git.decision {
            Some(d) => Committed::Decided(d),
            // git failed on its own (before the hook, or after it passed).
            _ if git.lock_contention && self.contention < LOCK_CONTENTION_RETRIES => {
                self.pause_for_git_lock();
                Committed::Again
            }
            _ => {
                if self.role.is_some() {
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
                Committed::Exit(git.code)
            }
        }
    }

    /// Another git process holds a lock in this repository: a jittered pause before retrying.
    fn pause_for_git_lock(&mut self) {
        self.contention += 1;
        let contention = self.contention;
        let pause = Duration::from_millis(100 * u64::from(contention.min(10)))
            + time::jitter(Duration::from_millis(200));
        say::say(format!(
            "another git process holds a lock in this repository; retrying in {} ({contention}/{LOCK_CONTENTION_RETRIES})",
            time::human(pause)
        ));
        std::thread::sleep(pause);
    }

    /// Acts on the hook's decision; `Some(code)` to exit with, `None` to commit again. `git_code`
    /// is the exit code of the commit it decided for.
    fn act(&mut self, decision: &Decision, git_code: i32) -> Result<Option<i32>> {
        match decision.verdict {
            Verdict::ConfigError => Ok(Some(exit::CONFIG)),
            // Claims guard: refused before the check; wait for the release.
            Verdict::Claimed => {
                self.claim_waits += 1;
                if self.claim_waits > self.ctx.config.retry_attempts {
                    return Ok(Some(exit::BLOCKED));
                }
                Ok(crate::flows::claims::guard::retry_wait(self.ctx, decision))
            }
            Verdict::Failed => Ok(Some(git_code)),
            Verdict::CoordinationFailed => Ok(self.pause_for_coordination()),
            Verdict::GaveUp => {
                say::say(
                    "you gave the fixer role up; the build stays broken until someone fixes it",
                );
                Ok(Some(exit::FIXER))
            }
            Verdict::Fix => self.fix(decision),
            Verdict::Wait => {
                self.role = None;
                Ok(match self.wait_or_give_up(decision)? {
                    Waited::Exit(code) => Some(code),
                    Waited::Silent(lease) => {
                        self.seen_silent = Some(lease);
                        None
                    }
                    Waited::Again => None,
                })
            }
            Verdict::TakeFix => {
                self.role = None;
                self.blocked += 1;
                let commit = decision.fix_commit.clone().unwrap_or_default();
                self.take_fix(decision, &commit, self.blocked)
            }
        }
    }

    /// Coordination failed: a pause before committing again, within `coordination.wait`.
    fn pause_for_coordination(&mut self) -> Option<i32> {
        let cfg = &self.ctx.config;
        let since = *self.coordination_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= cfg.wait {
            say::say(format!(
                "commit-retry: coordination kept failing for {}; giving up (exit 70)",
                time::human(cfg.wait)
            ));
            return Some(exit::COORDINATION);
        }
        let pause = Duration::from_secs(1) + time::jitter(Duration::from_secs(1));
        say::say(format!(
            "commit-retry: coordination failed; retrying in {}",
            time::human(pause)
        ));
        std::thread::sleep(pause);
        None
    }

    /// Elected: holds the role (taken unless held already) and runs `fix.command`, keeping the
    /// agent's own staged work out of the fix; the fix is then committed on its own, next.
    fn fix(&mut self, decision: &Decision) -> Result<Option<i32>> {
        let a = assignment(decision);
        *self.elected.borrow_mut() = Some(a.clone());
        let Some(command) = self.ctx.config.fix_command.clone() else {
            say::say(
                "commit-retry: you are the fixer and no `fix.command` is configured: fix \
                 the failure (see the log above) and commit the fix on its own, staging \
                 only the fix, with `git commit-retry …`; then commit your other work",
            );
            return Ok(Some(exit::FIXER));
        };
        self.fix_runs += 1;
        if self.fix_runs > MAX_FIX_RUNS {
            anyhow::bail!("the fix ran {MAX_FIX_RUNS} times without the build passing; stopping");
        }
        if !self.role.as_ref().is_some_and(|r| r.is_for(&a)) {
            // Drop an old role before taking a new one.
            self.role = None;
            match Role::take(self.ctx, &a, Announce::Nothing, None)? {
                Took::Role(r) => self.role = Some(r),
                Took::NotFixer => return Ok(None),
                Took::HeldElsewhere => {
                    say::say(format!(
                        "commit-retry: another run of agent `{}` already holds this \
                         fixer role (generation {}); waiting for it instead of \
                         fixing beside it",
                        self.ctx.agent, a.generation
                    ));
                    let mut d = decision.clone();
                    d.fixer = Some(self.ctx.agent.clone());
                    return Ok(match self.wait_or_give_up(&d)? {
                        Waited::Exit(code) => Some(code),
                        _ => None,
                    });
                }
            }
        }
        let r = self.role.as_ref().expect("taken above");
        if self.own.is_none() {
            self.own = OwnWork::note(
                &self.ctx.repo.worktree,
                &self.ctx.repo.git_dir,
                &self.args,
                a.log.as_deref(),
            );
        }
        let own_paths = self.own.as_ref().map(OwnWork::paths).unwrap_or_default();
        let head_before = self.ctx.repo.head_oid();
        match r.run_fix(self.ctx, &command, &a, &own_paths, Finished::Now)? {
            FixEnd::Done => {
                // Killed here, the fix is staged and not committed apart: the next run
                // completes it apart (see `OwnWork::pending`).
                crate::os::fault::point("fix-done");
                // What the fix changed, told apart from the agent's own work: committed
                // alone next. Else (it committed itself, or changed nothing) the next
                // commit is the agent's, as before.
                if let Some(work) = &self.own {
                    self.fix_commit_next = work.fix_index()?;
                }
                // It committed itself (HEAD moved): that commit is the fix, on record now,
                // so that the waiters take it at once.
                let committed = self.ctx.repo.head_oid() != head_before;
                if self.fix_commit_next.is_none() && committed {
                    if let Some(role) = &self.role {
                        self.record_fix_commit(role);
                    }
                }
                // Whether the fix is in the work tree (not known without our own work noted).
                self.fix_in_tree |=
                    self.own.is_none() || self.fix_commit_next.is_some() || committed;
            }
            FixEnd::TakenOver => {
                self.role = None;
                self.own.take().inspect(OwnWork::done);
                say::say(
                    "the fixer role moved on (taken over, released or reset): stopped our \
                     fix; this agent goes on as any other",
                );
            }
            FixEnd::NotStarted => {
                self.role = None;
                self.own.take().inspect(OwnWork::done);
            }
            FixEnd::Signal(n) => {
                say::say(format!(
                    "commit-retry: interrupted by signal {n}; stopped the fix"
                ));
                return Ok(Some(exit::signal(n)));
            }
        }
        Ok(None)
    }

    /// This run failed while elected: give the role up (best effort), so that the next failing
    /// agent is elected at once instead of everyone waiting out the lease.
    pub(super) fn give_up_role(&self) {
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
        // The fix commit exists and is not on record yet: the waiters wait for us here.
        crate::os::fault::point("record-fix");
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
    fn wait_or_give_up(&mut self, d: &Decision) -> Result<Waited> {
        self.blocked += 1;
        if self.blocked >= self.ctx.config.retry_attempts {
            say::say(format!(
                "commit-retry: still blocked by `{}` after {} commit attempts (exit 75)\nnext: run \
                 `git commit-retry …` again later, check `git buildlock status`, or bypass with \
                 `git commit --no-verify`",
                say::inert(d.fixer.as_deref().unwrap_or("another agent")),
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
                self.after_the_fix(&d, &a, fix.as_ref())?
            }
            WaitEnd::Moved { fix, .. } => self.after_the_fix(&d, &a, fix.as_ref())?,
            _ => Waited::Again,
        })
    }

    /// A wait ended with `fix` (fixed, or fixed and broken again since). When this branch lacks
    /// its commit (waited for, bounded, until it exists), it is taken at once (`retry.refresh`,
    /// with `BUILDLOCK_FIX_COMMIT`) or the agent is told how to take it (exit 75): no commit
    /// runs the check again only to find out that it still fails. Otherwise `retry.refresh`
    /// runs without a fix commit and the commit is tried again.
    fn after_the_fix(&self, d: &Decision, a: &Assignment, fix: Option<&Fix>) -> Result<Waited> {
        let stop = || signals::pending().is_some();
        let lacking = fix.and_then(|f| {
            fixcommit::to_take(&self.ctx.repo, self.ctx.store.as_ref(), &a.key, f, &stop)
                .map(|commit| (commit, f.by.clone()))
        });
        let code = match lacking {
            Some((commit, by)) => {
                fixcommit::record_told(self.ctx, &a.key, Some(a.generation), &commit, &by);
                say::say(format!(
                    "commit-retry: `{}` fixed it in commit {commit}, which this branch lacks",
                    say::inert(&by)
                ));
                // This wait counted as a blocked attempt already.
                self.take_fix(d, &commit, 0)?
            }
            // No fix commit on record (the fix may be outside the repository): the refresh
            // gets the commit the fixer's HEAD moved to, if this branch lacks it, and the
            // commit (its check) is tried again.
            None => {
                let lacking = fix
                    .and_then(|f| fixcommit::await_commit(f, fixcommit::GRACE, &stop))
                    .and_then(|c| fixcommit::lacking(&self.ctx.repo, &c));
                fixer::refresh(self.ctx, a, lacking.as_deref())?
            }
        };
        Ok(match code {
            Some(code) => Waited::Exit(code),
            None => Waited::Again,
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
        let log = self.own.as_ref().and_then(OwnWork::log).map(Path::to_owned);
        args.push("-m".into());
        args.push(
            format!(
                "{}\n\nCommitted on its own by buildlock's commit-retry for agent {}, the \
                 elected fixer{what}, so that the agents waiting for it can take exactly this \
                 fix.{}",
                fixcommit::title(log.as_deref()),
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
            say::inert(d.fixer.as_deref().unwrap_or("another agent")),
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
                        .map(|b| format!(" by `{}`", say::inert(b)))
                        .unwrap_or_default()
                ),
                "taking the fix if this branch lacks it, then retrying the commit",
            ),
            WaitEnd::Moved { generation, .. } => (
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
                format!(
                    "the fixer `{}` went silent (its lease ran out without a sign of life)",
                    f.agent
                ),
                "retrying the commit to take over",
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
