//! Pathspecs: the language claims name paths in, and the overlap decision.
//!
//! A claim names git pathspecs relative to the work tree root, normalised lexically
//! ([`normalize`]): `./a//b/` is `a/b`, `a/../b` is `b`, the root itself (`.`) is `*`, and
//! anything that leaves the work tree (`../x`, an absolute path elsewhere) is refused. The glob
//! language is git's default pathspec language: `*` matches any string *including `/`* (so `**` is
//! `*`, and `src/*.py` matches `src/api/x.py`), `?` any one character, `[a-z]` / `[!a-z]` a class,
//! `\` escapes the next character. A pathspec ending in `/` is a directory: it covers what it
//! names and everything below it (`docs/`, `src/*/tests/`). A name that exists at claim time is
//! that path, literally, whatever characters it holds: a file is just that file (`src/api/x.py`;
//! `a[1].txt` is that file, not `a1.txt`), a folder that folder and everything below it, and its
//! glob characters are stored escaped (`a\[1].txt`). A plain name that does not exist is taken
//! as a directory and stored with a trailing `/` (`docs` becomes `docs/`), so a name claimed
//! before it exists is taken the wide way. A glob without a trailing `/` covers the paths it matches, which,
//! since `*` crosses `/`, already includes whole subtrees (`src/api/*`).
//!
//! Two pathspecs *overlap* when some path is covered by both. That question is decided exactly
//! for this language (a dynamic programme over the two patterns, [`overlap`]); since the language
//! is deliberately wide (`*` crosses `/`, a name covers its subtree), the answer errs towards
//! "they overlap", which is the safe side: two agents are kept apart when in doubt, never let
//! into the same file.
//!
//! Where it differs from git's own matching (`git ls-files -- <spec>`), on purpose: a glob ending
//! in `/` covers what is below what it matches (git matches nothing with it); `file/` names the
//! file; pathspec magic (`:(glob)`, `:!`, `:/`) is refused; and a name with glob characters that
//! exists is only that path (git matches it both literally and as a glob: `a*b` also lists `axb`),
//! so that a claim on an existing file never takes its neighbours. The test
//! `tests/pathspec_vs_git.rs` holds the rest to git's own answers.

use std::path::{Component, Path};

/// Longest pathspec accepted, in characters.
const MAX_SPEC: usize = 1024;

/// What a name is in the work tree at claim time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    File,
    Folder,
}

/// `raw` as a pathspec relative to the work tree `root`, normalised lexically; `found` says what
/// a normalised name is in the work tree, if it exists (the caller looks; the rules read no file).
/// An error says what was wrong and what to write instead.
pub fn normalize(
    raw: &str,
    root: &Path,
    found: impl Fn(&str) -> Option<Found>,
) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err(
            "an empty pathspec: name a path or glob relative to the work tree root, e.g. `src/api/*.py`"
                .into(),
        );
    }
    if raw.contains('\0') {
        return Err(format!("{raw:?} contains a NUL byte"));
    }
    if raw.starts_with(':') {
        return Err(format!(
            "`{raw}`: pathspec magic (`:(…)`, `:!`, `:/`) is not supported; write a plain path or glob \
             relative to the work tree root"
        ));
    }
    if raw.chars().count() > MAX_SPEC {
        return Err(format!(
            "a pathspec of {} characters is too long (at most {MAX_SPEC})",
            raw.chars().count()
        ));
    }
    let path = Path::new(raw);
    let rest: Vec<Component> = if path.is_absolute() {
        let mut comps = path.components();
        for want in root.components() {
            match comps.next() {
                Some(c) if c == want => {}
                _ => {
                    return Err(format!(
                        "`{raw}` is outside the work tree {}: claims name paths inside it, relative to its root",
                        root.display()
                    ));
                }
            }
        }
        comps.collect()
    } else {
        path.components().collect()
    };
    let mut parts: Vec<String> = Vec::new();
    for c in rest {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "`{raw}` leads outside the work tree {}: pathspecs are relative to the work tree \
                         root, so write e.g. `src/x` rather than `../src/x`",
                        root.display()
                    ));
                }
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() {
        return Ok("*".to_owned());
    }
    let spec = parts.join("/");
    // A name that exists is that path, whatever characters it holds (see the module header).
    match found(&spec) {
        Some(Found::File) => return Ok(literal(&spec)),
        Some(Found::Folder) => return Ok(format!("{}/", literal(&spec))),
        None => {}
    }
    let glob = literal_prefix(&spec).len() < spec.len();
    // A plain name covers its subtree (it is not a file); a glob written with a trailing `/`
    // covers what is below what it matches (see the module header).
    if !glob || raw.ends_with('/') {
        return Ok(format!("{spec}/"));
    }
    Ok(spec)
}

/// `name` as a pathspec that matches just that name: its glob and escape characters escaped.
pub fn literal(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*` (any string, `/` included)
    Star,
    /// `[…]`: inclusive ranges, negated with `!` or `^`.
    Class {
        neg: bool,
        ranges: Vec<(char, char)>,
    },
}

fn tokens(spec: &str) -> Vec<Tok> {
    let chars: Vec<char> = spec.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' if i < chars.len() => {
                out.push(Tok::Lit(chars[i]));
                i += 1;
            }
            '*' => {
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
            }
            '?' => out.push(Tok::One),
            '[' => match class(&chars[i..]) {
                Some((tok, used)) => {
                    out.push(tok);
                    i += used;
                }
                // An unclosed `[` is an ordinary character.
                None => out.push(Tok::Lit('[')),
            },
            c => out.push(Tok::Lit(c)),
        }
    }
    out
}

/// A class after its `[`: the token and how many characters it used, or `None` if unclosed.
fn class(s: &[char]) -> Option<(Tok, usize)> {
    let mut i = 0;
    let neg = matches!(s.first(), Some('!' | '^'));
    if neg {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < s.len() {
        let mut c = s[i];
        if c == ']' && !first {
            return Some((Tok::Class { neg, ranges }, i + 1));
        }
        first = false;
        // A POSIX class (`[[:digit:]]`), as git's wildmatch reads it (ASCII).
        if c == '[' && s.get(i + 1) == Some(&':') {
            if let Some(len) = s[i + 2..].windows(2).position(|w| w == [':', ']']) {
                let name: String = s[i + 2..i + 2 + len].iter().collect();
                ranges.extend_from_slice(posix_class(&name));
                i += len + 4;
                continue;
            }
        }
        if c == '\\' && i + 1 < s.len() {
            i += 1;
            c = s[i];
        }
        if i + 2 < s.len() && s[i + 1] == '-' && s[i + 2] != ']' {
            let hi = s[i + 2];
            ranges.push((c.min(hi), c.max(hi)));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// The ASCII ranges of a POSIX character class; an unknown name matches nothing (git's wildmatch
/// then matches nothing at all).
fn posix_class(name: &str) -> &'static [(char, char)] {
    match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\u{0}', '\u{1f}'), ('\u{7f}', '\u{7f}')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => &[],
    }
}

fn in_class(neg: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != neg
}

/// Whether one character can match both single-character tokens.
fn meet(a: &Tok, b: &Tok) -> bool {
    match (a, b) {
        (Tok::Lit(x), Tok::Lit(y)) => x == y,
        (Tok::One, _) | (_, Tok::One) => true,
        (Tok::Lit(x), Tok::Class { neg, ranges }) | (Tok::Class { neg, ranges }, Tok::Lit(x)) => {
            in_class(*neg, ranges, *x)
        }
        (
            Tok::Class {
                neg: n1,
                ranges: r1,
            },
            Tok::Class {
                neg: n2,
                ranges: r2,
            },
        ) => {
            // Membership is constant between range ends, so testing every end, its neighbours
            // and the extremes is exact.
            let mut candidates = vec!['\u{1}', char::MAX];
            for &(lo, hi) in r1.iter().chain(r2.iter()) {
                for c in [lo, hi] {
                    candidates.push(c);
                    candidates.extend(char::from_u32(c as u32 + 1));
                    candidates.extend((c as u32).checked_sub(1).and_then(char::from_u32));
                }
            }
            candidates
                .into_iter()
                .any(|c| in_class(*n1, r1, c) && in_class(*n2, r2, c))
        }
        (Tok::Star, _) | (_, Tok::Star) => true,
    }
}

/// Whether some string matches both token patterns (exact for `*`, `?`, classes, literals).
fn intersect(a: &[Tok], b: &[Tok]) -> bool {
    let (n, m) = (a.len(), b.len());
    // memo[i][j]: whether a[i..] and b[j..] intersect; filled from the ends (no recursion).
    let mut memo = vec![false; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            let v = if i == n && j == m {
                true
            } else if i < n && a[i] == Tok::Star {
                // a's star matches nothing more, or also whatever b[j] produces.
                memo[at(i + 1, j)] || (j < m && memo[at(i, j + 1)])
            } else if j < m && b[j] == Tok::Star {
                memo[at(i, j + 1)] || (i < n && memo[at(i + 1, j)])
            } else if i == n || j == m {
                false
            } else {
                meet(&a[i], &b[j]) && memo[at(i + 1, j + 1)]
            };
            memo[at(i, j)] = v;
        }
    }
    memo[at(0, 0)]
}

/// The pattern's tokens, and whether it also covers everything below what it matches (a
/// directory: it ends in `/`).
fn forms(spec: &str) -> (Vec<Tok>, bool) {
    match spec.strip_suffix('/') {
        Some(dir) => (tokens(dir), true),
        None => (tokens(spec), false),
    }
}

/// `t` followed by `/*`: everything below what `t` matches.
fn below(mut t: Vec<Tok>) -> Vec<Tok> {
    t.push(Tok::Lit('/'));
    t.push(Tok::Star);
    t
}

/// Whether two pathspecs overlap: some path is covered by both (see the module header).
pub fn overlap(a: &str, b: &str) -> bool {
    if !prefixes_compatible(a, b) {
        return false;
    }
    let ((ta, sa), (tb, sb)) = (forms(a), forms(b));
    // A path below both is below the shorter match, which is itself below the other (or equal
    // to it): so these three intersections decide it (the tests check it on concrete paths).
    intersect(&ta, &tb)
        || (sa && intersect(&below(ta.clone()), &tb))
        || (sb && intersect(&ta, &below(tb)))
}

/// Whether `path` (a file path relative to the work tree root) is covered by `spec`.
pub fn covers(spec: &str, path: &str) -> bool {
    let lit = literal_prefix(spec);
    let dir = spec.strip_suffix('/');
    if lit.len() == spec.len() || dir.is_some_and(|d| literal_prefix(d).len() == d.len()) {
        // No glob: the file itself, or the directory and everything below it.
        return match dir {
            None => path == spec,
            Some(d) => {
                path == d || (path.starts_with(d) && path.as_bytes().get(d.len()) == Some(&b'/'))
            }
        };
    }
    if !path.starts_with(lit) {
        return false;
    }
    let (t, subtree) = forms(spec);
    let p: Vec<Tok> = path.chars().map(Tok::Lit).collect();
    intersect(&t, &p) || (subtree && intersect(&below(t), &p))
}

/// The directory every path `spec` covers lies in (`src/api` for `src/api/*.py`; empty when it
/// could be anywhere, as for `*.py`): the guard compares only those subtrees of the index.
pub fn dir_prefix(spec: &str) -> &str {
    let lit = literal_prefix(spec);
    if lit.len() == spec.len() {
        // No glob: the file or the directory itself.
        return spec.trim_end_matches('/');
    }
    lit.rfind('/').map_or("", |i| &lit[..i])
}

/// The part of `spec` before its first glob or escape character.
fn literal_prefix(spec: &str) -> &str {
    let end = spec.find(['*', '?', '[', '\\']).unwrap_or(spec.len());
    &spec[..end]
}

/// Cheap rejection: two specs whose literal prefixes differ within their common length cannot
/// overlap.
fn prefixes_compatible(a: &str, b: &str) -> bool {
    let (pa, pb) = (literal_prefix(a), literal_prefix(b));
    let n = pa.len().min(pb.len());
    pa.as_bytes()[..n] == pb.as_bytes()[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, String> {
        // Names ending in `.py`, `.rs`, `.md` or `.txt` are the files that exist; `src`, `docs`
        // and `d[1]` the folders.
        normalize(raw, Path::new("/w/repo"), |p| {
            let plain = !p.contains(['*', '?']);
            if p == "what?*.txt"
                || (plain && [".py", ".rs", ".md", ".txt"].iter().any(|e| p.ends_with(e)))
            {
                Some(Found::File)
            } else if ["src", "docs", "d[1]"].contains(&p) {
                Some(Found::Folder)
            } else {
                None
            }
        })
    }

    #[test]
    fn a_name_that_exists_is_that_path_literally() {
        assert_eq!(norm("a[1].txt").unwrap(), "a\\[1].txt");
        assert!(covers(&norm("a[1].txt").unwrap(), "a[1].txt"));
        assert!(!covers(&norm("a[1].txt").unwrap(), "a1.txt"));
        assert!(!overlap(&norm("a[1].txt").unwrap(), "a1.txt"));
        assert!(overlap(&norm("a[1].txt").unwrap(), "a*.txt"));
        assert_eq!(norm("d[1]").unwrap(), "d\\[1]/");
        assert!(covers(&norm("d[1]/").unwrap(), "d[1]/x"));
        assert!(!covers(&norm("d[1]").unwrap(), "d1/x"));
        assert_eq!(norm("what?*.txt").unwrap(), "what\\?\\*.txt");
        // A glob that names nothing stays a glob.
        assert_eq!(norm("b[1]").unwrap(), "b[1]");
        assert!(covers(&norm("b[1]").unwrap(), "b1"));
    }

    #[test]
    fn normalizes_relative_to_the_root() {
        assert_eq!(norm("src/api/*.py").unwrap(), "src/api/*.py");
        assert_eq!(norm("./src//api/").unwrap(), "src/api/");
        assert_eq!(norm("src/../docs").unwrap(), "docs/");
        assert_eq!(norm("/w/repo/src/x.py").unwrap(), "src/x.py");
        assert_eq!(
            norm("src/x.py/").unwrap(),
            "src/x.py",
            "a file stays a file"
        );
        assert_eq!(norm(".").unwrap(), "*");
        assert_eq!(norm("/w/repo").unwrap(), "*");
        assert_eq!(norm("**").unwrap(), "**");
        assert_eq!(
            norm("src/*/tests/").unwrap(),
            "src/*/tests/",
            "a glob's `/` stays"
        );
        assert_eq!(norm("src/*/tests").unwrap(), "src/*/tests");
    }

    #[test]
    fn refuses_what_leaves_the_work_tree_or_says_nothing() {
        for bad in [
            "../x",
            "src/../../x",
            "/etc/passwd",
            "/w/repository/x",
            "/w",
            "",
            "  ",
            ":(glob)x",
            ":!x",
            "a\0b",
        ] {
            assert!(norm(bad).is_err(), "{bad:?}");
        }
        assert!(norm("../x").unwrap_err().contains("outside the work tree"));
        assert!(
            norm("/etc/x")
                .unwrap_err()
                .contains("outside the work tree")
        );
        assert!(norm(":!x").unwrap_err().contains("magic"));
        assert!(norm(&"a".repeat(2000)).unwrap_err().contains("too long"));
    }

    #[test]
    fn covers_like_git_pathspecs() {
        // A directory: itself and everything below it, nothing beside it.
        assert!(covers("docs/", "docs"));
        assert!(covers("docs/", "docs/a/b.md"));
        assert!(!covers("docs/", "docs2/a"));
        assert!(!covers("docs/", "doc"));
        // A file: just itself.
        assert!(covers("src/x.py", "src/x.py"));
        assert!(!covers("src/x.py", "src/x.pyc"));
        assert!(!covers("src/x.py", "src/x.py/y"));
        // `*` crosses `/` (git's default pathspec matching).
        assert!(covers("src/api/*.py", "src/api/x.py"));
        assert!(covers("src/api/*.py", "src/api/v2/x.py"));
        assert!(!covers("src/api/*.py", "src/api/x.rs"));
        assert!(covers("src/api/*", "src/api/x.py"));
        assert!(!covers("src/api/*", "src/apix"));
        assert!(covers("**", "anything/at/all"));
        assert!(covers("*", "README"));
        // A glob covers what it matches; with a trailing `/`, also what is below.
        assert!(!covers("src/*/tests", "src/x/tests/t.rs"));
        assert!(covers("src/*/tests/", "src/x/tests/t.rs"));
        assert!(covers("src/a?i/", "src/api/x.py"));
        assert!(!covers("src/a?i/", "src/ai/x.py"));
        assert!(covers("src/[a-c]pi/x", "src/bpi/x"));
        assert!(!covers("src/[!a-c]pi/x", "src/bpi/x"));
        assert!(covers("src/[!a-c]pi/x", "src/zpi/x"));
        assert!(covers("a\\*b", "a*b"));
        assert!(!covers("a\\*b", "axb"));
        // POSIX classes, as git reads them.
        assert!(covers("f[[:digit:]].txt", "f1.txt"));
        assert!(!covers("f[[:digit:]].txt", "fa.txt"));
        assert!(covers("f[![:digit:]x].txt", "fa.txt"));
        assert!(!covers("f[[:nonsense:]].txt", "f1.txt"));
        // An unclosed class is a literal `[`.
        assert!(covers("a[b", "a[b"));
    }

    #[test]
    fn dir_prefixes_bound_what_a_spec_covers() {
        for (spec, dir) in [
            ("src/api/*.py", "src/api"),
            ("src/a?i/", "src"),
            ("docs/", "docs"),
            ("src/x.py", "src/x.py"),
            ("*.py", ""),
            ("**", ""),
        ] {
            assert_eq!(dir_prefix(spec), dir, "{spec}");
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact_for_the_language() {
        let yes = [
            ("src/api/*", "src/api/x.py"),
            ("src/api/*.py", "src/*/x.py"),
            ("src/", "src/api/x.py"),
            ("src/api/", "src/*"),
            ("docs/", "docs/a.md"),
            ("**", "anything"),
            ("*.py", "src/*.py"),
            ("*.py", "docs/"),
            ("src/*.py", "src/api/x.py"),
            ("a*", "*b"),
            ("src/[a-c]*", "src/b?"),
            ("src/[!a]", "src/[a-c]"),
            ("src/*/tests/", "src/x/tests/t.rs"),
            ("src/x?", "src/*y"),
            ("src/x.py", "src/x.py"),
        ];
        let no = [
            ("src/api/*.py", "src/api/x.rs"),
            ("*.py", "README.md"),
            ("src/api/", "src/apix"),
            ("docs/", "src/"),
            ("src/*.py", "src/*.rs"),
            ("src/[a-c]", "src/[d-f]"),
            ("src/[!a-z]", "src/q"),
            ("a?", "abc"),
            ("lib/*", "src/*"),
            ("src/api/x.py", "src/api/y.py"),
            ("src/x.py", "src/x.pyc"),
            ("*.py", "*.rs"),
            ("src/*.py", "src/*.rs"),
            ("src/*/tests", "src/x/tests/t.rs"),
        ];
        for (a, b) in yes {
            assert!(overlap(a, b), "{a} / {b} should overlap");
            assert!(overlap(b, a), "{b} / {a} should overlap");
        }
        for (a, b) in no {
            assert!(!overlap(a, b), "{a} / {b} should not overlap");
            assert!(!overlap(b, a), "{b} / {a} should not overlap");
        }
    }

    #[test]
    fn overlap_agrees_with_covers_on_every_candidate_path() {
        // Brute force: two specs overlap exactly when some path over a small alphabet is covered
        // by both (paths up to 5 characters over `a`, `b`, `c`, `/`).
        let specs = [
            "a/", "a", "ab", "a*", "*b", "a/*", "*/b", "?", "a?b", "[ab]/", "[!a]*", "*", "b/a/",
            "a/b", "*a*", "?/", "*b/", "a*/", "[!b]/",
        ];
        let mut paths = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &paths {
                for c in ['a', 'b', 'c', '/'] {
                    next.push(format!("{p}{c}"));
                }
            }
            all.extend(next.iter().cloned());
            paths = next;
        }
        let all: Vec<String> = all
            .into_iter()
            .filter(|p| !p.starts_with('/') && !p.ends_with('/') && !p.contains("//"))
            .collect();
        for a in specs {
            for b in specs {
                let witness = all.iter().find(|p| covers(a, p) && covers(b, p));
                assert_eq!(
                    overlap(a, b),
                    witness.is_some(),
                    "{a} / {b}: witness {witness:?}"
                );
            }
        }
    }
}
