"""Task lifecycle without a broker: the TaskManager's phases, the Restorer against a fake
restore consumer that behaves like librdkafka where it matters, and the Checkpoint object.

The fake consumer (``FakeRestoreConsumer``) keeps an in-memory changelog per (topic, partition)
built from real changelog bytes (``codec.encode_store_key`` / ``codec.encode_value`` /
``_changelog.meta_value``), with offset gaps for transaction markers, and it refuses what
librdkafka refuses: ``incremental_assign`` of a partition already assigned raises
``_CONFLICT ... is already part of the current assignment`` (the runtime issue: the same task
restored twice in one worker), ``incremental_unassign`` of one not assigned raises.
"""
from __future__ import annotations

import dataclasses
import pickle
import time
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from streamproc import Topology, serdes, windows
from streamproc.errors import BrokerError, StateError
from streamproc.operators import RawBatch
from streamproc.plan import compile_topology
from streamproc.runtime.changelog import records as _changelog
from streamproc.runtime.worker import checkpoint as cp
from streamproc.runtime.changelog.records import META_KEY, changelog_offsets, meta_value
from streamproc.runtime.options import RunOptions
from streamproc.runtime.worker.checkpoint import Checkpoint
from streamproc.runtime.changelog.restore import Restorer
from streamproc.runtime.engine.task import Task
from streamproc.runtime.engine.lifecycle import IllegalTransition, ManagedTask, Phase, TaskManager
from streamproc.runtime.worker.loop import Worker
from streamproc.state import MemoryBackend, codec

APP = "lc"
STATELESS_IN, STATEFUL_IN = "a-in", "b-in"
CHANGELOG = f"{APP}-counts-changelog"


# ------------------------------------------------------------------------------------------ plan
def _plan():
    t = Topology(APP)
    a = t.stream(STATELESS_IN, key=serdes.String(), value=serdes.Json())
    a.map_values(lambda v: v).to("a-out")
    b = t.stream(STATEFUL_IN, key=serdes.String(), value=serdes.Json())
    b.group_by_key().window(windows.Tumbling("1m", grace="10s")).count(name="counts").to("counts-out")
    return compile_topology(t)


PLAN = _plan()
ST_OF_TOPIC = {t: st for st in PLAN.subtopologies for t in st.input_topics}
STATELESS = ST_OF_TOPIC[STATELESS_IN]
STATEFUL = ST_OF_TOPIC[STATEFUL_IN]
SPEC = STATEFUL.stores[0]
SKEY = lambda p: (STATEFUL.id, p)      # noqa: E731 - the stateful task's key
LKEY = lambda p: (STATELESS.id, p)     # noqa: E731


def test_plan_is_what_these_tests_assume():
    assert not STATELESS.stores
    assert [s.name for s in STATEFUL.stores] == ["counts"]
    assert SPEC.kind == "window" and SPEC.changelog == CHANGELOG
    assert STATELESS.id != STATEFUL.id


# ------------------------------------------------------------------------------------------ backends
class SpyMemory(MemoryBackend):
    """A MemoryBackend that counts close() calls (MemoryBackend.close itself does nothing)."""

    def __init__(self):
        super().__init__()
        self.closed = 0

    def close(self):
        self.closed += 1


def _rocks(path, st):
    from streamproc.state.rocksdb import RocksDBBackend

    return RocksDBBackend.for_task(path, st)


def _factory(kind, tmp_path, opened: list | None = None):
    """backend_factory(subtopology, partition) like the worker's: stateless -> memory; stateful -> ``kind``."""

    def open_backend(st, partition):
        if kind == "memory" or not st.stores:
            b = SpyMemory()
        else:
            b = _rocks(tmp_path / f"{st.id}_{partition}", st)
        if opened is not None:
            opened.append(b)
        return b

    return open_backend


def _manager(kind, tmp_path, opened=None):
    return TaskManager(ST_OF_TOPIC, _factory(kind, tmp_path, opened), Worker._keep_when_revoked)


def _is_closed(backend) -> bool:
    """A backend is closed: RocksDB -> no database and writes refused; SpyMemory -> close() was called."""
    if isinstance(backend, SpyMemory):
        return backend.closed > 0
    if backend._db is not None:
        return False
    with pytest.raises(StateError, match="closed"):
        backend.write({"counts": {("x", 0): (1, 1)}}, {})
    return True


def _feed(task, offsets, keys=(b"k1", b"k2", b"k1"), ts=(1000, 2000, 3000)):
    """Run records through the stateful task (its write cache) and return the RawBatch."""
    raw = RawBatch(STATEFUL_IN, task.partition, list(keys), [b'{"x": 1}'] * len(keys), list(ts), list(offsets))
    task.process(raw)
    return raw


def _gone_everywhere(tm: TaskManager, key) -> None:
    assert tm.running(key) is None
    assert tm.get(key) is None
    assert key not in tm.running_tasks()
    assert tm.inputs(key) == set()
    for phase in Phase:
        assert all(mt.key != key for mt in tm.in_phase(phase)), phase
    assert all(tp[1] != key[1] or ST_OF_TOPIC[tp[0]].id != key[0] for tp in tm.active_inputs())


# ================================================================================ 1. TaskManager
@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_assign_starts_stateful_tasks_restoring_and_stateless_running(kind, tmp_path):
    tm = _manager(kind, tmp_path)
    parts = [(STATELESS_IN, 0), (STATEFUL_IN, 0), (STATELESS_IN, 1), (STATEFUL_IN, 1)]
    to_restore, to_pause = tm.assign(parts)

    assert sorted(mt.key for mt in to_restore) == [SKEY(0), SKEY(1)]
    assert all(mt.phase is Phase.RESTORING and mt.task is None for mt in to_restore)
    assert sorted(to_pause) == [(STATEFUL_IN, 0), (STATEFUL_IN, 1)]           # exactly the stateful inputs
    for p in (0, 1):
        t = tm.running(LKEY(p))
        assert isinstance(t, Task) and t.subtopology is STATELESS and t.partition == p
        assert tm.running(SKEY(p)) is None
        assert tm.get(SKEY(p)).phase is Phase.RESTORING
        assert tm.inputs(SKEY(p)) == {(STATEFUL_IN, p)}
    assert set(tm.running_tasks()) == {LKEY(0), LKEY(1)}
    assert tm.active_inputs() == [(STATELESS_IN, 0), (STATELESS_IN, 1)]     # paused ones are not active
    assert tm.counts() == {"assigned": 0, "restoring": 2, "running": 2, "suspended": 0, "closed": 0}
    if kind == "rocksdb":
        from streamproc.state.rocksdb import RocksDBBackend

        assert all(isinstance(mt.backend, RocksDBBackend) for mt in to_restore)
    tm.close_all()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_restored_builds_the_task_once(kind, tmp_path):
    tm = _manager(kind, tmp_path)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    assert tm.restored(SKEY(0)) is mt
    assert mt.phase is Phase.RUNNING
    task = tm.running(SKEY(0))
    assert isinstance(task, Task) and task is mt.task and task.state.backend is mt.backend
    assert tm.active_inputs() == [(STATEFUL_IN, 0)]
    # a second restored() is a no-op: no crash, no rebuild
    assert tm.restored(SKEY(0)) is None
    assert tm.running(SKEY(0)) is task
    assert tm.restored(("nope", 9)) is None
    tm.close_all()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_restored_after_the_task_was_revoked_builds_nothing(kind, tmp_path):
    opened = []
    tm = _manager(kind, tmp_path, opened)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    assert tm.revoke([(STATEFUL_IN, 0)]) == [SKEY(0)]
    assert tm.restored(SKEY(0)) is None
    assert mt.task is None
    assert tm.running(SKEY(0)) is None and tm.running_tasks() == {}
    if kind == "memory":
        assert mt.phase is Phase.SUSPENDED          # kept, but not built
    else:
        assert mt.phase is Phase.CLOSED and _is_closed(opened[0])
    tm.close_all()


def test_revoke_closes_a_rocksdb_task_and_frees_its_directory(tmp_path):
    opened = []
    tm = _manager("rocksdb", tmp_path, opened)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0), (STATELESS_IN, 0)])
    tm.restored(SKEY(0))
    backend = opened[[i for i, b in enumerate(opened) if not isinstance(b, SpyMemory)][0]]
    assert mt.backend is backend

    left = tm.revoke([(STATEFUL_IN, 0)])
    assert left == [SKEY(0)]
    assert mt.phase is Phase.CLOSED and mt.backend is None and mt.task is None
    assert backend._db is None and _is_closed(backend)
    _gone_everywhere(tm, SKEY(0))
    assert tm.counts()["closed"] == 0                     # closed tasks are not kept anywhere
    assert tm.running(LKEY(0)) is not None                # the other task is untouched
    # the directory lock was released: another owner can open it at once
    other = _rocks(tmp_path / f"{STATEFUL.id}_0", STATEFUL)
    other.close()
    tm.close_all()


def test_revoked_memory_task_is_suspended_and_given_back_with_its_state(tmp_path):
    tm = _manager("memory", tmp_path)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    tm.restored(SKEY(0))
    task = tm.running(SKEY(0))
    _feed(task, [0, 1, 2])
    task.state.changes()
    task.state.apply({"counts": 7})
    backend = mt.backend

    assert tm.revoke([(STATEFUL_IN, 0)]) == [SKEY(0)]
    assert mt.phase is Phase.SUSPENDED and mt.task is None and backend.closed == 0
    assert tm.get(SKEY(0)) is None and tm.running(SKEY(0)) is None and tm.inputs(SKEY(0)) == set()
    assert [m.key for m in tm.in_phase(Phase.SUSPENDED)] == [SKEY(0)]

    to_restore, to_pause = tm.assign([(STATEFUL_IN, 0)])
    assert to_restore == [mt] and to_pause == [(STATEFUL_IN, 0)]
    assert mt.phase is Phase.RESTORING and mt.backend is backend and backend.closed == 0
    assert mt.inputs == {(STATEFUL_IN, 0)}
    assert changelog_offsets(backend) == {"counts": 7}          # it restores only what it missed
    tm.restored(SKEY(0))
    again = tm.running(SKEY(0))
    assert again is not task and again.state.backend is backend
    assert again.state.store("counts").get(("k1", 0)) == (3000, 2)
    assert again.state.stream_time == 3000
    tm.close_all()
    assert backend.closed == 1


def test_suspended_tasks_not_given_back_are_closed_on_the_next_assign(tmp_path):
    opened = []
    tm = _manager("memory", tmp_path, opened)
    tm.assign([(STATEFUL_IN, 0), (STATEFUL_IN, 1), (STATELESS_IN, 0)])
    tm.restored(SKEY(0))
    by_key = {mt.key: mt for mt in tm.in_phase(Phase.RUNNING) + tm.in_phase(Phase.RESTORING)}
    b0, b1, bl = by_key[SKEY(0)].backend, by_key[SKEY(1)].backend, by_key[LKEY(0)].backend
    tm.revoke([(STATEFUL_IN, 0), (STATEFUL_IN, 1), (STATELESS_IN, 0)])
    assert tm.counts()["suspended"] == 3

    to_restore, to_pause = tm.assign([(STATEFUL_IN, 1)])         # only task 1 comes back
    assert [mt.key for mt in to_restore] == [SKEY(1)] and to_restore[0].backend is b1
    assert to_pause == [(STATEFUL_IN, 1)]
    assert b0.closed == 1 and bl.closed == 1 and b1.closed == 0
    _gone_everywhere(tm, SKEY(0))
    _gone_everywhere(tm, LKEY(0))
    assert tm.counts() == {"assigned": 0, "restoring": 1, "running": 0, "suspended": 0, "closed": 0}
    # a later assignment of task 0 starts it from a fresh backend
    (mt0,), _ = tm.assign([(STATEFUL_IN, 1), (STATEFUL_IN, 0)])
    assert mt0.key == SKEY(0) and mt0.backend is not b0 and mt0.backend is opened[-1]
    tm.close_all()


def _all_phase_pairs():
    return [(a, b) for a in Phase for b in Phase]


# the documented diagram (tasks.py) plus restoring -> suspended (a memory task revoked mid-restore)
# and running -> running (rebuilt after a rollback)
_DOCUMENTED = {
    (Phase.ASSIGNED, Phase.RESTORING), (Phase.ASSIGNED, Phase.RUNNING), (Phase.ASSIGNED, Phase.CLOSED),
    (Phase.RESTORING, Phase.RUNNING), (Phase.RESTORING, Phase.CLOSED), (Phase.RESTORING, Phase.SUSPENDED),
    (Phase.RUNNING, Phase.RUNNING), (Phase.RUNNING, Phase.SUSPENDED), (Phase.RUNNING, Phase.CLOSED),
    (Phase.SUSPENDED, Phase.RESTORING), (Phase.SUSPENDED, Phase.RUNNING), (Phase.SUSPENDED, Phase.CLOSED),
}


@pytest.mark.parametrize("frm,to", _all_phase_pairs(), ids=lambda p: p.value)
def test_only_documented_transitions_are_legal(frm, to):
    tm = TaskManager(ST_OF_TOPIC, lambda st, p: MemoryBackend(), Worker._keep_when_revoked)
    mt = ManagedTask(SKEY(0), STATEFUL, 0, MemoryBackend(), phase=frm)
    if (frm, to) in _DOCUMENTED:
        tm._move(mt, to)
        assert mt.phase is to
    else:
        with pytest.raises(IllegalTransition, match=f"{frm.value} -> {to.value}"):
            tm._move(mt, to)
        assert mt.phase is frm


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_closing_twice_is_refused_and_closed_tasks_are_unreachable(kind, tmp_path):
    tm = _manager(kind, tmp_path)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    tm.restored(SKEY(0))
    backend = mt.backend
    tm.close_all()
    assert mt.phase is Phase.CLOSED and _is_closed(backend)
    _gone_everywhere(tm, SKEY(0))
    assert tm.counts() == {p.value: 0 for p in Phase}
    with pytest.raises(IllegalTransition, match="closed -> closed"):
        tm._close(mt)
    with pytest.raises(IllegalTransition):
        tm._move(mt, Phase.RUNNING)
    # the public calls stay harmless on a closed task
    tm.close_all()
    assert tm.revoke([(STATEFUL_IN, 0)]) == []
    assert tm.restored(SKEY(0)) is None
    tm.rebuild([SKEY(0)])
    assert mt.task is None and tm.running(SKEY(0)) is None


def test_lost_partitions_then_reassigned_restore_from_the_reopened_backend(tmp_path):
    opened = []
    tm = _manager("rocksdb", tmp_path, opened)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0), (STATELESS_IN, 0)])
    tm.restored(SKEY(0))
    task = tm.running(SKEY(0))
    _feed(task, [0, 1, 2])
    task.state.changes()
    task.state.apply({"counts": 41})
    first = mt.backend

    # partitions lost: the worker revokes everything it had
    left = tm.revoke([(STATEFUL_IN, 0), (STATELESS_IN, 0)])
    assert sorted(left) == sorted([SKEY(0), LKEY(0)])
    assert _is_closed(first)
    _gone_everywhere(tm, SKEY(0))

    to_restore, to_pause = tm.assign([(STATEFUL_IN, 0), (STATELESS_IN, 0)])
    assert [m.key for m in to_restore] == [SKEY(0)] and to_pause == [(STATEFUL_IN, 0)]
    again = to_restore[0]
    assert again is not mt and again.phase is Phase.RESTORING
    assert again.backend is not first and again.backend._db is not None
    assert again.backend.path == first.path
    assert changelog_offsets(again.backend) == {"counts": 41}        # resumes after what it had
    assert again.backend.get("counts", ("k1", 0)) == (3000, 2)
    tm.restored(SKEY(0))
    assert tm.running(SKEY(0)).state.stream_time == 3000
    tm.close_all()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_rebuild_makes_new_tasks_and_keeps_metrics(kind, tmp_path):
    tm = _manager(kind, tmp_path)
    tm.assign([(STATEFUL_IN, 0), (STATELESS_IN, 0), (STATEFUL_IN, 1)])
    tm.restored(SKEY(0))                                  # task 1 stays restoring
    old_s, old_l = tm.running(SKEY(0)), tm.running(LKEY(0))
    old_s.ctx.metrics[("skipped", "source a")] = 5       # committed drops
    old_l.ctx.metrics[("skipped", "source b")] = 2
    old_s.ctx.metrics[("late", "counts")] = 1
    old_s.ctx.drop("late", "counts", 7)                   # pending: rolled back below, never counted
    _feed(old_s, [0, 1, 2])                               # uncommitted writes...
    old_s.state.discard()                                 # ...rolled back

    tm.rebuild([SKEY(0), LKEY(0), SKEY(1), ("missing", 3)])
    new_s, new_l = tm.running(SKEY(0)), tm.running(LKEY(0))
    assert new_s is not old_s and new_l is not old_l
    assert isinstance(new_s, Task) and new_s.state.backend is old_s.state.backend
    assert new_s.ctx.metrics is old_s.ctx.metrics and new_s.metrics == {"skipped_records": 5, "late_records": 1}
    assert new_l.metrics == {"skipped_records": 2}
    assert tm.metrics() == {("skipped", "source a"): 5, ("skipped", "source b"): 2, ("late", "counts"): 1}
    assert new_s.state.store("counts").get(("k1", 0)) is None and new_s.state.stream_time == -1
    assert tm.get(SKEY(1)).phase is Phase.RESTORING and tm.running(SKEY(1)) is None
    tm.close_all()


# ------------------------------------------------------------------ checkpoint over the task manager
class FakeProducer:
    def __init__(self):
        self.calls: list[str] = []
        self.produced: list[tuple] = []

    def produce(self, topic, value=None, key=None, partition=-1, timestamp=0, headers=None, **kw):
        self.produced.append((topic, key, value, partition))

    def begin_transaction(self):
        self.calls.append("begin_transaction")

    def send_offsets_to_transaction(self, offsets, group_metadata, timeout=None):
        self.calls.append("send_offsets_to_transaction")

    def flush(self, timeout=None):
        self.calls.append("flush")
        return 0

    def commit_transaction(self, timeout=None):
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout=None):
        self.calls.append("abort_transaction")

    def poll(self, timeout=0):
        return 0


class FakeMainConsumer:
    """The worker's group consumer, as far as checkpoint() and the rebalance callbacks use it."""

    def __init__(self):
        self.assigned: list = []
        self.paused: set = set()
        self.resumed: list = []
        self.commits: list = []
        self.seeks: list = []

    def consumer_group_metadata(self):
        return object()

    def commit(self, offsets=None, asynchronous=True):
        self.commits.append(offsets)

    def assign(self, partitions):
        self.assigned = [(tp.topic, tp.partition) for tp in partitions]

    def pause(self, tps):
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps):
        for tp in tps:
            self.paused.discard((tp.topic, tp.partition))
            self.resumed.append((tp.topic, tp.partition))

    def committed(self, tps, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def seek(self, tp):
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consume(self, num_messages=1, timeout=-1):
        return []


class FakeWorker:
    """What checkpoint()/rollback() need from a worker."""

    def __init__(self, tm, *, eos=True, txn_budget_s=10.0):
        self.eos = eos
        self.producer = FakeProducer()
        self.consumer = FakeMainConsumer()
        self.ckpt = Checkpoint(self.producer, self.consumer, tm, eos=eos, commit_interval_s=0.1,
                               txn_budget_s=txn_budget_s, timeout_s=1.0, send=self.produce)
        self.task_manager = tm
        self.timeout_s = 1.0
        self.resets: list = []

    def produce(self, topic, value, key, partition=-1, timestamp=0, headers=None):
        self.producer.produce(topic, value, key, partition=partition, timestamp=timestamp)

    def reset_to_committed(self, tps=None):
        self.resets.append(tps)


def test_checkpoint_cannot_reach_the_closed_backend_of_a_revoked_task(tmp_path):
    opened = []
    tm = _manager("rocksdb", tmp_path, opened)
    tm.assign([(STATEFUL_IN, 0), (STATEFUL_IN, 1)])
    tm.restored(SKEY(0))
    tm.restored(SKEY(1))
    w = FakeWorker(tm, eos=False)
    t0, t1 = tm.running(SKEY(0)), tm.running(SKEY(1))
    w.ckpt.begin()
    for t in (t0, t1):
        _feed(t, [0, 1, 2])
        w.ckpt.ran(SKEY(t.partition), (STATEFUL_IN, t.partition), 3)
    b0 = t0.state.backend

    tm.revoke([(STATEFUL_IN, 0)])                 # the Checkpoint still lists task 0 as dirty
    assert SKEY(0) in w.ckpt.dirty
    assert _is_closed(b0)
    assert tm.running(SKEY(0)) is None            # how checkpoint() finds tasks

    assert w.ckpt.commit() is True                # a closed backend would raise StateError("... is closed")
    partitions = {p for (topic, _k, _v, p) in w.producer.produced if topic == CHANGELOG}
    assert partitions == {1}                      # only the running task wrote its changelog
    assert t1.state.backend.get("counts", ("k1", 0)) == (3000, 2)
    assert not w.ckpt.dirty and w.ckpt.commits == 1
    tm.close_all()


# ================================================================================ 2. Restorer
class FakeMsg:
    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_error")

    def __init__(self, topic, partition, offset, key=None, value=None, error=None):
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._error = key, value, error

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def error(self):
        return self._error

    def timestamp(self):
        return (1, 1000 + self._offset)      # (TIMESTAMP_CREATE_TIME, ms): 1000 + offset


class ChangelogLog:
    """In-memory partitions: ``records[(topic, p)] = [(offset, key, value)]``; ``end`` counts markers too."""

    def __init__(self):
        self.records: dict = {}
        self.ends: dict = {}
        self.lows: dict = {}

    def end(self, tp) -> int:
        return self.ends.get(tp, 0)

    def low(self, tp) -> int:
        return self.lows.get(tp, 0)

    def append(self, tp, key, value) -> int:
        off = self.end(tp)
        self.records.setdefault(tp, []).append((off, key, value))
        self.ends[tp] = off + 1
        return off

    def marker(self, tp) -> None:
        """A transaction commit marker: takes an offset, never delivered to a consumer."""
        self.ends[tp] = self.end(tp) + 1

    def checkpoint(self, p: int, changes: dict, stream_time: int, spec=SPEC) -> None:
        """What one committed exactly-once checkpoint leaves in changelog partition ``p``."""
        tp = (spec.changelog, p)
        for k, v in changes.items():
            self.append(tp, codec.encode_store_key(spec.kind, k), None if v is None else codec.encode_value(v))
        self.append(tp, META_KEY, meta_value(spec, stream_time))
        self.marker(tp)


class FakeRestoreConsumer:
    """A group-less librdkafka consumer over a ``ChangelogLog``, for the Restorer.

    ``stop_at[tp] = offset``: the broker stops yielding at ``offset`` (below the end) and reports
    partition EOF there; ``heal_after_seeks[tp] = n``: it behaves again after ``n`` seeks."""

    def __init__(self, log: ChangelogLog):
        self.log = log
        self.assigned: dict = {}           # (topic, p) -> position
        self._eof_at: dict = {}            # (topic, p) -> position at which EOF was last reported
        self.stop_at: dict = {}
        self.heal_after_seeks: dict = {}
        self.assign_calls: list = []       # [(topic, p, offset)]
        self.unassigned: Counter = Counter()
        self.seeks: list = []
        self.watermark_calls: list = []
        self.delivered: Counter = Counter()
        self.closed = False

    # --- librdkafka surface
    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        key = (tp.topic, tp.partition)
        self.watermark_calls.append((key, cached))
        return self.log.low(key), self.log.end(key)

    def incremental_assign(self, tps):
        for tp in tps:
            if (tp.topic, tp.partition) in self.assigned:
                raise KafkaException(KafkaError(KafkaError._CONFLICT,
                                                f"{tp.topic} [{tp.partition}] is already part of the current "
                                                f"assignment"))
        for tp in tps:
            key = (tp.topic, tp.partition)
            off = tp.offset
            if off == OFFSET_BEGINNING or off < 0 and off != OFFSET_END:
                off = self.log.low(key)
            elif off == OFFSET_END:
                off = self.log.end(key)
            self.assigned[key] = off
            self._eof_at.pop(key, None)
            self.assign_calls.append((tp.topic, tp.partition, tp.offset))

    def incremental_unassign(self, tps):
        for tp in tps:
            if (tp.topic, tp.partition) not in self.assigned:
                raise KafkaException(KafkaError(KafkaError._INVALID_ARG,
                                                f"{tp.topic} [{tp.partition}] is not part of the current "
                                                f"assignment"))
        for tp in tps:
            key = (tp.topic, tp.partition)
            del self.assigned[key]
            self._eof_at.pop(key, None)
            self.unassigned[key] += 1

    def seek(self, tp):
        key = (tp.topic, tp.partition)
        if key not in self.assigned:
            raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
        self.seeks.append((tp.topic, tp.partition, tp.offset))
        self.assigned[key] = tp.offset
        self._eof_at.pop(key, None)
        if key in self.heal_after_seeks:
            self.heal_after_seeks[key] -= 1
            if self.heal_after_seeks[key] <= 0:
                del self.heal_after_seeks[key]
                self.stop_at.pop(key, None)

    def consume(self, num_messages=1, timeout=-1):
        out = []
        for key in sorted(self.assigned):
            if len(out) >= num_messages:
                break
            pos = self.assigned[key]
            limit = min(self.log.end(key), self.stop_at.get(key, self.log.end(key)))
            for off, k, v in self.log.records.get(key, ()):
                if len(out) >= num_messages:
                    break
                if pos <= off < limit:
                    out.append(FakeMsg(key[0], key[1], off, k, v))
                    self.delivered[key] += 1
                    pos = off + 1
            else:
                if pos < limit:           # only markers (or nothing) left before the limit: skipped
                    pos = limit
            self.assigned[key] = pos
            if pos >= limit and self._eof_at.get(key) != pos and len(out) < num_messages:
                out.append(FakeMsg(key[0], key[1], pos, error=KafkaError(KafkaError._PARTITION_EOF)))
                self._eof_at[key] = pos
        if not out:
            time.sleep(min(max(timeout, 0), 0.02))      # a real consume() waits for the timeout
        return out

    def close(self):
        self.closed = True


def _restorer(log, **kw) -> tuple[Restorer, FakeRestoreConsumer]:
    r = Restorer({"bootstrap.servers": "fake:1", "group.id": "lc-restore"}, **kw)
    fake = FakeRestoreConsumer(log)
    r._consumer = fake
    return r, fake


def _run_until(r: Restorer, key, budget_s=3.0, timeout=0.01) -> list:
    """Step until ``key`` is reported restored; return every key reported on the way."""
    seen = []
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        seen += r.step(timeout)
        if key in seen:
            return seen
    raise AssertionError(f"task {key} was not restored within {budget_s} s (parts: {r.parts(key)})")


def _backend(kind, tmp_path, name="t"):
    return MemoryBackend() if kind == "memory" else _rocks(tmp_path / name, STATEFUL)


def _state(backend) -> dict:
    return dict(backend.items("counts"))


def _apply(model: dict, changes: dict) -> None:
    for k, v in changes.items():
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v


TP0 = (CHANGELOG, 0)


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_restore_the_same_task_twice_in_one_restorer(kind, tmp_path):
    log, model = ChangelogLog(), {}
    c1 = {("k1", 0): (1000, 1), ("k2", 0): (2000, 1)}
    c2 = {("k1", 0): (3000, 2)}
    for ch, st in ((c1, 2000), (c2, 3000)):
        log.checkpoint(0, ch, st)
        _apply(model, ch)
    assert log.end(TP0) == 7                      # 0-1 data, 2 meta, 3 marker, 4 data, 5 meta, 6 marker
    r, fake = _restorer(log)
    backend = _backend(kind, tmp_path)
    key = SKEY(0)

    r.start(key, backend, [SPEC], 0)
    assert fake.assign_calls == [(CHANGELOG, 0, OFFSET_BEGINNING)]     # a fresh backend: from the beginning
    assert all(cached is False for _, cached in fake.watermark_calls)
    assert r.restoring(key) and r.pending
    assert _run_until(r, key).count(key) == 1
    assert not r.pending and not r.restoring(key)
    assert fake.unassigned == Counter({TP0: 1}) and fake.assigned == {}
    assert _state(backend) == model
    assert backend.get_meta("stream_time") == 3000
    assert changelog_offsets(backend) == {"counts": 5}          # the last record applied (the meta record)
    assert fake.delivered[TP0] == 5

    # more checkpoints were written (by another owner); the same task is restored again
    c3 = {("k2", 0): None, ("k3", 0): (61000, 1)}
    log.checkpoint(0, c3, 61000)
    _apply(model, c3)
    before = r.records_restored
    r.start(key, backend, [SPEC], 0)                       # librdkafka would raise _CONFLICT here if the
    assert fake.assign_calls[-1] == (CHANGELOG, 0, 6)     # first restore had left the partition assigned
    (part,) = r.parts(key)
    assert part.first == 6 and part.end == 11
    assert _run_until(r, key).count(key) == 1
    assert r.records_restored - before == 3              # only the tail: tombstone, k3, meta
    assert fake.delivered[TP0] == 5 + 3
    assert fake.unassigned == Counter({TP0: 2}) and fake.assigned == {}
    assert _state(backend) == model == {("k1", 0): (3000, 2), ("k3", 0): (61000, 1)}
    assert backend.get_meta("stream_time") == 61000
    assert changelog_offsets(backend) == {"counts": 9}

    # and a third time with nothing new: finishes (after the trailing marker), unassigned once more
    r.start(key, backend, [SPEC], 0)
    assert _run_until(r, key).count(key) == 1
    assert fake.unassigned == Counter({TP0: 3}) and fake.assigned == {}
    assert _state(backend) == model
    r.close()
    assert fake.closed
    if kind == "rocksdb":
        backend.close()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_cancel_mid_restore_then_restore_again(kind, tmp_path):
    log, model = ChangelogLog(), {}
    for i in range(4):
        ch = {(f"k{j}", 0): (1000 * i + j, i + 1) for j in range(5)}
        log.checkpoint(0, ch, 1000 * i + 4)
        _apply(model, ch)
    r, fake = _restorer(log, batch_size=4)
    backend = _backend(kind, tmp_path)
    key = SKEY(0)

    r.start(key, backend, [SPEC], 0)
    assert r.step(0.01) == []
    applied = changelog_offsets(backend)["counts"]
    assert applied == 3 and _state(backend) != model          # partway
    r.cancel([key])
    assert fake.unassigned == Counter({TP0: 1}) and fake.assigned == {}
    assert not r.pending and not r.restoring(key) and r.parts(key) == []
    assert r.step(0.01) == []                                  # nothing left to report
    r.cancel([key])                                            # cancelling again is harmless
    assert fake.unassigned == Counter({TP0: 1})

    extra = {("k0", 0): None, ("k9", 0): (9000, 1)}
    log.checkpoint(0, extra, 9000)
    _apply(model, extra)
    r.start(key, backend, [SPEC], 0)                           # no _CONFLICT
    assert fake.assign_calls[-1] == (CHANGELOG, 0, applied + 1)   # resumes after what was applied
    seen = _run_until(r, key)
    assert seen.count(key) == 1
    assert fake.unassigned == Counter({TP0: 2}) and fake.assigned == {}
    assert _state(backend) == model
    assert backend.get_meta("stream_time") == 9000
    assert changelog_offsets(backend)["counts"] == log.end(TP0) - 2
    r.close()
    if kind == "rocksdb":
        backend.close()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_worker_flow_revoke_mid_restore_and_reassign(kind, tmp_path):
    """TaskManager + Restorer wired as the worker wires them (_drop, _restore_step): a task revoked
    mid-restore (memory: suspended; RocksDB: closed and reopened) is restored again, no conflict."""
    log, model = ChangelogLog(), {}
    for i in range(3):
        ch = {(f"k{j}", 0): (1000 * i + j, i + 1) for j in range(4)}
        log.checkpoint(0, ch, 1000 * i + 3)
        _apply(model, ch)
    tm = _manager(kind, tmp_path)
    r, fake = _restorer(log, batch_size=3)

    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    r.start(mt.key, mt.backend, mt.subtopology.stores, mt.partition)
    assert r.step(0.01) == []
    r.cancel(tm.revoke([(STATEFUL_IN, 0)]))
    assert fake.assigned == {} and fake.unassigned[TP0] == 1

    (mt2,), _ = tm.assign([(STATEFUL_IN, 0)])
    if kind == "memory":
        assert mt2 is mt
    else:
        assert mt2 is not mt and mt2.backend is not None
    assert tm.get(mt2.key) is mt2
    r.start(mt2.key, mt2.backend, mt2.subtopology.stores, mt2.partition)
    assert fake.assign_calls[-1] == (CHANGELOG, 0, 3)          # after offsets 0..2 applied before the revoke
    _run_until(r, SKEY(0))
    assert tm.restored(SKEY(0)) is mt2
    task = tm.running(SKEY(0))
    assert {k: task.state.store("counts").get(k) for k in model} == model
    assert task.state.stream_time == 2003
    assert fake.assigned == {} and fake.unassigned[TP0] == 2
    tm.close_all()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_worker_restores_the_same_task_twice_without_conflict(kind, tmp_path):
    """The runtime issue, through the Worker's own rebalance callbacks and restore step:
    "_CONFLICT: lc-counts-changelog [0] is already part of the current assignment"."""
    log, model = ChangelogLog(), {}
    ch = {("k1", 0): (1000, 1), ("k2", 0): (2000, 1)}
    log.checkpoint(0, ch, 2000)
    _apply(model, ch)
    w = Worker(PLAN, RunOptions("fake:1", state_dir=str(tmp_path), state_backend=kind))
    main = FakeMainConsumer()
    w.consumer, w.producer = main, FakeProducer()
    w.restorer, fake = _restorer(log, batch_size=2)
    parts = [TopicPartition(STATELESS_IN, 0), TopicPartition(STATEFUL_IN, 0)]

    def restore_all():
        deadline = time.monotonic() + 3
        while (w.restoring or w.restorer.pending) and time.monotonic() < deadline:
            w._restore_step()
            assert w._fatal is None
        assert not w.restoring and SKEY(0) in w.tasks

    for rnd in range(3):
        w._on_assign(main, parts)
        assert w._fatal is None, w._fatal
        assert main.paused == {(STATEFUL_IN, 0)} and w.restoring == [SKEY(0)]
        if rnd == 1:                                     # revoked mid-restore this time
            w._restore_step()
            w._on_revoke(main, parts)
            assert w._fatal is None, w._fatal
            w._on_assign(main, parts)
            assert w._fatal is None, w._fatal
        restore_all()
        assert main.paused == set() and (STATEFUL_IN, 0) in main.resumed
        task = w.tasks[SKEY(0)]
        assert {k: task.state.store("counts").get(k) for k in model} == model
        assert fake.assigned == {}
        w._on_revoke(main, parts)
        assert w._fatal is None, w._fatal
        assert w.tasks == {}
        more = {(f"r{rnd}", 0): (5000 + rnd, 1), ("k1", 0): (6000 + rnd, rnd + 2)}
        log.checkpoint(0, more, 6000 + rnd)
        _apply(model, more)
    # one unassign per finished restore and one per cancelled one; never a second assign of a held partition
    assert fake.unassigned[TP0] == 4
    assert len(fake.assign_calls) == 4
    w.task_manager.close_all()
    w.restorer.close()


def test_changelog_that_stops_before_its_end_is_retried_then_an_error(tmp_path):
    log = ChangelogLog()
    log.checkpoint(0, {(f"k{j}", 0): (j, 1) for j in range(9)}, 8)     # offsets 0..8 data, 9 meta, 10 marker
    assert log.end(TP0) == 11
    r, fake = _restorer(log, retry_after_s=0.05, stall_timeout_s=0.3)
    fake.stop_at[TP0] = 5                                             # the broker says EOF at 5
    backend = MemoryBackend()
    key = SKEY(0)
    r.start(key, backend, [SPEC], 0)
    reported = []
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as ei:
        while time.monotonic() - t0 < 5:
            reported += r.step(0.01)
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert f"{CHANGELOG}[0]" in msg and "offset 5" in msg and "end offset 11" in msg, msg
    assert key not in reported                                       # never counted as restored
    assert 0.25 <= elapsed < 3
    (part,) = r.parts(key)
    assert not part.done and part.position == 5 and part.end == 11
    assert len(fake.seeks) >= 2 and all(s == (CHANGELOG, 0, 5) for s in fake.seeks)
    assert fake.unassigned[TP0] == 0                                # not finished: still assigned
    assert changelog_offsets(backend) == {"counts": 4} and len(_state(backend)) == 5


def test_an_eof_that_reaches_the_end_completes_the_restore_even_after_a_pause():
    """All records came in one full batch; the EOF (past the trailing commit marker) comes in the
    next consume(), after the worker's loop was busy for longer than the stall timeout. The
    partition has reached its end: that is completion, not a stall."""
    log, model = ChangelogLog(), {}
    ch = {(f"k{j}", 0): (j, 1) for j in range(9)}
    log.checkpoint(0, ch, 8)                                   # 0..8 data, 9 meta, 10 marker: end 11
    _apply(model, ch)
    r, fake = _restorer(log, batch_size=10, retry_after_s=0.05, stall_timeout_s=0.2)
    backend = MemoryBackend()
    r.start(SKEY(0), backend, [SPEC], 0)
    assert r.step(0.01) == []                                  # the 10 records fill the batch: no EOF yet
    (part,) = r.parts(SKEY(0))
    assert part.position == 10 and part.end == 11 and _state(backend) == model
    time.sleep(0.3)                                            # a slow iteration of the worker's loop
    assert r.step(0.01) == [SKEY(0)]                           # EOF at 11: restored
    assert fake.unassigned == Counter({TP0: 1})


def test_changelog_that_stops_early_then_recovers_is_restored_completely():
    log, model = ChangelogLog(), {}
    ch = {(f"k{j}", 0): (j, 1) for j in range(9)}
    log.checkpoint(0, ch, 8)
    _apply(model, ch)
    r, fake = _restorer(log, retry_after_s=0.05, stall_timeout_s=5)
    fake.stop_at[TP0] = 5
    fake.heal_after_seeks[TP0] = 1
    backend = MemoryBackend()
    r.start(SKEY(0), backend, [SPEC], 0)
    assert _run_until(r, SKEY(0)).count(SKEY(0)) == 1
    assert len(fake.seeks) == 1
    assert _state(backend) == model and backend.get_meta("stream_time") == 8
    assert fake.unassigned == Counter({TP0: 1})


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_changelog_written_by_another_definition_is_refused(kind, tmp_path):
    other = dataclasses.replace(SPEC, fingerprint="0123456789abcdef",
                                description="window store; tumbling(size=5m); aggregations count=count()")
    assert other.fingerprint != SPEC.fingerprint
    log = ChangelogLog()
    log.checkpoint(0, {("k1", 0): (1000, 1)}, 1000, spec=other)
    backend = _backend(kind, tmp_path)
    r, _ = _restorer(log)
    r.start(SKEY(0), backend, [SPEC], 0)
    reported = []
    with pytest.raises(StateError, match="was written by a different definition of its operator") as ei:
        for _ in range(50):
            reported += r.step(0.01)
    assert "counts" in str(ei.value) and f"{CHANGELOG}[0]" in str(ei.value)
    assert SKEY(0) not in reported
    assert _state(backend) == {} and changelog_offsets(backend) == {}    # nothing of it was applied
    if kind == "rocksdb":
        backend.close()


class _Evil:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("where", ["value", "format-byte+value", "key"])
@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_pickle_in_a_changelog_is_refused_and_never_run(where, kind, tmp_path):
    # the payload is live: unpickling it does create its file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(str(probe)))).close()
    assert probe.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(marker)))
    log = ChangelogLog()
    log.checkpoint(0, {("k1", 0): (1000, 1)}, 1000)                   # offsets 0, 1 (meta), 2 (marker)
    good_key = codec.encode_store_key(SPEC.kind, ("k2", 0))
    if where == "value":
        bad = log.append(TP0, good_key, payload)
    elif where == "format-byte+value":
        bad = log.append(TP0, good_key, bytes([codec.VALUE_FORMAT]) + payload)
    else:
        bad = log.append(TP0, payload, codec.encode_value((2000, 1)))
    assert bad == 3
    log.append(TP0, META_KEY, meta_value(SPEC, 2000))
    backend = _backend(kind, tmp_path, "db")
    r, _ = _restorer(log)
    r.start(SKEY(0), backend, [SPEC], 0)
    reported = []
    with pytest.raises(StateError) as ei:
        for _ in range(50):
            reported += r.step(0.01)
    assert f"changelog {CHANGELOG}[0] at offset 3" in str(ei.value), str(ei.value)
    assert not marker.exists()
    assert SKEY(0) not in reported
    assert ("k2", 0) not in _state(backend)
    if kind == "rocksdb":
        backend.close()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_memory_and_rocksdb_restore_the_same_state(batch_size, tmp_path):
    log, model = ChangelogLog(), {}
    st = 0
    for i in range(6):
        ch = {(f"k{(i * 3 + j) % 7}", 60_000 * (j % 2)): (i * 100 + j, i + j) for j in range(5)}
        if i % 2:
            ch[(f"k{i}", 0)] = None                        # tombstones
        st = 60_000 + i * 1000
        log.checkpoint(0, ch, st)
        _apply(model, ch)
    log.checkpoint(0, {("k1", 60_000): (7, 7)}, st - 5)    # stream time never goes back
    _apply(model, {("k1", 60_000): (7, 7)})
    results = {}
    for kind in ("memory", "rocksdb"):
        backend = _backend(kind, tmp_path, kind)
        r, fake = _restorer(log, batch_size=batch_size)            # several batches
        r.start(SKEY(0), backend, [SPEC], 0)
        _run_until(r, SKEY(0))
        results[kind] = (_state(backend), backend.get_meta("stream_time"), changelog_offsets(backend))
        assert fake.unassigned == Counter({TP0: 1})
        if kind == "rocksdb":
            backend.close()
            reopened = _rocks(tmp_path / kind, STATEFUL)           # and it is durable
            assert (_state(reopened), reopened.get_meta("stream_time")) == results[kind][:2]
            reopened.close()
    assert results["memory"] == results["rocksdb"]
    assert results["memory"][0] == model
    assert results["memory"][1] == st
    assert results["memory"][2] == {"counts": log.end(TP0) - 2}


def test_two_tasks_restore_together_into_their_own_backends(tmp_path):
    log, models = ChangelogLog(), {0: {}, 1: {}}
    for p in (0, 1):
        for i in range(3):
            ch = {(f"p{p}k{j}", 0): (p, i, j) for j in range(3)}
            log.checkpoint(p, ch, 100 * p + i)
            _apply(models[p], ch)
    r, fake = _restorer(log, batch_size=5)
    backends = {0: MemoryBackend(), 1: _rocks(tmp_path / "p1", STATEFUL)}
    for p in (0, 1):
        r.start(SKEY(p), backends[p], [SPEC], p)
    seen = []
    deadline = time.monotonic() + 3
    while r.pending and time.monotonic() < deadline:
        seen += r.step(0.01)
    assert sorted(seen) == [SKEY(0), SKEY(1)]
    for p in (0, 1):
        assert _state(backends[p]) == models[p]
        assert backends[p].get_meta("stream_time") == 100 * p + 2
    assert fake.unassigned == Counter({(CHANGELOG, 0): 1, (CHANGELOG, 1): 1})
    backends[1].close()


def test_cancel_of_a_task_with_nothing_to_read(tmp_path):
    log = ChangelogLog()                                   # an empty changelog: restored at once
    r, fake = _restorer(log)
    backend = MemoryBackend()
    r.start(SKEY(0), backend, [SPEC], 0)
    assert fake.assign_calls == [] and r.pending
    r.cancel([SKEY(0)])                                    # revoked before the next step
    assert not r.pending and r.step(0.01) == []            # never reported restored
    assert fake.unassigned == Counter()
    r.start(SKEY(0), backend, [SPEC], 0)
    assert r.step(0.01) == [SKEY(0)] and r.step(0.01) == []


def test_restore_skips_to_the_log_start_when_the_stored_offset_was_deleted(tmp_path):
    log, model = ChangelogLog(), {}
    for i in range(3):
        ch = {("k", 0): (i, i)}
        log.checkpoint(0, ch, i)
        _apply(model, ch)
    log.lows[TP0] = 3                                  # offsets 0..2 deleted by retention
    backend = MemoryBackend()
    backend.write({}, {"changelog_offsets": {"counts": 0}})
    r, fake = _restorer(log)
    r.start(SKEY(0), backend, [SPEC], 0)
    assert fake.assign_calls == [(CHANGELOG, 0, 3)]
    _run_until(r, SKEY(0))
    assert _state(backend) == model


# ================================================================================ 3. Checkpoint
def test_time_left_is_the_cap_outside_a_transaction_and_bounded_by_the_deadline_inside():
    c = Checkpoint(FakeProducer(), FakeMainConsumer(), TaskManager({}, None, None), eos=True, commit_interval_s=0.1,
                   txn_budget_s=2.0)
    assert c.time_left(30.0) == 30.0 and c.time_left(0.5) == 0.5
    c._open()
    assert c.time_left(30.0) == 30.0                      # open checkpoint, no transaction
    c.begin()
    assert c.in_txn
    now = time.monotonic()
    left = c.time_left(30.0)
    assert 1.5 < left <= c.deadline - now <= 2.0
    assert c.time_left(0.5) == 0.5                        # the cap still applies
    c.deadline = time.monotonic() + 0.4
    assert c.time_left(30.0) <= 0.4
    c.deadline = time.monotonic() - 1.0                   # passed: the shortest positive bound
    assert 0 < c.time_left(30.0) <= 0.1                   # (a negative timeout means "forever" to librdkafka)
    c.abort()
    assert not c.in_txn and c.time_left(30.0) == 30.0


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_checkpoint_past_its_deadline_rolls_back(kind, tmp_path):
    tm = _manager(kind, tmp_path)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    tm.restored(SKEY(0))
    w = FakeWorker(tm, eos=True, txn_budget_s=5.0)
    task = tm.running(SKEY(0))
    c = w.ckpt
    c.begin()
    _feed(task, [0, 1, 2])
    c.ran(SKEY(0), (STATEFUL_IN, 0), 3)
    assert task.state.store("counts").get(("k1", 0)) == (3000, 2)
    c.deadline = time.monotonic() - 0.01                  # the transaction is too old already

    assert c.commit() is False
    calls = w.producer.calls
    assert "abort_transaction" in calls
    assert "commit_transaction" not in calls and "send_offsets_to_transaction" not in calls
    assert w.consumer.commits == []
    assert w.consumer.seeks == [(STATEFUL_IN, 0, OFFSET_BEGINNING)]   # the running inputs, to their committed offsets
    # the task's uncommitted state is gone, from the old object and from the rebuilt one
    assert task.state.store("counts").get(("k1", 0)) is None and task.state._pending is None
    new = tm.running(SKEY(0))
    assert new is not task
    assert new.state.store("counts").get(("k1", 0)) is None and new.state.stream_time == -1
    assert mt.backend.items("counts") == [] and changelog_offsets(mt.backend) == {}
    assert (c.open, c.in_txn, c.dirty, c.positions, c.commits) == (False, False, set(), {}, 0)
    assert c.deadline == float("inf")
    tm.close_all()


def test_checkpoint_within_its_deadline_commits(tmp_path):
    """The counterpart of the rollback test: same set-up, deadline ahead -> committed and applied."""
    tm = _manager("memory", tmp_path)
    (mt,), _ = tm.assign([(STATEFUL_IN, 0)])
    tm.restored(SKEY(0))
    w = FakeWorker(tm, eos=True, txn_budget_s=5.0)
    task = tm.running(SKEY(0))
    w.ckpt.begin()
    _feed(task, [0, 1, 2])
    w.ckpt.ran(SKEY(0), (STATEFUL_IN, 0), 3)
    assert w.ckpt.commit() is True
    assert w.producer.calls == ["begin_transaction", "send_offsets_to_transaction", "flush", "commit_transaction"]
    assert w.consumer.seeks == []
    assert tm.running(SKEY(0)) is task
    assert mt.backend.get("counts", ("k1", 0)) == (3000, 2) and mt.backend.get_meta("stream_time") == 3000
    changelog = [(k, v) for (t, k, v, p) in w.producer.produced if t == CHANGELOG]
    assert changelog[-1] == (META_KEY, _changelog.meta_value(SPEC, 3000))
    assert {codec.decode_store_key(SPEC.kind, k): codec.decode_value(v) for k, v in changelog[:-1]} == {
        ("k1", 0): (3000, 2), ("k2", 0): (2000, 1)}
    tm.close_all()


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_a_key_in_a_form_streamproc_never_writes_is_refused(kind, tmp_path):
    """A changelog key that decodes but is not the canonical encoding of what it decodes to (here
    an int in the big-int layout) would be a second copy of an equal key once copied into RocksDB."""
    log = ChangelogLog()
    log.checkpoint(0, {("k1", 0): (1000, 1)}, 1000)
    canonical = codec.encode_store_key(SPEC.kind, (7, 0))
    odd = b"\x01\x11\x01\x07" + canonical[-8:]           # 7 as a 1-byte "big" int: decodes to (7, 0) too
    assert codec.decode_store_key(SPEC.kind, odd) == (7, 0) and odd != canonical
    bad = log.append(TP0, odd, codec.encode_value((2000, 1)))
    log.append(TP0, META_KEY, meta_value(SPEC, 2000))
    backend = _backend(kind, tmp_path, "db")
    r, _ = _restorer(log)
    r.start(SKEY(0), backend, [SPEC], 0)
    with pytest.raises(StateError, match=f"offset {bad}: the key is not in the canonical form"):
        for _ in range(50):
            r.step(0.01)
    if kind == "rocksdb":
        backend.close()


def test_at_least_once_offsets_not_committed_are_not_reported_as_committed(tmp_path):
    """Under at-least-once a failed offset commit keeps the positions for the next checkpoint; the checkpoint
    reports no committed offsets, so the worker does not purge repartition records it may read again."""
    tm = _manager("memory", tmp_path, [])
    tm.assign([(STATEFUL_IN, 0)])
    tm.restored(SKEY(0))
    w = FakeWorker(tm, eos=False)
    t0 = tm.running(SKEY(0))

    def refuse(offsets=None, asynchronous=True):
        raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing"))

    w.consumer.commit = refuse
    w.ckpt.begin()
    _feed(t0, [0, 1, 2])
    w.ckpt.ran(SKEY(0), (STATEFUL_IN, 0), 3)
    assert w.ckpt.commit() is True                       # the changelog holds the state: applied
    assert w.ckpt.offsets_committed == {}
    assert w.ckpt.positions == {(STATEFUL_IN, 0): 3}     # committed again next time
    assert w.ckpt.open

    del w.consumer.commit                                # the class's commit records and succeeds
    assert w.ckpt.commit() is True
    assert w.ckpt.offsets_committed == {(STATEFUL_IN, 0): 3}
    assert w.consumer.commits and not w.ckpt.open
