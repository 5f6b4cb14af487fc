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
//!   never followed to a file elsewhere. Windows: the open asks for the reparse point itself
//!   (`FILE_FLAG_OPEN_REPARSE_POINT`) and refuses it when it is a link ([`refuse_link`]).
//! - Ownership: unix compares the owner's uid; Windows has no uid (a user's profile folders are
//!   already private to them), so [`owner`] and `process::euid` both read 0 there and the check
//!   is only the symlink one.

use anyhow::{Context, Result, anyhow, bail};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
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
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a rename in `dir` durable. Windows cannot open a directory for syncing without backup
/// privileges, and NTFS journals the rename itself: nothing to do there.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(windows)]
    {
        let _ = dir;
        Ok(())
    }
}

fn create(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    no_follow(&mut opts);
    refuse_link(opts.open(path)?)
}

/// Makes `opts` open a symlink at the last component as itself, not its target (unix: the open
/// then fails with ELOOP; Windows: [`refuse_link`] refuses it after the open).
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        std::os::unix::fs::OpenOptionsExt::custom_flags(opts, libc::O_NOFOLLOW)
    }
    #[cfg(windows)]
    {
        const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        std::os::windows::fs::OpenOptionsExt::custom_flags(opts, FILE_FLAG_OPEN_REPARSE_POINT)
    }
}

/// `file` unless it is a symlink (opened as itself, see [`no_follow`]): then an error, as
/// unix's ELOOP.
pub fn refuse_link(file: File) -> std::io::Result<File> {
    if cfg!(windows) && file.metadata()?.file_type().is_symlink() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a symbolic link, not followed",
        ));
    }
    Ok(file)
}

/// Opens `path` for reading without following a symlink at its last component (nor blocking on
/// a FIFO).
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    no_follow(&mut opts);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    refuse_link(opts.open(path)?)
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
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    no_follow(&mut opts);
    refuse_link(opts.open(path)?)
}

/// The identity of an open file (device and inode; Windows: volume serial and file index), to
/// tell whether a path still names it.
pub fn file_id(file: &File) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::Storage::FileSystem::{
            BY_HANDLE_FILE_INFORMATION, GetFileInformationByHandle,
        };
        // SAFETY: plain data, written by the call.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: a valid open handle and a valid struct to write to.
        if unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
        Ok((u64::from(info.dwVolumeSerialNumber), index))
    }
}

/// The identity of the file at `path` (see [`file_id`]), without following a symlink.
pub fn path_id(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(windows)]
    {
        let mut opts = OpenOptions::new();
        // No access asked: reading attributes needs none, and a lock does not refuse it.
        std::os::windows::fs::OpenOptionsExt::access_mode(&mut opts, 0);
        no_follow(&mut opts);
        file_id(&opts.open(path)?)
    }
}

/// The owner's user id of `meta` (Windows: 0, see the module header).
pub fn owner(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::uid(meta)
    }
    #[cfg(windows)]
    {
        let _ = meta;
        0
    }
}

/// Whether `meta` is open to users other than its owner (group or other permission bits; Windows:
/// never, see the module header).
pub fn open_to_others(meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        std::os::unix::fs::MetadataExt::mode(meta) & 0o077 != 0
    }
    #[cfg(windows)]
    {
        let _ = meta;
        false
    }
}

/// Whether `meta` is a regular file that may be run (unix: any execute bit; Windows: every file,
/// as Git for Windows' `sh` treats hooks).
pub fn is_executable(meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        meta.is_file() && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
    }
    #[cfg(windows)]
    {
        meta.is_file()
    }
}

/// Whether `meta` is a FIFO (Windows has none).
pub fn is_fifo(meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type())
    }
    #[cfg(windows)]
    {
        let _ = meta;
        false
    }
}

/// Sets `path`'s permission bits to `mode` (unix); Windows has none to set (`Ok`).
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }
    #[cfg(windows)]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// The permission bits of `meta` (unix); Windows: `0o755` for a file, as git records them.
pub fn mode(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
    }
    #[cfg(windows)]
    {
        let _ = meta;
        0o755
    }
}

/// Makes `link` a symlink to the file `target` (Windows: a file symlink, which needs developer
/// mode or the privilege; where refused, a copy of the file).
pub fn symlink_file(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::symlink_file(target, link)
            .or_else(|_| fs::copy(target, link).map(drop))
    }
}

/// A path from the raw bytes git gives (unix: any bytes; Windows: UTF-8, as Git for Windows
/// stores paths).
pub fn path_from_bytes(bytes: &[u8]) -> std::path::PathBuf {
    #[cfg(unix)]
    {
        std::path::PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
        )
    }
    #[cfg(windows)]
    {
        std::path::PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The raw bytes of a path, as git wants them (Windows: UTF-8).
pub fn path_bytes(path: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        std::borrow::Cow::Borrowed(std::os::unix::ffi::OsStrExt::as_bytes(path))
    }
    #[cfg(windows)]
    {
        match path.to_string_lossy() {
            std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
        }
    }
}

/// Temp files left in `dir` by writers that were killed mid-write and never followed by another
/// writer of the same file (older than a minute, so that a live writer's temp file is never
/// taken).
pub fn remove_strays(dir: &Path) {
    let minute = std::time::Duration::from_secs(60);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // The name first: only a temp file's age is read (one stat per file of a folder of 65
        // was half of what a new breakage paid for its folder).
        if !(name.starts_with('.') && name.contains(".tmp")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > minute);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// `<temp dir>/<name>-<uid>`: a folder only this user can enter (made 0700 if missing), for
/// files that must not be forged or read by other users. `None` when it exists but is not such a
/// folder (a symlink, another owner, open to others) or cannot be made.
pub fn private_temp_dir(name: &str) -> Option<std::path::PathBuf> {
    let me = crate::os::process::euid();
    let dir = std::env::temp_dir().join(format!("{name}-{me}"));
    #[cfg_attr(windows, allow(unused_mut))]
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(&dir) {
        Ok(()) => return Some(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && owner(&meta) == me && !open_to_others(&meta)).then_some(dir)
}

/// Refuses a coordination directory that is a symlink or belongs to another user: buildlock
/// would otherwise write where someone else decides, or trust state someone else wrote.
pub fn check_owned(dir: &Path) -> Result<()> {
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
    let me = crate::os::process::euid();
    if owner(&meta) != me {
        bail!(
            "the coordination directory {} belongs to user id {}, not to you (user id {me}): \
             buildlock will not share state with another user; run as that user, or remove the \
             directory if it is left over",
            dir.display(),
            owner(&meta)
        );
    }
    Ok(())
}

/// Sets `path`'s modification time to now if the file exists: one `utimensat` call, no open, no
/// write. `false` when there is no such file (the common case, which costs nothing more).
#[cfg(unix)]
pub fn touch_existing(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; a null `times` means "now" for both times.
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) == 0 }
}

/// Windows: an open for attribute writing and a `set_modified` (two calls, no data written).
#[cfg(windows)]
pub fn touch_existing(path: &Path) -> bool {
    const FILE_WRITE_ATTRIBUTES: u32 = 0x100;
    let mut opts = OpenOptions::new();
    std::os::windows::fs::OpenOptionsExt::access_mode(&mut opts, FILE_WRITE_ATTRIBUTES);
    opts.open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .is_ok()
}

/// The absolute path of `path` with every symlink resolved, in the form people and programs
/// print it: Windows' `canonicalize` gives a verbatim path (`\\?\C:\src\repo`), which no
/// check's output contains and no other path compares equal to; its plain form (`C:\src\repo`,
/// `\\server\share\repo`) is returned instead, where it names the same file.
pub fn canonical(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let real = fs::canonicalize(path)?;
    Ok(plain(real))
}

/// `\\?\C:\x` as `C:\x`, `\\?\UNC\server\share` as `\\server\share`; anything else as it is
/// (a verbatim path whose plain form would mean something else, such as one with a component
/// that Windows trims, stays verbatim). Pure text: testable on every platform.
pub fn plain(path: std::path::PathBuf) -> std::path::PathBuf {
    let Some(text) = path.to_str() else {
        return path;
    };
    let plain = if let Some(rest) = text.strip_prefix(r"\\?\UNC\") {
        format!(r"\\{rest}")
    } else if let Some(rest) = text.strip_prefix(r"\\?\") {
        let b = rest.as_bytes();
        if b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\' {
            rest.to_owned()
        } else {
            return path;
        }
    } else {
        return path;
    };
    // Components that Windows would trim in the plain form (trailing dots and spaces), and
    // paths too long for it, stay verbatim.
    let odd = plain
        .split('\\')
        .any(|c| c.ends_with('.') || c.ends_with(' ') || c.len() > 255);
    if odd || plain.len() >= 260 {
        path
    } else {
        std::path::PathBuf::from(plain)
    }
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

    #[cfg(unix)]
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
    fn verbatim_windows_paths_read_in_their_plain_form() {
        let p = |s: &str| plain(std::path::PathBuf::from(s));
        assert_eq!(
            p(r"\\?\C:\src\repo"),
            std::path::PathBuf::from(r"C:\src\repo")
        );
        assert_eq!(
            p(r"\\?\UNC\server\share\repo"),
            std::path::PathBuf::from(r"\\server\share\repo")
        );
        for kept in [
            r"\\?\C:\src\trailing. ",
            r"\\?\Volume{x}\repo",
            "/home/a/repo",
            r"C:\x",
        ] {
            assert_eq!(p(kept), std::path::PathBuf::from(kept), "{kept}");
        }
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

    #[cfg(unix)]
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
