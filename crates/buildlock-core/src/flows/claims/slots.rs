//! Check slots: with `check_slots = N`, at most N checks (hook, commit-retry's commits,
//! `buildlock ci`) run at once in the domain; the others queue by priority, then arrival, say who
//! runs, and wake without polling delay.
//!
//! A slot is the flock on `locks/slot-<i>.lock`, held by the process that runs the check for the
//! whole check: the kernel frees it the instant that process dies, SIGKILL included, and a free
//! lock is a free slot whatever the registry still says. The queue order lives in the registry
//! (`store/registry.rs`). A waiter wakes when the registry file is replaced (a holder that ends
//! normally releases its lock, then says so in the registry) or when a holder's process exits
//! (pidfd), with a bounded fallback poll.
//!
//! `check_slots = 0` (the default) costs nothing: no file is touched. A waiter that sees no slot
//! change hands for a whole `check_timeout` (a holder stopped with SIGSTOP keeps its lock) runs its
//! check anyway and says so, rather than wait forever.

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::flows::claims::common as cl;
use crate::flows::context::Context;
use crate::os::check::Ending;
use crate::os::lock::Lock;
use crate::os::time::{self, human};
use crate::os::{env, say, signals};
use crate::protocol::claims::{RegistryOutcome, Request, SlotHolder};
use crate::store::registry::{Limits, RegistryStore};

/// A check slot held by this process. Dropping it frees the slot: the lock first (so a waiter that
/// looks finds it free), then the registry entry (which wakes the waiters).
#[must_use = "the slot is released when this is dropped"]
pub struct SlotHold {
    store: std::sync::Arc<RegistryStore>,
    limits: Limits,
    ticket: u64,
    pub slot: usize,
    lock: Option<Lock>,
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        drop(self.lock.take());
        if let Err(e) = self.store.apply(
            &Request::SlotRelease {
                ticket: self.ticket,
            },
            self.limits,
        ) {
            say::warn(format!(
                "could not record the end of this check's slot: {e:#}"
            ));
        }
    }
}

/// Takes a check slot for the check about to run. `Ok(None)`: no slots configured, coordination
/// off, or given up after a stuck holder; `Err(ending)`: interrupted while waiting (a signal, or
/// git went away), to be reported as the check's ending.
pub fn take(
    ctx: &Context,
    parent: Option<u32>,
) -> Result<std::result::Result<Option<SlotHold>, Ending>> {
    let n = ctx.config.check_slots as usize;
    if n == 0 || !env::coordination_enabled() {
        return Ok(Ok(None));
    }
    signals::install();
    let store = ctx.registry.clone();
    let limits = cl::limits(ctx);
    let mut watch = store.bell().listen();
    let me = cl::who(ctx, cl::priority_or_default());
    let start = Instant::now();
    let mut ticket: Option<u64> = None;
    let mut told = false;
    let mut last_progress = Instant::now();
    let mut last_running: Vec<(usize, u64)> = Vec::new();
    let mut last_change = Instant::now();
    loop {
        let applied = store.apply(
            &Request::Slot {
                who: me.clone(),
                ticket,
            },
            limits,
        )?;
        match applied.decision {
            RegistryOutcome::TakeSlot { ticket: t, slot } => {
                if told {
                    say::progress_done();
                    say::say(format!(
                        "got check slot {} of {n} after waiting {}; running the check",
                        slot + 1,
                        human(start.elapsed())
                    ));
                }
                return Ok(Ok(Some(SlotHold {
                    store,
                    limits,
                    ticket: t,
                    slot,
                    lock: applied.slot,
                })));
            }
            RegistryOutcome::SlotQueued {
                ticket: t,
                position,
                running,
            } => {
                ticket = Some(t);
                let now_running: Vec<(usize, u64)> =
                    running.iter().map(|h| (h.slot, h.ticket)).collect();
                if now_running != last_running {
                    last_running = now_running;
                    last_change = Instant::now();
                }
                if !told {
                    told = true;
                    say::say(format!(
                        "all {n} check slots are busy (check_slots = {n}); you are number {} in line\n  running: {}",
                        position + 1,
                        describe(&running)
                    ));
                } else if last_progress.elapsed()
                    >= if say::stderr_is_terminal() {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_secs(5)
                    }
                {
                    last_progress = Instant::now();
                    say::progress(format!(
                        "waiting for a check slot: number {} in line; running: {}; waited {}",
                        position + 1,
                        describe(&running),
                        human(start.elapsed())
                    ));
                }
                if last_change.elapsed() >= ctx.config.check_timeout {
                    leave(&store, limits, t);
                    say::progress_done();
                    say::warn(format!(
                        "no check slot changed hands for {} (check_timeout): a holder is stuck (stopped?): {}; \
                         running this check without a slot",
                        human(ctx.config.check_timeout),
                        describe(&running)
                    ));
                    return Ok(Ok(None));
                }
                if let Some(sig) = signals::pending() {
                    leave(&store, limits, t);
                    say::progress_done();
                    return Ok(Err(Ending::Signal(sig)));
                }
                if parent.is_some_and(|p| p != crate::os::process::parent_id()) {
                    leave(&store, limits, t);
                    say::progress_done();
                    return Ok(Err(Ending::ParentGone));
                }
                let procs: Vec<_> = running.iter().map(|h| h.process.clone()).collect();
                let nap = if watch.is_live() {
                    cl::FALLBACK
                } else {
                    env::poll_interval()
                };
                watch.wait(&procs, nap);
                ctx.registry.touch(&ctx.agent);
            }
            // Our place was lost (the registry was reset): queue again.
            RegistryOutcome::Gone => ticket = None,
            other => anyhow::bail!("unexpected answer to a slot request: {other:?}"),
        }
    }
}

fn leave(store: &RegistryStore, limits: Limits, ticket: u64) {
    let _ = store.apply(&Request::Leave { ticket }, limits);
}

fn describe(running: &[SlotHolder]) -> String {
    if running.is_empty() {
        return "-".to_owned();
    }
    let now = time::now();
    running
        .iter()
        .map(|h| {
            format!(
                "`{}` (pid {}, for {})",
                say::inert(&h.agent),
                h.process.pid,
                human(Duration::from_millis(now.saturating_sub(h.since)))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
