//! Which lines of a failed check's output carry the failure: the first step of a signature.
//!
//! Guarantee: a pure function of the text. It drops what changes between two runs of the same
//! failure (measured on pytest, cargo test, node's test runner and make, 16 worktrees at once:
//! `bench/signatures.py`), and keeps everything it does not recognise as such, so that two
//! different failures keep two different sets of lines. Dropped:
//!
//! - **warnings**, with the lines that belong to them (rustc's and gcc's source excerpts and
//!   notes, the source line under a Python warning): they come and go with an agent's own
//!   unrelated edits, with what was rebuilt, and with timing (a ResourceWarning reported when the
//!   garbage collector happens to run). Only when the output has a failure of its own, though: a
//!   check that fails *because of* warnings (`--max-warnings 0`, `-W`, "treated as error") keeps
//!   them, as they are then the failure;
//! - **pytest's** (known by its session banner, or with `-q` by its section banners) header
//!   (versions, plugins, worker count, random seed), progress dots, the
//!   warnings summary, the slowest durations, captured output of failing tests, worker lines
//!   (`[gw3] linux -- Python …`), the final tally (`1 failed, 466 passed in 3.2s`: pass counts
//!   differ between agents that added tests) and a message cut to the terminal's width after
//!   `FAILED id - ` (the `E` lines carry the whole message), and the listed items of an
//!   explanation pytest cut short (which items of a set made it depends on hash order);
//! - **cargo test's** tally (`test result: … 4 passed; 1 failed …`), what a failing test printed
//!   before it panicked, and `; N warnings emitted` after `could not compile`;
//! - **TAP** (node's test runner when not on a terminal): passing tests and their YAML blocks,
//!   plans, `# Subtest:` and counter comments, the number in `not ok N` (it depends on which
//!   tests ran before), and node-internal stack frames;
//! - **make** and C compilers: echoed compiler command lines (which files were rebuilt),
//!   `Waiting for unfinished jobs` (whether other jobs were still running), `Entering directory`,
//!   and the `In function …:` context lines that precede diagnostics;
//! - node's warnings (`(node:1234) …Warning: …`), pytest-xdist's `bringing up nodes...`, and
//!   buildlock's own `[… bytes of output omitted]` marker.
//!
//! Not handled (seen as different failures): a failure message that itself carries something
//! random (a port, a generated name, a set printed in hash order outside pytest's explanations).

use std::borrow::Cow;

/// The lines that carry the failure (not yet normalised), mostly in their original order.
pub fn failure_lines(text: &str) -> Vec<Cow<'_, str>> {
    let mut f = Filter::default();
    for raw in text.lines() {
        // Of a line rewritten with `\r` (progress bars) only the last rewrite counts.
        let line = raw.rsplit('\r').next().unwrap_or(raw);
        f.line(line);
    }
    f.flush_block();
    f.flush_explanation();
    let keep_warnings = !f.warnings.is_empty()
        && (f.warnings_are_the_failure || !f.kept.iter().any(|l| is_evidence(l)));
    if keep_warnings {
        // No failure but the warnings: they are the failure. Original order is not needed (the
        // signature sorts), so append.
        let mut all = f.kept;
        all.extend(f.warnings.into_iter().map(Cow::Borrowed));
        return all;
    }
    f.kept
}

/// The most lines a waiter is shown of a failure (contract: "What agents read").
pub const SUMMARY_LINES: usize = 20;
/// A longer line is cut: one line of minified output can cost more than the rest together.
const SUMMARY_LINE_CHARS: usize = 240;

/// What an agent that must not fix a failure is shown of it: its first failing lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// At most the `max` asked for, colour codes removed, long lines cut.
    pub lines: Vec<String>,
    /// How many lines the full selection held (more than `lines.len()` when cut short).
    pub of: usize,
}

/// The first failing lines of a failed check's output, at most `max`: the lines
/// [`failure_lines`] keeps, narrowed to those that show a failure (`error:`, `FAILED`, a panic, a
/// traceback…) with the indented lines right under each (a source excerpt, ` --> file:line`, a
/// stack). Output in which nothing shows a failure is unknown: then its last lines, where a
/// failing command usually says why. Empty lines never count.
pub fn summary(text: &str, max: usize) -> Summary {
    let text = crate::signature::strip_ansi(text);
    let kept = failure_lines(&text);
    let kept: Vec<&str> = kept
        .iter()
        .map(|l| l.as_ref())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let chosen: Vec<&str> = if kept.iter().any(|l| is_evidence(l)) {
        let mut chosen = Vec::new();
        let mut in_failure = false;
        for line in &kept {
            in_failure = is_evidence(line) || (in_failure && belongs_to_previous(line));
            if in_failure {
                chosen.push(*line);
            }
        }
        chosen
    } else {
        let from = kept.len().saturating_sub(max);
        kept[from..].to_vec()
    };
    Summary {
        of: chosen.len(),
        lines: chosen.into_iter().take(max).map(cut).collect(),
    }
}

/// A line under a failure that belongs to it: indented, or rustc's and gcc's excerpt markers.
fn belongs_to_previous(line: &str) -> bool {
    let t = line.trim_start();
    line.starts_with([' ', '\t'])
        || t.starts_with("-->")
        || t.starts_with('|')
        || t.starts_with("= ")
        || t.split_once(" |")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn cut(line: &str) -> String {
    let line = line.replace('\t', "    ");
    match line.char_indices().nth(SUMMARY_LINE_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Region {
    #[default]
    Normal,
    /// pytest's session header, up to the first empty line.
    PytestHeader,
    /// A pytest section that carries no failure (warnings summary, durations, captured output).
    PytestSkip,
    /// A cargo test `---- name stdout ----` block, buffered until it ends.
    CargoBlock,
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Warning {
    #[default]
    None,
    /// A rustc/gcc-style warning: source excerpts, notes and indented lines belong to it.
    Block,
    /// A Python warning: the indented source line under it belongs to it.
    PythonSource,
}

#[derive(Default)]
struct Filter<'a> {
    kept: Vec<Cow<'a, str>>,
    warnings: Vec<&'a str>,
    warnings_are_the_failure: bool,
    pytest: bool,
    tap: bool,
    region: Region,
    warning: Warning,
    /// The file of the gcc-style warning being skipped: a note about another file is not its.
    warning_file: &'a str,
    /// Indentation of a passing TAP test whose YAML block is being skipped.
    tap_skip_below: Option<usize>,
    block: Vec<&'a str>,
    /// pytest's `E` lines of one failure, buffered until they end.
    explanation: Vec<&'a str>,
}

impl<'a> Filter<'a> {
    fn line(&mut self, line: &'a str) {
        let t: &'a str = line.trim();
        if !self.explanation.is_empty() && !is_explanation(t) {
            self.flush_explanation();
        }
        if self.continues_warning(line, t) {
            self.warnings.push(line);
            return;
        }
        if t.starts_with("[buildlock: ") && t.ends_with(" of output omitted]") {
            return;
        }
        if !self.warnings_are_the_failure && t.contains("treated as error") {
            self.warnings_are_the_failure = true;
        }

        // pytest: sections, by their banners.
        if let Some((fill, title)) = banner(t) {
            if title.contains("test session starts") {
                self.flush_block();
                self.pytest = true;
                self.region = Region::PytestHeader;
                return;
            }
            // `pytest -q` prints no session banner: its sections say it is pytest.
            const SECTIONS: &[&str] = &[
                "FAILURES",
                "ERRORS",
                "short test summary info",
                "warnings summary",
                "PASSES",
            ];
            if fill == '=' && (SECTIONS.contains(&title) || title.starts_with("slowest ")) {
                self.pytest = true;
            }
            if self.pytest {
                self.flush_block();
                self.region = Region::Normal;
                match fill {
                    '=' if title.contains("warnings summary") || title.starts_with("slowest") => {
                        self.region = Region::PytestSkip;
                        return;
                    }
                    '=' if is_pytest_tally(title) => return,
                    '-' if title.starts_with("Captured ") => {
                        self.region = Region::PytestSkip;
                        return;
                    }
                    _ => {}
                }
                self.kept.push(Cow::Borrowed(line));
                return;
            }
        }
        match self.region {
            Region::PytestHeader => {
                if t.is_empty() {
                    self.region = Region::Normal;
                }
                return;
            }
            Region::PytestSkip => return,
            Region::CargoBlock => {
                if is_cargo_block_end(t) {
                    self.flush_block();
                } else {
                    self.block.push(line);
                    return;
                }
            }
            Region::Normal => {}
        }
        if t.is_empty() {
            return;
        }

        if t.starts_with("---- ") && (t.ends_with(" stdout ----") || t.ends_with(" stderr ----")) {
            self.kept.push(Cow::Borrowed(line));
            self.region = Region::CargoBlock;
            return;
        }
        if t.starts_with("TAP version ") {
            self.tap = true;
            return;
        }
        if self.tap && self.tap_line(line, t) {
            return;
        }
        // pytest's progress (`tests/test_a.py ..F.   [ 40%]`), with whatever else landed on that
        // line; also before anything says it is pytest (`pytest -q` has no header).
        if let Some(rest) = after_progress(t) {
            if !rest.is_empty() {
                self.line(rest);
            }
            return;
        }
        if t.contains('.') && t.chars().all(|c| ".FEsxX".contains(c)) {
            return;
        }
        if self.pytest && self.pytest_line(line, t) {
            return;
        }
        if let Some(w) = warning_start(t) {
            self.warning = w;
            self.warning_file = diagnostic_file(t);
            self.warnings.push(line);
            return;
        }
        if is_noise(t) {
            return;
        }
        self.kept.push(Cow::Borrowed(strip_noise_suffix(line)));
    }

    /// Whether `line` still belongs to the warning before it (and ends the warning if not).
    fn continues_warning(&mut self, line: &str, t: &str) -> bool {
        let belongs = match self.warning {
            Warning::None => false,
            Warning::Block => {
                !t.is_empty()
                    && (line.starts_with([' ', '\t'])
                        || is_excerpt(t)
                        || t.starts_with("= ")
                        || t.starts_with("note:")
                        || t.starts_with("help:")
                        // Parallel compilers interleave whole diagnostics (make -j): a note
                        // about another file belongs to another diagnostic.
                        || (diagnostic_level(t) == Some("note")
                            && !self.warning_file.is_empty()
                            && diagnostic_file(t) == self.warning_file))
            }
            Warning::PythonSource => line.starts_with([' ', '\t']) && !t.is_empty(),
        };
        if !belongs {
            self.warning = Warning::None;
        } else if self.warning == Warning::PythonSource {
            // One source line only.
            self.warning = Warning::None;
        }
        belongs
    }

    /// A TAP line that is handled (dropped or kept) here.
    fn tap_line(&mut self, line: &'a str, t: &'a str) -> bool {
        let indent = line.len() - line.trim_start().len();
        if let Some(below) = self.tap_skip_below {
            if indent > below && !t.is_empty() {
                return true;
            }
            self.tap_skip_below = None;
        }
        if t.starts_with("ok ") {
            self.tap_skip_below = Some(indent);
            return true;
        }
        if let Some(rest) = t.strip_prefix("not ok ") {
            // `not ok 4 - name`: the number depends on what ran before.
            let n = rest.bytes().take_while(u8::is_ascii_digit).count();
            if n > 0 {
                self.kept.push(Cow::Owned(format!("not ok{}", &rest[n..])));
                return true;
            }
            return false;
        }
        if is_tap_plan(t) {
            return true;
        }
        if let Some(c) = t.strip_prefix('#') {
            let c = c.trim_start();
            let counter = [
                "tests ",
                "suites ",
                "pass ",
                "fail ",
                "cancelled ",
                "skipped ",
                "todo ",
                "duration_ms ",
            ]
            .iter()
            .any(|k| c.starts_with(k));
            return counter || c.starts_with("Subtest:") || is_node_warning(c);
        }
        // Frames inside node itself say nothing about the failure, and async ones come and go.
        t.contains("(node:internal/")
            || t.starts_with("node:internal/")
            || t.contains("(node:async_hooks:")
            || t.starts_with("node:async_hooks:")
            || t.starts_with("at node:internal/")
    }

    /// A pytest line that is dropped here (or kept, rewritten).
    fn pytest_line(&mut self, line: &'a str, t: &'a str) -> bool {
        if t.starts_with("[gw") && t.contains("] ") {
            // `[gw1] linux -- Python 3.11 /path/python`: which worker ran the test.
            if t.contains(" -- Python ") {
                return true;
            }
            // `[gw1] [ 50%] FAILED tests/x.py::t` (xdist, -v): keep what follows.
            let rest = t.split_once("] ").map_or("", |(_, r)| r);
            let rest = match rest.strip_prefix('[') {
                Some(r) if r.contains("%] ") => r.split_once("%] ").map_or("", |(_, r)| r),
                _ => rest,
            };
            if !rest.is_empty() {
                self.line(rest);
            }
            return true;
        }
        if t.starts_with("-- Docs: ") {
            return true;
        }
        if is_explanation(t) {
            self.explanation.push(line);
            return true;
        }
        // -v: `tests/x.py::t PASSED [ 10%]`, and xdist's `PASSED tests/x.py::t`: the percentage
        // depends on how many tests there are; passing ones say nothing.
        let t = match t.strip_suffix("%]").and_then(|r| r.rsplit_once('[')) {
            Some((head, pct)) if pct.trim().bytes().all(|b| b.is_ascii_digit()) => head.trim_end(),
            _ => t,
        };
        const PASSING: &[&str] = &["PASSED", "SKIPPED", "XFAIL", "XPASS", "XFAILED", "XPASSED"];
        let first = t.split(' ').next().unwrap_or("");
        let last = t.rsplit(' ').next().unwrap_or("");
        if PASSING.contains(&first) || (PASSING.contains(&last) && t.contains("::")) {
            return true;
        }
        // `FAILED id - message`: a message cut to the terminal's width (`…...`) depends on that
        // width; the `E` lines carry it whole. An uncut one stays (`--tb=no` shows nothing else).
        for head in ["FAILED ", "ERROR "] {
            if t.starts_with(head) && t.ends_with("...") {
                if let Some((id, _)) = t.split_once(" - ") {
                    self.kept.push(Cow::Borrowed(id));
                    return true;
                }
            }
        }
        if t.len() != line.trim().len() {
            self.kept.push(Cow::Borrowed(t));
            return true;
        }
        false
    }

    /// pytest cuts a long explanation (`...Full output truncated`) after a few lines; the items
    /// of a set are listed in hash order (random per process), so which items made it, and
    /// which one carries the `...`, change from run to run. Of a cut explanation only its first
    /// line and its headings (`Extra items in the left set:`) stay.
    fn flush_explanation(&mut self) {
        let lines = std::mem::take(&mut self.explanation);
        let cut = lines.iter().any(|l| l.contains("Full output truncated"));
        for (i, l) in lines.into_iter().enumerate() {
            if !cut || i == 0 || l.trim_end().ends_with(':') {
                self.kept.push(Cow::Borrowed(l));
            }
        }
    }

    fn flush_block(&mut self) {
        if self.region != Region::CargoBlock {
            return;
        }
        self.region = Region::Normal;
        let block = std::mem::take(&mut self.block);
        // What the test printed before it panicked is its own chatter (times, ids).
        let from = block
            .iter()
            .position(|l| {
                let t = l.trim_start();
                t.starts_with("thread '") && t.contains("panicked at")
            })
            .unwrap_or(0);
        self.kept
            .extend(block[from..].iter().map(|l| Cow::Borrowed(*l)));
    }
}

/// `=== title ===`, `___ title ___`, `--- title ---` (3 or more of the fill on each side).
fn banner(t: &str) -> Option<(char, &str)> {
    let fill = t.chars().next()?;
    if !matches!(fill, '=' | '_' | '-') {
        return None;
    }
    let inner = t.trim_start_matches(fill);
    let lead = t.len() - inner.len();
    let title = inner.trim_end_matches(fill);
    let trail = inner.len() - title.len();
    let title = title.trim();
    if lead < 3 || trail < 3 || title.is_empty() {
        return None;
    }
    Some((fill, title))
}

/// `1 failed, 465 passed, 6 warnings in 3.25s`, `1 error in 0.1s`, `no tests ran in 0.0s`.
fn is_pytest_tally(title: &str) -> bool {
    title.contains(" in ")
        && [
            "passed",
            "failed",
            "error",
            "warning",
            "skipped",
            "deselected",
            "xfailed",
            "xpassed",
            "no tests ran",
            "subtests",
        ]
        .iter()
        .any(|w| title.contains(w))
}

/// What follows a pytest progress run (`path ..F.  [ 40%]`), when `t` starts with one.
fn after_progress(t: &str) -> Option<&str> {
    let close = t.find("%]")?;
    let open = t[..close].rfind('[')?;
    if !t[open + 1..close]
        .trim()
        .bytes()
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let before = t[..open].trim_end();
    // The result letters, optionally after the test file's path.
    let marks = before.rsplit_once(' ').map_or(before, |(_, m)| m);
    let path_ok = before
        .rsplit_once(' ')
        .is_none_or(|(p, _)| !p.trim().contains(' '));
    let is_marks = !marks.is_empty() && marks.chars().all(|c| ".FEsxXupP".contains(c));
    (is_marks && path_ok).then(|| t[close + 2..].trim())
}

/// A line of pytest's explanation of a failure: `E   assert 2 == 3`.
fn is_explanation(t: &str) -> bool {
    t == "E" || t.starts_with("E ")
}

fn is_cargo_block_end(t: &str) -> bool {
    (t.starts_with("---- ") && t.ends_with(" ----"))
        || t == "failures:"
        || t.starts_with("test result: ")
        || t.starts_with("error: test failed")
}

fn is_tap_plan(t: &str) -> bool {
    let Some((a, b)) = t.split_once("..") else {
        return false;
    };
    let b = b.split_whitespace().next().unwrap_or("");
    !a.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && !b.is_empty()
        && b.bytes().all(|c| c.is_ascii_digit())
}

/// `(node:1234) [DEP0005] DeprecationWarning: …`, `(Use \`node --trace-warnings …\` …)`.
fn is_node_warning(t: &str) -> bool {
    if t.starts_with("(Use `node --trace-") {
        return true;
    }
    let Some(rest) = t.strip_prefix("(node:") else {
        return false;
    };
    let Some((pid, rest)) = rest.split_once(") ") else {
        return false;
    };
    pid.bytes().all(|b| b.is_ascii_digit()) && python_style_warning_name(rest)
}

/// `SomethingWarning: ` at the start of `t`, possibly after a `[DEP0005] ` code.
fn python_style_warning_name(t: &str) -> bool {
    let t = match t.strip_prefix('[') {
        Some(r) => r.split_once("] ").map_or(r, |(_, r)| r),
        None => t,
    };
    t.split_once(": ")
        .is_some_and(|(name, _)| name.ends_with("Warning") && !name.contains(' '))
}

/// The start of a warning, and how it continues.
fn warning_start(t: &str) -> Option<Warning> {
    const HEADS: &[&str] = &[
        "warning:",
        "warning[",
        "Warning:",
        "WARNING:",
        "WARNING ",
        "[WARNING]",
        "[warn]",
        "[WARN]",
    ];
    if HEADS.iter().any(|h| t.starts_with(h)) || diagnostic_level(t) == Some("warning") {
        return Some(Warning::Block);
    }
    if is_node_warning(t) {
        return Some(Warning::None);
    }
    // `path.py:12: DeprecationWarning: …` (Python's warnings module) and its source line.
    if let Some((loc, rest)) = t.split_once(": ") {
        if is_location(loc) && python_style_warning_name(rest) {
            return Some(Warning::PythonSource);
        }
    }
    // The unraisable-exception hook's and pytest's trailers of a ResourceWarning.
    if t.starts_with("ResourceWarning: Enable tracemalloc")
        || t.starts_with("Enable tracemalloc to get")
        || t.starts_with("See https://docs.pytest.org/en/stable/how-to/capture-warnings.html")
    {
        return Some(Warning::None);
    }
    // ESLint's `  3:5  warning  'x' is defined but never used  no-unused-vars`.
    let mut words = t.split_whitespace();
    if let (Some(pos), Some("warning")) = (words.next(), words.next()) {
        if is_location(pos) {
            return Some(Warning::None);
        }
    }
    None
}

/// `path:12`, `path:12:5`, `12:5`: a location (no spaces, ends in `:digits`).
fn is_location(s: &str) -> bool {
    !s.contains(' ')
        && s.rsplit_once(':')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The level of a `location: level: message` diagnostic (gcc, clang, many linters).
fn diagnostic_level(t: &str) -> Option<&str> {
    let (loc, rest) = t.split_once(": ")?;
    if loc.contains(' ') || !(is_location(loc) || loc == "cc1" || loc == "cc1plus") {
        return None;
    }
    let level = rest.split([':', ' ']).next()?;
    matches!(level, "warning" | "note" | "error" | "fatal").then_some(level)
}

/// The file of a `file:line:col: level:` diagnostic, or "".
fn diagnostic_file(t: &str) -> &str {
    if diagnostic_level(t).is_none() {
        return "";
    }
    t.split(':').next().unwrap_or("")
}

/// A compiler's source excerpt: `  5 |     return x;`, `    |     ^~~`, `  --> src/a.rs:3:5`.
fn is_excerpt(t: &str) -> bool {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    t[digits..].trim_start().starts_with('|') || t.starts_with("-->") || t.starts_with(":::")
}

/// Lines that say nothing about which failure this is.
fn is_noise(t: &str) -> bool {
    // The context lines gcc prints before the diagnostics of a function (they end in `:`, a
    // test that keeps this off most lines: this runs on every line of the output).
    if t.ends_with(':')
        && (t.contains(": In function ")
            || t.contains(": In member function ")
            || t.contains(": In constructor ")
            || t.contains(": In destructor ")
            || t.contains(": In instantiation of ")
            || t.ends_with(": At top level:")
            || t.ends_with(": At global scope:"))
    {
        return true;
    }
    if t.starts_with("In file included from ") {
        return true;
    }
    if t.starts_with("make") {
        if let Some((_, rest)) = t.split_once(": ") {
            if rest.starts_with("*** Waiting for unfinished jobs")
                || rest.starts_with("Entering directory")
                || rest.starts_with("Leaving directory")
            {
                return true;
            }
        }
    }
    // `cargo test`'s and `pytest -q`'s tallies: the counts differ between agents that added
    // tests (pytest's with a banner are handled with its sections).
    if t.starts_with("test result: ")
        || (t.starts_with(|c: char| c.is_ascii_digit()) && t.ends_with('s') && is_pytest_tally(t))
    {
        return true;
    }
    // pytest-xdist starting its workers.
    if t == "bringing up nodes..." {
        return true;
    }
    is_compiler_command(t)
}

/// An echoed compiler or linker command (`cc -Wall -c -o a.o a.c`): which files were rebuilt.
fn is_compiler_command(t: &str) -> bool {
    const TOOLS: &[&str] = &[
        "cc", "gcc", "g++", "c++", "clang", "clang++", "ar", "ranlib", "ld", "as", "libtool",
    ];
    let Some((first, rest)) = t.split_once(' ') else {
        return false;
    };
    let tool = first.rsplit('/').next().unwrap_or(first);
    let tool = tool.rsplit_once('-').map_or(tool, |(_, t)| t); // x86_64-linux-gnu-gcc
    TOOLS.contains(&tool) && (rest.starts_with('-') || rest.contains(" -"))
}

/// `error: could not compile \`x\` (lib) due to 1 previous error; 2 warnings emitted`.
fn strip_noise_suffix(line: &str) -> &str {
    if let Some(i) = line.find("; ") {
        let rest = &line[i + 2..];
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n > 0 && rest[n..].starts_with(" warning") && rest.ends_with(" emitted") {
            return &line[..i];
        }
    }
    line
}

/// A line that shows the output has a failure other than warnings.
fn is_evidence(line: &str) -> bool {
    const SIGNS: &[&str] = &[
        "error:",
        "error[",
        "Error:",
        "ERROR:",
        "Error [",
        "FAILED",
        "FAIL:",
        "FAIL ",
        "not ok",
        "panicked at",
        "Traceback",
        "Exception",
        "assert",
        "undefined reference",
        "Segmentation fault",
        "Aborted",
    ];
    let t = line.trim_start();
    SIGNS.iter().any(|s| t.contains(s)) || t.starts_with("E ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        failure_lines(s).into_iter().map(Cow::into_owned).collect()
    }

    #[test]
    fn gcc_warnings_go_when_an_error_stays() {
        let out = "cc -Wall -c -o a.o a.c\n\
                   a.c: In function 'f':\n\
                   a.c:4:9: warning: unused variable 'x' [-Wunused-variable]\n    \
                   4 |     int x = 1;\n      \
                   |         ^\n\
                   b.c:5:16: error: 'factr' undeclared\n    \
                   5 |     return factr;\n\
                   make: *** [Makefile:8: b.o] Error 1\n\
                   make: *** Waiting for unfinished jobs....\n";
        assert_eq!(
            lines(out),
            [
                "b.c:5:16: error: 'factr' undeclared",
                "    5 |     return factr;",
                "make: *** [Makefile:8: b.o] Error 1"
            ]
        );
    }

    #[test]
    fn a_note_of_an_error_interleaved_after_a_warning_stays() {
        // make -j: two compilers write whole diagnostics into one pipe.
        let out = "b.c:5:16: error: 'factr' undeclared\n\
                   a.c:4:9: warning: unused variable 'x'\n    \
                   4 |     int x = 1;\n\
                   a.c:4:9: note: declared here\n\
                   b.c:5:16: note: each undeclared identifier is reported only once\n";
        assert_eq!(
            lines(out),
            [
                "b.c:5:16: error: 'factr' undeclared",
                "b.c:5:16: note: each undeclared identifier is reported only once"
            ]
        );
    }

    #[test]
    fn warnings_that_are_the_failure_stay() {
        // eslint --max-warnings 0: nothing but warnings and a tally.
        let out = "  3:5  warning  'x' is defined but never used  no-unused-vars\n\
                   \u{2716} 1 problem (0 errors, 1 warning)\n";
        assert_eq!(lines(out).len(), 2);
        // -Werror: gcc says so.
        let out = "a.c:4:9: warning: unused variable 'x'\n\
                   cc1: all warnings being treated as errors\n";
        assert_eq!(lines(out).len(), 2);
    }

    #[test]
    fn rustc_warning_blocks_end_at_the_blank_line() {
        let out = "warning: unused variable: `u`\n \
                   --> tests/a.rs:7:9\n  \
                   |\n\
                   7 |     let u = 1;\n  \
                   |         ^ help: prefix it\n  \
                   |\n  \
                   = note: `#[warn(unused_variables)]` on by default\n\
                   \n\
                   warning: `c` (test \"a\") generated 1 warning\n\
                   error[E0425]: cannot find value `factr`\n \
                   --> src/lib.rs:3:5\n\
                   error: could not compile `c` (lib) due to 1 previous error; 2 warnings emitted\n";
        assert_eq!(
            lines(out),
            [
                "error[E0425]: cannot find value `factr`",
                " --> src/lib.rs:3:5",
                "error: could not compile `c` (lib) due to 1 previous error"
            ]
        );
    }

    #[test]
    fn cargo_test_keeps_the_panic_not_the_chatter_before_it() {
        let out = "running 7 tests\n\
                   test a ... ok\n\
                   test b ... FAILED\n\
                   \n\
                   failures:\n\
                   \n\
                   ---- b stdout ----\n\
                   started at Instant { tv_sec: 5, tv_nsec: 1 }\n\
                   thread 'b' panicked at src/lib.rs:3:5:\n\
                   assertion `left == right` failed\n  \
                   left: 1\n \
                   right: 2\n\
                   \n\
                   \n\
                   failures:\n    \
                   b\n\
                   \n\
                   test result: FAILED. 6 passed; 1 failed; 0 ignored; finished in 0.05s\n";
        let kept = lines(out);
        assert!(
            kept.iter()
                .any(|l| l == "thread 'b' panicked at src/lib.rs:3:5:")
        );
        assert!(kept.iter().any(|l| l == "  left: 1"));
        assert!(
            !kept
                .iter()
                .any(|l| l.contains("Instant") || l.contains("passed"))
        );
    }

    #[test]
    fn a_cargo_block_without_a_panic_is_kept_whole() {
        let out = "---- t stdout ----\nError: Os { code: 2 }\n\nfailures:\n    t\n";
        assert!(lines(out).iter().any(|l| l == "Error: Os { code: 2 }"));
    }

    #[test]
    fn pytest_sections_that_vary_go() {
        let out = "============ test session starts ============\n\
                   platform linux -- Python 3.11.7\n\
                   Using --randomly-seed=123\n\
                   created: 2/2 workers\n\
                   \n\
                   ....F.. [ 50%]/x/y.py:29: ResourceWarning: unclosed file\n  \
                   gc.collect()\n\
                   ....... [100%]\n\
                   ============ FAILURES ============\n\
                   ____________ test_x ____________\n\
                   [gw0] linux -- Python 3.11.7 /v/bin/python\n\
                   >       assert f() == 3\n\
                   E       assert 2 == 3\n\
                   t.py:4: AssertionError\n\
                   ------------ Captured stdout call ------------\n\
                   took 0.1234 at 1795439979\n\
                   ============ warnings summary ============\n\
                   t.py::test_y\n  \
                   t.py:9: DeprecationWarning: old\n\
                   ============ slowest 3 durations ============\n\
                   0.16s call t.py::test_y\n\
                   ============ short test summary info ============\n\
                   FAILED t.py::test_x - assert 2 == 3 and a long message cut a...\n\
                   ============ 1 failed, 13 passed, 2 warnings in 3.25s ============\n";
        assert_eq!(
            lines(out),
            [
                "============ FAILURES ============",
                "____________ test_x ____________",
                ">       assert f() == 3",
                "E       assert 2 == 3",
                "t.py:4: AssertionError",
                "============ short test summary info ============",
                "FAILED t.py::test_x",
            ]
        );
    }

    #[test]
    fn a_cut_pytest_explanation_keeps_its_headings() {
        // Two runs of one failure: set items in hash order, cut after a few.
        let run = |items: &str| {
            let mut out = String::from("=== test session starts ===\n\n=== FAILURES ===\n");
            out += "E       AssertionError: assert {'A', 'B'} == {'a', 'b'}\nE         \n";
            out += "E         Extra items in the left set:\n";
            for item in items.split(' ') {
                out += &format!("E         '{item}'\n");
            }
            out += "E         \nE         ...Full output truncated, use '-vv' to show\n\n";
            out += "t.py:51: AssertionError\n";
            let mut l = lines(&out);
            l.sort();
            l
        };
        assert_eq!(run("A B C..."), run("C A B..."));
        assert!(
            run("A B C...")
                .iter()
                .any(|l| l.ends_with("Extra items in the left set:"))
        );
        // Uncut, every item stays.
        let out = "=== test session starts ===\n\nE   Extra items:\nE   'A'\nE   'B'\n";
        assert_eq!(lines(out).len(), 3);
    }

    #[test]
    fn pytest_quiet_has_no_header_and_is_still_pytest() {
        // `pytest -q -n 2`: a GC-timed warning broke the progress line.
        let out = "bringing up nodes...\n\
                   \n\
                   .F......./v/_pytest/unraisableexception.py:29: ResourceWarning: unclosed file\n  \
                   gc.collect()\n\
                   ResourceWarning: Enable tracemalloc to get the object allocation traceback\n\
                   .                                            [100%]\n\
                   =================== FAILURES ===================\n\
                   __________________ test_names __________________\n\
                   [gw0] linux -- Python 3.11.7 /v/bin/python\n\
                   E       assert 2 == 3\n\
                   ------------ Captured stdout call ------------\n\
                   started 1795441742.950\n\
                   ============ short test summary info ============\n\
                   FAILED t.py::test_names - AssertionError: assert {'APPLE',...\n\
                   1 failed, 14 passed, 8 warnings in 0.14s\n";
        assert_eq!(
            lines(out),
            [
                "=================== FAILURES ===================",
                "__________________ test_names __________________",
                "E       assert 2 == 3",
                "============ short test summary info ============",
                "FAILED t.py::test_names",
            ]
        );
    }

    #[test]
    fn an_uncut_pytest_message_stays() {
        let out = "=== test session starts ===\nplatform linux\n\nFAILED t.py::a - KeyError: 'x'\n";
        assert_eq!(lines(out), ["FAILED t.py::a - KeyError: 'x'"]);
    }

    #[test]
    fn tap_keeps_failures_and_their_details() {
        let out = "TAP version 13\n\
                   # Subtest: slug\n\
                   ok 1 - slug\n  \
                   ---\n  \
                   duration_ms: 37.2\n  \
                   ...\n\
                   # (node:13832) SlowWarning: operation took 47.5 ms\n\
                   # (Use `node --trace-warnings ...` to show where the warning was created)\n\
                   # Subtest: sum\n\
                   not ok 4 - sum\n  \
                   ---\n  \
                   error: |-\n    \
                   11 !== 10\n  \
                   stack: |-\n    \
                   TestContext.<anonymous> (/w/test/a.test.js:11:10)\n    \
                   async Test.run (node:internal/test_runner/test:797:9)\n  \
                   ...\n\
                   # Error: Cannot find module './nope'\n\
                   1..6\n\
                   # tests 8\n\
                   # pass 6\n";
        assert_eq!(
            lines(out),
            [
                "not ok - sum",
                "  ---",
                "  error: |-",
                "    11 !== 10",
                "  stack: |-",
                "    TestContext.<anonymous> (/w/test/a.test.js:11:10)",
                "# Error: Cannot find module './nope'",
            ]
        );
    }

    #[test]
    fn unknown_output_is_kept() {
        let out = "lint: src/a.py:3: unused import os\nlint failed\n";
        assert_eq!(
            lines(out),
            ["lint: src/a.py:3: unused import os", "lint failed"]
        );
    }

    #[test]
    fn a_summary_keeps_the_failing_lines_and_what_is_indented_under_them() {
        let mut out = String::new();
        for i in 1..=200 {
            match i {
                60 => out += "\x1b[31merror\x1b[0m: part 60 is broken\n",
                61 => out += "  --> src/a.rs:3:5\n",
                150 => out += "error: part 150 is broken\n",
                _ => out += &format!("progress line {i}\n"),
            }
        }
        let s = summary(&out, SUMMARY_LINES);
        assert_eq!(
            s.lines,
            [
                "error: part 60 is broken",
                "  --> src/a.rs:3:5",
                "error: part 150 is broken"
            ]
        );
        assert_eq!(s.of, 3);
    }

    #[test]
    fn a_summary_is_cut_at_its_limit_and_says_how_many_there_were() {
        let out: String = (0..50).map(|i| format!("error: e{i}\n")).collect();
        let s = summary(&out, 20);
        assert_eq!(s.lines.len(), 20);
        assert_eq!(s.lines[0], "error: e0");
        assert_eq!(s.of, 50);
        let long = format!("error: {}\n", "x".repeat(1000));
        assert!(summary(&long, 20).lines[0].chars().count() <= SUMMARY_LINE_CHARS + 1);
    }

    #[test]
    fn a_summary_of_output_without_a_failing_line_is_its_tail() {
        let out: String = (0..30).map(|i| format!("step {i}\n")).collect::<String>() + "\n";
        let s = summary(&out, 5);
        assert_eq!(
            s.lines,
            ["step 25", "step 26", "step 27", "step 28", "step 29"]
        );
        assert_eq!(s.of, 5);
        assert!(summary("", 5).lines.is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(banner("=== FAILURES ==="), Some(('=', "FAILURES")));
        assert_eq!(banner("== x =="), None);
        assert_eq!(after_progress("t.py ..F. [ 40%]"), Some(""));
        assert_eq!(after_progress("....F [100%]tail"), Some("tail"));
        assert_eq!(after_progress("progress 100%]"), None);
        assert_eq!(after_progress("say what [ 40%]"), None);
        assert!(is_tap_plan("1..6"));
        assert!(!is_tap_plan("1..x"));
        assert!(is_node_warning(
            "(node:12) [DEP0005] DeprecationWarning: Buffer()"
        ));
        assert!(is_node_warning("(node:12) SlowWarning: took"));
        assert!(!is_node_warning("(node:12) Error: x"));
        assert!(is_compiler_command("cc -Wall -c -o a.o a.c"));
        assert!(is_compiler_command("/usr/bin/x86_64-linux-gnu-gcc -c a.c"));
        assert!(!is_compiler_command("cc: error: no input files"));
        assert_eq!(diagnostic_level("a.c:1:2: warning: x"), Some("warning"));
        assert_eq!(diagnostic_level("a b: warning: x"), None);
        assert_eq!(strip_noise_suffix("e; 1 warning emitted"), "e");
        assert_eq!(
            strip_noise_suffix("e; 1 thing emitted"),
            "e; 1 thing emitted"
        );
    }
}
