//! Configuration and its layers.
//!
//! Later wins: built-in defaults < the user file `config.toml` in the platform config dir for
//! `buildlock` < `.buildlock.toml` at the work tree root < the file named by `BUILDLOCK_CONFIG`
//! ([`layer_files`]). A missing file is no error (except the one `BUILDLOCK_CONFIG` names); an
//! unknown key, a wrong type, a bad duration or an out-of-range value is a [`ConfigError`] naming
//! file, line and key. The rules read no file: the flows layer reads each one and hands its text
//! to [`Config::layer`].

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

use crate::time::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One build state per repository.
    Repo,
    /// One per current branch.
    Branch,
    /// One per HEAD commit (CI matrices).
    Commit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    /// Every failure while a fixer works waits for it.
    Any,
    /// One fixer per distinct failure signature: the default since signatures were measured
    /// stable (one signature for one breakage in 16 worktrees at once on pytest, cargo test,
    /// node's test runner and make: `bench/signatures.py`, figures in the README).
    Signature,
}

/// Where the coordination state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Lock and state in the git common dir (one machine, all of its worktrees).
    Local,
    /// Refs on a git remote (agents on several machines).
    Remote,
}

/// `ci.deliver`: where `buildlock ci`'s fixer delivers its fix commit, besides
/// `refs/buildlock/fix/…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// A normal branch `buildlock/fix/<12 hex of the tested commit>`, created only if it does not
    /// exist yet (never moved by two fixers), for a pull or merge request.
    Branch,
    /// Fast-forward the tested branch to the fix when it still points at the tested commit
    /// (compare-and-swap); else as [`Deliver::Branch`].
    Push,
    /// Nowhere else.
    None,
}

/// Where a setting was written, so that a problem found only when it is used (a remote name
/// that does not exist) can still name the file, the line and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
}

impl Origin {
    /// A configuration error about the setting written here.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            key: Some(self.key.clone()),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Run with `sh -c` at the work tree root; exit 0 = healthy.
    pub check: Option<String>,
    pub check_timeout: Duration,
    pub scope: Scope,
    pub matching: Match,
    /// How long a waiter waits for the fix before retrying anyway.
    pub wait: Duration,
    pub stale_after: Duration,
    pub max_fix_attempts: u32,
    /// The longest one fixer holds a key, alive or not: past it, the next failing agent takes
    /// over (the old fixer is fenced and its fix stopped).
    pub max_fix_time: Duration,
    pub backend: Backend,
    /// `backend = "remote"`: the name of the git remote that holds the state.
    pub remote: String,
    /// Where `coordination.remote` was set (None: the default).
    pub remote_origin: Option<Origin>,
    /// `backend = "remote"`: how often a waiter looks at the remote.
    pub remote_poll: Duration,
    /// Whether a plain `git commit` waits while another agent fixes.
    pub hook_wait: bool,
    pub fix_command: Option<String>,
    pub fix_cost: f64,
    /// A `fix.command` run still running then is stopped (its process tree) and counts as a
    /// failed attempt.
    pub fix_timeout: Duration,
    pub retry_attempts: u32,
    pub retry_refresh: Option<String>,
    /// At most this many checks run at once in the domain (0: no limit).
    pub check_slots: u32,
    /// A claim lapses this long after its agent's last sign of life.
    pub claims_ttl: Duration,
    /// The hook refuses a commit that changes a path another live agent claimed exclusively.
    pub claims_guard: bool,
    // `[ci]`: `buildlock ci`'s verdict and the fix's way home.
    /// `ci.deliver`: where the fixer's fix commit goes.
    pub ci_deliver: Deliver,
    /// `ci.pass_on_fix`: a job whose tested commit failed and that passed only on the fix exits
    /// 0 instead of 3.
    pub ci_pass_on_fix: bool,
    /// The files that were read, in order.
    pub sources: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            check: None,
            check_timeout: Duration::from_secs(30 * 60),
            scope: Scope::Repo,
            matching: Match::Signature,
            wait: Duration::from_secs(5 * 60),
            stale_after: Duration::from_secs(15 * 60),
            max_fix_attempts: 3,
            max_fix_time: Duration::from_secs(60 * 60),
            backend: Backend::Local,
            remote: "origin".to_owned(),
            remote_origin: None,
            remote_poll: Duration::from_secs(2),
            hook_wait: true,
            fix_command: None,
            fix_cost: 0.0,
            fix_timeout: Duration::from_secs(20 * 60),
            retry_attempts: 3,
            retry_refresh: None,
            check_slots: 0,
            claims_ttl: Duration::from_secs(10 * 60),
            claims_guard: true,
            ci_deliver: Deliver::Branch,
            ci_pass_on_fix: false,
            sources: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error in {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The most check slots one domain may have (more is a typo, not a machine).
pub const MAX_CHECK_SLOTS: u32 = 1024;

/// Name of the per-repository file at the work tree root.
pub const REPO_FILE: &str = ".buildlock.toml";

/// The files whose layers make the configuration of the work tree at `worktree`, lowest first,
/// each with whether it must exist: the user file (`user_file`, where the platform has a config
/// dir), [`REPO_FILE`] at the root, and the file `BUILDLOCK_CONFIG` names (`explicit`, relative
/// to the root), which must. The caller reads them (the rules read no file) and hands each text to
/// [`Config::layer`]; a missing file that need not exist is skipped.
pub fn layer_files(
    worktree: &Path,
    user_file: Option<PathBuf>,
    explicit: Option<PathBuf>,
) -> Vec<(PathBuf, bool)> {
    let mut files: Vec<(PathBuf, bool)> = user_file.map(|user| (user, false)).into_iter().collect();
    files.push((worktree.join(REPO_FILE), false));
    if let Some(explicit) = explicit {
        let explicit = if explicit.is_relative() {
            worktree.join(explicit)
        } else {
            explicit
        };
        files.push((explicit, true));
    }
    files
}

impl ConfigError {
    /// A layer file that could not be read (`reason`: what the OS said).
    pub fn unreadable(file: &Path, reason: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read it: {reason}"),
        }
    }
}

impl Config {
    /// Applies one file's text on top of this configuration (the caller records the file in
    /// [`Config::sources`]).
    pub fn layer(&mut self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, key) = match span {
                Some(span) => locate(text, span.start),
                None => (None, None),
            };
            ConfigError {
                file: file.to_owned(),
                line,
                key,
                message,
            }
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_owned()))?;

        let duration =
            |v: &Spanned<String>| parse_duration(v.get_ref()).map_err(|m| err(Some(v.span()), m));
        let at_least_one = |v: &Spanned<u32>, what: &str| {
            if *v.get_ref() >= 1 {
                Ok(*v.get_ref())
            } else {
                Err(err(Some(v.span()), format!("{what} must be at least 1")))
            }
        };
        if let Some(v) = raw.check {
            self.check = Some(v).filter(|c| !c.trim().is_empty());
        }
        if let Some(v) = &raw.check_timeout {
            self.check_timeout = positive(duration(v)?, v, &err)?;
        }
        if let Some(v) = &raw.check_slots {
            if *v.get_ref() > MAX_CHECK_SLOTS {
                return Err(err(
                    Some(v.span()),
                    format!(
                        "check_slots must be from 0 (no limit) to {MAX_CHECK_SLOTS}, not {}",
                        v.get_ref()
                    ),
                ));
            }
            self.check_slots = *v.get_ref();
        }
        if let Some(c) = raw.claims {
            if let Some(v) = &c.ttl {
                self.claims_ttl = positive(duration(v)?, v, &err)?;
            }
            if let Some(v) = c.guard {
                self.claims_guard = v;
            }
        }
        if let Some(c) = raw.coordination {
            if let Some(v) = c.scope {
                self.scope = v;
            }
            if let Some(v) = c.matching {
                self.matching = v;
            }
            if let Some(v) = &c.wait {
                self.wait = duration(v)?;
            }
            if let Some(v) = &c.stale_after {
                self.stale_after = positive(duration(v)?, v, &err)?;
            }
            if let Some(v) = &c.max_fix_attempts {
                self.max_fix_attempts = at_least_one(v, "max_fix_attempts")?;
            }
            if let Some(v) = &c.max_fix_time {
                self.max_fix_time = positive(duration(v)?, v, &err)?;
            }
            if let Some(v) = c.backend {
                self.backend = v;
            }
            if let Some(v) = &c.remote {
                let name = v.get_ref().trim();
                // What git itself refuses as a remote name, refused here with the line.
                let valid = !name.is_empty()
                    && !name.starts_with('-')
                    && !name.chars().any(|ch| ch.is_whitespace() || ch.is_control());
                if !valid {
                    return Err(err(
                        Some(v.span()),
                        format!(
                            "{:?} is not a git remote name: write the name `git remote -v` shows, e.g. \"origin\"",
                            v.get_ref()
                        ),
                    ));
                }
                self.remote = name.to_owned();
                let (line, _) = locate(text, v.span().start);
                self.remote_origin = Some(Origin {
                    file: file.to_owned(),
                    line,
                    key: "coordination.remote".to_owned(),
                });
            }
            if let Some(v) = &c.remote_poll {
                self.remote_poll = positive(duration(v)?, v, &err)?;
            }
        }
        if let Some(h) = raw.hook {
            if let Some(v) = h.wait {
                self.hook_wait = v;
            }
        }
        if let Some(f) = raw.fix {
            if let Some(v) = f.command {
                self.fix_command = Some(v).filter(|c| !c.trim().is_empty());
            }
            if let Some(v) = f.cost {
                if !(v.get_ref().is_finite() && *v.get_ref() >= 0.0) {
                    return Err(err(
                        Some(v.span()),
                        "cost must be a number of at least 0".into(),
                    ));
                }
                self.fix_cost = *v.get_ref();
            }
            if let Some(v) = &f.timeout {
                self.fix_timeout = positive(duration(v)?, v, &err)?;
            }
        }
        if let Some(c) = raw.ci {
            if let Some(v) = c.deliver {
                self.ci_deliver = v;
            }
            if let Some(v) = c.pass_on_fix {
                self.ci_pass_on_fix = v;
            }
        }
        if let Some(r) = raw.retry {
            if let Some(v) = &r.attempts {
                self.retry_attempts = at_least_one(v, "attempts")?;
            }
            if let Some(v) = r.refresh {
                self.retry_refresh = Some(v).filter(|c| !c.trim().is_empty());
            }
        }
        Ok(())
    }
}

fn positive(
    d: Duration,
    v: &Spanned<String>,
    err: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(err(Some(v.span()), "must be longer than zero".into()))
    } else {
        Ok(d)
    }
}

/// The 1-based line of byte `offset`, and the dotted key written on that line, if any.
fn locate(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table = String::new();
    for line in text.lines().take(line_no) {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty());
    let key = match key {
        Some(k) if !table.is_empty() => Some(format!("{table}.{k}")),
        Some(k) => Some(k),
        None => {
            let t = line.trim();
            (t.starts_with('[') && t.ends_with(']'))
                .then(|| t.trim_matches(|c| c == '[' || c == ']').to_owned())
        }
    };
    (Some(line_no), key)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    check: Option<String>,
    check_timeout: Option<Spanned<String>>,
    check_slots: Option<Spanned<u32>>,
    coordination: Option<RawCoordination>,
    claims: Option<RawClaims>,
    hook: Option<RawHook>,
    fix: Option<RawFix>,
    retry: Option<RawRetry>,
    ci: Option<RawCi>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordination {
    scope: Option<Scope>,
    #[serde(rename = "match")]
    matching: Option<Match>,
    wait: Option<Spanned<String>>,
    stale_after: Option<Spanned<String>>,
    max_fix_attempts: Option<Spanned<u32>>,
    max_fix_time: Option<Spanned<String>>,
    backend: Option<Backend>,
    remote: Option<Spanned<String>>,
    remote_poll: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    ttl: Option<Spanned<String>>,
    guard: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    wait: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFix {
    command: Option<String>,
    cost: Option<Spanned<f64>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<Spanned<u32>>,
    refresh: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCi {
    deliver: Option<Deliver>,
    pass_on_fix: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.layer(text, Path::new("/r/.buildlock.toml")).map(|()| c)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.check, None);
        assert_eq!(c.check_timeout, Duration::from_secs(1800));
        assert_eq!((c.scope, c.matching), (Scope::Repo, Match::Signature));
        assert_eq!(
            (c.wait, c.stale_after),
            (Duration::from_secs(300), Duration::from_secs(900))
        );
        assert_eq!((c.max_fix_attempts, c.retry_attempts), (3, 3));
        assert!(c.hook_wait);
        assert_eq!(
            (c.backend, c.remote.as_str(), c.remote_poll),
            (Backend::Local, "origin", Duration::from_secs(2))
        );
        assert_eq!(
            (c.fix_command, c.fix_cost, c.retry_refresh),
            (None, 0.0, None)
        );
    }

    #[test]
    fn reads_every_key() {
        let c = parse(
            r#"
check = "cargo test --quiet"
check_timeout = "10m"
[coordination]
scope = "commit"
match = "signature"
wait = "90s"
stale_after = "1h"
max_fix_attempts = 5
backend = "remote"
remote = "upstream"
remote_poll = "500ms"
[hook]
wait = false
[fix]
command = "./fix.sh"
cost = 0.5
[retry]
attempts = 7
refresh = "git rebase main"
"#,
        )
        .unwrap();
        assert_eq!(c.check.as_deref(), Some("cargo test --quiet"));
        assert_eq!(c.check_timeout, Duration::from_secs(600));
        assert_eq!((c.scope, c.matching), (Scope::Commit, Match::Signature));
        assert_eq!(
            (c.wait, c.stale_after),
            (Duration::from_secs(90), Duration::from_secs(3600))
        );
        assert_eq!((c.max_fix_attempts, c.hook_wait), (5, false));
        assert_eq!(
            (c.backend, c.remote.as_str(), c.remote_poll),
            (Backend::Remote, "upstream", Duration::from_millis(500))
        );
        let origin = c.remote_origin.unwrap();
        assert_eq!(
            (origin.line, origin.key.as_str()),
            (Some(11), "coordination.remote")
        );
        assert_eq!(
            (c.fix_command.as_deref(), c.fix_cost),
            (Some("./fix.sh"), 0.5)
        );
        assert_eq!(
            (c.retry_attempts, c.retry_refresh.as_deref()),
            (7, Some("git rebase main"))
        );
    }

    #[test]
    fn the_layer_files_in_order() {
        let wt = Path::new("/r");
        let files = layer_files(wt, Some("/u/config.toml".into()), Some("ci.toml".into()));
        assert_eq!(
            files,
            [
                (PathBuf::from("/u/config.toml"), false),
                (PathBuf::from("/r/.buildlock.toml"), false),
                (PathBuf::from("/r/ci.toml"), true),
            ]
        );
        let files = layer_files(wt, None, Some("/etc/b.toml".into()));
        assert_eq!(
            files,
            [
                (PathBuf::from("/r/.buildlock.toml"), false),
                (PathBuf::from("/etc/b.toml"), true),
            ]
        );
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let mut c = Config::default();
        c.layer(
            "check = \"a\"\n[coordination]\nwait = \"1m\"\n",
            Path::new("/u"),
        )
        .unwrap();
        c.layer("[coordination]\nwait = \"2m\"\n", Path::new("/r"))
            .unwrap();
        assert_eq!(
            (c.check.as_deref(), c.wait),
            (Some("a"), Duration::from_secs(120))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("check = \"x\"\n[coordination]\nwiat = \"5m\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("coordination.wiat"))
        );
        assert!(e.message.contains("unknown field"), "{e}");
        assert!(
            e.to_string()
                .starts_with("configuration error in /r/.buildlock.toml line 3"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[retry]\nattempts = \"three\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("retry.attempts"))
        );
        let e = parse("[hook]\nwait = 1\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("hook.wait"));
        let e = parse("[coordination]\nscope = \"galaxy\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("coordination.scope"));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = parse("\n[coordination]\nwait = \"5 minutes\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("coordination.wait"))
        );
        assert!(e.message.contains("bad duration"), "{e}");
        let e = parse("check_timeout = \"0s\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("check_timeout"));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(parse("[coordination]\nmax_fix_attempts = 0\n").is_err());
        assert!(parse("[retry]\nattempts = 0\n").is_err());
        assert!(parse("[fix]\ncost = -1.0\n").is_err());
        assert!(parse("[coordination]\nstale_after = \"0ms\"\n").is_err());
    }

    #[test]
    fn remote_keys_are_checked_with_file_line_and_key() {
        let e = parse("[coordination]\nbackend = \"cloud\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("coordination.backend"))
        );
        let e = parse("[coordination]\nremote = \"has space\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("coordination.remote"))
        );
        assert!(e.message.contains("not a git remote name"), "{e}");
        let e = parse("[coordination]\n\nremote_poll = \"often\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("coordination.remote_poll"))
        );
        assert!(parse("[coordination]\nremote_poll = \"0s\"\n").is_err());
    }

    #[test]
    fn the_ci_example_is_valid() {
        let c = parse(include_str!("../../../docs/ci/buildlock-ci.toml")).unwrap();
        assert_eq!((c.backend, c.scope), (Backend::Remote, Scope::Commit));
        assert!(c.retry_refresh.unwrap().contains("BUILDLOCK_FIX_REF"));
        assert_eq!(c.matching, Match::Any, "one commit, one analysis");
        assert_eq!((c.ci_deliver, c.ci_pass_on_fix), (Deliver::Branch, false));
    }

    #[test]
    fn claims_and_slots_keys() {
        let c = Config::default();
        assert_eq!(
            (c.check_slots, c.claims_ttl, c.claims_guard),
            (0, Duration::from_secs(600), true)
        );
        let c = parse("check_slots = 2\n[claims]\nttl = \"90s\"\nguard = false\n").unwrap();
        assert_eq!(
            (c.check_slots, c.claims_ttl, c.claims_guard),
            (2, Duration::from_secs(90), false)
        );
        let e = parse("check_slots = -1\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("check_slots")));
        let e = parse("check_slots = 5000\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("check_slots"));
        assert!(e.message.contains("from 0"), "{e}");
        let e = parse("\n[claims]\nttl = \"ten minutes\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("claims.ttl")));
        let e = parse("[claims]\nttl = \"0s\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("claims.ttl"));
        let e = parse("[claims]\nguard = \"yes\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("claims.guard"));
        let e = parse("[claims]\nttl_ = \"1m\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("claims.ttl_"));
    }

    #[test]
    fn fix_time_limits() {
        let c = Config::default();
        assert_eq!(
            (c.max_fix_time, c.fix_timeout),
            (Duration::from_secs(3600), Duration::from_secs(1200)),
            "the contract's defaults: 1h and 20m"
        );
        let c =
            parse("[coordination]\nmax_fix_time = \"90m\"\n[fix]\ntimeout = \"45s\"\n").unwrap();
        assert_eq!(
            (c.max_fix_time, c.fix_timeout),
            (Duration::from_secs(5400), Duration::from_secs(45))
        );
        // fix.timeout is the fix's own bound: check_timeout no longer is.
        assert_eq!(c.check_timeout, Duration::from_secs(1800));
        let e = parse("[coordination]\n\nmax_fix_time = \"an hour\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("coordination.max_fix_time"))
        );
        assert!(e.message.contains("bad duration"), "{e}");
        assert!(
            e.to_string()
                .starts_with("configuration error in /r/.buildlock.toml line 3"),
            "{e}"
        );
        let e = parse("[fix]\ncommand = \"./fix.sh\"\ntimeout = \"20 min\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("fix.timeout")));
        assert!(e.message.contains("bad duration"), "{e}");
        for zero in [
            "[coordination]\nmax_fix_time = \"0s\"\n",
            "[fix]\ntimeout = \"0ms\"\n",
        ] {
            let e = parse(zero).unwrap_err();
            assert!(e.message.contains("longer than zero"), "{e}");
        }
        let e = parse("[fix]\ntimeout = 20\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("fix.timeout"));
        // The names are exact: the old spellings one might guess are unknown keys.
        let e = parse("[coordination]\nfix_timeout = \"20m\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("coordination.fix_timeout"));
        let e = parse("[fix]\nmax_fix_time = \"1h\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("fix.max_fix_time"));
    }

    #[test]
    fn ci_keys() {
        let c = Config::default();
        assert_eq!((c.ci_deliver, c.ci_pass_on_fix), (Deliver::Branch, false));
        let c = parse("[ci]\ndeliver = \"push\"\npass_on_fix = true\n").unwrap();
        assert_eq!((c.ci_deliver, c.ci_pass_on_fix), (Deliver::Push, true));
        let c = parse("[ci]\ndeliver = \"none\"\n").unwrap();
        assert_eq!(c.ci_deliver, Deliver::None);
        let e = parse("\n[ci]\ndeliver = \"pr\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("ci.deliver")));
        let e = parse("[ci]\npass_on_fix = \"yes\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("ci.pass_on_fix"))
        );
        let e = parse("[ci]\ndelivr = \"branch\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("ci.delivr")));
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let e = parse("check = \"x\"\n[coordination\n").unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn empty_strings_mean_unset() {
        let c = parse("check = \"\"\n[fix]\ncommand = \"  \"\n").unwrap();
        assert_eq!((c.check, c.fix_command), (None, None));
    }
}
