//! `buildlock demo`: the whole story on a throwaway repository, in well under a minute.
//!
//! Six agents in six worktrees commit at once while a shared dependency is broken; one is elected
//! fixer and runs a small scripted fix; the others wait, then commit. Everything lives in a temp
//! directory that is removed at the end (`--keep` keeps it).
//!
//! The temp directory is removed on every way out: success, an error, a closed stdout
//! (`buildlock demo | head -1`) and SIGINT/SIGTERM/SIGHUP (the agents, each in its own process
//! group, are stopped and waited for first, so nothing writes into the directory afterwards).

pub mod claims;

use anyhow::{Context as _, Result, bail};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::flows::operator::ops::sibling;
use crate::os::say::{self, OutError};
use crate::os::{process, signals};
use crate::out;

const AGENTS: usize = 6;

/// The demo's temp directory, removed when dropped unless kept.
struct Scratch {
    root: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            say::say(format!("kept the demo in {}", self.root.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The demo was stopped by signal `n`.
#[derive(Debug)]
struct Interrupted(i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by signal {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

fn interrupted() -> Result<()> {
    match signals::pending() {
        Some(n) => Err(Interrupted(n).into()),
        None => Ok(()),
    }
}

pub fn run(keep: bool) -> Result<i32> {
    signals::install();
    let pre_commit = sibling("pre-commit")?;
    let commit_retry = sibling("commit-retry")?;
    let buildlock = std::env::current_exe()?;
    let root = std::env::temp_dir().join(format!(
        "buildlock-demo-{}-{}",
        std::process::id(),
        crate::os::time::now()
    ));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let scratch = Scratch { root, keep };
    let result = story(&scratch.root, &pre_commit, &commit_retry, &buildlock);
    drop(scratch);
    match result {
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(Interrupted(n)) => {
                say::say(format!(
                    "demo interrupted by signal {n}: stopped its agents{}",
                    if keep { "" } else { " and removed its files" }
                ));
                Ok(crate::protocol::exit::signal(*n))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

fn git(dir: &Path, args: &[impl AsRef<OsStr>]) -> Result<String> {
    interrupted()?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn color() -> bool {
    use std::io::IsTerminal;
    say::colour_for(std::io::stdout().is_terminal())
}

fn step(text: &str) -> Result<()> {
    interrupted()?;
    out!("")?;
    if color() {
        out!("\x1b[1m== {text}\x1b[0m")?;
    } else {
        out!("== {text}")?;
    }
    Ok(())
}

fn story(root: &Path, pre_commit: &Path, commit_retry: &Path, buildlock: &Path) -> Result<i32> {
    let started = Instant::now();
    let shared = root.join("shared");
    let repo = root.join("repo");
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(&repo)?;

    step("a repository whose check reads a shared dependency (shared/api.txt)")?;
    let api = make_repository(&repo, &shared, pre_commit)?;

    step(&format!(
        "{AGENTS} agents, each in its own worktree, each with a change to commit"
    ))?;
    let trees = make_worktrees(root, &repo)?;

    step(
        "someone breaks the shared dependency; all six run `git commit-retry` at the same instant",
    )?;
    std::fs::write(&api, "version = 1\n")?;
    let failed = run_agents(root, commit_retry, &trees)?;

    step("what happened")?;
    let landed = what_happened(&shared, &trees, started)?;
    step("buildlock status")?;
    let _ = Command::new(buildlock)
        .arg("status")
        .current_dir(&repo)
        .env("NO_COLOR", "1")
        .status();
    step("buildlock log")?;
    let _ = Command::new(buildlock)
        .args(["log", "-n", "40"])
        .current_dir(&repo)
        .status();
    step("before anything breaks: a claim, and a commit that waits for it")?;
    let scene = match buildlock.parent() {
        Some(bin) => crate::flows::demo::claims::scene(root, bin),
        None => Ok(()),
    };
    if let Err(e) = &scene {
        crate::os::say::say(format!("the claims scene failed: {e:#}"));
    }
    Ok(if failed == 0 && landed == AGENTS && scene.is_ok() {
        crate::protocol::exit::OK
    } else {
        crate::protocol::exit::FIXER
    })
}

/// The repository: a check that reads `shared/api.txt`, a scripted fix, the configuration, one
/// commit, and the hook installed. Returns the shared dependency's path.
fn make_repository(repo: &Path, shared: &Path, pre_commit: &Path) -> Result<PathBuf> {
    git(repo, &["init", "-q", "-b", "main"])?;
    git(repo, &["config", "user.name", "demo"])?;
    git(repo, &["config", "user.email", "demo@example.com"])?;
    let api = shared.join("api.txt");
    std::fs::write(&api, "version = 2\n")?;
    std::fs::write(
        repo.join("check.sh"),
        format!(
            "grep -qx 'version = 2' '{api}' || {{ echo \"error[E0432]: unresolved import: api.txt says '$(cat '{api}')', \
             expected 'version = 2'\"; exit 1; }}\n",
            api = api.display()
        ),
    )?;
    std::fs::write(
        repo.join("fix.sh"),
        format!(
            "echo \"  (fix) $BUILDLOCK_AGENT reads $BUILDLOCK_LOG and repairs api.txt\"\nsleep 2\n\
             echo 'version = 2' > '{api}'\necho \"$BUILDLOCK_AGENT\" >> '{witness}'\n",
            api = api.display(),
            witness = shared.join("fix-runs").display()
        ),
    )?;
    std::fs::write(
        repo.join(".buildlock.toml"),
        "check = \"sh check.sh\"\n\n[coordination]\nwait = \"1m\"\n\n[fix]\ncommand = \"sh fix.sh\"\ncost = 0.40\n",
    )?;
    out!(
        "{}",
        std::fs::read_to_string(repo.join(".buildlock.toml"))?.trim_end()
    )?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "init"])?;
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks)?;
    let hook = hooks.join("pre-commit");
    crate::os::fs::symlink_file(pre_commit, &hook)?;
    out!(
        "installed the hook: {} -> {}",
        hook.display(),
        pre_commit.display()
    )?;
    Ok(api)
}

/// One worktree per agent, each with a change staged: `(name, worktree)`.
fn make_worktrees(root: &Path, repo: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut trees: Vec<(String, PathBuf)> = Vec::new();
    for i in 1..=AGENTS {
        let name = format!("agent-{i}");
        let tree = root.join(&name);
        git(
            repo,
            &[
                OsStr::new("worktree"),
                OsStr::new("add"),
                OsStr::new("-q"),
                OsStr::new("-b"),
                OsStr::new(&name),
                tree.as_os_str(),
            ],
        )?;
        std::fs::write(
            tree.join(format!("{name}.txt")),
            format!("work of {name}\n"),
        )?;
        git(&tree, &["add", "-A"])?;
        trees.push((name, tree));
    }
    out!(
        "{}",
        trees
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(trees)
}

/// Starts `git commit-retry` in every worktree at once, relays their output with a tag each,
/// and waits for all of them; returns how many failed.
fn run_agents(root: &Path, commit_retry: &Path, trees: &[(String, PathBuf)]) -> Result<usize> {
    let colors = ["31", "32", "33", "34", "35", "36"];
    // Set by a reader thread whose write found stdout closed: the demo stops its agents and ends.
    let closed = Arc::new(AtomicBool::new(false));
    let mut agents = Agents(Vec::new());
    // commit-retry's hand-over folder goes in the temp dir: the demo's own, removed with it.
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    for (i, (name, tree)) in trees.iter().enumerate() {
        let mut agent = Command::new(commit_retry);
        agent
            .args(["-q", "-m", &format!("{name}: its change")])
            .current_dir(tree)
            .env("BUILDLOCK_AGENT", name)
            .env("TMPDIR", &tmp)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own group: a Ctrl-C reaches the demo, which stops each agent's whole group.
        let mut child = process::own_group(&mut agent)
            .spawn()
            .context("cannot start commit-retry")?;
        let tag = if color() {
            format!("\x1b[{}m[{name}]\x1b[0m", colors[i % colors.len()])
        } else {
            format!("[{name}]")
        };
        let mut readers = Vec::new();
        if let Some(err) = child.stderr.take() {
            readers.push(relay(err, tag.clone(), closed.clone()));
        }
        if let Some(out) = child.stdout.take() {
            readers.push(relay(out, tag, closed.clone()));
        }
        agents.0.push((name.clone(), child, readers));
    }
    agents.wait_all(&closed)
}

/// Tells how many of the agents' commits landed and how often the fix ran; returns how many
/// landed.
fn what_happened(shared: &Path, trees: &[(String, PathBuf)], started: Instant) -> Result<usize> {
    let fix_runs = std::fs::read_to_string(shared.join("fix-runs")).unwrap_or_default();
    let mut landed = 0;
    for (name, tree) in trees {
        let subject = git(tree, &["log", "-1", "--format=%s"])?;
        if subject.trim() == format!("{name}: its change") {
            landed += 1;
        }
    }
    out!("commits landed: {landed} of {AGENTS}")?;
    out!(
        "fix runs: {} ({})",
        fix_runs.lines().count(),
        fix_runs.lines().collect::<Vec<_>>().join(", ")
    )?;
    out!("took {}", crate::os::time::human(started.elapsed()))?;
    Ok(landed)
}

/// The running agents: each one's name, process and output relays. Dropping them stops them.
struct Agents(Vec<(String, Child, Vec<std::thread::JoinHandle<()>>)>);

impl Agents {
    /// Waits until every agent ended, saying which failed; returns how many. A closed stdout
    /// or a signal stops them all.
    fn wait_all(&mut self, closed: &AtomicBool) -> Result<usize> {
        let mut failed = 0;
        while !self.0.is_empty() {
            if closed.load(Ordering::SeqCst) {
                self.stop();
                return Err(OutError::Closed.into());
            }
            if let Some(n) = signals::pending() {
                self.stop();
                return Err(Interrupted(n).into());
            }
            let mut i = 0;
            while i < self.0.len() {
                match self.0[i].1.try_wait()? {
                    Some(status) => {
                        let (name, _, readers) = self.0.remove(i);
                        for r in readers {
                            let _ = r.join();
                        }
                        if !status.success() {
                            failed += 1;
                            out!("{name}: commit-retry exited {status}")?;
                        }
                    }
                    None => i += 1,
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(failed)
    }

    /// Stops every agent's process group (SIGTERM, then SIGKILL after 5 s) and waits for it, so
    /// that nothing writes into the demo's directory once it is removed.
    fn stop(&mut self) {
        for (_, child, _) in &self.0 {
            process::kill_group(child.id(), signals::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all: Vec<_> = self.0.drain(..).collect();
        for (_, child, readers) in &mut all {
            let pgid = child.id();
            // The group outlives its leader while git or the check still run in it.
            while (matches!(child.try_wait(), Ok(None)) || process::group_alive(pgid))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process::group_alive(pgid) {
                process::kill_group(pgid, signals::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            for r in readers.drain(..) {
                let _ = r.join();
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies an agent's output lines to stdout with its tag; when stdout is closed it raises
/// `closed` and keeps draining, so the agent never blocks on a full pipe.
fn relay(
    from: impl std::io::Read + Send + 'static,
    tag: String,
    closed: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if !closed.load(Ordering::SeqCst) && out!("{tag} {line}").is_err() {
                closed.store(true, Ordering::SeqCst);
            }
        }
    })
}
