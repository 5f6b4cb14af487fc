//! The ledger: what each transition adds to the counters and to the history. Pure: both
//! backends persist what these functions return, so their figures mean the same thing.

use serde::{Deserialize, Serialize};

use crate::protocol::state::{Event, KeyState, Outcome};

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
    pub fn count(&mut self, event: &Event, outcome: &Outcome, after: &KeyState) {
        if matches!(event, Event::Failed { .. }) && *outcome != Outcome::Stale {
            self.failures += 1;
        }
        match outcome {
            Outcome::Elected { replaced } => {
                self.elections += 1;
                self.fix_runs += 1;
                if replaced.is_some() {
                    self.takeovers += 1;
                }
            }
            Outcome::KeepFixing { .. } => self.fix_runs += 1,
            Outcome::Wait { first, .. } => {
                self.waits += 1;
                if *first {
                    self.fix_runs_avoided += 1;
                }
            }
            // Hit the failure, and needed no fix run: the build was fixed while its check ran.
            Outcome::Stale => self.fix_runs_avoided += 1,
            Outcome::Fixed => self.fixes += 1,
            _ => {}
        }
        self.generation = self.generation.max(after.generation);
    }
}

/// What the history records for one transition.
pub fn history_entries(
    key: &str,
    event: &Event,
    outcome: &Outcome,
    before: &KeyState,
    after: &KeyState,
) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut out = Vec::new();
    let generation = after.generation;
    match event {
        Event::Failed { agent, .. } if *outcome == Outcome::Stale => out.push(json!({
            "event": "stale", "key": key, "agent": agent.id, "generation": after.generation})),
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
            out.push(
                json!({"event": "failed", "key": key, "agent": agent.id, "signature": signature,
                            "log": log, "attempts": attempts}),
            );
        }
        Event::Passed { .. } | Event::Register { .. } => {}
        Event::Release { .. } | Event::Reset => {}
    }
    let fixer = |s: &KeyState| s.fixer.as_ref().map(|f| f.agent.clone());
    match outcome {
        Outcome::Elected { replaced: None } => {
            out.push(json!({"event": "elected", "key": key, "agent": fixer(after), "generation": generation}))
        }
        Outcome::Elected { replaced: Some((old, how)) } => out.push(json!({
            "event": "takeover", "key": key, "agent": fixer(after), "generation": generation,
            "from": old.agent, "reason": how})),
        Outcome::GaveUp { attempts } => out.push(json!({"event": "gave_up", "key": key,
            "agent": fixer(before), "generation": generation, "attempts": attempts})),
        Outcome::Wait { fixer: f, .. } => {
            if let Event::Failed { agent, .. } = event {
                out.push(json!({"event": "waiting", "key": key, "agent": agent.id, "fixer": f.agent,
                                "generation": generation}));
            }
        }
        Outcome::Fixed | Outcome::Recovered => {
            let agent = match event {
                Event::Passed { agent, .. } => agent.id.clone(),
                _ => String::new(),
            };
            let took = before.fixer.as_ref().map(|f| after.changed.saturating_sub(f.since));
            out.push(json!({"event": "fixed", "key": key, "agent": agent, "generation": generation,
                            "recovered": matches!(outcome, Outcome::Recovered), "took_ms": took}));
        }
        Outcome::Released => out.push(json!({"event": "released", "key": key, "agent": fixer(before),
                                             "generation": generation})),
        Outcome::Reset => out.push(json!({"event": "reset", "key": key, "generation": generation,
                                          "was": before.status.as_str()})),
        _ => {}
    }
    out
}
