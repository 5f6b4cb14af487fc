//! Health checks of the coordination dir (`buildlock doctor`), for [`Home`](super::Home) (the
//! folders every backend uses: the dir itself, logs, the claims registry's lock and bell, the
//! size) and for the local backend (its state, locks and leases, and the state's bell): the
//! folders can really be written, and locking works in them; the bells are FIFOs of ours; how
//! big it all is. Every probe does the real thing and cleans up after itself: a probe file is
//! created, written, synced and removed; a folder that does not exist yet is not created (its
//! nearest existing parent is probed instead).

use crate::os::say::shell_quote;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::os::lock::Lock;
use crate::store::finding::Finding;

/// The folders every backend writes in the coordination dir, and what each holds.
const HOME_FOLDERS: [(&str, &str); 1] = [("logs", "failure logs")];

/// The local backend's folders in the coordination dir, and what each holds.
const STORE_FOLDERS: [(&str, &str); 3] = [
    ("state", "the build state of each key"),
    ("locks", "the election and fixer locks"),
    ("leases", "fixers' heartbeats"),
];

/// The coordination dir as every backend uses it: it and its logs can be written, locking works
/// in it (the claims registry's lock), the registry's bell, how big it all is.
pub(super) fn home_findings(home: &Path) -> Vec<Finding> {
    let mut r = Vec::new();
    let mut dirs: Vec<(PathBuf, &str)> = vec![(home.to_owned(), "history, totals and claims")];
    dirs.extend(
        HOME_FOLDERS
            .iter()
            .map(|(name, what)| (home.join(name), *what)),
    );
    let writable = writable_findings(home, &dirs, &mut r);
    if writable {
        r.push(Finding::ok(format!(
            "the coordination dir {} is writable (a probe file was created, written and removed in each folder)",
            home.display()
        )));
    }
    lock_findings(home, writable, &mut r);
    bell_findings(home, &["registry"], &mut r);
    r.push(size_finding(home));
    r
}

/// The local backend's own folders: state, locks and leases can be written, locking works in
/// `locks/`, stray temp files of killed writers, the state's bell.
pub(super) fn store_findings(home: &Path) -> Vec<Finding> {
    let mut r = Vec::new();
    let dirs: Vec<(PathBuf, &str)> = STORE_FOLDERS
        .iter()
        .map(|(name, what)| (home.join(name), *what))
        .collect();
    let writable = writable_findings(home, &dirs, &mut r);
    if writable {
        r.push(Finding::ok(format!(
            "the local state's folders in {} are writable (state, locks, leases)",
            home.display()
        )));
    }
    let locks = home.join("locks");
    // Not made yet: the first election makes it, in the dir whose locking is probed for Home.
    if locks.is_dir() {
        lock_findings(&locks, writable, &mut r);
    }
    for entry in fs::read_dir(home.join("state"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with('.') {
            r.push(Finding::note(format!(
                "stray temp file {} (a writer was killed; the next write removes it)",
                entry.path().display()
            )));
        }
    }
    bell_findings(home, &["state"], &mut r);
    r
}

/// Probes each of `dirs` (in the coordination dir `home`) with a real write; whether all could
/// be written.
fn writable_findings(home: &Path, dirs: &[(PathBuf, &str)], r: &mut Vec<Finding>) -> bool {
    let mut writable = true;
    for (dir, what) in dirs {
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() && !fs::metadata(dir).is_ok_and(|m| m.is_dir()) => {
                writable = false;
                r.push(Finding::problem(
                    format!(
                        "{} is not a folder, so buildlock cannot write {what} there: every failure's coordination fails",
                        dir.display()
                    ),
                    format!(
                        "move it away (`mv {0} {0}.bak`); buildlock creates the folder again",
                        shell_quote(&dir.display().to_string())
                    ),
                ));
            }
            Ok(_) => {
                if let Err(e) = write_probe(dir) {
                    writable = false;
                    r.push(Finding::problem(
                        format!(
                            "cannot write in {} ({what}): {e}",
                            dir.display()
                        ),
                        format!(
                            "make it writable for the user who commits (`ls -ld {0}`; `lsattr -d {0}` shows an immutable flag)",
                            shell_quote(&dir.display().to_string())
                        ),
                    ));
                }
            }
            // Not created yet: the first failure creates it inside its nearest existing parent.
            Err(_) => {
                let parent = dir.ancestors().find(|a| a.is_dir()).unwrap_or(home);
                if parent.starts_with(home) {
                    continue; // the coordination dir itself was probed first
                }
                if let Err(e) = write_probe(parent) {
                    writable = false;
                    r.push(Finding::problem(
                        format!(
                            "{} does not exist yet and cannot be created in {}: {e}",
                            dir.display(),
                            parent.display()
                        ),
                        format!(
                            "make {} writable for the user who commits",
                            shell_quote(&parent.display().to_string())
                        ),
                    ));
                }
            }
        }
    }
    writable
}

/// File locking works in `dir` (a second take of a lock is refused, as between two agents).
fn lock_findings(dir: &Path, writable: bool, r: &mut Vec<Finding>) {
    match lock_probe(dir) {
        Ok(true) => r.push(Finding::ok(format!("file locking works in {}", dir.display()))),
        Ok(false) => r.push(Finding::problem(
            format!(
                "file locking does NOT work in {} (a network or virtual file system?): buildlock cannot coordinate here",
                dir.display()
            ),
            "keep the repository's git directory on a local disk (all agents must reach the same git common dir)",
        )),
        // Not a second problem when the dir cannot be written at all: said above.
        Err(e) if writable => r.push(Finding::problem(
            format!("cannot test locking in {}: {e}", dir.display()),
            "make the coordination dir writable for the user who commits",
        )),
        Err(_) => {}
    }
}

/// The bells (FIFOs that wake waiters): something else in their place does not break
/// coordination, but waiters then notice a fix only at their next look, seconds later.
fn bell_findings(home: &Path, names: &[&str], r: &mut Vec<Finding>) {
    for name in names {
        let path = home.join(format!("{name}.bell"));
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // made by the first waiter
        };
        let ours = crate::os::fs::owner(&meta) == crate::os::process::euid();
        if !crate::os::bell::is_bell(&meta) || !ours {
            r.push(Finding::problem(
                format!(
                    "{} is not a FIFO of yours, so waiters are not woken by changes: they notice \
                     a fix only at their next look, seconds later",
                    path.display()
                ),
                format!(
                    "remove it (`rm {}`); the next waiter makes it again",
                    shell_quote(&path.display().to_string())
                ),
            ));
        }
    }
}

/// Creates, writes, syncs and removes a fresh file in `dir`.
fn write_probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".doctor-{}.probe", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(b"buildlock doctor write probe\n")?;
            f.sync_all()
        });
    let removed = fs::remove_file(&path);
    result?;
    removed
}

/// Takes a lock on a fresh file in `dir` and checks that a second take is refused, as it must be
/// between two agents. Removes the file. A folder not made yet is probed in its parent.
fn lock_probe(dir: &Path) -> std::io::Result<bool> {
    let Some(dir) = dir.ancestors().find(|a| a.is_dir()) else {
        return Ok(true);
    };
    let path = dir.join(format!(".doctor-{}.lock", std::process::id()));
    let result = (|| {
        let Some(_held) = Lock::try_acquire(&path)? else {
            return Ok(false);
        };
        Ok(Lock::try_acquire(&path)?.is_none())
    })();
    let _ = fs::remove_file(&path);
    result
}

/// (d) files and bytes in each folder, and in all.
fn size_finding(home: &Path) -> Finding {
    fn walk(path: &Path, files: &mut u64, bytes: &mut u64) {
        let Ok(m) = fs::symlink_metadata(path) else {
            return;
        };
        if m.is_dir() {
            for e in fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&e.path(), files, bytes);
            }
        } else {
            *files += 1;
            *bytes += m.len();
        }
    }
    if !home.is_dir() {
        return Finding::size(format!(
            "{} does not exist yet: it is created at the first failure",
            home.display()
        ));
    }
    let mut parts = Vec::new();
    let (mut all_files, mut all_bytes) = (0, 0);
    for name in [
        "state",
        "locks",
        "logs",
        "leases",
        "history.jsonl",
        "totals.json",
    ] {
        let (mut files, mut bytes) = (0, 0);
        walk(&home.join(name), &mut files, &mut bytes);
        all_files += files;
        all_bytes += bytes;
        if name.contains('.') {
            if files > 0 {
                parts.push(format!("{name} {}", human_bytes(bytes)));
            }
        } else {
            parts.push(format!(
                "{name}/ {files} file{} {}",
                if files == 1 { "" } else { "s" },
                human_bytes(bytes)
            ));
        }
    }
    Finding::size(format!(
        "{}: {all_files} files, {} ({}); logs keep the last 200, history its last MiB",
        home.display(),
        human_bytes(all_bytes),
        parts.join(", ")
    ))
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}
