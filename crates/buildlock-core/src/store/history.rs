//! One line of the history (`history.jsonl`, or a remote state commit's message): what happened,
//! to which key, when, and the running totals on the last line of each append.
//!
//! The writers (`protocol::ledger`, the claims rules, the fix runner) still build their events as
//! JSON; [`Entry::from_json`] reads the envelope every event shares, and the fields particular to
//! each kind stay as written. On disk and in `buildlock log --json` an entry is one JSON object
//! with its keys in sorted order, byte for byte what was written before this type existed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::os::time::Millis;
use crate::protocol::ledger::Totals;

/// One history entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "Value")]
pub struct Entry {
    /// What happened: `failed`, `elected`, `fixed`, … (see `protocol::ledger`), `fix_started`,
    /// `fix_finished`, or a claims event (`claim`, `release`, `lapse`, `done`, `conflict`).
    #[serde(default)]
    pub event: String,
    /// The key it happened to (claims events have none).
    #[serde(default)]
    pub key: Option<String>,
    /// When, as people read it (RFC 3339), set by the store that appends it.
    #[serde(default)]
    pub time: Option<String>,
    /// When, in unix milliseconds, set with `time`.
    #[serde(default)]
    pub ms: Option<Millis>,
    /// The fields particular to the event (`agent`, `generation`, `log`, …) and `totals`, as
    /// written.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Entry {
    /// The entry a writer built as a JSON object (anything else is an entry with no event).
    pub fn from_json(value: Value) -> Entry {
        serde_json::from_value(value).unwrap_or_default()
    }

    /// The agent it is about, when it names one.
    pub fn agent(&self) -> Option<&str> {
        self.fields.get("agent").and_then(Value::as_str)
    }

    /// The running totals after this entry (on the last entry of each append).
    pub fn totals(&self) -> Option<Totals> {
        serde_json::from_value(self.fields.get("totals")?.clone()).ok()
    }

    /// Stamps the time it is appended at.
    pub fn stamp(&mut self, now: Millis) {
        self.time = Some(crate::os::time::rfc3339(now));
        self.ms = Some(now);
    }
}

/// The JSON object, keys sorted (as `serde_json` keeps them), absent fields left out.
impl From<Entry> for Value {
    fn from(e: Entry) -> Value {
        let mut map = e.fields;
        map.insert("event".into(), e.event.into());
        for (name, value) in [
            ("key", e.key.map(Value::from)),
            ("time", e.time.map(Value::from)),
            ("ms", e.ms.map(Value::from)),
        ] {
            if let Some(v) = value {
                map.insert(name.into(), v);
            }
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_line_reads_and_writes_back_byte_for_byte() {
        let lines = [
            r#"{"agent":"h:/w","attempts":null,"event":"failed","key":"repo","log":"/l","ms":1700000000000,"signature":"s","time":"2023-11-14T22:13:20Z"}"#,
            r#"{"agent":null,"event":"elected","generation":1,"key":"repo","ms":1,"time":"t","totals":{"failures":1}}"#,
            r#"{"agent":"a","by":"commit","event":"conflict","holder":"b","paths":["x"]}"#,
        ];
        for line in lines {
            let entry: Entry = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&entry).unwrap(), line);
        }
        let elected: Entry = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(elected.totals().unwrap().failures, 1);
        assert_eq!(elected.agent(), None);
        assert_eq!(elected.key.as_deref(), Some("repo"));
    }
}
