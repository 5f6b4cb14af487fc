//! The remote store's transport: the user's own `git` binary, for every operation that talks to
//! the remote (their credentials, ssh config, proxies and URL rewrites apply).
//!
//! Guarantees:
//! - every run is bounded in time: a stalled connection is ended with git and every helper it
//!   started (they run in a process group of their own), and reported as transient;
//! - no prompt can hang a CI job (`GIT_TERMINAL_PROMPT=0`, stdin is `/dev/null`);
//! - nothing of the user's repository changes: reads are `ls-remote` and `fetch` of object ids
//!   (no ref is written, not even `FETCH_HEAD`), and pushes never run the user's `pre-push` hook;
//! - a failure is classified ([`Failure`]): transient (retry with backoff), or permanent (no
//!   retry can help: a missing permission, a remote that does not exist), with git's own words.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::os::{deadline, time};

/// How a git run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The network or the server may recover: retry with backoff.
    Transient(String),
    /// No retry can help (authentication, permission, a remote or repository that does not
    /// exist, a server hook that declined): say so.
    Permanent(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// One push's result, read from `git push --porcelain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Every ref landed as asked.
    Landed,
    /// A lease did not hold: the remote moved since we read it (we lost a race).
    Stale,
}

/// One ref update of a push: `new = None` deletes; `expect = None` means "must not exist".
#[derive(Clone, Debug)]
pub struct Update {
    pub name: String,
    pub new: Option<String>,
    pub expect: Option<String>,
}

/// The user's git, run for one repository against one remote.
#[derive(Clone, Debug)]
pub struct Git {
    bin: PathBuf,
    git_dir: PathBuf,
    pub remote: String,
    /// Bound on one run: a connection that stalls longer is killed.
    pub timeout: Duration,
}

/// What a git run printed.
struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Git {
    /// The `git` on PATH (found with `which`), for the repository whose git dir is `git_dir`.
    pub fn new(git_dir: &Path, remote: &str) -> Result<Git, String> {
        let bin = which::which("git").map_err(|_| {
            "`git` is not on PATH: the remote backend runs your git for every remote operation; \
             install git or fix PATH"
                .to_owned()
        })?;
        Ok(Git {
            bin,
            git_dir: git_dir.to_owned(),
            remote: remote.to_owned(),
            timeout: crate::os::env::remote_timeout().unwrap_or(Duration::from_secs(60)),
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        // Our own settings for these runs only: no maintenance, no hooks' side effects, no
        // prompts; everything else (credentials, ssh, proxies, insteadOf) is the user's.
        c.arg("--git-dir")
            .arg(&self.git_dir)
            .args([
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
                "-c",
                "fetch.writeCommitGraph=false",
                "-c",
                "push.followTags=false",
                "-c",
                "push.recurseSubmodules=no",
                "-c",
                "push.gpgSign=false",
                "-c",
                "fetch.recurseSubmodules=false",
            ])
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_PREFIX")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        c
    }

    /// One run of git, bounded by `self.timeout`: at the deadline git and every helper it
    /// started (`git-remote-https`, `ssh`) are ended as a group, and reading their output never
    /// waits past it (see `os::deadline`).
    fn run(&self, args: &[String]) -> Result<Ran, Failure> {
        let mut c = self.command();
        c.args(args);
        let what = args.first().map_or("", String::as_str);
        let output = match deadline::run(c, self.timeout) {
            Ok(output) => output,
            Err(deadline::Error::Spawn(e)) => {
                return Err(Failure::Permanent(format!(
                    "cannot run {}: {e}",
                    self.bin.display()
                )));
            }
            Err(deadline::Error::TimedOut(u)) => {
                return Err(Failure::Transient(format!(
                    "`git {what}` to remote `{}` took longer than {} and was stopped{}",
                    self.remote,
                    time::human(self.timeout),
                    said(&u.stderr)
                )));
            }
            // No retry can help while buildlock is being stopped.
            Err(deadline::Error::Interrupted(signal, u)) => {
                return Err(Failure::Permanent(format!(
                    "`git {what}` to remote `{}` was stopped: buildlock received signal {signal}{}",
                    self.remote,
                    said(&u.stderr)
                )));
            }
        };
        Ok(Ran {
            ok: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn failure(&self, what: &str, ran: &Ran) -> Failure {
        let said = ran
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let message = format!(
            "`git {what}` on remote `{}` failed (exit {}): {}",
            self.remote,
            ran.code
                .map_or_else(|| "signal".to_owned(), |c| c.to_string()),
            if said.is_empty() { "no message" } else { &said }
        );
        classify(&ran.stderr, message)
    }

    /// `(oid, ref)` of every ref on the remote under each of `patterns` (`refs/buildlock/…/*`).
    pub fn ls_remote(&self, patterns: &[String]) -> Result<Vec<(String, String)>, Failure> {
        let mut args = vec!["ls-remote".to_owned(), self.remote.clone()];
        args.extend(patterns.iter().cloned());
        let ran = self.run(&args)?;
        // ls-remote exits 2 only with --exit-code; 0 with no match.
        if !ran.ok {
            return Err(self.failure("ls-remote", &ran));
        }
        Ok(ran
            .stdout
            .lines()
            .filter_map(|l| {
                let (oid, name) = l.split_once('\t')?;
                Some((oid.trim().to_owned(), name.trim().to_owned()))
            })
            .collect())
    }

    /// Fetches these objects (and what they reach) into the local object store. Writes no ref,
    /// not even `FETCH_HEAD`.
    pub fn fetch_objects(&self, oids: &[String]) -> Result<(), Failure> {
        if oids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<String> = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--no-auto-maintenance",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(self.remote.clone());
        args.extend(oids.iter().cloned());
        let ran = self.run(&args)?;
        if !ran.ok {
            return Err(self.failure("fetch", &ran));
        }
        Ok(())
    }

    /// One atomic push of `updates`, every one with an explicit expected old value: all land or
    /// none does. `Pushed::Stale` when a lease did not hold.
    pub fn push(&self, updates: &[Update]) -> Result<Pushed, Failure> {
        let mut args: Vec<String> = ["push", "--porcelain", "--atomic", "--no-verify"]
            .map(str::to_owned)
            .to_vec();
        for u in updates {
            args.push(format!(
                "--force-with-lease={}:{}",
                u.name,
                u.expect.as_deref().unwrap_or("")
            ));
        }
        args.push(self.remote.clone());
        for u in updates {
            args.push(format!("{}:{}", u.new.as_deref().unwrap_or(""), u.name));
        }
        let ran = self.run(&args)?;
        let report = parse_porcelain(&ran.stdout);
        let mine = |u: &Update| report.iter().find(|r| r.name == u.name);
        if ran.ok && updates.iter().all(|u| mine(u).is_some_and(|r| r.ok)) {
            return Ok(Pushed::Landed);
        }
        // A lost race shows as "stale info" on the ref whose lease failed when the client saw it
        // in the ref advertisement (the other refs of the atomic push say "atomic push
        // failed"), or, when another push landed between the advertisement and our update, as
        // the server's own compare-and-swap refusing the old value.
        if report
            .iter()
            .any(|r| !r.ok && r.reason.contains("stale info"))
            || lost_on_server(&ran.stderr)
        {
            return Ok(Pushed::Stale);
        }
        if let Some(r) = report
            .iter()
            .find(|r| !r.ok && !r.reason.contains("atomic push failed"))
        {
            let why = if r.reason.is_empty() {
                r.summary.clone()
            } else {
                r.reason.clone()
            };
            let stderr = ran.stderr.trim().replace('\n', "; ");
            let message = format!(
                "the remote `{}` refused the update of {}: {why}{}",
                self.remote,
                r.name,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(" (git said: {stderr})")
                }
            );
            // A server that declines (a hook, a protection rule, a deletion ban) declines again.
            return Err(if r.summary.contains("remote rejected") {
                Failure::Permanent(message)
            } else {
                classify(&ran.stderr, message)
            });
        }
        Err(self.failure("push", &ran))
    }

    /// The URL of the remote, or why there is none.
    pub fn url(&self) -> Result<String, Failure> {
        let ran = self.run(&[
            "remote".to_owned(),
            "get-url".to_owned(),
            self.remote.clone(),
        ])?;
        if ran.ok {
            Ok(ran.stdout.trim().to_owned())
        } else {
            Err(Failure::Permanent(format!(
                "there is no git remote named `{}` in this repository (`git remote -v` lists them)",
                self.remote
            )))
        }
    }
}

/// What git said on stderr before it was stopped, as a suffix of a message (empty: nothing).
fn said(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(" (git said: {})", lines.join("; "))
    }
}

/// The server refused an update because the ref was not what the push expected any more, or
/// another push held it at that moment: a lost race, not an error.
fn lost_on_server(stderr: &str) -> bool {
    [
        "reference already exists",
        "but expected",
        "is missing but expected",
        ".lock': file exists",
        "incorrect old value provided",
        // A leased deletion of a ref that another push deleted after the advertisement.
        "unable to resolve reference",
    ]
    .iter()
    .any(|m| stderr.to_ascii_lowercase().contains(m))
}

/// One line of `git push --porcelain`: `<flag>\t<from>:<to>\t<summary> (<reason>)`.
#[derive(Debug, PartialEq, Eq)]
struct RefReport {
    name: String,
    ok: bool,
    summary: String,
    reason: String,
}

fn parse_porcelain(stdout: &str) -> Vec<RefReport> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let flag = parts.next()?;
            let refs = parts.next()?;
            let summary = parts.next().unwrap_or("").trim().to_owned();
            let name = refs.rsplit_once(':')?.1.to_owned();
            let flag = flag.chars().next()?;
            let reason = summary
                .rfind('(')
                .map(|i| summary[i + 1..].trim_end_matches(')').to_owned())
                .unwrap_or_default();
            // ' ' fast-forward, '+' forced, '-' deleted, '*' new, '=' up to date, '!' rejected.
            Some(RefReport {
                name,
                ok: flag != '!',
                summary,
                reason,
            })
        })
        .collect()
}

/// Failures that no retry can fix; everything else (connection refused or reset, timeouts, a
/// server that hung up, HTTP 5xx) is worth another try.
fn classify(stderr: &str, message: String) -> Failure {
    let s = stderr.to_ascii_lowercase();
    let permanent = [
        "does not appear to be a git repository",
        "repository not found",
        "not found",
        "authentication failed",
        "permission denied",
        "permission to",
        "access denied",
        "403",
        "401",
        "could not read username",
        "terminal prompts disabled",
        "host key verification failed",
        "no such remote",
        "invalid refspec",
        "protected ref",
        "deletion prohibited",
        "hook declined",
        "service not enabled",
    ];
    // A connection that did not happen says nothing about the repository behind it.
    let transient = [
        "connection refused",
        "connection reset",
        "connection timed out",
        "could not resolve host",
        "temporary failure",
        "timed out",
        "the remote end hung up unexpectedly",
        "early eof",
        "rpc failed",
        "unable to connect",
        "broken pipe",
        "502",
        "503",
        "504",
    ];
    if transient.iter().any(|t| s.contains(t)) && !s.contains("does not appear") {
        Failure::Transient(message)
    } else if permanent.iter().any(|p| s.contains(p)) {
        Failure::Permanent(message)
    } else {
        Failure::Transient(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_porcelain_reports() {
        let out = "To file:///srv.git\n!\t(delete):refs/buildlock/state/k/1\t[rejected] (stale info)\n\
                   !\tfc43:refs/buildlock/state/k/5\t[rejected] (atomic push failed)\nDone\n";
        let r = parse_porcelain(out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "refs/buildlock/state/k/1");
        assert!(!r[0].ok);
        assert_eq!(r[0].reason, "stale info");
        let ok = parse_porcelain("To x\n*\tab:refs/buildlock/state/k/1\t[new reference]\nDone\n");
        assert!(ok[0].ok);
        assert_eq!(ok[0].reason, "");
    }

    #[test]
    fn a_race_lost_on_the_server_is_stale() {
        assert!(lost_on_server(
            "remote: error: cannot lock ref 'refs/buildlock/state/k/1': reference already exists"
        ));
        assert!(lost_on_server(
            "remote: error: cannot lock ref 'refs/buildlock/state/k/1': is at 1a but expected 2b"
        ));
        assert!(lost_on_server(
            "remote: error: cannot lock ref 'refs/buildlock/wait/k/_/1/a': unable to resolve \
             reference 'refs/buildlock/wait/k/_/1/a'"
        ));
        assert!(!lost_on_server(
            "remote: error: hook declined to update refs/buildlock/x"
        ));
    }

    #[test]
    fn classifies_failures() {
        let t = classify(
            "fatal: unable to connect to 127.0.0.1:\nerrno=Connection refused",
            "m".into(),
        );
        assert!(matches!(t, Failure::Transient(_)));
        let p = classify(
            "fatal: 'nosuch' does not appear to be a git repository\nfatal: Could not read from remote repository.",
            "m".into(),
        );
        assert!(matches!(p, Failure::Permanent(_)));
        let p = classify(
            "remote: Permission to o/r.git denied to bot.\nfatal: unable to access 'https://x/': The requested URL returned error: 403",
            "m".into(),
        );
        // "unable to access" with a 403 is a missing permission, not a network fault.
        assert!(matches!(p, Failure::Permanent(_)), "{p:?}");
    }
}
