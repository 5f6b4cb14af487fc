//! The ledger: what each transition adds to the counters and to the history. Pure: both
//! backends persist what these functions return, so their figures mean the same thing.
//!
//! The figures, as `buildlock status` shows them:
//! - `failures`: failed checks recorded (a stale re-run is not one);
//! - `elections`: fixers elected, takeovers included; `takeovers`: of those, replacing a fixer
//!   that died, went silent, or held the key past `max_fix_time` (the history's `reason`:
//!   `dead`, `stale`, `overtime`);
//! - `waits`: agents told to wait for a fixer (once per agent and breakage);
//! - `fixes`: breakages fixed by their fixer;
//! - `fix_runs`: runs of `fix.command` (by commit-retry or `buildlock ci`);
//! - `fix_runs_avoided`: agents that hit a breakage and did not fix it themselves because its
//!   fixer did: the waiters when the fix came, and agents later told to take the fix commit;
//! - `saved` (in status): `fix_runs_avoided × fix.cost`.
//!
//! Totals and history cannot disagree: every history line carries the running totals after it,
//! written in one append; the totals are those of the last line.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::state::{Event, KeyState, Outcome};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    pub failures: u64,
    pub elections: u64,
    pub takeovers: u64,
    pub waits: u64,
    pub fixes: u64,
    pub fix_runs: u64,
    pub fix_runs_avoided: u64,
    /// The highest generation handed out in this domain.
    pub generation: u64,
}

impl Totals {
    pub fn count(&mut self, event: &Event, outcome: &Outcome, before: &KeyState, after: &KeyState) {
        if matches!(event, Event::Failed { .. }) && *outcome != Outcome::Stale {
            self.failures += 1;
        }
        let credited = |s: &KeyState| s.fix.as_ref().map_or(0, |f| f.credited.len() as u64);
        match outcome {
            Outcome::Elected { replaced } => {
                self.elections += 1;
                if replaced.is_some() {
                    self.takeovers += 1;
                }
            }
            Outcome::Wait { first: true, .. } => self.waits += 1,
            Outcome::Fixed => {
                self.fixes += 1;
                self.fix_runs_avoided += credited(after);
            }
            Outcome::TakeFix { .. } => {
                self.fix_runs_avoided += credited(after).saturating_sub(credited(before));
            }
            _ => {}
        }
        self.generation = self.generation.max(after.generation);
    }

    /// What a record that changes no state adds: a fix run started.
    pub fn count_record(&mut self, entry: &Value) {
        if entry["event"] == "fix_started" {
            self.fix_runs += 1;
        }
    }

    pub fn to_json(self, cost: f64) -> Value {
        json!({"failures": self.failures, "elections": self.elections,
               "takeovers": self.takeovers, "waits": self.waits, "fixes": self.fixes,
               "fix_runs": self.fix_runs, "fix_runs_avoided": self.fix_runs_avoided,
               "saved": self.fix_runs_avoided as f64 * cost, "generation": self.generation})
    }
}

/// What the history records for one transition.
pub fn history_entries(
    key: &str,
    event: &Event,
    outcome: &Outcome,
    before: &KeyState,
    after: &KeyState,
) -> Vec<Value> {
    let mut out = Vec::new();
    let generation = after.generation;
    match event {
        Event::Failed { agent, .. } if *outcome == Outcome::Stale => out.push(json!({
            "event": "stale", "key": key, "agent": agent.id, "generation": generation})),
        Event::Failed {
            agent,
            signature,
            log,
            ..
        } => {
            let attempts = after
                .fixer
                .as_ref()
                .filter(|f| f.agent == agent.id)
                .map(|f| f.attempts);
            out.push(json!({"event": "failed", "key": key, "agent": agent.id,
                            "signature": signature, "log": log, "attempts": attempts}));
        }
        _ => {}
    }
    let fixer = |s: &KeyState| s.fixer.as_ref().map(|f| f.agent.clone());
    match outcome {
        Outcome::Elected { replaced: None } => out.push(
            json!({"event": "elected", "key": key, "agent": fixer(after), "generation": generation}),
        ),
        Outcome::Elected {
            replaced: Some((old, how)),
        } => out.push(json!({
            "event": "takeover", "key": key, "agent": fixer(after), "generation": generation,
            "from": old.agent, "reason": how})),
        Outcome::GaveUp { attempts } => out.push(json!({"event": "gave_up", "key": key,
            "agent": fixer(before), "generation": generation, "attempts": attempts})),
        Outcome::Wait { fixer: f, first } => {
            if let (Event::Failed { agent, .. }, true) = (event, first) {
                out.push(json!({"event": "waiting", "key": key, "agent": agent.id,
                                "fixer": f.agent, "generation": generation}));
            }
        }
        Outcome::TakeFix { commit, by } => {
            if let Event::Failed { agent, .. } = event {
                out.push(json!({"event": "take_fix", "key": key, "agent": agent.id,
                                "commit": commit, "fixer": by, "generation": generation}));
            }
        }
        Outcome::Fixed | Outcome::Recovered => {
            let agent = match event {
                Event::Passed { agent, .. } => agent.id.clone(),
                _ => String::new(),
            };
            let took = before
                .fixer
                .as_ref()
                .map(|f| after.changed.saturating_sub(f.since));
            out.push(json!({"event": "fixed", "key": key, "agent": agent, "generation": generation,
                            "recovered": matches!(outcome, Outcome::Recovered), "took_ms": took,
                            "fix_commit": after.fix_commit()}));
        }
        Outcome::Committed => out.push(json!({"event": "fix_commit", "key": key,
            "agent": after.fix.as_ref().map(|f| f.by.clone()), "commit": after.fix_commit(),
            "generation": generation})),
        Outcome::Unwaited => {
            if let Event::Unwait { agent, .. } = event {
                out.push(json!({"event": "stopped_waiting", "key": key, "agent": agent,
                                "generation": generation}));
            }
        }
        Outcome::Released => out.push(json!({"event": "released", "key": key,
            "agent": fixer(before), "generation": generation})),
        Outcome::Reset => {
            // Who reset it (`buildlock reset` by an operator or an agent).
            let agent = match event {
                Event::Reset { agent } => Some(agent.as_str()),
                _ => None,
            };
            out.push(json!({"event": "reset", "key": key, "agent": agent,
                            "generation": generation, "was": before.status.as_str()}))
        }
        _ => {}
    }
    out
}
