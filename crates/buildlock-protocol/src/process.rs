//! A process as the state records it. Acting on one (is it alive, stop its group) is
//! `os/process.rs`'s business.

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
}
