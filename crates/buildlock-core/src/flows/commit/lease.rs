//! The fixer's lease: a heartbeat thread renews it while the fix runs, so a long fix is never
//! taken over while alive, and notices when it has been taken over (fenced), so the fixer stops.
//!
//! The heartbeat takes no lock: it reads the state as any waiter does and writes its own lease
//! file (see `Store::write_lease`). A fixer that is SIGSTOPped mid-heartbeat therefore blocks
//! nobody: a stopped process keeps any flock it holds for as long as it stays stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::protocol::state::Lease;
use crate::store::{Read, Store};

pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    fenced: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Renews `agent`'s lease on `key` (generation `generation`) every quarter of `stale_after`.
    pub fn start(
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
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !stop2.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    std::thread::park_timeout(next - Instant::now());
                    continue;
                }
                next = Instant::now() + every;
                let current = match store.read(&key) {
                    Read::Found { state, .. } => state.is_fixer(&agent, generation),
                    // Not knowing is not being fenced: try again at the next beat.
                    Read::Unreachable(why) => {
                        crate::os::say::warn(format!("could not renew the fixer lease: {why}"));
                        continue;
                    }
                    _ => false,
                };
                if !current {
                    fenced2.store(true, Ordering::SeqCst);
                    return;
                }
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

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
