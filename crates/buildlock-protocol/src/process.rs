//! A process as the state records it. Acting on one (is it alive, stop its group) is
//! `os/process.rs`'s business.
//!
//! # Identity
//!
//! A pid means a process only where it was recorded: on that host, in that boot, in that pid
//! namespace. Host names are not unique (two containers started with `--network host` share
//! theirs, and not their pids), so a record also carries its [`Process::pid_space`]: on Linux the
//! kernel's boot id and the inode of the pid namespace, which together name one pid space on one
//! machine. A pid is looked up only in the pid space it was recorded in ([`Process::visible_from`]);
//! a record from another one, or one without a pid space (written by an older version, or on an
//! OS that tells none), cannot be judged dead from here: its lease decides.

use serde::{Deserialize, Serialize};

/// The environment variable that carries a fix run's token (see [`Process::token`]), so that only
/// that run can be identified as the fix to stop.
pub const FIX_TOKEN_VAR: &str = "BUILDLOCK_FIX_TOKEN";

/// One process of one agent, as recorded in state. `pid` and `start` are shown to people; a fix
/// process is acted on only through its `token` (see `os::process::stop_group`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub host: String,
    /// Process start time in clock ticks since boot (Linux `/proc/<pid>/stat` field 22).
    pub start: Option<u64>,
    /// A secret that only this process's environment carries (`BUILDLOCK_FIX_TOKEN`), so that a
    /// crafted or stale state can never make buildlock signal an unrelated process group.
    #[serde(default)]
    pub token: Option<String>,
    /// The pid space `pid` belongs to (see the module's doc): `<boot id>/<pid namespace inode>`
    /// on Linux. `None` in records of older versions and where the OS tells none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_space: Option<String>,
}

impl Process {
    /// Whether `pid` can be looked up by a process on `host` in pid space `space`: the same host
    /// name and the same pid space, both known. Only then can this record be judged dead.
    pub fn visible_from(&self, host: &str, space: Option<&str>) -> bool {
        visible(&self.host, self.pid_space.as_deref(), host, space)
    }
}

/// Whether a pid recorded on `host` in pid space `space` can be looked up from `here_host` in
/// `here_space`: both pid spaces known and equal, on the same host name.
pub fn visible(host: &str, space: Option<&str>, here_host: &str, here_space: Option<&str>) -> bool {
    host == here_host && space.is_some() && space == here_space
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(host: &str, space: Option<&str>) -> Process {
        Process {
            pid: 42,
            host: host.into(),
            start: Some(7),
            token: None,
            pid_space: space.map(str::to_owned),
        }
    }

    #[test]
    fn a_pid_is_looked_up_only_in_the_pid_space_it_was_recorded_in() {
        let here = Some("boot-a/4026531836");
        assert!(p("box", here).visible_from("box", here));
        // Same host name, another container: another pid namespace, or another boot.
        assert!(!p("box", Some("boot-a/4026532000")).visible_from("box", here));
        assert!(!p("box", Some("boot-b/4026531836")).visible_from("box", here));
        // Another host with the same pid space text cannot be (boot ids are random): still no.
        assert!(!p("other", here).visible_from("box", here));
        // A record of an older version, or a host that tells no pid space: never.
        assert!(!p("box", None).visible_from("box", here));
        assert!(!p("box", here).visible_from("box", None));
        assert!(!p("box", None).visible_from("box", None));
    }

    #[test]
    fn records_of_older_versions_still_read() {
        let old: Process =
            serde_json::from_str(r#"{"pid": 42, "host": "box", "start": 7}"#).unwrap();
        assert_eq!(old, p("box", None));
        let new = serde_json::to_string(&p("box", Some("b/1"))).unwrap();
        assert!(new.contains(r#""pid_space":"b/1""#), "{new}");
        let back: Process = serde_json::from_str(&new).unwrap();
        assert_eq!(back, p("box", Some("b/1")));
        // None is not written: an older version reads the record as it always did.
        let none = serde_json::to_string(&p("box", None)).unwrap();
        assert!(!none.contains("pid_space"), "{none}");
    }
}
