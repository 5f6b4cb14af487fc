//! Files in the coordination directory: atomic writes, reads that never follow a symlink, and
//! the ownership check of the directory itself.
//!
//! - [`write_atomic`]: temp file in the same directory, write, (sync), rename, (sync the
//!   directory). A reader sees the old file or the new one, never a mix. The temp file has one
//!   name per target, `.<name>.tmp`: writers of one path are serialised by their caller (the
//!   election lock, or a file with a single writer), so a temp file left by a writer killed
//!   mid-write is simply overwritten by the next one, and no write ever lists the directory.
//!   Durability (the two syncs) is the caller's choice: the state that elects a fixer is durable;
//!   a waiter's name or a counter need not cost a disk flush.
//! - Every open uses `O_NOFOLLOW`: a symlink planted in the coordination directory is refused,
//!   never followed to a file elsewhere.

use anyhow::{Context, Result, anyhow, bail};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How much a write must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the machine: synced before and after the rename.
    Synced,
    /// Survives a crash of the process (the rename is atomic), not of the machine.
    Atomic,
}

/// Writes `bytes` to `path` atomically (see the module header).
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut file = match create(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)?;
                create(&tmp)?
            }
            other => other?,
        };
        file.write_all(bytes)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        crate::os::fault::point("state-write");
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(path)?;
        }
        fs::rename(&tmp, path)?;
        if durability == Durability::Synced {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens `path` for reading without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Reads at most `limit` bytes of `path` (without following a symlink). `Ok(None)` when the
/// file is larger than that.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = open_nofollow(path)?;
    // Sized from the file's length: one read(2) for a file that did not grow meanwhile.
    let size = file.metadata().map(|m| m.len()).unwrap_or(0).min(limit) as usize;
    let mut bytes = Vec::with_capacity(size + 1);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Opens `path` for appending (creating it), without following a symlink.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Temp files left in `dir` by writers that were killed mid-write and never followed by another
/// writer of the same file (older than a minute, so that a live writer's temp file is never
/// taken).
pub fn remove_strays(dir: &Path) {
    let minute = std::time::Duration::from_secs(60);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > minute);
        if name.starts_with('.') && name.contains(".tmp") && old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// `<temp dir>/<name>-<uid>`: a folder only this user can enter (made 0700 if missing), for
/// files that must not be forged or read by other users. `None` when it exists but is not such a
/// folder (a symlink, another owner, open to others) or cannot be made.
pub fn private_temp_dir(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("{name}-{me}"));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Some(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == me && meta.mode() & 0o077 == 0).then_some(dir)
}

/// Refuses a coordination directory that is a symlink or belongs to another user: buildlock
/// would otherwise write where someone else decides, or trust state someone else wrote.
pub fn check_owned(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    if meta.file_type().is_symlink() {
        bail!(
            "the coordination directory {} is a symbolic link; buildlock does not follow it: \
             replace it with a real directory (`rm {0}`; it is recreated)",
            dir.display()
        );
    }
    if !meta.is_dir() {
        bail!(
            "{} should be buildlock's coordination directory but is a file: move it away",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "the coordination directory {} belongs to user id {}, not to you (user id {me}): \
             buildlock will not share state with another user; run as that user, or remove the \
             directory if it is left over",
            dir.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// Sets `path`'s modification time to now if the file exists: one `utimensat` call, no open, no
/// write. `false` when there is no such file (the common case, which costs nothing more).
pub fn touch_existing(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; a null `times` means "now" for both times.
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) == 0 }
}

/// The modification time of `path` in unix milliseconds, if it exists.
pub fn modified_ms(path: &Path) -> Option<crate::os::time::Millis> {
    let t = fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        for durability in [Durability::Synced, Durability::Atomic] {
            write_atomic(&path, b"one", durability).unwrap();
            write_atomic(&path, b"two", durability).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"two");
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["x.json"]);
    }

    #[test]
    fn a_killed_writers_temp_file_is_taken_over_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        fs::write(dir.path().join(".x.json.tmp"), b"half a write").unwrap();
        write_atomic(&path, b"whole", Durability::Atomic).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"secret").unwrap();
        let link = dir.path().join("state.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_bounded(&link, 100).is_err());
        assert!(open_append(&link).is_err());
        // Writing replaces the link itself; the target is untouched.
        write_atomic(&link, b"new", Durability::Atomic).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        assert!(
            !fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn bounded_reads_refuse_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'x'; 1000]).unwrap();
        assert_eq!(read_bounded(&path, 999).unwrap(), None);
        assert_eq!(read_bounded(&path, 1000).unwrap().unwrap().len(), 1000);
    }

    #[test]
    fn strays_of_live_writers_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join(".x.json.tmp");
        fs::write(&fresh, b"half").unwrap();
        remove_strays(dir.path());
        assert!(fresh.exists(), "younger than a minute: maybe a live writer");
    }

    #[test]
    fn a_symlinked_coordination_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("buildlock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(check_owned(&link).is_err());
        assert!(check_owned(&real).is_ok());
        assert!(check_owned(&dir.path().join("missing")).is_ok());
    }
}
