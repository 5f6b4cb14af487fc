//! What killed runs leave behind, and what many generations leave behind: stray temp files (index
//! copies in git dirs, hand-over decision files in the temp dir) are reported by `doctor` and
//! swept by the next commit-retry that gets past a green commit, but only those of processes that
//! are gone (a live run's files are never touched, a reused pid does not keep a dead run's file);
//! fixer lock files stay few however many generations go by.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The pid of a process that has ended (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!alive(pid));
    pid
}

fn plant(path: &Path, age: Duration) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"planted").unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
    path.to_owned()
}

/// The private hand-over folder commit-retry uses under `tmp` (made 0700, as it makes it).
fn handover_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    // SAFETY: geteuid has no preconditions.
    let dir = tmp.join(format!("buildlock-{}", unsafe { libc::geteuid() }));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .unwrap();
    dir
}

fn doctor(r: &TestRepo, tmp: &Path) -> String {
    let out = r
        .cmd(BUILDLOCK, &r.dir)
        .env("TMPDIR", tmp)
        .arg("doctor")
        .output()
        .unwrap();
    text(&out.stdout)
}

/// SIGKILLed runs left index files in git dirs (the main one and a linked worktree's) and
/// decision files in the hand-over folder. `doctor` names each; the next commit-retry that goes
/// past a green commit removes them. Files of a live process stay; a file named after a pid that
/// now belongs to a process started after the file was written is a dead run's, and goes.
#[test]
fn stray_temp_files_of_dead_runs_are_reported_and_swept_and_a_live_runs_kept() {
    let r = shared_status_repo("0", "");
    let tb = r.worktree("tb");
    let tmp = r.root.join("tmp");
    let handover = handover_dir(&tmp);
    let git = r.dir.join(".git");
    let dead = dead_pid();
    let live = KillOnDrop(Some(Command::new("sleep").arg("120").spawn().unwrap()));
    let live_pid = live.id();
    let now = Duration::ZERO;
    let hour = Duration::from_secs(3600);
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();

    let strays = [
        plant(&git.join(format!("buildlock-fix-index-{dead}")), now),
        plant(&git.join(format!("buildlock-index-copy-{dead}")), now),
        plant(
            &git.join(format!("worktrees/tb/buildlock-index-copy-{dead}")),
            now,
        ),
        // The live pid's process started after this file was written: a reused pid.
        plant(&git.join(format!("buildlock-fix-index-{live_pid}")), hour),
        plant(&handover.join(format!("decision-{dead}-{ms}-0.json")), now),
        plant(
            &r.buildlock_dir()
                .join(format!("run/decision-{dead}-{ms}-3.json")),
            now,
        ),
    ];
    let kept = [
        plant(&git.join(format!("buildlock-index-copy-{live_pid}")), now),
        plant(
            &handover.join(format!("decision-{live_pid}-{ms}-0.json")),
            now,
        ),
        // Not ours: another tool's file of a similar name.
        plant(&git.join("buildlock-fix-index-notapid"), hour),
    ];

    let report = doctor(&r, &tmp);
    for s in &strays {
        assert!(
            report.contains(&s.display().to_string()),
            "doctor names {}:\n{report}",
            s.display()
        );
    }
    for k in &kept {
        assert!(
            !report.contains(&k.display().to_string()),
            "doctor leaves {} alone:\n{report}",
            k.display()
        );
    }
    assert!(report.contains("removes it"), "{report}");
    assert!(strays.iter().all(|s| s.exists()), "doctor changes nothing");

    // The next run: its first commit fails, it is elected, fixes and commits.
    r.stage_change(&tb, "fb");
    let out = r
        .commit_retry_cmd(&tb, "b")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for s in &strays {
        assert!(!s.exists(), "{} was swept", s.display());
    }
    for k in &kept {
        assert!(k.exists(), "{} was kept", k.display());
    }
    assert!(alive(live_pid));
    let report = doctor(&r, &tmp);
    assert!(!report.contains("stray"), "{report}");
}

/// Every fixer commits its fix while it holds its fixer lock, so that lock cannot go when its
/// generation ends. Many breakages (one key each: their failures differ) must still leave only a
/// few lock files: each new generation removes the free locks of generations that are over.
// regression: one `locks/*.fixer` file per generation, for ever (59 after 102 generations)
#[test]
fn fixer_locks_stay_few_over_many_generations() {
    let r = TestRepo::new("");
    let status = r.shared("status");
    r.configure(&format!(
        "check = \"cat {s}; grep -qx ok {s}\"\n[fix]\ncommand = \"echo ok > {s}\"\n",
        s = status.display()
    ));
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliett",
    ];
    let locks = r.buildlock_dir().join("locks");
    let fixer_locks = || {
        std::fs::read_dir(&locks)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".fixer"))
                    .count()
            })
            .unwrap_or(0)
    };
    for (i, word) in words.iter().enumerate() {
        std::fs::write(&status, format!("broken: {word} is missing\n")).unwrap();
        r.stage_change(&r.dir, &format!("f{i}"));
        let out = r.commit_retry_cmd(&r.dir, "a").output().unwrap();
        assert!(out.status.success(), "round {i}: {}", text(&out.stderr));
        assert!(
            fixer_locks() <= 2,
            "round {i}: {} fixer locks: {:?}",
            fixer_locks(),
            std::fs::read_dir(&locks)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(r.count_events("elected"), words.len());
}
