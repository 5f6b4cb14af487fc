//! Stress: N agents (commit-retry in N worktrees) commit in a loop while a
//! controller breaks the build at random, sometimes repairs it itself, and SIGKILLs or SIGSTOPs
//! (then SIGCONTs) the fixer in the middle of its fix. The agents behave like agent harnesses: a
//! commit that did not land is simply tried again, by a new commit-retry of the same agent.
//!
//! Invariants, each checked by a witness that does not trust buildlock:
//! - never two fix runs at once for one key: the fix takes `w/running.<key>` with `ln -s $$`
//!   (atomic; the link names the run) and checks at its end that it still holds it. A run that
//!   finds it taken by a live fix logs `OVERLAP`. An orphaned fix stopped with SIGTERM by its
//!   successor removes its own link (trap); one that died by SIGKILL leaves a link to a dead
//!   pid, which the next run recognises as stale (`stale` in the log) — that is not an overlap.
//!   With `match = "signature"` (the default) each breakage is a key of its own, and two
//!   breakages may rightly be fixed at once: the controller breaks again only once every key
//!   passes, and writes the build's status atomically, so that no check reads it half-written
//!   (another output, so another signature: a breakage that is not one);
//! - every agent's last commit lands (each agent ends with a commit after the build is green);
//! - no commit lands whose tree did not pass the check: the check logs the hash of exactly what
//!   it checked (`git ls-files -s` of the index git is committing) when it passes, and every
//!   commit on every agent's branch must have its tree's hash in that log;
//! - elections = breakages: a breakage is one controller break, from the break to the moment the
//!   build is passing again (the controller never breaks again before). A breakage that some
//!   agent's check hit (a recorded `failed` event in it) has exactly one `elected` event; one
//!   nobody hit has none; no election happens outside a breakage. Takeovers (a fixer that died
//!   or went silent replaced) are not elections: they are counted apart and may happen only in a
//!   breakage where the controller killed or stopped the fixer. Nobody gives the role up.
//!
//! CI runs the short form (8 agents, about 15 s of faults). The long form (32 agents, a minute):
//!
//! ```sh
//! cargo test --test it stress_long -- --ignored --nocapture
//! ```
//!
//! `BUILDLOCK_TEST_SEED` repeats the controller's choices of a run (printed at its start).

use crate::harness::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Params {
    agents: usize,
    /// How long the controller breaks the build.
    faults_for: Duration,
    stale_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intervention {
    None,
    Kill,
    Stop,
}

#[derive(Debug)]
struct Breakage {
    n: usize,
    start_ms: u64,
    end_ms: u64,
    intervention: Intervention,
    /// Whether the intervention found a fixer to act on.
    acted: bool,
    repaired_by_controller: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn setup(p: &Params) -> (TestRepo, Vec<PathBuf>) {
    let r = TestRepo::new("");
    let status = r.shared("status");
    let passes = r.shared("passes");
    let w = r.shared("w");
    std::fs::create_dir_all(&w).unwrap();
    let check = r.shared("check.sh");
    std::fs::write(
        &check,
        format!(
            "s=$(cat {status})\n\
             if [ \"$s\" = ok ]; then\n\
               h=$(git ls-files -s | git hash-object --stdin)\n\
               echo \"pass $h $BUILDLOCK_AGENT\" >> {passes}\n\
               exit 0\n\
             fi\n\
             echo \"$s\"\n\
             exit 1\n",
            status = status.display(),
            passes = passes.display()
        ),
    )
    .unwrap();
    let fix = r.shared("fix.sh");
    std::fs::write(
        &fix,
        format!(
            r#"W={w}
trap '' PIPE
k=$(printf %s "$BUILDLOCK_KEY" | tr -c 'A-Za-z0-9' _)
R="$W/running.$k"
me="$BUILDLOCK_AGENT g$BUILDLOCK_GENERATION a$BUILDLOCK_ATTEMPT pid$$ $k"
held() {{ [ "$(readlink "$R" 2>/dev/null)" = "$$" ]; }}
trap 'if held; then echo "stopped $me $(date +%s%3N)" >> "$W/log"; rm -f "$R"; fi; exit 143' TERM
alive() {{ [ -e /proc/$1 ] && [ "$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)" != Z ] && grep -q fix.sh /proc/$1/cmdline 2>/dev/null; }}
if ! ln -s "$$" "$R" 2>/dev/null; then
  prev=$(readlink "$R")
  if [ -z "$prev" ] || alive "$prev"; then echo "OVERLAP $me with pid$prev" >> "$W/log"; exit 1; fi
  echo "stale pid$prev (found by $me)" >> "$W/log"
  rm -f "$R"
  ln -s "$$" "$R" 2>/dev/null || {{ echo "OVERLAP $me racing" >> "$W/log"; exit 1; }}
fi
echo "start $me $(date +%s%3N)" >> "$W/log"
r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
t=$(awk -v r="$r" 'BEGIN {{ printf "%.2f", 1.5 + r / 65535 * 1.5 }}')
sleep $t & wait $!
held || {{ echo "OVERLAP $me lost the witness" >> "$W/log"; exit 1; }}
echo ok > {status}.$$ && mv {status}.$$ {status}
echo "end $me $(date +%s%3N)" >> "$W/log"
rm -f "$R"
"#,
            w = w.display(),
            status = status.display()
        ),
    )
    .unwrap();
    let stale_ms = p.stale_after.as_millis();
    std::fs::write(
        r.dir.join(".buildlock.toml"),
        format!(
            "check = \"sh {check}\"\n[fix]\ncommand = \"sh {fix}\"\n\
             [coordination]\nwait = \"60s\"\nstale_after = \"{stale_ms}ms\"\n\
             [retry]\nattempts = 10\n",
            check = check.display(),
            fix = fix.display()
        ),
    )
    .unwrap();
    r.git(&["commit", "-q", "-am", "config", "--no-verify"]);
    std::fs::write(&status, "ok\n").unwrap();
    let trees = (0..p.agents)
        .map(|i| r.worktree(&format!("s{i}")))
        .collect();
    (r, trees)
}

/// `git add` of a new file, retried while an orphaned `git commit` (its commit-retry was killed)
/// still holds the index lock.
fn stage(r: &TestRepo, dir: &Path, name: &str) {
    std::fs::write(dir.join(name), format!("{name}\n")).unwrap();
    for _ in 0..200 {
        let out = r.cmd("git", dir).args(["add", name]).output().unwrap();
        if out.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot stage {name} in {}", dir.display());
}

fn subject(r: &TestRepo, dir: &Path) -> String {
    let out = r
        .cmd("git", dir)
        .args(["log", "-1", "--format=%s"])
        .output()
        .unwrap();
    text(&out.stdout).trim().to_owned()
}

#[derive(Default)]
struct AgentReport {
    landed: usize,
    tries: usize,
    codes: BTreeMap<String, usize>,
    last_errors: Vec<String>,
}

/// One agent: commits `s<i> #<n>` in a loop until told to stop, then `s<i> final`; a commit that
/// did not land is tried again by a new commit-retry.
fn agent(r: &TestRepo, tree: &Path, i: usize, stop: &AtomicBool) -> AgentReport {
    let mut rep = AgentReport::default();
    let id = format!("s{i}");
    let mut n = 0;
    loop {
        let last = stop.load(Ordering::SeqCst);
        let msg = if last {
            format!("s{i} final")
        } else {
            format!("s{i} #{n}")
        };
        stage(r, tree, &msg.replace(' ', "-").replace('#', ""));
        let mut tries = 0;
        while subject(r, tree) != msg {
            tries += 1;
            assert!(
                tries <= 40,
                "{id}: `{msg}` did not land after 40 commit-retry runs: {:?}",
                rep.last_errors
            );
            let child = r
                .cmd(COMMIT_RETRY, tree)
                .args(["-q", "-m", &msg])
                .env("BUILDLOCK_AGENT", &id)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = wait_output(child, Duration::from_secs(240));
            let code = match (
                out.status.code(),
                std::os::unix::process::ExitStatusExt::signal(&out.status),
            ) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("signal {s}"),
                _ => "?".to_owned(),
            };
            *rep.codes.entry(code.clone()).or_default() += 1;
            if code != "0" {
                rep.last_errors
                    .push(format!("[{code}] {}", text(&out.stderr)));
                if rep.last_errors.len() > 3 {
                    rep.last_errors.remove(0);
                }
                // A commit-retry killed by the controller may leave its git commit running.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        rep.tries += tries;
        rep.landed += 1;
        if last {
            return rep;
        }
        n += 1;
    }
}

/// Every key of `buildlock status --json`. With `match = "signature"` (the default) each
/// breakage is a key of its own: the ones before it stay on record, passing.
fn keys(r: &TestRepo) -> Vec<serde_json::Value> {
    let mut c = r.cmd(BUILDLOCK, &r.dir);
    c.args(["status", "--json"]);
    let out = c.output().unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["keys"].as_array().cloned())
        .unwrap_or_default()
}

/// The key being fixed, if any.
fn fixing(r: &TestRepo) -> Option<serde_json::Value> {
    keys(r).into_iter().find(|k| k["status"] == "fixing")
}

/// The witness link of a key's fix run (as `fix.sh` names it).
fn running(r: &TestRepo, key: &serde_json::Value) -> PathBuf {
    let name: String = key["key"]
        .as_str()
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    r.shared("w").join(format!("running.{name}"))
}

fn build_ok(r: &TestRepo) -> bool {
    std::fs::read_to_string(r.shared("status")).is_ok_and(|s| s == "ok\n")
}

/// The build's status, replaced at once: a check never reads it half-written (an empty file
/// would fail with another output, and so another signature: a breakage that is not one).
fn set_status(r: &TestRepo, text: &str) {
    let status = r.shared("status");
    let tmp = r.shared("status.controller");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &status).unwrap();
}

/// No key is broken or being fixed: the breakage is over for buildlock too.
fn passing(r: &TestRepo) -> bool {
    keys(r).iter().all(|k| k["status"] == "passing")
}

fn is_commit_retry(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "commit-retry")
}

/// The controller: breakage after breakage, never two at once.
fn controller(r: &TestRepo, p: &Params, rng: &mut Rng) -> Vec<Breakage> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut n = 0;
    while start.elapsed() < p.faults_for {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        n += 1;
        let intervention = match rng.below(100) {
            0..35 => Intervention::Kill,
            35..70 => Intervention::Stop,
            _ => Intervention::None,
        };
        let repair_after =
            (rng.below(100) < 20).then(|| Duration::from_millis(200 + rng.below(1300)));
        let start_ms = now_ms();
        // A new error each time: a new failure signature per breakage.
        set_status(r, &format!("error: dependency mismatch (breakage {n})\n"));
        let broke = Instant::now();
        let mut acted = false;
        let mut repaired_by_controller = false;
        let mut stopped: Option<u32> = None;
        let mut resume_at = None;
        let limit = Duration::from_secs(120);
        loop {
            assert!(
                broke.elapsed() < limit,
                "breakage {n} not over after {limit:?}: {:?}",
                keys(r)
            );
            if let (Some(pid), Some(at)) = (stopped, resume_at) {
                if Instant::now() >= at {
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                    stopped = None;
                }
            }
            if !acted && intervention != Intervention::None {
                let k = fixing(r).unwrap_or_default();
                let f = &k["fixer"];
                if std::env::var_os("BUILDLOCK_STRESS_VERBOSE").is_some() {
                    eprintln!(
                        "controller {n}: {} fixer {} running {:?}",
                        k["key"],
                        f,
                        std::fs::read_link(running(r, &k))
                    );
                }
                // Mid-fix: the fix is on record and its run holds the witness.
                // The commit-retry that runs the fix is found from the fix itself (its parent),
                // not from `fixer.pid`, so that the controller acts the same on any version.
                let holder = f["fix_pid"]
                    .as_u64()
                    .and_then(|fix| parent_pid(fix as u32))
                    .filter(|&pid| is_commit_retry(pid));
                if k["status"] == "fixing" && std::fs::read_link(running(r, &k)).is_ok() {
                    if let Some(pid) = holder {
                        let sig = if intervention == Intervention::Kill {
                            libc::SIGKILL
                        } else {
                            libc::SIGSTOP
                        };
                        acted = unsafe { libc::kill(pid as libc::pid_t, sig) } == 0;
                        if acted && sig == libc::SIGSTOP {
                            stopped = Some(pid);
                            let pause =
                                p.stale_after + Duration::from_millis(500 + rng.below(1500));
                            resume_at = Some(Instant::now() + pause);
                        }
                    }
                }
            }
            if let Some(after) = repair_after {
                if !repaired_by_controller && broke.elapsed() >= after {
                    set_status(r, "ok\n");
                    repaired_by_controller = true;
                }
            }
            // Nobody hit it (or nobody is fixing it): the controller repairs it after a while.
            if broke.elapsed() > Duration::from_secs(10) && passing(r) && !build_ok(r) {
                set_status(r, "ok\n");
                repaired_by_controller = true;
            }
            if stopped.is_none() && build_ok(r) && passing(r) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        out.push(Breakage {
            n,
            start_ms,
            end_ms: now_ms(),
            intervention,
            acted,
            repaired_by_controller,
        });
    }
    out
}

fn stress(p: Params) {
    let began = Instant::now();
    let (r, trees) = setup(&p);
    let r = Arc::new(r);
    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (r, t, stop, reports) = (r.clone(), t.clone(), stop.clone(), reports.clone());
            std::thread::spawn(move || {
                let rep = agent(&r, &t, i, &stop);
                reports.lock().unwrap().push((i, rep));
            })
        })
        .collect();
    let mut rng = Rng::from_env(&format!("stress {} agents", p.agents));
    let breakages = controller(&r, &p, &mut rng);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("an agent failed");
    }
    let reports = reports.lock().unwrap();

    // What a failure shows: the witness log and buildlock's own history, side by side.
    let log = lines(&r.shared("w").join("log"));
    let history_text = lines(&r.buildlock_dir().join("history.jsonl")).join("\n");
    let evidence = format!("witness log:\n{}\nhistory:\n{history_text}", log.join("\n"));

    // 1. Never two fix runs at once.
    let overlaps: Vec<&String> = log.iter().filter(|l| l.starts_with("OVERLAP")).collect();
    assert!(
        overlaps.is_empty(),
        "two fix runs at once: {overlaps:?}\n{evidence}"
    );

    // 2. Every agent's last commit landed (and nothing after it).
    for (i, t) in trees.iter().enumerate() {
        assert_eq!(subject(&r, t), format!("s{i} final"));
    }

    // 3. No commit landed whose tree did not pass the check.
    let passed: HashSet<String> = lines(&r.shared("passes"))
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    let mut commits = 0;
    for (i, t) in trees.iter().enumerate() {
        let out = r.git_in(t, &["log", "--format=%H", "main..HEAD"]);
        for c in text(&out.stdout).lines() {
            commits += 1;
            let mut ls = r.cmd("sh", t);
            ls.arg("-c").arg(format!(
                "git ls-tree -r --format='%(objectmode) %(objectname) 0\t%(path)' {c} | git hash-object --stdin"
            ));
            let hash = text(&run_ok(ls).stdout).trim().to_owned();
            assert!(
                passed.contains(&hash),
                "s{i}: commit {c} landed with a tree that no passing check saw"
            );
        }
    }

    // 4. Elections = breakages.
    let history: Vec<serde_json::Value> =
        std::fs::read_to_string(r.buildlock_dir().join("history.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    let at = |e: &serde_json::Value| e["ms"].as_u64().unwrap_or(0);
    let of = |e: &serde_json::Value| {
        breakages
            .iter()
            .find(|b| (b.start_ms..=b.end_ms).contains(&at(e)))
    };
    let (mut hit, mut elections, mut takeovers, mut stopped_orphans) = (0, 0, 0, 0);
    for e in &history {
        let kind = e["event"].as_str().unwrap_or("");
        match kind {
            "elected" => assert!(of(e).is_some(), "an election outside any breakage: {e}"),
            "takeover" => {
                let b = of(e).unwrap_or_else(|| panic!("a takeover outside any breakage: {e}"));
                assert!(
                    b.acted,
                    "a takeover in breakage {} where no fixer was killed or stopped: {e}",
                    b.n
                );
            }
            "gave_up" => panic!("a fixer gave up: {e}"),
            _ => {}
        }
    }
    for b in &breakages {
        let in_b = |kind: &str| {
            history
                .iter()
                .filter(|e| e["event"] == kind && (b.start_ms..=b.end_ms).contains(&at(e)))
                .count()
        };
        let (failed, elected) = (in_b("failed"), in_b("elected"));
        assert_eq!(
            elected,
            usize::from(failed > 0),
            "breakage {b:?}: {failed} failures, {elected} elections"
        );
        // One fixer replaced at most, and only when the controller killed or stopped it.
        let replaced = in_b("takeover");
        assert!(
            replaced <= usize::from(b.acted),
            "breakage {b:?}: {replaced} takeovers\n{}",
            evidence
        );
        // Every fix run is the elected fixer's or its replacement's.
        let runs = log
            .iter()
            .filter(|l| l.starts_with("start "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .filter(|t| (b.start_ms..=b.end_ms).contains(t))
            .count();
        assert_eq!(
            runs,
            elected + replaced,
            "breakage {b:?}: {runs} fix runs for {elected} elections and {replaced} takeovers\n{}",
            evidence
        );
        hit += usize::from(failed > 0);
        elections += elected;
        takeovers += replaced;
    }
    stopped_orphans += log.iter().filter(|l| l.starts_with("stopped")).count();
    let stale_witness = log.iter().filter(|l| l.starts_with("stale")).count();
    if std::env::var_os("BUILDLOCK_STRESS_VERBOSE").is_some() {
        eprintln!("witness log:\n{}\nbreakages: {breakages:?}", log.join("\n"));
        for e in &history {
            eprintln!(
                "{} {} {} g{} {}",
                at(e),
                e["event"],
                e["agent"],
                e["generation"],
                e["reason"]
            );
        }
    }

    // 5. Nothing left running.
    let leftovers = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| {
                std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&r.root))
            })
            .map(|e| {
                std::fs::read_to_string(e.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ")
            })
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || leftovers().is_empty()),
        "processes left: {:?}",
        leftovers()
    );

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, rep) in reports.iter() {
        for (c, n) in &rep.codes {
            *codes.entry(c.clone()).or_default() += n;
        }
    }
    assert!(
        !codes.contains_key("101") && !codes.contains_key("70"),
        "a panic or a coordination failure: {codes:?}"
    );
    let kills = breakages
        .iter()
        .filter(|b| b.acted && b.intervention == Intervention::Kill)
        .count();
    let stops = breakages
        .iter()
        .filter(|b| b.acted && b.intervention == Intervention::Stop)
        .count();
    let repaired = breakages
        .iter()
        .filter(|b| b.repaired_by_controller)
        .count();
    eprintln!(
        "stress: {} agents, {:?}: {} breakages ({hit} hit, {repaired} repaired by the controller), \
         {elections} elections, {takeovers} takeovers after {kills} SIGKILLs and {stops} SIGSTOPs of a \
         fixer mid-fix; {} fix runs ({stopped_orphans} stopped by a successor, {stale_witness} \
         killed), no overlap; {commits} commits landed, every tree passed a check; commit-retry \
         exits {codes:?}",
        p.agents,
        began.elapsed(),
        breakages.len(),
        log.iter().filter(|l| l.starts_with("start")).count(),
    );
}

#[test]
fn stress_short() {
    stress(Params {
        agents: 8,
        faults_for: Duration::from_secs(15),
        stale_after: Duration::from_secs(1),
    });
}

#[test]
#[ignore = "the long stress, a few minutes: cargo test --test it stress_long -- --ignored --nocapture"]
fn stress_long() {
    let secs = std::env::var("BUILDLOCK_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    stress(Params {
        agents: 32,
        faults_for: Duration::from_secs(secs),
        stale_after: Duration::from_secs(2),
    });
}
