#!/usr/bin/env python3
"""What claims cost with `backend = "remote"`, over a `git daemon` on loopback.

    python3 bench/claims_remote.py [BIN_DIR] [ROUNDS] [RACERS]

Two clones of a bare repository served by `git daemon` (agents on two machines). Measured, with
the settings of one round run in rotating order so that the machine's noise hits all alike:
  hook, guard off      the hook by hand (check = "true", one staged change): the baseline;
  hook, no registry    the guard on, no registry ref on the remote (nobody ever claimed): one
                       `ls-remote`;
  hook, a claim        another machine's exclusive claim the commit does not touch: one
                       `ls-remote` (the registry commit is already in the local object store);
  hook, changed        the same, just after another machine changed the registry: one
                       `ls-remote` and one fetch of the new registry commit;
  claim + unclaim      `buildlock claim p` then `buildlock unclaim --all`: two read-decide-push steps;
  signs of life        `buildlock claims` run 20 times by an agent that holds a claim: how many
                       pushes its renewals made (due at most every claims.ttl / 3);
and RACERS clones claiming one path at the same instant: grants, refusals, wall time, and the
registry commits pushed. Nothing here asserts a time.
"""

import os, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def main():
    bins = Path(sys.argv[1] if len(sys.argv) > 1 else "target/debug").resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    racers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    hook, buildlock = bins / "pre-commit", bins / "buildlock"
    tmp = Path(tempfile.mkdtemp(prefix="buildlock-claims-remote-"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b", "NO_COLOR": "1", "LANG": "C"}

    def git(cwd, *a):
        return subprocess.run(["git", *a], cwd=cwd, env=env, check=True, capture_output=True,
                              text=True).stdout

    git(tmp, "init", "-q", "--bare", "-b", "main", "srv.git")
    seed = tmp / "seed"
    git(tmp, "init", "-q", "-b", "main", "seed")
    (seed / ".buildlock.toml").write_text(
        'check = "true"\n[coordination]\nbackend = "remote"\nremote_poll = "200ms"\n')
    (seed / "a.txt").write_text("a\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "init")
    git(seed, "push", "-q", str(tmp / "srv.git"), "main")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    daemon = subprocess.Popen(["git", "daemon", "--enable=receive-pack", "--export-all",
                               "--reuseaddr", f"--base-path={tmp}", f"--port={port}",
                               "--listen=127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"git://127.0.0.1:{port}/srv.git"
        run(tmp, env, git, url, hook, buildlock, rounds, racers)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()


def run(tmp, env, git, url, hook, buildlock, rounds, racers):
    def clone(name):
        git(tmp, "clone", "-q", url, name)
        return tmp / name

    mine, theirs = clone("mine"), clone("theirs")
    (mine / "a.txt").write_text("changed\n")
    git(mine, "add", "a.txt")
    off = tmp / "off.toml"
    off.write_text("[claims]\nguard = false\n")

    def bl(dir, agent, *args, extra=None):
        e = dict(env, BUILDLOCK_AGENT=agent, **(extra or {}))
        return subprocess.run([str(buildlock), *args], cwd=dir, env=e, capture_output=True)

    def timed_hook(extra):
        e = dict(env, BUILDLOCK_AGENT="me", **extra)
        t = time.perf_counter()
        subprocess.run([str(hook)], cwd=mine, env=e, check=True, capture_output=True)
        return (time.perf_counter() - t) * 1000

    def registry_commits():
        refs = git(tmp / "srv.git", "for-each-ref", "--format=%(refname)", "refs/buildlock/claims")
        return sum(int(git(tmp / "srv.git", "rev-list", "--count", r)) for r in refs.split())

    def drop_registry():
        for r in git(tmp / "srv.git", "for-each-ref", "--format=%(refname)",
                     "refs/buildlock/claims").split():
            git(tmp / "srv.git", "update-ref", "-d", r)

    results = {k: [] for k in ["hook, guard off", "hook, no registry", "hook, a claim",
                               "hook, changed", "claim + unclaim"]}
    for i in range(rounds):
        order = list(results)
        order = order[i % len(order):] + order[:i % len(order)]
        for name in order:
            if name == "hook, guard off":
                results[name].append(timed_hook({"BUILDLOCK_CONFIG": str(off)}))
            elif name == "hook, no registry":
                drop_registry()
                results[name].append(timed_hook({}))
            elif name == "hook, a claim":
                bl(theirs, "other", "claim", "docs/")
                timed_hook({})  # fetches the changed registry once
                results[name].append(timed_hook({}))
                bl(theirs, "other", "unclaim", "--all")
            elif name == "hook, changed":
                # Another machine changed the registry since this clone last read it: one fetch.
                bl(theirs, "other", "claim", "docs/")
                results[name].append(timed_hook({}))
                bl(theirs, "other", "unclaim", "--all")
            else:
                t = time.perf_counter()
                assert bl(mine, "claimer", "claim", "p").returncode == 0
                assert bl(mine, "claimer", "unclaim", "--all").returncode == 0
                results[name].append((time.perf_counter() - t) * 1000)
    base = statistics.median(results["hook, guard off"])
    print(f"{rounds} rounds over git daemon on loopback ({url})")
    for name, ms in results.items():
        med = statistics.median(ms)
        extra = "" if name.startswith("claim") or name.endswith("off") else f"  (+{med - base:.1f} ms)"
        print(f"  {name:<22} median {med:7.1f} ms{extra}")

    assert bl(theirs, "holder", "claim", "docs/").returncode == 0
    before = registry_commits()
    for _ in range(20):
        bl(theirs, "holder", "claims")
    print(f"  signs of life          20 `buildlock claims` by a holder: {registry_commits() - before} push(es)")
    bl(theirs, "holder", "done")

    clones = [clone(f"r{i}") for i in range(racers)]
    before = registry_commits()
    t = time.perf_counter()
    procs = [subprocess.Popen([str(buildlock), "claim", "contested"], cwd=c,
                              env=dict(env, BUILDLOCK_AGENT=f"r{i}"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i, c in enumerate(clones)]
    codes = [p.wait() for p in procs]
    wall = (time.perf_counter() - t) * 1000
    print(f"  race of {racers} clones      granted {codes.count(0)}, refused {codes.count(75)}, "
          f"other {len(codes) - codes.count(0) - codes.count(75)}; {wall:.0f} ms wall; "
          f"{registry_commits() - before} registry commits pushed")


if __name__ == "__main__":
    main()
