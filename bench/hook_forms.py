#!/usr/bin/env python3
"""What the hook file itself costs: a plain shell hook against each form install.sh writes.

    python3 bench/hook_forms.py [BIN_DIR] [REPS]     # BIN_DIR: release binaries (default target/release)

Green commits (`check = "true"`), interleaved round-robin so the machine's noise falls on every
variant alike, medians after 3 warm-up rounds:
  - plain shell hook:        `#!/bin/sh` + `exec sh -c 'true'` (the baseline, as in bench/run.py);
  - binary as a symlink:     .git/hooks/pre-commit -> the binary (what install.sh wrote before);
  - installed hook:          what install.sh writes now: a small file whose `#!` line is the binary;
  - installed hook, sh form: what it writes where a `#!` line cannot hold the path (a space in it);
  - committed-folder shim:   core.hooksPath = .githooks, the committed shim, buildlock installed;
  - shim without buildlock:  a teammate's clone: the shim runs the team's hook (`sh -c 'true'`).
Nothing here asserts a time: benchmarks are not tests.
"""

import os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def env(tmp):
    return {
        "PATH": os.environ["PATH"], "HOME": str(tmp / "home"), "XDG_CONFIG_HOME": str(tmp / "config"),
        "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C", "NO_COLOR": "1",
        "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
    }


def run(args, cwd, tmp):
    subprocess.run(args, cwd=cwd, env=env(tmp), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def repo(tmp, name, config="", hooks_path=False):
    d = tmp / name
    d.mkdir()
    run(["git", "init", "-q", "-b", "main"], d, tmp)
    (d / ".buildlock.toml").write_text(config)
    (d / "README").write_text("x\n")
    if hooks_path:
        (d / ".githooks").mkdir()
        team = d / ".githooks/pre-commit"
        team.write_text("#!/bin/sh\nexec sh -c 'true'\n")
        team.chmod(0o755)
        run(["git", "config", "core.hooksPath", ".githooks"], d, tmp)
    run(["git", "add", "-A"], d, tmp)
    run(["git", "commit", "-q", "-m", "init", "--no-verify"], d, tmp)
    return d


def install(d, tmp):
    run(["sh", str(ROOT / "install.sh"), "--bin-dir", str(BIN), str(d)], d, tmp)
    (d / ".buildlock.toml").write_text('check = "true"\n')


def main():
    tmp = Path(tempfile.mkdtemp(prefix="hook-forms-"))
    (tmp / "home").mkdir()
    variants = {}
    plain = repo(tmp, "plain")
    h = plain / ".git/hooks/pre-commit"
    h.write_text("#!/bin/sh\nexec sh -c 'true'\n")
    h.chmod(0o755)
    variants["plain shell hook"] = plain
    link = repo(tmp, "symlink", 'check = "true"\n')
    (link / ".git/hooks/pre-commit").symlink_to(BIN / "pre-commit")
    variants["binary as a symlink"] = link
    script = repo(tmp, "script")
    install(script, tmp)
    assert (script / ".git/hooks/pre-commit").read_text().startswith(f"#!{script}")
    variants["installed hook"] = script
    spaced = repo(tmp, "sh form")
    install(spaced, tmp)
    assert (spaced / ".git/hooks/pre-commit").read_text().startswith("#!/bin/sh")
    variants["installed hook, sh form"] = spaced
    shim = repo(tmp, "shim", hooks_path=True)
    install(shim, tmp)
    variants["committed-folder shim"] = shim
    mate = repo(tmp, "teammate", hooks_path=True)  # a clone that got the committed folder, no buildlock
    hooks = mate / ".githooks"
    (hooks / "pre-commit").rename(hooks / "pre-commit.chained")
    (hooks / "pre-commit").write_bytes((ROOT / "hooks/pre-commit").read_bytes())
    (hooks / "pre-commit").chmod(0o755)
    variants["shim without buildlock"] = mate

    times = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for i in range(REPS + 3):
        for name, d in variants.items():
            (d / "change.txt").write_text(f"{i}\n")
            run(["git", "add", "change.txt"], d, tmp)
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            run(["git", "commit", "-q", "-m", f"c{i}"], d, tmp)
            t1 = time.perf_counter()
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= 3:
                times[name].append(t1 - t0)
                # CPU of the commit's whole process tree (every process in it is waited for):
                # less disturbed than wall time when others share the machine.
                cpu[name].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    base = statistics.median(times["plain shell hook"])
    cbase = statistics.median(cpu["plain shell hook"])
    print(f"{REPS} green commits per variant, interleaved; binaries: {BIN}")
    print("| hook | wall median | vs plain | CPU median | vs plain |")
    print("|---|---|---|---|---|")
    for name in variants:
        m, c = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"| {name} | {m * 1000:.2f} ms | {m / base:.2f}x | {c * 1000:.2f} ms | {c / cbase:.2f}x |")


if __name__ == "__main__":
    main()
