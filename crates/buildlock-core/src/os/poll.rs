//! Waiting for input on one file descriptor (poll(2)), for the loops that must also look at
//! something else between two reads (a signal to pass on, a child that exited).

use std::os::fd::{AsRawFd as _, BorrowedFd};
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

/// Waits until `fd` can be read without blocking, or `timeout` passes (zero: only looks).
pub fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> Ready {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n > 0 => Ready::Readable,
        0 => Ready::TimedOut,
        _ => Ready::Failed,
    }
}
