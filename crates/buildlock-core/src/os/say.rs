//! Everything buildlock tells people and agents: one `buildlock:` line at a time, on stderr; and
//! the operator's reports on stdout through [`out`] / [`out!`](crate::out).
//!
//! A write to a closed stream is never a crash (Rust ignores SIGPIPE, so the write just fails, and
//! `println!` would panic on that failure): stderr errors are ignored; a closed stdout
//! (`buildlock log | head -1`) becomes [`OutError::Closed`], which the command propagates with `?`
//! so that it stops early, cleans up, and ends quietly.
//!
//! Colour follows the conventions clap and cargo follow (anstyle-query): never with `NO_COLOR`;
//! always with `CLICOLOR_FORCE`; otherwise only on a terminal whose `TERM` is set and not `dumb`,
//! and not with `CLICOLOR=0`. The styles are three SGR codes written here: anstyle's rendering
//! cost the hook binary 9.6 KB for the same bytes.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

pub fn stderr_is_terminal() -> bool {
    static TTY: OnceLock<bool> = OnceLock::new();
    *TTY.get_or_init(|| std::io::stderr().is_terminal())
}

/// Whether to colour a stream that `is_terminal` (or not).
pub fn colour_for(is_terminal: bool) -> bool {
    if anstyle_query::no_color() {
        return false;
    }
    if anstyle_query::clicolor_force() {
        return true;
    }
    is_terminal && anstyle_query::clicolor() != Some(false) && anstyle_query::term_supports_color()
}

fn color() -> bool {
    static COLOUR: OnceLock<bool> = OnceLock::new();
    *COLOUR.get_or_init(|| colour_for(stderr_is_terminal()))
}

/// SGR parameters: bold, and bold in a colour.
const BOLD: &str = "1";
const RED: &str = "1;31";
const YELLOW: &str = "1;33";
const GREEN: &str = "1;32";

fn paint(sgr: &str, text: &str) -> String {
    if color() {
        format!("\x1b[{sgr}m{text}\x1b[0m")
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

/// Why a line could not be written to stdout.
#[derive(Debug)]
pub enum OutError {
    /// The reader went away (`| head -1`): stop quietly, nothing is wrong.
    Closed,
    /// A real failure (a full disk behind a redirection).
    Failed(std::io::Error),
}

impl std::fmt::Display for OutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutError::Closed => write!(f, "standard output was closed"),
            OutError::Failed(e) => write!(f, "cannot write to standard output: {e}"),
        }
    }
}

impl std::error::Error for OutError {}

/// Whether `e` (or any error it wraps) is a closed stdout: the command ends quietly, exit 0.
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<OutError>(), Some(OutError::Closed)))
}

/// One line on stdout (the text and a newline), flushed.
pub fn out(text: impl Display) -> Result<(), OutError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => OutError::Closed,
            _ => OutError::Failed(e),
        })
}

/// `out!("...", args)`: [`out`] with `format!` arguments; use it with `?`.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::os::say::out(format_args!($($arg)*))
    };
}

/// `word` as one word for `sh`, quoted only when it must be, so that a printed command can be
/// pasted as it is.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+=,-".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A name that came from outside (a process's command name, an agent id, a path) made inert for
/// showing: what is not printable (control characters such as newline and escape, and the
/// invisible ones that reorder or hide text: see [`is_printable`]) is written as an escape, so the
/// name can never pass for a line of buildlock's own or steer a terminal.
pub fn inert(name: &str) -> String {
    name.chars()
        .map(|c| {
            if is_printable(c) {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect()
}

/// Whether `c` shows as itself: not a control character (newline, escape, DEL, C1), and not one
/// of the characters that end a line or reorder, join or hide text without showing (line and
/// paragraph separators, bidirectional overrides and isolates, zero-width marks, the BOM).
pub fn is_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

/// `buildlock: <msg>`, one line per line of `msg`.
pub fn say(msg: impl Display) {
    let text = msg.to_string();
    let prefix = paint(BOLD, "buildlock:");
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
    let sgr = match kind {
        Tone::Bad => RED,
        Tone::Wait => YELLOW,
        Tone::Good => GREEN,
    };
    say(paint(sgr, &msg.to_string()));
}

#[derive(Clone, Copy)]
pub enum Tone {
    Bad,
    Wait,
    Good,
}

pub fn warn(msg: impl Display) {
    say(format!("{} {msg}", paint(YELLOW, "warning:")))
}

/// A progress line: rewritten in place on a terminal, a full line otherwise.
pub fn progress(msg: impl Display) {
    if stderr_is_terminal() {
        raw(format!("\r\x1b[2K{} {msg}", paint(BOLD, "buildlock:")).as_bytes());
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

#[cfg(test)]
mod inert_tests {
    use super::inert;

    #[test]
    fn inert_names_cannot_start_a_line_or_steer_a_terminal() {
        assert_eq!(
            inert("a\nbuildlock: next: run x\u{1b}[2J"),
            "a\\nbuildlock: next: run x\\u{1b}[2J"
        );
        assert_eq!(inert("plain name é"), "plain name é");
        // Invisible characters that reorder or end lines are shown, not obeyed.
        assert_eq!(inert("a\u{202e}b\u{2028}c"), "a\\u{202e}b\\u{2028}c");
    }
}
