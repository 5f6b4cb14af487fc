//! SIGINT, SIGTERM and SIGHUP become a flag that the loops poll, so that buildlock can stop the
//! check's process group, leave no lock behind and exit 128+n.
//!
//! Windows has no signals: a console control handler turns Ctrl-C into [`SIGINT`], Ctrl-Break
//! into [`SIGTERM`] and closing the console, logging off or shutting down into [`SIGHUP`], so
//! the flows and the exit codes (128+n) are the same on every platform. The handler runs on a
//! thread of its own that Windows starts; it stores the flag and returns `TRUE` (handled), and
//! for a close event Windows ends the process once the handler returns (or after 5 s), so the
//! run's process tree is stopped by the job's own ending only where the loop saw the flag first.
//!
//! SIGXFSZ (a write past `ulimit -f`) is caught and does nothing, so the write fails with EFBIG
//! instead of killing the process between its state write and telling the agent its role. A
//! caught signal returns to its default in every child at exec, so the check and the fix meet
//! the limit as they would without buildlock (ignoring it would be inherited).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal numbers the flows and exit codes use, the same on every platform (POSIX's).
pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
#[cfg(unix)]
pub const SIGSTOP: i32 = libc::SIGSTOP;
#[cfg(windows)]
pub const SIGSTOP: i32 = 19;
#[cfg(unix)]
const _: () = assert!(
    SIGHUP == libc::SIGHUP
        && SIGINT == libc::SIGINT
        && SIGKILL == libc::SIGKILL
        && SIGTERM == libc::SIGTERM
);

static PENDING: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
}

#[cfg(unix)]
extern "C" fn on_file_size_limit(_: libc::c_int) {}

/// Every signal whose disposition this program changes (the three above, SIGXFSZ and SIGALRM
/// caught, SIGPIPE ignored): a child started without a fork ([`crate::os::spawn`]) sets them
/// back to their default before its exec, as glibc's posix_spawn would for every signal.
#[cfg(unix)]
pub const CHANGED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGXFSZ,
    libc::SIGALRM,
    libc::SIGPIPE,
];

/// SIGALRM does nothing but interrupt the blocking call it arrives in (EINTR: installed without
/// SA_RESTART). Only a timer of the lock module's sends it, to its own thread. Idempotent.
#[cfg(target_os = "linux")]
pub fn interrupt_on_alarm() {
    extern "C" fn on_alarm(_: libc::c_int) {}
    // SAFETY: the handler does nothing; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int) = on_alarm;
        action.sa_sigaction = handler as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
    }
}

/// Installs the handlers. Idempotent.
///
/// Also sets SIGCHLD back to its default: ignored by whoever started us (SIG_IGN survives exec),
/// the kernel reaps our children itself, so every wait for the check, the fix or git fails with
/// ECHILD ("cannot run the check: No child processes", and the commit refused).
#[cfg(unix)]
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        catch(signal, on_signal);
    }
    survive_file_size_limit();
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Installs the console control handler (see the module header). Idempotent: Windows would
/// call a handler added twice twice, so it is added once.
#[cfg(windows)]
pub fn install() {
    use windows_sys::Win32::System::Console::{
        CTRL_BREAK_EVENT, CTRL_C_EVENT, SetConsoleCtrlHandler,
    };
    unsafe extern "system" fn on_ctrl(event: u32) -> windows_sys::core::BOOL {
        let signal = match event {
            CTRL_C_EVENT => SIGINT,
            CTRL_BREAK_EVENT => SIGTERM,
            _ => SIGHUP,
        };
        PENDING.store(signal, Ordering::SeqCst);
        1
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the handler only stores into an atomic; it lives for the whole program.
    ONCE.call_once(|| unsafe {
        SetConsoleCtrlHandler(Some(on_ctrl), 1);
    });
}

/// Records `signal` as received, as a handler would (Windows tests; no OS call).
#[cfg(all(test, windows))]
pub fn fake(signal: i32) {
    PENDING.store(signal, Ordering::SeqCst);
}

/// A write past the file-size limit fails with EFBIG (an error like ENOSPC) instead of killing
/// the process; children still get the default disposition. (Windows has no such signal: the
/// write fails.)
pub fn survive_file_size_limit() {
    #[cfg(unix)]
    catch(libc::SIGXFSZ, on_file_size_limit);
}

#[cfg(unix)]
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
/// (Windows: writes to a closed pipe always fail with an error.)
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN)
    };
}

/// The signal received, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
