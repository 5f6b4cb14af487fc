#!/usr/bin/env python3
"""Paired A/B of two pre-commit binaries on the hook's hot path (a green commit).

    python3 bench/ab_hook.py OLD/pre-commit NEW/pre-commit [ROUNDS]

Two measures, each the median of per-round differences (NEW - OLD) of wall time, CPU (user +
system of the run and its children, from wait4's rusage) and minor page faults, the two binaries
run back to back in alternating order so that the machine's noise hits both alike:
  1. the hook alone, run by hand in a green repository (check = "true");
  2. a green `git commit --allow-empty` through each hook, in two identical repositories.
Run it twice with the same binary (A/A) to see the noise floor. Nothing here asserts a time.
"""

import os, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def main():
    old, new = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    tmp = Path(tempfile.mkdtemp(prefix="buildlock-ab-"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b", "NO_COLOR": "1", "LANG": "C"}
    repos = []
    for name, binary in (("old", old), ("new", new)):
        d = tmp / name
        d.mkdir()
        git = lambda *a: subprocess.run(["git", *a], cwd=d, env=env, check=True, capture_output=True)
        git("init", "-q", "-b", "main")
        (d / ".buildlock.toml").write_text('check = "true"\n')
        git("add", "-A")
        git("commit", "-q", "-m", "init", "--no-verify")
        (d / ".git/hooks/pre-commit").symlink_to(Path(binary).resolve())
        repos.append((binary, d))

    def timed(args, cwd):
        """Wall s, CPU s and minor page faults of one run (it and its children)."""
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{args} in {cwd} failed")
        return wall, ru.ru_utime + ru.ru_stime, ru.ru_minflt

    for label, args_of in (("hook alone", lambda b: [b]),
                           ("green commit", lambda b: ["git", "commit", "-q", "--allow-empty", "-m", "x"])):
        runs = ([], [])
        for i in range(rounds + 10):
            order = (0, 1) if i % 2 else (1, 0)
            got = {k: timed(args_of(repos[k][0]), repos[k][1]) for k in order}
            if i >= 10:
                runs[0].append(got[0])
                runs[1].append(got[1])
        for j, (what, unit, scale) in enumerate((("wall", "ms", 1000), ("CPU", "ms", 1000),
                                                  ("faults", "", 1))):
            o = [r[j] * scale for r in runs[0]]
            n = [r[j] * scale for r in runs[1]]
            diffs = [b - a for a, b in zip(o, n)]
            print(f"{label:12} {what:6}  old {statistics.median(o):8.2f}{unit:2}  new "
                  f"{statistics.median(n):8.2f}{unit:2}  median(new - old) "
                  f"{statistics.median(diffs):+8.2f}{unit:2}  (n={rounds})")
    print(f"load          {os.getloadavg()[0]:.1f}")
    print(f"size          old {os.path.getsize(old):,} B  new {os.path.getsize(new):,} B")


if __name__ == "__main__":
    main()
