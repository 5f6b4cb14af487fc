//! `buildlock doctor`: is everything in place and working?
//!
//! It tells the truth: every probe does the real thing (the check's commands are looked up as
//! `sh` would look them up; the coordination dir gets a real file created, written, locked and
//! removed), so "no problems found" means the next commit can be coordinated. Each problem says
//! what to do, with paths and commands that exist in this repository; any problem exits 1.
//! It changes nothing: its probe files are removed, and a folder that does not exist yet is not
//! created (its nearest existing parent is probed instead).

use crate::os::say::shell_quote;
use anyhow::Result;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::flows::context::Context;
use crate::flows::operator::ops::fixer_liveness;
use crate::flows::operator::shell_words::command_names;
use crate::out;
use crate::protocol::exit;
use crate::protocol::state::Liveness;
use crate::store::finding::Level;

/// Prints findings and counts problems.
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&mut self, msg: impl std::fmt::Display) -> Result<()> {
        Ok(out!("ok       {msg}")?)
    }
    fn note(&mut self, msg: impl std::fmt::Display) -> Result<()> {
        Ok(out!("note     {msg}")?)
    }
    /// A problem: what is wrong, then what to do.
    fn problem(
        &mut self,
        what: impl std::fmt::Display,
        todo: impl std::fmt::Display,
    ) -> Result<()> {
        self.problems += 1;
        out!("PROBLEM  {what}")?;
        Ok(out!("         what to do: {todo}")?)
    }
}

pub fn run(ctx: &Context) -> Result<i32> {
    let mut r = Report { problems: 0 };
    out!("repository  {}", ctx.repo.worktree.display())?;
    out!(
        "common dir  {} (every worktree of this repository shares it)",
        ctx.repo.common_dir.display()
    )?;
    out!("agent       {}", ctx.agent)?;
    let sources: Vec<String> = ctx
        .config
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    r.ok(format!(
        "configuration is valid ({})",
        if sources.is_empty() {
            "built-in defaults only".to_owned()
        } else {
            sources.join(", ")
        }
    ))?;
    check_findings(ctx, &mut r)?;
    command_findings(ctx, &mut r)?;
    hook_findings(ctx, &mut r)?;
    out!(
        "state       {} (backend `{}`)",
        ctx.store.location(),
        ctx.store.backend()
    )?;
    for f in ctx.home.diagnose().into_iter().chain(ctx.store.diagnose()) {
        match f.level {
            Level::Ok => r.ok(f.what)?,
            Level::Note => r.note(f.what)?,
            Level::Problem => r.problem(f.what, f.todo)?,
            Level::Size => out!("size     {}", f.what)?,
        }
    }
    stray_findings(ctx, &mut r)?;
    // Not read (an unreachable remote): the findings above say why; the run ends as a
    // coordination failure (exit 70), never as "no problems".
    for (_, s) in ctx.store.all()? {
        let how = match fixer_liveness(ctx, &s) {
            Some(Liveness::Dead) => "dead",
            Some(Liveness::Stale) => "stale",
            _ => continue,
        };
        r.note(format!(
            "the fixer of key `{}` is {how}: the next failing agent takes over (or `git buildlock reset {}`)",
            s.key, s.key
        ))?;
    }
    alias_findings(ctx, &mut r)?;
    if r.problems == 0 {
        out!("\nno problems found")?;
        Ok(exit::OK)
    } else {
        out!(
            "\n{} problem(s) found: each says what to do above",
            r.problems
        )?;
        Ok(exit::FIXER)
    }
}

/// Temp files of commit-retry runs that were killed (index copies in the git dirs, hand-over
/// decision files): harmless, left for the next commit-retry to remove (doctor changes nothing).
fn stray_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    use crate::flows::commit::{own_work, retry::handover};
    let index = own_work::strays(&ctx.repo.common_dir);
    let decisions = handover::strays(&handover::folders(&ctx.home.run()));
    for (path, what) in index
        .iter()
        .map(|p| (p, "an index file"))
        .chain(decisions.iter().map(|p| (p, "a hand-over decision file")))
    {
        r.note(format!(
            "stray temp file {} ({what} of a commit-retry that was killed; the next \
             commit-retry that does more than a green commit removes it, or `rm` it)",
            path.display()
        ))?;
    }
    Ok(())
}

/// Where `check` comes from, for hints: the configuration files that were read.
fn config_files(ctx: &Context) -> String {
    match ctx.config.sources.as_slice() {
        [] => format!(
            "{}",
            ctx.repo
                .worktree
                .join(crate::protocol::config::REPO_FILE)
                .display()
        ),
        files => files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// (a) the check's commands exist; (b) a chained hook that `check` silently replaces.
fn check_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    let chained = ctx.home.chained_hook();
    let chained_exists = fs::symlink_metadata(&chained).is_ok();
    match &ctx.config.check {
        Some(check) => {
            r.ok(format!("check: `{check}`"))?;
            let names = command_names(check);
            let missing = missing_commands(&ctx.repo.worktree, &names);
            for (name, why) in &missing {
                r.problem(
                    format!(
                        "the check's command `{name}` {why}: every commit is refused as a configuration error (exit 78; nobody is elected over it)"
                    ),
                    format!(
                        "install `{name}` (or put it on PATH), or correct `check` in {}",
                        config_files(ctx)
                    ),
                )?;
            }
            if missing.is_empty() && !names.is_empty() {
                r.ok(format!(
                    "the check's command(s) exist: {}",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))?;
            } else if names.is_empty() {
                r.note("the check starts with a shell construct or a variable: doctor cannot tell whether its commands exist; run it once by hand")?;
            }
            if chained_exists {
                let kind = hook_kind(&chained);
                r.problem(
                    format!(
                        "{kind} was kept as {} when buildlock was installed, but `check` replaces it: it no longer runs on commit",
                        chained.display()
                    ),
                    format!(
                        "to run both, make the check run it first: check = \"{} && {}\"; to run only it, remove `check` from {}; if you meant to drop it, delete {}",
                        shell_quote(&chained.display().to_string()),
                        check.replace('\\', "\\\\").replace('"', "\\\""),
                        config_files(ctx),
                        chained.display()
                    ),
                )?;
            }
        }
        None if chained_exists => {
            let executable = fs::metadata(&chained)
                .is_ok_and(|m| crate::os::fs::is_executable(&m));
            if executable {
                r.ok(format!(
                    "check: {} ({}, chained)",
                    chained.display(),
                    hook_kind(&chained)
                ))?;
            } else {
                r.problem(
                    format!(
                        "the chained hook {} is not an executable file, so the hook skips it and every commit passes unchecked",
                        chained.display()
                    ),
                    format!("chmod +x {}", shell_quote(&chained.display().to_string())),
                )?;
            }
        }
        None => r.note(format!(
            "no `check` set and no chained hook: the hook passes and says nothing; set `check` in {}",
            config_files(ctx)
        ))?,
    }
    Ok(())
}

/// `fix.command` and `retry.refresh` run only in a breakage: a typo in them shows up then, at the
/// worst time, unless doctor finds it now.
fn command_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    let commands = [
        (
            "fix.command",
            ctx.config.fix_command.as_deref(),
            "every fix run fails (exit 127), and the fixer gives the role up after \
             `max_fix_attempts`",
        ),
        (
            "retry.refresh",
            ctx.config.retry_refresh.as_deref(),
            "waiters cannot take the fix: commit-retry stops with exit 75 after the fix",
        ),
    ];
    for (key, command, consequence) in commands {
        let Some(command) = command else { continue };
        let names = command_names(command);
        let missing = missing_commands(&ctx.repo.worktree, &names);
        for (name, why) in &missing {
            r.problem(
                format!("`{key}` runs `{name}`, which {why}: {consequence}"),
                format!(
                    "install `{name}` (or put it on PATH), or correct `{key}` in {}",
                    config_files(ctx)
                ),
            )?;
        }
        if missing.is_empty() && !names.is_empty() {
            r.ok(format!("{key}: `{command}` (its commands exist)"))?;
        }
    }
    Ok(())
}

/// What a chained hook is, from its text, for messages.
fn hook_kind(path: &Path) -> &'static str {
    let head = fs::read(path)
        .map(|b| b[..b.len().min(8192)].to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&head);
    if text.contains("lefthook") {
        "your previous pre-commit hook (lefthook)"
    } else if text.contains("File generated by pre-commit") || text.contains("pre_commit") {
        "your previous pre-commit hook (the pre-commit framework)"
    } else if text.contains("husky") {
        "your previous pre-commit hook (husky)"
    } else {
        "your previous pre-commit hook"
    }
}

/// The names among `names` that `sh -c`, started at `worktree`, could not run, with why. A name
/// with a slash is a path (relative to the work tree, where the check runs); any other name is
/// looked up by the shell itself (`command -v`), so builtins, keywords and PATH all count as sh
/// counts them.
fn missing_commands(worktree: &Path, names: &[String]) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    let mut lookup = Vec::new();
    for name in names {
        if name.contains('/') {
            let path = worktree.join(name);
            match fs::metadata(&path) {
                Err(_) => {
                    missing.push((name.clone(), format!("does not exist ({})", path.display())))
                }
                Ok(m) if !m.is_file() => missing.push((name.clone(), "is not a file".to_owned())),
                Ok(m) if !crate::os::fs::is_executable(&m) => {
                    missing.push((name.clone(), "is not executable (chmod +x it)".to_owned()))
                }
                Ok(_) => {}
            }
        } else {
            lookup.push(name.clone());
        }
    }
    if lookup.is_empty() {
        return missing;
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"for c; do command -v -- "$c" >/dev/null 2>&1 || printf '%s\n' "$c"; done"#)
        .arg("sh")
        .args(&lookup)
        .current_dir(worktree)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let path = crate::os::env::path();
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                missing.push((
                    name.to_owned(),
                    format!("is not found: not a shell builtin, and not on PATH ({path})"),
                ));
            }
        }
        Err(e) => missing.push(("sh".to_owned(), format!("cannot be started ({e})"))),
    }
    missing
}

/// The hooks directory git uses: `core.hooksPath` (relative to the work tree) or the common dir's.
pub fn hooks_dir(ctx: &Context) -> PathBuf {
    ctx.repo.hooks_dir()
}

/// The installed binaries: `<common dir>/buildlock/bin/`.
fn bin_dir(ctx: &Context) -> PathBuf {
    ctx.home.bin()
}

/// How to put buildlock's hook back, with what exists here.
fn reinstall_hint(ctx: &Context, hook: &Path) -> String {
    let installed = bin_dir(ctx).join("pre-commit");
    let install_sh = format!(
        "run buildlock's install.sh again from your buildlock checkout (`<buildlock checkout>/install.sh {}`): it keeps the hook that is there and chains it",
        shell_quote(&ctx.repo.worktree.display().to_string())
    );
    if installed.exists() {
        format!(
            "{install_sh}; or link the installed hook yourself: `ln -sf {} {}`",
            shell_quote(&installed.display().to_string()),
            shell_quote(&hook.display().to_string())
        )
    } else {
        install_sh
    }
}

fn hook_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    let hook = hooks_dir(ctx).join("pre-commit");
    let found = crate::flows::operator::installation::inspect(&hooks_dir(ctx), ctx.home.path());
    if found.is_ours() {
        let exec = fs::metadata(&hook).is_ok_and(|m| crate::os::fs::is_executable(&m));
        if !exec && !fs::symlink_metadata(&hook).is_ok_and(|m| m.file_type().is_symlink()) {
            return r.problem(
                format!(
                    "the hook {} is not executable: git skips it",
                    hook.display()
                ),
                format!("chmod +x {}", shell_quote(&hook.display().to_string())),
            );
        }
        return r.ok(found.message());
    }
    // The message says what is the case and what to run.
    r.problem(found.message(), reinstall_hint(ctx, &hook))
}

fn alias_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    let config = git2::Repository::open(&ctx.repo.git_dir)
        .ok()
        .and_then(|repo| repo.config().ok());
    for (alias, binary) in [("commit-retry", "commit-retry"), ("buildlock", "buildlock")] {
        let value = config
            .as_ref()
            .and_then(|c| c.get_string(&format!("alias.{alias}")).ok());
        match value {
            Some(_) => r.ok(format!("`git {alias}` is set up"))?,
            None => {
                let installed = bin_dir(ctx).join(binary);
                let how = if installed.exists() {
                    format!(
                        "add it: git config alias.{alias} {}",
                        shell_quote(&format!(
                            "!f() {{ cd \"${{GIT_PREFIX:-.}}\" && exec \"{}\" \"$@\"; }}; f",
                            installed.display()
                        ))
                    )
                } else {
                    "buildlock's install.sh adds it".to_owned()
                };
                r.note(format!("`git {alias}` is not set up: {how}"))?;
            }
        }
    }
    Ok(())
}
