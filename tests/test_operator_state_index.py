"""Building a task reads nothing from its stores; windows still close as if it never was rebuilt.

Windowed operators find what closes through the backend's time index (``state.backend``): RocksDB
keeps it in a column family per windowed store, written in the same WriteBatch as the store by
``write`` and by ``restore_batch`` (from the raw changelog bytes); the memory backend keeps a
sorted structure. Here:

* the index itself: what ``index_range``/``index_max`` answer after writes, deletes, restores
  (raw bytes, duplicates and tombstones in one batch), reopen; the due-time parser on raw bytes;
* tasks rebuilt from a backend (after a checkpoint, after an aborted one, after a restore, twice)
  never call ``items``/``iter_items``/``keys`` on it, and emit exactly what a task that was never
  rebuilt emits, batch by batch, for tumbling, hopping, session and sliding windows;
* a task built on a backend holding many windows reads none of them, and the first batch closes
  exactly the ones its stream time reached.
"""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rocksdict")

from streamproc import Topology, agg, serdes, windows  # noqa: E402
from streamproc.operators import RawBatch  # noqa: E402
from streamproc.plan import compile_topology  # noqa: E402
from streamproc.runtime.engine.task import Task  # noqa: E402
from streamproc.state import DELETED, MemoryBackend, RocksDBBackend  # noqa: E402
from streamproc.state import backend as B  # noqa: E402
from streamproc.state import codec as K  # noqa: E402
from streamproc.state.rocksdb import _index_cf, _raw_due  # noqa: E402

KINDS = ["tumbling", "hopping", "session", "sliding"]
STORE_KIND = {"tumbling": "window", "hopping": "window", "session": "session", "sliding": "sliding"}


# --------------------------------------------------------------------------- helpers

class _Counting:
    """Counts calls that read a whole store."""

    scans = 0

    def items(self, store):
        self.scans += 1
        return super().items(store)


class CountingMemory(_Counting, MemoryBackend):
    builds = 0

    def declare_index(self, store, kind):
        if store not in self._index and self._data.get(store):
            self.builds += 1            # a store restored before any operator declared it: indexed once
        return super().declare_index(store, kind)


class CountingRocks(_Counting, RocksDBBackend):
    def iter_items(self, store, lower=None, upper=None):
        self.scans += 1
        return super().iter_items(store, lower, upper)

    def keys(self, store):
        self.scans += 1
        return super().keys(store)


def _topology(kind: str, emit: str, grace: int | None = None):
    t = Topology("app")
    g = t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
    w = {"tumbling": windows.Tumbling(10, grace=3 if grace is None else grace),
         "hopping": windows.Hopping(10, 4, grace=2 if grace is None else grace),
         "session": windows.Session(5, grace=3 if grace is None else grace),
         "sliding": windows.Sliding(6, grace=3 if grace is None else grace)}[kind]
    (g.window(w).aggregate(n=agg.count(), total=agg.sum("v"), lo=agg.min("v"), all=agg.collect("v"),
                           name="w", emit=emit)
        .to("out", value=serdes.Json()))
    return compile_topology(t).subtopologies[0]


def _batches(seed: int, n: int = 240, keys: int = 6):
    rnd = random.Random(seed)
    ts, out = 10, []
    for i in range(n):
        ts = max(10, ts + rnd.randint(-5, 6))
        out.append((f"k{rnd.randrange(keys)}", rnd.randint(-3, 9), ts))
    cuts, i = [], 0
    while i < n:
        k = rnd.choice([1, 1, 2, 3, 7])
        cuts.append(out[i:i + k])
        i += k
    return cuts


def _run(task, batch, offset):
    raw = RawBatch("in", 0, [k.encode() for k, _, _ in batch], [json.dumps({"v": v}).encode() for _, v, _ in batch],
                   [ts for _, _, ts in batch], list(range(offset, offset + len(batch))))
    return sorted((kb, vb, ts) for _, kbs, vbs, tss in task.process(raw) for kb, vb, ts in zip(kbs, vbs, tss))


def _checkpoint(task, log=None, kind=None):
    changes = task.state.changes()
    task.state.apply()
    if log is not None:
        for k, v in changes["w"]:
            log.append((K.encode_store_key(kind, k), None if v is None else K.encode_value(v)))
        log.append(("ckpt", task.state.stream_time))


def _reference(sub, batches, log=None, kind=None):
    """Outputs per batch of a task that is never rebuilt (and its changelog, if ``log``)."""
    task = Task(sub, 0, MemoryBackend())
    out = []
    for i, b in enumerate(batches):
        out.append(_run(task, b, i * 10))
        _checkpoint(task, log, kind)
    return out, task


def _assert_index_consistent(backend, store, kind):
    """The backend's time index is exactly what the store's contents imply."""
    if isinstance(backend, MemoryBackend):
        data = backend._data.get(store, {})
        ix = backend._index[store]
        got = {(t, k) for t in ix.buckets for k in ix.buckets[t]}
        if kind == "window":                # entries of deleted windows may wait to be purged
            want = {(k[1], k) for k in data}
            assert want <= got and all(t == k[1] for t, k in got)
            assert not ix.times or any(k in data for k in ix.buckets[ix.times[0]])
            assert ix.times == sorted(ix.buckets)
            return
        else:
            want = {(B.due_of(v), k) for k, v in data.items()}
            assert ix.time_of == {k: t for t, k in want}
        assert got == want
        # times: sorted, distinct, every bucket's time (and maybe some of emptied buckets, skipped)
        assert ix.times == sorted(set(ix.times)) and set(ix.buckets) <= set(ix.times)
        assert all(ix.buckets.values()) and set(ix.buckets) == {t for t, _ in want}
        return
    main = list(backend._cf[store].items())
    idx = dict(backend._cf[_index_cf(store)].items())
    if kind == "window":
        want = {kb[-8:] + kb[:-8]: b"" for kb, _ in main}
    else:
        want = {b"t" + (_raw_due(vb) + (1 << 63)).to_bytes(8, "big") + kb: b"" for kb, vb in main}
    assert idx == want


# --------------------------------------------------------------------------- the index itself

@pytest.fixture(params=["memory", "rocksdb"])
def backend_kind(request):
    return request.param


def _backend(kind, path, stores=None):
    if kind == "memory":
        return CountingMemory()
    from streamproc.plan.model import StoreSpec
    specs = stores or [StoreSpec("w", "window", "c-w", "f", 0), StoreSpec("s", "session", "c-s", "f", 1)]
    return CountingRocks(path, specs)


def test_window_index_lists_windows_by_start_in_ranges(backend_kind, tmp_path):
    b = _backend(backend_kind, tmp_path / "t")
    assert b.declare_index("w", "window")
    assert b.index_max("w") is None and b.index_range("w", None, 10**12) == []
    wins = {("b", 20): (1,), ("a", 20): (2,), ("a", 0): (3,), (("t", 1), -5): (4,), ("c", 40): (5,)}
    b.write({"w": wins}, {})
    assert b.index_max("w") == 40
    assert b.index_range("w", None, 19) == [(("t", 1), -5), ("a", 0)]
    assert sorted(b.index_range("w", 0, 20)) == [("a", 20), ("b", 20)]
    assert b.index_range("w", 20, 100) == [("c", 40)] and b.index_range("w", 40, 100) == []
    b.write({"w": {("a", 20): DELETED, ("c", 40): DELETED, ("zz", 7): DELETED}}, {})
    assert b.index_range("w", 0, 100) == [("b", 20)] and b.index_max("w") == 20
    _assert_index_consistent(b, "w", "window")
    assert b.scans == 0


def test_due_index_follows_each_keys_due_time(backend_kind, tmp_path):
    b = _backend(backend_kind, tmp_path / "t")
    assert b.declare_index("s", "session")
    b.write({"s": {"a": [50, [1, 2]], "b": [30, [3]], "c": [[1, 2, 3, 4]]}}, {})     # c: a value of no due
    assert b.index_range("s", None, 40) == ["c", "b"]                                 # c: due MIN_TIME
    b.write({"s": {"b": [70, [3]], "a": [20, [1]]}}, {})                              # due times change
    assert b.index_range("s", None, 60) == ["c", "a"] and b.index_max("s") == 70
    b.write({"s": {"a": DELETED, "c": [5, []]}}, {})
    assert b.index_range("s", None, 100) == ["c", "b"]
    _assert_index_consistent(b, "s", "session")


def test_rocksdb_restore_batch_builds_the_index_write_would(tmp_path):
    """Raw changelog bytes, several records of one key, tombstones and keys never written, in one batch
    and across batches: the index equals the one ``write`` keeps for the same final contents."""
    from streamproc.plan.model import StoreSpec
    specs = [StoreSpec("w", "window", "c-w", "f", 0), StoreSpec("s", "sliding", "c-s", "f", 1)]
    rnd = random.Random(5)
    log_w, log_s = [], []
    for i in range(2000):
        log_w.append(((f"u{rnd.randrange(40)}", rnd.randrange(-3, 30) * 1000), None if rnd.random() < .2 else [i]))
        due = rnd.choice([rnd.randrange(-10**12, 10**12), rnd.randrange(-200, 200), 2**63 - 1, -2**63])
        value = [due] + [rnd.random()] * rnd.choice([0, 1, 20, 70000 // 1000])
        log_s.append((rnd.choice([f"u{rnd.randrange(40)}", ("t", rnd.randrange(5)), rnd.randrange(9)]),
                      None if rnd.random() < .2 else value))
    with RocksDBBackend(tmp_path / "w", specs) as a, RocksDBBackend(tmp_path / "r", specs) as b:
        for lo in range(0, 2000, 333):
            for store, log, kind in (("w", log_w, "window"), ("s", log_s, "sliding")):
                chunk = log[lo:lo + 333]
                changes = {}
                for k, v in chunk:
                    changes[k] = DELETED if v is None else v
                a.write({store: changes}, {})
                b.restore_batch({store: [(K.encode_store_key(kind, k), None if v is None else K.encode_value(v))
                                         for k, v in chunk]}, {})
        for store, kind in (("w", "window"), ("s", "sliding")):
            assert list(a._cf[_index_cf(store)].items()) == list(b._cf[_index_cf(store)].items())
            _assert_index_consistent(b, store, kind)
            assert a.index_range(store, None, 2**62) == b.index_range(store, None, 2**62)
        assert b.declare_index("s", "sliding") and not b.declare_index("s", "window")
    with RocksDBBackend(tmp_path / "r", specs) as again:                     # the index persists
        _assert_index_consistent(again, "w", "window")
        _assert_index_consistent(again, "s", "sliding")


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-300, 300), st.floats(allow_nan=False),
                          st.booleans(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)),
                min_size=0, max_size=40))
def test_the_due_time_is_read_from_raw_bytes_as_decoding_would(value):
    raw = K.encode_value(value)
    assert _raw_due(raw) == B.due_of(K.decode_value(raw))
    assert _raw_due(K.encode_value(tuple(value))) == B.MIN_TIME                    # not a list
    for cut in range(len(raw)):                                                   # truncated: never misread
        assert _raw_due(raw[:cut]) in (B.MIN_TIME, B.due_of(value))
    assert _raw_due(b"") == _raw_due(b"\x01") == B.MIN_TIME


# --------------------------------------------------------------------------- rebuilt tasks

def _compare(expected, got, start=0):
    for i, (e, g) in enumerate(zip(expected[start:], got), start):
        assert g == e, f"batch {i}: expected {e}, got {g}"
    assert len(got) == len(expected) - start


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_task_rebuilt_again_and_again_never_scans_and_closes_what_it_should(kind, emit, backend_kind, tmp_path):
    sub = _topology(kind, emit)
    batches = _batches(KINDS.index(kind) * 2 + (emit == "final"))
    expected, ref = _reference(sub, batches)
    backend = CountingMemory() if backend_kind == "memory" else CountingRocks.for_task(tmp_path / "t", sub)
    task, got, rebuilds = Task(sub, 0, backend), [], 0
    for i, b in enumerate(batches):
        if i % 3 == 2:                                  # a rebuild every 3 batches (checkpointed state)
            task = Task(sub, 0, backend)
            rebuilds += 1
        got.append(_run(task, b, i * 10))
        _checkpoint(task)
    assert rebuilds >= 15 and backend.scans == 0
    _compare(expected, got)
    assert any(expected), "the scenario must emit"
    assert sorted(map(repr, backend.items("w"))) == sorted(map(repr, ref.state.backend.items("w")))
    _assert_index_consistent(backend, "w", STORE_KIND[kind])
    if backend_kind == "rocksdb":
        backend.close()
        backend = CountingRocks.for_task(tmp_path / "t", sub)     # reopened: same index, no scan to build
        Task(sub, 0, backend)
        assert backend.scans == 0
        backend.close()


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuilt", "same-task"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_aborted_checkpoint_then_the_same_batch_again(kind, rebuild, backend_kind, tmp_path):
    """EOS abort: ``state.discard()``, the task rebuilt (or kept: its operators notice the discard), the
    batch processed again: the outputs of the aborted attempt never count, the rest is unchanged."""
    sub = _topology(kind, "final")
    batches = _batches(11)
    expected, _ = _reference(sub, batches)
    backend = CountingMemory() if backend_kind == "memory" else CountingRocks.for_task(tmp_path / "t", sub)
    task, got = Task(sub, 0, backend), []
    for i, b in enumerate(batches):
        if i % 4 == 1:
            _run(task, b, i * 10)                       # processed, then its checkpoint aborts
            task.state.discard()
            if rebuild:
                task = Task(sub, 0, backend)
        got.append(_run(task, b, i * 10))
        _checkpoint(task)
    assert backend.scans == 0
    _compare(expected, got)
    _assert_index_consistent(backend, "w", STORE_KIND[kind])


def _restore(backend, entries, kind):
    """The restore loop's writes: RocksDB gets the raw changelog bytes, the memory backend decoded records."""
    for lo in range(0, len(entries), 7):
        chunk = entries[lo:lo + 7]
        recs = [e for e in chunk if e[0] != "ckpt"]
        meta = {}
        sts = [e[1] for e in chunk if e[0] == "ckpt"]
        if sts:
            meta["stream_time"] = max(sts)
        if isinstance(backend, RocksDBBackend):
            backend.restore_batch({"w": recs}, meta)
        else:
            backend.write({"w": {K.decode_store_key(kind, kb): DELETED if vb is None else K.decode_value(vb)
                                 for kb, vb in recs}}, meta)


@pytest.mark.parametrize("kind", KINDS)
def test_restored_twice_into_one_backend_then_built_without_scanning(kind, backend_kind, tmp_path):
    """Restore the changelog up to checkpoint A, build the task; restore A..B into the same backend (a
    re-assignment), build again: no build reads the stores, and the task continues after B exactly as
    the task that wrote the changelog."""
    sub = _topology(kind, "final")
    batches = _batches(23)
    log: list = []
    expected, _ = _reference(sub, batches, log, STORE_KIND[kind])
    ckpts = [i for i, e in enumerate(log) if e[0] == "ckpt"]
    a, b = len(batches) // 3, 2 * len(batches) // 3
    backend = CountingMemory() if backend_kind == "memory" else CountingRocks.for_task(tmp_path / "t", sub)
    _restore(backend, log[:ckpts[a - 1] + 1], STORE_KIND[kind])
    Task(sub, 0, backend)
    _restore(backend, log[ckpts[a - 1] + 1:ckpts[b - 1] + 1], STORE_KIND[kind])
    task = Task(sub, 0, backend)
    assert backend.scans == 0
    if backend_kind == "memory":
        assert backend.builds == 1       # the memory backend indexes a store restored before it was declared
    _assert_index_consistent(backend, "w", STORE_KIND[kind])
    got = []
    for i in range(b, len(batches)):
        got.append(_run(task, batches[i], i * 10))
        _checkpoint(task)
        if i % 5 == 0:
            task = Task(sub, 0, backend)
    assert backend.scans == 0
    _compare(expected, got, b)
    assert any(expected[b:])


@pytest.mark.parametrize("kind", KINDS)
def test_a_task_on_many_stored_windows_reads_none_to_build_and_closes_only_what_is_due(kind, backend_kind,
                                                                                      tmp_path):
    sub = _topology(kind, "final", grace=200)           # all open at the end of the first batch
    n = 3000
    recs = [(f"key-{i}", i % 7, 1000 + (i % 100)) for i in range(n)]
    ref = Task(sub, 0, MemoryBackend())
    _run(ref, recs, 0)
    _checkpoint(ref)
    backend = CountingMemory() if backend_kind == "memory" else CountingRocks.for_task(tmp_path / "t", sub)
    backend.write({"w": dict(ref.state.backend.items("w"))}, {"stream_time": ref.state.stream_time})
    if backend_kind == "memory":
        Task(sub, 0, backend)                          # the memory backend's one-time index of restored data
        backend.builds = 0
    stored = len(backend.items("w"))
    backend.scans = 0
    task = Task(sub, 0, backend)
    assert backend.scans == 0 and stored >= n
    advance = [("x", 0, 1250)]                          # closes about what the first half of the timestamps opened
    expected = _run(ref, advance, n)
    got = _run(task, advance, n)
    assert backend.scans == 0
    assert got == expected and 0 < len(got) < stored
