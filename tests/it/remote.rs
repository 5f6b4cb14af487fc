//! The remote backend over real transports: a bare repository served by `git daemon` on a
//! loopback port, and `file://`. Separate clones (no shared git dir) stand for the machines of a
//! CI matrix; each runs the real `buildlock ci`.
//!
//! The server is stricter than most hosts: `receive.denyNonFastForwards = true` (which git applies
//! to branches only) plus an `update` hook that refuses every non-fast-forward update on every
//! ref, so a backend that ever rewound a ref under `refs/buildlock/` would fail here.
//!
//! CI runs short forms. The long race (16 clones, many rounds):
//!
//! ```sh
//! cargo test --test it remote_race_full -- --ignored --nocapture
//! ```

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `git daemon` we started; killed when dropped (also on a failing test's unwind). It runs
/// under `timeout`, so even a test process killed outright leaves no daemon for long.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Our own child (`timeout`), by its pid; it passes SIGTERM on to git daemon.
        signal(&self.child, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Server {
    _tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) bare: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub(crate) fn git(root: &Path, dir: &Path, args: &[&str]) -> Output {
    let mut c = command("git", root);
    c.current_dir(dir).args(args);
    run_ok(c)
}

impl Server {
    /// A bare repository whose `main` holds `.buildlock.toml` = `config` and a `status` file
    /// saying `broken` (the check greps it for `ok`).
    pub(crate) fn new(config: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        let bare = root.join("srv.git");
        git(
            &root,
            &root,
            &["init", "-q", "--bare", "-b", "main", "srv.git"],
        );
        git(
            &root,
            &bare,
            &["config", "receive.denyNonFastForwards", "true"],
        );
        let hook = bare.join("hooks/update");
        std::fs::write(
            &hook,
            "#!/bin/sh\n# Refuse every non-fast-forward update on every ref.\nzero=0000000000000000000000000000000000000000\n\
             [ \"$2\" = \"$zero\" ] && exit 0\n[ \"$3\" = \"$zero\" ] && exit 0\n\
             git merge-base --is-ancestor \"$2\" \"$3\" && exit 0\necho \"non-fast-forward update of $1 refused\" >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let seed = root.join("seed");
        git(&root, &root, &["init", "-q", "-b", "main", "seed"]);
        std::fs::write(seed.join(".buildlock.toml"), config).unwrap();
        std::fs::write(seed.join("status"), "broken\n").unwrap();
        git(&root, &seed, &["add", "-A"]);
        git(&root, &seed, &["commit", "-q", "-m", "broken build"]);
        git(
            &root,
            &seed,
            &["push", "-q", bare.to_str().unwrap(), "main"],
        );
        Server {
            _tmp: tmp,
            root,
            bare,
            port: free_port(),
            daemon: None,
        }
    }

    pub(crate) fn start_daemon(&mut self) {
        let child = Command::new("timeout")
            .args([
                "600",
                "git",
                "daemon",
                "--enable=receive-pack",
                "--export-all",
                "--reuseaddr",
            ])
            .arg(format!("--base-path={}", self.root.display()))
            .arg(format!("--port={}", self.port))
            .arg("--listen=127.0.0.1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        self.daemon = Some(Daemon { child });
        let ready = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(ready, "git daemon did not start on port {}", self.port);
    }

    fn stop_daemon(&mut self) {
        self.daemon = None;
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_err()),
            "git daemon still answers"
        );
    }

    pub(crate) fn daemon_url(&self) -> String {
        format!("git://127.0.0.1:{}/srv.git", self.port)
    }

    pub(crate) fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// A clone of its own (a machine): no shared git dir.
    pub(crate) fn clone(&self, name: &str, url: &str) -> PathBuf {
        git(
            &self.root,
            &self.root,
            &["clone", "-q", "-b", "main", url, name],
        );
        self.root.join(name)
    }

    /// Every branch and tag of the remote, with its commit.
    pub(crate) fn heads_and_tags(&self) -> String {
        text(
            &git(
                &self.root,
                &self.bare,
                &["for-each-ref", "refs/heads", "refs/tags"],
            )
            .stdout,
        )
    }

    pub(crate) fn buildlock_refs(&self) -> Vec<String> {
        text(
            &git(
                &self.root,
                &self.bare,
                &["for-each-ref", "--format=%(refname)", "refs/buildlock"],
            )
            .stdout,
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn witness(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("witness"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `buildlock ci` in `dir` as `agent`, started now.
    pub(crate) fn ci(&self, dir: &Path, agent: &str, extra_env: &[(&str, &str)]) -> Child {
        let mut c = command(BUILDLOCK, &self.root);
        c.current_dir(dir)
            .arg("ci")
            .env("BUILD_FLAVOR", agent)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    pub(crate) fn status(&self, dir: &Path) -> serde_json::Value {
        let mut c = command(BUILDLOCK, &self.root);
        c.current_dir(dir).args(["status", "--json"]);
        serde_json::from_slice(&run_ok(c).stdout).unwrap()
    }

    pub(crate) fn head(&self, dir: &Path) -> String {
        text(&git(&self.root, dir, &["rev-parse", "HEAD"]).stdout)
            .trim()
            .to_owned()
    }
}

/// A fix script's lines that wait, when the file `joins` in `root` names a number, until that
/// many waiters of the fix's generation have joined (their refs are on the server `root/srv.git`),
/// for a minute at most: a check and a join take their time on a loaded machine, and a fix that
/// ends before a job joined ends the episode without it (that job then finds the build fixed: no
/// waiter, not credited with the fix). Waits on the event, not on the clock.
pub(crate) fn await_joins_sh(root: &Path) -> String {
    let joins = root.join("joins");
    let joined = format!(
        "git --git-dir={} for-each-ref --format='%(refname)' refs/buildlock/wait/ \
         | grep -c \"/$BUILDLOCK_GENERATION/[^/]*$\"",
        root.join("srv.git").display()
    );
    format!(
        "i=0; while [ -e {j} ] && [ $i -lt 600 ] && [ \"$({joined})\" -lt \"$(cat {j})\" ]; \
         do sleep 0.1; i=$((i+1)); done\n",
        j = joins.display(),
    )
}

/// The configuration of the race: the check waits for the starting gun (so that every job
/// fails at the same instant) and greps `status`; the fix commits `ok` and records itself in a
/// witness file outside every clone; a waiter refreshes onto the fix ref. The race is about the
/// protocol on the remote (refs/buildlock only): `ci.pass_on_fix` and `ci.deliver = "none"` keep
/// the CI verdict (exit 3) and the fix branch out of it; ci_verdict.rs tests those.
fn race_config(root: &Path, extra: &str) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\n\
             [ -e {slow} ] && sleep 30\nsleep 0.3\n{joined}\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n\
             echo \"end $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\n",
            w = root.join("witness").display(),
            slow = root.join("slow").display(),
            joined = await_joins_sh(root),
        ),
    )
    .unwrap();
    format!(
        "check = \"while [ ! -e {go} ]; do sleep 0.01; done; grep -qx ok status\"\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nwait = \"90s\"\nremote_poll = \"200ms\"\n{extra}\n\
         [fix]\ncommand = \"sh {fix}\"\n\
         [retry]\nattempts = 5\nrefresh = \"git fetch -q origin $BUILDLOCK_FIX_REF && git checkout -q --detach $BUILDLOCK_FIX_COMMIT\"\n\
         [ci]\npass_on_fix = true\ndeliver = \"none\"\n",
        go = root.join("go").display(),
        fix = fix.display(),
    )
}

/// A server whose `.buildlock.toml` names paths in the server's own temp dir.
pub(crate) fn server_with(config: impl FnOnce(&Path) -> String) -> Server {
    let s = Server::new("");
    let seed = s.root.join("seed");
    std::fs::write(seed.join(".buildlock.toml"), config(&s.root)).unwrap();
    git(&s.root, &seed, &["commit", "-q", "-am", "config"]);
    git(
        &s.root,
        &seed,
        &["push", "-q", s.bare.to_str().unwrap(), "main"],
    );
    s
}

fn race_server(extra: &str) -> Server {
    server_with(|root| race_config(root, extra))
}

/// One round: `n` clones run `buildlock ci` on the same broken commit at once. Checks: exactly one
/// fix run, every job green on the fix commit, no branch or tag of the remote changed.
fn race_round(s: &Server, clones: &[PathBuf], round: usize) {
    let heads_before = s.heads_and_tags();
    let witness_before = s.witness().len();
    let _ = std::fs::remove_file(s.path("go"));
    // Every job but the fixer waits for the fix (and is credited with it).
    std::fs::write(s.path("joins"), (clones.len() - 1).to_string()).unwrap();
    let children: Vec<Child> = clones
        .iter()
        .enumerate()
        .map(|(i, c)| s.ci(c, &format!("flavor{i}"), &[]))
        .collect();
    std::thread::sleep(Duration::from_millis(300 + 20 * clones.len() as u64));
    std::fs::write(s.path("go"), "").unwrap();
    let mut outs = Vec::new();
    for c in children {
        outs.push(wait_output(c, Duration::from_secs(180)));
    }
    let all_err: String = outs
        .iter()
        .enumerate()
        .map(|(i, o)| format!("--- flavor{i} ({:?})\n{}", o.status, text(&o.stderr)))
        .collect();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(
            o.status.code(),
            Some(0),
            "round {round}: flavor{i} did not end green\n{all_err}"
        );
    }
    let witness = s.witness();
    let new: Vec<&String> = witness[witness_before..].iter().collect();
    let starts = new.iter().filter(|l| l.starts_with("start")).count();
    assert_eq!(
        starts, 1,
        "round {round}: exactly one fix run: {new:?}\n{all_err}"
    );
    let heads: Vec<String> = clones.iter().map(|c| s.head(c)).collect();
    assert!(
        heads.iter().all(|h| *h == heads[0]),
        "round {round}: every flavor ends on the fix commit: {heads:?}"
    );
    let fixer_dir = clones
        .iter()
        .find(|c| {
            let log = text(&git(&s.root, c, &["log", "-1", "--format=%s"]).stdout);
            log.starts_with("fix by")
        })
        .expect("the fix commit");
    let st = s.status(fixer_dir);
    assert_eq!(st["backend"], "remote");
    let key = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["fix_commit"].as_str() == Some(heads[0].as_str()))
        .unwrap_or_else(|| panic!("round {round}: the key records the fix commit: {st}"));
    assert_eq!(key["status"], "passing", "{st}");
    let rounds = round as u64 + 1;
    assert_eq!(
        (
            st["totals"]["fix_runs"].as_u64(),
            st["totals"]["fix_runs_avoided"].as_u64()
        ),
        (Some(rounds), Some(rounds * (clones.len() as u64 - 1))),
        "round {round}: one fix run, every other job avoided one: {st}"
    );
    let fix_refs: Vec<String> = s
        .buildlock_refs()
        .into_iter()
        .filter(|r| r.starts_with("refs/buildlock/fix/") && r.ends_with(&heads[0]))
        .collect();
    assert_eq!(
        fix_refs.len(),
        1,
        "the fix commit is published: {:?}",
        s.buildlock_refs()
    );
    assert_eq!(
        s.heads_and_tags(),
        heads_before,
        "no branch or tag of the remote changed"
    );
}

/// Resets every clone onto the remote's `main` (the broken commit) for the next round.
fn back_to_broken(s: &Server, clones: &[PathBuf]) {
    for c in clones {
        git(&s.root, c, &["checkout", "-q", "--detach", "origin/main"]);
    }
}

fn remote_race(n: usize, rounds: usize, daemon: bool) {
    // A long lease: this is about elections, not takeovers (a loaded 2-core machine can make a
    // heartbeat push wait for seconds behind the others).
    let mut s = race_server("stale_after = \"60s\"");
    let url = if daemon {
        s.start_daemon();
        s.daemon_url()
    } else {
        s.file_url()
    };
    let clones: Vec<PathBuf> = (0..n).map(|i| s.clone(&format!("c{i}"), &url)).collect();
    for round in 0..rounds {
        if round > 0 {
            // A new broken commit for the new round: its own key (scope = "commit").
            let seed = s.root.join("seed");
            std::fs::write(seed.join("round"), format!("{round}\n")).unwrap();
            git(&s.root, &seed, &["add", "round"]);
            git(
                &s.root,
                &seed,
                &["commit", "-q", "-m", &format!("round {round}")],
            );
            git(
                &s.root,
                &seed,
                &["push", "-q", s.bare.to_str().unwrap(), "main"],
            );
            for c in &clones {
                git(&s.root, c, &["fetch", "-q", "origin"]);
            }
            back_to_broken(&s, &clones);
        }
        race_round(&s, &clones, round);
    }
}

#[test]
fn remote_race_seven_clones_over_git_daemon() {
    remote_race(7, 2, true);
}

#[test]
fn remote_race_seven_clones_over_file_url() {
    remote_race(7, 1, false);
}

#[test]
#[ignore = "long: 16 clones, 10 rounds over git daemon (a few minutes)"]
fn remote_race_full() {
    let rounds = std::env::var("REMOTE_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    remote_race(16, rounds, true);
}

// Faults ----------------------------------------------------------------------------------------

/// A configuration whose check reads a status file shared by every clone (a shared dependency),
/// so that a waiter's re-check passes as soon as the fix ran, whatever its HEAD. The fix records
/// itself in the witness, writes its process group (field 5 of `/proc/$$/stat`) to `fixpid-<agent>`, waits while `hold`
/// exists, and sets the status to `ok`.
fn shared_config(root: &Path, coordination: &str) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\ncut -d' ' -f5 /proc/$$/stat > {root}/fixpid-$BUILDLOCK_AGENT\n\
             while [ -e {root}/hold ]; do sleep 0.05; done\nsleep 0.2\necho ok > {root}/status\n\
             echo \"end $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\n",
            w = root.join("witness").display(),
            root = root.display(),
        ),
    )
    .unwrap();
    std::fs::write(root.join("status"), "broken\n").unwrap();
    format!(
        "check = \"grep -qx ok {root}/status\"\n[coordination]\nbackend = \"remote\"\nscope = \"commit\"\n\
         remote_poll = \"200ms\"\n{coordination}\n[fix]\ncommand = \"sh {fix}\"\n",
        root = root.display(),
        fix = fix.display(),
    )
}

fn fix_starts(s: &Server) -> Vec<String> {
    s.witness()
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect()
}

fn finish(children: Vec<(String, Child)>, limit: Duration) -> Vec<(String, Output)> {
    children
        .into_iter()
        .map(|(a, c)| (a, wait_output(c, limit)))
        .collect()
}

fn report(outs: &[(String, Output)]) -> String {
    outs.iter()
        .map(|(a, o)| format!("--- {a} ({:?})\n{}", o.status, text(&o.stderr)))
        .collect()
}

fn all_green(outs: &[(String, Output)]) {
    let report = report(outs);
    for (a, o) in outs {
        assert_eq!(o.status.code(), Some(0), "{a} did not end green\n{report}");
    }
}

#[test]
fn remote_fixer_killed_mid_fix_is_taken_over_after_stale_after() {
    let mut s = server_with(|root| shared_config(root, "stale_after = \"4s\"\nwait = \"90s\""));
    s.start_daemon();
    std::fs::write(s.path("hold"), "").unwrap();
    let clones: Vec<PathBuf> = (0..3)
        .map(|i| s.clone(&format!("c{i}"), &s.daemon_url()))
        .collect();
    // The first job is elected and starts its fix; then the others fail and wait.
    let first = s.ci(&clones[0], "flavor0", &[]);
    assert!(
        eventually(Duration::from_secs(30), || fix_starts(&s).len() == 1),
        "the first job started its fix"
    );
    let mut children = vec![("flavor0".to_owned(), first)];
    for (i, c) in clones.iter().enumerate().skip(1) {
        children.push((format!("flavor{i}"), s.ci(c, &format!("flavor{i}"), &[])));
    }
    // Both waiters are on record before the kill (room for a loaded machine: each job is a
    // debug build running several git processes).
    assert!(
        eventually(Duration::from_secs(120), || {
            s.status(&clones[0])["keys"][0]["waiters"]
                .as_array()
                .is_some_and(|w| w.len() == 2)
        }),
        "both waiters joined"
    );
    // The fixer's whole job dies: the buildlock process and its fix's process group.
    let (_, fixer) = children.remove(0);
    let pgid: i32 = std::fs::read_to_string(s.path("fixpid-flavor0"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(&fixer, libc::SIGKILL);
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let killed = Instant::now();
    let _ = wait_output(fixer, Duration::from_secs(10));
    std::fs::remove_file(s.path("hold")).unwrap();
    let took_over = eventually(Duration::from_secs(80), || fix_starts(&s).len() == 2);
    let took = killed.elapsed();
    let outs = finish(
        children,
        Duration::from_secs(if took_over { 60 } else { 1 }),
    );
    assert!(
        took_over,
        "a waiter took over: {:?}\n{}",
        s.witness(),
        report(&outs)
    );
    all_green(&outs);
    let st = fix_starts(&s);
    assert!(
        !st[1].contains("flavor0"),
        "the successor is another job: {st:?}"
    );
    assert!(st[1].ends_with(" 2"), "generation 2: {st:?}");
    // Driven by stale_after (4 s) plus a few polls, not by the waiters' own wait (90 s); the
    // bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(60), "takeover took {took:?}");
    let status = s.status(&clones[1]);
    assert_eq!(status["totals"]["takeovers"], 1, "{status}");
}

#[test]
fn remote_daemon_stopped_and_restarted_during_a_wait() {
    let mut s = server_with(|root| shared_config(root, "stale_after = \"60s\"\nwait = \"60s\""));
    s.start_daemon();
    std::fs::write(s.path("hold"), "").unwrap();
    let clones: Vec<PathBuf> = (0..3)
        .map(|i| s.clone(&format!("c{i}"), &s.daemon_url()))
        .collect();
    let mut children = vec![("flavor0".to_owned(), s.ci(&clones[0], "flavor0", &[]))];
    assert!(eventually(Duration::from_secs(30), || fix_starts(&s).len() == 1));
    for (i, c) in clones.iter().enumerate().skip(1) {
        children.push((format!("flavor{i}"), s.ci(c, &format!("flavor{i}"), &[])));
    }
    assert!(eventually(Duration::from_secs(30), || {
        s.status(&clones[0])["keys"][0]["waiters"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
    }));
    s.stop_daemon();
    std::thread::sleep(Duration::from_secs(3));
    s.start_daemon();
    std::fs::remove_file(s.path("hold")).unwrap();
    let outs = finish(children, Duration::from_secs(90));
    all_green(&outs);
    assert_eq!(fix_starts(&s).len(), 1, "one fix run: {:?}", s.witness());
    let told = outs
        .iter()
        .filter(|(_, o)| text(&o.stderr).contains("cannot reach the remote `origin`"))
        .count();
    assert!(
        told >= 2,
        "the waiters said they could not reach the remote\n{}",
        report(&outs)
    );
    // A daemon stopped mid-request resets the connection; a stopped one refuses it.
    let said = text(&outs[1].1.stderr);
    assert!(
        [
            "Connection refused",
            "unable to connect",
            "Connection reset by peer"
        ]
        .iter()
        .any(|words| said.contains(words)),
        "in git's own words: {said}"
    );
}

/// The key's current state ref on the bare repository.
fn state_ref(s: &Server) -> (String, String) {
    let out = text(
        &git(
            &s.root,
            &s.bare,
            &[
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/buildlock/state",
            ],
        )
        .stdout,
    );
    let line = out.lines().last().expect("a state ref").to_owned();
    let (oid, name) = line.split_once(' ').unwrap();
    (oid.to_owned(), name.to_owned())
}

#[test]
fn remote_a_push_that_loses_every_race_for_a_while_still_lands_once() {
    let s = server_with(|root| shared_config(root, "stale_after = \"60s\"\nwait = \"60s\""));
    std::fs::write(s.path("hold"), "").unwrap();
    let url = s.file_url();
    let a = s.clone("a", &url);
    let b = s.clone("b", &url);
    let fixer = s.ci(&a, "fixer", &[]);
    assert!(eventually(Duration::from_secs(30), || fix_starts(&s).len() == 1));
    // A writer on the server moves the key's ref as fast as it can (fast-forward commits with the
    // same state), so that b's pushes keep finding the ref moved under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop2, moved2, root, bare) = (stop.clone(), moved.clone(), s.root.clone(), s.bare.clone());
    let noise = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let out = text(
                &git(
                    &root,
                    &bare,
                    &[
                        "for-each-ref",
                        "--format=%(objectname) %(refname)",
                        "refs/buildlock/state",
                    ],
                )
                .stdout,
            );
            let Some((oid, name)) = out.lines().last().and_then(|l| l.split_once(' ')) else {
                continue;
            };
            let mut c = command("git", &root);
            c.current_dir(&bare).args([
                "commit-tree",
                &format!("{oid}^{{tree}}"),
                "-p",
                oid,
                "-m",
                "noise",
            ]);
            let new = text(&run_ok(c).stdout).trim().to_owned();
            let mut c = command("git", &root);
            c.current_dir(&bare).args(["update-ref", name, &new, oid]);
            if c.output().unwrap().status.success() {
                moved2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = moved.load(std::sync::atomic::Ordering::SeqCst);
    let waiter = s.ci(&b, "waiter", &[]);
    // For a while, the ref moves faster than the waiter can read and push (about every 10 ms
    // against its ~100 ms): it loses race after race, backs off and tries again.
    std::thread::sleep(Duration::from_secs(3));
    let during = moved.load(std::sync::atomic::Ordering::SeqCst) - before;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    noise.join().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            s.status(&a)["keys"][0]["waiters"]
                .as_array()
                .is_some_and(|w| w.len() == 1)
        }),
        "the waiter's join landed once the noise stopped"
    );
    std::fs::remove_file(s.path("hold")).unwrap();
    let outs = finish(
        vec![("fixer".into(), fixer), ("waiter".into(), waiter)],
        Duration::from_secs(60),
    );
    all_green(&outs);
    assert_eq!(fix_starts(&s).len(), 1, "{:?}", s.witness());
    assert!(
        during > 5,
        "the ref kept moving while the waiter joined ({during} moves)"
    );
    let st = s.status(&a);
    assert_eq!(st["keys"][0]["status"], "passing", "{st}");
    assert_eq!(
        (
            st["totals"]["elections"].as_u64(),
            st["totals"]["fix_runs_avoided"].as_u64()
        ),
        (Some(1), Some(1)),
        "{st}"
    );
}

#[test]
fn remote_damaged_state_commit_reads_as_broken_and_is_replaced() {
    let s = server_with(|root| shared_config(root, "stale_after = \"60s\"\nwait = \"5s\""));
    let url = s.file_url();
    let a = s.clone("a", &url);
    // No fix command: the elected job exits 1 at once.
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(&a)
        .args(["ci", "--", "false"])
        .env("BUILD_FLAVOR", "one")
        .env("BUILDLOCK_CONFIG", s.path("nofix.toml"));
    std::fs::write(s.path("nofix.toml"), "[fix]\ncommand = \"\"\n").unwrap();
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // A commit with garbage for state, on top of the good one (a fast-forward).
    let (tip, name) = state_ref(&s);
    let blob = {
        let mut c = command("git", &s.root);
        c.current_dir(&s.bare)
            .args(["hash-object", "-w", "--stdin"]);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"schema\": 1, garbage")
            .unwrap();
        text(&child.wait_with_output().unwrap().stdout)
            .trim()
            .to_owned()
    };
    let tree = {
        let mut c = command("git", &s.root);
        c.current_dir(&s.bare)
            .arg("mktree")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("100644 blob {blob}\tstate.json\n").as_bytes())
            .unwrap();
        text(&child.wait_with_output().unwrap().stdout)
            .trim()
            .to_owned()
    };
    let bad = text(
        &git(
            &s.root,
            &s.bare,
            &["commit-tree", &tree, "-p", &tip, "-m", "damage"],
        )
        .stdout,
    )
    .trim()
    .to_owned();
    git(&s.root, &s.bare, &["update-ref", &name, &bad, &tip]);
    let mut c2 = command(BUILDLOCK, &s.root);
    c2.current_dir(&a)
        .args(["ci", "--", "false"])
        .env("BUILD_FLAVOR", "two")
        .env("BUILDLOCK_CONFIG", s.path("nofix.toml"));
    let out = c2.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unreadable"), "the damage is reported: {err}");
    let st = s.status(&a);
    let key = &st["keys"][0];
    assert_eq!(
        (key["fixer"]["agent"].as_str(), key["generation"].as_u64()),
        (Some("two"), Some(2)),
        "broken with nobody fixing, then elected; the generation did not go back: {st}"
    );
    // Now a blob where the state commit belongs: not a commit, so no fast-forward from it; a new
    // chain replaces it (its ref deleted in the same atomic push).
    let (tip, name) = state_ref(&s);
    git(&s.root, &s.bare, &["update-ref", &name, &blob, &tip]);
    let mut c3 = command(BUILDLOCK, &s.root);
    c3.current_dir(&a)
        .args(["ci", "--", "false"])
        .env("BUILD_FLAVOR", "three")
        .env("BUILDLOCK_CONFIG", s.path("nofix.toml"));
    let out = c3.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let refs = s.buildlock_refs();
    assert_eq!(refs.len(), 1, "the damaged ref was replaced: {refs:?}");
    assert_ne!(refs[0], name, "under a new epoch");
    assert_eq!(s.status(&a)["keys"][0]["fixer"]["agent"], "three");
}

#[test]
fn remote_clock_skew_of_ten_minutes_either_way_changes_nothing() {
    for (fixer_skew, waiter_skews) in [("-10m", ["+10m", "0s"]), ("+10m", ["-10m", "0s"])] {
        let s = server_with(|root| shared_config(root, "stale_after = \"30s\"\nwait = \"60s\""));
        std::fs::write(s.path("hold"), "").unwrap();
        let url = s.file_url();
        let clones: Vec<PathBuf> = (0..3).map(|i| s.clone(&format!("c{i}"), &url)).collect();
        let mut children = vec![(
            "fixer".to_owned(),
            s.ci(
                &clones[0],
                "fixer",
                &[("BUILDLOCK_TEST_CLOCK_OFFSET", fixer_skew)],
            ),
        )];
        assert!(eventually(Duration::from_secs(30), || fix_starts(&s).len() == 1));
        for (i, skew) in waiter_skews.iter().enumerate() {
            let agent = format!("waiter{i}");
            children.push((
                agent.clone(),
                s.ci(
                    &clones[i + 1],
                    &agent,
                    &[("BUILDLOCK_TEST_CLOCK_OFFSET", skew)],
                ),
            ));
        }
        assert!(eventually(Duration::from_secs(30), || {
            s.status(&clones[0])["keys"][0]["waiters"]
                .as_array()
                .is_some_and(|w| w.len() == 2)
        }));
        // Longer than a heartbeat period, shorter than stale_after: a waiter that compared
        // clocks would have taken over by now (the fixer's lease looks 10 minutes old, or 10
        // minutes in the future).
        std::thread::sleep(Duration::from_secs(3));
        std::fs::remove_file(s.path("hold")).unwrap();
        let outs = finish(children, Duration::from_secs(60));
        all_green(&outs);
        assert_eq!(
            fix_starts(&s).len(),
            1,
            "fixer skewed {fixer_skew}: {:?}\n{}",
            s.witness(),
            report(&outs)
        );
        let st = s.status(&clones[1]);
        assert_eq!(
            st["totals"]["takeovers"], 0,
            "fixer skewed {fixer_skew}: {st}"
        );
    }
}

#[test]
fn remote_unreachable_election_exits_70_with_gits_message() {
    let port = free_port();
    let s = Server::new("[coordination]\nbackend = \"remote\"\nremote = \"dead\"\nwait = \"2s\"\n");
    let a = s.clone("a", &s.file_url());
    git(
        &s.root,
        &a,
        &[
            "remote",
            "add",
            "dead",
            &format!("git://127.0.0.1:{port}/srv.git"),
        ],
    );
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(&a)
        .args(["ci", "--", "false"])
        .env("BUILD_FLAVOR", "x");
    let started = Instant::now();
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("coordination failed"), "{err}");
    assert!(
        err.contains("Connection refused"),
        "git's own message: {err}"
    );
    assert!(
        err.contains("cannot reach the remote `dead`"),
        "retried and said so: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A passing check is never refused because coordination failed.
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(&a)
        .args(["ci", "--", "true"])
        .env("BUILD_FLAVOR", "x");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn remote_unknown_remote_name_is_a_configuration_error_with_file_line_and_key() {
    let s = Server::new(
        "check = \"false\"\n[coordination]\nbackend = \"remote\"\nremote = \"upstream\"\n",
    );
    let a = s.clone("a", &s.file_url());
    let mut c = command(BUILDLOCK, &s.root);
    c.current_dir(&a).args(["ci"]).env("BUILD_FLAVOR", "x");
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(".buildlock.toml line 4, key `coordination.remote`"),
        "{err}"
    );
    assert!(err.contains("no git remote named `upstream`"), "{err}");
}

#[test]
fn remote_doctor_says_which_permission_is_missing() {
    let s = Server::new("[coordination]\nbackend = \"remote\"\n");
    let a = s.clone("a", &s.file_url());
    let doctor = |s: &Server| {
        let mut c = command(BUILDLOCK, &s.root);
        c.current_dir(&a).arg("doctor");
        c.output().unwrap()
    };
    let out = doctor(&s);
    let said = text(&out.stdout);
    assert!(
        said.contains("accepts pushes to refs/buildlock/*"),
        "{said}{}",
        text(&out.stderr)
    );
    assert!(s.buildlock_refs().is_empty(), "the probe ref was deleted");
    // A server that refuses refs/buildlock/* (as a token without write access would).
    let hook = s.bare.join("hooks/update");
    std::fs::write(
        &hook,
        "#!/bin/sh\ncase $1 in refs/buildlock/*) echo \"refs/buildlock is read-only for you\" >&2; exit 1;; esac\n",
    )
    .unwrap();
    let out = doctor(&s);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("PROBLEM  cannot create refs/buildlock/probe/"),
        "{said}"
    );
    assert!(said.contains("contents: write"), "{said}");
}

#[test]
fn remote_chains_are_compacted_under_a_fast_forward_only_server() {
    let s = Server::new(
        "check = \"test -e ok\"\n[coordination]\nbackend = \"remote\"\nscope = \"commit\"\n[hook]\nwait = false\n",
    );
    let url = s.file_url();
    let a = s.clone("a", &url);
    // Five breakages of one key, each fixed: ten transitions of its chain. (Waiters do not move
    // the chain: they write refs of their own.)
    for i in 0..5 {
        for (ok, want) in [(false, 1), (true, 0)] {
            if ok {
                std::fs::write(a.join("ok"), "").unwrap();
            } else {
                let _ = std::fs::remove_file(a.join("ok"));
            }
            let mut c = command(PRE_COMMIT, &s.root);
            c.current_dir(&a)
                .env("BUILDLOCK_AGENT", format!("agent{i}"))
                .env("BUILDLOCK_REMOTE_COMPACT_AFTER", "4");
            let out = c.output().unwrap();
            assert_eq!(out.status.code(), Some(want), "{}", text(&out.stderr));
        }
    }
    let refs = s.buildlock_refs();
    assert_eq!(refs.len(), 1, "{refs:?}");
    let epoch: u64 = refs[0].rsplit('/').next().unwrap().parse().unwrap();
    assert!(epoch > 1, "compacted at least once: {refs:?}");
    let chain = text(&git(&s.root, &s.bare, &["rev-list", "--count", &refs[0]]).stdout);
    assert!(
        chain.trim().parse::<u64>().unwrap() <= 4,
        "bounded chain: {chain}"
    );
    let st = s.status(&a);
    assert_eq!(
        (
            st["totals"]["failures"].as_u64(),
            st["totals"]["elections"].as_u64(),
            st["totals"]["fixes"].as_u64()
        ),
        (Some(5), Some(5), Some(5)),
        "no transition lost: {st}"
    );
    let root = text(
        &git(
            &s.root,
            &s.bare,
            &["log", "--format=%B", "--reverse", &refs[0]],
        )
        .stdout,
    );
    assert!(
        root.contains("Buildlock-Previous: "),
        "the root records the tip it replaced: {root}"
    );
}

#[test]
fn remote_old_passing_keys_are_pruned() {
    let s = Server::new(
        "check = \"test -e ok\"\n[coordination]\nbackend = \"remote\"\nscope = \"commit\"\n[hook]\nwait = false\n",
    );
    let a = s.clone("a", &s.file_url());
    let hook = |ok: bool| {
        if ok {
            std::fs::write(a.join("ok"), "").unwrap();
        } else {
            let _ = std::fs::remove_file(a.join("ok"));
        }
        let mut c = command(PRE_COMMIT, &s.root);
        c.current_dir(&a)
            .env("BUILDLOCK_AGENT", "a")
            .env("BUILDLOCK_REMOTE_PRUNE_AFTER", "1s");
        c.output().unwrap().status.code()
    };
    for i in 0..2 {
        git(
            &s.root,
            &a,
            &["commit", "-q", "--allow-empty", "-m", &format!("b{i}")],
        );
        assert_eq!(hook(false), Some(1));
        assert_eq!(hook(true), Some(0));
        std::thread::sleep(Duration::from_millis(1500));
    }
    let refs = s.buildlock_refs();
    assert_eq!(
        refs.len(),
        1,
        "the first key (passing for over 1 s) was deleted: {refs:?}"
    );
    assert!(refs[0].contains(&s.head(&a)), "{refs:?}");
}

#[test]
fn ci_with_the_local_backend_in_worktrees() {
    let r = TestRepo::new("");
    let config = shared_config(&r.root, "wait = \"60s\"\n")
        .replace("backend = \"remote\"", "backend = \"local\"");
    std::fs::write(r.dir.join(".buildlock.toml"), config).unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    std::fs::write(r.root.join("hold"), "").unwrap();
    let trees: Vec<PathBuf> = (0..3).map(|i| r.worktree(&format!("w{i}"))).collect();
    let ci = |dir: &Path, agent: &str| {
        r.cmd(BUILDLOCK, dir)
            .arg("ci")
            .env("BUILDLOCK_AGENT", agent)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children = vec![("w0".to_owned(), ci(&trees[0], "w0"))];
    let witness = || -> Vec<String> {
        std::fs::read_to_string(r.root.join("witness"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("start"))
            .map(str::to_owned)
            .collect()
    };
    assert!(eventually(Duration::from_secs(30), || witness().len() == 1));
    for (i, t) in trees.iter().enumerate().skip(1) {
        children.push((format!("w{i}"), ci(t, &format!("w{i}"))));
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(r.root.join("hold")).unwrap();
    let outs = finish(children, Duration::from_secs(60));
    all_green(&outs);
    assert_eq!(witness().len(), 1, "one fix run");
    assert_eq!(r.state()["backend"], "local");
}
