//! Claims, check slots and the agent registry: the pure rules (no clock, no file, no lock).
//!
//! `decide(registry, request, observed) -> (registry, decision, events)` is the only way the
//! registry changes; the store (`store/registry.rs`) feeds it what it observed under the registry
//! lock (the time, which queued processes died, which check slots are free) and persists what it
//! returns atomically. Every rule below is a unit test at the end of this file. Claims name
//! paths in the pathspec language of [`crate::pathspec`], which decides when two of them overlap.
//!
//! # Claims
//!
//! - Exclusive claims conflict with every overlapping claim of another agent; shared claims
//!   conflict only with overlapping exclusive ones. An agent's own claims never conflict.
//! - A claim lapses `ttl` after its agent's last sign of life, or, when it was made with
//!   `--for D`, at exactly the end of D instead (a fixed term the agent chose: it neither
//!   extends with activity nor ends before it).
//! - Every new claim enters the queue and is granted at once when nothing in front of it
//!   conflicts: no live claim of another agent, and no waiting request of another agent that
//!   goes first (priority 1 before 5, then arrival). Otherwise it is refused, or, when it may
//!   wait, left in the queue. Whenever the registry is settled (on every request), lapsed claims
//!   go, waiters whose process died go, and queued requests are granted in order. Priority orders
//!   the queue; it never takes away a claim already granted.
//!
//! # Check slots
//!
//! With `check_slots = N`, a check needs one of N slots. Liveness of a holder is the kernel's
//! (the store tells which slot locks are free); the queue order is here: among the live waiters
//! sorted by priority then arrival, the k-th may take a slot when fewer than k+1 slots are busy,
//! so nobody overtakes a waiter in front of it.
//!
//! # Agents
//!
//! Every request registers its agent (priority, host, pid, work tree, branch, last sign of life).
//! An agent's state is derived, never stored: `checking` (holds a slot), `queued` (for a slot),
//! `blocked` (on a claim), `fixing` / `waiting` (for a fix, from the build state), `done`,
//! `idle`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::pathspec::{covers, dir_prefix, overlap};
use crate::process::Process;
use crate::time::Millis;

/// The registry file's schema; another version reads as empty (and is rewritten).
pub const SCHEMA: u32 = 1;
/// `BUILDLOCK_PRIORITY` and `--priority`: 1 (highest) to 5 (lowest).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=5;
pub const DEFAULT_PRIORITY: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Exclusive,
    Shared,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

/// Whether claims in these modes on overlapping paths by two agents can coexist.
pub fn compatible(a: Mode, b: Mode) -> bool {
    a == Mode::Shared && b == Mode::Shared
}

/// What the registry keeps about an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub priority: u8,
    /// The last sign of life recorded in the registry (the store also folds in the agent's
    /// `touch`es, see `store/registry.rs`).
    pub last_seen: Millis,
    pub host: String,
    pub pid: u32,
    pub worktree: String,
    pub branch: String,
    #[serde(default)]
    pub done: bool,
    /// Waiting for another agent's claim to be released before its commit can go on.
    #[serde(default)]
    pub blocked: Option<Blocked>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub by: String,
    pub paths: Vec<String>,
    pub process: Process,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The ticket it was requested with.
    pub id: u64,
    pub agent: String,
    pub paths: Vec<String>,
    pub mode: Mode,
    pub granted: Millis,
    /// `--for`: the fixed end of the claim; `None`: `ttl` after the agent's last sign of life.
    #[serde(default)]
    pub until: Option<Millis>,
}

/// A claim request waiting in the queue (`claim --wait`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimWaiter {
    pub ticket: u64,
    pub agent: String,
    pub paths: Vec<String>,
    pub mode: Mode,
    pub priority: u8,
    /// `--for`, in milliseconds from the grant.
    #[serde(default)]
    pub term: Option<Millis>,
    /// The waiting process: when it dies, the request leaves the queue.
    pub process: Process,
    pub arrived: Millis,
}

/// A check waiting for a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotWaiter {
    pub ticket: u64,
    pub agent: String,
    pub priority: u8,
    pub process: Process,
    pub arrived: Millis,
}

/// A check holding slot `slot` (its process holds `locks/slot-<slot>.lock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHolder {
    pub slot: usize,
    pub ticket: u64,
    pub agent: String,
    pub process: Process,
    pub since: Millis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Registry {
    pub schema: u32,
    /// The last ticket handed out: tickets order arrivals.
    pub seq: u64,
    pub agents: BTreeMap<String, AgentRecord>,
    pub claims: Vec<Claim>,
    pub claim_queue: Vec<ClaimWaiter>,
    pub slot_queue: Vec<SlotWaiter>,
    pub slots: Vec<SlotHolder>,
}

/// Who makes a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub agent: String,
    pub priority: u8,
    pub process: Process,
    pub worktree: String,
    pub branch: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `claim`: a new request (`ticket: None`) or a queued one looking again.
    Claim {
        who: Who,
        paths: Vec<String>,
        mode: Mode,
        /// `--for`, in milliseconds.
        term: Option<Millis>,
        /// Stay queued when it cannot be granted now.
        wait: bool,
        ticket: Option<u64>,
    },
    /// A queued request (claim or slot) that stopped waiting.
    Leave { ticket: u64 },
    /// `unclaim PATHSPEC…` (`None`: `--all`).
    Unclaim {
        who: Who,
        paths: Option<Vec<String>>,
    },
    /// `done`: release everything and say so.
    Done { who: Who },
    /// A check asks for a slot (`ticket: None`) or looks again. When granted, the caller holds
    /// the slot's lock (the store takes it in the same step) and is recorded as its holder.
    Slot { who: Who, ticket: Option<u64> },
    /// The check ended (its slot lock is already released).
    SlotRelease { ticket: u64 },
    /// The guard refused a commit (`Some`) or let it go on (`None`).
    Blocked { who: Who, on: Option<Blocked> },
    /// Lapse, prune and grant; nothing else.
    Settle,
}

/// What the store observed under the registry lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryObserved {
    pub now: Millis,
    /// `claims.ttl`.
    pub ttl: Millis,
    /// Tickets of queued requests whose process is gone.
    pub dead: BTreeSet<u64>,
    /// Agents whose blocked process is gone.
    pub unblocked: BTreeSet<String>,
    /// Indices of the check slots whose lock is free right now (`0..check_slots`).
    pub free_slots: Vec<usize>,
}

/// A live claim of another agent that stands in the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub agent: String,
    /// Their pathspec and ours.
    pub theirs: String,
    pub ours: String,
    pub mode: Mode,
    /// When their claim lapses at the latest (`None` for a queued request ahead of ours).
    pub until: Option<Millis>,
    /// A request waiting ahead of ours rather than a granted claim.
    pub queued: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryOutcome {
    /// The claim is granted (now or from the queue).
    Granted {
        claim: Claim,
    },
    /// Refused; nothing was recorded.
    Refused {
        conflicts: Vec<Conflict>,
    },
    /// Queued: `position` (0-based) among the waiting requests, and what stands in the way.
    Queued {
        ticket: u64,
        position: usize,
        conflicts: Vec<Conflict>,
    },
    /// `unclaim`: what was released and what was not held.
    Released {
        released: Vec<String>,
        not_held: Vec<String>,
    },
    /// `done`: how many claims were released.
    Done {
        released: usize,
    },
    /// Check slot `slot` is yours (the store hands over its lock).
    TakeSlot {
        ticket: u64,
        slot: usize,
    },
    /// Wait for a slot: `position` (0-based) among the waiting checks; who runs now.
    SlotQueued {
        ticket: u64,
        position: usize,
        running: Vec<SlotHolder>,
    },
    /// A queued request looked again but was no longer in the queue (it died or left).
    Gone,
    Ok,
}

/// One history entry (the store's `record` appends it to `history.jsonl`).
pub type HistoryEvent = serde_json::Value;

impl Claim {
    /// When this claim lapses.
    pub fn lapses_at(&self, reg: &Registry, ttl: Millis) -> Millis {
        match self.until {
            Some(until) => until,
            None => reg
                .agents
                .get(&self.agent)
                .map_or(self.granted, |a| a.last_seen)
                .max(self.granted)
                .saturating_add(ttl),
        }
    }
}

impl Registry {
    /// The live claims (those not lapsed at `now`).
    pub fn live_claims(&self, now: Millis, ttl: Millis) -> impl Iterator<Item = &Claim> {
        self.claims
            .iter()
            .filter(move |c| c.lapses_at(self, ttl) > now)
    }

    /// Live claims of agents other than `me` that conflict with `mode` on `paths`.
    pub fn conflicts(
        &self,
        me: &str,
        paths: &[String],
        mode: Mode,
        now: Millis,
        ttl: Millis,
    ) -> Vec<Conflict> {
        let mut out = Vec::new();
        for c in self.live_claims(now, ttl) {
            if c.agent == me || compatible(c.mode, mode) {
                continue;
            }
            for theirs in &c.paths {
                for ours in paths {
                    if overlap(theirs, ours) {
                        out.push(Conflict {
                            agent: c.agent.clone(),
                            theirs: theirs.clone(),
                            ours: ours.clone(),
                            mode: c.mode,
                            until: Some(c.lapses_at(self, ttl)),
                            queued: false,
                        });
                    }
                }
            }
        }
        out
    }

    /// The guard's question: which of `changed` (paths a commit changes) fall under a live
    /// exclusive claim of an agent other than `me`, and whose.
    pub fn guard(
        &self,
        me: &str,
        changed: &[String],
        now: Millis,
        ttl: Millis,
    ) -> Vec<PathConflict> {
        let mut out = Vec::new();
        let theirs: Vec<&Claim> = self
            .live_claims(now, ttl)
            .filter(|c| c.agent != me && c.mode == Mode::Exclusive)
            .collect();
        if theirs.is_empty() {
            return out;
        }
        for path in changed {
            'claims: for c in &theirs {
                for spec in &c.paths {
                    if covers(spec, path) {
                        out.push(PathConflict {
                            path: path.clone(),
                            agent: c.agent.clone(),
                            spec: spec.clone(),
                            until: c.lapses_at(self, ttl),
                        });
                        break 'claims;
                    }
                }
            }
        }
        out
    }

    /// The directories under which another agent's live exclusive claim may cover a path (`""`:
    /// anywhere), deduplicated.
    pub fn guarded_dirs(&self, me: &str, now: Millis, ttl: Millis) -> Vec<String> {
        let mut dirs: Vec<String> = self
            .live_claims(now, ttl)
            .filter(|c| c.agent != me && c.mode == Mode::Exclusive)
            .flat_map(|c| c.paths.iter().map(|p| dir_prefix(p).to_owned()))
            .collect();
        dirs.sort();
        dirs.dedup();
        if dirs.iter().any(String::is_empty) {
            return vec![String::new()];
        }
        dirs
    }

    /// Whether any live exclusive claim of another agent exists (the guard's fast path).
    pub fn others_claim(&self, me: &str, now: Millis, ttl: Millis) -> bool {
        self.live_claims(now, ttl)
            .any(|c| c.agent != me && c.mode == Mode::Exclusive)
    }

    /// The earliest time at which something may lapse (for a waiter's sleep), if any.
    pub fn next_lapse(&self, now: Millis, ttl: Millis) -> Option<Millis> {
        self.live_claims(now, ttl)
            .map(|c| c.lapses_at(self, ttl))
            .min()
    }

    /// The live claims of `agent`.
    pub fn claims_of<'a>(
        &'a self,
        agent: &'a str,
        now: Millis,
        ttl: Millis,
    ) -> impl Iterator<Item = &'a Claim> {
        self.live_claims(now, ttl).filter(move |c| c.agent == agent)
    }

    /// Waiting claim requests in the order they are served.
    fn claim_order(&self) -> Vec<&ClaimWaiter> {
        let mut q: Vec<&ClaimWaiter> = self.claim_queue.iter().collect();
        q.sort_by_key(|w| (w.priority, w.ticket));
        q
    }

    /// Waiting checks in the order they are served.
    pub fn slot_order(&self) -> Vec<&SlotWaiter> {
        let mut q: Vec<&SlotWaiter> = self.slot_queue.iter().collect();
        q.sort_by_key(|w| (w.priority, w.ticket));
        q
    }
}

/// A changed path under another agent's exclusive claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathConflict {
    pub path: String,
    pub agent: String,
    pub spec: String,
    pub until: Millis,
}

/// The registry's one transition. See the module header for the rules.
pub fn decide(
    reg: &Registry,
    request: &Request,
    seen: &RegistryObserved,
) -> (Registry, RegistryOutcome, Vec<HistoryEvent>) {
    let mut r = reg.clone();
    r.schema = SCHEMA;
    let mut events = Vec::new();
    if let Some(who) = request_who(request) {
        register(&mut r, who, seen.now);
    }
    settle(&mut r, seen, &mut events);
    let decision = match request {
        Request::Claim {
            who,
            paths,
            mode,
            term,
            wait,
            ticket,
        } => claim(
            &mut r,
            seen,
            who,
            paths,
            *mode,
            *term,
            *wait,
            *ticket,
            &mut events,
        ),
        Request::Leave { ticket } => {
            r.claim_queue.retain(|w| w.ticket != *ticket);
            r.slot_queue.retain(|w| w.ticket != *ticket);
            // Someone behind may go now.
            grant_queued(&mut r, seen, &mut events);
            RegistryOutcome::Ok
        }
        Request::Unclaim { who, paths } => {
            let mut released = Vec::new();
            let mut not_held = Vec::new();
            match paths {
                None => {
                    for c in r.claims.iter().filter(|c| c.agent == who.agent) {
                        released.extend(c.paths.iter().cloned());
                    }
                    r.claims.retain(|c| c.agent != who.agent);
                }
                Some(paths) => {
                    for p in paths {
                        let mut found = false;
                        for c in r.claims.iter_mut().filter(|c| c.agent == who.agent) {
                            let before = c.paths.len();
                            c.paths.retain(|q| q != p);
                            found |= c.paths.len() != before;
                        }
                        if found {
                            released.push(p.clone());
                        } else {
                            not_held.push(p.clone());
                        }
                    }
                    r.claims.retain(|c| !c.paths.is_empty());
                }
            }
            if !released.is_empty() {
                events.push(
                    serde_json::json!({"event": "release", "agent": who.agent, "paths": released}),
                );
            }
            grant_queued(&mut r, seen, &mut events);
            RegistryOutcome::Released { released, not_held }
        }
        Request::Done { who } => {
            let released = r.claims.iter().filter(|c| c.agent == who.agent).count();
            let paths: Vec<String> = r
                .claims
                .iter()
                .filter(|c| c.agent == who.agent)
                .flat_map(|c| c.paths.iter().cloned())
                .collect();
            r.claims.retain(|c| c.agent != who.agent);
            r.claim_queue.retain(|w| w.agent != who.agent);
            if let Some(a) = r.agents.get_mut(&who.agent) {
                a.done = true;
                a.blocked = None;
            }
            events.push(serde_json::json!({"event": "done", "agent": who.agent, "paths": paths}));
            grant_queued(&mut r, seen, &mut events);
            RegistryOutcome::Done { released }
        }
        Request::Slot { who, ticket } => slot(&mut r, seen, who, *ticket),
        Request::SlotRelease { ticket } => {
            r.slots.retain(|h| h.ticket != *ticket);
            r.slot_queue.retain(|w| w.ticket != *ticket);
            RegistryOutcome::Ok
        }
        Request::Blocked { who, on } => {
            // The conflict itself is recorded by the guard, once per refused commit.
            if let Some(a) = r.agents.get_mut(&who.agent) {
                a.blocked = on.clone();
            }
            RegistryOutcome::Ok
        }
        Request::Settle => RegistryOutcome::Ok,
    };
    (r, decision, events)
}

/// Who registers with a request. A waiter looking again does not: its look must change nothing
/// when nothing happened, or every look would rewrite the registry and wake every other waiter
/// (its signs of life go through `touch` instead).
fn request_who(request: &Request) -> Option<&Who> {
    match request {
        Request::Claim {
            who, ticket: None, ..
        }
        | Request::Unclaim { who, .. }
        | Request::Done { who }
        | Request::Slot { who, ticket: None }
        | Request::Blocked { who, .. } => Some(who),
        _ => None,
    }
}

/// Records a sign of life of `who`; any request but `done` means it is at work again.
fn register(r: &mut Registry, who: &Who, now: Millis) {
    let entry = r
        .agents
        .entry(who.agent.clone())
        .or_insert_with(|| AgentRecord {
            priority: who.priority,
            last_seen: now,
            host: who.process.host.clone(),
            pid: who.process.pid,
            worktree: who.worktree.clone(),
            branch: who.branch.clone(),
            done: false,
            blocked: None,
        });
    entry.priority = who.priority;
    entry.last_seen = entry.last_seen.max(now);
    entry.host = who.process.host.clone();
    entry.pid = who.process.pid;
    entry.worktree = who.worktree.clone();
    entry.branch = who.branch.clone();
    entry.done = false;
}

/// Lapses claims, drops dead waiters and holders, forgets long-silent agents, grants what can be
/// granted.
fn settle(r: &mut Registry, seen: &RegistryObserved, events: &mut Vec<HistoryEvent>) {
    let (now, ttl) = (seen.now, seen.ttl);
    let reg = r.clone();
    r.claims.retain(|c| {
        let at = c.lapses_at(&reg, ttl);
        let live = at > now;
        if !live {
            events.push(
                serde_json::json!({"event": "lapse", "agent": c.agent, "paths": c.paths,
                "mode": c.mode, "reason": if c.until.is_some() { "for" } else { "ttl" },
                "lapsed_ms": at}),
            );
        }
        live
    });
    r.claim_queue.retain(|w| !seen.dead.contains(&w.ticket));
    r.slot_queue.retain(|w| !seen.dead.contains(&w.ticket));
    // A free slot lock means its holder is gone (or released and has not yet said so).
    r.slots.retain(|h| !seen.free_slots.contains(&h.slot));
    for a in &seen.unblocked {
        if let Some(rec) = r.agents.get_mut(a) {
            rec.blocked = None;
        }
    }
    // Agents silent for a ttl with nothing in the registry are forgotten (keeps the file small).
    let busy: BTreeSet<String> = r
        .claims
        .iter()
        .map(|c| c.agent.clone())
        .chain(r.claim_queue.iter().map(|w| w.agent.clone()))
        .chain(r.slot_queue.iter().map(|w| w.agent.clone()))
        .chain(r.slots.iter().map(|h| h.agent.clone()))
        .collect();
    r.agents
        .retain(|name, a| busy.contains(name) || a.last_seen.saturating_add(ttl) > now);
    grant_queued(r, seen, events);
}

/// Grants queued claim requests in order while nothing in front of them conflicts.
fn grant_queued(r: &mut Registry, seen: &RegistryObserved, events: &mut Vec<HistoryEvent>) {
    loop {
        let order: Vec<ClaimWaiter> = r.claim_order().into_iter().cloned().collect();
        let mut granted = None;
        for (i, w) in order.iter().enumerate() {
            if blockers(r, seen, &order[..i], w).is_empty() {
                granted = Some(w.clone());
                break;
            }
        }
        let Some(w) = granted else { return };
        r.claim_queue.retain(|q| q.ticket != w.ticket);
        let claim = grant(r, seen, &w);
        events.push(serde_json::json!({"event": "claim", "agent": claim.agent, "paths": claim.paths,
            "mode": claim.mode, "until": claim.until, "waited_ms": seen.now.saturating_sub(w.arrived)}));
    }
}

/// What stands in the way of `w`: live claims of others, and conflicting requests ahead of it.
fn blockers(
    r: &Registry,
    seen: &RegistryObserved,
    ahead: &[ClaimWaiter],
    w: &ClaimWaiter,
) -> Vec<Conflict> {
    let mut out = r.conflicts(&w.agent, &w.paths, w.mode, seen.now, seen.ttl);
    for a in ahead {
        if a.agent == w.agent || compatible(a.mode, w.mode) {
            continue;
        }
        for theirs in &a.paths {
            for ours in &w.paths {
                if overlap(theirs, ours) {
                    out.push(Conflict {
                        agent: a.agent.clone(),
                        theirs: theirs.clone(),
                        ours: ours.clone(),
                        mode: a.mode,
                        until: None,
                        queued: true,
                    });
                }
            }
        }
    }
    out
}

fn grant(r: &mut Registry, seen: &RegistryObserved, w: &ClaimWaiter) -> Claim {
    // Claiming the same paths again in the same mode replaces the older claim (a renewal).
    r.claims
        .retain(|c| !(c.agent == w.agent && c.mode == w.mode && c.paths == w.paths));
    let claim = Claim {
        id: w.ticket,
        agent: w.agent.clone(),
        paths: w.paths.clone(),
        mode: w.mode,
        granted: seen.now,
        until: w.term.map(|t| seen.now.saturating_add(t)),
    };
    r.claims.push(claim.clone());
    if let Some(a) = r.agents.get_mut(&w.agent) {
        a.done = false;
    }
    claim
}

#[allow(clippy::too_many_arguments)]
fn claim(
    r: &mut Registry,
    seen: &RegistryObserved,
    who: &Who,
    paths: &[String],
    mode: Mode,
    term: Option<Millis>,
    wait: bool,
    ticket: Option<u64>,
    events: &mut Vec<HistoryEvent>,
) -> RegistryOutcome {
    let ticket = match ticket {
        // Looking again: granted meanwhile (by settle), still queued, or gone.
        Some(t) => {
            if let Some(c) = r.claims.iter().find(|c| c.id == t) {
                return RegistryOutcome::Granted { claim: c.clone() };
            }
            if !r.claim_queue.iter().any(|w| w.ticket == t) {
                return RegistryOutcome::Gone;
            }
            t
        }
        None => {
            r.seq += 1;
            r.claim_queue.push(ClaimWaiter {
                ticket: r.seq,
                agent: who.agent.clone(),
                paths: paths.to_vec(),
                mode,
                priority: who.priority,
                term,
                process: who.process.clone(),
                arrived: seen.now,
            });
            r.seq
        }
    };
    let order: Vec<ClaimWaiter> = r.claim_order().into_iter().cloned().collect();
    let i = order
        .iter()
        .position(|w| w.ticket == ticket)
        .unwrap_or_default();
    let me = order[i].clone();
    let conflicts = blockers(r, seen, &order[..i], &me);
    if conflicts.is_empty() {
        r.claim_queue.retain(|w| w.ticket != ticket);
        let claim = grant(r, seen, &me);
        events.push(
            serde_json::json!({"event": "claim", "agent": claim.agent, "paths": claim.paths,
            "mode": claim.mode, "until": claim.until,
            "waited_ms": seen.now.saturating_sub(me.arrived)}),
        );
        return RegistryOutcome::Granted { claim };
    }
    if !wait {
        r.claim_queue.retain(|w| w.ticket != ticket);
        events.push(
            serde_json::json!({"event": "conflict", "agent": who.agent, "paths": paths,
            "mode": mode, "holder": conflicts[0].agent, "by": "claim"}),
        );
        return RegistryOutcome::Refused { conflicts };
    }
    RegistryOutcome::Queued {
        ticket,
        position: i,
        conflicts,
    }
}

fn slot(
    r: &mut Registry,
    seen: &RegistryObserved,
    who: &Who,
    ticket: Option<u64>,
) -> RegistryOutcome {
    let ticket = match ticket {
        Some(t) if r.slot_queue.iter().any(|w| w.ticket == t) => t,
        Some(_) => return RegistryOutcome::Gone,
        None => {
            r.seq += 1;
            r.slot_queue.push(SlotWaiter {
                ticket: r.seq,
                agent: who.agent.clone(),
                priority: who.priority,
                process: who.process.clone(),
                arrived: seen.now,
            });
            r.seq
        }
    };
    // Free slots not yet claimed by a holder entry (a holder that took its lock has an entry).
    let free: Vec<usize> = seen
        .free_slots
        .iter()
        .copied()
        .filter(|s| !r.slots.iter().any(|h| h.slot == *s))
        .collect();
    let order = r.slot_order();
    let position = order
        .iter()
        .position(|w| w.ticket == ticket)
        .unwrap_or_default();
    if position < free.len() {
        let slot = free[position];
        let i = r
            .slot_queue
            .iter()
            .position(|w| w.ticket == ticket)
            .unwrap_or_default();
        let w = r.slot_queue.remove(i);
        r.slots.push(SlotHolder {
            slot,
            ticket,
            agent: w.agent,
            process: w.process,
            since: seen.now,
        });
        return RegistryOutcome::TakeSlot { ticket, slot };
    }
    let mut running = r.slots.clone();
    running.sort_by_key(|h| h.slot);
    RegistryOutcome::SlotQueued {
        ticket,
        position,
        running,
    }
}

/// An agent's state (see the module header). `fixing` / `waiting` come from the build state.
pub fn agent_state(reg: &Registry, agent: &str, fixing: bool, waiting: bool) -> &'static str {
    if reg.slots.iter().any(|h| h.agent == agent) {
        "checking"
    } else if reg.slot_queue.iter().any(|w| w.agent == agent) {
        "queued"
    } else if reg.claim_queue.iter().any(|w| w.agent == agent)
        || reg.agents.get(agent).is_some_and(|a| a.blocked.is_some())
    {
        "blocked"
    } else if fixing {
        "fixing"
    } else if waiting {
        "waiting"
    } else if reg.agents.get(agent).is_some_and(|a| a.done) {
        "done"
    } else {
        "idle"
    }
}

/// Parses a priority given on the command line or in `BUILDLOCK_PRIORITY`.
pub fn parse_priority(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u8>() {
        Ok(p) if PRIORITY_RANGE.contains(&p) => Ok(p),
        _ => Err(format!(
            "bad priority {text:?}: write a whole number from 1 (highest) to 5 (lowest); the default is {DEFAULT_PRIORITY}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_795_341_600_000;
    const TTL: Millis = 600_000;

    fn who(agent: &str, priority: u8) -> Who {
        Who {
            agent: agent.into(),
            priority,
            process: Process {
                pid: 100,
                host: "box".into(),
                start: Some(1),
                token: None,
                pid_space: None,
            },
            worktree: format!("/w/{agent}"),
            branch: agent.into(),
        }
    }

    fn seen(now: Millis) -> RegistryObserved {
        RegistryObserved {
            now,
            ttl: TTL,
            dead: BTreeSet::new(),
            unblocked: BTreeSet::new(),
            free_slots: Vec::new(),
        }
    }

    fn claim_req(agent: &str, paths: &[&str], mode: Mode, wait: bool) -> Request {
        Request::Claim {
            who: who(agent, DEFAULT_PRIORITY),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            mode,
            term: None,
            wait,
            ticket: None,
        }
    }

    fn step(r: &Registry, req: Request, now: Millis) -> (Registry, RegistryOutcome) {
        let (r, d, _) = decide(r, &req, &seen(now));
        (r, d)
    }

    #[test]
    fn exclusive_claims_exclude_overlapping_claims_of_others() {
        let (r, d) = step(
            &Registry::default(),
            claim_req("a", &["src/api/*"], Mode::Exclusive, false),
            T0,
        );
        assert!(matches!(d, RegistryOutcome::Granted { .. }));
        let (r2, d) = step(
            &r,
            claim_req("b", &["src/api/x.py"], Mode::Exclusive, false),
            T0 + 1,
        );
        match d {
            RegistryOutcome::Refused { conflicts } => {
                assert_eq!(conflicts[0].agent, "a");
                assert_eq!(conflicts[0].theirs, "src/api/*");
                assert_eq!(conflicts[0].until, Some(T0 + TTL));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r2.claims, r.claims, "a refusal changes no claim");
        assert!(r2.claim_queue.is_empty());
        let (_, d) = step(
            &r,
            claim_req("b", &["src/api/x.py"], Mode::Shared, false),
            T0 + 1,
        );
        assert!(
            matches!(d, RegistryOutcome::Refused { .. }),
            "shared conflicts with exclusive"
        );
        let (_, d) = step(
            &r,
            claim_req("b", &["docs"], Mode::Exclusive, false),
            T0 + 1,
        );
        assert!(
            matches!(d, RegistryOutcome::Granted { .. }),
            "disjoint paths"
        );
        let (_, d) = step(
            &r,
            claim_req("a", &["src/api/x.py"], Mode::Exclusive, false),
            T0 + 1,
        );
        assert!(
            matches!(d, RegistryOutcome::Granted { .. }),
            "own claims never conflict"
        );
    }

    #[test]
    fn shared_claims_coexist_and_keep_exclusive_out() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["docs/"], Mode::Shared, false),
            T0,
        );
        let (r, d) = step(&r, claim_req("b", &["docs/x.md"], Mode::Shared, false), T0);
        assert!(matches!(d, RegistryOutcome::Granted { .. }));
        assert_eq!(r.claims.len(), 2);
        let (_, d) = step(&r, claim_req("c", &["docs/*"], Mode::Exclusive, false), T0);
        match d {
            RegistryOutcome::Refused { conflicts } => assert_eq!(conflicts.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_waiting_claim_is_granted_on_release_in_priority_then_arrival_order() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("holder", &["src/"], Mode::Exclusive, false),
            T0,
        );
        let req = |agent: &str, prio: u8| Request::Claim {
            who: who(agent, prio),
            paths: vec!["src/x".into()],
            mode: Mode::Exclusive,
            term: None,
            wait: true,
            ticket: None,
        };
        let (r, d1) = step(&r, req("low", 5), T0 + 1);
        let (r, d2) = step(&r, req("mid-1", 3), T0 + 2);
        let (r, d3) = step(&r, req("high", 1), T0 + 3);
        let (r, d4) = step(&r, req("mid-2", 3), T0 + 4);
        for d in [&d1, &d2, &d3, &d4] {
            assert!(matches!(d, RegistryOutcome::Queued { .. }), "{d:?}");
        }
        assert!(matches!(d3, RegistryOutcome::Queued { position: 0, .. }));
        assert!(matches!(d4, RegistryOutcome::Queued { position: 2, .. }));
        let mut r = r;
        let mut order = Vec::new();
        let mut holder = "holder".to_owned();
        for _ in 0..4 {
            let (next, _) = step(
                &r,
                Request::Done {
                    who: who(&holder, 3),
                },
                T0 + 10,
            );
            holder = next
                .claims
                .iter()
                .find(|c| c.paths == ["src/x"])
                .unwrap()
                .agent
                .clone();
            order.push(holder.clone());
            r = next;
        }
        assert_eq!(order, ["high", "mid-1", "mid-2", "low"]);
    }

    #[test]
    fn a_new_claim_does_not_overtake_a_conflicting_waiter_ahead_of_it() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("h", &["src/a"], Mode::Exclusive, false),
            T0,
        );
        // w waits for src (which covers src/a).
        let (r, _) = step(&r, claim_req("w", &["src/"], Mode::Exclusive, true), T0 + 1);
        // n wants src/b: free of claims, but w (same priority, earlier) wants all of src.
        let (r2, d) = step(
            &r,
            claim_req("n", &["src/b"], Mode::Exclusive, false),
            T0 + 2,
        );
        match d {
            RegistryOutcome::Refused { conflicts } => {
                assert!(conflicts[0].queued && conflicts[0].agent == "w")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r2.claim_queue.len(), 1);
        // A higher priority newcomer goes first.
        let req = Request::Claim {
            who: who("urgent", 1),
            paths: vec!["src/b".into()],
            mode: Mode::Exclusive,
            term: None,
            wait: false,
            ticket: None,
        };
        let (_, d) = step(&r, req, T0 + 2);
        assert!(matches!(d, RegistryOutcome::Granted { .. }), "{d:?}");
    }

    #[test]
    fn a_waiter_looking_again_learns_it_was_granted_or_is_gone() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("h", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, d) = step(&r, claim_req("w", &["x"], Mode::Exclusive, true), T0);
        let RegistryOutcome::Queued { ticket, .. } = d else {
            panic!("{d:?}")
        };
        let again = |r: &Registry, now| {
            step(
                r,
                Request::Claim {
                    who: who("w", 3),
                    paths: vec!["x".into()],
                    mode: Mode::Exclusive,
                    term: None,
                    wait: true,
                    ticket: Some(ticket),
                },
                now,
            )
        };
        assert!(matches!(
            again(&r, T0 + 1).1,
            RegistryOutcome::Queued { .. }
        ));
        let (done, _) = step(&r, Request::Done { who: who("h", 3) }, T0 + 2);
        assert!(matches!(
            again(&done, T0 + 3).1,
            RegistryOutcome::Granted { .. }
        ));
        let (left, _) = step(&r, Request::Leave { ticket }, T0 + 2);
        assert!(matches!(again(&left, T0 + 3).1, RegistryOutcome::Gone));
        assert!(left.claim_queue.is_empty());
    }

    #[test]
    fn claims_lapse_after_ttl_of_silence_or_at_their_term() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["x"], Mode::Exclusive, false),
            T0,
        );
        assert_eq!(r.live_claims(T0 + TTL - 1, TTL).count(), 1);
        assert_eq!(r.live_claims(T0 + TTL, TTL).count(), 0);
        // A sign of life (any request) extends it.
        let (r2, _) = step(
            &r,
            claim_req("a", &["y"], Mode::Exclusive, false),
            T0 + TTL / 2,
        );
        assert_eq!(r2.live_claims(T0 + TTL, TTL).count(), 2);
        // Settling after the lapse drops it, logs it, and lets another agent in.
        let (r3, d, events) = decide(
            &r,
            &claim_req("b", &["x"], Mode::Exclusive, false),
            &seen(T0 + TTL),
        );
        assert!(matches!(d, RegistryOutcome::Granted { .. }));
        assert_eq!(events[0]["event"], "lapse");
        assert_eq!(events[0]["reason"], "ttl");
        assert_eq!(r3.claims.len(), 1);
        // --for: a fixed term, not renewed by activity and not cut by the ttl.
        let req = Request::Claim {
            who: who("c", 3),
            paths: vec!["z".into()],
            mode: Mode::Exclusive,
            term: Some(3 * TTL),
            wait: false,
            ticket: None,
        };
        let (r4, _) = step(&Registry::default(), req, T0);
        assert_eq!(r4.live_claims(T0 + 2 * TTL, TTL).count(), 1);
        assert_eq!(r4.live_claims(T0 + 3 * TTL, TTL).count(), 0);
    }

    #[test]
    fn a_look_that_finds_nothing_new_changes_nothing() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("h", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, d) = step(&r, claim_req("w", &["x"], Mode::Exclusive, true), T0);
        let RegistryOutcome::Queued { ticket, .. } = d else {
            panic!()
        };
        let look = Request::Claim {
            who: who("w", 3),
            paths: vec!["x".into()],
            mode: Mode::Exclusive,
            term: None,
            wait: true,
            ticket: Some(ticket),
        };
        let (after, d, events) = decide(&r, &look, &seen(T0 + 500));
        assert!(matches!(d, RegistryOutcome::Queued { .. }));
        assert_eq!(after, r, "no write, so no waiter is woken");
        assert!(events.is_empty());
        let (r, d, _) = decide(
            &r,
            &Request::Slot {
                who: who("s", 3),
                ticket: None,
            },
            &seen(T0),
        );
        let RegistryOutcome::SlotQueued { ticket, .. } = d else {
            panic!("{d:?}")
        };
        let (after, _, _) = decide(
            &r,
            &Request::Slot {
                who: who("s", 3),
                ticket: Some(ticket),
            },
            &seen(T0 + 9),
        );
        assert_eq!(after, r);
    }

    #[test]
    fn dead_waiters_leave_the_queue() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("h", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, d) = step(&r, claim_req("w", &["x"], Mode::Exclusive, true), T0);
        let RegistryOutcome::Queued { ticket, .. } = d else {
            panic!()
        };
        let mut s = seen(T0 + 1);
        s.dead.insert(ticket);
        let (r, _, _) = decide(&r, &Request::Settle, &s);
        assert!(r.claim_queue.is_empty());
    }

    #[test]
    fn unclaim_releases_exact_pathspecs_and_reports_the_rest() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["x", "y"], Mode::Exclusive, false),
            T0,
        );
        let (r, d, ev) = decide(
            &r,
            &Request::Unclaim {
                who: who("a", 3),
                paths: Some(vec!["x".into(), "z".into()]),
            },
            &seen(T0),
        );
        assert_eq!(
            d,
            RegistryOutcome::Released {
                released: vec!["x".into()],
                not_held: vec!["z".into()]
            }
        );
        assert_eq!(r.claims[0].paths, ["y"]);
        assert_eq!(ev[0]["event"], "release");
        let (r, d) = step(
            &r,
            Request::Unclaim {
                who: who("a", 3),
                paths: None,
            },
            T0,
        );
        assert_eq!(
            d,
            RegistryOutcome::Released {
                released: vec!["y".into()],
                not_held: vec![]
            }
        );
        assert!(r.claims.is_empty());
        // Another agent cannot release a's claims.
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, d) = step(
            &r,
            Request::Unclaim {
                who: who("b", 3),
                paths: None,
            },
            T0,
        );
        assert_eq!(
            d,
            RegistryOutcome::Released {
                released: vec![],
                not_held: vec![]
            }
        );
        assert_eq!(r.claims.len(), 1);
    }

    #[test]
    fn done_releases_everything_and_marks_the_agent() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, _) = step(&r, claim_req("a", &["y"], Mode::Shared, false), T0);
        let (r, d, ev) = decide(&r, &Request::Done { who: who("a", 3) }, &seen(T0));
        assert_eq!(d, RegistryOutcome::Done { released: 2 });
        assert!(r.claims.is_empty());
        assert!(r.agents["a"].done);
        assert_eq!(agent_state(&r, "a", false, false), "done");
        assert!(ev.iter().any(|e| e["event"] == "done"));
        // Claiming again means at work again.
        let (r, _) = step(&r, claim_req("a", &["x"], Mode::Exclusive, false), T0);
        assert_eq!(agent_state(&r, "a", false, false), "idle");
    }

    #[test]
    fn claiming_the_same_paths_again_renews_rather_than_duplicates() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["x"], Mode::Exclusive, false),
            T0,
        );
        let (r, _) = step(&r, claim_req("a", &["x"], Mode::Exclusive, false), T0 + 5);
        assert_eq!(r.claims.len(), 1);
        assert_eq!(r.claims[0].granted, T0 + 5);
    }

    #[test]
    fn the_guard_sees_only_live_exclusive_claims_of_others() {
        let (r, _) = step(
            &Registry::default(),
            claim_req("a", &["src/api/*"], Mode::Exclusive, false),
            T0,
        );
        let (r, _) = step(&r, claim_req("s", &["docs/"], Mode::Shared, false), T0);
        let changed = vec![
            "src/api/x.py".to_owned(),
            "docs/a.md".to_owned(),
            "README".to_owned(),
        ];
        let c = r.guard("b", &changed, T0 + 1, TTL);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].path.as_str(), c[0].agent.as_str(), c[0].until),
            ("src/api/x.py", "a", T0 + TTL)
        );
        assert!(r.guard("a", &changed, T0 + 1, TTL).is_empty(), "own claim");
        assert!(r.guard("b", &changed, T0 + TTL, TTL).is_empty(), "lapsed");
        assert!(r.others_claim("b", T0, TTL));
        assert!(!r.others_claim("a", T0, TTL));
    }

    fn slot_seen(now: Millis, free: &[usize]) -> RegistryObserved {
        RegistryObserved {
            free_slots: free.to_vec(),
            ..seen(now)
        }
    }

    #[test]
    fn slots_go_in_priority_then_arrival_order_and_nobody_overtakes() {
        let r = Registry::default();
        let ask = |r: &Registry, agent: &str, prio: u8, free: &[usize]| {
            decide(
                r,
                &Request::Slot {
                    who: who(agent, prio),
                    ticket: None,
                },
                &slot_seen(T0, free),
            )
        };
        // Two slots, both free: the first two take them.
        let (r, d, _) = ask(&r, "a", 3, &[0, 1]);
        let RegistryOutcome::TakeSlot {
            ticket: ta,
            slot: 0,
        } = d
        else {
            panic!("{d:?}")
        };
        let (r, d, _) = ask(&r, "b", 3, &[1]);
        assert!(
            matches!(d, RegistryOutcome::TakeSlot { slot: 1, .. }),
            "{d:?}"
        );
        assert_eq!(r.slots.len(), 2);
        assert!(r.slot_queue.is_empty());
        // Now everyone queues; c (5) first, then d (1): d goes first.
        let (r, dc, _) = ask(&r, "c", 5, &[]);
        let (r, dd, _) = ask(&r, "d", 1, &[]);
        let RegistryOutcome::SlotQueued {
            ticket: tc,
            position: 0,
            ref running,
        } = dc
        else {
            panic!("{dc:?}")
        };
        assert_eq!(running.len(), 2);
        let RegistryOutcome::SlotQueued {
            ticket: td,
            position: 0,
            ..
        } = dd
        else {
            panic!("{dd:?}")
        };
        assert_eq!(agent_state(&r, "a", false, false), "checking");
        assert_eq!(agent_state(&r, "c", false, false), "queued");
        // a's slot frees: c looks first but d is ahead of it.
        let look = |r: &Registry, agent: &str, prio: u8, t: u64, free: &[usize]| {
            decide(
                r,
                &Request::Slot {
                    who: who(agent, prio),
                    ticket: Some(t),
                },
                &slot_seen(T0 + 1, free),
            )
            .1
        };
        let (r, _, _) = decide(
            &r,
            &Request::SlotRelease { ticket: ta },
            &slot_seen(T0 + 1, &[0]),
        );
        assert!(matches!(
            look(&r, "c", 5, tc, &[0]),
            RegistryOutcome::SlotQueued { position: 1, .. }
        ));
        assert_eq!(
            look(&r, "d", 1, td, &[0]),
            RegistryOutcome::TakeSlot {
                ticket: td,
                slot: 0
            }
        );
    }

    #[test]
    fn a_slot_whose_lock_is_free_is_free_even_if_its_holder_never_said_so() {
        let (r, d, _) = decide(
            &Registry::default(),
            &Request::Slot {
                who: who("a", 3),
                ticket: None,
            },
            &slot_seen(T0, &[0]),
        );
        assert!(matches!(d, RegistryOutcome::TakeSlot { slot: 0, .. }));
        assert_eq!(r.slots.len(), 1);
        // Busy while its lock is held.
        let (r2, d, _) = decide(
            &r,
            &Request::Slot {
                who: who("b", 3),
                ticket: None,
            },
            &slot_seen(T0, &[]),
        );
        assert!(matches!(d, RegistryOutcome::SlotQueued { position: 0, .. }));
        assert_eq!(r2.slots[0].agent, "a");
        // a was SIGKILLed: its lock is free; b gets slot 0 and a's entry goes.
        let (r, d, _) = decide(
            &r,
            &Request::Slot {
                who: who("b", 3),
                ticket: None,
            },
            &slot_seen(T0, &[0]),
        );
        assert!(matches!(d, RegistryOutcome::TakeSlot { slot: 0, .. }));
        assert_eq!(r.slots.len(), 1);
        assert_eq!(r.slots[0].agent, "b");
    }

    #[test]
    fn agent_states() {
        let mut r = Registry::default();
        register(&mut r, &who("x", 3), T0);
        assert_eq!(agent_state(&r, "x", false, false), "idle");
        assert_eq!(agent_state(&r, "x", true, false), "fixing");
        assert_eq!(agent_state(&r, "x", false, true), "waiting");
        r.agents.get_mut("x").unwrap().blocked = Some(Blocked {
            by: "y".into(),
            paths: vec!["a".into()],
            process: who("x", 3).process,
        });
        assert_eq!(agent_state(&r, "x", false, true), "blocked");
    }

    #[test]
    fn silent_agents_with_nothing_held_are_forgotten() {
        let mut r = Registry::default();
        register(&mut r, &who("x", 3), T0);
        let (r, _, _) = decide(&r, &Request::Settle, &seen(T0 + TTL + 1));
        assert!(r.agents.is_empty());
    }

    #[test]
    fn priorities_parse_within_one_to_five() {
        assert_eq!(parse_priority("1"), Ok(1));
        assert_eq!(parse_priority(" 5 "), Ok(5));
        for bad in ["0", "9", "", "x", "-1", "3.5", "300"] {
            assert!(parse_priority(bad).is_err(), "{bad:?}");
        }
    }
}
