"""Internal topics hold the streamproc codec, never pickle (DESIGN.md sections 5 and 7), on a broker.

* tuple keys through a repartition topic: equal keys are equal bytes, so one logical key lands
  in one partition and gets one final window result (pickle's memo made ``(s, s)`` and
  ``(s, copy of s)`` different bytes and split the key);
* a pickle on a repartition topic is a bad record under the upstream source's ``on_error``
  policy (dead-lettered with its raw bytes, skipped and counted, or a clear failure), never
  unpickled, and the good records around it are processed;
* a pickle or garbage on a changelog stops the restore (memory backend, RocksDB without local
  state, the start-up check of the newest metadata record) with a ``StateError`` naming topic,
  partition and offset, never unpickled, nothing processed;
* a changelog written by another definition of the store is refused by the memory backend and
  by a new host (no local state), and at start-up before the topic-config check (a grown window);
* the same topology under another ``PYTHONHASHSEED`` is the same definition.

Workers run in threads of the test process (``runtime_helpers.WorkerThread``) except where the
test is about ``streamproc run`` (subprocesses).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

import runtime_helpers as h
from streamproc.errors import StateError
from streamproc.partitioner import partition_for
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.load import process_id
from streamproc.state import codec as K
from test_runtime_kafka import JSON, STR, setup_app

pytestmark = pytest.mark.broker

# A whole second (windows start at T0, T0 + 1000, ...) of today: records stamped years ago are deleted by a
# broker's time retention (Apache Kafka: a segment whose newest record is older than retention.ms, 7 days by
# default, goes at the next retention check, every 5 minutes), so a run could find its input gone.
T0 = int(time.time()) // 60 * 60_000
CHANGED = "was written by a different definition of its operator"


# ------------------------------------------------------------------------------------------ helpers

class _Evil:
    """Unpickling this creates (truncates) ``path``: proof that somebody unpickled it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(path) -> bytes:
    return pickle.dumps(_Evil(path), protocol=5)


def _check_payload_is_live(tmp_path) -> None:
    """The payload really runs code when unpickled (else the 'marker never exists' checks prove nothing)."""
    probe = tmp_path / "probe-unpickled"
    pickle.loads(evil_pickle(probe)).close()
    assert probe.exists()


def produce_raw(bootstrap, topic, records, partition=0) -> list[int]:
    """Produce ``[(key bytes, value bytes, ts), ...]`` to one partition as they are; their offsets."""
    from confluent_kafka import Producer

    offsets, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})
    for k, v, ts in records:
        p.produce(topic, v, k, partition=partition, timestamp=ts, on_delivery=on_delivery)
        # one record per batch: Tansu reports the high watermark of a multi-record batch as its first offset + 1
        assert p.flush(30) == 0 and not errors, errors
    assert len(offsets) == len(records)
    return offsets


def start(plan, opts) -> h.WorkerThread:
    """A worker with the instance's identity (the process id persisted in the state dir)."""
    return h.WorkerThread(plan, opts, process_id=process_id(opts.state_dir, plan.app_id)).start()


def run_until(plan, opts, pred, timeout=60.0, what="processing"):
    """Run a worker in a thread until ``pred(worker)``; stop it cleanly; return the worker."""
    w = start(plan, opts)
    try:
        h.wait_until(lambda: pred(w.worker), timeout, what=what)
    finally:
        w.stop()
    return w.worker


def restoring(w) -> bool:
    return bool(w.restoring)


def idle_after(n):
    """Predicate: at least ``n`` records processed, nothing restoring, the checkpoint closed."""
    return lambda w: w.records_in >= n and w.tasks and not restoring(w) and not w.open


@contextlib.contextmanager
def refused_worker(plan, opts, timeout=60.0):
    """A worker that must stop by itself (an error); the with-block runs while it starts (joins its
    group, restores); on leaving the block, wait for it to stop (``pytest.fail`` if it does not)."""
    w = start(plan, opts)
    try:
        yield w
    except BaseException:
        w.worker.stop()
        w.thread.join(30)
        raise
    wait_refused(w, timeout)


def wait_refused(w: h.WorkerThread, timeout=60.0) -> h.WorkerThread:
    """Wait for a started worker that must stop by itself (an error); stop it and fail if it does not."""
    w.thread.join(timeout)
    if w.thread.is_alive():
        w.worker.stop()
        w.thread.join(30)
        pytest.fail(f"the worker did not stop by itself within {timeout:g} s "
                    f"(records processed: {w.worker.records_in})")
    assert w.error is not None, "the worker stopped without an error"
    return w


def no_worker_state(state_dir, app_id) -> bool:
    """Nothing a worker makes - a task's or the global tables' directory - in ``state_dir`` for ``app_id``
    (start-up itself may record there, in a file, which cluster the state belongs to)."""
    d = state_dir / app_id
    return not d.exists() or not any(p.is_dir() for p in d.iterdir())


def committed(bootstrap, group, topic, partition=0) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = c.committed([TopicPartition(topic, partition)], timeout=10)
    finally:
        c.close()
    return tp.offset


class Tail:
    """Every record of a topic (String keys, Json values) so far: a consumer that keeps its place."""

    def __init__(self, bootstrap, topic, partitions=1):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": h.unique("tail"),
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.records = []

    def poll(self) -> list:
        for m in self.c.consume(1000, 0.2):
            if m.error() is None:
                self.records.append((STR.deserialize(m.key()), JSON.deserialize(m.value())))
        return self.records

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.c.close()
        return False


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    env.update(extra)
    return env


def streamproc_run(ref, bootstrap, state_dir, *extra):
    return [sys.executable, "-m", "streamproc", "run", ref, "--bootstrap-servers", bootstrap,
            "--state-dir", str(state_dir), "--config", "consumer.session.timeout.ms=6000",
            "--log-format", "text", *extra]      # the paragraphs people read (json is the default off a tty)


# ------------------------------------------------------------------------------------------ 1. tuple keys

TOPO_PAIRS = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())


def pair_b(v):
    if v["mode"] == "same":
        v["b"] = v["a"]                        # the very same object as v["a"]
    elif v["mode"] == "copy":
        v["b"] = "".join(list(v["a"]))         # a distinct but equal object
    return v                                   # "json": the decoder's own, distinct object


(s.map_values(pair_b)
  .group_by(lambda k, v: (v["a"], v["b"]), name="pairs")
  .window(windows.Tumbling("1s", grace="10s"))
  .count(name="pair-counts")
  .to("{out}", key=serdes.Json(), value=serdes.Json()))
'''


def _pairs_input(n=600):
    import random

    rnd = random.Random(7)
    names = [f"sensor-{w}-{i:03d}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "epsilon",
                                                          "zeta", "eta", "theta"])]
    recs, want = [], Counter()
    for i in range(n):
        a = rnd.choice(names)
        mode = rnd.choice(["same", "copy", "json", "json", "other"])
        b = f"{a}-other" if mode == "other" else a
        ts = T0 + rnd.randrange(3000)          # windows T0, T0+1s, T0+2s; grace 10 s: nothing late
        recs.append((f"k{i}", {"id": i, "a": a, "b": b, "mode": "json" if mode == "other" else mode}, ts))
        want[((a, b), T0 + (ts - T0) // 1000 * 1000)] += 1
    return recs, want


def test_tuple_keys_of_equal_strings_go_to_one_partition_and_one_window(tmp_path, kafka, monkeypatch):
    from streamproc.runtime.worker import purge as worker_mod

    monkeypatch.setattr(worker_mod, "PURGE_INTERVAL_S", 3600.0)    # keep the repartition records to read them
    s1 = "sensor-alpha-000"
    s2 = "".join(list(s1))
    assert s2 == s1 and s2 is not s1
    assert pickle.dumps((s1, s1)) != pickle.dumps((s1, s2)), "pickle would not have split this key"
    assert K.encode_key((s1, s1)) == K.encode_key((s1, s2))

    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_PAIRS, 4, outputs=("out",))
    opts.guarantee = "at-least-once"
    [rep] = plan.repartition_topics
    assert rep == f"{names['app']}-pairs-repartition"
    recs, want = _pairs_input()
    modes = Counter(v["mode"] for _, v, _ in recs)
    assert modes["same"] > 50 and modes["copy"] > 50 and modes["json"] > 50
    # later records for every partition of the repartition topic: they close every window
    closers, covered = [], set()
    for i in range(200):
        key = ("zz-closer", f"c{i}")
        p = partition_for(K.encode_key(key), 4)
        if p not in covered:
            covered.add(p)
            closers.append((f"c{i}", {"id": 10_000 + i, "a": key[0], "b": key[1], "mode": "json"}, T0 + 60_000))
    assert covered == {0, 1, 2, 3}

    h.produce(bootstrap, names["src"], recs, key_serde=STR, value_serde=JSON)
    w = start(plan, opts)
    try:
        # everything through the repartition topic before the closers (no record may arrive late)
        h.wait_until(lambda: w.worker.records_in >= 2 * len(recs), 60, what="the input through the repartition topic")
        h.produce(bootstrap, names["src"], closers, key_serde=STR, value_serde=JSON)
        h.read_topic(bootstrap, names["out"], expect=len(want), max_s=60)
        h.wait_until(lambda: w.worker.records_in >= 2 * (len(recs) + len(closers)), 30, what="the closers")
        # every result, and anything more than expected that came in the meantime
        got = h.decode(h.read_topic(bootstrap, names["out"], quiet_s=1.0), JSON, JSON)
    finally:
        w.stop()
    # the records a repartition topic carries besides the data (reserved keys: e.g. a task's watermark) are
    # not keys of the stream: left out (read once the worker stopped writing them)
    repartitioned = [r for r in h.read_topic(bootstrap, rep, quiet_s=2.0, max_s=30) if not K.is_reserved_key(r[2])]

    results = Counter()
    per_window = Counter()
    for k, v, _ in got:
        per_window[(tuple(k), v["window_start"])] += 1
        results[(tuple(k), v["window_start"])] += v["count"]
    split = {kw: n for kw, n in per_window.items() if n > 1}
    assert not split, f"several final results for one (key, window), e.g. {list(split.items())[:3]}"
    assert dict(results) == dict(want)

    # every record of one logical key is in ONE partition: the one its canonical bytes hash to
    parts, key_bytes = defaultdict(set), defaultdict(set)
    for p, _, kb, vb, _, _ in repartitioned:
        k = K.decode_key(kb)
        parts[k].add(p)
        key_bytes[k].add(kb)
        assert isinstance(K.decode_value(vb), dict)
    assert len(repartitioned) == len(recs) + len(closers)
    assert {k for k, _ in want} <= set(parts)
    for k, ps in parts.items():
        assert ps == {partition_for(K.encode_key(k), 4)}, f"key {k!r} is in partitions {sorted(ps)}"
        assert len(key_bytes[k]) == 1, f"key {k!r} was written as {len(key_bytes[k])} different byte strings"


# ------------------------------------------------------------------------------------------ 2. repartition

TOPO_GROUPED_COUNT = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json(), on_error="{policy}")
(s.group_by(lambda k, v: v["user"], name="by-user")
  .count(name="counts")
  .to("{out}", key=serdes.String(), value=serdes.Json()))
'''


def _user_records(n, first_id=0, users=4):
    return [(f"k{i}", {"id": i, "user": f"u{i % users}"}, T0 + i) for i in range(first_id, first_id + n)]


def _counts_of(records) -> dict:
    c = Counter(v["user"] for _, v, _ in records)
    return dict(c)


def _table(tail) -> dict:
    return {k: v["count"] for k, v in tail.poll()}


def test_pickle_on_a_repartition_topic_is_never_unpickled(tmp_path, kafka):
    """Three apps side by side (their group joins overlap): the upstream source of D is
    ``on_error="dead-letter"``, that of F ``on_error="fail"``, that of S ``on_error="skip"``.
    Pickles are produced straight to their repartition topics while they run."""
    from streamproc.runtime.worker.errors import ProcessingFailed

    _check_payload_is_live(tmp_path)
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_GROUPED_COUNT, 1, outputs=("out",),
                                       policy="dead-letter")
    f_names, _, f_plan, f_opts = setup_app(tmp_path, bootstrap, TOPO_GROUPED_COUNT, 1, outputs=("out",),
                                           policy="fail")        # (state dirs: <state>/<app id> each)
    s_names, _, s_plan, s_opts = setup_app(tmp_path, bootstrap, TOPO_GROUPED_COUNT, 1, outputs=("out",),
                                           policy="skip")
    [rep], [f_rep], [s_rep] = plan.repartition_topics, f_plan.repartition_topics, s_plan.repartition_topics
    assert rep == f"{names['app']}-by-user-repartition"
    marker, f_marker, s_marker = tmp_path / "UNPICKLED-D", tmp_path / "UNPICKLED-F", tmp_path / "UNPICKLED-S"
    evil = evil_pickle(marker)
    assert evil[0] == 0x80
    ok_key, ok_value = K.encode_key("u-direct"), K.encode_value({"id": -1, "user": "u-direct"})
    bad = [                                            # (key, value) as they go on the wire
        (ok_key, evil),                                # a pickle as the value
        (ok_key, b"\x01" + evil),                      # ... behind the codec's format byte
        (evil, ok_value),                              # a pickle as the key
        (b"\x01" + evil, ok_value),                    # ... behind the codec's format byte
    ]
    part1, part2 = _user_records(30), _user_records(30, first_id=30)
    h.produce(bootstrap, names["src"], part1, key_serde=STR, value_serde=JSON)
    h.produce(bootstrap, f_names["src"], part1[:10], key_serde=STR, value_serde=JSON)
    h.produce(bootstrap, s_names["src"], part1[:10], key_serde=STR, value_serde=JSON)
    w, f, sk = start(plan, opts), start(f_plan, f_opts), start(s_plan, s_opts)
    tail, s_tail = Tail(bootstrap, names["out"]), Tail(bootstrap, s_names["out"])
    try:
        h.wait_until(lambda: _table(tail) == _counts_of(part1), 60, what="D: part 1 counted")
        # D: the bad records with good ones of the same batch around them
        offsets = produce_raw(bootstrap, rep, [(ok_key, ok_value, T0 + 100)]
                              + [(k, v, T0 + 101 + i) for i, (k, v) in enumerate(bad)]
                              + [(ok_key, ok_value, T0 + 200)])
        h.produce(bootstrap, names["src"], part2, key_serde=STR, value_serde=JSON)
        # F: one pickle after part 1 went through its repartition topic
        h.wait_until(lambda: idle_after(20)(f.worker), 60, what="F: part 1 through the repartition topic")
        [f_off] = produce_raw(bootstrap, f_rep, [(K.encode_key("u0"), evil_pickle(f_marker), T0 + 100)])
        # S: a pickle value and a pickle key between good records
        h.wait_until(lambda: idle_after(20)(sk.worker), 60, what="S: part 1 through the repartition topic")
        produce_raw(bootstrap, s_rep, [(K.encode_key("u0"), evil_pickle(s_marker), T0 + 100),
                                       (ok_key, ok_value, T0 + 101),
                                       (evil_pickle(s_marker), ok_value, T0 + 102)])
        h.produce(bootstrap, s_names["src"], part2[:10], key_serde=STR, value_serde=JSON)

        want = {**_counts_of(part1 + part2), "u-direct": 2}
        h.wait_until(lambda: _table(tail) == want, 60, what="D: the good records counted")
        dlq = h.read_topic(bootstrap, f"{names['app']}-dlq", expect=len(bad), max_s=30)
        h.wait_until(lambda: w.worker.metrics().get("dead_lettered_records") == len(bad), 10,
                     what="the dead-letter metric")
        metrics = w.worker.metrics()
        s_want = {**_counts_of(part1[:10] + part2[:10]), "u-direct": 1}
        h.wait_until(lambda: _table(s_tail) == s_want, 60, what="S: the good records counted")
        h.wait_until(lambda: sk.worker.metrics().get("skipped_records") == 2, 10, what="the skipped metric")
        s_metrics = sk.worker.metrics()
        f.thread.join(60)
        assert not f.thread.is_alive(), "F: the worker did not stop on an undecodable repartition record"
    finally:
        tail.c.close()
        s_tail.c.close()
        if f.thread.is_alive():
            f.worker.stop()
            f.thread.join(30)
        sk.stop()
        w.stop()

    # dead-letter: nothing unpickled, the raw records in <app-id>-dlq, the good records around them counted
    assert not marker.exists(), "a pickle from a repartition topic was unpickled"
    assert len(dlq) == len(bad)
    got = sorted(dlq, key=lambda r: int(dict(r[5])["offset"]))
    for (k, v), off, (_, _, key, value, ts, headers) in zip(bad, offsets[1:-1], got):
        assert (key, value) == (k, v), "the dead letter keeps the raw bytes"
        hd = dict(headers)
        assert hd["topic"] == rep.encode() and hd["partition"] == b"0" and hd["offset"] == str(off).encode()
        error = hd["error"].decode()
        assert "streamproc internal codec" in error and f"offset {off}" in error, error
        if k[:1] == b"\x80" or v[:1] == b"\x80":
            assert "pickle" in error, error
        else:
            assert "not a valid streamproc" in error, error
    assert metrics.get("skipped_records", 0) == 0

    # skip: nothing unpickled, counted as skipped, no dead letters
    assert not s_marker.exists(), "a pickle from a repartition topic was unpickled"
    assert s_metrics.get("dead_lettered_records", 0) == 0

    # fail: nothing unpickled, a one-line error naming topic, partition and offset, nothing committed past it
    assert not f_marker.exists(), "a pickle from a repartition topic was unpickled"
    assert isinstance(f.error, ProcessingFailed), repr(f.error)
    msg = str(f.error)
    assert f"topic {f_rep!r}" in msg and "partition 0" in msg and f"offset {f_off}" in msg, msg
    assert "pickle" in msg and "\n" not in msg, msg
    assert committed(bootstrap, f_names["app"], f_rep) <= f_off, "committed past the record that failed"


# ------------------------------------------------------------------------------------------ 3. changelog

TOPO_KEY_COUNT = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
s.group_by_key().count(name="counts").to("{out}", key=serdes.String(), value=serdes.Json())
'''


def replay(ref, bootstrap, state_dir, *args):
    """``streamproc replay`` in this process: (exit code, output)."""
    from typer.testing import CliRunner

    from streamproc.cli import app as cli_app

    res = CliRunner().invoke(cli_app, ["replay", ref, "--state-dir", str(state_dir),
                                       "--bootstrap-servers", bootstrap, *args])
    return res.exit_code, res.output


def test_pickle_on_a_changelog_stops_the_restore_never_unpickled(tmp_path, kafka):
    _check_payload_is_live(tmp_path)
    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_KEY_COUNT, 2, outputs=("out",))
    [spec] = plan.stores
    assert spec.kind == "kv"
    part1 = _user_records(40)
    h.produce(bootstrap, names["src"], part1, key_serde=STR, value_serde=JSON)
    run_until(plan, opts, idle_after(len(part1)), what="state built")

    marker = tmp_path / "UNPICKLED"
    [evil_at] = produce_raw(bootstrap, spec.changelog, [      # a valid store key, a pickle as the value
        (K.encode_store_key("kv", "k1"), evil_pickle(marker), T0 + 500)], partition=0)
    [garbage_at] = produce_raw(bootstrap, spec.changelog, [   # a key that is no streamproc key (a pickle)
        (evil_pickle(marker), K.encode_value(3), T0 + 501)], partition=1)
    bad = {0: evil_at, 1: garbage_at}
    h.produce(bootstrap, names["src"], _user_records(6, first_id=100), key_serde=STR, value_serde=JSON)
    committed_before = [committed(bootstrap, names["app"], names["src"], p) for p in (0, 1)]

    # the memory backend restores both changelog partitions whole: it meets a bad record and stops
    mem = RunOptions(bootstrap, state_dir=opts.state_dir, client_config=dict(h.CLIENT_CONFIG), topology=ref,
                     state_backend="memory")
    with refused_worker(plan, mem) as w:
        # meanwhile (it joins its group): RocksDB with no local state (a wiped state dir / a new host),
        # `streamproc replay`, one partition at a time
        for p, off in bad.items():
            code, out = replay(ref, bootstrap, tmp_path / f"wiped-{p}", "--partition", str(p))
            assert code != 0, out
            assert f"changelog {spec.changelog}[{p}] at offset {off}" in out, out
            assert "a record cannot be read" in out and "pickle" in out and "Traceback" not in out, out
            assert not marker.exists(), "a pickle from a changelog was unpickled"
    assert isinstance(w.error, StateError), repr(w.error)
    msg = str(w.error)
    named = [p for p, off in bad.items() if f"changelog {spec.changelog}[{p}] at offset {off}" in msg]
    assert len(named) == 1, msg
    assert "a record cannot be read" in msg and "pickle" in msg and "streamproc reset" in msg, msg
    assert not marker.exists(), "a pickle from a changelog was unpickled"
    assert w.worker.records_in == 0, "records were processed on top of a failed restore"

    # a pickle as the newest metadata record: the start-up definition check reads it first and refuses
    from streamproc.runtime.changelog.records import META_KEY
    from streamproc.runtime.instance.app import run_app

    [meta_at] = produce_raw(bootstrap, spec.changelog, [(META_KEY, evil_pickle(marker), T0 + 502)], partition=1)
    fresh = RunOptions(bootstrap, state_dir=str(tmp_path / "fresh"), client_config=dict(h.CLIENT_CONFIG),
                       topology=ref, max_runtime_s=30)
    with pytest.raises(StateError) as e:
        run_app(plan, fresh)
    msg = str(e.value)
    assert f"changelog {spec.changelog}[1] at offset {meta_at}" in msg and "pickle" in msg, msg
    assert no_worker_state(tmp_path / "fresh", names["app"]), "refused by a worker, not at start-up"
    assert not marker.exists(), "a pickle from a changelog was unpickled"

    assert [committed(bootstrap, names["app"], names["src"], p) for p in (0, 1)] == committed_before


# ------------------------------------------------------------------------------------------ 4./5. definitions

TOPO_WINDOW_COUNT = """
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by_key()
  .window(windows.Tumbling("{size}"))
  .aggregate({aggs}, name="counts")
  .to("{out}", key=serdes.String(), value=serdes.Json()))
"""


def _changed_plan(tmp_path, names, tag, **fmt):
    ref = h.write_topology(tmp_path / f"{tag}_{names['app'].replace('-', '_')}.py",
                           TOPO_WINDOW_COUNT.format(**{**names, **fmt}))
    return ref, h.load_plan(ref)


def _assert_changed_definition(msg, changelog):
    assert CHANGED in msg, msg
    assert "streamproc reset" in msg, msg
    assert changelog in msg, msg


def test_a_changelog_of_another_definition_is_refused_memory_new_host_grown_window(tmp_path, kafka):
    """App A (store "counts", tumbling 30 s, count) builds state. Then, with the same app id:
    (a) a sum added, memory backend and a new host's empty RocksDB: refused at start-up by run_app,
    and by the restore loop itself (a worker, `streamproc replay`); nothing processed;
    (b) the window grown to 60 s (which also needs a longer changelog retention), `streamproc run`
    on a new empty state dir: the changed-definition paragraph, not a retention complaint."""
    from streamproc.errors import BrokerError
    from streamproc.kafka.admin import ensure_internal_topics, make_admin
    from streamproc.runtime.instance.app import internal_topic_specs, partition_counts, run_app

    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_WINDOW_COUNT, 1, outputs=("out",),
                                       size="30s", aggs="n=agg.count()")
    [spec] = plan.stores
    part1 = _user_records(30)
    h.produce(bootstrap, names["src"], part1, key_serde=STR, value_serde=JSON)
    run_until(plan, opts, idle_after(len(part1)), what="state built")
    changed_ref, changed = _changed_plan(tmp_path, names, "summed", size="30s",
                                         aggs='n=agg.count(), total=agg.sum("id")')
    grown_ref, grown = _changed_plan(tmp_path, names, "grown", size="60s", aggs="n=agg.count()")
    for p in (changed, grown):
        [s2] = p.stores
        assert s2.changelog == spec.changelog and s2.fingerprint != spec.fingerprint
    h.produce(bootstrap, names["src"], _user_records(5, first_id=100), key_serde=STR, value_serde=JSON)
    committed_before = committed(bootstrap, names["app"], names["src"])

    def options(state_dir, backend):
        return RunOptions(bootstrap, state_dir=str(state_dir), client_config=dict(h.CLIENT_CONFIG),
                          topology=changed_ref, state_backend=backend, max_runtime_s=60)

    # (a) the restore loop itself, in a worker started without the start-up check: the memory backend
    with refused_worker(changed, options(opts.state_dir, "memory")) as w:
        # meanwhile (the worker joins its group) ...
        # run_app refuses at start-up, before any worker runs: memory backend, and RocksDB on a new host
        for state_dir, backend in ((opts.state_dir, "memory"), (tmp_path / "new-host", "rocksdb")):
            with pytest.raises(StateError) as e:
                run_app(changed, options(state_dir, backend))
            _assert_changed_definition(str(e.value), spec.changelog)
        assert no_worker_state(tmp_path / "new-host", names["app"]), "refused by a worker, not at start-up"
        # the restore loop with RocksDB and no local state, only the changelog
        code, out = replay(changed_ref, bootstrap, tmp_path / "new-host-2")
        assert code != 0, out
        _assert_changed_definition(out, spec.changelog)

        # (b) the window grown to 60 s: its changelog needs a longer retention too ...
        with pytest.raises(BrokerError, match="retention"):
            ensure_internal_topics(make_admin(bootstrap), internal_topic_specs(grown, partition_counts(
                grown, {names["src"]: 1})))
        # ... but `streamproc run` (a new, empty state dir) reports the changed definition, not the symptom
        new_dir = tmp_path / "new-empty-state"
        new_dir.mkdir()
        p = subprocess.run(streamproc_run(grown_ref, bootstrap, new_dir), env=cli_env(),
                           capture_output=True, text=True, timeout=90)
        assert p.returncode != 0
        _assert_changed_definition(p.stderr, spec.changelog)
        assert "retention" not in p.stderr.lower(), p.stderr
        assert "Traceback" not in p.stderr and p.stderr.count("error:") == 1, p.stderr
        assert "crashed" not in p.stderr, p.stderr
        # refused from the changelog before anything ran: nothing made in the new state directory
        assert no_worker_state(new_dir, names["app"]), "refused by a worker, not at start-up"
    assert isinstance(w.error, StateError), repr(w.error)
    _assert_changed_definition(str(w.error), spec.changelog)
    assert w.worker.records_in == 0
    assert committed(bootstrap, names["app"], names["src"]) == committed_before


# ------------------------------------------------------------------------------------------ 6. hash seeds

TOPO_SEEDED = '''
from streamproc import Topology, agg, serdes, windows
t = Topology("{app}")
s = t.stream("{src}", key=serdes.String(), value=serdes.Json())
(s.group_by_key()
  .aggregate(fruit=agg.sum(lambda v: sum(n for f, n in v["items"] if f in {{"apple", "pear", "plum", "fig", "kiwi"}})),
             n=agg.count(), name="fruit")
  .to("{out}", key=serdes.String(), value=serdes.Json()))
'''

_SET_ORDER = 'print(list(frozenset({"apple", "pear", "plum", "fig", "kiwi"})))'


def _fruit_records(first, n):
    return [("basket", {"items": [["apple", i], ["stone", 1000], ["fig", 1]]}, T0 + i)
            for i in range(first, first + n)]


def test_same_definition_whatever_the_hash_seed(tmp_path, kafka):
    orders = {seed: subprocess.run([sys.executable, "-c", _SET_ORDER], env=dict(os.environ, PYTHONHASHSEED=seed),
                                   capture_output=True, text=True, check=True).stdout for seed in ("1", "2")}
    assert orders["1"] != orders["2"], "the two seeds iterate the set alike: the test would prove nothing"

    bootstrap = kafka[0]
    names, ref, plan, opts = setup_app(tmp_path, bootstrap, TOPO_SEEDED, 1, outputs=("out",))
    state = tmp_path / "state"
    log_path = tmp_path / "run.log"

    def total(records):                 # "apple" and "fig" count, "stone" does not
        return sum(v["items"][0][1] + v["items"][2][1] for _, v, _ in records)

    tail = Tail(bootstrap, names["out"])

    def emitted(want) -> bool:
        """Some committed output row is ``want``. Not "the last row read": which row a consumer returns last
        is the broker's and the client's business (partitions interleave, a row can be read again); the
        property is that the run's aggregate reached exactly the expected value - a run that lost the
        first run's state (a "changed" definition) or counted "stone" never emits it."""
        return any(v == want for _, v in tail.poll())

    first, second = _fruit_records(0, 10), _fruit_records(10, 10)
    h.produce(bootstrap, names["src"], first, key_serde=STR, value_serde=JSON)
    procs = []
    try:
        for seed, records in (("1", first), ("2", first + second)):
            with open(log_path, "ab") as log:
                p = subprocess.Popen(streamproc_run(ref, bootstrap, state), env=cli_env(PYTHONHASHSEED=seed),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            if seed == "2":
                h.produce(bootstrap, names["src"], second, key_serde=STR, value_serde=JSON)
            want = {"fruit": total(records), "n": len(records)}
            h.wait_until(lambda: p.poll() is not None or emitted(want), 90, interval=0.05,
                         what=f"the output of the run with PYTHONHASHSEED={seed}")
            assert p.poll() is None, f"PYTHONHASHSEED={seed}: exited {p.returncode}:\n{log_path.read_text()[-3000:]}"
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        tail.c.close()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    text = log_path.read_text()
    assert CHANGED not in text and "Traceback" not in text, text[-3000:]
