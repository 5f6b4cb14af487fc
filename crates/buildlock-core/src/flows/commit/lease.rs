//! The fixer's lease: a heartbeat thread renews it while the fix runs, so a long fix is never
//! taken over while alive, and notices when it has been taken over, reset or released (fenced),
//! so the fixer stops. It renews every quarter of `stale_after`, and looks at the state more
//! often ([`Store::look_every`]): a fix whose role moved on is stopped within that, not at the
//! next renewal.
//!
//! The heartbeat takes no lock: it reads the state as any waiter does and writes its own lease
//! file (see `Store::write_lease`). A fixer that is SIGSTOPped mid-heartbeat therefore blocks
//! nobody: a stopped process keeps any flock it holds for as long as it stays stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::protocol::state::{Lease, Status};
use crate::store::{Read, Store};

pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    fenced: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Renews `agent`'s lease on `key` (generation `generation`) every quarter of `stale_after`
    /// while a fixer runs its fix, and looks whether it still holds the role every
    /// [`Store::look_every`], so that [`Heartbeat::fenced`] turns true promptly. (A role held
    /// without a fix running is kept by a [`SignOfLife`].)
    pub fn watching(
        store: Arc<dyn Store>,
        key: String,
        agent: String,
        generation: u64,
        stale_after: Duration,
    ) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let fenced = Arc::new(AtomicBool::new(false));
        let (stop2, fenced2) = (stop.clone(), fenced.clone());
        let every = (stale_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let look = store.look_every().min(every);
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            let mut next_look = Instant::now() + look;
            while !stop2.load(Ordering::SeqCst) {
                let now = Instant::now();
                let due = next.min(next_look);
                if now < due {
                    std::thread::park_timeout(due - now);
                    continue;
                }
                next_look = now + look;
                let renew = now >= next;
                let read = store.read_as_fixer(&key);
                if let Read::Unreachable(why) = &read {
                    if renew {
                        next = now + every;
                        crate::os::say::warn(format!("could not renew the fixer lease: {why}"));
                    }
                    continue;
                }
                match fenced_by(&read, &agent, generation) {
                    Some(true) => {
                        fenced2.store(true, Ordering::SeqCst);
                        return;
                    }
                    Some(false) => {}
                    // Not knowing is not being fenced: look again at the next beat.
                    None => continue,
                }
                // The role ended in our own fix: no lease left to renew, but a later
                // generation still fences what is left of the fix run.
                let fixing =
                    matches!(&read, Read::Found { state, .. } if state.status == Status::Fixing);
                if !renew || !fixing {
                    continue;
                }
                next = now + every;
                let lease = Lease {
                    agent: agent.clone(),
                    generation,
                    heartbeat: crate::os::time::now(),
                };
                if let Err(e) = store.write_lease(&key, &lease) {
                    crate::os::say::warn(format!("could not renew the fixer lease: {e:#}"));
                }
            }
        });
        Heartbeat {
            stop,
            fenced,
            thread: Some(thread),
        }
    }

    /// Whether another agent took the role over.
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }
}

/// An agent's one sign of life for every role it holds by hand (its hook's re-check): one
/// thread, renewing all of them through [`Store::renew_roles`] at once every quarter of
/// `stale_after` (one write with the local backend, however many roles), and nothing else: it
/// runs no fix, so it watches for no fencing.
pub struct SignOfLife {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SignOfLife {
    /// Renews `roles` (`(key, generation)`) now, then every quarter of `stale_after` until
    /// dropped. `None` when there is nothing to renew.
    pub fn start(
        store: Arc<dyn Store>,
        agent: String,
        roles: Vec<(String, u64)>,
        stale_after: Duration,
    ) -> Option<SignOfLife> {
        if roles.is_empty() {
            return None;
        }
        let renew = move |store: &dyn Store| {
            if let Err(e) = store.renew_roles(&agent, &roles, crate::os::time::now()) {
                crate::os::say::warn(format!("could not renew the fixer lease: {e:#}"));
            }
        };
        renew(store.as_ref());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let every = (stale_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !stop2.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now < next {
                    std::thread::park_timeout(next - now);
                    continue;
                }
                next = now + every;
                renew(store.as_ref());
            }
        });
        Some(SignOfLife {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SignOfLife {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Whether what was read says that `agent` no longer holds `generation`'s role: a later
/// generation (a takeover, a reset), or the same one no longer fixed by it (a release, given
/// up). `None` when the read says nothing sure: missing, damaged, unreachable, or an older
/// generation than ours (a view from before our election: generations never go back).
///
/// The same generation made passing by our own fix is not a fencing: a `fix.command` that
/// commits marks the key fixed from its commit's hook while its `git commit` still writes the
/// commit, and stopping it then would lose the fix commit (and its record) mid-write.
fn fenced_by(read: &Read, agent: &str, generation: u64) -> Option<bool> {
    match read {
        Read::Found { state, .. } if state.generation > generation => Some(true),
        Read::Found { state, .. } if state.generation == generation => {
            Some(!state.is_fixer(agent, generation) && !state.fixed_by(agent, generation))
        }
        _ => None,
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state::KeyState;

    fn found(state: KeyState) -> Read {
        Read::Found {
            base: "repo".into(),
            state,
        }
    }

    #[test]
    fn only_a_sure_read_fences() {
        let mut fixing = KeyState::passing("repo");
        fixing.generation = 3;
        fixing.status = crate::protocol::state::Status::Fixing;
        fixing.fixer = Some(crate::protocol::state::Fixer {
            agent: "a".into(),
            pid: None,
            host: "h".into(),
            start: None,
            since: 0,
            heartbeat: 0,
            attempts: 0,
            registered: true,
            fix_process: None,
            elector: None,
        });
        assert_eq!(fenced_by(&found(fixing.clone()), "a", 3), Some(false));
        assert_eq!(
            fenced_by(&found(fixing.clone()), "b", 3),
            Some(true),
            "another fixer"
        );
        let mut later = fixing.clone();
        later.generation = 4;
        assert_eq!(
            fenced_by(&found(later), "a", 3),
            Some(true),
            "taken over or reset"
        );
        let mut released = fixing.clone();
        released.status = crate::protocol::state::Status::Broken;
        released.fixer = None;
        assert_eq!(fenced_by(&found(released), "a", 3), Some(true), "released");
        // regression: the fixer's own fix commit marked the key fixed and its fix (the `git
        // commit` writing the fix commit) was stopped as if the role had been lost
        let mut fixed = fixing.clone();
        fixed.status = crate::protocol::state::Status::Passing;
        fixed.fixer = None;
        fixed.fix = Some(crate::protocol::state::Fix {
            commit: None,
            signature: None,
            signatures: Vec::new(),
            by: "a".into(),
            generation: 3,
            head_before: None,
            git_dir: None,
            committer: None,
            recorder: None,
            credited: Vec::new(),
        });
        assert_eq!(
            fenced_by(&found(fixed.clone()), "a", 3),
            Some(false),
            "our fix"
        );
        assert_eq!(
            fenced_by(&found(fixed.clone()), "b", 3),
            Some(true),
            "theirs"
        );
        let mut reset = fixed.clone();
        reset.generation = 4;
        assert_eq!(
            fenced_by(&found(reset), "a", 3),
            Some(true),
            "reset after it"
        );
        // regression: a view from before the election fenced a live fixer, whose fix was stopped
        let mut before = KeyState::passing("repo");
        before.generation = 2;
        assert_eq!(fenced_by(&found(before), "a", 3), None);
        assert_eq!(fenced_by(&Read::Missing, "a", 3), None);
        assert_eq!(fenced_by(&Read::Damaged("x".into()), "a", 3), None);
    }
}
