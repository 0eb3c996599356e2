"""The joins' state paths (the performance work on ``operators/join.py`` and ``state/store.py``).

* The stream-stream join computes a batch at once and keeps its records only in its stores: the same
  batches give the same results and the same state on every backend, whatever the batching, the
  checkpoints, the task rebuilds (over the backend) and the rolled-back checkpoints; the changelog
  (what ``changes()`` takes) always rebuilds the backend's state; a key that came and went between two
  checkpoints reaches neither.
* ``Store.keep_reads`` (a table's rows kept decoded on a backend that decodes) and the global table's
  read cache follow every write, checkpoint and rollback.
"""
from __future__ import annotations

import random

import pytest

from streamproc import Topology, serdes, windows
from streamproc.operators import RawBatch
from streamproc.operators.global_table import GlobalStore
from streamproc.plan import compile_topology
from streamproc.runtime.engine.task import Task
from streamproc.state import DELETED, Backend, MemoryBackend, TaskState
from streamproc.state.rocksdb import RocksDBBackend

S, J = serdes.String(), serdes.Json()


def _ss(how: str, before=10, after=None, grace=5):
    t = Topology("ss")
    left, right = t.stream("l", key=S, value=J), t.stream("r", key=S, value=J)
    left.join(right, how=how, window=windows.JoinWindow(before, after=after, grace=grace), name="j").to(
        "out", value=J)
    return compile_topology(t).subtopologies[0]


def _raw(topic, recs, offset=0):
    return RawBatch(topic, 0, [S.serialize(k) for k, _, _ in recs], [J.serialize(v) for _, v, _ in recs],
                    [ts for _, _, ts in recs], list(range(offset, offset + len(recs))))


def _decoded(produced) -> list:
    """The results as ``(key, value, timestamp)``, sorted (the order inside a batch is not pinned)."""
    return sorted(((S.deserialize(k), J.deserialize(v), t) for _, ks, vs, ts in produced
                   for k, v, t in zip(ks, vs, ts)), key=repr)


def _stored(backend, store: str) -> dict:
    return dict(backend.items(store))


class _Run:
    """One task over one backend, driven by a script of steps; it can be rebuilt over its backend."""

    def __init__(self, st, backend):
        self.st, self.backend = st, backend
        self.task = Task(st, 0, backend)
        self.log: dict = {"j-left": {}, "j-right": {}}       # the changelogs, replayed

    def step(self, op, arg):
        if op == "batch":
            return _decoded(self.task.process_many([_raw("l", arg[0], 0), _raw("r", arg[1], 1000)]))
        if op == "checkpoint":
            for store, entries in self.task.state.changes().items():
                for k, v in entries:
                    if v is None:
                        self.log[store].pop(k, None)
                    else:
                        self.log[store][k] = v
            self.task.state.apply()
            for store in ("j-left", "j-right"):
                assert _stored(self.backend, store) == self.log[store], store
            return None
        if op == "rollback":
            self.task.state.discard()
            self.task = Task(self.st, 0, self.backend)
            return None
        assert op == "rebuild"
        self.task = Task(self.st, 0, self.backend)
        return None


def _script(rnd: random.Random, n_steps: int, keys: int):
    """Batches of both sides (keys drawn from ``keys``, time mostly increasing, some late), checkpoints,
    rebuilds and rollbacks (a rollback only right after a checkpoint, as the worker's)."""
    t = 100
    steps = []
    for _ in range(n_steps):
        sides = []
        for _side in range(2):
            recs = []
            for _ in range(rnd.choice([0, 1, 2, 5, 9])):
                t = max(0, t + rnd.randint(-6, 8))
                recs.append((f"k{rnd.randrange(keys)}", rnd.randrange(100), t))
            sides.append(recs)
        steps.append(("batch", sides))
        r = rnd.random()
        if r < 0.3:
            steps.append(("checkpoint", None))
            if rnd.random() < 0.2:
                steps.append(("rebuild", None))
        elif r < 0.36:
            steps.append(("rollback", None))
    steps.append(("checkpoint", None))
    return steps


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@pytest.mark.parametrize("seed", range(6))
def test_stream_stream_join_same_on_every_backend_through_checkpoints_rebuilds_and_rollbacks(tmp_path, how, seed):
    rnd = random.Random(seed)
    st = _ss(how, before=rnd.choice([3, 10]), after=rnd.choice([None, 0, 7]), grace=rnd.choice([0, 5]))
    steps = _script(rnd, 60, keys=rnd.choice([2, 4, 12]))
    rocks = RocksDBBackend.for_task(tmp_path / "rocks", st)
    try:
        runs = [_Run(st, MemoryBackend()), _Run(st, rocks)]
        for op, arg in steps:
            outs = [r.step(op, arg) for r in runs]
            assert outs[0] == outs[1], (op, arg)
        assert runs[0].log == runs[1].log
        assert runs[0].task.metrics == runs[1].task.metrics
    finally:
        rocks.close()


@pytest.mark.parametrize("how", ["inner", "left", "outer"])
@pytest.mark.parametrize("seed", range(4))
def test_stream_stream_join_results_do_not_depend_on_the_batching(how, seed):
    """The same records one batch at a time and one record at a time: the same results and state."""
    rnd = random.Random(100 + seed)
    st = _ss(how)
    steps = [s for s in _script(rnd, 40, keys=3) if s[0] == "batch"]
    whole, single = Task(st, 0, MemoryBackend()), Task(st, 0, MemoryBackend())
    out_whole, out_single = [], []
    for _, (lrecs, rrecs) in steps:
        out_whole += _decoded(whole.process_many([_raw("l", lrecs, 0), _raw("r", rrecs, 1000)]))
        for side, (k, v, ts) in _merged(lrecs, rrecs):     # the order process_many takes them in
            out_single += _decoded(single.process(_raw("lr"[side], [(k, v, ts)])))
        assert sorted(out_whole, key=repr) == sorted(out_single, key=repr)
    assert whole.snapshot("j-left") == single.snapshot("j-left")
    assert whole.snapshot("j-right") == single.snapshot("j-right")
    assert whole.metrics == single.metrics


def _merged(lrecs: list, rrecs: list) -> list:
    """Both partitions' records in event-time order (``Task.process_many``): the head with the smaller
    timestamp first (ties: the smaller offset, the left one here), each partition's order kept."""
    out, i, j = [], 0, 0
    while i < len(lrecs) or j < len(rrecs):
        if j == len(rrecs) or (i < len(lrecs) and lrecs[i][2] <= rrecs[j][2]):
            out.append((0, lrecs[i]))
            i += 1
        else:
            out.append((1, rrecs[j]))
            j += 1
    return out


def test_a_key_that_came_and_went_between_two_checkpoints_reaches_neither_changelog_nor_backend():
    st = _ss("inner", before=10, grace=0)
    backend = MemoryBackend()
    task = Task(st, 0, backend)
    task.process(_raw("l", [("old", 1, 100)]))
    task.state.changes()
    task.state.apply()                                          # "old" is checkpointed
    task.process(_raw("l", [("brief", 2, 105)]))                # stored, then closed by time below
    task.process(_raw("r", [("brief", "x", 106)]))
    task.process(_raw("r", [("z", "y", 200)]))                  # both "old" and "brief" close
    changes = {s: dict(e) for s, e in task.state.changes().items()}
    task.state.apply()
    assert changes["j-left"] == {"old": None}                   # a tombstone only for what the backend held
    assert "brief" not in changes["j-right"] and set(changes["j-right"]) == {"z"}
    assert _stored(backend, "j-left") == {}


def test_a_key_deleted_then_stored_again_keeps_its_tombstone_semantics():
    """A key the backend holds, closed and stored again before the next checkpoint: the checkpoint
    writes its new value (nothing is dropped for a key the backend holds)."""
    st = _ss("inner", before=5, grace=0)
    backend = MemoryBackend()
    task = Task(st, 0, backend)
    task.process(_raw("l", [("k", 1, 100)]))
    task.state.changes()
    task.state.apply()
    task.process(_raw("l", [("k", 2, 200)]))                    # the first closes, the second is stored
    changes = {s: dict(e) for s, e in task.state.changes().items()}
    task.state.apply()
    assert changes["j-left"]["k"][1:] == [[200, 2, 0]]
    assert _stored(backend, "j-left")["k"][1:] == [[200, 2, 0]]


# ------------------------------------------------------------------------------------------ read caches

class _Decoding(Backend):
    """A backend that hands out copies (as RocksDB decodes) and counts lookups."""

    def __init__(self):
        self.data: dict = {}
        self.meta: dict = {}
        self.lookups = 0

    def get(self, store, key):
        self.lookups += 1
        v = self.data.get(store, {}).get(key)
        return None if v is None else _copy(v)

    def get_many(self, store, keys):
        return [self.get(store, k) for k in keys]

    def items(self, store):
        return [(k, _copy(v)) for k, v in self.data.get(store, {}).items()]

    def get_meta(self, name, default=None):
        return self.meta.get(name, default)

    def write(self, changes, meta):
        for store, kv in changes.items():
            d = self.data.setdefault(store, {})
            for k, v in kv.items():
                if v is DELETED:
                    d.pop(k, None)
                else:
                    d[k] = _copy(v)
        self.meta.update(meta)


def _copy(v):
    return [_copy(x) for x in v] if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def test_read_cache_follows_writes_checkpoints_and_rollbacks():
    backend = _Decoding()
    state = TaskState(backend, ["t"])
    s = state.store("t")
    s.keep_reads(3)
    s.put("a", [1, "a1"])
    state.changes()
    state.apply()
    assert s.get_many(["a", "b"]) == [[1, "a1"], None]
    n = backend.lookups
    assert s.get_many(["a", "b"]) == [[1, "a1"], None] and s.get("a") == [1, "a1"]
    assert backend.lookups == n                                  # kept, the missing key too
    s.put("a", [2, "a2"])
    s.delete_many(["b"])
    assert s.get_many(["a", "b"]) == [[2, "a2"], None]           # the write cache first
    state.changes()
    assert s.get_many(["a"]) == [[2, "a2"]]                      # taken by the checkpoint: what the backend gets
    state.apply()
    assert s.get("a") == [2, "a2"] and backend.lookups == n
    s.put("a", [3, "a3"])
    state.changes()
    state.discard()                                              # rolled back: the backend never got it
    assert s.get("a") == [2, "a2"]
    assert s.get_many(["c", "d", "e", "f"]) == [None] * 4        # past the limit: emptied, not grown
    assert len(s._reads) <= 3


def test_memory_backend_keeps_no_read_cache():
    state = TaskState(MemoryBackend(), ["t"])
    state.store("t").keep_reads(10)
    assert state.store("t")._reads is None


def _st_topology():
    t = Topology("st")
    tab = t.table("tab", key=S, value=J, name="tab")
    t.stream("s", key=S, value=J).join(tab, how="left").to("out", value=J)
    return compile_topology(t).subtopologies[0]


def test_stream_table_join_with_kept_rows_sees_every_update(tmp_path):
    st = _st_topology()
    rnd = random.Random(5)
    rocks = RocksDBBackend.for_task(tmp_path / "rocks", st)
    try:
        tasks = [Task(st, 0, MemoryBackend()), Task(st, 0, rocks)]
        t = 0
        for i in range(300):
            t += 1
            if rnd.random() < 0.4:
                k = f"k{rnd.randrange(6)}"
                raw = _raw("tab", [(k, None if rnd.random() < 0.2 else {"v": i}, t)], i)
                if raw.values[0] == b"null":
                    raw.values[0] = None
            else:
                raw = _raw("s", [(f"k{rnd.randrange(8)}", {"i": i}, t)], i)
            outs = [_decoded(task.process(raw)) for task in tasks]
            assert outs[0] == outs[1]
            r = rnd.random()
            if r < 0.15:
                for task in tasks:
                    task.state.changes()
                    task.state.apply()
            elif r < 0.2:
                for j, task in enumerate(tasks):
                    task.state.changes()
                    task.state.discard()
                    tasks[j] = Task(st, 0, task.state.backend)
    finally:
        rocks.close()


def test_global_table_rows_follow_apply():
    t = Topology("g")
    g = t.global_table("glob", key=S, value=J, name="glob")
    t.stream("s", key=S, value=J).join(g, how="left").to("out", value=J)
    spec = compile_topology(t).global_tables[0]
    backend = _Decoding()
    gs = GlobalStore(spec, backend)
    gs.apply([_raw("glob", [("a", {"v": 1}, 1)])])
    assert gs.rows(["a", "b"]) == [[1, {"v": 1}], None]
    n = backend.lookups
    assert gs.rows(["a", "b"]) == [[1, {"v": 1}], None] and backend.lookups == n
    raw = _raw("glob", [("a", {"v": 2}, 2), ("b", {"v": 3}, 3)], 1)
    gs.apply([raw])
    assert gs.rows(["a", "b"]) == [[2, {"v": 2}], [3, {"v": 3}]]
    tomb = _raw("glob", [("a", None, 4)], 3)
    tomb.values[0] = None
    gs.apply([tomb])
    assert gs.rows(["a"]) == [None]
