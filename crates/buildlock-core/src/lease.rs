//! The fixer's lease: a heartbeat thread renews it while the fix runs, so a long fix is never
//! taken over while alive, and notices when it has been taken over (fenced), so the fixer stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::state::{Event, Outcome};
use crate::store::{Policy, Store};

pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    fenced: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Renews `agent`'s lease on `key` (generation `generation`) every quarter lease.
    pub fn start(
        store_dir: std::path::PathBuf,
        key: String,
        base: String,
        agent: String,
        generation: u64,
        policy: Policy,
    ) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let fenced = Arc::new(AtomicBool::new(false));
        let (stop2, fenced2) = (stop.clone(), fenced.clone());
        let every =
            (policy.stale_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let thread = std::thread::spawn(move || {
            let store = Store::new(store_dir);
            let mut next = Instant::now() + every;
            while !stop2.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    std::thread::park_timeout(next - Instant::now());
                    continue;
                }
                next = Instant::now() + every;
                let beat = Event::Heartbeat {
                    agent: agent.clone(),
                    generation,
                };
                match store.apply(&key, &base, &beat, policy, None) {
                    Ok(applied) if applied.outcome == Outcome::Fenced => {
                        fenced2.store(true, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => crate::say::warn(format!("could not renew the fixer lease: {e:#}")),
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

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
