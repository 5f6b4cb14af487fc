#!/usr/bin/env python3
"""What the claims guard costs the hook, paired, on one repository with many files.

    python3 bench/guard.py [PRE_COMMIT] [FILES] [ROUNDS]

The hook is run by hand (check = "true", one staged change) under three settings, in rotating
order so that the machine's noise hits all alike:
  off      `claims.guard = false`: the baseline;
  nobody   the guard on and nobody claims anything (the common case): one stat of the marker;
  claims   another agent holds an exclusive claim the commit does not touch: the registry is read
           and the index git commits is compared with HEAD (FILES tracked files).
It prints the medians and the medians of the per-round differences against `off`, and, with
strace, the file syscalls the guard adds when nobody claims. Nothing here asserts a time.
"""

import os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def main():
    hook = Path(sys.argv[1] if len(sys.argv) > 1 else "target/release/pre-commit").resolve()
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    buildlock = hook.with_name("buildlock")
    tmp = Path(tempfile.mkdtemp(prefix="buildlock-guard-"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b", "NO_COLOR": "1", "LANG": "C",
           "BUILDLOCK_AGENT": "me"}
    repo = tmp / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    for i in range(files):
        d = repo / "src" / f"m{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.py").write_text(f"{i}\n")
    (repo / ".buildlock.toml").write_text('check = "true"\n[claims]\nttl = "1h"\n')
    git("add", "-A")
    git("commit", "-q", "-m", "init", "--no-verify")
    (repo / "src/m1/f1.py").write_text("changed\n")
    git("add", "-A")
    off = tmp / "off.toml"
    off.write_text("[claims]\nguard = false\n")

    claim_env = dict(env, BUILDLOCK_AGENT="other")
    subprocess.run([str(buildlock), "claim", "docs/other/*"], cwd=repo, env=claim_env, check=True,
                   capture_output=True)
    registry_dir = repo / ".git/buildlock"
    saved = tmp / "saved"
    shutil.copytree(registry_dir, saved)

    def setting(name):
        # `nobody`: no claim at all (the marker and the registry gone); else the claim is back.
        shutil.rmtree(registry_dir, ignore_errors=True)
        if name != "nobody":
            shutil.copytree(saved, registry_dir)
        e = dict(env)
        if name == "off":
            e["BUILDLOCK_CONFIG"] = str(off)
        return e

    def timed(e):
        start = time.perf_counter()
        subprocess.run([str(hook)], cwd=repo, env=e, check=True, capture_output=True)
        return time.perf_counter() - start

    names = ["off", "nobody", "claims"]
    times = {n: [] for n in names}
    for i in range(rounds + 10):
        order = names[i % 3:] + names[:i % 3]
        for n in order:
            e = setting(n)
            t = timed(e)
            if i >= 10:
                times[n].append(t)
    for n in names:
        line = f"{n:7} median {statistics.median(times[n]) * 1000:7.2f} ms"
        if n != "off":
            diffs = [a - b for a, b in zip(times[n], times["off"])]
            line += f"   median({n} - off) {statistics.median(diffs) * 1000:+.3f} ms"
        print(line)
    print(f"({files} tracked files, {rounds} rounds, {hook})")
    if shutil.which("strace"):
        for n in ("off", "nobody"):
            e = setting(n)
            out = subprocess.run(["strace", "-f", "-e", "trace=%file", str(hook)], cwd=repo, env=e,
                                 capture_output=True, text=True).stderr
            ours = [l for l in out.splitlines() if "claimed" in l or "registry" in l or "/alive/" in l
                    or "index" in l]
            print(f"strace, {n}: {len(ours)} syscalls on the marker, registry, alive files or index:")
            for l in ours:
                print("   ", l.strip()[:120])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
