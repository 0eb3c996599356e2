"""Figures that tell the truth, and the smaller start-up points of issue 20 (DESIGN.md sections 7 and 8).

* ``streamproc_store_keys`` is the exact count of live keys (RocksDB: not ``estimate-num-keys``, which
  counts every update still in a memtable; never the time index or deleted keys);
* the status line counts tasks as the task manager does: a task (sub-topology, partition) once, however
  many workers report it during a rebalance; a stopped worker, or a late report of a restarted one's
  predecessor, holds no tasks;
* input and internal (repartition, changelog) records are counted apart, under their own names;
* every assigned partition has its consumed counter and lag series from the start, at 0;
* the no-partitions warning repeats the broker's group state only when it is consistent with what the
  worker knows, else says it cannot tell;
* one log format per stream: Python's own stderr output (warnings, uncaught exceptions) goes through logging;
* a dead broker port is reported within seconds, a silent one after the bounded retry; a missing source
  topic exits 2; an illegal topic name is reported as illegal.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from types import SimpleNamespace

import pytest
import typer
from confluent_kafka import KafkaError, TopicPartition

import runtime_helpers as h
from streamproc import Topology, serdes
from streamproc.errors import BrokerError, TopicError, UnrecoverableError
from streamproc.kafka import admin as kadmin
from streamproc.kafka.retry import retrying
from streamproc.plan import compile_topology
from streamproc.runtime.instance import logs
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.observe import Observer
from streamproc.runtime.worker.stats import WorkerStats
from streamproc.runtime.worker.group import describe_group
from streamproc.runtime.worker.loop import Worker
from streamproc.state import DELETED, MemoryBackend

S, J = serdes.String(), serdes.Json()


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    env.pop("FORCE_COLOR", None)
    return env


def _free_port() -> int:
    return h.free_port()


# ===================================================================================== 1. store keys

class _Spec:
    def __init__(self, name, kind):
        self.name, self.kind, self.fingerprint = name, kind, None


def _rocks(path, *stores):
    from streamproc.state.rocksdb import RocksDBBackend

    return RocksDBBackend(path, [_Spec(n, k) for n, k in stores])


def _count(backend, store):
    """``live_keys`` until the first count (in chunks) is done."""
    for _ in range(10_000):
        n = backend.live_keys(store)
        if n is not None:
            return n
    raise AssertionError("the count never finished")


def test_store_keys_count_live_keys_exactly_where_rocksdb_estimates_every_update(tmp_path):
    """13 customers updated 2000 times: 13 keys (RocksDB's estimate counts the updates still in memtables)."""
    b = _rocks(tmp_path / "t", ("spend", "kv"), ("per-min", "window"))
    try:
        for round_ in range(2000):
            b.write({"spend": {f"c{i}": {"total": round_} for i in range(13)},
                     "per-min": {(f"c{round_ % 13}", 60_000 * (round_ % 4)): round_}}, {"stream_time": round_})
        assert b.live_keys("spend") == 13
        assert b.live_keys("per-min") == 4 * 13 and len(b.items("per-min")) == 4 * 13   # not the time index
        estimate = int(b._cf["spend"].property_int_value("rocksdb.estimate-num-keys"))
        assert estimate > 13, "RocksDB's own estimate was right here: this test proves nothing about it"
        b.write({"spend": {"c0": DELETED, "c1": DELETED, "nobody": DELETED}}, {})   # tombstones are not keys
        assert b.live_keys("spend") == 11
    finally:
        b.close()


@pytest.mark.parametrize("chunk", [3, 250_000])
def test_rocksdb_live_keys_follow_every_write_delete_restore_and_reopen(tmp_path, monkeypatch, chunk):
    """A model check: kv, window (time index) and session (due-time index) stores, random writes and deletes,
    reads remembered or not, a first count in chunks of ``chunk`` keys interleaved with writes, a restore."""
    from streamproc.state import rocksdb

    monkeypatch.setattr(rocksdb, "COUNT_CHUNK", chunk)
    stores = (("kv", "kv"), ("w", "window"), ("s", "session"))
    b = _rocks(tmp_path / "t", *stores)
    rnd = random.Random(20)
    model: dict = {n: {} for n, _ in stores}

    def key(store):
        return (f"k{rnd.randrange(15)}", 1000 * rnd.randrange(5)) if store == "w" else f"k{rnd.randrange(40)}"

    try:
        for step in range(400):
            changes = {}
            for store in model:
                kv = {}
                for _ in range(rnd.randrange(8)):
                    k = key(store)
                    kv[k] = DELETED if rnd.random() < 0.3 else ([rnd.randrange(100), 1] if store == "s" else step)
                if kv and rnd.random() < 0.5:                 # what the operators read before they write
                    b.get_many(store, list(kv)[: len(kv) // 2 + 1])
                changes[store] = kv
                for k, v in kv.items():
                    if v is DELETED:
                        model[store].pop(k, None)
                    else:
                        model[store][k] = v
            b.write(changes, {"stream_time": step})
            if step % 3 == 0:
                for store in model:
                    n = b.live_keys(store)
                    assert n is None or n == len(model[store]), (step, store, n, len(model[store]))
        for store in model:
            assert _count(b, store) == len(model[store]) == len(b.items(store))
        # a restore replaces what the count knew: counted again
        enc = b._enc["kv"]
        from streamproc.state.codec import encode_value

        b.restore_batch({"kv": [(enc(f"r{i}"), encode_value(i)) for i in range(7)]})
        assert _count(b, "kv") == len(model["kv"]) + 7
    finally:
        b.close()
    b = _rocks(tmp_path / "t", *stores)                      # reopened: counted from what is stored
    try:
        assert _count(b, "kv") == len(model["kv"]) + 7 and _count(b, "w") == len(model["w"])
    finally:
        b.close()


def test_memory_backend_counts_live_keys():
    b = MemoryBackend()
    b.write({"c": {"a": 1, "b": 2}}, {})
    b.write({"c": {"a": DELETED, "z": DELETED}}, {})
    assert b.live_keys("c") == 1 and b.estimate_keys("c") == 1 and b.live_keys("nope") == 0


# ===================================================================================== 2. the observer

def _snap(worker="w", internal=(), consumed=None, produced=None, running=(), restoring=(), final=False, **gauges):
    st = WorkerStats(worker, internal)
    for tp, n in (consumed or {}).items():
        st.consume(tp, n)
    for t, n in (produced or {}).items():
        st.produce(t, n)
    st.committed(0.01, [])
    st.task_keys, st.restoring_keys = list(running), list(restoring)
    st.tasks = {"running": len(running), "restoring": len(restoring)}
    for k, v in gauges.items():
        setattr(st, k, v)
    return st.snapshot(final)


def _observer(**kw) -> Observer:
    return Observer("shop", multiprocessing.get_context("spawn"), **kw)


TASKS = [(st, p) for st in (0, 1) for p in range(4)]           # an app with 8 tasks


def test_the_status_line_counts_each_task_once_during_a_rebalance():
    """The report of the issue: 8 tasks, a rebalance, "11 running / 1 restoring". Worker 0's last report still
    lists every task (it has not reported since it lost some); worker 1 reports what it took over."""
    o = _observer()
    o._handle(("stats", 0, _snap(running=TASKS)))
    time.sleep(0.01)
    o._handle(("stats", 1, _snap(running=TASKS[:3], restoring=TASKS[3:4])))
    f = o.figures()
    assert (f["running"], f["restoring"]) == (7, 1)                   # was 11 / 1
    assert f["running"] + f["restoring"] <= len(TASKS)
    assert "tasks 7 running / 1 restoring" in o.status_line()
    time.sleep(0.01)
    o._handle(("stats", 0, _snap(running=TASKS[4:])))               # worker 0 reports after the rebalance
    f = o.figures()
    assert (f["running"], f["restoring"]) == (7, 1)
    o._handle(("stats", 1, _snap(running=TASKS[:4])))
    assert (o.figures()["running"], o.figures()["restoring"]) == (8, 0)


def test_a_stopped_or_exited_worker_holds_no_tasks_and_its_counters_stay():
    o = _observer()
    o.worker_started(0, restart=False)
    o.worker_started(1, restart=False)
    o._handle(("stats", 0, _snap(running=TASKS[:4], consumed={("in", 0): 5}, lag={("in", 0): 3}, assigned=4)))
    o._handle(("stats", 1, _snap(running=TASKS[4:], consumed={("in", 1): 2})))
    o._handle(("stats", 0, _snap(running=TASKS[:4], consumed={("in", 0): 6}, final=True)))   # worker 0 stops
    f = o.figures()
    assert (f["running"], f["consumed"], f["lag"]) == (4, 8, 0)
    assert o.running_tasks() == set(TASKS[4:])
    o.worker_exited(1)                                    # killed: no final report, the supervisor saw it go
    f = o.figures()
    assert (f["running"], f["consumed"]) == (0, 8)
    snaps = o.snapshots()
    assert snaps[0]["assigned"] == 0 and snaps[0]["tasks"] == {"running": 0, "restoring": 0}


def test_a_late_report_of_a_restarted_workers_predecessor_only_adds_to_the_counters():
    """Worker 0 crashed; its last reports are still queued when its successor starts. They must not bring
    back its tasks (the other worker holds them now), nor lose its counts, nor count twice."""
    o = _observer()
    o.worker_started(0, restart=False)
    early = _snap(running=TASKS[:4], consumed={("in", 0): 10})
    late = dict(_snap(running=TASKS[:4], consumed={("in", 0): 12}), pid=early["pid"], started=early["started"])
    o._handle(("stats", 0, early))
    time.sleep(0.01)
    o.worker_started(0, restart=True)
    o._handle(("stats", 1, _snap(running=TASKS)))              # worker 1 took every task
    o._handle(("stats", 0, late))                             # the predecessor's last report, after the restart
    f = o.figures()
    assert (f["running"], f["restoring"], f["consumed"]) == (8, 0, 12)
    assert o.running_tasks() == set(TASKS)
    o._handle(("stats", 0, _snap(running=[], consumed={("in", 0): 1})))   # the successor's first report
    assert o.figures()["consumed"] == 13
    o.worker_started(0, restart=True)                         # and again: nothing lost, nothing twice
    assert o.figures()["consumed"] == 13


def test_input_and_internal_records_are_counted_apart_and_every_series_exists_at_0():
    rep, log_ = "shop-by-tier-repartition", "shop-spend-changelog"
    st = WorkerStats("shop-p-0", {rep, log_})
    st.track([("orders", 0), ("orders", 1), (rep, 0)], ["out", rep, log_])
    snap = st.snapshot()
    assert snap["consumed"] == {("orders", 0): 0, ("orders", 1): 0}
    assert snap["internal_consumed"] == {(rep, 0): 0}
    assert snap["produced"] == {"out": 0} and snap["internal_produced"] == {rep: 0, log_: 0}
    st.consume(("orders", 0), 1924)
    st.consume((rep, 0), 1911)
    st.produce(rep, 1911)
    st.produce(log_, 40)
    st.produce("out", 13)
    st.committed(0.01, [])
    st.track([("orders", 0)])                                   # tracking again keeps the counts
    snap = st.snapshot()
    assert snap["consumed"] == {("orders", 0): 1924, ("orders", 1): 0}
    assert snap["internal_consumed"] == {(rep, 0): 1911}
    assert snap["produced"] == {"out": 13} and snap["internal_produced"] == {rep: 1911, log_: 40}

    o = _observer(metrics_port=0).start()
    try:
        o._handle(("stats", 0, dict(snap, lag={("orders", 0): 0, ("orders", 1): 0, (rep, 0): 0})))
        assert "1,924 consumed (+1,911 internal)" in o.status_line()
        server = o._server[0] if isinstance(o._server, tuple) else o._server
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).read().decode()
    finally:
        o.stop()
    from prometheus_client.parser import text_string_to_metric_families

    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for fam in text_string_to_metric_families(body) for s in fam.samples}

    def v(name, **labels):
        return m.get((name, tuple(sorted({"worker": "0", **{k: str(x) for k, x in labels.items()}}.items()))))

    assert v("streamproc_records_consumed_total", topic="orders", partition=0) == 1924
    assert v("streamproc_records_consumed_total", topic="orders", partition=1) == 0      # exists, at 0
    assert v("streamproc_records_consumed_total", topic=rep, partition=0) is None
    assert v("streamproc_internal_records_consumed_total", topic=rep, partition=0) == 1911
    assert v("streamproc_records_produced_total", topic="out") == 13
    assert v("streamproc_internal_records_produced_total", topic=log_) == 40
    assert v("streamproc_consumer_lag", topic="orders", partition=1) == 0


# ===================================================================================== 3. the worker's view

class _FakeConsumer:
    """What ``Worker.observe`` reads of its consumer."""

    def __init__(self, assigned, positions, marks, member_id="m-1"):
        self.assigned, self.positions, self.marks, self.member_id = assigned, positions, marks, member_id

    def assignment(self):
        return [TopicPartition(t, p) for t, p in self.assigned]

    def position(self, tps):
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
                for tp in tps]

    def get_watermark_offsets(self, tp, cached=False):
        assert cached, "observe never asks the broker: it reads what the fetches learnt"
        return self.marks.get((tp.topic, tp.partition), (-1001, -1001))

    def memberid(self):
        return self.member_id


def _worker(tmp_path):
    t = Topology("shop")
    (t.stream("orders", key=S, value=J).group_by(lambda k, v: v["tier"], name="by-tier")
     .count(name="per-tier").to("out", key=S, value=J))
    plan = compile_topology(t)
    opts = RunOptions("127.0.0.1:1", state_dir=str(tmp_path), topology="unused.py")
    return plan, Worker(plan, opts, backend_factory=lambda st, p: MemoryBackend())


def test_the_worker_reports_every_assigned_partition_from_the_start(tmp_path):
    plan, w = _worker(tmp_path)
    [rep] = plan.repartition_topics
    changelog = plan.store("per-tier").changelog
    mgr = w.task_manager
    assigned = [("orders", 0), ("orders", 1), ("orders", 2), (rep, 0), (rep, 1)]
    mgr.assign(assigned)
    mgr.restored(mgr.key_of(rep, 0))                      # task (1, 0) restored; (1, 1) still restoring
    w.task_manager.running(mgr.key_of(rep, 0)).state.backend.write({"per-tier": {"gold": 3, "silver": 1}}, {})
    w.consumer = _FakeConsumer(
        assigned,
        positions={("orders", 0): 5, (rep, 0): 7},
        marks={("orders", 0): (0, 9), ("orders", 1): (0, 0), (rep, 0): (0, 7), (rep, 1): (0, 50)})
    snap = w.observe()
    # counters of every assigned partition and output topic exist, at 0, before any record
    assert snap["consumed"] == {("orders", 0): 0, ("orders", 1): 0, ("orders", 2): 0}
    assert snap["internal_consumed"] == {(rep, 0): 0, (rep, 1): 0}
    assert snap["produced"] == {"out": 0} and snap["internal_produced"] == {rep: 0, changelog: 0}
    # lag: measured (9 - 5); a fetched partition nothing came from is at its end; not fetched yet: 0;
    # a partition paused while its task restores: 0 (not measured yet)
    assert snap["lag"] == {("orders", 0): 4, ("orders", 1): 0, ("orders", 2): 0, (rep, 0): 0, (rep, 1): 0}
    assert snap["assigned"] == 5
    # tasks as the task manager has them, by key
    assert snap["tasks"] == {"running": 4, "restoring": 1}
    assert snap["task_keys"] == [(0, 0), (0, 1), (0, 2), (1, 0)] and snap["restoring_keys"] == [(1, 1)]
    assert snap["store_keys"] == {"per-tier": 2}
    # once measured, a lag is kept while it cannot be measured (paused for a restore)
    w.consumer.positions[(rep, 1)] = 20
    mgr.restored(mgr.key_of(rep, 1))
    assert w.observe()["lag"][(rep, 1)] == 30
    w.consumer.positions.pop((rep, 1))
    w.consumer.marks.pop((rep, 1))
    assert w.observe()["lag"][(rep, 1)] == 30
    assert w.observe(final=True)["final"] is True


# ===================================================================================== 4. group state

def _group(state, *members):
    return SimpleNamespace(state=SimpleNamespace(name=state), members=[
        SimpleNamespace(member_id=m, group_instance_id=i, assignment=SimpleNamespace(topic_partitions=[None] * n))
        for m, i, n in members])


def test_the_no_partitions_warning_repeats_only_a_group_state_that_can_be_right():
    opts = RunOptions("127.0.0.1:1")
    me = dict(instance_id="shop-p-1", member_id="m-1")
    # what the development broker answers while 2 workers run: not repeated as the group's state
    text = describe_group(opts, "shop", **me, describe=lambda g: _group("STABLE"))
    assert "cannot be told" in text and "STABLE with 0 member(s)" in text and "does not list this worker" in text
    text = describe_group(opts, "shop", instance_id="shop-p-1", member_id=None, describe=lambda g: _group("STABLE"))
    assert "cannot be told" in text and "has members" in text
    text = describe_group(opts, "shop", **me, describe=lambda g: _group("EMPTY"))
    assert "cannot be told" in text
    # a faithful answer: repeated, with who holds how many partitions
    text = describe_group(opts, "shop", **me, describe=lambda g: _group(
        "STABLE", ("m-0", "shop-p-0", 4), ("m-1", "shop-p-1", 0)))
    assert text.startswith("state STABLE (as the broker reports it), 2 member(s)")
    assert "shop-p-0 with 4 partition(s)" in text and "cannot be told" not in text

    def fails(group):
        raise RuntimeError("GROUP_AUTHORIZATION_FAILED")

    text = describe_group(opts, "shop", **me, describe=fails)
    assert "cannot be told" in text and "GROUP_AUTHORIZATION_FAILED" in text


# ===================================================================================== 5. one log format

@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, threading.excepthook, sys.excepthook, sys.unraisablehook,
             warnings.showwarning)
    yield
    for hd in list(root.handlers):
        root.removeHandler(hd)
    for hd in saved[0]:
        root.addHandler(hd)
    root.setLevel(saved[1])
    threading.excepthook, sys.excepthook, sys.unraisablehook = saved[2:5]
    logging.captureWarnings(False)
    warnings.showwarning = saved[5]


def test_python_warnings_and_uncaught_thread_exceptions_come_out_in_the_streams_format(root_logging, capsys):
    logs.configure(logging.INFO, "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library is unhappy", RuntimeWarning)

    def boom():
        raise ValueError("in a thread")

    t = threading.Thread(target=boom, name="helper")
    t.start()
    t.join()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    recs = [json.loads(x) for x in lines]                       # every line is one JSON object
    assert any(r["logger"] == "py.warnings" and "a library is unhappy" in r["msg"] for r in recs), recs
    assert any(r["level"] == "ERROR" and "helper" in r["msg"] and "ValueError: in a thread" in r.get("exc", "")
               for r in recs), recs


TOPO_WARNS = '''
import warnings
from streamproc import Topology, serdes
warnings.warn("this topology uses something deprecated", DeprecationWarning)
t = Topology("{app}")
t.stream("{src}", key=serdes.String(), value=serdes.Json()).group_by_key().count().to("{out}")
'''


def test_a_dead_broker_port_is_reported_within_seconds_in_the_streams_format(tmp_path):
    """`run` against a port nothing listens on: exit 1 (a broker may come back) within seconds, one paragraph
    saying nothing listens; every stderr line JSON from the first (the topology's warning, the generated
    store name's warning, the error)."""
    port = _free_port()
    ref = h.write_topology(tmp_path / "t.py", TOPO_WARNS.format(app="dead", src="in", out="out"))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-m", "streamproc", "run", ref,
                        "-b", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s"), "--log-format", "json"],
                       env=_env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stderr
    assert took < 20, f"took {took:.1f} s"
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    recs = []
    for x in lines:
        try:
            recs.append(json.loads(x))
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {x!r}\n{p.stderr}")
    assert any("deprecated" in r["msg"] for r in recs), lines
    assert not [r for r in recs if r["logger"].startswith("streamproc.kafka.client")], recs   # no retry noise
    [error] = [r for r in recs if r["level"] == "ERROR"]
    assert f"127.0.0.1:{port}" in error["msg"] and "nothing is listening" in error["msg"], error


# ===================================================================================== 6. broker start-up

def _kerr(code, text):
    return KafkaError(code, text)


def test_nothing_listens_only_when_every_server_refused_and_nothing_else_went_wrong():
    refused = "{0}/bootstrap: Connect to ipv4#127.0.0.1:{1} failed: Connection refused (after 0ms in state CONNECT)"
    a, b = refused.format("127.0.0.1:1", 1), refused.format("localhost:2", 2)
    down = _kerr(KafkaError._ALL_BROKERS_DOWN, "2/2 brokers are down")
    T = KafkaError._TRANSPORT
    assert kadmin.nothing_listens([_kerr(T, a), down], "127.0.0.1:1")
    assert kadmin.nothing_listens([_kerr(T, a), _kerr(T, b), down, _kerr(T, a)], "127.0.0.1:1, localhost:2")
    assert kadmin.nothing_listens([_kerr(T, refused.format("localhost:9092", 9092))], "PLAINTEXT://localhost")
    assert not kadmin.nothing_listens([_kerr(T, a)], "127.0.0.1:1,localhost:2")       # the other one: unknown
    assert not kadmin.nothing_listens([], "127.0.0.1:1")
    assert not kadmin.nothing_listens([_kerr(T, a), _kerr(T, "localhost:2/bootstrap: Failed to resolve "
                                                             "'localhost:2': Name or service not known")],
                                      "127.0.0.1:1,localhost:2")
    assert not kadmin.nothing_listens([_kerr(T, a), _kerr(KafkaError._TIMED_OUT, "timed out")], "127.0.0.1:1")


def test_retrying_gives_up_early_when_told_waiting_cannot_help():
    clock = [0.0]
    calls = []

    def step():
        calls.append(clock[0])
        raise _kexc(KafkaError._TRANSPORT)

    def give_up(last, waited):
        return BrokerError(f"no point after {waited:g} s") if waited >= 3 else None

    with pytest.raises(BrokerError, match="no point after 3") as e:
        retrying("answer", step, 30, give_up=give_up,
                 sleep=lambda s: clock.__setitem__(0, clock[0] + 1.0), clock=lambda: clock[0])
    assert len(calls) == 4 and e.value.__cause__ is not None


def _kexc(code):
    from confluent_kafka import KafkaException

    return KafkaException(KafkaError(code))


def test_a_dead_port_fails_in_seconds_and_a_silent_broker_gets_the_bounded_retry():
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}: nothing is listening there") as e:
        kadmin.wait_for_broker(f"127.0.0.1:{port}", timeout_s=30)
    assert time.monotonic() - t0 < 10
    assert "Connection refused" in str(e.value) and "--bootstrap-servers" in str(e.value)

    # a port that accepts connections but never answers (a broker starting, overloaded): waited for
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(BrokerError) as e:
            kadmin.wait_for_broker(address, timeout_s=5)
        took = time.monotonic() - t0
    assert 4.5 <= took < 15, took
    assert "nothing is listening" not in str(e.value) and f"cannot reach Kafka at {address} after 5 s" in str(e.value)


class _Admin:
    """A metadata listing without the topics the test asks for."""

    _streamproc_bootstrap = "fake:9092"

    def __init__(self, *topics):
        self.calls = 0
        self.topics = {t: SimpleNamespace(topic=t, error=None, partitions={0: SimpleNamespace(
            id=0, leader=1, error=None)}) for t in topics}

    def list_topics(self, topic=None, timeout=-1):
        self.calls += 1
        return SimpleNamespace(topics=self.topics, brokers={1: None})


def test_a_missing_source_topic_is_an_error_restarting_cannot_fix():
    admin = _Admin("other")
    with pytest.raises(TopicError, match="source topic.s. 'orders' do not exist") as e:
        kadmin.validate_source_topics(admin, ["orders"])
    assert isinstance(e.value, UnrecoverableError) and isinstance(e.value, BrokerError)


@pytest.mark.parametrize("name, why", [("orders 2024", "contains ' '"), ("bad/name", "contains '/'"),
                                       ("..", "cannot be named '..'"), ("x" * 250, "250 characters"),
                                       ("caf\u00e9", "contains '\u00e9'")])
def test_an_illegal_topic_name_is_reported_as_illegal_not_missing(name, why):
    admin = _Admin()
    with pytest.raises(TopicError) as e:
        kadmin.validate_source_topics(admin, ["fine", name])
    msg = str(e.value)
    assert "not legal Kafka topic names" in msg and why in msg and "do not exist" not in msg
    assert "'fine'" not in msg and admin.calls == 0                 # told before asking the broker
    with pytest.raises(TopicError, match="not legal"):
        kadmin.create_topics(admin, [name], 1)
    assert kadmin.illegal_topic_name("orders-v2.eu_1") is None


def test_the_cli_exits_2_for_a_topic_error_and_1_for_an_unreachable_broker():
    from streamproc.cli._app import guarded

    def raising(exc):
        @guarded
        def command():
            raise exc
        return command

    with pytest.raises(typer.Exit) as e:
        raising(TopicError("source topic(s) 'orders' do not exist"))()
    assert e.value.exit_code == 2
    with pytest.raises(typer.Exit) as e:
        raising(BrokerError("cannot reach Kafka at x:1"))()
    assert e.value.exit_code == 1


@pytest.mark.broker
def test_run_with_a_missing_source_topic_exits_2(tmp_path, kafka):
    bootstrap = kafka[0]
    app = h.unique("fig")
    ref = h.write_topology(tmp_path / "t.py", TOPO_WARNS.format(app=app, src=f"{app}-nope", out=f"{app}-out"))
    p = subprocess.run([sys.executable, "-m", "streamproc", "run", ref, "-b", bootstrap,
                        "--state-dir", str(tmp_path / "s"), "--log-format", "text"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"'{app}-nope' do not exist" in p.stderr and "Traceback" not in p.stderr
