#!/usr/bin/env python3
"""buildlock's benchmarks: one command, one run, every figure beside a baseline measured in the
same run, interleaved with it.

    python3 bench/run.py             # builds the binaries as install.sh does, measures, prints (minutes)
                                     # (at whatever load it finds: it never waits for a quiet machine)
    python3 bench/run.py --write     # ... and rewrites docs/BENCHMARKS.md (keeps the run before)
    python3 bench/run.py --quick     # few repetitions, small N: checks the script itself (< 1 min)

Options: --no-anchors (skip lefthook, husky, the pre-commit framework; --quick skips them unless
--anchors), --only SECTION[,SECTION] (hook, green, mark, breakages, scale, election, wake, takeover, remote),
--tmp DIR (where the temporary repositories go: the file system matters, fsync is measured),
--doc PATH (--write there instead of docs/BENCHMARKS.md; needed to --write a --quick run).

What it measures (docs/BENCHMARKS.md says it at length, and why each method):
  hook       the hook run by hand with `check = "true"`, round-robin with `sh -c true` (its check
             alone) and a static C program that does nothing (bench/floor/noop.c): wall, CPU and
             minor page faults of each run, from wait4's rusage;
  green      `git commit` of one staged change, round-robin over: no hook, a plain shell hook, the
             bare binary, the hook as install.sh installs it, commit-retry through that same hook,
             the committed-folder shim (core.hooksPath), `match = "signature"` with no keys and
             with KEYS keys on record, and lefthook / husky / the pre-commit framework (anchors)
             where they install; every variant runs the same trivial check, and is first shown
             to run it;
  mark       the fixer's passing hook run that marks a build fixed, with few state files and with
             STATE_FILES, interleaved;
  breakages  files in locks/ and state/ after BREAKAGES breakages with `scope = "commit"`, each
             a real commit-retry that is elected, runs fix.command and commits;
  scale      bench/scale_local.py's rows on this run's release binaries: a new breakage after N
             abandoned ones, a green commit with N silent fixers on record, one agent's 1,000th
             role, and waiting at 384 against 48 waiters (CPU per waiter, the slowest re-run);
  election   N agents' checks fail at one instant (released by a FIFO, no polling): time until
             every agent knows its role, over several runs, each after a run of the floor
             (bench/floor/elect.c: the check's exec, flock, read, write, rename, the fixer's fsync);
  wake       N commit-retry waiters: their CPU while waiting (per-thread schedstat, every thread
             of each waiter's process tree, over a window that ends just before the fix), and
             each waiter's wake-up, from the state file's replacement (inotify) to the waiter's
             own "retrying the commit" line on its stderr (read by a thread at raised priority);
  takeover   a SIGKILLed fixer: time until its successor's fix starts;
  remote     the remote backend at CI-matrix scale (bench/remote.py's `matrix`, on this run's
             release binaries): N `buildlock ci` jobs, one clone each, fail at once over a real
             `git daemon` on loopback (remote_poll = 1s): the fix's start after the jobs fail, the
             last job green after the fix, git processes per waiting job per minute while the fix
             runs.

Nothing here asserts a time: benchmarks are not tests. A section that fails is reported as not
measured and the others go on.
"""

import argparse
import ctypes
import json
import os
import platform
import random
import re
import selectors
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import scale_local  # noqa: E402 - a sibling script, importable by design
_target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
REL = (_target if _target.is_absolute() else ROOT / _target) / "release"
DOC = ROOT / "docs" / "BENCHMARKS.md"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "buildlock-bench"

# ---- Everything the script knows about buildlock's insides, in one place -------------------------
# The coordination dir and its layout (crates/buildlock-core/src/store/local.rs). If the layout
# changes, change it here; each use falls back to something coarser, with a note, when it is gone.
COORD = "buildlock"            # <git common dir>/buildlock/
STATE = "state"                # state/<file_stem(key)>.json: one JSON state file per key
LOCKS = "locks"                # locks/election.lock and locks/<file_stem(key)>.fixer
HISTORY = "history.jsonl"      # one JSON object per event; a "fixed" event has "key" and "ms"
INSTALLED_BIN = "bin"          # install.sh copies the binaries to <coord>/bin/
# What commit-retry and the hook print (crates/buildlock-core/src/flows/commit/{retry,hook,wait}.rs):
WAITING = re.compile(r"is fixing; waiting up to|waiting up to .* for the fix")  # the wait began
RESUMED = re.compile(r"; retrying the commit|; running the check again")          # the wait ended
PROGRESS = re.compile(r"waiting for `")                                        # progress ticks
COMMITTED = re.compile(r"buildlock: committed")                                 # the retry landed


def file_stem(key: str) -> str:
    """The state file name of `key`, as crates/buildlock-protocol/src/key.rs makes it."""
    def safe(c):
        return c.isascii() and (c.isalnum() or c in "._-")
    if len(key.encode()) <= 64 and all(safe(c) for c in key) and not key.startswith("."):
        return key
    cleaned = "".join(c if safe(c) else "_" for c in key)[:48]
    h = 0xCBF29CE484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{cleaned.lstrip('.')}-{h & 0xFFFFFFFF:08x}"


# ---- Sizes ---------------------------------------------------------------------------------------
FULL = dict(green_reps=60, warmup=3, keys=1500, state_files=10_000, few_state_files=10, mark_reps=15,
            breakages=150, hook_reps=300, scale=dict(n=1500, roles=1000, reps=9, waiters=384, waiter_reps=2, window=20.0), election_n=64, election_runs=7, waiters=(64, 256), wake_reps=3,
            cpu_window=10.0, settle=1.0, takeover_reps=5, remote=dict(jobs=(7, 16, 32), reps=2, fix_s=20.0))
QUICK = dict(green_reps=5, warmup=1, keys=150, state_files=1000, few_state_files=10, mark_reps=3,
             breakages=15, hook_reps=30, scale=dict(n=60, roles=40, reps=3, waiters=64, waiter_reps=1, window=3.0), election_n=16, election_runs=2, waiters=(8, 32), wake_reps=1,
             cpu_window=1.0, settle=0.3, takeover_reps=1, remote=dict(jobs=(4,), reps=1, fix_s=4.0))
SECTIONS = ("hook", "green", "mark", "breakages", "scale", "election", "wake", "takeover", "remote")
# The remote backend's goals, stated at 32 jobs failing at once (a CI matrix).
REMOTE_GOAL_JOBS, REMOTE_FIX_START_S, REMOTE_GREEN_S, REMOTE_GIT_PER_MIN = 32, 3.0, 6.0, 66
# The git processes' goal is a waiting job's steady rate, stated over a fix of 20 s: over a
# shorter one, a job's one-time steps (its join, a late election) weigh as a rate.
REMOTE_RATE_FIX_S = 20.0

# The trivial check every green variant runs: a shell builtin, plus a witness file when
# BENCH_MARK is set, which proves that the variant really runs the check.
CHECK = 'test -z "$BENCH_MARK" || : > "$BENCH_MARK"'


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Ctx:
    def __init__(self, tmp: Path, p: dict, anchors: bool):
        self.tmp, self.p, self.anchors = tmp, p, anchors
        self.notes = []
        (tmp / "home").mkdir(exist_ok=True)

    def note(self, msg):
        self.notes.append(msg)
        log(f"  note: {msg}")


def env(ctx: Ctx, **extra):
    e = {
        "PATH": os.environ["PATH"], "HOME": str(ctx.tmp / "home"), "XDG_CONFIG_HOME": str(ctx.tmp / "config"),
        "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C", "NO_COLOR": "1",
        "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
    }
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(ctx: Ctx, args, cwd, check=True, extra=None, timeout=300):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env(ctx, **(extra or {})), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} in {cwd} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace')[-1500:]}")
    return r


def new_repo(ctx: Ctx, name: str, config: str = "", files=None) -> Path:
    repo = ctx.tmp / name
    repo.mkdir(parents=True)
    run(ctx, ["git", "init", "-q", "-b", "main"], repo)
    (repo / ".buildlock.toml").write_text(config)
    (repo / ".gitignore").write_text("node_modules\n")
    (repo / "README").write_text("x\n")
    for rel, text in (files or {}).items():
        (repo / rel).write_text(text)
    run(ctx, ["git", "add", "-A"], repo)
    run(ctx, ["git", "commit", "-q", "-m", "init", "--no-verify"], repo)
    return repo


def coord(repo: Path) -> Path:
    return repo / ".git" / COORD


def link_bare_hook(repo: Path):
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "pre-commit").symlink_to(REL / "pre-commit")


def install(ctx: Ctx, repo: Path):
    """buildlock installed the way a user installs it: install.sh with prebuilt binaries."""
    r = subprocess.run(["sh", str(ROOT / "install.sh"), "--bin-dir", str(REL), str(repo)], cwd=repo,
                       env=env(ctx), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"install.sh into {repo} exited {r.returncode}: {r.stderr.strip()[-800:]}")


_staged = iter(range(1 << 62))


def stage(ctx: Ctx, repo: Path, i):
    """Stages a change that no commit made before (variants that share a repository included)."""
    (repo / "change.txt").write_text(f"{i} {next(_staged)}\n")
    run(ctx, ["git", "add", "change.txt"], repo)


def toml_config(check: str, **sections) -> str:
    text = f"check = {json.dumps(check)}\n"
    for section, kv in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())
    return text


# ---- Statistics ------------------------------------------------------------------------------------

def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))
    return s[int(k)]


def summary(xs):
    return {"n": len(xs), "median": statistics.median(xs), "p25": pct(xs, 25), "p75": pct(xs, 75),
            "min": min(xs), "max": max(xs)}


# ---- CPU time from per-thread schedstat --------------------------------------------------------------

def _schedstat_works() -> bool:
    try:
        return int(Path("/proc/1/schedstat").read_text().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


SCHEDSTAT = _schedstat_works()
TICK = os.sysconf("SC_CLK_TCK")


def _children(pid, tid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        return None


def _ppid_map():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out.setdefault(int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree_cpu(pids):
    """{(pid, tid): (ns on CPU from schedstat, stat ticks)} for every thread of every process in the
    trees rooted at `pids`."""
    out, stack, ppids = {}, list(pids), None
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        kids_known = True
        for tid in tids:
            try:
                ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) if SCHEDSTAT else 0
                f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[(pid, int(tid))] = (ns, int(f[11]) + int(f[12]))
            except (OSError, ValueError, IndexError):
                continue
            kids = _children(pid, tid)
            if kids is None:
                kids_known = False
            else:
                stack += kids
        if not kids_known:
            ppids = ppids if ppids is not None else _ppid_map()
            stack += ppids.get(pid, [])
    return out


def cpu_between(a, b):
    """(ns, ticks) used between two tree_cpu samples; a thread born in between counts whole."""
    ns = sum(v[0] - a.get(k, (0, 0))[0] for k, v in b.items())
    ticks = sum(v[1] - a.get(k, (0, 0))[1] for k, v in b.items())
    return ns, ticks


# ---- An observer thread: waiters' stderr lines and the state dir's changes, timestamped ------------

_libc = ctypes.CDLL(None, use_errno=True)
IN_CLOSE_WRITE, IN_MOVED_TO = 0x8, 0x80


class Observer(threading.Thread):
    """Reads the waiters' stderr pipes and an inotify watch on the state dir in one select loop,
    stamping everything that one wake-up returns with one clock reading taken as select returns.
    The waiters do nothing extra to be observed: they write their own line, as they always do,
    into a pipe that never fills."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.lines = {}    # name -> [(ns, line)]
        self.events = []   # [(ns, file name)] in the watched dir
        self.partial = {}
        self.open = 0
        self.stopping = threading.Event()
        self.raised = False

    def watch(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0 or _libc.inotify_add_watch(fd, os.fsencode(directory), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.sel.register(fd, selectors.EVENT_READ, ("inotify", None))

    def add(self, name, pipe):
        os.set_blocking(pipe.fileno(), False)
        self.lines[name] = []
        self.partial[name] = b""
        self.sel.register(pipe.fileno(), selectors.EVENT_READ, ("pipe", name))
        self.open += 1

    def run(self):
        try:  # as root, run ahead of the herd of waking waiters so that their lines are stamped on time
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -15)
            self.raised = True
        except OSError:
            pass
        while not (self.stopping.is_set() and self.open == 0):
            ready = self.sel.select(timeout=0.05)
            now = time.time_ns()
            for key, _ in ready:
                kind, name = key.data
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if kind == "inotify":
                    off = 0
                    while off + 16 <= len(data):
                        _, _, _, ln = struct.unpack_from("iIII", data, off)
                        self.events.append((now, data[off + 16: off + 16 + ln].rstrip(b"\0").decode()))
                        off += 16 + ln
                    continue
                if not data:
                    self.sel.unregister(key.fd)
                    self.open -= 1
                    continue
                text = self.partial[name] + data
                *done, self.partial[name] = text.split(b"\n")
                self.lines[name] += [(now, line.decode(errors="replace")) for line in done]
            if self.stopping.is_set() and not ready:
                break

    def seen(self, name, pattern):
        return any(pattern.search(line) for _, line in self.lines.get(name, []))


# ---- 0. The hook alone, against its floors -----------------------------------------------------------

def timed(argv, cwd, environ):
    """One run of argv: wall ms, CPU ms (user + system of it and its children) and minor page
    faults, from wait4's rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1000, ru.ru_minflt


def bench_hook(ctx: Ctx):
    """The hook run by hand in a repository whose check is `true`, beside `sh -c true` (the check
    alone) and a static C program that does nothing (exec's floor), round-robin, with wall time,
    CPU and page faults of each run."""
    repo = new_repo(ctx, "hook-floor", toml_config("true"))
    noop = floor_program(ctx, "noop", static=True)
    e = env(ctx)
    variants = {
        "static C no-op": ([str(noop)], None),
        "sh -c true": (["/bin/sh", "-c", "true"], None),
        "buildlock hook, check = true": ([str(REL / "pre-commit")], repo),
    }
    res = {k: {"wall": [], "cpu": [], "faults": []} for k in variants}
    for _ in range(ctx.p["warmup"]):
        for argv, cwd in variants.values():
            timed(argv, cwd, e)
    for _ in range(ctx.p["hook_reps"]):
        for name, (argv, cwd) in variants.items():
            w, c, f = timed(argv, cwd, e)
            res[name]["wall"].append(w)
            res[name]["cpu"].append(c)
            res[name]["faults"].append(f)
    return {k: {m: summary(v) for m, v in r.items()} for k, r in res.items()}


# ---- 1. Green commits ------------------------------------------------------------------------------

def setup_green(ctx: Ctx):
    V = {}
    bl = toml_config(CHECK)

    V["no hook"] = {"repo": new_repo(ctx, "g-nohook")}

    plain = new_repo(ctx, "g-plain")
    (plain / ".git/hooks/pre-commit").write_text(f"#!/bin/sh\nexec sh -c '{CHECK}'\n")
    (plain / ".git/hooks/pre-commit").chmod(0o755)
    V["plain shell hook"] = {"repo": plain}

    bare = new_repo(ctx, "g-bare", bl)
    link_bare_hook(bare)
    V["buildlock: bare binary as the hook"] = {"repo": bare}

    inst = new_repo(ctx, "g-installed", bl)
    install(ctx, inst)
    V["buildlock: installed hook (install.sh)"] = {"repo": inst}
    V["buildlock: commit-retry, same installed hook"] = {
        "repo": inst, "cmd": [coord(inst) / INSTALLED_BIN / "commit-retry"]}

    shim = new_repo(ctx, "g-shim", bl)
    run(ctx, ["git", "config", "core.hooksPath", ".githooks"], shim)
    install(ctx, shim)
    V["buildlock: committed-folder shim (core.hooksPath)"] = {"repo": shim}

    sig = toml_config(CHECK, coordination={"match": "signature"})
    sig0 = new_repo(ctx, "g-sig0", sig)
    link_bare_hook(sig0)
    V["buildlock: match = signature, no keys"] = {"repo": sig0}
    sign = new_repo(ctx, "g-sign", sig)
    link_bare_hook(sign)
    made = make_keys_signature(ctx, sign, ctx.p["keys"])
    V[f"buildlock: match = signature, {made} keys"] = {"repo": sign}

    if ctx.anchors:
        for name, setup in (("lefthook", setup_lefthook), ("husky", setup_husky),
                            ("pre-commit framework", setup_precommit)):
            try:
                repo, version = setup(ctx)
                V[name] = {"repo": repo}
                ctx.note(f"{name}: {version}")
            except Exception as e:  # noqa: BLE001 - an anchor that cannot be installed is reported
                ctx.note(f"{name}: not measured: {type(e).__name__}: {str(e).strip()[:300]}")
    else:
        ctx.note("anchors (lefthook, husky, pre-commit framework): skipped (--quick or --no-anchors)")
    return V, made


def make_keys_signature(ctx: Ctx, repo: Path, n: int) -> int:
    """`n` keys on record in a `match = "signature"` repository.

    One real failure and its fix, through the binary, leave one real state file; the rest are
    copies of it with other signatures (and so other keys and file names), written where and as
    the store writes them: what a repository holds after `n` distinct breakages were each fixed
    within the last day (older passing keys are pruned). Driving `n` real breakages instead would
    cost O(n^2) with today's code, which parses every state file on every fix."""
    fail = ctx.tmp / "fail.toml"
    fail.write_text(toml_config("echo 'error: E0 the build broke'; exit 1"))
    run(ctx, [REL / "pre-commit"], repo, check=False, extra={"BUILDLOCK_AGENT": "f", "BUILDLOCK_CONFIG": fail})
    run(ctx, [REL / "pre-commit"], repo, extra={"BUILDLOCK_AGENT": "f"})
    made = clone_states(ctx, repo, n, commit_keys=False)
    # One more real breakage and fix: the store rewrites the file as it keeps it (schema 2: the
    # newest 16 passing keys of a base; every key being fixed). What the hot path then reads is
    # what a repository holds after `n` breakages; `keys_seen` reports the count.
    fail.write_text(toml_config("echo 'error: E1 the build broke again'; exit 1"))
    run(ctx, [REL / "pre-commit"], repo, check=False, extra={"BUILDLOCK_AGENT": "f", "BUILDLOCK_CONFIG": fail})
    run(ctx, [REL / "pre-commit"], repo, extra={"BUILDLOCK_AGENT": "f"})
    return made


def clone_states(ctx: Ctx, repo: Path, total: int, commit_keys: bool) -> int:
    """Copies the newest real state file until state/ holds `total` files; returns the count."""
    sdir = coord(repo) / STATE
    files = list(sdir.glob("*.json")) if sdir.is_dir() else []
    if not files:
        raise RuntimeError(f"no state file in {sdir} after a real failure and fix: the store's layout "
                           "changed (see STATE at the top of bench/run.py)")
    tpl = max(files, key=lambda f: f.stat().st_mtime_ns)
    text = tpl.read_text()
    d = json.loads(text)
    if "keys" in d:
        return clone_base_states(sdir, tpl, d, len(files), total, commit_keys)
    key, sig = d.get("key", ""), d.get("signature") or ""
    if tpl.name != file_stem(key) + ".json" and not getattr(ctx, "_stem_warned", False):
        ctx._stem_warned = True
        ctx.note(f"state file {tpl.name} is not file_stem({key!r}).json: the store's naming changed; "
                 "copies are named by bench/run.py's file_stem")
    rng = random.Random(len(files) * 7919 + total)
    count = len(files)
    while count < total:
        new_sig = "".join(rng.choice("0123456789abcdef") for _ in range(max(16, len(sig))))
        if commit_keys:
            new_key = "".join(rng.choice("0123456789abcdef") for _ in range(40))
            body = text.replace(key, new_key)
            if sig:
                body = body.replace(sig, new_sig)
        else:
            new_key = key.replace(sig, new_sig) if sig and sig in key else f"{key}#{new_sig}"
            body = text.replace(sig, new_sig) if sig else text.replace(key, new_key)
        path = sdir / (file_stem(new_key) + ".json")
        if not path.exists():
            path.write_text(body)
            count += 1
    return count


def clone_base_states(sdir: Path, tpl: Path, d: dict, count: int, total: int, commit_keys: bool) -> int:
    """Schema 2 (one file per base key, holding that base's keys). `commit_keys`: `total` base
    files, one per commit (scope = "commit"). Otherwise `total` keys of the one base, each with
    a signature of its own, in its file: the worst case the hot path reads (the store itself
    keeps only 16 passing keys per base; keys being fixed are all kept)."""
    rng = random.Random(count * 7919 + total)
    hexs = lambda n: "".join(rng.choice("0123456789abcdef") for _ in range(n))
    base, k0 = d["base"], d["keys"][0]
    if commit_keys:
        while count < total:
            nb = hexs(40)
            path = sdir / (file_stem(nb) + ".json")
            if path.exists():
                continue
            e = json.loads(json.dumps(d))
            e["base"] = nb
            for k in e["keys"]:
                k["key"] = k["key"].replace(base, nb, 1)
            path.write_text(json.dumps(e))
            count += 1
        return count
    keys = d["keys"]
    while len(keys) < total:
        k = json.loads(json.dumps(k0))
        k["key"] = f"{base}#{hexs(16)}"
        keys.append(k)
    tpl.write_text(json.dumps(d))
    return len(keys)


def keys_seen(ctx: Ctx, repo: Path) -> int:
    st = json.loads(run(ctx, [REL / "buildlock", "status", "--json"], repo, timeout=600).stdout)
    return len(st.get("keys", []))


def setup_lefthook(ctx: Ctx):
    nm = npm_install(ctx, ["lefthook"])
    repo = new_repo(ctx, "g-lefthook", files={"lefthook.yml": f"pre-commit:\n  commands:\n    check:\n      run: {json.dumps(CHECK)}\n"})
    (repo / "node_modules").symlink_to(nm)
    run(ctx, [nm / ".bin/lefthook", "install"], repo)
    return repo, f"lefthook {run(ctx, [nm / '.bin/lefthook', 'version'], repo).stdout.decode().strip()} (npm)"


def setup_husky(ctx: Ctx):
    nm = npm_install(ctx, ["husky"])
    repo = new_repo(ctx, "g-husky")
    (repo / "node_modules").symlink_to(nm)
    run(ctx, [nm / ".bin/husky"], repo)
    (repo / ".husky/pre-commit").write_text(CHECK + "\n")
    version = json.loads((nm / "husky/package.json").read_text())["version"]
    return repo, f"husky {version} (npm; core.hooksPath = .husky/_)"


def npm_install(ctx: Ctx, pkgs) -> Path:
    """The packages in a cache dir outside the repository (the registry is asked once per machine),
    linked into each benchmark repository as its node_modules."""
    d = CACHE / "npm"
    nm = d / "node_modules"
    if all((nm / p / "package.json").exists() for p in pkgs):
        return nm
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "package.json").exists():
        (d / "package.json").write_text('{"private": true}\n')
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *pkgs], cwd=d,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"npm install {' '.join(pkgs)}: {(r.stderr or r.stdout).strip()[-300:]}")
    return nm


def setup_precommit(ctx: Ctx):
    venv = CACHE / "pre-commit-venv"
    exe = venv / "bin" / "pre-commit"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "pre-commit"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"pip install pre-commit: {r.stderr.strip()[-300:]}")
    cfg = ("repos:\n- repo: local\n  hooks:\n  - id: check\n    name: check\n    entry: sh\n"
           f"    args: [\"-c\", {json.dumps(CHECK)}]\n    language: system\n    always_run: true\n"
           "    pass_filenames: false\n")
    repo = new_repo(ctx, "g-precommit", files={".pre-commit-config.yaml": cfg})
    run(ctx, [exe, "install"], repo)
    return repo, f"{run(ctx, [exe, '--version'], repo).stdout.decode().strip()} (PyPI, in a venv)"


def green_argv(v, i):
    return [*(v.get("cmd") or ["git", "commit"]), "-q", "-m", f"c{i}"]


def verify_green(ctx: Ctx, V):
    """Each variant's hook must really run the check (the witness file appears), except 'no hook'."""
    for n, (name, v) in enumerate(list(V.items())):
        mark = ctx.tmp / f"witness-{n}"
        stage(ctx, v["repo"], f"verify {n}")
        r = run(ctx, green_argv(v, f"verify{n}"), v["repo"], check=False, extra={"BENCH_MARK": mark})
        ran = mark.exists()
        if r.returncode != 0 or ran != (name != "no hook"):
            ctx.note(f"{name}: not measured: the verification commit exited {r.returncode} and the check "
                     f"{'ran' if ran else 'did not run'}: {r.stderr.decode(errors='replace').strip()[-300:]}")
            del V[name]


def bench_green(ctx: Ctx):
    p = ctx.p
    V, made = setup_green(ctx)
    verify_green(ctx, V)
    names = list(V)
    times = {k: [] for k in names}
    for i in range(p["warmup"] + p["green_reps"]):
        shift = i % len(names)  # round-robin, starting one further each round
        for name in names[shift:] + names[:shift]:
            v = V[name]
            stage(ctx, v["repo"], i)
            argv = [str(a) for a in green_argv(v, i)]
            e = env(ctx)
            t = time.perf_counter()
            r = subprocess.run(argv, cwd=v["repo"], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"{name}: commit {i} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
            if i >= p["warmup"]:
                times[name].append(dt * 1000)
    return {"variants": {k: summary(v) for k, v in times.items()}, "keys": made, "reps": p["green_reps"],
            "warmup": p["warmup"]}


# ---- 2. Marking a build fixed with many state files ------------------------------------------------

def bench_mark(ctx: Ctx):
    p = ctx.p
    repos = {}
    for label, total in (("few", p["few_state_files"]), ("many", p["state_files"])):
        broken = ctx.tmp / f"mark-{label}.broken"
        cfg = toml_config(f"if [ -e {broken} ]; then echo 'error: the build broke'; exit 1; fi",
                          coordination={"scope": "commit"})
        repo = new_repo(ctx, f"mark-{label}", cfg)
        repos[label] = {"repo": repo, "broken": broken, "total": total, "ms": [], "before": [], "after": []}
        # One real breakage and fix leaves one real state file to copy.
        broken.write_text("")
        run(ctx, [REL / "pre-commit"], repo, check=False, extra={"BUILDLOCK_AGENT": "f"})
        broken.unlink()
        run(ctx, [REL / "pre-commit"], repo, extra={"BUILDLOCK_AGENT": "f"})
        clone_states(ctx, repo, total, commit_keys=True)
        repos[label]["seen"] = keys_seen(ctx, repo)
    sdir = {k: coord(r["repo"]) / STATE for k, r in repos.items()}
    for i in range(p["mark_reps"]):
        order = ["few", "many"] if i % 2 == 0 else ["many", "few"]
        for label in order:
            r = repos[label]
            # Top up: a prune by the previous mark may have removed some; every mark meets `total`.
            clone_states(ctx, r["repo"], r["total"], commit_keys=True)
            r["before"].append(len(os.listdir(sdir[label])))
            r["broken"].write_text("")
            failed = run(ctx, [REL / "pre-commit"], r["repo"], check=False, extra={"BUILDLOCK_AGENT": "f"})
            if failed.returncode != 1:
                raise RuntimeError(f"the fixer's failing check exited {failed.returncode}, not 1 (elected): "
                                   f"{failed.stderr.decode(errors='replace')[-300:]}")
            r["broken"].unlink()
            t = time.perf_counter()
            run(ctx, [REL / "pre-commit"], r["repo"], extra={"BUILDLOCK_AGENT": "f"})
            r["ms"].append((time.perf_counter() - t) * 1000)
            r["after"].append(len(os.listdir(sdir[label])))
    return {k: {"files": r["total"], "seen_by_status": r["seen"], "ms": summary(r["ms"]),
                "files_before": statistics.median(r["before"]), "files_after": statistics.median(r["after"])}
            for k, r in repos.items()}


# ---- 3. The coordination dir after many breakages ------------------------------------------------

def bench_breakages(ctx: Ctx):
    n = ctx.p["breakages"]
    broken = ctx.tmp / "brk.broken"
    cfg = toml_config(f"if [ -e {broken} ]; then echo 'error: the build broke'; exit 1; fi",
                      coordination={"scope": "commit"}, fix={"command": f"rm -f {broken}"})
    repo = new_repo(ctx, "breakages", cfg)
    link_bare_hook(repo)
    t0 = time.perf_counter()
    for i in range(n):
        broken.write_text("")
        stage(ctx, repo, i)
        r = run(ctx, [REL / "commit-retry", "-q", "-m", f"b{i}"], repo, check=False, extra={"BUILDLOCK_AGENT": "a"})
        if r.returncode != 0 or broken.exists():
            raise RuntimeError(f"breakage {i}: commit-retry exited {r.returncode}, the fix "
                               f"{'did not run' if broken.exists() else 'ran'}: {r.stderr.decode(errors='replace')[-500:]}")
    took = time.perf_counter() - t0
    counts, total_bytes = {}, 0
    for path in coord(repo).rglob("*"):
        if path.is_file():
            parts = path.relative_to(coord(repo)).parts
            where = parts[0] + "/" if len(parts) > 1 else parts[0]  # a folder, or a file at the top
            counts[where] = counts.get(where, 0) + 1
            total_bytes += path.stat().st_size
    return {"breakages": n, "files": dict(sorted(counts.items())), "bytes": total_bytes, "seconds": took}


# ---- 4 and 5. Many agents: the election, and waiting ----------------------------------------------

def crowd(ctx: Ctx, n: int) -> tuple:
    """One repository with `n` linked worktrees, one per agent (made once, grown on demand)."""
    repo = ctx.tmp / "crowd"
    if not repo.exists():
        new_repo(ctx, "crowd")
        link_bare_hook(repo)
        ctx.crowd_trees = []
    while len(ctx.crowd_trees) < n:
        i = len(ctx.crowd_trees)
        t = ctx.tmp / f"crowd-a{i}"
        run(ctx, ["git", "worktree", "add", "-q", "-b", f"a{i}", t], repo)
        ctx.crowd_trees.append(t)
    return repo, ctx.crowd_trees[:n]


def floor_program(ctx: Ctx, name: str, static: bool = False) -> Path:
    """bench/floor/NAME.c compiled into the run's temporary dir (the floors buildlock is measured
    against: what the same job costs with nothing but the system calls it needs)."""
    out = ctx.tmp / f"floor-{name}"
    if not out.exists():
        args = ["gcc", "-O2", "-o", str(out), str(ROOT / "bench" / "floor" / f"{name}.c")]
        r = subprocess.run(args + (["-static"] if static else []), capture_output=True, text=True)
        if r.returncode != 0 and static:  # no static libc: dynamically linked, said in the row
            ctx.note(f"floor {name}: no static C library; linked dynamically")
            r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cannot build the floor program {name}: {r.stderr.strip()[-400:]}")
    return out


def election_round(ctx: Ctx, n: int, argv_of, cwd_of, env_of, fifo: Path, ready: Path, reset):
    """One election: n processes whose checks block on the FIFO, released at once; the time until
    the last one exits, and their exit codes."""
    ready.write_text("")
    procs = [subprocess.Popen(argv_of(i), cwd=cwd_of(i), env=env_of(i), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(n)]
    deadline = time.time() + 60 + n
    while len(ready.read_text()) < n and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # every check is in open(2) or read(2) of the FIFO by now
    t0 = time.perf_counter()
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, b"go\n" * n)
    # A blocking wait sees each exit as it happens. Popen.wait(timeout=...) polls instead, with
    # sleeps doubling from 0.5 to 50 ms: an exit was seen at the next of 31.5, 63.5, 113.5 ms,
    # which quantised every election figure (the ratio to the floor sat at 1.9-2.0x for weeks:
    # 63.5 / 31.5). A watchdog stands in for the timeout.
    def overdue():
        for p in procs:
            if p.returncode is None:
                try:
                    p.kill()
                except OSError:
                    pass
    watchdog = threading.Timer(120, overdue)
    watchdog.start()
    try:
        codes = [p.wait() for p in procs]
    finally:
        watchdog.cancel()
    took = (time.perf_counter() - t0) * 1000
    os.close(fd)
    reset()
    return took, codes


def bench_election(ctx: Ctx):
    """buildlock's election at n agents, interleaved run by run with the floor (bench/floor/elect.c:
    the check's fork and exec, flock, read, write, rename, and the fixer's fsync, nothing else)."""
    n, runs = ctx.p["election_n"], ctx.p["election_runs"]
    repo, trees = crowd(ctx, n)
    ready, fifo = ctx.tmp / "el.ready", ctx.tmp / "el.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    check = f"echo >> {ready}; read go < {fifo}; echo 'error: the build broke'; exit 1"
    cfg = ctx.tmp / "election.toml"
    # No polling before the start: every check blocks in read(2) on a FIFO, released at once.
    cfg.write_text(toml_config(check, hook={"wait": False}))
    elect, floor_dir = floor_program(ctx, "elect"), ctx.tmp / "floor-election"
    floor_dir.mkdir(exist_ok=True)

    def clear_floor():
        for f in floor_dir.iterdir():
            f.unlink()

    samples, floor, anomalies = [], [], []

    def floor_round(_k):
        took, _ = election_round(
            ctx, n, lambda i: [str(elect), str(floor_dir), f"a{i}", check], lambda i: floor_dir,
            lambda i: env(ctx), fifo, ready, clear_floor)
        floor.append(took)

    def buildlock_round(k):
        took, codes = election_round(
            ctx, n, lambda i: [str(REL / "pre-commit")], lambda i: trees[i],
            lambda i: env(ctx, BUILDLOCK_AGENT=f"a{i}", BUILDLOCK_CONFIG=cfg), fifo, ready,
            lambda: run(ctx, [REL / "buildlock", "reset"], repo))
        samples.append(took)
        if codes.count(1) != 1 or codes.count(75) != n - 1:
            anomalies.append(f"run {k}: exit codes {sorted(set(codes))}, {codes.count(1)} fixers")

    # One round of each first, not counted: the section before (and this one's 64 new
    # worktrees) leaves the disk busy for a while; the first rounds measured 120 and 66 ms
    # against 37 and 25 for the last.
    for side in (floor_round, buildlock_round):
        scale_local.settle_fs()
        side(-1)
    del samples[:], floor[:]
    for k in range(runs):
        # Each side goes first in turn, after the previous round's writes reached the disk and
        # its removed files aged past ext4's recently-freed window (bench/scale_local.py's
        # settle_fs): the side that came second paid the other's writeback and removals (the
        # floor's median wandered from 36 to 85 ms between runs, buildlock's from 42 to 71 ms
        # with the same binary).
        for side in ((floor_round, buildlock_round) if k % 2 == 0 else (buildlock_round, floor_round)):
            scale_local.settle_fs()
            side(k)
    for a in anomalies:
        ctx.note(f"election: NOT one fixer: {a}")
    return {"n": n, "runs_ms": samples, "ms": summary(samples), "floor_ms": summary(floor),
            "anomalies": anomalies}


def fix_marked_at(ctx: Ctx, repo: Path, obs: Observer, key: str, since_ns: int):
    """When the fix was marked: the state file's replacement seen by inotify, else the history's
    "fixed" stamp (milliseconds, taken after the state and totals writes, so a few ms late)."""
    name = file_stem(key) + ".json"
    for ns, n in obs.events:
        if n == name and ns >= since_ns:
            return ns, "inotify"
    try:
        for line in (coord(repo) / HISTORY).read_text().splitlines():
            h = json.loads(line)
            if h.get("event") == "fixed" and h.get("key") == key and h.get("ms", 0) * 1_000_000 >= since_ns - 2_000_000:
                return h["ms"] * 1_000_000, "history"
    except (OSError, ValueError):
        pass
    return None, None


def bench_wake_n(ctx: Ctx, n: int):
    p = ctx.p
    repo, trees = crowd(ctx, n)
    broken = ctx.tmp / "wake.broken"
    cfg = ctx.tmp / "wake.toml"
    cfg.write_text(toml_config(f"if [ -e {broken} ]; then echo 'error: the build broke'; exit 1; fi",
                               coordination={"wait": "20m"}))
    key = "repo"  # scope = "repo", match = "any"
    fixer_env = {"BUILDLOCK_AGENT": "fixer", "BUILDLOCK_CONFIG": cfg}
    cpu_pct, tick_pct, delays, per_rep_max, sources, fallbacks, problems = [], [], [], [], set(), 0, []
    herd_done = []  # per rep: the mark → the last waiter's "committed" line
    for rep in range(p["wake_reps"]):
        broken.write_text("")
        r = run(ctx, [REL / "pre-commit"], repo, check=False, extra=fixer_env)
        if r.returncode != 1:
            raise RuntimeError(f"the fixer's failing check exited {r.returncode}, not 1 (elected)")
        for i, t in enumerate(trees):
            stage(ctx, t, f"{rep}-{i}")
        obs = Observer()
        obs.watch(coord(repo) / STATE)
        procs = {}
        try:
            for i, t in enumerate(trees):
                procs[f"w{i}"] = subprocess.Popen(
                    [str(REL / "commit-retry"), "-q", "-m", f"w{i} {rep}"], cwd=t,
                    env=env(ctx, BUILDLOCK_AGENT=f"w{i}", BUILDLOCK_CONFIG=cfg),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                obs.add(f"w{i}", procs[f"w{i}"].stderr)
            obs.start()
            deadline = time.time() + 60 + n
            while time.time() < deadline:
                if all(obs.seen(w, WAITING) or pr.poll() is not None for w, pr in procs.items()):
                    break
                time.sleep(0.05)
            not_waiting = [w for w, pr in procs.items() if not obs.seen(w, WAITING)]
            if not_waiting:
                tail = obs.lines.get(not_waiting[0], [])[-3:]
                raise RuntimeError(f"{len(not_waiting)} of {n} waiters never said they wait (e.g. {not_waiting[0]}: "
                                   f"{[line for _, line in tail]})")
            time.sleep(p["settle"])
            pids = [pr.pid for pr in procs.values()]
            ta = time.perf_counter()
            a = tree_cpu(pids)
            time.sleep(p["cpu_window"])
            tb = time.perf_counter()
            b = tree_cpu(pids)  # just before the fix
            # Both samples read the threads in the same order at the same pace: each thread's
            # interval is the time between the starts of the two readings.
            window = tb - ta
            ns, ticks = cpu_between(a, b)
            cpu_pct.append(ns / (window * 1e9) * 100)
            tick_pct.append(ticks / TICK / window * 100)
            broken.unlink()
            since = time.time_ns()
            run(ctx, [REL / "pre-commit"], repo, extra=fixer_env)
            codes = {w: pr.wait(timeout=120 + n) for w, pr in procs.items()}
            bad = {w: c for w, c in codes.items() if c != 0}
            if bad:
                problems.append(f"rep {rep}: {len(bad)} waiters exited non-zero, e.g. {next(iter(bad.items()))}")
        finally:
            for pr in procs.values():
                if pr.poll() is None:
                    pr.kill()
                    pr.wait()
            obs.stopping.set()
            obs.join(timeout=10)
        marked, source = fix_marked_at(ctx, repo, obs, key, since)
        if marked is None:
            raise RuntimeError("could not tell when the fix was marked (no inotify event on the state file, "
                               "no 'fixed' in the history): see STATE and HISTORY at the top of bench/run.py")
        sources.add(source)
        rep_delays = []
        for w in procs:
            after = [(ns, line) for ns, line in obs.lines[w] if ns >= marked]
            hit = next((ns for ns, line in after if RESUMED.search(line)), None)
            if hit is None:
                hit = next((ns for ns, line in after if not PROGRESS.search(line)), None)
                fallbacks += hit is not None
            if hit is None:
                problems.append(f"rep {rep}: {w} printed nothing after the fix")
                continue
            rep_delays.append((hit - marked) / 1e6)
        delays += rep_delays
        per_rep_max.append(max(rep_delays) if rep_delays else float("nan"))
        done = [next((ns for ns, line in obs.lines[w] if ns >= marked and COMMITTED.search(line)), None) for w in procs]
        herd_done.append((max(done) - marked) / 1e6 if done and None not in done else float("nan"))
        if not obs.raised:
            problems.append("the observer thread could not raise its priority (not root?): under load its "
                            "stamps lag, which inflates the wake-up figures")
    for prob in sorted(set(problems)):
        ctx.note(f"wake-up, {n} waiters: {prob}")
    if "history" in sources:
        ctx.note(f"wake-up, {n} waiters: the fix's mark was not seen by inotify on {STATE}/; the history's "
                 "'fixed' stamp was used, which is taken after the state and totals writes (a few ms late)")
    if fallbacks:
        ctx.note(f"wake-up, {n} waiters: {fallbacks} waiters had no 'retrying the commit' line; their first "
                 "other line after the fix was used (see RESUMED at the top of bench/run.py)")
    return {"n": n, "cpu_pct_all": summary(cpu_pct), "cpu_pct_runs": cpu_pct, "stat_ticks_pct": tick_pct,
            "cpu_source": "schedstat" if SCHEDSTAT else "stat ticks (schedstat unavailable)",
            "wake_ms": {"p50": pct(delays, 50), "p99": pct(delays, 99), "max": max(delays) if delays else float("nan"),
                        "n": len(delays)}, "per_rep_max_ms": per_rep_max, "herd_done_ms": herd_done,
            "marked_by": sorted(sources)}


def bench_wake(ctx: Ctx):
    return {str(n): bench_wake_n(ctx, n) for n in ctx.p["waiters"]}


# ---- 6. Takeover -----------------------------------------------------------------------------------

def bench_takeover(ctx: Ctx):
    status, witness, fix = ctx.tmp / "tstatus", ctx.tmp / "twitness", ctx.tmp / "tfix.sh"
    fix.write_text(f'echo "$BUILDLOCK_AGENT $(date +%s%N)" >> {witness}\n'
                   f'if [ "$BUILDLOCK_AGENT" = a ]; then sleep 60; fi\necho ok > {status}\n')
    # Each rep is a breakage of its own (its own error): the same error again would be handed the
    # previous rep's fix commit instead of electing a fixer.
    repo = new_repo(ctx, "take", toml_config(f"grep -qx ok {status} || {{ cat {status}; false; }}",
                                             fix={"command": f"sh {fix}"}))
    link_bare_hook(repo)
    ta, tb = ctx.tmp / "take-a", ctx.tmp / "take-b"
    run(ctx, ["git", "worktree", "add", "-q", "-b", "ta", ta], repo)
    run(ctx, ["git", "worktree", "add", "-q", "-b", "tb", tb], repo)
    samples = []
    for rep in range(ctx.p["takeover_reps"]):
        status.write_text(f"broken in rep {rep}\n")
        witness.write_text("")
        for t in (ta, tb):
            stage(ctx, t, rep)
        a = subprocess.Popen([str(REL / "commit-retry"), "-q", "-m", "a"], cwd=ta, env=env(ctx, BUILDLOCK_AGENT="a"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b = None
        try:
            deadline = time.time() + 60
            while "a " not in witness.read_text():
                if time.time() > deadline:
                    raise RuntimeError("agent a's fix never started")
                time.sleep(0.01)
            b = subprocess.Popen([str(REL / "commit-retry"), "-q", "-m", "b"], cwd=tb,
                                 env=env(ctx, BUILDLOCK_AGENT="b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                st = json.loads(run(ctx, [REL / "buildlock", "status", "--json"], repo).stdout)
                if any(k.get("waiters") == ["b"] for k in st.get("keys", [])):
                    break
                if time.time() > deadline:
                    raise RuntimeError("agent b never showed as waiting in `buildlock status --json`")
                time.sleep(0.02)
            time.sleep(0.3)
            t0 = time.time_ns()
            a.send_signal(signal.SIGKILL)
            a.wait()
            if b.wait(timeout=60) != 0:
                raise RuntimeError(f"agent b exited {b.returncode} after the takeover")
        finally:
            for pr in (a, b):
                if pr is not None and pr.poll() is None:
                    pr.kill()
                    pr.wait()
        started = [int(line.split()[1]) for line in witness.read_text().splitlines() if line.startswith("b ")]
        samples.append((started[0] - t0) / 1e6)
        run(ctx, ["git", "commit", "-q", "-m", "a later", "--no-verify"], ta)
    return {"ms": summary(samples)}


# ---- 7. The remote backend at CI-matrix scale -----------------------------------------------------------

def bench_remote(ctx: Ctx):
    """bench/remote.py's matrix on this run's release binaries: for each N, `reps` runs in turn
    (N jobs fail at once, the fix runs `fix_s`), each with the load it ran at."""
    sys.path.insert(0, str(ROOT / "bench"))
    import remote  # noqa: E402 - a sibling script, importable by design
    remote.BIN = REL
    p = ctx.p["remote"]
    runs = []
    for rep in range(p["reps"]):
        for n in p["jobs"]:
            r = remote.measure_matrix(n, p["fix_s"], tmp_dir=ctx.tmp)
            log(f"  remote: {n} jobs, run {rep + 1}: fix starts {r['fix_start_s']:.2f} s, last green "
                f"{r['last_green_s']:.2f} s, git/waiting job/min {statistics.median(r['rates']):.0f} / "
                f"{r['rates'][-1]:.0f}, load {r['load_before']:.1f}–{r['load_after']:.1f}")
            runs.append(r)
    return {"fix_s": p["fix_s"], "runs": runs}


def each(runs, k):
    """One figure of every run, in the order measured."""
    return ", ".join(f"{r[k]:.2f}" for r in runs)


def remote_by_jobs(rm):
    """{jobs: [runs]} in the order measured."""
    out = {}
    for r in rm["runs"]:
        out.setdefault(r["jobs"], []).append(r)
    return out


# ---- The machine, the code, the report ---------------------------------------------------------------

def bench_scale(ctx: Ctx):
    """bench/scale_local.py's rows, on the release binaries of this run: a new breakage after N
    abandoned ones, a green commit with N silent fixers on record, one agent's Nth role, and
    waiting at 384 against 48 waiters (each a ratio against a baseline interleaved with it)."""
    p = ctx.p["scale"]
    args = argparse.Namespace(profile="release", bins=REL, n=p["n"], roles=p["roles"], reps=p["reps"],
                              waiters=p["waiters"], waiter_reps=p["waiter_reps"], window=p["window"],
                              only="abandoned,green,roles,waiters", tmp=str(ctx.tmp))
    return scale_local.measure(args)


def machine(tmp: Path):
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    fs = subprocess.run(["df", "-T", str(tmp)], capture_output=True, text=True).stdout.splitlines()[-1:]
    fstype = fs[0].split()[1] if fs and len(fs[0].split()) > 1 else "?"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    branch = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem / 1024 / 1024), "kernel": platform.release(),
        "tmp_fs": fstype, "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "code": f"{branch} {head}{' (uncommitted changes)' if dirty else ''}",
    }


def fmt_ms(x):
    return "-" if x != x else (f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms")


def spread(s, lo="p25", hi="p75"):
    return f"{fmt_ms(s[lo])[:-3]}–{fmt_ms(s[hi])}"


def goal_rows(res):
    """(figure, goal, value, meets) for every row of the goals table, from one run's results."""
    rows = []
    h = res.get("hook")
    if h:
        for m, unit in (("wall", "wall"), ("cpu", "CPU")):
            hook, sh = h["buildlock hook, check = true"][m]["median"], h["sh -c true"][m]["median"]
            own = hook - sh
            rows.append((f"hook run by hand (`check = \"true\"`), {unit}: its own cost (hook − `sh -c true`) "
                         "against `sh -c true`", "≤ 1.5×",
                         f"{hook:.2f} − {sh:.2f} = {own:.2f} ms = **{own / sh:.2f}×** (static C no-op "
                         f"{h['static C no-op'][m]['median']:.2f} ms)", own <= 1.5 * sh))
        faults = h["buildlock hook, check = true"]["faults"]["median"]
        rows.append(("hook run by hand: minor page faults (with its check)", "—",
                     f"{faults:.0f} (`sh -c true` {h['sh -c true']['faults']['median']:.0f}, no-op "
                     f"{h['static C no-op']['faults']['median']:.0f})", None))
    else:
        rows.append(("hook run by hand, own cost against `sh -c true`", "≤ 1.5×", "not measured", None))
    g = res.get("green", {}).get("variants", {})

    def med(name):
        return g.get(name, {}).get("median")


    def ratio_row(figure, goal, num, den, limit):
        a, b = med(num), med(den)
        if a is None or b is None:
            rows.append((figure, goal, "not measured", None))
        else:
            rows.append((figure, goal, f"{a:.1f} / {b:.1f} ms = **{a / b:.2f}×**", a / b <= limit))

    ratio_row("`commit-retry` green commit / `git commit`, same installed hook", "≤ 1.1×",
              "buildlock: commit-retry, same installed hook", "buildlock: installed hook (install.sh)", 1.1)
    sign = next((k for k in g if k.startswith("buildlock: match = signature, ") and not k.endswith("no keys")), None)
    nkeys = res.get("green", {}).get("keys", "?")
    ratio_row(f'green commit, `match = "signature"`, {nkeys} keys on record / no keys', "≤ 1.15×",
              sign or "-", "buildlock: match = signature, no keys", 1.15)
    m = res.get("mark")
    if m:
        a, b = m["few"]["ms"]["median"], m["many"]["ms"]["median"]
        rows.append((f"marking a build fixed: {m['few']['files']} → {m['many']['files']} state files", "flat",
                     f"{a:.1f} → {b:.1f} ms ({b / a:.2f}×)", None))
    else:
        rows.append(("marking a build fixed, many state files", "flat", "not measured", None))
    w = res.get("wake", {})
    for n, r in w.items():
        s = r["cpu_pct_all"]
        stated = n == "64"  # the goal is stated at 64 waiters
        rows.append((f"{n} agents waiting: CPU of all waiters together",
                     "≤ 1 % of a core" if stated else "— (goal: ≤ 1 % at 64)",
                     f"**{s['median']:.2f} %** ({s['min']:.2f}–{s['max']:.2f} over {s['n']} runs)",
                     s["median"] <= 1.0 if stated else None))
    for n, r in w.items():
        k = r["wake_ms"]
        big = n == str(max(int(x) for x in w))
        rows.append((f"waiter notices the fix ({n} waiters): p50 / p99 / max", "≤ 1 s at 256 waiters",
                     f"{fmt_ms(k['p50'])} / {fmt_ms(k['p99'])} / **{fmt_ms(k['max'])}**",
                     (k["max"] <= 1000) if big else None))
    if not w:
        rows.append(("waiting: CPU and wake-up", "≤ 1 %; ≤ 1 s", "not measured", None))
    b = res.get("breakages")
    if b:
        locks, state = b["files"].get(LOCKS + "/", 0), b["files"].get(STATE + "/", 0)
        rows.append((f"`{LOCKS}/` and `{STATE}/` after {b['breakages']} breakages, `scope = \"commit\"`", "≤ 80 each",
                     f"**{locks} and {state} files**", max(locks, state) <= 80))
    else:
        rows.append(("`locks/` and `state/` after many breakages", "≤ 80 each", "not measured", None))
    ratio_row("installed hook (install.sh) / plain `sh -c` hook", "≤ 1.15×",
              "buildlock: installed hook (install.sh)", "plain shell hook", 1.15)
    ratio_row("committed-hooks-folder shim / plain hook", "≤ 1.25×",
              "buildlock: committed-folder shim (core.hooksPath)", "plain shell hook", 1.25)
    sc = res.get("scale", {}).get("rows", {})
    for name, figure, goal, limit, files in (
            ("abandoned", "a new breakage after {n} abandoned ones / in a fresh repository", "≤ 1.5×", 1.5,
             ("state_files",)),
            ("green", "a green commit with {n} silent fixers on record / with none", "≤ 1.15×", 1.15, ()),
            ("roles", "one agent's failing hook after {roles} roles / after 10", "≤ 1.5×", 1.5,
             ("leases_files", "state_files"))):
        r = sc.get(name)
        if not r:
            rows.append((figure.format(n="N", roles="N"), goal, "not measured", None))
            continue
        w, c = r["wall"], r["cpu"]
        counts = ", ".join(f"{r[f]} files in `{f.split('_')[0]}/`" for f in files)
        worst = max(w["ratio"], c["ratio"])
        rows.append((figure.format(n=res["scale"]["n"], roles=res["scale"]["roles"]), goal + (", ≤ 80 files" if files else ""),
                     f"wall **{w['ratio']:.2f}×**, CPU **{c['ratio']:.2f}×** ({c['base_ms']:.1f} → {c['loaded_ms']:.1f} ms CPU)"
                     + (f"; {counts}" if counts else ""),
                     worst <= limit and all(r[f] <= 80 for f in files)))
    wt = sc.get("waiters")
    if wt:
        n = next(int(k.rsplit("_", 1)[1]) for k in wt if k.startswith("slowest_rerun_ms_") and not k.endswith("_48"))
        rows.append((f"CPU per waiter, {n} waiters / 48", "≤ 1.5×", f"**{wt['cpu_ratio']:.2f}×**", wt["cpu_ratio"] <= 1.5))
        slow = wt.get(f"slowest_rerun_ms_{n}")
        rows.append((f"slowest of {n} waiters re-running its check after the fix", "≤ 0.5 s at 384",
                     f"**{fmt_ms(slow)}**" if slow is not None else "not measured",
                     (slow <= 500) if slow is not None and n >= 384 else None))
    e = res.get("election")
    if e:
        s, f = e["ms"], e.get("floor_ms")
        if f:
            rows.append((f"election at {e['n']} agents, {s['n']} runs interleaved with the floor: median",
                         "≤ 2× the floor", f"**{s['median']:.0f}** / floor {f['median']:.0f} ms = "
                         f"**{s['median'] / f['median']:.2f}×**" + (" (NOT one fixer!)" if e["anomalies"] else ""),
                         s["median"] <= 2 * f["median"] and not e["anomalies"]))
        else:
            rows.append((f"election at {e['n']} agents, {s['n']} runs: min / median / max", "≤ 300 ms, and stable",
                         f"{s['min']:.0f} / **{s['median']:.0f}** / {s['max']:.0f} ms"
                         + (" (NOT one fixer!)" if e["anomalies"] else ""), s["max"] <= 300 and not e["anomalies"]))
    else:
        rows.append(("election at 64 agents", "≤ 2× the floor", "not measured", None))
    rm = res.get("remote")
    if rm:
        by = remote_by_jobs(rm)
        for n, rs in by.items():
            stated = n == REMOTE_GOAL_JOBS
            start = statistics.median(r["fix_start_s"] for r in rs)
            green = statistics.median(r["last_green_s"] for r in rs)
            rows.append((f"remote backend, {n} CI jobs failing at once: the fix starts after the jobs fail",
                         f"≤ {REMOTE_FIX_START_S:.0f} s" + ("" if stated else f" (stated at {REMOTE_GOAL_JOBS} jobs)"),
                         f"**{start:.2f} s**" + (f" (runs: {each(rs, 'fix_start_s')} s)" if len(rs) > 1 else ""),
                         start <= REMOTE_FIX_START_S if stated else None))
            rows.append((f"remote backend, {n} CI jobs: the last job green after the fix",
                         f"≤ {REMOTE_GREEN_S:.0f} s" + ("" if stated else f" (stated at {REMOTE_GOAL_JOBS} jobs)"),
                         f"**{green:.2f} s**" + (f" (runs: {each(rs, 'last_green_s')} s)" if len(rs) > 1 else ""),
                         green <= REMOTE_GREEN_S if stated else None))
        worst = max(r["rates"][-1] for r in rm["runs"])
        mid = statistics.median(statistics.median(r["rates"]) for r in rm["runs"])
        stated = rm["fix_s"] >= REMOTE_RATE_FIX_S
        rows.append(("remote backend: git processes per waiting job per minute while the fix runs (lease fresh), "
                     f"{'/'.join(str(n) for n in by)} jobs", f"≤ {REMOTE_GIT_PER_MIN}"
                     + ("" if stated else f" (stated over a {REMOTE_RATE_FIX_S:.0f} s fix)"),
                     f"median {mid:.0f}, **max {worst:.0f}** (a {rm['fix_s']:.0f} s fix)",
                     worst <= REMOTE_GIT_PER_MIN if stated else None))
    else:
        rows.append((f"remote backend, {REMOTE_GOAL_JOBS} CI jobs failing at once: fix start; last green",
                     f"≤ {REMOTE_FIX_START_S:.0f} s; ≤ {REMOTE_GREEN_S:.0f} s", "not measured", None))
        rows.append(("remote backend: git processes per waiting job per minute while the fix runs",
                     f"≤ {REMOTE_GIT_PER_MIN}", "not measured", None))
    if "no hook" in g:
        base = med("no hook")
        added = {k: med(k) - base for k in ("plain shell hook", "buildlock: installed hook (install.sh)", "lefthook",
                                            "husky", "pre-commit framework") if k in g}
        ours = added.get("buildlock: installed hook (install.sh)")
        others = [v for k, v in added.items() if k in ("lefthook", "husky", "pre-commit framework")]
        text = ", ".join(f"{k.replace('buildlock: installed hook (install.sh)', 'buildlock (installed)')} "
                         f"{v:+.1f} ms" for k, v in added.items())
        rows.append(("added to a commit over no hook (anchors)", "buildlock the cheapest hook manager", text,
                     (ours is not None and others and all(ours < o for o in others)) or None))
    return rows


def render_run(res, title="Run"):
    m = res["meta"]
    out = [f"### {title}: {m['date']}", "",
           f"- machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}; temporary "
           f"repositories on {m['tmp_fs']}; {m['git']}; {m['rustc']}",
           f"- code measured: {m['code']}; release build ({m.get('linkage', 'commit-retry ' + m.get('commit_retry', 'dynamically linked'))}, "
           "as install.sh builds it)",
           f"- command: `{m['command']}`" + ("  **(QUICK MODE: few repetitions, small N: not figures to cite)**"
                                              if m["quick"] else ""),
           f"- load average (1 min) before / after: {m['load_before']} / {m['load_after']}; took {m['took_s']:.0f} s"
           + ("; per section (start–end): " + ", ".join(f"{k} {v}" for k, v in m["loads"].items()) if m.get("loads") else ""),
           ""]
    out += ["| figure | goal | measured | meets |", "|---|---|---|---|"]
    for fig, goal, val, ok in goal_rows(res):
        out.append(f"| {fig} | {goal} | {val} | {'yes' if ok else 'no' if ok is False else '—'} |")
    g = res.get("green")
    if g:
        v = g["variants"]
        base, plain = v.get("no hook", {}).get("median"), v.get("plain shell hook", {}).get("median")
        out += ["", f"Green commits (`git commit` of one staged change; check `{CHECK}`): {g['reps']} per variant after "
                f"{g['warmup']} warm-up, round-robin.", "",
                "| variant | median | p25–p75 | min–max | over no hook | vs plain hook |", "|---|---|---|---|---|---|"]
        for name, s in v.items():
            over = f"{s['median'] - base:+.1f} ms" if base else "-"
            vs = f"{s['median'] / plain:.2f}×" if plain else "-"
            out.append(f"| {name} | {fmt_ms(s['median'])} | {spread(s)} | {spread(s, 'min', 'max')} | {over} | {vs} |")
    mk = res.get("mark")
    if mk:
        out += ["", "Marking a build fixed (the fixer's passing hook run, `scope = \"commit\"`), interleaved:", "",
                "| state files on record | seen by `buildlock status` | median | p25–p75 | min–max | files after the mark |",
                "|---|---|---|---|---|---|"]
        for r in mk.values():
            s = r["ms"]
            out.append(f"| {r['files']} | {r['seen_by_status']} | {fmt_ms(s['median'])} | {spread(s)} | "
                       f"{spread(s, 'min', 'max')} | {r['files_after']:.0f} |")
    b = res.get("breakages")
    if b:
        files = ", ".join(f"`{k}` {v}" for k, v in b["files"].items())
        out += ["", f"Coordination dir after {b['breakages']} breakages (`scope = \"commit\"`, commit-retry with "
                f"`fix.command`, {b['seconds']:.0f} s): {files}; {b['bytes'] / 1024:.0f} KiB in all."]
    w = res.get("wake")
    if w:
        out += ["", "Waiting (`commit-retry` waiters; CPU over the window that ends just before the fix; wake-up "
                "from the state file's replacement to each waiter's \"retrying the commit\" line):", "",
                "| waiters | CPU, all waiters (% of one core): median (min–max) | per waiter | /proc/stat ticks would say "
                "| wake-up p50 | p99 | max | max per run | samples | the fix → every waiter committed, per run |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in w.items():
            s, k = r["cpu_pct_all"], r["wake_ms"]
            ticks = statistics.median(r["stat_ticks_pct"])
            out.append(f"| {n} | {s['median']:.2f} % ({s['min']:.2f}–{s['max']:.2f}) | {s['median'] / int(n):.3f} % | "
                       f"{ticks:.2f} % | {fmt_ms(k['p50'])} | {fmt_ms(k['p99'])} | {fmt_ms(k['max'])} | "
                       f"{', '.join(fmt_ms(x) for x in r['per_rep_max_ms'])} | {k['n']} | "
                       f"{', '.join(fmt_ms(x) for x in r.get('herd_done_ms', []))} |")
    e = res.get("election")
    if e:
        out += ["", f"Election, {e['n']} agents failing at once, each run (ms): "
                + ", ".join(f"{x:.0f}" for x in e["runs_ms"])
                + f"; min {e['ms']['min']:.0f} / median {e['ms']['median']:.0f} / max {e['ms']['max']:.0f}."
                + (f" The floor (bench/floor/elect.c), interleaved: min {e['floor_ms']['min']:.0f} / median "
                   f"{e['floor_ms']['median']:.0f} / max {e['floor_ms']['max']:.0f}." if e.get("floor_ms") else "")]
    t = res.get("takeover")
    if t:
        s = t["ms"]
        out += ["", f"Takeover: SIGKILL of the fixer → the successor's fix starts: median {fmt_ms(s['median'])} "
                f"(min {fmt_ms(s['min'])}, max {fmt_ms(s['max'])}, {s['n']} runs)."]
    rm = res.get("remote")
    if rm:
        out += ["", f"The remote backend at CI-matrix scale (bench/remote.py's `matrix` on the release binaries): N "
                f"`buildlock ci` jobs, one clone each, fail at once over `git daemon` on loopback, "
                f"`remote_poll = \"1s\"`, a {rm['fix_s']:.0f} s fix; every git process counted through a shim "
                "(the jobs, their git processes and the daemon all on this machine's cores):", "",
                "| jobs | fix starts after the jobs fail | last job green after the fix | git processes per "
                "waiting job per minute while the fix runs: median / max | all waiters' git runs while the fix ran "
                "| load (1 min) before → after |", "|---|---|---|---|---|---|"]
        for r in rm["runs"]:
            out.append(f"| {r['jobs']} | {r['fix_start_s']:.2f} s | {r['last_green_s']:.2f} s | "
                       f"{statistics.median(r['rates']):.0f} / {r['rates'][-1]:.0f} | "
                       f"{', '.join(f'{k} {v}' for k, v in r['kinds'].items())} | "
                       f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
    if res.get("notes"):
        out += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(out)


DOC_INTRO = """# Benchmarks

One command measures everything below, in one run, on the machine it runs on (the remote
backend's matrix rows included: its `remote` section runs `bench/remote.py`'s matrix; the
hand-written section "The remote backend" keeps the figures measured by hand before and after
its changes, and the election costs):

```sh
python3 bench/run.py --write     # builds the binaries as install.sh does, measures, rewrites this file
python3 bench/run.py --quick     # few repetitions, small N: checks the script itself (under a minute)
```

Benchmarks are not tests: nothing asserts a time. Every figure has its baseline measured in the
same run, interleaved with it (round-robin), and is a median of many repetitions with its spread.
`--write` keeps the run before this one, so that two runs can be compared side by side.
"""

DOC_METHOD = """## What is measured, and how

- **Green commit**: `git commit -q` of one staged change, in one repository per variant, the
  variants round-robin (each round starts one variant further) after warm-up rounds. Every variant
  runs the same trivial check, `test -z "$BENCH_MARK" || : > "$BENCH_MARK"` (a shell builtin), and
  a verification commit with `BENCH_MARK` set first proves that it really runs it. Variants: no
  hook; a plain shell hook (`exec sh -c '<check>'`); buildlock's binary symlinked as the hook;
  buildlock as `install.sh --bin-dir <release dir> <repo>` installs it; `commit-retry` (the
  installed binary) through that same installed hook; the committed-folder shim (`core.hooksPath`
  set, then install.sh, which writes `hooks/pre-commit` there); `match = "signature"` with no key
  and with many keys on record (below); and the anchors, when they install: lefthook (npm;
  `lefthook install`), husky (npm; `husky`, which sets `core.hooksPath = .husky/_`, and the check
  in `.husky/pre-commit`), the pre-commit framework (PyPI, in a virtualenv; a `local` hook with
  `entry: sh`, `args: [-c, <check>]`). The npm and PyPI packages are installed once per machine
  into `~/.cache/buildlock-bench/` and linked into each repository as its `node_modules`.
- **Keys on record**: one real failure and fix through the binary leave one real state file; the
  rest are copies of it with other signatures (so other keys and file names, named as
  `protocol/key.rs` names them), written where the store writes them: a repository after that
  many distinct breakages, each fixed within the last day. `buildlock status` is asked how many
  keys it sees. Driving that many real breakages costs O(n²) with a store that parses every state
  file on every fix.
- **Marking a build fixed**: `scope = "commit"`; the fixer's failing hook run (untimed), then its
  passing hook run (timed), which marks the key fixed. With few state files and with many (copies
  of a real one with other commit ids, topped up before every mark in case a prune removed some),
  interleaved.
- **Coordination dir after N breakages**: `scope = "commit"`; each breakage is a real
  `commit-retry` whose check fails, which is elected, runs `fix.command` (which fixes the check)
  and commits, so every breakage has its own key. Then the files under the coordination dir are
  counted, folder by folder.
- **Election**: N worktrees; N `pre-commit` processes whose check blocks reading a FIFO (no
  polling, no CPU before the start) and then fails. From writing to the FIFO to the last process's
  exit, when every agent knows its role (fixer: exit 1; wait: exit 75 with `hook.wait = false`).
  One round of each, not counted, then several runs; min, median and max. Exactly one fixer
  per run is checked and reported. Each
  round of buildlock and of its floor starts after a sync and 5.5 s: this machine's disk is ext4
  with no journal, whose inode allocator scans past every inode freed in the last 5 s (30 s before
  a sync), so a round run right after another paid for the files the one before removed.
- **The binaries**: as install.sh builds and installs them (into a throwaway repository under the
  target dir): the release build, with the hook and commit-retry linked statically, against musl
  where its Rust target and `musl-gcc` are installed, else against glibc's `libc.a`. The run's
  header says which.
- **Waiting**: N `commit-retry` waiters in N worktrees while the benchmark's fixer holds the
  role. *CPU*: over a 10 s window (two progress lines' worth: a waiter off a terminal prints one
  every 5 s) that ends just before the fix is marked, each thread's time on CPU
  from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds), summed over every thread of each
  waiter's process tree, divided by the window: the CPU of all waiters together as a % of one
  core. (`/proc/<pid>/stat` counts in 10 ms ticks: a waiter using 1 ms a second reads 0 there;
  its figure is shown beside for comparison.) *Wake-up*: from the moment the fix is marked (the
  state file's replacement, seen by inotify on `state/`; the history's "fixed" stamp if that is
  not seen) to each waiter's own stderr line saying the wait ended ("…; retrying the commit").
  The waiters are not altered to be observed: their stderr goes into pipes that one thread of
  the benchmark reads with one `select` loop, at raised priority, stamping each batch with one
  clock reading, the state dir's inotify events included. p50, p99 and max over all waiters of
  all runs, and the max of each run. *Every waiter committed*: from the mark to the last
  waiter's "committed" line (their retries are spread over up to a second on purpose, see
  docs/design.md), per run.
- **Takeover**: a fixer (`commit-retry` running a long `fix.command`) is SIGKILLed while one
  waiter waits; the delay until the waiter's own fix starts (it first stops the orphaned fix).
"""


def write_doc(path: Path, res):
    runs, remote = [], ""
    if path.exists():
        text = path.read_text()
        # The remote backend's hand-written section (before/after figures from bench/remote.py, by
        # hand): kept as it is; the `remote` section's rows are generated with the rest.
        r = re.search(r"^## The remote backend\n.*?(?=^## )", text, re.S | re.M)
        remote = r.group(0) if r else ""
        m = re.search(r"<!-- bench:runs\n(.*?)\n-->", text, re.S)
        if m:
            try:
                runs = json.loads(m.group(1))
            except ValueError:
                log(f"{path}: the stored runs are unreadable; starting afresh")
    runs = (runs + [res])[-2:]
    out = [DOC_INTRO, "## Against the goals", ""]
    tables = [goal_rows(r) for r in runs]
    heads = [f"{r['meta']['date']}{' (quick)' if r['meta']['quick'] else ''}" for r in runs]
    out += ["| figure | goal | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(runs)]
    for i, (fig, goal, _, _) in enumerate(tables[-1]):
        vals = []
        for t in tables:
            row = t[i] if i < len(t) and t[i][0] == fig else next((r for r in t if r[0] == fig), None)
            vals.append("-" if row is None else row[2] + {True: " ✓", False: " ✗", None: ""}[row[3]])
        out.append(f"| {fig} | {goal} | " + " | ".join(vals) + " |")
    out += ["", "## Runs", ""]
    for k, r in enumerate(reversed(runs)):
        out += [render_run(r, "Latest run" if k == 0 else "The run before"), ""]
    if remote:
        out += [remote.rstrip("\n"), ""]
    out += [DOC_METHOD, "<!-- bench:runs", json.dumps(runs, indent=None), "-->", ""]
    path.write_text("\n".join(out))
    log(f"wrote {path}")


def build_as_installed():
    """The binaries exactly as install.sh builds and installs them (the release build; the hook and
    commit-retry against musl or glibc's libc.a, static, where it can), installed into a throwaway
    repository under the target dir. Returns their folder and how the two were linked."""
    repo = REL.parent / "bench-install"
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    log(f"building the binaries with install.sh (into {REL.parent}) ...")
    r = subprocess.run(["sh", str(ROOT / "install.sh"), str(repo)], cwd=repo, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"install.sh failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    said = r.stdout + r.stderr
    if "against musl" in said and "musl build failed" not in said:
        linkage = "pre-commit and commit-retry static against musl"
    elif "stays dynamically linked" in said:
        linkage = "pre-commit and commit-retry dynamically linked (no static C library)"
    else:
        linkage = "pre-commit and commit-retry static against glibc"
    return repo / ".git" / COORD / INSTALLED_BIN, linkage


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--anchors", action="store_true")
    ap.add_argument("--no-anchors", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--tmp", type=Path)
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; the sections are {', '.join(SECTIONS)}")
    if args.write and args.quick and not args.doc:
        ap.error("--write with --quick would put toy figures into docs/BENCHMARKS.md; add --doc PATH to write elsewhere")
    p = QUICK if args.quick else FULL
    anchors = (args.anchors or not args.quick) and not args.no_anchors
    global REL
    REL, linkage = build_as_installed()
    log(f"the binaries: {REL} ({linkage})")
    if not SCHEDSTAT:
        log("note: /proc/<pid>/schedstat is unavailable or off: CPU falls back to 10 ms ticks")
    # No waiting for a quiet machine: every figure is a ratio against its baseline measured in the
    # same run, interleaved with it; the load each section ran at is reported beside it.
    started, load_before = time.time(), os.getloadavg()[0]
    results, loads = {}, {}
    with tempfile.TemporaryDirectory(prefix="buildlock-bench-", dir=args.tmp) as d:
        ctx = Ctx(Path(d), p, anchors)
        meta = machine(ctx.tmp)
        fns = {"hook": bench_hook, "green": bench_green, "mark": bench_mark, "breakages": bench_breakages, "scale": bench_scale,
               "election": bench_election, "wake": bench_wake, "takeover": bench_takeover, "remote": bench_remote}
        for name in SECTIONS:
            if name not in only:
                continue
            log(f"{name} ...")
            t, load0 = time.time(), os.getloadavg()[0]
            try:
                results[name] = fns[name](ctx)
            except Exception as e:  # noqa: BLE001 - a section that fails is reported, the rest go on
                traceback.print_exc()
                ctx.note(f"{name}: not measured: {type(e).__name__}: {str(e).strip()[:400]}")
            loads[name] = f"{load0:.1f}–{os.getloadavg()[0]:.1f}"
            log(f"  {name}: {time.time() - t:.0f} s at load {loads[name]}")
        results["notes"] = ctx.notes
    results["meta"] = dict(meta, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                           command=" ".join(["python3", "bench/run.py", *sys.argv[1:]]), quick=args.quick,
                           load_before=f"{load_before:.2f}", load_after=f"{os.getloadavg()[0]:.2f}",
                           took_s=time.time() - started, loads=loads,
                           linkage=linkage)
    print(render_run(results))
    print(json.dumps(results, default=str), file=sys.stderr)
    if args.write:
        write_doc(args.doc or DOC, results)


if __name__ == "__main__":
    main()
