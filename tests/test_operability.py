"""Operability (DESIGN sections 7 and 8): drops counted by reason and operator, the processing-error
policy, the late-records topic, WorkerStats (pending -> committed), the Observer's Prometheus
endpoint and status, log formats, and, on a broker, exact committed counters across a rollback,
the late-records topic under exactly-once and ``streamproc run --metrics-port --log-format json``.

Several tests pin bugs found while writing them (since fixed): a failed pipe leaving state behind,
several updates per key after a record-by-record re-run, a restore counter going down across a
worker restart, a worker's last logs lost at exit, plain text in a json log stream.
"""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest

import runtime_helpers as h
from streamproc import Topology, agg, serdes, windows
from streamproc.errors import StreamprocError
from streamproc.operators.base import DROP_REASONS, ProcessingError
from streamproc.runtime.instance import logs, observe
from streamproc.runtime.worker import stats as stats_mod
from streamproc.runtime.instance.observe import Observer
from streamproc.runtime.worker.stats import CHECKPOINT_BUCKETS, SUMMARY_INTERVAL_S, WorkerStats
from streamproc.testing import TopologyTestDriver

S, J, I = serdes.String(), serdes.Json(), serdes.Int()
POISON = b"\xff{not json"
THIS = os.path.basename(__file__)
COUNTERS = ("records_consumed", "records_produced", "late_records", "dropped_none_key", "skipped_records",
            "dead_lettered_records", "processing_errors")


class PoisonableJson(serdes.Json):
    """Json, except that bytes are written as they are: lets a test pipe undecodable input."""

    def serialize(self, value):
        if isinstance(value, bytes):
            return value
        return super().serialize(value)


def _line() -> int:
    """The caller's line number (the DSL call on the next line is where an operator is defined)."""
    return sys._getframe(1).f_lineno


def _bad(v):
    if v.get("bad"):
        raise ValueError("bad value")
    return v


# ============================================================================ 1. driver.metrics()

def _crafted(policy: str) -> tuple[Topology, int]:
    t = Topology("app", on_processing_error=policy)
    s = t.stream("in", key=S, value=PoisonableJson(), on_error="skip")
    line = _line() + 1
    m = s.map_values(lambda v: {"x": 10 // v["x"]})
    m.to("out", key=S, value=J)
    m.group_by_key().window(windows.Tumbling(100), late_topic="late").count(name="c").to("wout", key=S, value=J)
    return t, line


CRAFTED = [("a", {"x": 1}, 10),         # fine: out, and window [0, 100) of a
           ("b", {"x": 0}, 20),         # map_values raises (ZeroDivisionError)
           (None, {"x": 2}, 30),        # None key: fine for out, dropped at the window
           ("c", POISON, 40),           # undecodable: skipped at the source
           ("c", {"x": 5}, 250)]        # fine; stream time 250 closes [0, 100)
LATE = ("d", {"x": 1}, 5)               # late for the closed [0, 100)


def test_metrics_has_every_counter_with_zeros_on_a_fresh_driver():
    for policy in ("fail", "skip", "dead-letter"):
        with TopologyTestDriver(_crafted(policy)[0]) as d:
            assert d.metrics() == dict.fromkeys(COUNTERS, 0)
            assert d.drops() == {}
    # deduplicated_records (a source connector's dedupe=) appears once counted, not on every topology
    assert (set(DROP_REASONS.values()) - {"deduplicated_records"}) | {"records_consumed", "records_produced"} \
        == set(COUNTERS)


@pytest.mark.parametrize("policy", ["skip", "dead-letter"])
def test_metrics_count_a_crafted_input_exactly(policy):
    t, line = _crafted(policy)
    with TopologyTestDriver(t) as d:
        d.pipe_many("in", CRAFTED)
        d.pipe("in", *LATE[:2], timestamp=LATE[2])
        out = [(r.key, r.value, r.timestamp) for r in d.read_output("out")]
        assert out == [("a", {"x": 10}, 10), (None, {"x": 5}, 30), ("c", {"x": 2}, 250), ("d", {"x": 10}, 5)]
        assert [(r.key, r.value) for r in d.read_output("wout")] == [
            ("a", {"window_start": 0, "window_end": 100, "count": 1})]
        assert [(r.key, r.value, r.timestamp) for r in d.read_output("late")] == [("d", {"x": 10}, 5)]
        dead = policy == "dead-letter"
        assert d.metrics() == {
            "records_consumed": 6,                       # the skipped record was consumed too
            "records_produced": 4 + 1 + 1 + dead,        # out, wout, late (+ the dead letter)
            "late_records": 1, "dropped_none_key": 1, "skipped_records": 1,
            "dead_lettered_records": int(dead), "processing_errors": int(not dead)}
        drops = d.drops()
        [map_label] = [op for (reason, op) in drops if reason in ("dead_letter", "processing_error")]
        assert map_label.startswith("map_values-")
        assert drops == {("late", "c"): 1, ("none_key", "c"): 1, ("skipped", "source in"): 1,
                         ("dead_letter" if dead else "processing_error", map_label): 1}
        dls = d.read_dead_letters()
        if dead:
            [dl] = dls
            assert (dl["key"], dl["value"], dl["timestamp"]) == (b"b", b'{"x":0}', 20)
            assert (dl["topic"], dl["partition"], dl["offset"]) == ("in", 0, 1)
            assert "ZeroDivisionError" in dl["error"] and f"{THIS}:{line}" in dl["operator"]
        else:
            assert dls == []


def test_metrics_fail_policy_stops_and_counts_nothing_of_the_failed_batch():
    t, line = _crafted("fail")
    with TopologyTestDriver(t) as d:
        with pytest.raises(ProcessingError) as e:
            d.pipe_many("in", CRAFTED)
        msg = str(e.value)
        assert "map_values" in msg and f"{THIS}:{line}" in msg and "ZeroDivisionError" in msg
        assert "in[0] at offset 1" in msg and "'b'" in msg
        assert d.metrics() == dict.fromkeys(COUNTERS, 0)
        assert d.read_output("out") == [] and d.read_output("late") == []


def test_a_failed_pipe_leaves_nothing_behind():
    t, _ = _crafted("fail")
    with TopologyTestDriver(t) as d:
        with pytest.raises(ProcessingError):
            d.pipe_many("in", [("c", POISON, 40), ("a", {"x": 1}, 500), ("b", {"x": 0}, 501)])
        d.pipe("in", "z", {"x": 1}, timestamp=20)
        # only z was processed and committed: not skipped (that was the failed batch's), not late
        assert d.metrics()["skipped_records"] == 0
        assert d.metrics()["late_records"] == 0
        assert d.read_output("late") == []


# ============================================================================ 2. processing errors

RECS = [("a", {"x": 1}, 1), ("b", {"x": 2, "bad": True}, 2), ("c", {"x": 3}, 3)]


def _case_map_values(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).map_values(lambda v: {"x": _bad(v)["x"]}).to("out", key=S, value=J)
    return line, "map_values", None, [("a", {"x": 1}), ("c", {"x": 3})]


def _case_map(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).map(lambda k, v: (k.upper(), _bad(v))).to("out", key=S, value=J)
    return line, "map", None, [("A", {"x": 1}), ("C", {"x": 3})]


def _case_filter(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).filter(lambda k, v: _bad(v)["x"] > 0).to("out", key=S, value=J)
    return line, "filter", None, [("a", {"x": 1}), ("c", {"x": 3})]


def _case_flat_map(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).flat_map(lambda k, v: [(k, _bad(v)), (k + "2", v)]).to("out", key=S, value=J)
    return line, "flat_map", None, [("a", {"x": 1}), ("a2", {"x": 1}), ("c", {"x": 3}), ("c2", {"x": 3})]


def _case_branch(t):
    line = _line() + 1
    big, small = t.stream("in", key=S, value=J).branch(lambda k, v: _bad(v)["x"] > 2, lambda k, v: True)
    big.to("out", key=S, value=J)
    small.to("out", key=S, value=J)
    return line, "branch", None, [("a", {"x": 1}), ("c", {"x": 3})]


def _case_reduce(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).group_by_key().aggregate(s=agg.reduce(lambda a, v: a + _bad(v)["x"], 0), name="r").to("out", key=S, value=J)  # noqa: E501
    return line, "aggregate r", None, [("a", {"s": 1}), ("c", {"s": 3})]


def _case_windowed_reduce(t):
    line = _line() + 1
    t.stream("in", key=S, value=J).group_by_key().window(windows.Tumbling(100)).aggregate(s=agg.reduce(lambda a, v: a + _bad(v)["x"], 0), emit="update", name="wr").to("out", key=S, value=J)  # noqa: E501
    win = {"window_start": 0, "window_end": 100}
    return line, "aggregate wr", None, [("a", {**win, "s": 1}), ("c", {**win, "s": 3})]


def _feed_table(d):
    d.pipe_many("tab", [("a", {"t": 1}, 0), ("b", {"t": 2}, 0), ("c", {"t": 3}, 0)])


def _case_stream_table_join(t):
    tab = t.table("tab", key=S, value=J, name="tab")
    line = _line() + 1
    t.stream("in", key=S, value=J).join(tab, lambda l, r: {"l": _bad(l)["x"], "r": r["t"]}, name="stj").to("out", key=S, value=J)  # noqa: E501
    return line, "join stj", _feed_table, [("a", {"l": 1, "r": 1}), ("c", {"l": 3, "r": 3})]


def _feed_right(d):
    d.pipe_many("right", [("a", {"y": 10}, 0), ("b", {"y": 20}, 0), ("c", {"y": 30}, 0)])


def _case_stream_stream_join(t):
    right = t.stream("right", key=S, value=J)
    line = _line() + 1
    t.stream("in", key=S, value=J).join(right, lambda l, r: {"l": _bad(l)["x"], "r": r["y"]}, window=windows.JoinWindow(100), name="ssj").to("out", key=S, value=J)  # noqa: E501
    return line, "join ssj", _feed_right, [("a", {"l": 1, "r": 10}), ("c", {"l": 3, "r": 30})]


CASES = [_case_map_values, _case_map, _case_filter, _case_flat_map, _case_branch, _case_reduce,
         _case_windowed_reduce, _case_stream_table_join, _case_stream_stream_join]


def _build(case, policy):
    t = Topology("app", on_processing_error=policy)
    line, what, feed, want = case(t)
    return t, line, what, feed, want


def _pairs(records):
    return sorted(((r.key, r.value) for r in records), key=repr)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("batch", ["pipe_many", "pipe"])
def test_fail_stops_with_an_error_naming_operator_definition_and_input_record(case, batch):
    t, line, what, feed, _ = _build(case, "fail")
    with TopologyTestDriver(t) as d:
        if feed:
            feed(d)
        with pytest.raises(ProcessingError) as e:
            if batch == "pipe_many":
                d.pipe_many("in", RECS)              # the failing record inside a batch
            else:
                for k, v, ts in RECS:
                    d.pipe("in", k, v, timestamp=ts)
        msg = str(e.value)
        assert what in msg, msg
        assert f"{THIS}:{line}" in msg, msg
        assert "ValueError: bad value" in msg and "key 'b'" in msg, msg
        assert "in[0] at offset 1" in msg, msg
        assert "on_processing_error" in msg        # says how to skip or dead-letter instead
        assert d.metrics()["processing_errors"] == 0 and d.metrics()["dead_lettered_records"] == 0


def _label_ok(label: str, what: str) -> bool:
    name = what.split()[-1]
    return label == name if " " in what else label.startswith(f"{what}-")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
def test_skip_drops_and_counts_the_failing_record_and_the_others_flow(case):
    t, line, what, feed, want = _build(case, "skip")
    with TopologyTestDriver(t) as d:
        if feed:
            feed(d)
        d.pipe_many("in", RECS)
        assert _pairs(d.read_output("out")) == sorted(want, key=repr)
        m = d.metrics()
        assert m["processing_errors"] == 1 and m["dead_lettered_records"] == 0
        [(key, n)] = [(k, n) for k, n in d.drops().items() if k[0] == "processing_error"]
        assert n == 1 and _label_ok(key[1], what), key
        assert d.read_dead_letters() == []
        # the next record goes through as usual
        d.pipe("in", "e", {"x": 5}, timestamp=4)
        assert d.metrics()["processing_errors"] == 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[6:])
def test_dead_letter_keeps_the_raw_input_record_the_error_and_where_it_came_from(case):
    t, line, what, feed, want = _build(case, "dead-letter")
    with TopologyTestDriver(t) as d:
        if feed:
            feed(d)
        d.pipe_many("in", RECS)
        assert _pairs(d.read_output("out")) == sorted(want, key=repr)
        m = d.metrics()
        assert m["dead_lettered_records"] == 1 and m["processing_errors"] == 0
        [(key, n)] = [(k, n) for k, n in d.drops().items() if k[0] == "dead_letter"]
        assert n == 1 and _label_ok(key[1], what), key
        [dl] = d.read_dead_letters()
        assert dl["key"] == b"b" and dl["value"] == J.serialize(RECS[1][1]) and dl["timestamp"] == 2
        assert (dl["topic"], dl["partition"], dl["offset"]) == ("in", 0, 1)
        assert "ValueError: bad value" in dl["error"] and "key 'b'" in dl["error"]
        assert f"{THIS}:{line}" in dl["operator"] and what.split()[-1] in dl["operator"]
        assert d.read_dead_letters() == [] and d.read_output("app-dlq") == []      # drained


@pytest.mark.parametrize("policy", ["skip", "dead-letter"])
def test_several_failing_records_in_one_batch_each_get_the_policy(policy):
    t = Topology("app", on_processing_error=policy)
    t.stream("in", key=S, value=J).map_values(_bad).to("out", key=S, value=J)
    recs = [(f"k{i}", {"i": i, "bad": i % 3 == 0}, i) for i in range(10)]
    with TopologyTestDriver(t) as d:
        d.pipe_many("in", recs)
        assert [r.key for r in d.read_output("out")] == [f"k{i}" for i in range(10) if i % 3]
        reason = DROP_REASONS["dead_letter" if policy == "dead-letter" else "processing_error"]
        assert d.metrics()[reason] == 4
        if policy == "dead-letter":
            assert [dl["offset"] for dl in d.read_dead_letters()] == [0, 3, 6, 9]


def test_dead_letter_of_a_record_an_aggregation_produced_keeps_its_key_and_the_error():
    t = Topology("app", on_processing_error="dead-letter")
    counts = t.stream("in", key=S, value=J).group_by_key().count(name="n")
    counts.to_stream().map_values(lambda v: 1 // (v["count"] - 2)).to("out", key=S, value=J)
    with TopologyTestDriver(t) as d:
        d.pipe("in", "a", {}, timestamp=1)
        d.pipe("in", "a", {}, timestamp=2)          # count 2: map_values raises on the aggregate's result
        d.pipe("in", "a", {}, timestamp=3)
        assert [r.value for r in d.read_output("out")] == [-1, 1]
        [dl] = d.read_dead_letters()
        assert dl["topic"] == "" and dl["offset"] is None and dl["key"] == b"'a'"
        assert "ZeroDivisionError" in dl["error"] and "map_values" in dl["operator"]
        assert d.metrics()["dead_lettered_records"] == 1


def test_skip_keeps_one_update_per_key_per_batch():
    def run(records):
        t = Topology("app", on_processing_error="skip")
        t.stream("in", key=S, value=J).group_by_key().aggregate(
            s=agg.reduce(lambda a, v: a + _bad(v)["x"], 0), name="r").to("out", key=S, value=J)
        with TopologyTestDriver(t) as d:
            d.pipe_many("in", records)
            return _pairs(d.read_output("out"))

    good = [("a", {"x": 1}, 1), ("a", {"x": 3}, 3)]
    assert run(good) == [("a", {"s": 4})]
    assert run([good[0], ("a", {"x": 2, "bad": True}, 2), good[1]]) == [("a", {"s": 4})]


# ============================================================================ 3. late-records topic

@pytest.mark.parametrize("spec", [windows.Tumbling(100, grace=10), windows.Hopping(100, 50), windows.Session(50),
                                  windows.Sliding(50)], ids=lambda s: s.kind)
def test_late_records_go_to_the_late_topic_with_the_streams_serdes_and_are_counted(spec):
    t = Topology("app")
    t.stream("in", key=S, value=I).group_by_key().window(spec, late_topic="late").count(name="c").to(
        "out", key=S, value=J)
    with TopologyTestDriver(t) as d:
        d.pipe_many("in", [("a", 1, 10), ("a", 2, 120), ("b", 3, 60), ("a", 4, 200), ("b", 5, 90), (None, 6, 5)])
        d.pipe("in", "c", 7, timestamp=20)
        late = d.read_output("late")
        assert [(r.key, r.value, r.timestamp) for r in late] == [("b", 3, 60), ("b", 5, 90), ("c", 7, 20)]
        assert all(type(r.value) is int for r in late)       # the stream's value serde (Int), not JSON
        assert d.metrics()["late_records"] == 3 and d.metrics()["dropped_none_key"] == 1
        assert d.drops() == {("late", "c"): 3, ("none_key", "c"): 1}
        assert d.read_output("late") == []                   # drained


def test_late_records_after_a_map_use_json_and_the_mapped_record():
    t = Topology("app")
    t.stream("in", key=S, value=I).map(lambda k, v: (k * 2, {"v": v})).group_by_key().window(
        windows.Tumbling(100), late_topic="late").count(name="c").to("out", key=S, value=J)
    with TopologyTestDriver(t) as d:
        d.pipe_many("in", [("a", 1, 150), ("b", 2, 50)])
        assert [(r.key, r.value, r.timestamp) for r in d.read_output("late")] == [("bb", {"v": 2}, 50)]
        assert d.metrics()["late_records"] == 1


def test_without_a_late_topic_late_records_are_only_counted():
    t = Topology("app")
    t.stream("in", key=S, value=I).group_by_key().window(windows.Tumbling(100)).count(name="c").to(
        "out", key=S, value=J)
    with TopologyTestDriver(t) as d:
        d.pipe_many("in", [("a", 1, 150), ("b", 2, 50)])
        assert d.metrics()["late_records"] == 1
        with pytest.raises(StreamprocError, match="not an output"):
            d.read_output("late")


# ============================================================================ 4. Observer / Prometheus

def _stats(worker="w", consumed=None, produced=None, drops=None, duration=0.02, **gauges) -> dict:
    st = WorkerStats(worker)
    for tp, n in (consumed or {}).items():
        st.consume(tp, n)
    for t, n in (produced or {}).items():
        st.produce(t, n)
    st.committed(duration, [(dict(drops or {}), {})])
    for k, v in gauges.items():
        setattr(st, k, v)
    return st.snapshot()


def _scrape(port: int) -> dict:
    """``{(sample name, frozenset(labels)): value}`` of the endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _v(samples, name, **labels):
    return samples.get((name, frozenset({k: str(v) for k, v in labels.items()}.items())))


@pytest.fixture
def observer():
    o = Observer("app", multiprocessing.get_context("spawn"), metrics_port=0).start()
    try:
        yield o
    finally:
        o.stop()


def _port(o: Observer) -> int:
    server = o._server[0] if isinstance(o._server, tuple) else o._server
    return server.server_port


def test_prometheus_serves_every_workers_series_with_labels_and_values(observer):
    port = _port(observer)
    assert _scrape(port) == {}                          # no worker reported yet: no series
    observer._handle(("stats", 0, _stats(
        consumed={("in", 0): 5, ("in", 1): 3}, produced={"out": 4, "app-c-changelog": 2},
        drops={("late", "c"): 2, ("skipped", "source in"): 1}, duration=0.02,
        lag={("in", 0): 7, ("in", 1): 0}, assigned=2, tasks={"running": 2, "restoring": 0},
        restore={"c": [10, 5]}, store_keys={"c": 42})))
    observer._handle(("stats", 1, _stats(consumed={("in", 2): 9}, duration=3.0)))
    m = _scrape(port)
    assert _v(m, "streamproc_records_consumed_total", worker=0, topic="in", partition=0) == 5
    assert _v(m, "streamproc_records_consumed_total", worker=0, topic="in", partition=1) == 3
    assert _v(m, "streamproc_records_consumed_total", worker=1, topic="in", partition=2) == 9
    assert _v(m, "streamproc_records_produced_total", worker=0, topic="out") == 4
    assert _v(m, "streamproc_records_produced_total", worker=0, topic="app-c-changelog") == 2
    assert _v(m, "streamproc_records_dropped_total", worker=0, reason="late", operator="c") == 2
    assert _v(m, "streamproc_records_dropped_total", worker=0, reason="skipped", operator="source in") == 1
    assert _v(m, "streamproc_checkpoints_total", worker=0) == 1
    assert _v(m, "streamproc_checkpoint_rollbacks_total", worker=0) == 0
    assert _v(m, "streamproc_worker_restarts_total", worker=0) == 0
    assert _v(m, "streamproc_consumer_lag", worker=0, topic="in", partition=0) == 7
    assert _v(m, "streamproc_assigned_partitions", worker=0) == 2
    assert _v(m, "streamproc_tasks", worker=0, phase="running") == 2
    assert _v(m, "streamproc_restore_records_total", worker=0, store="c") == 10
    assert _v(m, "streamproc_restore_remaining_records", worker=0, store="c") == 5
    assert _v(m, "streamproc_store_keys", worker=0, store="c") == 42
    # the checkpoint duration histogram: cumulative buckets, count and sum
    assert _v(m, "streamproc_checkpoint_duration_seconds_bucket", worker=0, le="0.01") == 0
    assert _v(m, "streamproc_checkpoint_duration_seconds_bucket", worker=0, le="0.025") == 1
    assert _v(m, "streamproc_checkpoint_duration_seconds_bucket", worker=0, le="+Inf") == 1
    assert _v(m, "streamproc_checkpoint_duration_seconds_bucket", worker=1, le="2.5") == 0
    assert _v(m, "streamproc_checkpoint_duration_seconds_bucket", worker=1, le="5.0") == 1
    assert _v(m, "streamproc_checkpoint_duration_seconds_count", worker=1) == 1
    assert _v(m, "streamproc_checkpoint_duration_seconds_sum", worker=1) == pytest.approx(3.0)
    # every sample is labelled with its worker
    assert all(dict(labels).get("worker") in ("0", "1") for _, labels in m)


def _counter_samples(m: dict) -> dict:
    return {k: v for k, v in m.items() if k[0].endswith(("_total", "_count", "_sum", "_bucket"))}


def test_a_restarted_worker_continues_its_counters_and_counts_restarts(observer):
    port = _port(observer)
    observer.worker_started(0, restart=False)
    observer._handle(("stats", 0, _stats(consumed={("in", 0): 5}, produced={"out": 4},
                                         drops={("late", "c"): 2}, duration=0.02)))
    before = _scrape(port)
    observer.worker_started(0, restart=True)            # the predecessor's last snapshot becomes the base
    between = _scrape(port)
    assert _v(between, "streamproc_records_consumed_total", worker=0, topic="in", partition=0) == 5
    assert _v(between, "streamproc_worker_restarts_total", worker=0) == 1
    observer._handle(("stats", 0, _stats(consumed={("in", 0): 2, ("in", 1): 1}, produced={"out": 1},
                                         drops={("late", "c"): 1, ("none_key", "c"): 1}, duration=0.5)))
    after = _scrape(port)
    assert _v(after, "streamproc_records_consumed_total", worker=0, topic="in", partition=0) == 7
    assert _v(after, "streamproc_records_consumed_total", worker=0, topic="in", partition=1) == 1
    assert _v(after, "streamproc_records_produced_total", worker=0, topic="out") == 5
    assert _v(after, "streamproc_records_dropped_total", worker=0, reason="late", operator="c") == 3
    assert _v(after, "streamproc_records_dropped_total", worker=0, reason="none_key", operator="c") == 1
    assert _v(after, "streamproc_checkpoints_total", worker=0) == 2
    assert _v(after, "streamproc_checkpoint_duration_seconds_count", worker=0) == 2
    assert _v(after, "streamproc_checkpoint_duration_seconds_sum", worker=0) == pytest.approx(0.52)
    assert _v(after, "streamproc_worker_restarts_total", worker=0) == 1
    # no counter ever went down
    for snap_a, snap_b in ((before, between), (between, after)):
        for k, v in _counter_samples(snap_a).items():
            assert snap_b.get(k, 0) >= v, k
    observer.worker_started(0, restart=True)
    observer.worker_started(0, restart=True)            # restarted again before it reported anything
    m = _scrape(port)
    assert _v(m, "streamproc_worker_restarts_total", worker=0) == 3
    assert _v(m, "streamproc_records_consumed_total", worker=0, topic="in", partition=0) == 7
    assert "3 worker restart(s)" in observer.status_line()


def test_restore_records_counter_never_goes_down_across_a_restart(observer):
    port = _port(observer)
    observer._handle(("stats", 0, _stats(restore={"c": [10, 0]})))
    before = _scrape(port)
    observer.worker_started(0, restart=True)
    observer._handle(("stats", 0, _stats(restore={"c": [3, 0]})))
    after = _scrape(port)
    for k, v in _counter_samples(before).items():
        assert after.get(k, 0) >= v, k


def test_status_line_shows_rate_lag_tasks_checkpoint_and_drops(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(observe.time, "monotonic", lambda: clock[0])
    o = Observer("page-views", multiprocessing.get_context("spawn"))
    assert o.status_line() == ("page-views: 0 records/s, 0 consumed, lag 0, tasks 0 running / 0 restoring, "
                               "last checkpoint -, dropped none")
    o._handle(("stats", 0, _stats(consumed={("in", 0): 1500}, drops={("late", "c"): 2, ("none_key", "c"): 1},
                                  duration=0.0123, lag={("in", 0): 1234}, tasks={"running": 2, "restoring": 1})))
    o._handle(("stats", 1, _stats(consumed={("in", 1): 1000}, drops={("late", "x"): 3}, duration=0.25,
                                  lag={("in", 1): 1000}, tasks={"running": 1, "restoring": 0})))
    clock[0] = 102.0
    line = o.status_line()
    assert line == ("page-views: 1,250 records/s, 2,500 consumed, lag 2,234, tasks 3 running / 1 restoring, "
                    "last checkpoint 250 ms, dropped 5 late, 1 none_key")
    o.worker_started(1, restart=True)
    assert o.status_line().endswith(", 1 worker restart(s)")


def test_status_is_logged_at_info_when_not_live(caplog):
    o = Observer("app", multiprocessing.get_context("spawn"), status_interval_s=0.0)
    o._handle(("stats", 0, _stats(consumed={("in", 0): 3})))
    caplog.set_level(logging.INFO, logger="streamproc.status")
    o.tick()
    [rec] = [r for r in caplog.records if r.name == "streamproc.status"]
    assert rec.levelno == logging.INFO and "3 consumed" in rec.getMessage()
    o2 = Observer("app", multiprocessing.get_context("spawn"))          # every 30 s: not yet
    caplog.clear()
    o2.tick()
    assert [r for r in caplog.records if r.name == "streamproc.status"] == []


def test_live_status_renders_the_status_line_on_the_console(monkeypatch):
    import rich.console

    real, made = rich.console.Console, []

    def recording_console(**kw):
        c = real(record=True, file=io.StringIO(), force_terminal=True, width=400, color_system=None)
        made.append((kw, c))
        return c

    monkeypatch.setattr(rich.console, "Console", recording_console)
    o = Observer("app", multiprocessing.get_context("spawn"), live=True).start()
    try:
        o._handle(("stats", 0, _stats(consumed={("in", 0): 1234}, duration=0.1)))
        o.tick()
        o._live.refresh()
        o._handle(("stats", 0, _stats(consumed={("in", 0): 5678}, drops={("late", "c"): 1}, duration=0.1)))
        o.tick()
        o._live.refresh()
    finally:
        o.stop()
    [(kw, console)] = made
    assert kw.get("stderr") is True
    text = console.export_text()
    assert "app: 0 records/s, 1,234 consumed, lag 0" in text
    assert "5,678 consumed" in text and "dropped 1 late" in text


# ============================================================================ 5. WorkerStats

def test_pending_counts_appear_only_once_committed_and_a_rollback_forgets_them():
    st = WorkerStats("app-p-0")
    st.consume(("in", 0), 3)
    st.produce("out", 2)
    snap = st.snapshot()
    assert (snap["consumed"], snap["produced"], snap["drops"], snap["checkpoints"]) == ({}, {}, {}, 0)
    st.committed(0.01, [({("late", "c"): 1}, {("late", "c"): "in[0]@2"})])
    snap = st.snapshot()
    assert snap["consumed"] == {("in", 0): 3} and snap["produced"] == {"out": 2}
    assert snap["drops"] == {("late", "c"): 1} and snap["checkpoints"] == 1 and snap["rollbacks"] == 0
    assert snap["buckets"][CHECKPOINT_BUCKETS.index(0.01)] == 1 and sum(snap["buckets"]) == 1
    assert snap["last_checkpoint_ms"] == pytest.approx(10.0)
    # an aborted checkpoint: its consumption and production never count
    st.consume(("in", 0), 5)
    st.consume(("in", 1), 5)
    st.produce("out", 7)
    st.rolled_back()
    snap = st.snapshot()
    assert snap["consumed"] == {("in", 0): 3} and snap["produced"] == {"out": 2} and snap["rollbacks"] == 1
    # the same input processed again and committed: counted once
    st.consume(("in", 0), 5)
    st.consume(("in", 1), 5)
    st.produce("out", 7)
    st.committed(100.0, [({("late", "c"): 2, ("none_key", "c"): 1}, {})])
    snap = st.snapshot()
    assert snap["consumed"] == {("in", 0): 8, ("in", 1): 5} and snap["produced"] == {"out": 9}
    assert snap["drops"] == {("late", "c"): 3, ("none_key", "c"): 1}
    assert snap["checkpoints"] == 2 and snap["buckets"][-1] == 1        # 100 s: the +Inf bucket
    assert pickle.loads(pickle.dumps(snap)) == snap                    # it crosses a process boundary


def test_a_rolled_back_checkpoint_forgets_the_tasks_pending_drops():
    """The drop counts of a rolled-back checkpoint live in the task context that ``_forget`` throws away."""
    from streamproc.operators.base import TaskContext

    ctx = TaskContext("0_0", 0, state=None)
    ctx.drop("late", "c", 2)
    assert ctx.metrics == {} and ctx.pending == {("late", "c"): 2}
    assert ctx.commit_counts() == {("late", "c"): 2}
    assert ctx.metrics == {("late", "c"): 2} and ctx.pending == {}
    ctx.drop("late", "c", 0)                          # nothing dropped: nothing counted
    assert ctx.pending == {}


class _FakeProducer:
    def __init__(self):
        self.calls: list = []
        self.produced: list = []

    def produce(self, topic, value=None, key=None, partition=-1, timestamp=0, headers=None):
        self.produced.append(topic)

    def begin_transaction(self):
        self.calls.append("begin_transaction")

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout=None):
        self.calls.append("send_offsets_to_transaction")

    def flush(self, timeout=None):
        return 0

    def commit_transaction(self, timeout=None):
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout=None):
        self.calls.append("abort_transaction")


class _FakeConsumer:
    def __init__(self):
        self.seeks: list = []

    def consumer_group_metadata(self):
        return None

    def committed(self, tps, timeout=None):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))


class _FakeWorker:
    """What checkpoint()/rollback() use of a worker, with real tasks (TaskManager) and real WorkerStats."""

    eos = True
    timeout_s = 1.0

    def __init__(self, tm):
        from streamproc.runtime.worker.checkpoint import Checkpoint

        self.producer, self.consumer, self.task_manager = _FakeProducer(), _FakeConsumer(), tm
        self.stats = WorkerStats("app-p-0")
        self.ckpt = Checkpoint(self.producer, self.consumer, tm, eos=True, commit_interval_s=0.1, txn_budget_s=10.0,
                               timeout_s=1.0, stats=self.stats, send=self.produce)
        self.resets = 0

    def produce(self, topic, value, key, partition=-1, timestamp=0, headers=None):
        self.producer.produce(topic, value, key, partition)

    def reset_to_committed(self, tps=None):
        self.resets += 1

    def process(self, key, records, first_offset):
        """As ``Worker._process``: run a batch in the open checkpoint, count it as pending."""
        from streamproc.operators import RawBatch

        c = self.ckpt
        c.begin()
        offsets = list(range(first_offset, first_offset + len(records)))
        raw = RawBatch("in", 0, [None if k is None else k.encode() for k, _, _ in records],
                       [J.serialize(v) for _, v, _ in records], [ts for _, _, ts in records], offsets)
        for out in self.task_manager.running(key).process(raw):
            for kb, vb in zip(out[1], out[2]):
                self.produce(out[0], vb, kb)
            self.stats.produce(out[0], len(out[1]))
        c.ran(key, ("in", 0), offsets[-1] + 1)
        self.stats.consume(("in", 0), len(offsets))


def test_a_rolled_back_checkpoint_counts_nothing_and_its_input_processed_again_counts_once():
    from streamproc.plan import compile_topology
    from confluent_kafka import OFFSET_BEGINNING
    from streamproc.runtime.engine.lifecycle import TaskManager
    from streamproc.runtime.worker.loop import Worker
    from streamproc.state import MemoryBackend

    t = Topology("app")
    t.stream("in", key=S, value=J).group_by_key().window(windows.Tumbling(100), late_topic="late").count(
        name="c").to("out", key=S, value=J)
    plan = compile_topology(t)
    [st] = plan.subtopologies
    tm = TaskManager({"in": st}, lambda st, p: MemoryBackend(), Worker._keep_when_revoked)
    tm.assign([("in", 0)])
    key = tm.key_of("in", 0)
    tm.restored(key)
    w = _FakeWorker(tm)
    records = [("a", {}, 10), ("a", {}, 150), ("b", {}, 20), (None, {}, 30)]    # emits a's [0, 100); late; None

    w.process(key, records, 0)
    first = tm.running(key)
    assert first.ctx.pending == {("late", "c"): 1, ("none_key", "c"): 1}
    w.ckpt.deadline = time.monotonic() - 1                # the transaction is too old: rolled back
    assert w.ckpt.commit() is False
    assert "abort_transaction" in w.producer.calls and "commit_transaction" not in w.producer.calls
    assert w.consumer.seeks == [("in", 0, OFFSET_BEGINNING)]
    snap = w.stats.snapshot()
    assert (snap["consumed"], snap["produced"], snap["drops"]) == ({}, {}, {})
    assert (snap["checkpoints"], snap["rollbacks"]) == (0, 1)
    rebuilt = tm.running(key)
    assert rebuilt is not first and rebuilt.ctx.pending == {} and rebuilt.ctx.metrics == {}

    aborted = list(w.producer.produced)
    w.process(key, records, 0)                            # the same input again, from the committed offset
    assert w.ckpt.commit() is True
    committed = w.producer.produced[len(aborted):]
    snap = w.stats.snapshot()
    assert snap["consumed"] == {("in", 0): 4}
    assert snap["produced"] == dict(Counter(committed)) and Counter(committed) == Counter(aborted)
    assert snap["produced"]["out"] == 1 and snap["produced"]["late"] == 1
    assert snap["produced"][plan.store("c").changelog] > 0
    assert snap["drops"] == {("late", "c"): 1, ("none_key", "c"): 1}
    assert (snap["checkpoints"], snap["rollbacks"]) == (1, 1)
    assert tm.running(key).ctx.metrics == {("late", "c"): 1, ("none_key", "c"): 1}
    assert tm.running(key).ctx.pending == {}
    tm.close_all()


def test_drop_summaries_are_logged_at_info_at_most_every_30_s_per_reason_and_operator(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(stats_mod.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="streamproc.drops")
    st = WorkerStats("app-p-0")

    def summaries():
        out = [r for r in caplog.records if r.name == "streamproc.drops"]
        assert all(r.levelno == logging.INFO for r in out)
        caplog.clear()
        return [r.getMessage() for r in out]

    st.committed(0.01, [({("late", "c"): 2}, {("late", "c"): "in[0]@3"})])
    [msg] = summaries()
    assert msg == "worker app-p-0 dropped 2 record(s) at c: late for a closed window; e.g. in[0]@3 (total 2)"
    clock[0] = 1010.0
    st.committed(0.01, [({("late", "c"): 3, ("none_key", "c"): 1}, {("late", "c"): "in[1]@9",
                                                                      ("none_key", "c"): "in[0]@4"})])
    [msg] = summaries()                               # late/c waits; none_key/c is new
    assert msg == "worker app-p-0 dropped 1 record(s) at c: None key; e.g. in[0]@4 (total 1)"
    clock[0] = 1000.0 + SUMMARY_INTERVAL_S - 0.1
    st.committed(0.01, [({("late", "c"): 1}, {("late", "c"): "in[1]@12"})])
    assert summaries() == []
    clock[0] = 1000.0 + SUMMARY_INTERVAL_S
    st.committed(0.01, [({("skipped", "source in"): 1}, {("skipped", "source in"): "in[0]@20"})])
    msgs = summaries()
    assert "worker app-p-0 dropped 4 record(s) at c: late for a closed window; e.g. in[1]@9 (total 6)" in msgs
    assert any(m.startswith("worker app-p-0 dropped 1 record(s) at source in: undecodable") and "in[0]@20" in m
               for m in msgs)
    assert len(msgs) == 2
    # a forced summary (the worker stopping) logs what is left at once
    clock[0] += 1.0
    st.committed(0.01, [({("late", "c"): 5}, {})])
    assert summaries() == []
    st.log_drops(force=True)
    assert summaries() == ["worker app-p-0 dropped 5 record(s) at c: late for a closed window (total 11)"]


# ============================================================================ 6. logs

@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = list(root.handlers), root.level, logging.getLogger("streamproc").level
    yield
    for hd in list(root.handlers):
        root.removeHandler(hd)
    for hd in saved[0]:
        root.addHandler(hd)
    root.setLevel(saved[1])
    logging.getLogger("streamproc").setLevel(saved[2])


def test_json_logs_are_one_valid_object_per_line(root_logging, capsys):
    assert logs.configure(logging.INFO, "json") == "json"
    log = logging.getLogger("streamproc.test")
    log.info('a "quoted" message\nwith a second line\tand a tab, \\ and ünïcödé')
    log.debug("not at info")
    try:
        raise KeyError("boom")
    except KeyError:
        log.exception("it failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(x) for x in lines)
    assert first["msg"] == 'a "quoted" message\nwith a second line\tand a tab, \\ and ünïcödé'
    assert (first["level"], first["logger"]) == ("INFO", "streamproc.test")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert "worker" not in first
    assert second["level"] == "ERROR" and "KeyError: 'boom'" in second["exc"]


def test_text_logs(root_logging, capsys):
    assert logs.configure("WARNING", "text") == "text"
    logging.getLogger("streamproc.test").info("hidden")
    logging.getLogger("streamproc.test").warning("shown %d", 7)
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING streamproc.test: shown 7", line), line
    with pytest.raises(ValueError, match="text.*json"):
        logs.configure(logging.INFO, "xml")


def test_default_format_is_json_when_stderr_is_not_a_terminal(root_logging):
    assert logs.default_format() == ("text" if sys.stderr.isatty() else "json")


def _child_logs(q):
    """A spawned 'worker': its records go to the supervisor through the queue."""
    from streamproc.runtime.instance.logs import worker_logging

    worker_logging(q, logging.INFO, 5)
    logging.getLogger("streamproc.worker").info('worker says "hi"\nand more')
    logging.getLogger("streamproc.worker").debug("below the level")
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("streamproc.worker").exception("it broke")
    q.close()
    q.join_thread()


def test_worker_records_through_the_queue_keep_their_worker_field(root_logging, capsys):
    logs.configure(logging.INFO, "json")
    o = Observer("app", multiprocessing.get_context("spawn"))
    p = multiprocessing.get_context("spawn").Process(target=_child_logs, args=(o.queue,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    o.start()
    deadline = time.monotonic() + 10
    lines = []
    while time.monotonic() < deadline and len(lines) < 2:
        time.sleep(0.1)
        lines += capsys.readouterr().err.splitlines()
    o.stop()
    lines += capsys.readouterr().err.splitlines()
    recs = [json.loads(x) for x in lines]
    assert [(r["logger"], r["level"], r["worker"]) for r in recs] == [("streamproc.worker", "INFO", 5),
                                                                      ("streamproc.worker", "ERROR", 5)]
    assert recs[0]["msg"] == 'worker says "hi"\nand more'
    assert "ZeroDivisionError" in recs[1]["msg"]        # the traceback travels in the message


WORKER_LOGS_THEN_FAILS = '''
import logging
for i in range(300):
    logging.getLogger("usertopo").warning("importing the topology: line %d", i)
raise RuntimeError("this topology cannot be built")
'''


def test_a_workers_last_log_records_reach_the_supervisor(tmp_path):
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.worker.process import worker_main

    ref = h.write_topology(tmp_path / "logs_then_fails.py", WORKER_LOGS_THEN_FAILS)
    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    user = logging.getLogger("usertopo")
    keep = Keep()
    user.addHandler(keep)
    user.propagate = False
    ctx = multiprocessing.get_context("spawn")
    o = Observer("app", ctx)
    try:
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker_main, args=(ref, "app", RunOptions("127.0.0.1:1"), 0, "pid", writer,
                                                  logging.INFO, o.queue))
        p.start()
        writer.close()
        p.join(3)            # a supervisor busy for a moment: it reads the queue only from now on
        o.start()
        p.join(60)
        assert p.exitcode not in (0, None)
        assert "cannot be built" in reader.recv()[1]
        h.wait_until(lambda: len(got) >= 300, 5, what="the worker's 300 log records")
    finally:
        o.stop()
        user.removeHandler(keep)
        user.propagate = True
    assert got[-1] == "importing the topology: line 299"


def test_json_log_format_has_no_text_lines_even_for_generated_name_warnings_and_errors(tmp_path):
    ref = h.write_topology(tmp_path / "generated.py", '''
from streamproc import Topology, serdes
t = Topology("generated")
t.stream("in", key=serdes.String(), value=serdes.Json()).group_by_key().count().to("out")
''')
    p = subprocess.run([sys.executable, "-m", "streamproc", "run", ref, "-b", "127.0.0.1:1", "--log-format", "json",
                        "--state-dir", str(tmp_path / "s"),
                        "--config", "consumer.partition.assignment.strategy=cooperative-sticky"],
                       env=_env(), capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert lines
    for x in lines:
        json.loads(x)


def _env():
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    env.pop("FORCE_COLOR", None)
    return env


# ============================================================================ broker: 7 + 8

T0 = 1_700_000_000_000

BROKER_TOPO = '''
from streamproc import Topology, serdes, windows


class PoisonableJson(serdes.Json):
    def serialize(self, value):                  # only the test driver serializes: lets it pipe raw bytes
        return value if isinstance(value, bytes) else super().serialize(value)


t = Topology("{app}", on_processing_error="dead-letter")
s = t.stream("{src}", key=serdes.String(), value=PoisonableJson(), on_error="skip")
m = s.map_values(lambda v: {{"x": 100 // v["x"], "g": v["g"]}})
(m.group_by_key()
 .window(windows.Tumbling(1000), late_topic="{late}")
 .count(name="wc")
 .to("{out}", key=serdes.String(), value=serdes.Json()))
(m.group_by(lambda k, v: v["g"], name="by-g")
 .count(name="gc")
 .to("{out2}", key=serdes.String(), value=serdes.Json()))
'''


def _input(first: int, n: int) -> list:
    """Keyed records with increasing time, and among them: late ones, ones map_values fails on (x == 0,
    dead-lettered), None keys (time T0: never moves stream time) and undecodable values (skipped)."""
    recs = []
    for i in range(first, first + n):
        k = f"k{i % 7}"
        ts = T0 + i * 100
        if i % 11 == 5:
            recs.append((k, {"x": 1 + i % 4, "g": f"g{i % 3}"}, ts - 5_000))        # late
        elif i % 13 == 6:
            recs.append((k, {"x": 0, "g": "g0"}, ts))                               # dead letter
        elif i % 17 == 7:
            recs.append((None, {"x": 2, "g": "g1"}, T0))                             # None key
        elif i % 19 == 8:
            recs.append((k, POISON, ts))                                              # skipped
        else:
            recs.append((k, {"x": 1 + i % 4, "g": f"g{i % 3}"}, ts))
    return recs


def _produce_raw(bootstrap, topic, recs):
    h.produce(bootstrap, topic, [(None if k is None else k.encode(),
                                  v if isinstance(v, bytes) else J.serialize(v), ts) for k, v, ts in recs])


def _read_all(bootstrap: str, topics: list, quiet_s: float = 1.5, max_s: float = 60.0) -> dict:
    """``{topic: [(partition, offset, key, value, ts, headers)]}``, read_committed, until quiet."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": h.unique("reader"), "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    try:
        tps = []
        for t in topics:
            md = c.list_topics(t, timeout=10)
            tps += [TopicPartition(t, p, OFFSET_BEGINNING) for p in sorted(md.topics[t].partitions)]
        c.assign(tps)
        out = {t: [] for t in topics}
        start = time.monotonic()
        last = start + 2.0                          # the first fetch may take a while
        while time.monotonic() - last < quiet_s and time.monotonic() - start < max_s:
            for msg in c.consume(5000, 0.2):
                if msg.error() is None:
                    out[msg.topic()].append((msg.partition(), msg.offset(), msg.key(), msg.value(),
                                             msg.timestamp()[1], msg.headers()))
                    last = time.monotonic()
        return out
    finally:
        c.close()


@pytest.fixture(scope="module")
def eos_run(tmp_path_factory, kafka):
    """One exactly-once worker running BROKER_TOPO on 2 partitions. Phase 1: input, wait until it is committed,
    read every topic (the worker idle: no transaction open). Phase 2: more input, and the commit of the first
    checkpoint after it is refused once (rolled back: aborted, processed again); then the worker stops and every
    topic is read again. The test driver runs the same input for the expected values."""
    import streamproc.runtime.worker.checkpoint as cp
    from streamproc.loader import load_topology
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics
    from streamproc.runtime.worker.loop import Worker

    bootstrap = kafka[0]
    tmp = tmp_path_factory.mktemp("eos")
    app = h.unique("ops")
    names = {"app": app, "src": f"{app}-in", "out": f"{app}-out", "out2": f"{app}-out2", "late": f"{app}-late",
             "dlq": f"{app}-dlq"}
    ref = h.write_topology(tmp / f"{app.replace('-', '_')}.py", BROKER_TOPO.format(**names))
    h.create(bootstrap, [names["src"], names["out"], names["out2"], names["late"]], 2)
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp / "state"), client_config=dict(h.CLIENT_CONFIG), topology=ref,
                      commit_interval_ms=100)
    prepare_topics(plan, opts)
    phase1, phase2 = _input(0, 300), _input(300, 300)

    def expected(driver):
        return {"drops": driver.drops(), "dead": driver.read_dead_letters(), "late": driver.read_output(names["late"]),
                "out": len(driver.read_output(names["out"]))}

    driver = TopologyTestDriver(load_topology(ref), partitions={names["src"]: 2})
    driver.pipe_many(names["src"], phase1)
    want1 = expected(driver)
    driver.pipe_many(names["src"], phase2)
    want2 = expected(driver)
    for k in ("dead", "late"):
        want2[k] = want1[k] + want2[k]
    want2["out"] += want1["out"]
    driver.close()

    internal = [s.changelog for s in plan.stores if s.internal_changelog] + [names["dlq"]]
    topics = [names["out"], names["out2"], names["late"]] + internal
    snaps: list = []
    wt = h.WorkerThread(plan, opts)
    wt.worker = Worker(plan, opts, 0, h.unique("p"), report=snaps.append)
    real_call, refused, armed = cp._call, [], []

    def flaky_call(what, fn, timeout_s):
        if what == "commit_transaction" and armed and not refused:
            refused.append(what)
            raise cp._Abortable("test: the commit is refused once")
        return real_call(what, fn, timeout_s)

    def consumed(snap):
        return sum(n for (t, _), n in snap["consumed"].items() if t == names["src"])

    mp = pytest.MonkeyPatch()
    mp.setattr(cp, "_call", flaky_call)
    try:
        wt.start()
        _produce_raw(bootstrap, names["src"], phase1)
        per_partition1 = Counter(r[0] for r in h.read_topic(bootstrap, names["src"], expect=len(phase1)))
        h.wait_until(lambda: snaps and consumed(snaps[-1]) == len(phase1), 90, what="phase 1 committed")
        read1 = _read_all(bootstrap, topics)
        snap1 = snaps[-1]
        armed.append(True)
        _produce_raw(bootstrap, names["src"], phase2)
        per_partition2 = Counter(r[0] for r in h.read_topic(bootstrap, names["src"], expect=len(phase1 + phase2)))
        h.wait_until(lambda: consumed(snaps[-1]) == len(phase1 + phase2), 90, what="phase 2 committed")
        time.sleep(1.5)                      # more snapshots: nothing more may be counted
        snap2 = snaps[-1]
    finally:
        try:
            wt.stop()
        finally:
            mp.undo()
    final = wt.worker.stats.snapshot()
    read2 = _read_all(bootstrap, topics)
    return {"names": names, "plan": plan, "refused": refused, "internal": internal,
            "runs": {"after a run": (snap1, snap1, per_partition1, want1, read1),
                     "after a rollback": (snap2, final, per_partition2, want2, read2)}}


def _counted_by_reason(snap) -> Counter:
    out = Counter()
    for (reason, _), n in snap["drops"].items():
        out[reason] += n
    return out


@pytest.mark.broker
@pytest.mark.parametrize("when", ["after a run", "after a rollback"])
def test_committed_counters_equal_the_input_and_the_drivers_counts(eos_run, when):
    """Consumed per input partition = the records in it; drops by reason and operator, records to the windowed
    output, late records and dead letters = the driver's; the rollback counted once. These counts do not depend
    on the broker hiding aborted records."""
    names = eos_run["names"]
    snap, final, per_partition, want, _ = eos_run["runs"][when]
    src = names["src"]
    assert {p: snap["consumed"].get((src, p), 0) for p in (0, 1)} == dict(per_partition)
    assert sum(per_partition.values()) == (300 if when == "after a run" else 600)
    assert snap["drops"] == want["drops"]
    by_reason = _counted_by_reason(snap)
    assert min(by_reason[r] for r in ("late", "none_key", "skipped", "dead_letter")) > 0
    assert by_reason["processing_error"] == 0
    assert snap["produced"].get(names["dlq"], 0) == len(want["dead"])
    assert snap["produced"].get(names["late"], 0) == len(want["late"])
    assert snap["produced"].get(names["out"], 0) == want["out"]
    if when == "after a run":
        assert snap["rollbacks"] == 0
    else:
        assert eos_run["refused"] == ["commit_transaction"] and snap["rollbacks"] == 1
        # the final checkpoint (stopping) added nothing: everything was committed before
        assert (final["consumed"], final["produced"], final["drops"]) == (snap["consumed"], snap["produced"],
                                                                          snap["drops"])


def _isolation(when):
    """After a rollback, what read_committed consumers see is exact only if the broker hides aborted records
    (Tansu, the dev broker, does not: it hands them to read_committed consumers)."""
    marks = [pytest.mark.real_kafka("aborted transactions must be invisible to read_committed consumers")] \
        if when == "after a rollback" else []
    return pytest.param(when, marks=marks)


@pytest.mark.broker
@pytest.mark.parametrize("when", [_isolation("after a run"), _isolation("after a rollback")])
def test_committed_counters_equal_what_read_committed_consumers_see(eos_run, when):
    from streamproc.runtime.engine.watermarks import WATERMARK_KEY

    names = eos_run["names"]
    snap, final, _, _, read = eos_run["runs"][when]
    for t in [names["out"], names["out2"], names["late"]]:
        assert final["produced"].get(t, 0) == len(read[t]), t
    for t in eos_run["internal"]:
        records = [r for r in read[t] if r[2] != WATERMARK_KEY]      # watermarks are not records
        internal = t in eos_run["plan"].repartition_topics or t in eos_run["plan"].changelog_topics
        counted = final["internal_produced" if internal else "produced"]    # internal records counted apart
        assert counted.get(t, 0) == len(records), t
    [rep] = eos_run["plan"].repartition_topics       # consumed downstream: exactly what was produced into it
    assert sum(n for (t, _), n in snap["internal_consumed"].items() if t == rep) == \
        snap["internal_produced"][rep] > 0


@pytest.mark.broker
@pytest.mark.parametrize("when", [_isolation("after a run"), _isolation("after a rollback")])
def test_dead_letters_on_the_broker_keep_the_raw_input_and_where_it_came_from(eos_run, when):
    names = eos_run["names"]
    _, _, _, want, read = eos_run["runs"][when]
    dlq = read[names["dlq"]]
    assert Counter((k, v) for _, _, k, v, _, _ in dlq) == Counter((d["key"], d["value"]) for d in want["dead"])
    for _, _, k, v, ts, headers in dlq:
        hd = dict(headers)
        assert hd["topic"].decode() == names["src"] and hd["partition"] in (b"0", b"1")
        assert int(hd["offset"]) >= 0
        assert b"ZeroDivisionError" in hd["error"] and b"map_values" in hd["operator"]
        assert json.loads(v)["x"] == 0


@pytest.mark.broker
@pytest.mark.parametrize("when", [_isolation("after a run"), _isolation("after a rollback")])
def test_late_records_topic_under_exactly_once_equals_the_drivers(eos_run, when):
    names = eos_run["names"]
    _, final, _, want, read = eos_run["runs"][when]
    late = read[names["late"]]
    got = [(S.deserialize(k), J.deserialize(v), ts) for _, _, k, v, ts, _ in late]
    assert h.multiset(got) == h.multiset((x.key, x.value, x.timestamp) for x in want["late"]) and len(late) > 0
    for _, _, _, _, ts, headers in late:
        hd = dict(headers)
        assert hd["window"].startswith(b"tumbling") and b"wc" in hd["operator"]
        assert int(hd["stream_time"]) >= ts + 1000 - (ts - T0) % 1000       # its window had closed
    # one key's late records keep their order
    for key in {k for k, _, _ in got}:
        assert [ts for _, _, k, v, ts, _ in late if S.deserialize(k) == key] == \
            [x.timestamp for x in want["late"] if x.key == key]


# ============================================================================ broker: 9 (the CLI)

CLI_TOPO = '''
from streamproc import Topology, serdes
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json(), on_error="skip")
s.group_by_key().count(name="n").to("{out}", key=serdes.String(), value=serdes.Json())
'''


def _free_port() -> int:
    return h.free_port()


@pytest.mark.broker
def test_run_serves_metrics_and_writes_json_logs_only(tmp_path, kafka):
    bootstrap = kafka[0]
    app = h.unique("cli")
    names = {"app": app, "src": f"{app}-in", "out": f"{app}-out"}
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", CLI_TOPO.format(**names))
    h.create(bootstrap, [names["src"], names["out"]], 2)
    recs = [(f"k{i % 5}", {"i": i}, T0 + i) for i in range(40)]
    _produce_raw(bootstrap, names["src"], recs + [("k1", POISON, T0 + 100)])
    port = _free_port()
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        p = subprocess.Popen([sys.executable, "-m", "streamproc", "run", ref, "-b", bootstrap,
                              "--state-dir", str(tmp_path / "state"), "--metrics-port", str(port),
                              "--log-format", "json", "--log-level", "info",
                              "--config", "consumer.session.timeout.ms=6000"],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        def scraped():
            try:
                m = _scrape(port)
            except OSError:
                return None
            total = sum(v for (name, labels), v in m.items() if name == "streamproc_records_consumed_total"
                        and dict(labels).get("topic") == names["src"])
            return m if total == len(recs) + 1 else None

        m = h.wait_until(scraped, 90, interval=0.5, what="the input counted on /metrics")
        assert {dict(labels)["worker"] for _, labels in m} == {"0"}
        assert _v(m, "streamproc_records_dropped_total", worker=0, reason="skipped",
                  operator=f"source {names['src']}") == 1
        assert _v(m, "streamproc_records_produced_total", worker=0, topic=names["out"]) >= 5
        assert _v(m, "streamproc_tasks", worker=0, phase="running") == 2
        assert _v(m, "streamproc_assigned_partitions", worker=0) == 2
        assert _v(m, "streamproc_checkpoints_total", worker=0) >= 1
        time.sleep(1.0)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            code = p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            raise
    assert code == 0
    lines = [x for x in err_path.read_text().splitlines() if x.strip()]
    recs_out = []
    for x in lines:
        try:
            recs_out.append(json.loads(x))
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {x!r}")
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in recs_out)
    workers = [r for r in recs_out if r.get("worker") == 0]
    assert any("started" in r["msg"] for r in workers), lines
    drops = [r for r in workers if r["logger"] == "streamproc.drops"]
    assert drops and drops[0]["level"] == "INFO", lines
    assert f"source {names['src']}" in drops[0]["msg"] and re.search(rf"{names['src']}\[[01]\]@\d+",
                                                                     drops[0]["msg"]), drops
    assert any(f":{port}/metrics" in r["msg"] for r in recs_out if "worker" not in r), lines


@pytest.mark.broker
def test_json_logs_stay_json_while_the_broker_is_down(tmp_path):
    import select

    broker = subprocess.Popen([sys.executable, "-m", "streamproc", "broker", "--port", "0"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    app_proc = None
    try:
        ready, _, _ = select.select([broker.stdout], [], [], 60)
        assert ready, "the development broker did not start"
        bootstrap = broker.stdout.readline().decode().strip()
        app = h.unique("down")
        names = {"app": app, "src": f"{app}-in", "out": f"{app}-out"}
        ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", CLI_TOPO.format(**names))
        h.create(bootstrap, [names["src"], names["out"]], 1)
        err_path = tmp_path / "stderr.txt"
        with open(err_path, "wb") as err:
            app_proc = subprocess.Popen([sys.executable, "-m", "streamproc", "run", ref, "-b", bootstrap,
                                         "--state-dir", str(tmp_path / "state"), "--log-format", "json",
                                         "--config", "consumer.session.timeout.ms=6000"],
                                        env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        h.wait_until(lambda: '"worker":0' in err_path.read_text(), 60, what="the worker's first log line")
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)
        time.sleep(3)                                    # the broker is down
    finally:
        for proc in (app_proc, broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
    lines = [x for x in err_path.read_text().splitlines() if x.strip()]
    bad = []
    for x in lines:
        try:
            json.loads(x)
        except ValueError:
            bad.append(x)
    assert bad == [], f"{len(bad)} of {len(lines)} stderr lines are not JSON, e.g. {bad[:2]}"
