"""streamproc.fingerprint: deterministic identities of functions and store definitions."""
from __future__ import annotations

import functools
import importlib.util
import json
import operator
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from streamproc.fingerprint import digest, fingerprint_function, function_identity

REPO = Path(__file__).resolve().parents[1]

# A topology-like module: every construct whose identity used to depend on memory addresses,
# file paths or PYTHONHASHSEED (nested code objects, frozenset constants), plus closures,
# defaults, globals, a same-module helper, a callable object, a bound method and a partial.
SOURCE = textwrap.dedent('''\
    import functools

    LIMIT = 10
    KINDS = ("a", "b")
    FROZEN = frozenset({"x", "y", "z"})


    def helper(v):
        return v * 2 + LIMIT


    def gen_sum(values):
        return sum(v * 2 for v in values if v > 1)


    def list_comp(values):
        return [v + 1 for v in values]


    def dict_comp(values):
        return {str(v): v for v in values}


    def set_comp(values):
        return {v % 3 for v in values}


    def nested_lambda(values):
        key = lambda v: -v
        return sorted(values, key=key)


    def set_literal(v):
        return v in {"a", "b", "c"}


    def frozen_global(v):
        return v in FROZEN


    def default_arg(v, factor=3, opts={"k": 1, "j": {"s", "t"}}, *, scale=1.5):
        return v * factor * scale + len(opts)


    def uses_global(v):
        return v < LIMIT and v not in KINDS


    def uses_helper(v):
        return helper(v) + 1


    def _make_closure(threshold, tags, fn):
        def closure(v):
            return v > threshold and v in tags and fn(v)
        return closure


    closure_data = _make_closure(5, {"u", "w", "v"}, {"m": [1, 2], "n": frozenset({"p", "q"})})
    closure_fn = _make_closure(5, frozenset({"u"}), lambda v: v + 1)


    class Scaler:
        def __init__(self, k):
            self.k = k

        def __call__(self, v):
            return v * self.k

        def apply(self, v):
            return v + 7


    scaler = Scaler(2)
    bound = scaler.apply
    part = functools.partial(default_arg, factor=7)
    ''')

_module_level = lambda v: v * 2 + 1      # noqa: E731

NAMES = ["helper", "gen_sum", "list_comp", "dict_comp", "set_comp", "nested_lambda", "set_literal",
         "frozen_global", "default_arg", "uses_global", "uses_helper", "closure_data", "closure_fn",
         "scaler", "bound", "part"]

def _load(path: Path, name: str = "fpmod"):
    """Import ``path`` as module ``name`` (not registered in sys.modules; the subprocesses use
    "fpmod" too, and a class's identity includes its module)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fingerprints(mod) -> dict[str, str]:
    return {n: fingerprint_function(getattr(mod, n)) for n in NAMES}


def _write(tmp_path: Path, source: str, name: str = "topo.py") -> Path:
    path = tmp_path / name
    path.write_text(source)
    return path


_CHILD = textwrap.dedent('''\
    import importlib.util, json, sys
    from streamproc.fingerprint import fingerprint_function
    path, names = sys.argv[1], sys.argv[2].split(",")
    spec = importlib.util.spec_from_file_location("fpmod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if len(sys.argv) > 3:             # warm up: let 3.11+ specialise (quicken) the bytecode first
        for _ in range(200):
            for n in ("gen_sum", "list_comp", "dict_comp", "set_comp", "nested_lambda"):
                getattr(mod, n)([1, 2, 3])
    print(json.dumps({n: fingerprint_function(getattr(mod, n)) for n in names}))
    ''')


def _spawn(path: Path, seed: str, warm: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHASHSEED=seed,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-c", _CHILD, str(path), ",".join(NAMES)] + (["warm"] if warm else [])
    return subprocess.Popen(args, env=env, cwd=str(path.parent), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict[str, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


# -- determinism across processes, hash seeds, paths and line numbers ------------------------------
def test_same_fingerprint_across_processes_hash_seeds_paths_and_line_numbers(tmp_path):
    original = _write(tmp_path, SOURCE)
    moved_dir = tmp_path / "elsewhere" / "deeper"
    moved_dir.mkdir(parents=True)
    moved = _write(moved_dir, "\n" * 5 + "# moved, and pushed down a few lines\n" + SOURCE, "other_name.py")

    runs = {f"seed={seed}": _spawn(original, seed) for seed in ("0", "1", "12345", "random")}
    runs["moved seed=1"] = _spawn(moved, "1")
    runs["moved seed=random warm"] = _spawn(moved, "random", warm=True)
    results = {label: _result(proc) for label, proc in runs.items()}

    for label, got in results.items():
        assert set(got) == set(NAMES), label
    for name in NAMES:
        per_run = {label: got[name] for label, got in results.items()}
        assert len(set(per_run.values())) == 1, f"{name} differs between runs: {per_run}"
    # and the parent process (its own random hash seed) agrees
    assert _fingerprints(_load(original)) == results["seed=0"]
    assert len(set(results["seed=0"].values())) == len(NAMES)    # the functions are told apart


def test_hot_function_keeps_its_identity():
    def f(values):
        return sum(1 for v in values if v in {"a", "b"}) + len(values)

    before = function_identity(f)
    for _ in range(500):       # enough for 3.11+ to specialise the bytecode
        f(["a", "c"])
    assert function_identity(f) == before


# -- different after a real change -----------------------------------------------------------------
# (what changes in SOURCE, the replacement, the functions whose fingerprint must change: exactly those)
VARIANTS = [
    ("v * 2 for v", "v * 3 for v", {"gen_sum"}),                              # constant in a genexpr
    ("if v > 1)", "if v >= 1)", {"gen_sum"}),                                 # operator in a genexpr
    ("[v + 1 for", "[v - 1 for", {"list_comp"}),                              # listcomp operator
    ("{str(v): v", "{repr(v): v", {"dict_comp"}),                             # global name in a dictcomp
    ("{v % 3 for", "{v % 4 for", {"set_comp"}),                               # setcomp constant
    ("lambda v: -v", "lambda v: +v", {"nested_lambda"}),                      # nested lambda body
    ('{"a", "b", "c"}', '{"a", "b", "d"}', {"set_literal"}),                  # set literal element
    ('frozenset({"x", "y", "z"})', 'frozenset({"x", "y", "w"})', {"frozen_global"}),   # global frozenset
    ("factor=3,", "factor=4,", {"default_arg", "part"}),                      # default (part holds the func)
    ('"j": {"s", "t"}', '"j": {"s", "u"}', {"default_arg", "part"}),          # set inside a dict default
    ("scale=1.5", "scale=2.5", {"default_arg", "part"}),                      # keyword-only default
    ('KINDS = ("a", "b")', 'KINDS = ("a", "c")', {"uses_global"}),            # global constant
    ("LIMIT = 10", "LIMIT = 11", {"helper", "uses_global", "uses_helper"}),   # ... used via a helper too
    ("return v * 2 + LIMIT", "return v * 2 - LIMIT", {"helper", "uses_helper"}),  # same-module helper body
    ("_make_closure(5, {", "_make_closure(6, {", {"closure_data"}),           # closure value
    ('{"u", "w", "v"}', '{"u", "w", "x"}', {"closure_data"}),                 # closure set element
    ('"m": [1, 2]', '"m": [1, 3]', {"closure_data"}),                         # list in a closure dict
    ("lambda v: v + 1)", "lambda v: v + 2)", {"closure_fn"}),                 # closure over a function
    ("v > threshold", "v >= threshold", {"closure_data", "closure_fn"}),      # the closure's own code
    ("return v * self.k", "return v / self.k", {"scaler", "bound"}),          # __call__ (bound's __self__)
    ("return v + 7", "return v + 8", {"bound"}),                              # a bound method's function
    ("factor=7)", "factor=8)", {"part"}),                                     # a partial's keyword
]


def test_a_real_change_changes_exactly_the_functions_that_use_it(tmp_path):
    base = _fingerprints(_load(_write(tmp_path, SOURCE, "base.py")))
    assert _fingerprints(_load(_write(tmp_path, SOURCE, "again.py"))) == base
    failures = []
    for i, (old, new, expected) in enumerate(VARIANTS):
        assert SOURCE.count(old) == 1, old
        got = _fingerprints(_load(_write(tmp_path, SOURCE.replace(old, new), f"variant{i}.py")))
        changed = {n for n in NAMES if got[n] != base[n]}
        if changed != expected:
            failures.append(f"{old!r} -> {new!r}: changed {sorted(changed)}, expected {sorted(expected)}")
    assert not failures, "\n".join(failures)


def test_changes_that_are_not_real_keep_the_identity(tmp_path):
    def documented(v):
        """Doubles v."""
        return v * 2

    def redocumented(v):
        """Returns twice v (reworded)."""
        return v * 2

    def undocumented(v):
        return v * 2

    assert fingerprint_function(documented) == fingerprint_function(redocumented) == \
        fingerprint_function(undocumented)

    # a docstring-like first constant that the code does load is part of the code
    def returns_doc():
        "abc"
        return "abc"

    def returns_other():
        "abd"
        return "abd"

    assert fingerprint_function(returns_doc) != fingerprint_function(returns_other)

    # the same source loaded as two modules (another name, another place): plain functions agree
    one = _load(_write(tmp_path, SOURCE, "one.py"), "pkg_one.topology")
    two = _load(_write(tmp_path, "# comment\n" + SOURCE, "two.py"), "pkg_two.elsewhere")
    for name in NAMES:
        if name not in ("scaler", "bound"):      # instances are identified by their class's module
            assert fingerprint_function(getattr(one, name)) == fingerprint_function(getattr(two, name)), name

    # a function made inside a factory equals the same code at module level (CO_NESTED is ignored)
    def factory():
        return lambda v: v * 2 + 1

    assert factory().__code__.co_flags != _module_level.__code__.co_flags
    assert fingerprint_function(factory()) == fingerprint_function(_module_level)


# -- equal / different within one process ----------------------------------------------------------
def test_identical_definitions_are_equal_different_code_is_not():
    a = lambda row: row["x"] in {"p", "q"}          # noqa: E731
    b = lambda row: row["x"] in {"p", "q"}          # noqa: E731
    c = lambda row: row["x"] in {"p", "r"}          # noqa: E731
    d = lambda row: row["y"] in {"p", "q"}          # noqa: E731
    assert a is not b and a.__code__ is not b.__code__
    assert function_identity(a) == function_identity(b)
    assert fingerprint_function(a) == fingerprint_function(b)
    assert len({fingerprint_function(f) for f in (a, c, d)}) == 3

    def make(k):
        return lambda v: v + k

    assert fingerprint_function(make(1)) == fingerprint_function(make(1))
    assert fingerprint_function(make(1)) != fingerprint_function(make(2))
    assert fingerprint_function(make(1)) != fingerprint_function(make(1.0))    # int vs float
    assert fingerprint_function(make("1")) != fingerprint_function(make(b"1"))
    assert fingerprint_function(make(True)) != fingerprint_function(make(1))
    # dicts and sets by value whatever their insertion order
    assert fingerprint_function(make({"a": 1, "b": {2, 3}})) == \
        fingerprint_function(make({"b": {3, 2}, "a": 1}))
    assert fingerprint_function(make({"a": 1, "b": 2})) != fingerprint_function(make({"a": 2, "b": 1}))
    assert fingerprint_function(make([1, 2])) != fingerprint_function(make((1, 2)))


def test_fingerprint_format():
    fp = fingerprint_function(len)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert function_identity(len).startswith(b"streamproc-fn/1")
    with pytest.raises(TypeError):
        function_identity(42)


# -- cycles ------------------------------------------------------------------------------------------
def test_cycles_terminate():
    def make_recursive(base):
        def rec(n):
            return base if n <= 0 else rec(n - 1)
        return rec

    r1, r2, r3 = make_recursive(0), make_recursive(0), make_recursive(1)
    assert r1(3) == 0
    assert fingerprint_function(r1) == fingerprint_function(r2) != fingerprint_function(r3)

    holder: list = []
    holder.append(lambda: holder)          # a closure over a list holding the function itself
    table: dict = {}
    table["me"] = table
    table["f"] = lambda: table
    assert len(fingerprint_function(holder[0])) == 16
    assert len(fingerprint_function(table["f"])) == 16


def test_mutually_recursive_same_module_functions(tmp_path):
    src = textwrap.dedent('''\
        def even(n):
            return True if n == 0 else odd(n - 1)

        def odd(n):
            return False if n == 0 else even(n - 1)
        ''')
    m1 = _load(_write(tmp_path, src, "m1.py"))
    m2 = _load(_write(tmp_path, src.replace("False if", "None if"), "m2.py"))
    assert m1.even(4) is True
    assert fingerprint_function(m1.even) != fingerprint_function(m1.odd)
    assert fingerprint_function(m1.even) != fingerprint_function(m2.even)     # odd's body changed


def test_dense_helper_graph_is_linear(tmp_path):
    # 25 helpers that all call each other: a guard that only stops cycles explores 25! paths
    n = 25
    body = " + ".join(f"h{j}(v - 1)" for j in range(n))
    src = "\n".join(f"def h{i}(v):\n    return 0 if v <= 0 else {i} + {body}\n" for i in range(n))
    mod = _load(_write(tmp_path, src, "dense.py"))
    result: list = []
    worker = threading.Thread(target=lambda: result.append(fingerprint_function(mod.h0)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result and len(result[0]) == 16, "fingerprinting a dense helper graph did not finish in 10 s"


# -- other callables ---------------------------------------------------------------------------------
class _Doubler:
    def __init__(self, k):
        self.k = k

    def __call__(self, v):
        return v * self.k

    def apply(self, v):
        return v * 2


class _Tripler(_Doubler):
    def __call__(self, v):
        return v * 3


class _FakeSerde:
    def __init__(self, fmt):
        self.fmt = fmt

    def fingerprint(self) -> str:
        return f"fake:{self.fmt}"


def test_other_callables_without_reprs():
    fp = fingerprint_function
    assert fp(operator.itemgetter("x")) == fp(operator.itemgetter("x")) != fp(operator.itemgetter("y"))
    assert fp(operator.itemgetter("x", "y")) != fp(operator.itemgetter("x"))
    assert fp(operator.attrgetter("a.b")) == fp(operator.attrgetter("a.b")) != fp(operator.attrgetter("a.c"))
    assert fp(operator.attrgetter("a")) != fp(operator.itemgetter("a"))
    get_k = fp(operator.methodcaller("get", "k", default=1))
    assert get_k == fp(operator.methodcaller("get", "k", default=1))
    assert get_k != fp(operator.methodcaller("get", "k", default=2))

    assert fp(len) == fp(len) != fp(abs)
    assert fp(str.upper) != fp(str.lower)
    assert fp({"a": 1}.get) == fp({"a": 1}.get) != fp({"a": 2}.get)      # C method bound to data

    def add(a, b, *, scale=1):
        return (a + b) * scale

    p = functools.partial(add, 1, scale=2)
    assert fp(p) == fp(functools.partial(add, 1, scale=2))
    assert fp(p) != fp(functools.partial(add, 2, scale=2))
    assert fp(p) != fp(functools.partial(add, 1, scale=3))
    assert fp(functools.partial(max, key=abs)) != fp(functools.partial(max, key=len))

    # bound methods: the function and the class of __self__ (not its state, not its address)
    assert fp(_Doubler(2).apply) == fp(_Doubler(5).apply)
    assert fp(_Doubler(2).apply) != fp(_Tripler(2).apply)               # another class
    assert fp(_Doubler(2).apply) != fp(_Doubler(2).__call__)

    # callable objects: class + the identity of its Python __call__
    assert fp(_Doubler(2)) == fp(_Doubler(3))
    assert fp(_Doubler(2)) != fp(_Tripler(2))
    assert fp(_Doubler) != fp(_Tripler)                                  # classes by name

    # objects with a fingerprint() (serdes, aggregations) count by it when captured
    def uses(serde):
        return lambda v: serde
    assert fp(uses(_FakeSerde("json"))) == fp(uses(_FakeSerde("json")))
    assert fp(uses(_FakeSerde("json"))) != fp(uses(_FakeSerde("avro")))
    # a plain object counts by its class only: its address never leaks in
    assert fp(uses(object())) == fp(uses(object()))
    assert fp(uses(object())) != fp(uses(_Doubler(1)))
    assert b" at 0x" not in function_identity(uses(object()))


def test_real_streamproc_objects_in_closures():
    from streamproc import agg, serdes

    def capture(x):
        return lambda v: x
    assert fingerprint_function(capture(agg.count())) == fingerprint_function(capture(agg.count()))
    assert fingerprint_function(capture(agg.count())) != fingerprint_function(capture(agg.sum("x")))
    assert fingerprint_function(capture(serdes.Int(64))) == fingerprint_function(capture(serdes.Int(64)))
    assert fingerprint_function(capture(serdes.Int(64))) != fingerprint_function(capture(serdes.Int(32)))
    assert fingerprint_function(capture(serdes.Int(64))) != fingerprint_function(capture(serdes.Json()))


# -- digest ------------------------------------------------------------------------------------------
def test_digest():
    base = digest("window", "tumbling(60s)", ("count:", "sum:x"))
    assert base == digest("window", "tumbling(60s)", ["count:", "sum:x"])
    assert len(base) == 16 and int(base, 16) >= 0
    # length-prefixed: moving a boundary, a type or a nesting level changes the digest
    assert base != digest("windowt", "umbling(60s)", ("count:", "sum:x"))
    assert base != digest("window", "tumbling(60s)", "count:", "sum:x")
    assert digest("1") != digest(1) != digest(b"1") != digest(None)
    assert digest("a", "b") != digest("ab") != digest(("a", "b"))
    # pinned: the digest is part of stored state, it must not drift between releases unnoticed
    assert digest("kv", None, 7, b"\x00") == "e634cf98a688a413"
    with pytest.raises(TypeError):
        digest(object())
    with pytest.raises(TypeError):
        digest({"a": 1})
