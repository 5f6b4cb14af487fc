//! A bounded remote: what the remote backend leaves on the server after many breakages, and
//! what pruning takes away (the rule is in `store/remote/prune.rs`; docs/operating.md says it in
//! words). Over a bare repository served by `git daemon` on loopback (see remote.rs), with the
//! real `buildlock ci`; the server's figures are read on the server itself (`git for-each-ref`,
//! `git count-objects -v`, `git rev-list --objects --all`) and printed, so run with
//! `--nocapture` to read them:
//!
//! ```sh
//! cargo test --test it remote_prune -- --nocapture
//! BUILDLOCK_PRUNE_BREAKAGES=500 cargo test --test it remote_prune_two_hundred -- --nocapture
//! ```

use crate::harness::*;
use crate::remote::{Server, git, server_with};
use buildlock_core::store::remote::RemoteStore;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// How many passing keys only age prunes (`KEEP_NEWEST` in prune.rs).
const KEEP_NEWEST: usize = 32;

/// One job per breakage: the check greps `status`; the fix writes `ok`, commits it and says so in
/// a witness outside every clone (its key and agent); a fix by an agent named `slow-*` takes
/// `slow` seconds. Waiters take the fix from its ref.
/// `slow`: the shell command the slow agents' fix runs before it fixes.
fn config(root: &Path, slow: &str, stale_after: &str) -> String {
    let fix = root.join("fix.sh");
    std::fs::write(
        &fix,
        format!(
            "echo \"start $BUILDLOCK_AGENT $BUILDLOCK_KEY\" >> {w}\n\
             case $BUILDLOCK_AGENT in slow-*) {slow};; esac\n\
             echo ok > status && git commit -q -am \"fix by $BUILDLOCK_AGENT\"\n\
             echo \"end $BUILDLOCK_AGENT $BUILDLOCK_KEY\" >> {w}\n",
            w = root.join("witness").display(),
        ),
    )
    .unwrap();
    format!(
        "check = \"grep -qx ok status\"\n\
         [coordination]\nbackend = \"remote\"\nscope = \"commit\"\nmatch = \"any\"\nwait = \"120s\"\n\
         remote_poll = \"200ms\"\nstale_after = \"{stale_after}\"\n\
         [fix]\ncommand = \"sh {fix}\"\n\
         [retry]\nattempts = 5\nrefresh = \"git fetch -q origin $BUILDLOCK_FIX_REF && git checkout -q --detach $BUILDLOCK_FIX_COMMIT\"\n\
         [ci]\ndeliver = \"none\"\n",
        fix = fix.display(),
    )
}

/// What the server holds, read on the server.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Every ref, and those under `refs/buildlock/`.
    refs: usize,
    buildlock_refs: usize,
    /// Keys: state refs under `refs/buildlock/state/`.
    keys: usize,
    /// `git count-objects -v`: loose objects and their KiB, packed objects and their KiB.
    loose: u64,
    loose_kib: u64,
    packed: u64,
    pack_kib: u64,
    /// Objects reachable from any ref.
    reachable: u64,
}

impl Figures {
    fn read(s: &Server) -> Figures {
        let refs = text(&git(&s.root, &s.bare, &["for-each-ref", "--format=%(refname)"]).stdout);
        let names: Vec<&str> = refs.lines().collect();
        let counts = text(&git(&s.root, &s.bare, &["count-objects", "-v"]).stdout);
        let field = |name: &str| -> u64 {
            counts
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {counts}"))
        };
        let reachable = text(&git(&s.root, &s.bare, &["rev-list", "--objects", "--all"]).stdout)
            .lines()
            .count() as u64;
        Figures {
            refs: names.len(),
            buildlock_refs: names
                .iter()
                .filter(|n| n.starts_with("refs/buildlock/"))
                .count(),
            keys: names
                .iter()
                .filter(|n| n.starts_with("refs/buildlock/state/"))
                .count(),
            loose: field("count"),
            loose_kib: field("size"),
            packed: field("in-pack"),
            pack_kib: field("size-pack"),
            reachable,
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<34} refs {:>4} (refs/buildlock {:>4}, keys {:>3})  objects: loose {:>5} ({:>5} KiB), \
             packed {:>5} ({:>5} KiB), reachable {:>5}",
            self.refs,
            self.buildlock_refs,
            self.keys,
            self.loose,
            self.loose_kib,
            self.packed,
            self.pack_kib,
            self.reachable
        )
    }
}

/// `buildlock ci` in `dir` as `agent`, to its end.
fn ci(s: &Server, dir: &Path, agent: &str, env: &[(&str, &str)]) -> Output {
    wait_output(s.ci(dir, agent, env), Duration::from_secs(180))
}

/// A new broken commit in `dir` (scope = "commit": a key of its own); returns it.
fn break_build(s: &Server, dir: &Path, n: usize) -> String {
    std::fs::write(dir.join("status"), format!("broken {n}\n")).unwrap();
    git(
        &s.root,
        dir,
        &["commit", "-q", "-am", &format!("breakage {n}")],
    );
    s.head(dir)
}

/// One breakage fixed by one job: the job exits 3 (broken here, passes on the fix).
fn breakage(s: &Server, dir: &Path, n: usize, env: &[(&str, &str)]) -> String {
    let tested = break_build(s, dir, n);
    let out = ci(s, dir, "solo", env);
    assert_eq!(
        out.status.code(),
        Some(3),
        "breakage {n}: {}",
        text(&out.stderr)
    );
    tested
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

/// `n` pairs of commits in the clone `dir`, written by one `git fast-import`: a broken commit on
/// `base` (its own key with scope = "commit") and its fix on top. Returns `(tested, fix)` oids.
fn commit_pairs(s: &Server, dir: &Path, base: &str, n: usize) -> Vec<(String, String)> {
    use std::io::Write;
    let mut stream = String::new();
    let blob = |text: &str| format!("data {}\n{text}", text.len());
    for i in 0..n {
        let who = "committer Test <test@example.com> 1700000000 +0000";
        let broken = format!("broken {i}\n");
        stream.push_str(&format!(
            "commit refs/prune-test/{i}\nmark :{t}\n{who}\n{}\nfrom {base}\nM 100644 inline status\n{}\n\n\
             commit refs/prune-test/{i}\nmark :{f}\n{who}\n{}\nM 100644 inline status\n{}\n\n",
            blob(&format!("breakage {i}\n")),
            blob(&broken),
            blob(&format!("fix {i}\n")),
            blob("ok\n"),
            t = 2 * i + 1,
            f = 2 * i + 2,
        ));
    }
    let marks = s.path("marks");
    let mut c = command("git", &s.root);
    c.current_dir(dir)
        .args(["fast-import", "--quiet"])
        .arg(format!("--export-marks={}", marks.display()))
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "git fast-import");
    let marks = std::fs::read_to_string(marks).unwrap();
    let oid = |mark: usize| -> String {
        marks
            .lines()
            .find_map(|l| l.strip_prefix(&format!(":{mark} ")))
            .unwrap()
            .to_owned()
    };
    (0..n).map(|i| (oid(2 * i + 1), oid(2 * i + 2))).collect()
}

/// One breakage through the store API in this process (a real `buildlock ci` costs about a
/// second here; this, a few git round trips): the failure that elects the fixer, and its passing
/// check with the fix commit (pushed with the state), which ends in a prune. A real fixer adds
/// a few state commits between the two (its fix process, heartbeats, the fix run's start and
/// end): the real breakages of the test measure those. With `waiter`, a second job of the
/// matrix fails while the fix runs (it joins with a waiter's ref of its own), and its ref is
/// back on the server after the fix's clean-up deleted it, as a join that landed after that
/// clean-up read the refs leaves it; told to take the fix, the waiter leaves a note.
fn breakage_in_process(
    s: &Server,
    store: &RemoteStore,
    dir: &Path,
    tested: &str,
    fix: &str,
    waiter: Option<&str>,
) {
    use buildlock_core::protocol::state::{Agent, Event, FixSeen, Outcome};
    use buildlock_core::store::{Policy, Store};
    let agent = Agent {
        id: "solo".into(),
        pid: std::process::id(),
        host: "prune-test".into(),
        start: None,
        pid_space: None,
    };
    let policy = Policy {
        stale_after: Duration::from_secs(60),
        max_fix_attempts: 3,
        max_fix_time: Duration::from_secs(3600),
    };
    let failed = Event::Failed {
        agent: agent.clone(),
        signature: "prune-test".into(),
        log: dir.join("failure.log"),
        passes_seen: None,
        lacks_fix: None,
        holder: None,
        elector: None,
    };
    let never = &|| false;
    let elected = store
        .apply(tested, tested, &failed, policy, None, never)
        .unwrap();
    assert!(
        matches!(elected.outcome, Outcome::Elected { .. }),
        "{:?}",
        elected.outcome
    );
    let generation = elected.after.generation;
    if let Some(waiter) = waiter {
        let joined = store
            .apply(
                tested,
                tested,
                &Event::Failed {
                    agent: Agent {
                        id: waiter.into(),
                        ..agent.clone()
                    },
                    signature: "prune-test".into(),
                    log: dir.join("failure.log"),
                    passes_seen: None,
                    lacks_fix: None,
                    holder: None,
                    elector: None,
                },
                policy,
                None,
                never,
            )
            .unwrap();
        assert!(
            matches!(joined.outcome, Outcome::Wait { .. }),
            "{:?}",
            joined.outcome
        );
    }
    let joined: Vec<(String, String)> = paths_under(s, "refs/buildlock/wait/")
        .into_iter()
        .filter(|(_, name)| waiter.is_some_and(|w| name.ends_with(&format!("/{generation}/{w}"))))
        .map(|(_, name)| {
            let oid = remote_ref(s, &name).unwrap();
            (name, oid)
        })
        .collect();
    assert_eq!(joined.len(), usize::from(waiter.is_some()), "{joined:?}");
    let passed = Event::Passed {
        agent,
        generation: Some(generation),
        fix: FixSeen {
            head_before: Some(tested.to_owned()),
            git_dir: Some(dir.join(".git")),
            commit: Some(fix.to_owned()),
            committer: None,
            recorder: None,
        },
    };
    let fixed = store
        .apply(tested, tested, &passed, policy, None, never)
        .unwrap();
    assert_eq!(fixed.outcome, Outcome::Fixed);
    for (name, oid) in &joined {
        // The late join: created again where the fix deleted it (the empty old value: only
        // if it is not there).
        git(&s.root, &s.bare, &["update-ref", name, oid, ""]);
    }
    if let Some(waiter) = waiter {
        let note = serde_json::json!({"event": "take_fix", "key": tested, "agent": waiter,
            "commit": fix, "fixer": "solo", "generation": generation});
        store
            .record(buildlock_core::store::Entry::from_json(note))
            .unwrap();
    }
}

/// The key paths (`<base>/<sub>`) of the server's refs under `prefix`, one per ref, as
/// `(path, ref)`.
fn paths_under(s: &Server, prefix: &str) -> Vec<(String, String)> {
    let refs = text(
        &git(
            &s.root,
            &s.bare,
            &["for-each-ref", "--format=%(refname)", prefix],
        )
        .stdout,
    );
    refs.lines()
        .map(|name| {
            let rest = name.strip_prefix(prefix).unwrap();
            let path: Vec<&str> = rest.splitn(3, '/').take(2).collect();
            (path.join("/"), name.to_owned())
        })
        .collect()
}

#[test]
fn remote_prune_two_hundred_breakages_leave_a_bounded_remote() {
    let n: usize = std::env::var("BUILDLOCK_PRUNE_BREAKAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut s = server_with(|root| config(root, "true", "60s"));
    // No `git gc --auto` after each push (hosts run their housekeeping on their own schedule):
    // one process less per push, and the loose objects stay as the pushes left them.
    git(&s.root, &s.bare, &["config", "receive.autogc", "false"]);
    s.start_daemon();
    let a = s.clone("a", &s.daemon_url());
    let main = remote_ref(&s, "refs/heads/main").unwrap();
    let start = Figures::read(&s);

    // Three real breakages, one `buildlock ci` each, their fixes delivered to branches (as
    // `ci.deliver = "branch"`, the default, does): what one breakage costs the server.
    let deliver = s.path("deliver.toml");
    std::fs::write(&deliver, "[ci]\ndeliver = \"branch\"\n").unwrap();
    let deliver_s = deliver.display().to_string();
    let fresh = ("BUILDLOCK_REMOTE_PRUNE_AFTER", "1000h");
    let mut delivered = Vec::new();
    for i in 0..3 {
        git(&s.root, &a, &["reset", "-q", "--hard", &main]);
        let tested = breakage(
            &s,
            &a,
            i,
            &[fresh, ("BUILDLOCK_CONFIG", deliver_s.as_str())],
        );
        let branch = format!("refs/heads/buildlock/fix/{}", &tested[..12]);
        let fix = remote_ref(&s, &branch).unwrap_or_else(|| panic!("{branch} delivered"));
        delivered.push((branch, fix));
    }
    let real = Figures::read(&s);

    // Then n breakages through the store API, in this process, over the same daemon: nothing
    // is old enough to prune yet (the remote as the issue saw it, within its first day).
    let pairs = commit_pairs(&s, &a, &main, n);
    let store = RemoteStore::new(
        &a.join(".git"),
        "origin",
        Duration::from_secs(60),
        Duration::from_millis(200),
        Duration::from_secs(60),
    )
    .unwrap();
    // Four at a time (four jobs of a matrix, each on its own commit): git's round trips wait
    // more than they compute.
    let clock = Instant::now();
    // Every fifth breakage has a waiter whose ref outlived the fix, and a note.
    let with_waiter: Vec<(usize, &(String, String))> = pairs.iter().enumerate().collect();
    std::thread::scope(|scope| {
        for part in with_waiter.chunks(n.div_ceil(4).max(1)) {
            let (s, store, a) = (&s, &store, &a);
            scope.spawn(move || {
                for (i, (tested, fix)) in part {
                    let waiter = format!("waiter-{i}");
                    let waiter = (i % 5 == 0).then_some(waiter.as_str());
                    breakage_in_process(s, store, a, tested, fix, waiter);
                }
            });
        }
    });
    let took = clock.elapsed();
    let before = Figures::read(&s);
    assert_eq!(before.keys, n + 3, "one key per breakage: {before:?}");
    // No step of their keys ends a wait again: what deletes the late waiters' refs (n / 5 of
    // them) is the prune at the end of every breakage. Notes stay until an election takes them
    // in.
    let waits_before = paths_under(&s, "refs/buildlock/wait/");
    let notes_before = paths_under(&s, "refs/buildlock/note/");
    // Another part's ref under refs/buildlock/ (claims): never ours to prune.
    let foreign = "refs/buildlock/claims/registry";
    git(&s.root, &s.bare, &["update-ref", foreign, &main]);

    // An hour later, as it were: with the age limit at 24 s, passing keys beyond the newest 32
    // go once 1 s old. Real breakages end, each pruning at most 200 refs.
    std::thread::sleep(Duration::from_millis(1200));
    let prune = ("BUILDLOCK_REMOTE_PRUNE_AFTER", "24s");
    let mut extra = 0;
    let mut after = before;
    while extra < 5 && (extra == 0 || after.keys > KEEP_NEWEST + 1) {
        git(&s.root, &a, &["reset", "-q", "--hard", &main]);
        breakage(&s, &a, n + 3 + extra, &[prune]);
        extra += 1;
        after = Figures::read(&s);
    }
    let waits_after = paths_under(&s, "refs/buildlock/wait/");
    let notes_after = paths_under(&s, "refs/buildlock/note/");
    // What the host's own housekeeping then reclaims: unreachable objects go at its gc.
    git(&s.root, &s.bare, &["gc", "-q", "--prune=now"]);
    let collected = Figures::read(&s);

    println!("{}", start.line("remote_prune: at the start"));
    println!("{}", real.line("after 3 `buildlock ci` breakages"));
    println!(
        "{}",
        before.line(&format!("and {n} more, not yet prunable"))
    );
    println!(
        "{}",
        after.line(&format!("pruned by {extra} more breakages"))
    );
    println!("{}", collected.line("pruned, after the server's gc"));
    println!(
        "remote_prune: late waiters' refs {} made, {} left by the breakages, {} once pruned; \
         notes {} -> {}",
        n.div_ceil(5),
        waits_before.len(),
        waits_after.len(),
        notes_before.len(),
        notes_after.len()
    );
    println!(
        "remote_prune: a `buildlock ci` breakage: {:.1} objects, {:.1} refs under refs/buildlock \
         (and its delivery branch); through the store API: {:.1} objects; {n} breakages took {took:.1?}",
        (real.reachable - start.reachable) as f64 / 3.0,
        real.buildlock_refs as f64 / 3.0,
        (before.reachable - real.reachable) as f64 / n as f64,
    );

    // The bound: the newest 32 passing keys (plus the one just fixed) and their fix refs, and
    // the foreign ref, whatever n was.
    assert!(
        (1..=KEEP_NEWEST + 1).contains(&after.keys),
        "{}",
        after.line("pruned")
    );
    // No waiter's or note's ref of a pruned key is left: each one left belongs to a key that
    // has its state still. At most one note per key that stays.
    let states: Vec<String> = paths_under(&s, "refs/buildlock/state/")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let orphans: Vec<&String> = waits_after
        .iter()
        .chain(&notes_after)
        .filter(|(p, _)| !states.contains(p))
        .map(|(_, name)| name)
        .collect();
    assert!(orphans.is_empty(), "refs of pruned keys left: {orphans:?}");
    // And no waiter's ref of a key nobody fixes: every key left is passing.
    let side = waits_after.len() + notes_after.len();
    assert!(
        waits_after.is_empty() && side <= KEEP_NEWEST + 1,
        "waiters {} -> {}, notes {} -> {}",
        waits_before.len(),
        waits_after.len(),
        notes_before.len(),
        notes_after.len()
    );
    assert!(
        after.buildlock_refs <= 2 * (KEEP_NEWEST + 1) + 1 + side,
        "{}",
        after.line("pruned")
    );
    assert_eq!(
        remote_ref(&s, foreign).as_deref(),
        Some(main.as_str()),
        "a ref of another shape under refs/buildlock/ is left alone"
    );
    for (branch, fix) in &delivered {
        assert_eq!(
            remote_ref(&s, branch).as_ref(),
            Some(fix),
            "a delivered fix is never pruned away"
        );
    }
    if n + 3 > KEEP_NEWEST + 1 {
        assert!(
            collected.reachable < before.reachable,
            "pruning made objects unreachable: {} -> {}",
            before.reachable,
            collected.reachable
        );
    }
}

/// Agents that share the remote, each in a clone of its own.
fn clones(s: &Server, names: &[&str]) -> Vec<PathBuf> {
    let url = s.daemon_url();
    names.iter().map(|n| s.clone(n, &url)).collect()
}

#[test]
fn remote_prune_never_takes_a_breakage_whose_fixer_renews_its_lease() {
    // The age limit is 4 s, and twice stale_after 10 s: a breakage whose state last changed at
    // its election is old by both long before its slow fix (14 s) ends. Only the fixer's
    // heartbeat (every stale_after / 3) keeps it, while another clone ends breakage after
    // breakage, each of them pruning. The breakages stop when the slow fix ends, so that the
    // fixed key is younger than the age limit until the waiter has taken the fix.
    // The slow fix runs 14 s at least, and until the test has seen three pruning breakages end
    // (at most 5 minutes): under load a breakage takes seconds, and the race must run.
    let mut s = server_with(|root| {
        let release = root.join("release");
        config(
            root,
            &format!(
                "sleep 14; i=0; while [ ! -e {r} ] && [ $i -lt 1500 ]; do sleep 0.2; i=$((i+1)); done",
                r = release.display()
            ),
            "5s",
        )
    });
    s.start_daemon();
    let c = clones(&s, &["fixer", "waiter", "breaker"]);
    let tested = s.head(&c[0]);
    let env = [("BUILDLOCK_REMOTE_PRUNE_AFTER", "4s")];
    let fixer: Child = s.ci(&c[0], "slow-fixer", &env);
    // The waiter joins once the slow fix runs (so that it is the one waiting).
    assert!(
        eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(s.path("witness")).is_ok_and(|w| w.contains("slow-fixer"))
        }),
        "the slow fix started"
    );
    let waiter: Child = s.ci(&c[1], "slow-waiter", &env);
    let mut fixer = Some(fixer);
    let mut waiter = Some(waiter);
    let mut outs: Vec<(String, Output)> = Vec::new();
    let mut pruning_breakages = 0;
    let clock = Instant::now();
    while fixer.is_some() || waiter.is_some() {
        if clock.elapsed() > Duration::from_secs(600) {
            for child in [&mut fixer, &mut waiter].into_iter().flatten() {
                let _ = child.kill();
            }
            panic!(
                "the slow fix never ended: {}",
                std::fs::read_to_string(s.path("witness")).unwrap_or_default()
            );
        }
        for (name, job) in [("fixer", &mut fixer), ("waiter", &mut waiter)] {
            if let Some(mut child) = job.take() {
                if child.try_wait().unwrap().is_some() {
                    outs.push((name.to_owned(), wait_output(child, Duration::from_secs(5))));
                } else {
                    *job = Some(child);
                }
            }
        }
        let fix_ended = std::fs::read_to_string(s.path("witness"))
            .is_ok_and(|w| w.contains(&format!("end slow-fixer {tested}")));
        if fixer.is_some() && !fix_ended {
            breakage(&s, &c[2], pruning_breakages, &env);
            pruning_breakages += 1;
            if pruning_breakages == 3 {
                std::fs::write(s.path("release"), "").unwrap();
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let witness = std::fs::read_to_string(s.path("witness")).unwrap();
    let report: String = outs
        .iter()
        .map(|(n, o)| format!("--- {n} ({:?})\n{}", o.status, text(&o.stderr)))
        .collect();
    println!(
        "remote_prune: {pruning_breakages} breakages ended (each pruning) while the slow fix ran"
    );
    let ours: Vec<&str> = witness.lines().filter(|l| l.contains(&tested)).collect();
    assert_eq!(
        ours,
        [
            format!("start slow-fixer {tested}"),
            format!("end slow-fixer {tested}")
        ],
        "one fix run of the slow breakage: its state was never pruned under it\n{report}"
    );
    for (name, out) in &outs {
        assert_eq!(out.status.code(), Some(3), "{name}: {report}");
    }
    assert!(
        pruning_breakages >= 3,
        "the race ran: {pruning_breakages} pruning breakages during the fix"
    );
}
