//! The pathspec language against git's own matching: for a set of files committed to a temporary
//! repository and a set of pathspecs, what `covers` says of each file (after `normalize`, as a
//! claim stores it) must be what `git ls-files -- <pathspec>` lists. The few places where the
//! language is wider than git on purpose (see `pathspec.rs`) are checked to be wider only, never
//! narrower: a claim may keep agents apart where git would not, never let them into one file.
//!
//! Runs the system `git`, isolated from the user's and the system's configuration.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use buildlock_protocol::pathspec::{Found, covers, normalize};

const FILES: &[&str] = &[
    "README",
    "x.py",
    "a.txt",
    "ab/c",
    "a/b.txt",
    "a/b/c.txt",
    "a*b",
    "axb",
    "a[b",
    "a[1].txt",
    "a1.txt",
    "d[1]/x",
    "d1/x",
    "doc",
    "docs/a.md",
    "docs/sub/b.md",
    "docs2/a",
    "file1.txt",
    "file2.txt",
    "fileA.txt",
    "lib/x.py",
    "src/x.py",
    "src/x.pyc",
    "src/apix",
    "src/api/x.py",
    "src/api/x.rs",
    "src/api/v2/y.py",
    "src/bpi/x",
    "src/zpi/x",
    "src/x/tests/t.rs",
    "dir/sub/deep/file.rs",
    "weird name.txt",
];

/// Pathspecs on which the language and git must agree exactly.
const SAME: &[&str] = &[
    "*",
    "**",
    ".",
    "*.py",
    "**/*.py",
    "*/*.py",
    "?.py",
    "src/*.py",
    "src/**",
    "src/*",
    "src/api/*",
    "src/api/*.py",
    "src/a?i/*",
    "src/a?i",
    "src",
    "src/",
    "src/api",
    "./src/../docs",
    "docs",
    "docs/",
    "doc",
    "a",
    "a/",
    "a/b",
    "a/b.txt",
    "a/*/c.txt",
    "*/b.txt",
    "src/x.py",
    "src/x.py*",
    "src/[a-c]pi/x",
    "src/[!a-c]pi/x",
    "src/[^a-c]pi/*",
    "src/[bz]pi",
    "a\\*b",
    "a[b",
    "file[0-9].txt",
    "file[!0-9].txt",
    "file?.txt",
    "file[[:digit:]].txt",
    "file[[:alpha:]].txt",
    "*.[tp][xy]*",
    "src/*/tests",
    "*tests*",
    "dir/sub",
    "dir/*/deep",
    "weird name.txt",
    "weird*",
    "nothing/here",
    "*.none",
];

/// Names that exist and hold glob characters: a claim is that path alone (git also matches them
/// as globs: `a*b` lists `axb` too), so that it never takes the neighbours of a file.
const EXISTING: &[(&str, &[&str])] = &[
    ("a*b", &["a*b"]),
    ("a[1].txt", &["a[1].txt"]),
    ("d[1]", &["d[1]/x"]),
    ("d[1]/", &["d[1]/x"]),
];

/// Pathspecs where the language is wider than git on purpose (see `pathspec.rs`).
const WIDER: &[&str] = &["src/*/tests/", "src/a?i/", "docs/*/", "src/x.py/"];

fn git(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    git(dir.path(), &["init", "-q"]);
    for file in FILES {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, file).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "files"]);
    dir
}

/// What git lists for `spec`.
fn by_git(repo: &Path, spec: &str) -> BTreeSet<String> {
    let out = git(repo, &["ls-files", "-z", "--", spec]);
    out.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// What a claim on `spec` covers.
fn by_claim(root: &Path, spec: &str) -> BTreeSet<String> {
    let found = |p: &str| {
        if FILES.contains(&p) {
            Some(Found::File)
        } else if FILES.iter().any(|f| f.starts_with(&format!("{p}/"))) {
            Some(Found::Folder)
        } else {
            None
        }
    };
    let spec = normalize(spec, root, found).unwrap_or_else(|e| panic!("{spec}: {e}"));
    FILES
        .iter()
        .filter(|f| covers(&spec, f))
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn the_files_are_what_git_lists() {
    let repo = repo();
    let all: BTreeSet<String> = FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(by_git(repo.path(), "."), all);
}

#[test]
fn pathspecs_cover_what_git_matches() {
    let repo = repo();
    let mut mismatches = Vec::new();
    for spec in SAME {
        let (git, claim) = (by_git(repo.path(), spec), by_claim(repo.path(), spec));
        if git != claim {
            mismatches.push(format!(
                "{spec:?}: git lists {git:?}, a claim covers {claim:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_name_that_exists_is_that_path_literally() {
    let repo = repo();
    for (spec, only) in EXISTING {
        let claim = by_claim(repo.path(), spec);
        let only: BTreeSet<String> = only.iter().map(|p| p.to_string()).collect();
        assert_eq!(claim, only, "{spec:?}");
        // git lists it too (and, as a glob, maybe more).
        assert!(by_git(repo.path(), spec).is_superset(&only), "{spec:?}");
    }
}

#[test]
fn where_the_language_is_wider_it_is_only_wider() {
    let repo = repo();
    for spec in WIDER {
        let (git, claim) = (by_git(repo.path(), spec), by_claim(repo.path(), spec));
        assert!(
            claim.is_superset(&git) && claim != git,
            "{spec:?}: git lists {git:?}, a claim covers {claim:?}"
        );
    }
}

#[test]
fn pathspec_magic_is_refused_not_misread() {
    let repo = repo();
    for spec in [
        ":(glob)src/**/*.py",
        ":(literal)a*b",
        ":!docs",
        ":/src",
        ":(icase)readme",
    ] {
        // git understands these; a claim refuses them rather than reading them as a plain name.
        let _ = by_git(repo.path(), spec);
        let e = normalize(spec, repo.path(), |_| None).unwrap_err();
        assert!(e.contains("magic"), "{spec}: {e}");
    }
}
