//! The remote store's ref layout: the names of a key's chain, of its fix commits and of the
//! doctor's probe under `refs/buildlock/`, and how `ls-remote` output is read back into keys.
//!
//! ```text
//! refs/buildlock/state/<base>/<sub>/<E>   the key's chain; E = the `seq` of the chain's root
//! refs/buildlock/fix/<base>/<sub>/<oid>   the commit that fixed the key's last breakage
//! refs/buildlock/probe/<host>-<pid>       `buildlock doctor`'s push test (created, then deleted)
//! refs/buildlock/wait/<base>/<sub>/<G>/<agent>   one waiter of the key's generation G (see
//!                                         `waiters`): written by that waiter only
//! refs/buildlock/note/<base>/<sub>/<G>/<agent>   that agent's note about the key (see `waiters`)
//! ```
//!
//! Guarantees:
//! - every agent names a key's refs the same way, from the key alone ([`key_path`]);
//! - every state and fix ref sits at the same depth, so no ref name is ever a prefix directory of
//!   another (git refuses `a` beside `a/b`), and one pattern lists all the keys of a base;
//! - reading is total: a ref under our prefixes that does not fit the layout is ignored, never an
//!   error; of a key's epochs the highest is its state, the others are strays ([`split_epochs`]);
//! - the layout is an allowlist: a state ref is `<base>/<sub>/<decimal epoch>`, a fix ref is
//!   `<base>/<sub>/<the oid it points at>`, a waiter's or a note's ref is
//!   `<base>/<sub>/<decimal generation>/<agent stem>` (`side_refs`); only refs of these shapes
//!   are ever read as a key's, and so only they are ever pruned (other refs under
//!   `refs/buildlock/`, such as claims, are not ours to judge).
//!
//! Pure: no I/O here.

use std::collections::BTreeMap;

use crate::protocol::key::{base_of, file_stem};

pub const STATE_PREFIX: &str = "refs/buildlock/state/";
pub const FIX_PREFIX: &str = "refs/buildlock/fix/";
pub const PROBE_PREFIX: &str = "refs/buildlock/probe/";
pub const WAIT_PREFIX: &str = "refs/buildlock/wait/";
pub const NOTE_PREFIX: &str = "refs/buildlock/note/";

/// One waiter's ref of a key on the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WaitRef {
    pub name: String,
    pub oid: String,
    /// The generation it waits for.
    pub generation: u64,
    /// The waiter's agent, as [`agent_stem`] names it.
    pub agent: String,
}

/// One ref of a key's chain on the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tip {
    pub epoch: u64,
    pub oid: String,
    pub name: String,
}

/// A key's refs on the remote: its chain's epochs, and its fix refs `(name, oid)`.
pub(super) type KeyRefs = (Vec<Tip>, Vec<(String, String)>);

/// Where `key`'s refs live under `refs/buildlock/state/` and `refs/buildlock/fix/`:
/// `<base stem>/<sub>`, where `<sub>` is `_` for the base key itself, or the file stem of what
/// follows the base (a `match = "signature"` key's signature).
pub fn key_path(key: &str) -> String {
    let base = base_of(key);
    let sub = if base.len() == key.len() {
        "_".to_owned()
    } else {
        file_stem(&key[base.len() + 1..])
    };
    format!("{}/{sub}", file_stem(base))
}

/// The base stem of a key path: what every key of one base shares.
pub(super) fn base_stem(path: &str) -> &str {
    path.split('/').next().unwrap_or_default()
}

/// Whether the key path `path` belongs to the base whose stem is `base_stem`.
pub(super) fn in_base(path: &str, base_stem: &str) -> bool {
    path.starts_with(&format!("{base_stem}/"))
}

/// The state ref of the chain of the key at `path` that starts at `epoch`.
pub(super) fn state_ref(path: &str, epoch: u64) -> String {
    format!("{STATE_PREFIX}{path}/{epoch}")
}

/// The ref under which the fix commit `commit` of `key` is published.
pub fn fix_ref_name(key: &str, commit: &str) -> String {
    format!("{FIX_PREFIX}{}/{commit}", key_path(key))
}

/// The `ls-remote` pattern of every state ref of a base's keys.
pub(super) fn base_states(base_stem: &str) -> String {
    format!("{STATE_PREFIX}{base_stem}/*")
}

/// The `ls-remote` pattern of the fix refs of the key at `path`.
pub(super) fn key_fixes(path: &str) -> String {
    format!("{FIX_PREFIX}{path}/*")
}

/// The `ls-remote` pattern of the waiters' refs of the key at `path`.
pub(super) fn key_waits(path: &str) -> String {
    format!("{WAIT_PREFIX}{path}/*")
}

/// The `ls-remote` patterns of every key's refs (states, fixes, waiters, notes).
pub(super) fn all_keys() -> [String; 4] {
    [
        format!("{STATE_PREFIX}*"),
        format!("{FIX_PREFIX}*"),
        format!("{WAIT_PREFIX}*"),
        format!("{NOTE_PREFIX}*"),
    ]
}

/// The ref of `agent`'s note about the generation `generation` of the key at `path`.
pub(super) fn note_ref(path: &str, generation: u64, agent: &str) -> String {
    format!("{NOTE_PREFIX}{path}/{generation}/{}", agent_stem(agent))
}

/// An agent id as one component of a ref name: the id itself when it is plain (letters, digits,
/// `_`, `-`, at most 64), else what of it is plain and a hash of all of it, so that two ids never
/// share a ref and no id makes an invalid ref name (`..`, `.lock`, `:`, spaces).
pub(super) fn agent_stem(agent: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
    if !agent.is_empty() && agent.len() <= 64 && agent.chars().all(plain) {
        return agent.to_owned();
    }
    let cleaned: String = agent
        .chars()
        .map(|c| if plain(c) { c } else { '_' })
        .take(48)
        .collect();
    let hash = agent.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{cleaned}-{hash:016x}")
}

/// The ref of `agent`'s wait for the generation `generation` of the key at `path`.
pub(super) fn wait_ref(path: &str, generation: u64, agent: &str) -> String {
    format!("{WAIT_PREFIX}{path}/{generation}/{}", agent_stem(agent))
}

/// The waiters' refs of the key at `path` among `ls-remote` output `(oid, name)`; refs that do
/// not fit the layout are left out.
pub(super) fn waits_of(refs: &[(String, String)], path: &str) -> Vec<WaitRef> {
    let prefix = format!("{WAIT_PREFIX}{path}/");
    refs.iter()
        .filter_map(|(oid, name)| {
            let (generation, agent) = name.strip_prefix(&prefix)?.split_once('/')?;
            (!agent.is_empty() && !agent.contains('/')).then_some(())?;
            Some(WaitRef {
                name: name.clone(),
                oid: oid.clone(),
                generation: generation.parse().ok()?,
                agent: agent.to_owned(),
            })
        })
        .collect()
}

/// A waiter's or a note's ref of the exact shape [`wait_ref`] and [`note_ref`] name:
/// `<prefix><base>/<sub>/<decimal generation>/<agent stem>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SideRef {
    pub name: String,
    pub oid: String,
    /// The key path it belongs to (`<base>/<sub>`).
    pub path: String,
    pub generation: u64,
    /// The agent, as [`agent_stem`] names it.
    pub agent: String,
    /// A note (under [`NOTE_PREFIX`]), else a waiter (under [`WAIT_PREFIX`]).
    pub note: bool,
}

/// The waiters' and notes' refs among `ls-remote` output `(oid, name)`, of every key. Only the
/// exact shapes this version writes: a generation in plain decimal (no sign, no leading zero),
/// an agent stem of the characters [`agent_stem`] makes; anything else is left out (and so never
/// pruned).
pub(super) fn side_refs(refs: &[(String, String)]) -> Vec<SideRef> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 65
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    };
    refs.iter()
        .filter_map(|(oid, name)| {
            let (rest, note) = match name.strip_prefix(WAIT_PREFIX) {
                Some(rest) => (rest, false),
                None => (name.strip_prefix(NOTE_PREFIX)?, true),
            };
            let parts: Vec<&str> = rest.split('/').collect();
            let [base, sub, generation, agent] = parts[..] else {
                return None;
            };
            let decimal = generation.bytes().all(|b| b.is_ascii_digit())
                && (generation == "0" || !generation.starts_with('0'));
            (!base.is_empty() && !sub.is_empty() && decimal && plain(agent)).then_some(())?;
            Some(SideRef {
                name: name.clone(),
                oid: oid.clone(),
                path: format!("{base}/{sub}"),
                generation: generation.parse().ok()?,
                agent: agent.to_owned(),
                note,
            })
        })
        .collect()
}

/// Groups `ls-remote` output `(oid, name)` into keys: key path -> (epochs, fix refs). Refs that
/// do not fit the layout are left out.
pub(super) fn group(refs: &[(String, String)]) -> BTreeMap<String, KeyRefs> {
    let mut keys: BTreeMap<String, KeyRefs> = BTreeMap::new();
    for (oid, name) in refs {
        if let Some(rest) = name.strip_prefix(STATE_PREFIX) {
            let Some((stem, epoch)) = rest.rsplit_once('/') else {
                continue;
            };
            if stem.matches('/').count() != 1 {
                continue;
            }
            let Ok(epoch) = epoch.parse::<u64>() else {
                continue;
            };
            keys.entry(stem.to_owned()).or_default().0.push(Tip {
                epoch,
                oid: oid.clone(),
                name: name.clone(),
            });
        } else if let Some(rest) = name.strip_prefix(FIX_PREFIX) {
            // A fix ref is named by the commit it points at: anything else is not ours.
            if let Some((stem, _)) = rest
                .rsplit_once('/')
                .filter(|(s, named)| s.matches('/').count() == 1 && names_oid(named, oid))
            {
                keys.entry(stem.to_owned())
                    .or_default()
                    .1
                    .push((name.clone(), oid.clone()));
            }
        }
    }
    keys
}

/// Whether the last part of a fix ref's name is the object id `oid` it points at (as
/// [`fix_ref_name`] names it).
fn names_oid(named: &str, oid: &str) -> bool {
    matches!(named.len(), 40 | 64)
        && named.bytes().all(|b| b.is_ascii_hexdigit())
        && named.eq_ignore_ascii_case(oid)
}

/// The highest epoch of a key's chain: its state.
pub(super) fn top(tips: &[Tip]) -> Option<&Tip> {
    tips.iter().max_by_key(|t| t.epoch)
}

/// A key's epochs split into the current one (the highest) and the strays below it.
pub(super) fn split_epochs(mut tips: Vec<Tip>) -> (Option<Tip>, Vec<Tip>) {
    tips.sort_by_key(|t| t.epoch);
    let current = tips.pop();
    (current, tips)
}

/// The doctor's probe ref for this process: host and pid, with anything a ref name cannot hold
/// replaced by `_`.
pub(super) fn probe_ref_name(host: &str, pid: u32) -> String {
    format!("{PROBE_PREFIX}{host}-{pid}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_./".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An object id cut to 12 hex digits, for people.
pub(super) fn short(oid: &str) -> &str {
    &oid[..oid.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tip(path: &str, epoch: u64, oid: &str) -> Tip {
        Tip {
            epoch,
            oid: oid.into(),
            name: state_ref(path, epoch),
        }
    }

    fn listed(refs: &[(&str, &str)]) -> Vec<(String, String)> {
        refs.iter()
            .map(|(o, n)| ((*o).to_owned(), (*n).to_owned()))
            .collect()
    }

    #[test]
    fn a_base_key_and_its_sub_keys_share_one_base_stem() {
        let base = key_path("commit");
        let sub = key_path("commit#0123456789abcdef");
        assert_eq!(base, "commit/_");
        assert_eq!(sub, "commit/0123456789abcdef");
        assert_eq!(base_stem(&base), "commit");
        assert_eq!(base_stem(&sub), "commit");
        assert!(in_base(&sub, "commit"));
        assert!(
            !in_base("commits/_", "commit"),
            "a base whose stem extends another's is not part of it"
        );
    }

    #[test]
    fn every_key_path_has_exactly_two_parts() {
        for key in [
            "commit",
            "commit#0123456789abcdef",
            "branch:main",
            "a/b/c",
            "a/b#0123456789abcdef",
            "not#a-signature",
        ] {
            let path = key_path(key);
            assert_eq!(path.matches('/').count(), 1, "{key} -> {path}");
        }
        assert_eq!(
            key_path("not#a-signature").split('/').nth(1),
            Some("_"),
            "only a 16-hex signature makes a sub key"
        );
    }

    #[test]
    fn state_and_fix_refs_read_back_as_the_key_they_were_named_for() {
        let key = "commit#0123456789abcdef";
        let path = key_path(key);
        let f = "f00d".repeat(10);
        let fix = fix_ref_name(key, &f);
        assert_eq!(fix, format!("{FIX_PREFIX}{path}/{f}"));
        let refs = listed(&[
            ("a1", &state_ref(&path, 1)),
            ("a7", &state_ref(&path, 7)),
            (&f, &fix),
            ("b1", &state_ref(&key_path("commit"), 3)),
        ]);
        let keys = group(&refs);
        assert_eq!(keys.len(), 2);
        let (tips, fixes) = &keys[&path];
        assert_eq!(tips, &[tip(&path, 1, "a1"), tip(&path, 7, "a7")]);
        assert_eq!(fixes, &[(fix, f.clone())]);
        let (tips, fixes) = &keys["commit/_"];
        assert_eq!(tips, &[tip("commit/_", 3, "b1")]);
        assert!(fixes.is_empty());
    }

    #[test]
    fn refs_that_do_not_fit_the_layout_are_ignored() {
        let (ab, cd) = (
            "ab".repeat(20),
            format!("refs/buildlock/fix/commit/_/{}", "cd".repeat(20)),
        );
        let refs = listed(&[
            ("x", "refs/buildlock/state/commit/_/notanumber"),
            ("x", "refs/buildlock/state/commit/1"),
            ("x", "refs/buildlock/state/a/b/c/1"),
            ("x", "refs/buildlock/state/nodepth"),
            ("x", "refs/buildlock/fix/commit/f00d"),
            ("x", "refs/buildlock/fix/a/b/c/f00d"),
            // A fix ref is named by the commit it points at: not ours when it is not.
            ("x", "refs/buildlock/fix/commit/_/f00d"),
            (ab.as_str(), cd.as_str()),
            ("x", "refs/buildlock/claims/registry"),
            ("x", "refs/buildlock/claims/commit/_/1"),
            ("x", "refs/buildlock/probe/host-1"),
            ("x", "refs/heads/main"),
        ]);
        assert!(group(&refs).is_empty(), "{:?}", group(&refs));
    }

    #[test]
    fn the_highest_epoch_is_the_state_and_the_rest_are_strays() {
        let tips = vec![
            tip("k/_", 5, "e5"),
            tip("k/_", 12, "e12"),
            tip("k/_", 1, "e1"),
        ];
        assert_eq!(top(&tips).map(|t| t.epoch), Some(12));
        let (current, strays) = split_epochs(tips);
        assert_eq!(current, Some(tip("k/_", 12, "e12")));
        assert_eq!(strays, [tip("k/_", 1, "e1"), tip("k/_", 5, "e5")]);
        assert_eq!(split_epochs(Vec::new()), (None, Vec::new()));
        assert_eq!(top(&[]), None);
    }

    #[test]
    fn epochs_compare_as_numbers_not_as_text() {
        let tips = vec![tip("k/_", 9, "nine"), tip("k/_", 10, "ten")];
        assert_eq!(top(&tips).unwrap().oid, "ten");
        assert_eq!(split_epochs(tips).0.unwrap().oid, "ten");
    }

    #[test]
    fn patterns_list_what_group_reads() {
        assert_eq!(base_states("commit"), "refs/buildlock/state/commit/*");
        assert_eq!(key_fixes("commit/_"), "refs/buildlock/fix/commit/_/*");
        assert_eq!(
            all_keys(),
            [
                "refs/buildlock/state/*",
                "refs/buildlock/fix/*",
                "refs/buildlock/wait/*",
                "refs/buildlock/note/*"
            ]
            .map(str::to_owned)
        );
        assert_eq!(key_waits("commit/_"), "refs/buildlock/wait/commit/_/*");
    }

    #[test]
    fn waiter_refs_read_back_as_the_generation_and_agent_they_were_named_for() {
        let path = key_path("commit#0123456789abcdef");
        let mine = wait_ref(&path, 7, "flavor-1");
        assert_eq!(mine, format!("{WAIT_PREFIX}{path}/7/flavor-1"));
        let odd = wait_ref(&path, 8, "host:/work tree/..x.lock");
        let refs = listed(&[
            ("w1", &mine),
            ("w2", &odd),
            ("x", &wait_ref(&key_path("commit"), 7, "flavor-1")),
            ("x", &format!("{WAIT_PREFIX}{path}/notanumber/a")),
            ("x", &format!("{WAIT_PREFIX}{path}/7/a/b")),
            ("x", &format!("{WAIT_PREFIX}{path}/7")),
        ]);
        let waits = waits_of(&refs, &path);
        assert_eq!(waits.len(), 2, "{waits:?}");
        assert_eq!(
            (
                waits[0].generation,
                waits[0].agent.as_str(),
                waits[0].oid.as_str()
            ),
            (7, "flavor-1", "w1")
        );
        assert_eq!(waits[1].generation, 8);
        assert_eq!(waits[1].name, odd);
    }

    #[test]
    fn waiter_and_note_refs_of_every_key_read_back_in_their_exact_shape_only() {
        let path = key_path("commit#0123456789abcdef");
        let wait = wait_ref(&path, 7, "host:/work tree");
        let note = note_ref("other/_", 0, "flavor-1");
        let refs = listed(&[
            ("w", &wait),
            ("n", &note),
            ("x", "refs/buildlock/wait/commit/_/07/a"),
            ("x", "refs/buildlock/wait/commit/_/+7/a"),
            ("x", "refs/buildlock/wait/commit/_/7/a.b"),
            ("x", "refs/buildlock/wait/commit/_/7/a/b"),
            ("x", "refs/buildlock/wait/commit/_/7/"),
            ("x", "refs/buildlock/wait/commit/_/7"),
            ("x", "refs/buildlock/note/commit//7/a"),
            ("x", "refs/buildlock/notes/commit/_/7/a"),
            ("x", "refs/buildlock/claims/registry"),
            ("x", &state_ref("commit/_", 7)),
        ]);
        let side = side_refs(&refs);
        assert_eq!(
            side,
            [
                SideRef {
                    name: wait,
                    oid: "w".into(),
                    path: path.clone(),
                    generation: 7,
                    agent: agent_stem("host:/work tree"),
                    note: false,
                },
                SideRef {
                    name: note,
                    oid: "n".into(),
                    path: "other/_".into(),
                    generation: 0,
                    agent: "flavor-1".into(),
                    note: true,
                },
            ]
        );
    }

    #[test]
    fn agent_stems_are_valid_ref_components_and_never_shared() {
        for id in [
            "a.b",
            "a_b",
            "x.lock",
            "..",
            "a b",
            "host:/w/t",
            &"x".repeat(128),
            "",
        ] {
            let stem = agent_stem(id);
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)),
                "{id} -> {stem}"
            );
            assert!(!stem.is_empty() && stem.len() <= 65, "{id} -> {stem}");
        }
        assert_ne!(agent_stem("a.b"), agent_stem("a_b"));
        assert_eq!(agent_stem("flavor-3"), "flavor-3");
    }

    #[test]
    fn probe_ref_names_are_valid_ref_names() {
        assert_eq!(
            probe_ref_name("ci-runner.example", 42),
            "refs/buildlock/probe/ci-runner.example-42"
        );
        assert_eq!(
            probe_ref_name("my host:~^?*[x]", 7),
            "refs/buildlock/probe/my_host______x_-7"
        );
    }

    #[test]
    fn short_oids_are_twelve_digits_at_most() {
        assert_eq!(short("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
