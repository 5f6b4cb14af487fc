//! `buildlock`: the operator's tool.
//!
//! The command line is declared here, with clap (derive), and nowhere else: the core stays
//! clap-free so that the hook binary, which runs on every commit, does not carry it. Exit codes
//! are the contract's: 0 done; 1 the command failed (or `doctor` found a problem); 2 a wrong
//! command line (clap's usage errors); 78 a configuration error. `--help` and `--version` exit 0.
//!
//! Adding a command is one variant of [`Command`] (its doc comment is its help) and one arm in
//! [`run`], usually one call into `buildlock_core::flows`.

use buildlock_core::flows::claims::commands as claims;
use buildlock_core::flows::context::{Context, LoadError};
use buildlock_core::flows::operator::{doctor, ops};
use buildlock_core::flows::{ci, demo};
use buildlock_core::os::say;
use buildlock_core::protocol::exit;
use clap::{CommandFactory, Parser, Subcommand};

const AFTER_HELP: &str = "\
Run it from any work tree of the repository (`git buildlock …` is the alias install.sh adds).

Environment:
  BUILDLOCK_AGENT   your agent id (default: BUILD_FLAVOR, else <host>:<work tree>)
  BUILDLOCK=0       the hook runs the check and coordinates nothing (also false, off, no)
  BUILDLOCK_CONFIG  one more configuration file, read last
  BUILDLOCK_PRIORITY  your agent's priority in queues (claims, check slots): 1 highest to 5 lowest
  NO_COLOR          no colour

Exit codes: 0 done; 1 the command failed, or doctor found a problem; 2 a wrong command line;
75 refused or timed out (claim, wait-for), or the fix cannot be taken now (take-fix, nothing
lost); 70 coordination (or take-fix) failed; 78 a configuration error.";

/// Elect one fixer when a shared build breaks under parallel agents.
///
/// The hook (`pre-commit`) and `commit-retry` do the coordinating; this tool shows and repairs
/// the coordination state of the repository you are in.
#[derive(Parser)]
// Our own `help` command: clap's refuses every option, `help --help` included (exit 2).
#[command(
    name = "buildlock",
    version,
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Who is fixing what since when, who waits, and what was counted
    Status {
        /// The whole state as one JSON document (the contract's fields)
        #[arg(long)]
        json: bool,
    },
    /// Give up the fixer role you hold: the key becomes broken with nobody fixing
    Release,
    /// Force every key that is not passing (or only KEY) back to passing; logged
    ///
    /// A fixer still at work is fenced off: its passing check can no longer mark anything.
    Reset {
        /// One key, as `buildlock status` shows it (default: every key that is not passing)
        key: Option<String>,
    },
    /// The timeline: failed, elected, waiting, takeover, fixed, …
    Log {
        /// One JSON object per line, as recorded
        #[arg(long)]
        json: bool,
        /// How many of the last events to show
        #[arg(short = 'n', value_name = "N", default_value_t = 20)]
        count: usize,
        /// Only the events of this agent (as `buildlock agents` shows it); the last N of them
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
    /// Check the installation: hook, configuration, check command, coordination dir, locking
    ///
    /// Each finding says what to do. Exits 1 when it found a problem.
    Doctor,
    /// Run COMMAND (default: the configured check) as a CI job: on failure one job fixes, the
    /// others wait for its fix, refresh onto it and run COMMAND again
    ///
    /// Exit codes are commit-retry's: 0 green (directly or on the fix); 1 you are the fixer and
    /// there is no fix.command, or the fix failed max_fix_attempts times; 75 still waiting when
    /// coordination.wait ran out; 78 a configuration error; 70 the check failed and
    /// coordination failed (nobody was elected); 128+n a signal. With `backend = "remote"` the
    /// jobs share the state through refs/buildlock/* on the git remote (see docs/ci/).
    Ci {
        /// The command and its arguments, after `--` (e.g. `buildlock ci -- make test`)
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Six agents, one broken build, one fixer, on a throwaway repository (~5 s)
    Demo {
        /// Keep the throwaway repository and print where it is
        #[arg(long)]
        keep: bool,
    },
    /// Print a completion script for your shell
    ///
    /// bash: `buildlock completions bash > ~/.local/share/bash-completion/completions/buildlock`;
    /// zsh: into a folder of your $fpath as `_buildlock`; fish: into
    /// ~/.config/fish/completions/buildlock.fish.
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Reserve paths for your agent: exclusive (one writer) unless --shared
    ///
    /// PATHSPECs are git pathspecs relative to the work tree root; globs allowed (`src/api/*.py`,
    /// `docs/`; `*` also matches `/`). Refused at once (exit 75, naming the holder) when another
    /// live agent holds a conflicting claim, or queued with --wait. A claim lapses `claims.ttl`
    /// after your last buildlock command, or at the end of --for.
    Claim {
        /// A read intent: others may claim the paths shared too, nobody exclusively
        #[arg(long)]
        shared: bool,
        /// Hold the claim for exactly this long (e.g. 45m), instead of until `claims.ttl` after your
        /// last sign of life
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Queue when refused, granted by priority then arrival; give up after DURATION (default
        /// `coordination.wait`)
        #[arg(long, value_name = "DURATION", num_args = 0..=1)]
        wait: Option<Option<String>>,
        /// 1 (highest) to 5 (lowest); default BUILDLOCK_PRIORITY, else 3
        #[arg(long, value_name = "N")]
        priority: Option<String>,
        /// The paths to claim
        #[arg(value_name = "PATHSPEC")]
        paths: Vec<String>,
    },
    /// Release your claims (those PATHSPECs, as you claimed them, or --all)
    Unclaim {
        /// Every claim of yours
        #[arg(long)]
        all: bool,
        #[arg(value_name = "PATHSPEC")]
        paths: Vec<String>,
    },
    /// The live claims, and the claims waiting in the queue
    Claims {
        /// As one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Every agent seen within `claims.ttl`: state, claims, priority, last sign of life, where
    Agents {
        /// As one JSON document (the contract's fields)
        #[arg(long)]
        json: bool,
    },
    /// Release every claim of yours and mark your agent done
    Done,
    /// Take a fix commit into this work tree, keeping every kind of local work
    ///
    /// HEAD gets a new commit with the fix's changes (as `git cherry-pick` would make it), and
    /// only the files the fix changes are written. Your staged, unstaged, untracked,
    /// intent-to-add, assume-unchanged and skip-worktree entries and your submodules stay as
    /// they are. It refuses, changing nothing, when a file the fix changes holds local work of
    /// yours, when the fix does not apply, and during a merge or rebase. Exit 0 taken, 75 cannot
    /// take it now (nothing lost), 70 failed.
    TakeFix {
        /// The fix commit (default: BUILDLOCK_FIX_COMMIT, the one you were told to take)
        commit: Option<String>,
    },
    /// Wait until each AGENT is done (or gone: no sign of life for `claims.ttl`); exit 75 on timeout
    WaitFor {
        #[arg(value_name = "AGENT")]
        agents: Vec<String>,
        /// Give up after this long (default `coordination.wait`)
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Print this message or the help of the given command
    Help {
        /// The command to explain (default: all of them)
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

fn main() {
    // Every command may write state or history: past `ulimit -f` a write fails, it never kills.
    buildlock_core::os::signals::survive_file_size_limit();
    // commit-retry's second half (it execs us after a first commit that did not simply pass).
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == buildlock_core::flows::commit::retry::RESUME_ARG)
    {
        std::process::exit(buildlock_core::flows::commit::retry::resume(args.collect()));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout and exit 0; usage errors go to stderr and exit 2. clap
        // ignores a closed stdout here.
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // Ctrl-C and friends become a flag that every wait and every git run of the remote backend
    // looks at (git runs in a process group of its own, which a terminal's Ctrl-C does not
    // reach): they stop what they started, and the command ends as interrupted.
    buildlock_core::os::signals::install();
    let code = finish(run(cli.command));
    std::process::exit(match buildlock_core::os::signals::pending() {
        Some(signal) if code == exit::OK => exit::signal(signal),
        _ => code,
    });
}

fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Status { json } => with_context(|ctx| ops::status(ctx, json)),
        Command::Release => with_context(ops::release),
        Command::Reset { key } => with_context(|ctx| ops::reset(ctx, key.as_deref())),
        Command::Log { json, count, agent } => {
            with_context(|ctx| ops::log(ctx, json, count, agent.as_deref()))
        }
        Command::Doctor => with_context(doctor::run),
        Command::Ci { command } => with_context(|ctx| ci::run(ctx, command)),
        Command::Demo { keep } => demo::run(keep),
        Command::Completions { shell } => completions(shell),
        Command::Claim {
            shared,
            for_,
            wait,
            priority,
            paths,
        } => with_context(|ctx| {
            let args = claims::ClaimArgs {
                shared,
                for_,
                wait,
                priority,
                paths,
            };
            claims::claim(ctx, &args)
        }),
        Command::Unclaim { all, paths } => with_context(|ctx| claims::unclaim(ctx, all, &paths)),
        Command::Claims { json } => with_context(|ctx| claims::list(ctx, json)),
        Command::Agents { json } => with_context(|ctx| claims::agents(ctx, json)),
        Command::Done => with_context(claims::done),
        Command::TakeFix { commit } => Ok(buildlock_core::flows::commit::take_fix::run(commit)),
        Command::WaitFor { agents, timeout } => {
            with_context(|ctx| claims::wait_for(ctx, &agents, timeout.as_deref()))
        }
        Command::Help { command } => help(command.as_deref()),
    }
}

/// `buildlock help [COMMAND]`: the long help, on stdout (exit 0); an unknown command is a usage
/// error (exit 2), as clap's own `help` has it.
fn help(command: Option<&str>) -> anyhow::Result<i32> {
    let mut cli = Cli::command();
    let mut text = match command {
        None => cli.render_long_help(),
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) => sub
                .clone()
                .bin_name(format!("buildlock {name}"))
                .render_long_help(),
            None => {
                say::say(format!(
                    "unknown command `{}`; `buildlock help` lists them",
                    say::inert(name)
                ));
                return Ok(exit::USAGE);
            }
        },
    }
    .to_string();
    if text.ends_with('\n') {
        text.pop();
    }
    buildlock_core::out!("{text}")?;
    Ok(exit::OK)
}

/// Loads the repository's context (exit 78 for a configuration error) and runs `f` with it.
fn with_context(f: impl FnOnce(&Context) -> anyhow::Result<i32>) -> anyhow::Result<i32> {
    match Context::load() {
        Ok(ctx) => f(&ctx),
        Err(LoadError::Config(e)) => {
            say::say(e);
            Ok(exit::CONFIG)
        }
        Err(LoadError::Other(e)) => Err(e),
    }
}

/// The exit code for a command's result: a closed stdout (`| head -1`) ends quietly with 0.
fn finish(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) if say::is_closed_stdout(&e) => exit::OK,
        // The state could not be read (an unreachable remote): nothing is reported as read.
        Err(e)
            if e.downcast_ref::<buildlock_core::store::StoreError>()
                .is_some() =>
        {
            say::say(format!("{e:#}"));
            exit::COORDINATION
        }
        Err(e) => {
            say::say(format!("{e:#}"));
            exit::FIXER
        }
    }
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    // clap_complete panics when its writer fails: generate into memory, then write safely.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "buildlock", &mut script);
    let script = String::from_utf8_lossy(&script);
    buildlock_core::out!("{}", script.trim_end())?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
