//! Starting a command in a process group of its own without forking us (Linux): `posix_spawn`.
//!
//! Why not std's `Command`: in a statically linked binary (the hook and commit-retry, as
//! install.sh builds them) std cannot look up glibc's version or
//! `posix_spawn_file_actions_addchdir_np` at run time, so it forks and execs. Forking the hook
//! copies its page tables and write-protects its pages (a TLB shoot-down on every core, then a
//! copy-on-write fault per page touched before the exec): that was about a fifth of the hook's
//! own CPU on every commit. glibc's `posix_spawn` shares our memory until the exec (vfork
//! semantics), and reports a failed exec as its result.
//!
//! The child gets what std would give it: stdin from `/dev/null`, stdout and stderr on the given
//! pipe, the working directory, our environment with `env` set on top, a process group of its
//! own, an empty signal mask and SIGPIPE back to its default (we ignore it).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// A child started by [`in_own_group`]. Like std's `Child`, dropping it neither waits for nor
/// kills the process.
#[derive(Debug)]
pub struct Spawned {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The exit status if the child has exited (and is reaped now), else `None`; never blocks.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waitpid on our own child with a valid out-pointer.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => return Ok(None),
                -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                -1 => return Err(io::Error::last_os_error()),
                _ => {
                    let status = ExitStatus::from_raw(status);
                    self.status = Some(status);
                    return Ok(Some(status));
                }
            }
        }
    }
}

/// Starts `program` with `args` in `dir`, in a process group of its own, its stdout and stderr
/// on `output`. `program` without a `/` is looked up on our PATH.
pub fn in_own_group(
    program: &OsStr,
    args: &[&OsStr],
    dir: &Path,
    env: &[(String, OsString)],
    output: OwnedFd,
) -> io::Result<Spawned> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} contains a NUL byte", s.to_string_lossy()),
            )
        })
    };
    let program_c = c(program)?;
    let mut argv_c = vec![program_c.clone()];
    for a in args {
        argv_c.push(c(a)?);
    }
    let mut envp_c = Vec::new();
    for (k, v) in crate::os::env::all() {
        if !env.iter().any(|(name, _)| OsStr::new(name) == k) {
            envp_c.push(c(&entry(&k, &v))?);
        }
    }
    for (k, v) in env {
        envp_c.push(c(&entry(OsStr::new(k), v))?);
    }
    let dir_c = c(dir.as_os_str())?;
    let null_terminated = |v: &[CString]| {
        let mut p: Vec<*mut libc::c_char> = v.iter().map(|s| s.as_ptr().cast_mut()).collect();
        p.push(std::ptr::null_mut());
        p
    };
    let (argv, envp) = (null_terminated(&argv_c), null_terminated(&envp_c));

    // The pipe's end must not be 0, 1 or 2 itself: dup2 onto the same number would leave it
    // close-on-exec, and the child without its output.
    let output = if output.as_raw_fd() <= 2 {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one we then own.
        let fd = unsafe { libc::fcntl(output.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    } else {
        output
    };
    let out = output.as_raw_fd();

    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed
    // once, below; every pointer passed (paths, argv, envp) outlives the spawn call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let spawned: io::Result<libc::pid_t> = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut actions, out, 2))?;
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut actions,
                dir_c.as_ptr(),
            ))?;
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut pipe_default: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe_default);
            libc::sigaddset(&mut pipe_default, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut attr,
                &pipe_default,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETPGROUP
                    | libc::POSIX_SPAWN_SETSIGMASK
                    | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            let spawn = if program.as_bytes().contains(&b'/') {
                libc::posix_spawn
            } else {
                libc::posix_spawnp
            };
            check(spawn(
                &mut pid,
                program_c.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        drop(output);
        Ok(Spawned {
            pid: spawned?,
            status: None,
        })
    }
}

/// `KEY=value`.
fn entry(k: &OsStr, v: &OsStr) -> OsString {
    let mut e = OsString::with_capacity(k.len() + 1 + v.len());
    e.push(k);
    e.push("=");
    e.push(v);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(program: &str, args: &[&str], env: &[(String, OsString)]) -> (ExitStatus, String) {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut child =
            in_own_group(OsStr::new(program), &args, dir.path(), env, writer.into()).unwrap();
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        (status, out.replace(&*dir.path().to_string_lossy(), "<dir>"))
    }

    #[test]
    fn the_child_gets_its_dir_group_environment_and_default_sigpipe() {
        let script = "pwd; test \"$(ps -o pgid= $$ | tr -d ' ')\" = $$ && echo own group; \
                      echo \"$SPAWN_TEST\"; awk '/^SigIgn/ {print $2}' /proc/$$/status; \
                      read x || echo stdin empty; \
                      echo err >&2; exit 3";
        let (status, out) = run(
            "/bin/sh",
            &["-c", script],
            &[("SPAWN_TEST".into(), "set".into())],
        );
        assert_eq!(status.code(), Some(3));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "<dir>");
        assert_eq!(lines[1], "own group");
        assert_eq!(lines[2], "set");
        // SIGPIPE (bit 13) is not ignored in the child, though we ignore it.
        let ignored = u64::from_str_radix(lines[3], 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
        assert_eq!(&lines[4..], ["stdin empty", "err"]);
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_and_a_bare_name_is_looked_up() {
        let (reader, writer) = std::io::pipe().unwrap();
        let e = in_own_group(
            OsStr::new("/nonexistent/program"),
            &[],
            Path::new("/"),
            &[],
            writer.into(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        drop(reader);
        let (status, out) = run("sh", &["-c", "echo found"], &[]);
        assert!(status.success());
        assert_eq!(out, "found\n");
    }
}
