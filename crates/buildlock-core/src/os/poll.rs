//! Waiting for input on a child's pipe, for the loops that must also look at something else
//! between two reads (a signal to pass on, a child that exited).
//!
//! Unix: poll(2). Windows has no poll on pipes: `PeekNamedPipe` says how many bytes wait (or
//! that every writer is gone), looked at every 10 ms within the timeout; a loop that waits this
//! way costs a wake-up per 10 ms, and input is seen up to 10 ms late.

use std::process::ChildStderr;
use std::time::Duration;

/// How a wait for input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// A read will not block: there is input, or every writer is gone.
    Readable,
    TimedOut,
    /// poll(2) failed; most often a signal interrupted it (EINTR).
    Failed,
}

/// `timeout` in whole milliseconds for poll(2), rounded up: a wait of less than a millisecond
/// that truncated to 0 would return at once, and the loop around it would spin until the
/// millisecond passed (it did: 2,500 polls per hook run while a check blocked). Zero stays zero
/// (only looks).
#[cfg(unix)]
pub fn millis_rounded_up(timeout: Duration) -> libc::c_int {
    timeout
        .as_micros()
        .div_ceil(1000)
        .min(libc::c_int::MAX as u128) as libc::c_int
}

/// Waits until `pipe` can be read without blocking, or `timeout` passes (zero: only looks).
#[cfg(unix)]
pub fn readable(pipe: &ChildStderr, timeout: Duration) -> Ready {
    input(std::os::fd::AsFd::as_fd(pipe), timeout)
}

/// Waits until `fd` can be read without blocking (input, its end, an error; a pidfd: its
/// process exited), or `timeout` passes (zero: only looks).
#[cfg(unix)]
pub fn input(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> Ready {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, millis_rounded_up(timeout)) } {
        n if n > 0 => Ready::Readable,
        0 => Ready::TimedOut,
        _ => Ready::Failed,
    }
}

/// Waits until `pipe` can be read without blocking, or `timeout` passes (zero: only looks).
#[cfg(windows)]
pub fn readable(pipe: &ChildStderr, timeout: Duration) -> Ready {
    use std::os::windows::io::AsRawHandle as _;
    use windows_sys::Win32::System::Pipes::PeekNamedPipe;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut avail: u32 = 0;
        // SAFETY: a valid pipe handle; only the count of available bytes is written.
        let ok = unsafe {
            PeekNamedPipe(
                pipe.as_raw_handle(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut avail,
                std::ptr::null_mut(),
            )
        };
        // A failed peek is a broken pipe (every writer gone): a read returns at once.
        if ok == 0 || avail > 0 {
            return Ready::Readable;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ready::TimedOut;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}
