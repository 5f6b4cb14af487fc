//! `buildlock doctor`: is everything in place and working?
//!
//! It tells the truth: every probe does the real thing (the check's commands are looked up as
//! `sh` would look them up; the coordination dir gets a real file created, written, locked and
//! removed), so "no problems found" means the next commit can be coordinated. Each problem says
//! what to do, with paths and commands that exist in this repository; any problem exits 1.
//! It changes nothing: its probe files are removed, and a folder that does not exist yet is not
//! created (its nearest existing parent is probed instead).

use anyhow::Result;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::flows::commit::hook::chained_hook;
use crate::flows::context::Context;
use crate::flows::operator::ops::fixer_liveness;
use crate::os::lock::Lock;
use crate::out;
use crate::protocol::exit;
use crate::protocol::state::Liveness;

/// The coordination dir's sub-folders the store writes, and what each holds.
const FOLDERS: [(&str, &str); 4] = [
    ("state", "the build state of each key"),
    ("locks", "the election and fixer locks"),
    ("logs", "failure logs"),
    ("leases", "fixers' heartbeats"),
];

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
    coordination_dir_findings(ctx, &mut r)?;
    out!(
        "state       {} (backend `{}`)",
        ctx.store.location(),
        ctx.store.backend()
    )?;
    for (good, what, todo) in ctx.store.diagnose() {
        if good {
            r.ok(what)?;
        } else {
            r.problem(what, todo)?;
        }
    }
    for (_, s) in ctx.store.all() {
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
    let chained = chained_hook(&ctx.home);
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
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
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

/// `'text'` for a shell, when it needs quoting.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
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
                Ok(m) if m.permissions().mode() & 0o111 == 0 => {
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

/// The command names a shell command line runs, as far as they can be told without running it:
/// the first word of each simple command of its lists and pipelines (`a && b | c; d`), after
/// variable assignments, reserved words (`if`, `!`, `{`, …) and wrappers (`env`, `exec`,
/// `command`, `nohup`, `nice`, `time`). A word with an expansion (`$`, backquotes, `*`, `?`)
/// cannot be told and is left out; `for` and `case` end the analysis.
pub fn command_names(line: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut at_start = true;
    let mut after_wrapper = false;
    let mut skip_next = false;
    for token in tokens(line) {
        let word = match token {
            Token::Redirect => {
                skip_next = true;
                continue;
            }
            Token::Operator => {
                at_start = true;
                after_wrapper = false;
                continue;
            }
            Token::Word { text, expanded } => {
                if skip_next {
                    skip_next = false;
                    continue;
                }
                if !at_start {
                    continue;
                }
                if expanded {
                    at_start = false;
                    continue;
                }
                text
            }
        };
        let assignment = word.split_once('=').is_some_and(|(name, _)| is_name(name));
        match word.as_str() {
            _ if assignment => {}
            _ if after_wrapper && word.starts_with('-') => {
                // `nice -n 5 cmd`, `env -u NAME cmd`: these options take a value.
                skip_next = matches!(word.as_str(), "-n" | "-u");
            }
            "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" | "(" => {}
            "fi" | "done" | "esac" | "}" => at_start = false,
            "for" | "case" | "select" | "function" => break,
            "exec" | "command" | "nohup" | "nice" | "env" | "time" => after_wrapper = true,
            _ => {
                if !names.contains(&word) {
                    names.push(word);
                }
                at_start = false;
                after_wrapper = false;
            }
        }
    }
    names
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, PartialEq)]
enum Token {
    Word {
        text: String,
        expanded: bool,
    },
    /// `;`, `&&`, `||`, `|`, `&`, `(`, `)`, a newline: a new command may start after it.
    Operator,
    /// `>`, `>>`, `<`, `2>&1`, …: the next word is a file, not a command.
    Redirect,
}

/// Splits a shell command line into words and operators, following sh's quoting.
fn tokens(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let mut expanded = false;
    let end_word =
        |word: &mut String, in_word: &mut bool, expanded: &mut bool, out: &mut Vec<Token>| {
            if *in_word {
                out.push(Token::Word {
                    text: std::mem::take(word),
                    expanded: *expanded,
                });
            }
            *in_word = false;
            *expanded = false;
        };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut expanded, &mut out),
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push(Token::Operator);
            }
            '\n' | ';' | '(' | ')' => {
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                out.push(Token::Operator);
            }
            '&' | '|' => {
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                if c == '&' && chars.peek() == Some(&'>') {
                    chars.next();
                    out.push(Token::Redirect);
                } else {
                    if chars.peek() == Some(&c) {
                        chars.next();
                    }
                    out.push(Token::Operator);
                }
            }
            '<' | '>' => {
                // A file descriptor number right before the redirection (`2>`) is not a word.
                if in_word && !expanded && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                end_word(&mut word, &mut in_word, &mut expanded, &mut out);
                if matches!(chars.peek(), Some('>' | '<' | '&' | '|')) {
                    let next = chars.next();
                    // `2>&1`: the target is a descriptor, consumed as the redirect's word.
                    if next == Some('&') {
                        while chars
                            .peek()
                            .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                        {
                            chars.next();
                        }
                        continue;
                    }
                }
                out.push(Token::Redirect);
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        '$' | '`' => {
                            expanded = true;
                            word.push(c);
                        }
                        _ => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(n) => word.push(n),
                }
            }
            '$' | '`' | '*' | '?' => {
                in_word = true;
                expanded = true;
                word.push(c);
                // `$(...)`, `${...}`, `` `...` ``: skip to the end, whatever it holds.
                let close = match (c, chars.peek()) {
                    ('$', Some('(')) => Some(')'),
                    ('$', Some('{')) => Some('}'),
                    ('`', _) => Some('`'),
                    _ => None,
                };
                if let Some(close) = close {
                    let open = if c == '`' { None } else { chars.next() };
                    let mut depth = 1;
                    for n in chars.by_ref() {
                        if Some(n) == open {
                            depth += 1;
                        } else if n == close {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut expanded, &mut out);
    out
}

/// (c) the coordination dir and its folders can really be written, and locking works in them;
/// (d) how big they are.
fn coordination_dir_findings(ctx: &Context, r: &mut Report) -> Result<()> {
    let home = ctx.home.as_path();
    let mut dirs: Vec<(PathBuf, &str)> = vec![(home.to_owned(), "history and totals")];
    dirs.extend(FOLDERS.iter().map(|(name, what)| (home.join(name), *what)));
    let mut writable = true;
    for (dir, what) in &dirs {
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() && !fs::metadata(dir).is_ok_and(|m| m.is_dir()) => {
                writable = false;
                r.problem(
                    format!(
                        "{} is not a folder, so buildlock cannot write {what} there: every failure's coordination fails",
                        dir.display()
                    ),
                    format!(
                        "move it away (`mv {0} {0}.bak`); buildlock creates the folder again",
                        shell_quote(&dir.display().to_string())
                    ),
                )?;
            }
            Ok(_) => {
                if let Err(e) = write_probe(dir) {
                    writable = false;
                    r.problem(
                        format!(
                            "cannot write in {} ({what}): {e}",
                            dir.display()
                        ),
                        format!(
                            "make it writable for the user who commits (`ls -ld {0}`; `lsattr -d {0}` shows an immutable flag)",
                            shell_quote(&dir.display().to_string())
                        ),
                    )?;
                }
            }
            // Not created yet: the first failure creates it inside its nearest existing parent.
            Err(_) => {
                let parent = dir.ancestors().find(|a| a.is_dir()).unwrap_or(home);
                if parent.starts_with(home) {
                    continue; // the coordination dir itself was probed first
                }
                if let Err(e) = write_probe(parent) {
                    writable = false;
                    r.problem(
                        format!(
                            "{} does not exist yet and cannot be created in {}: {e}",
                            dir.display(),
                            parent.display()
                        ),
                        format!(
                            "make {} writable for the user who commits",
                            shell_quote(&parent.display().to_string())
                        ),
                    )?;
                }
            }
        }
    }
    if writable {
        r.ok(format!(
            "the coordination dir {} is writable (a probe file was created, written and removed in each folder)",
            home.display()
        ))?;
    }
    match lock_probe(home) {
        Ok(true) => r.ok(format!("file locking works in {}", home.display()))?,
        Ok(false) => r.problem(
            format!(
                "file locking does NOT work in {} (a network or virtual file system?): buildlock cannot coordinate here",
                home.display()
            ),
            "keep the repository's git directory on a local disk (all agents must reach the same git common dir)",
        )?,
        // Not a second problem when the dir cannot be written at all: said above.
        Err(e) if writable => r.problem(
            format!("cannot test locking in {}: {e}", home.display()),
            "make the coordination dir writable for the user who commits",
        )?,
        Err(_) => {}
    }
    for entry in fs::read_dir(home.join("state"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with('.') {
            r.note(format!(
                "stray temp file {} (a writer was killed; the next write removes it)",
                entry.path().display()
            ))?;
        }
    }
    bell_findings(home, r)?;
    size_findings(home)
}

/// The bells (FIFOs that wake waiters): something else in their place does not break
/// coordination, but waiters then notice a fix only at their next look, seconds later.
fn bell_findings(home: &Path, r: &mut Report) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for name in ["state", "registry"] {
        let path = home.join(format!("{name}.bell"));
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // made by the first waiter
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let ours = meta.uid() == unsafe { libc::geteuid() };
        if !meta.file_type().is_fifo() || !ours {
            r.problem(
                format!(
                    "{} is not a FIFO of yours, so waiters are not woken by changes: they notice \
                     a fix only at their next look, seconds later",
                    path.display()
                ),
                format!(
                    "remove it (`rm {}`); the next waiter makes it again",
                    shell_quote(&path.display().to_string())
                ),
            )?;
        }
    }
    Ok(())
}

/// Creates, writes, syncs and removes a fresh file in `dir`.
fn write_probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".doctor-{}.probe", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"buildlock doctor write probe\n")?;
            f.sync_all()
        });
    let removed = fs::remove_file(&path);
    result?;
    removed
}

/// Takes a lock on a fresh file in `locks/` and checks that a second take is refused, as it must
/// be between two agents. Removes the file.
fn lock_probe(home: &Path) -> std::io::Result<bool> {
    let locks = home.join("locks");
    // A missing locks/ is created by the first election; probe in the coordination dir then.
    let dir = if locks.is_dir() {
        locks
    } else {
        home.to_owned()
    };
    if !dir.is_dir() {
        return Ok(true); // nothing exists yet: the write probe above spoke for the parent
    }
    let path = dir.join(format!(".doctor-{}.lock", std::process::id()));
    let result = (|| {
        let Some(_held) = Lock::try_acquire(&path)? else {
            return Ok(false);
        };
        Ok(Lock::try_acquire(&path)?.is_none())
    })();
    let _ = fs::remove_file(&path);
    result
}

/// (d) files and bytes in each folder, and in all.
fn size_findings(home: &Path) -> Result<()> {
    fn walk(path: &Path, files: &mut u64, bytes: &mut u64) {
        let Ok(m) = fs::symlink_metadata(path) else {
            return;
        };
        if m.is_dir() {
            for e in fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&e.path(), files, bytes);
            }
        } else {
            *files += 1;
            *bytes += m.len();
        }
    }
    if !home.is_dir() {
        return Ok(out!(
            "size     {} does not exist yet: it is created at the first failure",
            home.display()
        )?);
    }
    let mut parts = Vec::new();
    let (mut all_files, mut all_bytes) = (0, 0);
    for name in [
        "state",
        "locks",
        "logs",
        "leases",
        "history.jsonl",
        "totals.json",
    ] {
        let (mut files, mut bytes) = (0, 0);
        walk(&home.join(name), &mut files, &mut bytes);
        all_files += files;
        all_bytes += bytes;
        if name.contains('.') {
            if files > 0 {
                parts.push(format!("{name} {}", human_bytes(bytes)));
            }
        } else {
            parts.push(format!(
                "{name}/ {files} file{} {}",
                if files == 1 { "" } else { "s" },
                human_bytes(bytes)
            ));
        }
    }
    out!(
        "size     {}: {all_files} files, {} ({}); logs keep the last 200, history its last MiB",
        home.display(),
        human_bytes(all_bytes),
        parts.join(", ")
    )?;
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The hooks directory git uses: `core.hooksPath` (relative to the work tree) or the common dir's.
pub fn hooks_dir(ctx: &Context) -> PathBuf {
    ctx.repo.hooks_dir()
}

/// The installed binaries: `<common dir>/buildlock/bin/`.
fn bin_dir(ctx: &Context) -> PathBuf {
    ctx.home.join("bin")
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
    let found = crate::flows::operator::installation::inspect(&hooks_dir(ctx), &ctx.home);
    if found.is_ours() {
        let exec = fs::metadata(&hook).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
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

#[cfg(test)]
mod tests {
    use super::command_names;

    fn names(line: &str) -> Vec<String> {
        command_names(line)
    }

    #[test]
    fn finds_the_commands_of_a_command_line() {
        assert_eq!(names("cargo test --quiet"), ["cargo"]);
        assert_eq!(names("RUST_LOG=1 FOO='a b' cargo test"), ["cargo"]);
        assert_eq!(
            names("cd sub && make -j4 || exit 1"),
            ["cd", "make", "exit"]
        );
        assert_eq!(
            names("npm test 2>&1 | tee out.log; echo done"),
            ["npm", "tee", "echo"]
        );
        assert_eq!(
            names("./scripts/check.sh > /tmp/x 2>/dev/null"),
            ["./scripts/check.sh"]
        );
        assert_eq!(names("env -u HOME X=1 nice -n 5 pytest -q"), ["pytest"]);
        assert_eq!(names("exec 'my tool' --flag"), ["my tool"]);
        assert_eq!(names("if test -f x; then make; fi"), ["test", "make"]);
        assert_eq!(names("(cd a; make) && { b; }"), ["cd", "make", "b"]);
        assert_eq!(names("! grep -q x \"$F\" # comment: nope"), ["grep"]);
        assert_eq!(names("\"$CARGO\" test && true"), ["true"]);
        assert_eq!(names("$(which cargo) test"), Vec::<String>::new());
        assert_eq!(
            names("for f in a b; do lint $f; done"),
            Vec::<String>::new()
        );
        assert_eq!(names("sh check.sh"), ["sh"]);
        assert_eq!(names("echo a\\ b; make"), ["echo", "make"]);
    }
}
