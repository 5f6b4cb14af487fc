//! Everything buildlock tells people and agents: one `buildlock:` line at a time, on stderr.
//!
//! A write to a closed stderr is not a crash: errors are ignored (Rust ignores SIGPIPE, so the
//! write just fails). Colour only on a terminal and never with `NO_COLOR`.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

pub fn stderr_is_terminal() -> bool {
    static TTY: OnceLock<bool> = OnceLock::new();
    *TTY.get_or_init(|| std::io::stderr().is_terminal())
}

fn color() -> bool {
    stderr_is_terminal() && !crate::os::env::no_color()
}

fn paint(code: &str, text: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Writes raw bytes to stderr, ignoring failures.
pub fn raw(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
}

/// `buildlock: <msg>`, one line per line of `msg`.
pub fn say(msg: impl Display) {
    let text = msg.to_string();
    let prefix = paint("1", "buildlock:");
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&prefix);
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
    raw(out.as_bytes());
}

/// A headline in colour (red for errors and fixers, yellow for waiting, green for good news).
pub fn headline(kind: Tone, msg: impl Display) {
    let code = match kind {
        Tone::Bad => "1;31",
        Tone::Wait => "1;33",
        Tone::Good => "1;32",
    };
    say(paint(code, &msg.to_string()));
}

#[derive(Clone, Copy)]
pub enum Tone {
    Bad,
    Wait,
    Good,
}

pub fn warn(msg: impl Display) {
    say(format!("{} {msg}", paint("1;33", "warning:")))
}

/// A progress line: rewritten in place on a terminal, a full line otherwise.
pub fn progress(msg: impl Display) {
    if stderr_is_terminal() {
        raw(format!("\r\x1b[2K{} {msg}", paint("1", "buildlock:")).as_bytes());
    } else {
        say(msg);
    }
}

/// Ends a progress line on a terminal.
pub fn progress_done() {
    if stderr_is_terminal() {
        raw(b"\r\x1b[2K");
    }
}
