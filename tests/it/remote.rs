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

struct Server {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bare: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn git(root: &Path, dir: &Path, args: &[&str]) -> Output {
    let mut c = command("git", root);
    c.current_dir(dir).args(args);
    run_ok(c)
}

impl Server {
    /// A bare repository whose `main` holds `.buildlock.toml` = `config` and a `status` file
    /// saying `broken` (the check greps it for `ok`).
    fn new(config: &str) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        let bare = root.join("srv.git");
        git(&root, &root, &["init", "-q", "--bare", "-b", "main", "srv.git"]);
        git(&root, &bare, &["config", "receive.denyNonFastForwards", "true"]);
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
        git(&root, &seed, &["push", "-q", bare.to_str().unwrap(), "main"]);
        Server {
            _tmp: tmp,
            root,
            bare,
            port: free_port(),
            daemon: None,
        }
    }

    fn start_daemon(&mut self) {
        let child = Command::new("timeout")
            .args(["600", "git", "daemon", "--enable=receive-pack", "--export-all", "--reuseaddr"])
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

    fn daemon_url(&self) -> String {
        format!("git://127.0.0.1:{}/srv.git", self.port)
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// A clone of its own (a machine): no shared git dir.
    fn clone(&self, name: &str, url: &str) -> PathBuf {
        git(&self.root, &self.root, &["clone", "-q", "-b", "main", url, name]);
        self.root.join(name)
    }

    /// Every branch and tag of the remote, with its commit.
    fn heads_and_tags(&self) -> String {
        text(&git(&self.root, &self.bare, &["for-each-ref", "refs/heads", "refs/tags"]).stdout)
    }

    fn buildlock_refs(&self) -> Vec<String> {
        text(&git(&self.root, &self.bare, &["for-each-ref", "--format=%(refname)", "refs/buildlock"]).stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
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
    fn ci(&self, dir: &Path, agent: &str, extra_env: &[(&str, &str)]) -> Child {
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

    fn status(&self, dir: &Path) -> serde_json::Value {
        let mut c = command(BUILDLOCK, &self.root);
        c.current_dir(dir).args(["status", "--json"]);
        serde_json::from_slice(&run_ok(c).stdout).unwrap()
    }

    fn head(&self, dir: &Path) -> String {
        text(&git(&self.root, dir, &["rev-parse", "HEAD"]).stdout)
            .trim()
            .to_owned()
    }
}

/// The configuration of the race: the check waits for the starting gun (so that every job
/// fails at the same instant) and greps `status`; the fix commits `ok` and records itself in a
/// witness file outside every clone; a waiter refreshes onto the fix ref.
fn race_config(root: &Path, extra: &str) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\n\
             [ -e {slow} ] && sleep 30\nsleep 0.3\n\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n\
             echo \"end $BUILDLOCK_AGENT $BUILDLOCK_GENERATION\" >> {w}\n",
            w = root.join("witness").display(),
            slow = root.join("slow").display(),
        ),
    )
    .unwrap();
    format!(
        "check = \"while [ ! -e {go} ]; do sleep 0.01; done; grep -qx ok status\"\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nwait = \"90s\"\nremote_poll = \"200ms\"\n{extra}\n\
         [fix]\ncommand = \"sh {fix}\"\n\
         [retry]\nattempts = 5\nrefresh = \"git fetch -q origin $BUILDLOCK_FIX_REF && git checkout -q --detach $BUILDLOCK_FIX_COMMIT\"\n",
        go = root.join("go").display(),
        fix = fix.display(),
    )
}

/// A server whose temp dir is known before the config is written (the config names paths in it).
fn race_server(extra: &str) -> Server {
    // The config must name paths in the server's own temp dir: write it after creating the
    // server, as a second commit.
    let s = Server::new("");
    let config = race_config(&s.root, extra);
    let seed = s.root.join("seed");
    std::fs::write(seed.join(".buildlock.toml"), config).unwrap();
    git(&s.root, &seed, &["commit", "-q", "-am", "config"]);
    git(&s.root, &seed, &["push", "-q", s.bare.to_str().unwrap(), "main"]);
    s
}

/// One round: `n` clones run `buildlock ci` on the same broken commit at once. Checks: exactly one
/// fix run, every job green on the fix commit, no branch or tag of the remote changed.
fn race_round(s: &Server, clones: &[PathBuf], round: usize) {
    let heads_before = s.heads_and_tags();
    let witness_before = s.witness().len();
    let _ = std::fs::remove_file(s.path("go"));
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
    assert_eq!(starts, 1, "round {round}: exactly one fix run: {new:?}\n{all_err}");
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
    assert_eq!(s.heads_and_tags(), heads_before, "no branch or tag of the remote changed");
}

/// Resets every clone onto the remote's `main` (the broken commit) for the next round.
fn back_to_broken(s: &Server, clones: &[PathBuf]) {
    for c in clones {
        git(&s.root, c, &["checkout", "-q", "--detach", "origin/main"]);
    }
}

fn race(n: usize, rounds: usize, daemon: bool) {
    let mut s = race_server("stale_after = \"10s\"");
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
            git(&s.root, &seed, &["commit", "-q", "-m", &format!("round {round}")]);
            git(&s.root, &seed, &["push", "-q", s.bare.to_str().unwrap(), "main"]);
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
    race(7, 2, true);
}

#[test]
fn remote_race_seven_clones_over_file_url() {
    race(7, 1, false);
}

#[test]
#[ignore = "long: 16 clones, 10 rounds over git daemon (a few minutes)"]
fn remote_race_full() {
    let rounds = std::env::var("REMOTE_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    race(16, rounds, true);
}
