#!/usr/bin/env python3
"""How stable are failure signatures on real test suites run concurrently?

    python3 bench/signatures.py                    # every suite, 3 rounds (about 10 minutes)
    python3 bench/signatures.py --rounds 5 --suites cargo,make
    python3 bench/signatures.py --captures DIR     # only re-sign the outputs a run saved in DIR
    python3 bench/signatures.py --timing           # also: signature time on 16 MiB of output

For each suite it makes one git repository with a real project, commits a breakage on the branch
the agents start from (the common case: a bad merge), and adds AGENTS worktrees, each with its own
harmless change, as agents have: a test or two more (so pass counts differ) and, for some, code
that draws a compiler or runtime warning. Then, round after round, it runs the suite's check in
every worktree at the same instant, as the pre-commit hook does (`sh -c CHECK` at the worktree
root, stdout and stderr into one pipe, stdin closed), saves each output, and signs it with the
real signature code (`cargo run --example signature`). Between rounds half the agents touch a
source file, as an agent at work does, so some rebuild (and print warnings) and some do not.

The figure per suite: the number of distinct signatures among the AGENTS outputs of one round
(goal: 1), and over all rounds together (goal: 1: an agent failing a minute later must join the
same fixer). Then two other breakages are run in every worktree for one round each: B, another
bug, and C, a bug in A's place that fails A's tests with other values (the case most at risk of
being merged with A). No two breakages may share a signature.

Suites (the toolchains must be installed; the script installs what the registries give):
  pytest       cachetools (its sdist from PyPI, its own test suite) under pytest with
               pytest-xdist (-n 2: worker ids, output order), pytest-randomly (a random seed and
               order per run) and --durations
  pytest-warn  a project written here whose tests draw DeprecationWarnings, ResourceWarnings
               collected at garbage-collection time, a warning when an operation is slow under
               load, timings and tmp_path output, and a failing assertion on a set of strings
               (hash-randomised order)
  pytest-q     the same under `pytest -q` on one process (no header: pytest is known by its
               sections only)
  cargo        a crate written here, `cargo test` (own target dir per worktree, parallel tests)
  npm          `npm test` running node's built-in test runner, with a deprecation warning that
               carries the pid and a warning when an operation is slow
  make         `make -j4` of C files with -Wall -Wextra; one file fails to compile

Options: --agents N (16), --rounds N (3), --suites LIST, --out DIR (where repositories and
outputs go; default a fresh dir under ~/.cache/buildlock-sigbench, outside /tmp so worktree paths
are not mistaken for temp paths), --sigtool PATH (a built `signature` example, e.g. one built
from an older commit, to compare rules on the same outputs), --show (print each distinct
normalised text), --json PATH (write the results), --no-own (agents make no change of their
own: only concurrency and timing differ between them).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "buildlock-sigbench"
# Worktree names of different lengths: banner widths and paths then differ as they do for agents.
NAMES = ["alpha", "b", "charlie-long-name", "d4", "echo", "fox-trot", "g", "hotel-7", "india",
         "juliet-two", "k", "lima", "mike-m", "november-9", "o", "papa"]


def name(i):
    return NAMES[i] if i < len(NAMES) else f"agent-{i}"


def sh(cmd, cwd=None, env=None, check=True):
    r = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{cmd}` in {cwd} exited {r.returncode}:\n{r.stdout[-3000:]}")
    return r.stdout


def write(root, files):
    for rel, text in files.items():
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def replace(path, old, new):
    text = Path(path).read_text()
    if old not in text:
        raise RuntimeError(f"{path}: breakage anchor not found: {old!r}")
    Path(path).write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------------------------------------
# Suites. Each: setup(repo) writes the project; check(wt) is the command; break_a / break_b /
# break_c apply a breakage to a tree (C: in A's place, failing A's tests with other values); own(wt, i) is agent i's own harmless change; touch(wt) is what an
# agent at work does between two commits.


class Suite:
    name = ""
    env = {}

    def touch(self, wt):
        pass


def python_env():
    """A venv with pytest, pytest-xdist and pytest-randomly, and cachetools' sdist."""
    venv = CACHE / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(py), "-m", "pip", "install", "-q", "pytest", "pytest-xdist", "pytest-randomly"])
    sdists = CACHE / "sdists"
    if not list(sdists.glob("cachetools-*.tar.gz")):
        sh([str(py), "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
            "-d", str(sdists), "cachetools==8.0.1"])
    return py, sorted(sdists.glob("cachetools-*.tar.gz"))[-1]


class Pytest(Suite):
    name = "pytest"

    def setup(self, repo):
        self.py, sdist = python_env()
        with tarfile.open(sdist) as t:
            t.extractall(repo.parent / "sdist", filter="data")
        src = next((repo.parent / "sdist").iterdir())
        for part in ["src", "tests", "pyproject.toml", "setup.cfg", "tox.ini", "LICENSE"]:
            p = src / part
            if p.is_dir():
                shutil.copytree(p, repo / part)
            elif p.exists():
                shutil.copy(p, repo / part)
        write(repo, {".gitignore": "__pycache__/\n.pytest_cache/\n"})

    def check(self, wt):
        return f"PYTHONPATH=src {self.py} -m pytest -n 2 --durations=5"

    def break_a(self, wt):
        # LRUCache evicts the most recently used item instead of the least.
        replace(wt / "src/cachetools/__init__.py",
                "key = next(iter(self.__order))", "key = next(reversed(self.__order))")

    def break_b(self, wt):
        # typedkey forgets the argument types.
        replace(wt / "src/cachetools/keys.py", "return key + tuple(map(type, args))", "return key")

    def break_c(self, wt):
        # LRUCache: a read makes an item the least recently used (A's tests, other values).
        replace(wt / "src/cachetools/__init__.py",
                "self.__order.move_to_end(key)\n        except KeyError:  # __missing__",
                "self.__order.move_to_end(key, last=False)\n        except KeyError:  # __missing__")

    def own(self, wt, i):
        tests = "".join(f"\n\ndef test_agent_{i}_{k}():\n    assert {k} + 1 == {k + 1}\n"
                        for k in range(i % 4))
        write(wt, {f"tests/test_agent_{name(i)}.py": "import cachetools\n" + tests})

    def touch(self, wt):
        (wt / "src/cachetools/func.py").touch()


PYWARN_LIB = '''"""A small inventory library."""
import threading
import time
import warnings


class Inventory:
    def __init__(self):
        self.items = {}
        self._lock = threading.Lock()

    def add(self, name, count=1):
        with self._lock:
            self.items[name] = self.items.get(name, 0) + count
        return self.items[name]

    def remove(self, name, count=1):
        with self._lock:
            have = self.items.get(name, 0)
            if count > have:
                raise ValueError(f"only {have} of {name!r} left")
            self.items[name] = have - count
        return self.items[name]

    def names(self):
        return {n for n, c in self.items.items() if c > 0}

    def total(self):
        return sum(self.items.values())

    def refill(self, names, budget=0.05):
        """Adds one of each; warns when it took longer than the budget (it does under load)."""
        start = time.perf_counter()
        for n in names:
            self.add(n)
            time.sleep(0.001)
        took = time.perf_counter() - start
        if took > budget:
            warnings.warn(f"refill took {took:.3f}s, over its {budget}s budget", RuntimeWarning)
        return took


def count_items(inv):
    warnings.warn("count_items() is deprecated, use Inventory.total()", DeprecationWarning,
                  stacklevel=2)
    return inv.total()


class Report:
    """Holds a file open; a cycle keeps it alive until the garbage collector runs."""

    def __init__(self, path):
        self.f = open(path, "w")
        self.me = self

    def line(self, text):
        self.f.write(text + "\\n")
'''

PYWARN_TESTS = '''import gc
import time

import pytest

from inventory import Inventory, Report, count_items


@pytest.fixture
def inv():
    i = Inventory()
    for n in ["apple", "pear", "plum", "fig", "kiwi", "lime"]:
        i.add(n, 2)
    return i


def test_add(inv):
    assert inv.add("apple") == 3


def test_remove(inv):
    assert inv.remove("pear") == 1


def test_remove_too_many(inv):
    with pytest.raises(ValueError):
        inv.remove("fig", 5)


def test_deprecated_count(inv):
    assert count_items(inv) == 12


def test_refill_is_quick(inv):
    took = inv.refill(["apple", "pear", "plum"] * 5)
    print(f"refill took {took:.4f}s")
    assert took < 5


@pytest.mark.parametrize("k", range(8))
def test_reports(tmp_path, k):
    r = Report(tmp_path / f"report-{k}.txt")
    r.line(f"report {k} at {time.time()}")
    if k % 3 == 0:
        gc.collect()


def test_names(inv, tmp_path):
    print(f"working in {tmp_path}, started {time.time():.3f}")
    inv.remove("kiwi", 2)
    assert inv.names() == {"apple", "pear", "plum", "fig", "lime"}


def test_total_after_refill(inv):
    inv.refill(["apple"] * 4)
    assert inv.total() == 16
'''


class PytestWarn(Suite):
    name = "pytest-warn"

    def setup(self, repo):
        self.py, _ = python_env()
        write(repo, {"inventory.py": PYWARN_LIB, "tests/test_inventory.py": PYWARN_TESTS,
                     "tests/conftest.py": "", "pytest.ini": "[pytest]\naddopts = -W default\n",
                     ".gitignore": "__pycache__/\n.pytest_cache/\n"})

    def check(self, wt):
        return f"PYTHONPATH=. {self.py} -m pytest -n 2 --durations=3 -p no:randomly"

    def break_a(self, wt):
        # names() keeps the items that ran out.
        replace(wt / "inventory.py", "if c > 0}", "if c >= 0}")

    def break_b(self, wt):
        # total() counts kinds, not items.
        replace(wt / "inventory.py", "return sum(self.items.values())", "return len(self.items)")

    def break_c(self, wt):
        # names() shouts (A's test, other values).
        replace(wt / "inventory.py", "return {n for n", "return {n.upper() for n")

    def own(self, wt, i):
        tests = "".join(f"\n\ndef test_agent_{i}_{k}():\n    assert Inventory().add('x', {k}) == {k}\n"
                        for k in range(i % 4))
        write(wt, {f"tests/test_agent_{name(i)}.py": "from inventory import Inventory\n" + tests})


class PytestQuiet(PytestWarn):
    """The same project under `pytest -q` on one process: no header, no banner before the
    failures, warnings breaking the progress line, and a tally without a banner."""
    name = "pytest-q"

    def check(self, wt):
        return f"PYTHONPATH=. {self.py} -m pytest -q -p no:randomly"


CARGO_LIB = '''//! A small crate with parallel tests.

pub mod text {
    /// Words of a line, lowercased.
    pub fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(|w| w.to_lowercase()).collect()
    }

    /// How often each word occurs, most frequent first, then by word.
    pub fn counts(line: &str) -> Vec<(String, usize)> {
        let mut m = std::collections::HashMap::new();
        for w in words(line) {
            *m.entry(w).or_insert(0) += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

pub mod math {
    pub fn mean(xs: &[f64]) -> Option<f64> {
        if xs.is_empty() {
            return None;
        }
        Some(xs.iter().sum::<f64>() / xs.len() as f64)
    }

    pub fn clamp(x: i64, lo: i64, hi: i64) -> i64 {
        x.max(lo).min(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_lowercase() {
        assert_eq!(text::words("A b C"), vec!["a", "b", "c"]);
    }

    #[test]
    fn counts_orders_by_frequency() {
        println!("counting at {:?}", std::time::Instant::now());
        let c = text::counts("b a b c a b");
        assert_eq!(c[0], ("b".to_string(), 3));
        assert_eq!(c[1], ("a".to_string(), 2));
    }

    #[test]
    fn mean_of_three() {
        assert_eq!(math::mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }

    #[test]
    fn clamp_bounds() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(math::clamp(15, 0, 10), 10);
        assert_eq!(math::clamp(-3, 0, 10), 0);
    }

    #[test]
    fn slow_one() {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(math::mean(&[]).is_none());
    }
}
'''

CARGO_IT = '''use sigcrate::{math, text};

#[test]
fn counts_of_a_sentence() {
    let set: std::collections::HashSet<_> = text::words("x y z").into_iter().collect();
    eprintln!("words: {set:?}");
    assert_eq!(text::counts("to be or not to be").len(), 4);
}

#[test]
fn mean_and_clamp() {
    let m = math::mean(&[2.0, 4.0]).unwrap();
    assert_eq!(math::clamp(m as i64, 0, 2), 2);
}
'''


class Cargo(Suite):
    name = "cargo"

    def setup(self, repo):
        write(repo, {"Cargo.toml": '[package]\nname = "sigcrate"\nversion = "0.1.0"\n'
                     'edition = "2021"\n\n[dependencies]\n',
                     "src/lib.rs": CARGO_LIB, "tests/it.rs": CARGO_IT, ".gitignore": "target/\n"})

    def check(self, wt):
        return "cargo test --offline"

    @property
    def env(self):
        # Each worktree its own target dir, as a fresh worktree has.
        return {"CARGO_TARGET_DIR": ""}

    def break_a(self, wt):
        # mean divides by one too many.
        replace(wt / "src/lib.rs", "/ xs.len() as f64", "/ (xs.len() + 1) as f64")

    def break_b(self, wt):
        # counts sorts ascending.
        replace(wt / "src/lib.rs", "b.1.cmp(&a.1)", "a.1.cmp(&b.1)")

    def break_c(self, wt):
        # mean divides by two too many (A's tests, other values).
        replace(wt / "src/lib.rs", "/ xs.len() as f64", "/ (xs.len() + 2) as f64")

    def own(self, wt, i):
        extra = "".join(f"\n#[test]\nfn agent_{i}_{k}() {{\n    assert_eq!(sigcrate::math::clamp({k}, 0, 9), {k});\n}}\n"
                        for k in range(i % 3))
        if i % 2:
            # Code with warnings (an unused variable, dead code): the agent's own work in progress.
            extra += f"\n#[allow(dead_code)]\nfn helper_{i}() {{\n    let unused_{i} = {i};\n}}\n"
        write(wt, {f"tests/agent_{name(i).replace('-', '_')}.rs": extra or "\n"})

    def touch(self, wt):
        (wt / "src/lib.rs").touch()


NODE_LIB = '''"use strict";
exports.slug = (s) => s.trim().toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
exports.sum = (xs) => xs.reduce((a, b) => a + b, 0);
exports.uniq = (xs) => [...new Set(xs)];
exports.wait = (ms) => new Promise((r) => setTimeout(r, ms));
exports.timed = async (f) => {
  const t = process.hrtime.bigint();
  const v = await f();
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (ms > 30) process.emitWarning(`operation took ${ms.toFixed(1)} ms`, "SlowWarning");
  return v;
};
'''

NODE_TEST_A = '''const test = require("node:test");
const assert = require("node:assert");
const lib = require("../lib");

test("slug", () => {
  assert.strictEqual(lib.slug("  Hello, World! "), "hello-world");
});

test("sum", async () => {
  await lib.wait(10);
  assert.strictEqual(lib.sum([1, 2, 3, 4]), 10);
});

test("timed", async () => {
  const v = await lib.timed(async () => { await lib.wait(5); return 7; });
  console.log(`timed at ${Date.now()}`);
  assert.strictEqual(v, 7);
});
'''

NODE_TEST_B = '''const test = require("node:test");
const assert = require("node:assert");
const lib = require("../lib");

test("uniq keeps order", () => {
  const b = new Buffer("abc"); // deprecated: node warns with its pid
  assert.deepStrictEqual(lib.uniq([3, 1, 3, 2, 1]), [3, 1, 2]);
  assert.strictEqual(b.length, 3);
});

test("uniq of words", async (t) => {
  await t.test("letters", () => {
    assert.deepStrictEqual(lib.uniq("abcab".split("")), ["a", "b", "c"]);
  });
  await t.test("numbers", async () => {
    await lib.wait(3);
    assert.deepStrictEqual(lib.uniq([1, 1]), [1]);
  });
});
'''


class Npm(Suite):
    name = "npm"

    def setup(self, repo):
        write(repo, {"package.json": json.dumps({"name": "sigpkg", "version": "1.0.0",
                                                 "private": True,
                                                 "scripts": {"test": "node --test test/"}},
                                                indent=2) + "\n",
                     "lib.js": NODE_LIB, "test/a.test.js": NODE_TEST_A,
                     "test/b.test.js": NODE_TEST_B})

    def check(self, wt):
        return "npm test"

    def break_a(self, wt):
        # sum starts at one.
        replace(wt / "lib.js", "(a, b) => a + b, 0)", "(a, b) => a + b, 1)")

    def break_b(self, wt):
        # uniq sorts.
        replace(wt / "lib.js", "[...new Set(xs)]", "[...new Set(xs)].sort()")

    def break_c(self, wt):
        # sum starts at two (A's test, another value).
        replace(wt / "lib.js", "(a, b) => a + b, 0)", "(a, b) => a + b, 2)")

    def own(self, wt, i):
        tests = "".join(f'\ntest("agent {i} {k}", () => {{ assert.strictEqual(lib.slug("A {k}"), "a-{k}"); }});\n'
                        for k in range(i % 3))
        write(wt, {f"test/agent-{name(i)}.test.js":
                   'const test = require("node:test");\nconst assert = require("node:assert");\n'
                   'const lib = require("../lib");\n' + tests})


C_FILES = {
    "src/util.h": "#ifndef UTIL_H\n#define UTIL_H\nint add(int a, int b);\nint scale(int x);\n"
                  "const char *greet(void);\n#endif\n",
    "src/add.c": '#include "util.h"\n\nint add(int a, int b) {\n    return a + b;\n}\n',
    "src/scale.c": '#include "util.h"\n\nint scale(int x) {\n    int factor = 3;\n'
                   '    return x * factor;\n}\n',
    "src/greet.c": '#include "util.h"\n\nconst char *greet(void) {\n    return "hello";\n}\n',
    "src/main.c": '#include <stdio.h>\n#include "util.h"\n\nint main(void) {\n'
                  '    printf("%s %d\\n", greet(), scale(add(1, 2)));\n    return 0;\n}\n',
    "Makefile": "CFLAGS = -Wall -Wextra -O0\nOBJ = src/add.o src/scale.o src/greet.o src/main.o\n\n"
                "app: $(OBJ)\n\t$(CC) -o $@ $(OBJ)\n\n%.o: %.c src/util.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
                "clean:\n\trm -f app $(OBJ)\n",
    ".gitignore": "*.o\napp\n",
}


class Make(Suite):
    name = "make"

    def setup(self, repo):
        write(repo, C_FILES)

    def check(self, wt):
        return "make -j4"

    def break_a(self, wt):
        # An undeclared identifier.
        replace(wt / "src/scale.c", "return x * factor;", "return x * factr;")

    def break_b(self, wt):
        # A missing semicolon in another file.
        replace(wt / "src/greet.c", 'return "hello";', 'return "hello"')

    def break_c(self, wt):
        # Another undeclared identifier on A's line.
        replace(wt / "src/scale.c", "return x * factor;", "return x * factorr;")

    def own(self, wt, i):
        if i % 2:
            # An unused variable and a comparison of signed and unsigned: warnings.
            replace(wt / "src/add.c", "    return a + b;",
                    f"    int unused_{i} = {i};\n    unsigned u = 1;\n    if (a < u) {{ }}\n    return a + b;")
        if i % 3 == 0:
            replace(wt / "src/main.c", "    return 0;", f"    /* agent {i} */\n    return 0;")

    def touch(self, wt):
        (wt / "src/add.c").touch()


SUITES = {s.name: s for s in [Pytest(), PytestWarn(), PytestQuiet(), Cargo(), Npm(), Make()]}


# ---------------------------------------------------------------------------------------------


def run_round(suite, wts, out_dir):
    """Runs the check in every worktree at one instant; saves each output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    barrier = threading.Barrier(len(wts))
    results = {}

    def one(i, wt):
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None) if "CARGO_TARGET_DIR" in suite.env else None
        env.update({k: v for k, v in suite.env.items() if v})
        barrier.wait()
        t = time.monotonic()
        p = subprocess.run(["sh", "-c", suite.check(wt)], cwd=wt, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        f = out_dir / f"{wt.name}.out"
        f.write_bytes(p.stdout)
        results[i] = (wt, f, p.returncode, time.monotonic() - t)

    threads = [threading.Thread(target=one, args=(i, wt)) for i, wt in enumerate(wts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(wts))]


def sigtool_path(arg):
    if arg:
        return Path(arg)
    env = dict(os.environ)
    sh(["cargo", "build", "-q", "-p", "buildlock-core", "--example", "signature"], cwd=ROOT, env=env)
    target = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "examples" / "signature"


def sign(tool, pairs, show=False):
    """Signatures of (worktree, output file) pairs, with the normalised text when show."""
    stdin = "".join(f"{wt}\t{f}\n" for wt, f in pairs)
    r = subprocess.run([str(tool)] + (["--show"] if show else []), input=stdin, text=True,
                       stdout=subprocess.PIPE, check=True)
    if not show:
        return r.stdout.split(), None
    sigs, texts = [], []
    for line in r.stdout.splitlines():
        if line.startswith("    "):
            texts[-1] += line[4:] + "\n"
        else:
            sigs.append(line)
            texts.append("")
    return sigs, texts


def prepare(suite, base, agents, own):
    repo = base / suite.name / "repo"
    if repo.parent.exists():
        shutil.rmtree(repo.parent)
    repo.mkdir(parents=True)
    suite.setup(repo)
    sh("git init -q -b main && git add -A && git -c user.name=b -c user.email=b@x commit -qm project",
       cwd=repo)
    suite.break_a(repo)
    sh("git -c user.name=b -c user.email=b@x commit -qam 'a bad merge'", cwd=repo)
    wts = []
    for i in range(agents):
        wt = base / suite.name / "wt" / name(i)
        sh(["git", "worktree", "add", "-q", "-b", name(i), str(wt), "main"], cwd=repo)
        if own:
            suite.own(wt, i)
        wts.append(wt)
    return wts


def measure(suite, base, agents, rounds, own):
    wts = prepare(suite, base, agents, own)
    res = {"suite": suite.name, "check": suite.check(wts[0]), "own": own, "rounds": []}
    for r in range(rounds):
        if r > 0:
            for k, wt in enumerate(wts):
                if (k + r) % 2 == 0:
                    suite.touch(wt)
        t = time.monotonic()
        runs = run_round(suite, wts, base / "captures" / suite.name / "A" / f"round-{r + 1}")
        codes = sorted({c for _, _, c, _ in runs})
        res["rounds"].append({"breakage": "A", "seconds": round(time.monotonic() - t, 1),
                              "exit_codes": codes, "codes": [c for _, _, c, _ in runs],
                              "files": [[str(wt), str(f)] for wt, f, _, _ in runs]})
        print(f"  {suite.name} A round {r + 1}: {time.monotonic() - t:.0f} s, exit codes {codes}",
              flush=True)
    # The other breakages on a tree without A: back to the commit before the bad merge, then each
    # agent's own change again, then the breakage. B is another bug; C is a bug in the same place
    # as A that fails the same tests with other values: the case most at risk of being merged.
    for other in ["B", "C"]:
        for i, wt in enumerate(wts):
            sh(["git", "checkout", "-q", "main~1", "--", "."], cwd=wt)
            if own:
                suite.own(wt, i)
            getattr(suite, f"break_{other.lower()}")(wt)
        t = time.monotonic()
        runs = run_round(suite, wts, base / "captures" / suite.name / other / "round-1")
        codes = sorted({c for _, _, c, _ in runs})
        res["rounds"].append({"breakage": other, "seconds": round(time.monotonic() - t, 1),
                              "exit_codes": codes, "codes": [c for _, _, c, _ in runs],
                              "files": [[str(wt), str(f)] for wt, f, _, _ in runs]})
        print(f"  {suite.name} {other} round 1: {time.monotonic() - t:.0f} s, exit codes {codes}",
              flush=True)
    return res


def analyse(res, tool):
    out = {"suite": res["suite"], "check": res["check"], "per_round": [], "others": {},
           "all": {}, "passed": 0, "texts": {}, "count": {}}
    for r in res["rounds"]:
        sigs, texts = sign(tool, [(wt, f) for wt, f in r["files"]], show=True)
        out["passed"] += sum(1 for c in r.get("codes", []) if c == 0)
        b = r["breakage"]
        if b == "A":
            out["per_round"].append(len(set(sigs)))
        else:
            out["others"].setdefault(b, []).append(len(set(sigs)))
        out["all"].setdefault(b, set()).update(sigs)
        for s, t in zip(sigs, texts):
            out["texts"].setdefault(s, t)
            out["count"][s] = out["count"].get(s, 0) + 1
    groups = list(out["all"].values())
    out["overlap"] = sum(len(g & h) for i, g in enumerate(groups) for h in groups[i + 1:])
    return out


def differences(a, limit=6):
    """Lines that set the other signatures of one breakage apart from its most common one."""
    notes = []
    for group, all_sigs in a["all"].items():
        sigs = sorted(all_sigs, key=lambda s: -a["count"][s])
        if len(sigs) < 2:
            continue
        main = set(a["texts"][sigs[0]].splitlines())
        seen = {}
        for s in sigs[1:]:
            other = set(a["texts"][s].splitlines())
            for line in sorted(other ^ main):
                seen[line] = seen.get(line, 0) + 1
        top = sorted(seen.items(), key=lambda kv: -kv[1])[:limit]
        notes.append((group, len(sigs), [line for line, _ in top]))
    return notes


def report(analyses, agents):
    for a in analyses:
        for which, n, lines in differences(a):
            print(f"\n{a['suite']}, breakage {which}: {n} signatures; lines that differ "
                  f"(normalised, most frequent first):")
            for line in lines:
                print(f"    {line[:150]}")
        if a["passed"]:
            print(f"\n{a['suite']}: {a['passed']} runs PASSED (not a failure: a bad breakage)")
    print()
    print(f"| suite | check | distinct signatures of {agents}, breakage A, per round | over all rounds "
          f"| breakage B | breakage C | two breakages share a signature |")
    print("|---|---|---|---|---|---|---|")
    for a in analyses:
        others = [", ".join(map(str, a["others"].get(k, []))) or "-" for k in "BC"]
        print(f"| {a['suite']} | `{a['check'].split(' -m ')[-1]}` | "
              f"{', '.join(map(str, a['per_round']))} | {len(a['all'].get('A', ()))} | "
              f"{others[0]} | {others[1]} | {'YES' if a['overlap'] else 'never'} |")


def timing(tool, base):
    """Median time of one signature over a 16 MiB output made of real failure outputs."""
    # The fixtures (failures of cargo, npm, pytest and make, from two worktrees and from 16 at
    # once), repeated up to 16 MiB: the most the hook keeps of an output.
    fixtures = sorted((ROOT / "crates/buildlock-protocol/tests/fixtures/signature").rglob("*.out"))
    blob = b"".join(f.read_bytes() for f in fixtures)
    data = bytearray()
    while len(data) < 16 << 20:
        data += blob
    f = base / "big.out"
    f.write_bytes(bytes(data[: 16 << 20]))
    ms = subprocess.run([str(tool), "--time", "5", "/tmp/sigfx/wt-alpha", str(f)], text=True,
                        stdout=subprocess.PIPE, check=True).stdout.strip()
    print(f"\nsignature of 16 MiB of failure output: {ms} ms (median of 5, {tool})")
    return float(ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--out")
    ap.add_argument("--captures", help="re-sign the outputs saved by an earlier run in this dir")
    ap.add_argument("--sigtool")
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--no-own", action="store_true",
                    help="agents make no change of their own: only concurrency differs")
    ap.add_argument("--json")
    args = ap.parse_args()
    tool = sigtool_path(args.sigtool)
    if args.captures:
        base = Path(args.captures)
        raws = json.loads((base / "runs.json").read_text())
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
        base.mkdir(parents=True, exist_ok=True)
        print(f"repositories and outputs in {base}", flush=True)
        raws = []
        for s in args.suites.split(","):
            if s not in SUITES:
                sys.exit(f"unknown suite {s!r}: one of {', '.join(SUITES)}")
            try:
                raws.append(measure(SUITES[s], base, args.agents, args.rounds, not args.no_own))
            except Exception as e:  # a suite whose toolchain is missing: say so, go on
                print(f"  {s}: not measured: {e}", flush=True)
            (base / "runs.json").write_text(json.dumps(raws, indent=1))
    analyses = [analyse(r, tool) for r in raws]
    if args.show:
        for a in analyses:
            for s, t in a["texts"].items():
                which = "".join(k for k, v in a["all"].items() if s in v)
                print(f"\n--- {a['suite']} {which} {s}\n{t}", end="")
    report(analyses, args.agents)
    result = {"agents": args.agents, "sigtool": str(tool),
              "own_changes": all(r.get("own", True) for r in raws),
              "suites": [
        {**{k: v for k, v in a.items() if k not in ("texts", "count", "all")},
         "signatures": {k: sorted(v) for k, v in a["all"].items()}}
        for a in analyses]}
    if args.timing:
        result["ms_16mib"] = timing(tool, base)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
