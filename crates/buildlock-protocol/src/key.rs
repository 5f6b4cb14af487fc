//! What one fixer covers: the key.
//!
//! `scope` gives the base key: `repo`, the current branch name, or the HEAD commit id. With
//! `match = "signature"` the key is `<base>#<signature>`, so two different breakages get two
//! fixers.

use crate::config::{Match, Scope};

/// The base key for `scope`: `repo`, the current branch's name, or the HEAD commit id. The caller
/// reads the repository; `branch` and `head_commit` give what it read, and only the one the scope
/// needs is asked for (each is a look at the repository).
pub fn base(
    scope: Scope,
    branch: impl FnOnce() -> String,
    head_commit: impl FnOnce() -> String,
) -> String {
    match scope {
        Scope::Repo => "repo".to_owned(),
        Scope::Branch => branch(),
        Scope::Commit => head_commit(),
    }
}

pub fn for_failure(base: &str, matching: Match, signature: &str) -> String {
    match matching {
        Match::Any => base.to_owned(),
        Match::Signature => format!("{base}#{signature}"),
    }
}

/// The base key of `key`: the key itself, or what precedes `#<signature>` (16 hex digits).
pub fn base_of(key: &str) -> &str {
    match key.rsplit_once('#') {
        Some((base, sig)) if sig.len() == 16 && sig.bytes().all(|b| b.is_ascii_hexdigit()) => base,
        _ => key,
    }
}

/// A file name for `key`: the key itself when it is a safe name, else a sanitised form with a
/// hash of the whole key, so that different keys never share a file.
pub fn file_stem(key: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let plain = key.len() <= 64 && key.chars().all(safe) && !key.starts_with('.');
    if plain {
        return key.to_owned();
    }
    let cleaned: String = key
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .take(48)
        .collect();
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}-{:08x}", cleaned.trim_start_matches('.'), hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_picks_the_base() {
        let base = |scope| base(scope, || "main".to_owned(), || "0123abcd".to_owned());
        assert_eq!(base(Scope::Repo), "repo");
        assert_eq!(base(Scope::Branch), "main");
        assert_eq!(base(Scope::Commit), "0123abcd");
    }

    #[test]
    fn signature_keys_extend_the_base() {
        assert_eq!(for_failure("repo", Match::Any, "abc"), "repo");
        assert_eq!(for_failure("main", Match::Signature, "abc"), "main#abc");
    }

    #[test]
    fn the_base_of_a_key() {
        assert_eq!(base_of("repo"), "repo");
        assert_eq!(base_of("main#0123456789abcdef"), "main");
        assert_eq!(
            base_of("feat#1"),
            "feat#1",
            "a branch name with # stays whole"
        );
    }

    #[test]
    fn file_stems_are_safe_and_distinct() {
        assert_eq!(file_stem("repo"), "repo");
        let a = file_stem("feature/x");
        let b = file_stem("feature_x");
        assert_ne!(a, b);
        assert!(!a.contains('/'));
        assert!(!file_stem("../../etc").starts_with('.'));
        assert!(file_stem(&"x".repeat(300)).len() < 64);
    }
}
