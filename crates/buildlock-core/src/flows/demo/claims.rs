//! The demo's claims scene: a claim conflict resolved by waiting, on a throwaway
//! repository under `root`.
//!
//! `agent-a` claims `src/api/*`; `agent-b`'s commit touching `src/api/x.py` is refused before its
//! check runs; its `commit-retry` waits; `agent-a` runs `buildlock done`, and `agent-b`'s commit
//! lands at once. Everything the programs say goes to stderr as usual; the narration to stdout.

use anyhow::{Context as _, Result, bail};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn say(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{text}");
    let _ = o.flush();
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "demo")
        .env("GIT_AUTHOR_EMAIL", "demo@example.com")
        .env("GIT_COMMITTER_NAME", "demo")
        .env("GIT_COMMITTER_EMAIL", "demo@example.com")
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Plays the scene in a new repository under `root` (which must exist); `bin` holds the three
/// binaries (`pre-commit`, `commit-retry`, `buildlock`).
pub fn scene(root: &Path, bin: &Path) -> Result<()> {
    let repo = root.join("claims-demo");
    std::fs::create_dir_all(repo.join("src/api"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("src/api/x.py"), "def x(): return 1\n")?;
    std::fs::write(
        repo.join(".buildlock.toml"),
        "check = \"true\"\n[hook]\nwait = false\n",
    )?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "init"])?;
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks)?;
    let _ = std::fs::remove_file(hooks.join("pre-commit"));
    crate::os::fs::symlink_file(&bin.join("pre-commit"), &hooks.join("pre-commit"))?;
    let (a, b) = (root.join("agent-a"), root.join("agent-b"));
    git(
        &repo,
        &["worktree", "add", "-q", "-b", "a", &a.to_string_lossy()],
    )?;
    git(
        &repo,
        &["worktree", "add", "-q", "-b", "b", &b.to_string_lossy()],
    )?;
    let run = |dir: &Path, agent: &str, program: &str, args: &[&str]| {
        let mut c = Command::new(bin.join(program));
        c.args(args)
            .current_dir(dir)
            .env("BUILDLOCK_AGENT", agent)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "demo")
            .env("GIT_AUTHOR_EMAIL", "demo@example.com")
            .env("GIT_COMMITTER_NAME", "demo")
            .env("GIT_COMMITTER_EMAIL", "demo@example.com");
        c
    };

    say("\n== claims: keeping two agents out of each other's files ==");
    say("agent-a: buildlock claim 'src/api/*'");
    let st = run(&a, "agent-a", "buildlock", &["claim", "src/api/*"]).status()?;
    if !st.success() {
        bail!("the claim was refused");
    }
    say(
        "agent-b edits src/api/x.py and commits with commit-retry: refused before its check, it waits",
    );
    std::fs::write(b.join("src/api/x.py"), "def x(): return 2\n")?;
    git(&b, &["add", "-A"])?;
    let mut retry = run(
        &b,
        "agent-b",
        "commit-retry",
        &["-q", "-m", "agent-b: x returns 2"],
    )
    .stdin(Stdio::null())
    .spawn()
    .context("cannot run commit-retry")?;
    let start = Instant::now();
    // Wait until b is listed as blocked, then show the registry.
    loop {
        let out = run(&b, "observer", "buildlock", &["agents"]).output()?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        if table.contains("blocked") || start.elapsed() > Duration::from_secs(20) {
            say("buildlock agents:");
            say(table.trim_end());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    say("agent-a finishes its work: buildlock done");
    let done_at = Instant::now();
    run(&a, "agent-a", "buildlock", &["done"]).status()?;
    let st = retry.wait()?;
    if !st.success() {
        bail!("agent-b's commit-retry did not land");
    }
    say(&format!(
        "agent-b's commit landed {} ms after agent-a's `buildlock done`, without agent-b doing anything",
        done_at.elapsed().as_millis()
    ));
    Ok(())
}
