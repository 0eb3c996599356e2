"""Sliding windows kept as per-window aggregates (``operators/_sliding.py``).

* both representations of a key (Python lists for few windows, numpy columns for many) give what
  tests/reference_model.py gives, for count/sum/min/max and for the arrival-ordered aggregations
  (first/last/collect): a window created after some of its records arrived folds them in arrival
  order, as ``agg.first``/``agg.last``/``agg.collect`` document;
* a hot key's state stays bounded by window + grace, and its values stay exact across the
  int/float/other-value columns;
* values written by the previous layout (``[records, {start: window}]``; sessions as a bare list)
  are read and carried on.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given

import reference_model as m
from test_window_semantics import COUNT_SUM, MIN_MAX, ORDERED, check, prop, spec_and_stream

from streamproc import Topology, agg, serdes, windows
from streamproc.operators import RawBatch
from streamproc.operators import _sliding
from streamproc.plan import compile_topology
from streamproc.runtime.engine.task import Task
from streamproc.state import MemoryBackend
from streamproc.testing import TopologyTestDriver


@pytest.fixture(params=["small", "big"])
def representation(request, monkeypatch):
    """"big": every key in numpy columns from its first record on."""
    if request.param == "big":
        monkeypatch.setattr(_sliding, "BIG_WINDOWS", 0)
        monkeypatch.setattr(_sliding, "BIG_RECORDS", 0)
    return request.param


@pytest.mark.parametrize("emit", ["final", "update"])
@pytest.mark.parametrize("aggs", [COUNT_SUM, MIN_MAX, ORDERED], ids=["count_sum", "min_max", "ordered"])
def test_sliding_matches_the_model_in_both_representations(representation, aggs, emit):
    @prop(150)
    @given(spec_and_stream("sliding"))
    def run(case):
        spec, records = case
        check(records, spec, aggs, emit)

    run()


def test_a_late_created_window_folds_its_records_in_arrival_order():
    """d 10: 114 arrives before 112; when 103 arrives, the right window of 103, [104, 114], is created
    from the stored 114 and 112 (and 105 grows it later): first/last/collect in arrival order, not
    time order."""
    recs = [("k", {"v": 1}, 114), ("k", {"v": 2}, 112), ("k", {"v": 3}, 103), ("k", {"v": 4}, 105),
            ("x", {"v": 0}, 140)]
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(windows.Sliding(10, grace=20))
        .aggregate(first=agg.first("v"), last=agg.last("v"), all=agg.collect("v"), emit="final")
        .to("out", value=serdes.Json()))
    with TopologyTestDriver(t) as d:
        for k, v, ts in recs:
            d.pipe("in", k, v, timestamp=ts)
        out = {(r.value["window_start"], r.value["window_end"]): r.value for r in d.read_output("out")
               if r.key in ("k", b"k")}
    assert out[(104, 114)] == {"window_start": 104, "window_end": 114, "first": 1, "last": 4, "all": [1, 2, 4]}
    expected = m.run(recs, m.Sliding(10, 20), {"first": ("first", "v"), "last": ("last", "v"),
                                               "all": ("collect", "v")}, "final")
    assert {(r.value["window_start"], r.value["window_end"]): r.value for r in expected.results
            if r.key == "k"} == out


def _hot_task(d=50, grace=20, aggs=None):
    t = Topology("hot")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(windows.Sliding(d, grace=grace))
        .aggregate(**(aggs or dict(n=agg.count(), s=agg.sum("v"), lo=agg.min("v"), hi=agg.max("v"),
                                   avg=agg.mean("v"))), name="w", emit="final")
        .to("out", value=serdes.Json()))
    sub = compile_topology(t).subtopologies[0]
    return Task(sub, 0, MemoryBackend())


def _feed(task, recs, offset=0):
    raw = RawBatch("in", 0, [b"hot"] * len(recs), [json.dumps({"v": v}).encode() for v, _ in recs],
                   [ts for _, ts in recs], list(range(offset, offset + len(recs))))
    return [json.loads(vb) for _, _, vbs, _ in task.process(raw) for vb in vbs]


def test_a_hot_keys_state_stays_bounded_by_window_and_grace():
    d, grace = 50, 20
    task = _hot_task(d, grace)
    op = task.operator("w")
    for i in range(0, 3000, 100):
        _feed(task, [((j * 7) % 11, 1000 + j) for j in range(i, i + 100)], i)   # one record per ms
        task.state.changes()
        task.state.apply()
        entry = op._live["hot"]
        assert type(entry).__name__ == "_Big"
        # records with ts >= stream_time - d - grace - 1, windows: left + right of each within d + grace
        assert len(entry.R) <= d + grace + 2 and len(entry.W) <= 2 * (d + grace + 2)
    value = task.state.backend.get("w", "hot")
    assert len(value[2]) <= d + grace + 2 and len(value[5]) <= 2 * (d + grace + 2)


def test_values_that_leave_the_number_columns_stay_exact():
    """Ints, then floats, then a huge int, then a string (min/max of str): the columns switch to Python
    objects and every result equals the reference model's."""
    values = [3, 5, 2.5, -1, 2**40, 7, 1.25, -2**50, 2**62, 4, 0.5]
    recs = [("k", {"v": v}, 100 + 3 * i) for i, v in enumerate(values)] + [("z", {"v": 0}, 500)]
    spec = m.Sliding(10, 2)
    aggs = {"n": ("count", None), "total": ("sum", "v"), "lo": ("min", "v"), "hi": ("max", "v"),
            "avg": ("mean", "v")}
    for big in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            if big:
                mp.setattr(_sliding, "BIG_WINDOWS", 0)
                mp.setattr(_sliding, "BIG_RECORDS", 0)
            check(recs, spec, {k: v for k, v in aggs.items() if k != "avg"}, "update")
            got = _mean_run(recs, spec)
            want = [sorted((r.key, r.value["window_start"], r.value["avg"]) for r in batch)
                    for batch in m.run(recs, spec, {"avg": ("mean", "v")}, "update").batches]
            assert want == got


def _mean_run(recs, spec):
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(windows.Sliding(spec.max_difference, grace=spec.grace))
        .aggregate(avg=agg.mean("v"), emit="update").to("out", value=serdes.Json()))
    out = []
    with TopologyTestDriver(t) as d:
        for k, v, ts in recs:
            d.pipe("in", k, v, timestamp=ts)
            out.append(sorted((r.key if isinstance(r.key, str) else r.key.decode(), r.value["window_start"],
                               r.value["avg"]) for r in d.read_output("out")))
    return out


def _old_layout(records, wins):
    """What the previous streamproc stored for a sliding key: records ``[ts, value]`` by time and
    ``{start: [max_ts, *states]}``."""
    return [[[ts, v] for ts, v in sorted(records, key=lambda r: r[0])], wins]


def test_a_sliding_value_of_the_previous_layout_is_read_and_carried_on():
    """d 10: records 100 (v 1) and 104 (v 2) stored by the previous layout, with their windows; 109
    then arrives in the new one."""
    d = 10
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(windows.Sliding(d)).aggregate(n=agg.count(), s=agg.sum("v"), all=agg.collect("v"),
                                              name="w", emit="update")
        .to("out", value=serdes.Json()))
    sub = compile_topology(t).subtopologies[0]
    backend = MemoryBackend()
    old = _old_layout([(100, {"v": 1}), (104, {"v": 2})],
                      {90: [100, 1, 1, [1]], 94: [104, 2, 3, [1, 2]], 101: [104, 1, 2, [2]]})
    backend.write({"w": {"k": old}}, {"stream_time": 104})
    task = Task(sub, 0, backend)
    raw = RawBatch("in", 0, [b"k"], [b'{"v": 4}'], [109], [0])
    got = {json.loads(vb)["window_start"]: json.loads(vb) for _, _, vbs, _ in task.process(raw) for vb in vbs}
    expected = m.run([("k", {"v": 1}, 100), ("k", {"v": 2}, 104), ("k", {"v": 4}, 109)], m.Sliding(d),
                     {"n": ("count", None), "s": ("sum", "v"), "all": ("collect", "v")}, "update").batches[-1]
    assert got == {r.value["window_start"]: r.value for r in expected}
    task.state.changes()
    task.state.apply()
    value = backend.get("w", "k")
    assert type(value[0]) is int and len(value) == 8           # rewritten in the new layout, due time first


def test_a_session_value_of_the_previous_layout_is_read_and_carried_on():
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(windows.Session(5)).aggregate(n=agg.count(), name="w", emit="final")
        .to("out", value=serdes.Json()))
    sub = compile_topology(t).subtopologies[0]
    backend = MemoryBackend()
    backend.write({"w": {"k": [[100, 102, 102, 2], [110, 110, 110, 1]]}}, {"stream_time": 110})
    task = Task(sub, 0, backend)
    raw = RawBatch("in", 0, [b"j", b"j"], [b"{}", b"{}"], [112, 117], [0, 1])
    got = [json.loads(vb) for _, _, vbs, _ in task.process(raw) for vb in vbs]
    assert got == [{"window_start": 100, "window_end": 102, "n": 2}, {"window_start": 110, "window_end": 110, "n": 1}]
    task.state.changes()
    task.state.apply()
    assert backend.get("w", "k") is None and backend.get("w", "j")[0] == 117 + 5 + 1


class _PlainBackend(MemoryBackend):
    """A backend that keeps no time index (as a third-party Backend may)."""

    def declare_index(self, store, kind):
        return False


@pytest.mark.parametrize("window", [windows.Tumbling(10, grace=2), windows.Sliding(10, grace=2),
                                    windows.Session(5, grace=2)], ids=["tumbling", "sliding", "session"])
def test_a_backend_without_time_index_still_closes_windows_after_a_rebuild(window):
    t = Topology("app")
    (t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key()
        .window(window).aggregate(n=agg.count(), name="w", emit="final").to("out", value=serdes.Json()))
    sub = compile_topology(t).subtopologies[0]
    results = []
    for backend in (MemoryBackend(), _PlainBackend()):
        task = Task(sub, 0, backend)
        out = []
        for i, (k, ts) in enumerate([("a", 20), ("b", 24), ("a", 27), ("b", 40), ("a", 60), ("c", 90)]):
            if i % 2:
                task = Task(sub, 0, backend)
            out += [(kb, json.loads(vb)) for _, kbs, vbs, _ in
                    task.process(RawBatch("in", 0, [k.encode()], [b"{}"], [ts], [i])) for kb, vb in zip(kbs, vbs)]
            task.state.changes()
            task.state.apply()
        results.append(out)
    assert results[0] == results[1] and results[0]
