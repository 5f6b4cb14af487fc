//! The one module that reads environment variables.
//!
//! Public ones are in the contract: `BUILDLOCK` (`0` turns coordination off), `BUILDLOCK_AGENT`,
//! `BUILD_FLAVOR`, `BUILDLOCK_CONFIG`, `BUILDLOCK_PRIORITY`. (`NO_COLOR`, `CLICOLOR`, `CLICOLOR_FORCE` and `TERM` are read
//! by anstyle-query, for `say.rs`, by the conventions clap follows too.) The others are between buildlock's own programs
//! or for tests:
//! - `BUILDLOCK_DECISION`: set by commit-retry for the hook it runs through `git commit`; the hook
//!   writes its decision there and leaves the waiting to commit-retry;
//! - `BUILDLOCK_RETRY_FIRST`: what commit-retry's first commit left, for its second half;
//! - `BUILDLOCK_POLL`: the longest a waiter sleeps between two looks (a duration; by default waiters wake on changes and sleep until something is due);
//! - `BUILDLOCK_FAULT`: `point[:action]`, a fault to inject at a named point (see `fault.rs`);
//! - `BUILDLOCK_REMOTE_COMPACT_AFTER` (a count) and `BUILDLOCK_REMOTE_PRUNE_AFTER` (a duration):
//!   the remote backend's chain length before compaction and the age of passing keys it deletes;
//! - `BUILDLOCK_REMOTE_TIMEOUT` (a duration): the bound on one remote git run (default 60 s);
//! - `BUILDLOCK_TEST_CLOCK_OFFSET`: a signed duration (`"+10m"`, `"-10m"`) added to this process's
//!   wall clock, for the clock-skew tests of the remote backend.

// The one module allowed to call `std::env::var` and its kin (clippy.toml bans them elsewhere).
#![allow(clippy::disallowed_methods)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use buildlock_protocol::time::parse_duration;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn var_os(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `BUILDLOCK_TEST_HELPER`: the role the core's unit-test binary plays when a test starts it
/// again as a helper process (see `os::testing`).
#[cfg(test)]
pub fn test_helper_role() -> Option<String> {
    var("BUILDLOCK_TEST_HELPER")
}

/// `BUILDLOCK=0` (or `false`, `off`, `no`, in any case: `FALSE`, `Off`): the check runs but
/// nothing is coordinated.
/// The arguments after the program name, for a `#![no_main]` binary (the hook and commit-retry),
/// from the `argc`/`argv` its C `main` received. std's own `args_os()` is filled by glibc, which
/// hands `argc`/`argv` to the start-up functions it runs before `main`; musl does not, and there
/// std would see no arguments at all (commit-retry then ran a bare `git commit`).
///
/// # Safety
/// `argv` must point to `argc` valid C strings, as the C runtime passes them to `main`.
#[cfg(unix)]
pub unsafe fn args_of_main(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    let count = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    (1..count)
        .filter_map(|i| {
            // SAFETY: i < argc, and the caller passes main's argv.
            let arg = unsafe { *argv.add(i) };
            // SAFETY: a non-null argv entry is a NUL-terminated string.
            (!arg.is_null()).then(|| {
                let bytes = unsafe { std::ffi::CStr::from_ptr(arg) }.to_bytes();
                std::ffi::OsStr::from_bytes(bytes).to_owned()
            })
        })
        .collect()
}

/// Elsewhere (Windows) from std, which reads the command line from the OS, not from `main`.
///
/// # Safety
/// Nothing to uphold; `unsafe` only to match the Unix form.
#[cfg(not(unix))]
pub unsafe fn args_of_main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

pub fn coordination_enabled() -> bool {
    !var("BUILDLOCK").is_some_and(|v| is_off(&v))
}

fn is_off(value: &str) -> bool {
    let v = value.trim();
    ["0", "false", "off", "no"]
        .iter()
        .any(|off| v.eq_ignore_ascii_case(off))
}

/// The longest agent id, in characters (the contract's).
pub const MAX_AGENT_ID: usize = 128;

/// Why the agent id cannot be used: `var` is the variable that gave it, `message` says what is
/// wrong with it and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadAgentId {
    pub var: &'static str,
    pub message: String,
}

/// The agent's id: `BUILDLOCK_AGENT`, else `BUILD_FLAVOR`, else `<hostname>:<work tree path>`.
///
/// An id is shown to other agents, so it is data, never text that could pass for buildlock's
/// own: a variable's id of more than [`MAX_AGENT_ID`] characters, or holding one that is not
/// printable (newline, escape: see `say::is_printable`), is refused, naming the variable. The
/// default id is never refused (nobody chose it): what is not printable in it is escaped, and a
/// longer one keeps the host and the end of the path (which tells worktrees apart).
pub fn agent_id(worktree: &Path) -> Result<String, BadAgentId> {
    for name in ["BUILDLOCK_AGENT", "BUILD_FLAVOR"] {
        let Some(value) = var_os(name) else { continue };
        let Some(id) = value.to_str() else {
            return Err(BadAgentId {
                var: name,
                message: format!(
                    "the agent id is not valid UTF-8 ({}); set {name} to at most {MAX_AGENT_ID} printable characters",
                    crate::os::say::inert(&value.to_string_lossy())
                ),
            });
        };
        return check_agent_id(id)
            .map(str::to_owned)
            .map_err(|why| BadAgentId {
                var: name,
                message: format!(
                    "{why}; set {name} to at most {MAX_AGENT_ID} printable characters"
                ),
            });
    }
    Ok(default_agent_id(
        &crate::os::process::hostname(),
        &worktree.display().to_string(),
    ))
}

/// What is wrong with `id` as an agent id, if anything.
fn check_agent_id(id: &str) -> Result<&str, String> {
    let shown = crate::os::say::inert(id);
    if let Some(c) = id.chars().find(|c| !crate::os::say::is_printable(*c)) {
        return Err(format!(
            "the agent id `{shown}` holds a character that is not printable (U+{:04X}): an id must not \
             pass for text of buildlock's own",
            c as u32
        ));
    }
    let n = id.chars().count();
    if n > MAX_AGENT_ID {
        return Err(format!(
            "the agent id is {n} characters long (at most {MAX_AGENT_ID})"
        ));
    }
    Ok(id)
}

/// `<host>:<path>`, made printable, and at most [`MAX_AGENT_ID`] characters: a longer one keeps
/// the start of the host and the end of the path.
fn default_agent_id(host: &str, path: &str) -> String {
    let (host, path) = (crate::os::say::inert(host), crate::os::say::inert(path));
    let id = format!("{host}:{path}");
    if id.chars().count() <= MAX_AGENT_ID {
        return id;
    }
    let host: String = host.chars().take(48).collect();
    let room = MAX_AGENT_ID - host.chars().count() - ":…".chars().count();
    let skip = path.chars().count().saturating_sub(room);
    let tail: String = path.chars().skip(skip).collect();
    format!("{host}:…{tail}")
}

/// The user configuration file: `config.toml` in the platform config dir for `buildlock`
/// (`$XDG_CONFIG_HOME/buildlock/`, else `~/.config/buildlock/`, on Linux).
pub fn user_config_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "buildlock").map(|d| d.config_dir().join("config.toml"))
}

/// The file `BUILDLOCK_CONFIG` names, as written.
pub fn config_file() -> Option<PathBuf> {
    var_os("BUILDLOCK_CONFIG").map(PathBuf::from)
}

pub fn home_dir() -> Option<PathBuf> {
    var_os("HOME").map(PathBuf::from)
}

pub const DECISION_VAR: &str = "BUILDLOCK_DECISION";

/// Set by commit-retry for its hook: `generation:heartbeat`, a fixer lease it watched stay silent
/// for a whole `stale_after` on its own monotonic clock.
pub const SEEN_SILENT_VAR: &str = "BUILDLOCK_SEEN_SILENT";

pub fn seen_silent() -> Option<(u64, u64)> {
    let v = var(SEEN_SILENT_VAR)?;
    let (g, h) = v.split_once(':')?;
    Some((g.parse().ok()?, h.parse().ok()?))
}

/// Set by commit-retry (and `buildlock ci`) for the checks it runs: its own pid, the process that
/// holds a fixer role on the agent's behalf.
pub const HOLDER_VAR: &str = "BUILDLOCK_HOLDER";

pub fn holder() -> Option<u32> {
    var(HOLDER_VAR)?.parse().ok()
}

/// Set by commit-retry while it holds a fixer role: `<generation>`, so that the hook's passing
/// check marks only that generation fixed (fencing).
pub const FIXER_GENERATION_VAR: &str = "BUILDLOCK_FIXER_GENERATION";

pub fn fixer_generation() -> Option<u64> {
    var(FIXER_GENERATION_VAR)?.parse().ok()
}

/// The secret a fix run carries in its environment, so that only that run can be identified as
/// the fix to stop (see `os::process::stop_group`).
pub use buildlock_protocol::process::FIX_TOKEN_VAR;

pub fn decision_file() -> Option<PathBuf> {
    var_os(DECISION_VAR).map(PathBuf::from)
}

/// The longest a waiter sleeps between two looks at the state, when `BUILDLOCK_POLL` sets it.
pub fn poll_override() -> Option<Duration> {
    var("BUILDLOCK_POLL")
        .and_then(|v| parse_duration(&v).ok())
        .map(|d| d.max(Duration::from_millis(5)))
}

/// The longest a claims or check-slot waiter sleeps between two looks (`BUILDLOCK_POLL`,
/// default 1 s; they wake on changes too).
pub fn poll_interval() -> Duration {
    poll_override().unwrap_or(Duration::from_secs(1))
}

/// `BUILDLOCK_FIX_COMMIT`: the fix commit a waiter was told to take (`buildlock take-fix`).
pub fn fix_commit() -> Option<String> {
    var("BUILDLOCK_FIX_COMMIT")
}

/// `BUILDLOCK_FIX_REF`: a ref on the remote that holds the fix commit (remote backend).
pub fn fix_ref() -> Option<String> {
    var("BUILDLOCK_FIX_REF")
}

pub fn fault() -> Option<String> {
    var("BUILDLOCK_FAULT")
}

/// `$TMPDIR` when it is set to something other than `/tmp`, for failure normalisation.
pub fn temp_dir_prefix() -> &'static Option<String> {
    static TMP: OnceLock<Option<String>> = OnceLock::new();
    TMP.get_or_init(|| {
        var("TMPDIR")
            .map(|t| format!("{}/", t.trim_end_matches('/')))
            .filter(|t| t.len() > 1 && t != "/tmp/")
    })
}

/// `BUILDLOCK_PRIORITY` as written (unset or empty: `None`); `protocol::claims::parse_priority`
/// judges it.
pub fn priority() -> Option<String> {
    var("BUILDLOCK_PRIORITY")
}

/// `GIT_INDEX_FILE`: the index git is committing (set in the hook; see `os/changes.rs`).
pub fn index_file() -> Option<PathBuf> {
    var_os("GIT_INDEX_FILE").map(PathBuf::from)
}

pub fn git_dir_set() -> bool {
    var_os("GIT_DIR").is_some()
}

/// `GIT_DIR` as git set it (in a hook: only in linked worktrees), for finding the repository
/// without opening it (`os/repo.rs`).
pub fn git_dir() -> Option<PathBuf> {
    var_os("GIT_DIR").map(PathBuf::from)
}

/// Whether any variable that moves the work tree or the common dir away from where the git dir
/// says is set (`GIT_WORK_TREE`, `GIT_COMMON_DIR`): then git2 finds the repository.
pub fn git_layout_overridden() -> bool {
    var_os("GIT_WORK_TREE").is_some() || var_os("GIT_COMMON_DIR").is_some()
}

/// The remote backend's compaction length (tests and benchmarks).
pub fn remote_compact_after() -> Option<u64> {
    var("BUILDLOCK_REMOTE_COMPACT_AFTER").and_then(|v| v.parse().ok())
}

/// The age of passing keys the remote backend deletes (tests and benchmarks).
pub fn remote_prune_after() -> Option<Duration> {
    var("BUILDLOCK_REMOTE_PRUNE_AFTER").and_then(|v| parse_duration(&v).ok())
}

/// The bound on one remote git run, when `BUILDLOCK_REMOTE_TIMEOUT` sets it (tests).
pub fn remote_timeout() -> Option<Duration> {
    var("BUILDLOCK_REMOTE_TIMEOUT").and_then(|v| crate::os::time::parse_duration(&v).ok())
}

/// A skew added to this process's wall clock, in milliseconds (tests only): `+10m` or `-10m`.
pub fn clock_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let Some(v) = var("BUILDLOCK_TEST_CLOCK_OFFSET") else {
            return 0;
        };
        let (sign, rest) = match v.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, v.strip_prefix('+').unwrap_or(&v)),
        };
        parse_duration(rest).map_or(0, |d| sign * d.as_millis() as i64)
    })
}

/// Set by commit-retry's first half when it hands over to its second (`buildlock
/// __commit-retry`): what the first commit left, as JSON.
pub const RETRY_FIRST_VAR: &str = "BUILDLOCK_RETRY_FIRST";

/// Reads and forgets [`RETRY_FIRST_VAR`], so that the commands commit-retry runs do not see it.
/// Call while single-threaded (first thing in commit-retry's second half).
pub fn take_retry_first() -> Option<String> {
    let first = std::env::var(RETRY_FIRST_VAR).ok();
    // SAFETY: single-threaded here (see above); nothing reads the environment concurrently.
    unsafe { std::env::remove_var(RETRY_FIRST_VAR) };
    first
}

/// `PATH` as set (empty if unset), for messages about commands not found on it.
/// Every variable of our environment, for a child's environment built by hand (`os::spawn`).
pub fn all() -> std::env::VarsOs {
    std::env::vars_os()
}

pub fn path() -> String {
    std::env::var("PATH").unwrap_or_default()
}

/// Forgets `PRE_COMMIT_RUNNING_LEGACY`, which the pre-commit framework sets when it runs the
/// hook it replaced (ours) as a "legacy" hook: a chained check that is that framework again must
/// not take itself for a recursion. Call first thing in `main`, before any thread exists.
pub fn forget_pre_commit_legacy() {
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::remove_var("PRE_COMMIT_RUNNING_LEGACY") };
}

// `buildlock ci`'s view of the CI it runs in (read only there).

/// The CI's job summary file: GitHub Actions' `GITHUB_STEP_SUMMARY` (Markdown, appended to).
pub fn step_summary() -> Option<PathBuf> {
    var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from)
}

/// The branch the CI says this job tests, for a detached checkout: GitHub's `GITHUB_REF` when
/// it is `refs/heads/…`, GitLab's `CI_COMMIT_BRANCH`.
pub fn ci_branch() -> Option<String> {
    var("GITHUB_REF")
        .and_then(|r| r.strip_prefix("refs/heads/").map(str::to_owned))
        .or_else(|| var("CI_COMMIT_BRANCH"))
}

/// The web addresses of the CI's own forge: GitHub's `GITHUB_SERVER_URL` (GitHub Enterprise
/// Server included) and GitLab's `CI_SERVER_URL` (self-managed GitLab included).
pub fn ci_servers() -> (Option<String>, Option<String>) {
    (var("GITHUB_SERVER_URL"), var("CI_SERVER_URL"))
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn the_arguments_of_main_come_from_argv_without_the_program_name() {
        use super::args_of_main;
        use std::os::unix::ffi::OsStrExt;
        let strings: Vec<std::ffi::CString> = ["commit-retry", "-m", "a message", "\u{e9}t\u{e9}"]
            .iter()
            .map(|s| std::ffi::CString::new(*s).unwrap())
            .collect();
        let mut raw: Vec<*const std::ffi::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        raw.push(std::ptr::null());
        // SAFETY: four valid C strings and a null, as a C main receives them.
        let args = unsafe { args_of_main(4, raw.as_ptr()) };
        let got: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(got, [&b"-m"[..], b"a message", "\u{e9}t\u{e9}".as_bytes()]);
        // SAFETY: argc 1 (the program name alone), and a null argv.
        assert!(unsafe { args_of_main(1, raw.as_ptr()) }.is_empty());
        assert!(unsafe { args_of_main(3, std::ptr::null()) }.is_empty());
    }

    #[test]
    fn agent_ids_are_printable_and_short() {
        assert_eq!(super::check_agent_id("a1"), Ok("a1"));
        assert_eq!(
            super::check_agent_id("linux (x86_64) · é"),
            Ok("linux (x86_64) · é")
        );
        for bad in [
            "a\nbuildlock: next: x",
            "a\u{1b}[2J",
            "a\tb",
            "a\u{202e}b",
            "a\u{2028}b",
        ] {
            assert!(super::check_agent_id(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(super::MAX_AGENT_ID);
        assert!(super::check_agent_id(&long).is_ok());
        assert!(super::check_agent_id(&format!("{long}x")).is_err());
    }

    #[test]
    fn a_long_default_id_keeps_the_host_and_the_end_of_the_path() {
        let path = format!("/home/me/{}wt-alpha", "deep/".repeat(40));
        let id = super::default_agent_id("box", &path);
        assert_eq!(id.chars().count(), super::MAX_AGENT_ID);
        assert!(
            id.starts_with("box:…") && id.ends_with("/deep/wt-alpha"),
            "{id}"
        );
        assert_eq!(super::default_agent_id("box", "/w\nt"), "box:/w\\nt");
        assert_eq!(super::default_agent_id("box", "/src/wt"), "box:/src/wt");
    }

    #[test]
    fn off_values_in_any_case() {
        for v in ["0", "false", "FALSE", "Off", "no", "No", " off "] {
            assert!(super::is_off(v), "{v:?}");
        }
        for v in ["1", "true", "on", "yes", "nope", "offline"] {
            assert!(!super::is_off(v), "{v:?}");
        }
    }
}
