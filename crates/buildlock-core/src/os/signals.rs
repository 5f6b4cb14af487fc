//! SIGINT, SIGTERM and SIGHUP become a flag that the loops poll, so that buildlock can stop the
//! check's process group, leave no lock behind and exit 128+n.
//!
//! SIGXFSZ (a write past `ulimit -f`) is caught and does nothing, so the write fails with EFBIG
//! instead of killing the process between its state write and telling the agent its role. A
//! caught signal returns to its default in every child at exec, so the check and the fix meet
//! the limit as they would without buildlock (ignoring it would be inherited).

use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

extern "C" fn on_file_size_limit(_: libc::c_int) {}

/// Installs the handlers. Idempotent.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        catch(signal, on_signal);
    }
    survive_file_size_limit();
}

/// A write past the file-size limit fails with EFBIG (an error like ENOSPC) instead of killing
/// the process; children still get the default disposition.
pub fn survive_file_size_limit() {
    catch(libc::SIGXFSZ, on_file_size_limit);
}

fn catch(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: both handlers only store into an atomic or do nothing, which is async-signal-safe;
    // the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Writes to a closed pipe fail with EPIPE instead of killing the process, as in any Rust
/// program; for the binaries that start without Rust's runtime (`no_main`).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The signal received, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
