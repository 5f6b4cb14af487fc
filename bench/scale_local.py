#!/usr/bin/env python3
"""How the local backend scales with what is on record: the rows of the performance issue that
are about the local store, each as a ratio against a baseline measured in the same run,
interleaved with it (the machine is shared and noisy: medians of pairs, with the load).

    python3 bench/scale_local.py                 # debug binaries of $CARGO_TARGET_DIR (or target/)
    python3 bench/scale_local.py --profile release
    python3 bench/scale_local.py --n 300 --reps 5 --only roles   # smaller, one row

Rows (each builds its repositories with the real binaries, one real hook run per breakage):
  abandoned  a new breakage (`scope = "commit"`: a failing hook run by hand on a HEAD never seen)
             after N abandoned breakages (fixers by hand that went silent, every tenth released)
             vs. a fresh repository; and the files in state/ afterwards;
  green      a green hook run (`scope = "repo"`, `match = "signature"`) with N open breakages on
             record, each left fixing by its own agent that went silent, vs. a repository with none;
  roles      one agent's failing hook (a new signature each time, so it is elected fixer of each)
             after it failed ROLES times vs. after 10 times; the files in leases/ and state/;
  waiters    W waiters (hooks by hand waiting in the hook, off a terminal) vs. 48: each waiter's
             CPU over a window of WINDOW seconds while the fixer works (every thread's schedstat),
             the ratio per waiter; then the fix, and each waiter's check run again after it (the
             check writes the time it starts): the slowest, from the start of the fixer's
             passing hook run (so it includes that run, a few ms).

Silent fixers: the repositories use `stale_after = "1s"` and the script waits past it before
measuring (`abandoned`: after a sync and 5.5 s, past ext4's recently-freed window; see
settle_fs). Importable: `measure(args)` returns the rows as a dict; nothing here asserts a time.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def binaries(profile: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return (target if target.is_absolute() else ROOT / target) / profile


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# On ext4 without a journal (this machine's disk), the inode allocator skips inodes freed in the
# last 5 s once written back (30 s before), scanning past them one by one: right after a burst of
# thousands of files made and removed, every file created costs that scan, whatever creates it.
# A setup that packs hours of use into seconds waits this long after a sync before measuring, so
# that what is measured is the state it built, not the burst of building it.
FS_SETTLE_S = 5.5


def settle_fs():
    os.sync()
    time.sleep(FS_SETTLE_S)


class Lab:
    """Temporary repositories and a cleared environment for the real binaries."""

    def __init__(self, tmp: Path, bins: Path):
        self.tmp, self.bins = tmp, bins
        (tmp / "home").mkdir(exist_ok=True)

    def env(self, **extra):
        e = {
            "PATH": os.environ["PATH"], "HOME": str(self.tmp / "home"),
            "XDG_CONFIG_HOME": str(self.tmp / "config"), "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C", "NO_COLOR": "1",
            "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
            "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
        }
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def run(self, args, cwd, ok=(0,), **extra):
        r = subprocess.run([str(a) for a in args], cwd=cwd, env=self.env(**extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if ok is not None and r.returncode not in ok:
            raise RuntimeError(f"{args} in {cwd} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace')[-1200:]}")
        return r

    def timed(self, args, cwd, ok=(0,), **extra):
        """(wall ms, CPU ms of the child) of one run."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        self.run(args, cwd, ok, **extra)
        wall = (time.perf_counter() - t0) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
        return wall, cpu

    def repo(self, name: str, config: str) -> Path:
        repo = self.tmp / name
        repo.mkdir(parents=True)
        self.run(["git", "init", "-q", "-b", "main"], repo)
        (repo / ".buildlock.toml").write_text(config)
        self.run(["git", "add", "-A"], repo)
        self.run(["git", "commit", "-q", "-m", "init", "--no-verify"], repo)
        return repo

    def hook(self, repo: Path, agent: str, fail: str = "", ok=(0,)):
        extra = {"BUILDLOCK_AGENT": agent}
        if fail:
            extra["BENCH_FAIL"] = fail
        return self.timed([self.bins / "pre-commit"], repo, ok=ok, **extra)


# A check that fails with a message of the caller's choosing (BENCH_FAIL), so that each breakage
# can have a signature of its own; the words are letters (normalisation keeps them).
CHECK = 'test -z "$BENCH_FAIL" || { echo "error: the build broke: $BENCH_FAIL"; exit 1; }'


def word(i: int) -> str:
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("a") + r) + letters
    return "w" + letters


def config(scope: str, match: str, stale_after: str) -> str:
    return (f"check = {json.dumps(CHECK)}\n[coordination]\nscope = \"{scope}\"\nmatch = \"{match}\"\n"
            f"stale_after = \"{stale_after}\"\nwait = \"0s\"\n[hook]\nwait = false\n")


def commits(lab: Lab, repo: Path, n: int) -> list:
    """`n` new commits on top of HEAD (one fast-import), oldest first, without touching HEAD."""
    stream = []
    for i in range(n):
        msg = f"c{i}\n".encode()
        stream.append(b"commit refs/bench/commits\n")
        stream.append(f"committer b <b@b> {1_700_000_000 + i} +0000\n".encode())
        stream.append(f"data {len(msg)}\n".encode() + msg)
        if i == 0:
            stream.append(b"from HEAD^0\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, input=b"".join(stream),
                   env=lab.env(), check=True)
    out = subprocess.run(["git", "rev-list", "--reverse", "refs/bench/commits"], cwd=repo,
                         env=lab.env(), check=True, capture_output=True, text=True).stdout.split()
    return out[-n:]


def detach(repo: Path, oid: str):
    (repo / ".git" / "HEAD").write_text(oid + "\n")


def count(repo: Path, sub: str) -> int:
    d = repo / ".git" / "buildlock" / sub
    return sum(1 for _ in d.iterdir()) if d.is_dir() else 0


def ratio_of(pairs):
    """Median of the per-pair ratios, and the medians of each side."""
    ratios = [b / a for a, b in pairs]
    return {"ratio": statistics.median(ratios), "base_ms": statistics.median(a for a, _ in pairs),
            "loaded_ms": statistics.median(b for _, b in pairs),
            "ratio_p25_p75": (sorted(ratios)[len(ratios) // 4], sorted(ratios)[(3 * len(ratios)) // 4])}


def interleave(reps, base, loaded):
    """`reps` pairs of (wall, cpu), alternating which side goes first."""
    wall, cpu = [], []
    for r in range(reps):
        if r % 2:
            lw, lc = loaded(r)
            bw, bc = base(r)
        else:
            bw, bc = base(r)
            lw, lc = loaded(r)
        wall.append((bw, lw))
        cpu.append((bc, lc))
    return {"wall": ratio_of(wall), "cpu": ratio_of(cpu)}


def row_abandoned(lab: Lab, n: int, reps: int) -> dict:
    cfg = config("commit", "any", "1s")
    fresh, loaded = lab.repo("abandoned-0", cfg), lab.repo(f"abandoned-{n}", cfg)
    spare = {fresh: commits(lab, fresh, reps + 1), loaded: commits(lab, loaded, n + reps + 1)}
    t0 = time.time()
    for i, oid in enumerate(spare[loaded][:n]):
        detach(loaded, oid)
        lab.hook(loaded, f"a{i}", fail="abandoned", ok=(1,))
        if i % 10 == 9:
            lab.run([lab.bins / "buildlock", "release"], loaded, BUILDLOCK_AGENT=f"a{i}")
        if i % 250 == 249:
            log(f"  abandoned: {i + 1} of {n} ({time.time() - t0:.0f}s)")
    settle_fs()  # and every fixer on record is silent now (stale_after = 1s)

    def breakage(repo, r, which):
        oid = spare[repo][n + r if which else r]
        detach(repo, oid)
        return lab.hook(repo, f"m{which}{r}", fail="new", ok=(1,))

    res = interleave(reps, lambda r: breakage(fresh, r, 0), lambda r: breakage(loaded, r, 1))
    res["state_files"] = count(loaded, "state")
    res["locks_files"] = count(loaded, "locks")
    res["leases_files"] = count(loaded, "leases")
    return res


def row_green(lab: Lab, n: int, reps: int) -> dict:
    cfg = config("repo", "signature", "1s")
    none, loaded = lab.repo("green-0", cfg), lab.repo(f"green-{n}", cfg)
    t0 = time.time()
    for i in range(n):
        lab.hook(loaded, f"f{i}", fail=word(i), ok=(1,))
        if i % 250 == 249:
            log(f"  green: {i + 1} of {n} ({time.time() - t0:.0f}s)")
    time.sleep(1.5)
    lab.hook(none, "g")
    lab.hook(loaded, "g")  # the first green run after the crowd (it may pay what is due once)
    res = interleave(reps, lambda r: lab.hook(none, "g"), lambda r: lab.hook(loaded, "g"))
    state = loaded / ".git" / "buildlock" / "state" / "repo.json"
    res["keys_on_record"] = len(json.loads(state.read_text())["keys"]) if state.exists() else 0
    res["state_bytes"] = state.stat().st_size if state.exists() else 0
    return res


def row_roles(lab: Lab, n: int, reps: int) -> dict:
    cfg = config("repo", "signature", "15m")
    ten, many = lab.repo("roles-10", cfg), lab.repo(f"roles-{n}", cfg)
    for i in range(10):
        lab.hook(ten, "me", fail=word(i), ok=(1,))
    t0 = time.time()
    for i in range(n):
        lab.hook(many, "me", fail=word(i), ok=(1,))
        if i % 250 == 249:
            log(f"  roles: {i + 1} of {n} ({time.time() - t0:.0f}s)")
    res = interleave(reps, lambda r: lab.hook(ten, "me", fail=word(100_000 + r), ok=(1,)),
                     lambda r: lab.hook(many, "me", fail=word(200_000 + r), ok=(1,)))
    res["leases_files"] = count(many, "leases")
    res["state_files"] = count(many, "state")
    res["locks_files"] = count(many, "locks")
    state = many / ".git" / "buildlock" / "state" / "repo.json"
    keys = json.loads(state.read_text())["keys"] if state.exists() else []
    res["roles_held"] = sum(1 for k in keys if k["status"] == "fixing")
    res["keys_on_record"] = len(keys)
    return res


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (0 when it is gone)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def waiters_trial(lab: Lab, n: int, window: float, trial: int) -> dict:
    fixed = lab.tmp / f"fixed-{n}-{trial}"
    times = lab.tmp / f"times-{n}-{trial}"
    check = (f'if [ -f {fixed} ]; then [ -z "$BENCH_TIMES" ] || date +%s%N >> "$BENCH_TIMES"; '
             f'exit 0; fi; echo "error: the build broke"; exit 1')
    cfg = (f"check = {json.dumps(check)}\n[coordination]\nstale_after = \"15m\"\nwait = \"10m\"\n"
           f"[hook]\nwait = true\n")
    repo = lab.repo(f"waiters-{n}-{trial}", cfg)
    lab.hook(repo, "fx", ok=(1,))
    procs = [subprocess.Popen([str(lab.bins / "pre-commit")], cwd=repo, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=lab.env(BUILDLOCK_AGENT=f"w{i}", BENCH_TIMES=times))
             for i in range(n)]
    state = repo / ".git" / "buildlock" / "state" / "repo.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            keys = json.loads(state.read_text())["keys"]
            if len(keys[0].get("waiters", [])) >= n:
                break
        except (OSError, ValueError, IndexError, KeyError):
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError(f"{n} waiters never all waited")
    time.sleep(1.0)
    before = sum(cpu_ns(p.pid) for p in procs)
    time.sleep(window)
    after = sum(cpu_ns(p.pid) for p in procs)
    fixed.write_text("")
    t0 = time.time_ns()
    lab.hook(repo, "fx")
    for p in procs:
        p.wait(timeout=600)
    starts = [int(x) for x in times.read_text().split()] if times.exists() else []
    late = sorted((t - t0) / 1e6 for t in starts)
    return {"cpu_ms_per_waiter": (after - before) / 1e6 / n, "reran": len(late),
            "slowest_ms": late[-1] if late else float("nan"),
            "median_ms": late[len(late) // 2] if late else float("nan")}


def row_waiters(lab: Lab, n: int, reps: int, window: float = 20.0) -> dict:
    """48 vs `n` waiters, alternating, `reps` trials each (each trial is its own repository)."""
    small, large = [], []
    for t in range(reps):
        order = [(48, small), (n, large)] if t % 2 == 0 else [(n, large), (48, small)]
        for size, into in order:
            into.append(waiters_trial(lab, size, window, t))
            log(f"  waiters: {size}: {into[-1]}")
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    return {"cpu_ms_per_waiter_48": med(small, "cpu_ms_per_waiter"),
            f"cpu_ms_per_waiter_{n}": med(large, "cpu_ms_per_waiter"),
            "cpu_ratio": med(large, "cpu_ms_per_waiter") / max(1e-9, med(small, "cpu_ms_per_waiter")),
            "slowest_rerun_ms_48": med(small, "slowest_ms"),
            f"slowest_rerun_ms_{n}": med(large, "slowest_ms"),
            "trials": {"48": small, str(n): large}, "window_s": window}


ROWS = {"abandoned": row_abandoned, "green": row_green, "roles": row_roles, "waiters": row_waiters}


def measure(args) -> dict:
    # bench/run.py passes the binaries as install.sh installed them.
    bins = Path(getattr(args, "bins", None) or binaries(args.profile))
    for b in ("pre-commit", "buildlock"):
        if not (bins / b).exists():
            raise SystemExit(f"{bins / b} is missing: build it first (cargo build"
                             f"{' --release' if args.profile == 'release' else ''})")
    out = {"profile": args.profile, "n": args.n, "roles": args.roles, "reps": args.reps,
           "load_before": open("/proc/loadavg").read().split()[:3], "rows": {}}
    with tempfile.TemporaryDirectory(prefix="buildlock-scale-", dir=args.tmp) as tmp:
        lab = Lab(Path(tmp), bins)
        for name in args.only.split(","):
            log(f"{name} ...")
            if name == "waiters":
                out["rows"][name] = row_waiters(lab, args.waiters, args.waiter_reps, args.window)
            else:
                size = args.roles if name == "roles" else args.n
                out["rows"][name] = ROWS[name](lab, size, args.reps)
            out["rows"][name]["load"] = open("/proc/loadavg").read().split()[:3]
    return out


def render(res) -> str:
    lines = [f"profile {res['profile']}, N = {res['n']}, roles = {res['roles']}, "
             f"{res['reps']} interleaved pairs; load before {' '.join(res['load_before'])}"]
    for name, row in res["rows"].items():
        if "wall" not in row:
            shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items() if k != "trials"}
            lines.append(f"{name:9} {shown}")
            continue
        w, c = row["wall"], row["cpu"]
        extra = {k: v for k, v in row.items() if k not in ("wall", "cpu")}
        lines.append(f"{name:9} wall {w['base_ms']:7.1f} -> {w['loaded_ms']:7.1f} ms: {w['ratio']:.2f}x "
                     f"(p25-p75 {w['ratio_p25_p75'][0]:.2f}-{w['ratio_p25_p75'][1]:.2f}); "
                     f"cpu {c['base_ms']:.1f} -> {c['loaded_ms']:.1f} ms: {c['ratio']:.2f}x; {extra}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="debug")
    p.add_argument("--n", type=int, default=1500, help="breakages on record (abandoned, green)")
    p.add_argument("--roles", type=int, default=1000, help="roles of one agent")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--waiters", type=int, default=384, help="waiters, against 48")
    p.add_argument("--waiter-reps", type=int, default=2, help="trials of 48 and of WAITERS waiters")
    p.add_argument("--window", type=float, default=20.0, help="seconds of waiting measured")
    p.add_argument("--only", default="abandoned,green,roles,waiters")
    p.add_argument("--tmp", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = measure(args)
    print(json.dumps(res, indent=1) if args.json else render(res))


if __name__ == "__main__":
    main()
