//! The remote store's ref layout: the names of a key's chain, of its fix commits and of the
//! doctor's probe under `refs/buildlock/`, and how `ls-remote` output is read back into keys.
//!
//! ```text
//! refs/buildlock/state/<base>/<sub>/<E>   the key's chain; E = the `seq` of the chain's root
//! refs/buildlock/fix/<base>/<sub>/<oid>   the commit that fixed the key's last breakage
//! refs/buildlock/probe/<host>-<pid>       `buildlock doctor`'s push test (created, then deleted)
//! ```
//!
//! Guarantees:
//! - every agent names a key's refs the same way, from the key alone ([`key_path`]);
//! - every state and fix ref sits at the same depth, so no ref name is ever a prefix directory of
//!   another (git refuses `a` beside `a/b`), and one pattern lists all the keys of a base;
//! - reading is total: a ref under our prefixes that does not fit the layout is ignored, never an
//!   error; of a key's epochs the highest is its state, the others are strays ([`split_epochs`]).
//!
//! Pure: no I/O here.

use std::collections::BTreeMap;

use crate::protocol::key::{base_of, file_stem};

pub const STATE_PREFIX: &str = "refs/buildlock/state/";
pub const FIX_PREFIX: &str = "refs/buildlock/fix/";
pub const PROBE_PREFIX: &str = "refs/buildlock/probe/";

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

/// The `ls-remote` patterns of every key's refs.
pub(super) fn all_keys() -> [String; 2] {
    [format!("{STATE_PREFIX}*"), format!("{FIX_PREFIX}*")]
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
            if let Some((stem, _)) = rest
                .rsplit_once('/')
                .filter(|(s, _)| s.matches('/').count() == 1)
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
