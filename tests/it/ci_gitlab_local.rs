//! The GitLab example, `docs/ci/gitlab-ci.yml`, run end to end by `gitlab-ci-local` (npm, 4.56.2:
//! the last version for node 20) with its shell executor, against a bare repository served by
//! `git daemon` on loopback (see remote.rs). The repository holds the example byte for byte as
//! `.gitlab-ci.yml`, a `Makefile` whose `test` greps `status`, a broken `status`, and
//! `ci/buildlock-ci.toml` whose `fix.command` writes `ok`, commits it and signs a witness file
//! outside every checkout. The buildlock binaries are this build's, on `PATH` (the example's
//! `command -v buildlock ||` skips its install), and `BUILDLOCK_PUSH_URL`, the example's own
//! variable for where buildlock pushes, is the daemon's URL.
//!
//! Three matrix jobs of one broken commit (`test: [linux-x64]`, `[linux-arm64]`, `[macos]`), each
//! in a copy of its own (`--shell-isolation`): one fix run, the fix on the branch
//! `buildlock/fix/<12 hex>` of the server, `main` untouched, every job exits 3. Then a second
//! broken commit with `ci.pass_on_fix = true` (`BUILDLOCK_CONFIG` set on the command line): one
//! more fix run, and the pipeline is green.
//!
//! The tools are installed when they can be: gitlab-ci-local with npm into the cargo target's tmp
//! dir (`.ci/run` does the same beforehand), `rsync` (which gitlab-ci-local copies the checkouts
//! with) with apt-get when running as root. Otherwise the test prints why and skips.

use crate::harness::*;
use crate::remote::{Server, git};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = "4.56.2";

/// The three jobs of the matrix that run, by gitlab-ci-local's names for them.
const JOBS: [&str; 3] = ["linux-x64", "linux-arm64", "macos"];

fn job_name(flavor: &str) -> String {
    format!("test: [{flavor}]")
}

/// Runs `c`; `Err` with the last lines it said when it fails.
fn run(c: &mut Command, what: &str) -> Result<Output, String> {
    let out = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    let err = text(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!(
        "{what} failed ({:?}): {}",
        out.status,
        tail.join(" / ")
    ))
}

/// gitlab-ci-local VERSION, installed with npm under the cargo target's tmp dir once.
fn gitlab_ci_local() -> Result<PathBuf, String> {
    let prefix = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gitlab-ci-local-{VERSION}"));
    let exe = prefix.join("node_modules/.bin/gitlab-ci-local");
    if !exe.exists() {
        run(
            Command::new("timeout")
                .args([
                    "600",
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                ])
                .arg(&prefix)
                .arg(format!("gitlab-ci-local@{VERSION}")),
            &format!(
                "npm install gitlab-ci-local@{VERSION} (is npm installed, the registry reachable?)"
            ),
        )?;
    }
    let out = run(
        Command::new(&exe).arg("--version"),
        "gitlab-ci-local --version (node 20?)",
    )?;
    let version = text(&out.stdout).trim().to_owned();
    if version != VERSION {
        return Err(format!(
            "{} is version {version}, not {VERSION}",
            exe.display()
        ));
    }
    Ok(exe)
}

/// rsync on PATH, installed with apt-get when it is missing and we are root.
fn rsync() -> Result<(), String> {
    let found = || Command::new("rsync").arg("--version").output().is_ok();
    if found() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "rsync is missing, and installing it needs root (apt-get install rsync)".into(),
        );
    }
    run(
        Command::new("sh").args([
            "-c",
            "timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq rsync",
        ]),
        "apt-get install rsync",
    )?;
    if found() {
        Ok(())
    } else {
        Err("apt-get installed no rsync".into())
    }
}

/// The served repository: the example pipeline, the check, the fix, and a broken `status`.
fn project(s: &Server) {
    let seed = s.root.join("seed");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ci/gitlab-ci.yml"),
        seed.join(".gitlab-ci.yml"),
    )
    .unwrap();
    std::fs::create_dir_all(seed.join("ci")).unwrap();
    std::fs::write(
        seed.join("ci/fix-with-llm.sh"),
        format!(
            "echo \"start $BUILD_FLAVOR $BUILDLOCK_KEY\" >> {w}\n\
             echo ok > status && git commit -q -am \"fix: status says ok\"\n",
            w = s.path("witness").display()
        ),
    )
    .unwrap();
    let config = |pass_on_fix: bool| {
        format!(
            "[coordination]\nbackend = \"remote\"\nscope = \"commit\"\nmatch = \"any\"\nwait = \"5m\"\n\
             remote_poll = \"200ms\"\nstale_after = \"2m\"\n\
             [fix]\ncommand = \"sh ci/fix-with-llm.sh\"\n\
             [retry]\nrefresh = \"git fetch --quiet origin \\\"$BUILDLOCK_FIX_REF\\\" && git checkout --quiet --detach \\\"$BUILDLOCK_FIX_COMMIT\\\"\"\n\
             [ci]\ndeliver = \"branch\"\npass_on_fix = {pass_on_fix}\n"
        )
    };
    std::fs::write(seed.join("ci/buildlock-ci.toml"), config(false)).unwrap();
    std::fs::write(seed.join("ci/buildlock-ci-pass-on-fix.toml"), config(true)).unwrap();
    std::fs::write(seed.join("Makefile"), "test:\n\tgrep -qx ok status\n").unwrap();
    git(&s.root, &seed, &["add", "-A"]);
    git(
        &s.root,
        &seed,
        &[
            "commit",
            "-q",
            "-m",
            "the GitLab example, and a broken build",
        ],
    );
    git(
        &s.root,
        &seed,
        &["push", "-q", s.bare.to_str().unwrap(), "main"],
    );
}

/// One pipeline of the three jobs in `work`: gitlab-ci-local's output and exit status.
fn pipeline(s: &Server, exe: &Path, work: &Path, variables: &[String]) -> Output {
    let bins = Path::new(BUILDLOCK).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        bins.display(),
        exe.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = command("timeout", &s.root);
    c.current_dir(work)
        .env("PATH", path)
        .arg("600")
        .arg(exe)
        .args([
            "--shell-executor-no-image",
            "--shell-isolation",
            "--no-color",
        ]);
    for v in variables {
        c.arg("--variable").arg(v);
    }
    c.args(JOBS.map(job_name));
    c.output().unwrap()
}

/// What gitlab-ci-local said when job `flavor` finished: `PASS`, or `FAIL <code>`.
fn ending(out: &str, flavor: &str) -> Option<String> {
    let name = job_name(flavor);
    // `test: [macos]       finished in 1.66 s  FAIL 3`, or nothing after the time for a job that
    // passed (a job's own output has `>` after its name).
    out.lines().find_map(|l| {
        let end = l
            .strip_prefix(&name)?
            .trim_start()
            .strip_prefix("finished in ")?;
        let verdict = end.split_once("  ").map_or("", |(_, v)| v).trim();
        Some(if verdict.is_empty() { "PASS" } else { verdict }.to_owned())
    })
}

fn fix_starts(s: &Server) -> Vec<String> {
    std::fs::read_to_string(s.path("witness"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn remote_ref(s: &Server, name: &str) -> Option<String> {
    let mut c = command("git", &s.root);
    c.current_dir(&s.bare)
        .args(["rev-parse", "--verify", "-q", name]);
    let out = c.output().unwrap();
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_owned())
}

/// The fix of `tested` is on its delivery branch of the server, a child of the tested commit.
fn delivered(s: &Server, tested: &str, said: &str) {
    let branch = format!("refs/heads/buildlock/fix/{}", &tested[..12]);
    let fix = remote_ref(s, &branch).unwrap_or_else(|| panic!("no {branch} on the server\n{said}"));
    let parent = remote_ref(s, &format!("{fix}^")).unwrap();
    assert_eq!(parent, tested, "the fix is a child of the tested commit");
}

#[test]
fn ci_gitlab_example_runs_in_gitlab_ci_local_with_one_fix_run() {
    let exe = match rsync().and_then(|()| gitlab_ci_local()) {
        Ok(exe) => exe,
        Err(why) => {
            eprintln!("skipped: cannot run gitlab-ci-local {VERSION}: {why}");
            return;
        }
    };
    let mut s = Server::new("");
    project(&s);
    s.start_daemon();
    let url = s.daemon_url();
    let work = s.clone("work", &url);
    let push_url = format!("BUILDLOCK_PUSH_URL={url}");

    // The broken commit, jobs as configured: one fix, every job red with exit 3.
    let tested = s.head(&work);
    let out = pipeline(&s, &exe, &work, std::slice::from_ref(&push_url));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for flavor in JOBS {
        assert_eq!(
            ending(&said, flavor).as_deref(),
            Some("FAIL 3"),
            "{flavor}: broken here, passes on the fix\n{said}"
        );
    }
    assert!(!out.status.success(), "the pipeline is red: {said}");
    let starts = fix_starts(&s);
    assert_eq!(starts.len(), 1, "one fix run: {starts:?}\n{said}");
    assert!(starts[0].ends_with(&tested), "{starts:?}");
    delivered(&s, &tested, &said);
    assert_eq!(
        remote_ref(&s, "refs/heads/main").as_deref(),
        Some(tested.as_str()),
        "main is left as it was"
    );
    assert!(
        said.contains(&format!(
            "Delivered: branch buildlock/fix/{}",
            &tested[..12]
        )),
        "the job log says where the fix went\n{said}"
    );

    // The next broken commit, with ci.pass_on_fix = true: one more fix, and the pipeline green.
    std::fs::write(work.join("status"), "broken again\n").unwrap();
    git(&s.root, &work, &["commit", "-q", "-am", "broken again"]);
    git(&s.root, &work, &["push", "-q", "origin", "main"]);
    let tested = s.head(&work);
    let pass_on_fix = "BUILDLOCK_CONFIG=ci/buildlock-ci-pass-on-fix.toml".to_owned();
    let out = pipeline(&s, &exe, &work, &[push_url, pass_on_fix]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for flavor in JOBS {
        assert_eq!(
            ending(&said, flavor).as_deref(),
            Some("PASS"),
            "{flavor}\n{said}"
        );
    }
    assert!(out.status.success(), "the pipeline is green: {said}");
    let starts = fix_starts(&s);
    assert_eq!(starts.len(), 2, "one more fix run: {starts:?}\n{said}");
    assert!(starts[1].ends_with(&tested), "{starts:?}");
    delivered(&s, &tested, &said);
}
