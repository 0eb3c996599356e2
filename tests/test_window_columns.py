"""Tumbling/hopping aggregations whose open windows are held as int64 columns (``operators/_fold.py``,
``WindowColumns``) give exactly what the plain per-state fold gives: the same results in the same order,
the same store contents, the same changelog records per checkpoint, across checkpoints, rollbacks, stores
rebuilt from a backend, and values the columns cannot hold (floats, huge ints), which hand the windows
back to the plain fold."""
from __future__ import annotations

import numpy as np
import pytest

from streamproc import Topology, agg, serdes, windows
from streamproc.operators import Batch
from streamproc.plan import compile_topology
from streamproc.runtime.engine.task import Task
from streamproc.state import MemoryBackend


def _task(window, aggs, backend=None):
    t = Topology("cols")
    (t.stream("in", key=serdes.String(), value=serdes.Json())
     .group_by_key().window(window).aggregate(**aggs, emit="final", name="w").to("out"))
    plan = compile_topology(t)
    st = plan.subtopologies[0]
    task = Task(st, 0, backend if backend is not None else MemoryBackend())
    return task, task.operator("w")


def _aggs():
    return {"n": agg.count(), "s": agg.sum("x"), "lo": agg.min("x"), "hi": agg.max("x")}


def _feed(task, op, keys, values, ts):
    """One batch through the operator, as the task's source would stamp it; its results."""
    st = np.maximum.accumulate(np.asarray(ts, dtype=np.int64))
    np.maximum(st, task.state.stream_time, out=st)
    task.state.stream_time = int(st[-1])
    out = op.process(Batch(list(keys), list(values), np.asarray(ts, dtype=np.int64), st))
    return list(zip(out.keys, out.values, out.timestamps.tolist()))


def _stream(rng, n, n_keys, spread, big=False, floats_at=None):
    keys = [f"k{int(i)}" for i in rng.integers(0, n_keys, n)]
    xs = rng.integers(-1000, 1000, n).tolist()
    if big:
        xs = [x * (1 << 61) for x in xs]                 # sums leave the int64-safe range
    values = [{"x": x} for x in xs]
    if floats_at is not None:
        values[floats_at] = {"x": 0.5}
    ts = (np.arange(n) * 7 + rng.integers(-spread, 1, n)).clip(0).tolist()
    return keys, values, ts


def _run(window, keys, values, ts, rng_cuts, columns: bool, rollback_every=0):
    """Feed in random batches with checkpoints (and rollbacks) between them: every result, every checkpoint's
    changes, and the store's final contents."""
    backend = MemoryBackend()
    task, op = _task(window, _aggs(), backend)
    if not columns:
        op._columns = None
    results, changes = [], []
    cuts = [0] + sorted(set(rng_cuts)) + [len(keys)]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        if a == b:
            continue
        results += _feed(task, op, keys[a:b], values[a:b], ts[a:b])
        if rollback_every and i % rollback_every == rollback_every - 1:
            task.state.discard()                          # as a rolled-back checkpoint: rebuilt over the backend
            task = Task(task.subtopology, 0, backend)
            op = task.operator("w")
            if not columns:
                op._columns = None
            results.append("rollback")
            continue
        if i % 3 == 2:
            ch = task.state.changes()
            changes.append(sorted(ch["w"], key=repr))
            task.state.apply()
    return results, changes, sorted(task.snapshot("w").items(), key=repr), op


@pytest.mark.parametrize("window", [windows.Tumbling(100, grace=20), windows.Hopping(100, 30, grace=10)],
                         ids=["tumbling", "hopping"])
@pytest.mark.parametrize("seed", range(6))
def test_columns_give_what_the_plain_fold_gives(window, seed):
    rng = np.random.default_rng(seed)
    keys, values, ts = _stream(rng, 3000, int(rng.integers(3, 60)), int(rng.integers(0, 200)))
    cuts = rng.integers(0, len(keys), int(rng.integers(5, 80))).tolist()
    rollback = int(rng.integers(0, 2)) * 5
    got = _run(window, keys, values, ts, cuts, True, rollback)
    want = _run(window, keys, values, ts, cuts, False, rollback)
    assert got[:3] == want[:3]
    assert got[3]._columns is not None                        # the columns did the folding
    assert any(r != "rollback" for r in got[0])


@pytest.mark.parametrize("case", ["floats", "big"])
def test_values_the_columns_cannot_hold_go_back_to_the_plain_fold(case):
    rng = np.random.default_rng(7)
    keys, values, ts = _stream(rng, 2000, 20, 50, big=case == "big", floats_at=1200 if case == "floats" else None)
    cuts = list(range(0, 2000, 97))
    got = _run(windows.Tumbling(100, grace=20), keys, values, ts, cuts, True)
    want = _run(windows.Tumbling(100, grace=20), keys, values, ts, cuts, False)
    assert got[:3] == want[:3]
    assert got[3]._columns is None                             # handed back, for good


def test_windows_stored_before_are_read_into_the_columns_and_emitted_once():
    rng = np.random.default_rng(3)
    keys, values, ts = _stream(rng, 1000, 10, 30)
    outs = []
    for columns in (True, False):
        backend = MemoryBackend()
        task, op = _task(windows.Tumbling(1000, grace=0), _aggs(), backend)
        if not columns:
            op._columns = None
        out = _feed(task, op, keys[:500], values[:500], ts[:500])
        task.state.changes()
        task.state.apply()
        again = Task(task.subtopology, 0, backend)                  # a restart: state from the backend
        op2 = again.operator("w")
        if not columns:
            op2._columns = None
        out += _feed(again, op2, keys[500:], values[500:], ts[500:])
        out += _feed(again, op2, ["k0"], [{"x": 1}], [100_000])      # closes everything
        outs.append((out, sorted(again.snapshot("w").items(), key=repr)))
    assert outs[0] == outs[1]
    assert len({(k, v["window_start"]) for k, v, _ in outs[0][0]}) == len(outs[0][0])


def test_a_checkpoint_takes_each_changed_window_once_and_later_changes_again():
    task, op = _task(windows.Tumbling(1000), {"n": agg.count(), "s": agg.sum("x")})
    _feed(task, op, ["a", "b", "a"], [{"x": 1}, {"x": 2}, {"x": 3}], [10, 20, 30])
    assert sorted(task.state.changes()["w"]) == [(("a", 0), (30, 2, 4)), (("b", 0), (20, 1, 2))]
    task.state.apply()
    _feed(task, op, ["a"], [{"x": 5}], [40])
    assert task.state.changes()["w"] == [(("a", 0), (40, 3, 9))]   # only what changed since
    task.state.apply()
    assert task.state.changes()["w"] == []
    task.state.apply()
    assert task.state.store("w").get(("a", 0)) == (40, 3, 9) and task.state.store("w").get(("b", 0)) == (20, 1, 2)
