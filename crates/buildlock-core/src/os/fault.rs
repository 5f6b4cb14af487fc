//! Fault injection at named points, for the fault suite: `BUILDLOCK_FAULT=point[:action]`.
//!
//! Points: `election` (election lock taken, state not yet written), `state-write` (temp file
//! written, not yet renamed), `check` (check started), `fix` (fix command started), `wait`
//! (a waiter started waiting), `record-fix` (commit-retry's fix commit made, not yet recorded).
//! Actions: `kill` (SIGKILL ourselves, the default), `stop` (SIGSTOP ourselves), `hang` (sleep
//! for an hour).

pub fn point(name: &str) {
    let Some(spec) = crate::os::env::fault() else {
        return;
    };
    let (at, action) = spec.split_once(':').unwrap_or((spec.as_str(), "kill"));
    if at != name {
        return;
    }
    match action {
        "stop" => crate::os::process::raise(crate::os::signals::SIGSTOP),
        "hang" => std::thread::sleep(std::time::Duration::from_secs(3600)),
        _ => crate::os::process::raise(crate::os::signals::SIGKILL),
    }
}
