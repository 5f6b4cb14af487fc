#!/usr/bin/env python3
"""buildlock's benchmarks: one command, one run, medians over many repetitions.

    python3 bench/run.py            # prints the results
    python3 bench/run.py --write    # ... and writes docs/BENCHMARKS.md

Measures, on this machine, in one run:
  1. a green commit: `git commit` with no hook, with a plain shell hook running the same check,
     with buildlock's hook, and (where they install) through lefthook and the pre-commit framework;
  2. election: from N simultaneous failures to every agent knowing its role (N = 8 .. 64);
  3. wake-up: from the fix being marked to the last waiter resuming, and the CPU the waiters used
     while waiting;
  4. takeover: from a SIGKILLed fixer to its successor's fix starting.
Nothing here asserts a time: benchmarks are not tests.
"""

import json, os, platform, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
GREEN_REPS = int(os.environ.get("BENCH_GREEN_REPS", "60"))
REPS = int(os.environ.get("BENCH_REPS", "5"))


def env(tmp: Path, **extra):
    e = {
        "PATH": os.environ["PATH"], "HOME": str(tmp / "home"), "XDG_CONFIG_HOME": str(tmp / "config"),
        "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C", "NO_COLOR": "1",
        "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
    }
    e.update(extra)
    return e


def run(args, cwd, tmp, check=True, **kw):
    r = subprocess.run(args, cwd=cwd, env=env(tmp, **kw.pop("extra", {})), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args} in {cwd} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
    return r


def new_repo(tmp: Path, name: str, config: str = "", hook: bool = False) -> Path:
    repo = tmp / name
    repo.mkdir(parents=True)
    (tmp / "home").mkdir(exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], repo, tmp)
    (repo / ".buildlock.toml").write_text(config)
    (repo / "README").write_text("x\n")
    run(["git", "add", "-A"], repo, tmp)
    run(["git", "commit", "-q", "-m", "init", "--no-verify"], repo, tmp)
    if hook:
        (repo / ".git/hooks/pre-commit").symlink_to(REL / "pre-commit")
    return repo


def median_ms(xs):
    return statistics.median(xs) * 1000


# 1. Green commits ----------------------------------------------------------------------------

CHECK = "true"


def setup_green(tmp: Path):
    variants = {}
    variants["no hook"] = new_repo(tmp, "nohook")
    plain = new_repo(tmp, "plain")
    hook = plain / ".git/hooks/pre-commit"
    hook.write_text(f"#!/bin/sh\nexec sh -c '{CHECK}'\n")
    hook.chmod(0o755)
    variants["plain shell hook"] = plain
    bl = new_repo(tmp, "buildlock", f'check = "{CHECK}"\n')
    (bl / ".git/hooks/pre-commit").symlink_to(REL / "pre-commit")
    variants["buildlock hook"] = bl
    notes = []
    # lefthook, from its npm package (which ships the binary).
    lh_dir = tmp / "lefthook-npm"
    lh_dir.mkdir()
    try:
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "lefthook"], cwd=lh_dir,
                       check=True, capture_output=True, timeout=180)
        lefthook = next(p for p in (lh_dir / "node_modules").rglob("lefthook") if p.is_file() and os.access(p, os.X_OK)
                        and "bin" in p.parts)
        lh = new_repo(tmp, "lefthook")
        (lh / "lefthook.yml").write_text(f"pre-commit:\n  commands:\n    check:\n      run: '{CHECK}'\n")
        run([str(lefthook), "install"], lh, tmp)
        variants["lefthook"] = lh
        notes.append(f"lefthook: {run([str(lefthook), 'version'], lh, tmp).stdout.decode().strip()} (npm)")
    except Exception as e:  # noqa: BLE001 - a benchmark reports what it could not measure
        notes.append(f"lefthook: not measured ({type(e).__name__})")
    # The pre-commit framework, from PyPI, in its own virtualenv.
    try:
        venv = tmp / "pc-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "pre-commit"], check=True, capture_output=True, timeout=300)
        pc = new_repo(tmp, "precommit")
        (pc / ".pre-commit-config.yaml").write_text(
            "repos:\n- repo: local\n  hooks:\n  - id: check\n    name: check\n    entry: '" + CHECK +
            "'\n    language: system\n    always_run: true\n    pass_filenames: false\n")
        run(["git", "add", "-A"], pc, tmp)
        run(["git", "commit", "-q", "-m", "cfg", "--no-verify"], pc, tmp)
        run([str(venv / "bin/pre-commit"), "install"], pc, tmp, extra={"PATH": f"{venv}/bin:" + os.environ["PATH"]})
        variants["pre-commit framework"] = pc
        v = run([str(venv / "bin/pre-commit"), "--version"], pc, tmp).stdout.decode().strip()
        notes.append(f"pre-commit framework: {v} (PyPI)")
    except Exception as e:  # noqa: BLE001
        notes.append(f"pre-commit framework: not measured ({type(e).__name__})")
    return variants, notes


def bench_green(tmp: Path):
    variants, notes = setup_green(tmp)
    times = {k: [] for k in variants}
    path = os.environ["PATH"]
    venv_path = f"{tmp / 'pc-venv/bin'}:{path}"
    for i in range(GREEN_REPS + 3):
        for name, repo in variants.items():  # round-robin spreads the machine's noise evenly
            extra = {"PATH": venv_path} if name == "pre-commit framework" else {}
            # A real staged change: some tools skip their checks when nothing is staged.
            (repo / "change.txt").write_text(f"{i}\n")
            run(["git", "add", "change.txt"], repo, tmp)
            t = time.perf_counter()
            run(["git", "commit", "-q", "-m", f"c{i}"], repo, tmp, extra=extra)
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t)
    return {k: median_ms(v) for k, v in times.items()}, notes


# 2. Election ---------------------------------------------------------------------------------

def bench_election(tmp: Path, n: int):
    go = tmp / f"go{n}"
    status = tmp / f"status{n}"
    status.write_text("broken\n")
    repo = new_repo(tmp, f"elect{n}",
                    f'check = "while [ ! -e {go} ]; do sleep 0.002; done; grep -qx ok {status}"\n[hook]\nwait = false\n')
    trees = []
    for i in range(n):
        t = tmp / f"elect{n}-a{i}"
        run(["git", "worktree", "add", "-q", "-b", f"a{i}", str(t)], repo, tmp)
        trees.append(t)
    samples = []
    for _ in range(REPS):
        if go.exists():
            go.unlink()
        procs = [subprocess.Popen([str(REL / "pre-commit")], cwd=t, env=env(tmp, BUILDLOCK_AGENT=f"a{i}"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, t in enumerate(trees)]
        time.sleep(0.3 + 0.01 * n)
        t0 = time.perf_counter()
        go.write_text("")
        codes = [p.wait() for p in procs]
        samples.append(time.perf_counter() - t0)
        assert sorted(codes).count(1) == 1 and codes.count(75) == n - 1, codes
        run([str(REL / "buildlock"), "reset"], repo, tmp)
    return median_ms(samples)


# 3. Wake-up and CPU while waiting -------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_wakeup(tmp: Path, waiters: int = 16):
    status = tmp / "wstatus"
    runs = tmp / "wruns"
    repo = new_repo(tmp, "wake",
                    f'check = "echo $BUILDLOCK_AGENT $(date +%s%N) >> {runs}; grep -qx ok {status}"\n'
                    '[coordination]\nwait = "2m"\n', hook=True)
    trees = []
    for i in range(waiters):
        t = tmp / f"wake-a{i}"
        run(["git", "worktree", "add", "-q", "-b", f"w{i}", str(t)], repo, tmp)
        trees.append(t)
    delays, cpu = [], []
    for rep in range(REPS):
        status.write_text("broken\n")
        runs.write_text("")
        run([str(REL / "pre-commit")], repo, tmp, check=False, extra={"BUILDLOCK_AGENT": "fixer"})
        procs = []
        for i, t in enumerate(trees):
            (t / f"f{rep}").write_text("x")
            run(["git", "add", "-A"], t, tmp)
            procs.append(subprocess.Popen([str(REL / "commit-retry"), "-q", "-m", f"w{i} {rep}"], cwd=t,
                                          env=env(tmp, BUILDLOCK_AGENT=f"w{i}"),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while time.time() < deadline:
            st = json.loads(run([str(REL / "buildlock"), "status", "--json"], repo, tmp).stdout)
            if st["keys"] and len(st["keys"][0]["waiters"]) == waiters:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        before = [cpu_seconds(p.pid) for p in procs]
        window = 3.0
        time.sleep(window)
        after = [cpu_seconds(p.pid) for p in procs]
        cpu.append(sum(a - b for a, b in zip(after, before)) / waiters / window)
        status.write_text("ok\n")
        run([str(REL / "pre-commit")], repo, tmp, extra={"BUILDLOCK_AGENT": "fixer"})
        hist = [json.loads(l) for l in (repo / ".git/buildlock/history.jsonl").read_text().splitlines()]
        fixed_ns = [h["ms"] for h in hist if h["event"] == "fixed"][-1] * 1_000_000
        for p in procs:
            assert p.wait(timeout=60) == 0
        resumed = {}
        for line in runs.read_text().splitlines():
            agent, ns = line.split()
            if agent.startswith("w") and int(ns) > fixed_ns and agent not in resumed:
                resumed[agent] = int(ns)
        assert len(resumed) == waiters, resumed
        delays.append((max(resumed.values()) - fixed_ns) / 1e9)
    return median_ms(delays), statistics.median(cpu) * 100


# 4. Takeover ---------------------------------------------------------------------------------

def bench_takeover(tmp: Path):
    status = tmp / "tstatus"
    witness = tmp / "twitness"
    fix = tmp / "tfix.sh"
    fix.write_text(f'echo "$BUILDLOCK_AGENT $(date +%s%N)" >> {witness}\n'
                   f'if [ "$BUILDLOCK_AGENT" = a ]; then sleep 60; fi\necho ok > {status}\n')
    repo = new_repo(tmp, "take", f'check = "grep -qx ok {status}"\n[fix]\ncommand = "sh {fix}"\n', hook=True)
    ta, tb = tmp / "take-a", tmp / "take-b"
    run(["git", "worktree", "add", "-q", "-b", "ta", str(ta)], repo, tmp)
    run(["git", "worktree", "add", "-q", "-b", "tb", str(tb)], repo, tmp)
    samples = []
    for rep in range(REPS):
        status.write_text("broken\n")
        witness.write_text("")
        for t in (ta, tb):
            (t / f"f{rep}").write_text("x")
            run(["git", "add", "-A"], t, tmp)
        a = subprocess.Popen([str(REL / "commit-retry"), "-q", "-m", "a"], cwd=ta, env=env(tmp, BUILDLOCK_AGENT="a"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while "a " not in witness.read_text():
            time.sleep(0.01)
        b = subprocess.Popen([str(REL / "commit-retry"), "-q", "-m", "b"], cwd=tb, env=env(tmp, BUILDLOCK_AGENT="b"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            st = json.loads(run([str(REL / "buildlock"), "status", "--json"], repo, tmp).stdout)
            if st["keys"][0]["waiters"] == ["b"]:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        t0 = time.time_ns()
        a.send_signal(signal.SIGKILL)
        a.wait()
        assert b.wait(timeout=60) == 0
        started = [int(l.split()[1]) for l in witness.read_text().splitlines() if l.startswith("b ")]
        samples.append((started[0] - t0) / 1e9)
        # a's commit never happened; commit its change now so the next round starts clean.
        run(["git", "commit", "-q", "-m", "a later"], ta, tmp)
    return median_ms(samples)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "?")
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}, "
            f"{git}, {rustc}")


def main():
    write = "--write" in sys.argv
    print("building the release binaries ...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="buildlock-bench-") as d:
        tmp = Path(d)
        print(f"green commits ({GREEN_REPS} each, round-robin) ...", file=sys.stderr)
        green, notes = bench_green(tmp)
        election = {}
        for n in (8, 16, 32, 64):
            print(f"election, {n} agents ({REPS} reps) ...", file=sys.stderr)
            election[n] = bench_election(tmp, n)
        print(f"wake-up, 16 waiters ({REPS} reps) ...", file=sys.stderr)
        wake, cpu = bench_wakeup(tmp)
        print(f"takeover ({REPS} reps) ...", file=sys.stderr)
        takeover = bench_takeover(tmp)

    plain = green["plain shell hook"]
    nohook = green["no hook"]
    lines = [
        "| green commit (`check = \"true\"`) | median | over no hook | vs plain shell hook |",
        "|---|---|---|---|",
    ]
    for name, ms in green.items():
        lines.append(f"| {name} | {ms:.1f} ms | +{ms - nohook:.1f} ms | {ms / plain:.2f}x |")
    lines += ["", "| election: N agents fail at once | median time until all know their role |", "|---|---|"]
    lines += [f"| {n} | {ms:.0f} ms |" for n, ms in election.items()]
    lines += ["", "| waiters (16) | median |", "|---|---|",
              f"| wake-up: fix marked -> last waiter's check running again | {wake:.0f} ms |",
              f"| CPU per waiter while waiting | {cpu:.2f} % of one core |",
              "", "| takeover | median |", "|---|---|",
              f"| SIGKILL of the fixer -> successor's fix starts (includes stopping the orphaned fix) | {takeover:.0f} ms |"]
    table = "\n".join(lines)
    header = (f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {machine()}.\n"
              f"Green commits: {GREEN_REPS} per variant after 3 warm-ups, interleaved; the rest: medians of {REPS} runs.\n"
              + "".join(f"\n- {n}" for n in notes))
    print(header + "\n\n" + table)
    result = {"green_ms": green, "election_ms": election, "wakeup_ms": wake, "waiter_cpu_pct": cpu,
              "takeover_ms": takeover, "notes": notes}
    print(json.dumps(result), file=sys.stderr)
    if write:
        doc = ROOT / "docs/BENCHMARKS.md"
        text = doc.read_text() if doc.exists() else ""
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            text = text[: text.index(start) + len(start)] + "\n" + header + "\n\n" + table + "\n" + text[text.index(end):]
            doc.write_text(text)
            print(f"updated {doc}", file=sys.stderr)
        else:
            print(f"{doc} has no bench markers; not written", file=sys.stderr)


if __name__ == "__main__":
    main()
