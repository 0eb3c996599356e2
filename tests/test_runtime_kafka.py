"""The Kafka runtime against a broker: differential tests against the TopologyTestDriver,
restart with state and stream time restored from changelogs, scale-out, bad records.

Results are compared where they do not depend on how records were batched or how records
from several upstream partitions interleave in a repartition topic:

* ``emit="final"`` windows and stateless outputs of tasks reading one source partition each
  (every task sees its records in offset order under both feeders): exact multisets;
* through a repartition topic fed by several partitions the arrival order differs between
  feeders, so tables (and update-emitting windows) are compared by their final value per key.
"""
from __future__ import annotations

import random
import signal
import time

import pytest

import runtime_helpers as h
from streamproc import serdes
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.app import prepare_topics

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()

TOPO_KEYED = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.filter(lambda k, v: v["x"] % 5 != 0)
  .map_values(lambda v: {{"id": v["id"], "x2": v["x"] * 2}})
  .to("{out_map}", key=serdes.String(), value=serdes.Json()))
(s.group_by_key()
  .window(windows.Tumbling("1s", grace="200ms"))
  .aggregate(n=agg.count(), total=agg.sum("x"), hi=agg.max("x"), name="windows")
  .to("{out_win}", key=serdes.String(), value=serdes.Json()))
'''

TOPO_REPARTITION = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by(lambda k, v: v["user"], name="by-user")
  .window(windows.Tumbling("1s"))
  .aggregate(n=agg.count(), total=agg.sum("x"), name="user-windows")
  .to("{out_win}", key=serdes.String(), value=serdes.Json()))
(s.group_by(lambda k, v: v["user"] + "/" + str(v["x"] % 3), name="by-user-mod")
  .aggregate(n=agg.count(), total=agg.sum("x"), name="user-totals")
  .to("{out_table}", key=serdes.String(), value=serdes.Json()))
'''

TOPO_COUNT = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.group_by(lambda k, v: v["user"], name="by-user").count(name="counts").to("{out_table}", key=serdes.String(), value=serdes.Json())
s.map_values(lambda v: v["id"]).to("{out_ids}", key=serdes.String(), value=serdes.Json())
'''

TOPO_BAD_INPUT = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json(), on_error="{policy}")
s.map_values(lambda v: v["x"]).to("{out}", key=serdes.String(), value=serdes.Json())
'''


@pytest.fixture
def bootstrap(kafka):
    return kafka[0]


def events(n: int, seed: int, *, start: int = 1_700_000_000_000, keys: int = 20, users: int = 7,
           late_every: int = 37, first_id: int = 0):
    """Records (key, value, ts): time moves forward a few ms per record; every
    ``late_every``-th record is 0.3..2 s old (late for some windows)."""
    rnd = random.Random(seed)
    t = start
    out = []
    for i in range(n):
        t += rnd.randint(0, 30)
        ts = t - rnd.randint(300, 2000) if late_every and i % late_every == late_every - 1 else t
        out.append((f"k{rnd.randrange(keys)}",
                    {"id": first_id + i, "user": f"u{rnd.randrange(users)}", "x": rnd.randrange(100)}, ts))
    return out


def setup_app(tmp_path, bootstrap, template, partitions, outputs=("out_map", "out_win"), **extra):
    name = h.unique("rt")
    names = {"app": name, "src": f"{name}-in", **{o: f"{name}-{o}" for o in outputs}, **extra}
    ref = h.write_topology(tmp_path / f"{name.replace('-', '_')}.py", template.format(**names))
    h.create(bootstrap, [names["src"]], partitions)
    h.create(bootstrap, [names[o] for o in outputs], partitions)
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG),
                      topology=ref)
    prepare_topics(plan, opts)
    return names, ref, plan, opts


def expected(ref, names, records, partitions, outputs):
    return h.driver_output(ref, {names["src"]: records}, {names["src"]: partitions},
                           [names[o] for o in outputs])


def read(bootstrap, topic, expect=None, quiet_s=2.0, max_s=60.0):
    return h.decode(h.read_topic(bootstrap, topic, expect=expect, quiet_s=quiet_s, max_s=max_s), STR, JSON)


def last_per_key(records):
    return {k: v for k, v, _ in records}


def assert_same(got, want, what):
    g, w = h.multiset(got), h.multiset([tuple(r) for r in want])
    assert g == w, (f"{what}: {sum((g - w).values())} unexpected, {sum((w - g).values())} missing; "
                    f"unexpected e.g. {list((g - w))[:3]}, missing e.g. {list((w - g))[:3]}")


# ------------------------------------------------------------------------------------------ differential

@pytest.mark.parametrize("guarantee", ["exactly-once", "at-least-once"])
def test_differential_stateless_and_windowed(tmp_path, bootstrap, guarantee):
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_KEYED, 3)
    opts.guarantee = guarantee
    recs = events(3000, seed=1)
    h.produce(bootstrap, names["src"], recs, key_serde=STR, value_serde=JSON)
    want = expected(ref, names, recs, 3, ["out_map", "out_win"])
    with h.WorkerThread(plan, opts) as w:
        got_win = read(bootstrap, names["out_win"], expect=len(want[names["out_win"]]))
        got_map = read(bootstrap, names["out_map"], expect=len(want[names["out_map"]]))
        time.sleep(1.0)
        metrics = w.worker.metrics()
    assert_same(got_map, want[names["out_map"]], "map/filter output")
    assert_same(got_win, want[names["out_win"]], "windowed output")
    assert metrics.get("late_records", 0) > 0
    # nothing more arrived after the expected records (no duplicates from a second look)
    assert len(read(bootstrap, names["out_win"], quiet_s=1.0)) == len(want[names["out_win"]])


def test_differential_through_repartition_topics(tmp_path, bootstrap, monkeypatch):
    """group_by => repartition topic => downstream sub-topology; one source partition so the
    windowed results are order-exact, plus a table compared by its final values. Processed
    repartition records are purged at every checkpoint here (every 30 s normally)."""
    from streamproc.runtime.worker import purge as worker_mod

    monkeypatch.setattr(worker_mod, "PURGE_INTERVAL_S", 0.0)
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_REPARTITION, 1, outputs=("out_win", "out_table"))
    recs = events(3000, seed=2, late_every=0)
    h.produce(bootstrap, names["src"], recs, key_serde=STR, value_serde=JSON)
    want = expected(ref, names, recs, 1, ["out_win", "out_table"])
    with h.WorkerThread(plan, opts):
        got_win = read(bootstrap, names["out_win"], expect=len(want[names["out_win"]]))
        want_table = last_per_key(want[names["out_table"]])
        h.wait_until(lambda: last_per_key(read(bootstrap, names["out_table"], quiet_s=0.5)) == want_table, 60,
                     what="the table's final values")
    assert_same(got_win, want[names["out_win"]], "windowed output through a repartition topic")
    assert sorted(plan.repartition_topics) == sorted([f"{names['app']}-by-user-repartition",
                                                      f"{names['app']}-by-user-mod-repartition"])


# ------------------------------------------------------------------------------------------ restart

def test_restart_restores_state_and_stream_time(tmp_path, bootstrap):
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_KEYED, 2)
    recs = events(4000, seed=3)
    part1, part2 = recs[:2000], recs[2000:]
    h.produce(bootstrap, names["src"], part1, key_serde=STR, value_serde=JSON)
    w = h.WorkerThread(plan, opts, process_id="same").start()
    h.wait_until(lambda: w.worker.records_in >= len(part1) and not w.worker.open, 60, what="part 1 processed")
    before = {k: t.state.stream_time for k, t in w.worker.tasks.items()}
    state_before = {k: dict(t.snapshot("windows")) for k, t in w.worker.tasks.items()}
    w.stop()
    assert all(st > 0 for st in before.values())

    # part 2 starts with records that are late for part 1's stream time: dropped only if it was restored
    late = [(k, v, ts - 5_000) for k, v, ts in part2[:50]]
    part2 = late + part2[50:]
    h.produce(bootstrap, names["src"], part2, key_serde=STR, value_serde=JSON)
    w = h.WorkerThread(plan, opts, process_id="same")
    restored = {}
    orig_restore_step = w.worker._restore_step

    def spy():
        orig_restore_step()
        for k, t in w.worker.tasks.items():
            if k not in restored:
                restored[k] = (t.state.stream_time, dict(t.snapshot("windows")))
    w.worker._restore_step = spy
    w.start()
    want = expected(ref, names, part1 + part2, 2, ["out_map", "out_win"])
    try:
        got_win = read(bootstrap, names["out_win"], expect=len(want[names["out_win"]]))
        got_map = read(bootstrap, names["out_map"], expect=len(want[names["out_map"]]))
        time.sleep(1.0)
        metrics = w.worker.metrics()
    finally:
        w.stop()
    assert {k: v[0] for k, v in restored.items()} == before, "stream time restored from the changelog"
    assert {k: v[1] for k, v in restored.items()} == state_before, "store contents restored from the changelog"
    assert metrics.get("late_records", 0) >= 50
    assert_same(got_map, want[names["out_map"]], "map output across a restart")
    assert_same(got_win, want[names["out_win"]], "windowed output across a restart")


def test_run_app_subprocess_sigterm_then_restart(tmp_path, bootstrap):
    """``run_app`` with spawned workers: SIGTERM -> exit 0 after a clean stop; a restart restores state."""
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_REPARTITION, 1, outputs=("out_win", "out_table"))
    recs = events(3000, seed=4, late_every=0)
    want = expected(ref, names, recs, 1, ["out_win", "out_table"])
    want_part1 = expected(ref, names, recs[:1500], 1, ["out_win"])
    state = str(tmp_path / "state")
    log = str(tmp_path / "app.log")
    h.produce(bootstrap, names["src"], recs[:1500], key_serde=STR, value_serde=JSON)
    p = h.app_subprocess(ref, bootstrap, state, workers=2, log_path=log)
    try:
        read(bootstrap, names["out_win"], expect=len(want_part1[names["out_win"]]), max_s=90)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, open(log).read()[-3000:]
        h.produce(bootstrap, names["src"], recs[1500:], key_serde=STR, value_serde=JSON)
        p = h.app_subprocess(ref, bootstrap, state, workers=1, log_path=log)
        got_win = read(bootstrap, names["out_win"], expect=len(want[names["out_win"]]), max_s=90)
        want_table = last_per_key(want[names["out_table"]])
        h.wait_until(lambda: last_per_key(read(bootstrap, names["out_table"], quiet_s=0.5)) == want_table, 60,
                     what="the table's final values")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, open(log).read()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    assert_same(got_win, want[names["out_win"]], "windowed output across a SIGTERM restart")
    assert "Traceback" not in open(log).read()


# ------------------------------------------------------------------------------------------ scaling

def test_two_workers_then_a_third_joins(tmp_path, bootstrap):
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 4, outputs=("out_table", "out_ids"))
    recs = events(6000, seed=5, late_every=0)
    want = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    h.produce(bootstrap, names["src"], recs[:3000], key_serde=STR, value_serde=JSON)
    workers = [h.WorkerThread(plan, opts, process_id=f"inst{i}").start() for i in range(2)]
    try:
        h.wait_until(lambda: sum(w.worker.records_in for w in workers) >= 1000, 60, what="progress")
        workers.append(h.WorkerThread(plan, opts, process_id="inst2").start())
        for i in range(3000, 6000, 500):
            h.produce(bootstrap, names["src"], recs[i:i + 500], key_serde=STR, value_serde=JSON)
            time.sleep(0.3)
        h.wait_until(lambda: len(workers[2].worker.tasks) > 0, 60, what="the third worker to get tasks")
        h.wait_until(lambda: {k: v["count"] for k, v in
                              last_per_key(read(bootstrap, names["out_table"], quiet_s=0.5)).items()} == want,
                     90, interval=1.0, what="final counts equal to the input counts")
        ids = [v for _, v, _ in read(bootstrap, names["out_ids"], expect=len(recs))]
    finally:
        for w in workers:
            w.stop()
    assert all(w.error is None for w in workers)
    assert sorted(ids) == list(range(len(recs))), "every input exactly once in the pass-through output"


# ------------------------------------------------------------------------------------------ bad input

def test_dead_letter_queue(tmp_path, bootstrap):
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_BAD_INPUT, 1, outputs=("out",), policy="dead-letter")
    good = [(f"k{i}", {"x": i}, 1_700_000_000_000 + i) for i in range(20)]
    h.produce(bootstrap, names["src"], good[:10], key_serde=STR, value_serde=JSON)
    h.produce(bootstrap, names["src"], [(b"bad-key", b"{not json", 1_700_000_000_100)])
    h.produce(bootstrap, names["src"], good[10:], key_serde=STR, value_serde=JSON)
    with h.WorkerThread(plan, opts) as w:
        out = read(bootstrap, names["out"], expect=20)
        dlq = h.read_topic(bootstrap, f"{names['app']}-dlq", expect=1)
        metrics = w.worker.metrics()
    assert [v for _, v, _ in out] == list(range(20))
    assert len(dlq) == 1
    _, _, key, value, ts, headers = dlq[0]
    assert (key, value, ts) == (b"bad-key", b"{not json", 1_700_000_000_100)
    hd = dict(headers)
    assert hd["topic"] == names["src"].encode() and hd["partition"] == b"0" and hd["offset"] == b"10"
    assert b"Json" in hd["error"] or b"json" in hd["error"].lower()
    assert metrics.get("dead_lettered_records") == 1


def test_fail_policy_stops_without_committing_past_the_record(tmp_path, bootstrap):
    from confluent_kafka import Consumer, TopicPartition

    from streamproc.runtime.worker.errors import ProcessingFailed

    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_BAD_INPUT, 1, outputs=("out",), policy="fail")
    good = [(f"k{i}", {"x": i}, 1_700_000_000_000 + i) for i in range(10)]
    h.produce(bootstrap, names["src"], good, key_serde=STR, value_serde=JSON)
    w = h.WorkerThread(plan, opts).start()
    read(bootstrap, names["out"], expect=10)
    h.wait_until(lambda: not w.worker.open and w.worker.records_in == 10, 30, what="a checkpoint")
    h.produce(bootstrap, names["src"], [(b"k", b"{broken", 1_700_000_000_100)])
    w.thread.join(60)
    assert isinstance(w.error, ProcessingFailed)
    assert f"{names['src']}[0]" in str(w.error) and "offset 10" in str(w.error)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": names["app"]})
    try:
        [tp] = c.committed([TopicPartition(names["src"], 0)], timeout=10)
    finally:
        c.close()
    assert tp.offset == 10


def test_a_fenced_producer_stops_the_worker_without_committing(tmp_path, bootstrap):
    """Another producer takes over the worker's transactional.id: the worker's next transaction
    fails, it stops with WorkerFenced and commits nothing more."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from streamproc.kafka.config import transactional_producer_config
    from streamproc.runtime.worker.errors import WorkerFenced

    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_BAD_INPUT, 1, outputs=("out",), policy="fail")
    good = [(f"k{i}", {"x": i}, 1_700_000_000_000 + i) for i in range(20)]
    h.produce(bootstrap, names["src"], good[:10], key_serde=STR, value_serde=JSON)
    w = h.WorkerThread(plan, opts, process_id="zombie").start()
    try:
        read(bootstrap, names["out"], expect=10)
        h.wait_until(lambda: not w.worker.open and w.worker.records_in == 10, 30, what="a checkpoint")
        usurper = Producer(transactional_producer_config(bootstrap, names["app"], w.worker.id))
        usurper.init_transactions(30)
        h.produce(bootstrap, names["src"], good[10:], key_serde=STR, value_serde=JSON)
        w.thread.join(60)
        assert isinstance(w.error, WorkerFenced), w.error
        assert "took over" in str(w.error)
    finally:
        if w.thread.is_alive():
            w.worker.stop()
            w.thread.join(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": names["app"]})
    try:
        [tp] = c.committed([TopicPartition(names["src"], 0)], timeout=10)
    finally:
        c.close()
    assert tp.offset == 10


@pytest.mark.real_kafka("Tansu does not fence a static member replaced by one with the same group.instance.id")
def test_a_second_instance_with_the_same_identity_fences_the_first(tmp_path, bootstrap):
    """Same process id and worker index = same transactional.id and group.instance.id: the newcomer
    fences the old one, which stops without committing; nothing is lost or doubled."""
    from streamproc.runtime.worker.errors import FatalKafkaError

    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_COUNT, 2, outputs=("out_table", "out_ids"))
    recs = events(3000, seed=9, late_every=0)
    want: dict = {}
    for _, v, _ in recs:
        want[v["user"]] = want.get(v["user"], 0) + 1
    h.produce(bootstrap, names["src"], recs[:1500], key_serde=STR, value_serde=JSON)
    old = h.WorkerThread(plan, opts, process_id="twin").start()
    new = None
    try:
        h.wait_until(lambda: old.worker.records_in >= 1500, 60, what="the first instance to run")
        new = h.WorkerThread(plan, opts, process_id="twin").start()
        h.wait_until(lambda: new.worker.tasks, 60, what="the second instance to take over")
        h.produce(bootstrap, names["src"], recs[1500:], key_serde=STR, value_serde=JSON)
        h.wait_until(lambda: not old.thread.is_alive(), 60, what="the old instance to be fenced")
        assert isinstance(old.error, FatalKafkaError), old.error
        h.wait_until(lambda: {k: v["count"] for k, v in
                              last_per_key(read(bootstrap, names["out_table"], quiet_s=0.5)).items()} == want,
                     90, interval=1.0, what="final counts after the takeover")
    finally:
        if new is not None:
            new.stop()
        if old.thread.is_alive():
            old.worker.stop()
            old.thread.join(30)
    ids = {v for _, v, _ in read(bootstrap, names["out_ids"], quiet_s=1.0)}
    assert ids == set(range(len(recs)))


def test_missing_source_topic_is_refused_before_anything_runs(tmp_path, bootstrap):
    from streamproc.errors import BrokerError
    from streamproc.runtime.instance.app import run_app

    name = h.unique("rt")
    ref = h.write_topology(tmp_path / "missing.py", TOPO_BAD_INPUT.format(app=name, src=f"{name}-nope",
                                                                           out=f"{name}-out", policy="fail"))
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), topology=ref)
    with pytest.raises(BrokerError, match="do not exist"):
        run_app(h.load_plan(ref), opts)
