//! Waiting jobs of a CI matrix on the remote backend, over a real `git daemon`: a waiter joins
//! with a ref of its own and never pushes the key's state, so the fixer's pushes never lose a
//! race to it; while the fixer's lease is fresh a waiter only looks (`ls-remote`); `status`
//! lists the waiters from their refs. Judged by a `git` witness on PATH that logs every git run
//! and every push's result, not by buildlock's own account.

use crate::harness::*;
use crate::remote::{Server, git, server_with};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// The check waits for the starting gun and greps `status`; the fix says it started, waits for
/// `release` (when `hold` is set) and commits `ok`.
fn matrix_config(root: &Path, hold: bool) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT\" >> {w}\n\
             {hold}\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n",
            w = root.join("witness").display(),
            hold = if hold {
                format!(
                    "while [ ! -e {} ]; do sleep 0.05; done\n",
                    root.join("release").display()
                )
            } else {
                format!("sleep 0.3\n{}", crate::remote::await_joins_sh(root))
            },
        ),
    )
    .unwrap();
    format!(
        "check = \"while [ ! -e {go} ]; do sleep 0.01; done; grep -qx ok status\"\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nwait = \"5m\"\n\
         remote_poll = \"200ms\"\nstale_after = \"10m\"\n\
         [fix]\ncommand = \"sh {fix}\"\n\
         [retry]\nattempts = 5\nrefresh = \"git fetch -q origin $BUILDLOCK_FIX_REF && git checkout -q --detach $BUILDLOCK_FIX_COMMIT\"\n\
         [ci]\npass_on_fix = true\ndeliver = \"none\"\n",
        go = root.join("go").display(),
        fix = fix.display(),
    )
}

struct Matrix {
    s: Server,
    clones: Vec<PathBuf>,
    log: PathBuf,
    path: String,
}

impl Matrix {
    fn new(n: usize, hold: bool) -> Matrix {
        let mut s = server_with(|root| matrix_config(root, hold));
        s.start_daemon();
        let url = s.daemon_url();
        let clones = (0..n).map(|i| s.clone(&format!("c{i}"), &url)).collect();
        // Every job but the fixer joins before the fix (see `await_joins_sh`).
        std::fs::write(s.path("joins"), (n - 1).to_string()).unwrap();
        let log = s.path("git-calls.log");
        let path = git_witness(&s.path("shim"), &log).into_string().unwrap();
        Matrix {
            s,
            clones,
            log,
            path,
        }
    }

    /// Every job started, then the starting gun.
    fn start(&self) -> Vec<Child> {
        let jobs = self
            .clones
            .iter()
            .enumerate()
            .map(|(i, c)| self.s.ci(c, &format!("flavor{i}"), &[("PATH", &self.path)]))
            .collect();
        std::thread::sleep(Duration::from_millis(300 + 20 * self.clones.len() as u64));
        std::fs::write(self.s.path("go"), "").unwrap();
        jobs
    }

    fn calls(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    fn fixers(&self) -> Vec<String> {
        std::fs::read_to_string(self.s.path("witness"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("start "))
            .map(str::to_owned)
            .collect()
    }

    fn end(&self, jobs: Vec<Child>) {
        let outs: Vec<_> = jobs
            .into_iter()
            .map(|j| wait_output(j, Duration::from_secs(300)))
            .collect();
        let all: String = outs
            .iter()
            .enumerate()
            .map(|(i, o)| format!("--- flavor{i} ({:?})\n{}", o.status, text(&o.stderr)))
            .collect();
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(
                o.status.code(),
                Some(0),
                "flavor{i} did not end green\n{all}"
            );
        }
        assert_eq!(self.fixers().len(), 1, "exactly one fix run\n{all}");
    }
}

#[test]
fn remote_waiters_join_with_refs_of_their_own_and_never_race_the_fixer() {
    let m = Matrix::new(8, false);
    let jobs = m.start();
    m.end(jobs);
    let fixer = m.fixers().remove(0);
    let pushed: Vec<(String, String)> = m
        .calls()
        .into_iter()
        .filter_map(|(who, what)| what.strip_prefix("pushed ").map(|p| (who, p.to_owned())))
        .collect();
    // The fixer's pushes: once elected, every one lands.
    let mine: Vec<&String> = pushed
        .iter()
        .filter(|(who, _)| *who == fixer)
        .map(|(_, p)| p)
        .collect();
    let elected = mine
        .iter()
        .position(|p| !p.starts_with('!'))
        .expect("the fixer's election landed");
    let lost: Vec<&&String> = mine[elected..]
        .iter()
        .filter(|p| p.starts_with('!'))
        .collect();
    assert!(
        lost.is_empty(),
        "the fixer lost races after its election: {lost:?}\n{mine:?}"
    );
    // A waiter lands no push on the key's state while it is fixed: it joins with its own ref,
    // one per waiter.
    for (who, p) in pushed.iter().filter(|(who, _)| *who != fixer) {
        if p.starts_with('!') {
            continue; // the election it lost
        }
        let subject = p
            .split(['\t', ':'])
            .nth(1)
            .map(|oid| {
                text(
                    &git(
                        &m.s.root,
                        &m.s.bare,
                        &["log", "-1", "--format=%B", oid.trim()],
                    )
                    .stdout,
                )
            })
            .unwrap_or_default();
        if !p.contains("refs/buildlock/wait/") {
            // Once the fix is in, a late job may record that it takes the fix: no fixer then.
            assert!(
                !subject
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .contains("(fixing, "),
                "waiter {who} pushed the key's state while it was being fixed: {p}\n{subject}"
            );
            continue;
        }
        assert!(
            p.contains(&format!("/{who}\t")),
            "waiter {who} pushed another agent's ref: {p}"
        );
    }
    // Joins come before the fix (after it, a job told to take the fix leaves a note on the same
    // ref: see below).
    let fixed_at = pushed
        .iter()
        .position(|(who, p)| *who == fixer && p.contains("refs/buildlock/fix/"))
        .expect("the fixer published its fix");
    let joined = pushed[..fixed_at]
        .iter()
        .filter(|(who, p)| *who != fixer && p.starts_with('*'))
        .count();
    assert_eq!(joined, 7, "every waiter joined once: {pushed:?}");
    // The fix took their refs away, and credited them.
    let left = text(
        &git(
            &m.s.root,
            &m.s.bare,
            &["for-each-ref", "--format=%(refname)", "refs/buildlock/wait"],
        )
        .stdout,
    );
    assert_eq!(left.trim(), "", "waiter refs left after the fix");
    let st = m.s.status(&m.clones[0]);
    assert_eq!(st["totals"]["waits"], 7, "{st}");
    assert_eq!(st["totals"]["fix_runs_avoided"], 7, "{st}");
}

#[test]
fn remote_waiters_only_look_while_the_fixers_lease_is_fresh_and_status_lists_them() {
    let m = Matrix::new(4, true);
    let jobs = m.start();
    let waiters_listed = || {
        let st = m.s.status(&m.clones[0]);
        let key = &st["keys"][0];
        let mut w: Vec<String> = key["waiters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        w.sort();
        (key["status"] == "fixing" && w.len() == 3).then_some(w)
    };
    let mut listed = None;
    assert!(
        eventually(Duration::from_secs(120), || {
            listed = waiters_listed();
            listed.is_some() && m.fixers().len() == 1
        }),
        "status never listed three waiters and a fix run: {}",
        m.s.status(&m.clones[0])
    );
    let fixer = m.fixers().remove(0);
    let mut expected: Vec<String> = (0..4)
        .map(|i| format!("flavor{i}"))
        .filter(|f| *f != fixer)
        .collect();
    expected.sort();
    assert_eq!(listed.unwrap(), expected, "status lists the waiters");
    // How many looks each waiter has made so far.
    let looks = |calls: &[(String, String)], who: &str| {
        calls
            .iter()
            .filter(|(w, what)| w == who && what == "ls-remote")
            .count()
    };
    let waiters_looked = |n: usize, since: &[(String, String)]| {
        let now = m.calls();
        expected
            .iter()
            .all(|w| looks(&now, w) >= looks(since, w) + n)
    };
    // Let the fixer's own steps at the start of its fix settle: three more looks each.
    let settle = m.calls();
    assert!(eventually(Duration::from_secs(120), || waiters_looked(
        3, &settle
    )));
    let from = m.calls();
    assert!(eventually(Duration::from_secs(120), || waiters_looked(
        8, &from
    )));
    let window = m.calls()[from.len()..].to_vec();
    std::fs::write(m.s.path("release"), "").unwrap();
    let other: Vec<&(String, String)> = window
        .iter()
        .filter(|(who, what)| expected.contains(who) && what != "ls-remote")
        .collect();
    assert!(
        other.is_empty(),
        "a waiter did more than look while the fixer's lease was fresh: {other:?}"
    );
    m.end(jobs);
}
