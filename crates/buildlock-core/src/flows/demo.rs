//! `buildlock demo`: the whole story on a throwaway repository, in well under a minute.
//!
//! Six agents in six worktrees commit at once while a shared dependency is broken; one is elected
//! fixer and runs a small scripted fix; the others wait, then commit. Everything lives in a temp
//! directory that is removed at the end (`--keep` keeps it).

use anyhow::{Context as _, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::flows::ops::sibling;

const AGENTS: usize = 6;

pub fn run(keep: bool) -> Result<i32> {
    let pre_commit = sibling("pre-commit")?;
    let commit_retry = sibling("commit-retry")?;
    let buildlock = std::env::current_exe()?;
    let root = std::env::temp_dir().join(format!(
        "buildlock-demo-{}-{}",
        std::process::id(),
        crate::os::time::now()
    ));
    std::fs::create_dir_all(&root)?;
    let result = story(&root, &pre_commit, &commit_retry, &buildlock);
    if keep {
        println!("\nkept the demo in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
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
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && !crate::os::env::no_color()
}

fn step(text: &str) {
    if color() {
        println!("\n\x1b[1m== {text}\x1b[0m")
    } else {
        println!("\n== {text}")
    }
}

fn story(root: &Path, pre_commit: &Path, commit_retry: &Path, buildlock: &Path) -> Result<i32> {
    let started = Instant::now();
    let shared = root.join("shared");
    let repo = root.join("repo");
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(&repo)?;

    step("a repository whose check reads a shared dependency (shared/api.txt)");
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["config", "user.name", "demo"])?;
    git(&repo, &["config", "user.email", "demo@example.com"])?;
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
    println!(
        "{}",
        std::fs::read_to_string(repo.join(".buildlock.toml"))?.trim_end()
    );
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "init"])?;
    let hook = repo.join(".git/hooks/pre-commit");
    std::fs::create_dir_all(hook.parent().unwrap())?;
    std::os::unix::fs::symlink(pre_commit, &hook)?;
    println!(
        "installed the hook: {} -> {}",
        hook.display(),
        pre_commit.display()
    );

    step(&format!(
        "{AGENTS} agents, each in its own worktree, each with a change to commit"
    ));
    let mut trees: Vec<(String, PathBuf)> = Vec::new();
    for i in 1..=AGENTS {
        let name = format!("agent-{i}");
        let tree = root.join(&name);
        git(
            &repo,
            &["worktree", "add", "-q", "-b", &name, tree.to_str().unwrap()],
        )?;
        std::fs::write(
            tree.join(format!("{name}.txt")),
            format!("work of {name}\n"),
        )?;
        git(&tree, &["add", "-A"])?;
        trees.push((name, tree));
    }
    println!(
        "{}",
        trees
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    step(
        "someone breaks the shared dependency; all six run `git commit-retry` at the same instant",
    );
    std::fs::write(&api, "version = 1\n")?;
    let colors = ["31", "32", "33", "34", "35", "36"];
    let mut children = Vec::new();
    for (i, (name, tree)) in trees.iter().enumerate() {
        let mut child = Command::new(commit_retry)
            .args(["-q", "-m", &format!("{name}: its change")])
            .current_dir(tree)
            .env("BUILDLOCK_AGENT", name)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start commit-retry")?;
        let tag = if color() {
            format!("\x1b[{}m[{name}]\x1b[0m", colors[i % colors.len()])
        } else {
            format!("[{name}]")
        };
        let err = child.stderr.take().unwrap();
        let out = child.stdout.take().unwrap();
        let t1 = tag.clone();
        let readers = [
            std::thread::spawn(move || {
                BufReader::new(err)
                    .lines()
                    .map_while(Result::ok)
                    .for_each(|l| println!("{t1} {l}"))
            }),
            std::thread::spawn(move || {
                BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .for_each(|l| println!("{tag} {l}"))
            }),
        ];
        children.push((name.clone(), child, readers));
    }
    let mut failed = 0;
    for (name, mut child, readers) in children {
        let status = child.wait()?;
        for r in readers {
            let _ = r.join();
        }
        if !status.success() {
            failed += 1;
            println!("{name}: commit-retry exited {status}");
        }
    }

    step("what happened");
    let fix_runs = std::fs::read_to_string(shared.join("fix-runs")).unwrap_or_default();
    let mut landed = 0;
    for (name, tree) in &trees {
        let subject = git(tree, &["log", "-1", "--format=%s"])?;
        if subject.trim() == format!("{name}: its change") {
            landed += 1;
        }
    }
    println!("commits landed: {landed} of {AGENTS}");
    println!(
        "fix runs: {} ({})",
        fix_runs.lines().count(),
        fix_runs.lines().collect::<Vec<_>>().join(", ")
    );
    println!("took {}", crate::os::time::human(started.elapsed()));
    step("buildlock status");
    let _ = Command::new(buildlock)
        .arg("status")
        .current_dir(&repo)
        .env("NO_COLOR", "1")
        .status();
    step("buildlock log");
    let _ = Command::new(buildlock)
        .args(["log", "-n", "40"])
        .current_dir(&repo)
        .status();
    Ok(if failed == 0 && landed == AGENTS {
        crate::protocol::exit::OK
    } else {
        crate::protocol::exit::FIXER
    })
}
