#!/usr/bin/env python3
"""Paired A/B of two pre-commit binaries on the hook's hot path (a green commit).

    python3 bench/ab_hook.py OLD/pre-commit NEW/pre-commit [ROUNDS]

Two measures, each the median of per-round differences (NEW - OLD), the two binaries run back to
back in alternating order so that the machine's noise hits both alike:
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
        start = time.perf_counter()
        subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    for label, args_of in (("hook alone", lambda b: [b]),
                           ("green commit", lambda b: ["git", "commit", "-q", "--allow-empty", "-m", "x"])):
        times = ([], [])
        for i in range(rounds + 10):
            order = (0, 1) if i % 2 else (1, 0)
            got = {k: timed(args_of(repos[k][0]), repos[k][1]) for k in order}
            if i >= 10:
                times[0].append(got[0])
                times[1].append(got[1])
        diffs = [n - o for o, n in zip(*times)]
        print(f"{label:12}  old {statistics.median(times[0]) * 1000:.2f} ms  new {statistics.median(times[1]) * 1000:.2f} ms"
              f"  median(new - old) {statistics.median(diffs) * 1000:+.2f} ms  (n={rounds})")
    print(f"size          old {os.path.getsize(old):,} B  new {os.path.getsize(new):,} B")


if __name__ == "__main__":
    main()
