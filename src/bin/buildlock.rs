//! `buildlock`: the operator's tool.
use buildlock_core::flows::context::{Context, LoadError};
use buildlock_core::flows::ops;
use buildlock_core::os::say;
use buildlock_core::protocol::exit;

const USAGE: &str = "usage: buildlock <command>

  status [--json]       who is fixing what, who waits, and the totals
  release               give up the fixer role you hold (the key becomes broken, nobody fixing)
  reset [KEY]           force every key (or KEY) back to passing; logged
  log [--json] [-n N]   the last N events (default 20)
  doctor                is the hook installed, the config valid, locking working?
  ci [-- COMMAND…]      run COMMAND (default: the check) for a CI job: on failure one job fixes,
                        the others wait for the fix, refresh onto it and check again
  demo [--keep]         six agents, one broken build, one fixer, on a throwaway repository

environment: BUILDLOCK_AGENT (your agent id), BUILDLOCK=0 (coordination off), BUILDLOCK_CONFIG";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&args));
}

fn run(args: &[String]) -> i32 {
    let usage = |msg: &str| {
        say::say(format!("{msg}\n{USAGE}"));
        exit::USAGE
    };
    let Some((command, rest)) = args.split_first() else {
        return usage("no command given");
    };
    let flag = |name: &str| rest.iter().any(|a| a == name);
    let known = |allowed: &[&str]| {
        rest.iter()
            .all(|a| allowed.contains(&a.as_str()) || a.parse::<usize>().is_ok())
    };
    let result = match command.as_str() {
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            return exit::OK;
        }
        "demo" => buildlock_core::flows::demo::run(flag("--keep")),
        "ci" => {
            let command: Vec<String> = match rest.split_first() {
                None => Vec::new(),
                Some((dashes, cmd)) if dashes == "--" => cmd.to_vec(),
                Some(_) => return usage("write the command after `--`: buildlock ci -- make test"),
            };
            let ctx = match Context::load() {
                Ok(ctx) => ctx,
                Err(LoadError::Config(e)) => {
                    say::say(e);
                    return exit::CONFIG;
                }
                Err(LoadError::Other(e)) => {
                    say::say(format!("{e:#}"));
                    return exit::FIXER;
                }
            };
            buildlock_core::flows::ci::run(&ctx, command)
        }
        "status" | "release" | "reset" | "log" | "doctor" => {
            let ctx = match Context::load() {
                Ok(ctx) => ctx,
                Err(LoadError::Config(e)) => {
                    say::say(e);
                    return exit::CONFIG;
                }
                Err(LoadError::Other(e)) => {
                    say::say(format!("{e:#}"));
                    return exit::FIXER;
                }
            };
            match command.as_str() {
                "status" if known(&["--json"]) => ops::status(&ctx, flag("--json")),
                "release" if rest.is_empty() => ops::release(&ctx),
                "reset" if rest.len() <= 1 => ops::reset(&ctx, rest.first().map(String::as_str)),
                "log" if known(&["--json", "-n"]) => {
                    let n = match rest.iter().position(|a| a == "-n") {
                        Some(i) => match rest.get(i + 1).and_then(|v| v.parse().ok()) {
                            Some(n) => n,
                            None => return usage("-n needs a number"),
                        },
                        None => 20,
                    };
                    ops::log(&ctx, flag("--json"), n)
                }
                "doctor" if rest.is_empty() => ops::doctor(&ctx),
                _ => {
                    return usage(&format!(
                        "unexpected arguments for `{command}`: {}",
                        rest.join(" ")
                    ));
                }
            }
        }
        other => return usage(&format!("unknown command `{other}`")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say::say(format!("{e:#}"));
            exit::FIXER
        }
    }
}
