//! What agents read of a failure and see of each other: a waiter is shown the failure's first
//! failing lines (at most 20) and where the log is, never the check's whole output again; the
//! fixer sees all of it. `buildlock agents` shows a waiting agent with its live process and a
//! fresh sign of life, a checking agent as `checking` (no check slots configured), and one agent
//! id active in two work trees at once.

use crate::harness::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// 200 lines, three of them `error:` lines; fails while `state.txt` says broken. With a file
/// `hang` in the work tree it first waits (up to 30 s) for `hang` to go.
const CHECK: &str = r#"i=1
[ -f hang ] && { touch hang.started; n=0; while [ -f hang ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; }
while [ $i -le 200 ]; do
  case $i in
    60|61|150) echo "error: part $i is broken" ;;
    *) echo "progress line $i" ;;
  esac
  i=$((i+1))
done
grep -q broken state.txt 2>/dev/null && exit 1
exit 0
"#;

fn repo(extra: &str) -> TestRepo {
    let r = TestRepo::new("");
    std::fs::write(r.dir.join("check.sh"), CHECK).unwrap();
    r.git(&["add", "check.sh"]);
    r.configure(&format!("check = \"sh check.sh\"\n{extra}"));
    r.commit_breakage();
    r
}

fn check_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("progress line") || l.contains("error: part"))
        .collect()
}

#[test]
fn a_waiter_is_shown_the_first_failing_lines_and_the_log_the_fixer_everything() {
    let r = repo("[hook]\nwait = false\n");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    let a = r.hook(&ta, "a").code(1);
    let a_err = text(&a.get_output().stderr);
    assert!(a_err.contains("you are the FIXER"), "{a_err}");
    // The fixer must fix it: the whole output.
    assert_eq!(check_lines(&a_err).len(), 200, "{a_err}");

    let b = r.hook(&tb, "b").code(75);
    let b_err = text(&b.get_output().stderr);
    assert!(b_err.contains("already fixing"), "{b_err}");
    let shown = check_lines(&b_err);
    assert!(shown.len() <= 20, "{} lines shown:\n{b_err}", shown.len());
    for n in [60, 61, 150] {
        assert!(
            b_err.contains(&format!("error: part {n} is broken")),
            "{b_err}"
        );
    }
    assert!(!b_err.contains("progress line 1\n"), "{b_err}");
    // Where the whole output is: the waiter's own failure log.
    let log = b_err
        .lines()
        .find_map(|l| l.split("your failure log: ").nth(1))
        .unwrap_or_else(|| panic!("no log path in:\n{b_err}"));
    let log_text = std::fs::read_to_string(log.trim()).unwrap();
    assert_eq!(check_lines(&log_text).len(), 200);
}

#[test]
fn a_waiter_under_commit_retry_is_not_shown_the_whole_output_either() {
    let r = repo("[coordination]\nwait = \"1s\"\n[retry]\nattempts = 1\n");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.hook(&ta, "a").code(1);
    r.stage_change(&tb, "fb");
    let out = wait_output(r.commit_retry(&tb, "b"), Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(check_lines(&err).len() <= 20, "{err}");
    assert!(err.contains("error: part 150 is broken"), "{err}");
}

/// Seconds since the epoch of an RFC 3339 UTC time as buildlock writes it.
fn epoch_secs(t: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn agent<'a>(a: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    a["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["agent"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {a:#}"))
}

fn agents_json(r: &TestRepo) -> serde_json::Value {
    serde_json::from_str(&stdout_of(
        &r.buildlock(&r.dir, "observer", &["agents", "--json"])
            .code(0),
    ))
    .unwrap()
}

#[test]
fn agents_shows_a_waiter_live_and_a_checking_agent_as_checking() {
    let r = repo("[coordination]\nwait = \"60s\"\n");
    let (ta, tb, tc) = (r.worktree("ta"), r.worktree("tb"), r.worktree("tc"));
    r.hook(&ta, "a").code(1);
    r.stage_change(&tb, "fb");
    let b = KillOnDrop(Some(
        r.git_commit(&tb, "b", "b work")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(eventually(Duration::from_secs(20), || r.state()["keys"][0]
        ["waiters"]
        == serde_json::json!(["b"])));
    // c's check runs (and hangs) until `hang` goes.
    std::fs::write(tc.join("hang"), "").unwrap();
    let c = KillOnDrop(Some(
        r.cmd(PRE_COMMIT, &tc)
            .env("BUILDLOCK_AGENT", "c")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(eventually(Duration::from_secs(20), || tc
        .join("hang.started")
        .exists()));
    // Long enough that a record of the wait's start is visibly old.
    std::thread::sleep(Duration::from_secs(4));

    let a = agents_json(&r);
    let wb = agent(&a, "b");
    assert_eq!(wb["state"], "waiting", "{a:#}");
    assert_eq!(wb["host"], hostname(), "{a:#}");
    let pid = wb["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {a:#}")) as u32;
    assert!(alive(pid), "{a:#}");
    let age = now_secs().saturating_sub(epoch_secs(wb["last_seen"].as_str().unwrap()));
    assert!(age <= 2, "b waits right now, last seen {age}s ago: {a:#}");
    assert_eq!(wb["branch"], "tb", "{a:#}");

    let wc = agent(&a, "c");
    assert_eq!(wc["state"], "checking", "{a:#}");
    let pid = wc["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {a:#}")) as u32;
    assert!(alive(pid), "{a:#}");
    assert_eq!(wc["host"], hostname(), "{a:#}");
    let age = now_secs().saturating_sub(epoch_secs(wc["last_seen"].as_str().unwrap()));
    assert!(age <= 2, "c checks right now, last seen {age}s ago: {a:#}");

    assert_eq!(agent(&a, "a")["state"], "fixing", "{a:#}");
    std::fs::remove_file(tc.join("hang")).unwrap();
    drop(c);
    drop(b);
}

#[test]
fn one_agent_id_in_two_work_trees_at_once_is_warned_and_shown() {
    let r = TestRepo::new("");
    r.configure("check = \"true\"\n");
    let (ta, tb) = (r.worktree("ta"), r.worktree("tb"));
    r.hook(&ta, "dup").code(0);
    let second = r.hook(&tb, "dup").code(0);
    let err = text(&second.get_output().stderr);
    assert!(
        err.contains("warning:") && err.contains(ta.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("BUILDLOCK_AGENT"), "{err}");
    let a = agents_json(&r);
    let dup = agent(&a, "dup");
    let also = dup["also_active_in"]
        .as_array()
        .unwrap_or_else(|| panic!("{a:#}"));
    assert!(
        also.iter().any(|w| w["worktree"].as_str() == ta.to_str()),
        "{a:#}"
    );
    assert_eq!(
        Path::new(dup["worktree"].as_str().unwrap()),
        tb.as_path(),
        "the latest work tree: {a:#}"
    );
    let table = stdout_of(&r.buildlock(&r.dir, "observer", &["agents"]).code(0));
    assert!(table.contains(ta.to_str().unwrap()), "{table}");
    // One work tree only: no warning.
    let again = r.hook(&tb, "dup").code(0);
    let _ = again;
    let solo = r.hook(&ta, "solo").code(0);
    assert!(
        !text(&solo.get_output().stderr).contains("warning:"),
        "{}",
        text(&solo.get_output().stderr)
    );
}
