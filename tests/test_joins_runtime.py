"""Tables and joins on a broker (DESIGN.md sections 3-5): the runtime against the TopologyTestDriver,
table and join-window restores, global tables, and the "not compacted" warning.

Determinism. A join's results may depend on the order in which a task sees the records of its
inputs, and a table emits one change per key per batch; the runtime batches differently from the
driver and interleaves topics as the fetches come back. So the input is fed in *phases*: a phase
is produced to the broker (and piped to a driver at the same time) and the next one only after
the app has processed it (``Feed``: the group committed its offsets, or the worker thread counted
its records, or every output the driver gave for it arrived). Inside a phase:

* stream-stream joins: every timestamp of the main phase lies well within the join's grace, so
  nothing closes before the final "flush" phase (one record far in the future on every partition:
  stream time is per task, i.e. per partition) and every in-range pair matches whatever the order;
* tables: each key changes at most once per phase, and a phase writes one topic only.

Tansu (the development broker) differs from Kafka in three ways these tests work around, each
where it matters: it reports the high watermark of a multi-record batch as its first offset + 1
(``produce_tracked`` writes each partition's last record alone); it drops the offsets sent in a
transaction that produced no record (no waiting on committed offsets of an exactly-once app
whose checkpoint may produce nothing); it never assigns partitions to a new static member of a
group that another static member left (``identity_after_wipe``).

Workers run in threads of the test process (``runtime_helpers.WorkerThread``) except where the test
is about ``streamproc run`` (subprocesses).
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import runtime_helpers as h
from streamproc import serdes
from streamproc.kafka import make_admin
from streamproc.kafka.admin import group_offsets
from streamproc.partitioner import partition_for
from streamproc.runtime.options import RunOptions
from streamproc.runtime.instance.load import process_id
from streamproc.runtime.instance.app import prepare_topics
from streamproc.operators.present import entries

pytestmark = pytest.mark.broker

STR, JSON = serdes.String(), serdes.Json()
T0 = 1_700_000_000_000
HOUR = 3_600_000


# ------------------------------------------------------------------------------------------ helpers

def keys_on(partition: int, count: int, prefix: str = "k", partitions: int = 2) -> list[str]:
    """``count`` String keys that Kafka's default partitioner puts in ``partition``."""
    out, i = [], 0
    while len(out) < count:
        k = f"{prefix}{i}"
        if partition_for(STR.serialize(k), partitions) == partition:
            out.append(k)
        i += 1
    return out


def spread_keys(per_partition: int, prefix: str = "k") -> list[str]:
    """Keys covering both partitions of a 2-partition topic, interleaved."""
    a, b = keys_on(0, per_partition, prefix), keys_on(1, per_partition, prefix)
    return [k for pair in zip(a, b) for k in pair]


def produce_tracked(bootstrap: str, topic: str, records, partitions: int = 2) -> dict:
    """Produce ``[(key, value, ts)]`` (String keys, Json values, murmur2 like the driver);
    returns ``{(topic, partition): next offset}`` of what was written.

    The last record of each partition goes alone in a batch of its own: Tansu reports the high
    watermark of a multi-record batch as its first offset + 1, and restores (tables, global
    tables) read up to the high watermark."""
    from confluent_kafka import Producer

    ends: dict = {}
    errors: list = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
            return
        tp = (msg.topic(), msg.partition())
        ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

    last = {}
    for i, (k, _, _) in enumerate(records):
        if k is not None:
            last[partition_for(STR.serialize(k), partitions)] = i
    alone = set(last.values())
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5,
                  "enable.idempotence": True})
    for batch in ([r for i, r in enumerate(records) if i not in alone], [records[i] for i in sorted(alone)]):
        for k, v, ts in batch:
            while True:
                try:
                    p.produce(topic, JSON.serialize(v), STR.serialize(k), timestamp=ts, on_delivery=delivered)
                    break
                except BufferError:
                    p.poll(0.1)
        assert p.flush(30) == 0, "test records not delivered"
    assert not errors, errors
    return ends


class Feed:
    """Input fed phase by phase to the broker and, at the same time, to a TopologyTestDriver (module doc).

    ``want``: the driver's outputs so far, ``{output topic: [(key, value, ts)]}``. Three ways to wait
    until the app has processed everything sent so far:

    * :meth:`wait`: the app's consumer group committed every offset. On Tansu not for an
      exactly-once app whose checkpoints may produce nothing (only table updates, only late
      records): Tansu drops the offsets of a transaction that produced no record;
    * :meth:`wait_worker`: a worker in a thread counted every record and closed its checkpoint;
    * :meth:`wait_outputs`: every output the driver gave so far is in the output topics.
    """

    def __init__(self, bootstrap: str, group: str, ref: str, partitions: dict, outputs):
        from streamproc.loader import load_topology
        from streamproc.testing import TopologyTestDriver

        self.bootstrap = bootstrap
        self.group = group
        self.driver = TopologyTestDriver(load_topology(ref), partitions=partitions)
        self.want: dict = {t: [] for t in outputs}
        self.ends: dict = {}            # (topic, partition) -> next offset, of topics the group consumes
        self.consumed = 0               # records sent to topics the group consumes
        self._admin = make_admin(bootstrap)

    def close(self) -> None:
        self.driver.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def send(self, topic: str, records, *, consumed: bool = True) -> dict:
        """Produce a phase and pipe it to the driver. ``consumed=False``: a global table's topic (no group
        reads it). Returns ``{(topic, partition): next offset}`` of what was written."""
        records = list(records)
        ends = produce_tracked(self.bootstrap, topic, records)
        self.driver.pipe_many(topic, records)
        for t in self.want:
            self.want[t] += [tuple(r) for r in self.driver.read_output(t)]
        if consumed:
            self.consumed += len(records)
            for tp, o in ends.items():
                self.ends[tp] = max(self.ends.get(tp, 0), o)
        return ends

    def committed(self) -> dict:
        return group_offsets(self._admin, self.group, list(self.ends))

    def wait(self, timeout: float = 60.0, alive=None) -> None:
        """Until the group committed every offset produced so far (``alive()`` raises: fail at once)."""
        last: list = [{}]

        def done():
            if alive is not None:
                alive()
            last[0] = self.committed()
            return all(last[0].get(tp, -1) >= o for tp, o in self.ends.items())
        try:
            h.wait_until(done, timeout, interval=0.1, what=f"group {self.group} to commit {self.ends}")
        except AssertionError as e:
            raise AssertionError(f"{e}; committed: {last[0]}") from None

    def wait_worker(self, w: h.WorkerThread, timeout: float = 60.0) -> None:
        """Until worker ``w`` (which has read every partition from the start) processed every record sent
        and committed its checkpoint. ``records_in`` grows after the checkpoint opened, so once it is
        reached, a closed checkpoint is one that holds those records."""
        def done():
            if w.error is not None or not w.thread.is_alive():
                raise AssertionError(f"the worker stopped: {w.error!r}")
            return w.worker.records_in >= self.consumed and not w.worker.open
        h.wait_until(done, timeout, interval=0.05,
                     what=f"the worker to process {self.consumed} records (it has {w.worker.records_in})")

    def wait_outputs(self, tail: "Tail", timeout: float = 60.0, alive=None) -> None:
        """Until ``tail`` holds as many records of each output as the driver produced so far."""
        def done():
            if alive is not None:
                alive()
            got = tail.poll()
            return all(len(got[t]) >= len(w) for t, w in self.want.items())
        try:
            h.wait_until(done, timeout, interval=0.05, what="the outputs of the phases sent so far")
        except AssertionError as e:
            got = tail.poll()
            raise AssertionError(f"{e}: " + "; ".join(
                f"{t}: {len(got[t])} of {len(w)}, missing e.g. {list(h.multiset(w) - h.multiset(got[t]))[:3]}"
                for t, w in self.want.items())) from None

    def metrics(self) -> dict:
        return self.driver.metrics()


class Tail:
    """The committed records of some topics (String keys, Json values), read as they come."""

    def __init__(self, bootstrap: str, topics):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": h.unique("tail"),
                           "enable.auto.commit": False, "isolation.level": "read_committed"})
        md = self.c.list_topics(timeout=10).topics
        self.c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md[t].partitions])
        self.records: dict = {t: [] for t in topics}

    def poll(self) -> dict:
        for m in self.c.consume(5000, 0.1):
            if m.error() is None:
                self.records[m.topic()].append((STR.deserialize(m.key()), JSON.deserialize(m.value()),
                                                m.timestamp()[1]))
        return self.records

    def close(self) -> None:
        self.c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def task_metrics(w: h.WorkerThread) -> dict:
    """Drop counters by name summed over the worker's running tasks (read before it stops)."""
    total: dict = {}
    for t in w.worker.tasks.values():
        for k, v in t.metrics.items():
            total[k] = total.get(k, 0) + v
    return total


def read_outputs(bootstrap: str, topics: list[str], quiet_s: float = 1.0, max_s: float = 30.0) -> dict:
    """Every committed record of ``topics`` (String keys, Json values) until ``quiet_s`` without news:
    ``{topic: [(key, value, ts)]}``. Call it when the outputs are complete (after a ``Feed`` wait)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": h.unique("reader"), "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        md = c.list_topics(timeout=10).topics
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in md[t].partitions])
        out: dict = {t: [] for t in topics}
        start = last = time.monotonic()
        got_any = False
        while True:
            now = time.monotonic()
            if (got_any and now - last > quiet_s) or now - start > max_s:
                break
            for m in c.consume(5000, 0.2):
                if m.error() is not None:
                    continue
                out[m.topic()].append((STR.deserialize(m.key()), JSON.deserialize(m.value()), m.timestamp()[1]))
                last = time.monotonic()
                got_any = True
        return out
    finally:
        c.close()


def assert_same(got, want, what: str) -> None:
    g, w = h.multiset(got), h.multiset(want)
    assert g == w, (f"{what}: {sum((g - w).values())} unexpected, {sum((w - g).values())} missing of {len(want)}; "
                    f"unexpected e.g. {list(g - w)[:3]}, missing e.g. {list(w - g)[:3]}")


def setup(tmp_path, bootstrap, template: str, topics: dict, outputs: tuple, *, prepare: bool = True, **extra):
    """An app with unique names: ``names`` (app id, topics), the topology file, its plan and RunOptions.
    ``topics``: ``{role: partitions}`` of the inputs (created); outputs get 2 partitions."""
    app = h.unique("jr")
    names = {"app": app, **{r: f"{app}-{r}" for r in (*topics, *outputs)}, **extra}
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", template.format(**names))
    for role, n in topics.items():
        h.create(bootstrap, [names[role]], n)
    h.create(bootstrap, [names[o] for o in outputs], 2)
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG),
                      topology=ref)
    if prepare:
        prepare_topics(plan, opts)
    return names, ref, plan, opts


def worker(plan, opts, identity: str | None = None) -> h.WorkerThread:
    """A worker (not started: ``with worker(...)``) with the identity of its state dir (a wiped state
    dir is a new instance), or ``identity``."""
    return h.WorkerThread(plan, opts, process_id=identity or process_id(opts.state_dir, plan.app_id))


def identity_after_wipe(kind: str, plan, opts) -> str | None:
    """The identity of an instance restarted on a wiped state dir: a new one (None), except on Tansu,
    which never assigns partitions to a new static member of a group another static member left
    (measured: nothing within 120 s); there the instance keeps its group.instance.id. Either way it
    starts from an empty state dir: the restore is what matters here."""
    return process_id(opts.state_dir, plan.app_id) if kind == "tansu" else None


def topic_names(bootstrap: str) -> set:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def cli_run(ref: str, bootstrap: str, state_dir, log_path, *extra) -> subprocess.Popen:
    """``streamproc run`` in a subprocess of its own session (``os.killpg`` kills it with its workers)."""
    env = dict(os.environ, PYTHONPATH=h.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="300")
    cmd = [sys.executable, "-m", "streamproc", "run", ref, "--bootstrap-servers", bootstrap,
           "--state-dir", str(state_dir), "--config", "consumer.session.timeout.ms=6000", *extra]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=h.ROOT)


def alive(p: subprocess.Popen, log_path):
    def check():
        if p.poll() is not None:
            raise AssertionError(f"streamproc run exited with {p.returncode}:\n{open(log_path).read()[-4000:]}")
    return check


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


def sigterm(p: subprocess.Popen, log_path) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(60)
    except subprocess.TimeoutExpired:
        kill(p)
        raise AssertionError("streamproc run did not stop within 60 s of SIGTERM") from None
    assert code == 0, f"streamproc run exited {code} on SIGTERM:\n{open(log_path).read()[-4000:]}"


# ------------------------------------------------------------------------------------------ 1. differential

TOPO_SS = """
from streamproc import Topology, serdes, windows

t = Topology("{app}")
left = t.stream("{left}", key=serdes.String(), value=serdes.Json())
right = t.stream("{right}", key=serdes.String(), value=serdes.Json())
w = windows.JoinWindow("1s", after="500ms", grace="20s")


def ids(l, r):
    return {{"l": None if l is None else l["id"], "r": None if r is None else r["id"]}}


left.join(right, ids, how="inner", window=w, name="ss-inner").to("{out_inner}", key=serdes.String(), value=serdes.Json())
left.join(right, how="left", window=w, name="ss-left").to("{out_left}", key=serdes.String(), value=serdes.Json())
left.join(right, ids, how="outer", window=w, name="ss-outer").to("{out_outer}", key=serdes.String(), value=serdes.Json())
"""


def test_stream_stream_joins_equal_the_driver(tmp_path, kafka):
    """inner, left (default joiner) and outer windowed joins, 2 partitions per input: the output
    multisets equal the driver's, with unmatched left/outer results emitted when a far-future
    record on each partition closes the windows, a record behind it late (dropped, counted) and
    None keys dropped (counted); the counters equal the driver's."""
    bootstrap = kafka[0]
    outs = ("out_inner", "out_left", "out_outer")
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_SS, {"left": 2, "right": 2}, outs)
    topics = [names[o] for o in outs]
    rnd = random.Random(31)
    keys = spread_keys(3)
    # 8 s of records; window 1 s before / 0.5 s after, grace 20 s: nothing closes before the flush
    lefts = [(rnd.choice(keys), {"id": f"L{i}"}, T0 + rnd.randrange(8000)) for i in range(50)]
    lefts += [(None, {"id": "Lnone0"}, T0 + 500), (None, {"id": "Lnone1"}, T0 + 600)]
    rights = [(rnd.choice(keys), {"id": f"R{i}"}, T0 + rnd.randrange(8000)) for i in range(50)]
    with Feed(bootstrap, names["app"], ref, {names["left"]: 2, names["right"]: 2}, topics) as feed:
        feed.send(names["left"], lefts)
        feed.send(names["right"], rights)
        with worker(plan, opts) as w:
            feed.wait_worker(w)
            # stream time jumps an hour on both partitions (stream time is per task): every stored
            # record's window closes; a left record behind it on the same partition is late
            feed.send(names["left"], [(keys_on(p, 1, "flush")[0], {"id": f"F{p}"}, T0 + HOUR) for p in (0, 1)]
                      + [(keys_on(p, 1)[0], {"id": f"Llate{p}"}, T0 + 100) for p in (0, 1)])
            feed.wait_worker(w)
            got = read_outputs(bootstrap, topics)
            metrics = task_metrics(w)
        want, driver_metrics = feed.want, feed.metrics()
    inner, left, outer = (want[t] for t in topics)
    # the input exercises what it should (else equality would prove little)
    assert len(inner) >= 10 and {k for k, _, _ in inner} == set(keys)
    assert any(v["right"] is None for _, v, _ in left) and any(v["right"] is not None for _, v, _ in left)
    assert any(v["r"] is None for _, v, _ in outer) and any(v["l"] is None for _, v, _ in outer)
    assert not any(v["l"] in ("F0", "F1", "Llate0", "Llate1", "Lnone0", "Lnone1") for _, v, _ in outer), \
        "flush records never close; late and None-key records never join"
    for o, t in zip(outs, topics):
        assert_same(got[t], want[t], o)
    sel = ("late_records", "dropped_none_key")
    assert {k: driver_metrics.get(k, 0) for k in sel} == {"late_records": 3 * 2, "dropped_none_key": 3 * 2}
    assert {k: metrics.get(k, 0) for k in sel} == {k: driver_metrics.get(k, 0) for k in sel}


TOPO_ST = """
from streamproc import Topology, serdes

t = Topology("{app}")
s = t.stream("{stream}", key=serdes.String(), value=serdes.Json())
rows = t.table("{table}", key=serdes.String(), value=serdes.Json(), name="rows")
refs = t.global_table("{glob}", key=serdes.String(), value=serdes.Json(), name="refs")


def with_row(v, r):
    return {{"id": v["id"], "row": r}}


def ref_of(k, v):
    return v["ref"]


s.join(rows, with_row, how="inner", name="st-inner").to("{out_st_inner}", key=serdes.String(), value=serdes.Json())
s.join(rows, how="left", name="st-left").to("{out_st_left}", key=serdes.String(), value=serdes.Json())
s.join(refs, with_row, key=ref_of, how="inner", name="gl-inner").to("{out_gl_inner}", key=serdes.String(),
                                                                     value=serdes.Json())
s.join(refs, with_row, key=ref_of, how="left", name="gl-left").to("{out_gl_left}", key=serdes.String(),
                                                                   value=serdes.Json())
"""


def test_stream_table_and_global_joins_equal_the_driver(tmp_path, kafka):
    """stream-table inner/left and stream-global-table inner/left with ``key=``: table rows first,
    then stream records, then table and global updates (an update, a tombstone, a new row, the
    tombstone of a key never seen), then more stream records: the outputs equal the driver's, each
    record seeing the rows of its phase."""
    bootstrap = kafka[0]
    outs = ("out_st_inner", "out_st_left", "out_gl_inner", "out_gl_left")
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_ST, {"stream": 2, "table": 2, "glob": 2}, outs)
    topics = [names[o] for o in outs]
    rnd = random.Random(32)
    keys = spread_keys(4)                     # rows for keys[:6]; keys[6:] have none at first
    refs = [f"g{i}" for i in range(6)]        # global rows for g0..g3 at first

    def stream(prefix, n, ts):
        return [(rnd.choice(keys), {"id": f"{prefix}{i}", "ref": rnd.choice(refs)}, ts + i) for i in range(n)]

    parts = {names["stream"]: 2, names["table"]: 2, names["glob"]: 2}
    with Feed(bootstrap, names["app"], ref, parts, topics) as feed:
        feed.send(names["table"], [(k, {"n": i, "v": 1}, T0 + i) for i, k in enumerate(keys[:6])])
        glob = feed.send(names["glob"], [(g, {"g": i, "v": 1}, T0 + i) for i, g in enumerate(refs[:4])],
                         consumed=False)
        assert len(glob) == 2, "the global rows should span both partitions"
        with worker(plan, opts) as w:
            feed.wait_worker(w)
            feed.send(names["stream"], stream("S", 40, T0 + 1000) + [(None, {"id": "Snone", "ref": "g0"}, T0 + 1100)])
            feed.wait_worker(w)
            feed.send(names["table"], [(keys[0], {"n": 0, "v": 2}, T0 + 2000), (keys[1], None, T0 + 2001),
                                       (keys[6], {"n": 6, "v": 2}, T0 + 2002), (keys[7], None, T0 + 2003)])
            feed.wait_worker(w)
            feed.send(names["glob"], [("g0", {"g": 0, "v": 2}, T0 + 2000), ("g1", None, T0 + 2001),
                                      ("g4", {"g": 4, "v": 2}, T0 + 2002)], consumed=False)
            h.wait_until(lambda: w.worker.globals.records_applied >= 7, 30, interval=0.05,
                         what="the global table updates to be applied")
            feed.send(names["stream"], stream("T", 40, T0 + 3000))
            feed.wait_worker(w)
            got = read_outputs(bootstrap, topics)
            metrics = task_metrics(w)
        want, driver_metrics = feed.want, feed.metrics()
    st_left, gl_left = want[names["out_st_left"]], want[names["out_gl_left"]]
    # both phases and every kind of row show up in the expected results
    assert {v["right"]["v"] for _, v, _ in st_left if v["right"]} == {1, 2}
    assert any(v["right"] is None for _, v, _ in st_left)
    assert {v["row"]["v"] for _, v, _ in gl_left if v["row"]} == {1, 2} and any(v["row"] is None for _, v, _ in gl_left)
    assert 0 < len(want[names["out_st_inner"]]) < len(st_left) == 80
    assert 0 < len(want[names["out_gl_inner"]]) < len(gl_left) == 80
    for o, t in zip(outs, topics):
        assert_same(got[t], want[t], o)
    assert metrics.get("dropped_none_key", 0) == driver_metrics.get("dropped_none_key", 0) == 4
    assert f"{names['app']}-rows-changelog" not in topic_names(bootstrap)


TOPO_TT = """
from streamproc import Topology, serdes

t = Topology("{app}")
a = t.table("{ta}", key=serdes.String(), value=serdes.Json(), name="ta")
b = t.table("{tb}", key=serdes.String(), value=serdes.Json(), name="tb")


def pair(l, r):
    return {{"a": l, "b": r}}


a.join(b, pair, how="inner", name="tt-inner").to("{out_inner}", key=serdes.String(), value=serdes.Json())
a.join(b, how="left", name="tt-left").to("{out_left}", key=serdes.String(), value=serdes.Json())
a.join(b, pair, how="outer", name="tt-outer").to("{out_outer}", key=serdes.String(), value=serdes.Json())
"""


def test_table_table_joins_under_streamproc_run_equal_the_driver(tmp_path, kafka):
    """Table-table inner/left/outer run by ``streamproc run`` (a subprocess, stopped by SIGTERM, exit 0):
    rows, updates, tombstones (of existing and of never-seen keys), re-created rows on both sides;
    the outputs, deletes included (Table.to writes them as tombstones: value None), equal the
    driver's, result timestamps the larger of both sides'."""
    bootstrap = kafka[0]
    outs = ("out_inner", "out_left", "out_outer")
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_TT, {"ta": 2, "tb": 2}, outs, prepare=False)
    topics = [names[o] for o in outs]
    K = spread_keys(5)
    ta, tb = names["ta"], names["tb"]

    def row(side, i, v, ts):
        return (K[i], {side: i, "v": v}, ts)

    phases = [                                 # one topic per phase, each key at most once per phase
        (ta, [row("a", i, 1, T0 + 10 * i) for i in range(5)]),
        (tb, [row("b", i, 1, T0 + 1000 - 10 * i) for i in range(2, 7)]),
        (ta, [row("a", 2, 2, T0 + 2000), (K[3], None, T0 + 2001), (K[0], None, T0 + 2002),
              row("a", 5, 2, T0 + 2003), (K[7], None, T0 + 2004)]),
        (tb, [row("b", 2, 2, T0 + 1500), (K[4], None, T0 + 3001), (K[6], None, T0 + 3002),
              row("b", 8, 2, T0 + 3003)]),
        (ta, [(K[4], None, T0 + 4000), row("a", 8, 3, T0 + 4001), row("a", 3, 3, T0 + 4002)]),
    ]
    log_path = tmp_path / "run.log"
    with Feed(bootstrap, names["app"], ref, {ta: 2, tb: 2}, topics) as feed, Tail(bootstrap, topics) as tail:
        feed.send(*phases[0])
        p = cli_run(ref, bootstrap, tmp_path / "state", log_path)
        try:
            for topic, records in phases[1:]:
                feed.wait_outputs(tail, 90, alive=alive(p, log_path))
                feed.send(topic, records)
            feed.wait_outputs(tail, 60, alive=alive(p, log_path))
            sigterm(p, log_path)
        finally:
            kill(p)
        want = feed.want
    got = read_outputs(bootstrap, topics)
    for o, t in zip(outs, topics):
        assert any(v is None for _, v, _ in want[t]), f"{o}: the input deletes no result"
    assert K[7] not in {k for t in topics for k, _, _ in want[t]}, "a never-seen key's delete emits nothing"
    # a result's timestamp is the larger of its sides' (K2: a at T0+2000 joined b updated at T0+1500)
    assert (K[2], {"a": {"a": 2, "v": 2}, "b": {"b": 2, "v": 2}}, T0 + 2000) in want[names["out_inner"]]
    for o, t in zip(outs, topics):
        assert_same(got[t], want[t], o)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


# ------------------------------------------------------------------------------------------ 2. table restore

TOPO_ST_LEFT = """
from streamproc import Topology, serdes

t = Topology("{app}")
s = t.stream("{stream}", key=serdes.String(), value=serdes.Json())
rows = t.table("{table}", key=serdes.String(), value=serdes.Json(), name="rows")
s.join(rows, lambda v, r: {{"id": v["id"], "row": r}}, how="left", name="enrich").to(
    "{out}", key=serdes.String(), value=serdes.Json())
"""


def _watch_restores(w: h.WorkerThread) -> dict:
    """``{task key: (table rows, {store: restore part})}`` captured when each task starts running."""
    seen: dict = {}
    orig = w.worker._restore_step

    def spy():
        orig()
        for key, task in w.worker.tasks.items():
            if key not in seen:
                spec = task.subtopology.stores[[s.name for s in task.subtopology.stores].index("rows")]
                seen[key] = (entries(task.subtopology, spec, task.state.store("rows").items()),
                             {p.store: p for p in w.worker.restorer.parts(key)})
    w.worker._restore_step = spy
    return seen


def test_table_is_restored_from_its_own_topic_up_to_the_committed_offset(tmp_path, kafka):
    """A stream-table join (left) runs and stops; its state dir is wiped; more input; a new worker on
    a new state dir (a new identity, except on Tansu) restores the table from the table's own topic - up to the
    committed offset, not the row produced meanwhile; updates and a tombstone applied - and every
    record joins the right row; no ``<app>-rows-changelog`` topic exists. Restarted once more on the
    same, now populated, state dir: nothing is re-read and the results are still right.

    At-least-once: the table's offsets are committed by checkpoints that produce nothing, and Tansu
    drops the offsets of a transaction without records (the restore logic is the same either way)."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_ST_LEFT, {"stream": 2, "table": 2}, ("out",))
    opts.guarantee, opts.commit_interval_ms = "at-least-once", 100
    out = names["out"]
    K = spread_keys(4)                       # K[:6] get rows (K[0] updated, K[5] deleted), K[6] later, K[7] never
    table = [(k, {"n": i, "v": 1}, T0 + i) for i, k in enumerate(K[:6])]
    table += [(K[0], {"n": 0, "v": 2}, T0 + 10), (K[5], None, T0 + 11)]
    latest = {k: v for k, v, _ in table}
    latest = {k: v for k, v in latest.items() if v is not None}

    def probes(prefix, keys, ts):
        return [(k, {"id": f"{prefix}{i}"}, ts + i) for i, k in enumerate(keys)]

    with Feed(bootstrap, names["app"], ref, {names["stream"]: 2, names["table"]: 2}, [out]) as feed:
        feed.send(names["table"], table)
        table_ends = dict(feed.ends)
        with worker(plan, opts):
            feed.wait()
            feed.send(names["stream"], probes("A", K, T0 + 1000))
            feed.wait()

        identity = identity_after_wipe(kafka[1], plan, opts)
        shutil.rmtree(opts.state_dir)
        new_row = (K[6], {"n": 6, "v": 3}, T0 + 2000)
        feed.send(names["table"], [new_row])         # after the committed offset: processed, not restored
        feed.send(names["stream"], probes("B", K[:6], T0 + 2000))
        opts.state_dir = str(tmp_path / "state2")
        w = worker(plan, opts, identity)
        seen = _watch_restores(w)
        with w:
            feed.wait()
            feed.send(names["stream"], probes("C", K, T0 + 3000))
            feed.wait()
        assert sorted(seen) == [(0, 0), (0, 1)]
        for (_, part), (rows, parts) in seen.items():
            mine = {k: v for k, v in latest.items() if partition_for(STR.serialize(k), 2) == part}
            assert rows == mine, f"task {part}: the restored table"
            rp = parts["rows"]
            assert (rp.topic, rp.first, rp.end) == (names["table"], 0, table_ends[(names["table"], part)])

        w3 = worker(plan, opts, identity)             # the same, now populated, state dir
        seen3 = _watch_restores(w3)
        with w3:
            feed.send(names["stream"], probes("D", K, T0 + 4000))
            feed.wait()
        assert sorted(seen3) == [(0, 0), (0, 1)]
        for _, parts in seen3.values():
            rp = parts["rows"]
            assert rp.first == rp.end == feed.ends[(rp.topic, rp.partition)] and rp.restored == 0, \
                f"restore of an already restored table {rp.topic}[{rp.partition}]: offsets {rp.first}..{rp.end}"
        want = feed.want[out]

    got = read_outputs(bootstrap, [out])[out]
    assert_same(got, want, "stream-table join across restores")
    by_id = {v["id"]: v["row"] for _, v, _ in got}
    assert by_id["B0"] == {"n": 0, "v": 2} and by_id["B5"] is None and by_id["C6"] == new_row[1]
    assert by_id["D6"] == new_row[1] and by_id["D7"] is None and by_id["D1"] == {"n": 1, "v": 1}
    assert not [t for t in topic_names(bootstrap) if t.startswith(names["app"]) and t.endswith("-changelog")]


# ------------------------------------------------------------------------------------------ 3. join-window restore

TOPO_SS_LEFT = """
from streamproc import Topology, serdes, windows

t = Topology("{app}")
left = t.stream("{left}", key=serdes.String(), value=serdes.Json())
right = t.stream("{right}", key=serdes.String(), value=serdes.Json())
left.join(right, lambda l, r: {{"l": l["id"], "r": None if r is None else r["id"]}}, how="left",
          window=windows.JoinWindow("{before}", grace="{grace}"), name="ss").to(
    "{out}", key=serdes.String(), value=serdes.Json())
"""


def test_stream_stream_join_restored_from_its_changelog(tmp_path, kafka):
    """Left records are processed and the worker stops; the state dir is wiped; a new worker (a new
    identity, except on Tansu) restores the join's left store from ``<app>-ss-left-changelog`` and right records matching the
    earlier left ones join them. Then a clean stop and restart on the same state dir (exactly-once)
    and a flush closing every window: the output equals the driver's exactly - every match once,
    every unmatched left record once, no duplicates across the restarts."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_SS_LEFT, {"left": 2, "right": 2}, ("out",),
                                   before="200ms", grace="30s")
    app, out = names["app"], names["out"]
    assert {f"{app}-ss-left-changelog", f"{app}-ss-right-changelog"} <= topic_names(bootstrap)
    keys = spread_keys(3)
    lefts = [(keys[i % 6], {"id": f"L{i}"}, T0 + 100 * i) for i in range(30)]           # 3 s
    with Feed(bootstrap, app, ref, {names["left"]: 2, names["right"]: 2}, [out]) as feed:
        feed.send(names["left"], lefts)
        with worker(plan, opts):
            feed.wait()

        identity = identity_after_wipe(kafka[1], plan, opts)
        shutil.rmtree(opts.state_dir)
        opts.state_dir = str(tmp_path / "state2")
        # every other left record gets a right one 50 ms later (within 200 ms: it matches only that one)
        feed.send(names["right"], [(k, {"id": "R" + v["id"][1:]}, ts + 50) for k, v, ts in lefts[0:30:2]])
        w = worker(plan, opts, identity)
        restored: dict = {}
        orig = w.worker._restore_step

        def spy():
            orig()
            for key in w.worker.tasks:
                restored.setdefault(key, {p.store: p.restored for p in w.worker.restorer.parts(key)})
        w.worker._restore_step = spy
        with w:
            feed.wait()
            got = read_outputs(bootstrap, [out])[out]
        assert sorted(restored) == [(0, 0), (0, 1)] and all(r["ss-left"] > 0 for r in restored.values()), restored
        assert h.multiset(got) == h.multiset([(k, {"l": f"L{i}", "r": f"R{i}"}, lefts[i][2] + 50)
                                              for i, (k, _, _) in enumerate(lefts) if i % 2 == 0]), \
            "right records join the left ones restored from the changelog, once each"
        assert_same(got, feed.want[out], "after the restore")

        # a clean stop and restart with the same state dir; more of the right side, then a flush
        with worker(plan, opts, identity):
            feed.send(names["right"], [(k, {"id": "R" + v["id"][1:]}, ts - 150) for k, v, ts in lefts[1:20:2]])
            feed.wait()
            feed.send(names["right"], [(keys_on(p, 1, "flush")[0], {"id": f"F{p}"}, T0 + HOUR) for p in (0, 1)])
            feed.wait()
        want = feed.want[out]
    got = read_outputs(bootstrap, [out])[out]
    unmatched = [v["l"] for _, v, _ in want if v["r"] is None]
    assert sorted(unmatched) == sorted(f"L{i}" for i in range(21, 30, 2)), "the input checks what it should"
    assert len(want) == 30
    assert_same(got, want, "stream-stream left join across a wiped state dir and a restart")


@pytest.mark.real_kafka("Tansu delivers records of aborted transactions to read_committed consumers")
def test_stream_stream_join_sigkill_mid_stream_exactly_once(tmp_path, kafka):
    """``streamproc run`` SIGKILLed while right records stream in, its state dir wiped, restarted:
    the read_committed output is exactly the driver's (every match and unmatched left record once)."""
    bootstrap = kafka[0]
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_SS_LEFT, {"left": 2, "right": 2}, ("out",),
                                   prepare=False, before="100ms", grace="60s")
    out = names["out"]
    keys = spread_keys(5)
    lefts = [(keys[i % 10], {"id": f"L{i}"}, T0 + 10 * i) for i in range(600)]         # 6 s
    rights = [(k, {"id": "R" + v["id"][1:]}, ts + 5) for i, (k, v, ts) in enumerate(lefts) if i % 3]
    log_path = tmp_path / "run.log"
    with Feed(bootstrap, names["app"], ref, {names["left"]: 2, names["right"]: 2}, [out]) as feed, \
            Tail(bootstrap, [out]) as tail:
        feed.send(names["left"], lefts)

        def feeder():                # the main thread only reads the tail until it joins this thread
            for i in range(0, len(rights), 10):
                feed.send(names["right"], rights[i:i + 10])
                time.sleep(0.05)

        p = cli_run(ref, bootstrap, tmp_path / "state", log_path)
        t = threading.Thread(target=feeder, daemon=True)
        try:
            t.start()
            check = alive(p, log_path)
            h.wait_until(lambda: check() or len(tail.poll()[out]) >= 50, 60, what="some output before the kill")
            kill(p)
            shutil.rmtree(tmp_path / "state")
            p = cli_run(ref, bootstrap, tmp_path / "state2", log_path)
            t.join(120)
            assert not t.is_alive()
            feed.wait(120, alive=alive(p, log_path))
            feed.send(names["left"], [(keys_on(q, 1, "flush")[0], {"id": f"F{q}"}, T0 + HOUR) for q in (0, 1)])
            feed.wait(60, alive=alive(p, log_path))
            sigterm(p, log_path)
        finally:
            kill(p)
        want = feed.want[out]
    got = read_outputs(bootstrap, [out], quiet_s=2.0)[out]
    assert len(want) > len(rights)
    assert_same(got, want, "exactly-once join output across a SIGKILL")


# ------------------------------------------------------------------------------------------ 4. global table

TOPO_GLOBAL = """
from streamproc import Topology, serdes

t = Topology("{app}")
s = t.stream("{stream}", key=serdes.String(), value=serdes.Json())
prices = t.global_table("{glob}", key=serdes.String(), value=serdes.Json(), name="prices")


def priced(v, p):
    return {{"id": v["id"], "price": None if p is None else p["price"]}}


def item_of(k, v):
    return v["item"]


s.join(prices, priced, key=item_of, how="inner", name="priced").to("{out_inner}", key=serdes.String(),
                                                                   value=serdes.Json())
s.join(prices, priced, key=item_of, how="left", name="priced-left").to("{out_left}", key=serdes.String(),
                                                                        value=serdes.Json())
"""


def test_global_table_restored_before_processing_and_kept_current(tmp_path, kafka):
    """Global rows and stream records all produced before the worker starts: every stream record
    joins (the global topic, 2 partitions, is read to its end before anything is processed) the
    latest row. An update and a delete produced while the worker runs are seen by later records
    (probed until they show up), and from then on by every record."""
    bootstrap = kafka[0]
    outs = ("out_inner", "out_left")
    names, ref, plan, opts = setup(tmp_path, bootstrap, TOPO_GLOBAL, {"stream": 2, "glob": 2}, outs)
    inner_t, left_t = names["out_inner"], names["out_left"]
    items = [f"item{i}" for i in range(8)]
    prices = [(it, {"price": i}, T0) for i, it in enumerate(items)] + [("item0", {"price": 100}, T0 + 1)]
    latest = {it: v["price"] for it, v, _ in prices}
    rnd = random.Random(34)
    stream = [(f"c{rnd.randrange(20)}", {"id": i, "item": rnd.choice(items)}, T0 + 1000 + i) for i in range(200)]
    with Feed(bootstrap, names["app"], ref, {names["stream"]: 2, names["glob"]: 2}, [inner_t, left_t]) as feed, \
            Tail(bootstrap, [inner_t, left_t]) as tail:
        assert len(feed.send(names["glob"], prices, consumed=False)) == 2
        feed.send(names["stream"], stream)
        w = worker(plan, opts)
        at_join: dict = {}
        open_globals = w.worker._open_globals

        def spy():                # the worker joins its group (and may process) only after this returns
            open_globals()
            at_join.update(w.worker.globals.stores["prices"].snapshot())
        w.worker._open_globals = spy
        with w:
            feed.wait_worker(w)
            assert at_join == {it: {"price": p} for it, p in latest.items()}, \
                "the global table is complete before the worker joins its group"
            feed.wait_outputs(tail)
            assert h.multiset(tail.records[inner_t]) == h.multiset(
                [(k, {"id": v["id"], "price": latest[v["item"]]}, ts) for k, v, ts in stream]), \
                "every record joins the restored global table's latest row"

            feed.send(names["glob"], [("item0", {"price": 7}, T0 + 2), ("item1", None, T0 + 2)], consumed=False)
            probes: list = []

            def probe(item):
                i = 1000 + len(probes)
                probes.append((item, i))
                feed.send(names["stream"], [("probe", {"id": i, "item": item}, T0 + 5000 + i)])
                feed.wait_worker(w)
                return {v["id"]: v["price"] for _, v, _ in tail.poll()[left_t]}.get(i, "missing")

            h.wait_until(lambda: probe("item0") == 7, 30, interval=0.05, what="a probe to see item0's new price")
            h.wait_until(lambda: probe("item1") is None, 30, interval=0.05, what="a probe to see item1 deleted")
            for item in ("item0", "item1", "item2"):
                probe(item)
            feed.wait_outputs(tail)
    got = read_outputs(bootstrap, [inner_t, left_t])
    left = {v["id"]: v["price"] for _, v, _ in got[left_t] if v["id"] >= 1000}
    inner = {v["id"]: v["price"] for _, v, _ in got[inner_t] if v["id"] >= 1000}
    assert len(got[left_t]) == len(stream) + len(probes)
    assert sorted(left) == [i for _, i in probes]
    # once a probe saw the new row, every later probe of that item sees it too
    for item, new, old in (("item0", 7, 100), ("item1", None, 1)):
        seq = [left[i] for it, i in probes if it == item]
        assert seq[-1] == new and seq == [old] * seq.index(new) + [new] * (len(seq) - seq.index(new)), seq
    assert inner == {i: p for i, p in left.items() if p is not None}, "a deleted row joins nothing under inner"
    assert left[probes[-1][1]] == 2


# ------------------------------------------------------------------------------------------ 5. warning

TOPO_TWO_TABLES = """
from streamproc import Topology, serdes

t = Topology("{app}")
a = t.table("{plain}", key=serdes.String(), value=serdes.Json(), name="plain")
b = t.table("{compacted}", key=serdes.String(), value=serdes.Json(), name="compacted")
a.join(b, how="outer", name="both").to("{out}", key=serdes.String(), value=serdes.Json())
"""


def test_uncompacted_table_topic_is_warned_about(tmp_path, kafka, caplog):
    """prepare_topics (what ``run`` calls first) warns that a table's topic is not compacted, naming
    it, and says nothing about a table whose topic has cleanup.policy=compact."""
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = kafka[0]
    app = h.unique("jr")
    names = {"app": app, "plain": f"{app}-plain", "compacted": f"{app}-compacted", "out": f"{app}-out"}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(names["plain"], 2, 1), NewTopic(names["out"], 2, 1),
                                   NewTopic(names["compacted"], 2, 1, config={"cleanup.policy": "compact"})])
    for f in futures.values():
        f.result(30)
    ref = h.write_topology(tmp_path / f"{app.replace('-', '_')}.py", TOPO_TWO_TABLES.format(**names))
    plan = h.load_plan(ref)
    opts = RunOptions(bootstrap, state_dir=str(tmp_path / "state"), client_config=dict(h.CLIENT_CONFIG), topology=ref)
    h.wait_until(lambda: {names["plain"], names["compacted"]} <= topic_names(bootstrap), 30, what="the topics")
    with caplog.at_level(logging.INFO, logger="streamproc"):
        prepare_topics(plan, opts)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not compacted" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert repr(names["plain"]) in warned[0] and "cleanup.policy=compact" in warned[0]
    assert not [r for r in caplog.records if names["compacted"] in r.getMessage() and r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if "cannot read the configs" in r.getMessage()]
