//! `buildlock claim` (granted, refused, or queued and waited for) and `buildlock unclaim`.

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::flows::claims::common::{
    describe_claim, describe_conflicts, duration_arg, limits, nap, normalize_all, priority,
    priority_or_default, progress_every, record, ticked, usage, who,
};
use crate::flows::context::Context;
use crate::os::bell::{Listener, Wake};
use crate::os::time::{self, Millis, human};
use crate::os::{say, signals};
use crate::protocol::claims::{Mode, RegistryOutcome, Request, Who};
use crate::protocol::exit;
use crate::store::registry::{ClaimsRegistry, Limits};

/// `buildlock claim` as given on the command line (parsed by the binary, judged here).
#[derive(Clone, Debug, Default)]
pub struct ClaimArgs {
    pub shared: bool,
    /// `--for D`.
    pub for_: Option<String>,
    /// `--wait` (`Some(None)`) or `--wait D` (`Some(Some(D))`).
    pub wait: Option<Option<String>>,
    pub priority: Option<String>,
    pub paths: Vec<String>,
}

/// `buildlock claim [--shared] [--for D] [--wait [D]] [--priority N] PATHSPEC…`
pub fn claim(ctx: &Context, args: &ClaimArgs) -> Result<i32> {
    signals::install();
    let mut raw_paths = args.paths.clone();
    // `--wait src/x` (a parser that takes an optional value greedily): a value that is not a
    // duration is the first pathspec, unless it looks like a mistyped duration.
    let wait = match &args.wait {
        None => None,
        Some(None) => Some(ctx.config.wait),
        Some(Some(v)) => match time::parse_duration(v) {
            Ok(d) => Some(d),
            Err(e) if v.starts_with(|c: char| c.is_ascii_digit()) && !v.contains(['/', '.']) => {
                return usage(format!("--wait: {e}"));
            }
            Err(_) => {
                raw_paths.insert(0, v.clone());
                Some(ctx.config.wait)
            }
        },
    };
    if raw_paths.is_empty() {
        return usage(
            "claim needs at least one PATHSPEC (relative to the work tree root), e.g. \
             `buildlock claim src/api/*.py docs/`; nothing was claimed",
        );
    }
    let paths = match normalize_all(ctx, &raw_paths) {
        Ok(p) => p,
        Err(e) => return usage(format!("{e}; nothing was claimed")),
    };
    let term = match &args.for_ {
        None => None,
        Some(v) => match duration_arg("--for", v) {
            Ok(d) if d.is_zero() => {
                return usage("--for must be longer than zero; nothing was claimed");
            }
            Ok(d) => Some(d.as_millis() as Millis),
            Err(e) => return usage(format!("{e}; nothing was claimed")),
        },
    };
    let priority = match priority(args.priority.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(format!("{e}; nothing was claimed")),
    };
    let mode = if args.shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let reg = ctx.claims.as_ref();
    let limits = limits(ctx);
    // Watch before the first look, so that a release in between is not missed.
    let watch = wait.map(|_| reg.listen());
    let me = who(ctx, priority);
    let applied = reg.apply(
        &Request::Claim {
            who: me.clone(),
            paths: paths.clone(),
            mode,
            term,
            wait: wait.is_some(),
            ticket: None,
        },
        limits,
    )?;
    record(ctx, applied.events);
    match applied.decision {
        RegistryOutcome::Granted { claim } => {
            say::headline(
                say::Tone::Good,
                describe_claim(&claim, &applied.after, limits.ttl_ms()),
            );
            say::say(
                "release with `buildlock unclaim …`, or `buildlock done` when your work is finished",
            );
            Ok(exit::OK)
        }
        RegistryOutcome::Refused { conflicts } => {
            say::headline(
                say::Tone::Wait,
                "refused: another agent holds (or waits for) what you claim; nothing was claimed",
            );
            say::say(describe_conflicts(&conflicts));
            say::say(
                "next: work on something else, or queue for it with `buildlock claim --wait …` (granted by \
                 priority, then arrival, as soon as it is released or lapses); `buildlock agents` shows who holds what",
            );
            Ok(exit::BLOCKED)
        }
        RegistryOutcome::Queued {
            ticket,
            position,
            conflicts,
        } => {
            let limit = wait.unwrap_or_default();
            let mut watch = watch.unwrap_or_else(|| reg.listen());
            say::say(format!(
                "queued (position {} of the waiting claims, priority {priority}); waiting up to {} for:\n{}",
                position + 1,
                human(limit),
                describe_conflicts(&conflicts)
            ));
            wait_for_grant(
                ctx,
                reg,
                limits,
                &mut watch,
                &me,
                (paths, mode, term),
                ticket,
                limit,
            )
        }
        other => anyhow::bail!("unexpected answer to a claim: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn wait_for_grant(
    ctx: &Context,
    reg: &dyn ClaimsRegistry,
    limits: Limits,
    watch: &mut Listener,
    me: &Who,
    (paths, mode, term): (Vec<String>, Mode, Option<Millis>),
    ticket: u64,
    limit: Duration,
) -> Result<i32> {
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let leave = |why: &str| -> Result<()> {
        let applied = reg.apply(&Request::Leave { ticket }, limits)?;
        record(ctx, applied.events);
        say::progress_done();
        say::say(why);
        Ok(())
    };
    loop {
        let waited = start.elapsed();
        if let Some(n) = signals::pending() {
            leave(&format!(
                "interrupted by signal {n}: left the queue; nothing was claimed"
            ))?;
            return Ok(exit::signal(n));
        }
        if waited >= limit {
            leave(&format!(
                "not granted within {}: left the queue; nothing was claimed (exit 75)\nnext: try again later, or see \
                 `buildlock agents` for who holds it",
                human(limit)
            ))?;
            return Ok(exit::BLOCKED);
        }
        let now_reg = reg.read()?;
        let next_lapse = now_reg.next_lapse(time::now(), limits.ttl_ms());
        let _: Wake = nap(ctx, watch, limit - waited, next_lapse);
        // A sign of life that renews our other claims (and keeps our place in the queue) without
        // rewriting the registry at every look.
        ctx.registry.touch(&ctx.agent);
        reg.renew(&ctx.agent, limits);
        let applied = reg.apply(
            &Request::Claim {
                who: me.clone(),
                paths: paths.clone(),
                mode,
                term,
                wait: true,
                ticket: Some(ticket),
            },
            limits,
        )?;
        record(ctx, applied.events);
        match applied.decision {
            RegistryOutcome::Granted { claim } => {
                say::progress_done();
                say::headline(
                    say::Tone::Good,
                    format!(
                        "{} after waiting {}",
                        describe_claim(&claim, &applied.after, limits.ttl_ms()),
                        human(start.elapsed())
                    ),
                );
                return Ok(exit::OK);
            }
            RegistryOutcome::Queued {
                position,
                conflicts,
                ..
            } => {
                let every = progress_every();
                if last_progress.elapsed() >= every {
                    last_progress = Instant::now();
                    let holders: Vec<String> = conflicts
                        .iter()
                        .map(|c| format!("`{}`", say::inert(&c.agent)))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    say::progress(format!(
                        "waiting for {} (position {}); waited {}, giving up in {}",
                        holders.join(", "),
                        position + 1,
                        human(start.elapsed()),
                        human(limit.saturating_sub(start.elapsed()))
                    ));
                }
            }
            RegistryOutcome::Gone => {
                say::progress_done();
                say::say(
                    "your queued claim is no longer in the registry (it was reset or damaged); nothing was \
                     claimed: run `buildlock claim` again",
                );
                return Ok(exit::BLOCKED);
            }
            other => anyhow::bail!("unexpected answer to a queued claim: {other:?}"),
        }
    }
}

/// `buildlock unclaim [--all | PATHSPEC…]`
pub fn unclaim(ctx: &Context, all: bool, raw_paths: &[String]) -> Result<i32> {
    let paths = match (all, raw_paths.is_empty()) {
        (true, false) => {
            return usage(
                "unclaim takes either --all or PATHSPECs, not both; nothing was released",
            );
        }
        (false, true) => {
            return usage(
                "unclaim needs PATHSPECs (as you claimed them) or --all; nothing was released",
            );
        }
        (true, true) => None,
        (false, false) => match normalize_all(ctx, raw_paths) {
            Ok(p) => Some(p),
            Err(e) => return usage(format!("{e}; nothing was released")),
        },
    };
    let reg = &ctx.claims;
    let applied = reg.apply(
        &Request::Unclaim {
            who: who(ctx, priority_or_default()),
            paths,
        },
        limits(ctx),
    )?;
    record(ctx, applied.events);
    let RegistryOutcome::Released { released, not_held } = applied.decision else {
        anyhow::bail!("unexpected answer to unclaim: {:?}", applied.decision);
    };
    if !released.is_empty() {
        say::say(format!("released {}", ticked(&released)));
    }
    if !not_held.is_empty() {
        let mine: Vec<String> = applied
            .before
            .claims
            .iter()
            .filter(|c| c.agent == ctx.agent)
            .flat_map(|c| c.paths.iter().map(|p| format!("`{}`", say::inert(p))))
            .collect();
        say::say(format!(
            "you (`{}`) hold no claim on {} (already released, lapsed, or written differently); your claims: {}",
            say::inert(&ctx.agent),
            ticked(&not_held),
            if mine.is_empty() {
                "none".to_owned()
            } else {
                mine.join(", ")
            }
        ));
    }
    if released.is_empty() && not_held.is_empty() {
        say::say(format!(
            "you (`{}`) hold no claims; nothing to release",
            say::inert(&ctx.agent)
        ));
    }
    Ok(exit::OK)
}
