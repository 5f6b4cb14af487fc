//! Failure signatures: a stable hash of a failure's output after normalisation.
//!
//! Two agents in different worktrees, on different machines, at different times, that hit the same
//! error must get the same signature; different errors must get different ones. The hash is
//! FNV-1a 64 over the normalised text, written as 16 lowercase hex digits: it depends on nothing
//! but the bytes, so it is the same on every machine. The rules below are part of it: a version
//! of buildlock that changes them gives some failures new signatures (the agents of a repository
//! share the one binary install.sh puts in the git common dir, so they agree with each other).
//!
//! Normalisation, in order:
//! 1. bytes are read as UTF-8 (invalid sequences replaced); ANSI escape sequences are removed;
//! 2. only the lines that carry the failure are kept ([`failure_lines`]): warnings (when the
//!    output has a failure of its own), test-runner tallies, progress, captured chatter, worker
//!    lines, passing tests and make's job-control lines go; of a line rewritten with `\r`
//!    (progress bars) only the last rewrite counts;
//! 3. the work tree's absolute path becomes `<worktree>` and the home directory `~`;
//! 4. in each line: temp paths (`/tmp/…`, `/var/tmp/…`, `/var/folders/…`, `$TMPDIR/…`) become
//!    `<tmp>`; IPv4 and IPv6 addresses with their port, if any (`10.0.3.17`, `10.0.3.17:40123`,
//!    `fe80::2a`, `[fe80::2a]:8080`, `::1`, `::ffff:10.0.0.1`, `fe80::1%eth0`), `<ip>`: one
//!    placeholder for every form, since the same service is logged as `::1:5432` by one tool and
//!    `[::1]:5432` by another; a port after `localhost` or a URL's host
//!    (`http://db.internal:5432`), or after a `port` key (`port 8080`, `port=8080`), `<port>`; `0x…` addresses `<addr>`; hex runs of 8 or more with a
//!    digit in them (hashes, build ids) `<hex>`; clock times and Unix times (seconds or milliseconds) `<time>`; dates
//!    `<date>`; durations (`0.52s`, `12 ms`, `1.5min`, and the number after `duration`/`elapsed`
//!    keys) `<dur>`; the number after `pid` or `(node:` `<pid>`; after a `…seed` key `<seed>`;
//!    pytest-xdist worker ids (`gw3`) `gw<n>`; a Rust panic's thread id `<tid>`;
//! 5. runs of three or more `=`, `-`, `_`, `*`, `#` or `~` shrink to three (test runners pad
//!    their banners to a width that depends on the durations in them); whitespace runs become one
//!    space; lines are trimmed;
//! 6. lines that carry no failure are dropped: empty lines, build progress (`Compiling`,
//!    `Finished`, `Running`, …), passing tests (`… ok`), package-manager notices and test-runner
//!    headers that name tool versions;
//! 7. the remaining lines are sorted and deduplicated, so that parallel test runners printing in a
//!    different order give the same signature.
//!
//! Measured: `python3 bench/signatures.py` (the figures are in the README, "Failure signatures").

use std::path::{Path, PathBuf};

use super::failure_lines::failure_lines;

/// The places of one machine that a failure's output may name, which normalisation replaces. The
/// caller finds them (resolving the work tree, reading `HOME` and `TMPDIR`): the rules neither
/// touch the file system nor read the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Places {
    /// The work tree, as the check ran in it: becomes `<worktree>`.
    pub worktree: PathBuf,
    /// The work tree as the file system resolves it (symlinks followed), if it could be: becomes
    /// `<worktree>` too.
    pub real_worktree: Option<PathBuf>,
    /// The home directory: becomes `~`.
    pub home: Option<PathBuf>,
    /// `$TMPDIR/` when it is set to something other than `/tmp`: a temp path, like `/tmp/…`.
    pub temp_dir: Option<String>,
}

impl Places {
    /// A work tree and a home directory; no resolved work tree and no temp dir of its own.
    pub fn new(worktree: &Path, home: Option<&Path>) -> Places {
        Places {
            worktree: worktree.to_owned(),
            real_worktree: None,
            home: home.map(Path::to_owned),
            temp_dir: None,
        }
    }
}

/// The signature of a failure's output: 16 hex digits.
pub fn signature(output: &[u8], places: &Places) -> String {
    let normalised = normalise(output, places);
    format!("{:016x}", fnv1a64(normalised.as_bytes()))
}

/// The normalised text that the signature hashes (one line per distinct failure line, sorted).
pub fn normalise(output: &[u8], places: &Places) -> String {
    let text = strip_ansi(&String::from_utf8_lossy(output));
    let mut roots: Vec<(String, &str)> = Vec::new();
    let mut add_root = |path: &Path, with: &'static str| {
        let s = path.to_string_lossy().trim_end_matches('/').to_owned();
        if s.len() > 1 && !roots.iter().any(|(r, _)| *r == s) {
            roots.push((s, with));
        }
    };
    add_root(&places.worktree, "<worktree>");
    if let Some(real) = &places.real_worktree {
        add_root(real, "<worktree>");
    }
    if let Some(home) = &places.home {
        add_root(home, "~");
    }
    // Longest first, so that a work tree inside the home directory becomes `<worktree>`.
    roots.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));

    let temp_dir = places.temp_dir.as_deref();
    let mut lines: Vec<String> = failure_lines(&text)
        .into_iter()
        .map(|line| {
            let mut line = line.into_owned();
            for (root, with) in &roots {
                if line.contains(root.as_str()) {
                    line = line.replace(root.as_str(), with);
                }
            }
            normalise_line(&line, temp_dir)
        })
        .filter(|line| !is_noise(line))
        .collect();
    lines.sort();
    lines.dedup();
    lines.join("\n")
}

/// 64-bit FNV-1a: the signature's hash, and the key to failure logs of the same bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Removes CSI (`ESC [ … final`), OSC (`ESC ] … BEL|ESC \`) and two-byte escapes.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

const TEMP_PREFIXES: &[&str] = &[
    "/tmp/",
    "/var/tmp/",
    "/var/folders/",
    "/private/var/folders/",
    "/private/tmp/",
];
const DURATION_UNITS: &[&str] = &[
    "ns", "us", "µs", "ms", "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute",
    "minutes", "h", "hr", "hrs", "hour", "hours",
];
const DURATION_KEYS: &[&str] = &[
    "duration",
    "duration_ms",
    "elapsed",
    "time_ms",
    "elapsed_ms",
];
/// Keys whose number is a process id: `pid 123`, `pid=123`, node's `(node:123)`.
const PID_KEYS: &[&str] = &["pid", "ppid", "node"];
/// Keys whose number is a port: `port 8080`, `port=8080`, `PORT: 8080`.
const PORT_KEYS: &[&str] = &["port", "lport", "rport", "sport", "dport"];

/// One line's volatile parts replaced; `temp_dir` is a temp dir of this machine's own
/// ([`Places::temp_dir`]).
fn normalise_line(line: &str, temp_dir: Option<&str>) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let at_boundary = i == 0 || !is_word(chars[i - 1]);
        // Temp paths, up to the next delimiter.
        if chars[i] == '/'
            && (TEMP_PREFIXES.iter().any(|p| starts_with_at(&chars, i, p))
                || temp_dir.is_some_and(|t| starts_with_at(&chars, i, t)))
        {
            while i < chars.len() && !is_path_end(chars[i]) {
                i += 1;
            }
            out.push_str("<tmp>");
            continue;
        }
        // IP addresses, before numbers and hex runs (which would take them apart).
        if at_boundary
            && (chars[i].is_ascii_hexdigit() || matches!(chars[i], ':' | '['))
            && !after(&chars, i, ':')
            && !after(&chars, i, '.')
        {
            if let Some(len) = address_len(&chars[i..]) {
                out.push_str("<ip>");
                i += len;
                continue;
            }
        }
        // A port after `localhost` or a URL's host: `localhost:<port>`.
        if chars[i] == ':' && names_host(&out) {
            if let Some(len) = port_len(&chars[i + 1..]) {
                out.push_str(":<port>");
                i += 1 + len;
                continue;
            }
        }
        if at_boundary && chars[i].is_ascii_digit() {
            if let Some((len, tag)) = classify_number(&chars[i..], &last_word) {
                out.push_str(tag);
                i += len;
                continue;
            }
        }
        if at_boundary && chars[i].is_ascii_hexdigit() {
            let len = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            let word = &chars[i..i + len];
            if len >= 8
                && word.iter().all(|c| c.is_ascii_hexdigit())
                && word.iter().any(|c| c.is_ascii_digit())
            {
                out.push_str("<hex>");
                i += len;
                continue;
            }
        }
        if is_word(chars[i]) {
            let len = chars[i..].iter().take_while(|c| is_word(**c)).count();
            last_word = chars[i..i + len].iter().collect();
            // pytest-xdist's worker ids (`gw3`): which worker ran a test.
            if at_boundary
                && len > 2
                && last_word.starts_with("gw")
                && last_word[2..].bytes().all(|b| b.is_ascii_digit())
            {
                out.push_str("gw<n>");
                i += len;
                continue;
            }
            out.extend(&chars[i..i + len]);
            i += len;
            continue;
        }
        if !matches!(chars[i], ':' | '=' | ' ' | '\t') {
            last_word.clear();
        }
        out.push(chars[i]);
        i += 1;
    }
    let out = thread_id(&out);
    squeeze(&out)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the character before `i` is `c`.
fn after(chars: &[char], i: usize, c: char) -> bool {
    i > 0 && chars[i - 1] == c
}

/// The length of the address `chars` starts with, if it does: an IP address (an IPv6 one maybe
/// in brackets) and its `:port`, if any.
fn address_len(chars: &[char]) -> Option<usize> {
    let mut len = if chars.first() == Some(&'[') {
        let inner = ip_len(&chars[1..])?;
        if chars.get(1 + inner) != Some(&']') {
            return None;
        }
        inner + 2
    } else {
        ip_len(chars)?
    };
    if chars.get(len) == Some(&':') {
        len += port_len(&chars[len + 1..]).map_or(0, |p| p + 1);
    }
    Some(len)
}

/// The length of the IPv4 or IPv6 address `chars` starts with, if it starts with one (not
/// followed by a word character, or a `.` and a digit).
fn ip_len(chars: &[char]) -> Option<usize> {
    let ends = |len: usize| !goes_on(&chars[len..]);
    if let Some(len) = ipv4_len(chars) {
        if ends(len) {
            return Some(len);
        }
    }
    // IPv6: hex groups of at most 4 digits between colons, `::` once at most for a run of zero
    // groups, maybe an IPv4 tail and a `%zone`; at least one digit (so that no `ab::cd` path of a
    // language is taken for one), and `::` or all eight groups.
    let mut len = 0;
    let mut groups = 0;
    let mut compressed = false;
    let mut digit = false;
    loop {
        if chars.get(len) == Some(&':') && chars.get(len + 1) == Some(&':') {
            if compressed {
                return None;
            }
            compressed = true;
            len += 2;
        } else if len > 0 {
            if chars.get(len) != Some(&':') {
                break;
            }
            // A single `:` then a group; a `:` that ends it (`fe80::1:`) belongs to the text.
            if !chars.get(len + 1).is_some_and(|c| c.is_ascii_hexdigit()) {
                break;
            }
            len += 1;
        }
        if let Some(v4) = ipv4_len(&chars[len..]).filter(|_| groups > 0 || compressed) {
            len += v4;
            groups += 2;
            digit = true;
            break;
        }
        let g = chars[len..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if g == 0 {
            if compressed && chars.get(len.wrapping_sub(1)) == Some(&':') {
                // `::` at the end (`fe80::`).
                break;
            }
            return None;
        }
        if g > 4 {
            return None;
        }
        digit |= chars[len..len + g].iter().any(char::is_ascii_digit);
        len += g;
        groups += 1;
        if groups > 8 {
            return None;
        }
    }
    if !digit || !(compressed || groups == 8) || (compressed && groups > 7) {
        return None;
    }
    // A zone: `fe80::1%eth0`.
    if chars.get(len) == Some(&'%') {
        let zone = chars[len + 1..].iter().take_while(|c| is_word(**c)).count();
        if zone > 0 {
            len += 1 + zone;
        }
    }
    (!chars.get(len).copied().is_some_and(is_word)).then_some(len)
}

/// The length of the dotted quad `chars` starts with (each part at most 255), if it does.
fn ipv4_len(chars: &[char]) -> Option<usize> {
    let mut len = 0;
    for part in 0..4 {
        if part > 0 {
            if chars.get(len) != Some(&'.') {
                return None;
            }
            len += 1;
        }
        let n = chars[len.min(chars.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=3).contains(&n) {
            return None;
        }
        let value: u32 = chars[len..len + n]
            .iter()
            .collect::<String>()
            .parse()
            .ok()?;
        if value > 255 {
            return None;
        }
        len += n;
    }
    Some(len)
}

/// Whether the text before a `:` names a host whose port may follow: `localhost`, or a URL's
/// host (`http://db.internal`).
fn names_host(out: &str) -> bool {
    let host_start = out
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .map_or(0, |i| i + 1);
    let host = &out[host_start..];
    host.eq_ignore_ascii_case("localhost")
        || (!host.is_empty() && out[..host_start].ends_with("://"))
}

/// Whether the number before `rest` goes on there: a word character, or a `.` and a digit.
fn goes_on(rest: &[char]) -> bool {
    match rest {
        [c, ..] if is_word(*c) => true,
        ['.', d, ..] => d.is_ascii_digit(),
        _ => false,
    }
}

/// The length of the port number `chars` starts with (1 to 65535, a whole number), if it does.
fn port_len(chars: &[char]) -> Option<usize> {
    let n = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    let whole = !goes_on(&chars[n..]);
    let value: u32 = chars[..n.min(5)].iter().collect::<String>().parse().ok()?;
    ((1..=5).contains(&n) && whole && (1..=65535).contains(&value)).then_some(n)
}

fn is_path_end(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\'' | '"' | '`' | ')' | '(' | ',' | ':' | ';' | '>' | '<'
        )
}

fn starts_with_at(chars: &[char], i: usize, prefix: &str) -> bool {
    let mut it = chars[i..].iter();
    prefix.chars().all(|p| it.next() == Some(&p))
}

/// At a digit that starts a word: the length of what it stands for and its placeholder.
fn classify_number(chars: &[char], last_word: &str) -> Option<(usize, &'static str)> {
    let digits = |from: usize| {
        chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let at = |i: usize| chars.get(i).copied();
    // 0x… addresses.
    if at(0) == Some('0') && matches!(at(1), Some('x' | 'X')) {
        let len = 2 + chars[2..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if len > 2 {
            return Some((len, "<addr>"));
        }
    }
    let n = digits(0);
    // Dates: 2026-11-22, optionally followed by a time.
    if n == 4 && at(4) == Some('-') && digits(5) == 2 && at(7) == Some('-') && digits(8) == 2 {
        let mut len = 10;
        if matches!(at(10), Some('T' | ' ')) && digits(11) == 2 && at(13) == Some(':') {
            len = 11 + time_len(&chars[11..]).unwrap_or(0);
            if len == 11 {
                len = 10;
            }
            while at(len).is_some_and(|c| c.is_ascii_digit() || matches!(c, 'Z' | '+' | ':' | '.'))
            {
                len += 1;
            }
        }
        return Some((len, "<date>"));
    }
    if let Some(len) = time_len(chars) {
        return Some((len, "<time>"));
    }
    // A number, maybe with a fraction.
    let mut len = n;
    if at(len) == Some('.') && digits(len + 1) > 0 {
        len += 1 + digits(len + 1);
    }
    let key = last_word.to_ascii_lowercase();
    if DURATION_KEYS.contains(&key.as_str()) {
        return Some((len, "<dur>"));
    }
    if PID_KEYS.contains(&key.as_str()) && len == n {
        return Some((len, "<pid>"));
    }
    if PORT_KEYS.contains(&key.as_str()) && len == n {
        return Some((len, "<port>"));
    }
    // `--randomly-seed=123`, `PYTHONHASHSEED=4`, `seed: 42`.
    if key.ends_with("seed") && len == n {
        return Some((len, "<seed>"));
    }
    // Unix times in seconds or milliseconds (2001 to 2039), as tests print them.
    let whole = || {
        chars[..n]
            .iter()
            .fold(0u64, |v, c| v * 10 + u64::from(*c as u8 - b'0'))
    };
    let unix_time = (n == 10 && (1_000_000_000..2_200_000_000).contains(&whole()))
        || (n == 13 && (1_000_000_000_000..2_200_000_000_000).contains(&whole()));
    if unix_time && !at(len).is_some_and(is_word) {
        return Some((len, "<time>"));
    }
    // A unit right after it (or after one space) makes it a duration.
    let unit_start = if at(len) == Some(' ') { len + 1 } else { len };
    let unit_len = chars[unit_start..]
        .iter()
        .take_while(|c| c.is_alphabetic())
        .count();
    if unit_len > 0 {
        let unit: String = chars[unit_start..unit_start + unit_len].iter().collect();
        let bounded = !at(unit_start + unit_len).is_some_and(is_word);
        if bounded && DURATION_UNITS.contains(&unit.as_str()) {
            return Some((unit_start + unit_len, "<dur>"));
        }
    }
    None
}

/// `12:34:56` or `1:02:03.456`.
fn time_len(chars: &[char]) -> Option<usize> {
    let digits = |from: usize| {
        chars
            .get(from..)
            .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let h = digits(0);
    if !(1..=2).contains(&h) || chars.get(h) != Some(&':') || digits(h + 1) != 2 {
        return None;
    }
    let m_end = h + 3;
    if chars.get(m_end) != Some(&':') || digits(m_end + 1) != 2 {
        return None;
    }
    let mut len = m_end + 3;
    if chars.get(len) == Some(&'.') && digits(len + 1) > 0 {
        len += 1 + digits(len + 1);
    }
    Some(len)
}

/// `thread 'main' (3873) panicked` → `thread 'main' (<tid>) panicked`.
fn thread_id(line: &str) -> String {
    let Some(start) = line.find("thread '") else {
        return line.to_owned();
    };
    let Some(close) = line[start + 8..].find("' (").map(|i| start + 8 + i + 3) else {
        return line.to_owned();
    };
    let digits = line[close..].bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && line[close + digits..].starts_with(')') {
        format!("{}<tid>{}", &line[..close], &line[close + digits..])
    } else {
        line.to_owned()
    }
}

/// Shrinks banner padding and whitespace, and trims.
fn squeeze(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut prev: Option<char> = None;
    let mut run = 0;
    for c in line.trim().chars() {
        if c.is_whitespace() {
            if prev != Some(' ') {
                out.push(' ');
            }
            prev = Some(' ');
            run = 0;
            continue;
        }
        run = if Some(c) == prev { run + 1 } else { 1 };
        prev = Some(c);
        if run <= 3 || !matches!(c, '=' | '-' | '_' | '*' | '#' | '~') {
            out.push(c);
        }
    }
    out
}

const PROGRESS_WORDS: &[&str] = &[
    "Compiling",
    "Checking",
    "Finished",
    "Running",
    "Downloading",
    "Downloaded",
    "Updating",
    "Fresh",
    "Blocking",
    "Building",
    "Locking",
    "Adding",
    "Doc-tests",
    "Documenting",
    "Packaging",
    "Verifying",
    "Installing",
    "Removing",
    "Resolving",
    "Waiting",
    "Fetching",
    "Unpacking",
];
const NOISE_PREFIXES: &[&str] = &[
    "npm warn",
    "npm WARN",
    "npm notice",
    "npm info",
    "platform ",
    "rootdir:",
    "configfile:",
    "plugins:",
    "cachedir:",
    "collected ",
    "running ",
    "> ",
];

fn is_noise(line: &str) -> bool {
    if line.is_empty() {
        return true;
    }
    let first = line.split(' ').next().unwrap_or("");
    PROGRESS_WORDS.contains(&first)
        || NOISE_PREFIXES.iter().any(|p| line.starts_with(p))
        || line.ends_with(" ... ok")
        || line.ends_with(" ... ignored")
        || line.starts_with("ok ")
        || line.ends_with(" PASSED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/signature")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn sig(tool: &str, wt: &str) -> String {
        signature(
            &fixture(&format!("{tool}.{wt}.out")),
            &Places::new(Path::new(&format!("/tmp/sigfx/{wt}")), None),
        )
    }

    const TOOLS: &[&str] = &[
        "cargo-test",
        "cargo-build",
        "npm-test",
        "pytest",
        "make",
        // One service down, reached at `10.0.3.17:40123` in one worktree and at
        // `[fe80::2a]:8080` in the other.
        "net-cargo",
    ];

    #[test]
    fn same_failure_in_two_worktrees_has_one_signature() {
        for tool in TOOLS {
            let (a, b) = (sig(tool, "wt-alpha"), sig(tool, "wt-beta-long-name"));
            assert_eq!(
                a, b,
                "{tool}: worktree path, times or ids leaked into the signature"
            );
        }
    }

    #[test]
    fn different_failures_have_different_signatures() {
        let sigs: std::collections::BTreeSet<String> =
            TOOLS.iter().map(|t| sig(t, "wt-alpha")).collect();
        assert_eq!(sigs.len(), TOOLS.len());
    }

    #[test]
    fn signature_is_stable_across_versions() {
        // Pinned (FNV-1a 64 of "error: boom", computed independently): a change here breaks
        // agreement between agents running different versions.
        assert_eq!(
            signature(b"error: boom\n", &Places::new(Path::new("/w"), None)),
            "fec0e2390acfa444"
        );
        assert_eq!(sig("cargo-build", "wt-alpha").len(), 16);
    }

    #[test]
    fn a_different_assertion_changes_the_signature() {
        let out = fixture("cargo-test.wt-alpha.out");
        let changed = String::from_utf8_lossy(&out).replace("right: 5", "right: 6");
        assert_ne!(
            signature(&out, &Places::new(Path::new("/tmp/sigfx/wt-alpha"), None)),
            signature(
                changed.as_bytes(),
                &Places::new(Path::new("/tmp/sigfx/wt-alpha"), None)
            )
        );
    }

    /// Real outputs of one breakage run in 16 worktrees at once (`bench/signatures.py`), named
    /// `<suite>.<breakage>.[run]r<round>.<worktree>.out`: chosen because the rule before this one
    /// gave each of them a different signature (warnings, pass counts, worker ids, pids,
    /// timestamps, make -j interleaving, set items in hash order).
    fn concurrent() -> Vec<(String, char, String)> {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/signature/concurrent");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("fixture dir entry").path();
            let file = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let parts: Vec<&str> = file.split('.').collect();
            let [suite, breakage, round, agent, "out"] = parts[..] else {
                panic!("fixture name {file} is not <suite>.<breakage>.[run]r<n>.<worktree>.out");
            };
            // The run the output came from: `r1` is base1's first round, `run4r1` run4's.
            let run = match round.rsplit_once('r') {
                Some((run, _)) if !run.is_empty() => run,
                _ => "base1",
            };
            let worktree = format!("/work/sigbench/{run}/{suite}/wt/{agent}");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            let sig = signature(
                &bytes,
                &Places::new(Path::new(&worktree), Some(Path::new("/root"))),
            );
            out.push((
                suite.to_owned(),
                breakage.chars().next().unwrap_or('?'),
                sig,
            ));
        }
        out
    }

    #[test]
    fn one_breakage_run_concurrently_has_one_signature() {
        let all = concurrent();
        // `net`: one service down (A) or answering wrongly (B), reached by each agent at an address
        // and port of its own (IPv4, IPv6, loopback).
        for suite in ["pytest", "pytest-warn", "cargo", "npm", "make", "net"] {
            for breakage in ['A', 'B', 'C'] {
                let sigs: std::collections::BTreeSet<&str> = all
                    .iter()
                    .filter(|(s, b, _)| s == suite && *b == breakage)
                    .map(|(_, _, sig)| sig.as_str())
                    .collect();
                assert!(
                    sigs.len() <= 1,
                    "{suite} breakage {breakage}: {} signatures",
                    sigs.len()
                );
                if breakage == 'A' {
                    assert_eq!(sigs.len(), 1, "{suite}: no fixture of breakage A");
                }
            }
        }
    }

    #[test]
    fn different_breakages_run_concurrently_never_share_a_signature() {
        let all = concurrent();
        let groups: std::collections::BTreeMap<String, std::collections::BTreeSet<&str>> =
            all.iter().fold(Default::default(), |mut m, (s, b, sig)| {
                m.entry(format!("{s} {b}"))
                    .or_default()
                    .insert(sig.as_str());
                m
            });
        let mut owner = std::collections::BTreeMap::new();
        for (group, sigs) in &groups {
            for sig in sigs {
                if let Some(other) = owner.insert(*sig, group) {
                    panic!("{group} and {other} share signature {sig}");
                }
            }
        }
        assert!(
            groups.len() >= 15,
            "expected A, B and C fixtures: {groups:?}"
        );
    }

    #[test]
    fn noise_of_concurrent_runs_is_normalised() {
        let wt = Path::new("/w");
        let n = |s: &str| normalise(s.as_bytes(), &Places::new(wt, None));
        assert_eq!(
            n("error: worker gw3 crashed"),
            "error: worker gw<n> crashed"
        );
        assert_eq!(n("error in pid 4242"), "error in pid <pid>");
        assert_eq!(n("error (node:13832) x"), "error (node:<pid>) x");
        assert_eq!(n("error, seed=12345"), "error, seed=<seed>");
        assert_eq!(n("error at 1795439979.417"), "error at <time>");
        assert_eq!(n("error at 1795439949189 ms"), "error at <time> ms");
        // Small numbers and other long ones stay: they can be what the failure is about.
        assert_eq!(n("error: expected 3 got 4"), "error: expected 3 got 4");
        assert_eq!(n("error: 3000000 too big"), "error: 3000000 too big");
    }

    #[test]
    fn addresses_and_ports_are_normalised() {
        let wt = Path::new("/w");
        let n = |s: &str| normalise(s.as_bytes(), &Places::new(wt, None));
        // The three connection failures: one signature.
        let refused = |at: &str| {
            signature(
                format!("error: connection refused at {at}\n").as_bytes(),
                &Places::new(wt, None),
            )
        };
        assert_eq!(refused("10.0.3.17:40123"), refused("192.168.77.201:51877"));
        assert_eq!(refused("10.0.3.17:40123"), refused("[fe80::2a]:8080"));
        for (raw, want) in [
            (
                "error: connect ECONNREFUSED 127.0.0.1:5432",
                "error: connect ECONNREFUSED <ip>",
            ),
            (
                "error: dial tcp [::1]:8080: refused",
                "error: dial tcp <ip>: refused",
            ),
            ("error: no route to fe80::1%eth0", "error: no route to <ip>"),
            (
                "error: host 2001:db8:85a3:0:0:8a2e:370:7334 down",
                "error: host <ip> down",
            ),
            (
                "error: mapped ::ffff:10.0.0.1 refused",
                "error: mapped <ip> refused",
            ),
            (
                "error: GET http://10.1.2.3/x failed",
                "error: GET http://<ip>/x failed",
            ),
            (
                "error: GET http://localhost:8080/x failed",
                "error: GET http://localhost:<port>/x failed",
            ),
            (
                "error: db.internal:5432 via postgres://db.internal:5432/app",
                "error: db.internal:5432 via postgres://db.internal:<port>/app",
            ),
            (
                "error: bind port 8080 in use",
                "error: bind port <port> in use",
            ),
            ("error: port=40123 busy", "error: port=<port> busy"),
        ] {
            assert_eq!(n(raw), want, "{raw}");
        }
        // What only looks like an address stays: file positions, times, paths of a language,
        // versions with more parts, numbers out of range.
        for same in [
            "error at src/main.rs:42:7",
            "error: core::panicking::panic_fmt",
            "error: crate1::tests::adds",
            "error: version 1.2.3.4.5 unsupported",
            "error: 300.1.2.3 is no address",
            "error: dead::beef",
        ] {
            assert_eq!(n(same), same);
        }
        assert_eq!(n("at 12:34:56 boom"), "at <time> boom");
    }

    #[test]
    fn normalises_the_documented_forms() {
        let wt = Path::new("/home/u/wt");
        let n = |s: &str| normalise(s.as_bytes(), &Places::new(wt, Some(Path::new("/home/u"))));
        assert_eq!(n("\x1b[1m\x1b[91merror\x1b[0m: x"), "error: x");
        assert_eq!(n("at /home/u/wt/src/a.rs:3"), "at <worktree>/src/a.rs:3");
        assert_eq!(n("see /home/u/.cargo/x"), "see ~/.cargo/x");
        assert_eq!(n("open /tmp/.tmpAbC12/f.txt: denied"), "open <tmp>: denied");
        assert_eq!(n("ptr 0x7ffd5e8 bad"), "ptr <addr> bad");
        assert_eq!(n("build deadbeef12 failed"), "build <hex> failed");
        assert_eq!(n("at 12:34:56.789 boom"), "at <time> boom");
        assert_eq!(n("on 2026-11-22T10:00:00Z boom"), "on <date> boom");
        assert_eq!(n("failed in 0.52s"), "failed in <dur>");
        assert_eq!(n("took 12 ms"), "took <dur>");
        assert_eq!(n("duration_ms: 2.8237"), "duration_ms: <dur>");
        assert_eq!(
            n("thread 'main' (3873) panicked"),
            "thread 'main' (<tid>) panicked"
        );
        assert_eq!(
            n("==== 1 failed in 0.03s ===="),
            "=== 1 failed in <dur> ==="
        );
        assert_eq!(n("test a ... ok\ntest b ... FAILED"), "test b ... FAILED");
        assert_eq!(n("line 42: 3 errors"), "line 42: 3 errors");
        assert_eq!(n("b\na\nb\n\n"), "a\nb");
        assert_eq!(n("50%\rprogress 100%"), "progress 100%");
    }
}
