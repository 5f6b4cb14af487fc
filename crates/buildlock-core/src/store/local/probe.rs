//! The local backend's own health checks (`buildlock doctor`): the coordination dir and its
//! folders can really be written, and locking works in them; the bells are FIFOs of ours; how
//! big it all is. Every probe does the real thing and cleans up after itself: a probe file is
//! created, written, synced and removed; a folder that does not exist yet is not created (its
//! nearest existing parent is probed instead).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::os::lock::Lock;
use crate::store::finding::Finding;

/// The coordination dir's sub-folders the store writes, and what each holds.
const FOLDERS: [(&str, &str); 4] = [
    ("state", "the build state of each key"),
    ("locks", "the election and fixer locks"),
    ("logs", "failure logs"),
    ("leases", "fixers' heartbeats"),
];

/// (c) the coordination dir and its folders can really be written, and locking works in them;
/// (d) how big they are.
pub(super) fn findings(home: &Path) -> Vec<Finding> {
    let mut r = Vec::new();
    let mut dirs: Vec<(PathBuf, &str)> = vec![(home.to_owned(), "history and totals")];
    dirs.extend(FOLDERS.iter().map(|(name, what)| (home.join(name), *what)));
    let mut writable = true;
    for (dir, what) in &dirs {
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
    if writable {
        r.push(Finding::ok(format!(
            "the coordination dir {} is writable (a probe file was created, written and removed in each folder)",
            home.display()
        )));
    }
    match lock_probe(home) {
        Ok(true) => r.push(Finding::ok(format!("file locking works in {}", home.display()))),
        Ok(false) => r.push(Finding::problem(
            format!(
                "file locking does NOT work in {} (a network or virtual file system?): buildlock cannot coordinate here",
                home.display()
            ),
            "keep the repository's git directory on a local disk (all agents must reach the same git common dir)",
        )),
        // Not a second problem when the dir cannot be written at all: said above.
        Err(e) if writable => r.push(Finding::problem(
            format!("cannot test locking in {}: {e}", home.display()),
            "make the coordination dir writable for the user who commits",
        )),
        Err(_) => {}
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
    bell_findings(home, &mut r);
    r.push(size_finding(home));
    r
}

/// The bells (FIFOs that wake waiters): something else in their place does not break
/// coordination, but waiters then notice a fix only at their next look, seconds later.
fn bell_findings(home: &Path, r: &mut Vec<Finding>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for name in ["state", "registry"] {
        let path = home.join(format!("{name}.bell"));
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // made by the first waiter
        };
        let ours = meta.uid() == crate::os::process::euid();
        if !meta.file_type().is_fifo() || !ours {
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

/// Takes a lock on a fresh file in `locks/` and checks that a second take is refused, as it must
/// be between two agents. Removes the file.
fn lock_probe(home: &Path) -> std::io::Result<bool> {
    let locks = home.join("locks");
    // A missing locks/ is created by the first election; probe in the coordination dir then.
    let dir = if locks.is_dir() {
        locks
    } else {
        home.to_owned()
    };
    if !dir.is_dir() {
        return Ok(true); // nothing exists yet: the write probe above spoke for the parent
    }
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

/// `text` as one word for `sh`, quoted only when it must be.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
