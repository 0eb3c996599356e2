"""Event time through repartition topics and KIP-695 ordering (DESIGN section 4; runtime/engine/watermarks.py),
on tasks and the test driver (no broker)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from streamproc import Topology, agg, serdes, windows
from streamproc.operators import RawBatch
from streamproc.operators.io import STREAM_TIME_HEADER, carried_times
from streamproc.plan import compile_topology
from streamproc.runtime.engine.task import Task
from streamproc.runtime.engine.watermarks import WATERMARK_KEY, InputClock, decode, encode
from streamproc.state import MemoryBackend, codec
from streamproc.testing import TopologyTestDriver

STR, JSON = serdes.String(), serdes.Json()


# ------------------------------------------------------------------------------------------ clocks

def test_input_clock_is_the_minimum_over_active_upstreams_and_never_goes_back():
    c = InputClock(3)
    c.update((0, 0), 100, False)
    c.update((0, 1), 50, False)
    assert c.advance() == -1                      # not every upstream task has reported
    c.update((0, 2), 70, False)
    assert c.advance() == 50
    assert c.held_back_by() == (0, 1)
    c.update((0, 1), 40, False)                   # an upstream's own watermark never goes back either
    assert c.marks[(0, 1)] == [50, False] and c.advance() == 50
    c.update((0, 1), 50, True)                    # idle: does not hold the minimum back
    assert c.advance() == 70
    c.update((0, 2), 90, True)
    c.update((0, 0), 120, True)                   # all idle: the largest
    assert c.advance() == 120
    c.update((0, 0), 130, False)
    c.update((0, 1), 60, False)                   # active again, behind: the input's time stays
    assert c.advance() == 120
    again = InputClock(3, c.dump(), c.time)        # what is persisted restores the same clock
    assert again.marks == c.marks and again.advance() == 120


def test_watermark_records_round_trip_and_bad_bytes_are_ignored(caplog):
    assert decode(encode(2, 5, 1234, True)) == ((2, 5), 1234, True)
    assert codec.is_reserved_key(WATERMARK_KEY)
    with caplog.at_level(logging.WARNING, logger="streamproc.watermarks"):
        assert decode(b"\x00garbage") is None
        assert decode(codec.encode_value({"v": 9, "sub": 0, "p": 0, "t": 1, "idle": False})) is None
        assert decode(codec.encode_value({"v": 1, "sub": "0", "p": 0, "t": 1, "idle": False})) is None
    assert len(caplog.records) == 3


# ------------------------------------------------------------------------------------------ tasks

def _windowed_count():
    t = Topology("wm")
    (t.stream("in", key=STR, value=JSON)
     .group_by(lambda k, v: v["user"], name="by-user")
     .window(windows.Tumbling(60_000, grace=10_000))
     .aggregate(n=agg.count(), name="per-user")
     .to("out", value=JSON))
    return compile_topology(t)


def _downstream(plan, backend=None):
    st = next(s for s in plan.subtopologies if s.repartition_sources)
    return Task(st, 0, backend or MemoryBackend()), st.repartition_sources[0]


def _records(topic, rows, first_offset=0, carried=None):
    keys = [codec.encode_key(u) for u, _ in rows]
    values = [codec.encode_value({"user": u}) for u, _ in rows]
    ts = [t for _, t in rows]
    return RawBatch(topic, 0, keys, values, ts, list(range(first_offset, first_offset + len(rows))), carried)


def _results(produced):
    return sorted((json.loads(k), json.loads(v)["window_start"], json.loads(v)["n"])
                  for out in produced for k, v in zip(out[1], out[2]))


def test_an_upstream_task_running_ahead_does_not_close_windows_the_others_still_feed():
    """Two upstream tasks: A has read 5 minutes ahead, B is at the first minute. Under the old rule the
    downstream task's time was A's newest timestamp and every record of B was late; with watermarks
    the task's time is the minimum of A's and B's, so B's records count and windows close in order."""
    plan = _windowed_count()
    task, topic = _downstream(plan)
    a = [("u1", 1_000 + i * 3_000) for i in range(100)]            # 0..300 s, in order
    b = [("u2", 1_000 + i * 3_000) for i in range(100)]
    out = task.process(_records(topic, a[:100]))                     # A's whole backlog first
    task.watermarks(topic, [encode(0, 0, a[-1][1], False)], 2)
    out += task.advance()                                             # B has not reported: nothing closes
    assert out == [] and task.state.stream_time == -1
    out += task.process(_records(topic, b[:30], 100))
    task.watermarks(topic, [encode(0, 1, b[29][1], False)], 2)
    out += task.advance()
    assert task.state.stream_time == b[29][1]                         # the minimum: B's
    out += task.process(_records(topic, b[30:], 130))
    task.watermarks(topic, [encode(0, 1, b[-1][1], True), encode(0, 0, a[-1][1], True)], 2)
    out += task.advance()
    got = _results(out)
    want = sorted((u, w, 20) for u in ("u1", "u2") for w in range(0, 240_000, 60_000))
    assert [r for r in got if r[1] < 240_000] == want                # every closed window complete
    assert task.ctx.pending.get(("late", "aggregate per-user"), 0) == 0 and not any(
        k[0] == "late" for k in task.ctx.pending)


def test_a_record_late_in_its_own_partition_is_late_whatever_the_watermark():
    """The upstream stream time a record carries: a record 2 minutes older than its own partition's time
    (grace 10 s) is late even though the downstream task's time (the watermark) is behind."""
    plan = _windowed_count()
    task, topic = _downstream(plan)
    rows = [("u1", 200_000), ("u1", 70_000)]                          # the second is late where it was read
    task.process(_records(topic, rows, carried=[None, 200_000]))
    assert sum(n for (reason, _), n in task.ctx.pending.items() if reason == "late") == 1
    assert task.state.stream_time == -1                                # records do not move the task's time


def test_carried_time_header_round_trip_through_the_repartition_sink():
    plan = _windowed_count()
    up = next(s for s in plan.subtopologies if s.repartition_sinks)
    task = Task(up, 0, MemoryBackend())
    # the third record is 74 s behind its partition's time: late there for its window [0, 60 s) + 10 s grace
    raw = RawBatch("in", 0, [b"k1", b"k2", b"k3"], [b'{"user": "a"}', b'{"user": "b"}', b'{"user": "c"}'],
                   [5_000, 75_000, 1_000], [0, 1, 2])
    (topic, keys, values, ts, headers, parts), = task.process(raw)
    assert ts == [5_000, 75_000, 1_000] and parts is None
    assert headers[0] is None and headers[1] is None and headers[2][0][0] == STREAM_TIME_HEADER
    assert carried_times(headers) == [None, None, 75_000]            # the out-of-order one carries 75 s


def test_a_record_carries_its_upstream_time_only_where_it_can_make_it_late_downstream():
    """The downstream task judges a repartitioned record at max(its time, the time the record carries), and
    only to decide whether the record's window is closed: a record whose window that time cannot close
    carries nothing (its judge's decisions are the same), one it closes does."""
    plan = _windowed_count()                                           # 60 s tumbling, 10 s grace
    up = next(s for s in plan.subtopologies if s.repartition_sinks)
    assert plan.placement(up.repartition_sinks[0]).lateness_windows == (windows.Tumbling(60_000, grace=10_000),)
    task = Task(up, 0, MemoryBackend())
    times = [5_000, 69_999, 1_000, 70_000, 2_000, 50_000, 130_000, 60_000]
    raw = RawBatch("in", 0, [b"k"] * len(times), [b'{"user": "a"}'] * len(times), times, list(range(len(times))))
    (_, _, _, ts, headers, _), = task.process(raw)
    assert ts == times
    # 1 s at 69.999 s: its window [0, 60 s) is not closed yet; 2 s at 70 s: it is; 50 s at 70 s: closed too;
    # 60 s at 130 s: its window [60 s, 120 s) closes at 130 s
    assert carried_times(headers) == [None, None, None, None, 70_000, 70_000, None, 130_000]


def test_judged_alike_with_and_without_the_time_a_record_need_not_carry():
    plan = _windowed_count()
    rows = [("u1", 5_000), ("u1", 1_000), ("u1", 61_000), ("u2", 59_000), ("u1", 2_000)]
    outs = []
    for carried in ([None, 69_000, None, 69_999, 70_500], [None, None, None, None, 70_500]):
        task, topic = _downstream(plan)
        task.watermarks(topic, [encode(0, 0, 65_000, False), encode(0, 1, 65_000, False)], 2)
        task.advance()                                                  # the task's time: 65 s
        out = task.process(_records(topic, rows, carried=carried))
        task.watermarks(topic, [encode(0, 0, 200_000, True), encode(0, 1, 200_000, True)], 2)
        out += task.advance()
        outs.append((_results(out), dict(task.ctx.pending)))
    assert outs[0] == outs[1]
    assert outs[0][0] == [("u1", 0, 2), ("u1", 60_000, 1), ("u2", 0, 1)]
    assert outs[0][1] == {("late", "per-user"): 1}                      # 2 s, carrying 70.5 s


def test_every_record_ahead_carries_its_time_when_a_reader_may_use_it_otherwise():
    t = Topology("wm-join")
    left = t.stream("in", key=STR, value=JSON).group_by(lambda k, v: v["user"], name="by-user")
    left.window(windows.Sliding(10_000)).count(name="slide").to("out", value=JSON)
    plan = compile_topology(t)
    up = next(s for s in plan.subtopologies if s.repartition_sinks)
    assert plan.placement(up.repartition_sinks[0]).lateness_windows is None
    task = Task(up, 0, MemoryBackend())
    raw = RawBatch("in", 0, [b"k1", b"k2"], [b'{"user": "a"}', b'{"user": "b"}'], [9_000, 1_000], [0, 1])
    (_, _, _, _, headers, _), = task.process(raw)
    assert carried_times(headers) == [None, 9_000]


def test_watermarks_survive_a_checkpoint_and_a_rebuilt_task():
    plan = _windowed_count()
    backend = MemoryBackend()
    task, topic = _downstream(plan, backend)
    task.watermarks(topic, [encode(0, 0, 50_000, False), encode(0, 1, 80_000, False)], 2)
    task.advance()
    task.state.changes()
    task.state.apply()
    again, _ = _downstream(plan, backend)
    assert again.state.stream_time == 50_000
    again.watermarks(topic, [encode(0, 0, 90_000, False)], 2)          # B's 80 s was persisted
    again.advance()
    assert again.state.stream_time == 80_000


# ------------------------------------------------------------------------------------------ KIP-695

def _join_task():
    t = Topology("kip695")
    left = t.stream("orders", key=STR, value=JSON)
    right = t.stream("payments", key=STR, value=JSON)
    left.join(right, how="inner", window=windows.JoinWindow(0, after=10_000), name="op").to("out", value=JSON)
    plan = compile_topology(t)
    return Task(plan.subtopologies[0], 0, MemoryBackend())


def _raw(topic, rows, first=0):
    return RawBatch(topic, 0, [k.encode() for k, _ in rows], [b"{}"] * len(rows), [t for _, t in rows],
                    list(range(first, first + len(rows))))


def test_a_task_waits_for_an_input_with_unfetched_data_and_merges_in_time_order():
    task = _join_task()
    orders = [(f"o{i}", i * 1_000) for i in range(50)]
    payments = [(f"o{i}", i * 1_000 + 5_000) for i in range(50)]
    # orders fetched, payments not yet (not caught up): nothing is processed, everything waits
    out = task.process_many([_raw("orders", orders)], ready=set())
    assert out == [] and task.held_from(("orders", 0)) == 0 and task.state.stream_time == -1
    assert not task.can_go(set())
    # the first half of the payments arrives: records go up to where the payments run out
    out = task.process_many([_raw("payments", payments[:25])], ready=set())
    assert task.held_from(("payments", 0)) is None
    assert task.held_from(("orders", 0)) == 29       # orders before the last payment (29 s; ties: offset order)
    out += task.process_many([_raw("payments", payments[25:], 25)], ready={("payments", 0)})
    # the orders ran out and are not known to be caught up: payments after the last order wait
    assert task.held_from(("orders", 0)) is None and task.held_from(("payments", 0)) == 45
    assert task.can_go({("orders", 0)})
    out += task.process_many([], ready={("orders", 0)})
    assert task.held_from(("payments", 0)) is None
    matched = sorted(k.decode() for o in out for k in o[1])
    assert matched == sorted(f"o{i}" for i in range(50))              # grace 0, yet every match: time order
    assert not any(k[0] == "late" for k in task.ctx.pending)


def test_held_records_are_forgotten_when_their_partition_is_read_again():
    task = _join_task()
    task.process_many([_raw("orders", [("a", 1), ("b", 2)])], ready=set())
    assert task.held_from(("orders", 0)) == 0
    task.forget_held([("orders", 0)])
    assert task.held_from(("orders", 0)) is None and not task._held


# ------------------------------------------------------------------------------------------ driver

def test_driver_closes_windows_of_every_downstream_task_by_watermark():
    """Under the driver each pipe ends with a checkpoint: every upstream task publishes its (idle)
    stream time, so a window of a key in another downstream partition closes too."""
    t = Topology("drv")
    (t.stream("in", key=STR, value=JSON)
     .group_by(lambda k, v: v["user"], name="by-user")
     .window(windows.Tumbling(10, grace=0))
     .count(name="c")
     .to("out", value=JSON))
    with TopologyTestDriver(t, partitions={"in": 2, "drv-by-user-repartition": 3}) as d:
        d.pipe("in", "x", {"user": "u1"}, timestamp=5)
        assert d.read_output("out") == []
        users = [f"u{i}" for i in range(2, 30)]
        d.pipe("in", "y", {"user": users[0]}, timestamp=25)         # another key moves every task's time
        got = d.read_output("out")
        assert [(r.key, r.value["window_start"], r.value["count"]) for r in got] == [("u1", 0, 1)]
        assert np.all(np.array([r.timestamp for r in got]) == 5)


# ------------------------------------------------------------------------------------------ broker

@pytest.mark.broker
def test_idle_close_emits_the_last_window_of_a_stream_that_stopped(kafka, tmp_path):
    """``Topology(idle_close="1s")``: once every input of a task has been caught up for a second, its
    stream time follows the wall clock, so the last window closes and emits without new records; the
    same app without it keeps that window open."""
    import runtime_helpers as h
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics

    bootstrap, _ = kafka
    t0 = 1_700_000_000_000
    results = {}
    for idle in ("1s", None):
        src, out = h.unique("idle-in"), h.unique("idle-out")
        h.create(bootstrap, [src, out], 1)
        ref = h.write_topology(tmp_path / f"idle_{idle}.py", f"""
            from streamproc import Topology, serdes, windows
            topology = Topology("{h.unique('idle')}", idle_close={idle!r})
            (topology.stream("{src}", key=serdes.String(), value=serdes.Json())
             .group_by_key().window(windows.Tumbling("2s")).count(name="c")
             .to("{out}", value=serdes.Json()))
        """)
        h.produce(bootstrap, src, [("k", {"i": i}, t0 + i * 100) for i in range(15)], key_serde=STR,
                  value_serde=JSON)
        plan = h.load_plan(ref)
        opts = RunOptions(bootstrap_servers=bootstrap, state_dir=str(tmp_path / f"state-{idle}"), topology=ref,
                          client_config=dict(h.CLIENT_CONFIG))
        prepare_topics(plan, opts)
        with h.WorkerThread(plan, opts) as w:
            h.wait_until(lambda: w.worker.records_in >= 15 and not w.worker.open, 60, what="the input processed")
            if idle is not None:
                results[idle] = h.read_topic(bootstrap, out, expect=1, max_s=30)
            else:
                import time

                time.sleep(4)
                results[idle] = h.read_topic(bootstrap, out, quiet_s=1.0, max_s=5)
    got = [json.loads(r[3]) for r in results["1s"]]
    assert got == [{"window_start": t0, "window_end": t0 + 2_000, "count": 15}]
    assert results[None] == []


@pytest.mark.broker
def test_offsets_of_held_records_are_committed_when_another_inputs_fetch_lets_them_go(kafka, tmp_path, monkeypatch):
    """A stream-table task holds the table's records while the stream partition has data it has not fetched;
    they go when the stream's records arrive (another partition's fetch). The group's committed offset of
    the table partition must follow (else a restart reads them again: duplicates under exactly-once)."""
    import os
    import time

    import confluent_kafka

    import runtime_helpers as h
    import streamproc.runtime.worker.clients as worker_mod
    from streamproc.kafka import make_admin
    from streamproc.kafka.admin import group_offsets
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics
    from test_joins_runtime import produce_tracked

    bootstrap, _ = kafka
    app = h.unique("held")
    stream = f"{app}-payments"

    class StreamLater(confluent_kafka.Consumer):
        """Hands out the stream's messages only 1.5 s after the first table record was handed out."""
        stash: list = []
        first = None

        def consume(self, *a, **k):
            msgs = super().consume(*a, **k)
            if StreamLater.first is None or time.monotonic() < StreamLater.first + 1.5:
                if StreamLater.first is None and any(m.error() is None and m.topic() != stream for m in msgs):
                    StreamLater.first = time.monotonic()
                StreamLater.stash += [m for m in msgs if m.topic() == stream]
                return [m for m in msgs if m.topic() != stream]
            out, StreamLater.stash = StreamLater.stash + msgs, []
            return out

    monkeypatch.setattr(worker_mod, "Consumer", StreamLater)
    monkeypatch.setenv("EVENT_TIME_APP", app)
    t0 = int(time.time() * 1000) - 60_000
    for t in ("customers", "payments", "enriched"):
        h.create(bootstrap, [f"{app}-{t}"], 1)
    ends = produce_tracked(bootstrap, f"{app}-customers",
                           [(f"c{i}", {"cust": f"c{i}", "v": 1}, t0 + i) for i in range(10)], 1)
    ends.update(produce_tracked(bootstrap, stream, [(f"c{i}", {"pid": f"p{i}"}, t0 + 100 + i) for i in range(10)], 1))
    ref = os.path.join(os.path.dirname(__file__), "topologies", "event_time_table_join.py") + ":topology"
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG), topology=ref)
    prepare_topics(plan, opts)
    with h.WorkerThread(plan, opts):
        out = h.read_topic(bootstrap, f"{app}-enriched", expect=10, max_s=60)
        h.wait_until(lambda: group_offsets(make_admin(bootstrap), app, list(ends)) == ends, 20,
                     what="the committed offsets of both inputs at their ends")
    assert len(out) == 10


def test_merge_watermarks_keeps_the_newest_per_upstream_and_ignores_foreign_shapes():
    from streamproc.runtime.changelog.records import merge_watermarks

    got = merge_watermarks({"t": {"marks": [[0, 0, 50, False], [0, 1, 70, True]], "time": 50}},
                           {"t": {"marks": [[0, 0, 40, True], [0, 1, 90, False], [0, 2, "x", False], [1]],
                                  "time": 60},
                            "u": "not a clock", 7: {"marks": [], "time": 1}})
    assert got == {"t": {"marks": [[0, 0, 50, False], [0, 1, 90, False]], "time": 60}}
    assert merge_watermarks({}, None) == {} and merge_watermarks({}, [1, 2]) == {}


@pytest.mark.broker
def test_a_task_restored_on_a_new_host_has_its_upstream_watermarks(kafka, tmp_path):
    """The watermarks a downstream task keeps travel in its changelog's metadata record: a restore into an
    empty backend (a new host) gives them back, not only the stream time."""
    import runtime_helpers as h
    from streamproc.kafka.config import restore_consumer_config
    from streamproc.runtime.options import RunOptions
    from streamproc.runtime.instance.app import prepare_topics
    from streamproc.runtime.changelog.restore import restore_blocking

    bootstrap, _ = kafka
    app = h.unique("wm-restore")
    src, out = f"{app}-in", f"{app}-out"
    h.create(bootstrap, [src, out], 2)
    ref = h.write_topology(tmp_path / "topo.py", f"""
        from streamproc import Topology, serdes, windows
        topology = Topology("{app}")
        (topology.stream("{src}", key=serdes.String(), value=serdes.Json())
         .group_by(lambda k, v: v["u"], name="by-u").window(windows.Tumbling("10s")).count(name="c")
         .to("{out}", value=serdes.Json()))
    """)
    t0 = 1_700_000_000_000
    h.produce(bootstrap, src, [(f"k{i}", {"u": f"u{i % 3}"}, t0 + i * 1_000) for i in range(40)], key_serde=STR,
              value_serde=JSON)
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), topology=ref, state_backend="memory",
                      client_config=dict(h.CLIENT_CONFIG))
    prepare_topics(plan, opts)
    down = next(st for st in plan.subtopologies if st.repartition_sources)
    with h.WorkerThread(plan, opts) as w:
        def settled():
            tasks = [t for k, t in w.worker.tasks.items() if k[0] == down.id]
            return (len(tasks) == 2 and not w.worker.open
                    and all(t.state.backend.get_meta("watermarks", None) for t in tasks)
                    and all(t.state.stream_time >= t0 + 39_000 for t in tasks)) and tasks
        tasks = h.wait_until(settled, 60, what="both downstream tasks at the last watermark, committed")
        kept = {t.partition: t.state.backend.get_meta("watermarks") for t in tasks}
    for p, marks in kept.items():
        fresh = MemoryBackend()
        restore_blocking(restore_consumer_config(bootstrap, app), (down.id, p), fresh, down.stores, p)
        assert fresh.get_meta("watermarks") == marks
        assert fresh.get_meta("stream_time") >= t0 + 39_000
