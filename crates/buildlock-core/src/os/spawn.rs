//! Starting a command in a process group of its own without forking us (Linux).
//!
//! Why not std's `Command`: in a statically linked binary (the hook and commit-retry, as
//! install.sh builds them) std cannot look up glibc's version or
//! `posix_spawn_file_actions_addchdir_np` at run time, so it forks and execs. Forking the hook
//! copies its page tables and write-protects its pages (a TLB shoot-down on every core, then a
//! copy-on-write fault per page touched before the exec): 0.08 ms of CPU and 22 page faults on
//! every commit. And not glibc's `posix_spawn` either: its child resets every one of the 64
//! signals (128 system calls) before the exec, because it cannot know which ones have handlers.
//!
//! So the child is a `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn's is: it runs on a stack of
//! its own in our memory while we are suspended, until its exec (or its exit) resumes us. It sets
//! back to default the few signals whose disposition we changed ([`signals::CHANGED`]; every
//! other one is still at its default), joins a process group of its own, gets stdin from
//! `/dev/null`, stdout and stderr on the given pipe, the working directory, an empty signal mask,
//! and execs with our environment plus `env`. A program the kernel cannot exec (ENOEXEC: a script
//! with no `#!` line) is run by `/bin/sh`, as git runs such a hook and as `execvp` did when std
//! forked. It only makes raw system calls (no allocation, no
//! lock, nothing that could find our memory half-changed): everything it needs is prepared before
//! the clone. A failure before or at the exec is written into our memory, and returned as the
//! error. All signals are blocked around the clone, so no handler of ours ever runs in the child.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use crate::os::signals;

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

/// What the child needs, all of it ready before the clone; `error` is the child's answer.
struct Plan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    /// `/bin/sh program args…`, for a program that is a script with no `#!` line.
    script_argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: *const libc::c_char,
    output: libc::c_int,
    /// Which step failed (see [`STEPS`]) and its errno; (0, 0) when the exec happened.
    error: (usize, libc::c_int),
}

/// The child's steps, for the error message of the one that failed.
const STEPS: [&str; 6] = [
    "",
    "cannot join a process group of its own",
    "cannot open /dev/null as its stdin",
    "cannot give it the output pipe",
    "cannot change to its directory",
    "cannot exec it",
];

/// What runs a program that is a script with no `#!` line (git's `SHELL_PATH`).
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// The child, between the clone and the exec. Only raw system calls (see the module header).
extern "C" fn child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` points to the parent's `Plan`, alive while the parent is suspended (vfork);
    // every call below is a plain system call on memory prepared before the clone.
    unsafe {
        let plan = &mut *plan.cast::<Plan>();
        let fail = |plan: &mut Plan, step: usize| -> libc::c_int {
            plan.error = (step, *libc::__errno_location());
            libc::_exit(127)
        };
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in signals::CHANGED {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(plan, 1);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || (null != 0 && (libc::dup2(null, 0) < 0 || libc::close(null) < 0)) {
            return fail(plan, 2);
        }
        if libc::dup2(plan.output, 1) < 0 || libc::dup2(plan.output, 2) < 0 {
            return fail(plan, 3);
        }
        if libc::chdir(plan.dir) != 0 {
            return fail(plan, 4);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        let errno = *libc::__errno_location();
        if errno == libc::ENOEXEC {
            libc::execve(SHELL.as_ptr(), plan.script_argv, plan.envp);
            // The error is the program's, not the shell's.
            *libc::__errno_location() = errno;
        }
        fail(plan, 5)
    }
}

/// Starts `program` (a path) with `args` in `dir`, in a process group of its own, its stdout and
/// stderr on `output`.
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
        let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let (argv, envp) = (null_terminated(&argv_c), null_terminated(&envp_c));
    let mut script_argv = vec![SHELL.as_ptr()];
    script_argv.extend_from_slice(&argv);

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
    let mut plan = Plan {
        program: program_c.as_ptr(),
        argv: argv.as_ptr(),
        script_argv: script_argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: dir_c.as_ptr(),
        output: output.as_raw_fd(),
        error: (0, 0),
    };
    // The child's stack: it only makes system calls, so 32 KiB is room to spare. Not zeroed:
    // the child writes before it reads, and only the pages it touches are faulted in.
    let mut stack: Vec<u8> = Vec::with_capacity(32 << 10);
    // SAFETY: signals are blocked for the clone and restored after; the child gets a stack of its
    // own (the top of `stack`, 16-byte aligned) and a pointer to `plan`, both alive until it has
    // exec'd or exited, which is when CLONE_VFORK resumes us.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let top = stack.as_mut_ptr().add(stack.capacity());
        let top = top.sub(top as usize % 16);
        let pid = libc::clone(
            child,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut plan).cast(),
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(output);
    let mut spawned = Spawned { pid, status: None };
    let (step, errno) = plan.error;
    if step != 0 {
        // It exited (127) without its exec: reaped now, and the reason returned.
        while spawned.try_wait()?.is_none() {
            std::thread::yield_now();
        }
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(e.kind(), format!("{}: {e}", STEPS[step])));
    }
    Ok(spawned)
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
        // The signal state is read by the process we started itself (`exec` keeps the pid, the
        // mask and what is ignored): a shell blocks every signal while it waits for a child, so
        // reading the shell's from a child of its own races with that.
        let script = "pwd; test \"$(ps -o pgid= $$ | tr -d ' ')\" = $$ && echo own group; \
                      echo \"$SPAWN_TEST\"; read x || echo stdin empty; echo err >&2; \
                      exec awk '/^SigIgn|^SigBlk/ {print $2}' /proc/self/status";
        let (status, out) = run(
            "/bin/sh",
            &["-c", script],
            &[("SPAWN_TEST".into(), "set".into())],
        );
        assert!(status.success(), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            &lines[..5],
            ["<dir>", "own group", "set", "stdin empty", "err"]
        );
        // SigBlk comes first in /proc/<pid>/status: nothing blocked (we block all for the
        // clone); SIGPIPE is not ignored, though we ignore it.
        assert_eq!(u64::from_str_radix(lines[5], 16).unwrap(), 0, "{out}");
        let ignored = u64::from_str_radix(lines[6], 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }

    /// git runs a hook with no `#!` line with `/bin/sh` (ENOEXEC), and so did std's fork and
    /// `execvp`: a hand-written hook kept as the check keeps working.
    // regression: "cannot exec it: Exec format error"
    #[test]
    fn a_script_with_no_shebang_line_runs_with_sh() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook");
        std::fs::write(&script, "echo \"ran with $# args: $1\"\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (status, out) = run(script.to_str().unwrap(), &["one"], &[]);
        assert_eq!(
            (status.code(), out.as_str()),
            (Some(3), "ran with 1 args: one\n")
        );
        // A file that is no program at all (not executable) is still an error.
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let (_reader, writer) = std::io::pipe().unwrap();
        let e = in_own_group(script.as_os_str(), &[], dir.path(), &[], writer.into()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_naming_the_step() {
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
        assert!(e.to_string().starts_with("cannot exec it"), "{e}");
        let e = in_own_group(
            OsStr::new("/bin/sh"),
            &[],
            Path::new("/nonexistent/dir"),
            &[],
            reader.into(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("cannot change to its directory"),
            "{e}"
        );
    }
}
